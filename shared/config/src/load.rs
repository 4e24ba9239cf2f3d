//! The loader: finds the files, layers files and environment, interpolates, converts every value
//! to its type and collects every problem before deciding whether the configuration is usable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::config::{Config, Entry};
use crate::error::{ConfigErrors, Diagnostic, Origin};
use crate::ini;
use crate::options::{self, Daemon, Kind, OptionDef};
use crate::value::{self, Value};

/// Directory searched when neither `--config-file` nor `--config-dir` is given.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/imaged";

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "IMAGED_";

/// Reserved glance_store sections that take store options in multi-store mode.
pub const RESERVED_STORE_SECTIONS: [&str; 2] = ["os_glance_staging_store", "os_glance_tasks_store"];

/// What to load.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// The daemon being configured; `None` validates for every daemon.
    pub daemon: Option<Daemon>,
    /// `--config-file` paths in command-line order (later ones override earlier ones).
    pub config_files: Vec<PathBuf>,
    /// `--config-dir` paths; each one's `*.conf` files are read in sorted order, after the files.
    pub config_dirs: Vec<PathBuf>,
    /// Environment variables to consider (only `IMAGED_<SECTION>__<OPTION>` ones are used).
    pub env: BTreeMap<String, String>,
    /// Where `imaged.conf` and `<daemon>.conf` are looked for when no file or dir is given.
    pub default_dir: PathBuf,
}

impl LoadRequest {
    /// A request with no files, no environment and the standard default directory.
    pub fn new(daemon: Option<Daemon>) -> Self {
        LoadRequest {
            daemon,
            config_files: Vec::new(),
            config_dirs: Vec::new(),
            env: BTreeMap::new(),
            default_dir: PathBuf::from(DEFAULT_CONFIG_DIR),
        }
    }

    /// Take the `IMAGED_*` variables of the current process.
    pub fn with_process_env(mut self) -> Self {
        self.env = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        self
    }

    /// The files this request reads, in order, plus errors for missing explicit paths.
    pub fn resolve_files(&self) -> (Vec<PathBuf>, Vec<Diagnostic>) {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        if self.config_files.is_empty() && self.config_dirs.is_empty() {
            let mut candidates = vec![self.default_dir.join("imaged.conf")];
            if let Some(d) = self.daemon {
                candidates.push(self.default_dir.join(format!("{}.conf", d.name())));
            }
            files.extend(candidates.into_iter().filter(|p| p.is_file()));
            return (files, errors);
        }
        for f in &self.config_files {
            if f.is_file() {
                files.push(f.clone());
            } else {
                errors.push(Diagnostic::new(format!(
                    "config file {} does not exist or is not a regular file",
                    f.display()
                )));
            }
        }
        for d in &self.config_dirs {
            match std::fs::read_dir(d) {
                Ok(rd) => {
                    let mut confs: Vec<PathBuf> = rd
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|e| e == "conf") && p.is_file())
                        .collect();
                    confs.sort();
                    files.extend(confs);
                }
                Err(e) => errors.push(Diagnostic::new(format!(
                    "config dir {} cannot be read: {e}",
                    d.display()
                ))),
            }
        }
        (files, errors)
    }
}

/// A successfully loaded configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective configuration.
    pub config: Config,
    /// Problems that do not stop the daemon: misspellings, deprecations, bad values of options
    /// imaged does not use, secrets in files other users can read.
    pub warnings: Vec<Diagnostic>,
    /// Debug-level remarks: options and sections accepted but not used by imaged.
    pub notes: Vec<Diagnostic>,
    /// The files read, in order (for the reload watcher).
    pub files: Vec<PathBuf>,
    /// Directories whose `*.conf` files take part (the `--config-dir`s, or the default
    /// directory when no flag was given), so a watcher can notice files being added.
    pub dirs: Vec<PathBuf>,
}

/// The environment variable that overrides `[section] name`: `IMAGED_<SECTION>__<NAME>`,
/// upper-cased, with `.` and `-` turned into `_` (`[cors.subdomain] max_age` →
/// `IMAGED_CORS_SUBDOMAIN__MAX_AGE`; `[DEFAULT] wakeup_time` → `IMAGED_DEFAULT__WAKEUP_TIME`).
pub fn env_var_name(section: &str, name: &str) -> String {
    fn up(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                '.' | '-' => '_',
                c => c.to_ascii_uppercase(),
            })
            .collect()
    }
    format!("{ENV_PREFIX}{}__{}", up(section), up(name))
}

