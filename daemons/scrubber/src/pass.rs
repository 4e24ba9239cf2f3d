//! One scrub pass: list the due `pending_delete` locations page by page,
//! claim their images, delete the data through the store with bounded
//! concurrency, commit the catalog changes in batches, record failures with
//! back-off, and finally complete images left `pending_delete` with no
//! pending location.
//!
//! Ordering rules that keep the catalog consistent at every `.await`:
//! an image is claimed before any of its data is deleted (a restore refuses
//! while the claim is live, and a second scrubber skips it), the claim is
//! re-checked against the locations' current status (another scrubber may
//! have finished them between listing and claim), and the catalog is only
//! changed after the store said the data is gone.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use futures::StreamExt;
use imaged_catalog::scrub::{FinishOutcome, ScrubLocation, ScrubQuery};
use imaged_catalog::scrub_batch::ScrubbedImage;
use imaged_catalog::time::utcnow;
use imaged_catalog::{Catalog, CatalogError, ClaimKind, ClaimOwner};
use imaged_runtime::ExitCode;
use imaged_runtime::control::ShutdownToken;
use imaged_store::{ErrorClass, Location, Store};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

/// How long a permanently failing image rests before it is tried again
/// (so an operator's fix is picked up without a restart, yet the error is
/// logged once a day rather than every pass).
pub const PERMANENT_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Locations claimed, deleted and committed together (several listing
/// pages of `batch_size`). Large enough to amortise the write transactions,
/// small enough that a unit finishes well within a claim's lease.
pub const UNIT_LOCATIONS: usize = 1000;

/// First back-off after a transient failure; doubles per attempt.
pub const TRANSIENT_BACKOFF_MIN: Duration = Duration::from_secs(60);

/// Ceiling of the transient back-off.
pub const TRANSIENT_BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// Error class stored for a failure that retrying cannot fix.
pub const CLASS_PERMANENT: &str = "permanent";
/// Error class stored for a failure a later attempt may get past.
pub const CLASS_TRANSIENT: &str = "transient";

/// The options of one pass (all of them change on reload).
#[derive(Debug, Clone, PartialEq)]
pub struct PassSettings {
    /// `scrub_time`: age a deletion must reach before it is scrubbed.
    pub scrub_time: Duration,
    /// `scrub_pool_size`: backend deletes in flight at once.
    pub pool_size: usize,
    /// `[imaged_scrubber] batch_size`: locations listed per query.
    pub batch_size: u32,
    /// `[imaged_scrubber] lease_seconds`: how long a claim is held.
    pub lease: Duration,
}

impl PassSettings {
    /// The pass settings of a loaded configuration.
    pub fn from_config(config: &imaged_config::Config) -> Self {
        let s = config.scrubber();
        PassSettings {
            scrub_time: s.scrub_time,
            pool_size: s.pool_size.max(1),
            batch_size: s.batch_size.max(1),
            lease: s.lease,
        }
    }
}

impl Default for PassSettings {
    fn default() -> Self {
        PassSettings {
            scrub_time: Duration::ZERO,
            pool_size: 1,
            batch_size: 100,
            lease: Duration::from_secs(300),
        }
    }
}

/// What one pass did. Counts are of locations unless named otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PassReport {
    /// Due locations listed.
    pub due: u64,
    /// Locations whose data was deleted and whose row is now `deleted`.
    pub scrubbed: u64,
    /// Of `scrubbed`, those whose data was already gone.
    pub not_found: u64,
    /// Locations that failed with a transient error this pass.
    pub transient: u64,
    /// Locations that failed with a permanent error this pass.
    pub permanent: u64,
    /// Images skipped because an earlier failure's back-off has not passed.
    pub backing_off_images: u64,
    /// Images skipped because another scrubber holds them.
    pub held_elsewhere_images: u64,
    /// Locations another writer (a restore, another scrubber) changed first.
    pub conflicts: u64,
    /// Images that reached `deleted`.
    pub images_deleted: u64,
    /// Of those, images that were already without pending locations
    /// (interrupted earlier scrubs, purged location rows).
    pub stuck_completed: u64,
    /// Bytes freed: the image size recorded in the catalog times the
    /// locations scrubbed (0 for images without a recorded size).
    pub bytes_freed: u64,
    /// Whether a shutdown request ended the pass early.
    pub interrupted: bool,
    /// Wall time of the pass in milliseconds.
    pub elapsed_ms: u64,
}

