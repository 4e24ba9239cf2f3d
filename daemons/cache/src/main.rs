//! `imaged-cache`: parse the command line and run the chosen verb.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = imaged_cache::cli::Cli::parse();
    imaged_cache::cli::main_with(cli).await.into()
}
