//! `stride init`: a job file written from the source table's catalogue. What it
//! chooses (partition column, strategy, count) and the file it writes are pure
//! and unit-tested; each engine reads the facts (`crate::engine::init_facts`).

use std::fmt::Write as _;

use crate::partition::{stride_ranges, KeyType};
use crate::report::group;
use crate::sql::QualifiedName;

/// Below this many rows one partition copies fast enough.
pub const PARTITION_FROM_ROWS: i64 = 100_000;
/// Connections at once in the written job.
pub const PARALLELISM: i64 = 4;
/// Rows per partition the count aims at, with at least one partition per
/// connection.
pub const ROWS_PER_PARTITION: i64 = 1_000_000;
/// The spread (largest / smallest partition) an equal-width split may have before
/// init picks quantile boundaries instead.
pub const SKEWED: f64 = 2.0;

/// A column that can partition the table, found through an index.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub column: String,
    pub type_name: String,
    pub key_type: KeyType,
    pub primary: bool,
    pub unique: bool,
}

/// The planner's statistics of a column, as points of its distribution.
#[derive(Clone, Debug, PartialEq)]
pub struct Distribution {
    /// Weighted values, sorted (see `plan::statistics_points`).
    pub points: Vec<(i64, f64)>,
    pub nulls: f64,
}

/// What init knows of the source table.
#[derive(Clone, Debug, PartialEq)]
pub struct TableFacts {
    pub table: QualifiedName,
    /// Relkind: `r` table, `m` materialized view, `p` partitioned, `v` view...
    pub kind: char,
    /// The planner's estimate.
    pub rows: i64,
    pub bytes: i64,
    /// Primary key first, then other unique, then other indexed columns.
    pub candidates: Vec<Candidate>,
    /// The statistics of the first candidate, if analyzed.
    pub distribution: Option<Distribution>,
    /// The source is a file (SQLite): no password, no TABLESAMPLE.
    pub file: bool,
}

/// How the written job splits the table.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// Small enough for one partition.
    Whole,
    /// Equal widths of an evenly spread column (`spread`: of an equal-width split,
    /// from the statistics, when known).
    Stride {
        column: Candidate,
        count: i64,
        spread: Option<f64>,
    },
    /// Quantile boundaries of a skewed column.
    Quantile {
        column: Candidate,
        count: i64,
        spread: f64,
    },
    /// Block ranges: no usable column.
    Ctid { count: i64 },
}

/// The partition count for a table of `rows`: about a million rows each, at least
/// one per connection.
pub fn count_for(rows: i64) -> i64 {
    let by_size = (rows + ROWS_PER_PARTITION - 1) / ROWS_PER_PARTITION;
    by_size.clamp(PARALLELISM, 256)
}

/// The spread of an equal-width split of a distribution into `count` ranges
/// between its smallest and largest value: largest over smallest share.
pub fn stride_spread(distribution: &Distribution, count: i64) -> Option<f64> {
    let first = distribution.points.first()?.0;
    let last = distribution.points.last()?.0;
    if first >= last {
        return None;
    }
    let ranges = stride_ranges(first, last, u32::try_from(count).unwrap_or(1));
    let shares: Vec<f64> = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let inside: f64 = distribution
                .points
                .iter()
                .filter(|p| r.contains(Some(p.0)))
                .map(|p| p.1)
                .sum();
            if i == 0 {
                inside + distribution.nulls
            } else {
                inside
            }
        })
        .collect();
    let max = shares.iter().copied().fold(0.0, f64::max);
    let min = shares.iter().copied().fold(f64::INFINITY, f64::min);
    Some(max / min.max(max * 1e-6).max(f64::MIN_POSITIVE))
}

/// Chooses how to split the table.
pub fn choose(facts: &TableFacts) -> Choice {
    if facts.rows < PARTITION_FROM_ROWS {
        return Choice::Whole;
    }
    let count = count_for(facts.rows);
    let Some(column) = facts.candidates.first().cloned() else {
        return if matches!(facts.kind, 'r' | 'm') {
            Choice::Ctid { count }
        } else {
            Choice::Whole
        };
    };
    let spread = facts
        .distribution
        .as_ref()
        .and_then(|d| stride_spread(d, count));
    match spread {
        Some(spread) if spread > SKEWED => Choice::Quantile {
            column,
            count,
            spread,
        },
        spread => Choice::Stride {
            column,
            count,
            spread,
        },
    }
}

