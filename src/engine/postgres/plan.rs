//! PostgreSQL's plan: from a validated job and the source's columns to the
//! exact SQL each partition runs on PostgreSQL's own route (binary COPY
//! between two PostgreSQL servers). Pure: the catalogue facts it needs are
//! passed in, so every statement it renders is unit-tested without a database.

use serde::Serialize;

use super::catalog::{Column, UniqueKeys};
use crate::error::JobError;
use crate::job::{Job, Lookback, Mode, OnConflict, Relation, Verify};
use crate::partition::{
    block_predicate, describe_blocks, predicate, ranges_between, stride_ranges, KeyRange, KeyType,
};
pub(crate) use crate::plan::{enclose, where_clause};
pub use crate::plan::{
    parse_bounds, strategy, within_read, within_window, Bounds, BoundsOrigin, Cut, Key, Plan,
    PlannedPartition, Reread, Transfer, Window,
};
use crate::sql::{quote_ident, quote_literal, QualifiedName};

/// COPY's data format for the whole partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyFormat {
    Binary,
    Text,
}

/// The `FROM` item for the source: the quoted table, or the query as a subquery.
pub fn source_from(relation: &Relation) -> String {
    match relation {
        Relation::Table(name) => name.to_string(),
        Relation::Query(query) => format!("{} AS {}", enclose(query), quote_ident("source")),
    }
}

/// The `FROM` item every query over the source reads, and the user's `where`
/// left to apply to it. With `sample` or `limit` the source is a slice: a
/// subquery that samples the table (`TABLESAMPLE BERNOULLI ... REPEATABLE (0)`,
/// so every query of the run picks the same rows), applies `where`, and keeps the
/// first `limit` rows in a total order (the partition column, then the row's
/// place), so each partition's query sees the same slice.
pub fn reading(job: &Job) -> (String, Option<&str>) {
    let source = &job.source;
    let user = source.where_clause.as_deref();
    if source.sample.is_none() && source.limit.is_none() {
        return (source_from(&source.relation), user);
    }
    // An alias no column of the user's query is likely to share, so the whole-row
    // tiebreak below means the row.
    let alias = quote_ident("stride_slice");
    let sample = source.sample.map_or_else(String::new, |f| {
        format!(" TABLESAMPLE BERNOULLI ({}) REPEATABLE (0)", f * 100.0)
    });
    let (from, tiebreak) = match &source.relation {
        Relation::Table(name) => (
            format!("{name} AS {alias}{sample}"),
            format!("{alias}.tableoid, {alias}.ctid"),
        ),
        Relation::Query(query) => (
            format!("{} AS {alias}", enclose(query)),
            format!("ROW({alias}.*)::text"),
        ),
    };
    let limit = source.limit.map_or_else(String::new, |n| {
        let order = match job.partition.as_ref().and_then(|p| p.column.as_ref()) {
            Some(column) => format!("{}, {tiebreak}", quote_ident(column)),
            None => tiebreak,
        };
        format!(" ORDER BY {order} LIMIT {n}")
    });
    (
        format!(
            "(SELECT * FROM {from}{}{limit}) AS {alias}",
            where_clause(user, None)
        ),
        None,
    )
}

/// The columns the job copies, checked against the source's.
pub fn resolve_columns(job: &Job, source: &[Column]) -> Result<Vec<Column>, JobError> {
    match &job.source.columns {
        None => Ok(source.to_vec()),
        Some(names) => names
            .iter()
            .map(|name| {
                source.iter().find(|c| &c.name == name).cloned().ok_or_else(|| {
                    JobError::new(format!(
                        "source.columns: column \"{name}\" does not exist in the source (expected one of: {})",
                        column_list(source)
                    ))
                })
            })
            .collect(),
    }
}

