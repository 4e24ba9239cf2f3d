//! The legacy import's one-transaction steps on every engine: the image
//! created `saving` with its lock, properties and tags, and its activation
//! (data, `saving → active`, lock row deleted outright), each writing the
//! rows the separate calls write and refusing without changing anything when
//! a precondition fails; and the executor's batched task start after a
//! claim.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::NaiveDateTime;
use imaged_catalog::api_import::LockedRefusal;
use imaged_catalog::images::{Image, ImageDataUpdate, NewImage};
use imaged_catalog::tasks::NewTask;
use imaged_catalog::testing::{TestDb, ts_literal};
use imaged_catalog::{ClaimKind, ClaimOwner, Engine};

const LOCK: &str = "os_glance_import_task";

fn now() -> NaiveDateTime {
    chrono::Utc::now().naive_utc()
}

/// `t` lies in `[from, to]`, widened by a second for engines that store
/// whole seconds.
fn within(t: NaiveDateTime, from: NaiveDateTime, to: NaiveDateTime) -> bool {
    let slack = chrono::Duration::seconds(1);
    t >= from - slack && t <= to + slack
}

fn new_image() -> NewImage {
    NewImage {
        name: Some("cirros".into()),
        owner: Some("project-a".into()),
        visibility: "community".into(),
        disk_format: Some("qcow2".into()),
        container_format: Some("bare".into()),
        min_disk: 1,
        min_ram: 64,
        protected: true,
        os_hidden: true,
        ..NewImage::default()
    }
}

fn extra() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("hw_disk_bus".to_string(), "scsi".to_string()),
        ("os_distro".to_string(), "cirros".to_string()),
    ])
}

fn tags() -> Vec<String> {
    ["b", "a", "b"].iter().map(|s| s.to_string()).collect()
}

fn data() -> ImageDataUpdate {
    ImageDataUpdate {
        checksum: Some("0123456789abcdef0123456789abcdef".into()),
        os_hash_algo: Some("sha512".into()),
        os_hash_value: Some("ab".repeat(64)),
        size: Some(262_144),
        virtual_size: Some(262_144),
        disk_format: Some("raw".into()),
        container_format: None,
    }
}

/// The image row without its id and timestamps, for comparing an image
/// written in one transaction with one written step by step.
fn attrs(i: &Image) -> Image {
    let epoch = NaiveDateTime::default();
    Image {
        id: String::new(),
        created_at: epoch,
        updated_at: None,
        ..i.clone()
    }
}

/// Whether the one row `row` (a `FROM … WHERE …` clause) is deleted, has
/// `deleted_at` NULL, and has `created_at = updated_at`, as a digit string.
async fn flags(db: &TestDb, row: &str) -> String {
    let mut out = String::new();
    for cond in [
        "deleted = TRUE",
        "deleted_at IS NULL",
        "created_at = updated_at",
    ] {
        let n = db
            .count(&format!("SELECT COUNT(*) {row} AND {cond}"))
            .await
            .unwrap();
        out.push_str(&n.to_string());
    }
    out
}

/// Every `image_properties` row of an image, deleted or not, in id order,
/// with its [`flags`].
async fn property_rows(db: &TestDb, id: &str) -> Vec<String> {
    let n = db
        .count(&format!(
            "SELECT COUNT(*) FROM image_properties WHERE image_id = '{id}'"
        ))
        .await
        .unwrap();
    let mut out = Vec::new();
    for k in 0..n {
        let nth =
            format!("FROM image_properties WHERE image_id = '{id}' ORDER BY id LIMIT 1 OFFSET {k}");
        let name = db.text(&format!("SELECT name {nth}")).await.unwrap();
        let value = db.text(&format!("SELECT value {nth}")).await.unwrap();
        // (image_id, name) is unique.
        let row = format!(
            "FROM image_properties WHERE image_id = '{id}' AND name = '{}'",
            name.as_deref().unwrap_or_default()
        );
        out.push(format!(
            "{name:?}={value:?} flags {}",
            flags(db, &row).await
        ));
    }
    out
}

