//! `/metrics` and `/healthz` of the running daemon (`[imaged] metrics_bind`):
//! the counters move with the work a pass did, the queue gauges read the
//! catalog, and an address that cannot be bound refuses the start.

use std::process::{Command, Stdio};
use std::time::Duration;

use imaged_catalog::Engine;
use imaged_catalog::testing::PendingDeleteImage;

use crate::common::*;

#[path = "../common/scrape.rs"]
mod scrape;

use scrape::{assert_values, health, scrape_until, value};

/// A SQLite environment whose daemon serves metrics on `addr`.
async fn env_serving_on(addr: &str) -> Option<Env> {
    Env::with_config(
        Engine::Sqlite,
        "",
        &format!("[imaged]\nmetrics_bind = {addr}\n"),
    )
    .await
}

#[tokio::test]
async fn daemon_serves_metrics_and_health() {
    let addr = scrape::free_addr();
    let Some(env) = env_serving_on(&addr).await else {
        return;
    };
    // One image scrubs (two 1 KiB locations of a 1024-byte image), one
    // fails for good (a read-only http location).
    let good = env.pending_image(2, hour_ago()).await;
    let mut bad = PendingDeleteImage::new(hour_ago(), 1);
    bad.locations = vec![("http://example.invalid/data".into(), Some("{}".into()))];
    bad.insert(&env.db.catalog).await.unwrap();

    let log = env.dir.path().join("scrubber.log");
    let mut cmd = Command::new(BIN);
    cmd.arg("--config-file").arg(&env.config).arg("--daemon");
    scrub_env(&mut cmd);
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // The queue gauges are read from the catalog at each scrape, which can
    // overlap the pass's last commit: wait for a scrape taken after it.
    let text = scrape_until(&addr, Duration::from_secs(15), read_log, |t| {
        value(t, "imaged_scrubber_images_deleted_total") == Some(1.0)
            && value(t, "imaged_passes_total{pass=\"scrub\",outcome=\"partial\"}")
                .is_some_and(|n| n >= 1.0)
            && value(t, "imaged_scrubber_pending_images") == Some(1.0)
    })
    .await;
    let build = format!(
        "imaged_build_info{{daemon=\"imaged-scrubber\",version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    // The failing image is the whole queue: still pending_delete, due for an
    // hour, recorded as a permanent failure.
    assert_values(
        &text,
        &[
            ("imaged_scrubber_locations_scrubbed_total", 2.0),
            ("imaged_scrubber_freed_bytes_total", 2048.0),
            (
                "imaged_scrubber_locations_failed_total{class=\"permanent\"}",
                1.0,
            ),
            (
                "imaged_scrubber_locations_failed_total{class=\"transient\"}",
                0.0,
            ),
            (&build, 1.0),
            ("imaged_scrubber_pending_images", 1.0),
            ("imaged_scrubber_due_images", 1.0),
            ("imaged_scrubber_failing_images{class=\"permanent\"}", 1.0),
        ],
    );
    let v = |series: &str| value(&text, series).unwrap_or_else(|| panic!("{series}:\n{text}"));
    assert!(v("imaged_scrubber_locations_due_total") >= 3.0);
    assert!(v("imaged_pass_duration_seconds_count{pass=\"scrub\"}") >= 1.0);
    assert!(v("imaged_scrubber_oldest_due_age_seconds") >= 3000.0);
    assert_eq!(
        env.image_text(&good.id, "status").await.as_deref(),
        Some("deleted")
    );

    let (status, h) = health(&addr).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["status"], "ok");
    assert_eq!(h["daemon"], "imaged-scrubber");
    assert_eq!(h["ready"], true);
    assert_eq!(h["database"]["reachable"], true);
    assert_eq!(h["last_pass"]["pass"], "scrub");
    // Partial: the permanent failure stays in back-off on every later pass.
    assert_eq!(h["last_pass"]["outcome"], "partial");
    assert!(h["last_pass"]["finished_at"].is_string(), "{h}");

    scrape::stop_and_assert_closed(&mut child, &addr, read_log).await;
}

#[tokio::test]
async fn an_unbindable_metrics_address_refuses_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let Some(env) = env_serving_on(&addr).await else {
        return;
    };
    let out = env.run(&["run"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(4), "{t}");
    assert!(t.contains("metrics_bind") && t.contains(&addr), "{t}");
}
