//! The legacy `import` task (input `import_from`, `import_from_format`,
//! `image_properties`): create the image, fetch the data, hash it in the
//! same pass, enforce `image_size_cap` and `user_storage_quota` while it
//! streams, inspect the format before anything is stored, optionally convert
//! it with `qemu-img`, write it through imaged-store, record location and
//! hashes, and activate the image.
//!
//! Without conversion the data streams straight from the source into the
//! store (one pass, nothing on the local disk); with `conversion_format` it
//! is first staged in `[task] work_dir`, because `qemu-img` needs a file.
//!
//! Any failure reverts everything the attempt did — the written data, the
//! image (soft-deleted as Glance's revert does) and staging files — and
//! fails the task with a specific message. The image carries Glance's
//! `os_glance_import_task` property naming the task while the import runs,
//! so a later attempt can find and remove what a crashed one left; Glance's
//! legacy import has no such lock, so the row is deleted outright (never
//! soft-deleted) when the import ends either way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use imaged_catalog::images::{ImageDataUpdate, NewImage};
use imaged_catalog::tasks::Task;
use imaged_catalog::{Catalog, CatalogError};
use imaged_store::{Store, WriteOptions};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::fetch::{FetchError, Fetcher, Source};
use crate::hashing::MultiHasher;
use crate::inspect::{self, PREFIX_LEN};
use crate::settings::Settings;

/// The image property that names the task importing into an image.
pub const LOCK_PROPERTY: &str = "os_glance_import_task";

/// Prefix of staging files in `work_dir` (`imaged-task-<task id>.*`).
pub const WORK_FILE_PREFIX: &str = "imaged-task-";

/// How a run ended when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportFailure {
    /// The task failed for good, with the message for `task_info.message`.
    Failed(String),
    /// The run was stopped (shutdown or lost claim); its effects were reverted.
    Cancelled(String),
}

impl From<CatalogError> for ImportFailure {
    fn from(e: CatalogError) -> Self {
        ImportFailure::Failed(format!("catalog error: {e}"))
    }
}

impl From<FetchError> for ImportFailure {
    fn from(e: FetchError) -> Self {
        ImportFailure::Failed(e.to_string())
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, ImportFailure> {
    Err(ImportFailure::Failed(msg.into()))
}

/// What one task run shares with the executor.
#[derive(Clone)]
pub struct TaskContext {
    /// The catalog.
    pub catalog: Catalog,
    /// The stores.
    pub store: Store,
    /// Settings in force when the task was claimed.
    pub settings: Arc<Settings>,
    /// Source opener with the filtering rules.
    pub fetcher: Fetcher,
    /// The latest progress line; the heartbeat writes it to `task_info.message`.
    pub progress: Arc<Mutex<String>>,
    /// Cancelled on shutdown hand-back or when the claim is lost.
    pub cancel: CancellationToken,
    /// Cancelled (before `cancel`) when the claim was lost: another
    /// executor now runs this task under the same import lock, so an
    /// interoperable import must not revert anything it shares with it.
    pub lost: CancellationToken,
    /// Bytes of image data this run stored (for the executor's metrics).
    pub bytes_written: Arc<std::sync::atomic::AtomicU64>,
}

impl TaskContext {
    fn set_progress(&self, msg: String) {
        if let Ok(mut p) = self.progress.lock() {
            *p = msg;
        }
    }
}

/// The validated `import` input.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportInput {
    /// `import_from`.
    pub import_from: String,
    /// `import_from_format` (required, unused, as in Glance).
    pub import_from_format: String,
    /// The image to create.
    pub image: ImageSpec,
}

/// The image attributes of `image_properties`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageSpec {
    /// `name`.
    pub name: Option<String>,
    /// `owner`: none unless given (Glance's legacy flow does not default
    /// it to the task owner).
    pub owner: Option<String>,
    /// `disk_format` (default qcow2).
    pub disk_format: String,
    /// `container_format` (default bare).
    pub container_format: String,
    /// `min_disk`.
    pub min_disk: i32,
    /// `min_ram`.
    pub min_ram: i32,
    /// `protected`.
    pub protected: bool,
    /// `visibility` (default shared).
    pub visibility: String,
    /// `os_hidden`.
    pub os_hidden: bool,
    /// `tags`.
    pub tags: Vec<String>,
    /// Additional properties.
    pub extra: BTreeMap<String, String>,
}

