//! The centralized_db driver on SQLite, PostgreSQL and MariaDB: the same prune and clean
//! behaviour as the sqlite driver, Glance's endless loop on untracked files (14.2-1), another
//! node's rows left alone, and listings in UTC whatever the host time zone (14.2-13).

use std::time::Duration;

use chrono::DateTime;
use imaged_catalog::Engine;
use imaged_catalog::testing::{TestDb, ts_literal};

use crate::harness::{Cache, new_id, u};

const NODE: &str = "http://worker1:9292";

fn cache_for(db: &TestDb, max: u64, extra: &str) -> Cache {
    Cache::bare(max).with_extra(&format!(
        "image_cache_driver = centralized_db\nworker_self_reference_url = {NODE}\n{extra}\n[database]\nconnection = {}\n",
        db.options.connection
    ))
}

/// The write path of the centralized driver: file renamed into place, then the catalog row.
async fn glance_cache(db: &TestDb, c: &Cache, node: &str, id: &str, size: usize, accessed: i64) {
    c.glance_write_file(id, size);
    db.catalog
        .insert_cached_image(node, id, size as i64)
        .await
        .unwrap();
    let t = DateTime::from_timestamp(accessed, 0).unwrap().naive_utc();
    db.exec(&format!(
        "UPDATE cached_images SET last_accessed = {} WHERE image_id = '{id}'",
        ts_literal(db.engine(), &t)
    ))
    .await
    .unwrap();
}

async fn rows(db: &TestDb, node: &str) -> Vec<String> {
    let mut v: Vec<String> = db
        .catalog
        .cached_images(node)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.image_id)
        .collect();
    v.sort();
    v
}

async fn prune_in_lru_order(engine: Engine) {
    let Some(db) = TestDb::new(engine).await else {
        return;
    };
    let c = cache_for(&db, 2500, "");
    let ids: Vec<String> = (0..4).map(|_| new_id()).collect();
    for (i, id) in ids.iter().enumerate() {
        glance_cache(&db, &c, NODE, id, 1000, 1_600_000_000 + i as i64 * 60).await;
    }
    // Another node's row for an image this node does not hold is not ours to touch.
    glance_cache(&db, &c, "http://worker2:9292", &new_id(), 1, 1).await;
    std::fs::remove_file(c.path(&rows(&db, "http://worker2:9292").await[0])).unwrap();
    let (code, r, _) = tokio::task::block_in_place(|| c.json(&["prune"]));
    assert_eq!(code, 0, "{engine}: {r}");
    assert_eq!(u(&r, "evicted"), 2, "{engine}");
    assert!(!c.exists(&ids[0]) && !c.exists(&ids[1]) && c.exists(&ids[2]) && c.exists(&ids[3]));
    let mut expect = vec![ids[2].clone(), ids[3].clone()];
    expect.sort();
    assert_eq!(rows(&db, NODE).await, expect, "{engine}");
    assert_eq!(rows(&db, "http://worker2:9292").await.len(), 1, "{engine}");

    // Listing reports the stored UTC instant whatever the host time zone.
    let out = tokio::task::block_in_place(|| {
        c.run_env(&["list", "--format", "json"], &[("TZ", "Asia/Tokyo")])
    });
    let l: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = l["cached"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["image_id"] == ids[3])
        .unwrap()
        .clone();
    assert_eq!(
        e["last_accessed"].as_f64(),
        Some(1_600_000_180.0),
        "{engine}: {e}"
    );
}

async fn untracked_files_do_not_loop(engine: Engine) {
    let Some(db) = TestDb::new(engine).await else {
        return;
    };
    let c = cache_for(&db, 1500, "[imaged_cache]\norphan_grace = 0\n");
    for _ in 0..3 {
        c.glance_write_file(&new_id(), 1000);
    }
    let start = std::time::Instant::now();
    let (code, r, _) = tokio::task::block_in_place(|| c.json(&["prune"]));
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_eq!(code, 0, "{engine}: {r}");
    assert_eq!(u(&r, "adopted"), 3);
    assert_eq!(u(&r, "evicted"), 2);
    assert_eq!(rows(&db, NODE).await.len(), 1, "{engine}");
    // Clean reconciles a row whose file vanished.
    let left = rows(&db, NODE).await;
    std::fs::remove_file(c.path(&left[0])).unwrap();
    let (code, r, _) = tokio::task::block_in_place(|| c.json(&["clean"]));
    assert_eq!(code, 0, "{engine}: {r}");
    assert_eq!(u(&r, "dangling_rows"), 1);
    assert!(rows(&db, NODE).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn central_sqlite_prune() {
    prune_in_lru_order(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn central_postgres_prune() {
    prune_in_lru_order(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn central_mysql_prune() {
    prune_in_lru_order(Engine::MySql).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn central_sqlite_untracked_files_do_not_loop() {
    untracked_files_do_not_loop(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn central_postgres_untracked_files_do_not_loop() {
    untracked_files_do_not_loop(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn central_mysql_untracked_files_do_not_loop() {
    untracked_files_do_not_loop(Engine::MySql).await;
}
