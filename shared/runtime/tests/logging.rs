//! Logging to real files and a real syslog datagram socket.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use imaged_runtime::logging::{self, Destination, JournaldMode, LoggingError, LoggingOptions};

fn file_options(dir: &std::path::Path) -> LoggingOptions {
    LoggingOptions {
        log_file: Some("imaged.log".into()),
        log_dir: Some(dir.to_path_buf()),
        journald: JournaldMode::Never,
        ..LoggingOptions::default()
    }
}

#[test]
fn file_lines_follow_the_oslo_shape_and_levels_filter() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = file_options(dir.path());
    opts.log_date_format = "%Y/%m/%d %H-%M-%S".into();
    opts.default_log_levels = vec!["imaged_catalog=WARN".into(), "amqp=WARN".into()];
    let (sub, handle) = logging::build(&opts, "imaged-test").unwrap();
    assert_eq!(
        handle.destinations(),
        [Destination::File(dir.path().join("imaged.log"))]
    );
    assert_eq!(handle.ignored_levels(), ["amqp=WARN"]);
    tracing::subscriber::with_default(sub, || {
        tracing::info!(target: "imaged_scrubber", image_id = "abc", "scrubbed image");
        tracing::debug!(target: "imaged_scrubber", "hidden at INFO");
        tracing::info!(target: "imaged_catalog", "hidden by imaged_catalog=WARN");
        tracing::warn!(target: "imaged_catalog::pool", "slow query");
    });
    let text = fs::read_to_string(dir.path().join("imaged.log")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let pid = std::process::id().to_string();
    let first: Vec<&str> = lines[0].splitn(6, ' ').collect();
    // <date> <time>.<msec> <pid> <LEVEL> <target> <message and fields>
    assert_eq!(first[0].len(), 10);
    assert_eq!(first[0].matches('/').count(), 2);
    let (time, msec) = first[1].split_once('.').unwrap();
    assert_eq!(time.matches('-').count(), 2);
    assert_eq!(msec.len(), 3);
    assert_eq!(first[2], pid);
    assert_eq!(first[3], "INFO");
    assert_eq!(first[4], "imaged_scrubber");
    assert_eq!(first[5], "scrubbed image image_id=\"abc\"");
    assert!(
        lines[1].ends_with(" WARNING imaged_catalog::pool slow query"),
        "{}",
        lines[1]
    );
}

#[test]
fn level_changes_apply_to_the_live_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let opts = file_options(dir.path());
    let (sub, handle) = logging::build(&opts, "imaged-test").unwrap();
    tracing::subscriber::with_default(sub, || {
        tracing::debug!(target: "imaged_cache", "before");
        handle
            .set_levels(true, &["imaged_store=ERROR".into()])
            .unwrap();
        tracing::debug!(target: "imaged_cache", "after");
        tracing::warn!(target: "imaged_store", "store warning hidden");
        handle.set_levels(false, &[]).unwrap();
        tracing::debug!(target: "imaged_cache", "hidden again");
        tracing::warn!(target: "imaged_store", "store warning shown");
    });
    let text = fs::read_to_string(dir.path().join("imaged.log")).unwrap();
    let messages: Vec<&str> = text
        .lines()
        .map(|l| l.splitn(6, ' ').nth(5).unwrap())
        .collect();
    assert_eq!(messages, ["after", "store warning shown"]);
    assert!(handle.set_levels(false, &["bogus".into()]).is_err());
}

#[test]
fn watched_log_file_is_reopened_after_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = file_options(dir.path());
    opts.watch_log_file = true;
    let path = dir.path().join("imaged.log");
    let rotated = dir.path().join("imaged.log.1");
    let (sub, _handle) = logging::build(&opts, "imaged-test").unwrap();
    tracing::subscriber::with_default(sub, || {
        tracing::info!("line one");
        fs::rename(&path, &rotated).unwrap();
        tracing::info!("line two");
        fs::remove_file(&path).unwrap();
        tracing::info!("line three");
    });
    let old = fs::read_to_string(&rotated).unwrap();
    let new = fs::read_to_string(&path).unwrap();
    assert!(
        old.contains("line one") && !old.contains("line two"),
        "{old}"
    );
    assert!(
        new.contains("line three") && !new.contains("line two"),
        "{new}"
    );
}

