//! The filesystem backend (`file://`, `filesystem://`): confined reads, writes and deletes under
//! the configured data directories.
//!
//! Confinement is the point of this module. glance_store unlinks whatever path a location names;
//! here a path must lie under one of the configured data directories both as written and after
//! resolving symlinks in its directories, must not use `..` or percent-encoded `.`/`/`, and must
//! name a regular file that is not itself a symlink. Anything else is a permanent `OutsideStore`
//! error, logged with the image id. The last component is opened with `O_NOFOLLOW` so a symlink
//! swapped in after the check is refused too.
//!
//! Writes stream into `.<image id>.imaged-tmp-<random>` in the target directory on a dedicated
//! blocking thread, fsync the file, rename it to `<image id>` without replacing an existing file
//! (`renameat2(RENAME_NOREPLACE)`), then fsync the directory. A writer killed at any point leaves
//! at most a hidden temporary file, never a partial file under the final name.
//!
//! Image data is written with direct I/O where the filesystem allows it (see [`crate::direct`]):
//! a durable write has to reach the disk anyway, and bypassing the page cache saves the CPU of
//! copying every byte into it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::direct::{DirectSink, Faults};
use crate::error::{ErrorKind, StoreError};
use crate::options::{DEFAULT_CHUNK_SIZE, FilesystemOptions, Timeouts};
use crate::stream::{Chunker, ReadStream, WriteInput, WriteOptions, with_stall_timeout};

/// Marker in temporary file names; [`FsBackend::remove_stale_temp_files`] looks for it.
pub(crate) const TEMP_MARKER: &str = ".imaged-tmp-";

/// Chunks in flight between the async side and the blocking file thread.
const CHANNEL_DEPTH: usize = 4;

/// Whether a finished write may still be published under its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    Pending,
    Abandoned,
    Published,
}

/// Bytes written between background write-back requests during a write.
const FLUSH_EVERY: u64 = 32 << 20;

#[derive(Debug, Clone)]
struct DataDir {
    /// As configured; used to build location URLs, as glance_store does.
    configured: PathBuf,
    /// With symlinks resolved; used for confinement checks.
    canonical: PathBuf,
    priority: i32,
}

/// A filesystem backend over one or more data directories.
#[derive(Debug, Clone)]
pub struct FsBackend {
    dirs: Vec<DataDir>,
    file_perm: u32,
    chunk: usize,
    direct_io: bool,
    timeouts: Timeouts,
}

fn bad_config(msg: impl Into<String>) -> StoreError {
    StoreError::permanent(ErrorKind::BadConfiguration, msg)
}

impl FsBackend {
    /// Builds the backend, creating missing data directories as glance_store does.
    pub fn new(opts: &FilesystemOptions, timeouts: Timeouts) -> Result<Self, StoreError> {
        let mut wanted: Vec<(PathBuf, i32)> = Vec::new();
        if let Some(d) = &opts.datadir {
            wanted.push((d.clone(), 0));
        }
        wanted.extend(opts.datadirs.iter().cloned());
        if wanted.is_empty() {
            return Err(bad_config(
                "filesystem backend has neither filesystem_store_datadir nor filesystem_store_datadirs",
            ));
        }
        let mut dirs: Vec<DataDir> = Vec::new();
        for (dir, priority) in wanted {
            if !dir.is_absolute() {
                return Err(bad_config(format!(
                    "filesystem data directory {} is not absolute",
                    dir.display()
                )));
            }
            fs::create_dir_all(&dir).map_err(|e| {
                StoreError::from_io(format!("creating data directory {}", dir.display()), &e)
            })?;
            let canonical = fs::canonicalize(&dir).map_err(|e| {
                StoreError::from_io(format!("resolving data directory {}", dir.display()), &e)
            })?;
            if dirs.iter().any(|d| d.canonical == canonical) {
                return Err(bad_config(format!(
                    "data directory {} is configured twice",
                    dir.display()
                )));
            }
            dirs.push(DataDir {
                configured: dir,
                canonical,
                priority,
            });
        }
        Ok(FsBackend {
            dirs,
            file_perm: opts.file_perm,
            chunk: if opts.chunk_size == 0 {
                DEFAULT_CHUNK_SIZE
            } else {
                opts.chunk_size
            },
            direct_io: opts.direct_io,
            timeouts,
        })
    }

