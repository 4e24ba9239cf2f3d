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

/// The data of a write: a byte reader, or a stream of chunks the caller already holds.
///
/// Chunks of a stream that are already as large as the backend's write unit pass through
/// without being copied; a reader's bytes are always copied into fresh chunks. Callers that
/// receive data as `Bytes` (an HTTP body) save a copy of every byte with
/// [`WriteInput::chunks`].
pub struct WriteInput<'r>(Input<'r>);

enum Input<'r> {
    Read(Pin<Box<dyn AsyncRead + Send + 'r>>),
    Chunks(BoxStream<'r, io::Result<Bytes>>),
}

impl<'r> WriteInput<'r> {
    /// Data read from `reader`.
    pub fn reader(reader: impl AsyncRead + Send + 'r) -> Self {
        WriteInput(Input::Read(Box::pin(reader)))
    }

    /// Data handed over chunk by chunk; an `Err` item fails the write (classified like a read
    /// error of a reader).
    pub fn chunks(chunks: impl Stream<Item = io::Result<Bytes>> + Send + 'r) -> Self {
        WriteInput(Input::Chunks(chunks.boxed()))
    }
}

impl fmt::Debug for WriteInput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Input::Read(_) => "WriteInput::Reader",
            Input::Chunks(_) => "WriteInput::Chunks",
        })
    }
}

/// Pulls chunks from a [`WriteInput`], enforcing the size cap and the stall timeout.
pub(crate) struct Chunker<'a, 'r> {
    input: Input<'r>,
    chunk: usize,
    cap: Option<u64>,
    stall: Duration,
    total: u64,
    progress: Option<Progress<'a>>,
    done: bool,
}

fn read_error(e: &io::Error) -> StoreError {
    let (class, _) = crate::error::classify_io(e);
    let class = if class == ErrorClass::NotFound {
        ErrorClass::Permanent
    } else {
        class
    };
    StoreError::new(
        class,
        ErrorKind::Io,
        format!("reading the image source: {e}"),
    )
}

impl<'a, 'r> Chunker<'a, 'r> {
    pub(crate) fn new(
        input: WriteInput<'r>,
        chunk: usize,
        opts: &WriteOptions<'a>,
        stall: Duration,
    ) -> Self {
        Chunker {
            input: input.0,
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

    /// The next chunk; `None` at end. A reader's chunks are `chunk` bytes (shorter only at the
    /// end of input). A stream's chunks are at least `chunk` bytes (except the last): a chunk
    /// the stream hands over that is already that large is returned as it is, smaller ones
    /// are gathered.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let size = self.chunk;
        let chunk = match &mut self.input {
            Input::Read(reader) => {
                let mut buf = BytesMut::with_capacity(size);
                while buf.len() < size {
                    match tokio::time::timeout(self.stall, reader.read_buf(&mut buf)).await {
                        Err(_) => {
                            return Err(StoreError::timeout(
                                "reading the image source",
                                self.stall,
                            ));
                        }
                        Ok(Err(e)) => return Err(read_error(&e)),
                        Ok(Ok(0)) => {
                            self.done = true;
                            break;
                        }
                        Ok(Ok(_)) => {}
                    }
                }
                buf.freeze()
            }
            Input::Chunks(stream) => {
                let mut buf = BytesMut::new();
                loop {
                    match tokio::time::timeout(self.stall, stream.next()).await {
                        Err(_) => {
                            return Err(StoreError::timeout(
                                "reading the image source",
                                self.stall,
                            ));
                        }
                        Ok(Some(Err(e))) => return Err(read_error(&e)),
                        Ok(None) => {
                            self.done = true;
                            break buf.freeze();
                        }
                        Ok(Some(Ok(b))) if buf.is_empty() && b.len() >= size => break b,
                        Ok(Some(Ok(b))) => {
                            if buf.is_empty() {
                                buf.reserve(size.max(b.len()));
                            }
                            buf.extend_from_slice(&b);
                            if buf.len() >= size {
                                break buf.freeze();
                            }
                        }
                    }
                }
            }
        };
        if chunk.is_empty() {
            return Ok(None);
        }
        self.total += chunk.len() as u64;
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
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(input: WriteInput<'_>, chunk: usize) -> Vec<Bytes> {
        let opts = WriteOptions::default();
        let mut c = Chunker::new(input, chunk, &opts, Duration::from_secs(5));
        let mut out = Vec::new();
        while let Some(b) = c.next_chunk().await.unwrap() {
            out.push(b);
        }
        assert_eq!(c.total(), out.iter().map(|b| b.len() as u64).sum::<u64>());
        out
    }

    #[tokio::test]
    async fn large_stream_chunks_pass_through_without_a_copy() {
        let big = Bytes::from(vec![7u8; 10_000]);
        let addr = big.as_ptr();
        let small: Vec<io::Result<Bytes>> =
            (0..5u8).map(|i| Ok(Bytes::from(vec![i; 3000]))).collect();
        let items = std::iter::once(Ok(big)).chain(small);
        let out = drain(WriteInput::chunks(futures::stream::iter(items)), 8192).await;
        // The large chunk is the caller's own buffer; the small ones are gathered until they
        // reach the unit (3 x 3000), and the rest ends the stream.
        assert_eq!(out[0].as_ptr(), addr);
        let sizes: Vec<usize> = out.iter().map(Bytes::len).collect();
        assert_eq!(sizes, vec![10_000, 9000, 6000]);
        assert_eq!(&out[1][..3000], &[0u8; 3000][..]);
        assert_eq!(&out[2][3000..], &[4u8; 3000][..]);
    }

    #[tokio::test]
    async fn reader_chunks_have_the_unit_size() {
        let data = vec![1u8; 10_000];
        let sizes: Vec<usize> = drain(WriteInput::reader(&data[..]), 4096)
            .await
            .iter()
            .map(Bytes::len)
            .collect();
        assert_eq!(sizes, vec![4096, 4096, 1808]);
    }
}
