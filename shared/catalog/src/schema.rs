//! Glance's catalog schema at alembic head `2024_1_contract01` for SQLite,
//! PostgreSQL and MySQL/MariaDB (column for column, with Glance's indexes and
//! foreign keys), its creation and verification, and imaged's own additive
//! tables (all named `imaged_*`), which can be dropped without touching any
//! Glance table.

use sqlx::Row;

use crate::db::{BeginWrite, Catalog, on_pool};
use crate::error::{CatalogError, Result};
use crate::url::Engine;

/// The alembic head this crate writes and expects.
pub const ALEMBIC_HEAD: &str = "2024_1_contract01";
/// Alembic revisions whose schema this crate can work with.
pub const ACCEPTED_REVISIONS: &[&str] = &["2024_1_contract01", "2024_1_expand01"];
/// Version of imaged's additive tables.
pub const ADDITIVE_SCHEMA_VERSION: i32 = 1;

/// The Glance tables the daemons touch; all must exist.
pub const GLANCE_TABLES: &[&str] = &[
    "images",
    "image_locations",
    "image_properties",
    "image_tags",
    "image_members",
    "tasks",
    "task_info",
    "node_reference",
    "cached_images",
    "alembic_version",
];

/// imaged's additive tables, in drop order.
pub const ADDITIVE_TABLES: &[&str] = &["imaged_claims", "imaged_schema_version"];

