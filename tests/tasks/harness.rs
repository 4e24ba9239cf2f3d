//! Test harness: a catalog on each engine, a generated configuration, a
//! small HTTP server on loopback with slow, redirecting and truncated
//! routes, and functions that run the real `imaged-tasks` binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imaged_catalog::testing::TestDb;
use imaged_catalog::{Catalog, Engine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BIN: &str = env!("CARGO_BIN_EXE_imaged-tasks");

/// What the server serves and what it saw.
#[derive(Default)]
pub struct ServerState {
    pub files: Mutex<HashMap<String, Vec<u8>>>,
    pub hits: Mutex<HashMap<String, usize>>,
    pub active: AtomicUsize,
    pub max_active: AtomicUsize,
    pub user_agents: Mutex<Vec<String>>,
}

pub struct Server {
    pub port: u16,
    pub state: Arc<ServerState>,
}

impl Server {
    pub async fn start() -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ServerState::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, st).await;
                });
            }
        });
        Server { port, state }
    }

    pub fn put(&self, name: &str, data: Vec<u8>) {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(name.to_string(), data);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    pub fn hits(&self, name: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

/// Routes: `/data/<name>` (with Content-Length), `/nolen/<name>` (no
/// length, close-delimited), `/slow/<ms>/<name>` (64 KiB every `ms`; no
/// longer counted active once its last chunk is due), `/short/<name>`
/// (announces more than it sends), `/redirect/<target path-and-query,
/// percent-free>` (302 to `Location: <rest>` verbatim), `/status/<code>`.
async fn serve(mut sock: tokio::net::TcpStream, st: Arc<ServerState>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    if let Some(ua) = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("user-agent:"))
    {
        st.user_agents
            .lock()
            .unwrap()
            .push(ua[11..].trim().to_string());
    }
    let cur = st.active.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_active.fetch_max(cur, Ordering::SeqCst);
    let mut active = true;
    let res = respond(&mut sock, &st, &path, &mut active).await;
    if active {
        st.active.fetch_sub(1, Ordering::SeqCst);
    }
    res
}

async fn respond(
    sock: &mut tokio::net::TcpStream,
    st: &ServerState,
    path: &str,
    active: &mut bool,
) -> std::io::Result<()> {
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(3, '/').collect();
    let get = |name: &str| {
        *st.hits.lock().unwrap().entry(name.to_string()).or_default() += 1;
        st.files.lock().unwrap().get(name).cloned()
    };
    match parts.as_slice() {
        ["redirect", rest @ ..] => {
            let target = rest.join("/");
            let target = target
                .replacen("http:/", "http://", 1)
                .replace(":///", "://");
            let r = format!(
                "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            sock.write_all(r.as_bytes()).await
        }
        ["status", code] => {
            let r =
                format!("HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            sock.write_all(r.as_bytes()).await
        }
        ["data", name] | ["nolen", name] | ["short", name] => {
            let Some(data) = get(name) else {
                return sock
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
            };
            let head = match parts[0] {
                "data" => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    data.len()
                ),
                "short" => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    data.len() + 1000
                ),
                _ => "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string(),
            };
            sock.write_all(head.as_bytes()).await?;
            for c in data.chunks(1 << 20) {
                sock.write_all(c).await?;
            }
            sock.shutdown().await
        }
        ["slow", ms, name] => {
            let Some(data) = get(name) else {
                return sock
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
            };
            let ms: u64 = ms.parse().unwrap_or(100);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                data.len()
            );
            sock.write_all(head.as_bytes()).await?;
            let chunks: Vec<&[u8]> = data.chunks(64 << 10).collect();
            for (i, c) in chunks.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                if i + 1 == chunks.len() {
                    // The download stops counting as active before its last
                    // bytes leave: a client cannot start its next request
                    // before that, so a serial executor never reads as two.
                    st.active.fetch_sub(1, Ordering::SeqCst);
                    *active = false;
                }
                sock.write_all(c).await?;
            }
            sock.shutdown().await
        }
        _ => {
            sock.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await
        }
    }
}

/// A catalog plus the directories and configuration of one executor setup.
pub struct Env {
    pub db: TestDb,
    pub _dir: tempfile::TempDir,
    pub config: PathBuf,
    pub images: PathBuf,
    pub work: PathBuf,
    pub port: u16,
}

/// The engines to run on: SQLite always, the servers when reachable.
pub fn engines() -> Vec<Engine> {
    vec![Engine::Sqlite, Engine::Postgres, Engine::MySql]
}

