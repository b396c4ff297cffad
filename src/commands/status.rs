//! `stride status`: where a run stands (partitions done, in flight and by whom,
//! left, rows and an ETA), read from the target's checkpoint table. Reads only
//! the target; writes nothing.

use std::path::Path;

use anyhow::{Context, Result};

use crate::checkpoint;
use crate::cli::Format;
use crate::engine::postgres::{self as pg, Side};
use crate::error::{exit, JobError};
use crate::job::Job;
use crate::report::{NextCommands, RecordedStatus, RunStatus};

use super::{command_line, in_entry, load_tables};

pub(super) async fn status(
    path: &Path,
    overrides: &[(String, String)],
    format: Format,
) -> Result<u8> {
    let (set, _) = load_tables(path, overrides).await?;
    let many = set.jobs.len() > 1;
    let mut all = Vec::new();
    for (i, job) in set.jobs.into_iter().enumerate() {
        if super::transfer::crosses(&job) {
            return Err(in_entry(
                many,
                i,
                JobError::new(
                    "stride status: not supported between different engines yet (expected `stride verify` to compare the target with the source)",
                )
                .into(),
            ));
        }
        let next = NextCommands {
            prepare: command_line(&["prepare"], path),
            run: command_line(&["run"], path),
            workers: command_line(&["run", "--shard", "auto"], path),
            finish: command_line(&["finish"], path),
        };
        let status = status_of(&job, next).await;
        all.push(status.map_err(|e| in_entry(many, i, e))?);
    }
    match format {
        Format::Text => all.iter().for_each(|s| print!("{}", s.render())),
        Format::Json if many => println!(
            "{:#}",
            serde_json::json!({ "tables": all.iter().map(RunStatus::json).collect::<Vec<_>>() })
        ),
        Format::Json => println!("{:#}", all[0].json()),
    }
    Ok(exit::OK)
}

async fn status_of(job: &Job, next: NextCommands) -> Result<RunStatus> {
    let Some(cp) = &job.checkpoint_table else {
        return Err(JobError::new(
            "run.checkpoint: false, so no run is recorded to report on (expected checkpoint = true)",
        )
        .into());
    };
    let fingerprint = checkpoint::fingerprint(job);
    let server = pg::connect(Side::Target, &job.target.url, job.retries).await?;
    let mut conn = server
        .pool(1)
        .acquire()
        .await
        .context("taking a target connection")?;
    let run = match pg::recorded_run(&mut conn, cp, &fingerprint).await? {
        None => None,
        Some(run) => Some(RecordedStatus {
            partitions: usize::try_from(run.partitions).unwrap_or(0),
            finished: run.finished,
            started_at: run.recorded_at.clone(),
            age: pg::run_age(&mut conn, cp, &fingerprint).await?,
            done: run.done.iter().map(|d| (d.0, d.1)).collect(),
            claims: pg::claims(&mut conn, &fingerprint).await?,
            estimates: run.estimates,
        }),
    };
    Ok(RunStatus {
        table: job.target.table.to_string(),
        fingerprint,
        run,
        next,
    })
}