const SQLITE_DDL: &[&str] = &[
    "CREATE TABLE alembic_version (
        version_num VARCHAR(32) NOT NULL,
        CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
    )",
    "CREATE TABLE images (
        id VARCHAR(36) NOT NULL,
        name VARCHAR(255),
        size INTEGER,
        status VARCHAR(30) NOT NULL,
        created_at DATETIME NOT NULL,
        updated_at DATETIME,
        deleted_at DATETIME,
        deleted BOOLEAN NOT NULL,
        disk_format VARCHAR(20),
        container_format VARCHAR(20),
        checksum VARCHAR(32),
        owner VARCHAR(255),
        min_disk INTEGER NOT NULL,
        min_ram INTEGER NOT NULL,
        protected BOOLEAN DEFAULT 0 NOT NULL,
        virtual_size INTEGER,
        visibility VARCHAR(9) DEFAULT 'shared' NOT NULL,
        os_hidden BOOLEAN DEFAULT 0 NOT NULL,
        os_hash_algo VARCHAR(64),
        os_hash_value VARCHAR(128),
        PRIMARY KEY (id)
    )",
    "CREATE INDEX checksum_image_idx ON images (checksum)",
    "CREATE INDEX ix_images_deleted ON images (deleted)",
    "CREATE INDEX owner_image_idx ON images (owner)",
    "CREATE INDEX created_at_image_idx ON images (created_at)",
    "CREATE INDEX updated_at_image_idx ON images (updated_at)",
    "CREATE INDEX visibility_image_idx ON images (visibility)",
    "CREATE INDEX os_hidden_image_idx ON images (os_hidden)",
    "CREATE INDEX os_hash_value_image_idx ON images (os_hash_value)",
    "CREATE TABLE image_locations (
        id INTEGER NOT NULL,
        image_id VARCHAR(36) NOT NULL,
        value TEXT NOT NULL,
        created_at DATETIME NOT NULL,
        updated_at DATETIME,
        deleted_at DATETIME,
        deleted BOOLEAN NOT NULL,
        meta_data TEXT,
        status VARCHAR(30) DEFAULT 'active' NOT NULL,
        PRIMARY KEY (id),
        FOREIGN KEY(image_id) REFERENCES images (id),
        CHECK (deleted IN (0, 1))
    )",
    "CREATE INDEX ix_image_locations_deleted ON image_locations (deleted)",
    "CREATE INDEX ix_image_locations_image_id ON image_locations (image_id)",
    "CREATE TABLE image_properties (
        id INTEGER NOT NULL,
        image_id VARCHAR(36) NOT NULL,
        name VARCHAR(255) NOT NULL,
        value TEXT,
        created_at DATETIME NOT NULL,
        updated_at DATETIME,
        deleted_at DATETIME,
        deleted BOOLEAN NOT NULL,
        PRIMARY KEY (id),
        FOREIGN KEY(image_id) REFERENCES images (id),
        CHECK (deleted IN (0, 1))
    )",
    "CREATE INDEX ix_image_properties_deleted ON image_properties (deleted)",
    "CREATE INDEX ix_image_properties_image_id ON image_properties (image_id)",
    "CREATE UNIQUE INDEX ix_image_properties_image_id_name ON image_properties (image_id, name)",
    "CREATE TABLE image_tags (
        id INTEGER NOT NULL,
        image_id VARCHAR(36) NOT NULL,
        value VARCHAR(255) NOT NULL,
        created_at DATETIME NOT NULL,
        updated_at DATETIME,
        deleted_at DATETIME,
        deleted BOOLEAN NOT NULL,
        PRIMARY KEY (id),
        FOREIGN KEY(image_id) REFERENCES images (id),
        CHECK (deleted IN (0, 1))
    )",
    "CREATE INDEX ix_image_tags_image_id ON image_tags (image_id)",
    "CREATE INDEX ix_image_tags_image_id_tag_value ON image_tags (image_id, value)",
    "CREATE TABLE image_members (
        id INTEGER NOT NULL,
        image_id VARCHAR(36) NOT NULL,
        member VARCHAR(255) NOT NULL,
        can_share BOOLEAN NOT NULL,
        created_at DATETIME NOT NULL,
        updated_at DATETIME,
        deleted_at DATETIME,
        deleted BOOLEAN NOT NULL,
        status VARCHAR(20) DEFAULT 'pending' NOT NULL,
        PRIMARY KEY (id),
        FOREIGN KEY(image_id) REFERENCES images (id),
        CONSTRAINT image_members_image_id_member_deleted_at_key UNIQUE (image_id, member, deleted_at),
        CHECK (can_share IN (0, 1)),
        CHECK (deleted IN (0, 1))
    )",
    "CREATE INDEX ix_image_members_deleted ON image_members (deleted)",
    "CREATE INDEX ix_image_members_image_id ON image_members (image_id)",
    "CREATE INDEX ix_image_members_image_id_member ON image_members (image_id, member)",
    "CREATE TABLE tasks (
        id VARCHAR(36) NOT NULL,
        type VARCHAR(30) NOT NULL,
        status VARCHAR(30) NOT NULL,
        owner VARCHAR(255) NOT NULL,
        expires_at DATETIME,
        created_at DATETIME NOT NULL,
        updated_at DATETIME,
        deleted_at DATETIME,
        deleted BOOLEAN NOT NULL,
        image_id VARCHAR(36),
        request_id VARCHAR(64),
        user_id VARCHAR(64),
        PRIMARY KEY (id),
        CHECK (deleted IN (0, 1))
    )",
    "CREATE INDEX ix_tasks_type ON tasks (type)",
    "CREATE INDEX ix_tasks_status ON tasks (status)",
    "CREATE INDEX ix_tasks_owner ON tasks (owner)",
    "CREATE INDEX ix_tasks_deleted ON tasks (deleted)",
    "CREATE INDEX ix_tasks_updated_at ON tasks (updated_at)",
    "CREATE INDEX ix_tasks_image_id ON tasks (image_id)",
    "CREATE TABLE task_info (
        task_id VARCHAR(36) NOT NULL,
        input TEXT,
        result TEXT,
        message TEXT,
        PRIMARY KEY (task_id),
        FOREIGN KEY(task_id) REFERENCES tasks (id)
    )",
    "CREATE TABLE node_reference (
        node_reference_id INTEGER NOT NULL,
        node_reference_url VARCHAR(255) NOT NULL,
        PRIMARY KEY (node_reference_id),
        CONSTRAINT uq_node_reference_node_reference_url UNIQUE (node_reference_url)
    )",
    "CREATE TABLE cached_images (
        id INTEGER NOT NULL,
        image_id VARCHAR(36) NOT NULL,
        last_accessed DATETIME NOT NULL,
        last_modified DATETIME NOT NULL,
        size BIGINT NOT NULL,
        hits INTEGER NOT NULL,
        checksum VARCHAR(32),
        node_reference_id INTEGER NOT NULL,
        PRIMARY KEY (id),
        CONSTRAINT ix_cached_images_image_id_node_reference_id UNIQUE (image_id, node_reference_id),
        FOREIGN KEY(node_reference_id) REFERENCES node_reference (node_reference_id)
    )",
    "CREATE TABLE metadef_namespaces (
        id INTEGER NOT NULL,
        namespace VARCHAR(80) NOT NULL,
        display_name VARCHAR(80),
        description TEXT,
        visibility VARCHAR(32),
        protected BOOLEAN,
        owner VARCHAR(255) NOT NULL,
        created_at DATETIME NOT NULL,
        updated_at DATETIME,
        PRIMARY KEY (id),
        CONSTRAINT uq_metadef_namespaces_namespace UNIQUE (namespace)
    )",
    "CREATE INDEX ix_metadef_namespaces_owner ON metadef_namespaces (owner)",
    "CREATE TABLE metadef_resource_types (
        id INTEGER NOT NULL,
        name VARCHAR(80) NOT NULL,
        protected BOOLEAN NOT NULL,
        created_at DATETIME NOT NULL,
        updated_at DATETIME,
        PRIMARY KEY (id),
        CONSTRAINT uq_metadef_resource_types_name UNIQUE (name)
    )",
    "CREATE TABLE metadef_namespace_resource_types (
        resource_type_id INTEGER NOT NULL,
        namespace_id INTEGER NOT NULL,
        properties_target VARCHAR(80),
        prefix VARCHAR(80),
        created_at DATETIME NOT NULL,
        updated_at DATETIME,
        PRIMARY KEY (resource_type_id, namespace_id),
        FOREIGN KEY(namespace_id) REFERENCES metadef_namespaces (id),
        FOREIGN KEY(resource_type_id) REFERENCES metadef_resource_types (id)
    )",
    "CREATE INDEX ix_metadef_ns_res_types_namespace_id ON metadef_namespace_resource_types (namespace_id)",
    "CREATE TABLE metadef_objects (
        id INTEGER NOT NULL,
        namespace_id INTEGER NOT NULL,
        name VARCHAR(80) NOT NULL,
        description TEXT,
        required TEXT,
        json_schema TEXT NOT NULL,
        created_at DATETIME NOT NULL,
        updated_at DATETIME,
        PRIMARY KEY (id),
        FOREIGN KEY(namespace_id) REFERENCES metadef_namespaces (id),
        CONSTRAINT uq_metadef_objects_namespace_id_name UNIQUE (namespace_id, name)
    )",
    "CREATE INDEX ix_metadef_objects_name ON metadef_objects (name)",
    "CREATE TABLE metadef_properties (
        id INTEGER NOT NULL,
        namespace_id INTEGER NOT NULL,
        name VARCHAR(80) NOT NULL,
        json_schema TEXT NOT NULL,
        created_at DATETIME NOT NULL,
        updated_at DATETIME,
        PRIMARY KEY (id),
        FOREIGN KEY(namespace_id) REFERENCES metadef_namespaces (id),
        CONSTRAINT uq_metadef_properties_namespace_id_name UNIQUE (namespace_id, name)
    )",
    "CREATE INDEX ix_metadef_properties_name ON metadef_properties (name)",
    "CREATE TABLE metadef_tags (
        id INTEGER NOT NULL,
        namespace_id INTEGER NOT NULL,
        name VARCHAR(80) NOT NULL,
        created_at DATETIME NOT NULL,
        updated_at DATETIME,
        PRIMARY KEY (id),
        FOREIGN KEY(namespace_id) REFERENCES metadef_namespaces (id),
        CONSTRAINT uq_metadef_tags_namespace_id_name UNIQUE (namespace_id, name)
    )",
    "CREATE INDEX ix_metadef_tags_name ON metadef_tags (name)",
];

