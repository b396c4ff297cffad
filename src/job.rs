//! The job file: `${VAR}` interpolation, the raw serde mirror of the TOML, and its
//! validation into a [`Job`] of typed, non-optional fields. Pure: no connections.
//!
//! Parsing happens in two steps (as ripgrep does with its flags): [`RawJob`] mirrors
//! the file exactly and rejects unknown keys; [`Job::from_raw`] checks every rule
//! that needs no database and names the key that broke it. Rules that need the
//! source's catalogue (does the column exist, does a bound parse as its type) are
//! checked in `plan`, with the same kind of error.

use serde::Deserialize;

pub use crate::engine::url::{parse_url, DbUrl};
use crate::error::JobError;
use crate::pattern::{is_pattern, TablePattern};
use crate::sql::QualifiedName;

// ---------------------------------------------------------------------------------
// The raw mirror of the file. No `Debug`: it holds the URLs with their passwords.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    source: RawSource,
    partition: Option<RawPartition>,
    target: RawTarget,
    incremental: Option<RawIncremental>,
    #[serde(default)]
    run: RawRun,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIncremental {
    column: String,
    /// An integer, or a duration as a string: checked in [`validate_lookback`].
    lookback: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: String,
    table: Option<String>,
    query: Option<String>,
    columns: Option<Vec<String>>,
    #[serde(rename = "where")]
    where_clause: Option<String>,
    sample: Option<f64>,
    limit: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartition {
    #[serde(default)]
    strategy: Strategy,
    column: Option<String>,
    lower_bound: Option<RawBound>,
    upper_bound: Option<RawBound>,
    count: Option<i64>,
}

/// Bounds may be written as TOML integers, strings, or TOML dates/datetimes; all are
/// kept as text until the column's type is known.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawBound {
    Int(i64),
    Text(String),
    Datetime(toml::value::Datetime),
}

impl RawBound {
    fn into_text(self) -> String {
        match self {
            RawBound::Int(i) => i.to_string(),
            RawBound::Text(s) => s,
            RawBound::Datetime(d) => d.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    url: String,
    table: Option<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    create: Create,
    #[serde(default)]
    method: Method,
    batch_size: Option<i64>,
    key: Option<Vec<String>>,
    on_conflict: Option<OnConflict>,
    reset_sequences: Option<bool>,
    defer_indexes: Option<bool>,
    indexes: Option<Indexes>,
    #[serde(default)]
    zero_dates: ZeroDates,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    parallelism: Option<i64>,
    checkpoint: Option<bool>,
    checkpoint_table: Option<String>,
    retries: Option<i64>,
    stall_timeout: Option<String>,
    #[serde(default)]
    verify: Verify,
}

// ---------------------------------------------------------------------------------
// The validated job.

/// What to do with rows already in the target table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Add the copied rows to what is there.
    #[default]
    Append,
    /// Empty the target once, before the first partition is written.
    Truncate,
    /// Insert new rows and update (or keep, `on_conflict = "skip"`) those whose
    /// key is already in the target.
    Upsert,
    /// Refuse a target table that already holds rows when a new run starts
    /// (Spark's default save mode); a resumed run continues into its own rows.
    ErrorIfExists,
    /// Load a staging table, then swap it in for the target in one transaction:
    /// readers see the old table until the new one is complete.
    Replace,
    /// Drop the target and create it again from the source's definition, once,
    /// when a run starts; then fill it.
    Overwrite,
}

impl Mode {
    /// The mode as the job file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Append => "append",
            Mode::Truncate => "truncate",
            Mode::Upsert => "upsert",
            Mode::ErrorIfExists => "error-if-exists",
            Mode::Replace => "replace",
            Mode::Overwrite => "overwrite",
        }
    }
}

/// What an upsert does with a source row whose key is already in the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnConflict {
    /// `DO UPDATE`: the target row takes the source row's values.
    #[default]
    Update,
    /// `DO NOTHING`: the target row stays as it is; only new keys are inserted.
    Skip,
}

/// How `mode = "upsert"` matches rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upsert {
    /// `target.key` as written; `None`: the target table's primary key, read
    /// from its catalogue once connected.
    pub key: Option<Vec<String>>,
    pub on_conflict: OnConflict,
}

/// What becomes of MySQL's zero and partial dates (`0000-00-00`,
/// `2021-00-15`), which no other engine holds: the run is refused before any
/// write, naming the columns and counts, or they are written as NULL (counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ZeroDates {
    #[default]
    Refuse,
    Null,
}

/// Whether a missing target table is created from the source's column definitions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Create {
    #[default]
    IfMissing,
    Never,
}

/// Which of the source table's indexes a table stride creates gets, built once
/// the rows are in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Indexes {
    /// The source's primary key only.
    #[default]
    PrimaryKey,
    /// The primary key and every other index of the source table.
    All,
    /// No index (an upsert's key is still made: `ON CONFLICT` needs it).
    None,
}

impl Indexes {
    /// The value as the job file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Indexes::PrimaryKey => "primary-key",
            Indexes::All => "all",
            Indexes::None => "none",
        }
    }
}

/// How rows are written into the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// `COPY ... FROM STDIN`, binary when the column types match, else text.
    #[default]
    Copy,
    /// Multi-row `INSERT`s of `batch_size` rows.
    Insert,
}

/// What `run` compares after the copy, partition by partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verify {
    #[default]
    None,
    /// Row counts on both sides.
    Count,
    /// Row counts and an order-independent checksum of every column's text form.
    Checksum,
}

/// Where the rows come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Relation {
    Table(QualifiedName),
    /// The user's own SQL, used as a subquery.
    Query(String),
}

#[derive(Clone, Debug)]
pub struct Source {
    pub url: DbUrl,
    pub relation: Relation,
    /// Columns to copy, in order; `None` means every column of the source.
    pub columns: Option<Vec<String>>,
    /// The user's own SQL condition, applied to every partition.
    pub where_clause: Option<String>,
    /// The fraction of the table's rows to copy (`TABLESAMPLE BERNOULLI`), 0 < f <= 1.
    pub sample: Option<f64>,
    /// At most this many rows (the first by the partition column).
    pub limit: Option<u64>,
}

/// How `[partition]` cuts the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Spark's equal-width ranges of the column between the bounds.
    #[default]
    Stride,
    /// Ranges cut at the column's quantiles: about as many rows in each.
    Quantile,
    /// Ranges of the table's physical blocks (TID range scans); no column.
    Ctid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSpec {
    pub strategy: Strategy,
    /// Column name exactly as in the catalogue (case-sensitive, unquoted);
    /// `None` with the ctid strategy, which needs none.
    pub column: Option<String>,
    /// Bounds as written (stride only); parsed once the column's type is known.
    pub bounds: Option<(String, String)>,
    pub count: u32,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub url: DbUrl,
    pub table: QualifiedName,
    pub mode: Mode,
    pub create: Create,
    pub method: Method,
    pub batch_size: u32,
    /// `Some` exactly when `mode` is `Upsert`.
    pub upsert: Option<Upsert>,
    /// Set sequences owned by target columns past their largest value after a
    /// successful run, so the target's own next insert does not collide.
    pub reset_sequences: bool,
    /// Drop the target's secondary indexes when the run empties it and build them
    /// again once every partition is in (truncate mode).
    pub defer_indexes: bool,
    /// `target.indexes` as written; `None`: not set (the primary key only). Set
    /// on a table that exists and is not created, it is ignored with a warning.
    pub indexes: Option<Indexes>,
    /// `target.zero_dates`: a MySQL source's zero and partial dates.
    pub zero_dates: ZeroDates,
}

/// `[incremental]`: each run copies only the rows whose `column` is above the
/// high-water mark the last successful run recorded on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incremental {
    /// Column name exactly as in the catalogue; an integer, date or timestamp.
    pub column: String,
    /// `incremental.lookback`: how far below the mark each run reads again
    /// (`None`: only the rows at the mark). Its kind is checked against the
    /// column's type once the source is read (`plan::lookback`).
    pub lookback: Option<Lookback>,
}

/// `incremental.lookback` as written: a number of values of an integer column,
/// or a duration for a date or timestamp column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookback {
    /// A non-negative whole number (integer columns).
    Count(i64),
    /// A duration (date and timestamp columns).
    Duration(std::time::Duration),
}

/// What `incremental.lookback` accepts, for messages.
pub const LOOKBACK_EXPECTED: &str = "expected a whole number of at least 0 for an integer column, or a duration for a date or timestamp column: a whole number and a unit, \"2 days\", \"36h\", \"90m\", \"30s\"";

