//! The order of the steps of each command. Everything before the first write
//! (parsing, introspection, planning, the type check, the connection budget) comes
//! first, so a bad job exits 2 with the target untouched.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checkpoint;
use crate::cli::{Cli, Command, Format, Shard, VerifyArgs, VerifyBy};
use crate::copy::{run_partitions, Checkpoint, CopySpec, PartitionReport, Status, UpsertSpec};
use crate::error::{exit, JobError};
use crate::job::{Create, Job, JobSet, Mode, Relation, Strategy, Verify};
use crate::partition::weighted_cuts;
use crate::pg::{self, Column, Server, Side, Transfer};
use crate::plan::{self, Bounds, BoundsOrigin, Cut, Key, Plan, PlannedPartition, Window};
use crate::replace;
use crate::report::{self, ColumnFit, Summary, Verified};
use crate::sql::QualifiedName;

/// Runs the command; returns the exit code for outcomes that are not errors of
/// their own (a copy that failed after writing some partitions prints its summary
/// and returns 1).
pub async fn execute(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Run(args) => {
            let shard = Shard::resolve(args.shard, |name| std::env::var(name).ok())
                .map_err(JobError::new)?;
            if shard.is_some() && (args.restart || args.full_refresh) {
                return Err(JobError::new(
                    "--shard: a shard cannot start the run over (expected `stride prepare --restart` or `--full-refresh` instead)",
                )
                .into());
            }
            let opts = RunOptions {
                step: shard.map_or(Step::Whole, Step::Shard),
                restart: args.restart,
                full_refresh: args.full_refresh,
                quiet: cli.quiet,
                human_to_stderr: args.summary_json.as_deref() == Some(Path::new("-")),
            };
            let started = Instant::now();
            let ends = run_tables(&args.job, &cli.overrides, &opts).await;
            report_run(&args, &ends, started.elapsed())?;
            ends.map(|ends| worst(&ends))
        }
        Command::Prepare(args) => {
            let opts = RunOptions {
                step: Step::Prepare,
                restart: args.restart,
                full_refresh: args.full_refresh,
                quiet: cli.quiet,
                human_to_stderr: false,
            };
            run_tables(&args.job, &cli.overrides, &opts)
                .await
                .map(|ends| worst(&ends))
        }
        Command::Finish(args) => {
            let opts = RunOptions {
                step: Step::Finish,
                restart: false,
                full_refresh: false,
                quiet: cli.quiet,
                human_to_stderr: false,
            };
            run_tables(&args.job, &cli.overrides, &opts)
                .await
                .map(|ends| worst(&ends))
        }
        Command::Plan(args) => plan_command(&args.job, &cli.overrides, args.format).await,
        Command::Check(args) => check(&args.job, &cli.overrides).await,
        Command::Verify(args) => verify(&args, &cli.overrides, cli.quiet).await,
        Command::Init(args) => init_command(&args).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "stride", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("writing the man page")?;
            Ok(exit::OK)
        }
    }
}

/// How a run ended, for `--summary-json` and `--metrics-file`.
struct RunEnd {
    code: u8,
    /// `None` when there was nothing to do.
    summary: Option<Summary>,
    fingerprint: String,
    /// The target table.
    table: String,
}

/// The exit code of several tables' runs: the most serious (130 interrupted,
/// then 2, then 1, then 0).
fn worst(ends: &[RunEnd]) -> u8 {
    ends.iter().map(|e| e.code).max().unwrap_or(exit::OK)
}

/// Writes `--summary-json` and `--metrics-file` for a run that ended, however it
/// ended (an error before the copy gives a summary with the error and no
/// partitions). A job file of several tables gives one document of the totals
/// with each table's own under `tables`.
fn report_run(
    args: &crate::cli::RunArgs,
    ends: &Result<Vec<RunEnd>>,
    elapsed: std::time::Duration,
) -> Result<()> {
    let doc = match ends {
        Ok(ends) if ends.len() == 1 => {
            let end = &ends[0];
            report::summary_json(end.summary.as_ref(), &end.fingerprint, end.code, None)
        }
        Ok(ends) => report::tables_json(
            &ends
                .iter()
                .map(|e| {
                    let mut doc =
                        report::summary_json(e.summary.as_ref(), &e.fingerprint, e.code, None);
                    doc["table"] = json!(e.table);
                    doc
                })
                .collect::<Vec<_>>(),
            worst(ends),
            elapsed,
        ),
        Err(e) => report::summary_json(
            None,
            "",
            crate::error::exit_code(e),
            Some(&crate::error::chain(e)),
        ),
    };
    if let Some(path) = &args.summary_json {
        let text = serde_json::to_string_pretty(&doc).expect("JSON values always serialize");
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            write_atomically(path, &text)
                .with_context(|| format!("writing --summary-json {}", path.display()))?;
        }
    }
    if let Some(path) = &args.metrics_file {
        let previous = std::fs::read_to_string(path).unwrap_or_default();
        let text = report::metrics_text(&doc, &args.job.display().to_string(), &previous);
        write_atomically(path, &text)
            .with_context(|| format!("writing --metrics-file {}", path.display()))?;
    }
    Ok(())
}

/// Writes a file whole or not at all: a temporary file beside it, renamed over it.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The job file's jobs: one, or one per `[[tables]]` entry.
fn load_jobs(path: &Path, overrides: &[(String, String)]) -> Result<JobSet> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| JobError::new(format!("{}: cannot read the job file: {e}", path.display())))?;
    let set = JobSet::parse(&text, |name| std::env::var(name).ok(), overrides)
        .map_err(|e| JobError::new(format!("{}: {e}", path.display())))?;
    Ok(set)
}

/// An error of a job file's `[[tables]]` entry `i`, named as such (a job error
/// stays one: exit 2).
fn in_entry(many: bool, i: usize, e: anyhow::Error) -> anyhow::Error {
    if !many {
        return e;
    }
    match e.downcast::<JobError>() {
        Ok(job) => JobError::new(format!("tables[{i}]: {job}")).into(),
        Err(e) => e.context(format!("tables[{i}]")),
    }
}

