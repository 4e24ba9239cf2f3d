//! The option registry: every option imaged knows, with its section, type, default, bounds,
//! help text, secrecy, reload behaviour and the daemons that use it.
//!
//! Two tables make up the registry. `REFERENCE` holds the options of the Image service
//! configuration reference, verbatim in name, section, default and help, in the order the
//! reference lists them. `EXTRA` holds options the daemons read that the reference edition
//! lacks (newer Glance and glance_store options, each with a note saying where it comes from)
//! and imaged's own options, which live in sections whose names start with `imaged` so that no
//! present or future Glance or oslo option can collide with them.
//!
//! Defaults are kept as the text an operator would write in a file; the loader parses them with
//! the same code as file values, and a test checks that every default parses under its type.

/// The daemons of the project; an option records which of them read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Daemon {
    /// The delayed-delete scrubber (replaces glance-scrubber).
    Scrubber,
    /// The image-cache pruner, cleaner and prefetcher.
    Cache,
    /// The import task executor.
    Tasks,
}

impl Daemon {
    /// Every daemon, in a stable order.
    pub const ALL: [Daemon; 3] = [Daemon::Scrubber, Daemon::Cache, Daemon::Tasks];

    /// The daemon's short name, also the name of its own config file (`<name>.conf`).
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Scrubber => "scrubber",
            Daemon::Cache => "cache",
            Daemon::Tasks => "tasks",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Daemon::Scrubber => 1,
            Daemon::Cache => 2,
            Daemon::Tasks => 4,
        }
    }
}

impl std::fmt::Display for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of daemons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Daemons(u8);

impl Daemons {
    /// No daemon: the option is accepted and parsed but not used by imaged.
    pub const NONE: Daemons = Daemons(0);
    /// The scrubber only.
    pub const SCRUBBER: Daemons = Daemons(1);
    /// The cache daemon only.
    pub const CACHE: Daemons = Daemons(2);
    /// The task executor only.
    pub const TASKS: Daemons = Daemons(4);
    /// Every daemon.
    pub const ALL: Daemons = Daemons(7);

    /// The union of two sets.
    pub const fn with(self, other: Daemons) -> Daemons {
        Daemons(self.0 | other.0)
    }

    /// Whether `daemon` is in the set.
    pub fn contains(self, daemon: Daemon) -> bool {
        self.0 & daemon.bit() != 0
    }

    /// Whether the set is empty ("not used by imaged").
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Human-readable list, e.g. `scrubber, tasks`, or `not used by imaged`.
    pub fn describe(self) -> String {
        if self.is_empty() {
            return "not used by imaged".to_owned();
        }
        Daemon::ALL
            .iter()
            .filter(|d| self.contains(**d))
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The value type of an option, with its bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// `true/false/yes/no/on/off/1/0`, any case.
    Bool,
    /// A signed integer with optional inclusive bounds.
    Int {
        /// Smallest accepted value.
        min: Option<i64>,
        /// Largest accepted value.
        max: Option<i64>,
    },
    /// A floating-point number with optional inclusive bounds.
    Float {
        /// Smallest accepted value.
        min: Option<f64>,
        /// Largest accepted value.
        max: Option<f64>,
    },
    /// A TCP/UDP port, 0–65535.
    Port,
    /// Free text.
    Str,
    /// One of a fixed set of words (compared case-insensitively, stored as listed).
    Choices(&'static [&'static str]),
    /// Comma-separated list of strings, items trimmed, optional `[...]` brackets.
    List,
    /// Comma-separated list of ports (1–65535).
    PortList,
    /// Repeated key: every occurrence adds one value.
    MultiStr,
    /// A byte size: digits with an optional unit `B`, `KB`, `MB`, `GB` or `TB` (powers of 1024,
    /// case-sensitive, no space), as Glance's `user_storage_quota`.
    Size,
    /// A filesystem path.
    Path,
    /// A URI whose scheme must be one of the listed ones.
    Uri(&'static [&'static str]),
    /// Comma-separated `key:value` pairs, as oslo's Dict type (`enabled_backends`).
    Dict,
    /// A schedule: a whole number of seconds between runs, or a cron expression.
    Schedule,
    /// `host:port` (IPv6 hosts in brackets).
    HostPort,
}

impl Kind {
    /// What a value of this type must look like, for error messages and the sample file.
    pub fn expected(&self) -> String {
        fn bounds<T: std::fmt::Display>(min: &Option<T>, max: &Option<T>) -> String {
            match (min, max) {
                (Some(a), Some(b)) => format!(" in {a}..={b}"),
                (Some(a), None) => format!(" >= {a}"),
                (None, Some(b)) => format!(" <= {b}"),
                (None, None) => String::new(),
            }
        }
        match self {
            Kind::Bool => "a boolean (true/false, yes/no, on/off, 1/0)".to_owned(),
            Kind::Int { min, max } => format!("an integer{}", bounds(min, max)),
            Kind::Float { min, max } => format!("a number{}", bounds(min, max)),
            Kind::Port => "a port number in 0..=65535".to_owned(),
            Kind::Str => "a string".to_owned(),
            Kind::Choices(c) => format!("one of: {}", c.join(", ")),
            Kind::List => "a comma-separated list".to_owned(),
            Kind::PortList => "a comma-separated list of ports in 1..=65535".to_owned(),
            Kind::MultiStr => "a string (the key may repeat)".to_owned(),
            Kind::Size => "a size: digits with optional unit B, KB, MB, GB or TB".to_owned(),
            Kind::Path => "a path".to_owned(),
            Kind::Uri(s) => format!("a URI with scheme {}", s.join(" or ")),
            Kind::Dict => "comma-separated key:value pairs".to_owned(),
            Kind::Schedule => "whole seconds, or a cron expression".to_owned(),
            Kind::HostPort => "host:port".to_owned(),
        }
    }

    /// Short type name for the sample file and the option table.
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Bool => "boolean",
            Kind::Int { .. } => "integer",
            Kind::Float { .. } => "float",
            Kind::Port => "port",
            Kind::Str => "string",
            Kind::Choices(_) => "choice",
            Kind::List => "list",
            Kind::PortList => "port list",
            Kind::MultiStr => "multi-valued",
            Kind::Size => "size",
            Kind::Path => "path",
            Kind::Uri(_) => "uri",
            Kind::Dict => "dict",
            Kind::Schedule => "schedule",
            Kind::HostPort => "host:port",
        }
    }
}

/// Where an option definition comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefSource {
    /// The Image service configuration reference (the project's spec).
    Reference,
    /// A Glance, glance_store or oslo option missing from the reference edition; the text
    /// names where Glance defines it.
    Glance(&'static str),
    /// An option of imaged itself.
    Imaged,
}

/// One option definition.
#[derive(Debug, Clone, Copy)]
pub struct OptionDef {
    /// Section (`DEFAULT` keeps its case; every other section is lower-case).
    pub section: &'static str,
    /// Option name (case-sensitive, as oslo.config).
    pub name: &'static str,
    /// Value type and bounds.
    pub kind: Kind,
    /// Default as file text; `None` means unset.
    pub default: Option<&'static str>,
    /// Help text.
    pub help: &'static str,
    /// Daemons that read the option; empty means "accepted, not used by imaged".
    pub used_by: Daemons,
    /// Whether a reload applies a new value without a restart.
    pub live: bool,
    /// Whether the value is a secret, masked in `config show`.
    pub secret: bool,
    /// Whether the value is a URL that may carry a password, masked in `config show`.
    pub url_credentials: bool,
    /// Unit of a numeric value (`seconds`, `bytes`, `hours`…), for documentation.
    pub unit: Option<&'static str>,
    /// Deprecation reason; setting the option draws a deprecation warning.
    pub deprecated: Option<&'static str>,
    /// A deprecated former `(section, name)` that still sets this option.
    pub alias: Option<(&'static str, &'static str)>,
    /// Extra remark for the documentation.
    pub note: Option<&'static str>,
    /// Where the definition comes from.
    pub source: DefSource,
    /// A glance_store option, also accepted in every multi-store backend section and in the
    /// reserved `os_glance_staging_store` / `os_glance_tasks_store` sections.
    pub store_opt: bool,
}

