//! Test support for the whole workspace (cargo feature `testing`): a fresh,
//! uniquely named catalog on each engine, and fixtures that write rows
//! exactly as Glance's API leaves them.
//!
//! PostgreSQL and MySQL/MariaDB come from `IMAGED_TEST_POSTGRES_URL` and
//! `IMAGED_TEST_MYSQL_URL`. When a server is unreachable the test fails if
//! `CI` is set and is skipped with a loud message otherwise.

use std::time::Duration;

use chrono::NaiveDateTime;
use sqlx::{AssertSqlSafe, Connection};

use crate::db::{Catalog, on_pool};
use crate::error::Result;
use crate::options::CatalogOptions;
use crate::time::Ts;
use crate::url::Engine;

/// Default server URLs when the environment does not name one.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/mysql";

/// A throw-away catalog with Glance's schema. The database (or SQLite
/// file) is removed when the value is dropped.
pub struct TestDb {
    pub catalog: Catalog,
    pub options: CatalogOptions,
    engine: Engine,
    admin_url: Option<String>,
    db_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

fn server_url(engine: Engine) -> Option<String> {
    match engine {
        Engine::Sqlite => None,
        Engine::Postgres => Some(
            std::env::var("IMAGED_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into()),
        ),
        Engine::MySql => Some(
            std::env::var("IMAGED_TEST_MYSQL_URL").unwrap_or_else(|_| DEFAULT_MYSQL_URL.into()),
        ),
    }
}

fn unreachable(engine: Engine, err: impl std::fmt::Display) -> Option<TestDb> {
    let msg = format!("{engine} test server unreachable: {err}");
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set, so this is a failure)");
    }
    eprintln!("\n!!!!!!!! SKIPPING {engine} TEST: {msg} !!!!!!!!\n");
    None
}

fn with_path(url: &str, db: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.set_path(&format!("/{db}"));
            u.to_string()
        }
        Err(_) => url.to_string(),
    }
}

impl TestDb {
    /// A fresh catalog with Glance's schema on `engine`, default options.
    /// `None` means "skipped" (server unreachable outside CI).
    pub async fn new(engine: Engine) -> Option<TestDb> {
        Self::with_options(engine, |_| {}).await
    }

