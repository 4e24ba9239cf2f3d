//! Prefetch through imaged-store: queued images are fetched from a filesystem store,
//! checked against the catalog's MD5 and committed as Glance's write path does.

use std::fs;

use imaged_catalog::Engine;
use imaged_catalog::images::{ImageDataUpdate, NewImage};
use imaged_catalog::testing::TestDb;
use md5::{Digest, Md5};

use crate::harness::{Cache, now, u};

async fn image(
    db: &TestDb,
    datadir: &std::path::Path,
    data: &[u8],
    checksum: String,
    status: &str,
) -> String {
    let id = db
        .catalog
        .create_image(&NewImage {
            status: status.into(),
            ..NewImage::default()
        })
        .await
        .unwrap();
    let path = datadir.join(&id);
    fs::write(&path, data).unwrap();
    db.catalog
        .update_image_data(
            &id,
            &ImageDataUpdate {
                checksum: Some(checksum),
                size: Some(data.len() as i64),
                ..ImageDataUpdate::default()
            },
        )
        .await
        .unwrap();
    db.catalog
        .add_location(
            &id,
            &format!("file://{}", path.display()),
            &serde_json::json!({}),
            "active",
        )
        .await
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_caches_verified_images_and_quarantines_bad_ones() {
    let db = TestDb::new(Engine::Sqlite).await.expect("sqlite catalog");
    let store_dir = tempfile::tempdir().unwrap();
    let datadir = store_dir.path().join("images");
    fs::create_dir_all(&datadir).unwrap();
    let c = Cache::new(1 << 30).with_extra(&format!(
        "[database]\nconnection = {}\n[glance_store]\nstores = file\ndefault_store = file\nfilesystem_store_datadir = {}\n",
        db.options.connection,
        datadir.display()
    ));
    let good_data = vec![42u8; 3 * 1024 * 1024 + 17];
    let good = image(
        &db,
        &datadir,
        &good_data,
        hex::encode(Md5::digest(&good_data)),
        "active",
    )
    .await;
    let bad = image(&db, &datadir, b"tampered", "0".repeat(32), "active").await;
    let inactive = image(
        &db,
        &datadir,
        b"x",
        hex::encode(Md5::digest(b"x")),
        "queued",
    )
    .await;
    for id in [&good, &bad, &inactive] {
        fs::write(c.dir.join("queue").join(id), b"").unwrap();
    }
    let before = now();
    let (code, r, stderr) = tokio::task::block_in_place(|| c.json(&["prefetch"]));
    assert_eq!(code, 1, "a failed fetch is reported: {r} {stderr}");
    assert_eq!(u(&r, "prefetched"), 1);
    assert_eq!(u(&r, "failed"), 1);
    assert_eq!(u(&r, "not_cacheable"), 1);
    assert_eq!(fs::read(c.path(&good)).unwrap(), good_data);
    assert!(!c.dir.join("queue").join(&good).exists());
    let la: f64 = c
        .glance_conn()
        .query_row(
            "SELECT last_accessed FROM cached_images WHERE image_id = ?1",
            [&good],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        la >= before - 1.0,
        "new rows are not born old (bug 1438564)"
    );
    assert!(!c.exists(&bad));
    assert_eq!(
        fs::read(c.dir.join("invalid").join(&bad)).unwrap(),
        b"tampered"
    );
    assert!(
        c.dir.join("queue").join(&bad).exists(),
        "retried on the next pass"
    );
    assert!(!c.has_row(&bad));
    assert!(c.dir.join("queue").join(&inactive).exists());
    assert!(
        fs::read_dir(c.dir.join("incomplete"))
            .unwrap()
            .next()
            .is_none()
    );

    // A second pass finds the good image cached and does not fetch it again.
    fs::write(c.dir.join("queue").join(&good), b"").unwrap();
    let (_, r, _) = tokio::task::block_in_place(|| c.json(&["prefetch"]));
    assert_eq!(u(&r, "already_cached"), 1);
    assert_eq!(u(&r, "prefetched"), 0);
}
