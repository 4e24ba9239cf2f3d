//! Periodic jobs: an interval or a cron expression, never overlapping.
//!
//! # Schedule syntax
//!
//! [`Schedule::parse`] accepts:
//!
//! * a bare non-negative integer: seconds, as Glance's `wakeup_time` and
//!   similar options are written (`"300"`);
//! * an integer with one unit suffix: `s`, `m`, `h` or `d` (`"90s"`, `"5m"`,
//!   `"2h"`, `"1d"`);
//! * anything else is read as a cron expression: five fields
//!   (`min hour day-of-month month day-of-week`), an optional leading seconds
//!   field, or a nickname such as `@hourly` / `@daily`. Cron times are
//!   evaluated in the host's local time zone.
//!
//! A zero interval is rejected: it would turn a periodic job into a busy loop.
//!
//! # Timing rules
//!
//! * A run never overlaps the previous one: the job is awaited before the
//!   next wait starts.
//! * Missed ticks are not replayed. For intervals this is tokio's
//!   [`MissedTickBehavior::Delay`]: a run that overran starts the next one at
//!   once, and the schedule continues from there. For cron, the next fire time
//!   is computed from the current time after each run, so fire times that
//!   passed during a long run are skipped.
//! * Waiting uses tokio's clock, so tests drive schedules with
//!   `tokio::time::pause()` and `advance()`. Cron needs the wall-clock date
//!   as well; it comes from a [`WallClock`], which tests replace.
//!
//! `tokio-cron-scheduler` is deliberately not used: it schedules on the wall
//! clock (so tokio's paused clock cannot drive it), spawns a task per job
//! run, and pulls in a compiled time-zone database for features we do not
//! need. `croner` alone parses and evaluates the expressions.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local, Utc};
use croner::Cron;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::control::ShutdownToken;

/// When a periodic job runs.
#[derive(Clone)]
pub enum Schedule {
    /// Every fixed duration.
    Interval(Duration),
    /// At the times matched by a cron expression.
    Cron(Box<Cron>),
}

/// A schedule string that could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The interval was zero.
    #[error("schedule {0:?}: the interval must be greater than zero")]
    ZeroInterval(String),
    /// Neither an interval nor a valid cron expression.
    #[error(
        "schedule {input:?} is neither an interval (\"300\", \"5m\") nor a cron expression: {reason}"
    )]
    Invalid {
        /// The rejected text.
        input: String,
        /// Why the cron parser refused it.
        reason: String,
    },
    /// The cron expression has no future fire time.
    #[error("cron expression {0:?} never fires again")]
    NoNextFire(String),
}

impl Schedule {
    /// Parses the syntax described in the module docs.
    pub fn parse(input: &str) -> Result<Self, ScheduleError> {
        let text = input.trim();
        if let Some(interval) = parse_interval(text) {
            return match interval {
                Some(d) if !d.is_zero() => Ok(Self::Interval(d)),
                _ => Err(ScheduleError::ZeroInterval(input.to_string())),
            };
        }
        Cron::from_str(text)
            .map(|c| Self::Cron(Box::new(c)))
            .map_err(|e| ScheduleError::Invalid {
                input: input.to_string(),
                reason: e.to_string(),
            })
    }

    /// A fixed interval.
    pub fn every(interval: Duration) -> Self {
        Self::Interval(interval)
    }

    /// The first fire time strictly after `after`, for cron schedules.
    fn next_cron_fire(cron: &Cron, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&Local);
        cron.find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Interval(d) => f.debug_tuple("Interval").field(d).finish(),
            Self::Cron(c) => f.debug_tuple("Cron").field(&c.pattern.to_string()).finish(),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Interval(d) => write!(f, "every {}s", d.as_secs_f64()),
            Self::Cron(c) => write!(f, "cron {}", c.pattern),
        }
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Interval(a), Self::Interval(b)) => a == b,
            (Self::Cron(a), Self::Cron(b)) => a.pattern.to_string() == b.pattern.to_string(),
            _ => false,
        }
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `None` when `text` is not interval syntax; `Some(None)` on overflow.
fn parse_interval(text: &str) -> Option<Option<Duration>> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(0) => return None,
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    if digits.is_empty() {
        return None;
    }
    let factor: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    Some(
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .map(Duration::from_secs),
    )
}

