//! `mysql://` and `mariadb://` URLs and the `[client]` section of
//! `~/.my.cnf`, as the MySQL client reads them: a leaf (it imports only
//! `crate::error`), so `engine::url` can check a URL without the engine.

use std::fmt;

use crate::error::JobError;

/// The port the MySQL client uses when none is given.
pub const DEFAULT_PORT: u16 = 3306;

/// URL parameters stride reads, with the MySQL client's option names.
pub const PARAMETERS: &[&str] = &["socket", "ssl-mode", "ssl-ca", "ssl-cert", "ssl-key"];

/// Whether a URL parameter's value may be shown: none of them is a secret (a
/// key file's path is not the key).
pub fn is_shown(name: &str) -> bool {
    PARAMETERS.contains(&name)
}

/// How a connection is encrypted: the MySQL client's `--ssl-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disabled,
    /// TLS if the server offers it (the client's default), not verified.
    Preferred,
    /// TLS or no connection; the certificate is not verified.
    Required,
    /// TLS with the server's certificate verified against `ssl-ca` (or the
    /// system's roots without it).
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyIdentity,
}

impl SslMode {
    pub const ALL: [SslMode; 5] = [
        SslMode::Disabled,
        SslMode::Preferred,
        SslMode::Required,
        SslMode::VerifyCa,
        SslMode::VerifyIdentity,
    ];

    /// The client's spelling, `VERIFY_CA`.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disabled => "DISABLED",
            SslMode::Preferred => "PREFERRED",
            SslMode::Required => "REQUIRED",
            SslMode::VerifyCa => "VERIFY_CA",
            SslMode::VerifyIdentity => "VERIFY_IDENTITY",
        }
    }

    /// Case-insensitive, as the client reads it.
    pub fn parse(text: &str) -> Option<SslMode> {
        SslMode::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(text))
    }
}

/// A `mysql://` or `mariadb://` URL, checked. `Display` and `Debug` never
/// show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlUrl {
    /// The scheme was `mariadb`: for messages only, the protocol is one.
    pub mariadb: bool,
    pub user: Option<String>,
    password: Option<String>,
    /// `localhost` when the URL names none.
    pub host: String,
    pub port: u16,
    /// `socket=`: a Unix socket, used instead of host and port.
    pub socket: Option<String>,
    pub database: Option<String>,
    pub ssl_mode: SslMode,
    pub ssl_ca: Option<String>,
    pub ssl_cert: Option<String>,
    pub ssl_key: Option<String>,
}

impl MysqlUrl {
    /// The password, for the driver only.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }
}

impl fmt::Display for MysqlUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", if self.mariadb { "mariadb" } else { "mysql" })?;
        if let Some(user) = &self.user {
            f.write_str(&encode(user))?;
            if self.password.is_some() {
                f.write_str(":****")?;
            }
            f.write_str("@")?;
        }
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{host}:{}/", self.port)?;
        if let Some(db) = &self.database {
            f.write_str(&encode(db))?;
        }
        let params: Vec<String> = [
            ("socket", self.socket.clone()),
            (
                "ssl-mode",
                (self.ssl_mode != SslMode::Preferred).then(|| self.ssl_mode.name().to_string()),
            ),
            ("ssl-ca", self.ssl_ca.clone()),
            ("ssl-cert", self.ssl_cert.clone()),
            ("ssl-key", self.ssl_key.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(&v))))
        .collect();
        if !params.is_empty() {
            write!(f, "?{}", params.join("&"))?;
        }
        Ok(())
    }
}

