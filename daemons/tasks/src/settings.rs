//! The executor's typed settings, built from the loaded configuration.
//!
//! Everything here is re-read on reload (SIGHUP or a changed file): worker
//! counts, limits, filtering rules and formats apply to tasks claimed after
//! the reload; a task already running keeps the settings it started with.

use std::path::PathBuf;
use std::time::Duration;

use imaged_config::{Config, Value};

use crate::TasksError;
use crate::fetch::UrlFilter;
use crate::hashing::HashAlgo;

/// Default User-Agent of downloads (CDNs refuse some library defaults).
pub const DEFAULT_USER_AGENT: &str = concat!("imaged-tasks/", env!("CARGO_PKG_VERSION"));

/// Everything one task run needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[task] task_time_to_live`: `expires_at = now + ttl` on a terminal status.
    pub task_time_to_live: Duration,
    /// `[task] work_dir`: scratch space for downloads that need a file (conversion).
    pub work_dir: Option<PathBuf>,
    /// `[taskflow_executor] engine_mode = parallel`.
    pub parallel: bool,
    /// `[taskflow_executor] max_workers`: tasks at once in parallel mode.
    pub max_workers: u32,
    /// `[taskflow_executor] conversion_format`.
    pub conversion_format: Option<String>,
    /// `[imaged_tasks] lease_seconds`.
    pub lease: Duration,
    /// `[imaged_tasks] heartbeat_interval`.
    pub heartbeat_interval: Duration,
    /// `[imaged_tasks] max_attempts`.
    pub max_attempts: u32,
    /// `[imaged_tasks] poll_interval` (capped at one second for pickup).
    pub poll_interval: Duration,
    /// `[DEFAULT] image_size_cap` in bytes.
    pub image_size_cap: u64,
    /// `[DEFAULT] user_storage_quota` in bytes; 0 = off.
    pub user_storage_quota: u64,
    /// `[DEFAULT] hashing_algorithm`.
    pub hashing_algorithm: HashAlgo,
    /// `[image_format] disk_formats`.
    pub disk_formats: Vec<String>,
    /// `[image_format] container_formats`.
    pub container_formats: Vec<String>,
    /// `[image_format] vmdk_allowed_types`.
    pub vmdk_allowed_types: Vec<String>,
    /// `[image_format] require_image_format_match`.
    pub require_image_format_match: bool,
    /// `[image_format] gpt_safety_checks_nonfatal`: GPT checks that only warn.
    pub gpt_safety_checks_nonfatal: Vec<String>,
    /// `[image_import_opts] image_import_plugins`, in the order they run.
    pub image_import_plugins: Vec<String>,
    /// `[image_conversion] output_format`: the image_conversion plugin's target.
    pub conversion_output_format: String,
    /// `[inject_metadata_properties] ignore_user_roles`.
    pub inject_ignore_user_roles: Vec<String>,
    /// `[inject_metadata_properties] inject`, in the order written.
    pub inject_properties: Vec<(String, String)>,
    /// `[DEFAULT] image_property_quota`; negative = unlimited.
    pub image_property_quota: i64,
    /// `[DEFAULT] image_tag_quota`; negative = unlimited.
    pub image_tag_quota: i64,
    /// `[DEFAULT] allow_additional_image_properties`.
    pub allow_additional_image_properties: bool,
    /// `[import_filtering_opts]` plus `[imaged_tasks] import_file_dirs`.
    pub filter: UrlFilter,
    /// `[imaged_tasks] connect_timeout`.
    pub connect_timeout: Duration,
    /// `[imaged_tasks] read_timeout`.
    pub read_timeout: Duration,
    /// `[imaged_tasks] user_agent`.
    pub user_agent: String,
    /// `[imaged] shutdown_timeout`.
    pub shutdown_timeout: Duration,
    /// The interoperable import's options (staging area, stores, methods).
    pub api_import: crate::api_import::ApiImportSettings,
}

fn int(config: &Config, section: &str, name: &str, default: i64) -> i64 {
    match config.value(section, name) {
        Some(Value::Int(n)) => *n,
        _ => default,
    }
}

fn boolean(config: &Config, section: &str, name: &str, default: bool) -> bool {
    match config.value(section, name) {
        Some(Value::Bool(b)) => *b,
        _ => default,
    }
}

