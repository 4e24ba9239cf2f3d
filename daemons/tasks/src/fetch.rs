//! Download safety for `import_from`: Glance's `[import_filtering_opts]`
//! rules applied to the first URL and to every redirect, refusal of encoded
//! IP forms, checks of the addresses a name resolves to (the checked
//! addresses are the ones connected to, which closes DNS rebinding), connect
//! and read time-outs, and a User-Agent naming imaged.
//!
//! `file://` sources are accepted only below directories listed in
//! `[imaged_tasks] import_file_dirs`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use url::{Host, Url};

/// The filtering rules (`[import_filtering_opts]`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UrlFilter {
    /// Allowed schemes; when set, the deny-list is ignored.
    pub allowed_schemes: Vec<String>,
    /// Disallowed schemes.
    pub disallowed_schemes: Vec<String>,
    /// Allowed hosts; when set, the deny-list is ignored. A host listed here
    /// may also resolve to loopback, private or link-local addresses.
    pub allowed_hosts: Vec<String>,
    /// Disallowed hosts.
    pub disallowed_hosts: Vec<String>,
    /// Allowed ports (checked only when the URL names a port).
    pub allowed_ports: Vec<u16>,
    /// Disallowed ports.
    pub disallowed_ports: Vec<u16>,
    /// Directories `file://` sources may come from.
    pub file_dirs: Vec<PathBuf>,
}

/// Why a source was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL does not pass the filtering rules.
    #[error("{0}")]
    Refused(String),
    /// The download failed.
    #[error("{0}")]
    Failed(String),
}

fn allow_deny<T: PartialEq>(value: &T, allow: &[T], deny: &[T]) -> bool {
    if !allow.is_empty() {
        allow.contains(value)
    } else {
        !deny.contains(value)
    }
}

/// The host text exactly as written in the URL (before the WHATWG parser
/// turns `0x7f000001` or `2130706433` into `127.0.0.1`).
fn raw_host(raw: &str) -> Option<String> {
    let rest = raw.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let auth = &rest[..end];
    let host_port = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    if host_port.starts_with('[') {
        return host_port.find(']').map(|i| host_port[..=i].to_string());
    }
    Some(
        host_port
            .rsplit_once(':')
            .map_or(host_port, |(h, _)| h)
            .to_string(),
    )
}

