//! What every command does before its first write: connect within the
//! connection budget, resolve the source's columns and key, plan the
//! partitions, fit the target's columns. Nothing here writes.

use anyhow::{Context, Result};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::checkpoint::RecordedRun;
use crate::engine::postgres::copy::{CopySpec, UpsertSpec};
use crate::engine::postgres::create::{self, Creation, SourceIndexes};
use crate::engine::postgres::plan::{self, Bounds, BoundsOrigin, Cut, Key, Plan, Window};
use crate::engine::postgres::replace;
use crate::engine::postgres::{self as pg, Column, Server, Side, Transfer};
use crate::error::JobError;
use crate::job::{Create, Job, Method, Mode, Relation, Strategy, Verify};
use crate::partition::weighted_cuts;
use crate::report::{self, ColumnFit};
use crate::sql::QualifiedName;

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
pub(crate) struct SourceSide {
    pub(crate) columns: Vec<Column>,
    pub(crate) key: Option<Key>,
    pub(crate) bounds: Option<Bounds>,
    /// The incremental column, if the job has one.
    pub(crate) mark: Option<Key>,
    /// `incremental.lookback` in the mark column's encoding (0 without one).
    pub(crate) lookback: i64,
    /// A table source's relkind (`r` table, `v` view, ...); `None` for a query.
    pub(crate) kind: Option<char>,
    /// A table source's primary key and indexes, for a target stride creates;
    /// `None` for a query.
    pub(crate) indexes: Option<SourceIndexes>,
}

/// Reads the source's catalogue and checks the job against it: columns, key,
/// bounds, and that the job's SQL (`where`, `query`) runs there.
pub(crate) async fn resolve_source(pool: &PgPool, job: &Job, place: &str) -> Result<SourceSide> {
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
    let lookback = match &mark {
        Some(mark) => plan::lookback(job, mark)?,
        None => 0,
    };
    if let (Some(mark), Mode::Append) = (&mark, job.target.mode) {
        if !columns.iter().any(|c| c.name == mark.column) {
            return Err(JobError::new(format!(
                "source.columns: the incremental column \"{}\" is not among the copied columns, and in append mode each run replaces the target's rows at the mark (and within incremental.lookback) by it (expected it in source.columns, or mode = \"upsert\")",
                mark.column
            ))
            .into());
        }
    }
    if let (Some(mark), Mode::Append, Relation::Table(table)) =
        (&mark, job.target.mode, &job.source.relation)
    {
        // An updated row moves its mark past the last run's: in append mode the
        // next run adds it again, next to its old version.
        let keys = pg::unique_keys(&mut conn, table).await?;
        if !keys
            .unique
            .iter()
            .any(|k| k == std::slice::from_ref(&mark.column))
        {
            warn!(
                "incremental.column \"{}\" is not a unique key of {table}: in append mode a row whose {} changes after a run is added again by the next one, next to its earlier copy (for rows that get updated use mode = \"upsert\" with the table's key; append suits a column that only new rows move, such as an identity id)",
                mark.column, mark.column
            );
        }
    }
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
    let indexes = match &job.source.relation {
        Relation::Table(table) => Some(pg::source_indexes(&mut conn, table).await?),
        Relation::Query(_) => None,
    };
    Ok(SourceSide {
        columns,
        key,
        bounds,
        mark,
        lookback,
        kind,
        indexes,
    })
}

