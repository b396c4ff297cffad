//! SQLite, as a source and as a target: a file, opened with the bundled
//! library (no system library needed).
//!
//! - One moment of the source: the readers' read transactions are opened
//!   together while one more connection holds SQLite's write lock
//!   (`BEGIN IMMEDIATE`), so no commit can fall between them; then the lock is
//!   let go. A file opened `immutable=1` cannot change, so it needs no lock
//!   (`mode=ro` still takes it: SQLite allows it). Where SQLite refuses the
//!   lock, one reader reads every partition, one after another, in one read
//!   transaction.
//! - One writer at a time (SQLite has one): partitions still read ahead in
//!   parallel into bounded queues, then take the target connection in turn.
//!   Each partition is one transaction with its checkpoint row in the same file.
//! - Writes are multi-row INSERTs sized to SQLite's parameter limit, with
//!   `synchronous = NORMAL`: a crash of stride loses nothing committed.
//!
//! SQLite is called through rusqlite, on blocking threads: a statement's rows
//! are read in place where it runs and sent on in batches. (sqlx's SQLite
//! driver copies every value and hands each row to another thread: 3x the
//! time of a `sqlite3 -csv | psql` pipe, most of it in thread wake-ups.)

pub mod dialect;
pub mod url;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc;

use crate::engine::{
    bytes_text, float_text, hex_bytes, Batch, Column, Kind, Side, Table, BATCH_ROWS,
};
use crate::error::JobError;
use crate::job::{DbUrl, Job, Relation};
use crate::partition::KeyType;
use crate::sql::{quote_ident, QualifiedName};

use dialect::Bind;
use url::FileUrl;

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

/// How to open more connections to a file.
#[derive(Clone, Debug)]
struct Opener {
    file: OpenedFile,
}

/// A file's path and how it is opened.
#[derive(Clone, Debug)]
struct OpenedFile {
    path: PathBuf,
    read_only: bool,
    immutable: bool,
    create: bool,
}

impl Opener {
    fn new(key: &str, url: &DbUrl, create: bool) -> Result<(Opener, FileUrl), JobError> {
        let file = url::file_url(key, url.expose())?;
        let read_only = file.mode.as_deref() == Some("ro");
        let opener = Opener {
            file: OpenedFile {
                path: file.path.clone(),
                read_only,
                immutable: file.immutable,
                create: create && !read_only && file.mode.as_deref() != Some("rw"),
            },
        };
        Ok((opener, file))
    }

    fn open(&self, what: &str) -> Result<Connection> {
        let f = &self.file;
        let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        flags |= if f.read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        if f.create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        // A URI, so `immutable` can be passed; the path's own `%`, `?` and `#`
        // are escaped so they stay part of it.
        let mut uri = String::from("file:");
        for c in f.path.to_string_lossy().chars() {
            match c {
                '%' => uri.push_str("%25"),
                '?' => uri.push_str("%3f"),
                '#' => uri.push_str("%23"),
                c => uri.push(c),
            }
        }
        if f.immutable {
            uri.push_str("?immutable=1");
        }
        let conn = Connection::open_with_flags(&uri, flags)
            .with_context(|| format!("opening {what} {}", f.path.display()))?;
        conn.busy_timeout(Duration::from_secs(60))?;
        if !f.read_only {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        Ok(conn)
    }
}

/// A connection shared between the async side and the blocking threads
/// that run its statements.
type Shared = Arc<Mutex<Connection>>;

/// Runs `f` on the connection on a blocking thread.
async fn on<T: Send + 'static>(
    conn: &Shared,
    f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
) -> Result<T> {
    let conn = Arc::clone(conn);
    tokio::task::spawn_blocking(move || {
        let mut conn = conn
            .lock()
            .map_err(|_| anyhow::anyhow!("a SQLite connection was lost to an earlier failure"))?;
        f(&mut conn)
    })
    .await
    .context("a SQLite task ended early")?
}

/// A SQLite file read by a run.
pub struct Source {
    opener: Opener,
    file: FileUrl,
    conn: Shared,
}