#[test]
fn unwatched_log_file_keeps_writing_to_the_moved_file() {
    let dir = tempfile::tempdir().unwrap();
    let opts = file_options(dir.path());
    let path = dir.path().join("imaged.log");
    let rotated = dir.path().join("imaged.log.1");
    let (sub, _handle) = logging::build(&opts, "imaged-test").unwrap();
    tracing::subscriber::with_default(sub, || {
        tracing::info!("line one");
        fs::rename(&path, &rotated).unwrap();
        tracing::info!("line two");
    });
    let old = fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("line one") && old.contains("line two"));
    assert!(!path.exists());
}

#[test]
fn json_lines_parse_with_level_target_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = file_options(dir.path());
    opts.json = true;
    let (sub, _handle) = logging::build(&opts, "imaged-test").unwrap();
    tracing::subscriber::with_default(sub, || {
        tracing::warn!(target: "imaged_tasks", task_id = "t-1", attempts = 3, "import failed");
        tracing::info!(target: "imaged_tasks", "quote \" and\nnewline");
    });
    let text = fs::read_to_string(dir.path().join("imaged.log")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["level"], "WARN");
    assert_eq!(lines[0]["target"], "imaged_tasks");
    assert_eq!(lines[0]["message"], "import failed");
    assert_eq!(lines[0]["task_id"], "t-1");
    assert_eq!(lines[0]["attempts"], 3);
    assert!(
        lines[0]["timestamp"]
            .as_str()
            .is_some_and(|t| t.len() == 19)
    );
    assert_eq!(lines[1]["message"], "quote \" and\nnewline");
}

#[test]
fn syslog_datagrams_are_rfc3164_with_the_configured_facility() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("log");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let opts = LoggingOptions {
        use_syslog: true,
        syslog_log_facility: "LOG_LOCAL3".into(),
        syslog_socket: sock_path.clone(),
        journald: JournaldMode::Never,
        ..LoggingOptions::default()
    };
    let (sub, handle) = logging::build(&opts, "imaged-scrubber").unwrap();
    assert_eq!(handle.destinations(), [Destination::Syslog(sock_path)]);
    tracing::subscriber::with_default(sub, || {
        tracing::warn!(target: "imaged_scrubber", image_id = "i-9", "delete failed");
        tracing::error!(target: "imaged_scrubber", "gave up");
    });
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf).unwrap();
    let first = String::from_utf8(buf[..n].to_vec()).unwrap();
    let n = sock.recv(&mut buf).unwrap();
    let second = String::from_utf8(buf[..n].to_vec()).unwrap();

    // local3 = 19; 19 * 8 + warning (4) = 156, + error (3) = 155.
    let rest = first.strip_prefix("<156>").expect(&first);
    // "Mmm dd HH:MM:SS " is 16 characters.
    let (stamp, body) = rest.split_at(16);
    assert_eq!(stamp.as_bytes()[3], b' ');
    assert_eq!(&stamp[9..10], ":");
    let tag = format!("imaged-scrubber[{}]: ", std::process::id());
    assert_eq!(
        body,
        format!("{tag}WARNING imaged_scrubber delete failed image_id=\"i-9\"")
    );
    assert!(second.starts_with("<155>"), "{second}");
    assert!(
        second.ends_with("ERROR imaged_scrubber gave up"),
        "{second}"
    );
}

