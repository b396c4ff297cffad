//! Everything that talks to PostgreSQL outside the copy itself: connecting, reading
//! the catalogue, the shared snapshot, key bounds, row estimates, free
//! connection slots and the run lock. Each function adds context naming the
//! object it works on.

pub mod catalog;
pub mod copy;
pub mod create;
pub mod init;
pub mod keepalive;
pub mod libpq;
pub mod plan;
pub mod replace;
pub mod route;
pub mod session;
pub mod text;
pub mod tls;

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::AssertSqlSafe;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Row};

use crate::checkpoint::RecordedRun;
use crate::error::{JobError, LockLost};
use crate::job::DbUrl;
use crate::sql::{quote_literal, QualifiedName};

/// Session settings (startup `-c` options, so no spaces in values) that make the text forms of values identical on both sides, so
/// text COPY and the row path round-trip exactly: ISO dates, UTC, Postgres-style
/// intervals, hex bytea, and floats printed with every digit.
const SESSION_OPTIONS: [(&str, &str); 5] = [
    ("DateStyle", "ISO,MDY"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "postgres"),
    ("bytea_output", "hex"),
    ("extra_float_digits", "3"),
];

/// A COPY error with the server's place for it (`COPY t, line 3, column n:
/// "1.5"`), which names the column a value did not convert into.
pub fn with_place(error: sqlx::Error) -> anyhow::Error {
    let place = error
        .as_database_error()
        .and_then(|e| e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .and_then(|e| e.r#where())
        .map(str::to_string);
    let error = anyhow::Error::new(error);
    match place {
        Some(place) => error.context(place),
        None => error,
    }
}

/// SQLSTATEs worth another attempt: the connection broke or the server is going
/// away (class 08, 57P01 terminated by an administrator, 57P02 crash, 57P03
/// starting up), serialization failure and deadlock (40001, 40P01, also how a
/// standby cancels a query in conflict with recovery), too many connections
/// (53300), and 55P03 lock not available.
pub fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "53300" | "55P03"
        )
}

/// Whether a driver error is worth another attempt (`None`: not the
/// driver's): a broken or unobtainable connection, or a transient SQLSTATE.
pub fn transient(cause: &(dyn std::error::Error + 'static)) -> Option<bool> {
    let e = cause.downcast_ref::<sqlx::Error>()?;
    Some(match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| transient_sqlstate(&c)),
        _ => false,
    })
}

/// A key's text and a row's hash, as `plan::key_rows_sql` reads them.
type KeyRow = (String, i64);

/// Merges the partition's rows of both sides, each sorted by its key's bytes:
/// memory stays at one row a side, whatever the partition's size.
/// `source_sql` and `target_sql` come from `plan::key_rows_sql`.
pub async fn key_diff(
    source: &mut PgConnection,
    target: &mut PgConnection,
    source_sql: &str,
    target_sql: &str,
) -> Result<crate::report::KeyDiff> {
    use std::cmp::Ordering;
    let mut s = sqlx::query_as::<_, KeyRow>(AssertSqlSafe(source_sql)).fetch(&mut *source);
    let mut t = sqlx::query_as::<_, KeyRow>(AssertSqlSafe(target_sql)).fetch(&mut *target);
    let mut diff = crate::report::KeyDiff::default();
    let mut a = next_in_order(&mut s, None, "source").await?;
    let mut b = next_in_order(&mut t, None, "target").await?;
    loop {
        let order = match (&a, &b) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.0.as_bytes().cmp(y.0.as_bytes()),
        };
        match order {
            Ordering::Less => {
                diff.missing += 1;
                a = next_in_order(&mut s, a, "source").await?;
            }
            Ordering::Greater => {
                diff.extra += 1;
                if diff.example.is_none() {
                    diff.example = b.as_ref().map(|row| row.0.clone());
                }
                b = next_in_order(&mut t, b, "target").await?;
            }
            Ordering::Equal => {
                if a.as_ref().map(|row| row.1) != b.as_ref().map(|row| row.1) {
                    diff.different += 1;
                }
                a = next_in_order(&mut s, a, "source").await?;
                b = next_in_order(&mut t, b, "target").await?;
            }
        }
    }
    Ok(diff)
}

/// The next row of a side, checked to come after `previous` in byte order: the
/// merge is only right if both servers sort as it compares.
async fn next_in_order(
    rows: &mut (impl futures_util::Stream<Item = sqlx::Result<KeyRow>> + Unpin),
    previous: Option<KeyRow>,
    side: &str,
) -> Result<Option<KeyRow>> {
    use futures_util::TryStreamExt as _;
    let next = rows
        .try_next()
        .await
        .with_context(|| format!("reading the {side}'s rows by key"))?;
    if let (Some(before), Some(now)) = (&previous, &next) {
        if now.0.as_bytes() < before.0.as_bytes() {
            anyhow::bail!(
                "the {side}'s keys do not come in byte order ({} after {}), so they cannot be compared by key (expected a database in UTF8)",
                now.0,
                before.0
            );
        }
    }
    Ok(next)
}

/// Runs one or more statements over the simple query protocol.
///
/// (A `&str` with no arguments goes over the simple protocol; sqlx's `raw_sql`
/// does too, but its future cannot be proven `Send` inside a spawned task:
/// rust-lang/rust#102211.)
pub async fn execute(conn: &mut PgConnection, sql: &str) -> sqlx::Result<()> {
    sqlx::Executor::execute(conn, AssertSqlSafe(sql))
        .await
        .map(|_| ())
}

pub use crate::error::Side;
pub use crate::plan::Transfer;
pub use crate::report::Channel as Encryption;
pub use catalog::{Column, UniqueKeys};

/// A server we can talk to, and what a first connection learnt about it.
pub struct Server {
    /// The options of the attempt that connected (after libpq's fallbacks), so
    /// that every later connection goes the same way.
    options: PgConnectOptions,
    connect_timeout: Option<Duration>,
    /// stride's end of each new TCP connection gets these keepalives.
    keepalives: Option<ClientKeepalives>,
    /// Connection slots free for new sessions once the probe connection is closed.
    pub free_slots: i64,
    /// `system_identifier` and postmaster start time: equal for two URLs that name
    /// the same running server (a replica shares the identifier with its primary,
    /// not the start time); `None` where the role may not read them.
    pub identity: Option<String>,
    pub database: String,
    /// `host:port/database`, for messages.
    pub place: String,
    /// How the session is protected, as the server reports it (`pg_stat_ssl`).
    pub encryption: Encryption,
}

/// The server's addresses and the keepalives for stride's end of connections to
/// it (see [`crate::engine::postgres::keepalive`]).
#[derive(Clone)]
struct ClientKeepalives {
    peers: std::sync::Arc<Vec<std::net::SocketAddr>>,
    settings: libpq::Keepalives,
}

impl ClientKeepalives {
    /// Sets them on the connections opened since the last call. A failure leaves
    /// the server's end probing and run.stall_timeout watching: worth a debug line.
    fn apply(&self) {
        match crate::engine::postgres::keepalive::enable(&self.peers, &self.settings) {
            Ok(n) => tracing::trace!("TCP keepalives set on {n} new connection(s)"),
            Err(e) => tracing::debug!("TCP keepalives not set on stride's end: {e}"),
        }
    }
}

/// Opens one connection, retrying transient failures (refused or reset
/// connections, a server starting up or shutting down, a connect that timed out)
/// with backoff. A server with no free slot is a job error at once: parallelism
/// cannot fix it. A failed TLS handshake is not retried: it fails the same way
/// every time.
async fn open_with_retries(
    side: Side,
    options: &PgConnectOptions,
    connect_timeout: Option<Duration>,
    place: &str,
    retries: u32,
) -> std::result::Result<PgConnection, (sqlx::Error, u32)> {
    let mut attempt = 0;
    loop {
        let error = match open(options, connect_timeout).await {
            Ok(conn) => return Ok(conn),
            Err(e) => e,
        };
        let code = error
            .as_database_error()
            .and_then(|e| e.code().map(|c| c.into_owned()));
        let transient = (matches!(error, sqlx::Error::Io(_)) && tls_failure(&error).is_none())
            || code.as_deref().is_some_and(transient_sqlstate);
        if !transient || attempt == retries || code.as_deref() == Some(TOO_MANY_CONNECTIONS) {
            return Err((error, attempt));
        }
        attempt += 1;
        let wait = crate::error::backoff(attempt);
        tracing::warn!(
            "connecting to the {side} database at {place} failed, retry {attempt} of {retries} in {} ms: {error}",
            wait.as_millis()
        );
        tokio::time::sleep(wait).await;
    }
}

