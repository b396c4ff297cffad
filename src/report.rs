//! What people and machines see: the progress bar, the run's summary, and the
//! output of `plan` and `check`.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde::Serialize;

use crate::plan::{Plan, Transfer};

/// What became of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Committed on the target.
    Written,
    /// Rolled back; the chain of errors.
    Failed(String),
    /// Was running when the run was interrupted; rolled back.
    RolledBack,
    /// Never started (an earlier failure or an interruption stopped the run).
    NotStarted,
    /// Committed by an earlier run of the same job (a resume skips it).
    Skipped,
    /// `--shard auto`: another worker's, in flight or copied.
    Elsewhere,
}

#[derive(Clone, Debug)]
pub struct PartitionReport {
    pub index: usize,
    pub range: String,
    pub status: Status,
    pub rows: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Attempts after the first, each after a transient failure.
    pub retries: u32,
}

/// A bar with rows/s and ETA on a terminal's stderr; hidden when stdout or stderr
/// is not a terminal (cron, CI, pipes), where the log lines say what happens.
pub fn progress_bar(estimated_rows: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() || !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(estimated_rows), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/~{human_len} rows  {rate}  ETA {eta}",
        )
        .expect("the template is a constant")
        .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{} rows/s", group(state.per_sec().round() as u64));
        })
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// How one side's sessions travel: whether they are encrypted (read from the
/// server), and how stride checked the server's certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Channel {
    /// `TLSv1.3`, ...; `None`: plain text.
    pub tls: Option<String>,
    pub cipher: Option<String>,
    /// `sslmode` as resolved (URL, `PGSSLMODE`, or the default `prefer`);
    /// MySQL's `ssl-mode`.
    pub sslmode: &'static str,
    /// The engine's name for the mode: `sslmode` (PostgreSQL), `ssl-mode` (MySQL).
    #[serde(skip)]
    pub mode_key: &'static str,
    /// `none`, `chain` (verify-ca) or `full` (chain and host name).
    pub verified: &'static str,
    /// Over a Unix socket (never encrypted, as with libpq).
    pub unix_socket: bool,
}

impl Channel {
    /// A file on this machine (SQLite): nothing travels over a network.
    pub fn local_file() -> Channel {
        Channel {
            tls: None,
            cipher: None,
            sslmode: "file",
            mode_key: "sslmode",
            verified: "none",
            unix_socket: false,
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tls {
            None if self.sslmode == "file" => f.write_str("none needed, a local file"),
            None if self.unix_socket => f.write_str("none, Unix socket"),
            None => write!(f, "none, plain text ({}={})", self.mode_key, self.sslmode),
            Some(version) => {
                write!(f, "{version}")?;
                if let Some(cipher) = &self.cipher {
                    write!(f, " {cipher}")?;
                }
                let verified = match self.verified {
                    "full" => "certificate and host name verified",
                    "chain" => "certificate chain verified, host name not checked",
                    _ => "server certificate not verified",
                };
                write!(f, ", {verified} ({}={})", self.mode_key, self.sslmode)
            }
        }
    }
}

/// How the sessions of each side are protected, read from the servers.
#[derive(Clone, Debug)]
pub struct Encryption {
    pub source: Channel,
    pub target: Channel,
}

impl Encryption {
    /// `encryption: source ...; target ...`, one line.
    pub fn render(&self) -> String {
        format!(
            "encryption: source {}; target {}\n",
            self.source, self.target
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "source": self.source, "target": self.target })
    }
}

/// The whole run, for the final summary.
#[derive(Debug)]
pub struct Summary {
    pub source: String,
    pub target: String,
    pub method: String,
    /// `I/N` when this process copied one shard's partitions (`partitions` are its own).
    pub shard: Option<String>,
    pub partitions: Vec<PartitionReport>,
    /// `--shard auto`: partitions other workers copied or are copying (not in
    /// `partitions`).
    pub elsewhere: usize,
    pub elapsed: Duration,
    /// Stopped by Ctrl-C or SIGTERM.
    pub interrupted: bool,
    pub encryption: Encryption,
}

impl Summary {
    pub fn rows(&self) -> u64 {
        self.partitions.iter().map(|p| p.rows).sum()
    }

