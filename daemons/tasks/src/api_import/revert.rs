//! The revert of an import attempt (after a failure, a cancellation or
//! too many attempts): the objects and location rows it wrote, the image
//! status and store lists, the staged data that is no longer due, and the
//! lock. Each failure ends the image in a state the API can continue from.

use std::path::Path;

use imaged_catalog::Catalog;
use imaged_catalog::api_import::{
    IMPORT_LOCK, LockedRefusal, LockedUpdate, STAGE_HOST, StoreListChange,
};
use imaged_catalog::images::ImageDataUpdate;
use imaged_catalog::tasks::Task;
use imaged_store::{Location, Store};
use serde_json::Value;

use super::flow::{Attempt, WrittenStore};
use super::input::{self, ApiImportInput, Method};
use super::staging;
use crate::import::{ImportFailure, TaskContext};

async fn remove_file(path: &Path) {
    match tokio::fs::remove_file(path).await {
        Ok(()) => tracing::debug!(file = %path.display(), "removed staged data"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot remove staged data"),
    }
}

/// Removes plugin outputs, and the staged file itself when `all` (success)
/// or when this attempt wrote it.
pub(super) async fn remove_staged(ctx: &TaskContext, id: &str, att: &Attempt, all: bool) {
    for f in &att.derived {
        remove_file(f).await;
    }
    if all {
        if let Ok(dir) = staging::staging_dir(&ctx.settings) {
            remove_file(&staging::staged_path(&dir, id)).await;
        }
    } else if let Some(f) = &att.staged_here {
        remove_file(f).await;
    }
}

/// Soft-deletes the location rows this attempt recorded (clearing the data
/// attributes when no location is left) and deletes the objects it wrote.
/// When the rows cannot be removed (the lock moved on), recorded objects
/// stay: live rows point at them. Objects never recorded are always ours.
async fn unwrite(ctx: &TaskContext, task: &Task, id: &str, att: &Attempt, clear: bool) {
    let written: Vec<WrittenStore> = att
        .written
        .lock()
        .map(|v| v.iter().filter(|w| !w.removed).cloned().collect())
        .unwrap_or_default();
    let rows: Vec<i64> = written.iter().filter_map(|w| w.row).collect();
    let mut rows_removed = rows.is_empty();
    if !rows.is_empty() {
        let left = ctx
            .catalog
            .image_locations(id)
            .await
            .map(|v| {
                v.iter()
                    .filter(|l| !l.deleted && !rows.contains(&l.id))
                    .count()
            })
            .unwrap_or(1);
        let upd = LockedUpdate {
            delete_locations: rows,
            clear_data: clear && left == 0,
            ..LockedUpdate::default()
        };
        match ctx.catalog.update_locked_image(id, &task.id, &upd).await {
            Ok(Ok(_)) => rows_removed = true,
            Ok(Err(r)) => {
                tracing::warn!(image_id = id, reason = %r, "revert: location rows kept")
            }
            Err(e) => {
                tracing::warn!(image_id = id, error = %e, "revert: location rows kept")
            }
        }
    }
    for w in written.iter().filter(|w| rows_removed || w.row.is_none()) {
        if let Err(e) = ctx.store.delete(&w.location).await
            && !e.is_not_found()
        {
            tracing::warn!(image_id = id, location = %w.location.redacted_url(), error = %e, "revert: cannot delete written data");
        }
    }
}

/// Reverts this attempt after a failure or cancellation and returns the
/// failure (with where the image was left, for the task message).
pub(super) async fn revert(
    ctx: &TaskContext,
    task: &Task,
    input: &ApiImportInput,
    att: &Attempt,
    err: ImportFailure,
) -> ImportFailure {
    let id = input.image_id.as_str();
    let copy = input.method == Method::CopyImage;
    // Without the lock, the image and its staging area belong to whoever
    // holds it now: only objects this attempt wrote but never recorded are
    // removed. A lock that nobody holds any more (dropped from outside) is
    // taken back for the revert, so the image is not left `importing`.
    let ours = match ctx.catalog.import_lock_holder(id).await {
        Ok(Some(h)) => h == task.id,
        Ok(None) => {
            let live = matches!(ctx.catalog.get_image(id).await, Ok(Some(i)) if !i.deleted);
            live && matches!(
                ctx.catalog
                    .set_property_atomic(id, IMPORT_LOCK, &task.id)
                    .await,
                Ok(true)
            )
        }
        Err(_) => false,
    };
    if !ours {
        unwrite(ctx, task, id, att, false).await;
        return err;
    }
    if let ImportFailure::Cancelled(_) = err {
        // Handed back (or the claim was lost): the next attempt of this task
        // continues under the same lock; only half-done work is undone.
        unwrite(ctx, task, id, att, !copy).await;
        if !matches!(input.method, Method::GlanceDirect) {
            remove_staged(ctx, id, att, false).await;
        }
        // The next attempt downloads the original again: as after a
        // failure, the image must declare the original's formats again.
        if let (Method::WebDownload { .. }, Some((disk_format, container_format))) =
            (&input.method, &att.formats_before)
        {
            let upd = LockedUpdate {
                data: Some(ImageDataUpdate {
                    disk_format: disk_format.clone(),
                    container_format: container_format.clone(),
                    ..ImageDataUpdate::default()
                }),
                ..LockedUpdate::default()
            };
            match ctx.catalog.update_locked_image(id, &task.id, &upd).await {
                Ok(Ok(_)) => {}
                Ok(Err(r)) => {
                    tracing::warn!(image_id = id, reason = %r, "hand-back: cannot restore the image's formats")
                }
                Err(e) => {
                    tracing::warn!(image_id = id, error = %e, "hand-back: cannot restore the image's formats")
                }
            }
        }
        return err;
    }
    let ImportFailure::Failed(msg) = err else {
        return err;
    };
    unwrite(ctx, task, id, att, !copy).await;
    let names = input.store_names();
    // A failed store is named in the failed list; a failure before any
    // upload fails every requested store (Glance's download revert).
    let failed = if att.failed.is_empty() {
        names.clone()
    } else {
        att.failed.clone()
    };
    let (status, left) = match &input.method {
        Method::WebDownload { .. } => (
            Some((
                vec!["importing".to_string(), "queued".into()],
                "queued".to_string(),
            )),
            "queued",
        ),
        Method::GlanceDirect if !att.staged_present => (
            Some((
                vec!["importing".to_string(), "uploading".into()],
                "queued".to_string(),
            )),
            "queued (no staged data; stage the data again)",
        ),
        Method::GlanceDirect => (
            Some((
                vec!["importing".to_string(), "uploading".into()],
                "uploading".to_string(),
            )),
            "uploading (staged data kept; the import can be retried)",
        ),
        Method::CopyImage => (None, "active"),
    };
    let mut set_properties = Vec::new();
    if matches!(input.method, Method::GlanceDirect)
        && att.staged_present
        && let Some(h) = &att.stage_host
    {
        set_properties.push((STAGE_HOST.to_string(), h.clone()));
    }
    let upd = LockedUpdate {
        status: if att.set_up { status } else { None },
        importing: att.set_up.then(|| StoreListChange {
            add: vec![],
            remove: names.clone(),
        }),
        failed: att.set_up.then(|| StoreListChange {
            add: failed,
            remove: vec![],
        }),
        set_properties,
        data: match (&input.method, att.staged_size, &att.formats_before) {
            (Method::GlanceDirect, Some(size), _) if att.staged_present => Some(ImageDataUpdate {
                size: Some(size),
                ..ImageDataUpdate::default()
            }),
            // The converted data is removed with the staged file, and a new
            // web-download fetches the original again: the image must
            // declare the original's formats, or that retry is refused as a
            // format mismatch. (glance-direct keeps the converted data
            // staged, so its converted formats stay true.)
            (Method::WebDownload { .. }, _, Some((disk_format, container_format))) => {
                Some(ImageDataUpdate {
                    disk_format: disk_format.clone(),
                    container_format: container_format.clone(),
                    ..ImageDataUpdate::default()
                })
            }
            _ => None,
        },
        ..LockedUpdate::default()
    };
    // Before the set-up the image was not changed: nothing to report.
    let mut where_left = if att.set_up {
        format!("; image {id} left {left}")
    } else {
        String::new()
    };
    match ctx.catalog.update_locked_image(id, &task.id, &upd).await {
        Ok(Ok(_)) => {}
        Ok(Err(LockedRefusal::LockLost { .. } | LockedRefusal::ImageGone)) => where_left.clear(),
        Ok(Err(r)) => {
            tracing::warn!(image_id = id, reason = %r, "revert: cannot reset the image");
            where_left = format!("; image {id} could not be reset: {r}");
        }
        Err(e) => {
            tracing::warn!(image_id = id, error = %e, "revert: cannot reset the image");
            where_left = format!("; image {id} could not be reset: {e}");
        }
    }
    // glance-direct keeps its staged data for a retry; downloaded and
    // copied data is removed (a retry fetches it again).
    remove_staged(ctx, id, att, false).await;
    match ctx
        .catalog
        .delete_property_atomic(id, IMPORT_LOCK, &task.id)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(image_id = id, task_id = %task.id, "import task lost its lock during execution")
        }
        Err(e) => tracing::warn!(image_id = id, error = %e, "revert: cannot drop the import lock"),
    }
    ImportFailure::Failed(format!("{msg}{where_left}"))
}

