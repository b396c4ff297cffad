//! MySQL and MariaDB, as a source and as a target (issue 14), through sqlx's
//! MySQL driver (rustls, `caching_sha2_password` and `mysql_native_password`).
//!
//! [`dialect`] holds every statement stride sends them, the type mapping to
//! and from the other engines and the conversions of values to and from
//! canonical text: pure code, unit-tested without a server. [`url`] reads
//! their URLs and `~/.my.cnf`.
//!
//! - Values are read as text (unprepared statements: MySQL's text protocol),
//!   raw bytes per column turned into canonical text by
//!   [`dialect::canonical`]: zero dates and 65-digit decimals never fail to
//!   decode, they are refused or kept by name. Rows stream in batches.
//! - One moment across readers: a connection of its own takes `LOCK TABLES
//!   <table> READ`, each reader opens `START TRANSACTION WITH CONSISTENT
//!   SNAPSHOT`, then the lock is let go (as MySQL Shell does without RELOAD).
//!   A reader whose read did not end is not used again: MySQL cannot open
//!   that moment a second time, so the partition fails and a re-run resumes.
//! - Each partition is one InnoDB transaction: multi-row INSERTs cut in bytes
//!   under `max_allowed_packet`, then the checkpoint row, then COMMIT.
//! - MySQL commits DDL (`CREATE`, `DROP`) implicitly. A new run's "create or
//!   drop, then record the run" is therefore two steps: after a crash between
//!   them no run is recorded, so the next run plans again from the table as
//!   it is (it exists now, or is gone) and records itself; emptying a table is
//!   `DELETE`, which commits with the run row. `replace` (a staging table
//!   swapped in) is refused for now.

pub mod dialect;
pub mod url;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow, MySqlSslMode};
use sqlx::{AssertSqlSafe, Connection, Decode, MySql, MySqlConnection, Row, ValueRef};
use tokio::sync::mpsc;

use crate::engine::{Batch, Column, Kind, Recorded, Side, Table, WriteSpec, BATCH_ROWS};
use crate::error::JobError;
use crate::job::{DbUrl, Job, Mode, Relation, ZeroDates};
use crate::partition::KeyType;
use crate::report::Channel;
use crate::sql::QualifiedName;

use dialect::{Reading, SslMode};

/// How long the server waits on a reader's socket (its default is 60 s):
/// partitions queue behind a slow target.
const NET_WRITE_TIMEOUT_SECONDS: u32 = 3600;

/// What a job asks that MySQL does not do (yet), by key.
pub fn refusals(job: &Job, side: Side) -> Vec<String> {
    let mut out = Vec::new();
    if side == Side::Source {
        if job.source.sample.is_some() {
            out.push("source.sample: MySQL has no TABLESAMPLE (expected `limit` or `where` to take a slice)".to_string());
        }
        if matches!(job.source.relation, Relation::Query(_))
            && job.partitions_at_once(job.partition.as_ref().map_or(1, |p| p.count)) > 1
        {
            out.push("source.query: a MySQL query's tables cannot be held for one moment across several readers (LOCK TABLES needs their names); expected run.parallelism = 1 (one reader, one moment) or source.table".to_string());
        }
    } else if job.target.mode == Mode::Replace {
        out.push("target.mode = \"replace\" is not supported yet into MySQL: its DROP TABLE commits implicitly in the middle of the swap (expected mode = \"truncate\", which empties the table in the run's first transaction)".to_string());
    }
    out
}

