//! `/metrics` and `/healthz` of `imaged-cache run` (`[imaged] metrics_bind`): the size gauges
//! follow the cache, the pruner's counters move with what it evicted, and the last pass is
//! what `/healthz` reports.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{BIN, Cache};

#[path = "../common/scrape.rs"]
mod scrape;

use scrape::{assert_values, health, scrape_until, value};

#[tokio::test]
async fn daemon_serves_cache_metrics_and_health() {
    let addr = scrape::free_addr();
    let c = Cache::new(3000).with_extra(&format!(
        "[imaged]\nmetrics_bind = {addr}\n\
         [imaged_cache]\nprune_schedule = 3600\nclean_schedule = 3600\nprefetch_schedule = 3600\n"
    ));
    // Eight 1000-byte images against a 3000-byte limit: the first prune evicts five.
    let ids = c.glance_cache_many(8, 1000);
    let log = c.dir.parent().unwrap().join("cache.log");
    let mut child = Command::new(BIN)
        .arg("--config-file")
        .arg(&c.conf)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let text = scrape_until(&addr, Duration::from_secs(20), read_log, |t| {
        value(t, "imaged_passes_total{pass=\"prune\",outcome=\"success\"}")
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_values(
        &text,
        &[
            ("imaged_cache_evicted_total", 5.0),
            ("imaged_cache_freed_bytes_total", 5000.0),
            ("imaged_cache_size_bytes", 3000.0),
            ("imaged_cache_images", 3.0),
            ("imaged_cache_limit_bytes", 3000.0),
        ],
    );
    assert!(
        value(&text, "imaged_pass_duration_seconds_count{pass=\"prune\"}")
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    let left: Vec<bool> = ids.iter().map(|i| c.exists(i)).collect();
    assert_eq!(left, [false, false, false, false, false, true, true, true]);

    let (status, h) = health(&addr).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["daemon"], "imaged-cache");
    assert_eq!(h["ready"], true);
    // Prune and prefetch both run at the start (prefetch has nothing queued); either may be last.
    assert!(
        ["prune", "prefetch"].contains(&h["last_pass"]["pass"].as_str().unwrap_or_default()),
        "{h}"
    );
    assert_eq!(h["last_pass"]["outcome"], "success");

    // Growth past the limit is pruned through the filesystem watch, not a scheduled pass,
    // and the gauges follow: the oldest 1000-byte image goes, the new 500-byte one stays.
    let new = crate::harness::new_id();
    c.glance_cache(&new, 500);
    let text = scrape_until(&addr, Duration::from_secs(20), read_log, |t| {
        value(t, "imaged_cache_evicted_total") == Some(6.0)
    })
    .await;
    assert_values(
        &text,
        &[
            ("imaged_cache_size_bytes", 2500.0),
            ("imaged_cache_images", 3.0),
            ("imaged_cache_freed_bytes_total", 6000.0),
        ],
    );
    assert!(c.exists(&new) && !c.exists(&ids[5]));

    scrape::stop_and_assert_closed(&mut child, &addr, read_log).await;
}