    /// Rows written by this run (not by an earlier one being resumed).
    pub fn rows_this_run(&self) -> u64 {
        self.partitions
            .iter()
            .filter(|p| p.status == Status::Written)
            .map(|p| p.rows)
            .sum()
    }

    pub fn bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.bytes).sum()
    }

    /// Partitions committed on the target, by this run or an earlier one.
    pub fn committed(&self) -> Vec<usize> {
        self.with_status(|s| matches!(s, Status::Written | Status::Skipped))
    }

    fn with_status(&self, keep: impl Fn(&Status) -> bool) -> Vec<usize> {
        self.partitions
            .iter()
            .filter(|p| keep(&p.status))
            .map(|p| p.index)
            .collect()
    }

    pub fn succeeded(&self) -> bool {
        self.partitions
            .iter()
            .all(|p| matches!(p.status, Status::Written | Status::Skipped))
    }

    /// The summary for people.
    pub fn render(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let rows = self.rows();
        let bytes = self.bytes();
        let mut out = String::new();
        let verdict = match (self.succeeded(), self.interrupted) {
            (true, _) => "copied",
            (false, true) => "copy INTERRUPTED",
            (false, false) => "copy FAILED",
        };
        let shard = self
            .shard
            .as_ref()
            .map_or_else(String::new, |s| format!("; shard {s}"));
        let _ = writeln!(
            out,
            "{verdict}: {} -> {} ({}{shard})",
            self.source, self.target, self.method
        );
        out.push_str(&self.encryption.render());
        let written = self.with_status(|s| *s == Status::Written).len();
        let skipped = self.with_status(|s| *s == Status::Skipped).len();
        let retries: u32 = self.partitions.iter().map(|p| p.retries).sum();
        let mut counts = format!("partitions {written} written of {}", self.partitions.len());
        if skipped > 0 {
            counts.push_str(&format!(
                " ({skipped} skipped: committed by an earlier run)"
            ));
        }
        if self.elsewhere > 0 {
            counts.push_str(&format!(
                " ({} more copied or being copied by other workers)",
                self.elsewhere
            ));
        }
        if retries > 0 {
            counts.push_str(&format!("   retries {retries}"));
        }
        let _ = writeln!(
            out,
            "{counts}   rows {}   bytes {}   elapsed {}   {} rows/s",
            group(rows),
            human_bytes(bytes),
            human_duration(self.elapsed),
            group((self.rows_this_run() as f64 / secs).round() as u64),
        );
        let width = self
            .partitions
            .iter()
            .map(|p| p.range.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(
            out,
            "{:>9}  {:<width$}  {:>12}  {:>9}  status",
            "partition", "range", "rows", "time"
        );
        for p in &self.partitions {
            let mut status = match &p.status {
                Status::Written => "written",
                Status::Failed(_) => "FAILED",
                Status::RolledBack => "rolled back",
                Status::NotStarted => "not started",
                Status::Skipped => "skipped (done earlier)",
                Status::Elsewhere => "another worker's",
            }
            .to_string();
            if p.retries > 0 {
                let plural = if p.retries == 1 { "retry" } else { "retries" };
                status.push_str(&format!(" after {} {plural}", p.retries));
            }
            let _ = writeln!(
                out,
                "{:>9}  {:<width$}  {:>12}  {:>9}  {status}",
                p.index,
                p.range,
                group(p.rows),
                human_duration(p.elapsed),
            );
        }
        for p in &self.partitions {
            if let Status::Failed(error) = &p.status {
                let _ = writeln!(out, "partition {} failed: {error}", p.index);
            }
        }
        if !self.succeeded() {
            let committed = self.committed();
            let _ = writeln!(
                out,
                "written and committed: {}; everything else was rolled back or not started",
                if committed.is_empty() {
                    "none".to_string()
                } else {
                    list(&committed)
                }
            );
        }
        out
    }
}

fn list(indexes: &[usize]) -> String {
    indexes
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// 1234567 as "1,234,567".
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.2} s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// A partition another session holds a claim on (`--shard auto` and shards).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Claim {
    pub partition: usize,
    /// The claiming session's `application_name`: `stride HOST:PID`.
    pub worker: String,
    /// Its client address, `local` for a Unix socket.
    pub client: String,
    pub seconds: f64,
}

