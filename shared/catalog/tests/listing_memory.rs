//! The scrub listing streams in keyset pages: walking a very large queue
//! keeps resident memory within a fixed bound. SQLite gets 1,000,000
//! location rows; PostgreSQL and MariaDB 100,000 each (to keep the suite's
//! run time reasonable). All three run in this one test, one after the
//! other, so that the RSS readings of one engine are not disturbed by
//! another running concurrently.

use std::time::{Duration, Instant};

use futures::StreamExt;
use imaged_catalog::Engine;
use imaged_catalog::scrub::ScrubQuery;
use imaged_catalog::testing::{TestDb, bulk_pending_delete};

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Bound on resident growth while streaming. Materialising a million rows
/// would take several hundred MiB.
const BOUND_KIB: u64 = 48 * 1024;

async fn walk(engine: Engine, images: u64, per_image: u32) {
    let Some(db) = TestDb::new(engine).await else {
        return;
    };
    let t0 = Instant::now();
    bulk_pending_delete(&db.catalog, images, per_image)
        .await
        .unwrap();
    let inserted = t0.elapsed();
    let expected = images * u64::from(per_image);
    let base = rss_kib();
    let mut peak = base;
    let t1 = Instant::now();
    let mut stream = db.catalog.scrub_stream(ScrubQuery {
        scrub_time: Duration::from_secs(60),
        include_live_image_locations: false,
        page_size: 2000,
    });
    let mut n = 0u64;
    let mut last = 0i64;
    while let Some(item) = stream.next().await {
        let item = item.unwrap();
        assert!(item.location_id > last, "strictly increasing keyset");
        last = item.location_id;
        assert!(
            item.url
                .as_ref()
                .unwrap()
                .starts_with("file:///var/lib/glance/images/bulk-")
        );
        n += 1;
        if n.is_multiple_of(20_000) {
            peak = peak.max(rss_kib());
        }
    }
    peak = peak.max(rss_kib());
    let listed = t1.elapsed();
    eprintln!(
        "{engine}: {expected} locations inserted in {inserted:?}, listed in {listed:?}; RSS {base} KiB -> peak {peak} KiB (+{} KiB)",
        peak - base
    );
    assert_eq!(n, expected);
    assert!(
        peak - base < BOUND_KIB,
        "{engine}: RSS grew by {} KiB",
        peak - base
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_memory_is_bounded() {
    walk(Engine::Sqlite, 250_000, 4).await;
    walk(Engine::Postgres, 25_000, 4).await;
    walk(Engine::MySql, 25_000, 4).await;
}
