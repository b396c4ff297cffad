//! Checkpoints: what identifies a run (its fingerprint) and the statements that
//! record it on the target. Pure: the copy and the commands module send them.
//!
//! The checkpoint table holds one row per run (`partition = -1`: the bounds it
//! planned with, whether it has finished) and one row per committed partition,
//! written in that partition's own target transaction, so a partition's rows and
//! its record commit together or not at all. A re-run of the same job skips the
//! partitions recorded; in truncate mode the run row is written in the same
//! transaction as the TRUNCATE (in overwrite mode, as the DROP and CREATE), so a
//! resumed run never empties the target again. In replace mode the run records
//! the staging table it fills, which becomes the target at the swap.

use crate::job::{DbUrl, Job, Relation};
use crate::plan::{Bounds, Window};
use crate::sql::{quote_literal, QualifiedName};

/// The run row's `partition` value.
pub const RUN_ROW: i64 = -1;

/// A stable 64-bit FNV-1a hash of what decides a run's data, as 16 hex digits:
/// the source (server and database, not the user or password), the table or
/// query, columns, `where`, the partition column, bounds as written and count, and
/// the target table. Changing any of them starts a different run.
pub fn fingerprint(job: &Job) -> String {
    let mut text = String::new();
    text.push_str(&format!(
        "source={}\n",
        server_and_database(&job.source.url)
    ));
    match &job.source.relation {
        Relation::Table(name) => text.push_str(&format!("table={name}\n")),
        Relation::Query(query) => text.push_str(&format!("query={query}\n")),
    }
    text.push_str(&format!("columns={:?}\n", job.source.columns));
    text.push_str(&format!("where={:?}\n", job.source.where_clause));
    if job.source.sample.is_some() || job.source.limit.is_some() {
        text.push_str(&format!(
            "slice={:?} {:?}\n",
            job.source.sample, job.source.limit
        ));
    }
    match &job.partition {
        Some(p) => {
            text.push_str(&format!(
                "partition={:?} {:?} {}\n",
                p.column, p.bounds, p.count
            ));
            if p.strategy != crate::job::Strategy::Stride {
                text.push_str(&format!("strategy={:?}\n", p.strategy));
            }
        }
        None => text.push_str("partition=none\n"),
    }
    text.push_str(&format!("target={}\n", job.target.table));
    if let Some(inc) = &job.incremental {
        text.push_str(&format!("incremental={:?}\n", inc.column));
    }
    // A partial append run resumed in truncate mode would never truncate.
    text.push_str(&format!("mode={:?}\n", job.target.mode));
    // Added only in upsert mode, so the fingerprints of other jobs stay as they
    // were and their unfinished runs still resume.
    if let Some(upsert) = &job.target.upsert {
        text.push_str(&format!(
            "upsert={:?} {:?}\n",
            upsert.key, upsert.on_conflict
        ));
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// `host:port/database` of a URL, without user or password.
fn server_and_database(url: &DbUrl) -> String {
    match url::Url::parse(url.expose()) {
        Ok(u) => format!(
            "{}:{}{}",
            u.host_str().unwrap_or(""),
            // The port each scheme's client assumes.
            u.port().unwrap_or(match u.scheme() {
                "mysql" | "mariadb" => 3306,
                _ => 5432,
            }),
            u.path()
        ),
        Err(_) => String::new(),
    }
}

/// The checkpoint table's columns every engine has: name, PostgreSQL's
/// definition, SQLite's. The one place its shape is written down.
pub const COLUMNS: &[(&str, &str, &str)] = &[
    ("fingerprint", "text NOT NULL", "TEXT NOT NULL"),
    ("partition", "integer NOT NULL", "INTEGER NOT NULL"),
    ("target_table", "text NOT NULL", "TEXT NOT NULL"),
    ("range", "text NOT NULL", "TEXT NOT NULL"),
    ("lower_bound", "bigint", "INTEGER"),
    ("upper_bound", "bigint", "INTEGER"),
    ("partitions", "integer", "INTEGER"),
    ("rows", "bigint", "INTEGER"),
    ("bytes", "bigint", "INTEGER"),
    (
        "finished",
        "boolean NOT NULL DEFAULT false",
        "INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "recorded_at",
        "timestamptz NOT NULL DEFAULT now()",
        "TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))",
    ),
];

/// `CREATE TABLE IF NOT EXISTS` of the checkpoint table, each column's
/// definition picked by `definition` from [`COLUMNS`], then `more` (columns
/// only the PostgreSQL route records), keyed by run and partition.
pub fn create_table_columns(
    table: &str,
    definition: impl Fn(&(&str, &str, &str)) -> String,
    more: &[(&str, &str)],
) -> String {
    let columns: Vec<String> = COLUMNS
        .iter()
        .map(|c| format!("    {} {}", c.0, definition(c)))
        .chain(more.iter().map(|(name, ty)| format!("    {name} {ty}")))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n{},\n    PRIMARY KEY (fingerprint, partition)\n)",
        columns.join(",\n")
    )
}

