//! The effective configuration and its typed, read-only views.
//!
//! A `Config` only comes out of the loader, so every value already has its option's type; the
//! views turn them into Rust types (durations, byte counts, paths, optional values).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Origin;
use crate::options::{Daemon, OptionDef};
use crate::value::{Schedule, Value};

/// One option's effective value.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The definition.
    pub def: &'static OptionDef,
    /// The typed value.
    pub value: Value,
    /// Where it came from.
    pub origin: Origin,
    /// The text as written (before interpolation), or the default text.
    pub raw: Option<String>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.def, other.def)
            && self.value == other.value
            && self.origin == other.origin
            && self.raw == other.raw
    }
}

/// The effective configuration of one daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    daemon: Option<Daemon>,
    entries: BTreeMap<(String, String), Entry>,
}

/// `[database]`: the Glance catalog connection (oslo.db options).
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseSettings {
    /// SQLAlchemy-style URL; required by every daemon.
    pub connection: Option<String>,
    /// Largest pool size; `None` leaves it to the driver.
    pub max_pool_size: Option<u32>,
    /// Connections kept open.
    pub min_pool_size: u32,
    /// Wait for a pooled connection; `None` = driver default.
    pub pool_timeout: Option<Duration>,
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// Connection attempts at start; `None` = retry forever (`-1`).
    pub max_retries: Option<u32>,
    /// Delay between connection attempts at start.
    pub retry_interval: Duration,
    /// Retries of one operation on connection loss or deadlock; `None` = forever (`-1`).
    pub db_max_retries: Option<u32>,
    /// First delay between operation retries.
    pub db_retry_interval: Duration,
    /// Whether the operation retry delay doubles up to `db_max_retry_interval`.
    pub db_inc_retry_interval: bool,
    /// Largest operation retry delay.
    pub db_max_retry_interval: Duration,
    /// SQLite `synchronous` on (true) or off.
    pub sqlite_synchronous: bool,
    /// `sql_mode` for MySQL sessions; empty means the server's own.
    pub mysql_sql_mode: Option<String>,
    /// SQL logging verbosity 0–100.
    pub connection_debug: u8,
}

/// One multi-store backend (`[DEFAULT] enabled_backends`) or reserved store.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSettings {
    /// Backend identifier (also its section name).
    pub name: String,
    /// Store type: `file`, `s3`, `http`, `rbd`…
    pub store_type: String,
    /// The store options of its section.
    pub store: StoreOptions,
}

/// glance_store driver options of one store section.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreOptions {
    /// Filesystem store directory.
    pub filesystem_store_datadir: PathBuf,
    /// Deprecated multi-directory form, `path[:priority]` each.
    pub filesystem_store_datadirs: Vec<String>,
    /// Permission bits for new image files (0 = leave as created).
    pub filesystem_store_file_perm: u32,
    /// S3 server host or URL.
    pub s3_host: Option<String>,
    /// S3 region.
    pub s3_region: String,
    /// S3 access key.
    pub s3_access_key: Option<String>,
    /// S3 secret key.
    pub s3_secret_key: Option<String>,
    /// S3 bucket.
    pub s3_bucket: Option<String>,
    /// Create the bucket on first upload.
    pub s3_create_bucket_on_put: bool,
    /// `auto`, `virtual` or `path`.
    pub s3_bucket_url_format: String,
    /// CA bundle path; empty = system roots.
    pub s3_cacert: String,
}

/// `[glance_store]` plus multi-store settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GlanceStoreSettings {
    /// Single-store mode: enabled store types.
    pub stores: Vec<String>,
    /// Single-store mode: store type for new data.
    pub default_store: String,
    /// Multi-store mode: backend for new data.
    pub default_backend: Option<String>,
    /// `[DEFAULT] enabled_backends` pairs (identifier, type); empty = single-store mode.
    pub enabled_backends: Vec<(String, String)>,
    /// Single-store options from `[glance_store]`.
    pub single: StoreOptions,
    /// One entry per enabled backend, in the order configured.
    pub backends: Vec<BackendSettings>,
    /// `[os_glance_staging_store]` options (multi-store staging area).
    pub staging_store: StoreOptions,
    /// `[os_glance_tasks_store]` options (multi-store task work area).
    pub tasks_store: StoreOptions,
}

