//! `CatalogOptions`: everything catalog access needs from the `[database]`
//! section (and `metadata_encryption_key`), with Glance's defaults. The
//! daemons map their configuration onto this struct; this crate does not
//! read configuration files.

use std::fmt;
use std::time::Duration;

/// Options for opening a catalog. Field names follow the oslo.db options.
#[derive(Clone)]
pub struct CatalogOptions {
    /// `[database] connection`, a SQLAlchemy URL.
    pub connection: String,
    /// `[database] slave_connection`: read-only listing queries go there.
    pub slave_connection: Option<String>,
    /// `max_retries`: connection attempts at start-up; `-1` = forever.
    pub max_retries: i64,
    /// `retry_interval`: seconds between start-up connection attempts.
    pub retry_interval: Duration,
    /// `db_max_retries`: retries of one operation after a deadlock, lock
    /// timeout, busy database or lost connection; `-1` = forever.
    pub db_max_retries: i64,
    /// `db_retry_interval`: first wait between operation retries.
    pub db_retry_interval: Duration,
    /// `db_inc_retry_interval`: double the wait after each retry.
    pub db_inc_retry_interval: bool,
    /// `db_max_retry_interval`: cap of the doubled wait.
    pub db_max_retry_interval: Duration,
    /// `max_pool_size`: `None` = SQLAlchemy's default of 5.
    pub max_pool_size: Option<u32>,
    /// `min_pool_size`.
    pub min_pool_size: u32,
    /// `max_overflow`: extra connections beyond `max_pool_size`.
    pub max_overflow: u32,
    /// `pool_timeout`: wait for a free connection; `None` = 30 s.
    pub pool_timeout: Option<Duration>,
    /// `idle_timeout` (`connection_recycle_time`).
    pub idle_timeout: Duration,
    /// `sqlite_synchronous`: `PRAGMA synchronous = FULL` when true, `OFF` when false.
    pub sqlite_synchronous: bool,
    /// `mysql_sql_mode`, set on every MySQL session; `None` or empty leaves
    /// the server's mode.
    pub mysql_sql_mode: Option<String>,
    /// `connection_debug`: ≥ 50 logs statements at INFO, ≥ 100 also slow
    /// statements at WARN; 0 logs nothing.
    pub connection_debug: u32,
    /// `use_db_reconnect`: also retry after a lost connection (the other
    /// retryable errors are always retried).
    pub use_db_reconnect: bool,
    /// `[DEFAULT] metadata_encryption_key`.
    pub metadata_encryption_key: Option<String>,
    /// imaged's own bound on a single lock wait (SQLite busy timeout,
    /// PostgreSQL `lock_timeout`, MySQL `innodb_lock_wait_timeout`, whole
    /// seconds, at least 1). A wait that runs out becomes a retryable error,
    /// so the `db_*retry*` options decide how long an operation keeps trying
    /// instead of a connection sitting blocked behind the API. `None` = 5 s
    /// on SQLite and the server's setting elsewhere.
    pub lock_timeout: Option<Duration>,
}

impl CatalogOptions {
    /// Options for `connection` with Glance's (oslo.db's) defaults.
    pub fn new(connection: impl Into<String>) -> Self {
        CatalogOptions {
            connection: connection.into(),
            slave_connection: None,
            max_retries: 10,
            retry_interval: Duration::from_secs(10),
            db_max_retries: 20,
            db_retry_interval: Duration::from_secs(1),
            db_inc_retry_interval: true,
            db_max_retry_interval: Duration::from_secs(10),
            max_pool_size: None,
            min_pool_size: 1,
            max_overflow: 50,
            pool_timeout: None,
            idle_timeout: Duration::from_secs(3600),
            sqlite_synchronous: true,
            mysql_sql_mode: Some("TRADITIONAL".to_string()),
            connection_debug: 0,
            use_db_reconnect: false,
            metadata_encryption_key: None,
            lock_timeout: None,
        }
    }

    /// Largest number of connections the pool may open.
    pub(crate) fn pool_max(&self) -> u32 {
        self.max_pool_size
            .unwrap_or(5)
            .saturating_add(self.max_overflow)
            .max(1)
    }

    /// The wait before retry number `attempt` (0-based) of an operation.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        if !self.db_inc_retry_interval {
            return self.db_retry_interval;
        }
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.db_retry_interval
            .saturating_mul(factor)
            .min(self.db_max_retry_interval.max(self.db_retry_interval))
    }
}

impl fmt::Debug for CatalogOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogOptions")
            .field("connection", &crate::url::mask_password(&self.connection))
            .field(
                "slave_connection",
                &self
                    .slave_connection
                    .as_deref()
                    .map(crate::url::mask_password),
            )
            .field("max_retries", &self.max_retries)
            .field("retry_interval", &self.retry_interval)
            .field("db_max_retries", &self.db_max_retries)
            .field("db_retry_interval", &self.db_retry_interval)
            .field("db_inc_retry_interval", &self.db_inc_retry_interval)
            .field("db_max_retry_interval", &self.db_max_retry_interval)
            .field("max_pool_size", &self.max_pool_size)
            .field("min_pool_size", &self.min_pool_size)
            .field("max_overflow", &self.max_overflow)
            .field("pool_timeout", &self.pool_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("sqlite_synchronous", &self.sqlite_synchronous)
            .field("mysql_sql_mode", &self.mysql_sql_mode)
            .field("connection_debug", &self.connection_debug)
            .field("use_db_reconnect", &self.use_db_reconnect)
            .field("lock_timeout", &self.lock_timeout)
            .field(
                "metadata_encryption_key",
                &self.metadata_encryption_key.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let o = CatalogOptions::new("sqlite://");
        let d: Vec<u64> = (0..6).map(|a| o.retry_delay(a).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 10, 10]);
        let mut o = o;
        o.db_inc_retry_interval = false;
        assert_eq!(o.retry_delay(5), Duration::from_secs(1));
    }

    #[test]
    fn debug_hides_secrets() {
        let mut o = CatalogOptions::new("mysql://u:topsecret@h/glance");
        o.metadata_encryption_key = Some("0123456789abcdef".into());
        let s = format!("{o:?}");
        assert!(!s.contains("topsecret"), "{s}");
        assert!(!s.contains("0123456789abcdef"), "{s}");
    }
}
