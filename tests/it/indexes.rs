//! `target.defer_indexes`: in truncate mode the target's secondary indexes are
//! dropped with the TRUNCATE and built again once every partition is in; their
//! definitions are kept in the run row, so an interrupted run still restores them.

use crate::common::*;

/// The target's index definitions, sorted, as one string.
async fn index_definitions(db: &TestDb) -> String {
    db.scalar_string(
        "SELECT coalesce(string_agg(pg_get_indexdef(indexrelid), E'\\n' ORDER BY indexrelid::regclass::text), '') \
         FROM pg_index WHERE indrelid = 'big'::regclass",
    )
    .await
}

async fn seed(pair: &Pair) {
    pair.source
        .exec(
            "CREATE TABLE big (id bigint PRIMARY KEY, kind int, at date, pad text);
             INSERT INTO big SELECT g, g % 7, DATE '2026-01-01' + g % 365, md5(g::text)
             FROM generate_series(1, 100000) g;",
        )
        .await;
    pair.target
        .exec(
            "CREATE TABLE big (id bigint PRIMARY KEY, kind int, at date, pad text);
             CREATE INDEX big_kind ON big (kind);
             CREATE INDEX big_at_kind ON big (at DESC, kind) WHERE kind > 0;
             CREATE UNIQUE INDEX big_pad ON big (pad);
             INSERT INTO big VALUES (-1, 0, NULL, 'old');",
        )
        .await;
}

fn job(pair: &Pair, extra_run: &str) -> JobFile {
    job_file(&job_text(
        pair,
        "table = \"big\"",
        &format!("[partition]\ncolumn = \"id\"\ncount = 8\n[run]\nparallelism = 2\n{extra_run}"),
        "mode = \"truncate\"\ndefer_indexes = true",
    ))
}

#[tokio::test]
async fn deferred_indexes_are_built_again_as_they_were() {
    let pair = Pair::new("indexes_defer").await;
    seed(&pair).await;
    let before = index_definitions(&pair.target).await;
    let job = job(&pair, "verify = \"checksum\"");
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("built 2 deferred indexes"),
        "{}",
        text(&out)
    );
    assert_eq!(index_definitions(&pair.target).await, before);
    assert_eq!(pair.assert_same("big", "big").await, 100_000);
}

#[tokio::test]
async fn an_interrupted_run_keeps_the_definitions_and_its_resume_restores_them() {
    let pair = Pair::new("indexes_resume").await;
    seed(&pair).await;
    let before = index_definitions(&pair.target).await;
    let job = job_file(&job_text(
        &pair,
        "table = \"big\"",
        "[partition]\ncolumn = \"id\"\ncount = 8\n[run]\nparallelism = 1",
        "mode = \"truncate\"\ndefer_indexes = true\nmethod = \"insert\"\nbatch_size = 100",
    ));
    let path = job.path.to_str().unwrap();
    let running = Running::start(&["run", path]).wait_for_line("partition written");
    running.signal("KILL");
    running.finish();
    // Dropped meanwhile; the unique index and the primary key stay.
    let during = index_definitions(&pair.target).await;
    assert!(
        !during.contains("big_kind") && during.contains("big_pad"),
        "{during}"
    );
    let resumed = stride(&["run", path], &[]);
    assert_exit(&resumed, 0);
    assert_eq!(index_definitions(&pair.target).await, before);
    assert_eq!(pair.assert_same("big", "big").await, 100_000);
    // --restart of a later interrupted run carries the definitions over.
    let running = Running::start(&["run", "--restart", path]).wait_for_line("partition written");
    running.signal("KILL");
    running.finish();
    assert_exit(&stride(&["run", "--restart", path], &[]), 0);
    assert_eq!(index_definitions(&pair.target).await, before);
}

#[tokio::test]
async fn defer_indexes_needs_a_target_that_starts_empty() {
    let pair = Pair::new("indexes_bad").await;
    seed(&pair).await;
    let job = job_file(&job_text(
        &pair,
        "table = \"big\"",
        "",
        "mode = \"append\"\ndefer_indexes = true",
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("target.defer_indexes: needs a target that starts empty"),
        "{}",
        text(&out)
    );
}
