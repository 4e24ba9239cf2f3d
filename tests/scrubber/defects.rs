//! One test per defect of Glance's scrubber (reference list D1–D16) that
//! imaged-scrubber must not have. Each sets up the rows that trigger the
//! defect in Glance and checks imaged's outcome.

use imaged_catalog::Engine;
use imaged_catalog::testing::PendingDeleteImage;

use crate::common::*;

/// D1: community images are scrubbed like any other.
#[tokio::test]
async fn d1_community_images_are_scrubbed() {
    let Some(env) = Env::new(Engine::Sqlite).await else {
        return;
    };
    let mut img = PendingDeleteImage::new(hour_ago(), 1);
    img.visibility = "community".into();
    let name = format!("{}-0", img.id);
    let file = env.data_file(&name);
    img.locations = vec![(env.url(&name), Some("{}".into()))];
    img.insert(&env.db.catalog).await.unwrap();
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!file.exists());
    assert_eq!(
        env.image_text(&img.id, "status").await.as_deref(),
        Some("deleted")
    );
}

/// D2 + D11: a permanently failing location is recorded once, logged once
/// with its reason, counted in the exit code, and does not block others;
/// the next run does not retry it (back-off) but still exits non-zero.
#[tokio::test]
async fn d2_d11_permanent_failures_are_recorded_once_and_do_not_block() {
    let Some(env) = Env::new(Engine::Sqlite).await else {
        return;
    };
    let mut http = PendingDeleteImage::new(hour_ago(), 1);
    http.locations = vec![("http://example.invalid/data".into(), Some("{}".into()))];
    http.insert(&env.db.catalog).await.unwrap();
    // A directory where the data file should be: not a regular file.
    let mut dir_img = PendingDeleteImage::new(hour_ago(), 1);
    let dname = format!("{}-0", dir_img.id);
    std::fs::create_dir(env.datadir.join(&dname)).unwrap();
    dir_img.locations = vec![(env.url(&dname), Some("{}".into()))];
    dir_img.insert(&env.db.catalog).await.unwrap();
    let good = env.pending_image(2, hour_ago()).await;

    let out = env.run(&["once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert_eq!(summary_value(&log, "permanent"), Some(2), "{log}");
    assert_eq!(summary_value(&log, "scrubbed"), Some(2), "{log}");
    assert!(
        log.contains(&http.id) && log.contains("permanent failure"),
        "{log}"
    );
    assert_eq!(
        env.image_text(&good.id, "status").await.as_deref(),
        Some("deleted")
    );
    assert_eq!(
        env.image_text(&http.id, "status").await.as_deref(),
        Some("pending_delete")
    );
    assert_eq!(
        env.image_text(&dir_img.id, "status").await.as_deref(),
        Some("pending_delete")
    );
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM imaged_claims WHERE error_class = 'permanent' AND owner IS NULL"
        )
        .await,
        2
    );

    let out = env.run(&["once"]);
    let log = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "failures still outstanding: {log}"
    );
    assert_eq!(
        summary_value(&log, "permanent"),
        Some(0),
        "not retried: {log}"
    );
    assert_eq!(summary_value(&log, "backing_off"), Some(2), "{log}");
    assert!(
        !log.contains("permanent failure"),
        "logged only once: {log}"
    );
    assert!(env.datadir.join(&dname).is_dir());
}

/// D4: in multi-store mode a location without `store` metadata (and one
/// with the pre-Train `backend` key) is routed by scheme and scrubbed.
#[tokio::test]
async fn d4_multistore_locations_without_store_key_are_scrubbed() {
    let Some(env) = Env::new(Engine::Sqlite).await else {
        return;
    };
    let fast = env.dir.path().join("fast");
    std::fs::create_dir_all(&fast).unwrap();
    env.write_config(
        "enabled_backends = fast:file",
        &format!(
            "[glance_store]\ndefault_backend = fast\n\n[fast]\nfilesystem_store_datadir = {}\n\n\
             [os_glance_staging_store]\nfilesystem_store_datadir = {}/staging\n\n\
             [os_glance_tasks_store]\nfilesystem_store_datadir = {}/tasks\n",
            fast.display(),
            env.dir.path().display(),
            env.dir.path().display()
        ),
    );
    let mut img = PendingDeleteImage::new(hour_ago(), 3);
    let mut files = Vec::new();
    let metas = [
        None,
        Some("{\"backend\": \"fast\"}".to_string()),
        Some("{\"store\": \"fast\"}".to_string()),
    ];
    img.locations = metas
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let p = fast.join(format!("{}-{i}", img.id));
            std::fs::write(&p, b"data").unwrap();
            files.push(p.clone());
            (format!("file://{}", p.display()), m.clone())
        })
        .collect();
    img.insert(&env.db.catalog).await.unwrap();
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for f in files {
        assert!(!f.exists(), "{} still exists", f.display());
    }
    assert_eq!(
        env.image_text(&img.id, "status").await.as_deref(),
        Some("deleted")
    );
}

