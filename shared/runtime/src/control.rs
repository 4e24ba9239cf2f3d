//! Control events that steer a running daemon: stop, quit at once, reload.
//!
//! OS signals and configuration-file changes are turned into one
//! [`Control`] enum delivered on one channel, so a daemon has a single place
//! that decides what a reload or a stop means:
//!
//! * SIGTERM / SIGINT → [`Control::Terminate`] (graceful shutdown); any
//!   further SIGTERM / SIGINT → [`Control::Quit`] (stop now).
//! * SIGQUIT → [`Control::Quit`].
//! * SIGHUP and a change to a watched configuration file → [`Control::Reload`].
//!
//! Cancellation of running work is a separate concern: daemons take a
//! [`ShutdownToken`] in their `run(config, shutdown)` function, which lets
//! tests drive a daemon in-process without sending signals.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::RuntimeError;

/// Cancellation handle passed to every `run(config, shutdown)` function and
/// cloned into every task; cancelling it means "take no new work".
pub use tokio_util::sync::CancellationToken as ShutdownToken;

/// What the daemon is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Control {
    /// Graceful shutdown: take no new work, let in-flight work finish within
    /// the drain deadline, then exit.
    Terminate,
    /// Stop immediately (second stop signal or SIGQUIT).
    Quit,
    /// Re-read the configuration and apply what changed.
    Reload,
}

/// The signals the control stream understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SIGTERM.
    Term,
    /// SIGINT.
    Int,
    /// SIGHUP.
    Hup,
    /// SIGQUIT.
    Quit,
}

/// Turns a sequence of signals into control events; remembers whether a
/// graceful shutdown is already under way so a repeated stop signal escalates.
#[derive(Debug, Default, Clone)]
pub struct SignalMapper {
    terminating: bool,
}

impl SignalMapper {
    /// A mapper that has not seen a stop signal yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The control event for `signal`, given the signals seen before.
    pub fn map(&mut self, signal: Signal) -> Control {
        match signal {
            Signal::Term | Signal::Int if self.terminating => Control::Quit,
            Signal::Term | Signal::Int => {
                self.terminating = true;
                Control::Terminate
            }
            Signal::Hup => Control::Reload,
            Signal::Quit => Control::Quit,
        }
    }
}

/// Sending half of the control channel; cheap to clone. Signal listeners,
/// the configuration watcher and tests all feed the same channel.
#[derive(Debug, Clone)]
pub struct ControlSender {
    tx: mpsc::UnboundedSender<Control>,
}

impl ControlSender {
    /// Queues `control`; returns `false` when the receiving side is gone.
    pub fn send(&self, control: Control) -> bool {
        self.tx.send(control).is_ok()
    }

    /// Installs handlers for SIGTERM, SIGINT, SIGHUP and SIGQUIT and forwards
    /// them as control events (see the module docs for the mapping).
    ///
    /// Must be called inside a tokio runtime. Once installed, the handlers
    /// replace the default actions for the life of the process.
    pub fn listen_signals(&self) -> Result<tokio::task::JoinHandle<()>, RuntimeError> {
        let install = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| RuntimeError::Signal {
                signal: name,
                source,
            })
        };
        let mut term = install(SignalKind::terminate(), "SIGTERM")?;
        let mut int = install(SignalKind::interrupt(), "SIGINT")?;
        let mut hup = install(SignalKind::hangup(), "SIGHUP")?;
        let mut quit = install(SignalKind::quit(), "SIGQUIT")?;
        let tx = self.clone();
        Ok(tokio::spawn(async move {
            let mut mapper = SignalMapper::new();
            loop {
                let received = tokio::select! {
                    Some(()) = term.recv() => Signal::Term,
                    Some(()) = int.recv() => Signal::Int,
                    Some(()) = hup.recv() => Signal::Hup,
                    Some(()) = quit.recv() => Signal::Quit,
                    else => break,
                };
                let control = mapper.map(received);
                tracing::info!(signal = ?received, ?control, "signal received");
                if !tx.send(control) {
                    break;
                }
            }
        }))
    }
}

/// Receiving half of the control channel.
#[derive(Debug)]
pub struct ControlStream {
    rx: mpsc::UnboundedReceiver<Control>,
}

impl ControlStream {
    /// The next control event; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Control> {
        self.rx.recv().await
    }

    /// A control event if one is already queued.
    pub fn try_recv(&mut self) -> Option<Control> {
        self.rx.try_recv().ok()
    }
}

/// A new, empty control channel.
pub fn channel() -> (ControlSender, ControlStream) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ControlSender { tx }, ControlStream { rx })
}

/// A control channel already fed by the process signals.
///
/// The returned sender can be cloned into a [`ConfigWatcher`] so file changes
/// reload through the same path as SIGHUP.
pub fn signals() -> Result<(ControlSender, ControlStream), RuntimeError> {
    let (tx, rx) = channel();
    tx.listen_signals()?;
    Ok((tx, rx))
}

/// Default quiet period before a burst of file events becomes one reload.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(500);

/// Watches configuration files and emits [`Control::Reload`] when one of
/// them changes.
///
/// The parent directories are watched rather than the files: editors and
/// configuration-management tools usually write a new file and rename it
/// over the old one, which would silently end a watch on the old inode.
/// Events are filtered to the named files and debounced, so one save that
/// produces several events yields one reload. A watched directory that is
/// itself moved or replaced also triggers a reload, and the watch is re-armed
/// on the new directory. Symbolic links are not followed: a change to the
/// target of a symlinked configuration file is seen only if the target lives
/// in a watched directory too. Dropping the watcher stops it.
#[derive(Debug)]
pub struct ConfigWatcher {
    task: tokio::task::JoinHandle<()>,
}

