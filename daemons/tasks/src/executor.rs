//! The queue loop: claims `import` and `api_image_import` tasks with a
//! lease (the second kind runs in [`crate::api_import`]), runs up to the
//! configured number at once, heartbeats each one (renewing the lease,
//! bumping `tasks.updated_at` and writing the progress line to
//! `task_info.message`), ends each in `success` or `failure` with
//! `expires_at = now + task_time_to_live`, takes over tasks whose executor
//! died (cleaning what the dead attempt left, up to `max_attempts`), and
//! periodically soft-deletes expired tasks of every owner and removes
//! orphaned work files.
//!
//! Claims live in `imaged_claims` (see imaged-catalog's `claims` module):
//! two executors, on any hosts, never run one task at the same time.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use imaged_catalog::claims::{ClaimKind, ClaimOwner};
use imaged_catalog::tasks::{Task, TaskEnd};
use imaged_catalog::{Catalog, CatalogError};
use imaged_runtime::metrics::{Metrics, PassOutcome, TasksMetrics};
use imaged_store::Store;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::TasksError;
use crate::fetch::Fetcher;
use crate::import::{self, ImportFailure, TaskContext, WORK_FILE_PREFIX};
use crate::settings::Settings;

/// Task types this executor claims.
pub const HANDLED_TYPES: &[&str] = &["import", crate::api_import::TASK_TYPE];

/// Longest time between expiry sweeps and orphan clean-ups.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The `pass` label of the periodic sweep.
const SWEEP_PASS: &str = "sweep";

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Tasks that ended in `success`.
    pub succeeded: u64,
    /// Tasks that ended in `failure`.
    pub failed: u64,
    /// Tasks handed back at shutdown (another executor resumes them).
    pub handed_back: u64,
    /// Tasks abandoned because their claim was lost (someone else owns them).
    pub lost: u64,
    /// Expired tasks soft-deleted.
    pub expired: u64,
}

/// How one task run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    HandedBack,
    Lost,
}

impl Outcome {
    /// The `outcome` label of the task metrics.
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::HandedBack => "handed_back",
            Outcome::Lost => "lost",
        }
    }
}

/// The settings in force and a fetcher built from them.
#[derive(Clone)]
struct Snapshot {
    settings: Arc<Settings>,
    fetcher: Fetcher,
}

fn snapshot(settings: Settings) -> Result<Snapshot, TasksError> {
    let fetcher = Fetcher::new(
        settings.filter.clone(),
        settings.connect_timeout,
        settings.read_timeout,
        &settings.user_agent,
    )
    .map_err(|e| TasksError::Config(e.to_string()))?;
    Ok(Snapshot {
        settings: Arc::new(settings),
        fetcher,
    })
}

/// Handle for applying reloaded settings to a running executor.
#[derive(Clone)]
pub struct SettingsHandle(Arc<RwLock<Snapshot>>);

impl SettingsHandle {
    /// Replaces the settings; tasks claimed from now on use them.
    pub fn set(&self, settings: Settings) -> Result<(), TasksError> {
        let snap = snapshot(settings)?;
        if let Ok(mut w) = self.0.write() {
            *w = snap;
        }
        Ok(())
    }

    /// The settings in force.
    pub fn get(&self) -> Arc<Settings> {
        self.0
            .read()
            .map(|s| s.settings.clone())
            .unwrap_or_else(|p| p.into_inner().settings.clone())
    }