    /// Whether `path` lies lexically under one of this backend's data directories (no I/O).
    /// Used to route `file://` locations that carry no `store` metadata.
    pub(crate) fn claims(&self, path: &str) -> bool {
        let p = Path::new(path);
        self.dirs
            .iter()
            .any(|d| p.starts_with(&d.configured) || p.starts_with(&d.canonical))
    }

    /// Deletes the file a `file://` location names.
    pub async fn delete(&self, path: &str, image_id: Option<&str>) -> Result<(), StoreError> {
        let this = self.clone();
        let owned = path.to_owned();
        let image_id = image_id.map(str::to_owned);
        let what = format!("deleting file://{path}");
        let what_job = what.clone();
        let job = tokio::task::spawn_blocking(move || {
            let resolved = this.confine(&owned, image_id.as_deref())?;
            fs::remove_file(&resolved).map_err(|e| StoreError::from_io(&what_job, &e))
        });
        run_blocking(job, self.timeouts.operation, what).await
    }

    /// Deletes several `file://` paths (each with its image id for log lines) one after another
    /// on a single blocking thread: one pool round trip for the lot instead of one per file,
    /// with the same confinement checks and error classification as [`FsBackend::delete`].
    /// Results are in input order. Each delete gets the operation timeout, counted from the end
    /// of the previous one; after a timeout the rest are not attempted and fail as transient.
    pub(crate) async fn delete_all(
        &self,
        items: Vec<(String, Option<String>)>,
    ) -> Vec<Result<(), StoreError>> {
        let paths: Vec<String> = items.iter().map(|(p, _)| p.clone()).collect();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let this = self.clone();
        // Detached on purpose: a hung unlink must not hold the caller; the worker stops at its
        // next send once the receiver is gone.
        drop(tokio::task::spawn_blocking(move || {
            for (path, image_id) in items {
                let res = this
                    .confine(&path, image_id.as_deref())
                    .and_then(|resolved| {
                        fs::remove_file(&resolved).map_err(|e| {
                            StoreError::from_io(format_args!("deleting file://{path}"), &e)
                        })
                    });
                if tx.send(res).is_err() {
                    break;
                }
            }
        }));
        let limit = self.timeouts.operation;
        let mut out = Vec::with_capacity(paths.len());
        for path in &paths {
            match tokio::time::timeout(limit, rx.recv()).await {
                Ok(Some(res)) => out.push(res),
                Ok(None) => out.push(Err(StoreError::new(
                    crate::error::ErrorClass::Transient,
                    ErrorKind::Io,
                    format!("deleting file://{path}: worker failed"),
                ))),
                Err(_) => {
                    out.push(Err(StoreError::timeout(
                        format_args!("deleting file://{path}"),
                        limit,
                    )));
                    break;
                }
            }
        }
        for path in &paths[out.len()..] {
            out.push(Err(StoreError::new(
                crate::error::ErrorClass::Transient,
                ErrorKind::Timeout,
                format!("deleting file://{path}: not attempted, an earlier delete timed out"),
            )));
        }
        out
    }

    /// Opens the file a `file://` location names for streaming.
    pub async fn open_read(
        &self,
        path: &str,
        image_id: Option<&str>,
    ) -> Result<ReadStream, StoreError> {
        let this = self.clone();
        let owned = path.to_owned();
        let image_id = image_id.map(str::to_owned);
        let job = tokio::task::spawn_blocking(move || {
            let resolved = this.confine(&owned, image_id.as_deref())?;
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&resolved)
                .map_err(|e| StoreError::from_io(format!("opening file://{owned}"), &e))?;
            let meta = file
                .metadata()
                .map_err(|e| StoreError::from_io(format!("stat file://{owned}"), &e))?;
            if !meta.is_file() {
                return Err(StoreError::permanent(
                    ErrorKind::NotAFile,
                    format!("file://{owned} is not a regular file"),
                ));
            }
            Ok((file, meta.len()))
        });
        let (file, size) = run_blocking(
            job,
            self.timeouts.operation,
            format!("opening file://{path}"),
        )
        .await?;

