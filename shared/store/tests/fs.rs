//! Filesystem backend against real directories: round trips, confinement attacks, size caps,
//! routing between several data directories and multi-store backends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use imaged_store::{
    BackendOptions, BackendType, ErrorClass, ErrorKind, FilesystemOptions, Location, Store,
    StoreMode, StoreOptions, Timeouts, WriteOptions,
};

fn single(dir: &Path) -> Store {
    Store::new(StoreOptions {
        mode: StoreMode::Single {
            default_store: BackendType::File,
            filesystem: Some(FilesystemOptions::with_datadir(dir)),
            s3: None,
        },
        timeouts: Timeouts::default(),
    })
    .unwrap()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn file_url(p: &Path) -> String {
    format!("file://{}", p.display())
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn write_read_delete_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = tmp.path().join("images");
    let store = single(&datadir);
    let data = pattern(3 * 1024 * 1024 + 17);
    let seen = Mutex::new(Vec::new());
    let progress = |n: u64| seen.lock().unwrap().push(n);
    let written = store
        .write(
            "img-1",
            &data[..],
            WriteOptions {
                progress: Some(&progress),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(written.size, data.len() as u64);
    assert_eq!(written.url, file_url(&datadir.join("img-1")));
    assert_eq!(
        written.store, None,
        "single-store writes carry no store name"
    );
    assert_eq!(std::fs::read(datadir.join("img-1")).unwrap(), data);
    assert_eq!(
        list(&datadir),
        vec!["img-1".to_string()],
        "no temp file left"
    );
    let seen = seen.into_inner().unwrap();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(seen.last().copied(), Some(data.len() as u64));

    let loc = Location::new(&written.url).with_image_id("img-1");
    let stream = store.open_read(&loc).await.unwrap();
    assert_eq!(stream.size(), Some(data.len() as u64));
    assert_eq!(stream.collect_all().await.unwrap(), data);

    store.delete(&loc).await.unwrap();
    assert!(!datadir.join("img-1").exists());
    let again = store.delete(&loc).await.unwrap_err();
    assert_eq!(again.class(), ErrorClass::NotFound, "{again}");
    let read = store.open_read(&loc).await.unwrap_err();
    assert_eq!(read.class(), ErrorClass::NotFound, "{read}");
}

#[tokio::test]
async fn async_read_adapter_streams_the_same_bytes() {
    use tokio::io::AsyncReadExt;
    let tmp = tempfile::tempdir().unwrap();
    let store = single(tmp.path());
    let data = pattern(2_500_000);
    let w = store
        .write("img-r", &data[..], WriteOptions::default())
        .await
        .unwrap();
    let mut r = store
        .open_read(&Location::new(&w.url))
        .await
        .unwrap()
        .into_async_read();
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, data);
}

#[tokio::test]
async fn empty_image_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let store = single(tmp.path());
    let w = store
        .write("empty", &b""[..], WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(w.size, 0);
    let got = store
        .open_read(&Location::new(&w.url))
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert!(got.is_empty());
}

#[tokio::test]
async fn writing_an_existing_image_is_refused_and_keeps_the_old_data() {
    let tmp = tempfile::tempdir().unwrap();
    let store = single(tmp.path());
    store
        .write("dup", &b"first"[..], WriteOptions::default())
        .await
        .unwrap();
    let err = store
        .write("dup", &b"second"[..], WriteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(err.kind(), &ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(tmp.path().join("dup")).unwrap(), b"first");
    assert_eq!(list(tmp.path()), vec!["dup".to_string()]);
}

/// Data handed over as chunks: large and small chunks in any mix are written in order, the
/// progress callback sees every byte, and a failing chunk ends the write with nothing left.
#[tokio::test]
async fn chunk_stream_writes_in_order_and_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let store = single(tmp.path());
    let data = pattern(5 * 1024 * 1024 + 333);
    // 2 MiB, then 1-byte and 100 KiB pieces, then the rest in one chunk.
    let mut cuts = vec![0, 2 << 20, (2 << 20) + 1];
    while *cuts.last().unwrap() < (4 << 20) {
        cuts.push(cuts.last().unwrap() + 100 * 1024);
    }
    cuts.push(data.len());
    let chunks: Vec<std::io::Result<bytes::Bytes>> = cuts
        .windows(2)
        .map(|w| Ok(bytes::Bytes::copy_from_slice(&data[w[0]..w[1]])))
        .collect();
    let last = std::sync::atomic::AtomicU64::new(0);
    let progress = |n: u64| last.store(n, std::sync::atomic::Ordering::Relaxed);
    let w = store
        .write_chunks(
            "chunked",
            futures::stream::iter(chunks),
            WriteOptions {
                progress: Some(&progress),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(w.size, data.len() as u64);
    assert_eq!(last.into_inner(), data.len() as u64);
    assert_eq!(std::fs::read(tmp.path().join("chunked")).unwrap(), data);

    let failing: Vec<std::io::Result<bytes::Bytes>> = vec![
        Ok(bytes::Bytes::from(vec![1u8; 3 << 20])),
        Err(std::io::Error::other("connection reset")),
    ];
    let err = store
        .write_chunks(
            "cut",
            futures::stream::iter(failing),
            WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert_eq!(list(tmp.path()), vec!["chunked".to_string()]);
}

#[tokio::test]
async fn size_cap_aborts_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let store = single(tmp.path());
    let data = pattern(3 * 1024 * 1024);
    let err = store
        .write(
            "capped",
            &data[..],
            WriteOptions {
                size_cap: Some(2 * 1024 * 1024 + 5),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(err.kind(), &ErrorKind::SizeCapExceeded);
    assert!(list(tmp.path()).is_empty(), "{:?}", list(tmp.path()));

    // Exactly at the cap is allowed.
    let w = store
        .write(
            "at-cap",
            &data[..],
            WriteOptions {
                size_cap: Some(data.len() as u64),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(w.size, data.len() as u64);
}

#[tokio::test]
async fn bad_image_ids_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = single(&tmp.path().join("d"));
    for id in ["", "..", "../escape", "a/b", ".hidden"] {
        let err = store
            .write(id, &b"x"[..], WriteOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent, "{id:?}");
    }
    assert!(!tmp.path().join("escape").exists());
}

#[tokio::test]
async fn stalled_source_times_out_as_transient_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(StoreOptions {
        mode: StoreMode::Single {
            default_store: BackendType::File,
            filesystem: Some(FilesystemOptions::with_datadir(tmp.path())),
            s3: None,
        },
        timeouts: Timeouts {
            stall: Duration::from_millis(300),
            ..Timeouts::default()
        },
    })
    .unwrap();
    let (mut tx, rx) = tokio::io::duplex(1024);
    tokio::io::AsyncWriteExt::write_all(&mut tx, b"some bytes")
        .await
        .unwrap();
    // `tx` stays open and silent: the write must give up on its own.
    let err = store
        .write("stalled", rx, WriteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert_eq!(err.kind(), &ErrorKind::Timeout);
    assert!(list(tmp.path()).is_empty(), "{:?}", list(tmp.path()));
    drop(tx);
}

struct Attack {
    _tmp: tempfile::TempDir,
    datadir: PathBuf,
    outside: PathBuf,
    victim: PathBuf,
    store: Store,
}

fn attack_setup() -> Attack {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = tmp.path().join("images");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&datadir).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    std::fs::write(&victim, b"not image data").unwrap();
    let store = single(&datadir);
    Attack {
        _tmp: tmp,
        datadir,
        outside,
        victim,
        store,
    }
}

async fn assert_refused(a: &Attack, url: &str) {
    let loc = Location::new(url).with_image_id("attack-image");
    let del = a.store.delete(&loc).await.unwrap_err();
    assert_eq!(del.class(), ErrorClass::Permanent, "delete {url}: {del}");
    assert_eq!(del.kind(), &ErrorKind::OutsideStore, "delete {url}: {del}");
    let read = a.store.open_read(&loc).await.unwrap_err();
    assert_eq!(read.class(), ErrorClass::Permanent, "read {url}: {read}");
    assert!(a.victim.exists(), "{url} deleted the victim");
    assert_eq!(std::fs::read(&a.victim).unwrap(), b"not image data");
}

#[tokio::test]
async fn absolute_path_outside_is_refused() {
    let a = attack_setup();
    assert_refused(&a, &file_url(&a.victim)).await;
    assert_refused(&a, "file:///etc/passwd").await;
    assert!(Path::new("/etc/passwd").exists());
}

#[tokio::test]
async fn dot_dot_segments_are_refused() {
    let a = attack_setup();
    let url = format!("file://{}/../outside/victim", a.datadir.display());
    assert_refused(&a, &url).await;
    let url = format!("file://{}/./x/../../outside/victim", a.datadir.display());
    assert_refused(&a, &url).await;
}

#[tokio::test]
async fn percent_encoded_traversal_is_refused() {
    let a = attack_setup();
    for enc in ["%2e%2e", "%2E%2E", ".%2e", "..%2fx"] {
        let url = format!("file://{}/{enc}/outside/victim", a.datadir.display());
        assert_refused(&a, &url).await;
    }
    let url = format!("file://{}%2f..%2foutside%2fvictim", a.datadir.display());
    assert_refused(&a, &url).await;
}

#[tokio::test]
async fn symlink_escapes_are_refused() {
    let a = attack_setup();
    let link = a.datadir.join("img-link");
    std::os::unix::fs::symlink(&a.victim, &link).unwrap();
    assert_refused(&a, &file_url(&link)).await;
    assert!(
        link.symlink_metadata().is_ok(),
        "the symlink itself is left alone"
    );

    let dirlink = a.datadir.join("sub");
    std::os::unix::fs::symlink(&a.outside, &dirlink).unwrap();
    assert_refused(&a, &file_url(&dirlink.join("victim"))).await;
}

#[tokio::test]
async fn sibling_directory_with_common_prefix_is_outside() {
    let a = attack_setup();
    let sibling = PathBuf::from(format!("{}2", a.datadir.display()));
    std::fs::create_dir_all(&sibling).unwrap();
    let f = sibling.join("x");
    std::fs::write(&f, b"x").unwrap();
    let err = a
        .store
        .delete(&Location::new(file_url(&f)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::OutsideStore);
    assert!(f.exists());
}

#[tokio::test]
async fn directories_and_the_datadir_itself_are_permanent() {
    let a = attack_setup();
    std::fs::create_dir_all(a.datadir.join("adir")).unwrap();
    let err = a
        .store
        .delete(&Location::new(file_url(&a.datadir.join("adir"))))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(err.kind(), &ErrorKind::NotAFile);
    assert!(a.datadir.join("adir").is_dir());
    let err = a
        .store
        .delete(&Location::new(file_url(&a.datadir)))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert!(a.datadir.is_dir());
}

#[tokio::test]
async fn datadir_reached_through_a_symlink_still_works() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::create_dir_all(&real).unwrap();
    let link = tmp.path().join("images");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let store = single(&link);
    let w = store
        .write("via-link", &b"data"[..], WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(w.url, file_url(&link.join("via-link")));
    assert!(real.join("via-link").exists());
    store.delete(&Location::new(&w.url)).await.unwrap();
    assert!(!real.join("via-link").exists());
}

#[tokio::test]
async fn datadirs_priority_decides_where_writes_go() {
    let tmp = tempfile::tempdir().unwrap();
    let low = tmp.path().join("low");
    let high = tmp.path().join("high");
    let store = Store::new(StoreOptions {
        mode: StoreMode::Single {
            default_store: BackendType::File,
            filesystem: Some(FilesystemOptions {
                datadir: None,
                datadirs: vec![(low.clone(), 0), (high.clone(), 100)],
                file_perm: 0o640,
                chunk_size: 0,
                direct_io: true,
            }),
            s3: None,
        },
        timeouts: Timeouts::default(),
    })
    .unwrap();
    let w = store
        .write("p1", &b"abc"[..], WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(w.url, file_url(&high.join("p1")));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(high.join("p1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);

    // Too big for any directory: refused before writing anything.
    let err = store
        .write(
            "huge",
            &b"abc"[..],
            WriteOptions {
                size_hint: Some(u64::MAX / 2),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::NoSpace);

    // Both directories are readable and deletable.
    std::fs::write(low.join("old"), b"old").unwrap();
    store
        .delete(&Location::new(file_url(&low.join("old"))))
        .await
        .unwrap();
    store.delete(&Location::new(&w.url)).await.unwrap();
}

fn multi(a: &Path, b: &Path) -> Store {
    let mut backends = BTreeMap::new();
    backends.insert(
        "fast".to_string(),
        BackendOptions::File(FilesystemOptions::with_datadir(a)),
    );
    backends.insert(
        "cheap".to_string(),
        BackendOptions::File(FilesystemOptions::with_datadir(b)),
    );
    backends.insert(
        "ceph".to_string(),
        BackendOptions::Unsupported(BackendType::Rbd),
    );
    backends.insert("web".to_string(), BackendOptions::Http);
    Store::new(StoreOptions {
        mode: StoreMode::Multi {
            backends,
            default_backend: Some("fast".into()),
        },
        timeouts: Timeouts::default(),
    })
    .unwrap()
}

#[tokio::test]
async fn multi_store_routes_by_store_key_and_by_path() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let store = multi(&a, &b);

    let w1 = store
        .write("m1", &b"one"[..], WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(w1.store.as_deref(), Some("fast"));
    assert_eq!(w1.url, file_url(&a.join("m1")));
    let w2 = store
        .write(
            "m2",
            &b"two"[..],
            WriteOptions {
                backend: Some("cheap"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(w2.store.as_deref(), Some("cheap"));
    assert_eq!(w2.url, file_url(&b.join("m2")));

    // The store key must match the backend that holds the path: the "fast" backend
    // refuses a file of the "cheap" directory.
    let wrong = Location::new(&w2.url).with_store("fast");
    let err = store.delete(&wrong).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::OutsideStore);
    assert!(b.join("m2").exists());

    // Without a store key (pre-multi-store rows) the path picks the backend.
    store.delete(&Location::new(&w2.url)).await.unwrap();
    assert!(!b.join("m2").exists());
    store
        .delete(&Location::new(&w1.url).with_store("fast"))
        .await
        .unwrap();

    let err = store
        .delete(&Location::new(&w1.url).with_store("nonexistent"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(err.kind(), &ErrorKind::UnknownBackend);

    let err = store
        .delete(&Location::new(&w1.url).with_store("ceph"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(err.kind(), &ErrorKind::BackendNotSupported);

    let err = store
        .write(
            "m3",
            &b"x"[..],
            WriteOptions {
                backend: Some("ceph"),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::BackendNotSupported);
    let err = store
        .write(
            "m3",
            &b"x"[..],
            WriteOptions {
                backend: Some("web"),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::OperationNotSupported);
}

#[tokio::test]
async fn unsupported_and_unknown_schemes_fail_permanently() {
    let tmp = tempfile::tempdir().unwrap();
    let store = single(tmp.path());
    let id = "6b1e2b3c-1d2e-4f50-8a9b-0c1d2e3f4a5b";
    let cases = [
        (
            "rbd://fsid/images/img/snap".to_string(),
            ErrorKind::BackendNotSupported,
        ),
        ("rbd://img".to_string(), ErrorKind::BackendNotSupported),
        (
            "swift://u:k@auth.example/v1/c/o".to_string(),
            ErrorKind::BackendNotSupported,
        ),
        (
            "swift+https://u:k@auth.example/v1/c/o".to_string(),
            ErrorKind::BackendNotSupported,
        ),
        (
            "swift+config://ref/c/o".to_string(),
            ErrorKind::BackendNotSupported,
        ),
        (format!("cinder://{id}"), ErrorKind::BackendNotSupported),
        (
            "vsphere://vc/folder/x?dcPath=d&dsName=s".to_string(),
            ErrorKind::BackendNotSupported,
        ),
        ("gopher://x/y".to_string(), ErrorKind::UnknownScheme),
        ("rbd://a/b".to_string(), ErrorKind::MalformedUri),
        ("no scheme at all".to_string(), ErrorKind::MalformedUri),
        ("s3://host/only-bucket".to_string(), ErrorKind::MalformedUri),
        // No S3 backend configured in this single-store file-only setup.
        ("s3://h/b/k".to_string(), ErrorKind::UnknownBackend),
    ];
    for (url, kind) in cases {
        let loc = Location::new(&url);
        let err = store.delete(&loc).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent, "{url}: {err}");
        assert_eq!(err.kind(), &kind, "{url}: {err}");
        let err = store.open_read(&loc).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent, "{url}: {err}");
        assert!(!err.to_string().contains(":k@"), "{err}");
    }
}

#[tokio::test]
async fn stale_temp_files_are_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let store = single(tmp.path());
    std::fs::write(tmp.path().join(".abc.imaged-tmp-123"), b"partial").unwrap();
    std::fs::write(tmp.path().join("real-image"), b"keep").unwrap();
    assert_eq!(
        store
            .remove_stale_temp_files(Duration::from_secs(3600))
            .await
            .unwrap(),
        0,
        "too young to remove"
    );
    assert_eq!(
        store.remove_stale_temp_files(Duration::ZERO).await.unwrap(),
        1
    );
    assert_eq!(list(tmp.path()), vec!["real-image".to_string()]);
}

/// `delete_many` reports each location exactly as `delete` would, in input order: deleted
/// files, missing ones, refused paths, non-file locations and unsupported schemes side by side.
#[tokio::test]
async fn delete_many_matches_delete_per_location() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let outside = tmp.path().join("victim");
    std::fs::write(&outside, b"keep").unwrap();
    for name in ["a", "b"] {
        std::fs::write(dir.join(name), b"x").unwrap();
    }
    std::fs::create_dir(dir.join("sub")).unwrap();
    let store = single(&dir);
    let locs = vec![
        Location::new(file_url(&dir.join("a"))).with_image_id("img-a"),
        Location::new(file_url(&dir.join("missing"))),
        Location::new(file_url(&outside)),
        Location::new("http://example.invalid/x"),
        Location::new(file_url(&dir.join("sub"))),
        Location::new(file_url(&dir.join("b"))),
    ];
    let got = store.delete_many(&locs).await;
    assert_eq!(got.len(), locs.len());
    assert!(got[0].is_ok(), "{:?}", got[0]);
    assert!(got[1].as_ref().unwrap_err().is_not_found());
    assert_eq!(
        got[2].as_ref().unwrap_err().kind(),
        &ErrorKind::OutsideStore
    );
    assert_eq!(got[3].as_ref().unwrap_err().class(), ErrorClass::Permanent);
    assert_eq!(got[4].as_ref().unwrap_err().kind(), &ErrorKind::NotAFile);
    assert!(got[5].is_ok(), "{:?}", got[5]);
    assert_eq!(list(&dir), vec!["sub".to_string()]);
    assert!(outside.exists());
    assert!(store.delete_many(&[]).await.is_empty());
}

fn store_with_chunk(dir: &Path, chunk_size: usize) -> Store {
    Store::new(StoreOptions {
        mode: StoreMode::Single {
            default_store: BackendType::File,
            filesystem: Some(FilesystemOptions {
                chunk_size,
                ..FilesystemOptions::with_datadir(dir)
            }),
            s3: None,
        },
        timeouts: Timeouts::default(),
    })
    .unwrap()
}

/// Sizes around the 4 KiB direct-I/O block and the 1 MiB staging buffer, with chunk sizes that
/// are not multiples of the block size, each read back byte for byte.
async fn round_trip_sizes(dir: &Path) {
    let sizes = [
        0,
        1,
        4095,
        4096,
        4097,
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 123,
        3 * (1 << 20) + 4097,
    ];
    for chunk in [0, 5000, 64 * 1024 + 1] {
        let store = store_with_chunk(dir, chunk);
        for size in sizes {
            let id = format!("img-{chunk}-{size}");
            let data = pattern(size);
            let w = store
                .write(&id, &data[..], WriteOptions::default())
                .await
                .unwrap();
            assert_eq!(w.size, size as u64, "{id}");
            let on_disk = std::fs::read(dir.join(&id)).unwrap();
            assert!(on_disk == data, "{id}: content differs");
            let read = store
                .open_read(&Location::new(&w.url))
                .await
                .unwrap()
                .collect_all()
                .await
                .unwrap();
            assert!(read == data, "{id}: read back differs");
            store.delete(&Location::new(&w.url)).await.unwrap();
        }
    }
    assert!(list(dir).is_empty(), "{:?}", list(dir));
}

#[tokio::test]
async fn odd_sizes_round_trip_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    round_trip_sizes(tmp.path()).await;
}

/// tmpfs: without direct I/O before Linux 6.6 (the writes fall back to the page cache), with
/// an O_DIRECT that has no alignment rules since. Either way the data must arrive intact.
#[tokio::test]
async fn odd_sizes_round_trip_on_tmpfs() {
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "/dev/shm is missing");
    let tmp = tempfile::tempdir_in(shm).unwrap();
    round_trip_sizes(tmp.path()).await;
}

#[tokio::test]
async fn buffered_writes_when_direct_io_is_off() {
    let tmp = tempfile::tempdir().unwrap();
    let store = buffered_store(tmp.path());
    let data = pattern(2 * (1 << 20) + 4097);
    let w = store
        .write("buffered", &data[..], WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(w.size, data.len() as u64);
    assert!(std::fs::read(tmp.path().join("buffered")).unwrap() == data);
    assert_eq!(list(tmp.path()), vec!["buffered".to_string()]);
}

/// A single-store filesystem backend on `dir` with direct I/O off.
fn buffered_store(dir: &Path) -> Store {
    Store::new(StoreOptions {
        mode: StoreMode::Single {
            default_store: BackendType::File,
            filesystem: Some(FilesystemOptions {
                direct_io: false,
                ..FilesystemOptions::with_datadir(dir)
            }),
            s3: None,
        },
        timeouts: Timeouts::default(),
    })
    .unwrap()
}

/// A buffered write long enough for the write-back helper to start (every
/// 32 MiB) is whole on disk.
#[tokio::test]
async fn buffered_write_past_the_write_back_step_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let store = buffered_store(tmp.path());
    let data = pattern(70 * (1 << 20) + 17);
    let w = store
        .write("long", &data[..], WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(w.size, data.len() as u64);
    assert!(std::fs::read(tmp.path().join("long")).unwrap() == data);
    assert_eq!(list(tmp.path()), vec!["long".to_string()]);
}

/// The cap falls in the middle of a staged (not yet written) buffer, after earlier buffers have
/// gone to disk directly: nothing may remain, and a retry under the same id must succeed.
#[tokio::test]
async fn size_cap_mid_direct_write_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_chunk(tmp.path(), 5000);
    let data = pattern(5 * (1 << 20) + 3);
    let cap = 3 * (1 << 20) + 12_345;
    let err = store
        .write(
            "capped-direct",
            &data[..],
            WriteOptions {
                size_cap: Some(cap),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::SizeCapExceeded, "{err}");
    assert!(list(tmp.path()).is_empty(), "{:?}", list(tmp.path()));

    let w = store
        .write(
            "capped-direct",
            &data[..cap as usize],
            WriteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(w.size, cap);
    assert!(std::fs::read(tmp.path().join("capped-direct")).unwrap() == data[..cap as usize]);
}