/// Every `image_tags` row of an image in id order, with its [`flags`].
async fn tag_rows(db: &TestDb, id: &str) -> Vec<String> {
    let n = db
        .count(&format!(
            "SELECT COUNT(*) FROM image_tags WHERE image_id = '{id}'"
        ))
        .await
        .unwrap();
    let mut out = Vec::new();
    for k in 0..n {
        let nth = format!("FROM image_tags WHERE image_id = '{id}' ORDER BY id LIMIT 1 OFFSET {k}");
        let value = db.text(&format!("SELECT value {nth}")).await.unwrap();
        // The tags of these tests are unique per image.
        let row = format!(
            "FROM image_tags WHERE image_id = '{id}' AND value = '{}'",
            value.as_deref().unwrap_or_default()
        );
        out.push(format!("{value:?} flags {}", flags(db, &row).await));
    }
    out
}

/// Everything about an image a refused call must leave alone.
async fn snapshot(db: &TestDb, id: &str) -> (Option<Image>, Vec<String>, Vec<String>) {
    (
        db.catalog.get_image(id).await.unwrap(),
        property_rows(db, id).await,
        tag_rows(db, id).await,
    )
}

/// The image the legacy import wrote before, one call per row.
async fn create_step_by_step(db: &TestDb, task: &str) -> String {
    let cat = &db.catalog;
    let id = cat.create_image(&new_image()).await.unwrap();
    assert!(cat.set_property_atomic(&id, LOCK, task).await.unwrap());
    for (k, v) in &extra() {
        cat.set_property(&id, k, v).await.unwrap();
    }
    for t in &tags() {
        cat.add_image_tag(&id, t).await.unwrap();
    }
    cat.set_image_status(&id, "queued", "saving").await.unwrap();
    id
}

async fn create_at_once(db: &TestDb, task: &str) -> String {
    db.catalog
        .create_importing_image(&new_image(), LOCK, task, &extra(), &tags())
        .await
        .unwrap()
}

