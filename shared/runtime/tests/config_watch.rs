//! ConfigWatcher against real files in a temporary directory.

use std::fs;
use std::time::Duration;

use imaged_runtime::control::{self, ConfigWatcher, Control, ControlStream};

const DEBOUNCE: Duration = Duration::from_millis(200);

/// Collects every control event that arrives within `window`.
async fn collect(rx: &mut ControlStream, window: Duration) -> Vec<Control> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(c)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        out.push(c);
    }
    out
}

#[tokio::test]
async fn burst_of_writes_becomes_one_reload() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("glance-scrubber.conf");
    fs::write(&conf, "[DEFAULT]\nwakeup_time = 300\n").unwrap();
    let (tx, mut rx) = control::channel();
    let _watcher = ConfigWatcher::spawn(std::slice::from_ref(&conf), tx, DEBOUNCE).unwrap();

    for i in 0..5 {
        fs::write(&conf, format!("[DEFAULT]\nwakeup_time = {i}\n")).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        collect(&mut rx, Duration::from_secs(2)).await,
        [Control::Reload]
    );
}

#[tokio::test]
async fn editor_style_replace_is_seen_repeatedly() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("glance-api.conf");
    fs::write(&conf, "a").unwrap();
    let (tx, mut rx) = control::channel();
    let _watcher = ConfigWatcher::spawn(std::slice::from_ref(&conf), tx, DEBOUNCE).unwrap();

    for round in 0..3 {
        // Write a new inode and rename it over the watched name, as editors
        // and configuration-management tools do.
        let tmp = dir.path().join(format!(".glance-api.conf.{round}.tmp"));
        fs::write(&tmp, format!("round {round}")).unwrap();
        fs::rename(&tmp, &conf).unwrap();
        assert_eq!(
            collect(&mut rx, Duration::from_secs(1)).await,
            [Control::Reload],
            "round {round}"
        );
    }
    // Deleting and recreating is a change too.
    fs::remove_file(&conf).unwrap();
    fs::write(&conf, "back").unwrap();
    assert_eq!(
        collect(&mut rx, Duration::from_secs(1)).await,
        [Control::Reload]
    );
}

#[tokio::test]
async fn other_files_in_the_directory_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("glance-cache.conf");
    fs::write(&conf, "a").unwrap();
    let (tx, mut rx) = control::channel();
    let _watcher = ConfigWatcher::spawn(std::slice::from_ref(&conf), tx, DEBOUNCE).unwrap();

    fs::write(dir.path().join("unrelated.conf"), "x").unwrap();
    fs::write(dir.path().join("glance-cache.conf.bak"), "x").unwrap();
    let _ = fs::read(&conf).unwrap();
    assert_eq!(collect(&mut rx, Duration::from_secs(1)).await, []);
}

#[tokio::test]
async fn dropping_the_watcher_stops_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("a.conf");
    fs::write(&conf, "a").unwrap();
    let (tx, mut rx) = control::channel();
    let watcher = ConfigWatcher::spawn(std::slice::from_ref(&conf), tx, DEBOUNCE).unwrap();
    drop(watcher);
    tokio::task::yield_now().await;
    fs::write(&conf, "b").unwrap();
    // The only sender lived in the watcher task, so the stream ends quietly.
    assert_eq!(collect(&mut rx, Duration::from_secs(1)).await, []);
}

#[test]
fn missing_directory_is_reported() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let (tx, _rx) = control::channel();
    let err =
        ConfigWatcher::spawn(&["/nonexistent-imaged-dir/x.conf".into()], tx, DEBOUNCE).unwrap_err();
    assert!(err.to_string().contains("nonexistent-imaged-dir"), "{err}");
}

#[tokio::test]
async fn replaced_directory_is_watched_again() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("glance");
    fs::create_dir(&dir).unwrap();
    let conf = dir.join("glance-scrubber.conf");
    fs::write(&conf, "a").unwrap();
    let (tx, mut rx) = control::channel();
    let _watcher = ConfigWatcher::spawn(std::slice::from_ref(&conf), tx, DEBOUNCE).unwrap();

    // Swap in a whole new directory, as some deployment tools do.
    let staged = root.path().join("glance.new");
    fs::create_dir(&staged).unwrap();
    fs::write(staged.join("glance-scrubber.conf"), "b").unwrap();
    fs::rename(&dir, root.path().join("glance.old")).unwrap();
    fs::rename(&staged, &dir).unwrap();
    assert_eq!(
        collect(&mut rx, Duration::from_secs(1)).await,
        [Control::Reload]
    );

    // The watch now follows the new directory.
    fs::write(&conf, "c").unwrap();
    assert_eq!(
        collect(&mut rx, Duration::from_secs(1)).await,
        [Control::Reload]
    );
    // And no longer reports the old one.
    fs::write(
        root.path().join("glance.old").join("glance-scrubber.conf"),
        "d",
    )
    .unwrap();
    assert_eq!(collect(&mut rx, Duration::from_secs(1)).await, []);
}