/// Columns later versions of stride added to the checkpoint table, with their types.
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("target_oid", "bigint"),
    ("failed_check", "text"),
    ("mark_first", "boolean"),
    ("mark_from", "bigint"),
    ("mark_to", "bigint"),
    ("boundaries", "bigint[]"),
    ("deferred_indexes", "text[]"),
    ("estimates", "bigint[]"),
];

/// How many of the added columns the checkpoint table has: all of them, and it
/// is up to date (`ADDED_COLUMNS.len()`); a missing table has none.
pub fn up_to_date_sql(table: &QualifiedName) -> String {
    let names: Vec<String> = ADDED_COLUMNS
        .iter()
        .map(|(n, _)| quote_literal(n))
        .collect();
    format!(
        "SELECT count(*)::int8 = {} FROM pg_attribute WHERE attrelid = to_regclass({}) \
         AND NOT attisdropped AND attname IN ({})",
        ADDED_COLUMNS.len(),
        quote_literal(&table.to_string()),
        names.join(", ")
    )
}

/// The checkpoint table, created on first use, and a table made by an earlier
/// version of stride brought up to date, in one transaction under a lock of its
/// own: concurrent runs into different tables (several tables of one job, or
/// jobs started together) create it once, not one of them failing on a
/// duplicate type.
pub fn create_table_sql(table: &QualifiedName) -> String {
    let added: Vec<String> = ADDED_COLUMNS
        .iter()
        .map(|(name, ty)| format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {ty};"))
        .collect();
    format!(
        "BEGIN;
SELECT pg_advisory_xact_lock(hashtextextended({}, 0));
{};
{}
COMMIT",
        quote_literal(&format!("stride checkpoint table {table}")),
        create_table_columns(&table.to_string(), |c| c.1.to_string(), ADDED_COLUMNS),
        added.join("\n")
    )
}

/// Checkpoints of other runs into the same target table, forgotten when a run
/// empties that table: their partitions are gone with the TRUNCATE, so resuming
/// them would skip rows that are no longer there.
pub fn forget_other_runs_sql(
    table: &QualifiedName,
    fingerprint: &str,
    target_table: &QualifiedName,
) -> String {
    format!(
        "DELETE FROM {table} WHERE fingerprint IN (SELECT fingerprint FROM {table} \
         WHERE partition = {RUN_ROW} AND target_oid = {} AND fingerprint <> {})",
        target_oid_sql(target_table),
        quote_literal(fingerprint)
    )
}

/// The target table's OID: a run recorded against another OID (the table was
/// dropped and created again since) is not resumed.
pub fn target_oid_sql(target_table: &QualifiedName) -> String {
    format!(
        "to_regclass({})::oid::int8",
        quote_literal(&target_table.to_string())
    )
}

/// What the run row records beyond its identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunRecord<'a> {
    /// The bounds the run planned with, so a resumed run plans the same
    /// partitions even when its bounds come from the source's min and max.
    pub bounds: Option<&'a Bounds>,
    pub partitions: usize,
    /// An incremental run's window (its upper end becomes the high-water mark
    /// once the run finishes).
    pub window: Option<&'a Window>,
    /// The quantile strategy's boundaries.
    pub boundaries: Option<&'a [i64]>,
    /// `CREATE INDEX` statements of the secondary indexes dropped for the copy
    /// (`target.defer_indexes`), built again when the run closes.
    pub deferred_indexes: &'a [String],
    /// `stride prepare`: each partition's estimated rows, in order, from which
    /// `stride status` tells the rows left (empty: not recorded).
    pub estimates: &'a [i64],
}

