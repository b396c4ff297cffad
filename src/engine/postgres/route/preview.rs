//! `stride plan` and `stride check` of one table on PostgreSQL's own route:
//! what a run would do, from the catalogues and the planner's estimates;
//! nothing is written.

use anyhow::{Context, Result};
use serde_json::json;
use sqlx::PgConnection;

use crate::checkpoint;
use crate::cli::Format;
use crate::engine::postgres::create;
use crate::engine::postgres::plan::{self, Cut, Key, Plan, Window};
use crate::engine::postgres::{self as pg, Side};
use crate::job::Job;
use crate::report;
use crate::run::source_name;

use super::prepare::{
    add_reread, fit_target, leave_out_computed, plan_partitions, planned_creation, refuse_unfit,
    resolve_source, same_server, scope,
};
use super::run::{next_window, refuse_what_the_target_holds};

/// One table's plan on PostgreSQL's own route: printed as text, or returned as JSON.
pub async fn plan(job: Job, format: Format) -> Result<Option<serde_json::Value>> {
    let server = pg::connect(Side::Source, &job.source.url, job.retries).await?;
    let source = server.pool(1);
    let mut side = resolve_source(&source, &job, &server.place).await?;
    // The target, if within reach, decides which columns it generates (left
    // out) and whether the run creates it. The partitions' SQL needs only the
    // source: a target out of reach is a warning.
    let target = pg::connect(Side::Target, &job.target.url, job.retries).await;
    if let Ok(target) = &target {
        leave_out_computed(&target.pool(1), &job, &mut side).await?;
    }
    let mut conn = source
        .acquire()
        .await
        .context("taking a source connection (none could be opened or freed within 60 s)")?;
    let window = match &side.mark {
        Some(mark) => Some(planned_window(&job, &mut conn, mark).await?),
        None => None,
    };
    let mut plan =
        plan_partitions(&mut conn, &scope(&job, &side, window.as_ref()), &side, None).await?;
    add_reread(&mut plan, &job, &side, window.as_ref());
    let reread = plan.reread_partition().map(|p| p.select.clone());
    let mark_line = window.zip(side.mark.as_ref()).map(|(w, mark)| {
        let shown = |v: Option<i64>| v.map(|v| mark.key_type.display(v));
        (
            format!(
                "incremental on {}: the mark is {}; the next run copies {}{}\n",
                mark.column,
                match (w.first, w.since) {
                    (true, _) => "not set yet".to_string(),
                    (false, since) => shown(since).unwrap_or_else(|| "(none)".to_string()),
                },
                w.describe(mark.key_type),
                w.describe_reread(side.lookback, mark.key_type).map_or_else(
                    String::new,
                    |range| format!(
                        ", and reads {range} again (partition {}, which {})",
                        plan.partitions.len() - 1,
                        match job.target.mode {
                            crate::job::Mode::Append => "replaces the target's rows in that range",
                            _ => "upserts them",
                        }
                    )
                )
            ),
            json!({
                "column": mark.column,
                "first_run": w.first,
                "mark": shown(w.since),
                "copies_up_to": shown(w.until),
                "window": w.describe(mark.key_type),
                "reread": w.reread(side.lookback, mark.key_type).map(|(from, to)| json!({
                    "from": mark.key_type.display(from),
                    "to": mark.key_type.display(to),
                    "sql": reread,
                })),
            }),
        )
    });
    let mut estimates = Vec::with_capacity(plan.partitions.len());
    for p in &plan.partitions {
        estimates.push(pg::estimate_rows(&mut conn, &p.select).await?);
    }
    let at_once = job.partitions_at_once(u32::try_from(plan.partitions.len()).unwrap_or(u32::MAX));
    // How a run would create the target (none when it exists and is kept).
    let creation = match target {
        Ok(target) => planned_creation(&target.pool(1), &job, &side).await?,
        Err(e) => {
            tracing::warn!(
                "not showing whether the run creates {}: {e:#}",
                job.target.table
            );
            None
        }
    };
    match format {
        Format::Text => print!(
            "source encryption: {}\n{}{}{}",
            server.encryption,
            mark_line.as_ref().map_or("", |(text, _)| text.as_str()),
            report::render_plan(&plan, &estimates, &source_name(&job), at_once),
            creation
                .as_ref()
                .map(|c| create::render(&job.target.table, c))
                .unwrap_or_default()
        ),
        Format::Json => {
            let key_type = plan.key.as_ref().map(|k| k.key_type);
            let show = |v: i64| key_type.map(|k| k.display(v));
            let doc = json!({
                "source": source_name(&job),
                "source_encryption": server.encryption,
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
                "creates_target": creation,
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

/// `stride check` of one table on PostgreSQL's own route.
pub async fn check(job: Job) -> Result<()> {
    let source = pg::connect(Side::Source, &job.source.url, job.retries).await?;
    let target = pg::connect(Side::Target, &job.target.url, job.retries).await?;
    let same_database = same_server(&job, &source, &target) && source.database == target.database;
    let mut side = resolve_source(&source.pool(1), &job, &source.place).await?;
    let fit = fit_target(
        &target.pool(1),
        &job,
        &mut side,
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
            &fit.fits,
            &fit.computed,
            &report::Encryption {
                source: source.encryption.clone(),
                target: target.encryption.clone(),
            },
        )
    );
    match (&fit.creation, job.target.indexes) {
        (Some(creation), _) => print!("{}", create::render(&job.target.table, creation)),
        (None, Some(indexes)) => println!(
            "note: target.indexes = \"{}\" is not applied: {} exists and mode \"{}\" keeps it (it applies to tables stride creates)",
            indexes.as_str(),
            job.target.table,
            job.target.mode.as_str()
        ),
        (None, None) => {}
    }
    // What a run would refuse before writing (a resume of this job's unfinished
    // run is not refused).
    let pool = target.pool(1);
    refuse_unfit(&job, &side, &fit, &pool).await?;
    let fingerprint = checkpoint::fingerprint(&job);
    refuse_what_the_target_holds(&pool, &job, &fingerprint, false).await?;
    println!("ok: the target can take every column; nothing was written");
    Ok(())
}
