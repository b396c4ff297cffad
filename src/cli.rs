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
  stride init --source URL --table NAME -o job.toml   a job file written for you

Many machines (each step safe to run twice):
  stride prepare job.toml               once: create or empty the target, fix the plan
  stride run --shard 0/3 job.toml       on each machine: 0/3, 1/3 and 2/3
  stride run --shard auto job.toml      or: any number of workers claim partitions
  stride status job.toml                done, in flight (by whom), left, ETA
  stride finish job.toml                once all shards are done: verify, close the run

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
    /// columns and types fit the source's, and whatever else a run would refuse
    /// before writing (rows in an error-if-exists target, views or foreign keys on
    /// a replace or overwrite target); writes nothing.
    Check(JobArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout,
    /// e.g. stride completions bash > /etc/bash_completion.d/stride
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, e.g. stride man > /usr/local/share/man/man1/stride.1
    Man,
    /// Set up a run for shards: create or empty the target, record the plan
    /// (bounds, partitions, an incremental run's window) in the checkpoint table.
    ///
    /// Then `stride run --shard I/N` on each machine copies its share, and
    /// `stride finish` closes the run. Safe to run twice: a prepared run that is
    /// not finished yet is left as it is.
    Prepare(PrepareArgs),
    /// Close a run whose partitions are all copied (by shards): verify it if the
    /// job asks, and record it as finished (an incremental job's mark advances).
    /// Safe to run twice.
    Finish(JobArgs),
    /// Write a job file for a source table from its catalogue: the partition
    /// column (primary key or an indexed integer, date or timestamp column), the
    /// strategy (from the table's size and the column's statistics) and a count,
    /// each explained in a comment. No password is written.
    Init(InitArgs),
    /// Where a run stands: partitions done, in flight (with the worker holding
    /// each, `stride HOST:PID`), left, rows so far and an ETA, from the target's
    /// checkpoint table; reads only the target, writes nothing.
    Status(PlanArgs),
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
    /// (default: the job's `[run] verify`, or checksum when that is "none").
    #[arg(long, value_enum)]
    pub by: Option<VerifyBy>,

    /// Copy the partitions that differ again, each in one target transaction. In
    /// truncate, error-if-exists, overwrite and replace modes it deletes the
    /// partition's range and copies it from the source; in upsert mode, and in
    /// append mode into a table with a primary key or unique index, it writes
    /// only the source's rows that are missing or different, by key, and keeps
    /// the target's other rows. Append mode without such a key is refused.
    #[arg(long)]
    pub repair: bool,

    /// With --repair: also delete the target's rows in each repaired partition's
    /// range that the source does not have (by key; in append mode without a key,
    /// the whole range is emptied and copied again). They may be other writers'
    /// rows: without this flag they are kept and counted.
    #[arg(long, requires = "repair")]
    pub delete_extra: bool,
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
    #[arg(long, conflicts_with = "shard")]
    pub restart: bool,

    /// With --restart of an append job whose earlier run already added rows: add
    /// them again anyway (after you deleted them from the target, or when you
    /// want them twice). Without it such a restart is refused (exit 2).
    #[arg(long, requires = "restart")]
    pub append_again: bool,

    /// Incremental jobs: ignore the high-water mark once and copy every row (in
    /// append mode the target is emptied first).
    #[arg(long, conflicts_with = "shard")]
    pub full_refresh: bool,

    /// Copy a share of a run set up by `stride prepare`. `auto`: claim partitions
    /// one at a time, largest first, until none are left, beside any number of
    /// other `--shard auto` workers on any machines (a worker that dies frees its
    /// partition for the others). `I/N`: the partitions whose number modulo N is
    /// I (0 <= I < N). Also read from STRIDE_SHARD=auto, or STRIDE_SHARD_INDEX
    /// and STRIDE_SHARD_COUNT (the index also from JOB_COMPLETION_INDEX, as
    /// Kubernetes Indexed Jobs set it).
    #[arg(long, value_name = "auto|I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The source database, postgres://user@host:port/database.
    #[arg(long, value_name = "URL")]
    pub source: String,

    /// The table to copy, optionally schema-qualified.
    #[arg(long, value_name = "NAME")]
    pub table: String,

    /// The target database (default: the job reads TARGET_URL).
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,

    /// Write the job file to PATH instead of stdout.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Replace PATH if it exists.
    #[arg(long, requires = "output")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// The job file (TOML).
    pub job: PathBuf,

    /// Forget this job's unfinished run and set up a new one.
    #[arg(long)]
    pub restart: bool,

    /// With --restart of an append job whose earlier run already added rows: add
    /// them again anyway (see `stride run --help`).
    #[arg(long, requires = "restart")]
    pub append_again: bool,

    /// Incremental jobs: ignore the high-water mark once (in append mode the
    /// target is emptied).
    #[arg(long)]
    pub full_refresh: bool,
}

