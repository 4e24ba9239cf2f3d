//! A thousand scheduler ticks must not accumulate tasks or memory (Glance's
//! scrubber daemon died after roughly 990 wake-ups).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use imaged_runtime::control::ShutdownToken;
use imaged_runtime::schedule::{Schedule, Scheduler};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[derive(Debug, Default)]
struct Samples {
    runs: u64,
    tasks_at_10: usize,
    tasks_at_1000: usize,
    rss_at_10: u64,
    rss_at_1000: u64,
}

#[tokio::test(start_paused = true)]
async fn thousand_ticks_do_not_grow_tasks_or_memory() {
    let samples = Arc::new(Mutex::new(Samples::default()));
    let shutdown = ShutdownToken::new();
    let scheduler = Scheduler::new(Schedule::every(Duration::from_secs(1)));
    let task = tokio::spawn({
        let (samples, shutdown) = (samples.clone(), shutdown.clone());
        async move {
            scheduler
                .run(shutdown, || {
                    let samples = samples.clone();
                    async move {
                        let mut s = samples.lock().unwrap();
                        s.runs += 1;
                        let tasks = tokio::runtime::Handle::current()
                            .metrics()
                            .num_alive_tasks();
                        if s.runs == 10 {
                            s.tasks_at_10 = tasks;
                            s.rss_at_10 = rss_bytes();
                        }
                        if s.runs == 1000 {
                            s.tasks_at_1000 = tasks;
                            s.rss_at_1000 = rss_bytes();
                        }
                    }
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(999_500)).await;
    shutdown.cancel();
    let report = task.await.unwrap();
    let s = samples.lock().unwrap();
    assert_eq!(report.runs, 1000);
    assert_eq!(s.runs, 1000);
    assert!(s.tasks_at_10 >= 1);
    assert_eq!(
        s.tasks_at_10, s.tasks_at_1000,
        "tasks accumulated across ticks"
    );
    let growth = s.rss_at_1000.saturating_sub(s.rss_at_10);
    eprintln!(
        "RSS after 10 ticks: {} KiB, after 1000: {} KiB",
        s.rss_at_10 / 1024,
        s.rss_at_1000 / 1024
    );
    assert!(
        growth < 1024 * 1024,
        "RSS grew by {growth} bytes over 990 ticks"
    );
}