impl fmt::Debug for MysqlUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MysqlUrl({self})")
    }
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Checks a `mysql://user:password@host:port/database?ssl-mode=...` URL (or
/// `mariadb://`; `key` names it in messages). Parameters mean what the MySQL
/// client's options of the same name mean: an `ssl-ca` without an `ssl-mode`
/// implies `VERIFY_CA`, an explicit `PREFERRED` or `REQUIRED` encrypts
/// without verifying. One difference: `VERIFY_CA` and `VERIFY_IDENTITY`
/// without `ssl-ca` verify against the system's roots (the client refuses
/// them), as a cloud database's certificate needs.
pub fn parse_url(key: &str, text: &str) -> Result<MysqlUrl, JobError> {
    let expected = "(expected mysql://user:password@host:3306/database)";
    let fail = |what: String| Err(JobError::new(format!("{key}: {what}")));
    // The parse error never contains the URL itself, so it is safe to show.
    let u = match url::Url::parse(text) {
        Ok(u) => u,
        Err(e) => return fail(format!("not a valid URL: {e} {expected}")),
    };
    let mariadb = match u.scheme() {
        "mysql" => false,
        "mariadb" => true,
        other => return fail(format!("scheme \"{other}\" is not MySQL's {expected}")),
    };
    // Without `//` everything after the scheme is a path: a password in it
    // could not be told apart to hide it.
    if !text[u.scheme().len()..].starts_with("://") {
        return fail(format!("not a URL with a host {expected}"));
    }
    let host = match u.host() {
        Some(url::Host::Ipv6(a)) => a.to_string(),
        Some(h) => decode(&h.to_string()),
        None => String::new(),
    };
    let database = decode(u.path().trim_start_matches('/'));
    if database.contains('/') {
        return fail(format!(
            "\"{database}\" is not a database name (one path segment) {expected}"
        ));
    }
    let mut url = MysqlUrl {
        mariadb,
        user: Some(decode(u.username())).filter(|s| !s.is_empty()),
        password: u.password().map(decode),
        host: if host.is_empty() {
            "localhost".into()
        } else {
            host
        },
        port: u.port().unwrap_or(DEFAULT_PORT),
        socket: None,
        database: Some(database).filter(|s| !s.is_empty()),
        ssl_mode: SslMode::Preferred,
        ssl_ca: None,
        ssl_cert: None,
        ssl_key: None,
    };
    let mut seen: Vec<String> = Vec::new();
    let mut mode_given = false;
    for (k, v) in u.query_pairs() {
        if seen.contains(&k.to_string()) {
            return fail(format!("parameter \"{k}\" is given twice"));
        }
        seen.push(k.to_string());
        let file = || {
            if v.is_empty() {
                Err(JobError::new(format!(
                    "{key}: {k} is empty (expected a path)"
                )))
            } else {
                Ok(Some(v.to_string()))
            }
        };
        match k.as_ref() {
            "socket" => url.socket = file()?,
            "ssl-ca" => url.ssl_ca = file()?,
            "ssl-cert" => url.ssl_cert = file()?,
            "ssl-key" => url.ssl_key = file()?,
            "ssl-mode" => {
                mode_given = true;
                url.ssl_mode = match SslMode::parse(&v) {
                    Some(mode) => mode,
                    None => {
                        return fail(format!(
                            "ssl-mode={v} is not one of {}",
                            SslMode::ALL.map(SslMode::name).join(", ")
                        ))
                    }
                }
            }
            // An unknown parameter may be a secret: name the key only.
            other => {
                return fail(format!(
                    "unknown parameter \"{other}\" for MySQL (expected one of: {})",
                    PARAMETERS.join(", ")
                ))
            }
        }
    }
    match (&url.ssl_cert, &url.ssl_key) {
        (Some(_), None) => return fail(
            "ssl-cert is given without ssl-key (expected both: the client certificate and its key)"
                .into(),
        ),
        (None, Some(_)) => return fail(
            "ssl-key is given without ssl-cert (expected both: the client certificate and its key)"
                .into(),
        ),
        _ => {}
    }
    let files = url.ssl_ca.is_some() || url.ssl_cert.is_some();
    if url.ssl_mode == SslMode::Disabled && files {
        return fail(
            "ssl-mode=DISABLED with certificates (ssl-ca, ssl-cert, ssl-key): expected one or the other"
                .into(),
        );
    }
    if !mode_given && url.ssl_ca.is_some() {
        url.ssl_mode = SslMode::VerifyCa;
    }
    Ok(url)
}

/// A user and a password, from wherever they came. `Debug` hides the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "****"))
            .finish()
    }
}

/// The `user` and `password` of the `[client]` sections of an option file
/// (`~/.my.cnf`), as the MySQL client reads them: `#` and `;` comments (`#`
/// also after a value), values quoted with `"` or `'`, the escapes `\n`,
/// `\t`, `\r`, `\b`, `\s` (space) and `\\`, `-` and `_` alike in names, a later
/// value over an earlier one. Other sections (`[mysql]` too: it is the
/// `mysql` program's own, and stride is another client program) and
/// `!include` lines are ignored. A `password` without a value (the client
/// then asks for one) gives none.
pub fn my_cnf_client(text: &str) -> Credentials {
    let mut out = Credentials::default();
    let mut in_client = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';', '!']) {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            let name = section.split(']').next().unwrap_or("").trim();
            in_client = name.eq_ignore_ascii_case("client");
            continue;
        }
        if !in_client {
            continue;
        }
        let (name, value) = match line.split_once('=') {
            Some((n, v)) => (n.trim(), Some(option_value(v.trim()))),
            None => (line, None),
        };
        match name.replace('_', "-").to_ascii_lowercase().as_str() {
            "user" => out.user = value,
            "password" => out.password = value,
            _ => {}
        }
    }
    out
}

/// An option file's value: quoted, or up to a `#` comment.
fn option_value(raw: &str) -> String {
    let quote = raw.chars().next().filter(|c| *c == '"' || *c == '\'');
    let body = match quote {
        Some(q) => {
            let inner = &raw[1..];
            inner.rfind(q).map_or(inner, |end| &inner[..end])
        }
        None => raw.split('#').next().unwrap_or("").trim_end(),
    };
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('s') => out.push(' '),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Who stride logs in as. Precedence, as the MySQL client's: the user from
/// the URL, else the option file's; the password from the URL, else
/// `MYSQL_PWD`, else the option file's (the client applies it whatever the
/// user, and so does stride). Neither found: none (the server decides).
pub fn credentials(url: &MysqlUrl, mysql_pwd: Option<&str>, my_cnf: &Credentials) -> Credentials {
    Credentials {
        user: url.user.clone().or_else(|| my_cnf.user.clone()),
        password: url
            .password
            .clone()
            .or_else(|| mysql_pwd.map(str::to_string))
            .or_else(|| my_cnf.password.clone()),
    }
}
