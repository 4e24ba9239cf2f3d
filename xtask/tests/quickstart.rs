//! The quick start end to end: `cargo xtask quickstart` run on the daemon
//! binaries of this build (`--bin-dir`), then checked from outside — the
//! catalog, the file store and the image cache it leaves behind with
//! `--keep`.
//!
//! The daemons are the ones next to this package's own binary (`cargo test
//! --workspace` builds them there for their end-to-end tests); when they are
//! missing, as after `cargo test -p xtask` on a fresh tree, the quick start
//! builds them itself, as `cargo xtask quickstart` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use imaged_catalog::tasks::TaskFilter;
use imaged_catalog::{Catalog, CatalogOptions};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");
const DAEMONS: [&str; 3] = ["imaged-tasks", "imaged-scrubber", "imaged-cache"];
const MIB: u64 = 1 << 20;

fn bin_dir() -> PathBuf {
    Path::new(XTASK).parent().unwrap().to_path_buf()
}

/// Whether the daemons still have to be built (then the quick start builds
/// them itself, into the same directory).
fn daemons_missing() -> bool {
    let dir = bin_dir();
    !DAEMONS.iter().all(|d| dir.join(d).is_file())
}

/// Uuid-named files of a directory with their sizes.
fn image_files(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e))
        .filter(|(n, _)| uuid::Uuid::parse_str(n).is_ok())
        .map(|(n, e)| (n, e.metadata().unwrap().len()))
        .collect()
}

#[tokio::test]
async fn quickstart_walks_import_delete_scrub_cache_prune() {
    let build = daemons_missing();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qs");
    let mut cmd = Command::new(XTASK);
    cmd.args(["quickstart", "--keep", "--dir"]).arg(&dir);
    if !build {
        cmd.arg("--bin-dir").arg(bin_dir());
    }
    let out = cmd.env_remove("NOTIFY_SOCKET").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quick start failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Every step printed its header and its check mark.
    for step in [
        "[1] Build",
        "[2] Set up",
        "[3] Enqueue",
        "[4] Import",
        "[5] Delete",
        "[6] Scrub",
        "[7] Cache",
        "[8] Prune",
    ] {
        assert!(stdout.contains(step), "{step} missing from:\n{stdout}");
    }
    let checks = if build { 8 } else { 7 };
    assert_eq!(stdout.matches("    ✓ ").count(), checks, "{stdout}");
    assert!(stdout.contains("All steps passed"), "{stdout}");

    // The catalog: three successful import tasks; one image deleted and
    // scrubbed, two active with their data in the store.
    let url = format!("sqlite:///{}", dir.join("glance.sqlite").display());
    let cat = Catalog::open(CatalogOptions::new(url)).await.unwrap();
    let tasks = cat.list_tasks(&TaskFilter::default()).await.unwrap();
    assert_eq!(tasks.len(), 3);
    let stored = image_files(&dir.join("images"));
    let mut active = Vec::new();
    let mut deleted = Vec::new();
    for t in &tasks {
        assert_eq!(
            (t.task_type.as_str(), t.status.as_str(), t.owner.as_str()),
            ("import", "success", "demo-project")
        );
        let id = t.result.as_ref().unwrap()["image_id"].as_str().unwrap();
        let img = cat.get_image(id).await.unwrap().unwrap();
        let locs = cat.image_locations(id).await.unwrap();
        assert_eq!(locs.len(), 1);
        match (img.status.as_str(), img.deleted) {
            ("active", false) => {
                assert_eq!(locs[0].status, "active");
                assert_eq!(stored.get(id).copied(), img.size.map(|s| s as u64));
                active.push(id.to_string());
            }
            ("deleted", true) => {
                assert_eq!(
                    (locs[0].status.as_str(), locs[0].deleted),
                    ("deleted", true)
                );
                assert!(!stored.contains_key(id), "scrubbed data still stored");
                deleted.push(id.to_string());
            }
            other => panic!("image {id} left {other:?}"),
        }
    }
    assert_eq!((active.len(), deleted.len()), (2, 1));
    assert_eq!(stored.len(), 2, "{stored:?}");
    cat.close().await;

    // The cache: pruned from two 3 MiB images to one, under its 5 MiB limit.
    let cached = image_files(&dir.join("image-cache"));
    assert_eq!(cached.len(), 1, "{cached:?}");
    let (id, size) = cached.iter().next().unwrap();
    assert!(active.contains(id));
    assert!(*size <= 5 * MIB);
    assert_eq!(*size, 3 * MIB);
}
