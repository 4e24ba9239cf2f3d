//! One test per state of the safety table (sqlite driver): writing, committing, being read,
//! row without file, file without row, size mismatch, old cache.db, missing or corrupt
//! cache.db, lock contention and non-image files.

use std::fs::{self, File};
use std::io::Write;
use std::time::Duration;

use crate::harness::{Cache, GLANCE_SCHEMA, PosixLock, new_id, u};

const NO_GRACE: &str = "[imaged_cache]\norphan_grace = 0\n";

#[test]
fn file_being_written_survives_clean_even_when_stalled() {
    let c = Cache::new(1 << 20);
    let id = new_id();
    let part = c.dir.join("incomplete").join(&id);
    let mut writer = File::create(&part).unwrap();
    writer.write_all(&[1u8; 4096]).unwrap();
    c.age(&part, Duration::from_secs(200_000));
    let stalled_closed = c.dir.join("incomplete").join(new_id());
    fs::write(&stalled_closed, [2u8; 100]).unwrap();
    c.age(&stalled_closed, Duration::from_secs(200_000));
    let fresh = c.dir.join("incomplete").join(new_id());
    fs::write(&fresh, [3u8; 100]).unwrap();

    let (code, r, _) = c.json(&["clean"]);
    assert_eq!(code, 0, "{r}");
    assert!(part.exists(), "an open download must not be removed");
    assert!(!stalled_closed.exists());
    assert!(fresh.exists());
    assert_eq!(u(&r, "stalled_removed"), 1);
    assert_eq!(u(&r, "stalled_in_use"), 1);

    // Prune never touches incomplete/ either, even far over the limit.
    let c2 = Cache::new(10);
    let p2 = c2.dir.join("incomplete").join(new_id());
    fs::write(&p2, [0u8; 5000]).unwrap();
    let (code, r, _) = c2.json(&["prune"]);
    assert_eq!(code, 1, "still over the limit must be reported: {r}");
    assert!(p2.exists());
    assert_eq!(u(&r, "over_by"), 4990);

    writer.write_all(&[1u8; 10]).unwrap();
    drop(writer);
    c.age(&part, Duration::from_secs(200_000));
    let (_, r, _) = c.json(&["clean"]);
    assert_eq!(u(&r, "stalled_removed"), 1, "closed and stalled now: {r}");
    assert!(!part.exists());
}

#[test]
fn commit_in_flight_is_neither_adopted_nor_removed() {
    let c = Cache::new(1000);
    let tracked = c.glance_cache_many(1, 600);
    let id = new_id();
    c.glance_write_file(&id, 600); // renamed into place, INSERT not done yet
    let (code, r, _) = c.json(&["prune"]);
    assert!(
        c.exists(&id),
        "a file younger than the grace period is not touched"
    );
    assert!(!c.has_row(&id));
    assert_eq!(u(&r, "adopted"), 0);
    assert_eq!(u(&r, "grace_bytes"), 600);
    assert!(
        !c.exists(&tracked[0]),
        "the tracked image is evicted instead"
    );
    assert_eq!(code, 0, "{r}");
    let (_, r, _) = c.json(&["clean"]);
    assert_eq!(u(&r, "orphans_removed"), 0);
    assert!(c.exists(&id));
    // Glance's INSERT then succeeds.
    let t = crate::harness::now();
    c.glance_conn()
        .execute(
            "INSERT INTO cached_images (image_id, last_accessed, last_modified, hits, size) VALUES (?1, ?2, ?2, 0, 600)",
            rusqlite::params![id, t],
        )
        .unwrap();
}

#[test]
fn file_being_read_is_skipped_by_prune() {
    let c = Cache::new(2500);
    let ids = c.glance_cache_many(4, 1000);
    let reader = File::open(c.path(&ids[0])).unwrap();
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!(code, 0, "{r}");
    assert!(c.exists(&ids[0]), "open file kept");
    assert!(!c.exists(&ids[1]));
    assert!(!c.exists(&ids[2]));
    assert!(c.exists(&ids[3]));
    assert_eq!(u(&r, "busy_bytes"), 1000);
    assert_eq!(u(&r, "size_after"), 2000);
    drop(reader);
}

