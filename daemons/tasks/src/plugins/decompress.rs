//! `image_decompression`: staged data that starts with a gzip, zip or LHA
//! signature is decompressed and replaces the staged file.
//!
//! As Glance: nothing happens for `container_format = compressed` (the user
//! said the image is meant to stay compressed); the signatures are looked
//! for at offset 0 (gzip, zip) and 2 (LHA); a zip or LHA archive must hold
//! exactly one file; nested archives (a tar inside the gzip) are left as
//! they come out. Unlike Glance, the output is bounded: writing stops as
//! soon as it would pass `image_size_cap` or the work directory's free
//! space, and the partial output is removed, so a decompression bomb cannot
//! fill the disk. Zip members must be stored or deflated (the methods zip
//! tools use by default); LHA supports every method of `delharc`.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{PartialFile, PluginContext, PluginError, State};

/// The plugin's name in `image_import_plugins`.
pub(super) const NAME: &str = "image_decompression";

/// Read and write in blocks of this size.
const BLOCK: usize = 1 << 20;

/// A recognised compressed format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Archive {
    Gzip,
    Zip,
    Lha,
}

impl Archive {
    fn name(self) -> &'static str {
        match self {
            Archive::Gzip => "gzip",
            Archive::Zip => "zip",
            Archive::Lha => "lha",
        }
    }
}

/// The compressed format `head` (the first bytes of the data) starts with.
pub(crate) fn detect(head: &[u8]) -> Option<Archive> {
    if head.starts_with(b"PK\x03\x04") {
        Some(Archive::Zip)
    } else if head.get(2..5) == Some(&b"-lh"[..]) && head.get(6) == Some(&b'-') {
        Some(Archive::Lha)
    } else if head.starts_with(b"\x1f\x8b\x08") {
        Some(Archive::Gzip)
    } else {
        None
    }
}

/// The bound on the output and what sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limit {
    bytes: u64,
    name: String,
}

/// The smaller of `image_size_cap` and the free space of the work directory.
pub(crate) fn output_limit(cap: u64, free: u64, dir: &Path) -> Limit {
    if free < cap {
        Limit {
            bytes: free,
            name: format!("the free space of work dir {}", dir.display()),
        }
    } else {
        Limit {
            bytes: cap,
            name: "image_size_cap".to_string(),
        }
    }
}

/// Why decompression stopped (mapped to a [`PluginError`] by the caller).
#[derive(Debug)]
enum Failure {
    TooLarge { written: u64 },
    Members(usize),
    Bad(String),
    Write(std::io::Error),
    Cancelled,
}

