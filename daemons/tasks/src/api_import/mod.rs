//! The interoperable import task (`api_image_import`, written by
//! `POST /v2/images/{id}/import`): stage the data locally (web-download and
//! copy-image download it into the staging area; glance-direct finds it
//! there), run the import plugins, inspect and hash the staged file once,
//! then write it to every target store, at most `max_parallel_stores` at a
//! time, keeping Glance's row states: `os_glance_import_task` (the lock),
//! `os_glance_importing_to_stores`, `os_glance_failed_import`, the image
//! status, the data attributes and one location per store.
//!
//! Where Glance strands an image, this module ends every import in a state
//! the API can continue from (see the README section on
//! `api_image_import`): a failed glance-direct import returns the image to
//! `uploading` with its staged data kept, so it can be imported again; a
//! failed web-download returns it to `queued`; copy-image leaves the image
//! `active`. The lock is dropped in every outcome except a hand-back or a
//! lost claim, where the next attempt of the same task continues under it
//! (after a success, by the executor once the success is recorded).
//!
//! * [`input`] validates the task input.
//! * [`lock`] takes the import lock and takes over stale ones.
//! * [`staging`] locates, fills and cleans the staging area.
//! * [`flow`] runs the import: set-up, staging, plugins, completion.
//! * [`upload`] hashes the staged data and writes it to the stores.
//! * [`revert`] undoes an attempt that failed, was stopped or abandoned.

pub mod flow;
pub mod input;
pub mod lock;
pub mod revert;
pub mod staging;
pub mod upload;

use std::path::PathBuf;

use imaged_config::Config;

pub use flow::{release_lock, run, run_plugins};
pub use revert::abandon;
pub use staging::clean_staging;

/// The task type this module runs.
pub const TASK_TYPE: &str = "api_image_import";

/// The options of the interoperable import (part of the executor's
/// [`crate::Settings`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiImportSettings {
    /// `[DEFAULT] enabled_backends` is set.
    pub multi_store: bool,
    /// The staging directory: `node_staging_uri` in single-store mode,
    /// `[os_glance_staging_store] filesystem_store_datadir` with
    /// multi-store; the error says which option is unusable.
    pub staging_dir: Result<PathBuf, String>,
    /// `[image_import_opts] max_parallel_stores` (at least 1).
    pub max_parallel_stores: usize,
    /// `[DEFAULT] enabled_import_methods`.
    pub enabled_import_methods: Vec<String>,
    /// `[glance_store] default_backend`: copy-image reads from it first.
    pub default_backend: Option<String>,
}

impl ApiImportSettings {
    /// The settings of a loaded configuration. An unusable staging option
    /// is kept as an error so that legacy `import` tasks still run; each
    /// `api_image_import` task then fails naming the option.
    pub fn from_config(config: &Config) -> ApiImportSettings {
        let t = config.task();
        let g = config.glance_store();
        let multi_store = !g.enabled_backends.is_empty();
        let staging_dir = if multi_store {
            let d = g.staging_store.filesystem_store_datadir;
            if d.as_os_str().is_empty() {
                Err("[os_glance_staging_store] filesystem_store_datadir is not set".to_string())
            } else {
                Ok(d)
            }
        } else {
            staging_dir_of_uri(&t.node_staging_uri)
        };
        ApiImportSettings {
            multi_store,
            staging_dir,
            max_parallel_stores: usize::try_from(t.max_parallel_stores.max(1)).unwrap_or(1),
            enabled_import_methods: t.enabled_import_methods,
            default_backend: g.default_backend,
        }
    }
}

impl Default for ApiImportSettings {
    /// Glance's defaults: single store, `file:///tmp/staging/`.
    fn default() -> Self {
        ApiImportSettings {
            multi_store: false,
            staging_dir: Ok(PathBuf::from("/tmp/staging")),
            max_parallel_stores: 1,
            enabled_import_methods: vec![
                "glance-direct".into(),
                "web-download".into(),
                "copy-image".into(),
            ],
            default_backend: None,
        }
    }
}

/// The directory of a `node_staging_uri` (`file:///dir/` → `/dir/`).
pub fn staging_dir_of_uri(uri: &str) -> Result<PathBuf, String> {
    let path = uri.strip_prefix("file://").ok_or_else(|| {
        format!("[DEFAULT] node_staging_uri {uri:?} must have the form file:///<absolute path>")
    })?;
    if !path.starts_with('/') {
        return Err(format!(
            "[DEFAULT] node_staging_uri {uri:?} must name an absolute path (file:///<path>)"
        ));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_uri_forms() {
        assert_eq!(
            staging_dir_of_uri("file:///tmp/staging/").unwrap(),
            PathBuf::from("/tmp/staging/")
        );
        assert!(staging_dir_of_uri("/tmp/staging").is_err());
        assert!(staging_dir_of_uri("file://relative/x").is_err());
    }
}
