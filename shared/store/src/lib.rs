//! imaged-store: reads, writes and deletes image data wherever a Glance location URI points.
//!
//! [`Store`] routes a [`Location`] (the `image_locations.value` URL plus the `meta_data`
//! `store` key) to a backend the way glance_store does in single-store and multi-store mode,
//! and returns errors whose [`ErrorClass`] tells the caller what to do: `NotFound` counts as
//! deleted, `Transient` is retried with backoff, `Permanent` needs an operator.
//!
//! Backends: filesystem (confined to its data directories), S3-compatible object storage
//! (through `object_store`), and read-only http(s). rbd, swift, cinder and vsphere locations
//! are parsed and answer a permanent "backend not supported by imaged yet" error.

mod direct;
mod error;
mod fs;
mod http;
mod options;
mod s3;
mod stream;
mod uri;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncRead;

pub use error::{ErrorClass, ErrorKind, StoreError};
pub use fs::FsBackend;
pub use http::HttpBackend;
pub use options::{
    AddressingStyle, BackendOptions, DEFAULT_CHUNK_SIZE, FilesystemOptions, S3Options, StoreMode,
    StoreOptions, Timeouts,
};
pub use s3::S3Backend;
pub use stream::{Progress, ReadStream, WriteInput, WriteOptions, Written};
pub use uri::{BackendType, ParsedUri, parse as parse_uri, redact as redact_uri};

/// One image location as the catalog holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Location {
    /// The decrypted `image_locations.value`.
    pub url: String,
    /// `meta_data["store"]` (multi-store backend name), if present. Callers that also honour
    /// the pre-Train `backend` key pass its value here. Ignored in single-store mode.
    pub store: Option<String>,
    /// The image id, used only in log lines (e.g. confinement refusals).
    pub image_id: Option<String>,
}

impl Location {
    /// A location with no store metadata and no image id.
    pub fn new(url: impl Into<String>) -> Self {
        Location {
            url: url.into(),
            store: None,
            image_id: None,
        }
    }

    /// Sets the `meta_data["store"]` backend name.
    pub fn with_store(mut self, store: impl Into<String>) -> Self {
        self.store = Some(store.into());
        self
    }

    /// Sets the image id for log lines.
    pub fn with_image_id(mut self, id: impl Into<String>) -> Self {
        self.image_id = Some(id.into());
        self
    }

    /// The URL with credentials removed.
    pub fn redacted_url(&self) -> String {
        redact_uri(&self.url)
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Location")
            .field("url", &self.redacted_url())
            .field("store", &self.store)
            .field("image_id", &self.image_id)
            .finish()
    }
}

enum Backend {
    File(FsBackend),
    S3(Box<S3Backend>),
    Http,
    Unsupported(BackendType),
}

impl Backend {
    fn backend_type(&self) -> BackendType {
        match self {
            Backend::File(_) => BackendType::File,
            Backend::S3(_) => BackendType::S3,
            Backend::Http => BackendType::Http,
            Backend::Unsupported(t) => *t,
        }
    }
}

struct Named {
    name: String,
    backend: Backend,
}

struct Inner {
    backends: Vec<Named>,
    multi: bool,
    default: Option<usize>,
    http: HttpBackend,
}