#[test]
fn row_without_file_is_removed_and_recache_insert_then_works() {
    let c = Cache::new(1 << 20);
    let ids = c.glance_cache_many(2, 100);
    fs::remove_file(c.path(&ids[0])).unwrap();
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!(code, 0);
    assert_eq!(u(&r, "dangling_rows"), 1);
    assert_eq!(c.row_ids(), vec![ids[1].clone()]);
    // Glance's plain INSERT of a re-cache no longer hits the stale row.
    c.glance_cache(&ids[0], 100);
    assert!(c.has_row(&ids[0]));
    // Clean reconciles too.
    fs::remove_file(c.path(&ids[1])).unwrap();
    let (_, r, _) = c.json(&["clean"]);
    assert_eq!(u(&r, "dangling_rows"), 1);
    assert!(!c.has_row(&ids[1]));
}

#[test]
fn file_without_row_is_adopted_by_prune_and_evicted_in_lru_order() {
    let c = Cache::new(2500).with_extra(NO_GRACE);
    let ids = c.glance_cache_many(2, 1000);
    let orphan = new_id();
    c.glance_write_file(&orphan, 1000);
    c.set_time(&c.path(&orphan), 500_000); // older than every row's last_accessed
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "adopted"), 1);
    assert!(
        !c.exists(&orphan),
        "the adopted orphan is the oldest and goes first"
    );
    assert!(c.exists(&ids[0]) && c.exists(&ids[1]));
    assert_eq!(u(&r, "size_after"), 2000);
}

#[test]
fn file_without_row_past_grace_is_removed_by_clean() {
    let c = Cache::new(1 << 20).with_extra(NO_GRACE);
    let kept = c.glance_cache_many(1, 10);
    let orphan = new_id();
    c.glance_write_file(&orphan, 10);
    let (code, r, _) = c.json(&["clean"]);
    assert_eq!(code, 0);
    assert_eq!(u(&r, "orphans_removed"), 1);
    assert!(!c.exists(&orphan));
    assert!(c.exists(&kept[0]));
}

#[test]
fn size_mismatch_uses_file_size_and_fixes_the_row() {
    let c = Cache::new(1500);
    let ids = c.glance_cache_many(2, 1000);
    c.glance_conn()
        .execute("UPDATE cached_images SET size = 1", [])
        .unwrap();
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "size_before"), 2000, "sizes come from the files");
    assert_eq!(u(&r, "evicted_bytes"), 1000);
    let size: i64 = c
        .glance_conn()
        .query_row(
            "SELECT size FROM cached_images WHERE image_id = ?1",
            [&ids[1]],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(size, 1000);
}

#[test]
fn old_cache_db_with_zero_integer_and_text_times_is_used_unchanged() {
    let c = Cache::new(2500);
    let ids: Vec<String> = (0..4).map(|_| new_id()).collect();
    for id in &ids {
        c.glance_write_file(id, 1000);
    }
    // Pre-2015 rows (last_accessed 0), integer and text times, NULL checksum.
    let conn = c.glance_conn();
    conn.execute(
        "INSERT INTO cached_images VALUES (?1, 0, 0, 1000, 0, NULL)",
        [&ids[0]],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO cached_images VALUES (?1, 5, 5, 1000, 3, NULL)",
        [&ids[1]],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO cached_images VALUES (?1, '7.5', '7.5', 1000, 1, NULL)",
        [&ids[2]],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO cached_images VALUES (?1, 2000000000.5, 1.0, 1000, 9, NULL)",
        [&ids[3]],
    )
    .unwrap();
    let schema_before: String = conn
        .query_row("SELECT group_concat(sql) FROM sqlite_master", [], |r| {
            r.get(0)
        })
        .unwrap();
    drop(conn);
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "evicted"), 2);
    assert!(!c.exists(&ids[0]) && !c.exists(&ids[1]));
    assert!(c.exists(&ids[2]) && c.exists(&ids[3]));
    let conn = c.glance_conn();
    let schema_after: String = conn
        .query_row("SELECT group_concat(sql) FROM sqlite_master", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(schema_before, schema_after);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    assert!(!c.dir.join("cache.db-wal").exists());
}

