//! Image operations of the import executor beyond filling an image: the
//! creation of an image an import runs on (row, lock property, properties
//! and tags in one transaction) and its activation (data, status and lock
//! release in one transaction), Glance's soft `image_destroy` (the revert
//! of a failed import), finding the images an import task locked through
//! `os_glance_import_task` (to clean up after a crashed attempt), tags, and
//! the per-owner usage the legacy `user_storage_quota` is checked against.

use std::collections::BTreeMap;

use sqlx::AssertSqlSafe;

use crate::api_import::{LockedRefusal, LockedUpdate};
use crate::db::{BeginWrite, Catalog, on_pool};
use crate::error::{CatalogError, Result};
use crate::images::{ImageDataUpdate, NewImage};
use crate::time::{Ts, utcnow};

impl Catalog {
    /// Creates the image an import fills, in one transaction: the image row
    /// with status `saving` (`img.status` is not used), the lock property
    /// `lock_name = holder`, the `properties` and the `tags` (duplicates
    /// written once). The rows are those of Glance's `image_create`, then
    /// `image_set_property_atomic`, property and tag creation and the
    /// `queued → saving` save, written separately; one commit instead of
    /// one per row matters on engines where each commit is a log flush.
    /// Returns the image id.
    pub async fn create_importing_image(
        &self,
        img: &NewImage,
        lock_name: &str,
        holder: &str,
        properties: &BTreeMap<String, String>,
        tags: &[String],
    ) -> Result<String> {
        const STATUS: &str = "saving";
        self.check_new_image(img, STATUS)?;
        self.check_text("property", lock_name)?;
        self.check_text("property", holder)?;
        if properties.contains_key(lock_name) {
            return Err(CatalogError::InvalidValue(format!(
                "property {lock_name} is the import lock and cannot be set as a property"
            )));
        }
        for (k, v) in properties {
            self.check_text("property", k)?;
            self.check_text("property", v)?;
        }
        let mut unique: Vec<&str> = Vec::with_capacity(tags.len());
        for t in tags {
            self.check_text("tag", t)?;
            if !unique.contains(&t.as_str()) {
                unique.push(t);
            }
        }
        let id = img
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let image_sql = self.insert_image_sql();
        let props = std::iter::once((lock_name, holder))
            .chain(properties.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect::<Vec<_>>();
        self.with_retry("create importing image", || async {
            let now = Ts(utcnow());
            let image = self.sql(&image_sql);
            let prop = self.sql(
                "INSERT INTO image_properties (image_id, name, value, created_at, updated_at, deleted_at, deleted) VALUES (?, ?, ?, ?, ?, NULL, FALSE)",
            ).0;
            let tag = self.sql(
                "INSERT INTO image_tags (image_id, value, created_at, updated_at, deleted_at, deleted) VALUES (?, ?, ?, ?, NULL, FALSE)",
            ).0;
            on_pool!(&self.pool, p => {
                let mut tx = p.begin_write().await?;
                sqlx::query(image).bind(&id).bind(img.name.as_deref()).bind(STATUS).bind(now).bind(now)
                    .bind(img.disk_format.as_deref()).bind(img.container_format.as_deref()).bind(img.owner.as_deref())
                    .bind(img.min_disk).bind(img.min_ram).bind(img.protected).bind(&img.visibility).bind(img.os_hidden)
                    .execute(&mut *tx).await?;
                for (k, v) in &props {
                    sqlx::query(AssertSqlSafe(prop.as_str())).bind(&id).bind(*k).bind(*v).bind(now).bind(now).execute(&mut *tx).await?;
                }
                for t in &unique {
                    sqlx::query(AssertSqlSafe(tag.as_str())).bind(&id).bind(*t).bind(now).bind(now).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            });
            Ok(())
        })
        .await?;
        Ok(id)
    }

    /// The end of a legacy import holding the lock `os_glance_import_task =
    /// task_id`, in one transaction: the data attributes of `data`, status
    /// `saving → active` (bumping `updated_at`) and the lock row deleted
    /// outright (`image_delete_property_atomic`). Only while the image is
    /// live, `saving` and locked by `task_id`; otherwise nothing changes and
    /// the refusal says which precondition failed.
    pub async fn activate_imported_image(
        &self,
        image_id: &str,
        task_id: &str,
        data: &ImageDataUpdate,
    ) -> Result<std::result::Result<(), LockedRefusal>> {
        let upd = LockedUpdate {
            status: Some((vec!["saving".to_string()], "active".to_string())),
            data: Some(data.clone()),
            ..LockedUpdate::default()
        };
        Ok(self
            .locked_update(image_id, task_id, &upd, true)
            .await?
            .map(|_| ()))
    }

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
