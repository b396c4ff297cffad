//! How a step starts: from the run the checkpoint table records and the
//! command line, a resume, a new run, nothing to do, or a refusal. Pure, and
//! the same for every engine.

use std::path::Path;

use anyhow::Result;
use tracing::{info, warn};

use crate::checkpoint::RecordedRun;
use crate::cli::Shard;
use crate::error::JobError;
use crate::job::{Job, Mode, Strategy};
use crate::plan;
use crate::report;

/// Which part of a run this process does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `stride run`: set up (or resume) a run, copy every partition, check, finish.
    Whole,
    /// `stride run --shard I/N`: copy this shard's partitions of a prepared run.
    Shard(Shard),
    /// `stride prepare`: set up a run for shards, and stop.
    Prepare,
    /// `stride finish`: check a run whose partitions are all copied, and close it.
    Finish,
}

pub struct RunOptions {
    pub step: Step,
    pub restart: bool,
    /// `--append-again`: a restart of an append job may add its rows a second time.
    pub append_again: bool,
    pub full_refresh: bool,
    pub quiet: bool,
    /// The summary for people goes to stderr, because stdout carries `--summary-json -`.
    pub human_to_stderr: bool,
}

impl RunOptions {
    /// Text for people: on stdout (stderr when stdout carries `--summary-json
    /// -`); nothing with `-q`, which prints errors only.
    pub fn say(&self, text: &str) {
        if !self.quiet {
            self.human(text);
        }
    }

    /// Text for people, even with `-q`: on stdout, or stderr when stdout
    /// carries `--summary-json -`.
    pub fn human(&self, text: &str) {
        if self.human_to_stderr {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    }

    /// A summary: as [`RunOptions::say`], and with `-q` too when the run did
    /// not succeed (on stderr), since it says what was and was not written.
    pub fn say_summary(&self, text: &str, succeeded: bool) {
        if self.quiet && !succeeded {
            eprint!("{text}");
        } else {
            self.say(text);
        }
    }
}

/// Why a re-run of a finished append job does nothing, and what to run instead.
pub fn finished_already(recorded_at: &str, partitions: &str, rows: u64) -> String {
    format!(
        "nothing to do: this job already finished at {recorded_at} ({partitions}, {} rows); to replace the target's rows with a new copy, run with --set target.mode=truncate (--restart alone would add them a second time)",
        report::group(rows)
    )
}

/// What a step does with the run the checkpoint table records.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Go on with the recorded run.
    Resume,
    /// A new run; `forget`: the recorded one is deleted first, in the same
    /// transaction that records the new one.
    New { forget: bool },
    /// Nothing to do; the message says why.
    Nothing(String),
    /// The step cannot go on; `usage`: the command was the wrong one (exit 2).
    Refuse { usage: bool, message: String },
}

/// Whether an unfinished run's committed partitions may be kept when the rest
/// is copied from a newer snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumable {
    /// Yes: each partition is a range of values, the same in any snapshot.
    Yes,
    /// No (block ranges: an updated row moves to another block), but starting
    /// over is exact: the mode empties the target, or upserts.
    StartOver,
    /// No, and starting over would add the committed partitions' rows again.
    No,
}

impl Resumable {
    pub fn of(job: &Job) -> Resumable {
        match (plan::strategy(job), job.target.mode) {
            (Strategy::Stride | Strategy::Quantile, _) => Resumable::Yes,
            (_, Mode::Truncate | Mode::Replace | Mode::Overwrite | Mode::Upsert) => {
                Resumable::StartOver
            }
            (_, Mode::Append | Mode::ErrorIfExists) => Resumable::No,
        }
    }
}

