//! Tests of the option registry, the committed sample file and the option table.

use std::collections::BTreeSet;
use std::path::PathBuf;

use imaged_config::options::{self, DefSource};
use imaged_config::{
    Daemon, Kind, LoadRequest, Value, env_var_name, load, render_option_table_markdown,
    render_sample,
};

fn sample_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../etc/imaged.conf.sample")
}

#[test]
fn reference_has_167_options_in_12_sections() {
    let reference = options::reference();
    assert_eq!(reference.len(), 167);
    let sections: BTreeSet<&str> = reference.iter().map(|o| o.section).collect();
    assert_eq!(
        sections.into_iter().collect::<Vec<_>>(),
        [
            "DEFAULT",
            "cors",
            "cors.subdomain",
            "database",
            "glance_store",
            "image_format",
            "keystone_authtoken",
            "matchmaker_redis",
            "oslo_policy",
            "profiler",
            "task",
            "taskflow_executor",
        ]
    );
    assert!(reference.iter().all(|o| o.source == DefSource::Reference));
    assert!(
        options::extra()
            .iter()
            .all(|o| o.source != DefSource::Reference)
    );
    // Per-section counts as the reference lists them.
    let count = |s: &str| reference.iter().filter(|o| o.section == s).count();
    assert_eq!(count("DEFAULT"), 74);
    assert_eq!(count("keystone_authtoken"), 38);
    assert_eq!(count("database"), 20);
    assert_eq!(count("matchmaker_redis"), 8);
    assert_eq!(count("cors"), 6);
    assert_eq!(count("cors.subdomain"), 6);
}

#[test]
fn definitions_are_unique_and_defaults_parse() {
    let mut seen = BTreeSet::new();
    let mut env_names = BTreeSet::new();
    for o in options::all() {
        assert!(
            seen.insert((o.section, o.name)),
            "duplicate [{}] {}",
            o.section,
            o.name
        );
        assert!(
            env_names.insert(env_var_name(o.section, o.name)),
            "environment name clash for [{}] {}",
            o.section,
            o.name
        );
        assert!(!o.help.is_empty(), "[{}] {} has no help", o.section, o.name);
        assert!(
            o.section == "DEFAULT" || o.section == o.section.to_lowercase(),
            "section {} must be lower-case",
            o.section
        );
        if let Some(d) = o.default {
            let v = imaged_config::value::parse(&o.kind, d);
            assert!(v.is_ok(), "[{}] {} default {d:?}: {v:?}", o.section, o.name);
        }
        if o.live || o.unit.is_some() {
            assert!(
                !o.used_by.is_empty(),
                "[{}] {} is live but unused",
                o.section,
                o.name
            );
        }
    }
}

#[test]
fn secrets_are_marked() {
    for (s, n) in [
        ("DEFAULT", "metadata_encryption_key"),
        ("DEFAULT", "admin_password"),
        ("keystone_authtoken", "admin_password"),
        ("keystone_authtoken", "admin_token"),
        ("keystone_authtoken", "memcache_secret_key"),
        ("matchmaker_redis", "password"),
        ("profiler", "hmac_keys"),
        ("glance_store", "s3_store_secret_key"),
    ] {
        assert!(options::find(s, n).is_some_and(|o| o.secret), "[{s}] {n}");
    }
    assert!(options::find("database", "connection").is_some_and(|o| o.url_credentials));
}

#[test]
fn daemon_usage_of_key_options() {
    let used = |s: &str, n: &str, d: Daemon| options::find(s, n).unwrap().used_by.contains(d);
    assert!(used("DEFAULT", "scrub_time", Daemon::Scrubber));
    assert!(!used("DEFAULT", "scrub_time", Daemon::Cache));
    assert!(used("DEFAULT", "image_cache_max_size", Daemon::Cache));
    assert!(used("taskflow_executor", "max_workers", Daemon::Tasks));
    for d in Daemon::ALL {
        assert!(used("database", "connection", d));
    }
    assert!(
        options::find("DEFAULT", "bind_port")
            .unwrap()
            .used_by
            .is_empty()
    );
    assert!(
        options::find("DEFAULT", "delayed_delete")
            .unwrap()
            .used_by
            .is_empty()
    );
}