const fn opt(
    section: &'static str,
    name: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    help: &'static str,
) -> OptionDef {
    OptionDef {
        section,
        name,
        kind,
        default,
        help,
        used_by: Daemons::NONE,
        live: false,
        secret: false,
        url_credentials: false,
        unit: None,
        deprecated: None,
        alias: None,
        note: None,
        source: DefSource::Reference,
        store_opt: false,
    }
}

impl OptionDef {
    const fn used(mut self, by: Daemons) -> Self {
        self.used_by = by;
        self
    }
    const fn live(mut self) -> Self {
        self.live = true;
        self
    }
    const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }
    const fn url_credentials(mut self) -> Self {
        self.url_credentials = true;
        self
    }
    const fn unit(mut self, unit: &'static str) -> Self {
        self.unit = Some(unit);
        self
    }
    const fn deprecated(mut self, reason: &'static str) -> Self {
        self.deprecated = Some(reason);
        self
    }
    const fn alias(mut self, section: &'static str, name: &'static str) -> Self {
        self.alias = Some((section, name));
        self
    }
    const fn note(mut self, note: &'static str) -> Self {
        self.note = Some(note);
        self
    }
    const fn glance(mut self, defined_in: &'static str) -> Self {
        self.source = DefSource::Glance(defined_in);
        self
    }
    const fn imaged(mut self) -> Self {
        self.source = DefSource::Imaged;
        self
    }
    const fn store(mut self) -> Self {
        self.store_opt = true;
        self
    }

    /// Whether `daemon` reads this option (`None` = any daemon).
    pub fn used_by_daemon(&self, daemon: Option<Daemon>) -> bool {
        match daemon {
            Some(d) => self.used_by.contains(d),
            None => !self.used_by.is_empty(),
        }
    }
}

/// The import plugins `[image_import_opts] image_import_plugins` may name (Glance's
/// `glance.image_import.plugins` entry points); the task executor implements each of them.
pub const IMPORT_PLUGINS: [&str; 4] = [
    "image_decompression",
    "image_conversion",
    "inject_image_metadata",
    "no_op",
];

/// Prefix of the image properties only Glance itself may set (`GLANCE_RESERVED_NS`); the API
/// refuses them from users and import plugins never write them.
pub const RESERVED_PROPERTY_PREFIX: &str = "os_glance";

/// Every option, reference first, then the extra ones.
pub fn all() -> impl Iterator<Item = &'static OptionDef> {
    REFERENCE.iter().chain(EXTRA.iter())
}

/// The options of the configuration reference only.
pub fn reference() -> &'static [OptionDef] {
    REFERENCE
}

/// The options imaged defines beyond the reference.
pub fn extra() -> &'static [OptionDef] {
    EXTRA
}

/// Look an option up by section and name.
pub fn find(section: &str, name: &str) -> Option<&'static OptionDef> {
    all().find(|o| o.section == section && o.name == name)
}

/// Look an option up by a deprecated `(section, name)` alias.
pub fn find_alias(section: &str, name: &str) -> Option<&'static OptionDef> {
    all().find(|o| o.alias == Some((section, name)))
}

/// Every section that has at least one defined option: `DEFAULT` first, then the others in
/// the order their first option is defined.
pub fn sections() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = vec!["DEFAULT"];
    for o in all() {
        if !out.contains(&o.section) {
            out.push(o.section);
        }
    }
    out
}

/// Sections the daemons own: any section with an option some daemon uses. Unknown keys there
/// that look like a misspelling draw a warning.
pub fn is_owned_section(section: &str) -> bool {
    section.starts_with("imaged") || all().any(|o| o.section == section && !o.used_by.is_empty())
}

const S: Daemons = Daemons::SCRUBBER;
const C: Daemons = Daemons::CACHE;
const T: Daemons = Daemons::TASKS;
const A: Daemons = Daemons::ALL;

