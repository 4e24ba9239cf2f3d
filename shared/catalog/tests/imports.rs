//! The import executor's image operations on every engine: soft destroy
//! (with the import lock row deleted outright), dropping the lock, lookup by
//! property, tags, and per-owner storage usage.

use imaged_catalog::Engine;
use imaged_catalog::images::{ImageDataUpdate, NewImage};
use imaged_catalog::testing::TestDb;
use serde_json::json;

async fn body(db: TestDb) {
    let cat = &db.catalog;
    let new = |owner: &str| NewImage {
        owner: Some(owner.to_string()),
        ..NewImage::default()
    };
    let a = cat.create_image(&new("p1")).await.unwrap();
    let b = cat.create_image(&new("p1")).await.unwrap();
    let c = cat.create_image(&new("p2")).await.unwrap();
    for (id, size) in [(&a, 100), (&b, 50), (&c, 7)] {
        cat.update_image_data(
            id,
            &ImageDataUpdate {
                size: Some(size),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        cat.set_image_status(id, "queued", "active").await.unwrap();
    }
    assert_eq!(cat.owner_storage_usage("p1").await.unwrap(), 150);
    assert_eq!(cat.owner_storage_usage("p2").await.unwrap(), 7);
    assert_eq!(cat.owner_storage_usage("nobody").await.unwrap(), 0);

    cat.set_property(&a, "os_glance_import_task", "t1")
        .await
        .unwrap();
    cat.set_property(&b, "os_glance_import_task", "t2")
        .await
        .unwrap();
    assert_eq!(
        cat.images_with_property("os_glance_import_task", "t1")
            .await
            .unwrap(),
        vec![a.clone()]
    );

    cat.add_image_tag(&a, "x").await.unwrap();
    cat.add_image_tag(&a, "x").await.unwrap();
    cat.add_image_tag(&a, "w").await.unwrap();
    assert_eq!(cat.image_tags(&a).await.unwrap(), vec!["w", "x"]);
    cat.add_location(&a, "file:///srv/a", &json!({}), "active")
        .await
        .unwrap();

    cat.destroy_image(&a).await.unwrap();
    let img = cat.get_image(&a).await.unwrap().unwrap();
    assert_eq!(img.status, "deleted");
    assert!(img.deleted && img.deleted_at.is_some());
    assert!(cat.image_properties(&a).await.unwrap().is_empty());
    assert!(cat.image_tags(&a).await.unwrap().is_empty());
    let locs = cat.image_locations(&a).await.unwrap();
    assert!(locs.iter().all(|l| l.deleted && l.status == "deleted"));
    assert!(
        cat.images_with_property("os_glance_import_task", "t1")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(cat.owner_storage_usage("p1").await.unwrap(), 50);
    // Destroying an image an import holds: the lock row is deleted outright
    // (Glance's legacy import has none), the other properties soft-deleted.
    cat.set_property(&b, "hw_disk_bus", "scsi").await.unwrap();
    cat.destroy_locked_image(&b, "os_glance_import_task", "t2")
        .await
        .unwrap();
    let rows = |id: &str, name: &str| {
        format!("SELECT COUNT(*) FROM image_properties WHERE image_id = '{id}' AND name = '{name}'")
    };
    assert_eq!(
        db.count(&rows(&b, "os_glance_import_task")).await.unwrap(),
        0
    );
    assert_eq!(
        db.count(&format!("{} AND deleted = TRUE", rows(&b, "hw_disk_bus")))
            .await
            .unwrap(),
        1
    );
    assert!(cat.get_image(&b).await.unwrap().unwrap().deleted);
    // Dropping a lock is a conditional DELETE: another holder's row stays.
    cat.set_property_atomic(&c, "os_glance_import_task", "t3")
        .await
        .unwrap();
    assert!(
        !cat.delete_property_atomic(&c, "os_glance_import_task", "t-other")
            .await
            .unwrap()
    );
    assert!(
        cat.delete_property_atomic(&c, "os_glance_import_task", "t3")
            .await
            .unwrap()
    );
    assert_eq!(
        db.count(&rows(&c, "os_glance_import_task")).await.unwrap(),
        0
    );
    // Destroying twice is harmless; a missing image is NotFound.
    cat.destroy_image(&a).await.unwrap();
    assert!(matches!(
        cat.destroy_image("00000000-0000-0000-0000-000000000000")
            .await,
        Err(imaged_catalog::CatalogError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_operations_sqlite() {
    if let Some(db) = TestDb::new(Engine::Sqlite).await {
        body(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_operations_postgres() {
    if let Some(db) = TestDb::new(Engine::Postgres).await {
        body(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_operations_mysql() {
    if let Some(db) = TestDb::new(Engine::MySql).await {
        body(db).await;
    }
}
