//! `sqlite:` URLs as sqlx spells them: a file, and the parameters stride reads.

use std::path::PathBuf;

use crate::error::JobError;

/// URL parameters stride reads (as sqlx and SQLite's URIs spell them).
const PARAMETERS: &[&str] = &["mode", "immutable"];

/// A file and its parameters, from a `sqlite:` URL.
pub struct FileUrl {
    pub path: PathBuf,
    pub mode: Option<String>,
    pub immutable: bool,
}

pub fn file_url(key: &str, text: &str) -> Result<FileUrl, JobError> {
    let rest = &text["sqlite:".len()..];
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = url::form_urlencoded::parse(path.as_bytes())
        .map(|(k, v)| {
            if v.is_empty() {
                k.into_owned()
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<String>();
    let expected = "(expected sqlite://path/to/file.db or sqlite:///absolute/path.db)";
    if path.is_empty() || path == ":memory:" {
        return Err(JobError::new(format!(
            "{key}: no file named {expected}; an in-memory database is gone when stride ends"
        )));
    }
    let mut out = FileUrl {
        path: PathBuf::from(path),
        mode: None,
        immutable: false,
    };
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match (k.as_ref(), v.as_ref()) {
            ("mode", "ro" | "rw" | "rwc") => out.mode = Some(v.into_owned()),
            ("mode", other) => {
                return Err(JobError::new(format!(
                    "{key}: mode={other} is not supported (expected ro, rw or rwc)"
                )))
            }
            ("immutable", "1" | "true") => out.immutable = true,
            ("immutable", "0" | "false") => out.immutable = false,
            ("immutable", other) => {
                return Err(JobError::new(format!(
                    "{key}: immutable={other} (expected 1 or 0)"
                )))
            }
            (other, _) => {
                return Err(JobError::new(format!(
                    "{key}: unknown parameter \"{other}\" for SQLite (expected one of: {})",
                    PARAMETERS.join(", ")
                )))
            }
        }
    }
    Ok(out)
}
