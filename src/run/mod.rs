//! What every route of a run shares: which step a process does and how it
//! starts (`start`), how a table's run ends, and the commands printed for
//! people to run next. Names no engine.

use std::path::Path;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::cli::Shard;
use crate::error::{exit, JobError};
use crate::job::{Job, Relation};
use crate::plan::PlannedPartition;
use crate::report::{PartitionReport, Status, Summary};
use start::{Resumable, Step};

pub mod start;

/// How a run ended, for `--summary-json` and `--metrics-file`.
pub struct RunEnd {
    pub code: u8,
    /// `None` when there was nothing to do.
    pub summary: Option<Summary>,
    pub fingerprint: String,
    /// The target table.
    pub table: String,
}

/// An error of a job file's `[[tables]]` entry `i`, named as such (a job error
/// stays one: exit 2).
pub fn in_entry(many: bool, i: usize, e: anyhow::Error) -> anyhow::Error {
    if !many {
        return e;
    }
    match e.downcast::<JobError>() {
        Ok(job) => JobError::new(format!("tables[{i}]: {job}")).into(),
        Err(e) => e.context(format!("tables[{i}]")),
    }
}

/// What the source is, for messages: the table's name, or "query".
pub fn source_name(job: &Job) -> String {
    match &job.source.relation {
        Relation::Table(name) => name.to_string(),
        Relation::Query(_) => "(query)".to_string(),
    }
}

/// The command line that resumes this run: the same one, without `--restart`.
pub fn resume_command() -> String {
    shell_words(std::env::args().filter(|a| a != "--restart"))
}

/// The command that copies again the partitions a verify found different, to be
/// run as printed: this program, the `--set` overrides it was given (they are
/// part of the job), the comparison that found them, and the job file.
pub fn repair_command(job: &Path, by: crate::job::Verify) -> String {
    let by = match by {
        crate::job::Verify::Count => "count",
        _ => "checksum",
    };
    command_line(&["verify", "--repair", "--by", by], job)
}

/// `repair_command` with `--delete-extra`: the repair that also deletes the
/// target's rows the source does not have.
pub fn delete_extra_command(job: &Path, by: crate::job::Verify) -> String {
    let by = match by {
        crate::job::Verify::Count => "count",
        _ => "checksum",
    };
    command_line(&["verify", "--repair", "--delete-extra", "--by", by], job)
}

/// A command for the user to run next, as this one was invoked: the program
/// and its `--set` options, then `words` and the job file, shell-quoted.
pub fn command_line(words: &[&str], job: &Path) -> String {
    let mut args = std::env::args();
    let mut line: Vec<String> = args.next().into_iter().collect();
    while let Some(arg) = args.next() {
        if arg == "--set" {
            line.push(arg);
            line.extend(args.next());
        } else if arg.starts_with("--set=") {
            line.push(arg);
        }
    }
    line.extend(words.iter().map(|w| (*w).to_string()));
    line.push(job.display().to_string());
    shell_words(line.into_iter())
}

/// Words joined into a command line a POSIX shell reads back as the same words.
pub fn shell_words(words: impl Iterator<Item = String>) -> String {
    words
        .map(|a| crate::cli::shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first Ctrl-C or SIGTERM cancels the run (partitions in flight roll back,
/// the summary is printed); a second one exits at once.
pub async fn cancel_on_signals(cancel: CancellationToken) {
    shutdown_signal().await;
    warn!(
        "interrupted: rolling back the partitions in flight (press Ctrl-C again to exit at once)"
    );
    cancel.cancel();
    shutdown_signal().await;
    eprintln!("interrupted twice: exiting now; the server rolls back what was not committed");
    std::process::exit(i32::from(exit::INTERRUPTED));
}

/// Resolves when Ctrl-C or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// The summary's partitions, in order: those skipped (committed by an earlier
/// run) and those this run copied; and how many are other workers' (a worker
/// of `--shard auto` reports its own partitions, the others' are a count).
pub fn reports(
    step: Step,
    skipped: &[PlannedPartition],
    ran: Vec<PartitionReport>,
    done: &[(usize, u64, u64)],
) -> (Vec<PartitionReport>, usize) {
    let (skipped, ran, elsewhere) = if step == Step::Shard(Shard::Auto) {
        let (theirs, mine): (Vec<_>, Vec<_>) =
            ran.into_iter().partition(|r| r.status == Status::Elsewhere);
        let elsewhere = skipped.len() + theirs.len();
        (&[][..], mine, elsewhere)
    } else {
        (skipped, ran, 0)
    };
    let mut partitions: Vec<PartitionReport> = skipped
        .iter()
        .map(|p| {
            let (_, rows, bytes) = done
                .iter()
                .find(|d| d.0 == p.index)
                .copied()
                .unwrap_or_default();
            PartitionReport {
                index: p.index,
                range: p.describe.clone(),
                status: Status::Skipped,
                rows,
                bytes,
                elapsed: std::time::Duration::ZERO,
                retries: 0,
            }
        })
        .chain(ran)
        .collect();
    partitions.sort_by_key(|p| p.index);
    (partitions, elsewhere)
}

/// How a run whose checks passed ends: interrupted (130), a failed partition
/// (1), or done (0); each but the last says what to run next, as it will work.
pub fn ending(
    job: &Job,
    summary: Summary,
    interrupted: bool,
    fingerprint: String,
    path: &Path,
) -> RunEnd {
    let table = &job.target.table;
    // What to run next, as it will work: a ctid run in append or error-if-exists
    // mode that committed partitions cannot be resumed (its blocks belong to this
    // snapshot), so the same command would be refused.
    let committed = summary.committed().len();
    let resume = job.checkpoint_table.as_ref().map(|_| {
        if Resumable::of(job) == Resumable::No && committed > 0 {
            let path = crate::run::shell_words(std::iter::once(path.display().to_string()));
            format!(
                "this ctid run cannot be resumed from a new snapshot (its {committed} committed partitions are block ranges of this one): delete its rows from {table} and run `stride run --restart --append-again {path}`, or copy with `stride --set target.mode=truncate run {path}`"
            )
        } else {
            format!("resume with: {}", resume_command())
        }
    });
    if interrupted {
        eprintln!(
            "interrupted: the partitions in flight were rolled back; the summary lists those committed"
        );
        if let Some(resume) = &resume {
            eprintln!("{resume}");
        }
        return RunEnd {
            code: exit::INTERRUPTED,
            summary: Some(summary),
            fingerprint,
            table: table.to_string(),
        };
    }
    if let Some(failed) = summary
        .partitions
        .iter()
        .find(|p| matches!(p.status, Status::Failed(_)))
    {
        if let Status::Failed(error) = &failed.status {
            eprintln!("error: {error}");
        }
        if let Some(resume) = &resume {
            eprintln!("{resume}");
        }
        return RunEnd {
            code: exit::FAILED,
            summary: Some(summary),
            fingerprint,
            table: table.to_string(),
        };
    }
    RunEnd {
        code: exit::OK,
        summary: Some(summary),
        fingerprint,
        table: table.to_string(),
    }
}
