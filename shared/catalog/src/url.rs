//! Parsing of SQLAlchemy-style `[database] connection` URLs as operators
//! write them for Glance, and their password-masking display.

use std::fmt;

use crate::error::{CatalogError, Result};

/// The database engine behind a catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    Sqlite,
    Postgres,
    MySql,
}

impl Engine {
    /// Lower-case name used in logs and test names.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgresql",
            Engine::MySql => "mysql",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a SQLite catalog lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqliteTarget {
    /// A file path: absolute for `sqlite:////abs`, relative to the working
    /// directory for `sqlite:///rel`.
    File(std::path::PathBuf),
    /// `sqlite://` with no path: an in-memory database, as SQLAlchemy does.
    Memory,
}

/// A parsed connection URL.
///
/// `Display` masks the password, so the value can go into logs and errors.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    engine: Engine,
    /// The URL as given (kept only to build the driver URL; never displayed).
    raw: String,
    sqlite: Option<SqliteTarget>,
    /// For servers: a `url::Url` rewritten to the sqlx scheme, with query
    /// arguments that sqlx does not understand removed.
    server: Option<url::Url>,
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({self})")
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_password(&self.raw))
    }
}

/// Replaces the password of a `scheme://user:password@host` URL with `***`.
/// Works on strings that do not parse as URLs too, so that an invalid URL
/// can still be shown safely in an error.
pub fn mask_password(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &raw[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return raw.to_string();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return raw.to_string();
    };
    format!(
        "{}{}:***{}",
        &raw[..rest_start],
        &userinfo[..colon],
        &raw[rest_start + at..]
    )
}

