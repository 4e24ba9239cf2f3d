//! Scrubber operations: keyset-paged listing of locations awaiting
//! scrubbing, compare-and-set location and image transitions in bounded
//! batches, images stuck in `pending_delete`, a complete restore, and status
//! counts.
//!
//! Listing starts from `image_locations WHERE deleted AND status =
//! 'pending_delete'` joined to `images`, applies `scrub_time` in SQL and
//! pages by location id (the primary key), so every page is an index range
//! scan and memory stays flat. Rows come in location-id order; every row
//! yielded is already due, so the order among them does not decide
//! correctness. Images of every visibility are included (Glance skips
//! `community` images).

use std::time::Duration;

use chrono::NaiveDateTime;
use futures::{Stream, StreamExt, TryStreamExt, stream};
use sqlx::Row;

use crate::claims::{ClaimKind, MAX_IDS_PER_STATEMENT};
use crate::db::{BeginWrite, Catalog, on_pool};
use crate::error::{CatalogError, Result};
use crate::time::{Ts, utcnow};

/// What to list.
#[derive(Debug, Clone)]
pub struct ScrubQuery {
    /// `scrub_time`: an image is due when `deleted_at + scrub_time <= now`.
    pub scrub_time: Duration,
    /// Also list `pending_delete` locations of images that are not
    /// `pending_delete` themselves (a location removed from a live image),
    /// due by the location's own `deleted_at`.
    pub include_live_image_locations: bool,
    /// Rows per page (each page is one query).
    pub page_size: u32,
}

impl Default for ScrubQuery {
    fn default() -> Self {
        ScrubQuery {
            scrub_time: Duration::ZERO,
            include_live_image_locations: false,
            page_size: 1000,
        }
    }
}

/// One location awaiting scrubbing, with its image.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrubLocation {
    pub image_id: String,
    pub location_id: i64,
    /// The location URL, decrypted when `metadata_encryption_key` is set.
    /// `Err` holds the reason when this one row cannot be decrypted; the
    /// listing goes on.
    pub url: std::result::Result<String, String>,
    /// `meta_data` as stored; `{}` when NULL or not a JSON object.
    pub meta_data: serde_json::Value,
    pub image_status: String,
    pub image_deleted_at: Option<NaiveDateTime>,
    pub location_deleted_at: Option<NaiveDateTime>,
    pub visibility: String,
}

impl ScrubLocation {
    /// The backend name: `store`, else the pre-Train key `backend`.
    pub fn store(&self) -> Option<&str> {
        self.meta_data
            .get("store")
            .and_then(|v| v.as_str())
            .or_else(|| self.meta_data.get("backend").and_then(|v| v.as_str()))
    }
}

/// Result of a compare-and-set on one location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocationOutcome {
    /// The row moved to the new status.
    Updated,
    /// The row was not in the expected status (a concurrent writer won);
    /// holds the status found.
    Conflict(String),
    /// No such row (purged).
    Missing,
}

/// Result of finishing an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishOutcome {
    /// `pending_delete → deleted` done.
    Deleted,
    /// Locations still `pending_delete`; the image stays.
    LocationsRemaining(i64),
    /// The image was no longer `pending_delete` (restored, or finished by
    /// someone else); holds the status found.
    Conflict(String),
    /// No such image.
    NotFound,
}

/// What a restore changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestoreReport {
    pub locations: u64,
    pub properties: u64,
    pub tags: u64,
    pub members: u64,
}

/// Counts for `imaged-scrubber status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScrubStatus {
    /// Images in `pending_delete`.
    pub pending_images: i64,
    /// Of those, images already past `scrub_time`.
    pub due_images: i64,
    /// Locations in `pending_delete` under `pending_delete` images.
    pub pending_locations: i64,
    /// `pending_delete` locations under images that are not `pending_delete`.
    pub live_image_pending_locations: i64,
    /// `pending_delete` images without any `pending_delete` location.
    pub stuck_images: i64,
    /// Scrub claims currently held with a live lease.
    pub claimed_images: i64,
    /// Recorded failures by error class.
    pub failures_by_class: Vec<(String, i64)>,
}

