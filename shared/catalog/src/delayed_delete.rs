//! What Glance's API writes on `DELETE /v2/images/{id}` with
//! `delayed_delete = True` (catalog-schema §5): the rows that become the
//! scrubber's work. The daemons never delete images this way; it is here,
//! with the rest of the SQL, for the quick start and for tests that turn a
//! real imported image into scrubber work.

use crate::db::{BeginWrite, Catalog, on_pool};
use crate::error::{CatalogError, Result};
use crate::time::{Ts, utcnow};

/// What [`Catalog::delayed_delete_image`] did to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayedDelete {
    /// The image had active locations: it and they are now
    /// `pending_delete`; the data stays in the store for the scrubber.
    PendingDelete {
        /// Locations queued for scrubbing.
        locations: u64,
    },
    /// The image had no active location: it went straight to `deleted`.
    Deleted,
}

impl Catalog {
    /// Deletes an image as Glance's API does with `delayed_delete = True`,
    /// in one transaction:
    ///
    /// 1. every active location becomes `status = 'pending_delete'`,
    ///    `deleted = 1`, `deleted_at = updated_at = T0`
    ///    (`ScrubDBQueue.add_location`);
    /// 2. `image_destroy` at `T ≥ T0`: the image becomes `pending_delete`
    ///    (`deleted` when it had no active location), `deleted = 1`,
    ///    `deleted_at = updated_at = T`; any other live location gets
    ///    `status = 'deleted'`; properties, tags and members are
    ///    soft-deleted with `deleted_at = T`.
    ///
    /// Like Glance, refuses (`Conflict`) an image that has locations but is
    /// not `active`. `NotFound` when no live image has this id.
    pub async fn delayed_delete_image(&self, image_id: &str) -> Result<DelayedDelete> {
        self.with_retry("delayed delete image", || {
            self.delayed_delete_once(image_id)
        })
        .await
    }

    async fn delayed_delete_once(&self, image_id: &str) -> Result<DelayedDelete> {
        let image_status = self.sql("SELECT status FROM images WHERE id = ? AND deleted = FALSE");
        let count_active = self.sql(
            "SELECT COUNT(*) FROM image_locations WHERE image_id = ? AND deleted = FALSE AND status = 'active'",
        );
        let queue_locations = self.sql(
            "UPDATE image_locations SET status = 'pending_delete', deleted = TRUE, deleted_at = ?, updated_at = ? \
             WHERE image_id = ? AND deleted = FALSE AND status = 'active'",
        );
        let destroy_image = self.sql(
            "UPDATE images SET status = ?, deleted = TRUE, deleted_at = ?, updated_at = ? \
             WHERE id = ? AND deleted = FALSE AND status = ?",
        );
        let other_locations = self.sql(
            "UPDATE image_locations SET status = 'deleted', deleted = TRUE, deleted_at = ?, updated_at = ? \
             WHERE image_id = ? AND deleted = FALSE",
        );
        let children: Vec<_> = ["image_properties", "image_tags", "image_members"]
            .iter()
            .map(|t| {
                self.sql(&format!(
                    "UPDATE {t} SET deleted = TRUE, deleted_at = ?, updated_at = ? WHERE image_id = ? AND deleted = FALSE"
                ))
            })
            .collect();
        let conflict = |expected: &str, found: Option<String>| CatalogError::Conflict {
            kind: "image",
            id: image_id.to_string(),
            expected: expected.to_string(),
            found,
        };
        on_pool!(&self.pool, p => {
            let mut tx = p.begin_write().await?;
            let status: Option<String> =
                sqlx::query_scalar(image_status).bind(image_id).fetch_optional(&mut *tx).await?;
            let Some(status) = status else {
                return Err(CatalogError::NotFound { kind: "image", id: image_id.to_string() });
            };
            let active: i64 = sqlx::query_scalar(count_active).bind(image_id).fetch_one(&mut *tx).await?;
            if active > 0 && status != "active" {
                return Err(conflict("active", Some(status)));
            }
            let t0 = Ts(utcnow());
            let locations = sqlx::query(queue_locations).bind(t0).bind(t0).bind(image_id)
                .execute(&mut *tx).await?.rows_affected();
            let t = Ts(utcnow());
            let to = if locations > 0 { "pending_delete" } else { "deleted" };
            let n = sqlx::query(destroy_image).bind(to).bind(t).bind(t).bind(image_id).bind(&status)
                .execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                // Another writer changed the image after it was read; dropping
                // the transaction rolls the location updates back.
                return Err(conflict(&status, None));
            }
            sqlx::query(other_locations).bind(t).bind(t).bind(image_id).execute(&mut *tx).await?;
            for q in children {
                sqlx::query(q).bind(t).bind(t).bind(image_id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(if locations > 0 {
                DelayedDelete::PendingDelete { locations }
            } else {
                DelayedDelete::Deleted
            })
        })
    }
}
