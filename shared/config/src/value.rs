//! Typed option values and the conversion of option text into them, with oslo.config's rules.

use std::time::Duration;

use crate::options::Kind;

/// A typed option value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value (`None`-style unset, or no default).
    Unset,
    /// Boolean.
    Bool(bool),
    /// Integer (also ports).
    Int(i64),
    /// Floating-point number.
    Float(f64),
    /// Text: strings, choices, paths, URIs, `host:port`.
    Str(String),
    /// A list, or the values of a multi-valued option.
    List(Vec<String>),
    /// A list of ports.
    Ports(Vec<u16>),
    /// `key:value` pairs in the order written.
    Dict(Vec<(String, String)>),
    /// A size in bytes.
    Bytes(u64),
    /// A schedule.
    Schedule(Schedule),
}

/// When periodic work runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A fixed delay between the end of one run and the start of the next.
    Every(Duration),
    /// A cron expression (already validated), for the caller to evaluate.
    Cron(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Unset => f.write_str("<None>"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => f.write_str(s),
            Value::List(l) => f.write_str(&l.join(", ")),
            Value::Ports(p) => {
                f.write_str(&p.iter().map(u16::to_string).collect::<Vec<_>>().join(", "))
            }
            Value::Dict(d) => f.write_str(
                &d.iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Value::Bytes(b) => write!(f, "{b}"),
            Value::Schedule(Schedule::Every(d)) => write!(f, "{}", d.as_secs()),
            Value::Schedule(Schedule::Cron(c)) => f.write_str(c),
        }
    }
}

/// Whether text means "unset" for an option of this kind.
///
/// oslo's sample files write unset options as `<None>`; operators also copy `None` from the
/// documentation. For free-text kinds only `<None>` is unset (an empty string or the word
/// `None` may be a real value there); for every typed kind an empty value is unset too.
fn is_unset(kind: &Kind, text: &str) -> bool {
    let t = text.trim();
    if t == "<None>" {
        return true;
    }
    match kind {
        Kind::Str | Kind::MultiStr => false,
        Kind::List | Kind::PortList | Kind::Dict => t == "None",
        _ => t.is_empty() || t == "None",
    }
}