/// Source of the wall-clock time used to evaluate cron expressions.
pub trait WallClock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A wall clock that starts at a fixed date and advances with tokio's clock,
/// so a paused tokio runtime drives cron schedules deterministically.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base: DateTime<Utc>,
    start: Instant,
}

impl TokioClock {
    /// A clock reading `base` now and moving with `tokio::time::Instant`.
    pub fn starting_at(base: DateTime<Utc>) -> Self {
        Self {
            base,
            start: Instant::now(),
        }
    }
}

impl WallClock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = Instant::now().duration_since(self.start);
        self.base + chrono::Duration::from_std(elapsed).unwrap_or(chrono::TimeDelta::MAX)
    }
}

/// Handle to change a running [`Scheduler`]'s schedule (on reload).
#[derive(Debug, Clone)]
pub struct ScheduleHandle {
    tx: Arc<watch::Sender<Schedule>>,
}

impl ScheduleHandle {
    /// Replaces the schedule; the running scheduler recomputes its next run
    /// from now. Setting an identical schedule changes nothing.
    pub fn set(&self, schedule: Schedule) {
        self.tx.send_if_modified(|current| {
            if *current == schedule {
                false
            } else {
                *current = schedule;
                true
            }
        });
    }

    /// The schedule currently in force.
    pub fn get(&self) -> Schedule {
        self.tx.borrow().clone()
    }
}

/// Whether an interval schedule runs the job as soon as it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirstRun {
    /// Run at once, then every interval (a daemon catches up on start).
    #[default]
    Immediately,
    /// Wait one interval before the first run.
    AfterInterval,
}

/// Counters a finished scheduler reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedulerReport {
    /// How many times the job ran.
    pub runs: u64,
}

/// Runs an async job on a [`Schedule`] until shutdown.
#[derive(Debug)]
pub struct Scheduler {
    rx: watch::Receiver<Schedule>,
    handle: ScheduleHandle,
    clock: Arc<dyn WallClock>,
    first_run: FirstRun,
}

enum Wake {
    Due,
    Changed,
    Stop,
}

impl Scheduler {
    /// A scheduler for `schedule` using the system clock.
    pub fn new(schedule: Schedule) -> Self {
        let (tx, rx) = watch::channel(schedule);
        Self {
            rx,
            handle: ScheduleHandle { tx: Arc::new(tx) },
            clock: Arc::new(SystemClock),
            first_run: FirstRun::default(),
        }
    }