/// One connection, given up after `connect_timeout` (an I/O error of kind
/// `TimedOut`, which is transient).
async fn open(
    options: &PgConnectOptions,
    connect_timeout: Option<Duration>,
) -> sqlx::Result<PgConnection> {
    match connect_timeout {
        None => PgConnection::connect_with(options).await,
        Some(limit) => tokio::time::timeout(limit, PgConnection::connect_with(options))
            .await
            .unwrap_or_else(|_| {
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s (connect_timeout)", limit.as_secs()),
                )))
            }),
    }
}

/// SQLSTATE `too_many_connections`.
const TOO_MANY_CONNECTIONS: &str = "53300";

impl Server {
    /// A lazy pool of at most `max_connections`. Size it to the connection budget:
    /// a pool below its maximum opens a new connection rather than wait for one
    /// being handed back, and on a server without free slots that new connection
    /// is refused and retried until the acquire timeout.
    pub fn pool(&self, max_connections: u32) -> PgPool {
        let keepalives = self.keepalives.clone();
        PgPoolOptions::new()
            .after_connect(move |_, _| {
                if let Some(k) = &keepalives {
                    k.apply();
                }
                Box::pin(async { Ok(()) })
            })
            .max_connections(max_connections)
            .min_connections(0)
            .acquire_timeout(
                self.connect_timeout
                    .map_or(Duration::from_secs(60), |t| t.max(Duration::from_secs(60))),
            )
            .connect_lazy_with(self.options.clone())
    }
}

/// Connects once to `url` (failing at once with a clear message) and reads the
/// free connection slots, the server's identity and the session's encryption on
/// that connection. libpq's parameters are resolved as libpq does
/// ([`crate::engine::postgres::libpq`]): the URL, then `PG*` variables, then `~/.postgresql`;
/// `~/.pgpass` fills in a missing password.
pub async fn connect(side: Side, url: &DbUrl, retries: u32) -> Result<Server> {
    let key = format!("{side}.url");
    let parsed = url::Url::parse(url.expose())
        .map_err(|e| JobError::new(format!("{key}: not a valid URL: {e}")))?;
    let query: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let env = libpq::Environment::process();
    let params = libpq::resolve(&key, &query, &env)?;
    // sqlx gets only the parameters it reads the way libpq does; stride applies
    // the others, and an unknown one never reaches sqlx's warning (which would
    // print its value).
    let mut driver_url = parsed.clone();
    let driver_pairs: Vec<&(String, String)> = query
        .iter()
        .filter(|(k, _)| {
            libpq::DRIVER_PARAMETERS.contains(&k.as_str()) || k.starts_with("options[")
        })
        .collect();
    if driver_pairs.is_empty() {
        driver_url.set_query(None);
    } else {
        driver_url
            .query_pairs_mut()
            .clear()
            .extend_pairs(driver_pairs);
    }
    // The driver's message names the bad part of the URL, never the password.
    let options = PgConnectOptions::from_str(driver_url.as_str()).map_err(|e| {
        JobError::new(format!(
            "{key}: {e} (expected postgres://user@host:port/database)"
        ))
    })?;
    let place = match options.get_socket() {
        Some(dir) => format!(
            "{}/.s.PGSQL.{}/{}",
            dir.display(),
            options.get_port(),
            options.get_database().unwrap_or("(default database)")
        ),
        None => format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("(default database)")
        ),
    };
    let mut session_options: Vec<(&str, String)> = SESSION_OPTIONS
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .collect();
    if params.keepalives.enabled {
        // Both ends probe: the server's (PostgreSQL's tcp_keepalives_*, so it
        // ends the session of a vanished stride and frees its locks) and
        // stride's (set on its sockets, see `keepalive`).
        let k = params.keepalives;
        session_options.push(("tcp_keepalives_idle", k.idle.as_secs().to_string()));
        session_options.push(("tcp_keepalives_interval", k.interval.as_secs().to_string()));
        session_options.push(("tcp_keepalives_count", k.count.to_string()));
    }
    let mut options = options
        .application_name(&libpq::application_name(&query, env.var))
        .options(session_options)
        .disable_statement_logging();
    match &params.root_cert {
        Some(libpq::RootCert::File(path)) => options = options.ssl_root_cert(path),
        Some(libpq::RootCert::System) => {
            options =
                options.ssl_root_cert_from_pem(crate::engine::postgres::tls::system_roots_pem())
        }
        None => {}
    }
    if let Some((cert, key_file)) = &params.client_cert {
        options = options.ssl_client_cert(cert).ssl_client_key(key_file);
    }

    // libpq's attempts for the mode (allow and prefer fall back), each with
    // retries of transient failures.
    // libpq never speaks TLS over a Unix socket, whatever sslmode says.
    let attempts = match options.get_socket() {
        Some(_) => vec![libpq::Attempt::Plain],
        None => params.attempts(),
    };
    let mut connected = None;
    for (i, attempt) in attempts.iter().enumerate() {
        let options = options.clone().ssl_mode(match attempt {
            libpq::Attempt::Plain => PgSslMode::Disable,
            libpq::Attempt::TlsIfOffered => PgSslMode::Prefer,
            libpq::Attempt::Tls => PgSslMode::Require,
            libpq::Attempt::TlsVerifyCa => PgSslMode::VerifyCa,
            libpq::Attempt::TlsVerifyFull => PgSslMode::VerifyFull,
        });
        match open_with_retries(side, &options, params.connect_timeout, &place, retries).await {
            Ok(conn) => {
                connected = Some((options, conn, *attempt));
                break;
            }
            // The server turned this attempt down (or its TLS failed): libpq tries
            // the mode's other way.
            Err((error, _))
                if i + 1 < attempts.len()
                    && (error.as_database_error().is_some() || tls_failure(&error).is_some()) =>
            {
                tracing::debug!(
                    "{side} database at {place}: {attempt:?} failed ({error}), trying {:?} (sslmode={})",
                    attempts[i + 1],
                    params.ssl_mode.name()
                );
            }
            Err((error, retried)) => {
                return Err(connect_error(side, &place, &params, error, retried))
            }
        }
    }
    let (options, mut probe, attempt) =
        connected.expect("the last attempt either connects or returns its error");
    let keepalives = match options.get_socket() {
        Some(_) => None,
        None if !params.keepalives.enabled => None,
        None => {
            let peers = tokio::net::lookup_host((options.get_host(), options.get_port()))
                .await
                .map(|a| a.collect())
                .unwrap_or_default();
            Some(ClientKeepalives {
                peers: std::sync::Arc::new(peers),
                settings: params.keepalives,
            })
        }
    };
    if let Some(k) = &keepalives {
        k.apply();
    }

    let (free_slots, database) = free_connection_slots(&mut probe)
        .await
        .with_context(|| format!("counting free connection slots on the {side} database"))?;
    let identity = sqlx::query_scalar(
        "SELECT system_identifier::text || ' ' || pg_postmaster_start_time()::text FROM pg_control_system()",
    )
    .fetch_one(&mut probe)
    .await
    .ok();
    let (tls, cipher): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
    )
    .fetch_optional(&mut probe)
    .await
    .with_context(|| format!("reading the {side} session's encryption (pg_stat_ssl)"))?
    .unwrap_or_default();
    let encryption = Encryption {
        tls,
        cipher,
        sslmode: params.ssl_mode.name(),
        mode_key: "sslmode",
        verified: match attempt {
            libpq::Attempt::TlsVerifyFull => "full",
            libpq::Attempt::TlsVerifyCa => "chain",
            _ => "none",
        },
        unix_socket: options.get_socket().is_some(),
    };
    if params.session_attrs != libpq::SessionAttrs::Any {
        let (read_only, in_recovery): (bool, bool) = sqlx::query_as(
            "SELECT current_setting('transaction_read_only') = 'on', pg_is_in_recovery()",
        )
        .fetch_one(&mut probe)
        .await
        .with_context(|| format!("checking target_session_attrs on the {side} database"))?;
        if !params.session_attrs.accepts(read_only, in_recovery) {
            return Err(JobError::new(format!(
                "{key}: target_session_attrs={} but the server at {place} is {} ({})",
                params.session_attrs.name(),
                if read_only { "read-only" } else { "read-write" },
                if in_recovery {
                    "a standby"
                } else {
                    "a primary"
                },
            ))
            .into());
        }
    }
    probe.close().await.ok();
    tracing::debug!(free_slots, %encryption, "{side} database at {place} answers");
    Ok(Server {
        options,
        connect_timeout: params.connect_timeout,
        keepalives,
        free_slots: free_slots + 1,
        identity,
        database,
        place,
        encryption,
    })
}

