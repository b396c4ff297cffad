//! The engines stride reads and writes, one folder each, and the seam between
//! them (`../shared/DESIGN.md`, "Engines").
//!
//! This module is the only place that names an engine: [`Engine`] is picked by
//! the URL's scheme while the job is validated, so a wrong scheme or an
//! engine's unknown URL parameter is exit 2 before any I/O.
//!
//! Between different engines rows travel as *canonical text*: one text form per
//! column [`Kind`], the one PostgreSQL's text output gives with ISO dates, UTC,
//! hex bytea (`\x0102`) and shortest-exact floats (`NaN`, `Infinity`). Every
//! [`Reader`] produces it and every [`Target`] writes it, so engines add up
//! (N readers + N writers), not multiply. Calls across the seam are per run,
//! per partition or per batch of rows, never per row.
//!
//! PostgreSQL to PostgreSQL does not cross this seam: it keeps its binary COPY
//! pass-through (`postgres::copy`), the native route.

pub mod mysql;
pub mod native;
pub mod postgres;
pub mod sqlite;
pub mod url;

pub use url::{parse_url, DbUrl};

use anyhow::Result;
use tokio::sync::mpsc;

use crate::error::JobError;
use crate::job::Job;
use crate::partition::{KeyRange, KeyType};
use crate::sql::{quote_ident, quote_literal, QualifiedName};

/// A database engine stride reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Mysql,
    Sqlite,
}

impl Engine {
    /// The engine of a URL that [`parse_url`] accepted.
    pub fn of(url: &DbUrl) -> Engine {
        let scheme = url.expose().split(':').next().unwrap_or("");
        if scheme.eq_ignore_ascii_case("sqlite") {
            Engine::Sqlite
        } else if scheme.eq_ignore_ascii_case("mysql") || scheme.eq_ignore_ascii_case("mariadb") {
            Engine::Mysql
        } else {
            Engine::Postgres
        }
    }

    /// The engine's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Postgres => "PostgreSQL",
            Engine::Mysql => "MySQL",
            Engine::Sqlite => "SQLite",
        }
    }

    /// Whether a table's name has a schema (a SQLite table is named without
    /// its database, `main`).
    pub fn has_schemas(self) -> bool {
        self != Engine::Sqlite
    }

    /// A table's name as this engine's SQL spells it.
    pub fn table(self, name: &QualifiedName) -> String {
        match self {
            Engine::Postgres => name.to_string(),
            Engine::Mysql => mysql::dialect::table(name),
            Engine::Sqlite => sqlite::dialect::table(name),
        }
    }

    /// A column's name as this engine's SQL quotes it.
    pub fn quote_ident(self, name: &str) -> String {
        match self {
            Engine::Mysql => mysql::dialect::quote_ident(name),
            _ => quote_ident(name),
        }
    }

    /// The condition selecting `range` of the key column `column` (quoted), in
    /// this engine's SQL: typed literals, so the comparison is the column's.
    pub fn predicate(self, column: &str, key: KeyType, range: &KeyRange) -> Option<String> {
        match self {
            Engine::Postgres => crate::partition::predicate(column, key, range),
            Engine::Mysql => mysql::dialect::predicate(column, key, range),
            Engine::Sqlite => sqlite::dialect::predicate(column, key, range),
        }
    }

    /// What the engine lacks of what a job asks, by key (exit 2 before any
    /// write), for a job that crosses the seam.
    pub fn refusals(self, job: &Job, side: Side) -> Vec<String> {
        match self {
            Engine::Postgres => Vec::new(),
            Engine::Mysql => mysql::refusals(job, side),
            Engine::Sqlite => sqlite::refusals(job, side),
        }
    }
}

pub use crate::error::Side;