fn column_list(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The partition column and its key type, checked against the source's columns.
pub fn resolve_key(job: &Job, source: &[Column]) -> Result<Option<Key>, JobError> {
    job.partition
        .as_ref()
        .and_then(|spec| spec.column.as_ref())
        .map(|column| key_column("partition.column", "partition", column, source))
        .transpose()
}

/// The incremental column and its key type, checked against the source's columns.
pub fn resolve_incremental(job: &Job, source: &[Column]) -> Result<Option<Key>, JobError> {
    job.incremental
        .as_ref()
        .map(|inc| {
            key_column(
                "incremental.column",
                "hold a high-water mark",
                &inc.column,
                source,
            )
        })
        .transpose()
}

/// `incremental.lookback` in the mark column's encoding: a count of values of
/// an integer column, days of a date, microseconds of a timestamp (0 without
/// one). A duration for an integer column, a count for a date or timestamp, or
/// a duration that is not whole days for a date is refused, naming the key.
pub fn lookback(job: &Job, mark: &Key) -> Result<i64, JobError> {
    let Some(lookback) = job.incremental.as_ref().and_then(|inc| inc.lookback) else {
        return Ok(0);
    };
    let column = &mark.column;
    let integer = matches!(mark.key_type, KeyType::Int2 | KeyType::Int4 | KeyType::Int8);
    match (lookback, mark.key_type) {
        (Lookback::Count(n), _) if integer => Ok(n),
        (Lookback::Count(n), key_type) => Err(JobError::new(format!(
            "incremental.lookback: {n} is a number, and column \"{column}\" is a {} (expected a duration such as \"2 days\", \"36h\" or \"90m\")",
            key_type.sql_name()
        ))),
        (Lookback::Duration(d), key_type) if integer => Err(JobError::new(format!(
            "incremental.lookback: {} is a duration, and column \"{column}\" is an integer ({}) (expected a whole number of at least 0: how many values below the mark are read again)",
            show_duration(d),
            key_type.sql_name()
        ))),
        (Lookback::Duration(d), KeyType::Date) => {
            let seconds = d.as_secs();
            if d.subsec_nanos() != 0 || !seconds.is_multiple_of(86_400) {
                return Err(JobError::new(format!(
                    "incremental.lookback: {} is not a whole number of days, and column \"{column}\" is a date (expected days, such as \"2 days\")",
                    show_duration(d)
                )));
            }
            Ok(i64::try_from(seconds / 86_400).unwrap_or(i64::MAX))
        }
        // Microseconds: beyond i64 it reaches below every timestamp anyway.
        (Lookback::Duration(d), _) => Ok(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
    }
}

/// A look-back duration as the job file may write it: `2 days`, `36h`, `90m`.
fn show_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    let (n, unit) = match ms {
        0 => (0, "s"),
        _ if ms.is_multiple_of(86_400_000) => (ms / 86_400_000, " days"),
        _ if ms.is_multiple_of(3_600_000) => (ms / 3_600_000, "h"),
        _ if ms.is_multiple_of(60_000) => (ms / 60_000, "m"),
        _ if ms.is_multiple_of(1_000) => (ms / 1_000, "s"),
        _ => (ms, "ms"),
    };
    let unit = if n == 1 && unit == " days" {
        " day"
    } else {
        unit
    };
    format!("\"{n}{unit}\"")
}

/// Column `name` of the source as a key: `what` it cannot do otherwise goes in the message.
fn key_column(field: &str, what: &str, name: &str, source: &[Column]) -> Result<Key, JobError> {
    let column = source.iter().find(|c| c.name == name).ok_or_else(|| {
        JobError::new(format!(
            "{field}: column \"{name}\" does not exist in the source (expected one of: {})",
            column_list(source)
        ))
    })?;
    // A domain partitions as the type it is over.
    let key_type = KeyType::from_pg(column.domain_over.as_deref().unwrap_or(&column.type_name))
        .ok_or_else(|| {
        JobError::new(format!(
            "{field}: column \"{}\" is of type {}, which cannot {what} (expected smallint, integer, bigint, date, timestamp or timestamptz)",
            column.name, column.type_name
        ))
    })?;
    Ok(Key {
        column: column.name.clone(),
        key_type,
    })
}

/// The query reading the smallest and largest key as `i64` values in the key's
/// encoding (days or microseconds since 1970-01-01 for dates and timestamps).
/// Infinite dates and timestamps are left out: they still land in the first or last
/// partition, they just do not stretch the stride. Timestamps are converted by
/// whole days plus the time of day, exact to the microsecond (`extract(epoch ...)`
/// alone goes through floating point on older servers).
pub fn bounds_sql(job: &Job, key: &Key) -> String {
    let c = quote_ident(&key.column);
    let (aggregate, encode) = match key.key_type {
        KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => ("min({c}), max({c})", "{x}::int8"),
        KeyType::Date => (
            "min({c}) FILTER (WHERE isfinite({c})), max({c}) FILTER (WHERE isfinite({c}))",
            "({x} - DATE '1970-01-01')::int8",
        ),
        KeyType::Timestamp => (
            "min({c}) FILTER (WHERE isfinite({c})), max({c}) FILTER (WHERE isfinite({c}))",
            "({x}::date - DATE '1970-01-01')::int8 * 86400000000 + (extract(epoch FROM {x}::time) * 1000000)::int8",
        ),
        KeyType::Timestamptz => (
            "min({c}) FILTER (WHERE isfinite({c})) AT TIME ZONE 'UTC', max({c}) FILTER (WHERE isfinite({c})) AT TIME ZONE 'UTC'",
            "({x}::date - DATE '1970-01-01')::int8 * 86400000000 + (extract(epoch FROM {x}::time) * 1000000)::int8",
        ),
    };
    let aggregate = aggregate.replace("{c}", &c);
    format!(
        "SELECT {}, {} FROM (SELECT {aggregate} FROM {}{}) AS {}(lo, hi)",
        encode.replace("{x}", "lo"),
        encode.replace("{x}", "hi"),
        reading(job).0,
        where_clause(reading(job).1, None),
        quote_ident("bounds"),
    )
}

/// Every row the job reads, in one query: what the coverage check counts, the
/// row estimate covers and the job's own SQL is checked with.
pub fn whole_select(job: &Job, columns: &[Column]) -> String {
    build(job, columns, None, None).whole_select
}

impl Plan {
    /// Points the target side of every partition (what verify compares and
    /// repair deletes) at `table`: a replace's staging table, which the run fills.
    pub fn retarget(&mut self, table: &QualifiedName) {
        let select_list = quoted_list(&self.columns);
        for p in &mut self.partitions {
            p.target_select = format!(
                "SELECT {select_list} FROM {table}{}",
                where_clause(None, p.target_predicate.clone())
            );
        }
    }

    /// Restricts the target side of every partition (what verify compares and
    /// repair deletes) to `condition` as well: an incremental run's window, since the
    /// target also holds the rows of earlier runs.
    pub fn restrict_target(&mut self, condition: &str, table: &QualifiedName) {
        for p in &mut self.partitions {
            p.target_predicate = Some(match &p.target_predicate {
                Some(range) => format!("{range} AND {condition}"),
                None => condition.to_string(),
            });
        }
        self.retarget(table);
    }

    /// Adds an incremental run's re-read range (`Window::reread`, on the mark
    /// column `mark`) as one more partition, the last: its source query reads the
    /// range from the job's source (`job` without the window), and its target
    /// side is the same range of the mark column, which append mode deletes in
    /// the partition's transaction before writing the rows again. One partition
    /// whatever the strategy: the range is a range of values, which block ranges
    /// (ctid) cannot delete on the target, and a resumed or retried partition
    /// replaces it as a whole. Nothing for a window without a re-read range.
    pub fn add_reread(&mut self, job: &Job, mark: &Key, window: &Window, lookback: i64) {
        let column = quote_ident(&mark.column);
        let (Some(condition), Some(describe)) = (
            window.reread_condition(&column, mark.key_type, lookback),
            window.describe_reread(lookback, mark.key_type),
        ) else {
            return;
        };
        let select_list = quoted_list(&self.columns);
        let (from, user) = reading(job);
        self.partitions.push(PlannedPartition {
            index: self.partitions.len(),
            range: KeyRange {
                lower: None,
                upper: None,
            },
            describe: format!("re-read {describe}"),
            select: format!(
                "SELECT {select_list} FROM {from}{}",
                where_clause(user, Some(condition.clone()))
            ),
            target_select: format!(
                "SELECT {select_list} FROM {}{}",
                job.target.table,
                where_clause(None, Some(condition.clone()))
            ),
            target_predicate: Some(condition),
        });
        self.reread = Some(match job.target.mode {
            Mode::Upsert => Reread::Upserted,
            _ => Reread::Replaced,
        });
    }

    /// The re-read partition, if the plan has one.
    pub fn reread_partition(&self) -> Option<&PlannedPartition> {
        self.partitions.last().filter(|_| self.reread.is_some())
    }

    /// Whether each partition's rows can be found on the target by its range
    /// (not with block ranges): what verify per partition and repair need.
    pub fn partitions_comparable(&self) -> bool {
        !matches!(self.cut, Cut::Ctid { .. })
    }

    /// What verify compares: the partitions, or with block ranges the whole of
    /// what the job reads against the whole target (within an incremental
    /// window, which every partition's target side carries).
    /// An upserted re-read range is left out (see [`Reread::Upserted`]).
    pub fn compared(&self) -> Vec<PlannedPartition> {
        let upserted = |p: &PlannedPartition| {
            self.reread == Some(Reread::Upserted)
                && self.reread_partition().is_some_and(|r| r.index == p.index)
        };
        if self.partitions_comparable() {
            return self
                .partitions
                .iter()
                .filter(|p| !upserted(p))
                .cloned()
                .collect();
        }
        let first = &self.partitions[0];
        let whole = PlannedPartition {
            index: 0,
            range: KeyRange {
                lower: None,
                upper: None,
            },
            describe: "all blocks, as a whole".to_string(),
            select: self.whole_select.clone(),
            target_predicate: first.target_predicate.clone(),
            target_select: first.target_select.clone(),
        };
        // The re-read range is a range of values, compared as such.
        std::iter::once(whole)
            .chain(self.reread_partition().filter(|p| !upserted(p)).cloned())
            .collect()
    }

    /// Largest over smallest of `estimates` (each at least 1 row), the skew a
    /// plan shows before copying; `None` for fewer than two partitions.
    pub fn spread(estimates: &[i64]) -> Option<f64> {
        if estimates.len() < 2 {
            return None;
        }
        let max = estimates.iter().copied().max()?.max(1);
        let min = estimates.iter().copied().min()?.max(1);
        Some(max as f64 / min as f64)
    }
}

/// Builds the plan of the stride strategy. `bounds` are the job's, or the
/// source's min/max when the job has none (`None` there: an empty source, copied
/// as one partition).
pub fn build(job: &Job, columns: &[Column], key: Option<Key>, bounds: Option<Bounds>) -> Plan {
    build_cut(job, columns, key, bounds, Cut::Stride)
}

/// Builds the plan of any strategy: the ranges come from `cut` (with `bounds`
/// for the stride strategy).
pub fn build_cut(
    job: &Job,
    columns: &[Column],
    key: Option<Key>,
    bounds: Option<Bounds>,
    cut: Cut,
) -> Plan {
    let requested = job.partition.as_ref().map_or(1, |p| p.count);
    let whole = || {
        vec![KeyRange {
            lower: None,
            upper: None,
        }]
    };
    let ranges = match (&cut, &key, &bounds) {
        (Cut::Stride, Some(_), Some(b)) if b.lower < b.upper => {
            stride_ranges(b.lower, b.upper, requested)
        }
        (Cut::Quantile { boundaries, .. }, Some(_), _) => ranges_between(boundaries),
        (Cut::Ctid { blocks }, _, _) if *blocks > 1 => stride_ranges(0, *blocks, requested),
        _ => whole(),
    };
    let (from, user) = reading(job);
    let select_list = columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let partitions = ranges
        .into_iter()
        .enumerate()
        .map(|(index, range)| {
            // A block range has no meaning on the target: there, a partition is
            // not told apart (verify compares the whole table instead).
            let (pred, target_pred, describe) = match (&cut, &key) {
                (Cut::Ctid { .. }, _) => (block_predicate(&range), None, describe_blocks(&range)),
                (_, Some(k)) => {
                    let pred = predicate(&quote_ident(&k.column), k.key_type, &range);
                    (pred.clone(), pred, range.describe(k.key_type))
                }
                (_, None) => (None, None, "all rows".to_string()),
            };
            let select = format!(
                "SELECT {select_list} FROM {from}{}",
                where_clause(user, pred)
            );
            let target_select = format!(
                "SELECT {select_list} FROM {}{}",
                job.target.table,
                where_clause(None, target_pred.clone())
            );
            PlannedPartition {
                index,
                range,
                describe,
                select,
                target_predicate: target_pred,
                target_select,
            }
        })
        .collect();
    Plan {
        columns: columns.iter().map(|c| c.name.clone()).collect(),
        key,
        bounds,
        cut,
        whole_select: format!(
            "SELECT {select_list} FROM {from}{}",
            where_clause(user, None)
        ),
        requested_partitions: requested,
        partitions,
        reread: None,
    }
}

/// The SQL of a key value in its `i64` encoding (days or microseconds since
/// 1970-01-01 for dates and timestamps), from an expression of the key's type.
fn encoded(key_type: KeyType, x: &str) -> String {
    match key_type {
        KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => format!("{x}::int8"),
        KeyType::Date => format!("({x} - DATE '1970-01-01')::int8"),
        KeyType::Timestamp => format!(
            "({x}::date - DATE '1970-01-01')::int8 * 86400000000 + (extract(epoch FROM {x}::time) * 1000000)::int8"
        ),
        KeyType::Timestamptz => {
            let utc = format!("({x} AT TIME ZONE 'UTC')");
            format!(
                "({utc}::date - DATE '1970-01-01')::int8 * 86400000000 + (extract(epoch FROM {utc}::time) * 1000000)::int8"
            )
        }
    }
}

/// A condition that holds for finite values (infinite dates and timestamps
/// cannot be encoded; they land in the first or last partition all the same).
fn finite(key_type: KeyType, x: &str) -> String {
    match key_type {
        KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => format!("{x} IS NOT NULL"),
        _ => format!("isfinite({x})"),
    }
}

/// The planner's statistics of the key column of a table source: NULL
/// fraction, most common values (encoded) with their frequencies, histogram
/// bounds (encoded), and how many rows changed since the last ANALYZE relative
/// to the table's size. One row, or none without statistics. A partitioned
/// table's are those of all its partitions' rows (`inherited`).
pub fn statistics_sql(table: &QualifiedName, key: &Key) -> String {
    let t = key.key_type.sql_name();
    // Infinite values become NULL, so the common values keep their frequencies' order.
    let array = |column: &str| {
        format!(
            "ARRAY(SELECT CASE WHEN {} THEN {} END FROM unnest(s.{column}::text::{t}[]) WITH ORDINALITY AS u(v, i) ORDER BY i)",
            finite(key.key_type, "v"),
            encoded(key.key_type, "v"),
        )
    };
    let schema = match &table.schema {
        Some(schema) => quote_literal(schema),
        None => "current_schema()".to_string(),
    };
    format!(
        "SELECT s.null_frac::float8, {}, coalesce(s.most_common_freqs, '{{}}')::float8[], {},          coalesce(u.n_mod_since_analyze::float8 / greatest(c.reltuples, 1)::float8, 1)          FROM pg_stats s          JOIN pg_namespace n ON n.nspname = s.schemaname          JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.tablename          LEFT JOIN pg_stat_user_tables u ON u.relid = c.oid          WHERE s.schemaname = {schema} AND s.tablename = {} AND s.attname = {} AND s.inherited = (c.relkind = 'p')",
        array("most_common_vals"),
        array("histogram_bounds"),
        quote_literal(&table.name),
        quote_literal(&key.column),
    )
}

/// A sample of the key's values, encoded, NULLs as NULL: `TABLESAMPLE BERNOULLI`
/// of `percent` of a table's rows (row by row: whole blocks of a clustered table would skew it), or every row when `percent` is `None` (a
/// query, a view, a small table, or a source that is a slice already).
pub fn sample_sql(job: &Job, key: &Key, percent: Option<f64>) -> String {
    let c = quote_ident(&key.column);
    // REPEATABLE: the same rows each time, so `plan` shows the boundaries a run
    // over the same data will use.
    let sample = percent.map_or_else(String::new, |p| {
        format!(" TABLESAMPLE BERNOULLI ({p}) REPEATABLE (0)")
    });
    format!(
        "SELECT CASE WHEN {} THEN {} END FROM {}{sample}{}",
        finite(key.key_type, &c),
        encoded(key.key_type, &c),
        reading(job).0,
        where_clause(reading(job).1, None),
    )
}

/// Weighted points of a column's distribution from the planner's statistics:
/// each common value with its frequency, and the rest of the non-NULL rows
/// spread evenly over the histogram's buckets (each bucket as eight points
/// across its width). Returns the points sorted by value and the weight of
/// NULLs (infinite common values count with them: they cannot be encoded).
pub fn statistics_points(
    null_frac: f64,
    common: &[(Option<i64>, f64)],
    histogram: &[i64],
) -> (Vec<(i64, f64)>, f64) {
    const PER_BUCKET: i32 = 8;
    let mut nulls = null_frac.max(0.0);
    let mut points = Vec::new();
    let mut common_weight = 0.0;
    for &(value, freq) in common {
        common_weight += freq;
        match value {
            Some(v) => points.push((v, freq)),
            None => nulls += freq,
        }
    }
    let buckets = histogram.len().saturating_sub(1);
    if buckets > 0 {
        let rest = (1.0 - null_frac - common_weight).max(0.0);
        let each = rest / buckets as f64 / f64::from(PER_BUCKET);
        for pair in histogram.windows(2) {
            let (lo, hi) = (i128::from(pair[0]), i128::from(pair[1]));
            for i in 0..PER_BUCKET {
                let v = lo + (hi - lo) * i128::from(i) / i128::from(PER_BUCKET);
                points.push((i64::try_from(v).expect("between two i64 values"), each));
            }
        }
    }
    points.sort_by_key(|p| p.0);
    (points, nulls)
}

/// The number of blocks of a table, for the ctid strategy (read inside the
/// run's snapshot: rows visible there lie in blocks that existed then).
pub fn blocks_sql(table: &QualifiedName) -> String {
    format!(
        "SELECT (pg_relation_size({}::regclass) / current_setting('block_size')::int8)::int8",
        quote_literal(&table.to_string())
    )
}

/// How the source reads a column whose type changes on the way. Text COPY and
/// the row path read the same expression, so both hand the target the same text,
/// and the target ends with the value PostgreSQL's assignment cast gives, or the
/// row fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// The column as it is: its text form, which the target's input function
    /// reads as the cast's value or refuses (int8 into int4: the digits, or "out
    /// of range").
    AsIs,
    /// Cast on the source to this type (the target's, without modifier), whose
    /// text form the target reads back unchanged: where the target's input would
    /// read the source's text form as another value than the cast gives (real
    /// into double precision: "0.1" is not the real 0.1) or not at all (money).
    Cast(String),
    /// A whole number within bigint's range as its digits, anything else as its
    /// own text form, which an integer column refuses: the cast would round a
    /// fraction away, and "5.00" or "1e+06" would fail although they fit.
    WholeNumber,
}

/// How a source column's values become the target column's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversion {
    pub read: Read,
    /// What `check` says of the column: where values may fail or round.
    pub note: Option<String>,
}

/// How a conversion is read, in the table below.
#[derive(Clone, Copy)]
enum Via {
    AsIs,
    /// Cast on the source to the target's type.
    Cast,
    WholeNumber,
}

const FITS: &str = "fails on values that do not fit {to}";
const WHOLE: &str =
    "fails on values with a fraction (the cast would round them) or that do not fit {to}";
const ROUNDS: &str = "rounds to {to}'s precision, as the cast does";