impl Source {
    pub async fn open(url: &DbUrl) -> Result<Source> {
        let (opener, file) = Opener::new("source.url", url, false)?;
        if !file.path.exists() {
            return Err(JobError::new(format!(
                "source.url: the SQLite file {} does not exist",
                file.path.display()
            ))
            .into());
        }
        let conn = opener.open("the source file")?;
        Ok(Source {
            opener,
            file,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub fn place(&self) -> String {
        self.file.path.display().to_string()
    }

    pub async fn describe(&mut self, job: &Job) -> Result<Table> {
        let place = self.place();
        match job.source.relation.clone() {
            Relation::Table(name) => {
                let found = on(&self.conn, move |c| describe_table(c, &name.name)).await?;
                found.ok_or_else(|| {
                    let Relation::Table(name) = &job.source.relation else {
                        unreachable!()
                    };
                    JobError::new(format!(
                        "source.table: table {} does not exist in {place} (expected an existing table or view)",
                        name.name
                    ))
                    .into()
                })
            }
            Relation::Query(query) => {
                on(&self.conn, move |c| {
                    // A temporary view names the query's columns and their declared
                    // types (temp objects are writable even in a read-only file).
                    let probe = quote_ident("stride_query_probe");
                    c.execute_batch(&format!("CREATE TEMP VIEW {probe} AS {query}\n"))
                        .map_err(|e| {
                            JobError::new(format!("source.query: the query does not run: {e}"))
                        })?;
                    let table = describe_table(c, "stride_query_probe");
                    c.execute_batch(&format!("DROP VIEW {probe}"))?;
                    Ok(table?.unwrap_or_default())
                })
                .await
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
        let table = table.clone();
        on(&self.conn, move |c| init_facts(c, &table)).await
    }

    /// Why this source cannot be read while `target` is written, if it
    /// cannot: the same file in a rollback journal, where the readers' locks
    /// would keep every partition's COMMIT waiting (WAL lets readers and the
    /// writer work at once).
    pub async fn conflict(&self, target: &Target) -> Result<Option<String>> {
        let same = match (
            std::fs::canonicalize(&self.file.path),
            std::fs::canonicalize(&target.file.path),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if !same {
            return Ok(None);
        }
        let mode: String = on(&self.conn, |c| {
            c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .context("reading the file's journal mode")
        })
        .await?;
        Ok((!mode.eq_ignore_ascii_case("wal")).then(|| {
            format!(
                "target.url: the source and the target are the same SQLite file, in journal mode {mode}: its readers would keep the copy's commits waiting (expected journal mode WAL: `sqlite3 {} 'PRAGMA journal_mode=WAL'`, or another target file)",
                crate::cli::shell_quote(&self.file.path.display().to_string())
            )
        }))
    }

    /// The rows `select` returns (counted: SQLite keeps no estimate).
    pub async fn count(&mut self, select: &str) -> Result<i64> {
        let sql = format!("SELECT count(*) FROM ({select})");
        on(&self.conn, move |c| {
            c.query_row(&sql, [], |r| r.get(0))
                .context("counting the source's rows")
        })
        .await
    }

    /// The file's tables (not SQLite's own, nor views), as `("main", name)`.
    pub async fn tables(&mut self) -> Result<(Vec<(String, String)>, String)> {
        on(&self.conn, |c| {
            let mut stmt = c.prepare(
                r"SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\' ORDER BY name",
            )?;
            let names = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .map(|n| n.map(|n| ("main".to_string(), n)))
                .collect::<rusqlite::Result<Vec<_>>>()
                .context("listing the source file's tables")?;
            Ok((names, "main".to_string()))
        })
        .await
    }

    /// Readers in one moment of the file (see the module's documentation).
    pub async fn snapshot(&mut self, readers: usize) -> Result<Vec<Reader>> {
        let readers = readers.max(1);
        let opener = self.opener.clone();
        let immutable = self.file.immutable;
        on(&self.conn, move |lock| {
            if !immutable && lock.execute_batch("BEGIN IMMEDIATE").is_err() {
                // SQLite refused the lock: one reader.
                return Ok(vec![reader(&opener)?]);
            }
            let opened = (0..readers)
                .map(|_| reader(&opener))
                .collect::<Result<Vec<_>>>();
            if !immutable {
                lock.execute_batch("ROLLBACK")
                    .context("letting go of the source file's write lock")?;
            }
            opened
        })
        .await
    }
}

/// A connection in a read transaction that has read (SQLite starts the
/// transaction's snapshot at its first read).
fn reader(opener: &Opener) -> Result<Reader> {
    let conn = opener.open("a reader of the source file")?;
    // A scan reads each page once: a small page cache each (SQLite's default
    // is 2 MiB a connection) keeps memory bounded with many readers.
    conn.pragma_update(None, "cache_size", -256)?;
    conn.execute_batch("BEGIN")?;
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .context("opening a read transaction on the source file")?;
    Ok(Reader {
        conn: Arc::new(Mutex::new(conn)),
    })
}

/// The columns, primary key and unique keys of a table (or view); `None`
/// when there is none of that name.
fn describe_table(conn: &Connection, name: &str) -> Result<Option<Table>> {
    let mut stmt = conn.prepare(
        "SELECT name, type, \"notnull\", pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid",
    )?;
    let rows = stmt
        .query_map([name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
        .with_context(|| format!("reading the columns of {name}"))?;
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
    let mut stmt =
        conn.prepare("SELECT name, \"unique\" AND NOT partial FROM pragma_index_list(?1)")?;
    let indexes = stmt
        .query_map([name], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
        .with_context(|| format!("reading the indexes of {name}"))?;
    let mut unique_keys = Vec::new();
    for (index, unique) in indexes {
        if !unique {
            continue;
        }
        let mut stmt = conn.prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?;
        let cols = stmt
            .query_map([&index], |r| r.get::<_, Option<String>>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
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

fn init_facts(conn: &Connection, table: &QualifiedName) -> Result<Option<crate::init::TableFacts>> {
    let Some(described) = describe_table(conn, &table.name)? else {
        return Ok(None);
    };
    let t = dialect::table(table);
    let rows: i64 = conn
        .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
        .with_context(|| format!("counting the rows of {}", table.name))?;
    // dbstat is compiled into the bundled library; 0 where it is not.
    let bytes: i64 = conn
        .query_row(
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = ?1",
            [&table.name],
            |r| r.get(0),
        )
        .unwrap_or(0);
    let mut stmt = conn.prepare(
        "SELECT ii.name, il.\"unique\" FROM pragma_index_list(?1) il, pragma_index_info(il.name) ii WHERE ii.seqno = 0 ORDER BY il.origin = 'pk' DESC, il.\"unique\" DESC",
    )?;
    let indexed = stmt
        .query_map([&table.name], |r| {
            Ok((r.get::<_, Option<String>>(0)?, r.get::<_, bool>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
        .with_context(|| format!("reading the indexes of {}", table.name))?;
    let mut candidates: Vec<crate::init::Candidate> = Vec::new();
    let mut add = |name: &str, primary: bool, unique: bool| {
        let Some(c) = described.columns.iter().find(|c| c.name == name) else {
            return;
        };
        if candidates.iter().any(|k| k.column == name) {
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
        if let Some(name) = name {
            add(name, false, *unique);
        }
    }
    let is_table: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = ?1 AND type = 'table')",
        [&table.name],
        |r| r.get(0),
    )?;
    if candidates.is_empty() && is_table {
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
        kind: if is_table { 'r' } else { 'v' },
        rows,
        bytes,
        candidates,
        distribution: None,
        file: true,
    }))
}

/// One connection reading in the run's moment of the file.
pub struct Reader {
    conn: Shared,
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
        let (lo, hi) = on(&self.conn, move |c| {
            c.query_row(&sql, [], |r| {
                Ok((r.get::<_, Value>(0)?, r.get::<_, Value>(1)?))
            })
            .context("reading min() and max() of the partition column from the source")
        })
        .await?;
        let (lo, hi) = (
            value_text(ValueRef::from(&lo), Kind::Text)?,
            value_text(ValueRef::from(&hi), Kind::Text)?,
        );
        let parse = |text: Option<String>| -> Result<Option<i64>> {
            let Some(text) = text else { return Ok(None) };
            key.parse_bound(&text).map(Some).map_err(|e| {
                JobError::new(format!(
                    "partition.column: {column} holds {text:?}, which is not a {} ({e})",
                    key.sql_name()
                ))
                .into()
            })
        };
        Ok(parse(lo)?.zip(parse(hi)?))
    }

    /// Reads the rows of `select` where the statement runs and sends them in
    /// batches: one hand-over per batch, not per row.
    pub async fn read(
        &mut self,
        select: &str,
        kinds: &[Kind],
        rows: &mpsc::Sender<Batch>,
    ) -> Result<()> {
        let (select, kinds, rows) = (select.to_string(), kinds.to_vec(), rows.clone());
        on(&self.conn, move |c| {
            let mut stmt = c.prepare(&select)?;
            let mut found = stmt.query([])?;
            let mut batch = Batch::new(kinds.len());
            let mut scratch = String::new();
            while let Some(row) = found.next().context("reading rows from the source file")? {
                for (i, kind) in kinds.iter().enumerate() {
                    push_value(&mut batch, &mut scratch, row.get_ref(i)?, *kind).with_context(
                        || format!("column {}", row.as_ref().column_name(i).unwrap_or("?")),
                    )?;
                }
                if batch.rows() >= BATCH_ROWS {
                    let full = std::mem::replace(&mut batch, Batch::new(kinds.len()));
                    if rows.blocking_send(full).is_err() {
                        return Ok(());
                    }
                }
            }
            batch.end = true;
            let _ = rows.blocking_send(batch);
            Ok(())
        })
        .await
    }
}

/// A value in canonical text, by what SQLite holds in this row (any column
/// can hold any storage class), read as the column's `kind`. Text that is not
/// UTF-8 is an error: it is never changed to fit.
fn value_text(value: ValueRef<'_>, kind: Kind) -> Result<Option<String>> {
    let mut batch = Batch::new(1);
    push_value(&mut batch, &mut String::new(), value, kind)?;
    Ok(batch.value(0).map(str::to_string))
}

/// [`value_text`] into a batch, through `scratch` (no allocation per value).
fn push_value(
    batch: &mut Batch,
    scratch: &mut String,
    value: ValueRef<'_>,
    kind: Kind,
) -> Result<()> {
    use std::fmt::Write as _;
    scratch.clear();
    match value {
        ValueRef::Null => {
            batch.push(None);
            return Ok(());
        }
        ValueRef::Integer(v) => match (kind, v) {
            (Kind::Bool, 0) => scratch.push('f'),
            (Kind::Bool, 1) => scratch.push('t'),
            _ => {
                let _ = write!(scratch, "{v}");
            }
        },
        ValueRef::Real(f) => scratch.push_str(&float_text(f)),
        ValueRef::Blob(b) => scratch.push_str(&bytes_text(b)),
        ValueRef::Text(t) => {
            let text = std::str::from_utf8(t)
                .map_err(|e| anyhow::anyhow!("a text value is not UTF-8 ({e})"))?;
            batch.push(Some(text));
            return Ok(());
        }
    }
    batch.push(Some(scratch));
    Ok(())
}

/// A SQLite file written by a run: one connection, taken by one partition at a time.
pub struct Target {
    opener: Opener,
    file: FileUrl,
    /// Opened at the first use that needs the file: a missing file (and its
    /// missing directories) is created only once the checks have passed.
    conn: Mutex<Option<Shared>>,
}

impl Target {
    pub async fn open(url: &DbUrl) -> Result<Target> {
        let (opener, file) = Opener::new("target.url", url, true)?;
        if file.mode.as_deref() == Some("ro") || file.immutable {
            return Err(JobError::new(
                "target.url: a target file must be writable (expected no mode=ro or immutable=1)",
            )
            .into());
        }
        let target = Target {
            opener,
            file,
            conn: Mutex::new(None),
        };
        if target.file.path.exists() {
            target.connection()?;
        }
        Ok(target)
    }

    /// The writer's connection, opened (and the file created) on first use.
    fn connection(&self) -> Result<Shared> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| anyhow::anyhow!("the target file's connection was lost"))?;
        if let Some(c) = &*conn {
            return Ok(Arc::clone(c));
        }
        if let Some(dir) = self
            .file
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the directory {}", dir.display()))?;
        }
        let opened = Arc::new(Mutex::new(self.opener.open("the target file")?));
        *conn = Some(Arc::clone(&opened));
        Ok(opened)
    }

    pub fn place(&self) -> String {
        self.file.path.display().to_string()
    }

    pub async fn describe(&self, table: &QualifiedName) -> Result<Option<Table>> {
        if !self.file.path.exists() {
            return Ok(None);
        }
        let name = table.name.clone();
        on(&self.connection()?, move |c| describe_table(c, &name)).await
    }

    pub async fn has_rows(&self, table: &str) -> Result<bool> {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {table})");
        let table = table.to_string();
        on(&self.connection()?, move |c| {
            c.query_row(&sql, [], |r| r.get(0))
                .with_context(|| format!("looking for rows in {table}"))
        })
        .await
    }

    /// Statements in one transaction.
    pub async fn transaction(&self, statements: &[String]) -> Result<()> {
        let statements = statements.to_vec();
        on(&self.connection()?, move |c| {
            c.execute_batch("BEGIN IMMEDIATE")?;
            let result = statements.iter().try_for_each(|sql| {
                c.execute_batch(sql)
                    .with_context(|| format!("running {sql}"))
            });
            finish(c, result)
        })
        .await
    }

    pub async fn ensure_checkpoints(&self, checkpoints: &QualifiedName) -> Result<()> {
        let sql = dialect::checkpoint_table_sql(&dialect::table(checkpoints));
        on(&self.connection()?, move |c| {
            c.execute_batch(&sql)
                .context("creating the checkpoint table")
        })
        .await
    }

    /// The run recorded for `fingerprint`: bounds, partitions, whether it
    /// finished, and its committed partitions (index, rows, bytes).
    pub async fn recorded(
        &self,
        checkpoints: &QualifiedName,
        fingerprint: &str,
    ) -> Result<crate::engine::Recorded> {
        if !self.file.path.exists() {
            return Ok(crate::engine::Recorded::default());
        }
        let (name, checkpoints) = (checkpoints.name.clone(), dialect::table(checkpoints));
        let fingerprint = fingerprint.to_string();
        on(&self.connection()?, move |c| {
            let exists: bool = c.query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1)",
                [&name],
                |r| r.get(0),
            )?;
            if !exists {
                return Ok(crate::engine::Recorded::default());
            }
            let mut stmt = c.prepare(&format!(
                "SELECT partition, lower_bound, upper_bound, partitions, rows, bytes, finished, recorded_at FROM {checkpoints} WHERE fingerprint = ?1 ORDER BY partition"
            ))?;
            let rows = stmt
                .query_map([&fingerprint], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<crate::engine::CheckpointRow>>>()
                .context("reading the checkpoint table")?;
            Ok(crate::engine::Recorded::from_rows(rows))
        })
        .await
    }

    /// Writes a partition in one transaction with its checkpoint row. Reads
    /// ahead until the first batch arrives, then takes the file (one writer).
    pub async fn write(
        &self,
        spec: &crate::engine::WriteSpec,
        mut rows: mpsc::Receiver<Batch>,
    ) -> Result<(u64, u64)> {
        let binds: Vec<Bind> = spec
            .source_kinds
            .iter()
            .zip(&spec.target_declared)
            .map(|(k, d)| dialect::bind(*k, d).map_err(|e| anyhow::anyhow!(e)))
            .collect::<Result<_>>()?;
        let first = rows.recv().await;
        let spec = spec.clone();
        on(&self.connection()?, move |c| {
            // An attempt abandoned midway (a stall, Ctrl-C) may have left its
            // transaction open.
            if !c.is_autocommit() {
                let _ = c.execute_batch("ROLLBACK");
            }
            c.execute_batch("BEGIN IMMEDIATE")?;
            let result = insert_all(c, &spec, &binds, first, &mut rows);
            let counts = result.as_ref().ok().copied();
            finish(c, result.map(|_| ()))?;
            Ok(counts.expect("an error returned above"))
        })
        .await
    }

    /// A connection reading the target as it is now (for verify).
    pub async fn reader(&self) -> Result<Reader> {
        let conn = self.opener.open("a reader of the target file")?;
        Ok(Reader {
            conn: Arc::new(Mutex::new(conn)),
        })
    }
}

/// The partition's rows, in multi-row INSERTs of up to `batch_size` rows
/// (within SQLite's parameter limit), then its checkpoint row.
fn insert_all(
    c: &Connection,
    spec: &crate::engine::WriteSpec,
    binds: &[Bind],
    first: Option<Batch>,
    batches: &mut mpsc::Receiver<Batch>,
) -> Result<(u64, u64)> {
    let per_insert = dialect::rows_per_insert(spec.columns.len(), spec.batch_size);
    let insert = |rows| dialect::insert_sql(&spec.table, &spec.columns, rows, spec.upsert.as_ref());
    // The full-size statement, written once: only a batch's tail needs another.
    let full = insert(per_insert);
    let (mut total, mut bytes) = (0u64, 0u64);
    let mut next = first;
    loop {
        let Some(batch) = next.take() else {
            anyhow::bail!("the source stopped before its last row");
        };
        total += batch.rows() as u64;
        bytes += batch.bytes;
        let mut row = 0;
        while row < batch.rows() {
            let take = (batch.rows() - row).min(per_insert);
            let tail;
            let sql = if take == per_insert {
                &full
            } else {
                tail = insert(take);
                &tail
            };
            let mut stmt = c.prepare_cached(sql)?;
            let mut parameter = 1;
            for r in row..row + take {
                for (column, value) in batch.row(r).enumerate() {
                    let value = bind_value(binds[column], value)
                        .with_context(|| format!("column {}", spec.columns[column]))?;
                    stmt.raw_bind_parameter(parameter, value)?;
                    parameter += 1;
                }
            }
            stmt.raw_execute()
                .with_context(|| format!("inserting into {}", spec.table))?;
            row += take;
        }
        if batch.end {
            break;
        }
        next = batches.blocking_recv();
    }
    if let Some(cp) = &spec.checkpoint {
        c.execute_batch(&crate::engine::record_partition_sql(
            cp,
            &spec.table,
            total,
            bytes,
        ))
        .context("recording the partition in the checkpoint table")?;
    }
    Ok((total, bytes))
}

/// Commits on success, rolls back on failure.
fn finish(c: &Connection, result: Result<()>) -> Result<()> {
    match result {
        Ok(()) => c.execute_batch("COMMIT").context("committing"),
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// A canonical value as the column's [`Bind`] says to store it.
fn bind_value(bind: Bind, value: Option<&str>) -> Result<ToSqlOutput<'_>> {
    let Some(v) = value else {
        return Ok(ToSqlOutput::Owned(Value::Null));
    };
    let text = ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes()));
    Ok(match bind {
        Bind::Integer => ToSqlOutput::Owned(Value::Integer(match v {
            "t" | "true" => 1,
            "f" | "false" => 0,
            other => other
                .parse()
                .map_err(|_| anyhow::anyhow!("{other:?} is not an integer"))?,
        })),
        Bind::Real => match v {
            "NaN" => text,
            "Infinity" => ToSqlOutput::Owned(Value::Real(f64::INFINITY)),
            "-Infinity" => ToSqlOutput::Owned(Value::Real(f64::NEG_INFINITY)),
            other => ToSqlOutput::Owned(Value::Real(
                other
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{other:?} is not a number"))?,
            )),
        },
        Bind::Blob => match hex_bytes(v) {
            Some(bytes) => ToSqlOutput::Owned(Value::Blob(bytes)),
            None => text,
        },
        Bind::Text => text,
    })
}