/// Whether an error cause is one an engine calls transient (worth another
/// attempt); `None` when no engine knows it.
pub fn transient(cause: &(dyn std::error::Error + 'static)) -> Option<bool> {
    // MySQL's errors are sqlx's too: MySQL answers first for its own.
    mysql::transient(cause).or_else(|| postgres::transient(cause))
}

/// Whether an error is worth retrying: a connection that broke or could not be
/// opened, or what its engine calls transient (`transient`). Everything else (type errors, constraint
/// violations, permission denied, bad SQL) fails at once.
pub fn is_transient(err: &anyhow::Error) -> bool {
    if err.is::<crate::error::OutcomeUnknown>()
        || err.is::<crate::error::Unsettled>()
        || err.chain().any(|c| c.is::<crate::error::LockLost>())
    {
        return false;
    }
    if err.is::<crate::error::CommitRolledBack>() || err.is::<crate::error::Stalled>() {
        return true;
    }
    err.chain()
        .any(|cause| transient(cause).unwrap_or_else(|| cause.is::<std::io::Error>()))
}

/// The tables of a source, `(schema, name)`, and the schema a name without
/// one is in: what `[[tables]]` patterns match.
pub async fn tables(url: &DbUrl, retries: u32) -> Result<(Vec<(String, String)>, String)> {
    match Engine::of(url) {
        Engine::Postgres => {
            let server = postgres::connect(Side::Source, url, retries).await?;
            let mut conn = server.pool(1).acquire().await?;
            postgres::tables_for_patterns(&mut conn).await
        }
        Engine::Sqlite => sqlite::Source::open(url).await?.tables().await,
        Engine::Mysql => Err(mysql_not_yet("[[tables]] patterns")),
    }
}

/// The foreign keys among `tables` of one target, `(name, child, parent)` by
/// index into `tables`: what orders a run of several tables parents first.
/// (SQLite: none, as tables stride creates there have none.)
pub async fn foreign_keys(
    url: &DbUrl,
    tables: &[QualifiedName],
    retries: u32,
) -> Result<Vec<(String, usize, usize)>> {
    match Engine::of(url) {
        Engine::Postgres => postgres::foreign_keys_among(url, tables, retries).await,
        Engine::Sqlite | Engine::Mysql => Ok(Vec::new()),
    }
}

/// What `stride init` needs of a source table (`None`: no such table), and
/// where it is, for messages.
pub async fn init_facts(
    url: &DbUrl,
    table: &QualifiedName,
) -> Result<(Option<crate::init::TableFacts>, String)> {
    match Engine::of(url) {
        Engine::Postgres => {
            let server = postgres::connect(Side::Source, url, crate::job::DEFAULT_RETRIES).await?;
            let mut conn = server.pool(1).acquire().await?;
            Ok((
                postgres::init::introspect(&mut conn, table).await?,
                server.place,
            ))
        }
        Engine::Sqlite => {
            let mut source = sqlite::Source::open(url).await?;
            Ok((source.init_facts(table).await?, source.place()))
        }
        Engine::Mysql => Err(mysql_not_yet("stride init")),
    }
}

/// What MySQL does not do yet, by name (exit 2).
fn mysql_not_yet(what: &str) -> anyhow::Error {
    JobError::new(format!(
        "{what}: not supported yet with a MySQL or MariaDB source (expected a job file naming its tables)"
    ))
    .into()
}

/// What a column holds, as far as moving its values between engines goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Bool,
    /// A 64-bit (or narrower) integer.
    Int,
    /// A binary floating-point number.
    Float,
    /// An exact decimal, kept as its text.
    Numeric,
    Bytes,
    Date,
    Timestamp,
    /// A timestamp with time zone, in UTC.
    TimestampTz,
    Time,
    /// Text, and every type carried as its text form (uuid, json, arrays, ...).
    Text,
}

impl Kind {
    /// The key type of a partition column of this kind, if it can be one.
    pub fn key_type(self) -> Option<KeyType> {
        match self {
            Kind::Int => Some(KeyType::Int8),
            Kind::Date => Some(KeyType::Date),
            Kind::Timestamp => Some(KeyType::Timestamp),
            Kind::TimestampTz => Some(KeyType::Timestamptz),
            _ => None,
        }
    }
}

/// A column as the seam sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
    /// The engine's own type, as its catalogue spells it (`numeric(12,2)`, `INTEGER`).
    pub declared: String,
    pub not_null: bool,
    /// Computed by the engine: never written.
    pub generated: bool,
}

/// A table or query, as the seam sees it.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub columns: Vec<Column>,
    /// The primary key's columns, in order (empty: none).
    pub primary_key: Vec<String>,
    /// Columns of unique keys that `ON CONFLICT` can use, each in order.
    pub unique_keys: Vec<Vec<String>>,
}

/// Rows in canonical text, row after row, `width` values each, in one buffer:
/// a value costs its bytes and an offset, not an allocation of its own (a
/// `String` a value took 5x the data's size, and a malloc each).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub width: usize,
    text: String,
    /// Where each value ends in `text` (a NULL ends where the one before it did).
    ends: Vec<usize>,
    nulls: Vec<bool>,
    /// The bytes of the values, for progress and the summary.
    pub bytes: u64,
    /// The reader's last batch: every row was read. A writer commits only
    /// after it (a reader that failed sends none).
    pub end: bool,
}

impl Batch {
    pub fn new(width: usize) -> Batch {
        Batch {
            width,
            ..Batch::default()
        }
    }

    pub fn rows(&self) -> usize {
        self.ends.len().checked_div(self.width).unwrap_or(0)
    }

    pub fn push(&mut self, value: Option<&str>) {
        if let Some(v) = value {
            self.text.push_str(v);
        }
        self.bytes += value.map_or(1, |v| v.len() as u64 + 1);
        self.ends.push(self.text.len());
        self.nulls.push(value.is_none());
    }

    /// Value `i` (row after row).
    pub fn value(&self, i: usize) -> Option<&str> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (!self.nulls[i]).then(|| &self.text[start..self.ends[i]])
    }

    /// Row `r`'s values, in column order.
    pub fn row(&self, r: usize) -> impl Iterator<Item = Option<&str>> + '_ {
        (r * self.width..(r + 1) * self.width).map(|i| self.value(i))
    }
}