/// Every conversion between different built-in types that stride makes, checked
/// against PostgreSQL 15: each gives the value of the server's assignment cast,
/// or fails the row. `{to}` in a note is the target type. Both sessions run in
/// UTC (`pg`), which decides time zones. Any type into a string type is not
/// listed: it is read as the cast to that type on the source.
const CONVERSIONS: &[(&str, &str, Via, &str)] = &[
    ("smallint", "integer", Via::AsIs, ""),
    ("smallint", "bigint", Via::AsIs, ""),
    ("smallint", "numeric", Via::AsIs, ""),
    ("smallint", "real", Via::AsIs, ""),
    ("smallint", "double precision", Via::AsIs, ""),
    ("integer", "smallint", Via::AsIs, FITS),
    ("integer", "bigint", Via::AsIs, ""),
    ("integer", "numeric", Via::AsIs, ""),
    ("integer", "real", Via::AsIs, ROUNDS),
    ("integer", "double precision", Via::AsIs, ""),
    ("integer", "money", Via::AsIs, ""),
    ("bigint", "smallint", Via::AsIs, FITS),
    ("bigint", "integer", Via::AsIs, FITS),
    ("bigint", "numeric", Via::AsIs, ""),
    ("bigint", "real", Via::AsIs, ROUNDS),
    ("bigint", "double precision", Via::AsIs, ROUNDS),
    ("bigint", "money", Via::AsIs, FITS),
    ("numeric", "smallint", Via::WholeNumber, WHOLE),
    ("numeric", "integer", Via::WholeNumber, WHOLE),
    ("numeric", "bigint", Via::WholeNumber, WHOLE),
    // numeric's cast into a float reads numeric's text form: the same thing.
    ("numeric", "real", Via::AsIs, "rounds to real's precision, as the cast does; fails on values out of its range"),
    ("numeric", "double precision", Via::AsIs, "rounds to double precision's precision, as the cast does; fails on values out of its range"),
    ("numeric", "money", Via::AsIs, "rounds to the currency's fraction digits, as the cast does; fails on values that do not fit money"),
    ("real", "smallint", Via::WholeNumber, WHOLE),
    ("real", "integer", Via::WholeNumber, WHOLE),
    ("real", "bigint", Via::WholeNumber, WHOLE),
    ("real", "double precision", Via::Cast, ""),
    ("double precision", "smallint", Via::WholeNumber, WHOLE),
    ("double precision", "integer", Via::WholeNumber, WHOLE),
    ("double precision", "bigint", Via::WholeNumber, WHOLE),
    ("double precision", "real", Via::Cast, "rounds to real's precision, as the cast does; fails on values out of its range"),
    ("money", "numeric", Via::Cast, ""),
    ("date", "timestamp without time zone", Via::AsIs, "fails on dates after 294276 AD"),
    ("date", "timestamp with time zone", Via::AsIs, "fails on dates after 294276 AD"),
    ("timestamp without time zone", "timestamp with time zone", Via::AsIs, ""),
    ("timestamp without time zone", "date", Via::AsIs, "keeps only the date, as the cast does"),
    ("timestamp without time zone", "time without time zone", Via::AsIs, "keeps only the time of day, as the cast does; fails on infinity"),
    ("timestamp with time zone", "timestamp without time zone", Via::AsIs, ""),
    ("timestamp with time zone", "date", Via::AsIs, "keeps only the date (in UTC), as the cast does"),
    ("timestamp with time zone", "time without time zone", Via::AsIs, "keeps only the time of day (in UTC), as the cast does; fails on infinity"),
    ("timestamp with time zone", "time with time zone", Via::AsIs, "keeps only the time of day (in UTC), as the cast does; fails on infinity"),
    ("time without time zone", "interval", Via::AsIs, ""),
    ("time without time zone", "time with time zone", Via::AsIs, ""),
    ("time with time zone", "time without time zone", Via::AsIs, "drops the UTC offset, as the cast does"),
    ("cidr", "inet", Via::AsIs, ""),
    ("inet", "cidr", Via::AsIs, "fails on addresses with bits set right of the netmask (the cast would clear them)"),
    ("bit", "bit varying", Via::AsIs, ""),
    ("bit varying", "bit", Via::AsIs, "fails on values whose length is not the column's"),
    ("macaddr", "macaddr8", Via::AsIs, ""),
    ("json", "jsonb", Via::AsIs, "normalized as jsonb (of repeated keys, the last is kept), as the cast does"),
    ("jsonb", "json", Via::AsIs, ""),
];

/// Assignment casts stride refuses, and why: the cast would not keep the value.
const REFUSED: &[(&str, &str, &str)] = &[
    ("real", "numeric", "PostgreSQL's cast keeps only 6 significant digits of a real (16777216 becomes 16777200), so the value would change (expected a real or double precision target column, or a source query that casts the column itself)"),
    ("double precision", "numeric", "PostgreSQL's cast keeps only 15 significant digits of a double precision (9007199254740992 becomes 9007199254740990), so the value would change (expected a double precision target column, or a source query that casts the column itself)"),
    ("interval", "time without time zone", "PostgreSQL's cast keeps an interval's time of day modulo 24 hours (1 day 02:00:00 becomes 02:00:00, 24:00:00 becomes 00:00:00), so the value would change (expected an interval target column, or a source query that casts the column itself)"),
];

/// Built-in string types: any value can be cast into them.
const STRING_TYPES: &[&str] = &["text", "character varying", "character", "name"];

/// How a non-array `from` becomes a non-array `to` (both without modifier).
fn scalar_conversion(from: &str, to: &str) -> Result<(Via, Option<String>), String> {
    if let Some((.., why)) = REFUSED.iter().find(|(f, t, _)| *f == from && *t == to) {
        return Err((*why).to_string());
    }
    CONVERSIONS
        .iter()
        .find(|(f, t, ..)| *f == from && *t == to)
        .map(|(.., via, note)| (*via, (!note.is_empty()).then(|| note.replace("{to}", to))))
        .ok_or_else(|| {
            "stride converts only where PostgreSQL's cast keeps the value or fails (docs/JOB.md lists the conversions)".to_string()
        })
}

/// The type a string target is cast to on the source: its own when built in
/// (a domain's base type), else text, which its input then reads.
fn string_cast(target: &Column) -> String {
    let base = target.domain_over.as_deref().unwrap_or(&target.base_type);
    let element = target.element_type.as_deref().unwrap_or(base);
    let cast = if STRING_TYPES.contains(&element) {
        unconstrained(element)
    } else {
        "text".to_string()
    };
    match target.element_type {
        Some(_) => format!("{cast}[]"),
        None => cast,
    }
}

/// What `check` says of a string target: a length it enforces, or name's cut.
fn string_note(target: &Column) -> Option<String> {
    let element = target.element_type.as_deref().unwrap_or(&target.base_type);
    if element == "name" {
        return Some("cut to 63 bytes, as the cast does".to_string());
    }
    (target.type_name != target.base_type && target.type_name.contains('('))
        .then(|| format!("fails on values longer than {}", target.type_name))
}

/// How `source` becomes `target` when their types differ, or why it cannot: the
/// value of PostgreSQL's assignment cast or a failed row, whichever method
/// copies it. A string target takes any type, as the cast into it on the
/// source; a user-defined type (an enum) passes as text into a type of the
/// same name.
pub fn conversion(source: &Column, target: &Column) -> Result<Conversion, String> {
    let string_elements = target
        .element_type
        .as_deref()
        .is_some_and(|e| STRING_TYPES.contains(&e));
    if (target.category == "S" && target.element_type.is_none())
        || (string_elements && source.element_type.is_some())
    {
        return Ok(Conversion {
            read: Read::Cast(string_cast(target)),
            note: string_note(target),
        });
    }
    let (from, to, array) = match (&source.element_type, &target.element_type) {
        (Some(from), Some(to)) => (from.as_str(), to.as_str(), true),
        (None, None) => (source.base_type.as_str(), target.base_type.as_str(), false),
        _ => return Err("an array and a non-array type do not convert".to_string()),
    };
    if from == to {
        return Ok(Conversion {
            read: Read::AsIs,
            note: None,
        });
    }
    let (via, note) = scalar_conversion(from, to)?;
    let read = match (via, array) {
        (Via::AsIs, _) => Read::AsIs,
        (Via::Cast, false) => Read::Cast(unconstrained(to)),
        (Via::Cast, true) => Read::Cast(format!("{}[]", unconstrained(to))),
        (Via::WholeNumber, false) => Read::WholeNumber,
        // Element by element, the target reads each element's text form.
        (Via::WholeNumber, true) => {
            return Ok(Conversion {
                read: Read::AsIs,
                note: Some(format!(
                    "fails on elements written with a fraction or an exponent (5.00, 1e+06) or that do not fit {to}"
                )),
            })
        }
    };
    Ok(Conversion { read, note })
}

/// How `source` travels into `target`: binary when both are the same built-in
/// type; text when [`conversion`] converts it; otherwise not at all.
pub fn transfer(source: &Column, target: &Column) -> Transfer {
    if source.type_oid == target.type_oid && source.is_builtin_type() {
        return Transfer::Binary;
    }
    match conversion(source, target) {
        Ok(_) => Transfer::Text,
        Err(_) => Transfer::Incompatible,
    }
}

/// How the source reads each copied column for the target: as it is where it
/// passes through (or is created from the source), else as [`conversion`] says.
pub fn reads(copied: &[Column], target: Option<&[Column]>) -> Vec<Read> {
    copied
        .iter()
        .map(|c| {
            let t = target.and_then(|t| t.iter().find(|t| t.name == c.name));
            match t {
                Some(t) if transfer(c, t) == Transfer::Text => {
                    conversion(c, t).map(|conv| conv.read).unwrap_or(Read::AsIs)
                }
                _ => Read::AsIs,
            }
        })
        .collect()
}

