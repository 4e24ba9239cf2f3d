//! One test per Glance cache defect that imaged-cache fixes (numbers from the reference's
//! defect list; the centralized_db loop and time skew are in `central`, write-lock patience
//! in `concurrency`).

use std::fs::{self, File};
use std::io::Write;

use imaged_cache::CacheOptions;
use imaged_cache::prefetch::{self, Written};
use imaged_catalog::Engine;
use imaged_catalog::images::{ImageDataUpdate, NewImage};
use imaged_catalog::testing::TestDb;

use crate::harness::{Cache, new_id, u};

async fn active_image(db: &TestDb) -> String {
    db.catalog
        .create_image(&NewImage {
            status: "active".into(),
            ..NewImage::default()
        })
        .await
        .unwrap()
}

/// A cache of `max` bytes whose configuration names `db` as the catalog.
fn with_catalog(db: &TestDb, max: u64) -> Cache {
    Cache::new(max).with_extra(&format!(
        "[database]\nconnection = {}\n",
        db.options.connection
    ))
}

/// 14.2-2: files without rows used to count but never be evicted, so the pruner emptied the
/// tracked cache and still ended above the limit.
#[test]
fn orphans_do_not_make_prune_evict_every_tracked_image() {
    let c = Cache::new(4000).with_extra("[imaged_cache]\norphan_grace = 0\n");
    let tracked = c.glance_cache_many(4, 1000);
    let orphans: Vec<String> = (0..3).map(|_| new_id()).collect();
    for o in &orphans {
        c.glance_write_file(o, 1000);
        c.set_time(&c.path(o), 500_000); // older than every row's last_accessed
    }
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "size_after"), 4000);
    assert!(orphans.iter().all(|o| !c.exists(o)), "old orphans go first");
    assert!(
        tracked.iter().all(|t| c.exists(t)),
        "no tracked image had to go"
    );
}

/// 14.2-6: incomplete/ and invalid/ bytes were invisible while the disk filled.
#[test]
fn incomplete_and_invalid_bytes_count_toward_the_limit() {
    let c = Cache::new(3000);
    let ids = c.glance_cache_many(3, 1000);
    fs::write(c.dir.join("invalid").join(new_id()), vec![0u8; 1000]).unwrap();
    fs::write(c.dir.join("incomplete").join(new_id()), vec![0u8; 500]).unwrap();
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "size_before"), 4500);
    assert_eq!(u(&r, "evicted"), 2);
    assert!(!c.exists(&ids[0]) && !c.exists(&ids[1]) && c.exists(&ids[2]));
}

/// 14.2-6: `stall_time = 0` made Glance's cleaner kill live downloads.
#[test]
fn zero_stall_time_does_not_kill_a_live_download() {
    let c = Cache::new(1 << 20);
    let mut conf = fs::read_to_string(&c.conf).unwrap();
    conf = conf.replace(
        "image_cache_stall_time = 86400",
        "image_cache_stall_time = 0",
    );
    fs::write(&c.conf, conf).unwrap();
    let live = c.dir.join("incomplete").join(new_id());
    let mut w = File::create(&live).unwrap();
    w.write_all(b"partial").unwrap();
    let dead = c.dir.join("incomplete").join(new_id());
    fs::write(&dead, b"crashed").unwrap();
    let (code, r, _) = c.json(&["clean"]);
    assert_eq!(code, 0, "{r}");
    assert!(live.exists() && !dead.exists());
    drop(w);
}

/// 14.1 (bug 1229823 and the lock-less commands): concurrent prunes double-deleted and
/// over-evicted. Two prunes started together evict exactly down to the limit once.
#[test]
fn concurrent_prunes_do_not_over_evict() {
    let c = Cache::new(5000);
    let ids = c.glance_cache_many(10, 1000);
    let a = std::process::Command::new(crate::harness::BIN)
        .arg("--config-file")
        .arg(&c.conf)
        .arg("prune")
        .spawn()
        .unwrap();
    let b = std::process::Command::new(crate::harness::BIN)
        .arg("--config-file")
        .arg(&c.conf)
        .arg("prune")
        .spawn()
        .unwrap();
    for mut p in [a, b] {
        let code = p.wait().unwrap().code();
        assert!(matches!(code, Some(0) | Some(4)), "{code:?}");
    }
    let left: Vec<_> = ids.iter().filter(|i| c.exists(i)).collect();
    assert_eq!(left.len(), 5, "exactly down to the limit, not below");
    assert_eq!(c.row_ids().len(), 5);
}

