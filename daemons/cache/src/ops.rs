//! One pass of each maintenance operation: prune, clean, list, stats, queue and evict.
//!
//! Every pass starts from what is on disk (the filesystem is the truth for sizes, as in
//! Glance) and reconciles the rows with it: rows whose file is gone are removed, image files
//! without a row are adopted (prune) or removed (clean) once their grace period has passed,
//! and recorded sizes are corrected. Nothing loops on the database: each pass walks a list it
//! built once, so it always ends.

use std::fs;
use std::path::Path;
use std::time::Instant;

use imaged_catalog::Catalog;
use serde::Serialize;

use crate::index::Index;
use crate::layout::{
    self, BaseScan, INCOMPLETE, INVALID, OpenFiles, PackedId, QUEUE, SubFile, format_id, parse_id,
};
use crate::lock::{self, LockFile};
use crate::sqlite_index::{BATCH, NewRow};
use crate::{CacheError, CacheOptions};

/// What a prune pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PruneReport {
    /// Images evicted.
    pub evicted: u64,
    /// Their bytes.
    pub evicted_bytes: u64,
    /// Rows removed because their file was gone.
    pub dangling_rows: u64,
    /// Untracked image files given a row.
    pub adopted: u64,
    /// Cache size (images + incomplete/ + invalid/) before the pass.
    pub size_before: u64,
    /// And after.
    pub size_after: u64,
    /// The limit.
    pub max_size: u64,
    /// What the pass pruned down to.
    pub target: u64,
    /// Bytes of images skipped because a process has them open.
    pub busy_bytes: u64,
    /// Bytes of untracked files still in their grace period.
    pub grace_bytes: u64,
    /// How far above `max_size` the cache still is (0 when within it).
    pub over_by: u64,
    /// Images larger than `max_size` (they can never stay cached), evicted before any other
    /// so that one of them does not push the whole cache out (defect 14.2-8).
    pub oversized: Vec<String>,
    /// `min_free_disk`, when set.
    pub min_free_disk: Option<u64>,
    /// Free bytes on the cache filesystem after the pass (when it could be measured).
    pub disk_free_after: Option<u64>,
    /// How far below `min_free_disk` the free space still is (0 when at or above it).
    pub below_floor_by: u64,
    /// Why metadata could not be used, if so (filesystem-only pass).
    pub index_unavailable: Option<String>,
    /// Wall time in milliseconds.
    pub elapsed_ms: u64,
}

/// What a clean pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CleanReport {
    /// Files removed from invalid/.
    pub invalid_removed: u64,
    /// Stalled files removed from incomplete/.
    pub stalled_removed: u64,
    /// Bytes of both.
    pub bytes_removed: u64,
    /// Incomplete files past the stall time kept because a process has them open.
    pub stalled_in_use: u64,
    /// Rows removed because their file was gone.
    pub dangling_rows: u64,
    /// Untracked image files past their grace period removed.
    pub orphans_removed: u64,
    /// Their bytes.
    pub orphan_bytes: u64,
    /// Rows whose size was corrected.
    pub sizes_fixed: u64,
    /// Queue markers removed (image cached, gone or not active).
    pub queue_removed: u64,
    /// Abandoned downloads removed before the stall time: incomplete/ files no process has
    /// open and not written for `orphan_grace` (defect 14.2-5).
    pub abandoned_removed: u64,
    /// Cached images evicted because the catalog says they are deleted, gone or not active
    /// (defect 14.2-11).
    pub inactive_evicted: u64,
    /// Their bytes.
    pub inactive_bytes: u64,
    /// The catalog was configured but could not be asked: no image was evicted or marker
    /// dropped for its status.
    pub catalog_unreachable: bool,
    /// Why metadata could not be used, if so.
    pub index_unavailable: Option<String>,
    /// Files that could not be removed.
    pub failures: u64,
    /// Wall time in milliseconds.
    pub elapsed_ms: u64,
}

