//! Opening catalogs: SQLite auto-creation, refusal of databases without a
//! known schema, start-up waiting, `slave_connection` routing and the MySQL
//! session mode.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use imaged_catalog::scrub::{FinishOutcome, ScrubQuery};
use imaged_catalog::testing::{PendingDeleteImage, TestDb, query_text};
use imaged_catalog::{Catalog, CatalogError, CatalogOptions, Engine};

#[tokio::test]
async fn missing_sqlite_file_is_created_with_glance_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/glance.sqlite");
    let cat = Catalog::open(CatalogOptions::new(format!("sqlite:///{}", path.display())))
        .await
        .unwrap();
    assert!(path.exists());
    assert_eq!(
        cat.alembic_versions().await.unwrap(),
        Some(vec!["2024_1_contract01".to_string()])
    );
    let tables = cat.table_names().await.unwrap();
    assert!(
        tables.contains(&"images".to_string()) && tables.contains(&"imaged_claims".to_string())
    );
    cat.close().await;
    // Opening again verifies and keeps the data.
    let cat = Catalog::open(CatalogOptions::new(format!("sqlite:///{}", path.display())))
        .await
        .unwrap();
    cat.verify_schema().await.unwrap();
    cat.close().await;
}

#[tokio::test]
async fn database_without_schema_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.sqlite");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE unrelated (x INTEGER)")
        .unwrap();
    let err = Catalog::open(CatalogOptions::new(format!("sqlite:///{}", path.display())))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CatalogError::Schema(_)), "{msg}");
    assert!(msg.contains("glance-manage db sync"), "{msg}");
    // Nothing was added to the foreign database.
    let n: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn unreachable_server_is_retried_then_reported_without_password() {
    let mut o = CatalogOptions::new("postgresql+psycopg2://glance:hunter2@127.0.0.1:1/glance");
    o.max_retries = 2;
    o.retry_interval = Duration::from_millis(200);
    let started = Instant::now();
    let err = Catalog::open(o).await.unwrap_err();
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "waited {:?}",
        started.elapsed()
    );
    assert!(!err.to_string().contains("hunter2"));
    let err = Catalog::open(CatalogOptions::new("mssql+pyodbc://u:hunter2@h/db"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mssql") && err.contains("u:***@h") && !err.contains("hunter2"),
        "{err}"
    );
}

async fn slave_routing(engine: Engine) {
    let (Some(primary), Some(replica)) = (TestDb::new(engine).await, TestDb::new(engine).await)
    else {
        return;
    };
    // The image exists only on the "replica": listing reads there, writes
    // go to the primary.
    let img = PendingDeleteImage::new(
        chrono::Utc::now().naive_utc() - chrono::Duration::hours(1),
        1,
    );
    img.insert(&replica.catalog).await.unwrap();
    let mut o = primary.options.clone();
    o.slave_connection = Some(replica.options.connection.clone());
    let cat = Catalog::open(o).await.unwrap();
    let listed: Vec<_> = cat
        .scrub_stream(ScrubQuery::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].image_id, img.id);
    assert_eq!(
        cat.finish_image(&img.id).await.unwrap(),
        FinishOutcome::NotFound
    );
    cat.close().await;
}

#[tokio::test]
async fn slave_connection_serves_listings_sqlite() {
    slave_routing(Engine::Sqlite).await;
}

#[tokio::test]
async fn slave_connection_serves_listings_postgres() {
    slave_routing(Engine::Postgres).await;
}

#[tokio::test]
async fn slave_connection_serves_listings_mysql() {
    slave_routing(Engine::MySql).await;
}

#[tokio::test]
async fn mysql_session_mode_is_set() {
    let Some(db) = TestDb::with_options(Engine::MySql, |o| {
        o.mysql_sql_mode = Some("TRADITIONAL".into());
    })
    .await
    else {
        return;
    };
    let mode = query_text(&db.catalog, "SELECT CAST(@@SESSION.sql_mode AS CHAR)")
        .await
        .unwrap()
        .unwrap();
    assert!(
        mode.contains("STRICT_TRANS_TABLES") && mode.contains("NO_ZERO_DATE"),
        "{mode}"
    );
    let Some(db2) = TestDb::with_options(Engine::MySql, |o| {
        o.mysql_sql_mode = Some("ANSI_QUOTES".into());
    })
    .await
    else {
        return;
    };
    let mode = query_text(&db2.catalog, "SELECT CAST(@@SESSION.sql_mode AS CHAR)")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mode, "ANSI_QUOTES");
}

#[tokio::test]
async fn in_memory_sqlite_gets_the_schema() {
    let cat = Catalog::open(CatalogOptions::new("sqlite://"))
        .await
        .unwrap();
    cat.verify_schema().await.unwrap();
    let id = cat
        .create_image(&imaged_catalog::images::NewImage::default())
        .await
        .unwrap();
    assert_eq!(cat.get_image(&id).await.unwrap().unwrap().status, "queued");
}
