//! The interoperable import's catalog operations on every engine: the
//! locked update (refused without the lock, on a deleted image, or with the
//! wrong status; otherwise status, store lists, properties, data, locations
//! in one transaction), the compare-and-set lock takeover, and the live-id
//! lookup of the staging clean-up.

use imaged_catalog::Engine;
use imaged_catalog::api_import::{
    FAILED_STORES, IMPORT_LOCK, IMPORTING_STORES, LockedRefusal, LockedUpdate, NewLocation,
    StoreListChange,
};
use imaged_catalog::images::{ImageDataUpdate, NewImage};
use imaged_catalog::testing::TestDb;
use serde_json::json;

fn change(add: &[&str], remove: &[&str]) -> Option<StoreListChange> {
    Some(StoreListChange {
        add: add.iter().map(|s| s.to_string()).collect(),
        remove: remove.iter().map(|s| s.to_string()).collect(),
    })
}

async fn body(db: TestDb) {
    let cat = &db.catalog;
    let id = cat
        .create_image(&NewImage {
            disk_format: Some("raw".into()),
            container_format: Some("bare".into()),
            ..NewImage::default()
        })
        .await
        .unwrap();
    let start = LockedUpdate {
        status: Some((vec!["queued".into()], "importing".into())),
        importing: change(&["b", "a"], &[]),
        failed: change(&[], &["a", "b"]),
        ..LockedUpdate::default()
    };
    // No lock yet: refused, nothing changed.
    assert_eq!(
        cat.update_locked_image(&id, "t1", &start).await.unwrap(),
        Err(LockedRefusal::LockLost { holder: None })
    );
    assert!(
        cat.set_property_atomic(&id, IMPORT_LOCK, "t1")
            .await
            .unwrap()
    );
    assert_eq!(
        cat.update_locked_image(&id, "t2", &start).await.unwrap(),
        Err(LockedRefusal::LockLost {
            holder: Some("t1".into())
        })
    );
    assert_eq!(cat.get_image(&id).await.unwrap().unwrap().status, "queued");
    assert_eq!(
        cat.update_locked_image(&id, "t1", &start).await.unwrap(),
        Ok(None)
    );
    let props = cat.image_properties(&id).await.unwrap();
    assert_eq!(props[IMPORTING_STORES].as_deref(), Some("a,b"));
    assert_eq!(props[FAILED_STORES].as_deref(), Some(""));
    assert_eq!(
        cat.get_image(&id).await.unwrap().unwrap().status,
        "importing"
    );
    // A second start finds `importing`: the status precondition refuses.
    assert_eq!(
        cat.update_locked_image(&id, "t1", &start).await.unwrap(),
        Err(LockedRefusal::Status {
            found: "importing".into()
        })
    );

    // One store written: location, data and lists in one update.
    let stored = LockedUpdate {
        add_location: Some(NewLocation {
            url: "file:///s/a/x".into(),
            meta_data: json!({"store": "a"}),
        }),
        data: Some(ImageDataUpdate {
            checksum: Some("c".into()),
            os_hash_algo: Some("sha512".into()),
            os_hash_value: Some("v".into()),
            size: Some(5),
            virtual_size: Some(5),
            ..ImageDataUpdate::default()
        }),
        importing: change(&[], &["a"]),
        failed: change(&["b"], &[]),
        remove_properties: vec!["os_glance_stage_host".into()],
        ..LockedUpdate::default()
    };
    let loc = cat
        .update_locked_image(&id, "t1", &stored)
        .await
        .unwrap()
        .unwrap()
        .expect("a location id");
    let locs = cat.image_locations(&id).await.unwrap();
    assert_eq!(locs.len(), 1);
    assert_eq!(locs[0].id, loc);
    assert_eq!(locs[0].status, "active");
    assert_eq!(locs[0].meta_data, json!({"store": "a"}));
    let img = cat.get_image(&id).await.unwrap().unwrap();
    assert_eq!((img.size, img.checksum.as_deref()), (Some(5), Some("c")));
    let props = cat.image_properties(&id).await.unwrap();
    assert_eq!(props[IMPORTING_STORES].as_deref(), Some("b"));
    assert_eq!(props[FAILED_STORES].as_deref(), Some("b"));

    // The revert: location soft-deleted, data cleared, back to queued.
    let back = LockedUpdate {
        status: Some((vec!["importing".into()], "queued".into())),
        delete_locations: vec![loc],
        clear_data: true,
        ..LockedUpdate::default()
    };
    cat.update_locked_image(&id, "t1", &back)
        .await
        .unwrap()
        .unwrap();
    let locs = cat.image_locations(&id).await.unwrap();
    assert!(locs[0].deleted && locs[0].status == "deleted" && locs[0].deleted_at.is_some());
    let img = cat.get_image(&id).await.unwrap().unwrap();
    assert_eq!(img.status, "queued");
    assert_eq!(
        (img.size, img.checksum, img.os_hash_algo),
        (None, None, None)
    );

    // Takeover is a compare-and-set on the holder.
    assert!(!cat.replace_import_lock(&id, "t9", "t2").await.unwrap());
    assert!(cat.replace_import_lock(&id, "t1", "t2").await.unwrap());
    assert!(!cat.replace_import_lock(&id, "t1", "t3").await.unwrap());
    assert_eq!(
        cat.import_lock_holder(&id).await.unwrap().as_deref(),
        Some("t2")
    );
    assert_eq!(
        cat.update_locked_image(&id, "t1", &LockedUpdate::default())
            .await
            .unwrap(),
        Err(LockedRefusal::LockLost {
            holder: Some("t2".into())
        })
    );

    let other = cat.create_image(&NewImage::default()).await.unwrap();
    let live = cat
        .live_image_ids(&[
            id.clone(),
            other.clone(),
            "00000000-0000-0000-0000-000000000000".into(),
        ])
        .await
        .unwrap();
    assert_eq!(live.len(), 2);
    cat.destroy_image(&other).await.unwrap();
    assert_eq!(
        cat.update_locked_image(&other, "t2", &LockedUpdate::default())
            .await
            .unwrap(),
        Err(LockedRefusal::ImageGone)
    );
    let live = cat.live_image_ids(&[id.clone(), other]).await.unwrap();
    assert_eq!(live.into_iter().collect::<Vec<_>>(), vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_import_operations_sqlite() {
    if let Some(db) = TestDb::new(Engine::Sqlite).await {
        body(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_import_operations_postgres() {
    if let Some(db) = TestDb::new(Engine::Postgres).await {
        body(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_import_operations_mysql() {
    if let Some(db) = TestDb::new(Engine::MySql).await {
        body(db).await;
    }
}
