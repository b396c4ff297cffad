//! SQLite, as a source and as a target: a file, opened with the bundled
//! library (no system library needed).
//!
//! - One moment of the source: the readers' read transactions are opened
//!   together while one more connection holds SQLite's write lock
//!   (`BEGIN IMMEDIATE`), so no commit can fall between them; then the lock is
//!   let go. A file opened `immutable=1` cannot change, so it needs no lock. A
//!   file stride may not lock (`mode=ro`) is read by one reader, one partition
//!   after another, in one read transaction.
//! - One writer at a time (SQLite has one): partitions still read ahead in
//!   parallel into bounded queues, then take the target connection in turn.
//!   Each partition is one transaction with its checkpoint row in the same file.
//! - Writes are multi-row INSERTs sized to SQLite's parameter limit, with
//!   `synchronous = NORMAL`: a crash of stride loses nothing committed.

pub mod dialect;

use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use sqlx::sqlite::{SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteSynchronous};
use sqlx::{Arguments, AssertSqlSafe, ConnectOptions, Connection, Row, TypeInfo, ValueRef};
use tokio::sync::{mpsc, MappedMutexGuard, Mutex, MutexGuard};

use crate::engine::{
    bytes_text, float_text, hex_bytes, Batch, Column, Kind, Side, Table, BATCH_ROWS,
};
use crate::error::JobError;
use crate::job::{DbUrl, Job, Relation};
use crate::partition::KeyType;
use crate::sql::{quote_ident, QualifiedName};

use dialect::Bind;

/// URL parameters stride reads (as sqlx spells them).
const PARAMETERS: &[&str] = &["mode", "immutable"];

/// A file and its parameters, from a URL that [`check_url`] accepted.
struct FileUrl {
    path: PathBuf,
    mode: Option<String>,
    immutable: bool,
}

fn file_url(key: &str, url: &DbUrl) -> Result<FileUrl, JobError> {
    let text = url.expose();
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

/// Checks a `sqlite:` URL: a file, and parameters stride knows.
pub fn check_url(key: &str, url: DbUrl) -> Result<DbUrl, JobError> {
    file_url(key, &url)?;
    Ok(url)
}

/// What SQLite lacks of what a job asks, by key.
pub fn refusals(job: &Job, side: Side) -> Vec<String> {
    let mut out = Vec::new();
    if side == Side::Source {
        if job.source.sample.is_some() {
            out.push("source.sample: SQLite has no TABLESAMPLE (expected `limit` or `where` to take a slice)".to_string());
        }
        if let Relation::Table(name) = &job.source.relation {
            if let Some(e) = schema_refusal("source.table", name) {
                out.push(e);
            }
        }
    } else if let Some(e) = schema_refusal("target.table", &job.target.table) {
        out.push(e);
    }
    out
}

fn schema_refusal(key: &str, name: &QualifiedName) -> Option<String> {
    match name.schema.as_deref() {
        None | Some("main") => None,
        Some(other) => Some(format!(
            "{key}: SQLite has no schema \"{other}\" (expected {0} or main.{0})",
            quote_ident(&name.name).trim_matches('"')
        )),
    }
}

async fn connect(options: &SqliteConnectOptions, what: &str) -> Result<SqliteConnection> {
    SqliteConnection::connect_with(options)
        .await
        .with_context(|| format!("opening {what}"))
}

fn options(
    key: &str,
    url: &DbUrl,
    create: bool,
) -> Result<(FileUrl, SqliteConnectOptions), JobError> {
    let file = file_url(key, url)?;
    let read_only = file.mode.as_deref() == Some("ro");
    let options = SqliteConnectOptions::from_str("sqlite://")
        .map_err(|e| JobError::new(format!("{key}: {e}")))?
        .filename(&file.path)
        .read_only(read_only)
        .immutable(file.immutable)
        .create_if_missing(create && !read_only && file.mode.as_deref() != Some("rw"))
        .busy_timeout(Duration::from_secs(60))
        .synchronous(SqliteSynchronous::Normal)
        // A long partition's read is not a slow statement to warn about.
        .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(1));
    Ok((file, options))
}