/// Whether a driver error is worth another attempt (`None`: not MySQL's):
/// a deadlock (1213), a lock wait timeout (1205), a lost connection.
pub fn transient(cause: &(dyn std::error::Error + 'static)) -> Option<bool> {
    let sqlx::Error::Database(db) = cause.downcast_ref::<sqlx::Error>()? else {
        return None;
    };
    let e = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()?;
    // 2006 gone away, 2013 lost, 1053 shutdown, 1927 killed, 1040 too many connections.
    Some(matches!(
        e.number(),
        1213 | 1205 | 2006 | 2013 | 1053 | 1927 | 1040
    ))
}

/// A server to connect to, from a checked URL.
#[derive(Clone)]
struct Server {
    options: MySqlConnectOptions,
    place: String,
    ssl_mode: SslMode,
    verified: &'static str,
    socket: bool,
    side: Side,
}

impl Server {
    fn new(side: Side, url: &DbUrl) -> Result<Server> {
        let key = match side {
            Side::Source => "source.url",
            Side::Target => "target.url",
        };
        let u = dialect::parse_url(key, url.expose())?;
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let my_cnf = home
            .map(|h| h.join(".my.cnf"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| dialect::my_cnf_client(&t))
            .unwrap_or_default();
        let pwd = std::env::var("MYSQL_PWD").ok();
        let who = dialect::credentials(&u, pwd.as_deref(), &my_cnf);
        let mut options = MySqlConnectOptions::new()
            .host(&u.host)
            .port(u.port)
            // The user's own queries keep `||` as the server reads it.
            .pipes_as_concat(false)
            .ssl_mode(match u.ssl_mode {
                SslMode::Disabled => MySqlSslMode::Disabled,
                SslMode::Preferred => MySqlSslMode::Preferred,
                SslMode::Required => MySqlSslMode::Required,
                SslMode::VerifyCa => MySqlSslMode::VerifyCa,
                SslMode::VerifyIdentity => MySqlSslMode::VerifyIdentity,
            });
        if let Some(s) = &u.socket {
            options = options.socket(s);
        }
        if let Some(user) = &who.user {
            options = options.username(user);
        }
        // An empty password is none, as for the mysql client (sqlx would send
        // the scramble of "", which a user without a password is refused).
        if let Some(p) = who.password.as_deref().filter(|p| !p.is_empty()) {
            options = options.password(p);
        }
        if let Some(db) = &u.database {
            options = options.database(db);
        }
        if let Some(ca) = &u.ssl_ca {
            options = options.ssl_ca(ca);
        }
        if let (Some(cert), Some(k)) = (&u.ssl_cert, &u.ssl_key) {
            options = options.ssl_client_cert(cert).ssl_client_key(k);
        }
        let place = match &u.socket {
            Some(s) => format!("{s}/{}", u.database.as_deref().unwrap_or("")),
            None => format!(
                "{}:{}/{}",
                u.host,
                u.port,
                u.database.as_deref().unwrap_or("")
            ),
        };
        Ok(Server {
            options,
            place,
            ssl_mode: u.ssl_mode,
            verified: match u.ssl_mode {
                SslMode::VerifyCa => "chain",
                SslMode::VerifyIdentity => "full",
                _ => "none",
            },
            socket: u.socket.is_some(),
            side,
        })
    }

    /// A connection with the session every statement here assumes.
    async fn connect(&self, writer: bool) -> Result<MySqlConnection> {
        let mut conn = MySqlConnection::connect_with(&self.options)
            .await
            .with_context(|| {
                format!(
                    "connecting to the {} MySQL server at {} (ssl-mode={})",
                    self.side,
                    self.place,
                    self.ssl_mode.name()
                )
            })?;
        for sql in dialect::session_sql(writer) {
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .context("setting up the MySQL session")?;
        }
        Ok(conn)
    }

    fn pool(&self, connections: u32) -> MySqlPool {
        MySqlPoolOptions::new()
            .max_connections(connections.max(1))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    for sql in dialect::session_sql(true) {
                        sqlx::raw_sql(AssertSqlSafe(sql))
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(self.options.clone())
    }

    /// How a session travels, read from the server.
    async fn channel(&self, conn: &mut MySqlConnection) -> Result<Channel> {
        let rows = texts(
            conn,
            "SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')",
        )
        .await?;
        let get = |name: &str| {
            rows.iter()
                .find(|r| r[0].as_deref() == Some(name))
                .and_then(|r| r[1].clone())
                .filter(|v| !v.is_empty())
        };
        Ok(Channel {
            tls: get("Ssl_version"),
            cipher: get("Ssl_cipher"),
            sslmode: self.ssl_mode.name(),
            mode_key: "ssl-mode",
            verified: self.verified,
            unix_socket: self.socket,
        })
    }
}

/// A value of a text-protocol row: its bytes, `None` for NULL.
fn raw(row: &MySqlRow, i: usize) -> Result<Option<&[u8]>> {
    let value = row.try_get_raw(i)?;
    if value.is_null() {
        return Ok(None);
    }
    <&[u8] as Decode<MySql>>::decode(value)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("reading a value: {e}"))
}

/// The rows of an unprepared statement, every value as text.
async fn texts(conn: &mut MySqlConnection, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    let rows = sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .fetch_all(&mut *conn)
        .await
        .with_context(|| format!("running {sql}"))?;
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| Ok(raw(r, i)?.map(|b| String::from_utf8_lossy(b).into_owned())))
                .collect()
        })
        .collect()
}

