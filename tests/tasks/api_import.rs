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

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use imaged_catalog::Engine;
use imaged_catalog::images::Image;
use serde_json::json;

use crate::api_harness::*;
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_download_on_every_engine() {
    let (server, data) = serve_payload("w.img", 3 * 1024 * 1024 + 17, 31).await;
    on_every_engine(server.port, false, "", async |api| {
        let (image_id, task_id) = api.web_import("raw", &server.url("data/w.img")).await;
        api.once_imports(&task_id, &image_id, &data, &[None]).await;
        // Glance's store lists: single-store names no store, so both
        // properties end as empty strings.
        api.released(&image_id).await;
        api.assert_prop(&image_id, "os_glance_failed_import", Some(""))
            .await;
        // Python-style JSON text, as Glance's json.dumps writes it.
        let result = api
            .text(&format!(
                "SELECT result FROM task_info WHERE task_id = '{task_id}'"
            ))
            .await;
        assert_eq!(result, Some(format!("{{\"image_id\": \"{image_id}\"}}")));
        let meta = api
            .text(&format!(
                "SELECT meta_data FROM image_locations WHERE image_id = '{image_id}'"
            ))
            .await;
        assert_eq!(meta.as_deref(), Some("{}"));
        api.assert_empty(&[&api.staging]);
        assert_eq!(Env::files(&api.env.images), vec![image_id.clone()]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glance_direct_on_every_engine_removes_staged_data() {
    let data = payload(2 * 1024 * 1024 + 5, 32);
    on_every_engine(80, false, "", async |api| {
        let engine = api.engine;
        let (image_id, task_id) = api.direct_import(&data).await;
        api.once_imports(&task_id, &image_id, &data, &[None]).await;
        api.assert_empty(&[&api.staging]);
        // The stage host is popped (soft-deleted, as Glance's save does).
        api.assert_prop(&image_id, "os_glance_stage_host", None)
            .await;
        assert_eq!(
            api.count(&format!(
                "SELECT COUNT(*) FROM image_properties WHERE image_id = '{image_id}' \
                 AND name = 'os_glance_stage_host' AND deleted = TRUE AND deleted_at IS NOT NULL"
            ))
            .await,
            1,
            "{engine}"
        );
        api.unlocked(&image_id).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glance_direct_failure_keeps_staging_for_a_retry() {
    let data = payload(3 << 20, 33);
    on_every_engine(
        80,
        true,
        "[DEFAULT]\nimage_size_cap = 1048576\n",
        async |api| {
            let image_id = api.staged_image(&data).await;
            let direct = json!({"method": {"name": "glance-direct"}, "stores": ["a", "b"]});
            let first = api
                .import(&image_id, direct.clone(), json!(["a", "b"]))
                .await;
            api.once_fails(
                &first,
                &["image_size_cap of 1048576 bytes", "left uploading"],
            )
            .await;
            // Back to `uploading` (not stranded in `importing`), the staged
            // data, its size and the stage host kept: the API accepts a new
            // glance-direct import.
            let img = api.image_row(&image_id).await;
            assert_eq!(img.status, "uploading");
            assert_eq!(img.size, Some(data.len() as i64));
            assert_eq!(img.checksum, None);
            assert_eq!(std::fs::read(api.staging.join(&image_id)).unwrap(), data);
            api.assert_prop(&image_id, "os_glance_stage_host", Some("http://api-1:9292"))
                .await;
            api.assert_prop(&image_id, "os_glance_failed_import", Some("a,b"))
                .await;
            api.released(&image_id).await;
            api.assert_empty(&[&api.a]);

            // The retry, with the cap lifted, succeeds from the kept data.
            api.configure(true, "");
            let second = api.import(&image_id, direct, json!(["a", "b"])).await;
            api.once_imports(&second, &image_id, &data, &[Some("a"), Some("b")])
                .await;
            api.assert_prop(&image_id, "os_glance_failed_import", Some(""))
                .await;
            api.assert_empty(&[&api.staging]);
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_image_to_an_extra_store() {
    let (server, data) = serve_payload("c.img", 2 << 20, 34).await;
    on_every_engine(server.port, true, "", async |api| {
        let engine = api.engine;
        let image_id = api.image("queued").await;
        let first = api
            .import(&image_id, web(&server.url("data/c.img")), json!(["a"]))
            .await;
        api.env.once();
        api.imported(&first, &image_id, &data, &[Some("a")]).await;
        let before = api.image_row(&image_id).await;

        let copy = json!({"method": {"name": "copy-image"}, "stores": ["b"]});
        let copy = api.import(&image_id, copy, json!(["b"])).await;
        api.once_imports(&copy, &image_id, &data, &[Some("a"), Some("b")])
            .await;
        let after = api.image_row(&image_id).await;
        assert_eq!(after.checksum, before.checksum);
        assert_eq!(after.os_hash_value, before.os_hash_value);
        assert_eq!(Env::files(&api.b), vec![image_id.clone()]);
        assert_eq!(
            api.count(&format!(
                "SELECT COUNT(*) FROM image_locations WHERE image_id = '{image_id}' \
                 AND meta_data = '{{\"store\": \"b\"}}' AND status = 'active' AND deleted = FALSE"
            ))
            .await,
            1,
            "{engine}: meta_data as Glance writes it"
        );
        api.assert_empty(&[&api.staging]);
        api.released(&image_id).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_store_partial_failure_with_and_without_all_stores_must_succeed() {
    let (server, data) = serve_payload("p.img", 1 << 20, 35).await;
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
            assert_eq!(std::fs::read(api.b.join(&image_id)).unwrap(), b"foreign");
            assert_eq!(
                api.prop(&image_id, "os_glance_failed_import")
                    .await
                    .as_deref(),
                Some("b"),
                "{engine} must={must}"
            );
            api.released(&image_id).await;
            api.assert_empty(&[&api.staging]);
            if must {
                // Store a was written, then reverted with the failure.
                api.failed(&task_id, &["store b failed", "left queued"])
                    .await;
                let img = api.image_row(&image_id).await;
                assert_eq!(img.status, "queued");
                assert_eq!(
                    (img.size, img.checksum, img.os_hash_value),
                    (None, None, None)
                );
                api.assert_empty(&[&api.a]);
                let locs = api.env.catalog().image_locations(&image_id).await.unwrap();
                assert_eq!(locs.len(), 1, "{locs:?}");
                assert!(locs[0].deleted && locs[0].status == "deleted");
                assert!(locs[0].deleted_at.is_some());
            } else {
                api.imported(&task_id, &image_id, &data, &[Some("a")]).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_fails_naming_the_field() {
    on_every_engine(80, true, "", async |api| {
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
            api.once_fails(&task_id, &[needle]).await;
            // Nothing touched but the lock, which is released.
            assert_eq!(api.image_row(&image_id).await.status, "queued");
            api.unlocked(&image_id).await;
            api.assert_prop(&image_id, "os_glance_importing_to_stores", None)
                .await;
        }
        // An image that does not exist (deleted and purged): no lock row is
        // written for it.
        let gone = "6c1a0c3e-0000-4000-8000-000000000000";
        let direct = json!({"method": {"name": "glance-direct"}});
        let task_id = api.enqueue(gone, direct, json!(["a"])).await;
        api.env.once();
        api.failed(&task_id, &[&format!("Image {gone} has been deleted")])
            .await;
        api.unlocked(gone).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_import_is_refused_while_the_first_runs() {
    // Slow enough (about 6 s) to outlast the checks made while it runs.
    let (server, data) = serve_payload("s.img", 6 << 20, 36).await;
    on_every_engine(server.port, false, "", async |api| {
        let engine = api.engine;
        let (image_id, first) = api.web_import("raw", &server.url("slow/60/s.img")).await;
        let mut child = api.run_until_downloading(&first).await;
        // The heartbeat moves tasks.updated_at (the lock's liveness for
        // glance-api) during the download too.
        let before = api.env.task(&first).await.updated_at;
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(api.env.task(&first).await.updated_at > before, "{engine}");
        // A second task for the same image (the API would refuse it with
        // 409; a producer that skips the lock gets the same answer here).
        let req = web(&server.url("data/s.img"));
        let second = api.enqueue(&image_id, req, json!([null])).await;
        let held = format!("locked by import task {first}, which is still running");
        api.once_fails(&second, &[&held]).await;
        // The heartbeat keeps the first import's lock and task fresh.
        assert_eq!(api.lock_holder(&image_id).await, Some(first.clone()));
        api.wait_settled("first import", &first, Duration::from_secs(40))
            .await;
        stop(&mut child);
        api.imported(&first, &image_id, &data, &[None]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_download_then_restart_resumes_under_the_lock() {
    let (server, data) = serve_payload("k.img", 4 << 20, 37).await;
    on_every_engine(server.port, false, "", async |api| {
        let (image_id, task_id) = api.web_import("raw", &server.url("slow/60/k.img")).await;
        sigkill(&mut api.run_until_downloading(&task_id).await);
        assert_eq!(api.image_row(&image_id).await.status, "importing");
        assert!(api.staging.join(&image_id).exists(), "partial staged data");
        // Restart: once the dead executor's lease (2 s) expires the task is
        // taken over and resumes under the lock that still names it.
        let mut again = api.env.spawn(&["run"]);
        api.wait_settled("takeover", &task_id, Duration::from_secs(60))
            .await;
        stop(&mut again);
        api.imported(&task_id, &image_id, &data, &[None]).await;
        api.unlocked(&image_id).await;
        api.assert_empty(&[&api.staging]);
        assert_eq!(Env::files(&api.env.images), vec![image_id.clone()]);
    })
    .await;
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
    api.once_ok();
    let mut want = vec![live, "notes.txt".to_string()];
    want.sort();
    assert_eq!(Env::files(&api.staging), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_uploads_to_two_stores() {
    let (server, data) = serve_payload("par.img", 2 << 20, 38).await;
    for engine in engines() {
        let parallel = "[image_import_opts]\nmax_parallel_stores = 2\n";
        let Some(api) = Api::new(engine, server.port, true, parallel).await else {
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
        api.once_imports(&task_id, &image_id, &data, &[Some("a"), Some("b")])
            .await;
        api.released(&image_id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lock_of_a_glance_run_task_is_taken_over() {
    let (server, data) = serve_payload("t.img", 1 << 20, 39).await;
    on_every_engine(server.port, true, "", async |api| {
        let engine = api.engine;
        let image_id = api.image("queued").await;
        // A task glance-api itself is running (processing, no imaged claim)
        // holds the lock and lists its store as importing.
        let old = api
            .import(&image_id, web(&server.url("data/t.img")), json!(["a"]))
            .await;
        api.exec(&format!(
            "UPDATE tasks SET status = 'processing' WHERE id = '{old}'"
        ))
        .await;
        api.env
            .catalog()
            .set_property(&image_id, "os_glance_importing_to_stores", "a")
            .await
            .unwrap();
        let req = web(&server.url("data/t.img"));
        // Recently updated: live, the new import is refused.
        let refused = api.enqueue(&image_id, req.clone(), json!(["b"])).await;
        api.env.once();
        api.failed(&refused, &["still running"]).await;
        assert_eq!(api.env.task(&old).await.status, "processing");

        // Not updated for two hours: stale by Glance's 60-minute rule.
        let past = chrono::Utc::now().naive_utc() - chrono::Duration::hours(2);
        api.exec(&format!(
            "UPDATE tasks SET updated_at = {} WHERE id = '{old}'",
            imaged_catalog::testing::ts_literal(engine, &past)
        ))
        .await;
        let taker = api.enqueue(&image_id, req, json!(["b"])).await;
        api.once_imports(&taker, &image_id, &data, &[Some("b")])
            .await;
        let t = api.env.task(&old).await;
        assert_eq!(t.status, "failure");
        assert_eq!(t.message.as_deref(), Some("Expired lock preempted"));
        // The old task's store left the list with its lock.
        api.released(&image_id).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_run_on_the_staged_data_before_the_upload() {
    let data = payload(1 << 20, 40);
    let packed = gzip(&data);
    let conf = plugins_conf("image_decompression", "");
    on_every_engine(80, false, &conf, async |api| {
        let (image_id, task_id) = api.direct_import(&packed).await;
        // What was stored and hashed is the decompressed data.
        api.once_imports(&task_id, &image_id, &data, &[None]).await;
        api.assert_empty(&[&api.staging, &api.env.work]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_import_resets_the_image() {
    let (server, _) = serve_payload("ab.img", 4 << 20, 41).await;
    let one_attempt = "[imaged_tasks]\nmax_attempts = 1\n";
    let Some(api) = Api::new(Engine::Sqlite, server.port, false, one_attempt).await else {
        return;
    };
    let (image_id, task_id) = api.web_import("raw", &server.url("slow/80/ab.img")).await;
    sigkill(&mut api.run_until_downloading(&task_id).await);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    api.once_fails(&task_id, &["abandoned after 1 attempts"])
        .await;
    // Not stranded in `importing`: back to `queued`, unlocked, the partial
    // download gone.
    assert_eq!(api.image_row(&image_id).await.status, "queued");
    api.unlocked(&image_id).await;
    api.assert_empty(&[&api.staging, &api.env.images]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_web_download_returns_the_image_to_queued() {
    on_every_engine(8080, true, "", async |api| {
        let image_id = api.image("queued").await;
        let metadata_service = web("http://169.254.169.254/latest/");
        let task_id = api.import(&image_id, metadata_service, json!(["a"])).await;
        api.once_fails(&task_id, &["169.254.169.254", "left queued"])
            .await;
        assert_eq!(api.image_row(&image_id).await.status, "queued");
        api.assert_prop(&image_id, "os_glance_failed_import", Some("a"))
            .await;
        api.released(&image_id).await;
        api.assert_empty(&[&api.staging]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_import_back_under_its_lock() {
    let (server, data) = serve_payload("h.img", 6 << 20, 42).await;
    let Some(api) = Api::new(Engine::Sqlite, server.port, false, "").await else {
        return;
    };
    let (image_id, task_id) = api.web_import("raw", &server.url("slow/80/h.img")).await;
    stop(&mut api.run_until_downloading(&task_id).await);
    let t = api.env.task(&task_id).await;
    assert_eq!(t.status, "processing");
    assert!(t.message.unwrap().contains("Handed back"));
    // The half-done download is gone; the image stays importing under the
    // task's lock for the attempt that resumes it.
    api.assert_empty(&[&api.staging]);
    assert_eq!(api.lock_holder(&image_id).await, Some(task_id.clone()));
    api.once_imports(&task_id, &image_id, &data, &[None]).await;
    api.unlocked(&image_id).await;
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
fn patterned_qcow2(dir: &Path) -> (Vec<u8>, Vec<u8>) {
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
    image_id: String,
    task_id: String,
    out: Output,
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
        let url = server.url(&format!("data/{name}"));
        let (image_id, task_id) = api.web_import(disk_format, &url).await;
        let out = api.env.once();
        Some(PluginRun {
            api,
            image_id,
            task_id,
            out,
        })
    }

    /// The image row, checked to be a `bare` image of `disk_format`.
    async fn image_of_format(&self, disk_format: &str) -> Image {
        let img = self.api.image_row(&self.image_id).await;
        let engine = self.api.engine;
        assert_eq!(img.disk_format.as_deref(), Some(disk_format), "{engine}");
        assert_eq!(img.container_format.as_deref(), Some("bare"));
        img
    }

    /// The import succeeded with `data` (what the plugins made of the
    /// download) stored and hashed as a `bare` image of `disk_format`, and
    /// nothing left in the staging or work directory.
    async fn succeeded_with(&self, data: &[u8], disk_format: &str) {
        let api = &self.api;
        assert_exit(&self.out, 0, api.engine);
        api.imported(&self.task_id, &self.image_id, data, &[None])
            .await;
        self.image_of_format(disk_format).await;
        api.unlocked(&self.image_id).await;
        api.assert_empty(&[&api.staging, &api.env.work]);
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
        let (api, engine, id) = (&self.api, self.api.engine, self.image_id.as_str());
        assert_exit(&self.out, 1, engine);
        let mut needles = needles.to_vec();
        needles.extend([id, "left queued"]);
        api.failed(&self.task_id, &needles).await;
        let img = self.image_of_format(disk_format).await;
        assert_eq!(img.status, "queued", "{engine}");
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
        api.released(id).await;
        api.assert_empty(&[&api.staging, &api.env.work, &api.env.images]);
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
    let (server, data) = serve_payload("i.img", 1 << 20, 44).await;
    let evil = plugins_conf(
        "inject_image_metadata",
        "[inject_metadata_properties]\ninject = key1:value1,os_glance_evil:x\n",
    );
    let good = plugins_conf(
        "inject_image_metadata",
        "[inject_metadata_properties]\ninject = key1:value1,key2:value2\n",
    );
    on_every_engine(server.port, false, &evil, async |api| {
        let engine = api.engine;
        let (image_id, task_id) = api.web_import("raw", &server.url("data/i.img")).await;
        api.env
            .catalog()
            .set_property(&image_id, "hw_disk_bus", "scsi")
            .await
            .unwrap();
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
        assert_eq!(api.lock_holder(&image_id).await, Some(task_id.clone()));

        // Fixed, the same task runs and injects next to the user's property.
        api.configure(false, &good);
        api.once_imports(&task_id, &image_id, &data, &[None]).await;
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
    })
    .await;
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
    on_every_engine(server.port, false, &conf, async |api| {
        let engine = api.engine;
        let url = server.url("data/r.qcow2");
        let (image_id, first) = api.web_import("qcow2", &url).await;
        // An object not ours already has the image's name in the store, so
        // the upload after the conversion fails.
        let foreign = api.env.images.join(&image_id);
        std::fs::write(&foreign, b"foreign").unwrap();
        api.once_fails(&first, &["left queued"]).await;
        let img = api.image_row(&image_id).await;
        assert_eq!(img.status, "queued", "{engine}");
        assert_eq!(
            (img.disk_format.as_deref(), img.container_format.as_deref()),
            (Some("qcow2"), Some("bare")),
            "{engine}: the formats of the data a retry downloads"
        );
        assert_eq!(std::fs::read(&foreign).unwrap(), b"foreign");
        api.assert_empty(&[&api.staging, &api.env.work]);

        std::fs::remove_file(&foreign).unwrap();
        let second = api.import(&image_id, web(&url), json!([null])).await;
        api.once_imports(&second, &image_id, &raw, &[None]).await;
        assert_eq!(
            api.image_row(&image_id).await.disk_format.as_deref(),
            Some("raw")
        );
    })
    .await;
}
