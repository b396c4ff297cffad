//! Connection URLs: the scheme picks the engine, which checks the rest, while
//! the job is validated (no I/O). A URL's password never shows.

use std::fmt;

use crate::error::JobError;

/// A connection URL whose `Display` and `Debug` hide the password, so that no log
/// line, error or summary can print it.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl(String);

impl DbUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL to write into a file: without its password, and without the query
    /// parameters not known to be harmless.
    pub fn without_secrets(&self) -> String {
        let Ok(mut url) = url::Url::parse(&self.0) else {
            return String::new();
        };
        let _ = url.set_password(None);
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| is_shown(&self.0, k))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        url.to_string()
    }

    /// The URL for messages: the password and any query value that is not known to
    /// be harmless are replaced by `****`.
    pub fn redacted(&self) -> String {
        let Ok(mut url) = url::Url::parse(&self.0) else {
            return "<unparseable connection URL>".to_string();
        };
        if url.password().is_some() {
            // set_password fails only for URLs that cannot have one.
            let _ = url.set_password(Some("****"));
        }
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let shown = is_shown(&self.0, &k);
                (
                    k.into_owned(),
                    if shown { v.into_owned() } else { "****".into() },
                )
            })
            .collect();
        if pairs.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({})", self.redacted())
    }
}

/// Checks a connection URL from the job (`key` names it in messages): its
/// scheme picks the engine, and that engine checks the rest. Never shows the
/// URL's password.
pub fn parse_url(key: &str, url: String) -> Result<DbUrl, JobError> {
    let url = DbUrl::new(url.trim());
    let scheme = url
        .expose()
        .split_once(':')
        .map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgres" | "postgresql") => super::postgres::libpq::check_url(key, url.expose()).map(|()| url),
        Some("sqlite") => super::sqlite::url::file_url(key, url.expose()).map(|_| url),
        Some("mysql" | "mariadb") => super::mysql::url::parse_url(key, url.expose()).map(|_| url),
        Some(other) if !other.is_empty() && !other.contains('/') => Err(JobError::new(format!(
            "{key}: scheme \"{other}\" is not supported (expected postgres://user@host:port/database, mysql://user@host:port/database or sqlite://path/to/file.db)"
        ))),
        _ => Err(JobError::new(format!(
            "{key}: not a URL (expected postgres://user@host:port/database, mysql://user@host:port/database or sqlite://path/to/file.db)"
        ))),
    }
}

/// Whether a URL parameter's value may be shown in messages and files: the
/// engine's parameters known to hold no secret (a SQLite URL has none).
pub fn is_shown(url: &str, name: &str) -> bool {
    let scheme = url
        .split_once(':')
        .map_or("", |(s, _)| s)
        .to_ascii_lowercase();
    match scheme.as_str() {
        "sqlite" => true,
        "mysql" | "mariadb" => super::mysql::url::is_shown(name),
        _ => super::postgres::libpq::is_shown(name),
    }
}