/// Rewrites the SQLite DDL into the PostgreSQL or MySQL spelling. The
/// differences are mechanical: auto-increment keys, native types, booleans,
/// table options.
fn server_ddl(engine: Engine) -> Vec<String> {
    let mut out = Vec::new();
    if engine == Engine::Postgres {
        out.push(
            "CREATE TYPE image_visibility AS ENUM ('private', 'public', 'shared', 'community')"
                .to_string(),
        );
    }
    for stmt in SQLITE_DDL {
        let mut s = stmt.to_string();
        let is_table = s.starts_with("CREATE TABLE");
        let auto_int = [
            "image_locations",
            "image_properties",
            "image_tags",
            "image_members",
            "metadef_namespaces",
            "metadef_resource_types",
            "metadef_objects",
            "metadef_properties",
            "metadef_tags",
        ];
        let table = s.split_whitespace().nth(2).unwrap_or_default().to_string();
        match engine {
            Engine::Postgres => {
                if is_table && auto_int.contains(&table.as_str()) {
                    s = s.replacen("id INTEGER NOT NULL", "id SERIAL NOT NULL", 1);
                }
                if table == "node_reference" {
                    s = s.replacen(
                        "node_reference_id INTEGER NOT NULL",
                        "node_reference_id BIGSERIAL NOT NULL",
                        1,
                    );
                }
                if table == "cached_images" {
                    s = s.replacen("id INTEGER NOT NULL", "id BIGSERIAL NOT NULL", 1);
                    s = s.replace("node_reference_id INTEGER", "node_reference_id BIGINT");
                }
                if table == "images" {
                    s = s.replace("size INTEGER", "size BIGINT");
                    s = s.replace("virtual_size INTEGER", "virtual_size BIGINT");
                    s = s.replace(
                        "visibility VARCHAR(9) DEFAULT 'shared' NOT NULL",
                        "visibility image_visibility DEFAULT 'shared' NOT NULL",
                    );
                }
                s = s.replace("DATETIME", "TIMESTAMP WITHOUT TIME ZONE");
                s = s.replace("BOOLEAN DEFAULT 0", "BOOLEAN DEFAULT false");
                // PostgreSQL booleans are native; the 0/1 CHECKs only exist
                // where booleans are integers.
                s = s.replace(",\n        CHECK (can_share IN (0, 1))", "");
                s = s.replace(",\n        CHECK (deleted IN (0, 1))", "");
            }
            Engine::MySql => {
                if is_table && auto_int.contains(&table.as_str()) {
                    s = s.replacen(
                        "id INTEGER NOT NULL",
                        "id INTEGER NOT NULL AUTO_INCREMENT",
                        1,
                    );
                }
                if table == "node_reference" {
                    s = s.replacen(
                        "node_reference_id INTEGER NOT NULL",
                        "node_reference_id BIGINT NOT NULL AUTO_INCREMENT",
                        1,
                    );
                }
                if table == "cached_images" {
                    s = s.replacen(
                        "id INTEGER NOT NULL",
                        "id BIGINT NOT NULL AUTO_INCREMENT",
                        1,
                    );
                    s = s.replace("node_reference_id INTEGER", "node_reference_id BIGINT");
                }
                if table == "images" {
                    s = s.replace("size INTEGER", "size BIGINT");
                    s = s.replace("virtual_size INTEGER", "virtual_size BIGINT");
                    s = s.replace(
                        "visibility VARCHAR(9) DEFAULT 'shared' NOT NULL",
                        "visibility ENUM('private','public','shared','community') DEFAULT 'shared' NOT NULL",
                    );
                }
                s = s.replace("BOOLEAN", "BOOL");
                if is_table {
                    s.push_str(" ENGINE=InnoDB DEFAULT CHARSET=utf8");
                }
            }
            Engine::Sqlite => {}
        }
        out.push(s);
    }
    out
}

