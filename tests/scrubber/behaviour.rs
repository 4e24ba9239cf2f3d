//! The core behaviour on every engine: row states after a pass, scrub_time,
//! exit codes, Glance's command-line spelling, status output.

use imaged_catalog::Engine;
use imaged_catalog::time::utcnow;

use crate::common::*;

async fn once_leaves_glance_row_states(engine: Engine) {
    let Some(env) = Env::new(engine).await else {
        return;
    };
    let before = utcnow() - chrono::Duration::seconds(2);
    let two = env.pending_image(2, hour_ago()).await;
    let one = env.pending_image(1, hour_ago()).await;
    let deleted_at_before = env
        .db
        .timestamp(&format!(
            "SELECT deleted_at FROM images WHERE id = '{}'",
            two.id
        ))
        .await
        .unwrap();

    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = text(&out);
    assert_eq!(summary_value(&log, "scrubbed"), Some(3), "{log}");
    assert_eq!(summary_value(&log, "images_deleted"), Some(2), "{log}");

    for img in [&two, &one] {
        for (url, _) in &img.locations {
            let path = url.trim_start_matches("file://");
            assert!(!exists(std::path::Path::new(path)), "{path} still exists");
        }
        assert_eq!(
            env.image_text(&img.id, "status").await.as_deref(),
            Some("deleted")
        );
        assert_eq!(
            env.count(&format!(
                "SELECT COUNT(*) FROM images WHERE id = '{}' AND deleted = TRUE",
                img.id
            ))
            .await,
            1
        );
        // Locations: deleted, deleted = 1, deleted_at = updated_at = scrub time.
        assert_eq!(
            env.count(&format!(
                "SELECT COUNT(*) FROM image_locations WHERE image_id = '{}' AND status = 'deleted' AND deleted = TRUE \
                 AND deleted_at = updated_at",
                img.id
            ))
            .await,
            img.locations.len() as i64
        );
        let loc_deleted_at = env
            .db
            .timestamp(&format!(
                "SELECT MIN(deleted_at) FROM image_locations WHERE image_id = '{}'",
                img.id
            ))
            .await
            .unwrap()
            .unwrap();
        assert!(
            loc_deleted_at >= before,
            "location deleted_at {loc_deleted_at} is the scrub time"
        );
        // Properties and tags untouched (still soft-deleted).
        assert_eq!(
            env.count(&format!(
                "SELECT COUNT(*) FROM image_properties WHERE image_id = '{}' AND deleted = TRUE",
                img.id
            ))
            .await,
            1
        );
    }
    // images.deleted_at is left unchanged, as Glance leaves it.
    let deleted_at_after = env
        .db
        .timestamp(&format!(
            "SELECT deleted_at FROM images WHERE id = '{}'",
            two.id
        ))
        .await
        .unwrap();
    assert_eq!(deleted_at_before, deleted_at_after);
    // Nothing left behind in the claim table.
    assert_eq!(env.count("SELECT COUNT(*) FROM imaged_claims").await, 0);

    // A second pass has nothing to do and succeeds.
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(summary_value(&text(&out), "due"), Some(0));
}

#[tokio::test]
async fn once_leaves_glance_row_states_sqlite() {
    once_leaves_glance_row_states(Engine::Sqlite).await;
}

#[tokio::test]
async fn once_leaves_glance_row_states_postgres() {
    once_leaves_glance_row_states(Engine::Postgres).await;
}

#[tokio::test]
async fn once_leaves_glance_row_states_mysql() {
    once_leaves_glance_row_states(Engine::MySql).await;
}

