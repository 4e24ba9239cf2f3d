//! Shared set-up for the scrubber's end-to-end tests: a catalog on one
//! engine, a filesystem store directory, a generated configuration, and
//! runs of the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::NaiveDateTime;
use imaged_catalog::Engine;
use imaged_catalog::testing::{PendingDeleteImage, TestDb};
use imaged_catalog::time::utcnow;

pub const BIN: &str = env!("CARGO_BIN_EXE_imaged-scrubber");

/// A catalog, an image directory and a configuration file.
pub struct Env {
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    pub datadir: PathBuf,
    pub config: PathBuf,
}

impl Env {
    /// A fresh environment; `None` when the engine's server is unreachable
    /// outside CI.
    pub async fn new(engine: Engine) -> Option<Env> {
        Self::with_config(engine, "", "").await
    }

    /// A fresh environment whose configuration also holds `defaults`
    /// (lines of `[DEFAULT]`) and `sections` (whole sections).
    pub async fn with_config(engine: Engine, defaults: &str, sections: &str) -> Option<Env> {
        let db = TestDb::new(engine).await?;
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().join("images");
        std::fs::create_dir_all(&datadir).unwrap();
        let config = dir.path().join("glance-scrubber.conf");
        let env = Env {
            db,
            dir,
            datadir,
            config,
        };
        env.write_config(defaults, sections);
        Some(env)
    }

    /// Rewrites the configuration file.
    pub fn write_config(&self, defaults: &str, sections: &str) {
        let text = format!(
            "[DEFAULT]\nscrub_time = 0\nscrub_pool_size = 4\nwakeup_time = 1\nuse_stderr = true\n{extra_default}\n\
             [database]\nconnection = {conn}\nmax_retries = 2\nretry_interval = 1\n\n\
             [glance_store]\nstores = file, http\ndefault_store = file\nfilesystem_store_datadir = {dd}\n\n{rest}\n",
            conn = self.db.options.connection,
            dd = self.datadir.display(),
            extra_default = defaults,
            rest = sections,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// The `file://` URL of `name` in the image directory.
    pub fn url(&self, name: &str) -> String {
        format!("file://{}", self.datadir.join(name).display())
    }

    /// Writes a 1 KiB data file `name` in the image directory.
    pub fn data_file(&self, name: &str) -> PathBuf {
        let p = self.datadir.join(name);
        std::fs::write(&p, vec![7u8; 1024]).unwrap();
        p
    }

    /// Inserts a pending_delete image (Glance's row states) with `n`
    /// `file://` locations whose data files exist; returns the image.
    pub async fn pending_image(&self, n: usize, deleted_at: NaiveDateTime) -> PendingDeleteImage {
        let mut img = PendingDeleteImage::new(deleted_at, n);
        img.locations = (0..n)
            .map(|i| {
                let name = format!("{}-{i}", img.id);
                self.data_file(&name);
                (self.url(&name), Some("{}".to_string()))
            })
            .collect();
        img.insert(&self.db.catalog).await.unwrap();
        img
    }

    /// Runs the binary with `--config-file <config>` and `args`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config-file").arg(&self.config).args(args);
        scrub_env(&mut cmd);
        cmd.output().expect("run imaged-scrubber")
    }

    /// `SELECT <col> FROM images WHERE id = '<id>'` as text.
    pub async fn image_text(&self, id: &str, col: &str) -> Option<String> {
        self.db
            .text(&format!("SELECT {col} FROM images WHERE id = '{id}'"))
            .await
            .unwrap()
    }

    /// A count query.
    pub async fn count(&self, sql: &str) -> i64 {
        self.db.count(sql).await.unwrap()
    }
}

/// Removes inherited variables that would change the binary's behaviour.
pub fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("IMAGED_") || k == "NOTIFY_SOCKET" || k == "JOURNAL_STREAM" {
            cmd.env_remove(k);
        }
    }
}

/// An hour ago, as Glance writes it.
pub fn hour_ago() -> NaiveDateTime {
    utcnow() - chrono::Duration::hours(1)
}

/// stdout + stderr of a run, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The numbers of the last "scrub pass:" summary line in `out`.
pub fn summary_value(out: &str, key: &str) -> Option<u64> {
    let line = out.lines().rev().find(|l| l.contains("scrub pass:"))?;
    let pat = format!("{key}=");
    let at = line.find(&pat)? + pat.len();
    line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

/// Whether `p` exists.
pub fn exists(p: &Path) -> bool {
    p.exists()
}
