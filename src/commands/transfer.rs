//! A run across the engine seam: a job whose source or target is not
//! PostgreSQL (PostgreSQL to PostgreSQL keeps its own route, `engine::native`). The
//! same steps and promises: everything is checked before the first write (exit
//! 2), the readers share one moment of the source, each partition is one target
//! transaction with its checkpoint row, a re-run resumes, and `verify`
//! compares counts and a checksum both sides compute the same way.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use std::sync::Mutex as StdMutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::{
    CheckpointSpec, Checksum, Column, Engine, Kind, Reader, Recorded, Source, Target, WriteSpec,
};
use crate::error::backoff;
use crate::error::{exit, JobError};
use crate::job::{Job, Mode, Relation, Strategy, Verify};
use crate::partition::{stride_ranges, KeyRange};
use crate::plan::{parse_bounds, Key};
use crate::report::{self, Summary, Verified};
use crate::report::{PartitionReport, Status};
use crate::run::start::{appended, finished_already, RunOptions, Start, Step};
use crate::run::RunEnd;
use crate::sql::QualifiedName;

/// Whether a job crosses the seam (either side is not PostgreSQL).
pub(super) fn crosses(job: &Job) -> bool {
    Engine::of(&job.source.url) != Engine::Postgres
        || Engine::of(&job.target.url) != Engine::Postgres
}

/// What a run across engines does not do (yet), by key.
fn refusals(job: &Job, step: Step) -> Vec<String> {
    let (from, to) = (Engine::of(&job.source.url), Engine::of(&job.target.url));
    let pair = format!("from {} to {}", from.name(), to.name());
    let mut out = from.refusals(job, crate::engine::Side::Source);
    out.extend(to.refusals(job, crate::engine::Side::Target));
    if job.incremental.is_some() {
        out.push(format!(
            "incremental: not supported {pair} yet (expected a job without [incremental])"
        ));
    }
    if let Some(p) = &job.partition {
        if p.strategy != Strategy::Stride {
            out.push(format!(
                "partition.strategy: only \"stride\" is supported {pair} yet"
            ));
        }
    }
    if job.target.mode == Mode::Upsert && job.verify != Verify::None {
        out.push(format!(
            "run.verify: not supported with target.mode = \"upsert\" {pair} yet: the target may hold rows this job did not write, and comparing by key across engines is not built (expected verify = \"none\")"
        ));
    }
    if step != Step::Whole {
        out.push(format!(
            "a run {pair} runs whole: --shard, `stride prepare` and `stride finish` are not supported yet"
        ));
    }
    out
}

/// A partition of the run.
#[derive(Clone)]
struct Part {
    index: usize,
    describe: String,
    select: String,
    target_select: String,
}

/// Everything known before the first write.
struct Planned {
    source: Source,
    target: Target,
    columns: Vec<Column>,
    kinds: Vec<Kind>,
    /// The target table exists (else it is created).
    exists: bool,
    /// `(name, declared type, not null)` of a table stride creates.
    create: Vec<(String, String, bool)>,
    primary_key: Vec<String>,
    target_declared: Vec<String>,
    key: Option<Key>,
    /// The key is a copied column, so each partition's rows can be found on
    /// the target by its range (not with SQLite's rowid): verify compares
    /// partitions, else the whole table.
    by_range: bool,
    upsert_key: Option<Vec<String>>,
    fingerprint: String,
}

