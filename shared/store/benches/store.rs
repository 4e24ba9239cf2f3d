//! Filesystem backend throughput against coreutils on the same files in the same run.
//!
//! Run with `cargo bench -p imaged-store --bench store`. Environment:
//! `IMAGED_BENCH_DIR` (default: the system temp dir; the directory must be on the filesystem
//! being measured), `IMAGED_BENCH_SIZE_MIB` (default 1024), `IMAGED_BENCH_RUNS` (default 5),
//! `IMAGED_BENCH_FILES` (default 10000), `IMAGED_BENCH_DELETE_CONCURRENCY` (default 16),
//! `IMAGED_BENCH_CHUNK_KIB` (default: the backend's default chunk size), `IMAGED_BENCH_DIRECT_IO`
//! (default 1; 0 writes through the page cache as before direct I/O).
//!
//! Each figure is the median of the runs; runs of imaged and of coreutils alternate so that
//! both see the same page-cache and disk state. imaged's write fsyncs the file and directory
//! before returning, so it is compared with `cp` followed by `sync <file>` (same durability);
//! plain `cp` is reported too.
//!
//! CPU time (user + system, from `getrusage`) is reported for the durable writes: this process's
//! own for imaged's write (every thread: source reads, chunking and the writer), the waited-for
//! children's for `cp` + `sync`. Kernel write-back done by flusher threads is charged to
//! neither, so it is the CPU the writer takes from other work on the machine.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use imaged_store::{
    BackendType, FilesystemOptions, Location, Store, StoreMode, StoreOptions, Timeouts,
    WriteOptions,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("spawning a coreutils command");
    assert!(status.success(), "{cmd:?} failed");
}