    /// Like [`TestDb::new`], letting the caller adjust the options (the
    /// connection URL is filled in afterwards).
    pub async fn with_options(
        engine: Engine,
        adjust: impl FnOnce(&mut CatalogOptions),
    ) -> Option<TestDb> {
        let name = format!(
            "imaged_test_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let (url, dir, admin) = match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let path = dir.path().join("glance.sqlite");
                (format!("sqlite:///{}", path.display()), Some(dir), None)
            }
            Engine::Postgres | Engine::MySql => {
                let admin = server_url(engine)?;
                let create = match engine {
                    Engine::Postgres => format!("CREATE DATABASE {name}"),
                    _ => format!("CREATE DATABASE {name} CHARACTER SET utf8"),
                };
                let res = if engine == Engine::Postgres {
                    match sqlx::PgConnection::connect(&admin).await {
                        Ok(mut c) => sqlx::query(AssertSqlSafe(create))
                            .execute(&mut c)
                            .await
                            .map(|_| ()),
                        Err(e) => Err(e),
                    }
                } else {
                    match sqlx::MySqlConnection::connect(&admin).await {
                        Ok(mut c) => sqlx::query(AssertSqlSafe(create))
                            .execute(&mut c)
                            .await
                            .map(|_| ()),
                        Err(e) => Err(e),
                    }
                };
                if let Err(e) = res {
                    return unreachable(engine, e);
                }
                (with_path(&admin, &name), None, Some(admin))
            }
        };
        let mut options = CatalogOptions::new(url.clone());
        options.db_retry_interval = Duration::from_millis(50);
        options.db_max_retry_interval = Duration::from_millis(500);
        options.retry_interval = Duration::from_millis(200);
        options.max_retries = 3;
        adjust(&mut options);
        options.connection = url;
        let catalog = Catalog::connect(options.clone(), true)
            .await
            .expect("connect test catalog");
        if engine != Engine::Sqlite {
            catalog.create_schema().await.expect("create schema");
        }
        catalog.verify_schema().await.expect("verify schema");
        catalog
            .ensure_additive_schema()
            .await
            .expect("additive schema");
        Some(TestDb {
            catalog,
            options,
            engine,
            admin_url: admin,
            db_name: if engine == Engine::Sqlite {
                None
            } else {
                Some(name)
            },
            _dir: dir,
        })
    }

    /// The engine.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// A second, independent `Catalog` on the same database (another
    /// "process").
    pub async fn reopen(&self) -> Catalog {
        Catalog::open(self.options.clone())
            .await
            .expect("reopen catalog")
    }

    /// Runs literal SQL (fixtures written in Glance's own forms).
    pub async fn exec(&self, sql: &str) -> Result<u64> {
        let sql = sql.to_string();
        Ok(on_pool!(&self.catalog.pool, p => {
            sqlx::query(AssertSqlSafe(sql)).execute(p).await?.rows_affected()
        }))
    }

    /// Runs a scalar query returning one i64 (counts in tests).
    pub async fn count(&self, sql: &str) -> Result<i64> {
        let sql = sql.to_string();
        Ok(on_pool!(&self.catalog.pool, p => {
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql)).fetch_one(p).await?
        }))
    }

    /// Runs a query returning one optional text column, first row.
    pub async fn text(&self, sql: &str) -> Result<Option<String>> {
        let sql = sql.to_string();
        Ok(on_pool!(&self.catalog.pool, p => {
            sqlx::query_scalar::<_, Option<String>>(AssertSqlSafe(sql)).fetch_one(p).await?
        }))
    }

    /// Reads a timestamp column value of the first row.
    pub async fn timestamp(&self, sql: &str) -> Result<Option<NaiveDateTime>> {
        let sql = sql.to_string();
        Ok(on_pool!(&self.catalog.pool, p => {
            sqlx::query_scalar::<_, Option<Ts>>(AssertSqlSafe(sql)).fetch_one(p).await?.map(|t| t.0)
        }))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (Some(admin), Some(name)) = (self.admin_url.clone(), self.db_name.clone()) else {
            return;
        };
        let engine = self.engine;
        // Drop runs inside the test's runtime, possibly a single-threaded
        // one; a separate thread with its own runtime does the cleanup.
        // The catalog's pools are left to the test's runtime (closing them
        // from here would need that runtime, which is blocked on this
        // join); PostgreSQL's FORCE ends their sessions.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let drop_sql = match engine {
                    Engine::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    _ => format!("DROP DATABASE IF EXISTS {name}"),
                };
                if engine == Engine::Postgres {
                    if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                        let _ = sqlx::query(AssertSqlSafe(drop_sql)).execute(&mut c).await;
                    }
                } else if let Ok(mut c) = sqlx::MySqlConnection::connect(&admin).await {
                    let _ = sqlx::query(AssertSqlSafe(drop_sql)).execute(&mut c).await;
                }
            });
        })
        .join();
    }
}

/// Glance's SQLite/PostgreSQL/MySQL literal for a timestamp, as a SQL
/// fragment (for fixtures written with literal SQL).
pub fn ts_literal(engine: Engine, t: &NaiveDateTime) -> String {
    match engine {
        Engine::Sqlite => format!("'{}'", crate::time::format_sqlite(t)),
        Engine::Postgres => format!("TIMESTAMP '{}'", crate::time::format_sqlite(t)),
        Engine::MySql => format!("'{}'", t.format("%Y-%m-%d %H:%M:%S")),
    }
}

/// An image to insert as Glance's API leaves it after a delayed delete
/// (catalog-schema §5): image `pending_delete`, deleted at `deleted_at`;
/// locations `pending_delete` deleted slightly earlier; properties, tags and
/// members soft-deleted at `deleted_at`.
#[derive(Debug, Clone)]
pub struct PendingDeleteImage {
    pub id: String,
    pub deleted_at: NaiveDateTime,
    pub visibility: String,
    /// `(stored value, meta_data JSON text or None)`.
    pub locations: Vec<(String, Option<String>)>,
    pub properties: Vec<(String, String)>,
    pub tags: Vec<String>,
    pub members: Vec<String>,
}