/// One raw occurrence of a value.
#[derive(Debug, Clone)]
struct Occurrence {
    text: String,
    origin: Origin,
}

/// An option slot: a definition placed in a section (store options appear in several).
#[derive(Debug, Clone, Copy)]
struct Slot {
    def: &'static OptionDef,
}

struct Loader<'a> {
    req: &'a LoadRequest,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    notes: Vec<Diagnostic>,
    /// (section, name) → definition, including store options in backend sections.
    slots: BTreeMap<(String, String), Slot>,
    /// (section, name) → occurrences under the option's own name, file order.
    direct: BTreeMap<(String, String), Vec<Occurrence>>,
    /// (section, name) → occurrences under a deprecated alias, file order.
    aliased: BTreeMap<(String, String), Vec<Occurrence>>,
    /// Every raw key of the files, including unknown ones (for interpolation).
    raw_keys: BTreeMap<(String, String), Occurrence>,
    /// (section, name) → environment override.
    env: BTreeMap<(String, String), Occurrence>,
    /// Options whose value was refused; checks that involve them are skipped.
    failed: BTreeSet<(String, String)>,
}

/// Load and validate the configuration described by `req`.
///
/// Every problem is collected; the result is an error when any problem concerns an option the
/// daemon uses (or the files themselves). Problems with options imaged does not use are warnings.
pub fn load(req: &LoadRequest) -> Result<Loaded, ConfigErrors> {
    let (files, file_errors) = req.resolve_files();
    let mut l = Loader {
        req,
        errors: file_errors,
        warnings: Vec::new(),
        notes: Vec::new(),
        slots: options::all()
            .map(|d| ((d.section.to_owned(), d.name.to_owned()), Slot { def: d }))
            .collect(),
        direct: BTreeMap::new(),
        aliased: BTreeMap::new(),
        raw_keys: BTreeMap::new(),
        env: BTreeMap::new(),
        failed: BTreeSet::new(),
    };

    let mut parsed = Vec::new();
    for path in &files {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let (file, errs) = ini::parse(path, &text);
                for e in errs {
                    l.errors.push(Diagnostic::new(e.message).at(Origin::File {
                        path: path.clone(),
                        line: e.line,
                    }));
                }
                parsed.push(file);
            }
            Err(e) => l.errors.push(Diagnostic::new(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    l.add_store_sections(&parsed);
    l.collect_env();
    l.collect_files(&parsed);
    let entries = l.resolve_all();
    l.check_fatal_deprecations(&entries);
    l.check_secret_permissions(&parsed, &entries);
    let config = Config::new(req.daemon, entries);
    l.cross_checks(&config);

    // Report in reading order: file by file, line by line, then environment, then global.
    let order = |d: &Diagnostic| match &d.origin {
        Some(Origin::File { path, line }) => (
            0,
            files.iter().position(|f| f == path).unwrap_or(usize::MAX),
            *line,
        ),
        Some(Origin::Env { .. }) => (1, 0, 0),
        Some(Origin::Default) | None => (2, 0, 0),
    };
    l.errors.sort_by_key(order);
    l.warnings.sort_by_key(order);
    l.notes.sort_by_key(order);

    if l.errors.is_empty() {
        let dirs = if req.config_files.is_empty() && req.config_dirs.is_empty() {
            vec![req.default_dir.clone()]
        } else {
            req.config_dirs.clone()
        };
        Ok(Loaded {
            config,
            warnings: l.warnings,
            notes: l.notes,
            files,
            dirs,
        })
    } else {
        Err(ConfigErrors {
            errors: l.errors,
            warnings: l.warnings,
        })
    }
}

fn suggest<'b>(word: &str, candidates: impl Iterator<Item = &'b str>) -> Option<&'b str> {
    // Strict on purpose: Glance files hold many real options that imaged does not define and
    // that share long prefixes with ones it does (`filesystem_store_metadata_file` next to
    // `filesystem_store_datadir`); only near-identical names are likely typos.
    let limit = if word.len() <= 5 { 1 } else { 2 };
    candidates
        .map(|c| (c, strsim::damerau_levenshtein(word, c)))
        .filter(|(_, d)| *d > 0 && *d <= limit)
        .min_by_key(|(_, d)| *d)
        .map(|(c, _)| c)
}

