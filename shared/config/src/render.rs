//! Text renderings of the configuration: `config show`, the sample file and the option table.

use std::fmt::Write as _;

use crate::config::{Config, Entry};
use crate::error::Origin;
use crate::load::{env_var_name, mask_url};
use crate::options::{self, DefSource, Kind, OptionDef};
use crate::value::Value;

/// The text shown for a value in `config show` and reload logs: secrets become `****`, URL
/// passwords are masked.
pub fn display_value(entry: &Entry) -> String {
    if entry.value == Value::Unset {
        return "<None>".to_owned();
    }
    let text = entry.value.to_string();
    if entry.def.secret && !text.is_empty() {
        return "****".to_owned();
    }
    mask_url(&text)
}

/// The effective configuration with the origin of every value, secrets masked.
///
/// Shows every option the daemon uses, and every other option that a file or the environment
/// sets (marked as not used).
pub fn render_show(config: &Config) -> String {
    let mut out = String::new();
    let mut current = "";
    let mut sections: Vec<&str> = options::sections();
    for (s, _, _) in config.entries() {
        if !sections.contains(&s) {
            sections.push(s);
        }
    }
    for section in sections {
        let mut rows: Vec<(&str, &Entry)> = config
            .entries()
            .filter(|(s, _, _)| *s == section)
            .filter(|(_, _, e)| {
                e.def.used_by_daemon(config.daemon()) || e.origin != Origin::Default
            })
            .map(|(_, n, e)| (n, e))
            .collect();
        if rows.is_empty() {
            continue;
        }
        rows.sort_by_key(|(n, _)| *n);
        if current != section {
            if !out.is_empty() {
                out.push('\n');
            }
            let _ = writeln!(out, "[{section}]");
            current = section;
        }
        for (name, e) in rows {
            let unused = if e.def.used_by_daemon(config.daemon()) {
                ""
            } else {
                ", not used by imaged"
            };
            let _ = writeln!(
                out,
                "{name} = {}    # {}{unused}",
                display_value(e),
                e.origin
            );
        }
    }
    out
}

fn wrap(text: &str, prefix: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && prefix.len() + line.len() + 1 + word.len() > width {
            let _ = writeln!(out, "{prefix}{line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{prefix}{line}");
    }
    out
}

fn type_line(def: &OptionDef) -> String {
    let mut t = format!("Type: {}", def.kind.type_name());
    match def.kind {
        Kind::Int {
            min: None,
            max: None,
        } => {}
        Kind::Float {
            min: None,
            max: None,
        } => {}
        Kind::Int { .. }
        | Kind::Float { .. }
        | Kind::Choices(_)
        | Kind::Uri(_)
        | Kind::PortList
        | Kind::Size => {
            let _ = write!(t, " ({})", def.kind.expected());
        }
        _ => {}
    }
    if let Some(u) = def.unit {
        let _ = write!(t, "; unit: {u}");
    }
    t
}