/// A SQLite file read by a run.
pub struct Source {
    options: SqliteConnectOptions,
    file: FileUrl,
    conn: SqliteConnection,
}

impl Source {
    pub async fn open(url: &DbUrl) -> Result<Source> {
        let (file, options) = options("source.url", url, false)?;
        if !file.path.exists() {
            return Err(JobError::new(format!(
                "source.url: the SQLite file {} does not exist",
                file.path.display()
            ))
            .into());
        }
        let conn = connect(
            &options,
            &format!("the source file {}", file.path.display()),
        )
        .await?;
        Ok(Source {
            options,
            file,
            conn,
        })
    }

    pub fn place(&self) -> String {
        self.file.path.display().to_string()
    }

    pub async fn describe(&mut self, job: &Job) -> Result<Table> {
        match &job.source.relation {
            Relation::Table(name) => describe_table(&mut self.conn, name).await?.ok_or_else(|| {
                JobError::new(format!(
                    "source.table: table {} does not exist in {} (expected an existing table or view)",
                    name.name,
                    self.place()
                ))
                .into()
            }),
            Relation::Query(query) => {
                // A temporary view names the query's columns and their declared
                // types (temp objects are writable even in a read-only file).
                let probe = quote_ident("stride_query_probe");
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE TEMP VIEW {probe} AS {query}\n")))
                    .execute(&mut self.conn)
                    .await
                    .map_err(|e| JobError::new(format!("source.query: the query does not run: {e}")))?;
                let name = QualifiedName {
                    schema: None,
                    name: "stride_query_probe".into(),
                };
                let table = describe_table(&mut self.conn, &name).await;
                sqlx::raw_sql(AssertSqlSafe(format!("DROP VIEW {probe}")))
                    .execute(&mut self.conn)
                    .await?;
                Ok(table?.unwrap_or_default())
            }
        }
    }

    /// What `stride init` needs of a table; `None` if there is none of that name.
    /// Candidates: the INTEGER PRIMARY KEY, then indexed integer, date and
    /// timestamp columns, then the rowid (every ordinary table has one).
    pub async fn init_facts(
        &mut self,
        table: &QualifiedName,
    ) -> Result<Option<crate::init::TableFacts>> {
        let Some(described) = describe_table(&mut self.conn, table).await? else {
            return Ok(None);
        };
        let t = dialect::table(table);
        let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {t}")))
            .fetch_one(&mut self.conn)
            .await
            .with_context(|| format!("counting the rows of {}", table.name))?;
        // dbstat is compiled into the bundled library; 0 where it is not.
        let bytes: i64 =
            sqlx::query_scalar("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = ?1")
                .bind(&table.name)
                .fetch_one(&mut self.conn)
                .await
                .unwrap_or(0);
        let indexed: Vec<(String, bool)> = sqlx::query_as(
            "SELECT ii.name, il.\"unique\" FROM pragma_index_list(?1) il, pragma_index_info(il.name) ii WHERE ii.seqno = 0 ORDER BY il.origin = 'pk' DESC, il.\"unique\" DESC",
        )
        .bind(&table.name)
        .fetch_all(&mut self.conn)
        .await
        .with_context(|| format!("reading the indexes of {}", table.name))?;
        let mut candidates = Vec::new();
        let mut add = |name: &str, primary: bool, unique: bool| {
            let Some(c) = described.columns.iter().find(|c| c.name == name) else {
                return;
            };
            if candidates
                .iter()
                .any(|k: &crate::init::Candidate| k.column == name)
            {
                return;
            }
            if let Some(key_type) = c.kind.key_type() {
                candidates.push(crate::init::Candidate {
                    column: c.name.clone(),
                    type_name: c.declared.clone(),
                    key_type,
                    primary,
                    unique,
                });
            }
        };
        if let [pk] = described.primary_key.as_slice() {
            add(pk, true, true);
        }
        for (name, unique) in &indexed {
            add(name, false, *unique);
        }
        let is_table: Option<String> =
            sqlx::query_scalar("SELECT type FROM sqlite_schema WHERE name = ?1 AND type = 'table'")
                .bind(&table.name)
                .fetch_optional(&mut self.conn)
                .await?;
        if candidates.is_empty() && is_table.is_some() {
            candidates.push(crate::init::Candidate {
                column: "rowid".into(),
                type_name: "the rowid".into(),
                key_type: KeyType::Int8,
                primary: false,
                unique: true,
            });
        }
        Ok(Some(crate::init::TableFacts {
            table: table.clone(),
            kind: if is_table.is_some() { 'r' } else { 'v' },
            rows,
            bytes,
            candidates,
            distribution: None,
        }))
    }