    fn snapshot(&self) -> Snapshot {
        self.0
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

/// A task executor bound to one catalog and one set of stores.
#[derive(Clone)]
pub struct Executor {
    catalog: Catalog,
    store: Store,
    settings: SettingsHandle,
    owner: ClaimOwner,
    recorder: Option<Recorder>,
    task_metrics: TasksMetrics,
}

/// The registry sweeps are recorded in (health's "last pass").
#[derive(Clone)]
struct Recorder(Metrics);

impl Executor {
    /// An executor with a fresh claim identity.
    pub fn new(catalog: Catalog, store: Store, settings: Settings) -> Result<Executor, TasksError> {
        Ok(Executor {
            catalog,
            store,
            settings: SettingsHandle(Arc::new(RwLock::new(snapshot(settings)?))),
            owner: ClaimOwner::generate(),
            recorder: None,
            task_metrics: TasksMetrics::default(),
        })
    }

    /// Records tasks and sweeps in `metrics` (the daemon's registry), with
    /// the task metric set `tasks` registered there.
    pub fn with_metrics(mut self, metrics: Metrics, tasks: TasksMetrics) -> Executor {
        self.recorder = Some(Recorder(metrics));
        self.task_metrics = tasks;
        self
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The handle a reload uses.
    pub fn settings(&self) -> SettingsHandle {
        self.settings.clone()
    }

    /// The claim identity (`host:pid:random`).
    pub fn owner(&self) -> &ClaimOwner {
        &self.owner
    }

    /// Runs every task claimable now (and any that become claimable while
    /// they run), then returns.
    pub async fn run_once(&self, shutdown: CancellationToken) -> Result<RunReport, TasksError> {
        self.drive(shutdown, true).await
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<RunReport, TasksError> {
        self.drive(shutdown, false).await
    }

    /// Soft-deletes expired tasks (all owners), removes orphaned work files
    /// and store temporary files left by killed writers. Returns the number
    /// of tasks expired.
    pub async fn sweep(&self) -> Result<u64, TasksError> {
        let started = Instant::now();
        let result = self.sweep_inner().await;
        if let Ok(n) = &result {
            self.task_metrics.tasks_expired(*n);
        }
        if let Some(Recorder(m)) = &self.recorder {
            let (outcome, error) = match &result {
                Ok(_) => (PassOutcome::Success, None),
                Err(e) => (PassOutcome::Error, Some(e.to_string())),
            };
            m.record_pass(SWEEP_PASS, outcome, started.elapsed(), error);
        }
        result
    }

    async fn sweep_inner(&self) -> Result<u64, TasksError> {
        let s = self.settings.get();
        let expired = self.catalog.expire_tasks(None).await?;
        if expired > 0 {
            tracing::info!(expired, "soft-deleted expired tasks");
        }
        // Without a work directory the import plugins write their work
        // files next to the staged data; a crash leaves them there, where
        // the staging clean-up (image-named files only) never looks.
        if let Some(dir) = &s.work_dir {
            self.clean_work_dir(dir).await;
        } else if let Ok(dir) = &s.api_import.staging_dir {
            self.clean_work_dir(dir).await;
        }
        crate::api_import::clean_staging(&self.catalog, &s).await;
        match self.store.remove_stale_temp_files(s.lease).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                removed = n,
                "removed temporary store files of killed writers"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot clean temporary store files"),
        }
        Ok(expired)
    }

    /// Removes `imaged-task-<id>.*` files whose task is not being run by a
    /// live holder: finished tasks, released or expired claims, and claims
    /// of dead processes on this host.
    async fn clean_work_dir(&self, dir: &std::path::Path) {
        let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
            return;
        };
        let now = chrono::Utc::now().naive_utc();
        while let Ok(Some(ent)) = rd.next_entry().await {
            let name = ent.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(WORK_FILE_PREFIX) else {
                continue;
            };
            let task_id = rest.split('.').next().unwrap_or("");
            let live = match self.catalog.claim_record(ClaimKind::Task, task_id).await {
                Ok(Some(rec)) => match (&rec.owner, rec.lease_expires_at) {
                    (Some(o), Some(until)) if until > now => {
                        o == self.owner.as_str() || !holder_is_dead_here(o)
                    }
                    _ => false,
                },
                Ok(None) => false,
                Err(_) => true,
            };
            if !live {
                match tokio::fs::remove_file(ent.path()).await {
                    Ok(()) => {
                        tracing::info!(file = %ent.path().display(), "removed orphaned work file")
                    }
                    Err(e) => {
                        tracing::warn!(file = %ent.path().display(), error = %e, "cannot remove orphaned work file")
                    }
                }
            }
        }
    }

    async fn drive(
        &self,
        shutdown: CancellationToken,
        once: bool,
    ) -> Result<RunReport, TasksError> {
        let mut report = RunReport::default();
        report.expired += self.sweep().await?;
        let mut last_sweep = Instant::now();
        let hand_back = CancellationToken::new();
        let mut running: JoinSet<Outcome> = JoinSet::new();
        let mut fatal: Option<TasksError> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                match self.sweep().await {
                    Ok(n) => report.expired += n,
                    Err(e) => tracing::warn!(error = %e, "sweep failed"),
                }
            }
            let snap = self.settings.snapshot();
            let free = snap.settings.concurrency().saturating_sub(running.len());
            let mut claimed = 0usize;
            if free > 0 {
                match self
                    .catalog
                    .claim_tasks(
                        &self.owner,
                        snap.settings.lease,
                        u32::try_from(free).unwrap_or(u32::MAX),
                        HANDLED_TYPES,
                    )
                    .await
                {
                    Ok(tasks) => {
                        claimed = tasks.len();
                        for t in tasks {
                            let me = self.clone();
                            let snap = snap.clone();
                            let stop = hand_back.child_token();
                            running.spawn(async move { me.run_task(t, snap, stop).await });
                        }
                    }
                    Err(e) if once && running.is_empty() => {
                        fatal = Some(e.into());
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot claim tasks"),
                }
            }
            if once && running.is_empty() && claimed == 0 {
                break;
            }
            let pickup = snap.settings.pickup_interval();
            tokio::select! {
                Some(done) = running.join_next(), if !running.is_empty() => record(&mut report, done),
                () = tokio::time::sleep(pickup), if !once => {}
                () = shutdown.cancelled() => break,
            }
        }
        // Shutdown: stop claiming; give running tasks half the shutdown
        // budget to finish, then hand the rest back.
        if !running.is_empty() {
            let grace = self.settings.get().shutdown_timeout / 2;
            tracing::info!(running = running.len(), ?grace, "waiting for running tasks");
            let deadline = tokio::time::Instant::now() + grace;
            while !running.is_empty() {
                tokio::select! {
                    Some(done) = running.join_next() => record(&mut report, done),
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            hand_back.cancel();
            while let Some(done) = running.join_next().await {
                record(&mut report, done);
            }
        }
        match fatal {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    async fn run_task(&self, task: Task, snap: Snapshot, stop: CancellationToken) -> Outcome {
        let started = Instant::now();
        let task_type = task.task_type.clone();
        self.task_metrics.task_started(&task_type);
        let outcome = self.run_claimed(task, snap, stop).await;
        self.task_metrics
            .task_finished(&task_type, outcome.as_str(), started.elapsed());
        outcome
    }

    async fn run_claimed(&self, task: Task, snap: Snapshot, stop: CancellationToken) -> Outcome {
        let s = snap.settings.clone();
        let id = task.id.clone();
        let attempts = match self.catalog.claim_record(ClaimKind::Task, &id).await {
            Ok(Some(r)) => r.attempts,
            _ => 1,
        };
        if attempts > 1 {
            tracing::info!(task_id = %id, attempts, "taking over a task whose previous attempt did not finish");
            // An interoperable import's image belongs to the user: its next
            // attempt resumes under the same lock instead of a clean-up.
            let cleaned = match task.task_type.as_str() {
                crate::api_import::TASK_TYPE => Ok(0),
                _ => import::clean_previous_attempt(&self.catalog, &self.store, &id).await,
            };
            if let Err(e) = cleaned {
                tracing::warn!(task_id = %id, error = %e, "cannot clean the previous attempt; will retry");
                let _ = self
                    .catalog
                    .renew_claim(ClaimKind::Task, &id, &self.owner, Duration::ZERO)
                    .await;
                return Outcome::HandedBack;
            }
        }
        if attempts > i32::try_from(s.max_attempts).unwrap_or(i32::MAX) {
            let msg = format!(
                "Task abandoned after {} attempts: each executor running it stopped before finishing (lease expired); \
                 the partial import was removed",
                attempts - 1
            );
            if task.task_type == crate::api_import::TASK_TYPE {
                crate::api_import::abandon(&self.catalog, &self.store, &task, &s).await;
            }
            return self.finish(&id, Err(ImportFailure::Failed(msg)), &s).await;
        }
        tracing::info!(task_id = %id, attempt = attempts, "running import task");
        let lost = CancellationToken::new();
        let ctx = TaskContext {
            catalog: self.catalog.clone(),
            store: self.store.clone(),
            settings: s.clone(),
            fetcher: snap.fetcher.clone(),
            progress: Arc::new(Mutex::new(String::new())),
            cancel: stop.child_token(),
            bytes_written: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            lost: lost.clone(),
        };
        let beat = tokio::spawn(heartbeat(
            self.catalog.clone(),
            self.owner.clone(),
            id.clone(),
            s.clone(),
            ctx.progress.clone(),
            ctx.cancel.clone(),
            lost.clone(),
        ));
        let result = match task.task_type.as_str() {
            crate::api_import::TASK_TYPE => crate::api_import::run(&ctx, &task).await,
            _ => import::run_import(&ctx, &task).await,
        };
        beat.abort();
        if result.is_ok() {
            self.task_metrics
                .bytes_written(ctx.bytes_written.load(std::sync::atomic::Ordering::Relaxed));
        }
        if lost.is_cancelled() {
            tracing::warn!(task_id = %id, "lost the task (claim taken over or task no longer processing)");
            return Outcome::Lost;
        }
        if let Err(ImportFailure::Cancelled(_)) = &result {
            let msg = "Handed back at shutdown; another executor will restart it";
            let _ = self
                .catalog
                .heartbeat_task(&id, &self.owner, s.lease, Some(msg))
                .await;
            return match self
                .catalog
                .renew_claim(ClaimKind::Task, &id, &self.owner, Duration::ZERO)
                .await
            {
                Ok(()) => {
                    tracing::info!(task_id = %id, "task handed back");
                    Outcome::HandedBack
                }
                Err(e) => {
                    tracing::warn!(task_id = %id, error = %e, "cannot hand the task back; its lease will expire");
                    Outcome::HandedBack
                }
            };
        }
        // An interoperable import drops its lock only once its success is
        // recorded (Glance's order): a lock dropped earlier lets another
        // import start on an image whose task still reads `processing`.
        let release = (task.task_type == crate::api_import::TASK_TYPE)
            .then(|| result.as_ref().ok())
            .flatten()
            .and_then(|v| v.get("image_id"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string);
        let outcome = self.finish(&id, result, &s).await;
        // Success not recorded: the retry resumes under the same lock.
        if outcome == Outcome::Succeeded
            && let Some(image_id) = release
        {
            crate::api_import::release_lock(&self.catalog, &id, &image_id).await;
        }
        outcome
    }

    async fn finish(
        &self,
        id: &str,
        result: Result<serde_json::Value, ImportFailure>,
        s: &Settings,
    ) -> Outcome {
        let ttl = s.task_time_to_live;
        let (res, outcome) = match result {
            Ok(v) => {
                tracing::info!(task_id = %id, result = %v, "task succeeded");
                (
                    self.catalog
                        .end_claimed_task(id, &self.owner, TaskEnd::Success(&v), ttl)
                        .await,
                    Outcome::Succeeded,
                )
            }
            Err(ImportFailure::Failed(m) | ImportFailure::Cancelled(m)) => {
                tracing::warn!(task_id = %id, message = %m, "task failed");
                (
                    self.catalog
                        .end_claimed_task(id, &self.owner, TaskEnd::Failure(&m), ttl)
                        .await,
                    Outcome::Failed,
                )
            }
        };
        match res {
            Ok(()) => outcome,
            // Another executor holds the task now, or it ended meanwhile.
            Err(e @ CatalogError::Conflict { .. }) => {
                tracing::warn!(task_id = %id, error = %e, "the task is no longer ours; leaving it");
                Outcome::Lost
            }
            Err(e) => {
                tracing::error!(task_id = %id, error = %e, "cannot record the task's end; its lease will expire and it will be retried");
                Outcome::Lost
            }
        }
    }
}

fn record(report: &mut RunReport, done: Result<Outcome, tokio::task::JoinError>) {
    match done {
        Ok(Outcome::Succeeded) => report.succeeded += 1,
        Ok(Outcome::Failed) => report.failed += 1,
        Ok(Outcome::HandedBack) => report.handed_back += 1,
        Ok(Outcome::Lost) => report.lost += 1,
        Err(e) => {
            tracing::error!(error = %e, "task runner panicked; its lease will expire and it will be retried");
            report.lost += 1;
        }
    }
}

/// Whether a claim owner `host:pid:random` is a process of this host that
/// no longer exists.
fn holder_is_dead_here(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (_rnd, pid, host) = (parts.next(), parts.next(), parts.next());
    let here = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    match (host, pid.and_then(|p| p.parse::<i32>().ok())) {
        (Some(h), Some(pid)) if h == here => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                == Err(nix::errno::Errno::ESRCH)
        }
        _ => false,
    }
}

async fn heartbeat(
    catalog: Catalog,
    owner: ClaimOwner,
    id: String,
    s: Arc<Settings>,
    progress: Arc<Mutex<String>>,
    cancel: CancellationToken,
    lost: CancellationToken,
) {
    let mut tick = tokio::time::interval(s.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let msg = progress.lock().map(|m| m.clone()).unwrap_or_default();
        let msg = (!msg.is_empty()).then_some(msg);
        match catalog
            .heartbeat_task(&id, &owner, s.lease, msg.as_deref())
            .await
        {
            Ok(()) => {}
            Err(CatalogError::Conflict { kind, found, .. }) => {
                tracing::warn!(task_id = %id, kind, ?found, "heartbeat refused; stopping the task");
                lost.cancel();
                cancel.cancel();
                return;
            }
            Err(e) => tracing::warn!(task_id = %id, error = %e, "heartbeat failed; will retry"),
        }
    }
}
