//! Catalog operations of the interoperable import (`api_image_import`
//! tasks): the per-image import lock `os_glance_import_task` (compare-and-set
//! takeover of a stale holder), and the "locked update" that every change an
//! import makes to its image goes through.
//!
//! Glance funnels every image change of an import through one wrapper that
//! re-reads the image, asserts that the lock still names the task and saves
//! with a status precondition. [`Catalog::update_locked_image`] does the same
//! in one transaction: lock check (row-locked on PostgreSQL/MariaDB, under
//! SQLite's single writer), optional status compare-and-set, the store-list
//! properties (`os_glance_importing_to_stores`, `os_glance_failed_import`,
//! comma-joined and sorted as Glance writes them), data attributes and
//! location rows. A task that lost its lock therefore cannot change the image.

use std::collections::BTreeSet;

use serde_json::Value;
use sqlx::AssertSqlSafe;

use crate::db::{BeginWrite, Catalog, on_pool};
use crate::error::Result;
use crate::images::ImageDataUpdate;
use crate::time::{Ts, utcnow};

/// The image property naming the task that holds the import lock.
pub const IMPORT_LOCK: &str = "os_glance_import_task";
/// Stores an import still has to write (comma-joined, sorted).
pub const IMPORTING_STORES: &str = "os_glance_importing_to_stores";
/// Stores an import failed to write (comma-joined, sorted).
pub const FAILED_STORES: &str = "os_glance_failed_import";
/// URL of the API worker holding staged data (popped when an import starts).
pub const STAGE_HOST: &str = "os_glance_stage_host";

/// A change to one of the comma-joined store-list properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreListChange {
    /// Stores added to the list.
    pub add: Vec<String>,
    /// Stores removed from the list.
    pub remove: Vec<String>,
}

impl StoreListChange {
    /// Glance's `merge_store_list`: the union (or difference) with the
    /// current value, empty names dropped, sorted, comma-joined. An empty
    /// result is written as `''`, not removed.
    pub fn apply(&self, current: Option<&str>) -> String {
        let mut set: BTreeSet<String> = current
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        for s in self.add.iter().filter(|s| !s.is_empty()) {
            set.insert(s.clone());
        }
        for s in &self.remove {
            set.remove(s);
        }
        set.into_iter().collect::<Vec<_>>().join(",")
    }
}

/// A location to add in a locked update.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLocation {
    /// Store URL (encrypted on write when a key is configured).
    pub url: String,
    /// `meta_data`, e.g. `{"store": "fast"}`.
    pub meta_data: Value,
}

/// Everything one locked update may change; `None`/empty fields are left alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LockedUpdate {
    /// Status compare-and-set: `(accepted current statuses, new status)`.
    /// Moving to `queued` clears `size` and `virtual_size`, as Glance does.
    pub status: Option<(Vec<String>, String)>,
    /// Change to `os_glance_importing_to_stores`.
    pub importing: Option<StoreListChange>,
    /// Change to `os_glance_failed_import`.
    pub failed: Option<StoreListChange>,
    /// Properties set (revived when soft-deleted).
    pub set_properties: Vec<(String, String)>,
    /// Properties soft-deleted.
    pub remove_properties: Vec<String>,
    /// Data attributes set.
    pub data: Option<ImageDataUpdate>,
    /// Clears `checksum`, `os_hash_algo`, `os_hash_value` and `size` (the
    /// last location of the image was removed).
    pub clear_data: bool,
    /// A location added with status `active`.
    pub add_location: Option<NewLocation>,
    /// Location rows soft-deleted (status `deleted`, `deleted = 1`).
    pub delete_locations: Vec<i64>,
}

/// Why a locked update was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockedRefusal {
    /// The image is gone or soft-deleted.
    ImageGone,
    /// The lock names another task (or nobody).
    LockLost { holder: Option<String> },
    /// The status precondition failed.
    Status { found: String },
}

impl std::fmt::Display for LockedRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockedRefusal::ImageGone => f.write_str("the image has been deleted"),
            LockedRefusal::LockLost { holder: Some(h) } => {
                write!(f, "the import lock is now held by task {h}")
            }
            LockedRefusal::LockLost { holder: None } => f.write_str("the import lock was dropped"),
            LockedRefusal::Status { found } => write!(f, "the image is {found}"),
        }
    }
}