const READ_ONLY: &[&str] = &[
    "id",
    "status",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "location",
    "locations",
    "direct_url",
    "created_at",
    "updated_at",
    "deleted",
    "deleted_at",
    "file",
    "schema",
    "self",
];

fn int_attr(v: &Value, key: &str) -> Result<i32, ImportFailure> {
    v.as_i64()
        .and_then(|n| i32::try_from(n).ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            ImportFailure::Failed(format!(
                "image property {key} must be a non-negative integer"
            ))
        })
}

fn bool_attr(v: &Value, key: &str) -> Result<bool, ImportFailure> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => fail(format!("image property {key} must be a boolean")),
    }
}

/// Validates a task's input the way the API and the flow do, against the
/// formats, quotas and property rules of `settings`.
pub fn parse_input(
    input: Option<&Value>,
    settings: &Settings,
) -> Result<ImportInput, ImportFailure> {
    let input = input
        .and_then(Value::as_object)
        .ok_or_else(|| ImportFailure::Failed("task input must be a JSON object".into()))?;
    let text = |k: &str| -> Result<String, ImportFailure> {
        match input.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => fail(format!("task input {k} must be a non-empty string")),
            None => fail(format!("task input is missing {k}")),
        }
    };
    let import_from = text("import_from")?;
    let import_from_format = text("import_from_format")?;
    let props = match input.get("image_properties") {
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return fail("task input image_properties must be an object"),
        None => return fail("task input is missing image_properties"),
    };
    let mut spec = ImageSpec {
        disk_format: "qcow2".into(),
        container_format: "bare".into(),
        visibility: "shared".into(),
        ..ImageSpec::default()
    };
    for (k, v) in &props {
        match k.as_str() {
            "name" => {
                spec.name = Some(
                    v.as_str()
                        .ok_or_else(|| {
                            ImportFailure::Failed("image property name must be a string".into())
                        })?
                        .to_string(),
                )
            }
            "disk_format" => spec.disk_format = v.as_str().unwrap_or_default().to_string(),
            "container_format" => {
                spec.container_format = v.as_str().unwrap_or_default().to_string()
            }
            // A base attribute of Glance's image schema: the flow passes it
            // to the image factory, which writes it as given.
            "owner" => {
                spec.owner = match v {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    _ => return fail("image property owner must be a string or null"),
                }
            }
            "min_disk" => spec.min_disk = int_attr(v, k)?,
            "min_ram" => spec.min_ram = int_attr(v, k)?,
            "protected" => spec.protected = bool_attr(v, k)?,
            "os_hidden" => spec.os_hidden = bool_attr(v, k)?,
            "visibility" => spec.visibility = v.as_str().unwrap_or_default().to_string(),
            "tags" => {
                let tags = v.as_array().ok_or_else(|| {
                    ImportFailure::Failed("image property tags must be a list".into())
                })?;
                for t in tags {
                    let t = t.as_str().ok_or_else(|| {
                        ImportFailure::Failed("every tag must be a string".into())
                    })?;
                    if !spec.tags.iter().any(|x| x == t) {
                        spec.tags.push(t.to_string());
                    }
                }
            }
            k if READ_ONLY.contains(&k) => return fail(format!("image property {k} is read-only")),
            k if k.starts_with("os_glance") => {
                return fail(format!(
                    "image property {k} uses the reserved os_glance namespace"
                ));
            }
            k => {
                let v = match v {
                    Value::String(s) => s.clone(),
                    _ => return fail(format!("image property {k} must be a string")),
                };
                spec.extra.insert(k.to_string(), v);
            }
        }
    }
    if !settings.disk_formats.iter().any(|f| f == &spec.disk_format) {
        return fail(format!(
            "invalid disk_format {:?} (accepted: {})",
            spec.disk_format,
            settings.disk_formats.join(", ")
        ));
    }
    if !settings
        .container_formats
        .iter()
        .any(|f| f == &spec.container_format)
    {
        return fail(format!(
            "invalid container_format {:?} (accepted: {})",
            spec.container_format,
            settings.container_formats.join(", ")
        ));
    }
    if !["private", "public", "shared", "community"].contains(&spec.visibility.as_str()) {
        return fail(format!("invalid visibility {:?}", spec.visibility));
    }
    if !settings.allow_additional_image_properties && !spec.extra.is_empty() {
        return fail(format!(
            "additional image properties are not allowed: {}",
            spec.extra.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if settings.image_property_quota >= 0 && spec.extra.len() as i64 > settings.image_property_quota
    {
        return fail(format!(
            "maximum number of image properties exceeded: {} > image_property_quota {}",
            spec.extra.len(),
            settings.image_property_quota
        ));
    }
    if settings.image_tag_quota >= 0 && spec.tags.len() as i64 > settings.image_tag_quota {
        return fail(format!(
            "maximum number of image tags exceeded: {} > image_tag_quota {}",
            spec.tags.len(),
            settings.image_tag_quota
        ));
    }
    Ok(ImportInput {
        import_from,
        import_from_format,
        image: spec,
    })
}

/// What an attempt has done so far, for the revert.
#[derive(Debug, Default)]
struct Undo {
    image_id: Option<String>,
    /// The task the image's lock property names, dropped with the image.
    lock_holder: Option<String>,
    written: Option<imaged_store::Location>,
    files: Vec<PathBuf>,
}

/// Runs one `import` task to its result (`{"image_id": …}`), reverting
/// everything on failure or cancellation.
pub async fn run_import(ctx: &TaskContext, task: &Task) -> Result<Value, ImportFailure> {
    let input = parse_input(task.input.as_ref(), &ctx.settings)?;
    ctx.fetcher.filter().check(&input.import_from)?;
    let mut undo = Undo::default();
    let res = tokio::select! {
        r = import(ctx, task, &input, &mut undo) => r,
        () = ctx.cancel.cancelled() => Err(ImportFailure::Cancelled("stopped".into())),
    };
    if res.is_err() {
        revert(&ctx.catalog, &ctx.store, &undo).await;
    }
    res
}

async fn revert(catalog: &Catalog, store: &Store, undo: &Undo) {
    if let Some(loc) = &undo.written
        && let Err(e) = store.delete(loc).await
        && !e.is_not_found()
    {
        tracing::warn!(error = %e, location = %loc.redacted_url(), "revert: cannot delete written data");
    }
    if let Some(id) = &undo.image_id
        && let Err(e) = destroy(catalog, id, undo.lock_holder.as_deref()).await
    {
        tracing::warn!(error = %e, image_id = %id, "revert: cannot delete the image");
    }
    for f in &undo.files {
        let _ = tokio::fs::remove_file(f).await;
    }
}

/// Glance's revert of the image: soft-deleted with everything it has; the
/// import lock row, which Glance's legacy import never writes, is deleted
/// outright in the same transaction.
async fn destroy(
    catalog: &Catalog,
    image_id: &str,
    holder: Option<&str>,
) -> Result<(), CatalogError> {
    match holder {
        Some(task_id) => {
            catalog
                .destroy_locked_image(image_id, LOCK_PROPERTY, task_id)
                .await
        }
        None => catalog.destroy_image(image_id).await,
    }
}

/// Removes what an earlier, crashed attempt of `task_id` left: images still
/// carrying its lock property, with their stored data.
pub async fn clean_previous_attempt(
    catalog: &Catalog,
    store: &Store,
    task_id: &str,
) -> Result<usize, CatalogError> {
    let images = catalog.images_with_property(LOCK_PROPERTY, task_id).await?;
    for id in &images {
        for loc in catalog.image_locations(id).await? {
            if loc.deleted {
                continue;
            }
            if let Ok(url) = loc.url {
                let mut l = imaged_store::Location::new(url).with_image_id(id.clone());
                if let Some(s) = loc.meta_data.get("store").and_then(Value::as_str) {
                    l = l.with_store(s);
                }
                if let Err(e) = store.delete(&l).await
                    && !e.is_not_found()
                {
                    tracing::warn!(error = %e, image_id = %id, "cannot delete data of an abandoned attempt");
                }
            }
        }
        destroy(catalog, id, Some(task_id)).await?;
        tracing::info!(image_id = %id, task_id, "removed the image of an abandoned attempt");
    }
    Ok(images.len())
}

fn mib(n: u64) -> u64 {
    n >> 20
}

fn copied(verb: &str, n: u64, total: Option<u64>) -> String {
    match total {
        Some(t) => format!("{verb} {} MiB of {} MiB", mib(n), mib(t)),
        None => format!("{verb} {} MiB", mib(n)),
    }
}

async fn import(
    ctx: &TaskContext,
    task: &Task,
    input: &ImportInput,
    undo: &mut Undo,
) -> Result<Value, ImportFailure> {
    let s = &ctx.settings;
    let spec = &input.image;
    let cat = &ctx.catalog;
    // Image row (already `saving`), lock, properties and tags in one
    // transaction: the rows Glance's flow writes in separate steps, for one
    // commit.
    let image_id = cat
        .create_importing_image(
            &NewImage {
                name: spec.name.clone(),
                // Glance's legacy flow creates the image without an owner unless
                // image_properties names one (see README, "Image owner").
                owner: spec.owner.clone(),
                visibility: spec.visibility.clone(),
                disk_format: Some(spec.disk_format.clone()),
                container_format: Some(spec.container_format.clone()),
                min_disk: spec.min_disk,
                min_ram: spec.min_ram,
                protected: spec.protected,
                os_hidden: spec.os_hidden,
                ..NewImage::default()
            },
            LOCK_PROPERTY,
            &task.id,
            &spec.extra,
            &spec.tags,
        )
        .await?;
    undo.image_id = Some(image_id.clone());
    undo.lock_holder = Some(task.id.clone());

    let mut limit = s.image_size_cap;
    let mut quota_left = None;
    if s.user_storage_quota > 0 {
        let used = cat.owner_storage_usage(&task.owner).await?;
        let left = s.user_storage_quota.saturating_sub(used);
        if left == 0 {
            return fail(format!(
                "user storage quota exceeded: {used} bytes of {} already used",
                s.user_storage_quota
            ));
        }
        quota_left = Some(left);
        limit = limit.min(left);
    }
    ctx.set_progress("Downloading".into());
    let source = ctx.fetcher.open(&input.import_from).await?;
    if let Some(len) = source.length {
        check_limits(len, s.image_size_cap, quota_left)?;
    }

    let mut disk_format = spec.disk_format.clone();
    let (upload, length) = match s
        .conversion_format
        .as_deref()
        .filter(|f| *f != spec.disk_format)
    {
        None => (source.stream, source.length),
        Some(target) => {
            let path = stage(ctx, task, source, quota_left, &spec.disk_format, undo).await?;
            let converted = convert(ctx, task, &path, &spec.disk_format, target, undo).await?;
            disk_format = target.to_string();
            let src = crate::fetch::Fetcher::open_local(&converted).await?;
            (src.stream, src.length)
        }
    };

    let outcome = upload_stream(
        ctx,
        &image_id,
        upload,
        length,
        limit,
        quota_left,
        &disk_format,
        undo,
    )
    .await?;
    if let Some(len) = length
        && outcome.size != len
    {
        return fail(format!(
            "download of {} ended after {} of {len} bytes",
            input.import_from, outcome.size
        ));
    }
    // Data attributes, `saving → active` and the lock release in one
    // transaction, refused unless this task still holds the live image.
    let data = ImageDataUpdate {
        checksum: Some(outcome.digests.checksum.clone()),
        os_hash_algo: Some(outcome.digests.os_hash_algo.clone()),
        os_hash_value: Some(outcome.digests.os_hash_value.clone()),
        size: Some(i64::try_from(outcome.size).unwrap_or(i64::MAX)),
        virtual_size: outcome.virtual_size.and_then(|v| i64::try_from(v).ok()),
        disk_format: (disk_format != spec.disk_format).then(|| disk_format.clone()),
        container_format: None,
    };
    if let Err(refused) = cat
        .activate_imported_image(&image_id, &task.id, &data)
        .await?
    {
        return fail(format!("cannot activate image {image_id}: {refused}"));
    }
    for f in &undo.files {
        let _ = tokio::fs::remove_file(f).await;
    }
    ctx.bytes_written
        .store(outcome.size, std::sync::atomic::Ordering::Relaxed);
    ctx.set_progress(format!("Imported {} MiB", mib(outcome.size)));
    Ok(json!({"image_id": image_id}))
}

fn check_limits(n: u64, cap: u64, quota_left: Option<u64>) -> Result<(), ImportFailure> {
    if n > cap {
        return fail(format!(
            "image size {n} bytes exceeds image_size_cap of {cap} bytes"
        ));
    }
    if let Some(q) = quota_left
        && n > q
    {
        return fail(format!(
            "user storage quota exceeded: the image needs {n} bytes, {q} bytes are left"
        ));
    }
    Ok(())
}

struct Uploaded {
    size: u64,
    digests: crate::hashing::Digests,
    virtual_size: Option<u64>,
}

/// Reads the first [`PREFIX_LEN`] bytes (or all, when shorter) for the
/// inspectors, returning them and the rest of the stream.
async fn take_prefix(
    mut stream: BoxStream<'static, Result<Bytes, FetchError>>,
) -> Result<(Vec<Bytes>, BoxStream<'static, Result<Bytes, FetchError>>), ImportFailure> {
    let mut chunks = Vec::new();
    let mut n = 0usize;
    while n < PREFIX_LEN {
        match stream.next().await {
            Some(Ok(c)) => {
                n += c.len();
                chunks.push(c);
            }
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    Ok((chunks, stream))
}

#[allow(clippy::too_many_arguments)]
async fn upload_stream(
    ctx: &TaskContext,
    image_id: &str,
    stream: BoxStream<'static, Result<Bytes, FetchError>>,
    length: Option<u64>,
    limit: u64,
    quota_left: Option<u64>,
    disk_format: &str,
    undo: &mut Undo,
) -> Result<Uploaded, ImportFailure> {
    let s = &ctx.settings;
    let (prefix, rest) = take_prefix(stream).await?;
    let mut head: Vec<u8> = Vec::with_capacity(PREFIX_LEN);
    for c in &prefix {
        head.extend_from_slice(c);
    }
    let found = inspect::inspect(&head, &s.vmdk_allowed_types)
        .map_err(|e| ImportFailure::Failed(e.to_string()))?;
    if s.require_image_format_match {
        inspect::check_declared(found.format, disk_format)
            .map_err(|e| ImportFailure::Failed(e.to_string()))?;
    }
    drop(head);

    let hasher = Arc::new(MultiHasher::for_size(
        s.hashing_algorithm,
        s.parallel,
        length,
    ));
    let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cap = s.image_size_cap;
    let data = stream::iter(prefix.into_iter().map(Ok)).chain(rest);
    let (h, f, t, p) = (
        hasher.clone(),
        failure.clone(),
        total.clone(),
        ctx.progress.clone(),
    );
    let counted = data.map(move |item| {
        let chunk = match item {
            Ok(c) => c,
            Err(e) => {
                if let Ok(mut slot) = f.lock() {
                    slot.get_or_insert(e.to_string());
                }
                return Err(std::io::Error::other(e.to_string()));
            }
        };
        let n = t.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed)
            + chunk.len() as u64;
        if let Err(ImportFailure::Failed(m) | ImportFailure::Cancelled(m)) =
            check_limits(n, cap, quota_left)
        {
            if let Ok(mut slot) = f.lock() {
                slot.get_or_insert(m.clone());
            }
            return Err(std::io::Error::other(m));
        }
        h.update(&chunk);
        // Whole MiB steps only: the heartbeat reads this string.
        if (n >> 20) != ((n - chunk.len() as u64) >> 20)
            && let Ok(mut msg) = p.lock()
        {
            *msg = copied("Copied", n, length);
        }
        Ok(chunk)
    });
    // The 1 MiB chunks go to the store as they are (no copy into the
    // store's own chunks).
    let written = ctx
        .store
        .write_chunks(
            image_id,
            counted,
            WriteOptions {
                backend: None,
                size_hint: length,
                size_cap: Some(limit),
                progress: None,
            },
        )
        .await;
    let written = match written {
        Ok(w) => w,
        Err(e) => {
            let ours = failure.lock().ok().and_then(|s| s.clone());
            return fail(
                ours.unwrap_or_else(|| format!("writing the image to the store failed: {e}")),
            );
        }
    };
    let mut loc = imaged_store::Location::new(written.url.clone()).with_image_id(image_id);
    if let Some(st) = &written.store {
        loc = loc.with_store(st.clone());
    }
    undo.written = Some(loc);
    // Record the location at once, before the hashing tail and the other
    // updates: a crash from here on leaves a row that the next attempt's
    // clean-up follows to the data.
    let meta = match &written.store {
        Some(name) => json!({"store": name}),
        None => json!({}),
    };
    ctx.catalog
        .add_location(image_id, &written.url, &meta, "active")
        .await?;
    let hasher = Arc::try_unwrap(hasher)
        .map_err(|_| ImportFailure::Failed("hashing state still shared after the upload".into()))?;
    let digests = tokio::task::spawn_blocking(move || hasher.finish())
        .await
        .map_err(|e| ImportFailure::Failed(format!("hashing failed: {e}")))?
        .map_err(|e| ImportFailure::Failed(format!("hashing failed: {e}")))?;
    Ok(Uploaded {
        size: written.size,
        digests,
        virtual_size: inspect::recorded_virtual_size(&found, disk_format, written.size),
    })
}

/// Work-file path of a task.
pub fn work_file(dir: &Path, task_id: &str, suffix: &str) -> PathBuf {
    dir.join(format!("{WORK_FILE_PREFIX}{task_id}.{suffix}"))
}

async fn stage(
    ctx: &TaskContext,
    task: &Task,
    mut source: Source,
    quota_left: Option<u64>,
    disk_format: &str,
    undo: &mut Undo,
) -> Result<PathBuf, ImportFailure> {
    use tokio::io::AsyncWriteExt;
    let s = &ctx.settings;
    let Some(dir) = s.work_dir.clone() else {
        return fail("conversion_format is set but [task] work_dir is not");
    };
    tokio::fs::create_dir_all(&dir).await.map_err(|e| {
        ImportFailure::Failed(format!("cannot create work_dir {}: {e}", dir.display()))
    })?;
    if let Some(len) = source.length {
        let free = crate::qemu::free_space(&dir).map_err(ImportFailure::Failed)?;
        if len > free {
            return fail(format!(
                "work_dir {} has {free} bytes free, the image needs {len}",
                dir.display()
            ));
        }
    }
    let path = work_file(&dir, &task.id, "download");
    undo.files.push(path.clone());
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| ImportFailure::Failed(format!("cannot create {}: {e}", path.display())))?;
    let mut n = 0u64;
    while let Some(chunk) = source.stream.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        check_limits(n, s.image_size_cap, quota_left)?;
        file.write_all(&chunk).await.map_err(|e| {
            ImportFailure::Failed(format!("writing {} failed: {e}", path.display()))
        })?;
        if (n >> 20) != ((n - chunk.len() as u64) >> 20) {
            ctx.set_progress(copied("Downloaded", n, source.length));
        }
    }
    file.flush()
        .await
        .map_err(|e| ImportFailure::Failed(format!("writing {} failed: {e}", path.display())))?;
    drop(file);
    // Inspect before qemu-img sees the file (the fix for CVE-2024-32498).
    let head = read_head(&path).await?;
    let found = inspect::inspect(&head, &s.vmdk_allowed_types)
        .map_err(|e| ImportFailure::Failed(e.to_string()))?;
    if s.require_image_format_match {
        inspect::check_declared(found.format, disk_format)
            .map_err(|e| ImportFailure::Failed(e.to_string()))?;
    }
    Ok(path)
}

/// The first [`PREFIX_LEN`] bytes of a file, for the format inspector.
pub(crate) async fn read_head(path: &Path) -> Result<Vec<u8>, ImportFailure> {
    use tokio::io::AsyncReadExt;
    let f = tokio::fs::File::open(path)
        .await
        .map_err(|e| ImportFailure::Failed(format!("cannot open {}: {e}", path.display())))?;
    let mut head = Vec::with_capacity(PREFIX_LEN);
    f.take(PREFIX_LEN as u64)
        .read_to_end(&mut head)
        .await
        .map_err(|e| ImportFailure::Failed(format!("cannot read {}: {e}", path.display())))?;
    Ok(head)
}

async fn convert(
    ctx: &TaskContext,
    task: &Task,
    src: &Path,
    from: &str,
    to: &str,
    undo: &mut Undo,
) -> Result<PathBuf, ImportFailure> {
    let s = &ctx.settings;
    let from_q = if from == "vhd" { "vpc" } else { from };
    ctx.set_progress(format!("Inspecting before conversion to {to}"));
    let info = crate::qemu::info(src, from_q, &s.vmdk_allowed_types)
        .await
        .map_err(ImportFailure::Failed)?;
    let dir = src.parent().unwrap_or(Path::new("."));
    let need = info.virtual_size.unwrap_or(0);
    let free = crate::qemu::free_space(dir).map_err(ImportFailure::Failed)?;
    if need > free {
        return fail(format!(
            "not enough space in work_dir for the conversion: {need} bytes needed, {free} free"
        ));
    }
    if need > s.image_size_cap {
        return fail(format!(
            "converted image would be {need} bytes, above image_size_cap of {} bytes",
            s.image_size_cap
        ));
    }
    let dst = work_file(dir, &task.id, "converted");
    undo.files.push(dst.clone());
    ctx.set_progress(format!("Converting to {to}"));
    // Conversion of a well-formed image runs at disk speed; an hour covers
    // the largest images while still ending a wedged qemu-img.
    crate::qemu::convert(
        src,
        from_q,
        &dst,
        to,
        Duration::from_secs(3600),
        s.image_size_cap.min(need.max(1) + (1 << 20)),
    )
    .await
    .map_err(ImportFailure::Failed)?;
    // The output must be what was asked for (catches a format hidden in another).
    let head = read_head(&dst).await?;
    let found = inspect::inspect(&head, &s.vmdk_allowed_types)
        .map_err(|e| ImportFailure::Failed(e.to_string()))?;
    let got = if found.format == inspect::Format::Gpt {
        "raw"
    } else {
        found.format.name()
    };
    if got != to {
        return fail(format!(
            "converted image in unexpected format {got} (expected {to})"
        ));
    }
    let _ = tokio::fs::remove_file(src).await;
    Ok(dst)
}