/// The DDL that creates Glance's schema on `engine`.
pub fn glance_ddl(engine: Engine) -> Vec<String> {
    match engine {
        Engine::Sqlite => SQLITE_DDL.iter().map(|s| s.to_string()).collect(),
        e => server_ddl(e),
    }
}

fn additive_ddl(engine: Engine) -> Vec<String> {
    let ts = match engine {
        Engine::Postgres => "TIMESTAMP WITHOUT TIME ZONE",
        _ => "DATETIME",
    };
    let tail = if engine == Engine::MySql {
        " ENGINE=InnoDB DEFAULT CHARSET=utf8"
    } else {
        ""
    };
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS imaged_schema_version (
                version INTEGER NOT NULL,
                applied_at {ts} NOT NULL,
                PRIMARY KEY (version)
            ){tail}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS imaged_claims (
                kind VARCHAR(32) NOT NULL,
                unit_id VARCHAR(64) NOT NULL,
                owner VARCHAR(255),
                lease_expires_at {ts},
                attempts INTEGER NOT NULL,
                last_error TEXT,
                error_class VARCHAR(32),
                next_attempt_at {ts},
                created_at {ts} NOT NULL,
                updated_at {ts},
                PRIMARY KEY (kind, unit_id)
            ){tail}"
        ),
    ]
}

/// Column description used by schema checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// The engine's type spelling, lower-case (e.g. `varchar(36)`,
    /// `timestamp without time zone`, `tinyint(1)`).
    pub data_type: String,
    pub nullable: bool,
}

