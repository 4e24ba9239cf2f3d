//! One `api_image_import` run: lock, set-up, staging, plugins, inspection,
//! hashing, the store uploads ([`super::upload`]) and completion; a failed
//! or stopped run is undone by [`super::revert`].
//!
//! Every image change goes through
//! [`imaged_catalog::Catalog::update_locked_image`], which
//! applies it only while the lock still names this task. A watcher checks
//! the lock (and that the image still exists) every heartbeat interval, so
//! an import that lost its lock stops within one interval even in a long
//! download, not only at its next catalog write.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use imaged_catalog::api_import::{
    IMPORT_LOCK, LockedRefusal, LockedUpdate, STAGE_HOST, StoreListChange,
};
use imaged_catalog::claims::ClaimKind;
use imaged_catalog::images::{Image, ImageDataUpdate};
use imaged_catalog::tasks::Task;
use imaged_catalog::{Catalog, CatalogError};
use imaged_store::Location;
use serde_json::{Value, json};

use super::input::{self, ApiImportInput, InputRules, Method};
use super::revert::{remove_staged, revert};
use super::upload::{copy_to_staging, hash_file, read_head, upload_all};
use super::{lock, staging};
use crate::import::{ImportFailure, TaskContext};
use crate::inspect;
use crate::plugins;

/// The import-plugin hook, run on the locally staged data before it is
/// inspected and uploaded (never for copy-image, as in Glance): runs
/// `[image_import_opts] image_import_plugins` through [`crate::plugins`],
/// whose output replaces the staged file in place.
pub async fn run_plugins(
    ctx: &TaskContext,
    task: &Task,
    staged_path: &Path,
    image: &Image,
) -> Result<plugins::PluginOutcome, ImportFailure> {
    let s = &ctx.settings;
    let properties = ctx
        .catalog
        .image_properties(&image.id)
        .await
        .map_err(cat_err(
            &image.id,
            "reading the properties for the import plugins",
        ))?
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    // Plugin output belongs next to the staged file (a rename replaces it),
    // unless a work directory is configured, whose clean-up knows the
    // plugins' work-file names.
    let work_dir = match &s.work_dir {
        Some(d) => d.clone(),
        None => staged_path.parent().unwrap_or(Path::new(".")).to_path_buf(),
    };
    let progress = ctx.progress.clone();
    let heartbeat = move |m: &str| {
        if let Ok(mut p) = progress.lock() {
            *p = m.to_string();
        }
    };
    let pctx = plugins::PluginContext {
        settings: s,
        task_id: &task.id,
        work_dir: &work_dir,
        user_roles: None,
        heartbeat: &heartbeat,
    };
    let staged = plugins::StagedImage {
        path: staged_path.to_path_buf(),
        disk_format: image.disk_format.clone(),
        container_format: image.container_format.clone(),
        image_id: image.id.clone(),
        properties,
    };
    plugins::run_plugins(&pctx, &s.image_import_plugins, staged)
        .await
        .map_err(|e| ImportFailure::Failed(e.to_string()))
}

/// One store this attempt wrote.
#[derive(Debug, Clone)]
pub(super) struct WrittenStore {
    pub(super) location: Location,
    /// The location row, once recorded.
    pub(super) row: Option<i64>,
    /// Already deleted again (its store failed after the write).
    pub(super) removed: bool,
}

/// What an attempt has done so far, for its revert.
#[derive(Debug, Default)]
pub(super) struct Attempt {
    /// `os_glance_stage_host` as found (restored when glance-direct fails).
    pub(super) stage_host: Option<String>,
    /// The set-up ran (status and store lists changed).
    pub(super) set_up: bool,
    /// A staged file this attempt wrote (web-download, copy-image).
    pub(super) staged_here: Option<PathBuf>,
    /// Files the plugins produced besides the staged file.
    pub(super) derived: Vec<PathBuf>,
    pub(super) written: Arc<Mutex<Vec<WrittenStore>>>,
    /// Stores whose upload failed (the failed list names them).
    pub(super) failed: Vec<String>,
    /// glance-direct found its staged data (a failure then keeps the image
    /// `uploading` for a retry; without data it goes back to `queued`).
    pub(super) staged_present: bool,
    /// The staged data's size (glance-direct), restored on a failure after
    /// a store revert cleared `size`.
    pub(super) staged_size: Option<i64>,
    /// `disk_format` and `container_format` as they were before the plugins
    /// changed them (conversion), restored when a failed web-download
    /// removes the converted data.
    pub(super) formats_before: Option<(Option<String>, Option<String>)>,
}

