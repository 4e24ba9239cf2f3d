//! The quick start: builds the three daemons and walks a newcomer through
//! their main jobs on a local directory — a SQLite catalog, a filesystem
//! store and an image cache — running the real binaries and showing what each
//! run changed. Every step checks its outcome and stops with an error naming
//! what is wrong, so the same code path is the quick start's test.
//!
//! The steps: import three generated disks served from loopback
//! (`imaged-tasks enqueue` + `once`), delete one as Glance's API does with
//! `delayed_delete = True`, scrub it (`imaged-scrubber once`), cache the
//! other two past the cache limit (`imaged-cache queue` + `prefetch`) and
//! prune (`imaged-cache prune`).

mod disk;
mod serve;
mod show;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use imaged_catalog::delayed_delete::DelayedDelete;
use imaged_catalog::{Catalog, CatalogOptions};
use md5::Digest;

use show::{Printer, mib, rel};

/// Options of `cargo xtask quickstart`.
#[derive(clap::Args)]
pub struct Args {
    /// Working directory for the catalog, store, cache and configuration
    /// [default: <target dir>/quickstart]. Wiped at the start; refused when
    /// it exists and was not made by the quick start.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Keep the working directory afterwards, to look around or rerun the
    /// printed commands.
    #[arg(long)]
    keep: bool,
    /// Build the daemons with the release profile instead of the dev profile.
    #[arg(long)]
    release: bool,
    /// Do not build: use the daemons already built for the chosen profile.
    #[arg(long)]
    no_build: bool,
    /// Use the daemon binaries in this directory (implies --no-build).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

/// The daemons the quick start runs.
const DAEMONS: [&str; 3] = ["imaged-tasks", "imaged-scrubber", "imaged-cache"];
/// Marks a working directory as the quick start's, so a wipe never removes
/// anything else.
const MARKER: &str = ".imaged-quickstart";
/// The project the demo images belong to.
const OWNER: &str = "demo-project";
/// `image_cache_max_size`: the two cached demo disks (3 MiB each) exceed it.
const CACHE_LIMIT: u64 = 5 << 20;

/// A demo disk: its image name and bytes.
struct Disk {
    name: &'static str,
    data: Arc<Vec<u8>>,
}

impl Disk {
    fn file(&self) -> String {
        format!("{}.raw", self.name)
    }
    fn md5(&self) -> String {
        format!("{:x}", md5::Md5::digest(self.data.as_slice()))
    }
}

/// An imported demo disk.
struct Imported {
    disk: Disk,
    task_id: String,
    image_id: String,
    file: PathBuf,
}

/// Where things are.
struct Paths {
    /// Workspace root (where `cargo build` runs).
    root: PathBuf,
    bins: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    catalog: PathBuf,
    images: PathBuf,
    cache: PathBuf,
    work: PathBuf,
}

impl Paths {
    fn new(args: &Args) -> anyhow::Result<Paths> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask lives inside the workspace")?
            .to_path_buf();
        // `cargo xtask` runs target/<profile>/xtask: its grandparent is the
        // target directory, wherever CARGO_TARGET_DIR put it.
        let exe = std::env::current_exe().context("locating the xtask binary")?;
        let target = exe
            .parent()
            .and_then(Path::parent)
            .context("xtask binary outside a target directory")?
            .to_path_buf();
        let profile = if args.release { "release" } else { "debug" };
        let bins = args.bin_dir.clone().unwrap_or_else(|| target.join(profile));
        let dir = match &args.dir {
            Some(d) => std::path::absolute(d)?,
            None => target.join("quickstart"),
        };
        Ok(Paths {
            root,
            bins,
            config: dir.join("imaged.conf"),
            catalog: dir.join("glance.sqlite"),
            images: dir.join("images"),
            cache: dir.join("image-cache"),
            work: dir.join("work"),
            dir,
        })
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }

    fn catalog_url(&self) -> String {
        format!("sqlite:///{}", self.catalog.display())
    }
}

