//! The `api_image_import` test setup shared by the import and revert
//! tests: an executor environment with a staging directory and two file
//! stores, the task and lock rows as the API writes them, and the checks
//! of what an import left in the catalog and on disk.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use imaged_catalog::api_import::{LockedUpdate, NewLocation};
use imaged_catalog::images::{Image, ImageDataUpdate, NewImage};
use imaged_catalog::tasks::NewTask;
use imaged_catalog::{ClaimOwner, Engine};
use serde_json::{Value, json};

use crate::harness::*;

pub const LOCK: &str = "os_glance_import_task";

/// An executor setup plus its staging directory and, in multi-store mode,
/// the two file stores `a` and `b`. Its checks name `engine` when they fail.
pub struct Api {
    pub env: Env,
    pub engine: Engine,
    pub staging: PathBuf,
    pub a: PathBuf,
    pub b: PathBuf,
}

impl Api {
    /// Single-store (`node_staging_uri`) or multi-store (`enabled_backends
    /// = a:file, b:file`, default `a`, `[os_glance_staging_store]`).
    pub async fn new(engine: Engine, port: u16, multi: bool, extra: &str) -> Option<Api> {
        let env = Env::new(engine, port, "").await?;
        let root = env._dir.path().to_path_buf();
        let staging = root.join("staging");
        let a = root.join("store-a");
        let b = root.join("store-b");
        for d in [&staging, &a, &b] {
            std::fs::create_dir_all(d).unwrap();
        }
        let api = Api {
            env,
            engine,
            staging,
            a,
            b,
        };
        api.configure(multi, extra);
        Some(api)
    }

    pub fn configure(&self, multi: bool, extra: &str) {
        let stores = if multi {
            format!(
                "[DEFAULT]\nenabled_backends = a:file, b:file\n\
                 [glance_store]\ndefault_backend = a\n\
                 [a]\nfilesystem_store_datadir = {}\n\
                 [b]\nfilesystem_store_datadir = {}\n\
                 [os_glance_staging_store]\nfilesystem_store_datadir = {}\n",
                self.a.display(),
                self.b.display(),
                self.staging.display()
            )
        } else {
            format!(
                "[DEFAULT]\nnode_staging_uri = file://{}/\n",
                self.staging.display()
            )
        };
        self.env.write_config(&format!("{stores}{extra}"));
    }

    pub async fn image(&self, status: &str) -> String {
        self.image_as(status, "raw").await
    }

    /// A `bare` image of `disk_format`.
    pub async fn image_as(&self, status: &str, disk_format: &str) -> String {
        self.env
            .catalog()
            .create_image(&NewImage {
                name: Some("api".into()),
                owner: Some("proj1".into()),
                status: status.into(),
                disk_format: Some(disk_format.into()),
                container_format: Some("bare".into()),
                ..NewImage::default()
            })
            .await
            .unwrap()
    }

    /// A glance-direct image: `uploading`, its data staged, `size` and
    /// `os_glance_stage_host` set as `PUT /stage` leaves them.
    pub async fn staged_image(&self, data: &[u8]) -> String {
        let id = self.image("uploading").await;
        std::fs::write(self.staging.join(&id), data).unwrap();
        let cat = self.env.catalog();
        cat.update_image_data(
            &id,
            &ImageDataUpdate {
                size: Some(data.len() as i64),
                ..ImageDataUpdate::default()
            },
        )
        .await
        .unwrap();
        cat.set_property(&id, "os_glance_stage_host", "http://api-1:9292")
            .await
            .unwrap();
        id
    }

    /// Writes the task rows alone, as a producer that skips the lock would.
    pub async fn enqueue(&self, image_id: &str, req: Value, backend: Value) -> String {
        let input = json!({"image_id": image_id, "import_req": req, "backend": backend});
        let t = NewTask::new("api_image_import", "proj1", input);
        self.env.catalog().enqueue_task(&t).await.unwrap()
    }

    /// Writes the task as the API does (rows, then the lock naming it).
    pub async fn import(&self, image_id: &str, req: Value, backend: Value) -> String {
        let id = self.enqueue(image_id, req, backend).await;
        assert!(
            self.env
                .catalog()
                .set_property_atomic(image_id, LOCK, &id)
                .await
                .unwrap()
        );
        id
    }

    /// A new `queued` image of `disk_format` and a single-store
    /// web-download of `url` into it: (image id, task id).
    pub async fn web_import(&self, disk_format: &str, url: &str) -> (String, String) {
        let image_id = self.image_as("queued", disk_format).await;
        let task_id = self.import(&image_id, web(url), json!([null])).await;
        (image_id, task_id)
    }