/// `incremental.lookback`: an integer of at least 0, or a duration string.
fn validate_lookback(value: &toml::Value) -> Result<Lookback, JobError> {
    match value {
        toml::Value::Integer(n) if *n >= 0 => Ok(Lookback::Count(*n)),
        toml::Value::String(text) => parse_lookback_duration(text)
            .map(Lookback::Duration)
            .ok_or_else(|| {
                JobError::new(format!(
                    "incremental.lookback: {text:?} is not a duration ({LOOKBACK_EXPECTED})"
                ))
            }),
        other => Err(JobError::new(format!(
            "incremental.lookback: {other} is not a whole number of at least 0 or a duration ({LOOKBACK_EXPECTED})"
        ))),
    }
}

/// A look-back duration: what [`parse_duration`] accepts, and days (`"2d"`,
/// `"1 day"`, `"2 days"`). `None` for anything else.
pub fn parse_lookback_duration(text: &str) -> Option<std::time::Duration> {
    let trimmed = text.trim();
    let digits = trimmed.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = trimmed.split_at(digits);
    match unit.trim_start() {
        "d" | "day" | "days" => {
            let days: u64 = number.parse().ok()?;
            Some(std::time::Duration::from_secs(days.checked_mul(86_400)?))
        }
        _ => parse_duration(trimmed),
    }
}

#[derive(Clone, Debug)]
pub struct Job {
    pub source: Source,
    /// `None`: the whole source in one partition.
    pub partition: Option<PartitionSpec>,
    pub target: Target,
    pub incremental: Option<Incremental>,
    /// `run.parallelism` (with `tables = "concurrent"`, this table's share of it);
    /// see [`Job::partitions_at_once`].
    pub parallelism: Option<u32>,
    /// Where done partitions are recorded on the target; `None`: no checkpoints
    /// (`checkpoint = false`), so no resume either.
    pub checkpoint_table: Option<QualifiedName>,
    /// Further attempts of a partition (or a connection) after a transient failure.
    pub retries: u32,
    /// `run.stall_timeout`: a partition whose source or target moves no data for
    /// this long fails (transiently), so a frozen network never stalls a run.
    pub stall_timeout: std::time::Duration,
    pub verify: Verify,
}

pub const DEFAULT_BATCH_SIZE: u32 = 1000;
pub const DEFAULT_RETRIES: u32 = 3;
pub const MAX_RETRIES: i64 = 100;
/// `run.stall_timeout` when the job does not set one. Minutes, not seconds: a
/// server legitimately sends nothing while it scans up to a late partition's first
/// row (a sequential scan of tens of GB at 100-200 MB/s), or while it merges a big
/// upsert partition or checks a COPY's last rows; a frozen network is still found
/// within minutes, where TCP alone can take a quarter of an hour or forever.
pub const DEFAULT_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5 * 60);
/// The checkpoint table's name when the job does not set one; it lives in the
/// target table's schema.
pub const DEFAULT_CHECKPOINT_TABLE: &str = "stride_checkpoints";
/// More partitions than this is a typo, not a plan.
pub const MAX_PARTITIONS: i64 = 100_000;
/// Rows per INSERT; beyond this a statement's arrays grow past what is sensible to buffer.
pub const MAX_BATCH_SIZE: i64 = 1_000_000;

impl Job {
    /// Partitions copied at once, one connection each on each side, out of
    /// `partitions`: `run.parallelism`, else [`DEFAULT_PARALLELISM`] or fewer.
    #[must_use]
    pub fn partitions_at_once(&self, partitions: u32) -> u32 {
        self.parallelism
            .unwrap_or(DEFAULT_PARALLELISM)
            .min(partitions)
            .max(1)
    }

    /// Reads a job from the text of a job file: interpolates the environment, parses, validates.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Job, JobError> {
        Job::parse_with_overrides(text, env, &[])
    }

    /// As `parse`, with `--set SECTION.KEY=VALUE` overrides applied to the parsed
    /// file before validation, so they meet the same checks as the file's own keys.
    pub fn parse_with_overrides(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
        overrides: &[(String, String)],
    ) -> Result<Job, JobError> {
        let expanded = interpolate(text, env)?;
        if overrides.is_empty() {
            let raw: RawJob = serde_path_to_error::deserialize(toml::Deserializer::new(&expanded))
                .map_err(|e| toml_error(&expanded, &e))?;
            return Job::from_raw(raw);
        }
        let mut table: toml::Table =
            serde_path_to_error::deserialize(toml::Deserializer::new(&expanded))
                .map_err(|e| toml_error(&expanded, &e))?;
        for (key, value) in overrides {
            apply_override(&mut table, key, value)?;
        }
        let raw: RawJob =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                JobError::new(format!(
                    "{path}: {} (after --set)",
                    e.inner().message().trim()
                ))
            })?;
        Job::from_raw(raw)
    }

    pub fn from_raw(raw: RawJob) -> Result<Job, JobError> {
        let source = validate_source(raw.source)?;
        let target = validate_target(raw.target, &source)?;
        let parallelism = match raw.run.parallelism {
            None => None,
            Some(p) if (1..=i64::from(u16::MAX)).contains(&p) => Some(to_u32(p)),
            Some(p) => {
                return Err(JobError::new(format!(
                    "run.parallelism: {p} is out of range (expected a whole number from 1 to {})",
                    u16::MAX
                )))
            }
        };
        let partition = raw
            .partition
            .map(|p| validate_partition(p, parallelism))
            .transpose()?;
        if partition
            .as_ref()
            .is_some_and(|p| p.strategy == Strategy::Ctid)
            && (source.sample.is_some() || source.limit.is_some())
        {
            return Err(JobError::new(
                "partition.strategy: \"ctid\" reads block ranges of the table, which a sample or limit of it does not have (expected strategy \"stride\" or \"quantile\" with source.sample or source.limit)",
            ));
        }
        let retries = match raw.run.retries {
            None => DEFAULT_RETRIES,
            Some(r) if (0..=MAX_RETRIES).contains(&r) => to_u32(r),
            Some(r) => {
                return Err(JobError::new(format!(
                    "run.retries: {r} is out of range (expected a whole number from 0 to {MAX_RETRIES})"
                )))
            }
        };
        let stall_timeout = match raw.run.stall_timeout {
            None => DEFAULT_STALL_TIMEOUT,
            Some(text) => parse_duration(&text)
                .filter(|d| *d >= std::time::Duration::from_millis(100))
                .ok_or_else(|| {
                    JobError::new(format!(
                        "run.stall_timeout: {text:?} is not a duration of at least 100ms (expected a whole number and a unit: \"500ms\", \"30s\", \"5m\", \"1h\")"
                    ))
                })?,
        };
        let checkpoint_table = match (raw.run.checkpoint, raw.run.checkpoint_table) {
            (Some(false), Some(_)) => {
                return Err(JobError::new(
                    "run.checkpoint_table: set while run.checkpoint = false (expected one or the other)",
                ))
            }
            (Some(false), None) => None,
            (_, Some(name)) => Some(
                QualifiedName::parse(&name)
                    .map_err(|e| JobError::new(format!("run.checkpoint_table: {e}")))?,
            ),
            (_, None) => Some(QualifiedName {
                schema: target.table.schema.clone(),
                name: DEFAULT_CHECKPOINT_TABLE.to_string(),
            }),
        };
        let incremental = match raw.incremental {
            None => None,
            Some(inc) => {
                if inc.column.is_empty() {
                    return Err(JobError::new(
                        "incremental.column: is empty (expected the name of a column that grows with every change, such as updated_at)",
                    ));
                }
                match target.mode {
                    Mode::Append | Mode::Upsert => {}
                    Mode::Truncate => return Err(JobError::new(
                        "target.mode: \"truncate\" empties the target on every run, which an incremental job would then refill with only the new rows (expected \"append\" or \"upsert\" with [incremental])",
                    )),
                    Mode::ErrorIfExists => return Err(JobError::new(
                        "target.mode: \"error-if-exists\" refuses a target that holds rows, which an incremental job's second run always finds (expected \"append\" or \"upsert\" with [incremental])",
                    )),
                    Mode::Replace | Mode::Overwrite => return Err(JobError::new(format!(
                        "target.mode: \"{}\" gives the target only the rows of one run, which an incremental job's later runs would shrink to the new rows (expected \"append\" or \"upsert\" with [incremental])",
                        target.mode.as_str()
                    ))),
                }
                if checkpoint_table.is_none() {
                    return Err(JobError::new(
                        "run.checkpoint: false, but [incremental] keeps its high-water mark in the checkpoint table (expected checkpoint = true)",
                    ));
                }
                let lookback = inc.lookback.as_ref().map(validate_lookback).transpose()?;
                Some(Incremental {
                    column: inc.column,
                    lookback,
                })
            }
        };
        Ok(Job {
            source,
            partition,
            target,
            incremental,
            parallelism,
            checkpoint_table,
            retries,
            stall_timeout,
            verify: raw.run.verify,
        })
    }
}