/// Takes one of Glance's maintenance locks, waiting up to `lock_wait`; refused when another
/// process keeps it.
pub(crate) async fn lock_or_refuse(
    opts: &CacheOptions,
    name: &str,
) -> Result<LockFile, CacheError> {
    LockFile::acquire(&opts.layout.lock_dir, name, opts.lock_wait)
        .await?
        .ok_or_else(|| CacheError::Locked(opts.layout.lock_dir.join(name)))
}

fn sub_bytes(files: &[SubFile]) -> u64 {
    files.iter().map(|f| f.size).sum()
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Rows that need a write after the merge, kept compact (16 bytes per UUID id) so that a
/// million-row index stays within a few tens of MiB.
#[derive(Default)]
struct Merge {
    /// Rows whose file is missing.
    missing: Vec<PackedId>,
    /// The same, for ids that are not UUIDs (old test caches).
    missing_other: Vec<String>,
    /// Rows whose recorded size differs from the file's.
    fixes: Vec<(PackedId, u64)>,
}

/// Matches rows with files: sets `tracked` and the LRU key of matched files.
async fn merge_rows(
    index: &Index,
    scan: &mut BaseScan,
    opts: &CacheOptions,
) -> Result<Merge, CacheError> {
    let mut m = Merge::default();
    index
        .for_each(|row| {
            let id = parse_id(&row.image_id)
                .filter(|_| !row.image_id.bytes().any(|c| c.is_ascii_uppercase()));
            match id.and_then(|id| scan.find(&id).map(|i| (id, i))) {
                Some((id, i)) => {
                    let f = &mut scan.images[i];
                    f.tracked = true;
                    f.key = row.last_accessed;
                    if u64::try_from(row.size).ok() != Some(f.size) {
                        m.fixes.push((id, f.size));
                    }
                }
                None => match id {
                    // The scan saw no file: confirmed missing just before the delete.
                    Some(id) => m.missing.push(id),
                    None => {
                        if !opts.layout.image(&row.image_id).exists() {
                            m.missing_other.push(row.image_id);
                        }
                    }
                },
            }
        })
        .await?;
    Ok(m)
}

/// Removes rows whose file is still missing now (a file committed after the directory scan
/// has its row already and must keep it) and corrects sizes. Returns (rows removed, sizes
/// fixed).
async fn apply_merge(
    index: &Index,
    opts: &CacheOptions,
    m: Merge,
) -> Result<(u64, u64), CacheError> {
    let mut removed = 0;
    for chunk in m.missing.chunks(BATCH * 16) {
        let gone: Vec<String> = chunk
            .iter()
            .map(format_id)
            .filter(|id| !opts.layout.image(id).exists())
            .collect();
        removed += index.delete(&gone).await?;
    }
    let other: Vec<String> = m
        .missing_other
        .into_iter()
        .filter(|id| !opts.layout.image(id).exists())
        .collect();
    removed += index.delete(&other).await?;
    let mut fixed = 0;
    for chunk in m.fixes.chunks(BATCH * 16) {
        let fixes: Vec<(String, u64)> = chunk.iter().map(|(id, s)| (format_id(id), *s)).collect();
        fixed += index.fix_sizes(&fixes).await?;
    }
    Ok((removed, fixed))
}

fn past_grace(ctime: u32, opts: &CacheOptions, now: f64) -> bool {
    now - f64::from(ctime) >= opts.orphan_grace.as_secs_f64()
}

/// One prune pass: evicts least-recently-accessed images (files not open by any process)
/// until the cache (images + incomplete/ + invalid/) is at or below the low-water mark, once
/// it exceeds `max_size` or the filesystem has less than `min_free_disk` free. Holds Glance's
/// `glance-cache-prune` lock for the pass.
pub async fn prune(opts: &CacheOptions, index: &Index) -> Result<PruneReport, CacheError> {
    let start = Instant::now();
    let _lock = lock_or_refuse(opts, lock::PRUNE).await?;
    let layout = &opts.layout;
    let mut scan = layout::scan_base(layout)?;
    let side = sub_bytes(&layout::scan_sub(layout, INCOMPLETE)?)
        + sub_bytes(&layout::scan_sub(layout, INVALID)?);
    let mut report = PruneReport {
        max_size: opts.max_size,
        target: opts.low_water_mark.min(opts.max_size),
        index_unavailable: match index {
            Index::Unavailable(why) => Some(why.clone()),
            _ => None,
        },
        ..PruneReport::default()
    };
    let now = layout::now();

    if index.is_available() {
        let merge = merge_rows(index, &mut scan, opts).await?;
        (report.dangling_rows, _) = apply_merge(index, opts, merge).await?;
        // Adopt in chunks: after a lost cache.db every file is untracked.
        let mut adopt: Vec<NewRow> = Vec::with_capacity(BATCH);
        for f in scan.images.iter_mut() {
            if f.tracked || !past_grace(f.ctime, opts, now) {
                continue;
            }
            f.tracked = true;
            adopt.push(NewRow {
                image_id: format_id(&f.id),
                last_accessed: f.key,
                last_modified: f.key,
                size: f.size,
            });
            if adopt.len() == BATCH {
                report.adopted += index.insert(&adopt).await?;
                adopt.clear();
            }
        }
        report.adopted += index.insert(&adopt).await?;
    } else {
        // Filesystem-only: every image file is a candidate, ordered by atime/mtime.
        for f in scan.images.iter_mut() {
            f.tracked = true;
        }
    }

    let images = scan.image_bytes();
    let total = images + side;
    report.size_before = total;
    let mut to_free = if total > opts.max_size {
        total - report.target
    } else {
        0
    };
    report.min_free_disk = opts.min_free_disk;
    if let Some(floor) = opts.min_free_disk
        && let Some((free, _)) = layout::disk_space(&layout.dir)
        && free < floor
    {
        tracing::info!(
            free,
            floor,
            "cache filesystem below min_free_disk; pruning to make room"
        );
        to_free = to_free.max(floor - free);
    }

    report.grace_bytes = scan
        .images
        .iter()
        .filter(|f| !f.tracked)
        .map(|f| f.size)
        .sum();
    let mut freed = 0u64;
    if to_free > 0 {
        let open = OpenFiles::scan(&layout.dir);
        // Sort in place: the id order is no longer needed and no second list is allocated.
        scan.images
            .sort_unstable_by(|a, b| a.key.total_cmp(&b.key).then(a.id.cmp(&b.id)));
        let mut batch: Vec<String> = Vec::with_capacity(BATCH);
        // An image larger than the whole limit can never stay: evicting it first keeps the
        // rest of the cache instead of pushing everything out behind it (14.2-8).
        let max = opts.max_size;
        let oversized = scan.images.iter().filter(|f| f.tracked && f.size > max);
        let rest = scan.images.iter().filter(|f| f.tracked && f.size <= max);
        for f in oversized.chain(rest) {
            if freed >= to_free {
                break;
            }
            let id = format_id(&f.id);
            let path = layout.image(&id);
            if open.contains(&path) {
                report.busy_bytes += f.size;
                continue;
            }
            if f.size > max {
                tracing::warn!(
                    image_id = %id,
                    bytes = f.size,
                    max_size = max,
                    "image is larger than image_cache_max_size and cannot stay cached; evicted first \
                     (it is cached again on its next download: raise image_cache_max_size to keep it)"
                );
                report.oversized.push(id.clone());
            }
            // File first, then row, as Glance does: a reader that finds the row but no file
            // treats the image as not cached.
            if layout::remove(&path)? {
                freed += f.size;
                report.evicted += 1;
                report.evicted_bytes += f.size;
                tracing::debug!(image_id = %id, bytes = f.size, "evicted");
            }
            batch.push(id);
            if batch.len() == BATCH {
                index.delete(&batch).await?;
                batch.clear();
            }
        }
        index.delete(&batch).await?;
    }
    report.size_after = total - freed;
    report.over_by = report.size_after.saturating_sub(opts.max_size);
    if let Some(floor) = opts.min_free_disk {
        report.disk_free_after = layout::disk_space(&layout.dir).map(|(free, _)| free);
        report.below_floor_by = report
            .disk_free_after
            .map_or(0, |free| floor.saturating_sub(free));
    }
    report.elapsed_ms = ms(start);
    Ok(report)
}

/// One clean pass: removes invalid/ files, incomplete/ files older than the stall time that
/// no process has open, rows without files, untracked image files past their grace period,
/// size mismatches, and queue markers of images already cached or (with a catalog) no longer
/// active. Lock files, `cache.db` and its journal are never touched. Holds Glance's
/// `glance-cache-clean` lock for the pass.
pub async fn clean(
    opts: &CacheOptions,
    index: &Index,
    catalog: Option<&Catalog>,
) -> Result<CleanReport, CacheError> {
    let start = Instant::now();
    let _lock = lock_or_refuse(opts, lock::CLEAN).await?;
    let layout = &opts.layout;
    let mut report = CleanReport {
        index_unavailable: match index {
            Index::Unavailable(why) => Some(why.clone()),
            _ => None,
        },
        ..CleanReport::default()
    };
    let now = layout::now();
    let open = OpenFiles::scan(&layout.dir);

    for f in layout::scan_sub(layout, INVALID)? {
        let path = layout.sub(INVALID).join(&f.name);
        match layout::remove(&path) {
            Ok(true) => {
                report.invalid_removed += 1;
                report.bytes_removed += f.size;
                tracing::info!(path = %path.display(), "removed invalid cache file");
            }
            Ok(false) => {}
            Err(e) => {
                report.failures += 1;
                tracing::warn!(error = %e, "cannot remove invalid cache file");
            }
        }
    }
    let stall = opts.stall_time.as_secs_f64();
    for f in layout::scan_sub(layout, INCOMPLETE)? {
        let path = layout.sub(INCOMPLETE).join(&f.name);
        let stalled = now - f.mtime >= stall;
        if !stalled && !layout::abandoned(&path, &open, opts.orphan_grace, now) {
            continue;
        }
        if open.contains(&path) {
            report.stalled_in_use += 1;
            tracing::info!(path = %path.display(), "stalled download is still open by a process; kept");
            continue;
        }
        match layout::remove(&path) {
            Ok(true) if stalled => {
                report.stalled_removed += 1;
                report.bytes_removed += f.size;
                tracing::info!(path = %path.display(), "removed stalled cache file");
            }
            Ok(true) => {
                report.abandoned_removed += 1;
                report.bytes_removed += f.size;
                tracing::info!(
                    path = %path.display(),
                    "removed abandoned download (no process has it open); the image can be cached again"
                );
            }
            Ok(false) => {}
            Err(e) => {
                report.failures += 1;
                tracing::warn!(error = %e, "cannot remove stalled cache file");
            }
        }
    }

    let mut scan = layout::scan_base(layout)?;
    let mut status = CatalogStatus::new(catalog);
    let mut evicted = vec![false; scan.images.len()];
    for (i, f) in scan.images.iter().enumerate() {
        let id = format_id(&f.id);
        if status.inactive(&id).await != Some(true) {
            continue;
        }
        let path = layout.image(&id);
        if open.contains(&path) {
            continue;
        }
        if layout::remove(&path)? {
            report.inactive_evicted += 1;
            report.inactive_bytes += f.size;
            tracing::info!(image_id = %id, bytes = f.size, "evicted cached copy of an image that is deleted or not active");
        }
        evicted[i] = true;
        index.delete(&[id]).await?;
    }
    if index.is_available() {
        let merge = merge_rows(index, &mut scan, opts).await?;
        (report.dangling_rows, report.sizes_fixed) = apply_merge(index, opts, merge).await?;
        for (f, _) in scan
            .images
            .iter()
            .zip(&evicted)
            .filter(|(f, e)| !f.tracked && !**e)
        {
            if !past_grace(f.ctime, opts, now) {
                continue;
            }
            let id = format_id(&f.id);
            // A row may have appeared since the scan (a slow commit): it keeps its file.
            if index.has(&id).await? {
                continue;
            }
            let path = layout.image(&id);
            if open.contains(&path) {
                continue;
            }
            if layout::remove(&path)? {
                report.orphans_removed += 1;
                report.orphan_bytes += f.size;
                tracing::info!(image_id = %id, bytes = f.size, "removed untracked cache file");
            }
        }
    }

    for q in layout::scan_sub(layout, QUEUE)? {
        let Some(pid) = parse_id(&q.name) else {
            continue;
        };
        let cached = scan
            .find(&pid)
            .is_some_and(|i| scan.images[i].tracked && !evicted[i]);
        let inactive = status.inactive(&q.name).await == Some(true);
        if cached || inactive {
            let path = layout.sub(QUEUE).join(&q.name);
            if layout::remove(&path)? {
                report.queue_removed += 1;
                tracing::info!(image_id = %q.name, cached, "removed queue marker");
            }
        }
    }
    report.catalog_unreachable = status.unreachable;
    report.elapsed_ms = ms(start);
    Ok(report)
}

/// Image status lookups for clean. The first failed lookup turns them off for the rest of
/// the pass: an unreachable catalog must never make an image look deleted.
struct CatalogStatus<'a> {
    catalog: Option<&'a Catalog>,
    unreachable: bool,
}

