//! Location URI parsing for every scheme glance_store writes, and credential redaction.
//!
//! The parsers follow the forms glance_store produces (see the project README): `file://` paths
//! are netloc + path with no percent-decoding; S3 URIs split credentials off at the *last* `@`
//! because secret keys may contain `/`; RBD components are percent-encoded. [`redact`] is the
//! only way a location string enters a message or a log line.

use std::fmt;

use percent_encoding::percent_decode_str;

use crate::error::{ErrorKind, StoreError};

/// The backend type a scheme belongs to, named as in `[DEFAULT] enabled_backends`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendType {
    /// `file://`, `filesystem://`
    File,
    /// `s3://`, `s3+http://`, `s3+https://`
    S3,
    /// `http://`, `https://` (read-only)
    Http,
    /// `rbd://` (recognised, not supported)
    Rbd,
    /// `swift://`, `swift+http://`, `swift+https://`, `swift+config://` (recognised, not supported)
    Swift,
    /// `cinder://` (recognised, not supported)
    Cinder,
    /// `vsphere://` (recognised, not supported; the backend type is `vmware`)
    Vmware,
}

impl BackendType {
    /// Parses an `enabled_backends` type string (`file`, `s3`, `http`, `rbd`, `swift`, `cinder`,
    /// `vmware`).
    pub fn from_type_name(name: &str) -> Option<Self> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "file" | "filesystem" => BackendType::File,
            "s3" => BackendType::S3,
            "http" | "https" => BackendType::Http,
            "rbd" => BackendType::Rbd,
            "swift" => BackendType::Swift,
            "cinder" => BackendType::Cinder,
            "vmware" | "vsphere" => BackendType::Vmware,
            _ => return None,
        })
    }

    /// The `enabled_backends` type string.
    pub fn type_name(self) -> &'static str {
        match self {
            BackendType::File => "file",
            BackendType::S3 => "s3",
            BackendType::Http => "http",
            BackendType::Rbd => "rbd",
            BackendType::Swift => "swift",
            BackendType::Cinder => "cinder",
            BackendType::Vmware => "vmware",
        }
    }

    /// Whether imaged implements this backend.
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            BackendType::File | BackendType::S3 | BackendType::Http
        )
    }
}

impl fmt::Display for BackendType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

/// A location URI broken into the parts its backend needs.
#[derive(Clone, PartialEq, Eq)]
pub enum ParsedUri {
    /// `file://<absolute path>`; `path` is netloc + path, not percent-decoded.
    File {
        /// The filesystem path exactly as the URI spells it.
        path: String,
    },
    /// An S3 object as glance_store writes it.
    S3 {
        /// `Some(true)` for `s3+https`, `Some(false)` for `s3+http`, `None` for plain `s3`
        /// (the scheme of the configured `s3_store_host` decides, else http).
        https: Option<bool>,
        /// Access key from the URI (percent-decoded), if any.
        access_key: Option<String>,
        /// Secret key from the URI (percent-decoded), if any.
        secret_key: Option<String>,
        /// Host, optional port and optional path prefix, without scheme.
        host: String,
        /// Bucket name.
        bucket: String,
        /// Object key.
        key: String,
    },
    /// A plain `http://` or `https://` URL.
    Http {
        /// The URL.
        url: url::Url,
    },
    /// `rbd://<fsid>/<pool>/<image>/<snapshot>` or legacy `rbd://<image>`.
    Rbd {
        /// Cluster fsid (4-component form).
        fsid: Option<String>,
        /// Pool (4-component form).
        pool: Option<String>,
        /// Image name.
        image: String,
        /// Snapshot name (4-component form).
        snapshot: Option<String>,
    },
    /// A Swift object, in any of the swift schemes.
    Swift {
        /// The URI scheme (`swift`, `swift+http`, `swift+https`, `swift+config`).
        scheme: String,
        /// Container name.
        container: String,
        /// Object name.
        object: String,
    },
    /// `cinder://<volume-uuid>` or `cinder://<store>/<volume-uuid>`.
    Cinder {
        /// The volume id.
        volume_id: String,
    },
    /// `vsphere://host/folder/path?dcPath=…&dsName=…`.
    Vsphere {
        /// Host of the vCenter/ESX server.
        host: String,
        /// Datastore path.
        path: String,
    },
}

