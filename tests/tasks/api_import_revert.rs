//! What an interrupted or failed interoperable import leaves behind, run by
//! the real binary on every engine: an attempt whose claim was taken over
//! reverts nothing, a lock dropped from outside is neither taken back nor
//! followed by the removal of staged data, an abandoned import deletes only
//! what its lock-checked reset removed, a resumed task whose stores are all
//! recorded completes the image, plugin work files left in the staging
//! directory are swept, and a failed copy-image keeps the staged copy it
//! reused.

use std::time::Duration;

use imaged_catalog::ClaimOwner;
use imaged_catalog::images::ImageDataUpdate;
use serde_json::json;

use crate::api_harness::*;
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_whose_claim_was_taken_over_reverts_nothing() {
    let server = Server::start().await;
    server.put("t.img", payload(6 << 20, 51));
    for engine in engines() {
        let Some(s) = Api::new(engine, server.port, false, "").await else {
            continue;
        };
        let image_id = s.image("queued").await;
        let task_id = s
            .import(&image_id, web(&server.url("slow/80/t.img")), json!([null]))
            .await;
        let mut child = s.run_until_downloading(&task_id).await;
        // Another executor takes the claim (as after a lapsed lease): it now
        // runs this task under the same lock and writes the same staged file.
        s.exec(&format!(
            "UPDATE imaged_claims SET owner = 'elsewhere:1:new', \
             lease_expires_at = '2099-01-01 00:00:00.000000' WHERE unit_id = '{task_id}'"
        ))
        .await;
        let staged = s.staged(&image_id);
        Env::wait_for(
            "the attempt to stop writing",
            Duration::from_secs(20),
            || async {
                let a = std::fs::metadata(&staged).map(|m| m.len()).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let b = std::fs::metadata(&staged).map(|m| m.len()).unwrap_or(0);
                a == b
            },
        )
        .await;
        stop(&mut child);
        assert!(
            staged.exists(),
            "{engine}: the new holder's staged file was removed"
        );
        assert_eq!(s.lock_holder(&image_id).await, Some(task_id.clone()));
        assert_eq!(s.status(&image_id).await, "importing", "{engine}");
        let t = s.task(&task_id).await;
        assert_eq!(
            t.status, "processing",
            "{engine}: the task is the new holder's"
        );
        assert!(
            !t.message.unwrap_or_default().contains("Handed back"),
            "{engine}: a lost task is not handed back"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_dropped_from_outside_is_not_taken_back_and_staging_is_kept() {
    let server = Server::start().await;
    server.put("l.img", payload(6 << 20, 52));
    for engine in engines() {
        let Some(s) = Api::new(engine, server.port, false, "").await else {
            continue;
        };
        let image_id = s.image("queued").await;
        let task_id = s
            .import(&image_id, web(&server.url("slow/80/l.img")), json!([null]))
            .await;
        let mut child = s.run_until_downloading(&task_id).await;
        s.exec(&format!(
            "DELETE FROM image_properties WHERE image_id = '{image_id}' AND name = '{LOCK}'"
        ))
        .await;
        Env::wait_for("the import to stop", Duration::from_secs(20), || async {
            s.task(&task_id).await.status != "processing"
        })
        .await;
        stop(&mut child);
        let t = s.task(&task_id).await;
        assert_eq!(t.status, "failure", "{engine}");
        assert!(
            t.message
                .unwrap_or_default()
                .contains("lost its lock during execution"),
            "{engine}"
        );
        // Nobody proved the image is still this task's: no lock re-taken,
        // the staged data (possibly someone else's now) left where it is,
        // and nothing reset.
        assert_eq!(s.lock_rows(&image_id).await, 0, "{engine}: lock re-taken");
        assert!(
            s.staged(&image_id).exists(),
            "{engine}: staged data removed"
        );
        assert_eq!(s.status(&image_id).await, "importing", "{engine}");
        assert!(Env::files(&s.env.images).is_empty(), "{engine}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_import_deletes_only_what_its_locked_reset_removed() {
    let one_attempt = "[imaged_tasks]\nmax_attempts = 1\n";
    for engine in engines() {
        for foreign_lock in [false, true] {
            let Some(s) = Api::new(engine, 8080, true, one_attempt).await else {
                continue;
            };
            let image_id = s.image("importing").await;
            let task_id = s
                .import(&image_id, web("http://127.0.0.1:8080/x"), json!(["a", "b"]))
                .await;
            let live = s
                .located(&image_id, &task_id, &s.a, Some("a"), b"a-data")
                .await;
            let pending = s
                .located(&image_id, &task_id, &s.b, Some("b"), b"b-data")
                .await;
            // A location on its way out (another component's business).
            s.exec(&format!(
                "UPDATE image_locations SET status = 'pending_delete' WHERE id = {pending}"
            ))
            .await;
            if foreign_lock {
                assert!(
                    s.env
                        .catalog()
                        .replace_import_lock(&image_id, &task_id, "other-task")
                        .await
                        .unwrap()
                );
            }
            s.claimed_by_a_dead_executor().await;
            assert_exit(&s.env.once(), 1, engine);
            let t = s.task(&task_id).await;
            assert_eq!(t.status, "failure", "{engine}");
            assert!(
                t.message
                    .unwrap_or_default()
                    .contains("abandoned after 1 attempts"),
                "{engine}"
            );
            // The pending_delete row and its object are never touched.
            assert_eq!(
                std::fs::read(s.b.join(&image_id)).unwrap(),
                b"b-data",
                "{engine}"
            );
            assert_eq!(
                s.env
                    .db
                    .text(&format!(
                        "SELECT status FROM image_locations WHERE id = {pending}"
                    ))
                    .await
                    .unwrap()
                    .as_deref(),
                Some("pending_delete"),
                "{engine}"
            );
            if foreign_lock {
                // Another task holds the image: nothing is deleted or reset.
                assert!(s.row_live(live).await, "{engine}");
                assert_eq!(
                    std::fs::read(s.a.join(&image_id)).unwrap(),
                    b"a-data",
                    "{engine}"
                );
                assert_eq!(s.status(&image_id).await, "importing", "{engine}");
                assert_eq!(
                    s.lock_holder(&image_id).await.as_deref(),
                    Some("other-task")
                );
            } else {
                assert!(!s.row_live(live).await, "{engine}");
                assert!(!s.a.join(&image_id).exists(), "{engine}");
                assert_eq!(s.status(&image_id).await, "queued", "{engine}");
                assert_eq!(s.lock_rows(&image_id).await, 0, "{engine}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_task_whose_stores_are_all_recorded_activates_the_image() {
    let data = payload(300_000, 53);
    for engine in engines() {
        for multi in [false, true] {
            let Some(s) = Api::new(engine, 8080, multi, "").await else {
                continue;
            };
            let image_id = s.image("importing").await;
            let backend = if multi {
                json!(["a", "b"])
            } else {
                json!([null])
            };
            // Never fetched: every store is done.
            let task_id = s
                .import(&image_id, web("http://127.0.0.1:8080/never"), backend)
                .await;
            let cat = s.env.catalog();
            cat.update_image_data(
                &image_id,
                &ImageDataUpdate {
                    checksum: Some(md5_hex(&data)),
                    os_hash_algo: Some("sha512".into()),
                    os_hash_value: Some(sha512_hex(&data)),
                    size: Some(data.len() as i64),
                    ..ImageDataUpdate::default()
                },
            )
            .await
            .unwrap();
            let rows = if multi {
                cat.set_property(&image_id, "os_glance_importing_to_stores", "a,b")
                    .await
                    .unwrap();
                vec![
                    s.located(&image_id, &task_id, &s.a, Some("a"), &data).await,
                    s.located(&image_id, &task_id, &s.b, Some("b"), &data).await,
                ]
            } else {
                vec![
                    s.located(&image_id, &task_id, &s.env.images, None, &data)
                        .await,
                ]
            };
            s.claimed_by_a_dead_executor().await;
            assert_exit(&s.env.once(), 0, engine);
            let t = s.task(&task_id).await;
            assert_eq!(t.status, "success", "{engine}: {:?}", t.message);
            assert_eq!(
                s.status(&image_id).await,
                "active",
                "{engine} multi={multi}"
            );
            for r in rows {
                assert!(s.row_live(r).await, "{engine}: location {r} kept");
            }
            assert_eq!(s.lock_rows(&image_id).await, 0, "{engine}");
            if multi {
                assert_eq!(
                    s.prop(&image_id, "os_glance_importing_to_stores")
                        .await
                        .as_deref(),
                    Some(""),
                    "{engine}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_work_files_in_the_staging_dir_are_swept_without_a_work_dir() {
    let no_work_dir = "[task]\nwork_dir =\n";
    for engine in engines() {
        let Some(s) = Api::new(engine, 8080, false, no_work_dir).await else {
            continue;
        };
        // A live task on another host: its work file stays.
        let image_id = s.image("importing").await;
        let live = s
            .import(&image_id, web("http://127.0.0.1:8080/x"), json!([null]))
            .await;
        let owner = ClaimOwner::from_string("elsewhere:1:live");
        s.env
            .catalog()
            .claim_tasks(&owner, Duration::from_secs(120), 1, &["api_image_import"])
            .await
            .unwrap();
        let gone = "imaged-task-6f1c2b1e-0000-4000-8000-000000000001.converted";
        let kept = format!("imaged-task-{live}.decompressed");
        for name in [gone, kept.as_str(), "unrelated"] {
            std::fs::write(s.staging.join(name), b"x").unwrap();
        }
        assert_exit(&s.env.once(), 0, engine);
        let mut want = vec![kept.clone(), "unrelated".to_string()];
        want.sort();
        assert_eq!(Env::files(&s.staging), want, "{engine}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_image_keeps_the_staged_copy_it_reused() {
    let server = Server::start().await;
    let data = payload(1 << 20, 54);
    server.put("c.img", data.clone());
    for engine in engines() {
        let Some(s) = Api::new(engine, server.port, true, "").await else {
            continue;
        };
        let image_id = s.image("queued").await;
        let first = s
            .import(&image_id, web(&server.url("data/c.img")), json!(["a"]))
            .await;
        assert_exit(&s.env.once(), 0, engine);
        assert_eq!(s.task(&first).await.status, "success", "{engine}");
        // A complete copy is staged (left by an earlier copy), and store b
        // already has a foreign object under the image's id: its write fails.
        std::fs::write(s.staged(&image_id), &data).unwrap();
        std::fs::write(s.b.join(&image_id), b"foreign").unwrap();
        let req = json!({"method": {"name": "copy-image"}, "stores": ["b"],
                         "all_stores_must_succeed": true});
        let copy = s.import(&image_id, req, json!(["b"])).await;
        assert_exit(&s.env.once(), 1, engine);
        assert_eq!(s.task(&copy).await.status, "failure", "{engine}");
        assert_eq!(
            std::fs::read(s.staged(&image_id)).unwrap(),
            data,
            "{engine}: the reused staged copy is kept for a retry"
        );
        assert_eq!(std::fs::read(s.b.join(&image_id)).unwrap(), b"foreign");
        assert_eq!(s.status(&image_id).await, "active", "{engine}");
        assert_eq!(
            s.prop(&image_id, "os_glance_failed_import")
                .await
                .as_deref(),
            Some("b"),
            "{engine}"
        );
        assert_eq!(s.lock_rows(&image_id).await, 0, "{engine}");
    }
}
