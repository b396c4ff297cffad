//! The steps of `run`, `prepare`, `finish` and `run --shard` on PostgreSQL's
//! own route, in order: the checks before writing, starting or resuming the
//! run, copying the partitions, the coverage check, restoring indexes, verify
//! and closing the run (sequences, the replace swap, the checkpoint row).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checkpoint::{self, RecordedRun};
use crate::cli::Shard;
use crate::engine::postgres::copy::{copy_partitions, Checkpoint, Claims, CopySpec};
use crate::engine::postgres::create;
use crate::engine::postgres::plan::{self, Cut, Key, Plan, PlannedPartition, Window};
use crate::engine::postgres::replace;
use crate::engine::postgres::{self as pg, RunLock};
use crate::error::{exit, Interrupted, JobError};
use crate::job::{Job, Mode, Strategy, Verify};
use crate::report::{self, Summary};
use crate::report::{PartitionReport, Status};
use crate::run::start::{how_to_start, RunOptions, Step};
use crate::run::{ending, reports, resume_command, source_name, RunEnd};
use crate::sql::QualifiedName;

use super::prepare::{
    add_reread, copy_spec, effective_verify, plan_partitions, read_select, scope, window_condition,
    Prepared, SourceSide, TargetFit,
};
use super::verify::{compare_by_key, shared_target_key, verify_partitions};

/// What an earlier run of the job left in the checkpoint table (created by the
/// steps that start runs; the others only read it), the table the partitions
/// are written into (a replace's staging table, else the target) and its OID.
async fn earlier_run(
    job: &Job,
    target: &PgPool,
    fingerprint: &str,
    opts: &RunOptions,
) -> Result<(QualifiedName, Option<RecordedRun>, Option<i64>)> {
    let step = opts.step;
    let table = &job.target.table;
    if matches!(step, Step::Whole | Step::Prepare) {
        // Again under the lock: a run may have ended (or a view been created)
        // since the checks before writing.
        refuse_what_the_target_holds(target, job, fingerprint, opts.restart).await?;
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
        earlier = pg::recorded_run(&mut conn, cp, fingerprint).await?;
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
    Ok((into, earlier, target_oid))
}

/// The run's partitions: an incremental run's window (the one recorded for
/// it, or, when new, the one after the last finished run, up to the largest
/// value in this snapshot), the plan within it, checked against an unfinished
/// run's record.
#[allow(clippy::too_many_arguments)]
async fn plan_run(
    job: &Job,
    side: &SourceSide,
    coordinator: &mut PgConnection,
    earlier: Option<&RecordedRun>,
    target_oid: Option<i64>,
    fresh: bool,
    into: &QualifiedName,
    opts: &RunOptions,
) -> Result<(Plan, Option<Window>)> {
    let step = opts.step;
    let table = &job.target.table;
    let window = match (&side.mark, fresh) {
        (None, _) => None,
        (Some(_), false) => earlier.and_then(|r| r.window),
        (Some(mark), true) => {
            let after = earlier.filter(|r| !opts.full_refresh && r.target_oid == target_oid);
            Some(next_window(coordinator, job, mark, after).await?)
        }
    };
    let scoped = scope(job, side, window.as_ref());
    let recorded = earlier.filter(|_| !fresh);
    let mut plan = plan_partitions(coordinator, &scoped, side, recorded).await?;
    if let Some(condition) = window_condition(side, window.as_ref()) {
        plan.restrict_target(&condition, table);
    }
    if job.target.mode == Mode::Replace {
        plan.retarget(into);
    }
    add_reread(&mut plan, job, side, window.as_ref());
    if let Some(run) = recorded {
        // An unfinished run recorded by a stride that read nothing again: it is
        // resumed as it was planned, and the next run reads the mark again.
        if plan.reread.is_some()
            && usize::try_from(run.partitions).ok() == Some(plan.partitions.len() - 1)
        {
            plan.partitions.pop();
            plan.reread = None;
        }
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
            "incremental on {}: {}{}",
            mark.column,
            w.describe(mark.key_type),
            w.describe_reread(side.lookback, mark.key_type)
                .filter(|_| plan.reread.is_some())
                .map_or_else(String::new, |range| format!(", and reads {range} again"))
        );
    }
    Ok((plan, window))
}

