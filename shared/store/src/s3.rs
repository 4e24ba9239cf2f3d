//! The S3-compatible backend (`s3://`, `s3+http://`, `s3+https://`) on top of `object_store`.
//!
//! Why `object_store` rather than the AWS SDK: it is one maintained crate (Apache Arrow project)
//! that speaks SigV4 to any S3-compatible server (Ceph RGW, MinIO, AWS), streams GET bodies,
//! has a multi-part writer with bounded in-flight parts, and builds on the reqwest/rustls stack
//! this workspace already uses. The AWS SDK pulls in a much larger dependency tree (smithy
//! runtime, its own HTTP stack) and is tuned for AWS endpoint discovery rather than arbitrary
//! hosts taken from location URIs.
//!
//! A location carries the endpoint, bucket, key and (usually) the keys, as glance_store writes
//! them; the configured `s3_store_*` options supply what the URI lacks. One client is cached per
//! (endpoint, bucket, access key). Deletes HEAD first so a missing object is reported as
//! not-found (S3's DELETE succeeds on missing keys). Writes up to `large_object_size` are one
//! PUT; larger ones a multi-part upload with `large_object_chunk_size` parts, aborted on error
//! or when the size cap is exceeded.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::signer::Signer;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig, WriteMultipart};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::error::{ErrorClass, ErrorKind, StoreError, classify_status};
use crate::options::{AddressingStyle, S3Options, Timeouts};
use crate::stream::{Chunker, ReadStream, WriteInput, WriteOptions, with_stall_timeout};

/// Where one object lives and how to sign for it.
#[derive(Clone)]
pub(crate) struct S3Target {
    /// `http(s)://host[:port][/prefix]` without the bucket.
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
    pub(crate) key: String,
    pub(crate) access_key: String,
    pub(crate) secret_key: String,
}

impl S3Target {
    /// `s3://…/bucket/key` without credentials, for messages.
    fn display(&self) -> String {
        format!("{}/{}/{}", self.endpoint, self.bucket, self.key)
    }
}

#[derive(Hash, PartialEq, Eq)]
struct ClientKey {
    endpoint: String,
    bucket: String,
    access_key: String,
    secret_key: String,
}

/// An S3 backend: defaults from `s3_store_*`, clients created per endpoint/bucket/credentials.
pub struct S3Backend {
    opts: S3Options,
    timeouts: Timeouts,
    clients: Mutex<HashMap<ClientKey, Arc<AmazonS3>>>,
    buckets_ready: Mutex<HashSet<(String, String)>>,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Splits a configured `s3_store_host` into (https?, host without scheme).
fn split_host(host: &str) -> (bool, String) {
    let h = host.trim().trim_end_matches('/');
    if let Some(rest) = h.strip_prefix("https://") {
        (true, rest.to_owned())
    } else if let Some(rest) = h.strip_prefix("http://") {
        (false, rest.to_owned())
    } else {
        (false, h.to_owned())
    }
}

impl S3Backend {
    /// Builds the backend; no network traffic happens until the first operation.
    pub fn new(opts: &S3Options, timeouts: Timeouts) -> Result<Self, StoreError> {
        if opts.large_object_chunk_size < 5 * 1024 * 1024 {
            return Err(StoreError::permanent(
                ErrorKind::BadConfiguration,
                "s3_store_large_object_chunk_size must be at least 5 MiB (the S3 minimum part size)",
            ));
        }
        Ok(S3Backend {
            opts: opts.clone(),
            timeouts,
            clients: Mutex::new(HashMap::new()),
            buckets_ready: Mutex::new(HashSet::new()),
        })
    }

    /// Resolves a parsed location into a target; credentials from the URI win over options.
    pub(crate) fn target_for(
        &self,
        https: Option<bool>,
        access_key: Option<&str>,
        secret_key: Option<&str>,
        host: &str,
        bucket: &str,
        key: &str,
    ) -> S3Target {
        // glance_store writes plain `s3://` when its configured host is not https, so plain
        // `s3` means http.
        let secure = https.unwrap_or(false);
        let scheme = if secure { "https" } else { "http" };
        S3Target {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            access_key: access_key.unwrap_or(&self.opts.access_key).to_owned(),
            secret_key: secret_key.unwrap_or(&self.opts.secret_key).to_owned(),
        }
    }

    fn scrub(&self, msg: String, t: &S3Target) -> String {
        let mut msg = msg;
        for secret in [
            &t.secret_key,
            &t.access_key,
            &self.opts.secret_key,
            &self.opts.access_key,
        ] {
            if secret.len() >= 3 {
                msg = msg.replace(secret.as_str(), "***");
                let encoded = utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string();
                msg = msg.replace(&encoded, "***");
            }
        }
        msg
    }

    fn error(&self, what: &str, t: &S3Target, err: object_store::Error) -> StoreError {
        let (class, kind) = classify_object_store(&err);
        let msg = self.scrub(format!("{what} {}: {err}", t.display()), t);
        StoreError::new(class, kind, msg)
    }

