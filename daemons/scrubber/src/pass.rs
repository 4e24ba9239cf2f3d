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

use std::collections::HashMap;
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
    /// stops it between pages; the page in flight is finished and
    /// committed first.
    pub async fn pass(
        &self,
        settings: &PassSettings,
        shutdown: &ShutdownToken,
    ) -> Result<PassReport, PassError> {
        let started = Instant::now();
        let mut report = PassReport::default();
        let query = ScrubQuery {
            scrub_time: settings.scrub_time,
            include_live_image_locations: true,
            page_size: settings.batch_size.max(1),
        };
        let mut after = 0i64;
        loop {
            if shutdown.is_cancelled() {
                report.interrupted = true;
                break;
            }
            // Listing pages are gathered into one unit of work so that a
            // claim and a commit (each a write transaction, an fsync on
            // SQLite) cover up to UNIT_LOCATIONS locations.
            let mut unit = Vec::new();
            let mut more = true;
            while more && unit.len() < UNIT_LOCATIONS {
                let page = self.catalog.scrub_page(&query, after).await?;
                more = page.len() as u64 >= u64::from(query.page_size);
                match page.last() {
                    Some(last) => after = last.location_id,
                    None => break,
                }
                unit.extend(page);
            }
            if unit.is_empty() {
                break;
            }
            report.due += unit.len() as u64;
            self.scrub_page(unit, settings, &mut report).await?;
            if !more {
                break;
            }
        }
        if !report.interrupted {
            self.complete_stuck(&mut report).await?;
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    async fn scrub_page(
        &self,
        page: Vec<ScrubLocation>,
        settings: &PassSettings,
        report: &mut PassReport,
    ) -> Result<(), PassError> {
        // Group by image, keeping listing order.
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut work: Vec<ImageWork> = Vec::new();
        for loc in page {
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
        let claimed = self
            .catalog
            .claim(ClaimKind::ScrubImage, &ids, &self.owner, settings.lease)
            .await?;
        if claimed.len() < ids.len() {
            self.count_unclaimed(&ids, &claimed, report).await?;
        }
        let claimed_ids = claimed.clone();
        let claimed: std::collections::HashSet<String> = claimed.into_iter().collect();
        work.retain(|w| claimed.contains(&w.image_id));
        if work.is_empty() {
            return Ok(());
        }
        // Another scrubber may have finished some locations between our
        // listing and our claim.
        let listed: Vec<i64> = work
            .iter()
            .flat_map(|w| w.locations.iter().map(|l| l.location_id))
            .collect();
        let pending: std::collections::HashSet<i64> = self
            .catalog
            .still_pending_locations(&claimed_ids, &listed)
            .await?
            .into_iter()
            .collect();
        let dropped = listed.len() - pending.len();
        report.conflicts += dropped as u64;
        for w in &mut work {
            w.locations.retain(|l| pending.contains(&l.location_id));
        }

        // Backend deletes: the unit is split into `pool_size` runs deleted
        // concurrently, each run one location after another (one store call,
        // so a run of files costs one blocking-pool round trip); at most
        // `pool_size` deletes are ever in flight.
        let mut jobs: Vec<(usize, ScrubLocation)> = work
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
        let deletes = futures::stream::iter(chunks)
            .map(|run| async move { self.delete_run(&run).await })
            .buffer_unordered(pool)
            .collect::<Vec<Vec<(usize, i64, Deleted)>>>();
        let runs = self
            .renewing_leases(&claimed_ids, settings.lease, deletes)
            .await;
        let results = runs.into_iter().flatten();

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
        let outcomes = self.catalog.commit_scrubbed(&self.owner, &batch).await?;
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
        for (i, w) in work.iter().enumerate() {
            if failed[i].is_empty() {
                continue;
            }
            self.record_failures(&w.image_id, &failed[i], report)
                .await?;
        }
        Ok(())
    }

    /// Runs `work` (a unit's deletes) while renewing the unit's claims
    /// every third of the lease, so that a unit slowed down by its backend
    /// never outlives its claims: a restore or another scrubber can take an
    /// image over only once this process stopped renewing it.
    async fn renewing_leases<T>(
        &self,
        image_ids: &[String],
        lease: Duration,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let every = (lease / 3).max(Duration::from_secs(1));
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = tokio::time::sleep(every) => {
                    if let Err(e) = self
                        .catalog
                        .renew_claims(ClaimKind::ScrubImage, image_ids, &self.owner, lease)
                        .await
                    {
                        tracing::warn!(error = %e, images = image_ids.len(),
                            "could not renew the claims of the images being scrubbed");
                    }
                }
            }
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
            for id in ids {
                if let FinishOutcome::Deleted = self.catalog.finish_image(&id).await? {
                    tracing::info!(image_id = %id, "image had no pending location left; marked deleted");
                    report.stuck_completed += 1;
                    report.images_deleted += 1;
                }
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
