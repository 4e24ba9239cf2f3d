//! The metrics registry and the `/metrics` + `/healthz` server, in process,
//! against a real SQLite catalog; and the catalog reads behind the queue
//! gauges on every engine.

use std::time::Duration;

use imaged_catalog::Engine;
use imaged_catalog::tasks::NewTask;
use imaged_catalog::testing::{PendingDeleteImage, TestDb};
use imaged_catalog::time::utcnow;
use imaged_runtime::ExitCode;
use imaged_runtime::harness::HarnessError;
use imaged_runtime::metrics::{Metrics, PassOutcome, ScrubCounts, ScrubQueue};
use imaged_runtime::server::{MetricsServer, Probes};

// Shared with the daemons' end-to-end metrics tests; this file uses only
// part of it.
#[allow(dead_code)]
#[path = "../../../tests/common/scrape.rs"]
mod scrape;

use scrape::{assert_values, value};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ctype, r.text().await.unwrap())
}

#[test]
fn registry_names_follow_prometheus_conventions() {
    let m = Metrics::new("imaged-scrubber");
    let s = m.scrubber();
    let t = m.tasks();
    let c = m.cache();
    m.record_pass(
        "scrub",
        PassOutcome::Partial,
        Duration::from_millis(250),
        None,
    );
    s.record_pass(&ScrubCounts {
        due: 5,
        scrubbed: 3,
        transient: 1,
        permanent: 1,
        images_deleted: 2,
        bytes_freed: 4096,
        ..ScrubCounts::default()
    });
    s.set_queue(&ScrubQueue {
        pending_images: 7,
        due_images: 4,
        failing_by_class: vec![("permanent".into(), 2)],
        oldest_due_age: Some(Duration::from_secs(90)),
        ..ScrubQueue::default()
    });
    t.task_started("import");
    t.task_finished("import", "succeeded", Duration::from_secs(2));
    t.bytes_written(1000);
    t.set_queue(3, None);
    c.set_size(500, 2, 1000);
    c.evicted(1, 200);
    c.cleaned("incomplete", 2, 50);
    c.prefetched("cached", 1);

    let text = m.encode();
    let build = format!(
        "imaged_build_info{{daemon=\"imaged-scrubber\",version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_values(
        &text,
        &[
            (&build, 1.0),
            (
                "imaged_passes_total{pass=\"scrub\",outcome=\"partial\"}",
                1.0,
            ),
            ("imaged_pass_duration_seconds_count{pass=\"scrub\"}", 1.0),
            ("imaged_pass_duration_seconds_sum{pass=\"scrub\"}", 0.25),
            (
                "imaged_pass_duration_seconds_bucket{pass=\"scrub\",le=\"0.5\"}",
                1.0,
            ),
            (
                "imaged_pass_duration_seconds_bucket{pass=\"scrub\",le=\"0.1\"}",
                0.0,
            ),
            ("imaged_scrubber_locations_due_total", 5.0),
            ("imaged_scrubber_locations_scrubbed_total", 3.0),
            (
                "imaged_scrubber_locations_failed_total{class=\"permanent\"}",
                1.0,
            ),
            ("imaged_scrubber_images_deleted_total", 2.0),
            ("imaged_scrubber_freed_bytes_total", 4096.0),
            ("imaged_scrubber_pending_images", 7.0),
            ("imaged_scrubber_due_images", 4.0),
            ("imaged_scrubber_failing_images{class=\"permanent\"}", 2.0),
            // A class without failures reads 0 rather than being absent or stale.
            ("imaged_scrubber_failing_images{class=\"transient\"}", 0.0),
            ("imaged_scrubber_oldest_due_age_seconds", 90.0),
            ("imaged_tasks_claimed_total{type=\"import\"}", 1.0),
            (
                "imaged_tasks_finished_total{type=\"import\",outcome=\"succeeded\"}",
                1.0,
            ),
            (
                "imaged_task_duration_seconds_count{type=\"import\",outcome=\"succeeded\"}",
                1.0,
            ),
            ("imaged_tasks_running", 0.0),
            ("imaged_tasks_written_bytes_total", 1000.0),
            ("imaged_tasks_queue_depth", 3.0),
            ("imaged_tasks_oldest_pending_age_seconds", 0.0),
            ("imaged_cache_size_bytes", 500.0),
            ("imaged_cache_limit_bytes", 1000.0),
            ("imaged_cache_images", 2.0),
            ("imaged_cache_evicted_total", 1.0),
            ("imaged_cache_cleaned_total{kind=\"incomplete\"}", 2.0),
            ("imaged_cache_prefetched_total{outcome=\"cached\"}", 1.0),
            ("imaged_cache_freed_bytes_total", 250.0),
        ],
    );
    // Every family is described.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(name.starts_with("imaged_"), "{line}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }
}