async fn body(db: TestDb) {
    let cat = &db.catalog;

    // --- creation ---
    let old = create_step_by_step(&db, "t-old").await;
    let before = now();
    let new = create_at_once(&db, "t1").await;
    let after = now();
    let img = cat.get_image(&new).await.unwrap().unwrap();
    let was = cat.get_image(&old).await.unwrap().unwrap();
    assert_eq!(img.status, "saving");
    assert_eq!(attrs(&img), attrs(&was));
    assert_eq!(img.name.as_deref(), Some("cirros"));
    assert_eq!(img.owner.as_deref(), Some("project-a"));
    assert_eq!(img.visibility, "community");
    assert!((img.protected, img.os_hidden) == (true, true));
    assert_eq!((img.min_disk, img.min_ram), (1, 64));
    assert_eq!(
        (img.size, img.virtual_size, img.checksum.as_deref()),
        (None, None, None)
    );
    assert!(!img.deleted && img.deleted_at.is_none());
    assert!(within(img.created_at, before, after));
    assert_eq!(img.updated_at, Some(img.created_at));
    let props = property_rows(&db, &new).await;
    assert_eq!(
        props,
        vec![
            r#"Some("os_glance_import_task")=Some("t1") flags 011"#,
            r#"Some("hw_disk_bus")=Some("scsi") flags 011"#,
            r#"Some("os_distro")=Some("cirros") flags 011"#,
        ]
    );
    let old_props: Vec<String> = property_rows(&db, &old)
        .await
        .into_iter()
        .map(|r| r.replace("t-old", "t1"))
        .collect();
    assert_eq!(props, old_props);
    let new_tags = tag_rows(&db, &new).await;
    assert_eq!(
        new_tags,
        vec![r#"Some("b") flags 011"#, r#"Some("a") flags 011"#]
    );
    assert_eq!(new_tags, tag_rows(&db, &old).await);
    let lock_ts = db
        .timestamp(&format!(
            "SELECT created_at FROM image_properties WHERE image_id = '{new}' AND name = '{LOCK}'"
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(within(lock_ts, before, after));
    assert_eq!(
        cat.images_with_property(LOCK, "t1").await.unwrap(),
        vec![new.clone()]
    );

    // Refused before anything is written: the lock as a property, a bad
    // visibility, an explicit id already taken.
    let images = db.count("SELECT COUNT(*) FROM images").await.unwrap();
    let rows = db
        .count("SELECT COUNT(*) FROM image_properties")
        .await
        .unwrap();
    let mut clash = extra();
    clash.insert(LOCK.into(), "t9".into());
    assert!(
        cat.create_importing_image(&new_image(), LOCK, "t9", &clash, &[])
            .await
            .is_err()
    );
    let bad = NewImage {
        visibility: "everyone".into(),
        ..new_image()
    };
    assert!(
        cat.create_importing_image(&bad, LOCK, "t9", &extra(), &tags())
            .await
            .is_err()
    );
    let taken = NewImage {
        id: Some(new.clone()),
        ..new_image()
    };
    assert!(
        cat.create_importing_image(&taken, LOCK, "t9", &extra(), &tags())
            .await
            .is_err()
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM images").await.unwrap(),
        images
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM image_properties")
            .await
            .unwrap(),
        rows
    );
    assert!(
        cat.images_with_property(LOCK, "t9")
            .await
            .unwrap()
            .is_empty()
    );

    // --- activation refused: nothing changes ---
    let untouched = snapshot(&db, &new).await;
    assert_eq!(
        cat.activate_imported_image(&new, "t2", &data())
            .await
            .unwrap(),
        Err(LockedRefusal::LockLost {
            holder: Some("t1".into())
        })
    );
    assert_eq!(snapshot(&db, &new).await, untouched);

    // Not `saving` (here `queued` again): refused.
    let queued = create_at_once(&db, "t3").await;
    cat.set_image_status(&queued, "saving", "queued")
        .await
        .unwrap();
    let untouched_q = snapshot(&db, &queued).await;
    assert_eq!(
        cat.activate_imported_image(&queued, "t3", &data())
            .await
            .unwrap(),
        Err(LockedRefusal::Status {
            found: "queued".into()
        })
    );
    assert_eq!(snapshot(&db, &queued).await, untouched_q);

    // Deleted (by the API, leaving the lock row live): refused.
    let gone = create_at_once(&db, "t4").await;
    db.exec(&format!(
        "UPDATE images SET deleted = TRUE, status = 'deleted' WHERE id = '{gone}'"
    ))
    .await
    .unwrap();
    let untouched_g = snapshot(&db, &gone).await;
    assert_eq!(
        cat.activate_imported_image(&gone, "t4", &data())
            .await
            .unwrap(),
        Err(LockedRefusal::ImageGone)
    );
    assert_eq!(snapshot(&db, &gone).await, untouched_g);

    // Lock dropped: refused.
    let unlocked = create_at_once(&db, "t5").await;
    assert!(
        cat.delete_property_atomic(&unlocked, LOCK, "t5")
            .await
            .unwrap()
    );
    let untouched_u = snapshot(&db, &unlocked).await;
    assert_eq!(
        cat.activate_imported_image(&unlocked, "t5", &data())
            .await
            .unwrap(),
        Err(LockedRefusal::LockLost { holder: None })
    );
    assert_eq!(snapshot(&db, &unlocked).await, untouched_u);

    // A missing image: refused like a deleted one.
    assert_eq!(
        cat.activate_imported_image("00000000-0000-0000-0000-000000000000", "t1", &data())
            .await
            .unwrap(),
        Err(LockedRefusal::ImageGone)
    );

    // --- activation ---
    // Step by step, as before: data, status, lock dropped.
    cat.update_image_data(&old, &data()).await.unwrap();
    cat.set_image_status(&old, "saving", "active")
        .await
        .unwrap();
    assert!(
        cat.delete_property_atomic(&old, LOCK, "t-old")
            .await
            .unwrap()
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = now();
    assert_eq!(
        cat.activate_imported_image(&new, "t1", &data())
            .await
            .unwrap(),
        Ok(())
    );
    let after = now();
    let img = cat.get_image(&new).await.unwrap().unwrap();
    assert_eq!(img.status, "active");
    assert_eq!(
        img.checksum.as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(img.os_hash_algo.as_deref(), Some("sha512"));
    assert_eq!(img.os_hash_value, Some("ab".repeat(64)));
    assert_eq!((img.size, img.virtual_size), (Some(262_144), Some(262_144)));
    assert_eq!(img.disk_format.as_deref(), Some("raw"));
    assert_eq!(img.container_format.as_deref(), Some("bare"));
    assert!(!img.deleted && img.deleted_at.is_none());
    assert_eq!(img.created_at, untouched.0.as_ref().unwrap().created_at);
    assert!(within(img.updated_at.unwrap(), before, after));
    assert!(img.updated_at.unwrap() > img.created_at);
    let was = cat.get_image(&old).await.unwrap().unwrap();
    assert_eq!(attrs(&img), attrs(&was));
    // The lock row is gone, not soft-deleted; the rest stays as it was.
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM image_properties WHERE image_id = '{new}' AND name = '{LOCK}'"
        ))
        .await
        .unwrap(),
        0
    );
    assert_eq!(property_rows(&db, &new).await, untouched.1[1..].to_vec());
    assert_eq!(
        property_rows(&db, &new).await,
        property_rows(&db, &old).await
    );
    assert_eq!(tag_rows(&db, &new).await, untouched.2);
    assert_eq!(cat.image_tags(&new).await.unwrap(), vec!["a", "b"]);
    assert!(
        cat.images_with_property(LOCK, "t1")
            .await
            .unwrap()
            .is_empty()
    );
    // Once done, a second activation is refused (the lock is gone).
    let done = snapshot(&db, &new).await;
    assert_eq!(
        cat.activate_imported_image(&new, "t1", &data())
            .await
            .unwrap(),
        Err(LockedRefusal::LockLost { holder: None })
    );
    assert_eq!(snapshot(&db, &new).await, done);

    // Without a format change the disk format is left as created.
    let same = create_at_once(&db, "t6").await;
    let keep = ImageDataUpdate {
        disk_format: None,
        ..data()
    };
    assert_eq!(
        cat.activate_imported_image(&same, "t6", &keep)
            .await
            .unwrap(),
        Ok(())
    );
    let img = cat.get_image(&same).await.unwrap().unwrap();
    assert_eq!(
        (img.status.as_str(), img.disk_format.as_deref()),
        ("active", Some("qcow2"))
    );
}

/// The task start after a claim, batched: pending tasks become
/// `processing` with `updated_at` bumped, a dead holder's `processing`
/// task comes back as it is, in id order, across more ids than one
/// statement takes.
async fn claim_body(db: TestDb) {
    let cat = &db.catalog;
    let mut ids = Vec::new();
    for i in 0..205 {
        ids.push(
            cat.enqueue_task(&NewTask::new(
                "import",
                &format!("p{i}"),
                serde_json::json!({}),
            ))
            .await
            .unwrap(),
        );
    }
    ids.sort();
    // A deleted task is never claimed.
    let deleted = cat
        .enqueue_task(&NewTask::new("import", "p", serde_json::json!({})))
        .await
        .unwrap();
    db.exec(&format!(
        "UPDATE tasks SET deleted = TRUE WHERE id = '{deleted}'"
    ))
    .await
    .unwrap();
    let first = cat
        .claim_tasks(
            &ClaimOwner::from_string("dead"),
            Duration::from_secs(600),
            2,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    let dead: BTreeMap<String, Option<NaiveDateTime>> =
        first.iter().map(|t| (t.id.clone(), t.updated_at)).collect();
    let past = ts_literal(db.engine(), &(now() - chrono::Duration::seconds(5)));
    db.exec(&format!(
        "UPDATE imaged_claims SET lease_expires_at = {past} WHERE kind = 'task'"
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let owner = ClaimOwner::from_string("live");
    let before = now();
    let got = cat
        .claim_tasks(&owner, Duration::from_secs(600), 500, &[])
        .await
        .unwrap();
    let after = now();
    let got_ids: Vec<String> = got.iter().map(|t| t.id.clone()).collect();
    assert_eq!(got_ids, ids, "every live task once, in id order");
    for t in &got {
        assert_eq!(t.status, "processing");
        assert!(!t.deleted);
        let fresh = cat.get_task(&t.id).await.unwrap().unwrap();
        assert_eq!(&fresh, t, "returned as stored");
        if let Some(updated) = dead.get(&t.id) {
            assert_eq!(&t.updated_at, updated, "resumed as it is");
        } else {
            assert!(within(t.updated_at.unwrap(), before, after));
        }
        let claim = cat
            .claim_record(ClaimKind::Task, &t.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claim.owner.as_deref(), Some("live"));
    }
    assert_eq!(
        cat.get_task(&deleted).await.unwrap().unwrap().status,
        "pending"
    );
    assert!(
        cat.claim_tasks(&ClaimOwner::generate(), Duration::from_secs(60), 10, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

macro_rules! engines {
    ($body:ident: $sqlite:ident, $postgres:ident, $mysql:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            if let Some(db) = TestDb::new(Engine::Sqlite).await {
                $body(db).await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            if let Some(db) = TestDb::new(Engine::Postgres).await {
                $body(db).await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $mysql() {
            if let Some(db) = TestDb::new(Engine::MySql).await {
                $body(db).await;
            }
        }
    };
}

engines!(body: import_steps_sqlite, import_steps_postgres, import_steps_mysql);
engines!(claim_body: claim_start_sqlite, claim_start_postgres, claim_start_mysql);