    /// A staged image of `data` and a single-store glance-direct import of
    /// it: (image id, task id).
    pub async fn direct_import(&self, data: &[u8]) -> (String, String) {
        let image_id = self.staged_image(data).await;
        let req = json!({"method": {"name": "glance-direct"}});
        let task_id = self.import(&image_id, req, json!([null])).await;
        (image_id, task_id)
    }

    /// Runs the executor once; it must exit 0 (no task it took failed).
    pub fn once_ok(&self) {
        assert_exit(&self.env.once(), 0, self.engine);
    }

    /// Runs the executor once; it must exit 1 (a task failed) and
    /// `task_id` must have failed as [`Api::failed`] checks.
    pub async fn once_fails(&self, task_id: &str, needles: &[&str]) {
        assert_exit(&self.env.once(), 1, self.engine);
        self.failed(task_id, needles).await;
    }

    /// Runs the executor once, which must exit 0 having imported `data`
    /// as [`Api::imported`] checks.
    pub async fn once_imports(
        &self,
        task_id: &str,
        image_id: &str,
        data: &[u8],
        stores: &[Option<&str>],
    ) {
        self.once_ok();
        self.imported(task_id, image_id, data, stores).await;
    }

    /// The task failed with every one of `needles` in its message.
    pub async fn failed(&self, task_id: &str, needles: &[&str]) {
        let t = self.env.task(task_id).await;
        assert_eq!(t.status, "failure", "{}: task {task_id}", self.engine);
        let msg = t.message.unwrap_or_default();
        for needle in needles {
            assert!(
                msg.contains(needle),
                "{}: {msg:?} lacks {needle:?}",
                self.engine
            );
        }
    }

    /// The task succeeded and the image holds `data` (see
    /// [`Api::task_succeeded`] and [`Api::image_holds`]).
    pub async fn imported(
        &self,
        task_id: &str,
        image_id: &str,
        data: &[u8],
        stores: &[Option<&str>],
    ) {
        self.task_succeeded(task_id, image_id).await;
        self.image_holds(image_id, data, stores).await;
    }

    /// Checks a successful task row as Glance writes it.
    pub async fn task_succeeded(&self, task_id: &str, image_id: &str) {
        let t = self.env.task(task_id).await;
        assert_eq!(t.status, "success", "{}: {:?}", self.engine, t.message);
        assert_eq!(t.result, Some(json!({"image_id": image_id})));
        assert_eq!(t.image_id.as_deref(), Some(image_id));
        assert!(!t.deleted);
        let ttl = t.expires_at.unwrap() - t.updated_at.unwrap();
        assert!(
            (ttl - chrono::Duration::hours(48)).num_seconds().abs() <= 2,
            "{ttl:?}"
        );
    }

