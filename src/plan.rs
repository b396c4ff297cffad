//! The plan's decisions, whatever the engine: the partition key, the bounds
//! and where they came from, an incremental run's window, how the source is
//! cut, and the partitions with the statements an engine rendered for them
//! (PostgreSQL's route: `engine::postgres::plan`; across engines, each
//! engine's dialect). Pure.

use serde::Serialize;

use crate::error::JobError;
use crate::job::{Job, Strategy};
use crate::partition::{KeyRange, KeyType};
use crate::sql::quote_ident;

/// The partition column, resolved against the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Key {
    pub column: String,
    pub key_type: KeyType,
}

/// Where the split's bounds came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BoundsOrigin {
    /// `lower_bound` / `upper_bound` in the job.
    Job,
    /// `min()` / `max()` of the column in the source.
    Source,
    /// Recorded by an earlier, unfinished run of the same job (a resume).
    EarlierRun,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Bounds {
    pub lower: i64,
    pub upper: i64,
    pub origin: BoundsOrigin,
}

/// The rows an incremental run copies: above the high-water mark the last
/// successful run left (`since`), at or below the largest value the run's snapshot
/// held when it began (`until`), both in the column's key encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    /// No run of the job has finished yet (or `--full-refresh`): every row up to
    /// `until` is copied, those with a NULL in the column too.
    pub first: bool,
    pub since: Option<i64>,
    /// `None`: the column held no value when the run began.
    pub until: Option<i64>,
}

impl Window {
    /// The window of a new run, after the recorded one (`None`: there is none, or
    /// it is ignored) and with `largest`, the column's largest value in the new
    /// run's snapshot. The mark never moves back, even if rows were deleted.
    pub fn next(after: Option<&Window>, finished: bool, largest: Option<i64>) -> Window {
        match after {
            // The recorded run finished: its upper end is the mark.
            Some(w) if finished => Window {
                first: false,
                since: w.until,
                until: w.until.max(largest),
            },
            // It did not: the mark is where it started (a restart copies its range again).
            Some(w) => Window {
                first: w.first,
                since: w.since,
                until: w.since.max(largest),
            },
            None => Window {
                first: true,
                since: None,
                until: largest,
            },
        }
    }

    /// The condition selecting the window's rows of the already-quoted `column`.
    pub fn condition(&self, column: &str, key: KeyType) -> String {
        match (self.first, self.since, self.until) {
            (true, _, Some(u)) => format!("({column} <= {} OR {column} IS NULL)", key.literal(u)),
            (true, _, None) => format!("{column} IS NULL"),
            (false, Some(s), Some(u)) => format!(
                "({column} > {} AND {column} <= {})",
                key.literal(s),
                key.literal(u)
            ),
            (false, None, Some(u)) => format!("{column} <= {}", key.literal(u)),
            (false, _, None) => "false".to_string(),
        }
    }

    /// The range this run reads again below its window, both ends inclusive and
    /// in the column's encoding: from `lookback` below the mark up to the mark
    /// (only the mark's value with a `lookback` of 0). Rows tied with the mark,
    /// or committed late within the look-back, are read there. Never below the
    /// type's smallest value, whatever the look-back. `None` for a first run, or
    /// when no run left a mark.
    pub fn reread(&self, lookback: i64, key: KeyType) -> Option<(i64, i64)> {
        if self.first {
            return None;
        }
        let mark = self.since?;
        let from = mark.saturating_sub(lookback.max(0)).max(key.domain().0);
        Some((from, mark))
    }

    /// The condition selecting the re-read range's rows of the already-quoted `column`.
    pub fn reread_condition(&self, column: &str, key: KeyType, lookback: i64) -> Option<String> {
        let (from, mark) = self.reread(lookback, key)?;
        Some(if from == mark {
            format!("{column} = {}", key.literal(mark))
        } else {
            format!(
                "({column} >= {} AND {column} <= {})",
                key.literal(from),
                key.literal(mark)
            )
        })
    }

    /// The condition selecting every row a run reads: its re-read range and its
    /// window (what the coverage check counts).
    pub fn read_condition(&self, column: &str, key: KeyType, lookback: i64) -> String {
        match (self.reread(lookback, key), self.until) {
            (Some((from, _)), Some(until)) => format!(
                "({column} >= {} AND {column} <= {})",
                key.literal(from),
                key.literal(until)
            ),
            _ => self.condition(column, key),
        }
    }

    /// The re-read range for people: `2021-03-01` (the mark alone) or
    /// `2021-02-27 to 2021-03-01`.
    pub fn describe_reread(&self, lookback: i64, key: KeyType) -> Option<String> {
        let (from, mark) = self.reread(lookback, key)?;
        Some(if from == mark {
            key.display(mark)
        } else {
            format!("{} to {}", key.display(from), key.display(mark))
        })
    }

    /// The window for people: `everything up to 2021-03-01 (first run)`,
    /// `above 2021-03-01 up to 2021-03-02`.
    pub fn describe(&self, key: KeyType) -> String {
        let show = |v: Option<i64>| v.map_or_else(|| "(none)".to_string(), |v| key.display(v));
        match (self.first, self.since, self.until) {
            (true, _, None) => "rows with no value (first run; the column is empty)".to_string(),
            (true, _, until) => format!("every row up to {} (first run)", show(until)),
            (false, since, until) if since == until => {
                format!("nothing new (the mark stays at {})", show(since))
            }
            (false, None, until) => format!("every row up to {}", show(until)),
            (false, since, until) => format!("above {} up to {}", show(since), show(until)),
        }
    }
}

