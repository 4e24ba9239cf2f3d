//! Image operations the import executor needs: create, compare-and-set
//! status, data attributes (checksum, hash, size, formats), locations
//! (encrypted like Glance when `metadata_encryption_key` is set), and
//! properties, including the atomic set/delete that Glance uses for the
//! `os_glance_import_task` lock.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use serde_json::Value;
use sqlx::Row;

use crate::db::{BeginWrite, Catalog, on_pool};
use crate::error::{CatalogError, Result};
use crate::time::{Ts, utcnow};

/// Image statuses Glance's DB layer accepts.
pub const IMAGE_STATUSES: &[&str] = &[
    "active",
    "saving",
    "queued",
    "killed",
    "pending_delete",
    "deleted",
    "deactivated",
    "importing",
    "uploading",
];
/// Visibility values.
pub const VISIBILITIES: &[&str] = &["private", "public", "shared", "community"];

/// An `images` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    pub name: Option<String>,
    pub size: Option<i64>,
    pub status: String,
    pub created_at: NaiveDateTime,
    pub updated_at: Option<NaiveDateTime>,
    pub deleted_at: Option<NaiveDateTime>,
    pub deleted: bool,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub checksum: Option<String>,
    pub owner: Option<String>,
    pub min_disk: i32,
    pub min_ram: i32,
    pub protected: bool,
    pub virtual_size: Option<i64>,
    pub visibility: String,
    pub os_hidden: bool,
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
}

/// A new image (the API's `image_create`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewImage {
    /// `None` = a fresh uuid4.
    pub id: Option<String>,
    pub name: Option<String>,
    pub owner: Option<String>,
    /// Default `queued`.
    pub status: String,
    /// Default `shared`.
    pub visibility: String,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub min_disk: i32,
    pub min_ram: i32,
    pub protected: bool,
    pub os_hidden: bool,
}

impl Default for NewImage {
    fn default() -> Self {
        NewImage {
            id: None,
            name: None,
            owner: None,
            status: "queued".into(),
            visibility: "shared".into(),
            disk_format: None,
            container_format: None,
            min_disk: 0,
            min_ram: 0,
            protected: false,
            os_hidden: false,
        }
    }
}

/// Data attributes set after an upload; `None` fields are left unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDataUpdate {
    pub checksum: Option<String>,
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    pub size: Option<i64>,
    pub virtual_size: Option<i64>,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
}

impl ImageDataUpdate {
    /// `UPDATE images SET updated_at = ?, <the set columns> WHERE id = ?`
    /// with the text values and then the integer values to bind, in order,
    /// after `updated_at` and before the id.
    pub(crate) fn update_sql(&self) -> (String, Vec<String>, Vec<i64>) {
        let mut sets = vec!["updated_at = ?".to_string()];
        let mut texts = Vec::new();
        for (col, v) in [
            ("checksum", &self.checksum),
            ("os_hash_algo", &self.os_hash_algo),
            ("os_hash_value", &self.os_hash_value),
            ("disk_format", &self.disk_format),
            ("container_format", &self.container_format),
        ] {
            if let Some(v) = v {
                sets.push(format!("{col} = ?"));
                texts.push(v.clone());
            }
        }
        let mut ints = Vec::new();
        for (col, v) in [("size", self.size), ("virtual_size", self.virtual_size)] {
            if let Some(v) = v {
                sets.push(format!("{col} = ?"));
                ints.push(v);
            }
        }
        let sql = format!("UPDATE images SET {} WHERE id = ?", sets.join(", "));
        (sql, texts, ints)
    }
}

/// An `image_locations` row with its URL decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    pub id: i64,
    pub image_id: String,
    /// Decrypted URL, or the reason it could not be decrypted.
    pub url: std::result::Result<String, String>,
    pub meta_data: Value,
    pub status: String,
    pub deleted: bool,
    pub deleted_at: Option<NaiveDateTime>,
}

