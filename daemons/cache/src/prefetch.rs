//! Caching queued images: reads each `queue/<id>` image from its store and writes it the way
//! Glance's write path does (into `incomplete/<id>`, MD5 checked against the catalog's
//! checksum, renamed into place, queue marker removed, then the row inserted). A failed
//! fetch leaves at most an `invalid/<id>` file; the marker stays so the next pass retries.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use futures::StreamExt;
use imaged_catalog::Catalog;
use imaged_store::Store;
use md5::{Digest, Md5};
use serde::Serialize;

use crate::index::Index;
use crate::layout::{self, INCOMPLETE, INVALID, OpenFiles, QUEUE, parse_id};
use crate::lock;
use crate::sqlite_index::NewRow;
use crate::{CacheError, CacheOptions};

/// What a prefetch pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PrefetchReport {
    /// Images cached.
    pub prefetched: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Markers of images already cached (removed).
    pub already_cached: u64,
    /// Markers skipped: a download of the image is in progress.
    pub in_progress: u64,
    /// Markers skipped: the image is missing, deleted, not active or has no usable location.
    pub not_cacheable: u64,
    /// Fetches that failed (store error, checksum mismatch); moved to invalid/.
    pub failed: u64,
    /// Wall time in milliseconds.
    pub elapsed_ms: u64,
}

/// The outcome of writing one image into the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Committed: renamed into place with this many bytes (the caller inserts the row).
    Cached(u64),
    /// Another writer committed the image first; our copy was discarded and theirs kept.
    AlreadyCached,
    /// Nothing committed, for this reason; the partial file is in invalid/ when it was ours.
    Failed(String),
}

/// Identity of an open file, to tell whether a path still names it.
fn inode(meta: &fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// Whether `path` still names the file with identity `ours` (another writer may have
/// replaced it, e.g. after a clean removed it as stalled).
fn still_ours(path: &Path, ours: (u64, u64)) -> bool {
    fs::metadata(path).is_ok_and(|m| inode(&m) == ours)
}

/// Writes image `id` from `data` the way Glance's write path does, without its races
/// (defect 14.2-9): `incomplete/<id>` is created with `O_EXCL` (a concurrent writer keeps
/// its file intact), the MD5 is checked against `checksum`, the partial is discarded rather
/// than committed when another process opened it meanwhile (its writes would interleave with
/// ours), and the commit never replaces a copy another writer committed first. A failure moves
/// the partial to `invalid/` only while the path still names our file, and never touches rows:
/// Glance's rollback deleted the row of whichever writer had won.
pub async fn write_image<S>(
    opts: &CacheOptions,
    id: &str,
    mut data: S,
    checksum: Option<&str>,
) -> Result<Written, CacheError>
where
    S: futures::Stream<Item = std::io::Result<Vec<u8>>> + Unpin,
{
    let layout = &opts.layout;
    let part = layout.sub(INCOMPLETE).join(id);
    let mut file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&part)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Ok(Written::Failed("a download is already in progress".into()));
        }
        Err(e) => return Err(CacheError::io(&part, e)),
    };
    let ours = inode(&file.metadata().map_err(|e| CacheError::io(&part, e))?);
    let mut md5 = Md5::new();
    let mut size = 0u64;
    let result: Result<(), String> = async {
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            file.write_all(&chunk).map_err(|e| e.to_string())?;
            md5.update(&chunk);
            size += chunk.len() as u64;
        }
        file.flush().map_err(|e| e.to_string())?;
        if let Some(expected) = checksum {
            let got = hex::encode(md5.finalize_reset());
            if !got.eq_ignore_ascii_case(expected) {
                return Err(format!(
                    "checksum verification failed: got {got}, expected {expected}"
                ));
            }
        }
        if !still_ours(&part, ours) {
            return Err("the partial file was removed or replaced by another writer".into());
        }
        if OpenFiles::scan(&layout.dir).contains(&part) {
            return Err(
                "another writer opened the partial file; its writes would interleave with ours"
                    .into(),
            );
        }
        Ok(())
    }
    .await;
    drop(file);
    let msg = match result {
        Ok(()) => {
            let dest = layout.image(id);
            // link + unlink instead of rename: a copy another writer committed meanwhile
            // stays (and keeps its row) rather than being replaced under its readers.
            let outcome = match fs::hard_link(&part, &dest) {
                Ok(()) => Written::Cached(size),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Written::AlreadyCached,
                Err(e) => return Err(CacheError::io(&dest, e)),
            };
            layout::remove(&part)?;
            layout::remove(&layout.sub(QUEUE).join(id))?;
            return Ok(outcome);
        }
        Err(msg) => msg,
    };
    if still_ours(&part, ours) {
        let bad = layout.sub(INVALID).join(id);
        if let Err(e) = fs::rename(&part, &bad) {
            tracing::warn!(image_id = id, error = %e, "cannot move failed download to invalid/");
            let _ = layout::remove(&part);
        }
    }
    Ok(Written::Failed(msg))
}

async fn fetch_one(
    opts: &CacheOptions,
    store: &Store,
    id: &str,
    loc: imaged_store::Location,
    checksum: Option<&str>,
) -> Result<Written, CacheError> {
    let stream = match store.open_read(&loc).await {
        Ok(s) => s,
        Err(e) => return Ok(Written::Failed(e.to_string())),
    };
    write_image(opts, id, tokio_util_stream(stream), checksum).await
}