/// Runs the quick start.
pub fn run(args: Args) -> anyhow::Result<()> {
    let paths = Paths::new(&args)?;
    let mut p = Printer::new();
    p.title(&format!(
        "imaged quick start: the three daemons on a SQLite catalog and a file store in {}",
        rel(&paths.dir)
    ));
    let build_time = build(&mut p, &args, &paths)?;
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(walk(&mut p, &paths));
    match outcome {
        Ok(()) => {
            let steps = started.elapsed();
            p.title("Done");
            p.line(&format!(
                "All steps passed in {:.1} s{}.",
                steps.as_secs_f64(),
                build_time
                    .map(|b| format!(" (after a {b:.1} s build)"))
                    .unwrap_or_default()
            ));
            if args.keep {
                p.line(&format!(
                    "Kept {}. Look around with, for example:",
                    rel(&paths.dir)
                ));
                for (bin, verb) in [
                    ("imaged-tasks", "list"),
                    ("imaged-scrubber", "status"),
                    ("imaged-cache", "list"),
                ] {
                    p.line(&format!("  {}", show::command_line(&paths, bin, &[verb])));
                }
            } else {
                remove_dir(&paths.dir)?;
                p.line(&format!(
                    "Removed {}; `cargo xtask quickstart --keep` keeps it to look around.",
                    rel(&paths.dir)
                ));
            }
            Ok(())
        }
        Err(e) => {
            p.line(&format!(
                "The quick start stopped; {} is left as it was for a look.",
                rel(&paths.dir)
            ));
            Err(e)
        }
    }
}

/// `cargo build` of the three binaries (skipped with `--no-build`); the
/// build's wall time.
fn build(p: &mut Printer, args: &Args, paths: &Paths) -> anyhow::Result<Option<f64>> {
    let mut secs = None;
    if args.no_build || args.bin_dir.is_some() {
        p.step("Build", "skipped: using the binaries already built");
        p.line(&format!("binaries in {}", rel(&paths.bins)));
    } else {
        p.step("Build", "cargo build the three daemons");
        let mut words = vec!["build", "--locked"];
        words.extend(DAEMONS.iter().flat_map(|d| ["--bin", *d]));
        if args.release {
            words.push("--release");
        }
        p.line(&format!("$ cargo {}", words.join(" ")));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let t = Instant::now();
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&paths.root).args(&words);
        // `cargo run` hands xtask the variables of its own package; a build
        // script that tracks one of them (ring tracks CARGO_MANIFEST_DIR)
        // would see a change and rebuild its whole dependent chain here and
        // again at the next plain `cargo build`.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || matches!(
                    &*k,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                )
            {
                cmd.env_remove(&*k);
            }
        }
        let status = cmd.status().context("running cargo build")?;
        ensure!(status.success(), "cargo build failed ({status})");
        let elapsed = t.elapsed().as_secs_f64();
        p.done(&format!("built in {elapsed:.1} s"));
        secs = Some(elapsed);
    }
    for d in DAEMONS {
        ensure!(
            paths.bin(d).is_file(),
            "{} does not exist (build it, or drop --no-build/--bin-dir)",
            paths.bin(d).display()
        );
    }
    Ok(secs)
}

/// The steps after the build.
async fn walk(p: &mut Printer, paths: &Paths) -> anyhow::Result<()> {
    let disks = vec![
        Disk {
            name: "demo-1",
            data: Arc::new(disk::raw_mbr_disk(2 << 20, 1)),
        },
        Disk {
            name: "demo-2",
            data: Arc::new(disk::raw_mbr_disk(3 << 20, 2)),
        },
        Disk {
            name: "demo-3",
            data: Arc::new(disk::raw_mbr_disk(3 << 20, 3)),
        },
    ];
    let t = Instant::now();
    p.step("Set up", &format!("a fresh {}", rel(&paths.dir)));
    prepare_dir(paths)?;
    let files: HashMap<String, Arc<Vec<u8>>> =
        disks.iter().map(|d| (d.file(), d.data.clone())).collect();
    let server = serve::Server::start(files)?;
    let config = show::config_text(paths, server.port, CACHE_LIMIT);
    std::fs::write(&paths.config, &config)?;
    p.line(&format!(
        "Serving {} on http://127.0.0.1:{}/ from this process: raw disks with an MBR partition table, generated here.",
        disks
            .iter()
            .map(|d| format!("{} ({})", d.file(), mib(d.data.len() as u64)))
            .collect::<Vec<_>>()
            .join(", "),
        server.port
    ));
    p.line(
        "imaged-tasks refuses loopback addresses and ports other than 80/443 by default \
         (Glance's SSRF protection), so [import_filtering_opts] below allows exactly this server.",
    );
    p.line(&format!(
        "One configuration file for all three daemons, {}:",
        rel(&paths.config)
    ));
    p.block(&config);
    p.done_in("directory and configuration ready", t);

    let tasks = enqueue(p, paths, &server, &disks)?;
    let catalog = Catalog::open(CatalogOptions::new(paths.catalog_url()))
        .await
        .context("opening the quick start's catalog")?;
    let imported = import(p, paths, &server, &catalog, disks, tasks).await?;
    let (doomed, kept) = imported.split_first().context("three imports")?;
    delete_and_scrub(p, paths, &catalog, doomed).await?;
    cache(p, paths, kept)?;
    catalog.close().await;
    Ok(())
}

