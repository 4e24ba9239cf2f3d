//! imaged-catalog: the one place where imaged reads and writes Glance's
//! image catalog, on SQLite, PostgreSQL and MySQL/MariaDB.
//!
//! * [`Catalog`] opens the database named by a SQLAlchemy URL
//!   ([`CatalogOptions`]), waits for it, retries operations after deadlocks
//!   and lock time-outs, and keeps a second pool for `slave_connection`.
//! * [`schema`] holds Glance's schema at alembic head `2024_1_contract01`,
//!   its creation and verification, and imaged's additive `imaged_*` tables.
//! * [`scrub`] (with its batched writes in [`scrub_batch`]), [`tasks`], [`images`] and [`cache`] are the typed operations
//!   the daemons call; [`claims`] is the lease protocol they share.
//! * [`api_import`] holds the interoperable import's catalog side: the
//!   `os_glance_import_task` lock (taken, checked and taken over with
//!   compare-and-set), the `os_glance_*` store lists and the image updates
//!   made under the lock.
//! * [`delayed_delete`] writes what Glance's API writes when it deletes an
//!   image with `delayed_delete = True` (for the quick start and tests).
//! * [`stats`] holds the cheap reads of the daemons' `/healthz` and
//!   `/metrics`: a ping and the depth and age of the scrub and task queues.
//! * [`crypt`] is Glance-compatible location-URL encryption, [`time`] the
//!   timestamp forms Glance writes.
//!
//! Design notes (driver choice, claims, batching) are in the module docs of
//! [`db`] and [`claims`] and in the crate README.

pub mod api_import;
pub mod cache;
pub mod claims;
pub mod crypt;
pub mod db;
pub mod delayed_delete;
pub mod error;
pub mod images;
pub mod imports;
pub mod json;
pub mod options;
pub mod schema;
pub mod scrub;
pub mod scrub_batch;
pub mod stats;
pub mod tasks;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod url;

pub use claims::{ClaimKind, ClaimOwner, ClaimRecord};
pub use crypt::LocationCipher;
pub use db::Catalog;
pub use error::{CatalogError, Result};
pub use options::CatalogOptions;
pub use url::{DbUrl, Engine};