/// Rows per batch a reader sends.
pub const BATCH_ROWS: usize = 1000;

/// A source opened for a run (one per run: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Source {
    Postgres(postgres::text::Source),
    Mysql(mysql::Source),
    Sqlite(sqlite::Source),
}

impl Source {
    pub async fn open(url: &DbUrl, retries: u32) -> Result<Source> {
        Ok(match Engine::of(url) {
            Engine::Postgres => Source::Postgres(postgres::text::Source::open(url, retries).await?),
            Engine::Mysql => Source::Mysql(mysql::Source::open(url).await?),
            Engine::Sqlite => Source::Sqlite(sqlite::Source::open(url).await?),
        })
    }

    pub fn engine(&self) -> Engine {
        match self {
            Source::Postgres(_) => Engine::Postgres,
            Source::Mysql(_) => Engine::Mysql,
            Source::Sqlite(_) => Engine::Sqlite,
        }
    }

    /// `host:port/database` or the file, for messages.
    pub fn place(&self) -> String {
        match self {
            Source::Postgres(s) => s.place(),
            Source::Mysql(s) => s.place(),
            Source::Sqlite(s) => s.place(),
        }
    }

    /// How the connection is protected (a file needs nothing).
    pub fn encryption(&self) -> postgres::Encryption {
        match self {
            Source::Postgres(s) => s.encryption(),
            Source::Mysql(s) => s.encryption(),
            Source::Sqlite(_) => postgres::Encryption::local_file(),
        }
    }

    /// The columns of what the job reads (its table or query); a missing table
    /// is a job error.
    pub async fn describe(&mut self, job: &Job) -> Result<Table> {
        match self {
            Source::Postgres(s) => s.describe(job).await,
            Source::Mysql(s) => s.describe(job).await,
            Source::Sqlite(s) => s.describe(job).await,
        }
    }

    /// The statement reading the job's rows of `columns` within `range` of the
    /// key (`None`: every row).
    pub fn select(
        &self,
        job: &Job,
        columns: &[Column],
        key: Option<(&str, KeyType)>,
        range: &KeyRange,
    ) -> String {
        match self {
            Source::Postgres(_) => postgres::text::select(job, columns, key, range),
            Source::Mysql(_) => mysql::dialect::select(job, columns, key, range),
            Source::Sqlite(_) => sqlite::dialect::select(job, columns, key, range),
        }
    }

    /// Why this source cannot be read while `target` is written (the same
    /// SQLite file without WAL), if it cannot.
    pub async fn conflict(&self, target: &Target) -> Result<Option<String>> {
        match (self, target) {
            (Source::Sqlite(s), Target::Sqlite(t)) => s.conflict(t).await,
            _ => Ok(None),
        }
    }

    /// A partition column the engine has that is not a column: SQLite's
    /// `rowid` (its counterpart of PostgreSQL's ctid, on a table).
    pub fn pseudo_key(&self, job: &Job, name: &str) -> Option<Column> {
        match self {
            Source::Sqlite(_)
                if name.eq_ignore_ascii_case("rowid")
                    && matches!(job.source.relation, crate::job::Relation::Table(_)) =>
            {
                Some(Column {
                    name: "rowid".into(),
                    kind: Kind::Int,
                    declared: "INTEGER".into(),
                    not_null: true,
                    generated: false,
                })
            }
            _ => None,
        }
    }

    /// About how many rows the job reads, for the progress bar (0: unknown).
    pub async fn estimate(&mut self, job: &Job, columns: &[Column]) -> Result<i64> {
        let whole = self.select(
            job,
            columns,
            None,
            &KeyRange {
                lower: None,
                upper: None,
            },
        );
        match self {
            Source::Postgres(s) => s.estimate(&whole).await,
            Source::Mysql(s) => s.estimate(job).await,
            Source::Sqlite(s) => s.count(&whole).await,
        }
    }

    /// `readers` readers that all see one moment of the source (or, where the
    /// engine cannot promise that with several, fewer: see each engine).
    pub async fn snapshot(&mut self, readers: usize) -> Result<Vec<Reader>> {
        match self {
            Source::Postgres(s) => Ok(s
                .snapshot(readers)
                .await?
                .into_iter()
                .map(Reader::Postgres)
                .collect()),
            Source::Mysql(s) => Ok(s
                .snapshot(readers)
                .await?
                .into_iter()
                .map(Reader::Mysql)
                .collect()),
            Source::Sqlite(s) => Ok(s
                .snapshot(readers)
                .await?
                .into_iter()
                .map(Reader::Sqlite)
                .collect()),
        }
    }