pub(super) async fn run(ctx: &PluginContext<'_>, st: &mut State) -> Result<(), PluginError> {
    if st.container_format.as_deref() == Some("compressed") {
        tracing::debug!(
            image_id = %st.image_id,
            "container_format is compressed: the data is kept compressed"
        );
        return Ok(());
    }
    let io = |action: String| {
        let image_id = st.image_id.clone();
        move |source| PluginError::Io {
            plugin: NAME,
            image_id,
            action,
            source,
        }
    };
    let head = super::read_head(&st.path, 8)
        .await
        .map_err(io(format!("cannot read {}", st.path.display())))?;
    let Some(archive) = detect(&head) else {
        tracing::debug!(image_id = %st.image_id, "staged data is not compressed");
        return Ok(());
    };
    super::ensure_dir(ctx, NAME, &st.image_id).await?;
    let free = super::free_space(ctx, NAME, &st.image_id)?;
    let limit = output_limit(ctx.settings.image_size_cap, free, ctx.work_dir);
    let out = PartialFile::new(crate::import::work_file(
        ctx.work_dir,
        ctx.task_id,
        "decompressed",
    ));
    let out_display = out.path.display().to_string();
    let written = Arc::new(AtomicU64::new(0));
    let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    // The worker owns the output until it hands it back: when it fails, or
    // finishes after this future was dropped, the output is removed with it.
    let job = {
        let (src, bound) = (st.path.clone(), limit.bytes);
        let (written, cancel) = (written.clone(), cancel.0.clone());
        tokio::task::spawn_blocking(move || {
            decompress_file(archive, &src, &out.path, bound, &written, &cancel).map(|n| (n, out))
        })
    };
    let name = archive.name();
    let result = super::with_progress(ctx, job, || {
        format!(
            "Decompressing {name} data: {} MiB written",
            written.load(Ordering::Relaxed) >> 20
        )
    })
    .await;
    drop(cancel);
    let (size, out) = match result {
        Ok(Ok(done)) => done,
        Ok(Err(f)) => {
            return Err(match f {
                Failure::TooLarge { written } => PluginError::ArchiveTooLarge {
                    image_id: st.image_id.clone(),
                    archive: name,
                    limit_name: limit.name,
                    limit: limit.bytes,
                    written,
                },
                Failure::Members(members) => PluginError::MultiMember {
                    image_id: st.image_id.clone(),
                    archive: name,
                    members,
                },
                Failure::Bad(reason) => PluginError::BadArchive {
                    image_id: st.image_id.clone(),
                    archive: name,
                    reason,
                },
                Failure::Write(e) => io(format!("cannot write {out_display}"))(e),
                Failure::Cancelled => {
                    io("decompression".to_string())(std::io::Error::other("cancelled"))
                }
            });
        }
        Err(e) => {
            return Err(PluginError::Worker {
                plugin: NAME,
                image_id: st.image_id.clone(),
                reason: e.to_string(),
            });
        }
    };
    super::replace_staged(ctx, NAME, &st.image_id, out, &st.path).await?;
    // A virtual size found by an earlier plugin described other data.
    st.virtual_size = None;
    tracing::info!(
        image_id = %st.image_id,
        archive = name,
        size,
        "decompressed the staged image"
    );
    (ctx.heartbeat)(&format!("Decompressed {name} data: {size} bytes"));
    Ok(())
}

/// Tells the blocking worker to stop when the plugin's future is dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Decompresses `src` into `dst`; on failure `dst` may hold partial data
/// (the
/// [`PartialFile`] that travels with the worker removes it).
fn decompress_file(
    archive: Archive,
    src: &Path,
    dst: &Path,
    limit: u64,
    written: &AtomicU64,
    cancel: &AtomicBool,
) -> Result<u64, Failure> {
    let open = || File::open(src).map_err(|e| Failure::Bad(format!("cannot open: {e}")));
    let mut out = File::create(dst).map_err(Failure::Write)?;
    let n = match archive {
        Archive::Gzip => {
            // Concatenated members are one stream, as gunzip reads them.
            let mut r = flate2::read::MultiGzDecoder::new(BufReader::new(open()?));
            copy_bounded(&mut r, &mut out, limit, written, cancel)?
        }
        Archive::Zip => {
            let mut zip = zip::ZipArchive::new(BufReader::new(open()?))
                .map_err(|e| Failure::Bad(e.to_string()))?;
            if zip.len() != 1 {
                return Err(Failure::Members(zip.len()));
            }
            let mut member = zip.by_index(0).map_err(|e| Failure::Bad(e.to_string()))?;
            if member.is_dir() {
                return Err(Failure::Bad(format!(
                    "its only member {:?} is a directory",
                    member.name()
                )));
            }
            // The zip reader checks the CRC-32 when the member ends.
            copy_bounded(&mut member, &mut out, limit, written, cancel)?
        }
        Archive::Lha => {
            let members = count_lha_members(open()?, 2)?;
            if members != 1 {
                return Err(Failure::Members(members));
            }
            let mut r = delharc::LhaDecodeReader::new(BufReader::new(open()?))
                .map_err(|e| Failure::Bad(e.to_string()))?;
            if r.header().is_directory() {
                return Err(Failure::Bad(format!(
                    "its only member {:?} is a directory",
                    r.header().parse_pathname_to_str()
                )));
            }
            if !r.is_decoder_supported() {
                return Err(Failure::Bad(format!(
                    "compression method {} is not supported",
                    String::from_utf8_lossy(&r.header().compression)
                )));
            }
            let n = copy_bounded(&mut r, &mut out, limit, written, cancel)?;
            r.crc_check()
                .map_err(|e| Failure::Bad(format!("member data is corrupt: {e}")))?;
            n
        }
    };
    out.sync_all().map_err(Failure::Write)?;
    Ok(n)
}