/// The error of a connection that could not be made: which side, where, with
/// which sslmode, what failed and, where stride can tell, what to do.
fn connect_error(
    side: Side,
    place: &str,
    params: &libpq::Params,
    error: sqlx::Error,
    retried: u32,
) -> anyhow::Error {
    let attempts = if retried == 0 {
        String::new()
    } else {
        format!(" (after {} attempts)", retried + 1)
    };
    let mode = params.ssl_mode.name();
    let context = format!("connecting to the {side} database at {place}{attempts}");
    let code = error
        .as_database_error()
        .and_then(|e| e.code().map(|c| c.into_owned()));
    if code.as_deref() == Some(TOO_MANY_CONNECTIONS) {
        return JobError::new(format!(
            "run.parallelism: no free connection slots on the {side} database at {place} ({}; expected at least one free slot per side)",
            error.as_database_error().map_or_else(String::new, |e| e.message().to_string())
        ))
        .into();
    }
    if matches!(&error, sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut) {
        let limit = params.connect_timeout.map_or(0, |t| t.as_secs());
        return anyhow::anyhow!(
            "no answer within {limit} s (connect_timeout; set connect_timeout=SECONDS in the URL or PGCONNECT_TIMEOUT for a slower network)"
        )
        .context(context);
    }
    if let Some(tls) = tls_failure(&error) {
        return anyhow::anyhow!(
            "{}",
            crate::engine::postgres::tls::explain(tls, mode, params.root_cert.as_ref())
        )
        .context(format!("{context} (sslmode={mode})"));
    }
    if let Some(db) = error.as_database_error() {
        let message = db.message();
        let hint = if message.contains("no encryption") {
            Some("the server accepts only encrypted connections from here: set sslmode=require, or verify-full with sslrootcert")
        } else if message.contains("requires a valid client certificate") {
            Some("the server logs this user in by certificate: set sslcert and sslkey, or put them in ~/.postgresql/postgresql.crt and postgresql.key")
        } else {
            None
        };
        if let Some(hint) = hint {
            return anyhow::Error::new(error)
                .context(format!("{context} (sslmode={mode}; {hint})"));
        }
    }
    if matches!(&error, sqlx::Error::Tls(m) if m.to_string().contains("does not support TLS")) {
        return anyhow::Error::new(error).context(format!(
            "{context} (sslmode={mode}: the server offers no TLS; ask for TLS on the server, or use sslmode=prefer to allow plain text)"
        ));
    }
    anyhow::Error::new(error).context(format!("{context} (sslmode={mode})"))
}

/// The rustls error under a failed connection, if a TLS handshake failed.
pub fn tls_failure(error: &sqlx::Error) -> Option<&rustls::Error> {
    match error {
        sqlx::Error::Tls(e) => e.downcast_ref::<rustls::Error>(),
        sqlx::Error::Io(e) => e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
        _ => None,
    }
}

/// A relation's columns and kind.
#[derive(Clone, Debug, Serialize)]
pub struct Relation {
    pub columns: Vec<Column>,
    /// `pg_class.relkind`: `r` table, `p` partitioned table, `v` view, ...
    pub kind: char,
}

const COLUMNS_SQL: &str = "\
SELECT a.attname::text AS name,
       format_type(a.atttypid, a.atttypmod) AS type_name,
       format_type(a.atttypid, NULL) AS base_type,
       a.atttypid::int8 AS type_oid,
       CASE WHEN t.typcategory = 'A' THEN format_type(t.typelem, NULL) END AS element_type,
       t.typcategory::text AS category,
       a.attgenerated <> '' AS generated,
       (a.atthasdef OR a.attidentity <> '') AS has_default,
       a.attnotnull AS not_null,
       CASE WHEN t.typtype = 'd' THEN (
           WITH RECURSIVE d(oid, base, typtype) AS (
               SELECT t.oid, t.typbasetype, t.typtype
               UNION ALL
               SELECT b.oid, b.typbasetype, b.typtype FROM d JOIN pg_type b ON b.oid = d.base
               WHERE d.typtype = 'd')
           SELECT format_type(oid, NULL) FROM d WHERE typtype <> 'd') END AS domain_over
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

/// The columns of a table or view, or `None` if there is no such relation.
pub async fn describe_table(
    conn: &mut PgConnection,
    name: &QualifiedName,
) -> Result<Option<Relation>> {
    let row = sqlx::query(
        "SELECT c.oid::int8, c.relkind::text \
         FROM pg_class c WHERE c.oid = to_regclass($1)",
    )
    .bind(name.to_string())
    .fetch_optional(&mut *conn)
    .await
    .with_context(|| format!("looking up table {name}"))?;
    let Some(row) = row else { return Ok(None) };
    let oid: i64 = row.get(0);
    let kind: String = row.get(1);
    let columns = read_columns(conn, oid)
        .await
        .with_context(|| format!("reading the columns of {name}"))?;
    Ok(Some(Relation {
        columns,
        kind: kind.chars().next().unwrap_or('r'),
    }))
}

/// The unique keys of an existing table (see [`UniqueKeys`]).
pub async fn unique_keys(conn: &mut PgConnection, table: &QualifiedName) -> Result<UniqueKeys> {
    let rows: Vec<(bool, Vec<String>)> = sqlx::query_as(
        "SELECT i.indisprimary, array_agg(a.attname::text ORDER BY k.ord) \
         FROM pg_index i \
         CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indimmediate AND i.indisvalid \
           AND i.indpred IS NULL AND i.indexprs IS NULL AND k.ord <= i.indnkeyatts \
         GROUP BY i.indexrelid, i.indisprimary \
         ORDER BY NOT i.indisprimary, i.indexrelid",
    )
    .bind(table.to_string())
    .fetch_all(conn)
    .await
    .with_context(|| format!("reading the unique indexes of {table}"))?;
    Ok(UniqueKeys {
        primary_key: rows.iter().find(|r| r.0).map(|r| r.1.clone()),
        unique: rows.into_iter().map(|r| r.1).collect(),
    })
}

/// Sets every ascending sequence owned by a column of `table` (serial columns,
/// identity columns) past the column's largest value, never backwards. Returns
/// what was set: column, sequence, value.
pub async fn reset_sequences(
    conn: &mut PgConnection,
    table: &QualifiedName,
) -> Result<Vec<(String, QualifiedName, i64)>> {
    // deptype 'a': a sequence OWNED BY the column (serial); 'i': an identity column's.
    let owned: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT a.attname::text, n.nspname::text, s.relname::text \
         FROM pg_depend d \
         JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
         JOIN pg_namespace n ON n.oid = s.relnamespace \
         JOIN pg_sequence q ON q.seqrelid = s.oid \
         JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
         WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
           AND d.refobjid = to_regclass($1) AND d.deptype IN ('a', 'i') AND q.seqincrement > 0 \
         ORDER BY a.attnum",
    )
    .bind(table.to_string())
    .fetch_all(&mut *conn)
    .await
    .with_context(|| format!("looking up the sequences owned by columns of {table}"))?;
    let mut set = Vec::new();
    for (column, schema, name) in owned {
        let sequence = QualifiedName {
            schema: Some(schema),
            name,
        };
        let value: Option<i64> = sqlx::query_scalar(AssertSqlSafe(
            crate::engine::postgres::plan::reset_sequence_sql(table, &column, &sequence),
        ))
        .fetch_optional(&mut *conn)
        .await
        .with_context(|| {
            format!("setting sequence {sequence} past the largest {table}.\"{column}\"")
        })?;
        if let Some(value) = value {
            set.push((column, sequence, value));
        }
    }
    Ok(set)
}