    /// Replaces the wall clock used for cron expressions.
    pub fn with_clock(mut self, clock: Arc<dyn WallClock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets whether an interval schedule runs at once on start.
    pub fn with_first_run(mut self, first_run: FirstRun) -> Self {
        self.first_run = first_run;
        self
    }

    /// A handle to change the schedule while the scheduler runs.
    pub fn handle(&self) -> ScheduleHandle {
        self.handle.clone()
    }

    /// Runs `job` on the schedule until `shutdown` is cancelled.
    ///
    /// A job already running when shutdown arrives is awaited (the job itself
    /// watches the token to stop early); no run starts after shutdown.
    pub async fn run<F, Fut>(mut self, shutdown: ShutdownToken, mut job: F) -> SchedulerReport
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut report = SchedulerReport::default();
        let mut first = true;
        loop {
            let schedule = self.rx.borrow_and_update().clone();
            match schedule {
                Schedule::Interval(period) => {
                    let start = if first && self.first_run == FirstRun::Immediately {
                        Instant::now()
                    } else {
                        Instant::now() + period
                    };
                    first = false;
                    let mut ticker = tokio::time::interval_at(start, period);
                    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    loop {
                        let wake = tokio::select! {
                            biased;
                            () = shutdown.cancelled() => Wake::Stop,
                            changed = self.rx.changed() => match changed {
                                Ok(()) => Wake::Changed,
                                Err(_) => Wake::Stop,
                            },
                            _ = ticker.tick() => Wake::Due,
                        };
                        match wake {
                            Wake::Stop => return report,
                            Wake::Changed => break,
                            Wake::Due => {
                                job().await;
                                report.runs += 1;
                            }
                        }
                    }
                }
                Schedule::Cron(cron) => {
                    first = false;
                    loop {
                        let now = self.clock.now();
                        let Some(next) = Schedule::next_cron_fire(&cron, now) else {
                            tracing::error!(schedule = %cron.pattern, "cron expression never fires again; waiting for a new schedule");
                            tokio::select! {
                                () = shutdown.cancelled() => return report,
                                changed = self.rx.changed() => match changed {
                                    Ok(()) => break,
                                    Err(_) => return report,
                                },
                            }
                        };
                        let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
                        let wake = tokio::select! {
                            biased;
                            () = shutdown.cancelled() => Wake::Stop,
                            changed = self.rx.changed() => match changed {
                                Ok(()) => Wake::Changed,
                                Err(_) => Wake::Stop,
                            },
                            () = tokio::time::sleep(wait) => Wake::Due,
                        };
                        match wake {
                            Wake::Stop => return report,
                            Wake::Changed => break,
                            Wake::Due => {
                                job().await;
                                report.runs += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_interval_forms() {
        assert_eq!(
            Schedule::parse("300").unwrap(),
            Schedule::Interval(Duration::from_secs(300))
        );
        assert_eq!(
            Schedule::parse(" 90s ").unwrap(),
            Schedule::Interval(Duration::from_secs(90))
        );
        assert_eq!(
            Schedule::parse("5m").unwrap(),
            Schedule::Interval(Duration::from_secs(300))
        );
        assert_eq!(
            Schedule::parse("2h").unwrap(),
            Schedule::Interval(Duration::from_secs(7200))
        );
        assert_eq!(
            Schedule::parse("1d").unwrap(),
            Schedule::Interval(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn rejects_zero_and_garbage() {
        assert!(matches!(
            Schedule::parse("0"),
            Err(ScheduleError::ZeroInterval(_))
        ));
        assert!(matches!(
            Schedule::parse("0m"),
            Err(ScheduleError::ZeroInterval(_))
        ));
        assert!(matches!(
            Schedule::parse("99999999999999999999"),
            Err(ScheduleError::ZeroInterval(_))
        ));
        assert!(matches!(
            Schedule::parse("5 minutes"),
            Err(ScheduleError::Invalid { .. })
        ));
        assert!(matches!(
            Schedule::parse("61 * * * *"),
            Err(ScheduleError::Invalid { .. })
        ));
        assert!(Schedule::parse("").is_err());
    }

    #[test]
    fn parses_cron_and_nicknames() {
        assert!(matches!(
            Schedule::parse("*/5 * * * *").unwrap(),
            Schedule::Cron(_)
        ));
        assert!(matches!(
            Schedule::parse("@hourly").unwrap(),
            Schedule::Cron(_)
        ));
        assert!(matches!(
            Schedule::parse("30 */5 * * * *").unwrap(),
            Schedule::Cron(_)
        ));
    }

    #[test]
    fn cron_next_fire_is_strictly_after_now() {
        let Schedule::Cron(cron) = Schedule::parse("*/5 * * * *").unwrap() else {
            panic!("expected cron");
        };
        let now = Local::now().with_timezone(&Utc);
        let next = Schedule::next_cron_fire(&cron, now).unwrap();
        assert!(next > now);
        assert!(next - now <= chrono::TimeDelta::minutes(5));
        let local = next.with_timezone(&Local);
        assert_eq!(chrono::Timelike::minute(&local) % 5, 0);
        assert_eq!(chrono::Timelike::second(&local), 0);
    }
}