impl Loader<'_> {
    fn used(&self, def: &OptionDef) -> bool {
        def.used_by_daemon(self.req.daemon)
    }

    /// Multi-store backend sections come from `[DEFAULT] enabled_backends`, so that value is
    /// looked at (environment first, then the last file occurrence) before anything else.
    fn add_store_sections(&mut self, parsed: &[ini::IniFile]) {
        let var = env_var_name("DEFAULT", "enabled_backends");
        let text = self.req.env.get(&var).cloned().or_else(|| {
            parsed
                .iter()
                .flat_map(|f| f.entries.iter())
                .rfind(|e| e.section == "DEFAULT" && e.key == "enabled_backends")
                .map(|e| e.value.clone())
        });
        let mut sections: Vec<String> = RESERVED_STORE_SECTIONS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if let Some(Ok(Value::Dict(pairs))) = text.map(|t| value::parse(&Kind::Dict, &t)) {
            sections.extend(pairs.into_iter().map(|(k, _)| ini::normalize_section(&k)));
        }
        for s in sections {
            if options::find(&s, "filesystem_store_datadir").is_some() {
                continue;
            }
            for def in options::all().filter(|d| d.store_opt) {
                self.slots
                    .insert((s.clone(), def.name.to_owned()), Slot { def });
            }
        }
    }

    fn collect_env(&mut self) {
        let by_var: BTreeMap<String, (String, String)> = self
            .slots
            .keys()
            .map(|(s, n)| (env_var_name(s, n), (s.clone(), n.clone())))
            .collect();
        for (var, text) in &self.req.env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // Variables without the `__` separator belong to other uses of the prefix.
            if !rest.contains("__") {
                continue;
            }
            match by_var.get(var) {
                Some(key) => {
                    self.env.insert(
                        key.clone(),
                        Occurrence {
                            text: text.clone(),
                            origin: Origin::Env { var: var.clone() },
                        },
                    );
                }
                None => {
                    let mut d = Diagnostic::new(
                        "environment variable names no option imaged knows; it is ignored",
                    )
                    .at(Origin::Env { var: var.clone() });
                    if let Some(s) = suggest(var, by_var.keys().map(String::as_str)) {
                        d.message = format!("{}; did you mean {s}?", d.message);
                    }
                    self.warnings.push(d);
                }
            }
        }
    }

    fn collect_files(&mut self, parsed: &[ini::IniFile]) {
        let mut unknown_sections: BTreeSet<String> = BTreeSet::new();
        for file in parsed {
            for s in &file.sections {
                let known = self.slots.keys().any(|(sec, _)| sec == s)
                    || options::all().any(|d| d.alias.is_some_and(|(a, _)| a == s));
                if !known && unknown_sections.insert(s.clone()) {
                    let known_sections: BTreeSet<&str> =
                        self.slots.keys().map(|(sec, _)| sec.as_str()).collect();
                    let close = suggest(s, known_sections.into_iter())
                        .filter(|c| s.starts_with("imaged") || options::is_owned_section(c))
                        .map(str::to_owned);
                    match close {
                        Some(c) => self.warnings.push(
                            Diagnostic::new(format!(
                                "unknown section in {}; did you mean [{c}]? Its options are ignored",
                                file.path.display()
                            ))
                            .section(s),
                        ),
                        None => self.notes.push(
                            Diagnostic::new(format!(
                                "section in {} accepted, not used by imaged",
                                file.path.display()
                            ))
                            .section(s),
                        ),
                    }
                }
            }
            for e in &file.entries {
                let origin = Origin::File {
                    path: file.path.clone(),
                    line: e.line,
                };
                let occ = Occurrence {
                    text: e.value.clone(),
                    origin: origin.clone(),
                };
                let key = (e.section.clone(), e.key.clone());
                self.raw_keys.insert(key.clone(), occ.clone());
                if self.slots.contains_key(&key) {
                    self.direct.entry(key).or_default().push(occ);
                } else if let Some(def) = options::find_alias(&e.section, &e.key) {
                    self.warnings.push(
                        Diagnostic::new(format!(
                            "deprecated name; use [{}] {} instead",
                            def.section, def.name
                        ))
                        .option(&e.section, &e.key)
                        .at(origin),
                    );
                    self.aliased
                        .entry((def.section.to_owned(), def.name.to_owned()))
                        .or_default()
                        .push(occ);
                } else if !unknown_sections.contains(&e.section) {
                    self.unknown_option(&e.section, &e.key, origin);
                }
            }
        }
    }

    fn unknown_option(&mut self, section: &str, key: &str, origin: Origin) {
        let in_section = self
            .slots
            .keys()
            .filter(|(s, _)| s == section)
            .map(|(_, n)| n.as_str());
        let suggestion = suggest(key, in_section);
        let elsewhere: Vec<&str> = options::all()
            .filter(|d| d.name == key && d.section != section)
            .map(|d| d.section)
            .collect();
        let owned = options::is_owned_section(section)
            || self
                .slots
                .keys()
                .any(|(s, n)| s == section && n == "filesystem_store_datadir");
        let diag = Diagnostic::new("").option(section, key).at(origin);
        if let Some(s) = suggestion.filter(|_| owned) {
            self.warnings.push(Diagnostic {
                message: format!("unknown option; did you mean `{s}`?"),
                ..diag
            });
        } else if !elsewhere.is_empty() && owned {
            self.warnings.push(Diagnostic {
                message: format!(
                    "unknown option in this section; it is read only from [{}]",
                    elsewhere.join("], [")
                ),
                ..diag
            });
        } else if section.starts_with("imaged") {
            self.warnings.push(Diagnostic {
                message: "unknown option".to_owned(),
                ..diag
            });
        } else {
            self.notes.push(Diagnostic {
                message: "option accepted, not used by imaged".to_owned(),
                ..diag
            });
        }
    }

    /// The winning raw occurrence(s) of a slot: environment, else the option's own name in the
    /// files, else its deprecated alias. A multi-valued option collects every file occurrence.
    fn raw(&self, key: &(String, String), multi: bool) -> Option<Vec<Occurrence>> {
        if let Some(e) = self.env.get(key) {
            return Some(vec![e.clone()]);
        }
        let occ = self
            .direct
            .get(key)
            .filter(|v| !v.is_empty())
            .or_else(|| self.aliased.get(key).filter(|v| !v.is_empty()))?;
        if multi {
            Some(occ.clone())
        } else {
            occ.last().map(|o| vec![o.clone()])
        }
    }

    /// The uninterpolated text a `$name` reference stands for.
    fn lookup_text(&self, section: &str, name: &str) -> Option<(String, String, String)> {
        let candidates: Vec<(String, String)> = match name.split_once('.') {
            Some((s, n)) => vec![(ini::normalize_section(s), n.to_owned())],
            None => vec![
                (section.to_owned(), name.to_owned()),
                ("DEFAULT".to_owned(), name.to_owned()),
            ],
        };
        for key in candidates {
            if let Some(o) = self.raw(&key, false).and_then(|v| v.into_iter().last()) {
                return Some((key.0, key.1, o.text));
            }
            if let Some(o) = self.raw_keys.get(&key) {
                return Some((key.0, key.1, o.text.clone()));
            }
            if let Some(slot) = self.slots.get(&key) {
                return Some((key.0, key.1, slot.def.default.unwrap_or("").to_owned()));
            }
        }
        None
    }

    /// Expand `$name`, `${name}` and `${section.name}`; `$$` is a literal `$`. A name is looked
    /// up in the value's own section, then in `[DEFAULT]`, as oslo.config does.
    fn interpolate(
        &self,
        section: &str,
        text: &str,
        stack: &mut Vec<(String, String)>,
    ) -> Result<String, String> {
        if !text.contains('$') {
            return Ok(text.to_owned());
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(r) = after.strip_prefix('$') {
                out.push('$');
                rest = r;
                continue;
            }
            let (name, consumed) = if let Some(inner) = after.strip_prefix('{') {
                match inner.find('}') {
                    Some(end) => (&inner[..end], end + 2),
                    None => return Err("unterminated `${` in value".to_owned()),
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                    .unwrap_or(after.len());
                // A trailing dot ends a sentence, not a section.name reference.
                let name = after[..end].trim_end_matches('.');
                (name, name.len())
            };
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !valid {
                // oslo leaves a `$` that starts no name as it is.
                out.push('$');
                rest = after;
                continue;
            }
            let Some((s, n, raw)) = self.lookup_text(section, name) else {
                return Err(format!(
                    "`${name}` refers to no option (use `$$` for a literal `$`)"
                ));
            };
            if stack.contains(&(s.clone(), n.clone())) {
                return Err(format!("`${name}` refers back to itself"));
            }
            stack.push((s.clone(), n));
            let expanded = self.interpolate(&s, &raw, stack);
            stack.pop();
            out.push_str(&expanded?);
            rest = &after[consumed..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Report a value problem: an error for options the daemon uses, a warning otherwise.
    fn value_problem(&mut self, def: &OptionDef, diag: Diagnostic) {
        if self.used(def) {
            self.errors.push(diag);
        } else {
            self.warnings.push(Diagnostic {
                message: format!("{} (option not used by imaged; ignored)", diag.message),
                ..diag
            });
        }
    }

    fn resolve_all(&mut self) -> BTreeMap<(String, String), Entry> {
        let keys: Vec<((String, String), Slot)> =
            self.slots.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let mut entries = BTreeMap::new();
        for (key, slot) in keys {
            let entry = self.resolve_one(&key, slot.def);
            entries.insert(key, entry);
        }
        entries
    }

    fn default_entry(def: &'static OptionDef) -> Entry {
        let value = match def.default {
            Some(t) => value::parse(&def.kind, t).unwrap_or(Value::Unset),
            None => Value::Unset,
        };
        Entry {
            def,
            value,
            origin: Origin::Default,
            raw: def.default.map(str::to_owned),
        }
    }

    fn resolve_one(&mut self, key: &(String, String), def: &'static OptionDef) -> Entry {
        let multi = matches!(def.kind, Kind::MultiStr);
        let Some(occs) = self.raw(key, multi) else {
            return Self::default_entry(def);
        };
        let mut values: Vec<String> = Vec::new();
        let mut value = Value::Unset;
        let mut ok = true;
        let origin = occs
            .last()
            .map(|o| o.origin.clone())
            .unwrap_or(Origin::Default);
        let mut raw_texts = Vec::new();
        for occ in &occs {
            // An environment value for a multi-valued option holds one value per line.
            let texts: Vec<&str> = if multi && matches!(occ.origin, Origin::Env { .. }) {
                occ.text.lines().collect()
            } else {
                vec![occ.text.as_str()]
            };
            for text in texts {
                raw_texts.push(text.to_owned());
                let shown = if def.secret {
                    "****".to_owned()
                } else {
                    mask_url(text)
                };
                let base = Diagnostic::new("")
                    .option(&key.0, &key.1)
                    .at(occ.origin.clone())
                    .value(shown);
                let expanded = match self.interpolate(&key.0, text, &mut vec![key.clone()]) {
                    Ok(t) => t,
                    Err(msg) => {
                        self.value_problem(
                            def,
                            Diagnostic {
                                message: msg,
                                ..base
                            },
                        );
                        ok = false;
                        continue;
                    }
                };
                match value::parse(&def.kind, &expanded) {
                    Ok(Value::List(items)) if multi => values.extend(items),
                    Ok(v) => value = v,
                    Err(expected) => {
                        self.value_problem(
                            def,
                            Diagnostic {
                                message: format!("invalid value; expected {expected}"),
                                ..base
                            },
                        );
                        ok = false;
                    }
                }
            }
        }
        if !ok {
            self.failed.insert(key.clone());
            return Self::default_entry(def);
        }
        if multi && !values.is_empty() {
            value = Value::List(values);
        }
        if let Some(reason) = def.deprecated {
            self.warnings.push(
                Diagnostic::new(format!("deprecated option: {reason}"))
                    .option(&key.0, &key.1)
                    .at(origin.clone()),
            );
        }
        if value == Value::Unset && def.default.is_some() {
            // An explicit `None` for an option that has a default keeps the default: the
            // daemons never run with an undefined interval, size or limit.
            let mut e = Self::default_entry(def);
            e.origin = origin;
            return e;
        }
        Entry {
            def,
            value,
            origin,
            raw: Some(raw_texts.join("\n")),
        }
    }

    fn check_fatal_deprecations(&mut self, entries: &BTreeMap<(String, String), Entry>) {
        let fatal = entries
            .get(&("DEFAULT".to_owned(), "fatal_deprecations".to_owned()))
            .is_some_and(|e| e.value == Value::Bool(true));
        if !fatal {
            return;
        }
        let (dep, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.warnings)
            .into_iter()
            .partition(|w| w.message.starts_with("deprecated"));
        self.warnings = keep;
        self.errors.extend(dep.into_iter().map(|d| Diagnostic {
            message: format!("{} (fatal because fatal_deprecations is set)", d.message),
            ..d
        }));
    }

    fn check_secret_permissions(
        &mut self,
        parsed: &[ini::IniFile],
        entries: &BTreeMap<(String, String), Entry>,
    ) {
        use std::os::unix::fs::PermissionsExt;
        for file in parsed {
            let holds_secret = file.entries.iter().any(|e| {
                entries
                    .get(&(e.section.clone(), e.key.clone()))
                    .is_some_and(|en| {
                        let v = e.value.trim();
                        (en.def.secret && !v.is_empty() && v != "<None>")
                            || (en.def.url_credentials && mask_url(&e.value) != e.value)
                    })
            });
            if !holds_secret {
                continue;
            }
            if let Ok(meta) = std::fs::metadata(&file.path)
                && meta.permissions().mode() & 0o004 != 0
            {
                self.warnings.push(Diagnostic::new(format!(
                    "{} holds a secret and is readable by every user (mode {:o}); \
                     restrict it, e.g. chmod o-rwx",
                    file.path.display(),
                    meta.permissions().mode() & 0o777
                )));
            }
        }
    }

    /// Checks that involve more than one option or the daemon's needs.
    fn cross_checks(&mut self, config: &Config) {
        let Some(daemon) = self.req.daemon else {
            return;
        };
        let failed = |s: &str, n: &str| self.failed.contains(&(s.to_owned(), n.to_owned()));
        let missing = |s: &str, n: &str, why: &str| {
            (!failed(s, n)).then(|| Diagnostic::new(format!("must be set: {why}")).option(s, n))
        };
        let mut found = Vec::new();
        // The cache daemon with the node-local sqlite driver never needs the catalog, just
        // as glance-cache-pruner/cleaner do not.
        let catalog_optional = daemon == Daemon::Cache && config.cache().driver != "centralized_db";
        if config.database().connection.is_none() && !catalog_optional {
            found.extend(missing(
                "database",
                "connection",
                "the daemons work on the Glance catalog database",
            ));
        }
        if daemon == Daemon::Cache {
            let cache = config.cache();
            if cache.dir.is_none() {
                found.extend(missing(
                    "DEFAULT",
                    "image_cache_dir",
                    "the cache daemon needs the image cache directory",
                ));
            }
            if cache.driver == "centralized_db" && cache.worker_self_reference_url.is_none() {
                found.extend(missing(
                    "DEFAULT",
                    "worker_self_reference_url",
                    "the centralized_db cache driver identifies this node by it",
                ));
            }
        }
        if daemon == Daemon::Tasks {
            found.extend(import_plugin_checks(config, &failed));
        }
        let store = config.glance_store();
        if !store.enabled_backends.is_empty()
            && let Some(b) = &store.default_backend
            && !store.enabled_backends.iter().any(|(n, _)| n == b)
        {
            found.push(
                Diagnostic::new(format!(
                    "names no backend of [DEFAULT] enabled_backends ({})",
                    store
                        .enabled_backends
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .option("glance_store", "default_backend")
                .value(b.clone())
                .at(config
                    .origin("glance_store", "default_backend")
                    .cloned()
                    .unwrap_or(Origin::Default)),
            );
        }
        self.errors.extend(found);
    }
}

/// The task executor's import plugin options: every name in `image_import_plugins` must be a
/// plugin imaged implements (Glance would only fail the first import that loads it), and
/// `inject` may not name a reserved `os_glance*` property, which no import may write.
fn import_plugin_checks(config: &Config, failed: &dyn Fn(&str, &str) -> bool) -> Vec<Diagnostic> {
    let mut found = Vec::new();
    let origin = |s: &str, n: &str| config.origin(s, n).cloned().unwrap_or(Origin::Default);
    let task = config.task();
    let (s, n) = ("image_import_opts", "image_import_plugins");
    if !failed(s, n) {
        for name in &task.image_import_plugins {
            if options::IMPORT_PLUGINS.contains(&name.as_str()) {
                continue;
            }
            let hint = suggest(name, options::IMPORT_PLUGINS.iter().copied())
                .map(|c| format!("; did you mean {c:?}?"))
                .unwrap_or_default();
            found.push(
                Diagnostic::new(format!(
                    "unknown import plugin {name:?}; imaged implements {}{hint}",
                    options::IMPORT_PLUGINS.join(", ")
                ))
                .option(s, n)
                .value(name.clone())
                .at(origin(s, n)),
            );
        }
    }
    let (s, n) = ("inject_metadata_properties", "inject");
    if !failed(s, n) {
        for (key, _) in &task.inject_properties {
            if key.starts_with(options::RESERVED_PROPERTY_PREFIX) {
                found.push(
                    Diagnostic::new(format!(
                        "property {key:?} is reserved: keys starting with {} are set only by \
                         Glance itself and are never injected",
                        options::RESERVED_PROPERTY_PREFIX
                    ))
                    .option(s, n)
                    .value(key.clone())
                    .at(origin(s, n)),
                );
            }
        }
    }
    found
}

/// Replace the password of `scheme://user:password@host…` URLs with `****`.
pub fn mask_url(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let auth_start = scheme_end + 3;
    let rest = &text[auth_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return text.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return text.to_owned();
    };
    format!(
        "{}{}:****{}",
        &text[..auth_start],
        &userinfo[..colon],
        &text[auth_start + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert_eq!(
            env_var_name("DEFAULT", "wakeup_time"),
            "IMAGED_DEFAULT__WAKEUP_TIME"
        );
        assert_eq!(
            env_var_name("database", "connection"),
            "IMAGED_DATABASE__CONNECTION"
        );
        assert_eq!(
            env_var_name("cors.subdomain", "max_age"),
            "IMAGED_CORS_SUBDOMAIN__MAX_AGE"
        );
        assert_eq!(env_var_name("my-store", "x"), "IMAGED_MY_STORE__X");
    }

    #[test]
    fn url_masking() {
        assert_eq!(
            mask_url("mysql+pymysql://glance:secret@db/glance"),
            "mysql+pymysql://glance:****@db/glance"
        );
        assert_eq!(
            mask_url("postgresql://u:p@ss@h:5432/d?x=1"),
            "postgresql://u:****@h:5432/d?x=1"
        );
        assert_eq!(
            mask_url("sqlite:////var/lib/glance/glance.sqlite"),
            "sqlite:////var/lib/glance/glance.sqlite"
        );
        assert_eq!(mask_url("mysql://user@db/glance"), "mysql://user@db/glance");
        assert_eq!(mask_url("plain text"), "plain text");
    }

    #[test]
    fn suggestions() {
        let names = ["scrub_time", "scrub_pool_size", "wakeup_time"];
        assert_eq!(
            suggest("scrub_tme", names.iter().copied()),
            Some("scrub_time")
        );
        assert_eq!(
            suggest("wakup_time", names.iter().copied()),
            Some("wakeup_time")
        );
        assert_eq!(suggest("bind_host", names.iter().copied()), None);
        let store = [
            "filesystem_store_datadir",
            "filesystem_store_datadirs",
            "filesystem_store_file_perm",
            "s3_store_host",
            "s3_store_bucket",
            "s3_store_region_name",
        ];
        for real_glance_option in [
            "filesystem_store_metadata_file",
            "filesystem_store_chunk_size",
            "s3_store_large_object_size",
            "s3_store_thread_pools",
            "rbd_store_pool",
        ] {
            assert_eq!(suggest(real_glance_option, store.iter().copied()), None);
        }
        assert_eq!(
            suggest("filesystem_store_datadri", store.iter().copied()),
            Some("filesystem_store_datadir")
        );
    }
}