impl<'a> CatalogStatus<'a> {
    fn new(catalog: Option<&'a Catalog>) -> Self {
        CatalogStatus {
            catalog,
            unreachable: false,
        }
    }

    /// `Some(true)` when the catalog says the image is gone, deleted or not active; `None`
    /// when there is no catalog to ask.
    async fn inactive(&mut self, id: &str) -> Option<bool> {
        let c = self.catalog.filter(|_| !self.unreachable)?;
        match c.get_image(id).await {
            Ok(Some(img)) => Some(img.deleted || img.status != "active"),
            Ok(None) => Some(true),
            Err(e) => {
                tracing::warn!(image_id = id, error = %e, "catalog unreachable; image status checks skipped for this pass");
                self.unreachable = true;
                None
            }
        }
    }
}

/// One cached image in a listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CachedEntry {
    /// Image id.
    pub image_id: String,
    /// File size.
    pub size: u64,
    /// Hits (0 for untracked files).
    pub hits: i64,
    /// Last access, epoch seconds (row value, or file time when untracked).
    pub last_accessed: f64,
    /// Whether a row names it.
    pub tracked: bool,
}

/// A file in incomplete/, invalid/ or queue/.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SideEntry {
    /// File name (image id).
    pub image_id: String,
    /// Bytes.
    pub size: u64,
    /// mtime, epoch seconds.
    pub modified: f64,
}

