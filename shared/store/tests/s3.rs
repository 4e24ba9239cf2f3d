//! S3 backend against a real S3-compatible server (moto_server).
//!
//! The server comes from `IMAGED_TEST_S3_ENDPOINT` (set by `.ci/setup-s3.sh`), or is started
//! per test from the `moto_server` binary named by `IMAGED_TEST_MOTO_SERVER`. Without either,
//! the tests fail under `CI` and are skipped loudly otherwise.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imaged_store::{
    BackendOptions, BackendType, ErrorClass, ErrorKind, Location, S3Options, Store, StoreMode,
    StoreOptions, Timeouts, WriteOptions,
};
use object_store::ObjectStore;

const ACCESS: &str = "AKIDIMAGEDTEST";
// Contains '/' and '+', as real AWS secrets can, to exercise URI encoding.
const SECRET: &str = "s3cr3t/Key+With@Odd=Chars";

struct Server {
    endpoint: String,
    child: Option<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_up(endpoint: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = reqwest::Client::new();
    while Instant::now() < deadline {
        if client.get(endpoint).send().await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn server() -> Option<Server> {
    if let Ok(endpoint) = std::env::var("IMAGED_TEST_S3_ENDPOINT") {
        assert!(
            wait_up(&endpoint).await,
            "IMAGED_TEST_S3_ENDPOINT={endpoint} is not answering"
        );
        return Some(Server {
            endpoint,
            child: None,
        });
    }
    if let Ok(bin) = std::env::var("IMAGED_TEST_MOTO_SERVER") {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let s = Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            child: Some(child),
        };
        assert!(wait_up(&s.endpoint).await, "{bin} did not come up");
        return Some(s);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "no S3 test server: set IMAGED_TEST_S3_ENDPOINT (source .ci/setup-s3.sh) or IMAGED_TEST_MOTO_SERVER"
        );
    }
    // Written to the real stderr so the skip is visible even though the harness captures
    // `eprintln!` of passing tests.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "!!! SKIPPING S3 TEST: no IMAGED_TEST_S3_ENDPOINT or IMAGED_TEST_MOTO_SERVER; run `source .ci/setup-s3.sh` first"
    );
    None
}

fn bucket() -> String {
    format!("imaged-test-{}", uuid::Uuid::new_v4().simple())
}

fn s3_opts(endpoint: &str, bucket: &str, part: u64, single: u64) -> S3Options {
    let mut o = S3Options::new(endpoint, ACCESS, SECRET, bucket);
    o.create_bucket_on_put = true;
    o.large_object_chunk_size = part;
    o.large_object_size = single;
    o.thread_pools = 4;
    o
}

fn single_store(opts: S3Options) -> Store {
    Store::new(StoreOptions {
        mode: StoreMode::Single {
            default_store: BackendType::S3,
            filesystem: None,
            s3: Some(opts),
        },
        timeouts: Timeouts {
            operation: Duration::from_secs(30),
            stall: Duration::from_secs(30),
            connect: Duration::from_secs(5),
        },
    })
    .unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 131 + seed as usize) % 251) as u8)
        .collect()
}

fn raw_client(endpoint: &str, bucket: &str) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(bucket)
        .with_access_key_id(ACCESS)
        .with_secret_access_key(SECRET)
        .with_region("us-east-1")
        .with_allow_http(true)
        .build()
        .unwrap()
}

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn single_put_round_trip_delete_twice() {
    let Some(srv) = server().await else { return };
    let b = bucket();
    let store = single_store(s3_opts(&srv.endpoint, &b, 5 * MIB as u64, 100 * MIB as u64));
    let data = pattern(MIB + 123, 1);
    let w = store
        .write("img-small", &data[..], WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(w.size, data.len() as u64);
    let host = srv.endpoint.trim_start_matches("http://");
    assert_eq!(
        w.url,
        format!("s3://AKIDIMAGEDTEST:s3cr3t%2FKey%2BWith%40Odd%3DChars@{host}/{b}/img-small")
    );
    assert!(!format!("{w:?}").contains("s3cr3t"));
    assert!(!w.redacted_url().contains("s3cr3t"));

    // The URL round-trips through glance_store's parsing rules (credentials decoded).
    let loc = Location::new(&w.url).with_image_id("img-small");
    let r = store.open_read(&loc).await.unwrap();
    assert_eq!(r.size(), Some(data.len() as u64));
    assert_eq!(r.collect_all().await.unwrap(), data);

    store.delete(&loc).await.unwrap();
    let err = store.delete(&loc).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound, "{err}");
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
    let err = store.open_read(&loc).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound, "{err}");
}