/// Decides how a step starts, from the run recorded for this job (`earlier`) and
/// the target table's OID now. `finished_is_final`: a finished run is not repeated
/// without `--restart` (append mode, not incremental).
pub fn decide(
    step: Step,
    earlier: Option<&RecordedRun>,
    target_oid: Option<i64>,
    restart: bool,
    full_refresh: bool,
    finished_is_final: bool,
    resumable: Resumable,
) -> Start {
    let starts_runs = matches!(step, Step::Whole | Step::Prepare);
    let Some(run) = earlier else {
        return match step {
            Step::Whole | Step::Prepare => Start::New { forget: false },
            Step::Shard(_) => Start::Refuse {
                usage: true,
                message: "--shard: no prepared run of this job in the checkpoint table (expected `stride prepare JOB` first, then the shards)".to_string(),
            },
            Step::Finish => Start::Refuse {
                usage: true,
                message: "finish: no run of this job in the checkpoint table (expected `stride prepare JOB` and the shards first)".to_string(),
            },
        };
    };
    if starts_runs && (restart || full_refresh) {
        return Start::New { forget: true };
    }
    // A run into a table that was dropped (and maybe created again) since is
    // stale: its partitions went with the old table.
    if run.target_oid != target_oid {
        return if starts_runs {
            Start::New { forget: true }
        } else {
            Start::Refuse {
                usage: false,
                message: "the target table was dropped (or created again) since this run was prepared: run `stride prepare` again".to_string(),
            }
        };
    }
    if let Some(problem) = &run.failed_check {
        return Start::Refuse {
            usage: false,
            message: format!(
                "the earlier run of this job failed its check ({problem}); its partitions cannot be trusted, so it is not resumed: run with --restart (in append mode, remove its rows from the target first and add --append-again, or copy with --set target.mode=truncate)"
            ),
        };
    }
    let partitions = format!("{} partitions", run.partitions);
    if run.finished {
        return match step {
            Step::Whole | Step::Prepare if finished_is_final => {
                let rows: u64 = run.done.iter().map(|d| d.1).sum();
                Start::Nothing(finished_already(&run.recorded_at, &partitions, rows))
            }
            Step::Whole | Step::Prepare => Start::New { forget: true },
            Step::Shard(_) => Start::Nothing(format!(
                "nothing to do: the run of this job finished at {}; `stride prepare` sets up the next one",
                run.recorded_at
            )),
            Step::Finish => Start::Nothing(format!(
                "nothing to do: the run of this job already finished at {}",
                run.recorded_at
            )),
        };
    }
    match (step, resumable) {
        (Step::Prepare, _) => Start::Nothing(format!(
            "already prepared: {} of {partitions} are copied; run the shards, then `stride finish` (or prepare --restart to start over)",
            run.done.len()
        )),
        (Step::Whole, Resumable::StartOver) if !run.done.is_empty() => {
            Start::New { forget: true }
        }
        (Step::Whole, Resumable::No) if !run.done.is_empty() => Start::Refuse {
            usage: false,
            message: format!(
                "the unfinished earlier run of this job committed {} of {partitions} by block range (strategy \"ctid\") in another snapshot, and the rest cannot be copied from a new one without copying updated rows twice or missing them: remove its rows from the target and run with --restart --append-again (or use mode \"truncate\", which starts over by itself)",
                run.done.len()
            ),
        },
        _ => Start::Resume,
    }
}

/// `--restart` of an append job whose earlier run committed rows would add every
/// one of them a second time: refused (exit 2) with the ways out, unless the
/// user chose it with `--append-again`.
pub fn appending_twice(
    job: &Job,
    step: Step,
    earlier: Option<&RecordedRun>,
    opts: &RunOptions,
    path: &Path,
) -> Option<Start> {
    let run = earlier?;
    let rows: u64 = run.done.iter().map(|d| d.1).sum();
    appended(
        job,
        step,
        rows,
        run.done.len(),
        run.partitions as usize,
        opts,
        path,
    )
}

