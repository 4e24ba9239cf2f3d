//! Interoperable import (`api_image_import` tasks as `POST
//! /v2/images/{id}/import` writes them) run by the real binary on every
//! engine: web-download, glance-direct and copy-image, multi-store partial
//! failures with and without `all_stores_must_succeed`, refused input, the
//! import lock (a live holder refuses a second import; a killed executor's
//! task resumes), glance-direct failures that keep the staged data for
//! a retry, and the import plugins (decompression, conversion with real
//! `qemu-img` images, metadata injection, several in order) including the
//! decompression and conversion bombs they refuse. Row values are checked
//! against what Glance writes.

use std::path::PathBuf;
use std::time::Duration;

use imaged_catalog::Engine;
use imaged_catalog::images::{ImageDataUpdate, NewImage};
use imaged_catalog::tasks::NewTask;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::harness::*;

const LOCK: &str = "os_glance_import_task";

/// An executor setup plus its staging directory and, in multi-store mode,
/// the two file stores `a` and `b`.
struct Api {
    env: Env,
    staging: PathBuf,
    a: PathBuf,
    b: PathBuf,
}

impl Api {
    /// Single-store (`node_staging_uri`) or multi-store (`enabled_backends
    /// = a:file, b:file`, default `a`, `[os_glance_staging_store]`).
    async fn new(engine: Engine, port: u16, multi: bool, extra: &str) -> Option<Api> {
        let env = Env::new(engine, port, "").await?;
        let root = env._dir.path().to_path_buf();
        let staging = root.join("staging");
        let a = root.join("store-a");
        let b = root.join("store-b");
        for d in [&staging, &a, &b] {
            std::fs::create_dir_all(d).unwrap();
        }
        let api = Api { env, staging, a, b };
        api.configure(multi, extra);
        Some(api)
    }

