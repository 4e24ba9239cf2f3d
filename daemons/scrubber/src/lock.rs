//! The single-instance rule on SQLite: an exclusive `flock` on a lock file
//! next to the database (`<database>.imaged-scrubber.lock`).
//!
//! Why a file lock rather than a catalog lease: SQLite catalogs are local
//! files, so every scrubber that can open the database can also see the
//! lock file; the kernel releases the lock when the process dies (no stale
//! lease to wait out after a crash); and taking it costs no database write.
//! PostgreSQL and MySQL catalogs need no lock: there, several scrubbers
//! coordinate through per-image claims.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use imaged_catalog::url::SqliteTarget;
use imaged_catalog::{Catalog, Engine};
use nix::fcntl::{Flock, FlockArg};

/// A held instance lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct InstanceLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl InstanceLock {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another scrubber holds it.
    #[error(
        "another imaged-scrubber is already running against the SQLite catalog {database} \
         (lock file {lock} is held); on SQLite only one scrubber may run at a time"
    )]
    Held { database: String, lock: String },
    /// The lock file could not be opened.
    #[error("cannot open the scrubber lock file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The lock file that guards `database`.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".imaged-scrubber.lock");
    PathBuf::from(name)
}

/// Takes the instance lock when `catalog` is a SQLite file; `None` for
/// server engines and in-memory databases, which need none.
pub fn acquire(catalog: &Catalog) -> Result<Option<InstanceLock>, LockError> {
    if catalog.engine() != Engine::Sqlite {
        return Ok(None);
    }
    match catalog.url().sqlite_target() {
        Some(SqliteTarget::File(db)) => acquire_for(db).map(Some),
        _ => Ok(None),
    }
}

/// Takes the instance lock for the SQLite database at `database`.
pub fn acquire_for(database: &Path) -> Result<InstanceLock, LockError> {
    let path = lock_path(database);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LockError::Io {
            path: path.display().to_string(),
            source,
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(InstanceLock { path, _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Held {
            database: database.display().to_string(),
            lock: path.display().to_string(),
        }),
        Err((_, errno)) => Err(LockError::Io {
            path: path.display().to_string(),
            source: std::io::Error::from(errno),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_same_database_is_refused_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("glance.sqlite");
        let first = acquire_for(&db).unwrap();
        assert_eq!(first.path(), lock_path(&db));
        let err = acquire_for(&db).unwrap_err();
        assert!(matches!(err, LockError::Held { .. }), "{err}");
        assert!(err.to_string().contains("already running"));
        drop(first);
        acquire_for(&db).expect("lock is free again after release");
    }
}