/// Everything in the cache.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Listing {
    /// Cached images, by id.
    pub cached: Vec<CachedEntry>,
    /// Rows whose file is missing.
    pub missing_files: Vec<String>,
    /// Queued ids, oldest marker first (the prefetch order).
    pub queued: Vec<SideEntry>,
    /// Downloads in progress or abandoned.
    pub incomplete: Vec<SideEntry>,
    /// Failed writes.
    pub invalid: Vec<SideEntry>,
}

fn side(files: Vec<SubFile>) -> Vec<SideEntry> {
    files
        .into_iter()
        .map(|f| SideEntry {
            image_id: f.name,
            size: f.size,
            modified: f.mtime,
        })
        .collect()
}

/// Lists the cache (read-only).
pub async fn list(opts: &CacheOptions, index: &Index) -> Result<Listing, CacheError> {
    let layout = &opts.layout;
    let scan = layout::scan_base(layout)?;
    let mut hits = vec![(0i64, None::<f64>); scan.images.len()];
    let mut missing = Vec::new();
    index
        .for_each(
            |row| match parse_id(&row.image_id).and_then(|id| scan.find(&id)) {
                Some(i) => hits[i] = (row.hits, Some(row.last_accessed)),
                None => {
                    if !layout.image(&row.image_id).exists() {
                        missing.push(row.image_id);
                    }
                }
            },
        )
        .await?;
    missing.sort();
    let cached = scan
        .images
        .iter()
        .zip(hits)
        .map(|(f, (h, la))| CachedEntry {
            image_id: format_id(&f.id),
            size: f.size,
            hits: h,
            last_accessed: la.unwrap_or(f.key),
            tracked: la.is_some(),
        })
        .collect();
    let mut queued = layout::scan_sub(layout, QUEUE)?;
    queued.sort_by(|a, b| a.mtime.total_cmp(&b.mtime).then(a.name.cmp(&b.name)));
    Ok(Listing {
        cached,
        missing_files: missing,
        queued: side(queued),
        incomplete: side(layout::scan_sub(layout, INCOMPLETE)?),
        invalid: side(layout::scan_sub(layout, INVALID)?),
    })
}