pub(super) fn fail<T>(msg: impl Into<String>) -> Result<T, ImportFailure> {
    Err(ImportFailure::Failed(msg.into()))
}

/// A catalog error naming the image and the step it interrupted (the
/// plain conversion names neither, which leaves the task message useless).
pub(super) fn cat_err(id: &str, step: &str) -> impl FnOnce(CatalogError) -> ImportFailure {
    let what = format!("image {id}: {step}");
    move |e| ImportFailure::Failed(format!("{what}: catalog error: {e}"))
}

pub(super) fn set_progress(ctx: &TaskContext, msg: impl Into<String>) {
    if let Ok(mut p) = ctx.progress.lock() {
        *p = msg.into();
    }
}

/// The enabled stores of a multi-store deployment (reserved ones left out),
/// or `None` in single-store mode.
fn backend_names(ctx: &TaskContext) -> Option<Vec<String>> {
    ctx.settings.api_import.multi_store.then(|| {
        ctx.store
            .backends()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !n.starts_with("os_glance_"))
            .collect()
    })
}

fn parse_input(ctx: &TaskContext, task: &Task) -> Result<ApiImportInput, ImportFailure> {
    let backends = backend_names(ctx);
    input::parse(
        task.input.as_ref(),
        task.image_id.as_deref(),
        &InputRules {
            enabled_methods: &ctx.settings.api_import.enabled_import_methods,
            backends: backends.as_deref(),
        },
    )
}

/// Runs one `api_image_import` task to its result (`{"image_id": …}`),
/// reverting this attempt's effects on failure.
pub async fn run(ctx: &TaskContext, task: &Task) -> Result<Value, ImportFailure> {
    let input = match parse_input(ctx, task) {
        Ok(i) => i,
        Err(e) => {
            // The API took the lock for this task; an unusable input must
            // not keep the image locked.
            if let Some(id) = input::image_id_of(task.input.as_ref()) {
                let _ = ctx
                    .catalog
                    .delete_property_atomic(&id, IMPORT_LOCK, &task.id)
                    .await;
            }
            return Err(e);
        }
    };
    let image_id = input.image_id.clone();
    // A deleted or purged image gets no lock row (a lock on a missing image
    // would break the catalog's foreign key; on a deleted one it is noise).
    match ctx.catalog.get_image(&image_id).await.map_err(cat_err(
        &image_id,
        "reading the image before taking the import lock",
    ))? {
        Some(img) if !img.deleted => {}
        _ => {
            return Err(ImportFailure::Failed(format!(
                "Image {image_id} has been deleted, aborting import."
            )));
        }
    }
    lock::acquire(
        &ctx.catalog,
        task,
        &image_id,
        ctx.settings.task_time_to_live,
    )
    .await?;
    let mut att = Attempt::default();
    let res = tokio::select! {
        r = import(ctx, task, &input, &mut att) => r,
        () = ctx.cancel.cancelled() => Err(ImportFailure::Cancelled(if ctx.lost.is_cancelled() {
            format!("import of image {image_id} stopped: the task's claim was taken over by another executor")
        } else {
            format!("import of image {image_id} stopped: handed back at shutdown")
        })),
        m = watch_lock(ctx, task, &image_id) => Err(ImportFailure::Failed(m)),
    };
    // Completion runs outside the watcher: once the uploads are done, a
    // lock change no longer undoes them (the executor drops the lock after
    // recording the success).
    let res = match res {
        Ok(()) => complete(ctx, task, &input, &att).await,
        Err(e) => Err(e),
    };
    match res {
        Ok(v) => Ok(v),
        Err(e) => Err(revert(ctx, task, &input, &att, e).await),
    }
}

/// Returns (with the reason) once the image is deleted or its lock no
/// longer names the task.
async fn watch_lock(ctx: &TaskContext, task: &Task, image_id: &str) -> String {
    let mut tick = tokio::time::interval(ctx.settings.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match ctx.catalog.get_image(image_id).await {
            Ok(Some(img)) if img.deleted => {
                return format!("Image {image_id} has been deleted, aborting import.");
            }
            Ok(None) => return format!("Image {image_id} has been deleted, aborting import."),
            _ => {}
        }
        match ctx.catalog.import_lock_holder(image_id).await {
            Ok(Some(h)) if h == task.id => {}
            Ok(other) => {
                return format!(
                    "image {image_id}: import task {} lost its lock during execution (now {})",
                    task.id,
                    other.map_or_else(|| "unlocked".to_string(), |o| format!("held by task {o}"))
                );
            }
            Err(e) => {
                tracing::warn!(image_id, error = %e, "cannot check the import lock; will retry")
            }
        }
    }
}

