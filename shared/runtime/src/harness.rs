//! The long-running mode every daemon shares, as one piece: signals and the
//! configuration-file watch on one control channel, the shutdown token,
//! systemd notification and the watchdog, the metrics/health server of
//! `[imaged] metrics_bind`, and the control loop that ends in an exit code.
//!
//! A daemon builds its work and its reload closure, then:
//!
//! ```no_run
//! # use imaged_runtime::harness::DaemonHarness;
//! # use imaged_runtime::metrics::Metrics;
//! # use imaged_runtime::server::Probes;
//! # use imaged_runtime::reload::Reloader;
//! # use imaged_runtime::ExitCode;
//! # async fn f(loaded: imaged_config::Loaded) -> ExitCode {
//! let metrics = Metrics::new("imaged-scrubber");
//! let harness = match DaemonHarness::start(&loaded, metrics, Probes::default()).await {
//!     Ok(h) => h,
//!     Err(e) => return e.exit_code(),
//! };
//! let shutdown = harness.shutdown.clone();
//! let work = tokio::spawn(async move { shutdown.cancelled().await; ExitCode::Success });
//! let mut reloader = Reloader::new((), harness.notifier.clone(), |_: &()| Ok::<_, Vec<String>>(()));
//! harness.supervise(work, &mut reloader, std::time::Duration::from_secs(10), "running").await
//! # }
//! ```

use std::fmt::Display;
use std::io;
use std::time::Duration;

use imaged_config::Loaded;
use tokio::task::JoinHandle;

use crate::RuntimeError;
use crate::control::{self, ConfigWatcher, ControlStream, ShutdownToken};
use crate::exit::ExitCode;
use crate::metrics::Metrics;
use crate::reload::{Reloader, SuperviseOptions, supervise};
use crate::server::{MetricsServer, Probes};
use crate::systemd::{self, Heartbeat, Notifier};

/// Why a daemon could not start its harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Signal handlers could not be installed, or the metrics address could
    /// not be bound.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl HarnessError {
    /// The exit status: an address that cannot be bound (in use, not
    /// permitted, not local) is a refused run (4); anything else a bug (70).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            HarnessError::Runtime(RuntimeError::MetricsBind { source, .. }) => {
                match source.kind() {
                    io::ErrorKind::InvalidInput => ExitCode::Usage,
                    _ => ExitCode::Refused,
                }
            }
            HarnessError::Runtime(_) => ExitCode::Internal,
        }
    }
}

/// The shared pieces of a running daemon.
pub struct DaemonHarness {
    /// Cancelled when a stop is requested; the work takes no new units then.
    pub shutdown: ShutdownToken,
    /// systemd notifications.
    pub notifier: Notifier,
    /// The registry the endpoint serves.
    pub metrics: Metrics,
    heartbeat: Heartbeat,
    controls: ControlStream,
    server: Option<MetricsServer>,
    _watch: Option<ConfigWatcher>,
}

impl DaemonHarness {
    /// Installs the signal handlers, watches the configuration files of
    /// `loaded`, starts the watchdog when systemd asks for one, and serves
    /// `metrics` on `[imaged] metrics_bind` when it is set. A failure is
    /// logged and printed once; the caller exits with
    /// [`HarnessError::exit_code`].
    pub async fn start(
        loaded: &Loaded,
        metrics: Metrics,
        probes: Probes,
    ) -> Result<DaemonHarness, HarnessError> {
        let program = metrics.program().to_string();
        let report = |e: HarnessError| {
            tracing::error!(error = %e, "cannot start");
            eprintln!("{program}: {e}");
            e
        };
        let (tx, controls) = control::signals().map_err(|e| report(e.into()))?;
        let server = match &loaded.config.process().metrics_bind {
            Some(addr) => Some(
                MetricsServer::start(addr, metrics.clone(), probes)
                    .await
                    .map_err(|e| report(e.into()))?,
            ),
            None => None,
        };
        // Files read from --config-dir directories are among `files`.
        let mut watched = loaded.files.clone();
        watched.sort();
        let watch = if watched.is_empty() {
            None
        } else {
            match ConfigWatcher::spawn(&watched, tx, control::DEFAULT_DEBOUNCE) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "configuration files are not watched; SIGHUP still reloads");
                    None
                }
            }
        };
        let shutdown = ShutdownToken::new();
        let notifier = Notifier::from_env();
        let heartbeat = Heartbeat::new();
        if let Some(timeout) = systemd::watchdog_timeout() {
            systemd::spawn_watchdog(
                notifier.clone(),
                timeout,
                heartbeat.clone(),
                shutdown.clone(),
            );
        }
        // Health turns "not ready" as soon as a stop begins.
        tokio::spawn({
            let shutdown = shutdown.clone();
            let metrics = metrics.clone();
            async move {
                shutdown.cancelled().await;
                metrics.set_ready(false);
            }
        });
        Ok(DaemonHarness {
            shutdown,
            notifier,
            metrics,
            heartbeat,
            controls,
            server,
            _watch: watch,
        })
    }

    /// The address the metrics server listens on, when it runs.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().map(MetricsServer::local_addr)
    }

    /// Tells systemd the daemon is ready (with `status`), runs the control
    /// loop until `work` ends (reloads through `reloader`, a stop drains for
    /// at most `drain`), stops the metrics server and returns the exit code.
    pub async fn supervise<T, E, F>(
        mut self,
        work: JoinHandle<ExitCode>,
        reloader: &mut Reloader<T, E, F>,
        drain: Duration,
        status: &str,
    ) -> ExitCode
    where
        E: Display,
        F: FnMut(&T) -> Result<T, Vec<E>>,
    {
        if let Err(error) = self.notifier.ready_with_status(status) {
            tracing::debug!(%error, "no systemd notification");
        }
        if !self.shutdown.is_cancelled() {
            self.metrics.set_ready(true);
        }
        let done = supervise(
            &mut self.controls,
            &self.shutdown,
            reloader,
            &self.heartbeat,
            work,
            SuperviseOptions {
                drain_deadline: drain,
                ..SuperviseOptions::default()
            },
        )
        .await;
        self.metrics.set_ready(false);
        // Stop the watchdog and the readiness watcher with the work.
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        done.exit
    }
}
