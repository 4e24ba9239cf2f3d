//! End-to-end tests of `imaged-scrubber`: the real binary, a generated
//! configuration, a filesystem store in a temporary directory and a Glance
//! catalog on SQLite, PostgreSQL and MariaDB/MySQL.

mod behaviour;
mod common;
mod concurrency;
mod daemon;
mod defects;
mod metrics;
mod restore;

#[path = "../common/systemd.rs"]
mod systemd;

#[test]
fn systemd_units_verify_and_use_real_flags() {
    systemd::check_units(
        "imaged-scrubber",
        std::path::Path::new(env!("CARGO_BIN_EXE_imaged-scrubber")),
    );
}
