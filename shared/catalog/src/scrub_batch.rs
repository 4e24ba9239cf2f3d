//! Batched scrubber writes and claim look-ups: committing many scrubbed
//! images in one short transaction, re-checking locations after a claim,
//! renewing the leases of many claimed images at once, and reading the
//! claim rows of many images at once.
//!
//! Why batches: on SQLite every commit is a write lock plus an fsync, so a
//! commit per location (as Glance's scrubber does) costs milliseconds per
//! image and, with several writers, ends in "database is locked". One
//! transaction per group of images keeps the lock short and the fsync count
//! low, and makes each image's location and image updates land together.
//! Every status change stays compare-and-set, so a concurrent restore or a
//! second scrubber that changed a row first wins cleanly.

use std::collections::HashMap;

use sqlx::Row;

use crate::claims::{
    ClaimKind, ClaimOwner, ClaimRecord, MAX_IDS_PER_STATEMENT, claim_record_row, lease_end,
};
use crate::db::{BeginWrite, Catalog, on_pool};
use crate::error::Result;
use crate::scrub::FinishOutcome;
use crate::time::{Ts, utcnow};

/// The locations of one claimed image whose data is gone, to be committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubbedImage {
    /// The image.
    pub image_id: String,
    /// Locations whose data was deleted or found missing.
    pub location_ids: Vec<i64>,
    /// Remove the image's claim row in the same transaction (the image
    /// needs no more work from this owner). Leave it `false` when a failure
    /// is recorded for the image afterwards.
    pub release: bool,
}

/// What committing one image changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The image.
    pub image_id: String,
    /// Locations moved `pending_delete → deleted`.
    pub marked: u64,
    /// Locations that were no longer `pending_delete` (a concurrent writer
    /// won), with the status found (`None` = row gone).
    pub conflicts: Vec<(i64, Option<String>)>,
    /// The image's own transition.
    pub finish: FinishOutcome,
    /// `images.size`, when recorded.
    pub image_size: Option<i64>,
}

/// Images per commit transaction.
const IMAGES_PER_COMMIT: usize = 500;

fn group_bounds(images: &[ScrubbedImage]) -> Vec<std::ops::Range<usize>> {
    // Bounded both in images and in locations so one transaction stays short.
    let mut out = Vec::new();
    let mut start = 0;
    let mut locs = 0;
    for (i, img) in images.iter().enumerate() {
        if i > start
            && (i - start >= IMAGES_PER_COMMIT
                || locs + img.location_ids.len() > 2 * IMAGES_PER_COMMIT)
        {
            out.push(start..i);
            start = i;
            locs = 0;
        }
        locs += img.location_ids.len();
    }
    if start < images.len() {
        out.push(start..images.len());
    }
    out
}

impl Catalog {
    /// Of `location_ids`, the locations still `pending_delete`, in
    /// ascending order. Called after claiming `image_ids`: a location
    /// another scrubber finished (or a restore reactivated) between the
    /// listing and the claim is dropped here, so no data is deleted twice
    /// and no restored image loses its data.
    ///
    /// On PostgreSQL and MySQL the claimed image rows are locked
    /// (`FOR UPDATE`) while the locations are read. A restore locks the
    /// image row before it looks for claims, so either the restore
    /// committed first (and its locations are no longer pending here), or
    /// this check ran first and the restore sees the claim and refuses. On
    /// SQLite a restore is one `BEGIN IMMEDIATE` transaction, which gives
    /// the same order without locks.
    pub async fn still_pending_locations(
        &self,
        image_ids: &[String],
        location_ids: &[i64],
    ) -> Result<Vec<i64>> {
        let mut out = self
            .with_retry("pending locations", || {
                self.pending_locations_once(image_ids, location_ids)
            })
            .await?;
        out.sort_unstable();
        Ok(out)
    }

    async fn pending_locations_once(
        &self,
        image_ids: &[String],
        location_ids: &[i64],
    ) -> Result<Vec<i64>> {
        let mut out = Vec::with_capacity(location_ids.len());
        let lock_images = self.engine() != crate::Engine::Sqlite;
        on_pool!(&self.pool, p => {
            let mut tx = if lock_images { Some(p.begin().await?) } else { None };
            if let Some(tx) = tx.as_mut() {
                for chunk in image_ids.chunks(MAX_IDS_PER_STATEMENT) {
                    let sql = self.sql(&format!(
                        "SELECT id FROM images WHERE id IN ({}) FOR UPDATE",
                        Catalog::marks(chunk.len())
                    ));
                    let mut q = sqlx::query_scalar::<_, String>(sql);
                    for id in chunk {
                        q = q.bind(id.as_str());
                    }
                    q.fetch_all(&mut **tx).await?;
                }
            }
            for chunk in location_ids.chunks(MAX_IDS_PER_STATEMENT) {
                let sql = self.sql(&format!(
                    "SELECT id FROM image_locations WHERE id IN ({}) AND status = 'pending_delete'",
                    Catalog::marks(chunk.len())
                ));
                let mut q = sqlx::query_scalar::<_, i32>(sql);
                for id in chunk {
                    q = q.bind(*id);
                }
                let ids = match tx.as_mut() {
                    Some(tx) => q.fetch_all(&mut **tx).await?,
                    None => q.fetch_all(p).await?,
                };
                out.extend(ids.into_iter().map(i64::from));
            }
            if let Some(tx) = tx {
                tx.commit().await?;
            }
        });
        Ok(out)
    }