/// Sizes and counts of the cache.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Driver in use.
    pub driver: String,
    /// Image files.
    pub cached_images: u64,
    /// Their bytes.
    pub cached_bytes: u64,
    /// Image files without a row.
    pub untracked_images: u64,
    /// Rows without a file.
    pub missing_files: u64,
    /// incomplete/ files and bytes.
    pub incomplete_files: u64,
    /// Bytes in incomplete/.
    pub incomplete_bytes: u64,
    /// invalid/ files.
    pub invalid_files: u64,
    /// Bytes in invalid/.
    pub invalid_bytes: u64,
    /// Queue markers.
    pub queued: u64,
    /// Non-image files in the base directory (lock files, journal, strays).
    pub other_files: u64,
    /// Their bytes (not part of the cache size).
    pub other_bytes: u64,
    /// cached + incomplete + invalid bytes: what prune compares with the limit.
    pub total_bytes: u64,
    /// `image_cache_max_size`.
    pub max_size: u64,
    /// Prune target.
    pub low_water_mark: u64,
    /// Bytes above the limit.
    pub over_by: u64,
    /// Free bytes on the cache filesystem.
    pub disk_free: Option<u64>,
    /// Why metadata could not be used, if so.
    pub index_unavailable: Option<String>,
}

/// Computes [`Stats`] (read-only).
pub async fn stats(opts: &CacheOptions, index: &Index) -> Result<Stats, CacheError> {
    let l = list(opts, index).await?;
    let scan = layout::scan_base(&opts.layout)?;
    let sum = |v: &[SideEntry]| v.iter().map(|e| e.size).sum::<u64>();
    let cached_bytes: u64 = l.cached.iter().map(|c| c.size).sum();
    let total = cached_bytes + sum(&l.incomplete) + sum(&l.invalid);
    Ok(Stats {
        driver: match index {
            Index::Sqlite(_) => "sqlite".into(),
            Index::Central { .. } => "centralized_db".into(),
            Index::Unavailable(_) => "none (filesystem only)".into(),
        },
        cached_images: l.cached.len() as u64,
        cached_bytes,
        untracked_images: if index.is_available() {
            l.cached.iter().filter(|c| !c.tracked).count() as u64
        } else {
            0
        },
        missing_files: l.missing_files.len() as u64,
        incomplete_files: l.incomplete.len() as u64,
        incomplete_bytes: sum(&l.incomplete),
        invalid_files: l.invalid.len() as u64,
        invalid_bytes: sum(&l.invalid),
        queued: l.queued.len() as u64,
        other_files: scan.other_files,
        other_bytes: scan.other_bytes,
        total_bytes: total,
        max_size: opts.max_size,
        low_water_mark: opts.low_water_mark,
        over_by: total.saturating_sub(opts.max_size),
        disk_free: layout::disk_space(&opts.layout.dir).map(|(f, _)| f),
        index_unavailable: match index {
            Index::Unavailable(why) => Some(why.clone()),
            _ => None,
        },
    })
}

