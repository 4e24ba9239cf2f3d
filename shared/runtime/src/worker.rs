//! Background workers as small state machines driven one step at a time.
//!
//! A [`Worker`] does one bounded piece of work per [`Worker::step`] call and
//! says what to do next through [`WorkerState`]. [`WorkerRunner`] owns the
//! loop around it:
//!
//! * `Busy` → step again at once; `Idle` → wait for the idle interval or a
//!   [`Wakeup`]; `Throttled(d)` → pause `d`; `Done` → stop.
//! * An error is logged and followed by an exponential backoff (doubling from
//!   `backoff_min` up to `backoff_max`); a successful step resets it.
//! * A panic inside a step is caught, logged, and treated like an error, so
//!   one bad unit of work cannot take the process down.
//! * On shutdown no new step starts; a step in flight gets `drain_deadline`
//!   to finish and is then dropped. Steps must therefore leave the catalog
//!   consistent at every `.await` point (claim with a status that a restart
//!   can recover, write the final status last).

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Notify;

use crate::control::ShutdownToken;

/// What the runner should do after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// More work is ready: step again immediately.
    Busy,
    /// Nothing to do: wait for the idle interval or a wake-up.
    Idle,
    /// Work remains but must be paced: wait this long.
    Throttled(Duration),
    /// The worker has finished for good.
    Done,
}

/// One background activity, advanced one bounded step at a time.
pub trait Worker: Send {
    /// Error a step can return; it is logged and retried after a backoff.
    type Error: fmt::Display + Send;

    /// Name used in logs.
    fn name(&self) -> &str;

    /// Does one bounded piece of work.
    fn step(&mut self) -> impl Future<Output = Result<WorkerState, Self::Error>> + Send;
}

/// Wakes an idle worker early (e.g. when new work was queued).
#[derive(Debug, Clone, Default)]
pub struct Wakeup(Arc<Notify>);

impl Wakeup {
    /// A new wake-up handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends the current idle wait, or the next one if the worker is busy.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Why a runner stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The worker returned [`WorkerState::Done`].
    Done,
    /// Shutdown was requested and nothing was in flight, or the step in
    /// flight finished within the drain deadline.
    Shutdown,
    /// Shutdown was requested and the step in flight was abandoned at the
    /// drain deadline.
    DrainTimedOut,
}

/// What a runner did, returned when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerReport {
    /// Steps that returned a state (including `Done`).
    pub steps: u64,
    /// Steps that returned an error.
    pub errors: u64,
    /// Steps that panicked.
    pub panics: u64,
    /// Why the runner stopped.
    pub stopped: StopReason,
}

/// Timing knobs for a [`WorkerRunner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerOptions {
    /// How long an `Idle` worker waits before stepping again (unless woken).
    pub idle_interval: Duration,
    /// First backoff after an error.
    pub backoff_min: Duration,
    /// Backoff ceiling.
    pub backoff_max: Duration,
    /// How long a step in flight may continue after shutdown is requested.
    pub drain_deadline: Duration,
}

impl Default for RunnerOptions {
    /// 10 s idle interval, backoff 1 s doubling to 5 min, 10 s drain.
    fn default() -> Self {
        Self {
            idle_interval: Duration::from_secs(10),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            drain_deadline: Duration::from_secs(10),
        }
    }
}

/// Drives a [`Worker`] until it is done or shutdown is requested.
#[derive(Debug)]
pub struct WorkerRunner<W> {
    worker: W,
    options: RunnerOptions,
    wakeup: Wakeup,
}

enum Outcome<E> {
    State(WorkerState),
    Failed(E),
    Panicked(String),
}

impl<W: Worker> WorkerRunner<W> {
    /// A runner with default options.
    pub fn new(worker: W) -> Self {
        Self {
            worker,
            options: RunnerOptions::default(),
            wakeup: Wakeup::new(),
        }
    }

    /// Replaces the timing options.
    pub fn with_options(mut self, options: RunnerOptions) -> Self {
        self.options = options;
        self
    }

    /// The handle that ends this worker's idle waits early.
    pub fn wakeup(&self) -> Wakeup {
        self.wakeup.clone()
    }

    /// Runs the worker; returns it with a report when it stops.
    pub async fn run(mut self, shutdown: ShutdownToken) -> (W, WorkerReport) {
        let opts = self.options;
        let mut report = WorkerReport {
            steps: 0,
            errors: 0,
            panics: 0,
            stopped: StopReason::Shutdown,
        };
        let mut backoff = opts.backoff_min;
        let name = self.worker.name().to_string();
        loop {
            if shutdown.is_cancelled() {
                report.stopped = StopReason::Shutdown;
                break;
            }
            let step = AssertUnwindSafe(self.worker.step()).catch_unwind();
            tokio::pin!(step);
            let result = tokio::select! {
                biased;
                r = &mut step => Some(r),
                () = shutdown.cancelled() => None,
            };
            let result = match result {
                Some(r) => r,
                None => match tokio::time::timeout(opts.drain_deadline, &mut step).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(worker = %name, deadline = ?opts.drain_deadline, "step abandoned at the drain deadline");
                        report.stopped = StopReason::DrainTimedOut;
                        break;
                    }
                },
            };
            let outcome = match result {
                Ok(Ok(state)) => Outcome::State(state),
                Ok(Err(error)) => Outcome::Failed(error),
                Err(panic) => Outcome::Panicked(panic_message(panic.as_ref())),
            };
            let pause = match outcome {
                Outcome::State(state) => {
                    report.steps += 1;
                    backoff = opts.backoff_min;
                    match state {
                        WorkerState::Busy => {
                            // Let other tasks run between back-to-back steps.
                            tokio::task::yield_now().await;
                            continue;
                        }
                        WorkerState::Done => {
                            report.stopped = StopReason::Done;
                            break;
                        }
                        WorkerState::Idle => {
                            tokio::select! {
                                () = shutdown.cancelled() => {}
                                () = self.wakeup.0.notified() => {}
                                () = tokio::time::sleep(opts.idle_interval) => {}
                            }
                            continue;
                        }
                        WorkerState::Throttled(d) => d,
                    }
                }
                Outcome::Failed(error) => {
                    report.errors += 1;
                    tracing::error!(worker = %name, %error, retry_in = ?backoff, "worker step failed");
                    next_backoff(&mut backoff, opts.backoff_max)
                }
                Outcome::Panicked(message) => {
                    report.panics += 1;
                    tracing::error!(worker = %name, panic = %message, retry_in = ?backoff, "worker step panicked");
                    next_backoff(&mut backoff, opts.backoff_max)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        (self.worker, report)
    }
}

/// Returns the current backoff and doubles the stored one up to `max`.
fn next_backoff(backoff: &mut Duration, max: Duration) -> Duration {
    let now = (*backoff).min(max);
    *backoff = now.saturating_mul(2).min(max);
    now
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Duration::from_secs(1);
        let max = Duration::from_secs(5);
        let seq: Vec<u64> = (0..5)
            .map(|_| next_backoff(&mut b, max).as_secs())
            .collect();
        assert_eq!(seq, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn panic_payloads_become_messages() {
        assert_eq!(panic_message(&"boom"), "boom");
        assert_eq!(panic_message(&String::from("bang")), "bang");
        assert_eq!(panic_message(&42_u8), "non-string panic payload");
    }
}