impl PassReport {
    /// Adds the counts of `other` (a stage's share of the pass) to these.
    fn add(&mut self, other: &PassReport) {
        self.due += other.due;
        self.scrubbed += other.scrubbed;
        self.not_found += other.not_found;
        self.transient += other.transient;
        self.permanent += other.permanent;
        self.backing_off_images += other.backing_off_images;
        self.held_elsewhere_images += other.held_elsewhere_images;
        self.conflicts += other.conflicts;
        self.images_deleted += other.images_deleted;
        self.stuck_completed += other.stuck_completed;
        self.bytes_freed += other.bytes_freed;
    }

    /// Failed work this pass, including images still in back-off.
    pub fn failures(&self) -> u64 {
        self.transient + self.permanent + self.backing_off_images
    }

    /// The exit status of a one-shot run that did this pass.
    pub fn exit_code(&self) -> ExitCode {
        if self.failures() > 0 {
            ExitCode::WorkFailed
        } else {
            ExitCode::Success
        }
    }

    /// The one-line summary logged after each pass and sent to systemd.
    pub fn summary(&self) -> String {
        format!(
            "scrub pass: due={} scrubbed={} not_found={} images_deleted={} stuck_completed={} bytes_freed={} \
             transient={} permanent={} backing_off={} held_elsewhere={} conflicts={} time={:.3}s{}",
            self.due,
            self.scrubbed,
            self.not_found,
            self.images_deleted,
            self.stuck_completed,
            self.bytes_freed,
            self.transient,
            self.permanent,
            self.backing_off_images,
            self.held_elsewhere_images,
            self.conflicts,
            self.elapsed_ms as f64 / 1000.0,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        )
    }
}

/// Why a pass could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The catalog failed after its own retries.
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
}

impl PassError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            PassError::Catalog(CatalogError::Database(_) | CatalogError::Io { .. }) => {
                ExitCode::BackendUnavailable
            }
            PassError::Catalog(CatalogError::Schema(_)) => ExitCode::Usage,
            PassError::Catalog(_) => ExitCode::Internal,
        }
    }
}

/// The scrubber: a catalog, the stores, and this process's claim identity.
#[derive(Debug, Clone)]
pub struct Scrubber {
    catalog: Catalog,
    store: Store,
    owner: ClaimOwner,
}

/// The outcome of deleting one location's data.
enum Deleted {
    Gone { not_found: bool },
    Failed { class: ErrorClass, reason: String },
}

/// One image of a page with its listed locations.
struct ImageWork {
    image_id: String,
    locations: Vec<ScrubLocation>,
}

/// A claimed unit on its way from the listing stage to the delete stage.
struct Unit {
    work: Vec<ImageWork>,
}

/// A unit whose deletes are done, on its way to the commit stage:
/// `(index into work, location id, outcome)` per location.
struct DeletedUnit {
    unit: Unit,
    results: Vec<(usize, i64, Deleted)>,
}

/// What the stages of one pass share: the images claimed and not yet
/// committed (their later locations wait, and their claims are renewed),
/// a commit counter the listing stage waits on, and the report.
struct Pipeline {
    in_flight: Mutex<HashSet<String>>,
    /// Taken around the stages' write transactions on SQLite: they would
    /// otherwise meet SQLite's lock, whose busy handler sleeps in steps of
    /// up to 100 ms, where a queue here wakes the next writer at once.
    writes: Option<tokio::sync::Mutex<()>>,
    closed: std::sync::atomic::AtomicBool,
    commits: watch::Sender<u64>,
    report: Mutex<PassReport>,
}

