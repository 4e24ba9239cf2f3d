//! Daemon mode: a pass on the configured schedule (never overlapping, no
//! replay of missed ticks), live reload of the pass options and schedule on
//! SIGHUP or a configuration-file change, systemd READY/STATUS/WATCHDOG/
//! STOPPING, and a bounded drain on SIGTERM.
//!
//! The loop is flat (the runtime's `Scheduler`), so it runs for any number
//! of wakeups, unlike Glance's recursive one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use imaged_config::{Daemon, Loaded};
use imaged_runtime::ExitCode;
use imaged_runtime::app::{self, ConfigArgs};
use imaged_runtime::control::{self, ConfigWatcher, ShutdownToken};
use imaged_runtime::reload::{Reloader, SuperviseOptions, supervise};
use imaged_runtime::schedule::{Schedule, ScheduleHandle, Scheduler};
use imaged_runtime::systemd::{self, Heartbeat, Notifier};
use tokio::sync::watch;

use crate::pass::{PassReport, PassSettings, Scrubber};

/// Counters of a finished daemon loop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoopReport {
    /// Passes run.
    pub passes: u64,
    /// Passes that ended with a catalog error.
    pub failed_passes: u64,
    /// The last completed pass.
    pub last: Option<PassReport>,
}

/// Runs passes on `scheduler` until `shutdown`, reading the pass options
/// afresh from `settings` before each pass. Errors are logged and the next
/// pass retries; the STATUS line carries the last summary.
pub async fn run_passes(
    scrubber: Scrubber,
    scheduler: Scheduler,
    settings: watch::Receiver<PassSettings>,
    notifier: Notifier,
    shutdown: ShutdownToken,
) -> LoopReport {
    let report = Arc::new(Mutex::new(LoopReport::default()));
    let sd = shutdown.clone();
    scheduler
        .run(shutdown, || {
            let s = settings.borrow().clone();
            let scrubber = scrubber.clone();
            let notifier = notifier.clone();
            let sd = sd.clone();
            let report = report.clone();
            async move {
                let outcome = scrubber.pass(&s, &sd).await;
                let mut rep = report.lock().unwrap_or_else(|e| e.into_inner());
                rep.passes += 1;
                match outcome {
                    Ok(r) => {
                        let line = r.summary();
                        tracing::info!("{line}");
                        let _ = notifier.status(&line);
                        rep.last = Some(r);
                    }
                    Err(e) => {
                        rep.failed_passes += 1;
                        tracing::error!(error = %e, "scrub pass failed; the next pass retries");
                        let _ = notifier.status(&format!("last pass failed: {e}"));
                    }
                }
            }
        })
        .await;
    let rep = report.lock().unwrap_or_else(|e| e.into_inner());
    rep.clone()
}

/// The configuration values a reload may change, as in force.
#[derive(Clone)]
struct Live {
    loaded: Loaded,
}

/// The whole daemon: signals, configuration watch, reloads, watchdog,
/// scheduler and passes. Returns the process exit code.
pub async fn run_daemon(scrubber: Scrubber, loaded: Loaded, args: ConfigArgs) -> ExitCode {
    let config = &loaded.config;
    let settings0 = PassSettings::from_config(config);
    let schedule0 = app::schedule(&config.scrubber().schedule);
    let drain = config.process().shutdown_timeout;

    let (tx, mut controls) = match control::signals() {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::Internal;
        }
    };
    // Files read from --config-dir directories are among `files`.
    let watched = loaded.files.clone();
    let _watch = if watched.is_empty() {
        None
    } else {
        match ConfigWatcher::spawn(&watched, tx.clone(), control::DEFAULT_DEBOUNCE) {
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

    tracing::info!(schedule = ?schedule0, pool_size = settings0.pool_size, scrub_time_s = settings0.scrub_time.as_secs(),
        owner = %scrubber.owner(), "starting scrubber daemon");
    let scheduler = Scheduler::new(schedule0);
    let schedule_handle = scheduler.handle();
    let (settings_tx, settings_rx) = watch::channel(settings0);
    let work = tokio::spawn({
        let shutdown = shutdown.clone();
        let notifier = notifier.clone();
        async move {
            let r = run_passes(scrubber, scheduler, settings_rx, notifier, shutdown).await;
            tracing::info!(
                passes = r.passes,
                failed = r.failed_passes,
                "scrubber daemon stopped"
            );
            ExitCode::Success
        }
    });

    let live = Live { loaded };
    let mut reloader = Reloader::new(live, notifier.clone(), move |old: &Live| {
        reload(old, &args, &schedule_handle, &settings_tx)
    });
    let _ = notifier.ready_with_status("scrubber running; first pass started");
    let done = supervise(
        &mut controls,
        &shutdown,
        &mut reloader,
        &heartbeat,
        work,
        SuperviseOptions {
            drain_deadline: drain.max(Duration::from_millis(100)),
            ..SuperviseOptions::default()
        },
    )
    .await;
    done.exit
}

fn reload(
    old: &Live,
    args: &ConfigArgs,
    schedule: &ScheduleHandle,
    settings: &watch::Sender<PassSettings>,
) -> Result<Live, Vec<String>> {
    let new = app::load(Daemon::Scrubber, args).map_err(|errors| {
        errors
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    })?;
    let problems = app::derived_problems(&new.config);
    if !problems.is_empty() {
        return Err(problems.iter().map(ToString::to_string).collect());
    }
    let plan = imaged_config::diff(&old.loaded.config, &new.config);
    for c in &plan.applied {
        tracing::info!(change = %c, "configuration change applied");
    }
    for c in &plan.needs_restart {
        tracing::warn!(change = %c, "configuration change needs a restart; old value kept");
    }
    let effective = plan.effective(&old.loaded.config, &new.config);
    let next_schedule: Schedule = app::schedule(&effective.scrubber().schedule);
    if schedule.get() != next_schedule {
        schedule.set(next_schedule);
    }
    let next = PassSettings::from_config(&effective);
    settings.send_if_modified(|cur| {
        if *cur != next {
            *cur = next;
            true
        } else {
            false
        }
    });
    app::log_diagnostics(&new);
    let mut loaded = new;
    loaded.config = effective;
    Ok(Live { loaded })
}