fn tokio_util_stream(
    s: imaged_store::ReadStream,
) -> impl futures::Stream<Item = std::io::Result<bytes_chunk::Chunk>> + Unpin {
    bytes_chunk::chunks(s.into_async_read())
}

/// Chunked reading of an `AsyncRead` without an extra dependency.
mod bytes_chunk {
    use tokio::io::{AsyncRead, AsyncReadExt};

    /// One chunk of data.
    pub type Chunk = Vec<u8>;

    /// A stream of 1 MiB chunks.
    pub fn chunks<R: AsyncRead + Unpin + Send + 'static>(
        r: R,
    ) -> impl futures::Stream<Item = std::io::Result<Chunk>> + Unpin {
        Box::pin(futures::stream::unfold(Some(r), |state| async move {
            let mut r = state?;
            let mut buf = vec![0u8; 1 << 20];
            match r.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(buf), Some(r)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }))
    }
}

/// One prefetch pass over `queue/`, oldest marker first. Holds Glance's prefetcher lock
/// (`glance-cache`).
pub async fn prefetch(
    opts: &CacheOptions,
    index: &Index,
    catalog: &Catalog,
    store: &Store,
) -> Result<PrefetchReport, CacheError> {
    let start = Instant::now();
    let _lock = crate::ops::lock_or_refuse(opts, lock::PREFETCH).await?;
    let layout = &opts.layout;
    layout.ensure_dirs()?;
    let mut queued = layout::scan_sub(layout, QUEUE)?;
    queued.sort_by(|a, b| a.mtime.total_cmp(&b.mtime).then(a.name.cmp(&b.name)));
    let mut report = PrefetchReport::default();
    for q in queued {
        let id = q.name.as_str();
        if parse_id(id).is_none() {
            continue;
        }
        if layout.image(id).is_file() {
            layout::remove(&layout.sub(QUEUE).join(id))?;
            report.already_cached += 1;
            continue;
        }
        let part = layout.sub(INCOMPLETE).join(id);
        if part.exists() {
            let open = OpenFiles::scan(&layout.dir);
            if !layout::abandoned(&part, &open, opts.orphan_grace, layout::now()) {
                report.in_progress += 1;
                continue;
            }
            tracing::info!(
                image_id = id,
                "removing an abandoned partial download before fetching"
            );
            layout::remove(&part)?;
        }
        let image = match catalog.get_image(id).await? {
            Some(img) if !img.deleted && img.status == "active" => img,
            _ => {
                tracing::warn!(
                    image_id = id,
                    "queued image is missing or not active; not cached"
                );
                report.not_cacheable += 1;
                continue;
            }
        };
        if let Some(size) = image.size.and_then(|s| u64::try_from(s).ok())
            && size > opts.max_size
        {
            tracing::warn!(
                image_id = id,
                size,
                max_size = opts.max_size,
                "queued image is larger than image_cache_max_size; not cached (the next prune would evict it)"
            );
            report.not_cacheable += 1;
            continue;
        }
        let locations = catalog.image_locations(id).await?;
        let Some((url, store_name)) = locations.iter().find_map(|l| {
            let usable = !l.deleted && l.status == "active";
            match (&l.url, usable) {
                (Ok(u), true) => Some((
                    u.clone(),
                    l.meta_data
                        .get("store")
                        .and_then(|s| s.as_str())
                        .map(str::to_owned),
                )),
                _ => None,
            }
        }) else {
            tracing::warn!(
                image_id = id,
                "queued image has no usable location; not cached"
            );
            report.not_cacheable += 1;
            continue;
        };
        let mut loc = imaged_store::Location::new(url).with_image_id(id);
        if let Some(s) = store_name {
            loc = loc.with_store(s);
        }
        match fetch_one(opts, store, id, loc, image.checksum.as_deref()).await? {
            Written::AlreadyCached => {
                report.already_cached += 1;
            }
            Written::Cached(size) => {
                let now = layout::now();
                // The file is in place before the row, as in Glance; a failed insert leaves an
                // untracked file that the next prune adopts.
                if let Err(e) = index
                    .insert(&[NewRow {
                        image_id: id.to_owned(),
                        last_accessed: now,
                        last_modified: now,
                        size,
                    }])
                    .await
                {
                    tracing::warn!(image_id = id, error = %e, "cached image has no row yet");
                }
                tracing::info!(image_id = id, bytes = size, "prefetched");
                report.prefetched += 1;
                report.bytes += size;
            }
            Written::Failed(msg) => {
                tracing::warn!(image_id = id, error = %msg, "prefetch failed");
                report.failed += 1;
            }
        }
    }
    report.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

/// A one-line human summary of a prefetch.
pub fn prefetch_summary(r: &PrefetchReport) -> String {
    format!(
        "prefetch: cached {} images / {} bytes, {} already cached, {} in progress, {} not cacheable, {} failed in {} ms",
        r.prefetched,
        r.bytes,
        r.already_cached,
        r.in_progress,
        r.not_cacheable,
        r.failed,
        r.elapsed_ms
    )
}