/// `importing → active` under the lock (Glance's set-active rule met).
pub(super) async fn activate(
    ctx: &TaskContext,
    task: &Task,
    id: &str,
) -> Result<(), ImportFailure> {
    let upd = LockedUpdate {
        status: Some((vec!["importing".into()], "active".into())),
        ..LockedUpdate::default()
    };
    locked(ctx, task, id, &upd).await.map(|_| ())
}

pub(super) async fn locked(
    ctx: &TaskContext,
    task: &Task,
    image_id: &str,
    upd: &LockedUpdate,
) -> Result<Option<i64>, ImportFailure> {
    match ctx
        .catalog
        .update_locked_image(image_id, &task.id, upd)
        .await
        .map_err(cat_err(
            image_id,
            "updating the image under the import lock",
        ))? {
        Ok(id) => Ok(id),
        // The refusal names only what was found; what the update needed
        // tells the operator which step ran into what.
        Err(r @ LockedRefusal::Status { .. }) => fail(format!(
            "image {image_id}: cannot update the image: {r}, expected {}",
            upd.status
                .as_ref()
                .map(|(from, _)| from.join(" or "))
                .unwrap_or_default()
        )),
        Err(r) => fail(format!("image {image_id}: cannot update the image: {r}")),
    }
}

pub(super) fn store_label(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "default store".into())
}