/// One process's share of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shard {
    /// Partitions whose number modulo `count` is `index`.
    Of { index: u32, count: u32 },
    /// Partitions claimed one at a time until none are left.
    Auto,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shard::Of { index, count } => write!(f, "{index}/{count}"),
            Shard::Auto => f.write_str("auto"),
        }
    }
}

impl Shard {
    /// A shard from its index and count, checked.
    pub fn new(index: i64, count: i64) -> Result<Shard, String> {
        if !(1..=i64::from(u16::MAX)).contains(&count) {
            return Err(format!(
                "shard count {count} is out of range (expected 1 to {})",
                u16::MAX
            ));
        }
        if !(0..count).contains(&index) {
            return Err(format!(
                "shard index {index} is out of range (expected 0 to {}, below the count {count})",
                count - 1
            ));
        }
        Ok(Shard::Of {
            index: u32::try_from(index).expect("checked above"),
            count: u32::try_from(count).expect("checked above"),
        })
    }

    /// `--shard`, else the environment: STRIDE_SHARD (`auto` or `I/N`), else
    /// STRIDE_SHARD_COUNT with STRIDE_SHARD_INDEX or, as Kubernetes Indexed Jobs
    /// set it, JOB_COMPLETION_INDEX.
    pub fn resolve(
        flag: Option<Shard>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Shard>, String> {
        if flag.is_some() {
            return Ok(flag);
        }
        if let Some(value) = env("STRIDE_SHARD") {
            return parse_shard(value.trim())
                .map(Some)
                .map_err(|e| format!("STRIDE_SHARD: {e}"));
        }
        let number = |name: &str| -> Result<Option<i64>, String> {
            env(name)
                .map(|v| {
                    v.trim()
                        .parse::<i64>()
                        .map_err(|_| format!("{name}={v:?} is not a whole number"))
                })
                .transpose()
        };
        let count = number("STRIDE_SHARD_COUNT")?;
        let index = match number("STRIDE_SHARD_INDEX")? {
            Some(i) => Some(i),
            None => number("JOB_COMPLETION_INDEX")?,
        };
        match (index, count) {
            (Some(i), Some(n)) => Shard::new(i, n)
                .map(Some)
                .map_err(|e| format!("STRIDE_SHARD_INDEX/STRIDE_SHARD_COUNT: {e}")),
            (None, Some(_)) => Err(
                "STRIDE_SHARD_COUNT is set without STRIDE_SHARD_INDEX or JOB_COMPLETION_INDEX (expected both, or --shard I/N)"
                    .to_string(),
            ),
            (Some(_), None) if env("STRIDE_SHARD_INDEX").is_some() => Err(
                "STRIDE_SHARD_INDEX is set without STRIDE_SHARD_COUNT (expected both, or --shard I/N)"
                    .to_string(),
            ),
            // JOB_COMPLETION_INDEX alone: an Indexed Job not asking for shards.
            _ => Ok(None),
        }
    }
}

fn parse_shard(text: &str) -> Result<Shard, String> {
    if text == "auto" {
        return Ok(Shard::Auto);
    }
    let wrong = || format!("\"{text}\" is not auto or I/N (e.g. 0/4: the first of four shards)");
    let (index, count) = text.split_once('/').ok_or_else(wrong)?;
    let number = |part: &str| part.trim().parse::<i64>().map_err(|_| wrong());
    Shard::new(number(index)?, number(count)?)
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

/// A word as a POSIX shell reads it back, for commands stride prints to be run
/// as they are: quoted when it is empty or holds anything the shell would act on.
pub fn shell_quote(word: &str) -> String {
    if word.is_empty()
        || word.contains(|c: char| c.is_whitespace() || "'\"$`\\;&|<>()*?[]#~".contains(c))
    {
        format!("'{}'", word.replace('\'', "'\\''"))
    } else {
        word.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn shard_flag() {
        assert_eq!(parse_shard("1/4"), Ok(Shard::Of { index: 1, count: 4 }));
        assert_eq!(parse_shard("0/1"), Ok(Shard::Of { index: 0, count: 1 }));
        assert!(parse_shard("4/4")
            .unwrap_err()
            .contains("index 4 is out of range"));
        assert!(parse_shard("0/0")
            .unwrap_err()
            .contains("count 0 is out of range"));
        assert_eq!(parse_shard("auto"), Ok(Shard::Auto));
        assert_eq!(
            parse_shard("1").unwrap_err(),
            "\"1\" is not auto or I/N (e.g. 0/4: the first of four shards)"
        );
        assert!(parse_shard("a/2")
            .unwrap_err()
            .contains("is not auto or I/N"));
    }

    #[test]
    fn shard_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let flag = Some(Shard::Of { index: 0, count: 2 });
        assert_eq!(
            Shard::resolve(flag, env(&[("STRIDE_SHARD_COUNT", "9")])),
            Ok(flag)
        );
        assert_eq!(Shard::resolve(None, env(&[])), Ok(None));
        assert_eq!(
            Shard::resolve(
                None,
                env(&[("STRIDE_SHARD", "auto"), ("STRIDE_SHARD_COUNT", "3")])
            ),
            Ok(Some(Shard::Auto))
        );
        assert_eq!(
            Shard::resolve(None, env(&[("STRIDE_SHARD", "1/2")])),
            Ok(Some(Shard::Of { index: 1, count: 2 }))
        );
        assert!(Shard::resolve(None, env(&[("STRIDE_SHARD", "all")]))
            .unwrap_err()
            .starts_with("STRIDE_SHARD: \"all\" is not auto or I/N"));
        assert_eq!(
            Shard::resolve(
                None,
                env(&[("STRIDE_SHARD_INDEX", "2"), ("STRIDE_SHARD_COUNT", "3")])
            ),
            Ok(Some(Shard::Of { index: 2, count: 3 }))
        );
        assert_eq!(
            Shard::resolve(
                None,
                env(&[("JOB_COMPLETION_INDEX", "1"), ("STRIDE_SHARD_COUNT", "3")])
            ),
            Ok(Some(Shard::Of { index: 1, count: 3 }))
        );
        assert_eq!(
            Shard::resolve(None, env(&[("JOB_COMPLETION_INDEX", "1")])),
            Ok(None)
        );
        assert!(Shard::resolve(None, env(&[("STRIDE_SHARD_COUNT", "3")]))
            .unwrap_err()
            .contains("without STRIDE_SHARD_INDEX"));
        assert!(Shard::resolve(None, env(&[("STRIDE_SHARD_INDEX", "0")]))
            .unwrap_err()
            .contains("without STRIDE_SHARD_COUNT"));
        assert!(Shard::resolve(
            None,
            env(&[("STRIDE_SHARD_INDEX", "3"), ("STRIDE_SHARD_COUNT", "3")])
        )
        .unwrap_err()
        .contains("index 3 is out of range"));
        assert!(Shard::resolve(
            None,
            env(&[("STRIDE_SHARD_INDEX", "x"), ("STRIDE_SHARD_COUNT", "3")])
        )
        .unwrap_err()
        .contains("is not a whole number"));
    }
}