#[tokio::test]
async fn healthz_reflects_readiness_database_and_last_pass() {
    let db = TestDb::new(Engine::Sqlite).await.unwrap();
    let m = Metrics::new("imaged-tasks");
    let server = MetricsServer::start(
        "127.0.0.1:0",
        m.clone(),
        Probes::catalog(db.catalog.clone()),
    )
    .await
    .unwrap();
    let addr = server.local_addr();

    // Not ready yet (start-up): 503, but the database is already probed.
    let (status, ctype, body) = get(addr, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(ctype.starts_with("application/json"), "{ctype}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["ready"], false);
    assert_eq!(j["status"], "unhealthy");
    assert_eq!(j["database"]["reachable"], true);
    assert_eq!(j["last_pass"], serde_json::Value::Null);
    assert_eq!(j["daemon"], "imaged-tasks");

    m.set_ready(true);
    let (status, _, body) = get(addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");

    m.record_pass(
        "sweep",
        PassOutcome::Success,
        Duration::from_millis(3),
        None,
    );
    let (status, _, body) = get(addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["status"], "ok");
    assert_eq!(j["last_pass"]["pass"], "sweep");
    assert_eq!(j["last_pass"]["outcome"], "success");
    let at = j["last_pass"]["finished_at"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(at).unwrap();

    // A pass that could not run makes the daemon unhealthy until one runs.
    m.record_pass(
        "sweep",
        PassOutcome::Error,
        Duration::from_millis(3),
        Some("catalog: gone".into()),
    );
    let (status, _, body) = get(addr, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["last_pass"]["error"], "catalog: gone");
    m.record_pass(
        "sweep",
        PassOutcome::Partial,
        Duration::from_millis(3),
        None,
    );
    assert_eq!(get(addr, "/healthz").await.0, 200);

    // An unreachable catalog.
    db.catalog.close().await;
    let (status, _, body) = get(addr, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["database"]["reachable"], false);
    assert!(
        j["database"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );

    assert_eq!(get(addr, "/nope").await.0, 404);
    server.stop().await;
    assert!(
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_err(),
        "the server stops listening"
    );
}

#[tokio::test]
async fn metrics_endpoint_refreshes_gauges_before_encoding() {
    let m = Metrics::new("imaged-tasks");
    let tasks = m.tasks();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let probes = Probes::default().with_refresh({
        let calls = calls.clone();
        move || {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let tasks = tasks.clone();
            async move { tasks.set_queue(n * 10, Some(Duration::from_secs(5))) }
        }
    });
    let server = MetricsServer::start("127.0.0.1:0", m.clone(), probes)
        .await
        .unwrap();
    let (status, ctype, text) = get(server.local_addr(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    assert_eq!(
        value(&text, "imaged_tasks_queue_depth"),
        Some(10.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "imaged_tasks_oldest_pending_age_seconds"),
        Some(5.0)
    );
    let (_, _, text) = get(server.local_addr(), "/metrics").await;
    assert_eq!(
        value(&text, "imaged_tasks_queue_depth"),
        Some(20.0),
        "{text}"
    );
    // Without a catalog probe, health does not depend on a database.
    m.set_ready(true);
    let (status, _, body) = get(server.local_addr(), "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"database\":null"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn an_address_in_use_is_refused_with_exit_code_4() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = MetricsServer::start(&addr, Metrics::new("imaged-cache"), Probes::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&addr) && msg.contains("metrics_bind"), "{msg}");
    assert_eq!(HarnessError::from(err).exit_code(), ExitCode::Refused);
}

/// The catalog reads behind `/healthz` and the queue gauges, on each engine.
#[tokio::test]
async fn catalog_probes_on_every_engine() {
    for engine in [Engine::Sqlite, Engine::Postgres, Engine::MySql] {
        let Some(db) = TestDb::new(engine).await else {
            continue;
        };
        let cat = &db.catalog;
        cat.ping().await.unwrap();
        let scrub_time = Duration::from_secs(600);
        assert_eq!(cat.oldest_due_deletion(scrub_time).await.unwrap(), None);
        let old = utcnow() - chrono::Duration::hours(2);
        PendingDeleteImage::new(old, 1).insert(cat).await.unwrap();
        // Not yet due: deleted a minute ago, scrub_time ten minutes.
        PendingDeleteImage::new(utcnow() - chrono::Duration::minutes(1), 1)
            .insert(cat)
            .await
            .unwrap();
        let oldest = cat.oldest_due_deletion(scrub_time).await.unwrap().unwrap();
        assert!(
            (oldest - old).num_seconds().abs() <= 1,
            "{engine:?}: {oldest} vs {old}"
        );

        let q = cat.task_queue(&["import"]).await.unwrap();
        assert_eq!((q.pending, q.oldest_created_at), (0, None), "{engine:?}");
        let input = serde_json::json!({"import_from": "http://127.0.0.1/x", "import_from_format": "raw",
                                       "image_properties": {}});
        cat.enqueue_task(&NewTask::new("import", "p", input.clone()))
            .await
            .unwrap();
        cat.enqueue_task(&NewTask::new("import", "p", input))
            .await
            .unwrap();
        let q = cat.task_queue(&["import"]).await.unwrap();
        assert_eq!(q.pending, 2, "{engine:?}");
        assert!(q.oldest_created_at.is_some(), "{engine:?}");
        // Claimed tasks leave the queue.
        let owner = imaged_catalog::ClaimOwner::generate();
        let claimed = cat
            .claim_tasks(&owner, Duration::from_secs(60), 1, &["import"])
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(cat.task_queue(&["import"]).await.unwrap().pending, 1);
        assert_eq!(
            cat.task_queue(&["location_import"]).await.unwrap().pending,
            0
        );
    }
}