/// A step of a run over every table of the job file. All are checked (and
/// connected) first, so a bad entry exits 2 before any table is written; then
/// they run one after the other, stopping at the first that does not succeed, or
/// all at once (`[run] tables = "concurrent"`). Several tables end with a summary
/// of them all.
async fn run_tables(
    path: &Path,
    overrides: &[(String, String)],
    opts: &RunOptions,
) -> Result<Vec<RunEnd>> {
    let set = load_jobs(path, overrides)?;
    let many = set.jobs.len() > 1;
    let started = Instant::now();
    let mut prepared = Vec::with_capacity(set.jobs.len());
    for (i, job) in set.jobs.into_iter().enumerate() {
        let checked = async {
            let p = prepare(job).await?;
            check_before_writing(&p.job, &p.target, opts).await?;
            anyhow::Ok(p)
        };
        prepared.push(checked.await.map_err(|e| in_entry(many, i, e))?);
    }
    if !many {
        let one = prepared.pop().expect("a job set holds at least one job");
        return Ok(vec![run(one, path, opts).await?]);
    }
    let named = |table: String, end: Result<RunEnd>| {
        end.unwrap_or_else(|e| {
            eprintln!("error: {table}: {}", crate::error::chain(&e));
            RunEnd {
                code: crate::error::exit_code(&e),
                summary: None,
                fingerprint: String::new(),
                table,
            }
        })
    };
    let mut ends = Vec::new();
    if set.concurrent {
        let runs = prepared.into_iter().map(|p| {
            let table = p.job.target.table.to_string();
            async move { named(table, run(p, path, opts).await) }
        });
        ends = futures_util::future::join_all(runs).await;
    } else {
        for p in prepared {
            let table = p.job.target.table.to_string();
            let end = named(table, run(p, path, opts).await);
            let code = end.code;
            ends.push(end);
            if code != exit::OK {
                break;
            }
        }
    }
    if matches!(opts.step, Step::Whole | Step::Shard(_)) {
        let rows: Vec<(String, Option<&Summary>, u8)> = ends
            .iter()
            .map(|e| (e.table.clone(), e.summary.as_ref(), e.code))
            .collect();
        let text = report::render_tables(&rows, started.elapsed());
        if opts.human_to_stderr {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    }
    Ok(ends)
}

/// What the source is, for messages: the table's name, or "query".
fn source_name(job: &Job) -> String {
    match &job.source.relation {
        Relation::Table(name) => name.to_string(),
        Relation::Query(_) => "(query)".to_string(),
    }
}

/// The source's columns, or a job error if the table is missing or the query fails.
/// The source's columns and, for a table source, its relkind; or a job error if
/// the table is missing or the query fails.
async fn describe_source(
    conn: &mut PgConnection,
    job: &Job,
    place: &str,
) -> Result<(Vec<Column>, Option<char>)> {
    match &job.source.relation {
        Relation::Table(name) => match pg::describe_table(conn, name).await? {
            Some(relation) => Ok((relation.columns, Some(relation.kind))),
            None => Err(JobError::new(format!(
                "source.table: table {name} does not exist in the source database at {place} (expected an existing table or view)"
            ))
            .into()),
        },
        Relation::Query(query) => match pg::describe_query(conn, query).await {
            Ok(relation) => Ok((relation.columns, None)),
            Err(e) => Err(JobError::new(crate::error::chain(&e)).into()),
        },
    }
}

/// The source side, resolved: columns to copy, the key and the job's own bounds.
struct SourceSide {
    columns: Vec<Column>,
    key: Option<Key>,
    bounds: Option<Bounds>,
    /// The incremental column, if the job has one.
    mark: Option<Key>,
    /// A table source's relkind (`r` table, `v` view, ...); `None` for a query.
    kind: Option<char>,
}

/// Reads the source's catalogue and checks the job against it: columns, key,
/// bounds, and that the job's SQL (`where`, `query`) runs there.
async fn resolve_source(pool: &PgPool, job: &Job, place: &str) -> Result<SourceSide> {
    let mut conn = pool
        .acquire()
        .await
        .context("taking a source connection (none could be opened or freed within 60 s)")?;
    let (all, kind) = describe_source(&mut conn, job, place).await?;
    if job.source.sample.is_some() && !matches!(kind, Some('r' | 'm' | 'p')) {
        return Err(JobError::new(
            "source.sample: TABLESAMPLE needs a table or materialized view, and source.table names a view (expected a table, or source.query with TABLESAMPLE in it)",
        )
        .into());
    }
    if plan::strategy(job) == Strategy::Ctid && !matches!(kind, Some('r' | 'm')) {
        return Err(JobError::new(format!(
            "partition.strategy: \"ctid\" splits a table by its physical blocks, and the source is {} (expected source.table naming a table or materialized view, or another strategy)",
            match kind {
                None => "a query".to_string(),
                Some('v') => "a view".to_string(),
                Some('p') => "a partitioned table".to_string(),
                Some(k) => format!("of relkind '{k}'"),
            }
        ))
        .into());
    }
    let columns = plan::resolve_columns(job, &all)?;
    let key = plan::resolve_key(job, &all)?;
    let mark = plan::resolve_incremental(job, &all)?;
    let bounds = match &key {
        Some(key) => plan::parse_bounds(job, key)?,
        None => None,
    };
    if let Err(e) = pg::explain(&mut conn, &plan::whole_select(job, &columns)).await {
        let key = match (&job.source.where_clause, &job.source.relation) {
            (Some(_), _) => "source.where",
            (None, Relation::Query(_)) => "source.query",
            (None, Relation::Table(_)) => "source.table",
        };
        return Err(match e.as_database_error() {
            // Class 42: syntax error or access rule violation; 22: data exception.
            Some(db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("42") || c.starts_with("22")) =>
            {
                JobError::new(format!(
                    "{key}: does not run on the source: {}",
                    db.message()
                ))
                .into()
            }
            _ => anyhow::Error::new(e).context("checking the source query"),
        });
    }
    Ok(SourceSide {
        columns,
        key,
        bounds,
        mark,
        kind,
    })
}

/// The plan: with the bounds (or boundaries, or block count) a recorded run
/// planned with, so a resume plans exactly its partitions; else from the job and
/// the source, read in `conn`'s snapshot.
async fn plan_partitions(
    conn: &mut PgConnection,
    job: &Job,
    side: &SourceSide,
    recorded: Option<&pg::RecordedRun>,
) -> Result<Plan> {
    let cut = match (plan::strategy(job), &side.key, recorded) {
        (Strategy::Stride, ..) => Cut::Stride,
        (Strategy::Quantile, _, Some(run)) => Cut::Quantile {
            boundaries: run.boundaries.clone().unwrap_or_default(),
            how: "as the run it resumes planned them".to_string(),
        },
        (Strategy::Quantile, Some(key), None) => quantile_cut(conn, job, side, key).await?,
        (Strategy::Quantile, None, None) => unreachable!("the quantile strategy has a column"),
        (Strategy::Ctid, _, Some(run)) => Cut::Ctid {
            blocks: run.bounds.map_or(0, |b| b.1),
        },
        (Strategy::Ctid, _, None) => match &job.source.relation {
            Relation::Table(table) => Cut::Ctid {
                blocks: pg::scalar_i64(conn, &plan::blocks_sql(table))
                    .await
                    .context("reading the source table's size in blocks")?,
            },
            Relation::Query(_) => unreachable!("resolve_source refuses ctid on a query"),
        },
    };
    let bounds = match (&cut, recorded, &side.key, &side.bounds) {
        (Cut::Ctid { blocks }, ..) => Some(Bounds {
            lower: 0,
            upper: *blocks,
            origin: BoundsOrigin::Source,
        }),
        (Cut::Quantile { .. }, ..) => None,
        (Cut::Stride, Some(run), _, _) => run.bounds.map(|(lower, upper)| Bounds {
            lower,
            upper,
            origin: BoundsOrigin::EarlierRun,
        }),
        (Cut::Stride, None, Some(key), None) => pg::key_bounds(conn, &plan::bounds_sql(job, key))
            .await?
            .map(|(lower, upper)| Bounds {
                lower,
                upper,
                origin: BoundsOrigin::Source,
            }),
        (Cut::Stride, None, _, bounds) => bounds.clone(),
    };
    Ok(plan::build_cut(
        job,
        &side.columns,
        side.key.clone(),
        bounds,
        cut,
    ))
}

/// Rows a sample for quantile boundaries aims at: enough for 1% precision on
/// each boundary, little enough to read in a blink.
const QUANTILE_SAMPLE_ROWS: i64 = 30_000;
/// The share of a table's rows that may have changed since ANALYZE for its
/// statistics to be trusted with the boundaries.
const FRESH_STATISTICS: f64 = 0.1;

/// Quantile boundaries of the key: from the planner's statistics when the job
/// reads a whole table analyzed recently enough, else from a sample.
async fn quantile_cut(
    conn: &mut PgConnection,
    job: &Job,
    side: &SourceSide,
    key: &Key,
) -> Result<Cut> {
    let count = job.partition.as_ref().map_or(1, |p| p.count);
    let sliced = job.source.sample.is_some() || job.source.limit.is_some();
    if let (Relation::Table(table), None, false) =
        (&job.source.relation, &job.source.where_clause, sliced)
    {
        if let Some(stats) = pg::statistics(conn, &plan::statistics_sql(table, key)).await? {
            if stats.changed <= FRESH_STATISTICS && stats.histogram.len() > 1 {
                let (points, nulls) =
                    plan::statistics_points(stats.null_frac, &stats.common, &stats.histogram);
                return Ok(Cut::Quantile {
                    boundaries: weighted_cuts(&points, nulls, count),
                    how: format!(
                        "from the planner's statistics ({} histogram bounds, {} common values; {:.1}% of rows changed since ANALYZE)",
                        stats.histogram.len(),
                        stats.common.len(),
                        stats.changed * 100.0
                    ),
                });
            }
        }
    }
    let estimate = pg::estimate_rows(conn, &plan::whole_select(job, &side.columns)).await?;
    let percent =
        (matches!(side.kind, Some('r' | 'm')) && !sliced && estimate > 2 * QUANTILE_SAMPLE_ROWS)
            .then(|| (100.0 * QUANTILE_SAMPLE_ROWS as f64 / estimate as f64).clamp(0.01, 100.0));
    let values = pg::sample(conn, &plan::sample_sql(job, key, percent)).await?;
    let nulls = values.iter().filter(|v| v.is_none()).count();
    let mut points: Vec<(i64, f64)> = values.iter().flatten().map(|&v| (v, 1.0)).collect();
    points.sort_by_key(|p| p.0);
    Ok(Cut::Quantile {
        boundaries: weighted_cuts(&points, nulls as f64, count),
        how: match percent {
            Some(p) => format!(
                "from a sample of {} rows (TABLESAMPLE BERNOULLI {p:.2}%)",
                report::group(values.len() as u64)
            ),
            None => format!(
                "from all {} rows (statistics missing or stale)",
                report::group(values.len() as u64)
            ),
        },
    })
}

/// How the target takes each source column; `exists` is false when it will be created.
struct TargetFit {
    exists: bool,
    fits: Vec<ColumnFit>,
    /// Target type (without modifier) of each copied column, for the row path's casts.
    types: Vec<String>,
    /// Why the target cannot take the rows, each naming a column; empty when it can.
    problems: Vec<String>,
    /// Upsert mode: the key rows are matched by, checked against the target's
    /// unique indexes (a missing table is created with it as primary key).
    upsert_key: Option<Vec<String>>,
}

async fn fit_target(
    pool: &PgPool,
    job: &Job,
    columns: &[Column],
    same_database: bool,
    place: &str,
) -> Result<TargetFit> {
    let table = &job.target.table;
    let mut conn = pool
        .acquire()
        .await
        .context("taking a target connection (none could be opened or freed within 60 s)")?;
    if let Relation::Table(source_table) = &job.source.relation {
        if same_database && pg::same_relation(&mut conn, source_table, table).await? {
            return Err(JobError::new(format!(
                "target.table: {table} is the source table itself (expected another table, or another database)"
            ))
            .into());
        }
    }
    let described = pg::describe_table(&mut conn, table).await?;
    if let Some(relation) = &described {
        if !matches!(relation.kind, 'r' | 'p') {
            return Err(JobError::new(format!(
                "target.table: {table} is not a table (relkind '{}'; expected an ordinary or partitioned table)",
                relation.kind
            ))
            .into());
        }
        if relation.kind == 'p' && job.target.mode == Mode::Replace {
            return Err(JobError::new(format!(
                "target.mode: \"replace\" swaps in an ordinary table, and {table} is partitioned, whose partitions the swap would lose (expected an ordinary table, or mode = \"truncate\")"
            ))
            .into());
        }
    }
    // Overwrite drops the target and creates it from the source's columns: the
    // rows fit that table, not the one there now.
    let missing = described.is_none();
    let existing = described.filter(|_| job.target.mode != Mode::Overwrite);
    let Some(relation) = existing else {
        if job.target.create == Create::Never && missing {
            return Err(JobError::new(format!(
                "target.table: table {table} does not exist in the target database at {place} and target.create is \"never\" (expected an existing table, or create = \"if-missing\")"
            ))
            .into());
        }
        // The table will be created with the source's types: user-defined ones
        // (enums, extension types) must exist in the target already.
        let user_types: Vec<String> = columns
            .iter()
            .filter(|c| !c.is_builtin_type())
            .map(|c| c.base_type.clone())
            .collect();
        let missing = pg::missing_types(&mut conn, &user_types).await?;
        let problems = columns
            .iter()
            .filter(|c| missing.contains(&c.base_type))
            .map(|c| {
                format!(
                    "column \"{}\": type {} does not exist in the target database (expected it created there first)",
                    c.name, c.base_type
                )
            })
            .collect();
        let fits = columns
            .iter()
            .map(|c| ColumnFit {
                column: c.name.clone(),
                source_type: c.type_name.clone(),
                target_type: None,
                transfer: Some(if c.is_builtin_type() {
                    Transfer::Binary
                } else {
                    Transfer::Text
                }),
            })
            .collect();
        return Ok(TargetFit {
            exists: false,
            fits,
            types: columns.iter().map(|c| c.base_type.clone()).collect(),
            problems,
            upsert_key: plan::upsert_key(job, columns, None)?,
        });
    };
    let mut fits = Vec::with_capacity(columns.len());
    let mut types = Vec::with_capacity(columns.len());
    for column in columns {
        let target = relation.columns.iter().find(|t| t.name == column.name);
        types.push(target.map_or_else(String::new, |t| t.base_type.clone()));
        fits.push(ColumnFit {
            column: column.name.clone(),
            source_type: column.type_name.clone(),
            target_type: target.map(|t| t.type_name.clone()),
            transfer: target.map(|t| plan::transfer(column, t)),
        });
    }
    let keys = match &job.target.upsert {
        Some(_) => pg::unique_keys(&mut conn, table).await?,
        None => pg::UniqueKeys::default(),
    };
    Ok(TargetFit {
        exists: true,
        fits,
        types,
        problems: plan::target_problems(columns, &relation.columns),
        upsert_key: plan::upsert_key(job, columns, Some(&keys))?,
    })
}

/// A job error listing every problem with the target, if any.
fn misfits(job: &Job, fit: &TargetFit) -> Option<JobError> {
    (!fit.problems.is_empty()).then(|| {
        JobError::new(format!(
            "target.table: {} cannot take the source's rows: {}",
            job.target.table,
            fit.problems.join("; ")
        ))
    })
}

/// Host and port of a URL: what tells servers apart when a role may not read
/// their identity.
fn server_of(url: &crate::job::DbUrl) -> Option<(String, u16)> {
    let u = url::Url::parse(url.expose()).ok()?;
    Some((
        u.host_str().unwrap_or("localhost").to_string(),
        u.port().unwrap_or(5432),
    ))
}

/// Whether source and target are one running server (so they share its slots).
fn same_server(job: &Job, source: &Server, target: &Server) -> bool {
    match (&source.identity, &target.identity) {
        (Some(s), Some(t)) => s == t,
        _ => {
            server_of(&job.source.url).is_some()
                && server_of(&job.source.url) == server_of(&job.target.url)
        }
    }
}

/// How many partitions can run at once, given the slots free on each server once
/// the probe connections are closed. Each side needs one more connection than
/// partitions: the source's coordinator holds the snapshot, the target's holds the
/// run's lock; a shared server pays for both.
fn connection_budget(
    free_source: i64,
    free_target: i64,
    same_server: bool,
    wanted: usize,
) -> Result<usize, JobError> {
    let (limit, which) = if same_server {
        (
            (free_source - 2) / 2,
            "the server (source and target share it)",
        )
    } else if free_source <= free_target {
        (free_source - 1, "the source")
    } else {
        (free_target - 1, "the target")
    };
    let limit = usize::try_from(limit).unwrap_or(0);
    if limit == 0 {
        return Err(JobError::new(format!(
            "run.parallelism: no free connection slots on {which} (max_connections is reached; expected at least two free slots on each side)"
        )));
    }
    if limit < wanted {
        warn!(
            "only {limit} connection slots are free on {which}: running {limit} partitions at once instead of {wanted}"
        );
        return Ok(limit);
    }
    Ok(wanted)
}

/// Both sides connected and checked against the job, before any write.
struct Prepared {
    job: Job,
    source: PgPool,
    target: PgPool,
    side: SourceSide,
    fit: TargetFit,
    /// Partitions at once, within the servers' free connection slots.
    parallelism: usize,
}

/// Everything `run` and `verify` do before their first write: parse the job,
/// connect within the connection budget, resolve the source, fit the target.
async fn prepare(job: Job) -> Result<Prepared> {
    let requested = job.partition.as_ref().map_or(1, |p| p.count);
    let wanted = job.partitions_at_once(requested);
    let source_server = pg::connect(Side::Source, &job.source.url, job.retries).await?;
    let target_server = pg::connect(Side::Target, &job.target.url, job.retries).await?;
    let shared = same_server(&job, &source_server, &target_server);
    let parallelism = connection_budget(
        source_server.free_slots,
        target_server.free_slots,
        shared,
        wanted as usize,
    )?;
    let pool_size =
        u32::try_from(parallelism).expect("the budget never exceeds the u32 it started from");
    let same_database = shared && source_server.database == target_server.database;
    // One connection more on each side: the coordinator, and the run's lock.
    let source = source_server.pool(pool_size + 1);
    let target = target_server.pool(pool_size + 1);
    let side = resolve_source(&source, &job, &source_server.place).await?;
    let fit = fit_target(
        &target,
        &job,
        &side.columns,
        same_database,
        &target_server.place,
    )
    .await?;
    if let Some(error) = misfits(&job, &fit) {
        return Err(error.into());
    }
    if let Some(schema) = job
        .checkpoint_table
        .as_ref()
        .and_then(|cp| cp.schema.as_ref())
    {
        let mut conn = target
            .acquire()
            .await
            .context("taking a target connection")?;
        if !pg::schema_exists(&mut conn, schema).await? {
            return Err(JobError::new(format!(
                "run.checkpoint_table: schema \"{schema}\" does not exist in the target database (expected an existing schema)"
            ))
            .into());
        }
    }
    if job.verify != Verify::None {
        if let Some(error) = unverifiable(&side) {
            return Err(error.into());
        }
    }
    Ok(Prepared {
        job,
        source,
        target,
        side,
        fit,
        parallelism,
    })
}

/// Which part of a run this process does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// `stride run`: set up (or resume) a run, copy every partition, check, finish.
    Whole,
    /// `stride run --shard I/N`: copy this shard's partitions of a prepared run.
    Shard(Shard),
    /// `stride prepare`: set up a run for shards, and stop.
    Prepare,
    /// `stride finish`: check a run whose partitions are all copied, and close it.
    Finish,
}