        let (tx, mut rx) = mpsc::channel::<Result<Bytes, StoreError>>(CHANNEL_DEPTH);
        let chunk = self.chunk;
        let what = format!("file://{path}");
        let what_thread = what.clone();
        tokio::task::spawn_blocking(move || read_loop(file, chunk, &tx, &what_thread));
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
        Ok(ReadStream::new(
            Some(size),
            with_stall_timeout(stream, self.timeouts.stall, what),
        ))
    }

    /// Streams `input` into `<datadir>/<image_id>`; returns the final path's URL and the size.
    pub async fn write(
        &self,
        image_id: &str,
        input: WriteInput<'_>,
        opts: &WriteOptions<'_>,
    ) -> Result<(String, u64), StoreError> {
        validate_image_id(image_id)?;
        let dir = self.pick_dir(opts.size_hint).await?;
        let final_path = dir.configured.join(image_id);
        let url = format!("file://{}", final_path.display());

        let temp_name = format!(".{image_id}{TEMP_MARKER}{}", uuid::Uuid::new_v4().simple());
        let canonical_dir = dir.canonical.clone();
        let final_name = image_id.to_owned();
        let file_perm = self.file_perm;
        let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
        let (commit_tx, commit_rx) = tokio::sync::oneshot::channel::<()>();
        let what = url.clone();
        let state = Arc::new(Mutex::new(Publish::Pending));
        let thread_state = state.clone();
        let job = WriteJob {
            dir: canonical_dir,
            temp_name,
            final_name,
            file_perm,
            direct_io: use_direct_io(self.direct_io, opts.size_hint),
            chunk: self.chunk,
            faults: Faults::default(),
            what,
        };
        let writer =
            tokio::task::spawn_blocking(move || write_thread(&job, rx, commit_rx, &thread_state));

        let mut chunker = Chunker::new(input, self.chunk, opts, self.timeouts.stall);
        let fed: Result<(), StoreError> = async {
            while let Some(chunk) = chunker.next_chunk().await? {
                let sent = tokio::time::timeout(self.timeouts.stall, tx.send(chunk)).await;
                match sent {
                    Ok(Ok(())) => {}
                    // The writer ended early; its own error is reported below.
                    Ok(Err(_)) => return Ok(()),
                    Err(_) => {
                        return Err(StoreError::timeout(
                            format!("writing {url}"),
                            self.timeouts.stall,
                        ));
                    }
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        if fed.is_ok() {
            let _ = commit_tx.send(());
        } else {
            drop(commit_tx);
        }
        // The final fsync and rename are bounded too. On timeout the writer is told to discard
        // its file instead of publishing it, unless it already has: then the write succeeded.
        let finish_limit = self.timeouts.operation.max(self.timeouts.stall);
        let mut writer = writer;
        let joined = match tokio::time::timeout(finish_limit, &mut writer).await {
            Ok(joined) => joined,
            Err(_) => {
                let published = {
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    if *st == Publish::Published {
                        true
                    } else {
                        *st = Publish::Abandoned;
                        false
                    }
                };
                if !published {
                    fed?;
                    return Err(StoreError::timeout(
                        format!("finishing {url}"),
                        finish_limit,
                    ));
                }
                writer.await
            }
        };
        let written = joined.map_err(|e| {
            StoreError::new(
                crate::error::ErrorClass::Transient,
                ErrorKind::Io,
                format!("writing {url}: writer thread failed: {e}"),
            )
        });
        fed?;
        let size = written??.size;
        debug_assert_eq!(size, chunker.total());
        Ok((url, size))
    }

    /// Removes `.<id>.imaged-tmp-*` files older than `min_age` left by killed writers; returns
    /// how many were removed.
    pub async fn remove_stale_temp_files(&self, min_age: Duration) -> Result<usize, StoreError> {
        let dirs: Vec<PathBuf> = self.dirs.iter().map(|d| d.canonical.clone()).collect();
        let job = tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            let now = SystemTime::now();
            for dir in dirs {
                let entries = fs::read_dir(&dir)
                    .map_err(|e| StoreError::from_io(format!("listing {}", dir.display()), &e))?;
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if !(name.starts_with('.') && name.contains(TEMP_MARKER)) {
                        continue;
                    }
                    let Ok(meta) = entry.metadata() else { continue };
                    let old = meta
                        .modified()
                        .ok()
                        .and_then(|m| now.duration_since(m).ok())
                        .is_some_and(|age| age >= min_age);
                    if meta.is_file() && old && fs::remove_file(entry.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        });
        run_blocking(
            job,
            self.timeouts.operation,
            "removing stale temporary files".into(),
        )
        .await
    }

    /// Picks the write directory as glance_store does: highest priority first; within a
    /// priority, the directory with the most free space; the next priority when that is too
    /// small for `size_hint`.
    async fn pick_dir(&self, size_hint: Option<u64>) -> Result<DataDir, StoreError> {
        if self.dirs.len() == 1 {
            return Ok(self.dirs[0].clone());
        }
        let dirs = self.dirs.clone();
        let job = tokio::task::spawn_blocking(move || {
            let mut priorities: Vec<i32> = dirs.iter().map(|d| d.priority).collect();
            priorities.sort_unstable_by(|a, b| b.cmp(a));
            priorities.dedup();
            let need = size_hint.unwrap_or(0);
            for p in priorities {
                let best = dirs
                    .iter()
                    .filter(|d| d.priority == p)
                    .filter_map(|d| free_bytes(&d.canonical).map(|free| (free, d)))
                    .max_by_key(|(free, _)| *free);
                if let Some((free, d)) = best
                    && free >= need
                {
                    return Ok(d.clone());
                }
            }
            Err(StoreError::new(
                crate::error::ErrorClass::Transient,
                ErrorKind::NoSpace,
                format!("no filesystem data directory has {need} bytes free"),
            ))
        });
        run_blocking(
            job,
            self.timeouts.operation,
            "choosing a data directory".into(),
        )
        .await
    }

    /// Resolves a location path to the file it may touch, or refuses it. Blocking.
    fn confine(&self, raw: &str, image_id: Option<&str>) -> Result<PathBuf, StoreError> {
        let refuse = |why: &str| {
            tracing::error!(
                image_id = image_id.unwrap_or("-"),
                location = %format!("file://{raw}"),
                reason = why,
                "refusing filesystem location outside the configured data directories"
            );
            StoreError::permanent(
                ErrorKind::OutsideStore,
                format!("file://{raw} is refused: {why}"),
            )
        };
        if raw.contains('\0') {
            return Err(refuse("NUL byte in path"));
        }
        let lower = raw.to_ascii_lowercase();
        if ["%2e", "%2f", "%5c", "%00"]
            .iter()
            .any(|p| lower.contains(p))
        {
            return Err(refuse("percent-encoded path characters"));
        }
        let path = Path::new(raw);
        if !path.is_absolute() {
            return Err(refuse("path is not absolute"));
        }
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            || raw.split('/').any(|seg| seg == "." || seg == "..")
        {
            return Err(refuse("'..' or '.' segment"));
        }
        let Some(dir) = self
            .dirs
            .iter()
            .find(|d| path.starts_with(&d.configured) || path.starts_with(&d.canonical))
        else {
            return Err(refuse("not under any configured data directory"));
        };
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(refuse("no file name"));
        };
        if path == dir.configured || path == dir.canonical {
            return Err(refuse("names the data directory itself"));
        }
        // The common case (an image directly in the data directory) needs no path resolution.
        let canonical_parent = if parent == dir.configured || parent == dir.canonical {
            Ok(dir.canonical.clone())
        } else {
            fs::canonicalize(parent)
        };
        let canonical_parent = match canonical_parent {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::not_found(format!("file://{raw}")));
            }
            Err(e) => return Err(StoreError::from_io(format!("resolving file://{raw}"), &e)),
        };
        if !canonical_parent.starts_with(&dir.canonical) {
            return Err(refuse(
                "a symlinked directory leads outside the data directory",
            ));
        }
        let resolved = canonical_parent.join(name);
        let meta = match fs::symlink_metadata(&resolved) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::not_found(format!("file://{raw}")));
            }
            Err(e) => return Err(StoreError::from_io(format!("stat file://{raw}"), &e)),
        };
        if meta.file_type().is_symlink() {
            return Err(refuse("the image file is a symlink"));
        }
        if !meta.is_file() {
            return Err(StoreError::permanent(
                ErrorKind::NotAFile,
                format!("file://{raw} is not a regular file"),
            ));
        }
        Ok(resolved)
    }
}