fn cutoff(scrub_time: Duration) -> NaiveDateTime {
    utcnow() - chrono::Duration::from_std(scrub_time).unwrap_or(chrono::Duration::zero())
}

/// Window around the image's `deleted_at` in which child rows count as
/// deleted together with it (MySQL keeps whole seconds).
const SAME_DELETE_WINDOW: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

impl Catalog {
    fn decode_url(&self, stored: &str) -> std::result::Result<String, String> {
        match &self.cipher {
            None => Ok(stored.to_string()),
            Some(c) => c.read_value(stored).map_err(|e| e.to_string()),
        }
    }

    /// One page of the scrub listing: locations with id greater than
    /// `after`, at most `query.page_size`.
    pub async fn scrub_page(&self, query: &ScrubQuery, after: i64) -> Result<Vec<ScrubLocation>> {
        let live = if query.include_live_image_locations {
            " OR (i.status <> 'pending_delete' AND l.deleted_at <= ?)"
        } else {
            ""
        };
        let sql = format!(
            "SELECT l.id AS location_id, l.image_id AS image_id, l.value AS value, l.meta_data AS meta_data, \
                    l.deleted_at AS l_deleted_at, i.status AS image_status, i.deleted_at AS i_deleted_at, \
                    {} AS visibility \
             FROM image_locations l JOIN images i ON i.id = l.image_id \
             WHERE l.deleted = TRUE AND l.status = 'pending_delete' AND l.id > ? \
               AND ((i.status = 'pending_delete' AND i.deleted_at <= ?){live}) \
             ORDER BY l.id LIMIT ?",
            self.vis_read("i.visibility")
        );
        let cut = Ts(cutoff(query.scrub_time));
        let limit = i64::from(query.page_size.max(1));
        let include_live = query.include_live_image_locations;
        self.with_retry("scrub listing", || async {
            let sql = self.sql(&sql);
            let out = on_pool!(self.reader(), p => {
                let mut q = sqlx::query(sql).bind(after).bind(cut);
                if include_live {
                    q = q.bind(cut);
                }
                let rows = q.bind(limit).fetch_all(p).await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let value: String = r.try_get("value")?;
                    let meta: Option<String> = r.try_get("meta_data")?;
                    out.push(ScrubLocation {
                        image_id: r.try_get("image_id")?,
                        location_id: i64::from(r.try_get::<i32, _>("location_id")?),
                        url: self.decode_url(&value),
                        meta_data: crate::json::loads_or_empty(meta.as_deref()),
                        image_status: r.try_get("image_status")?,
                        image_deleted_at: r.try_get::<Option<Ts>, _>("i_deleted_at")?.map(|t| t.0),
                        location_deleted_at: r.try_get::<Option<Ts>, _>("l_deleted_at")?.map(|t| t.0),
                        visibility: r.try_get("visibility")?,
                    });
                }
                out
            });
            Ok(out)
        })
        .await
    }

    /// The whole scrub listing as a stream, fetched page by page (one page
    /// in memory at a time).
    pub fn scrub_stream(
        &self,
        query: ScrubQuery,
    ) -> impl Stream<Item = Result<ScrubLocation>> + '_ {
        stream::try_unfold((0i64, false), move |(after, done)| {
            let query = query.clone();
            async move {
                if done {
                    return Ok::<_, CatalogError>(None);
                }
                let page = self.scrub_page(&query, after).await?;
                let full = page.len() as u64 >= u64::from(query.page_size.max(1));
                let next = page.last().map(|l| l.location_id).unwrap_or(after);
                Ok(Some((page, (next, !full))))
            }
        })
        .map_ok(|page| stream::iter(page.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    /// Ids of `pending_delete` images that are due and have at least one
    /// `pending_delete` location, after `after` in id order.
    pub async fn due_scrub_images(
        &self,
        scrub_time: Duration,
        after: &str,
        limit: u32,
    ) -> Result<Vec<String>> {
        let sql = "SELECT i.id FROM images i WHERE i.deleted = TRUE AND i.status = 'pending_delete' \
                   AND i.deleted_at <= ? AND i.id > ? AND EXISTS (SELECT 1 FROM image_locations l \
                   WHERE l.image_id = i.id AND l.deleted = TRUE AND l.status = 'pending_delete') \
                   ORDER BY i.id LIMIT ?";
        let cut = Ts(cutoff(scrub_time));
        self.with_retry("due images", || async {
            let sql = self.sql(sql);
            Ok(on_pool!(self.reader(), p => {
                sqlx::query_scalar(sql).bind(cut).bind(after).bind(i64::from(limit)).fetch_all(p).await?
            }))
        })
        .await
    }

    /// The `pending_delete` locations of one image (whatever its status).
    pub async fn image_scrub_locations(&self, image_id: &str) -> Result<Vec<ScrubLocation>> {
        let sql = format!(
            "SELECT l.id AS location_id, l.image_id AS image_id, l.value AS value, l.meta_data AS meta_data, \
                    l.deleted_at AS l_deleted_at, i.status AS image_status, i.deleted_at AS i_deleted_at, \
                    {} AS visibility \
             FROM image_locations l JOIN images i ON i.id = l.image_id \
             WHERE l.image_id = ? AND l.deleted = TRUE AND l.status = 'pending_delete' ORDER BY l.id",
            self.vis_read("i.visibility")
        );
        self.with_retry("image scrub locations", || async {
            let sql = self.sql(&sql);
            Ok(on_pool!(&self.pool, p => {
                let rows = sqlx::query(sql).bind(image_id).fetch_all(p).await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let value: String = r.try_get("value")?;
                    let meta: Option<String> = r.try_get("meta_data")?;
                    out.push(ScrubLocation {
                        image_id: r.try_get("image_id")?,
                        location_id: i64::from(r.try_get::<i32, _>("location_id")?),
                        url: self.decode_url(&value),
                        meta_data: crate::json::loads_or_empty(meta.as_deref()),
                        image_status: r.try_get("image_status")?,
                        image_deleted_at: r.try_get::<Option<Ts>, _>("i_deleted_at")?.map(|t| t.0),
                        location_deleted_at: r.try_get::<Option<Ts>, _>("l_deleted_at")?.map(|t| t.0),
                        visibility: r.try_get("visibility")?,
                    });
                }
                out
            }))
        })
        .await
    }

    /// Marks scrubbed locations `deleted` exactly as Glance's scrubber does
    /// (`status = 'deleted', deleted = 1, deleted_at = updated_at = now`),
    /// each only if it is still `pending_delete`. Work is split into
    /// transactions of at most `batch` locations so a SQLite write lock is
    /// held only briefly. Returns one outcome per id, in input order.
    pub async fn mark_locations_scrubbed(
        &self,
        ids: &[i64],
        batch: usize,
    ) -> Result<Vec<(i64, LocationOutcome)>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(batch.clamp(1, MAX_IDS_PER_STATEMENT)) {
            let part = self
                .with_retry("mark locations scrubbed", || self.mark_chunk(chunk))
                .await?;
            out.extend(part);
        }
        Ok(out)
    }

    async fn mark_chunk(&self, ids: &[i64]) -> Result<Vec<(i64, LocationOutcome)>> {
        let upd = self.sql(
            "UPDATE image_locations SET status = 'deleted', deleted = TRUE, deleted_at = ?, updated_at = ? \
             WHERE id = ? AND status = 'pending_delete'",
        );
        let sel = self.sql(&format!(
            "SELECT id, status FROM image_locations WHERE id IN ({})",
            Catalog::marks(ids.len())
        ));
        let now = Ts(utcnow());
        let out = on_pool!(&self.pool, p => {
            let mut tx = p.begin_write().await?;
            let mut updated = Vec::with_capacity(ids.len());
            for id in ids {
                let n = sqlx::query(sqlx::AssertSqlSafe(upd.0.clone())).bind(now).bind(now).bind(*id).execute(&mut *tx).await?.rows_affected();
                updated.push(n > 0);
            }
            let mut found = std::collections::HashMap::new();
            if updated.iter().any(|u| !u) {
                let mut q = sqlx::query(sel);
                for id in ids {
                    q = q.bind(*id);
                }
                for r in q.fetch_all(&mut *tx).await? {
                    found.insert(i64::from(r.try_get::<i32, _>("id")?), r.try_get::<String, _>("status")?);
                }
            }
            tx.commit().await?;
            ids.iter().zip(updated).map(|(id, ok)| {
                let o = if ok {
                    LocationOutcome::Updated
                } else {
                    match found.get(id) {
                        Some(s) => LocationOutcome::Conflict(s.clone()),
                        None => LocationOutcome::Missing,
                    }
                };
                (*id, o)
            }).collect::<Vec<_>>()
        });
        Ok(out)
    }

    /// `pending_delete → deleted` for an image, only while it is still
    /// `pending_delete` and none of its locations is; sets only `status` and
    /// `updated_at`, as Glance does (`deleted` and `deleted_at` stay).
    pub async fn finish_image(&self, image_id: &str) -> Result<FinishOutcome> {
        self.with_retry("finish image", || async {
            let now = Ts(utcnow());
            let upd = self.sql(
                "UPDATE images SET status = 'deleted', updated_at = ? WHERE id = ? AND status = 'pending_delete' \
                 AND NOT EXISTS (SELECT 1 FROM image_locations l WHERE l.image_id = ? AND l.status = 'pending_delete')",
            );
            let st = self.sql("SELECT status FROM images WHERE id = ?");
            let cnt = self.sql("SELECT COUNT(*) FROM image_locations WHERE image_id = ? AND status = 'pending_delete'");
            Ok(on_pool!(&self.pool, p => {
                let n = sqlx::query(upd).bind(now).bind(image_id).bind(image_id).execute(p).await?.rows_affected();
                if n > 0 {
                    FinishOutcome::Deleted
                } else {
                    let status: Option<String> = sqlx::query_scalar(st).bind(image_id).fetch_optional(p).await?;
                    match status {
                        None => FinishOutcome::NotFound,
                        Some(s) if s != "pending_delete" => FinishOutcome::Conflict(s),
                        Some(_) => {
                            let c: i64 = sqlx::query_scalar(cnt).bind(image_id).fetch_one(p).await?;
                            FinishOutcome::LocationsRemaining(c)
                        }
                    }
                }
            }))
        })
        .await
    }

    /// [`Catalog::finish_image`] for many images in one write transaction:
    /// the images are locked, those still `pending_delete` without a
    /// `pending_delete` location become `deleted` (`status` and
    /// `updated_at` only, as Glance does). Returns the ids that did.
    pub async fn finish_images(&self, image_ids: &[String]) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for chunk in image_ids.chunks(MAX_IDS_PER_STATEMENT) {
            let part = self
                .with_retry("finish images", || self.finish_chunk(chunk))
                .await?;
            done.extend(part);
        }
        Ok(done)
    }

    async fn finish_chunk(&self, ids: &[String]) -> Result<Vec<String>> {
        let now = Ts(utcnow());
        let lock = match self.engine() {
            crate::Engine::Sqlite => "",
            _ => " FOR UPDATE",
        };
        let due = "status = 'pending_delete' AND NOT EXISTS (SELECT 1 FROM image_locations l \
                   WHERE l.image_id = images.id AND l.status = 'pending_delete')";
        let marks = Catalog::marks(ids.len());
        let select = self.sql(&format!(
            "SELECT id FROM images WHERE id IN ({marks}) AND {due} ORDER BY id{lock}"
        ));
        Ok(on_pool!(&self.pool, p => {
            let mut tx = p.begin_write().await?;
            let mut q = sqlx::query_scalar(select);
            for id in ids {
                q = q.bind(id.as_str());
            }
            let picked: Vec<String> = q.fetch_all(&mut *tx).await?;
            if !picked.is_empty() {
                let upd = self.sql(&format!(
                    "UPDATE images SET status = 'deleted', updated_at = ? WHERE id IN ({}) AND {due}",
                    Catalog::marks(picked.len())
                ));
                let mut q = sqlx::query(upd).bind(now);
                for id in &picked {
                    q = q.bind(id.as_str());
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            picked
        }))
    }

    /// `pending_delete` images with no `pending_delete` location left
    /// (interrupted scrubs, purged location rows), after `after` in id order.
    pub async fn stuck_images(&self, after: &str, limit: u32) -> Result<Vec<String>> {
        let sql = "SELECT i.id FROM images i WHERE i.deleted = TRUE AND i.status = 'pending_delete' AND i.id > ? \
                   AND NOT EXISTS (SELECT 1 FROM image_locations l WHERE l.image_id = i.id AND l.status = 'pending_delete') \
                   ORDER BY i.id LIMIT ?";
        self.with_retry("stuck images", || async {
            let sql = self.sql(sql);
            Ok(on_pool!(self.reader(), p => {
                sqlx::query_scalar(sql).bind(after).bind(i64::from(limit)).fetch_all(p).await?
            }))
        })
        .await
    }

    /// Restores a `pending_delete` image completely: the image becomes
    /// `active` and undeleted, its `pending_delete` locations become
    /// `active`, and the properties, tags and members soft-deleted together
    /// with it (same `deleted_at`) are undeleted, all in one transaction.
    /// Refused with `Conflict` when the image is not `pending_delete`, when a
    /// scrubber holds a live claim on it, or when any of its locations was
    /// already scrubbed.
    pub async fn restore_image(&self, image_id: &str) -> Result<RestoreReport> {
        self.with_retry("restore image", || self.restore_once(image_id))
            .await
    }

    async fn restore_once(&self, image_id: &str) -> Result<RestoreReport> {
        let now = Ts(utcnow());
        // The image row is locked first and the claim and location checks
        // read the latest committed rows (MySQL's REPEATABLE READ would
        // otherwise answer them from the transaction's first snapshot), so
        // a scrubber's claim committed before this lock is always seen, and
        // a scrubber re-checking its claimed images after this lock waits
        // for the restore to commit (see `still_pending_locations`).
        let (lock, share) = match self.engine() {
            crate::Engine::Sqlite => ("", ""),
            crate::Engine::Postgres => (" FOR UPDATE", ""),
            crate::Engine::MySql => (" FOR UPDATE", " LOCK IN SHARE MODE"),
        };
        let get = self.sql(&format!(
            "SELECT status, deleted_at FROM images WHERE id = ?{lock}"
        ));
        let claimed = self.sql(&format!(
            "SELECT COUNT(*) FROM imaged_claims WHERE kind = ? AND unit_id = ? AND owner IS NOT NULL AND lease_expires_at >= ?{share}"
        ));
        let scrubbed = self.sql(&format!(
            "SELECT COUNT(*) FROM image_locations WHERE image_id = ? AND status = 'deleted' AND deleted_at > ?{share}"
        ));
        let img = self.sql(
            "UPDATE images SET status = 'active', deleted = FALSE, deleted_at = NULL, updated_at = ? \
             WHERE id = ? AND status = 'pending_delete'",
        );
        let locs = self.sql(
            "UPDATE image_locations SET status = 'active', deleted = FALSE, deleted_at = NULL, updated_at = ? \
             WHERE image_id = ? AND status = 'pending_delete'",
        );
        let child = |t: &str| {
            self.sql(&format!(
                "UPDATE {t} SET deleted = FALSE, deleted_at = NULL, updated_at = ? \
                 WHERE image_id = ? AND deleted = TRUE AND deleted_at >= ? AND deleted_at <= ?"
            ))
        };
        let (props, tags, members) = (
            child("image_properties"),
            child("image_tags"),
            child("image_members"),
        );
        let conflict = |found: Option<String>, why: &str| CatalogError::Conflict {
            kind: "image",
            id: image_id.to_string(),
            expected: format!("pending_delete{why}"),
            found,
        };
        let report = on_pool!(&self.pool, p => {
            let mut tx = p.begin_write().await?;
            let row = sqlx::query(get).bind(image_id).fetch_optional(&mut *tx).await?;
            let Some(row) = row else {
                return Err(CatalogError::NotFound { kind: "image", id: image_id.to_string() });
            };
            let status: String = row.try_get("status")?;
            let deleted_at: Option<Ts> = row.try_get("deleted_at")?;
            if status != "pending_delete" {
                return Err(conflict(Some(status), ""));
            }
            let held: i64 = sqlx::query_scalar(claimed).bind(ClaimKind::ScrubImage.as_str()).bind(image_id).bind(now).fetch_one(&mut *tx).await?;
            if held > 0 {
                return Err(conflict(Some("pending_delete (being scrubbed)".into()), " and not being scrubbed"));
            }
            let t = deleted_at.map(|t| t.0).unwrap_or(now.0);
            let gone: i64 = sqlx::query_scalar(scrubbed).bind(image_id).bind(Ts(t + SAME_DELETE_WINDOW)).fetch_one(&mut *tx).await?;
            if gone > 0 {
                return Err(conflict(Some(format!("pending_delete with {gone} scrubbed location(s)")), " with all data present"));
            }
            let n = sqlx::query(img).bind(now).bind(image_id).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(conflict(None, ""));
            }
            let mut rep = RestoreReport {
                locations: sqlx::query(locs).bind(now).bind(image_id).execute(&mut *tx).await?.rows_affected(),
                ..Default::default()
            };
            let lo = Ts(t - SAME_DELETE_WINDOW);
            let hi = Ts(t + SAME_DELETE_WINDOW);
            rep.properties = sqlx::query(props).bind(now).bind(image_id).bind(lo).bind(hi).execute(&mut *tx).await?.rows_affected();
            rep.tags = sqlx::query(tags).bind(now).bind(image_id).bind(lo).bind(hi).execute(&mut *tx).await?.rows_affected();
            rep.members = sqlx::query(members).bind(now).bind(image_id).bind(lo).bind(hi).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            rep
        });
        Ok(report)
    }

    /// Counts for a status report.
    pub async fn scrub_status(&self, scrub_time: Duration) -> Result<ScrubStatus> {
        let cut = Ts(cutoff(scrub_time));
        let now = Ts(utcnow());
        let q_pending = self
            .sql("SELECT COUNT(*) FROM images WHERE deleted = TRUE AND status = 'pending_delete'");
        let q_due = self.sql(
            "SELECT COUNT(*) FROM images WHERE deleted = TRUE AND status = 'pending_delete' AND deleted_at <= ?",
        );
        let q_locs = self.sql(
            "SELECT COUNT(*) FROM image_locations l JOIN images i ON i.id = l.image_id \
             WHERE l.deleted = TRUE AND l.status = 'pending_delete' AND i.status = 'pending_delete'",
        );
        let q_live = self.sql(
            "SELECT COUNT(*) FROM image_locations l JOIN images i ON i.id = l.image_id \
             WHERE l.deleted = TRUE AND l.status = 'pending_delete' AND i.status <> 'pending_delete'",
        );
        let q_stuck = self.sql(
            "SELECT COUNT(*) FROM images i WHERE i.deleted = TRUE AND i.status = 'pending_delete' \
             AND NOT EXISTS (SELECT 1 FROM image_locations l WHERE l.image_id = i.id AND l.status = 'pending_delete')",
        );
        let q_claimed = self.sql(
            "SELECT COUNT(*) FROM imaged_claims WHERE kind = ? AND owner IS NOT NULL AND lease_expires_at >= ?",
        );
        let mut st = on_pool!(self.reader(), p => {
            ScrubStatus {
                pending_images: sqlx::query_scalar(q_pending).fetch_one(p).await?,
                due_images: sqlx::query_scalar(q_due).bind(cut).fetch_one(p).await?,
                pending_locations: sqlx::query_scalar(q_locs).fetch_one(p).await?,
                live_image_pending_locations: sqlx::query_scalar(q_live).fetch_one(p).await?,
                stuck_images: sqlx::query_scalar(q_stuck).fetch_one(p).await?,
                claimed_images: sqlx::query_scalar(q_claimed).bind(ClaimKind::ScrubImage.as_str()).bind(now).fetch_one(p).await?,
                failures_by_class: Vec::new(),
            }
        });
        st.failures_by_class = self.failure_counts(ClaimKind::ScrubImage).await?;
        Ok(st)
    }
}