/// The job file: every choice explained in a comment, the other keys a user may
/// want shown commented out. `source_url` and `target_url` hold no password.
pub fn render(
    facts: &TableFacts,
    choice: &Choice,
    source_url: &str,
    target_url: Option<&str>,
) -> String {
    let mut out = String::new();
    let table = facts.table.to_string();
    let _ = writeln!(
        out,
        "# Written by `stride init` from {table}: about {} rows, {}.\n\
         # Check it, then: stride check FILE; stride plan FILE; stride run FILE",
        group(u64::try_from(facts.rows.max(0)).unwrap_or(0)),
        crate::report::human_bytes(u64::try_from(facts.bytes.max(0)).unwrap_or(0)),
    );
    let (password, slice) = if facts.file {
        (
            "# A file (set SOURCE_URL to read another).",
            "# limit = 10000                  # a slice, e.g. for a CI database",
        )
    } else {
        (
            "# No password is written here: it comes from ~/.pgpass or PGPASSWORD, or set\n\
             # SOURCE_URL to a whole URL.",
            "# sample = 0.01                  # or limit = 10000: a slice, e.g. for a CI database",
        )
    };
    let _ = writeln!(
        out,
        "\n[source]\n\
         {password}\n\
         url = \"${{SOURCE_URL:-{source_url}}}\"\n\
         table = {}\n\
         # columns = [\"...\"]              # default: every column\n\
         # where = \"...\"                  # copy only the rows it holds for\n\
         {slice}",
        toml_string(&table_name(&facts.table)),
    );
    let why_column = |c: &Candidate| {
        let role = if c.primary {
            "the primary key"
        } else if c.unique {
            "a uniquely indexed column"
        } else {
            "an indexed column"
        };
        format!("{} is {role} ({})", c.column, c.type_name)
    };
    let partition = match choice {
        Choice::Whole => format!(
            "\n# No [partition] section: {} rows copy well in one partition{}. To split\n\
             # the copy, add one, e.g.:\n\
             # [partition]\n\
             # column = \"id\"\n\
             # count = 4",
            group(u64::try_from(facts.rows.max(0)).unwrap_or(0)),
            match (facts.rows >= PARTITION_FROM_ROWS, facts.kind) {
                (false, _) => "",
                (true, 'p') => " (and, as a partitioned table, it has no blocks of its own to split by)",
                (true, _) => " (and, as a view, it has no blocks to split by)",
            }
        ),
        Choice::Stride {
            column,
            count,
            spread,
        } => format!(
            "\n[partition]\n\
             # {}; {}, so Spark's\n\
             # equal-width split suits it. Bounds are read from the source (min and max).\n\
             strategy = \"stride\"\n\
             column = {}\n\
             count = {count}",
            why_column(column),
            match spread {
                Some(s) => format!("the statistics show its values evenly spread (an equal-width\n# split gives a spread of {s:.1}x)"),
                None => "without statistics to say otherwise, its values are taken as\n# evenly spread".to_string(),
            },
            toml_string(&column.column),
        ),
        Choice::Quantile {
            column,
            count,
            spread,
        } => format!(
            "\n[partition]\n\
             # {}; its values bunch up: an equal-width split would give a\n\
             # spread of {spread:.1}x (largest / smallest partition), so the boundaries are its\n\
             # quantiles instead, about as many rows in each partition.\n\
             strategy = \"quantile\"\n\
             column = {}\n\
             count = {count}",
            why_column(column),
            toml_string(&column.column),
        ),
        Choice::Ctid { count } => format!(
            "\n[partition]\n\
             # No primary key and no indexed integer, date or timestamp column: the table\n\
             # is split by ranges of its physical blocks (TID range scans, no index needed).\n\
             strategy = \"ctid\"\n\
             count = {count}"
        ),
    };
    out.push_str(&partition);
    out.push('\n');
    let target = match target_url {
        Some(url) => format!("url = \"${{TARGET_URL:-{url}}}\""),
        None => "url = \"${TARGET_URL}\"".to_string(),
    };
    let _ = writeln!(
        out,
        "\n[target]\n\
         {target}\n\
         # table = {}      # default: the source table's name\n\
         # Rows already in the target stay; or truncate | upsert | replace | overwrite |\n\
         # error-if-exists (see docs/JOB.md, write modes).\n\
         mode = \"append\"\n\
         # method = \"insert\"              # default \"copy\": binary COPY",
        toml_string(&table_name(&facts.table)),
    );
    let parallelism = match choice {
        Choice::Whole => 1,
        Choice::Stride { count, .. } | Choice::Quantile { count, .. } | Choice::Ctid { count } => {
            (*count).min(PARALLELISM)
        }
    };
    let _ = writeln!(
        out,
        "\n[run]\n\
         # Connections at once on each side; partitions beyond it queue.\n\
         parallelism = {parallelism}\n\
         # Compare row counts partition by partition after the copy (or \"checksum\").\n\
         verify = \"count\""
    );
    out
}

