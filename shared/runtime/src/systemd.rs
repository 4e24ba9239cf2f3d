//! systemd service-manager notifications (`sd_notify` protocol).
//!
//! [`Notifier`] sends `READY=1`, `STATUS=…`, `RELOADING=1` (with
//! `MONOTONIC_USEC`, as `Type=notify-reload` requires), `STOPPING=1` and
//! `WATCHDOG=1` datagrams to the socket named by `NOTIFY_SOCKET`. Without
//! that variable every call is a no-op, so daemons call it unconditionally.
//!
//! The watchdog ([`spawn_watchdog`]) pings only while the daemon proves it is
//! alive by bumping a [`Heartbeat`]: a main loop that hangs stops the pings and
//! systemd restarts the service, which a timer-only ping would never achieve.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::control::ShutdownToken;

/// Sends state changes to the service manager.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<OsSocket>,
}

#[derive(Debug, Clone)]
enum OsSocket {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// A notifier for the socket in `NOTIFY_SOCKET`; disabled when unset.
    pub fn from_env() -> Self {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(value) if !value.is_empty() => {
                let bytes = value.as_encoded_bytes();
                let socket = match bytes.strip_prefix(b"@") {
                    // A leading '@' names a Linux abstract socket.
                    Some(name) => OsSocket::Abstract(name.to_vec()),
                    None => OsSocket::Path(PathBuf::from(value)),
                };
                Self {
                    socket: Some(socket),
                }
            }
            _ => Self::disabled(),
        }
    }

    /// A notifier that sends to the datagram socket bound at `path`.
    pub fn with_socket(path: impl Into<PathBuf>) -> Self {
        Self {
            socket: Some(OsSocket::Path(path.into())),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self { socket: None }
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Start-up checks passed; the service is ready.
    pub fn ready(&self) -> io::Result<()> {
        self.send(&[NotifyState::Ready])
    }

    /// Free-form description of what the daemon is doing (`systemctl status`).
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&[NotifyState::Status(status)])
    }

    /// Ready again after a reload, with the status to show.
    pub fn ready_with_status(&self, status: &str) -> io::Result<()> {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)])
    }

    /// A configuration reload has started; follow with [`Notifier::ready`].
    pub fn reloading(&self) -> io::Result<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        let now = NotifyState::monotonic_usec_now()?;
        self.send(&[NotifyState::Reloading, now])
    }

    /// Graceful shutdown has started.
    pub fn stopping(&self) -> io::Result<()> {
        self.send(&[NotifyState::Stopping])
    }

    /// One watchdog keep-alive.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send(&[NotifyState::Watchdog])
    }

    /// Sends `states` as one datagram, one `KEY=VALUE` per line.
    pub fn send(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let mut message = String::new();
        for state in states {
            message.push_str(&state.to_string());
            message.push('\n');
        }
        let sock = UnixDatagram::unbound()?;
        let addr = match socket {
            OsSocket::Path(path) => SocketAddr::from_pathname(path)?,
            OsSocket::Abstract(name) => SocketAddr::from_abstract_name(name)?,
        };
        let sent = sock.send_to_addr(message.as_bytes(), &addr)?;
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "incomplete notification datagram",
            ));
        }
        Ok(())
    }
}

/// The watchdog timeout systemd expects (`WATCHDOG_USEC`), if the watchdog is
/// enabled for this process.
pub fn watchdog_timeout() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// A liveness counter the daemon's main loop bumps; the watchdog pings only
/// when it has moved since the previous ping.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    /// A new heartbeat.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the main loop is alive.
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times the heartbeat was bumped.
    pub fn beats(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Pings the watchdog every `timeout / 2` while `heartbeat` keeps moving;
/// stops when `shutdown` is cancelled.
///
/// The daemon must bump the heartbeat at least once per `timeout / 2` from
/// its main loop (the supervising loop in [`crate::reload::supervise`] does
/// so on its own tick). A missed ping is logged, not retried, so systemd sees
/// the hang.
pub fn spawn_watchdog(
    notifier: Notifier,
    timeout: Duration,
    heartbeat: Heartbeat,
    shutdown: ShutdownToken,
) -> tokio::task::JoinHandle<()> {
    let period = timeout / 2;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; count it as proof of life at start-up.
        let mut last_seen = heartbeat.beats().wrapping_sub(1);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let now = heartbeat.beats();
            if now != last_seen {
                last_seen = now;
                if let Err(error) = notifier.watchdog() {
                    tracing::warn!(%error, "cannot send watchdog keep-alive");
                }
            } else {
                tracing::error!(
                    "main loop made no progress for {period:?}; withholding watchdog keep-alive"
                );
            }
        }
    })
}
