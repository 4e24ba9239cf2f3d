//! The Prometheus metrics every daemon exposes, and the state `/healthz`
//! reports (readiness and the last pass).
//!
//! [`Metrics`] owns the registry (prefix `imaged_`) with the metrics all
//! daemons share — build info, passes by outcome and pass durations — and
//! hands out the metric set of one daemon ([`ScrubberMetrics`],
//! [`TasksMetrics`], [`CacheMetrics`]). Each set is cheap to clone and is
//! also usable detached from any registry (`Default`), so the work code
//! records unconditionally whether or not an endpoint is configured.
//!
//! Names follow the Prometheus conventions: base units in the name
//! (`_seconds`, `_bytes`), `_total` on counters, and low-cardinality labels
//! only (pass kind, outcome, error class, task type) — never an image or
//! task id.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// How a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOutcome {
    /// Every unit of work that was due is done.
    Success,
    /// The pass ran to its end but some units failed (they are retried).
    Partial,
    /// The pass could not run to its end (e.g. the catalog failed).
    Error,
}

impl PassOutcome {
    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PassOutcome::Success => "success",
            PassOutcome::Partial => "partial",
            PassOutcome::Error => "error",
        }
    }
}

/// The last pass a daemon finished, as `/healthz` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PassRecord {
    /// The kind of pass (`scrub`, `sweep`, `prune`, …).
    pub pass: String,
    /// How it ended.
    pub outcome: PassOutcome,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// How long it took.
    pub duration: Duration,
    /// Why it failed, for [`PassOutcome::Error`].
    pub error: Option<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    pass: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassKind {
    pass: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeOutcome {
    r#type: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// A gauge of seconds or bytes that may be fractional or large.
type FloatGauge = Gauge<f64, AtomicU64>;

/// Pass durations: 10 ms … ~3 h.
fn pass_buckets() -> Histogram {
    Histogram::new([
        0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 10800.0,
    ])
}

/// Task durations: 100 ms … ~3 h (imports of large images take long).
fn task_buckets() -> Histogram {
    Histogram::new([
        0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0,
    ])
}

/// The registry of one daemon process plus its health state; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    passes: Family<PassLabels, Counter>,
    pass_duration: Family<PassKind, Histogram, fn() -> Histogram>,
    last_pass: Arc<Mutex<Option<PassRecord>>>,
    ready: Arc<AtomicBool>,
    program: Arc<str>,
    started: Instant,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry for `program` (e.g. `imaged-scrubber`) with the shared
    /// metrics registered: `imaged_build_info`, `imaged_passes_total` and
    /// `imaged_pass_duration_seconds`.
    pub fn new(program: &str) -> Self {
        let mut registry = Registry::with_prefix("imaged");
        registry.register(
            "build",
            "Version of the running binary (always 1)",
            Info::new(vec![
                ("daemon".to_string(), program.to_string()),
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ]),
        );
        let passes = Family::<PassLabels, Counter>::default();
        registry.register(
            "passes",
            "Passes finished, by kind of pass and outcome (success, partial, error)",
            passes.clone(),
        );
        let pass_duration =
            Family::<PassKind, Histogram, fn() -> Histogram>::new_with_constructor(pass_buckets);
        registry.register_with_unit(
            "pass_duration",
            "Wall time of finished passes, by kind of pass",
            Unit::Seconds,
            pass_duration.clone(),
        );
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            passes,
            pass_duration,
            last_pass: Arc::new(Mutex::new(None)),
            ready: Arc::new(AtomicBool::new(false)),
            program: program.into(),
            started: Instant::now(),
        }
    }

    /// The program name given to [`Metrics::new`].
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Time since the registry was created (≈ process uptime).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn with_registry<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut r)
    }

    /// Records a finished pass: counts it, observes its duration and makes
    /// it the last pass `/healthz` reports.
    pub fn record_pass(
        &self,
        pass: &str,
        outcome: PassOutcome,
        duration: Duration,
        error: Option<String>,
    ) {
        self.passes
            .get_or_create(&PassLabels {
                pass: pass.to_string(),
                outcome: outcome.as_str().to_string(),
            })
            .inc();
        self.pass_duration
            .get_or_create(&PassKind {
                pass: pass.to_string(),
            })
            .observe(duration.as_secs_f64());
        let mut last = self.last_pass.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some(PassRecord {
            pass: pass.to_string(),
            outcome,
            finished_at: Utc::now(),
            duration,
            error,
        });
    }

    /// The last finished pass, if any.
    pub fn last_pass(&self) -> Option<PassRecord> {
        self.last_pass
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Marks the daemon ready (start-up done) or not (stopping).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the daemon is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Every metric in the Prometheus text exposition format (0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.with_registry(|r| {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, r);
        });
        out
    }

    /// Registers and returns the scrubber's metric set. Call once.
    pub fn scrubber(&self) -> ScrubberMetrics {
        let m = ScrubberMetrics::default();
        self.with_registry(|r| m.register(r));
        m
    }

    /// Registers and returns the task executor's metric set. Call once.
    pub fn tasks(&self) -> TasksMetrics {
        let m = TasksMetrics::default();
        self.with_registry(|r| m.register(r));
        m
    }

    /// Registers and returns the cache daemon's metric set. Call once.
    pub fn cache(&self) -> CacheMetrics {
        let m = CacheMetrics::default();
        self.with_registry(|r| m.register(r));
        m
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

fn secs(age: Option<Duration>) -> f64 {
    age.map_or(0.0, |d| d.as_secs_f64())
}

/// Time since the catalog timestamp `t` (naive UTC, as Glance stores it);
/// zero for a timestamp in the future (clock skew between hosts).
pub fn age_since(t: chrono::NaiveDateTime) -> Duration {
    (Utc::now().naive_utc() - t).to_std().unwrap_or_default()
}

/// What one scrub pass did, in the units of [`ScrubberMetrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScrubCounts {
    /// Due locations found.
    pub due: u64,
    /// Locations scrubbed (data deleted or already gone, row `deleted`).
    pub scrubbed: u64,
    /// Of those, locations whose data was already gone.
    pub not_found: u64,
    /// Locations that failed with a transient error.
    pub transient: u64,
    /// Locations that failed with a permanent error.
    pub permanent: u64,
    /// Images that reached `deleted`.
    pub images_deleted: u64,
    /// Bytes freed (image size times locations scrubbed, when recorded).
    pub bytes_freed: u64,
    /// Locations another writer changed first.
    pub conflicts: u64,
}

