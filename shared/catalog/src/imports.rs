//! Image operations of the import executor beyond creating and filling an
//! image: Glance's soft `image_destroy` (the revert of a failed import),
//! finding the images an import task locked through `os_glance_import_task`
//! (to clean up after a crashed attempt), tags, and the per-owner usage the
//! legacy `user_storage_quota` is checked against.

use crate::db::{BeginWrite, Catalog, on_pool};
use crate::error::{CatalogError, Result};
use crate::time::{Ts, utcnow};

impl Catalog {
    /// Glance's `image_destroy` as a revert does it: the image gets status
    /// `deleted`, `deleted = 1`, `deleted_at = now`, and its locations
    /// (status `deleted`), properties, tags and members are soft-deleted, in
    /// one transaction. `NotFound` when the image does not exist.
    pub async fn destroy_image(&self, id: &str) -> Result<()> {
        self.destroy_image_inner(id, None).await
    }

    /// [`Catalog::destroy_image`] for an image an import holds the lock
    /// property `lock_name = holder` on: in the same transaction the lock row
    /// is deleted outright, as Glance drops its import lock
    /// (`image_delete_property_atomic`), so no soft-deleted lock row stays.
    pub async fn destroy_locked_image(
        &self,
        id: &str,
        lock_name: &str,
        holder: &str,
    ) -> Result<()> {
        self.destroy_image_inner(id, Some((lock_name, holder)))
            .await
    }

    async fn destroy_image_inner(&self, id: &str, lock: Option<(&str, &str)>) -> Result<()> {
        let n = self
            .with_retry("destroy image", || async {
                let now = Ts(utcnow());
                let img = self.sql(
                    "UPDATE images SET status = 'deleted', deleted = TRUE, deleted_at = ?, updated_at = ? WHERE id = ? AND deleted = FALSE",
                );
                let locs = self.sql(
                    "UPDATE image_locations SET status = 'deleted', deleted = TRUE, deleted_at = ?, updated_at = ? WHERE image_id = ? AND deleted = FALSE",
                );
                let others: Vec<_> = ["image_properties", "image_tags", "image_members"]
                    .iter()
                    .map(|t| {
                        self.sql(&format!(
                            "UPDATE {t} SET deleted = TRUE, deleted_at = ?, updated_at = ? WHERE image_id = ? AND deleted = FALSE"
                        ))
                    })
                    .collect();
                let unlock = self.sql(
                    "DELETE FROM image_properties WHERE image_id = ? AND name = ? AND value = ? AND deleted = FALSE",
                );
                Ok(on_pool!(&self.pool, p => {
                    let mut tx = p.begin_write().await?;
                    if let Some((name, holder)) = lock {
                        sqlx::query(unlock).bind(id).bind(name).bind(holder).execute(&mut *tx).await?;
                    }
                    let n = sqlx::query(img).bind(now).bind(now).bind(id).execute(&mut *tx).await?.rows_affected();
                    sqlx::query(locs).bind(now).bind(now).bind(id).execute(&mut *tx).await?;
                    for q in others {
                        sqlx::query(q).bind(now).bind(now).bind(id).execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    n
                }))
            })
            .await?;
        if n == 0 && self.get_image(id).await?.is_none() {
            return Err(CatalogError::NotFound {
                kind: "image",
                id: id.to_string(),
            });
        }
        Ok(())
    }

    /// Ids of live images that carry the live property `name = value`
    /// (e.g. the images an import task holds `os_glance_import_task` on).
    pub async fn images_with_property(&self, name: &str, value: &str) -> Result<Vec<String>> {
        let sql = self.sql(
            "SELECT i.id FROM images i JOIN image_properties p ON p.image_id = i.id \
             WHERE p.name = ? AND p.value = ? AND p.deleted = FALSE AND i.deleted = FALSE ORDER BY i.id",
        );
        Ok(on_pool!(&self.pool, p => {
            sqlx::query_scalar::<_, String>(sql).bind(name).bind(value).fetch_all(p).await?
        }))
    }

    /// Adds a tag to an image unless it already has it (Glance's
    /// `image_tag_create` after its duplicate check).
    pub async fn add_image_tag(&self, image_id: &str, tag: &str) -> Result<()> {
        self.check_text("tag", tag)?;
        self.with_retry("add image tag", || async {
            let now = Ts(utcnow());
            let exists = self.sql("SELECT COUNT(*) FROM image_tags WHERE image_id = ? AND value = ? AND deleted = FALSE");
            let ins = self.sql(
                "INSERT INTO image_tags (image_id, value, created_at, updated_at, deleted_at, deleted) VALUES (?, ?, ?, ?, NULL, FALSE)",
            );
            on_pool!(&self.pool, p => {
                let mut tx = p.begin_write().await?;
                let n: i64 = sqlx::query_scalar(exists).bind(image_id).bind(tag).fetch_one(&mut *tx).await?;
                if n == 0 {
                    sqlx::query(ins).bind(image_id).bind(tag).bind(now).bind(now).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            });
            Ok(())
        })
        .await
    }

    /// Live tags of an image, sorted.
    pub async fn image_tags(&self, image_id: &str) -> Result<Vec<String>> {
        let sql = self.sql(
            "SELECT value FROM image_tags WHERE image_id = ? AND deleted = FALSE ORDER BY value",
        );
        Ok(on_pool!(&self.pool, p => {
            sqlx::query_scalar::<_, String>(sql).bind(image_id).fetch_all(p).await?
        }))
    }

    /// Bytes counted against an owner's legacy `user_storage_quota`: the
    /// sizes of the owner's live images that hold data (not `killed`,
    /// `deleted` or `pending_delete`).
    pub async fn owner_storage_usage(&self, owner: &str) -> Result<u64> {
        let sql = self.sql(
            "SELECT size FROM images WHERE owner = ? AND deleted = FALSE AND size IS NOT NULL \
             AND status NOT IN ('killed', 'deleted', 'pending_delete')",
        );
        let sizes: Vec<i64> = on_pool!(self.reader(), p => {
            sqlx::query_scalar::<_, i64>(sql).bind(owner).fetch_all(p).await?
        });
        Ok(sizes
            .into_iter()
            .map(|s| u64::try_from(s).unwrap_or(0))
            .sum())
    }
}