/// The scrubber's options.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrubberSettings {
    /// Age of a deletion before it may be scrubbed (`scrub_time`).
    pub scrub_time: Duration,
    /// Images scrubbed in parallel.
    pub pool_size: usize,
    /// Delay between runs (`wakeup_time`).
    pub wakeup_time: Duration,
    /// `[imaged_scrubber] schedule` if set, else every `wakeup_time`.
    pub schedule: Schedule,
    /// Claim lease per image.
    pub lease: Duration,
    /// Catalog rows per query.
    pub batch_size: u32,
    /// `[DEFAULT] daemon`: keep running instead of one pass.
    pub daemon: bool,
}

/// The cache daemon's options.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// `image_cache_dir`.
    pub dir: Option<PathBuf>,
    /// `sqlite`, `centralized_db` or `xattr`.
    pub driver: String,
    /// Prune threshold in bytes.
    pub max_size: u64,
    /// Prune target in bytes (`low_water_mark`, else `max_size`).
    pub low_water_mark: u64,
    /// Free bytes to keep on the cache filesystem.
    pub min_free_disk: Option<u64>,
    /// `cache.db` path: relative ones are joined to `dir`.
    pub sqlite_db: PathBuf,
    /// Age after which incomplete files are removed.
    pub stall_time: Duration,
    /// Lock directory (`[oslo_concurrency] lock_path`, else `dir`).
    pub lock_path: Option<PathBuf>,
    /// Node key of centralized_db.
    pub worker_self_reference_url: Option<String>,
    /// When the pruner runs.
    pub prune_schedule: Schedule,
    /// When the cleaner runs.
    pub clean_schedule: Schedule,
    /// When the prefetcher runs.
    pub prefetch_schedule: Schedule,
}

/// `[import_filtering_opts]` web-download rules.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportFiltering {
    /// Allowed schemes (empty = all not disallowed).
    pub allowed_schemes: Vec<String>,
    /// Disallowed schemes.
    pub disallowed_schemes: Vec<String>,
    /// Allowed hosts.
    pub allowed_hosts: Vec<String>,
    /// Disallowed hosts.
    pub disallowed_hosts: Vec<String>,
    /// Allowed ports.
    pub allowed_ports: Vec<u16>,
    /// Disallowed ports.
    pub disallowed_ports: Vec<u16>,
}

/// The task executor's options.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSettings {
    /// Lifetime of finished tasks (`task_time_to_live` hours).
    pub time_to_live: Duration,
    /// `[task] task_executor`.
    pub executor: String,
    /// Legacy import scratch directory.
    pub work_dir: Option<PathBuf>,
    /// `serial` or `parallel`.
    pub engine_mode: String,
    /// `[taskflow_executor] max_workers`.
    pub max_workers: u32,
    /// Legacy import conversion target.
    pub conversion_format: Option<String>,
    /// Claim lease.
    pub lease: Duration,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Claims before a task fails for good.
    pub max_attempts: u32,
    /// Idle polling period.
    pub poll_interval: Duration,
    /// Staging URI (`file://`).
    pub node_staging_uri: String,
    /// Largest image in bytes.
    pub image_size_cap: u64,
    /// Per-user quota in bytes (0 = none).
    pub user_storage_quota: u64,
    /// `os_hash_algo`.
    pub hashing_algorithm: String,
    /// Enabled import methods.
    pub enabled_import_methods: Vec<String>,
    /// Accepted container formats.
    pub container_formats: Vec<String>,
    /// Accepted disk formats.
    pub disk_formats: Vec<String>,
    /// Accepted VMDK create-types.
    pub vmdk_allowed_types: Vec<String>,
    /// Reject data whose format differs from `disk_format`.
    pub require_image_format_match: bool,
    /// GPT checks that only warn.
    pub gpt_safety_checks_nonfatal: Vec<String>,
    /// image_conversion plugin target.
    pub conversion_output_format: String,
    /// Import plugins in order.
    pub image_import_plugins: Vec<String>,
    /// Parallel store copies.
    pub max_parallel_stores: u32,
    /// `[inject_metadata_properties] ignore_user_roles`.
    pub inject_ignore_user_roles: Vec<String>,
    /// `[inject_metadata_properties] inject`, in the order written.
    pub inject_properties: Vec<(String, String)>,
    /// Web-download filtering.
    pub import_filtering: ImportFiltering,
}

/// Logging options (oslo.log names plus `[imaged] log_format`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoggingSettings {
    /// DEBUG instead of INFO.
    pub debug: bool,
    /// `logger=LEVEL` pairs.
    pub default_log_levels: Vec<String>,
    /// Log file (relative ones are joined to `log_dir`).
    pub log_file: Option<PathBuf>,
    /// Base directory of a relative `log_file`.
    pub log_dir: Option<PathBuf>,
    /// Log to stderr.
    pub use_stderr: bool,
    /// Log to syslog.
    pub use_syslog: bool,
    /// Syslog facility name.
    pub syslog_log_facility: String,
    /// strftime format of timestamps.
    pub log_date_format: String,
    /// Reopen the log file when it is moved.
    pub watch_log_file: bool,
    /// Deprecations are fatal.
    pub fatal_deprecations: bool,
    /// `text` or `json`.
    pub format: String,
}