/// Whether row-level security applies to this session's role on `table` (COPY
/// FROM refuses such a table; INSERT goes through its policies).
pub async fn row_security_active(conn: &mut PgConnection, table: &QualifiedName) -> Result<bool> {
    sqlx::query_scalar("SELECT row_security_active($1::regclass)")
        .bind(table.to_string())
        .fetch_one(conn)
        .await
        .with_context(|| format!("looking up row-level security on {table}"))
}

/// Whether a table holds at least one row.
pub async fn has_rows(conn: &mut PgConnection, table: &QualifiedName) -> Result<bool> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {table})"
    )))
    .fetch_one(conn)
    .await
    .with_context(|| format!("looking for rows in {table}"))
}

/// Of `type_names`, those that do not exist in this database.
pub async fn missing_types(conn: &mut PgConnection, type_names: &[String]) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for name in type_names {
        let found: bool = sqlx::query_scalar("SELECT to_regtype($1) IS NOT NULL")
            .bind(name)
            .fetch_one(&mut *conn)
            .await
            .with_context(|| format!("looking up type {name}"))?;
        if !found {
            missing.push(name.clone());
        }
    }
    Ok(missing)
}

/// Whether two names resolve to the same existing relation in this database.
pub async fn same_relation(
    conn: &mut PgConnection,
    a: &QualifiedName,
    b: &QualifiedName,
) -> Result<bool> {
    sqlx::query_scalar("SELECT coalesce(to_regclass($1) = to_regclass($2), false)")
        .bind(a.to_string())
        .bind(b.to_string())
        .fetch_one(conn)
        .await
        .with_context(|| format!("comparing {a} with {b}"))
}

/// The output columns of the user's query, with their types and modifiers.
///
/// The query is wrapped in a temporary view inside a transaction that is rolled
/// back: the view's catalogue entry gives the types with their modifiers, which the
/// wire protocol's row description does not.
pub async fn describe_query(conn: &mut PgConnection, query: &str) -> Result<Relation> {
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut *conn)
        .await
        .context("asking the source whether it is a standby")?;
    if standby {
        return describe_query_on_standby(conn, query).await;
    }
    sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
    let result = async {
        // The extended protocol takes one statement only: a `;` in the query
        // cannot smuggle a second one in. The newline ends a trailing `--` comment.
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TEMPORARY VIEW stride_query_probe AS {query}\n"
        )))
        .execute(&mut *conn)
        .await
        .context("source.query: the query does not run")?;
        let oid: i64 = sqlx::query_scalar("SELECT 'stride_query_probe'::regclass::oid::int8")
            .fetch_one(&mut *conn)
            .await?;
        read_columns(conn, oid).await
    }
    .await;
    sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
    Ok(Relation {
        columns: result?,
        kind: 'v',
    })
}

/// A standby cannot create even a temporary view: the query's columns come from
/// the row description of the prepared statement instead, so their types carry no
/// modifiers (a table created from them has `numeric`, not `numeric(12,4)`).
async fn describe_query_on_standby(conn: &mut PgConnection, query: &str) -> Result<Relation> {
    use sqlx::{Column as _, Executor as _, Statement as _, TypeInfo as _};
    let described = (&mut *conn)
        .prepare(sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(format!(
            "{query}\n"
        ))))
        .await
        .context("source.query: the query does not run")?;
    let mut columns = Vec::with_capacity(described.columns().len());
    for column in described.columns() {
        let oid = column
            .type_info()
            .oid()
            .map(|o| i64::from(o.0))
            .with_context(|| {
                format!(
                    "column {} of the query has a type without an OID ({})",
                    column.name(),
                    column.type_info().name()
                )
            })?;
        let (type_name, element_type, category): (String, Option<String>, String) = sqlx::query_as(
            "SELECT format_type(oid, NULL), CASE WHEN typcategory = 'A' THEN format_type(typelem, NULL) END, \
                    typcategory::text FROM pg_type WHERE oid = $1::oid",
        )
        .bind(oid)
        .fetch_one(&mut *conn)
        .await
        .with_context(|| format!("looking up the type of column {}", column.name()))?;
        columns.push(Column {
            name: column.name().to_string(),
            base_type: type_name.clone(),
            type_name,
            type_oid: oid,
            element_type,
            category,
            not_null: false,
            generated: false,
            has_default: false,
            domain_over: None,
        });
    }
    Ok(Relation { columns, kind: 'v' })
}

async fn read_columns(conn: &mut PgConnection, oid: i64) -> Result<Vec<Column>> {
    let rows = sqlx::query(COLUMNS_SQL).bind(oid).fetch_all(conn).await?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get("name"),
            type_name: r.get("type_name"),
            base_type: r.get("base_type"),
            type_oid: r.get("type_oid"),
            element_type: r.get("element_type"),
            category: r.get("category"),
            generated: r.get("generated"),
            has_default: r.get("has_default"),
            not_null: r.get("not_null"),
            domain_over: r.get("domain_over"),
        })
        .collect())
}

/// A REPEATABLE READ transaction whose snapshot every partition imports, so that all
/// partitions read the same moment of the source. Hold it until every partition has
/// started: an exported snapshot lives only as long as its transaction.
///
/// The coordinator then idles in that transaction while partitions queue for a
/// connection, and the partitions that start later import its snapshot: a
/// server's `idle_in_transaction_session_timeout` would end it, and every later
/// partition with it. So the transaction turns the timeout off for itself.
pub async fn export_snapshot(conn: &mut PgConnection) -> Result<String> {
    sqlx::raw_sql(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL idle_in_transaction_session_timeout = 0",
    )
    .execute(&mut *conn)
        .await
        .context("opening the source's snapshot transaction")?;
    sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(conn)
        .await
        .context("exporting the source's snapshot")
}

/// Starts a transaction that reads the snapshot `snapshot` exported by the coordinator.
///
/// Once the source has sent its rows, the transaction idles until the target has
/// taken them (seconds, with a slow target), so it too turns off the server's
/// `idle_in_transaction_session_timeout` for itself: ending it would fail a
/// partition whose rows were all read.
pub async fn import_snapshot(conn: &mut PgConnection, snapshot: &str) -> Result<()> {
    let sql = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}; SET LOCAL idle_in_transaction_session_timeout = 0",
        quote_literal(snapshot)
    );
    execute(conn, &sql)
        .await
        .with_context(|| format!("importing snapshot {snapshot}"))
}

/// Smallest and largest key, encoded as `partition::KeyType` values, over the rows
/// the job reads; `None` when there are none. `sql` comes from `plan::bounds_sql`.
pub async fn key_bounds(conn: &mut PgConnection, sql: &str) -> Result<Option<(i64, i64)>> {
    let (lo, hi): (Option<i64>, Option<i64>) = sqlx::query_as(AssertSqlSafe(sql))
        .fetch_one(conn)
        .await
        .context("reading the partition column's min() and max() from the source")?;
    Ok(lo.zip(hi))
}

/// Plans `select` without running it: proves the user's SQL parses and names
/// what exists. The driver's error is returned as is, for the caller to sort.
pub async fn explain(conn: &mut PgConnection, select: &str) -> sqlx::Result<()> {
    sqlx::query(AssertSqlSafe(format!("EXPLAIN {select}")))
        .execute(conn)
        .await
        .map(|_| ())
}

/// The planner's row estimate for a query.
pub async fn estimate_rows(conn: &mut PgConnection, select: &str) -> Result<i64> {
    let json: serde_json::Value =
        sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) {select}")))
            .fetch_one(conn)
            .await
            .context("estimating a partition's rows with EXPLAIN")?;
    Ok(json[0]["Plan"]["Plan Rows"]
        .as_f64()
        .map_or(0, |r| r.round() as i64))
}