    /// The rows `select` returns (counted: SQLite keeps no estimate).
    pub async fn count(&mut self, select: &str) -> Result<i64> {
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM ({select})")))
            .fetch_one(&mut self.conn)
            .await
            .context("counting the source's rows")
    }

    /// The file's tables (not SQLite's own, nor views), as `("main", name)`.
    pub async fn tables(&mut self) -> Result<(Vec<(String, String)>, String)> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        )
        .fetch_all(&mut self.conn)
        .await
        .context("listing the source file's tables")?;
        Ok((
            names.into_iter().map(|n| ("main".to_string(), n)).collect(),
            "main".to_string(),
        ))
    }

    /// Readers in one moment of the file (see the module's documentation).
    pub async fn snapshot(&mut self, readers: usize) -> Result<Vec<Reader>> {
        let readers = readers.max(1);
        let mut lock = None;
        if !self.file.immutable {
            match sqlx::raw_sql("BEGIN IMMEDIATE")
                .execute(&mut self.conn)
                .await
            {
                Ok(_) => lock = Some(()),
                // A file stride may not lock: one reader.
                Err(_) => return Ok(vec![self.reader().await?]),
            }
        }
        let mut out = Vec::with_capacity(readers);
        let opened = async {
            for _ in 0..readers {
                out.push(self.reader().await?);
            }
            anyhow::Ok(())
        }
        .await;
        if lock.is_some() {
            sqlx::raw_sql("ROLLBACK")
                .execute(&mut self.conn)
                .await
                .context("letting go of the source file's write lock")?;
        }
        opened?;
        Ok(out)
    }

    /// A connection in a read transaction that has read (SQLite starts the
    /// transaction's snapshot at its first read).
    async fn reader(&self) -> Result<Reader> {
        let mut conn = connect(&self.options, "a reader of the source file").await?;
        sqlx::raw_sql("BEGIN; SELECT count(*) FROM sqlite_schema")
            .execute(&mut conn)
            .await
            .context("opening a read transaction on the source file")?;
        Ok(Reader { conn })
    }
}