impl fmt::Debug for ParsedUri {
    // Hand-written so that S3 secrets never appear in `{:?}` output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParsedUri::File { path } => f.debug_struct("File").field("path", path).finish(),
            ParsedUri::S3 {
                https,
                access_key,
                secret_key,
                host,
                bucket,
                key,
            } => f
                .debug_struct("S3")
                .field("https", https)
                .field("access_key", &access_key.as_ref().map(|_| "***"))
                .field("secret_key", &secret_key.as_ref().map(|_| "***"))
                .field("host", host)
                .field("bucket", bucket)
                .field("key", key)
                .finish(),
            ParsedUri::Http { url } => f
                .debug_struct("Http")
                .field("url", &redact(url.as_str()))
                .finish(),
            ParsedUri::Rbd {
                fsid,
                pool,
                image,
                snapshot,
            } => f
                .debug_struct("Rbd")
                .field("fsid", fsid)
                .field("pool", pool)
                .field("image", image)
                .field("snapshot", snapshot)
                .finish(),
            ParsedUri::Swift {
                scheme,
                container,
                object,
            } => f
                .debug_struct("Swift")
                .field("scheme", scheme)
                .field("container", container)
                .field("object", object)
                .finish(),
            ParsedUri::Cinder { volume_id } => f
                .debug_struct("Cinder")
                .field("volume_id", volume_id)
                .finish(),
            ParsedUri::Vsphere { host, path } => f
                .debug_struct("Vsphere")
                .field("host", host)
                .field("path", path)
                .finish(),
        }
    }
}

impl ParsedUri {
    /// The backend type that serves this URI.
    pub fn backend_type(&self) -> BackendType {
        match self {
            ParsedUri::File { .. } => BackendType::File,
            ParsedUri::S3 { .. } => BackendType::S3,
            ParsedUri::Http { .. } => BackendType::Http,
            ParsedUri::Rbd { .. } => BackendType::Rbd,
            ParsedUri::Swift { .. } => BackendType::Swift,
            ParsedUri::Cinder { .. } => BackendType::Cinder,
            ParsedUri::Vsphere { .. } => BackendType::Vmware,
        }
    }
}

fn malformed(uri: &str, why: &str) -> StoreError {
    StoreError::permanent(
        ErrorKind::MalformedUri,
        format!("malformed location {}: {why}", redact(uri)),
    )
}

/// Splits `scheme://rest`; the scheme is lower-cased.
fn split_scheme(uri: &str) -> Option<(String, &str)> {
    let (scheme, rest) = uri.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    Some((scheme.to_ascii_lowercase(), rest))
}

/// Parses a location URI of any scheme glance_store writes.
///
/// Errors are `Permanent`: `MalformedUri` for a URI its scheme's parser rejects,
/// `UnknownScheme` for a scheme glance_store does not know.
pub fn parse(uri: &str) -> Result<ParsedUri, StoreError> {
    let uri = uri.trim();
    let Some((scheme, rest)) = split_scheme(uri) else {
        return Err(malformed(uri, "no scheme"));
    };
    match scheme.as_str() {
        "file" | "filesystem" => parse_file(uri, rest),
        "s3" | "s3+http" | "s3+https" => parse_s3(uri, &scheme, rest),
        "http" | "https" => {
            let url = url::Url::parse(uri).map_err(|e| malformed(uri, &e.to_string()))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(malformed(uri, "no host"));
            }
            Ok(ParsedUri::Http { url })
        }
        "rbd" => parse_rbd(uri, rest),
        "swift" | "swift+http" | "swift+https" | "swift+config" => {
            let path = strip_credentials(rest).1;
            let mut parts: Vec<&str> = path.split('/').collect();
            if parts.len() < 3 {
                return Err(malformed(uri, "expected <auth>/<container>/<object>"));
            }
            let object = parts.pop().unwrap_or_default();
            let container = parts.pop().unwrap_or_default();
            if object.is_empty() || container.is_empty() || parts.iter().all(|p| p.is_empty()) {
                return Err(malformed(uri, "empty container, object or auth address"));
            }
            Ok(ParsedUri::Swift {
                scheme,
                container: container.to_owned(),
                object: object.to_owned(),
            })
        }
        "cinder" => {
            let last = rest.rsplit('/').next().unwrap_or_default();
            if uuid::Uuid::parse_str(last).is_err() {
                return Err(malformed(uri, "the volume id is not a UUID"));
            }
            Ok(ParsedUri::Cinder {
                volume_id: last.to_owned(),
            })
        }
        "vsphere" => {
            let url = url::Url::parse(uri).map_err(|e| malformed(uri, &e.to_string()))?;
            let host = url.host_str().unwrap_or_default().to_owned();
            if host.is_empty() {
                return Err(malformed(uri, "no host"));
            }
            Ok(ParsedUri::Vsphere {
                host,
                path: url.path().to_owned(),
            })
        }
        _ => Err(StoreError::permanent(
            ErrorKind::UnknownScheme,
            format!(
                "unknown store scheme '{scheme}' in location {}",
                redact(uri)
            ),
        )),
    }
}