impl Pipeline {
    fn new(serialize_writes: bool) -> Self {
        Pipeline {
            in_flight: Mutex::new(HashSet::new()),
            writes: serialize_writes.then(|| tokio::sync::Mutex::new(())),
            closed: std::sync::atomic::AtomicBool::new(false),
            commits: watch::channel(0).0,
            report: Mutex::new(PassReport::default()),
        }
    }

    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.writes {
            Some(m) => Some(m.lock().await),
            None => None,
        }
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn in_flight(&self, image_id: &str) -> bool {
        self.lock_in_flight().contains(image_id)
    }

    fn in_flight_ids(&self) -> Vec<String> {
        self.lock_in_flight().iter().cloned().collect()
    }

    fn claimed(&self, ids: &[String]) {
        self.lock_in_flight().extend(ids.iter().cloned());
    }

    fn committed(&self, ids: &[String]) {
        {
            let mut set = self.lock_in_flight();
            for id in ids {
                set.remove(id);
            }
        }
        self.commits.send_modify(|n| *n += 1);
    }

    fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.commits.send_modify(|n| *n += 1);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Moves the deferred locations whose image has left the pipeline into
    /// a new unit.
    fn take_ready(&self, deferred: &mut Vec<ScrubLocation>) -> Vec<ScrubLocation> {
        let set = self.lock_in_flight();
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(deferred)
            .into_iter()
            .partition(|l| !set.contains(&l.image_id));
        *deferred = wait;
        ready
    }