/// Queues one import task per disk through `imaged-tasks enqueue`.
fn enqueue(
    p: &mut Printer,
    paths: &Paths,
    server: &serve::Server,
    disks: &[Disk],
) -> anyhow::Result<Vec<String>> {
    let t = Instant::now();
    p.step(
        "Enqueue",
        "three import tasks, as Glance's Tasks API (POST /v2/tasks) queues them",
    );
    let mut tasks = Vec::new();
    for d in disks {
        let input = serde_json::json!({
            "import_from": server.url(&d.file()),
            "import_from_format": "raw",
            "image_properties": {"name": d.name, "disk_format": "raw", "container_format": "bare"},
        });
        let input = input.to_string();
        let out = show::daemon(
            p,
            paths,
            "imaged-tasks",
            &[
                "enqueue", "--type", "import", "--owner", OWNER, "--input", &input,
            ],
            &[0],
        )?;
        let id = out.stdout.trim().to_string();
        ensure!(
            uuid_like(&id),
            "enqueue printed {id:?} instead of a task id"
        );
        tasks.push(id);
    }
    ensure!(
        paths.catalog.is_file(),
        "the catalog {} was not created",
        paths.catalog.display()
    );
    p.line(&format!(
        "imaged-tasks created {} with Glance's schema on first use.",
        rel(&paths.catalog)
    ));
    p.done_in("3 tasks queued", t);
    Ok(tasks)
}

/// Lets the executor run the queued imports and checks what they made.
async fn import(
    p: &mut Printer,
    paths: &Paths,
    server: &serve::Server,
    catalog: &Catalog,
    disks: Vec<Disk>,
    tasks: Vec<String>,
) -> anyhow::Result<Vec<Imported>> {
    let t = Instant::now();
    p.step(
        "Import",
        "imaged-tasks once: claim each pending task, download, inspect, store, activate",
    );
    for id in &tasks {
        let task = catalog.get_task(id).await?;
        let status = task.as_ref().map(|t| t.status.as_str());
        ensure!(
            status == Some("pending"),
            "task {id} is {status:?}, not pending"
        );
    }
    p.line("The catalog holds the 3 tasks, `pending`, as the API leaves them.");
    show::daemon(p, paths, "imaged-tasks", &["once"], &[0])?;
    for hit in server.take_hits() {
        p.line(&format!(
            "the web server answered GET /{} → {} ({}) to User-Agent {:?}",
            hit.path,
            hit.status,
            mib(hit.bytes as u64),
            hit.user_agent
        ));
    }
    let mut imported = Vec::new();
    for (disk, task_id) in disks.into_iter().zip(tasks) {
        imported.push(check_import(p, paths, catalog, disk, task_id).await?);
    }
    p.done_in("3 images active, their data in the file store", t);
    Ok(imported)
}

