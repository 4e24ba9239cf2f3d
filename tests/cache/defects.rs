//! One test per Glance cache defect that imaged-cache fixes (numbers from the reference's
//! defect list; the centralized_db loop and time skew are in `central`, write-lock patience
//! in `concurrency`).

use std::fs::{self, File};
use std::io::Write;

use imaged_catalog::Engine;
use imaged_catalog::images::NewImage;
use imaged_catalog::testing::TestDb;

use crate::harness::{Cache, new_id, u};

/// 14.2-2: files without rows used to count but never be evicted, so the pruner emptied the
/// tracked cache and still ended above the limit.
#[test]
fn orphans_do_not_make_prune_evict_every_tracked_image() {
    let c = Cache::new(4000).with_extra("[imaged_cache]\norphan_grace = 0\n");
    let tracked = c.glance_cache_many(4, 1000);
    let orphans: Vec<String> = (0..3).map(|_| new_id()).collect();
    for o in &orphans {
        c.glance_write_file(o, 1000);
        c.set_time(&c.path(o), 500_000); // older than every row's last_accessed
    }
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "size_after"), 4000);
    assert!(orphans.iter().all(|o| !c.exists(o)), "old orphans go first");
    assert!(
        tracked.iter().all(|t| c.exists(t)),
        "no tracked image had to go"
    );
}

/// 14.2-6: incomplete/ and invalid/ bytes were invisible while the disk filled.
#[test]
fn incomplete_and_invalid_bytes_count_toward_the_limit() {
    let c = Cache::new(3000);
    let ids = c.glance_cache_many(3, 1000);
    fs::write(c.dir.join("invalid").join(new_id()), vec![0u8; 1000]).unwrap();
    fs::write(c.dir.join("incomplete").join(new_id()), vec![0u8; 500]).unwrap();
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "size_before"), 4500);
    assert_eq!(u(&r, "evicted"), 2);
    assert!(!c.exists(&ids[0]) && !c.exists(&ids[1]) && c.exists(&ids[2]));
}

/// 14.2-6: `stall_time = 0` made Glance's cleaner kill live downloads.
#[test]
fn zero_stall_time_does_not_kill_a_live_download() {
    let c = Cache::new(1 << 20);
    let mut conf = fs::read_to_string(&c.conf).unwrap();
    conf = conf.replace(
        "image_cache_stall_time = 86400",
        "image_cache_stall_time = 0",
    );
    fs::write(&c.conf, conf).unwrap();
    let live = c.dir.join("incomplete").join(new_id());
    let mut w = File::create(&live).unwrap();
    w.write_all(b"partial").unwrap();
    let dead = c.dir.join("incomplete").join(new_id());
    fs::write(&dead, b"crashed").unwrap();
    let (code, r, _) = c.json(&["clean"]);
    assert_eq!(code, 0, "{r}");
    assert!(live.exists() && !dead.exists());
    drop(w);
}

/// 14.1 (bug 1229823 and the lock-less commands): concurrent prunes double-deleted and
/// over-evicted. Two prunes started together evict exactly down to the limit once.
#[test]
fn concurrent_prunes_do_not_over_evict() {
    let c = Cache::new(5000);
    let ids = c.glance_cache_many(10, 1000);
    let a = std::process::Command::new(crate::harness::BIN)
        .arg("--config-file")
        .arg(&c.conf)
        .arg("prune")
        .spawn()
        .unwrap();
    let b = std::process::Command::new(crate::harness::BIN)
        .arg("--config-file")
        .arg(&c.conf)
        .arg("prune")
        .spawn()
        .unwrap();
    for mut p in [a, b] {
        let code = p.wait().unwrap().code();
        assert!(matches!(code, Some(0) | Some(4)), "{code:?}");
    }
    let left: Vec<_> = ids.iter().filter(|i| c.exists(i)).collect();
    assert_eq!(left.len(), 5, "exactly down to the limit, not below");
    assert_eq!(c.row_ids().len(), 5);
}

/// 14.2-14: the commands logged at DEBUG only and exited 0 whatever happened.
#[test]
fn outcomes_are_logged_and_reflected_in_the_exit_code() {
    let c = Cache::new(500);
    let ids = c.glance_cache_many(1, 1000);
    let reader = File::open(c.path(&ids[0])).unwrap();
    let out = c.run(&["prune"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "still over the limit: {stderr}");
    assert!(
        stderr.contains("STILL 500 bytes over the limit"),
        "{stderr}"
    );
    drop(reader);
    let out = c.run(&["prune"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prune: evicted 1 images / 1000 bytes"));
}

/// 14.2-10: queue markers of deleted or non-active images stayed forever.
#[tokio::test(flavor = "multi_thread")]
async fn clean_drops_queue_markers_of_inactive_images() {
    let db = TestDb::new(Engine::Sqlite)
        .await
        .expect("sqlite test catalog");
    let active = db
        .catalog
        .create_image(&NewImage {
            status: "active".into(),
            ..NewImage::default()
        })
        .await
        .unwrap();
    let queued = db.catalog.create_image(&NewImage::default()).await.unwrap();
    let c = Cache::new(1 << 20).with_extra(&format!(
        "[database]\nconnection = {}\n",
        db.options.connection
    ));
    let gone = new_id();
    for id in [&active, &queued, &gone] {
        fs::write(c.dir.join("queue").join(id), b"").unwrap();
    }
    let (code, r, _) = c.json(&["clean"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "queue_removed"), 2);
    assert!(c.dir.join("queue").join(&active).exists());
    assert!(!c.dir.join("queue").join(&queued).exists());
    assert!(!c.dir.join("queue").join(&gone).exists());
    // Queueing checks the catalog too.
    assert_eq!(c.run(&["queue", &queued]).status.code(), Some(2));
}
