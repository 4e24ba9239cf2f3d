//! Prune benchmarks of `imaged-cache` (run with `cargo bench -p imaged-cache --bench cache`).
//!
//! 1. A cache of `IMAGED_BENCH_ENTRIES` (10,000) 1 KiB entries pruned to half by the real
//!    binary, against `rm -f` of the same half of an identical copy, alternating in each of
//!    `IMAGED_BENCH_RUNS` (5) runs; medians and their ratio.
//! 2. Peak RSS of one prune pass over a cache.db of `IMAGED_BENCH_ROWS` (1,000,000) rows, once
//!    with a file per row (the pass evicts 1,000 of them) and once with no files at all (every
//!    row is dangling and removed). Set `IMAGED_BENCH_ROWS=0` to skip.
//!
//! Caches are built in `IMAGED_BENCH_DIR` (default: the system temp dir) in the state Glance's
//! write path leaves (final files, one `cached_images` row each with REAL times); the set-up
//! writes them directly, which is not measured.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_imaged-cache");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn id(i: u64) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i >> 16, i)
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS cached_images (
                image_id TEXT PRIMARY KEY,
                last_accessed REAL DEFAULT 0.0,
                last_modified REAL DEFAULT 0.0,
                size INTEGER DEFAULT 0,
                hits INTEGER DEFAULT 0,
                checksum TEXT
            );";

/// A cache of `rows` rows, the first `files` of which have a file of `size` bytes; row `i`
/// was accessed at `1e9 + i` (oldest first).
fn build(dir: &Path, rows: u64, files: u64, size: usize, max_size: u64) -> PathBuf {
    let _ = fs::remove_dir_all(dir);
    for sub in ["", "incomplete", "invalid", "queue"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let data = vec![b'x'; size];
    for i in 0..files {
        fs::write(dir.join(id(i)), &data).unwrap();
    }
    let mut conn = rusqlite::Connection::open(dir.join("cache.db")).unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut st = tx
            .prepare("INSERT INTO cached_images (image_id, last_accessed, last_modified, hits, size) VALUES (?1, ?2, ?2, 0, ?3)")
            .unwrap();
        for i in 0..rows {
            st.execute(rusqlite::params![id(i), 1e9 + i as f64, size as i64])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    let conf = dir.with_extension("conf");
    fs::write(
        &conf,
        format!(
            "[DEFAULT]\nimage_cache_dir = {}\nimage_cache_driver = sqlite\nimage_cache_max_size = {max_size}\nuse_stderr = true\n",
            dir.display()
        ),
    )
    .unwrap();
    conf
}

fn sync() {
    let _ = Command::new("sync").status();
}

/// Runs a prune under `/usr/bin/time` when present; returns (wall time, peak RSS KiB, stdout).
fn prune(conf: &Path) -> (Duration, Option<u64>, String) {
    let rss_file = conf.with_extension("rss");
    let time = Path::new("/usr/bin/time");
    let mut cmd = if time.exists() {
        let mut c = Command::new(time);
        c.arg("-f").arg("%M").arg("-o").arg(&rss_file).arg(BIN);
        c
    } else {
        Command::new(BIN)
    };
    cmd.arg("--config-file")
        .arg(conf)
        .args(["prune", "--format", "json"])
        .env("IMAGED_DEFAULT__DEBUG", "false");
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "prune failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rss = fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.trim().lines().last()?.trim().parse().ok());
    (took, rss, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rm(paths: &[PathBuf]) -> Duration {
    let start = Instant::now();
    let st = Command::new("rm").arg("-f").args(paths).status().unwrap();
    let took = start.elapsed();
    assert!(st.success());
    took
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::var_os("IMAGED_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("imaged-cache-bench-{}", std::process::id()));
    fs::create_dir_all(&base).unwrap();
    let runs = env_or("IMAGED_BENCH_RUNS", 5).max(1);
    let entries = env_or("IMAGED_BENCH_ENTRIES", 10_000);
    let rows = env_or("IMAGED_BENCH_ROWS", 1_000_000);
    let half = entries / 2;

    println!(
        "prune {entries} entries of 1 KiB to half vs rm -f of the same {half} files, {runs} runs"
    );
    let (mut ours, mut theirs, mut peak) = (Vec::new(), Vec::new(), 0u64);
    for run in 0..runs {
        let a = base.join("imaged");
        let b = base.join("rm");
        let conf = build(&a, entries, entries, 1024, (entries - half) * 1024);
        build(&b, entries, entries, 1024, 0);
        let victims: Vec<PathBuf> = (0..half).map(|i| b.join(id(i))).collect();
        sync();
        let (t_ours, t_rm, rss) = if run % 2 == 0 {
            let (t, rss, _) = prune(&conf);
            sync();
            (t, rm(&victims), rss)
        } else {
            let t_rm = rm(&victims);
            sync();
            let (t, rss, _) = prune(&conf);
            (t, t_rm, rss)
        };
        let left = fs::read_dir(&a)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().len() == 36)
            .count() as u64;
        assert_eq!(
            left,
            entries - half,
            "prune left the wrong number of images"
        );
        assert!(!a.join(id(0)).exists() && a.join(id(entries - 1)).exists());
        println!(
            "  run {run}: imaged-cache prune {:.3} s, rm -f {:.3} s, peak RSS {} KiB",
            t_ours.as_secs_f64(),
            t_rm.as_secs_f64(),
            rss.map_or("?".into(), |r| r.to_string())
        );
        peak = peak.max(rss.unwrap_or(0));
        ours.push(t_ours);
        theirs.push(t_rm);
    }
    let (mo, mr) = (median(&mut ours), median(&mut theirs));
    println!(
        "median: imaged-cache prune {:.3} s, rm -f {:.3} s, ratio {:.2} (goal <= 1.5), peak RSS {} KiB",
        mo.as_secs_f64(),
        mr.as_secs_f64(),
        mo.as_secs_f64() / mr.as_secs_f64(),
        peak
    );

    if rows > 0 {
        let d = base.join("million");
        let evict = 1000u64.min(rows);
        let conf = build(&d, rows, rows, 1, rows - evict);
        sync();
        let (t, rss, out) = prune(&conf);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["evicted"].as_u64(), Some(evict));
        println!(
            "prune over {rows} rows with {rows} files (evicts {evict}): {:.2} s, peak RSS {} KiB (goal < 65536)",
            t.as_secs_f64(),
            rss.map_or("?".into(), |r| r.to_string())
        );
        let conf = build(&d, rows, 0, 1, 1 << 40);
        let (t, rss, out) = prune(&conf);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["dangling_rows"].as_u64(), Some(rows));
        println!(
            "prune over {rows} rows without files (all dangling, removed): {:.2} s, peak RSS {} KiB (goal < 65536)",
            t.as_secs_f64(),
            rss.map_or("?".into(), |r| r.to_string())
        );
    }
    let _ = fs::remove_dir_all(&base);
}