/// The jobs of one job file: one, or one per `[[tables]]` entry.
#[derive(Clone, Debug)]
pub struct JobSet {
    pub jobs: Vec<Job>,
    /// `[run] tables = "concurrent"`: the tables copy at once, sharing
    /// `run.parallelism`; otherwise one after the other, in the order given.
    pub concurrent: bool,
    /// Entries whose `table` is a pattern, expanded into `jobs` by
    /// [`JobSet::expand`] once the source's tables are known.
    pub patterns: Vec<PatternEntry>,
}

/// A `[[tables]]` entry whose `table` is a pattern (`public.*`): one job per
/// matched source table, each copied whole into the target table of the same
/// name, the entry's other keys applying to each.
#[derive(Clone, Debug)]
pub struct PatternEntry {
    /// The entry's place in the file, for messages.
    pub entry: usize,
    /// How many of the set's jobs come before it (where its tables go).
    at: usize,
    pub pattern: TablePattern,
    pub exclude: Vec<TablePattern>,
    /// The entry's job file, all but `source.table`.
    template: toml::Table,
    /// The entry's job for a stand-in table: where the source is, how often
    /// to retry reaching it.
    pub stand_in: Job,
}

impl PatternEntry {
    /// The job that copies `table`.
    fn job_for(&self, table: &QualifiedName) -> Result<Job, JobError> {
        job_from_template(&self.template, self.entry, table)
    }
}

/// Entry `i`'s job file with `source.table` set to `table`, validated.
fn job_from_template(
    template: &toml::Table,
    i: usize,
    table: &QualifiedName,
) -> Result<Job, JobError> {
    let mut one = template.clone();
    let source = one
        .entry("source")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(source) = source {
        source.insert("table".to_string(), toml::Value::String(table.to_string()));
    }
    let raw: RawJob = serde_path_to_error::deserialize(toml::Value::Table(one)).map_err(|e| {
        JobError::new(format!(
            "tables[{i}]: {}: {}",
            e.path(),
            e.inner().message().trim()
        ))
    })?;
    Job::from_raw(raw).map_err(|e| JobError::new(format!("tables[{i}]: {e}")))
}

/// Keys a pattern entry may set: the rest (a partition column, a query, columns,
/// a filter) cannot mean the same for every matched table.
const PATTERN_KEYS: &[&str] = &["table", "exclude", "target"];

/// Keys a `[[tables]]` entry may set, and where they go.
const TABLE_SOURCE_KEYS: &[&str] = &["table", "query", "columns", "where", "sample", "limit"];
const TABLE_SECTIONS: &[&str] = &["partition", "incremental", "target"];

impl JobSet {
    /// Reads a job file that may hold `[[tables]]`: each entry is a job of its
    /// own, made of the file's `[source]`, `[partition]`, `[incremental]`,
    /// `[target]` and `[run]` with the entry's keys filled in (`table`, `query`,
    /// `columns`, `where`, `sample`, `limit` go to `[source]`; its `partition` and
    /// `incremental` replace the file's; its `target` keys override the file's
    /// one by one). Errors name the entry: `tables[1]: partition.count: ...`.
    pub fn parse(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
        overrides: &[(String, String)],
    ) -> Result<JobSet, JobError> {
        let expanded = interpolate(text, &env)?;
        let has_tables = toml::from_str::<toml::Table>(&expanded)
            .map(|t| t.contains_key("tables"))
            .unwrap_or(false);
        if !has_tables {
            return Ok(JobSet {
                jobs: vec![Job::parse_with_overrides(text, env, overrides)?],
                concurrent: false,
                patterns: Vec::new(),
            });
        }
        let mut doc: toml::Table = toml::from_str(&expanded).expect("parsed just above");
        for (key, value) in overrides {
            apply_override(&mut doc, key, value)?;
        }
        let Some(toml::Value::Array(entries)) = doc.remove("tables") else {
            return Err(JobError::new(
                "tables: is not a list of tables (expected [[tables]] sections)",
            ));
        };
        if entries.is_empty() {
            return Err(JobError::new(
                "tables: is empty (expected at least one [[tables]] entry)",
            ));
        }
        let concurrent = match doc
            .get_mut("run")
            .and_then(toml::Value::as_table_mut)
            .and_then(|run| run.remove("tables"))
        {
            None => false,
            Some(toml::Value::String(order)) if order == "in-order" => false,
            Some(toml::Value::String(order)) if order == "concurrent" => true,
            Some(other) => {
                return Err(JobError::new(format!(
                    "run.tables: {other} is not an order (expected \"in-order\" or \"concurrent\")"
                )))
            }
        };
        if let Some(source) = doc.get("source").and_then(toml::Value::as_table) {
            for key in ["table", "query"] {
                if source.contains_key(key) {
                    return Err(JobError::new(format!(
                        "source.{key}: set along with [[tables]] (expected each table in its own [[tables]] entry)"
                    )));
                }
            }
        }
        let mut jobs: Vec<Job> = Vec::with_capacity(entries.len());
        let mut patterns = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let toml::Value::Table(entry) = entry else {
                return Err(JobError::new(format!("tables[{i}]: is not a table")));
            };
            if let Some(toml::Value::String(table)) = entry.get("table") {
                if is_pattern(table) {
                    let at = jobs.len();
                    patterns.push(pattern_entry(&doc, i, at, entry, overrides)?);
                    continue;
                }
            }
            if entry.contains_key("exclude") {
                return Err(JobError::new(format!(
                    "tables[{i}].exclude: set for a table that is not a pattern (expected table = \"schema.*\" or another pattern with * or ?)"
                )));
            }
            let mut one = doc.clone();
            for (key, value) in entry {
                let section =
                    |one: &mut toml::Table, name: &str| -> Result<toml::Table, JobError> {
                        match one.remove(name) {
                            None => Ok(toml::Table::new()),
                            Some(toml::Value::Table(t)) => Ok(t),
                            Some(_) => Err(JobError::new(format!("{name}: is not a section"))),
                        }
                    };
                if TABLE_SOURCE_KEYS.contains(&key.as_str()) {
                    let mut source = section(&mut one, "source")?;
                    source.insert(key, value);
                    one.insert("source".to_string(), toml::Value::Table(source));
                } else if key == "target" {
                    let mut target = section(&mut one, "target")?;
                    let toml::Value::Table(keys) = value else {
                        return Err(JobError::new(format!("tables[{i}].target: is not a table")));
                    };
                    target.extend(keys);
                    one.insert("target".to_string(), toml::Value::Table(target));
                } else if TABLE_SECTIONS.contains(&key.as_str()) {
                    one.insert(key, value);
                } else {
                    return Err(JobError::new(format!(
                        "tables[{i}].{key}: unknown key (expected one of: {}, {})",
                        TABLE_SOURCE_KEYS.join(", "),
                        TABLE_SECTIONS.join(", ")
                    )));
                }
            }
            // `--set` wins over the entry's own keys too (run.tables was read above).
            for (key, value) in overrides.iter().filter(|(k, _)| k != "run.tables") {
                apply_override(&mut one, key, value)?;
            }
            let raw: RawJob =
                serde_path_to_error::deserialize(toml::Value::Table(one)).map_err(|e| {
                    JobError::new(format!(
                        "tables[{i}]: {}: {}",
                        e.path(),
                        e.inner().message().trim()
                    ))
                })?;
            let job = Job::from_raw(raw).map_err(|e| JobError::new(format!("tables[{i}]: {e}")))?;
            if let Some(j) = jobs.iter().position(|other| {
                other.target.table == job.target.table && other.target.url == job.target.url
            }) {
                return Err(JobError::new(format!(
                    "tables[{i}].target.table: {} is also the target of tables[{j}] (expected one entry per target table)",
                    job.target.table
                )));
            }
            jobs.push(job);
        }
        let mut set = JobSet {
            jobs,
            concurrent,
            patterns,
        };
        if set.patterns.is_empty() {
            set.share_parallelism();
        }
        Ok(set)
    }

    /// With `concurrent`, one budget: the connections of `run.parallelism`
    /// (default 4), shared by the tables.
    fn share_parallelism(&mut self) {
        if !self.concurrent || self.jobs.is_empty() {
            return;
        }
        let total = self.jobs[0].parallelism.unwrap_or(DEFAULT_PARALLELISM);
        let each = (total / u32::try_from(self.jobs.len()).unwrap_or(u32::MAX)).max(1);
        for job in &mut self.jobs {
            job.parallelism = Some(each);
        }
    }

    /// Replaces each pattern entry by one job per table it matched (`found[k]`
    /// for `patterns[k]`, in the source's order), where the entry stood.
    ///
    /// # Errors
    ///
    /// A pattern that matched nothing; a target table that two entries copy into.
    pub fn expand(&mut self, found: &[Vec<QualifiedName>]) -> Result<(), JobError> {
        let patterns = std::mem::take(&mut self.patterns);
        let mut entry_of: Vec<Option<usize>> = vec![None; self.jobs.len()];
        for (p, tables) in patterns.iter().zip(found).rev() {
            if tables.is_empty() {
                return Err(JobError::new(format!(
                    "tables[{}].table: {:?} matches no table of the source (expected a pattern matching at least one table; views, materialized views, foreign tables and partitions are not matched)",
                    p.entry, p.pattern.text
                )));
            }
            let jobs = tables
                .iter()
                .map(|t| p.job_for(t))
                .collect::<Result<Vec<Job>, JobError>>()?;
            let n = jobs.len();
            self.jobs.splice(p.at..p.at, jobs);
            entry_of.splice(p.at..p.at, std::iter::repeat_n(Some(p.entry), n));
        }
        for (i, job) in self.jobs.iter().enumerate() {
            if let Some(j) = self.jobs[..i].iter().position(|other| {
                other.target.table == job.target.table && other.target.url == job.target.url
            }) {
                let by = |k: usize| {
                    entry_of[k].map_or_else(String::new, |e| format!(" (matched by tables[{e}])"))
                };
                return Err(JobError::new(format!(
                    "tables: {} is the target of two entries{}{} (expected each table in one entry: add it to the pattern's exclude)",
                    job.target.table,
                    by(j),
                    by(i)
                )));
            }
        }
        self.share_parallelism();
        Ok(())
    }
}