    /// The image is active with the data's hashes, one live location per
    /// store in `stores` (`None` = single store), and the data in each.
    pub async fn image_holds(&self, image_id: &str, data: &[u8], stores: &[Option<&str>]) {
        let img = self.image_row(image_id).await;
        assert_eq!(img.status, "active", "{}", self.engine);
        assert!(!img.deleted);
        assert_eq!(img.size, Some(data.len() as i64));
        assert_eq!(img.virtual_size, Some(data.len() as i64), "raw data");
        assert_eq!(img.checksum.as_deref(), Some(md5_hex(data).as_str()));
        assert_eq!(img.os_hash_algo.as_deref(), Some("sha512"));
        assert_eq!(
            img.os_hash_value.as_deref(),
            Some(sha512_hex(data).as_str())
        );
        let mut locs: Vec<_> = self
            .env
            .catalog()
            .image_locations(image_id)
            .await
            .unwrap()
            .into_iter()
            .filter(|l| !l.deleted)
            .collect();
        // Parallel uploads record their locations in the order they finish.
        locs.sort_by_key(|l| {
            l.meta_data
                .get("store")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        assert_eq!(locs.len(), stores.len(), "{locs:?}");
        for (l, want) in locs.iter().zip(stores) {
            assert_eq!(l.status, "active");
            assert_eq!(l.deleted_at, None);
            match want {
                Some(s) => assert_eq!(l.meta_data, json!({"store": s})),
                None => assert_eq!(l.meta_data, json!({})),
            }
            let url = l.url.clone().unwrap();
            let path = url.strip_prefix("file://").unwrap();
            assert_eq!(std::fs::read(path).unwrap(), data, "stored bytes at {url}");
        }
    }

    /// The image's row (it must exist).
    pub async fn image_row(&self, image_id: &str) -> Image {
        self.env
            .catalog()
            .get_image(image_id)
            .await
            .unwrap()
            .expect("image row")
    }

    pub async fn prop(&self, image_id: &str, name: &str) -> Option<String> {
        self.env
            .catalog()
            .image_properties(image_id)
            .await
            .unwrap()
            .get(name)
            .map(|v| v.clone().unwrap_or_default())
    }

    /// The property's live value is `want` (`None`: it has no live row).
    pub async fn assert_prop(&self, image_id: &str, name: &str, want: Option<&str>) {
        assert_eq!(
            self.prop(image_id, name).await.as_deref(),
            want,
            "{}: {name} of {image_id}",
            self.engine
        );
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.env.db.count(sql).await.unwrap()
    }

    pub async fn text(&self, sql: &str) -> Option<String> {
        self.env.db.text(sql).await.unwrap()
    }

    pub async fn exec(&self, sql: &str) {
        self.env.db.exec(sql).await.unwrap();
    }

    pub async fn lock_rows(&self, image_id: &str) -> i64 {
        self.count(&format!(
            "SELECT COUNT(*) FROM image_properties WHERE image_id = '{image_id}' AND name = '{LOCK}'"
        ))
        .await
    }

    pub async fn lock_holder(&self, image_id: &str) -> Option<String> {
        self.env
            .catalog()
            .import_lock_holder(image_id)
            .await
            .unwrap()
    }

    /// The lock row is deleted outright, not soft-deleted.
    pub async fn unlocked(&self, image_id: &str) {
        assert_eq!(
            self.lock_rows(image_id).await,
            0,
            "{}: lock of {image_id}",
            self.engine
        );
    }

    /// The import let go of the image as Glance's does: the lock row gone
    /// and no store left in the importing list, which ends as an empty
    /// string rather than disappearing.
    pub async fn released(&self, image_id: &str) {
        self.unlocked(image_id).await;
        self.assert_prop(image_id, "os_glance_importing_to_stores", Some(""))
            .await;
    }

    pub fn assert_empty(&self, dirs: &[&Path]) {
        for dir in dirs {
            assert_eq!(
                Env::files(dir),
                Vec::<String>::new(),
                "{}: {}",
                self.engine,
                dir.display()
            );
        }
    }

    /// Starts `run` and returns it once the task reports download progress.
    pub async fn run_until_downloading(&self, task_id: &str) -> Child {
        let child = self.env.spawn(&["run"]);
        Env::wait_for("download progress", Duration::from_secs(20), || async {
            let t = self.env.task(task_id).await;
            t.status == "processing"
                && t.message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("Downloaded"))
        })
        .await;
        child
    }

    pub async fn wait_settled(&self, what: &str, task_id: &str, timeout: Duration) {
        Env::wait_for(what, timeout, || async {
            self.env.task(task_id).await.status != "processing"
        })
        .await;
    }

    /// The image's status (its row must exist).
    pub async fn status(&self, image_id: &str) -> String {
        self.image_row(image_id).await.status
    }

    pub async fn task(&self, id: &str) -> imaged_catalog::tasks::Task {
        self.env.task(id).await
    }

    /// Where the executor stages the data of `image_id`.
    pub fn staged(&self, image_id: &str) -> PathBuf {
        self.staging.join(image_id)
    }

    /// Claims the task as an executor that then dies: its lease lapses at
    /// once, so the binary's claim is the task's second attempt.
    pub async fn claimed_by_a_dead_executor(&self) {
        let dead = ClaimOwner::from_string("elsewhere:1:dead");
        let got = self
            .env
            .catalog()
            .claim_tasks(&dead, Duration::from_millis(1), 10, &["api_image_import"])
            .await
            .unwrap();
        assert!(!got.is_empty(), "{}: nothing to claim", self.engine);
        // Past the lease on every engine's timestamp precision.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }

    /// Records a location of `image_id` under the task's lock, its object
    /// `data` written at `dir/<image id>` first: the row id.
    pub async fn located(
        &self,
        image_id: &str,
        task_id: &str,
        dir: &Path,
        store: Option<&str>,
        data: &[u8],
    ) -> i64 {
        let path = dir.join(image_id);
        std::fs::write(&path, data).unwrap();
        let upd = LockedUpdate {
            add_location: Some(NewLocation {
                url: format!("file://{}", path.display()),
                meta_data: store.map_or_else(|| json!({}), |s| json!({"store": s})),
            }),
            ..LockedUpdate::default()
        };
        self.env
            .catalog()
            .update_locked_image(image_id, task_id, &upd)
            .await
            .unwrap()
            .unwrap()
            .expect("location row id")
    }

    /// Whether the location row is live and `active`.
    pub async fn row_live(&self, row: i64) -> bool {
        self.count(&format!(
            "SELECT COUNT(*) FROM image_locations WHERE id = {row} \
             AND deleted = FALSE AND status = 'active'"
        ))
        .await
            == 1
    }
}

/// Runs `check` on a fresh [`Api`] for each engine [`engines`] names.
pub async fn on_every_engine(port: u16, multi: bool, extra: &str, check: impl AsyncFn(Api)) {
    for engine in engines() {
        if let Some(api) = Api::new(engine, port, multi, extra).await {
            check(api).await;
        }
    }
}