/// Everything before completion: set-up, staging, plugins, inspection,
/// hashing and the uploads.
async fn import(
    ctx: &TaskContext,
    task: &Task,
    input: &ApiImportInput,
    att: &mut Attempt,
) -> Result<(), ImportFailure> {
    let cat = &ctx.catalog;
    let id = input.image_id.as_str();
    let image = match cat
        .get_image(id)
        .await
        .map_err(cat_err(id, "reading the image"))?
    {
        Some(i) if !i.deleted => i,
        _ => return fail(format!("Image {id} has been deleted, aborting import.")),
    };
    if image.disk_format.is_none() || image.container_format.is_none() {
        return fail(format!(
            "image {id} needs disk_format and container_format set before it can be imported"
        ));
    }
    let copy = input.method == Method::CopyImage;
    // A resumed attempt continues what a dead executor's attempt of this
    // task began (the lock still names the task).
    let resumed = cat
        .claim_record(ClaimKind::Task, &task.id)
        .await
        .map_err(cat_err(id, "reading the task's claim"))?
        .is_some_and(|r| r.attempts > 1);
    // Stores that already hold the image's data: written by an earlier,
    // interrupted attempt of this task (a location row is recorded only
    // after the store has published the whole object), or, for copy-image,
    // the image's existing stores. A first web-download or glance-direct
    // attempt writes every target store.
    let live: Vec<imaged_catalog::images::Location> = cat
        .image_locations(id)
        .await
        .map_err(cat_err(id, "reading the locations"))?
        .into_iter()
        .filter(|l| !l.deleted && l.status == "active")
        .collect();
    let holds = |s: &Option<String>| match s {
        _ if !copy && !resumed => false,
        Some(name) => live
            .iter()
            .any(|l| l.meta_data.get("store").and_then(Value::as_str) == Some(name)),
        None => !live.is_empty(),
    };
    let pending: Vec<Option<String>> = input.stores.iter().filter(|s| !holds(s)).cloned().collect();
    let done: Vec<String> = input
        .stores
        .iter()
        .filter(|s| holds(s))
        .flatten()
        .cloned()
        .collect();
    // The single store has no name: `done` cannot tell that it is done.
    let done_any = input.stores.iter().any(&holds);

    // Set-up, as Glance does while building the flow: status importing
    // (not for copy-image), the stores listed as importing and not failed,
    // the stage host popped.
    // `importing`/`active` only when resuming: the first attempt finds the
    // status the API requires.
    let mut accepted: Vec<String> = match &input.method {
        Method::WebDownload { .. } => vec!["queued".into()],
        Method::GlanceDirect => vec!["uploading".into()],
        Method::CopyImage => vec!["active".into()],
    };
    if resumed && !copy {
        accepted.extend(["importing".to_string(), "active".to_string()]);
    }
    if !accepted.contains(&image.status) {
        return fail(format!(
            "image {id} is {}; {} needs it {}",
            image.status,
            input.method.name(),
            match &input.method {
                Method::WebDownload { .. } => "queued",
                Method::GlanceDirect => "uploading (data staged)",
                Method::CopyImage => "active",
            }
        ));
    }
    att.stage_host = cat
        .image_properties(id)
        .await
        .map_err(cat_err(id, "reading the properties"))?
        .get(STAGE_HOST)
        .cloned()
        .flatten();
    let names = input.store_names();
    let to = if copy || image.status == "active" {
        image.status.clone()
    } else {
        "importing".to_string()
    };
    locked(
        ctx,
        task,
        id,
        &LockedUpdate {
            status: Some((accepted.clone(), to)),
            importing: Some(StoreListChange {
                add: pending.iter().flatten().cloned().collect(),
                remove: done.clone(),
            }),
            failed: Some(StoreListChange {
                add: vec![],
                remove: names.clone(),
            }),
            remove_properties: vec![STAGE_HOST.to_string()],
            ..LockedUpdate::default()
        },
    )
    .await?;
    att.set_up = true;
    // Stores an earlier attempt finished count as successes of this one
    // (Glance's set-active rule): without this, a resumed attempt whose
    // stores are all recorded leaves the image `importing` and fails.
    if !copy
        && image.status != "active"
        && done_any
        && (!input.all_stores_must_succeed || pending.is_empty())
    {
        activate(ctx, task, id).await?;
    }
    if pending.is_empty() {
        tracing::info!(image_id = id, task_id = %task.id, "every target store already holds the image");
        return Ok(());
    }

    // Staging.
    let dir = staging::staging_dir(&ctx.settings)?;
    let staged = staging::staged_path(&dir, id);
    let s = &ctx.settings;
    match &input.method {
        Method::WebDownload { uri } => {
            set_progress(ctx, "Downloading");
            let src = ctx.fetcher.open(uri).await?;
            if let Some(len) = src.length
                && len > s.image_size_cap
            {
                return fail(format!(
                    "image size {len} bytes exceeds image_size_cap of {} bytes",
                    s.image_size_cap
                ));
            }
            att.staged_here = Some(staged.clone());
            let n = staging::fill(
                &staged,
                src.stream,
                src.length,
                s.image_size_cap,
                "Downloaded",
                &ctx.progress,
            )
            .await?;
            if let Some(len) = src.length
                && n != len
            {
                return fail(format!("download of {uri} ended after {n} of {len} bytes"));
            }
        }
        Method::GlanceDirect => {
            let meta = tokio::fs::metadata(&staged).await.map_err(|e| {
                ImportFailure::Failed(format!(
                    "staged data of image {id} not found at {}: {e}; stage it with PUT /v2/images/{id}/stage",
                    staged.display()
                ))
            })?;
            att.staged_present = true;
            att.staged_size = i64::try_from(meta.len()).ok();
            if let Some(size) = image.size
                && u64::try_from(size).ok() != Some(meta.len())
            {
                return fail(format!(
                    "staged data of image {id} at {} has {} bytes, the image says {size}",
                    staged.display(),
                    meta.len()
                ));
            }
        }
        Method::CopyImage => {
            copy_to_staging(ctx, &image, &live, &staged, att).await?;
        }
    }

    // Plugins (never for copy-image: they change data that is already active).
    let mut plugin_virtual_size = None;
    if !copy {
        set_progress(ctx, "Running import plugins");
        let out = run_plugins(ctx, task, &staged, &image).await?;
        if out.path != staged {
            att.derived.push(out.path.clone());
        }
        // Decompression and conversion replace the staged file in place:
        // the image's size follows it (as Glance's plugins set it), and a
        // glance-direct retry then finds size and staged data in agreement.
        let new_size = tokio::fs::metadata(&out.path)
            .await
            .ok()
            .and_then(|m| i64::try_from(m.len()).ok());
        let size_changed = matches!(input.method, Method::GlanceDirect) && new_size != image.size;
        if size_changed {
            att.staged_size = new_size;
        }
        let formats_changed =
            out.disk_format != image.disk_format || out.container_format != image.container_format;
        if formats_changed {
            att.formats_before = Some((image.disk_format.clone(), image.container_format.clone()));
        }
        if formats_changed || size_changed || !out.set_properties.is_empty() {
            locked(
                ctx,
                task,
                id,
                &LockedUpdate {
                    data: (formats_changed || size_changed).then(|| ImageDataUpdate {
                        disk_format: out.disk_format.clone().filter(|_| formats_changed),
                        container_format: out.container_format.clone().filter(|_| formats_changed),
                        size: new_size.filter(|_| size_changed),
                        ..ImageDataUpdate::default()
                    }),
                    set_properties: out.set_properties.clone().into_iter().collect(),
                    ..LockedUpdate::default()
                },
            )
            .await?;
        }
        plugin_virtual_size = out.virtual_size;
    }
    let upload_path = staged.clone();
    let upload_path = match att.derived.last() {
        Some(p) => p.clone(),
        None => upload_path,
    };
    let image = match cat
        .get_image(id)
        .await
        .map_err(cat_err(id, "reading the image after the plugins"))?
    {
        Some(i) if !i.deleted => i,
        _ => return fail(format!("Image {id} has been deleted, aborting import.")),
    };
    let disk_format = image.disk_format.clone().unwrap_or_default();

    // Inspection: bare data only, as Glance's upload inspects it; copies
    // were inspected when they were first imported.
    let mut virtual_size = None;
    let size = tokio::fs::metadata(&upload_path)
        .await
        .map_err(|e| ImportFailure::Failed(format!("cannot read {}: {e}", upload_path.display())))?
        .len();
    if size > s.image_size_cap {
        return fail(format!(
            "image size {size} bytes exceeds image_size_cap of {} bytes",
            s.image_size_cap
        ));
    }
    if !copy && image.container_format.as_deref() == Some("bare") {
        set_progress(ctx, "Inspecting");
        let head = read_head(&upload_path).await?;
        let found = inspect::inspect(&head, &s.vmdk_allowed_types)
            .map_err(|e| ImportFailure::Failed(format!("image {id}: {e}")))?;
        if s.require_image_format_match {
            inspect::check_declared(found.format, &disk_format)
                .map_err(|e| ImportFailure::Failed(format!("image {id}: {e}")))?;
        }
        virtual_size = inspect::recorded_virtual_size(&found, &disk_format, size);
    }
    if plugin_virtual_size.is_some() {
        virtual_size = plugin_virtual_size;
    }
    let digests = hash_file(ctx, &upload_path, size).await?;
    // The data of every store must be the image's data (Glance's
    // UploadException checks).
    for (what, have, got) in [
        ("checksum", image.checksum.clone(), digests.checksum.clone()),
        (
            "os_hash_value",
            image.os_hash_value.clone(),
            digests.os_hash_value.clone(),
        ),
    ] {
        if let Some(h) = have
            && h != got
        {
            return fail(format!(
                "image {id}: the data's {what} {got} differs from the image's {h}"
            ));
        }
    }
    if copy
        && let Some(sz) = image.size
        && u64::try_from(sz).ok() != Some(size)
    {
        return fail(format!(
            "image {id}: the copied data has {size} bytes, the image says {sz}"
        ));
    }
    let data = (!copy).then(|| ImageDataUpdate {
        checksum: Some(digests.checksum.clone()),
        os_hash_algo: Some(digests.os_hash_algo.clone()),
        os_hash_value: Some(digests.os_hash_value.clone()),
        size: i64::try_from(size).ok(),
        virtual_size: virtual_size.and_then(|v| i64::try_from(v).ok()),
        disk_format: None,
        container_format: None,
    });

    upload_all(ctx, task, input, att, &upload_path, size, data, &pending).await
}

