//! Real process signals become control events (own test binary, because the
//! handlers stay installed for the life of the process).

use std::time::Duration;

use imaged_runtime::control::{self, Control};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

async fn next(rx: &mut control::ControlStream) -> Control {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("control event within 5 s")
        .expect("channel open")
}

#[tokio::test]
async fn signals_map_to_control_events_and_a_second_stop_quits() {
    let (tx, mut rx) = control::signals().unwrap();
    let me = Pid::this();

    kill(me, Signal::SIGHUP).unwrap();
    assert_eq!(next(&mut rx).await, Control::Reload);

    kill(me, Signal::SIGTERM).unwrap();
    assert_eq!(next(&mut rx).await, Control::Terminate);

    // Reload still passes through during shutdown; the daemon decides.
    kill(me, Signal::SIGHUP).unwrap();
    assert_eq!(next(&mut rx).await, Control::Reload);

    kill(me, Signal::SIGINT).unwrap();
    assert_eq!(next(&mut rx).await, Control::Quit);

    kill(me, Signal::SIGQUIT).unwrap();
    assert_eq!(next(&mut rx).await, Control::Quit);

    // Other sources share the channel.
    assert!(tx.send(Control::Reload));
    assert_eq!(next(&mut rx).await, Control::Reload);
}
