//! The cache's metadata store behind one interface: the node-local `cache.db` (sqlite
//! driver), this node's rows in the catalog (centralized_db driver), or nothing at all when
//! `cache.db` is missing and may not be created, or is corrupt. In that last case passes
//! fall back to filesystem-only LRU (file atime/mtime) and never write metadata.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime};
use imaged_catalog::Catalog;

use crate::lock::{self, LockFile};
use crate::sqlite_index::{NewRow, Row, SqliteIndex};
use crate::{CacheError, CacheOptions, Driver};

/// Where the rows live.
#[derive(Debug, Clone)]
pub enum Index {
    /// `cache.db`.
    Sqlite(SqliteIndex),
    /// The catalog tables, keyed by this node's URL.
    Central {
        /// The catalog.
        catalog: Box<Catalog>,
        /// `worker_self_reference_url`.
        node: String,
    },
    /// No usable metadata; the reason is reported by every pass.
    Unavailable(String),
}

fn epoch_of(t: &NaiveDateTime) -> f64 {
    // Naive UTC, read as UTC: Glance's own listing reads it as local time (a defect).
    let utc = t.and_utc();
    utc.timestamp() as f64 + f64::from(utc.timestamp_subsec_micros()) / 1e6
}

fn naive_of(secs: f64) -> NaiveDateTime {
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9) as u32;
    DateTime::from_timestamp(whole as i64, nanos.min(999_999_999))
        .unwrap_or_default()
        .naive_utc()
}

impl Index {
    /// Opens the store of `opts.driver`. For sqlite, a missing `cache.db` is created with
    /// Glance's schema (under Glance's `image_cache_db_init` lock) only when this process runs
    /// as the owner of the cache directory, so that Glance can still write it; otherwise, or
    /// when the file is corrupt, the result is [`Index::Unavailable`].
    pub async fn open(opts: &CacheOptions, catalog: Option<&Catalog>) -> Result<Index, CacheError> {
        match opts.driver {
            Driver::Sqlite => Ok(Self::open_sqlite(opts).await),
            Driver::CentralizedDb => {
                let catalog = catalog.ok_or_else(|| {
                    CacheError::Config("centralized_db needs [database] connection".into())
                })?;
                let node = opts.node_url.clone().ok_or_else(|| {
                    CacheError::Config("centralized_db needs worker_self_reference_url".into())
                })?;
                catalog.register_node(&node).await?;
                Ok(Index::Central {
                    catalog: Box::new(catalog.clone()),
                    node,
                })
            }
        }
    }

    async fn open_sqlite(opts: &CacheOptions) -> Index {
        let path = &opts.layout.db_path;
        // /proc/self belongs to the effective uid; no unsafe libc call is needed to learn it.
        let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
        let owner_matches =
            std::fs::metadata(&opts.layout.dir).is_ok_and(|m| Some(m.uid()) == euid);
        let opened = if path.exists() || !owner_matches {
            SqliteIndex::open(path, false)
        } else {
            match LockFile::acquire(&opts.layout.lock_dir, lock::DB_INIT, Duration::from_secs(5))
                .await
            {
                Ok(Some(_guard)) => SqliteIndex::open(path, true),
                Ok(None) => Err(CacheError::Locked(opts.layout.lock_dir.join(lock::DB_INIT))),
                Err(e) => Err(e),
            }
        };
        match opened {
            Ok(idx) => {
                if let Ok(mode) = idx.journal_mode()
                    && mode.eq_ignore_ascii_case("wal")
                {
                    tracing::warn!(
                        path = %path.display(),
                        "cache.db is in WAL mode; Glance's sqlite driver counts the -wal/-shm files as cache files. \
                         imaged never changes the journal mode; switch it back with PRAGMA journal_mode=DELETE"
                    );
                }
                Index::Sqlite(idx)
            }
            Err(CacheError::IndexMissing(p)) => Index::Unavailable(format!(
                "{} is missing and this process is not the owner of the cache directory; \
                 start glance-api (or run as its user) to create it",
                p.display()
            )),
            Err(e) => Index::Unavailable(e.to_string()),
        }
    }