/// A table's columns, keys and how to read each column; `None`: no such table.
async fn describe_table(
    conn: &mut MySqlConnection,
    name: &QualifiedName,
) -> Result<Option<(Table, HashMap<String, Reading>, dialect::Keys)>> {
    let rows = texts(conn, &dialect::columns_sql(name)).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    // MariaDB's json is longtext with a json_valid check; MySQL 8 has no
    // TABLE_NAME there and prints json itself.
    let json: Vec<String> = match texts(conn, &dialect::checks_sql(name)).await {
        Ok(checks) => checks
            .iter()
            .filter_map(|r| r[0].as_deref().and_then(dialect::json_column))
            .collect(),
        Err(_) => Vec::new(),
    };
    let columns = rows
        .into_iter()
        .map(|r| {
            let name = r[0].clone().unwrap_or_default();
            let mut ty = r[1].clone().unwrap_or_default();
            if json.contains(&name) && ty.eq_ignore_ascii_case("longtext") {
                ty = "json".into();
            }
            (
                name,
                ty,
                r[2].as_deref() == Some("YES"),
                r[3].clone().unwrap_or_default(),
            )
        })
        .collect::<Vec<_>>();
    let key_rows = texts(conn, &dialect::keys_sql(name)).await?;
    let keys = dialect::keys(
        &key_rows
            .into_iter()
            .map(|r| {
                (
                    r[0].clone().unwrap_or_default(),
                    r[1].clone().unwrap_or_default(),
                    r[2].as_deref().and_then(|s| s.parse().ok()),
                )
            })
            .collect::<Vec<_>>(),
    );
    let (table, readings) = seam_table(columns, &keys)?;
    Ok(Some((table, readings, keys)))
}

/// `(name, COLUMN_TYPE, nullable, EXTRA)` per column as the seam sees them; a
/// type stride cannot copy loss-free is refused by name.
fn seam_table(
    columns: Vec<(String, String, bool, String)>,
    keys: &dialect::Keys,
) -> Result<(Table, HashMap<String, Reading>)> {
    let mut out = Table {
        primary_key: keys.primary.clone(),
        unique_keys: std::iter::once(keys.primary.clone())
            .filter(|k| !k.is_empty())
            .chain(keys.unique.iter().cloned())
            .collect(),
        ..Table::default()
    };
    let mut readings = HashMap::new();
    let mut refused = Vec::new();
    for (name, ty, nullable, extra) in columns {
        let generated = dialect::is_generated(&extra);
        match (dialect::kind_of(&ty), dialect::reading(&ty)) {
            (Ok(kind), Ok(reading)) => {
                readings.insert(name.clone(), reading);
                out.columns.push(Column {
                    name,
                    kind,
                    declared: ty,
                    not_null: !nullable,
                    generated,
                });
            }
            (Err(e), _) | (_, Err(e)) => refused.push(format!("column {name}: {e}")),
        }
    }
    if !refused.is_empty() {
        return Err(JobError::new(refused.join("\n")).into());
    }
    Ok((out, readings))
}

/// A MySQL database read by a run.
pub struct Source {
    server: Server,
    conn: MySqlConnection,
    encryption: Channel,
    readings: HashMap<String, Reading>,
    zero_dates: ZeroDates,
    /// Zero dates written as NULL, over the run's readers.
    nulled: Arc<AtomicU64>,
    /// The table `snapshot` locks (`None`: a query).
    table: Option<String>,
}

impl Source {
    pub async fn open(url: &DbUrl) -> Result<Source> {
        let server = Server::new(Side::Source, url)?;
        let mut conn = server.connect(false).await?;
        let encryption = server.channel(&mut conn).await?;
        Ok(Source {
            server,
            conn,
            encryption,
            readings: HashMap::new(),
            zero_dates: ZeroDates::Refuse,
            nulled: Arc::new(AtomicU64::new(0)),
            table: None,
        })
    }

    pub fn place(&self) -> String {
        self.server.place.clone()
    }

    pub fn encryption(&self) -> Channel {
        self.encryption.clone()
    }

    /// Zero dates written as NULL so far.
    pub fn nulled_dates(&self) -> u64 {
        self.nulled.load(Ordering::Relaxed)
    }

