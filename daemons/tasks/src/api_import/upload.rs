//! The data side of an import: copy-image's staging from an existing
//! location, the inspection read, the single hashing pass, and the uploads
//! to the target stores (`max_parallel_stores` at a time) with Glance's
//! activation rule and store lists.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::TryStreamExt;
use imaged_catalog::api_import::{LockedUpdate, NewLocation, StoreListChange};
use imaged_catalog::images::{Image, ImageDataUpdate};
use imaged_catalog::tasks::Task;
use imaged_store::{Location, WriteOptions};
use serde_json::{Value, json};

use super::flow::{Attempt, WrittenStore, cat_err, fail, locked, set_progress, store_label};
use super::input::{ApiImportInput, Method};
use super::staging;
use crate::hashing::{Digests, MultiHasher};
pub(super) use crate::import::read_head;
use crate::import::{ImportFailure, TaskContext};

/// MD5 and the secure hash of the file, off the async runtime.
pub(super) async fn hash_file(
    ctx: &TaskContext,
    path: &Path,
    total: u64,
) -> Result<Digests, ImportFailure> {
    let path = path.to_path_buf();
    let shown = path.display().to_string();
    let algo = ctx.settings.hashing_algorithm;
    let parallel = ctx.settings.parallel;
    let progress = ctx.progress.clone();
    tokio::task::spawn_blocking(move || -> Result<Digests, String> {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let hasher = MultiHasher::new(algo, parallel);
        let mut n = 0u64;
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let got = f
                .read(&mut buf)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if got == 0 {
                break;
            }
            buf.truncate(got);
            n += got as u64;
            hasher.update(&bytes::Bytes::from(buf));
            if let Ok(mut p) = progress.lock() {
                *p = format!("Hashing {} MiB of {} MiB", n >> 20, total >> 20);
            }
        }
        hasher.finish()
    })
    .await
    .map_err(|e| ImportFailure::Failed(format!("hashing {shown} failed: {e}")))?
    .map_err(ImportFailure::Failed)
}

/// copy-image's staging: reuse a complete staged copy, else read the data
/// from an existing location (the default backend's first) into staging.
pub(super) async fn copy_to_staging(
    ctx: &TaskContext,
    image: &Image,
    live: &[imaged_catalog::images::Location],
    staged: &Path,
    att: &mut Attempt,
) -> Result<(), ImportFailure> {
    let id = image.id.as_str();
    // A complete copy found staged is reused, not ours: a failure keeps
    // it for the retry (as Glance keeps it).
    if let (Ok(meta), Some(size)) = (tokio::fs::metadata(staged).await, image.size)
        && u64::try_from(size).ok() == Some(meta.len())
    {
        return Ok(());
    }
    let default = ctx.settings.api_import.default_backend.as_deref();
    let mut sources: Vec<&imaged_catalog::images::Location> = live.iter().collect();
    sources.sort_by_key(|l| l.meta_data.get("store").and_then(Value::as_str) != default);
    let mut errors = Vec::new();
    for l in sources {
        let Ok(url) = &l.url else {
            errors.push("a location cannot be decrypted".to_string());
            continue;
        };
        let mut loc = Location::new(url.clone()).with_image_id(id);
        if let Some(st) = l.meta_data.get("store").and_then(Value::as_str) {
            loc = loc.with_store(st);
        }
        let stream = match ctx.store.open_read(&loc).await {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!("{}: {e}", loc.redacted_url()));
                continue;
            }
        };
        set_progress(ctx, "Copying to staging");
        att.staged_here = Some(staged.to_path_buf());
        let len = stream.size();
        let reader = stream.into_async_read();
        let data =
            tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20).map_err(|e| e.to_string());
        match staging::fill(
            staged,
            data,
            len,
            ctx.settings.image_size_cap,
            "Staged",
            &ctx.progress,
        )
        .await
        {
            // Complete now: like a reused copy, it is kept when the import
            // fails or is handed back (a retry reuses it); success removes
            // it with the rest of the staging area. Only a partial copy
            // stays ours to remove.
            Ok(_) => {
                att.staged_here = None;
                return Ok(());
            }
            Err(ImportFailure::Failed(m) | ImportFailure::Cancelled(m)) => {
                errors.push(format!("{}: {m}", loc.redacted_url()));
            }
        }
    }
    fail(format!(
        "image {id}: no copy of the data could be read ({})",
        if errors.is_empty() {
            "the image has no active location".to_string()
        } else {
            errors.join("; ")
        }
    ))
}

