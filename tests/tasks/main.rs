//! End-to-end tests of the real `imaged-tasks` binary against catalogs on
//! SQLite, PostgreSQL and MariaDB, an HTTP server on loopback and a
//! filesystem store.

mod api_harness;
mod harness;

mod api_import;
mod api_import_revert;
mod concurrency;
mod failures;
mod import_ok;
mod metrics;
mod recovery;

#[path = "../common/systemd.rs"]
mod systemd;

#[test]
fn systemd_units_verify_and_use_real_flags() {
    systemd::check_units(
        "imaged-tasks",
        std::path::Path::new(env!("CARGO_BIN_EXE_imaged-tasks")),
    );
}
