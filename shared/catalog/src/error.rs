//! The crate's error type and the classification of database errors into
//! "retry this operation" and "give up".

use thiserror::Error;

/// Everything that can go wrong in catalog access.
#[derive(Debug, Error)]
pub enum CatalogError {
    /// The `[database] connection` URL could not be understood. The URL in
    /// the message has its password masked.
    #[error("invalid database connection URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The URL names a dialect this crate does not speak.
    #[error(
        "unsupported database dialect {dialect:?} in connection URL {url}; use sqlite, postgresql or mysql"
    )]
    UnsupportedDialect { dialect: String, url: String },

    /// An option value is out of range.
    #[error("invalid catalog option {option}: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: String,
    },

    /// The database exists but does not carry a schema this crate accepts.
    #[error("catalog schema not usable: {0}")]
    Schema(String),

    /// `metadata_encryption_key` has the wrong length.
    #[error("metadata_encryption_key must be 16, 24 or 32 bytes of UTF-8, got {0} bytes")]
    InvalidKey(usize),

    /// One stored location URL could not be decrypted.
    #[error("location value cannot be decrypted: {0}")]
    Decrypt(String),

    /// A value could not be converted from its stored form.
    #[error("cannot decode column {column}: {reason}")]
    Decode {
        column: &'static str,
        reason: String,
    },

    /// A value would be refused by Glance (for example 4-byte UTF-8 on MySQL).
    #[error("value refused: {0}")]
    InvalidValue(String),

    /// The row that an operation names does not exist.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },

    /// A compare-and-set found another state than the one it expected: a
    /// concurrent writer won.
    #[error("{kind} {id}: expected status {expected:?}, found {found:?}")]
    Conflict {
        kind: &'static str,
        id: String,
        expected: String,
        found: Option<String>,
    },

    /// An error from the database driver (after any retries).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// An I/O error around the database file.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Result alias used throughout the crate.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// Whether a database error is worth retrying: deadlocks, lock timeouts,
/// a busy/locked SQLite file, or a lost connection.
pub fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let msg = db.message().to_ascii_lowercase();
            matches!(
                code.as_str(),
                // PostgreSQL: deadlock, serialization failure, lock not available,
                // admin shutdown / cannot connect now.
                "40P01" | "40001" | "55P03" | "57P01" | "57P03"
                // MySQL/MariaDB: lock wait timeout, deadlock, server gone away, lost connection.
                | "1205" | "1213" | "2006" | "2013"
                // SQLite: SQLITE_BUSY and SQLITE_LOCKED with their extended codes.
                | "5" | "6" | "261" | "262" | "517"
            ) || msg.contains("database is locked")
                || msg.contains("database table is locked")
                || msg.contains("deadlock")
                || msg.contains("lock wait timeout")
        }
        _ => false,
    }
}

impl CatalogError {
    /// Whether retrying the whole operation may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CatalogError::Database(e) => is_retryable(e),
            _ => false,
        }
    }
}