    /// The columns of the job's table or query. A `tinyint(1)` column that
    /// holds a value other than 0, 1 and NULL is a small integer, not a boolean.
    pub async fn describe(&mut self, job: &Job) -> Result<Table> {
        self.zero_dates = job.target.zero_dates;
        let mut table = match &job.source.relation {
            Relation::Table(name) => {
                self.table = Some(dialect::table(name));
                let (table, readings, _) = describe_table(&mut self.conn, name)
                    .await?
                    .ok_or_else(|| {
                        JobError::new(format!(
                            "source.table: table {name} does not exist in the source database at {} (expected an existing table or view)",
                            self.server.place
                        ))
                    })?;
                self.readings = readings;
                table
            }
            Relation::Query(query) => {
                // A temporary table of the query's columns, none of its rows:
                // SHOW COLUMNS gives each one's COLUMN_TYPE.
                let probe = dialect::quote_ident("stride_query_probe");
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "CREATE TEMPORARY TABLE {probe} AS SELECT * FROM ({query}\n) AS {} LIMIT 0",
                    dialect::quote_ident("source")
                )))
                .execute(&mut self.conn)
                .await
                .map_err(|e| JobError::new(format!("source.query: the query does not run: {e}")))?;
                let shown = texts(&mut self.conn, &format!("SHOW COLUMNS FROM {probe}")).await;
                sqlx::raw_sql(AssertSqlSafe(format!("DROP TEMPORARY TABLE {probe}")))
                    .execute(&mut self.conn)
                    .await?;
                let columns = shown?
                    .into_iter()
                    .map(|r| {
                        (
                            r[0].clone().unwrap_or_default(),
                            r[1].clone().unwrap_or_default(),
                            r[2].as_deref() == Some("YES"),
                            String::new(),
                        )
                    })
                    .collect();
                let (table, readings) = seam_table(columns, &dialect::Keys::default())?;
                self.readings = readings;
                table
            }
        };
        let (from, _) = dialect::from(job);
        for c in &mut table.columns {
            if self.readings.get(&c.name) != Some(&Reading::Bool) {
                continue;
            }
            let other = texts(&mut self.conn, &dialect::bool_check_sql(&from, &c.name)).await?;
            if other
                .first()
                .and_then(|r| r[0].as_deref())
                .is_some_and(|v| v != "0")
            {
                tracing::info!(
                    column = %c.name,
                    "tinyint(1) holds values other than 0 and 1: copied as a small integer"
                );
                c.kind = Kind::Int;
                c.declared = "tinyint".into();
                self.readings.insert(c.name.clone(), Reading::AsIs);
            }
        }
        Ok(table)
    }

    /// Zero and partial dates in `columns`, by column, refused unless the job
    /// makes them NULL: one message naming each column and its count.
    pub async fn zero_dates(&mut self, job: &Job, columns: &[Column]) -> Result<Option<String>> {
        if job.target.zero_dates == ZeroDates::Null {
            return Ok(None);
        }
        let dated: Vec<String> = columns
            .iter()
            .filter(|c| matches!(c.kind, Kind::Date | Kind::Timestamp | Kind::TimestampTz))
            .map(|c| c.name.clone())
            .collect();
        let (from, user) = dialect::from(job);
        let from = match user {
            Some(w) => format!("{from} WHERE {w}"),
            None => from,
        };
        let Some(sql) = dialect::zero_dates_sql(&from, &dated) else {
            return Ok(None);
        };
        let counts = texts(&mut self.conn, &sql).await?;
        let found: Vec<String> = dated
            .iter()
            .zip(counts.first().cloned().unwrap_or_default())
            .filter_map(|(c, n)| {
                let n: u64 = n.as_deref()?.parse().ok()?;
                (n > 0).then(|| format!("{c}: {n}"))
            })
            .collect();
        Ok((!found.is_empty()).then(|| {
            format!(
                "source: zero or partial dates (0000-00-00, 2021-00-15), which only MySQL holds, in {} (expected target.zero_dates = \"null\" to write them as NULL, or a `where` that leaves them out)",
                found.join(", ")
            )
        }))
    }

    /// `time` columns holding values outside a day (MySQL's go from
    /// -838:59:59 to 838:59:59), which another engine's time cannot hold: by
    /// name, before anything is written.
    pub async fn long_times(&mut self, job: &Job, columns: &[Column]) -> Result<Vec<String>> {
        let (from, _) = dialect::from(job);
        let mut out = Vec::new();
        for c in columns.iter().filter(|c| c.kind == Kind::Time) {
            let found = texts(&mut self.conn, &dialect::time_check_sql(&from, &c.name)).await?;
            if found
                .first()
                .and_then(|r| r[0].as_deref())
                .is_some_and(|v| v != "0")
            {
                out.push(format!(
                    "column {}: holds times outside 00:00:00 to 24:00:00, which only MySQL's time holds (expected a `query` selecting it as text, CAST({} AS CHAR))",
                    c.name,
                    dialect::quote_ident(&c.name)
                ));
            }
        }
        Ok(out)
    }

    /// About how many rows the job reads: the table's statistics.
    pub async fn estimate(&mut self, job: &Job) -> Result<i64> {
        let Relation::Table(name) = &job.source.relation else {
            return Ok(0);
        };
        let sql = format!(
            "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
            name.schema
                .as_deref()
                .map_or("DATABASE()".to_string(), dialect::quote_literal),
            dialect::quote_literal(&name.name)
        );
        let rows = texts(&mut self.conn, &sql).await?;
        Ok(rows
            .first()
            .and_then(|r| r[0].as_deref())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Readers in one moment: the table held with `LOCK TABLES ... READ` on
    /// this connection while each reader opens its consistent snapshot.
    pub async fn snapshot(&mut self, readers: usize) -> Result<Vec<Reader>> {
        let readers = readers.max(1);
        // One reader is one moment by itself: no lock.
        let lock = self.table.clone().filter(|_| readers > 1);
        if let Some(table) = &lock {
            // A READ lock waits for open writes: not for MySQL's default year.
            sqlx::raw_sql("SET SESSION lock_wait_timeout = 60")
                .execute(&mut self.conn)
                .await?;
            let locked = sqlx::raw_sql(AssertSqlSafe(dialect::lock_tables_sql(
                std::slice::from_ref(table),
            )))
            .execute(&mut self.conn)
            .await;
            if let Err(e) = locked {
                let denied = matches!(&e, sqlx::Error::Database(db)
                    if db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                        .is_some_and(|m| matches!(m.number(), 1044 | 1142 | 1227)));
                if denied {
                    return Err(JobError::new(format!(
                        "source.table: the source's user may not run LOCK TABLES {table} READ, which holds the table while the readers open one moment of it ({e}); expected the LOCK TABLES and SELECT privileges on it, or run.parallelism = 1 (one reader is one moment without a lock)"
                    ))
                    .into());
                }
                return Err(anyhow::Error::new(e)
                    .context(format!("holding {table} for one moment of the source")));
            }
        } else if readers > 1 {
            anyhow::bail!("a query source is read by one reader (its tables cannot be locked)");
        }
        let mut out = Vec::with_capacity(readers);
        let mut result = Ok(());
        for _ in 0..readers {
            match self.reader().await {
                Ok(r) => out.push(r),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if lock.is_some() {
            sqlx::raw_sql(dialect::UNLOCK_TABLES_SQL)
                .execute(&mut self.conn)
                .await
                .context("letting go of the source's table lock")?;
        }
        result.map(|()| out)
    }

    async fn reader(&self) -> Result<Reader> {
        let mut conn = self.server.connect(false).await?;
        for sql in [
            dialect::net_write_timeout_sql(NET_WRITE_TIMEOUT_SECONDS),
            dialect::CONSISTENT_SNAPSHOT_SQL.to_string(),
        ] {
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .context("opening a consistent snapshot of the source")?;
        }
        Ok(Reader {
            conn: Some(conn),
            readings: self.readings.clone(),
            zero_dates: self.zero_dates,
            nulled: Arc::clone(&self.nulled),
        })
    }
}

/// One connection reading in the run's moment (or the target as it is).
pub struct Reader {
    /// `None` once a read did not end: its snapshot cannot be opened again.
    conn: Option<MySqlConnection>,
    readings: HashMap<String, Reading>,
    zero_dates: ZeroDates,
    nulled: Arc<AtomicU64>,
}

impl Reader {
    fn connection(&mut self) -> Result<MySqlConnection> {
        self.conn.take().ok_or_else(|| {
            anyhow::anyhow!(
                "a MySQL reader's read did not end, and its moment of the source cannot be opened again (run the job again: it resumes)"
            )
        })
    }

    pub async fn bounds(
        &mut self,
        job: &Job,
        column: &str,
        key: KeyType,
    ) -> Result<Option<(i64, i64)>> {
        let mut conn = self.connection()?;
        let rows = texts(&mut conn, &dialect::bounds_sql(job, column, key)).await;
        self.conn = Some(conn);
        let rows = rows.context("reading min() and max() of the partition column")?;
        let row = rows.into_iter().next().unwrap_or_default();
        let parse = |text: Option<&String>| -> Result<Option<i64>> {
            let Some(text) = text else { return Ok(None) };
            key.parse_bound(text).map(Some).map_err(|e| {
                JobError::new(format!(
                    "partition.column: {column} holds {text:?}, which is not a {} ({e})",
                    key.sql_name()
                ))
                .into()
            })
        };
        let (lo, hi) = (
            row.first().and_then(Option::as_ref),
            row.get(1).and_then(Option::as_ref),
        );
        Ok(parse(lo)?.zip(parse(hi)?))
    }

    /// Streams the rows of `select` in batches of canonical text.
    pub async fn read(
        &mut self,
        select: &str,
        kinds: &[Kind],
        rows: &mpsc::Sender<Batch>,
    ) -> Result<()> {
        let mut conn = self.connection()?;
        let mut batch = Batch::new(kinds.len());
        let mut readings: Option<Vec<Reading>> = None;
        {
            let mut stream = sqlx::raw_sql(AssertSqlSafe(select.to_string())).fetch(&mut conn);
            while let Some(row) = stream.try_next().await.context("reading rows")? {
                let readings = match &readings {
                    Some(r) => r,
                    None => readings.insert(
                        (0..kinds.len())
                            .map(|i| self.reading_of(&row, i, kinds[i]))
                            .collect(),
                    ),
                };
                for (i, reading) in readings.iter().enumerate() {
                    match raw(&row, i)? {
                        None => batch.push(None),
                        Some(bytes) => match dialect::canonical(*reading, bytes) {
                            Ok(text) => batch.push(Some(&text)),
                            Err(_)
                                if self.zero_dates == ZeroDates::Null
                                    && std::str::from_utf8(bytes)
                                        .ok()
                                        .and_then(dialect::date_problem)
                                        .is_some() =>
                            {
                                self.nulled.fetch_add(1, Ordering::Relaxed);
                                batch.push(None);
                            }
                            Err(e) => {
                                use sqlx::Column as _;
                                anyhow::bail!("column {}: {e}", row.columns()[i].name())
                            }
                        },
                    }
                }
                if batch.rows() >= BATCH_ROWS {
                    let full = std::mem::replace(&mut batch, Batch::new(kinds.len()));
                    if rows.send(full).await.is_err() {
                        // The writer gave up (its retry reads again): the
                        // connection is sound, and sqlx skips the rest of
                        // this result before its next statement.
                        drop(stream);
                        self.conn = Some(conn);
                        return Ok(());
                    }
                }
            }
        }
        self.conn = Some(conn);
        batch.end = true;
        let _ = rows.send(batch).await;
        Ok(())
    }

    /// How to read result column `i`: by its name (from the catalogue), else by
    /// its kind.
    fn reading_of(&self, row: &MySqlRow, i: usize, kind: Kind) -> Reading {
        use sqlx::{Column as _, TypeInfo as _};
        let column = &row.columns()[i];
        if let Some(r) = self.readings.get(column.name()) {
            // A datetime column holds a timestamp with time zone in UTC when
            // stride wrote one there: canonical text follows the kind read.
            return match (*r, kind) {
                (Reading::Datetime | Reading::TimestampUtc, Kind::TimestampTz) => {
                    Reading::TimestampUtc
                }
                (Reading::Datetime | Reading::TimestampUtc, Kind::Timestamp) => Reading::Datetime,
                (r, _) => r,
            };
        }
        let ty = column.type_info().name().to_ascii_uppercase();
        match kind {
            Kind::Bool if ty == "BIT" => Reading::BitBool,
            Kind::Bool => Reading::Bool,
            Kind::Int if ty == "YEAR" => Reading::Year,
            Kind::Float => Reading::Float,
            Kind::Bytes => Reading::Bytes,
            Kind::Date => Reading::Date,
            Kind::Timestamp => Reading::Datetime,
            Kind::TimestampTz => Reading::TimestampUtc,
            Kind::Time => Reading::Time,
            _ => Reading::AsIs,
        }
    }
}

/// A MySQL database written by a run.
pub struct Target {
    server: Server,
    pool: MySqlPool,
    encryption: Channel,
    max_allowed_packet: u64,
    version: String,
    /// The keys `describe` found, by table, for upserts.
    described: Mutex<HashMap<String, dialect::Keys>>,
}

impl Target {
    pub async fn open(url: &DbUrl, connections: u32) -> Result<Target> {
        let server = Server::new(Side::Target, url)?;
        let mut conn = server.connect(true).await?;
        let encryption = server.channel(&mut conn).await?;
        let facts = texts(&mut conn, "SELECT @@max_allowed_packet, VERSION()").await?;
        let row = facts.into_iter().next().unwrap_or_default();
        let max_allowed_packet = row
            .first()
            .and_then(|v| v.as_deref()?.parse().ok())
            .unwrap_or(4 << 20);
        let version = row.get(1).cloned().flatten().unwrap_or_default();
        conn.close().await.ok();
        let pool = server.pool(connections + 2);
        Ok(Target {
            server,
            pool,
            encryption,
            max_allowed_packet,
            version,
            described: Mutex::new(HashMap::new()),
        })
    }

    pub fn place(&self) -> String {
        self.server.place.clone()
    }

    pub fn encryption(&self) -> Channel {
        self.encryption.clone()
    }

    /// A table's columns; a table that is not InnoDB is refused by name.
    pub async fn describe(&self, table: &QualifiedName) -> Result<Option<Table>> {
        let mut conn = self.pool.acquire().await?;
        let engine = texts(&mut conn, &dialect::engine_sql(table)).await?;
        let Some(found) = describe_table(&mut conn, table).await? else {
            return Ok(None);
        };
        if let Some(e) = engine
            .first()
            .and_then(|r| r[0].as_deref())
            .and_then(|e| dialect::engine_refusal(&table.to_string(), e))
        {
            return Err(JobError::new(format!("target.table: {e}")).into());
        }
        let (out, _, keys) = found;
        self.described
            .lock()
            .expect("never poisoned")
            .insert(dialect::table(table), keys);
        Ok(Some(out))
    }

    /// Why an upsert on `key` into `table` would not do what it says:
    /// `ON DUPLICATE KEY` fires on every unique key of the table.
    pub fn upsert_refusal(&self, table: &str, key: &[String]) -> Option<String> {
        let described = self.described.lock().expect("never poisoned");
        let keys = described.get(table)?;
        let mut wanted = key.to_vec();
        wanted.sort();
        let others: Vec<String> = std::iter::once(&keys.primary)
            .chain(&keys.unique)
            .filter(|k| !k.is_empty())
            .filter(|k| {
                let mut k = (*k).clone();
                k.sort();
                k != wanted
            })
            .map(|k| format!("({})", k.join(", ")))
            .chain(keys.prefix.iter().map(|p| format!("index {p} (a prefix)")))
            .collect();
        (!others.is_empty()).then(|| {
            format!(
                "target.key: {table} has other unique keys, {}, and MySQL's ON DUPLICATE KEY would update rows matched by them too (expected a table whose only unique key is ({}))",
                others.join(", "),
                key.join(", ")
            )
        })
    }

    pub fn create_sql(
        &self,
        table: &str,
        columns: &[(String, String, bool)],
        key: &[String],
    ) -> String {
        dialect::create_table_sql(table, columns, key, dialect::exact_collation(&self.version))
    }

    pub async fn has_rows(&self, table: &str) -> Result<bool> {
        let mut conn = self.pool.acquire().await?;
        let rows = texts(&mut conn, &format!("SELECT EXISTS (SELECT 1 FROM {table})")).await?;
        Ok(rows.first().and_then(|r| r[0].as_deref()) == Some("1"))
    }

    /// Statements in one transaction (DDL among them commits implicitly: see
    /// the module's documentation).
    pub async fn transaction(&self, statements: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for sql in statements {
            sqlx::raw_sql(AssertSqlSafe(sql.clone()))
                .execute(&mut *tx)
                .await
                .with_context(|| format!("running {sql}"))?;
        }
        tx.commit().await.context("committing")?;
        Ok(())
    }

    pub async fn ensure_checkpoints(&self, checkpoints: &QualifiedName) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        sqlx::raw_sql(AssertSqlSafe(dialect::checkpoint_table_sql(
            &dialect::table(checkpoints),
        )))
        .execute(&mut *conn)
        .await
        .context("creating the checkpoint table")?;
        Ok(())
    }

    pub async fn recorded(
        &self,
        checkpoints: &QualifiedName,
        fingerprint: &str,
    ) -> Result<Recorded> {
        let mut conn = self.pool.acquire().await?;
        if texts(&mut conn, &dialect::engine_sql(checkpoints))
            .await?
            .is_empty()
        {
            return Ok(Recorded::default());
        }
        let rows = texts(
            &mut conn,
            &dialect::recorded_sql(&dialect::table(checkpoints), fingerprint),
        )
        .await
        .context("reading the checkpoint table")?;
        let int = |v: &Option<String>| v.as_deref().and_then(|v| v.parse::<i64>().ok());
        Ok(Recorded::from_rows(
            rows.iter()
                .map(|r| {
                    (
                        int(&r[0]).unwrap_or(0),
                        int(&r[1]),
                        int(&r[2]),
                        int(&r[3]),
                        int(&r[4]),
                        int(&r[5]),
                        int(&r[6]) == Some(1),
                        r[7].clone().unwrap_or_default(),
                    )
                })
                .collect(),
        ))
    }

    /// Writes a partition in one InnoDB transaction with its checkpoint row:
    /// multi-row INSERTs cut in bytes under `max_allowed_packet`.
    pub async fn write(
        &self,
        spec: &WriteSpec,
        mut rows: mpsc::Receiver<Batch>,
    ) -> Result<(u64, u64)> {
        let budget = dialect::insert_budget_bytes(self.max_allowed_packet);
        let (head, tail) = dialect::insert_parts(&spec.table, &spec.columns, spec.upsert.as_ref());
        let fixed = head.len() + tail.len();
        // Dropped unfinished (a failure, a stall, Ctrl-C), the transaction
        // rolls back.
        let mut tx = self
            .pool
            .begin()
            .await
            .context("taking a target connection")?;
        let (mut total, mut bytes) = (0u64, 0u64);
        loop {
            let Some(batch) = rows.recv().await else {
                anyhow::bail!("the source stopped before its last row");
            };
            total += batch.rows() as u64;
            bytes += batch.bytes;
            let mut values = Vec::with_capacity(batch.rows());
            for r in 0..batch.rows() {
                let literals = batch
                    .row(r)
                    .enumerate()
                    .map(|(c, v)| {
                        dialect::literal(spec.source_kinds[c], &spec.target_declared[c], v)
                            .map_err(|e| anyhow::anyhow!("column {}: {e}", spec.columns[c]))
                    })
                    .collect::<Result<Vec<_>>>()?;
                values.push(dialect::row_sql(&literals));
            }
            let sizes: Vec<usize> = values.iter().map(String::len).collect();
            for range in
                dialect::cut_inserts(budget, fixed, &sizes).map_err(|e| anyhow::anyhow!(e))?
            {
                sqlx::raw_sql(AssertSqlSafe(dialect::insert_sql(
                    &head,
                    &values[range],
                    &tail,
                )))
                .execute(&mut *tx)
                .await
                .with_context(|| format!("inserting into {}", spec.table))?;
            }
            if batch.end {
                break;
            }
        }
        if let Some(cp) = &spec.checkpoint {
            sqlx::raw_sql(AssertSqlSafe(dialect::record_partition_sql(
                cp,
                &spec.table,
                total,
                bytes,
            )))
            .execute(&mut *tx)
            .await
            .context("recording the partition in the checkpoint table")?;
        }
        tx.commit().await.context("committing the partition")?;
        Ok((total, bytes))
    }

    /// A connection reading the target as it is now (for verify).
    pub async fn reader(&self, table: &QualifiedName) -> Result<Reader> {
        let mut conn = self.server.connect(false).await?;
        // Read as its own columns say (a float column is read as a float).
        let readings = describe_table(&mut conn, table)
            .await?
            .map(|(_, r, _)| r)
            .unwrap_or_default();
        Ok(Reader {
            conn: Some(conn),
            readings,
            zero_dates: ZeroDates::Refuse,
            nulled: Arc::new(AtomicU64::new(0)),
        })
    }
}
