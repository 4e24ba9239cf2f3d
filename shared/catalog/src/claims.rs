//! Claims and leases in the additive `imaged_claims` table, shared by every
//! daemon so that two processes (on any hosts) never work on the same unit.
//!
//! Design: one row per unit of work, keyed by `(kind, unit_id)` (the unit id
//! is the Glance id: an image id for the scrubber, a task id for the task
//! executor). A unit is claimable when nobody owns it or the owner's lease
//! has expired, and its `next_attempt_at` (back-off after a failure) has
//! passed. Claiming sets `owner`, `lease_expires_at` and bumps `attempts`:
//!
//! * PostgreSQL and MariaDB ≥ 10.6 / MySQL 8: inside one transaction,
//!   `SELECT … FOR UPDATE SKIP LOCKED` picks claimable rows that no other
//!   claimer is looking at, then an `UPDATE` takes them;
//! * SQLite (and older MySQL): one conditional `UPDATE … WHERE owner IS NULL
//!   OR lease_expires_at < now` inside `BEGIN IMMEDIATE`; SQLite has a single
//!   writer, so the check and the write are atomic.
//!
//! Renewing, releasing and recording a failure are compare-and-set on the
//! owner, so a holder whose lease expired and was taken over learns that it
//! lost the unit instead of overwriting the new holder. Dropping
//! `imaged_claims` loses only leases and failure history.

use std::fmt;
use std::time::Duration;

use chrono::NaiveDateTime;
use sqlx::Row;

use crate::db::{BeginWrite, Catalog, on_pool};
use crate::error::{CatalogError, Result};
use crate::time::{Ts, utcnow};

/// What a claim is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimKind {
    /// An image the scrubber is scrubbing (unit id = image id).
    ScrubImage,
    /// A task the task executor runs (unit id = task id).
    Task,
    /// A cache prefetch of an image on one node (unit id = image id).
    CachePrefetch,
}

impl ClaimKind {
    /// The value stored in `imaged_claims.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimKind::ScrubImage => "scrub_image",
            ClaimKind::Task => "task",
            ClaimKind::CachePrefetch => "cache_prefetch",
        }
    }
}

/// The identity of a claim holder: `hostname:pid:random`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimOwner(String);

impl ClaimOwner {
    /// A fresh identity for this process.
    pub fn generate() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown-host".to_string());
        let rnd = uuid::Uuid::new_v4().simple().to_string();
        ClaimOwner(format!("{host}:{}:{}", std::process::id(), &rnd[..12]))
    }

    /// An explicit identity (tests, tools).
    pub fn from_string(s: impl Into<String>) -> Self {
        ClaimOwner(s.into())
    }

    /// The stored form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClaimOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One `imaged_claims` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    pub kind: String,
    pub unit_id: String,
    pub owner: Option<String>,
    pub lease_expires_at: Option<NaiveDateTime>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub error_class: Option<String>,
    pub next_attempt_at: Option<NaiveDateTime>,
}

/// Largest number of ids per statement (keeps statements well below every
/// engine's parameter limit and write transactions short).
pub(crate) const MAX_IDS_PER_STATEMENT: usize = 200;

pub(crate) fn lease_end(now: NaiveDateTime, lease: Duration) -> NaiveDateTime {
    now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::hours(1))
}

impl Catalog {
    /// Tries to claim the given units for `owner` for `lease`; returns the
    /// ids actually claimed (those nobody else holds with a live lease and
    /// whose back-off has passed).
    pub async fn claim(
        &self,
        kind: ClaimKind,
        unit_ids: &[String],
        owner: &ClaimOwner,
        lease: Duration,
    ) -> Result<Vec<String>> {
        let mut ids: Vec<String> = unit_ids.to_vec();
        ids.sort();
        ids.dedup();
        let mut claimed = Vec::new();
        if self.engine() == crate::Engine::Sqlite {
            // SQLite has one writer at a time anyway, and each transaction
            // of a rollback-journal database costs a journal file and four
            // fsyncs: the whole claim is one transaction.
            claimed = self
                .with_retry("claim", || self.claim_sqlite(kind, &ids, owner, lease))
                .await?;
        } else {
            for chunk in ids.chunks(MAX_IDS_PER_STATEMENT) {
                let got = self
                    .with_retry("claim", || self.claim_chunk(kind, chunk, owner, lease))
                    .await?;
                claimed.extend(got);
            }
        }
        claimed.sort();
        Ok(claimed)
    }