/// Ends a task abandoned after too many attempts (each executor running it
/// died): the image is reset as after a failure — data its attempts stored
/// for this import removed (not for copy-image, whose copies are complete
/// and valid), status back, stores marked failed, lock dropped.
pub async fn abandon(catalog: &Catalog, store: &Store, task: &Task, settings: &crate::Settings) {
    let Some(id) = input::image_id_of(task.input.as_ref()) else {
        return;
    };
    match catalog.import_lock_holder(&id).await {
        Ok(Some(h)) if h == task.id => {}
        _ => return,
    }
    let method = task
        .input
        .as_ref()
        .and_then(|i| i.pointer("/import_req/method/name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let stores: Vec<String> = task
        .input
        .as_ref()
        .and_then(|i| i.get("backend"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut upd = LockedUpdate {
        importing: Some(StoreListChange {
            add: vec![],
            remove: stores.clone(),
        }),
        failed: Some(StoreListChange {
            add: stores,
            remove: vec![],
        }),
        ..LockedUpdate::default()
    };
    let active = catalog
        .get_image(&id)
        .await
        .ok()
        .flatten()
        .is_some_and(|i| i.status == "active");
    // An image an earlier attempt already activated keeps its data.
    if method != "copy-image" && !active {
        if let Ok(locs) = catalog.image_locations(&id).await {
            for l in locs.into_iter().filter(|l| !l.deleted) {
                if let Ok(url) = &l.url {
                    let mut loc = Location::new(url.clone()).with_image_id(id.clone());
                    if let Some(s) = l.meta_data.get("store").and_then(Value::as_str) {
                        loc = loc.with_store(s);
                    }
                    if let Err(e) = store.delete(&loc).await
                        && !e.is_not_found()
                    {
                        tracing::warn!(image_id = %id, error = %e, "cannot delete data of an abandoned import");
                    }
                }
                upd.delete_locations.push(l.id);
            }
        }
        upd.clear_data = true;
        let to = if method == "glance-direct" {
            "uploading"
        } else {
            "queued"
        };
        upd.status = Some((
            vec!["importing".into(), "queued".into(), "uploading".into()],
            to.into(),
        ));
        if method == "web-download"
            && let Ok(dir) = &settings.api_import.staging_dir
        {
            remove_file(&staging::staged_path(dir, &id)).await;
        }
    }
    if let Err(e) = catalog.update_locked_image(&id, &task.id, &upd).await {
        tracing::warn!(image_id = %id, error = %e, "cannot reset the image of an abandoned import");
    }
    let _ = catalog
        .delete_property_atomic(&id, IMPORT_LOCK, &task.id)
        .await;
}