#[tokio::test]
async fn multipart_upload_of_an_object_larger_than_one_part() {
    let Some(srv) = server().await else { return };
    let b = bucket();
    // Parts of 5 MiB, single PUT only up to 5 MiB: 12 MiB + 3 goes up in 3 parts, whether it
    // arrives through a reader or as uneven chunks (which pass to the upload uncopied).
    let store = single_store(s3_opts(&srv.endpoint, &b, 5 * MIB as u64, 5 * MIB as u64));
    let data = pattern(12 * MIB + 3, 7);
    for chunked in [false, true] {
        let id = if chunked {
            "img-large-chunks"
        } else {
            "img-large"
        };
        let seen = std::sync::Mutex::new(0u64);
        let progress = |n: u64| *seen.lock().unwrap() = n;
        let opts = WriteOptions {
            progress: Some(&progress),
            ..Default::default()
        };
        let w = if chunked {
            let chunks: Vec<std::io::Result<bytes::Bytes>> = data
                .chunks(MIB + 7)
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect();
            store
                .write_chunks(id, futures::stream::iter(chunks), opts)
                .await
        } else {
            store.write(id, &data[..], opts).await
        }
        .unwrap();
        assert_eq!(w.size, data.len() as u64);
        assert_eq!(*seen.lock().unwrap(), data.len() as u64);

        let raw = raw_client(&srv.endpoint, &b);
        let meta = raw.head(&object_store::path::Path::from(id)).await.unwrap();
        assert_eq!(meta.size, data.len() as u64);
        let etag = meta.e_tag.unwrap_or_default();
        assert!(
            etag.trim_matches('"').ends_with("-3"),
            "{id}: expected a 3-part multipart ETag, got {etag}"
        );

        let loc = Location::new(&w.url);
        let got = store
            .open_read(&loc)
            .await
            .unwrap()
            .collect_all()
            .await
            .unwrap();
        assert!(
            got == data,
            "{id}: multipart object differs from what was written"
        );
        store.delete(&loc).await.unwrap();
    }
}