struct RunOptions {
    step: Step,
    restart: bool,
    full_refresh: bool,
    quiet: bool,
    /// The summary for people goes to stderr, because stdout carries `--summary-json -`.
    human_to_stderr: bool,
}

/// What a step does with the run the checkpoint table records.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    /// Go on with the recorded run.
    Resume,
    /// A new run; `forget`: the recorded one is deleted first, in the same
    /// transaction that records the new one.
    New { forget: bool },
    /// Nothing to do; the message says why.
    Nothing(String),
    /// The step cannot go on; `usage`: the command was the wrong one (exit 2).
    Refuse { usage: bool, message: String },
}

/// Whether an unfinished run's committed partitions may be kept when the rest
/// is copied from a newer snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resumable {
    /// Yes: each partition is a range of values, the same in any snapshot.
    Yes,
    /// No (block ranges: an updated row moves to another block), but starting
    /// over is exact: the mode empties the target, or upserts.
    StartOver,
    /// No, and starting over would add the committed partitions' rows again.
    No,
}

impl Resumable {
    fn of(job: &Job) -> Resumable {
        match (plan::strategy(job), job.target.mode) {
            (Strategy::Stride | Strategy::Quantile, _) => Resumable::Yes,
            (_, Mode::Truncate | Mode::Replace | Mode::Overwrite | Mode::Upsert) => {
                Resumable::StartOver
            }
            (_, Mode::Append | Mode::ErrorIfExists) => Resumable::No,
        }
    }
}

/// Decides how a step starts, from the run recorded for this job (`earlier`) and
/// the target table's OID now. `finished_is_final`: a finished run is not repeated
/// without `--restart` (append mode, not incremental).
fn decide(
    step: Step,
    earlier: Option<&pg::RecordedRun>,
    target_oid: Option<i64>,
    restart: bool,
    full_refresh: bool,
    finished_is_final: bool,
    resumable: Resumable,
) -> Start {
    let starts_runs = matches!(step, Step::Whole | Step::Prepare);
    let Some(run) = earlier else {
        return match step {
            Step::Whole | Step::Prepare => Start::New { forget: false },
            Step::Shard(_) => Start::Refuse {
                usage: true,
                message: "--shard: no prepared run of this job in the checkpoint table (expected `stride prepare JOB` first, then the shards)".to_string(),
            },
            Step::Finish => Start::Refuse {
                usage: true,
                message: "finish: no run of this job in the checkpoint table (expected `stride prepare JOB` and the shards first)".to_string(),
            },
        };
    };
    if starts_runs && (restart || full_refresh) {
        return Start::New { forget: true };
    }
    // A run into a table that was dropped (and maybe created again) since is
    // stale: its partitions went with the old table.
    if run.target_oid != target_oid {
        return if starts_runs {
            Start::New { forget: true }
        } else {
            Start::Refuse {
                usage: false,
                message: "the target table was dropped (or created again) since this run was prepared: run `stride prepare` again".to_string(),
            }
        };
    }
    if let Some(problem) = &run.failed_check {
        return Start::Refuse {
            usage: false,
            message: format!(
                "the earlier run of this job failed its check ({problem}); its partitions cannot be trusted, so it is not resumed: run with --restart"
            ),
        };
    }
    let partitions = format!("{} partitions", run.partitions);
    if run.finished {
        return match step {
            Step::Whole | Step::Prepare if finished_is_final => {
                let rows: u64 = run.done.iter().map(|d| d.1).sum();
                Start::Nothing(format!(
                    "nothing to do: this job already finished at {} ({partitions}, {} rows); run with --restart to copy it again",
                    run.recorded_at,
                    report::group(rows)
                ))
            }
            Step::Whole | Step::Prepare => Start::New { forget: true },
            Step::Shard(_) => Start::Nothing(format!(
                "nothing to do: the run of this job finished at {}; `stride prepare` sets up the next one",
                run.recorded_at
            )),
            Step::Finish => Start::Nothing(format!(
                "nothing to do: the run of this job already finished at {}",
                run.recorded_at
            )),
        };
    }
    match (step, resumable) {
        (Step::Prepare, _) => Start::Nothing(format!(
            "already prepared: {} of {partitions} are copied; run the shards, then `stride finish` (or prepare --restart to start over)",
            run.done.len()
        )),
        (Step::Whole, Resumable::StartOver) if !run.done.is_empty() => {
            Start::New { forget: true }
        }
        (Step::Whole, Resumable::No) if !run.done.is_empty() => Start::Refuse {
            usage: false,
            message: format!(
                "the unfinished earlier run of this job committed {} of {partitions} by block range (strategy \"ctid\") in another snapshot, and the rest cannot be copied from a new one without copying updated rows twice or missing them: remove its rows from the target and run with --restart (or use mode \"truncate\", which starts over by itself)",
                run.done.len()
            ),
        },
        _ => Start::Resume,
    }
}