/// The outcome of [`queue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Queued {
    /// A marker was created.
    Queued,
    /// Already cached.
    AlreadyCached,
    /// A download is in progress.
    BeingCached,
    /// A marker exists.
    AlreadyQueued,
}

/// Queues an image for prefetching, as Glance's `queue_image` does (not if cached, being
/// cached or queued). With a catalog the image must exist and be active.
pub async fn queue(
    opts: &CacheOptions,
    catalog: Option<&Catalog>,
    id: &str,
) -> Result<Queued, CacheError> {
    if parse_id(id).is_none() {
        return Err(CacheError::InvalidId(id.into()));
    }
    let layout = &opts.layout;
    layout.ensure_dirs()?;
    if let Some(c) = catalog {
        match c.get_image(id).await? {
            Some(img)
                if img
                    .size
                    .and_then(|s| u64::try_from(s).ok())
                    .is_some_and(|s| s > opts.max_size) =>
            {
                return Err(CacheError::Config(format!(
                    "image {id} is {} bytes, larger than image_cache_max_size ({}); the next prune would evict it",
                    img.size.unwrap_or(0),
                    opts.max_size
                )));
            }
            Some(img) if !img.deleted && img.status == "active" => {}
            Some(img) => {
                return Err(CacheError::Config(format!(
                    "image {id} is {} and cannot be cached",
                    if img.deleted {
                        "deleted"
                    } else {
                        img.status.as_str()
                    }
                )));
            }
            None => return Err(CacheError::Config(format!("image {id} does not exist"))),
        }
    }
    if layout.image(id).is_file() {
        return Ok(Queued::AlreadyCached);
    }
    let part = layout.sub(INCOMPLETE).join(id);
    // An abandoned partial no longer blocks queueing (14.2-5): prefetch replaces it.
    if part.exists()
        && !layout::abandoned(
            &part,
            &OpenFiles::scan(&layout.dir),
            opts.orphan_grace,
            layout::now(),
        )
    {
        return Ok(Queued::BeingCached);
    }
    let marker = layout.sub(QUEUE).join(id);
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
    {
        Ok(_) => Ok(Queued::Queued),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Queued::AlreadyQueued),
        Err(e) => Err(CacheError::io(&marker, e)),
    }
}

