//! imaged-scrubber: finishes Glance's delayed deletes. It finds image
//! locations in `pending_delete` whose deletion is at least `scrub_time`
//! old (images of every visibility, and locations removed from live
//! images), deletes their data through imaged-store, and leaves exactly the
//! catalog rows Glance's scrubber leaves — without its defects.
//!
//! * [`cli`]: the command line and its verbs (the binary only parses and calls it).
//! * [`pass`]: one pass ([`Scrubber::pass`]), the unit `once` runs and the
//!   daemon repeats.
//! * [`daemon`]: the long-running mode (schedule, reload, systemd, drain).
//! * [`ops`]: `restore` and `status`.
//! * [`lock`]: the single-instance lock on SQLite catalogs.
//!
//! The start-up functions here turn a loaded configuration into a catalog and a
//! store and map every failure onto the shared exit-code contract.

pub mod cli;
pub mod daemon;
pub mod lock;
pub mod ops;
pub mod pass;

use imaged_catalog::{Catalog, CatalogError};
use imaged_config::Config;
use imaged_runtime::ExitCode;
use imaged_runtime::app::{self, AppError};
use imaged_store::{ErrorClass, Store, StoreError};

pub use pass::{PassError, PassReport, PassSettings, Scrubber};

/// Why the scrubber could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The configuration cannot be turned into catalog or store options.
    #[error("configuration: {0}")]
    Config(#[from] AppError),
    /// The catalog could not be opened.
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    /// The stores could not be set up.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Another scrubber holds the SQLite instance lock.
    #[error("{0}")]
    Lock(#[from] lock::LockError),
}

impl SetupError {
    /// The exit status for this failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            SetupError::Config(_) => ExitCode::Usage,
            SetupError::Catalog(e) => catalog_exit_code(e),
            SetupError::Store(e) if e.class() == ErrorClass::Transient => {
                ExitCode::BackendUnavailable
            }
            SetupError::Store(_) => ExitCode::Usage,
            SetupError::Lock(lock::LockError::Held { .. }) => ExitCode::Refused,
            SetupError::Lock(lock::LockError::Io { .. }) => ExitCode::Refused,
        }
    }
}

/// Exit status for a catalog error: unreachable → 3, a configuration or
/// schema problem → 2, anything else → 70.
pub fn catalog_exit_code(e: &CatalogError) -> ExitCode {
    match e {
        CatalogError::Database(_) | CatalogError::Io { .. } => ExitCode::BackendUnavailable,
        CatalogError::InvalidUrl { .. }
        | CatalogError::UnsupportedDialect { .. }
        | CatalogError::InvalidOption { .. }
        | CatalogError::InvalidKey(_)
        | CatalogError::Schema(_) => ExitCode::Usage,
        _ => ExitCode::Internal,
    }
}

/// Opens the catalog named by `[database]` (waiting for the server as
/// `max_retries` / `retry_interval` say) and verifies its schema.
pub async fn open_catalog(config: &Config) -> Result<Catalog, SetupError> {
    let opts = app::catalog_options(config)?;
    Ok(Catalog::open(opts).await?)
}

/// Builds the stores of `[glance_store]` / `enabled_backends`.
pub fn open_store(config: &Config) -> Result<Store, SetupError> {
    Ok(Store::new(app::store_options(config)?)?)
}