fn validate_image_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && !id.starts_with('.')
        && !id.contains(['/', '\0', '\\']);
    if ok {
        Ok(())
    } else {
        Err(StoreError::permanent(
            ErrorKind::OutsideStore,
            format!("image id {id:?} cannot be used as a file name"),
        ))
    }
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    #[allow(clippy::useless_conversion)]
    Some(u64::from(st.blocks_available()) * u64::from(st.fragment_size()))
}

/// Awaits a blocking job under a timeout. The job keeps running if the timeout fires (a thread
/// stuck in the kernel cannot be cancelled), but the caller gets a transient error.
async fn run_blocking<T: Send + 'static>(
    job: tokio::task::JoinHandle<Result<T, StoreError>>,
    limit: Duration,
    what: String,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, job).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(StoreError::new(
            crate::error::ErrorClass::Transient,
            ErrorKind::Io,
            format!("{what}: worker failed: {e}"),
        )),
        Err(_) => Err(StoreError::timeout(what, limit)),
    }
}

/// A read buffer that returns to its pool when the last `Bytes` referring to it is dropped, so
/// a long read reuses a handful of already-faulted-in buffers instead of allocating (and
/// page-faulting) a fresh one per chunk.
struct PooledBuf {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        // Channel depth plus the chunk being filled and one held by the consumer.
        if pool.len() < CHANNEL_DEPTH + 2 {
            pool.push(buf);
        }
    }
}