/// `stride status`: where a run of one table stands, from its checkpoint
/// table. `run` is `None` when no run of the job is recorded.
#[derive(Clone, Debug)]
pub struct RunStatus {
    pub table: String,
    pub fingerprint: String,
    pub run: Option<RecordedStatus>,
    /// The commands that take the run on, as the user would type them.
    pub next: NextCommands,
}

/// Commands `stride status` suggests, each ready to run as printed.
#[derive(Clone, Debug, Default)]
pub struct NextCommands {
    pub prepare: String,
    pub run: String,
    pub workers: String,
    pub finish: String,
}

#[derive(Clone, Debug)]
pub struct RecordedStatus {
    pub partitions: usize,
    pub finished: bool,
    /// When the run started, or, once finished, when it finished.
    /// When the run started, or, once finished, when it finished.
    pub started_at: String,
    /// Seconds since the run row was recorded: the run's start (or preparation).
    pub age: f64,
    /// Committed partitions: index, rows.
    pub done: Vec<(usize, u64)>,
    pub claims: Vec<Claim>,
    /// Each partition's estimated rows, when `stride prepare` recorded them.
    pub estimates: Vec<i64>,
}

impl RecordedStatus {
    fn rows(&self) -> u64 {
        self.done.iter().map(|d| d.1).sum()
    }

    fn left(&self) -> usize {
        self.partitions
            .saturating_sub(self.done.len())
            .saturating_sub(self.claims.len())
    }

    /// The rows of the partitions not committed yet, by the recorded estimates.
    fn rows_left(&self) -> Option<u64> {
        if self.estimates.len() != self.partitions {
            return None;
        }
        Some(
            self.estimates
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.done.iter().any(|d| d.0 == *i))
                .map(|(_, e)| u64::try_from(*e).unwrap_or(0))
                .sum(),
        )
    }

    /// Seconds to go at the pace since the run started: the rows left over the
    /// rows committed per second so far. `None` before the first partition is
    /// committed, without estimates, or once finished.
    pub fn eta(&self) -> Option<f64> {
        let rows = self.rows();
        if self.finished || rows == 0 || self.age <= 0.0 || self.done.len() >= self.partitions {
            return None;
        }
        Some(self.rows_left()? as f64 / (rows as f64 / self.age))
    }
}

impl RunStatus {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Some(run) = &self.run else {
            let _ = writeln!(
                out,
                "{}: no run of this job is recorded in the checkpoint table (run {}): `{}` or `{}` starts one",
                self.table, self.fingerprint, self.next.prepare, self.next.run
            );
            return out;
        };
        // A finished run's row records when it finished.
        let state = if run.finished {
            "finished"
        } else {
            "in progress, started"
        };
        let _ = writeln!(
            out,
            "{}: run {} {state} {}, {} partitions",
            self.table, self.fingerprint, run.started_at, run.partitions
        );
        let estimate = match run.rows_left() {
            Some(left) => format!(" of about {}", group(run.rows() + left)),
            None => String::new(),
        };
        let eta = match run.eta() {
            Some(secs) => format!("   ETA {}", human_duration(Duration::from_secs_f64(secs))),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "done {}   in flight {}   left {}   rows {}{estimate}{eta}",
            run.done.len(),
            run.claims.len(),
            run.left(),
            group(run.rows()),
        );
        if !run.claims.is_empty() {
            let width = run
                .claims
                .iter()
                .map(|c| c.worker.len())
                .max()
                .unwrap_or(6)
                .max(6);
            let _ = writeln!(
                out,
                "{:>9}  {:<width$}  {:<15}  {:>9}",
                "partition", "worker", "client", "for"
            );
            for c in &run.claims {
                let _ = writeln!(
                    out,
                    "{:>9}  {:<width$}  {:<15}  {:>9}",
                    c.partition,
                    c.worker,
                    c.client,
                    human_duration(Duration::from_secs_f64(c.seconds.max(0.0)))
                );
            }
        }
        if !run.finished && run.claims.is_empty() {
            let next = if run.done.len() >= run.partitions {
                format!(
                    "every partition is copied: `{}` verifies and closes the run",
                    self.next.finish
                )
            } else {
                format!(
                    "no partition is being copied: `{}` copies the rest",
                    self.next.workers
                )
            };
            let _ = writeln!(out, "{next}");
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let Some(run) = &self.run else {
            return serde_json::json!({
                "table": self.table,
                "fingerprint": self.fingerprint,
                "state": "none",
            });
        };
        serde_json::json!({
            "table": self.table,
            "fingerprint": self.fingerprint,
            "state": if run.finished { "finished" } else { "in_progress" },
            "recorded_at": run.started_at,
            "partitions": run.partitions,
            "done": run.done.len(),
            "in_flight": run.claims,
            "left": run.left(),
            "rows": run.rows(),
            "estimated_rows_left": run.rows_left(),
            "eta_seconds": run.eta(),
        })
    }
}