/// The job with an incremental run's window added to its `where`, so that every
/// query over the source (bounds, partitions, estimate, coverage count) reads only
/// the window's rows.
pub fn within_window(job: &Job, window: &Window, key: KeyType) -> Job {
    let column = &job
        .incremental
        .as_ref()
        .expect("only incremental jobs have a window")
        .column;
    with_condition(job, &window.condition(&quote_ident(column), key))
}

/// The job with every row an incremental run reads added to its `where`: the
/// window and the re-read range below it (`lookback` in the column's encoding).
pub fn within_read(job: &Job, window: &Window, key: KeyType, lookback: i64) -> Job {
    let column = &job
        .incremental
        .as_ref()
        .expect("only incremental jobs have a window")
        .column;
    with_condition(
        job,
        &window.read_condition(&quote_ident(column), key, lookback),
    )
}

/// The job with `condition` added to its `where`.
fn with_condition(job: &Job, condition: &str) -> Job {
    let condition = condition.to_string();
    let mut job = job.clone();
    job.source.where_clause = Some(match &job.source.where_clause {
        Some(user) => format!("{} AND {condition}", enclose(user)),
        None => condition,
    });
    job
}

#[derive(Clone, Debug, Serialize)]
pub struct PlannedPartition {
    pub index: usize,
    pub range: KeyRange,
    /// The range for people, e.g. `[2021-02-22, 2021-02-24)`.
    pub describe: String,
    /// The source query of this partition.
    pub select: String,
    /// The partition's range as a condition on the target (`None`: every row).
    pub target_predicate: Option<String>,
    /// The same rows on the target: its columns, restricted to the partition's range.
    pub target_select: String,
}

/// How the source is cut, once the figures it needs are read.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "strategy")]
pub enum Cut {
    /// Spark's equal-width ranges between the bounds (`Plan::bounds`; none: one
    /// partition).
    Stride,
    /// Ranges of the key between these ascending boundaries; `how` says where
    /// they came from (planner statistics, a sample, an earlier run).
    Quantile { boundaries: Vec<i64>, how: String },
    /// Equal ranges of the table's `blocks` physical blocks.
    Ctid { blocks: i64 },
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Columns copied, in order (same names on both sides).
    pub columns: Vec<String>,
    pub key: Option<Key>,
    pub bounds: Option<Bounds>,
    pub cut: Cut,
    /// Every row the job reads, in one query (no partition's predicate).
    pub whole_select: String,
    /// Partitions asked for in the job; `partitions.len()` may be smaller (a range
    /// narrower than the count, or an empty source).
    pub requested_partitions: u32,
    pub partitions: Vec<PlannedPartition>,
    /// Whether the last partition is an incremental run's re-read range (see
    /// [`Plan::add_reread`]), a range of the mark column whatever the strategy.
    pub reread: Option<Reread>,
}

/// How an incremental run's re-read range is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reread {
    /// Append mode: the target's rows in the range are deleted and written
    /// again in one transaction, so the range ends equal to the source's and
    /// verify compares it.
    Replaced,
    /// Upsert mode: upserted by key. The target keeps rows the source deleted
    /// (and `on_conflict = "skip"` keeps old values), so verify leaves it out.
    Upserted,
}

/// The job's bounds parsed as the key's type; `None` when the job leaves them out.
pub fn parse_bounds(job: &Job, key: &Key) -> Result<Option<Bounds>, JobError> {
    let Some((lower, upper)) = job.partition.as_ref().and_then(|p| p.bounds.as_ref()) else {
        return Ok(None);
    };
    let parse = |name: &str, text: &str| {
        key.key_type
            .parse_bound(text)
            .map_err(|e| JobError::new(format!("partition.{name}: {e}")))
    };
    let (lo, hi) = (parse("lower_bound", lower)?, parse("upper_bound", upper)?);
    if lo >= hi {
        return Err(JobError::new(format!(
            "partition.lower_bound: {lower} is not below upper_bound {upper} (expected lower_bound < upper_bound)"
        )));
    }
    Ok(Some(Bounds {
        lower: lo,
        upper: hi,
        origin: BoundsOrigin::Job,
    }))
}

/// The user's own SQL in parentheses. A line comment (`--`) in it would swallow
/// the closing parenthesis, so then a newline ends the comment first.
pub(crate) fn enclose(sql: &str) -> String {
    if sql.contains("--") {
        format!("({sql}\n)")
    } else {
        format!("({sql})")
    }
}

/// `WHERE` text combining the user's condition and a partition's predicate.
pub(crate) fn where_clause(user: Option<&str>, partition: Option<String>) -> String {
    match (user, partition) {
        (None, None) => String::new(),
        (Some(u), None) => format!(" WHERE {}", enclose(u)),
        (None, Some(p)) => format!(" WHERE {p}"),
        (Some(u), Some(p)) => format!(" WHERE {} AND {p}", enclose(u)),
    }
}

/// The strategy of a job (stride when it has no `[partition]`).
pub fn strategy(job: &Job) -> Strategy {
    job.partition
        .as_ref()
        .map_or(Strategy::Stride, |p| p.strategy)
}

/// How a source column travels into its target column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transfer {
    /// Same built-in type: binary COPY bytes pass through undecoded.
    Binary,
    /// Different but assignable types: the target's input function converts the text form.
    Text,
    /// The target cannot take this type.
    Incompatible,
}
