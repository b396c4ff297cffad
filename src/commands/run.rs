//! `stride run`, `prepare`, `finish` and `run --shard` over every table of a
//! job file: each table checked first, then run on its route (PostgreSQL's
//! own, or across engines), parents first.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use crate::engine::native;
use crate::error::exit;
use crate::job::Job;
use crate::report::{self, Summary};
use crate::run::start::{RunOptions, Step};
use crate::run::{in_entry, RunEnd};

use super::order::{table_order, TableOrder};
use super::{load_tables, Ends};

/// A step of a run over every table of the job file. All are checked (and
/// connected) first, so a bad entry exits 2 before any table is written; then
/// they run one after the other, stopping at the first that does not succeed, or
/// all at once (`[run] tables = "concurrent"`). Several tables end with a summary
/// of them all.
pub(super) async fn run_tables(
    path: &Path,
    overrides: &[(String, String)],
    opts: &RunOptions,
) -> Result<Ends> {
    let (set, _) = load_tables(path, overrides).await?;
    let many = set.jobs.len() > 1;
    let started = Instant::now();
    let order = if many {
        Some(table_order(&set.jobs).await?)
    } else {
        None
    };
    // Every table is checked before any is written.
    let across = set.jobs.iter().any(super::transfer::crosses);
    let mut checked = Vec::with_capacity(set.jobs.len());
    for (i, job) in set.jobs.into_iter().enumerate() {
        let one = async {
            if across {
                let c = super::transfer::check(&job, opts.step).await?;
                return anyhow::Ok(Checked::Across(c, job));
            }
            let p = native::prepare(job).await?;
            native::check_before_writing(&p, opts).await?;
            anyhow::Ok(Checked::Native(p))
        };
        checked.push(one.await.map_err(|e| in_entry(many, i, e))?);
    }
    let Some(order) = order else {
        let one = checked.pop().expect("a job set holds at least one job");
        return Ok(Ends {
            runs: vec![one.run(path, opts).await?],
            not_started: Vec::new(),
        });
    };
    // A SQLite file takes one writer at a time: its tables run one after another.
    let concurrent = set.concurrent && !checked.iter().any(Checked::one_writer);
    let (ends, not_started) =
        run_in_order(checked, &order, concurrent, |c| c.run(path, opts)).await;
    if matches!(opts.step, Step::Whole | Step::Shard(_)) {
        let rows: Vec<(String, Option<&Summary>, u8)> = ends
            .iter()
            .map(|e| (e.table.clone(), e.summary.as_ref(), e.code))
            .collect();
        let text = report::render_tables(&rows, &not_started, started.elapsed());
        opts.human(&text);
    }
    Ok(Ends {
        runs: ends,
        not_started,
    })
}

/// A table of the job file, checked: on PostgreSQL's own route, or across
/// engines. (A handful per run: their size does not matter.)
#[allow(clippy::large_enum_variant)]
enum Checked {
    Native(native::Prepared),
    Across(super::transfer::Checked, Job),
}

impl Checked {
    fn table(&self) -> String {
        match self {
            Checked::Native(p) => p.job.target.table.to_string(),
            Checked::Across(_, job) => job.target.table.to_string(),
        }
    }

    fn one_writer(&self) -> bool {
        matches!(self, Checked::Across(_, job) if super::transfer::one_writer(job))
    }

    async fn run(self, path: &Path, opts: &RunOptions) -> Result<RunEnd> {
        match self {
            Checked::Native(p) => native::run(p, path, opts).await,
            Checked::Across(c, job) => super::transfer::run(c, job, opts, path).await,
        }
    }
}

/// Runs the tables parents first (the target's foreign keys among them): in
/// order, a table starts after the one before it succeeded; concurrently, as
/// soon as the tables it references have succeeded. A table whose parent did
/// not succeed is not started. Returns the ends in the order the tables
/// started, and the tables not started.
async fn run_in_order<F, Fut>(
    tables: Vec<Checked>,
    order: &TableOrder,
    concurrent: bool,
    run: F,
) -> (Vec<RunEnd>, Vec<String>)
where
    F: Fn(Checked) -> Fut,
    Fut: std::future::Future<Output = Result<RunEnd>>,
{
    let named = |table: String, end: Result<RunEnd>| {
        end.unwrap_or_else(|e| {
            eprintln!("error: {table}: {}", crate::error::chain(&e));
            RunEnd {
                code: crate::error::exit_code(&e),
                summary: None,
                fingerprint: String::new(),
                table,
            }
        })
    };
    let mut waiting: Vec<Option<Checked>> = tables.into_iter().map(Some).collect();
    let mut succeeded = vec![false; waiting.len()];
    let mut ends = Vec::new();
    if concurrent {
        let mut running = futures_util::stream::FuturesUnordered::new();
        let mut finished = Vec::new();
        loop {
            for &t in &order.order {
                if waiting[t].is_some() && order.parents[t].iter().all(|&p| succeeded[p]) {
                    let c = waiting[t].take().expect("checked just above");
                    let table = c.table();
                    let end = run(c);
                    running.push(async move { (t, named(table, end.await)) });
                }
            }
            let Some((t, end)) = futures_util::StreamExt::next(&mut running).await else {
                break;
            };
            succeeded[t] = end.code == exit::OK;
            finished.push((t, end));
        }
        for &t in &order.order {
            if let Some(i) = finished.iter().position(|(u, _)| *u == t) {
                ends.push(finished.swap_remove(i).1);
            }
        }
    } else {
        for &t in &order.order {
            let c = waiting[t].take().expect("each table runs once");
            let table = c.table();
            let end = named(table, run(c).await);
            let code = end.code;
            ends.push(end);
            if code != exit::OK {
                break;
            }
        }
    }
    let not_started = order
        .order
        .iter()
        .filter_map(|&t| waiting[t].as_ref().map(Checked::table))
        .collect();
    (ends, not_started)
}