/// `stride plan` for people.
pub fn render_plan(plan: &Plan, estimates: &[i64], source: &str, at_once: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "source {source}");
    let fewer = |why: &str| {
        if plan.partitions.len() < plan.requested_partitions as usize {
            format!(" (of {} asked: {why})", plan.requested_partitions)
        } else {
            String::new()
        }
    };
    match (&plan.cut, &plan.key, &plan.bounds) {
        (crate::plan::Cut::Quantile { how, .. }, Some(key), _) => {
            let _ = writeln!(
                out,
                "partition column {} ({}), strategy quantile: boundaries at the column's quantiles {how}, {} partitions{}",
                key.column,
                key.key_type.sql_name(),
                plan.partitions.len(),
                fewer("values too few or too common to cut finer")
            );
        }
        (crate::plan::Cut::Ctid { blocks }, _, _) => {
            let _ = writeln!(
                out,
                "strategy ctid: {} blocks of the table in {} ranges{}",
                group(u64::try_from(*blocks).unwrap_or(0)),
                plan.partitions.len(),
                fewer("the table has fewer blocks")
            );
        }
        (_, Some(key), Some(bounds)) => {
            let _ = writeln!(
                out,
                "partition column {} ({}), bounds {} .. {} (from the {}), {} partitions{}",
                key.column,
                key.key_type.sql_name(),
                key.key_type.display(bounds.lower),
                key.key_type.display(bounds.upper),
                match bounds.origin {
                    crate::plan::BoundsOrigin::Job => "job",
                    crate::plan::BoundsOrigin::Source => "source's min and max",
                    crate::plan::BoundsOrigin::EarlierRun => "earlier run being resumed",
                },
                plan.partitions.len(),
                fewer("the range is narrower than that")
            );
        }
        (_, Some(key), None) => {
            let _ = writeln!(
                out,
                "partition column {}: the source has no rows, so one partition",
                key.column
            );
        }
        (_, None, _) => {
            let _ = writeln!(out, "no [partition] section: one partition");
        }
    }
    for (p, estimate) in plan.partitions.iter().zip(estimates) {
        let _ = writeln!(
            out,
            "\npartition {}  {}  ~{} rows",
            p.index,
            p.describe,
            group(*estimate as u64)
        );
        let _ = writeln!(out, "  {}", p.select);
    }
    let total: i64 = estimates.iter().sum();
    let _ = writeln!(
        out,
        "\ntotal ~{} rows (planner estimates)",
        group(total.max(0) as u64)
    );
    if let Some(spread) = Plan::spread(estimates) {
        let _ = writeln!(
            out,
            "spread {spread:.1}x (largest / smallest partition estimate){}",
            if spread >= 4.0 && plan.cut == crate::plan::Cut::Stride {
                ": skewed; strategy = \"quantile\" (or \"ctid\") evens it out"
            } else {
                ""
            }
        );
    }
    if (at_once as usize) < plan.partitions.len() {
        let _ = writeln!(
            out,
            "{at_once} partitions at once (run.parallelism), the others queue"
        );
    }
    out
}

/// One row of `stride check`'s table.
#[derive(Debug)]
pub struct ColumnFit {
    pub column: String,
    pub source_type: String,
    /// `None` when the target table does not exist yet and will be created.
    pub target_type: Option<String>,
    pub transfer: Option<Transfer>,
    /// Where a converted column's values may fail or round (`plan::conversion`).
    pub note: Option<String>,
}

