//! Writing a new file with direct I/O (`O_DIRECT`), and falling back to buffered writes when a
//! filesystem or device refuses it. The filesystem backend writes image data through this.
//!
//! A buffered write copies every byte into the page cache; on a busy machine that copy (and the
//! reclaim of those pages later) is most of the CPU a durable write costs, CPU that an import
//! hashing the same data needs. With `O_DIRECT` the kernel moves data from user memory to the
//! device, but the buffer address, the file offset and the length of each write must be
//! multiples of the device's logical block size. [`DirectSink`] therefore copies incoming chunks
//! into an aligned staging buffer (a memcpy costs far less than inserting pages into the cache)
//! and writes whole blocks. A direct write returns only once the device has the data, so the
//! writes run on a thread of their own with two staging buffers: copying into one overlaps the
//! device writing the other. Only the final partial block goes through the page cache, after
//! `O_DIRECT` has been cleared on the descriptor; the caller's fsync makes it durable as before.
//!
//! Direct I/O is switched on with `fcntl(F_SETFL)` once the file exists rather than by opening
//! with `O_DIRECT`: a filesystem without direct I/O fails such an open with EINVAL only after
//! it has created the file, so retrying the exclusive create would then fail. When the flag is
//! refused, or a direct write fails with EINVAL (a device whose blocks are larger than 4 KiB),
//! the sink carries on buffered from the current offset. A write that fails writes nothing, so
//! no data is lost or duplicated; the switch is logged once per file at debug level.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Alignment of the staging buffer's address, of file offsets and of direct write lengths.
/// 4 KiB covers disks with 512-byte and 4 KiB logical blocks; larger blocks fall back.
pub(crate) const ALIGN: usize = 4096;

/// Smallest staging buffer. A direct write returns only when the device has the data, so each
/// one costs a device round trip: fewer, larger writes keep the device busy.
pub(crate) const MIN_STAGING: usize = 1 << 20;

/// Failures that tests inject to exercise the fallback and error paths on filesystems that do
/// support direct I/O. Production code always uses the default, which injects nothing.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    /// Treat enabling `O_DIRECT` as refused with EINVAL, as FUSE and other filesystems without
    /// direct I/O (tmpfs before Linux 6.6) refuse it.
    pub(crate) refuse_direct: bool,
    /// Start the staging buffer this many bytes past an aligned address. A value that is not a
    /// multiple of the logical block size makes the kernel reject every direct write with EINVAL
    /// on filesystems that really do direct I/O.
    pub(crate) buffer_skew: usize,
    /// Fail the direct write of this buffer (0 is the first) with EIO, as a failing disk would.
    pub(crate) fail_buffer: Option<usize>,
}

/// An over-allocated `Vec` and the aligned window inside it that holds staged data.
struct Staging {
    raw: Vec<u8>,
    start: usize,
    cap: usize,
    len: usize,
}

impl Staging {
    fn new(cap: usize, skew: usize) -> Self {
        let raw = vec![0u8; cap + ALIGN + skew];
        // The Vec never grows, so its address and hence the alignment stay fixed.
        let start = (ALIGN - raw.as_ptr().addr() % ALIGN) % ALIGN + skew;
        Staging {
            raw,
            start,
            cap,
            len: 0,
        }
    }