/// `stride run`, `stride prepare` and `stride finish`: one run's steps.
pub async fn run(prepared: Prepared, path: &Path, opts: &RunOptions) -> Result<RunEnd> {
    let say = |text: &str| opts.say(text);
    let started = Instant::now();
    let step = opts.step;
    let Prepared {
        job,
        source,
        target,
        side,
        fit,
        parallelism,
        encryption,
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
    let (_lock_session, lock) =
        pg::lock_target(&target, table, matches!(step, Step::Shard(_))).await?;

    let fingerprint = checkpoint::fingerprint(&job);
    let (into, earlier, target_oid) = earlier_run(&job, &target, &fingerprint, opts).await?;
    let Some((fresh, forget)) = how_to_start(&job, earlier.as_ref(), target_oid, opts, path, &say)?
    else {
        return Ok(RunEnd {
            code: exit::OK,
            summary: None,
            fingerprint,
            table: table.to_string(),
        });
    };

    let (plan, window) = plan_run(
        &job,
        &side,
        &mut coordinator,
        earlier.as_ref(),
        target_oid,
        fresh,
        &into,
        opts,
    )
    .await?;
    let recorded = earlier.as_ref().filter(|_| !fresh);

    // What to build after the load when no checkpoint table records it.
    let mut unrecorded_builds = Vec::new();
    if fresh {
        // A prepared run records each partition's estimate for `stride status`.
        let mut estimates = Vec::new();
        if step == Step::Prepare {
            for p in &plan.partitions {
                estimates.push(pg::estimate_rows(&mut coordinator, &p.select).await?);
            }
        }
        let builds = start_run(
            &job,
            &target,
            &fit,
            &side,
            &plan,
            window.as_ref(),
            opts,
            earlier.as_ref().filter(|_| forget),
            &into,
            &lock,
            &estimates,
        )
        .await?;
        if job.checkpoint_table.is_none() {
            unrecorded_builds = builds;
        }
    }
    let done: Vec<(usize, u64, u64)> = recorded.map(|r| r.done.clone()).unwrap_or_default();
    match step {
        Step::Prepare => {
            say(&format!(
                "prepared: {} partitions into {}{}; copy them with `stride run --shard auto {}` on any number of machines (or `--shard I/N` on N), then `stride finish {}`\n",
                plan.partitions.len(),
                if job.target.mode == Mode::Replace {
                    format!("{into} (swapped in for {table} by `stride finish`)")
                } else {
                    table.to_string()
                },
                match (&window, &side.mark) {
                    (Some(w), Some(mark)) => format!(
                        " ({} of {}{})",
                        w.describe(mark.key_type),
                        mark.column,
                        w.describe_reread(side.lookback, mark.key_type)
                .filter(|_| plan.reread.is_some())
                            .map_or_else(String::new, |range| format!("; {range} read again"))
                    ),
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
                &lock,
                &say,
                path,
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
        Step::Shard(Shard::Of { index, count }) => p.index % count as usize == index as usize,
        _ => true,
    };
    let (skipped, mut to_run): (Vec<_>, Vec<_>) = plan
        .partitions
        .iter()
        .filter(|p| mine(p))
        .cloned()
        .partition(|p| done.iter().any(|d| d.0 == p.index));
    let estimate = match step {
        Step::Shard(shard) => {
            let mut estimates = Vec::with_capacity(to_run.len());
            for p in &to_run {
                estimates.push(pg::estimate_rows(&mut coordinator, &p.select).await?);
            }
            if shard == Shard::Auto {
                // Largest first, so the last partitions to finish are short ones.
                let mut by_size: Vec<_> = estimates.iter().copied().zip(to_run).collect();
                by_size.sort_by_key(|(rows, p)| (std::cmp::Reverse(*rows), p.index));
                to_run = by_size.into_iter().map(|(_, p)| p).collect();
            }
            estimates.iter().sum()
        }
        _ => {
            pg::estimate_rows(
                &mut coordinator,
                &read_select(&job, &plan, &side, window.as_ref()),
            )
            .await?
        }
    };
    let mut spec = copy_spec(&job, &plan, &fit, &source, &target, snapshot, &into, &lock);
    spec.progress = report::progress_bar(u64::try_from(estimate).unwrap_or(0), opts.quiet);
    spec.checkpoint = job.checkpoint_table.clone().map(|table| Checkpoint {
        table,
        fingerprint: fingerprint.clone(),
        target_table: into.clone(),
    });
    if spec.checkpoint.is_some() {
        spec.claims = Some(Claims {
            worker: matches!(step, Step::Shard(_)).then(worker_name),
        });
    }
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
    let whole_select = read_select(&job, &plan, &side, window.as_ref());
    let split = plan.partitions.iter().any(|p| p.select != whole_select);
    let coverage = if step == Step::Whole && done.is_empty() && split {
        Coverage::Counting(tokio::spawn(async move {
            let count = pg::count_rows(&mut coordinator, &whole_select).await;
            (coordinator, count)
        }))
    } else {
        Coverage::NotCounted(coordinator)
    };
    let (mut ran, mut interrupted) = copy_partitions(&spec, to_run.clone(), parallelism).await;
    if step == Step::Shard(Shard::Auto) && interrupted.is_none() {
        interrupted = take_over(&spec, &mut ran, &to_run, parallelism).await?;
    }
    // A run that failed or was interrupted abandons the count with its connection
    // (the server ends the transaction when the socket closes).
    let all_written = ran.iter().all(|r| r.status == Status::Written);
    // From here on Ctrl-C or SIGTERM stops the checks and the closing steps where
    // they are (each is one transaction, or idempotent): the partitions are
    // committed and recorded, and a resumed run does the rest.
    let stop = CancellationToken::new();
    let listener = tokio::spawn({
        let stop = stop.clone();
        async move {
            crate::run::shutdown_signal().await;
            warn!("interrupted after the copy: stopping the checks and closing steps");
            stop.cancel();
        }
    });
    let _listener = AbortOnDrop(listener);
    let (mut coordinator, counted) = match coverage {
        Coverage::Counting(mut task) if all_written => {
            tokio::select! {
                joined = &mut task => {
                    let (coordinator, count) = joined.context("the coverage count task")?;
                    (Some(coordinator), Some(count))
                }
                () = stop.cancelled() => {
                    task.abort();
                    (None, None)
                }
            }
        }
        Coverage::Counting(task) => {
            task.abort();
            (None, None)
        }
        Coverage::NotCounted(coordinator) => (Some(coordinator), None),
    };

    let (partitions, elsewhere) = reports(step, &skipped, ran, &done);
    let summary = Summary {
        source: source_name(&job),
        target: table.to_string(),
        method,
        shard: match step {
            Step::Shard(s) => Some(s.to_string()),
            _ => None,
        },
        partitions,
        elsewhere,
        elapsed: started.elapsed(),
        interrupted: interrupted.is_some(),
        encryption: encryption.clone(),
    };
    // The summary first: whatever fails below, it says what was committed.
    opts.say_summary(&summary.render(), summary.succeeded());
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
                commit_under_lock(
                    &target,
                    &lock,
                    &checkpoint::fail_check_sql(cp, &fingerprint, &problem),
                )
                .await
                .with_context(|| format!("recording the failed check in {cp}"))?;
            }
            problems.push(problem);
        }
    }
    if step == Step::Whole && summary.succeeded() && problems.is_empty() && !stop.is_cancelled() {
        let closing = async {
            restore_indexes(
                &job,
                &fingerprint,
                &target,
                &into,
                &lock,
                &unrecorded_builds,
            )
            .await?;
            if let Some(conn) = coordinator.as_mut() {
                if let Some(problem) =
                    verify_run(&job, &plan, &fit, conn, &target, &say, path).await?
                {
                    problems.push(problem);
                }
            }
            if problems.is_empty() {
                close_run(&job, &fingerprint, &target, &into, &lock).await?;
            }
            anyhow::Ok(())
        };
        tokio::select! {
            biased;
            () = stop.cancelled() => {}
            closed = closing => closed?,
        }
    }
    if stop.is_cancelled() && interrupted.is_none() {
        // The coordinator is dropped, not rolled back: it may be in the middle of
        // a statement, and the server ends its transaction with the connection.
        for problem in &problems {
            eprintln!("error: {problem}");
        }
        eprintln!(
            "interrupted after the copy: every partition is committed and recorded; the checks and closing steps did not run"
        );
        if job.checkpoint_table.is_some() {
            eprintln!("resume with: {}", resume_command());
        }
        return Ok(RunEnd {
            code: exit::INTERRUPTED,
            summary: Some(summary),
            fingerprint,
            table: table.to_string(),
        });
    }
    if let Some(conn) = coordinator.as_mut() {
        // The snapshot is no longer needed once every partition has ended. Bounded:
        // the source may have stopped answering (a frozen network), and nothing
        // depends on this.
        let rollback = pg::execute(conn, "ROLLBACK");
        tokio::time::timeout(std::time::Duration::from_secs(2), rollback)
            .await
            .ok();
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
    Ok(ending(
        &job,
        summary,
        interrupted.is_some(),
        fingerprint,
        path,
    ))
}

/// Aborts a task when dropped: a listener that must not outlive its run.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The coordinator's connection during the copy: counting the source, or idle.
enum Coverage {
    Counting(tokio::task::JoinHandle<(PoolConnection<Postgres>, Result<i64>)>),
    NotCounted(PoolConnection<Postgres>),
}

/// What a step refuses before it writes anything: checked for every table of a
/// job file before any table is written (and by each run again).
pub async fn check_before_writing(job: &Job, target: &PgPool, opts: &RunOptions) -> Result<()> {
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
        refuse_what_the_target_holds(target, job, &fingerprint, opts.restart).await?;
    }
    Ok(())
}

/// The window of a new incremental run: after the recorded run `after` (if it
/// is to be followed), up to the mark column's largest value in the coordinator's
/// snapshot.
pub async fn next_window(
    coordinator: &mut PgConnection,
    job: &Job,
    mark: &Key,
    after: Option<&RecordedRun>,
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
    earlier: Option<&RecordedRun>,
    into: &QualifiedName,
    lock: &RunLock,
    estimates: &[i64],
) -> Result<Vec<String>> {
    let forget = earlier.is_some();
    let table = &job.target.table;
    let mode = job.target.mode;
    let fingerprint = checkpoint::fingerprint(job);
    let empties = mode == Mode::Truncate || (opts.full_refresh && mode == Mode::Append);
    let mut statements = Vec::new();
    // A missing target is created in the transaction that records the run, so
    // the run row that says which key and indexes to build after the load
    // exists exactly when the table does.
    let creation = fit.creation.as_ref();
    if let (None, Some(indexes)) = (creation, job.target.indexes) {
        warn!(
            "target.indexes = \"{}\" is not applied: {table} exists and mode \"{}\" keeps it (it applies to tables stride creates)",
            indexes.as_str(),
            mode.as_str()
        );
    }
    if let (Some(creation), false) = (creation, matches!(mode, Mode::Replace | Mode::Overwrite)) {
        statements.push(creation.create.clone());
    }
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
            statements.push(match creation {
                Some(creation) => creation.create.clone(),
                None => plan::create_table_sql(into, &side.columns, None),
            });
        }
        Mode::Overwrite => {
            statements.push(format!("DROP TABLE IF EXISTS {table}"));
            statements.push(match creation {
                Some(creation) => creation.create.clone(),
                None => plan::create_table_sql(table, &side.columns, None),
            });
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
    // A created table's key and indexes, built as deferred indexes are, once the
    // rows are in. What an earlier run left to build belonged to a table that is
    // gone (or dropped here), not to this new one.
    if let Some(creation) = creation {
        deferred = creation.builds.clone();
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
                estimates,
            },
        ));
    }
    commit_under_lock(target, lock, &statements.join(";\n"))
        .await
        .with_context(|| format!("starting the run on target table {table}"))?;
    if creation.is_some() && !matches!(mode, Mode::Replace | Mode::Overwrite) {
        info!("created target table {table}");
    }
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
    Ok(deferred)
}

