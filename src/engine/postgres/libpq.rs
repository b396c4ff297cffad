//! libpq's connection parameters, resolved the way libpq resolves them: the URL's
//! query first, then the `PG*` environment variables, then the files in
//! `~/.postgresql`. Pure: the environment and the file system come in through
//! [`Environment`], so every rule is unit-tested here.
//!
//! sqlx parses only some of these parameters, and gives some of them another
//! meaning (`allow` is `disable` to it; `require` never verifies, even with a root
//! certificate). stride resolves them all here and hands sqlx the options that do
//! what libpq would; a parameter stride cannot honour is refused by name (exit 2),
//! never accepted and ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::JobError;

/// `sslmode`, with libpq's meaning for each value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// Plain text first; TLS if the server turns the plain connection down.
    Allow,
    /// TLS first; plain text if the server offers no TLS or turns TLS down.
    Prefer,
    /// TLS only; the chain is verified when a root certificate is at hand.
    Require,
    /// TLS only, the chain verified against the root certificate.
    VerifyCa,
    /// TLS only, the chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    pub const NAMES: [&'static str; 6] = [
        "disable",
        "allow",
        "prefer",
        "require",
        "verify-ca",
        "verify-full",
    ];

    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Where the certificates that may sign the server's come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file: only the certificates in it are trusted (as libpq does).
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trusted roots (or, where it
    /// has none, the Mozilla roots compiled into stride).
    System,
}

/// How one connection attempt goes: with TLS or not, and what it verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Plain,
    /// TLS if the server offers it, plain text if it answers that it does not
    /// (sqlx's `prefer`); nothing verified.
    TlsIfOffered,
    /// TLS, nothing verified.
    Tls,
    /// TLS, the chain verified.
    TlsVerifyCa,
    /// TLS, the chain and the host name verified.
    TlsVerifyFull,
}

/// `target_session_attrs`, for the one host stride connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAttrs {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl SessionAttrs {
    const NAMES: [&'static str; 6] = [
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ];

    fn parse(value: &str) -> Option<SessionAttrs> {
        Some(match value {
            "any" => SessionAttrs::Any,
            "read-write" => SessionAttrs::ReadWrite,
            "read-only" => SessionAttrs::ReadOnly,
            "primary" => SessionAttrs::Primary,
            "standby" => SessionAttrs::Standby,
            "prefer-standby" => SessionAttrs::PreferStandby,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Whether a server with these properties is acceptable. With a single host,
    /// `prefer-standby` takes whatever answers, as libpq does once no standby is
    /// left to try.
    pub fn accepts(self, read_only: bool, in_recovery: bool) -> bool {
        match self {
            SessionAttrs::Any | SessionAttrs::PreferStandby => true,
            SessionAttrs::ReadWrite => !read_only,
            SessionAttrs::ReadOnly => read_only,
            SessionAttrs::Primary => !in_recovery,
            SessionAttrs::Standby => in_recovery,
        }
    }
}

/// TCP keepalives of a connection (libpq's `keepalives*`). Unix sockets have none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalives {
    pub enabled: bool,
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

/// stride's keepalives when the URL says nothing: a dead peer is noticed within
/// about 90 s of silence (60 s idle, then 3 probes 10 s apart), well inside the
/// idle timeouts of cloud NATs and load balancers (AWS NAT gateway 350 s, Azure
/// 240 s, GCP Cloud NAT 1200 s), so those never drop a quiet connection.
pub const DEFAULT_KEEPALIVES: Keepalives = Keepalives {
    enabled: true,
    idle: Duration::from_secs(60),
    interval: Duration::from_secs(10),
    count: 3,
};

/// stride's `connect_timeout` when neither the URL nor `PGCONNECT_TIMEOUT` sets
/// one: long enough for a TLS handshake across continents and a busy server's
/// authentication, short enough that a cron run against a host that drops
/// packets fails (and retries) instead of hanging.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything stride decides about a connection from libpq's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub ssl_mode: SslMode,
    /// The trusted roots, when verifying (or when `require`/`prefer`/`allow` find
    /// one at hand, which makes them verify the chain, as in libpq).
    pub root_cert: Option<RootCert>,
    /// The client certificate and its key, sent when the server asks.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `None`: wait as long as the network does (`connect_timeout=0`).
    pub connect_timeout: Option<Duration>,
    pub keepalives: Keepalives,
    pub session_attrs: SessionAttrs,
}

impl Params {
    /// The attempts a connection makes, in order, until one succeeds: libpq's
    /// fallbacks for `allow` and `prefer`.
    pub fn attempts(&self) -> Vec<Attempt> {
        let verified = match (&self.root_cert, self.ssl_mode) {
            (_, SslMode::VerifyFull) => Attempt::TlsVerifyFull,
            (Some(_), _) => Attempt::TlsVerifyCa,
            (None, SslMode::Prefer) => Attempt::TlsIfOffered,
            (None, _) => Attempt::Tls,
        };
        match self.ssl_mode {
            SslMode::Disable => vec![Attempt::Plain],
            SslMode::Allow => vec![Attempt::Plain, verified],
            SslMode::Prefer => vec![verified, Attempt::Plain],
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => vec![verified],
        }
    }
}

/// The process environment as libpq sees it.
pub struct Environment<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
    /// The home directory (`~/.postgresql` lives there).
    pub home: Option<PathBuf>,
    pub is_file: &'a dyn Fn(&Path) -> bool,
    /// Group or world permission bits of a file (`mode & 0o077`), `None` if it
    /// cannot be read.
    pub loose_permissions: &'a dyn Fn(&Path) -> Option<u32>,
}

