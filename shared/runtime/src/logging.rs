//! Logging set-up honouring Glance's (oslo.log) logging options.
//!
//! [`LoggingOptions`] mirrors the options an operator already has in
//! `glance-*.conf`; [`init`] turns them into a global `tracing` subscriber
//! and returns a [`LogHandle`] that changes levels on reload.
//!
//! # Where log lines go
//!
//! * `log_file` (joined to `log_dir` when relative): appended to. With
//!   `watch_log_file`, the path is checked before every line and reopened
//!   when the file was moved or removed (logrotate without
//!   `copytruncate`), like Python's `WatchedFileHandler`.
//! * `use_syslog`: RFC 3164 datagrams to `/dev/log` with the facility from
//!   `syslog_log_facility` (`LOG_USER`, `LOG_LOCAL0`…`LOG_LOCAL7`, `daemon`,
//!   …; case-insensitive, `LOG_` prefix optional).
//! * journald: used natively when [`JournaldMode::Auto`] finds stderr
//!   connected to the journal (`JOURNAL_STREAM` matches stderr) and none of
//!   `use_stderr`, `log_file` or `use_syslog` was set, or always with
//!   [`JournaldMode::Always`] (oslo's `use_journal`). If the journald
//!   socket cannot be opened, stderr is used instead.
//! * stderr: when `use_stderr` is `Some(true)`, and as the fallback when no
//!   other destination was chosen, so log lines are never silently lost.
//!
//! # Format
//!
//! Text lines follow oslo's default shape:
//! `<date>.<msec> <pid> <LEVEL> <target> <message> <fields>`, the date
//! formatted with `log_date_format`. Python's `strftime` directives are the
//! same as chrono's except `%f` (microseconds in Python), which is
//! translated. `json = true` (oslo's `use_json`) writes one JSON object per
//! line with `timestamp`, `level`, `target`, `message` and the event's
//! fields. Syslog and journald lines carry no date or pid: the receiver adds
//! them.
//!
//! # Levels
//!
//! `debug` selects DEBUG instead of INFO. `default_log_levels` entries
//! (`logger=LEVEL`) become `tracing` filter directives when the logger means
//! something here: names of our own crates (`imaged_catalog=WARN`, dots or
//! `::` as separators), a few Rust crates by name (`sqlx`, `reqwest`,
//! `hyper`, …), and Python libraries whose role a Rust crate has taken
//! (`sqlalchemy` → `sqlx`, `urllib3`/`requests` → `reqwest` + `hyper`,
//! `boto`/`botocore` → `object_store`). Other Python logger names (`amqp`,
//! `stevedore`, …) are ignored and reported through
//! [`LogHandle::ignored_levels`]. `RUST_LOG`-style fine-tuning is not read
//! from the environment: the configuration file is the one source.
//!
//! `publish_errors` is accepted and ignored: it publishes error records to
//! an oslo.messaging notifier, which the daemons do not use.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::format::StrftimeItems;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Layer, Layered, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Errors setting up or changing logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The log file could not be opened for appending.
    #[error("cannot open log file {path}: {source}")]
    OpenLogFile {
        /// The resolved log file path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The syslog socket could not be reached.
    #[error("cannot reach syslog socket {path}: {source}")]
    Syslog {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `syslog_log_facility` names no known facility.
    #[error("unknown syslog facility {0:?}")]
    Facility(String),
    /// `log_date_format` is not a valid strftime format.
    #[error("invalid log_date_format {0:?}")]
    DateFormat(String),
    /// A `default_log_levels` entry is not `logger=LEVEL` with a known level.
    #[error("invalid default_log_levels entry {0:?}: expected logger=LEVEL")]
    Level(String),
    /// The filter directives could not be built.
    #[error("invalid log filter {0:?}: {1}")]
    Filter(String, String),
    /// A global subscriber was already installed.
    #[error("logging is already initialised: {0}")]
    AlreadyInitialised(String),
    /// The level could not be changed on the live subscriber.
    #[error("cannot change log level: {0}")]
    Reload(String),
}

/// Whether to log natively to journald.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JournaldMode {
    /// Use journald when started by systemd with stderr connected to the
    /// journal and no explicit `use_stderr` / `log_file`.
    #[default]
    Auto,
    /// Always log to journald (oslo's `use_journal = True`).
    Always,
    /// Never log to journald natively.
    Never,
}