const IMAGE_COLS: &str = "id, name, size, status, created_at, updated_at, deleted_at, deleted, disk_format, container_format, \
    checksum, owner, min_disk, min_ram, protected, virtual_size, {VIS} AS visibility, os_hidden, os_hash_algo, os_hash_value";

impl Catalog {
    /// Creates an image row as Glance's `image_create` does (`created_at =
    /// updated_at = now`, `deleted = false`).
    pub async fn create_image(&self, img: &NewImage) -> Result<String> {
        self.check_new_image(img, &img.status)?;
        let id = img
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let sql = self.insert_image_sql();
        self.with_retry("create image", || async {
            let now = Ts(utcnow());
            let sql = self.sql(&sql);
            on_pool!(&self.pool, p => {
                sqlx::query(sql).bind(&id).bind(img.name.as_deref()).bind(&img.status).bind(now).bind(now)
                    .bind(img.disk_format.as_deref()).bind(img.container_format.as_deref()).bind(img.owner.as_deref())
                    .bind(img.min_disk).bind(img.min_ram).bind(img.protected).bind(&img.visibility).bind(img.os_hidden)
                    .execute(p).await?;
            });
            Ok(())
        })
        .await?;
        Ok(id)
    }

    /// The checks [`Catalog::create_image`] makes before writing `img` with
    /// `status`.
    pub(crate) fn check_new_image(&self, img: &NewImage, status: &str) -> Result<()> {
        if !IMAGE_STATUSES.contains(&status) {
            return Err(CatalogError::InvalidValue(format!(
                "invalid image status {status:?}"
            )));
        }
        if !VISIBILITIES.contains(&img.visibility.as_str()) {
            return Err(CatalogError::InvalidValue(format!(
                "invalid visibility {:?}",
                img.visibility
            )));
        }
        for v in [&img.name, &img.owner].into_iter().flatten() {
            self.check_text("image attribute", v)?;
        }
        Ok(())
    }

    /// The `images` insert of `image_create`, with `?` placeholders bound
    /// as id, name, status, created_at, updated_at, disk_format,
    /// container_format, owner, min_disk, min_ram, protected, visibility,
    /// os_hidden.
    pub(crate) fn insert_image_sql(&self) -> String {
        format!(
            "INSERT INTO images (id, name, size, status, created_at, updated_at, deleted_at, deleted, disk_format, container_format, \
             checksum, owner, min_disk, min_ram, protected, virtual_size, visibility, os_hidden, os_hash_algo, os_hash_value) \
             VALUES (?, ?, NULL, ?, ?, ?, NULL, FALSE, ?, ?, NULL, ?, ?, ?, ?, NULL, {}, ?, NULL, NULL)",
            self.vis_param()
        )
    }

    /// One image, deleted or not.
    pub async fn get_image(&self, id: &str) -> Result<Option<Image>> {
        let sql = self.sql(&format!(
            "SELECT {} FROM images WHERE id = ?",
            IMAGE_COLS.replace("{VIS}", &self.vis_read("visibility"))
        ));
        let img = on_pool!(&self.pool, p => {
            match sqlx::query(sql).bind(id).fetch_optional(p).await? {
                None => None,
                Some(r) => Some(Image {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    size: r.try_get("size")?,
                    status: r.try_get("status")?,
                    created_at: r.try_get::<Ts, _>("created_at")?.0,
                    updated_at: r.try_get::<Option<Ts>, _>("updated_at")?.map(|t| t.0),
                    deleted_at: r.try_get::<Option<Ts>, _>("deleted_at")?.map(|t| t.0),
                    deleted: r.try_get("deleted")?,
                    disk_format: r.try_get("disk_format")?,
                    container_format: r.try_get("container_format")?,
                    checksum: r.try_get("checksum")?,
                    owner: r.try_get("owner")?,
                    min_disk: r.try_get("min_disk")?,
                    min_ram: r.try_get("min_ram")?,
                    protected: r.try_get("protected")?,
                    virtual_size: r.try_get("virtual_size")?,
                    visibility: r.try_get("visibility")?,
                    os_hidden: r.try_get("os_hidden")?,
                    os_hash_algo: r.try_get("os_hash_algo")?,
                    os_hash_value: r.try_get("os_hash_value")?,
                }),
            }
        });
        Ok(img)
    }