/// `stride run`, `stride prepare` and `stride finish`: one run's steps.
async fn run(prepared: Prepared, path: &Path, opts: &RunOptions) -> Result<RunEnd> {
    let say = |text: &str| {
        if opts.human_to_stderr {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    };
    let started = Instant::now();
    let step = opts.step;
    let Prepared {
        job,
        source,
        target,
        side,
        fit,
        parallelism,
    } = prepared;
    check_before_writing(&job, &target, opts).await?;

    // The coordinator's transaction pins the snapshot for the whole run; bounds read
    // from the source and the row estimate come from that same snapshot.
    let mut coordinator = source
        .acquire()
        .await
        .context("taking the coordinator connection")?;
    let snapshot = pg::export_snapshot(&mut coordinator).await?;
    debug!(snapshot, "exported the source's snapshot");

    // One run at a time into a target table: a second one could truncate what the
    // first just committed, or forget its checkpoints. Shards share the lock.
    let table = &job.target.table;
    let _lock = lock_target(&target, table, matches!(step, Step::Shard(_))).await?;

    // What an earlier run left in the checkpoint table (created by the steps that
    // start runs; the others only read it).
    let fingerprint = checkpoint::fingerprint(&job);
    if matches!(step, Step::Whole | Step::Prepare) {
        // Again under the lock: a run may have ended (or a view been created)
        // since the checks before writing.
        refuse_existing_rows(&target, &job, &fingerprint, opts.restart).await?;
        refuse_dependants(&target, &job, &fingerprint, opts.restart).await?;
    }
    // The table the partitions are written into: a replace's staging table, else
    // the target itself.
    let into = match job.target.mode {
        Mode::Replace => {
            let mut conn = target
                .acquire()
                .await
                .context("taking a target connection")?;
            replace::stage_name(table, &pg::schema_of(&mut conn, table).await?)
        }
        _ => table.clone(),
    };
    let mut earlier = None;
    let mut target_oid = None;
    if let Some(cp) = &job.checkpoint_table {
        let mut conn = target
            .acquire()
            .await
            .context("taking a target connection")?;
        if matches!(step, Step::Whole | Step::Prepare) {
            // Most runs find it there and up to date: no DDL, whose locks would
            // queue behind the partitions of concurrent runs.
            let current: bool = pg::scalar_bool(&mut conn, &checkpoint::up_to_date_sql(cp))
                .await
                .with_context(|| format!("looking up checkpoint table {cp}"))?;
            if !current {
                pg::execute(&mut conn, &checkpoint::create_table_sql(cp))
                    .await
                    .with_context(|| format!("creating checkpoint table {cp}"))?;
            }
        }
        earlier = pg::recorded_run(&mut conn, cp, &fingerprint).await?;
        target_oid = pg::table_oid(&mut conn, &into).await?;
        // A finished replace renamed its staging table to the target's name: the
        // run's table is the target now.
        if target_oid.is_none()
            && job.target.mode == Mode::Replace
            && earlier.as_ref().is_some_and(|r| r.finished)
        {
            target_oid = pg::table_oid(&mut conn, table).await?;
        }
    }
    let start = decide(
        step,
        earlier.as_ref(),
        target_oid,
        opts.restart,
        opts.full_refresh,
        job.target.mode == Mode::Append && job.incremental.is_none(),
        Resumable::of(&job),
    );
    let (fresh, forget) = match start {
        Start::Nothing(message) => {
            say(&format!("{message}\n"));
            return Ok(RunEnd {
                code: exit::OK,
                summary: None,
                fingerprint,
                table: table.to_string(),
            });
        }
        Start::Refuse {
            usage: true,
            message,
        } => return Err(JobError::new(message).into()),
        Start::Refuse { message, .. } => return Err(anyhow::anyhow!(message)),
        Start::Resume => (false, false),
        Start::New { forget } => {
            if let (true, Some(run)) = (forget, &earlier) {
                if !run.finished && !opts.restart && Resumable::of(&job) == Resumable::StartOver {
                    info!(
                        "the unfinished earlier run copied block ranges in another snapshot: starting over ({} of {} partitions again)",
                        run.done.len(),
                        run.partitions
                    );
                } else if run.target_oid != target_oid {
                    info!("the earlier run of this job wrote into a table that is gone: starting afresh");
                } else if opts.restart
                    && job.target.mode == Mode::Append
                    && !run.finished
                    && !run.done.is_empty()
                {
                    warn!(
                        "--restart in append mode: the {} partitions the unfinished earlier run committed stay in {table} and are copied again (run without --restart to resume instead)",
                        run.done.len()
                    );
                }
            }
            (true, forget)
        }
    };

    // An incremental run reads the window recorded for it, or, when new, the one
    // after the last finished run, up to the largest value in this snapshot.
    let window = match (&side.mark, fresh) {
        (None, _) => None,
        (Some(_), false) => earlier.as_ref().and_then(|r| r.window),
        (Some(mark), true) => {
            let after = earlier
                .as_ref()
                .filter(|r| !opts.full_refresh && r.target_oid == target_oid);
            Some(next_window(&mut coordinator, &job, mark, after).await?)
        }
    };
    let scoped = scope(&job, &side, window.as_ref());
    let recorded = earlier.as_ref().filter(|_| !fresh);
    let mut plan = plan_partitions(&mut coordinator, &scoped, &side, recorded).await?;
    if let Some(condition) = window_condition(&side, window.as_ref()) {
        plan.restrict_target(&condition, table);
    }
    if job.target.mode == Mode::Replace {
        plan.retarget(&into);
    }
    if let Some(run) = recorded {
        if usize::try_from(run.partitions).ok() != Some(plan.partitions.len()) {
            return Err(JobError::new(format!(
                "run.checkpoint_table: the earlier run of this job recorded {} partitions, this one plans {}; run with --restart",
                run.partitions,
                plan.partitions.len()
            ))
            .into());
        }
        match step {
            Step::Whole => info!(
                done = run.done.len(),
                partitions = plan.partitions.len(),
                "resuming an earlier run of this job"
            ),
            Step::Shard(s) => info!(
                done = run.done.len(),
                partitions = plan.partitions.len(),
                "shard {s}: copying its partitions of the prepared run"
            ),
            Step::Prepare | Step::Finish => {}
        }
    }
    if let (Some(w), Some(mark)) = (&window, &side.mark) {
        info!(
            "incremental on {}: {}",
            mark.column,
            w.describe(mark.key_type)
        );
    }

    if fresh {
        start_run(
            &job,
            &target,
            &fit,
            &side,
            &plan,
            window.as_ref(),
            opts,
            earlier.as_ref().filter(|_| forget),
            &into,
        )
        .await?;
    }
    let done: Vec<(usize, u64, u64)> = recorded.map(|r| r.done.clone()).unwrap_or_default();
    match step {
        Step::Prepare => {
            say(&format!(
                "prepared: {} partitions into {}{}; copy them with `stride run --shard I/N {}` on each machine, then `stride finish {}`\n",
                plan.partitions.len(),
                if job.target.mode == Mode::Replace {
                    format!("{into} (swapped in for {table} by `stride finish`)")
                } else {
                    table.to_string()
                },
                match (&window, &side.mark) {
                    (Some(w), Some(mark)) => format!(" ({} of {})", w.describe(mark.key_type), mark.column),
                    _ => String::new(),
                },
                path.display(),
                path.display()
            ));
            return Ok(RunEnd {
                code: exit::OK,
                summary: None,
                fingerprint,
                table: table.to_string(),
            });
        }
        Step::Finish => {
            let code = finish_run(
                &job,
                &fingerprint,
                &plan,
                &done,
                &fit,
                coordinator,
                &target,
                &into,
                &say,
            )
            .await?;
            return Ok(RunEnd {
                code,
                summary: None,
                fingerprint,
                table: table.to_string(),
            });
        }
        Step::Whole | Step::Shard(_) => {}
    }

    let mine = |p: &PlannedPartition| match step {
        Step::Shard(s) => p.index % s.count as usize == s.index as usize,
        _ => true,
    };
    let (skipped, to_run): (Vec<_>, Vec<_>) = plan
        .partitions
        .iter()
        .filter(|p| mine(p))
        .cloned()
        .partition(|p| done.iter().any(|d| d.0 == p.index));
    let estimate = match step {
        Step::Shard(_) => {
            let mut sum = 0;
            for p in &to_run {
                sum += pg::estimate_rows(&mut coordinator, &p.select).await?;
            }
            sum
        }
        _ => {
            pg::estimate_rows(
                &mut coordinator,
                &plan::whole_select(&scoped, &side.columns),
            )
            .await?
        }
    };
    let mut spec = copy_spec(&job, &plan, &fit, &source, &target, snapshot, &into);
    spec.progress = report::progress_bar(u64::try_from(estimate).unwrap_or(0), opts.quiet);
    spec.checkpoint = job.checkpoint_table.clone().map(|table| Checkpoint {
        table,
        fingerprint: fingerprint.clone(),
        target_table: into.clone(),
    });
    let method = spec.describe_method();
    let spec = Arc::new(spec);
    info!(
        partitions = plan.partitions.len(),
        skipped = skipped.len(),
        parallelism,
        estimated_rows = estimate,
        "copying {} -> {table} with {method}{}",
        source_name(&job),
        match step {
            Step::Shard(s) => format!(" (shard {s})"),
            _ => String::new(),
        }
    );
    // Every row of the source, NULL keys included, must be in exactly one
    // partition: the partitions' rows add up to the whole source's count in the
    // same snapshot. It is counted while the partitions copy, on the coordinator's
    // otherwise idle connection, when this process copies every partition in this
    // snapshot (not for a shard, nor a resume whose skipped partitions read an
    // earlier one). A single partition reading every row is the whole source's
    // query itself: counting it again would only scan the table twice.
    let whole_select = plan::whole_select(&scoped, &side.columns);
    let split = plan.partitions.iter().any(|p| p.select != whole_select);
    let coverage = if step == Step::Whole && done.is_empty() && split {
        Coverage::Counting(tokio::spawn(async move {
            let count = pg::count_rows(&mut coordinator, &whole_select).await;
            (coordinator, count)
        }))
    } else {
        Coverage::NotCounted(coordinator)
    };
    let (ran, interrupted) = copy_partitions(&spec, to_run, parallelism).await;
    // A run that failed or was interrupted abandons the count with its connection
    // (the server ends the transaction when the socket closes).
    let all_written = ran.iter().all(|r| r.status == Status::Written);
    let (mut coordinator, counted) = match coverage {
        Coverage::Counting(task) if all_written => {
            let (coordinator, count) = task.await.context("the coverage count task")?;
            (Some(coordinator), Some(count))
        }
        Coverage::Counting(task) => {
            task.abort();
            (None, None)
        }
        Coverage::NotCounted(coordinator) => (Some(coordinator), None),
    };

    let mut partitions: Vec<PartitionReport> = skipped
        .iter()
        .map(|p| {
            let (_, rows, bytes) = done
                .iter()
                .find(|d| d.0 == p.index)
                .copied()
                .unwrap_or_default();
            PartitionReport {
                index: p.index,
                range: p.describe.clone(),
                status: Status::Skipped,
                rows,
                bytes,
                elapsed: std::time::Duration::ZERO,
                retries: 0,
            }
        })
        .chain(ran)
        .collect();
    partitions.sort_by_key(|p| p.index);
    let summary = Summary {
        source: source_name(&job),
        target: table.to_string(),
        method,
        shard: match step {
            Step::Shard(s) => Some(s.to_string()),
            _ => None,
        },
        partitions,
        elapsed: started.elapsed(),
        interrupted: interrupted.is_some(),
    };
    // The summary first: whatever fails below, it says what was committed.
    say(&summary.render());
    let mut problems = Vec::new();
    if let (Some(count), true) = (counted, summary.succeeded()) {
        let source_rows = u64::try_from(count?).unwrap_or(0);
        if source_rows != summary.rows() {
            let problem = format!(
                "coverage check failed: the partitions copied {} rows, the source holds {} in the same snapshot",
                report::group(summary.rows()),
                report::group(source_rows)
            );
            if let Some(cp) = &job.checkpoint_table {
                sqlx::raw_sql(&checkpoint::fail_check_sql(cp, &fingerprint, &problem))
                    .execute(&target)
                    .await
                    .with_context(|| format!("recording the failed check in {cp}"))?;
            }
            problems.push(problem);
        }
    }
    if step == Step::Whole && summary.succeeded() && problems.is_empty() {
        restore_indexes(&job, &fingerprint, &target).await?;
        if let Some(conn) = coordinator.as_mut() {
            if let Some(problem) = verify_run(&job, &plan, &fit, conn, &target, &say).await? {
                problems.push(problem);
            }
        }
        if problems.is_empty() {
            close_run(&job, &fingerprint, &target, &into).await?;
        }
    }
    if let Some(conn) = coordinator.as_mut() {
        // The snapshot is no longer needed once every partition has ended.
        pg::execute(conn, "ROLLBACK").await.ok();
    }
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("error: {problem}");
        }
        return Ok(RunEnd {
            code: exit::FAILED,
            summary: Some(summary),
            fingerprint,
            table: table.to_string(),
        });
    }
    let resume = job
        .checkpoint_table
        .as_ref()
        .map(|_| format!("resume with: {}", resume_command()));
    if interrupted.is_some() {
        eprintln!(
            "interrupted: the partitions in flight were rolled back; the summary lists those committed"
        );
        if let Some(resume) = &resume {
            eprintln!("{resume}");
        }
        return Ok(RunEnd {
            code: exit::INTERRUPTED,
            summary: Some(summary),
            fingerprint,
            table: table.to_string(),
        });
    }
    if let Some(failed) = summary
        .partitions
        .iter()
        .find(|p| matches!(p.status, Status::Failed(_)))
    {
        if let Status::Failed(error) = &failed.status {
            eprintln!("error: {error}");
        }
        if let Some(resume) = &resume {
            eprintln!("{resume}");
        }
        return Ok(RunEnd {
            code: exit::FAILED,
            summary: Some(summary),
            fingerprint,
            table: table.to_string(),
        });
    }
    Ok(RunEnd {
        code: exit::OK,
        summary: Some(summary),
        fingerprint,
        table: table.to_string(),
    })
}

