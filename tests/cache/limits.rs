//! Limits other than `image_cache_max_size`: the `min_free_disk` floor, and limits changed
//! on a running daemon through SIGHUP.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{BIN, Cache, u};

fn free_bytes(dir: &std::path::Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(dir).unwrap();
    s.blocks_available() * s.fragment_size()
}

/// A floor above the free space no pass can reach: prune evicts every image it may evict,
/// keeps the one a reader has open, and exits 1 saying how far below the floor it still is.
#[test]
fn prune_evicts_all_it_can_below_min_free_disk_and_reports_the_shortfall() {
    let c = Cache::new(1 << 30);
    let ids = c.glance_cache_many(3, 1000);
    let floor = free_bytes(&c.dir) + (1 << 50);
    let c = c.with_extra(&format!("[imaged_cache]\nmin_free_disk = {floor}\n"));
    let reader = File::open(c.path(&ids[2])).unwrap();
    let (code, r, stderr) = c.json(&["prune"]);
    assert_eq!(code, 1, "{r} {stderr}");
    assert_eq!(u(&r, "evicted"), 2, "{r}");
    assert_eq!(u(&r, "busy_bytes"), 1000, "{r}");
    assert_eq!(u(&r, "over_by"), 0, "within image_cache_max_size: {r}");
    assert_eq!(u(&r, "min_free_disk"), floor);
    assert!(u(&r, "below_floor_by") > 0, "{r}");
    assert!(stderr.contains("below min_free_disk"), "{stderr}");
    assert!(!c.exists(&ids[0]) && !c.exists(&ids[1]) && c.exists(&ids[2]));
    assert_eq!(c.row_ids(), vec![ids[2].clone()]);
    drop(reader);
}

/// A floor of 0 is always met: nothing is evicted from a cache within its limit.
#[test]
fn min_free_disk_zero_evicts_nothing() {
    let c = Cache::new(1 << 30).with_extra("[imaged_cache]\nmin_free_disk = 0\n");
    let ids = c.glance_cache_many(3, 1000);
    let (code, r, _) = c.json(&["prune"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "evicted"), 0);
    assert_eq!(u(&r, "below_floor_by"), 0);
    assert!(ids.iter().all(|i| c.exists(i)));
}

/// `imaged-cache run` on a configuration reached through a symbolic link whose target lives
/// in another directory, so that the configuration watch does not see edits of the target:
/// only SIGHUP reloads it.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    notify: UnixDatagram,
    target: std::path::PathBuf,
}

impl Daemon {
    fn start(c: &Cache) -> Daemon {
        let root = c.dir.parent().unwrap();
        let (real, link) = (root.join("real"), root.join("link"));
        fs::create_dir_all(&real).unwrap();
        fs::create_dir_all(&link).unwrap();
        let target = real.join("cache.conf");
        fs::copy(&c.conf, &target).unwrap();
        std::os::unix::fs::symlink(&target, link.join("cache.conf")).unwrap();
        let sock = root.join("notify.sock");
        let notify = UnixDatagram::bind(&sock).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut child = Command::new(BIN)
            .arg("--config-file")
            .arg(link.join("cache.conf"))
            .arg("run")
            .env("NOTIFY_SOCKET", &sock)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let d = Daemon {
            child,
            lines,
            notify,
            target,
        };
        d.wait_notify("READY=1");
        d
    }

    fn wait_notify(&self, what: &str) {
        let mut buf = [0u8; 4096];
        loop {
            let n = self
                .notify
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {what} from the daemon: {e}"));
            if String::from_utf8_lossy(&buf[..n]).contains(what) {
                return;
            }
        }
    }

    fn wait_log(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = String::new();
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                if line.contains(what) {
                    return line;
                }
                seen.push_str(&line);
                seen.push('\n');
            }
        }
        panic!("no log line with {what:?}; saw:\n{seen}");
    }

    fn rewrite(&self, from: &str, to: &str) {
        let text = fs::read_to_string(&self.target).unwrap();
        assert!(text.contains(from));
        fs::write(&self.target, text.replace(from, to)).unwrap();
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    fn stop(mut self) {
        self.signal(Signal::SIGTERM);
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), Some(0));
    }
}

fn wait_until_left(c: &Cache, ids: &[String], n: usize) -> Vec<bool> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while ids.iter().filter(|i| c.exists(i)).count() > n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    ids.iter().map(|i| c.exists(i)).collect()
}

const QUIET_SCHEDULES: &str =
    "[imaged_cache]\nprune_schedule = 3600\nclean_schedule = 3600\nprefetch_schedule = 3600\n";

#[test]
fn sighup_applies_a_smaller_limit_without_a_restart() {
    let c = Cache::new(10_000).with_extra(QUIET_SCHEDULES);
    let ids = c.glance_cache_many(8, 1000);
    let d = Daemon::start(&c);
    let pid = d.child.id();
    d.rewrite(
        "image_cache_max_size = 10000",
        "image_cache_max_size = 3000",
    );
    d.signal(Signal::SIGHUP);
    d.wait_log("configuration reloaded");
    let left = wait_until_left(&c, &ids, 3);
    assert_eq!(
        left,
        [false, false, false, false, false, true, true, true],
        "pruned to the new limit, oldest first"
    );
    assert_eq!(d.child.id(), pid);
    d.stop();
}

#[test]
fn a_bad_configuration_on_sighup_keeps_the_old_one_and_the_daemon_running() {
    let c = Cache::new(5000).with_extra(QUIET_SCHEDULES);
    let mut d = Daemon::start(&c);
    d.rewrite("image_cache_max_size = 5000", "image_cache_max_size = lots");
    d.signal(Signal::SIGHUP);
    d.wait_log("configuration reload rejected");
    assert!(d.child.try_wait().unwrap().is_none(), "still running");
    // The old limit still holds: growth past 5000 bytes is pruned back to it.
    let ids = c.glance_cache_many(8, 1000);
    let left = wait_until_left(&c, &ids, 5);
    assert_eq!(left, [false, false, false, true, true, true, true, true]);
    d.stop();
}