    fn report(&self, f: impl FnOnce(&mut PassReport)) {
        f(&mut self.report.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn into_report(self) -> PassReport {
        self.report.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl Scrubber {
    /// A scrubber with a fresh claim identity.
    pub fn new(catalog: Catalog, store: Store) -> Self {
        Self::with_owner(catalog, store, ClaimOwner::generate())
    }

    /// A scrubber with an explicit claim identity (tests).
    pub fn with_owner(catalog: Catalog, store: Store, owner: ClaimOwner) -> Self {
        Scrubber {
            catalog,
            store,
            owner,
        }
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The claim identity of this scrubber.
    pub fn owner(&self) -> &ClaimOwner {
        &self.owner
    }

    /// Runs one pass over the work that is due now. A cancelled `shutdown`
    /// stops it between units; the units already claimed are deleted and
    /// committed first.
    ///
    /// The pass is a three-stage pipeline — list and claim, delete, commit —
    /// with one unit in each stage, so the catalog's transactions (each an
    /// fsync on SQLite) overlap the backend deletes of the neighbouring
    /// units instead of adding to them. An image whose locations fall into
    /// two units is never in two stages at once: its later locations wait
    /// until the earlier unit is committed (see [`Pipeline`]).
    pub async fn pass(
        &self,
        settings: &PassSettings,
        shutdown: &ShutdownToken,
    ) -> Result<PassReport, PassError> {
        let started = Instant::now();
        let pipe = Pipeline::new(self.catalog.engine() == imaged_catalog::Engine::Sqlite);
        let (claimed_tx, mut claimed_rx) = mpsc::channel::<Unit>(1);
        let (deleted_tx, mut deleted_rx) = mpsc::channel::<DeletedUnit>(1);

        let list = self.list_and_claim(settings, shutdown, &pipe, claimed_tx);
        let delete = async {
            while let Some(unit) = claimed_rx.recv().await {
                let results = self.delete_unit(&unit, settings).await;
                if deleted_tx
                    .send(DeletedUnit { unit, results })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            drop(deleted_tx);
        };
        let commit = async {
            let mut out = Ok(());
            while let Some(done) = deleted_rx.recv().await {
                let ids: Vec<String> = done.unit.work.iter().map(|w| w.image_id.clone()).collect();
                out = self.commit_unit(done, &pipe).await;
                pipe.committed(&ids);
                if out.is_err() {
                    break;
                }
            }
            // Wakes the listing stage if it waits for a commit that will
            // not come.
            pipe.close();
            out
        };
        // The claims of every unit between claim and commit are renewed
        // every third of the lease, so a unit slowed down by its backend or
        // waiting for the next stage never outlives its claims: a restore or
        // another scrubber can take an image over only once this process
        // stopped renewing it.
        let commit = async {
            let mut commit = std::pin::pin!(commit);
            let every = (settings.lease / 3).max(Duration::from_secs(1));
            loop {
                tokio::select! {
                    out = &mut commit => return out,
                    () = tokio::time::sleep(every) => self.renew(&pipe, settings.lease).await,
                }
            }
        };
        let (listed, (), committed) = tokio::join!(list, delete, commit);
        let mut report = pipe.into_report();
        listed?;
        committed?;
        if !report.interrupted {
            self.complete_stuck(&mut report).await?;
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// The first stage: lists due locations into units and claims them.
    async fn list_and_claim(
        &self,
        settings: &PassSettings,
        shutdown: &ShutdownToken,
        pipe: &Pipeline,
        tx: mpsc::Sender<Unit>,
    ) -> Result<(), PassError> {
        let query = ScrubQuery {
            scrub_time: settings.scrub_time,
            include_live_image_locations: true,
            page_size: settings.batch_size.max(1),
        };
        let mut after = 0i64;
        let mut more = true;
        let mut deferred: Vec<ScrubLocation> = Vec::new();
        let mut commits = pipe.commits();
        loop {
            if shutdown.is_cancelled() {
                pipe.report(|r| r.interrupted = true);
                return Ok(());
            }
            // Listing pages are gathered into one unit of work so that a
            // claim and a commit (each a write transaction, an fsync on
            // SQLite) cover up to UNIT_LOCATIONS locations.
            let mut unit = pipe.take_ready(&mut deferred);
            while more && unit.len() < UNIT_LOCATIONS {
                let page = self.catalog.scrub_page(&query, after).await?;
                more = page.len() as u64 >= u64::from(query.page_size);
                let Some(last) = page.last() else { break };
                after = last.location_id;
                pipe.report(|r| r.due += page.len() as u64);
                for loc in page {
                    if pipe.in_flight(&loc.image_id) {
                        deferred.push(loc);
                    } else {
                        unit.push(loc);
                    }
                }
            }
            if unit.is_empty() {
                if deferred.is_empty() {
                    return Ok(());
                }
                // Only locations of images still in a later stage are left:
                // wait for the next commit, then take what it freed.
                if commits.changed().await.is_err() || pipe.is_closed() {
                    return Ok(());
                }
                continue;
            }
            if let Some(unit) = self.claim_unit(unit, settings, pipe).await?
                && tx.send(unit).await.is_err()
            {
                // The commit stage stopped on an error, which it reports.
                return Ok(());
            }
        }
    }

    /// Groups a unit's locations by image, claims the images, and keeps
    /// the locations that are still pending under a claim of ours.
    async fn claim_unit(
        &self,
        locations: Vec<ScrubLocation>,
        settings: &PassSettings,
        pipe: &Pipeline,
    ) -> Result<Option<Unit>, PassError> {
        // Group by image, keeping listing order.
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut work: Vec<ImageWork> = Vec::new();
        for loc in locations {
            match index.get(&loc.image_id) {
                Some(&i) => work[i].locations.push(loc),
                None => {
                    index.insert(loc.image_id.clone(), work.len());
                    work.push(ImageWork {
                        image_id: loc.image_id.clone(),
                        locations: vec![loc],
                    });
                }
            }
        }
        let ids: Vec<String> = work.iter().map(|w| w.image_id.clone()).collect();
        let turn = pipe.write_turn().await;
        let claimed = self
            .catalog
            .claim(ClaimKind::ScrubImage, &ids, &self.owner, settings.lease)
            .await?;
        drop(turn);
        if claimed.len() < ids.len() {
            let mut report = PassReport::default();
            self.count_unclaimed(&ids, &claimed, &mut report).await?;
            pipe.report(|r| {
                r.held_elsewhere_images += report.held_elsewhere_images;
                r.backing_off_images += report.backing_off_images;
            });
        }
        if claimed.is_empty() {
            return Ok(None);
        }
        pipe.claimed(&claimed);
        let claimed_set: std::collections::HashSet<&str> =
            claimed.iter().map(String::as_str).collect();
        work.retain(|w| claimed_set.contains(w.image_id.as_str()));
        // Another scrubber may have finished some locations between our
        // listing and our claim.
        let listed: Vec<i64> = work
            .iter()
            .flat_map(|w| w.locations.iter().map(|l| l.location_id))
            .collect();
        let pending: std::collections::HashSet<i64> = self
            .catalog
            .still_pending_locations(&claimed, &listed)
            .await?
            .into_iter()
            .collect();
        let dropped = listed.len() - pending.len();
        pipe.report(|r| r.conflicts += dropped as u64);
        for w in &mut work {
            w.locations.retain(|l| pending.contains(&l.location_id));
        }
        Ok(Some(Unit { work }))
    }

    /// The second stage: the unit's backend deletes. The unit is split
    /// into `pool_size` runs deleted concurrently, each run one location
    /// after another (one store call, so a run of files costs one
    /// blocking-pool round trip); at most `pool_size` deletes are ever in
    /// flight.
    async fn delete_unit(
        &self,
        unit: &Unit,
        settings: &PassSettings,
    ) -> Vec<(usize, i64, Deleted)> {
        let mut jobs: Vec<(usize, ScrubLocation)> = unit
            .work
            .iter()
            .enumerate()
            .flat_map(|(i, w)| w.locations.iter().cloned().map(move |l| (i, l)))
            .collect();
        let pool = settings.pool_size.max(1);
        let per_run = jobs.len().div_ceil(pool).max(1);
        let mut chunks = Vec::with_capacity(pool);
        while !jobs.is_empty() {
            let rest = jobs.split_off(per_run.min(jobs.len()));
            chunks.push(std::mem::replace(&mut jobs, rest));
        }
        futures::stream::iter(chunks)
            .map(|run| async move { self.delete_run(&run).await })
            .buffer_unordered(pool)
            .collect::<Vec<Vec<(usize, i64, Deleted)>>>()
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The third stage: one batched catalog commit for the unit, then the
    /// failures recorded image by image.
    async fn commit_unit(&self, done: DeletedUnit, pipe: &Pipeline) -> Result<(), PassError> {
        let DeletedUnit { unit, results } = done;
        let work = unit.work;
        let mut report = PassReport::default();
        let mut gone: Vec<Vec<i64>> = vec![Vec::new(); work.len()];
        let mut failed: Vec<Vec<(i64, ErrorClass, String)>> = vec![Vec::new(); work.len()];
        for (i, id, res) in results {
            match res {
                Deleted::Gone { not_found } => {
                    gone[i].push(id);
                    if not_found {
                        report.not_found += 1;
                    }
                }
                Deleted::Failed { class, reason } => failed[i].push((id, class, reason)),
            }
        }
        let batch: Vec<ScrubbedImage> = work
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let mut location_ids = std::mem::take(&mut gone[i]);
                location_ids.sort_unstable();
                ScrubbedImage {
                    image_id: w.image_id.clone(),
                    location_ids,
                    release: failed[i].is_empty(),
                }
            })
            .collect();
        let turn = pipe.write_turn().await;
        let outcomes = self.catalog.commit_scrubbed(&self.owner, &batch).await?;
        drop(turn);
        for o in &outcomes {
            report.scrubbed += o.marked;
            if let Some(size) = o.image_size {
                report.bytes_freed += size.max(0) as u64 * o.marked;
            }
            report.conflicts += o.conflicts.len() as u64;
            for (loc, found) in &o.conflicts {
                tracing::warn!(image_id = %o.image_id, location_id = loc, found = ?found,
                    "location changed by another writer while it was being scrubbed");
            }
            match &o.finish {
                FinishOutcome::Deleted => {
                    report.images_deleted += 1;
                    tracing::info!(image_id = %o.image_id, locations = o.marked, "image scrubbed");
                }
                FinishOutcome::LocationsRemaining(n) => {
                    tracing::debug!(image_id = %o.image_id, remaining = n, "image still has pending locations");
                }
                FinishOutcome::Conflict(status)
                    if status == "active" || status == "deactivated" =>
                {
                    // A location removed from a live image: only the location is scrubbed.
                    tracing::info!(image_id = %o.image_id, locations = o.marked, image_status = %status,
                        "removed location of a live image scrubbed");
                }
                FinishOutcome::Conflict(status) => {
                    tracing::debug!(image_id = %o.image_id, image_status = %status, "image changed by another writer");
                }
                FinishOutcome::NotFound => {}
            }
        }
        let mut result = Ok(());
        for (i, w) in work.iter().enumerate() {
            if failed[i].is_empty() {
                continue;
            }
            if let Err(e) = self
                .record_failures(&w.image_id, &failed[i], &mut report)
                .await
            {
                result = Err(e);
                break;
            }
        }
        pipe.report(|r| r.add(&report));
        result
    }

    /// Renews the claims of every image between claim and commit.
    async fn renew(&self, pipe: &Pipeline, lease: Duration) {
        let ids = pipe.in_flight_ids();
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self
            .catalog
            .renew_claims(ClaimKind::ScrubImage, &ids, &self.owner, lease)
            .await
        {
            tracing::warn!(error = %e, images = ids.len(),
                "could not renew the claims of the images being scrubbed");
        }
    }

    /// Deletes one run of locations, one after another, and classifies
    /// each outcome.
    async fn delete_run(&self, run: &[(usize, ScrubLocation)]) -> Vec<(usize, i64, Deleted)> {
        let mut targets = Vec::with_capacity(run.len());
        for (_, loc) in run {
            if let Ok(url) = &loc.url {
                let mut target = Location::new(url.clone()).with_image_id(loc.image_id.clone());
                if let Some(store) = loc.store() {
                    target = target.with_store(store);
                }
                targets.push(target);
            }
        }
        let mut deleted = self.store.delete_many(&targets).await.into_iter();
        run.iter()
            .map(|(i, loc)| {
                let span = tracing::info_span!("image", image_id = %loc.image_id, location_id = loc.location_id);
                let _entered = span.enter();
                // Only decrypted locations were handed to the store, in order.
                let res = match &loc.url {
                    Err(reason) => Deleted::Failed {
                        class: ErrorClass::Permanent,
                        reason: format!("location URL cannot be decrypted: {reason}"),
                    },
                    Ok(_) => match deleted.next() {
                        Some(res) => classify(loc, res),
                        None => Deleted::Failed {
                            class: ErrorClass::Transient,
                            reason: "the store returned no result for this location".into(),
                        },
                    },
                };
                (*i, loc.location_id, res)
            })
            .collect()
    }

    async fn record_failures(
        &self,
        image_id: &str,
        failed: &[(i64, ErrorClass, String)],
        report: &mut PassReport,
    ) -> Result<(), PassError> {
        let permanent = failed.iter().any(|(_, c, _)| *c == ErrorClass::Permanent);
        for (_, class, _) in failed {
            if *class == ErrorClass::Permanent {
                report.permanent += 1;
            } else {
                report.transient += 1;
            }
        }
        let reason = failed
            .iter()
            .map(|(id, c, r)| format!("location {id} ({c}): {r}"))
            .collect::<Vec<_>>()
            .join("; ");
        let attempts = self
            .catalog
            .claim_record(ClaimKind::ScrubImage, image_id)
            .await?
            .map_or(1, |r| r.attempts.max(1));
        let (class, wait) = if permanent {
            (CLASS_PERMANENT, PERMANENT_RETRY_AFTER)
        } else {
            (CLASS_TRANSIENT, transient_backoff(attempts))
        };
        let next = next_attempt(wait);
        if permanent {
            tracing::error!(image_id, %reason, retry_in_s = wait.as_secs(),
                "image cannot be scrubbed (permanent failure); it stays pending_delete");
        } else {
            tracing::warn!(image_id, %reason, attempts, retry_in_s = wait.as_secs(),
                "image could not be scrubbed (transient failure); will retry");
        }
        match self
            .catalog
            .record_failure(
                ClaimKind::ScrubImage,
                image_id,
                &self.owner,
                class,
                &reason,
                Some(next),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(CatalogError::Conflict { .. }) => {
                tracing::warn!(
                    image_id,
                    "claim was taken over before the failure could be recorded"
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn count_unclaimed(
        &self,
        ids: &[String],
        claimed: &[String],
        report: &mut PassReport,
    ) -> Result<(), PassError> {
        let claimed: std::collections::HashSet<&str> = claimed.iter().map(String::as_str).collect();
        let unclaimed: Vec<String> = ids
            .iter()
            .filter(|id| !claimed.contains(id.as_str()))
            .cloned()
            .collect();
        let now = utcnow();
        for rec in self
            .catalog
            .claim_records_of(ClaimKind::ScrubImage, &unclaimed)
            .await?
        {
            let live_owner = rec.owner.is_some() && rec.lease_expires_at.is_some_and(|t| t >= now);
            if live_owner {
                report.held_elsewhere_images += 1;
            } else if rec.next_attempt_at.is_some_and(|t| t > now) {
                report.backing_off_images += 1;
                tracing::debug!(image_id = %rec.unit_id, error_class = ?rec.error_class,
                    next_attempt_at = ?rec.next_attempt_at, "image in back-off after an earlier failure");
            } else {
                report.held_elsewhere_images += 1;
            }
        }
        Ok(())
    }

    /// Completes images left `pending_delete` with no pending location.
    async fn complete_stuck(&self, report: &mut PassReport) -> Result<(), PassError> {
        let mut after = String::new();
        loop {
            let ids = self.catalog.stuck_images(&after, 500).await?;
            let Some(last) = ids.last() else { break };
            after = last.clone();
            let n = ids.len();
            for id in self.catalog.finish_images(&ids).await? {
                tracing::info!(image_id = %id, "image had no pending location left; marked deleted");
                report.stuck_completed += 1;
                report.images_deleted += 1;
            }
            if n < 500 {
                break;
            }
        }
        Ok(())
    }
}

/// What a store delete result means for the location's row.
fn classify(loc: &ScrubLocation, res: Result<(), imaged_store::StoreError>) -> Deleted {
    match res {
        Ok(()) => Deleted::Gone { not_found: false },
        Err(e) if e.is_not_found() => {
            tracing::info!(image_id = %loc.image_id, location_id = loc.location_id,
                "location data already gone from the store; marking it deleted");
            Deleted::Gone { not_found: true }
        }
        Err(e) => Deleted::Failed {
            class: e.class(),
            reason: e.to_string(),
        },
    }
}

/// The transient back-off for the `attempts`-th attempt.
pub fn transient_backoff(attempts: i32) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 16)).unwrap_or(0);
    TRANSIENT_BACKOFF_MIN
        .saturating_mul(1u32 << exp)
        .min(TRANSIENT_BACKOFF_MAX)
}

fn next_attempt(wait: Duration) -> NaiveDateTime {
    utcnow() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(transient_backoff(1), Duration::from_secs(60));
        assert_eq!(transient_backoff(2), Duration::from_secs(120));
        assert_eq!(transient_backoff(4), Duration::from_secs(480));
        assert_eq!(transient_backoff(30), TRANSIENT_BACKOFF_MAX);
        assert_eq!(transient_backoff(0), Duration::from_secs(60));
    }

    #[test]
    fn exit_code_counts_backoff_as_failure() {
        let mut r = PassReport {
            scrubbed: 3,
            ..Default::default()
        };
        assert_eq!(r.exit_code(), ExitCode::Success);
        r.backing_off_images = 1;
        assert_eq!(r.exit_code(), ExitCode::WorkFailed);
        r.backing_off_images = 0;
        r.permanent = 1;
        assert_eq!(r.exit_code(), ExitCode::WorkFailed);
        assert!(r.summary().contains("permanent=1"));
    }
}