/// The logging options of the Glance configuration files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingOptions {
    /// DEBUG instead of INFO.
    pub debug: bool,
    /// File to append log lines to.
    pub log_file: Option<PathBuf>,
    /// Base directory for a relative `log_file`.
    pub log_dir: Option<PathBuf>,
    /// Log to stderr; `None` when the option was not set in any file.
    pub use_stderr: Option<bool>,
    /// Log to syslog.
    pub use_syslog: bool,
    /// Syslog facility name (default `LOG_USER`).
    pub syslog_log_facility: String,
    /// strftime format of the date in text lines (default `%Y-%m-%d %H:%M:%S`).
    pub log_date_format: String,
    /// `logger=LEVEL` pairs.
    pub default_log_levels: Vec<String>,
    /// Reopen the log file when it is moved or removed.
    pub watch_log_file: bool,
    /// Accepted for compatibility; has no effect (see module docs).
    pub publish_errors: bool,
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Native journald output.
    pub journald: JournaldMode,
    /// Datagram socket of the local syslog daemon (default `/dev/log`).
    pub syslog_socket: PathBuf,
}

impl Default for LoggingOptions {
    /// oslo.log's defaults, with `use_stderr` unset.
    fn default() -> Self {
        Self {
            debug: false,
            log_file: None,
            log_dir: None,
            use_stderr: None,
            use_syslog: false,
            syslog_log_facility: "LOG_USER".to_string(),
            log_date_format: "%Y-%m-%d %H:%M:%S".to_string(),
            default_log_levels: Vec::new(),
            watch_log_file: false,
            publish_errors: false,
            json: false,
            journald: JournaldMode::Auto,
            syslog_socket: PathBuf::from("/dev/log"),
        }
    }
}

impl LoggingOptions {
    /// The log file path with `log_dir` applied, if a log file is set.
    pub fn resolved_log_file(&self) -> Option<PathBuf> {
        let file = self.log_file.as_ref()?;
        Some(match &self.log_dir {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file.clone(),
        })
    }
}

type Base = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type BoxedLayer = Box<dyn Layer<Base> + Send + Sync>;

/// Changes the live log level; returned by [`init`] and [`build`].
#[derive(Debug, Clone)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    ignored: Arc<Mutex<Vec<String>>>,
    destinations: Vec<Destination>,
}

/// Where log lines are being written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Standard error.
    Stderr,
    /// A file.
    File(PathBuf),
    /// The syslog socket.
    Syslog(PathBuf),
    /// journald's native protocol.
    Journald,
}

impl LogHandle {
    /// Applies new `debug` / `default_log_levels` values to the running
    /// subscriber (on reload).
    pub fn set_levels(
        &self,
        debug: bool,
        default_log_levels: &[String],
    ) -> Result<(), LoggingError> {
        let (directives, ignored) = filter_directives(debug, default_log_levels)?;
        let filter = parse_filter(&directives)?;
        self.filter
            .reload(filter)
            .map_err(|e| LoggingError::Reload(e.to_string()))?;
        *lock(&self.ignored) = ignored;
        Ok(())
    }

    /// `default_log_levels` entries that name no logger used here.
    pub fn ignored_levels(&self) -> Vec<String> {
        lock(&self.ignored).clone()
    }

    /// The destinations chosen at start-up.
    pub fn destinations(&self) -> &[Destination] {
        &self.destinations
    }
}

/// Builds the subscriber for `options` and installs it as the global default
/// (also capturing records from crates that use the `log` facade).
pub fn init(options: &LoggingOptions, daemon_name: &str) -> Result<LogHandle, LoggingError> {
    let (subscriber, handle) = build(options, daemon_name)?;
    subscriber
        .try_init()
        .map_err(|e| LoggingError::AlreadyInitialised(e.to_string()))?;
    Ok(handle)
}