/// The id of a row just inserted by `$q` (a query ending in `RETURNING id`
/// except on MySQL, where the insert id is read instead).
macro_rules! insert_location_id {
    ($q:expr, $exec:expr, $engine:expr) => {{
        let q = $q;
        if $engine == crate::Engine::MySql {
            let r = q.execute($exec).await?;
            i64::try_from(r.last_insert_id_any()).unwrap_or(i64::MAX)
        } else {
            let row = q.fetch_one($exec).await?;
            i64::from(sqlx::Row::try_get::<i32, _>(&row, 0)?)
        }
    }};
}

/// `last_insert_id` exists only on MySQL results; the other engines return
/// the id through `RETURNING`, so their results never need it.
trait LastInsertId {
    fn last_insert_id_any(&self) -> u64;
}

impl LastInsertId for sqlx::mysql::MySqlQueryResult {
    fn last_insert_id_any(&self) -> u64 {
        self.last_insert_id()
    }
}

impl LastInsertId for sqlx::sqlite::SqliteQueryResult {
    fn last_insert_id_any(&self) -> u64 {
        u64::try_from(self.last_insert_rowid()).unwrap_or(0)
    }
}

impl LastInsertId for sqlx::postgres::PgQueryResult {
    fn last_insert_id_any(&self) -> u64 {
        0
    }
}

impl Catalog {
    /// The live value of `os_glance_import_task` on an image.
    pub async fn import_lock_holder(&self, image_id: &str) -> Result<Option<String>> {
        let sql = self.sql(
            "SELECT value FROM image_properties WHERE image_id = ? AND name = ? AND deleted = FALSE",
        );
        Ok(on_pool!(&self.pool, p => {
            sqlx::query_scalar::<_, Option<String>>(sql).bind(image_id).bind(IMPORT_LOCK)
                .fetch_optional(p).await?.flatten()
        }))
    }

    /// Moves the import lock from `stale` to `task_id` only while it still
    /// names `stale` (a busted lock can be won by one claimant only).
    /// Returns whether this call took it.
    pub async fn replace_import_lock(
        &self,
        image_id: &str,
        stale: &str,
        task_id: &str,
    ) -> Result<bool> {
        self.check_text("property", task_id)?;
        self.with_retry("replace import lock", || async {
            let sql = self.sql(
                "UPDATE image_properties SET value = ?, updated_at = ? \
                 WHERE image_id = ? AND name = ? AND deleted = FALSE AND value = ?",
            );
            Ok(on_pool!(&self.pool, p => {
                sqlx::query(sql).bind(task_id).bind(Ts(utcnow())).bind(image_id).bind(IMPORT_LOCK).bind(stale)
                    .execute(p).await?.rows_affected() > 0
            }))
        })
        .await
    }

    /// Applies `upd` to an image in one transaction, only while the image is
    /// live and its import lock names `task_id` (and its status matches the
    /// precondition, if any). Returns the new location's id, if one was
    /// added, or why the update was refused.
    pub async fn update_locked_image(
        &self,
        image_id: &str,
        task_id: &str,
        upd: &LockedUpdate,
    ) -> Result<std::result::Result<Option<i64>, LockedRefusal>> {
        self.locked_update(image_id, task_id, upd, false).await
    }

