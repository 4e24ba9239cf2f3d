//! End-to-end tests of the loader on real files in a temporary directory.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imaged_config::{
    ConfigErrors, Daemon, Diagnostic, LoadRequest, Loaded, Origin, Schedule, Value, diff, load,
    render_show,
};

const DB: &str = "[database]\nconnection = sqlite:////var/lib/glance/glance.sqlite\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    p
}

fn request(daemon: Daemon, files: &[&PathBuf]) -> LoadRequest {
    let mut r = LoadRequest::new(Some(daemon));
    r.config_files = files.iter().map(|p| (*p).clone()).collect();
    r
}

fn ok(r: Result<Loaded, ConfigErrors>) -> Loaded {
    match r {
        Ok(l) => l,
        Err(e) => panic!("expected success, got:\n{e}"),
    }
}

fn err(r: Result<Loaded, ConfigErrors>) -> Vec<Diagnostic> {
    match r {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.errors,
    }
}

fn file_origin(path: &Path, line: usize) -> Origin {
    Origin::File {
        path: path.to_owned(),
        line,
    }
}

fn has(diags: &[Diagnostic], needle: &str) -> bool {
    diags.iter().any(|d| d.to_string().contains(needle))
}

#[test]
fn value_syntaxes_through_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "a.conf",
        "[DEFAULT]\n\
         debug = YES\n\
         use_stderr = off\n\
         user_storage_quota = 5GB\n\
         default_log_levels = a=WARN ,  b=INFO,c=DEBUG\n\
         image_size_cap = 1024\n\
         log_file = <None>\n\
         enabled_import_methods = [web-download]\n\
         [database]\n\
         connection = sqlite:////tmp/g.sqlite\n\
         max_pool_size = None\n\
         [glance_store]\n\
         filesystem_store_datadirs = /a:100\n\
         filesystem_store_datadirs = /b:200\n\
         [import_filtering_opts]\n\
         allowed_ports = [8765]\n\
         [IMAGED_CACHE]\n\
         low_water_mark = 512MB\n\
         prune_schedule = */10 * * * *\n",
    );
    let l = ok(load(&request(Daemon::Tasks, &[&f])));
    let c = &l.config;
    assert!(c.logging().debug);
    assert!(!c.logging().use_stderr);
    assert_eq!(
        c.logging().default_log_levels,
        ["a=WARN", "b=INFO", "c=DEBUG"]
    );
    assert_eq!(c.logging().log_file, None);
    assert_eq!(c.task().user_storage_quota, 5 << 30);
    assert_eq!(c.task().image_size_cap, 1024);
    assert_eq!(c.task().enabled_import_methods, ["web-download"]);
    assert_eq!(c.task().import_filtering.allowed_ports, [8765]);
    assert_eq!(c.database().max_pool_size, None);
    assert_eq!(
        c.glance_store().single.filesystem_store_datadirs,
        ["/a:100", "/b:200"]
    );
    assert_eq!(c.cache().low_water_mark, 512 << 20);
    assert_eq!(
        c.cache().prune_schedule,
        Schedule::Cron("*/10 * * * *".to_owned())
    );
    assert_eq!(c.origin("DEFAULT", "debug"), Some(&file_origin(&f, 2)));
    assert_eq!(c.origin("DEFAULT", "workers"), Some(&Origin::Default));
}

#[test]
fn multi_valued_options_collect_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "a.conf",
        "[glance_store]\nfilesystem_store_datadirs = /a\n",
    );
    let b = write(
        dir.path(),
        "b.conf",
        &format!(
            "{DB}[glance_store]\nfilesystem_store_datadirs = /b\nfilesystem_store_datadirs = /c\n"
        ),
    );
    let l = ok(load(&request(Daemon::Scrubber, &[&a, &b])));
    assert_eq!(
        l.config.glance_store().single.filesystem_store_datadirs,
        ["/a", "/b", "/c"]
    );
    // The option is deprecated by glance_store.
    assert!(has(&l.warnings, "deprecated option"));
}

