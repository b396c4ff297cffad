//! The errors a caller must branch on. Everything else is an `anyhow::Error` with
//! context naming the object and the operation.

use std::fmt;

/// The job or the command line is wrong: found before anything was written.
/// `main` maps it to exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError(String);

impl JobError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JobError {}

/// The run was stopped by Ctrl-C or SIGTERM. `main` maps it to exit code 130.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// `--shard auto`: the partition is another worker's, in flight (`done`
/// false) or committed. Not a failure: the worker goes on to the next one.
#[derive(Debug, Clone, Copy)]
pub struct NotClaimed {
    pub done: bool,
}

impl fmt::Display for NotClaimed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.done {
            "copied by another worker"
        } else {
            "being copied by another worker"
        })
    }
}

impl std::error::Error for NotClaimed {}

/// The connection broke after COMMIT was sent and before the server answered.
#[derive(Debug, Clone, Copy)]
pub struct CommitUnanswered;

impl fmt::Display for CommitUnanswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "committing the target transaction: the connection broke before the server answered",
        )
    }
}

/// After an unanswered COMMIT, the checkpoint table shows the partition was not
/// committed: retrying it is safe.
#[derive(Debug, Clone, Copy)]
pub struct CommitRolledBack;

impl fmt::Display for CommitRolledBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the partition's checkpoint is not recorded, so the COMMIT did not happen")
    }
}

impl std::error::Error for CommitRolledBack {}

/// After an unanswered COMMIT without checkpoints nothing tells whether the
/// partition was written: never retried, since a retry could write it twice.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeUnknown;

impl fmt::Display for OutcomeUnknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "whether the partition was committed is unknown (no checkpoint table to tell); check the target, and turn checkpoints on to have stride settle this",
        )
    }
}

impl std::error::Error for OutcomeUnknown {}

/// Which side of the copy a connection is on, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// A partition's source or target moved no data for `run.stall_timeout` (a frozen
/// network, a server that stopped answering): transient, so the partition is
/// retried on new connections.
#[derive(Debug, Clone, Copy)]
pub struct Stalled {
    pub side: Side,
    pub waited: std::time::Duration,
}

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.waited.as_millis();
        let waited = if ms.is_multiple_of(1000) {
            format!("{} s", ms / 1000)
        } else {
            format!("{ms} ms")
        };
        write!(
            f,
            "the {} moved no data for {waited} (run.stall_timeout)",
            self.side
        )
    }
}

impl std::error::Error for Stalled {}

/// After an unanswered COMMIT, the partition's outcome could not be settled (the
/// target did not let stride look, or the run was interrupted first). Never
/// retried, since a retry could write the partition twice; a resumed run reads
/// the checkpoint table and skips it if it was committed.
#[derive(Debug, Clone, Copy)]
pub struct Unsettled;

impl fmt::Display for Unsettled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "whether the partition was committed is not known yet; running the same command again resumes the run, which skips the partition if its checkpoint is recorded",
        )
    }
}

impl std::error::Error for Unsettled {}

/// The run's lock on the target table was lost: the session holding it ended
/// (see `pg::RunLock`). Another run may be writing into the table, so this one
/// commits nothing more; never retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLost {
    pub table: String,
}

impl fmt::Display for LockLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the run lost its lock on {table}: the target session holding it ended (a firewall or NAT dropping idle connections, an idle-session timeout, or a terminated backend), and another run may be writing into {table}; this run stops and commits nothing more (what it committed stays, recorded in the checkpoint table): run the same command again once no other run writes into {table}, and it resumes",
            table = self.table
        )
    }
}

impl std::error::Error for LockLost {}

/// Exit codes, as documented in `--help` and the README.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const BAD_JOB: u8 = 2;
    pub const INTERRUPTED: u8 = 130;
}

/// The exit code for an error: walks the chain once, looking for the kinds above.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<JobError>() {
            return exit::BAD_JOB;
        }
        if cause.is::<Interrupted>() {
            return exit::INTERRUPTED;
        }
    }
    exit::FAILED
}

/// Wait before attempt `attempt` (1, 2, ...): 0.5 s doubling up to 8 s, with up to
/// 50% jitter so partitions that failed together do not retry in lockstep.
pub fn backoff(attempt: u32) -> std::time::Duration {
    let base_ms = 500u64 << attempt.saturating_sub(1).min(4);
    let jitter_ms =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), attempt)
            % (base_ms / 2 + 1);
    std::time::Duration::from_millis(base_ms + jitter_ms)
}

/// The error chain as `a: b: c`, like anyhow's `{:#}`, without the repeats a driver
/// adds (its database error prints its cause's message, then the cause itself).
pub fn chain(err: &anyhow::Error) -> String {
    let mut out: Vec<String> = Vec::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if out.last().is_some_and(|last| last.ends_with(&message)) {
            continue;
        }
        out.push(message);
    }
    out.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_drops_repeated_causes() {
        #[derive(Debug)]
        struct Db;
        impl fmt::Display for Db {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("error returned from database: too many clients")
            }
        }
        impl std::error::Error for Db {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&Inner)
            }
        }
        #[derive(Debug)]
        struct Inner;
        impl fmt::Display for Inner {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("too many clients")
            }
        }
        impl std::error::Error for Inner {}
        let err = anyhow::Error::new(Db).context("connecting to the source");
        assert_eq!(
            chain(&err),
            "connecting to the source: error returned from database: too many clients"
        );
        assert_eq!(exit_code(&err), exit::FAILED);
        assert_eq!(
            exit_code(&anyhow::Error::new(JobError::new("x")).context("y")),
            exit::BAD_JOB
        );
    }
}
