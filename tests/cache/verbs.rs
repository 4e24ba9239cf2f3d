//! The verbs: prune order and low-water mark, clean, list, stats, queue, evict, config.

use std::fs;
use std::time::Duration;

use crate::harness::{Cache, new_id, u};

#[test]
fn prune_evicts_least_recently_accessed_down_to_the_limit() {
    let c = Cache::new(3000);
    let ids = c.glance_cache_many(5, 1024);
    // The second-oldest was read recently: it becomes the newest.
    c.set_last_accessed(&ids[1], 2_000_000.0);
    let (code, r, stderr) = c.json(&["prune"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "evicted"), 3);
    assert_eq!(u(&r, "evicted_bytes"), 3072);
    assert_eq!(u(&r, "size_before"), 5120);
    assert_eq!(u(&r, "size_after"), 2048);
    assert_eq!(u(&r, "over_by"), 0);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(c.exists(id), i == 1 || i == 4, "image {i}");
        assert_eq!(c.has_row(id), i == 1 || i == 4, "row {i}");
    }
    assert!(
        stderr.contains("prune: evicted 3 images / 3072 bytes"),
        "{stderr}"
    );
    // A second pass has nothing to do.
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!((code, u(&r, "evicted")), (0, 0));
}

#[test]
fn prune_goes_down_to_the_low_water_mark() {
    let c = Cache::new(5000).with_extra("[imaged_cache]\nlow_water_mark = 2000B\n");
    let ids = c.glance_cache_many(6, 1000);
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "size_after"), 2000);
    assert!(c.exists(&ids[4]) && c.exists(&ids[5]) && !c.exists(&ids[3]));
}

#[test]
fn max_size_zero_empties_the_cache() {
    let c = Cache::new(0);
    let ids = c.glance_cache_many(3, 10);
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!(code, 0, "{r}");
    assert!(ids.iter().all(|id| !c.exists(id)));
    assert!(c.row_ids().is_empty());
}

#[test]
fn clean_removes_invalid_stalled_and_stale_queue_markers_only() {
    let c = Cache::new(1 << 20);
    let cached = c.glance_cache_many(1, 10);
    let inv = c.dir.join("invalid").join(new_id());
    fs::write(&inv, [0u8; 7]).unwrap();
    let stalled = c.dir.join("incomplete").join(new_id());
    fs::write(&stalled, [0u8; 5]).unwrap();
    c.age(&stalled, Duration::from_secs(86401));
    let fresh = c.dir.join("incomplete").join(new_id());
    fs::write(&fresh, [0u8; 5]).unwrap();
    let queued_cached = c.dir.join("queue").join(&cached[0]);
    fs::write(&queued_cached, b"").unwrap();
    let queued = c.dir.join("queue").join(new_id());
    fs::write(&queued, b"").unwrap();
    let (code, r, stderr) = c.json(&["clean"]);
    assert_eq!(code, 0, "{r}");
    assert!(!inv.exists() && !stalled.exists() && !queued_cached.exists());
    assert!(fresh.exists() && queued.exists() && c.exists(&cached[0]));
    assert_eq!(u(&r, "invalid_removed"), 1);
    assert_eq!(u(&r, "stalled_removed"), 1);
    assert_eq!(u(&r, "bytes_removed"), 12);
    assert_eq!(u(&r, "queue_removed"), 1);
    assert!(
        stderr.contains("clean: removed 1 invalid + 1 stalled"),
        "{stderr}"
    );
    assert!(c.db().exists());
}

#[test]
fn list_and_stats_show_every_part_of_the_cache() {
    let c = Cache::new(100);
    let ids = c.glance_cache_many(2, 30);
    let untracked = new_id();
    c.glance_write_file(&untracked, 5);
    fs::write(c.dir.join("invalid").join(new_id()), [0u8; 40]).unwrap();
    fs::write(c.dir.join("incomplete").join(new_id()), [0u8; 50]).unwrap();
    let q = new_id();
    fs::write(c.dir.join("queue").join(&q), b"").unwrap();
    let (code, l, _) = c.json(&["list"]);
    assert_eq!(code, 0);
    let cached = l["cached"].as_array().unwrap();
    assert_eq!(cached.len(), 3);
    let first = cached.iter().find(|e| e["image_id"] == ids[0]).unwrap();
    assert_eq!(first["size"], 30);
    assert_eq!(first["last_accessed"].as_f64(), Some(1_000_000.0));
    assert_eq!(first["tracked"], true);
    assert_eq!(
        cached.iter().find(|e| e["image_id"] == untracked).unwrap()["tracked"],
        false
    );
    assert_eq!(l["queued"][0]["image_id"], q);
    assert_eq!(l["incomplete"][0]["size"], 50);
    assert_eq!(l["invalid"][0]["size"], 40);
    let s = c.stats();
    assert_eq!(u(&s, "cached_bytes"), 65);
    assert_eq!(
        u(&s, "total_bytes"),
        155,
        "incomplete and invalid bytes count"
    );
    assert_eq!(u(&s, "over_by"), 55);
    assert_eq!(u(&s, "untracked_images"), 1);
    // The table form prints the same entries.
    let out = c.run(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&ids[1]) && text.contains("INCOMPLETE (1)"),
        "{text}"
    );
}

#[test]
fn queue_and_evict() {
    let c = Cache::new(1 << 20);
    let ids = c.glance_cache_many(2, 10);
    let id = new_id();
    let out = c.run(&["queue", &id]);
    assert_eq!(out.status.code(), Some(0));
    assert!(c.dir.join("queue").join(&id).exists());
    let out = c.run(&["queue", &id]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("AlreadyQueued"));
    let out = c.run(&["queue", &ids[0]]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("AlreadyCached"));
    assert!(!c.dir.join("queue").join(&ids[0]).exists());
    assert_eq!(c.run(&["queue", "not-a-uuid"]).status.code(), Some(2));

    fs::write(c.dir.join("queue").join(&ids[0]), b"").unwrap();
    let out = c.run(&["evict", &ids[0]]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!c.exists(&ids[0]) && !c.has_row(&ids[0]));
    assert!(!c.dir.join("queue").join(&ids[0]).exists());
    assert!(c.exists(&ids[1]));
    let out = c.run(&["evict", "--all"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!c.exists(&ids[1]) && c.row_ids().is_empty());
    assert!(
        c.dir.join("queue").join(&id).exists(),
        "evict --all keeps the queue"
    );
}

#[test]
fn config_check_and_bad_configuration_exit_codes() {
    let c = Cache::new(1);
    let out = c.run(&["config", "show"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("image_cache_dir"));
    let x = Cache::new(1).with_extra("image_cache_driver = xattr\n");
    let out = x.run(&["prune"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not supported"));
    let central = Cache::new(1).with_extra("image_cache_driver = centralized_db\n");
    let out = central.run(&["prune"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("worker_self_reference_url"));
}