#[test]
fn interpolation() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "a.conf",
        "[DEFAULT]\n\
         base = /srv/glance\n\
         image_cache_dir = $base/cache\n\
         log_dir = ${base}/log\n\
         log_date_format = 100$$ %Y\n\
         [database]\n\
         host = db.example\n\
         connection = mysql+pymysql://glance:pw@${host}/glance\n\
         [task]\n\
         work_dir = ${DEFAULT.base}/work\n\
         [glance_store]\n\
         filesystem_store_datadir = $image_cache_dir/../images\n",
    );
    let l = ok(load(&request(Daemon::Cache, &[&f])));
    let c = &l.config;
    assert_eq!(c.cache().dir, Some(PathBuf::from("/srv/glance/cache")));
    assert_eq!(c.logging().log_dir, Some(PathBuf::from("/srv/glance/log")));
    assert_eq!(c.logging().log_date_format, "100$ %Y");
    assert_eq!(
        c.database().connection.as_deref(),
        Some("mysql+pymysql://glance:pw@db.example/glance")
    );
    assert_eq!(c.task().work_dir, Some(PathBuf::from("/srv/glance/work")));
    // A name not found in the section falls back to [DEFAULT], recursively expanded.
    assert_eq!(
        c.glance_store().single.filesystem_store_datadir,
        PathBuf::from("/srv/glance/cache/../images")
    );
}

#[test]
fn interpolation_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "a.conf",
        &format!("{DB}[DEFAULT]\nimage_cache_dir = $nowhere/cache\nlog_dir = $log_dir/x\n"),
    );
    let errors = err(load(&request(Daemon::Cache, &[&f])));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(errors[0].origin, Some(file_origin(&f, 4)));
    assert_eq!(errors[0].option.as_deref(), Some("image_cache_dir"));
    assert!(errors[0].message.contains("$nowhere"), "{}", errors[0]);
    assert_eq!(errors[1].origin, Some(file_origin(&f, 5)));
    assert!(errors[1].message.contains("itself"), "{}", errors[1]);
}

#[test]
fn error_values_of_secrets_are_masked() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "a.conf",
        "[database]\nconnection = mysql+pymysql://glance:hunter2@$dbhost/glance\n",
    );
    let errors = err(load(&request(Daemon::Scrubber, &[&f])));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].value.as_deref(),
        Some("mysql+pymysql://glance:****@$dbhost/glance")
    );
    assert!(!errors[0].to_string().contains("hunter2"));
}

#[test]
fn layering_files_dirs_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let confd = dir.path().join("conf.d");
    std::fs::create_dir(&confd).unwrap();
    let first = write(
        dir.path(),
        "first.conf",
        &format!(
            "{DB}[DEFAULT]\nscrub_time = 1\nwakeup_time = 1\nscrub_pool_size = 1\ndebug = true\n"
        ),
    );
    let second = write(
        dir.path(),
        "second.conf",
        "[DEFAULT]\nscrub_time = 2\nwakeup_time = 2\nscrub_pool_size = 2\n",
    );
    // Sorted order inside the directory: a.conf before b.conf; other names are ignored.
    write(
        &confd,
        "b.conf",
        "[DEFAULT]\nwakeup_time = 4\nscrub_pool_size = 4\n",
    );
    write(
        &confd,
        "a.conf",
        "[DEFAULT]\nwakeup_time = 3\nscrub_pool_size = 3\n",
    );
    write(&confd, "c.conf.bak", "[DEFAULT]\nscrub_pool_size = 99\n");
    let mut req = request(Daemon::Scrubber, &[&first, &second]);
    req.config_dirs = vec![confd.clone()];
    req.env = BTreeMap::from([("IMAGED_DEFAULT__SCRUB_POOL_SIZE".to_owned(), "5".to_owned())]);
    let l = ok(load(&req));
    let s = l.config.scrubber();
    assert_eq!(s.scrub_time, Duration::from_secs(2));
    assert_eq!(s.wakeup_time, Duration::from_secs(4));
    assert_eq!(s.pool_size, 5);
    assert!(l.config.logging().debug);
    assert_eq!(
        l.config.origin("DEFAULT", "scrub_time"),
        Some(&file_origin(&second, 2))
    );
    assert_eq!(
        l.config.origin("DEFAULT", "wakeup_time"),
        Some(&file_origin(&confd.join("b.conf"), 2))
    );
    assert_eq!(
        l.config.origin("DEFAULT", "scrub_pool_size"),
        Some(&Origin::Env {
            var: "IMAGED_DEFAULT__SCRUB_POOL_SIZE".to_owned()
        })
    );
    assert_eq!(
        l.files,
        vec![first, second, confd.join("a.conf"), confd.join("b.conf")]
    );
    assert_eq!(l.dirs, vec![confd.clone()]);
}

