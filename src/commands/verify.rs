//! `stride verify` and `verify --repair`: compare each partition of the
//! source and target, and copy the ones that differ again. Where the target
//! may also hold other writers' rows (upsert mode, append mode with a key),
//! partitions are compared and repaired by key, and rows the source does not
//! have are kept unless `--delete-extra` says they go.

use anyhow::Result;

use crate::cli::{VerifyArgs, VerifyBy};
use crate::engine::native;
use crate::error::{exit, JobError};
use crate::job::{Job, Verify};
use crate::run::in_entry;

use super::load_tables;

/// `stride verify`: compares every partition in a new snapshot of the source,
/// with the partitions of the job's recorded run when there is one; `--repair`
/// copies the differing partitions again and compares them once more.
pub(super) async fn verify(
    args: &VerifyArgs,
    overrides: &[(String, String)],
    quiet: bool,
) -> Result<u8> {
    let (set, _) = load_tables(&args.job, overrides).await?;
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
    if super::transfer::crosses(&job) {
        if args.repair {
            return Err(JobError::new(
                "--repair: not supported between different engines yet (expected `stride run --restart` to copy again)",
            )
            .into());
        }
        let by = match args.by {
            Some(VerifyBy::Count) => Verify::Count,
            _ => Verify::Checksum,
        };
        return super::transfer::verify(job, by).await;
    }
    native::verify(job, args, quiet).await
}
