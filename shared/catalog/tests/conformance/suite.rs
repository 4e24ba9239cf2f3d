//! The test bodies of the conformance suite; each takes a fresh catalog.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use imaged_catalog::scrub::{FinishOutcome, LocationOutcome, ScrubQuery};
use imaged_catalog::testing::{PendingDeleteImage, TestDb, ts_literal};
use imaged_catalog::{CatalogError, ClaimKind, ClaimOwner, Engine};

use crate::common::ago;

/// Column types per engine: (sqlite, postgresql, mysql).
fn ty(engine: Engine, generic: &str) -> String {
    let (s, p, m) = match generic {
        "datetime" => ("datetime", "timestamp without time zone", "datetime"),
        "bool" => ("boolean", "boolean", "tinyint(1)"),
        "int" => ("integer", "integer", "int(11)"),
        "bigint/int" => ("integer", "bigint", "bigint(20)"),
        "bigint" => ("bigint", "bigint", "bigint(20)"),
        "text" => ("text", "text", "text"),
        "visibility" => (
            "varchar(9)",
            "image_visibility",
            "enum('private','public','shared','community')",
        ),
        v => (v, v, v),
    };
    match engine {
        Engine::Sqlite => s,
        Engine::Postgres => p,
        Engine::MySql => m,
    }
    .to_string()
}

const SOFT: &[(&str, &str, bool)] = &[
    ("created_at", "datetime", false),
    ("updated_at", "datetime", true),
    ("deleted_at", "datetime", true),
    ("deleted", "bool", false),
];

/// (column, generic type, nullable).
type Col = (&'static str, &'static str, bool);
/// (table, columns in order, indexes that must exist).
type TableSpec = (&'static str, Vec<Col>, Vec<&'static str>);

fn expected_tables() -> Vec<TableSpec> {
    let with_soft = |mut v: Vec<Col>, at: usize| {
        for (i, c) in SOFT.iter().enumerate() {
            v.insert(at + i, *c);
        }
        v
    };
    vec![
        (
            "images",
            with_soft(
                vec![
                    ("id", "varchar(36)", false),
                    ("name", "varchar(255)", true),
                    ("size", "bigint/int", true),
                    ("status", "varchar(30)", false),
                    ("disk_format", "varchar(20)", true),
                    ("container_format", "varchar(20)", true),
                    ("checksum", "varchar(32)", true),
                    ("owner", "varchar(255)", true),
                    ("min_disk", "int", false),
                    ("min_ram", "int", false),
                    ("protected", "bool", false),
                    ("virtual_size", "bigint/int", true),
                    ("visibility", "visibility", false),
                    ("os_hidden", "bool", false),
                    ("os_hash_algo", "varchar(64)", true),
                    ("os_hash_value", "varchar(128)", true),
                ],
                4,
            ),
            vec![
                "checksum_image_idx",
                "created_at_image_idx",
                "ix_images_deleted",
                "os_hash_value_image_idx",
                "os_hidden_image_idx",
                "owner_image_idx",
                "updated_at_image_idx",
                "visibility_image_idx",
            ],
        ),
        (
            "image_locations",
            with_soft(
                vec![
                    ("id", "int", false),
                    ("image_id", "varchar(36)", false),
                    ("value", "text", false),
                    ("meta_data", "text", true),
                    ("status", "varchar(30)", false),
                ],
                3,
            ),
            vec!["ix_image_locations_deleted", "ix_image_locations_image_id"],
        ),
        (
            "image_properties",
            with_soft(
                vec![
                    ("id", "int", false),
                    ("image_id", "varchar(36)", false),
                    ("name", "varchar(255)", false),
                    ("value", "text", true),
                ],
                4,
            ),
            vec![
                "ix_image_properties_deleted",
                "ix_image_properties_image_id",
                "ix_image_properties_image_id_name",
            ],
        ),
        (
            "image_tags",
            with_soft(
                vec![
                    ("id", "int", false),
                    ("image_id", "varchar(36)", false),
                    ("value", "varchar(255)", false),
                ],
                3,
            ),
            vec!["ix_image_tags_image_id", "ix_image_tags_image_id_tag_value"],
        ),
        (
            "image_members",
            with_soft(
                vec![
                    ("id", "int", false),
                    ("image_id", "varchar(36)", false),
                    ("member", "varchar(255)", false),
                    ("can_share", "bool", false),
                    ("status", "varchar(20)", false),
                ],
                4,
            ),
            vec![
                "ix_image_members_deleted",
                "ix_image_members_image_id",
                "ix_image_members_image_id_member",
            ],
        ),
        (
            "tasks",
            with_soft(
                vec![
                    ("id", "varchar(36)", false),
                    ("type", "varchar(30)", false),
                    ("status", "varchar(30)", false),
                    ("owner", "varchar(255)", false),
                    ("expires_at", "datetime", true),
                    ("image_id", "varchar(36)", true),
                    ("request_id", "varchar(64)", true),
                    ("user_id", "varchar(64)", true),
                ],
                5,
            ),
            vec![
                "ix_tasks_deleted",
                "ix_tasks_image_id",
                "ix_tasks_owner",
                "ix_tasks_status",
                "ix_tasks_type",
                "ix_tasks_updated_at",
            ],
        ),
        (
            "task_info",
            vec![
                ("task_id", "varchar(36)", false),
                ("input", "text", true),
                ("result", "text", true),
                ("message", "text", true),
            ],
            vec![],
        ),
        (
            "node_reference",
            vec![
                ("node_reference_id", "bigint/int", false),
                ("node_reference_url", "varchar(255)", false),
            ],
            vec![],
        ),
        (
            "cached_images",
            vec![
                ("id", "bigint/int", false),
                ("image_id", "varchar(36)", false),
                ("last_accessed", "datetime", false),
                ("last_modified", "datetime", false),
                ("size", "bigint", false),
                ("hits", "int", false),
                ("checksum", "varchar(32)", true),
                ("node_reference_id", "bigint/int", false),
            ],
            vec![],
        ),
        (
            "alembic_version",
            vec![("version_num", "varchar(32)", false)],
            vec![],
        ),
    ]
}