/// Builds the subscriber for `options` without installing it (tests install
/// it for one scope with `tracing::subscriber::with_default`).
pub fn build(
    options: &LoggingOptions,
    daemon_name: &str,
) -> Result<(Box<dyn Subscriber + Send + Sync>, LogHandle), LoggingError> {
    let (directives, ignored) = filter_directives(options.debug, &options.default_log_levels)?;
    let (filter, filter_handle) = reload::Layer::new(parse_filter(&directives)?);
    let date = DateFormat::new(&options.log_date_format)?;
    let pid = std::process::id();

    let mut layers: Vec<BoxedLayer> = Vec::new();
    let mut destinations = Vec::new();

    if let Some(path) = options.resolved_log_file() {
        let file = LogFile::open(&path, options.watch_log_file)?;
        layers.push(text_or_json(options.json, &date, pid, true, file));
        destinations.push(Destination::File(path));
    }
    if options.use_syslog {
        let facility = syslog_facility(&options.syslog_log_facility)?;
        let writer = SyslogWriter::new(&options.syslog_socket, facility, daemon_name)?;
        layers.push(text_or_json(options.json, &date, pid, false, writer));
        destinations.push(Destination::Syslog(options.syslog_socket.clone()));
    }
    let want_journald = match options.journald {
        JournaldMode::Always => true,
        JournaldMode::Never => false,
        JournaldMode::Auto => {
            // With use_syslog the journal already receives the lines through
            // /dev/log; logging natively as well would duplicate them.
            options.use_stderr.is_none()
                && options.log_file.is_none()
                && !options.use_syslog
                && stderr_is_journal()
        }
    };
    let mut want_stderr = options.use_stderr == Some(true);
    if want_journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                layers.push(Box::new(
                    layer.with_syslog_identifier(daemon_name.to_string()),
                ));
                destinations.push(Destination::Journald);
            }
            Err(error) => {
                eprintln!("{daemon_name}: journald unavailable ({error}); logging to stderr");
                want_stderr = true;
            }
        }
    }
    if want_stderr || destinations.is_empty() {
        layers.push(text_or_json(options.json, &date, pid, true, io::stderr));
        destinations.push(Destination::Stderr);
    }

    let subscriber = Registry::default().with(filter).with(layers);
    let handle = LogHandle {
        filter: filter_handle,
        ignored: Arc::new(Mutex::new(ignored)),
        destinations,
    };
    Ok((Box::new(subscriber), handle))
}

fn text_or_json<W>(
    json: bool,
    date: &DateFormat,
    pid: u32,
    with_header: bool,
    writer: W,
) -> BoxedLayer
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_timer(date.clone())
            .with_writer(writer)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .event_format(OsloFormat {
                date: date.clone(),
                pid,
                with_header,
            })
            .with_writer(writer)
            .boxed()
    }
}

fn parse_filter(directives: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| LoggingError::Filter(directives.to_string(), e.to_string()))
}

/// Rust crates whose targets may be named directly in `default_log_levels`.
const RUST_TARGETS: &[&str] = &[
    "sqlx",
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "object_store",
    "tokio",
    "notify",
    "tower",
];

/// Python loggers whose job a Rust crate does here.
const PYTHON_ALIASES: &[(&str, &[&str])] = &[
    ("sqlalchemy", &["sqlx"]),
    ("urllib3", &["reqwest", "hyper", "hyper_util"]),
    ("requests", &["reqwest", "hyper", "hyper_util"]),
    ("boto", &["object_store"]),
    ("boto3", &["object_store"]),
    ("botocore", &["object_store"]),
];