/// Counts the members of an LHA archive, stopping at `stop` (enough to
/// know there is more than one), without decompressing any.
fn count_lha_members(file: File, stop: usize) -> Result<usize, Failure> {
    let mut r = delharc::LhaDecodeReader::new(BufReader::new(file))
        .map_err(|e| Failure::Bad(e.to_string()))?;
    let mut n = 1;
    while n < stop && r.next_file().map_err(|e| Failure::Bad(e.to_string()))? {
        n += 1;
    }
    Ok(n)
}

/// Copies `r` to `w` until the end, failing before the byte that would take
/// the output past `limit`.
fn copy_bounded(
    r: &mut impl Read,
    w: &mut impl Write,
    limit: u64,
    written: &AtomicU64,
    cancel: &AtomicBool,
) -> Result<u64, Failure> {
    let mut buf = vec![0u8; BLOCK];
    let mut total = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(Failure::Cancelled);
        }
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Bad(e.to_string())),
        };
        if total + n as u64 > limit {
            return Err(Failure::TooLarge { written: total });
        }
        w.write_all(&buf[..n]).map_err(Failure::Write)?;
        total += n as u64;
        written.store(total, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        assert_eq!(detect(b"\x1f\x8b\x08\x00\x00"), Some(Archive::Gzip));
        assert_eq!(detect(b"PK\x03\x04\x14\x00"), Some(Archive::Zip));
        assert_eq!(detect(b"\x2a\x00-lh5-\x00"), Some(Archive::Lha));
        assert_eq!(detect(b"\x2a\x00-lh0-"), Some(Archive::Lha));
        // An empty zip (end record only) has nothing to decompress.
        assert_eq!(detect(b"PK\x05\x06\x00\x00"), None);
        assert_eq!(detect(b"QFI\xfb\x00\x00\x00\x03"), None);
        assert_eq!(detect(b""), None);
        assert_eq!(detect(b"\x1f"), None);
    }

    #[test]
    fn the_smaller_bound_wins_and_is_named() {
        let dir = Path::new("/srv/work");
        let l = output_limit(1000, 5000, dir);
        assert_eq!((l.bytes, l.name.as_str()), (1000, "image_size_cap"));
        let l = output_limit(1000, 10, dir);
        assert_eq!(l.bytes, 10);
        assert_eq!(l.name, "the free space of work dir /srv/work");
    }

    #[test]
    fn copy_stops_before_passing_the_limit() {
        let data = vec![7u8; 3 * BLOCK + 5];
        let (written, cancel) = (AtomicU64::new(0), AtomicBool::new(false));
        let mut out = Vec::new();
        let n = copy_bounded(
            &mut &data[..],
            &mut out,
            data.len() as u64,
            &written,
            &cancel,
        )
        .unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(out, data);
        let mut out = Vec::new();
        let e = copy_bounded(
            &mut &data[..],
            &mut out,
            2 * BLOCK as u64 + 1,
            &written,
            &cancel,
        )
        .unwrap_err();
        assert!(matches!(e, Failure::TooLarge { written } if written == 2 * BLOCK as u64));
        assert_eq!(out.len(), 2 * BLOCK);
        cancel.store(true, Ordering::Relaxed);
        assert!(matches!(
            copy_bounded(&mut &data[..], &mut Vec::new(), u64::MAX, &written, &cancel),
            Err(Failure::Cancelled)
        ));
    }
}