#[test]
fn default_files_when_no_flag_is_given() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "imaged.conf",
        &format!("{DB}[DEFAULT]\nwakeup_time = 7\nscrub_time = 7\n"),
    );
    write(dir.path(), "scrubber.conf", "[DEFAULT]\nwakeup_time = 8\n");
    write(dir.path(), "cache.conf", "[DEFAULT]\nscrub_time = 9\n");
    let mut req = LoadRequest::new(Some(Daemon::Scrubber));
    req.default_dir = dir.path().to_owned();
    let l = ok(load(&req));
    assert_eq!(l.config.scrubber().wakeup_time, Duration::from_secs(8));
    assert_eq!(l.config.scrubber().scrub_time, Duration::from_secs(7));
    assert_eq!(
        l.files,
        vec![
            dir.path().join("imaged.conf"),
            dir.path().join("scrubber.conf")
        ]
    );
    assert_eq!(l.dirs, vec![dir.path().to_owned()]);
}

#[test]
fn missing_explicit_files_and_dirs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(Daemon::Scrubber, &[&dir.path().join("nope.conf")]);
    req.config_dirs = vec![dir.path().join("nodir")];
    let errors = err(load(&req));
    assert!(has(&errors, "nope.conf does not exist"), "{errors:#?}");
    assert!(has(&errors, "nodir cannot be read"), "{errors:#?}");
}

#[test]
fn environment_overrides_default_section_and_reports_problems() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "a.conf",
        &format!("{DB}[DEFAULT]\nwakeup_time = 10\n"),
    );
    let mut req = request(Daemon::Scrubber, &[&f]);
    req.env = BTreeMap::from([
        ("IMAGED_DEFAULT__WAKEUP_TIME".to_owned(), "60".to_owned()),
        (
            "IMAGED_DATABASE__CONNECTION".to_owned(),
            "postgresql://glance:pw@db/glance".to_owned(),
        ),
        ("IMAGED_DEFAULT__SCRUB_TIEM".to_owned(), "5".to_owned()),
        // Not an option variable (no `__`): ignored silently.
        ("IMAGED_TEST_POSTGRES_URL".to_owned(), "x".to_owned()),
    ]);
    let l = ok(load(&req));
    assert_eq!(l.config.scrubber().wakeup_time, Duration::from_secs(60));
    assert_eq!(
        l.config.database().connection.as_deref(),
        Some("postgresql://glance:pw@db/glance")
    );
    assert_eq!(l.warnings.len(), 1, "{:#?}", l.warnings);
    assert!(has(&l.warnings, "did you mean IMAGED_DEFAULT__SCRUB_TIME?"));

    req.env = BTreeMap::from([("IMAGED_DEFAULT__WAKEUP_TIME".to_owned(), "-5".to_owned())]);
    let errors = err(load(&req));
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].origin,
        Some(Origin::Env {
            var: "IMAGED_DEFAULT__WAKEUP_TIME".to_owned()
        })
    );
    assert!(
        errors[0].message.contains("an integer >= 0"),
        "{}",
        errors[0]
    );
}