#[tokio::test]
async fn size_cap_aborts_the_multipart_upload() {
    let Some(srv) = server().await else { return };
    let b = bucket();
    let store = single_store(s3_opts(&srv.endpoint, &b, 5 * MIB as u64, 5 * MIB as u64));
    let data = pattern(12 * MIB, 3);
    let err = store
        .write(
            "img-capped",
            &data[..],
            WriteOptions {
                size_cap: Some(8 * MIB as u64),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(err.kind(), &ErrorKind::SizeCapExceeded);

    let raw = raw_client(&srv.endpoint, &b);
    let head = raw
        .head(&object_store::path::Path::from("img-capped"))
        .await;
    assert!(
        matches!(head, Err(object_store::Error::NotFound { .. })),
        "{head:?}"
    );
    // No multi-part upload is left open on the server.
    let listing = reqwest::get(format!("{}/{b}?uploads", srv.endpoint))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains("ListMultipartUploadsResult"), "{listing}");
    assert!(!listing.contains("<Upload>"), "{listing}");

    // A small capped write fails before any request leaves the single-PUT buffer.
    let err = store
        .write(
            "img-capped-small",
            &data[..2 * MIB],
            WriteOptions {
                size_cap: Some(MIB as u64),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::SizeCapExceeded);
}

#[tokio::test]
async fn multi_store_location_with_store_key() {
    let Some(srv) = server().await else { return };
    let b = bucket();
    let mut backends = BTreeMap::new();
    backends.insert(
        "objects".to_string(),
        BackendOptions::S3(s3_opts(&srv.endpoint, &b, 5 * MIB as u64, 100 * MIB as u64)),
    );
    let store = Store::new(StoreOptions {
        mode: StoreMode::Multi {
            backends,
            default_backend: Some("objects".into()),
        },
        timeouts: Timeouts::default(),
    })
    .unwrap();
    let w = store
        .write("img-m", &b"hello s3"[..], WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(w.store.as_deref(), Some("objects"));
    let loc = Location::new(&w.url).with_store("objects");
    let got = store
        .open_read(&loc)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(got, b"hello s3");
    // A row without the store key is routed by scheme.
    store.delete(&Location::new(&w.url)).await.unwrap();
    let err = store.delete(&loc).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound);
}

#[tokio::test]
async fn unreachable_endpoint_is_transient_and_never_leaks_credentials() {
    // Needs no server: this is about a dead endpoint.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let store = Store::new(StoreOptions {
        mode: StoreMode::Single {
            default_store: BackendType::S3,
            filesystem: None,
            s3: Some(S3Options::new(
                format!("http://127.0.0.1:{port}"),
                "AKIDCONFIGURED",
                "ConfiguredSecretValue",
                "bkt",
            )),
        },
        timeouts: Timeouts {
            operation: Duration::from_secs(5),
            stall: Duration::from_secs(5),
            connect: Duration::from_secs(1),
        },
    })
    .unwrap();
    let url = format!("s3://AKIDINURI:UriSecretValue%2Fx@127.0.0.1:{port}/bkt/img");
    let loc = Location::new(&url);
    for err in [
        store.delete(&loc).await.unwrap_err(),
        store.open_read(&loc).await.unwrap_err(),
        store
            .write("img", &b"data"[..], WriteOptions::default())
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.class(), ErrorClass::Transient, "{err}");
        let text = format!("{err} / {err:?}");
        for secret in [
            "UriSecretValue",
            "AKIDINURI",
            "ConfiguredSecretValue",
            "AKIDCONFIGURED",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
    assert!(!format!("{loc:?}").contains("UriSecretValue"));
}

/// A stand-in endpoint on 127.0.0.1 that answers every request with `status` (or never
/// answers when `status` is 0), to see how S3 failures are classified.
async fn fixed_status_endpoint(status: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if status == 0 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                let body = "<Error><Code>Simulated</Code></Error>";
                let resp = format!(
                    "HTTP/1.1 {status} Simulated\r\ncontent-length: {}\r\ncontent-type: application/xml\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

fn store_at(endpoint: &str, operation: Duration) -> Store {
    Store::new(StoreOptions {
        mode: StoreMode::Single {
            default_store: BackendType::S3,
            filesystem: None,
            s3: Some(S3Options::new(endpoint, ACCESS, SECRET, "bkt")),
        },
        timeouts: Timeouts {
            operation,
            stall: operation,
            connect: Duration::from_secs(2),
        },
    })
    .unwrap()
}

#[tokio::test]
async fn server_errors_are_transient_and_auth_errors_permanent() {
    for (status, class) in [
        (503, ErrorClass::Transient),
        (500, ErrorClass::Transient),
        (403, ErrorClass::Permanent),
        (400, ErrorClass::Permanent),
        (404, ErrorClass::NotFound),
    ] {
        let endpoint = fixed_status_endpoint(status).await;
        let store = store_at(&endpoint, Duration::from_secs(20));
        let host = endpoint.trim_start_matches("http://");
        let loc = Location::new(format!("s3://{ACCESS}:s3cr3t%2FKey@{host}/bkt/img"));
        let err = store.delete(&loc).await.unwrap_err();
        assert_eq!(err.class(), class, "HTTP {status}: {err}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        let err = store.open_read(&loc).await.unwrap_err();
        assert_eq!(err.class(), class, "HTTP {status}: {err}");
    }
}

#[tokio::test]
async fn unresponsive_server_times_out_as_transient() {
    let endpoint = fixed_status_endpoint(0).await;
    let store = store_at(&endpoint, Duration::from_millis(700));
    let host = endpoint.trim_start_matches("http://");
    let loc = Location::new(format!("s3://{host}/bkt/img"));
    let start = std::time::Instant::now();
    let err = store.delete(&loc).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert_eq!(err.kind(), &ErrorKind::Timeout, "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    let err = store
        .write("img", &b"abc"[..], WriteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
}