    fn client(&self, t: &S3Target) -> Result<Arc<AmazonS3>, StoreError> {
        let key = ClientKey {
            endpoint: t.endpoint.clone(),
            bucket: t.bucket.clone(),
            access_key: t.access_key.clone(),
            secret_key: t.secret_key.clone(),
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let virtual_hosted = match self.opts.addressing_style {
            AddressingStyle::Path => false,
            AddressingStyle::Virtual => true,
            AddressingStyle::Auto => t.endpoint.contains("amazonaws.com"),
        };
        let endpoint = if virtual_hosted {
            let (secure, host) = split_host(&t.endpoint);
            let scheme = if secure { "https" } else { "http" };
            format!("{scheme}://{}.{host}", t.bucket)
        } else {
            t.endpoint.clone()
        };
        // Request timeouts are applied per operation by this module (a whole-request timeout
        // would cut off long streaming GETs); the client only bounds connecting.
        let client_opts = ClientOptions::new()
            .with_allow_http(true)
            .with_timeout_disabled()
            .with_connect_timeout(self.timeouts.connect);
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: self.timeouts.operation,
            ..RetryConfig::default()
        };
        let store = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name(&t.bucket)
            .with_access_key_id(&t.access_key)
            .with_secret_access_key(&t.secret_key)
            .with_region(self.opts.region.as_deref().unwrap_or("us-east-1"))
            .with_virtual_hosted_style_request(virtual_hosted)
            .with_client_options(client_opts)
            .with_retry(retry)
            .build()
            .map_err(|e| {
                StoreError::permanent(
                    ErrorKind::BadConfiguration,
                    self.scrub(format!("S3 client for {}: {e}", t.display()), t),
                )
            })?;
        let store = Arc::new(store);
        clients.insert(key, store.clone());
        Ok(store)
    }

