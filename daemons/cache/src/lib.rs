//! imaged-cache: keeps a Glance API node's local image cache within its limits while Glance's
//! API keeps reading and writing it.
//!
//! * [`layout`]: the cache directory (which names are images, scans, open-file detection).
//! * [`sqlite_index`]: every statement run against the node-local `cache.db`.
//! * [`index`]: the metadata store behind one interface, for the `sqlite` and
//!   `centralized_db` drivers (and a filesystem-only fallback when `cache.db` is unusable).
//! * [`lock`]: the fcntl lock files shared with Glance's API.
//! * [`ops`]: prune, clean, list, stats, queue and evict, each one pass.
//! * [`prefetch`]: caching queued images from their store, as Glance's write path does.
//! * [`daemon`]: the `run` mode (schedules, filesystem-triggered prune, reloads, systemd).
//! * [`cli`]: the command line (verbs, exit codes, the daemon's signal and reload wiring).

pub mod cli;
pub mod daemon;
pub mod index;
pub mod layout;
pub mod lock;
pub mod ops;
pub mod prefetch;
pub mod sqlite_index;

use std::path::{Path, PathBuf};
use std::time::Duration;

use imaged_config::Config;
use imaged_runtime::ExitCode;

pub use index::Index;
pub use layout::CacheLayout;
pub use ops::{CleanReport, Listing, PruneReport, Stats};

/// Errors of the cache maintenance passes.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `cache.db` does not exist and may not be created by this process.
    #[error("{0}: cache.db is missing")]
    IndexMissing(PathBuf),
    /// `cache.db` is not a usable database.
    #[error("{path}: cache.db is corrupt or not a database: {message}")]
    IndexCorrupt {
        /// The database path.
        path: PathBuf,
        /// SQLite's message.
        message: String,
    },
    /// A statement on `cache.db` failed (e.g. still locked after the busy timeout).
    #[error("{path}: {message}")]
    Index {
        /// The database path.
        path: PathBuf,
        /// SQLite's message.
        message: String,
    },
    /// The catalog (centralized_db driver or image status lookups) failed.
    #[error("catalog: {0}")]
    Catalog(#[from] imaged_catalog::CatalogError),
    /// A store read failed.
    #[error("store: {0}")]
    Store(#[from] imaged_store::StoreError),
    /// The configuration cannot drive the cache.
    #[error("configuration: {0}")]
    Config(String),
    /// Another process holds a maintenance lock.
    #[error("{0} is held by another process")]
    Locked(PathBuf),
    /// Not a valid image id.
    #[error("{0:?} is not an image id (a UUID)")]
    InvalidId(String),
}

impl CacheError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CacheError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// The process exit code this error maps to.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CacheError::Config(_) | CacheError::InvalidId(_) => ExitCode::Usage,
            CacheError::Locked(_) => ExitCode::Refused,
            CacheError::Catalog(_) | CacheError::Store(_) | CacheError::Index { .. } => {
                ExitCode::BackendUnavailable
            }
            CacheError::Io { .. }
            | CacheError::IndexMissing(_)
            | CacheError::IndexCorrupt { .. } => ExitCode::WorkFailed,
        }
    }
}

/// Which metadata store the cache uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Node-local `cache.db`.
    Sqlite,
    /// The catalog's `cached_images` / `node_reference` tables.
    CentralizedDb,
}

/// Default for `[imaged_cache] orphan_grace`: an image file with no row younger than this
/// (by ctime, i.e. since its rename into place) may be a commit still in flight.
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(600);

/// Everything a pass needs, taken from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheOptions {
    /// Paths.
    pub layout: CacheLayout,
    /// Metadata driver.
    pub driver: Driver,
    /// `image_cache_max_size`: prune starts above this.
    pub max_size: u64,
    /// Prune target (`low_water_mark`, at most `max_size`).
    pub low_water_mark: u64,
    /// Free bytes to keep on the cache filesystem.
    pub min_free_disk: Option<u64>,
    /// `image_cache_stall_time`.
    pub stall_time: Duration,
    /// Grace period of untracked image files.
    pub orphan_grace: Duration,
    /// Node key of the centralized driver.
    pub node_url: Option<String>,
    /// How long a pass waits for a lock Glance's API holds.
    pub lock_wait: Duration,
}

impl CacheOptions {
    /// Options for a cache at `dir` with Glance's defaults (sqlite, 10 GiB, 24 h stall).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CacheOptions {
            layout: CacheLayout::new(dir, "cache.db", None),
            driver: Driver::Sqlite,
            max_size: 10 << 30,
            low_water_mark: 10 << 30,
            min_free_disk: None,
            stall_time: Duration::from_secs(86400),
            orphan_grace: DEFAULT_ORPHAN_GRACE,
            node_url: None,
            lock_wait: Duration::from_secs(2),
        }
    }

    /// Options from a loaded configuration. `xattr` answers "not supported"; a missing
    /// `image_cache_dir` or, for centralized_db, `worker_self_reference_url` is an error
    /// (Glance would silently match nothing).
    pub fn from_config(config: &Config) -> Result<Self, CacheError> {
        let c = config.cache();
        let dir = c
            .dir
            .ok_or_else(|| CacheError::Config("[DEFAULT] image_cache_dir must be set".into()))?;
        let driver = match c.driver.to_ascii_lowercase().as_str() {
            "sqlite" => Driver::Sqlite,
            "centralized_db" => Driver::CentralizedDb,
            other => {
                return Err(CacheError::Config(format!(
                    "image_cache_driver = {other} is not supported by imaged-cache (use sqlite or centralized_db)"
                )));
            }
        };
        if driver == Driver::CentralizedDb && c.worker_self_reference_url.is_none() {
            return Err(CacheError::Config(
                "image_cache_driver = centralized_db needs [DEFAULT] worker_self_reference_url (the node key)"
                    .into(),
            ));
        }
        let orphan_grace = match config.value("imaged_cache", "orphan_grace") {
            Some(imaged_config::Value::Int(n)) => {
                Duration::from_secs(u64::try_from(*n).unwrap_or(0))
            }
            _ => DEFAULT_ORPHAN_GRACE,
        };
        Ok(CacheOptions {
            layout: CacheLayout::new(dir, &c.sqlite_db, c.lock_path),
            driver,
            max_size: c.max_size,
            low_water_mark: c.low_water_mark.min(c.max_size),
            min_free_disk: c.min_free_disk,
            stall_time: c.stall_time,
            orphan_grace,
            node_url: c.worker_self_reference_url,
            lock_wait: Duration::from_secs(2),
        })
    }
}