/// Convert option text to a typed value; the error says what was expected.
pub fn parse(kind: &Kind, text: &str) -> Result<Value, String> {
    if is_unset(kind, text) {
        return Ok(Value::Unset);
    }
    let t = text.trim();
    match kind {
        Kind::Bool => parse_bool(t)
            .map(Value::Bool)
            .ok_or_else(|| kind.expected()),
        Kind::Int { min, max } => {
            let i: i64 = t.parse().map_err(|_| kind.expected())?;
            if min.is_some_and(|m| i < m) || max.is_some_and(|m| i > m) {
                return Err(kind.expected());
            }
            Ok(Value::Int(i))
        }
        Kind::Float { min, max } => {
            let x: f64 = t.parse().map_err(|_| kind.expected())?;
            if !x.is_finite() || min.is_some_and(|m| x < m) || max.is_some_and(|m| x > m) {
                return Err(kind.expected());
            }
            Ok(Value::Float(x))
        }
        Kind::Port => t
            .parse::<u16>()
            .map(|p| Value::Int(i64::from(p)))
            .map_err(|_| kind.expected()),
        Kind::Str | Kind::Path => Ok(Value::Str(text.to_owned())),
        Kind::MultiStr => Ok(Value::List(vec![text.to_owned()])),
        Kind::Choices(choices) => choices
            .iter()
            .find(|c| c.eq_ignore_ascii_case(t))
            .map(|c| Value::Str((*c).to_owned()))
            .ok_or_else(|| kind.expected()),
        Kind::List => Ok(Value::List(split_list(t))),
        Kind::PortList => split_list(t)
            .iter()
            .map(|p| match p.parse::<u16>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(kind.expected()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Ports),
        Kind::Dict => split_list(t)
            .iter()
            .map(|item| match item.split_once(':') {
                Some((k, v)) if !k.trim().is_empty() => {
                    Ok((k.trim().to_owned(), v.trim().to_owned()))
                }
                _ => Err(kind.expected()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Dict),
        Kind::Size => parse_size(t)
            .map(Value::Bytes)
            .ok_or_else(|| kind.expected()),
        Kind::Uri(schemes) => {
            let url = url::Url::parse(t).map_err(|_| kind.expected())?;
            if schemes.contains(&url.scheme()) {
                Ok(Value::Str(t.to_owned()))
            } else {
                Err(kind.expected())
            }
        }
        Kind::Schedule => parse_schedule(t)
            .map(Value::Schedule)
            .ok_or_else(|| kind.expected()),
        Kind::HostPort => parse_host_port(t)
            .map(|_| Value::Str(t.to_owned()))
            .ok_or_else(|| kind.expected()),
    }
}

/// oslo.config's boolean words.
pub fn parse_bool(t: &str) -> Option<bool> {
    match t.to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Some(true),
        "false" | "0" | "off" | "no" => Some(false),
        _ => None,
    }
}

/// oslo.config's List type: optional surrounding brackets, comma-separated, items trimmed,
/// one pair of quotes around an item removed, empty text is the empty list.
pub fn split_list(t: &str) -> Vec<String> {
    let t = t.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(t)
        .trim();
    if t.is_empty() {
        return Vec::new();
    }
    t.split(',')
        .map(|item| {
            let item = item.trim();
            let b = item.as_bytes();
            if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[0] == b[b.len() - 1] {
                item[1..item.len() - 1].to_owned()
            } else {
                item.to_owned()
            }
        })
        .collect()
}

/// Glance's `user_storage_quota` syntax: digits, then optionally `B`, `KB`, `MB`, `GB` or `TB`
/// (powers of 1024, case-sensitive, no space).
pub fn parse_size(t: &str) -> Option<u64> {
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn parse_schedule(t: &str) -> Option<Schedule> {
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = t.parse().ok()?;
        // A zero interval would spin; a schedule must leave time between runs.
        return (secs > 0).then(|| Schedule::Every(Duration::from_secs(secs)));
    }
    t.parse::<croner::Cron>()
        .ok()
        .map(|_| Schedule::Cron(t.to_owned()))
}

/// Split `host:port`; IPv6 hosts must be bracketed (`[::1]:9100`).
pub fn parse_host_port(t: &str) -> Option<(String, u16)> {
    let (host, port) = t.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        inner
    } else {
        if host.is_empty() || host.contains(':') || host.contains(char::is_whitespace) {
            return None;
        }
        host
    };
    Some((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INT: Kind = Kind::Int {
        min: Some(1),
        max: Some(10),
    };

    #[test]
    fn booleans_in_every_spelling() {
        for t in ["true", "TRUE", "True", "yes", "YES", "on", "On", "1"] {
            assert_eq!(parse(&Kind::Bool, t), Ok(Value::Bool(true)), "{t}");
        }
        for t in ["false", "False", "no", "NO", "off", "OFF", "0"] {
            assert_eq!(parse(&Kind::Bool, t), Ok(Value::Bool(false)), "{t}");
        }
        for t in ["maybe", "2", "y", "t"] {
            assert!(parse(&Kind::Bool, t).is_err(), "{t}");
        }
    }

    #[test]
    fn bounded_integers_and_ports() {
        assert_eq!(parse(&INT, " 7 "), Ok(Value::Int(7)));
        assert_eq!(parse(&INT, "1"), Ok(Value::Int(1)));
        assert_eq!(parse(&INT, "10"), Ok(Value::Int(10)));
        assert_eq!(parse(&INT, "0").unwrap_err(), "an integer in 1..=10");
        assert!(parse(&INT, "11").is_err());
        assert!(parse(&INT, "1.5").is_err());
        assert!(parse(&INT, "ten").is_err());
        assert_eq!(parse(&Kind::Port, "65535"), Ok(Value::Int(65535)));
        assert_eq!(parse(&Kind::Port, "0"), Ok(Value::Int(0)));
        assert!(parse(&Kind::Port, "65536").is_err());
        assert!(parse(&Kind::Port, "-1").is_err());
    }

    #[test]
    fn lists_trim_and_accept_brackets() {
        assert_eq!(
            parse(&Kind::List, " file ,http,  rbd "),
            Ok(Value::List(vec![
                "file".into(),
                "http".into(),
                "rbd".into()
            ]))
        );
        assert_eq!(
            parse(&Kind::List, "[127.0.0.1, 'example.org']"),
            Ok(Value::List(vec!["127.0.0.1".into(), "example.org".into()]))
        );
        assert_eq!(parse(&Kind::List, ""), Ok(Value::List(vec![])));
        assert_eq!(parse(&Kind::List, "[]"), Ok(Value::List(vec![])));
        assert_eq!(
            parse(&Kind::PortList, "[8765, 443]"),
            Ok(Value::Ports(vec![8765, 443]))
        );
        assert!(parse(&Kind::PortList, "80, 0").is_err());
        assert!(parse(&Kind::PortList, "80, http").is_err());
    }

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("512B"), Some(512));
        assert_eq!(parse_size("3KB"), Some(3 * 1024));
        assert_eq!(parse_size("5MB"), Some(5 << 20));
        assert_eq!(parse_size("2GB"), Some(2 << 30));
        assert_eq!(parse_size("1TB"), Some(1 << 40));
        // Units are case-sensitive and take no space, as in Glance.
        assert_eq!(parse_size("1gb"), None);
        assert_eq!(parse_size("1 GB"), None);
        assert_eq!(parse_size("1PB"), None);
        assert_eq!(parse_size("GB"), None);
        assert_eq!(parse_size("99999999999TB"), None);
    }

    #[test]
    fn none_style_unset() {
        assert_eq!(parse(&INT, "None"), Ok(Value::Unset));
        assert_eq!(parse(&INT, ""), Ok(Value::Unset));
        assert_eq!(parse(&Kind::Str, "<None>"), Ok(Value::Unset));
        // Free text keeps an empty string and the word None as real values.
        assert_eq!(parse(&Kind::Str, ""), Ok(Value::Str(String::new())));
        assert_eq!(parse(&Kind::Str, "None"), Ok(Value::Str("None".into())));
    }

    #[test]
    fn choices_dicts_uris_schedules_hostports() {
        let k = Kind::Choices(&["serial", "parallel"]);
        assert_eq!(parse(&k, "Serial"), Ok(Value::Str("serial".into())));
        assert_eq!(parse(&k, "fast").unwrap_err(), "one of: serial, parallel");
        assert_eq!(
            parse(&Kind::Dict, "fast:file, cheap : s3"),
            Ok(Value::Dict(vec![
                ("fast".into(), "file".into()),
                ("cheap".into(), "s3".into())
            ]))
        );
        assert!(parse(&Kind::Dict, "fast").is_err());
        let uri = Kind::Uri(&["file"]);
        assert!(parse(&uri, "file:///tmp/staging/").is_ok());
        assert!(parse(&uri, "http://x/").is_err());
        assert!(parse(&uri, "/tmp/staging").is_err());
        assert_eq!(
            parse(&Kind::Schedule, "90"),
            Ok(Value::Schedule(Schedule::Every(Duration::from_secs(90))))
        );
        assert_eq!(
            parse(&Kind::Schedule, "*/5 * * * *"),
            Ok(Value::Schedule(Schedule::Cron("*/5 * * * *".into())))
        );
        assert!(parse(&Kind::Schedule, "0").is_err());
        assert!(parse(&Kind::Schedule, "every day").is_err());
        assert_eq!(
            parse_host_port("0.0.0.0:9100"),
            Some(("0.0.0.0".into(), 9100))
        );
        assert_eq!(parse_host_port("[::1]:9100"), Some(("::1".into(), 9100)));
        assert_eq!(
            parse_host_port("localhost:80"),
            Some(("localhost".into(), 80))
        );
        assert_eq!(parse_host_port("::1:9100"), None);
        assert_eq!(parse_host_port("host"), None);
        assert_eq!(parse_host_port("host:99999"), None);
    }
}