#[test]
fn all_errors_reported_at_once_with_details() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "bad.conf",
        &format!(
            "{DB}[DEFAULT]\nscrub_pool_size = 0\nwakeup_time = soon\ndaemon = maybe\n\
             [taskflow_executor]\nengine_mode = turbo\n"
        ),
    );
    let errors = err(load(&request(Daemon::Scrubber, &[&f])));
    // engine_mode is a task-executor option: for the scrubber it is only a warning.
    assert_eq!(errors.len(), 3, "{errors:#?}");
    let expect = [
        (4, "scrub_pool_size", "0", "an integer >= 1"),
        (5, "wakeup_time", "soon", "an integer >= 0"),
        (6, "daemon", "maybe", "a boolean"),
    ];
    for (e, (line, opt, val, expected)) in errors.iter().zip(expect) {
        assert_eq!(e.origin, Some(file_origin(&f, line)));
        assert_eq!(e.section.as_deref(), Some("DEFAULT"));
        assert_eq!(e.option.as_deref(), Some(opt));
        assert_eq!(e.value.as_deref(), Some(val));
        assert!(e.message.contains(expected), "{e}");
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!(
                "{}:{line}: [DEFAULT] {opt} = \"{val}\"",
                f.display()
            )),
            "{shown}"
        );
    }

    // The same file for the task executor: engine_mode is now an error too.
    let errors = err(load(&request(Daemon::Tasks, &[&f])));
    assert!(has(&errors, "one of: serial, parallel"), "{errors:#?}");
}

#[test]
fn syntax_errors_are_collected_with_value_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "a.conf",
        &format!("{DB}[DEFAULT\nwakeup_time = x\njunk line\n"),
    );
    let errors = err(load(&request(Daemon::Scrubber, &[&f])));
    let lines: Vec<_> = errors.iter().map(|e| e.origin.clone()).collect();
    assert!(lines.contains(&Some(file_origin(&f, 3))), "{errors:#?}");
    assert!(lines.contains(&Some(file_origin(&f, 5))), "{errors:#?}");
}

#[test]
fn unused_options_bad_values_only_warn() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "a.conf",
        &format!("{DB}[DEFAULT]\napi_limit_max = lots\n[cors]\nallow_credentials = perhaps\n"),
    );
    let l = ok(load(&request(Daemon::Scrubber, &[&f])));
    assert_eq!(l.warnings.len(), 2, "{:#?}", l.warnings);
    assert!(has(&l.warnings, "not used by imaged"));
    // The bad value is replaced by the default.
    assert_eq!(
        l.config.value("DEFAULT", "api_limit_max"),
        Some(&Value::Int(1000))
    );
}

#[test]
fn misspellings_get_did_you_mean_and_default_only_rule() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "a.conf",
        &format!(
            "{DB}[DEFAULT]\nscrub_tme = 5\nsome_glance_api_option = 1\n\
             [database]\nwakeup_time = 5\n\
             [imaged_cache]\nprune_schedul = 60\n\
             [keystone_authtoken]\npassword = x\nauth_url = http://k\n\
             [paste_deploy]\nflavor = keystone\n\
             [default]\nwakeup_time = 9\n"
        ),
    );
    let l = ok(load(&request(Daemon::Scrubber, &[&f])));
    let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 3, "{w:#?}");
    assert!(
        w[0].contains(":4: [DEFAULT] scrub_tme: unknown option; did you mean `scrub_time`?"),
        "{w:#?}"
    );
    assert!(w[1].contains(":7: [database] wakeup_time: unknown option in this section; it is read only from [DEFAULT]"), "{w:#?}");
    assert!(
        w[2].contains(
            "[imaged_cache] prune_schedul: unknown option; did you mean `prune_schedule`?"
        ),
        "{w:#?}"
    );
    // Not applied anywhere: the [DEFAULT] value stays the default.
    assert_eq!(l.config.scrubber().wakeup_time, Duration::from_secs(300));
    // Unknown but plausible options and sections are debug notes only.
    assert!(has(&l.notes, "some_glance_api_option"));
    assert!(has(&l.notes, "[keystone_authtoken] password"));
    assert!(has(&l.notes, "[paste_deploy]"));
    assert!(has(&l.notes, "[default]"));
}

