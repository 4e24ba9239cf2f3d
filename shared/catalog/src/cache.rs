//! The central image-cache metadata tables of the `centralized_db` cache
//! driver (`node_reference`, `cached_images` in the catalog). Not to be
//! confused with the node-local `cache.db`, which has its own table of the
//! same name and lives elsewhere.

use chrono::NaiveDateTime;
use sqlx::Row;

use crate::db::{Catalog, on_pool};
use crate::error::Result;
use crate::time::{Ts, utcnow};

/// One central `cached_images` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedImage {
    pub id: i64,
    pub image_id: String,
    pub last_accessed: NaiveDateTime,
    pub last_modified: NaiveDateTime,
    pub size: i64,
    pub hits: i32,
    pub checksum: Option<String>,
    pub node_reference_id: i64,
}

macro_rules! cached_from_row {
    ($r:expr) => {{
        let r = $r;
        CachedImage {
            id: r.try_get("id")?,
            image_id: r.try_get("image_id")?,
            last_accessed: r.try_get::<Ts, _>("last_accessed")?.0,
            last_modified: r.try_get::<Ts, _>("last_modified")?.0,
            size: r.try_get("size")?,
            hits: r.try_get("hits")?,
            checksum: r.try_get("checksum")?,
            node_reference_id: r.try_get("node_reference_id")?,
        }
    }};
}

const CACHED_COLS: &str = "c.id AS id, c.image_id AS image_id, c.last_accessed AS last_accessed, c.last_modified AS last_modified, \
    c.size AS size, c.hits AS hits, c.checksum AS checksum, c.node_reference_id AS node_reference_id";

impl Catalog {
    /// Registers this node (`worker_self_reference_url`), ignoring a
    /// duplicate as Glance does, and returns its `node_reference_id`.
    pub async fn register_node(&self, node_url: &str) -> Result<i64> {
        self.check_text("node url", node_url)?;
        let (ins, tail) = self.insert_ignore();
        self.with_retry("register node", || async {
            let insert = self.sql(&format!(
                "{ins} node_reference (node_reference_url) VALUES (?){tail}"
            ));
            let get = self
                .sql("SELECT node_reference_id FROM node_reference WHERE node_reference_url = ?");
            Ok(on_pool!(&self.pool, p => {
                sqlx::query(insert).bind(node_url).execute(p).await?;
                sqlx::query_scalar::<_, i64>(get).bind(node_url).fetch_one(p).await?
            }))
        })
        .await
    }

    /// Records an image newly cached on `node_url` (`hits = 0`, both times
    /// now); a duplicate is ignored. Returns whether a row was inserted.
    pub async fn insert_cached_image(
        &self,
        node_url: &str,
        image_id: &str,
        size: i64,
    ) -> Result<bool> {
        let node = self.register_node(node_url).await?;
        let (ins, tail) = self.insert_ignore();
        self.with_retry("insert cached image", || async {
            let now = Ts(utcnow());
            let sql = self.sql(&format!(
                "{ins} cached_images (image_id, last_accessed, last_modified, size, hits, checksum, node_reference_id) \
                 VALUES (?, ?, ?, ?, 0, NULL, ?){tail}"
            ));
            Ok(on_pool!(&self.pool, p => {
                sqlx::query(sql).bind(image_id).bind(now).bind(now).bind(size).bind(node).execute(p).await?.rows_affected() > 0
            }))
        })
        .await
    }

    /// Records an image cached on `node_url` with given times (naive UTC), e.g. when an
    /// untracked cache file is adopted with its file times; a duplicate is ignored. Returns
    /// whether a row was inserted.
    pub async fn insert_cached_image_at(
        &self,
        node_url: &str,
        image_id: &str,
        size: i64,
        last_accessed: NaiveDateTime,
        last_modified: NaiveDateTime,
    ) -> Result<bool> {
        let node = self.register_node(node_url).await?;
        let (ins, tail) = self.insert_ignore();
        self.with_retry("insert cached image", || async {
            let sql = self.sql(&format!(
                "{ins} cached_images (image_id, last_accessed, last_modified, size, hits, checksum, node_reference_id) \
                 VALUES (?, ?, ?, ?, 0, NULL, ?){tail}"
            ));
            Ok(on_pool!(&self.pool, p => {
                sqlx::query(sql).bind(image_id).bind(Ts(last_accessed)).bind(Ts(last_modified)).bind(size).bind(node).execute(p).await?.rows_affected() > 0
            }))
        })
        .await
    }

