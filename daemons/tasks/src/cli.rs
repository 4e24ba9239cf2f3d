//! The verbs of the `imaged-tasks` binary: `run` (daemon), `once`,
//! `enqueue`, `list`, `show` and `config show|check`, each returning an exit
//! code of the shared contract.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use imaged_catalog::Catalog;
use imaged_catalog::tasks::{NewTask, Task, TaskFilter};
use imaged_config::{Config, Daemon};
use imaged_runtime::ExitCode;
use imaged_runtime::app::{self, ConfigArgs, ConfigCommand};
use imaged_runtime::control::{self, ShutdownToken};
use imaged_runtime::harness::DaemonHarness;
use imaged_runtime::metrics::{Metrics, TasksMetrics, age_since};
use imaged_runtime::reload::Reloader;
use imaged_runtime::server::Probes;
use serde_json::{Value, json};

use crate::executor::{Executor, HANDLED_TYPES};
use crate::import::parse_input;
use crate::settings::Settings;

/// Output format of listing verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    /// JSON (one array or object).
    Json,
}

/// imaged-tasks: runs the import tasks Glance's API queues in the catalog.
#[derive(Debug, Parser)]
#[command(name = "imaged-tasks", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as a daemon: claim pending tasks and run them until stopped
    /// (SIGTERM/SIGINT stop, SIGHUP or a changed config file reloads).
    Run,
    /// Run every task that is claimable now, then exit (0 when all
    /// succeeded, 1 when some failed).
    Once,
    /// Queue a task exactly as Glance's Tasks API does and print its id.
    Enqueue {
        /// Task type (only `import` is run by imaged-tasks).
        #[arg(long = "type", default_value = "import")]
        task_type: String,
        /// The task input as JSON, e.g. {"import_from": "...",
        /// "import_from_format": "raw", "image_properties": {...}}.
        #[arg(long)]
        input: String,
        /// Project (tenant) id owning the task and the image it creates.
        #[arg(long)]
        owner: String,
        /// User id recorded on the task.
        #[arg(long)]
        user_id: Option<String>,
        /// Request id recorded on the task.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// List tasks, newest first.
    List {
        /// Only tasks with this status (pending, processing, success, failure).
        #[arg(long)]
        status: Option<String>,
        /// Only tasks of this type.
        #[arg(long = "type")]
        task_type: Option<String>,
        /// Only tasks of this project.
        #[arg(long)]
        owner: Option<String>,
        /// Include soft-deleted (expired) tasks.
        #[arg(long)]
        all: bool,
        /// At most this many tasks.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
    /// Show one task with its input, result and message.
    Show {
        /// The task id.
        task_id: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
    /// Inspect the configuration without starting.
    #[command(subcommand)]
    Config(ConfigCommand),
}

const PROGRAM: &str = "imaged-tasks";

/// Runs the parsed command line.
pub async fn main_with(cli: Cli) -> ExitCode {
    if let Command::Config(cmd) = &cli.command {
        return app::config_command(PROGRAM, Daemon::Tasks, &cli.config, *cmd);
    }
    let loaded = match app::load(Daemon::Tasks, &cli.config) {
        Ok(l) => l,
        Err(errors) => {
            app::print_errors(PROGRAM, &errors);
            return ExitCode::Usage;
        }
    };
    let mut logging = app::logging_options(&loaded.config);
    if !matches!(cli.command, Command::Run) && logging.use_stderr.is_none() {
        logging.use_stderr = Some(true);
    }
    let _log = match imaged_runtime::logging::init(&logging, PROGRAM) {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("{PROGRAM}: cannot set up logging: {e}");
            return ExitCode::Usage;
        }
    };
    app::log_diagnostics(&loaded);
    let settings = match Settings::from_config(&loaded.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            return ExitCode::Usage;
        }
    };
    let catalog = match open_catalog(&loaded.config).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::Enqueue {
            task_type,
            input,
            owner,
            user_id,
            request_id,
        } => {
            enqueue(
                &catalog, &settings, &task_type, &input, &owner, user_id, request_id,
            )
            .await
        }
        Command::List {
            status,
            task_type,
            owner,
            all,
            limit,
            format,
        } => {
            let filter = TaskFilter {
                status,
                task_type,
                owner,
                image_id: None,
                include_deleted: all,
                limit: Some(limit),
            };
            match catalog.list_tasks(&filter).await {
                Ok(tasks) => {
                    print_list(&tasks, format);
                    ExitCode::Success
                }
                Err(e) => {
                    eprintln!("{PROGRAM}: cannot list tasks: {e}");
                    ExitCode::BackendUnavailable
                }
            }
        }
        Command::Show { task_id, format } => match catalog.get_task(&task_id).await {
            Ok(Some(t)) => {
                print_show(&t, format);
                ExitCode::Success
            }
            Ok(None) => {
                eprintln!("{PROGRAM}: no task {task_id}");
                ExitCode::WorkFailed
            }
            Err(e) => {
                eprintln!("{PROGRAM}: cannot read task: {e}");
                ExitCode::BackendUnavailable
            }
        },
        Command::Once | Command::Run => {
            let store = match app::store_options(&loaded.config)
                .map_err(|e| e.to_string())
                .and_then(|o| imaged_store::Store::new(o).map_err(|e| e.to_string()))
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{PROGRAM}: store: {e}");
                    return ExitCode::Usage;
                }
            };
            let exec = match Executor::new(catalog, store, settings) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("{PROGRAM}: {e}");
                    return ExitCode::Usage;
                }
            };
            if matches!(cli.command, Command::Once) {
                once(exec).await
            } else {
                daemon(exec, loaded, cli.config).await
            }
        }
        Command::Config(_) => ExitCode::Internal,
    }
}