#[test]
fn misspelt_sections_get_did_you_mean() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "a.conf",
        &format!(
            "{DB}[databse]\nmax_pool_size = 5\n[imaged_scruber]\nschedule = 60\n[oslo_messaging_rabbit]\nx = 1\n"
        ),
    );
    let l = ok(load(&request(Daemon::Scrubber, &[&f])));
    let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(
        w[0].starts_with("[databse]: unknown section in ")
            && w[0].contains("did you mean [database]?"),
        "{w:#?}"
    );
    assert!(
        w[1].contains("[imaged_scruber]") && w[1].contains("did you mean [imaged_scrubber]?"),
        "{w:#?}"
    );
    assert!(has(&l.notes, "[oslo_messaging_rabbit]"));
    assert_eq!(l.config.database().max_pool_size, None);
}

#[test]
fn deprecations_warn_and_become_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{DB}[DEFAULT]\ntask_time_to_live = 5\nverbose = true\n");
    let f = write(dir.path(), "a.conf", &text);
    let l = ok(load(&request(Daemon::Tasks, &[&f])));
    assert_eq!(l.config.task().time_to_live, Duration::from_secs(5 * 3600));
    assert!(
        has(&l.warnings, "use [task] task_time_to_live instead"),
        "{:#?}",
        l.warnings
    );
    assert!(
        has(&l.warnings, "[DEFAULT] verbose: deprecated option"),
        "{:#?}",
        l.warnings
    );

    // The new name wins over the deprecated alias.
    let g = write(
        dir.path(),
        "b.conf",
        &format!("{text}[task]\ntask_time_to_live = 7\n"),
    );
    let l = ok(load(&request(Daemon::Tasks, &[&g])));
    assert_eq!(l.config.task().time_to_live, Duration::from_secs(7 * 3600));

    let h = write(
        dir.path(),
        "c.conf",
        &format!("{text}fatal_deprecations = True\n"),
    );
    let errors = err(load(&request(Daemon::Tasks, &[&h])));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors
            .iter()
            .all(|e| e.message.contains("fatal_deprecations"))
    );
}

#[test]
fn required_options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "a.conf",
        "[DEFAULT]\nimage_cache_driver = centralized_db\n",
    );
    let errors = err(load(&request(Daemon::Cache, &[&f])));
    assert!(
        has(&errors, "[database] connection: must be set"),
        "{errors:#?}"
    );
    assert!(
        has(&errors, "[DEFAULT] image_cache_dir: must be set"),
        "{errors:#?}"
    );
    assert!(
        has(&errors, "[DEFAULT] worker_self_reference_url: must be set"),
        "{errors:#?}"
    );
    // Without a daemon only the values themselves are checked.
    let mut req = request(Daemon::Cache, &[&f]);
    req.daemon = None;
    ok(load(&req));
}

#[test]
fn cache_with_the_sqlite_driver_needs_no_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "a.conf",
        "[DEFAULT]\nimage_cache_driver = sqlite\nimage_cache_dir = /var/lib/glance/image-cache\n",
    );
    ok(load(&request(Daemon::Cache, &[&f])));
    let errors = err(load(&request(Daemon::Scrubber, &[&f])));
    assert!(
        has(&errors, "[database] connection: must be set"),
        "{errors:#?}"
    );
}