fn parse_file(uri: &str, rest: &str) -> Result<ParsedUri, StoreError> {
    // Query and fragment are not part of the path, as with Python's urlparse.
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let mut path = &rest[..end];
    // urlparse also splits ";params" off the last segment; mirror it so that imaged resolves
    // the same file glance_store would.
    let last_start = path.rfind('/').map_or(0, |i| i + 1);
    if let Some(semi) = path[last_start..].find(';') {
        path = &path[..last_start + semi];
    }
    let path = path.trim();
    if path.is_empty() {
        return Err(malformed(uri, "empty path"));
    }
    Ok(ParsedUri::File {
        path: path.to_owned(),
    })
}

/// Splits `creds@rest` at the last `@`; returns `(creds, rest)`.
fn strip_credentials(rest: &str) -> (Option<&str>, &str) {
    match rest.rsplit_once('@') {
        Some((creds, tail)) => (Some(creds), tail),
        None => (None, rest),
    }
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn parse_s3(uri: &str, scheme: &str, rest: &str) -> Result<ParsedUri, StoreError> {
    let https = match scheme {
        "s3+https" => Some(true),
        "s3+http" => Some(false),
        _ => None,
    };
    let (creds, tail) = strip_credentials(rest);
    let (access_key, secret_key) = match creds {
        Some(creds) => match creds.split_once(':') {
            Some((a, s)) if !a.is_empty() && !s.is_empty() => (Some(decode(a)), Some(decode(s))),
            _ => return Err(malformed(uri, "credentials must be <access>:<secret>")),
        },
        None => (None, None),
    };
    let mut parts: Vec<&str> = tail.split('/').collect();
    if parts.len() < 3 {
        return Err(malformed(uri, "expected <host>/<bucket>/<key>"));
    }
    let key = parts.pop().unwrap_or_default();
    let bucket = parts.pop().unwrap_or_default();
    let host = parts.join("/");
    if key.is_empty() || bucket.is_empty() || host.is_empty() {
        return Err(malformed(uri, "empty host, bucket or key"));
    }
    Ok(ParsedUri::S3 {
        https,
        access_key,
        secret_key,
        host,
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    })
}

fn parse_rbd(uri: &str, rest: &str) -> Result<ParsedUri, StoreError> {
    let parts: Vec<String> = rest.split('/').map(decode).collect();
    if parts.iter().any(String::is_empty) {
        return Err(malformed(uri, "empty component"));
    }
    match parts.as_slice() {
        [image] => Ok(ParsedUri::Rbd {
            fsid: None,
            pool: None,
            image: image.clone(),
            snapshot: None,
        }),
        [fsid, pool, image, snapshot] => Ok(ParsedUri::Rbd {
            fsid: Some(fsid.clone()),
            pool: Some(pool.clone()),
            image: image.clone(),
            snapshot: Some(snapshot.clone()),
        }),
        _ => Err(malformed(uri, "expected 1 or 4 components")),
    }
}

/// Returns `uri` with any userinfo replaced by `***` and any query string by `?***`.
///
/// Works on malformed input too, so an unparsable location can still be logged safely.
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        // Without a scheme nothing reliable marks credentials; keep only a length.
        return if uri.contains('@') || uri.contains(':') {
            format!("<unparsable location, {} bytes>", uri.len())
        } else {
            uri.to_owned()
        };
    };
    let rest = match rest.rsplit_once('@') {
        Some((_, tail)) => format!("***@{tail}"),
        None => rest.to_owned(),
    };
    let rest = match rest.split_once('?') {
        Some((head, _)) => format!("{head}?***"),
        None => rest,
    };
    format!("{scheme}://{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    #[test]
    fn file_paths_are_not_decoded() {
        let p = parse("file:///var/lib/glance/images/%2e%2e/x").unwrap();
        assert_eq!(
            p,
            ParsedUri::File {
                path: "/var/lib/glance/images/%2e%2e/x".into()
            }
        );
        let p = parse("filesystem:///a/b?q#f").unwrap();
        assert_eq!(
            p,
            ParsedUri::File {
                path: "/a/b".into()
            }
        );
        let p = parse("file:///a/b;params").unwrap();
        assert_eq!(
            p,
            ParsedUri::File {
                path: "/a/b".into()
            }
        );
        assert_eq!(
            parse("file://").unwrap_err().kind(),
            &ErrorKind::MalformedUri
        );
    }

    #[test]
    fn s3_credentials_split_at_last_at_sign() {
        let p = parse("s3+https://AK%3Ax:se/cr@t@s3.example.com:8080/prefix/bucket/img-1").unwrap();
        match p {
            ParsedUri::S3 {
                https,
                access_key,
                secret_key,
                host,
                bucket,
                key,
            } => {
                assert_eq!(https, Some(true));
                assert_eq!(access_key.as_deref(), Some("AK:x"));
                assert_eq!(secret_key.as_deref(), Some("se/cr@t"));
                assert_eq!(host, "s3.example.com:8080/prefix");
                assert_eq!(bucket, "bucket");
                assert_eq!(key, "img-1");
            }
            other => panic!("unexpected {other:?}"),
        }
        let p = parse("s3://host/b/k").unwrap();
        assert!(matches!(
            p,
            ParsedUri::S3 {
                https: None,
                access_key: None,
                ..
            }
        ));
        assert!(parse("s3://host/k").is_err());
    }

    #[test]
    fn debug_of_s3_hides_secrets() {
        let p = parse("s3://AKIDSECRETX:VERYSECRETKEY@h/b/k").unwrap();
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("VERYSECRETKEY"), "{dbg}");
        assert!(!dbg.contains("AKIDSECRETX"), "{dbg}");
    }

    #[test]
    fn unsupported_schemes_parse() {
        let rbd = parse("rbd://fsid/pool/img%2F1/snap").unwrap();
        assert_eq!(
            rbd,
            ParsedUri::Rbd {
                fsid: Some("fsid".into()),
                pool: Some("pool".into()),
                image: "img/1".into(),
                snapshot: Some("snap".into())
            }
        );
        assert!(matches!(
            parse("rbd://img").unwrap(),
            ParsedUri::Rbd { fsid: None, .. }
        ));
        assert!(parse("rbd://a/b").is_err());
        assert_eq!(
            parse("swift+config://ref1/cont/obj")
                .unwrap()
                .backend_type(),
            BackendType::Swift
        );
        assert_eq!(
            parse("swift://u:k@auth.example/v1/cont/obj")
                .unwrap()
                .backend_type(),
            BackendType::Swift
        );
        let id = "6b1e2b3c-1d2e-4f50-8a9b-0c1d2e3f4a5b";
        assert_eq!(
            parse(&format!("cinder://store1/{id}")).unwrap(),
            ParsedUri::Cinder {
                volume_id: id.into()
            }
        );
        assert!(parse("cinder://not-a-uuid").is_err());
        assert_eq!(
            parse("vsphere://vc.example/folder/x?dcPath=dc&dsName=ds")
                .unwrap()
                .backend_type(),
            BackendType::Vmware
        );
    }

    #[test]
    fn unknown_and_schemeless_are_permanent() {
        let e = parse("gopher://x/y").unwrap_err();
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert_eq!(e.kind(), &ErrorKind::UnknownScheme);
        let e = parse("/just/a/path").unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::MalformedUri);
    }

    #[test]
    fn redaction_removes_userinfo_and_query() {
        assert_eq!(redact("s3://AK:SE/CR@T@host/b/k"), "s3://***@host/b/k");
        assert_eq!(redact("https://h/x?X-Amz-Signature=abc"), "https://h/x?***");
        assert_eq!(redact("file:///a/b"), "file:///a/b");
        assert!(!redact("AK:SECRET@host").contains("SECRET"));
    }
}