pub fn render_check(
    source: &str,
    target: &str,
    target_exists: bool,
    fits: &[ColumnFit],
    computed: &[ColumnFit],
    encryption: &Encryption,
) -> String {
    let mut out = String::new();
    out.push_str(&encryption.render());
    let _ = writeln!(out, "source {source}");
    let _ = writeln!(
        out,
        "target {target}{}",
        if target_exists {
            ""
        } else {
            " (missing: will be created from the source's columns)"
        }
    );
    let w = fits
        .iter()
        .chain(computed)
        .map(|f| f.column.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let ws = fits
        .iter()
        .chain(computed)
        .map(|f| f.source_type.len())
        .max()
        .unwrap_or(11)
        .max(11);
    let wt = fits
        .iter()
        .chain(computed)
        .map(|f| f.target_type.as_deref().unwrap_or("(missing)").len())
        .max()
        .unwrap_or(11)
        .max(11);
    let _ = writeln!(
        out,
        "{:<w$}  {:<ws$}  {:<wt$}  transfer",
        "column", "source type", "target type"
    );
    for f in fits {
        let transfer = match (f.transfer, &f.target_type) {
            (Some(Transfer::Binary), _) => "binary (passed through)",
            (Some(Transfer::Text), _) => "text (converted by the target)",
            (Some(Transfer::Incompatible), _) => "INCOMPATIBLE",
            (None, None) if target_exists => "MISSING in the target",
            (None, _) => "created",
        };
        let note = f
            .note
            .as_ref()
            .map_or_else(String::new, |n| format!(": {n}"));
        let _ = writeln!(
            out,
            "{:<w$}  {:<ws$}  {:<wt$}  {transfer}{note}",
            f.column,
            f.source_type,
            f.target_type.as_deref().unwrap_or("(missing)"),
        );
    }
    for f in computed {
        let _ = writeln!(
            out,
            "{:<w$}  {:<ws$}  {:<wt$}  generated in the target (computed there, not copied)",
            f.column,
            f.source_type,
            f.target_type.as_deref().unwrap_or_default(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(done: &[(usize, u64)], claims: usize, age: f64) -> RecordedStatus {
        RecordedStatus {
            partitions: 4,
            finished: false,
            started_at: "2026-12-03 10:00:00+00".to_string(),
            age,
            done: done.to_vec(),
            claims: (0..claims)
                .map(|i| Claim {
                    partition: 3 - i,
                    worker: "stride node-a:41".to_string(),
                    client: "10.0.0.5".to_string(),
                    seconds: 12.5,
                })
                .collect(),
            estimates: vec![400, 300, 200, 100],
        }
    }

    #[test]
    fn status_counts_and_eta() {
        // 700 rows in 7 s: 100 rows/s, and the estimates leave 300 rows.
        let run = status(&[(0, 400), (1, 300)], 1, 7.0);
        assert_eq!(run.left(), 1);
        assert_eq!(run.rows_left(), Some(300));
        assert_eq!(run.eta(), Some(3.0));
        let shown = RunStatus {
            table: "\"t\"".to_string(),
            fingerprint: "964089658cab848a".to_string(),
            run: Some(run),
            next: NextCommands {
                finish: "stride finish j.toml".to_string(),
                workers: "stride run --shard auto j.toml".to_string(),
                ..NextCommands::default()
            },
        };
        assert_eq!(
            shown.render(),
            "\"t\": run 964089658cab848a in progress, started 2026-12-03 10:00:00+00, 4 partitions\n\
             done 2   in flight 1   left 1   rows 700 of about 1,000   ETA 3.00 s\n\
             partition  worker            client                 for\n\
             \x20       3  stride node-a:41  10.0.0.5           12.50 s\n"
        );
        // Nothing committed yet: no pace, no ETA; nothing in flight: a hint.
        let idle = RunStatus {
            run: Some(status(&[], 0, 7.0)),
            ..shown.clone()
        };
        assert_eq!(idle.run.as_ref().unwrap().eta(), None);
        assert!(idle.render().ends_with(
            "no partition is being copied: `stride run --shard auto j.toml` copies the rest\n"
        ));
        // Everything committed, not finished: finish is next.
        let copied = RunStatus {
            run: Some(status(&[(0, 400), (1, 300), (2, 200), (3, 100)], 0, 7.0)),
            ..shown
        };
        assert_eq!(copied.run.as_ref().unwrap().eta(), None);
        assert!(copied.render().ends_with(
            "every partition is copied: `stride finish j.toml` verifies and closes the run\n"
        ));
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_duration(Duration::from_millis(1234)), "1.23 s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
    }
}

/// One partition compared between source and target.
#[derive(Debug)]
pub struct Verified {
    pub index: usize,
    pub range: String,
    /// Rows and checksum (empty when only counting).
    pub source: (i64, String),
    pub target: (i64, String),
    /// Where the target may hold other writers' rows (upsert mode, append mode
    /// with a key) and the counts differ: the rows compared by key.
    pub by_key: Option<KeyDiff>,
}

/// A partition's rows compared by key between source and target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyDiff {
    /// Source rows whose key the target does not have.
    pub missing: u64,
    /// Source rows whose key the target has with other values (checksum only).
    pub different: u64,
    /// Target rows in the range whose key the source's partition does not have.
    pub extra: u64,
    /// The smallest such key, as `ROW(key)::text`.
    pub example: Option<String>,
}

impl Verified {
    /// Equal, or compared by key with every source row in the target as it is
    /// (the target's other rows may be another writer's).
    pub fn matches(&self) -> bool {
        match &self.by_key {
            Some(diff) => diff.missing == 0 && diff.different == 0,
            None => self.source == self.target,
        }
    }

    /// Target rows whose key the source does not have (compared by key only).
    pub fn extra(&self) -> u64 {
        self.by_key.as_ref().map_or(0, |d| d.extra)
    }
}

/// The verify table: each partition's counts (and checksums) on both sides.
pub fn render_verify(results: &[Verified], verify: crate::job::Verify) -> String {
    let mut out = String::new();
    let what = match verify {
        crate::job::Verify::Checksum => "row counts and checksums",
        _ => "row counts",
    };
    let bad = results.iter().filter(|r| !r.matches()).count();
    let _ = writeln!(
        out,
        "verify ({what}): {} of {} partitions match",
        results.len() - bad,
        results.len()
    );
    let width = results
        .iter()
        .map(|r| r.range.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        out,
        "{:>9}  {:<width$}  {:>12}  {:>12}  result",
        "partition", "range", "source rows", "target rows"
    );
    for r in results {
        let result = match (&r.by_key, r.matches(), r.source.0 == r.target.0) {
            (Some(d), true, _) => format!("ok by key ({} other rows)", group(d.extra)),
            (Some(d), false, _) => format!(
                "DIFFERENT by key ({} missing, {} other values, {} other rows)",
                group(d.missing),
                group(d.different),
                group(d.extra)
            ),
            (None, true, _) => "ok".to_string(),
            (None, false, true) => "DIFFERENT (same count, other values)".to_string(),
            (None, false, false) => "DIFFERENT".to_string(),
        };
        let _ = writeln!(
            out,
            "{:>9}  {:<width$}  {:>12}  {:>12}  {result}",
            r.index,
            r.range,
            group(u64::try_from(r.source.0).unwrap_or(0)),
            group(u64::try_from(r.target.0).unwrap_or(0)),
        );
    }
    out
}

/// The summary of a job file's tables, after each table's own: one line each.
pub fn render_tables(
    tables: &[(String, Option<&Summary>, u8)],
    not_started: &[String],
    elapsed: Duration,
) -> String {
    let mut out = String::new();
    let ok = tables
        .iter()
        .filter(|t| t.2 == crate::error::exit::OK)
        .count();
    let failed = tables.len() - ok;
    let rows: u64 = tables.iter().filter_map(|t| t.1).map(Summary::rows).sum();
    let bytes: u64 = tables.iter().filter_map(|t| t.1).map(Summary::bytes).sum();
    let mut counts = format!("tables {ok} of {} done", tables.len() + not_started.len());
    if failed > 0 {
        counts.push_str(&format!(", {failed} failed"));
    }
    if !not_started.is_empty() {
        counts.push_str(&format!(", {} not started", not_started.len()));
    }
    let _ = writeln!(
        out,
        "\n{counts}   rows {}   bytes {}   elapsed {}",
        group(rows),
        human_bytes(bytes),
        human_duration(elapsed)
    );
    let width = tables
        .iter()
        .map(|t| t.0.len())
        .chain(not_started.iter().map(String::len))
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        out,
        "{:<width$}  {:>12}  {:>12}  status",
        "table", "partitions", "rows"
    );
    for (table, summary, code) in tables {
        let (partitions, rows) = match summary {
            Some(s) => (
                format!("{} of {}", s.committed().len(), s.partitions.len()),
                group(s.rows()),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        let status = match (*code, summary) {
            (crate::error::exit::OK, Some(_)) => "copied",
            (crate::error::exit::OK, None) => "nothing to do",
            (crate::error::exit::INTERRUPTED, _) => "interrupted",
            (crate::error::exit::BAD_JOB, _) => "invalid",
            _ => "FAILED",
        };
        let _ = writeln!(
            out,
            "{table:<width$}  {partitions:>12}  {rows:>12}  {status}"
        );
    }
    for table in not_started {
        let _ = writeln!(
            out,
            "{table:<width$}  {:>12}  {:>12}  not started",
            "-", "-"
        );
    }
    out
}

/// `--summary-json` of several tables: the totals, with each table's document
/// (`summary_json` plus `table`) under `tables`.
pub fn tables_json(
    tables: &[serde_json::Value],
    not_started: &[String],
    exit_code: u8,
    elapsed: Duration,
) -> serde_json::Value {
    use crate::error::exit;
    let sum = |field: &str| -> u64 { tables.iter().filter_map(|t| t[field].as_u64()).sum() };
    let partitions = |field: &str| -> u64 {
        tables
            .iter()
            .filter_map(|t| t["partitions"][field].as_u64())
            .sum()
    };
    let status = match exit_code {
        exit::OK if tables.iter().all(|t| t["status"] == "nothing_to_do") => "nothing_to_do",
        exit::OK => "succeeded",
        exit::BAD_JOB => "invalid_job",
        exit::INTERRUPTED => "interrupted",
        _ => "failed",
    };
    serde_json::json!({
        "schema_version": 1,
        "status": status,
        "exit_code": exit_code,
        "partitions": {
            "total": partitions("total"),
            "written": partitions("written"),
            "skipped": partitions("skipped"),
            "failed": partitions("failed"),
            "rolled_back": partitions("rolled_back"),
            "not_started": partitions("not_started"),
        },
        "rows": sum("rows"),
        "bytes": sum("bytes"),
        "seconds": elapsed.as_secs_f64(),
        "retries": sum("retries"),
        "error": tables.iter().find_map(|t| t["error"].as_str()),
        "table_counts": {
            "total": tables.len() + not_started.len(),
            "done": tables.iter().filter(|t| t["exit_code"] == 0).count(),
            "failed": tables.iter().filter(|t| t["exit_code"] != 0).count(),
            "not_started": not_started.len(),
        },
        "tables": tables
            .iter()
            .cloned()
            .chain(not_started.iter().map(|table| serde_json::json!({
                "table": table,
                "status": "not_started",
            })))
            .collect::<Vec<_>>(),
    })
}

/// The run's summary for machines (`--summary-json`). The schema is stable and
/// documented in the README; `schema_version` changes if a field changes meaning.
pub fn summary_json(
    summary: Option<&Summary>,
    fingerprint: &str,
    exit_code: u8,
    error: Option<&str>,
) -> serde_json::Value {
    use crate::error::exit;
    let status = match (exit_code, summary) {
        (exit::OK, None) => "nothing_to_do",
        (exit::OK, Some(_)) => "succeeded",
        (exit::BAD_JOB, _) => "invalid_job",
        (exit::INTERRUPTED, _) => "interrupted",
        _ => "failed",
    };
    let count = |keep: fn(&Status) -> bool| {
        summary.map_or(0, |s| {
            s.partitions.iter().filter(|p| keep(&p.status)).count()
        })
    };
    let first_failure = summary.and_then(|s| {
        s.partitions.iter().find_map(|p| match &p.status {
            Status::Failed(e) => Some(e.clone()),
            _ => None,
        })
    });
    serde_json::json!({
        "schema_version": 1,
        "status": status,
        "exit_code": exit_code,
        "fingerprint": fingerprint,
        "source": summary.map(|s| s.source.clone()),
        "target": summary.map(|s| s.target.clone()),
        "method": summary.map(|s| s.method.clone()),
        "shard": summary.and_then(|s| s.shard.clone()),
        "encryption": summary.map(|s| s.encryption.json()),
        "partitions": {
            "total": summary.map_or(0, |s| s.partitions.len()),
            "written": count(|s| *s == Status::Written),
            "skipped": count(|s| *s == Status::Skipped),
            "failed": count(|s| matches!(s, Status::Failed(_))),
            "rolled_back": count(|s| *s == Status::RolledBack),
            "not_started": count(|s| *s == Status::NotStarted),
            "other_workers": summary.map_or(0, |s| s.elsewhere),
        },
        "rows": summary.map_or(0, Summary::rows),
        "bytes": summary.map_or(0, Summary::bytes),
        "seconds": summary.map_or(0.0, |s| s.elapsed.as_secs_f64()),
        "retries": summary.map_or(0, |s| s.partitions.iter().map(|p| p.retries).sum::<u32>()),
        "error": error.map(str::to_string).or(first_failure),
        "detail": summary.map_or_else(Vec::new, |s| s.partitions.iter().map(|p| serde_json::json!({
            "index": p.index,
            "range": p.range,
            "status": match p.status {
                Status::Written => "written",
                Status::Skipped => "skipped",
                Status::Failed(_) => "failed",
                Status::RolledBack => "rolled_back",
                Status::NotStarted => "not_started",
                Status::Elsewhere => "other_worker",
            },
            "rows": p.rows,
            "bytes": p.bytes,
            "seconds": p.elapsed.as_secs_f64(),
            "retries": p.retries,
            "error": match &p.status { Status::Failed(e) => Some(e.clone()), _ => None },
        })).collect()),
    })
}

/// Prometheus text exposition of a run (`--metrics-file`), from its summary JSON.
/// `previous` is the file as the last run left it: a failed run keeps the last
/// success's timestamp.
pub fn metrics_text(summary: &serde_json::Value, job: &str, previous: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let succeeded = matches!(
        summary["status"].as_str(),
        Some("succeeded" | "nothing_to_do")
    );
    let label = job
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    let last_success = if succeeded {
        Some(now.to_string())
    } else {
        previous
            .lines()
            .find(|l| l.starts_with("stride_last_success_timestamp_seconds{"))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{job=\"{label}\"}} {value}");
    };
    metric(
        "stride_last_run_timestamp_seconds",
        "When the last run of this job ended (Unix time).",
        now.to_string(),
    );
    if let Some(t) = last_success {
        metric(
            "stride_last_success_timestamp_seconds",
            "When a run of this job last succeeded (Unix time).",
            t,
        );
    }
    metric(
        "stride_last_run_success",
        "1 if the last run succeeded, else 0.",
        u8::from(succeeded).to_string(),
    );
    metric(
        "stride_last_run_exit_code",
        "The last run's exit code.",
        summary["exit_code"].to_string(),
    );
    metric(
        "stride_last_run_rows",
        "Rows committed by the last run's partitions, skipped ones included.",
        summary["rows"].to_string(),
    );
    metric(
        "stride_last_run_bytes",
        "Bytes read from the source by the last run's partitions.",
        summary["bytes"].to_string(),
    );
    metric(
        "stride_last_run_duration_seconds",
        "How long the last run took.",
        summary["seconds"].to_string(),
    );
    metric(
        "stride_last_run_retries",
        "Partition retries after transient failures in the last run.",
        summary["retries"].to_string(),
    );
    metric(
        "stride_last_run_failed_partitions",
        "Partitions that failed in the last run.",
        summary["partitions"]["failed"].to_string(),
    );
    out
}