impl ConfigWatcher {
    /// Starts watching `files`; reloads are sent to `tx` once no further
    /// matching event has arrived for `debounce`.
    ///
    /// Must be called inside a tokio runtime.
    pub fn spawn(
        files: &[PathBuf],
        tx: ControlSender,
        debounce: Duration,
    ) -> Result<Self, RuntimeError> {
        let mut targets: HashSet<(PathBuf, OsString)> = HashSet::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for file in files {
            let (dir, name) = split_watch_target(file)?;
            if !dirs.contains(&dir) {
                dirs.push(dir.clone());
            }
            targets.insert((dir, name));
        }

        let (event_tx, mut event_rx) = mpsc::unbounded_channel::<()>();
        let filter = targets.clone();
        let watched_dirs = dirs.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(event) => {
                    if is_relevant(&event, &filter, &watched_dirs) {
                        let _ = event_tx.send(());
                    }
                }
                Err(error) => tracing::warn!(%error, "configuration watch error"),
            })
            .map_err(|e| RuntimeError::Watch(e.to_string()))?;
        for dir in &dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| RuntimeError::Watch(format!("{}: {e}", dir.display())))?;
        }

        let mut identities: Vec<Option<(u64, u64)>> =
            dirs.iter().map(|d| dir_identity(d)).collect();
        let task = tokio::spawn(async move {
            // The watcher lives in this task so dropping the task ends the watch.
            let mut watcher = watcher;
            while event_rx.recv().await.is_some() {
                // Swallow events until the files have been quiet for `debounce`.
                loop {
                    match tokio::time::timeout(debounce, event_rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                // Re-arm only a directory that was itself replaced (its old
                // watch is dead); re-adding a live watch could drop events.
                for (dir, seen) in dirs.iter().zip(identities.iter_mut()) {
                    let now = dir_identity(dir);
                    if now != *seen {
                        let _ = watcher.unwatch(dir);
                        match watcher.watch(dir, RecursiveMode::NonRecursive) {
                            Ok(()) => *seen = now,
                            Err(error) => {
                                tracing::warn!(dir = %dir.display(), %error, "cannot re-arm configuration watch")
                            }
                        }
                    }
                }
                tracing::info!("configuration file changed");
                if !tx.send(Control::Reload) {
                    return;
                }
            }
        });
        Ok(Self { task })
    }
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

fn split_watch_target(file: &Path) -> Result<(PathBuf, OsString), RuntimeError> {
    let name = file
        .file_name()
        .ok_or_else(|| RuntimeError::Watch(format!("{}: not a file path", file.display())))?;
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // inotify reports paths under the directory as it was registered, so
    // normalise once to compare events reliably.
    let dir = parent
        .canonicalize()
        .map_err(|e| RuntimeError::Watch(format!("{}: {e}", parent.display())))?;
    Ok((dir, name.to_os_string()))
}

/// A change to one of the files, or to a watched directory itself (moved or
/// removed: the watch must be re-armed and the files re-read).
fn is_relevant(
    event: &notify::Event,
    targets: &HashSet<(PathBuf, OsString)>,
    dirs: &[PathBuf],
) -> bool {
    if event.kind.is_access() {
        return false;
    }
    event.paths.iter().any(|path| {
        if dirs.iter().any(|d| d == path) {
            return true;
        }
        match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => targets.contains(&(dir.to_path_buf(), name.to_os_string())),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_signal_terminates_and_second_quits() {
        let mut mapper = SignalMapper::new();
        assert_eq!(mapper.map(Signal::Hup), Control::Reload);
        assert_eq!(mapper.map(Signal::Term), Control::Terminate);
        assert_eq!(mapper.map(Signal::Hup), Control::Reload);
        assert_eq!(mapper.map(Signal::Int), Control::Quit);
        assert_eq!(mapper.map(Signal::Term), Control::Quit);
    }

    #[test]
    fn interrupt_counts_as_stop_and_sigquit_always_quits() {
        let mut mapper = SignalMapper::new();
        assert_eq!(mapper.map(Signal::Quit), Control::Quit);
        assert_eq!(mapper.map(Signal::Int), Control::Terminate);
    }

    #[tokio::test]
    async fn channel_delivers_in_order_and_ends_when_senders_drop() {
        let (tx, mut rx) = channel();
        let tx2 = tx.clone();
        assert!(tx.send(Control::Reload));
        assert!(tx2.send(Control::Terminate));
        drop(tx);
        drop(tx2);
        assert_eq!(rx.recv().await, Some(Control::Reload));
        assert_eq!(rx.recv().await, Some(Control::Terminate));
        assert_eq!(rx.recv().await, None);
    }

    #[test]
    fn watch_target_is_split_into_canonical_dir_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("glance-scrubber.conf");
        let (d, n) = split_watch_target(&file).unwrap();
        assert_eq!(d, dir.path().canonicalize().unwrap());
        assert_eq!(n, OsString::from("glance-scrubber.conf"));
        assert!(split_watch_target(Path::new("/nonexistent-dir-xyz/a.conf")).is_err());
    }
}