fn read_loop(
    mut file: File,
    chunk: usize,
    tx: &mpsc::Sender<Result<Bytes, StoreError>>,
    what: &str,
) {
    let pool: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(Vec::new()));
    loop {
        let recycled = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut buf = recycled.unwrap_or_else(|| vec![0u8; chunk]);
        let mut filled = 0;
        let res = loop {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    if filled == chunk {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = res {
            let _ = tx.blocking_send(Err(StoreError::from_io(format!("reading {what}"), &e)));
            return;
        }
        if filled == 0 {
            return;
        }
        let last = filled < chunk;
        let bytes = Bytes::from_owner(PooledBuf {
            buf,
            len: filled,
            pool: pool.clone(),
        });
        if tx.blocking_send(Ok(bytes)).is_err() || last {
            return;
        }
    }
}

/// Smallest announced size written with `O_DIRECT`.
const DIRECT_IO_MIN: u64 = 8 << 20;

/// Whether a write goes around the page cache: for large or unknown sizes.
/// A small image with a known size goes through the page cache, where the
/// direct path's second thread and aligned buffers cost more than the copy
/// they save (many small imports run side by side).
fn use_direct_io(enabled: bool, size_hint: Option<u64>) -> bool {
    enabled && size_hint.is_none_or(|n| n >= DIRECT_IO_MIN)
}

/// The write-back helper of a buffered write: `fdatasync` on a duplicate
/// descriptor whenever asked, requests that pile up folded into one.
struct Flusher {
    tx: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<io::Result<()>>,
}

impl Flusher {
    fn start(file: &File) -> io::Result<Flusher> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let file = file.try_clone()?;
        let thread = std::thread::spawn(move || -> io::Result<()> {
            while rx.recv().is_ok() {
                while rx.try_recv().is_ok() {}
                file.sync_data()?;
            }
            Ok(())
        });
        Ok(Flusher { tx, thread })
    }

    fn request(&self) {
        let _ = self.tx.send(());
    }

    /// Waits for the last write-back; its error, or the thread's panic.
    fn join(self) -> std::thread::Result<io::Result<()>> {
        drop(self.tx);
        self.thread.join()
    }
}

/// Where and how the blocking writer thread writes one image.
struct WriteJob {
    /// Target directory, symlinks resolved.
    dir: PathBuf,
    temp_name: String,
    final_name: String,
    file_perm: u32,
    /// Write with `O_DIRECT` where the filesystem allows it.
    direct_io: bool,
    /// Size of the chunks that arrive.
    chunk: usize,
    /// Injected failures (tests only; none in production).
    faults: Faults,
    /// The location URL, for messages.
    what: String,
}

/// What the writer thread did, for the caller and for tests.
#[derive(Debug)]
struct Finished {
    size: u64,
    /// Bytes written with `O_DIRECT`.
    #[cfg_attr(not(test), allow(dead_code))]
    direct_bytes: u64,
    /// Why the write went through the page cache although direct I/O was asked for.
    #[cfg_attr(not(test), allow(dead_code))]
    fallback: Option<String>,
}

