//! imaged-config: the configuration of the imaged daemons.
//!
//! The daemons read the same oslo.config-style INI files as the Glance services they replace,
//! so an existing `glance-api.conf` plus `glance-scrubber.conf` (or `glance-cache.conf`) loads
//! unmodified. Every option of the Image service configuration reference is defined here
//! ([`options`]), with the daemons that use it; options no daemon uses are still parsed (a bad
//! value there is only a warning) and sections or options imaged does not know are accepted
//! with a debug note.
//!
//! # Files and their order
//!
//! * `--config-file PATH` may repeat; later files override earlier ones.
//! * `--config-dir DIR` may repeat; each directory's `*.conf` files are read in sorted order,
//!   after all `--config-file`s.
//! * With neither flag: `/etc/imaged/imaged.conf`, then `/etc/imaged/<daemon>.conf`
//!   (`scrubber`, `cache`, `tasks`), each only if present.
//! * Environment variables override every file (see below).
//!
//! A multi-valued option (e.g. `filesystem_store_datadirs`) collects its values from every file.
//!
//! # Environment overrides
//!
//! `IMAGED_<SECTION>__<OPTION>`, upper-cased, with `.` and `-` turned into `_`:
//! `IMAGED_DEFAULT__WAKEUP_TIME=60`, `IMAGED_DATABASE__CONNECTION=postgresql://…`,
//! `IMAGED_CORS_SUBDOMAIN__MAX_AGE=10`. Multi-store backend sections work the same way:
//! with `enabled_backends = fast:file`, `IMAGED_FAST__FILESYSTEM_STORE_DATADIR=/srv/fast`.
//! A variable with the prefix and a `__` that names no
//! option draws a warning (with a suggestion when one is close). For a multi-valued option the
//! variable holds one value per line.
//!
//! # Syntax and values (as oslo.config)
//!
//! * `[section]` headers; section names other than `DEFAULT` are case-insensitive. Options
//!   registered in `[DEFAULT]` are read only from `[DEFAULT]`: no section inherits from it.
//! * `key = value` or `key: value`; surrounding quotes are removed; indented lines continue the
//!   previous value; `#` and `;` start comment lines (no inline comments).
//! * Booleans: `true/false`, `yes/no`, `on/off`, `1/0`, any case.
//! * Integers with bounds, ports (0–65535), floats, choices (any case).
//! * Lists: comma-separated, items trimmed, optional `[…]` brackets (`allowed_ports = [8765]`).
//! * Sizes (`user_storage_quota`, `[imaged_cache]` sizes): digits with `B`, `KB`, `MB`, `GB` or
//!   `TB` (powers of 1024, case-sensitive, no space).
//! * Schedules (`[imaged_*] *schedule`): whole seconds, or a cron expression.
//! * Unset: `<None>` for any option; for typed (non-text) options also `None` or an empty value.
//!   An option with a default that is set to unset keeps its default.
//! * Interpolation: `$name` or `${name}` is replaced by the value of `name` from the same
//!   section, else from `[DEFAULT]`; `${section.name}` names another section; `$$` is a literal
//!   `$`. A reference to nothing is an error naming the file and line.
//!
//! # Diagnostics
//!
//! [`load()`] reports every problem at once, each with file and line (or environment
//! variable), section, option, the bad value and what was expected. Misspelt options in the
//! sections the daemons read get a "did you mean" warning; deprecated options a deprecation
//! warning, which `fatal_deprecations = True` turns into an error; a file holding a secret that
//! every user may read gets a warning naming it.
//!
//! # Other pieces
//!
//! [`render_show`] prints the effective configuration with the origin of each value and
//! secrets masked; [`render_sample`] produces `etc/imaged.conf.sample` (written by the
//! `imaged-config-sample` binary); [`render_option_table_markdown`] documents every option;
//! [`diff`] and [`ReloadPlan::effective`] decide what a reload changes.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use imaged_config::{Daemon, LoadRequest, load};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let file = dir.path().join("glance-scrubber.conf");
//! std::fs::write(
//!     &file,
//!     "[DEFAULT]\nwakeup_time = 60\n[database]\nconnection = sqlite:////var/lib/glance/glance.sqlite\n",
//! )
//! .unwrap();
//! let mut req = LoadRequest::new(Some(Daemon::Scrubber));
//! req.config_files.push(file);
//! req.env.insert("IMAGED_DEFAULT__SCRUB_POOL_SIZE".into(), "4".into());
//! let loaded = load(&req).unwrap_or_else(|errors| panic!("{errors}"));
//! let scrubber = loaded.config.scrubber();
//! assert_eq!(scrubber.wakeup_time, Duration::from_secs(60));
//! assert_eq!(scrubber.pool_size, 4);
//! ```

pub mod config;
pub mod error;
pub mod ini;
pub mod load;
pub mod options;
pub mod reload;
pub mod render;
pub mod value;

pub use config::{
    BackendSettings, CacheSettings, Config, DatabaseSettings, Entry, GlanceStoreSettings,
    ImportFiltering, LoggingSettings, ProcessSettings, ScrubberSettings, StoreOptions,
    TaskSettings,
};
pub use error::{ConfigErrors, Diagnostic, Error, Origin};
pub use load::{DEFAULT_CONFIG_DIR, ENV_PREFIX, LoadRequest, Loaded, env_var_name, load, mask_url};
pub use options::{
    Daemon, Daemons, DefSource, IMPORT_PLUGINS, Kind, OptionDef, RESERVED_PROPERTY_PREFIX,
};
pub use reload::{Change, ReloadPlan, diff};
pub use render::{render_option_table_markdown, render_sample, render_show};
pub use value::{Schedule, Value};

/// Write the sample configuration to `path`.
pub fn write_sample(path: &std::path::Path) -> Result<(), Error> {
    std::fs::write(path, render_sample()).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}
