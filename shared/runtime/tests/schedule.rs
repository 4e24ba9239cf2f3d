//! Scheduler timing under tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Timelike, Utc};
use imaged_runtime::control::ShutdownToken;
use imaged_runtime::schedule::{FirstRun, Schedule, Scheduler, TokioClock, WallClock};
use tokio::time::Instant;

fn secs_since(start: Instant, times: &[Instant]) -> Vec<u64> {
    times
        .iter()
        .map(|t| t.duration_since(start).as_secs())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn slow_interval_job_neither_overlaps_nor_bursts() {
    let start = Instant::now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(Mutex::new(false));
    let shutdown = ShutdownToken::new();
    let scheduler = Scheduler::new(Schedule::every(Duration::from_secs(10)));
    let task = tokio::spawn({
        let (starts, running, shutdown) = (starts.clone(), running.clone(), shutdown.clone());
        async move {
            scheduler
                .run(shutdown, || {
                    let (starts, running) = (starts.clone(), running.clone());
                    async move {
                        {
                            let mut r = running.lock().unwrap();
                            assert!(!*r, "job overlapped itself");
                            *r = true;
                        }
                        starts.lock().unwrap().push(Instant::now());
                        tokio::time::sleep(Duration::from_secs(25)).await;
                        *running.lock().unwrap() = false;
                    }
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_secs(90)).await;
    shutdown.cancel();
    let report = task.await.unwrap();
    // A 25 s job on a 10 s interval runs back to back: 9 missed ticks are
    // not replayed.
    assert_eq!(secs_since(start, &starts.lock().unwrap()), [0, 25, 50, 75]);
    assert_eq!(report.runs, 4);
    // The run in flight at shutdown was awaited, not cut off.
    assert!(!*running.lock().unwrap());
}

#[tokio::test(start_paused = true)]
async fn fast_interval_job_keeps_the_cadence() {
    let start = Instant::now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let shutdown = ShutdownToken::new();
    let scheduler =
        Scheduler::new(Schedule::parse("10s").unwrap()).with_first_run(FirstRun::AfterInterval);
    let task = tokio::spawn({
        let (starts, shutdown) = (starts.clone(), shutdown.clone());
        async move {
            scheduler
                .run(shutdown, || {
                    let starts = starts.clone();
                    async move {
                        starts.lock().unwrap().push(Instant::now());
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_secs(45)).await;
    shutdown.cancel();
    assert_eq!(task.await.unwrap().runs, 4);
    assert_eq!(secs_since(start, &starts.lock().unwrap()), [10, 20, 30, 40]);
}

#[tokio::test(start_paused = true)]
async fn schedule_can_change_while_running() {
    let start = Instant::now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let shutdown = ShutdownToken::new();
    let scheduler = Scheduler::new(Schedule::every(Duration::from_secs(100)));
    let handle = scheduler.handle();
    let task = tokio::spawn({
        let (starts, shutdown) = (starts.clone(), shutdown.clone());
        async move {
            scheduler
                .run(shutdown, || {
                    let starts = starts.clone();
                    async move { starts.lock().unwrap().push(Instant::now()) }
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_secs(50)).await;
    handle.set(Schedule::every(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_secs(25)).await;
    // Setting the same schedule again must not restart the cadence.
    handle.set(Schedule::every(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(handle.get(), Schedule::every(Duration::from_secs(10)));
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(secs_since(start, &starts.lock().unwrap()), [0, 60, 70, 80]);
}

#[tokio::test(start_paused = true)]
async fn cron_fires_on_matching_times_and_skips_missed_ones() {
    let base = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 30).unwrap();
    let clock = Arc::new(TokioClock::starting_at(base));
    let fired = Arc::new(Mutex::new(Vec::new()));
    let shutdown = ShutdownToken::new();
    let scheduler = Scheduler::new(Schedule::parse("* * * * *").unwrap()).with_clock(clock.clone());
    let task = tokio::spawn({
        let (fired, shutdown, clock) = (fired.clone(), shutdown.clone(), clock.clone());
        async move {
            scheduler
                .run(shutdown, || {
                    let (fired, clock) = (fired.clone(), clock.clone());
                    async move {
                        fired.lock().unwrap().push(clock.now());
                        // Runs past the next two fire times.
                        tokio::time::sleep(Duration::from_secs(150)).await;
                    }
                })
                .await
        }
    });
    // 12:00:30 + 400 s = 12:07:10.
    tokio::time::sleep(Duration::from_secs(400)).await;
    shutdown.cancel();
    assert_eq!(task.await.unwrap().runs, 3);
    let fired = fired.lock().unwrap();
    let minutes: Vec<u32> = fired.iter().map(|t| t.minute()).collect();
    // 12:01 runs until 12:03:30, so 12:02 and 12:03 are skipped, not replayed.
    assert_eq!(minutes, [1, 4, 7]);
    assert!(fired.iter().all(|t| t.second() == 0));
}

#[tokio::test(start_paused = true)]
async fn shutdown_before_first_tick_runs_nothing() {
    let shutdown = ShutdownToken::new();
    let scheduler = Scheduler::new(Schedule::every(Duration::from_secs(60)))
        .with_first_run(FirstRun::AfterInterval);
    let runs = Arc::new(Mutex::new(0));
    let task = tokio::spawn({
        let (runs, shutdown) = (runs.clone(), shutdown.clone());
        async move {
            scheduler
                .run(shutdown, || {
                    let runs = runs.clone();
                    async move { *runs.lock().unwrap() += 1 }
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_secs(59)).await;
    shutdown.cancel();
    assert_eq!(task.await.unwrap().runs, 0);
    assert_eq!(*runs.lock().unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn missed_ticks_after_one_slow_run_are_not_replayed() {
    let start = Instant::now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let shutdown = ShutdownToken::new();
    let scheduler = Scheduler::new(Schedule::every(Duration::from_secs(10)));
    let task = tokio::spawn({
        let (starts, shutdown) = (starts.clone(), shutdown.clone());
        async move {
            scheduler
                .run(shutdown, || {
                    let starts = starts.clone();
                    async move {
                        let first = {
                            let mut s = starts.lock().unwrap();
                            s.push(Instant::now());
                            s.len() == 1
                        };
                        // One slow pass (a large backlog), then quick ones.
                        let took = if first { 55 } else { 1 };
                        tokio::time::sleep(Duration::from_secs(took)).await;
                    }
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_secs(80)).await;
    shutdown.cancel();
    task.await.unwrap();
    // The five ticks missed during the slow pass collapse into one run at
    // 55 s; the cadence restarts from there instead of firing 5 times.
    assert_eq!(secs_since(start, &starts.lock().unwrap()), [0, 55, 65, 75]);
}