/// Connection slots a new session can still take on this server: `max_connections`,
/// less the reserved slots, less the client sessions open now (this one included);
/// and the database's name.
///
/// A role without `pg_read_all_stats` sees other roles' sessions with a NULL
/// `backend_type`: those count too when they belong to a database (background
/// processes have none), erring on the side of fewer slots.
async fn free_connection_slots(conn: &mut PgConnection) -> Result<(i64, String)> {
    let (free, database): (i32, String) = sqlx::query_as(
        "SELECT current_setting('max_connections')::int
              - current_setting('superuser_reserved_connections')::int
              - coalesce(current_setting('reserved_connections', true)::int, 0)
              - (SELECT count(*) FROM pg_stat_activity
                 WHERE backend_type = 'client backend'
                    OR (backend_type IS NULL AND datid IS NOT NULL))::int,
              current_database()::text",
    )
    .fetch_one(conn)
    .await?;
    Ok((i64::from(free), database))
}

/// The run `fingerprint` as the checkpoint table records it; `None` also when
/// there is no checkpoint table yet (the steps that only read it do not create it).
pub async fn recorded_run(
    conn: &mut PgConnection,
    table: &QualifiedName,
    fingerprint: &str,
) -> Result<Option<RecordedRun>> {
    if table_oid(conn, table).await?.is_none() {
        return Ok(None);
    }
    read_checkpoints(conn, table, fingerprint).await
}

/// The run `fingerprint` as the checkpoint table records it, if it does.
pub async fn read_checkpoints(
    conn: &mut PgConnection,
    table: &QualifiedName,
    fingerprint: &str,
) -> Result<Option<RecordedRun>> {
    // Each row read as JSON, so a table an older stride made (without the newer
    // columns, until a run adds them) reads as well: missing columns are NULL.
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT (j->>'partition')::int8, (j->>'lower_bound')::int8, (j->>'upper_bound')::int8, \
                coalesce((j->>'partitions')::int8, 0), coalesce((j->>'rows')::int8, 0), \
                coalesce((j->>'bytes')::int8, 0), (j->>'finished')::boolean, \
                (j->>'recorded_at')::timestamptz::text, (j->>'target_oid')::int8, j->>'failed_check', \
                (j->>'mark_first')::boolean, (j->>'mark_from')::int8, (j->>'mark_to')::int8, \
                CASE WHEN jsonb_typeof(j->'boundaries') = 'array' \
                     THEN ARRAY(SELECT jsonb_array_elements_text(j->'boundaries')::int8) END, \
                CASE WHEN jsonb_typeof(j->'deferred_indexes') = 'array' \
                     THEN ARRAY(SELECT jsonb_array_elements_text(j->'deferred_indexes')) \
                     ELSE '{{}}'::text[] END, \
                CASE WHEN jsonb_typeof(j->'estimates') = 'array' \
                     THEN ARRAY(SELECT jsonb_array_elements_text(j->'estimates')::int8) \
                     ELSE '{{}}'::int8[] END \
         FROM (SELECT to_jsonb(c) AS j FROM {table} AS c WHERE fingerprint = $1) AS rows \
         ORDER BY 1"
    )))
    .bind(fingerprint)
    .fetch_all(conn)
    .await
    .with_context(|| format!("reading checkpoints from {table}"))?;
    let mut run: Option<RecordedRun> = None;
    let mut done = Vec::new();
    for row in rows {
        let partition: i64 = row.get(0);
        if partition == crate::checkpoint::RUN_ROW {
            let lower: Option<i64> = row.get(1);
            let upper: Option<i64> = row.get(2);
            run = Some(RecordedRun {
                bounds: lower.zip(upper),
                partitions: row.get(3),
                finished: row.get(6),
                recorded_at: row.get(7),
                target_oid: row.get(8),
                failed_check: row.get(9),
                window: row.get::<Option<bool>, _>(10).map(|first| {
                    crate::engine::postgres::plan::Window {
                        first,
                        since: row.get(11),
                        until: row.get(12),
                    }
                }),
                boundaries: row.get(13),
                deferred_indexes: row.get(14),
                estimates: row.get(15),
                done: Vec::new(),
            });
        } else {
            let rows: i64 = row.get(4);
            let bytes: i64 = row.get(5);
            done.push((
                usize::try_from(partition)
                    .context("a negative partition in the checkpoint table")?,
                u64::try_from(rows).unwrap_or(0),
                u64::try_from(bytes).unwrap_or(0),
            ));
        }
    }
    Ok(run.map(|r| RecordedRun { done, ..r }))
}

/// The claims other sessions hold on a run's partitions now (`stride status`).
pub async fn claims(
    conn: &mut PgConnection,
    fingerprint: &str,
) -> Result<Vec<crate::report::Claim>> {
    let rows: Vec<(i64, String, String, f64)> = sqlx::query_as(AssertSqlSafe(
        crate::checkpoint::claims_held_sql(fingerprint),
    ))
    .fetch_all(conn)
    .await
    .context("reading the claims held on the run's partitions")?;
    Ok(rows
        .into_iter()
        .map(
            |(partition, worker, client, seconds)| crate::report::Claim {
                partition: usize::try_from(partition).unwrap_or(0),
                worker,
                client,
                seconds,
            },
        )
        .collect())
}

/// Seconds since the run row of `fingerprint` was recorded (its start, or its
/// preparation).
pub async fn run_age(
    conn: &mut PgConnection,
    table: &QualifiedName,
    fingerprint: &str,
) -> Result<f64> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT coalesce(extract(epoch FROM now() - max(recorded_at)), 0)::float8 FROM {table} \
         WHERE fingerprint = $1 AND partition = {}",
        crate::checkpoint::RUN_ROW
    )))
    .bind(fingerprint)
    .fetch_one(conn)
    .await
    .with_context(|| format!("reading the run's start from {table}"))
}

/// Row count and checksum from a `plan::verify_sql` statement.
pub async fn verify(conn: &mut PgConnection, sql: &str) -> Result<(i64, String)> {
    sqlx::query_as(AssertSqlSafe(sql))
        .fetch_one(conn)
        .await
        .context("counting and checksumming a partition")
}

/// Rows of a query, counted (in whatever snapshot `conn`'s transaction holds).
///
/// It runs while the partitions copy, so it takes no parallel workers and no JIT
/// compilation, which would compete with the copy for the server's cores (and
/// take workers from its other sessions): 25% less CPU for the count of the
/// 5,000,000-row bench table. The settings are the transaction's, and are put
/// back after.
pub async fn count_rows(conn: &mut PgConnection, select: &str) -> Result<i64> {
    execute(
        conn,
        "SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off",
    )
    .await
    .context("setting up the count")?;
    let count = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*)::int8 FROM ({select}) AS {}",
        crate::sql::quote_ident("all_rows")
    )))
    .fetch_one(&mut *conn)
    .await
    .context("counting the source's rows")?;
    // Only verify uses the connection after the count; if this fails, so does it.
    let _ = execute(
        conn,
        "SET LOCAL max_parallel_workers_per_gather TO DEFAULT; SET LOCAL jit TO DEFAULT",
    )
    .await;
    Ok(count)
}

/// The OID of a table, if it exists.
pub async fn table_oid(conn: &mut PgConnection, table: &QualifiedName) -> Result<Option<i64>> {
    sqlx::query_scalar("SELECT to_regclass($1)::oid::int8")
        .bind(table.to_string())
        .fetch_one(conn)
        .await
        .with_context(|| format!("looking up table {table}"))
}

/// The foreign keys among `tables` of the target at `url`, `(name, child,
/// parent)` by index into `tables`.
pub async fn foreign_keys_among(
    url: &DbUrl,
    tables: &[QualifiedName],
    retries: u32,
) -> Result<Vec<(String, usize, usize)>> {
    let server = connect(Side::Target, url, retries).await?;
    let pool = server.pool(1);
    let mut conn = pool
        .acquire()
        .await
        .context("taking a target connection to read its foreign keys")?;
    let mut by_oid = std::collections::HashMap::new();
    for (i, table) in tables.iter().enumerate() {
        if let Some(oid) = table_oid(&mut conn, table).await? {
            by_oid.insert(oid, i);
        }
    }
    let mut keys = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        for (name, parent) in foreign_keys(&mut conn, table).await? {
            if let Some(&parent) = by_oid.get(&parent) {
                keys.push((name, i, parent));
            }
        }
    }
    Ok(keys)
}