/// 14.2-14: the commands logged at DEBUG only and exited 0 whatever happened.
#[test]
fn outcomes_are_logged_and_reflected_in_the_exit_code() {
    let c = Cache::new(500);
    let ids = c.glance_cache_many(1, 1000);
    let reader = File::open(c.path(&ids[0])).unwrap();
    let out = c.run(&["prune"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "still over the limit: {stderr}");
    assert!(
        stderr.contains("STILL 500 bytes over the limit"),
        "{stderr}"
    );
    drop(reader);
    let out = c.run(&["prune"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prune: evicted 1 images / 1000 bytes"));
}

/// 14.2-10: queue markers of deleted or non-active images stayed forever.
#[tokio::test(flavor = "multi_thread")]
async fn clean_drops_queue_markers_of_inactive_images() {
    let db = TestDb::new(Engine::Sqlite)
        .await
        .expect("sqlite test catalog");
    let active = active_image(&db).await;
    let queued = db.catalog.create_image(&NewImage::default()).await.unwrap();
    let c = with_catalog(&db, 1 << 20);
    let gone = new_id();
    for id in [&active, &queued, &gone] {
        fs::write(c.dir.join("queue").join(id), b"").unwrap();
    }
    let (code, r, _) = c.json(&["clean"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "queue_removed"), 2);
    assert!(c.dir.join("queue").join(&active).exists());
    assert!(!c.dir.join("queue").join(&queued).exists());
    assert!(!c.dir.join("queue").join(&gone).exists());
    // Queueing checks the catalog too.
    assert_eq!(c.run(&["queue", &queued]).status.code(), Some(2));
}

/// 14.2-5: a partial download left by a crashed writer blocked caching and queueing of its
/// image until the stall time (24 h) passed. One that no process has open and that has not
/// been written for `orphan_grace` is abandoned: queueing accepts the image and clean removes
/// the partial; a partial still open by a writer, or written recently, is kept.
#[test]
fn an_abandoned_download_no_longer_blocks_its_image_until_the_stall_time() {
    let c = Cache::new(1 << 20);
    let inc = c.dir.join("incomplete");
    let (abandoned, live, fresh) = (new_id(), new_id(), new_id());
    for id in [&abandoned, &live, &fresh] {
        fs::write(inc.join(id), b"partial").unwrap();
    }
    let hour = std::time::Duration::from_secs(3600);
    c.age(&inc.join(&abandoned), hour);
    c.age(&inc.join(&live), hour);
    let writer = File::options().append(true).open(inc.join(&live)).unwrap();

    let out = c.run(&["queue", &abandoned]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{abandoned}: Queued")
    );
    let out = c.run(&["queue", &live]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{live}: BeingCached")
    );

    let (code, r, _) = c.json(&["clean"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "abandoned_removed"), 1, "{r}");
    assert_eq!(u(&r, "stalled_removed"), 0, "{r}");
    assert!(!inc.join(&abandoned).exists());
    assert!(inc.join(&live).exists(), "a writer still has it open");
    assert!(inc.join(&fresh).exists(), "written within orphan_grace");
    assert!(c.dir.join("queue").join(&abandoned).exists());
    drop(writer);
}

/// 14.2-8: an image larger than `image_cache_max_size` was cached on every download and
/// evicted on every prune, after pushing every other image out in LRU order. It is evicted
/// first and reported, so the rest of the cache stays; `queue` refuses it.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_larger_than_the_limit_is_evicted_first_and_reported() {
    let db = TestDb::new(Engine::Sqlite)
        .await
        .expect("sqlite test catalog");
    let c = with_catalog(&db, 5000);
    let small = c.glance_cache_many(4, 1000);
    let big = active_image(&db).await;
    db.catalog
        .update_image_data(
            &big,
            &ImageDataUpdate {
                size: Some(6000),
                ..ImageDataUpdate::default()
            },
        )
        .await
        .unwrap();
    // The most recently used image: Glance's LRU would evict every small one before it.
    c.glance_cache(&big, 6000);
    let (code, r, stderr) = tokio::task::block_in_place(|| c.json(&["prune"]));
    assert_eq!(code, 0, "{r} {stderr}");
    assert_eq!(r["oversized"], serde_json::json!([big]));
    assert_eq!(u(&r, "evicted"), 1);
    assert_eq!(u(&r, "size_after"), 4000);
    assert!(!c.exists(&big) && !c.has_row(&big));
    assert!(
        small.iter().all(|s| c.exists(s)),
        "the rest of the cache stays"
    );
    assert!(
        stderr.contains("larger than image_cache_max_size"),
        "{stderr}"
    );

    let out = tokio::task::block_in_place(|| c.run(&["queue", &big]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than image_cache_max_size"));
    assert!(!c.dir.join("queue").join(&big).exists());
}

/// Starts `write_image` of `id` fed through a channel, and waits until its partial exists.
async fn start_write(
    c: &Cache,
    id: &str,
    checksum: String,
) -> (
    futures::channel::mpsc::UnboundedSender<std::io::Result<Vec<u8>>>,
    tokio::task::JoinHandle<Written>,
) {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let opts = CacheOptions::new(&c.dir);
    let id2 = id.to_owned();
    let task = tokio::spawn(async move {
        prefetch::write_image(&opts, &id2, rx, Some(&checksum))
            .await
            .unwrap()
    });
    tx.unbounded_send(Ok(b"first ".to_vec())).unwrap();
    let part = c.dir.join("incomplete").join(id);
    while !fs::metadata(&part).is_ok_and(|m| m.len() > 0) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    (tx, task)
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

/// 14.2-9: two writers of one image could interleave, and the loser's rollback deleted the
/// winner's row. A copy another writer commits while prefetch is writing keeps its file and
/// its row, whether prefetch then fails (its partial goes to invalid/) or succeeds (its copy
/// is discarded instead of renamed over the committed one).
#[tokio::test(flavor = "multi_thread")]
async fn prefetch_never_replaces_nor_unrows_a_copy_another_writer_committed() {
    let c = Cache::new(1 << 20);
    let full = b"first second".to_vec();
    for fails in [true, false] {
        let id = new_id();
        let (tx, task) = start_write(&c, &id, md5_hex(&full)).await;
        // The other writer commits first: file renamed into place, then its row.
        fs::write(c.path(&id), b"their copy").unwrap();
        c.glance_conn()
            .execute(
                "INSERT INTO cached_images (image_id, last_accessed, last_modified, hits, size) VALUES (?1, 1.0, 1.0, 0, 10)",
                [&id],
            )
            .unwrap();
        if fails {
            tx.unbounded_send(Err(std::io::Error::other("backend disconnected")))
                .unwrap();
        } else {
            tx.unbounded_send(Ok(b"second".to_vec())).unwrap();
        }
        drop(tx);
        let outcome = task.await.unwrap();
        assert_eq!(fs::read(c.path(&id)).unwrap(), b"their copy");
        assert!(c.has_row(&id), "the winner's row stays");
        assert!(!c.dir.join("incomplete").join(&id).exists());
        if fails {
            assert!(matches!(outcome, Written::Failed(_)), "{outcome:?}");
            assert_eq!(
                fs::read(c.dir.join("invalid").join(&id)).unwrap(),
                b"first "
            );
        } else {
            assert_eq!(outcome, Written::AlreadyCached);
            assert!(!c.dir.join("invalid").join(&id).exists());
        }
    }
}

/// 14.2-9: a second writer (Glance opens `incomplete/<id>` without `O_EXCL`) that opens the
/// partial while prefetch writes would interleave its bytes with ours. Prefetch then commits
/// nothing: the partial is moved out of incomplete/, so neither copy is cached corrupt.
#[tokio::test(flavor = "multi_thread")]
async fn prefetch_commits_nothing_when_another_writer_opens_its_partial() {
    let c = Cache::new(1 << 20);
    let id = new_id();
    let full = b"first second".to_vec();
    let (tx, task) = start_write(&c, &id, md5_hex(&full)).await;
    let part = c.dir.join("incomplete").join(&id);
    let mut other = std::process::Command::new("sh")
        .args(["-c", "exec 3>>\"$0\"; echo ready; exec sleep 60"])
        .arg(&part)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(other.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    tx.unbounded_send(Ok(b"second".to_vec())).unwrap();
    drop(tx);
    let outcome = task.await.unwrap();
    other.kill().unwrap();
    other.wait().unwrap();
    match &outcome {
        Written::Failed(msg) => assert!(msg.contains("another writer"), "{msg}"),
        o => panic!("committed despite a second writer: {o:?}"),
    }
    assert!(!c.exists(&id) && !c.has_row(&id));
    assert!(!part.exists());
    assert!(c.dir.join("invalid").join(&id).exists());
}

/// 14.2-11: cached copies of images deleted through another node lingered until LRU
/// eviction. Clean evicts copies of images the catalog says are deleted, gone or not
/// active, and evicts nothing when the catalog cannot be reached.
#[tokio::test(flavor = "multi_thread")]
async fn clean_evicts_copies_of_deleted_images_only_when_the_catalog_answers() {
    let db = TestDb::new(Engine::Sqlite)
        .await
        .expect("sqlite test catalog");
    let (active, deleted) = (active_image(&db).await, active_image(&db).await);
    db.catalog.delayed_delete_image(&deleted).await.unwrap();
    let purged = new_id(); // no catalog row at all
    let unreachable = Cache::new(1 << 20).with_extra(
        "[database]\nconnection = sqlite:////nonexistent-imaged-test-dir/glance.sqlite\n",
    );
    for id in [&active, &deleted, &purged] {
        unreachable.glance_cache(id, 100);
    }
    let (code, r, stderr) = tokio::task::block_in_place(|| unreachable.json(&["clean"]));
    assert_eq!(code, 0, "{r} {stderr}");
    assert_eq!(u(&r, "inactive_evicted"), 0, "{r}");
    for id in [&active, &deleted, &purged] {
        assert!(unreachable.exists(id) && unreachable.has_row(id));
    }

    let c = with_catalog(&db, 1 << 20);
    for id in [&active, &deleted, &purged] {
        c.glance_cache(id, 100);
    }
    let (code, r, stderr) = tokio::task::block_in_place(|| c.json(&["clean"]));
    assert_eq!(code, 0, "{r} {stderr}");
    assert_eq!(u(&r, "inactive_evicted"), 2, "{r}");
    assert_eq!(u(&r, "inactive_bytes"), 200, "{r}");
    assert!(c.exists(&active) && c.has_row(&active));
    for id in [&deleted, &purged] {
        assert!(!c.exists(id) && !c.has_row(id), "{id}");
    }
}
