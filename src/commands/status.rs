//! `stride status`: where a run stands (partitions done, in flight and by whom,
//! left, rows and an ETA), read from the target's checkpoint table. Reads only
//! the target; writes nothing.

use std::path::Path;

use anyhow::Result;

use crate::cli::Format;
use crate::engine::native;
use crate::error::{exit, JobError};
use crate::report::{NextCommands, RunStatus};

use super::load_tables;
use crate::run::{command_line, in_entry};

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
        let status = native::status(&job, next).await;
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