/// The run row.
/// An `int8[]` literal, or `NULL`.
fn int8_array(values: Option<&[i64]>) -> String {
    values.map_or_else(
        || "NULL".to_string(),
        |v| {
            let list: Vec<String> = v.iter().map(i64::to_string).collect();
            format!("'{{{}}}'::int8[]", list.join(","))
        },
    )
}

pub fn record_run_sql(
    table: &QualifiedName,
    fingerprint: &str,
    target_table: &QualifiedName,
    record: &RunRecord,
) -> String {
    let number = |v: Option<i64>| v.map_or_else(|| "NULL".to_string(), |v| v.to_string());
    let bounds = record.bounds;
    let (lower, upper) = (
        number(bounds.map(|b| b.lower)),
        number(bounds.map(|b| b.upper)),
    );
    let (first, from, to) = match record.window {
        Some(w) => (w.first.to_string(), number(w.since), number(w.until)),
        None => ("NULL".to_string(), "NULL".to_string(), "NULL".to_string()),
    };
    let boundaries = int8_array(record.boundaries);
    let deferred = if record.deferred_indexes.is_empty() {
        "NULL".to_string()
    } else {
        let list: Vec<String> = record
            .deferred_indexes
            .iter()
            .map(|d| quote_literal(d))
            .collect();
        format!("ARRAY[{}]::text[]", list.join(", "))
    };
    let estimates = int8_array(Some(record.estimates).filter(|e| !e.is_empty()));
    format!(
        "INSERT INTO {table} (fingerprint, partition, target_table, range, lower_bound, upper_bound, partitions, target_oid, mark_first, mark_from, mark_to, boundaries, deferred_indexes, estimates) \
         VALUES ({}, {RUN_ROW}, {}, 'run', {lower}, {upper}, {}, {}, {first}, {from}, {to}, {boundaries}, {deferred}, {estimates})",
        quote_literal(fingerprint),
        quote_literal(&target_table.to_string()),
        record.partitions,
        target_oid_sql(target_table),
    )
}

/// One committed partition, written in its own target transaction.
pub fn record_partition_sql(
    table: &QualifiedName,
    fingerprint: &str,
    target_table: &QualifiedName,
    index: usize,
    range: &str,
    rows: u64,
    bytes: u64,
) -> String {
    format!(
        "INSERT INTO {table} (fingerprint, partition, target_table, range, rows, bytes, finished) \
         VALUES ({}, {index}, {}, {}, {rows}, {bytes}, true)",
        quote_literal(fingerprint),
        quote_literal(&target_table.to_string()),
        quote_literal(range),
    )
}

/// `--shard auto`: the claim on partition `index`, taken first thing in the
/// partition's own target transaction and held until it ends, so a worker that
/// dies (its transaction rolled back) frees the partition at once. It is a
/// transaction advisory lock, not a row lock: a partition has no row in the
/// checkpoint table until it is done (its row is written in the same
/// transaction), so the lock stands in for `SELECT ... FOR UPDATE SKIP LOCKED`
/// on a row that does not exist yet. `pg_try_` never waits: `false` means
/// another worker holds the partition.
pub fn claim_sql(fingerprint: &str, index: usize) -> String {
    format!(
        "SELECT pg_try_advisory_xact_lock({}, {index})",
        claim_class(fingerprint)
    )
}

/// Waits for the claim on partition `index` (a worker that stays to take over
/// a dead worker's partition): returns once the holder's transaction ends.
pub fn wait_claim_sql(fingerprint: &str, index: usize) -> String {
    format!(
        "SELECT pg_advisory_xact_lock({}, {index})",
        claim_class(fingerprint)
    )
}

/// The claims' first key: 31 bits of the run's fingerprint, so `pg_locks`
/// shows a claim as `classid` (this) and `objid` (the partition).
pub fn claim_class(fingerprint: &str) -> i32 {
    let bits = u32::from_str_radix(fingerprint.get(..8).unwrap_or("0"), 16).unwrap_or(0);
    (bits & 0x7fff_ffff) as i32
}

/// Whether partition `index` is recorded as done: asked after the claim, in a
/// statement of its own, so its snapshot sees a worker that committed the
/// partition just before the claim was free.
pub fn recorded_sql(table: &QualifiedName, fingerprint: &str, index: usize) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM {table} WHERE fingerprint = {} AND partition = {index})",
        quote_literal(fingerprint)
    )
}

