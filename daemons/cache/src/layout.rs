//! The on-disk layout of `image_cache_dir` as Glance's API makes it: final image files named by
//! image id directly in the base directory, `incomplete/`, `invalid/` and `queue/`
//! sub-directories, the index database and the oslo lock files. This module owns every
//! directory scan and the rules for which names are images.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::CacheError;

/// Sub-directory of downloads in progress.
pub const INCOMPLETE: &str = "incomplete";
/// Sub-directory of failed writes.
pub const INVALID: &str = "invalid";
/// Sub-directory of pre-cache markers.
pub const QUEUE: &str = "queue";

/// The paths of one node's cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLayout {
    /// `image_cache_dir`.
    pub dir: PathBuf,
    /// The sqlite driver's `cache.db` (absolute).
    pub db_path: PathBuf,
    /// Where the oslo external lock files live.
    pub lock_dir: PathBuf,
}

impl CacheLayout {
    /// A layout; `db_path` relative to `dir` is joined to it.
    pub fn new(
        dir: impl Into<PathBuf>,
        db_path: impl AsRef<Path>,
        lock_dir: Option<PathBuf>,
    ) -> Self {
        let dir = dir.into();
        let db = db_path.as_ref();
        let db_path = if db.is_relative() {
            dir.join(db)
        } else {
            db.to_owned()
        };
        let lock_dir = lock_dir.unwrap_or_else(|| dir.clone());
        CacheLayout {
            dir,
            db_path,
            lock_dir,
        }
    }