/// The refusal of `--restart` for an append job whose earlier run already
/// added `rows` (`done` of `partitions`), with the two commands that work; for
/// every route.
pub fn appended(
    job: &Job,
    step: Step,
    rows: u64,
    done: usize,
    partitions: usize,
    opts: &RunOptions,
    path: &Path,
) -> Option<Start> {
    if job.target.mode != Mode::Append
        || !opts.restart
        || opts.append_again
        || done == 0
        || !matches!(step, Step::Whole | Step::Prepare)
    {
        return None;
    }
    let command = if step == Step::Prepare {
        "prepare"
    } else {
        "run"
    };
    let path = super::shell_words(std::iter::once(path.display().to_string()));
    Some(Start::Refuse {
        usage: true,
        message: format!(
            "--restart: the earlier run of this append job already added {} rows ({done} of {partitions} partitions) to {}, and copying again would add each of them a second time. To replace them: `stride --set target.mode=truncate {command} {path}`; to add them again after deleting them yourself (or to have them twice): `stride {command} --restart --append-again {path}`",
            report::group(rows),
            job.target.table
        ),
    })
}

/// How the run starts, from what the earlier run left: `(fresh, forget)` (a new
/// run, deleting the earlier one's record first), or `None` when there is
/// nothing to do (said with `say`).
pub fn how_to_start(
    job: &Job,
    earlier: Option<&RecordedRun>,
    target_oid: Option<i64>,
    opts: &RunOptions,
    path: &Path,
    say: &dyn Fn(&str),
) -> Result<Option<(bool, bool)>> {
    let step = opts.step;
    let table = &job.target.table;
    let start = decide(
        step,
        earlier,
        target_oid,
        opts.restart,
        opts.full_refresh,
        job.target.mode == Mode::Append && job.incremental.is_none(),
        Resumable::of(job),
    );
    let start = appending_twice(job, step, earlier, opts, path).unwrap_or(start);
    Ok(Some(match start {
        Start::Nothing(message) => {
            say(&format!("{message}\n"));
            return Ok(None);
        }
        Start::Refuse {
            usage: true,
            message,
        } => return Err(JobError::new(message).into()),
        Start::Refuse { message, .. } => return Err(anyhow::anyhow!(message)),
        Start::Resume => (false, false),
        Start::New { forget } => {
            if let (true, Some(run)) = (forget, earlier) {
                if !run.finished && !opts.restart && Resumable::of(job) == Resumable::StartOver {
                    info!(
                        "the unfinished earlier run copied block ranges in another snapshot: starting over ({} of {} partitions again)",
                        run.done.len(),
                        run.partitions
                    );
                } else if run.target_oid != target_oid {
                    info!("the earlier run of this job wrote into a table that is gone: starting afresh");
                } else if opts.restart
                    && job.target.mode == Mode::Append
                    && !run.finished
                    && !run.done.is_empty()
                {
                    warn!(
                        "--restart in append mode: the {} partitions the unfinished earlier run committed stay in {table} and are copied again (run without --restart to resume instead)",
                        run.done.len()
                    );
                }
            }
            (true, forget)
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::{decide, Resumable, Start, Step};
    use crate::checkpoint::RecordedRun;
    use crate::cli::Shard;

    fn recorded(finished: bool, target_oid: i64, done: usize) -> RecordedRun {
        RecordedRun {
            bounds: Some((0, 100)),
            partitions: 4,
            finished,
            recorded_at: "2026-11-22 01:00:00+00".to_string(),
            target_oid: Some(target_oid),
            failed_check: None,
            window: None,
            boundaries: None,
            deferred_indexes: Vec::new(),
            estimates: Vec::new(),
            done: (0..done).map(|i| (i, 10, 100)).collect(),
        }
    }

    #[test]
    fn how_each_step_starts() {
        let shard = Step::Shard(Shard::Of { index: 0, count: 2 });
        let new = Start::New { forget: false };
        let again = Start::New { forget: true };
        let none = None;
        let open = recorded(false, 7, 1);
        let closed = recorded(true, 7, 4);
        // No run recorded: whole runs and prepare start one, shards and finish refuse.
        assert_eq!(
            decide(
                Step::Whole,
                none,
                Some(7),
                false,
                false,
                true,
                Resumable::Yes
            ),
            new
        );
        assert_eq!(
            decide(
                Step::Prepare,
                none,
                Some(7),
                false,
                false,
                true,
                Resumable::Yes
            ),
            new
        );
        for step in [shard, Step::Finish] {
            match decide(step, none, Some(7), false, false, true, Resumable::Yes) {
                Start::Refuse {
                    usage: true,
                    message,
                } => {
                    assert!(message.contains("stride prepare JOB"), "{message}")
                }
                other => panic!("{step:?}: {other:?}"),
            }
        }
        // An unfinished run: resumed, except by prepare, which leaves it be.
        for step in [Step::Whole, shard, Step::Finish] {
            assert_eq!(
                decide(
                    step,
                    Some(&open),
                    Some(7),
                    false,
                    false,
                    true,
                    Resumable::Yes
                ),
                Start::Resume
            );
        }
        match decide(
            Step::Prepare,
            Some(&open),
            Some(7),
            false,
            false,
            true,
            Resumable::Yes,
        ) {
            Start::Nothing(m) => {
                assert!(m.starts_with("already prepared: 1 of 4 partitions"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(
                Step::Prepare,
                Some(&open),
                Some(7),
                true,
                false,
                true,
                Resumable::Yes
            ),
            again
        );
        assert_eq!(
            decide(
                Step::Whole,
                Some(&open),
                Some(7),
                false,
                true,
                false,
                Resumable::Yes
            ),
            again
        );
        // A finished run: final in append mode, followed by a new one otherwise.
        match decide(
            Step::Whole,
            Some(&closed),
            Some(7),
            false,
            false,
            true,
            Resumable::Yes,
        ) {
            Start::Nothing(m) => assert!(
                m.contains("already finished") && m.contains("40 rows"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(
                Step::Whole,
                Some(&closed),
                Some(7),
                false,
                false,
                false,
                Resumable::Yes
            ),
            again
        );
        assert_eq!(
            decide(
                Step::Prepare,
                Some(&closed),
                Some(7),
                false,
                false,
                false,
                Resumable::Yes
            ),
            again
        );
        for step in [shard, Step::Finish] {
            assert!(matches!(
                decide(
                    step,
                    Some(&closed),
                    Some(7),
                    false,
                    false,
                    false,
                    Resumable::Yes
                ),
                Start::Nothing(_)
            ));
        }
        // The table was dropped since: a new run, or a refusal for shards and finish.
        assert_eq!(
            decide(
                Step::Whole,
                Some(&open),
                Some(8),
                false,
                false,
                true,
                Resumable::Yes
            ),
            again
        );
        for step in [shard, Step::Finish] {
            assert!(matches!(
                decide(step, Some(&open), None, false, false, true, Resumable::Yes),
                Start::Refuse { usage: false, .. }
            ));
        }
        // Block ranges are not resumed from a newer snapshot: started over where
        // that is exact, refused where it would add rows twice.
        assert_eq!(
            decide(
                Step::Whole,
                Some(&open),
                Some(7),
                false,
                false,
                false,
                Resumable::StartOver
            ),
            again
        );
        assert!(matches!(
            decide(
                Step::Whole,
                Some(&open),
                Some(7),
                false,
                false,
                true,
                Resumable::No
            ),
            Start::Refuse { usage: false, .. }
        ));
        let untouched = recorded(false, 7, 0);
        assert_eq!(
            decide(
                Step::Whole,
                Some(&untouched),
                Some(7),
                false,
                false,
                true,
                Resumable::No
            ),
            Start::Resume
        );
        // A run that failed its check is not resumed by anyone.
        let failed = RecordedRun {
            failed_check: Some("coverage".to_string()),
            ..recorded(false, 7, 4)
        };
        for step in [Step::Whole, shard, Step::Finish] {
            assert!(matches!(
                decide(
                    step,
                    Some(&failed),
                    Some(7),
                    false,
                    false,
                    true,
                    Resumable::Yes
                ),
                Start::Refuse { usage: false, .. }
            ));
        }
    }
}