/// The scrub queue as the catalog shows it now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScrubQueue {
    /// `pending_delete` images.
    pub pending_images: i64,
    /// Of those, past `scrub_time`.
    pub due_images: i64,
    /// `pending_delete` locations (of deleted and of live images).
    pub pending_locations: i64,
    /// Images a scrubber holds now.
    pub claimed_images: i64,
    /// Images with a recorded failure, by error class.
    pub failing_by_class: Vec<(String, i64)>,
    /// Age of the oldest due deletion.
    pub oldest_due_age: Option<Duration>,
}

/// The scrubber's metrics (`imaged_scrubber_*`).
#[derive(Clone, Default, Debug)]
pub struct ScrubberMetrics {
    due: Counter,
    scrubbed: Counter,
    not_found: Counter,
    failed: Family<ClassLabel, Counter>,
    images_deleted: Counter,
    freed: Counter,
    conflicts: Counter,
    pending_images: Gauge,
    due_images: Gauge,
    pending_locations: Gauge,
    claimed_images: Gauge,
    failing_images: Family<ClassLabel, Gauge>,
    oldest_due_age: FloatGauge,
}

impl ScrubberMetrics {
    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("scrubber");
        r.register(
            "locations_due",
            "Due pending_delete locations found by passes",
            self.due.clone(),
        );
        r.register(
            "locations_scrubbed",
            "Locations whose data was deleted and whose row was marked deleted",
            self.scrubbed.clone(),
        );
        r.register(
            "locations_not_found",
            "Scrubbed locations whose data was already gone from the store",
            self.not_found.clone(),
        );
        r.register(
            "locations_failed",
            "Locations that could not be scrubbed, by error class (transient, permanent)",
            self.failed.clone(),
        );
        r.register(
            "images_deleted",
            "Images that reached status deleted",
            self.images_deleted.clone(),
        );
        r.register_with_unit(
            "freed",
            "Image data deleted from the stores (image size times locations scrubbed)",
            Unit::Bytes,
            self.freed.clone(),
        );
        r.register(
            "conflicts",
            "Locations another writer (a restore, another scrubber) changed first",
            self.conflicts.clone(),
        );
        r.register(
            "pending_images",
            "Images in pending_delete now",
            self.pending_images.clone(),
        );
        r.register(
            "due_images",
            "Images in pending_delete past scrub_time now (the scrub queue)",
            self.due_images.clone(),
        );
        r.register(
            "pending_locations",
            "Locations in pending_delete now",
            self.pending_locations.clone(),
        );
        r.register(
            "claimed_images",
            "Images a scrubber holds now",
            self.claimed_images.clone(),
        );
        r.register(
            "failing_images",
            "Images with a recorded scrub failure now, by error class",
            self.failing_images.clone(),
        );
        r.register_with_unit(
            "oldest_due_age",
            "Age of the oldest due deletion (0 when none is due)",
            Unit::Seconds,
            self.oldest_due_age.clone(),
        );
    }

    /// Adds the counts of one pass.
    pub fn record_pass(&self, c: &ScrubCounts) {
        self.due.inc_by(c.due);
        self.scrubbed.inc_by(c.scrubbed);
        self.not_found.inc_by(c.not_found);
        for (class, n) in [("transient", c.transient), ("permanent", c.permanent)] {
            self.failed
                .get_or_create(&ClassLabel {
                    class: class.into(),
                })
                .inc_by(n);
        }
        self.images_deleted.inc_by(c.images_deleted);
        self.freed.inc_by(c.bytes_freed);
        self.conflicts.inc_by(c.conflicts);
    }

    /// Sets the queue gauges.
    pub fn set_queue(&self, q: &ScrubQueue) {
        self.pending_images.set(q.pending_images);
        self.due_images.set(q.due_images);
        self.pending_locations.set(q.pending_locations);
        self.claimed_images.set(q.claimed_images);
        // A class whose failures all cleared must read 0, not its old value.
        for class in ["transient", "permanent"] {
            self.failing_images
                .get_or_create(&ClassLabel {
                    class: class.into(),
                })
                .set(0);
        }
        for (class, n) in &q.failing_by_class {
            self.failing_images
                .get_or_create(&ClassLabel {
                    class: class.clone(),
                })
                .set(*n);
        }
        self.oldest_due_age.set(secs(q.oldest_due_age));
    }
}