    /// The final file of an image.
    pub fn image(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// A sub-directory (`incomplete`, `invalid`, `queue`).
    pub fn sub(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates the base directory and its sub-directories, as Glance's driver does on start.
    pub fn ensure_dirs(&self) -> Result<(), CacheError> {
        for d in [
            self.dir.clone(),
            self.sub(INCOMPLETE),
            self.sub(INVALID),
            self.sub(QUEUE),
        ] {
            fs::create_dir_all(&d).map_err(|e| CacheError::io(&d, e))?;
        }
        Ok(())
    }
}

/// An image id packed into 16 bytes, so that a million entries fit in a few tens of MiB.
pub type PackedId = [u8; 16];

/// Parses a canonical UUID (8-4-4-4-12 hex, as Glance ids are). Anything else is not an image
/// name: lock files, `checkme`, `cache.db` and its journal never match.
pub fn parse_id(name: &str) -> Option<PackedId> {
    let b = name.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nib = 0usize;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        out[nib / 2] |= if nib.is_multiple_of(2) { v << 4 } else { v };
        nib += 1;
    }
    Some(out)
}

/// The canonical lower-case text of a packed id.
pub fn format_id(id: &PackedId) -> String {
    let h = hex::encode(id);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Seconds since the epoch as Glance stores them (REAL).
pub fn epoch(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Now, as REAL epoch seconds.
pub fn now() -> f64 {
    epoch(SystemTime::now())
}

fn meta_time(secs: i64, nsec: i64) -> f64 {
    secs as f64 + nsec as f64 / 1e9
}

/// One image file in the base directory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageFile {
    /// The image id.
    pub id: PackedId,
    /// `st_size`.
    pub size: u64,
    /// LRU key (epoch seconds): the row's `last_accessed` once matched with a row, else the
    /// later of the file's atime and mtime.
    pub key: f64,
    /// Whole seconds of `st_ctime`: the rename into place, which starts the orphan grace
    /// period. Kept as 32 bits so that an entry is 40 bytes.
    pub ctime: u32,
    /// Whether a row names this file.
    pub tracked: bool,
}

/// What a scan of the base directory found.
#[derive(Debug, Default)]
pub struct BaseScan {
    /// Image files, sorted by id.
    pub images: Vec<ImageFile>,
    /// Regular files that are not images (lock files, `checkme`, the journal, strays): never
    /// evicted, never counted as cache.
    pub other_files: u64,
    /// Their bytes.
    pub other_bytes: u64,
}

impl BaseScan {
    /// Total bytes of the image files.
    pub fn image_bytes(&self) -> u64 {
        self.images.iter().map(|f| f.size).sum()
    }

    /// The entry for `id`, if its file was seen.
    pub fn find(&self, id: &PackedId) -> Option<usize> {
        self.images.binary_search_by(|f| f.id.cmp(id)).ok()
    }
}

/// Scans the regular files directly in the base directory (sub-directories excluded, symlinks
/// followed as Glance's `os.path.isfile` does).
pub fn scan_base(layout: &CacheLayout) -> Result<BaseScan, CacheError> {
    let mut scan = BaseScan::default();
    let rd = fs::read_dir(&layout.dir).map_err(|e| CacheError::io(&layout.dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| CacheError::io(&layout.dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        // A file removed between readdir and stat is simply gone (a concurrent eviction).
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CacheError::io(&path, e)),
        };
        if !meta.is_file() || path == layout.db_path {
            continue;
        }
        match parse_id(name) {
            Some(id) if name.bytes().all(|c| !c.is_ascii_uppercase()) => {
                scan.images.push(ImageFile {
                    id,
                    size: meta.len(),
                    key: meta_time(meta.atime(), meta.atime_nsec())
                        .max(meta_time(meta.mtime(), meta.mtime_nsec())),
                    ctime: u32::try_from(meta.ctime()).unwrap_or(0),
                    tracked: false,
                })
            }
            _ => {
                scan.other_files += 1;
                scan.other_bytes += meta.len();
            }
        }
    }
    scan.images.sort_unstable_by_key(|f| f.id);
    Ok(scan)
}

/// One file in a sub-directory.
#[derive(Debug, Clone, PartialEq)]
pub struct SubFile {
    /// File name (an image id for files Glance wrote).
    pub name: String,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` (epoch seconds).
    pub mtime: f64,
}

/// The regular files of a sub-directory; a missing directory is empty.
pub fn scan_sub(layout: &CacheLayout, sub: &str) -> Result<Vec<SubFile>, CacheError> {
    let dir = layout.sub(sub);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CacheError::io(&dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| CacheError::io(&dir, e))?;
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CacheError::io(&path, e)),
        };
        if !meta.is_file() {
            continue;
        }
        out.push(SubFile {
            name: entry.file_name().to_string_lossy().into_owned(),
            size: meta.len(),
            mtime: meta_time(meta.mtime(), meta.mtime_nsec()),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes a file; `Ok(false)` when it was already gone (another remover won the race).
pub fn remove(path: &Path) -> Result<bool, CacheError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CacheError::io(path, e)),
    }
}

/// Files under `dir` that some process (other than this one) holds open, and whether any was
/// open for writing. Read from `/proc/*/fd`; processes we may not inspect are skipped, so on a
/// system where the cache is written by another uid run this as that uid (the glance user).
#[derive(Debug, Default)]
pub struct OpenFiles {
    /// Paths open by any process.
    pub open: HashSet<PathBuf>,
}

impl OpenFiles {
    /// Scans `/proc` for descriptors pointing into `dir`.
    pub fn scan(dir: &Path) -> OpenFiles {
        let mut open = HashSet::new();
        let me = std::process::id().to_string();
        let Ok(procs) = fs::read_dir("/proc") else {
            return OpenFiles { open };
        };
        let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        for p in procs.flatten() {
            let name = p.file_name();
            let Some(pid) = name.to_str() else { continue };
            if !pid.bytes().all(|c| c.is_ascii_digit()) || pid == me {
                continue;
            }
            let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(target) = fs::read_link(fd.path())
                    && target.starts_with(&dir)
                {
                    open.insert(target);
                }
            }
        }
        OpenFiles { open }
    }

    /// Whether `path` (under the scanned dir) is open.
    pub fn contains(&self, path: &Path) -> bool {
        // The common case (nothing open) costs no syscall per candidate.
        if self.open.is_empty() {
            return false;
        }
        if self.open.contains(path) {
            return true;
        }
        fs::canonicalize(path).is_ok_and(|p| self.open.contains(&p))
    }
}

/// Whether a file in `incomplete/` is an abandoned download (defect 14.2-5): no process has it
/// open and it has not been written for `idle`. A live writer (Glance's API or our prefetch)
/// holds its partial open from creation to rename, so such a file can never be completed;
/// Glance left it blocking the image's caching and queueing until the stall time passed.
pub fn abandoned(path: &Path, open: &OpenFiles, idle: std::time::Duration, now: f64) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    meta.is_file()
        && now - meta_time(meta.mtime(), meta.mtime_nsec()) >= idle.as_secs_f64()
        && !open.contains(path)
}

/// Free and total bytes of the filesystem holding `dir`.
pub fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let frsize = s.fragment_size();
    Some((s.blocks_available() * frsize, s.blocks() * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_non_images_are_rejected() {
        let id = "0b5a8e4c-2f4e-4b8e-9d7a-6c1e2f3a4b5c";
        assert_eq!(format_id(&parse_id(id).unwrap()), id);
        for name in [
            "cache.db",
            "cache.db-journal",
            "glance-cache-prune",
            "checkme",
            "0b5a8e4c-2f4e-4b8e-9d7a-6c1e2f3a4b5",
            "0b5a8e4c_2f4e-4b8e-9d7a-6c1e2f3a4b5c",
            "0b5a8e4c-2f4e-4b8e-9d7a-6c1e2f3a4b5g",
        ] {
            assert_eq!(parse_id(name), None, "{name}");
        }
    }

    #[test]
    fn scan_counts_images_and_others_separately() {
        let d = tempfile::tempdir().unwrap();
        let layout = CacheLayout::new(d.path(), "cache.db", None);
        layout.ensure_dirs().unwrap();
        let a = "11111111-2222-3333-4444-555555555555";
        fs::write(d.path().join(a), vec![0u8; 10]).unwrap();
        fs::write(d.path().join("cache.db"), b"x").unwrap();
        fs::write(d.path().join("cache.db-journal"), b"abc").unwrap();
        fs::write(d.path().join("glance-cache-prune"), b"").unwrap();
        fs::write(layout.sub(INCOMPLETE).join(a), b"12345").unwrap();
        let scan = scan_base(&layout).unwrap();
        assert_eq!(scan.images.len(), 1);
        assert_eq!(scan.image_bytes(), 10);
        assert_eq!(scan.other_files, 2);
        assert_eq!(scan.other_bytes, 3);
        assert!(scan.find(&parse_id(a).unwrap()).is_some());
        let inc = scan_sub(&layout, INCOMPLETE).unwrap();
        assert_eq!(inc.len(), 1);
        assert_eq!(inc[0].size, 5);
    }
}