/// The foreign keys `table` holds, each as its name and the OID of the table it
/// references (a partitioned table's keys once, on the parent: the copies on
/// its partitions have a `conparentid`). None when the table does not exist.
pub async fn foreign_keys(
    conn: &mut PgConnection,
    table: &QualifiedName,
) -> Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "SELECT c.conname::text, c.confrelid::int8 FROM pg_constraint c \
         WHERE c.contype = 'f' AND c.conparentid = 0 AND c.conrelid = to_regclass($1) \
         ORDER BY c.conname",
    )
    .bind(table.to_string())
    .fetch_all(conn)
    .await
    .with_context(|| format!("reading the foreign keys of {table}"))
}

/// What a `[[tables]]` pattern can match: ordinary and partitioned tables, by
/// schema and name, outside the system schemas; not views, materialized views,
/// foreign tables, or the partitions of a partitioned table (copied through
/// their parent). And the first schema of the search_path, for a pattern
/// without one.
pub async fn tables_for_patterns(
    conn: &mut PgConnection,
) -> Result<(Vec<(String, String)>, String)> {
    let tables = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
         ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await
    .context("listing the source's tables")?;
    let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(&mut *conn)
        .await
        .context("reading the source's current schema")?;
    Ok((tables, schema.unwrap_or_else(|| "public".to_string())))
}

/// Whether a schema exists.
pub async fn schema_exists(conn: &mut PgConnection, schema: &str) -> Result<bool> {
    sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
        .bind(crate::sql::quote_ident(schema))
        .fetch_one(conn)
        .await
        .with_context(|| format!("looking up schema {schema}"))
}

/// A run's lock on a target table, as the session that took it holds it: what
/// any other session needs to check that the lock is still held.
///
/// The lock itself is a session advisory lock on a key `K` derived from the
/// table's name, held by an idle session of its own for the whole run (shared
/// among the shards of one job). That session can end without the run noticing
/// (a firewall or NAT dropping idle connections, an administrator), and then a
/// second run can take the lock. So every transaction a run commits on the
/// target first calls [`check_run_lock`], and a run that takes the lock first
/// waits for those of earlier runs to end ([`take_run_lock`]): no transaction
/// of a run that lost its lock commits after another run started writing.
#[derive(Clone, Debug)]
pub struct RunLock {
    /// The target table, for messages.
    pub table: QualifiedName,
    /// `K`, the advisory lock's key.
    key: i64,
    /// The lock session's process and its start (microseconds since the epoch),
    /// so that another session given the same process ID later is not taken
    /// for it.
    pid: i32,
    backend_start_us: i64,
}

impl RunLock {
    /// The fence key `F`: `K`'s two halves as a key of the other advisory key
    /// space (two `int4`s), so `pg_locks` shows it with `K`'s `classid` and
    /// `objid`, and `objsubid` 2 instead of 1. Transactions of runs take it
    /// shared; a run that has just taken `K` takes it exclusively, once.
    fn fence(&self) -> (i32, i32) {
        key_halves(self.key)
    }
}

/// A 64-bit advisory key as the two 32-bit halves `pg_locks` shows (`classid`,
/// `objid`), bit for bit as `int4`s.
fn key_halves(key: i64) -> (i32, i32) {
    let bits = key as u64;
    ((bits >> 32) as u32 as i32, bits as u32 as i32)
}

/// Tries the session advisory lock that keeps two runs from writing into the same
/// table at once, on `conn`, which must then stay open (and idle) for the run.
/// Keyed on the schema-qualified name (an unqualified one in the session's
/// current schema), so it holds before the table exists. `shared`: the lock
/// shards of one job take together, which keeps out whole runs, `prepare`,
/// `finish` and `verify --repair` (they take it exclusively). `None`: another
/// run holds it.
///
/// Once the lock is taken, waits for every transaction of an earlier run that
/// checked its own lock (see [`check_run_lock`]) to end: one whose lock session
/// died may still be committing, and the caller is about to write.
///
/// The lock's session idles for the whole run, so it turns off the server's
/// `idle_session_timeout` (PostgreSQL 14 and later) for itself, which would end
/// it and release the lock.
pub async fn take_run_lock(
    conn: &mut PgConnection,
    table: &QualifiedName,
    shared: bool,
) -> Result<Option<RunLock>> {
    let taking = || format!("taking the run lock on {table}");
    execute(
        conn,
        "SELECT set_config(name, '0', false) FROM pg_settings WHERE name = 'idle_session_timeout'",
    )
    .await
    .with_context(taking)?;
    let function = if shared {
        "pg_try_advisory_lock_shared"
    } else {
        "pg_try_advisory_lock"
    };
    let (key, taken, pid, backend_start_us): (i64, bool, i32, i64) =
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT key, {function}(key), pg_backend_pid(), \
               (SELECT (extract(epoch FROM backend_start) * 1000000)::int8 \
                FROM pg_stat_activity WHERE pid = pg_backend_pid()) \
             FROM (SELECT hashtextextended('stride ' || coalesce($1, current_schema()) || '.' || $2, 0) AS key) AS k",
        )))
        .bind(table.schema.as_deref())
        .bind(&table.name)
        .fetch_one(&mut *conn)
        .await
        .with_context(taking)?;
    if !taken {
        return Ok(None);
    }
    let lock = RunLock {
        table: table.clone(),
        key,
        pid,
        backend_start_us,
    };
    let (high, low) = lock.fence();
    let fenced: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(high)
        .bind(low)
        .fetch_one(&mut *conn)
        .await
        .with_context(taking)?;
    if !fenced {
        tracing::info!(
            "waiting for a transaction of an earlier run into {table} (which lost its lock) to end"
        );
        sqlx::query("SELECT pg_advisory_lock($1, $2)")
            .bind(high)
            .bind(low)
            .execute(&mut *conn)
            .await
            .with_context(taking)?;
    }
    sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(high)
        .bind(low)
        .execute(&mut *conn)
        .await
        .with_context(taking)?;
    Ok(Some(lock))
}

/// In an open target transaction, before it commits a run's writes: fails with
/// [`LockLost`] unless the run's lock session still holds the run's lock. The
/// fence key taken first (shared, until the transaction ends) makes a run that
/// takes the lock next wait for this transaction to end, so the check cannot go
/// stale before the COMMIT.
pub async fn check_run_lock(conn: &mut PgConnection, lock: &RunLock) -> Result<()> {
    let checking = || format!("checking the run lock on {}", lock.table);
    let (high, low) = lock.fence();
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1, $2)")
        .bind(high)
        .bind(low)
        .execute(&mut *conn)
        .await
        .with_context(checking)?;
    // The activity view is read once per transaction, on first use: here, after
    // the fence key is taken.
    let held: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid::int8 = $1 AND l.objid::int8 = $2 AND l.pid = $3 \
           AND (extract(epoch FROM a.backend_start) * 1000000)::int8 = $4)",
    )
    .bind(i64::from(high as u32))
    .bind(i64::from(low as u32))
    .bind(lock.pid)
    .bind(lock.backend_start_us)
    .fetch_one(&mut *conn)
    .await
    .with_context(checking)?;
    if held {
        Ok(())
    } else {
        Err(LockLost {
            table: lock.table.to_string(),
        }
        .into())
    }
}

/// One `boolean` from a query.
pub async fn scalar_bool(conn: &mut PgConnection, sql: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(conn).await
}

/// One `bigint` from a query.
pub async fn scalar_i64(conn: &mut PgConnection, sql: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(conn).await
}

/// The planner's statistics of a column, from `plan::statistics_sql`.
pub struct Statistics {
    pub null_frac: f64,
    /// Most common values (encoded; `None`: not encodable) with their frequencies.
    pub common: Vec<(Option<i64>, f64)>,
    pub histogram: Vec<i64>,
    /// Rows changed since the last ANALYZE, as a share of the table's rows.
    pub changed: f64,
}

/// A row of `plan::statistics_sql`.
type StatisticsRow = (f64, Vec<Option<i64>>, Vec<f64>, Vec<Option<i64>>, f64);

pub async fn statistics(conn: &mut PgConnection, sql: &str) -> Result<Option<Statistics>> {
    let row: Option<StatisticsRow> = sqlx::query_as(AssertSqlSafe(sql))
        .fetch_optional(conn)
        .await
        .context("reading the planner's statistics of the partition column")?;
    Ok(row.map(
        |(null_frac, values, freqs, histogram, changed)| Statistics {
            null_frac,
            common: values.into_iter().zip(freqs).collect(),
            histogram: histogram.into_iter().flatten().collect(),
            changed,
        },
    ))
}

