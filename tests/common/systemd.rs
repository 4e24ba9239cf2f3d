//! Shared by every daemon's end-to-end tests: the unit files under `systemd/`
//! that start a daemon must pass `systemd-analyze verify`, and every verb and
//! flag their `ExecStart=` lines use must be accepted by the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn units_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../systemd")
}

/// `(unit file name, ExecStart arguments after the binary)` for the units
/// that run `binary_name`.
fn units_running(binary_name: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(units_dir()).expect("systemd/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("service") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let Some(cmd) = line.strip_prefix("ExecStart=") else {
                continue;
            };
            let mut words = cmd.split_whitespace();
            let program = words.next().unwrap_or_default();
            if Path::new(program).file_name().and_then(|n| n.to_str()) == Some(binary_name) {
                out.push((
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    words.map(str::to_owned).collect(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Checks the units of `binary_name`; `binary` is the built executable.
pub fn check_units(binary_name: &str, binary: &Path) {
    let units = units_running(binary_name);
    assert!(!units.is_empty(), "no unit in systemd/ runs {binary_name}");

    for (unit, args) in &units {
        // The same verb and flags, asking for help, must be accepted: clap
        // rejects an unknown verb or flag before it looks at --help.
        let out = Command::new(binary)
            .args(args)
            .arg("--help")
            .output()
            .expect("run the daemon binary");
        assert!(
            out.status.success(),
            "{unit}: `{binary_name} {}` is not accepted by the binary: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let Some(analyze) = which("systemd-analyze") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing (CI installs it)"
        );
        eprintln!("SKIPPING systemd-analyze verify: systemd-analyze is not installed");
        return;
    };
    // Verify copies whose ExecStart points at the built binary, so that
    // verify's "command not executable" check sees a real program.
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (unit, _) in &units {
        let text = std::fs::read_to_string(units_dir().join(unit)).unwrap();
        let installed = format!("/usr/local/bin/{binary_name}");
        let text = text.replace(&installed, &binary.display().to_string());
        let copy = dir.path().join(unit);
        std::fs::write(&copy, text).unwrap();
        files.push(copy);
    }
    let out = Command::new(analyze)
        .arg("verify")
        .arg("--man=no")
        .args(&files)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Users and paths of the target host do not exist here; everything
    // else verify reports is a defect of the unit.
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains("Failed to resolve user") && !l.contains("Failed to resolve group"))
        .collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze verify: {problems:#?}"
    );
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}