fn make_source(path: &Path, mib: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..mib {
        // Cheap xorshift so the data is not trivially compressible or sparse.
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&block).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

/// User and system CPU time of this process (`RUSAGE_SELF`) or of its waited-for children.
fn cpu(who: nix::sys::resource::UsageWho) -> (Duration, Duration) {
    let u = nix::sys::resource::getrusage(who).expect("getrusage");
    let d = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    (d(u.user_time()), d(u.system_time()))
}

fn cpu_delta(before: (Duration, Duration), after: (Duration, Duration)) -> (Duration, Duration) {
    (after.0 - before.0, after.1 - before.1)
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let base = std::env::var_os("IMAGED_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let size_mib = env_usize("IMAGED_BENCH_SIZE_MIB", 1024);
    let runs = env_usize("IMAGED_BENCH_RUNS", 5).max(1);
    let files = env_usize("IMAGED_BENCH_FILES", 10_000);
    let concurrency = env_usize("IMAGED_BENCH_DELETE_CONCURRENCY", 16).max(1);

    let tmp = tempfile::tempdir_in(&base).unwrap();
    let datadir = tmp.path().join("images");
    let cpdir = tmp.path().join("cp");
    std::fs::create_dir_all(&cpdir).unwrap();
    let store = Store::new(StoreOptions {
        mode: StoreMode::Single {
            default_store: BackendType::File,
            filesystem: Some(FilesystemOptions {
                chunk_size: env_usize("IMAGED_BENCH_CHUNK_KIB", 0) * 1024,
                direct_io: env_usize("IMAGED_BENCH_DIRECT_IO", 1) != 0,
                ..FilesystemOptions::with_datadir(&datadir)
            }),
            s3: None,
        },
        timeouts: Timeouts {
            operation: Duration::from_secs(600),
            stall: Duration::from_secs(600),
            connect: Duration::from_secs(10),
        },
    })
    .unwrap();

    let src = tmp.path().join("source.img");
    eprintln!(
        "creating a {size_mib} MiB source file in {}",
        tmp.path().display()
    );
    make_source(&src, size_mib);
    let bytes = std::fs::metadata(&src).unwrap().len();

    use nix::sys::resource::UsageWho::{RUSAGE_CHILDREN, RUSAGE_SELF};
    let (mut t_write, mut t_cp, mut t_cp_sync) = (Vec::new(), Vec::new(), Vec::new());
    let (mut u_write, mut s_write, mut u_cps, mut s_cps) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut t_read, mut t_cp_read) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // imaged write (fsync + rename + directory fsync).
        let id = format!("img-{i}");
        let start = Instant::now();
        let cpu_start = cpu(RUSAGE_SELF);
        let f = tokio::fs::File::open(&src).await.unwrap();
        let w = store.write(&id, f, WriteOptions::default()).await.unwrap();
        t_write.push(start.elapsed());
        let (u, s) = cpu_delta(cpu_start, cpu(RUSAGE_SELF));
        u_write.push(u);
        s_write.push(s);
        assert_eq!(w.size, bytes);

        // cp, then cp + sync of the copy.
        let dst = cpdir.join(format!("cp-{i}"));
        let start = Instant::now();
        run(Command::new("cp").arg(&src).arg(&dst));
        t_cp.push(start.elapsed());
        std::fs::remove_file(&dst).unwrap();
        run(Command::new("sync").arg("-f").arg(&cpdir));
        let start = Instant::now();
        let cpu_start = cpu(RUSAGE_CHILDREN);
        run(Command::new("cp").arg(&src).arg(&dst));
        run(Command::new("sync").arg(&dst));
        t_cp_sync.push(start.elapsed());
        let (u, s) = cpu_delta(cpu_start, cpu(RUSAGE_CHILDREN));
        u_cps.push(u);
        s_cps.push(s);

        // Reads of the written image: imaged stream vs cp to /dev/null, both from the page
        // cache (a direct write leaves the image out of it, so it is read once untimed).
        let loc = Location::new(&w.url);
        let img = datadir.join(&id);
        run(Command::new("cp").arg(&img).arg("/dev/null"));
        let start = Instant::now();
        let mut s = store.open_read(&loc).await.unwrap();
        let mut n = 0u64;
        while let Some(c) = s.next().await {
            n += c.unwrap().len() as u64;
        }
        t_read.push(start.elapsed());
        assert_eq!(n, bytes);
        let start = Instant::now();
        run(Command::new("cp").arg(&img).arg("/dev/null"));
        t_cp_read.push(start.elapsed());

        store.delete(&loc).await.unwrap();
        std::fs::remove_file(&dst).unwrap();
        run(Command::new("sync").arg("-f").arg(&cpdir));
        eprintln!(
            "run {i}: write {:?} (user {:?}, sys {:?}) cp {:?} cp+sync {:?} (user {:?}, sys {:?}) \
             read {:?} cp-read {:?}",
            t_write[i],
            u_write[i],
            s_write[i],
            t_cp[i],
            t_cp_sync[i],
            u_cps[i],
            s_cps[i],
            t_read[i],
            t_cp_read[i]
        );
    }

    // Deletes: `files` small files each, imaged one at a time and with bounded concurrency,
    // vs one `rm -f` process given all paths.
    let (mut t_seq, mut t_del, mut t_rm) = (Vec::new(), Vec::new(), Vec::new());
    let rmdir = tmp.path().join("rm");
    std::fs::create_dir_all(&rmdir).unwrap();
    for i in 0..runs {
        let mk = |dir: &Path, prefix: &str| -> Vec<std::path::PathBuf> {
            (0..files)
                .map(|j| {
                    let p = dir.join(format!("{prefix}-{i}-{j}"));
                    std::fs::write(&p, b"x").unwrap();
                    p
                })
                .collect()
        };
        let seq = mk(&datadir, "seq");
        let conc = mk(&datadir, "conc");
        let rm_paths = mk(&rmdir, "rm");
        run(Command::new("sync").arg("-f").arg(&datadir));

        // The order of the three phases rotates between runs, and the filesystem is synced
        // before each, so no phase always runs on a calmer journal than another.
        let orders = [[0, 1, 2], [2, 0, 1], [1, 2, 0]];
        for phase in orders[i % 3] {
            run(Command::new("sync").arg("-f").arg(&datadir));
            let start = Instant::now();
            match phase {
                0 => {
                    for p in &seq {
                        store
                            .delete(&Location::new(format!("file://{}", p.display())))
                            .await
                            .unwrap();
                    }
                    t_seq.push(start.elapsed());
                }
                1 => {
                    let results: Vec<_> = futures::stream::iter(conc.iter())
                        .map(|p| {
                            let store = &store;
                            async move {
                                store
                                    .delete(&Location::new(format!("file://{}", p.display())))
                                    .await
                            }
                        })
                        .buffer_unordered(concurrency)
                        .collect()
                        .await;
                    t_del.push(start.elapsed());
                    assert!(results.iter().all(Result::is_ok));
                }
                _ => {
                    run(Command::new("rm").arg("-f").args(&rm_paths));
                    t_rm.push(start.elapsed());
                }
            }
        }
        eprintln!(
            "delete run {i}: imaged sequential {:?}, imaged x{concurrency} {:?}, rm {:?}",
            t_seq[i], t_del[i], t_rm[i]
        );
    }

    let (w, cp, cps) = (median(t_write), median(t_cp), median(t_cp_sync));
    let (r, cpr) = (median(t_read), median(t_cp_read));
    let (uw, sw, uc, sc) = (
        median(u_write),
        median(s_write),
        median(u_cps),
        median(s_cps),
    );
    let (ds, d, rm) = (median(t_seq), median(t_del), median(t_rm));
    let per_s = |dur: Duration| files as f64 / dur.as_secs_f64();
    println!("| measurement | imaged | coreutils | ratio (imaged / coreutils throughput) |");
    println!("|---|---|---|---|");
    println!(
        "| write {size_mib} MiB (fsync) vs `cp` + `sync FILE` | {:.3} s ({:.0} MiB/s) | {:.3} s ({:.0} MiB/s) | {:.2} |",
        w.as_secs_f64(),
        mib_per_s(bytes, w),
        cps.as_secs_f64(),
        mib_per_s(bytes, cps),
        cps.as_secs_f64() / w.as_secs_f64()
    );
    println!(
        "| CPU of the durable write (user + sys) vs `cp` + `sync FILE` | {:.3} s + {:.3} s | {:.3} s + {:.3} s | {:.2} (sys only: {:.2}) |",
        uw.as_secs_f64(),
        sw.as_secs_f64(),
        uc.as_secs_f64(),
        sc.as_secs_f64(),
        (uc + sc).as_secs_f64() / (uw + sw).as_secs_f64(),
        sc.as_secs_f64() / sw.as_secs_f64()
    );
    println!(
        "| write {size_mib} MiB (fsync) vs plain `cp` (no fsync) | {:.3} s | {:.3} s ({:.0} MiB/s) | {:.2} |",
        w.as_secs_f64(),
        cp.as_secs_f64(),
        mib_per_s(bytes, cp),
        cp.as_secs_f64() / w.as_secs_f64()
    );
    println!(
        "| read {size_mib} MiB vs `cp FILE /dev/null` | {:.3} s ({:.0} MiB/s) | {:.3} s ({:.0} MiB/s) | {:.2} |",
        r.as_secs_f64(),
        mib_per_s(bytes, r),
        cpr.as_secs_f64(),
        mib_per_s(bytes, cpr),
        cpr.as_secs_f64() / r.as_secs_f64()
    );
    println!(
        "| delete {files} files (concurrency {concurrency}) vs one `rm -f` | {:.3} s ({:.0}/s) | {:.3} s ({:.0}/s) | {:.2} |",
        d.as_secs_f64(),
        per_s(d),
        rm.as_secs_f64(),
        per_s(rm),
        rm.as_secs_f64() / d.as_secs_f64()
    );
    println!(
        "| delete {files} files one at a time vs one `rm -f` | {:.3} s ({:.0}/s) | {:.3} s ({:.0}/s) | {:.2} |",
        ds.as_secs_f64(),
        per_s(ds),
        rm.as_secs_f64(),
        per_s(rm),
        rm.as_secs_f64() / ds.as_secs_f64()
    );
    println!("runs: {runs} (medians)");
}