#[test]
fn configuration_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let bad_date = LoggingOptions {
        log_date_format: "%Y-%Q".into(),
        ..file_options(dir.path())
    };
    assert!(matches!(
        logging::build(&bad_date, "x").map(|_| ()),
        Err(LoggingError::DateFormat(_))
    ));
    let bad_facility = LoggingOptions {
        use_syslog: true,
        syslog_log_facility: "LOG_NOWHERE".into(),
        syslog_socket: dir.path().join("log"),
        ..LoggingOptions::default()
    };
    assert!(matches!(
        logging::build(&bad_facility, "x").map(|_| ()),
        Err(LoggingError::Facility(_))
    ));
    let no_syslog = LoggingOptions {
        use_syslog: true,
        syslog_socket: dir.path().join("absent"),
        ..LoggingOptions::default()
    };
    assert!(matches!(
        logging::build(&no_syslog, "x").map(|_| ()),
        Err(LoggingError::Syslog { .. })
    ));
    let unwritable = LoggingOptions {
        log_file: Some(dir.path().join("missing-dir").join("a.log")),
        ..LoggingOptions::default()
    };
    assert!(matches!(
        logging::build(&unwritable, "x").map(|_| ()),
        Err(LoggingError::OpenLogFile { .. })
    ));
}

#[test]
fn stderr_is_the_fallback_and_explicit_choice() {
    let nothing = LoggingOptions {
        use_stderr: Some(false),
        journald: JournaldMode::Never,
        ..LoggingOptions::default()
    };
    let (_s, h) = logging::build(&nothing, "x").unwrap();
    assert_eq!(h.destinations(), [Destination::Stderr]);

    let dir = tempfile::tempdir().unwrap();
    let both = LoggingOptions {
        use_stderr: Some(true),
        ..file_options(dir.path())
    };
    let (_s, h) = logging::build(&both, "x").unwrap();
    assert_eq!(
        h.destinations(),
        [
            Destination::File(dir.path().join("imaged.log")),
            Destination::Stderr
        ]
    );
}

#[test]
fn global_init_happens_once() {
    let opts = LoggingOptions {
        journald: JournaldMode::Never,
        ..LoggingOptions::default()
    };
    logging::init(&opts, "imaged-test").unwrap();
    assert!(matches!(
        logging::init(&opts, "imaged-test"),
        Err(LoggingError::AlreadyInitialised(_))
    ));
}

/// Runs in a child process whose stderr is a file named by `JOURNAL_STREAM`;
/// does nothing when started any other way.
#[test]
#[ignore = "child process of journal_stream_detection_and_fallback"]
fn child_reports_journal_detection() {
    if std::env::var_os("IMAGED_JOURNAL_CHILD").is_none() {
        return;
    }
    let opts = LoggingOptions::default();
    let (_sub, handle) = logging::build(&opts, "imaged-test").unwrap();
    println!(
        "journal={} destinations={:?}",
        logging::stderr_is_journal(),
        handle.destinations()
    );
}

fn run_journal_child(stderr_file: &std::path::Path, journal_stream: &str) -> String {
    use std::process::{Command, Stdio};
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_reports_journal_detection",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("IMAGED_JOURNAL_CHILD", "1")
        .env("JOURNAL_STREAM", journal_stream)
        .stderr(Stdio::from(fs::File::create(stderr_file).unwrap()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn journal_stream_detection_and_fallback() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let err_file = dir.path().join("stderr");
    fs::write(&err_file, "").unwrap();
    let meta = fs::metadata(&err_file).unwrap();

    // JOURNAL_STREAM names the child's stderr: detected. This machine has no
    // journald socket, so the subscriber falls back to stderr and says so.
    let matching = format!("{}:{}", meta.dev(), meta.ino());
    let stdout = run_journal_child(&err_file, &matching);
    if std::path::Path::new("/run/systemd/journal/socket").exists() {
        assert!(
            stdout.contains("journal=true destinations=[Journald]"),
            "{stdout}"
        );
    } else {
        assert!(
            stdout.contains("journal=true destinations=[Stderr]"),
            "{stdout}"
        );
        let stderr = fs::read_to_string(&err_file).unwrap();
        assert!(stderr.contains("journald unavailable"), "{stderr}");
    }

    // A stale JOURNAL_STREAM (stderr redirected elsewhere) is not trusted.
    let stale = format!("{}:{}", meta.dev(), meta.ino() + 1);
    let stdout = run_journal_child(&err_file, &stale);
    assert!(
        stdout.contains("journal=false destinations=[Stderr]"),
        "{stdout}"
    );
}