async fn open_catalog(config: &Config) -> Result<Catalog, ExitCode> {
    let opts = match app::catalog_options(config) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            return Err(ExitCode::Usage);
        }
    };
    match Catalog::open(opts).await {
        Ok(c) => Ok(c),
        Err(e) => {
            eprintln!("{PROGRAM}: cannot open the catalog: {e}");
            Err(ExitCode::BackendUnavailable)
        }
    }
}

async fn enqueue(
    catalog: &Catalog,
    settings: &Settings,
    task_type: &str,
    input: &str,
    owner: &str,
    user_id: Option<String>,
    request_id: Option<String>,
) -> ExitCode {
    let input: Value = match serde_json::from_str(input) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            eprintln!("{PROGRAM}: --input must be a JSON object");
            return ExitCode::Usage;
        }
        Err(e) => {
            eprintln!("{PROGRAM}: --input is not valid JSON: {e}");
            return ExitCode::Usage;
        }
    };
    if task_type == "import" {
        // The API validates import_from when the task is created; refusing
        // here too keeps bad rows out of the queue.
        let checked = parse_input(Some(&input), settings)
            .map_err(|e| format!("{e:?}"))
            .and_then(|i| {
                settings
                    .filter
                    .check(&i.import_from)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = checked {
            eprintln!("{PROGRAM}: invalid import task: {e}");
            return ExitCode::Usage;
        }
    }
    let mut task = NewTask::new(task_type, owner, input);
    task.user_id = user_id;
    task.request_id = request_id;
    match catalog.enqueue_task(&task).await {
        Ok(id) => {
            println!("{id}");
            ExitCode::Success
        }
        Err(imaged_catalog::CatalogError::InvalidValue(m)) => {
            eprintln!("{PROGRAM}: {m}");
            ExitCode::Usage
        }
        Err(e) => {
            eprintln!("{PROGRAM}: cannot enqueue: {e}");
            ExitCode::BackendUnavailable
        }
    }
}

fn ts(t: Option<chrono::NaiveDateTime>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(t.format("%Y-%m-%dT%H:%M:%S.%6fZ").to_string())
    })
}

/// The task as the Tasks API shows it.
pub fn task_json(t: &Task, full: bool) -> Value {
    let mut v = json!({
        "id": t.id,
        "type": t.task_type,
        "status": t.status,
        "owner": t.owner,
        "created_at": ts(Some(t.created_at)),
        "updated_at": ts(t.updated_at),
        "expires_at": ts(t.expires_at),
        "image_id": t.image_id,
        "user_id": t.user_id,
        "request_id": t.request_id,
        "deleted": t.deleted,
    });
    if full {
        v["input"] = t.input.clone().unwrap_or(Value::Null);
        v["result"] = t.result.clone().unwrap_or(Value::Null);
        v["message"] = t.message.clone().map_or(Value::Null, Value::String);
    }
    v
}