/// `stride status`: the partitions other sessions hold claims on now, with who
/// holds them (the worker's `application_name` names its host and process
/// while it holds a claim) and since when.
pub fn claims_held_sql(fingerprint: &str) -> String {
    format!(
        "SELECT l.objid::int8, coalesce(a.application_name, ''), \
           coalesce(host(a.client_addr), 'local'), \
           coalesce(extract(epoch FROM now() - a.xact_start), 0)::float8 \
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
           AND l.classid = {} AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY 1",
        claim_class(fingerprint)
    )
}

pub fn finish_run_sql(table: &QualifiedName, fingerprint: &str) -> String {
    format!(
        "UPDATE {table} SET finished = true, recorded_at = now() WHERE fingerprint = {} AND partition = {RUN_ROW}",
        quote_literal(fingerprint)
    )
}

/// Marks the run as failing its coverage check: a re-run must not finish it by
/// skipping every partition; only `--restart` starts it over.
pub fn fail_check_sql(table: &QualifiedName, fingerprint: &str, problem: &str) -> String {
    format!(
        "UPDATE {table} SET failed_check = {}, recorded_at = now() WHERE fingerprint = {} AND partition = {RUN_ROW}",
        quote_literal(problem),
        quote_literal(fingerprint)
    )
}

pub fn forget_run_sql(table: &QualifiedName, fingerprint: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE fingerprint = {}",
        quote_literal(fingerprint)
    )
}

