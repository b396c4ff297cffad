//! A run across the engine seam: a job whose source or target is not
//! PostgreSQL (PostgreSQL to PostgreSQL keeps its own route, `run.rs`). The
//! same steps and promises: everything is checked before the first write (exit
//! 2), the readers share one moment of the source, each partition is one target
//! transaction with its checkpoint row, a re-run resumes, and `verify`
//! compares counts and a checksum both sides compute the same way.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Mutex};
use tracing::{info, warn};

use super::run::{RunOptions, Step};
use super::RunEnd;
use crate::copy::{backoff, PartitionReport, Status};
use crate::engine::{
    finish_run_sql, forget_other_runs_sql, forget_run_sql, record_run_sql, CheckpointSpec,
    Checksum, Column, Engine, Kind, Reader, Recorded, Source, Target, WriteSpec,
};
use crate::error::{exit, JobError};
use crate::job::{Job, Mode, Relation, Strategy, Verify};
use crate::partition::{stride_ranges, KeyRange};
use crate::plan::{parse_bounds, Key};
use crate::report::{self, Summary, Verified};
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
    if job.target.mode == Mode::Replace && to == Engine::Postgres {
        out.push(format!(
            "target.mode: \"replace\" is not supported {pair} yet (expected truncate, overwrite, append, upsert or error-if-exists)"
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
    let mut problems = Vec::new();
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
            let declared = columns
                .iter()
                .map(|c| target.declared_for(source.engine(), c))
                .collect();
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
            Some(key)
        }
    };
    Ok(Planned {
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
    let names: Vec<String> = p.columns.iter().map(|c| c.name.clone()).collect();
    ranges
        .into_iter()
        .enumerate()
        .map(|(index, range)| {
            let key = p.key.as_ref().map(|k| (k.column.as_str(), k.key_type));
            let target_pred = key
                .and_then(|(c, t)| target_engine.predicate(&crate::sql::quote_ident(c), t, &range));
            Part {
                index,
                describe: p
                    .key
                    .as_ref()
                    .map_or_else(|| "all rows".to_string(), |k| range.describe(k.key_type)),
                select: p.source.select(job, &p.columns, key, &range),
                target_select: crate::engine::sqlite::dialect::target_select(
                    &table,
                    &names,
                    target_pred,
                ),
            }
        })
        .collect()
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
pub(super) async fn run(job: Job, opts: &RunOptions) -> Result<RunEnd> {
    let started = Instant::now();
    let mut planned = plan_job(&job, opts.step).await?;
    let table = job.target.table.clone();
    let written = if job.target.mode == Mode::Replace {
        crate::engine::sqlite::dialect::stage_name(&table)
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
    let resuming = !opts.restart && recorded.run.is_some_and(|r| !r.finished);
    let parallel = job.partitions_at_once(job.partition.as_ref().map_or(1, |p| p.count)) as usize;
    let mut readers = planned.source.snapshot(parallel).await?;
    let run_bounds = recorded.run.filter(|_| resuming).and_then(|r| r.bounds);
    let bounds = bounds(&job, planned.key.as_ref(), run_bounds, &mut readers[0]).await?;
    let parts = partitions(&job, &planned, bounds, &written);
    let done: Vec<(usize, u64, u64)> = if resuming {
        recorded.done.clone()
    } else {
        Vec::new()
    };
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
        planned.target.transaction(&statements).await?;
    } else {
        info!(partitions_done = done.len(), "resuming the unfinished run");
    }
    let planned = Arc::new(planned);
    let readers = Arc::new(Mutex::new(readers));
    let base = WriteSpec {
        table: engine.table(&written),
        columns: planned.columns.iter().map(|c| c.name.clone()).collect(),
        source_kinds: planned.kinds.clone(),
        target_declared: planned.target_declared.clone(),
        upsert: planned
            .upsert_key
            .clone()
            .map(|key| crate::engine::sqlite::dialect::Upsert {
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
    let written_now: Vec<PartitionReport> = futures_util::stream::iter(todo.into_iter().map(|part| {
        let mut spec = base.clone();
        spec.checkpoint = checkpoints.as_ref().map(|cp| CheckpointSpec {
            table: cp.clone(),
            fingerprint: fp.clone(),
            index: part.index,
            range: part.describe.clone(),
        });
        let planned = Arc::clone(&planned);
        let readers = Arc::clone(&readers);
        let retries = job.retries;
        async move {
            let started = Instant::now();
            let mut attempt = 0;
            loop {
                let result = copy_partition(&planned, &readers, &spec, &part.select).await;
                match result {
                    Ok((rows, bytes)) => {
                        info!(partition = part.index, rows, "partition written");
                        break PartitionReport {
                            index: part.index,
                            range: part.describe.clone(),
                            status: Status::Written,
                            rows,
                            bytes,
                            elapsed: started.elapsed(),
                            retries: attempt,
                        };
                    }
                    Err(e) if attempt < retries && crate::error::is_transient(&e) => {
                        attempt += 1;
                        warn!(partition = part.index, attempt, error = %crate::error::chain(&e), "partition failed; retrying");
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    Err(e) => {
                        break PartitionReport {
                            index: part.index,
                            range: part.describe.clone(),
                            status: Status::Failed(crate::error::chain(&e)),
                            rows: 0,
                            bytes: 0,
                            elapsed: started.elapsed(),
                            retries: attempt,
                        };
                    }
                }
            }
        }
    }))
    .buffer_unordered(parallel.max(1))
    .collect()
    .await;
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
        interrupted: false,
        encryption: report::Encryption {
            source: planned.source.encryption(),
            target: planned.target.encryption(),
        },
    };
    let mut code = if summary.succeeded() {
        exit::OK
    } else {
        exit::FAILED
    };
    let mut verified = String::new();
    if code == exit::OK && job.verify != Verify::None {
        let mut reader = readers.lock().await.pop().expect("the readers are back");
        let results = compare(&planned, &mut reader, &parts, job.verify).await?;
        verified = report::render_verify(&results, job.verify);
        if results.iter().any(|r| r.source != r.target) {
            code = exit::FAILED;
        }
    }
    if code == exit::OK {
        let mut statements = Vec::new();
        if job.target.mode == Mode::Replace {
            statements.extend(planned.target.swap_sql(&written, &table));
        }
        if let Some(cp) = &checkpoints {
            statements.push(finish_run_sql(cp, &fp));
        }
        planned.target.transaction(&statements).await?;
    }
    summary.elapsed = started.elapsed();
    if !opts.quiet {
        let text = format!("{}{verified}", summary.render());
        if opts.human_to_stderr {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
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
        out.push(forget_run_sql(cp, &p.fingerprint));
        if emptied {
            out.push(forget_other_runs_sql(
                cp,
                &p.fingerprint,
                &engine.table(written),
            ));
        }
        out.push(record_run_sql(
            cp,
            &p.fingerprint,
            &engine.table(written),
            bounds,
            partitions,
        ));
    }
    Ok(out)
}

/// One attempt at a partition: a reader of the snapshot streams into the
/// target's writer through a bounded queue; the writer commits only once
/// the reader has sent its last row.
async fn copy_partition(
    p: &Planned,
    readers: &Mutex<Vec<Reader>>,
    spec: &WriteSpec,
    select: &str,
) -> Result<(u64, u64)> {
    let mut reader = readers
        .lock()
        .await
        .pop()
        .expect("one reader per partition at once");
    let (tx, mut rx) = mpsc::channel(4);
    let read = async {
        let result = reader.read(select, &p.kinds, &tx).await;
        drop(tx);
        result
    };
    let (read, written) = tokio::join!(read, p.target.write(spec, &mut rx));
    readers.lock().await.push(reader);
    read?;
    written
}

/// Counts (and checksums) each partition on both sides, in stride.
async fn compare(
    p: &Planned,
    source: &mut Reader,
    parts: &[Part],
    by: Verify,
) -> Result<Vec<Verified>> {
    let mut target = p.target.reader().await?;
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
    let results = compare(&planned, &mut reader, &parts, by).await?;
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