/// The task executor's metrics (`imaged_tasks_*`, `imaged_task_*`).
#[derive(Clone, Debug)]
pub struct TasksMetrics {
    claimed: Family<TypeLabel, Counter>,
    finished: Family<TypeOutcome, Counter>,
    duration: Family<TypeOutcome, Histogram, fn() -> Histogram>,
    written: Counter,
    expired: Counter,
    running: Gauge,
    queue_depth: Gauge,
    oldest_pending_age: FloatGauge,
}

impl Default for TasksMetrics {
    fn default() -> Self {
        TasksMetrics {
            claimed: Family::default(),
            finished: Family::default(),
            duration: Family::new_with_constructor(task_buckets),
            written: Counter::default(),
            expired: Counter::default(),
            running: Gauge::default(),
            queue_depth: Gauge::default(),
            oldest_pending_age: FloatGauge::default(),
        }
    }
}

impl TasksMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "tasks_claimed",
            "Tasks claimed (new, or taken over from a dead executor), by type",
            self.claimed.clone(),
        );
        r.register(
            "tasks_finished",
            "Task runs ended, by type and outcome (succeeded, failed, handed_back, lost)",
            self.finished.clone(),
        );
        r.register_with_unit(
            "task_duration",
            "Wall time of task runs, by type and outcome",
            Unit::Seconds,
            self.duration.clone(),
        );
        r.register_with_unit(
            "tasks_written",
            "Image data written to the stores by successful tasks",
            Unit::Bytes,
            self.written.clone(),
        );
        r.register(
            "tasks_expired",
            "Finished tasks soft-deleted after task_time_to_live",
            self.expired.clone(),
        );
        r.register(
            "tasks_running",
            "Tasks this executor runs now",
            self.running.clone(),
        );
        r.register(
            "tasks_queue_depth",
            "Pending tasks of the handled types that no executor holds now",
            self.queue_depth.clone(),
        );
        r.register_with_unit(
            "tasks_oldest_pending_age",
            "Age of the oldest such pending task (0 when none)",
            Unit::Seconds,
            self.oldest_pending_age.clone(),
        );
    }

    /// A task of `task_type` was claimed and starts running.
    pub fn task_started(&self, task_type: &str) {
        self.claimed
            .get_or_create(&TypeLabel {
                r#type: task_type.into(),
            })
            .inc();
        self.running.inc();
    }

    /// A task run ended with `outcome` after `duration`.
    pub fn task_finished(&self, task_type: &str, outcome: &str, duration: Duration) {
        let labels = TypeOutcome {
            r#type: task_type.into(),
            outcome: outcome.into(),
        };
        // The count goes last: a scrape that sees the task finished also
        // sees its duration and the running gauge without it.
        self.running.dec();
        self.duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        self.finished.get_or_create(&labels).inc();
    }

    /// `bytes` of image data were written by a successful task.
    pub fn bytes_written(&self, bytes: u64) {
        self.written.inc_by(bytes);
    }

    /// `n` finished tasks were soft-deleted.
    pub fn tasks_expired(&self, n: u64) {
        self.expired.inc_by(n);
    }

    /// Sets the queue gauges.
    pub fn set_queue(&self, depth: i64, oldest_age: Option<Duration>) {
        self.queue_depth.set(depth);
        self.oldest_pending_age.set(secs(oldest_age));
    }
}