async fn plan_job(job: &Job, step: Step) -> Result<Planned> {
    let refused = refusals(job, step);
    if !refused.is_empty() {
        return Err(JobError::new(refused.join("\n")).into());
    }
    let mut source = Source::open(&job.source.url, job.retries).await?;
    let described = source.describe(job).await?;
    let columns: Vec<Column> = match &job.source.columns {
        None => described
            .columns
            .iter()
            .filter(|c| !c.generated)
            .cloned()
            .collect(),
        Some(names) => names
            .iter()
            .map(|n| {
                described
                    .columns
                    .iter()
                    .find(|c| &c.name == n)
                    .cloned()
                    .ok_or_else(|| {
                        JobError::new(format!(
                            "source.columns: column \"{n}\" does not exist in the source"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let key = match job.partition.as_ref().and_then(|p| p.column.as_ref()) {
        None => None,
        Some(name) => {
            let column = described
                .columns
                .iter()
                .find(|c| &c.name == name)
                .cloned()
                .or_else(|| source.pseudo_key(job, name))
                .ok_or_else(|| {
                    JobError::new(format!(
                        "partition.column: column \"{name}\" does not exist in the source"
                    ))
                })?;
            let key_type = column.kind.key_type().ok_or_else(|| {
                JobError::new(format!(
                    "partition.column: \"{name}\" is {} in the source (expected an integer, date or timestamp column)",
                    column.declared
                ))
            })?;
            Some(Key {
                column: name.clone(),
                key_type,
            })
        }
    };
    if let Some(k) = &key {
        parse_bounds(job, k)?;
    }
    let connections = job.partitions_at_once(job.partition.as_ref().map_or(1, |p| p.count));
    let target = Target::open(&job.target.url, job.retries, connections).await?;
    let existing = target.describe(&job.target.table).await?;
    let mut problems: Vec<String> = source.conflict(&target).await?.into_iter().collect();
    problems.extend(
        source
            .value_problems(job, &columns, Engine::of(&job.target.url))
            .await?,
    );
    let (exists, target_declared) = match &existing {
        Some(t) if job.target.mode != Mode::Overwrite => {
            let mut declared = Vec::new();
            for c in &columns {
                match t.columns.iter().find(|tc| tc.name == c.name) {
                    None => problems.push(format!(
                        "target.table: column \"{}\" is not in {} (expected the source's columns)",
                        c.name, job.target.table
                    )),
                    Some(tc) if tc.generated => problems.push(format!(
                        "target.table: column \"{}\" is generated in the target and cannot be written (expected source.columns without it)",
                        c.name
                    )),
                    Some(tc) => {
                        if let Some(why) = target.refusal(c.kind, &tc.declared) {
                            problems.push(format!("column \"{}\": {why}", c.name));
                        }
                        declared.push(tc.declared.clone());
                    }
                }
            }
            (true, declared)
        }
        _ => {
            if existing.is_none() && job.target.create == crate::job::Create::Never {
                problems.push(format!(
                    "target.table: {} does not exist in {} and target.create = \"never\"",
                    job.target.table,
                    target.place()
                ));
            }
            let mut declared = Vec::new();
            for c in &columns {
                let in_key = described.primary_key.contains(&c.name);
                match target.declared_for(source.engine(), c, in_key) {
                    Ok(d) => declared.push(d),
                    Err(why) => problems.push(format!("target.table: {why}")),
                }
            }
            (existing.is_some(), declared)
        }
    };
    if !problems.is_empty() {
        return Err(JobError::new(problems.join("\n")).into());
    }
    let create: Vec<(String, String, bool)> = columns
        .iter()
        .zip(&target_declared)
        .map(|(c, d)| (c.name.clone(), d.clone(), c.not_null))
        .collect();
    let primary_key: Vec<String> = if described
        .primary_key
        .iter()
        .all(|k| columns.iter().any(|c| &c.name == k))
    {
        described.primary_key.clone()
    } else {
        Vec::new()
    };
    let upsert_key = match &job.target.upsert {
        None => None,
        Some(u) => {
            let key = u.key.clone().or_else(|| match &existing {
                Some(t) if !t.primary_key.is_empty() => Some(t.primary_key.clone()),
                Some(_) => None,
                None => Some(primary_key.clone()).filter(|k| !k.is_empty()),
            });
            let Some(key) = key else {
                return Err(JobError::new(
                    "target.key: the target table has no primary key (expected target.key = [\"column\", ...])",
                )
                .into());
            };
            if let Some(t) = &existing {
                let mut sorted = key.clone();
                sorted.sort();
                let known = t.unique_keys.iter().any(|u| {
                    let mut u = u.clone();
                    u.sort();
                    u == sorted
                });
                if !known {
                    return Err(JobError::new(format!(
                        "target.key: {} has no unique index on ({}) (expected the columns of its primary key or a unique index)",
                        job.target.table,
                        key.join(", ")
                    ))
                    .into());
                }
            }
            if let Some(why) =
                target.upsert_refusal(&target.engine().table(&job.target.table), &key)
            {
                return Err(JobError::new(why).into());
            }
            Some(key)
        }
    };
    Ok(Planned {
        by_range: key
            .as_ref()
            .is_none_or(|k| columns.iter().any(|c| c.name == k.column)),
        kinds: columns.iter().map(|c| c.kind).collect(),
        fingerprint: crate::checkpoint::fingerprint(job),
        source,
        target,
        columns,
        exists,
        create,
        primary_key,
        target_declared,
        key,
        upsert_key,
    })
}

/// The partitions of the run between `bounds` (`None`: one partition).
fn partitions(
    job: &Job,
    p: &Planned,
    bounds: Option<(i64, i64)>,
    written: &QualifiedName,
) -> Vec<Part> {
    let count = job.partition.as_ref().map_or(1, |p| p.count);
    let ranges = match (&p.key, bounds) {
        (Some(_), Some((lo, hi))) if lo < hi => stride_ranges(lo, hi, count),
        _ => vec![KeyRange {
            lower: None,
            upper: None,
        }],
    };
    let target_engine = p.target.engine();
    let table = target_engine.table(written);
    // The target's columns with the target's types: MySQL reads a float
    // column by its own type.
    let target_columns: Vec<Column> = p
        .columns
        .iter()
        .zip(&p.target_declared)
        .map(|(c, declared)| Column {
            declared: declared.clone(),
            ..c.clone()
        })
        .collect();
    let key = p.key.as_ref().map(|k| (k.column.as_str(), k.key_type));
    ranges
        .into_iter()
        .enumerate()
        .map(|(index, range)| {
            let target_pred = key.filter(|_| p.by_range).and_then(|(c, t)| {
                target_engine.predicate(&target_engine.quote_ident(c), t, &range)
            });
            Part {
                index,
                describe: p
                    .key
                    .as_ref()
                    .map_or_else(|| "all rows".to_string(), |k| range.describe(k.key_type)),
                select: p.source.select(job, &p.columns, key, &range),
                target_select: p.target.target_select(&table, &target_columns, target_pred),
            }
        })
        .collect()
}

/// What verify compares: the partitions, or the whole table when the
/// partitions cannot be told apart on the target.
fn compared(job: &Job, p: &Planned, parts: &[Part]) -> Vec<Part> {
    if p.by_range || parts.len() < 2 {
        return parts.to_vec();
    }
    let whole = KeyRange {
        lower: None,
        upper: None,
    };
    vec![Part {
        index: 0,
        describe: "all rows, as a whole".to_string(),
        select: p.source.select(job, &p.columns, None, &whole),
        target_select: parts[0].target_select.clone(),
    }]
}

/// The bounds of the run: the job's, an unfinished run's, or the source's.
async fn bounds(
    job: &Job,
    key: Option<&Key>,
    recorded: Option<(i64, i64)>,
    reader: &mut Reader,
) -> Result<Option<(i64, i64)>> {
    let Some(key) = key else { return Ok(None) };
    if let Some(b) = parse_bounds(job, key)? {
        return Ok(Some((b.lower, b.upper)));
    }
    if recorded.is_some() {
        return Ok(recorded);
    }
    reader.bounds(job, &key.column, key.key_type).await
}

/// The run of one job across engines.
/// Everything a run of `job` checks before its first write (exit 2 for a bad
/// job), for [`run`]: every table of a job file is checked before any is written.
pub(super) struct Checked(Planned);

pub(super) async fn check(job: &Job, step: Step) -> Result<Checked> {
    plan_job(job, step).await.map(Checked)
}

/// Whether the job writes into a file that takes one writer at a time.
pub(super) fn one_writer(job: &Job) -> bool {
    Engine::of(&job.target.url) == Engine::Sqlite
}

pub(super) async fn run(
    Checked(mut planned): Checked,
    job: Job,
    opts: &RunOptions,
    path: &Path,
) -> Result<RunEnd> {
    let started = Instant::now();
    let table = job.target.table.clone();
    let written = if job.target.mode == Mode::Replace {
        crate::engine::stage_name(&table)
    } else {
        table.clone()
    };
    let engine = planned.target.engine();
    let checkpoints = job.checkpoint_table.as_ref().map(|cp| engine.table(cp));
    let fp = planned.fingerprint.clone();
    let recorded = match &job.checkpoint_table {
        Some(cp) => planned.target.recorded(cp, &fp).await?,
        None => Recorded::default(),
    };
    // As on PostgreSQL's own route: a finished append job is not copied again
    // by a re-run, and --restart refuses to add its rows a second time.
    if let Some(run) = &recorded.run {
        let rows: u64 = recorded.done.iter().map(|d| d.1).sum();
        if run.finished && job.target.mode == Mode::Append && !opts.restart {
            let partitions = format!("{} partitions", run.partitions);
            opts.say(&format!(
                "{}\n",
                finished_already(&run.recorded_at, &partitions, rows)
            ));
            return Ok(RunEnd {
                code: exit::OK,
                summary: None,
                fingerprint: fp,
                table: table.to_string(),
            });
        }
        let (done, partitions) = (recorded.done.len(), run.partitions);
        if let Some(Start::Refuse { message, .. }) =
            appended(&job, opts.step, rows, done, partitions, opts, path)
        {
            return Err(JobError::new(message).into());
        }
    }
    let resuming = !opts.restart && recorded.run.as_ref().is_some_and(|r| !r.finished);
    let parallel = job.partitions_at_once(job.partition.as_ref().map_or(1, |p| p.count)) as usize;
    let mut readers = planned.source.snapshot(parallel).await?;
    let run_bounds = recorded
        .run
        .as_ref()
        .filter(|_| resuming)
        .and_then(|r| r.bounds);
    let bounds = bounds(&job, planned.key.as_ref(), run_bounds, &mut readers[0]).await?;
    let parts = partitions(&job, &planned, bounds, &written);
    let done: Vec<(usize, u64, u64)> = if resuming {
        recorded.done.clone()
    } else {
        Vec::new()
    };
    if !resuming
        && job.target.mode == Mode::Append
        && job.verify != Verify::None
        && planned.exists
        && planned.target.has_rows(&engine.table(&table)).await?
    {
        return Err(JobError::new(format!(
            "run.verify: {table} already holds rows, which each partition's range on the target would count too, so the comparison could not be trusted (expected verify = \"none\", or target.mode = \"truncate\")"
        ))
        .into());
    }
    if !resuming {
        let statements = start_statements(
            &job,
            &planned,
            &written,
            checkpoints.as_deref(),
            bounds,
            parts.len(),
        )
        .await?;
        if let Some(cp) = &job.checkpoint_table {
            planned.target.ensure_checkpoints(cp).await?;
        }
        planned.target.transaction(&statements).await?;
    } else {
        info!(partitions_done = done.len(), "resuming the unfinished run");
    }
    let estimate = planned
        .source
        .estimate(&job, &planned.columns)
        .await
        .unwrap_or(0);
    let planned = Arc::new(planned);
    let readers = Arc::new(StdMutex::new(readers));
    let base = WriteSpec {
        table: engine.table(&written),
        columns: planned.columns.iter().map(|c| c.name.clone()).collect(),
        source_kinds: planned.kinds.clone(),
        target_declared: planned.target_declared.clone(),
        upsert: planned.upsert_key.clone().map(|key| crate::engine::Upsert {
            key,
            update: job
                .target
                .upsert
                .as_ref()
                .is_some_and(|u| u.on_conflict == crate::job::OnConflict::Update),
        }),
        batch_size: job.target.batch_size as usize,
        checkpoint: None,
    };
    let mut reports: Vec<PartitionReport> = Vec::new();
    let mut todo = Vec::new();
    for part in &parts {
        match done.iter().find(|d| d.0 == part.index) {
            Some(&(_, rows, bytes)) => reports.push(PartitionReport {
                index: part.index,
                range: part.describe.clone(),
                status: Status::Skipped,
                rows,
                bytes,
                elapsed: std::time::Duration::ZERO,
                retries: 0,
            }),
            None => todo.push(part),
        }
    }
    let flow = Arc::new(Flow {
        cancel: CancellationToken::new(),
        progress: report::progress_bar(estimate.max(0) as u64, opts.quiet),
        started: Instant::now(),
        moved_at: AtomicU64::new(0),
        stall_timeout: job.stall_timeout,
    });
    let signals = tokio::spawn(crate::run::cancel_on_signals(flow.cancel.clone()));
    let written_now: Vec<PartitionReport> =
        futures_util::stream::iter(todo.into_iter().map(|part| {
            let mut spec = base.clone();
            spec.checkpoint = job.checkpoint_table.as_ref().map(|name| CheckpointSpec {
                name: name.clone(),
                table: engine.table(name),
                fingerprint: fp.clone(),
                index: part.index,
                range: part.describe.clone(),
            });
            let (planned, readers, flow) = (
                Arc::clone(&planned),
                Arc::clone(&readers),
                Arc::clone(&flow),
            );
            async move { run_partition(&planned, &readers, &flow, &spec, part, job.retries).await }
        }))
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    signals.abort();
    flow.progress.finish_and_clear();
    let interrupted = flow.cancel.is_cancelled();
    reports.extend(written_now);
    reports.sort_by_key(|r| r.index);
    let mut summary = Summary {
        source: format!("{} {}", planned.source.place(), source_label(&job)),
        target: format!("{} {}", planned.target.place(), table),
        method: format!(
            "{} to {}, rows as text",
            planned.source.engine().name(),
            engine.name()
        ),
        shard: None,
        partitions: reports,
        elsewhere: 0,
        elapsed: started.elapsed(),
        interrupted,
        encryption: report::Encryption {
            source: planned.source.encryption(),
            target: planned.target.encryption(),
        },
    };
    let mut code = match (summary.succeeded(), interrupted) {
        (true, _) => exit::OK,
        (false, true) => exit::INTERRUPTED,
        (false, false) => exit::FAILED,
    };
    // Counted before verify reads the source again.
    if let Some(changed) = planned.source.changed_values() {
        warn!("{changed}");
        opts.say(&format!("{changed}\n"));
    }
    let mut verified = String::new();
    if code == exit::OK && job.verify != Verify::None {
        let mut reader = readers
            .lock()
            .expect("never poisoned")
            .pop()
            .expect("the readers are back");
        let results = compare(
            &planned,
            &mut reader,
            &compared(&job, &planned, &parts),
            job.verify,
            &written,
        )
        .await?;
        verified = report::render_verify(&results, job.verify);
        if results.iter().any(|r| r.source != r.target) {
            code = exit::FAILED;
        }
    }
    if code == exit::OK {
        let mut statements = Vec::new();
        if job.target.mode == Mode::Replace {
            statements.extend(planned.target.swap_sql(&written, &table, &base.columns));
        }
        if let Some(cp) = &checkpoints {
            statements.push(planned.target.finish_run_sql(cp, &fp));
        }
        planned.target.transaction(&statements).await?;
    }
    summary.elapsed = started.elapsed();
    opts.say_summary(&format!("{}{verified}", summary.render()), code == exit::OK);
    if !summary.succeeded() && job.checkpoint_table.is_some() {
        eprintln!("resume with: {}", crate::run::resume_command());
    }
    Ok(RunEnd {
        code,
        summary: Some(summary),
        fingerprint: fp,
        table: table.to_string(),
    })
}

fn source_label(job: &Job) -> String {
    match &job.source.relation {
        Relation::Table(name) => name.to_string(),
        Relation::Query(_) => "(query)".to_string(),
    }
}

/// What a new run does first, in one target transaction: empty or create the
/// table as the mode says, and record the run (after forgetting an earlier
/// one of the job, and other jobs' runs into a table it empties).
async fn start_statements(
    job: &Job,
    p: &Planned,
    written: &QualifiedName,
    checkpoints: Option<&str>,
    bounds: Option<(i64, i64)>,
    partitions: usize,
) -> Result<Vec<String>> {
    let engine = p.target.engine();
    let table = engine.table(&job.target.table);
    let create = |name: &QualifiedName| {
        p.target
            .create_sql(&engine.table(name), &p.create, &p.primary_key)
    };
    let mut out = Vec::new();
    let mut emptied = false;
    match job.target.mode {
        Mode::Overwrite => {
            out.push(format!("DROP TABLE IF EXISTS {table}"));
            out.push(create(&job.target.table));
            emptied = true;
        }
        Mode::Replace => {
            if !p.exists {
                out.push(create(&job.target.table));
            }
            out.push(format!("DROP TABLE IF EXISTS {}", engine.table(written)));
            out.push(create(written));
            emptied = true;
        }
        _ if !p.exists => out.push(create(&job.target.table)),
        Mode::Truncate => {
            out.push(p.target.empty_sql(&table));
            emptied = true;
        }
        Mode::ErrorIfExists => {
            if p.target.has_rows(&table).await? {
                return Err(JobError::new(format!(
                    "target.mode = \"error-if-exists\": {} already holds rows (expected an empty table, or another mode)",
                    job.target.table
                ))
                .into());
            }
        }
        Mode::Append | Mode::Upsert => {}
    }
    if let Some(cp) = checkpoints {
        out.push(p.target.forget_run_sql(cp, &p.fingerprint));
        if emptied {
            out.push(
                p.target
                    .forget_other_runs_sql(cp, &p.fingerprint, &engine.table(written)),
            );
        }
        out.push(p.target.record_run_sql(
            cp,
            &p.fingerprint,
            &engine.table(written),
            bounds,
            partitions,
        ));
    }
    Ok(out)
}

/// What every partition of a run shares: Ctrl-C, the progress bar, and when
/// data last moved (the stall watchdog's clock).
struct Flow {
    cancel: CancellationToken,
    progress: indicatif::ProgressBar,
    started: Instant,
    /// Milliseconds after `started` that a batch last moved, in any partition.
    moved_at: AtomicU64,
    stall_timeout: Duration,
}

impl Flow {
    fn moved(&self, rows: usize) {
        self.moved_at
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.progress.inc(rows as u64);
    }

    /// Resolves once no data has moved in the run for `stall_timeout`: a
    /// connection that stopped answering fails its partition (transiently).
    /// The side named is the one this partition was waiting on (`waiting`).
    /// An attempt's clock starts when it does (`begun`), not at the last batch
    /// before it.
    async fn stalled(&self, waiting: &AtomicBool, begun: Duration) -> crate::error::Stalled {
        loop {
            let moved = Duration::from_millis(self.moved_at.load(Ordering::Relaxed)).max(begun);
            let idle = self.started.elapsed().saturating_sub(moved);
            if idle >= self.stall_timeout {
                let side = if waiting.load(Ordering::Relaxed) {
                    crate::engine::Side::Target
                } else {
                    crate::engine::Side::Source
                };
                return crate::error::Stalled {
                    side,
                    waited: self.stall_timeout,
                };
            }
            tokio::time::sleep((self.stall_timeout - idle).min(Duration::from_secs(1))).await;
        }
    }
}

/// A partition, with retries after transient failures, until it is written,
/// fails, or the run is interrupted (then it rolls back).
async fn run_partition(
    p: &Planned,
    readers: &StdMutex<Vec<Reader>>,
    flow: &Flow,
    spec: &WriteSpec,
    part: &Part,
    retries: u32,
) -> PartitionReport {
    let started = Instant::now();
    let report = |status, rows, bytes, retries| PartitionReport {
        index: part.index,
        range: part.describe.clone(),
        status,
        rows,
        bytes,
        elapsed: started.elapsed(),
        retries,
    };
    let mut attempt = 0;
    loop {
        if flow.cancel.is_cancelled() {
            let status = if attempt == 0 {
                Status::NotStarted
            } else {
                Status::RolledBack
            };
            return report(status, 0, 0, attempt);
        }
        // A retry after a COMMIT whose answer was lost: the checkpoint row
        // commits with the rows, so the table says whether they are there.
        if attempt > 0 {
            if let Some(rows) = recorded_rows(p, spec, part.index).await {
                info!(
                    partition = part.index,
                    rows, "partition written (its COMMIT went through)"
                );
                return report(Status::Written, rows, 0, attempt);
            }
        }
        // Whether the partition waits on its target (else on its source).
        let on_target = AtomicBool::new(false);
        let result = tokio::select! {
            r = copy_partition(p, readers, flow, spec, &part.select, &on_target) => r,
            stalled = flow.stalled(&on_target, flow.started.elapsed()) => Err(stalled.into()),
            () = flow.cancel.cancelled() => return report(Status::RolledBack, 0, 0, attempt),
        };
        match result {
            Ok((rows, bytes)) => {
                info!(partition = part.index, rows, "partition written");
                return report(Status::Written, rows, bytes, attempt);
            }
            Err(e) if attempt < retries && crate::engine::is_transient(&e) => {
                attempt += 1;
                warn!(partition = part.index, attempt, error = %crate::error::chain(&e), "partition failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return report(Status::Failed(crate::error::chain(&e)), 0, 0, attempt),
        }
    }
}

/// The rows a partition's checkpoint row records, if it is committed.
async fn recorded_rows(p: &Planned, spec: &WriteSpec, index: usize) -> Option<u64> {
    let cp = spec.checkpoint.as_ref()?;
    let recorded = p.target.recorded(&cp.name, &cp.fingerprint).await.ok()?;
    recorded
        .done
        .iter()
        .find(|d| d.0 == index)
        .map(|&(_, rows, _)| rows)
}

/// One attempt at a partition: a reader of the snapshot streams into the
/// target's writer through a bounded queue; the writer commits only once
/// the reader has sent its last row.
async fn copy_partition(
    p: &Planned,
    readers: &StdMutex<Vec<Reader>>,
    flow: &Flow,
    spec: &WriteSpec,
    select: &str,
    on_target: &AtomicBool,
) -> Result<(u64, u64)> {
    let mut lent = Lent::new(readers);
    let reader = lent
        .reader
        .as_mut()
        .expect("a reader is lent until dropped");
    let (tx, mut rx) = mpsc::channel(1);
    let (counted_tx, counted_rx) = mpsc::channel(1);
    let read = async {
        let result = reader.read(select, &p.kinds, &tx).await;
        drop(tx);
        result
    };
    // Between reader and writer: each batch that moves is progress.
    let count = async move {
        while let Some(batch) = rx.recv().await {
            flow.moved(batch.rows());
            on_target.store(true, Ordering::Relaxed);
            let sent = counted_tx.send(batch).await;
            on_target.store(false, Ordering::Relaxed);
            if sent.is_err() {
                break;
            }
        }
        // Every row is with the writer: what is left is the target's.
        on_target.store(true, Ordering::Relaxed);
    };
    let (read, (), written) = tokio::join!(read, count, p.target.write(spec, counted_rx));
    drop(lent);
    read?;
    written
}

/// A reader taken from the run's readers, given back however the partition
/// ends (an attempt dropped after a stall or Ctrl-C too).
struct Lent<'a> {
    reader: Option<Reader>,
    readers: &'a StdMutex<Vec<Reader>>,
}

impl<'a> Lent<'a> {
    fn new(readers: &'a StdMutex<Vec<Reader>>) -> Lent<'a> {
        let reader = readers.lock().expect("never poisoned").pop();
        assert!(reader.is_some(), "one reader per partition at once");
        Lent { reader, readers }
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            self.readers.lock().expect("never poisoned").push(r);
        }
    }
}

/// Counts (and checksums) each partition on both sides, in stride.
async fn compare(
    p: &Planned,
    source: &mut Reader,
    parts: &[Part],
    by: Verify,
    table: &QualifiedName,
) -> Result<Vec<Verified>> {
    let mut target = p.target.reader(table).await?;
    let mut out = Vec::new();
    for part in parts {
        let s = checksum(source, &part.select, &p.kinds).await?;
        let t = checksum(&mut target, &part.target_select, &p.kinds).await?;
        let text = |c: &Checksum| {
            if by == Verify::Checksum {
                c.text()
            } else {
                String::new()
            }
        };
        out.push(Verified {
            index: part.index,
            range: part.describe.clone(),
            source: (s.rows, text(&s)),
            target: (t.rows, text(&t)),
            by_key: None,
        });
    }
    Ok(out)
}

async fn checksum(reader: &mut Reader, select: &str, kinds: &[Kind]) -> Result<Checksum> {
    let (tx, mut rx) = mpsc::channel(4);
    let read = async {
        let result = reader.read(select, kinds, &tx).await;
        drop(tx);
        result
    };
    let sum = async {
        let mut sum = Checksum::default();
        while let Some(batch) = rx.recv().await {
            for r in 0..batch.rows() {
                sum.add(kinds, batch.row(r));
            }
        }
        sum
    };
    let (read, sum) = tokio::join!(read, sum);
    read?;
    Ok(sum)
}

/// `stride verify` of a job across engines: each partition of the last run
/// (its recorded bounds) compared by count and checksum.
pub(super) async fn verify(job: Job, by: Verify) -> Result<u8> {
    let mut planned = plan_job(&job, Step::Whole).await?;
    let recorded = match &job.checkpoint_table {
        Some(cp) => planned.target.recorded(cp, &planned.fingerprint).await?,
        None => Recorded::default(),
    };
    let mut readers = planned.source.snapshot(1).await?;
    let mut reader = readers.pop().expect("one reader");
    let bounds = bounds(
        &job,
        planned.key.as_ref(),
        recorded.run.and_then(|r| r.bounds),
        &mut reader,
    )
    .await?;
    let parts = partitions(&job, &planned, bounds, &job.target.table);
    let by = if by == Verify::None {
        Verify::Checksum
    } else {
        by
    };
    let results = compare(
        &planned,
        &mut reader,
        &compared(&job, &planned, &parts),
        by,
        &job.target.table,
    )
    .await?;
    print!("{}", report::render_verify(&results, by));
    Ok(if results.iter().all(|r| r.source == r.target) {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// `stride plan` of a job across engines: the partitions and each one's SQL.
pub(super) async fn plan(job: Job) -> Result<()> {
    let mut planned = plan_job(&job, Step::Whole).await?;
    let mut readers = planned.source.snapshot(1).await?;
    let bounds = bounds(&job, planned.key.as_ref(), None, &mut readers[0]).await?;
    let parts = partitions(&job, &planned, bounds, &job.target.table);
    let mut out = format!(
        "plan: {} {} -> {} {} ({} to {}, rows as text)\n",
        planned.source.place(),
        source_label(&job),
        planned.target.place(),
        job.target.table,
        planned.source.engine().name(),
        planned.target.engine().name()
    );
    if !planned.exists {
        out.push_str(&format!(
            "creates {}: {}\n",
            job.target.table,
            planned.target.create_sql(
                &planned.target.engine().table(&job.target.table),
                &planned.create,
                &planned.primary_key
            )
        ));
    }
    for (c, declared) in planned.columns.iter().zip(&planned.target_declared) {
        out.push_str(&format!(
            "  column {}: {} -> {declared}\n",
            c.name, c.declared
        ));
    }
    for part in &parts {
        out.push_str(&format!(
            "partition {} {}\n  {}\n",
            part.index, part.describe, part.select
        ));
    }
    print!("{out}");
    Ok(())
}