    /// Compare-and-set of `images.status` (`from → to`), bumping
    /// `updated_at`. Moving to `queued` clears `size` and `virtual_size`, as
    /// Glance's domain model does. `Conflict` names the status found.
    pub async fn set_image_status(&self, id: &str, from: &str, to: &str) -> Result<()> {
        if !IMAGE_STATUSES.contains(&to) {
            return Err(CatalogError::InvalidValue(format!(
                "invalid image status {to:?}"
            )));
        }
        let clear = if to == "queued" {
            ", size = NULL, virtual_size = NULL"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE images SET status = ?, updated_at = ?{clear} WHERE id = ? AND status = ?"
        );
        let n = self
            .with_retry("set image status", || async {
                let sql = self.sql(&sql);
                Ok(on_pool!(&self.pool, p => {
                    sqlx::query(sql).bind(to).bind(Ts(utcnow())).bind(id).bind(from).execute(p).await?.rows_affected()
                }))
            })
            .await?;
        if n == 0 {
            let found = self.get_image(id).await?.map(|i| i.status);
            if found.is_none() {
                return Err(CatalogError::NotFound {
                    kind: "image",
                    id: id.to_string(),
                });
            }
            return Err(CatalogError::Conflict {
                kind: "image",
                id: id.to_string(),
                expected: from.to_string(),
                found,
            });
        }
        Ok(())
    }

    /// Sets the data attributes that are `Some`, bumping `updated_at`.
    pub async fn update_image_data(&self, id: &str, upd: &ImageDataUpdate) -> Result<()> {
        let (sql, texts, ints) = upd.update_sql();
        let n = self
            .with_retry("update image data", || async {
                let sql = self.sql(&sql);
                Ok(on_pool!(&self.pool, p => {
                    let mut q = sqlx::query(sql).bind(Ts(utcnow()));
                    for t in &texts {
                        q = q.bind(t.as_str());
                    }
                    for i in &ints {
                        q = q.bind(*i);
                    }
                    q.bind(id).execute(p).await?.rows_affected()
                }))
            })
            .await?;
        if n == 0 {
            return Err(CatalogError::NotFound {
                kind: "image",
                id: id.to_string(),
            });
        }
        Ok(())
    }

    /// Adds a location (`meta_data` as Python-style JSON, e.g.
    /// `{"store": "fast"}`); the URL is encrypted when a key is set.
    /// Returns the new location id.
    pub async fn add_location(
        &self,
        image_id: &str,
        url: &str,
        meta_data: &Value,
        status: &str,
    ) -> Result<i64> {
        self.check_text("location", url)?;
        let value = match &self.cipher {
            Some(c) => c.encrypt(url)?,
            None => url.to_string(),
        };
        let meta = crate::json::dumps(meta_data);
        let engine = self.engine();
        self.with_retry("add location", || async {
            let now = Ts(utcnow());
            let base = "INSERT INTO image_locations (image_id, value, created_at, updated_at, deleted_at, deleted, meta_data, status) \
                        VALUES (?, ?, ?, ?, NULL, FALSE, ?, ?)";
            let sql = if engine == crate::Engine::MySql { self.sql(base) } else { self.sql(&format!("{base} RETURNING id")) };
            let id: i64 = match &self.pool {
                crate::db::Pools::MySql(p) => {
                    let r = sqlx::query(sql).bind(image_id).bind(&value).bind(now).bind(now).bind(&meta).bind(status).execute(p).await?;
                    r.last_insert_id() as i64
                }
                crate::db::Pools::Sqlite(p) => {
                    i64::from(sqlx::query_scalar::<_, i32>(sql).bind(image_id).bind(&value).bind(now).bind(now).bind(&meta).bind(status).fetch_one(p).await?)
                }
                crate::db::Pools::Postgres(p) => {
                    i64::from(sqlx::query_scalar::<_, i32>(sql).bind(image_id).bind(&value).bind(now).bind(now).bind(&meta).bind(status).fetch_one(p).await?)
                }
            };
            Ok(id)
        })
        .await
    }

