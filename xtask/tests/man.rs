//! `cargo xtask man` writes a page per binary and per verb, each carrying the verb's about
//! text and every one of its options.

use std::path::Path;
use std::process::Command;

use clap::CommandFactory as _;

/// The page text with roff's escapes for `-`, `\` and the zero-width guard undone, so that
/// help text can be looked up as the user reads it.
fn plain(page: &str) -> String {
    page.replace("\\-", "-")
        .replace("\\e", "\\")
        .replace("\\&", "")
        .replace("\\(aq", "'")
        .replace("\\*(Aq", "'")
}

/// Roff keeps words but may break a paragraph across lines; compare word by word.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn check_tree(cmd: &clap::Command, page_name: &str, dir: &Path, checked: &mut Vec<String>) {
    let path = dir.join(format!("{page_name}.1"));
    let page = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = words(&plain(&page));
    assert!(
        text.contains(&format!(".TH {page_name} 1")),
        "{page_name}: title line missing:\n{page}"
    );
    let about = cmd
        .get_about()
        .expect("every verb has an about text")
        .to_string();
    assert!(
        text.contains(&words(&about)),
        "{page_name}: about text {about:?} missing:\n{page}"
    );
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let shown = match (arg.get_long(), arg.get_short()) {
            (Some(l), _) => format!("--{l}"),
            (None, Some(s)) => format!("-{s}"),
            (None, None) => arg
                .get_value_names()
                .and_then(|v| v.first().map(|n| n.to_string()))
                .unwrap_or_else(|| id.to_uppercase()),
        };
        assert!(
            text.contains(&shown),
            "{page_name}: option {shown} missing:\n{page}"
        );
        let help = arg.get_help().expect("every argument has help").to_string();
        assert!(
            text.contains(&words(&help)),
            "{page_name}: help of {shown} ({help:?}) missing:\n{page}"
        );
    }
    checked.push(page_name.to_owned());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        check_tree(
            sub,
            &format!("{page_name}-{}", sub.get_name()),
            dir,
            checked,
        );
    }
}

#[test]
fn man_writes_a_page_per_binary_and_verb() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man");
    let status = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["man", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());

    let mut checked = Vec::new();
    for cmd in [
        imaged_scrubber::cli::Cli::command(),
        imaged_cache::cli::Cli::command(),
        imaged_tasks::cli::Cli::command(),
    ] {
        // Global options (--config-file, --config-dir) reach every verb's page only after
        // clap has propagated them, as it does before parsing.
        let mut cmd = cmd.disable_help_subcommand(true);
        cmd.build();
        let name = cmd.get_name().to_owned();
        check_tree(&cmd, &name, &out, &mut checked);
        // A binary's own page adds what clap does not know: exit codes, environment, files.
        let page = plain(&std::fs::read_to_string(out.join(format!("{name}.1"))).unwrap());
        for needle in [
            ".SH \"EXIT STATUS\"",
            "\\fB70\\fR",
            ".SH ENVIRONMENT",
            &format!("/etc/imaged/{}.conf", name.trim_start_matches("imaged-")),
        ] {
            assert!(page.contains(needle), "{name}.1 lacks {needle:?}:\n{page}");
        }
    }
    for page in [
        "imaged-scrubber",
        "imaged-scrubber-once",
        "imaged-scrubber-run",
        "imaged-scrubber-restore",
        "imaged-scrubber-status",
        "imaged-scrubber-config-show",
        "imaged-scrubber-config-check",
        "imaged-tasks-enqueue",
        "imaged-cache",
    ] {
        assert!(
            checked.iter().any(|c| c == page),
            "{page} not generated: {checked:?}"
        );
    }
    // Nothing but the checked pages: no `help` verb page, no stray files.
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = checked.iter().map(|c| format!("{c}.1")).collect();
    expected.sort();
    assert_eq!(files, expected);
}