    fn configure(&self, multi: bool, extra: &str) {
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

    async fn image(&self, status: &str) -> String {
        self.image_as(status, "raw").await
    }

    /// A `bare` image of `disk_format`.
    async fn image_as(&self, status: &str, disk_format: &str) -> String {
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
    async fn staged_image(&self, data: &[u8]) -> String {
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

    /// Writes the task as the API does (rows, then the lock naming it).
    async fn import(&self, image_id: &str, req: Value, backend: Value) -> String {
        let input = json!({"image_id": image_id, "import_req": req, "backend": backend});
        let t = NewTask::new("api_image_import", "proj1", input);
        let id = self.env.catalog().enqueue_task(&t).await.unwrap();
        assert!(
            self.env
                .catalog()
                .set_property_atomic(image_id, LOCK, &id)
                .await
                .unwrap()
        );
        id
    }

    /// The image's row (it must exist).
    async fn image_row(&self, image_id: &str) -> imaged_catalog::images::Image {
        self.env
            .catalog()
            .get_image(image_id)
            .await
            .unwrap()
            .expect("image row")
    }

    async fn prop(&self, image_id: &str, name: &str) -> Option<String> {
        self.env
            .catalog()
            .image_properties(image_id)
            .await
            .unwrap()
            .get(name)
            .map(|v| v.clone().unwrap_or_default())
    }

    async fn count(&self, sql: &str) -> i64 {
        self.env.db.count(sql).await.unwrap()
    }

    async fn lock_rows(&self, image_id: &str) -> i64 {
        self.count(&format!(
            "SELECT COUNT(*) FROM image_properties WHERE image_id = '{image_id}' AND name = '{LOCK}'"
        ))
        .await
    }
}

fn web(url: &str) -> Value {
    json!({"method": {"name": "web-download", "uri": url}})
}

/// Checks a successful task row as Glance writes it.
async fn task_succeeded(env: &Env, task_id: &str, image_id: &str) {
    let t = env.task(task_id).await;
    assert_eq!(t.status, "success", "{:?}", t.message);
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
async fn image_holds(api: &Api, image_id: &str, data: &[u8], stores: &[Option<&str>]) {
    let img = api
        .env
        .catalog()
        .get_image(image_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(img.status, "active");
    assert!(!img.deleted);
    assert_eq!(img.size, Some(data.len() as i64));
    assert_eq!(img.virtual_size, Some(data.len() as i64), "raw data");
    assert_eq!(img.checksum.as_deref(), Some(md5_hex(data).as_str()));
    assert_eq!(img.os_hash_algo.as_deref(), Some("sha512"));
    assert_eq!(
        img.os_hash_value.as_deref(),
        Some(sha512_hex(data).as_str())
    );
    let locs: Vec<_> = api
        .env
        .catalog()
        .image_locations(image_id)
        .await
        .unwrap()
        .into_iter()
        .filter(|l| !l.deleted)
        .collect();
    // Parallel uploads record their locations in the order they finish.
    let mut locs = locs;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_download_on_every_engine() {
    let server = Server::start().await;
    let data = payload(3 * 1024 * 1024 + 17, 31);
    server.put("w.img", data.clone());
    for engine in engines() {
        let Some(api) = Api::new(engine, server.port, false, "").await else {
            continue;
        };
        let image_id = api.image("queued").await;
        let task_id = api
            .import(&image_id, web(&server.url("data/w.img")), json!([null]))
            .await;
        let out = api.env.once();
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        task_succeeded(&api.env, &task_id, &image_id).await;
        image_holds(&api, &image_id, &data, &[None]).await;
        // Glance's store lists: single-store names no store, so both
        // properties end as empty strings; the lock row is deleted outright.
        assert_eq!(
            api.prop(&image_id, "os_glance_importing_to_stores").await,
            Some(String::new())
        );
        assert_eq!(
            api.prop(&image_id, "os_glance_failed_import").await,
            Some(String::new())
        );
        assert_eq!(api.lock_rows(&image_id).await, 0, "{engine}");
        // Python-style JSON text, as Glance's json.dumps writes it.
        assert_eq!(
            api.env
                .db
                .text(&format!(
                    "SELECT result FROM task_info WHERE task_id = '{task_id}'"
                ))
                .await
                .unwrap()
                .as_deref(),
            Some(format!("{{\"image_id\": \"{image_id}\"}}").as_str())
        );
        assert_eq!(
            api.env
                .db
                .text(&format!(
                    "SELECT meta_data FROM image_locations WHERE image_id = '{image_id}'"
                ))
                .await
                .unwrap()
                .as_deref(),
            Some("{}")
        );
        assert_eq!(
            Env::files(&api.staging),
            Vec::<String>::new(),
            "staging emptied"
        );
        assert_eq!(Env::files(&api.env.images), vec![image_id.clone()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glance_direct_on_every_engine_removes_staged_data() {
    let data = payload(2 * 1024 * 1024 + 5, 32);
    for engine in engines() {
        let Some(api) = Api::new(engine, 80, false, "").await else {
            continue;
        };
        let image_id = api.staged_image(&data).await;
        let task_id = api
            .import(
                &image_id,
                json!({"method": {"name": "glance-direct"}}),
                json!([null]),
            )
            .await;
        let out = api.env.once();
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        task_succeeded(&api.env, &task_id, &image_id).await;
        image_holds(&api, &image_id, &data, &[None]).await;
        assert_eq!(Env::files(&api.staging), Vec::<String>::new(), "{engine}");
        // The stage host is popped (soft-deleted, as Glance's save does).
        assert_eq!(api.prop(&image_id, "os_glance_stage_host").await, None);
        assert_eq!(
            api.count(&format!(
                "SELECT COUNT(*) FROM image_properties WHERE image_id = '{image_id}' \
                 AND name = 'os_glance_stage_host' AND deleted = TRUE AND deleted_at IS NOT NULL"
            ))
            .await,
            1,
            "{engine}"
        );
        assert_eq!(api.lock_rows(&image_id).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glance_direct_failure_keeps_staging_for_a_retry() {
    let data = payload(3 << 20, 33);
    for engine in engines() {
        let Some(api) = Api::new(engine, 80, true, "[DEFAULT]\nimage_size_cap = 1048576\n").await
        else {
            continue;
        };
        let image_id = api.staged_image(&data).await;
        let direct = json!({"method": {"name": "glance-direct"}, "stores": ["a", "b"]});
        let first = api
            .import(&image_id, direct.clone(), json!(["a", "b"]))
            .await;
        let out = api.env.once();
        assert_eq!(out.status.code(), Some(1), "{engine}");
        let t = api.env.task(&first).await;
        assert_eq!(t.status, "failure");
        let msg = t.message.unwrap();
        assert!(msg.contains("image_size_cap of 1048576 bytes"), "{msg}");
        assert!(msg.contains("left uploading"), "{msg}");
        // Back to `uploading` (not stranded in `importing`), the staged
        // data, its size and the stage host kept: the API accepts a new
        // glance-direct import.
        let img = api
            .env
            .catalog()
            .get_image(&image_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(img.status, "uploading");
        assert_eq!(img.size, Some(data.len() as i64));
        assert_eq!(img.checksum, None);
        assert_eq!(std::fs::read(api.staging.join(&image_id)).unwrap(), data);
        assert_eq!(
            api.prop(&image_id, "os_glance_stage_host").await.as_deref(),
            Some("http://api-1:9292")
        );
        assert_eq!(
            api.prop(&image_id, "os_glance_failed_import")
                .await
                .as_deref(),
            Some("a,b")
        );
        assert_eq!(
            api.prop(&image_id, "os_glance_importing_to_stores")
                .await
                .as_deref(),
            Some("")
        );
        assert_eq!(api.lock_rows(&image_id).await, 0);
        assert_eq!(Env::files(&api.a), Vec::<String>::new());

        // The retry, with the cap lifted, succeeds from the kept data.
        api.configure(true, "");
        let second = api.import(&image_id, direct, json!(["a", "b"])).await;
        let out = api.env.once();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        task_succeeded(&api.env, &second, &image_id).await;
        image_holds(&api, &image_id, &data, &[Some("a"), Some("b")]).await;
        assert_eq!(
            api.prop(&image_id, "os_glance_failed_import")
                .await
                .as_deref(),
            Some("")
        );
        assert_eq!(Env::files(&api.staging), Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_image_to_an_extra_store() {
    let server = Server::start().await;
    let data = payload(2 << 20, 34);
    server.put("c.img", data.clone());
    for engine in engines() {
        let Some(api) = Api::new(engine, server.port, true, "").await else {
            continue;
        };
        let image_id = api.image("queued").await;
        let first = api
            .import(&image_id, web(&server.url("data/c.img")), json!(["a"]))
            .await;
        api.env.once();
        task_succeeded(&api.env, &first, &image_id).await;
        image_holds(&api, &image_id, &data, &[Some("a")]).await;
        let before = api
            .env
            .catalog()
            .get_image(&image_id)
            .await
            .unwrap()
            .unwrap();

        let copy = api
            .import(
                &image_id,
                json!({"method": {"name": "copy-image"}, "stores": ["b"]}),
                json!(["b"]),
            )
            .await;
        let out = api.env.once();
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        task_succeeded(&api.env, &copy, &image_id).await;
        image_holds(&api, &image_id, &data, &[Some("a"), Some("b")]).await;
        let after = api
            .env
            .catalog()
            .get_image(&image_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.checksum, before.checksum);
        assert_eq!(after.os_hash_value, before.os_hash_value);
        assert_eq!(Env::files(&api.b), vec![image_id.clone()]);
        assert_eq!(
            api.env
                .db
                .count(&format!(
                    "SELECT COUNT(*) FROM image_locations WHERE image_id = '{image_id}' \
                     AND meta_data = '{{\"store\": \"b\"}}' AND status = 'active' AND deleted = FALSE"
                ))
                .await
                .unwrap(),
            1,
            "{engine}: meta_data as Glance writes it"
        );
        assert_eq!(Env::files(&api.staging), Vec::<String>::new());
        assert_eq!(
            api.prop(&image_id, "os_glance_importing_to_stores")
                .await
                .as_deref(),
            Some("")
        );
        assert_eq!(api.lock_rows(&image_id).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_store_partial_failure_with_and_without_all_stores_must_succeed() {
    let server = Server::start().await;
    let data = payload(1 << 20, 35);
    server.put("p.img", data.clone());
    for engine in engines() {
        for must in [true, false] {
            let Some(api) = Api::new(engine, server.port, true, "").await else {
                continue;
            };
            let image_id = api.image("queued").await;
            // Store b already has an object named after the image (left by
            // someone else): its write fails, and that object is not ours
            // to delete.
            std::fs::write(api.b.join(&image_id), b"foreign").unwrap();
            let task_id = api
                .import(
                    &image_id,
                    json!({"method": {"name": "web-download", "uri": server.url("data/p.img")},
                           "stores": ["a", "b"], "all_stores_must_succeed": must}),
                    json!(["a", "b"]),
                )
                .await;
            api.env.once();
            let t = api.env.task(&task_id).await;
            assert_eq!(std::fs::read(api.b.join(&image_id)).unwrap(), b"foreign");
            assert_eq!(
                api.prop(&image_id, "os_glance_failed_import")
                    .await
                    .as_deref(),
                Some("b"),
                "{engine} must={must}"
            );
            assert_eq!(
                api.prop(&image_id, "os_glance_importing_to_stores")
                    .await
                    .as_deref(),
                Some("")
            );
            assert_eq!(api.lock_rows(&image_id).await, 0);
            assert_eq!(Env::files(&api.staging), Vec::<String>::new());
            if must {
                // Store a was written, then reverted with the failure.
                assert_eq!(t.status, "failure");
                let msg = t.message.unwrap();
                assert!(msg.contains("store b failed"), "{msg}");
                assert!(msg.contains("left queued"), "{msg}");
                let img = api
                    .env
                    .catalog()
                    .get_image(&image_id)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(img.status, "queued");
                assert_eq!(
                    (img.size, img.checksum, img.os_hash_value),
                    (None, None, None)
                );
                assert_eq!(Env::files(&api.a), Vec::<String>::new());
                let locs = api.env.catalog().image_locations(&image_id).await.unwrap();
                assert_eq!(locs.len(), 1, "{locs:?}");
                assert!(locs[0].deleted && locs[0].status == "deleted");
                assert!(locs[0].deleted_at.is_some());
            } else {
                task_succeeded(&api.env, &task_id, &image_id).await;
                image_holds(&api, &image_id, &data, &[Some("a")]).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_fails_naming_the_field() {
    for engine in engines() {
        let Some(api) = Api::new(engine, 80, true, "").await else {
            continue;
        };
        let cases = [
            (
                json!({"method": {}}),
                json!(["a"]),
                "import_req.method.name is missing",
            ),
            (
                json!({"method": {"name": "web-download"}}),
                json!(["a"]),
                "import_req.method.uri is missing",
            ),
            (
                json!({"method": {"name": "glance-direct"}}),
                json!(["nosuch"]),
                "backend store \"nosuch\" is not in enabled_backends",
            ),
            (
                json!({"method": {"name": "glance-direct"}, "stores": ["a"]}),
                json!(["b"]),
                "does not match import_req.stores",
            ),
        ];
        for (req, backend, needle) in cases {
            let image_id = api.image("queued").await;
            let task_id = api.import(&image_id, req, backend).await;
            let out = api.env.once();
            assert_eq!(out.status.code(), Some(1));
            let t = api.env.task(&task_id).await;
            assert_eq!(t.status, "failure");
            let msg = t.message.unwrap();
            assert!(msg.contains(needle), "{engine}: {msg:?} lacks {needle:?}");
            // Nothing touched but the lock, which is released.
            let img = api
                .env
                .catalog()
                .get_image(&image_id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(img.status, "queued");
            assert_eq!(api.lock_rows(&image_id).await, 0);
            assert_eq!(
                api.prop(&image_id, "os_glance_importing_to_stores").await,
                None
            );
        }
        // An image that does not exist (deleted and purged): no lock row is
        // written for it.
        let gone = "6c1a0c3e-0000-4000-8000-000000000000";
        let t = NewTask::new(
            "api_image_import",
            "proj1",
            json!({"image_id": gone, "import_req": {"method": {"name": "glance-direct"}}, "backend": ["a"]}),
        );
        let task_id = api.env.catalog().enqueue_task(&t).await.unwrap();
        api.env.once();
        let t = api.env.task(&task_id).await;
        assert_eq!(t.status, "failure");
        assert!(
            t.message
                .unwrap()
                .contains(&format!("Image {gone} has been deleted")),
            "{engine}"
        );
        assert_eq!(api.lock_rows(gone).await, 0);
    }
}

async fn wait_downloading(env: &Env, id: &str) {
    Env::wait_for("download progress", Duration::from_secs(20), || async {
        let t = env.task(id).await;
        t.status == "processing"
            && t.message
                .as_deref()
                .is_some_and(|m| m.starts_with("Downloaded"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_import_is_refused_while_the_first_runs() {
    let server = Server::start().await;
    // Slow enough (about 6 s) to outlast the checks made while it runs.
    let data = payload(6 << 20, 36);
    server.put("s.img", data.clone());
    for engine in engines() {
        let Some(api) = Api::new(engine, server.port, false, "").await else {
            continue;
        };
        let image_id = api.image("queued").await;
        let first = api
            .import(&image_id, web(&server.url("slow/60/s.img")), json!([null]))
            .await;
        let mut child = api.env.spawn(&["run"]);
        wait_downloading(&api.env, &first).await;
        // The heartbeat moves tasks.updated_at (the lock's liveness for
        // glance-api) during the download too.
        let before = api.env.task(&first).await.updated_at;
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(api.env.task(&first).await.updated_at > before, "{engine}");
        // A second task for the same image (the API would refuse it with
        // 409; a producer that skips the lock gets the same answer here).
        let t = NewTask::new(
            "api_image_import",
            "proj1",
            json!({"image_id": image_id, "import_req": web(&server.url("data/s.img")), "backend": [null]}),
        );
        let second = api.env.catalog().enqueue_task(&t).await.unwrap();
        let out = api.env.once();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t2 = api.env.task(&second).await;
        assert_eq!(t2.status, "failure");
        let msg = t2.message.unwrap();
        assert!(
            msg.contains(&format!(
                "locked by import task {first}, which is still running"
            )),
            "{msg}"
        );
        // The heartbeat keeps the first import's lock and task fresh.
        assert_eq!(
            api.env
                .catalog()
                .import_lock_holder(&image_id)
                .await
                .unwrap(),
            Some(first.clone())
        );
        Env::wait_for("first import", Duration::from_secs(40), || async {
            api.env.task(&first).await.status != "processing"
        })
        .await;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        assert!(child.wait().unwrap().success());
        task_succeeded(&api.env, &first, &image_id).await;
        image_holds(&api, &image_id, &data, &[None]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_download_then_restart_resumes_under_the_lock() {
    let server = Server::start().await;
    let data = payload(4 << 20, 37);
    server.put("k.img", data.clone());
    for engine in engines() {
        let Some(api) = Api::new(engine, server.port, false, "").await else {
            continue;
        };
        let image_id = api.image("queued").await;
        let task_id = api
            .import(&image_id, web(&server.url("slow/60/k.img")), json!([null]))
            .await;
        let mut child = api.env.spawn(&["run"]);
        wait_downloading(&api.env, &task_id).await;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        let _ = child.wait();
        let img = api
            .env
            .catalog()
            .get_image(&image_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(img.status, "importing");
        assert!(api.staging.join(&image_id).exists(), "partial staged data");
        // Restart: once the dead executor's lease (2 s) expires the task is
        // taken over and resumes under the lock that still names it.
        let mut again = api.env.spawn(&["run"]);
        Env::wait_for("takeover", Duration::from_secs(60), || async {
            api.env.task(&task_id).await.status != "processing"
        })
        .await;
        kill(Pid::from_raw(again.id() as i32), Signal::SIGTERM).unwrap();
        assert!(again.wait().unwrap().success());
        task_succeeded(&api.env, &task_id, &image_id).await;
        image_holds(&api, &image_id, &data, &[None]).await;
        assert_eq!(api.lock_rows(&image_id).await, 0);
        assert_eq!(Env::files(&api.staging), Vec::<String>::new());
        assert_eq!(Env::files(&api.env.images), vec![image_id.clone()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_of_deleted_images_is_cleaned_at_start() {
    let Some(api) = Api::new(Engine::Sqlite, 80, false, "").await else {
        return;
    };
    let live = api.staged_image(b"live data").await;
    let gone = api.staged_image(b"gone data").await;
    api.env.catalog().destroy_image(&gone).await.unwrap();
    let missing = "0b6d4b64-5a3e-4f6f-9d3c-2f1f1f1f1f1f";
    std::fs::write(api.staging.join(missing), b"x").unwrap();
    std::fs::write(api.staging.join("notes.txt"), b"not staged data").unwrap();
    let out = api.env.once();
    assert!(out.status.success());
    let mut want = vec![live, "notes.txt".to_string()];
    want.sort();
    assert_eq!(Env::files(&api.staging), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_uploads_to_two_stores() {
    let server = Server::start().await;
    let data = payload(2 << 20, 38);
    server.put("par.img", data.clone());
    for engine in engines() {
        let Some(api) = Api::new(
            engine,
            server.port,
            true,
            "[image_import_opts]\nmax_parallel_stores = 2\n",
        )
        .await
        else {
            continue;
        };
        let image_id = api.image("queued").await;
        let task_id = api
            .import(
                &image_id,
                json!({"method": {"name": "web-download", "uri": server.url("data/par.img")},
                       "all_stores": true}),
                json!(["a", "b"]),
            )
            .await;
        let out = api.env.once();
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        task_succeeded(&api.env, &task_id, &image_id).await;
        image_holds(&api, &image_id, &data, &[Some("a"), Some("b")]).await;
        assert_eq!(
            api.prop(&image_id, "os_glance_importing_to_stores")
                .await
                .as_deref(),
            Some("")
        );
        assert_eq!(api.lock_rows(&image_id).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lock_of_a_glance_run_task_is_taken_over() {
    let server = Server::start().await;
    let data = payload(1 << 20, 39);
    server.put("t.img", data.clone());
    for engine in engines() {
        let Some(api) = Api::new(engine, server.port, true, "").await else {
            continue;
        };
        let image_id = api.image("queued").await;
        // A task glance-api itself is running (processing, no imaged claim)
        // holds the lock and lists its store as importing.
        let old = api
            .import(&image_id, web(&server.url("data/t.img")), json!(["a"]))
            .await;
        api.env
            .db
            .exec(&format!(
                "UPDATE tasks SET status = 'processing' WHERE id = '{old}'"
            ))
            .await
            .unwrap();
        api.env
            .catalog()
            .set_property(&image_id, "os_glance_importing_to_stores", "a")
            .await
            .unwrap();
        let new_task = |api: &Api| {
            let t = NewTask::new(
                "api_image_import",
                "proj1",
                json!({"image_id": image_id, "import_req": web(&server.url("data/t.img")), "backend": ["b"]}),
            );
            let cat = api.env.catalog().clone();
            async move { cat.enqueue_task(&t).await.unwrap() }
        };
        // Recently updated: live, the new import is refused.
        let refused = new_task(&api).await;
        api.env.once();
        let t = api.env.task(&refused).await;
        assert_eq!(t.status, "failure");
        assert!(t.message.unwrap().contains("still running"));
        assert_eq!(api.env.task(&old).await.status, "processing");

        // Not updated for two hours: stale by Glance's 60-minute rule.
        let past = chrono::Utc::now().naive_utc() - chrono::Duration::hours(2);
        api.env
            .db
            .exec(&format!(
                "UPDATE tasks SET updated_at = {} WHERE id = '{old}'",
                imaged_catalog::testing::ts_literal(engine, &past)
            ))
            .await
            .unwrap();
        let taker = new_task(&api).await;
        let out = api.env.once();
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        task_succeeded(&api.env, &taker, &image_id).await;
        let t = api.env.task(&old).await;
        assert_eq!(t.status, "failure");
        assert_eq!(t.message.as_deref(), Some("Expired lock preempted"));
        image_holds(&api, &image_id, &data, &[Some("b")]).await;
        // The old task's store left the list with its lock.
        assert_eq!(
            api.prop(&image_id, "os_glance_importing_to_stores")
                .await
                .as_deref(),
            Some("")
        );
        assert_eq!(api.lock_rows(&image_id).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_run_on_the_staged_data_before_the_upload() {
    let data = payload(1 << 20, 40);
    let packed = gzip(&data);
    for engine in engines() {
        let Some(api) = Api::new(
            engine,
            80,
            false,
            "[image_import_opts]\nimage_import_plugins = [image_decompression]\n",
        )
        .await
        else {
            continue;
        };
        let image_id = api.staged_image(&packed).await;
        let task_id = api
            .import(
                &image_id,
                json!({"method": {"name": "glance-direct"}}),
                json!([null]),
            )
            .await;
        let out = api.env.once();
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        task_succeeded(&api.env, &task_id, &image_id).await;
        // What was stored and hashed is the decompressed data.
        image_holds(&api, &image_id, &data, &[None]).await;
        assert_eq!(Env::files(&api.staging), Vec::<String>::new());
        assert_eq!(Env::files(&api.env.work), Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_import_resets_the_image() {
    let server = Server::start().await;
    server.put("ab.img", payload(4 << 20, 41));
    let Some(api) = Api::new(
        Engine::Sqlite,
        server.port,
        false,
        "[imaged_tasks]\nmax_attempts = 1\n",
    )
    .await
    else {
        return;
    };
    let image_id = api.image("queued").await;
    let task_id = api
        .import(&image_id, web(&server.url("slow/80/ab.img")), json!([null]))
        .await;
    let mut child = api.env.spawn(&["run"]);
    wait_downloading(&api.env, &task_id).await;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = child.wait();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let out = api.env.once();
    assert_eq!(out.status.code(), Some(1));
    let t = api.env.task(&task_id).await;
    assert_eq!(t.status, "failure");
    assert!(t.message.unwrap().contains("abandoned after 1 attempts"));
    // Not stranded in `importing`: back to `queued`, unlocked, the partial
    // download gone.
    let img = api
        .env
        .catalog()
        .get_image(&image_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(img.status, "queued");
    assert_eq!(api.lock_rows(&image_id).await, 0);
    assert_eq!(Env::files(&api.staging), Vec::<String>::new());
    assert_eq!(Env::files(&api.env.images), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_web_download_returns_the_image_to_queued() {
    for engine in engines() {
        let Some(api) = Api::new(engine, 8080, true, "").await else {
            continue;
        };
        let image_id = api.image("queued").await;
        let task_id = api
            .import(
                &image_id,
                web("http://169.254.169.254/latest/"),
                json!(["a"]),
            )
            .await;
        let out = api.env.once();
        assert_eq!(out.status.code(), Some(1));
        let t = api.env.task(&task_id).await;
        assert_eq!(t.status, "failure");
        let msg = t.message.unwrap();
        assert!(msg.contains("169.254.169.254"), "{engine}: {msg}");
        assert!(msg.contains("left queued"), "{msg}");
        let img = api
            .env
            .catalog()
            .get_image(&image_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(img.status, "queued");
        assert_eq!(
            api.prop(&image_id, "os_glance_failed_import")
                .await
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            api.prop(&image_id, "os_glance_importing_to_stores")
                .await
                .as_deref(),
            Some("")
        );
        assert_eq!(api.lock_rows(&image_id).await, 0);
        assert_eq!(Env::files(&api.staging), Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_import_back_under_its_lock() {
    let server = Server::start().await;
    let data = payload(6 << 20, 42);
    server.put("h.img", data.clone());
    let Some(api) = Api::new(Engine::Sqlite, server.port, false, "").await else {
        return;
    };
    let image_id = api.image("queued").await;
    let task_id = api
        .import(&image_id, web(&server.url("slow/80/h.img")), json!([null]))
        .await;
    let mut child = api.env.spawn(&["run"]);
    wait_downloading(&api.env, &task_id).await;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    let t = api.env.task(&task_id).await;
    assert_eq!(t.status, "processing");
    assert!(t.message.unwrap().contains("Handed back"));
    // The half-done download is gone; the image stays importing under the
    // task's lock for the attempt that resumes it.
    assert_eq!(Env::files(&api.staging), Vec::<String>::new());
    assert_eq!(
        api.env
            .catalog()
            .import_lock_holder(&image_id)
            .await
            .unwrap(),
        Some(task_id.clone())
    );
    let out = api.env.once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    task_succeeded(&api.env, &task_id, &image_id).await;
    image_holds(&api, &image_id, &data, &[None]).await;
    assert_eq!(api.lock_rows(&image_id).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_whose_lock_is_dropped_stops_and_reverts() {
    let server = Server::start().await;
    server.put("l.img", payload(6 << 20, 43));
    for engine in engines() {
        let Some(api) = Api::new(engine, server.port, false, "").await else {
            continue;
        };
        let image_id = api.image("queued").await;
        let task_id = api
            .import(&image_id, web(&server.url("slow/80/l.img")), json!([null]))
            .await;
        let mut child = api.env.spawn(&["run"]);
        wait_downloading(&api.env, &task_id).await;
        // Someone removes the lock while the download runs.
        api.env
            .db
            .exec(&format!(
                "DELETE FROM image_properties WHERE image_id = '{image_id}' AND name = '{LOCK}'"
            ))
            .await
            .unwrap();
        Env::wait_for("the import to stop", Duration::from_secs(20), || async {
            api.env.task(&task_id).await.status != "processing"
        })
        .await;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        assert!(child.wait().unwrap().success());
        let t = api.env.task(&task_id).await;
        assert_eq!(t.status, "failure");
        let msg = t.message.unwrap();
        assert!(
            msg.contains("lost its lock during execution"),
            "{engine}: {msg}"
        );
        let img = api
            .env
            .catalog()
            .get_image(&image_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(img.status, "queued", "{engine}: not left importing");
        assert_eq!(api.lock_rows(&image_id).await, 0);
        assert_eq!(Env::files(&api.staging), Vec::<String>::new());
        assert_eq!(Env::files(&api.env.images), Vec::<String>::new());
    }
}

// ---------------------------------------------------------------------------
// Import plugins, end to end: web-download imports on every engine with
// `image_import_plugins` set, images made by the real `qemu-img`.

/// `[image_conversion] output_format = raw`.
const TO_RAW: &str = "[image_conversion]\noutput_format = raw\n";

/// The configuration fragment running `list` (comma-separated plugin names),
/// followed by `extra`.
fn plugins_conf(list: &str, extra: &str) -> String {
    format!("[image_import_opts]\nimage_import_plugins = [{list}]\n{extra}")
}

/// A qcow2 made by `qemu-img create`, with recognisable runs written into it
/// by `qemu-io` (a whole cluster range, one starting mid-cluster, the last
/// sector), and the raw disk it holds, built here byte by byte.
fn patterned_qcow2(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    const SIZE: usize = 3 << 20;
    let runs: [(usize, usize, u8); 3] = [
        (0, 1 << 20, 0xa5),
        (1_600_001, 300_000, 0x3c),
        (SIZE - 512, 512, 0x7e),
    ];
    qemu_create(dir, "pattern.qcow2", "qcow2", &[], &SIZE.to_string());
    let path = dir.join("pattern.qcow2");
    let cmds: Vec<String> = runs
        .iter()
        .map(|(off, len, byte)| format!("write -q -P {byte:#x} {off} {len}"))
        .collect();
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&path, "qcow2", &cmds);
    let mut raw = vec![0u8; SIZE];
    for (off, len, byte) in runs {
        raw[off..off + len].fill(byte);
    }
    let qcow2 = std::fs::read(&path).unwrap();
    assert!(qcow2.len() < SIZE, "sparse qcow2 of {} bytes", qcow2.len());
    (qcow2, raw)
}

/// One web-download import run once by the binary.
struct PluginRun {
    api: Api,
    engine: Engine,
    image_id: String,
    task_id: String,
    out: std::process::Output,
}

impl PluginRun {
    /// Imports `/data/<name>` of `server` by web-download into a new
    /// `queued` image of `disk_format`, with `conf` as extra configuration,
    /// and runs the executor once.
    async fn new(
        engine: Engine,
        server: &Server,
        name: &str,
        disk_format: &str,
        conf: &str,
    ) -> Option<PluginRun> {
        let api = Api::new(engine, server.port, false, conf).await?;
        let image_id = api.image_as("queued", disk_format).await;
        let task_id = api
            .import(
                &image_id,
                web(&server.url(&format!("data/{name}"))),
                json!([null]),
            )
            .await;
        let out = api.env.once();
        Some(PluginRun {
            api,
            engine,
            image_id,
            task_id,
            out,
        })
    }

    async fn image(&self) -> imaged_catalog::images::Image {
        self.api.image_row(&self.image_id).await
    }

    /// The import succeeded with `data` (what the plugins made of the
    /// download) stored and hashed as a `bare` image of `disk_format`, and
    /// nothing left in the staging or work directory.
    async fn succeeded_with(&self, data: &[u8], disk_format: &str) {
        let (api, engine) = (&self.api, self.engine);
        assert!(
            self.out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&self.out.stderr)
        );
        task_succeeded(&api.env, &self.task_id, &self.image_id).await;
        image_holds(api, &self.image_id, data, &[None]).await;
        let img = self.image().await;
        assert_eq!(img.disk_format.as_deref(), Some(disk_format), "{engine}");
        assert_eq!(img.container_format.as_deref(), Some("bare"));
        assert_eq!(api.lock_rows(&self.image_id).await, 0, "{engine}");
        assert_eq!(Env::files(&api.staging), Vec::<String>::new(), "{engine}");
        assert_eq!(Env::files(&api.env.work), Vec::<String>::new(), "{engine}");
        assert_eq!(Env::files(&api.env.images), vec![self.image_id.clone()]);
    }

    /// A plugin refused the import: the task failed with every one of
    /// `needles` in its message; the image is back to `queued` (Glance's
    /// conversion revert does this, bug 2072483; imaged does it for every
    /// failed web-download, where Glance leaves decompression failures
    /// `importing`) with its declared `disk_format`, no data attributes and
    /// no location; the lock is dropped; nothing is left in the staging
    /// directory, the work directory or the store.
    async fn refused(&self, disk_format: &str, needles: &[&str]) {
        let (api, engine, id) = (&self.api, self.engine, self.image_id.as_str());
        assert_eq!(
            self.out.status.code(),
            Some(1),
            "{engine}: {}",
            String::from_utf8_lossy(&self.out.stderr)
        );
        let t = api.env.task(&self.task_id).await;
        assert_eq!(t.status, "failure", "{engine}");
        let msg = t.message.unwrap_or_default();
        for needle in needles.iter().chain(&[id, "left queued"]) {
            assert!(msg.contains(needle), "{engine}: {msg:?} lacks {needle:?}");
        }
        let img = self.image().await;
        assert_eq!(img.status, "queued", "{engine}");
        assert_eq!(img.disk_format.as_deref(), Some(disk_format));
        assert_eq!(img.container_format.as_deref(), Some("bare"));
        assert_eq!(
            (img.size, img.virtual_size, img.checksum, img.os_hash_value),
            (None, None, None, None),
            "{engine}"
        );
        assert!(
            api.env
                .catalog()
                .image_locations(id)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(api.lock_rows(id).await, 0, "{engine}");
        assert_eq!(
            api.prop(id, "os_glance_importing_to_stores").await,
            Some(String::new())
        );
        assert_eq!(Env::files(&api.staging), Vec::<String>::new(), "{engine}");
        assert_eq!(Env::files(&api.env.work), Vec::<String>::new(), "{engine}");
        assert_eq!(
            Env::files(&api.env.images),
            Vec::<String>::new(),
            "{engine}"
        );
    }
}

/// Serves the patterned qcow2 as `wrap` makes it and imports it on every
/// engine with the plugins `list` and `output_format = raw`: the image must
/// end holding the raw disk (size, virtual size, hashes, stored bytes).
async fn imports_the_raw_disk(list: &str, wrap: fn(Vec<u8>) -> Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (qcow2, raw) = patterned_qcow2(dir.path());
    let server = Server::start().await;
    server.put("p.img", wrap(qcow2));
    let conf = plugins_conf(list, TO_RAW);
    for engine in engines() {
        let Some(run) = PluginRun::new(engine, &server, "p.img", "qcow2", &conf).await else {
            continue;
        };
        run.succeeded_with(&raw, "raw").await;
    }
}

/// Serves `body` and imports it on every engine into a `disk_format` image
/// with `conf`: a plugin must refuse it, with `needles` in the message
/// (see [`PluginRun::refused`]).
async fn refused_on_every_engine(body: Vec<u8>, disk_format: &str, conf: &str, needles: &[&str]) {
    let server = Server::start().await;
    server.put("r.img", body);
    for engine in engines() {
        let Some(run) = PluginRun::new(engine, &server, "r.img", disk_format, conf).await else {
            continue;
        };
        run.refused(disk_format, needles).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_conversion_stores_the_raw_disk_of_a_qcow2() {
    imports_the_raw_disk("image_conversion", |q| q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_then_conversion_turns_a_gzipped_qcow2_into_raw() {
    imports_the_raw_disk("image_decompression, image_conversion", |q| gzip(&q)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_conversion_refuses_a_qcow2_with_a_backing_file() {
    let dir = tempfile::tempdir().unwrap();
    qemu_create(dir.path(), "base.qcow2", "qcow2", &[], "1M");
    let backing = format!("backing_file={}", dir.path().join("base.qcow2").display());
    let top = qemu_create(
        dir.path(),
        "top.qcow2",
        "qcow2",
        &[&backing, "backing_fmt=qcow2"],
        "1M",
    );
    refused_on_every_engine(
        top,
        "qcow2",
        &plugins_conf("image_conversion", TO_RAW),
        &[
            "image_conversion",
            "refused before conversion",
            "backing_file",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_bomb_is_refused_before_anything_is_written() {
    // About 1 MiB of qcow2 whose raw form is 64 TiB.
    let dir = tempfile::tempdir().unwrap();
    let bomb = qemu_create(dir.path(), "bomb.qcow2", "qcow2", &[], "64T");
    assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
    let conf = plugins_conf(
        "image_conversion",
        &format!("{TO_RAW}[DEFAULT]\nimage_size_cap = 16777216\n"),
    );
    let size = format!("yields up to {} bytes", 64u64 << 40);
    refused_on_every_engine(
        bomb,
        "qcow2",
        &conf,
        &[
            "image_conversion",
            &size,
            "image_size_cap of 16777216 bytes",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_refused_at_the_size_cap() {
    // 64 MiB of zeros in about 64 KiB of gzip, against a 4 MiB cap.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    refused_on_every_engine(
        bomb,
        "raw",
        &plugins_conf(
            "image_decompression",
            "[DEFAULT]\nimage_size_cap = 4194304\n",
        ),
        &[
            "image_decompression",
            "gzip data expands past image_size_cap (4194304 bytes)",
            "removed the output",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_image_metadata_refuses_os_glance_keys_and_adds_the_others() {
    let server = Server::start().await;
    let data = payload(1 << 20, 44);
    server.put("i.img", data.clone());
    let evil = plugins_conf(
        "inject_image_metadata",
        "[inject_metadata_properties]\ninject = key1:value1,os_glance_evil:x\n",
    );
    let good = plugins_conf(
        "inject_image_metadata",
        "[inject_metadata_properties]\ninject = key1:value1,key2:value2\n",
    );
    for engine in engines() {
        let Some(api) = Api::new(engine, server.port, false, &evil).await else {
            continue;
        };
        let image_id = api.image("queued").await;
        api.env
            .catalog()
            .set_property(&image_id, "hw_disk_bus", "scsi")
            .await
            .unwrap();
        let task_id = api
            .import(&image_id, web(&server.url("data/i.img")), json!([null]))
            .await;
        // The reserved key is a configuration error: neither `config check`
        // nor `once` accepts the file, and no task is touched.
        for args in [&["config", "check"][..], &["once"]] {
            let out = api.env.run(args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{engine} {args:?}: {err}");
            assert!(
                err.contains("[inject_metadata_properties] inject = \"os_glance_evil\"")
                    && err.contains("reserved"),
                "{engine} {args:?}: {err}"
            );
        }
        assert_eq!(api.env.task(&task_id).await.status, "pending");
        assert_eq!(
            api.env
                .catalog()
                .import_lock_holder(&image_id)
                .await
                .unwrap(),
            Some(task_id.clone())
        );

        // Fixed, the same task runs and injects next to the user's property.
        api.configure(false, &good);
        let out = api.env.once();
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        task_succeeded(&api.env, &task_id, &image_id).await;
        image_holds(&api, &image_id, &data, &[None]).await;
        for (name, value) in [
            ("key1", "value1"),
            ("key2", "value2"),
            ("hw_disk_bus", "scsi"),
        ] {
            assert_eq!(
                api.count(&format!(
                    "SELECT COUNT(*) FROM image_properties WHERE image_id = '{image_id}' \
                     AND name = '{name}' AND value = '{value}' AND deleted = FALSE"
                ))
                .await,
                1,
                "{engine}: {name}"
            );
        }
        assert_eq!(
            api.count(&format!(
                "SELECT COUNT(*) FROM image_properties WHERE image_id = '{image_id}' \
                 AND name LIKE 'os_glance_evil%'"
            ))
            .await,
            0
        );
    }
}

/// Glance's conversion revert sends the image back to `queued` without
/// restoring the `disk_format` the conversion set; the next web-download
/// fetches the original qcow2 again, which must not then be refused as a
/// format mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_after_conversion_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (qcow2, raw) = patterned_qcow2(dir.path());
    let server = Server::start().await;
    server.put("r.qcow2", qcow2);
    let conf = plugins_conf("image_conversion", TO_RAW);
    for engine in engines() {
        let Some(api) = Api::new(engine, server.port, false, &conf).await else {
            continue;
        };
        let image_id = api.image_as("queued", "qcow2").await;
        // An object not ours already has the image's name in the store, so
        // the upload after the conversion fails.
        let foreign = api.env.images.join(&image_id);
        std::fs::write(&foreign, b"foreign").unwrap();
        let req = web(&server.url("data/r.qcow2"));
        let first = api.import(&image_id, req.clone(), json!([null])).await;
        assert_eq!(api.env.once().status.code(), Some(1), "{engine}");
        let t = api.env.task(&first).await;
        assert_eq!(t.status, "failure");
        assert!(t.message.unwrap().contains("left queued"));
        let img = api.image_row(&image_id).await;
        assert_eq!(img.status, "queued", "{engine}");
        assert_eq!(
            (img.disk_format.as_deref(), img.container_format.as_deref()),
            (Some("qcow2"), Some("bare")),
            "{engine}: the formats of the data a retry downloads"
        );
        assert_eq!(std::fs::read(&foreign).unwrap(), b"foreign");
        assert_eq!(Env::files(&api.staging), Vec::<String>::new());
        assert_eq!(Env::files(&api.env.work), Vec::<String>::new());

        std::fs::remove_file(&foreign).unwrap();
        let second = api.import(&image_id, req, json!([null])).await;
        let out = api.env.once();
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        task_succeeded(&api.env, &second, &image_id).await;
        image_holds(&api, &image_id, &raw, &[None]).await;
        assert_eq!(
            api.image_row(&image_id).await.disk_format.as_deref(),
            Some("raw")
        );
    }
}