impl PendingDeleteImage {
    /// An image with `n` `file://` locations and one property, tag and member.
    pub fn new(deleted_at: NaiveDateTime, n: usize) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        PendingDeleteImage {
            locations: (0..n)
                .map(|i| {
                    (
                        format!("file:///var/lib/glance/images/{id}-{i}"),
                        Some("{}".to_string()),
                    )
                })
                .collect(),
            id,
            deleted_at,
            visibility: "shared".into(),
            properties: vec![("hw_disk_bus".into(), "virtio".into())],
            tags: vec!["fixture".into()],
            members: vec!["project-b".into()],
        }
    }

    /// Inserts the rows.
    pub async fn insert(&self, cat: &Catalog) -> Result<()> {
        let t = Ts(self.deleted_at);
        let loc_t = Ts(self.deleted_at - chrono::Duration::milliseconds(80));
        let created = Ts(self.deleted_at - chrono::Duration::days(3));
        let img = cat.sql(&format!(
            "INSERT INTO images (id, name, size, status, created_at, updated_at, deleted_at, deleted, disk_format, \
             container_format, checksum, owner, min_disk, min_ram, protected, virtual_size, visibility, os_hidden) \
             VALUES (?, 'fixture', 1024, 'pending_delete', ?, ?, ?, TRUE, 'raw', 'bare', NULL, 'project-a', 0, 0, FALSE, NULL, {}, FALSE)",
            cat.vis_param()
        ));
        let loc = cat.sql(
            "INSERT INTO image_locations (image_id, value, created_at, updated_at, deleted_at, deleted, meta_data, status) \
             VALUES (?, ?, ?, ?, ?, TRUE, ?, 'pending_delete')",
        );
        let prop = cat.sql(
            "INSERT INTO image_properties (image_id, name, value, created_at, updated_at, deleted_at, deleted) VALUES (?, ?, ?, ?, ?, ?, TRUE)",
        );
        let tag = cat.sql(
            "INSERT INTO image_tags (image_id, value, created_at, updated_at, deleted_at, deleted) VALUES (?, ?, ?, ?, ?, TRUE)",
        );
        let mem = cat.sql(
            "INSERT INTO image_members (image_id, member, can_share, created_at, updated_at, deleted_at, deleted, status) \
             VALUES (?, ?, FALSE, ?, ?, ?, TRUE, 'accepted')",
        );
        on_pool!(&cat.pool, p => {
            let mut tx = p.begin().await?;
            sqlx::query(img).bind(&self.id).bind(created).bind(t).bind(t).bind(&self.visibility).execute(&mut *tx).await?;
            for (v, m) in &self.locations {
                sqlx::query(AssertSqlSafe(loc.0.clone())).bind(&self.id).bind(v).bind(created).bind(loc_t).bind(loc_t).bind(m.as_deref()).execute(&mut *tx).await?;
            }
            for (n, v) in &self.properties {
                sqlx::query(AssertSqlSafe(prop.0.clone())).bind(&self.id).bind(n).bind(v).bind(created).bind(t).bind(t).execute(&mut *tx).await?;
            }
            for v in &self.tags {
                sqlx::query(AssertSqlSafe(tag.0.clone())).bind(&self.id).bind(v).bind(created).bind(t).bind(t).execute(&mut *tx).await?;
            }
            for m in &self.members {
                sqlx::query(AssertSqlSafe(mem.0.clone())).bind(&self.id).bind(m).bind(created).bind(t).bind(t).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}

/// Inserts `images` `pending_delete` images (deleted an hour ago) with
/// `per_image` `pending_delete` locations each, generated inside the
/// database in one transaction (fast enough for a million rows). Image ids
/// are `bulk-` followed by 31 digits.
pub async fn bulk_pending_delete(cat: &Catalog, images: u64, per_image: u32) -> Result<()> {
    let engine = cat.engine();
    let t =
        chrono::SubsecRound::trunc_subsecs(crate::time::utcnow() - chrono::Duration::hours(1), 0);
    let ts = ts_literal(engine, &t);
    let (gen_from, x, id_expr, cat_str) = match engine {
        Engine::Sqlite => (
            format!(
                "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {images}) SELECT x FROM c) g"
            ),
            "g.x",
            "printf('bulk-%031d', g.x)".to_string(),
            "||",
        ),
        Engine::Postgres => (
            format!("generate_series(1, {images}) AS g(x)"),
            "g.x",
            "'bulk-' || lpad(g.x::text, 31, '0')".to_string(),
            "||",
        ),
        Engine::MySql => {
            let digits = "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
                          UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
            let mut places = 1;
            while 10u64.pow(places) < images {
                places += 1;
            }
            let joins: Vec<String> = (0..places).map(|i| format!("{digits} d{i}")).collect();
            let sum: Vec<String> = (0..places)
                .map(|i| format!("d{i}.d * {}", 10u64.pow(i)))
                .collect();
            (
                format!(
                    "(SELECT {} + 1 AS x FROM {}) g WHERE g.x <= {images}",
                    sum.join(" + "),
                    joins.join(" CROSS JOIN ")
                ),
                "g.x",
                "CONCAT('bulk-', LPAD(g.x, 31, '0'))".to_string(),
                "",
            )
        }
    };
    let vis = match engine {
        Engine::Postgres => "CAST('shared' AS image_visibility)",
        _ => "'shared'",
    };
    let concat = |parts: &[&str]| -> String {
        if cat_str.is_empty() {
            format!("CONCAT({})", parts.join(", "))
        } else {
            parts.join(&format!(" {cat_str} "))
        }
    };
    let mut stmts = vec![format!(
        "INSERT INTO images (id, name, size, status, created_at, updated_at, deleted_at, deleted, disk_format, container_format, \
         owner, min_disk, min_ram, protected, visibility, os_hidden) \
         SELECT {id_expr}, 'bulk', 1024, 'pending_delete', {ts}, {ts}, {ts}, TRUE, 'raw', 'bare', 'project-a', 0, 0, FALSE, {vis}, FALSE \
         FROM {gen_from}"
    )];
    let x_text = match engine {
        Engine::Postgres => format!("{x}::text"),
        Engine::Sqlite => x.to_string(),
        Engine::MySql => x.to_string(),
    };
    for j in 0..per_image {
        let value = concat(&[
            "'file:///var/lib/glance/images/bulk-'",
            &x_text,
            &format!("'-{j}'"),
        ]);
        stmts.push(format!(
            "INSERT INTO image_locations (image_id, value, created_at, updated_at, deleted_at, deleted, meta_data, status) \
             SELECT {id_expr}, {value}, {ts}, {ts}, {ts}, TRUE, '{{\"store\": \"fast\"}}', 'pending_delete' FROM {gen_from}"
        ));
    }
    on_pool!(&cat.pool, p => {
        let mut tx = p.begin().await?;
        for s in stmts {
            sqlx::query(AssertSqlSafe(s)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
    });
    // Fresh tables have no planner statistics; a real catalog has them.
    let analyze: &[&str] = match engine {
        Engine::Postgres => &["ANALYZE images", "ANALYZE image_locations"],
        Engine::MySql => &["ANALYZE TABLE images", "ANALYZE TABLE image_locations"],
        Engine::Sqlite => &["ANALYZE"],
    };
    on_pool!(&cat.pool, p => {
        for s in analyze {
            sqlx::query(AssertSqlSafe(s.to_string())).execute(p).await?;
        }
    });
    Ok(())
}

/// Runs a query returning one optional text value on `cat`'s write pool
/// (session settings, raw column text).
pub async fn query_text(cat: &Catalog, sql: &str) -> Result<Option<String>> {
    let sql = sql.to_string();
    Ok(on_pool!(&cat.pool, p => {
        sqlx::query_scalar::<_, Option<String>>(AssertSqlSafe(sql)).fetch_one(p).await?
    }))
}
