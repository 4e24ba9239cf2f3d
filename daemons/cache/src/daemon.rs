//! The `run` mode: prune, clean and prefetch on their own schedules, plus a prune as soon as
//! filesystem notifications show the cache grew past its limit between ticks. Passes never
//! overlap (one pass at a time per process; Glance's lock files serialise with other
//! processes), each logs one summary line, reports it to systemd as `STATUS=` and records
//! it in the `imaged_cache_*` metrics.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use imaged_catalog::Catalog;
use imaged_runtime::ExitCode;
use imaged_runtime::control::ShutdownToken;
use imaged_runtime::metrics::{CacheMetrics, Metrics, PassOutcome};
use imaged_runtime::schedule::{FirstRun, Schedule, ScheduleHandle, Scheduler};
use imaged_runtime::systemd::Notifier;
use imaged_store::Store;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{Mutex, Notify, mpsc};

use crate::index::Index;
use crate::layout::{self, INCOMPLETE, INVALID};
use crate::{CacheError, CacheOptions, ops, prefetch};

/// How long filesystem events are gathered before the size is measured.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(500);
/// Least time between two prunes triggered by filesystem events.
pub const WATCH_MIN_GAP: Duration = Duration::from_secs(2);

/// A running cache daemon's state, shared by its loops.
#[derive(Debug)]
pub struct CacheDaemon {
    opts: RwLock<CacheOptions>,
    catalog: Option<Catalog>,
    store: Option<Store>,
    notifier: Notifier,
    metrics: Metrics,
    cache_metrics: CacheMetrics,
    pass: Mutex<()>,
    /// Woken when a reload changes a limit, so that a smaller limit applies now rather than
    /// at the next scheduled prune.
    limits_changed: Notify,
}

/// The three schedules.
#[derive(Debug, Clone)]
pub struct Schedules {
    /// Prune.
    pub prune: Schedule,
    /// Clean.
    pub clean: Schedule,
    /// Prefetch.
    pub prefetch: Schedule,
}

/// Handles to change the schedules of a running daemon (on reload).
#[derive(Debug, Clone)]
pub struct ScheduleHandles {
    /// Prune.
    pub prune: ScheduleHandle,
    /// Clean.
    pub clean: ScheduleHandle,
    /// Prefetch.
    pub prefetch: ScheduleHandle,
}

/// Which pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Prune.
    Prune,
    /// Clean.
    Clean,
    /// Prefetch.
    Prefetch,
}

impl Pass {
    /// The `pass` label of the pass metrics.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Prune => "prune",
            Pass::Clean => "clean",
            Pass::Prefetch => "prefetch",
        }
    }
}

impl CacheDaemon {
    /// A daemon over `opts`; `catalog` is needed by centralized_db and prefetch and used by
    /// clean to drop markers of inactive images; `store` is needed by prefetch.
    pub fn new(
        opts: CacheOptions,
        catalog: Option<Catalog>,
        store: Option<Store>,
        notifier: Notifier,
        metrics: Metrics,
    ) -> Arc<Self> {
        let cache_metrics = metrics.cache();
        Arc::new(CacheDaemon {
            opts: RwLock::new(opts),
            catalog,
            store,
            notifier,
            metrics,
            cache_metrics,
            pass: Mutex::new(()),
            limits_changed: Notify::new(),
        })
    }

