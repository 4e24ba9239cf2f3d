//! The glue every daemon binary shares: the command-line options and verbs common
//! to all three daemons (`--config-file`, `--config-dir`, `config show|check`),
//! loading the configuration and reporting its problems, and turning the typed
//! configuration into the options of logging, the catalog and the stores.
//!
//! The other modules of this crate know nothing of configuration files; this one
//! is where the configuration crate meets them, so that each daemon's `main`
//! stays a screen long.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use imaged_catalog::CatalogOptions;
use imaged_config::{
    Config, ConfigErrors, Daemon, Diagnostic, LoadRequest, Loaded, Origin, StoreOptions as Conf,
};
use imaged_store::{
    AddressingStyle, BackendOptions, BackendType, FilesystemOptions, S3Options, StoreMode,
    StoreOptions, Timeouts,
};

use crate::exit::ExitCode;
use crate::logging::{JournaldMode, LoggingOptions};
use crate::schedule::Schedule;

/// Where the configuration comes from: the same flags as oslo.config.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// A configuration file; may repeat, later files override earlier ones.
    /// Without any --config-file/--config-dir, /etc/imaged/imaged.conf and
    /// /etc/imaged/<daemon>.conf are read when present.
    #[arg(long = "config-file", value_name = "PATH", global = true)]
    pub config_file: Vec<PathBuf>,
    /// A directory whose `*.conf` files are read in sorted order after the
    /// --config-file files; may repeat.
    #[arg(long = "config-dir", value_name = "DIR", global = true)]
    pub config_dir: Vec<PathBuf>,
}

/// `<daemon> config …`: inspect the configuration without starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration with the origin of every value
    /// (file:line, environment variable or default); secrets are masked.
    Show,
    /// Validate the configuration: exit 0 when it is valid, 2 otherwise.
    Check,
}

/// Problems turning a valid configuration into backend options.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A required option is missing or inconsistent.
    #[error("[{section}] {option}: {message}")]
    Option {
        /// Section of the option.
        section: String,
        /// The option.
        option: String,
        /// What is wrong.
        message: String,
    },
}

fn option_error(section: &str, option: &str, message: impl Into<String>) -> AppError {
    AppError::Option {
        section: section.to_owned(),
        option: option.to_owned(),
        message: message.into(),
    }
}

/// Load the configuration of `daemon` from the flags and the process
/// environment (`IMAGED_<SECTION>__<OPTION>`).
pub fn load(daemon: Daemon, args: &ConfigArgs) -> Result<Loaded, ConfigErrors> {
    let mut request = LoadRequest::new(Some(daemon)).with_process_env();
    request.config_files = args.config_file.clone();
    request.config_dirs = args.config_dir.clone();
    imaged_config::load(&request)
}

/// Print every error (and the warnings found with them) to stderr, for the
/// moment before logging exists.
pub fn print_errors(program: &str, errors: &ConfigErrors) {
    eprintln!("{program}: invalid configuration:");
    for e in &errors.errors {
        eprintln!("  error: {e}");
    }
    for w in &errors.warnings {
        eprintln!("  warning: {w}");
    }
}

/// Log the warnings and notes of a successful load (after logging is set up).
pub fn log_diagnostics(loaded: &Loaded) {
    for w in &loaded.warnings {
        tracing::warn!("configuration: {w}");
    }
    for n in &loaded.notes {
        tracing::debug!("configuration: {n}");
    }
}

/// Run `config show` or `config check` and return the exit code.
pub fn config_command(
    program: &str,
    daemon: Daemon,
    args: &ConfigArgs,
    cmd: ConfigCommand,
) -> ExitCode {
    let loaded = match load(daemon, args) {
        Ok(loaded) => loaded,
        Err(errors) => {
            print_errors(program, &errors);
            return ExitCode::Usage;
        }
    };
    let derived = derived_problems(&loaded.config);
    match cmd {
        ConfigCommand::Show => {
            print!("{}", imaged_config::render_show(&loaded.config));
        }
        ConfigCommand::Check => {
            for file in &loaded.files {
                println!("read {}", file.display());
            }
        }
    }
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    if derived.is_empty() {
        if cmd == ConfigCommand::Check {
            println!("configuration is valid");
        }
        ExitCode::Success
    } else {
        for e in &derived {
            eprintln!("error: {e}");
        }
        ExitCode::Usage
    }
}

