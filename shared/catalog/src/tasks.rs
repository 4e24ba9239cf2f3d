//! The task queue on Glance's `tasks` and `task_info` tables: the API's
//! enqueue (exact rows), claims with leases for executors, heartbeat
//! (bumps `updated_at`, Glance's import-lock heartbeat), progress messages,
//! terminal transitions with `expires_at = now + task_time_to_live`,
//! list/show, and lazy expiry (soft delete).

use std::time::Duration;

use chrono::NaiveDateTime;
use serde_json::Value;
use sqlx::{AssertSqlSafe, Row};

use crate::claims::{ClaimKind, ClaimOwner};
use crate::db::{BeginWrite, Catalog, on_pool};
use crate::error::{CatalogError, Result};
use crate::time::{Ts, utcnow};

/// Task types Glance accepts.
pub const TASK_TYPES: &[&str] = &["import", "api_image_import", "location_import"];
/// Task statuses.
pub const TASK_STATUSES: &[&str] = &["pending", "processing", "success", "failure"];

/// A task as stored (`tasks` joined with `task_info`).
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub task_type: String,
    pub status: String,
    pub owner: String,
    pub expires_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: Option<NaiveDateTime>,
    pub deleted_at: Option<NaiveDateTime>,
    pub deleted: bool,
    pub image_id: Option<String>,
    pub request_id: Option<String>,
    pub user_id: Option<String>,
    pub input: Option<Value>,
    pub result: Option<Value>,
    pub message: Option<String>,
}

/// A task to enqueue, as the API creates it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// `None` = a fresh uuid4.
    pub id: Option<String>,
    pub task_type: String,
    pub owner: String,
    pub image_id: Option<String>,
    pub request_id: Option<String>,
    pub user_id: Option<String>,
    pub input: Value,
}

impl NewTask {
    /// A task of `task_type` for project `owner`; `image_id` is taken from
    /// `input.image_id` as the Tasks API does.
    pub fn new(task_type: &str, owner: &str, input: Value) -> Self {
        NewTask {
            id: None,
            task_type: task_type.to_string(),
            owner: owner.to_string(),
            image_id: input
                .get("image_id")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            request_id: None,
            user_id: None,
            input,
        }
    }
}

/// Filters for [`Catalog::list_tasks`].
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<String>,
    pub task_type: Option<String>,
    pub owner: Option<String>,
    pub image_id: Option<String>,
    pub include_deleted: bool,
    /// `None` = 1000.
    pub limit: Option<u32>,
}

const TASK_COLUMNS: &str = "t.id AS id, t.type AS type, t.status AS status, t.owner AS owner, t.expires_at AS expires_at, \
    t.created_at AS created_at, t.updated_at AS updated_at, t.deleted_at AS deleted_at, t.deleted AS deleted, \
    t.image_id AS image_id, t.request_id AS request_id, t.user_id AS user_id, \
    i.input AS input, i.result AS result, i.message AS message";

macro_rules! task_from_row {
    ($r:expr) => {{
        let r = $r;
        let input: Option<String> = r.try_get("input")?;
        let result: Option<String> = r.try_get("result")?;
        Task {
            id: r.try_get("id")?,
            task_type: r.try_get("type")?,
            status: r.try_get("status")?,
            owner: r.try_get("owner")?,
            expires_at: r.try_get::<Option<Ts>, _>("expires_at")?.map(|t| t.0),
            created_at: r.try_get::<Ts, _>("created_at")?.0,
            updated_at: r.try_get::<Option<Ts>, _>("updated_at")?.map(|t| t.0),
            deleted_at: r.try_get::<Option<Ts>, _>("deleted_at")?.map(|t| t.0),
            deleted: r.try_get("deleted")?,
            image_id: r.try_get("image_id")?,
            request_id: r.try_get("request_id")?,
            user_id: r.try_get("user_id")?,
            input: input.and_then(|s| serde_json::from_str(&s).ok()),
            result: result.and_then(|s| serde_json::from_str(&s).ok()),
            message: r.try_get("message")?,
        }
    }};
}