    async fn timed<T>(
        &self,
        what: &str,
        t: &S3Target,
        fut: impl std::future::Future<Output = Result<T, object_store::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeouts.operation, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(what, t, e)),
            Err(_) => Err(StoreError::timeout(
                format!("{what} {}", t.display()),
                self.timeouts.operation,
            )),
        }
    }

    /// Deletes the object; a missing object is `NotFound`.
    pub(crate) async fn delete(&self, t: &S3Target) -> Result<(), StoreError> {
        let client = self.client(t)?;
        let path = ObjPath::from(t.key.as_str());
        self.timed("checking", t, client.head(&path)).await?;
        self.timed("deleting", t, client.delete(&path)).await
    }

    /// Opens the object for streaming.
    pub(crate) async fn open_read(&self, t: &S3Target) -> Result<ReadStream, StoreError> {
        let client = self.client(t)?;
        let path = ObjPath::from(t.key.as_str());
        let got = self.timed("reading", t, client.get(&path)).await?;
        let size = got.meta.size;
        let this_target = t.clone();
        let scrub_keys = [
            t.secret_key.clone(),
            t.access_key.clone(),
            self.opts.secret_key.clone(),
            self.opts.access_key.clone(),
        ];
        let display = t.display();
        let stream = got
            .into_stream()
            .map(move |r| {
                r.map_err(|e| {
                    let (class, kind) = classify_object_store(&e);
                    let mut msg = format!("reading {}: {e}", this_target.display());
                    for s in &scrub_keys {
                        if s.len() >= 3 {
                            msg = msg.replace(s.as_str(), "***");
                        }
                    }
                    StoreError::new(class, kind, msg)
                })
            })
            .boxed();
        Ok(ReadStream::new(
            Some(size),
            with_stall_timeout(stream, self.timeouts.stall, display),
        ))
    }

    /// The target a new image goes to, from the configured options.
    pub(crate) fn write_target(&self, image_id: &str) -> Result<(S3Target, String), StoreError> {
        if self.opts.host.is_empty() || self.opts.bucket.is_empty() {
            return Err(StoreError::permanent(
                ErrorKind::BadConfiguration,
                "S3 backend needs s3_store_host and s3_store_bucket to write",
            ));
        }
        if image_id.is_empty() || image_id.contains('/') {
            return Err(StoreError::permanent(
                ErrorKind::MalformedUri,
                format!("image id {image_id:?} cannot be used as an S3 key"),
            ));
        }
        let (secure, host) = split_host(&self.opts.host);
        let t = self.target_for(Some(secure), None, None, &host, &self.opts.bucket, image_id);
        let scheme = if secure { "s3+https" } else { "s3" };
        let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        let url = format!(
            "{scheme}://{}:{}@{host}/{}/{image_id}",
            enc(&self.opts.access_key),
            enc(&self.opts.secret_key),
            self.opts.bucket
        );
        Ok((t, url))
    }

    /// Creates the bucket once per process when `create_bucket_on_put` is set.
    async fn ensure_bucket(&self, t: &S3Target, client: &AmazonS3) -> Result<(), StoreError> {
        if !self.opts.create_bucket_on_put {
            return Ok(());
        }
        let id = (t.endpoint.clone(), t.bucket.clone());
        if self
            .buckets_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
        {
            return Ok(());
        }
        // object_store has no CreateBucket call; a presigned PUT on the bucket root is one.
        let url = self
            .timed(
                "signing bucket creation for",
                t,
                client.signed_url(
                    reqwest::Method::PUT,
                    &ObjPath::from(""),
                    Duration::from_secs(300),
                ),
            )
            .await?;
        let http = reqwest::Client::builder()
            .connect_timeout(self.timeouts.connect)
            .timeout(self.timeouts.operation)
            .build()
            .map_err(|e| {
                StoreError::permanent(ErrorKind::BadConfiguration, format!("HTTP client: {e}"))
            })?;
        let resp = http
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await
            .map_err(|e| {
                StoreError::new(
                    ErrorClass::Transient,
                    ErrorKind::Remote,
                    format!("creating bucket {}: {}", t.bucket, e.without_url()),
                )
            })?;
        let status = resp.status().as_u16();
        // 409 means the bucket already exists (BucketAlreadyOwnedByYou / BucketAlreadyExists).
        if !(resp.status().is_success() || status == 409) {
            let (class, kind) = classify_status(status);
            let class = if class == ErrorClass::NotFound {
                ErrorClass::Permanent
            } else {
                class
            };
            return Err(StoreError::new(
                class,
                kind,
                format!("creating bucket {}: HTTP {status}", t.bucket),
            ));
        }
        self.buckets_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        Ok(())
    }

    /// Streams `input` into the object; returns bytes written.
    pub(crate) async fn write(
        &self,
        t: &S3Target,
        input: WriteInput<'_>,
        opts: &WriteOptions<'_>,
    ) -> Result<u64, StoreError> {
        let client = self.client(t)?;
        self.ensure_bucket(t, &client).await?;
        let path = ObjPath::from(t.key.as_str());
        let part = self.opts.large_object_chunk_size as usize;
        let single_limit = self.opts.large_object_size.max(1) as usize;
        let mut chunker = Chunker::new(input, part, opts, self.timeouts.stall);

        // Read up to the single-PUT limit first: small images go up in one request.
        let mut head: Vec<Bytes> = Vec::new();
        let mut head_len = 0usize;
        let mut more = true;
        while head_len <= single_limit {
            match chunker.next_chunk().await? {
                Some(c) => {
                    head_len += c.len();
                    head.push(c);
                }
                None => {
                    more = false;
                    break;
                }
            }
        }
        if !more && head_len <= single_limit {
            let payload: PutPayload = head.into_iter().collect();
            self.timed("writing", t, client.put(&path, payload)).await?;
            return Ok(chunker.total());
        }

        let upload = self
            .timed(
                "starting multi-part upload of",
                t,
                client.put_multipart(&path),
            )
            .await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
        let concurrency = self.opts.thread_pools.max(1);
        let result: Result<(), StoreError> = async {
            for c in head.drain(..) {
                self.timed("uploading", t, writer.wait_for_capacity(concurrency))
                    .await?;
                writer.put(c);
            }
            while let Some(c) = chunker.next_chunk().await? {
                self.timed("uploading", t, writer.wait_for_capacity(concurrency))
                    .await?;
                writer.put(c);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                self.timed("completing upload of", t, writer.finish())
                    .await?;
                Ok(chunker.total())
            }
            Err(e) => {
                if let Err(abort_err) =
                    tokio::time::timeout(self.timeouts.operation, writer.abort()).await
                {
                    tracing::warn!(
                        target = %t.display(),
                        "aborting multi-part upload timed out: {abort_err}"
                    );
                }
                Err(e)
            }
        }
    }
}

/// Classifies an object_store error. Status codes are only available through the error text
/// (object_store keeps its retry error type private), so 4xx/5xx are recognised from the
/// "status code: NNN" phrase; transport failures (connect, timeout) are transient.
fn classify_object_store(err: &object_store::Error) -> (ErrorClass, ErrorKind) {
    use object_store::Error as E;
    match err {
        E::NotFound { .. } => (ErrorClass::NotFound, ErrorKind::NotFound),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            (ErrorClass::Permanent, ErrorKind::PermissionDenied)
        }
        E::AlreadyExists { .. } => (ErrorClass::Permanent, ErrorKind::AlreadyExists),
        E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented
        | E::UnknownConfigurationKey { .. } => (ErrorClass::Permanent, ErrorKind::Remote),
        E::Generic { source, .. } => {
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
            while let Some(e) = cur {
                if e.downcast_ref::<object_store::client::HttpError>()
                    .is_some()
                {
                    return (ErrorClass::Transient, ErrorKind::Remote);
                }
                cur = e.source();
            }
            let text = source.to_string();
            if let Some(pos) = text.find("status code: ") {
                let code: String = text[pos + 13..].chars().take(3).collect();
                if let Ok(code) = code.parse::<u16>() {
                    return classify_status(code);
                }
            }
            (ErrorClass::Transient, ErrorKind::Remote)
        }
        _ => (ErrorClass::Transient, ErrorKind::Remote),
    }
}
