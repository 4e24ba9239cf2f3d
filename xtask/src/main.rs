//! `cargo xtask`: project tooling that is not part of the installed daemons.

use clap::{Parser, Subcommand};

mod man;
mod options;
mod quickstart;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "imaged project tooling")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build imaged and walk through its main jobs on a local SQLite catalog and file store.
    Quickstart(quickstart::Args),
    /// Write the daemons' man pages, generated from their command-line definitions.
    Man(man::Args),
    /// Write docs/options.md, the table of every configuration option.
    Options(options::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Quickstart(args) => quickstart::run(args),
        Cmd::Man(args) => man::run(args),
        Cmd::Options(args) => options::run(args),
    }
}

/// The workspace root, where generated files land by default whatever the current directory.
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}
