//! Daemon mode: a pass on the configured schedule (never overlapping, no
//! replay of missed ticks), live reload of the pass options and schedule on
//! SIGHUP or a configuration-file change, systemd READY/STATUS/WATCHDOG/
//! STOPPING, a bounded drain on SIGTERM (all through the runtime's
//! `DaemonHarness`), and the scrubber's metrics: pass counts recorded after
//! each pass, queue gauges read from the catalog at each scrape.
//!
//! The loop is flat (the runtime's `Scheduler`), so it runs for any number
//! of wakeups, unlike Glance's recursive one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imaged_catalog::Catalog;
use imaged_config::{Daemon, Loaded};
use imaged_runtime::ExitCode;
use imaged_runtime::app::{self, ConfigArgs};
use imaged_runtime::control::ShutdownToken;
use imaged_runtime::harness::DaemonHarness;
use imaged_runtime::metrics::{
    Metrics, PassOutcome, ScrubCounts, ScrubQueue, ScrubberMetrics, age_since,
};
use imaged_runtime::reload::Reloader;
use imaged_runtime::schedule::{Schedule, ScheduleHandle, Scheduler};
use imaged_runtime::server::Probes;
use imaged_runtime::systemd::Notifier;
use tokio::sync::watch;

use crate::pass::{PassReport, PassSettings, Scrubber};

/// The program name metrics and health report.
const PROGRAM: &str = "imaged-scrubber";

/// The `pass` label of scrub passes.
const PASS: &str = "scrub";

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
    let metrics = Metrics::new(PROGRAM);
    let recorder = Recorder {
        scrubber: ScrubberMetrics::default(),
        metrics,
    };
    run_recorded_passes(scrubber, scheduler, settings, notifier, shutdown, recorder).await
}

/// Where the daemon records its passes for `/metrics` and `/healthz`.
#[derive(Clone)]
struct Recorder {
    metrics: Metrics,
    scrubber: ScrubberMetrics,
}

impl Recorder {
    fn record(&self, outcome: &Result<PassReport, crate::PassError>, elapsed: Duration) {
        match outcome {
            Ok(r) => {
                let result = if r.failures() > 0 {
                    PassOutcome::Partial
                } else {
                    PassOutcome::Success
                };
                self.scrubber.record_pass(&ScrubCounts {
                    due: r.due,
                    scrubbed: r.scrubbed,
                    not_found: r.not_found,
                    transient: r.transient,
                    permanent: r.permanent,
                    images_deleted: r.images_deleted,
                    bytes_freed: r.bytes_freed,
                    conflicts: r.conflicts,
                });
                self.metrics.record_pass(PASS, result, elapsed, None);
            }
            Err(e) => {
                self.metrics
                    .record_pass(PASS, PassOutcome::Error, elapsed, Some(e.to_string()));
            }
        }
    }
}

async fn run_recorded_passes(
    scrubber: Scrubber,
    scheduler: Scheduler,
    settings: watch::Receiver<PassSettings>,
    notifier: Notifier,
    shutdown: ShutdownToken,
    recorder: Recorder,
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
            let recorder = recorder.clone();
            async move {
                let started = Instant::now();
                let outcome = scrubber.pass(&s, &sd).await;
                recorder.record(&outcome, started.elapsed());
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

/// Reads the scrub queue for the gauges of `/metrics`.
async fn refresh_queue(catalog: &Catalog, scrub_time: Duration, metrics: &ScrubberMetrics) {
    let read = async {
        let s = catalog.scrub_status(scrub_time).await?;
        let oldest = catalog.oldest_due_deletion(scrub_time).await?;
        Ok::<_, imaged_catalog::CatalogError>((s, oldest))
    };
    match read.await {
        Ok((s, oldest)) => metrics.set_queue(&ScrubQueue {
            pending_images: s.pending_images,
            due_images: s.due_images,
            pending_locations: s.pending_locations + s.live_image_pending_locations,
            claimed_images: s.claimed_images,
            failing_by_class: s.failures_by_class,
            oldest_due_age: oldest.map(age_since),
        }),
        Err(error) => tracing::warn!(%error, "cannot read the scrub queue for /metrics"),
    }
}

/// The whole daemon: signals, configuration watch, reloads, watchdog,
/// metrics/health endpoint, scheduler and passes. Returns the process exit
/// code.
pub async fn run_daemon(scrubber: Scrubber, loaded: Loaded, args: ConfigArgs) -> ExitCode {
    let config = &loaded.config;
    let settings0 = PassSettings::from_config(config);
    let schedule0 = app::schedule(&config.scrubber().schedule);
    let drain = config.process().shutdown_timeout;
    let (settings_tx, settings_rx) = watch::channel(settings0.clone());

    let metrics = Metrics::new(PROGRAM);
    let recorder = Recorder {
        scrubber: metrics.scrubber(),
        metrics: metrics.clone(),
    };
    let probes = Probes::catalog(scrubber.catalog().clone()).with_refresh({
        let catalog = scrubber.catalog().clone();
        let settings = settings_rx.clone();
        let gauges = recorder.scrubber.clone();
        move || {
            let catalog = catalog.clone();
            let scrub_time = settings.borrow().scrub_time;
            let gauges = gauges.clone();
            async move { refresh_queue(&catalog, scrub_time, &gauges).await }
        }
    });
    let harness = match DaemonHarness::start(&loaded, metrics, probes).await {
        Ok(h) => h,
        Err(e) => return e.exit_code(),
    };

    tracing::info!(schedule = ?schedule0, pool_size = settings0.pool_size, scrub_time_s = settings0.scrub_time.as_secs(),
        owner = %scrubber.owner(), "starting scrubber daemon");
    let scheduler = Scheduler::new(schedule0);
    let schedule_handle = scheduler.handle();
    let work = tokio::spawn({
        let shutdown = harness.shutdown.clone();
        let notifier = harness.notifier.clone();
        async move {
            let r = run_recorded_passes(
                scrubber,
                scheduler,
                settings_rx,
                notifier,
                shutdown,
                recorder,
            )
            .await;
            tracing::info!(
                passes = r.passes,
                failed = r.failed_passes,
                "scrubber daemon stopped"
            );
            ExitCode::Success
        }
    });

    let live = Live { loaded };
    let mut reloader = Reloader::new(live, harness.notifier.clone(), move |old: &Live| {
        reload(old, &args, &schedule_handle, &settings_tx)
    });
    harness
        .supervise(
            work,
            &mut reloader,
            drain.max(Duration::from_millis(100)),
            "scrubber running; first pass started",
        )
        .await
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
