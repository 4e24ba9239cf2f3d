//! The `Catalog` handle: one pool per engine behind an enum, connection
//! set-up from `CatalogOptions`, start-up waiting, per-operation retry, and
//! the small SQL helpers (placeholders, dialect fragments) every module uses.
//!
//! Why an enum of typed pools instead of sqlx's `Any` driver: `Any` has no
//! datetime type, so Glance's `DATETIME` columns (text on SQLite, native on
//! MySQL/PostgreSQL) would need per-engine casts in every query anyway, and
//! its weak type mapping hides mismatches (INTEGER vs BIGINT on PostgreSQL).
//! With typed pools each query is written once with `?` placeholders and the
//! `on_pool!` macro instantiates it for the three drivers, so the compiler
//! checks every bind and decode for every engine, and [`crate::time::Ts`]
//! encodes timestamps in each engine's Glance form.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, ConnectOptions};

use crate::crypt::LocationCipher;
use crate::error::{CatalogError, Result};
use crate::options::CatalogOptions;
use crate::url::{DbUrl, Engine, SqliteTarget};

/// Runs `$body` with `$p` bound to the concrete pool of whichever engine
/// `$pools` holds. The body is compiled once per engine.
macro_rules! on_pool {
    ($pools:expr, $p:ident => $body:expr) => {
        match $pools {
            $crate::db::Pools::Sqlite($p) => $body,
            $crate::db::Pools::Postgres($p) => $body,
            $crate::db::Pools::MySql($p) => $body,
        }
    };
}
pub(crate) use on_pool;

/// One typed pool per engine.
#[derive(Clone, Debug)]
pub(crate) enum Pools {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    MySql(MySqlPool),
}

impl Pools {
    pub(crate) async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }
}

/// Opening a write transaction the right way per engine: SQLite takes the
/// write lock up front (`BEGIN IMMEDIATE`) so a transaction never fails
/// half-way when upgrading from a read lock.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl Future<Output = std::result::Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl Future<Output = std::result::Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    fn begin_write(
        &self,
    ) -> impl Future<Output = std::result::Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send {
        self.begin()
    }
}

impl BeginWrite for MySqlPool {
    type Db = sqlx::MySql;
    fn begin_write(
        &self,
    ) -> impl Future<Output = std::result::Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send {
        self.begin()
    }
}

/// A connection to a Glance catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub(crate) url: DbUrl,
    pub(crate) pool: Pools,
    /// `slave_connection`, for read-only listings; `None` = use `pool`.
    pub(crate) read_pool: Option<Pools>,
    pub(crate) opts: CatalogOptions,
    pub(crate) cipher: Option<LocationCipher>,
    /// Whether `FOR UPDATE SKIP LOCKED` is available (PostgreSQL, MariaDB
    /// ≥ 10.6, MySQL ≥ 8.0.1).
    pub(crate) skip_locked: bool,
}

