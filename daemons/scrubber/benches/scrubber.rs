//! Scrub benchmark: the real `imaged-scrubber once` on N single-location
//! images (1 KiB files, filesystem store, default options) against
//! `find DIR -type f -delete` on N equal files, alternating in the same
//! run; wall time (median of several runs) and peak RSS (`/usr/bin/time -v`).
//!
//! Run with `cargo bench -p imaged-scrubber --bench scrubber`. Knobs:
//! `IMAGED_BENCH_ENGINES` (default `sqlite`; comma list of sqlite,
//! postgres, mysql), `IMAGED_BENCH_IMAGES` (100000 for SQLite),
//! `IMAGED_BENCH_SERVER_IMAGES` (10000 for PostgreSQL/MySQL),
//! `IMAGED_BENCH_RUNS` (3), `IMAGED_BENCH_DIR` (system temp dir),
//! `IMAGED_BENCH_POOL` (1: `scrub_pool_size` of the measured runs),
//! `IMAGED_BENCH_COMPARE_BIN` (unset; another `imaged-scrubber` build, e.g.
//! the previous version, timed in the same runs on the same data for a
//! before/after comparison under the same conditions).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imaged_catalog::Engine;
use imaged_catalog::testing::{TestDb, bulk_pending_delete};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn make_files(dir: &Path, n: u64, name: impl Fn(u64) -> String) {
    std::fs::create_dir_all(dir).unwrap();
    let data = vec![0x5au8; 1024];
    for i in 1..=n {
        std::fs::write(dir.join(name(i)), &data).unwrap();
    }
    let _ = Command::new("sync").status();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn binary() -> PathBuf {
    // The bench binary lives in target/<profile>/deps; the scrubber next to it.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("imaged-scrubber");
    assert!(
        bin.exists(),
        "{} missing: build it first (cargo build --release -p imaged-scrubber)",
        bin.display()
    );
    bin
}

struct Sample {
    find_s: f64,
    imaged_s: f64,
    rss_kib: u64,
    compare_s: Option<f64>,
}

async fn one_run(
    engine: Engine,
    n: u64,
    base: &Path,
    bin: &Path,
    compare: Option<&Path>,
) -> Option<Sample> {
    // Baseline: find -delete on n equal files.
    let fdir = tempfile::tempdir_in(base).unwrap();
    let files = fdir.path().join("f");
    make_files(&files, n, |i| format!("file-{i}"));
    let t = Instant::now();
    let st = Command::new("find")
        .arg(&files)
        .args(["-type", "f", "-delete"])
        .status()
        .unwrap();
    let find_s = t.elapsed().as_secs_f64();
    assert!(st.success());
    let (imaged_s, rss_kib) = scrub_run(engine, n, base, bin).await?;
    let compare_s = match compare {
        Some(other) => Some(scrub_run(engine, n, base, other).await?.0),
        None => None,
    };
    Some(Sample {
        find_s,
        imaged_s,
        rss_kib,
        compare_s,
    })
}

/// One `once` pass of `bin` over n fresh images; wall seconds and peak RSS.
async fn scrub_run(engine: Engine, n: u64, base: &Path, bin: &Path) -> Option<(f64, u64)> {
    let db = TestDb::new(engine).await?;
    bulk_pending_delete(&db.catalog, n, 1).await.unwrap();
    let idir = tempfile::tempdir_in(base).unwrap();
    let datadir = idir.path().join("images");
    db.exec(&format!(
        "UPDATE image_locations SET value = REPLACE(value, '/var/lib/glance/images', '{}')",
        datadir.display()
    ))
    .await
    .unwrap();
    make_files(&datadir, n, |i| format!("bulk-{i}-0"));
    let conf = idir.path().join("scrubber.conf");
    std::fs::write(
        &conf,
        format!(
            "[database]\nconnection = {}\n\n[glance_store]\nstores = file\ndefault_store = file\nfilesystem_store_datadir = {}\n",
            db.options.connection,
            datadir.display()
        ),
    )
    .unwrap();
    let rss_file = idir.path().join("rss.txt");
    let t = Instant::now();
    let st = Command::new("/usr/bin/time")
        .arg("-v")
        .arg("-o")
        .arg(&rss_file)
        .arg(bin)
        .arg("--config-file")
        .arg(&conf)
        .arg("once")
        .env("IMAGED_DEFAULT__USE_STDERR", "true")
        .env(
            "IMAGED_DEFAULT__SCRUB_POOL_SIZE",
            env_u64("IMAGED_BENCH_POOL", 1).to_string(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let imaged_s = t.elapsed().as_secs_f64();
    assert!(st.success(), "{} failed: {st:?}", bin.display());
    let deleted = db
        .count("SELECT COUNT(*) FROM images WHERE status = 'deleted'")
        .await
        .unwrap();
    assert_eq!(deleted as u64, n, "not every image was scrubbed");
    assert_eq!(std::fs::read_dir(&datadir).unwrap().count(), 0);
    let rss_kib = std::fs::read_to_string(&rss_file)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    Some((imaged_s, rss_kib))
}

#[tokio::main]
async fn main() {
    let engines = std::env::var("IMAGED_BENCH_ENGINES").unwrap_or_else(|_| "sqlite".into());
    let runs = env_u64("IMAGED_BENCH_RUNS", 3).max(1);
    let base = std::env::var("IMAGED_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let bin = binary();
    let compare = std::env::var_os("IMAGED_BENCH_COMPARE_BIN").map(PathBuf::from);
    println!(
        "| engine | images | imaged once (median) | find -delete (median) | ratio | peak RSS (max) |"
    );
    println!("|---|---|---|---|---|---|");
    for name in engines.split(',').map(str::trim) {
        let (engine, n) = match name {
            "sqlite" => (Engine::Sqlite, env_u64("IMAGED_BENCH_IMAGES", 100_000)),
            "postgres" => (
                Engine::Postgres,
                env_u64("IMAGED_BENCH_SERVER_IMAGES", 10_000),
            ),
            "mysql" => (Engine::MySql, env_u64("IMAGED_BENCH_SERVER_IMAGES", 10_000)),
            other => panic!("unknown engine {other}"),
        };
        let mut find = Vec::new();
        let mut imaged = Vec::new();
        let mut rss = 0;
        let mut other = Vec::new();
        for r in 0..runs {
            let Some(s) = one_run(engine, n, &base, &bin, compare.as_deref()).await else {
                eprintln!("{name}: server unreachable, skipped");
                break;
            };
            eprintln!(
                "{name} run {}: imaged {:.3} s, find {:.3} s, ratio {:.2}, RSS {} KiB",
                r + 1,
                s.imaged_s,
                s.find_s,
                s.imaged_s / s.find_s,
                s.rss_kib
            );
            if let Some(c) = s.compare_s {
                eprintln!(
                    "{name} run {}: compared binary {c:.3} s, ratio {:.2}",
                    r + 1,
                    c / s.find_s
                );
                other.push(c / s.find_s);
            }
            find.push(s.find_s);
            imaged.push(s.imaged_s);
            rss = rss.max(s.rss_kib);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if imaged.is_empty() {
            continue;
        }
        let (mi, mf) = (median(&mut imaged), median(&mut find));
        println!(
            "| {name} | {n} | {mi:.3} s | {mf:.3} s | {:.2} | {:.1} MiB |",
            mi / mf,
            rss as f64 / 1024.0
        );
        if !other.is_empty() {
            println!(
                "| {name} (compared binary) | {n} | | | {:.2} (median ratio) | |",
                median(&mut other)
            );
        }
    }
}