/// The encoded key values of a `plan::sample_sql` query.
pub async fn sample(conn: &mut PgConnection, sql: &str) -> Result<Vec<Option<i64>>> {
    sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_all(conn)
        .await
        .context("sampling the partition column for quantile boundaries")
}

/// The schema `table` is in, or for a missing table the one `CREATE TABLE` would
/// put it in.
pub async fn schema_of(conn: &mut PgConnection, table: &QualifiedName) -> Result<String> {
    if let Some(schema) = &table.schema {
        return Ok(schema.clone());
    }
    sqlx::query_scalar(
        "SELECT coalesce((SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = to_regclass($1)), current_schema()::text)",
    )
    .bind(table.to_string())
    .fetch_one(conn)
    .await
    .with_context(|| format!("looking up the schema of {table}"))
}

/// Objects that hold on to `table` itself, by OID, and so stop a `DROP TABLE`
/// without CASCADE: views and materialized views reading it, and foreign keys
/// referencing it (its own included), each named for a message.
pub async fn dependants(conn: &mut PgConnection, table: &QualifiedName) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT format('%s %s', CASE v.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END, v.oid::regclass) \
         FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class \
         WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass \
           AND d.refobjid = to_regclass($1) AND v.oid <> d.refobjid \
         UNION \
         SELECT format('foreign key %I of %s', c.conname, c.conrelid::regclass) FROM pg_constraint c \
         WHERE c.contype = 'f' AND c.confrelid = to_regclass($1) \
         ORDER BY 1",
    )
    .bind(table.to_string())
    .fetch_all(conn)
    .await
    .with_context(|| format!("looking up views and foreign keys that depend on {table}"))
}

/// What a replace's staging table takes from the target when it is created (LIKE
/// copies neither), and what it cannot carry over, for a warning: triggers and
/// row-level security policies.
pub async fn stage_setup(
    conn: &mut PgConnection,
    target: &QualifiedName,
) -> Result<(crate::engine::postgres::replace::StageSetup, Vec<String>)> {
    let context = || format!("reading the definition of {target} for its staging table");
    let owner: Option<String> = sqlx::query_scalar(
        "SELECT pg_get_userbyid(relowner)::text FROM pg_class \
         WHERE oid = to_regclass($1) AND pg_get_userbyid(relowner) <> current_user",
    )
    .bind(target.to_string())
    .fetch_optional(&mut *conn)
    .await
    .with_context(context)?;
    let foreign_keys = sqlx::query_as::<_, (String, String)>(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE conrelid = to_regclass($1) AND contype = 'f' AND confrelid <> conrelid ORDER BY conname",
    )
    .bind(target.to_string())
    .fetch_all(&mut *conn)
    .await
    .with_context(context)?
    .into_iter()
    .map(|(name, definition)| crate::engine::postgres::replace::ForeignKey { name, definition })
    .collect();
    let not_carried: Vec<String> = sqlx::query_scalar(
        "SELECT format('trigger %I', tgname) FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal \
         UNION ALL \
         SELECT format('policy %I', polname) FROM pg_policy WHERE polrelid = to_regclass($1) \
         ORDER BY 1",
    )
    .bind(target.to_string())
    .fetch_all(&mut *conn)
    .await
    .with_context(context)?;
    Ok((
        crate::engine::postgres::replace::StageSetup {
            owner,
            foreign_keys,
        },
        not_carried,
    ))
}

/// Sequences owned by columns of `table`: `deptype` 'a' for serial columns, 'i'
/// for identity columns.
async fn owned_sequences(
    conn: &mut PgConnection,
    table: &QualifiedName,
    deptype: &str,
) -> Result<Vec<crate::engine::postgres::replace::OwnedSequence>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT a.attname::text, n.nspname::text, s.relname::text \
         FROM pg_depend d \
         JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
         JOIN pg_namespace n ON n.oid = s.relnamespace \
         JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
         WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
           AND d.refobjid = to_regclass($1) AND d.deptype = $2::\"char\" \
         ORDER BY a.attnum",
    )
    .bind(table.to_string())
    .bind(deptype)
    .fetch_all(conn)
    .await
    .with_context(|| format!("looking up the sequences owned by columns of {table}"))?;
    Ok(rows
        .into_iter()
        .map(
            |(column, schema, name)| crate::engine::postgres::replace::OwnedSequence {
                column,
                sequence: QualifiedName {
                    schema: Some(schema),
                    name,
                },
            },
        )
        .collect())
}

/// Each index of `table` with how it is built: primary or unique, its
/// constraint's kind, and its definition after the table's name (the same for
/// the target's index and the one LIKE made from it).
async fn index_keys(
    conn: &mut PgConnection,
    table: &QualifiedName,
) -> Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT c.relname::text, \
                concat_ws(' ', i.indisprimary, i.indisunique, coalesce(con.contype::text, '-'), \
                  substr(pg_get_indexdef(i.indexrelid), \
                         length(format('CREATE %sINDEX %I ON %I.%I ', CASE WHEN i.indisunique THEN 'UNIQUE ' END, \
                                       c.relname, n.nspname, t.relname)) + 1)) \
         FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_class t ON t.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid \
         WHERE i.indrelid = to_regclass($1) \
         ORDER BY c.relname",
    )
    .bind(table.to_string())
    .fetch_all(conn)
    .await
    .with_context(|| format!("looking up the indexes of {table}"))
}

/// What the swap of a replace needs to know, read while it holds the target's lock.
pub async fn swap_catalog(
    conn: &mut PgConnection,
    target: &QualifiedName,
    stage: &QualifiedName,
) -> Result<crate::engine::postgres::replace::SwapCatalog> {
    if table_oid(&mut *conn, target).await?.is_none() {
        return Ok(crate::engine::postgres::replace::SwapCatalog::default());
    }
    let serial = owned_sequences(&mut *conn, target, "a").await?;
    let staged_identity = owned_sequences(&mut *conn, stage, "i").await?;
    let identity = owned_sequences(&mut *conn, target, "i")
        .await?
        .into_iter()
        .filter_map(|old| {
            let new = staged_identity.iter().find(|s| s.column == old.column)?;
            Some((old, new.clone()))
        })
        .collect();
    let grants = sqlx::query_as::<_, (String, Option<String>, bool, Option<String>)>(
        "SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END, \
                a.is_grantable, NULL::text \
         FROM pg_class c, aclexplode(c.relacl) a \
         WHERE c.oid = to_regclass($1) AND a.grantee <> c.relowner \
         UNION ALL \
         SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END, \
                a.is_grantable, att.attname::text \
         FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid, aclexplode(att.attacl) a \
         WHERE c.oid = to_regclass($1) AND NOT att.attisdropped AND a.grantee <> c.relowner \
         ORDER BY 4 NULLS FIRST, 2 NULLS FIRST, 1",
    )
    .bind(target.to_string())
    .fetch_all(&mut *conn)
    .await
    .with_context(|| format!("looking up the grants on {target}"))?
    .into_iter()
    .map(
        |(privilege, grantee, grantable, column)| crate::engine::postgres::replace::Grant {
            privilege,
            grantee,
            grantable,
            column,
        },
    )
    .collect();
    let comment: Option<String> =
        sqlx::query_scalar("SELECT obj_description(to_regclass($1), 'pg_class')")
            .bind(target.to_string())
            .fetch_one(&mut *conn)
            .await
            .with_context(|| format!("looking up the comment on {target}"))?;
    let index_renames = crate::engine::postgres::replace::pair_indexes(
        &index_keys(&mut *conn, target).await?,
        &index_keys(&mut *conn, stage).await?,
    );
    Ok(crate::engine::postgres::replace::SwapCatalog {
        target_exists: true,
        serial,
        identity,
        grants,
        comment,
        index_renames,
    })
}

