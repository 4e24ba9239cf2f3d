//! `restore`: complete undo of a pending delete (D3), its refusals, and
//! races with a scrubber.

use imaged_catalog::Engine;
use imaged_catalog::testing::PendingDeleteImage;

use crate::common::*;

async fn restore_is_complete(engine: Engine) {
    let Some(env) = Env::new(engine).await else {
        return;
    };
    let img = env.pending_image(2, hour_ago()).await;
    let out = env.run(&["restore", &img.id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.image_text(&img.id, "status").await.as_deref(),
        Some("active")
    );
    assert_eq!(
        env.count(&format!(
            "SELECT COUNT(*) FROM images WHERE id = '{}' AND deleted = FALSE AND deleted_at IS NULL",
            img.id
        ))
        .await,
        1
    );
    for table in ["image_properties", "image_tags", "image_members"] {
        assert_eq!(
            env.count(&format!(
                "SELECT COUNT(*) FROM {table} WHERE image_id = '{}' AND deleted = FALSE AND deleted_at IS NULL",
                img.id
            ))
            .await,
            1,
            "{table}"
        );
    }
    assert_eq!(
        env.count(&format!(
            "SELECT COUNT(*) FROM image_locations WHERE image_id = '{}' AND status = 'active' AND deleted = FALSE",
            img.id
        ))
        .await,
        2
    );
    // The data is intact and a scrub pass leaves the image alone.
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (url, _) in &img.locations {
        assert!(std::path::Path::new(url.trim_start_matches("file://")).exists());
    }
    // Restoring again is refused: the image is no longer pending_delete.
    let out = env.run(&["restore", &img.id]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not pending_delete"), "{}", text(&out));
}

#[tokio::test]
async fn d3_restore_is_complete_sqlite() {
    restore_is_complete(Engine::Sqlite).await;
}

#[tokio::test]
async fn d3_restore_is_complete_postgres() {
    restore_is_complete(Engine::Postgres).await;
}

#[tokio::test]
async fn d3_restore_is_complete_mysql() {
    restore_is_complete(Engine::MySql).await;
}

#[tokio::test]
async fn restore_refusals_are_clear() {
    let Some(env) = Env::new(Engine::Sqlite).await else {
        return;
    };
    let out = env.run(&["restore", "00000000-0000-0000-0000-000000000000"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no image found"), "{}", text(&out));

    // Partly scrubbed: one of two locations already deleted by a pass that
    // failed on the other.
    let mut img = PendingDeleteImage::new(hour_ago(), 2);
    let name = format!("{}-0", img.id);
    env.data_file(&name);
    img.locations = vec![
        (env.url(&name), Some("{}".into())),
        ("http://example.invalid/x".into(), Some("{}".into())),
    ];
    img.insert(&env.db.catalog).await.unwrap();
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = env.run(&["restore", &img.id]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("already been (partly) scrubbed"),
        "{}",
        text(&out)
    );
    assert_eq!(
        env.image_text(&img.id, "status").await.as_deref(),
        Some("pending_delete")
    );
}

/// A restore while an image is claimed by a scrubber is refused; the
/// scrubber finishes it. Exactly one of them wins.
#[tokio::test]
async fn restore_refused_while_a_scrubber_holds_the_image() {
    let Some(env) = Env::new(Engine::Sqlite).await else {
        return;
    };
    let img = env.pending_image(1, hour_ago()).await;
    let owner = imaged_catalog::ClaimOwner::from_string("other-host:1:abc");
    let got = env
        .db
        .catalog
        .claim(
            imaged_catalog::ClaimKind::ScrubImage,
            std::slice::from_ref(&img.id),
            &owner,
            std::time::Duration::from_secs(300),
        )
        .await
        .unwrap();
    assert_eq!(got, vec![img.id.clone()]);
    let out = env.run(&["restore", &img.id]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("scrubbing it right now"),
        "{}",
        text(&out)
    );
    assert_eq!(
        env.image_text(&img.id, "status").await.as_deref(),
        Some("pending_delete")
    );
}

/// Restores racing a running scrubber daemon on a server engine: for every
/// image exactly one side wins, and no image ends half-restored or restored
/// without its data.
async fn restore_races_daemon(engine: Engine) {
    let Some(env) = Env::new(engine).await else {
        return;
    };
    let mut imgs = Vec::new();
    for _ in 0..40 {
        imgs.push(env.pending_image(1, hour_ago()).await);
    }
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--config-file").arg(&env.config).arg("run");
    scrub_env(&mut cmd);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut restored = 0;
    for img in &imgs {
        let out = env.run(&["restore", &img.id]);
        if out.status.code() == Some(0) {
            restored += 1;
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut active = 0;
    for img in &imgs {
        let st = env.image_text(&img.id, "status").await.unwrap();
        let file = std::path::PathBuf::from(img.locations[0].0.trim_start_matches("file://"));
        match st.as_str() {
            "active" => {
                active += 1;
                assert!(file.exists(), "restored image {} lost its data", img.id);
                assert_eq!(
                    env.count(&format!(
                        "SELECT COUNT(*) FROM image_locations WHERE image_id = '{}' AND status = 'active'",
                        img.id
                    ))
                    .await,
                    1
                );
            }
            "deleted" => assert!(!file.exists(), "scrubbed image {} kept its data", img.id),
            other => panic!("image {} ended in {other}", img.id),
        }
    }
    assert_eq!(active, restored);
}

#[tokio::test]
async fn restore_races_daemon_sqlite() {
    restore_races_daemon(Engine::Sqlite).await;
}

#[tokio::test]
async fn restore_races_daemon_postgres() {
    restore_races_daemon(Engine::Postgres).await;
}

#[tokio::test]
async fn restore_races_daemon_mysql() {
    restore_races_daemon(Engine::MySql).await;
}