/// Problems only visible when building the backend options (e.g. an S3 store
/// without credentials), all at once.
pub fn derived_problems(config: &Config) -> Vec<AppError> {
    let mut out = Vec::new();
    // The cache daemon with the node-local sqlite driver works without the catalog.
    let catalog_optional = config.daemon() == Some(Daemon::Cache)
        && config.cache().driver != "centralized_db"
        && config.database().connection.is_none();
    if let Err(e) = catalog_options(config)
        && !catalog_optional
    {
        out.push(e);
    }
    if let Err(e) = store_options(config) {
        out.push(e);
    }
    out
}

/// The logging options of the configuration.
pub fn logging_options(config: &Config) -> LoggingOptions {
    let l = config.logging();
    // `use_stderr` unset must stay distinguishable from `false`, so that a
    // daemon started by systemd logs to the journal by default.
    let use_stderr = match config.origin("DEFAULT", "use_stderr") {
        Some(Origin::Default) | None => None,
        Some(_) => Some(l.use_stderr),
    };
    LoggingOptions {
        debug: l.debug,
        log_file: l.log_file,
        log_dir: l.log_dir,
        use_stderr,
        use_syslog: l.use_syslog,
        syslog_log_facility: l.syslog_log_facility,
        log_date_format: l.log_date_format,
        default_log_levels: l.default_log_levels,
        watch_log_file: l.watch_log_file,
        publish_errors: matches!(
            config.value("DEFAULT", "publish_errors"),
            Some(imaged_config::Value::Bool(true))
        ),
        json: l.format.eq_ignore_ascii_case("json"),
        journald: JournaldMode::Auto,
        ..LoggingOptions::default()
    }
}

/// The catalog options of the configuration (`[database]` and
/// `metadata_encryption_key`).
pub fn catalog_options(config: &Config) -> Result<CatalogOptions, AppError> {
    let d = config.database();
    let connection = d
        .connection
        .ok_or_else(|| option_error("database", "connection", "must be set"))?;
    let mut o = CatalogOptions::new(connection);
    o.slave_connection = str_value(config, "database", "slave_connection");
    o.max_retries = d.max_retries.map_or(-1, i64::from);
    o.retry_interval = d.retry_interval;
    o.db_max_retries = d.db_max_retries.map_or(-1, i64::from);
    o.db_retry_interval = d.db_retry_interval;
    o.db_inc_retry_interval = d.db_inc_retry_interval;
    o.db_max_retry_interval = d.db_max_retry_interval;
    o.max_pool_size = d.max_pool_size;
    o.min_pool_size = d.min_pool_size;
    if let Some(imaged_config::Value::Int(n)) = config.value("database", "max_overflow") {
        o.max_overflow = u32::try_from(*n).unwrap_or(0);
    }
    o.pool_timeout = d.pool_timeout;
    o.idle_timeout = d.idle_timeout;
    o.sqlite_synchronous = d.sqlite_synchronous;
    o.mysql_sql_mode = d.mysql_sql_mode.filter(|m| !m.is_empty());
    o.connection_debug = u32::from(d.connection_debug);
    if let Some(imaged_config::Value::Bool(b)) = config.value("database", "use_db_reconnect") {
        o.use_db_reconnect = *b;
    }
    o.metadata_encryption_key = config.metadata_encryption_key();
    Ok(o)
}