/// A partition's source query with each column read as `reads` says: unchanged
/// when every column is read as it is (binary COPY stays untouched), else
/// wrapped in a query of the same column names that both methods read.
pub fn converted_select(select: &str, columns: &[String], reads: &[Read]) -> String {
    if reads.iter().all(|r| *r == Read::AsIs) {
        return select.to_string();
    }
    let list = columns
        .iter()
        .zip(reads)
        .map(|(c, read)| {
            let c = quote_ident(c);
            match read {
                Read::AsIs => c,
                Read::Cast(ty) => format!("{c}::{ty} AS {c}"),
                // The bounds are bigint's, exact in every numeric and float type.
                Read::WholeNumber => format!(
                    "CASE WHEN {c} = trunc({c}) AND {c} >= -9223372036854775808 AND {c} < 9223372036854775808 THEN {c}::int8::text ELSE {c}::text END AS {c}"
                ),
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {list} FROM ({select}) AS {}",
        quote_ident("partition")
    )
}

/// The copied columns that the existing target computes itself (`GENERATED
/// ALWAYS AS (...) STORED` there): the copy leaves them out and the target
/// fills them. A job whose `source.columns` names one is refused: that column
/// cannot be written.
pub fn computed_in_target(
    job: &Job,
    copied: &[Column],
    target: &[Column],
) -> Result<Vec<String>, JobError> {
    let computed: Vec<String> = copied
        .iter()
        .filter(|c| target.iter().any(|t| t.name == c.name && t.generated))
        .map(|c| c.name.clone())
        .collect();
    if let (Some(name), Some(_)) = (computed.first(), &job.source.columns) {
        return Err(JobError::new(format!(
            "source.columns: column \"{name}\" is a generated column in the target {}, which computes it and cannot take a copied value (expected source.columns without it: the target fills it)",
            job.target.table
        )));
    }
    Ok(computed)
}

/// Everything that keeps an existing target from taking the copied columns, each
/// naming its column: missing or incompatible columns, generated columns (they
/// cannot be written), and NOT NULL columns without a default that the copy
/// leaves out (every row would fail).
pub fn target_problems(copied: &[Column], target: &[Column]) -> Vec<String> {
    let mut problems = Vec::new();
    for column in copied {
        match target.iter().find(|t| t.name == column.name) {
            None => problems.push(format!("column \"{}\" is missing", column.name)),
            Some(t) if t.generated => problems.push(format!(
                "column \"{}\" is a generated column in the target and cannot be written",
                column.name
            )),
            Some(t) if transfer(column, t) == Transfer::Incompatible => problems.push(format!(
                "column \"{}\": source type {} cannot be written as {}: {}",
                column.name,
                column.type_name,
                t.type_name,
                conversion(column, t).err().unwrap_or_default()
            )),
            Some(_) => {}
        }
    }
    for t in target {
        let copied_too = copied.iter().any(|c| c.name == t.name);
        if !copied_too && t.not_null && !t.has_default && !t.generated {
            problems.push(format!(
                "column \"{}\" of the target is NOT NULL without a default, and the copy does not fill it",
                t.name
            ));
        }
    }
    problems
}

/// The format the copy uses: binary only when every column passes through.
pub fn copy_format(transfers: &[Transfer]) -> CopyFormat {
    if transfers.iter().all(|t| *t == Transfer::Binary) {
        CopyFormat::Binary
    } else {
        CopyFormat::Text
    }
}

fn format_option(format: CopyFormat) -> &'static str {
    match format {
        CopyFormat::Binary => " (FORMAT binary)",
        CopyFormat::Text => "",
    }
}

/// `COPY (select) TO STDOUT`, the source side of a partition.
pub fn copy_out_sql(select: &str, format: CopyFormat) -> String {
    format!("COPY ({select}) TO STDOUT{}", format_option(format))
}

/// `COPY table (columns) FROM STDIN`, the target side of a partition.
pub fn copy_in_sql(table: &QualifiedName, columns: &[String], format: CopyFormat) -> String {
    format!(
        "COPY {table} ({}) FROM STDIN{}",
        quoted_list(columns),
        format_option(format)
    )
}

pub(crate) fn quoted_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Row count and (for `Verify::Checksum`) an order-independent checksum of a
/// query's rows: the sum of a 64-bit hash of each row's text form, so row order
/// does not matter and a doubled row does. Both sides run with the same session
/// settings, so equal values have equal text.
pub fn verify_sql(select: &str, verify: Verify) -> String {
    let row = quote_ident("stride_verify_row");
    let checksum = match verify {
        Verify::Checksum => {
            format!("coalesce(sum(hashtextextended({row}::text, 0)::numeric), 0)::text")
        }
        Verify::Count | Verify::None => "''".to_string(),
    };
    format!("SELECT count(*)::int8, {checksum} FROM ({select}) AS {row}")
}

/// Empties a partition's range on the target, before `verify --repair` copies it again.
pub fn delete_range_sql(table: &QualifiedName, partition: &PlannedPartition) -> String {
    format!(
        "DELETE FROM {table}{}",
        where_clause(None, partition.target_predicate.clone())
    )
}

/// A partition's rows by key, for comparing source and target row by row: each
/// row's key as the text of `ROW(key columns)` (NULLs included, never NULL
/// itself) and, for a checksum, the row's hash as `verify_sql` sums it (0 when
/// only counting). Sorted by the key's bytes (`COLLATE "C"`), so the two sides
/// come in one order whatever their collations, and client code can merge them.
pub fn key_rows_sql(select: &str, key: &[String], verify: Verify) -> String {
    let row = quote_ident("stride_verify_row");
    let key_text = format!(
        "ROW({})::text",
        key.iter()
            .map(|k| format!("{row}.{}", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let hash = match verify {
        Verify::Checksum => format!("hashtextextended({row}::text, 0)"),
        Verify::Count | Verify::None => "0::int8".to_string(),
    };
    format!(
        "SELECT {key_text}, {hash} FROM ({select}) AS {row} ORDER BY {key_text} COLLATE \"C\", 2"
    )
}

/// `alias.c1, alias.c2, ...`: the columns, quoted, of one side of a join.
fn qualified_list(alias: &str, columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| format!("{alias}.{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ROW(alias.c, ...)::text`: a row's text form, which equal values share.
fn row_text(alias: &str, columns: &[String]) -> String {
    format!("ROW({})::text", qualified_list(alias, columns))
}

/// `a.k1 = b.k1 AND a.k2 = b.k2`: the key matched between two aliases.
fn key_match(a: &str, b: &str, key: &[String]) -> String {
    key.iter()
        .map(|k| format!("{a}.{0} = {b}.{0}", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `verify --repair` by key: moves the staged rows of a partition that are
/// missing from the target or differ there (by the text of every copied column)
/// into it, and leaves rows already equal alone (no new row version, no trigger).
/// A staged row whose key is in the target updates that row; the target's other
/// rows are not touched.
pub fn repair_merge_sql(
    target: &QualifiedName,
    stage: &QualifiedName,
    columns: &[String],
    key: &[String],
) -> String {
    let (s, t) = (quote_ident("stride_source"), quote_ident("stride_target"));
    let staged = qualified_list(&s, columns);
    format!(
        "INSERT INTO {target} ({}) OVERRIDING SYSTEM VALUE SELECT {staged} FROM {stage} AS {s} WHERE NOT EXISTS (SELECT FROM {target} AS {t} WHERE {} AND {} = {}) {}",
        quoted_list(columns),
        key_match(&t, &s, key),
        row_text(&t, columns),
        row_text(&s, columns),
        on_conflict_sql(key, columns, OnConflict::Update),
    )
}

/// Staged rows with a NULL in the key: no target row can match them (NULL equals
/// nothing, and a unique index lets NULLs repeat), so a repair by key would add
/// them again each time.
pub fn null_keys_sql(stage: &QualifiedName, key: &[String]) -> String {
    format!(
        "SELECT count(*)::int8 FROM {stage} WHERE {}",
        key.iter()
            .map(|k| format!("{} IS NULL", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" OR ")
    )
}

/// `verify --repair --delete-extra` by key: deletes the target's rows in the
/// partition's range (`predicate`: `None` is every row) whose key is not among
/// the staged rows of the source's partition.
pub fn delete_extra_sql(
    target: &QualifiedName,
    stage: &QualifiedName,
    key: &[String],
    predicate: Option<&str>,
) -> String {
    let s = quote_ident("stride_source");
    let absent = format!(
        "NOT EXISTS (SELECT FROM {stage} AS {s} WHERE {})",
        key_match(&s, &target.to_string(), key)
    );
    format!(
        "DELETE FROM {target} WHERE {}",
        match predicate {
            Some(p) => format!("{p} AND {absent}"),
            None => absent,
        }
    )
}

/// The row path's source query: every column as its exact text form (the session
/// settings in `pg` fix DateStyle, TimeZone, IntervalStyle, bytea and float output).
pub fn rows_select_sql(select: &str, columns: &[String]) -> String {
    let cols = columns
        .iter()
        .map(|c| format!("{0}::text AS {0}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {cols} FROM ({select}) AS {}",
        quote_ident("partition")
    )
}

/// A type name without modifier that also means "any length": `character` and
/// `bit` without a length mean length 1, so they are cast through `bpchar` and
/// `varbit`, and the column's own length is enforced by the assignment.
fn unconstrained(base_type: &str) -> String {
    let (element, array) = match base_type.strip_suffix("[]") {
        Some(element) => (element, "[]"),
        None => (base_type, ""),
    };
    match element {
        "character" => format!("bpchar{array}"),
        "bit" => format!("varbit{array}"),
        _ => base_type.to_string(),
    }
}

/// The row path's statement: one `INSERT` per batch, one `text[]` parameter per
/// column, unnested in step and cast to the target's types by the target. A batch
/// of any size is one statement with as many parameters as columns, far from the
/// protocol's 65,535-parameter limit.
///
/// `columns` pairs each name with its target type WITHOUT modifier: an explicit
/// cast to `varchar(3)` would silently truncate, while the INSERT's own assignment
/// to the column enforces the modifier and fails, as COPY does. `OVERRIDING SYSTEM
/// VALUE` lets copied values into identity columns, as COPY does too.
pub fn insert_sql(table: &QualifiedName, columns: &[(String, String)]) -> String {
    let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
    let casts = columns
        .iter()
        .map(|(n, ty)| format!("{}::{}", quote_ident(n), unconstrained(ty)))
        .collect::<Vec<_>>()
        .join(", ");
    let params = (1..=columns.len())
        .map(|i| format!("${i}::text[]"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE SELECT {casts} FROM unnest({params}) AS {}({})",
        quoted_list(&names),
        quote_ident("batch"),
        quoted_list(&names)
    )
}

/// `CREATE TABLE` for a missing target, from the source's column definitions
/// (names, types with modifiers, NOT NULL), with `primary_key` (an upsert's
/// key: `ON CONFLICT` needs a unique index on it) when given.
pub fn create_table_sql(
    table: &QualifiedName,
    columns: &[Column],
    primary_key: Option<&[String]>,
) -> String {
    let mut defs: Vec<String> = columns
        .iter()
        .map(|c| {
            let not_null = if c.not_null { " NOT NULL" } else { "" };
            format!("{} {}{not_null}", quote_ident(&c.name), c.type_name)
        })
        .collect();
    if let Some(key) = primary_key {
        defs.push(format!("PRIMARY KEY ({})", quoted_list(key)));
    }
    format!("CREATE TABLE {table} ({})", defs.join(", "))
}

/// The key an upsert matches rows by: `target.key`, else the target's primary
/// key. Its columns must be copied, and an existing target needs a unique index
/// or constraint on exactly those columns, since `ON CONFLICT (key)` finds its
/// arbiter that way. A target that does not exist yet has no primary key to
/// default to: then `target.key` is required and becomes its primary key.
/// `target` is `None` for a missing table; `Ok(None)` outside upsert mode.
pub fn upsert_key(
    job: &Job,
    copied: &[Column],
    target: Option<&UniqueKeys>,
) -> Result<Option<Vec<String>>, JobError> {
    let Some(upsert) = &job.target.upsert else {
        return Ok(None);
    };
    let table = &job.target.table;
    let key = match (&upsert.key, target) {
        (Some(key), _) => key.clone(),
        (None, Some(UniqueKeys { primary_key: Some(pk), .. })) => pk.clone(),
        (None, Some(_)) => {
            return Err(JobError::new(format!(
                "target.key: not set, and {table} has no primary key to default to (expected target.key = [\"column\", ...] naming columns with a unique index in the target)"
            )))
        }
        (None, None) => {
            return Err(JobError::new(format!(
                "target.key: not set, and {table} does not exist yet, and the source has no primary key (a table's, every column of it copied) to default to (expected target.key = [\"column\", ...]; the table is then created with it as its primary key)"
            )))
        }
    };
    for name in &key {
        if !copied.iter().any(|c| &c.name == name) {
            return Err(JobError::new(format!(
                "target.key: column \"{name}\" is not among the copied columns (expected some of: {})",
                column_list(copied)
            )));
        }
    }
    if let Some(keys) = target {
        let same_set =
            |index: &Vec<String>| index.len() == key.len() && index.iter().all(|c| key.contains(c));
        if !keys.unique.iter().any(same_set) {
            let known = keys
                .unique
                .iter()
                .map(|k| format!("({})", k.join(", ")))
                .collect::<Vec<_>>()
                .join(", ");
            let known = if known.is_empty() {
                "it has none".to_string()
            } else {
                format!("it has {known}")
            };
            return Err(JobError::new(format!(
                "target.key: {table} has no unique index or constraint on exactly ({}), which ON CONFLICT needs ({known}; expected target.key naming the columns of a primary key or a non-partial, non-deferrable unique index)",
                key.join(", ")
            )));
        }
    }
    Ok(Some(key))
}

/// The `ON CONFLICT` clause of an upsert: every copied column outside the key
/// takes the source row's value, or nothing happens (`skip`, or a key that is
/// every copied column: there is nothing else to update).
pub fn on_conflict_sql(key: &[String], columns: &[String], on_conflict: OnConflict) -> String {
    let updates: Vec<String> = columns
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
        .collect();
    let action = if on_conflict == OnConflict::Skip || updates.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    format!("ON CONFLICT ({}) {action}", quoted_list(key))
}

/// The temporary table an upsert's COPY fills, one per partition transaction
/// (each partition has a connection of its own). Qualified by `pg_temp`, so no
/// table of that name in the search path can be taken for it.
pub fn stage_table() -> QualifiedName {
    QualifiedName {
        schema: Some("pg_temp".to_string()),
        name: "stride_stage".to_string(),
    }
}

/// The staging table: the target's copied columns with the target's types (and
/// modifiers), no constraints or defaults, dropped when the transaction ends.
pub fn create_stage_sql(
    stage: &QualifiedName,
    target: &QualifiedName,
    columns: &[String],
) -> String {
    format!(
        "CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {} FROM {target} WITH NO DATA",
        quoted_list(columns)
    )
}

/// Moves a partition's staged rows into the target in one statement.
/// `OVERRIDING SYSTEM VALUE` lets copied values into identity columns, as COPY does.
pub fn merge_sql(
    target: &QualifiedName,
    stage: &QualifiedName,
    columns: &[String],
    on_conflict: &str,
) -> String {
    let list = quoted_list(columns);
    format!(
        "INSERT INTO {target} ({list}) OVERRIDING SYSTEM VALUE SELECT {list} FROM {stage} {on_conflict}"
    )
}

/// Sets a sequence past the largest value of the column it feeds, only ever
/// forward: nothing happens on an empty table or when the sequence is already
/// past (`is_called` false means `last_value` itself is still to be handed out).
/// Returns the value set, or no row.
pub fn reset_sequence_sql(table: &QualifiedName, column: &str, sequence: &QualifiedName) -> String {
    format!(
        "SELECT setval({}::regclass, c.m) FROM (SELECT max({})::int8 AS m FROM {table}) AS c, {sequence} AS s \
         WHERE c.m > s.last_value OR (c.m = s.last_value AND NOT s.is_called)",
        quote_literal(&sequence.to_string()),
        quote_ident(column),
    )
}

#[cfg(test)]
mod tests {
    use super::lookback as lookback_of;
    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            type_name: ty.into(),
            base_type: ty.into(),
            type_oid: 23,
            element_type: None,
            category: "N".into(),
            not_null: false,
            generated: false,
            has_default: false,
            domain_over: None,
        }
    }

    fn job(extra: &str) -> Job {
        let text = format!(
            "[source]\nurl='postgres://h/s'\ntable='public.covid_cases'\n{extra}\n[target]\nurl='postgres://h/t'\n"
        );
        Job::parse(&text, |_| None).unwrap()
    }

    fn job_with_partition(partition: &str) -> Job {
        let text = format!(
            "[source]\nurl='postgres://h/s'\ntable='public.covid_cases'\nwhere=\"state <> 'Unknown'\"\n[partition]\n{partition}\n[target]\nurl='postgres://h/t'\n"
        );
        Job::parse(&text, |_| None).unwrap()
    }

    fn source() -> Vec<Column> {
        vec![
            col("id", "bigint"),
            col("state", "text"),
            col("date", "date"),
            col("Mixed Case", "integer"),
        ]
    }

    #[test]
    fn worked_example_from_the_readme() {
        let job = job_with_partition("column='id'\nlower_bound=0\nupper_bound=1000\ncount=10");
        let key = resolve_key(&job, &source()).unwrap().unwrap();
        let bounds = parse_bounds(&job, &key).unwrap();
        let plan = build(&job, &source()[..2], Some(key), bounds);
        let selects: Vec<&str> = plan.partitions.iter().map(|p| p.select.as_str()).collect();
        assert_eq!(selects.len(), 10);
        assert_eq!(
            selects[0],
            "SELECT \"id\", \"state\" FROM \"public\".\"covid_cases\" WHERE (state <> 'Unknown') AND (\"id\" < '100'::int8 OR \"id\" IS NULL)"
        );
        assert_eq!(
            selects[1],
            "SELECT \"id\", \"state\" FROM \"public\".\"covid_cases\" WHERE (state <> 'Unknown') AND (\"id\" >= '100'::int8 AND \"id\" < '200'::int8)"
        );
        assert_eq!(
            selects[9],
            "SELECT \"id\", \"state\" FROM \"public\".\"covid_cases\" WHERE (state <> 'Unknown') AND \"id\" >= '900'::int8"
        );
    }

    #[test]
    fn columns_the_target_generates_are_left_out_unless_listed() {
        let generated = |name: &str| Column {
            generated: true,
            ..col(name, "numeric")
        };
        let source = vec![
            col("id", "bigint"),
            col("length", "integer"),
            col("hours", "numeric"),
        ];
        // Generated on the target only; generated on the source only (a plain
        // column on the target) is copied like any other.
        let target = vec![
            col("id", "bigint"),
            col("length", "integer"),
            generated("hours"),
        ];
        assert_eq!(
            computed_in_target(&job(""), &source, &target).unwrap(),
            vec!["hours".to_string()]
        );
        let plain_target = vec![
            col("id", "bigint"),
            col("length", "integer"),
            col("hours", "numeric"),
        ];
        let source_generated = vec![
            col("id", "bigint"),
            col("length", "integer"),
            generated("hours"),
        ];
        assert!(
            computed_in_target(&job(""), &source_generated, &plain_target)
                .unwrap()
                .is_empty()
        );
        // Listed without it: nothing to leave out.
        let listed = job("columns = ['id', 'length']");
        assert!(computed_in_target(&listed, &source[..2], &target)
            .unwrap()
            .is_empty());
        let named = job("columns = ['id', 'hours']");
        let copied = vec![col("id", "bigint"), col("hours", "numeric")];
        assert_eq!(
            computed_in_target(&named, &copied, &target).unwrap_err().to_string(),
            "source.columns: column \"hours\" is a generated column in the target \"public\".\"covid_cases\", which computes it and cannot take a copied value (expected source.columns without it: the target fills it)"
        );
    }

    #[test]
    fn no_partition_section_is_one_partition_of_every_row() {
        let plan = build(&job(""), &source(), None, None);
        assert_eq!(plan.partitions.len(), 1);
        assert_eq!(
            plan.partitions[0].select,
            "SELECT \"id\", \"state\", \"date\", \"Mixed Case\" FROM \"public\".\"covid_cases\""
        );
        assert_eq!(plan.partitions[0].describe, "all rows");
    }

    #[test]
    fn empty_source_without_bounds_is_one_partition() {
        let job = job_with_partition("column='id'\ncount=4");
        let key = resolve_key(&job, &source()).unwrap();
        let plan = build(&job, &source(), key, None);
        assert_eq!(plan.partitions.len(), 1);
        assert_eq!(plan.requested_partitions, 4);
    }

    #[test]
    fn query_source_is_a_subquery() {
        let text = "[source]\nurl='postgres://h/s'\nquery='SELECT * FROM t WHERE x > 1;'\n[target]\nurl='postgres://h/t'\ntable='t2'\n";
        let job = Job::parse(text, |_| None).unwrap();
        assert_eq!(
            source_from(&job.source.relation),
            "(SELECT * FROM t WHERE x > 1) AS \"source\""
        );
    }

    #[test]
    fn date_key_and_bound_errors() {
        let job = job_with_partition(
            "column='date'\nlower_bound='2021-02-20'\nupper_bound='2021-02-28'\ncount=4",
        );
        let key = resolve_key(&job, &source()).unwrap().unwrap();
        assert_eq!(key.key_type, KeyType::Date);
        let plan = build(
            &job,
            &source(),
            Some(key.clone()),
            parse_bounds(&job, &key).unwrap(),
        );
        assert_eq!(plan.partitions.len(), 4);
        assert!(plan.partitions[0]
            .select
            .ends_with("AND (\"date\" < '2021-02-22'::date OR \"date\" IS NULL)"));
        assert!(plan.partitions[3]
            .select
            .ends_with("AND \"date\" >= '2021-02-26'::date"));

        let bad = job_with_partition(
            "column='date'\nlower_bound='2021-13-45'\nupper_bound='2021-02-28'\ncount=4",
        );
        let e = parse_bounds(&bad, &key).unwrap_err().to_string();
        assert!(e.starts_with("partition.lower_bound: "), "{e}");
        assert!(e.contains("2021-13-45"), "{e}");

        let reversed = job_with_partition(
            "column='date'\nlower_bound='2021-03-01'\nupper_bound='2021-02-28'\ncount=4",
        );
        let e = parse_bounds(&reversed, &key).unwrap_err().to_string();
        assert_eq!(e, "partition.lower_bound: 2021-03-01 is not below upper_bound 2021-02-28 (expected lower_bound < upper_bound)");
        let equal = job_with_partition(
            "column='date'\nlower_bound='2021-03-01'\nupper_bound='2021-03-01'\ncount=4",
        );
        assert!(parse_bounds(&equal, &key).is_err());
    }

    #[test]
    fn key_and_column_errors_name_the_key() {
        let missing = job_with_partition("column='nope'\ncount=2");
        let e = resolve_key(&missing, &source()).unwrap_err().to_string();
        assert!(
            e.starts_with("partition.column: column \"nope\" does not exist"),
            "{e}"
        );
        let text_key = job_with_partition("column='state'\ncount=2");
        let e = resolve_key(&text_key, &source()).unwrap_err().to_string();
        assert!(e.contains("is of type text, which cannot partition"), "{e}");
        let cols = job("columns = ['id', 'ghost']");
        let e = resolve_columns(&cols, &source()).unwrap_err().to_string();
        assert!(
            e.starts_with("source.columns: column \"ghost\" does not exist"),
            "{e}"
        );
        let ok = job("columns = ['Mixed Case', 'id']");
        let names: Vec<String> = resolve_columns(&ok, &source())
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Mixed Case", "id"]);
    }

    #[test]
    fn user_sql_keeps_its_precedence_and_comments() {
        let text = "[source]\nurl='postgres://h/s'\nquery='SELECT * FROM t -- all of it'\nwhere='a = 1 OR b = 2 -- either'\n[partition]\ncolumn='id'\nlower_bound=0\nupper_bound=10\ncount=2\n[target]\nurl='postgres://h/t'\ntable='t2'\n";
        let job = Job::parse(text, |_| None).unwrap();
        let key = resolve_key(&job, &source()).unwrap();
        let bounds = parse_bounds(&job, key.as_ref().unwrap()).unwrap();
        let plan = build(&job, &source()[..1], key, bounds);
        assert_eq!(
            plan.partitions[1].select,
            "SELECT \"id\" FROM (SELECT * FROM t -- all of it\n) AS \"source\" WHERE (a = 1 OR b = 2 -- either\n) AND \"id\" >= '5'::int8"
        );
    }

    #[test]
    fn verify_and_repair_statements() {
        let job = job_with_partition("column='id'\nlower_bound=0\nupper_bound=1000\ncount=10");
        let key = resolve_key(&job, &source()).unwrap().unwrap();
        let bounds = parse_bounds(&job, &key).unwrap();
        let plan = build(&job, &source()[..2], Some(key), bounds);
        let p = &plan.partitions[1];
        assert_eq!(
            p.target_select,
            "SELECT \"id\", \"state\" FROM \"public\".\"covid_cases\" WHERE (\"id\" >= '100'::int8 AND \"id\" < '200'::int8)"
        );
        assert_eq!(
            delete_range_sql(&job.target.table, p),
            "DELETE FROM \"public\".\"covid_cases\" WHERE (\"id\" >= '100'::int8 AND \"id\" < '200'::int8)"
        );
        assert_eq!(
            verify_sql("SELECT 1", Verify::Count),
            "SELECT count(*)::int8, '' FROM (SELECT 1) AS \"stride_verify_row\""
        );
        assert_eq!(
            verify_sql("SELECT 1", Verify::Checksum),
            "SELECT count(*)::int8, coalesce(sum(hashtextextended(\"stride_verify_row\"::text, 0)::numeric), 0)::text FROM (SELECT 1) AS \"stride_verify_row\""
        );
        // The user's where filters the source only: the target holds the filtered rows.
        assert!(plan.partitions[0].select.contains("state <> 'Unknown'"));
        assert!(!plan.partitions[0].target_select.contains("Unknown"));
    }

    #[test]
    fn repair_by_key_statements() {
        let target = QualifiedName {
            schema: Some("public".into()),
            name: "t".into(),
        };
        let stage = stage_table();
        let columns: Vec<String> = vec!["id".into(), "region".into(), "v".into()];
        let key: Vec<String> = vec!["id".into(), "region".into()];
        assert_eq!(
            key_rows_sql("SELECT 1", &key, Verify::Checksum),
            "SELECT ROW(\"stride_verify_row\".\"id\", \"stride_verify_row\".\"region\")::text, hashtextextended(\"stride_verify_row\"::text, 0) FROM (SELECT 1) AS \"stride_verify_row\" ORDER BY ROW(\"stride_verify_row\".\"id\", \"stride_verify_row\".\"region\")::text COLLATE \"C\", 2"
        );
        assert_eq!(
            key_rows_sql("SELECT 1", &key[..1], Verify::Count),
            "SELECT ROW(\"stride_verify_row\".\"id\")::text, 0::int8 FROM (SELECT 1) AS \"stride_verify_row\" ORDER BY ROW(\"stride_verify_row\".\"id\")::text COLLATE \"C\", 2"
        );
        assert_eq!(
            repair_merge_sql(&target, &stage, &columns, &key),
            "INSERT INTO \"public\".\"t\" (\"id\", \"region\", \"v\") OVERRIDING SYSTEM VALUE SELECT \"stride_source\".\"id\", \"stride_source\".\"region\", \"stride_source\".\"v\" FROM \"pg_temp\".\"stride_stage\" AS \"stride_source\" WHERE NOT EXISTS (SELECT FROM \"public\".\"t\" AS \"stride_target\" WHERE \"stride_target\".\"id\" = \"stride_source\".\"id\" AND \"stride_target\".\"region\" = \"stride_source\".\"region\" AND ROW(\"stride_target\".\"id\", \"stride_target\".\"region\", \"stride_target\".\"v\")::text = ROW(\"stride_source\".\"id\", \"stride_source\".\"region\", \"stride_source\".\"v\")::text) ON CONFLICT (\"id\", \"region\") DO UPDATE SET \"v\" = EXCLUDED.\"v\""
        );
        // A key of every column: nothing to update, a differing row is a missing one.
        assert!(repair_merge_sql(&target, &stage, &key, &key)
            .ends_with("ON CONFLICT (\"id\", \"region\") DO NOTHING"));
        assert_eq!(
            null_keys_sql(&stage, &key),
            "SELECT count(*)::int8 FROM \"pg_temp\".\"stride_stage\" WHERE \"id\" IS NULL OR \"region\" IS NULL"
        );
        assert_eq!(
            delete_extra_sql(
                &target,
                &stage,
                &key[..1],
                Some("(\"id\" >= '100'::int8 AND \"id\" < '200'::int8)")
            ),
            "DELETE FROM \"public\".\"t\" WHERE (\"id\" >= '100'::int8 AND \"id\" < '200'::int8) AND NOT EXISTS (SELECT FROM \"pg_temp\".\"stride_stage\" AS \"stride_source\" WHERE \"stride_source\".\"id\" = \"public\".\"t\".\"id\")"
        );
        assert_eq!(
            delete_extra_sql(&target, &stage, &key[..1], None),
            "DELETE FROM \"public\".\"t\" WHERE NOT EXISTS (SELECT FROM \"pg_temp\".\"stride_stage\" AS \"stride_source\" WHERE \"stride_source\".\"id\" = \"public\".\"t\".\"id\")"
        );
    }

    #[test]
    fn bounds_queries() {
        let job = job_with_partition("column='date'\ncount=2");
        let key = Key {
            column: "date".into(),
            key_type: KeyType::Date,
        };
        assert_eq!(
            bounds_sql(&job, &key),
            "SELECT (lo - DATE '1970-01-01')::int8, (hi - DATE '1970-01-01')::int8 FROM (SELECT min(\"date\") FILTER (WHERE isfinite(\"date\")), max(\"date\") FILTER (WHERE isfinite(\"date\")) FROM \"public\".\"covid_cases\" WHERE (state <> 'Unknown')) AS \"bounds\"(lo, hi)"
        );
        let key = Key {
            column: "id".into(),
            key_type: KeyType::Int4,
        };
        assert!(bounds_sql(&job, &key)
            .starts_with("SELECT lo::int8, hi::int8 FROM (SELECT min(\"id\"), max(\"id\") FROM"));
    }

    #[test]
    fn transfers() {
        let typed = |ty: &str, oid: i64, category: &str, element: Option<&str>| Column {
            type_oid: oid,
            category: category.into(),
            element_type: element.map(String::from),
            ..col("c", ty)
        };
        let int4 = typed("integer", 23, "N", None);
        let int8 = typed("bigint", 20, "N", None);
        let numeric = typed("numeric", 1700, "N", None);
        let text = typed("text", 25, "S", None);
        let varchar = typed("character varying", 1043, "S", None);
        let date = typed("date", 1082, "D", None);
        let ts = typed("timestamp without time zone", 1114, "D", None);
        let int4s = typed("integer[]", 1007, "A", Some("integer"));
        let int8s = typed("bigint[]", 1016, "A", Some("bigint"));
        let texts = typed("text[]", 1009, "A", Some("text"));
        let mood = typed("mood", 16_500, "E", None);
        let cases = [
            (&int4, &int4, Transfer::Binary),
            (&int4, &int8, Transfer::Text),
            (&int8, &int4, Transfer::Text),
            (&numeric, &int4, Transfer::Text),
            (&int4, &numeric, Transfer::Text),
            (&varchar, &text, Transfer::Text),
            (&int4, &text, Transfer::Text),
            (&text, &int4, Transfer::Incompatible),
            (&date, &ts, Transfer::Text),
            (&ts, &date, Transfer::Text),
            (&int4s, &int8s, Transfer::Text),
            (&int8s, &int4s, Transfer::Text),
            (&int4s, &texts, Transfer::Text),
            (&int4s, &text, Transfer::Text),
            (&int4, &int4s, Transfer::Incompatible),
            // A user type passes as text when the target has a type of the same name.
            (&mood, &mood, Transfer::Text),
            (&mood, &int4, Transfer::Incompatible),
            (&mood, &text, Transfer::Text),
        ];
        for (source, target, expected) in cases {
            assert_eq!(
                transfer(source, target),
                expected,
                "{} into {}",
                source.type_name,
                target.type_name
            );
        }
    }

    /// A column of built-in type `ty` (without modifier unless `type_name` has one).
    fn typed(ty: &str, category: &str) -> Column {
        let (base, element) = match ty.strip_suffix("[]") {
            Some(e) => (ty.to_string(), Some(e.to_string())),
            None => (ty.split('(').next().unwrap().to_string(), None),
        };
        Column {
            type_name: ty.into(),
            base_type: base,
            type_oid: 1,
            element_type: element,
            category: category.into(),
            ..col("c", ty)
        }
    }

    /// Each pair of the issue's list, and the string targets: how the source
    /// reads it and what `check` says, or why it is refused.
    #[test]
    fn conversions_read_the_cast_or_fail() {
        let ok = |from: &str, to: &str, cat: &str| {
            conversion(&typed(from, "X"), &typed(to, cat))
                .unwrap_or_else(|e| panic!("{from} into {to}: {e}"))
        };
        let cases: [(&str, &str, &str, Read, Option<&str>); 17] = [
            ("bigint", "integer", "N", Read::AsIs, Some("fails on values that do not fit integer")),
            ("numeric", "integer", "N", Read::WholeNumber, Some("fails on values with a fraction (the cast would round them) or that do not fit integer")),
            ("double precision", "integer", "N", Read::WholeNumber, Some("fails on values with a fraction (the cast would round them) or that do not fit integer")),
            ("money", "numeric", "N", Read::Cast("numeric".into()), None),
            ("real", "double precision", "N", Read::Cast("double precision".into()), None),
            ("timestamp with time zone", "date", "D", Read::AsIs, Some("keeps only the date (in UTC), as the cast does")),
            ("inet", "cidr", "I", Read::AsIs, Some("fails on addresses with bits set right of the netmask (the cast would clear them)")),
            ("bit", "bit varying", "V", Read::AsIs, None),
            ("integer", "bigint", "N", Read::AsIs, None),
            // Into string types: the cast on the source, so `true`, not `t`.
            ("boolean", "text", "S", Read::Cast("text".into()), None),
            ("inet", "character varying", "S", Read::Cast("character varying".into()), None),
            ("character", "character(3)", "S", Read::Cast("bpchar".into()), Some("fails on values longer than character(3)")),
            ("boolean", "name", "S", Read::Cast("name".into()), Some("cut to 63 bytes, as the cast does")),
            ("boolean[]", "text", "S", Read::Cast("text".into()), None),
            ("boolean[]", "text[]", "A", Read::Cast("text[]".into()), None),
            ("real[]", "double precision[]", "A", Read::Cast("double precision[]".into()), None),
            ("numeric[]", "integer[]", "A", Read::AsIs, Some("fails on elements written with a fraction or an exponent (5.00, 1e+06) or that do not fit integer")),
        ];
        for (from, to, cat, read, note) in cases {
            let got = ok(from, to, cat);
            assert_eq!(got.read, read, "{from} into {to}");
            assert_eq!(got.note.as_deref(), note, "{from} into {to}");
        }
        let refused = [
            (
                "double precision",
                "numeric",
                "PostgreSQL's cast keeps only 15 significant digits",
            ),
            (
                "real",
                "numeric",
                "PostgreSQL's cast keeps only 6 significant digits",
            ),
            (
                "interval",
                "time without time zone",
                "PostgreSQL's cast keeps an interval's time of day modulo 24 hours",
            ),
            (
                "text",
                "integer",
                "stride converts only where PostgreSQL's cast keeps the value or fails",
            ),
            // No assignment cast: int2 into money would take two.
            ("smallint", "money", "stride converts only"),
            (
                "integer",
                "integer[]",
                "an array and a non-array type do not convert",
            ),
            (
                "text",
                "integer[]",
                "an array and a non-array type do not convert",
            ),
        ];
        for (from, to, why) in refused {
            let cat = if to.ends_with("[]") { "A" } else { "N" };
            let e = conversion(&typed(from, "X"), &typed(to, cat)).expect_err(from);
            assert!(e.starts_with(why), "{from} into {to}: {e}");
        }
    }

    /// Every pair of the table is named once, and none is also refused.
    #[test]
    fn the_conversion_table_is_consistent() {
        for (i, (from, to, ..)) in CONVERSIONS.iter().enumerate() {
            assert_ne!(from, to);
            assert!(
                !CONVERSIONS[i + 1..]
                    .iter()
                    .any(|(f, t, ..)| f == from && t == to),
                "{from} into {to} twice"
            );
            assert!(!REFUSED.iter().any(|(f, t, _)| f == from && t == to));
        }
    }

    #[test]
    fn converted_selects_read_the_same_text_for_both_methods() {
        let cols = vec!["id".to_string(), "m".to_string(), "n".to_string()];
        // Nothing to convert: the partition's query is left as it is.
        assert_eq!(
            converted_select("SELECT 1", &cols, &[Read::AsIs, Read::AsIs, Read::AsIs]),
            "SELECT 1"
        );
        let select = converted_select(
            "SELECT \"id\", \"m\", \"n\" FROM t",
            &cols,
            &[Read::AsIs, Read::Cast("numeric".into()), Read::WholeNumber],
        );
        assert_eq!(
            select,
            "SELECT \"id\", \"m\"::numeric AS \"m\", CASE WHEN \"n\" = trunc(\"n\") AND \"n\" >= -9223372036854775808 AND \"n\" < 9223372036854775808 THEN \"n\"::int8::text ELSE \"n\"::text END AS \"n\" FROM (SELECT \"id\", \"m\", \"n\" FROM t) AS \"partition\""
        );
        // The row path reads the converted query's columns as text.
        assert_eq!(
            rows_select_sql(&select, &cols[..1]),
            format!("SELECT \"id\"::text AS \"id\" FROM ({select}) AS \"partition\"")
        );
    }

    #[test]
    fn copy_and_insert_statements() {
        let t = QualifiedName::parse("public.\"Target T\"").unwrap();
        let cols = vec!["id".to_string(), "a\"b".to_string()];
        assert_eq!(
            copy_format(&[Transfer::Binary, Transfer::Binary]),
            CopyFormat::Binary
        );
        assert_eq!(
            copy_format(&[Transfer::Binary, Transfer::Text]),
            CopyFormat::Text
        );
        assert_eq!(
            copy_in_sql(&t, &cols, CopyFormat::Binary),
            "COPY \"public\".\"Target T\" (\"id\", \"a\"\"b\") FROM STDIN (FORMAT binary)"
        );
        assert_eq!(
            copy_out_sql("SELECT 1", CopyFormat::Text),
            "COPY (SELECT 1) TO STDOUT"
        );
        assert_eq!(
            copy_out_sql("SELECT 1", CopyFormat::Binary),
            "COPY (SELECT 1) TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            rows_select_sql("SELECT \"id\" FROM t", &cols[..1]),
            "SELECT \"id\"::text AS \"id\" FROM (SELECT \"id\" FROM t) AS \"partition\""
        );
        assert_eq!(
            insert_sql(&t, &[("id".into(), "bigint".into()), ("n".into(), "numeric".into())]),
            "INSERT INTO \"public\".\"Target T\" (\"id\", \"n\") OVERRIDING SYSTEM VALUE SELECT \"id\"::bigint, \"n\"::numeric FROM unnest($1::text[], $2::text[]) AS \"batch\"(\"id\", \"n\")"
        );
        assert_eq!(
            insert_sql(&t, &[("c".into(), "character".into()), ("b".into(), "bit[]".into())]),
            "INSERT INTO \"public\".\"Target T\" (\"c\", \"b\") OVERRIDING SYSTEM VALUE SELECT \"c\"::bpchar, \"b\"::varbit[] FROM unnest($1::text[], $2::text[]) AS \"batch\"(\"c\", \"b\")"
        );
        let mut c = col("d", "character varying(10)");
        c.not_null = true;
        assert_eq!(
            create_table_sql(&t, &[col("id", "bigint"), c.clone()], None),
            "CREATE TABLE \"public\".\"Target T\" (\"id\" bigint, \"d\" character varying(10) NOT NULL)"
        );
        assert_eq!(
            create_table_sql(&t, &[col("id", "bigint"), c], Some(&["id".into(), "d".into()])),
            "CREATE TABLE \"public\".\"Target T\" (\"id\" bigint, \"d\" character varying(10) NOT NULL, PRIMARY KEY (\"id\", \"d\"))"
        );
    }

    #[test]
    fn upsert_statements() {
        let t = QualifiedName::parse("public.\"Target T\"").unwrap();
        let stage = stage_table();
        let cols: Vec<String> = ["id", "day", "a\"b"].map(String::from).to_vec();
        let key: Vec<String> = ["id", "day"].map(String::from).to_vec();
        assert_eq!(
            create_stage_sql(&stage, &t, &cols),
            "CREATE TEMPORARY TABLE \"pg_temp\".\"stride_stage\" ON COMMIT DROP AS SELECT \"id\", \"day\", \"a\"\"b\" FROM \"public\".\"Target T\" WITH NO DATA"
        );
        assert_eq!(
            copy_in_sql(&stage, &cols, CopyFormat::Binary),
            "COPY \"pg_temp\".\"stride_stage\" (\"id\", \"day\", \"a\"\"b\") FROM STDIN (FORMAT binary)"
        );
        let update = on_conflict_sql(&key, &cols, OnConflict::Update);
        assert_eq!(
            update,
            "ON CONFLICT (\"id\", \"day\") DO UPDATE SET \"a\"\"b\" = EXCLUDED.\"a\"\"b\""
        );
        assert_eq!(
            on_conflict_sql(&key, &cols, OnConflict::Skip),
            "ON CONFLICT (\"id\", \"day\") DO NOTHING"
        );
        // A key that is every copied column leaves nothing to update.
        assert_eq!(
            on_conflict_sql(&key, &key, OnConflict::Update),
            "ON CONFLICT (\"id\", \"day\") DO NOTHING"
        );
        assert_eq!(
            on_conflict_sql(&["id".into()], &cols, OnConflict::Update),
            "ON CONFLICT (\"id\") DO UPDATE SET \"day\" = EXCLUDED.\"day\", \"a\"\"b\" = EXCLUDED.\"a\"\"b\""
        );
        assert_eq!(
            merge_sql(&t, &stage, &cols, &update),
            "INSERT INTO \"public\".\"Target T\" (\"id\", \"day\", \"a\"\"b\") OVERRIDING SYSTEM VALUE SELECT \"id\", \"day\", \"a\"\"b\" FROM \"pg_temp\".\"stride_stage\" ON CONFLICT (\"id\", \"day\") DO UPDATE SET \"a\"\"b\" = EXCLUDED.\"a\"\"b\""
        );
        let sequence = QualifiedName {
            schema: Some("public".into()),
            name: "Target T_id_seq".into(),
        };
        assert_eq!(
            reset_sequence_sql(&t, "id", &sequence),
            "SELECT setval('\"public\".\"Target T_id_seq\"'::regclass, c.m) FROM (SELECT max(\"id\")::int8 AS m FROM \"public\".\"Target T\") AS c, \"public\".\"Target T_id_seq\" AS s WHERE c.m > s.last_value OR (c.m = s.last_value AND NOT s.is_called)"
        );
    }

    #[test]
    fn upsert_key_from_the_job_or_the_primary_key() {
        let upsert = |target: &str| {
            Job::parse(
                &format!("[source]\nurl='postgres://h/s'\ntable='public.covid_cases'\n[target]\nurl='postgres://h/t'\nmode='upsert'\n{target}\n"),
                |_| None,
            )
            .unwrap()
        };
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let keys = UniqueKeys {
            primary_key: Some(names(&["id"])),
            unique: vec![names(&["id"]), names(&["date", "state"])],
        };
        let no_pk = UniqueKeys {
            primary_key: None,
            unique: vec![names(&["date", "state"])],
        };
        let none = UniqueKeys::default();
        let source = source();
        // (target keys, job text, Ok(key) or the start of the error)
        type Case<'a> = (
            Option<&'a UniqueKeys>,
            &'a str,
            Result<Vec<String>, &'a str>,
        );
        let cases: &[Case] = &[
            (Some(&keys), "", Ok(names(&["id"]))),
            (Some(&keys), "key = ['state', 'date']", Ok(names(&["state", "date"]))),
            (Some(&no_pk), "key = ['state', 'date']", Ok(names(&["state", "date"]))),
            (None, "key = ['id']", Ok(names(&["id"]))),
            (Some(&no_pk), "", Err("target.key: not set, and \"public\".\"covid_cases\" has no primary key to default to")),
            (Some(&none), "", Err("target.key: not set, and \"public\".\"covid_cases\" has no primary key")),
            (None, "", Err("target.key: not set, and \"public\".\"covid_cases\" does not exist yet")),
            (Some(&keys), "key = ['ghost']", Err("target.key: column \"ghost\" is not among the copied columns (expected some of: id, state, date, Mixed Case)")),
            (Some(&keys), "key = ['state']", Err("target.key: \"public\".\"covid_cases\" has no unique index or constraint on exactly (state), which ON CONFLICT needs (it has (id), (date, state);")),
            (Some(&none), "key = ['id']", Err("target.key: \"public\".\"covid_cases\" has no unique index or constraint on exactly (id), which ON CONFLICT needs (it has none;")),
            (Some(&keys), "key = ['id', 'state']", Err("target.key: \"public\".\"covid_cases\" has no unique index or constraint on exactly (id, state)")),
        ];
        for (target, text, expected) in cases {
            let got = upsert_key(&upsert(text), &source, *target);
            match expected {
                Ok(key) => assert_eq!(got, Ok(Some(key.clone())), "{text}"),
                Err(start) => {
                    let e = got.expect_err(text).to_string();
                    assert!(e.starts_with(start), "{text}: {e}");
                }
            }
        }
        assert_eq!(upsert_key(&job(""), &source, None), Ok(None));
    }

    #[test]
    fn incremental_windows_follow_each_other() {
        let first = Window::next(None, false, Some(50));
        assert_eq!(
            first,
            Window {
                first: true,
                since: None,
                until: Some(50)
            }
        );
        // Unfinished: the same start again, up to what is there now.
        let retried = Window::next(Some(&first), false, Some(60));
        assert_eq!(
            retried,
            Window {
                until: Some(60),
                ..first
            }
        );
        // Finished: the mark is the end of the finished window, and never moves back.
        let second = Window::next(Some(&first), true, Some(70));
        assert_eq!(
            second,
            Window {
                first: false,
                since: Some(50),
                until: Some(70)
            }
        );
        let after_deletes = Window::next(Some(&second), true, Some(10));
        assert_eq!(after_deletes.since, Some(70));
        assert_eq!(after_deletes.until, Some(70));
        assert_eq!(Window::next(Some(&second), true, None).until, Some(70));
        // An empty first run: the next one is not a first run any more.
        let empty = Window::next(None, false, None);
        let next = Window::next(Some(&empty), true, Some(5));
        assert_eq!(
            next,
            Window {
                first: false,
                since: None,
                until: Some(5)
            }
        );
    }

    #[test]
    fn incremental_conditions() {
        let c = "\"updated\"";
        let w = |first, since, until| Window {
            first,
            since,
            until,
        };
        let d = KeyType::Date;
        assert_eq!(
            w(true, None, Some(0)).condition(c, d),
            "(\"updated\" <= '1970-01-01'::date OR \"updated\" IS NULL)"
        );
        assert_eq!(w(true, None, None).condition(c, d), "\"updated\" IS NULL");
        assert_eq!(
            w(false, Some(0), Some(1)).condition(c, d),
            "(\"updated\" > '1970-01-01'::date AND \"updated\" <= '1970-01-02'::date)"
        );
        assert_eq!(
            w(false, None, Some(1)).condition(c, d),
            "\"updated\" <= '1970-01-02'::date"
        );
        assert_eq!(w(false, None, None).condition(c, d), "false");
        assert_eq!(
            w(true, None, Some(1)).describe(d),
            "every row up to 1970-01-02 (first run)"
        );
        assert_eq!(
            w(false, Some(0), Some(1)).describe(d),
            "above 1970-01-01 up to 1970-01-02"
        );
        assert_eq!(
            w(false, Some(1), Some(1)).describe(d),
            "nothing new (the mark stays at 1970-01-02)"
        );
    }

    #[test]
    fn the_reread_range_reaches_lookback_below_the_mark_and_never_overflows() {
        let w = |first, since, until| Window {
            first,
            since,
            until,
        };
        let (i8, d, ts) = (KeyType::Int8, KeyType::Date, KeyType::Timestamp);
        // A first run, or no mark: nothing to read again.
        assert_eq!(w(true, None, Some(9)).reread(5, i8), None);
        assert_eq!(w(false, None, Some(9)).reread(5, i8), None);
        assert_eq!(w(false, None, None).reread(5, i8), None);
        // The mark alone, and `lookback` below it.
        assert_eq!(w(false, Some(7), Some(9)).reread(0, i8), Some((7, 7)));
        assert_eq!(w(false, Some(7), Some(7)).reread(3, i8), Some((4, 7)));
        // The extremes: the range stops at the type's smallest value.
        assert_eq!(
            w(false, Some(i64::MIN), Some(i64::MIN)).reread(i64::MAX, i8),
            Some((i64::MIN, i64::MIN))
        );
        assert_eq!(
            w(false, Some(i64::MIN + 3), Some(0)).reread(5, i8),
            Some((i64::MIN, i64::MIN + 3))
        );
        assert_eq!(
            w(false, Some(i64::MAX), Some(i64::MAX)).reread(i64::MAX, i8),
            Some((0, i64::MAX))
        );
        assert_eq!(
            w(false, Some(-32_760), Some(0)).reread(100, KeyType::Int2),
            Some((-32_768, -32_760))
        );
        assert_eq!(
            w(false, Some(10), Some(10)).reread(i64::MAX, KeyType::Int4),
            Some((i64::from(i32::MIN), 10))
        );
        assert_eq!(
            w(false, Some(0), Some(0)).reread(i64::MAX, d),
            Some((d.domain().0, 0))
        );
        assert_eq!(
            w(false, Some(i64::MAX), Some(i64::MAX)).reread(i64::MAX, ts),
            Some((0, i64::MAX))
        );
        assert_eq!(
            w(false, Some(0), Some(0)).reread(i64::MAX, ts),
            Some((ts.domain().0, 0))
        );
        // A negative look-back (refused by the job) would not reach above the mark.
        assert_eq!(w(false, Some(7), Some(9)).reread(-3, i8), Some((7, 7)));

        let c = "\"day\"";
        let day = 20_513; // 2026-03-01
        assert_eq!(
            w(false, Some(day), Some(day + 2)).reread_condition(c, d, 0),
            Some("\"day\" = '2026-03-01'::date".to_string())
        );
        assert_eq!(
            w(false, Some(day), Some(day + 2)).reread_condition(c, d, 2),
            Some("(\"day\" >= '2026-02-27'::date AND \"day\" <= '2026-03-01'::date)".to_string())
        );
        assert_eq!(w(true, None, Some(day)).reread_condition(c, d, 2), None);
        assert_eq!(
            w(false, Some(day), Some(day + 2)).read_condition(c, d, 2),
            "(\"day\" >= '2026-02-27'::date AND \"day\" <= '2026-03-03'::date)"
        );
        // Without a re-read range, a run reads its window.
        assert_eq!(
            w(true, None, Some(day)).read_condition(c, d, 2),
            w(true, None, Some(day)).condition(c, d)
        );
        assert_eq!(
            w(false, Some(day), Some(day))
                .describe_reread(0, d)
                .as_deref(),
            Some("2026-03-01")
        );
        assert_eq!(
            w(false, Some(day), Some(day))
                .describe_reread(2, d)
                .as_deref(),
            Some("2026-02-27 to 2026-03-01")
        );
    }

    #[test]
    fn lookback_fits_the_mark_column_or_is_refused_by_name() {
        let with = |lookback: &str| {
            job(&format!(
                "[incremental]\ncolumn = 'c'\nlookback = {lookback}"
            ))
        };
        let key = |key_type| Key {
            column: "c".to_string(),
            key_type,
        };
        let ok = [
            ("0", KeyType::Int4, 0),
            ("100", KeyType::Int8, 100),
            ("9223372036854775807", KeyType::Int2, i64::MAX),
            ("'2 days'", KeyType::Date, 2),
            ("'0s'", KeyType::Date, 0),
            ("'2 days'", KeyType::Timestamp, 2 * 86_400_000_000),
            ("'36h'", KeyType::Timestamptz, 36 * 3_600_000_000),
            ("'90m'", KeyType::Timestamp, 90 * 60_000_000),
            ("'500ms'", KeyType::Timestamp, 500_000),
            // More microseconds than an i64 holds: below every timestamp.
            ("'200000000d'", KeyType::Timestamp, i64::MAX),
        ];
        for (lookback, key_type, expected) in ok {
            assert_eq!(
                lookback_of(&with(lookback), &key(key_type)),
                Ok(expected),
                "{lookback}"
            );
        }
        assert_eq!(
            lookback_of(&job("[incremental]\ncolumn = 'c'"), &key(KeyType::Date)),
            Ok(0)
        );
        let refused = [
            ("'2 days'", KeyType::Int8, "incremental.lookback: \"2 days\" is a duration, and column \"c\" is an integer (int8) (expected a whole number of at least 0: how many values below the mark are read again)"),
            ("'90m'", KeyType::Int4, "incremental.lookback: \"90m\" is a duration, and column \"c\" is an integer (int4) (expected a whole number of at least 0: how many values below the mark are read again)"),
            ("3", KeyType::Date, "incremental.lookback: 3 is a number, and column \"c\" is a date (expected a duration such as \"2 days\", \"36h\" or \"90m\")"),
            ("3", KeyType::Timestamptz, "incremental.lookback: 3 is a number, and column \"c\" is a timestamptz (expected a duration such as \"2 days\", \"36h\" or \"90m\")"),
            ("'36h'", KeyType::Date, "incremental.lookback: \"36h\" is not a whole number of days, and column \"c\" is a date (expected days, such as \"2 days\")"),
            ("'1500ms'", KeyType::Date, "incremental.lookback: \"1500ms\" is not a whole number of days, and column \"c\" is a date (expected days, such as \"2 days\")"),
        ];
        for (lookback, key_type, expected) in refused {
            assert_eq!(
                lookback_of(&with(lookback), &key(key_type)).map_err(|e| e.to_string()),
                Err(expected.to_string()),
                "{lookback}"
            );
        }
    }

    #[test]
    fn the_reread_range_is_one_more_partition_for_every_strategy() {
        let day = 20_513; // 2026-03-01
        let window = Window {
            first: false,
            since: Some(day),
            until: Some(day + 3),
        };
        let mark = Key {
            column: "date".to_string(),
            key_type: KeyType::Date,
        };
        let job =
            job_with_partition("column = 'id'\nlower_bound = 0\nupper_bound = 100\ncount = 2");
        let mut job = job;
        job.incremental = Some(crate::job::Incremental {
            column: "date".to_string(),
            lookback: Some(Lookback::Duration(std::time::Duration::from_secs(86_400))),
        });
        let columns = vec![col("id", "bigint"), col("date", "date")];
        let id = Key {
            column: "id".to_string(),
            key_type: KeyType::Int8,
        };
        let bounds = Bounds {
            lower: 0,
            upper: 100,
            origin: BoundsOrigin::Job,
        };
        let cuts = [
            Cut::Stride,
            Cut::Quantile {
                boundaries: vec![50],
                how: "test".to_string(),
            },
            Cut::Ctid { blocks: 10 },
        ];
        for cut in cuts {
            let scoped = within_window(&job, &window, KeyType::Date);
            let mut plan = build_cut(
                &scoped,
                &columns,
                Some(id.clone()),
                Some(bounds.clone()),
                cut,
            );
            plan.restrict_target(
                &window.condition("\"date\"", KeyType::Date),
                &job.target.table,
            );
            assert_eq!(plan.partitions.len(), 2);
            assert_eq!(plan.reread_partition().map(|p| p.index), None);
            plan.add_reread(&job, &mark, &window, 1);
            assert_eq!(plan.partitions.len(), 3);
            let reread = plan.reread_partition().expect("a re-read partition");
            assert_eq!(reread.index, 2);
            assert_eq!(reread.describe, "re-read 2026-02-28 to 2026-03-01");
            assert_eq!(
                reread.select,
                "SELECT \"id\", \"date\" FROM \"public\".\"covid_cases\" WHERE (state <> 'Unknown') AND (\"date\" >= '2026-02-28'::date AND \"date\" <= '2026-03-01'::date)"
            );
            assert_eq!(
                reread.target_select,
                "SELECT \"id\", \"date\" FROM \"public\".\"covid_cases\" WHERE (\"date\" >= '2026-02-28'::date AND \"date\" <= '2026-03-01'::date)"
            );
            assert_eq!(
                delete_range_sql(&job.target.table, reread),
                "DELETE FROM \"public\".\"covid_cases\" WHERE (\"date\" >= '2026-02-28'::date AND \"date\" <= '2026-03-01'::date)"
            );
            // The ordinary partitions still read above the mark only.
            assert!(plan.partitions[..2].iter().all(|p| p
                .select
                .contains("(\"date\" > '2026-03-01'::date AND \"date\" <= '2026-03-04'::date)")));
            // Verify compares the re-read range as a range, block ranges or not...
            assert_eq!(plan.reread, Some(Reread::Replaced));
            assert_eq!(plan.compared().last().map(|p| p.index), Some(2));
            // ...except in upsert mode, where the target may keep rows the source deleted.
            let mut upsert = job.clone();
            upsert.target.mode = Mode::Upsert;
            plan.partitions.pop();
            plan.add_reread(&upsert, &mark, &window, 1);
            assert_eq!(plan.reread, Some(Reread::Upserted));
            assert_eq!(plan.partitions.len(), 3);
            assert!(plan.compared().iter().all(|p| p.index != 2));
        }
        // A first run reads no range again.
        let mut plan = build(&job, &columns, None, None);
        plan.add_reread(&job, &mark, &Window::next(None, false, Some(day)), 1);
        assert_eq!(plan.partitions.len(), 1);
        assert_eq!(plan.reread, None);
    }

    #[test]
    fn a_window_scopes_the_source_and_the_target() {
        let job =
            job_with_partition("column = 'date'\nlower_bound = 0\nupper_bound = 2\ncount = 2");
        let mut job = job;
        job.incremental = Some(crate::job::Incremental {
            lookback: None,
            column: "id".to_string(),
        });
        let w = Window {
            first: false,
            since: Some(5),
            until: Some(9),
        };
        let scoped = within_window(&job, &w, KeyType::Int8);
        assert_eq!(
            scoped.source.where_clause.as_deref(),
            Some("(state <> 'Unknown') AND (\"id\" > '5'::int8 AND \"id\" <= '9'::int8)")
        );
        let columns = vec![col("id", "bigint"), col("date", "bigint")];
        let key = Key {
            column: "date".to_string(),
            key_type: KeyType::Int8,
        };
        let bounds = Bounds {
            lower: 0,
            upper: 2,
            origin: BoundsOrigin::Job,
        };
        let mut plan = build(&scoped, &columns, Some(key), Some(bounds));
        plan.restrict_target(
            "(\"id\" > '5'::int8 AND \"id\" <= '9'::int8)",
            &job.target.table,
        );
        assert_eq!(
            plan.partitions[1].target_select,
            "SELECT \"id\", \"date\" FROM \"public\".\"covid_cases\" WHERE \"date\" >= '1'::int8 AND (\"id\" > '5'::int8 AND \"id\" <= '9'::int8)"
        );
        assert_eq!(
            delete_range_sql(&job.target.table, &plan.partitions[0]),
            "DELETE FROM \"public\".\"covid_cases\" WHERE (\"date\" < '1'::int8 OR \"date\" IS NULL) AND (\"id\" > '5'::int8 AND \"id\" <= '9'::int8)"
        );
    }

    #[test]
    fn statistics_become_weighted_points() {
        // 10% NULL, one common value with 40%, the other half over two buckets.
        let (points, nulls) =
            statistics_points(0.1, &[(Some(50), 0.4), (None, 0.05)], &[0, 80, 160]);
        assert!((nulls - 0.15).abs() < 1e-9);
        assert_eq!(points.len(), 1 + 16);
        let total: f64 = points.iter().map(|p| p.1).sum::<f64>() + nulls;
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        assert!(points.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(points[0], (0, 0.45 / 2.0 / 8.0));
    }

    #[test]
    fn strategy_queries() {
        let key = Key {
            column: "id".to_string(),
            key_type: KeyType::Int8,
        };
        let job = job("");
        assert_eq!(
            sample_sql(&job, &key, Some(2.5)),
            "SELECT CASE WHEN \"id\" IS NOT NULL THEN \"id\"::int8 END FROM \"public\".\"covid_cases\" TABLESAMPLE BERNOULLI (2.5) REPEATABLE (0)"
        );
        assert_eq!(
            blocks_sql(&QualifiedName::parse("public.t").unwrap()),
            "SELECT (pg_relation_size('\"public\".\"t\"'::regclass) / current_setting('block_size')::int8)::int8"
        );
        let stats = statistics_sql(&QualifiedName::parse("t").unwrap(), &key);
        assert!(
            stats.contains(
                "WHERE s.schemaname = current_schema() AND s.tablename = 't' AND s.attname = 'id'"
            ),
            "{stats}"
        );
        let date = Key {
            column: "d".to_string(),
            key_type: KeyType::Date,
        };
        assert!(sample_sql(&job, &date, None).starts_with(
            "SELECT CASE WHEN isfinite(\"d\") THEN (\"d\" - DATE '1970-01-01')::int8 END FROM"
        ));
    }

    #[test]
    fn ctid_plans_block_ranges_and_compares_the_whole() {
        let job = job("[partition]\nstrategy = 'ctid'\ncount = 3");
        let columns = vec![col("id", "bigint")];
        let plan = build_cut(&job, &columns, None, None, Cut::Ctid { blocks: 30 });
        let selects: Vec<&str> = plan.partitions.iter().map(|p| p.select.as_str()).collect();
        assert_eq!(
            selects,
            [
                "SELECT \"id\" FROM \"public\".\"covid_cases\" WHERE ctid < '(10,0)'::tid",
                "SELECT \"id\" FROM \"public\".\"covid_cases\" WHERE (ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid)",
                "SELECT \"id\" FROM \"public\".\"covid_cases\" WHERE ctid >= '(20,0)'::tid",
            ]
        );
        assert!(!plan.partitions_comparable());
        let compared = plan.compared();
        assert_eq!(compared.len(), 1);
        assert_eq!(
            compared[0].select,
            "SELECT \"id\" FROM \"public\".\"covid_cases\""
        );
        assert_eq!(
            compared[0].target_select,
            "SELECT \"id\" FROM \"public\".\"covid_cases\""
        );
        // A table of one block is one partition.
        let small = build_cut(&job, &columns, None, None, Cut::Ctid { blocks: 1 });
        assert_eq!(small.partitions.len(), 1);
        assert_eq!(Plan::spread(&[10, 40, 20]), Some(4.0));
        assert_eq!(Plan::spread(&[10]), None);
        assert_eq!(Plan::spread(&[0, 5]), Some(5.0));
    }

    #[test]
    fn retarget_points_verify_at_the_staging_table() {
        let job = job_with_partition("column = 'id'\ncount = 2");
        let columns = vec![col("id", "bigint"), col("date", "bigint")];
        let key = Key {
            column: "id".to_string(),
            key_type: KeyType::Int8,
        };
        let bounds = Bounds {
            lower: 0,
            upper: 10,
            origin: BoundsOrigin::Job,
        };
        let mut plan = build(&job, &columns, Some(key), Some(bounds));
        plan.retarget(&QualifiedName::parse("public.covid_cases_stride_stage").unwrap());
        assert_eq!(
            plan.partitions[0].target_select,
            "SELECT \"id\", \"date\" FROM \"public\".\"covid_cases_stride_stage\" WHERE (\"id\" < '5'::int8 OR \"id\" IS NULL)"
        );
        assert_eq!(
            plan.partitions[1].target_select,
            "SELECT \"id\", \"date\" FROM \"public\".\"covid_cases_stride_stage\" WHERE \"id\" >= '5'::int8"
        );
        let mut whole = build(&job, &columns, None, None);
        whole.retarget(&QualifiedName::parse("s.t").unwrap());
        assert_eq!(
            whole.partitions[0].target_select,
            "SELECT \"id\", \"date\" FROM \"s\".\"t\""
        );
    }

    proptest::proptest! {
        /// The re-read range is `[max(lowest, mark - lookback), mark]`, computed
        /// without overflow for any mark and look-back, and always holds the mark.
        #[test]
        fn the_reread_range_holds_the_mark_and_stops_at_the_lowest_value(
            mark in proptest::prelude::any::<i64>(),
            lookback in 0..=i64::MAX,
            until in proptest::prelude::any::<i64>(),
            kind in 0_usize..6,
        ) {
            let key = [
                KeyType::Int2,
                KeyType::Int4,
                KeyType::Int8,
                KeyType::Date,
                KeyType::Timestamp,
                KeyType::Timestamptz,
            ][kind];
            let (lowest, highest) = key.domain();
            let mark = mark.clamp(lowest, highest);
            let w = Window { first: false, since: Some(mark), until: Some(until.max(mark)) };
            let (from, to) = w.reread(lookback, key).expect("a mark");
            let expected = (i128::from(mark) - i128::from(lookback)).max(i128::from(lowest));
            proptest::prop_assert_eq!(i128::from(from), expected);
            proptest::prop_assert_eq!(to, mark);
            proptest::prop_assert!(lowest <= from && from <= mark);
        }
    }
}