/// Encoded IPv4 forms: decimal (`2130706433`), shorthand (`127.1`), octal
/// (`0177.0.0.1`) and hex (`0x7f.1`) — Glance's `normalize_hostname` rules.
fn is_encoded_ip(host: &str) -> bool {
    if host.is_empty() {
        return false;
    }
    let h = host.trim_end_matches('.');
    if h.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let parts: Vec<&str> = h.split('.').collect();
        let canonical = parts.len() == 4
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.len() <= 3
                    && (p.len() == 1 || !p.starts_with('0'))
                    && p.parse::<u16>().is_ok_and(|n| n <= 255)
            });
        return !canonical;
    }
    h.split('.').any(|p| {
        p.len() > 2
            && p[..2].eq_ignore_ascii_case("0x")
            && p[2..].chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// Whether an address is one a download must not reach unless its host is
/// explicitly allowed: loopback, private, link-local (incl. the
/// 169.254.169.254 metadata service), shared, unspecified, multicast,
/// broadcast, documentation, unique-local.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

impl UrlFilter {
    fn host_allowed_explicitly(&self, host: &str) -> bool {
        self.allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Applies the rules to one URL (the first one or a redirect target).
    pub fn check(&self, raw: &str) -> Result<Url, FetchError> {
        let refuse = |why: String| {
            FetchError::Refused(format!("URL {raw:?} does not pass filtering: {why}"))
        };
        let url = Url::parse(raw).map_err(|e| refuse(format!("cannot parse it ({e})")))?;
        let scheme = url.scheme().to_ascii_lowercase();
        if scheme == "file" {
            return self.check_file(&url).map(|_| url);
        }
        if !allow_deny(&scheme, &self.allowed_schemes, &self.disallowed_schemes) {
            return Err(refuse(format!("scheme {scheme:?} is not allowed")));
        }
        if scheme != "http" && scheme != "https" {
            return Err(refuse(format!("scheme {scheme:?} cannot be downloaded")));
        }
        let written = raw_host(raw).unwrap_or_default();
        if is_encoded_ip(&written) {
            return Err(refuse(format!("host {written:?} is an encoded IP address")));
        }
        let host = match url.host() {
            Some(Host::Domain(d)) => d.trim_end_matches('.').to_ascii_lowercase(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(refuse("no host".into())),
        };
        let host_ok = if !self.allowed_hosts.is_empty() {
            self.host_allowed_explicitly(&host)
        } else {
            !self
                .disallowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&host))
        };
        if !host_ok {
            return Err(refuse(format!("host {host:?} is not allowed")));
        }
        if let Some(port) = explicit_port(raw, &url)
            && !allow_deny(&port, &self.allowed_ports, &self.disallowed_ports)
        {
            return Err(refuse(format!("port {port} is not allowed")));
        }
        let literal = match url.host() {
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && is_internal(ip)
            && !self.host_allowed_explicitly(&host)
        {
            return Err(refuse(format!(
                "address {ip} is internal (loopback, private, link-local or metadata)"
            )));
        }
        Ok(url)
    }

    fn check_file(&self, url: &Url) -> Result<PathBuf, FetchError> {
        let refuse = |why: String| {
            FetchError::Refused(format!(
                "URL {:?} does not pass filtering: {why}",
                url.as_str()
            ))
        };
        if self.file_dirs.is_empty() {
            return Err(refuse(
                "file:// sources are disabled (no [imaged_tasks] import_file_dirs)".into(),
            ));
        }
        let path = url
            .to_file_path()
            .map_err(|()| refuse("not a local path".into()))?;
        let real = std::fs::canonicalize(&path)
            .map_err(|e| refuse(format!("cannot resolve {}: {e}", path.display())))?;
        let inside = self
            .file_dirs
            .iter()
            .any(|d| std::fs::canonicalize(d).is_ok_and(|d| real.starts_with(d)));
        if !inside {
            return Err(refuse(format!(
                "{} is outside the allowed import directories",
                real.display()
            )));
        }
        Ok(real)
    }

    /// Checks the addresses `host` resolved to, keeping the allowed ones.
    pub fn filter_addresses(
        &self,
        host: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, FetchError> {
        if self.host_allowed_explicitly(host.trim_end_matches('.')) {
            return Ok(addrs);
        }
        let total = addrs.len();
        let kept: Vec<SocketAddr> = addrs.into_iter().filter(|a| !is_internal(a.ip())).collect();
        if kept.is_empty() {
            return Err(FetchError::Refused(format!(
                "host {host:?} resolves only to internal addresses ({total} refused)"
            )));
        }
        Ok(kept)
    }
}

/// The port written in the URL, even when it is the scheme's default.
fn explicit_port(raw: &str, url: &Url) -> Option<u16> {
    if let Some(p) = url.port() {
        return Some(p);
    }
    let rest = raw.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let auth = &rest[..end];
    let hp = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    let after = if hp.starts_with('[') {
        hp.split_once(']')?.1
    } else {
        hp
    };
    after.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

struct CheckedResolver {
    filter: Arc<UrlFilter>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let filter = self.filter.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?
                .collect();
            let kept = filter
                .filter_addresses(&host, addrs)
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            let it: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(it)
        })
    }
}

/// An opened source: its chunks and, when announced, its length.
pub struct Source {
    /// Announced length (`Content-Length` or file size).
    pub length: Option<u64>,
    /// The data.
    pub stream: BoxStream<'static, Result<Bytes, FetchError>>,
}

/// Builds clients and opens sources under one set of rules.
#[derive(Clone)]
pub struct Fetcher {
    filter: Arc<UrlFilter>,
    client: reqwest::Client,
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

impl Fetcher {
    /// A fetcher enforcing `filter`, with the given time-outs and User-Agent.
    pub fn new(
        filter: UrlFilter,
        connect_timeout: Duration,
        read_timeout: Duration,
        user_agent: &str,
    ) -> Result<Fetcher, FetchError> {
        let filter = Arc::new(filter);
        let redirect_filter = filter.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error(FetchError::Refused("too many redirects".into()));
            }
            let target = attempt.url().to_string();
            match redirect_filter.check(&target) {
                Ok(u) if u.scheme() == "file" => attempt.error(FetchError::Refused(format!(
                    "Redirect to disallowed URL: {target}"
                ))),
                Ok(_) => attempt.follow(),
                Err(e) => attempt.error(FetchError::Refused(format!(
                    "Redirect to disallowed URL: {e}"
                ))),
            }
        });
        let client = reqwest::Client::builder()
            .redirect(policy)
            .dns_resolver(Arc::new(CheckedResolver {
                filter: filter.clone(),
            }))
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .user_agent(user_agent)
            .no_proxy()
            .build()
            .map_err(|e| FetchError::Failed(format!("cannot build the HTTP client: {e}")))?;
        Ok(Fetcher { filter, client })
    }

    /// The rules in force.
    pub fn filter(&self) -> &UrlFilter {
        &self.filter
    }

    /// Opens a local work file (already trusted) for streaming.
    pub async fn open_local(path: &Path) -> Result<Source, FetchError> {
        open_file(path).await
    }

    /// Opens `raw` for streaming after checking it.
    pub async fn open(&self, raw: &str) -> Result<Source, FetchError> {
        let url = self.filter.check(raw)?;
        if url.scheme() == "file" {
            let path = self.filter.check_file(&url)?;
            return open_file(&path).await;
        }
        let resp = self.client.get(url).send().await.map_err(|e| {
            let text = error_chain(&e);
            if let Some(pos) = text.find("Redirect to disallowed URL") {
                FetchError::Refused(text[pos..].to_string())
            } else if text.contains("does not pass filtering")
                || text.contains("internal addresses")
            {
                FetchError::Refused(format!("download of {raw} refused: {text}"))
            } else {
                FetchError::Failed(format!("download of {raw} failed: {text}"))
            }
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Failed(format!(
                "download of {raw} failed: HTTP {status}"
            )));
        }
        let length = resp.content_length();
        let what = raw.to_string();
        let stream = resp.bytes_stream().map_err(move |e| {
            FetchError::Failed(format!("download of {what} failed: {}", error_chain(&e)))
        });
        Ok(Source {
            length,
            stream: coalesce(stream, CHUNK),
        })
    }
}

