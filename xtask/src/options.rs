//! `cargo xtask options`: writes `docs/options.md`, the table of every configuration option,
//! from the option definitions (a test of imaged-config fails while the committed file is
//! stale).

use std::path::PathBuf;

use anyhow::Context as _;

/// Options of `cargo xtask options`.
#[derive(clap::Args)]
pub struct Args {
    /// File to write; `-` prints to standard output. Default: docs/options.md of the workspace.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let page = imaged_config::render::render_options_page();
    let out = args
        .out
        .unwrap_or_else(|| crate::workspace_root().join("docs/options.md"));
    if out.as_os_str() == "-" {
        print!("{page}");
        return Ok(());
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&out, page).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