    /// All location rows of an image (any status), URLs decoded, in id order.
    pub async fn image_locations(&self, image_id: &str) -> Result<Vec<Location>> {
        let sql = self.sql(
            "SELECT id, image_id, value, meta_data, status, deleted, deleted_at FROM image_locations WHERE image_id = ? ORDER BY id",
        );
        let out = on_pool!(&self.pool, p => {
            let rows = sqlx::query(sql).bind(image_id).fetch_all(p).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let value: String = r.try_get("value")?;
                let meta: Option<String> = r.try_get("meta_data")?;
                out.push(Location {
                    id: i64::from(r.try_get::<i32, _>("id")?),
                    image_id: r.try_get("image_id")?,
                    url: match &self.cipher { None => Ok(value), Some(c) => c.read_value(&value).map_err(|e| e.to_string()) },
                    meta_data: crate::json::loads_or_empty(meta.as_deref()),
                    status: r.try_get("status")?,
                    deleted: r.try_get("deleted")?,
                    deleted_at: r.try_get::<Option<Ts>, _>("deleted_at")?.map(|t| t.0),
                });
            }
            out
        });
        Ok(out)
    }

    /// Compare-and-set of a location's status. Moving to `deleted` or
    /// `pending_delete` also sets `deleted = 1, deleted_at = now`, Glance's
    /// rule.
    pub async fn set_location_status(&self, location_id: i64, from: &str, to: &str) -> Result<()> {
        let del = matches!(to, "deleted" | "pending_delete");
        let sql = if del {
            "UPDATE image_locations SET status = ?, deleted = TRUE, deleted_at = ?, updated_at = ? WHERE id = ? AND status = ?"
        } else {
            "UPDATE image_locations SET status = ?, updated_at = ? WHERE id = ? AND status = ?"
        };
        let n = self
            .with_retry("set location status", || async {
                let sql = self.sql(sql);
                let now = Ts(utcnow());
                Ok(on_pool!(&self.pool, p => {
                    let q = sqlx::query(sql).bind(to);
                    let q = if del { q.bind(now) } else { q };
                    q.bind(now).bind(location_id).bind(from).execute(p).await?.rows_affected()
                }))
            })
            .await?;
        if n == 0 {
            return Err(CatalogError::Conflict {
                kind: "location",
                id: location_id.to_string(),
                expected: from.to_string(),
                found: None,
            });
        }
        Ok(())
    }

    /// The live (not deleted) properties of an image.
    pub async fn image_properties(
        &self,
        image_id: &str,
    ) -> Result<BTreeMap<String, Option<String>>> {
        let sql = self
            .sql("SELECT name, value FROM image_properties WHERE image_id = ? AND deleted = FALSE");
        let out = on_pool!(&self.pool, p => {
            let rows = sqlx::query(sql).bind(image_id).fetch_all(p).await?;
            let mut m = BTreeMap::new();
            for r in rows {
                m.insert(r.try_get::<String, _>("name")?, r.try_get::<Option<String>, _>("value")?);
            }
            m
        });
        Ok(out)
    }

    /// Sets a property: updates (and revives) the existing row for that
    /// name, or inserts one; the unique `(image_id, name)` index means
    /// Glance never has two rows for a name.
    pub async fn set_property(&self, image_id: &str, name: &str, value: &str) -> Result<()> {
        self.check_text("property", name)?;
        self.check_text("property", value)?;
        self.with_retry("set property", || async {
            let now = Ts(utcnow());
            let upd = self.sql(
                "UPDATE image_properties SET value = ?, deleted = FALSE, deleted_at = NULL, updated_at = ? WHERE image_id = ? AND name = ?",
            );
            let ins = self.sql(
                "INSERT INTO image_properties (image_id, name, value, created_at, updated_at, deleted_at, deleted) VALUES (?, ?, ?, ?, ?, NULL, FALSE)",
            );
            on_pool!(&self.pool, p => {
                let mut tx = p.begin_write().await?;
                let n = sqlx::query(upd).bind(value).bind(now).bind(image_id).bind(name).execute(&mut *tx).await?.rows_affected();
                if n == 0 {
                    sqlx::query(ins).bind(image_id).bind(name).bind(value).bind(now).bind(now).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            });
            Ok(())
        })
        .await
    }

    /// Glance's `image_set_property_atomic`: takes the property only if no
    /// live row has that name (revives a soft-deleted row, or inserts).
    /// Returns `false` when someone else holds it (the import lock is taken).
    pub async fn set_property_atomic(
        &self,
        image_id: &str,
        name: &str,
        value: &str,
    ) -> Result<bool> {
        self.check_text("property", value)?;
        let (ins, tail) = self.insert_ignore();
        self.with_retry("set property atomic", || async {
            let now = Ts(utcnow());
            let revive = self.sql(
                "UPDATE image_properties SET value = ?, deleted = FALSE, deleted_at = NULL, updated_at = ? \
                 WHERE image_id = ? AND name = ? AND deleted = TRUE",
            );
            let insert = self.sql(&format!(
                "{ins} image_properties (image_id, name, value, created_at, updated_at, deleted_at, deleted) VALUES (?, ?, ?, ?, ?, NULL, FALSE){tail}"
            ));
            Ok(on_pool!(&self.pool, p => {
                let mut tx = p.begin_write().await?;
                let mut n = sqlx::query(revive).bind(value).bind(now).bind(image_id).bind(name).execute(&mut *tx).await?.rows_affected();
                if n == 0 {
                    n = sqlx::query(insert).bind(image_id).bind(name).bind(value).bind(now).bind(now).execute(&mut *tx).await?.rows_affected();
                }
                tx.commit().await?;
                n > 0
            }))
        })
        .await
    }

    /// Soft-deletes a property. Returns whether a live row was deleted.
    pub async fn delete_property(&self, image_id: &str, name: &str) -> Result<bool> {
        self.delete_property_inner(image_id, name, None).await
    }

    /// Glance's `image_delete_property_atomic` (how its import lock is
    /// dropped): deletes the row outright, not softly, and only while the
    /// value is still `expected`. Returns `false` when the value differs or
    /// the property is gone.
    pub async fn delete_property_atomic(
        &self,
        image_id: &str,
        name: &str,
        expected: &str,
    ) -> Result<bool> {
        self.delete_property_inner(image_id, name, Some(expected))
            .await
    }

    async fn delete_property_inner(
        &self,
        image_id: &str,
        name: &str,
        expected: Option<&str>,
    ) -> Result<bool> {
        let sql = match expected {
            Some(_) => {
                "DELETE FROM image_properties WHERE image_id = ? AND name = ? AND deleted = FALSE AND value = ?"
            }
            None => {
                "UPDATE image_properties SET deleted = TRUE, deleted_at = ?, updated_at = ? WHERE image_id = ? AND name = ? AND deleted = FALSE"
            }
        };
        self.with_retry("delete property", || async {
            let now = Ts(utcnow());
            let sql = self.sql(sql);
            Ok(on_pool!(&self.pool, p => {
                let q = match expected {
                    Some(v) => sqlx::query(sql).bind(image_id).bind(name).bind(v),
                    None => sqlx::query(sql).bind(now).bind(now).bind(image_id).bind(name),
                };
                q.execute(p).await?.rows_affected() > 0
            }))
        })
        .await
    }
}
