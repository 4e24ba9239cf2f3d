//! Reloader and supervise: reload failures keep the old value, stops drain.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use imaged_runtime::control::{self, Control, ShutdownToken};
use imaged_runtime::exit::ExitCode;
use imaged_runtime::reload::{Ended, ReloadOutcome, Reloader, SuperviseOptions, supervise};
use imaged_runtime::systemd::{Heartbeat, Notifier};

fn socket() -> (tempfile::TempDir, Notifier, UnixDatagram) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_nonblocking(true).unwrap();
    (dir, Notifier::with_socket(path), sock)
}

fn drain(sock: &UnixDatagram) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

#[test]
fn failed_reload_keeps_the_old_value_and_a_later_good_one_applies() {
    let (_dir, notifier, sock) = socket();
    // The "files" the closure reads: each reload takes the next entry.
    let mut inputs = vec![
        Err(vec![
            "wakeup_time: not a number".to_string(),
            "scrub_pool_size: must be > 0".to_string(),
        ]),
        Ok(600_u32),
    ]
    .into_iter();
    let mut reloader = Reloader::new(300_u32, notifier, move |old: &u32| {
        let next = inputs.next().unwrap()?;
        assert_eq!(*old, 300, "the closure sees the value in force");
        Ok(next)
    });

    let first = reloader.reload();
    assert_eq!(
        first,
        ReloadOutcome::Rejected {
            errors: vec![
                "wakeup_time: not a number".into(),
                "scrub_pool_size: must be > 0".into()
            ]
        }
    );
    assert_eq!(*reloader.current(), 300);
    let msgs = drain(&sock);
    assert_eq!(msgs.len(), 2);
    assert!(msgs[0].starts_with("RELOADING=1\nMONOTONIC_USEC="));
    assert_eq!(
        msgs[1],
        "READY=1\nSTATUS=reload rejected (2 error(s)); running with the previous configuration\n"
    );

    assert_eq!(reloader.reload(), ReloadOutcome::Applied);
    assert_eq!(*reloader.current(), 600);
    assert_eq!(reloader.counts(), (1, 1));
    let msgs = drain(&sock);
    assert_eq!(msgs[1], "READY=1\nSTATUS=configuration reloaded\n");
}

type TestReloader = Reloader<u32, String, Box<dyn FnMut(&u32) -> Result<u32, Vec<String>> + Send>>;

fn counting_reloader(notifier: Notifier) -> (TestReloader, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let reloader: TestReloader = Reloader::new(
        1,
        notifier,
        Box::new(move |old: &u32| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(old + 1)
        }),
    );
    (reloader, calls)
}

fn options() -> SuperviseOptions {
    SuperviseOptions {
        drain_deadline: Duration::from_secs(10),
        heartbeat_every: Duration::from_secs(1),
    }
}

#[tokio::test(start_paused = true)]
async fn terminate_cancels_and_waits_for_the_work() {
    let (_dir, notifier, sock) = socket();
    let (tx, mut controls) = control::channel();
    let shutdown = ShutdownToken::new();
    let (mut reloader, calls) = counting_reloader(notifier);
    let heartbeat = Heartbeat::new();
    let work = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            // In-flight work finishing within the drain deadline.
            tokio::time::sleep(Duration::from_secs(3)).await;
            ExitCode::WorkFailed
        }
    });
    tx.send(Control::Reload);
    tx.send(Control::Terminate);
    tx.send(Control::Reload);
    let start = tokio::time::Instant::now();
    let done = supervise(
        &mut controls,
        &shutdown,
        &mut reloader,
        &heartbeat,
        work,
        options(),
    )
    .await;
    assert_eq!(done.ended, Ended::Finished);
    // The work's own verdict is what main returns.
    assert_eq!(done.exit, ExitCode::WorkFailed);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert!(shutdown.is_cancelled());
    // The reload before Terminate ran; the one during shutdown did not.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(*reloader.current(), 2);
    let msgs = drain(&sock);
    assert_eq!(msgs.last().map(String::as_str), Some("STOPPING=1\n"));
}

#[tokio::test(start_paused = true)]
async fn drain_deadline_abandons_stuck_work_and_exits_zero() {
    let (_dir, notifier, _sock) = socket();
    let (tx, mut controls) = control::channel();
    let shutdown = ShutdownToken::new();
    let (mut reloader, _) = counting_reloader(notifier);
    let work = tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        ExitCode::Success
    });
    let start = tokio::time::Instant::now();
    tx.send(Control::Terminate);
    let done = supervise(
        &mut controls,
        &shutdown,
        &mut reloader,
        &Heartbeat::new(),
        work,
        options(),
    )
    .await;
    assert_eq!(done.ended, Ended::DrainTimedOut);
    assert_eq!(done.exit, ExitCode::Success);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn second_stop_quits_at_once() {
    let (_dir, notifier, _sock) = socket();
    let (tx, mut controls) = control::channel();
    let shutdown = ShutdownToken::new();
    let (mut reloader, _) = counting_reloader(notifier);
    let work = tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        ExitCode::Success
    });
    let supervisor = tokio::spawn(async move {
        let done = supervise(
            &mut controls,
            &shutdown,
            &mut reloader,
            &Heartbeat::new(),
            work,
            options(),
        )
        .await;
        (done, tokio::time::Instant::now())
    });
    let start = tokio::time::Instant::now();
    tx.send(Control::Terminate);
    tokio::time::sleep(Duration::from_secs(2)).await;
    tx.send(Control::Quit);
    let (done, at) = supervisor.await.unwrap();
    assert_eq!(done.ended, Ended::Quit);
    assert_eq!(done.exit, ExitCode::Success);
    assert_eq!(at.duration_since(start), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn panicking_work_is_an_internal_error_and_heartbeat_moves() {
    let (_dir, notifier, _sock) = socket();
    let (_tx, mut controls) = control::channel();
    let shutdown = ShutdownToken::new();
    let (mut reloader, _) = counting_reloader(notifier);
    let heartbeat = Heartbeat::new();
    let work = tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        panic!("daemon bug");
    });
    let done = supervise(
        &mut controls,
        &shutdown,
        &mut reloader,
        &heartbeat,
        work,
        options(),
    )
    .await;
    assert_eq!(done.exit, ExitCode::Internal);
    assert_eq!(done.ended, Ended::Finished);
    // The loop kept beating once a second while it waited (0 s to 4 s,
    // and 5 s if the tick won the race with the task's end).
    assert!(
        (5..=6).contains(&heartbeat.beats()),
        "beats: {}",
        heartbeat.beats()
    );
}
