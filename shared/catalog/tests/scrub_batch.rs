//! Batched scrubber writes on every engine: `commit_scrubbed` leaves
//! Glance's row states and reports conflicts, `still_pending_locations`
//! and the claim look-ups see what other writers did.

use std::time::Duration;

use imaged_catalog::scrub::FinishOutcome;
use imaged_catalog::scrub_batch::ScrubbedImage;
use imaged_catalog::testing::{PendingDeleteImage, TestDb};
use imaged_catalog::time::utcnow;
use imaged_catalog::{ClaimKind, ClaimOwner, Engine};

async fn location_ids(db: &TestDb, image: &str) -> Vec<i64> {
    let n = db
        .count(&format!(
            "SELECT COUNT(*) FROM image_locations WHERE image_id = '{image}'"
        ))
        .await
        .unwrap();
    let min = db
        .count(&format!(
            "SELECT MIN(id) + COUNT(*) * 0 FROM image_locations WHERE image_id = '{image}'"
        ))
        .await
        .unwrap();
    (min..min + n).collect()
}

async fn commit_and_lookups(engine: Engine) {
    let Some(db) = TestDb::new(engine).await else {
        return;
    };
    let cat = &db.catalog;
    let t = utcnow() - chrono::Duration::hours(1);
    let full = PendingDeleteImage::new(t, 2);
    let partial = PendingDeleteImage::new(t, 2);
    let restored = PendingDeleteImage::new(t, 1);
    for img in [&full, &partial, &restored] {
        img.insert(cat).await.unwrap();
    }
    let owner = ClaimOwner::from_string("test:1:a");
    let ids: Vec<String> = [&full, &partial, &restored]
        .iter()
        .map(|i| i.id.clone())
        .collect();
    let got = cat
        .claim(ClaimKind::ScrubImage, &ids, &owner, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    let recs = cat
        .claim_records_of(ClaimKind::ScrubImage, &ids)
        .await
        .unwrap();
    assert_eq!(recs.len(), 3);
    assert!(recs.iter().all(|r| r.owner.as_deref() == Some("test:1:a")));

    let full_locs = location_ids(&db, &full.id).await;
    let partial_locs = location_ids(&db, &partial.id).await;
    let restored_locs = location_ids(&db, &restored.id).await;
    // Another writer restores one location first.
    db.exec(&format!(
        "UPDATE image_locations SET status = 'active', deleted = FALSE WHERE id = {}",
        restored_locs[0]
    ))
    .await
    .unwrap();
    let mut all: Vec<i64> = full_locs
        .iter()
        .chain(&partial_locs)
        .chain(&restored_locs)
        .copied()
        .collect();
    all.sort_unstable();
    let pending = cat.still_pending_locations(&ids, &all).await.unwrap();
    assert_eq!(pending.len(), 4);
    assert!(!pending.contains(&restored_locs[0]));

    let out = cat
        .commit_scrubbed(
            &owner,
            &[
                ScrubbedImage {
                    image_id: full.id.clone(),
                    location_ids: full_locs.clone(),
                    release: true,
                },
                ScrubbedImage {
                    image_id: partial.id.clone(),
                    location_ids: vec![partial_locs[0]],
                    release: false,
                },
                ScrubbedImage {
                    image_id: restored.id.clone(),
                    location_ids: restored_locs.clone(),
                    release: true,
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(out[0].finish, FinishOutcome::Deleted);
    assert_eq!(out[0].marked, 2);
    assert_eq!(out[0].image_size, Some(1024));
    assert_eq!(out[1].finish, FinishOutcome::LocationsRemaining(1));
    assert_eq!(out[1].marked, 1);
    assert_eq!(out[2].marked, 0);
    assert_eq!(
        out[2].conflicts,
        vec![(restored_locs[0], Some("active".to_string()))]
    );

    // Glance's row states.
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM image_locations WHERE image_id = '{}' AND status = 'deleted' AND deleted = TRUE AND deleted_at = updated_at",
            full.id
        ))
        .await
        .unwrap(),
        2
    );
    assert_eq!(
        db.text(&format!(
            "SELECT status FROM images WHERE id = '{}'",
            full.id
        ))
        .await
        .unwrap()
        .as_deref(),
        Some("deleted")
    );
    // Released claims are gone; the partial image keeps its claim for the
    // failure record.
    let recs = cat
        .claim_records_of(ClaimKind::ScrubImage, &ids)
        .await
        .unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].unit_id, partial.id);
    cat.record_failure(
        ClaimKind::ScrubImage,
        &partial.id,
        &owner,
        "permanent",
        "boom",
        None,
    )
    .await
    .unwrap();
    let failed = cat.failed_claims(ClaimKind::ScrubImage, 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].last_error.as_deref(), Some("boom"));
}

#[tokio::test]
async fn commit_and_lookups_sqlite() {
    commit_and_lookups(Engine::Sqlite).await;
}

#[tokio::test]
async fn commit_and_lookups_postgres() {
    commit_and_lookups(Engine::Postgres).await;
}

#[tokio::test]
async fn commit_and_lookups_mysql() {
    commit_and_lookups(Engine::MySql).await;
}

/// `renew_claims` extends the leases the owner holds and leaves other
/// owners' claims alone.
async fn renew_many(engine: Engine) {
    let Some(db) = TestDb::new(engine).await else {
        return;
    };
    let cat = &db.catalog;
    let t = utcnow() - chrono::Duration::hours(1);
    let mine = PendingDeleteImage::new(t, 1);
    let theirs = PendingDeleteImage::new(t, 1);
    for img in [&mine, &theirs] {
        img.insert(cat).await.unwrap();
    }
    let a = ClaimOwner::from_string("test:1:a");
    let b = ClaimOwner::from_string("test:2:b");
    let short = Duration::from_secs(60);
    assert_eq!(
        cat.claim(
            ClaimKind::ScrubImage,
            std::slice::from_ref(&mine.id),
            &a,
            short
        )
        .await
        .unwrap()
        .len(),
        1
    );
    assert_eq!(
        cat.claim(
            ClaimKind::ScrubImage,
            std::slice::from_ref(&theirs.id),
            &b,
            short
        )
        .await
        .unwrap()
        .len(),
        1
    );
    let ids = vec![mine.id.clone(), theirs.id.clone()];
    cat.renew_claims(ClaimKind::ScrubImage, &ids, &a, Duration::from_secs(3600))
        .await
        .unwrap();
    let recs = cat
        .claim_records_of(ClaimKind::ScrubImage, &ids)
        .await
        .unwrap();
    let lease_of = |id: &str| {
        let r = recs.iter().find(|r| r.unit_id == id).unwrap();
        r.lease_expires_at.unwrap()
    };
    let now = utcnow();
    assert!(lease_of(&mine.id) > now + chrono::Duration::minutes(30));
    assert!(lease_of(&theirs.id) <= now + chrono::Duration::minutes(2));
    assert_eq!(
        recs.iter()
            .find(|r| r.unit_id == theirs.id)
            .unwrap()
            .owner
            .as_deref(),
        Some("test:2:b")
    );
}

#[tokio::test]
async fn renew_many_sqlite() {
    renew_many(Engine::Sqlite).await;
}

#[tokio::test]
async fn renew_many_postgres() {
    renew_many(Engine::Postgres).await;
}

#[tokio::test]
async fn renew_many_mysql() {
    renew_many(Engine::MySql).await;
}