/// The coordinator's connection during the copy: counting the source, or idle.
enum Coverage {
    Counting(tokio::task::JoinHandle<(PoolConnection<Postgres>, Result<i64>)>),
    NotCounted(PoolConnection<Postgres>),
}

/// What a step refuses before it writes anything: checked for every table of a
/// job file before any table is written (and by each run again).
async fn check_before_writing(job: &Job, target: &PgPool, opts: &RunOptions) -> Result<()> {
    if opts.full_refresh && job.incremental.is_none() {
        return Err(JobError::new(
            "--full-refresh: the job has no [incremental] section, so there is no mark to ignore (expected --restart to copy everything again)",
        )
        .into());
    }
    if opts.step != Step::Whole && job.checkpoint_table.is_none() {
        return Err(JobError::new(
            "run.checkpoint: false, but shards, `stride prepare` and `stride finish` share the run through the checkpoint table (expected checkpoint = true)",
        )
        .into());
    }
    if matches!(opts.step, Step::Shard(_) | Step::Prepare) && plan::strategy(job) == Strategy::Ctid
    {
        return Err(JobError::new(
            "partition.strategy: \"ctid\" block ranges are exact only within one snapshot, and each shard reads its own (an updated row moves to another block) (expected strategy \"stride\" or \"quantile\" for shards)",
        )
        .into());
    }
    if matches!(opts.step, Step::Whole | Step::Prepare) {
        let fingerprint = checkpoint::fingerprint(job);
        refuse_existing_rows(target, job, &fingerprint, opts.restart).await?;
        refuse_dependants(target, job, &fingerprint, opts.restart).await?;
    }
    Ok(())
}

/// The window of a new incremental run: after the recorded run `after` (if it
/// is to be followed), up to the mark column's largest value in the coordinator's
/// snapshot.
async fn next_window(
    coordinator: &mut PgConnection,
    job: &Job,
    mark: &Key,
    after: Option<&pg::RecordedRun>,
) -> Result<Window> {
    let largest = pg::key_bounds(coordinator, &plan::bounds_sql(job, mark))
        .await?
        .map(|(_, largest)| largest);
    Ok(Window::next(
        after.and_then(|r| r.window.as_ref()),
        after.is_some_and(|r| r.finished),
        largest,
    ))
}

/// The job as a run with `window` reads it: the window's condition added to the
/// source's `where`.
fn scope(job: &Job, side: &SourceSide, window: Option<&Window>) -> Job {
    match (window, &side.mark) {
        (Some(w), Some(mark)) => plan::within_window(job, w, mark.key_type),
        _ => job.clone(),
    }
}

/// The window's condition on the mark column (the same on both sides).
fn window_condition(side: &SourceSide, window: Option<&Window>) -> Option<String> {
    let (w, mark) = window.zip(side.mark.as_ref())?;
    Some(w.condition(&crate::sql::quote_ident(&mark.column), mark.key_type))
}

/// A new run's first writes: the target table if missing, then in one
/// transaction the earlier run forgotten, the target emptied (truncate mode, or a
/// full refresh in append mode), dropped and created again (overwrite) or a
/// staging table made for it (replace, into `into`), and the new run recorded, so
/// a resumed run finds the record and never empties the target again.
#[allow(clippy::too_many_arguments)]
async fn start_run(
    job: &Job,
    target: &PgPool,
    fit: &TargetFit,
    side: &SourceSide,
    plan: &Plan,
    window: Option<&Window>,
    opts: &RunOptions,
    earlier: Option<&pg::RecordedRun>,
    into: &QualifiedName,
) -> Result<()> {
    let forget = earlier.is_some();
    let table = &job.target.table;
    let mode = job.target.mode;
    if !fit.exists && !matches!(mode, Mode::Replace | Mode::Overwrite) {
        sqlx::raw_sql(&plan::create_table_sql(
            table,
            &side.columns,
            fit.upsert_key.as_deref(),
        ))
        .execute(target)
        .await
        .with_context(|| format!("creating target table {table}"))?;
        info!("created target table {table}");
    }
    let fingerprint = checkpoint::fingerprint(job);
    let empties = mode == Mode::Truncate || (opts.full_refresh && mode == Mode::Append);
    let mut statements = vec!["BEGIN".to_string()];
    if let (Some(cp), true) = (&job.checkpoint_table, forget) {
        statements.push(checkpoint::forget_run_sql(cp, &fingerprint));
    }
    if let (Some(cp), true) = (&job.checkpoint_table, empties || mode == Mode::Overwrite) {
        statements.push(checkpoint::forget_other_runs_sql(cp, &fingerprint, table));
    }
    match mode {
        Mode::Replace if fit.exists => {
            let mut conn = target
                .acquire()
                .await
                .context("taking a target connection")?;
            let (setup, not_carried) = pg::stage_setup(&mut conn, table).await?;
            if !not_carried.is_empty() {
                warn!(
                    "mode = \"replace\": the new {table} will not have the old one's {} (the swap carries indexes, constraints, defaults, grants, comments and the owner)",
                    not_carried.join(", ")
                );
            }
            statements.extend(replace::create_stage_sql(into, table, &setup));
        }
        Mode::Replace => {
            statements.push(format!("DROP TABLE IF EXISTS {into}"));
            statements.push(plan::create_table_sql(into, &side.columns, None));
        }
        Mode::Overwrite => {
            statements.push(format!("DROP TABLE IF EXISTS {table}"));
            statements.push(plan::create_table_sql(table, &side.columns, None));
        }
        _ if empties => statements.push(format!("TRUNCATE TABLE {table}")),
        _ => {}
    }
    // Deferred indexes: dropped with the TRUNCATE, their definitions recorded in
    // the run row in the same transaction (with those an earlier, unfinished run
    // dropped), so whatever happens next, closing the run builds them again.
    let mut deferred: Vec<String> = earlier
        .map(|r| r.deferred_indexes.clone())
        .unwrap_or_default();
    if job.target.defer_indexes && fit.exists {
        let mut conn = target
            .acquire()
            .await
            .context("taking a target connection")?;
        for (name, definition) in pg::secondary_indexes(&mut conn, table).await? {
            statements.push(format!("DROP INDEX {name}"));
            if !deferred.contains(&definition) {
                deferred.push(definition);
            }
        }
    }
    if let Some(cp) = &job.checkpoint_table {
        statements.push(checkpoint::record_run_sql(
            cp,
            &fingerprint,
            into,
            &checkpoint::RunRecord {
                bounds: plan.bounds.as_ref(),
                partitions: plan.partitions.len(),
                window,
                boundaries: match &plan.cut {
                    Cut::Quantile { boundaries, .. } => Some(boundaries.as_slice()),
                    _ => None,
                },
                deferred_indexes: &deferred,
            },
        ));
    }
    statements.push("COMMIT".to_string());
    sqlx::raw_sql(&statements.join(";\n"))
        .execute(target)
        .await
        .with_context(|| format!("starting the run on target table {table}"))?;
    match mode {
        Mode::Replace => {
            info!("created staging table {into}; the run fills it, then swaps it in for {table}")
        }
        Mode::Overwrite => {
            info!("dropped target table {table} and created it again from the source's columns")
        }
        _ if empties => info!("truncated target table {table}"),
        _ => {}
    }
    Ok(())
}

/// Builds the secondary indexes the run dropped (`target.defer_indexes`) again,
/// once every partition is in, as many at once as the run copies partitions (the
/// target pool holds one connection more, for the lock). Each statement is `CREATE
/// INDEX IF NOT EXISTS`, so a restore that was interrupted goes on where it
/// stopped.
async fn restore_indexes(job: &Job, fingerprint: &str, target: &PgPool) -> Result<()> {
    let parallelism = target.options().get_max_connections().saturating_sub(1) as usize;
    let Some(cp) = &job.checkpoint_table else {
        return Ok(());
    };
    let deferred = {
        let mut conn = target
            .acquire()
            .await
            .context("taking a target connection")?;
        pg::deferred_indexes(&mut conn, cp, fingerprint).await?
    };
    if deferred.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let builds = futures_util::stream::iter(deferred.iter().map(|definition| async move {
        let mut conn = target
            .acquire()
            .await
            .context("taking a target connection")?;
        pg::execute(&mut conn, definition)
            .await
            .with_context(|| format!("building a deferred index again: {definition}"))
    }));
    let results: Vec<Result<()>> = futures_util::StreamExt::collect(
        futures_util::StreamExt::buffer_unordered(builds, parallelism.max(1)),
    )
    .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    info!(
        "built {} deferred indexes of {} again in {}",
        deferred.len(),
        job.target.table,
        report::human_duration(started.elapsed())
    );
    Ok(())
}

/// `[run] verify` after a complete copy: the problem, if partitions differ.
async fn verify_run(
    job: &Job,
    plan: &Plan,
    fit: &TargetFit,
    source: &mut PgConnection,
    target: &PgPool,
    say: &impl Fn(&str),
) -> Result<Option<String>> {
    if job.verify == Verify::None {
        return Ok(None);
    }
    let by = effective_verify(job.verify, fit);
    let results = verify_partitions(source, target, &plan.compared(), by).await?;
    say(&report::render_verify(&results, by));
    let bad = results.iter().filter(|r| !r.matches()).count();
    Ok((bad > 0).then(|| {
        format!(
            "verify: {bad} partitions differ between source and target; `stride verify --repair` copies them again"
        )
    }))
}

/// Records the run as finished (an incremental job's mark moves to its window's
/// end), after setting the target's sequences past the copied values; a replace
/// swaps its staging table `into` in first, in the same transaction.
async fn close_run(
    job: &Job,
    fingerprint: &str,
    target: &PgPool,
    into: &QualifiedName,
) -> Result<()> {
    if job.target.mode == Mode::Replace {
        return swap(job, fingerprint, target, into).await;
    }
    reset_sequences(job, target).await?;
    if let Some(cp) = &job.checkpoint_table {
        sqlx::raw_sql(&checkpoint::finish_run_sql(cp, fingerprint))
            .execute(target)
            .await
            .with_context(|| format!("recording the finished run in {cp}"))?;
    }
    Ok(())
}

