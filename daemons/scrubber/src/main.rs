//! `imaged-scrubber`: parse the command line and run the chosen verb.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = imaged_scrubber::cli::Cli::parse();
    imaged_scrubber::cli::main_with(cli).await.into()
}