impl Environment<'_> {
    /// The real process environment and file system.
    pub fn process() -> Environment<'static> {
        use std::os::unix::fs::PermissionsExt;
        Environment {
            var: &|name| std::env::var(name).ok().filter(|v| !v.is_empty()),
            home: std::env::var_os("HOME").map(PathBuf::from),
            is_file: &|p| p.is_file(),
            loose_permissions: &|p| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| m.permissions().mode() & 0o077)
            },
        }
    }
}

/// URL parameters sqlx reads itself (stride passes them through to it).
pub const DRIVER_PARAMETERS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "options",
    "statement-cache-capacity",
];

/// URL parameters stride resolves itself (and keeps from sqlx).
pub const STRIDE_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "target_session_attrs",
    "application_name",
    "fallback_application_name",
];

/// libpq parameters stride does not implement, and why, so that a URL pasted from
/// a libpq program is refused by name rather than half-understood.
const REFUSED_PARAMETERS: &[(&str, &str)] = &[
    ("sslpassword", "encrypted client keys are not supported; decrypt the key (openssl pkey -in key.pem -out plain.pem) and keep it 0600"),
    ("sslcrl", "certificate revocation lists are not checked"),
    ("sslcrldir", "certificate revocation lists are not checked"),
    ("sslcompression", "TLS compression is not supported"),
    ("sslsni", "SNI is always sent for host names (and never for IP addresses)"),
    ("sslnegotiation", "only the standard negotiation (SSLRequest) is supported"),
    ("sslcertmode", "the client certificate is sent when sslcert is set"),
    ("ssl_min_protocol_version", "TLS 1.2 and 1.3 are always the versions offered"),
    ("ssl_max_protocol_version", "TLS 1.2 and 1.3 are always the versions offered"),
    ("gssencmode", "GSSAPI encryption is not supported"),
    ("gsslib", "GSSAPI is not supported"),
    ("krbsrvname", "Kerberos is not supported"),
    ("channel_binding", "SCRAM channel binding is not supported"),
    ("require_auth", "the server's choice of authentication is accepted"),
    ("requirepeer", "peer checks on Unix sockets are not supported"),
    ("passfile", "the password file is ~/.pgpass (or PGPASSFILE)"),
    ("service", "connection service files are not supported"),
    ("load_balance_hosts", "one host per URL"),
    ("replication", "stride opens ordinary sessions"),
    ("tcp_user_timeout", "use [run] stall_timeout"),
    ("client_encoding", "stride's sessions use the database's encoding for text and UTF-8 on the wire"),
];

/// Why stride refuses the libpq parameter `name`, if it does.
pub fn refusal(name: &str) -> Option<&'static str> {
    REFUSED_PARAMETERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, why)| *why)
}

/// URL parameters whose values may be secret: never shown in messages or files.
const SECRET_PARAMETERS: &[&str] = &["password", "sslkey", "ssl-key", "options"];

/// Whether the value of URL parameter `name` may appear in messages and in a
/// job file stride writes: a known parameter that is not a secret.
pub fn is_shown(name: &str) -> bool {
    (DRIVER_PARAMETERS.contains(&name) || STRIDE_PARAMETERS.contains(&name))
        && !SECRET_PARAMETERS.contains(&name)
}

