//! Daemon mode through the real binary: periodic passes, live reload of
//! `scrub_time` on SIGHUP, graceful SIGTERM (D10's signal handling).

use std::time::{Duration, Instant};

use imaged_catalog::Engine;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::*;

async fn wait_status(env: &Env, id: &str, want: &str, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if env.image_text(id, "status").await.as_deref() == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn daemon_scrubs_reloads_and_stops_gracefully() {
    let Some(env) = Env::new(Engine::Sqlite).await else {
        return;
    };
    let log = env.dir.path().join("scrubber.log");
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--config-file").arg(&env.config).arg("--daemon");
    scrub_env(&mut cmd);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    let pid = Pid::from_raw(child.id() as i32);

    // Work queued after start-up is picked up by a later wakeup.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let first = env.pending_image(1, hour_ago()).await;
    assert!(
        wait_status(&env, &first.id, "deleted", Duration::from_secs(10)).await,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // Reload: scrub_time now an hour and a half; a fresh deletion (an hour
    // old) must wait.
    env.write_config("scrub_time = 5400", "");
    kill(pid, Signal::SIGHUP).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = env.pending_image(1, hour_ago()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.image_text(&second.id, "status").await.as_deref(),
        Some("pending_delete"),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    kill(pid, Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(
        text.contains("scrub_time"),
        "reload logged the change: {text}"
    );
    assert!(text.contains("scrub pass:"), "{text}");
}
