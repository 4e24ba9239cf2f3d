//! Serial vs parallel engine modes, and two executors sharing one queue on
//! PostgreSQL and MariaDB (and SQLite): no task runs twice.

use std::sync::atomic::Ordering;

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_runs_one_task_at_a_time_parallel_runs_max_workers() {
    let server = Server::start().await;
    for i in 0..4 {
        server.put(&format!("s{i}"), payload(512 << 10, i));
    }
    let Some(env) = Env::new(imaged_catalog::Engine::Sqlite, server.port, "").await else {
        return;
    };
    let raw = json!({"disk_format": "raw"});
    for i in 0..4 {
        env.enqueue(&server.url(&format!("slow/40/s{i}")), raw.clone());
    }
    env.once();
    assert_eq!(
        server.state.max_active.load(Ordering::SeqCst),
        1,
        "serial: one download at a time"
    );

    server.state.max_active.store(0, Ordering::SeqCst);
    env.write_config("[taskflow_executor]\nengine_mode = parallel\nmax_workers = 4\n");
    for i in 0..4 {
        env.enqueue(&server.url(&format!("slow/40/s{i}")), raw.clone());
    }
    env.once();
    assert_eq!(
        server.state.max_active.load(Ordering::SeqCst),
        4,
        "parallel: max_workers at once"
    );
    assert_eq!(
        env.db
            .count("SELECT COUNT(*) FROM tasks WHERE status = 'success'")
            .await
            .unwrap(),
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_executors_never_run_one_task_twice() {
    let server = Server::start().await;
    for i in 0..12 {
        server.put(&format!("t{i}"), payload(256 << 10, 100 + i));
    }
    for engine in engines() {
        let Some(env) = Env::new(
            engine,
            server.port,
            "[taskflow_executor]\nengine_mode = parallel\nmax_workers = 3\n",
        )
        .await
        else {
            continue;
        };
        server.state.hits.lock().unwrap().clear();
        let mut ids = Vec::new();
        for i in 0..12 {
            ids.push(env.enqueue(
                &server.url(&format!("slow/5/t{i}")),
                json!({"disk_format": "raw"}),
            ));
        }
        let a = env.spawn(&["once"]);
        let b = env.spawn(&["once"]);
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        assert!(
            a.status.success(),
            "{engine} a: {}",
            String::from_utf8_lossy(&a.stderr)
        );
        assert!(
            b.status.success(),
            "{engine} b: {}",
            String::from_utf8_lossy(&b.stderr)
        );
        for id in &ids {
            assert_eq!(env.task(id).await.status, "success", "{engine}");
        }
        for i in 0..12 {
            assert_eq!(
                server.hits(&format!("t{i}")),
                1,
                "{engine}: t{i} downloaded once"
            );
        }
        assert_eq!(
            env.db
                .count("SELECT COUNT(*) FROM images WHERE status = 'active'")
                .await
                .unwrap(),
            12
        );
        assert_eq!(Env::files(&env.images).len(), 12);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_worker_counts_to_a_running_daemon() {
    let server = Server::start().await;
    for i in 0..4 {
        server.put(&format!("r{i}"), payload(512 << 10, 50 + i));
    }
    let Some(env) = Env::new(imaged_catalog::Engine::Sqlite, server.port, "").await else {
        return;
    };
    let mut child = env.spawn(&["run"]);
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    env.write_config("[taskflow_executor]\nengine_mode = parallel\nmax_workers = 4\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let ids: Vec<String> = (0..4)
        .map(|i| {
            env.enqueue(
                &server.url(&format!("slow/60/r{i}")),
                json!({"disk_format": "raw"}),
            )
        })
        .collect();
    Env::wait_for(
        "all four done",
        std::time::Duration::from_secs(30),
        || async {
            let mut done = true;
            for id in &ids {
                done &= env.task(id).await.status == "success";
            }
            done
        },
    )
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        server.state.max_active.load(Ordering::SeqCst),
        4,
        "reloaded max_workers in force"
    );
}