    /// `INSERT` (ignoring existing rows) of `n` unclaimed claim rows, bound
    /// as `(kind, unit_id, created_at)` triples.
    fn claim_rows_insert(&self, n: usize) -> sqlx::AssertSqlSafe<String> {
        let (ins, tail) = self.insert_ignore();
        let values = vec!["(?, ?, 0, ?)"; n].join(", ");
        self.sql(&format!(
            "{ins} imaged_claims (kind, unit_id, attempts, created_at) VALUES {values}{tail}"
        ))
    }

    /// [`Catalog::claim`] on SQLite: rows created and claimed in one write
    /// transaction, `MAX_IDS_PER_STATEMENT` ids per statement.
    async fn claim_sqlite(
        &self,
        kind: ClaimKind,
        ids: &[String],
        owner: &ClaimOwner,
        lease: Duration,
    ) -> Result<Vec<String>> {
        let now = utcnow();
        let until = lease_end(now, lease);
        let statements: Vec<_> = ids
            .chunks(MAX_IDS_PER_STATEMENT)
            .map(|chunk| {
                let insert = self.claim_rows_insert(chunk.len());
                let update = self.sql(&format!(
                    "UPDATE imaged_claims SET owner = ?, lease_expires_at = ?, attempts = attempts + 1, updated_at = ? \
                     WHERE kind = ? AND unit_id IN ({}) AND (owner IS NULL OR lease_expires_at < ?) \
                     AND (next_attempt_at IS NULL OR next_attempt_at <= ?) RETURNING unit_id",
                    Catalog::marks(chunk.len())
                ));
                (chunk, insert, update)
            })
            .collect();
        let got: Vec<String> = on_pool!(&self.pool, p => {
            let mut tx = p.begin_write().await?;
            let mut got = Vec::new();
            for (chunk, insert, update) in statements {
                let mut q = sqlx::query(insert);
                for id in chunk {
                    q = q.bind(kind.as_str()).bind(id.as_str()).bind(Ts(now));
                }
                q.execute(&mut *tx).await?;
                let mut q = sqlx::query_scalar(update)
                    .bind(owner.as_str())
                    .bind(Ts(until))
                    .bind(Ts(now))
                    .bind(kind.as_str());
                for id in chunk {
                    q = q.bind(id.as_str());
                }
                let part: Vec<String> = q.bind(Ts(now)).bind(Ts(now)).fetch_all(&mut *tx).await?;
                got.extend(part);
            }
            tx.commit().await?;
            got
        });
        Ok(got)
    }