/// What [`evict`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Evicted {
    /// Image files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Rows removed.
    pub rows: u64,
    /// Queue markers removed.
    pub queue_markers: u64,
}

fn file_size(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Evicts one image (file, row and queue marker, like `DELETE /v2/cache/{id}`), or with
/// `None` every cached image of this node. Only image files are removed: lock files,
/// `cache.db` and its journal stay. Holds the prune lock, so it never races a prune.
pub async fn evict(
    opts: &CacheOptions,
    index: &Index,
    id: Option<&str>,
) -> Result<Evicted, CacheError> {
    let _lock = lock_or_refuse(opts, lock::PRUNE).await?;
    let layout = &opts.layout;
    let mut out = Evicted::default();
    match id {
        Some(id) => {
            if parse_id(id).is_none() {
                return Err(CacheError::InvalidId(id.into()));
            }
            let path = layout.image(id);
            let size = file_size(&path);
            if layout::remove(&path)? {
                out.files = 1;
                out.bytes = size;
            }
            out.rows = index.delete(&[id.to_owned()]).await?;
            if layout::remove(&layout.sub(QUEUE).join(id))? {
                out.queue_markers = 1;
            }
        }
        None => {
            let scan = layout::scan_base(layout)?;
            for f in &scan.images {
                if layout::remove(&layout.image(&format_id(&f.id)))? {
                    out.files += 1;
                    out.bytes += f.size;
                }
            }
            out.rows = index.delete_all().await?;
        }
    }
    Ok(out)
}

/// A one-line human summary of a prune.
pub fn prune_summary(r: &PruneReport) -> String {
    let mut s = format!(
        "prune: evicted {} images / {} bytes, removed {} dangling rows, adopted {} files, size {} -> {} bytes (max {}, target {}) in {} ms",
        r.evicted,
        r.evicted_bytes,
        r.dangling_rows,
        r.adopted,
        r.size_before,
        r.size_after,
        r.max_size,
        r.target,
        r.elapsed_ms
    );
    if !r.oversized.is_empty() {
        s.push_str(&format!(
            "; {} images larger than the limit evicted first",
            r.oversized.len()
        ));
    }
    if r.over_by > 0 {
        s.push_str(&format!(
            "; STILL {} bytes over the limit (busy {} bytes, in grace {} bytes)",
            r.over_by, r.busy_bytes, r.grace_bytes
        ));
    }
    if r.below_floor_by > 0 {
        s.push_str(&format!(
            "; free disk STILL {} bytes below min_free_disk ({} bytes)",
            r.below_floor_by,
            r.min_free_disk.unwrap_or(0)
        ));
    }
    s
}

/// A one-line human summary of a clean.
pub fn clean_summary(r: &CleanReport) -> String {
    format!(
        "clean: removed {} invalid + {} stalled + {} abandoned files ({} bytes), {} images deleted or not active ({} bytes){}, {} untracked files ({} bytes), {} dangling rows, {} queue markers; fixed {} sizes; {} failures in {} ms",
        r.invalid_removed,
        r.stalled_removed,
        r.abandoned_removed,
        r.bytes_removed,
        r.inactive_evicted,
        r.inactive_bytes,
        if r.catalog_unreachable {
            " [catalog unreachable: status checks skipped]"
        } else {
            ""
        },
        r.orphans_removed,
        r.orphan_bytes,
        r.dangling_rows,
        r.queue_removed,
        r.sizes_fixed,
        r.failures,
        r.elapsed_ms
    )
}

fn when(t: f64) -> String {
    chrono::DateTime::from_timestamp(t.floor() as i64, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| format!("{t}"))
}

/// The `list` verb's table.
pub fn listing_table(l: &Listing) -> String {
    let mut s = format!("CACHED ({})\n", l.cached.len());
    s.push_str(&format!(
        "{:<36}  {:>14}  {:>6}  {:<20}  TRACKED\n",
        "IMAGE ID", "SIZE", "HITS", "LAST ACCESSED"
    ));
    for c in &l.cached {
        s.push_str(&format!(
            "{:<36}  {:>14}  {:>6}  {:<20}  {}\n",
            c.image_id,
            c.size,
            c.hits,
            if c.last_accessed > 0.0 {
                when(c.last_accessed)
            } else {
                "N/A".into()
            },
            if c.tracked { "yes" } else { "no" }
        ));
    }
    for (title, v) in [
        ("QUEUED", &l.queued),
        ("INCOMPLETE", &l.incomplete),
        ("INVALID", &l.invalid),
    ] {
        s.push_str(&format!("\n{title} ({})\n", v.len()));
        for e in v {
            s.push_str(&format!(
                "{:<36}  {:>14}  {}\n",
                e.image_id,
                e.size,
                when(e.modified)
            ));
        }
    }
    if !l.missing_files.is_empty() {
        s.push_str(&format!(
            "\nROWS WITHOUT FILE ({})\n",
            l.missing_files.len()
        ));
        for id in &l.missing_files {
            s.push_str(&format!("{id}\n"));
        }
    }
    s
}

/// The `stats` verb's table.
pub fn stats_table(st: &Stats) -> String {
    let mut s = String::new();
    let mut row = |k: &str, v: String| s.push_str(&format!("{k:<18} {v}\n"));
    row("driver", st.driver.clone());
    row(
        "cached",
        format!("{} images, {} bytes", st.cached_images, st.cached_bytes),
    );
    row("untracked", st.untracked_images.to_string());
    row("rows w/o file", st.missing_files.to_string());
    row(
        "incomplete",
        format!(
            "{} files, {} bytes",
            st.incomplete_files, st.incomplete_bytes
        ),
    );
    row(
        "invalid",
        format!("{} files, {} bytes", st.invalid_files, st.invalid_bytes),
    );
    row("queued", st.queued.to_string());
    row(
        "other files",
        format!("{} files, {} bytes", st.other_files, st.other_bytes),
    );
    row("total", format!("{} bytes", st.total_bytes));
    row("max size", format!("{} bytes", st.max_size));
    row("low water mark", format!("{} bytes", st.low_water_mark));
    row("over by", format!("{} bytes", st.over_by));
    if let Some(f) = st.disk_free {
        row("disk free", format!("{f} bytes"));
    }
    if let Some(why) = &st.index_unavailable {
        row("METADATA", format!("UNAVAILABLE: {why}"));
    }
    s
}