/// The columns, primary key and unique keys of a table (or view); `None`
/// when there is none of that name.
async fn describe_table(
    conn: &mut SqliteConnection,
    name: &QualifiedName,
) -> Result<Option<Table>> {
    let rows: Vec<(String, String, bool, i64, i64)> = sqlx::query_as(
        "SELECT name, type, \"notnull\", pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid",
    )
    .bind(&name.name)
    .fetch_all(&mut *conn)
    .await
    .with_context(|| format!("reading the columns of {}", name.name))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut key: Vec<(i64, String)> = rows
        .iter()
        .filter(|r| r.3 > 0)
        .map(|r| (r.3, r.0.clone()))
        .collect();
    key.sort();
    let columns = rows
        .into_iter()
        .filter(|r| r.4 != 1)
        .map(|(name, declared, not_null, _, hidden)| Column {
            kind: dialect::kind_of(&declared),
            name,
            declared,
            not_null,
            generated: hidden >= 2,
        })
        .collect();
    let indexes: Vec<(String, bool)> =
        sqlx::query_as("SELECT name, \"unique\" AND NOT partial FROM pragma_index_list(?1)")
            .bind(&name.name)
            .fetch_all(&mut *conn)
            .await
            .with_context(|| format!("reading the indexes of {}", name.name))?;
    let mut unique_keys = Vec::new();
    for (index, unique) in indexes {
        if !unique {
            continue;
        }
        let cols: Vec<Option<String>> =
            sqlx::query_scalar("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                .bind(&index)
                .fetch_all(&mut *conn)
                .await?;
        if let Some(cols) = cols.into_iter().collect::<Option<Vec<_>>>() {
            unique_keys.push(cols);
        }
    }
    let primary_key: Vec<String> = key.into_iter().map(|(_, c)| c).collect();
    if !primary_key.is_empty() && !unique_keys.contains(&primary_key) {
        unique_keys.push(primary_key.clone());
    }
    Ok(Some(Table {
        columns,
        primary_key,
        unique_keys,
    }))
}

/// One connection reading in the run's moment of the file.
pub struct Reader {
    conn: SqliteConnection,
}

impl Reader {
    /// The key column's smallest and largest value, in its key encoding.
    pub async fn bounds(
        &mut self,
        job: &Job,
        column: &str,
        key: KeyType,
    ) -> Result<Option<(i64, i64)>> {
        let sql = dialect::bounds_sql(job, column);
        let row = sqlx::query(AssertSqlSafe(sql))
            .fetch_one(&mut self.conn)
            .await
            .with_context(|| format!("reading min() and max() of {column} from the source"))?;
        let value = |i: usize| -> Result<Option<i64>> {
            let Some(text) = value_text(&row, i, Kind::Text)? else {
                return Ok(None);
            };
            key.parse_bound(&text).map(Some).map_err(|e| {
                JobError::new(format!(
                    "partition.column: {column} holds {text:?}, which is not a {} ({e})",
                    key.sql_name()
                ))
                .into()
            })
        };
        Ok(match (value(0)?, value(1)?) {
            (Some(lo), Some(hi)) => Some((lo, hi)),
            _ => None,
        })
    }

    pub async fn read(
        &mut self,
        select: &str,
        kinds: &[Kind],
        rows: &mpsc::Sender<Batch>,
    ) -> Result<()> {
        let mut stream = sqlx::query(AssertSqlSafe(select)).fetch(&mut self.conn);
        let mut batch = Batch::new(kinds.len());
        while let Some(row) = stream
            .try_next()
            .await
            .context("reading rows from the source file")?
        {
            for (i, kind) in kinds.iter().enumerate() {
                batch.push(value_text(&row, i, *kind)?);
            }
            if batch.rows() >= BATCH_ROWS {
                let full = std::mem::replace(&mut batch, Batch::new(kinds.len()));
                if rows.send(full).await.is_err() {
                    return Ok(());
                }
            }
        }
        batch.end = true;
        let _ = rows.send(batch).await;
        Ok(())
    }
}

/// A value in canonical text, by what SQLite holds in this row (any column
/// can hold any storage class), read as the column's `kind`.
fn value_text(row: &sqlx::sqlite::SqliteRow, i: usize, kind: Kind) -> Result<Option<String>> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(None);
    }
    let class = raw.type_info().name().to_string();
    Ok(Some(match class.as_str() {
        "INTEGER" => {
            let v: i64 = row.try_get_unchecked(i)?;
            match (kind, v) {
                (Kind::Bool, 0) => "f".into(),
                (Kind::Bool, 1) => "t".into(),
                _ => v.to_string(),
            }
        }
        "REAL" => float_text(row.try_get_unchecked::<f64, _>(i)?),
        "BLOB" => bytes_text(&row.try_get_unchecked::<Vec<u8>, _>(i)?),
        _ => row.try_get_unchecked::<String, _>(i)?,
    }))
}