fn text(config: &Config, section: &str, name: &str) -> Option<String> {
    match config.value(section, name) {
        Some(Value::Str(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

fn list(config: &Config, section: &str, name: &str) -> Vec<String> {
    match config.value(section, name) {
        Some(Value::List(items)) => items.clone(),
        Some(Value::Str(s)) => s
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

fn secs(n: i64) -> Duration {
    Duration::from_secs(u64::try_from(n).unwrap_or(0))
}

impl Settings {
    /// The settings of a loaded configuration, or every reason they are
    /// unusable.
    pub fn from_config(config: &Config) -> Result<Settings, TasksError> {
        let t = config.task();
        let hashing_algorithm = HashAlgo::parse(&t.hashing_algorithm).ok_or_else(|| {
            TasksError::Config(format!(
                "[DEFAULT] hashing_algorithm: {:?} is not supported (use sha512, sha384, sha256 or sha224)",
                t.hashing_algorithm
            ))
        })?;
        if t.executor != "taskflow" {
            return Err(TasksError::Config(format!(
                "[task] task_executor: only \"taskflow\" is accepted, not {:?}",
                t.executor
            )));
        }
        let file_dirs = list(config, "imaged_tasks", "import_file_dirs")
            .into_iter()
            .map(PathBuf::from)
            .collect();
        let f = &t.import_filtering;
        let filter = UrlFilter {
            allowed_schemes: f.allowed_schemes.clone(),
            disallowed_schemes: f.disallowed_schemes.clone(),
            allowed_hosts: f.allowed_hosts.clone(),
            disallowed_hosts: f.disallowed_hosts.clone(),
            allowed_ports: f.allowed_ports.clone(),
            disallowed_ports: f.disallowed_ports.clone(),
            file_dirs,
        };
        Ok(Settings {
            task_time_to_live: t.time_to_live,
            work_dir: t.work_dir.clone(),
            parallel: t.engine_mode != "serial",
            max_workers: t.max_workers.max(1),
            conversion_format: t.conversion_format.clone().filter(|s| !s.is_empty()),
            lease: t.lease.max(Duration::from_secs(1)),
            heartbeat_interval: t.heartbeat_interval.max(Duration::from_millis(100)),
            max_attempts: t.max_attempts.max(1),
            poll_interval: t.poll_interval,
            image_size_cap: t.image_size_cap,
            user_storage_quota: t.user_storage_quota,
            hashing_algorithm,
            disk_formats: t.disk_formats.clone(),
            container_formats: t.container_formats.clone(),
            vmdk_allowed_types: t.vmdk_allowed_types.clone(),
            require_image_format_match: t.require_image_format_match,
            gpt_safety_checks_nonfatal: t.gpt_safety_checks_nonfatal.clone(),
            image_import_plugins: t.image_import_plugins.clone(),
            conversion_output_format: if t.conversion_output_format.is_empty() {
                "raw".to_string()
            } else {
                t.conversion_output_format.clone()
            },
            inject_ignore_user_roles: t.inject_ignore_user_roles.clone(),
            inject_properties: t.inject_properties.clone(),
            image_property_quota: int(config, "DEFAULT", "image_property_quota", 128),
            image_tag_quota: int(config, "DEFAULT", "image_tag_quota", 128),
            allow_additional_image_properties: boolean(
                config,
                "DEFAULT",
                "allow_additional_image_properties",
                true,
            ),
            filter,
            connect_timeout: secs(int(config, "imaged_tasks", "connect_timeout", 30)),
            read_timeout: secs(int(config, "imaged_tasks", "read_timeout", 60)),
            user_agent: text(config, "imaged_tasks", "user_agent")
                .unwrap_or_else(|| DEFAULT_USER_AGENT.to_string()),
            shutdown_timeout: config.process().shutdown_timeout,
            api_import: crate::api_import::ApiImportSettings::from_config(config),
        })
    }

    /// Tasks this executor runs at once: 1 in serial mode, `max_workers` in
    /// parallel mode.
    pub fn concurrency(&self) -> usize {
        if self.parallel {
            self.max_workers as usize
        } else {
            1
        }
    }

    /// How often the idle loop looks for new tasks: the configured interval,
    /// but never more than a second, so a new task starts within one second.
    pub fn pickup_interval(&self) -> Duration {
        self.poll_interval
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(50))
    }
}