    /// [`Catalog::claim`] on PostgreSQL and MySQL/MariaDB, for one chunk.
    async fn claim_chunk(
        &self,
        kind: ClaimKind,
        ids: &[String],
        owner: &ClaimOwner,
        lease: Duration,
    ) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = utcnow();
        let until = lease_end(now, lease);
        let insert = self.claim_rows_insert(ids.len());
        let marks = Catalog::marks(ids.len());
        let claimable = format!(
            "kind = ? AND unit_id IN ({marks}) AND (owner IS NULL OR lease_expires_at < ?) \
             AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
        );
        let skip_locked = self.skip_locked;
        let select = self.sql(&format!(
            "SELECT unit_id FROM imaged_claims WHERE {claimable} ORDER BY unit_id FOR UPDATE SKIP LOCKED"
        ));
        let plain_select = self.sql(&format!(
            "SELECT unit_id FROM imaged_claims WHERE {claimable} ORDER BY unit_id FOR UPDATE"
        ));
        let got: Vec<String> = on_pool!(&self.pool, p => {
            // Rows are created outside the claiming transaction so that the
            // claim itself only locks existing rows.
            let mut q = sqlx::query(insert);
            for id in ids {
                q = q.bind(kind.as_str()).bind(id.as_str()).bind(Ts(now));
            }
            q.execute(p).await?;

            let mut tx = p.begin_write().await?;
            let got: Vec<String> = {
                let mut q = sqlx::query_scalar(if skip_locked { select } else { plain_select })
                    .bind(kind.as_str());
                for id in ids {
                    q = q.bind(id.as_str());
                }
                let picked: Vec<String> = q.bind(Ts(now)).bind(Ts(now)).fetch_all(&mut *tx).await?;
                if !picked.is_empty() {
                    let upd = self.sql(&format!(
                        "UPDATE imaged_claims SET owner = ?, lease_expires_at = ?, attempts = attempts + 1, updated_at = ? \
                         WHERE kind = ? AND unit_id IN ({})",
                        Catalog::marks(picked.len())
                    ));
                    let mut q = sqlx::query(upd)
                        .bind(owner.as_str())
                        .bind(Ts(until))
                        .bind(Ts(now))
                        .bind(kind.as_str());
                    for id in &picked {
                        q = q.bind(id.as_str());
                    }
                    q.execute(&mut *tx).await?;
                }
                picked
            };
            tx.commit().await?;
            got
        });
        Ok(got)
    }

    /// Extends a held lease. Fails with `Conflict` when `owner` no longer
    /// holds the unit.
    pub async fn renew_claim(
        &self,
        kind: ClaimKind,
        unit_id: &str,
        owner: &ClaimOwner,
        lease: Duration,
    ) -> Result<()> {
        let q = "UPDATE imaged_claims SET lease_expires_at = ?, updated_at = ? WHERE kind = ? AND unit_id = ? AND owner = ?";
        let n = self
            .with_retry("renew claim", || async {
                let now = utcnow();
                let until = lease_end(now, lease);
                let sql = self.sql(q);
                Ok(on_pool!(&self.pool, p => {
                    sqlx::query(sql).bind(Ts(until)).bind(Ts(now)).bind(kind.as_str()).bind(unit_id).bind(owner.as_str())
                        .execute(p).await?.rows_affected()
                }))
            })
            .await?;
        self.claim_cas_result(kind, unit_id, owner, n).await
    }

    /// Gives a unit back. With `done` the claim row is removed (the unit
    /// needs no more work); otherwise it becomes claimable at once.
    pub async fn release_claim(
        &self,
        kind: ClaimKind,
        unit_id: &str,
        owner: &ClaimOwner,
        done: bool,
    ) -> Result<()> {
        let n = self
            .with_retry("release claim", || async {
                let now = utcnow();
                let sql = if done {
                    self.sql("DELETE FROM imaged_claims WHERE kind = ? AND unit_id = ? AND owner = ?")
                } else {
                    self.sql("UPDATE imaged_claims SET owner = NULL, lease_expires_at = NULL, updated_at = ? WHERE kind = ? AND unit_id = ? AND owner = ?")
                };
                Ok(on_pool!(&self.pool, p => {
                    let q = sqlx::query(sql);
                    let q = if done { q } else { q.bind(Ts(now)) };
                    q.bind(kind.as_str()).bind(unit_id).bind(owner.as_str()).execute(p).await?.rows_affected()
                }))
            })
            .await?;
        self.claim_cas_result(kind, unit_id, owner, n).await
    }

    /// Records a failed attempt: error class and reason, and when the unit
    /// may be tried again; releases the lease.
    pub async fn record_failure(
        &self,
        kind: ClaimKind,
        unit_id: &str,
        owner: &ClaimOwner,
        error_class: &str,
        reason: &str,
        next_attempt_at: Option<NaiveDateTime>,
    ) -> Result<()> {
        let reason: String = reason
            .chars()
            .filter(|c| c.len_utf8() < 4)
            .take(4000)
            .collect();
        let n = self
            .with_retry("record failure", || async {
                let now = utcnow();
                let sql = self.sql(
                    "UPDATE imaged_claims SET owner = NULL, lease_expires_at = NULL, last_error = ?, error_class = ?, \
                     next_attempt_at = ?, updated_at = ? WHERE kind = ? AND unit_id = ? AND owner = ?",
                );
                Ok(on_pool!(&self.pool, p => {
                    sqlx::query(sql)
                        .bind(reason.as_str())
                        .bind(error_class)
                        .bind(next_attempt_at.map(Ts))
                        .bind(Ts(now))
                        .bind(kind.as_str())
                        .bind(unit_id)
                        .bind(owner.as_str())
                        .execute(p)
                        .await?
                        .rows_affected()
                }))
            })
            .await?;
        self.claim_cas_result(kind, unit_id, owner, n).await
    }

    async fn claim_cas_result(
        &self,
        kind: ClaimKind,
        unit_id: &str,
        owner: &ClaimOwner,
        affected: u64,
    ) -> Result<()> {
        if affected > 0 {
            return Ok(());
        }
        let rec = self.claim_record(kind, unit_id).await?;
        Err(CatalogError::Conflict {
            kind: "claim",
            id: unit_id.to_string(),
            expected: format!("owner {owner}"),
            found: rec.and_then(|r| r.owner),
        })
    }

    /// Reads one claim row.
    pub async fn claim_record(
        &self,
        kind: ClaimKind,
        unit_id: &str,
    ) -> Result<Option<ClaimRecord>> {
        let sql = self.sql(
            "SELECT kind, unit_id, owner, lease_expires_at, attempts, last_error, error_class, next_attempt_at \
             FROM imaged_claims WHERE kind = ? AND unit_id = ?",
        );
        let rec = on_pool!(&self.pool, p => {
            match sqlx::query(sql).bind(kind.as_str()).bind(unit_id).fetch_optional(p).await? {
                None => None,
                Some(r) => Some(claim_record_row(&r)?),
            }
        });
        Ok(rec)
    }

    /// Claim rows of `kind` that carry a recorded failure, by error class.
    pub async fn failure_counts(&self, kind: ClaimKind) -> Result<Vec<(String, i64)>> {
        let sql = self.sql(
            "SELECT error_class, COUNT(*) AS n FROM imaged_claims WHERE kind = ? AND error_class IS NOT NULL \
             GROUP BY error_class ORDER BY error_class",
        );
        let rows = on_pool!(self.reader(), p => {
            let rows = sqlx::query(sql).bind(kind.as_str()).fetch_all(p).await?;
            let mut v = Vec::new();
            for r in rows {
                v.push((r.try_get::<String, _>("error_class")?, r.try_get::<i64, _>("n")?));
            }
            v
        });
        Ok(rows)
    }
}

/// A `ClaimRecord` from a row of `SELECT kind, unit_id, owner, lease_expires_at, attempts,
/// last_error, error_class, next_attempt_at` on any engine.
pub(crate) fn claim_record_row<R: Row>(r: &R) -> std::result::Result<ClaimRecord, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<Ts>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ClaimRecord {
        kind: r.try_get("kind")?,
        unit_id: r.try_get("unit_id")?,
        owner: r.try_get("owner")?,
        lease_expires_at: r.try_get::<Option<Ts>, _>("lease_expires_at")?.map(|t| t.0),
        attempts: r.try_get("attempts")?,
        last_error: r.try_get("last_error")?,
        error_class: r.try_get("error_class")?,
        next_attempt_at: r.try_get::<Option<Ts>, _>("next_attempt_at")?.map(|t| t.0),
    })
}