/// Checks and shows what one import task made: task `success`, image
/// `active` with the served size and MD5, one location whose file in the
/// store holds the data.
async fn check_import(
    p: &mut Printer,
    paths: &Paths,
    catalog: &Catalog,
    disk: Disk,
    task_id: String,
) -> anyhow::Result<Imported> {
    let task = catalog
        .get_task(&task_id)
        .await?
        .with_context(|| format!("task {task_id} vanished"))?;
    ensure!(
        task.status == "success",
        "task {task_id} ended {}: {}",
        task.status,
        task.message.unwrap_or_default()
    );
    let image_id = task
        .result
        .as_ref()
        .and_then(|r| r.get("image_id"))
        .and_then(|v| v.as_str())
        .with_context(|| format!("task {task_id} has no image_id in its result"))?
        .to_string();
    p.line(&format!(
        "task {task_id}: status {}, result {}",
        task.status,
        task.result.map(|r| r.to_string()).unwrap_or_default()
    ));
    let img = catalog
        .get_image(&image_id)
        .await?
        .with_context(|| format!("image {image_id} missing"))?;
    ensure!(
        img.status == "active",
        "image {image_id} is {}, not active",
        img.status
    );
    ensure!(
        img.size == Some(disk.data.len() as i64),
        "image {image_id}: size {:?}, served {} bytes",
        img.size,
        disk.data.len()
    );
    ensure!(
        img.checksum.as_deref() == Some(disk.md5().as_str()),
        "image {image_id}: checksum {:?} is not the MD5 of the served bytes",
        img.checksum
    );
    let locs = catalog.image_locations(&image_id).await?;
    let [loc] = locs.as_slice() else {
        bail!("image {image_id} has {} locations, expected 1", locs.len());
    };
    let url = loc.url.clone().map_err(anyhow::Error::msg)?;
    let file = PathBuf::from(url.strip_prefix("file://").unwrap_or(&url));
    let on_disk = std::fs::metadata(&file)
        .with_context(|| format!("stored file {}", file.display()))?
        .len();
    ensure!(
        file.starts_with(&paths.images) && on_disk == disk.data.len() as u64,
        "image {image_id}: stored file {} has {on_disk} bytes",
        file.display()
    );
    p.line(&format!(
        "  image {image_id} \"{}\": status {}, size {}, disk_format {}, checksum {} (MD5 of the served bytes), {} {}…",
        disk.name,
        img.status,
        img.size.unwrap_or_default(),
        img.disk_format.as_deref().unwrap_or("-"),
        img.checksum.as_deref().unwrap_or("-"),
        img.os_hash_algo.as_deref().unwrap_or("-"),
        img.os_hash_value.as_deref().unwrap_or("-").get(..16).unwrap_or("-"),
    ));
    p.line(&format!(
        "    location {} (status {}), {} bytes in the store",
        url, loc.status, on_disk
    ));
    Ok(Imported {
        disk,
        task_id,
        image_id,
        file,
    })
}

/// The API's delayed delete, then the scrubber.
async fn delete_and_scrub(
    p: &mut Printer,
    paths: &Paths,
    catalog: &Catalog,
    doomed: &Imported,
) -> anyhow::Result<()> {
    let id = &doomed.image_id;
    let t = Instant::now();
    p.step(
        "Delete",
        &format!(
            "\"{}\" as glance-api does with delayed_delete = True (DELETE /v2/images/{id})",
            doomed.disk.name
        ),
    );
    let outcome = catalog.delayed_delete_image(id).await?;
    ensure!(
        outcome == DelayedDelete::PendingDelete { locations: 1 },
        "delayed delete of {id}: {outcome:?}"
    );
    let img = catalog.get_image(id).await?.context("image row")?;
    let locs = catalog.image_locations(id).await?;
    p.line(&format!(
        "image {id}: status {}, deleted {}; location: status {}, deleted {}",
        img.status,
        img.deleted,
        locs.first().map(|l| l.status.as_str()).unwrap_or("-"),
        locs.first().map(|l| l.deleted).unwrap_or_default()
    ));
    ensure!(
        doomed.file.is_file(),
        "the data must stay until the scrubber runs"
    );
    p.line(&format!(
        "The data is still in the store ({}): deleting it is the scrubber's job.",
        rel(&doomed.file)
    ));
    p.done_in("image pending_delete, data kept", t);

    let t = Instant::now();
    p.step(
        "Scrub",
        "imaged-scrubber once: delete the data of pending_delete images older than scrub_time (0 here)",
    );
    show::daemon(p, paths, "imaged-scrubber", &["status"], &[0])?;
    show::daemon(p, paths, "imaged-scrubber", &["once"], &[0])?;
    let img = catalog.get_image(id).await?.context("image row")?;
    let locs = catalog.image_locations(id).await?;
    ensure!(
        img.status == "deleted",
        "image {id} is {} after the scrub",
        img.status
    );
    ensure!(
        locs.iter().all(|l| l.status == "deleted"),
        "a location of {id} is not deleted after the scrub"
    );
    ensure!(
        !doomed.file.exists(),
        "{} still exists after the scrub",
        doomed.file.display()
    );
    p.line(&format!(
        "image {id}: status {}; location: status {}; {} is gone.",
        img.status,
        locs.first().map(|l| l.status.as_str()).unwrap_or("-"),
        rel(&doomed.file)
    ));
    p.line(&format!(
        "(task {} that imported it is untouched: tasks expire on their own, after task_time_to_live.)",
        doomed.task_id
    ));
    p.done_in("image deleted, data scrubbed", t);
    Ok(())
}