/// The `etc/imaged.conf.sample` text: every option, commented out, with its default, type,
/// help, users, reload behaviour and environment variable.
pub fn render_sample() -> String {
    let mut out = String::new();
    out.push_str(
        "# imaged configuration sample.\n\
         #\n\
         # Generated from the option definitions by `cargo run -p imaged-config --bin\n\
         # imaged-config-sample`; do not edit by hand.\n\
         #\n\
         # Files are read in this order, later values overriding earlier ones:\n\
         # every --config-file in command-line order, then the *.conf files of every\n\
         # --config-dir in sorted order; with neither flag, /etc/imaged/imaged.conf then\n\
         # /etc/imaged/<daemon>.conf. Environment variables IMAGED_<SECTION>__<OPTION>\n\
         # override files. Existing glance-api.conf, glance-scrubber.conf and\n\
         # glance-cache.conf files can be passed unchanged with --config-file.\n",
    );
    for section in options::sections() {
        let _ = write!(out, "\n\n[{section}]\n");
        for def in options::all().filter(|d| d.section == section) {
            out.push_str("\n#\n");
            out.push_str(&wrap(def.help, "# ", 79));
            out.push_str("#\n");
            out.push_str(&wrap(&type_line(def), "# ", 79));
            let used = if def.used_by.is_empty() {
                "Accepted for compatibility, not used by imaged.".to_owned()
            } else if def.live {
                format!(
                    "Used by: {}; a reload applies changes.",
                    def.used_by.describe()
                )
            } else {
                format!(
                    "Used by: {}; changes need a restart.",
                    def.used_by.describe()
                )
            };
            out.push_str(&wrap(&used, "# ", 79));
            if def.secret {
                out.push_str("# Secret: masked in `config show`.\n");
            }
            if def.store_opt {
                out.push_str(&wrap(
                    "Also accepted in every backend section of enabled_backends and in \
                     [os_glance_staging_store] and [os_glance_tasks_store].",
                    "# ",
                    79,
                ));
            }
            if let Some(d) = def.deprecated {
                out.push_str(&wrap(&format!("Deprecated: {d}"), "# ", 79));
            }
            if let Some((s, n)) = def.alias {
                out.push_str(&wrap(&format!("Deprecated alias: [{s}] {n}"), "# ", 79));
            }
            if let Some(n) = def.note {
                out.push_str(&wrap(&format!("Note: {n}"), "# ", 79));
            }
            match def.source {
                DefSource::Reference => {}
                DefSource::Glance(from) => {
                    out.push_str(&wrap(&format!("Defined by Glance in {from}."), "# ", 79));
                }
                DefSource::Imaged => out.push_str("# imaged option.\n"),
            }
            let _ = writeln!(
                out,
                "# Environment: {}",
                env_var_name(def.section, def.name)
            );
            let default = match def.default {
                None => "<None>".to_owned(),
                // Quotes keep leading or trailing blanks, and the reader removes them again.
                Some(d) if d.trim() != d => format!("\"{d}\""),
                Some(d) => d.to_owned(),
            };
            let line = format!("#{} = {default}", def.name);
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    out
}

/// The first sentence of a help text, for a table cell.
fn first_sentence(help: &str) -> &str {
    let mut from = 0;
    while let Some(i) = help[from..].find(". ") {
        let end = from + i + 1;
        // "e.g. x" and "i.e. x" do not end a sentence.
        if !(help[..end].ends_with("e.g.") || help[..end].ends_with("i.e.")) {
            return &help[..end];
        }
        from = end;
    }
    help
}

/// Text made safe for a Markdown table cell: no column breaks, no HTML tags.
fn md_cell(text: &str) -> String {
    text.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A Markdown table of every option: section, option, type (with its unit), default, which
/// daemons use it and for what (the first sentence of its help and any note), and whether a
/// reload applies a change.
pub fn render_option_table_markdown() -> String {
    let mut out = String::from(
        "| section | option | type | default | used by | on reload |\n\
         |---|---|---|---|---|---|\n",
    );
    for def in options::all() {
        let default = match def.default {
            None => "*unset*".to_owned(),
            Some("") => "*empty*".to_owned(),
            Some(d) => format!("`{}`", d.replace('|', "\\|")),
        };
        let kind = match def.unit {
            Some(u) => format!("{} ({u})", def.kind.type_name()),
            None => def.kind.type_name().to_owned(),
        };
        let mut used = if def.used_by.is_empty() {
            "accepted, not used by imaged".to_owned()
        } else {
            format!(
                "**{}**: {}",
                def.used_by.describe(),
                md_cell(first_sentence(def.help))
            )
        };
        if let Some(n) = def.note {
            let _ = write!(used, " *{}*", md_cell(n));
        }
        if def.deprecated.is_some() {
            used.push_str(" (deprecated)");
        }
        let reload = if def.used_by.is_empty() {
            "—"
        } else if def.live {
            "applied"
        } else {
            "restart"
        };
        let _ = writeln!(
            out,
            "| `{}` | `{}` | {kind} | {default} | {used} | {reload} |",
            def.section, def.name,
        );
    }
    out
}

/// `docs/options.md`: a short guide to reading the option table, then the table.
pub fn render_options_page() -> String {
    let mut out = String::from(
        "# Configuration options\n\
         \n\
         <!-- Generated from the option definitions by `cargo xtask options`; do not edit by hand. -->\n\
         \n\
         Every option of the Glance configuration reference, the Glance and glance_store options\n\
         imaged reads that the reference lacks, and imaged's own options (sections starting with\n\
         `imaged`). **used by** names the daemons that read the option and what it controls;\n\
         \"accepted, not used by imaged\" options load without error (so Glance's files work\n\
         unchanged) and change nothing. **on reload** says whether a reload (SIGHUP or a changed\n\
         file) applies a new value (\"applied\") or the daemon keeps the old one until it restarts\n\
         (\"restart\"). Full help texts, bounds and environment variable names are in\n\
         [`etc/imaged.conf.sample`](../etc/imaged.conf.sample).\n\
         \n",
    );
    out.push_str(&render_option_table_markdown());
    out
}
