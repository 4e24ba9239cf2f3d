//! The command line of `imaged-cache` (verbs, one-shot passes and the `run` daemon wiring),
//! kept in the library so that tools can build man pages from [`Cli`].

use crate::daemon::{CacheDaemon, Schedules};
use crate::{CacheError, CacheOptions, Driver, Index, ops, prefetch};
use clap::{Parser, Subcommand, ValueEnum};
use imaged_catalog::Catalog;
use imaged_config::Daemon;
use imaged_runtime::app::{self, ConfigArgs, ConfigCommand};
use imaged_runtime::harness::DaemonHarness;
use imaged_runtime::metrics::Metrics;
use imaged_runtime::reload::Reloader;
use imaged_runtime::server::Probes;
use imaged_runtime::systemd::Notifier;
use imaged_runtime::{ExitCode, logging};

const PROGRAM: &str = "imaged-cache";

/// imaged-cache: prunes, cleans and prefetches a Glance API node's image cache.
#[derive(Debug, Parser)]
#[command(name = PROGRAM, version, about = "Prunes, cleans and prefetches a Glance API node's image cache")]
pub struct Cli {
    /// Configuration files and directories.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The verb.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Output format of the listing and pass verbs.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned text.
    Table,
    /// JSON.
    Json,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run as a daemon: prune, clean and prefetch on their schedules, and prune as soon as
    /// the cache grows past image_cache_max_size.
    Run,
    /// Evict least-recently-used images until the cache is within its limit, then exit.
    Prune {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Remove invalid, stalled and untracked files and stale rows and queue markers, then exit.
    Clean {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Cache every queued image from its store, then exit.
    Prefetch {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// List cached, queued, incomplete and invalid images.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show cache sizes and counts.
    Stats {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Queue an image for prefetching.
    Queue {
        /// The image id.
        image_id: String,
    },
    /// Remove one cached image (file, row and queue marker), or every cached image with --all.
    Evict {
        /// The image id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        image_id: Option<String>,
        /// Evict every cached image of this node.
        #[arg(long)]
        all: bool,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        cmd: ConfigCommand,
    },
}

fn print<T: serde::Serialize>(format: Format, value: &T, table: impl FnOnce(&T) -> String) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Format::Table => print!("{}", table(value)),
    }
}

async fn open_catalog(
    config: &imaged_config::Config,
    required: bool,
) -> Result<Option<Catalog>, CacheError> {
    if config.database().connection.is_none() {
        return Ok(None);
    }
    let opts = app::catalog_options(config).map_err(|e| CacheError::Config(e.to_string()))?;
    let res = async {
        let c = Catalog::connect(opts, false).await?;
        c.verify_schema().await?;
        Ok::<_, imaged_catalog::CatalogError>(c)
    }
    .await;
    match res {
        Ok(c) => Ok(Some(c)),
        Err(e) if required => Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "catalog unavailable; image status checks are skipped");
            Ok(None)
        }
    }
}

async fn one_shot(
    cmd: Cmd,
    config: &imaged_config::Config,
    opts: CacheOptions,
) -> Result<ExitCode, CacheError> {
    let needs_catalog = opts.driver == Driver::CentralizedDb || matches!(cmd, Cmd::Prefetch { .. });
    let catalog = open_catalog(config, needs_catalog).await?;
    let index = Index::open(&opts, catalog.as_ref()).await?;
    if let Index::Unavailable(why) = &index {
        tracing::error!("cache metadata unavailable, filesystem-only mode: {why}");
    }
    let degraded = if index.is_available() {
        ExitCode::Success
    } else {
        ExitCode::WorkFailed
    };
    Ok(match cmd {
        Cmd::Prune { format } => {
            let r = ops::prune(&opts, &index).await?;
            tracing::info!("{}", ops::prune_summary(&r));
            print(format, &r, |r| format!("{}\n", ops::prune_summary(r)));
            if r.over_by > 0 || r.below_floor_by > 0 {
                ExitCode::WorkFailed
            } else {
                degraded
            }
        }
        Cmd::Clean { format } => {
            let r = ops::clean(&opts, &index, catalog.as_ref()).await?;
            tracing::info!("{}", ops::clean_summary(&r));
            print(format, &r, |r| format!("{}\n", ops::clean_summary(r)));
            if r.failures > 0 {
                ExitCode::WorkFailed
            } else {
                degraded
            }
        }
        Cmd::Prefetch { format } => {
            let catalog = catalog
                .ok_or_else(|| CacheError::Config("prefetch needs [database] connection".into()))?;
            let store = imaged_store::Store::new(
                app::store_options(config).map_err(|e| CacheError::Config(e.to_string()))?,
            )?;
            let r = prefetch::prefetch(&opts, &index, &catalog, &store).await?;
            tracing::info!("{}", prefetch::prefetch_summary(&r));
            print(format, &r, |r| {
                format!("{}\n", prefetch::prefetch_summary(r))
            });
            if r.failed > 0 {
                ExitCode::WorkFailed
            } else {
                ExitCode::Success
            }
        }
        Cmd::List { format } => {
            let l = ops::list(&opts, &index).await?;
            print(format, &l, ops::listing_table);
            degraded
        }
        Cmd::Stats { format } => {
            let s = ops::stats(&opts, &index).await?;
            print(format, &s, ops::stats_table);
            degraded
        }
        Cmd::Queue { image_id } => {
            let q = ops::queue(&opts, catalog.as_ref(), &image_id).await?;
            println!("{image_id}: {q:?}");
            ExitCode::Success
        }
        Cmd::Evict { image_id, .. } => {
            let e = ops::evict(&opts, &index, image_id.as_deref()).await?;
            println!(
                "evicted {} files / {} bytes, {} rows, {} queue markers",
                e.files, e.bytes, e.rows, e.queue_markers
            );
            ExitCode::Success
        }
        Cmd::Run | Cmd::Config { .. } => ExitCode::Internal,
    })
}

