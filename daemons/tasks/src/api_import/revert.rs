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

/// Deletes the objects this attempt wrote but never recorded: no location
/// row points at them, so they are this attempt's whoever holds the image
/// now. Recorded objects are left with their rows.
async fn delete_unrecorded(ctx: &TaskContext, id: &str, att: &Attempt) {
    let unrecorded: Vec<WrittenStore> = att
        .written
        .lock()
        .map(|v| {
            v.iter()
                .filter(|w| !w.removed && w.row.is_none())
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for w in unrecorded {
        if let Err(e) = ctx.store.delete(&w.location).await
            && !e.is_not_found()
        {
            tracing::warn!(image_id = id, location = %w.location.redacted_url(), error = %e, "revert: cannot delete unrecorded data");
        }
    }
}

/// Whether this attempt recorded a location row.
fn recorded_any(att: &Attempt) -> bool {
    att.written
        .lock()
        .map(|v| v.iter().any(|w| !w.removed && w.row.is_some()))
        .unwrap_or(true)
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
    // The claim was taken over: another executor runs this same task now,
    // and the lock names the task, not the executor, so every check below
    // would pass for it too. Its attempt may count this attempt's stores as
    // done and is writing the staged file: nothing here is ours to undo.
    if ctx.lost.is_cancelled() {
        tracing::warn!(image_id = id, task_id = %task.id, "claim lost to another executor; this attempt is not reverted");
        return err;
    }
    // Without the lock, the image and its staging area belong to whoever
    // holds it now: only objects this attempt wrote but never recorded are
    // removed. A missing lock counts as not ours: it does not prove that
    // nobody else imports (Glance's lock busting deletes the lock before
    // setting its own, and staging data does not take it).
    let ours = matches!(ctx.catalog.import_lock_holder(id).await, Ok(Some(h)) if h == task.id);
    if !ours {
        delete_unrecorded(ctx, id, att).await;
        return err;
    }
    if let ImportFailure::Cancelled(_) = err {
        // Handed back: the next attempt of this task continues under the
        // same lock and reuses the recorded stores (the image may already
        // be `active` with them); only objects never recorded are undone.
        delete_unrecorded(ctx, id, att).await;
        if !matches!(input.method, Method::GlanceDirect) {
            remove_staged(ctx, id, att, false).await;
        }
        // The next attempt downloads the original again: as after a
        // failure, the image must declare the original's formats again —
        // unless a kept location holds the converted data, which the
        // formats must go on describing.
        if let (Method::WebDownload { .. }, Some((disk_format, container_format)), false) =
            (&input.method, &att.formats_before, recorded_any(att))
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
    let names = input.store_names();
    // Activated (here, or by an earlier attempt of this task): the image
    // stays `active` with the stores that hold its data; only the stores
    // without a location are failed.
    let live_stores: Option<Vec<String>> = if copy {
        None
    } else {
        match ctx.catalog.get_image(id).await {
            Ok(Some(i)) if i.status == "active" => {
                ctx.catalog.image_locations(id).await.ok().map(|v| {
                    v.into_iter()
                        .filter(|l| !l.deleted && l.status == "active")
                        .filter_map(|l| {
                            l.meta_data
                                .get("store")
                                .and_then(Value::as_str)
                                .map(str::to_string)
                        })
                        .collect()
                })
            }
            _ => None,
        }
    };
    let activated = live_stores.is_some();
    if activated {
        delete_unrecorded(ctx, id, att).await;
    } else {
        unwrite(ctx, task, id, att, !copy).await;
    }
    // A failed store is named in the failed list; a failure before any
    // upload fails every requested store (Glance's download revert).
    let failed = match &live_stores {
        Some(held) => names
            .iter()
            .filter(|n| !held.contains(n))
            .cloned()
            .collect(),
        None if att.failed.is_empty() => names.clone(),
        None => att.failed.clone(),
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
    let (status, left) = if activated {
        (None, "active with the stores that hold its data")
    } else {
        (status, left)
    };
    let mut set_properties = Vec::new();
    if matches!(input.method, Method::GlanceDirect)
        && !activated
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
            // The stored data is what the image describes now.
            _ if activated => None,
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
    let reset = ctx.catalog.update_locked_image(id, &task.id, &upd).await;
    match &reset {
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
    // glance-direct keeps its staged data for a retry; downloaded data is
    // removed (a retry fetches it again), a complete copy-image copy kept.
    // Only once the image was reset under our lock: a refusal means the
    // staging area may be someone else's now.
    if matches!(reset, Ok(Ok(_))) {
        remove_staged(ctx, id, att, false).await;
    }
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
    // Objects are deleted only after the lock-checked update removed their
    // rows: until then they may be data the lock's holder still uses.
    let mut objects: Vec<Location> = Vec::new();
    if method != "copy-image" && !active {
        if let Ok(locs) = catalog.image_locations(&id).await {
            for l in locs
                .into_iter()
                .filter(|l| !l.deleted && l.status == "active")
            {
                if let Ok(url) = &l.url {
                    let mut loc = Location::new(url.clone()).with_image_id(id.clone());
                    if let Some(s) = l.meta_data.get("store").and_then(Value::as_str) {
                        loc = loc.with_store(s);
                    }
                    objects.push(loc);
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
    }
    let reset = match catalog.update_locked_image(&id, &task.id, &upd).await {
        Ok(Ok(_)) => true,
        Ok(Err(r)) => {
            tracing::warn!(image_id = %id, task_id = %task.id, reason = %r, "abandoned import: image not reset, nothing deleted");
            false
        }
        Err(e) => {
            tracing::warn!(image_id = %id, task_id = %task.id, error = %e, "abandoned import: cannot reset the image, nothing deleted");
            false
        }
    };
    if !reset {
        // The task ends failed either way: a lock still naming it would
        // only block the next import (the drop is conditional on it).
        let _ = catalog
            .delete_property_atomic(&id, IMPORT_LOCK, &task.id)
            .await;
        return;
    }
    for loc in &objects {
        if let Err(e) = store.delete(loc).await
            && !e.is_not_found()
        {
            tracing::warn!(image_id = %id, location = %loc.redacted_url(), error = %e, "cannot delete data of an abandoned import");
        }
    }
    if method == "web-download"
        && !active
        && let Ok(dir) = &settings.api_import.staging_dir
    {
        remove_file(&staging::staged_path(dir, &id)).await;
    }
    let _ = catalog
        .delete_property_atomic(&id, IMPORT_LOCK, &task.id)
        .await;
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    use imaged_catalog::Engine;
    use imaged_catalog::api_import::{FAILED_STORES, NewLocation};
    use imaged_catalog::images::NewImage;
    use imaged_catalog::tasks::NewTask;
    use imaged_catalog::testing::TestDb;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::api_import::input::InputRules;
    use crate::settings::Settings;

    /// A multi-store context (stores `a`, `b` under `dir`) on `db`.
    fn context(db: &TestDb, dir: &Path) -> TaskContext {
        let conf = dir.join("tasks.conf");
        std::fs::write(
            &conf,
            format!(
                "[DEFAULT]\nenabled_backends = a:file, b:file\n\
                 [database]\nconnection = sqlite:////tmp/unused.sqlite\n\
                 [glance_store]\ndefault_backend = a\n\
                 [a]\nfilesystem_store_datadir = {d}/a\n\
                 [b]\nfilesystem_store_datadir = {d}/b\n\
                 [os_glance_staging_store]\nfilesystem_store_datadir = {d}/staging\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let mut req = imaged_config::LoadRequest::new(Some(imaged_config::Daemon::Tasks));
        req.config_files.push(conf);
        let loaded = imaged_config::load(&req).unwrap();
        let settings = Settings::from_config(&loaded.config).unwrap();
        let store =
            imaged_store::Store::new(imaged_runtime::app::store_options(&loaded.config).unwrap())
                .unwrap();
        let fetcher = crate::fetch::Fetcher::new(
            settings.filter.clone(),
            settings.connect_timeout,
            settings.read_timeout,
            &settings.user_agent,
        )
        .unwrap();
        TaskContext {
            catalog: db.catalog.clone(),
            store,
            settings: Arc::new(settings),
            fetcher,
            progress: Arc::new(Mutex::new(String::new())),
            cancel: CancellationToken::new(),
            bytes_written: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            lost: CancellationToken::new(),
        }
    }

    /// An `active` image (activated by this attempt's store `a`, whose
    /// location is recorded) and an object this attempt wrote to store `b`
    /// but never recorded: (task, input, attempt, row of `a`, paths of the
    /// objects in `a` and `b`).
    async fn activated(
        ctx: &TaskContext,
        dir: &Path,
    ) -> (Task, ApiImportInput, Attempt, i64, PathBuf, PathBuf) {
        let cat = &ctx.catalog;
        let id = cat
            .create_image(&NewImage {
                status: "importing".into(),
                disk_format: Some("raw".into()),
                container_format: Some("bare".into()),
                ..NewImage::default()
            })
            .await
            .unwrap();
        let input_json = json!({"image_id": id, "backend": ["a", "b"],
            "import_req": {"method": {"name": "web-download", "uri": "http://127.0.0.1/x"},
                           "all_stores_must_succeed": false}});
        let task_id = cat
            .enqueue_task(&NewTask::new(
                super::super::TASK_TYPE,
                "p",
                input_json.clone(),
            ))
            .await
            .unwrap();
        let task = cat.get_task(&task_id).await.unwrap().unwrap();
        assert!(
            cat.set_property_atomic(&id, IMPORT_LOCK, &task_id)
                .await
                .unwrap()
        );
        let input = input::parse(
            Some(&input_json),
            Some(&id),
            &InputRules {
                enabled_methods: &ctx.settings.api_import.enabled_import_methods,
                backends: Some(&["a".to_string(), "b".to_string()]),
            },
        )
        .unwrap();
        let mut paths = Vec::new();
        for s in ["a", "b"] {
            let p = dir.join(s).join(&id);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"data").unwrap();
            paths.push(p);
        }
        let url = |p: &PathBuf| format!("file://{}", p.display());
        let upd = LockedUpdate {
            add_location: Some(NewLocation {
                url: url(&paths[0]),
                meta_data: json!({"store": "a"}),
            }),
            data: Some(ImageDataUpdate {
                checksum: Some("8d777f385d3dfec8815d20f7496026dc".into()),
                size: Some(4),
                ..ImageDataUpdate::default()
            }),
            status: Some((vec!["importing".into()], "active".into())),
            ..LockedUpdate::default()
        };
        let row = cat
            .update_locked_image(&id, &task_id, &upd)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let written = |p: &PathBuf, s: &str, row| WrittenStore {
            location: Location::new(url(p)).with_image_id(&id).with_store(s),
            row,
            removed: false,
        };
        let att = Attempt {
            set_up: true,
            written: Arc::new(Mutex::new(vec![
                written(&paths[0], "a", Some(row)),
                written(&paths[1], "b", None),
            ])),
            ..Attempt::default()
        };
        let b = paths.pop().unwrap();
        let a = paths.pop().unwrap();
        (task, input, att, row, a, b)
    }

    async fn row_live(ctx: &TaskContext, id: &str, row: i64) -> bool {
        ctx.catalog
            .image_locations(id)
            .await
            .unwrap()
            .iter()
            .any(|l| l.id == row && !l.deleted && l.status == "active")
    }

    /// [`activated`] on a fresh SQLite catalog, with what a test reads back.
    struct Activated {
        _db: TestDb,
        dir: tempfile::TempDir,
        ctx: TaskContext,
        task: Task,
        input: ApiImportInput,
        att: Attempt,
        id: String,
        row: i64,
        a: PathBuf,
        b: PathBuf,
    }

    async fn activated_image() -> Activated {
        let db = TestDb::new(Engine::Sqlite)
            .await
            .expect("SQLite test catalog");
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&db, dir.path());
        let (task, input, att, row, a, b) = activated(&ctx, dir.path()).await;
        let id = input.image_id.clone();
        Activated {
            _db: db,
            dir,
            ctx,
            task,
            input,
            att,
            id,
            row,
            a,
            b,
        }
    }

    impl Activated {
        async fn revert(&self, att: &Attempt, err: ImportFailure) -> ImportFailure {
            revert(&self.ctx, &self.task, &self.input, att, err).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hand_back_after_activation_keeps_the_recorded_stores() {
        let t = activated_image().await;
        let (ctx, task, id, row, a, b) = (&t.ctx, &t.task, &t.id, t.row, &t.a, &t.b);
        let err = t.revert(&t.att, ImportFailure::Cancelled("x".into())).await;
        assert!(matches!(err, ImportFailure::Cancelled(_)));
        let img = ctx.catalog.get_image(id).await.unwrap().unwrap();
        assert_eq!(img.status, "active");
        assert_eq!(img.size, Some(4), "data attributes kept");
        assert!(row_live(ctx, id, row).await, "recorded location kept");
        assert!(a.exists(), "recorded object kept");
        assert!(!b.exists(), "unrecorded object removed");
        assert_eq!(
            ctx.catalog.import_lock_holder(id).await.unwrap(),
            Some(task.id.clone()),
            "the resumed attempt continues under the lock"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failure_after_activation_leaves_the_image_active_with_its_stores() {
        let t = activated_image().await;
        let (ctx, id, row, a, b) = (&t.ctx, &t.id, t.row, &t.a, &t.b);
        let err = t.revert(&t.att, ImportFailure::Failed("boom".into())).await;
        let ImportFailure::Failed(msg) = err else {
            panic!("not a failure");
        };
        assert!(
            msg.starts_with("boom") && msg.contains("left active"),
            "{msg}"
        );
        let img = ctx.catalog.get_image(id).await.unwrap().unwrap();
        assert_eq!(img.status, "active");
        assert_eq!(img.size, Some(4));
        assert!(row_live(ctx, id, row).await);
        assert!(a.exists());
        assert!(!b.exists());
        let props = ctx.catalog.image_properties(id).await.unwrap();
        assert_eq!(props[FAILED_STORES].as_deref(), Some("b"));
        assert_eq!(ctx.catalog.import_lock_holder(id).await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_claim_reverts_nothing() {
        let mut t = activated_image().await;
        let staged = t.dir.path().join("staging").join(&t.id);
        std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
        std::fs::write(&staged, b"being written by the new holder").unwrap();
        let att = Attempt {
            staged_here: Some(staged.clone()),
            ..std::mem::take(&mut t.att)
        };
        let (ctx, task, id, row, a, b) = (&t.ctx, &t.task, &t.id, t.row, &t.a, &t.b);
        ctx.lost.cancel();
        ctx.cancel.cancel();
        t.revert(&att, ImportFailure::Cancelled("x".into())).await;
        assert!(row_live(ctx, id, row).await);
        assert!(
            a.exists() && b.exists(),
            "objects the new holder may count on"
        );
        assert!(staged.exists(), "the new holder's staged file");
        assert_eq!(
            ctx.catalog.import_lock_holder(id).await.unwrap(),
            Some(task.id.clone())
        );
    }
}