/// `--shard auto`: a worker that copied partitions stays until every partition
/// it found in another worker's hands is committed, waiting on each claim in
/// turn (no polling), and copies any whose worker died (its claim freed, the
/// partition not recorded). A worker that found nothing to copy leaves at once:
/// the workers still copying cover each other.
async fn take_over(
    spec: &Arc<CopySpec>,
    ran: &mut [PartitionReport],
    partitions: &[PlannedPartition],
    parallelism: usize,
) -> Result<Option<Interrupted>> {
    let cp = spec.checkpoint.as_ref().expect("shards have checkpoints");
    loop {
        let copied = ran.iter().any(|r| r.status == Status::Written);
        let all_well = ran
            .iter()
            .all(|r| matches!(r.status, Status::Written | Status::Elsewhere));
        let theirs: Vec<usize> = ran
            .iter()
            .filter(|r| r.status == Status::Elsewhere)
            .map(|r| r.index)
            .collect();
        if !copied || !all_well || theirs.is_empty() {
            return Ok(None);
        }
        let signals = tokio::spawn(crate::run::cancel_on_signals(spec.cancel.clone()));
        let mut free = Vec::new();
        for index in theirs {
            let waited = tokio::select! {
                waited = wait_for_claim(&spec.target, cp, index) => waited,
                () = spec.cancel.cancelled() => {
                    signals.abort();
                    return Ok(Some(Interrupted));
                }
            };
            if !waited? {
                info!(
                    partition = index,
                    "its worker left it uncommitted: taking it over"
                );
                free.push(index);
            }
        }
        signals.abort();
        if free.is_empty() {
            return Ok(None);
        }
        let again: Vec<PlannedPartition> = partitions
            .iter()
            .filter(|p| free.contains(&p.index))
            .cloned()
            .collect();
        let (reports, interrupted) = copy_partitions(spec, again, parallelism).await;
        for report in reports {
            if let Some(r) = ran.iter_mut().find(|r| r.index == report.index) {
                *r = report;
            }
        }
        if interrupted.is_some() {
            return Ok(interrupted);
        }
    }
}