/// A `[[tables]]` entry with a pattern: checked now (every key but the table,
/// with a stand-in name), expanded when the source's tables are known.
fn pattern_entry(
    doc: &toml::Table,
    i: usize,
    at: usize,
    entry: toml::Table,
    overrides: &[(String, String)],
) -> Result<PatternEntry, JobError> {
    for section in ["partition", "incremental"] {
        if doc.contains_key(section) {
            return Err(JobError::new(format!(
                "tables[{i}]: [{section}] applies to a pattern (expected no [{section}] in a file whose [[tables]] use patterns: each matched table is copied whole, as one partition)"
            )));
        }
    }
    let mut one = doc.clone();
    let mut text = String::new();
    let mut exclude = Vec::new();
    for (key, value) in entry {
        match (key.as_str(), value) {
            ("table", toml::Value::String(t)) => text = t,
            ("exclude", toml::Value::Array(list)) => {
                for x in list {
                    let toml::Value::String(x) = x else {
                        return Err(JobError::new(format!(
                            "tables[{i}].exclude: {x} is not a string (expected a list of patterns such as [\"public.audit_*\"])"
                        )));
                    };
                    exclude.push(TablePattern::parse(&x).map_err(|e| {
                        JobError::new(format!("tables[{i}].exclude: {e}"))
                    })?);
                }
            }
            ("exclude", other) => {
                return Err(JobError::new(format!(
                    "tables[{i}].exclude: {other} is not a list (expected a list of patterns such as [\"public.audit_*\"])"
                )))
            }
            ("target", toml::Value::Table(keys)) => {
                if keys.contains_key("table") {
                    return Err(JobError::new(format!(
                        "tables[{i}].target.table: set for a pattern (expected none: each matched table goes to the target table of the same name)"
                    )));
                }
                let mut target = match one.remove("target") {
                    Some(toml::Value::Table(t)) => t,
                    _ => toml::Table::new(),
                };
                target.extend(keys);
                one.insert("target".to_string(), toml::Value::Table(target));
            }
            ("target", _) => {
                return Err(JobError::new(format!("tables[{i}].target: is not a table")))
            }
            (key, _) => {
                return Err(JobError::new(format!(
                    "tables[{i}].{key}: not allowed with a pattern table (expected only {}: each matched table is copied whole, as one partition)",
                    PATTERN_KEYS.join(", ")
                )))
            }
        }
    }
    let pattern =
        TablePattern::parse(&text).map_err(|e| JobError::new(format!("tables[{i}].table: {e}")))?;
    for (key, value) in overrides.iter().filter(|(k, _)| k != "run.tables") {
        apply_override(&mut one, key, value)?;
    }
    // Every other key is checked now, before anything is read.
    let stand_in = job_from_template(
        &one,
        i,
        &QualifiedName {
            schema: Some("public".to_string()),
            name: "stand_in".to_string(),
        },
    )?;
    Ok(PatternEntry {
        entry: i,
        at,
        pattern,
        exclude,
        template: one,
        stand_in,
    })
}

/// Sets `section.key` (or `section.key.sub`...) in the parsed file. The value is
/// read as a TOML value when it is one (`8`, `true`, `2021-03-01`, `["a"]`) and as
/// a string otherwise.
fn apply_override(table: &mut toml::Table, key: &str, value: &str) -> Result<(), JobError> {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("a key holds at least one part");
    let mut node = table;
    for part in parts {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| JobError::new(format!("--set {key}: {part} is not a section")))?;
    }
    node.insert(last.to_string(), parsed);
    Ok(())
}

/// A duration as the job file writes it: a whole number and a unit, `ms`, `s`,
/// `m` or `h` (`"500ms"`, `"30s"`, `"5m"`, `"1h"`). `None` for anything else.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let millis = match unit.trim_start() {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => None,
    }?;
    Some(std::time::Duration::from_millis(millis))
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v).expect("callers check the range first")
}