pub async fn schema_matches_reference(db: TestDb) {
    let cat = &db.catalog;
    let e = db.engine();
    for (table, cols, idx) in expected_tables() {
        let got = cat.columns(table).await.unwrap();
        let got: Vec<(String, String, bool)> = got
            .into_iter()
            .map(|c| (c.name, c.data_type, c.nullable))
            .collect();
        let want: Vec<(String, String, bool)> = cols
            .iter()
            .map(|(n, t, null)| (n.to_string(), ty(e, t), *null))
            .collect();
        // MariaDB may print integer display widths differently across
        // versions; compare without them there.
        let norm = |v: Vec<(String, String, bool)>| -> Vec<(String, String, bool)> {
            v.into_iter()
                .map(|(n, t, null)| {
                    let t = if e == Engine::MySql
                        && (t.starts_with("int(") || t.starts_with("bigint("))
                    {
                        t.split('(').next().unwrap().to_string()
                    } else {
                        t
                    };
                    (n, t, null)
                })
                .collect()
        };
        assert_eq!(norm(got), norm(want), "columns of {table} on {e}");
        let got_idx: BTreeSet<String> = cat.index_names(table).await.unwrap().into_iter().collect();
        for i in &idx {
            assert!(
                got_idx.contains(*i),
                "index {i} on {table} ({e}); have {got_idx:?}"
            );
        }
    }
    // Unique constraints that Glance relies on.
    let props = cat.index_names("image_properties").await.unwrap();
    assert!(props.contains(&"ix_image_properties_image_id_name".to_string()));
    let mut tables = cat.table_names().await.unwrap();
    tables.retain(|t| !t.starts_with("imaged_"));
    assert_eq!(tables.len(), 16, "Glance has 16 tables: {tables:?}");
    assert_eq!(
        cat.alembic_versions().await.unwrap(),
        Some(vec!["2024_1_contract01".to_string()])
    );
    assert!(
        cat.table_names()
            .await
            .unwrap()
            .contains(&"imaged_claims".to_string())
    );
}

pub async fn schema_verification_refuses_unknown(db: TestDb) {
    let cat = &db.catalog;
    cat.verify_schema().await.unwrap();
    db.exec("UPDATE alembic_version SET version_num = '2099_1_contract01'")
        .await
        .unwrap();
    let err = cat.verify_schema().await.unwrap_err().to_string();
    assert!(
        err.contains("2099_1_contract01") && err.contains("glance-manage db sync"),
        "{err}"
    );
    db.exec("DELETE FROM alembic_version").await.unwrap();
    let err = cat.verify_schema().await.unwrap_err().to_string();
    assert!(err.contains("no Glance schema"), "{err}");
    db.exec("INSERT INTO alembic_version (version_num) VALUES ('2024_1_expand01')")
        .await
        .unwrap();
    cat.verify_schema().await.unwrap();
    // create_schema refuses to run over an existing catalog.
    let err = cat.create_schema().await.unwrap_err().to_string();
    assert!(err.contains("already holds a catalog"), "{err}");
}

pub async fn additive_tables_drop_cleanly(db: TestDb) {
    let cat = &db.catalog;
    let before = cat.table_names().await.unwrap();
    let glance: Vec<String> = before
        .iter()
        .filter(|t| !t.starts_with("imaged_"))
        .cloned()
        .collect();
    let cols_before = cat.columns("images").await.unwrap();
    cat.drop_additive_tables().await.unwrap();
    assert_eq!(cat.table_names().await.unwrap(), glance);
    assert_eq!(cat.columns("images").await.unwrap(), cols_before);
    cat.verify_schema().await.unwrap();
    cat.ensure_additive_schema().await.unwrap();
    assert_eq!(cat.table_names().await.unwrap(), before);
}

