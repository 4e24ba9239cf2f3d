//! Several scrubbers at once: on PostgreSQL and MariaDB each location is
//! deleted by exactly one of them; on SQLite a second one is refused.

use imaged_catalog::Engine;

use crate::common::*;

async fn two_scrubbers_split_the_work(engine: Engine) {
    let Some(env) = Env::with_config(
        engine,
        "scrub_pool_size = 4",
        "[imaged_scrubber]\nbatch_size = 20\n",
    )
    .await
    else {
        return;
    };
    let n = 200;
    let mut locations = 0;
    for i in 0..n {
        let per = 1 + i % 3;
        locations += per as u64;
        env.pending_image(per, hour_ago()).await;
    }
    let spawn = || {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("--config-file").arg(&env.config).arg("once");
        scrub_env(&mut cmd);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    let a = spawn();
    let b = spawn();
    let oa = a.wait_with_output().unwrap();
    let ob = b.wait_with_output().unwrap();
    assert_eq!(oa.status.code(), Some(0), "{}", text(&oa));
    assert_eq!(ob.status.code(), Some(0), "{}", text(&ob));
    let (la, lb) = (text(&oa), text(&ob));
    let scrubbed =
        summary_value(&la, "scrubbed").unwrap() + summary_value(&lb, "scrubbed").unwrap();
    let not_found =
        summary_value(&la, "not_found").unwrap() + summary_value(&lb, "not_found").unwrap();
    // Every data file existed, so a second delete of any location would
    // have reported it missing.
    assert_eq!(not_found, 0, "a location was deleted twice\n{la}\n{lb}");
    assert_eq!(scrubbed, locations, "{la}\n{lb}");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM images WHERE status = 'deleted'")
            .await,
        n as i64
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM image_locations WHERE status = 'pending_delete'")
            .await,
        0
    );
    assert_eq!(std::fs::read_dir(&env.datadir).unwrap().count(), 0);
}

#[tokio::test]
async fn two_scrubbers_split_the_work_postgres() {
    two_scrubbers_split_the_work(Engine::Postgres).await;
}

#[tokio::test]
async fn two_scrubbers_split_the_work_mysql() {
    two_scrubbers_split_the_work(Engine::MySql).await;
}

#[tokio::test]
async fn second_scrubber_on_sqlite_is_refused() {
    let Some(env) = Env::new(Engine::Sqlite).await else {
        return;
    };
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--config-file").arg(&env.config).arg("run");
    scrub_env(&mut cmd);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut daemon = cmd.spawn().unwrap();
    // Wait until the daemon holds the lock (its first pass ran).
    let lock = format!(
        "{}.imaged-scrubber.lock",
        env.db.options.connection.trim_start_matches("sqlite:///")
    );
    let mut refused = None;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if !std::path::Path::new(&format!("/{}", lock.trim_start_matches('/'))).exists() {
            continue;
        }
        let out = env.run(&["once"]);
        if out.status.code() == Some(4) {
            refused = Some(out);
            break;
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    let out = refused.expect("second scrubber was never refused");
    assert!(text(&out).contains("already running"), "{}", text(&out));
    // With the daemon gone, a one-shot run works again.
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
