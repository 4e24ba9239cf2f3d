//! The oslo.concurrency external lock files Glance's API takes around cache maintenance
//! (`glance-cache-prune`, `glance-cache-clean`, `glance-cache`, `image_cache_db_init`).
//!
//! Glance locks them with `fcntl.lockf`, i.e. POSIX record locks; `flock()` would not conflict
//! with those on Linux. We take open-file-description locks (`F_OFD_SETLK`), which do conflict
//! with POSIX record locks and, unlike them, are not dropped when some unrelated descriptor of
//! the same file is closed in this process. The files themselves are never deleted.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// another process still holds it.
    pub fn acquire(dir: &Path, name: &str, wait: Duration) -> Result<Option<LockFile>, CacheError> {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| CacheError::io(&path, e))?;
        let deadline = Instant::now() + wait;
        loop {
            let req = libc::flock {
                l_type: libc::F_WRLCK as libc::c_short,
                l_whence: libc::SEEK_SET as libc::c_short,
                l_start: 0,
                l_len: 0,
                l_pid: 0,
            };
            match fcntl(&file, FcntlArg::F_OFD_SETLK(&req)) {
                Ok(_) => return Ok(Some(LockFile { _file: file, path })),
                Err(Errno::EAGAIN | Errno::EACCES) => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(CacheError::io(&path, std::io::Error::from(e))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_release() {
        let d = tempfile::tempdir().unwrap();
        let first = LockFile::acquire(d.path(), PRUNE, Duration::ZERO)
            .unwrap()
            .unwrap();
        assert!(
            LockFile::acquire(d.path(), PRUNE, Duration::from_millis(120))
                .unwrap()
                .is_none()
        );
        assert!(
            LockFile::acquire(d.path(), CLEAN, Duration::ZERO)
                .unwrap()
                .is_some()
        );
        drop(first);
        assert!(
            LockFile::acquire(d.path(), PRUNE, Duration::ZERO)
                .unwrap()
                .is_some()
        );
        assert!(d.path().join(PRUNE).exists());
    }
}