/// Turns `debug` and `default_log_levels` into an `EnvFilter` directive
/// string; also returns the entries that were ignored.
pub fn filter_directives(
    debug: bool,
    default_log_levels: &[String],
) -> Result<(String, Vec<String>), LoggingError> {
    let mut directives: Vec<(String, &'static str)> = Vec::new();
    let mut ignored = Vec::new();
    for entry in default_log_levels {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (logger, level) = entry
            .split_once('=')
            .ok_or_else(|| LoggingError::Level(entry.to_string()))?;
        let level =
            python_level(level.trim()).ok_or_else(|| LoggingError::Level(entry.to_string()))?;
        let logger = logger.trim();
        let targets = rust_targets_for(logger);
        if targets.is_empty() {
            ignored.push(entry.to_string());
        }
        for target in targets {
            // A later entry for the same target wins, as in oslo.
            directives.retain(|(t, _)| *t != target);
            directives.push((target, level));
        }
    }
    let mut out = String::from(if debug { "debug" } else { "info" });
    for (target, level) in directives {
        let _ = write!(out, ",{target}={level}");
    }
    Ok((out, ignored))
}

fn rust_targets_for(logger: &str) -> Vec<String> {
    let normalised = logger.replace("::", ".");
    let root = normalised.split('.').next().unwrap_or_default();
    if root.is_empty() {
        return Vec::new();
    }
    if root == "imaged" || root.starts_with("imaged_") || RUST_TARGETS.contains(&root) {
        return vec![normalised.replace('.', "::")];
    }
    let python_root = if root == "requests" && normalised.contains("urllib3") {
        "urllib3"
    } else {
        root
    };
    PYTHON_ALIASES
        .iter()
        .find(|(name, _)| *name == python_root)
        .map(|(_, targets)| targets.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

fn python_level(level: &str) -> Option<&'static str> {
    Some(match level.to_ascii_uppercase().as_str() {
        "CRITICAL" | "FATAL" | "ERROR" => "error",
        "WARNING" | "WARN" => "warn",
        "INFO" => "info",
        "DEBUG" => "debug",
        "TRACE" | "NOTSET" => "trace",
        _ => return None,
    })
}

/// Maps an oslo `syslog_log_facility` value to its numeric facility.
pub fn syslog_facility(name: &str) -> Result<u8, LoggingError> {
    let lower = name.trim().to_ascii_lowercase();
    let bare = lower.strip_prefix("log_").unwrap_or(&lower);
    let code = match bare {
        "kern" => 0,
        "user" => 1,
        "mail" => 2,
        "daemon" => 3,
        "auth" | "security" => 4,
        "syslog" => 5,
        "lpr" => 6,
        "news" => 7,
        "uucp" => 8,
        "cron" => 9,
        "authpriv" => 10,
        "ftp" => 11,
        other => match other
            .strip_prefix("local")
            .and_then(|n| n.parse::<u8>().ok())
        {
            Some(n) if n <= 7 => 16 + n,
            _ => return Err(LoggingError::Facility(name.to_string())),
        },
    };
    Ok(code)
}

/// Whether stderr is the journal stream systemd connected (`JOURNAL_STREAM`
/// holds `device:inode` of that stream).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value
        .to_str()
        .and_then(|v| v.split_once(':'))
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
    else {
        return false;
    };
    use std::os::fd::AsFd;
    let Ok(fd) = io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    File::from(fd)
        .metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// A strftime date format validated once at start-up.
#[derive(Debug, Clone)]
struct DateFormat(Arc<str>);

impl DateFormat {
    fn new(python: &str) -> Result<Self, LoggingError> {
        let translated = python_strftime_to_chrono(python);
        if StrftimeItems::new(&translated).parse().is_err() {
            return Err(LoggingError::DateFormat(python.to_string()));
        }
        Ok(Self(translated.into()))
    }

    fn write_now(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let now = chrono::Local::now();
        write!(
            w,
            "{}.{:03}",
            now.format(&self.0),
            now.timestamp_subsec_millis()
        )
    }
}

impl FormatTime for DateFormat {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        write!(w, "{}", chrono::Local::now().format(&self.0))
    }
}

/// Python's `%f` is microseconds; chrono's needs an explicit width for that.
fn python_strftime_to_chrono(format: &str) -> String {
    let mut out = String::with_capacity(format.len());
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('f') => out.push_str("%6f"),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// oslo-shaped text lines.
struct OsloFormat {
    date: DateFormat,
    pid: u32,
    with_header: bool,
}

impl<S, N> FormatEvent<S, N> for OsloFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        if self.with_header {
            self.date.write_now(&mut writer)?;
            write!(writer, " {} ", self.pid)?;
        }
        write!(writer, "{} {} ", level_name(*meta.level()), meta.target())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a logging lock must not silence logging forever.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An append-only log file that can follow rotation.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    watch: bool,
    state: Mutex<OpenFile>,
}

#[derive(Debug)]
struct OpenFile {
    file: File,
    id: (u64, u64),
}

impl LogFile {
    fn open(path: &Path, watch: bool) -> Result<Self, LoggingError> {
        let state = Self::open_file(path).map_err(|source| LoggingError::OpenLogFile {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            watch,
            state: Mutex::new(state),
        })
    }

    fn open_file(path: &Path) -> io::Result<OpenFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let meta = file.metadata()?;
        Ok(OpenFile {
            file,
            id: (meta.dev(), meta.ino()),
        })
    }
}

impl Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = lock(&self.state);
        if self.watch {
            // One stat per line, as Python's WatchedFileHandler does: simple
            // and always right, whatever tool rotated the file.
            let current = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()));
            if current.ok() != Some(state.id) {
                *state = LogFile::open_file(&self.path)?;
            }
        }
        state.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        lock(&self.state).file.flush()
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = &'a LogFile;
    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Sends each log line as one RFC 3164 datagram to the syslog socket.
#[derive(Debug)]
struct SyslogWriter {
    socket: UnixDatagram,
    path: PathBuf,
    facility: u8,
    tag: String,
}

impl SyslogWriter {
    fn new(path: &Path, facility: u8, ident: &str) -> Result<Self, LoggingError> {
        let err = |source| LoggingError::Syslog {
            path: path.to_path_buf(),
            source,
        };
        let socket = UnixDatagram::unbound().map_err(err)?;
        // Probe once so a missing syslog daemon is reported at start-up;
        // later sends reconnect implicitly because each names the path.
        socket.connect(path).map_err(err)?;
        let socket = UnixDatagram::unbound().map_err(err)?;
        Ok(Self {
            socket,
            path: path.to_path_buf(),
            facility,
            tag: format!("{ident}[{}]", std::process::id()),
        })
    }