    /// [`Catalog::update_locked_image`]; with `drop_lock` the lock row is
    /// then deleted outright in the same transaction, as Glance's
    /// `image_delete_property_atomic` drops it.
    pub(crate) async fn locked_update(
        &self,
        image_id: &str,
        task_id: &str,
        upd: &LockedUpdate,
        drop_lock: bool,
    ) -> Result<std::result::Result<Option<i64>, LockedRefusal>> {
        for (k, v) in &upd.set_properties {
            self.check_text("property", k)?;
            self.check_text("property", v)?;
        }
        let location = match &upd.add_location {
            Some(l) => {
                self.check_text("location", &l.url)?;
                let value = match &self.cipher {
                    Some(c) => c.encrypt(&l.url)?,
                    None => l.url.clone(),
                };
                Some((value, crate::json::dumps(&l.meta_data)))
            }
            None => None,
        };
        let engine = self.engine();
        // Row locks keep a concurrent lock takeover out until we commit;
        // SQLite's BEGIN IMMEDIATE already serialises writers.
        let for_update = if engine == crate::Engine::Sqlite {
            ""
        } else {
            " FOR UPDATE"
        };
        let read_image = self
            .sql(&format!(
                "SELECT status FROM images WHERE id = ? AND deleted = FALSE{for_update}"
            ))
            .0;
        let read_prop = self.sql(&format!(
            "SELECT value FROM image_properties WHERE image_id = ? AND name = ? AND deleted = FALSE{for_update}"
        )).0;
        let revive = self.sql(
            "UPDATE image_properties SET value = ?, deleted = FALSE, deleted_at = NULL, updated_at = ? WHERE image_id = ? AND name = ?",
        ).0;
        let insert_prop = self.sql(
            "INSERT INTO image_properties (image_id, name, value, created_at, updated_at, deleted_at, deleted) VALUES (?, ?, ?, ?, ?, NULL, FALSE)",
        ).0;
        let remove_prop = self.sql(
            "UPDATE image_properties SET deleted = TRUE, deleted_at = ?, updated_at = ? WHERE image_id = ? AND name = ? AND deleted = FALSE",
        ).0;
        let clear = if upd.status.as_ref().is_some_and(|(_, to)| to == "queued") {
            ", size = NULL, virtual_size = NULL"
        } else {
            ""
        };
        let set_status = self
            .sql(&format!(
                "UPDATE images SET status = ?, updated_at = ?{clear} WHERE id = ?"
            ))
            .0;
        let clear_data = self.sql(
            "UPDATE images SET checksum = NULL, os_hash_algo = NULL, os_hash_value = NULL, size = NULL, updated_at = ? WHERE id = ?",
        ).0;
        let (data_sql, data_texts, data_ints) = data_update_sql(upd.data.as_ref());
        let data_sql = data_sql.map(|s| self.sql(&s).0);
        let del_loc = self.sql(
            "UPDATE image_locations SET status = 'deleted', deleted = TRUE, deleted_at = ?, updated_at = ? \
             WHERE id = ? AND image_id = ? AND deleted = FALSE",
        ).0;
        let base = "INSERT INTO image_locations (image_id, value, created_at, updated_at, deleted_at, deleted, meta_data, status) \
                    VALUES (?, ?, ?, ?, NULL, FALSE, ?, 'active')";
        let add_loc = if engine == crate::Engine::MySql {
            self.sql(base).0
        } else {
            self.sql(&format!("{base} RETURNING id")).0
        };
        let unlock = self
            .sql("DELETE FROM image_properties WHERE image_id = ? AND name = ? AND value = ? AND deleted = FALSE")
            .0;
        self.with_retry("locked image update", || async {
            let now = Ts(utcnow());
            Ok(on_pool!(&self.pool, p => {
                let mut tx = p.begin_write().await?;
                let status: Option<String> = sqlx::query_scalar(AssertSqlSafe(read_image.as_str())).bind(image_id).fetch_optional(&mut *tx).await?;
                let Some(status) = status else {
                    tx.rollback().await?;
                    return Ok(Err(LockedRefusal::ImageGone));
                };
                let holder: Option<Option<String>> = sqlx::query_scalar(AssertSqlSafe(read_prop.as_str())).bind(image_id).bind(IMPORT_LOCK).fetch_optional(&mut *tx).await?;
                let holder = holder.flatten();
                if holder.as_deref() != Some(task_id) {
                    tx.rollback().await?;
                    return Ok(Err(LockedRefusal::LockLost { holder }));
                }
                if let Some((from, to)) = &upd.status {
                    if !from.iter().any(|f| f == &status) {
                        tx.rollback().await?;
                        return Ok(Err(LockedRefusal::Status { found: status }));
                    }
                    if &status != to {
                        sqlx::query(AssertSqlSafe(set_status.as_str())).bind(to.as_str()).bind(now).bind(image_id).execute(&mut *tx).await?;
                    }
                }
                let mut props: Vec<(String, String)> = upd.set_properties.clone();
                for (key, change) in [(IMPORTING_STORES, &upd.importing), (FAILED_STORES, &upd.failed)] {
                    if let Some(change) = change {
                        let cur: Option<Option<String>> = sqlx::query_scalar(AssertSqlSafe(read_prop.as_str())).bind(image_id).bind(key).fetch_optional(&mut *tx).await?;
                        props.push((key.to_string(), change.apply(cur.flatten().as_deref())));
                    }
                }
                for (k, v) in &props {
                    let n = sqlx::query(AssertSqlSafe(revive.as_str())).bind(v.as_str()).bind(now).bind(image_id).bind(k.as_str()).execute(&mut *tx).await?.rows_affected();
                    if n == 0 {
                        sqlx::query(AssertSqlSafe(insert_prop.as_str())).bind(image_id).bind(k.as_str()).bind(v.as_str()).bind(now).bind(now).execute(&mut *tx).await?;
                    }
                }
                for k in &upd.remove_properties {
                    sqlx::query(AssertSqlSafe(remove_prop.as_str())).bind(now).bind(now).bind(image_id).bind(k.as_str()).execute(&mut *tx).await?;
                }
                for id in &upd.delete_locations {
                    sqlx::query(AssertSqlSafe(del_loc.as_str())).bind(now).bind(now).bind(*id).bind(image_id).execute(&mut *tx).await?;
                }
                if upd.clear_data {
                    sqlx::query(AssertSqlSafe(clear_data.as_str())).bind(now).bind(image_id).execute(&mut *tx).await?;
                }
                if let Some(sql) = &data_sql {
                    let mut q = sqlx::query(AssertSqlSafe(sql.as_str())).bind(now);
                    for t in &data_texts {
                        q = q.bind(t.as_str());
                    }
                    for i in &data_ints {
                        q = q.bind(*i);
                    }
                    q.bind(image_id).execute(&mut *tx).await?;
                }
                let mut new_id = None;
                if let Some((value, meta)) = &location {
                    let q = sqlx::query(AssertSqlSafe(add_loc.as_str())).bind(image_id).bind(value.as_str()).bind(now).bind(now).bind(meta.as_str());
                    new_id = Some(insert_location_id!(q, &mut *tx, engine));
                }
                if drop_lock {
                    sqlx::query(AssertSqlSafe(unlock.as_str())).bind(image_id).bind(IMPORT_LOCK).bind(task_id).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(new_id)
            }))
        })
        .await
    }

    /// Live image ids among `ids` (for the staging clean-up: a staged file
    /// whose image is missing or deleted is no longer due anywhere).
    pub async fn live_image_ids(&self, ids: &[String]) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for chunk in ids.chunks(crate::claims::MAX_IDS_PER_STATEMENT) {
            let sql = self.sql(&format!(
                "SELECT id FROM images WHERE deleted = FALSE AND id IN ({})",
                Catalog::marks(chunk.len())
            ));
            let got: Vec<String> = on_pool!(&self.pool, p => {
                let mut q = sqlx::query_scalar::<_, String>(sql);
                for id in chunk {
                    q = q.bind(id.as_str());
                }
                q.fetch_all(p).await?
            });
            out.extend(got);
        }
        Ok(out)
    }
}

type DataSql = (Option<String>, Vec<String>, Vec<i64>);

fn data_update_sql(upd: Option<&ImageDataUpdate>) -> DataSql {
    match upd {
        None => (None, Vec::new(), Vec::new()),
        Some(upd) => {
            let (sql, texts, ints) = upd.update_sql();
            (Some(sql), texts, ints)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_lists_merge_like_glance() {
        let add = StoreListChange {
            add: vec!["b".into(), "a".into(), String::new()],
            remove: vec![],
        };
        assert_eq!(add.apply(None), "a,b");
        assert_eq!(add.apply(Some("c")), "a,b,c");
        let rm = StoreListChange {
            add: vec![],
            remove: vec!["a".into(), "x".into()],
        };
        assert_eq!(rm.apply(Some("a,b")), "b");
        assert_eq!(rm.apply(Some("a")), "");
        assert_eq!(StoreListChange::default().apply(None), "");
    }
}