    fn data(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// Copies as much of `src` as fits; returns how much that was.
    fn fill(&mut self, src: &[u8]) -> usize {
        let n = (self.cap - self.len).min(src.len());
        let at = self.start + self.len;
        self.raw[at..at + n].copy_from_slice(&src[..n]);
        self.len += n;
        n
    }
}

/// Sets or clears `O_DIRECT` on an open file.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(file, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_DIRECT
    } else {
        flags - OFlag::O_DIRECT
    };
    fcntl(file, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

fn is_einval(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// What the I/O thread reports when it is done.
#[derive(Debug, Default)]
struct IoReport {
    direct_bytes: u64,
    fallback: Option<String>,
}

/// The thread that writes staged buffers, and the channels that pass buffers to it and back.
struct IoThread {
    /// Full buffers to write; `true` marks the last one, whose partial block ends the file.
    full: SyncSender<(Staging, bool)>,
    /// Written buffers, for reuse.
    empty: Receiver<Staging>,
    /// The second buffer, until it is first needed.
    spare: Option<Staging>,
    handle: JoinHandle<io::Result<IoReport>>,
}

/// Sequential writer for a newly created, empty file: direct I/O through aligned staging
/// buffers when the filesystem allows it, plain buffered writes otherwise.
pub(crate) struct DirectSink<'f> {
    file: &'f File,
    /// The buffer being filled; `None` when writing buffered from the start.
    filling: Option<Staging>,
    io: Option<IoThread>,
    /// Cleared by the I/O thread if it has to fall back to the page cache.
    direct: Arc<AtomicBool>,
    report: IoReport,
}

impl<'f> DirectSink<'f> {
    /// A sink for `file`. With `direct` false every write is buffered, as before direct I/O.
    /// `chunk` is the size of the pieces that will arrive; a staging buffer holds at least one.
    /// `what` names the file in the fallback log line.
    pub(crate) fn new(
        file: &'f File,
        what: &str,
        direct: bool,
        chunk: usize,
        faults: Faults,
    ) -> io::Result<Self> {
        let mut sink = DirectSink {
            file,
            filling: None,
            io: None,
            direct: Arc::new(AtomicBool::new(false)),
            report: IoReport::default(),
        };
        if !direct {
            return Ok(sink);
        }
        let enabled = if faults.refuse_direct {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        } else {
            set_direct(file, true)
        };
        if let Err(e) = enabled {
            // The flag was not set, so there is nothing to undo.
            sink.report.fallback = Some(fallback(
                what,
                &format!("the filesystem refuses O_DIRECT: {e}"),
            ));
            return Ok(sink);
        }
        let cap = chunk.max(MIN_STAGING).next_multiple_of(ALIGN);
        let (full_tx, full_rx) = sync_channel(2);
        let (empty_tx, empty_rx) = sync_channel(2);
        let mut writer = IoWriter {
            // A duplicate shares the open file description: same offset, same flags.
            file: file.try_clone()?,
            what: what.to_owned(),
            direct: sink.direct.clone(),
            report: IoReport::default(),
            fail_buffer: faults.fail_buffer,
        };
        sink.direct.store(true, Ordering::Relaxed);
        let handle = std::thread::Builder::new()
            .name("imaged-store-dio".into())
            .spawn(move || writer.run(&full_rx, &empty_tx))?;
        sink.filling = Some(Staging::new(cap, faults.buffer_skew));
        sink.io = Some(IoThread {
            full: full_tx,
            empty: empty_rx,
            spare: Some(Staging::new(cap, faults.buffer_skew)),
            handle,
        });
        Ok(sink)
    }

    /// Whether data still goes to the device directly (page-cache write-back is then moot).
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// Bytes that went to the file with `O_DIRECT` set; final once [`Self::finish`] returned.
    pub(crate) fn direct_bytes(&self) -> u64 {
        self.report.direct_bytes
    }

    /// Why the sink writes buffered although direct I/O was asked for, if it does; final once
    /// [`Self::finish`] returned.
    pub(crate) fn fallback(&self) -> Option<&str> {
        self.report.fallback.as_deref()
    }

    /// Appends `data`.
    pub(crate) fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let Some(st) = self.filling.as_mut() else {
                return self.file.write_all(data);
            };
            let n = st.fill(data);
            data = &data[n..];
            if st.len == st.cap {
                let st = self.filling.take().expect("a buffer is being filled");
                self.hand_over(st, false)?;
            }
        }
        Ok(())
    }

    /// Writes out what is still staged: whole blocks directly, the partial last block through
    /// the page cache. The caller still has to fsync.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        let Some(st) = self.filling.take() else {
            return Ok(());
        };
        self.hand_over(st, true)?;
        self.join()
    }

    /// Passes a full buffer to the I/O thread and, unless it is the last, takes an empty one
    /// (waiting for the I/O thread to finish with it when both are in use).
    fn hand_over(&mut self, st: Staging, last: bool) -> io::Result<()> {
        let io = self
            .io
            .as_mut()
            .expect("an I/O thread runs while buffers are filled");
        if io.full.send((st, last)).is_err() {
            return self.join_failed();
        }
        if !last {
            let next = match io.spare.take() {
                Some(spare) => spare,
                None => match io.empty.recv() {
                    Ok(st) => st,
                    Err(_) => return self.join_failed(),
                },
            };
            self.filling = Some(Staging { len: 0, ..next });
        }
        Ok(())
    }

    /// Waits for the I/O thread and takes its report.
    fn join(&mut self) -> io::Result<()> {
        let Some(io) = self.io.take() else {
            return Ok(());
        };
        drop(io.full);
        match io.handle.join() {
            Ok(Ok(report)) => {
                self.report = report;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other("the direct I/O thread panicked")),
        }
    }

    /// The I/O thread stopped taking buffers: it failed, and its error is the one to report.
    fn join_failed(&mut self) -> io::Result<()> {
        self.join()?;
        Err(io::Error::other("the direct I/O thread stopped early"))
    }
}

