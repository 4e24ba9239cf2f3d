//! The verbs of the `imaged-scrubber` binary — `once`, `run`, `restore`,
//! `status` and `config show|check` — plus glance-scrubber's spelling
//! (`--daemon`, `--nodaemon`, `--restore IMAGE_ID`, no verb), each returning
//! an exit code of the shared contract.

use clap::{Parser, Subcommand, ValueEnum};
use imaged_config::Daemon;
use imaged_runtime::ExitCode;
use imaged_runtime::app::{self, ConfigArgs, ConfigCommand};
use imaged_runtime::control::{self, Control, ShutdownToken};
use imaged_runtime::logging;

use crate::{PassSettings, Scrubber, SetupError, daemon, lock, ops};

const PROG: &str = "imaged-scrubber";

/// Finishes Glance's delayed deletes: deletes the data of pending_delete
/// image locations and marks them deleted in the catalog.
///
/// Without a subcommand one pass runs (as glance-scrubber does).
#[derive(Debug, Parser)]
#[command(name = PROG, version)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// glance-scrubber spelling of `run`.
    #[arg(short = 'D', long = "daemon", conflicts_with = "nodaemon")]
    pub daemon: bool,
    /// glance-scrubber spelling: one pass even if `daemon = true` is set in a file.
    #[arg(long = "nodaemon")]
    pub nodaemon: bool,
    /// glance-scrubber spelling of `restore IMAGE_ID`.
    #[arg(long = "restore", value_name = "IMAGE_ID", conflicts_with = "daemon")]
    pub restore: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One pass over the work that is due, then exit (0 = all due data
    /// scrubbed, 1 = some failed, 2 = configuration, 3 = database or store
    /// unreachable, 4 = another scrubber holds the SQLite catalog).
    Once,
    /// Run as a daemon: a pass every wakeup_time seconds (or on
    /// [imaged_scrubber] schedule), reloading on SIGHUP.
    Run,
    /// Undo a pending delete: the image, its locations, properties, tags
    /// and members come back, if none of its data was scrubbed yet.
    Restore {
        /// The image to restore.
        image_id: String,
    },
    /// Show what is queued, due and failing.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Failing images to list at most.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

/// Output format of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    Table,
    /// One JSON object.
    Json,
}

/// Runs the parsed command line.
pub async fn main_with(cli: Cli) -> ExitCode {
    if let Some(Command::Config { command }) = cli.command {
        return app::config_command(PROG, Daemon::Scrubber, &cli.config, command);
    }
    if cli.restore.is_some() && cli.command.is_some() {
        eprintln!("{PROG}: --restore cannot be combined with a subcommand");
        return ExitCode::Usage;
    }
    let loaded = match app::load(Daemon::Scrubber, &cli.config) {
        Ok(l) => l,
        Err(errors) => {
            app::print_errors(PROG, &errors);
            return ExitCode::Usage;
        }
    };
    let _log = match logging::init(&app::logging_options(&loaded.config), PROG) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{PROG}: cannot set up logging: {e}");
            return ExitCode::Usage;
        }
    };
    app::log_diagnostics(&loaded);
    let command = match (cli.command, cli.restore) {
        (Some(c), _) => c,
        (None, Some(image_id)) => Command::Restore { image_id },
        (None, None) if cli.daemon => Command::Run,
        (None, None) if loaded.config.scrubber().daemon && !cli.nodaemon => Command::Run,
        (None, None) => Command::Once,
    };
    let catalog = match crate::open_catalog(&loaded.config).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match command {
        Command::Restore { image_id } => match ops::restore(&catalog, &image_id).await {
            Ok(r) => {
                println!(
                    "restored image {image_id}: {} location(s), {} propert(y/ies), {} tag(s), {} member(s)",
                    r.locations, r.properties, r.tags, r.members
                );
                ExitCode::Success
            }
            Err(e) => {
                eprintln!("{PROG}: {e}");
                e.exit_code()
            }
        },
        Command::Status { format, limit } => {
            let scrub_time = loaded.config.scrubber().scrub_time;
            match ops::status(&catalog, scrub_time, limit).await {
                Ok(s) if format == Format::Json => {
                    println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                    ExitCode::Success
                }
                Ok(s) => {
                    print!("{}", s.table());
                    ExitCode::Success
                }
                Err(e) => fail(e.into()),
            }
        }
        Command::Once | Command::Run => {
            let store = match crate::open_store(&loaded.config) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let _lock = match lock::acquire(&catalog) {
                Ok(l) => l,
                Err(e) => return fail(e.into()),
            };
            let scrubber = Scrubber::new(catalog, store);
            if matches!(command, Command::Run) {
                return daemon::run_daemon(scrubber, loaded, cli.config).await;
            }
            let settings = PassSettings::from_config(&loaded.config);
            let shutdown = stop_on_signal();
            match scrubber.pass(&settings, &shutdown).await {
                Ok(r) => {
                    tracing::info!("{}", r.summary());
                    r.exit_code()
                }
                Err(e) => {
                    tracing::error!(error = %e, "scrub pass failed");
                    e.exit_code()
                }
            }
        }
        Command::Config { .. } => ExitCode::Internal,
    }
}

/// SIGTERM/SIGINT end a one-shot pass after the page in flight.
fn stop_on_signal() -> ShutdownToken {
    let token = ShutdownToken::new();
    if let Ok((_tx, mut controls)) = control::signals() {
        let t = token.clone();
        tokio::spawn(async move {
            let _tx = _tx;
            while let Some(c) = controls.recv().await {
                if matches!(c, Control::Terminate | Control::Quit) {
                    tracing::info!("stop requested; finishing the page in flight");
                    t.cancel();
                }
            }
        });
    }
    token
}

fn fail(e: SetupError) -> ExitCode {
    tracing::error!(error = %e, "cannot start");
    eprintln!("{PROG}: {e}");
    e.exit_code()
}
