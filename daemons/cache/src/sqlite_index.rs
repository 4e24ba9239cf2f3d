//! The node-local `cache.db` of Glance's sqlite cache driver. Every SQL statement imaged runs
//! against that file is in this module.
//!
//! Glance's API opens the same file for every cache operation and gives up after about two
//! seconds of "database is locked", so the rules here are: one short write transaction per
//! batch (never held across an unlink of a large file), no schema change beyond Glance's own
//! `CREATE TABLE IF NOT EXISTS` on a missing database, the journal mode left as it is (never
//! WAL: it persists in the file and makes Glance see `-wal`/`-shm` files as cache files), and
//! timestamps written as REAL epoch seconds. Reads accept REAL, INTEGER, NULL or TEXT times.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, params_from_iter};

use crate::CacheError;

/// Glance's schema, byte for byte the statement its driver runs on configure.
const CREATE: &str = "CREATE TABLE IF NOT EXISTS cached_images (
                image_id TEXT PRIMARY KEY,
                last_accessed REAL DEFAULT 0.0,
                last_modified REAL DEFAULT 0.0,
                size INTEGER DEFAULT 0,
                hits INTEGER DEFAULT 0,
                checksum TEXT
            );";

/// Rows changed per write transaction: a few hundred keeps each commit at a few milliseconds,
/// far below Glance's two-second patience.
pub const BATCH: usize = 256;

/// How long one of our statements waits for Glance's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One `cached_images` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `image_id`.
    pub image_id: String,
    /// `last_accessed` (epoch seconds; 0 for NULL or unreadable values).
    pub last_accessed: f64,
    /// `last_modified`.
    pub last_modified: f64,
    /// `size` at insert time.
    pub size: i64,
    /// `hits`.
    pub hits: i64,
}

/// A new row (adoption of an untracked file, or a prefetched image).
#[derive(Debug, Clone, PartialEq)]
pub struct NewRow {
    /// `image_id`.
    pub image_id: String,
    /// `last_accessed`.
    pub last_accessed: f64,
    /// `last_modified`.
    pub last_modified: f64,
    /// `size`.
    pub size: u64,
}

/// A handle on `cache.db`. Connections are opened per operation, as Glance does, so no
/// descriptor or lock outlives a call.
#[derive(Debug, Clone)]
pub struct SqliteIndex {
    path: PathBuf,
}

fn time(v: ValueRef<'_>) -> f64 {
    match v {
        ValueRef::Real(f) => f,
        ValueRef::Integer(i) => i as f64,
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0.0),
        _ => 0.0,
    }
}

fn int(v: ValueRef<'_>) -> i64 {
    match v {
        ValueRef::Integer(i) => i,
        ValueRef::Real(f) => f as i64,
        _ => 0,
    }
}