/// The table's name as a job file writes it: quoted where SQL needs quotes.
fn table_name(table: &QualifiedName) -> String {
    let part = |name: &str| {
        let plain = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if plain {
            name.to_string()
        } else {
            crate::sql::quote_ident(name)
        }
    };
    match &table.schema {
        Some(schema) => format!("{}.{}", part(schema), part(&table.name)),
        None => part(&table.name),
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(column: &str, primary: bool) -> Candidate {
        Candidate {
            column: column.to_string(),
            type_name: "bigint".to_string(),
            key_type: KeyType::Int8,
            primary,
            unique: primary,
        }
    }

    fn facts(
        rows: i64,
        candidates: Vec<Candidate>,
        distribution: Option<Distribution>,
    ) -> TableFacts {
        TableFacts {
            table: QualifiedName::parse("public.events").unwrap(),
            kind: 'r',
            rows,
            bytes: rows * 100,
            candidates,
            distribution,
            file: false,
        }
    }

    fn even(n: i64) -> Distribution {
        Distribution {
            points: (0..n).map(|v| (v, 1.0 / n as f64)).collect(),
            nulls: 0.0,
        }
    }

    #[test]
    fn counts_follow_the_size() {
        assert_eq!(count_for(100_000), 4);
        assert_eq!(count_for(5_000_000), 5);
        assert_eq!(count_for(10_000_001), 11);
        assert_eq!(count_for(i64::MAX / 2), 256);
    }

    #[test]
    fn choices() {
        assert_eq!(
            choose(&facts(99_999, vec![candidate("id", true)], None)),
            Choice::Whole
        );
        match choose(&facts(
            5_000_000,
            vec![candidate("id", true)],
            Some(even(1000)),
        )) {
            Choice::Stride {
                column,
                count,
                spread,
            } => {
                assert_eq!((column.column.as_str(), count), ("id", 5));
                assert!(spread.unwrap() < 1.1);
            }
            other => panic!("{other:?}"),
        }
        // 90% of the weight in the first tenth of the range.
        let mut skewed = Distribution {
            points: (0..100).map(|v| (v, 0.009)).collect(),
            nulls: 0.0,
        };
        skewed.points.extend((100..1000).map(|v| (v, 0.1 / 900.0)));
        match choose(&facts(5_000_000, vec![candidate("id", true)], Some(skewed))) {
            Choice::Quantile { spread, .. } => assert!(spread > 5.0, "{spread}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            choose(&facts(5_000_000, vec![], None)),
            Choice::Ctid { count: 5 }
        );
        let view = TableFacts {
            kind: 'v',
            ..facts(5_000_000, vec![], None)
        };
        assert_eq!(choose(&view), Choice::Whole);
    }

    #[test]
    fn the_written_job_parses_and_says_why() {
        let f = facts(5_000_000, vec![candidate("id", true)], Some(even(100)));
        for choice in [
            choose(&f),
            Choice::Quantile {
                column: candidate("id", true),
                count: 8,
                spread: 9.5,
            },
            Choice::Ctid { count: 5 },
            Choice::Whole,
        ] {
            let text = render(
                &f,
                &choice,
                "postgres://u@h:5432/app",
                Some("postgres://h/dw"),
            );
            let job =
                crate::job::Job::parse(&text, |_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(job.source.url.expose(), "postgres://u@h:5432/app");
            assert_eq!(job.target.url.expose(), "postgres://h/dw");
            assert_eq!(
                job.source.relation,
                crate::job::Relation::Table(f.table.clone())
            );
            match choice {
                Choice::Whole => assert!(job.partition.is_none()),
                Choice::Quantile { .. } => {
                    assert!(text.contains("spread of 9.5x"), "{text}");
                    assert_eq!(
                        job.partition.unwrap().strategy,
                        crate::job::Strategy::Quantile
                    );
                }
                Choice::Ctid { .. } => assert!(job.partition.unwrap().column.is_none()),
                Choice::Stride { .. } => {
                    assert!(text.contains("id is the primary key (bigint)"), "{text}");
                    assert_eq!(job.parallelism, Some(4));
                }
            }
        }
        // Without --target the URL must come from the environment.
        let text = render(&f, &Choice::Whole, "postgres://h/app", None);
        assert!(crate::job::Job::parse(&text, |_| None)
            .unwrap_err()
            .to_string()
            .contains("TARGET_URL"));
    }

    #[test]
    fn table_names_are_quoted_where_sql_needs_it() {
        assert_eq!(
            table_name(&QualifiedName::parse("public.events").unwrap()),
            "public.events"
        );
        assert_eq!(
            table_name(&QualifiedName::parse("\"My Schema\".\"Orders\"").unwrap()),
            "\"My Schema\".\"Orders\""
        );
    }
}