impl Drop for DirectSink<'_> {
    /// An abandoned write must not have a thread still writing into the file after the
    /// caller has removed it.
    fn drop(&mut self) {
        let _ = self.join();
    }
}

fn fallback(what: &str, why: &str) -> String {
    tracing::debug!(location = %what, "writing without direct I/O: {why}");
    why.to_owned()
}

/// The I/O thread's side: writes staged buffers in order.
struct IoWriter {
    file: File,
    what: String,
    direct: Arc<AtomicBool>,
    report: IoReport,
    /// [`Faults::fail_buffer`].
    fail_buffer: Option<usize>,
}

impl IoWriter {
    fn run(
        &mut self,
        full: &Receiver<(Staging, bool)>,
        empty: &SyncSender<Staging>,
    ) -> io::Result<IoReport> {
        let mut n = 0;
        while let Ok((st, last)) = full.recv() {
            if self.fail_buffer == Some(n) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            n += 1;
            self.write_staged(&st, last)?;
            // The filler may have gone away after the last buffer; nothing waits for it then.
            if last || empty.send(st).is_err() {
                break;
            }
        }
        Ok(std::mem::take(&mut self.report))
    }

    /// Writes one buffer: directly while that works, through the page cache after a refusal,
    /// and for the last buffer its partial final block.
    fn write_staged(&mut self, st: &Staging, last: bool) -> io::Result<()> {
        let whole = if last { st.len / ALIGN * ALIGN } else { st.len };
        let mut done = 0;
        if self.direct.load(Ordering::Relaxed) {
            done = self.write_direct(st, whole)?;
            if done < st.len && self.direct.load(Ordering::Relaxed) {
                // Only the unaligned tail is left, and O_DIRECT cannot write it.
                set_direct(&self.file, false)?;
            }
        }
        (&self.file).write_all(&st.data()[done..])
    }

    /// Writes `st.data()[..upto]` with `O_DIRECT`; returns how much was written. Less than
    /// `upto` means a write was refused with EINVAL: `O_DIRECT` has then been cleared, the
    /// sink is buffered from now on and the rest must be written through the page cache.
    fn write_direct(&mut self, st: &Staging, upto: usize) -> io::Result<usize> {
        let mut done = 0;
        while done < upto {
            match (&self.file).write(&st.data()[done..upto]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    done += n;
                    self.report.direct_bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_einval(&e) => {
                    set_direct(&self.file, false)?;
                    self.direct.store(false, Ordering::Relaxed);
                    let offset = self.report.direct_bytes;
                    self.report.fallback = Some(fallback(
                        &self.what,
                        &format!("a direct write at offset {offset} was refused: {e}"),
                    ));
                    return Ok(done);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}