/// `mode = "replace"`: in one transaction, the target locked, the staging table
/// given what LIKE could not copy and renamed to the target's name, the old table
/// dropped, sequences set, the run recorded as finished (see `replace`). Views or
/// foreign keys that depend on the target fail it, and nothing changes.
async fn swap(job: &Job, fingerprint: &str, target: &PgPool, stage: &QualifiedName) -> Result<()> {
    let table = &job.target.table;
    let mut tx = target
        .begin()
        .await
        .context("taking a target connection for the swap")?;
    if pg::table_oid(&mut tx, table).await?.is_some() {
        pg::execute(&mut tx, &replace::lock_sql(table))
            .await
            .with_context(|| format!("locking {table} for the swap"))?;
        let found = pg::dependants(&mut tx, table).await?;
        if !found.is_empty() {
            return Err(anyhow::anyhow!(
                "target.mode: \"replace\" cannot drop the old {table}: {} {} on it (expected none; drop them, run the same command again to swap in {stage}, then create them again)",
                found.join(", "),
                if found.len() == 1 { "depends" } else { "depend" }
            ));
        }
    }
    let catalog = pg::swap_catalog(&mut tx, table, stage).await?;
    for statement in replace::swap_sql(table, stage, &catalog) {
        pg::execute(&mut tx, &statement)
            .await
            .with_context(|| format!("swapping {stage} in for {table}: {statement}"))?;
    }
    if job.target.reset_sequences {
        for (column, sequence, value) in pg::reset_sequences(&mut tx, table).await? {
            info!("set sequence {sequence} of {table}.\"{column}\" to {value}");
        }
    }
    if let Some(cp) = &job.checkpoint_table {
        pg::execute(&mut tx, &checkpoint::finish_run_sql(cp, fingerprint))
            .await
            .with_context(|| format!("recording the finished run in {cp}"))?;
    }
    tx.commit()
        .await
        .with_context(|| format!("committing the swap of {stage} in for {table}"))?;
    info!("swapped the new {table} in: readers see the copied rows from now on");
    Ok(())
}

/// `stride finish`: every partition must be committed; then the job's verify (in
/// the coordinator's new snapshot) and the run closed.
#[allow(clippy::too_many_arguments)]
async fn finish_run(
    job: &Job,
    fingerprint: &str,
    plan: &Plan,
    done: &[(usize, u64, u64)],
    fit: &TargetFit,
    mut coordinator: PoolConnection<Postgres>,
    target: &PgPool,
    into: &QualifiedName,
    say: &impl Fn(&str),
) -> Result<u8> {
    let missing: Vec<String> = plan
        .partitions
        .iter()
        .filter(|p| !done.iter().any(|d| d.0 == p.index))
        .map(|p| p.index.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(anyhow::anyhow!(
            "{} of {} partitions are not copied yet (partitions {}): run the shards that own them (partition P belongs to shard P mod N), then finish again",
            missing.len(),
            plan.partitions.len(),
            missing.join(", ")
        ));
    }
    restore_indexes(job, fingerprint, target).await?;
    if let Some(problem) = verify_run(job, plan, fit, &mut coordinator, target, say).await? {
        eprintln!("error: {problem}");
        return Ok(exit::FAILED);
    }
    pg::execute(&mut coordinator, "ROLLBACK").await.ok();
    close_run(job, fingerprint, target, into).await?;
    let rows: u64 = done.iter().map(|d| d.1).sum();
    say(&format!(
        "finished: {} partitions, {} rows in {}\n",
        plan.partitions.len(),
        report::group(rows),
        job.target.table
    ));
    Ok(exit::OK)
}

/// `mode = "error-if-exists"`: a new run refuses a target table that already
/// holds rows, before anything is written (the checkpoint table included). A
/// resume (an unfinished earlier run of this job into this very table, and no
/// `--restart`) continues into the rows it wrote itself.
async fn refuse_existing_rows(
    target: &PgPool,
    job: &Job,
    fingerprint: &str,
    restart: bool,
) -> Result<()> {
    if job.target.mode != Mode::ErrorIfExists {
        return Ok(());
    }
    let table = &job.target.table;
    let mut conn = target
        .acquire()
        .await
        .context("taking a target connection")?;
    let Some(oid) = pg::table_oid(&mut conn, table).await? else {
        return Ok(());
    };
    if resumes(&mut conn, job, fingerprint, restart, oid).await? {
        return Ok(());
    }
    if pg::has_rows(&mut conn, table).await? {
        return Err(JobError::new(format!(
            "target.mode: is \"error-if-exists\" and target table {table} already holds rows (expected an empty or missing table, or mode = \"append\", \"truncate\" or \"upsert\"); nothing was written"
        ))
        .into());
    }
    Ok(())
}

/// Whether a step that starts runs will resume the recorded run of this job into
/// the table with OID `oid`: an unfinished one, without `--restart`.
async fn resumes(
    conn: &mut PgConnection,
    job: &Job,
    fingerprint: &str,
    restart: bool,
    oid: i64,
) -> Result<bool> {
    let Some(cp) = job.checkpoint_table.as_ref().filter(|_| !restart) else {
        return Ok(false);
    };
    let earlier = pg::recorded_run(conn, cp, fingerprint).await?;
    Ok(earlier.is_some_and(|run| !run.finished && run.target_oid == Some(oid)))
}

/// `mode = "replace"` and `"overwrite"` drop the target table (replace when it
/// swaps the new one in, overwrite when a new run starts), and PostgreSQL binds
/// views and foreign keys to the table itself, not its name: they would block
/// the drop (or, with a rename, keep reading the old table). So a run whose
/// target has them is refused before anything is written, naming them. A resumed
/// overwrite does not drop the table again, and is not refused.
async fn refuse_dependants(
    target: &PgPool,
    job: &Job,
    fingerprint: &str,
    restart: bool,
) -> Result<()> {
    let mode = job.target.mode;
    if !matches!(mode, Mode::Replace | Mode::Overwrite) {
        return Ok(());
    }
    let table = &job.target.table;
    let mut conn = target
        .acquire()
        .await
        .context("taking a target connection")?;
    let Some(oid) = pg::table_oid(&mut conn, table).await? else {
        return Ok(());
    };
    if mode == Mode::Overwrite && resumes(&mut conn, job, fingerprint, restart, oid).await? {
        return Ok(());
    }
    let found = pg::dependants(&mut conn, table).await?;
    if found.is_empty() {
        return Ok(());
    }
    let does = match mode {
        Mode::Replace => "swaps a new table in for",
        _ => "drops and creates again",
    };
    Err(JobError::new(format!(
        "target.mode: \"{}\" {does} {table}, but {} {} on it, and PostgreSQL ties them to the table, not its name (expected none: drop them and create them again after the run, or mode = \"truncate\"); nothing was written",
        mode.as_str(),
        found.join(", "),
        if found.len() == 1 { "depends" } else { "depend" }
    ))
    .into())
}

/// After a successful run (`target.reset_sequences`): sequences owned by target
/// columns are set past the largest value there, so the target's own next
/// insert with a default value does not collide with a copied row.
async fn reset_sequences(job: &Job, target: &PgPool) -> Result<()> {
    if !job.target.reset_sequences {
        return Ok(());
    }
    let table = &job.target.table;
    let mut conn = target
        .acquire()
        .await
        .context("taking a target connection")?;
    for (column, sequence, value) in pg::reset_sequences(&mut conn, table).await? {
        info!("set sequence {sequence} of {table}.\"{column}\" to {value}");
    }
    Ok(())
}

/// Takes the target table's run lock (a session advisory lock) on a connection of
/// its own, held until the returned connection is dropped and so closed.
async fn lock_target(
    target: &PgPool,
    table: &crate::sql::QualifiedName,
    shared: bool,
) -> Result<PgConnection> {
    let mut conn = target
        .acquire()
        .await
        .context("taking a target connection for the run's lock")?
        .detach();
    if !pg::try_lock_table(&mut conn, table, shared).await? {
        return Err(anyhow::anyhow!(
            "another stride run is writing into {table} on the target; wait for it to end (or stop it), then run again"
        ));
    }
    Ok(conn)
}

/// Verify compares partition by partition, so the target needs the partition
/// column: it must be among the copied columns.
fn unverifiable(side: &SourceSide) -> Option<JobError> {
    let copied = |key: &Key| side.columns.iter().any(|c| c.name == key.column);
    if let Some(key) = side.key.as_ref().filter(|k| !copied(k)) {
        return Some(JobError::new(format!(
            "run.verify: the partition column \"{}\" is not among the copied columns, so the target's partitions cannot be told apart (expected it in source.columns)",
            key.column
        )));
    }
    side.mark.as_ref().filter(|k| !copied(k)).map(|mark| {
        JobError::new(format!(
            "run.verify: the incremental column \"{}\" is not among the copied columns, so the target's rows of a run cannot be told apart (expected it in source.columns)",
            mark.column
        ))
    })
}

/// The comparison verify can make: a checksum compares text forms, which differ
/// when a column is converted on the way (int4 into int8 is fine, json into jsonb
/// or real into double precision is not), so then only counts are compared.
fn effective_verify(verify: Verify, fit: &TargetFit) -> Verify {
    let converted: Vec<&str> = fit
        .fits
        .iter()
        .filter(|f| f.transfer == Some(Transfer::Text))
        .map(|f| f.column.as_str())
        .collect();
    if verify == Verify::Checksum && !converted.is_empty() {
        warn!(
            "verify: columns {} are converted on the way, so their text forms differ: comparing row counts only",
            converted.join(", ")
        );
        return Verify::Count;
    }
    verify
}

/// `stride verify`: compares every partition in a new snapshot of the source,
/// with the partitions of the job's recorded run when there is one; `--repair`
/// copies the differing partitions again and compares them once more.
async fn verify(args: &VerifyArgs, overrides: &[(String, String)], quiet: bool) -> Result<u8> {
    let set = load_jobs(&args.job, overrides)?;
    let many = set.jobs.len() > 1;
    let mut code = exit::OK;
    for (i, job) in set.jobs.into_iter().enumerate() {
        if many {
            println!("== table {}", job.target.table);
        }
        let verified = verify_job(job, args, quiet).await;
        code = code.max(verified.map_err(|e| in_entry(many, i, e))?);
    }
    Ok(code)
}

