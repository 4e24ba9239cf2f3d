//! `cargo xtask man`: the daemons' man pages, generated with clap_mangen from the same clap
//! definitions the binaries parse, one page per binary and one per verb
//! (`imaged-scrubber.1`, `imaged-scrubber-once.1`, `imaged-scrubber-config-show.1`, …).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::CommandFactory as _;

/// Options of `cargo xtask man`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory the pages are written to (created when missing). Default: target/man of the
    /// workspace.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// The command-line definition of every installed binary.
pub fn binaries() -> Vec<clap::Command> {
    vec![
        imaged_scrubber::cli::Cli::command(),
        imaged_cache::cli::Cli::command(),
        imaged_tasks::cli::Cli::command(),
    ]
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let out = args
        .out
        .unwrap_or_else(|| crate::workspace_root().join("target/man"));
    let mut written = 0;
    for cmd in binaries() {
        for page in write_pages(cmd, &out)? {
            println!("{}", page.display());
            written += 1;
        }
    }
    eprintln!("wrote {written} man pages to {}", out.display());
    Ok(())
}

/// Writes the page of `cmd` and of each of its verbs, nested verbs included, into `dir`;
/// returns the paths written.
pub fn write_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Building propagates global options into the verbs and gives every verb its full
    // display name (`imaged-scrubber-config-show`), which names its page. The `help` verb
    // would only repeat the other pages.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_tree(&cmd, dir, &mut written)?;
    Ok(written)
}

fn write_tree(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    write_page(
        cmd,
        cmd.get_name(),
        cmd.get_version().unwrap_or_default(),
        dir,
        written,
    )
}

fn write_page(
    cmd: &clap::Command,
    program: &str,
    version: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    // Verbs have no version of their own; every page names the binary and version it
    // documents.
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("{program} {version}"))
        .manual("imaged");
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)
        .with_context(|| format!("cannot render {}", path.display()))?;
    let mut page = String::from_utf8(page).context("clap_mangen wrote a page that is not UTF-8")?;
    if cmd.get_name() == program {
        let extra = binary_sections(program);
        match page.find(".SH VERSION") {
            Some(at) => page.insert_str(at, &extra),
            None => page.push_str(&extra),
        }
    }
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, program, version, dir, written)?;
    }
    Ok(())
}

/// The exit-status contract every binary follows.
const EXIT_STATUS: [(&str, &str); 6] = [
    (
        "0",
        "all work done, or a requested stop (SIGTERM/SIGINT) completed",
    ),
    ("1", "the run completed but some units of work failed"),
    ("2", "bad command line or invalid configuration"),
    (
        "3",
        "the catalog database or a storage backend stayed unreachable after retries",
    ),
    (
        "4",
        "another instance holds the lock, the metrics address ([imaged] metrics_bind) \
         cannot be bound, or the run was refused",
    ),
    ("70", "internal error (a bug)"),
];

/// Text as roff prints it literally: backslashes, hyphens (so that options stay
/// searchable and copyable) and a leading control character escaped.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO of a binary's own page: what clap's
/// definition does not carry.
fn binary_sections(program: &str) -> String {
    let daemon = program.strip_prefix("imaged-").unwrap_or(program);
    let mut out = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in EXIT_STATUS {
        out.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", roff_text(meaning)));
    }
    out.push_str(&format!(
        ".SH ENVIRONMENT\n.TP\n\\fBIMAGED_\\fISECTION\\fB__\\fIOPTION\\fR\n{}\n",
        roff_text(
            "sets OPTION of SECTION (upper case, with . and - written as _), overriding every \
             file; DEFAULT is written DEFAULT, e.g. IMAGED_DEFAULT__WAKEUP_TIME=60."
        )
    ));
    out.push_str(&format!(
        ".SH FILES\n.TP\n{}\n{}\n",
        roff_text(&format!(
            "/etc/imaged/imaged.conf, /etc/imaged/{daemon}.conf"
        )),
        roff_text(
            "read, in this order, when neither --config-file nor --config-dir is given. \
             Glance's own files (glance-api.conf with glance-scrubber.conf or \
             glance-cache.conf) load unchanged when passed with --config-file."
        )
    ));
    let others: Vec<String> = ["imaged-scrubber", "imaged-cache", "imaged-tasks"]
        .into_iter()
        .filter(|b| *b != program)
        .map(|b| format!("\\fB{}\\fR(1)", roff_text(b)))
        .collect();
    out.push_str(&format!(".SH \"SEE ALSO\"\n{}\n", others.join(", ")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every verb of every binary, with the names of its verb path (`["config", "show"]`).
    fn verbs(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, clap::Command)>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let mut p = path.clone();
            p.push(sub.get_name().to_owned());
            out.push((p.clone(), sub.clone()));
            verbs(sub, p, out);
        }
    }

    #[test]
    fn every_verb_and_argument_has_help() {
        let mut missing = Vec::new();
        for bin in binaries() {
            let mut bin = bin.disable_help_subcommand(true);
            bin.build();
            let name = bin.get_name().to_owned();
            let mut all = vec![(Vec::new(), bin.clone())];
            verbs(&bin, Vec::new(), &mut all);
            for (path, cmd) in all {
                let shown = format!("{name} {}", path.join(" "));
                if cmd
                    .get_about()
                    .is_none_or(|a| a.to_string().trim().is_empty())
                {
                    missing.push(format!("{shown}: no about text"));
                }
                for arg in cmd.get_arguments() {
                    let id = arg.get_id().as_str();
                    if id == "help" || id == "version" {
                        continue;
                    }
                    if arg
                        .get_help()
                        .is_none_or(|h| h.to_string().trim().is_empty())
                    {
                        missing.push(format!("{shown}: argument {id} has no help"));
                    }
                    for value in arg.get_possible_values() {
                        if !value.is_hide_set() && value.get_help().is_none() {
                            missing.push(format!(
                                "{shown}: value {} of {id} has no help",
                                value.get_name()
                            ));
                        }
                    }
                }
                // What `--help` prints for this verb carries its about text.
                let help = cmd.clone().render_long_help().to_string();
                let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
                assert!(help.contains(&about), "{shown} --help:\n{help}");
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    #[test]
    fn the_binaries_have_their_installed_names() {
        let names: Vec<String> = binaries().iter().map(|c| c.get_name().to_owned()).collect();
        assert_eq!(names, ["imaged-scrubber", "imaged-cache", "imaged-tasks"]);
    }
}