fn str_value(config: &Config, section: &str, name: &str) -> Option<String> {
    match config.value(section, name) {
        Some(imaged_config::Value::Str(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The store options of the configuration: multi-store when `[DEFAULT]
/// enabled_backends` is set, `[glance_store]` single-store otherwise.
pub fn store_options(config: &Config) -> Result<StoreOptions, AppError> {
    let g = config.glance_store();
    let mode = if g.enabled_backends.is_empty() {
        let types: Vec<BackendType> = g.stores.iter().filter_map(|s| store_type(s)).collect();
        let default_store = store_type(&g.default_store).ok_or_else(|| {
            option_error(
                "glance_store",
                "default_store",
                format!("unknown store type {:?}", g.default_store),
            )
        })?;
        let wants = |t: BackendType| types.contains(&t) || default_store == t;
        StoreMode::Single {
            default_store,
            filesystem: wants(BackendType::File).then(|| filesystem(&g.single)),
            s3: if wants(BackendType::S3) {
                Some(s3("glance_store", &g.single)?)
            } else {
                None
            },
        }
    } else {
        let mut backends = BTreeMap::new();
        for b in &g.backends {
            backends.insert(b.name.clone(), backend(&b.name, &b.store_type, &b.store)?);
        }
        // The reserved stores are filesystem stores glance-api uses for
        // staging and task data; imported data is read back from them.
        for (name, opts) in [
            ("os_glance_staging_store", &g.staging_store),
            ("os_glance_tasks_store", &g.tasks_store),
        ] {
            backends
                .entry(name.to_owned())
                .or_insert_with(|| BackendOptions::File(filesystem(opts)));
        }
        StoreMode::Multi {
            backends,
            default_backend: g.default_backend.clone(),
        }
    };
    Ok(StoreOptions {
        mode,
        timeouts: Timeouts::default(),
    })
}

/// A store type name as glance_store accepts it in `stores` / `enabled_backends`
/// (`file`, `filesystem`, `s3`, `http`, …, or the old `glance.store.*.Store`
/// class paths).
fn store_type(name: &str) -> Option<BackendType> {
    let name = name.trim();
    let short = name
        .strip_prefix("glance.store.")
        .or_else(|| name.strip_prefix("glance_store._drivers."))
        .map(|rest| rest.split('.').next().unwrap_or(rest))
        .unwrap_or(name);
    BackendType::from_type_name(short)
}

fn backend(name: &str, type_name: &str, opts: &Conf) -> Result<BackendOptions, AppError> {
    let t = store_type(type_name).ok_or_else(|| {
        option_error(
            "DEFAULT",
            "enabled_backends",
            format!("backend {name:?} has unknown store type {type_name:?}"),
        )
    })?;
    Ok(match t {
        BackendType::File => BackendOptions::File(filesystem(opts)),
        BackendType::S3 => BackendOptions::S3(s3(name, opts)?),
        BackendType::Http => BackendOptions::Http,
        other => BackendOptions::Unsupported(other),
    })
}

fn filesystem(o: &Conf) -> FilesystemOptions {
    let mut f = FilesystemOptions::with_datadir(o.filesystem_store_datadir.clone());
    f.datadirs = o
        .filesystem_store_datadirs
        .iter()
        .map(|entry| parse_datadir(entry))
        .collect();
    f.file_perm = o.filesystem_store_file_perm;
    f
}

/// `path[:priority]`, as glance_store reads `filesystem_store_datadirs`.
fn parse_datadir(entry: &str) -> (PathBuf, i32) {
    match entry.rsplit_once(':') {
        Some((path, prio)) if !path.is_empty() => match prio.trim().parse::<i32>() {
            Ok(p) => (PathBuf::from(path.trim()), p),
            Err(_) => (PathBuf::from(entry.trim()), 0),
        },
        _ => (PathBuf::from(entry.trim()), 0),
    }
}

fn s3(section: &str, o: &Conf) -> Result<S3Options, AppError> {
    let need = |v: &Option<String>, name: &str| {
        v.clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| option_error(section, name, "must be set for an s3 store"))
    };
    let mut s = S3Options::new(
        need(&o.s3_host, "s3_store_host")?,
        need(&o.s3_access_key, "s3_store_access_key")?,
        need(&o.s3_secret_key, "s3_store_secret_key")?,
        need(&o.s3_bucket, "s3_store_bucket")?,
    );
    s.create_bucket_on_put = o.s3_create_bucket_on_put;
    s.addressing_style = match o.s3_bucket_url_format.as_str() {
        "path" => AddressingStyle::Path,
        "virtual" => AddressingStyle::Virtual,
        _ => AddressingStyle::Auto,
    };
    if !o.s3_region.is_empty() {
        s.region = Some(o.s3_region.clone());
    }
    Ok(s)
}

/// The runtime schedule of a configured one. A zero interval (Glance allows
/// `wakeup_time = 0`) becomes one second: back-to-back passes over an empty
/// queue would only burn CPU and database round trips.
pub fn schedule(s: &imaged_config::Schedule) -> Schedule {
    match s {
        imaged_config::Schedule::Every(d) => Schedule::every((*d).max(Duration::from_secs(1))),
        imaged_config::Schedule::Cron(expr) => {
            // The configuration crate validated the expression with the same
            // parser, so this cannot fail for a loaded configuration; fall
            // back to the default interval rather than abort a reload.
            Schedule::parse(expr).unwrap_or_else(|_| Schedule::every(Duration::from_secs(300)))
        }
    }
}

/// One line per diagnostic, for summaries in logs and status output.
pub fn describe(diags: &[Diagnostic]) -> Vec<String> {
    diags.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn loaded(text: &str) -> (tempfile::TempDir, Result<Loaded, ConfigErrors>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imaged.conf");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        let mut req = LoadRequest::new(Some(Daemon::Scrubber));
        req.config_files = vec![path];
        req.default_dir = dir.path().join("none");
        let r = imaged_config::load(&req);
        (dir, r)
    }

    #[test]
    fn single_store_file_and_catalog_options() {
        let (_d, r) = loaded(
            "[DEFAULT]\nmetadata_encryption_key = 0123456789abcdef\n\
             [database]\nconnection = mysql+pymysql://glance:pw@db/glance\nmax_retries = -1\n\
             [glance_store]\nstores = file,http\ndefault_store = file\n\
             filesystem_store_datadir = /srv/images\n",
        );
        let config = r.unwrap().config;
        let c = catalog_options(&config).unwrap();
        assert_eq!(c.connection, "mysql+pymysql://glance:pw@db/glance");
        assert_eq!(c.max_retries, -1);
        assert_eq!(
            c.metadata_encryption_key.as_deref(),
            Some("0123456789abcdef")
        );
        match store_options(&config).unwrap().mode {
            StoreMode::Single {
                default_store,
                filesystem,
                s3,
            } => {
                assert_eq!(default_store, BackendType::File);
                assert_eq!(
                    filesystem.unwrap().datadir,
                    Some(PathBuf::from("/srv/images"))
                );
                assert!(s3.is_none());
            }
            other => panic!("expected single-store mode, got {other:?}"),
        }
    }

    #[test]
    fn multi_store_backends_and_reserved_stores() {
        let (_d, r) = loaded(
            "[DEFAULT]\nenabled_backends = fast:file, web:http\n\
             [database]\nconnection = sqlite:////tmp/x.db\n\
             [glance_store]\ndefault_backend = fast\n\
             [fast]\nfilesystem_store_datadir = /srv/fast\n",
        );
        let config = r.unwrap().config;
        match store_options(&config).unwrap().mode {
            StoreMode::Multi {
                backends,
                default_backend,
            } => {
                assert_eq!(default_backend.as_deref(), Some("fast"));
                match &backends["fast"] {
                    BackendOptions::File(f) => {
                        assert_eq!(f.datadir, Some(PathBuf::from("/srv/fast")))
                    }
                    other => panic!("fast: {other:?}"),
                }
                assert!(matches!(backends["web"], BackendOptions::Http));
                assert!(backends.contains_key("os_glance_staging_store"));
            }
            other => panic!("expected multi-store mode, got {other:?}"),
        }
    }

    #[test]
    fn s3_store_without_credentials_is_reported() {
        let (_d, r) = loaded(
            "[database]\nconnection = sqlite:////tmp/x.db\n\
             [glance_store]\nstores = s3\ndefault_store = s3\ns3_store_host = http://127.0.0.1:9000\n",
        );
        let config = r.unwrap().config;
        let problems = derived_problems(&config);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].to_string().contains("s3_store_access_key"));
    }

    #[test]
    fn datadirs_with_priorities() {
        assert_eq!(parse_datadir("/a:200"), (PathBuf::from("/a"), 200));
        assert_eq!(parse_datadir("/b"), (PathBuf::from("/b"), 0));
        assert_eq!(parse_datadir("/c:d"), (PathBuf::from("/c:d"), 0));
    }

    #[test]
    fn store_type_names_old_and_new() {
        assert_eq!(store_type("file"), Some(BackendType::File));
        assert_eq!(store_type("filesystem"), Some(BackendType::File));
        assert_eq!(
            store_type("glance.store.filesystem.Store"),
            Some(BackendType::File)
        );
        assert_eq!(store_type("nonsense"), None);
    }

    #[test]
    fn zero_wakeup_becomes_one_second() {
        let s = schedule(&imaged_config::Schedule::Every(Duration::ZERO));
        assert_eq!(s, Schedule::every(Duration::from_secs(1)));
    }

    #[test]
    fn use_stderr_unset_stays_unset() {
        let (_d, r) = loaded("[database]\nconnection = sqlite:////tmp/x.db\n");
        assert_eq!(logging_options(&r.unwrap().config).use_stderr, None);
        let (_d, r) =
            loaded("[DEFAULT]\nuse_stderr = false\n[database]\nconnection = sqlite:////tmp/x.db\n");
        assert_eq!(logging_options(&r.unwrap().config).use_stderr, Some(false));
    }
}