    /// `hits + 1, last_accessed = now` for an image cached on `node_url`.
    pub async fn record_cache_hit(&self, node_url: &str, image_id: &str) -> Result<bool> {
        self.with_retry("cache hit", || async {
            let sql = self.sql(
                "UPDATE cached_images SET hits = hits + 1, last_accessed = ? WHERE image_id = ? AND node_reference_id = \
                 (SELECT node_reference_id FROM node_reference WHERE node_reference_url = ?)",
            );
            Ok(on_pool!(&self.pool, p => {
                sqlx::query(sql).bind(Ts(utcnow())).bind(image_id).bind(node_url).execute(p).await?.rows_affected() > 0
            }))
        })
        .await
    }

    /// This node's cached images, least recently accessed first.
    pub async fn cached_images(&self, node_url: &str) -> Result<Vec<CachedImage>> {
        let sql = self.sql(&format!(
            "SELECT {CACHED_COLS} FROM cached_images c JOIN node_reference n ON n.node_reference_id = c.node_reference_id \
             WHERE n.node_reference_url = ? ORDER BY c.last_accessed, c.id"
        ));
        let out = on_pool!(&self.pool, p => {
            let rows = sqlx::query(sql).bind(node_url).fetch_all(p).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(cached_from_row!(r));
            }
            out
        });
        Ok(out)
    }

    /// The image this node accessed least recently, if any.
    pub async fn least_recently_accessed(&self, node_url: &str) -> Result<Option<String>> {
        let sql = self.sql(
            "SELECT c.image_id FROM cached_images c JOIN node_reference n ON n.node_reference_id = c.node_reference_id \
             WHERE n.node_reference_url = ? ORDER BY c.last_accessed, c.id LIMIT 1",
        );
        Ok(on_pool!(&self.pool, p => {
            sqlx::query_scalar(sql).bind(node_url).fetch_optional(p).await?
        }))
    }

    /// Deletes one image's row for this node. Returns whether a row existed.
    pub async fn delete_cached_image(&self, node_url: &str, image_id: &str) -> Result<bool> {
        self.with_retry("delete cached image", || async {
            let sql = self.sql(
                "DELETE FROM cached_images WHERE image_id = ? AND node_reference_id = \
                 (SELECT node_reference_id FROM node_reference WHERE node_reference_url = ?)",
            );
            Ok(on_pool!(&self.pool, p => {
                sqlx::query(sql).bind(image_id).bind(node_url).execute(p).await?.rows_affected() > 0
            }))
        })
        .await
    }

    /// Deletes every row of this node. Returns the number removed.
    pub async fn delete_all_cached_images(&self, node_url: &str) -> Result<u64> {
        self.with_retry("delete all cached images", || async {
            let sql = self.sql(
                "DELETE FROM cached_images WHERE node_reference_id = \
                 (SELECT node_reference_id FROM node_reference WHERE node_reference_url = ?)",
            );
            Ok(on_pool!(&self.pool, p => {
                sqlx::query(sql).bind(node_url).execute(p).await?.rows_affected()
            }))
        })
        .await
    }

    /// Node URLs that hold `image_id`.
    pub async fn cached_nodes(&self, image_id: &str) -> Result<Vec<String>> {
        let sql = self.sql(
            "SELECT n.node_reference_url FROM cached_images c JOIN node_reference n ON n.node_reference_id = c.node_reference_id \
             WHERE c.image_id = ? ORDER BY n.node_reference_url",
        );
        Ok(on_pool!(&self.pool, p => {
            sqlx::query_scalar(sql).bind(image_id).fetch_all(p).await?
        }))
    }

    /// Whether `image_id` is cached on `node_url`.
    pub async fn is_image_cached_for_node(&self, node_url: &str, image_id: &str) -> Result<bool> {
        Ok(self
            .cached_nodes(image_id)
            .await?
            .iter()
            .any(|n| n == node_url))
    }
}