fn print_list(tasks: &[Task], format: OutputFormat) {
    match format {
        OutputFormat::Json => {
            let v: Vec<Value> = tasks.iter().map(|t| task_json(t, false)).collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        OutputFormat::Table => {
            println!(
                "{:<36}  {:<16}  {:<10}  {:<26}  OWNER",
                "ID", "TYPE", "STATUS", "UPDATED"
            );
            for t in tasks {
                println!(
                    "{:<36}  {:<16}  {:<10}  {:<26}  {}",
                    t.id,
                    t.task_type,
                    t.status,
                    t.updated_at.map(|u| u.to_string()).unwrap_or_default(),
                    t.owner
                );
            }
        }
    }
}

fn print_show(t: &Task, format: OutputFormat) {
    let v = task_json(t, true);
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        OutputFormat::Table => {
            if let Value::Object(m) = v {
                for (k, val) in m {
                    let shown = match val {
                        Value::String(s) => s,
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    println!("{k:<12} {shown}");
                }
            }
        }
    }
}

async fn once(exec: Executor) -> ExitCode {
    let shutdown = ShutdownToken::new();
    let stop = shutdown.clone();
    // A stop signal during `once` hands running tasks back instead of
    // leaving them to a lease expiry.
    if let Ok((_tx, mut controls)) = control::signals() {
        tokio::spawn(async move {
            if controls.recv().await.is_some() {
                stop.cancel();
            }
        });
    }
    match exec.run_once(shutdown).await {
        Ok(r) => {
            tracing::info!(
                succeeded = r.succeeded,
                failed = r.failed,
                handed_back = r.handed_back,
                expired = r.expired,
                "once: done"
            );
            println!(
                "succeeded={} failed={} handed_back={} expired={}",
                r.succeeded, r.failed, r.handed_back, r.expired
            );
            if r.failed > 0 || r.lost > 0 {
                ExitCode::WorkFailed
            } else {
                ExitCode::Success
            }
        }
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            ExitCode::BackendUnavailable
        }
    }
}

/// Reads the task queue for the gauges of `/metrics`.
async fn refresh_queue(catalog: Catalog, metrics: TasksMetrics) {
    match catalog.task_queue(HANDLED_TYPES).await {
        Ok(q) => metrics.set_queue(q.pending, q.oldest_created_at.map(age_since)),
        Err(error) => tracing::warn!(%error, "cannot read the task queue for /metrics"),
    }
}

async fn daemon(exec: Executor, loaded: imaged_config::Loaded, args: ConfigArgs) -> ExitCode {
    let metrics = Metrics::new(PROGRAM);
    let tasks = metrics.tasks();
    let catalog = exec.catalog().clone();
    let probes = Probes::catalog(catalog.clone()).with_refresh({
        let tasks = tasks.clone();
        move || refresh_queue(catalog.clone(), tasks.clone())
    });
    let exec = exec.with_metrics(metrics.clone(), tasks);
    let harness = match DaemonHarness::start(&loaded, metrics, probes).await {
        Ok(h) => h,
        Err(e) => return e.exit_code(),
    };
    let drain = exec.settings().get().shutdown_timeout;
    let handle = exec.settings();
    let work = tokio::spawn({
        let shutdown = harness.shutdown.clone();
        async move {
            match exec.run(shutdown).await {
                Ok(r) => {
                    tracing::info!(
                        succeeded = r.succeeded,
                        failed = r.failed,
                        handed_back = r.handed_back,
                        "executor stopped"
                    );
                    ExitCode::Success
                }
                Err(e) => {
                    tracing::error!(error = %e, "executor stopped");
                    ExitCode::BackendUnavailable
                }
            }
        }
    });
    let mut reloader = Reloader::new(
        loaded.config,
        harness.notifier.clone(),
        move |old: &Config| {
            let new = app::load(Daemon::Tasks, &args)
                .map_err(|e| e.errors.iter().map(|d| d.to_string()).collect::<Vec<_>>())?;
            let plan = imaged_config::diff(old, &new.config);
            for c in &plan.applied {
                tracing::info!(change = %c, "option changed");
            }
            for c in &plan.needs_restart {
                tracing::warn!(change = %c, "option changed; takes effect after a restart");
            }
            let effective = plan.effective(old, &new.config);
            let settings = Settings::from_config(&effective).map_err(|e| vec![e.to_string()])?;
            handle.set(settings).map_err(|e| vec![e.to_string()])?;
            Ok(effective)
        },
    );
    harness
        .supervise(
            work,
            &mut reloader,
            drain.max(Duration::from_secs(1)),
            "waiting for tasks",
        )
        .await
}
