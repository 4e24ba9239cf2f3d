//! Streaming types shared by all backends: the read stream handed to callers, write options and
//! the write result, plus the chunked reader that feeds writes with bounded memory.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{ErrorClass, ErrorKind, StoreError};
use crate::uri::redact;

/// Image data being read from a store: a stream of chunks plus the size when the backend knows
/// it. Memory held at any time is a few chunks, whatever the image size.
pub struct ReadStream {
    size: Option<u64>,
    inner: BoxStream<'static, Result<Bytes, StoreError>>,
}

impl fmt::Debug for ReadStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadStream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl ReadStream {
    pub(crate) fn new(
        size: Option<u64>,
        inner: BoxStream<'static, Result<Bytes, StoreError>>,
    ) -> Self {
        ReadStream { size, inner }
    }

    /// The object's size in bytes, when the backend reported one.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Adapts the stream to `AsyncRead`; a [`StoreError`] surfaces as an `io::Error` whose inner
    /// error is the `StoreError` (recover it with `get_ref().downcast_ref()`).
    pub fn into_async_read(self) -> impl AsyncRead + Send + Unpin + 'static {
        tokio_util::io::StreamReader::new(self.inner.map(|r| r.map_err(io::Error::other)))
    }

    /// Reads the whole object into memory. Meant for tests and small objects only.
    pub async fn collect_all(mut self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(self.size.unwrap_or(0).min(64 << 20) as usize);
        while let Some(chunk) = self.inner.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }
}

impl Stream for ReadStream {
    type Item = Result<Bytes, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Wraps a stream so that waiting longer than `stall` for any one chunk ends it with a transient
/// timeout error.
pub(crate) fn with_stall_timeout(
    stream: BoxStream<'static, Result<Bytes, StoreError>>,
    stall: Duration,
    what: String,
) -> BoxStream<'static, Result<Bytes, StoreError>> {
    futures::stream::unfold(Some(stream), move |state| {
        let what = what.clone();
        async move {
            let mut s = state?;
            match tokio::time::timeout(stall, s.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(s))),
                Ok(Some(Err(e))) => Some((Err(e), None)),
                Ok(None) => None,
                Err(_) => Some((
                    Err(StoreError::timeout(format!("reading {what}"), stall)),
                    None,
                )),
            }
        }
    })
    .boxed()
}

/// Progress callback: called with the cumulative number of bytes accepted so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// Parameters of [`crate::Store::write`].
#[derive(Default, Clone, Copy)]
pub struct WriteOptions<'a> {
    /// Backend name (multi-store); `None` uses the default backend / default store.
    pub backend: Option<&'a str>,
    /// Expected size, if known; used to pick a data directory with room for it.
    pub size_hint: Option<u64>,
    /// Abort, clean up and fail permanently once more than this many bytes arrive
    /// (`image_size_cap`).
    pub size_cap: Option<u64>,
    /// Called after each chunk with the total bytes accepted so far.
    pub progress: Option<Progress<'a>>,
}

impl fmt::Debug for WriteOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteOptions")
            .field("backend", &self.backend)
            .field("size_hint", &self.size_hint)
            .field("size_cap", &self.size_cap)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// A completed write.
#[derive(Clone, PartialEq, Eq)]
pub struct Written {
    /// The location URI to record in `image_locations.value`, in the form glance_store writes.
    /// For S3 it embeds the access and secret key, as glance_store's does: store it, never log
    /// it (use [`Written::redacted_url`]).
    pub url: String,
    /// Bytes written.
    pub size: u64,
    /// The backend name for the location's `meta_data["store"]` (multi-store), else `None`.
    pub store: Option<String>,
}

impl Written {
    /// `url` with credentials removed, for logs.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

impl fmt::Debug for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Written")
            .field("url", &self.redacted_url())
            .field("size", &self.size)
            .field("store", &self.store)
            .finish()
    }
}

/// Pulls fixed-size chunks from an `AsyncRead`, enforcing the size cap and the stall timeout.
pub(crate) struct Chunker<'a, R> {
    reader: R,
    chunk: usize,
    cap: Option<u64>,
    stall: Duration,
    total: u64,
    progress: Option<Progress<'a>>,
    done: bool,
}

impl<'a, R: AsyncRead + Unpin> Chunker<'a, R> {
    pub(crate) fn new(reader: R, chunk: usize, opts: &WriteOptions<'a>, stall: Duration) -> Self {
        Chunker {
            reader,
            chunk: chunk.max(4096),
            cap: opts.size_cap,
            stall,
            total: 0,
            progress: opts.progress,
            done: false,
        }
    }

    /// Total bytes returned so far.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The next chunk of up to `chunk` bytes (shorter only at end of input); `None` at end.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        self.next_chunk_sized(self.chunk).await
    }

    /// Like [`Self::next_chunk`] with an explicit chunk size.
    pub(crate) async fn next_chunk_sized(
        &mut self,
        size: usize,
    ) -> Result<Option<Bytes>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let mut buf = BytesMut::with_capacity(size);
        while buf.len() < size {
            let read = tokio::time::timeout(self.stall, self.reader.read_buf(&mut buf)).await;
            match read {
                Err(_) => {
                    return Err(StoreError::timeout("reading the image source", self.stall));
                }
                Ok(Err(e)) => {
                    let (class, _) = crate::error::classify_io(&e);
                    let class = if class == ErrorClass::NotFound {
                        ErrorClass::Permanent
                    } else {
                        class
                    };
                    return Err(StoreError::new(
                        class,
                        ErrorKind::Io,
                        format!("reading the image source: {e}"),
                    ));
                }
                Ok(Ok(0)) => {
                    self.done = true;
                    break;
                }
                Ok(Ok(_)) => {}
            }
        }
        if buf.is_empty() {
            return Ok(None);
        }
        self.total += buf.len() as u64;
        if let Some(cap) = self.cap
            && self.total > cap
        {
            return Err(StoreError::permanent(
                ErrorKind::SizeCapExceeded,
                format!("image data exceeds the size cap of {cap} bytes"),
            ));
        }
        if let Some(p) = self.progress {
            p(self.total);
        }
        Ok(Some(buf.freeze()))
    }
}
