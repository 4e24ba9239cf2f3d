//! Runtime pieces every imaged daemon shares: exit codes, signals and
//! reloads, systemd notification, scheduling, background workers, logging,
//! and the metrics/health endpoint.
//!
//! [`harness::DaemonHarness`] assembles the long-running mode from these
//! pieces (what the example below spells out by hand), and serves
//! [`metrics`] through [`server`] when `[imaged] metrics_bind` is set.
//!
//! Apart from [`app`], which maps the loaded configuration onto the options of
//! logging, the catalog and the stores and holds the command-line pieces all
//! daemons share, the crate knows nothing about configuration files or the
//! catalog. A daemon's
//! `main` typically looks like this:
//!
//! ```no_run
//! use std::time::Duration;
//! use imaged_runtime::control::{self, ConfigWatcher, ShutdownToken};
//! use imaged_runtime::exit::ExitCode;
//! use imaged_runtime::logging::{self, LoggingOptions};
//! use imaged_runtime::reload::{supervise, Reloader, SuperviseOptions};
//! use imaged_runtime::schedule::{Schedule, Scheduler};
//! use imaged_runtime::systemd::{self, Heartbeat, Notifier};
//!
//! # #[derive(Clone)] struct Config { wakeup: Schedule }
//! # fn load_config() -> Result<Config, Vec<String>> { Ok(Config { wakeup: Schedule::every(Duration::from_secs(300)) }) }
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     let Ok(config) = load_config() else { return ExitCode::Usage.into() };
//!     let _log = logging::init(&LoggingOptions::default(), "imaged-scrubber").unwrap();
//!
//!     let (tx, mut controls) = control::signals().unwrap();
//!     let _watch = ConfigWatcher::spawn(&["/etc/glance/glance-scrubber.conf".into()], tx,
//!                                       control::DEFAULT_DEBOUNCE).unwrap();
//!     let shutdown = ShutdownToken::new();
//!     let notifier = Notifier::from_env();
//!     let heartbeat = Heartbeat::new();
//!     if let Some(timeout) = systemd::watchdog_timeout() {
//!         systemd::spawn_watchdog(notifier.clone(), timeout, heartbeat.clone(), shutdown.clone());
//!     }
//!
//!     // The periodic job; a reload can hand it a new schedule.
//!     let scheduler = Scheduler::new(config.wakeup.clone());
//!     let schedule = scheduler.handle();
//!     let work = tokio::spawn({
//!         let shutdown = shutdown.clone();
//!         async move {
//!             scheduler.run(shutdown, || async { /* one scrub pass */ }).await;
//!             ExitCode::Success
//!         }
//!     });
//!
//!     let mut reloader = Reloader::new(config, notifier.clone(), move |_old: &Config| {
//!         let new = load_config()?;
//!         schedule.set(new.wakeup.clone());
//!         Ok(new)
//!     });
//!     notifier.ready_with_status("waiting for the next scrub").ok();
//!     let done = supervise(&mut controls, &shutdown, &mut reloader, &heartbeat, work,
//!                          SuperviseOptions::default()).await;
//!     done.exit.into()
//! }
//! ```

pub mod app;
pub mod control;
pub mod exit;
pub mod harness;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod schedule;
pub mod server;
pub mod systemd;
pub mod worker;

pub use exit::ExitCode;
pub use logging::LoggingError;
pub use schedule::ScheduleError;

/// Errors from the runtime pieces.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A signal handler could not be installed.
    #[error("cannot install {signal} handler: {source}")]
    Signal {
        /// The signal's name.
        signal: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The configuration-file watch could not be set up.
    #[error("cannot watch configuration files: {0}")]
    Watch(String),
    /// Logging could not be set up.
    #[error(transparent)]
    Logging(#[from] LoggingError),
    /// A schedule could not be parsed.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The metrics/health address could not be bound.
    #[error("cannot serve metrics on {addr} ([imaged] metrics_bind): {source}")]
    MetricsBind {
        /// The configured address.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
}