    /// Values of `columns` that only this engine holds and the job did not
    /// say what to do with, or that `target` cannot hold (MySQL's zero dates,
    /// its times beyond a day), one message each (exit 2).
    pub async fn value_problems(
        &mut self,
        job: &Job,
        columns: &[Column],
        target: Engine,
    ) -> Result<Vec<String>> {
        match self {
            Source::Mysql(s) => {
                let mut out: Vec<String> = s.zero_dates(job, columns).await?.into_iter().collect();
                if target != Engine::Mysql {
                    out.extend(s.long_times(job, columns).await?);
                }
                Ok(out)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Values the job changed by its own rule (MySQL's zero dates written as
    /// NULL, `target.zero_dates`), for the closing message.
    pub fn changed_values(&self) -> Option<String> {
        match self {
            Source::Mysql(s) if s.nulled_dates() > 0 => Some(format!(
                "{} zero or partial dates written as NULL (target.zero_dates = \"null\")",
                s.nulled_dates()
            )),
            _ => None,
        }
    }
}

/// One connection reading in the run's snapshot.
pub enum Reader {
    Postgres(postgres::text::Reader),
    Mysql(mysql::Reader),
    Sqlite(sqlite::Reader),
}

impl Reader {
    /// Sends the rows of `select` in batches of canonical text, `kinds` giving
    /// each column's kind. Ends when every row is sent (or the receiver is gone).
    pub async fn read(
        &mut self,
        select: &str,
        kinds: &[Kind],
        rows: &mpsc::Sender<Batch>,
    ) -> Result<()> {
        match self {
            Reader::Postgres(r) => r.read(select, kinds, rows).await,
            Reader::Mysql(r) => r.read(select, kinds, rows).await,
            Reader::Sqlite(r) => r.read(select, kinds, rows).await,
        }
    }

    /// The key column's smallest and largest value over the job's rows, in its
    /// key type's encoding (`None`: no rows with a key), in the snapshot.
    pub async fn bounds(
        &mut self,
        job: &Job,
        column: &str,
        key: KeyType,
    ) -> Result<Option<(i64, i64)>> {
        match self {
            Reader::Postgres(r) => r.bounds(job, column, key).await,
            Reader::Mysql(r) => r.bounds(job, column, key).await,
            Reader::Sqlite(r) => r.bounds(job, column, key).await,
        }
    }
}

/// How an upsert matches and what it does with a row whose key is there.
#[derive(Clone, Debug)]
pub struct Upsert {
    pub key: Vec<String>,
    /// `false`: `DO NOTHING` (`on_conflict = "skip"`).
    pub update: bool,
}

/// The staging table a `replace` run fills, swapped in at the end.
pub fn stage_name(target: &QualifiedName) -> QualifiedName {
    QualifiedName {
        schema: target.schema.clone(),
        name: format!("stride_stage_{}", target.name),
    }
}

/// A run as the target's checkpoint table holds it.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// The run row: bounds, partitions planned, finished.
    pub run: Option<RunRow>,
    /// Committed partitions: index, rows, bytes.
    pub done: Vec<(usize, u64, u64)>,
}

#[derive(Clone, Debug)]
pub struct RunRow {
    pub bounds: Option<(i64, i64)>,
    pub partitions: usize,
    pub finished: bool,
    pub recorded_at: String,
}

/// A checkpoint row: partition, lower, upper, partitions, rows, bytes,
/// finished, recorded at.
pub type CheckpointRow = (
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    bool,
    String,
);

impl Recorded {
    pub fn from_rows(rows: Vec<CheckpointRow>) -> Recorded {
        let mut out = Recorded::default();
        for (partition, lower, upper, partitions, rows, bytes, finished, recorded_at) in rows {
            if partition < 0 {
                out.run = Some(RunRow {
                    bounds: lower.zip(upper),
                    partitions: partitions.unwrap_or(0).max(0) as usize,
                    finished,
                    recorded_at,
                });
            } else {
                out.done.push((
                    partition as usize,
                    rows.unwrap_or(0).max(0) as u64,
                    bytes.unwrap_or(0).max(0) as u64,
                ));
            }
        }
        out
    }
}

/// What a partition's writer writes, and where it records the partition.
#[derive(Clone, Debug)]
pub struct WriteSpec {
    /// The table written, as the target's SQL spells it.
    pub table: String,
    pub columns: Vec<String>,
    pub source_kinds: Vec<Kind>,
    /// Each column's declared type on the target.
    pub target_declared: Vec<String>,
    pub upsert: Option<Upsert>,
    pub batch_size: usize,
    pub checkpoint: Option<CheckpointSpec>,
}

/// The checkpoint row a partition writes in its own transaction.
#[derive(Clone, Debug)]
pub struct CheckpointSpec {
    pub name: QualifiedName,
    /// The checkpoint table, as the target's SQL spells it.
    pub table: String,
    pub fingerprint: String,
    pub index: usize,
    pub range: String,
}

/// A target opened for a run (one per run: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Target {
    Postgres(postgres::text::Target),
    Mysql(mysql::Target),
    Sqlite(sqlite::Target),
}

impl Target {
    pub async fn open(url: &DbUrl, retries: u32, connections: u32) -> Result<Target> {
        Ok(match Engine::of(url) {
            Engine::Postgres => {
                Target::Postgres(postgres::text::Target::open(url, retries, connections).await?)
            }
            Engine::Mysql => Target::Mysql(mysql::Target::open(url, connections).await?),
            Engine::Sqlite => Target::Sqlite(sqlite::Target::open(url).await?),
        })
    }

    pub fn engine(&self) -> Engine {
        match self {
            Target::Postgres(_) => Engine::Postgres,
            Target::Mysql(_) => Engine::Mysql,
            Target::Sqlite(_) => Engine::Sqlite,
        }
    }

    pub fn place(&self) -> String {
        match self {
            Target::Postgres(t) => t.place(),
            Target::Mysql(t) => t.place(),
            Target::Sqlite(t) => t.place(),
        }
    }

    /// How the connection is protected (a file needs nothing).
    pub fn encryption(&self) -> postgres::Encryption {
        match self {
            Target::Postgres(t) => t.encryption(),
            Target::Mysql(t) => t.encryption(),
            Target::Sqlite(_) => postgres::Encryption::local_file(),
        }
    }

    pub async fn describe(&self, table: &QualifiedName) -> Result<Option<Table>> {
        match self {
            Target::Postgres(t) => t.describe(table).await,
            Target::Mysql(t) => t.describe(table).await,
            Target::Sqlite(t) => t.describe(table).await,
        }
    }

    pub async fn has_rows(&self, table: &str) -> Result<bool> {
        match self {
            Target::Postgres(t) => t.has_rows(table).await,
            Target::Mysql(t) => t.has_rows(table).await,
            Target::Sqlite(t) => t.has_rows(table).await,
        }
    }

    /// The declared type of a column this target creates for a source column
    /// (`in_key`: in the primary key), or why it cannot create one that keeps
    /// its values.
    pub fn declared_for(
        &self,
        source: Engine,
        column: &Column,
        in_key: bool,
    ) -> Result<String, String> {
        Ok(match (self, source) {
            (Target::Sqlite(_), Engine::Sqlite)
            | (Target::Postgres(_), Engine::Postgres)
            | (Target::Mysql(_), Engine::Mysql) => column.declared.clone(),
            (Target::Sqlite(_), _) => sqlite::dialect::declared_for(column.kind).to_string(),
            (Target::Postgres(_), Engine::Mysql) => {
                mysql::dialect::postgres_type(&column.declared)?
            }
            (Target::Postgres(_), _) => postgres::text::declared_for(column),
            (Target::Mysql(_), _) => mysql::dialect::mysql_type(source, column, in_key)?,
        })
    }

    /// `CREATE TABLE` for `table` with `(name, declared type, not null)` columns.
    pub fn create_sql(
        &self,
        table: &str,
        columns: &[(String, String, bool)],
        key: &[String],
    ) -> String {
        match self {
            Target::Mysql(t) => t.create_sql(table, columns, key),
            _ => create_table_sql(table, columns, key),
        }
    }

    /// Why an upsert on `key` into `table` (as the target's SQL spells it)
    /// would not do what it says, if it would not.
    pub fn upsert_refusal(&self, table: &str, key: &[String]) -> Option<String> {
        match self {
            Target::Mysql(t) => t.upsert_refusal(table, key),
            _ => None,
        }
    }

    /// The rows of `columns` (with the target's declared types) of a target
    /// table within `predicate`, for verify.
    pub fn target_select(
        &self,
        table: &str,
        columns: &[Column],
        predicate: Option<String>,
    ) -> String {
        match self {
            Target::Mysql(_) => mysql::dialect::target_select(table, columns, predicate),
            _ => {
                let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
                target_select(table, &names, predicate)
            }
        }
    }

    /// The run row: the bounds a run planned with and its partitions.
    pub fn record_run_sql(
        &self,
        checkpoints: &str,
        fingerprint: &str,
        table: &str,
        bounds: Option<(i64, i64)>,
        partitions: usize,
    ) -> String {
        match self {
            Target::Mysql(_) => {
                mysql::dialect::record_run_sql(checkpoints, fingerprint, table, bounds, partitions)
            }
            _ => record_run_sql(checkpoints, fingerprint, table, bounds, partitions),
        }
    }

    /// Forgets a run's checkpoints (a new run of the job starts).
    pub fn forget_run_sql(&self, checkpoints: &str, fingerprint: &str) -> String {
        match self {
            Target::Mysql(_) => mysql::dialect::forget_run_sql(checkpoints, fingerprint),
            _ => forget_run_sql(checkpoints, fingerprint),
        }
    }

    /// Forgets the runs of other jobs into `table`, when this run empties it.
    pub fn forget_other_runs_sql(
        &self,
        checkpoints: &str,
        fingerprint: &str,
        table: &str,
    ) -> String {
        match self {
            Target::Mysql(_) => {
                mysql::dialect::forget_other_runs_sql(checkpoints, fingerprint, table)
            }
            _ => forget_other_runs_sql(checkpoints, fingerprint, table),
        }
    }

    /// Marks the run finished.
    pub fn finish_run_sql(&self, checkpoints: &str, fingerprint: &str) -> String {
        match self {
            Target::Mysql(_) => mysql::dialect::finish_run_sql(checkpoints, fingerprint),
            _ => finish_run_sql(checkpoints, fingerprint),
        }
    }

    /// Why values of `kind` cannot go into a column of `declared` type unchanged.
    pub fn refusal(&self, kind: Kind, declared: &str) -> Option<String> {
        match self {
            Target::Postgres(_) | Target::Mysql(_) => None,
            Target::Sqlite(_) => sqlite::dialect::bind(kind, declared).err(),
        }
    }

    /// The statement that empties a table.
    pub fn empty_sql(&self, table: &str) -> String {
        match self {
            Target::Postgres(_) => format!("TRUNCATE {table}"),
            // DELETE: transactional in InnoDB, where TRUNCATE commits at once.
            Target::Sqlite(_) | Target::Mysql(_) => format!("DELETE FROM {table}"),
        }
    }

    /// The statements that put the rows of `stage` in `table`'s place, in the
    /// transaction that records the run finished: the table is emptied and
    /// filled from the staging table, which is dropped. The table keeps its
    /// definition, indexes and triggers; readers see the old rows until the
    /// commit. (The rows move twice; PostgreSQL to PostgreSQL swaps tables
    /// instead, engine/postgres/route/run.rs.)
    pub fn swap_sql(
        &self,
        stage: &QualifiedName,
        table: &QualifiedName,
        columns: &[String],
    ) -> Vec<String> {
        let (stage, table) = (self.engine().table(stage), self.engine().table(table));
        let list: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let list = list.join(", ");
        vec![
            // DELETE, not TRUNCATE: PostgreSQL's readers keep reading the old
            // rows until the commit instead of waiting on TRUNCATE's lock.
            format!("DELETE FROM {table}"),
            format!("INSERT INTO {table} ({list}) SELECT {list} FROM {stage}"),
            format!("DROP TABLE {stage}"),
        ]
    }

    /// Statements in one transaction.
    pub async fn transaction(&self, statements: &[String]) -> Result<()> {
        match self {
            Target::Postgres(t) => t.transaction(statements).await,
            Target::Mysql(t) => t.transaction(statements).await,
            Target::Sqlite(t) => t.transaction(statements).await,
        }
    }

    /// Creates the checkpoint table if it is missing (once every check passed).
    pub async fn ensure_checkpoints(&self, checkpoints: &QualifiedName) -> Result<()> {
        match self {
            Target::Postgres(t) => t.ensure_checkpoints(checkpoints).await,
            Target::Mysql(t) => t.ensure_checkpoints(checkpoints).await,
            Target::Sqlite(t) => t.ensure_checkpoints(checkpoints).await,
        }
    }

    /// The run recorded for `fingerprint` (none when there is no checkpoint
    /// table yet: reading creates nothing).
    pub async fn recorded(
        &self,
        checkpoints: &QualifiedName,
        fingerprint: &str,
    ) -> Result<Recorded> {
        match self {
            Target::Postgres(t) => t.recorded(checkpoints, fingerprint).await,
            Target::Mysql(t) => t.recorded(checkpoints, fingerprint).await,
            Target::Sqlite(t) => t.recorded(checkpoints, fingerprint).await,
        }
    }

    /// Writes a partition's rows and its checkpoint row in one transaction;
    /// returns rows and bytes written.
    pub async fn write(&self, spec: &WriteSpec, rows: mpsc::Receiver<Batch>) -> Result<(u64, u64)> {
        match self {
            Target::Postgres(t) => t.write(spec, rows).await,
            Target::Mysql(t) => t.write(spec, rows).await,
            Target::Sqlite(t) => t.write(spec, rows).await,
        }
    }

    /// A reader of the target's `table` as it is now, for verify.
    pub async fn reader(&self, table: &QualifiedName) -> Result<Reader> {
        Ok(match self {
            Target::Postgres(t) => Reader::Postgres(t.reader().await?),
            Target::Mysql(t) => Reader::Mysql(t.reader(table).await?),
            Target::Sqlite(t) => Reader::Sqlite(t.reader().await?),
        })
    }
}

/// The rows of `columns` of a target table within `predicate`.
pub fn target_select(table: &str, columns: &[String], predicate: Option<String>) -> String {
    let list: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    format!(
        "SELECT {} FROM {table}{}",
        list.join(", "),
        crate::plan::where_clause(None, predicate)
    )
}

/// `CREATE TABLE` for a table stride creates: `(name, declared type, not
/// null)` per column, and the primary key.
pub fn create_table_sql(
    table: &str,
    columns: &[(String, String, bool)],
    primary_key: &[String],
) -> String {
    format!(
        "CREATE TABLE {table} ({})",
        table_elements(columns, primary_key, quote_ident)
    )
}

/// The inside of a `CREATE TABLE`: each column with its type and `NOT NULL`,
/// then the primary key, names quoted by the engine's `quote`.
pub fn table_elements(
    columns: &[(String, String, bool)],
    primary_key: &[String],
    quote: fn(&str) -> String,
) -> String {
    let mut parts: Vec<String> = columns
        .iter()
        .map(|(name, declared, not_null)| {
            format!(
                "{} {declared}{}",
                quote(name),
                if *not_null { " NOT NULL" } else { "" }
            )
        })
        .collect();
    if !primary_key.is_empty() {
        let key: Vec<String> = primary_key.iter().map(|c| quote(c)).collect();
        parts.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    parts.join(", ")
}

// The checkpoint statements every engine's checkpoint table takes (its
// columns are `crate::checkpoint::COLUMNS` on each).

/// The run row: the bounds a run planned with and its partitions.
pub fn record_run_sql(
    checkpoints: &str,
    fingerprint: &str,
    table: &str,
    bounds: Option<(i64, i64)>,
    partitions: usize,
) -> String {
    let (lower, upper) = bounds.map_or(("NULL".to_string(), "NULL".to_string()), |(l, u)| {
        (l.to_string(), u.to_string())
    });
    format!(
        "INSERT INTO {checkpoints} (fingerprint, partition, target_table, range, lower_bound, upper_bound, partitions) \
         VALUES ({}, {}, {}, 'run', {lower}, {upper}, {partitions})",
        quote_literal(fingerprint),
        crate::checkpoint::RUN_ROW,
        quote_literal(table)
    )
}

/// A committed partition, written in its own transaction.
pub fn record_partition_sql(cp: &CheckpointSpec, table: &str, rows: u64, bytes: u64) -> String {
    format!(
        "INSERT INTO {} (fingerprint, partition, target_table, range, rows, bytes, finished) \
         VALUES ({}, {}, {}, {}, {rows}, {bytes}, true)",
        cp.table,
        quote_literal(&cp.fingerprint),
        cp.index,
        quote_literal(table),
        quote_literal(&cp.range)
    )
}

/// Forgets a run's checkpoints (a new run of the job starts).
pub fn forget_run_sql(checkpoints: &str, fingerprint: &str) -> String {
    format!(
        "DELETE FROM {checkpoints} WHERE fingerprint = {}",
        quote_literal(fingerprint)
    )
}

/// Forgets the runs of other jobs into `table`, when this run empties it.
pub fn forget_other_runs_sql(checkpoints: &str, fingerprint: &str, table: &str) -> String {
    format!(
        "DELETE FROM {checkpoints} WHERE target_table = {} AND fingerprint <> {}",
        quote_literal(table),
        quote_literal(fingerprint)
    )
}

/// Marks the run finished.
pub fn finish_run_sql(checkpoints: &str, fingerprint: &str) -> String {
    format!(
        "UPDATE {checkpoints} SET finished = true WHERE fingerprint = {} AND partition = {}",
        quote_literal(fingerprint),
        crate::checkpoint::RUN_ROW
    )
}

/// Checks a canonical value against the kind that reads it back, for
/// comparisons across engines: floats by value (`1e+100` and `1e100` are one
/// number), booleans by truth.
pub fn normalized(kind: Kind, value: &str) -> std::borrow::Cow<'_, str> {
    match kind {
        Kind::Float => match value.parse::<f64>() {
            Ok(f) => float_text(f).into(),
            Err(_) => value.into(),
        },
        Kind::Numeric => numeric_text(value).into(),
        // A timestamp written into a column with a time zone reads back in
        // UTC (`+00`): the same time (MySQL's datetime holds a PostgreSQL
        // timestamptz that way, and goes back into one).
        Kind::Timestamp => value.strip_suffix("+00").unwrap_or(value).into(),
        Kind::Bool => match value {
            "t" | "true" | "1" => "t".into(),
            "f" | "false" | "0" => "f".into(),
            other => other.into(),
        },
        _ => value.into(),
    }
}

/// An exact decimal's value, whatever its scale: `1.50` and `1.5` are one
/// number (a target column's scale may add zeros; SQLite may drop them).
fn numeric_text(value: &str) -> String {
    let Some((whole, fraction)) = value.split_once('.') else {
        return value.to_string();
    };
    if !whole
        .trim_start_matches('-')
        .chars()
        .all(|c| c.is_ascii_digit())
        || !fraction.chars().all(|c| c.is_ascii_digit())
    {
        return value.to_string();
    }
    let fraction = fraction.trim_end_matches('0');
    let text = if fraction.is_empty() {
        whole.to_string()
    } else {
        format!("{whole}.{fraction}")
    };
    if text == "-0" {
        "0".to_string()
    } else {
        text
    }
}

/// A float's canonical text: PostgreSQL's (shortest digits that read back as
/// the same number; `NaN`, `Infinity`, `-Infinity`; an exponent below 1e-4
/// and from 1e15 on, as `1e+100`, `1.5e-07`).
pub fn float_text(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // `{:e}` gives the shortest digits that round-trip: `1.5e-7`.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e}'s exponent is a number");
    if !(-4..15).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    format!("{f}")
}

/// An order-independent checksum of rows: how many, and the wrapping sum of a
/// 64-bit hash of each row's normalized canonical text. Both sides of a copy
/// between engines compute it the same way, in stride.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    pub rows: i64,
    pub sum: u64,
}

impl Checksum {
    pub fn add<'a>(&mut self, kinds: &[Kind], row: impl Iterator<Item = Option<&'a str>>) {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for (kind, value) in kinds.iter().zip(row) {
            match value {
                None => eat(b"\x00N"),
                Some(v) => {
                    eat(b"\x01");
                    eat(normalized(*kind, v).as_bytes());
                }
            }
            eat(b"\x1f");
        }
        self.rows += 1;
        self.sum = self.sum.wrapping_add(hash);
    }