fn write_thread(
    job: &WriteJob,
    mut rx: mpsc::Receiver<Bytes>,
    commit: tokio::sync::oneshot::Receiver<()>,
    state: &Mutex<Publish>,
) -> Result<Finished, StoreError> {
    let WriteJob {
        dir,
        temp_name,
        final_name,
        file_perm,
        direct_io,
        chunk,
        faults,
        what,
    } = job;
    let (temp_name, final_name, file_perm) = (temp_name.as_str(), final_name.as_str(), *file_perm);
    let io_err = |stage: &str, e: &io::Error| StoreError::from_io(format!("{stage} {what}"), e);
    let temp_path = dir.join(temp_name);
    let final_path = dir.join(final_name);
    if fs::symlink_metadata(&final_path).is_ok() {
        return Err(StoreError::permanent(
            ErrorKind::AlreadyExists,
            format!("{what} already exists"),
        ));
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&temp_path)
        .map_err(|e| io_err("creating a temporary file for", &e))?;
    let result = (|| {
        let mut sink = DirectSink::new(&file, what, *direct_io, *chunk, *faults)
            .map_err(|e| io_err("starting the direct I/O thread for", &e))?;
        // For buffered writes, a helper thread starts write-back of what is already written (fdatasync on a
        // duplicate descriptor) while this thread keeps writing, so the final fsync has little
        // left to flush. Its errors are collected: on Linux a write-back error is reported to
        // only one fsync caller of the shared open file. It is started at the first flush, so
        // small and direct writes, which never ask for one, cost no thread.
        let mut flusher: Option<Flusher> = None;
        let mut size = 0u64;
        let mut write_err = None;
        while let Some(chunk) = rx.blocking_recv() {
            if let Err(e) = sink.write(&chunk) {
                write_err = Some(io_err("writing", &e));
                break;
            }
            let before = size / FLUSH_EVERY;
            size += chunk.len() as u64;
            // Direct writes leave nothing in the page cache to write back.
            if size / FLUSH_EVERY != before && !sink.is_direct() {
                if flusher.is_none() {
                    match Flusher::start(&file) {
                        Ok(f) => flusher = Some(f),
                        Err(e) => {
                            write_err = Some(io_err("duplicating the descriptor of", &e));
                            break;
                        }
                    }
                }
                if let Some(f) = &flusher {
                    f.request();
                }
            }
        }
        // The sender is gone: either the stream ended (commit sent) or the caller gave up, in
        // which case the staged tail is not worth writing.
        let committed = write_err.is_none() && commit.blocking_recv().is_ok();
        if committed && let Err(e) = sink.finish() {
            write_err = Some(io_err("writing", &e));
        }
        let flushed = flusher.map_or(Ok(Ok(())), Flusher::join);
        if let Some(e) = write_err {
            return Err(e);
        }
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io_err("syncing", &e)),
            Err(_) => {
                return Err(StoreError::new(
                    crate::error::ErrorClass::Transient,
                    ErrorKind::Io,
                    format!("syncing {what}: flusher thread panicked"),
                ));
            }
        }
        if !committed {
            return Err(StoreError::new(
                crate::error::ErrorClass::Transient,
                ErrorKind::Io,
                format!("write of {what} aborted"),
            ));
        }
        let mode = if file_perm > 0 { file_perm } else { 0o644 };
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io_err("setting permissions of", &e))?;
        file.sync_all().map_err(|e| io_err("syncing", &e))?;
        let dir_fd = File::open(dir).map_err(|e| io_err("opening the directory of", &e))?;
        // Publishing happens under the lock so that a caller who gave up (timeout) and a
        // rename can never both happen.
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        if *st == Publish::Abandoned {
            return Err(StoreError::timeout(
                format!("finishing {what}"),
                Duration::ZERO,
            ));
        }
        match nix::fcntl::renameat2(
            &dir_fd,
            temp_name,
            &dir_fd,
            final_name,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            // Filesystems without RENAME_NOREPLACE (some network filesystems): a hard link
            // also refuses to replace an existing name, and is just as atomic.
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
                fs::hard_link(&temp_path, &final_path).map_err(|e| io_err("publishing", &e))?;
                // The image is published; a leftover temporary name is swept later.
                let _ = fs::remove_file(&temp_path);
            }
            Err(errno) => return Err(io_err("publishing", &io::Error::from(errno))),
        }
        *st = Publish::Published;
        drop(st);
        // The image is published and its data durable; failing now would report an error for
        // an image that exists (and make a retry hit AlreadyExists), so only warn.
        if let Err(e) = dir_fd.sync_all() {
            tracing::warn!(location = %what, "syncing the data directory after publishing: {e}");
        }
        Ok(Finished {
            size,
            direct_bytes: sink.direct_bytes(),
            fallback: sink.fallback().map(str::to_owned),
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp_path);
    }
    result
}