/// Writes the file to every pending store, `max_parallel_stores` at a time.
#[allow(clippy::too_many_arguments)]
pub(super) async fn upload_all(
    ctx: &TaskContext,
    task: &Task,
    input: &ApiImportInput,
    att: &mut Attempt,
    path: &Path,
    size: u64,
    data: Option<ImageDataUpdate>,
    pending: &[Option<String>],
) -> Result<(), ImportFailure> {
    let id = input.image_id.as_str();
    let copy = input.method == Method::CopyImage;
    let parallel = ctx
        .settings
        .api_import
        .max_parallel_stores
        .min(pending.len())
        .max(1);
    let copied = Arc::new(AtomicU64::new(0));
    let uploads = futures::stream::iter(pending.iter().cloned())
        .map(|store| {
            let written = att.written.clone();
            let copied = copied.clone();
            let data = data.clone();
            async move {
                let r =
                    upload_one(ctx, task, id, path, size, &store, data, &written, &copied).await;
                (store, r)
            }
        })
        .buffer_unordered(parallel);
    futures::pin_mut!(uploads);
    let mut succeeded = 0usize;
    let mut errors: Vec<String> = Vec::new();
    let mut active = ctx
        .catalog
        .get_image(id)
        .await
        .map_err(cat_err(id, "reading the status before the uploads"))?
        .is_some_and(|i| i.status == "active");
    while let Some((store, r)) = uploads.next().await {
        match r {
            Ok(()) => {
                succeeded += 1;
                // Glance's set_active: the first success without
                // all_stores_must_succeed, the last store with it, never
                // for copy-image.
                let activate = !copy
                    && !active
                    && (!input.all_stores_must_succeed || succeeded == pending.len());
                if activate {
                    super::flow::activate(ctx, task, id).await?;
                    active = true;
                }
            }
            Err(m) => {
                let label = store_label(&store);
                tracing::warn!(image_id = id, store = %label, error = %m, "store upload failed");
                if let Some(s) = &store {
                    att.failed.push(s.clone());
                }
                if input.all_stores_must_succeed {
                    return fail(format!("upload of image {id} to store {label} failed: {m}"));
                }
                errors.push(format!("{label}: {m}"));
                if let Some(s) = store {
                    locked(
                        ctx,
                        task,
                        id,
                        &LockedUpdate {
                            importing: Some(StoreListChange {
                                add: vec![],
                                remove: vec![s.clone()],
                            }),
                            failed: Some(StoreListChange {
                                add: vec![s],
                                remove: vec![],
                            }),
                            ..LockedUpdate::default()
                        },
                    )
                    .await?;
                }
            }
        }
    }
    // An image already active (stores an earlier attempt finished) stays
    // active with them even when every pending store failed.
    if !active && !copy {
        return fail(format!(
            "None of the uploads finished! image {id}: {}",
            errors.join("; ")
        ));
    }
    ctx.bytes_written
        .store(copied.load(Ordering::Relaxed), Ordering::Relaxed);
    Ok(())
}

/// One store: write the object, record it for the revert at once, then
/// add its location, the data attributes and take it off the importing list.
#[allow(clippy::too_many_arguments)]
async fn upload_one(
    ctx: &TaskContext,
    task: &Task,
    id: &str,
    path: &Path,
    size: u64,
    store: &Option<String>,
    data: Option<ImageDataUpdate>,
    written: &Arc<Mutex<Vec<WrittenStore>>>,
    copied: &Arc<AtomicU64>,
) -> Result<(), String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let reader = tokio::io::BufReader::with_capacity(1 << 20, file);
    let progress = ctx.progress.clone();
    let last = AtomicU64::new(0);
    let copied_here = copied.clone();
    let report = move |n: u64| {
        let delta = n.saturating_sub(last.swap(n, Ordering::Relaxed));
        let total = copied_here.fetch_add(delta, Ordering::Relaxed) + delta;
        if (total >> 20) != ((total - delta) >> 20)
            && let Ok(mut p) = progress.lock()
        {
            // Glance's heartbeat words; the executor's heartbeat writes it.
            *p = format!("Copied {} MiB", total >> 20);
        }
    };
    let w = ctx
        .store
        .write(
            id,
            reader,
            WriteOptions {
                backend: store.as_deref(),
                size_hint: Some(size),
                size_cap: Some(ctx.settings.image_size_cap),
                progress: Some(&report),
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut loc = Location::new(w.url.clone()).with_image_id(id);
    if let Some(st) = &w.store {
        loc = loc.with_store(st.clone());
    }
    // Recorded before anything else can fail or be cancelled, so that the
    // revert finds the object even if this future is dropped here.
    let slot = {
        let mut v = written
            .lock()
            .map_err(|_| {
                format!(
                    "image {id}: the list of written stores is unusable (a store upload panicked); {} written to {} is not tracked",
                    loc.redacted_url(),
                    store_label(store)
                )
            })?;
        v.push(WrittenStore {
            location: loc.clone(),
            row: None,
            removed: false,
        });
        v.len() - 1
    };
    match record(ctx, task, id, store, &w, size, data).await {
        Ok(row) => {
            if let Ok(mut v) = written.lock() {
                v[slot].row = row;
            }
        }
        Err(m) => {
            // The object is ours and no row points at it; a failed store
            // must not keep it (the import may still succeed elsewhere).
            if let Err(e) = ctx.store.delete(&loc).await
                && !e.is_not_found()
            {
                tracing::warn!(image_id = id, location = %loc.redacted_url(), error = %e, "cannot delete the object of a failed store");
            } else if let Ok(mut v) = written.lock() {
                v[slot].removed = true;
            }
            return Err(m);
        }
    }
    Ok(())
}

/// Checks what the store took and records the location, the data
/// attributes and the store's removal from the importing list.
async fn record(
    ctx: &TaskContext,
    task: &Task,
    id: &str,
    store: &Option<String>,
    w: &imaged_store::Written,
    size: u64,
    data: Option<ImageDataUpdate>,
) -> Result<Option<i64>, String> {
    if w.size != size {
        return Err(format!("the store took {} of {size} bytes", w.size));
    }
    let meta = match &w.store {
        Some(name) => json!({"store": name}),
        None => json!({}),
    };
    let upd = LockedUpdate {
        add_location: Some(NewLocation {
            url: w.url.clone(),
            meta_data: meta,
        }),
        data,
        importing: store.as_ref().map(|s| StoreListChange {
            add: vec![],
            remove: vec![s.clone()],
        }),
        ..LockedUpdate::default()
    };
    match ctx.catalog.update_locked_image(id, &task.id, &upd).await {
        Ok(Ok(row)) => Ok(row),
        Ok(Err(r)) => Err(format!("cannot record the location: {r}")),
        Err(e) => Err(format!("cannot record the location: {e}")),
    }
}