impl Env {
    /// `extra` is appended to the generated configuration (later values of
    /// the same option win).
    pub async fn new(engine: Engine, port: u16, extra: &str) -> Option<Env> {
        let db = TestDb::new(engine).await?;
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let config = dir.path().join("imaged-tasks.conf");
        let env = Env {
            db,
            _dir: dir,
            config,
            images,
            work,
            port,
        };
        env.write_config(extra);
        Some(env)
    }

    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "[DEFAULT]\nuse_stderr = true\ndebug = false\n{extra_default}\n\
             [database]\nconnection = {conn}\n\
             [glance_store]\nstores = file\ndefault_store = file\nfilesystem_store_datadir = {images}\n\
             [task]\nwork_dir = {work}\n\
             [taskflow_executor]\nengine_mode = serial\n\
             [import_filtering_opts]\nallowed_hosts = [127.0.0.1]\nallowed_ports = [{port}]\n\
             [imaged]\nshutdown_timeout = 4\n\
             [imaged_tasks]\nlease_seconds = 2\nheartbeat_interval = 1\npoll_interval = 1\n{extra}\n",
            extra_default = "",
            conn = self.db.options.connection,
            images = self.images.display(),
            work = self.work.display(),
            port = self.port,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config-file").arg(&self.config).args(args);
        c.env_remove("NOTIFY_SOCKET");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run imaged-tasks")
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn imaged-tasks")
    }

    pub fn catalog(&self) -> &Catalog {
        &self.db.catalog
    }

    /// Enqueues through the binary, returning the task id.
    pub fn enqueue(&self, url: &str, props: serde_json::Value) -> String {
        let input = serde_json::json!({"import_from": url, "import_from_format": "raw", "image_properties": props});
        let out = self.run(&[
            "enqueue",
            "--type",
            "import",
            "--owner",
            "proj1",
            "--input",
            &input.to_string(),
        ]);
        assert!(
            out.status.success(),
            "enqueue failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Enqueues straight into the catalog (as the API would, skipping the
    /// CLI's own validation).
    pub async fn enqueue_raw(&self, input: serde_json::Value) -> String {
        let t = imaged_catalog::tasks::NewTask::new("import", "proj1", input);
        self.catalog().enqueue_task(&t).await.unwrap()
    }

    pub fn once(&self) -> Output {
        let out = self.run(&["once"]);
        if !out.status.success() && out.status.code() != Some(1) {
            panic!(
                "once exited {:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    pub async fn task(&self, id: &str) -> imaged_catalog::tasks::Task {
        self.catalog()
            .get_task(id)
            .await
            .unwrap()
            .expect("task exists")
    }

    /// Files in a directory (names).
    pub fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Waits until `cond` holds, polling.
    pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !cond().await {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

pub fn sha512_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha512::digest(data))
}

/// Deterministic pseudo-random bytes (not all zero, not a known format).
pub fn payload(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `qemu-img create` into `dir`, returning the file's bytes.
pub fn qemu_create(dir: &Path, name: &str, fmt: &str, opts: &[&str], size: &str) -> Vec<u8> {
    let path = dir.join(name);
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", fmt]);
    for o in opts {
        c.arg("-o").arg(o);
    }
    let st = c.arg(&path).arg(size).output().unwrap();
    assert!(
        st.status.success(),
        "qemu-img create: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::read(&path).unwrap()
}

/// Runs `qemu-io` commands (such as `write -P 0xa5 0 1M`) on an image.
pub fn qemu_io(path: &Path, fmt: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c.arg(path).output().expect("run qemu-io");
    // qemu-io reports a failed command on stderr but may still exit 0.
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "qemu-io {cmds:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `data` as a gzip stream.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// A server holding `len` bytes of [`payload`] seeded `seed` as `name`,
/// and those bytes.
pub async fn serve_payload(name: &str, len: usize, seed: u64) -> (Server, Vec<u8>) {
    let server = Server::start().await;
    let data = payload(len, seed);
    server.put(name, data.clone());
    (server, data)
}

/// The `import_req` of an `api_image_import` web-download of `url`.
pub fn web(url: &str) -> serde_json::Value {
    serde_json::json!({"method": {"name": "web-download", "uri": url}})
}

/// The executor exited with `code`, its stderr shown when it did not.
pub fn assert_exit(out: &Output, code: i32, engine: Engine) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{engine}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGTERM is a clean shutdown: the executor must exit 0.
pub fn stop(child: &mut Child) {
    signal(child, nix::sys::signal::Signal::SIGTERM);
    assert!(child.wait().unwrap().success());
}

/// Kills the executor as a crash would, leaving whatever it held.
pub fn sigkill(child: &mut Child) {
    signal(child, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}