    fn send(&self, severity: u8, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let priority = u16::from(self.facility) * 8 + u16::from(severity);
        let stamp = chrono::Local::now().format("%b %e %H:%M:%S");
        let mut datagram = format!("<{priority}>{stamp} {}: ", self.tag).into_bytes();
        datagram.extend_from_slice(line);
        // Nowhere to report a failed log write; dropping the line is the
        // only option that keeps the daemon running.
        let _ = self.socket.send_to(&datagram, &self.path);
    }
}

/// Collects one formatted event and sends it when dropped.
struct SyslogLine<'a> {
    writer: &'a SyslogWriter,
    severity: u8,
    buf: Vec<u8>,
}

impl Write for SyslogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.writer.send(self.severity, &self.buf);
        }
    }
}

impl<'a> MakeWriter<'a> for SyslogWriter {
    type Writer = SyslogLine<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        SyslogLine {
            writer: self,
            severity: 6,
            buf: Vec::new(),
        }
    }
    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        let severity = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        SyslogLine {
            writer: self,
            severity,
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn glance_defaults_map_to_rust_targets_and_report_the_rest() {
        let (d, ignored) = filter_directives(
            false,
            &levels(&[
                "amqp=WARN",
                "sqlalchemy=WARN",
                "boto=WARN",
                "requests.packages.urllib3.connectionpool=WARN",
                "urllib3.util.retry=WARN",
                "stevedore=WARN",
                "imaged_catalog=ERROR",
                "imaged.store=DEBUG",
                "sqlx::query=INFO",
            ]),
        )
        .unwrap();
        assert_eq!(
            d,
            "info,sqlx=warn,object_store=warn,reqwest=warn,hyper=warn,hyper_util=warn,\
             imaged_catalog=error,imaged::store=debug,sqlx::query=info"
        );
        assert_eq!(ignored, levels(&["amqp=WARN", "stevedore=WARN"]));
    }

    #[test]
    fn debug_raises_the_base_level_and_later_entries_win() {
        let (d, _) = filter_directives(true, &levels(&["sqlx=WARN", "sqlx=critical"])).unwrap();
        assert_eq!(d, "debug,sqlx=error");
    }

    #[test]
    fn malformed_level_entries_are_errors() {
        assert!(matches!(
            filter_directives(false, &levels(&["sqlx"])),
            Err(LoggingError::Level(_))
        ));
        assert!(matches!(
            filter_directives(false, &levels(&["sqlx=LOUD"])),
            Err(LoggingError::Level(_))
        ));
    }

    #[test]
    fn syslog_facilities_follow_oslo_names() {
        assert_eq!(syslog_facility("LOG_USER").unwrap(), 1);
        assert_eq!(syslog_facility("user").unwrap(), 1);
        assert_eq!(syslog_facility("LOG_LOCAL0").unwrap(), 16);
        assert_eq!(syslog_facility("local7").unwrap(), 23);
        assert_eq!(syslog_facility("LOG_DAEMON").unwrap(), 3);
        assert_eq!(syslog_facility("authpriv").unwrap(), 10);
        assert!(syslog_facility("LOG_LOCAL8").is_err());
        assert!(syslog_facility("nonsense").is_err());
    }

    #[test]
    fn python_date_formats_translate() {
        assert_eq!(
            python_strftime_to_chrono("%Y-%m-%d %H:%M:%S"),
            "%Y-%m-%d %H:%M:%S"
        );
        assert_eq!(python_strftime_to_chrono("%H:%M:%S.%f"), "%H:%M:%S.%6f");
        assert_eq!(python_strftime_to_chrono("100%%"), "100%%");
        assert!(DateFormat::new("%Y-%m-%d").is_ok());
        assert!(DateFormat::new("%Q").is_err());
    }

    #[test]
    fn relative_log_file_joins_log_dir() {
        let opts = LoggingOptions {
            log_file: Some("scrubber.log".into()),
            log_dir: Some("/var/log/glance".into()),
            ..LoggingOptions::default()
        };
        assert_eq!(
            opts.resolved_log_file().unwrap(),
            PathBuf::from("/var/log/glance/scrubber.log")
        );
        let abs = LoggingOptions {
            log_file: Some("/tmp/x.log".into()),
            ..opts
        };
        assert_eq!(
            abs.resolved_log_file().unwrap(),
            PathBuf::from("/tmp/x.log")
        );
    }

    #[test]
    fn journal_stream_not_matching_stderr_is_ignored() {
        // The test harness's stderr is not a journal stream, whatever the
        // environment says.
        if std::env::var_os("JOURNAL_STREAM").is_none() {
            assert!(!stderr_is_journal());
        }
    }
}
