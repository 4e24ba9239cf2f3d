//! `/metrics` and `/healthz` of the running executor (`[imaged]
//! metrics_bind`): queue depth and running tasks while an import runs, the
//! task counters and bytes written once the queue is drained, and health.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[path = "../common/scrape.rs"]
mod scrape;

use scrape::{assert_values, health, scrape_until, value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_serves_metrics_and_health() {
    let server = Server::start().await;
    let slow = payload(1 << 20, 3);
    let fast = payload(256 * 1024 + 5, 4);
    server.put("slow.img", slow.clone());
    server.put("fast.img", fast.clone());
    let addr = scrape::free_addr();
    let Some(env) = Env::new(
        imaged_catalog::Engine::Sqlite,
        server.port,
        &format!("[imaged]\nmetrics_bind = {addr}\n"),
    )
    .await
    else {
        return;
    };
    // Serial mode runs one task at a time, oldest first: the slow import
    // (16 chunks, 150 ms apart) keeps the other two queued meanwhile.
    let raw = json!({"disk_format": "raw"});
    let slow_id = env.enqueue(&server.url("slow/150/slow.img"), raw.clone());
    let fast_id = env.enqueue(&server.url("data/fast.img"), raw.clone());
    let missing_id = env.enqueue(&server.url("status/404"), raw);

    let mut child = env.spawn(&["run"]);
    // Drained as it comes, so that a chatty daemon never blocks on a full pipe.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    std::thread::spawn({
        let log = log.clone();
        let mut stderr = child.stderr.take().unwrap();
        move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stderr, &mut buf) {
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    let read_log = || log.lock().unwrap().clone();

    let during = scrape_until(&addr, Duration::from_secs(15), read_log, |t| {
        value(t, "imaged_tasks_running") == Some(1.0)
            && value(t, "imaged_tasks_queue_depth") == Some(2.0)
    })
    .await;
    assert!(
        value(&during, "imaged_tasks_oldest_pending_age_seconds").is_some_and(|s| s >= 0.0),
        "{during}"
    );
    assert_eq!(
        value(&during, "imaged_tasks_claimed_total{type=\"import\"}"),
        Some(1.0),
        "{during}"
    );
    let (status, h) = health(&addr).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["ready"], true);
    assert_eq!(h["database"]["reachable"], true);
    // The start-up sweep is the first pass.
    assert_eq!(h["last_pass"]["pass"], "sweep");
    assert_eq!(h["last_pass"]["outcome"], "success");

    let text = scrape_until(&addr, Duration::from_secs(30), read_log, |t| {
        value(
            t,
            "imaged_tasks_finished_total{type=\"import\",outcome=\"succeeded\"}",
        ) == Some(2.0)
            && value(
                t,
                "imaged_tasks_finished_total{type=\"import\",outcome=\"failed\"}",
            ) == Some(1.0)
    })
    .await;
    let build = format!(
        "imaged_build_info{{daemon=\"imaged-tasks\",version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_values(
        &text,
        &[
            ("imaged_tasks_claimed_total{type=\"import\"}", 3.0),
            (
                "imaged_tasks_written_bytes_total",
                (slow.len() + fast.len()) as f64,
            ),
            (
                "imaged_task_duration_seconds_count{type=\"import\",outcome=\"succeeded\"}",
                2.0,
            ),
            (
                "imaged_task_duration_seconds_count{type=\"import\",outcome=\"failed\"}",
                1.0,
            ),
            ("imaged_tasks_running", 0.0),
            ("imaged_tasks_queue_depth", 0.0),
            ("imaged_tasks_oldest_pending_age_seconds", 0.0),
            (&build, 1.0),
        ],
    );
    assert!(
        value(
            &text,
            "imaged_passes_total{pass=\"sweep\",outcome=\"success\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    for (id, want) in [
        (&slow_id, "success"),
        (&fast_id, "success"),
        (&missing_id, "failure"),
    ] {
        assert_eq!(env.task(id).await.status, want, "{id}");
    }

    scrape::stop_and_assert_closed(&mut child, &addr, read_log).await;
}
