//! The read-only http(s) backend against a real HTTP server on 127.0.0.1 (a minimal HTTP/1.1
//! responder on a tokio listener), covering success, status classes, stalls, refused
//! connections and redaction.

use std::time::Duration;

use imaged_store::{
    BackendType, ErrorClass, ErrorKind, FilesystemOptions, Location, Store, StoreMode,
    StoreOptions, Timeouts,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BODY_LEN: usize = 300_000;

fn body() -> Vec<u8> {
    (0..BODY_LEN).map(|i| (i % 253) as u8).collect()
}

/// Serves: /ok (the body), /missing (404), /boom (503), /forbidden (403), /stall (headers then
/// silence), /hang (no response at all).
async fn server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let path = path.split('?').next().unwrap_or("/").to_string();
                let simple = |code: &str| {
                    format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                };
                match path.as_str() {
                    "/ok" => {
                        let b = body();
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            b.len()
                        );
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(&b).await;
                    }
                    "/missing" => {
                        let _ = sock.write_all(simple("404 Not Found").as_bytes()).await;
                    }
                    "/boom" => {
                        let _ = sock
                            .write_all(simple("503 Service Unavailable").as_bytes())
                            .await;
                    }
                    "/forbidden" => {
                        let _ = sock.write_all(simple("403 Forbidden").as_bytes()).await;
                    }
                    "/stall" => {
                        let _ = sock
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nconnection: close\r\n\r\nabc",
                            )
                            .await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    _ => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                }
            });
        }
    });
    format!("127.0.0.1:{}", addr.port())
}

fn store(tmp: &std::path::Path) -> Store {
    Store::new(StoreOptions {
        mode: StoreMode::Single {
            default_store: BackendType::File,
            filesystem: Some(FilesystemOptions::with_datadir(tmp)),
            s3: None,
        },
        timeouts: Timeouts {
            operation: Duration::from_millis(800),
            stall: Duration::from_millis(500),
            connect: Duration::from_secs(2),
        },
    })
    .unwrap()
}

#[tokio::test]
async fn reads_stream_the_body_with_its_size() {
    let host = server().await;
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let r = s
        .open_read(&Location::new(format!("http://{host}/ok")))
        .await
        .unwrap();
    assert_eq!(r.size(), Some(BODY_LEN as u64));
    assert_eq!(r.collect_all().await.unwrap(), body());
}

#[tokio::test]
async fn statuses_map_to_classes() {
    let host = server().await;
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    for (path, class) in [
        ("missing", ErrorClass::NotFound),
        ("boom", ErrorClass::Transient),
        ("forbidden", ErrorClass::Permanent),
    ] {
        let err = s
            .open_read(&Location::new(format!("http://{host}/{path}")))
            .await
            .unwrap_err();
        assert_eq!(err.class(), class, "{path}: {err}");
    }
}

#[tokio::test]
async fn stalls_and_hangs_time_out_as_transient() {
    let host = server().await;
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let err = s
        .open_read(&Location::new(format!("http://{host}/hang")))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert_eq!(err.kind(), &ErrorKind::Timeout);

    let r = s
        .open_read(&Location::new(format!("http://{host}/stall")))
        .await
        .unwrap();
    let err = r.collect_all().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
}

#[tokio::test]
async fn refused_connection_is_transient_and_redacted() {
    // Bind then drop to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let url = format!("http://someuser:S3cr3tPassw0rd@127.0.0.1:{port}/img?token=T0kenValue");
    let err = s.open_read(&Location::new(&url)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("S3cr3tPassw0rd"), "{text}");
    assert!(!text.contains("T0kenValue"), "{text}");
}

#[tokio::test]
async fn delete_is_permanently_unsupported() {
    let host = server().await;
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let err = s
        .delete(&Location::new(format!("https://{host}/ok")))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(err.kind(), &ErrorKind::OperationNotSupported);
}