#[test]
fn multi_store_backend_sections() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "a.conf",
        &format!(
            "{DB}[DEFAULT]\nenabled_backends = fast:file, Cheap:s3\n\
             [glance_store]\ndefault_backend = fast\n\
             [fast]\nfilesystem_store_datadir = /srv/fast\n\
             [cheap]\ns3_store_host = http://127.0.0.1:9000\ns3_store_bucket = images\n\
             s3_store_secret_key = sk\ns3_store_bucket_url_format = path\n\
             [os_glance_staging_store]\nfilesystem_store_datadir = /srv/staging\n"
        ),
    );
    let mut req = request(Daemon::Scrubber, &[&f]);
    req.env = BTreeMap::from([(
        "IMAGED_CHEAP__S3_STORE_ACCESS_KEY".to_owned(),
        "ak".to_owned(),
    )]);
    let l = ok(load(&req));
    assert!(l.warnings.is_empty(), "{:#?}", l.warnings);
    let gs = l.config.glance_store();
    assert_eq!(gs.backends.len(), 2);
    assert_eq!(gs.backends[0].name, "fast");
    assert_eq!(gs.backends[0].store_type, "file");
    assert_eq!(
        gs.backends[0].store.filesystem_store_datadir,
        PathBuf::from("/srv/fast")
    );
    assert_eq!(gs.backends[1].store_type, "s3");
    assert_eq!(gs.backends[1].store.s3_bucket.as_deref(), Some("images"));
    assert_eq!(gs.backends[1].store.s3_access_key.as_deref(), Some("ak"));
    assert_eq!(gs.backends[1].store.s3_bucket_url_format, "path");
    assert_eq!(
        gs.staging_store.filesystem_store_datadir,
        PathBuf::from("/srv/staging")
    );
    let show = render_show(&l.config);
    assert!(show.contains("[cheap]\n"), "{show}");
    assert!(show.contains("s3_store_secret_key = ****"), "{show}");
    assert!(!show.contains("= sk"), "{show}");

    let g = write(
        dir.path(),
        "b.conf",
        &format!(
            "{DB}[DEFAULT]\nenabled_backends = fast:file\n[glance_store]\ndefault_backend = slow\n"
        ),
    );
    let errors = err(load(&request(Daemon::Scrubber, &[&g])));
    assert!(
        has(
            &errors,
            "names no backend of [DEFAULT] enabled_backends (fast)"
        ),
        "{errors:#?}"
    );
}

const GLANCE_API_CONF: &str = r#"[DEFAULT]
bind_host = 0.0.0.0
bind_port = 9292
workers = 4
registry_host = 0.0.0.0
registry_port = 9191
show_image_direct_url = False
enabled_import_methods = [glance-direct,web-download]
transport_url = rabbit://openstack:rabbitpw@controller
image_cache_dir = /var/lib/glance/image-cache
log_file = /var/log/glance/api.log
metadata_encryption_key = 0123456789abcdef

[keystone_authtoken]
www_authenticate_uri = http://controller:5000
auth_url = http://controller:5000
memcached_servers = controller:11211
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = glance
password = GLANCE_PASS

[paste_deploy]
flavor = keystone

[glance_store]
stores = file,http
default_store = file
filesystem_store_datadir = /var/lib/glance/images/

[database]
connection = mysql+pymysql://glance:GLANCE_DBPASS@controller/glance
max_pool_size = 10

[oslo_messaging_notifications]
driver = messagingv2

[oslo_policy]
policy_file = policy.yaml
enforce_new_defaults = true

[profiler]
enabled = false
hmac_keys = SECRET_KEY
trace_sqlalchemy = false

[cors]
allowed_origin = https://dashboard.example.org

[oslo_middleware]
enable_proxy_headers_parsing = true

[wsgi]
python_interpreter = /usr/bin/python3
"#;

const GLANCE_CACHE_CONF: &str = r#"[DEFAULT]
log_file = /var/log/glance/image-cache.log
image_cache_dir = /var/lib/glance/image-cache/
image_cache_stall_time = 3600
image_cache_max_size = 1073741824
registry_host = 0.0.0.0
registry_port = 9191
auth_url = http://localhost:5000/v3/
admin_tenant_name = service
admin_user = glance
admin_password = secret

[oslo_policy]
policy_file = policy.yaml
"#;

const GLANCE_SCRUBBER_CONF: &str = r#"[DEFAULT]
log_file = /var/log/glance/scrubber.log
daemon = true
wakeup_time = 600
scrub_time = 43200
scrub_pool_size = 4
delayed_delete = True

[database]
connection = mysql+pymysql://glance:GLANCE_DBPASS@controller/glance

[glance_store]
stores = file,http
default_store = file
filesystem_store_datadir = /var/lib/glance/images/

[oslo_concurrency]
lock_path = /var/lock/glance
"#;