async fn verify_job(job: Job, args: &VerifyArgs, quiet: bool) -> Result<u8> {
    let Prepared {
        job,
        source,
        target,
        side,
        fit,
        parallelism,
    } = prepare(job).await?;
    if !fit.exists {
        return Err(JobError::new(format!(
            "target.table: {} does not exist in the target database (nothing to verify; run the copy first)",
            job.target.table
        ))
        .into());
    }
    if let Some(error) = unverifiable(&side) {
        return Err(error.into());
    }
    let by = match (args.by, job.verify) {
        (Some(VerifyBy::Count), _) => Verify::Count,
        (Some(VerifyBy::Checksum), _) | (None, Verify::None) => Verify::Checksum,
        (None, verify) => verify,
    };
    let by = effective_verify(by, &fit);
    // A repair takes the run's lock before it compares: a run ending in between
    // would otherwise have its partitions replaced from an older snapshot.
    let _lock = match args.repair {
        true => Some(lock_target(&target, &job.target.table, false).await?),
        false => None,
    };
    let mut coordinator = source
        .acquire()
        .await
        .context("taking the coordinator connection")?;
    let snapshot = pg::export_snapshot(&mut coordinator).await?;
    let recorded = match &job.checkpoint_table {
        Some(cp) => {
            let mut conn = target
                .acquire()
                .await
                .context("taking a target connection")?;
            pg::recorded_run(&mut conn, cp, &checkpoint::fingerprint(&job)).await?
        }
        None => None,
    };
    let window = recorded.as_ref().and_then(|r| r.window);
    let mut plan = plan_partitions(
        &mut coordinator,
        &scope(&job, &side, window.as_ref()),
        &side,
        recorded.as_ref(),
    )
    .await?;
    if let Some(condition) = window_condition(&side, window.as_ref()) {
        plan.restrict_target(&condition, &job.target.table);
    }
    let compared = plan.compared();
    let results = verify_partitions(&mut coordinator, &target, &compared, by).await?;
    print!("{}", report::render_verify(&results, by));
    let differing: Vec<PlannedPartition> = compared
        .iter()
        .filter(|p| results.iter().any(|r| r.index == p.index && !r.matches()))
        .cloned()
        .collect();
    if differing.is_empty() {
        return Ok(exit::OK);
    }
    if !args.repair {
        eprintln!(
            "error: {} partitions differ; `stride verify --repair {}` copies them again",
            differing.len(),
            args.job.display()
        );
        return Ok(exit::FAILED);
    }
    if !plan.partitions_comparable() {
        return Err(JobError::new(
            "--repair: the ctid strategy's block ranges cannot be found on the target, so no partition can be copied again alone (expected strategy \"stride\" or \"quantile\", or `stride run --restart`)",
        )
        .into());
    }
    let mut spec = copy_spec(
        &job,
        &plan,
        &fit,
        &source,
        &target,
        snapshot,
        &job.target.table,
    );
    spec.repair = Some(job.target.table.clone());
    spec.progress = report::progress_bar(0, quiet);
    let spec = Arc::new(spec);
    let (repaired, interrupted) = copy_partitions(&spec, differing.clone(), parallelism).await;
    for r in &repaired {
        match &r.status {
            Status::Written => println!(
                "repaired partition {} ({}): {} rows copied again",
                r.index,
                r.range,
                report::group(r.rows)
            ),
            Status::Failed(error) => eprintln!(
                "error: repairing partition {} ({}): {error}",
                r.index, r.range
            ),
            _ => eprintln!("partition {} ({}) was not repaired", r.index, r.range),
        }
    }
    if interrupted.is_some() {
        return Ok(exit::INTERRUPTED);
    }
    let again = verify_partitions(&mut coordinator, &target, &differing, by).await?;
    print!("{}", report::render_verify(&again, by));
    pg::execute(&mut coordinator, "ROLLBACK").await.ok();
    Ok(if again.iter().all(Verified::matches) {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// What every partition of a copy shares, from the plan and the target's fit; no
/// checkpoint, no repair, a hidden progress bar (callers set those).
fn copy_spec(
    job: &Job,
    plan: &Plan,
    fit: &TargetFit,
    source: &PgPool,
    target: &PgPool,
    snapshot: String,
    into: &QualifiedName,
) -> CopySpec {
    let table = into;
    let transfers: Vec<Transfer> = fit
        .fits
        .iter()
        .map(|f| f.transfer.unwrap_or(Transfer::Text))
        .collect();
    let format = plan::copy_format(&transfers);
    let typed: Vec<(String, String)> = plan
        .columns
        .iter()
        .cloned()
        .zip(fit.types.iter().cloned())
        .collect();
    let upsert = upsert_spec(job, &plan.columns, fit.upsert_key.as_deref());
    let (copy_in, insert) = match (&upsert, &job.target.upsert) {
        (Some(spec), Some(mode)) => (
            plan::copy_in_sql(&plan::stage_table(), &plan.columns, format),
            format!(
                "{} {}",
                plan::insert_sql(table, &typed),
                plan::on_conflict_sql(&spec.key, &plan.columns, mode.on_conflict)
            ),
        ),
        _ => (
            plan::copy_in_sql(table, &plan.columns, format),
            plan::insert_sql(table, &typed),
        ),
    };
    CopySpec {
        source: source.clone(),
        target: target.clone(),
        snapshot,
        method: job.target.method,
        format,
        copy_in,
        insert,
        columns: plan.columns.clone(),
        batch_size: job.target.batch_size as usize,
        progress: indicatif::ProgressBar::hidden(),
        cancel: CancellationToken::new(),
        retries: job.retries,
        checkpoint: None,
        repair: None,
        upsert,
    }
}

/// The staging and merge statements of an upsert on `key` (`None`: not upsert mode).
fn upsert_spec(job: &Job, columns: &[String], key: Option<&[String]>) -> Option<UpsertSpec> {
    let (key, mode) = (key?, job.target.upsert.as_ref()?);
    let stage = plan::stage_table();
    Some(UpsertSpec {
        key: key.to_vec(),
        create_stage: plan::create_stage_sql(&stage, &job.target.table, columns),
        merge: plan::merge_sql(
            &job.target.table,
            &stage,
            columns,
            &plan::on_conflict_sql(key, columns, mode.on_conflict),
        ),
    })
}

/// Both sides of each partition, counted (and checksummed): the source in the
/// snapshot `source` holds, the target as committed.
async fn verify_partitions(
    source: &mut PgConnection,
    target: &PgPool,
    partitions: &[PlannedPartition],
    verify: Verify,
) -> Result<Vec<Verified>> {
    let mut target_conn = target
        .acquire()
        .await
        .context("taking a target connection")?;
    let mut results = Vec::with_capacity(partitions.len());
    for p in partitions {
        let source_sql = plan::verify_sql(&p.select, verify);
        let target_sql = plan::verify_sql(&p.target_select, verify);
        let (s, t) = tokio::join!(
            pg::verify(source, &source_sql),
            pg::verify(&mut target_conn, &target_sql)
        );
        results.push(Verified {
            index: p.index,
            range: p.describe.clone(),
            source: s.with_context(|| format!("verifying partition {} on the source", p.index))?,
            target: t.with_context(|| format!("verifying partition {} on the target", p.index))?,
        });
    }
    Ok(results)
}

/// The command line that resumes this run: the same one, without `--restart`.
fn resume_command() -> String {
    std::env::args()
        .filter(|a| a != "--restart")
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Copies `partitions` at most `parallelism` at once, with Ctrl-C and SIGTERM
/// cancelling the copy, and the progress bar cleared at the end.
async fn copy_partitions(
    spec: &Arc<CopySpec>,
    partitions: Vec<PlannedPartition>,
    parallelism: usize,
) -> (Vec<PartitionReport>, Option<crate::error::Interrupted>) {
    let signals = tokio::spawn(cancel_on_signals(spec.cancel.clone()));
    let concurrency = parallelism.min(partitions.len()).max(1);
    let ended = run_partitions(Arc::clone(spec), partitions, concurrency).await;
    signals.abort();
    spec.progress.finish_and_clear();
    ended
}

/// The first Ctrl-C or SIGTERM cancels the run (partitions in flight roll back,
/// the summary is printed); a second one exits at once.
async fn cancel_on_signals(cancel: CancellationToken) {
    shutdown_signal().await;
    warn!(
        "interrupted: rolling back the partitions in flight (press Ctrl-C again to exit at once)"
    );
    cancel.cancel();
    shutdown_signal().await;
    eprintln!("interrupted twice: exiting now; the server rolls back what was not committed");
    std::process::exit(i32::from(exit::INTERRUPTED));
}

/// Resolves when Ctrl-C or SIGTERM arrives.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

async fn plan_command(path: &Path, overrides: &[(String, String)], format: Format) -> Result<u8> {
    let set = load_jobs(path, overrides)?;
    let many = set.jobs.len() > 1;
    let mut docs = Vec::new();
    for (i, job) in set.jobs.into_iter().enumerate() {
        if many && format == Format::Text {
            println!("== table {}\n", job.target.table);
        }
        if let Some(doc) = plan_job(job, format)
            .await
            .map_err(|e| in_entry(many, i, e))?
        {
            docs.push(doc);
        }
    }
    if format == Format::Json {
        let doc = if many {
            serde_json::Value::Array(docs)
        } else {
            docs.pop().expect("one job, one plan")
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON values always serialize")
        );
    }
    Ok(exit::OK)
}

/// One table's plan: printed as text, or returned as JSON.
async fn plan_job(job: Job, format: Format) -> Result<Option<serde_json::Value>> {
    let server = pg::connect(Side::Source, &job.source.url, job.retries).await?;
    let source = server.pool(1);
    let side = resolve_source(&source, &job, &server.place).await?;
    let mut conn = source
        .acquire()
        .await
        .context("taking a source connection (none could be opened or freed within 60 s)")?;
    let window = match &side.mark {
        Some(mark) => Some(planned_window(&job, &mut conn, mark).await?),
        None => None,
    };
    let plan =
        plan_partitions(&mut conn, &scope(&job, &side, window.as_ref()), &side, None).await?;
    let mark_line = window.zip(side.mark.as_ref()).map(|(w, mark)| {
        let shown = |v: Option<i64>| v.map(|v| mark.key_type.display(v));
        (
            format!(
                "incremental on {}: the mark is {}; the next run copies {}\n",
                mark.column,
                match (w.first, w.since) {
                    (true, _) => "not set yet".to_string(),
                    (false, since) => shown(since).unwrap_or_else(|| "(none)".to_string()),
                },
                w.describe(mark.key_type)
            ),
            json!({
                "column": mark.column,
                "first_run": w.first,
                "mark": shown(w.since),
                "copies_up_to": shown(w.until),
                "window": w.describe(mark.key_type),
            }),
        )
    });
    let mut estimates = Vec::with_capacity(plan.partitions.len());
    for p in &plan.partitions {
        estimates.push(pg::estimate_rows(&mut conn, &p.select).await?);
    }
    let at_once = job.partitions_at_once(u32::try_from(plan.partitions.len()).unwrap_or(u32::MAX));
    match format {
        Format::Text => print!(
            "{}{}",
            mark_line.as_ref().map_or("", |(text, _)| text.as_str()),
            report::render_plan(&plan, &estimates, &source_name(&job), at_once)
        ),
        Format::Json => {
            let key_type = plan.key.as_ref().map(|k| k.key_type);
            let show = |v: i64| key_type.map(|k| k.display(v));
            let doc = json!({
                "source": source_name(&job),
                "target": job.target.table.to_string(),
                "columns": plan.columns,
                "partition_column": plan.key.as_ref().map(|k| &k.column),
                "key_type": key_type,
                "lower_bound": plan.bounds.as_ref().and_then(|b| show(b.lower)),
                "upper_bound": plan.bounds.as_ref().and_then(|b| show(b.upper)),
                "bounds_from": plan.bounds.as_ref().map(|b| b.origin),
                "incremental": mark_line.map(|(_, doc)| doc),
                "strategy": plan::strategy(&job),
                "boundaries_from": match &plan.cut {
                    Cut::Quantile { how, .. } => Some(how.clone()),
                    _ => None,
                },
                "spread": Plan::spread(&estimates),
                "requested_partitions": plan.requested_partitions,
                "partitions_at_once": at_once,
                "estimated_rows": estimates.iter().sum::<i64>(),
                "partitions": plan.partitions.iter().zip(&estimates).map(|(p, e)| json!({
                    "index": p.index,
                    "range": p.describe,
                    "lower": p.range.lower.and_then(show),
                    "upper": p.range.upper.and_then(show),
                    "sql": p.select,
                    "estimated_rows": e,
                })).collect::<Vec<_>>(),
            });
            return Ok(Some(doc));
        }
    }
    Ok(None)
}

/// The window the next run of an incremental job copies: the recorded run's, if
/// it is unfinished (the next run resumes it), else the one after it. Reads the
/// checkpoint table on the target; writes nothing.
async fn planned_window(job: &Job, source: &mut PgConnection, mark: &Key) -> Result<Window> {
    let server = pg::connect(Side::Target, &job.target.url, job.retries).await?;
    let mut conn = server
        .pool(1)
        .acquire()
        .await
        .context("taking a target connection")?;
    let earlier = match &job.checkpoint_table {
        Some(cp) => pg::recorded_run(&mut conn, cp, &checkpoint::fingerprint(job)).await?,
        None => None,
    };
    let target_oid = pg::table_oid(&mut conn, &job.target.table).await?;
    let earlier = earlier.filter(|r| r.target_oid == target_oid);
    match &earlier {
        Some(run) if !run.finished && run.window.is_some() => {
            Ok(run.window.expect("checked just above"))
        }
        _ => next_window(source, job, mark, earlier.as_ref()).await,
    }
}

/// `stride init`: introspects the source table and writes a job file for it.
async fn init_command(args: &crate::cli::InitArgs) -> Result<u8> {
    let source_url = crate::job::parse_url("--source", args.source.clone())?;
    let target_url = args
        .target
        .clone()
        .map(|t| crate::job::parse_url("--target", t))
        .transpose()?;
    let table = crate::sql::QualifiedName::parse(&args.table)
        .map_err(|e| JobError::new(format!("--table: {e}")))?;
    if let (Some(path), false) = (&args.output, args.force) {
        if path.exists() {
            return Err(JobError::new(format!(
                "--output: {} exists (expected a new file, or --force to replace it)",
                path.display()
            ))
            .into());
        }
    }
    let server = pg::connect(Side::Source, &source_url, crate::job::DEFAULT_RETRIES).await?;
    let mut conn = server
        .pool(1)
        .acquire()
        .await
        .context("taking a source connection")?;
    let Some(facts) = crate::init::introspect(&mut conn, &table).await? else {
        return Err(JobError::new(format!(
            "--table: table {table} does not exist in the source database at {} (expected an existing table or view)",
            server.place
        ))
        .into());
    };
    let choice = crate::init::choose(&facts);
    let text = crate::init::render(
        &facts,
        &choice,
        &source_url.without_secrets(),
        target_url
            .as_ref()
            .map(crate::job::DbUrl::without_secrets)
            .as_deref(),
    );
    match &args.output {
        Some(path) => {
            write_atomically(path, &text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {}: check it, then `stride plan {}`",
                path.display(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(exit::OK)
}

async fn check(path: &Path, overrides: &[(String, String)]) -> Result<u8> {
    let set = load_jobs(path, overrides)?;
    let many = set.jobs.len() > 1;
    for (i, job) in set.jobs.into_iter().enumerate() {
        if many {
            println!("== table {}", job.target.table);
        }
        check_job(job).await.map_err(|e| in_entry(many, i, e))?;
    }
    Ok(exit::OK)
}

async fn check_job(job: Job) -> Result<()> {
    let source = pg::connect(Side::Source, &job.source.url, job.retries).await?;
    let target = pg::connect(Side::Target, &job.target.url, job.retries).await?;
    let same_database = same_server(&job, &source, &target) && source.database == target.database;
    let side = resolve_source(&source.pool(1), &job, &source.place).await?;
    let fit = fit_target(
        &target.pool(1),
        &job,
        &side.columns,
        same_database,
        &target.place,
    )
    .await?;
    print!(
        "{}",
        report::render_check(
            &source_name(&job),
            &job.target.table.to_string(),
            fit.exists,
            &fit.fits
        )
    );
    if let Some(error) = misfits(&job, &fit) {
        return Err(error.into());
    }
    println!("ok: the target can take every column; nothing was written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::connection_budget;

    #[test]
    fn budget_leaves_the_coordinator_a_slot_and_shares_one_server() {
        // (free on source, free on target, same server, wanted) -> partitions at once
        let cases = [
            ((100, 100, false, 8), Some(8)),
            ((5, 100, false, 8), Some(4)),
            ((100, 3, false, 8), Some(2)),
            ((6, 6, true, 8), Some(2)),
            ((18, 18, true, 8), Some(8)),
            ((2, 2, false, 8), Some(1)),
            ((4, 4, true, 1), Some(1)),
            ((1, 100, false, 8), None),
            ((100, 1, false, 8), None),
            ((3, 3, true, 8), None),
            ((-3, -3, true, 8), None),
        ];
        for ((source, target, same, wanted), expected) in cases {
            let got = connection_budget(source, target, same, wanted);
            match expected {
                Some(n) => assert_eq!(
                    got.as_ref().ok(),
                    Some(&n),
                    "{source} {target} {same} {wanted}"
                ),
                None => {
                    let e = got.expect_err("no slot free").to_string();
                    assert!(
                        e.starts_with("run.parallelism: no free connection slots"),
                        "{e}"
                    );
                }
            }
        }
    }

    use super::{decide, Resumable, Start, Step};
    use crate::cli::Shard;
    use crate::pg::RecordedRun;

    fn recorded(finished: bool, target_oid: i64, done: usize) -> RecordedRun {
        RecordedRun {
            bounds: Some((0, 100)),
            partitions: 4,
            finished,
            recorded_at: "2026-11-22 01:00:00+00".to_string(),
            target_oid: Some(target_oid),
            failed_check: None,
            window: None,
            boundaries: None,
            deferred_indexes: Vec::new(),
            done: (0..done).map(|i| (i, 10, 100)).collect(),
        }
    }

    #[test]
    fn how_each_step_starts() {
        let shard = Step::Shard(Shard { index: 0, count: 2 });
        let new = Start::New { forget: false };
        let again = Start::New { forget: true };
        let none = None;
        let open = recorded(false, 7, 1);
        let closed = recorded(true, 7, 4);
        // No run recorded: whole runs and prepare start one, shards and finish refuse.
        assert_eq!(
            decide(
                Step::Whole,
                none,
                Some(7),
                false,
                false,
                true,
                Resumable::Yes
            ),
            new
        );
        assert_eq!(
            decide(
                Step::Prepare,
                none,
                Some(7),
                false,
                false,
                true,
                Resumable::Yes
            ),
            new
        );
        for step in [shard, Step::Finish] {
            match decide(step, none, Some(7), false, false, true, Resumable::Yes) {
                Start::Refuse {
                    usage: true,
                    message,
                } => {
                    assert!(message.contains("stride prepare JOB"), "{message}")
                }
                other => panic!("{step:?}: {other:?}"),
            }
        }
        // An unfinished run: resumed, except by prepare, which leaves it be.
        for step in [Step::Whole, shard, Step::Finish] {
            assert_eq!(
                decide(
                    step,
                    Some(&open),
                    Some(7),
                    false,
                    false,
                    true,
                    Resumable::Yes
                ),
                Start::Resume
            );
        }
        match decide(
            Step::Prepare,
            Some(&open),
            Some(7),
            false,
            false,
            true,
            Resumable::Yes,
        ) {
            Start::Nothing(m) => {
                assert!(m.starts_with("already prepared: 1 of 4 partitions"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(
                Step::Prepare,
                Some(&open),
                Some(7),
                true,
                false,
                true,
                Resumable::Yes
            ),
            again
        );
        assert_eq!(
            decide(
                Step::Whole,
                Some(&open),
                Some(7),
                false,
                true,
                false,
                Resumable::Yes
            ),
            again
        );
        // A finished run: final in append mode, followed by a new one otherwise.
        match decide(
            Step::Whole,
            Some(&closed),
            Some(7),
            false,
            false,
            true,
            Resumable::Yes,
        ) {
            Start::Nothing(m) => assert!(
                m.contains("already finished") && m.contains("40 rows"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(
                Step::Whole,
                Some(&closed),
                Some(7),
                false,
                false,
                false,
                Resumable::Yes
            ),
            again
        );
        assert_eq!(
            decide(
                Step::Prepare,
                Some(&closed),
                Some(7),
                false,
                false,
                false,
                Resumable::Yes
            ),
            again
        );
        for step in [shard, Step::Finish] {
            assert!(matches!(
                decide(
                    step,
                    Some(&closed),
                    Some(7),
                    false,
                    false,
                    false,
                    Resumable::Yes
                ),
                Start::Nothing(_)
            ));
        }
        // The table was dropped since: a new run, or a refusal for shards and finish.
        assert_eq!(
            decide(
                Step::Whole,
                Some(&open),
                Some(8),
                false,
                false,
                true,
                Resumable::Yes
            ),
            again
        );
        for step in [shard, Step::Finish] {
            assert!(matches!(
                decide(step, Some(&open), None, false, false, true, Resumable::Yes),
                Start::Refuse { usage: false, .. }
            ));
        }
        // Block ranges are not resumed from a newer snapshot: started over where
        // that is exact, refused where it would add rows twice.
        assert_eq!(
            decide(
                Step::Whole,
                Some(&open),
                Some(7),
                false,
                false,
                false,
                Resumable::StartOver
            ),
            again
        );
        assert!(matches!(
            decide(
                Step::Whole,
                Some(&open),
                Some(7),
                false,
                false,
                true,
                Resumable::No
            ),
            Start::Refuse { usage: false, .. }
        ));
        let untouched = recorded(false, 7, 0);
        assert_eq!(
            decide(
                Step::Whole,
                Some(&untouched),
                Some(7),
                false,
                false,
                true,
                Resumable::No
            ),
            Start::Resume
        );
        // A run that failed its check is not resumed by anyone.
        let failed = RecordedRun {
            failed_check: Some("coverage".to_string()),
            ..recorded(false, 7, 4)
        };
        for step in [Step::Whole, shard, Step::Finish] {
            assert!(matches!(
                decide(
                    step,
                    Some(&failed),
                    Some(7),
                    false,
                    false,
                    true,
                    Resumable::Yes
                ),
                Start::Refuse { usage: false, .. }
            ));
        }
    }
}