/// The cache daemon's metrics (`imaged_cache_*`).
#[derive(Clone, Default, Debug)]
pub struct CacheMetrics {
    size: Gauge,
    limit: Gauge,
    images: Gauge,
    evicted: Counter,
    cleaned: Family<KindLabel, Counter>,
    prefetched: Family<OutcomeLabel, Counter>,
    freed: Counter,
}

impl CacheMetrics {
    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("cache");
        r.register_with_unit(
            "size",
            "Bytes of complete images in the cache now",
            Unit::Bytes,
            self.size.clone(),
        );
        r.register_with_unit(
            "limit",
            "The configured cache size limit (image_cache_max_size)",
            Unit::Bytes,
            self.limit.clone(),
        );
        r.register(
            "images",
            "Complete images in the cache now",
            self.images.clone(),
        );
        r.register(
            "evicted",
            "Images the pruner removed to bring the cache under its limit",
            self.evicted.clone(),
        );
        r.register(
            "cleaned",
            "Files the cleaner removed, by kind (invalid, stalled, abandoned, orphan, inactive)",
            self.cleaned.clone(),
        );
        r.register(
            "prefetched",
            "Queued images the prefetcher handled, by outcome (cached, failed)",
            self.prefetched.clone(),
        );
        r.register_with_unit(
            "freed",
            "Bytes removed from the cache by the pruner and the cleaner",
            Unit::Bytes,
            self.freed.clone(),
        );
    }

    /// Sets the size gauges: bytes and images cached now, and the limit.
    pub fn set_size(&self, bytes: u64, images: u64, limit_bytes: u64) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.size.set(g(bytes));
        self.images.set(g(images));
        self.limit.set(g(limit_bytes));
    }

    /// The pruner evicted `images` images totalling `bytes`.
    pub fn evicted(&self, images: u64, bytes: u64) {
        self.evicted.inc_by(images);
        self.freed.inc_by(bytes);
    }

    /// The cleaner removed `files` files of `kind` (`invalid`, `stalled`,
    /// `abandoned`, `orphan`, `inactive`) totalling `bytes`.
    pub fn cleaned(&self, kind: &str, files: u64, bytes: u64) {
        self.cleaned
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc_by(files);
        self.freed.inc_by(bytes);
    }

    /// The prefetcher handled `n` images with `outcome` (`cached`, `failed`).
    pub fn prefetched(&self, outcome: &str, n: u64) {
        self.prefetched
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc_by(n);
    }
}