/// Whether `name` is a URL parameter stride or sqlx reads.
pub fn is_known(name: &str) -> bool {
    DRIVER_PARAMETERS.contains(&name)
        || STRIDE_PARAMETERS.contains(&name)
        || name.starts_with("options[")
}

/// Resolves `query` (the URL's parameters) with `env`. `key` names the job key
/// (`source.url`) in errors.
pub fn resolve(
    key: &str,
    query: &[(String, String)],
    env: &Environment,
) -> Result<Params, JobError> {
    let get = |names: &[&str]| -> Option<&str> {
        query
            .iter()
            .rev()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.as_str())
    };
    for (k, _) in query {
        if let Some(why) = refusal(k) {
            return Err(JobError::new(format!(
                "{key}: parameter \"{k}\" is not supported by stride ({why})"
            )));
        }
    }
    if let Some(host) = get(&["host"]).or(get(&["hostaddr"])) {
        if host.contains(',') {
            return Err(JobError::new(format!(
                "{key}: several hosts (\"{host}\") are not supported (expected one host per URL; for a standby, name it directly)"
            )));
        }
    }

    let home_file = |name: &str| {
        env.home
            .as_ref()
            .map(|h| h.join(".postgresql").join(name))
            .filter(|p| (env.is_file)(p))
    };
    let from = |url_names: &[&str], var: &str| -> Option<(String, bool)> {
        get(url_names)
            .map(str::to_string)
            .or_else(|| (env.var)(var))
            .filter(|v| !v.is_empty())
            .map(|v| (v, true))
    };

    // sslrootcert
    let root_cert = match from(&["sslrootcert", "ssl-root-cert", "ssl-ca"], "PGSSLROOTCERT") {
        Some((v, _)) if v == "system" => Some(RootCert::System),
        Some((v, _)) => {
            let path = PathBuf::from(&v);
            if !(env.is_file)(&path) {
                return Err(JobError::new(format!(
                    "{key}: sslrootcert \"{v}\" is not a readable file (expected the PEM file of the CA that signed the server's certificate, or sslrootcert=system)"
                )));
            }
            Some(RootCert::File(path))
        }
        None => home_file("root.crt").map(RootCert::File),
    };

    // sslmode
    let explicit_mode = from(&["sslmode", "ssl-mode"], "PGSSLMODE").map(|(v, _)| v);
    let ssl_mode = match explicit_mode.as_deref() {
        Some(v) => SslMode::parse(v).ok_or_else(|| {
            JobError::new(format!(
                "{key}: sslmode \"{v}\" is not one of {}",
                SslMode::NAMES.join(", ")
            ))
        })?,
        None if root_cert == Some(RootCert::System) => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if root_cert == Some(RootCert::System) && ssl_mode != SslMode::VerifyFull {
        return Err(JobError::new(format!(
            "{key}: weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\" instead, as libpq requires)",
            ssl_mode.name()
        )));
    }
    if ssl_mode.verifies() && root_cert.is_none() {
        return Err(JobError::new(format!(
            "{key}: sslmode={} needs a root certificate, but sslrootcert is not set and ~/.postgresql/root.crt does not exist (set sslrootcert to your provider's CA bundle, sslrootcert=system for a publicly signed server, or sslmode=require to skip verification)",
            ssl_mode.name()
        )));
    }
    let root_cert = if ssl_mode == SslMode::Disable {
        None
    } else {
        root_cert
    };

    // sslcert and sslkey
    let cert = match from(&["sslcert", "ssl-cert"], "PGSSLCERT") {
        Some((v, _)) => {
            let path = PathBuf::from(&v);
            if !(env.is_file)(&path) {
                return Err(JobError::new(format!(
                    "{key}: sslcert \"{v}\" is not a readable file (expected the client certificate in PEM)"
                )));
            }
            Some(path)
        }
        None => home_file("postgresql.crt"),
    };
    let key_file = match from(&["sslkey", "ssl-key"], "PGSSLKEY") {
        Some((v, _)) => Some(PathBuf::from(v)),
        None => env
            .home
            .as_ref()
            .map(|h| h.join(".postgresql").join("postgresql.key")),
    };
    let client_cert = match (cert, key_file) {
        (None, _) if get(&["sslkey", "ssl-key"]).is_some() => {
            return Err(JobError::new(format!(
                "{key}: sslkey is set but no client certificate is (expected sslcert too)"
            )))
        }
        (None, _) => None,
        (Some(cert), Some(k)) if (env.is_file)(&k) => {
            if let Some(bits) = (env.loose_permissions)(&k).filter(|b| *b != 0) {
                return Err(JobError::new(format!(
                    "{key}: private key file \"{}\" has group or world access (mode {:03o} beyond the owner's); it must be u=rw (0600) or less, as libpq requires (chmod 600 {})",
                    k.display(),
                    bits,
                    k.display()
                )));
            }
            Some((cert, k))
        }
        (Some(cert), k) => {
            return Err(JobError::new(format!(
                "{key}: client certificate \"{}\" is set but its private key {} is not a readable file (expected sslkey)",
                cert.display(),
                k.map_or_else(|| "(none)".to_string(), |k| format!("\"{}\"", k.display()))
            )))
        }
    };
    let client_cert = if ssl_mode == SslMode::Disable {
        None
    } else {
        client_cert
    };

    // connect_timeout: seconds; libpq treats 0 and less as no limit and 1 as 2.
    let connect_timeout = match from(&["connect_timeout"], "PGCONNECT_TIMEOUT") {
        None => Some(DEFAULT_CONNECT_TIMEOUT),
        Some((v, _)) => match v.trim().parse::<i64>() {
            Ok(s) if s <= 0 => None,
            Ok(s) => Some(Duration::from_secs(s.max(2) as u64)),
            Err(_) => {
                return Err(JobError::new(format!(
                    "{key}: connect_timeout \"{v}\" is not a whole number of seconds"
                )))
            }
        },
    };

    let seconds = |name: &str, default: Duration| -> Result<Duration, JobError> {
        match get(&[name]) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
                _ => Err(JobError::new(format!(
                    "{key}: {name} \"{v}\" is not a positive whole number of seconds"
                ))),
            },
        }
    };
    let enabled = match get(&["keepalives"]) {
        None | Some("1") => true,
        Some("0") => false,
        Some(v) => {
            return Err(JobError::new(format!(
                "{key}: keepalives \"{v}\" is not 0 or 1"
            )))
        }
    };
    let count = match get(&["keepalives_count"]) {
        None => DEFAULT_KEEPALIVES.count,
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| {
                JobError::new(format!(
                    "{key}: keepalives_count \"{v}\" is not a positive whole number"
                ))
            })?,
    };
    let keepalives = Keepalives {
        enabled,
        idle: seconds("keepalives_idle", DEFAULT_KEEPALIVES.idle)?,
        interval: seconds("keepalives_interval", DEFAULT_KEEPALIVES.interval)?,
        count,
    };

    let session_attrs = match from(&["target_session_attrs"], "PGTARGETSESSIONATTRS") {
        None => SessionAttrs::Any,
        Some((v, _)) => SessionAttrs::parse(&v).ok_or_else(|| {
            JobError::new(format!(
                "{key}: target_session_attrs \"{v}\" is not one of {}",
                SessionAttrs::NAMES.join(", ")
            ))
        })?,
    };

    Ok(Params {
        ssl_mode,
        root_cert,
        client_cert,
        connect_timeout,
        keepalives,
        session_attrs,
    })
}

