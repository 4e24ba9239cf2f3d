//! Every failure path ends in `failure` with a specific message and leaves
//! nothing behind: the image soft-deleted, no stored data, no work files.

use serde_json::json;

use crate::harness::*;

/// Runs the queued task and checks the failure and the revert.
async fn expect_failure(env: &Env, id: &str, needle: &str) {
    let out = env.once();
    assert_eq!(
        out.status.code(),
        Some(1),
        "once must report the failure: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = env.task(id).await;
    assert_eq!(t.status, "failure", "task {id}");
    let msg = t.message.clone().unwrap_or_default();
    assert!(
        msg.contains(needle),
        "message {msg:?} should contain {needle:?}"
    );
    assert!(!msg.contains("Internal Error"), "{msg}");
    assert!(t.expires_at.is_some());
    assert_eq!(t.result, None);
    let live = env
        .db
        .count("SELECT COUNT(*) FROM images WHERE deleted = FALSE")
        .await
        .unwrap();
    assert_eq!(live, 0, "no live image after a failed import ({needle})");
    let bad = env
        .db
        .count("SELECT COUNT(*) FROM images WHERE status IN ('saving', 'importing', 'queued')")
        .await
        .unwrap();
    assert_eq!(bad, 0);
    // The revert drops the import lock row outright with the image: no
    // soft-deleted os_glance_import_task row, as in Glance.
    let locks = env
        .db
        .count("SELECT COUNT(*) FROM image_properties WHERE name = 'os_glance_import_task'")
        .await
        .unwrap();
    assert_eq!(locks, 0, "lock row left after a failed import ({needle})");
    assert_eq!(
        Env::files(&env.images),
        Vec::<String>::new(),
        "no stored data ({needle})"
    );
    assert_eq!(
        Env::files(&env.work),
        Vec::<String>::new(),
        "no work files ({needle})"
    );
}

fn raw() -> serde_json::Value {
    json!({"disk_format": "raw", "container_format": "bare"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_failures_and_limits() {
    let server = Server::start().await;
    server.put("big", payload(3 << 20, 3));
    server.put("q", payload(2 << 20, 4));
    let Some(env) = Env::new(imaged_catalog::Engine::Sqlite, server.port, "").await else {
        return;
    };

    // HTTP error.
    let id = env.enqueue(&server.url("data/missing"), raw());
    expect_failure(&env, &id, "HTTP 404").await;

    // Truncated body.
    let id = env.enqueue(&server.url("short/q"), raw());
    expect_failure(&env, &id, "download of").await;

    // Size cap: announced length, and mid-stream without a length.
    env.write_config("[DEFAULT]\nimage_size_cap = 1048576\n");
    let id = env.enqueue(&server.url("data/big"), raw());
    expect_failure(&env, &id, "exceeds image_size_cap").await;
    let id = env.enqueue(&server.url("nolen/big"), raw());
    expect_failure(&env, &id, "exceeds image_size_cap").await;

    // User storage quota, mid-stream: 2 MiB used of 4 MiB, a 3 MiB image.
    // The quota counts the task owner's images, as Glance counts the
    // request project's; a legacy import only owns its image when
    // image_properties names the owner.
    env.write_config("[DEFAULT]\nuser_storage_quota = 4194304\n");
    let mut owned = raw();
    owned["owner"] = json!("proj1");
    let ok = env.enqueue(&server.url("data/q"), owned);
    env.once();
    assert_eq!(env.task(&ok).await.status, "success");
    let id = env.enqueue(&server.url("nolen/big"), raw());
    let out = env.once();
    assert_eq!(out.status.code(), Some(1));
    let t = env.task(&id).await;
    assert_eq!(t.status, "failure");
    assert!(t.message.unwrap().contains("user storage quota exceeded"));
    // Only the earlier, successful image is live.
    assert_eq!(
        env.db
            .count("SELECT COUNT(*) FROM images WHERE deleted = FALSE")
            .await
            .unwrap(),
        1
    );
    assert_eq!(Env::files(&env.images).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_urls_and_redirects() {
    let server = Server::start().await;
    server.put("d", payload(100_000, 5));
    let Some(env) = Env::new(imaged_catalog::Engine::Sqlite, server.port, "").await else {
        return;
    };

    // The CLI refuses what the filter refuses, as the API does.
    let input = json!({"import_from": "http://169.254.169.254/latest", "import_from_format": "raw", "image_properties": {}});
    let out = env.run(&["enqueue", "--owner", "p", "--input", &input.to_string()]);
    assert_eq!(out.status.code(), Some(2));

    // Rows written by another API still go through the same checks.
    for (url, needle) in [
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "does not pass filtering",
        ),
        (
            format!("http://2130706433:{}/data/d", server.port),
            "encoded IP",
        ),
        (
            "http://127.0.0.1:1/data/d".to_string(),
            "port 1 is not allowed",
        ),
        (
            "file:///etc/passwd".to_string(),
            "file:// sources are disabled",
        ),
        ("gopher://127.0.0.1/".to_string(), "does not pass filtering"),
    ] {
        let id = env
            .enqueue_raw(
                json!({"import_from": url, "import_from_format": "raw", "image_properties": raw()}),
            )
            .await;
        expect_failure(&env, &id, needle).await;
    }

    // Redirects are re-checked: to a refused address, and to a refused port.
    let id = env.enqueue(&server.url("redirect/http:/10.0.0.1/x"), raw());
    expect_failure(&env, &id, "Redirect to disallowed URL").await;
    let id = env.enqueue(&server.url("redirect/http:/127.0.0.1:9/x"), raw());
    expect_failure(&env, &id, "Redirect to disallowed URL").await;
    // An allowed redirect is followed.
    let target = format!("http:/127.0.0.1:{}/data/d", server.port);
    let id = env.enqueue(&server.url(&format!("redirect/{target}")), raw());
    env.once();
    assert_eq!(env.task(&id).await.status, "success");
    assert_eq!(server.hits("d"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_properties_are_refused_before_any_download() {
    let server = Server::start().await;
    server.put("d", payload(10_000, 6));
    let Some(env) = Env::new(imaged_catalog::Engine::Sqlite, server.port, "").await else {
        return;
    };
    env.write_config("[DEFAULT]\nimage_property_quota = 1\nimage_tag_quota = 1\n");
    for (props, needle) in [
        (json!({"disk_format": "floppy"}), "invalid disk_format"),
        (
            json!({"container_format": "zip"}),
            "invalid container_format",
        ),
        (json!({"a": "1", "b": "2"}), "image_property_quota"),
        (json!({"tags": ["x", "y"]}), "image_tag_quota"),
        (json!({"os_glance_import_task": "x"}), "reserved"),
        (json!({"size": 5}), "read-only"),
    ] {
        let id = env
            .enqueue_raw(json!({"import_from": server.url("data/d"), "import_from_format": "raw", "image_properties": props}))
            .await;
        expect_failure(&env, &id, needle).await;
    }
    env.write_config("[DEFAULT]\nallow_additional_image_properties = false\n");
    let id = env
        .enqueue_raw(json!({"import_from": server.url("data/d"), "import_from_format": "raw", "image_properties": {"x": "1"}}))
        .await;
    expect_failure(&env, &id, "additional image properties are not allowed").await;
    let id = env
        .enqueue_raw(json!({"import_from": server.url("data/d")}))
        .await;
    expect_failure(&env, &id, "missing import_from_format").await;
    assert_eq!(server.hits("d"), 0, "nothing downloaded for invalid input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_images_are_refused() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    // CVE-2024-32498: qcow2 with a backing file, qcow2 with an external data file.
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let backing = qemu_create(
        dir.path(),
        "b.qcow2",
        "qcow2",
        &[
            &format!("backing_file={}", base.display()),
            "backing_fmt=raw",
        ],
        "1M",
    );
    let data_file = dir.path().join("data.raw");
    let datafile = qemu_create(
        dir.path(),
        "d.qcow2",
        "qcow2",
        &[&format!("data_file={}", data_file.display())],
        "1M",
    );
    // CVE-2022-47951: VMDK subformats outside the allow-list and text
    // descriptors naming host files.
    let flat = qemu_create(
        dir.path(),
        "f.vmdk",
        "vmdk",
        &["subformat=monolithicFlat"],
        "1M",
    );
    let sparse_ok = qemu_create(
        dir.path(),
        "s.vmdk",
        "vmdk",
        &["subformat=monolithicSparse"],
        "1M",
    );
    let two_gb = qemu_create(
        dir.path(),
        "t.vmdk",
        "vmdk",
        &["subformat=twoGbMaxExtentSparse"],
        "1M",
    );
    let mut hidden = qemu_create(dir.path(), "h.qcow2", "qcow2", &[], "1M");
    hidden.resize(64 * 1024, 0);
    hidden[32769..32774].copy_from_slice(b"CD001");
    let plain = qemu_create(dir.path(), "p.qcow2", "qcow2", &[], "1M");
    for (name, data) in [
        ("backing", backing),
        ("datafile", datafile),
        ("flat", flat),
        ("sparse_ok", sparse_ok),
        ("twogb", two_gb),
        ("hidden", hidden),
        ("plain", plain),
        ("rawdata", payload(1 << 20, 9)),
    ] {
        server.put(name, data);
    }
    let Some(env) = Env::new(imaged_catalog::Engine::Sqlite, server.port, "").await else {
        return;
    };
    let q = json!({"disk_format": "qcow2", "container_format": "bare"});
    let v = json!({"disk_format": "vmdk", "container_format": "bare"});
    for (name, props, needle) in [
        ("backing", &q, "backing_file"),
        ("datafile", &q, "data_file"),
        ("flat", &v, "vmdk"),
        ("twogb", &v, "vmdk"),
        ("hidden", &q, "multiple formats"),
        ("rawdata", &q, "format mismatch"),
        ("plain", &v, "format mismatch"),
    ] {
        let id = env.enqueue(&server.url(&format!("data/{name}")), props.clone());
        expect_failure(&env, &id, needle).await;
    }
    // The safe variants pass.
    for (name, props) in [("sparse_ok", &v), ("plain", &q)] {
        let id = env.enqueue(&server.url(&format!("data/{name}")), props.clone());
        env.once();
        let t = env.task(&id).await;
        assert_eq!(t.status, "success", "{name}: {:?}", t.message);
    }
}
