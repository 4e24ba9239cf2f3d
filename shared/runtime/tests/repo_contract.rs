//! Checks that the documents operators and CI rely on agree with the code:
//! `.ci/run` runs exactly the test command README.md gives, and README's
//! exit-code table is the contract of `imaged_runtime::exit`.

use std::path::PathBuf;

use imaged_runtime::ExitCode;

fn repo_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first fenced `sh` block after the "## Testing" heading.
fn readme_test_command(readme: &str) -> String {
    let testing = readme
        .split("\n## Testing")
        .nth(1)
        .expect("README has a '## Testing' section");
    let block = testing
        .split("```sh\n")
        .nth(1)
        .expect("the Testing section has a ```sh block");
    block.split("```").next().unwrap().trim().to_string()
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = repo_file("README.md");
    let command = readme_test_command(&readme);
    assert!(
        command.contains("--locked"),
        "test command must build with --locked"
    );
    let ci = repo_file(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == command),
        ".ci/run does not run the README test command {command:?}"
    );
}

#[test]
fn readme_exit_codes_are_the_contract() {
    let readme = repo_file("README.md");
    let section = readme
        .split("\n## Exit codes")
        .nth(1)
        .expect("README has an '## Exit codes' section");
    let section = section.split("\n## ").next().unwrap();
    let mut codes = Vec::new();
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 2
            && let Ok(code) = cells[1].parse::<u8>()
        {
            codes.push(code);
        }
    }
    let expected: Vec<u8> = [
        ExitCode::Success,
        ExitCode::WorkFailed,
        ExitCode::Usage,
        ExitCode::BackendUnavailable,
        ExitCode::Refused,
        ExitCode::Internal,
    ]
    .iter()
    .map(|c| c.code())
    .collect();
    assert_eq!(codes, expected);
    for code in codes {
        assert!(ExitCode::from_code(code).is_some());
    }
}
