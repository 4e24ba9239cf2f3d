//! The oslo.config-style INI reader.
//!
//! Hand-written because every diagnostic must name the file and line of the value, which general
//! INI crates do not keep. It follows oslo.config's own parser:
//!
//! * `[section]` starts a section; section names other than `DEFAULT` are case-insensitive
//!   (stored lower-case), `DEFAULT` is matched exactly;
//! * `key = value` or `key: value`, split at the first `=` or `:`; key and value are trimmed and
//!   one pair of matching surrounding quotes (`"…"` or `'…'`) is removed from the value;
//! * a line that starts with whitespace continues the previous value (joined with `\n`);
//!   a blank line ends it;
//! * lines starting with `#` or `;` are comments; there are no inline comments
//!   (`a = b # c` has the value `b # c`, as in oslo);
//! * a key may repeat: every occurrence is kept, in order, for multi-valued options.

use std::path::{Path, PathBuf};

/// One `key = value` occurrence.
#[derive(Debug, Clone, PartialEq)]
pub struct IniEntry {
    /// Normalised section name.
    pub section: String,
    /// Key as written.
    pub key: String,
    /// Value after quote removal and continuation joining.
    pub value: String,
    /// 1-based line of the key.
    pub line: usize,
}

/// A parsed file: entries in file order.
#[derive(Debug, Clone, Default)]
pub struct IniFile {
    /// Where the text came from.
    pub path: PathBuf,
    /// Every assignment, in order.
    pub entries: Vec<IniEntry>,
    /// Every section header seen (normalised), in order, even empty ones.
    pub sections: Vec<String>,
}

/// A syntax problem at a line.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// oslo.config treats only `DEFAULT` case-sensitively; other group names are lower-cased.
pub fn normalize_section(name: &str) -> String {
    if name == "DEFAULT" {
        name.to_owned()
    } else {
        name.to_lowercase()
    }
}

/// Parse `text`; syntax errors are collected and parsing continues after each one.
pub fn parse(path: &Path, text: &str) -> (IniFile, Vec<SyntaxError>) {
    let mut file = IniFile {
        path: path.to_owned(),
        ..IniFile::default()
    };
    let mut errors = Vec::new();
    let mut section: Option<String> = None;
    // The assignment being built: (key, value lines, line number).
    let mut pending: Option<(String, Vec<String>, usize)> = None;

    let flush = |pending: &mut Option<(String, Vec<String>, usize)>,
                 section: &Option<String>,
                 file: &mut IniFile,
                 errors: &mut Vec<SyntaxError>| {
        if let Some((key, lines, line)) = pending.take() {
            match section {
                Some(s) => file.entries.push(IniEntry {
                    section: s.clone(),
                    key,
                    value: lines.join("\n"),
                    line,
                }),
                None => errors.push(SyntaxError {
                    line,
                    message: format!("option `{key}` appears before any [section] header"),
                }),
            }
        }
    };

    for (idx, raw) in text.lines().enumerate() {
        let lineno = idx + 1;
        let line = raw.trim_end();
        if line.is_empty() {
            flush(&mut pending, &section, &mut file, &mut errors);
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match pending.as_mut() {
                Some((_, lines, _)) => lines.push(line.trim_start().to_owned()),
                None => {
                    // oslo refuses indented text that continues nothing; an indented comment
                    // is harmless and common in hand-edited files, so it is skipped.
                    let t = line.trim_start();
                    if !t.starts_with(['#', ';']) {
                        errors.push(SyntaxError {
                            line: lineno,
                            message: format!(
                                "indented line `{t}` continues no option (remove the leading whitespace)"
                            ),
                        });
                    }
                }
            }
            continue;
        }
        flush(&mut pending, &section, &mut file, &mut errors);
        if line.starts_with('[') {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let name = name.trim();
                if name.is_empty() {
                    errors.push(SyntaxError {
                        line: lineno,
                        message: "empty section name `[]`".to_owned(),
                    });
                    section = None;
                } else {
                    let norm = normalize_section(name);
                    if !file.sections.contains(&norm) {
                        file.sections.push(norm.clone());
                    }
                    section = Some(norm);
                }
            } else {
                errors.push(SyntaxError {
                    line: lineno,
                    message: format!("section header `{line}` lacks its closing `]`"),
                });
            }
            continue;
        }
        if line.starts_with(['#', ';']) {
            continue;
        }
        let split = line.find(['=', ':']);
        let (key, value) = match split {
            Some(i) => (line[..i].trim(), line[i + 1..].trim()),
            None => {
                errors.push(SyntaxError {
                    line: lineno,
                    message: format!(
                        "line `{line}` is neither `key = value`, a [section] nor a comment"
                    ),
                });
                continue;
            }
        };
        if key.is_empty() {
            errors.push(SyntaxError {
                line: lineno,
                message: format!("line `{line}` has an empty option name"),
            });
            continue;
        }
        pending = Some((key.to_owned(), vec![unquote(value).to_owned()], lineno));
    }
    flush(&mut pending, &section, &mut file, &mut errors);
    (file, errors)
}

fn unquote(value: &str) -> &str {
    let b = value.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[0] == b[b.len() - 1] {
        &value[1..value.len() - 1]
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> (IniFile, Vec<SyntaxError>) {
        parse(Path::new("t.conf"), text)
    }

    #[test]
    fn sections_keys_lines_and_repeats() {
        let (f, e) =
            p("# c\n[DEFAULT]\na = 1\n; c\nb: two \n[Database]\nconnection=x\na = 2\na = 3\n");
        assert!(e.is_empty(), "{e:?}");
        let got: Vec<_> = f
            .entries
            .iter()
            .map(|e| (e.section.as_str(), e.key.as_str(), e.value.as_str(), e.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("DEFAULT", "a", "1", 3),
                ("DEFAULT", "b", "two", 5),
                ("database", "connection", "x", 7),
                ("database", "a", "2", 8),
                ("database", "a", "3", 9),
            ]
        );
    }

    #[test]
    fn quotes_continuations_and_inline_hash() {
        let (f, e) = p(
            "[s]\nq = \"a b \"\nr = 'x'\nm = first\n  second\n\tthird\n\nh = v # not a comment\n",
        );
        assert!(e.is_empty(), "{e:?}");
        let v: Vec<_> = f.entries.iter().map(|e| e.value.as_str()).collect();
        assert_eq!(
            v,
            vec!["a b ", "x", "first\nsecond\nthird", "v # not a comment"]
        );
    }

    #[test]
    fn errors_are_collected_with_lines() {
        let (f, e) = p("x = 1\n[s\n[s]\nnot an assignment\n = v\nok = 1\n");
        let lines: Vec<_> = e.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 2, 4, 5]);
        assert_eq!(f.entries.len(), 1);
        assert_eq!(f.entries[0].key, "ok");
    }

    #[test]
    fn default_is_case_sensitive_other_sections_are_not() {
        assert_eq!(normalize_section("DEFAULT"), "DEFAULT");
        assert_eq!(normalize_section("default"), "default");
        assert_eq!(normalize_section("Glance_Store"), "glance_store");
    }
}