/// Every option of the configuration reference, in its order.
static REFERENCE: &[OptionDef] = &[
    opt("keystone_authtoken", "admin_password", Kind::Str, None, "Service user password.")
        .secret(),
    opt("keystone_authtoken", "admin_tenant_name", Kind::Str, Some("admin"), "Service tenant name."),
    opt("keystone_authtoken", "admin_token", Kind::Str, None, "This option is deprecated and may be removed in a future release. Single shared secret with the Keystone configuration used for bootstrapping a Keystone installation, or otherwise bypassing the normal authentication process. This option should not be used, use admin_user and admin_password instead.")
        .secret()
        .deprecated("Deprecated in the reference: use admin_user and admin_password instead."),
    opt("keystone_authtoken", "admin_user", Kind::Str, None, "Service username."),
    opt("keystone_authtoken", "auth_admin_prefix", Kind::Str, Some(""), "Prefix to prepend at the beginning of the path. Deprecated, use identity_uri.")
        .deprecated("Deprecated in the reference: use identity_uri."),
    opt("keystone_authtoken", "auth_host", Kind::Str, Some("127.0.0.1"), "Host providing the admin Identity API endpoint. Deprecated, use identity_uri.")
        .deprecated("Deprecated in the reference: use identity_uri."),
    opt("keystone_authtoken", "auth_port", Kind::Port, Some("35357"), "Port of the admin Identity API endpoint. Deprecated, use identity_uri.")
        .deprecated("Deprecated in the reference: use identity_uri."),
    opt("keystone_authtoken", "auth_protocol", Kind::Str, Some("https"), "Protocol of the admin Identity API endpoint. Deprecated, use identity_uri.")
        .deprecated("Deprecated in the reference: use identity_uri."),
    opt("keystone_authtoken", "auth_section", Kind::Str, None, "Config Section from which to load plugin specific options"),
    opt("keystone_authtoken", "auth_type", Kind::Str, None, "Authentication type to load"),
    opt("keystone_authtoken", "auth_uri", Kind::Str, None, "Complete public Identity API endpoint."),
    opt("keystone_authtoken", "auth_version", Kind::Str, None, "API version of the admin Identity API endpoint."),
    opt("keystone_authtoken", "cache", Kind::Str, None, "Env key for the swift cache."),
    opt("keystone_authtoken", "cafile", Kind::Str, None, "A PEM encoded Certificate Authority to use when verifying HTTPs connections. Defaults to system CAs."),
    opt("keystone_authtoken", "certfile", Kind::Str, None, "Required if identity server requires client certificate"),
    opt("keystone_authtoken", "check_revocations_for_cached", Kind::Bool, Some("False"), "If true, the revocation list will be checked for cached tokens. This requires that PKI tokens are configured on the identity server."),
    opt("keystone_authtoken", "delay_auth_decision", Kind::Bool, Some("False"), "Do not handle authorization requests within the middleware, but delegate the authorization decision to downstream WSGI components."),
    opt("keystone_authtoken", "enforce_token_bind", Kind::Str, Some("permissive"), "Used to control the use and type of token binding. Can be set to: “disabled” to not check token binding. “permissive” (default) to validate binding information if the bind type is of a form known to the server and ignore it if not. “strict” like “permissive” but if the bind type is unknown the token will be rejected. “required” any form of token binding is needed to be allowed. Finally the name of a binding method that must be present in tokens."),
    opt("keystone_authtoken", "hash_algorithms", Kind::List, Some("md5"), "Hash algorithms to use for hashing PKI tokens. This may be a single algorithm or multiple. The algorithms are those supported by Python standard hashlib.new(). The hashes will be tried in the order given, so put the preferred one first for performance. The result of the first hash will be stored in the cache. This will typically be set to multiple values only while migrating from a less secure algorithm to a more secure one. Once all the old tokens are expired this option should be set to a single value for better performance."),
    opt("keystone_authtoken", "http_connect_timeout", Kind::Int { min: None, max: None }, None, "Request timeout value for communicating with Identity API server."),
    opt("keystone_authtoken", "http_request_max_retries", Kind::Int { min: None, max: None }, Some("3"), "How many times are we trying to reconnect when communicating with Identity API Server."),
    opt("keystone_authtoken", "identity_uri", Kind::Str, None, "Complete admin Identity API endpoint. This should specify the unversioned root endpoint e.g. https://localhost:35357/"),
    opt("keystone_authtoken", "include_service_catalog", Kind::Bool, Some("True"), "(Optional) Indicate whether to set the X-Service-Catalog header. If False, middleware will not ask for service catalog on token validation and will not set the X-Service-Catalog header."),
    opt("keystone_authtoken", "insecure", Kind::Bool, Some("False"), "Verify HTTPS connections."),
    opt("keystone_authtoken", "keyfile", Kind::Str, None, "Required if identity server requires client certificate"),
    opt("keystone_authtoken", "memcache_pool_conn_get_timeout", Kind::Int { min: None, max: None }, Some("10"), "(Optional) Number of seconds that an operation will wait to get a memcached client connection from the pool."),
    opt("keystone_authtoken", "memcache_pool_dead_retry", Kind::Int { min: None, max: None }, Some("300"), "(Optional) Number of seconds memcached server is considered dead before it is tried again."),
    opt("keystone_authtoken", "memcache_pool_maxsize", Kind::Int { min: None, max: None }, Some("10"), "(Optional) Maximum total number of open connections to every memcached server."),
    opt("keystone_authtoken", "memcache_pool_socket_timeout", Kind::Int { min: None, max: None }, Some("3"), "(Optional) Socket timeout in seconds for communicating with a memcached server."),
    opt("keystone_authtoken", "memcache_pool_unused_timeout", Kind::Int { min: None, max: None }, Some("60"), "(Optional) Number of seconds a connection to memcached is held unused in the pool before it is closed."),
    opt("keystone_authtoken", "memcache_secret_key", Kind::Str, None, "(Optional, mandatory if memcache_security_strategy is defined) This string is used for key derivation.")
        .secret(),
    opt("keystone_authtoken", "memcache_security_strategy", Kind::Str, None, "(Optional) If defined, indicate whether token data should be authenticated or authenticated and encrypted. If MAC, token data is authenticated (with HMAC) in the cache. If ENCRYPT, token data is encrypted and authenticated in the cache. If the value is not one of these options or empty, auth_token will raise an exception on initialization."),
    opt("keystone_authtoken", "memcache_use_advanced_pool", Kind::Bool, Some("False"), "(Optional) Use the advanced (eventlet safe) memcached client pool. The advanced pool will only work under python 2.x."),
    opt("keystone_authtoken", "region_name", Kind::Str, None, "The region in which the identity server can be found."),
    opt("keystone_authtoken", "revocation_cache_time", Kind::Int { min: None, max: None }, Some("10"), "Determines the frequency at which the list of revoked tokens is retrieved from the Identity service (in seconds). A high number of revocation events combined with a low cache duration may significantly reduce performance."),
    opt("keystone_authtoken", "signing_dir", Kind::Str, None, "Directory used to cache files related to PKI tokens."),
    opt("keystone_authtoken", "token_cache_time", Kind::Int { min: None, max: None }, Some("300"), "In order to prevent excessive effort spent validating tokens, the middleware caches previously-seen tokens for a configurable duration (in seconds). Set to -1 to disable caching completely."),
    opt("DEFAULT", "allow_additional_image_properties", Kind::Bool, Some("True"), "Whether to allow users to specify image properties beyond what the image schema provides"),
    opt("DEFAULT", "api_limit_max", Kind::Int { min: None, max: None }, Some("1000"), "Maximum permissible number of items that could be returned by a request"),
    opt("DEFAULT", "backlog", Kind::Int { min: None, max: None }, Some("4096"), "The backlog value that will be used when creating the TCP listener socket."),
    opt("DEFAULT", "bind_host", Kind::Str, Some("0.0.0.0"), "Address to bind the server. Useful when selecting a particular network interface."),
    opt("DEFAULT", "bind_port", Kind::Port, None, "The port on which the server will listen."),
    opt("DEFAULT", "data_api", Kind::Str, Some("glance.db.sqlalchemy.api"), "Python module path of data access API"),
    opt("DEFAULT", "digest_algorithm", Kind::Str, Some("sha256"), "Digest algorithm which will be used for digital signature. Use the command “openssl list-message-digest-algorithms” to get the available algorithms supported by the version of OpenSSL on the platform. Examples are “sha1”, “sha256”, “sha512”, etc."),
    opt("DEFAULT", "executor_thread_pool_size", Kind::Int { min: None, max: None }, Some("64"), "Size of executor thread pool."),
    opt("DEFAULT", "image_location_quota", Kind::Int { min: None, max: None }, Some("10"), "Maximum number of locations allowed on an image. Negative values evaluate to unlimited."),
    opt("DEFAULT", "image_member_quota", Kind::Int { min: None, max: None }, Some("128"), "Maximum number of image members per image. Negative values evaluate to unlimited."),
    opt("DEFAULT", "image_property_quota", Kind::Int { min: None, max: None }, Some("128"), "Maximum number of properties allowed on an image. Negative values evaluate to unlimited."),
    opt("DEFAULT", "image_tag_quota", Kind::Int { min: None, max: None }, Some("128"), "Maximum number of tags allowed on an image. Negative values evaluate to unlimited."),
    opt("DEFAULT", "limit_param_default", Kind::Int { min: None, max: None }, Some("25"), "Default value for the number of items returned by a request if not specified explicitly in the request"),
    opt("DEFAULT", "memcached_servers", Kind::List, None, "Memcached servers or None for in process cache."),
    opt("DEFAULT", "metadata_encryption_key", Kind::Str, None, "AES key for encrypting store ‘location’ metadata. This includes, if used, Swift or S3 credentials. Should be set to a random string of length 16, 24 or 32 bytes")
        .used(Daemons::ALL)
        .secret()
        .note("Glance deprecated it for removal in 2024.2; location URLs stay encrypted with it until then."),
    opt("DEFAULT", "metadata_source_path", Kind::Str, Some("/etc/glance/metadefs/"), "Path to the directory where json metadata files are stored"),
    opt("DEFAULT", "property_protection_file", Kind::Str, None, "The location of the property protection file.This file contains the rules for property protections and the roles/policies associated with it. If this config value is not specified, by default, property protections won’t be enforced. If a value is specified and the file is not found, then the glance-api service will not start."),
    opt("DEFAULT", "property_protection_rule_format", Kind::Str, Some("roles"), "This config value indicates whether “roles” or “policies” are used in the property protection file."),
    opt("DEFAULT", "show_image_direct_url", Kind::Bool, Some("False"), "Whether to include the backend image storage location in image properties. Revealing storage location can be a security risk, so use this setting with caution!"),
    opt("DEFAULT", "user_storage_quota", Kind::Size, Some("0"), "Set a system wide quota for every user. This value is the total capacity that a user can use across all storage systems. A value of 0 means unlimited.Optional unit can be specified for the value. Accepted units are B, KB, MB, GB and TB representing Bytes, KiloBytes, MegaBytes, GigaBytes and TeraBytes respectively. If no unit is specified then Bytes is assumed. Note that there should not be any space between value and unit and units are case sensitive.")
        .used(Daemons::TASKS)
        .live(),
    opt("DEFAULT", "workers", Kind::Int { min: None, max: None }, None, "The number of child process workers that will be created to service requests. The default will be equal to the number of CPUs available."),
    opt("glance_store", "rootwrap_config", Kind::Str, Some("/etc/glance/rootwrap.conf"), "Path to the rootwrap configuration file to use for running commands as root."),
    opt("image_format", "container_formats", Kind::List, Some("ami, ari, aki, bare, ovf, ova, docker"), "Supported values for the ‘container_format’ image attribute")
        .used(Daemons::TASKS)
        .live(),
    opt("image_format", "disk_formats", Kind::List, Some("ami, ari, aki, vhd, vmdk, raw, qcow2, vdi, iso"), "Supported values for the ‘disk_format’ image attribute")
        .used(Daemons::TASKS)
        .live(),
    opt("keystone_authtoken", "memcached_servers", Kind::List, None, "Optionally specify a list of memcached server(s) to use for caching. If left undefined, tokens will instead be cached in-process."),
    opt("task", "task_executor", Kind::Choices(&["taskflow"]), Some("taskflow"), "Specifies which task executor to be used to run the task scripts.")
        .used(Daemons::TASKS),
    opt("task", "task_time_to_live", Kind::Int { min: None, max: None }, Some("48"), "Time in hours for which a task lives after, either succeeding or failing")
        .used(Daemons::TASKS)
        .live()
        .unit("hours")
        .alias("DEFAULT", "task_time_to_live"),
    opt("task", "work_dir", Kind::Path, None, "Work dir for asynchronous task operations. The directory set here will be used to operate over images - normally before they are imported in the destination store. When providing work dir, make sure enough space is provided for concurrent tasks to run efficiently without running out of space. A rough estimation can be done by multiplying the number of max_workers - or the N of workers running - by an average image size (e.g 500MB). The image size estimation should be done based on the average size in your deployment. Note that depending on the tasks running you may need to multiply this number by some factor depending on what the task does. For example, you may want to double the available size if image conversion is enabled. All this being said, remember these are just estimations and you should do them based on the worst case scenario and be prepared to act in case they were wrong.")
        .used(Daemons::TASKS),
    opt("cors", "allow_credentials", Kind::Bool, Some("True"), "Indicate that the actual request can include user credentials"),
    opt("cors", "allow_headers", Kind::List, Some("Content-Type, Cache-Control, Content-Language, Expires, Last-Modified, Pragma"), "Indicate which header field names may be used during the actual request."),
    opt("cors", "allow_methods", Kind::List, Some("GET, POST, PUT, DELETE, OPTIONS"), "Indicate which methods can be used during the actual request."),
    opt("cors", "allowed_origin", Kind::List, None, "Indicate whether this resource may be shared with the domain received in the requests “origin” header."),
    opt("cors", "expose_headers", Kind::List, Some("Content-Type, Cache-Control, Content-Language, Expires, Last-Modified, Pragma"), "Indicate which headers are safe to expose to the API. Defaults to HTTP Simple Headers."),
    opt("cors", "max_age", Kind::Int { min: None, max: None }, Some("3600"), "Maximum cache age of CORS preflight requests."),
    opt("cors.subdomain", "allow_credentials", Kind::Bool, Some("True"), "Indicate that the actual request can include user credentials"),
    opt("cors.subdomain", "allow_headers", Kind::List, Some("Content-Type, Cache-Control, Content-Language, Expires, Last-Modified, Pragma"), "Indicate which header field names may be used during the actual request."),
    opt("cors.subdomain", "allow_methods", Kind::List, Some("GET, POST, PUT, DELETE, OPTIONS"), "Indicate which methods can be used during the actual request."),
    opt("cors.subdomain", "allowed_origin", Kind::List, None, "Indicate whether this resource may be shared with the domain received in the requests “origin” header."),
    opt("cors.subdomain", "expose_headers", Kind::List, Some("Content-Type, Cache-Control, Content-Language, Expires, Last-Modified, Pragma"), "Indicate which headers are safe to expose to the API. Defaults to HTTP Simple Headers."),
    opt("cors.subdomain", "max_age", Kind::Int { min: None, max: None }, Some("3600"), "Maximum cache age of CORS preflight requests."),
    opt("database", "backend", Kind::Str, Some("sqlalchemy"), "The back end to use for the database."),
    opt("database", "connection", Kind::Str, None, "The SQLAlchemy connection string to use to connect to the database.")
        .used(Daemons::ALL)
        .url_credentials(),
    opt("database", "connection_debug", Kind::Int { min: Some(0), max: Some(100) }, Some("0"), "Verbosity of SQL debugging information: 0=None, 100=Everything.")
        .used(Daemons::ALL),
    opt("database", "connection_trace", Kind::Bool, Some("False"), "Add Python stack traces to SQL as comment strings."),
    opt("database", "db_inc_retry_interval", Kind::Bool, Some("True"), "If True, increases the interval between retries of a database operation up to db_max_retry_interval.")
        .used(Daemons::ALL),
    opt("database", "db_max_retries", Kind::Int { min: Some(-1), max: None }, Some("20"), "Maximum retries in case of connection error or deadlock error before error is raised. Set to -1 to specify an infinite retry count.")
        .used(Daemons::ALL),
    opt("database", "db_max_retry_interval", Kind::Int { min: None, max: None }, Some("10"), "If db_inc_retry_interval is set, the maximum seconds between retries of a database operation.")
        .used(Daemons::ALL),
    opt("database", "db_retry_interval", Kind::Int { min: None, max: None }, Some("1"), "Seconds between retries of a database transaction.")
        .used(Daemons::ALL),
    opt("database", "idle_timeout", Kind::Int { min: None, max: None }, Some("3600"), "Timeout before idle SQL connections are reaped.")
        .used(Daemons::ALL),
    opt("database", "max_overflow", Kind::Int { min: None, max: None }, Some("50"), "If set, use this value for max_overflow with SQLAlchemy."),
    opt("database", "max_pool_size", Kind::Int { min: Some(0), max: None }, None, "Maximum number of SQL connections to keep open in a pool.")
        .used(Daemons::ALL),
    opt("database", "max_retries", Kind::Int { min: Some(-1), max: None }, Some("10"), "Maximum number of database connection retries during startup. Set to -1 to specify an infinite retry count.")
        .used(Daemons::ALL),
    opt("database", "min_pool_size", Kind::Int { min: Some(0), max: None }, Some("1"), "Minimum number of SQL connections to keep open in a pool.")
        .used(Daemons::ALL),
    opt("database", "mysql_sql_mode", Kind::Str, Some("TRADITIONAL"), "The SQL mode to be used for MySQL sessions. This option, including the default, overrides any server-set SQL mode. To use whatever SQL mode is set by the server configuration, set this to no value. Example: mysql_sql_mode=")
        .used(Daemons::ALL),
    opt("database", "pool_timeout", Kind::Int { min: None, max: None }, None, "If set, use this value for pool_timeout with SQLAlchemy.")
        .used(Daemons::ALL),
    opt("database", "retry_interval", Kind::Int { min: None, max: None }, Some("10"), "Interval between retries of opening a SQL connection.")
        .used(Daemons::ALL),
    opt("database", "slave_connection", Kind::Str, None, "The SQLAlchemy connection string to use to connect to the slave database.")
        .url_credentials(),
    opt("database", "sqlite_db", Kind::Str, Some("oslo.sqlite"), "The file name to use with SQLite."),
    opt("database", "sqlite_synchronous", Kind::Bool, Some("True"), "If True, SQLite uses synchronous mode.")
        .used(Daemons::ALL),
    opt("database", "use_db_reconnect", Kind::Bool, Some("False"), "Enable the experimental use of database reconnect on connection lost."),
    opt("DEFAULT", "delayed_delete", Kind::Bool, Some("False"), "Turn on/off delayed delete.")
        .note("Only glance-api acts on it; the scrubber ignores it."),
    opt("DEFAULT", "image_cache_dir", Kind::Path, None, "Base directory that the image cache uses.")
        .used(Daemons::CACHE),
    opt("DEFAULT", "image_cache_driver", Kind::Choices(&["sqlite", "centralized_db", "xattr"]), Some("sqlite"), "The driver to use for image cache management.")
        .used(Daemons::CACHE)
        .note("Glance 2024.1 and later default to centralized_db; imaged keeps the reference default."),
    opt("DEFAULT", "image_cache_max_size", Kind::Int { min: Some(0), max: None }, Some("10737418240"), "The upper limit (the maximum size of accumulated cache in bytes) beyond which the cache pruner, if running, starts cleaning the image cache.")
        .used(Daemons::CACHE)
        .live()
        .unit("bytes"),
    opt("DEFAULT", "image_cache_sqlite_db", Kind::Str, Some("cache.db"), "The path to the sqlite file database that will be used for image cache management.")
        .used(Daemons::CACHE),
    opt("DEFAULT", "image_cache_stall_time", Kind::Int { min: Some(0), max: None }, Some("86400"), "The amount of time to let an incomplete image remain in the cache, before the cache cleaner, if running, will remove the incomplete image.")
        .used(Daemons::CACHE)
        .live()
        .unit("seconds"),
    opt("DEFAULT", "scrub_pool_size", Kind::Int { min: Some(1), max: None }, Some("1"), "The size of thread pool to be used for scrubbing images. The default is one, which signifies serial scrubbing. Any value above one indicates the max number of images that may be scrubbed in parallel.")
        .used(Daemons::SCRUBBER)
        .live(),
    opt("DEFAULT", "scrub_time", Kind::Int { min: Some(0), max: None }, Some("0"), "The amount of time in seconds to delay before performing a delete.")
        .used(Daemons::SCRUBBER)
        .live()
        .unit("seconds"),
    opt("DEFAULT", "debug", Kind::Bool, Some("False"), "If set to true, the logging level will be set to DEBUG instead of the default INFO level.")
        .used(Daemons::ALL)
        .live(),
    opt("DEFAULT", "default_log_levels", Kind::List, Some("amqp=WARN, amqplib=WARN, boto=WARN, qpid=WARN, sqlalchemy=WARN, suds=INFO, oslo.messaging=INFO, iso8601=WARN, requests.packages.urllib3.connectionpool=WARN, urllib3.connectionpool=WARN, websocket=WARN, requests.packages.urllib3.util.retry=WARN, urllib3.util.retry=WARN, keystonemiddleware=WARN, routes.middleware=WARN, stevedore=WARN, taskflow=WARN, keystoneauth=WARN, oslo.cache=INFO, dogpile.core.dogpile=INFO"), "List of package logging levels in logger=LEVEL pairs. This option is ignored if log_config_append is set.")
        .used(Daemons::ALL)
        .live(),
    opt("DEFAULT", "fatal_deprecations", Kind::Bool, Some("False"), "Enables or disables fatal status of deprecations.")
        .used(Daemons::ALL),
    opt("DEFAULT", "instance_format", Kind::Str, Some("[instance: %(uuid)s] "), "The format for an instance that is passed with the log message."),
    opt("DEFAULT", "instance_uuid_format", Kind::Str, Some("[instance: %(uuid)s] "), "The format for an instance UUID that is passed with the log message."),
    opt("DEFAULT", "log_config_append", Kind::Str, None, "The name of a logging configuration file. This file is appended to any existing logging configuration files. For details about logging configuration files, see the Python logging module documentation. Note that when logging configuration files are used then all logging configuration is set in the configuration file and other logging configuration options are ignored (for example, logging_context_format_string)."),
    opt("DEFAULT", "log_date_format", Kind::Str, Some("%Y-%m-%d %H:%M:%S"), "Defines the format string for %%(asctime)s in log records. Default: %(default)s . This option is ignored if log_config_append is set.")
        .used(Daemons::ALL),
    opt("DEFAULT", "log_dir", Kind::Path, None, "(Optional) The base directory used for relative log_file paths. This option is ignored if log_config_append is set.")
        .used(Daemons::ALL),
    opt("DEFAULT", "log_file", Kind::Path, None, "(Optional) Name of log file to send logging output to. If no default is set, logging will go to stderr as defined by use_stderr. This option is ignored if log_config_append is set.")
        .used(Daemons::ALL),
    opt("DEFAULT", "logging_context_format_string", Kind::Str, Some("%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s [%(request_id)s %(user_identity)s] %(instance)s%(message)s"), "Format string to use for log messages with context."),
    opt("DEFAULT", "logging_debug_format_suffix", Kind::Str, Some("%(funcName)s %(pathname)s:%(lineno)d"), "Additional data to append to log message when logging level for the message is DEBUG."),
    opt("DEFAULT", "logging_default_format_string", Kind::Str, Some("%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s [-] %(instance)s%(message)s"), "Format string to use for log messages when context is undefined."),
    opt("DEFAULT", "logging_exception_prefix", Kind::Str, Some("%(asctime)s.%(msecs)03d %(process)d ERROR %(name)s %(instance)s"), "Prefix each line of exception output with this format."),
    opt("DEFAULT", "logging_user_identity_format", Kind::Str, Some("%(user)s %(tenant)s %(domain)s %(user_domain)s %(project_domain)s"), "Defines the format string for %(user_identity)s that is used in logging_context_format_string."),
    opt("DEFAULT", "publish_errors", Kind::Bool, Some("False"), "Enables or disables publication of error events."),
    opt("DEFAULT", "syslog_log_facility", Kind::Str, Some("LOG_USER"), "Syslog facility to receive log lines. This option is ignored if log_config_append is set.")
        .used(Daemons::ALL),
    opt("DEFAULT", "use_stderr", Kind::Bool, Some("True"), "Log output to standard error. This option is ignored if log_config_append is set.")
        .used(Daemons::ALL),
    opt("DEFAULT", "use_syslog", Kind::Bool, Some("False"), "Use syslog for logging. Existing syslog format is DEPRECATED and will be changed later to honor RFC5424. This option is ignored if log_config_append is set.")
        .used(Daemons::ALL),
    opt("DEFAULT", "verbose", Kind::Bool, Some("True"), "DEPRECATED: If set to false, the logging level will be set to WARNING instead of the default INFO level.")
        .deprecated("Deprecated in the reference: use debug."),
    opt("DEFAULT", "watch_log_file", Kind::Bool, Some("False"), "Uses logging handler designed to watch file system. When log file is moved or removed this handler will open a new log file with specified path instantaneously. It makes sense only if log_file option is specified and Linux platform is used. This option is ignored if log_config_append is set.")
        .used(Daemons::ALL),
    opt("oslo_policy", "policy_default_rule", Kind::Str, Some("default"), "Default rule. Enforced when a requested rule is not found."),
    opt("oslo_policy", "policy_dirs", Kind::MultiStr, Some("policy.d"), "Directories where policy configuration files are stored. They can be relative to any directory in the search path defined by the config_dir option, or absolute paths. The file defined by policy_file must exist for these directories to be searched. Missing or empty directories are ignored."),
    opt("oslo_policy", "policy_file", Kind::Str, Some("policy.json"), "The JSON file that defines policies."),
    opt("profiler", "enabled", Kind::Bool, Some("False"), "If False fully disable profiling feature."),
    opt("profiler", "hmac_keys", Kind::Str, Some("SECRET_KEY"), "Secret key to use to sign Glance API and Glance Registry services tracing messages.")
        .secret(),
    opt("profiler", "trace_sqlalchemy", Kind::Bool, Some("False"), "If False doesn’t trace SQL requests."),
    opt("matchmaker_redis", "check_timeout", Kind::Int { min: None, max: None }, Some("20000"), "Time in ms to wait before the transaction is killed."),
    opt("matchmaker_redis", "host", Kind::Str, Some("127.0.0.1"), "Host to locate redis."),
    opt("matchmaker_redis", "password", Kind::Str, Some(""), "Password for Redis server (optional).")
        .secret(),
    opt("matchmaker_redis", "port", Kind::Port, Some("6379"), "Use this port to connect to redis host."),
    opt("matchmaker_redis", "sentinel_group_name", Kind::Str, Some("oslo-messaging-zeromq"), "Redis replica set name."),
    opt("matchmaker_redis", "sentinel_hosts", Kind::List, Some(""), "List of Redis Sentinel hosts (fault tolerance mode) e.g. [host:port, host1:port ... ]"),
    opt("matchmaker_redis", "socket_timeout", Kind::Int { min: None, max: None }, Some("1000"), "Timeout in ms on blocking socket operations"),
    opt("matchmaker_redis", "wait_timeout", Kind::Int { min: None, max: None }, Some("500"), "Time in ms to wait between connection attempts."),
    opt("DEFAULT", "admin_password", Kind::Str, None, "DEPRECATED: The administrators password. If “use_user_token” is not in effect, then admin credentials can be specified. This option was considered harmful and has been deprecated in M release. It will be removed in O release. For more information read OSSN-0060. Related functionality with uploading big images has been implemented with Keystone trusts support.")
        .secret()
        .deprecated("Deprecated in the reference (OSSN-0060): registry credentials."),
    opt("DEFAULT", "admin_tenant_name", Kind::Str, None, "DEPRECATED: The tenant name of the administrative user. If “use_user_token” is not in effect, then admin tenant name can be specified. This option was considered harmful and has been deprecated in M release. It will be removed in O release. For more information read OSSN-0060. Related functionality with uploading big images has been implemented with Keystone trusts support.")
        .deprecated("Deprecated in the reference (OSSN-0060): registry credentials."),
    opt("DEFAULT", "admin_user", Kind::Str, None, "DEPRECATED: The administrators user name. If “use_user_token” is not in effect, then admin credentials can be specified. This option was considered harmful and has been deprecated in M release. It will be removed in O release. For more information read OSSN-0060. Related functionality with uploading big images has been implemented with Keystone trusts support.")
        .deprecated("Deprecated in the reference (OSSN-0060): registry credentials."),
    opt("DEFAULT", "auth_region", Kind::Str, None, "DEPRECATED: The region for the authentication service. If “use_user_token” is not in effect and using keystone auth, then region name can be specified. This option was considered harmful and has been deprecated in M release. It will be removed in O release. For more information read OSSN-0060. Related functionality with uploading big images has been implemented with Keystone trusts support.")
        .deprecated("Deprecated in the reference (OSSN-0060): registry credentials."),
    opt("DEFAULT", "auth_strategy", Kind::Str, Some("noauth"), "DEPRECATED: The strategy to use for authentication. If “use_user_token” is not in effect, then auth strategy can be specified. This option was considered harmful and has been deprecated in M release. It will be removed in O release. For more information read OSSN-0060. Related functionality with uploading big images has been implemented with Keystone trusts support.")
        .deprecated("Deprecated in the reference (OSSN-0060): registry credentials."),
    opt("DEFAULT", "auth_url", Kind::Str, None, "DEPRECATED: The URL to the keystone service. If “use_user_token” is not in effect and using keystone auth, then URL of keystone can be specified. This option was considered harmful and has been deprecated in M release. It will be removed in O release. For more information read OSSN-0060. Related functionality with uploading big images has been implemented with Keystone trusts support.")
        .deprecated("Deprecated in the reference (OSSN-0060): registry credentials."),
    opt("DEFAULT", "registry_client_ca_file", Kind::Str, None, "The path to the certifying authority cert file to use in SSL connections to the registry server, if any. Alternately, you may set the GLANCE_CLIENT_CA_FILE environment variable to a filepath of the CA cert file."),
    opt("DEFAULT", "registry_client_cert_file", Kind::Str, None, "The path to the cert file to use in SSL connections to the registry server, if any. Alternately, you may set the GLANCE_CLIENT_CERT_FILE environment variable to a filepath of the CA cert file"),
    opt("DEFAULT", "registry_client_insecure", Kind::Bool, Some("False"), "When using SSL in connections to the registry server, do not require validation via a certifying authority. This is the registry’s equivalent of specifying –insecure on the command line using glanceclient for the API."),
    opt("DEFAULT", "registry_client_key_file", Kind::Str, None, "The path to the key file to use in SSL connections to the registry server, if any. Alternately, you may set the GLANCE_CLIENT_KEY_FILE environment variable to a filepath of the key file"),
    opt("DEFAULT", "registry_client_protocol", Kind::Str, Some("http"), "The protocol to use for communication with the registry server. Either http or https."),
    opt("DEFAULT", "registry_client_timeout", Kind::Int { min: None, max: None }, Some("600"), "The period of time, in seconds, that the API server will wait for a registry request to complete. A value of 0 implies no timeout."),
    opt("DEFAULT", "registry_host", Kind::Str, Some("0.0.0.0"), "Address to find the registry server."),
    opt("DEFAULT", "registry_port", Kind::Port, Some("9191"), "Port the registry server is listening on."),
    opt("DEFAULT", "args", Kind::List, None, "Arguments for the command"),
    opt("DEFAULT", "chunksize", Kind::Int { min: None, max: None }, Some("65536"), "Amount of data to transfer per HTTP write."),
    opt("DEFAULT", "command", Kind::Str, None, "Command to be given to replicator"),
    opt("DEFAULT", "dontreplicate", Kind::Str, Some("created_at date deleted_at location updated_at"), "List of fields to not replicate."),
    opt("DEFAULT", "mastertoken", Kind::Str, Some(""), "Pass in your authentication token if you have one. This is the token used for the master.")
        .secret(),
    opt("DEFAULT", "metaonly", Kind::Bool, Some("False"), "Only replicate metadata, not images."),
    opt("DEFAULT", "slavetoken", Kind::Str, Some(""), "Pass in your authentication token if you have one. This is the token used for the slave.")
        .secret(),
    opt("DEFAULT", "token", Kind::Str, Some(""), "Pass in your authentication token if you have one. If you use this option the same token is used for both the master and the slave.")
        .secret(),
    opt("DEFAULT", "wakeup_time", Kind::Int { min: Some(0), max: None }, Some("300"), "Loop time between checking for new items to schedule for delete.")
        .used(Daemons::SCRUBBER)
        .live()
        .unit("seconds"),
    opt("taskflow_executor", "conversion_format", Kind::Choices(&["qcow2", "raw", "vmdk"]), None, "The format to which images will be automatically converted. When using the RBD backend, this should be set to ‘raw’")
        .used(Daemons::TASKS)
        .live(),
    opt("taskflow_executor", "engine_mode", Kind::Choices(&["serial", "parallel"]), Some("parallel"), "The mode in which the engine will run. Can be ‘serial’ or ‘parallel’.")
        .used(Daemons::TASKS)
        .live(),
    opt("taskflow_executor", "max_workers", Kind::Int { min: Some(1), max: None }, Some("10"), "The number of parallel activities executed at the same time by the engine. The value can be greater than one when the engine mode is ‘parallel’.")
        .used(Daemons::TASKS)
        .live(),
    opt("DEFAULT", "pydev_worker_debug_host", Kind::Str, None, "The hostname/IP of the pydev process listening for debug connections"),
    opt("DEFAULT", "pydev_worker_debug_port", Kind::Port, Some("5678"), "The port on which a pydev process is listening for connections."),
];

