//! sd_notify datagrams received on a real unix datagram socket.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::Command;
use std::time::Duration;

use imaged_runtime::control::ShutdownToken;
use imaged_runtime::systemd::{self, Heartbeat, Notifier};

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("notification datagram");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn bound_socket() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (dir, path, sock)
}

#[test]
fn explicit_socket_receives_each_state() {
    let (_dir, path, sock) = bound_socket();
    let n = Notifier::with_socket(&path);
    assert!(n.is_enabled());
    n.ready().unwrap();
    assert_eq!(recv(&sock), "READY=1\n");
    n.status("scrubbing 3 images").unwrap();
    assert_eq!(recv(&sock), "STATUS=scrubbing 3 images\n");
    n.stopping().unwrap();
    assert_eq!(recv(&sock), "STOPPING=1\n");
    n.watchdog().unwrap();
    assert_eq!(recv(&sock), "WATCHDOG=1\n");
    n.ready_with_status("idle").unwrap();
    assert_eq!(recv(&sock), "READY=1\nSTATUS=idle\n");

    n.reloading().unwrap();
    let msg = recv(&sock);
    let mut lines = msg.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"));
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC line")
        .parse()
        .unwrap();
    assert!(usec > 0);
}

#[test]
fn disabled_notifier_sends_nothing_and_succeeds() {
    let n = Notifier::disabled();
    assert!(!n.is_enabled());
    n.ready().unwrap();
    n.reloading().unwrap();
}

#[test]
fn missing_socket_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let n = Notifier::with_socket(dir.path().join("absent.sock"));
    assert!(n.ready().is_err());
}

/// Runs in a child process with `NOTIFY_SOCKET` / `WATCHDOG_USEC` set by
/// `from_env_in_child_process`; does nothing when started any other way.
#[test]
#[ignore = "child process of from_env_in_child_process"]
fn child_notifies_from_env() {
    if std::env::var_os("IMAGED_NOTIFY_CHILD").is_none() {
        return;
    }
    let n = Notifier::from_env();
    assert!(n.is_enabled());
    let timeout = systemd::watchdog_timeout().map(|d| d.as_micros());
    n.status(&format!("watchdog={timeout:?}")).unwrap();
    n.ready().unwrap();
}

fn run_child(notify_socket: &str) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_notifies_from_env",
            "--ignored",
            "--test-threads=1",
        ])
        .env("IMAGED_NOTIFY_CHILD", "1")
        .env("NOTIFY_SOCKET", notify_socket)
        .env("WATCHDOG_USEC", "3000000")
        .env_remove("WATCHDOG_PID")
        .output()
        .unwrap();
    assert!(status.status.success(), "child failed: {status:?}");
}

#[test]
fn from_env_in_child_process() {
    let (_dir, path, sock) = bound_socket();
    run_child(path.to_str().unwrap());
    assert_eq!(recv(&sock), "STATUS=watchdog=Some(3000000)\n");
    assert_eq!(recv(&sock), "READY=1\n");
}

#[test]
fn from_env_abstract_socket_in_child_process() {
    let name = format!("imaged-notify-test-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    run_child(&format!("@{name}"));
    assert_eq!(recv(&sock), "STATUS=watchdog=Some(3000000)\n");
    assert_eq!(recv(&sock), "READY=1\n");
}

#[tokio::test(start_paused = true)]
async fn watchdog_pings_only_while_the_heartbeat_moves() {
    let (_dir, path, sock) = bound_socket();
    sock.set_nonblocking(true).unwrap();
    let count = |sock: &UnixDatagram| {
        let mut n = 0;
        let mut buf = [0u8; 64];
        while let Ok(len) = sock.recv(&mut buf) {
            assert_eq!(&buf[..len], b"WATCHDOG=1\n");
            n += 1;
        }
        n
    };
    let heartbeat = Heartbeat::new();
    let shutdown = ShutdownToken::new();
    let task = systemd::spawn_watchdog(
        Notifier::with_socket(&path),
        Duration::from_secs(20),
        heartbeat.clone(),
        shutdown.clone(),
    );
    // Alive: bump every second; pings every 10 s (half the timeout).
    for _ in 0..35 {
        heartbeat.bump();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Ticks at 0, 10, 20 and 30 s.
    assert_eq!(count(&sock), 4);
    // Hung from 35 s: the tick at 40 s still covers the bumps of 31–34 s;
    // the ticks at 50, 60 and 70 s see no progress and stay silent.
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(count(&sock), 1);
    // Recovers.
    heartbeat.bump();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(count(&sock), 1);
    shutdown.cancel();
    task.await.unwrap();
}