#[test]
fn glance_api_and_scrubber_pair_loads_unmodified() {
    let dir = tempfile::tempdir().unwrap();
    let api = write(dir.path(), "glance-api.conf", GLANCE_API_CONF);
    let scrub = write(dir.path(), "glance-scrubber.conf", GLANCE_SCRUBBER_CONF);
    let l = ok(load(&request(Daemon::Scrubber, &[&api, &scrub])));
    assert!(l.warnings.is_empty(), "{:#?}", l.warnings);
    let c = &l.config;
    let s = c.scrubber();
    assert!(s.daemon);
    assert_eq!(s.wakeup_time, Duration::from_secs(600));
    assert_eq!(s.schedule, Schedule::Every(Duration::from_secs(600)));
    assert_eq!(s.scrub_time, Duration::from_secs(43200));
    assert_eq!(s.pool_size, 4);
    assert_eq!(
        c.logging().log_file,
        Some(PathBuf::from("/var/log/glance/scrubber.log"))
    );
    assert_eq!(
        c.metadata_encryption_key().as_deref(),
        Some("0123456789abcdef")
    );
    let gs = c.glance_store();
    assert_eq!(gs.stores, ["file", "http"]);
    assert_eq!(
        gs.single.filesystem_store_datadir,
        PathBuf::from("/var/lib/glance/images/")
    );
    assert_eq!(c.database().max_pool_size, Some(10));
    assert!(has(&l.notes, "[oslo_messaging_notifications]"));
    assert!(has(&l.notes, "[paste_deploy]"));
    assert!(has(&l.notes, "transport_url"));

    // The same pair for the cache daemon (glance-api.conf holds image_cache_dir).
    let l = ok(load(&request(Daemon::Cache, &[&api, &scrub])));
    assert_eq!(
        l.config.cache().dir,
        Some(PathBuf::from("/var/lib/glance/image-cache"))
    );
    assert_eq!(
        l.config.cache().lock_path,
        Some(PathBuf::from("/var/lock/glance"))
    );
    assert_eq!(
        l.config.cache().sqlite_db,
        PathBuf::from("/var/lib/glance/image-cache/cache.db")
    );
}

#[test]
fn glance_api_and_cache_pair_loads_unmodified() {
    let dir = tempfile::tempdir().unwrap();
    let api = write(dir.path(), "glance-api.conf", GLANCE_API_CONF);
    let cache = write(dir.path(), "glance-cache.conf", GLANCE_CACHE_CONF);
    let l = ok(load(&request(Daemon::Cache, &[&api, &cache])));
    // Only the deprecated registry credentials of the old glance-cache.conf draw warnings.
    let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 4, "{w:#?}");
    for (warning, opt) in w.iter().zip([
        "auth_url",
        "admin_tenant_name",
        "admin_user",
        "admin_password",
    ]) {
        assert!(
            warning.contains(&format!("[DEFAULT] {opt}: deprecated option")),
            "{warning}"
        );
    }
    let c = l.config.cache();
    assert_eq!(c.dir, Some(PathBuf::from("/var/lib/glance/image-cache/")));
    assert_eq!(c.stall_time, Duration::from_secs(3600));
    assert_eq!(c.max_size, 1 << 30);
    assert_eq!(c.low_water_mark, 1 << 30);
    assert_eq!(c.driver, "sqlite");
    assert_eq!(c.lock_path, c.dir);
    assert_eq!(c.prune_schedule, Schedule::Every(Duration::from_secs(600)));
    assert_eq!(
        l.config.origin("DEFAULT", "image_cache_dir"),
        Some(&file_origin(&cache, 3))
    );
}