fn validate_source(raw: RawSource) -> Result<Source, JobError> {
    let relation = match (raw.table, raw.query) {
        (Some(_), Some(_)) => {
            return Err(JobError::new(
                "source: both `table` and `query` are set (expected exactly one of them)",
            ))
        }
        (None, None) => {
            return Err(JobError::new(
                "source: neither `table` nor `query` is set (expected exactly one of them)",
            ))
        }
        (Some(table), None) => Relation::Table(
            QualifiedName::parse(&table)
                .map_err(|e| JobError::new(format!("source.table: {e}")))?,
        ),
        (None, Some(query)) => {
            let query = query.trim().trim_end_matches(';').trim_end().to_string();
            if query.is_empty() {
                return Err(JobError::new(
                    "source.query: is empty (expected a SELECT statement)",
                ));
            }
            crate::sql::check_enclosable(&query).map_err(|why| {
                JobError::new(format!(
                    "source.query: {why} (expected one SELECT statement, which stride reads as a subquery)"
                ))
            })?;
            Relation::Query(query)
        }
    };
    if let Some(columns) = &raw.columns {
        if columns.is_empty() {
            return Err(JobError::new(
                "source.columns: is empty (expected at least one column name, or leave it out for all columns)",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for c in columns {
            if c.is_empty() {
                return Err(JobError::new("source.columns: contains an empty name"));
            }
            if !seen.insert(c) {
                return Err(JobError::new(format!(
                    "source.columns: \"{c}\" is listed twice"
                )));
            }
        }
    }
    let where_clause = raw.where_clause.map(|w| w.trim().to_string());
    if where_clause.as_deref() == Some("") {
        return Err(JobError::new(
            "source.where: is empty (expected an SQL condition, or leave it out)",
        ));
    }
    if let Some(w) = &where_clause {
        crate::sql::check_enclosable(w).map_err(|why| {
            JobError::new(format!(
                "source.where: {why} (expected one boolean expression, which stride puts in parentheses)"
            ))
        })?;
    }
    if let Some(sample) = raw.sample {
        if !(sample > 0.0 && sample <= 1.0) {
            return Err(JobError::new(format!(
                "source.sample: {sample} is out of range (expected a fraction above 0 and at most 1, e.g. 0.01 for 1% of the rows)"
            )));
        }
        if let Relation::Query(_) = relation {
            return Err(JobError::new(
                "source.sample: TABLESAMPLE needs source.table (expected a table; with a query, put TABLESAMPLE in the query itself)",
            ));
        }
    }
    let limit = match raw.limit {
        None => None,
        Some(n) if n >= 1 => Some(n.unsigned_abs()),
        Some(n) => {
            return Err(JobError::new(format!(
                "source.limit: {n} is out of range (expected a whole number of rows, at least 1)"
            )))
        }
    };
    Ok(Source {
        url: parse_url("source.url", raw.url)?,
        relation,
        columns: raw.columns,
        where_clause,
        sample: raw.sample,
        limit,
    })
}

/// Partitions each connection gets when the job leaves `count` out with the
/// quantile and ctid strategies: a few per connection, so a slow one does not
/// hold the run back.
pub const PARTITIONS_PER_CONNECTION: u32 = 4;
/// Partitions at once (connections on each side) when the job does not say: more
/// partitions queue. More writers into one table mostly wait on each other (for
/// the table's extension lock and WAL): on 2 cores, 8 at once took 1.10 to 1.12x
/// the time of 2, and 8 partitions 4 at once 1.07x (docs/PERFORMANCE.md).
/// pgcopydb and Sqoop default to 4 too.
pub const DEFAULT_PARALLELISM: u32 = 4;

fn validate_partition(
    raw: RawPartition,
    parallelism: Option<u32>,
) -> Result<PartitionSpec, JobError> {
    let column = match (raw.strategy, raw.column) {
        (_, Some(c)) if c.is_empty() => {
            return Err(JobError::new(
                "partition.column: is empty (expected a column name)",
            ))
        }
        (Strategy::Ctid, Some(c)) => {
            return Err(JobError::new(format!(
                "partition.column: \"{c}\" is set, but strategy \"ctid\" splits the table by its physical blocks (expected no column, or another strategy)"
            )))
        }
        (Strategy::Ctid, None) => None,
        (_, None) => {
            return Err(JobError::new(
                "partition.column: missing (expected the column to split by; only strategy = \"ctid\" needs none)",
            ))
        }
        (_, Some(c)) => Some(c),
    };
    let default_count = match raw.strategy {
        Strategy::Stride => 1,
        Strategy::Quantile | Strategy::Ctid => {
            i64::from(PARTITIONS_PER_CONNECTION * parallelism.unwrap_or(DEFAULT_PARALLELISM))
        }
    };
    let count = raw.count.unwrap_or(default_count);
    if !(1..=MAX_PARTITIONS).contains(&count) {
        return Err(JobError::new(format!(
            "partition.count: {count} is out of range (expected a whole number from 1 to {MAX_PARTITIONS})"
        )));
    }
    let bounds = match (raw.lower_bound, raw.upper_bound) {
        (None, None) => None,
        (Some(_), _) | (_, Some(_)) if raw.strategy != Strategy::Stride => {
            return Err(JobError::new(format!(
                "partition.lower_bound: bounds set the stride of strategy \"stride\"; strategy \"{}\" takes its boundaries from the data (expected no bounds)",
                match raw.strategy {
                    Strategy::Quantile => "quantile",
                    _ => "ctid",
                }
            )))
        }
        (Some(l), Some(u)) => Some((l.into_text(), u.into_text())),
        (Some(_), None) => return Err(JobError::new(
            "partition.upper_bound: missing (lower_bound is set; expected both bounds or neither)",
        )),
        (None, Some(_)) => return Err(JobError::new(
            "partition.lower_bound: missing (upper_bound is set; expected both bounds or neither)",
        )),
    };
    Ok(PartitionSpec {
        strategy: raw.strategy,
        column,
        bounds,
        count: to_u32(count),
    })
}

fn validate_target(raw: RawTarget, source: &Source) -> Result<Target, JobError> {
    let table = match (raw.table, &source.relation) {
        (Some(t), _) => {
            QualifiedName::parse(&t).map_err(|e| JobError::new(format!("target.table: {e}")))?
        }
        (None, Relation::Table(name)) => name.clone(),
        (None, Relation::Query(_)) => {
            return Err(JobError::new(
                "target.table: missing (expected a table name; it is required when the source is a query)",
            ))
        }
    };
    let batch_size = raw.batch_size.unwrap_or(i64::from(DEFAULT_BATCH_SIZE));
    if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
        return Err(JobError::new(format!(
            "target.batch_size: {batch_size} is out of range (expected a whole number from 1 to {MAX_BATCH_SIZE})"
        )));
    }
    let upsert = validate_upsert(raw.mode, raw.key, raw.on_conflict)?;
    let scheme = source.url.expose().split(':').next().unwrap_or("");
    if raw.zero_dates == ZeroDates::Null
        && !["mysql", "mariadb"].contains(&scheme.to_ascii_lowercase().as_str())
    {
        return Err(JobError::new(
            "target.zero_dates: only a MySQL or MariaDB source holds zero dates (expected it with a mysql:// or mariadb:// source.url)",
        ));
    }
    let defer_indexes = raw.defer_indexes.unwrap_or(false);
    if defer_indexes && raw.mode != Mode::Truncate {
        return Err(JobError::new(format!(
            "target.defer_indexes: needs a target that starts empty, and mode is \"{}\" (expected mode = \"truncate\")",
            raw.mode.as_str()
        )));
    }
    if let (Some(indexes), Create::Never, false) =
        (raw.indexes, raw.create, raw.mode == Mode::Overwrite)
    {
        return Err(JobError::new(format!(
            "target.indexes: set to \"{}\", but with create = \"never\" and mode \"{}\" stride never creates the table (expected target.indexes only with create = \"if-missing\" or mode = \"overwrite\")",
            indexes.as_str(),
            raw.mode.as_str()
        )));
    }
    Ok(Target {
        zero_dates: raw.zero_dates,
        url: parse_url("target.url", raw.url)?,
        table,
        mode: raw.mode,
        create: raw.create,
        method: raw.method,
        batch_size: to_u32(batch_size),
        upsert,
        reset_sequences: raw.reset_sequences.unwrap_or(true),
        defer_indexes,
        indexes: raw.indexes,
    })
}

/// `target.key` and `target.on_conflict` belong to upsert mode only; the key, when
/// given, is a non-empty list of distinct names. Whether its columns are copied
/// and carry a unique index is checked against the catalogues.
fn validate_upsert(
    mode: Mode,
    key: Option<Vec<String>>,
    on_conflict: Option<OnConflict>,
) -> Result<Option<Upsert>, JobError> {
    if mode != Mode::Upsert {
        let mode = mode.as_str();
        if key.is_some() {
            return Err(JobError::new(format!(
                "target.key: set while target.mode is \"{mode}\" (expected it only with mode = \"upsert\")"
            )));
        }
        if on_conflict.is_some() {
            return Err(JobError::new(format!(
                "target.on_conflict: set while target.mode is \"{mode}\" (expected it only with mode = \"upsert\")"
            )));
        }
        return Ok(None);
    }
    if let Some(key) = &key {
        if key.is_empty() {
            return Err(JobError::new(
                "target.key: is empty (expected at least one column name, or leave it out for the target's primary key)",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for c in key {
            if c.is_empty() {
                return Err(JobError::new("target.key: contains an empty name"));
            }
            if !seen.insert(c) {
                return Err(JobError::new(format!(
                    "target.key: \"{c}\" is listed twice"
                )));
            }
        }
    }
    Ok(Some(Upsert {
        key,
        on_conflict: on_conflict.unwrap_or_default(),
    }))
}

/// Expands `${VAR}` and `${VAR:-default}` from `env`. `$$` stands for a literal `$`.
pub fn interpolate(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<String, JobError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            // A reference ends on its own line: a stray `${` must not reach into
            // later lines (and quote a password from them in its error).
            let line_end = body.find('\n').unwrap_or(body.len());
            let end = body[..line_end].find('}').ok_or_else(|| {
                JobError::new(format!(
                    "line {}: unterminated ${{ (expected ${{VAR}} or ${{VAR:-default}})",
                    line_of(text, text.len() - rest.len() + pos)
                ))
            })?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid_name = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid_name {
                // Not quoted: the text between the braces may be anything, a secret too.
                return Err(JobError::new(format!(
                    "line {}: a ${{...}} holds no variable name (expected ${{NAME}} or ${{NAME:-default}}, NAME of letters, digits and _)",
                    line_of(text, text.len() - rest.len() + pos)
                )));
            }
            // As in the shell, `:-` also replaces a variable that is set but empty.
            match (env(name), default) {
                (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(JobError::new(format!(
                        "line {}: environment variable {name} is not set (expected it set, or a default as ${{{name}:-default}})",
                        line_of(text, text.len() - rest.len() + pos)
                    )))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}

/// A TOML error as `key: message (line L, column C)`, naming the key where serde
/// knows it, without echoing the offending line: after interpolation that line may
/// hold a password.
fn toml_error(text: &str, err: &serde_path_to_error::Error<toml::de::Error>) -> JobError {
    let inner = err.inner();
    let message = inner
        .message()
        .trim()
        .replace("expected i64", "expected a whole number")
        .replace(
            "data did not match any variant of untagged enum RawBound",
            "expected a whole number, a string or a date",
        );
    let position = inner.span().map(|span| {
        let start = span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let column = text[line_start..start].chars().count() + 1;
        format!("line {}, column {column}", line_of(text, start))
    });
    let path = err.path().to_string();
    JobError::new(match (path.as_str(), position) {
        ("" | ".", Some(position)) => format!("{position}: {message}"),
        ("" | ".", None) => message,
        (path, Some(position)) => format!("{path}: {message} ({position})"),
        (path, None) => format!("{path}: {message}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    const MINIMAL: &str = r#"
[source]
url = "postgres://u@h/src"
table = "public.covid_cases"
[target]
url = "postgres://u@h/dst"
"#;

    fn parse(text: &str) -> Result<Job, JobError> {
        Job::parse(text, env(&[]))
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("job should be rejected").to_string()
    }

    #[test]
    fn zero_dates_are_refused_unless_the_job_makes_them_null() {
        let mysql = "[source]\nurl='mysql://root@h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n";
        let job = Job::parse(mysql, |_| None).unwrap();
        assert_eq!(job.target.zero_dates, ZeroDates::Refuse);
        let job = Job::parse(&format!("{mysql}zero_dates = 'null'\n"), |_| None).unwrap();
        assert_eq!(job.target.zero_dates, ZeroDates::Null);
        let e = Job::parse(&format!("{mysql}zero_dates = 'zero'\n"), |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("target.zero_dates"), "{e}");
        let pg = "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\nzero_dates = 'null'\n";
        let e = Job::parse(pg, |_| None).unwrap_err().to_string();
        assert!(
            e.starts_with("target.zero_dates: only a MySQL or MariaDB source"),
            "{e}"
        );
    }

    #[test]
    fn lookback_is_a_count_or_a_duration() {
        use std::time::Duration;
        let lookback = |value: &str| {
            parse(&format!(
                "{MINIMAL}[incremental]\ncolumn = 'day'\nlookback = {value}\n"
            ))
            .map(|job| job.incremental.expect("an [incremental] job").lookback)
        };
        let good = [
            ("0", Lookback::Count(0)),
            ("100", Lookback::Count(100)),
            ("9223372036854775807", Lookback::Count(i64::MAX)),
            (
                "'2 days'",
                Lookback::Duration(Duration::from_secs(2 * 86_400)),
            ),
            ("'1 day'", Lookback::Duration(Duration::from_secs(86_400))),
            ("'3d'", Lookback::Duration(Duration::from_secs(3 * 86_400))),
            ("'36h'", Lookback::Duration(Duration::from_secs(36 * 3_600))),
            ("'90m'", Lookback::Duration(Duration::from_secs(90 * 60))),
            ("'30s'", Lookback::Duration(Duration::from_secs(30))),
            ("'0s'", Lookback::Duration(Duration::ZERO)),
        ];
        for (value, expected) in good {
            assert_eq!(lookback(value), Ok(Some(expected)), "{value}");
        }
        assert_eq!(
            parse(&format!("{MINIMAL}[incremental]\ncolumn = 'day'\n"))
                .unwrap()
                .incremental
                .unwrap()
                .lookback,
            None
        );
        let bad = [
            (
                "-1",
                "incremental.lookback: -1 is not a whole number of at least 0 or a duration",
            ),
            (
                "1.5",
                "incremental.lookback: 1.5 is not a whole number of at least 0 or a duration",
            ),
            (
                "true",
                "incremental.lookback: true is not a whole number of at least 0 or a duration",
            ),
            (
                "'-2 days'",
                "incremental.lookback: \"-2 days\" is not a duration",
            ),
            (
                "'2 weeks'",
                "incremental.lookback: \"2 weeks\" is not a duration",
            ),
            ("'100'", "incremental.lookback: \"100\" is not a duration"),
            (
                "'99999999999999999999 days'",
                "incremental.lookback: \"99999999999999999999 days\" is not a duration",
            ),
            (
                "'213503982334602 days'",
                "incremental.lookback: \"213503982334602 days\" is not a duration",
            ),
        ];
        for (value, expected) in bad {
            let message = lookback(value).expect_err(value).to_string();
            assert_eq!(
                message,
                format!("{expected} ({LOOKBACK_EXPECTED})"),
                "{value}"
            );
        }
    }

    #[test]
    fn durations_are_a_whole_number_and_a_unit() {
        use std::time::Duration;
        let good = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            (" 2 s ", Duration::from_secs(2)),
            ("0s", Duration::ZERO),
        ];
        for (text, expected) in good {
            assert_eq!(parse_duration(text), Some(expected), "{text:?}");
        }
        for text in [
            "",
            "s",
            "30",
            "1.5s",
            "-1s",
            "30 sec",
            "5min",
            "1d",
            "m5",
            "99999999999999999999s",
            "18446744073709551615h",
        ] {
            assert_eq!(parse_duration(text), None, "{text:?}");
        }
    }

    #[test]
    fn indexes_values_and_the_modes_that_create_tables() {
        let with = |target: &str| {
            parse(&format!(
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n{target}\n"
            ))
            .map(|job| job.target.indexes)
        };
        assert_eq!(with("").unwrap(), None);
        assert_eq!(
            with("indexes='primary-key'").unwrap(),
            Some(Indexes::PrimaryKey)
        );
        assert_eq!(with("indexes='all'").unwrap(), Some(Indexes::All));
        assert_eq!(with("indexes='none'").unwrap(), Some(Indexes::None));
        // Overwrite creates the table again on every run, whatever `create` says.
        assert_eq!(
            with("create='never'\nmode='overwrite'\nindexes='all'").unwrap(),
            Some(Indexes::All)
        );
        assert!(with("create='never'\nindexes='all'").is_err());
    }

    #[test]
    fn minimal_job_takes_defaults() {
        let job = parse(MINIMAL).unwrap();
        assert_eq!(job.target.table.to_string(), "\"public\".\"covid_cases\"");
        assert_eq!(job.target.mode, Mode::Append);
        assert_eq!(job.target.create, Create::IfMissing);
        assert_eq!(job.target.method, Method::Copy);
        assert_eq!(job.target.batch_size, DEFAULT_BATCH_SIZE);
        assert!(job.partition.is_none());
        assert!(job.parallelism.is_none());
        assert_eq!(job.retries, DEFAULT_RETRIES);
        assert_eq!(job.stall_timeout, DEFAULT_STALL_TIMEOUT);
        assert_eq!(
            job.checkpoint_table.unwrap().to_string(),
            "\"public\".\"stride_checkpoints\""
        );
    }

    #[test]
    fn full_job_from_the_issue() {
        let text = r#"
[source]
url = "${SOURCE_URL}"
table = "public.covid_cases"
columns = ["state", "district", "confirmed", "date"]
where = "state <> 'Unknown'"
[partition]
column = "date"
lower_bound = "2021-02-20"
upper_bound = "2021-02-28"
count = 4
[target]
url = "${TARGET_URL:-postgres://postgres@localhost/t}"
table = "Public.Covid"
mode = "truncate"
create = "never"
method = "insert"
batch_size = 500
[run]
parallelism = 2
"#;
        let job = Job::parse(text, env(&[("SOURCE_URL", "postgres://a:secret@h:5/db")])).unwrap();
        assert_eq!(job.source.url.expose(), "postgres://a:secret@h:5/db");
        assert_eq!(job.target.url.expose(), "postgres://postgres@localhost/t");
        assert_eq!(job.target.table.to_string(), "\"public\".\"covid\"");
        assert_eq!(
            job.partition,
            Some(PartitionSpec {
                strategy: Strategy::Stride,
                column: Some("date".into()),
                bounds: Some(("2021-02-20".into(), "2021-02-28".into())),
                count: 4
            })
        );
        assert_eq!(
            job.source.where_clause.as_deref(),
            Some("state <> 'Unknown'")
        );
        assert_eq!(job.target.mode, Mode::Truncate);
        assert_eq!(job.target.create, Create::Never);
        assert_eq!(job.target.indexes, None);
        assert_eq!(job.target.method, Method::Insert);
        assert_eq!(job.target.batch_size, 500);
        assert_eq!(job.parallelism, Some(2));
    }

    #[test]
    fn upsert_takes_a_key_and_what_to_do_on_conflict() {
        let job = parse(&format!("{MINIMAL}mode = 'upsert'\n")).unwrap();
        assert_eq!(job.target.mode, Mode::Upsert);
        assert_eq!(
            job.target.upsert,
            Some(Upsert {
                key: None,
                on_conflict: OnConflict::Update
            })
        );
        assert!(job.target.reset_sequences);
        let job = parse(&format!(
            "{MINIMAL}mode = 'upsert'\nkey = ['state', 'Date']\non_conflict = 'skip'\nreset_sequences = false\n"
        ))
        .unwrap();
        assert_eq!(
            job.target.upsert,
            Some(Upsert {
                key: Some(vec!["state".into(), "Date".into()]),
                on_conflict: OnConflict::Skip
            })
        );
        assert!(!job.target.reset_sequences);
        for (text, mode) in [("replace", Mode::Replace), ("overwrite", Mode::Overwrite)] {
            let job = parse(&format!("{MINIMAL}mode = '{text}'\n")).unwrap();
            assert_eq!(job.target.mode, mode);
            assert_eq!(mode.as_str(), text);
            let incremental = parse(&format!(
                "{MINIMAL}mode = '{text}'\n[incremental]\ncolumn = 'updated_at'\n"
            ))
            .unwrap_err()
            .to_string();
            assert_eq!(
                incremental,
                format!("target.mode: \"{text}\" gives the target only the rows of one run, which an incremental job's later runs would shrink to the new rows (expected \"append\" or \"upsert\" with [incremental])")
            );
            let keyed = parse(&format!("{MINIMAL}mode = '{text}'\nkey = ['id']\n"))
                .unwrap_err()
                .to_string();
            assert!(
                keyed.starts_with(&format!("target.key: set while target.mode is \"{text}\"")),
                "{keyed}"
            );
        }
        let job = parse(&format!("{MINIMAL}mode = 'error-if-exists'\n")).unwrap();
        assert_eq!(job.target.mode, Mode::ErrorIfExists);
        assert_eq!(job.target.upsert, None);
        assert_eq!(parse(MINIMAL).unwrap().target.upsert, None);
    }

    #[test]
    fn toml_integer_and_date_bounds_are_accepted() {
        let text = format!(
            "{MINIMAL}[partition]\ncolumn = \"id\"\nlower_bound = 0\nupper_bound = 2021-02-28\ncount = 3\n"
        );
        let job = parse(&text).unwrap();
        assert_eq!(
            job.partition.unwrap().bounds,
            Some(("0".into(), "2021-02-28".into()))
        );
    }

    #[test]
    fn rejections_name_the_key() {
        let cases: &[(&str, &str)] = &[
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\ntabel='x'\n[target]\nurl='postgres://h/d'\n",
                "source.tabel: unknown field `tabel`, expected one of `url`, `table`",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n[partition]\ncolum='id'\n",
                "partition.colum: unknown field `colum`",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\nquery='select 1'\n[target]\nurl='postgres://h/d'\n",
                "source: both `table` and `query`",
            ),
            (
                "[source]\nurl='postgres://h/d'\n[target]\nurl='postgres://h/d'\n",
                "source: neither `table` nor `query`",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n[partition]\ncolumn='id'\nlower_bound=1\n",
                "partition.upper_bound: missing",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n[partition]\ncolumn='id'\nupper_bound=1\n",
                "partition.lower_bound: missing",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n[partition]\ncolumn='id'\ncount=0\n",
                "partition.count: 0 is out of range",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n[partition]\ncolumn='id'\ncount='four'\n",
                "partition.count: invalid type: string \"four\", expected a whole number",
            ),
            (
                "[source]\nurl='postgres://h/d'\nquery='select 1'\n[target]\nurl='postgres://h/d'\n",
                "target.table: missing",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\nindexes='unique'\n",
                "target.indexes: unknown variant `unique`, expected one of `primary-key`, `all`, `none`",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\ncreate='never'\nmode='truncate'\nindexes='none'\n",
                "target.indexes: set to \"none\", but with create = \"never\" and mode \"truncate\" stride never creates the table (expected target.indexes only with create = \"if-missing\" or mode = \"overwrite\")",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\nmode='merge'\n",
                "target.mode: unknown variant `merge`, expected one of `append`, `truncate`, `upsert`, `error-if-exists`, `replace`, `overwrite`",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\non_conflict='skip'\n",
                "target.on_conflict: set while target.mode is \"append\" (expected it only with mode = \"upsert\")",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\nmode='truncate'\non_conflict='update'\n",
                "target.on_conflict: set while target.mode is \"truncate\"",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\nmode='error-if-exists'\nkey=['id']\n",
                "target.key: set while target.mode is \"error-if-exists\" (expected it only with mode = \"upsert\")",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\nmode='upsert'\non_conflict='replace'\n",
                "target.on_conflict: unknown variant `replace`, expected `update` or `skip`",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\nmode='upsert'\nkey=[]\n",
                "target.key: is empty (expected at least one column name",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\nmode='upsert'\nkey=['id', '']\n",
                "target.key: contains an empty name",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\nmode='upsert'\nkey=['a', 'b', 'a']\n",
                "target.key: \"a\" is listed twice",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\nmode='upsert'\nkey='id'\n",
                "target.key: invalid type: string \"id\", expected a sequence",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\nreset_sequences='no'\n",
                "target.reset_sequences: invalid type",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\nbatch_size=0\n",
                "target.batch_size: 0 is out of range",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n[run]\nparallelism=0\n",
                "run.parallelism: 0 is out of range",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n[run]\nretries=-1\n",
                "run.retries: -1 is out of range",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n[run]\nstall_timeout='5 minutes'\n",
                "run.stall_timeout: \"5 minutes\" is not a duration of at least 100ms (expected a whole number and a unit",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n[run]\nstall_timeout='0s'\n",
                "run.stall_timeout: \"0s\" is not a duration of at least 100ms",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n[run]\nstall_timeout=30\n",
                "run.stall_timeout: invalid type",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n[run]\ncheckpoint=false\ncheckpoint_table='x'\n",
                "run.checkpoint_table: set while run.checkpoint = false",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n[run]\ncheckpoint='yes'\n",
                "run.checkpoint: invalid type",
            ),
            (
                "[source]\nurl='mysql://h/d?sslmode=require'\ntable='t'\n[target]\nurl='postgres://h/d'\n",
                "source.url: unknown parameter \"sslmode\" for MySQL",
            ),
            (
                "[source]\nurl='postgres:alice:pw@h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n",
                "source.url: not a URL with a host",
            ),
            (
                "[source]\nurl='postgres:/alice:pw@h/d'\ntable='t'\n[target]\nurl='postgres://h/d'\n",
                "source.url: not a URL with a host",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d?sslpassword=hunter2'\n",
                "target.url: parameter \"sslpassword\" is not supported by stride (encrypted client keys are not supported",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\n[target]\nurl='postgres://h/d?secret_token=hunter2'\n",
                "target.url: unknown parameter \"secret_token\" (expected one of: host,",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='a.b.c'\n[target]\nurl='postgres://h/d'\n",
                "source.table:",
            ),
            (
                "[source]\nurl='postgres://h/d'\ntable='t'\ncolumns=['a','a']\n[target]\nurl='postgres://h/d'\n",
                "source.columns: \"a\" is listed twice",
            ),
        ];
        for (text, expected) in cases {
            let message = err(text);
            assert!(
                message.contains(expected),
                "for job\n{text}\nexpected an error containing {expected:?}, got {message:?}"
            );
        }
    }

    #[test]
    fn toml_errors_give_a_position_and_never_echo_the_line() {
        let text = "[source]\nurl = ${SOURCE_URL}\ntable='t'\n[target]\nurl='postgres://h/d'\n";
        let message = Job::parse(text, env(&[("SOURCE_URL", "postgres://u:hunter2@h/d")]))
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("line 2, column 7:"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn overrides_meet_the_same_checks() {
        let set = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect();
            Job::parse_with_overrides(
                &format!("{MINIMAL}[partition]\ncolumn = 'date'\ncount = 4\n"),
                |_| None,
                &pairs,
            )
        };
        let job = set(&[
            ("partition.lower_bound", "2021-03-01"),
            ("partition.upper_bound", "2021-03-09"),
            ("run.parallelism", "2"),
            ("source.where", "state <> 'Unknown'"),
        ])
        .unwrap();
        assert_eq!(
            job.partition.unwrap().bounds,
            Some(("2021-03-01".into(), "2021-03-09".into()))
        );
        assert_eq!(job.parallelism, Some(2));
        assert_eq!(
            job.source.where_clause.as_deref(),
            Some("state <> 'Unknown'")
        );
        let e = set(&[("partition.cuont", "8")]).unwrap_err().to_string();
        assert!(
            e.starts_with("partition.cuont: unknown field `cuont`"),
            "{e}"
        );
        let e = set(&[("partition.count", "0")]).unwrap_err().to_string();
        assert!(e.starts_with("partition.count: 0 is out of range"), "{e}");
        let e = set(&[("partition.lower_bound", "2021-03-01")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("partition.upper_bound: missing"), "{e}");
    }

    #[test]
    fn interpolation() {
        let e = env(&[("A", "1"), ("EMPTY", "")]);
        assert_eq!(interpolate("x${A}y", &e).unwrap(), "x1y");
        assert_eq!(interpolate("${B:-two}", &e).unwrap(), "two");
        assert_eq!(interpolate("${EMPTY:-dflt}", &e).unwrap(), "dflt");
        assert_eq!(interpolate("${A:-two}", &e).unwrap(), "1");
        assert_eq!(interpolate("$$${A} $x", &e).unwrap(), "$1 $x");
        assert_eq!(interpolate("${B:-}", &e).unwrap(), "");
        let missing = interpolate("a\n${NOPE}", &e).unwrap_err().to_string();
        assert_eq!(
            missing,
            "line 2: environment variable NOPE is not set (expected it set, or a default as ${NOPE:-default})"
        );
        assert!(interpolate("${A", &e)
            .unwrap_err()
            .to_string()
            .contains("unterminated"));
        assert!(interpolate("${A B}", &e)
            .unwrap_err()
            .to_string()
            .contains("holds no variable name"));
        // A stray `${` does not reach into later lines.
        let stray = interpolate("url = \"${SOURCE_URL\"\npw = \"s3cret}\"", &e)
            .unwrap_err()
            .to_string();
        assert!(stray.contains("unterminated"), "{stray}");
        assert!(!stray.contains("s3cret"), "{stray}");
    }

    #[test]
    fn socket_urls_without_a_host_name_are_accepted() {
        // libpq style: an empty host means the default (PGHOST or the local socket).
        assert!(parse_url("source.url", "postgres:///db".into()).is_ok());
    }

    #[test]
    fn url_password_is_redacted_everywhere() {
        let url = DbUrl::new(
            "postgres://alice:s3cret@db.example:5433/prod?password=other&sslmode=require&sslkey=/k&options=-c%20x%3Dhidden",
        );
        let shown = format!("{url} {url:?} {}", url.redacted());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("other"), "{shown}");
        assert!(!shown.contains("hidden"), "{shown}");
        assert!(shown.contains("sslkey=****"), "{shown}");
        assert!(shown.contains("alice:****@db.example:5433/prod"), "{shown}");
        assert!(shown.contains("sslmode=require"), "{shown}");
        assert_eq!(DbUrl::new("postgres://h/d").to_string(), "postgres://h/d");
    }

    #[test]
    fn strategies_and_their_defaults() {
        let parse = |partition: &str, run: &str| {
            Job::parse(
                &format!("[source]\nurl='postgres://h/s'\ntable='t'\n[partition]\n{partition}\n[target]\nurl='postgres://h/t'\n[run]\n{run}"),
                |_| None,
            )
        };
        let at_once = |job: &Job| job.partitions_at_once(job.partition.as_ref().unwrap().count);
        let job = parse("strategy = 'ctid'", "").unwrap();
        assert_eq!(at_once(&job), 4);
        let p = job.partition.unwrap();
        assert_eq!((p.strategy, p.column, p.count), (Strategy::Ctid, None, 16));
        let job = parse("strategy = 'quantile'\ncolumn = 'id'", "parallelism = 3").unwrap();
        assert_eq!(
            (job.partition.as_ref().unwrap().count, at_once(&job)),
            (12, 3)
        );
        let job = parse("strategy = 'quantile'\ncolumn = 'id'\ncount = 2", "").unwrap();
        assert_eq!(at_once(&job), 2);
        // Every strategy runs at most 4 partitions at once unless told otherwise.
        let job = parse("column = 'id'\ncount = 6", "").unwrap();
        assert_eq!((job.parallelism, at_once(&job)), (None, 4));
        assert_eq!(job.partition.unwrap().strategy, Strategy::Stride);
        let job = parse("column = 'id'\ncount = 6", "parallelism = 6").unwrap();
        assert_eq!(at_once(&job), 6);
        let job = parse("column = 'id'\ncount = 2", "parallelism = 6").unwrap();
        assert_eq!(at_once(&job), 2);
        for (partition, error) in [
            (
                "strategy = 'ctid'\ncolumn = 'id'",
                "partition.column: \"id\" is set, but strategy \"ctid\"",
            ),
            ("strategy = 'quantile'", "partition.column: missing"),
            ("count = 2", "partition.column: missing"),
            (
                "strategy = 'ctid'\nlower_bound = 1\nupper_bound = 2",
                "partition.lower_bound: bounds set the stride",
            ),
            ("strategy = 'sideways'\ncolumn = 'id'", "partition.strategy"),
        ] {
            let e = parse(partition, "").unwrap_err().to_string();
            assert!(e.contains(error), "{partition}: {e}");
        }
    }
}

#[cfg(test)]
mod pattern_entry_tests {
    use super::*;

    const HEAD: &str = "[source]\nurl = \"postgres://s/db\"\n[target]\nurl = \"postgres://t/db\"\n";

    fn parse(body: &str) -> Result<JobSet, JobError> {
        JobSet::parse(&format!("{HEAD}{body}"), |_| None, &[])
    }

    fn name(schema: &str, name: &str) -> QualifiedName {
        QualifiedName {
            schema: Some(schema.to_string()),
            name: name.to_string(),
        }
    }

    #[test]
    fn a_pattern_expands_where_it_stands_with_its_keys() {
        let mut set = parse(
            "[run]\ntables = \"concurrent\"\nparallelism = 6\n\
             [[tables]]\ntable = \"orders\"\n\
             [[tables]]\ntable = \"public.*\"\nexclude = [\"public.audit_*\"]\n[tables.target]\nmode = \"truncate\"\n\
             [[tables]]\ntable = \"notes\"\n",
        )
        .unwrap();
        assert_eq!(set.jobs.len(), 2);
        assert_eq!(set.patterns.len(), 1);
        assert_eq!(set.patterns[0].pattern.text, "public.*");
        assert_eq!(set.patterns[0].exclude[0].text, "public.audit_*");
        set.expand(&[vec![name("public", "actor"), name("public", "film")]])
            .unwrap();
        let tables: Vec<String> = set
            .jobs
            .iter()
            .map(|j| j.target.table.to_string())
            .collect();
        assert_eq!(
            tables,
            [
                "\"orders\"",
                "\"public\".\"actor\"",
                "\"public\".\"film\"",
                "\"notes\""
            ]
        );
        assert_eq!(set.jobs[1].target.mode, Mode::Truncate);
        assert_eq!(set.jobs[0].target.mode, Mode::Append);
        assert!(set.jobs[1].partition.is_none());
        // Six connections shared by the four tables once they are known.
        assert!(set.jobs.iter().all(|j| j.parallelism == Some(1)));
    }

    #[test]
    fn a_pattern_refuses_what_cannot_mean_the_same_for_every_table() {
        for (body, message) in [
            (
                "[[tables]]\ntable = \"public.*\"\n[tables.partition]\ncolumn = \"id\"\n",
                "tables[0].partition: not allowed with a pattern table (expected only table, exclude, target: each matched table is copied whole, as one partition)",
            ),
            (
                "[[tables]]\ntable = \"public.*\"\nwhere = \"id > 0\"\n",
                "tables[0].where: not allowed with a pattern table (expected only table, exclude, target: each matched table is copied whole, as one partition)",
            ),
            (
                "[partition]\ncolumn = \"id\"\n[[tables]]\ntable = \"public.*\"\n",
                "tables[0]: [partition] applies to a pattern (expected no [partition] in a file whose [[tables]] use patterns: each matched table is copied whole, as one partition)",
            ),
            (
                "[[tables]]\ntable = \"public.*\"\n[tables.target]\ntable = \"copy\"\n",
                "tables[0].target.table: set for a pattern (expected none: each matched table goes to the target table of the same name)",
            ),
            (
                "[[tables]]\ntable = \"orders\"\nexclude = [\"x\"]\n",
                "tables[0].exclude: set for a table that is not a pattern (expected table = \"schema.*\" or another pattern with * or ?)",
            ),
            (
                "[[tables]]\ntable = \"a.b.*\"\n",
                "tables[0].table: \"a.b.*\" has more than two parts (expected schema.name or name, with * and ?)",
            ),
            (
                "[[tables]]\ntable = \"public.*\"\n[tables.target]\nmode = \"sideways\"\n",
                "tables[0]: target.mode: unknown variant `sideways`, expected one of `append`, `truncate`, `upsert`, `error-if-exists`, `replace`, `overwrite`",
            ),
        ] {
            assert_eq!(parse(body).unwrap_err().to_string(), message, "{body}");
        }
    }

    #[test]
    fn a_pattern_matching_nothing_or_a_table_twice_is_refused() {
        let mut set = parse("[[tables]]\ntable = \"sales.order_*\"\n").unwrap();
        assert_eq!(
            set.expand(&[vec![]]).unwrap_err().to_string(),
            "tables[0].table: \"sales.order_*\" matches no table of the source (expected a pattern matching at least one table; views, materialized views, foreign tables and partitions are not matched)"
        );
        let mut set =
            parse("[[tables]]\ntable = \"public.*\"\n[[tables]]\ntable = \"public.f*\"\n").unwrap();
        assert_eq!(
            set.expand(&[
                vec![name("public", "actor"), name("public", "film")],
                vec![name("public", "film")]
            ])
            .unwrap_err()
            .to_string(),
            "tables: \"public\".\"film\" is the target of two entries (matched by tables[0]) (matched by tables[1]) (expected each table in one entry: add it to the pattern's exclude)"
        );
    }
}