/// The secondary indexes of `table` that a copy may drop and build again: valid,
/// not unique (a unique index keeps rejecting duplicates during the copy) and
/// backing no constraint. Their definitions, as `CREATE INDEX IF NOT EXISTS`
/// statements, and their schema-qualified names.
pub async fn secondary_indexes(
    conn: &mut PgConnection,
    table: &QualifiedName,
) -> Result<Vec<(String, String)>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT format('%I.%I', n.nspname, c.relname), pg_get_indexdef(i.indexrelid) \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE i.indrelid = to_regclass($1) AND i.indisvalid AND NOT i.indisunique \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) \
         ORDER BY c.relname",
    )
    .bind(table.to_string())
    .fetch_all(conn)
    .await
    .with_context(|| format!("reading the secondary indexes of {table}"))?;
    Ok(rows
        .into_iter()
        .map(|(name, def)| {
            (
                name,
                def.replacen("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1),
            )
        })
        .collect())
}

/// The indexes a run deferred, as its run row records them (none if it has no row).
pub async fn deferred_indexes(
    conn: &mut PgConnection,
    table: &QualifiedName,
    fingerprint: &str,
) -> Result<Vec<String>> {
    Ok(read_checkpoints(conn, table, fingerprint)
        .await?
        .map(|run| run.deferred_indexes)
        .unwrap_or_default())
}

/// The indexes of a source table (none for a view), for a table stride creates
/// from it: see [`crate::engine::postgres::create::SourceIndex`]. The definition's tail is what
/// `pg_get_indexdef` prints after `CREATE [UNIQUE] INDEX name ON [ONLY]
/// schema.table ` (names quoted as it quotes them).
pub async fn source_indexes(
    conn: &mut PgConnection,
    table: &QualifiedName,
) -> Result<crate::engine::postgres::create::SourceIndexes> {
    // name, primary, unique, key columns, every column referred to, tail
    type Row = (String, bool, bool, Vec<String>, Vec<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.relname::text, i.indisprimary, i.indisunique, \
           ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE k.ord <= i.indnkeyatts ORDER BY k.ord), \
           ARRAY(SELECT a.attname::text FROM pg_attribute a \
                 WHERE a.attrelid = i.indrelid AND a.attnum > 0 AND (a.attnum = ANY (i.indkey::int2[]) \
                   OR EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                     AND d.objid = i.indexrelid AND d.refclassid = 'pg_class'::regclass \
                     AND d.refobjid = i.indrelid AND d.refobjsubid = a.attnum)) \
                 ORDER BY a.attnum), \
           (SELECT CASE WHEN starts_with(def, head || table_name || ' ') \
                          THEN substr(def, length(head || table_name) + 2) \
                        WHEN starts_with(def, head || 'ONLY ' || table_name || ' ') \
                          THEN substr(def, length(head || 'ONLY ' || table_name) + 2) END \
              FROM (SELECT pg_get_indexdef(i.indexrelid) AS def, \
                      'CREATE ' || CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END || 'INDEX ' \
                        || quote_ident(c.relname) || ' ON ' AS head, \
                      quote_ident(n.nspname) || '.' || quote_ident(t.relname) AS table_name) AS d) \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid \
           JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE i.indrelid = to_regclass($1) AND i.indisvalid AND i.indislive \
         ORDER BY c.relname",
    )
    .bind(table.to_string())
    .fetch_all(&mut *conn)
    .await
    .with_context(|| format!("reading the indexes of {table}"))?;
    let table_name: Option<String> =
        sqlx::query_scalar("SELECT relname::text FROM pg_class WHERE oid = to_regclass($1)")
            .bind(table.to_string())
            .fetch_optional(&mut *conn)
            .await
            .with_context(|| format!("reading the name of {table}"))?;
    Ok(crate::engine::postgres::create::SourceIndexes {
        table_name: table_name.unwrap_or_else(|| table.name.clone()),
        indexes: rows
            .into_iter()
            .map(|(name, primary, unique, key_columns, columns, tail)| {
                crate::engine::postgres::create::SourceIndex {
                    name,
                    primary,
                    unique,
                    key_columns,
                    columns,
                    tail,
                }
            })
            .collect(),
    })
}

/// The relation names of `schema` a new index name must not take, leaving out
/// the indexes of `dropping` (tables the run drops before it creates its own:
/// overwrite's target, replace's old staging table).
pub async fn taken_names(
    conn: &mut PgConnection,
    schema: &str,
    dropping: &[&QualifiedName],
) -> Result<Vec<String>> {
    let dropping: Vec<String> = dropping.iter().map(|t| t.to_string()).collect();
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND NOT EXISTS (SELECT 1 FROM pg_index i \
           WHERE i.indexrelid = c.oid AND i.indrelid = ANY (ARRAY(SELECT to_regclass(d) FROM unnest($2::text[]) AS d)))",
    )
    .bind(schema)
    .bind(dropping)
    .fetch_all(conn)
    .await
    .with_context(|| format!("reading the relation names of schema {schema}"))
}

/// Whether `table` has a primary key.
pub async fn has_primary_key(conn: &mut PgConnection, table: &QualifiedName) -> Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = to_regclass($1) AND indisprimary)",
    )
    .bind(table.to_string())
    .fetch_one(conn)
    .await
    .with_context(|| format!("looking up the primary key of {table}"))
}

/// Takes the target table's run lock (a session advisory lock, see
/// [`RunLock`]) on a connection of its own, held until the returned connection
/// is dropped and so closed. Every transaction the run commits on the target
/// checks the lock with [`check_run_lock`].
pub async fn lock_target(
    target: &PgPool,
    table: &QualifiedName,
    shared: bool,
) -> Result<(PgConnection, RunLock)> {
    let mut conn = target
        .acquire()
        .await
        .context("taking a target connection for the run's lock")?
        .detach();
    let Some(lock) = take_run_lock(&mut conn, table, shared).await? else {
        return Err(anyhow::anyhow!(
            "another stride run is writing into {table} on the target; wait for it to end (or stop it), then run again"
        ));
    };
    Ok((conn, lock))
}

#[cfg(test)]
mod tests {
    use super::{key_halves, transient_sqlstate};

    #[test]
    fn transient_errors_are_retried_and_others_fail_at_once() {
        for code in [
            "08006", "08001", "57P01", "57P03", "40001", "40P01", "53300",
        ] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "23514", "42501", "22P02", "42P01", "57014"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        let reset = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(crate::engine::is_transient(
            &anyhow::Error::new(reset).context("partition 3")
        ));
        let stalled = crate::error::Stalled {
            side: crate::engine::postgres::Side::Target,
            waited: std::time::Duration::from_secs(30),
        };
        let stalled = anyhow::Error::new(stalled).context("partition 3 ([100, 200))");
        assert!(crate::engine::is_transient(&stalled));
        assert_eq!(
            crate::error::chain(&stalled),
            "partition 3 ([100, 200)): the target moved no data for 30 s (run.stall_timeout)"
        );
        let unsettled = anyhow::Error::new(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )))
        .context(crate::error::Unsettled);
        assert!(!crate::engine::is_transient(&unsettled));
        let decode = sqlx::Error::ColumnNotFound("x".into());
        assert!(!crate::engine::is_transient(&anyhow::Error::new(decode)));
        assert!(!crate::engine::is_transient(&anyhow::Error::new(
            crate::error::JobError::new("x")
        )));
        let lost = anyhow::Error::new(crate::error::LockLost {
            table: "t".to_string(),
        })
        .context("partition 3");
        assert!(
            !crate::engine::is_transient(&lost),
            "a lost lock is never retried"
        );
        assert_eq!(crate::error::exit_code(&lost), crate::error::exit::FAILED);
    }

    #[test]
    fn a_key_splits_into_the_halves_pg_locks_shows() {
        // pg_locks shows a bigint key's high half as classid, its low half as
        // objid, both unsigned; the fence key's int4s carry the same bits.
        for (key, classid, objid) in [
            (0i64, 0u32, 0u32),
            (1, 0, 1),
            (-1, u32::MAX, u32::MAX),
            (i64::MIN, 1 << 31, 0),
            (0x1234_5678_9abc_def0, 0x1234_5678, 0x9abc_def0),
        ] {
            let (high, low) = key_halves(key);
            assert_eq!((high as u32, low as u32), (classid, objid), "{key:#x}");
            assert_eq!((i64::from(high) << 32) | i64::from(low as u32), key);
        }
    }
}