    /// The figure shown: the sum in hex.
    pub fn text(&self) -> String {
        format!("{:016x}", self.sum)
    }
}

/// Decodes `\x0102` (canonical bytes) into bytes; `None` if it is not that.
pub fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Bytes as canonical text: `\x` and lower-case hex.
pub fn bytes_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("\\x");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn floats_print_as_postgres_prints_them() {
        for (f, text) in [
            (0.1, "0.1"),
            (1.0, "1"),
            (-2.5, "-2.5"),
            (1e100, "1e+100"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (123456789012345.0, "123456789012345"),
            (1e15, "1e+15"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (-0.0, "-0"),
        ] {
            assert_eq!(float_text(f), text, "{f:?}");
        }
    }

    proptest! {
        #[test]
        fn float_text_reads_back_as_the_same_number(bits in any::<u64>()) {
            let f = f64::from_bits(bits);
            let back: f64 = float_text(f).replace("Infinity", "inf").parse().unwrap();
            prop_assert!(back.to_bits() == f.to_bits() || (f.is_nan() && back.is_nan()));
        }

        #[test]
        fn bytes_round_trip_through_hex(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(hex_bytes(&bytes_text(&bytes)), Some(bytes));
        }
    }

    #[test]
    fn checksums_ignore_order_and_float_spelling() {
        assert_eq!(normalized(Kind::Numeric, "1.50"), "1.5");
        assert_eq!(normalized(Kind::Numeric, "-0.000"), "0");
        assert_eq!(normalized(Kind::Numeric, "100"), "100");
        assert_eq!(normalized(Kind::Numeric, "NaN"), "NaN");
        assert_eq!(
            normalized(Kind::Timestamp, "2024-06-30 10:34:56.789+00"),
            "2024-06-30 10:34:56.789"
        );
        let kinds = [Kind::Int, Kind::Float, Kind::Bool];
        let row = |a: &'static str, b: &'static str, c: &'static str| {
            [Some(a), Some(b), Some(c)].into_iter()
        };
        let mut one = Checksum::default();
        one.add(&kinds, row("1", "1e+100", "t"));
        one.add(&kinds, row("2", "0.5", "f"));
        let mut two = Checksum::default();
        two.add(&kinds, row("2", "0.50", "0"));
        two.add(&kinds, row("1", "1e100", "1"));
        assert_eq!(one, two);
        let mut other = Checksum::default();
        other.add(&kinds, row("1", "1e+100", "t"));
        other.add(&kinds, row("2", "0.5", "t"));
        assert_ne!(one, other);
        let mut null = Checksum::default();
        null.add(&kinds, [None, Some("0.5"), Some("t")].into_iter());
        let mut empty = Checksum::default();
        empty.add(&kinds, [Some(""), Some("0.5"), Some("t")].into_iter());
        assert_ne!(null, empty, "NULL and the empty string differ");
    }

    #[test]
    fn a_batch_gives_back_its_values_row_by_row_with_nulls_and_empty_strings() {
        let mut batch = Batch::new(3);
        let values = [Some("1"), None, Some(""), Some("ünï"), Some("x"), None];
        for v in values {
            batch.push(v);
        }
        assert_eq!(batch.rows(), 2);
        assert_eq!(batch.row(0).collect::<Vec<_>>(), values[..3]);
        assert_eq!(batch.row(1).collect::<Vec<_>>(), values[3..]);
        assert_eq!((0..6).map(|i| batch.value(i)).collect::<Vec<_>>(), values);
        // Each value's bytes and one more (a NULL: one).
        assert_eq!(batch.bytes, 2 + 1 + 1 + 6 + 2 + 1);
    }

    #[test]
    fn urls_pick_their_engine_or_are_refused_by_name() {
        assert_eq!(
            Engine::of(&parse_url("t.url", "sqlite:///tmp/x.db".into()).unwrap()),
            Engine::Sqlite
        );
        assert_eq!(
            Engine::of(&parse_url("t.url", "postgres://h/d".into()).unwrap()),
            Engine::Postgres
        );
        assert_eq!(
            Engine::of(&parse_url("t.url", "mariadb://root@h/d".into()).unwrap()),
            Engine::Mysql
        );
        let e = parse_url("target.url", "mysql://root@h/d?sslmode=require".into())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("target.url: unknown parameter \"sslmode\" for MySQL"),
            "{e}"
        );
        let e = parse_url("source.url", "oracle://h/d".into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("scheme \"oracle\" is not supported"), "{e}");
    }
}