/// The plan: with the bounds (or boundaries, or block count) a recorded run
/// planned with, so a resume plans exactly its partitions; else from the job and
/// the source, read in `conn`'s snapshot.
pub(crate) async fn plan_partitions(
    conn: &mut PgConnection,
    job: &Job,
    side: &SourceSide,
    recorded: Option<&RecordedRun>,
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
pub(crate) struct TargetFit {
    pub(crate) exists: bool,
    pub(crate) fits: Vec<ColumnFit>,
    /// Target type (without modifier) of each copied column, for the row path's casts.
    pub(crate) types: Vec<String>,
    /// How the source reads each copied column, so that both methods give the
    /// target the cast's value (`plan::conversion`).
    pub(crate) reads: Vec<plan::Read>,
    /// Why the target cannot take the rows, each naming a column; empty when it can.
    pub(crate) problems: Vec<String>,
    /// Source columns the target generates (`GENERATED ALWAYS AS ... STORED`):
    /// left out of the copy, the target computes them; `check` lists them.
    pub(crate) computed: Vec<ColumnFit>,
    /// Upsert mode: the key rows are matched by, checked against the target's
    /// unique indexes (a missing table is created with it as primary key).
    pub(crate) upsert_key: Option<Vec<String>>,
    /// The statements that create the table (`None`: it exists and is kept):
    /// `CREATE TABLE`, then the key and indexes built once the rows are in.
    pub(crate) creation: Option<Creation>,
}

/// An upsert into a table stride creates matches rows by `target.key`, else by
/// the source's primary key.
fn created_upsert_key(job: &Job, side: &SourceSide) -> Result<Option<Vec<String>>, JobError> {
    let source_pk = create::source_primary_key(side.indexes.as_ref(), &side.columns);
    match (&job.target.upsert, source_pk) {
        (Some(u), Some(pk)) if u.key.is_none() => Ok(Some(pk)),
        _ => plan::upsert_key(job, &side.columns, None),
    }
}

/// What `stride plan` shows of the target: how a run would create it, or
/// `None` when it exists and is kept.
pub(crate) async fn planned_creation(
    pool: &PgPool,
    job: &Job,
    side: &SourceSide,
) -> Result<Option<Creation>> {
    let mut conn = pool
        .acquire()
        .await
        .context("taking a target connection (none could be opened or freed within 60 s)")?;
    let exists = pg::table_oid(&mut conn, &job.target.table).await?.is_some();
    if exists && job.target.mode != Mode::Overwrite {
        return Ok(None);
    }
    let upsert_key = created_upsert_key(job, side)?;
    Ok(Some(
        plan_creation(&mut conn, job, side, upsert_key.as_deref()).await?,
    ))
}

/// Leaves out of `side.columns` the columns an existing target generates (see
/// `plan::computed_in_target`), as `fit_target` does: what `stride plan` shows.
/// A target the run creates (missing, or overwritten) generates none.
pub(crate) async fn leave_out_computed(
    pool: &PgPool,
    job: &Job,
    side: &mut SourceSide,
) -> Result<()> {
    if job.target.mode == Mode::Overwrite {
        return Ok(());
    }
    let mut conn = pool
        .acquire()
        .await
        .context("taking a target connection (none could be opened or freed within 60 s)")?;
    if let Some(relation) = pg::describe_table(&mut conn, &job.target.table).await? {
        let generated = plan::computed_in_target(job, &side.columns, &relation.columns)?;
        side.columns.retain(|c| !generated.contains(&c.name));
    }
    Ok(())
}

/// How the run creates the missing (or overwritten) target: into a replace's
/// staging table or the target itself, with new index names free in its schema.
async fn plan_creation(
    conn: &mut PgConnection,
    job: &Job,
    side: &SourceSide,
    upsert_key: Option<&[String]>,
) -> Result<Creation> {
    let table = &job.target.table;
    let schema = pg::schema_of(conn, table).await?;
    let stage = replace::stage_name(table, &schema);
    let into = if job.target.mode == Mode::Replace {
        &stage
    } else {
        table
    };
    let taken = pg::taken_names(conn, &schema, &[table, &stage]).await?;
    Ok(create::creation(
        into,
        &table.name,
        &side.columns,
        job.target.indexes.unwrap_or_default(),
        upsert_key,
        side.indexes.as_ref(),
        &taken,
    ))
}

/// How the target takes the source's columns. Columns the existing target
/// generates are removed from `side.columns`: no statement of the run reads,
/// writes or verifies them.
pub(crate) async fn fit_target(
    pool: &PgPool,
    job: &Job,
    side: &mut SourceSide,
    same_database: bool,
    place: &str,
) -> Result<TargetFit> {
    let table = &job.target.table;
    let columns = &side.columns;
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
                note: None,
            })
            .collect();
        let upsert_key = created_upsert_key(job, side)?;
        let creation = plan_creation(&mut conn, job, side, upsert_key.as_deref()).await?;
        return Ok(TargetFit {
            exists: false,
            fits,
            types: columns.iter().map(|c| c.base_type.clone()).collect(),
            reads: plan::reads(columns, None),
            problems,
            computed: Vec::new(),
            upsert_key,
            creation: Some(creation),
        });
    };
    let generated = plan::computed_in_target(job, &side.columns, &relation.columns)?;
    let computed = side
        .columns
        .iter()
        .filter(|c| generated.contains(&c.name))
        .map(|c| ColumnFit {
            column: c.name.clone(),
            source_type: c.type_name.clone(),
            target_type: relation
                .columns
                .iter()
                .find(|t| t.name == c.name)
                .map(|t| t.type_name.clone()),
            transfer: None,
            note: None,
        })
        .collect();
    side.columns.retain(|c| !generated.contains(&c.name));
    let columns = &side.columns;
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
            note: target
                .filter(|t| plan::transfer(column, t) == Transfer::Text)
                .and_then(|t| plan::conversion(column, t).ok()?.note),
        });
    }
    // COPY FROM refuses a table whose row-level security applies to the role
    // (an upsert copies into a staging table and INSERTs from it: not affected).
    if job.target.method == Method::Copy
        && job.target.upsert.is_none()
        && pg::row_security_active(&mut conn, table).await?
    {
        return Err(JobError::new(format!(
            "target.method: \"copy\" cannot write into {table}: row-level security applies to this role there, and COPY FROM does not go through its policies (expected method = \"insert\", or a role that bypasses row-level security)"
        ))
        .into());
    }
    let keys = match &job.target.upsert {
        Some(_) => pg::unique_keys(&mut conn, table).await?,
        None => pg::UniqueKeys::default(),
    };
    Ok(TargetFit {
        exists: true,
        fits,
        types,
        reads: plan::reads(columns, Some(&relation.columns)),
        problems: plan::target_problems(columns, &relation.columns),
        computed,
        upsert_key: plan::upsert_key(job, columns, Some(&keys))?,
        creation: None,
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
pub(crate) fn same_server(job: &Job, source: &Server, target: &Server) -> bool {
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
pub struct Prepared {
    pub(crate) job: Job,
    pub(crate) source: PgPool,
    pub(crate) target: PgPool,
    pub(crate) side: SourceSide,
    pub(crate) fit: TargetFit,
    /// Partitions at once, within the servers' free connection slots.
    pub(crate) parallelism: usize,
    /// How each side's sessions are protected, for the summary.
    pub(crate) encryption: report::Encryption,
}

/// What the source and target, as found, make impossible (exit 2): a column the
/// target cannot take, a checkpoint schema that does not exist, a verify that
/// cannot compare partitions. `run`, `verify` and `check` refuse the same.
pub(crate) async fn refuse_unfit(
    job: &Job,
    side: &SourceSide,
    fit: &TargetFit,
    target: &PgPool,
) -> Result<()> {
    if let Some(error) = misfits(job, fit) {
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
        if let Some(error) = unverifiable(side) {
            return Err(error.into());
        }
    }
    Ok(())
}

/// Everything `run` and `verify` do before their first write: parse the job,
/// connect within the connection budget, resolve the source, fit the target.
pub async fn prepare(job: Job) -> Result<Prepared> {
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
    let mut side = resolve_source(&source, &job, &source_server.place).await?;
    let fit = fit_target(
        &target,
        &job,
        &mut side,
        same_database,
        &target_server.place,
    )
    .await?;
    refuse_unfit(&job, &side, &fit, &target).await?;
    Ok(Prepared {
        job,
        source,
        target,
        side,
        fit,
        parallelism,
        encryption: report::Encryption {
            source: source_server.encryption.clone(),
            target: target_server.encryption.clone(),
        },
    })
}

/// The job as a run with `window` reads it: the window's condition added to the
/// source's `where`.
pub(crate) fn scope(job: &Job, side: &SourceSide, window: Option<&Window>) -> Job {
    match (window, &side.mark) {
        (Some(w), Some(mark)) => plan::within_window(job, w, mark.key_type),
        _ => job.clone(),
    }
}

/// The window's condition on the mark column (the same on both sides).
pub(crate) fn window_condition(side: &SourceSide, window: Option<&Window>) -> Option<String> {
    let (w, mark) = window.zip(side.mark.as_ref())?;
    Some(w.condition(&crate::sql::quote_ident(&mark.column), mark.key_type))
}

/// Adds an incremental run's re-read range to `plan` as its last partition (see
/// `Plan::add_reread`); `job` is the job without the window.
pub(crate) fn add_reread(plan: &mut Plan, job: &Job, side: &SourceSide, window: Option<&Window>) {
    if let (Some(w), Some(mark)) = (window, &side.mark) {
        plan.add_reread(job, mark, w, side.lookback);
    }
}

/// Every row a run of `plan` with `window` reads, in one query: the window and
/// the re-read range if the plan has one (what the coverage check counts).
pub(crate) fn read_select(
    job: &Job,
    plan: &Plan,
    side: &SourceSide,
    window: Option<&Window>,
) -> String {
    let read = match (window, &side.mark, plan.reread) {
        (Some(w), Some(mark), Some(_)) => plan::within_read(job, w, mark.key_type, side.lookback),
        (Some(w), Some(mark), None) => plan::within_window(job, w, mark.key_type),
        _ => job.clone(),
    };
    plan::whole_select(&read, &side.columns)
}

/// Verify compares partition by partition, so the target needs the partition
/// column: it must be among the copied columns.
pub(crate) fn unverifiable(side: &SourceSide) -> Option<JobError> {
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
pub(crate) fn effective_verify(verify: Verify, fit: &TargetFit) -> Verify {
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

/// What every partition of a copy shares, from the plan and the target's fit; no
/// checkpoint, no repair, a hidden progress bar (callers set those).
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_spec(
    job: &Job,
    plan: &Plan,
    fit: &TargetFit,
    source: &PgPool,
    target: &PgPool,
    snapshot: String,
    into: &QualifiedName,
    lock: &pg::RunLock,
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
        reads: fit.reads.clone(),
        can_fail: fit
            .fits
            .iter()
            .filter_map(|f| {
                f.note
                    .as_ref()
                    .map(|n| format!("column \"{}\" {n}", f.column))
            })
            .collect(),
        batch_size: job.target.batch_size as usize,
        progress: indicatif::ProgressBar::hidden(),
        cancel: CancellationToken::new(),
        retries: job.retries,
        stall_timeout: job.stall_timeout,
        checkpoint: None,
        repair: None,
        claims: None,
        lock: lock.clone(),
        upsert,
        reread_delete: match (plan.reread, plan.reread_partition()) {
            (Some(plan::Reread::Replaced), Some(p)) => {
                Some((p.index, plan::delete_range_sql(table, p)))
            }
            _ => None,
        },
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
}