#[test]
fn show_masks_secrets_and_names_origins() {
    let dir = tempfile::tempdir().unwrap();
    let api = write(dir.path(), "glance-api.conf", GLANCE_API_CONF);
    let scrub = write(dir.path(), "glance-scrubber.conf", GLANCE_SCRUBBER_CONF);
    let mut req = request(Daemon::Scrubber, &[&api, &scrub]);
    req.env = BTreeMap::from([("IMAGED_DEFAULT__SCRUB_POOL_SIZE".to_owned(), "3".to_owned())]);
    let l = ok(load(&req));
    let show = render_show(&l.config);
    for secret in ["GLANCE_DBPASS", "0123456789abcdef", "SECRET_KEY"] {
        assert!(!show.contains(secret), "{secret} leaked:\n{show}");
    }
    assert!(
        show.contains(&format!(
            "connection = mysql+pymysql://glance:****@controller/glance    # {}:10",
            scrub.display()
        )),
        "{show}"
    );
    assert!(show.contains("metadata_encryption_key = ****"), "{show}");
    assert!(show.contains("hmac_keys = ****"), "{show}");
    assert!(
        show.contains("scrub_pool_size = 3    # environment IMAGED_DEFAULT__SCRUB_POOL_SIZE"),
        "{show}"
    );
    assert!(show.contains("scrub_time = 43200    #"), "{show}");
    assert!(show.contains("wakeup_time = 600    #"), "{show}");
    assert!(
        show.contains("[imaged_scrubber]\nbatch_size = 100    # default"),
        "{show}"
    );
    // Options of other daemons left at their default are not shown; set ones are, marked.
    assert!(!show.contains("image_cache_stall_time"), "{show}");
    assert!(
        show.contains("bind_port = 9292    #") && show.contains("not used by imaged"),
        "{show}"
    );
}

#[test]
fn world_readable_secret_files_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "secret.conf", GLANCE_SCRUBBER_CONF);
    let plain = write(dir.path(), "plain.conf", "[DEFAULT]\nwakeup_time = 5\n");
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let l = ok(load(&request(Daemon::Scrubber, &[&secret, &plain])));
    assert!(l.warnings.is_empty(), "{:#?}", l.warnings);

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let l = ok(load(&request(Daemon::Scrubber, &[&secret, &plain])));
    assert_eq!(l.warnings.len(), 1, "{:#?}", l.warnings);
    let w = l.warnings[0].to_string();
    assert!(w.contains(&secret.display().to_string()), "{w}");
    assert!(w.contains("readable by every user"), "{w}");
}

#[test]
fn reload_applies_live_changes_and_keeps_restart_only_ones() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("scrubber.conf");
    let v1 = format!("{DB}[DEFAULT]\nwakeup_time = 300\nscrub_pool_size = 1\ndebug = false\n");
    std::fs::write(&f, &v1).unwrap();
    let req = request(Daemon::Scrubber, &[&f]);
    let old = ok(load(&req)).config;

    std::fs::write(
        &f,
        "[database]\nconnection = mysql+pymysql://glance:newpw@db2/glance\n\
         [DEFAULT]\nwakeup_time = 60\nscrub_pool_size = 8\ndebug = true\n",
    )
    .unwrap();
    let new = ok(load(&req)).config;
    let plan = diff(&old, &new);
    let applied: Vec<_> = plan.applied.iter().map(|c| c.option.as_str()).collect();
    assert_eq!(
        applied,
        ["debug", "scrub_pool_size", "wakeup_time"],
        "{plan:#?}"
    );
    assert_eq!(plan.needs_restart.len(), 1, "{plan:#?}");
    let c = &plan.needs_restart[0];
    assert_eq!(
        (c.section.as_str(), c.option.as_str()),
        ("database", "connection")
    );
    assert_eq!(c.new, "mysql+pymysql://glance:****@db2/glance");
    assert_eq!(
        plan.applied[2].to_string(),
        format!("[DEFAULT] wakeup_time: 300 -> 60 ({}:4)", f.display())
    );

    let eff = plan.effective(&old, &new);
    assert_eq!(eff.scrubber().wakeup_time, Duration::from_secs(60));
    assert_eq!(eff.scrubber().pool_size, 8);
    assert!(eff.logging().debug);
    assert_eq!(
        eff.database().connection.as_deref(),
        Some("sqlite:////var/lib/glance/glance.sqlite")
    );
    assert!(diff(&eff, &eff).is_empty());

    // An invalid file: the load fails with every error and the caller keeps `eff`.
    std::fs::write(
        &f,
        format!("{DB}[DEFAULT]\nwakeup_time = -1\nscrub_pool_size = x\n"),
    )
    .unwrap();
    let errors = err(load(&req));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(eff.scrubber().wakeup_time, Duration::from_secs(60));
}
