//! End-to-end tests of the `imaged-cache` binary on caches laid out exactly as Glance's API
//! leaves them, for the sqlite driver and the centralized_db driver on every catalog engine.

mod central;
mod concurrency;
mod defects;
mod harness;
mod limits;
mod metrics;
mod prefetch;
mod states;
mod verbs;

#[path = "../common/systemd.rs"]
mod systemd;

#[test]
fn systemd_units_verify_and_use_real_flags() {
    systemd::check_units(
        "imaged-cache",
        std::path::Path::new(env!("CARGO_BIN_EXE_imaged-cache")),
    );
}
