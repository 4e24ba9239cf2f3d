//! Store configuration: the glance_store options imaged honours, as plain typed values.
//!
//! The daemons map their parsed configuration files onto [`StoreOptions`]; this crate does not
//! read configuration files itself. Units are converted by the caller: sizes here are bytes and
//! durations are [`Duration`]s, even where glance_store's options use megabytes or seconds.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::uri::BackendType;

/// Everything [`crate::Store::new`] needs.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Single-store (`[glance_store]`) or multi-store (`[DEFAULT] enabled_backends`).
    pub mode: StoreMode,
    /// Time limits applied to every operation.
    pub timeouts: Timeouts,
}

/// How backends are configured, mirroring glance_store's two modes.
#[derive(Debug, Clone)]
pub enum StoreMode {
    /// `[glance_store] stores`, `default_store`, and one option set per store type. Locations
    /// are routed by URI scheme; their `store` metadata is ignored.
    Single {
        /// `[glance_store] default_store`: where writes go.
        default_store: BackendType,
        /// Filesystem options (`filesystem_store_datadir(s)`); `None` when `file` is not among
        /// `stores`.
        filesystem: Option<FilesystemOptions>,
        /// `s3_store_*` options; `None` when `s3` is not among `stores`.
        s3: Option<S3Options>,
    },
    /// `[DEFAULT] enabled_backends = name:type,…` with one section per backend. Locations are
    /// routed by their `store` metadata key, or by scheme when it is absent.
    Multi {
        /// Backend name → options, one per `enabled_backends` entry (plus, if the caller wants
        /// them, the reserved `os_glance_staging_store` / `os_glance_tasks_store`).
        backends: BTreeMap<String, BackendOptions>,
        /// `[glance_store] default_backend`: where writes go when no backend is named.
        default_backend: Option<String>,
    },
}

/// One configured backend.
#[derive(Debug, Clone)]
pub enum BackendOptions {
    /// A `file` backend.
    File(FilesystemOptions),
    /// An `s3` backend.
    S3(S3Options),
    /// An `http` backend (read-only; has no options).
    Http,
    /// A backend type imaged recognises but does not implement (`rbd`, `swift`, `cinder`,
    /// `vmware`); every operation on it fails permanently.
    Unsupported(BackendType),
}

/// Filesystem backend options. `Default` is [`FilesystemOptions::with_datadir`] without a
/// directory.
#[derive(Debug, Clone)]
pub struct FilesystemOptions {
    /// `filesystem_store_datadir` (glance_store's default is `/var/lib/glance/images`).
    pub datadir: Option<PathBuf>,
    /// `filesystem_store_datadirs`: `(directory, priority)`; a higher priority is filled first.
    /// Used together with `datadir` when both are set, as glance_store refuses that combination
    /// only at write time.
    pub datadirs: Vec<(PathBuf, i32)>,
    /// `filesystem_store_file_perm`: when non-zero, new image files get this mode (octal
    /// value such as `0o640`).
    pub file_perm: u32,
    /// Size of each read/write chunk in bytes (glance_store's `filesystem_store_chunk_size`
    /// is 64 KiB; larger chunks cost fewer system calls). Default 1 MiB.
    pub chunk_size: usize,
    /// Write image data with direct I/O (`O_DIRECT`), bypassing the page cache, on filesystems
    /// that support it; others are written through the page cache regardless. Default `true`.
    /// Direct writes cost much less CPU, but a file just written is not in the page cache, so
    /// an immediate read of it comes from the disk; turn this off where that matters more, or
    /// where the filesystem's direct I/O is slow (some network filesystems).
    pub direct_io: bool,
}

impl Default for FilesystemOptions {
    fn default() -> Self {
        FilesystemOptions {
            datadir: None,
            datadirs: Vec::new(),
            file_perm: 0,
            chunk_size: DEFAULT_CHUNK_SIZE,
            direct_io: true,
        }
    }
}

impl FilesystemOptions {
    /// One data directory, default chunk size, no chmod.
    pub fn with_datadir(dir: impl Into<PathBuf>) -> Self {
        FilesystemOptions {
            datadir: Some(dir.into()),
            ..FilesystemOptions::default()
        }
    }
}

/// Default streaming chunk: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;

/// How bucket names are put into request URLs (`s3_store_bucket_url_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressingStyle {
    /// glance_store's default: virtual-hosted for AWS hosts, path-style otherwise.
    #[default]
    Auto,
    /// `https://host/bucket/key`.
    Path,
    /// `https://bucket.host/key`.
    Virtual,
}

/// S3 backend options (`s3_store_*`).
#[derive(Clone)]
pub struct S3Options {
    /// `s3_store_host`, e.g. `s3.amazonaws.com`, `http://rgw.example:8080`.
    pub host: String,
    /// `s3_store_access_key`.
    pub access_key: String,
    /// `s3_store_secret_key`.
    pub secret_key: String,
    /// `s3_store_bucket`.
    pub bucket: String,
    /// `s3_store_create_bucket_on_put`.
    pub create_bucket_on_put: bool,
    /// `s3_store_large_object_size` in bytes (glance_store: 100 MB): objects up to this size are
    /// sent in one PUT, larger ones as a multi-part upload.
    pub large_object_size: u64,
    /// `s3_store_large_object_chunk_size` in bytes (glance_store: 10 MB): the part size of
    /// multi-part uploads (S3 requires at least 5 MiB for all but the last part).
    pub large_object_chunk_size: u64,
    /// `s3_store_thread_pools`: parts uploaded concurrently (glance_store: 10).
    pub thread_pools: usize,
    /// `s3_store_bucket_url_format`.
    pub addressing_style: AddressingStyle,
    /// Signing region; `us-east-1` when unset.
    pub region: Option<String>,
}

impl fmt::Debug for S3Options {
    // Hand-written: the keys must never be printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("host", &self.host)
            .field("access_key", &"***")
            .field("secret_key", &"***")
            .field("bucket", &self.bucket)
            .field("create_bucket_on_put", &self.create_bucket_on_put)
            .field("large_object_size", &self.large_object_size)
            .field("large_object_chunk_size", &self.large_object_chunk_size)
            .field("thread_pools", &self.thread_pools)
            .field("addressing_style", &self.addressing_style)
            .field("region", &self.region)
            .finish()
    }
}

impl S3Options {
    /// Options with glance_store's defaults for everything but host, keys and bucket.
    pub fn new(
        host: impl Into<String>,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
        bucket: impl Into<String>,
    ) -> Self {
        S3Options {
            host: host.into(),
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            bucket: bucket.into(),
            create_bucket_on_put: false,
            large_object_size: 100 * 1024 * 1024,
            large_object_chunk_size: 10 * 1024 * 1024,
            thread_pools: 10,
            addressing_style: AddressingStyle::Auto,
            region: None,
        }
    }
}

/// Time limits. Every store operation is bounded by one of these.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Whole-operation limit for delete, open (up to the first byte) and metadata calls.
    pub operation: Duration,
    /// Longest a streaming read or write may wait for one chunk before it fails as transient.
    pub stall: Duration,
    /// TCP connect limit for remote backends.
    pub connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            operation: Duration::from_secs(60),
            stall: Duration::from_secs(120),
            connect: Duration::from_secs(10),
        }
    }
}