/// Process-wide imaged options.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSettings {
    /// Metrics endpoint `host:port`; `None` = off.
    pub metrics_bind: Option<String>,
    /// Grace period at shutdown.
    pub shutdown_timeout: Duration,
}

fn secs(v: i64) -> Duration {
    Duration::from_secs(u64::try_from(v).unwrap_or(0))
}

impl Config {
    pub(crate) fn new(daemon: Option<Daemon>, entries: BTreeMap<(String, String), Entry>) -> Self {
        Config { daemon, entries }
    }

    /// The daemon this configuration was loaded for.
    pub fn daemon(&self) -> Option<Daemon> {
        self.daemon
    }

    /// Every option slot with its effective value, sorted by section and name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, &Entry)> {
        self.entries
            .iter()
            .map(|((s, n), e)| (s.as_str(), n.as_str(), e))
    }

    /// The entry of `[section] name`.
    pub fn entry(&self, section: &str, name: &str) -> Option<&Entry> {
        self.entries.get(&(section.to_owned(), name.to_owned()))
    }

    pub(crate) fn replace_entry(&mut self, section: &str, name: &str, entry: Entry) {
        self.entries
            .insert((section.to_owned(), name.to_owned()), entry);
    }

    /// The typed value of any defined option (`None` if the option is not defined).
    pub fn value(&self, section: &str, name: &str) -> Option<&Value> {
        self.entry(section, name).map(|e| &e.value)
    }

    /// Where the value of `[section] name` came from.
    pub fn origin(&self, section: &str, name: &str) -> Option<&Origin> {
        self.entry(section, name).map(|e| &e.origin)
    }

    fn int(&self, s: &str, n: &str) -> Option<i64> {
        match self.value(s, n) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }

    fn uint<T: TryFrom<i64> + Default>(&self, s: &str, n: &str) -> T {
        self.int(s, n)
            .and_then(|i| T::try_from(i).ok())
            .unwrap_or_default()
    }

    /// A `-1 means forever` count.
    fn count_or_infinite(&self, s: &str, n: &str) -> Option<u32> {
        self.int(s, n).and_then(|i| u32::try_from(i).ok())
    }

    fn duration(&self, s: &str, n: &str) -> Duration {
        self.int(s, n).map(secs).unwrap_or_default()
    }

    fn bool(&self, s: &str, n: &str) -> bool {
        matches!(self.value(s, n), Some(Value::Bool(true)))
    }

    fn opt_str(&self, s: &str, n: &str) -> Option<String> {
        match self.value(s, n) {
            Some(Value::Str(v)) => Some(v.clone()),
            _ => None,
        }
    }

    fn string(&self, s: &str, n: &str) -> String {
        self.opt_str(s, n).unwrap_or_default()
    }

    fn opt_path(&self, s: &str, n: &str) -> Option<PathBuf> {
        self.opt_str(s, n)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    }

    fn list(&self, s: &str, n: &str) -> Vec<String> {
        match self.value(s, n) {
            Some(Value::List(l)) => l.clone(),
            _ => Vec::new(),
        }
    }

    fn ports(&self, s: &str, n: &str) -> Vec<u16> {
        match self.value(s, n) {
            Some(Value::Ports(p)) => p.clone(),
            _ => Vec::new(),
        }
    }

    fn bytes(&self, s: &str, n: &str) -> Option<u64> {
        match self.value(s, n) {
            Some(Value::Bytes(b)) => Some(*b),
            Some(Value::Int(i)) => u64::try_from(*i).ok(),
            _ => None,
        }
    }

    fn schedule(&self, s: &str, n: &str) -> Option<Schedule> {
        match self.value(s, n) {
            Some(Value::Schedule(sc)) => Some(sc.clone()),
            _ => None,
        }
    }

    /// `[DEFAULT] metadata_encryption_key`: the AES key of location URLs, if set.
    pub fn metadata_encryption_key(&self) -> Option<String> {
        self.opt_str("DEFAULT", "metadata_encryption_key")
            .filter(|k| !k.is_empty())
    }

    /// `[database]`.
    pub fn database(&self) -> DatabaseSettings {
        let d = "database";
        DatabaseSettings {
            connection: self.opt_str(d, "connection").filter(|c| !c.is_empty()),
            max_pool_size: self
                .int(d, "max_pool_size")
                .and_then(|i| u32::try_from(i).ok()),
            min_pool_size: self.uint(d, "min_pool_size"),
            pool_timeout: self.int(d, "pool_timeout").map(secs),
            idle_timeout: self.duration(d, "idle_timeout"),
            max_retries: self.count_or_infinite(d, "max_retries"),
            retry_interval: self.duration(d, "retry_interval"),
            db_max_retries: self.count_or_infinite(d, "db_max_retries"),
            db_retry_interval: self.duration(d, "db_retry_interval"),
            db_inc_retry_interval: self.bool(d, "db_inc_retry_interval"),
            db_max_retry_interval: self.duration(d, "db_max_retry_interval"),
            sqlite_synchronous: self.bool(d, "sqlite_synchronous"),
            mysql_sql_mode: self.opt_str(d, "mysql_sql_mode").filter(|m| !m.is_empty()),
            connection_debug: self.uint(d, "connection_debug"),
        }
    }

    fn store_options(&self, s: &str) -> StoreOptions {
        StoreOptions {
            filesystem_store_datadir: self
                .opt_path(s, "filesystem_store_datadir")
                .unwrap_or_default(),
            filesystem_store_datadirs: self.list(s, "filesystem_store_datadirs"),
            filesystem_store_file_perm: self.uint(s, "filesystem_store_file_perm"),
            s3_host: self.opt_str(s, "s3_store_host"),
            s3_region: self.string(s, "s3_store_region_name"),
            s3_access_key: self.opt_str(s, "s3_store_access_key"),
            s3_secret_key: self.opt_str(s, "s3_store_secret_key"),
            s3_bucket: self.opt_str(s, "s3_store_bucket"),
            s3_create_bucket_on_put: self.bool(s, "s3_store_create_bucket_on_put"),
            s3_bucket_url_format: self.string(s, "s3_store_bucket_url_format"),
            s3_cacert: self.string(s, "s3_store_cacert"),
        }
    }

    /// `[glance_store]`, `enabled_backends` and every backend section.
    pub fn glance_store(&self) -> GlanceStoreSettings {
        let enabled_backends = match self.value("DEFAULT", "enabled_backends") {
            Some(Value::Dict(d)) => d.clone(),
            _ => Vec::new(),
        };
        let backends = enabled_backends
            .iter()
            .map(|(name, store_type)| BackendSettings {
                name: name.clone(),
                store_type: store_type.clone(),
                store: self.store_options(&crate::ini::normalize_section(name)),
            })
            .collect();
        GlanceStoreSettings {
            stores: self.list("glance_store", "stores"),
            default_store: self.string("glance_store", "default_store"),
            default_backend: self.opt_str("glance_store", "default_backend"),
            enabled_backends,
            single: self.store_options("glance_store"),
            backends,
            staging_store: self.store_options("os_glance_staging_store"),
            tasks_store: self.store_options("os_glance_tasks_store"),
        }
    }

    /// The scrubber's settings.
    pub fn scrubber(&self) -> ScrubberSettings {
        let wakeup_time = self.duration("DEFAULT", "wakeup_time");
        ScrubberSettings {
            scrub_time: self.duration("DEFAULT", "scrub_time"),
            pool_size: self.uint("DEFAULT", "scrub_pool_size"),
            wakeup_time,
            schedule: self
                .schedule("imaged_scrubber", "schedule")
                .unwrap_or(Schedule::Every(wakeup_time)),
            lease: self.duration("imaged_scrubber", "lease_seconds"),
            batch_size: self.uint("imaged_scrubber", "batch_size"),
            daemon: self.bool("DEFAULT", "daemon"),
        }
    }

    /// The cache daemon's settings.
    pub fn cache(&self) -> CacheSettings {
        let dir = self.opt_path("DEFAULT", "image_cache_dir");
        let max_size = self.bytes("DEFAULT", "image_cache_max_size").unwrap_or(0);
        let db = PathBuf::from(self.string("DEFAULT", "image_cache_sqlite_db"));
        let sqlite_db = match &dir {
            Some(d) if db.is_relative() => d.join(db),
            _ => db,
        };
        // The options have defaults and an explicit unset keeps them, so these are always set;
        // an impossible absence degrades to "run every minute" rather than never.
        let every = |s: &str| {
            self.schedule("imaged_cache", s)
                .unwrap_or(Schedule::Every(Duration::from_secs(60)))
        };
        CacheSettings {
            lock_path: self
                .opt_path("oslo_concurrency", "lock_path")
                .or_else(|| dir.clone()),
            dir,
            driver: self.string("DEFAULT", "image_cache_driver"),
            max_size,
            low_water_mark: self
                .bytes("imaged_cache", "low_water_mark")
                .map_or(max_size, |l| l.min(max_size)),
            min_free_disk: self.bytes("imaged_cache", "min_free_disk"),
            sqlite_db,
            stall_time: self.duration("DEFAULT", "image_cache_stall_time"),
            worker_self_reference_url: self
                .opt_str("DEFAULT", "worker_self_reference_url")
                .filter(|u| !u.is_empty()),
            prune_schedule: every("prune_schedule"),
            clean_schedule: every("clean_schedule"),
            prefetch_schedule: every("prefetch_schedule"),
        }
    }

    /// The task executor's settings.
    pub fn task(&self) -> TaskSettings {
        let f = "import_filtering_opts";
        TaskSettings {
            time_to_live: secs(self.int("task", "task_time_to_live").unwrap_or(0) * 3600),
            executor: self.string("task", "task_executor"),
            work_dir: self.opt_path("task", "work_dir"),
            engine_mode: self.string("taskflow_executor", "engine_mode"),
            max_workers: self.uint("taskflow_executor", "max_workers"),
            conversion_format: self.opt_str("taskflow_executor", "conversion_format"),
            lease: self.duration("imaged_tasks", "lease_seconds"),
            heartbeat_interval: self.duration("imaged_tasks", "heartbeat_interval"),
            max_attempts: self.uint("imaged_tasks", "max_attempts"),
            poll_interval: self.duration("imaged_tasks", "poll_interval"),
            node_staging_uri: self.string("DEFAULT", "node_staging_uri"),
            image_size_cap: self.bytes("DEFAULT", "image_size_cap").unwrap_or(0),
            user_storage_quota: self.bytes("DEFAULT", "user_storage_quota").unwrap_or(0),
            hashing_algorithm: self.string("DEFAULT", "hashing_algorithm"),
            enabled_import_methods: self.list("DEFAULT", "enabled_import_methods"),
            container_formats: self.list("image_format", "container_formats"),
            disk_formats: self.list("image_format", "disk_formats"),
            vmdk_allowed_types: self.list("image_format", "vmdk_allowed_types"),
            require_image_format_match: self.bool("image_format", "require_image_format_match"),
            gpt_safety_checks_nonfatal: self.list("image_format", "gpt_safety_checks_nonfatal"),
            conversion_output_format: self.string("image_conversion", "output_format"),
            image_import_plugins: self.list("image_import_opts", "image_import_plugins"),
            max_parallel_stores: self.uint("image_import_opts", "max_parallel_stores"),
            inject_ignore_user_roles: self.list("inject_metadata_properties", "ignore_user_roles"),
            inject_properties: match self.value("inject_metadata_properties", "inject") {
                Some(Value::Dict(d)) => d.clone(),
                _ => Vec::new(),
            },
            import_filtering: ImportFiltering {
                allowed_schemes: self.list(f, "allowed_schemes"),
                disallowed_schemes: self.list(f, "disallowed_schemes"),
                allowed_hosts: self.list(f, "allowed_hosts"),
                disallowed_hosts: self.list(f, "disallowed_hosts"),
                allowed_ports: self.ports(f, "allowed_ports"),
                disallowed_ports: self.ports(f, "disallowed_ports"),
            },
        }
    }

    /// Logging settings.
    pub fn logging(&self) -> LoggingSettings {
        let d = "DEFAULT";
        LoggingSettings {
            debug: self.bool(d, "debug"),
            default_log_levels: self.list(d, "default_log_levels"),
            log_file: self.opt_path(d, "log_file"),
            log_dir: self.opt_path(d, "log_dir"),
            use_stderr: self.bool(d, "use_stderr"),
            use_syslog: self.bool(d, "use_syslog"),
            syslog_log_facility: self.string(d, "syslog_log_facility"),
            log_date_format: self.string(d, "log_date_format"),
            watch_log_file: self.bool(d, "watch_log_file"),
            fatal_deprecations: self.bool(d, "fatal_deprecations"),
            format: self.string("imaged", "log_format"),
        }
    }

    /// Process-wide settings.
    pub fn process(&self) -> ProcessSettings {
        ProcessSettings {
            metrics_bind: self.opt_str("imaged", "metrics_bind"),
            shutdown_timeout: self.duration("imaged", "shutdown_timeout"),
        }
    }
}
