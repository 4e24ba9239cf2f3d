//! Crash safety of filesystem writes: a writer process killed with SIGKILL mid-write leaves no
//! file under the image's final name.
//!
//! The test re-runs its own test binary as the writer (selected by an environment variable),
//! waits until the writer has put data on disk, kills it and inspects the directory.

use std::path::Path;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use imaged_store::{BackendType, FilesystemOptions, Store, StoreMode, StoreOptions, Timeouts};
use tokio::io::{AsyncRead, ReadBuf};

const CHILD_DIR_ENV: &str = "IMAGED_STORE_CRASH_CHILD_DIR";
const IMAGE_ID: &str = "crash-image";

/// An endless source that yields 64 KiB every few milliseconds.
struct Slow {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Slow {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(5))));
        match sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.sleep = None;
                let n = buf.remaining().min(64 * 1024);
                buf.put_slice(&vec![0xAB; n]);
                Poll::Ready(Ok(()))
            }
        }
    }
}

fn store_for(dir: &Path) -> Store {
    let mut fs = FilesystemOptions::with_datadir(dir);
    fs.chunk_size = 64 * 1024;
    Store::new(StoreOptions {
        mode: StoreMode::Single {
            default_store: BackendType::File,
            filesystem: Some(fs),
            s3: None,
        },
        timeouts: Timeouts::default(),
    })
    .unwrap()
}

/// The writer half: does nothing unless started by `killed_writer_leaves_no_final_file`.
#[tokio::test]
async fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let store = store_for(Path::new(&dir));
    let r = store
        .write(IMAGE_ID, Slow { sleep: None }, Default::default())
        .await;
    panic!("the endless write returned: {r:?}");
}

fn temp_files(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            Some((name, e.metadata().ok()?.len()))
        })
        .collect()
}

#[tokio::test]
async fn killed_writer_leaves_no_final_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Wait until the writer has streamed at least 1 MiB into its temporary file.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let files = temp_files(dir);
        if files.iter().any(|(_, len)| *len >= 1024 * 1024) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writer made no progress: {files:?}"
        );
        assert!(child.try_wait().unwrap().is_none(), "writer exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());

    let files = temp_files(dir);
    assert!(
        !dir.join(IMAGE_ID).exists(),
        "a partial image appeared under its final name: {files:?}"
    );
    assert_eq!(files.len(), 1, "{files:?}");
    let (name, len) = &files[0];
    assert!(
        name.starts_with(&format!(".{IMAGE_ID}.imaged-tmp-")),
        "{name}"
    );
    assert!(*len >= 1024 * 1024);

    // The leftover is hidden and swept by the stale-temp cleanup.
    let store = store_for(dir);
    assert_eq!(
        store.remove_stale_temp_files(Duration::ZERO).await.unwrap(),
        1
    );
    assert!(temp_files(dir).is_empty());
}