fn ttl_end(now: NaiveDateTime, ttl: Duration) -> NaiveDateTime {
    now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(48))
}

/// How a task ends ([`Catalog::end_claimed_task`]).
#[derive(Debug, Clone, Copy)]
pub enum TaskEnd<'a> {
    /// `processing → success` with this `result`.
    Success(&'a Value),
    /// `pending|processing → failure` with this message.
    Failure(&'a str),
}

impl Catalog {
    /// Enqueues a task exactly as Glance's `task_create` does: a `tasks` row
    /// (`status = 'pending'`, `expires_at` NULL, `created_at = updated_at =
    /// now`, `deleted = false`) and its `task_info` row (`input` as
    /// Python-style JSON, `result` NULL, `message` empty) in one transaction.
    pub async fn enqueue_task(&self, task: &NewTask) -> Result<String> {
        if !TASK_TYPES.contains(&task.task_type.as_str()) {
            return Err(CatalogError::InvalidValue(format!(
                "unknown task type {:?}",
                task.task_type
            )));
        }
        let id = task
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        for (what, v) in [
            ("owner", Some(task.owner.as_str())),
            ("request_id", task.request_id.as_deref()),
            ("user_id", task.user_id.as_deref()),
        ] {
            if let Some(v) = v {
                self.check_text(what, v)?;
            }
        }
        let input = crate::json::dumps(&task.input);
        self.with_retry("enqueue task", || async {
            let now = Ts(utcnow());
            let t = self.sql(
                "INSERT INTO tasks (id, type, status, owner, expires_at, created_at, updated_at, deleted_at, deleted, image_id, request_id, user_id) \
                 VALUES (?, ?, 'pending', ?, NULL, ?, ?, NULL, FALSE, ?, ?, ?)",
            );
            let i = self.sql("INSERT INTO task_info (task_id, input, result, message) VALUES (?, ?, NULL, '')");
            on_pool!(&self.pool, p => {
                let mut tx = p.begin_write().await?;
                sqlx::query(t).bind(&id).bind(&task.task_type).bind(&task.owner).bind(now).bind(now)
                    .bind(task.image_id.as_deref()).bind(task.request_id.as_deref()).bind(task.user_id.as_deref())
                    .execute(&mut *tx).await?;
                sqlx::query(i).bind(&id).bind(&input).execute(&mut *tx).await?;
                tx.commit().await?;
            });
            Ok(())
        })
        .await?;
        Ok(id)
    }

    /// One task with its info, deleted or not.
    pub async fn get_task(&self, id: &str) -> Result<Option<Task>> {
        let sql = self.sql(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks t LEFT JOIN task_info i ON i.task_id = t.id WHERE t.id = ?"
        ));
        let t = on_pool!(&self.pool, p => {
            match sqlx::query(sql).bind(id).fetch_optional(p).await? {
                Some(r) => Some(task_from_row!(r)),
                None => None,
            }
        });
        Ok(t)
    }

    /// Tasks matching `filter`, newest first (`created_at DESC, id DESC`).
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        let mut cond = Vec::new();
        let mut args: Vec<String> = Vec::new();
        if !filter.include_deleted {
            cond.push("t.deleted = FALSE".to_string());
        }
        for (col, v) in [
            ("t.status", &filter.status),
            ("t.type", &filter.task_type),
            ("t.owner", &filter.owner),
            ("t.image_id", &filter.image_id),
        ] {
            if let Some(v) = v {
                cond.push(format!("{col} = ?"));
                args.push(v.clone());
            }
        }
        let wh = if cond.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", cond.join(" AND "))
        };
        let sql = self.sql(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks t LEFT JOIN task_info i ON i.task_id = t.id {wh} ORDER BY t.created_at DESC, t.id DESC LIMIT ?"
        ));
        let limit = i64::from(filter.limit.unwrap_or(1000));
        let tasks = on_pool!(self.reader(), p => {
            let mut q = sqlx::query(sql);
            for a in &args {
                q = q.bind(a.as_str());
            }
            let rows = q.bind(limit).fetch_all(p).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(task_from_row!(r));
            }
            out
        });
        Ok(tasks)
    }

    /// Claims up to `limit` tasks of the given types for `owner`: `pending`
    /// tasks nobody holds, moved to `processing` (CAS), and `processing`
    /// tasks whose imaged holder's lease expired (returned as they are, for
    /// the executor to resume or fail). Tasks that Glance's own API is
    /// processing (no imaged claim) are never taken.
    pub async fn claim_tasks(
        &self,
        owner: &ClaimOwner,
        lease: Duration,
        limit: u32,
        types: &[&str],
    ) -> Result<Vec<Task>> {
        let types: Vec<&str> = if types.is_empty() {
            TASK_TYPES.to_vec()
        } else {
            types.to_vec()
        };
        let now = Ts(utcnow());
        let cand = self.sql(&format!(
            "SELECT t.id FROM tasks t LEFT JOIN imaged_claims c ON c.kind = ? AND c.unit_id = t.id \
             WHERE t.deleted = FALSE AND t.type IN ({}) AND ( \
               (t.status = 'pending' AND (c.owner IS NULL OR c.lease_expires_at < ?)) \
               OR (t.status = 'processing' AND c.owner IS NOT NULL AND c.lease_expires_at < ?)) \
             ORDER BY t.created_at, t.id LIMIT ?",
            Catalog::marks(types.len())
        ));
        let ids: Vec<String> = on_pool!(&self.pool, p => {
            let mut q = sqlx::query_scalar(cand).bind(ClaimKind::Task.as_str());
            for t in &types {
                q = q.bind(*t);
            }
            q.bind(now).bind(now).bind(i64::from(limit.max(1))).fetch_all(p).await?
        });
        let claimed = self.claim(ClaimKind::Task, &ids, owner, lease).await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = self.start_claimed_tasks(&claimed).await?;
        let mut out = Vec::with_capacity(claimed.len());
        for id in claimed {
            // Started by this claim, or `processing` under a holder that
            // died: the task is run (or resumed) as it is.
            match found.remove(&id) {
                Some(t) if t.status == "processing" => out.push(t),
                _ => {
                    // Finished or deleted meanwhile: nothing to do.
                    self.release_claim(ClaimKind::Task, &id, owner, true)
                        .await?;
                }
            }
        }
        Ok(out)
    }

    /// Moves the claimed `pending` tasks among `ids` to `processing` and
    /// reads all of `ids` back, in one transaction (one commit per claim
    /// rather than two statements per task). A task read back as
    /// `processing` was either started here or is a dead holder's.
    async fn start_claimed_tasks(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, Task>> {
        let statements: Vec<_> = ids
            .chunks(crate::claims::MAX_IDS_PER_STATEMENT)
            .map(|chunk| {
                let marks = Catalog::marks(chunk.len());
                let start = self.sql(&format!(
                    "UPDATE tasks SET status = 'processing', updated_at = ? \
                     WHERE id IN ({marks}) AND status = 'pending' AND deleted = FALSE"
                ))
                .0;
                let read = self.sql(&format!(
                    "SELECT {TASK_COLUMNS} FROM tasks t LEFT JOIN task_info i ON i.task_id = t.id WHERE t.id IN ({marks})"
                ))
                .0;
                (chunk, start, read)
            })
            .collect();
        self.with_retry("start claimed tasks", || async {
            let now = Ts(utcnow());
            Ok(on_pool!(&self.pool, p => {
                let mut tx = p.begin_write().await?;
                let mut found = std::collections::HashMap::with_capacity(ids.len());
                for (chunk, start, read) in &statements {
                    let mut q = sqlx::query(AssertSqlSafe(start.as_str())).bind(now);
                    for id in *chunk {
                        q = q.bind(id.as_str());
                    }
                    q.execute(&mut *tx).await?;
                    let mut q = sqlx::query(AssertSqlSafe(read.as_str()));
                    for id in *chunk {
                        q = q.bind(id.as_str());
                    }
                    for r in q.fetch_all(&mut *tx).await? {
                        let t = task_from_row!(r);
                        found.insert(t.id.clone(), t);
                    }
                }
                tx.commit().await?;
                found
            }))
        })
        .await
    }

    /// Heartbeat of a running task: renews the claim, bumps
    /// `tasks.updated_at` (Glance's import-lock heartbeat) and optionally
    /// records a progress message. `Conflict` means the task is no longer
    /// `processing` (aborted, failed by lock busting) or the claim was lost.
    pub async fn heartbeat_task(
        &self,
        id: &str,
        owner: &ClaimOwner,
        lease: Duration,
        message: Option<&str>,
    ) -> Result<()> {
        if let Some(m) = message {
            self.check_text("message", m)?;
        }
        self.renew_claim(ClaimKind::Task, id, owner, lease).await?;
        let (n, status) = self
            .with_retry("task heartbeat", || async {
                let now = Ts(utcnow());
                let upd = self.sql("UPDATE tasks SET updated_at = ? WHERE id = ? AND status = 'processing' AND deleted = FALSE");
                let msg = self.sql("UPDATE task_info SET message = ? WHERE task_id = ?");
                let st = self.sql("SELECT status FROM tasks WHERE id = ?");
                Ok(on_pool!(&self.pool, p => {
                    let mut tx = p.begin_write().await?;
                    let n = sqlx::query(upd).bind(now).bind(id).execute(&mut *tx).await?.rows_affected();
                    if let (true, Some(m)) = (n > 0, message) {
                        sqlx::query(msg).bind(m).bind(id).execute(&mut *tx).await?;
                    }
                    let status: Option<String> = sqlx::query_scalar(st).bind(id).fetch_optional(&mut *tx).await?;
                    tx.commit().await?;
                    (n, status)
                }))
            })
            .await?;
        if n == 0 {
            return Err(CatalogError::Conflict {
                kind: "task",
                id: id.to_string(),
                expected: "processing".into(),
                found: status,
            });
        }
        Ok(())
    }

    /// `processing → success` with `result`, `expires_at = now + ttl`;
    /// releases the claim when `owner` holds it.
    pub async fn succeed_task(
        &self,
        id: &str,
        owner: &ClaimOwner,
        result: &Value,
        ttl: Duration,
    ) -> Result<()> {
        self.end(id, owner, false, TaskEnd::Success(result), ttl)
            .await
    }

    /// `pending|processing → failure` with `message`, `expires_at = now +
    /// ttl`; releases the claim when `owner` holds it.
    pub async fn fail_task(
        &self,
        id: &str,
        owner: &ClaimOwner,
        message: &str,
        ttl: Duration,
    ) -> Result<()> {
        self.end(id, owner, false, TaskEnd::Failure(message), ttl)
            .await
    }

    /// [`Catalog::succeed_task`] or [`Catalog::fail_task`] by the executor
    /// that claimed the task: only while `owner` still holds the claim, which
    /// is released in the same transaction. A lost claim is a `Conflict`
    /// (kind `task claim`) and changes nothing.
    pub async fn end_claimed_task(
        &self,
        id: &str,
        owner: &ClaimOwner,
        end: TaskEnd<'_>,
        ttl: Duration,
    ) -> Result<()> {
        self.end(id, owner, true, end, ttl).await
    }

    async fn end(
        &self,
        id: &str,
        owner: &ClaimOwner,
        claimed: bool,
        end: TaskEnd<'_>,
        ttl: Duration,
    ) -> Result<()> {
        match end {
            TaskEnd::Success(result) => {
                let result = crate::json::dumps(result);
                let result = Some(result.as_str());
                let from = &["processing"];
                self.finish_task(id, owner, claimed, "success", from, result, None, ttl)
                    .await
            }
            TaskEnd::Failure(message) => {
                self.check_text("message", message)?;
                let from = &["pending", "processing"];
                let message = Some(message);
                self.finish_task(id, owner, claimed, "failure", from, None, message, ttl)
                    .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish_task(
        &self,
        id: &str,
        owner: &ClaimOwner,
        claimed: bool,
        to: &str,
        from: &[&str],
        result: Option<&str>,
        message: Option<&str>,
        ttl: Duration,
    ) -> Result<()> {
        /// How the transaction ended.
        enum End {
            Done,
            /// The task is not in a `from` status (its current one).
            Status(Option<String>),
            /// `claimed` and the claim is not `owner`'s (its holder).
            Claim(Option<String>),
        }
        let kind = ClaimKind::Task.as_str();
        let end = self
            .with_retry("finish task", || async {
                let now = utcnow();
                let release = self.sql(
                    "DELETE FROM imaged_claims WHERE kind = ? AND unit_id = ? AND owner = ?",
                );
                let holder =
                    self.sql("SELECT owner FROM imaged_claims WHERE kind = ? AND unit_id = ?");
                let upd = self.sql(&format!(
                    "UPDATE tasks SET status = ?, expires_at = ?, updated_at = ? WHERE id = ? AND deleted = FALSE AND status IN ({})",
                    Catalog::marks(from.len())
                ));
                let res = self.sql("UPDATE task_info SET result = ? WHERE task_id = ?");
                let msg = self.sql("UPDATE task_info SET message = ? WHERE task_id = ?");
                let st = self.sql("SELECT status FROM tasks WHERE id = ?");
                Ok(on_pool!(&self.pool, p => {
                    let mut tx = p.begin_write().await?;
                    // A claimed end releases the claim in the same
                    // transaction: an executor whose lease ran out and was
                    // taken over (a long pause, a partition) can never end
                    // a task another executor is running.
                    if claimed && sqlx::query(release).bind(kind).bind(id).bind(owner.as_str()).execute(&mut *tx).await?.rows_affected() == 0 {
                        let h: Option<Option<String>> = sqlx::query_scalar(holder).bind(kind).bind(id).fetch_optional(&mut *tx).await?;
                        tx.rollback().await?;
                        return Ok(End::Claim(h.flatten()));
                    }
                    let mut q = sqlx::query(upd).bind(to).bind(Ts(ttl_end(now, ttl))).bind(Ts(now)).bind(id);
                    for f in from {
                        q = q.bind(*f);
                    }
                    if q.execute(&mut *tx).await?.rows_affected() == 0 {
                        let status: Option<String> = sqlx::query_scalar(st).bind(id).fetch_optional(&mut *tx).await?;
                        tx.rollback().await?;
                        return Ok(End::Status(status));
                    }
                    if let Some(r) = result {
                        sqlx::query(res).bind(r).bind(id).execute(&mut *tx).await?;
                    }
                    if let Some(m) = message {
                        sqlx::query(msg).bind(m).bind(id).execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    End::Done
                }))
            })
            .await?;
        match end {
            End::Done if claimed => Ok(()),
            End::Done => match self.release_claim(ClaimKind::Task, id, owner, true).await {
                Ok(()) | Err(CatalogError::Conflict { .. }) => Ok(()),
                Err(e) => Err(e),
            },
            End::Status(found) => Err(CatalogError::Conflict {
                kind: "task",
                id: id.to_string(),
                expected: from.join("|"),
                found,
            }),
            End::Claim(found) => Err(CatalogError::Conflict {
                kind: "task claim",
                id: id.to_string(),
                expected: owner.as_str().to_string(),
                found,
            }),
        }
    }

    /// Soft-deletes expired tasks (`deleted = 1, deleted_at = now` where
    /// `expires_at <= now`), for one project or (with `None`) for all.
    /// Returns the number of tasks expired.
    pub async fn expire_tasks(&self, owner: Option<&str>) -> Result<u64> {
        self.with_retry("expire tasks", || async {
            let now = Ts(utcnow());
            let extra = if owner.is_some() { " AND owner = ?" } else { "" };
            let sql = self.sql(&format!(
                "UPDATE tasks SET deleted = TRUE, deleted_at = ?, updated_at = ? WHERE deleted = FALSE AND expires_at IS NOT NULL AND expires_at <= ?{extra}"
            ));
            Ok(on_pool!(&self.pool, p => {
                let q = sqlx::query(sql).bind(now).bind(now).bind(now);
                let q = match owner { Some(o) => q.bind(o), None => q };
                q.execute(p).await?.rows_affected()
            }))
        })
        .await
    }
}