    /// Commits scrubbed images: their locations become `deleted` exactly as
    /// Glance's scrubber leaves them (`status = 'deleted', deleted = 1,
    /// deleted_at = updated_at = now`), each image with no `pending_delete`
    /// location left becomes `deleted` (only `status` and `updated_at`
    /// change), and with `release` the claim row of `owner` is removed —
    /// all of one image in the same transaction, many images per
    /// transaction. Returns one outcome per image, in input order.
    pub async fn commit_scrubbed(
        &self,
        owner: &ClaimOwner,
        images: &[ScrubbedImage],
    ) -> Result<Vec<CommitOutcome>> {
        let mut out = Vec::with_capacity(images.len());
        for range in group_bounds(images) {
            let group = &images[range];
            let part = self
                .with_retry("commit scrubbed images", || self.commit_group(owner, group))
                .await?;
            out.extend(part);
        }
        Ok(out)
    }

    async fn commit_group(
        &self,
        owner: &ClaimOwner,
        group: &[ScrubbedImage],
    ) -> Result<Vec<CommitOutcome>> {
        let now = Ts(utcnow());
        let lock = if self.engine() == crate::Engine::Sqlite {
            ""
        } else {
            " FOR UPDATE"
        };
        let loc_ids: Vec<i64> = group
            .iter()
            .flat_map(|g| g.location_ids.iter().copied())
            .collect();
        let img_ids: Vec<&str> = group.iter().map(|g| g.image_id.as_str()).collect();
        let released: Vec<&str> = group
            .iter()
            .filter(|g| g.release)
            .map(|g| g.image_id.as_str())
            .collect();
        let out = on_pool!(&self.pool, p => {
            let mut tx = p.begin_write().await?;
            // Location statuses before the update, under the write lock.
            let mut before: HashMap<i64, String> = HashMap::with_capacity(loc_ids.len());
            for chunk in loc_ids.chunks(MAX_IDS_PER_STATEMENT) {
                let sel = self.sql(&format!(
                    "SELECT id, status FROM image_locations WHERE id IN ({}){lock}",
                    Catalog::marks(chunk.len())
                ));
                let mut q = sqlx::query(sel);
                for id in chunk {
                    q = q.bind(*id);
                }
                for r in q.fetch_all(&mut *tx).await? {
                    before.insert(i64::from(r.try_get::<i32, _>("id")?), r.try_get::<String, _>("status")?);
                }
            }
            let pending: Vec<i64> = loc_ids.iter().copied().filter(|id| before.get(id).is_some_and(|s| s == "pending_delete")).collect();
            for chunk in pending.chunks(MAX_IDS_PER_STATEMENT) {
                let upd = self.sql(&format!(
                    "UPDATE image_locations SET status = 'deleted', deleted = TRUE, deleted_at = ?, updated_at = ? \
                     WHERE id IN ({}) AND status = 'pending_delete'",
                    Catalog::marks(chunk.len())
                ));
                let mut q = sqlx::query(upd).bind(now).bind(now);
                for id in chunk {
                    q = q.bind(*id);
                }
                q.execute(&mut *tx).await?;
            }
            let mut status: HashMap<String, String> = HashMap::with_capacity(img_ids.len());
            let mut sizes: HashMap<String, Option<i64>> = HashMap::with_capacity(img_ids.len());
            let mut remaining: HashMap<String, i64> = HashMap::new();
            for chunk in img_ids.chunks(MAX_IDS_PER_STATEMENT) {
                let marks = Catalog::marks(chunk.len());
                let fin = self.sql(&format!(
                    "UPDATE images SET status = 'deleted', updated_at = ? WHERE id IN ({marks}) AND status = 'pending_delete' \
                     AND NOT EXISTS (SELECT 1 FROM image_locations l WHERE l.image_id = images.id AND l.status = 'pending_delete')"
                ));
                let mut q = sqlx::query(fin).bind(now);
                for id in chunk {
                    q = q.bind(*id);
                }
                q.execute(&mut *tx).await?;
                let sel = self.sql(&format!("SELECT id, status, size FROM images WHERE id IN ({marks})"));
                let mut q = sqlx::query(sel);
                for id in chunk {
                    q = q.bind(*id);
                }
                for r in q.fetch_all(&mut *tx).await? {
                    let id: String = r.try_get("id")?;
                    sizes.insert(id.clone(), r.try_get::<Option<i64>, _>("size")?);
                    status.insert(id, r.try_get("status")?);
                }
                let still: Vec<&str> = chunk.iter().copied().filter(|id| status.get(*id).is_some_and(|s| s == "pending_delete")).collect();
                if !still.is_empty() {
                    let cnt = self.sql(&format!(
                        "SELECT image_id, COUNT(*) AS n FROM image_locations WHERE image_id IN ({}) AND status = 'pending_delete' GROUP BY image_id",
                        Catalog::marks(still.len())
                    ));
                    let mut q = sqlx::query(cnt);
                    for id in &still {
                        q = q.bind(*id);
                    }
                    for r in q.fetch_all(&mut *tx).await? {
                        remaining.insert(r.try_get("image_id")?, r.try_get::<i64, _>("n")?);
                    }
                }
            }
            for chunk in released.chunks(MAX_IDS_PER_STATEMENT) {
                let del = self.sql(&format!(
                    "DELETE FROM imaged_claims WHERE kind = ? AND owner = ? AND unit_id IN ({})",
                    Catalog::marks(chunk.len())
                ));
                let mut q = sqlx::query(del).bind(ClaimKind::ScrubImage.as_str()).bind(owner.as_str());
                for id in chunk {
                    q = q.bind(*id);
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            group.iter().map(|g| {
                let mut marked = 0;
                let mut conflicts = Vec::new();
                for id in &g.location_ids {
                    match before.get(id) {
                        Some(s) if s == "pending_delete" => marked += 1,
                        Some(s) => conflicts.push((*id, Some(s.clone()))),
                        None => conflicts.push((*id, None)),
                    }
                }
                let finish = match status.get(&g.image_id) {
                    None => FinishOutcome::NotFound,
                    Some(s) if s == "deleted" => FinishOutcome::Deleted,
                    Some(s) if s == "pending_delete" => FinishOutcome::LocationsRemaining(remaining.get(&g.image_id).copied().unwrap_or(0)),
                    Some(s) => FinishOutcome::Conflict(s.clone()),
                };
                let image_size = sizes.get(&g.image_id).copied().flatten();
                CommitOutcome { image_id: g.image_id.clone(), marked, conflicts, finish, image_size }
            }).collect::<Vec<_>>()
        });
        Ok(out)
    }

    /// Extends the leases `owner` holds on `unit_ids` by `lease` from now,
    /// one statement per up to 200 ids (a unit of work that outlives part
    /// of its lease renews all its images at once). Units `owner` no
    /// longer holds are left alone.
    pub async fn renew_claims(
        &self,
        kind: ClaimKind,
        unit_ids: &[String],
        owner: &ClaimOwner,
        lease: std::time::Duration,
    ) -> Result<()> {
        for chunk in unit_ids.chunks(MAX_IDS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE imaged_claims SET lease_expires_at = ?, updated_at = ? \
                 WHERE kind = ? AND owner = ? AND unit_id IN ({})",
                Catalog::marks(chunk.len())
            );
            self.with_retry("renew claims", || async {
                let now = utcnow();
                let until = lease_end(now, lease);
                let sql = self.sql(&sql);
                on_pool!(&self.pool, p => {
                    let mut q = sqlx::query(sql)
                        .bind(Ts(until))
                        .bind(Ts(now))
                        .bind(kind.as_str())
                        .bind(owner.as_str());
                    for id in chunk {
                        q = q.bind(id.as_str());
                    }
                    q.execute(p).await?;
                });
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// The claim rows of `kind` for the given units (missing rows are
    /// simply absent).
    pub async fn claim_records_of(
        &self,
        kind: ClaimKind,
        unit_ids: &[String],
    ) -> Result<Vec<ClaimRecord>> {
        let mut out = Vec::new();
        for chunk in unit_ids.chunks(MAX_IDS_PER_STATEMENT) {
            let text = format!(
                "SELECT kind, unit_id, owner, lease_expires_at, attempts, last_error, error_class, next_attempt_at \
                 FROM imaged_claims WHERE kind = ? AND unit_id IN ({}) ORDER BY unit_id",
                Catalog::marks(chunk.len())
            );
            let part = self
                .with_retry("claim records", || async {
                    let sql = self.sql(&text);
                    Ok(on_pool!(&self.pool, p => {
                        let mut q = sqlx::query(sql).bind(kind.as_str());
                        for id in chunk {
                            q = q.bind(id.as_str());
                        }
                        let mut v = Vec::new();
                        for r in q.fetch_all(p).await? {
                            v.push(claim_record_row(&r)?);
                        }
                        v
                    }))
                })
                .await?;
            out.extend(part);
        }
        Ok(out)
    }

    /// Claim rows of `kind` that carry a recorded failure, oldest unit id
    /// first, at most `limit`.
    pub async fn failed_claims(&self, kind: ClaimKind, limit: u32) -> Result<Vec<ClaimRecord>> {
        let text = "SELECT kind, unit_id, owner, lease_expires_at, attempts, last_error, error_class, next_attempt_at \
             FROM imaged_claims WHERE kind = ? AND error_class IS NOT NULL ORDER BY unit_id LIMIT ?";
        self.with_retry("failed claims", || async {
            let sql = self.sql(text);
            Ok(on_pool!(self.reader(), p => {
                let mut v = Vec::new();
                for r in sqlx::query(sql).bind(kind.as_str()).bind(i64::from(limit)).fetch_all(p).await? {
                    v.push(claim_record_row(&r)?);
                }
                v
            }))
        })
        .await
    }
}
