//! `stride verify` and `verify --repair`: compare each partition of the
//! source and target, and copy the ones that differ again.

use std::sync::Arc;

use anyhow::{Context, Result};
use sqlx::{PgConnection, PgPool};

use crate::checkpoint;
use crate::cli::{VerifyArgs, VerifyBy};
use crate::copy::Status;
use crate::error::{exit, JobError};
use crate::job::{Job, Verify};
use crate::pg;
use crate::plan::{self, PlannedPartition};
use crate::report::{self, Verified};

use super::prepare::{
    add_reread, copy_spec, effective_verify, plan_partitions, prepare, scope, unverifiable,
    window_condition, Prepared,
};
use super::run::lock_target;
use super::{copy_partitions, in_entry, load_jobs};

/// `stride verify`: compares every partition in a new snapshot of the source,
/// with the partitions of the job's recorded run when there is one; `--repair`
/// copies the differing partitions again and compares them once more.
pub(super) async fn verify(
    args: &VerifyArgs,
    overrides: &[(String, String)],
    quiet: bool,
) -> Result<u8> {
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
        ..
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
    let lock = match args.repair {
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
    add_reread(&mut plan, &job, &side, window.as_ref());
    let compared = plan.compared();
    let results = verify_partitions(&mut coordinator, &target, &compared, by).await?;
    // `-q`: errors only, and a difference is one.
    if !quiet || !results.iter().all(Verified::matches) {
        print!("{}", report::render_verify(&results, by));
    }
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
            "error: {} partitions differ; `{}` copies them again",
            differing.len(),
            super::repair_command(&args.job, by)
        );
        return Ok(exit::FAILED);
    }
    if !plan.partitions_comparable() {
        return Err(JobError::new(
            "--repair: the ctid strategy's block ranges cannot be found on the target, so no partition can be copied again alone (expected strategy \"stride\" or \"quantile\", or `stride run --restart`)",
        )
        .into());
    }
    let Some((_lock_session, lock)) = &lock else {
        unreachable!("--repair takes the run's lock before it compares");
    };
    let mut spec = copy_spec(
        &job,
        &plan,
        &fit,
        &source,
        &target,
        snapshot,
        &job.target.table,
        lock,
    );
    spec.repair = Some(job.target.table.clone());
    spec.progress = report::progress_bar(0, quiet);
    let spec = Arc::new(spec);
    let (repaired, interrupted) = copy_partitions(&spec, differing.clone(), parallelism).await;
    for r in &repaired {
        match &r.status {
            Status::Written if quiet => {}
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
    if !quiet || !again.iter().all(Verified::matches) {
        print!("{}", report::render_verify(&again, by));
    }
    pg::execute(&mut coordinator, "ROLLBACK").await.ok();
    Ok(if again.iter().all(Verified::matches) {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// Both sides of each partition, counted (and checksummed): the source in the
/// snapshot `source` holds, the target as committed.
pub(super) async fn verify_partitions(
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
