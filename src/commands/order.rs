//! The order a job's tables run in: the foreign keys the target holds among
//! them, read before anything is written.

use anyhow::Result;

use crate::engine::Engine;
use crate::error::JobError;
use crate::job::{Job, JobSet};
use crate::order::{self, ForeignKey};
use crate::pattern;
use crate::sql::QualifiedName;

/// The tables of a job file, parents first.
pub(super) struct TableOrder {
    /// Places in the job file, in the order the tables run.
    pub(super) order: Vec<usize>,
    /// For each table (by place in the file), the tables it references.
    pub(super) parents: Vec<Vec<usize>>,
    /// The target tables' names, by place in the file, for messages.
    pub(super) names: Vec<String>,
}

impl TableOrder {
    /// What `plan` and `check` print.
    pub(super) fn describe(&self) -> String {
        order::describe(&self.names, &self.order, &self.parents)
    }
}

/// Reads the foreign keys among the jobs' target tables (tables on the same
/// target database only; a table not there yet has none) and orders the jobs.
///
/// # Errors
///
/// A job error (exit 2) when the keys form a cycle.
pub(super) async fn table_order(jobs: &[Job]) -> Result<TableOrder> {
    let names: Vec<String> = jobs.iter().map(|j| j.target.table.to_string()).collect();
    let mut keys = Vec::new();
    let mut done = vec![false; jobs.len()];
    for first in 0..jobs.len() {
        if done[first] {
            continue;
        }
        let url = &jobs[first].target.url;
        let same: Vec<usize> = (first..jobs.len())
            .filter(|&i| &jobs[i].target.url == url)
            .collect();
        for &i in &same {
            done[i] = true;
        }
        let tables: Vec<QualifiedName> =
            same.iter().map(|&i| jobs[i].target.table.clone()).collect();
        let found = crate::engine::foreign_keys(url, &tables, jobs[first].retries).await?;
        keys.extend(found.into_iter().map(|(name, child, parent)| ForeignKey {
            name,
            child: same[child],
            parent: same[parent],
        }));
    }
    let order = order::parents_first(jobs.len(), &keys).map_err(|cycle| {
        JobError::new(format!(
            "tables: {} (expected tables that load parents first: copy the tables of the cycle in a job of their own with one of these keys dropped)",
            order::describe_cycle(&names, &cycle)
        ))
    })?;
    Ok(TableOrder {
        order,
        parents: order::parents(jobs.len(), &keys),
        names,
    })
}

/// Expands the job file's pattern entries from the source's catalogue (one
/// read per pattern); returns what each matched, as `plan` prints it.
///
/// # Errors
///
/// A job error (exit 2) for a pattern that matches nothing, or a table two
/// entries copy.
pub(super) async fn expand_patterns(set: &mut JobSet) -> Result<Vec<String>> {
    let mut found = Vec::with_capacity(set.patterns.len());
    let mut lines = Vec::with_capacity(set.patterns.len());
    for p in &set.patterns {
        let job = &p.stand_in;
        let (tables, default_schema) = crate::engine::tables(&job.source.url, job.retries).await?;
        let mut matched = pattern::select(&tables, &p.pattern, &p.exclude, &default_schema);
        if !Engine::of(&job.source.url).has_schemas() {
            for t in &mut matched {
                t.schema = None;
            }
        }
        // A source that was once a target holds a checkpoint table: stride's
        // bookkeeping, not data, and copying it would write into this job's own.
        if let Some(cp) = &job.checkpoint_table {
            let schema_of = |t: &QualifiedName| t.schema.clone().unwrap_or(default_schema.clone());
            matched.retain(|t| !(t.name == cp.name && schema_of(t) == schema_of(cp)));
        }
        let names: Vec<String> = matched.iter().map(ToString::to_string).collect();
        let excluded: Vec<&str> = p.exclude.iter().map(|x| x.text.as_str()).collect();
        lines.push(format!(
            "tables[{}]: {:?}{} matches {} table{}: {}",
            p.entry,
            p.pattern.text,
            if excluded.is_empty() {
                String::new()
            } else {
                format!(" excluding {excluded:?}")
            },
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        ));
        found.push(matched);
    }
    set.expand(&found)?;
    Ok(lines)
}
