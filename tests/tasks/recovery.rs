//! Crash recovery: the executor killed with SIGKILL mid-download /
//! mid-upload (and mid-staging with conversion), restarted, and every task
//! reaching a final state with nothing left behind; attempts are bounded;
//! SIGTERM hands running tasks back.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::harness::*;

async fn wait_copying(env: &Env, id: &str) {
    Env::wait_for("progress message", Duration::from_secs(20), || async {
        let t = env.task(id).await;
        t.status == "processing"
            && t.message
                .as_deref()
                .is_some_and(|m| m.starts_with("Copied") || m.starts_with("Downloaded"))
    })
    .await;
}

async fn check_clean_end(env: &Env, id: &str, data: &[u8]) {
    let t = env.task(id).await;
    assert_eq!(t.status, "success", "{:?}", t.message);
    let image_id = t.result.unwrap()["image_id"].as_str().unwrap().to_string();
    // Exactly one live image: the abandoned attempt's image was removed.
    assert_eq!(
        env.db
            .count("SELECT COUNT(*) FROM images WHERE deleted = FALSE")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        env.db
            .count("SELECT COUNT(*) FROM images WHERE status IN ('saving', 'queued', 'importing')")
            .await
            .unwrap(),
        0
    );
    let img = env.catalog().get_image(&image_id).await.unwrap().unwrap();
    assert_eq!(img.checksum.as_deref(), Some(md5_hex(data).as_str()));
    // Neither the abandoned attempt's image nor the final one keeps a lock row.
    assert_eq!(
        env.db
            .count("SELECT COUNT(*) FROM image_properties WHERE name = 'os_glance_import_task'")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        Env::files(&env.images),
        vec![image_id.clone()],
        "only the final image file in the store"
    );
    assert_eq!(
        Env::files(&env.work),
        Vec::<String>::new(),
        "no staging leftovers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_upload_then_restart_finishes_cleanly() {
    let server = Server::start().await;
    let data = payload(4 << 20, 21);
    server.put("k", data.clone());
    for engine in engines() {
        let Some(env) = Env::new(engine, server.port, "").await else {
            continue;
        };
        let id = env.enqueue(&server.url("slow/60/k"), json!({"disk_format": "raw"}));
        let mut child = env.spawn(&["run"]);
        wait_copying(&env, &id).await;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        let _ = child.wait();
        assert_eq!(env.task(&id).await.status, "processing");
        // Restart: the lease (2 s) expires, the task is taken over from a
        // clean state and finishes.
        server.put("k", data.clone());
        let mut again = env.spawn(&["run"]);
        Env::wait_for("takeover", Duration::from_secs(40), || async {
            env.task(&id).await.status != "processing"
        })
        .await;
        // Give the periodic sweep a moment for temp files of the killed writer.
        kill(Pid::from_raw(again.id() as i32), Signal::SIGTERM).unwrap();
        assert!(again.wait().unwrap().success());
        let out = env.run(&["once"]);
        assert!(out.status.success());
        check_clean_end(&env, &id, &data).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_download_with_staging_then_restart() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut q = qemu_create(
        dir.path(),
        "k.qcow2",
        "qcow2",
        &["preallocation=metadata"],
        "4M",
    );
    q.truncate(q.len());
    server.put("kq", q);
    let Some(env) = Env::new(
        imaged_catalog::Engine::Sqlite,
        server.port,
        "[taskflow_executor]\nconversion_format = raw\n",
    )
    .await
    else {
        return;
    };
    let id = env.enqueue(&server.url("slow/30/kq"), json!({"disk_format": "qcow2"}));
    let mut child = env.spawn(&["run"]);
    wait_copying(&env, &id).await;
    assert!(
        !Env::files(&env.work).is_empty(),
        "staging file exists mid-download"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = child.wait();
    let out = env.run(&["once"]);
    // The lease has not expired yet, but the orphaned work file of the dead
    // process is removed at start.
    assert!(out.status.success());
    assert_eq!(Env::files(&env.work), Vec::<String>::new());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let out = env.run(&["once"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_clean_end(&env, &id, &vec![0u8; 4 << 20]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_bounded() {
    let server = Server::start().await;
    server.put("m", payload(4 << 20, 22));
    let Some(env) = Env::new(
        imaged_catalog::Engine::Sqlite,
        server.port,
        "[imaged_tasks]\nmax_attempts = 1\n",
    )
    .await
    else {
        return;
    };
    // Slow enough for several heartbeats (1 s) to report progress before
    // the kill, also on a loaded machine.
    let id = env.enqueue(&server.url("slow/80/m"), json!({"disk_format": "raw"}));
    let mut child = env.spawn(&["run"]);
    wait_copying(&env, &id).await;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = child.wait();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(1));
    let t = env.task(&id).await;
    assert_eq!(t.status, "failure");
    assert!(t.message.unwrap().contains("abandoned after 1 attempts"));
    assert_eq!(
        env.db
            .count("SELECT COUNT(*) FROM images WHERE deleted = FALSE")
            .await
            .unwrap(),
        0
    );
    assert_eq!(Env::files(&env.images), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_running_tasks_back() {
    let server = Server::start().await;
    let data = payload(6 << 20, 23);
    server.put("h", data.clone());
    let Some(env) = Env::new(imaged_catalog::Engine::Sqlite, server.port, "").await else {
        return;
    };
    let id = env.enqueue(&server.url("slow/80/h"), json!({"disk_format": "raw"}));
    let mut child = env.spawn(&["run"]);
    wait_copying(&env, &id).await;
    // The heartbeat keeps moving updated_at and the progress line.
    let first = env.task(&id).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let later = env.task(&id).await;
    assert!(
        later.updated_at > first.updated_at,
        "heartbeat bumps updated_at"
    );
    assert!(
        later.message.as_deref().unwrap().contains(" MiB of 6 MiB"),
        "{:?}",
        later.message
    );
    let t0 = std::time::Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "exited within the shutdown deadline"
    );
    let t = env.task(&id).await;
    assert_eq!(t.status, "processing");
    assert!(t.message.unwrap().contains("Handed back"));
    assert_eq!(
        env.db
            .count("SELECT COUNT(*) FROM images WHERE deleted = FALSE")
            .await
            .unwrap(),
        0,
        "attempt reverted"
    );
    // Handed back = claimable at once, no lease wait.
    let out = env.run(&["once"]);
    assert!(out.status.success());
    check_clean_end(&env, &id, &data).await;
}