/// How long a SQLite connection waits on a locked database before the
/// operation-level retry takes over.
pub const DEFAULT_SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Catalog {
    /// Opens the catalog: connects (waiting up to `max_retries` ×
    /// `retry_interval` for the server), creates a missing SQLite file with
    /// Glance's schema, verifies the schema and applies imaged's additive
    /// tables.
    pub async fn open(opts: CatalogOptions) -> Result<Catalog> {
        let cat = Self::connect(opts, true).await?;
        cat.verify_schema().await?;
        cat.ensure_additive_schema().await?;
        Ok(cat)
    }

    /// Connects without verifying or creating anything (for `create_schema`
    /// on servers and for inspection tools). A SQLite file must exist unless
    /// `create_sqlite` is true, in which case a missing file gets Glance's
    /// schema.
    pub async fn connect(opts: CatalogOptions, create_sqlite: bool) -> Result<Catalog> {
        let url = DbUrl::parse(&opts.connection)?;
        let cipher = match opts.metadata_encryption_key.as_deref() {
            Some(k) if !k.is_empty() => Some(LocationCipher::new(k)?),
            _ => None,
        };
        let mut fresh_sqlite = false;
        if let Some(SqliteTarget::File(path)) = url.sqlite_target()
            && !path.exists()
        {
            if !create_sqlite {
                return Err(CatalogError::Schema(format!(
                    "SQLite catalog {} does not exist; run `glance-manage db sync` or open it with creation allowed",
                    path.display()
                )));
            }
            fresh_sqlite = true;
        }
        if matches!(url.sqlite_target(), Some(SqliteTarget::Memory)) && create_sqlite {
            // An in-memory catalog always starts empty.
            fresh_sqlite = true;
        }
        let pool = connect_pool(&url, &opts, fresh_sqlite).await?;
        let read_pool = match opts.slave_connection.as_deref() {
            Some(s) if !s.trim().is_empty() => {
                let rurl = DbUrl::parse(s)?;
                if rurl.engine() != url.engine() {
                    return Err(CatalogError::InvalidOption {
                        option: "slave_connection",
                        reason: format!(
                            "engine {} differs from connection engine {}",
                            rurl.engine(),
                            url.engine()
                        ),
                    });
                }
                Some(connect_pool(&rurl, &opts, false).await?)
            }
            _ => None,
        };
        let skip_locked = match &pool {
            Pools::Sqlite(_) => false,
            Pools::Postgres(_) => true,
            Pools::MySql(p) => {
                let (v,): (String,) = sqlx::query_as("SELECT VERSION()").fetch_one(p).await?;
                mysql_has_skip_locked(&v)
            }
        };
        let cat = Catalog {
            url,
            pool,
            read_pool,
            opts,
            cipher,
            skip_locked,
        };
        if fresh_sqlite {
            tracing::info!(url = %cat.url, "creating SQLite catalog with Glance's schema");
            cat.create_schema().await?;
        }
        Ok(cat)
    }

    /// The engine of this catalog.
    pub fn engine(&self) -> Engine {
        self.url.engine()
    }

    /// The connection URL (displays with the password masked).
    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    /// The options this catalog was opened with.
    pub fn options(&self) -> &CatalogOptions {
        &self.opts
    }

    /// The location cipher, when `metadata_encryption_key` is set.
    pub fn cipher(&self) -> Option<&LocationCipher> {
        self.cipher.as_ref()
    }

    /// Whether claims use `FOR UPDATE SKIP LOCKED`.
    pub fn uses_skip_locked(&self) -> bool {
        self.skip_locked
    }

    /// Closes every pool.
    pub async fn close(&self) {
        self.pool.close().await;
        if let Some(r) = &self.read_pool {
            r.close().await;
        }
    }

    /// The pool for read-only listings.
    pub(crate) fn reader(&self) -> &Pools {
        self.read_pool.as_ref().unwrap_or(&self.pool)
    }

    /// Turns a statement written with `?` placeholders into this engine's
    /// form (`$1, $2, …` on PostgreSQL). Statements in this crate never
    /// contain `?` inside literals.
    pub(crate) fn sql(&self, s: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(placeholders(self.engine(), s))
    }

    /// `n` comma-separated placeholders.
    pub(crate) fn marks(n: usize) -> String {
        vec!["?"; n].join(", ")
    }

    /// Placeholder for writing a visibility value (an enum type on PostgreSQL).
    pub(crate) fn vis_param(&self) -> &'static str {
        match self.engine() {
            Engine::Postgres => "CAST(? AS image_visibility)",
            _ => "?",
        }
    }

    /// Expression reading `col` (a visibility column) as text.
    pub(crate) fn vis_read(&self, col: &str) -> String {
        match self.engine() {
            Engine::Postgres => format!("CAST({col} AS VARCHAR)"),
            Engine::MySql => format!("CAST({col} AS CHAR)"),
            Engine::Sqlite => col.to_string(),
        }
    }

    /// `INSERT` prefix that ignores a duplicate key, and the matching suffix.
    pub(crate) fn insert_ignore(&self) -> (&'static str, &'static str) {
        match self.engine() {
            Engine::MySql => ("INSERT IGNORE INTO", ""),
            _ => ("INSERT INTO", " ON CONFLICT DO NOTHING"),
        }
    }

    /// Refuses text Glance would refuse on MySQL (4-byte UTF-8).
    pub(crate) fn check_text(&self, what: &str, s: &str) -> Result<()> {
        if self.engine() == Engine::MySql && s.chars().any(|c| c.len_utf8() == 4) {
            return Err(CatalogError::InvalidValue(format!(
                "{what} contains 4-byte UTF-8, which the MySQL catalog (utf8mb3) cannot store"
            )));
        }
        Ok(())
    }

    /// Runs `op` and retries it after a deadlock, lock timeout, busy
    /// database or (with `use_db_reconnect`, or always for pool time-outs)
    /// a lost connection, waiting as `db_retry_interval`,
    /// `db_inc_retry_interval` and `db_max_retry_interval` say, at most
    /// `db_max_retries` times.
    pub async fn with_retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt: u32 = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let retry_allowed = match &e {
                        CatalogError::Database(sqlx::Error::Io(_)) => self.opts.use_db_reconnect,
                        other => other.is_retryable(),
                    };
                    let limit = self.opts.db_max_retries;
                    if !retry_allowed || (limit >= 0 && i64::from(attempt) >= limit) {
                        return Err(e);
                    }
                    let wait = self.opts.retry_delay(attempt);
                    tracing::warn!(operation = what, attempt = attempt + 1, error = %e, wait_ms = wait.as_millis() as u64, "retrying database operation");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }
}