/// A run recorded in the checkpoint table.
#[derive(Clone, Debug)]
pub struct RecordedRun {
    /// The bounds the run planned with (`None`: one partition, or an empty source).
    pub bounds: Option<(i64, i64)>,
    pub partitions: i64,
    pub finished: bool,
    pub recorded_at: String,
    /// The target table's OID when the run began.
    pub target_oid: Option<i64>,
    /// Why the run failed its coverage check, if it did.
    pub failed_check: Option<String>,
    /// An incremental run's window.
    pub window: Option<Window>,
    /// The quantile strategy's boundaries.
    pub boundaries: Option<Vec<i64>>,
    /// Secondary indexes dropped for the copy, to build again (`CREATE INDEX ...`).
    pub deferred_indexes: Vec<String>,
    /// `stride prepare`'s estimated rows of each partition (empty: not recorded).
    pub estimates: Vec<i64>,
    /// Committed partitions: index, rows, bytes.
    pub done: Vec<(usize, u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(extra: &str) -> Job {
        let text = format!(
            "[source]\nurl='postgres://u:pw@h:5433/src'\ntable='public.t'\n{extra}\n[target]\nurl='postgres://h/t'\n"
        );
        Job::parse(&text, |_| None).unwrap()
    }

    #[test]
    fn claims() {
        // 31 bits of the fingerprint's first 8 hex digits: pg_locks' classid.
        assert_eq!(claim_class("964089658cab848a"), 0x1640_8965);
        assert_eq!(claim_class("0000002a00000000"), 42);
        assert_eq!(
            claim_sql("964089658cab848a", 7),
            "SELECT pg_try_advisory_xact_lock(373328229, 7)"
        );
        assert_eq!(
            wait_claim_sql("964089658cab848a", 7),
            "SELECT pg_advisory_xact_lock(373328229, 7)"
        );
        let table = QualifiedName::parse("stride_checkpoints").unwrap();
        assert_eq!(
            recorded_sql(&table, "964089658cab848a", 7),
            "SELECT EXISTS (SELECT 1 FROM \"stride_checkpoints\" WHERE fingerprint = '964089658cab848a' AND partition = 7)"
        );
        assert!(claims_held_sql("964089658cab848a").contains(
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = 373328229 AND"
        ));
    }

    #[test]
    fn fingerprint_follows_what_decides_the_data() {
        let base = fingerprint(&job(""));
        assert_eq!(base.len(), 16);
        assert_eq!(base, fingerprint(&job("")), "deterministic");
        // The password and the target's connection do not decide the data.
        let other_password = Job::parse(
            "[source]\nurl='postgres://u:other@h:5433/src'\ntable='public.t'\n[target]\nurl='postgres://x/y'\n",
            |_| None,
        )
        .unwrap();
        assert_eq!(base, fingerprint(&other_password));
        for changed in [
            "where = 'a > 1'",
            "columns = ['a']",
            "[partition]\ncolumn = 'id'\ncount = 2",
        ] {
            assert_ne!(base, fingerprint(&job(changed)), "{changed}");
        }
        let target = |keys: &str| {
            let text = format!(
                "[source]\nurl='postgres://u:pw@h:5433/src'\ntable='public.t'\n[target]\nurl='postgres://h/t'\n{keys}\n"
            );
            fingerprint(&Job::parse(&text, |_| None).unwrap())
        };
        // An append job's fingerprint is what it was before the upsert keys existed.
        assert_eq!(base, target("mode = 'append'"));
        assert_eq!(base, target("reset_sequences = false"));
        let modes = [
            target("mode = 'append'"),
            target("mode = 'truncate'"),
            target("mode = 'error-if-exists'"),
            target("mode = 'replace'"),
            target("mode = 'overwrite'"),
            target("mode = 'upsert'"),
            target("mode = 'upsert'\non_conflict = 'skip'"),
            target("mode = 'upsert'\nkey = ['id']"),
            target("mode = 'upsert'\nkey = ['id', 'day']"),
        ];
        for (i, a) in modes.iter().enumerate() {
            for b in &modes[i + 1..] {
                assert_ne!(a, b, "modes {modes:?}");
            }
        }
        assert_eq!(
            target("mode = 'upsert'"),
            target("mode = 'upsert'\non_conflict = 'update'")
        );
        let bounds = |l: i64, u: i64| {
            fingerprint(&job(&format!(
                "[partition]\ncolumn = 'id'\nlower_bound = {l}\nupper_bound = {u}\ncount = 4"
            )))
        };
        assert_eq!(bounds(0, 100), bounds(0, 100));
        assert_ne!(bounds(0, 100), bounds(0, 101));
        assert_ne!(
            fingerprint(&job("")),
            fingerprint(&job("[incremental]\ncolumn = 'date'"))
        );
    }

    #[test]
    fn statements() {
        let t = QualifiedName::parse("stride_checkpoints").unwrap();
        let target = QualifiedName::parse("public.t").unwrap();
        let b = Bounds {
            lower: -5,
            upper: 10,
            origin: crate::plan::BoundsOrigin::Source,
        };
        assert_eq!(
            record_run_sql(
                &t,
                "abc",
                &target,
                &RunRecord {
                    bounds: Some(&b),
                    partitions: 3,
                    ..RunRecord::default()
                }
            ),
            "INSERT INTO \"stride_checkpoints\" (fingerprint, partition, target_table, range, lower_bound, upper_bound, partitions, target_oid, mark_first, mark_from, mark_to, boundaries, deferred_indexes, estimates) VALUES ('abc', -1, '\"public\".\"t\"', 'run', -5, 10, 3, to_regclass('\"public\".\"t\"')::oid::int8, NULL, NULL, NULL, NULL, NULL, NULL)"
        );
        let w = Window {
            first: false,
            since: Some(7),
            until: None,
        };
        assert!(
            record_run_sql(
                &t,
                "abc",
                &target,
                &RunRecord {
                    partitions: 1,
                    window: Some(&w),
                    boundaries: Some(&[-3, 5]),
                    deferred_indexes: &["CREATE INDEX i ON t (a's)".to_string()],
                    estimates: &[120, 0],
                    ..RunRecord::default()
                }
            )
            .ends_with(
                "'run', NULL, NULL, 1, to_regclass('\"public\".\"t\"')::oid::int8, false, 7, NULL, '{-3,5}'::int8[], ARRAY['CREATE INDEX i ON t (a''s)']::text[], '{120,0}'::int8[])"
            )
        );
        assert_eq!(
            record_partition_sql(&t, "abc", &target, 2, "[5, 10)", 7, 99),
            "INSERT INTO \"stride_checkpoints\" (fingerprint, partition, target_table, range, rows, bytes, finished) VALUES ('abc', 2, '\"public\".\"t\"', '[5, 10)', 7, 99, true)"
        );
        assert_eq!(
            forget_run_sql(&t, "abc"),
            "DELETE FROM \"stride_checkpoints\" WHERE fingerprint = 'abc'"
        );
    }
}
