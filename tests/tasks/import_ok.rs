//! The successful import on every engine, rows as Glance writes them, and
//! the listing verbs.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_import_on_every_engine() {
    let server = Server::start().await;
    let data = payload(3 * 1024 * 1024 + 123, 7);
    server.put("disk.img", data.clone());
    for engine in engines() {
        let Some(env) = Env::new(engine, server.port, "").await else {
            continue;
        };
        let id = env.enqueue(
            &server.url("data/disk.img"),
            json!({"name": "imported", "disk_format": "raw", "container_format": "bare",
                   "min_ram": 512, "hw_disk_bus": "virtio", "tags": ["a", "b"]}),
        );
        let t = env.task(&id).await;
        assert_eq!(t.status, "pending");
        assert_eq!(t.image_id, None);

        let out = env.once();
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t = env.task(&id).await;
        assert_eq!(t.status, "success", "{engine}: {:?}", t.message);
        let image_id = t
            .result
            .as_ref()
            .and_then(|r| r["image_id"].as_str())
            .unwrap()
            .to_string();
        // Glance leaves tasks.image_id NULL for legacy imports.
        assert_eq!(t.image_id, None);
        let ttl = t.expires_at.unwrap() - t.updated_at.unwrap();
        assert!(
            (ttl - chrono::Duration::hours(48)).num_seconds().abs() <= 2,
            "{ttl:?}"
        );

        let img = env.catalog().get_image(&image_id).await.unwrap().unwrap();
        assert_eq!(img.status, "active");
        // Glance's legacy flow creates the image without an owner.
        assert_eq!(img.owner, None, "{engine}");
        // Raw data: the virtual size is the data size, as Glance records it.
        assert_eq!(img.virtual_size, Some(data.len() as i64), "{engine}");
        assert_eq!(img.name.as_deref(), Some("imported"));
        assert_eq!(img.min_ram, 512);
        assert_eq!(img.size, Some(data.len() as i64));
        assert_eq!(img.checksum.as_deref(), Some(md5_hex(&data).as_str()));
        assert_eq!(img.os_hash_algo.as_deref(), Some("sha512"));
        assert_eq!(
            img.os_hash_value.as_deref(),
            Some(sha512_hex(&data).as_str())
        );
        let props = env.catalog().image_properties(&image_id).await.unwrap();
        assert_eq!(props.get("hw_disk_bus"), Some(&Some("virtio".to_string())));
        // The lock row is deleted outright, not soft-deleted: Glance's
        // legacy import never has one.
        assert_eq!(
            env.db
                .count("SELECT COUNT(*) FROM image_properties WHERE name = 'os_glance_import_task'")
                .await
                .unwrap(),
            0,
            "{engine}: lock row left: {props:?}"
        );
        assert_eq!(
            env.catalog().image_tags(&image_id).await.unwrap(),
            vec!["a", "b"]
        );
        let locs = env.catalog().image_locations(&image_id).await.unwrap();
        assert_eq!(locs.len(), 1);
        let url = locs[0].url.clone().unwrap();
        assert_eq!(locs[0].status, "active");
        let path = url.strip_prefix("file://").unwrap();
        assert_eq!(std::fs::read(path).unwrap(), data, "{engine}: stored bytes");
        assert_eq!(Env::files(&env.work), Vec::<String>::new());

        // show / list
        let out = env.run(&["show", &id, "--format", "json"]);
        assert!(out.status.success());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["status"], "success");
        assert_eq!(v["result"]["image_id"], image_id.as_str());
        assert_eq!(
            v["input"]["import_from"],
            server.url("data/disk.img").as_str()
        );
        let out = env.run(&["list", "--format", "json", "--status", "success"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert_eq!(v[0]["id"], id.as_str());
        let out = env.run(&["list"]);
        assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    }
    assert!(
        server
            .state
            .user_agents
            .lock()
            .unwrap()
            .iter()
            .all(|u| u.starts_with("imaged-tasks/"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_properties_default_to_qcow2_bare_and_sha256_is_honoured() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let q = qemu_create(dir.path(), "small.qcow2", "qcow2", &[], "8M");
    server.put("small.qcow2", q.clone());
    let Some(env) = Env::new(imaged_catalog::Engine::Sqlite, server.port, "").await else {
        return;
    };
    env.write_config("[DEFAULT]\nhashing_algorithm = sha256\n");
    let id = env.enqueue(&server.url("data/small.qcow2"), json!({}));
    env.once();
    let t = env.task(&id).await;
    assert_eq!(t.status, "success", "{:?}", t.message);
    let image_id = t.result.unwrap()["image_id"].as_str().unwrap().to_string();
    let img = env.catalog().get_image(&image_id).await.unwrap().unwrap();
    assert_eq!(img.disk_format.as_deref(), Some("qcow2"));
    assert_eq!(img.container_format.as_deref(), Some("bare"));
    assert_eq!(img.virtual_size, Some(8 << 20));
    assert_eq!(img.os_hash_algo.as_deref(), Some("sha256"));
    use sha2::Digest;
    assert_eq!(
        img.os_hash_value.unwrap(),
        hex::encode(sha2::Sha256::digest(&q))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversion_to_raw_through_work_dir() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let q = qemu_create(dir.path(), "c.qcow2", "qcow2", &[], "6M");
    server.put("c.qcow2", q);
    let Some(env) = Env::new(imaged_catalog::Engine::Sqlite, server.port, "").await else {
        return;
    };
    env.write_config("[taskflow_executor]\nconversion_format = raw\n");
    // An owner in image_properties is a base attribute Glance writes as given.
    let id = env.enqueue(
        &server.url("data/c.qcow2"),
        json!({"disk_format": "qcow2", "owner": "proj2"}),
    );
    env.once();
    let t = env.task(&id).await;
    assert_eq!(t.status, "success", "{:?}", t.message);
    let image_id = t.result.unwrap()["image_id"].as_str().unwrap().to_string();
    let img = env.catalog().get_image(&image_id).await.unwrap().unwrap();
    assert_eq!(img.disk_format.as_deref(), Some("raw"));
    assert_eq!(img.size, Some(6 << 20));
    // Converted to raw: the virtual size is the size of the stored data.
    assert_eq!(img.virtual_size, Some(6 << 20));
    assert_eq!(img.owner.as_deref(), Some("proj2"));
    assert_eq!(
        img.checksum.as_deref(),
        Some(md5_hex(&vec![0u8; 6 << 20]).as_str())
    );
    assert_eq!(
        Env::files(&env.work),
        Vec::<String>::new(),
        "work files removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tasks_are_soft_deleted_for_all_owners() {
    let Some(env) = Env::new(imaged_catalog::Engine::Sqlite, 80, "").await else {
        return;
    };
    let a = env.enqueue_raw(json!({"import_from": "http://x/", "import_from_format": "raw", "image_properties": {}})).await;
    env.db
        .exec(&format!(
            "UPDATE tasks SET status = 'failure', expires_at = '2001-01-01 00:00:00.000000', owner = 'other' WHERE id = '{a}'"
        ))
        .await
        .unwrap();
    let out = env.once();
    assert!(out.status.success());
    let t = env.task(&a).await;
    assert!(t.deleted, "expired task soft-deleted");
    assert!(t.deleted_at.is_some());
    // The daemon picks a new task up within about a second.
    let server = Server::start().await;
    server.put("x", payload(1000, 1));
    let env2 = Env::new(imaged_catalog::Engine::Sqlite, server.port, "")
        .await
        .unwrap();
    let mut child = env2.spawn(&["run"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let id = env2.enqueue(&server.url("data/x"), json!({"disk_format": "raw"}));
    let start = std::time::Instant::now();
    Env::wait_for("pickup", Duration::from_secs(10), || async {
        env2.task(&id).await.status == "success"
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "picked up in {:?}",
        start.elapsed()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}");
}