#[test]
fn committed_sample_is_current() {
    let committed = std::fs::read_to_string(sample_path()).unwrap_or_default();
    assert!(
        committed == render_sample(),
        "etc/imaged.conf.sample is stale; regenerate it with \
         `cargo run -p imaged-config --bin imaged-config-sample`"
    );
}

#[test]
fn sample_lists_every_option_and_its_defaults_load_back() {
    let sample = render_sample();
    // Uncommenting every option line must give a file that loads with the defaults.
    let mut text = String::new();
    let mut count = 0;
    for line in sample.lines() {
        if line.starts_with('[') {
            text.push_str(line);
            text.push('\n');
        } else if let Some(opt) = line.strip_prefix('#')
            && !opt.starts_with([' ', '#'])
            && !opt.is_empty()
        {
            count += 1;
            text.push_str(opt);
            text.push('\n');
        }
    }
    assert_eq!(count, options::all().count());
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("all.conf");
    std::fs::write(&f, text).unwrap();
    // The sample's defaults include secrets (`hmac_keys = SECRET_KEY`): keep the file private.
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut req = LoadRequest::new(None);
    req.config_files = vec![f];
    let loaded = load(&req).unwrap_or_else(|e| panic!("{e}"));
    let deprecated = options::all().filter(|o| o.deprecated.is_some()).count();
    assert_eq!(loaded.warnings.len(), deprecated, "{:#?}", loaded.warnings);
    for o in options::all() {
        let v = loaded.config.value(o.section, o.name).unwrap();
        let expected = match o.default {
            Some(d) => imaged_config::value::parse(&o.kind, d).unwrap(),
            None => Value::Unset,
        };
        assert_eq!(v, &expected, "[{}] {}", o.section, o.name);
    }
}

#[test]
fn markdown_table_has_a_row_per_option() {
    let table = render_option_table_markdown();
    assert_eq!(table.lines().count(), options::all().count() + 2);
    // Every row has the six cells, whatever its help text holds.
    for line in table.lines() {
        let cells = line.replace("\\|", "").matches('|').count();
        assert_eq!(cells, 7, "{line}");
    }
    assert!(table.contains(
        "| `DEFAULT` | `scrub_time` | integer (seconds) | `0` | **scrubber**: \
         The amount of time in seconds to delay before performing a delete. | applied |"
    ));
    assert!(table.contains(
        "| `DEFAULT` | `bind_host` | string | `0.0.0.0` | accepted, not used by imaged | — |"
    ));
    // A note says why an option that sounds relevant is not used.
    assert!(table.contains(
        "| `DEFAULT` | `delayed_delete` | boolean | `False` | accepted, not used by imaged \
         *Only glance-api acts on it; the scrubber ignores it.* | — |"
    ));
    assert!(table.contains(
        "| `database` | `connection` | string | *unset* | **scrubber, cache, tasks**: \
         The SQLAlchemy connection string to use to connect to the database. | restart |"
    ));
    // "e.g." does not cut a help text short.
    let backends = table
        .lines()
        .find(|l| l.starts_with("| `DEFAULT` | `enabled_backends` |"))
        .unwrap();
    assert!(!backends.contains("(e.g. |"), "{backends}");
    // Angle brackets in help text stay visible instead of becoming HTML tags.
    assert!(!table.contains("<version>"));
}

#[test]
fn committed_options_page_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/options.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == imaged_config::render::render_options_page(),
        "docs/options.md is stale; regenerate it with `cargo xtask options`"
    );
}

#[test]
fn kinds_describe_what_they_expect() {
    assert_eq!(
        Kind::Int {
            min: Some(0),
            max: Some(100)
        }
        .expected(),
        "an integer in 0..=100"
    );
    assert_eq!(Kind::Choices(&["a", "b"]).expected(), "one of: a, b");
}

#[test]
fn sample_command_writes_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imaged.conf.sample");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_imaged-config-sample"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), render_sample());
}