/// The application name a session reports (`pg_stat_activity`): the URL's
/// `application_name`, else `PGAPPNAME`, else its `fallback_application_name`,
/// else `stride`.
pub fn application_name(
    query: &[(String, String)],
    var: &dyn Fn(&str) -> Option<String>,
) -> String {
    let get = |name: &str| {
        query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    get("application_name")
        .or_else(|| var("PGAPPNAME"))
        .or_else(|| get("fallback_application_name"))
        .unwrap_or_else(|| "stride".to_string())
}

/// Checks a `postgres://` URL as libpq reads it (the engine is picked already).
pub fn check_url(key: &str, url: &str) -> Result<(), JobError> {
    match url::Url::parse(url) {
        // Without `//` everything after `postgres:` is a path: no host, and a
        // password in it could not be told apart to hide it.
        Ok(u) if !url[u.scheme().len()..].starts_with("://") => Err(JobError::new(format!(
            "{key}: not a URL with a host (expected postgres://user@host:port/database)"
        ))),
        Ok(u) if u.scheme() == "postgres" || u.scheme() == "postgresql" => {
            // An unknown parameter may be a secret the driver would log with its
            // value; name the key only.
            if let Some(refused) = u
                .query_pairs()
                .find_map(|(k, _)| refusal(&k).map(|why| (k.into_owned(), why)))
            {
                return Err(JobError::new(format!(
                    "{key}: parameter \"{}\" is not supported by stride ({})",
                    refused.0, refused.1
                )));
            }
            match u.query_pairs().map(|(k, _)| k).find(|k| !is_known(k)) {
                Some(unknown) => Err(JobError::new(format!(
                    "{key}: unknown parameter \"{unknown}\" (expected one of: {})",
                    DRIVER_PARAMETERS
                        .iter()
                        .chain(STRIDE_PARAMETERS)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
                None => Ok(()),
            }
        }
        Ok(u) => Err(JobError::new(format!(
            "{key}: scheme \"{}\" is not supported (expected postgres://user@host:port/database)",
            u.scheme()
        ))),
        // The parse error never contains the URL itself, so it is safe to show.
        Err(e) => Err(JobError::new(format!(
            "{key}: not a valid URL: {e} (expected postgres://user@host:port/database)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct World {
        vars: HashMap<&'static str, &'static str>,
        files: Vec<(&'static str, u32)>,
        home: Option<&'static str>,
    }

    impl World {
        fn new() -> World {
            World {
                vars: HashMap::new(),
                files: vec![],
                home: Some("/home/u"),
            }
        }
        fn var(mut self, k: &'static str, v: &'static str) -> Self {
            self.vars.insert(k, v);
            self
        }
        fn file(mut self, path: &'static str) -> Self {
            self.files.push((path, 0));
            self
        }
        fn loose_file(mut self, path: &'static str, bits: u32) -> Self {
            self.files.push((path, bits));
            self
        }
        fn resolve(&self, query: &str) -> Result<Params, String> {
            let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let var = |k: &str| self.vars.get(k).map(|v| v.to_string());
            let is_file = |p: &Path| self.files.iter().any(|(f, _)| Path::new(f) == p);
            let loose = |p: &Path| {
                self.files
                    .iter()
                    .find(|(f, _)| Path::new(f) == p)
                    .map(|(_, b)| *b)
            };
            let env = Environment {
                var: &var,
                home: self.home.map(PathBuf::from),
                is_file: &is_file,
                loose_permissions: &loose,
            };
            resolve("source.url", &pairs, &env).map_err(|e| e.to_string())
        }
    }

    fn file(p: &str) -> Option<RootCert> {
        Some(RootCert::File(PathBuf::from(p)))
    }

    #[test]
    fn sslmode_defaults_to_prefer_and_reads_pgsslmode() {
        let p = World::new().resolve("").unwrap();
        assert_eq!(p.ssl_mode, SslMode::Prefer);
        assert_eq!(p.attempts(), vec![Attempt::TlsIfOffered, Attempt::Plain]);
        let p = World::new()
            .var("PGSSLMODE", "require")
            .resolve("")
            .unwrap();
        assert_eq!(p.ssl_mode, SslMode::Require);
        assert_eq!(p.attempts(), vec![Attempt::Tls]);
        // The URL wins over the environment.
        let p = World::new()
            .var("PGSSLMODE", "require")
            .resolve("sslmode=disable")
            .unwrap();
        assert_eq!(p.attempts(), vec![Attempt::Plain]);
    }

    #[test]
    fn each_mode_makes_libpqs_attempts() {
        let w = World::new().file("/ca.pem");
        let cases = [
            ("sslmode=disable", vec![Attempt::Plain]),
            ("sslmode=allow", vec![Attempt::Plain, Attempt::Tls]),
            (
                "sslmode=prefer",
                vec![Attempt::TlsIfOffered, Attempt::Plain],
            ),
            ("sslmode=require", vec![Attempt::Tls]),
            // A root certificate makes require (and prefer, allow) verify the chain.
            (
                "sslmode=require&sslrootcert=/ca.pem",
                vec![Attempt::TlsVerifyCa],
            ),
            (
                "sslmode=prefer&sslrootcert=/ca.pem",
                vec![Attempt::TlsVerifyCa, Attempt::Plain],
            ),
            (
                "sslmode=allow&sslrootcert=/ca.pem",
                vec![Attempt::Plain, Attempt::TlsVerifyCa],
            ),
            (
                "sslmode=verify-ca&sslrootcert=/ca.pem",
                vec![Attempt::TlsVerifyCa],
            ),
            (
                "sslmode=verify-full&sslrootcert=/ca.pem",
                vec![Attempt::TlsVerifyFull],
            ),
            ("sslrootcert=system", vec![Attempt::TlsVerifyFull]),
        ];
        for (query, attempts) in cases {
            assert_eq!(w.resolve(query).unwrap().attempts(), attempts, "{query}");
        }
    }

    #[test]
    fn home_root_crt_is_used_when_present() {
        let w = World::new().file("/home/u/.postgresql/root.crt");
        let p = w.resolve("sslmode=require").unwrap();
        assert_eq!(p.root_cert, file("/home/u/.postgresql/root.crt"));
        assert_eq!(p.attempts(), vec![Attempt::TlsVerifyCa]);
        assert_eq!(
            w.resolve("sslmode=verify-full").unwrap().attempts(),
            vec![Attempt::TlsVerifyFull]
        );
        // PGSSLROOTCERT comes before the file in ~/.postgresql.
        let w = w.var("PGSSLROOTCERT", "/etc/ca.pem").file("/etc/ca.pem");
        assert_eq!(w.resolve("").unwrap().root_cert, file("/etc/ca.pem"));
    }

    #[test]
    fn verifying_without_a_root_certificate_is_refused() {
        for mode in ["verify-ca", "verify-full"] {
            let e = World::new()
                .resolve(&format!("sslmode={mode}"))
                .unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "source.url: sslmode={mode} needs a root certificate"
                )),
                "{e}"
            );
            assert!(e.contains("sslrootcert=system"), "{e}");
        }
    }

    #[test]
    fn system_roots_imply_verify_full_and_refuse_weaker_modes() {
        let p = World::new().resolve("sslrootcert=system").unwrap();
        assert_eq!(
            (p.ssl_mode, p.root_cert),
            (SslMode::VerifyFull, Some(RootCert::System))
        );
        for mode in ["disable", "allow", "prefer", "require", "verify-ca"] {
            let e = World::new()
                .resolve(&format!("sslrootcert=system&sslmode={mode}"))
                .unwrap_err();
            assert_eq!(
                e,
                format!("source.url: weak sslmode \"{mode}\" may not be used with sslrootcert=system (use \"verify-full\" instead, as libpq requires)")
            );
        }
    }

    #[test]
    fn a_missing_certificate_file_named_explicitly_is_refused() {
        let e = World::new().resolve("sslrootcert=/nope.pem").unwrap_err();
        assert!(
            e.starts_with("source.url: sslrootcert \"/nope.pem\" is not a readable file"),
            "{e}"
        );
        let e = World::new()
            .resolve("sslcert=/nope.crt&sslkey=/k")
            .unwrap_err();
        assert!(
            e.starts_with("source.url: sslcert \"/nope.crt\" is not a readable file"),
            "{e}"
        );
        let e = World::new()
            .file("/c.crt")
            .resolve("sslcert=/c.crt")
            .unwrap_err();
        assert!(
            e.contains(
                "its private key \"/home/u/.postgresql/postgresql.key\" is not a readable file"
            ),
            "{e}"
        );
        let e = World::new().resolve("sslkey=/k").unwrap_err();
        assert!(e.contains("sslkey is set but no client certificate"), "{e}");
    }

    #[test]
    fn client_certificates_come_from_the_url_the_environment_or_home() {
        let w = World::new().file("/c.crt").file("/c.key");
        assert_eq!(
            w.resolve("sslcert=/c.crt&sslkey=/c.key")
                .unwrap()
                .client_cert,
            Some((PathBuf::from("/c.crt"), PathBuf::from("/c.key")))
        );
        let w = World::new()
            .file("/home/u/.postgresql/postgresql.crt")
            .file("/home/u/.postgresql/postgresql.key");
        assert_eq!(
            w.resolve("").unwrap().client_cert,
            Some((
                PathBuf::from("/home/u/.postgresql/postgresql.crt"),
                PathBuf::from("/home/u/.postgresql/postgresql.key")
            ))
        );
        // Not sent on a plain connection.
        assert_eq!(w.resolve("sslmode=disable").unwrap().client_cert, None);
        let w = World::new()
            .var("PGSSLCERT", "/e.crt")
            .var("PGSSLKEY", "/e.key")
            .file("/e.crt")
            .file("/e.key");
        assert_eq!(
            w.resolve("").unwrap().client_cert,
            Some((PathBuf::from("/e.crt"), PathBuf::from("/e.key")))
        );
    }

    #[test]
    fn a_private_key_others_can_read_is_refused_as_libpq_does() {
        let w = World::new().file("/c.crt").loose_file("/c.key", 0o044);
        let e = w.resolve("sslcert=/c.crt&sslkey=/c.key").unwrap_err();
        assert!(e.contains("has group or world access (mode 044"), "{e}");
        assert!(e.contains("chmod 600 /c.key"), "{e}");
    }

    #[test]
    fn connect_timeout_follows_libpq() {
        let t = |q: &str| World::new().resolve(q).map(|p| p.connect_timeout);
        assert_eq!(t(""), Ok(Some(DEFAULT_CONNECT_TIMEOUT)));
        assert_eq!(t("connect_timeout=10"), Ok(Some(Duration::from_secs(10))));
        assert_eq!(t("connect_timeout=1"), Ok(Some(Duration::from_secs(2))));
        assert_eq!(t("connect_timeout=0"), Ok(None));
        assert_eq!(
            t("connect_timeout=ten"),
            Err("source.url: connect_timeout \"ten\" is not a whole number of seconds".into())
        );
        let p = World::new()
            .var("PGCONNECT_TIMEOUT", "7")
            .resolve("")
            .unwrap();
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(7)));
    }

    #[test]
    fn keepalives_and_session_attrs_parse_or_name_the_parameter() {
        let p = World::new()
            .resolve("keepalives=1&keepalives_idle=30&keepalives_interval=5&keepalives_count=4")
            .unwrap();
        assert_eq!(
            p.keepalives,
            Keepalives {
                enabled: true,
                idle: Duration::from_secs(30),
                interval: Duration::from_secs(5),
                count: 4
            }
        );
        assert!(
            !World::new()
                .resolve("keepalives=0")
                .unwrap()
                .keepalives
                .enabled
        );
        assert_eq!(
            World::new().resolve("").unwrap().keepalives,
            DEFAULT_KEEPALIVES
        );
        for (q, e) in [
            ("keepalives=yes", "source.url: keepalives \"yes\" is not 0 or 1"),
            ("keepalives_idle=-1", "source.url: keepalives_idle \"-1\" is not a positive whole number of seconds"),
            ("keepalives_count=0", "source.url: keepalives_count \"0\" is not a positive whole number"),
            ("target_session_attrs=master", "source.url: target_session_attrs \"master\" is not one of any, read-write, read-only, primary, standby, prefer-standby"),
            ("sslmode=on", "source.url: sslmode \"on\" is not one of disable, allow, prefer, require, verify-ca, verify-full"),
        ] {
            assert_eq!(World::new().resolve(q).unwrap_err(), e, "{q}");
        }
        let p = World::new()
            .resolve("target_session_attrs=read-write")
            .unwrap();
        assert_eq!(p.session_attrs, SessionAttrs::ReadWrite);
        assert!(SessionAttrs::ReadWrite.accepts(false, false));
        assert!(!SessionAttrs::ReadWrite.accepts(true, true));
        assert!(SessionAttrs::Standby.accepts(true, true));
        assert!(!SessionAttrs::Primary.accepts(true, true));
        assert!(SessionAttrs::PreferStandby.accepts(false, false));
    }

    #[test]
    fn unsupported_libpq_parameters_and_host_lists_are_refused_by_name() {
        let e = World::new().resolve("sslcrl=/crl.pem").unwrap_err();
        assert_eq!(
            e,
            "source.url: parameter \"sslcrl\" is not supported by stride (certificate revocation lists are not checked)"
        );
        let e = World::new().resolve("host=a,b").unwrap_err();
        assert!(
            e.starts_with("source.url: several hosts (\"a,b\") are not supported"),
            "{e}"
        );
    }

    #[test]
    fn application_name_follows_libpq() {
        let q = |s: &str| -> Vec<(String, String)> {
            url::form_urlencoded::parse(s.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        };
        assert_eq!(application_name(&q(""), &|_| None), "stride");
        assert_eq!(
            application_name(&q("fallback_application_name=etl"), &|_| None),
            "etl"
        );
        assert_eq!(
            application_name(&q("fallback_application_name=etl"), &|_| Some("app".into())),
            "app"
        );
        assert_eq!(
            application_name(&q("application_name=nightly"), &|_| Some("app".into())),
            "nightly"
        );
    }
}
