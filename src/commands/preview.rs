//! `stride plan` and `stride check`: what a run would do, from the
//! catalogues and the planner's estimates; nothing is written.

use std::path::Path;

use anyhow::Result;

use crate::cli::Format;
use crate::engine::native;
use crate::error::{exit, JobError};
use crate::job::Job;

use super::load_tables;
use super::order::table_order;
use crate::run::in_entry;

pub(super) async fn plan_command(
    path: &Path,
    overrides: &[(String, String)],
    format: Format,
) -> Result<u8> {
    let (set, matched) = load_tables(path, overrides).await?;
    let many = set.jobs.len() > 1;
    let mut docs = Vec::new();
    if format == Format::Text && !matched.is_empty() {
        println!("{}\n", matched.join("\n"));
    }
    let order = if many {
        // The target's foreign keys decide the order; a target out of reach is a
        // warning here, as it is for the plan of one table.
        match table_order(&set.jobs).await {
            Ok(order) => {
                if format == Format::Text {
                    println!("{}", order.describe());
                }
                order.order
            }
            Err(e) if e.is::<JobError>() => return Err(e),
            Err(e) => {
                eprintln!(
                    "warning: the order of the tables is the file's: the target's foreign keys could not be read: {}",
                    crate::error::chain(&e)
                );
                (0..set.jobs.len()).collect()
            }
        }
    } else {
        vec![0]
    };
    let mut jobs: Vec<Option<Job>> = set.jobs.into_iter().map(Some).collect();
    for i in order {
        let job = jobs[i].take().expect("each table is planned once");
        if many && format == Format::Text {
            println!("== table {}\n", job.target.table);
        }
        if let Some(doc) = plan_job(job, format)
            .await
            .map_err(|e| in_entry(many, i, e))?
        {
            docs.push(doc);
        }
    }
    if format == Format::Json {
        let doc = if many {
            serde_json::Value::Array(docs)
        } else {
            docs.pop().expect("one job, one plan")
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON values always serialize")
        );
    }
    Ok(exit::OK)
}

/// One table's plan: printed as text, or returned as JSON.
async fn plan_job(job: Job, format: Format) -> Result<Option<serde_json::Value>> {
    if super::transfer::crosses(&job) {
        if format == Format::Json {
            return Err(JobError::new(
                "--format json: not supported between different engines yet (expected --format text)",
            )
            .into());
        }
        super::transfer::plan(job).await?;
        return Ok(None);
    }
    native::plan(job, format).await
}

pub(super) async fn check(path: &Path, overrides: &[(String, String)]) -> Result<u8> {
    let (set, _) = load_tables(path, overrides).await?;
    let many = set.jobs.len() > 1;
    let order = if many {
        let order = table_order(&set.jobs).await?;
        println!("{}", order.describe());
        order.order
    } else {
        vec![0]
    };
    let mut jobs: Vec<Option<Job>> = set.jobs.into_iter().map(Some).collect();
    for i in order {
        let job = jobs[i].take().expect("each table is checked once");
        if many {
            println!("== table {}", job.target.table);
        }
        check_job(job).await.map_err(|e| in_entry(many, i, e))?;
    }
    Ok(exit::OK)
}

async fn check_job(job: Job) -> Result<()> {
    if super::transfer::crosses(&job) {
        return super::transfer::plan(job).await;
    }
    native::check(job).await
}
