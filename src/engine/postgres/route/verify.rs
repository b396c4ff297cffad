//! `stride verify` and `verify --repair` on PostgreSQL's own route: compare
//! each partition of the source and target, and copy the ones that differ
//! again. Where the target may also hold other writers' rows (upsert mode,
//! append mode with a key), partitions are compared and repaired by key, and
//! rows the source does not have are kept unless `--delete-extra` says they go.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use sqlx::{PgConnection, PgPool};

use crate::checkpoint;
use crate::cli::{VerifyArgs, VerifyBy};
use crate::engine::postgres as pg;
use crate::engine::postgres::copy::{copy_partitions, KeyRepair, Repair, Repaired};
use crate::engine::postgres::plan::{self, PlannedPartition};
use crate::error::{exit, JobError};
use crate::job::{Job, Mode, Verify};
use crate::report::Status;
use crate::report::{self, Verified};

use super::prepare::{
    add_reread, copy_spec, effective_verify, plan_partitions, prepare, scope, unverifiable,
    window_condition, Prepared, TargetFit,
};

/// Verifies (and with `--repair` repairs) one table of the job.
pub async fn verify(job: Job, args: &VerifyArgs, quiet: bool) -> Result<u8> {
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
        true => Some(pg::lock_target(&target, &job.target.table, false).await?),
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
    let key = shared_target_key(&job, &fit, &plan.columns, &target).await?;
    let compared = plan.compared();
    let mut results = verify_partitions(&mut coordinator, &target, &compared, by).await?;
    if let Some(key) = &key {
        compare_by_key(&mut coordinator, &target, &compared, &mut results, key, by).await?;
    }
    // `-q`: errors only, and a difference is one.
    if !quiet || !results.iter().all(Verified::matches) {
        print!("{}", report::render_verify(&results, by));
    }
    if let (Some(key), false) = (&key, quiet) {
        print!(
            "{}",
            render_extra(
                &results,
                key,
                &crate::run::delete_extra_command(&args.job, by)
            )
        );
    }
    let differing: Vec<PlannedPartition> = compared
        .iter()
        .filter(|p| results.iter().any(|r| r.index == p.index && !r.matches()))
        .cloned()
        .collect();
    if !args.repair {
        if differing.is_empty() {
            return Ok(exit::OK);
        }
        eprintln!(
            "error: {} partitions differ; `{}` copies them again",
            differing.len(),
            crate::run::repair_command(&args.job, by)
        );
        return Ok(exit::FAILED);
    }
    // By key, `--delete-extra` also repairs the partitions whose only
    // difference is rows the source does not have.
    let repaired_too = |p: &PlannedPartition| {
        results
            .iter()
            .any(|r| r.index == p.index && (!r.matches() || (args.delete_extra && r.extra() > 0)))
    };
    let to_repair: Vec<PlannedPartition> = compared
        .iter()
        .filter(|p| repaired_too(p))
        .cloned()
        .collect();
    if to_repair.is_empty() {
        return Ok(exit::OK);
    }
    if !plan.partitions_comparable() {
        return Err(JobError::new(
            "--repair: the ctid strategy's block ranges cannot be found on the target, so no partition can be copied again alone (expected strategy \"stride\" or \"quantile\", or `stride run --restart`)",
        )
        .into());
    }
    if key.is_none() && job.target.mode == Mode::Append && !args.delete_extra {
        return Err(refuse_range_repair(&job, args, by, &results, &to_repair).into());
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
    spec.repair = Some(match &key {
        None => Repair::Range(job.target.table.clone()),
        Some(key) => {
            // The partition's rows go into the staging table, not the target.
            let stage = plan::stage_table();
            let typed: Vec<(String, String)> = plan
                .columns
                .iter()
                .cloned()
                .zip(fit.types.iter().cloned())
                .collect();
            spec.copy_in = plan::copy_in_sql(&stage, &plan.columns, spec.format);
            spec.insert = plan::insert_sql(&stage, &typed);
            spec.upsert = None;
            Repair::Key(KeyRepair {
                table: job.target.table.clone(),
                key: key.clone(),
                create_stage: plan::create_stage_sql(&stage, &job.target.table, &plan.columns),
                null_keys: plan::null_keys_sql(&stage, key),
                merge: plan::repair_merge_sql(&job.target.table, &stage, &plan.columns, key),
                delete_extra: args.delete_extra,
                done: Mutex::default(),
            })
        }
    });
    spec.progress = report::progress_bar(0, quiet);
    let spec = Arc::new(spec);
    let (repaired, interrupted) = copy_partitions(&spec, to_repair.clone(), parallelism).await;
    let by_key: Vec<(usize, Repaired)> = match &spec.repair {
        Some(Repair::Key(repair)) => repair
            .done
            .lock()
            .expect("no thread panics holding the repair outcomes")
            .clone(),
        _ => Vec::new(),
    };
    for r in &repaired {
        match &r.status {
            Status::Written if quiet => {}
            Status::Written => match (by_key.iter().find(|d| d.0 == r.index), &key) {
                (Some((_, done)), Some(key)) => println!(
                    "repaired partition {} ({}) by key ({}): {} rows written (missing or different) of {} read from the source{}",
                    r.index,
                    r.range,
                    key.join(", "),
                    report::group(done.written),
                    report::group(r.rows),
                    match args.delete_extra {
                        true => format!(
                            ", {} target rows the source does not have deleted",
                            report::group(done.deleted)
                        ),
                        false => String::new(),
                    }
                ),
                _ => println!(
                    "repaired partition {} ({}): {} rows copied again",
                    r.index,
                    r.range,
                    report::group(r.rows)
                ),
            },
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
    let mut again = verify_partitions(&mut coordinator, &target, &to_repair, by).await?;
    if let Some(key) = &key {
        compare_by_key(&mut coordinator, &target, &to_repair, &mut again, key, by).await?;
    }
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

/// The key an append job's rows are told apart by in the target: its primary
/// key, else its first unique index, whose columns are all copied.
/// Where the target may also hold other writers' rows (upsert and append
/// modes), the key rows are told apart by: an upsert's, or an append target's
/// primary key or unique index on copied columns. `None`: compare by range.
pub(crate) async fn shared_target_key(
    job: &Job,
    fit: &TargetFit,
    columns: &[String],
    target: &PgPool,
) -> Result<Option<Vec<String>>> {
    Ok(match job.target.mode {
        Mode::Upsert => fit.upsert_key.clone(),
        Mode::Append => {
            let mut conn = target
                .acquire()
                .await
                .context("taking a target connection")?;
            append_key(
                &pg::unique_keys(&mut conn, &job.target.table).await?,
                columns,
            )
        }
        _ => None,
    })
}

fn append_key(keys: &pg::UniqueKeys, columns: &[String]) -> Option<Vec<String>> {
    keys.primary_key
        .iter()
        .chain(&keys.unique)
        .find(|k| k.iter().all(|c| columns.contains(c)))
        .cloned()
}

/// An append target without a key: a repair could only empty each range, and
/// the rows there may be another writer's. What it would delete, and the ways on.
fn refuse_range_repair(
    job: &Job,
    args: &VerifyArgs,
    by: Verify,
    results: &[Verified],
    to_repair: &[PlannedPartition],
) -> JobError {
    let ranges = to_repair
        .iter()
        .filter_map(|p| results.iter().find(|r| r.index == p.index))
        .map(|r| {
            format!(
                "partition {} ({}): {} rows",
                r.index,
                r.range,
                report::group(u64::try_from(r.target.0).unwrap_or(0))
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    JobError::new(format!(
        "--repair: target.mode is \"append\" and {} has no primary key or unique index on copied columns, so this job's rows cannot be told from other rows there; a repair would empty each differing partition's range and copy it again, deleting every row the target holds in it: {ranges}. Nothing was changed. To do that anyway: `{}`; to copy the whole table again instead: `{}` (it empties the table first)",
        job.target.table,
        crate::run::delete_extra_command(&args.job, by),
        crate::run::command_line(&["--set", "target.mode=truncate", "run"], &args.job),
    ))
}

/// The partitions whose target range holds rows with keys the source does not
/// have, and what can be done about them; empty when there are none.
fn render_extra(results: &[Verified], key: &[String], delete_extra: &str) -> String {
    let key = key.join(", ");
    let mut out = String::new();
    let mut total = 0;
    for r in results.iter().filter(|r| r.extra() > 0) {
        let diff = r
            .by_key
            .as_ref()
            .expect("only rows compared by key are extra");
        total += diff.extra;
        out.push_str(&format!(
            "partition {} ({}): {} target rows with a key ({key}) the source does not have, e.g. ({key}) = {}\n",
            r.index,
            r.range,
            report::group(diff.extra),
            diff.example.as_deref().unwrap_or("?"),
        ));
    }
    if total > 0 {
        out.push_str(&format!(
            "these {} rows are kept: they may be another writer's (another job, the application); if they are this job's leftovers, `{delete_extra}` deletes them\n",
            report::group(total)
        ));
    }
    out
}

/// For each result whose counts or checksums differ, the partition's rows
/// compared by `key` (see [`key_diff`]).
pub(crate) async fn compare_by_key(
    source: &mut PgConnection,
    target: &PgPool,
    partitions: &[PlannedPartition],
    results: &mut [Verified],
    key: &[String],
    by: Verify,
) -> Result<()> {
    let mut target_conn = target
        .acquire()
        .await
        .context("taking a target connection")?;
    for r in results.iter_mut().filter(|r| r.source != r.target) {
        let p = partitions
            .iter()
            .find(|p| p.index == r.index)
            .expect("every result is of a compared partition");
        let diff = pg::key_diff(
            source,
            &mut target_conn,
            &plan::key_rows_sql(&p.select, key, by),
            &plan::key_rows_sql(&p.target_select, key, by),
        )
        .await
        .with_context(|| format!("comparing partition {} by key", p.index))?;
        r.by_key = Some(diff);
    }
    Ok(())
}

/// Both sides of each partition, counted (and checksummed): the source in the
/// snapshot `source` holds, the target as committed.
pub(crate) async fn verify_partitions(
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
            by_key: None,
        });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::append_key;
    use crate::engine::postgres::UniqueKeys;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_append_target_is_keyed_by_its_primary_key_else_a_unique_index_of_copied_columns() {
        let copied = names(&["id", "region", "v"]);
        let keys = |pk: Option<&[&str]>, unique: &[&[&str]]| UniqueKeys {
            primary_key: pk.map(names),
            unique: unique.iter().map(|k| names(k)).collect(),
        };
        // (primary key, unique indexes) -> key
        let cases: [(UniqueKeys, Option<Vec<String>>); 5] = [
            (
                keys(Some(&["id"]), &[&["id"], &["v"]]),
                Some(names(&["id"])),
            ),
            (
                keys(
                    Some(&["id", "other"]),
                    &[&["id", "other"], &["region", "v"]],
                ),
                Some(names(&["region", "v"])),
            ),
            (keys(None, &[&["v"]]), Some(names(&["v"]))),
            (keys(None, &[&["other"]]), None),
            (keys(None, &[]), None),
        ];
        for (keys, expected) in cases {
            assert_eq!(append_key(&keys, &copied), expected, "{keys:?}");
        }
    }
}