async fn scrub_time_is_respected(engine: Engine) {
    let Some(env) = Env::with_config(engine, "scrub_time = 3600", "").await else {
        return;
    };
    let recent = env
        .pending_image(1, utcnow() - chrono::Duration::seconds(60))
        .await;
    let old = env
        .pending_image(1, utcnow() - chrono::Duration::hours(2))
        .await;
    let out = env.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.image_text(&recent.id, "status").await.as_deref(),
        Some("pending_delete")
    );
    assert_eq!(
        env.image_text(&old.id, "status").await.as_deref(),
        Some("deleted")
    );
    let recent_file = recent.locations[0]
        .0
        .trim_start_matches("file://")
        .to_string();
    assert!(exists(std::path::Path::new(&recent_file)));

    let out = env.run(&["status", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pending_images"], 1);
    assert_eq!(v["due_images"], 0);
    assert_eq!(v["pending_locations"], 1);
    assert_eq!(v["scrub_time_s"], 3600);
}

#[tokio::test]
async fn scrub_time_is_respected_sqlite() {
    scrub_time_is_respected(Engine::Sqlite).await;
}

#[tokio::test]
async fn scrub_time_is_respected_postgres() {
    scrub_time_is_respected(Engine::Postgres).await;
}

#[tokio::test]
async fn scrub_time_is_respected_mysql() {
    scrub_time_is_respected(Engine::MySql).await;
}

#[tokio::test]
async fn glance_invocation_and_config_pair_work() {
    let Some(env) = Env::new(Engine::Sqlite).await else {
        return;
    };
    // A glance-api.conf + glance-scrubber.conf pair: database and store in
    // the API file, scrubber options in the scrubber file.
    let pair = env.dir.path().join("pair");
    std::fs::create_dir_all(&pair).unwrap();
    let api = pair.join("glance-api.conf");
    std::fs::write(
        &api,
        format!(
            "[DEFAULT]\ndelayed_delete = True\nbind_port = 9292\n\n[database]\nconnection = {}\n\n\
             [glance_store]\nstores = file,http\ndefault_store = file\nfilesystem_store_datadir = {}\n",
            env.db.options.connection,
            env.datadir.display()
        ),
    )
    .unwrap();
    let scrub = pair.join("glance-scrubber.conf");
    std::fs::write(
        &scrub,
        "[DEFAULT]\nscrub_time = 0\nscrub_pool_size = 2\nwakeup_time = 300\nuse_stderr = true\n",
    )
    .unwrap();
    let img = env.pending_image(1, hour_ago()).await;
    let out = std::process::Command::new(BIN)
        .arg("--config-file")
        .arg(&api)
        .arg("--config-file")
        .arg(&scrub)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.image_text(&img.id, "status").await.as_deref(),
        Some("deleted")
    );

    // --restore together with --daemon is a usage error, as in Glance.
    let out = env.run(&["--daemon", "--restore", &img.id]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // --restore IMAGE_ID works like `restore`.
    let again = env.pending_image(1, hour_ago()).await;
    let out = env.run(&["--restore", &again.id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.image_text(&again.id, "status").await.as_deref(),
        Some("active")
    );

    // `config check` validates the pair.
    let out = std::process::Command::new(BIN)
        .args(["--config-file"])
        .arg(&api)
        .arg("--config-file")
        .arg(&scrub)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test]
async fn bad_configuration_and_unreachable_database_have_distinct_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.conf");
    std::fs::write(
        &bad,
        "[DEFAULT]\nscrub_pool_size = zero\n[database]\nconnection = sqlite:////nonexistent/x.db\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--config-file")
        .arg(&bad)
        .arg("once")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let unreachable = dir.path().join("down.conf");
    std::fs::write(
        &unreachable,
        "[DEFAULT]\nuse_stderr = true\n[database]\nconnection = postgresql://postgres@127.0.0.1:1/glance\nmax_retries = 1\nretry_interval = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--config-file")
        .arg(&unreachable)
        .arg("once")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

#[tokio::test]
async fn status_table_lists_failing_images() {
    let Some(env) = Env::new(Engine::Sqlite).await else {
        return;
    };
    let mut img = imaged_catalog::testing::PendingDeleteImage::new(hour_ago(), 1);
    img.locations = vec![("http://example.invalid/image".into(), Some("{}".into()))];
    img.insert(&env.db.catalog).await.unwrap();
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = env.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(table.contains(&img.id), "{table}");
    assert!(table.contains("permanent"), "{table}");
    assert!(table.contains("read-only"), "{table}");
}

/// Images whose locations fall into two units of one pass (the pass
/// pipelines units: one is deleted while the next is claimed): every
/// location is scrubbed once, no image is reported as held by another
/// scrubber, and every image ends `deleted`. 1,100 bulk images of one
/// location each; image k (k ≤ 550) also takes the location of image
/// k + 550, so images 451–550 span the first two units of 1,000 locations
/// and images 551–1,100 are left with no location at all.
async fn images_spanning_units_are_scrubbed_once(engine: Engine) {
    let Some(env) = Env::with_config(engine, "scrub_pool_size = 4", "").await else {
        return;
    };
    imaged_catalog::testing::bulk_pending_delete(&env.db.catalog, 1100, 1)
        .await
        .unwrap();
    env.db
        .exec(&format!(
            "UPDATE image_locations SET value = REPLACE(value, 'file:///var/lib/glance/images', '{}')",
            env.url("").trim_end_matches('/')
        ))
        .await
        .unwrap();
    for i in 1..=1100 {
        env.data_file(&format!("bulk-{i}-0"));
    }
    let num = "CAST(SUBSTR(image_id, 6) AS INTEGER)";
    let moved = match engine {
        Engine::Sqlite => format!("printf('bulk-%031d', {num} - 550)"),
        Engine::Postgres => format!("'bulk-' || lpad(({num} - 550)::text, 31, '0')"),
        Engine::MySql => {
            "CONCAT('bulk-', LPAD(CAST(SUBSTRING(image_id, 6) AS UNSIGNED) - 550, 31, '0'))"
                .to_string()
        }
    };
    let over = match engine {
        Engine::MySql => "CAST(SUBSTRING(image_id, 6) AS UNSIGNED) > 550".to_string(),
        _ => format!("{num} > 550"),
    };
    env.db
        .exec(&format!(
            "UPDATE image_locations SET image_id = {moved} WHERE {over}"
        ))
        .await
        .unwrap();
    assert_eq!(
        env.count("SELECT COUNT(DISTINCT image_id) FROM image_locations")
            .await,
        550
    );

    let out = env.run(&["once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(summary_value(&log, "due"), Some(1100), "{log}");
    assert_eq!(summary_value(&log, "scrubbed"), Some(1100), "{log}");
    assert_eq!(summary_value(&log, "held_elsewhere"), Some(0), "{log}");
    assert_eq!(summary_value(&log, "conflicts"), Some(0), "{log}");
    assert_eq!(summary_value(&log, "images_deleted"), Some(1100), "{log}");
    assert_eq!(summary_value(&log, "stuck_completed"), Some(550), "{log}");
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM image_locations WHERE status = 'deleted' AND deleted = TRUE"
        )
        .await,
        1100
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM images WHERE status = 'deleted'")
            .await,
        1100
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM imaged_claims WHERE owner IS NOT NULL")
            .await,
        0,
        "every claim released"
    );
    assert_eq!(std::fs::read_dir(&env.datadir).unwrap().count(), 0);
}

#[tokio::test]
async fn images_spanning_units_are_scrubbed_once_sqlite() {
    images_spanning_units_are_scrubbed_once(Engine::Sqlite).await;
}

#[tokio::test]
async fn images_spanning_units_are_scrubbed_once_postgres() {
    images_spanning_units_are_scrubbed_once(Engine::Postgres).await;
}

#[tokio::test]
async fn images_spanning_units_are_scrubbed_once_mysql() {
    images_spanning_units_are_scrubbed_once(Engine::MySql).await;
}
