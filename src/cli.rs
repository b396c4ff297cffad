//! The command line: clap definitions and nothing else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
A job file says what to copy and how:

  [source]
  url = \"${SOURCE_URL}\"          # ${VAR} and ${VAR:-default} come from the environment
  table = \"public.covid_cases\"   # or: query = \"SELECT ...\"
  [partition]
  column = \"date\"                # integer, date, timestamp or timestamptz
  lower_bound = \"2021-02-20\"     # bounds set the stride, they never filter rows
  upper_bound = \"2021-02-28\"
  count = 4
  [target]
  url = \"${TARGET_URL}\"

Typical use:
  stride check job.toml     does the target fit the source? writes nothing
  stride plan job.toml      the exact SQL of each partition, writes nothing
  stride run job.toml       the copy; run it again after a failure and it resumes
  stride verify job.toml    compare source and target partition by partition

Exit codes:
  0    done
  1    the copy failed (the summary says which partitions were committed; run
       the same command to resume), or verify found partitions that differ
  2    the job file or the command line is wrong (found before anything was written)
  130  interrupted (Ctrl-C or SIGTERM)

Logging: -v / -q, or RUST_LOG (e.g. RUST_LOG=stride=debug). Passwords are never printed.";

/// Copy a PostgreSQL table (or a query's rows) into another database, in parallel.
///
/// stride splits the source into partitions by a column, with Spark's JDBC semantics,
/// reads every partition from one shared snapshot, and writes each partition in its
/// own target transaction with binary COPY (or batched INSERTs).
#[derive(Debug, Parser)]
#[command(name = "stride", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less output: errors only, no progress bar.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Log lines as text, or as one JSON object per line (level, message,
    /// partition, rows, elapsed) for log collectors.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Override a job field, as SECTION.KEY=VALUE (repeatable): the value is read as
    /// TOML (a number, a date, true, [..]) and otherwise as a string, e.g.
    /// --set partition.lower_bound=2021-03-01 --set run.parallelism=8
    #[arg(long = "set", value_name = "KEY=VALUE", global = true, value_parser = parse_override)]
    pub overrides: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_override(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if key.contains('.') && !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!(
            "\"{text}\" is not SECTION.KEY=VALUE (e.g. partition.count=8)"
        )),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy the source into the target, then print a summary.
    ///
    /// Validates the job, introspects both sides, plans the partitions and checks
    /// that the target can take every column before anything is written.
    Run(RunArgs),
    /// Print each partition's exact source SQL and estimated rows; writes nothing.
    Plan(PlanArgs),
    /// Validate the job, connect to both sides and report whether the target's
    /// columns and types fit the source's; writes nothing.
    Check(JobArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout,
    /// e.g. stride completions bash > /etc/bash_completion.d/stride
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, e.g. stride man > /usr/local/share/man/man1/stride.1
    Man,
    /// Compare each partition's rows on source and target (count or checksum),
    /// reading the source in one new snapshot; with --repair, copy the partitions
    /// that differ again.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The job file (TOML).
    pub job: PathBuf,

    /// Compare by row count or by checksum of every column's text form
    /// (default: the job's [run] verify, or checksum when that is "none").
    #[arg(long, value_enum)]
    pub by: Option<VerifyBy>,

    /// Copy the partitions that differ again: each in one target transaction that
    /// deletes the partition's range and copies it from the source.
    #[arg(long)]
    pub repair: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyBy {
    /// Row counts.
    Count,
    /// Row counts and an order-independent checksum of all column values.
    Checksum,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job file (TOML).
    pub job: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job file (TOML).
    pub job: PathBuf,

    /// Write the run's summary as JSON to PATH (- for stdout); the schema is in
    /// the README ("Running it unattended").
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,

    /// Write Prometheus metrics of the run to PATH (atomically, for
    /// node_exporter's textfile collector).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,

    /// Forget this job's checkpoints and copy everything again (in truncate mode,
    /// the target is emptied again). Without it, a re-run resumes: partitions
    /// committed by an earlier run of the same job are skipped.
    #[arg(long)]
    pub restart: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The job file (TOML).
    pub job: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// One JSON document, for machines.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