/// The end of a successful import: staged data removed (Glance's
/// `_DeleteFromFS`), the result returned. The lock stays until the
/// executor has recorded the task's success ([`release_lock`]).
async fn complete(
    ctx: &TaskContext,
    _task: &Task,
    input: &ApiImportInput,
    att: &Attempt,
) -> Result<Value, ImportFailure> {
    let id = input.image_id.as_str();
    let img = ctx
        .catalog
        .get_image(id)
        .await
        .map_err(cat_err(id, "reading the image to complete the import"))?;
    if input.method != Method::CopyImage && img.as_ref().is_none_or(|i| i.status != "active") {
        return fail(format!(
            "None of the uploads finished! image {id} is not active"
        ));
    }
    remove_staged(ctx, id, att, true).await;
    set_progress(ctx, "");
    Ok(json!({"image_id": id}))
}

/// Drops the import lock of a task whose success is recorded (Glance's
/// `_CompleteTask`: the task succeeds first, then the lock goes).
pub async fn release_lock(catalog: &Catalog, task_id: &str, image_id: &str) {
    match catalog
        .delete_property_atomic(image_id, IMPORT_LOCK, task_id)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::error!(
                image_id,
                task_id,
                "import task did not hold the lock upon completion"
            )
        }
        Err(e) => {
            tracing::warn!(image_id, task_id, error = %e, "cannot drop the import lock after the task succeeded")
        }
    }
}