/// Options the daemons need that the reference edition lacks, then imaged's own options.
static EXTRA: &[OptionDef] = &[
    // --- Glance options newer than the reference ---
    opt("DEFAULT", "enabled_backends", Kind::Dict, None,
        "Key:value pairs of store identifier and store type (e.g. fast:file, cheap:s3). Turns on multi-store mode; each identifier names a section holding that store's options.")
        .used(A).glance("glance/common/config.py"),
    opt("DEFAULT", "hashing_algorithm", Kind::Str, Some("sha512"),
        "Secure hash algorithm used to compute os_hash_value when image data is written.")
        .used(T).live().glance("glance/common/config.py"),
    opt("DEFAULT", "node_staging_uri", Kind::Uri(&["file"]), Some("file:///tmp/staging/"),
        "URI of the directory where image data is staged for interoperable import (single-store mode; multi-store uses [os_glance_staging_store]).")
        .used(T).glance("glance/common/config.py"),
    opt("DEFAULT", "image_size_cap", Kind::Int { min: Some(0), max: Some(i64::MAX) }, Some("1099511627776"),
        "Maximum size of an image in bytes; larger uploads and imports fail.")
        .used(T).live().unit("bytes").glance("glance/common/config.py"),
    opt("DEFAULT", "worker_self_reference_url", Kind::Str, None,
        "URL of this worker; the node key of the centralized_db cache driver and the target of import proxying.")
        .used(C.with(T)).glance("glance/common/config.py"),
    opt("DEFAULT", "enabled_import_methods", Kind::List, Some("glance-direct, web-download, copy-image"),
        "Import methods offered by the API and accepted by the executor.")
        .used(T).live().glance("glance/common/config.py"),
    opt("DEFAULT", "daemon", Kind::Bool, Some("False"),
        "Run the scrubber as a long-running daemon instead of a single pass (a command-line option of glance-scrubber that can also be set in a file).")
        .used(S).glance("glance/cmd/scrubber.py"),
    opt("glance_store", "stores", Kind::List, Some("file, http"),
        "Store types enabled in single-store mode.")
        .used(A).glance("glance_store/backend.py"),
    opt("glance_store", "default_store", Kind::Str, Some("file"),
        "Store type used for new image data in single-store mode.")
        .used(A).glance("glance_store/backend.py"),
    opt("glance_store", "default_backend", Kind::Str, None,
        "Store identifier from enabled_backends used for new image data in multi-store mode.")
        .used(A).glance("glance_store/multi_backend.py"),
    opt("glance_store", "filesystem_store_datadir", Kind::Path, Some("/var/lib/glance/images"),
        "Directory where the filesystem store writes image files.")
        .used(A).store().glance("glance_store/_drivers/filesystem.py"),
    opt("glance_store", "filesystem_store_datadirs", Kind::MultiStr, None,
        "Several filesystem store directories, each `path` or `path:priority`; repeat the key for each one.")
        .used(A).store().deprecated("Deprecated by glance_store: use one filesystem_store_datadir per backend.")
        .glance("glance_store/_drivers/filesystem.py"),
    opt("glance_store", "filesystem_store_file_perm", Kind::Int { min: Some(0), max: None }, Some("0"),
        "Octal-looking permission bits applied to new image files; 0 keeps the umask default.")
        .used(T).store().glance("glance_store/_drivers/filesystem.py"),
    opt("glance_store", "s3_store_host", Kind::Str, None,
        "Host (or URL) of the S3-compatible server.")
        .used(A).store().glance("glance_store/_drivers/s3.py"),
    opt("glance_store", "s3_store_region_name", Kind::Str, Some(""),
        "S3 region name.")
        .used(A).store().glance("glance_store/_drivers/s3.py"),
    opt("glance_store", "s3_store_access_key", Kind::Str, None,
        "S3 access key.")
        .used(A).store().secret().glance("glance_store/_drivers/s3.py"),
    opt("glance_store", "s3_store_secret_key", Kind::Str, None,
        "S3 secret key.")
        .used(A).store().secret().glance("glance_store/_drivers/s3.py"),
    opt("glance_store", "s3_store_bucket", Kind::Str, None,
        "S3 bucket holding image objects.")
        .used(A).store().glance("glance_store/_drivers/s3.py"),
    opt("glance_store", "s3_store_create_bucket_on_put", Kind::Bool, Some("False"),
        "Create the bucket when it does not exist at upload time.")
        .used(T).store().glance("glance_store/_drivers/s3.py"),
    opt("glance_store", "s3_store_bucket_url_format", Kind::Choices(&["auto", "virtual", "path"]), Some("auto"),
        "Addressing style of bucket URLs.")
        .used(A).store().glance("glance_store/_drivers/s3.py"),
    opt("glance_store", "s3_store_cacert", Kind::Str, Some(""),
        "CA bundle used to verify the S3 server's certificate.")
        .used(A).store().glance("glance_store/_drivers/s3.py"),
    opt("oslo_concurrency", "lock_path", Kind::Path, None,
        "Directory for external lock files; the cache drivers fall back to image_cache_dir when it is unset.")
        .used(C).glance("oslo.concurrency"),
    opt("image_format", "vmdk_allowed_types", Kind::List, Some("streamOptimized, monolithicSparse"),
        "VMDK create-types accepted during image conversion.")
        .used(T).live().glance("glance/common/config.py"),
    opt("image_format", "require_image_format_match", Kind::Bool, Some("True"),
        "Reject image data whose detected format differs from the image's disk_format.")
        .used(T).live().glance("glance/common/config.py"),
    opt("image_format", "gpt_safety_checks_nonfatal", Kind::List, Some(""),
        "GPT safety checks (mbr, gptmbr) whose failure only logs instead of rejecting the image.")
        .used(T).live().glance("glance/common/config.py"),
    opt("import_filtering_opts", "allowed_schemes", Kind::List, Some("http, https"),
        "URI schemes allowed for web-download; an empty list allows every scheme not disallowed.")
        .used(T).live().glance("glance/async_/flows/_internal_plugins/__init__.py"),
    opt("import_filtering_opts", "disallowed_schemes", Kind::List, Some(""),
        "URI schemes refused for web-download (ignored when allowed_schemes is set).")
        .used(T).live().glance("glance/async_/flows/_internal_plugins/__init__.py"),
    opt("import_filtering_opts", "allowed_hosts", Kind::List, Some(""),
        "Hosts allowed for web-download; an empty list allows every host not disallowed.")
        .used(T).live().glance("glance/async_/flows/_internal_plugins/__init__.py"),
    opt("import_filtering_opts", "disallowed_hosts", Kind::List, Some(""),
        "Hosts refused for web-download (ignored when allowed_hosts is set).")
        .used(T).live().glance("glance/async_/flows/_internal_plugins/__init__.py"),
    opt("import_filtering_opts", "allowed_ports", Kind::PortList, Some("80, 443"),
        "Ports allowed for web-download; an empty list allows every port not disallowed.")
        .used(T).live().glance("glance/async_/flows/_internal_plugins/__init__.py"),
    opt("import_filtering_opts", "disallowed_ports", Kind::PortList, Some(""),
        "Ports refused for web-download (ignored when allowed_ports is set).")
        .used(T).live().glance("glance/async_/flows/_internal_plugins/__init__.py"),
    opt("image_conversion", "output_format", Kind::Choices(&["raw", "qcow2", "vmdk"]), Some("raw"),
        "Disk format the image_conversion import plugin converts to.")
        .used(T).live().glance("glance/async_/flows/plugins/image_conversion.py"),
    opt("image_import_opts", "image_import_plugins", Kind::List, Some(""),
        "Import plugins run, in order, on the staged data of an interoperable import (not for copy-image): image_decompression, image_conversion, inject_image_metadata, no_op. Put image_decompression before image_conversion. An unknown name is a configuration error.")
        .used(T).live().glance("glance/async_/flows/api_image_import.py"),
    opt("image_import_opts", "max_parallel_stores", Kind::Int { min: Some(1), max: None }, Some("1"),
        "Stores an import copies to in parallel; 1 copies one store after another.")
        .used(T).live().glance("glance/async_/flows/api_image_import.py"),
    opt("inject_metadata_properties", "ignore_user_roles", Kind::List, Some("admin"),
        "Roles whose holders' imports do not get the inject_image_metadata properties.")
        .used(T).live().glance("glance/async_/flows/plugins/inject_image_metadata.py")
        .note("Glance's task input does not record the importing user's roles, so imaged injects into every import whose roles it cannot know."),
    opt("inject_metadata_properties", "inject", Kind::Dict, Some(""),
        "Properties the inject_image_metadata import plugin sets on imported images, as key:value pairs (e.g. inject = property1:value1,property2:value2). Keys starting with os_glance are reserved and refused.")
        .used(T).live().glance("glance/async_/flows/plugins/inject_image_metadata.py"),
    // --- imaged's own options ---
    opt("imaged", "metrics_bind", Kind::HostPort, None,
        "Address (host:port) of the HTTP endpoint serving Prometheus /metrics and /healthz in `run` mode; unset turns it off.")
        .used(A).imaged(),
    opt("imaged", "shutdown_timeout", Kind::Int { min: Some(0), max: None }, Some("10"),
        "Seconds a daemon waits for running work to finish after SIGTERM before it exits.")
        .used(A).live().unit("seconds").imaged(),
    opt("imaged", "log_format", Kind::Choices(&["text", "json"]), Some("text"),
        "Format of log lines: human-readable text or one JSON object per line.")
        .used(A).imaged(),
    opt("imaged_scrubber", "schedule", Kind::Schedule, None,
        "When scrub runs start: whole seconds between runs, or a cron expression; overrides [DEFAULT] wakeup_time when set.")
        .used(S).live().imaged(),
    opt("imaged_scrubber", "lease_seconds", Kind::Int { min: Some(1), max: None }, Some("300"),
        "How long a scrubber instance owns an image it claimed; another instance may take it over after that.")
        .used(S).live().unit("seconds").imaged(),
    opt("imaged_scrubber", "batch_size", Kind::Int { min: Some(1), max: None }, Some("100"),
        "Images read from the catalog per query while scrubbing.")
        .used(S).live().imaged(),
    opt("imaged_cache", "prune_schedule", Kind::Schedule, Some("600"),
        "When the pruner runs: whole seconds between runs, or a cron expression.")
        .used(C).live().imaged(),
    opt("imaged_cache", "clean_schedule", Kind::Schedule, Some("3600"),
        "When the cleaner runs: whole seconds between runs, or a cron expression.")
        .used(C).live().imaged(),
    opt("imaged_cache", "prefetch_schedule", Kind::Schedule, Some("300"),
        "When the prefetcher runs: whole seconds between runs, or a cron expression.")
        .used(C).live().imaged(),
    opt("imaged_cache", "low_water_mark", Kind::Size, None,
        "Size the pruner shrinks the cache to once it exceeds image_cache_max_size; unset means image_cache_max_size itself.")
        .used(C).live().unit("bytes").imaged(),
    opt("imaged_cache", "orphan_grace", Kind::Int { min: Some(0), max: None }, Some("600"),
        "Seconds an image file without an index row is left alone (it may be a commit still in flight); after that prune adopts it and clean removes it. Also how long a partial download in incomplete/ that no process holds open may sit unwritten before it counts as abandoned.")
        .used(C).live().unit("seconds").imaged(),
    opt("imaged_cache", "min_free_disk", Kind::Size, None,
        "Free space to keep on the cache filesystem; the pruner evicts further while less is free. Unset turns the check off.")
        .used(C).live().unit("bytes").imaged(),
    opt("imaged_tasks", "lease_seconds", Kind::Int { min: Some(1), max: None }, Some("300"),
        "How long a claimed task stays owned without a heartbeat before another executor may reclaim it.")
        .used(T).live().unit("seconds").imaged(),
    opt("imaged_tasks", "heartbeat_interval", Kind::Int { min: Some(1), max: None }, Some("60"),
        "Seconds between heartbeats of a running task (Glance uses 60).")
        .used(T).live().unit("seconds").imaged(),
    opt("imaged_tasks", "max_attempts", Kind::Int { min: Some(1), max: None }, Some("3"),
        "Claims of one task before it is failed for good after repeated crashes or lease expiry.")
        .used(T).live().imaged(),
    opt("imaged_tasks", "poll_interval", Kind::Int { min: Some(1), max: None }, Some("5"),
        "Seconds between looks for new pending tasks when idle.")
        .used(T).live().unit("seconds").imaged(),
    opt("imaged_tasks", "import_file_dirs", Kind::List, Some(""),
        "Directories import tasks may read file:// sources from (checked after resolving symlinks); empty refuses every file:// source.")
        .used(T).live().imaged(),
    opt("imaged_tasks", "connect_timeout", Kind::Int { min: Some(1), max: None }, Some("30"),
        "Seconds an import download may take to connect to its server.")
        .used(T).live().unit("seconds").imaged(),
    opt("imaged_tasks", "read_timeout", Kind::Int { min: Some(1), max: None }, Some("60"),
        "Seconds an import download may wait for more data before it fails.")
        .used(T).live().unit("seconds").imaged(),
    opt("imaged_tasks", "user_agent", Kind::Str, None,
        "User-Agent header of import downloads; unset sends imaged-tasks/<version>.")
        .used(T).live().imaged(),
];
