//! Test support: a cache directory plus config file, Glance's write path reproduced step by
//! step (incomplete/ → rename → INSERT with Glance's pragmas), and a runner for the binary.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

pub const BIN: &str = env!("CARGO_BIN_EXE_imaged-cache");

/// Glance's cache.db schema, as its sqlite driver creates it.
pub const GLANCE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS cached_images (
                image_id TEXT PRIMARY KEY,
                last_accessed REAL DEFAULT 0.0,
                last_modified REAL DEFAULT 0.0,
                size INTEGER DEFAULT 0,
                hits INTEGER DEFAULT 0,
                checksum TEXT
            );";

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A cache directory and the configuration that points imaged-cache at it.
pub struct Cache {
    pub _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub max_size: u64,
    pub extra: String,
}

impl Cache {
    /// An empty cache with cache.db created by "Glance" and the given limit.
    pub fn new(max_size: u64) -> Cache {
        let c = Cache::bare(max_size);
        c.glance_init_db();
        c
    }

    /// A cache directory with its sub-directories but no cache.db.
    pub fn bare(max_size: u64) -> Cache {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("image-cache");
        for sub in ["", "incomplete", "invalid", "queue"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let conf = tmp.path().join("glance-cache.conf");
        let c = Cache {
            _tmp: tmp,
            dir,
            conf,
            max_size,
            extra: String::new(),
        };
        c.write_conf();
        c
    }

    /// Extra configuration lines (appended after the defaults; sections allowed).
    pub fn with_extra(mut self, extra: &str) -> Cache {
        self.extra = extra.to_owned();
        self.write_conf();
        self
    }

    pub fn write_conf(&self) {
        let text = format!(
            "[DEFAULT]\nimage_cache_dir = {}\nimage_cache_driver = sqlite\nimage_cache_max_size = {}\n\
             image_cache_stall_time = 86400\nuse_stderr = true\n{}\n",
            self.dir.display(),
            self.max_size,
            self.extra
        );
        fs::write(&self.conf, text).unwrap();
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("cache.db")
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// A connection set up as Glance's driver sets it up.
    pub fn glance_conn(&self) -> Connection {
        let c = Connection::open(self.db()).unwrap();
        c.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;")
            .unwrap();
        c
    }

    pub fn glance_init_db(&self) {
        self.glance_conn().execute_batch(GLANCE_SCHEMA).unwrap();
    }

    /// Glance's write path, up to and including the rename (no row yet: a commit in flight).
    pub fn glance_write_file(&self, id: &str, size: usize) {
        let part = self.dir.join("incomplete").join(id);
        let mut f = File::create(&part).unwrap();
        f.write_all(&vec![b'x'; size]).unwrap();
        f.flush().unwrap();
        drop(f);
        fs::rename(&part, self.path(id)).unwrap();
        let _ = fs::remove_file(self.dir.join("queue").join(id));
    }

    /// The whole write path: incomplete/ → rename → INSERT (now, now, hits 0, size).
    pub fn glance_cache(&self, id: &str, size: usize) {
        self.glance_write_file(id, size);
        let t = now();
        self.glance_conn()
            .execute(
                "INSERT INTO cached_images (image_id, last_accessed, last_modified, hits, size) VALUES (?1, ?2, ?3, 0, ?4)",
                rusqlite::params![id, t, t, size as i64],
            )
            .unwrap();
    }

    /// Caches `n` images of `size` bytes with increasing last_accessed (first = oldest).
    pub fn glance_cache_many(&self, n: usize, size: usize) -> Vec<String> {
        let ids: Vec<String> = (0..n).map(|_| new_id()).collect();
        for (i, id) in ids.iter().enumerate() {
            self.glance_cache(id, size);
            self.set_last_accessed(id, 1_000_000.0 + i as f64);
        }
        ids
    }

    pub fn set_last_accessed(&self, id: &str, t: f64) {
        self.glance_conn()
            .execute(
                "UPDATE cached_images SET last_accessed = ?2 WHERE image_id = ?1",
                rusqlite::params![id, t],
            )
            .unwrap();
    }

    pub fn row_ids(&self) -> Vec<String> {
        let c = self.glance_conn();
        let mut s = c
            .prepare("SELECT image_id FROM cached_images ORDER BY image_id")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    pub fn has_row(&self, id: &str) -> bool {
        self.row_ids().iter().any(|r| r == id)
    }

    pub fn exists(&self, id: &str) -> bool {
        self.path(id).exists()
    }

    /// Sets mtime (and atime) of a path `age` in the past.
    pub fn age(&self, path: &Path, age: Duration) {
        let t = SystemTime::now() - age;
        let f = File::options().write(true).open(path).unwrap();
        f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
            .unwrap();
    }

    /// Sets atime and mtime of a path to an absolute epoch second.
    pub fn set_time(&self, path: &Path, epoch: u64) {
        let t = UNIX_EPOCH + Duration::from_secs(epoch);
        let f = File::options().write(true).open(path).unwrap();
        f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
            .unwrap();
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config-file").arg(&self.conf).args(args);
        cmd.env_remove("NOTIFY_SOCKET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// Runs a verb with `--format json` and parses its output.
    pub fn json(&self, args: &[&str]) -> (i32, serde_json::Value, String) {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        let out = self.run(&a);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "bad json ({e}) from {args:?}: stdout={} stderr={stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (out.status.code().unwrap_or(-1), v, stderr)
    }

    pub fn stats(&self) -> serde_json::Value {
        self.json(&["stats"]).1
    }
}

/// Holds a POSIX record lock (what Python's `fcntl.lockf` takes) on `path`, as Glance's API
/// does while it prunes or cleans.
pub struct PosixLock {
    _f: File,
}

impl PosixLock {
    pub fn take(path: &Path) -> PosixLock {
        let f = File::options()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        let req = imaged_cache::lock::whole_file_write_lock();
        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETLK(&req)).unwrap();
        PosixLock { _f: f }
    }
}

pub fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}