pub async fn timestamps_round_trip_glance_forms(db: TestDb) {
    let e = db.engine();
    let with_frac =
        chrono::NaiveDateTime::parse_from_str("2026-11-27 08:30:03.838305", "%Y-%m-%d %H:%M:%S%.f")
            .unwrap();
    let no_frac =
        chrono::NaiveDateTime::parse_from_str("2026-11-27 08:30:04", "%Y-%m-%d %H:%M:%S").unwrap();
    // Rows written in Glance's own literal forms.
    // PyMySQL sends the microseconds too; the server rounds them away.
    let lit_a = match e {
        Engine::Sqlite | Engine::MySql => "'2026-11-27 08:30:03.838305'".to_string(),
        _ => ts_literal(e, &with_frac),
    };
    let lit_b = match e {
        Engine::Sqlite => "'2026-11-27 08:30:04'".to_string(),
        _ => ts_literal(e, &no_frac),
    };
    for (id, lit) in [("a", &lit_a), ("b", &lit_b)] {
        db.exec(&format!(
            "INSERT INTO tasks (id, type, status, owner, created_at, updated_at, deleted) \
             VALUES ('{id}', 'import', 'pending', 'p', {lit}, {lit}, FALSE)"
        ))
        .await
        .unwrap();
    }
    let a = db
        .timestamp("SELECT created_at FROM tasks WHERE id = 'a'")
        .await
        .unwrap()
        .unwrap();
    let b = db
        .timestamp("SELECT created_at FROM tasks WHERE id = 'b'")
        .await
        .unwrap()
        .unwrap();
    match e {
        // DATETIME keeps whole seconds: MySQL rounds .838305 up, MariaDB
        // truncates it.
        Engine::MySql => {
            let truncated = chrono::SubsecRound::trunc_subsecs(with_frac, 0);
            assert!(a == no_frac || a == truncated, "{a}");
        }
        _ => assert_eq!(a, with_frac),
    }
    assert_eq!(b, no_frac);
    // What the crate writes reads back equal and, on SQLite, in Glance's text form.
    let id = db
        .catalog
        .enqueue_task(&imaged_catalog::tasks::NewTask::new(
            "import",
            "p",
            serde_json::json!({}),
        ))
        .await
        .unwrap();
    if e == Engine::Sqlite {
        let raw = db
            .text(&format!("SELECT created_at FROM tasks WHERE id = '{id}'"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(raw.len(), 26, "{raw}");
        assert!(imaged_catalog::time::parse_text(&raw).is_some());
        assert_eq!(&raw[10..11], " ");
        assert_eq!(&raw[19..20], ".");
        let deleted = db
            .count(&format!("SELECT deleted FROM tasks WHERE id = '{id}'"))
            .await
            .unwrap();
        assert_eq!(deleted, 0, "deleted is integer 0 on SQLite");
    }
    let t = db.catalog.get_task(&id).await.unwrap().unwrap();
    let now = imaged_catalog::time::utcnow();
    assert!(
        (now - t.created_at).num_seconds().abs() < 5,
        "{:?}",
        t.created_at
    );
}

pub async fn scrub_listing_selects_due_work(db: TestDb) {
    let cat = &db.catalog;
    let old = PendingDeleteImage::new(ago(3600), 2);
    let mut community = PendingDeleteImage::new(ago(3600), 1);
    community.visibility = "community".into();
    let fresh = PendingDeleteImage::new(ago(10), 1);
    let mut nullmeta = PendingDeleteImage::new(ago(3600), 1);
    nullmeta.locations[0].1 = None;
    let mut multistore = PendingDeleteImage::new(ago(3600), 1);
    multistore.locations[0].1 = Some(r#"{"backend": "fast"}"#.into());
    for i in [&old, &community, &fresh, &nullmeta, &multistore] {
        i.insert(cat).await.unwrap();
    }
    // A pending_delete location under an active image (removed location).
    let live = PendingDeleteImage::new(ago(3600), 1);
    live.insert(cat).await.unwrap();
    db.exec(&format!(
        "UPDATE images SET status = 'active', deleted = FALSE, deleted_at = NULL WHERE id = '{}'",
        live.id
    ))
    .await
    .unwrap();

    let q = ScrubQuery {
        scrub_time: Duration::from_secs(600),
        include_live_image_locations: false,
        page_size: 2,
    };
    let items: Vec<_> = cat.scrub_stream(q.clone()).try_collect().await.unwrap();
    let ids: BTreeSet<&str> = items.iter().map(|i| i.image_id.as_str()).collect();
    let want: BTreeSet<&str> = [&old, &community, &nullmeta, &multistore]
        .iter()
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(ids, want);
    assert_eq!(items.len(), 5);
    let mut sorted = items.iter().map(|i| i.location_id).collect::<Vec<_>>();
    sorted.sort();
    assert_eq!(
        sorted,
        items.iter().map(|i| i.location_id).collect::<Vec<_>>(),
        "keyset order"
    );
    let c = items.iter().find(|i| i.image_id == community.id).unwrap();
    assert_eq!(c.visibility, "community");
    let n = items.iter().find(|i| i.image_id == nullmeta.id).unwrap();
    assert_eq!(n.meta_data, serde_json::json!({}));
    let m = items.iter().find(|i| i.image_id == multistore.id).unwrap();
    assert_eq!(m.store(), Some("fast"));
    let o = items.iter().find(|i| i.image_id == old.id).unwrap();
    assert!(
        old.locations
            .iter()
            .any(|l| Ok(l.0.as_str()) == o.url.as_deref())
    );
    assert_eq!(o.image_deleted_at, Some(old.deleted_at));
    assert_eq!(o.image_status, "pending_delete");

    let q2 = ScrubQuery {
        include_live_image_locations: true,
        ..q.clone()
    };
    let items2: Vec<_> = cat.scrub_stream(q2).try_collect().await.unwrap();
    assert_eq!(items2.len(), 6);
    assert!(
        items2
            .iter()
            .any(|i| i.image_id == live.id && i.image_status == "active")
    );

    let q0 = ScrubQuery {
        scrub_time: Duration::ZERO,
        ..q
    };
    let all: Vec<_> = cat.scrub_stream(q0).try_collect().await.unwrap();
    assert_eq!(all.len(), 6, "scrub_time 0 includes the fresh image");

    let due = cat
        .due_scrub_images(Duration::from_secs(600), "", 100)
        .await
        .unwrap();
    assert_eq!(
        due.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        want
    );
    let locs = cat.image_scrub_locations(&old.id).await.unwrap();
    assert_eq!(locs.len(), 2);
}

pub async fn scrub_listing_decrypts_per_row(db: TestDb) {
    let key = "0123456789abcdef";
    let mut opts = db.options.clone();
    opts.metadata_encryption_key = Some(key.into());
    let cat = imaged_catalog::Catalog::open(opts).await.unwrap();
    let mut img = PendingDeleteImage::new(ago(3600), 4);
    // The reference vector, a real Glance value, a plaintext row and garbage.
    img.locations[0].0 = "AAECAwQFBgcICQoLDA0OD5NoSiCdF9tV9BVd8se_1rI=".into();
    img.locations[1].0 = "fUWtbjqLu-jdF8duUrH2emZvzkfne_KxEm0wv0IBmMe3Kiw7jbte53k4zRIz6isF".into();
    img.locations[2].0 = "file:///var/lib/glance/images/plain".into();
    img.locations[3].0 = "not-a-valid-ciphertext".into();
    img.insert(&cat).await.unwrap();
    let items: Vec<_> = cat
        .scrub_stream(ScrubQuery::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(items[0].url.as_deref(), Ok("rbd://abc"));
    assert_eq!(items[1].url.as_deref(), Ok("http://example.com/img"));
    assert_eq!(
        items[2].url.as_deref(),
        Ok("file:///var/lib/glance/images/plain")
    );
    assert!(
        items[3].url.is_err(),
        "bad row is an error for that row only"
    );
    cat.close().await;
}

pub async fn claims_under_contention(db: TestDb) {
    let units: Vec<String> = (0..200).map(|i| format!("unit-{i:04}")).collect();
    let units = Arc::new(units);
    let mut handles = Vec::new();
    for w in 0..8 {
        let cat = db.reopen().await;
        let units = units.clone();
        handles.push(tokio::spawn(async move {
            let owner = ClaimOwner::from_string(format!("worker-{w}"));
            let mut mine = Vec::new();
            // Each worker walks the units in its own rotated order, in
            // batches, to maximise overlap.
            let start = w * 25;
            let order: Vec<String> = units[start..]
                .iter()
                .chain(units[..start].iter())
                .cloned()
                .collect();
            for chunk in order.chunks(20) {
                let got = cat
                    .claim(
                        ClaimKind::ScrubImage,
                        chunk,
                        &owner,
                        Duration::from_secs(300),
                    )
                    .await
                    .unwrap();
                mine.extend(got);
            }
            cat.close().await;
            mine
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 200, "each unit claimed exactly once");
    assert_eq!(distinct.len(), 200);
    let rec = db
        .catalog
        .claim_record(ClaimKind::ScrubImage, "unit-0000")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.attempts, 1);
    assert!(rec.owner.unwrap().starts_with("worker-"));
}

pub async fn lease_expiry_and_owner_cas(db: TestDb) {
    let cat = &db.catalog;
    let a = ClaimOwner::from_string("host-a:1:x");
    let b = ClaimOwner::from_string("host-b:2:y");
    let ids = vec!["img-1".to_string()];
    assert_eq!(
        cat.claim(ClaimKind::ScrubImage, &ids, &a, Duration::from_secs(1))
            .await
            .unwrap(),
        ids
    );
    assert!(
        cat.claim(ClaimKind::ScrubImage, &ids, &b, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
    // Different kinds do not collide.
    assert_eq!(
        cat.claim(ClaimKind::Task, &ids, &b, Duration::from_secs(60))
            .await
            .unwrap(),
        ids
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        cat.claim(ClaimKind::ScrubImage, &ids, &b, Duration::from_secs(60))
            .await
            .unwrap(),
        ids
    );
    // The old holder lost it: renew and release are refused.
    let err = cat
        .renew_claim(ClaimKind::ScrubImage, "img-1", &a, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::Conflict { .. }), "{err}");
    cat.renew_claim(ClaimKind::ScrubImage, "img-1", &b, Duration::from_secs(60))
        .await
        .unwrap();
    let rec = cat
        .claim_record(ClaimKind::ScrubImage, "img-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.attempts, 2);
    // A recorded failure releases the lease and defers the next attempt.
    let next = imaged_catalog::time::utcnow() + chrono::Duration::seconds(3600);
    cat.record_failure(
        ClaimKind::ScrubImage,
        "img-1",
        &b,
        "permanent",
        "Forbidden: is a directory",
        Some(next),
    )
    .await
    .unwrap();
    assert!(
        cat.claim(ClaimKind::ScrubImage, &ids, &a, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "back-off"
    );
    let rec = cat
        .claim_record(ClaimKind::ScrubImage, "img-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.error_class.as_deref(), Some("permanent"));
    assert_eq!(rec.owner, None);
    assert_eq!(
        cat.failure_counts(ClaimKind::ScrubImage).await.unwrap(),
        vec![("permanent".to_string(), 1)]
    );
    // Release with done removes the row.
    let ids2 = vec!["img-2".to_string()];
    cat.claim(ClaimKind::ScrubImage, &ids2, &a, Duration::from_secs(60))
        .await
        .unwrap();
    cat.release_claim(ClaimKind::ScrubImage, "img-2", &a, true)
        .await
        .unwrap();
    assert!(
        cat.claim_record(ClaimKind::ScrubImage, "img-2")
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn cas_conflicts_are_reported(db: TestDb) {
    let cat = &db.catalog;
    let img = PendingDeleteImage::new(ago(3600), 2);
    img.insert(cat).await.unwrap();
    let locs = cat.image_scrub_locations(&img.id).await.unwrap();
    let (l0, l1) = (locs[0].location_id, locs[1].location_id);
    // Only one location done: finishing is refused.
    let out = cat.mark_locations_scrubbed(&[l0], 10).await.unwrap();
    assert_eq!(out, vec![(l0, LocationOutcome::Updated)]);
    assert_eq!(
        cat.finish_image(&img.id).await.unwrap(),
        FinishOutcome::LocationsRemaining(1)
    );
    // A concurrent writer changes the other location: the CAS loses cleanly.
    db.exec(&format!(
        "UPDATE image_locations SET status = 'active', deleted = FALSE WHERE id = {l1}"
    ))
    .await
    .unwrap();
    let out = cat
        .mark_locations_scrubbed(&[l0, l1, 999_999], 10)
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            (l0, LocationOutcome::Conflict("deleted".into())),
            (l1, LocationOutcome::Conflict("active".into())),
            (999_999, LocationOutcome::Missing)
        ]
    );
    let st = db
        .text(&format!(
            "SELECT status FROM image_locations WHERE id = {l1}"
        ))
        .await
        .unwrap();
    assert_eq!(st.as_deref(), Some("active"), "never overwritten");
    // Restored image: finish reports the conflict and does not touch it.
    db.exec(&format!(
        "UPDATE images SET status = 'active', deleted = FALSE WHERE id = '{}'",
        img.id
    ))
    .await
    .unwrap();
    assert_eq!(
        cat.finish_image(&img.id).await.unwrap(),
        FinishOutcome::Conflict("active".into())
    );
    assert_eq!(
        cat.finish_image("no-such-image").await.unwrap(),
        FinishOutcome::NotFound
    );
}

pub async fn batched_location_updates(db: TestDb) {
    let cat = &db.catalog;
    let mut ids = Vec::new();
    let mut images = Vec::new();
    for _ in 0..30 {
        let img = PendingDeleteImage::new(ago(3600), 5);
        img.insert(cat).await.unwrap();
        images.push(img.id.clone());
    }
    let items: Vec<_> = cat
        .scrub_stream(ScrubQuery::default())
        .try_collect()
        .await
        .unwrap();
    ids.extend(items.iter().map(|i| i.location_id));
    assert_eq!(ids.len(), 150);
    let out = cat.mark_locations_scrubbed(&ids, 16).await.unwrap();
    assert!(out.iter().all(|(_, o)| *o == LocationOutcome::Updated));
    assert_eq!(out.iter().map(|(i, _)| *i).collect::<Vec<_>>(), ids);
    // Glance's final location state: deleted_at = updated_at = scrub time.
    let bad = db
        .count("SELECT COUNT(*) FROM image_locations WHERE status <> 'deleted' OR deleted <> TRUE OR deleted_at <> updated_at")
        .await
        .unwrap();
    assert_eq!(bad, 0);
    for id in &images {
        assert_eq!(cat.finish_image(id).await.unwrap(), FinishOutcome::Deleted);
    }
    // Image: status deleted, deleted stays true, deleted_at unchanged.
    let kept = db
        .count("SELECT COUNT(*) FROM images WHERE status = 'deleted' AND deleted = TRUE AND deleted_at < updated_at")
        .await
        .unwrap();
    assert_eq!(kept, 30);
    assert!(
        cat.scrub_stream(ScrubQuery::default())
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn restore_undeletes_everything(db: TestDb) {
    let cat = &db.catalog;
    let img = PendingDeleteImage::new(ago(3600), 2);
    img.insert(cat).await.unwrap();
    // A property the user had deleted long before stays deleted.
    db.exec(&format!(
        "INSERT INTO image_properties (image_id, name, value, created_at, updated_at, deleted_at, deleted) \
         VALUES ('{}', 'old', 'x', {t}, {t}, {t}, TRUE)",
        img.id,
        t = ts_literal(db.engine(), &ago(90_000))
    ))
    .await
    .unwrap();
    let rep = cat.restore_image(&img.id).await.unwrap();
    assert_eq!(
        (rep.locations, rep.properties, rep.tags, rep.members),
        (2, 1, 1, 1)
    );
    let id = &img.id;
    assert_eq!(db.count(&format!("SELECT COUNT(*) FROM images WHERE id = '{id}' AND status = 'active' AND deleted = FALSE AND deleted_at IS NULL")).await.unwrap(), 1);
    assert_eq!(db.count(&format!("SELECT COUNT(*) FROM image_locations WHERE image_id = '{id}' AND status = 'active' AND deleted = FALSE")).await.unwrap(), 2);
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM image_properties WHERE image_id = '{id}' AND deleted = TRUE"
        ))
        .await
        .unwrap(),
        1
    );
    // Second restore: conflict.
    assert!(matches!(
        cat.restore_image(&img.id).await.unwrap_err(),
        CatalogError::Conflict { .. }
    ));
    assert!(matches!(
        cat.restore_image("missing").await.unwrap_err(),
        CatalogError::NotFound { .. }
    ));
    // Refused once a location was scrubbed, and while a scrubber holds it.
    let img2 = PendingDeleteImage::new(ago(3600), 2);
    img2.insert(cat).await.unwrap();
    let owner = ClaimOwner::generate();
    cat.claim(
        ClaimKind::ScrubImage,
        std::slice::from_ref(&img2.id),
        &owner,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let err = cat.restore_image(&img2.id).await.unwrap_err().to_string();
    assert!(err.contains("being scrubbed"), "{err}");
    let l = cat.image_scrub_locations(&img2.id).await.unwrap()[0].location_id;
    // MySQL keeps whole seconds: make the scrub visibly later than the delete.
    cat.mark_locations_scrubbed(&[l], 10).await.unwrap();
    cat.release_claim(ClaimKind::ScrubImage, &img2.id, &owner, false)
        .await
        .unwrap();
    let err = cat.restore_image(&img2.id).await.unwrap_err().to_string();
    assert!(err.contains("scrubbed location"), "{err}");
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM images WHERE id = '{}' AND status = 'pending_delete'",
            img2.id
        ))
        .await
        .unwrap(),
        1
    );
}

pub async fn stuck_images_and_status(db: TestDb) {
    let cat = &db.catalog;
    let a = PendingDeleteImage::new(ago(3600), 1);
    let b = PendingDeleteImage::new(ago(3600), 1);
    let c = PendingDeleteImage::new(ago(5), 1);
    for i in [&a, &b, &c] {
        i.insert(cat).await.unwrap();
    }
    // b's location was purged by `glance-manage db purge`.
    db.exec(&format!(
        "DELETE FROM image_locations WHERE image_id = '{}'",
        b.id
    ))
    .await
    .unwrap();
    assert_eq!(cat.stuck_images("", 10).await.unwrap(), vec![b.id.clone()]);
    let st = cat.scrub_status(Duration::from_secs(600)).await.unwrap();
    assert_eq!(st.pending_images, 3);
    assert_eq!(st.due_images, 2);
    assert_eq!(st.pending_locations, 2);
    assert_eq!(st.stuck_images, 1);
    assert_eq!(st.claimed_images, 0);
    assert_eq!(
        cat.finish_image(&b.id).await.unwrap(),
        FinishOutcome::Deleted
    );
    assert!(cat.stuck_images("", 10).await.unwrap().is_empty());
}

pub async fn tasks_lifecycle(db: TestDb) {
    use imaged_catalog::tasks::{NewTask, TaskFilter};
    let cat = &db.catalog;
    let input = serde_json::json!({
        "image_id": "11111111-2222-3333-4444-555555555555",
        "import_req": {"method": {"name": "web-download", "uri": "https://example.com/disk.img"}, "stores": ["a"]},
        "backend": ["a"]
    });
    let mut nt = NewTask::new("api_image_import", "project-a", input.clone());
    nt.request_id = Some("req-1".into());
    nt.user_id = Some("user-1".into());
    let id = cat.enqueue_task(&nt).await.unwrap();
    // The exact rows the API writes.
    let raw_input = db
        .text(&format!(
            "SELECT input FROM task_info WHERE task_id = '{id}'"
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(raw_input.contains(r#""backend": ["a"]"#), "{raw_input}");
    let t = cat.get_task(&id).await.unwrap().unwrap();
    assert_eq!(
        (t.status.as_str(), t.task_type.as_str(), t.owner.as_str()),
        ("pending", "api_image_import", "project-a")
    );
    assert_eq!(
        t.image_id.as_deref(),
        Some("11111111-2222-3333-4444-555555555555")
    );
    assert_eq!(t.input, Some(input));
    assert_eq!(t.expires_at, None);
    assert_eq!(t.created_at, t.updated_at.unwrap());
    assert!(!t.deleted);
    assert!(
        cat.enqueue_task(&NewTask::new("bogus", "p", serde_json::json!({})))
            .await
            .is_err()
    );

    let owner = ClaimOwner::generate();
    let got = cat
        .claim_tasks(&owner, Duration::from_secs(60), 10, &[])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].status, "processing");
    let before = cat
        .get_task(&id)
        .await
        .unwrap()
        .unwrap()
        .updated_at
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cat.heartbeat_task(&id, &owner, Duration::from_secs(60), Some("Copied 10 MiB"))
        .await
        .unwrap();
    let t = cat.get_task(&id).await.unwrap().unwrap();
    assert!(t.updated_at.unwrap() > before, "heartbeat bumps updated_at");
    assert_eq!(t.message.as_deref(), Some("Copied 10 MiB"));
    // Nobody else gets it while the lease lives.
    assert!(
        cat.claim_tasks(&ClaimOwner::generate(), Duration::from_secs(60), 10, &[])
            .await
            .unwrap()
            .is_empty()
    );
    cat.succeed_task(
        &id,
        &owner,
        &serde_json::json!({"image_id": "x"}),
        Duration::from_secs(48 * 3600),
    )
    .await
    .unwrap();
    let t = cat.get_task(&id).await.unwrap().unwrap();
    assert_eq!(t.status, "success");
    assert_eq!(t.result, Some(serde_json::json!({"image_id": "x"})));
    let ttl = t.expires_at.unwrap() - t.updated_at.unwrap();
    assert_eq!(ttl.num_hours(), 48);
    // Terminal: a second transition and a heartbeat are conflicts.
    assert!(matches!(
        cat.fail_task(&id, &owner, "late", Duration::from_secs(1))
            .await
            .unwrap_err(),
        CatalogError::Conflict { .. }
    ));

    // Fail path with a short TTL, then expiry soft-deletes it.
    let id2 = cat
        .enqueue_task(&NewTask::new(
            "import",
            "project-b",
            serde_json::json!({"import_from": "http://x"}),
        ))
        .await
        .unwrap();
    cat.fail_task(&id2, &owner, "Expired lock preempted", Duration::ZERO)
        .await
        .unwrap();
    let t2 = cat.get_task(&id2).await.unwrap().unwrap();
    assert_eq!(t2.status, "failure");
    assert_eq!(t2.message.as_deref(), Some("Expired lock preempted"));
    assert_eq!(t2.image_id, None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(cat.expire_tasks(Some("project-a")).await.unwrap(), 0);
    assert_eq!(cat.expire_tasks(Some("project-b")).await.unwrap(), 1);
    let t2 = cat.get_task(&id2).await.unwrap().unwrap();
    assert!(t2.deleted && t2.deleted_at.is_some());
    let listed = cat.list_tasks(&TaskFilter::default()).await.unwrap();
    assert_eq!(
        listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    let all = cat
        .list_tasks(&TaskFilter {
            include_deleted: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let by_status = cat
        .list_tasks(&TaskFilter {
            status: Some("success".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_status.len(), 1);
}

/// An executor ends a task only while it holds the task's claim: once the
/// claim is someone else's (its lease ran out and was taken over), its
/// success or failure changes nothing; the holder's end releases the claim
/// in the same transaction.
pub async fn claimed_task_end_needs_the_claim(db: TestDb) {
    use imaged_catalog::tasks::{NewTask, TaskEnd};
    let cat = &db.catalog;
    let id = cat
        .enqueue_task(&NewTask::new("import", "p", serde_json::json!({})))
        .await
        .unwrap();
    let stale = ClaimOwner::from_string("exec-stale");
    let holder = ClaimOwner::from_string("exec-holder");
    let got = cat
        .claim_tasks(&stale, Duration::from_millis(1), 1, &[])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let got = cat
        .claim_tasks(&holder, Duration::from_secs(600), 1, &[])
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "the expired claim is taken over");
    for end in [
        cat.end_claimed_task(
            &id,
            &stale,
            TaskEnd::Failure("late"),
            Duration::from_secs(60),
        )
        .await,
        cat.end_claimed_task(
            &id,
            &stale,
            TaskEnd::Success(&serde_json::json!({})),
            Duration::from_secs(60),
        )
        .await,
    ] {
        match end.unwrap_err() {
            CatalogError::Conflict { kind, found, .. } => {
                assert_eq!(kind, "task claim");
                assert_eq!(found.as_deref(), Some("exec-holder"));
            }
            e => panic!("unexpected {e}"),
        }
    }
    let t = cat.get_task(&id).await.unwrap().unwrap();
    assert_eq!(t.status, "processing", "the stale ends changed nothing");
    assert_eq!(t.message.as_deref(), Some(""));
    let rec = cat
        .claim_record(ClaimKind::Task, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.owner.as_deref(), Some("exec-holder"));

    cat.end_claimed_task(
        &id,
        &holder,
        TaskEnd::Success(&serde_json::json!({"image_id": "i"})),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let t = cat.get_task(&id).await.unwrap().unwrap();
    assert_eq!(t.status, "success");
    assert_eq!(t.result, Some(serde_json::json!({"image_id": "i"})));
    assert!(
        cat.claim_record(ClaimKind::Task, &id)
            .await
            .unwrap()
            .is_none(),
        "claim released"
    );
    // Ended: a second end is a conflict of the task's status, not of the claim.
    assert!(matches!(
        cat.fail_task(&id, &holder, "again", Duration::from_secs(60))
            .await
            .unwrap_err(),
        CatalogError::Conflict { kind: "task", .. }
    ));
}

pub async fn task_claims_recover_expired_leases(db: TestDb) {
    use imaged_catalog::tasks::NewTask;
    let cat = &db.catalog;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            cat.enqueue_task(&NewTask::new(
                "api_image_import",
                &format!("p{i}"),
                serde_json::json!({}),
            ))
            .await
            .unwrap(),
        );
    }
    // A task that Glance's own API is processing (no imaged claim) is never taken.
    let glance_owned = cat
        .enqueue_task(&NewTask::new("import", "p", serde_json::json!({})))
        .await
        .unwrap();
    db.exec(&format!(
        "UPDATE tasks SET status = 'processing' WHERE id = '{glance_owned}'"
    ))
    .await
    .unwrap();
    let mut handles = Vec::new();
    for w in 0..4 {
        let cat = db.reopen().await;
        handles.push(tokio::spawn(async move {
            let owner = ClaimOwner::from_string(format!("exec-{w}"));
            let mut mine = Vec::new();
            loop {
                let got = cat
                    .claim_tasks(&owner, Duration::from_secs(600), 3, &[])
                    .await
                    .unwrap();
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|t| t.id));
            }
            cat.close().await;
            mine
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(all, want, "every pending task claimed exactly once");
    // The holders "died": once their leases run out, processing tasks are
    // recoverable.
    let past = ts_literal(db.engine(), &ago(5));
    db.exec(&format!(
        "UPDATE imaged_claims SET lease_expires_at = {past} WHERE kind = 'task'"
    ))
    .await
    .unwrap();
    let rescuer = ClaimOwner::from_string("rescuer");
    let again = cat
        .claim_tasks(&rescuer, Duration::from_secs(60), 100, &[])
        .await
        .unwrap();
    assert_eq!(again.len(), 40);
    assert!(
        again
            .iter()
            .all(|t| t.status == "processing" && t.id != glance_owned)
    );
    // A dead holder's heartbeat is refused.
    let err = cat
        .heartbeat_task(
            &ids[0],
            &ClaimOwner::from_string("exec-0"),
            Duration::from_secs(60),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::Conflict { .. }));
}

pub async fn image_import_operations(db: TestDb) {
    use imaged_catalog::images::{ImageDataUpdate, NewImage};
    let cat = &db.catalog;
    let id = cat
        .create_image(&NewImage {
            name: Some("cirros".into()),
            owner: Some("project-a".into()),
            visibility: "community".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let img = cat.get_image(&id).await.unwrap().unwrap();
    assert_eq!(
        (
            img.status.as_str(),
            img.visibility.as_str(),
            img.deleted,
            img.min_disk
        ),
        ("queued", "community", false, 0)
    );
    cat.update_image_data(
        &id,
        &ImageDataUpdate {
            disk_format: Some("qcow2".into()),
            container_format: Some("bare".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    cat.set_image_status(&id, "queued", "importing")
        .await
        .unwrap();
    let err = cat
        .set_image_status(&id, "queued", "active")
        .await
        .unwrap_err();
    match err {
        CatalogError::Conflict { found, .. } => assert_eq!(found.as_deref(), Some("importing")),
        e => panic!("{e}"),
    }
    cat.update_image_data(
        &id,
        &ImageDataUpdate {
            checksum: Some("d41d8cd98f00b204e9800998ecf8427e".into()),
            os_hash_algo: Some("sha512".into()),
            os_hash_value: Some("ab".repeat(64)),
            size: Some(5_000_000_000),
            virtual_size: Some(10_737_418_240),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let loc = cat
        .add_location(
            &id,
            "file:///var/lib/glance/images/x",
            &serde_json::json!({"store": "fast"}),
            "active",
        )
        .await
        .unwrap();
    cat.set_image_status(&id, "importing", "active")
        .await
        .unwrap();
    let img = cat.get_image(&id).await.unwrap().unwrap();
    assert_eq!(img.size, Some(5_000_000_000));
    assert_eq!(img.virtual_size, Some(10_737_418_240));
    assert_eq!(img.os_hash_value.as_deref().map(str::len), Some(128));
    assert_eq!(img.disk_format.as_deref(), Some("qcow2"));
    let meta = db
        .text(&format!(
            "SELECT meta_data FROM image_locations WHERE id = {loc}"
        ))
        .await
        .unwrap();
    assert_eq!(meta.as_deref(), Some(r#"{"store": "fast"}"#));
    let locs = cat.image_locations(&id).await.unwrap();
    assert_eq!(locs.len(), 1);
    assert_eq!(
        locs[0].url.as_deref(),
        Ok("file:///var/lib/glance/images/x")
    );
    cat.set_location_status(loc, "active", "pending_delete")
        .await
        .unwrap();
    let locs = cat.image_locations(&id).await.unwrap();
    assert!(locs[0].deleted && locs[0].deleted_at.is_some());
    // Reverting to queued clears sizes.
    cat.set_image_status(&id, "active", "queued").await.unwrap();
    let img = cat.get_image(&id).await.unwrap().unwrap();
    assert_eq!((img.size, img.virtual_size), (None, None));
    assert!(matches!(
        cat.set_image_status("nope", "queued", "active")
            .await
            .unwrap_err(),
        CatalogError::NotFound { .. }
    ));
    if db.engine() == Engine::MySql {
        let err = cat.set_property(&id, "emoji", "😀").await.unwrap_err();
        assert!(err.to_string().contains("4-byte"), "{err}");
    }
}

pub async fn property_lock_is_atomic(db: TestDb) {
    use imaged_catalog::images::NewImage;
    let cat = &db.catalog;
    let id = cat.create_image(&NewImage::default()).await.unwrap();
    cat.set_property(&id, "hw_disk_bus", "virtio")
        .await
        .unwrap();
    cat.set_property(&id, "hw_disk_bus", "scsi").await.unwrap();
    // Many concurrent importers race for the lock: exactly one wins.
    let mut handles = Vec::new();
    for w in 0..8 {
        let cat = db.reopen().await;
        let id = id.clone();
        handles.push(tokio::spawn(async move {
            let won = cat
                .set_property_atomic(&id, "os_glance_import_task", &format!("task-{w}"))
                .await
                .unwrap();
            cat.close().await;
            won
        }));
    }
    let mut winners = 0;
    for h in handles {
        winners += usize::from(h.await.unwrap());
    }
    assert_eq!(winners, 1);
    let props = cat.image_properties(&id).await.unwrap();
    let holder = props
        .get("os_glance_import_task")
        .cloned()
        .flatten()
        .unwrap();
    assert_eq!(
        props.get("hw_disk_bus").cloned().flatten().as_deref(),
        Some("scsi")
    );
    // Conditional delete: a stale value loses, the right one wins.
    assert!(
        !cat.delete_property_atomic(&id, "os_glance_import_task", "task-stale")
            .await
            .unwrap()
    );
    assert!(
        cat.delete_property_atomic(&id, "os_glance_import_task", &holder)
            .await
            .unwrap()
    );
    // The soft-deleted row is revived, never duplicated.
    assert!(
        cat.set_property_atomic(&id, "os_glance_import_task", "task-new")
            .await
            .unwrap()
    );
    assert_eq!(db.count(&format!("SELECT COUNT(*) FROM image_properties WHERE image_id = '{id}' AND name = 'os_glance_import_task'")).await.unwrap(), 1);
    assert!(cat.delete_property(&id, "hw_disk_bus").await.unwrap());
    assert!(!cat.delete_property(&id, "hw_disk_bus").await.unwrap());
}

pub async fn centralized_cache_tables(db: TestDb) {
    let cat = &db.catalog;
    let n1 = "http://worker1:9292";
    let n2 = "http://worker2:9292";
    let a = cat.register_node(n1).await.unwrap();
    assert_eq!(cat.register_node(n1).await.unwrap(), a, "duplicate ignored");
    assert!(cat.insert_cached_image(n1, "img-a", 100).await.unwrap());
    assert!(!cat.insert_cached_image(n1, "img-a", 100).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(cat.insert_cached_image(n1, "img-b", 200).await.unwrap());
    assert!(cat.insert_cached_image(n2, "img-a", 100).await.unwrap());
    assert_eq!(
        cat.least_recently_accessed(n1).await.unwrap().as_deref(),
        Some("img-a")
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(cat.record_cache_hit(n1, "img-a").await.unwrap());
    assert_eq!(
        cat.least_recently_accessed(n1).await.unwrap().as_deref(),
        Some("img-b")
    );
    let rows = cat.cached_images(n1).await.unwrap();
    assert_eq!(rows.len(), 2);
    let ra = rows.iter().find(|r| r.image_id == "img-a").unwrap();
    assert_eq!((ra.hits, ra.size, ra.checksum.clone()), (1, 100, None));
    assert!(ra.last_accessed > ra.last_modified);
    assert_eq!(
        cat.cached_nodes("img-a").await.unwrap(),
        vec![n1.to_string(), n2.to_string()]
    );
    assert!(cat.is_image_cached_for_node(n2, "img-a").await.unwrap());
    assert!(cat.delete_cached_image(n1, "img-a").await.unwrap());
    assert_eq!(cat.delete_all_cached_images(n1).await.unwrap(), 1);
    assert!(cat.cached_images(n1).await.unwrap().is_empty());
    assert_eq!(cat.cached_images(n2).await.unwrap().len(), 1);
    // Adoption with explicit times (whole seconds: MySQL DATETIME keeps no fraction).
    let at = chrono::NaiveDate::from_ymd_opt(2020, 1, 2)
        .unwrap()
        .and_hms_opt(3, 4, 5)
        .unwrap();
    let modified = at - chrono::Duration::hours(1);
    assert!(
        cat.insert_cached_image_at(n1, "img-c", 300, at, modified)
            .await
            .unwrap()
    );
    assert!(
        !cat.insert_cached_image_at(n1, "img-c", 300, at, modified)
            .await
            .unwrap()
    );
    let rc = cat.cached_images(n1).await.unwrap();
    let rc = rc.iter().find(|r| r.image_id == "img-c").unwrap();
    assert_eq!(
        (rc.last_accessed, rc.last_modified, rc.size, rc.hits),
        (at, modified, 300, 0)
    );
}

pub async fn encrypted_locations_written_like_glance(db: TestDb) {
    use imaged_catalog::images::NewImage;
    let key = "0123456789abcdef0123456789abcdef";
    let mut opts = db.options.clone();
    opts.metadata_encryption_key = Some(key.into());
    let cat = imaged_catalog::Catalog::open(opts).await.unwrap();
    let id = cat.create_image(&NewImage::default()).await.unwrap();
    let url = "s3://key:secret@s3.example.com/bucket/obj";
    let loc = cat
        .add_location(&id, url, &serde_json::json!({}), "active")
        .await
        .unwrap();
    let stored = db
        .text(&format!(
            "SELECT value FROM image_locations WHERE id = {loc}"
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !stored.contains("secret") && !stored.contains(':'),
        "{stored}"
    );
    assert_eq!(
        imaged_catalog::LocationCipher::new(key)
            .unwrap()
            .decrypt(&stored)
            .unwrap(),
        url
    );
    assert_eq!(
        cat.image_locations(&id).await.unwrap()[0].url.as_deref(),
        Ok(url)
    );
    // Without the key the stored text comes back as is.
    assert_eq!(
        db.catalog.image_locations(&id).await.unwrap()[0]
            .url
            .as_deref(),
        Ok(stored.as_str())
    );
    assert!(
        imaged_catalog::Catalog::open({
            let mut o = db.options.clone();
            o.metadata_encryption_key = Some("too-short".into());
            o
        })
        .await
        .is_err()
    );
    cat.close().await;
}

pub async fn retry_after_forced_lock(db: TestDb) {
    use imaged_catalog::tasks::NewTask;
    let id = db
        .catalog
        .enqueue_task(&NewTask::new("import", "p", serde_json::json!({})))
        .await
        .unwrap();
    let lock = Duration::from_millis(if db.engine() == Engine::MySql {
        1000
    } else {
        150
    });
    let mut no_retry = db.options.clone();
    no_retry.lock_timeout = Some(lock);
    no_retry.db_max_retries = 0;
    let mut with_retry = no_retry.clone();
    with_retry.db_max_retries = 50;
    with_retry.db_retry_interval = Duration::from_millis(100);
    with_retry.db_max_retry_interval = Duration::from_millis(200);
    let hold = Duration::from_millis(2500);

    for (opts, expect_ok) in [(no_retry, false), (with_retry, true)] {
        let cat = imaged_catalog::Catalog::open(opts).await.unwrap();
        let holder = hold_lock(&db, &id, hold).await;
        let started = std::time::Instant::now();
        let res = cat.expire_tasks(None).await.map(|_| ());
        let res = match res {
            Ok(()) => {
                cat.fail_task(
                    &id,
                    &ClaimOwner::generate(),
                    "forced",
                    Duration::from_secs(3600),
                )
                .await
            }
            Err(e) => Err(e),
        };
        if expect_ok {
            res.unwrap();
            assert!(
                started.elapsed() >= hold - Duration::from_millis(300),
                "waited for the holder: {:?}",
                started.elapsed()
            );
            assert_eq!(
                db.catalog.get_task(&id).await.unwrap().unwrap().status,
                "failure"
            );
        } else {
            let err = res.unwrap_err();
            assert!(err.is_retryable(), "lock error classified retryable: {err}");
        }
        holder.await.unwrap();
        cat.close().await;
    }
}

/// Holds a write lock that covers task `id` for `hold`: SQLite `BEGIN
/// EXCLUSIVE` on a separate rusqlite connection; a row lock elsewhere.
async fn hold_lock(db: &TestDb, id: &str, hold: Duration) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = match db.engine() {
        Engine::Sqlite => {
            let path = db
                .options
                .connection
                .trim_start_matches("sqlite:///")
                .to_string();
            tokio::task::spawn_blocking(move || {
                let c = rusqlite::Connection::open(path).unwrap();
                c.execute_batch("BEGIN EXCLUSIVE").unwrap();
                tx.send(()).unwrap();
                std::thread::sleep(hold);
                c.execute_batch("COMMIT").unwrap();
            })
        }
        Engine::Postgres | Engine::MySql => {
            let url = db.options.connection.clone();
            let id = id.to_string();
            let pg = db.engine() == Engine::Postgres;
            tokio::spawn(async move {
                use sqlx::Connection;
                if pg {
                    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                    let mut t = c.begin().await.unwrap();
                    sqlx::query("UPDATE tasks SET updated_at = updated_at WHERE id = $1")
                        .bind(&id)
                        .execute(&mut *t)
                        .await
                        .unwrap();
                    tx.send(()).unwrap();
                    tokio::time::sleep(hold).await;
                    t.commit().await.unwrap();
                } else {
                    let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
                    let mut t = c.begin().await.unwrap();
                    sqlx::query("UPDATE tasks SET updated_at = updated_at WHERE id = ?")
                        .bind(&id)
                        .execute(&mut *t)
                        .await
                        .unwrap();
                    tx.send(()).unwrap();
                    tokio::time::sleep(hold).await;
                    t.commit().await.unwrap();
                }
            })
        }
    };
    rx.await.unwrap();
    handle
}

/// `Catalog::delayed_delete_image` leaves an imported image exactly as Glance's
/// API does with `delayed_delete = True`, so the scrubber's listing finds it.
pub async fn api_delayed_delete_leaves_glance_rows(db: TestDb) {
    use imaged_catalog::delayed_delete::DelayedDelete;
    use imaged_catalog::images::NewImage;
    let cat = &db.catalog;
    let new_active = |name: &str| NewImage {
        name: Some(name.into()),
        owner: Some("project-a".into()),
        status: "active".into(),
        ..Default::default()
    };
    let id = cat.create_image(&new_active("doomed")).await.unwrap();
    for i in 0..2 {
        cat.add_location(
            &id,
            &format!("file:///var/lib/glance/images/{id}-{i}"),
            &serde_json::json!({}),
            "active",
        )
        .await
        .unwrap();
    }
    cat.set_property(&id, "hw_disk_bus", "virtio")
        .await
        .unwrap();
    cat.add_image_tag(&id, "demo").await.unwrap();

    let outcome = cat.delayed_delete_image(&id).await.unwrap();
    assert_eq!(outcome, DelayedDelete::PendingDelete { locations: 2 });
    let img = cat.get_image(&id).await.unwrap().unwrap();
    assert_eq!((img.status.as_str(), img.deleted), ("pending_delete", true));
    let image_deleted_at = img.deleted_at.expect("deleted_at set");
    assert_eq!(img.updated_at, Some(image_deleted_at));
    let locs = cat.image_scrub_locations(&id).await.unwrap();
    assert_eq!(locs.len(), 2);
    for l in &locs {
        let at = l.location_deleted_at.expect("location deleted_at set");
        assert!(at <= image_deleted_at, "locations are queued first");
        assert_eq!(l.image_status, "pending_delete");
    }
    let live_children = |table: &str| {
        format!("SELECT COUNT(*) FROM {table} WHERE image_id = '{id}' AND deleted = FALSE")
    };
    for t in ["image_locations", "image_properties", "image_tags"] {
        assert_eq!(db.count(&live_children(t)).await.unwrap(), 0, "{t}");
    }
    let prop_deleted_at = db
        .timestamp(&format!(
            "SELECT deleted_at FROM image_properties WHERE image_id = '{id}'"
        ))
        .await
        .unwrap();
    assert_eq!(prop_deleted_at, Some(image_deleted_at));
    // Gone for the API: a second delete finds nothing.
    assert!(matches!(
        cat.delayed_delete_image(&id).await,
        Err(CatalogError::NotFound { .. })
    ));

    // No location: straight to `deleted`, whatever the status.
    let empty = cat
        .create_image(&NewImage {
            status: "queued".into(),
            ..new_active("empty")
        })
        .await
        .unwrap();
    assert_eq!(
        cat.delayed_delete_image(&empty).await.unwrap(),
        DelayedDelete::Deleted
    );
    let img = cat.get_image(&empty).await.unwrap().unwrap();
    assert_eq!((img.status.as_str(), img.deleted), ("deleted", true));

    // A non-active image with data is refused and left as it was.
    let saving = cat
        .create_image(&NewImage {
            status: "saving".into(),
            ..new_active("saving")
        })
        .await
        .unwrap();
    cat.add_location(&saving, "file:///x", &serde_json::json!({}), "active")
        .await
        .unwrap();
    match cat.delayed_delete_image(&saving).await {
        Err(CatalogError::Conflict { found, .. }) => assert_eq!(found.as_deref(), Some("saving")),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let img = cat.get_image(&saving).await.unwrap().unwrap();
    assert_eq!((img.status.as_str(), img.deleted), ("saving", false));
    assert_eq!(cat.image_scrub_locations(&saving).await.unwrap().len(), 0);
}