/// A SQLite file written by a run: one connection, taken by one partition at a time.
pub struct Target {
    options: SqliteConnectOptions,
    file: FileUrl,
    /// Opened at the first use that needs the file: a missing file (and its
    /// missing directories) is created only once the checks have passed.
    conn: Mutex<Option<SqliteConnection>>,
}

impl Target {
    pub async fn open(url: &DbUrl) -> Result<Target> {
        let (file, options) = options("target.url", url, true)?;
        if file.mode.as_deref() == Some("ro") || file.immutable {
            return Err(JobError::new(
                "target.url: a target file must be writable (expected no mode=ro or immutable=1)",
            )
            .into());
        }
        let target = Target {
            options,
            file,
            conn: Mutex::new(None),
        };
        if target.file.path.exists() {
            drop(target.connection().await?);
        }
        Ok(target)
    }

    /// The writer's connection, opened (and the file created) on first use.
    async fn connection(&self) -> Result<MappedMutexGuard<'_, SqliteConnection>> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            if let Some(dir) = self
                .file
                .path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the directory {}", dir.display()))?;
            }
            let what = format!("the target file {}", self.file.path.display());
            *conn = Some(connect(&self.options, &what).await?);
        }
        Ok(MutexGuard::map(conn, |c| {
            c.as_mut().expect("opened just above")
        }))
    }

    pub fn place(&self) -> String {
        self.file.path.display().to_string()
    }

    pub async fn describe(&self, table: &QualifiedName) -> Result<Option<Table>> {
        if !self.file.path.exists() {
            return Ok(None);
        }
        describe_table(&mut *self.connection().await?, table).await
    }

    pub async fn has_rows(&self, table: &str) -> Result<bool> {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {table})");
        sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&mut *self.connection().await?)
            .await
            .with_context(|| format!("looking for rows in {table}"))
    }

    /// Statements in one transaction.
    pub async fn transaction(&self, statements: &[String]) -> Result<()> {
        let mut conn = self.connection().await?;
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let result = async {
            for sql in statements {
                sqlx::raw_sql(AssertSqlSafe(sql.clone()))
                    .execute(&mut *conn)
                    .await
                    .with_context(|| format!("running {sql}"))?;
            }
            anyhow::Ok(())
        }
        .await;
        finish(&mut conn, result).await
    }

    /// The run recorded for `fingerprint`: bounds, partitions, whether it
    /// finished, and its committed partitions (index, rows, bytes).
    pub async fn recorded(
        &self,
        checkpoints: &QualifiedName,
        fingerprint: &str,
    ) -> Result<crate::engine::Recorded> {
        let checkpoints = dialect::table(checkpoints);
        let mut conn = self.connection().await?;
        sqlx::raw_sql(AssertSqlSafe(dialect::checkpoint_table_sql(&checkpoints)))
            .execute(&mut *conn)
            .await
            .context("creating the checkpoint table")?;
        let rows: Vec<crate::engine::CheckpointRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT partition, lower_bound, upper_bound, partitions, rows, bytes, finished FROM {checkpoints} WHERE fingerprint = ?1 ORDER BY partition"
        )))
        .bind(fingerprint)
        .fetch_all(&mut *conn)
        .await
        .context("reading the checkpoint table")?;
        Ok(crate::engine::Recorded::from_rows(rows))
    }

    pub async fn write(
        &self,
        spec: &crate::engine::WriteSpec,
        rows: &mut mpsc::Receiver<Batch>,
    ) -> Result<(u64, u64)> {
        let binds: Vec<Bind> = spec
            .source_kinds
            .iter()
            .zip(&spec.target_declared)
            .map(|(k, d)| dialect::bind(*k, d).map_err(|e| anyhow::anyhow!(e)))
            .collect::<Result<_>>()?;
        let per_insert = dialect::rows_per_insert(spec.columns.len(), spec.batch_size);
        // Read ahead until the first batch, then take the file.
        let first = rows.recv().await;
        let mut conn = self.connection().await?;
        // An attempt abandoned midway (a stall, Ctrl-C) left its transaction open.
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let result = async {
            let (mut total, mut bytes) = (0u64, 0u64);
            let mut next = first;
            let mut pending: Vec<Option<String>> = Vec::new();
            let width = spec.columns.len();
            loop {
                let done = next.as_ref().is_none_or(|b| b.end);
                anyhow::ensure!(next.is_some(), "the source stopped before its last row");
                if let Some(batch) = next.take() {
                    total += batch.rows() as u64;
                    bytes += batch.bytes;
                    pending.extend(batch.values);
                }
                while pending.len() >= per_insert * width || (done && !pending.is_empty()) {
                    let take = (pending.len() / width).min(per_insert);
                    let chunk: Vec<Option<String>> = pending.drain(..take * width).collect();
                    let sql =
                        dialect::insert_sql(&spec.table, &spec.columns, take, spec.upsert.as_ref());
                    let mut args = SqliteArguments::default();
                    for (i, value) in chunk.into_iter().enumerate() {
                        bind_value(&mut args, binds[i % width], value)
                            .with_context(|| format!("column {}", spec.columns[i % width]))?;
                    }
                    sqlx::query_with(AssertSqlSafe(sql), args)
                        .execute(&mut *conn)
                        .await
                        .with_context(|| format!("inserting into {}", spec.table))?;
                }
                if done {
                    break;
                }
                next = rows.recv().await;
            }
            if let Some(cp) = &spec.checkpoint {
                sqlx::raw_sql(AssertSqlSafe(crate::engine::record_partition_sql(
                    cp,
                    &spec.table,
                    total,
                    bytes,
                )))
                .execute(&mut *conn)
                .await
                .context("recording the partition in the checkpoint table")?;
            }
            anyhow::Ok((total, bytes))
        }
        .await;
        let counts = match &result {
            Ok(c) => Some(*c),
            Err(_) => None,
        };
        finish(&mut conn, result.map(|_| ())).await?;
        Ok(counts.expect("an error returned above"))
    }

    /// A connection reading the target as it is now (for verify).
    pub async fn reader(&self) -> Result<Reader> {
        let conn = connect(&self.options, "a reader of the target file").await?;
        Ok(Reader { conn })
    }
}