    /// Whether rows can be read and written.
    pub fn is_available(&self) -> bool {
        !matches!(self, Index::Unavailable(_))
    }

    /// Calls `f` for every row (this node's, for the central driver).
    pub async fn for_each(&self, mut f: impl FnMut(Row)) -> Result<(), CacheError> {
        match self {
            Index::Sqlite(s) => s.for_each(f),
            Index::Central { catalog, node } => {
                for c in catalog.cached_images(node).await? {
                    f(Row {
                        image_id: c.image_id,
                        last_accessed: epoch_of(&c.last_accessed),
                        last_modified: epoch_of(&c.last_modified),
                        size: c.size,
                        hits: i64::from(c.hits),
                    });
                }
                Ok(())
            }
            Index::Unavailable(_) => Ok(()),
        }
    }

    /// Every row, ordered by image id.
    pub async fn rows(&self) -> Result<Vec<Row>, CacheError> {
        let mut out = Vec::new();
        self.for_each(|r| out.push(r)).await?;
        out.sort_by(|a, b| a.image_id.cmp(&b.image_id));
        Ok(out)
    }

    /// Deletes rows; returns how many existed.
    pub async fn delete(&self, ids: &[String]) -> Result<u64, CacheError> {
        match self {
            Index::Sqlite(s) => s.delete(ids),
            Index::Central { catalog, node } => {
                let mut n = 0;
                for id in ids {
                    n += u64::from(catalog.delete_cached_image(node, id).await?);
                }
                Ok(n)
            }
            Index::Unavailable(_) => Ok(0),
        }
    }

    /// Deletes every row; returns how many existed.
    pub async fn delete_all(&self) -> Result<u64, CacheError> {
        match self {
            Index::Sqlite(s) => {
                let ids: Vec<String> = s.rows()?.into_iter().map(|r| r.image_id).collect();
                s.delete(&ids)
            }
            Index::Central { catalog, node } => Ok(catalog.delete_all_cached_images(node).await?),
            Index::Unavailable(_) => Ok(0),
        }
    }

    /// Inserts rows for files that have none; an existing row wins.
    pub async fn insert(&self, rows: &[NewRow]) -> Result<u64, CacheError> {
        match self {
            Index::Sqlite(s) => s.insert(rows),
            Index::Central { catalog, node } => {
                let mut n = 0;
                for r in rows {
                    let size = i64::try_from(r.size).unwrap_or(i64::MAX);
                    n += u64::from(
                        catalog
                            .insert_cached_image_at(
                                node,
                                &r.image_id,
                                size,
                                naive_of(r.last_accessed),
                                naive_of(r.last_modified),
                            )
                            .await?,
                    );
                }
                Ok(n)
            }
            Index::Unavailable(_) => Ok(0),
        }
    }

    /// Whether a row exists for `id`.
    pub async fn has(&self, id: &str) -> Result<bool, CacheError> {
        match self {
            Index::Sqlite(s) => s.has(id),
            Index::Central { catalog, node } => {
                Ok(catalog.is_image_cached_for_node(node, id).await?)
            }
            Index::Unavailable(_) => Ok(false),
        }
    }

    /// Corrects recorded sizes to the files' sizes (sqlite only; the central table's size is
    /// informational and Glance never reads it for pruning).
    pub async fn fix_sizes(&self, fixes: &[(String, u64)]) -> Result<u64, CacheError> {
        match self {
            Index::Sqlite(s) => s.fix_sizes(fixes),
            _ => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_conversion_is_utc_and_round_trips() {
        let t = naive_of(1_700_000_000.25);
        assert_eq!(t.to_string(), "2023-11-14 22:13:20.250");
        assert!((epoch_of(&t) - 1_700_000_000.25).abs() < 1e-6);
    }
}
