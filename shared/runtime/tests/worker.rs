//! WorkerRunner behaviour under tokio's paused clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imaged_runtime::control::ShutdownToken;
use imaged_runtime::worker::{RunnerOptions, StopReason, Worker, WorkerRunner, WorkerState};
use tokio::time::Instant;

/// What a scripted step does.
enum Step {
    Return(Result<WorkerState, String>),
    Panic,
    Sleep(Duration, WorkerState),
}

type Starts = Arc<Mutex<Vec<Instant>>>;
type Completed = Arc<Mutex<u32>>;

/// Replays a script and records when each step started.
struct Scripted {
    script: VecDeque<Step>,
    started: Starts,
    completed: Completed,
}

impl Scripted {
    fn new(script: Vec<Step>) -> (Self, Starts, Completed) {
        let started = Arc::new(Mutex::new(Vec::new()));
        let completed = Arc::new(Mutex::new(0));
        (
            Self {
                script: script.into(),
                started: started.clone(),
                completed: completed.clone(),
            },
            started,
            completed,
        )
    }
}

impl Worker for Scripted {
    type Error = String;

    fn name(&self) -> &str {
        "scripted"
    }

    async fn step(&mut self) -> Result<WorkerState, String> {
        self.started.lock().unwrap().push(Instant::now());
        let result = match self
            .script
            .pop_front()
            .unwrap_or(Step::Return(Ok(WorkerState::Done)))
        {
            Step::Return(r) => r,
            Step::Panic => panic!("step exploded"),
            Step::Sleep(d, state) => {
                tokio::time::sleep(d).await;
                Ok(state)
            }
        };
        *self.completed.lock().unwrap() += 1;
        result
    }
}

fn options() -> RunnerOptions {
    RunnerOptions {
        idle_interval: Duration::from_secs(30),
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(4),
        drain_deadline: Duration::from_secs(5),
    }
}

fn offsets(start: Instant, times: &[Instant]) -> Vec<u64> {
    times
        .iter()
        .map(|t| t.duration_since(start).as_secs())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn states_drive_the_pacing_and_errors_back_off_with_a_cap() {
    let start = Instant::now();
    let (worker, started, _) = Scripted::new(vec![
        Step::Return(Ok(WorkerState::Busy)),
        Step::Return(Ok(WorkerState::Throttled(Duration::from_secs(7)))),
        Step::Return(Err("db down".into())),
        Step::Return(Err("db down".into())),
        Step::Return(Err("db down".into())),
        Step::Return(Err("db down".into())),
        Step::Return(Ok(WorkerState::Busy)),
        Step::Return(Err("db down".into())),
        Step::Return(Ok(WorkerState::Idle)),
        Step::Return(Ok(WorkerState::Done)),
    ]);
    let (_, report) = WorkerRunner::new(worker)
        .with_options(options())
        .run(ShutdownToken::new())
        .await;
    // busy → at once; throttled 7 s; errors back off 1, 2, 4, 4 (cap); a
    // success resets the backoff to 1; idle waits 30 s.
    assert_eq!(
        offsets(start, &started.lock().unwrap()),
        [0, 0, 7, 8, 10, 14, 18, 18, 19, 49]
    );
    assert_eq!(report.steps, 5);
    assert_eq!(report.errors, 5);
    assert_eq!(report.panics, 0);
    assert_eq!(report.stopped, StopReason::Done);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_step_is_contained_and_retried() {
    let (worker, started, _) = Scripted::new(vec![
        Step::Return(Ok(WorkerState::Busy)),
        Step::Panic,
        Step::Return(Ok(WorkerState::Busy)),
        Step::Return(Ok(WorkerState::Done)),
    ]);
    let task = tokio::spawn(
        WorkerRunner::new(worker)
            .with_options(options())
            .run(ShutdownToken::new()),
    );
    let (worker, report) = task
        .await
        .expect("runner task must not die from a step panic");
    assert_eq!(report.panics, 1);
    assert_eq!(report.steps, 3);
    assert_eq!(report.stopped, StopReason::Done);
    assert_eq!(started.lock().unwrap().len(), 4);
    assert!(worker.script.is_empty());
}

#[tokio::test(start_paused = true)]
async fn wakeup_ends_an_idle_wait_early() {
    let start = Instant::now();
    let (worker, started, _) = Scripted::new(vec![
        Step::Return(Ok(WorkerState::Idle)),
        Step::Return(Ok(WorkerState::Done)),
    ]);
    let runner = WorkerRunner::new(worker).with_options(options());
    let wakeup = runner.wakeup();
    let task = tokio::spawn(runner.run(ShutdownToken::new()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    wakeup.wake();
    let (_, report) = task.await.unwrap();
    assert_eq!(report.stopped, StopReason::Done);
    assert_eq!(offsets(start, &started.lock().unwrap()), [0, 3]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_a_short_step_finish_and_starts_no_new_one() {
    let start = Instant::now();
    let (worker, started, completed) = Scripted::new(vec![
        Step::Sleep(Duration::from_secs(3), WorkerState::Busy),
        Step::Return(Ok(WorkerState::Busy)),
    ]);
    let shutdown = ShutdownToken::new();
    let task = tokio::spawn(
        WorkerRunner::new(worker)
            .with_options(options())
            .run(shutdown.clone()),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.cancel();
    let (_, report) = task.await.unwrap();
    assert_eq!(report.stopped, StopReason::Shutdown);
    assert_eq!(*completed.lock().unwrap(), 1);
    assert_eq!(started.lock().unwrap().len(), 1);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_step_that_outlives_the_drain_deadline_is_abandoned() {
    let start = Instant::now();
    let (worker, _, completed) = Scripted::new(vec![Step::Sleep(
        Duration::from_secs(600),
        WorkerState::Busy,
    )]);
    let shutdown = ShutdownToken::new();
    let task = tokio::spawn(
        WorkerRunner::new(worker)
            .with_options(options())
            .run(shutdown.clone()),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    shutdown.cancel();
    let (_, report) = task.await.unwrap();
    assert_eq!(report.stopped, StopReason::DrainTimedOut);
    assert_eq!(*completed.lock().unwrap(), 0);
    // 2 s of work, then exactly the 5 s drain deadline.
    assert_eq!(start.elapsed(), Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn shutdown_interrupts_backoff_and_idle_waits() {
    let start = Instant::now();
    let (worker, started, _) = Scripted::new(vec![Step::Return(Ok(WorkerState::Idle))]);
    let shutdown = ShutdownToken::new();
    let task = tokio::spawn(
        WorkerRunner::new(worker)
            .with_options(options())
            .run(shutdown.clone()),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    shutdown.cancel();
    let (_, report) = task.await.unwrap();
    assert_eq!(report.stopped, StopReason::Shutdown);
    assert_eq!(started.lock().unwrap().len(), 1);
    assert_eq!(start.elapsed(), Duration::from_secs(4));
}