#[cfg(test)]
mod tests {
    //! The writer thread with real files, looking at what went to disk directly: the
    //! integration tests see only the result, not which path the bytes took.

    use super::*;
    use crate::direct::ALIGN;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 % 253) as u8).collect()
    }

    fn list(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Runs `write_thread` as `FsBackend::write` does, feeding `data` in `chunk`-sized pieces;
    /// `commit` false plays a caller that gave up after sending everything.
    fn run_writer(
        dir: &Path,
        data: &[u8],
        chunk: usize,
        direct_io: bool,
        faults: Faults,
        commit: bool,
    ) -> Result<Finished, StoreError> {
        let job = WriteJob {
            dir: dir.to_owned(),
            temp_name: format!(".img{TEMP_MARKER}test"),
            final_name: "img".into(),
            file_perm: 0,
            direct_io,
            chunk,
            faults,
            what: format!("file://{}/img", dir.display()),
        };
        let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
        let (commit_tx, commit_rx) = tokio::sync::oneshot::channel::<()>();
        let state = Mutex::new(Publish::Pending);
        std::thread::scope(|s| {
            let writer = s.spawn(|| write_thread(&job, rx, commit_rx, &state));
            for piece in data.chunks(chunk) {
                if tx.blocking_send(Bytes::copy_from_slice(piece)).is_err() {
                    break;
                }
            }
            drop(tx);
            if commit {
                let _ = commit_tx.send(());
            } else {
                drop(commit_tx);
            }
            writer.join().unwrap()
        })
    }

    /// Whether the filesystem holding `dir` accepts `O_DIRECT` at all.
    fn allows_direct(dir: &Path) -> bool {
        let f = File::create(dir.join("probe")).unwrap();
        let flags = nix::fcntl::OFlag::from_bits_retain(
            nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL).unwrap(),
        );
        let ok = nix::fcntl::fcntl(
            &f,
            nix::fcntl::FcntlArg::F_SETFL(flags | nix::fcntl::OFlag::O_DIRECT),
        )
        .is_ok();
        fs::remove_file(dir.join("probe")).unwrap();
        ok
    }

    /// Whether the filesystem holding `dir` rejects a direct write from a misaligned buffer
    /// (real block filesystems do; tmpfs, whose O_DIRECT is the page cache, does not).
    fn rejects_misaligned(dir: &Path) -> bool {
        if !allows_direct(dir) {
            return false;
        }
        let path = dir.join("probe");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        let buf = vec![7u8; 3 * ALIGN];
        let skew = (ALIGN - buf.as_ptr().addr() % ALIGN) % ALIGN + 1;
        let res = std::io::Write::write(&mut f, &buf[skew..skew + ALIGN]);
        fs::remove_file(&path).unwrap();
        matches!(res, Err(e) if e.raw_os_error() == Some(libc::EINVAL))
    }

    #[test]
    fn whole_blocks_go_direct_and_the_tail_through_the_page_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let direct = allows_direct(tmp.path());
        for (size, chunk) in [
            (0, 4096),
            (1, 4096),
            (4095, 4096),
            (4096, 4096),
            (4097, 4096),
            ((1 << 20) + 123, 1 << 20),
            (3 * (1 << 20) + 4097, 5000),
            (2 * (1 << 20) + 1, 3 << 20),
        ] {
            let data = pattern(size);
            let done = run_writer(tmp.path(), &data, chunk, true, Faults::default(), true)
                .unwrap_or_else(|e| panic!("{size} bytes in {chunk}-byte chunks: {e}"));
            assert_eq!(done.size, size as u64);
            let whole = (size / ALIGN * ALIGN) as u64;
            if direct {
                assert_eq!(done.direct_bytes, whole, "{size}/{chunk}");
                assert_eq!(done.fallback, None, "{size}/{chunk}");
            } else {
                assert_eq!(done.direct_bytes, 0, "{size}/{chunk}");
                assert!(done.fallback.is_some(), "{size}/{chunk}");
            }
            let img = tmp.path().join("img");
            assert!(fs::read(&img).unwrap() == data, "{size}/{chunk}: content");
            fs::remove_file(img).unwrap();
        }
        assert!(list(tmp.path()).is_empty(), "{:?}", list(tmp.path()));
    }

    /// A real EINVAL from the kernel: the staging buffer starts one byte past an aligned
    /// address, which block filesystems refuse for direct I/O. The refused first write must be
    /// repeated through the page cache and the rest follow it there, with nothing lost.
    #[test]
    fn refused_direct_write_falls_back_without_losing_data() {
        let tmp = tempfile::tempdir().unwrap();
        let refuses = rejects_misaligned(tmp.path());
        let faults = Faults {
            buffer_skew: 1,
            ..Faults::default()
        };
        let data = pattern(3 * (1 << 20) + 777);
        let done = run_writer(tmp.path(), &data, 1 << 20, true, faults, true).unwrap();
        assert_eq!(done.size, data.len() as u64);
        if refuses {
            assert_eq!(done.direct_bytes, 0);
            let why = done.fallback.expect("the fallback is reported");
            assert!(why.contains("offset 0 was refused"), "{why}");
        } else {
            assert_eq!(done.fallback, None);
        }
        assert!(fs::read(tmp.path().join("img")).unwrap() == data);
        assert_eq!(list(tmp.path()), vec!["img".to_string()]);
    }

    /// A filesystem that refuses `O_DIRECT` (simulated: tmpfs accepts it on current kernels)
    /// is written through the page cache, with periodic write-back, past several flush points.
    #[test]
    fn filesystem_refusing_o_direct_is_written_buffered() {
        let tmp = tempfile::tempdir().unwrap();
        let faults = Faults {
            refuse_direct: true,
            ..Faults::default()
        };
        let data = pattern(2 * FLUSH_EVERY as usize + 4097);
        let done = run_writer(tmp.path(), &data, 1 << 20, true, faults, true).unwrap();
        assert_eq!(done.size, data.len() as u64);
        assert_eq!(done.direct_bytes, 0);
        let why = done.fallback.expect("the fallback is reported");
        assert!(why.contains("refuses O_DIRECT"), "{why}");
        assert!(fs::read(tmp.path().join("img")).unwrap() == data);
    }

    #[test]
    fn small_known_sizes_are_written_through_the_page_cache() {
        assert!(use_direct_io(true, None), "unknown size");
        assert!(use_direct_io(true, Some(DIRECT_IO_MIN)));
        assert!(use_direct_io(true, Some(1 << 30)));
        assert!(!use_direct_io(true, Some(256 << 10)));
        assert!(!use_direct_io(false, None), "switched off");
        assert!(!use_direct_io(false, Some(1 << 30)));
    }

    #[test]
    fn direct_io_off_never_sets_o_direct() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pattern((1 << 20) + 5);
        let done = run_writer(tmp.path(), &data, 4096, false, Faults::default(), true).unwrap();
        assert_eq!(done.direct_bytes, 0);
        assert_eq!(done.fallback, None);
        assert!(fs::read(tmp.path().join("img")).unwrap() == data);
    }

    /// A device error on the direct I/O thread fails the write with that error, and the
    /// temporary file goes.
    #[test]
    fn direct_write_error_fails_the_write_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let direct = allows_direct(tmp.path());
        for fail in [0, 2] {
            let faults = Faults {
                fail_buffer: Some(fail),
                ..Faults::default()
            };
            let data = pattern(5 * (1 << 20) + 1);
            let res = run_writer(tmp.path(), &data, 5000, true, faults, true);
            if !direct {
                // Without direct I/O there is no I/O thread to fail: written buffered.
                assert_eq!(res.unwrap().size, data.len() as u64);
                fs::remove_file(tmp.path().join("img")).unwrap();
                continue;
            }
            let err = res.unwrap_err();
            assert_eq!(err.class(), crate::ErrorClass::Transient, "{err}");
            assert!(err.to_string().contains("Input/output error"), "{err}");
            assert!(list(tmp.path()).is_empty(), "{:?}", list(tmp.path()));
        }
    }

    /// A caller that gives up after direct writes have reached the disk leaves no file behind.
    #[test]
    fn abandoned_direct_write_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pattern(3 * (1 << 20) + 99);
        let err = run_writer(tmp.path(), &data, 5000, true, Faults::default(), false).unwrap_err();
        assert!(err.to_string().contains("aborted"), "{err}");
        assert!(list(tmp.path()).is_empty(), "{:?}", list(tmp.path()));
    }
}