/// Size of the chunks a [`Source`] yields (the last one may be shorter).
pub const CHUNK: usize = 1 << 20;

/// Regroups a stream of network frames (often 16 KiB or less) into chunks
/// of `size` bytes. Every chunk goes to the hashing threads and to the
/// store; at 16 KiB the hand-offs and thread wake-ups cost more than the
/// copy that makes 1 MiB chunks, so the copy is made once, here.
pub fn coalesce<S>(inner: S, size: usize) -> BoxStream<'static, Result<Bytes, FetchError>>
where
    S: futures::Stream<Item = Result<Bytes, FetchError>> + Send + 'static,
{
    let state = (Box::pin(inner), bytes::BytesMut::new(), false);
    futures::stream::unfold(state, move |(mut inner, mut buf, mut done)| async move {
        while !done && buf.len() < size {
            match inner.next().await {
                Some(Ok(b)) if buf.is_empty() && b.len() >= size => {
                    return Some((Ok(b), (inner, buf, done)));
                }
                Some(Ok(b)) => {
                    if buf.capacity() - buf.len() < b.len() {
                        buf.reserve(size.max(b.len()));
                    }
                    buf.extend_from_slice(&b);
                }
                // The data before a failure is of no use: the transfer
                // failed, so the error ends the stream.
                Some(Err(e)) => return Some((Err(e), (inner, bytes::BytesMut::new(), true))),
                None => done = true,
            }
        }
        if buf.is_empty() {
            return None;
        }
        let chunk = buf.split().freeze();
        Some((Ok(chunk), (inner, buf, done)))
    })
    // Callers chain a stream they read to its end (small images are
    // inspected whole before the upload starts); a fused stream may be
    // polled again after it ended.
    .fuse()
    .boxed()
}

