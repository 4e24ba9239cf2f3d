//! Catalog conformance suite: every test body runs on SQLite, PostgreSQL and
//! MySQL/MariaDB (servers from `IMAGED_TEST_POSTGRES_URL` /
//! `IMAGED_TEST_MYSQL_URL`; unreachable servers fail under `CI`).

mod common;
mod suite;

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(db) = imaged_catalog::testing::TestDb::new(imaged_catalog::Engine::Sqlite).await {
                        crate::suite::$name(db).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(db) = imaged_catalog::testing::TestDb::new(imaged_catalog::Engine::Postgres).await {
                        crate::suite::$name(db).await;
                    }
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(db) = imaged_catalog::testing::TestDb::new(imaged_catalog::Engine::MySql).await {
                        crate::suite::$name(db).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    schema_matches_reference,
    schema_verification_refuses_unknown,
    additive_tables_drop_cleanly,
    timestamps_round_trip_glance_forms,
    scrub_listing_selects_due_work,
    scrub_listing_decrypts_per_row,
    claims_under_contention,
    lease_expiry_and_owner_cas,
    cas_conflicts_are_reported,
    batched_location_updates,
    restore_undeletes_everything,
    stuck_images_and_status,
    tasks_lifecycle,
    task_claims_recover_expired_leases,
    claimed_task_end_needs_the_claim,
    image_import_operations,
    property_lock_is_atomic,
    centralized_cache_tables,
    encrypted_locations_written_like_glance,
    retry_after_forced_lock,
    api_delayed_delete_leaves_glance_rows,
);