/// All configured backends; cheap to clone and safe to share between tasks.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("multi", &self.inner.multi)
            .field(
                "backends",
                &self
                    .inner
                    .backends
                    .iter()
                    .map(|n| (n.name.as_str(), n.backend.backend_type()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn not_supported(t: BackendType, loc: &Location) -> StoreError {
    StoreError::permanent(
        ErrorKind::BackendNotSupported,
        format!(
            "{}: the {t} backend is not supported by imaged yet",
            loc.redacted_url()
        ),
    )
}

impl Store {
    /// Builds every configured backend. Filesystem data directories are created if missing.
    pub fn new(opts: StoreOptions) -> Result<Self, StoreError> {
        let timeouts = opts.timeouts;
        let build = |b: &BackendOptions| -> Result<Backend, StoreError> {
            Ok(match b {
                BackendOptions::File(f) => Backend::File(FsBackend::new(f, timeouts)?),
                BackendOptions::S3(s) => Backend::S3(Box::new(S3Backend::new(s, timeouts)?)),
                BackendOptions::Http => Backend::Http,
                BackendOptions::Unsupported(t) => Backend::Unsupported(*t),
            })
        };
        let (backends, multi, default) = match &opts.mode {
            StoreMode::Single {
                default_store,
                filesystem,
                s3,
            } => {
                let mut v = Vec::new();
                if let Some(f) = filesystem {
                    v.push(Named {
                        name: "file".into(),
                        backend: build(&BackendOptions::File(f.clone()))?,
                    });
                }
                if let Some(s) = s3 {
                    v.push(Named {
                        name: "s3".into(),
                        backend: build(&BackendOptions::S3(s.clone()))?,
                    });
                }
                let default = v
                    .iter()
                    .position(|n| n.backend.backend_type() == *default_store);
                (v, false, default)
            }
            StoreMode::Multi {
                backends,
                default_backend,
            } => {
                let mut v = Vec::new();
                for (name, b) in backends {
                    v.push(Named {
                        name: name.clone(),
                        backend: build(b)?,
                    });
                }
                let default = match default_backend {
                    Some(d) => Some(v.iter().position(|n| &n.name == d).ok_or_else(|| {
                        StoreError::permanent(
                            ErrorKind::BadConfiguration,
                            format!("default_backend '{d}' is not in enabled_backends"),
                        )
                    })?),
                    None => None,
                };
                (v, true, default)
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                backends,
                multi,
                default,
                http: HttpBackend::new(timeouts)?,
            }),
        })
    }

    /// Finds the backend serving `loc`, as glance_store would (store metadata first in
    /// multi-store mode, else by scheme, and for files by which data directory holds the path).
    fn route(&self, loc: &Location, parsed: &ParsedUri) -> Result<Option<&Named>, StoreError> {
        let ty = parsed.backend_type();
        if !ty.is_supported() {
            return Err(not_supported(ty, loc));
        }
        if ty == BackendType::Http {
            return Ok(None);
        }
        if self.inner.multi
            && let Some(name) = &loc.store
        {
            let named = self
                .inner
                .backends
                .iter()
                .find(|n| &n.name == name)
                .ok_or_else(|| {
                    StoreError::permanent(
                        ErrorKind::UnknownBackend,
                        format!(
                            "{}: store '{name}' is not an enabled backend",
                            loc.redacted_url()
                        ),
                    )
                })?;
            let bt = named.backend.backend_type();
            if !bt.is_supported() {
                return Err(not_supported(bt, loc));
            }
            if bt != ty {
                return Err(StoreError::permanent(
                    ErrorKind::UnknownBackend,
                    format!(
                        "{}: store '{name}' is a {bt} backend, the location is {ty}",
                        loc.redacted_url()
                    ),
                ));
            }
            return Ok(Some(named));
        }
        let mut candidates = self
            .inner
            .backends
            .iter()
            .filter(|n| n.backend.backend_type() == ty);
        let first = candidates.next();
        let chosen = match (parsed, first) {
            (ParsedUri::File { path }, Some(first)) => {
                let claims = |n: &Named| matches!(&n.backend, Backend::File(f) if f.claims(path));
                if claims(first) {
                    Some(first)
                } else {
                    candidates.find(|n| claims(n)).or(Some(first))
                }
            }
            (_, f) => f,
        };
        match chosen {
            Some(n) => Ok(Some(n)),
            None => Err(StoreError::permanent(
                ErrorKind::UnknownBackend,
                format!("{}: no {ty} backend is configured", loc.redacted_url()),
            )),
        }
    }

    fn s3_target(s3: &S3Backend, parsed: &ParsedUri) -> Option<s3::S3Target> {
        match parsed {
            ParsedUri::S3 {
                https,
                access_key,
                secret_key,
                host,
                bucket,
                key,
            } => Some(s3.target_for(
                *https,
                access_key.as_deref(),
                secret_key.as_deref(),
                host,
                bucket,
                key,
            )),
            _ => None,
        }
    }

    fn mismatch(loc: &Location) -> StoreError {
        StoreError::permanent(
            ErrorKind::UnknownBackend,
            format!("{}: backend does not serve this scheme", loc.redacted_url()),
        )
    }

    /// Deletes the data a location points to. `NotFound` means it is already gone.
    pub async fn delete(&self, loc: &Location) -> Result<(), StoreError> {
        let parsed = uri::parse(&loc.url)?;
        let Some(named) = self.route(loc, &parsed)? else {
            return Err(StoreError::permanent(
                ErrorKind::OperationNotSupported,
                format!(
                    "{}: the http store is read-only; delete is not supported",
                    loc.redacted_url()
                ),
            ));
        };
        match (&named.backend, &parsed) {
            (Backend::File(f), ParsedUri::File { path }) => {
                f.delete(path, loc.image_id.as_deref()).await
            }
            (Backend::S3(s), p) => {
                let t = Self::s3_target(s, p).ok_or_else(|| Self::mismatch(loc))?;
                s.delete(&t).await
            }
            (Backend::Unsupported(t), _) => Err(not_supported(*t, loc)),
            _ => Err(Self::mismatch(loc)),
        }
    }

    /// Deletes many locations strictly one at a time (never two in flight), results in input
    /// order, each exactly as [`Store::delete`] would report it. The `file://` locations of one
    /// filesystem backend are deleted in a single blocking-pool round trip instead of one per
    /// location, which is most of the cost of deleting a small file.
    pub async fn delete_many(&self, locs: &[Location]) -> Vec<Result<(), StoreError>> {
        type Group<'a> = (&'a FsBackend, Vec<usize>, Vec<(String, Option<String>)>);
        let mut groups: Vec<Group<'_>> = Vec::new();
        let mut batched = vec![false; locs.len()];
        for (i, loc) in locs.iter().enumerate() {
            let Ok(parsed) = uri::parse(&loc.url) else {
                continue;
            };
            let (ParsedUri::File { path }, Ok(Some(named))) = (&parsed, self.route(loc, &parsed))
            else {
                continue;
            };
            let Backend::File(f) = &named.backend else {
                continue;
            };
            let item = (path.clone(), loc.image_id.clone());
            match groups.iter_mut().find(|g| std::ptr::eq(g.0, f)) {
                Some(g) => {
                    g.1.push(i);
                    g.2.push(item);
                }
                None => groups.push((f, vec![i], vec![item])),
            }
            batched[i] = true;
        }
        let mut out: Vec<Option<Result<(), StoreError>>> = locs.iter().map(|_| None).collect();
        for (f, positions, items) in groups {
            for (i, res) in positions.into_iter().zip(f.delete_all(items).await) {
                out[i] = Some(res);
            }
        }
        let mut done = Vec::with_capacity(locs.len());
        for ((loc, res), batched) in locs.iter().zip(out).zip(batched) {
            match res {
                Some(res) if batched => done.push(res),
                _ => done.push(self.delete(loc).await),
            }
        }
        done
    }

    /// Opens a location for streaming reads.
    pub async fn open_read(&self, loc: &Location) -> Result<ReadStream, StoreError> {
        let parsed = uri::parse(&loc.url)?;
        let Some(named) = self.route(loc, &parsed)? else {
            let ParsedUri::Http { url } = &parsed else {
                return Err(Self::mismatch(loc));
            };
            return self.inner.http.open_read(url).await;
        };
        match (&named.backend, &parsed) {
            (Backend::File(f), ParsedUri::File { path }) => {
                f.open_read(path, loc.image_id.as_deref()).await
            }
            (Backend::S3(s), p) => {
                let t = Self::s3_target(s, p).ok_or_else(|| Self::mismatch(loc))?;
                s.open_read(&t).await
            }
            (Backend::Unsupported(t), _) => Err(not_supported(*t, loc)),
            _ => Err(Self::mismatch(loc)),
        }
    }

    /// Streams `reader` into a new object for `image_id` on the named (or default) backend.
    ///
    /// Nothing is left behind on failure: a filesystem write removes its temporary file and an
    /// S3 multi-part upload is aborted. A write beyond `opts.size_cap` fails permanently with
    /// `SizeCapExceeded`.
    pub async fn write<R: AsyncRead + Unpin + Send>(
        &self,
        image_id: &str,
        reader: R,
        opts: WriteOptions<'_>,
    ) -> Result<Written, StoreError> {
        self.write_from(image_id, WriteInput::reader(reader), opts)
            .await
    }

    /// [`Store::write`] of data that arrives as chunks (`Bytes`): chunks already as large as
    /// the backend's write unit are written without being copied.
    pub async fn write_chunks(
        &self,
        image_id: &str,
        chunks: impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send,
        opts: WriteOptions<'_>,
    ) -> Result<Written, StoreError> {
        self.write_from(image_id, WriteInput::chunks(chunks), opts)
            .await
    }

    /// [`Store::write`] of a [`WriteInput`].
    pub async fn write_from(
        &self,
        image_id: &str,
        input: WriteInput<'_>,
        opts: WriteOptions<'_>,
    ) -> Result<Written, StoreError> {
        let named = match opts.backend {
            Some(name) => self
                .inner
                .backends
                .iter()
                .find(|n| n.name == name)
                .ok_or_else(|| {
                    StoreError::permanent(
                        ErrorKind::UnknownBackend,
                        format!("store '{name}' is not an enabled backend"),
                    )
                })?,
            None => self
                .inner
                .default
                .map(|i| &self.inner.backends[i])
                .ok_or_else(|| {
                    StoreError::permanent(
                        ErrorKind::BadConfiguration,
                        "no default backend is configured for writes",
                    )
                })?,
        };
        let store = self.inner.multi.then(|| named.name.clone());
        match &named.backend {
            Backend::File(f) => {
                let (url, size) = f.write(image_id, input, &opts).await?;
                Ok(Written { url, size, store })
            }
            Backend::S3(s) => {
                let (target, url) = s.write_target(image_id)?;
                let size = s.write(&target, input, &opts).await?;
                Ok(Written { url, size, store })
            }
            Backend::Http => Err(StoreError::permanent(
                ErrorKind::OperationNotSupported,
                "the http store is read-only; writes are not supported",
            )),
            Backend::Unsupported(t) => Err(StoreError::permanent(
                ErrorKind::BackendNotSupported,
                format!("the {t} backend is not supported by imaged yet"),
            )),
        }
    }

    /// Removes temporary files older than `min_age` that killed writers left in the
    /// filesystem backends' data directories; returns how many were removed.
    pub async fn remove_stale_temp_files(&self, min_age: Duration) -> Result<usize, StoreError> {
        let mut total = 0;
        for n in &self.inner.backends {
            if let Backend::File(f) = &n.backend {
                total += f.remove_stale_temp_files(min_age).await?;
            }
        }
        Ok(total)
    }

    /// Names and types of the configured backends (single-store mode names them by type).
    pub fn backends(&self) -> Vec<(String, BackendType)> {
        self.inner
            .backends
            .iter()
            .map(|n| (n.name.clone(), n.backend.backend_type()))
            .collect()
    }
}