impl SqliteIndex {
    /// Opens an existing `cache.db`, checking that it is a database with Glance's table.
    /// A missing file is created with Glance's schema when `create` is set (the caller holds
    /// the `image_cache_db_init` lock and runs as the cache directory's owner).
    pub fn open(path: &Path, create: bool) -> Result<SqliteIndex, CacheError> {
        let index = SqliteIndex {
            path: path.to_owned(),
        };
        if !path.exists() {
            if !create {
                return Err(CacheError::IndexMissing(path.to_owned()));
            }
            let conn = index.connect(true)?;
            conn.execute_batch(CREATE).map_err(|e| index.err(e))?;
            return Ok(index);
        }
        let conn = index.connect(false)?;
        let has: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'cached_images'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| CacheError::IndexCorrupt {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        if has == 0 {
            // Glance would create the table on its next start; doing the same keeps both agreeing.
            conn.execute_batch(CREATE).map_err(|e| index.err(e))?;
        }
        Ok(index)
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> CacheError {
        let message = e.to_string();
        if message.contains("not a database") || message.contains("malformed") {
            CacheError::IndexCorrupt {
                path: self.path.clone(),
                message,
            }
        } else {
            CacheError::Index {
                path: self.path.clone(),
                message,
            }
        }
    }

    fn connect(&self, create: bool) -> Result<Connection, CacheError> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| self.err(e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| self.err(e))?;
        // The same pragmas as Glance's driver; journal_mode is deliberately not touched.
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;")
            .map_err(|e| self.err(e))?;
        Ok(conn)
    }

    /// The journal mode recorded in the file (`delete` for a Glance-made database).
    pub fn journal_mode(&self) -> Result<String, CacheError> {
        let conn = self.connect(false)?;
        conn.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))
    }

    /// Calls `f` for every row, streaming: memory does not grow with the table.
    pub fn for_each(&self, mut f: impl FnMut(Row)) -> Result<(), CacheError> {
        let conn = self.connect(false)?;
        let mut stmt = conn
            .prepare("SELECT image_id, last_accessed, last_modified, size, hits FROM cached_images")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let image_id = match r.get_ref(0).map_err(|e| self.err(e))? {
                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                ValueRef::Integer(i) => i.to_string(),
                _ => continue,
            };
            f(Row {
                image_id,
                last_accessed: time(r.get_ref(1).map_err(|e| self.err(e))?),
                last_modified: time(r.get_ref(2).map_err(|e| self.err(e))?),
                size: int(r.get_ref(3).map_err(|e| self.err(e))?),
                hits: int(r.get_ref(4).map_err(|e| self.err(e))?),
            });
        }
        Ok(())
    }

    /// Every row, ordered by image id (as Glance lists them).
    pub fn rows(&self) -> Result<Vec<Row>, CacheError> {
        let mut out = Vec::new();
        self.for_each(|r| out.push(r))?;
        out.sort_by(|a, b| a.image_id.cmp(&b.image_id));
        Ok(out)
    }

    /// Whether a row exists for `id`.
    pub fn has(&self, id: &str) -> Result<bool, CacheError> {
        let conn = self.connect(false)?;
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM cached_images WHERE image_id = ?1",
                [id],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// Deletes the rows of `ids`, [`BATCH`] per transaction. Returns the rows removed.
    pub fn delete(&self, ids: &[String]) -> Result<u64, CacheError> {
        let mut conn = self.connect(false)?;
        let mut removed = 0u64;
        for chunk in ids.chunks(BATCH) {
            let marks = vec!["?"; chunk.len()].join(",");
            let tx = conn.transaction().map_err(|e| self.err(e))?;
            removed += tx
                .execute(
                    &format!("DELETE FROM cached_images WHERE image_id IN ({marks})"),
                    params_from_iter(chunk.iter()),
                )
                .map_err(|e| self.err(e))? as u64;
            tx.commit().map_err(|e| self.err(e))?;
        }
        Ok(removed)
    }

    /// Inserts rows unless one already exists for the id (a row Glance wrote in the meantime
    /// wins). Returns the rows inserted.
    pub fn insert(&self, rows: &[NewRow]) -> Result<u64, CacheError> {
        let mut conn = self.connect(false)?;
        let mut inserted = 0u64;
        for chunk in rows.chunks(BATCH) {
            let tx = conn.transaction().map_err(|e| self.err(e))?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO cached_images (image_id, last_accessed, last_modified, size, hits) \
                         VALUES (?1, ?2, ?3, ?4, 0)",
                    )
                    .map_err(|e| self.err(e))?;
                for r in chunk {
                    inserted += stmt
                        .execute(rusqlite::params![
                            r.image_id,
                            r.last_accessed,
                            r.last_modified,
                            i64::try_from(r.size).unwrap_or(i64::MAX)
                        ])
                        .map_err(|e| self.err(e))? as u64;
                }
            }
            tx.commit().map_err(|e| self.err(e))?;
        }
        Ok(inserted)
    }

    /// Sets `size` of rows whose recorded size differs from the file's.
    pub fn fix_sizes(&self, fixes: &[(String, u64)]) -> Result<u64, CacheError> {
        let mut conn = self.connect(false)?;
        let mut n = 0u64;
        for chunk in fixes.chunks(BATCH) {
            let tx = conn.transaction().map_err(|e| self.err(e))?;
            {
                let mut stmt = tx
                    .prepare_cached("UPDATE cached_images SET size = ?2 WHERE image_id = ?1")
                    .map_err(|e| self.err(e))?;
                for (id, size) in chunk {
                    n += stmt
                        .execute(rusqlite::params![
                            id,
                            i64::try_from(*size).unwrap_or(i64::MAX)
                        ])
                        .map_err(|e| self.err(e))? as u64;
                }
            }
            tx.commit().map_err(|e| self.err(e))?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_glance_schema_and_keeps_delete_journal() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cache.db");
        assert!(matches!(
            SqliteIndex::open(&p, false),
            Err(CacheError::IndexMissing(_))
        ));
        let idx = SqliteIndex::open(&p, true).unwrap();
        assert_eq!(idx.journal_mode().unwrap(), "delete");
        let n = idx
            .insert(&[NewRow {
                image_id: "a".into(),
                last_accessed: 12.5,
                last_modified: 11.25,
                size: 7,
            }])
            .unwrap();
        assert_eq!(n, 1);
        let conn = Connection::open(&p).unwrap();
        let ty: String = conn
            .query_row("SELECT typeof(last_accessed) FROM cached_images", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(ty, "real");
        let rows = idx.rows().unwrap();
        assert_eq!(rows[0].last_accessed, 12.5);
        assert_eq!(rows[0].size, 7);
        assert_eq!(idx.delete(&["a".into(), "b".into()]).unwrap(), 1);
        assert!(!idx.has("a").unwrap());
    }

    #[test]
    fn reads_integer_null_and_text_times() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cache.db");
        let idx = SqliteIndex::open(&p, true).unwrap();
        let conn = Connection::open(&p).unwrap();
        conn.execute_batch(
            "INSERT INTO cached_images VALUES ('i', 5, 5, 1, 0, NULL);
             INSERT INTO cached_images VALUES ('n', NULL, NULL, 1, 0, NULL);
             INSERT INTO cached_images VALUES ('t', '7.5', '7.5', 1, 0, NULL);",
        )
        .unwrap();
        let rows = idx.rows().unwrap();
        let la: Vec<f64> = rows.iter().map(|r| r.last_accessed).collect();
        assert_eq!(la, [5.0, 0.0, 7.5]);
    }

    #[test]
    fn corrupt_file_is_reported_as_corrupt() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cache.db");
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        assert!(matches!(
            SqliteIndex::open(&p, true),
            Err(CacheError::IndexCorrupt { .. })
        ));
    }
}
