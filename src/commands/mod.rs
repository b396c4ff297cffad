//! The order of the steps of each command. Everything before the first write
//! (parsing, introspection, planning, the type check, the connection budget) comes
//! first, so a bad job exits 2 with the target untouched.

mod order;
mod preview;
mod run;
mod status;
mod transfer;
mod verify;

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::cli::{Cli, Command, Shard};
use crate::error::{exit, JobError};
use crate::job::JobSet;
use crate::report;

use crate::run::start::{RunOptions, Step};
use crate::run::RunEnd;
use preview::{check, plan_command};
use run::run_tables;
use status::status;
use verify::verify;

/// Runs the command; returns the exit code for outcomes that are not errors of
/// their own (a copy that failed after writing some partitions prints its summary
/// and returns 1).
pub async fn execute(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Run(args) => {
            let shard = Shard::resolve(args.shard, |name| std::env::var(name).ok())
                .map_err(JobError::new)?;
            if shard.is_some() && (args.restart || args.full_refresh) {
                return Err(JobError::new(
                    "--shard: a shard cannot start the run over (expected `stride prepare --restart` or `--full-refresh` instead)",
                )
                .into());
            }
            let opts = RunOptions {
                step: shard.map_or(Step::Whole, Step::Shard),
                restart: args.restart,
                append_again: args.append_again,
                full_refresh: args.full_refresh,
                quiet: cli.quiet,
                human_to_stderr: args.summary_json.as_deref() == Some(Path::new("-")),
            };
            let started = Instant::now();
            let ends = run_tables(&args.job, &cli.overrides, &opts).await;
            report_run(&args, &ends, started.elapsed())?;
            ends.map(|ends| ends.worst())
        }
        Command::Prepare(args) => {
            let opts = RunOptions {
                step: Step::Prepare,
                restart: args.restart,
                append_again: args.append_again,
                full_refresh: args.full_refresh,
                quiet: cli.quiet,
                human_to_stderr: false,
            };
            run_tables(&args.job, &cli.overrides, &opts)
                .await
                .map(|ends| ends.worst())
        }
        Command::Finish(args) => {
            let opts = RunOptions {
                step: Step::Finish,
                restart: false,
                append_again: false,
                full_refresh: false,
                quiet: cli.quiet,
                human_to_stderr: false,
            };
            run_tables(&args.job, &cli.overrides, &opts)
                .await
                .map(|ends| ends.worst())
        }
        Command::Plan(args) => plan_command(&args.job, &cli.overrides, args.format).await,
        Command::Check(args) => check(&args.job, &cli.overrides).await,
        Command::Verify(args) => verify(&args, &cli.overrides, cli.quiet).await,
        Command::Status(args) => status(&args.job, &cli.overrides, args.format).await,
        Command::Init(args) => init_command(&args).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "stride", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("writing the man page")?;
            Ok(exit::OK)
        }
    }
}

/// How the runs of a job's tables ended.
struct Ends {
    runs: Vec<RunEnd>,
    /// Tables not started: in order, those after a table that failed.
    not_started: Vec<String>,
}

impl Ends {
    /// The exit code of several tables' runs: the most serious (130
    /// interrupted, then 2, then 1, then 0).
    fn worst(&self) -> u8 {
        self.runs.iter().map(|e| e.code).max().unwrap_or(exit::OK)
    }
}

/// Writes `--summary-json` and `--metrics-file` for a run that ended, however it
/// ended (an error before the copy gives a summary with the error and no
/// partitions). A job file of several tables gives one document of the totals
/// with each table's own under `tables`.
fn report_run(
    args: &crate::cli::RunArgs,
    ends: &Result<Ends>,
    elapsed: std::time::Duration,
) -> Result<()> {
    let doc = match ends {
        Ok(Ends { runs, not_started }) if runs.len() == 1 && not_started.is_empty() => {
            let end = &runs[0];
            report::summary_json(end.summary.as_ref(), &end.fingerprint, end.code, None)
        }
        Ok(ends @ Ends { runs, not_started }) => report::tables_json(
            &runs
                .iter()
                .map(|e| {
                    let mut doc =
                        report::summary_json(e.summary.as_ref(), &e.fingerprint, e.code, None);
                    doc["table"] = json!(e.table);
                    doc
                })
                .collect::<Vec<_>>(),
            not_started,
            ends.worst(),
            elapsed,
        ),
        Err(e) => report::summary_json(
            None,
            "",
            crate::error::exit_code(e),
            Some(&crate::error::chain(e)),
        ),
    };
    if let Some(path) = &args.summary_json {
        let text = serde_json::to_string_pretty(&doc).expect("JSON values always serialize");
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            write_atomically(path, &text)
                .with_context(|| format!("writing --summary-json {}", path.display()))?;
        }
    }
    if let Some(path) = &args.metrics_file {
        let previous = std::fs::read_to_string(path).unwrap_or_default();
        let text = report::metrics_text(&doc, &args.job.display().to_string(), &previous);
        write_atomically(path, &text)
            .with_context(|| format!("writing --metrics-file {}", path.display()))?;
    }
    Ok(())
}

/// Writes a file whole or not at all: a temporary file beside it, renamed over it.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The job file's jobs: one, or one per `[[tables]]` entry.
fn load_jobs(path: &Path, overrides: &[(String, String)]) -> Result<JobSet> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| JobError::new(format!("{}: cannot read the job file: {e}", path.display())))?;
    let set = JobSet::parse(&text, |name| std::env::var(name).ok(), overrides)
        .map_err(|e| JobError::new(format!("{}: {e}", path.display())))?;
    Ok(set)
}

/// The job file's jobs with its pattern entries expanded from the source's
/// catalogue; and what each pattern matched, for `plan`.
async fn load_tables(path: &Path, overrides: &[(String, String)]) -> Result<(JobSet, Vec<String>)> {
    let mut set = load_jobs(path, overrides)?;
    let matched = order::expand_patterns(&mut set).await?;
    Ok((set, matched))
}

/// `stride init`: introspects the source table and writes a job file for it.
async fn init_command(args: &crate::cli::InitArgs) -> Result<u8> {
    let source_url = crate::job::parse_url("--source", args.source.clone())?;
    let target_url = args
        .target
        .clone()
        .map(|t| crate::job::parse_url("--target", t))
        .transpose()?;
    let table = crate::sql::QualifiedName::parse(&args.table)
        .map_err(|e| JobError::new(format!("--table: {e}")))?;
    if let (Some(path), false) = (&args.output, args.force) {
        if path.exists() {
            return Err(JobError::new(format!(
                "--output: {} exists (expected a new file, or --force to replace it)",
                path.display()
            ))
            .into());
        }
    }
    let (facts, place) = crate::engine::init_facts(&source_url, &table).await?;
    let Some(facts) = facts else {
        return Err(JobError::new(format!(
            "--table: table {table} does not exist in the source database at {place} (expected an existing table or view)"
        ))
        .into());
    };
    let choice = crate::init::choose(&facts);
    let text = crate::init::render(
        &facts,
        &choice,
        &source_url.without_secrets(),
        target_url
            .as_ref()
            .map(crate::job::DbUrl::without_secrets)
            .as_deref(),
    );
    match &args.output {
        Some(path) => {
            write_atomically(path, &text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {}: check it, then `stride plan {}`",
                path.display(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(exit::OK)
}
