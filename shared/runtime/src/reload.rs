//! The daemon's control loop: reload on request, stop gracefully, report.
//!
//! [`Reloader`] wraps the daemon's "re-read the configuration, compare,
//! apply" closure. A reload that fails keeps the previous value, logs every
//! error and leaves the daemon running; systemd is told `RELOADING=1` before
//! and `READY=1` with a status line after, whatever the result.
//!
//! [`supervise`] is the loop `main` ends in: it feeds [`Control`] events to
//! the reloader, turns `Terminate` into `STOPPING=1` plus cancellation of the
//! [`ShutdownToken`] with a bounded drain, turns `Quit` into an immediate
//! exit, and bumps the watchdog [`Heartbeat`] so a wedged loop stops the
//! keep-alives.

use std::fmt::Display;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::control::{Control, ControlStream, ShutdownToken};
use crate::exit::ExitCode;
use crate::systemd::{Heartbeat, Notifier};

/// Result of one reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new value is in force.
    Applied,
    /// The reload failed; the previous value stays in force.
    Rejected {
        /// Every error, as logged.
        errors: Vec<String>,
    },
}

/// Holds the value currently in force and replaces it on successful reloads.
pub struct Reloader<T, E, F>
where
    F: FnMut(&T) -> Result<T, Vec<E>>,
{
    current: T,
    load: F,
    notifier: Notifier,
    reloads: u64,
    failures: u64,
    _error: std::marker::PhantomData<fn() -> E>,
}

impl<T, E, F> Reloader<T, E, F>
where
    E: Display,
    F: FnMut(&T) -> Result<T, Vec<E>>,
{
    /// A reloader starting from `current`; `load` receives the value in
    /// force and returns the new one, or every reason it cannot.
    pub fn new(current: T, notifier: Notifier, load: F) -> Self {
        Self {
            current,
            load,
            notifier,
            reloads: 0,
            failures: 0,
            _error: std::marker::PhantomData,
        }
    }

    /// The value in force.
    pub fn current(&self) -> &T {
        &self.current
    }

    /// Successful and failed reloads so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.reloads, self.failures)
    }

    /// Runs one reload.
    pub fn reload(&mut self) -> ReloadOutcome {
        if let Err(error) = self.notifier.reloading() {
            tracing::warn!(%error, "cannot notify systemd of reload");
        }
        let outcome = match (self.load)(&self.current) {
            Ok(next) => {
                self.current = next;
                self.reloads += 1;
                tracing::info!("configuration reloaded");
                ReloadOutcome::Applied
            }
            Err(errors) => {
                self.failures += 1;
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                for error in &errors {
                    tracing::error!(%error, "configuration reload rejected");
                }
                if errors.is_empty() {
                    tracing::error!("configuration reload rejected");
                }
                tracing::warn!("keeping the previous configuration");
                ReloadOutcome::Rejected { errors }
            }
        };
        let status = match &outcome {
            ReloadOutcome::Applied => "configuration reloaded".to_string(),
            ReloadOutcome::Rejected { errors } => format!(
                "reload rejected ({} error(s)); running with the previous configuration",
                errors.len().max(1)
            ),
        };
        if let Err(error) = self.notifier.ready_with_status(&status) {
            tracing::warn!(%error, "cannot notify systemd after reload");
        }
        outcome
    }

    /// Consumes the reloader, returning the value in force.
    pub fn into_current(self) -> T {
        self.current
    }
}

/// Timing of [`supervise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuperviseOptions {
    /// How long the work may keep running after `Terminate` before it is
    /// abandoned.
    pub drain_deadline: Duration,
    /// How often the loop bumps the watchdog heartbeat; keep it below half
    /// the watchdog timeout.
    pub heartbeat_every: Duration,
}

impl Default for SuperviseOptions {
    /// 10 s drain, heartbeat every second.
    fn default() -> Self {
        Self {
            drain_deadline: Duration::from_secs(10),
            heartbeat_every: Duration::from_secs(1),
        }
    }
}

/// How [`supervise`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The work finished on its own or after a graceful stop.
    Finished,
    /// A `Quit` arrived; the work was aborted.
    Quit,
    /// The drain deadline passed; the work was aborted.
    DrainTimedOut,
}

/// Result of [`supervise`]: the exit code for `main` and why it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supervised {
    /// The exit code to return from `main`.
    pub exit: ExitCode,
    /// How the daemon ended.
    pub ended: Ended,
}

/// Runs the control loop until the daemon's work ends.
///
/// `work` is the spawned `run(config, shutdown)` task returning its exit
/// code. A panic in it yields [`ExitCode::Internal`]. A requested stop that
/// has to abandon work still exits [`ExitCode::Success`], per the exit-code
/// contract.
pub async fn supervise<T, E, F>(
    controls: &mut ControlStream,
    shutdown: &ShutdownToken,
    reloader: &mut Reloader<T, E, F>,
    heartbeat: &Heartbeat,
    mut work: JoinHandle<ExitCode>,
    options: SuperviseOptions,
) -> Supervised
where
    E: Display,
    F: FnMut(&T) -> Result<T, Vec<E>>,
{
    let mut deadline: Option<Instant> = None;
    let mut controls_open = true;
    let mut ticker = tokio::time::interval(options.heartbeat_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let drain_expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = &mut work => {
                let exit = match joined {
                    Ok(code) => code,
                    Err(error) => {
                        tracing::error!(%error, "daemon task failed");
                        ExitCode::Internal
                    }
                };
                return Supervised { exit, ended: Ended::Finished };
            }
            control = controls.recv(), if controls_open => match control {
                None => controls_open = false,
                Some(Control::Reload) if deadline.is_none() => {
                    reloader.reload();
                }
                Some(Control::Reload) => {
                    tracing::info!("ignoring reload during shutdown");
                }
                Some(Control::Terminate) if deadline.is_none() => {
                    tracing::info!(drain = ?options.drain_deadline, "graceful shutdown started");
                    if let Err(error) = reloader.notifier.stopping() {
                        tracing::warn!(%error, "cannot notify systemd of shutdown");
                    }
                    shutdown.cancel();
                    deadline = Some(Instant::now() + options.drain_deadline);
                }
                Some(Control::Terminate | Control::Quit) => {
                    tracing::warn!("stopping immediately; in-flight work is abandoned");
                    if deadline.is_none() {
                        let _ = reloader.notifier.stopping();
                    }
                    shutdown.cancel();
                    work.abort();
                    return Supervised { exit: ExitCode::Success, ended: Ended::Quit };
                }
            },
            () = drain_expired => {
                tracing::warn!("drain deadline passed; in-flight work is abandoned");
                work.abort();
                return Supervised { exit: ExitCode::Success, ended: Ended::DrainTimedOut };
            }
            _ = ticker.tick() => heartbeat.bump(),
        }
    }
}
