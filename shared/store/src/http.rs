//! The read-only `http://` / `https://` backend (glance_store's http store).
//!
//! Reads stream the response body; the connect timeout, the time to response headers and the
//! wait for each body chunk are bounded by [`Timeouts`]. Deleting or writing through http is a
//! permanent `OperationNotSupported` error, so callers never retry it.

use std::sync::{Arc, OnceLock};

use futures::StreamExt;

use crate::error::{ErrorClass, ErrorKind, StoreError, classify_status};
use crate::options::Timeouts;
use crate::stream::{ReadStream, with_stall_timeout};
use crate::uri::redact;

/// The http(s) reader.
#[derive(Debug, Clone)]
pub struct HttpBackend {
    /// Built at the first read: building a client loads and parses the system's CA
    /// certificates (tens of milliseconds), which every daemon start would otherwise pay for a
    /// backend that most deployments never read from.
    client: Arc<OnceLock<Result<reqwest::Client, String>>>,
    timeouts: Timeouts,
}

fn transport_error(what: &str, e: &reqwest::Error) -> StoreError {
    // Transport failures (refused, reset, timed out, TLS hiccups) may clear up; a malformed
    // request or redirect loop will not.
    let class = if e.is_builder() || e.is_redirect() {
        ErrorClass::Permanent
    } else {
        ErrorClass::Transient
    };
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Remote
    };
    // `without_url` keeps the request URL (which may hold credentials) out of the message.
    let msg = format!("{what}: {}", clone_without_url(e));
    StoreError::new(class, kind, msg)
}

fn clone_without_url(e: &reqwest::Error) -> String {
    let text = e.to_string();
    match e.url() {
        Some(u) => text.replace(u.as_str(), &redact(u.as_str())),
        None => text,
    }
}

impl HttpBackend {
    /// The reader (rustls, connect timeout from `timeouts`); its HTTP client is built at the
    /// first read.
    pub fn new(timeouts: Timeouts) -> Result<Self, StoreError> {
        Ok(HttpBackend {
            client: Arc::new(OnceLock::new()),
            timeouts,
        })
    }

    fn client(&self) -> Result<&reqwest::Client, StoreError> {
        let built = self.client.get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(self.timeouts.connect)
                .read_timeout(self.timeouts.stall)
                .build()
                .map_err(|e| e.to_string())
        });
        built.as_ref().map_err(|e| {
            StoreError::permanent(ErrorKind::BadConfiguration, format!("HTTP client: {e}"))
        })
    }

    /// GETs the URL and streams the body.
    pub async fn open_read(&self, url: &url::Url) -> Result<ReadStream, StoreError> {
        let what = format!("reading {}", redact(url.as_str()));
        let client = self.client()?;
        let resp =
            match tokio::time::timeout(self.timeouts.operation, client.get(url.clone()).send())
                .await
            {
                Err(_) => return Err(StoreError::timeout(&what, self.timeouts.operation)),
                Ok(Err(e)) => return Err(transport_error(&what, &e)),
                Ok(Ok(r)) => r,
            };
        let status = resp.status();
        if !status.is_success() {
            let (class, kind) = classify_status(status.as_u16());
            return Err(StoreError::new(
                class,
                kind,
                format!("{what}: HTTP {}", status.as_u16()),
            ));
        }
        let size = resp.content_length();
        let what_stream = what.clone();
        let stream = resp
            .bytes_stream()
            .map(move |r| r.map_err(|e| transport_error(&what_stream, &e)))
            .boxed();
        Ok(ReadStream::new(
            size,
            with_stall_timeout(stream, self.timeouts.stall, redact(url.as_str())),
        ))
    }
}