fn placeholders(engine: Engine, s: &str) -> String {
    if engine != Engine::Postgres {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 16);
    let mut n = 0;
    for c in s.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// `FOR UPDATE SKIP LOCKED` exists from MariaDB 10.6 and MySQL 8.0.1.
pub(crate) fn mysql_has_skip_locked(version: &str) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    if version.to_ascii_lowercase().contains("mariadb") {
        (major, minor) >= (10, 6)
    } else {
        major >= 8
    }
}

async fn connect_pool(url: &DbUrl, opts: &CatalogOptions, allow_create: bool) -> Result<Pools> {
    let busy = opts.lock_timeout.unwrap_or(DEFAULT_SQLITE_BUSY_TIMEOUT);
    let acquire = opts.pool_timeout.unwrap_or(Duration::from_secs(30));
    let mut attempt: i64 = 0;
    loop {
        let res = connect_once(url, opts, busy, allow_create, acquire).await;
        match res {
            Ok(p) => return Ok(p),
            Err(e) => {
                let transient = matches!(
                    &e,
                    CatalogError::Database(
                        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)
                    )
                ) || e.is_retryable();
                if !transient || (opts.max_retries >= 0 && attempt >= opts.max_retries) {
                    return Err(e);
                }
                attempt += 1;
                tracing::warn!(url = %url, attempt, error = %e, "database not reachable yet, waiting");
                tokio::time::sleep(opts.retry_interval).await;
            }
        }
    }
}

/// Fails at once when nothing listens at the server's address: the pool
/// retries a refused connection for its whole acquire timeout, whereas the
/// start-up loop above owns the waiting. Reaching the listener is all that
/// needs checking; a full connection (TLS, authentication) made only to be
/// closed again cost about 100 ms here, because sqlx 0.9.0 leaves Nagle's
/// algorithm on and the TLS handshake waits out delayed ACKs. Other failures
/// (authentication, a missing database) come from the pool's first
/// connection as they did from the probe.
async fn probe_server(host: &str, port: u16, socket: Option<&PathBuf>) -> Result<()> {
    let reached = match socket {
        Some(path) => tokio::net::UnixStream::connect(path).await.map(drop),
        None => tokio::net::TcpStream::connect((host, port)).await.map(drop),
    };
    reached.map_err(|e| CatalogError::Database(sqlx::Error::Io(e)))
}