impl Catalog {
    /// Creates Glance's schema at `2024_1_contract01` (stamping
    /// `alembic_version`) plus imaged's additive tables. Refuses when an
    /// `images` table already exists.
    pub async fn create_schema(&self) -> Result<()> {
        if self.table_names().await?.iter().any(|t| t == "images") {
            return Err(CatalogError::Schema(format!(
                "{} already holds a catalog; refusing to create the schema again",
                self.url
            )));
        }
        let ddl = glance_ddl(self.engine());
        let stamp = self.sql("INSERT INTO alembic_version (version_num) VALUES (?)");
        on_pool!(&self.pool, p => {
            // MySQL commits DDL implicitly, so a transaction would not make
            // this atomic there; on SQLite and PostgreSQL it does.
            let mut tx = p.begin_write().await?;
            for stmt in &ddl {
                sqlx::query(sqlx::AssertSqlSafe(stmt.clone())).execute(&mut *tx).await?;
            }
            sqlx::query(stamp).bind(ALEMBIC_HEAD).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        self.ensure_additive_schema().await
    }

    /// Table names in the catalog's database/schema.
    pub async fn table_names(&self) -> Result<Vec<String>> {
        let q = match self.engine() {
            Engine::Sqlite => {
                "SELECT name AS t FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY 1"
            }
            Engine::Postgres => {
                "SELECT CAST(table_name AS VARCHAR) AS t FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1"
            }
            Engine::MySql => {
                "SELECT CAST(table_name AS CHAR) AS t FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY 1"
            }
        };
        let names: Vec<String> = on_pool!(&self.pool, p => {
            sqlx::query_scalar(q).fetch_all(p).await?
        });
        Ok(names)
    }

    /// The `alembic_version` value(s), or `None` when the table is missing.
    pub async fn alembic_versions(&self) -> Result<Option<Vec<String>>> {
        if !self
            .table_names()
            .await?
            .iter()
            .any(|t| t == "alembic_version")
        {
            return Ok(None);
        }
        let v: Vec<String> = on_pool!(&self.pool, p => {
            sqlx::query_scalar("SELECT version_num FROM alembic_version").fetch_all(p).await?
        });
        Ok(Some(v))
    }

    /// Checks that the database is a Glance catalog this crate can work
    /// with, and says what to run when it is not.
    pub async fn verify_schema(&self) -> Result<()> {
        let tables = self.table_names().await?;
        let versions = self.alembic_versions().await?;
        let init_hint = "run `glance-manage db sync` to create Glance's schema (a new, empty catalog can also be created with imaged's catalog initialisation)";
        match versions.as_deref() {
            None | Some([]) => {
                return Err(CatalogError::Schema(format!(
                    "{} has no Glance schema (no alembic_version); {init_hint}",
                    self.url
                )));
            }
            Some([v]) if ACCEPTED_REVISIONS.contains(&v.as_str()) => {}
            Some(vs) => {
                return Err(CatalogError::Schema(format!(
                    "{} is at alembic revision {:?}, which this version does not know (expected {}); upgrade Glance's schema with `glance-manage db sync` or use an imaged release that matches it",
                    self.url,
                    vs.join(","),
                    ACCEPTED_REVISIONS.join(" or ")
                )));
            }
        }
        let missing: Vec<&str> = GLANCE_TABLES
            .iter()
            .copied()
            .filter(|t| !tables.iter().any(|x| x == t))
            .collect();
        if !missing.is_empty() {
            return Err(CatalogError::Schema(format!(
                "{} lacks the tables {}; {init_hint}",
                self.url,
                missing.join(", ")
            )));
        }
        Ok(())
    }

    /// Creates imaged's additive tables when they are missing and records
    /// their version. Never touches a Glance table.
    pub async fn ensure_additive_schema(&self) -> Result<()> {
        let ddl = additive_ddl(self.engine());
        let (ins, tail) = self.insert_ignore();
        let stamp = self.sql(&format!(
            "{ins} imaged_schema_version (version, applied_at) VALUES (?, ?){tail}"
        ));
        let now = crate::time::Ts(crate::time::utcnow());
        let found: Option<i32> = on_pool!(&self.pool, p => {
            for stmt in &ddl {
                sqlx::query(sqlx::AssertSqlSafe(stmt.clone())).execute(p).await?;
            }
            sqlx::query(stamp).bind(ADDITIVE_SCHEMA_VERSION).bind(now).execute(p).await?;
            sqlx::query_scalar("SELECT MAX(version) FROM imaged_schema_version")
                .fetch_one(p)
                .await?
        });
        match found {
            Some(v) if v > ADDITIVE_SCHEMA_VERSION => Err(CatalogError::Schema(format!(
                "imaged tables are at version {v}, newer than this release ({ADDITIVE_SCHEMA_VERSION})"
            ))),
            _ => Ok(()),
        }
    }

    /// Drops imaged's additive tables, leaving exactly Glance's schema.
    pub async fn drop_additive_tables(&self) -> Result<()> {
        on_pool!(&self.pool, p => {
            for t in ADDITIVE_TABLES {
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                    .execute(p)
                    .await?;
            }
        });
        Ok(())
    }

    /// Columns of `table` with their engine type spelling and nullability,
    /// in table order.
    pub async fn columns(&self, table: &str) -> Result<Vec<ColumnInfo>> {
        let cols = match self.engine() {
            Engine::Sqlite => {
                let q = format!("PRAGMA table_info({table})");
                on_pool!(&self.pool, p => {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(q)).fetch_all(p).await?;
                    let mut v = Vec::new();
                    for r in rows {
                        let name: String = r.try_get("name")?;
                        let ty: String = r.try_get("type")?;
                        let notnull: i64 = r.try_get("notnull")?;
                        let pk: i64 = r.try_get("pk")?;
                        v.push(ColumnInfo { name, data_type: ty.to_ascii_lowercase(), nullable: notnull == 0 && pk == 0 });
                    }
                    v
                })
            }
            Engine::Postgres => {
                let q = self.sql(
                    "SELECT CAST(column_name AS VARCHAR) AS n,
                            CAST(CASE WHEN data_type = 'character varying'
                                      THEN 'varchar(' || character_maximum_length || ')'
                                      WHEN data_type = 'USER-DEFINED' THEN udt_name
                                      ELSE data_type END AS VARCHAR) AS t,
                            CAST(is_nullable AS VARCHAR) AS nl
                     FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = ?
                     ORDER BY ordinal_position",
                );
                on_pool!(&self.pool, p => {
                    let rows = sqlx::query(q).bind(table).fetch_all(p).await?;
                    let mut v = Vec::new();
                    for r in rows {
                        let nl: String = r.try_get("nl")?;
                        v.push(ColumnInfo { name: r.try_get("n")?, data_type: r.try_get::<String, _>("t")?.to_ascii_lowercase(), nullable: nl == "YES" });
                    }
                    v
                })
            }
            Engine::MySql => {
                let q = self.sql(
                    "SELECT CAST(column_name AS CHAR) AS n, CAST(column_type AS CHAR) AS t,
                            CAST(is_nullable AS CHAR) AS nl
                     FROM information_schema.columns
                     WHERE table_schema = DATABASE() AND table_name = ?
                     ORDER BY ordinal_position",
                );
                on_pool!(&self.pool, p => {
                    let rows = sqlx::query(q).bind(table).fetch_all(p).await?;
                    let mut v = Vec::new();
                    for r in rows {
                        let nl: String = r.try_get("nl")?;
                        v.push(ColumnInfo { name: r.try_get("n")?, data_type: r.try_get::<String, _>("t")?.to_ascii_lowercase(), nullable: nl == "YES" });
                    }
                    v
                })
            }
        };
        Ok(cols)
    }

    /// Index names of `table` (excluding primary keys), sorted.
    pub async fn index_names(&self, table: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = match self.engine() {
            Engine::Sqlite => {
                let q = self.sql(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                );
                on_pool!(&self.pool, p => {
                    sqlx::query_scalar(q).bind(table).fetch_all(p).await?
                })
            }
            Engine::Postgres => {
                let q = self.sql(
                    "SELECT CAST(indexname AS VARCHAR) FROM pg_indexes
                     WHERE schemaname = current_schema() AND tablename = ? AND indexname NOT LIKE '%_pkey'",
                );
                on_pool!(&self.pool, p => {
                    sqlx::query_scalar(q).bind(table).fetch_all(p).await?
                })
            }
            Engine::MySql => {
                let q = self.sql(
                    "SELECT DISTINCT CAST(index_name AS CHAR) FROM information_schema.statistics
                     WHERE table_schema = DATABASE() AND table_name = ? AND index_name <> 'PRIMARY'",
                );
                on_pool!(&self.pool, p => {
                    sqlx::query_scalar(q).bind(table).fetch_all(p).await?
                })
            }
        };
        names.sort();
        names.dedup();
        Ok(names)
    }
}