#[test]
fn adopted_rows_are_written_with_real_timestamps() {
    let c = Cache::new(1 << 30).with_extra(&format!("{NO_GRACE}low_water_mark = 1B\n"));
    let orphan = new_id();
    c.glance_write_file(&orphan, 10);
    // A tiny limit is not needed: adoption happens on every prune pass.
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!(code, 0, "{r}");
    let (la, lm, hits): (String, String, i64) = c
        .glance_conn()
        .query_row(
            "SELECT typeof(last_accessed), typeof(last_modified), hits FROM cached_images WHERE image_id = ?1",
            [&orphan],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((la.as_str(), lm.as_str(), hits), ("real", "real", 0));
}

#[test]
fn missing_cache_db_is_created_with_glance_schema() {
    let c = Cache::bare(1 << 20);
    let id = new_id();
    c.glance_write_file(&id, 10);
    let (code, s, _) = c.json(&["stats"]);
    assert_eq!(code, 0, "{s}");
    assert_eq!(u(&s, "untracked_images"), 1);
    let schema = |conn: &rusqlite::Connection| -> String {
        conn.query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'cached_images'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let reference = rusqlite::Connection::open_in_memory().unwrap();
    reference.execute_batch(GLANCE_SCHEMA).unwrap();
    assert_eq!(schema(&c.glance_conn()), schema(&reference));
}

#[test]
fn corrupt_cache_db_falls_back_to_filesystem_lru_and_fails_loudly() {
    let c = Cache::bare(1500);
    let old = new_id();
    let new = new_id();
    c.glance_write_file(&old, 1000);
    c.glance_write_file(&new, 1000);
    c.age(&c.path(&old), Duration::from_secs(1000));
    let garbage = vec![0x5au8; 8192];
    fs::write(c.db(), &garbage).unwrap();
    let (code, r, stderr) = c.json(&["prune"]);
    assert_eq!(code, 1, "a corrupt cache.db must not exit 0: {r}");
    assert!(
        r["index_unavailable"].as_str().unwrap().contains("corrupt"),
        "{r}"
    );
    assert!(stderr.contains("unavailable"), "{stderr}");
    assert!(!c.exists(&old) && c.exists(&new));
    assert_eq!(
        fs::read(c.db()).unwrap(),
        garbage,
        "cache.db is left as it was"
    );
    // Clean must not treat every file as untracked.
    let c2 = c.with_extra(NO_GRACE);
    let (code, r, _) = c2.json(&["clean"]);
    assert_eq!(code, 1);
    assert_eq!(u(&r, "orphans_removed"), 0);
    assert!(c2.exists(&new));
}

#[test]
fn glance_holding_the_prune_or_clean_lock_refuses_the_pass() {
    let c = Cache::new(10);
    let ids = c.glance_cache_many(2, 100);
    let held = PosixLock::take(&c.dir.join("glance-cache-prune"));
    let out = c.run(&["prune"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(c.exists(&ids[0]), "nothing evicted while Glance prunes");
    let out = c.run(&["evict", &ids[0]]);
    assert_eq!(out.status.code(), Some(4));
    drop(held);
    let _clean = PosixLock::take(&c.dir.join("glance-cache-clean"));
    assert_eq!(c.run(&["clean"]).status.code(), Some(4));
    let out = c.run(&["prune"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!c.exists(&ids[0]) && !c.exists(&ids[1]));
}

#[test]
fn lock_contention_on_cache_db_ends_the_pass_with_an_error() {
    let c = Cache::new(10);
    let ids = c.glance_cache_many(2, 100);
    let blocker = c.glance_conn();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let start = std::time::Instant::now();
    let out = c.run(&["prune"]);
    assert!(start.elapsed() < Duration::from_secs(30), "bounded wait");
    assert_ne!(out.status.code(), Some(0));
    blocker.execute_batch("ROLLBACK").unwrap();
    let out = c.run(&["prune"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!c.exists(&ids[1]));
}

#[test]
fn non_image_files_are_neither_counted_nor_touched() {
    let c = Cache::new(1000);
    let ids = c.glance_cache_many(1, 900);
    for name in [
        "glance-cache",
        "glance-cache-prune",
        "image_cache_db_init",
        "checkme",
        "notes.txt",
    ] {
        fs::write(c.dir.join(name), [0u8; 500]).unwrap();
    }
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "evicted"), 0, "900 image bytes are within 1000");
    let (code, r, _) = c.json(&["clean"]);
    assert_eq!(code, 0, "{r}");
    let out = c.run(&["evict", "--all"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!c.exists(&ids[0]));
    for name in [
        "glance-cache",
        "glance-cache-prune",
        "image_cache_db_init",
        "checkme",
        "notes.txt",
        "cache.db",
    ] {
        assert!(c.dir.join(name).exists(), "{name} must survive");
    }
}