async fn connect_once(
    url: &DbUrl,
    opts: &CatalogOptions,
    busy: Duration,
    allow_create: bool,
    acquire: Duration,
) -> Result<Pools> {
    let max = opts.pool_max();
    let min = opts.min_pool_size.min(max);
    let quiet = opts.connection_debug == 0;
    match url.engine() {
        Engine::Sqlite => {
            let mut co = match url.sqlite_target() {
                Some(SqliteTarget::File(path)) => {
                    if allow_create {
                        ensure_parent(path)?;
                    }
                    SqliteConnectOptions::new()
                        .filename(path)
                        .create_if_missing(allow_create)
                }
                _ => SqliteConnectOptions::new().in_memory(true),
            };
            co = co
                .foreign_keys(true)
                .busy_timeout(busy)
                .synchronous(if opts.sqlite_synchronous {
                    SqliteSynchronous::Full
                } else {
                    SqliteSynchronous::Off
                });
            if quiet {
                co = co.disable_statement_logging();
            }
            // An in-memory database exists per connection: keep exactly one.
            let (max, min) = match url.sqlite_target() {
                Some(SqliteTarget::Memory) | None => (1, 1),
                _ => (max, min),
            };
            let pool = SqlitePoolOptions::new()
                .max_connections(max)
                .min_connections(min)
                .acquire_timeout(acquire)
                .idle_timeout(opts.idle_timeout)
                .connect_with(co)
                .await?;
            Ok(Pools::Sqlite(pool))
        }
        Engine::Postgres => {
            let u = url.driver_url().ok_or_else(|| CatalogError::InvalidUrl {
                url: url.to_string(),
                reason: "no server URL".into(),
            })?;
            let mut co = PgConnectOptions::from_url(u)?;
            if quiet {
                co = co.disable_statement_logging();
            }
            if let Some(t) = opts.lock_timeout {
                co = co.options([("lock_timeout", format!("{}ms", t.as_millis().max(1)))]);
            }
            probe_server(co.get_host(), co.get_port(), co.get_socket()).await?;
            let pool = PgPoolOptions::new()
                .max_connections(max)
                .min_connections(min)
                .acquire_timeout(acquire)
                .idle_timeout(opts.idle_timeout)
                .connect_with(co)
                .await?;
            Ok(Pools::Postgres(pool))
        }
        Engine::MySql => {
            let u = url.driver_url().ok_or_else(|| CatalogError::InvalidUrl {
                url: url.to_string(),
                reason: "no server URL".into(),
            })?;
            let mut co = MySqlConnectOptions::from_url(u)?
                .charset("utf8mb4")
                .pipes_as_concat(false);
            if quiet {
                co = co.disable_statement_logging();
            }
            let sql_mode = opts.mysql_sql_mode.clone().filter(|m| !m.trim().is_empty());
            let lock_wait = opts.lock_timeout.map(|t| t.as_secs().max(1));
            probe_server(co.get_host(), co.get_port(), co.get_socket()).await?;
            let pool = MySqlPoolOptions::new()
                .max_connections(max)
                .min_connections(min)
                .acquire_timeout(acquire)
                .idle_timeout(opts.idle_timeout)
                .after_connect(move |conn, _meta| {
                    let mode = sql_mode.clone();
                    Box::pin(async move {
                        if let Some(secs) = lock_wait {
                            sqlx::query("SET SESSION innodb_lock_wait_timeout = ?")
                                .bind(secs)
                                .execute(&mut *conn)
                                .await?;
                        }
                        if let Some(mode) = mode {
                            // oslo.db sets the mode on every session the same way.
                            sqlx::query("SET SESSION sql_mode = ?")
                                .bind(mode)
                                .execute(&mut *conn)
                                .await?;
                        }
                        Ok(())
                    })
                })
                .connect_with(co)
                .await?;
            Ok(Pools::MySql(pool))
        }
    }
}

fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| CatalogError::Io {
            path: parent.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders() {
        assert_eq!(
            placeholders(Engine::Postgres, "a = ? AND b IN (?, ?)"),
            "a = $1 AND b IN ($2, $3)"
        );
        assert_eq!(placeholders(Engine::MySql, "a = ?"), "a = ?");
    }

    #[test]
    fn skip_locked_versions() {
        assert!(mysql_has_skip_locked("10.11.19-MariaDB-0+deb12u1"));
        assert!(!mysql_has_skip_locked("10.5.2-MariaDB"));
        assert!(mysql_has_skip_locked("8.0.36"));
        assert!(!mysql_has_skip_locked("5.7.44-log"));
    }
}
