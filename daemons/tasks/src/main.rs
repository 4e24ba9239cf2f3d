//! `imaged-tasks`: parse the command line and run the chosen verb.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = imaged_tasks::cli::Cli::parse();
    imaged_tasks::cli::main_with(cli).await.into()
}
