//! The oslo.concurrency external lock files Glance's API takes around cache maintenance
//! (`glance-cache-prune`, `glance-cache-clean`, `glance-cache`, `image_cache_db_init`).
//!
//! Glance locks them with `fcntl.lockf`, i.e. POSIX record locks; `flock()` would not conflict
//! with those on Linux. We take open-file-description locks (`F_OFD_SETLK`), which do conflict
//! with POSIX record locks and, unlike them, are not dropped when some unrelated descriptor of
//! the same file is closed in this process. The files themselves are never deleted.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};

use crate::CacheError;

/// Lock Glance's `POST /v2/cache/prune` holds.
pub const PRUNE: &str = "glance-cache-prune";
/// Lock Glance's `POST /v2/cache/clean` holds.
pub const CLEAN: &str = "glance-cache-clean";
/// Lock glance-cache-prefetcher holds.
pub const PREFETCH: &str = "glance-cache";
/// Lock held while `cache.db` is created.
pub const DB_INIT: &str = "image_cache_db_init";

/// A held lock; released when dropped (the descriptor closes).
#[derive(Debug)]
pub struct LockFile {
    _file: File,
    path: PathBuf,
}

impl LockFile {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes `<dir>/<name>` exclusively, polling for up to `wait` as oslo does; `Ok(None)` when
    /// another process still holds it. Waiting sleeps on the async timer between non-blocking
    /// attempts, so a lock Glance's API holds never stalls the runtime thread (a blocking
    /// `F_OFD_SETLKW` would, and could not honour `wait`).
    pub async fn acquire(
        dir: &Path,
        name: &str,
        wait: Duration,
    ) -> Result<Option<LockFile>, CacheError> {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| CacheError::io(&path, e))?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if try_lock(&file, &path)? {
                return Ok(Some(LockFile { _file: file, path }));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
    }
}

/// Between two attempts on a held lock (oslo's fasteners polls at a similar pace).
const POLL: Duration = Duration::from_millis(50);

/// An exclusive (write) lock request on the whole file, as `fcntl.lockf` makes it; the same
/// request serves POSIX record locks and OFD locks.
pub fn whole_file_write_lock() -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// One non-blocking attempt at an exclusive OFD lock on the whole file.
fn try_lock(file: &File, path: &Path) -> Result<bool, CacheError> {
    match fcntl(file, FcntlArg::F_OFD_SETLK(&whole_file_write_lock())) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN | Errno::EACCES) => Ok(false),
        Err(e) => Err(CacheError::io(path, std::io::Error::from(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_holder_is_refused_until_release() {
        let d = tempfile::tempdir().unwrap();
        let first = LockFile::acquire(d.path(), PRUNE, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert!(
            LockFile::acquire(d.path(), PRUNE, Duration::from_millis(120))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            LockFile::acquire(d.path(), CLEAN, Duration::ZERO)
                .await
                .unwrap()
                .is_some()
        );
        drop(first);
        assert!(
            LockFile::acquire(d.path(), PRUNE, Duration::ZERO)
                .await
                .unwrap()
                .is_some()
        );
        assert!(d.path().join(PRUNE).exists());
    }

    /// On a single-threaded runtime the holder's task can only release the lock if the
    /// waiter yields the thread while it waits; a blocking wait would time out instead.
    #[tokio::test(flavor = "current_thread")]
    async fn waiting_for_a_held_lock_lets_other_tasks_run() {
        let d = tempfile::tempdir().unwrap();
        let held = LockFile::acquire(d.path(), PRUNE, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        let (released_tx, released_rx) = tokio::sync::oneshot::channel();
        let holder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(held);
            let _ = released_tx.send(());
        });
        let got = LockFile::acquire(d.path(), PRUNE, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(got.is_some(), "the waiter saw the other task's release");
        released_rx
            .await
            .expect("the holder task ran while the waiter waited");
        holder.await.unwrap();
    }
}
