//! How the quick start talks: numbered steps with their time, the daemons'
//! command lines (runnable as printed) and output, and the configuration
//! file it writes.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, ensure};

use super::Paths;

/// Writes the walk-through to stdout.
pub struct Printer {
    step: usize,
}

impl Printer {
    pub fn new() -> Printer {
        Printer { step: 0 }
    }

    pub fn title(&mut self, text: &str) {
        println!("\n=== {text}");
    }

    /// Starts the next numbered step.
    pub fn step(&mut self, name: &str, what: &str) {
        self.step += 1;
        println!("\n[{}] {name}: {what}", self.step);
    }

    /// A line of explanation inside a step.
    pub fn line(&mut self, text: &str) {
        println!("    {text}");
    }

    /// Quoted text (configuration, a daemon's output).
    pub fn block(&mut self, text: &str) {
        for l in text.lines() {
            println!("    | {l}");
        }
    }

    /// The step's outcome.
    pub fn done(&mut self, outcome: &str) {
        println!("    ✓ {outcome}");
    }

    /// The step's outcome and how long it took since `t`.
    pub fn done_in(&mut self, outcome: &str, t: Instant) {
        self.done(&format!("{outcome} ({:.2} s)", t.elapsed().as_secs_f64()));
    }
}

/// `n` bytes in MiB, one decimal.
pub fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
}

/// `path` relative to the current directory when it lies below it, so the
/// printed commands stay short and still run as printed.
pub fn rel(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

/// The quick start's configuration: Glance's options, with why each is set.
pub fn config_text(paths: &Paths, port: u16, cache_limit: u64) -> String {
    format!(
        "\
[DEFAULT]
# Logs to the terminal instead of a log file.
use_stderr = true
# imaged-scrubber: scrub pending_delete images at once (default 43200 s).
scrub_time = 0
# imaged-cache: the cache directory and its limit in bytes ({limit_mib}).
image_cache_dir = {cache}
image_cache_driver = sqlite
image_cache_max_size = {cache_limit}

[database]
# The catalog: a SQLite file, created with Glance's schema on first use.
connection = {url}

[glance_store]
# The filesystem store the imports write to and the scrubber deletes from.
stores = file
default_store = file
filesystem_store_datadir = {images}

[task]
work_dir = {work}

[import_filtering_opts]
# Allow downloads from the quick start's own server on loopback only.
allowed_hosts = 127.0.0.1
allowed_ports = {port}
",
        limit_mib = mib(cache_limit),
        cache = paths.cache.display(),
        url = paths.catalog_url(),
        images = paths.images.display(),
        work = paths.work.display(),
    )
}

/// The command line of a daemon verb, as a newcomer would type it.
pub fn command_line(paths: &Paths, bin: &str, args: &[&str]) -> String {
    let mut words = vec![
        rel(&paths.bin(bin)),
        "--config-file".to_string(),
        rel(&paths.config),
    ];
    words.extend(args.iter().map(|a| quote(a)));
    words.join(" ")
}

/// Shell-quotes a word when it needs it.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What a daemon run printed.
pub struct Run {
    pub stdout: String,
}

/// Runs a daemon verb with the quick start's configuration, shows the
/// command and everything it printed, and fails unless its exit code is one
/// of `ok_codes`.
pub fn daemon(
    p: &mut Printer,
    paths: &Paths,
    bin: &str,
    args: &[&str],
    ok_codes: &[i32],
) -> anyhow::Result<Run> {
    p.line(&format!("$ {}", command_line(paths, bin, args)));
    let mut cmd = Command::new(paths.bin(bin));
    cmd.arg("--config-file").arg(&paths.config).args(args);
    // The caller's IMAGED_* overrides and systemd sockets would change what
    // the daemons do; the quick start shows the configuration it prints.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("IMAGED_") || k == "NOTIFY_SOCKET" || k == "JOURNAL_STREAM" {
            cmd.env_remove(&*k);
        }
    }
    let t = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("running {}", paths.bin(bin).display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    p.block(&stderr);
    p.block(&stdout);
    let code = out.status.code().unwrap_or(-1);
    println!("    → exit {code} in {:.2} s", t.elapsed().as_secs_f64());
    ensure!(
        ok_codes.contains(&code),
        "{bin} {} exited {code}:\n{stderr}{stdout}",
        args.join(" ")
    );
    Ok(Run { stdout })
}