/// Commits on success, rolls back on failure.
async fn finish(conn: &mut SqliteConnection, result: Result<()>) -> Result<()> {
    match result {
        Ok(()) => {
            sqlx::raw_sql("COMMIT")
                .execute(&mut *conn)
                .await
                .context("committing")?;
            Ok(())
        }
        Err(e) => {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

/// Binds a canonical value as the column's [`Bind`] says.
fn bind_value(args: &mut SqliteArguments, bind: Bind, value: Option<String>) -> Result<()> {
    let Some(v) = value else {
        args.add(Option::<String>::None)
            .map_err(anyhow::Error::msg)?;
        return Ok(());
    };
    let added = match bind {
        Bind::Integer => {
            let n: i64 = match v.as_str() {
                "t" | "true" => 1,
                "f" | "false" => 0,
                other => other
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{other:?} is not an integer"))?,
            };
            args.add(n)
        }
        Bind::Real => match v.as_str() {
            "NaN" => args.add(v),
            "Infinity" => args.add(f64::INFINITY),
            "-Infinity" => args.add(f64::NEG_INFINITY),
            other => args.add(
                other
                    .parse::<f64>()
                    .map_err(|_| anyhow::anyhow!("{other:?} is not a number"))?,
            ),
        },
        Bind::Blob => match hex_bytes(&v) {
            Some(bytes) => args.add(bytes),
            None => args.add(v),
        },
        Bind::Text => args.add(v),
    };
    added.map_err(anyhow::Error::msg)
}
