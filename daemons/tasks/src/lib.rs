//! imaged-tasks: a long-running executor for the tasks Glance's API queues in
//! the catalog (`tasks` + `task_info`, status `pending`).
//!
//! Glance runs tasks on threads of the API process that accepted them, so a
//! crash leaves tasks in `processing` and images in `saving` forever. This
//! crate claims task rows with a lease (`imaged_claims`), runs them to a
//! definite `success` or `failure`, heartbeats while running, takes over
//! tasks whose executor died, and reverts every partial effect of a failed
//! attempt.
//!
//! * [`settings`] — the typed options the executor reads (live on reload).
//! * [`executor`] — the queue loop: claim, run, heartbeat, take over, expire.
//! * [`api_import`] — the interoperable `api_image_import` task: the import
//!   lock, staging, plugins, uploads to several stores, Glance's store lists.
//! * [`import`] — the legacy `import` task: create the image, stream the data
//!   with single-pass hashing and size enforcement, inspect, convert, store.
//! * [`fetch`] — download safety: URL filtering, redirects, address checks.
//! * [`inspect`] — disk-format detection and the safety checks behind the
//!   qcow2/VMDK CVEs.
//! * [`plugins`] — the import plugins of interoperable import
//!   (decompression, conversion, metadata injection) on staged data.
//! * [`qemu`] — bounded `qemu-img info` / `convert` calls.
//! * [`hashing`] — MD5 plus the configured secure hash, off the async runtime.
//! * [`cli`] — the verbs of the `imaged-tasks` binary.

pub mod api_import;
pub mod cli;
pub mod executor;
pub mod fetch;
pub mod hashing;
pub mod import;
pub mod inspect;
pub mod plugins;
pub mod qemu;
pub mod settings;

pub use executor::{Executor, RunReport};
pub use settings::Settings;

/// Errors of the executor that are not a task's own failure.
#[derive(Debug, thiserror::Error)]
pub enum TasksError {
    /// The catalog failed (unreachable after retries, or a query error).
    #[error("catalog: {0}")]
    Catalog(#[from] imaged_catalog::CatalogError),
    /// The store could not be set up.
    #[error("store: {0}")]
    Store(#[from] imaged_store::StoreError),
    /// The configuration cannot be used.
    #[error("configuration: {0}")]
    Config(String),
    /// A task input given on the command line is invalid.
    #[error("invalid task: {0}")]
    InvalidTask(String),
    /// Local I/O failed (work directory).
    #[error("{0}")]
    Io(String),
}