async fn open_file(path: &Path) -> Result<Source, FetchError> {
    let f = tokio::fs::File::open(path)
        .await
        .map_err(|e| FetchError::Failed(format!("cannot open {}: {e}", path.display())))?;
    let length = f.metadata().await.ok().map(|m| m.len());
    let shown = path.display().to_string();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, CHUNK)
        .map_err(move |e| FetchError::Failed(format!("reading {shown} failed: {e}")))
        .boxed();
    Ok(Source { length, stream })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn coalesce_regroups_frames_and_stays_ended() {
        let frames: Vec<Result<Bytes, FetchError>> = (0..10u8)
            .map(|i| Ok(Bytes::from(vec![i; 3])))
            .chain([Ok(Bytes::from(vec![99u8; 20]))])
            .collect();
        let mut s = coalesce(futures::stream::iter(frames), 8);
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        while let Some(c) = s.next().await {
            let c = c.unwrap();
            sizes.push(c.len());
            all.extend_from_slice(&c);
        }
        // 3-byte frames fill 8-byte chunks (9, 9, 9 with the overshoot);
        // the large frame joins the last partial chunk.
        assert_eq!(sizes, vec![9, 9, 9, 23], "{sizes:?}");
        assert_eq!(all.len(), 50);
        assert_eq!(&all[..3], &[0, 0, 0]);
        assert_eq!(&all[27..30], &[9, 9, 9]);
        assert!(s.next().await.is_none(), "polled again after the end");

        let frames = vec![
            Ok(Bytes::from_static(b"ab")),
            Err(FetchError::Failed("cut".into())),
            Ok(Bytes::from_static(b"cd")),
        ];
        let mut s = coalesce(futures::stream::iter(frames), 8);
        assert!(matches!(s.next().await, Some(Err(FetchError::Failed(m))) if m == "cut"));
        assert!(s.next().await.is_none(), "nothing after the failure");

        let big = vec![
            Ok(Bytes::from(vec![1u8; 16])),
            Ok(Bytes::from(vec![2u8; 2])),
        ];
        let mut s = coalesce(futures::stream::iter(big), 8);
        assert_eq!(
            s.next().await.unwrap().unwrap().len(),
            16,
            "passed through whole"
        );
        assert_eq!(s.next().await.unwrap().unwrap().len(), 2);
    }

    fn default_filter() -> UrlFilter {
        UrlFilter {
            allowed_schemes: vec!["http".into(), "https".into()],
            allowed_ports: vec![80, 443],
            ..UrlFilter::default()
        }
    }

    #[test]
    fn defaults_refuse_odd_ports_and_schemes() {
        let f = default_filter();
        assert!(f.check("https://images.example.com/disk.img").is_ok());
        assert!(f.check("https://images.example.com:443/disk.img").is_ok());
        assert!(f.check("http://images.example.com:8080/disk.img").is_err());
        assert!(f.check("ftp://images.example.com/disk.img").is_err());
        assert!(f.check("file:///etc/passwd").is_err());
    }

    #[test]
    fn internal_and_encoded_addresses_refused() {
        let f = default_filter();
        for u in [
            "http://127.0.0.1/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/x",
            "http://[::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://2130706433/x",
            "http://0x7f000001/x",
            "http://127.1/x",
            "http://0177.0.0.1/x",
        ] {
            let e = f.check(u).unwrap_err();
            assert!(matches!(e, FetchError::Refused(_)), "{u}: {e}");
        }
    }

    #[test]
    fn allowed_host_may_be_internal_and_allow_list_wins() {
        let mut f = default_filter();
        f.allowed_hosts = vec!["127.0.0.1".into()];
        f.allowed_ports = vec![8080];
        f.disallowed_hosts = vec!["127.0.0.1".into()];
        assert!(f.check("http://127.0.0.1:8080/x").is_ok());
        assert!(f.check("http://10.0.0.1:8080/x").is_err());
        assert!(f.check("http://127.0.0.1:8081/x").is_err());
    }

    #[test]
    fn deny_lists_apply_without_allow_lists() {
        let f = UrlFilter {
            disallowed_hosts: vec!["bad.example.com".into()],
            disallowed_ports: vec![8443],
            ..UrlFilter::default()
        };
        assert!(f.check("https://bad.example.com/x").is_err());
        assert!(f.check("https://good.example.com:8443/x").is_err());
        assert!(f.check("https://good.example.com:9443/x").is_ok());
    }

    #[test]
    fn resolved_addresses_are_checked() {
        let f = default_filter();
        let internal: Vec<SocketAddr> = vec![
            "127.0.0.1:80".parse().unwrap(),
            "10.0.0.1:80".parse().unwrap(),
        ];
        assert!(
            f.filter_addresses("evil.example.com", internal.clone())
                .is_err()
        );
        let mixed = vec![
            "10.0.0.1:80".parse().unwrap(),
            "93.184.216.34:80".parse().unwrap(),
        ];
        assert_eq!(
            f.filter_addresses("ok.example.com", mixed).unwrap().len(),
            1
        );
        let mut g = default_filter();
        g.allowed_hosts = vec!["evil.example.com".into()];
        assert_eq!(
            g.filter_addresses("evil.example.com", internal)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn file_sources_only_from_allowed_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("a.img");
        std::fs::write(&inside, b"x").unwrap();
        let mut f = default_filter();
        let url = format!("file://{}", inside.display());
        assert!(f.check(&url).is_err());
        f.file_dirs = vec![dir.path().to_path_buf()];
        assert!(f.check(&url).is_ok());
        let outside = Url::from_file_path("/etc/hostname").unwrap();
        assert!(f.check(outside.as_str()).is_err());
        let sneaky = format!("file://{}/../../etc/hostname", dir.path().display());
        assert!(f.check(&sneaky).is_err());
    }
}