    /// The options in effect.
    pub fn options(&self) -> CacheOptions {
        self.opts
            .read()
            .map(|o| o.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Applies reloaded options (limits, stall time, grace) to the next passes.
    pub fn set_options(&self, new: CacheOptions) {
        let limits = |o: &CacheOptions| (o.max_size, o.low_water_mark, o.min_free_disk);
        let mut o = self.opts.write().unwrap_or_else(|p| p.into_inner());
        let changed = limits(&o) != limits(&new);
        *o = new;
        drop(o);
        if changed {
            self.limits_changed.notify_one();
        }
    }

    /// Runs one pass now, waiting for any running one; logs and reports its summary.
    pub async fn run_pass(&self, pass: Pass) -> Result<String, CacheError> {
        let _one = self.pass.lock().await;
        let started = Instant::now();
        let result = self.pass_unlocked(pass).await;
        let (outcome, error) = match &result {
            Ok((_, true)) => (PassOutcome::Success, None),
            Ok((_, false)) => (PassOutcome::Partial, None),
            Err(e) => (PassOutcome::Error, Some(e.to_string())),
        };
        self.metrics
            .record_pass(pass.name(), outcome, started.elapsed(), error);
        self.refresh_size();
        let (line, _) = result?;
        tracing::info!("{line}");
        let _ = self.notifier.status(&line);
        Ok(line)
    }

    /// One pass: its summary line and whether it did all it had to.
    async fn pass_unlocked(&self, pass: Pass) -> Result<(String, bool), CacheError> {
        let opts = self.options();
        let index = Index::open(&opts, self.catalog.as_ref()).await?;
        if let Index::Unavailable(why) = &index {
            tracing::error!("cache metadata unavailable, filesystem-only pass: {why}");
        }
        let m = &self.cache_metrics;
        Ok(match pass {
            Pass::Prune => {
                let r = ops::prune(&opts, &index).await?;
                m.evicted(r.evicted, r.evicted_bytes);
                let done = r.over_by == 0 && r.below_floor_by == 0;
                (ops::prune_summary(&r), done && index.is_available())
            }
            Pass::Clean => {
                let r = ops::clean(&opts, &index, self.catalog.as_ref()).await?;
                // `bytes_removed` is the invalid/ and incomplete/ bytes together; the freed
                // counter is not split by kind.
                m.cleaned("invalid", r.invalid_removed, r.bytes_removed);
                m.cleaned("stalled", r.stalled_removed, 0);
                m.cleaned("abandoned", r.abandoned_removed, 0);
                m.cleaned("orphan", r.orphans_removed, r.orphan_bytes);
                m.cleaned("inactive", r.inactive_evicted, r.inactive_bytes);
                let done = r.failures == 0 && !r.catalog_unreachable;
                (ops::clean_summary(&r), done && index.is_available())
            }
            Pass::Prefetch => match (&self.catalog, &self.store) {
                (Some(c), Some(s)) => {
                    let r = prefetch::prefetch(&opts, &index, c, s).await?;
                    m.prefetched("cached", r.prefetched);
                    m.prefetched("failed", r.failed);
                    (prefetch::prefetch_summary(&r), r.failed == 0)
                }
                _ => (
                    "prefetch: skipped (needs [database] connection and a store)".to_owned(),
                    true,
                ),
            },
        })
    }

    /// Sets the size gauges from a scan of the base directory (a directory listing, no
    /// database); a scan error leaves the previous values.
    pub fn refresh_size(&self) {
        let opts = self.options();
        match layout::scan_base(&opts.layout) {
            Ok(scan) => self.cache_metrics.set_size(
                scan.image_bytes(),
                scan.images.len() as u64,
                opts.max_size,
            ),
            Err(e) => tracing::debug!(error = %e, "cache size not measured for metrics"),
        }
    }

    async fn scheduled(&self, pass: Pass) {
        if let Err(e) = self.run_pass(pass).await {
            tracing::error!(?pass, error = %e, "pass failed");
            let _ = self.notifier.status(&format!("{pass:?} failed: {e}"));
        }
    }

    /// Bytes the next prune compares with the limit.
    fn measured_size(&self) -> Result<(u64, u64), CacheError> {
        let opts = self.options();
        let scan = layout::scan_base(&opts.layout)?;
        let side: u64 = [INCOMPLETE, INVALID]
            .iter()
            .map(|s| {
                layout::scan_sub(&opts.layout, s).map(|v| v.iter().map(|f| f.size).sum::<u64>())
            })
            .sum::<Result<u64, CacheError>>()?;
        Ok((scan.image_bytes() + side, opts.max_size))
    }

    /// Whether the cache filesystem has less free space than `min_free_disk`.
    fn below_floor(&self) -> bool {
        let opts = self.options();
        opts.min_free_disk.is_some_and(|floor| {
            layout::disk_space(&opts.layout.dir).is_some_and(|(free, _)| free < floor)
        })
    }

    /// Runs until `shutdown`: the three schedules and the filesystem watch. Returns the
    /// schedule handles through `ready` as soon as the loops exist.
    pub async fn run(
        self: Arc<Self>,
        schedules: Schedules,
        shutdown: ShutdownToken,
        ready: Option<tokio::sync::oneshot::Sender<ScheduleHandles>>,
    ) -> ExitCode {
        let opts = self.options();
        if let Err(e) = opts.layout.ensure_dirs() {
            tracing::error!(error = %e, "cannot prepare the cache directory");
            return e.exit_code();
        }
        let prune = Scheduler::new(schedules.prune);
        // Clean removes untracked files that prune would adopt: let the first prune run
        // before the first clean.
        let clean = Scheduler::new(schedules.clean).with_first_run(FirstRun::AfterInterval);
        let fetch = Scheduler::new(schedules.prefetch);
        let handles = ScheduleHandles {
            prune: prune.handle(),
            clean: clean.handle(),
            prefetch: fetch.handle(),
        };
        if let Some(tx) = ready {
            let _ = tx.send(handles);
        }
        let mut tasks = Vec::new();
        for (sched, pass) in [
            (prune, Pass::Prune),
            (clean, Pass::Clean),
            (fetch, Pass::Prefetch),
        ] {
            let me = self.clone();
            let sd = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                sched
                    .run(sd, || {
                        let me = me.clone();
                        async move { me.scheduled(pass).await }
                    })
                    .await;
            }));
        }
        let watch = tokio::spawn(
            self.clone()
                .watch(opts.layout.dir.clone(), shutdown.clone()),
        );
        shutdown.cancelled().await;
        for t in tasks {
            let _ = t.await;
        }
        let _ = watch.await;
        ExitCode::Success
    }

    /// Prunes promptly when notifications show the cache grew past the limit, or when a
    /// reload lowered the limit.
    async fn watch(self: Arc<Self>, dir: PathBuf, shutdown: ShutdownToken) {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        // Kept so that the channel stays open without a watcher: reloads still wake the loop.
        let _keep = tx.clone();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev
                && (ev.kind.is_create() || ev.kind.is_modify())
            {
                let _ = tx.send(());
            }
        });
        let _watcher = match watcher {
            Ok(mut w) => {
                for d in [dir.clone(), dir.join(INCOMPLETE), dir.join(INVALID)] {
                    if let Err(e) = w.watch(&d, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %d.display(), error = %e, "cannot watch; growth is pruned on schedule only");
                    }
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "filesystem notifications unavailable; growth is pruned on schedule only");
                None
            }
        };
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            let reloaded = tokio::select! {
                () = shutdown.cancelled() => return,
                got = rx.recv() => if got.is_none() { return } else { false },
                () = self.limits_changed.notified() => true,
            };
            tokio::time::sleep(WATCH_DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            if let Some(at) = last
                && at.elapsed() < WATCH_MIN_GAP
            {
                tokio::time::sleep(WATCH_MIN_GAP - at.elapsed()).await;
                while rx.try_recv().is_ok() {}
            }
            if shutdown.is_cancelled() {
                return;
            }
            // The free-disk floor is checked after a reload only: growth events while the
            // floor cannot be met would otherwise prune every few seconds for nothing.
            if reloaded && self.below_floor() {
                tracing::info!("free disk below the reloaded min_free_disk; pruning now");
                last = Some(tokio::time::Instant::now());
                self.scheduled(Pass::Prune).await;
                continue;
            }
            match self.measured_size() {
                Ok((size, max)) if size > max => {
                    if reloaded {
                        tracing::info!(size, max, "cache is past its reloaded limit; pruning now");
                    } else {
                        tracing::info!(size, max, "cache grew past its limit; pruning now");
                    }
                    last = Some(tokio::time::Instant::now());
                    self.scheduled(Pass::Prune).await;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot measure the cache"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite_index::{NewRow, SqliteIndex};

    #[tokio::test(flavor = "multi_thread")]
    async fn scheduled_prune_follows_reloaded_limits_and_stops_on_shutdown() {
        let d = tempfile::tempdir().unwrap();
        let mut opts = CacheOptions::new(d.path());
        opts.max_size = 10_000;
        opts.low_water_mark = 10_000;
        opts.layout.ensure_dirs().unwrap();
        let idx = SqliteIndex::open(&opts.layout.db_path, true).unwrap();
        let ids: Vec<String> = (0..5)
            .map(|i| format!("00000000-0000-4000-8000-00000000000{i}"))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            std::fs::write(opts.layout.image(id), [0u8; 1000]).unwrap();
            idx.insert(&[NewRow {
                image_id: id.clone(),
                last_accessed: 100.0 + i as f64,
                last_modified: 1.0,
                size: 1000,
            }])
            .unwrap();
        }
        let sock_path = d.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let daemon = CacheDaemon::new(
            opts.clone(),
            None,
            None,
            Notifier::with_socket(&sock_path),
            Metrics::new("imaged-cache"),
        );
        let shutdown = ShutdownToken::new();
        let every = Schedule::every(Duration::from_millis(300));
        let task = tokio::spawn(daemon.clone().run(
            Schedules {
                prune: every.clone(),
                clean: every.clone(),
                prefetch: every,
            },
            shutdown.clone(),
            None,
        ));
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            ids.iter().all(|id| opts.layout.image(id).exists()),
            "within the limit"
        );
        let mut smaller = opts.clone();
        smaller.max_size = 2000;
        smaller.low_water_mark = 2000;
        daemon.set_options(smaller);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while ids
            .iter()
            .filter(|id| opts.layout.image(id).exists())
            .count()
            > 2
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left: Vec<bool> = ids
            .iter()
            .map(|id| opts.layout.image(id).exists())
            .collect();
        assert_eq!(left, [false, false, false, true, true]);
        // Every pass reported its summary line to systemd. The daemon keeps
        // sending while it runs, so read for a bounded time and add up what
        // the prune lines say was evicted (a pass racing the option change
        // may split the eviction across two passes).
        let mut statuses = Vec::new();
        let mut evicted = 0u64;
        let mut buf = [0u8; 4096];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while evicted < 3 && std::time::Instant::now() < deadline {
            let Ok(n) = sock.recv(&mut buf) else { break };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if let Some(rest) = msg.strip_prefix("STATUS=prune: evicted ") {
                evicted += rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            statuses.push(msg);
        }
        assert_eq!(evicted, 3, "{statuses:?}");
        shutdown.cancel();
        let code = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(code, ExitCode::Success);
        // Without a catalog there is nothing to prefetch from. Run after the
        // daemon stopped: its own prefetch pass would hold the prefetch lock.
        let line = daemon.run_pass(Pass::Prefetch).await.unwrap();
        assert!(line.contains("skipped"), "{line}");
    }
}
