//! D10: the daemon loop survives far more wakeups than Glance's recursive
//! loop (which dies after about 990), driven in-process with a 1 ms period
//! against a real SQLite catalog and filesystem store, and still scrubs
//! work queued in the middle of the run.

use std::time::Duration;

use imaged_catalog::Engine;
use imaged_catalog::testing::{PendingDeleteImage, TestDb};
use imaged_runtime::control::ShutdownToken;
use imaged_runtime::schedule::{Schedule, Scheduler};
use imaged_runtime::systemd::Notifier;
use imaged_scrubber::daemon::run_passes;
use imaged_scrubber::{PassSettings, Scrubber};
use imaged_store::{FilesystemOptions, Store, StoreMode, StoreOptions, Timeouts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_loop_survives_thousands_of_wakeups() {
    let db = TestDb::new(Engine::Sqlite)
        .await
        .expect("sqlite always works");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(StoreOptions {
        mode: StoreMode::Single {
            default_store: imaged_store::BackendType::File,
            filesystem: Some(FilesystemOptions::with_datadir(dir.path())),
            s3: None,
        },
        timeouts: Timeouts::default(),
    })
    .unwrap();
    let scrubber = Scrubber::new(db.catalog.clone(), store);
    let (_tx, rx) = tokio::sync::watch::channel(PassSettings::default());
    let shutdown = ShutdownToken::new();
    let scheduler = Scheduler::new(Schedule::every(Duration::from_millis(1)));
    let task = tokio::spawn(run_passes(
        scrubber,
        scheduler,
        rx,
        Notifier::disabled(),
        shutdown.clone(),
    ));

    // Queue one image in the middle of the run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut img = PendingDeleteImage::new(
        imaged_catalog::time::utcnow() - chrono::Duration::hours(1),
        1,
    );
    let file = dir.path().join(&img.id);
    std::fs::write(&file, b"x").unwrap();
    img.locations = vec![(format!("file://{}", file.display()), Some("{}".into()))];
    img.insert(&db.catalog).await.unwrap();

    // Run long enough for well over Glance's ~990-wakeup limit.
    let start = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let done = db
            .count("SELECT COUNT(*) FROM images WHERE status = 'deleted'")
            .await
            .unwrap()
            == 1;
        if task.is_finished()
            || (done && start.elapsed() >= Duration::from_secs(6))
            || start.elapsed() > Duration::from_secs(60)
        {
            break;
        }
    }
    shutdown.cancel();
    let report = task.await.unwrap();
    assert!(report.passes >= 1000, "only {} passes", report.passes);
    assert_eq!(report.failed_passes, 0);
    assert!(!file.exists());
    assert_eq!(
        db.count("SELECT COUNT(*) FROM images WHERE status = 'deleted'")
            .await
            .unwrap(),
        1
    );
}