/// Waits until no one holds the claim on partition `index`; returns whether the
/// partition is committed by then.
async fn wait_for_claim(target: &PgPool, cp: &Checkpoint, index: usize) -> Result<bool> {
    let mut conn = target
        .acquire()
        .await
        .context("taking a target connection")?;
    let waiting = async {
        pg::execute(&mut conn, "BEGIN").await?;
        pg::execute(
            &mut conn,
            &checkpoint::wait_claim_sql(&cp.fingerprint, index),
        )
        .await?;
        let done = pg::scalar_bool(
            &mut conn,
            &checkpoint::recorded_sql(&cp.table, &cp.fingerprint, index),
        )
        .await?;
        pg::execute(&mut conn, "ROLLBACK").await?;
        anyhow::Ok(done)
    };
    waiting
        .await
        .with_context(|| format!("waiting for another worker's partition {index}"))
}

/// What names a `--shard auto` worker in `pg_stat_activity` while it holds a
/// claim: `stride HOST:PID`.
fn worker_name() -> String {
    let host = rustix::system::uname();
    format!(
        "stride {}:{}",
        host.nodename().to_string_lossy(),
        std::process::id()
    )
}

/// Builds what the run left for after the load, as its run row records it (or,
/// without a checkpoint table, `unrecorded`): the secondary indexes it dropped
/// (`target.defer_indexes`) and a created table's primary key and indexes, on
/// `into` (a replace's staging table, before the swap). The primary key first
/// (skipped if `into` has one: a build that committed before an interruption),
/// then the indexes, as many at once as the run copies partitions (the target
/// pool holds one connection more, for the lock). Each index statement is
/// `CREATE INDEX IF NOT EXISTS`, so a build that was interrupted goes on where
/// it stopped.
async fn restore_indexes(
    job: &Job,
    fingerprint: &str,
    target: &PgPool,
    into: &QualifiedName,
    lock: &RunLock,
    unrecorded: &[String],
) -> Result<()> {
    let parallelism = target.options().get_max_connections().saturating_sub(1) as usize;
    let deferred = match &job.checkpoint_table {
        Some(cp) => {
            let mut conn = target
                .acquire()
                .await
                .context("taking a target connection")?;
            pg::deferred_indexes(&mut conn, cp, fingerprint).await?
        }
        None => unrecorded.to_vec(),
    };
    if deferred.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let (keys, indexes): (Vec<&String>, Vec<&String>) = deferred
        .iter()
        .partition(|s| create::is_primary_key_build(s));
    let left = "the rows are in; the run stays unfinished until it is built: fix the cause, then run the same command again (or `stride finish`)";
    for key in keys {
        let mut conn = target
            .acquire()
            .await
            .context("taking a target connection")?;
        if pg::has_primary_key(&mut conn, into).await? {
            continue;
        }
        drop(conn);
        info!("building the primary key of {into}");
        commit_under_lock(target, lock, key)
            .await
            .with_context(|| format!("building the primary key of {into} ({left}): {key}"))?;
    }
    let builds = futures_util::stream::iter(indexes.iter().map(|definition| async move {
        commit_under_lock(target, lock, definition)
            .await
            .with_context(|| format!("building an index of {into} ({left}): {definition}"))
    }));
    let results: Vec<Result<()>> = futures_util::StreamExt::collect(
        futures_util::StreamExt::buffer_unordered(builds, parallelism.max(1)),
    )
    .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    info!(
        "built {} deferred indexes of {} in {}",
        deferred.len(),
        into,
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
    path: &Path,
) -> Result<Option<String>> {
    if job.verify == Verify::None {
        return Ok(None);
    }
    let by = effective_verify(job.verify, fit);
    let compared = plan.compared();
    let mut results = verify_partitions(source, target, &compared, by).await?;
    // A target shared with other writers: their rows in a range are no difference.
    if let Some(key) = shared_target_key(job, fit, &plan.columns, target).await? {
        compare_by_key(source, target, &compared, &mut results, &key, by).await?;
    }
    say(&report::render_verify(&results, by));
    let bad = results.iter().filter(|r| !r.matches()).count();
    Ok((bad > 0).then(|| {
        format!(
            "verify: {bad} partitions differ between source and target; `{}` copies them again",
            crate::run::repair_command(path, by)
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
    lock: &RunLock,
) -> Result<()> {
    if job.target.mode == Mode::Replace {
        return swap(job, fingerprint, target, into, lock).await;
    }
    let table = &job.target.table;
    let mut tx = target
        .begin()
        .await
        .context("taking a target connection to close the run")?;
    pg::check_run_lock(&mut tx, lock).await?;
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
        .with_context(|| format!("committing the end of the run into {table}"))?;
    Ok(())
}

/// `mode = "replace"`: in one transaction, the target locked, the staging table
/// given what LIKE could not copy and renamed to the target's name, the old table
/// dropped, sequences set, the run recorded as finished (see `replace`). Views or
/// foreign keys that depend on the target fail it, and nothing changes.
async fn swap(
    job: &Job,
    fingerprint: &str,
    target: &PgPool,
    stage: &QualifiedName,
    lock: &RunLock,
) -> Result<()> {
    let table = &job.target.table;
    let mut tx = target
        .begin()
        .await
        .context("taking a target connection for the swap")?;
    pg::check_run_lock(&mut tx, lock).await?;
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
    lock: &RunLock,
    say: &impl Fn(&str),
    path: &Path,
) -> Result<u8> {
    let missing: Vec<String> = plan
        .partitions
        .iter()
        .filter(|p| !done.iter().any(|d| d.0 == p.index))
        .map(|p| p.index.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(anyhow::anyhow!(
            "{} of {} partitions are not copied yet (partitions {}): run the shards that own them (partition P belongs to shard P mod N), or `{}`, then finish again",
            missing.len(),
            plan.partitions.len(),
            missing.join(", "),
            crate::run::command_line(&["run", "--shard", "auto"], path)
        ));
    }
    restore_indexes(job, fingerprint, target, into, lock, &[]).await?;
    if let Some(problem) = verify_run(job, plan, fit, &mut coordinator, target, say, path).await? {
        eprintln!("error: {problem}");
        return Ok(exit::FAILED);
    }
    pg::execute(&mut coordinator, "ROLLBACK").await.ok();
    close_run(job, fingerprint, target, into, lock).await?;
    let rows: u64 = done.iter().map(|d| d.1).sum();
    say(&format!(
        "finished: {} partitions, {} rows in {}\n",
        plan.partitions.len(),
        report::group(rows),
        job.target.table
    ));
    Ok(exit::OK)
}

/// What the target table holds that a new run must not write over, refused
/// before anything is written (the checkpoint table included):
/// - `mode = "error-if-exists"`: rows;
/// - `mode = "replace"` and `"overwrite"`: views and foreign keys on it. Both
///   modes drop the table (replace when it swaps the new one in, overwrite when a
///   new run starts), and PostgreSQL binds views and foreign keys to the table
///   itself, not its name: they would block the drop (or, with a rename, keep
///   reading the old table).
///
/// A resume (an unfinished earlier run of this job into this very table, and no
/// `--restart`) continues into what it wrote itself, so error-if-exists and
/// overwrite do not refuse it; replace swaps at the end whatever the run, so it
/// refuses a resume too.
pub async fn refuse_what_the_target_holds(
    target: &PgPool,
    job: &Job,
    fingerprint: &str,
    restart: bool,
) -> Result<()> {
    let mode = job.target.mode;
    if !matches!(mode, Mode::ErrorIfExists | Mode::Replace | Mode::Overwrite) {
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
    if mode != Mode::Replace && resumes(&mut conn, job, fingerprint, restart, oid).await? {
        return Ok(());
    }
    if mode == Mode::ErrorIfExists {
        if pg::has_rows(&mut conn, table).await? {
            return Err(JobError::new(format!(
                "target.mode: is \"error-if-exists\" and target table {table} already holds rows (expected an empty or missing table, or mode = \"append\", \"truncate\" or \"upsert\"); nothing was written"
            ))
            .into());
        }
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

/// Runs `sql` (statements separated by `;`) in one target transaction that
/// commits only while the run still holds its lock. The statements and the
/// COMMIT go in one message, one round trip.
async fn commit_under_lock(target: &PgPool, lock: &RunLock, sql: &str) -> Result<()> {
    let mut conn = target
        .acquire()
        .await
        .context("taking a target connection")?;
    let result = async {
        pg::execute(&mut conn, "BEGIN").await?;
        pg::check_run_lock(&mut conn, lock).await?;
        pg::execute(&mut conn, &format!("{sql};\nCOMMIT")).await?;
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        // The transaction may still be open, or aborted: the connection is
        // closed (the server rolls back), never handed back to the pool.
        let _ = conn.close().await;
    }
    result
}