async fn daemon(args: ConfigArgs, loaded: imaged_config::Loaded, opts: CacheOptions) -> ExitCode {
    let config = loaded.config.clone();
    let catalog = match open_catalog(&config, opts.driver == Driver::CentralizedDb).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the catalog");
            return e.exit_code();
        }
    };
    let store = catalog
        .as_ref()
        .and_then(|_| app::store_options(&config).ok())
        .and_then(|o| imaged_store::Store::new(o).ok());
    let metrics = Metrics::new(PROGRAM);
    // Without the central catalog the database is not part of the health verdict: the
    // node-local cache.db is checked by every pass instead.
    let probes = match &catalog {
        Some(c) if opts.driver == Driver::CentralizedDb => Probes::catalog(c.clone()),
        _ => Probes::default(),
    };
    let d = CacheDaemon::new(opts, catalog, store, Notifier::from_env(), metrics.clone());
    let probes = probes.with_refresh({
        let d = d.clone();
        move || {
            let d = d.clone();
            async move {
                let _ = tokio::task::spawn_blocking(move || d.refresh_size()).await;
            }
        }
    });
    let harness = match DaemonHarness::start(&loaded, metrics, probes).await {
        Ok(h) => h,
        Err(e) => return e.exit_code(),
    };
    let c = config.cache();
    let schedules = Schedules {
        prune: app::schedule(&c.prune_schedule),
        clean: app::schedule(&c.clean_schedule),
        prefetch: app::schedule(&c.prefetch_schedule),
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let work = tokio::spawn(
        d.clone()
            .run(schedules, harness.shutdown.clone(), Some(ready_tx)),
    );
    let Ok(handles) = ready_rx.await else {
        return ExitCode::Internal;
    };
    let drain = config.process().shutdown_timeout;
    let mut reloader = Reloader::new(
        config,
        harness.notifier.clone(),
        move |old: &imaged_config::Config| {
            let new = app::load(Daemon::Cache, &args)
                .map_err(|e| e.errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
            let plan = imaged_config::diff(old, &new.config);
            for change in &plan.applied {
                tracing::info!("configuration change applied: {change}");
            }
            for change in &plan.needs_restart {
                tracing::warn!("configuration change needs a restart, old value kept: {change}");
            }
            let effective = plan.effective(old, &new.config);
            let opts = CacheOptions::from_config(&effective).map_err(|e| vec![e.to_string()])?;
            let c = effective.cache();
            handles.prune.set(app::schedule(&c.prune_schedule));
            handles.clean.set(app::schedule(&c.clean_schedule));
            handles.prefetch.set(app::schedule(&c.prefetch_schedule));
            d.set_options(opts);
            Ok(effective)
        },
    );
    harness
        .supervise(work, &mut reloader, drain, "cache maintenance running")
        .await
}

/// Runs the verb `cli` names and returns its exit code.
pub async fn main_with(cli: Cli) -> ExitCode {
    if let Cmd::Config { cmd } = cli.cmd {
        return app::config_command(PROGRAM, Daemon::Cache, &cli.config, cmd);
    }
    let loaded = match app::load(Daemon::Cache, &cli.config) {
        Ok(l) => l,
        Err(errors) => {
            app::print_errors(PROGRAM, &errors);
            return ExitCode::Usage;
        }
    };
    let _log = logging::init(&app::logging_options(&loaded.config), PROGRAM);
    app::log_diagnostics(&loaded);
    let opts = match CacheOptions::from_config(&loaded.config) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            return e.exit_code();
        }
    };
    match cli.cmd {
        Cmd::Run => daemon(cli.config, loaded, opts).await,
        cmd => match one_shot(cmd, &loaded.config, opts).await {
            Ok(code) => code,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("{PROGRAM}: {e}");
                e.exit_code()
            }
        },
    }
}