/// Fills the cache past its limit, then prunes.
fn cache(p: &mut Printer, paths: &Paths, kept: &[Imported]) -> anyhow::Result<()> {
    let t = Instant::now();
    p.step(
        "Cache",
        &format!(
            "cache the two remaining images in {} (image_cache_max_size = {})",
            rel(&paths.cache),
            mib(CACHE_LIMIT)
        ),
    );
    for im in kept {
        show::daemon(p, paths, "imaged-cache", &["queue", &im.image_id], &[0])?;
    }
    show::daemon(p, paths, "imaged-cache", &["prefetch"], &[0])?;
    let before = cached_files(&paths.cache)?;
    let total: u64 = before.values().sum();
    ensure!(
        kept.iter().all(|im| before.contains_key(&im.image_id)),
        "prefetch did not cache both images: {before:?}"
    );
    ensure!(
        total > CACHE_LIMIT,
        "the cache holds {total} bytes, not above its limit"
    );
    show::daemon(p, paths, "imaged-cache", &["stats"], &[0, 1])?;
    p.done_in(
        &format!("{} cached, over the {} limit", mib(total), mib(CACHE_LIMIT)),
        t,
    );

    let t = Instant::now();
    p.step(
        "Prune",
        "imaged-cache prune: evict least recently used images until the cache fits",
    );
    show::daemon(p, paths, "imaged-cache", &["prune"], &[0])?;
    let after = cached_files(&paths.cache)?;
    let total_after: u64 = after.values().sum();
    ensure!(
        total_after <= CACHE_LIMIT,
        "the cache still holds {total_after} bytes"
    );
    let evicted: Vec<&Imported> = kept
        .iter()
        .filter(|im| !after.contains_key(&im.image_id))
        .collect();
    ensure!(
        evicted.len() == 1,
        "expected one eviction, cache now {after:?}"
    );
    show::daemon(p, paths, "imaged-cache", &["stats"], &[0])?;
    p.line(&format!(
        "Evicted \"{}\" ({}), the least recently used; the images stay in the catalog and the store.",
        evicted[0].disk.name, evicted[0].image_id
    ));
    p.done_in(
        &format!(
            "cache {} → {} (limit {})",
            mib(total),
            mib(total_after),
            mib(CACHE_LIMIT)
        ),
        t,
    );
    Ok(())
}

/// Cached image files (uuid-named, directly in the cache directory) and
/// their sizes.
fn cached_files(dir: &Path) -> anyhow::Result<HashMap<String, u64>> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_file() && uuid_like(&name) {
            out.insert(name, e.metadata()?.len());
        }
    }
    Ok(out)
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Creates the working directory, wiping an earlier quick start's.
fn prepare_dir(paths: &Paths) -> anyhow::Result<()> {
    if paths.dir.exists() {
        remove_dir(&paths.dir)?;
    }
    for d in [&paths.dir, &paths.images, &paths.cache, &paths.work] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(
        paths.dir.join(MARKER),
        "made by `cargo xtask quickstart`; wiped by its next run\n",
    )?;
    Ok(())
}

/// Removes a quick start directory; refuses any other non-empty directory.
fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    let ours = dir.join(MARKER).is_file();
    let empty = std::fs::read_dir(dir)
        .map(|mut r| r.next().is_none())
        .unwrap_or(false);
    ensure!(
        ours || empty,
        "{} exists and was not made by the quick start; choose another --dir",
        dir.display()
    );
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}
