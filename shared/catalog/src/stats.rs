//! The cheap reads behind the daemons' health and metrics endpoints: a
//! reachability ping and the depth and age of the scrub and task queues.
//!
//! A scrape may come every few seconds, so each read here is one indexed
//! aggregate or a constant query, never a scan of the data a pass walks.

use std::time::Duration;

use chrono::NaiveDateTime;

use crate::claims::ClaimKind;
use crate::db::{Catalog, on_pool};
use crate::error::Result;
use crate::time::{Ts, utcnow};

/// The claimable part of the task queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskQueue {
    /// `pending` tasks of the asked types that nobody holds.
    pub pending: i64,
    /// `created_at` of the oldest of them.
    pub oldest_created_at: Option<NaiveDateTime>,
}

impl Catalog {
    /// One round trip to the primary database (`SELECT 1`), without the
    /// operation retries: a health check wants the answer now.
    pub async fn ping(&self) -> Result<()> {
        on_pool!(&self.pool, p => {
            sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(p).await?
        });
        Ok(())
    }

    /// `deleted_at` of the oldest `pending_delete` image already past
    /// `scrub_time` (the head of the scrub queue), if any.
    pub async fn oldest_due_deletion(&self, scrub_time: Duration) -> Result<Option<NaiveDateTime>> {
        let cut = Ts(utcnow() - chrono::Duration::from_std(scrub_time).unwrap_or_default());
        let sql = self.sql(
            "SELECT MIN(deleted_at) FROM images WHERE deleted = TRUE AND status = 'pending_delete' \
             AND deleted_at <= ?",
        );
        Ok(on_pool!(self.reader(), p => {
            sqlx::query_scalar::<_, Option<Ts>>(sql).bind(cut).fetch_one(p).await?.map(|t| t.0)
        }))
    }

    /// Depth and age of the `pending` tasks of `types` that no live claim
    /// holds (what an executor would claim next).
    pub async fn task_queue(&self, types: &[&str]) -> Result<TaskQueue> {
        let now = Ts(utcnow());
        let sql = self.sql(&format!(
            "SELECT COUNT(*), MIN(t.created_at) FROM tasks t LEFT JOIN imaged_claims c \
             ON c.kind = ? AND c.unit_id = t.id \
             WHERE t.deleted = FALSE AND t.status = 'pending' AND t.type IN ({}) \
             AND (c.owner IS NULL OR c.lease_expires_at < ?)",
            Catalog::marks(types.len().max(1))
        ));
        let types: Vec<&str> = if types.is_empty() {
            vec![""]
        } else {
            types.to_vec()
        };
        let (pending, oldest) = on_pool!(self.reader(), p => {
            let mut q = sqlx::query_as::<_, (i64, Option<Ts>)>(sql).bind(ClaimKind::Task.as_str());
            for t in &types {
                q = q.bind(*t);
            }
            q.bind(now).fetch_one(p).await?
        });
        Ok(TaskQueue {
            pending,
            oldest_created_at: oldest.map(|t| t.0),
        })
    }
}
