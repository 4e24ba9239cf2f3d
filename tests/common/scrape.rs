//! Shared by the daemons' end-to-end metrics tests: a free loopback port
//! for `[imaged] metrics_bind`, scrapes of `/metrics` and `/healthz` with
//! reqwest, and reading one series out of the Prometheus text format.

use std::time::{Duration, Instant};

/// A loopback address with a port nothing listens on right now.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// `GET http://<addr><path>`: status and body; `None` while nothing answers.
pub async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let r = reqwest::get(format!("http://{addr}{path}")).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// The value of `series` (name with labels, exactly as encoded) in a scrape.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Asserts that each `(series, value)` of `expected` is in the scrape.
pub fn assert_values(text: &str, expected: &[(&str, f64)]) {
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(series, want)| value(text, series) != Some(*want))
        .map(|(series, want)| format!("{series}: want {want}, got {:?}", value(text, series)))
        .collect();
    assert!(wrong.is_empty(), "{}\n--- scrape\n{text}", wrong.join("\n"));
}

/// Scrapes `/metrics` until `done` holds for the text, and returns that
/// text; panics with the last scrape and `log` after `within`.
pub async fn scrape_until(
    addr: &str,
    within: Duration,
    log: impl Fn() -> String,
    done: impl Fn(&str) -> bool,
) -> String {
    let end = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < end {
        if let Some((200, text)) = get(addr, "/metrics").await {
            if done(&text) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "metrics never reached the expected state:\n{last}\n--- log\n{}",
        log()
    );
}

/// `/healthz` as status and JSON.
pub async fn health(addr: &str) -> (u16, serde_json::Value) {
    let (status, body) = get(addr, "/healthz").await.expect("healthz answers");
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

/// Stops a daemon with SIGTERM, asserts a clean exit (0, else `log` is shown)
/// and that nothing listens on `addr` any more.
pub async fn stop_and_assert_closed(
    child: &mut std::process::Child,
    addr: &str,
    log: impl Fn() -> String,
) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "{}", log());
    assert!(
        get(addr, "/healthz").await.is_none(),
        "nothing listens after the stop"
    );
}