impl DbUrl {
    /// Parses a SQLAlchemy URL (`dialect[+driver]://…`).
    pub fn parse(raw: &str) -> Result<Self> {
        let raw = raw.trim();
        let invalid = |reason: &str| CatalogError::InvalidUrl {
            url: mask_password(raw),
            reason: reason.to_string(),
        };
        let Some(scheme_end) = raw.find("://") else {
            return Err(invalid("missing \"://\""));
        };
        let scheme = raw[..scheme_end].to_ascii_lowercase();
        let dialect = scheme.split('+').next().unwrap_or_default();
        let engine = match dialect {
            "sqlite" => Engine::Sqlite,
            "postgresql" | "postgres" => Engine::Postgres,
            "mysql" | "mariadb" => Engine::MySql,
            other => {
                return Err(CatalogError::UnsupportedDialect {
                    dialect: other.to_string(),
                    url: mask_password(raw),
                });
            }
        };
        if engine == Engine::Sqlite {
            // SQLAlchemy: everything after "sqlite:///" is the path, so four
            // slashes make it absolute and three make it relative.
            let after = &raw[scheme_end + 3..];
            let after = after.split('?').next().unwrap_or_default();
            let target = if after.is_empty() {
                SqliteTarget::Memory
            } else {
                let Some(path) = after.strip_prefix('/') else {
                    return Err(invalid(
                        "a SQLite URL has no host: use sqlite:////absolute/path or sqlite:///relative/path",
                    ));
                };
                if path.is_empty() || path == ":memory:" {
                    SqliteTarget::Memory
                } else {
                    let decoded = percent_encoding::percent_decode_str(path)
                        .decode_utf8()
                        .map_err(|_| invalid("path is not UTF-8"))?;
                    SqliteTarget::File(std::path::PathBuf::from(decoded.as_ref()))
                }
            };
            return Ok(DbUrl {
                engine,
                raw: raw.to_string(),
                sqlite: Some(target),
                server: None,
            });
        }
        let sqlx_scheme = match engine {
            Engine::Postgres => "postgres",
            _ => "mysql",
        };
        let rewritten = format!("{sqlx_scheme}{}", &raw[scheme_end..]);
        let mut url = url::Url::parse(&rewritten).map_err(|e| invalid(&e.to_string()))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("missing host"));
        }
        // PyMySQL / psycopg2 arguments mean nothing to sqlx; keep only what
        // sqlx understands. `charset=utf8` is what every Glance deployment
        // writes; the session charset is set explicitly on connect.
        let keep: &[&str] = match engine {
            Engine::Postgres => &[
                "sslmode",
                "sslrootcert",
                "sslcert",
                "sslkey",
                "application_name",
                "options",
            ],
            _ => &["ssl-mode", "ssl-ca", "ssl-cert", "ssl-key", "socket"],
        };
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| keep.contains(&k.as_ref()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.set_query(None);
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        Ok(DbUrl {
            engine,
            raw: raw.to_string(),
            sqlite: None,
            server: Some(url),
        })
    }

    /// The engine this URL selects.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The SQLite target, for SQLite URLs.
    pub fn sqlite_target(&self) -> Option<&SqliteTarget> {
        self.sqlite.as_ref()
    }

    /// The database name on a server URL (the path without its slash).
    pub fn database_name(&self) -> Option<String> {
        self.server
            .as_ref()
            .map(|u| u.path().trim_start_matches('/').to_string())
            .filter(|s| !s.is_empty())
    }

    /// The URL handed to sqlx for server engines (contains the password:
    /// never log it).
    pub(crate) fn driver_url(&self) -> Option<&url::Url> {
        self.server.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_absolute_and_relative() {
        let u = DbUrl::parse("sqlite:////var/lib/glance/glance.sqlite").unwrap();
        assert_eq!(u.engine(), Engine::Sqlite);
        assert_eq!(
            u.sqlite_target(),
            Some(&SqliteTarget::File("/var/lib/glance/glance.sqlite".into()))
        );
        let u = DbUrl::parse("sqlite:///glance.sqlite").unwrap();
        assert_eq!(
            u.sqlite_target(),
            Some(&SqliteTarget::File("glance.sqlite".into()))
        );
        let u = DbUrl::parse("sqlite://").unwrap();
        assert_eq!(u.sqlite_target(), Some(&SqliteTarget::Memory));
        assert!(DbUrl::parse("sqlite://host/x.db").is_err());
    }

    #[test]
    fn server_dialects_and_drivers() {
        let u = DbUrl::parse("mysql+pymysql://glance:s3cret@db:3306/glance?charset=utf8").unwrap();
        assert_eq!(u.engine(), Engine::MySql);
        assert_eq!(u.database_name().as_deref(), Some("glance"));
        let d = u.driver_url().unwrap();
        assert_eq!(d.scheme(), "mysql");
        assert_eq!(d.query(), None, "charset is dropped");
        assert_eq!(d.password(), Some("s3cret"));
        let u = DbUrl::parse("postgresql+psycopg2://glance:pw@pg/glance?sslmode=require").unwrap();
        assert_eq!(u.engine(), Engine::Postgres);
        assert_eq!(u.driver_url().unwrap().scheme(), "postgres");
        assert_eq!(u.driver_url().unwrap().query(), Some("sslmode=require"));
        assert_eq!(
            DbUrl::parse("postgresql://g@pg/glance").unwrap().engine(),
            Engine::Postgres
        );
        assert_eq!(
            DbUrl::parse("mysql://g@db/glance").unwrap().engine(),
            Engine::MySql
        );
    }

    #[test]
    fn unsupported_dialect_masks_password() {
        let err = DbUrl::parse("oracle+cx://scott:tiger@host/db").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("oracle"), "{msg}");
        assert!(msg.contains("scott:***@host"), "{msg}");
        assert!(!msg.contains("tiger"), "{msg}");
    }

    #[test]
    fn display_masks_password() {
        let u = DbUrl::parse("mysql+pymysql://glance:hunter2@db/glance").unwrap();
        assert_eq!(u.to_string(), "mysql+pymysql://glance:***@db/glance");
        assert!(!format!("{u:?}").contains("hunter2"));
        assert_eq!(mask_password("postgresql://u@h/d"), "postgresql://u@h/d");
        assert_eq!(
            mask_password("postgresql://u:p@ss@h/d"),
            "postgresql://u:***@h/d"
        );
    }
}
