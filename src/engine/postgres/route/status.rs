//! `stride status` of one table on PostgreSQL's own route: where its run
//! stands, read from the target's checkpoint table. Writes nothing.

use anyhow::{Context, Result};

use crate::checkpoint;
use crate::engine::postgres::{self as pg, Side};
use crate::error::JobError;
use crate::job::Job;
use crate::report::{NextCommands, RecordedStatus, RunStatus};

/// Where the job's run stands, from the target's checkpoint table.
pub async fn status(job: &Job, next: NextCommands) -> Result<RunStatus> {
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
