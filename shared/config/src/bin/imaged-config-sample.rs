//! Writes `etc/imaged.conf.sample` from the option definitions.
//!
//! Usage: `imaged-config-sample [PATH]`; without a path it writes `etc/imaged.conf.sample` at the
//! workspace root. `-` prints to standard output.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let target = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
            root.canonicalize()
                .unwrap_or(root)
                .join("etc/imaged.conf.sample")
        });
    if target.as_os_str() == "-" {
        print!("{}", imaged_config::render_sample());
        return ExitCode::SUCCESS;
    }
    match imaged_config::write_sample(&target) {
        Ok(()) => {
            eprintln!("wrote {}", target.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