/// D5 + D8: an image left `pending_delete` with no pending location (rows
/// purged, or all locations already deleted) is completed.
#[tokio::test]
async fn d5_d8_images_without_pending_locations_are_completed() {
    let Some(env) = Env::new(Engine::Sqlite).await else {
        return;
    };
    let mut purged = PendingDeleteImage::new(hour_ago(), 0);
    purged.locations.clear();
    purged.insert(&env.db.catalog).await.unwrap();
    let half = env.pending_image(2, hour_ago()).await;
    env.db
        .exec(&format!(
            "UPDATE image_locations SET status = 'deleted' WHERE image_id = '{}'",
            half.id
        ))
        .await
        .unwrap();
    let out = env.run(&["once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(summary_value(&log, "stuck_completed"), Some(2), "{log}");
    for id in [&purged.id, &half.id] {
        assert_eq!(
            env.image_text(id, "status").await.as_deref(),
            Some("deleted")
        );
    }
}

/// D6: with `metadata_encryption_key` set, encrypted and plaintext URLs are
/// scrubbed and one undecryptable value fails only its own image.
#[tokio::test]
async fn d6_one_undecryptable_url_does_not_stop_the_run() {
    let key = "0123456789abcdef";
    let Some(env) = Env::with_config(
        Engine::Sqlite,
        &format!("metadata_encryption_key = {key}"),
        "",
    )
    .await
    else {
        return;
    };
    let cipher = imaged_catalog::LocationCipher::new(key).unwrap();
    let mut enc = PendingDeleteImage::new(hour_ago(), 1);
    let name = format!("{}-0", enc.id);
    let enc_file = env.data_file(&name);
    enc.locations = vec![(cipher.encrypt(&env.url(&name)).unwrap(), Some("{}".into()))];
    enc.insert(&env.db.catalog).await.unwrap();
    let plain = env.pending_image(1, hour_ago()).await;
    let mut bad = PendingDeleteImage::new(hour_ago(), 1);
    bad.locations = vec![("bm90IGEgdmFsaWQgY2lwaGVydGV4dA==".into(), Some("{}".into()))];
    bad.insert(&env.db.catalog).await.unwrap();
    // Listed after the bad row in the same unit: its result must stay its own.
    let later = env.pending_image(1, hour_ago()).await;

    let out = env.run(&["once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(!enc_file.exists(), "{log}");
    assert_eq!(
        env.image_text(&enc.id, "status").await.as_deref(),
        Some("deleted")
    );
    assert_eq!(
        env.image_text(&plain.id, "status").await.as_deref(),
        Some("deleted")
    );
    assert_eq!(
        env.image_text(&later.id, "status").await.as_deref(),
        Some("deleted")
    );
    assert_eq!(
        env.image_text(&bad.id, "status").await.as_deref(),
        Some("pending_delete")
    );
    assert_eq!(summary_value(&log, "permanent"), Some(1), "{log}");
}

/// D7: a NULL `meta_data` is treated as `{}`.
#[tokio::test]
async fn d7_null_meta_data_is_scrubbed() {
    let Some(env) = Env::new(Engine::Sqlite).await else {
        return;
    };
    let mut img = PendingDeleteImage::new(hour_ago(), 1);
    let name = format!("{}-0", img.id);
    let file = env.data_file(&name);
    img.locations = vec![(env.url(&name), None)];
    img.insert(&env.db.catalog).await.unwrap();
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!file.exists());
    assert_eq!(
        env.image_text(&img.id, "status").await.as_deref(),
        Some("deleted")
    );
}

/// D9: a location removed from a live image is scrubbed; the image stays
/// active and its other location is untouched.
#[tokio::test]
async fn d9_removed_locations_of_live_images_are_scrubbed() {
    let Some(env) = Env::new(Engine::Sqlite).await else {
        return;
    };
    let img = env.pending_image(2, hour_ago()).await;
    // Turn it into an active image whose second location was removed.
    env.db
        .exec(&format!(
            "UPDATE images SET status = 'active', deleted = FALSE, deleted_at = NULL WHERE id = '{}'",
            img.id
        ))
        .await
        .unwrap();
    let keep = img.locations[0].0.clone();
    env.db
        .exec(&format!(
            "UPDATE image_locations SET status = 'active', deleted = FALSE, deleted_at = NULL WHERE value = '{keep}'"
        ))
        .await
        .unwrap();
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.image_text(&img.id, "status").await.as_deref(),
        Some("active")
    );
    assert!(std::path::Path::new(keep.trim_start_matches("file://")).exists());
    let removed = img.locations[1].0.trim_start_matches("file://").to_string();
    assert!(!std::path::Path::new(&removed).exists());
    assert_eq!(
        env.count(&format!(
            "SELECT COUNT(*) FROM image_locations WHERE image_id = '{}' AND status = 'deleted'",
            img.id
        ))
        .await,
        1
    );
}

/// D13: a `file://` location outside the configured data directory is
/// refused (permanent failure) and the file survives.
#[tokio::test]
async fn d13_files_outside_the_store_are_not_deleted() {
    let Some(env) = Env::new(Engine::Sqlite).await else {
        return;
    };
    let outside = env.dir.path().join("precious.txt");
    std::fs::write(&outside, b"not image data").unwrap();
    let mut img = PendingDeleteImage::new(hour_ago(), 1);
    img.locations = vec![(format!("file://{}", outside.display()), Some("{}".into()))];
    img.insert(&env.db.catalog).await.unwrap();
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(outside.exists());
    assert_eq!(
        env.image_text(&img.id, "status").await.as_deref(),
        Some("pending_delete")
    );
}

/// D16: `scrub_pool_size > 1` on SQLite: every image ends `deleted`, no
/// "database is locked" anywhere.
#[tokio::test]
async fn d16_parallel_pool_on_sqlite_completes_everything() {
    let Some(env) =
        Env::with_config(Engine::Sqlite, "", "[imaged_scrubber]\nbatch_size = 37\n").await
    else {
        return;
    };
    env.write_config(
        "scrub_pool_size = 10",
        "[imaged_scrubber]\nbatch_size = 37\n",
    );
    let mut ids = Vec::new();
    for i in 0..150 {
        ids.push(env.pending_image(1 + i % 2, hour_ago()).await.id);
    }
    let out = env.run(&["once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        !log.to_ascii_lowercase().contains("database is locked"),
        "{log}"
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM images WHERE status = 'deleted'")
            .await,
        150
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM image_locations WHERE status = 'pending_delete'")
            .await,
        0
    );
    assert_eq!(std::fs::read_dir(&env.datadir).unwrap().count(), 0);
    assert_eq!(ids.len(), 150);
}

/// Transient failures are retried on a later pass after a back-off (the
/// other half of D2): a data file on a read-only parent is not deleted
/// until it becomes writable. Simulated with a claim already in back-off.
#[tokio::test]
async fn transient_failures_back_off_and_are_retried() {
    let Some(env) = Env::new(Engine::Sqlite).await else {
        return;
    };
    let img = env.pending_image(1, hour_ago()).await;
    // An earlier transient failure whose back-off has not passed yet.
    let future = imaged_catalog::testing::ts_literal(
        Engine::Sqlite,
        &(imaged_catalog::time::utcnow() + chrono::Duration::hours(1)),
    );
    env.db
        .exec(&format!(
            "INSERT INTO imaged_claims (kind, unit_id, attempts, created_at, error_class, last_error, next_attempt_at) \
             VALUES ('scrub_image', '{}', 1, {future}, 'transient', 'timed out', {future})",
            img.id
        ))
        .await
        .unwrap();
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        env.image_text(&img.id, "status").await.as_deref(),
        Some("pending_delete")
    );
    // Back-off over: the next pass scrubs it and clears the failure.
    env.db
        .exec("UPDATE imaged_claims SET next_attempt_at = '2000-01-01 00:00:00.000000'")
        .await
        .unwrap();
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.image_text(&img.id, "status").await.as_deref(),
        Some("deleted")
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM imaged_claims").await, 0);
}
