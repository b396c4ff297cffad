//! Write modes beyond append and truncate: `upsert` (COPY into a staging table
//! then `INSERT ... ON CONFLICT`, or batched INSERTs with the same clause),
//! `error-if-exists`, and `reset_sequences` after any mode. Each test checks what
//! a user would: exit codes, messages, row counts and checksums on both sides.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::common::*;

/// `items` with ids `1..=rows`; `name` and `qty` derived from the id.
async fn seed_items(db: &TestDb, rows: i64) {
    db.exec(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, code text NOT NULL UNIQUE, name text, qty integer);
         INSERT INTO items SELECT g, 'c' || g, 'item ' || g, g % 97 FROM generate_series(1, {rows}) g;"
    ))
    .await;
}

/// The target's `items`: ids 1..=1000 with stale names (every other one also a
/// stale qty), and ten rows only the target holds (ids above 10,000).
async fn seed_stale_target(db: &TestDb) {
    db.exec(
        "CREATE TABLE items (id bigint PRIMARY KEY, code text NOT NULL UNIQUE, name text, qty integer);
         INSERT INTO items SELECT g, 'c' || g, 'stale ' || g, CASE WHEN g % 2 = 0 THEN -1 ELSE g % 97 END
           FROM generate_series(1, 1000) g;
         INSERT INTO items SELECT g, 'mine ' || g, 'mine', 0 FROM generate_series(10001, 10010) g;",
    )
    .await;
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_updates_changed_rows_inserts_new_ones_and_keeps_the_targets_own() {
    for method in ["copy", "insert"] {
        let pair = Pair::new(&format!("upsert_{method}")).await;
        seed_items(&pair.source, 3000).await;
        seed_stale_target(&pair.target).await;
        let mine = pair
            .target
            .checksum("(SELECT * FROM items WHERE id > 10000)")
            .await;
        // No target.key: the target's primary key (id).
        let job = job_file(&job_text(
            &pair,
            "table = \"items\"",
            "[partition]\ncolumn = \"id\"\ncount = 4",
            &format!("mode = \"upsert\"\nmethod = \"{method}\"\nbatch_size = 250"),
        ));
        let out = run_job(&job.path);
        assert_exit(&out, 0);
        let summary = stdout(&out);
        assert!(summary.contains("partitions 4 written of 4"), "{summary}");
        // Rows counted are the rows read: 1,000 updated and 2,000 inserted.
        assert!(summary.contains("rows 3,000"), "{summary}");
        assert!(summary.contains("upsert on (id)"), "{summary}");
        assert_eq!(
            pair.assert_same("items", "(SELECT * FROM items WHERE id <= 10000)")
                .await,
            3000,
            "{method}"
        );
        assert_eq!(
            pair.target
                .checksum("(SELECT * FROM items WHERE id > 10000)")
                .await,
            mine,
            "{method}: rows only in the target changed"
        );
        // A re-run of a finished upsert job syncs again: changed source rows win.
        pair.source
            .exec("UPDATE items SET name = 'renamed' WHERE id % 100 = 0; INSERT INTO items VALUES (5000, 'c5000', 'new', 1);")
            .await;
        assert_exit(&run_job(&job.path), 0);
        assert_eq!(
            pair.assert_same("items", "(SELECT * FROM items WHERE id <= 10000)")
                .await,
            3001,
            "{method}: second run"
        );
        assert_eq!(pair.target.count("items").await, 3011, "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_conflict_skip_inserts_new_rows_and_leaves_existing_ones_alone() {
    for method in ["copy", "insert"] {
        let pair = Pair::new(&format!("upsert_skip_{method}")).await;
        seed_items(&pair.source, 3000).await;
        seed_stale_target(&pair.target).await;
        let before = pair.target.checksum("items").await;
        // The key is a unique constraint other than the primary key.
        let job = job_file(&job_text(
            &pair,
            "table = \"items\"",
            "[partition]\ncolumn = \"id\"\ncount = 3",
            &format!(
                "mode = \"upsert\"\nkey = [\"code\"]\non_conflict = \"skip\"\nmethod = \"{method}\""
            ),
        ));
        let out = run_job(&job.path);
        assert_exit(&out, 0);
        assert!(stdout(&out).contains("rows 3,000"), "{}", text(&out));
        assert_eq!(pair.target.count("items").await, 3010, "{method}");
        // Every row that was there is exactly as it was...
        assert_eq!(
            pair.target
                .checksum("(SELECT * FROM items WHERE id <= 1000 OR id > 10000)")
                .await,
            before,
            "{method}"
        );
        // ...and the new ones are the source's.
        assert_eq!(
            pair.source
                .checksum("(SELECT * FROM items WHERE id > 1000)")
                .await,
            pair.target
                .checksum("(SELECT * FROM items WHERE id > 1000 AND id <= 10000)")
                .await,
            "{method}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_a_unique_index_or_no_key_at_all_exits_2_and_writes_nothing() {
    let pair = Pair::new("upsert_nokey").await;
    seed_items(&pair.source, 100).await;
    pair.target
        .exec("CREATE TABLE items (id bigint, code text, name text, qty integer); INSERT INTO items VALUES (1, 'c1', 'stale', 0);")
        .await;
    let before = pair.target.checksum("items").await;
    let cases = [
        (
            "mode = \"upsert\"",
            "target.key: not set, and \"items\" has no primary key to default to (expected target.key = [\"column\", ...]",
        ),
        (
            "mode = \"upsert\"\nkey = [\"id\"]",
            "target.key: \"items\" has no unique index or constraint on exactly (id), which ON CONFLICT needs (it has none;",
        ),
        (
            "mode = \"upsert\"\nkey = [\"nope\"]",
            "target.key: column \"nope\" is not among the copied columns",
        ),
        (
            "on_conflict = \"skip\"",
            "target.on_conflict: set while target.mode is \"append\" (expected it only with mode = \"upsert\")",
        ),
    ];
    for (target_keys, message) in cases {
        let job = job_file(&job_text(&pair, "table = \"items\"", "", target_keys));
        let out = run_job(&job.path);
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains(message),
            "{target_keys}: {}",
            text(&out)
        );
        assert_eq!(pair.target.checksum("items").await, before, "{target_keys}");
        assert_eq!(
            pair.target
                .scalar_i64("SELECT count(*) FROM pg_class WHERE relname = 'stride_checkpoints'")
                .await,
            0,
            "{target_keys}: the checkpoint table was created"
        );
    }
    // `check` finds the same problem, and writes nothing either.
    let job = job_file(&job_text(
        &pair,
        "table = \"items\"",
        "",
        "mode = \"upsert\"",
    ));
    let out = stride(&["check", job.path.to_str().unwrap()], &[]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("target.key: not set"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_into_a_missing_table_creates_it_with_the_key_as_primary_key() {
    let pair = Pair::new("upsert_create").await;
    seed_items(&pair.source, 2000).await;
    // A query has no primary key for a created table to default to (a source
    // table's is used: tests/it/create.rs).
    let without_key = job_file(&job_text(
        &pair,
        "query = \"SELECT * FROM items\"",
        "",
        "table = \"synced\"\nmode = \"upsert\"",
    ));
    let out = run_job(&without_key.path);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("target.key: not set, and \"synced\" does not exist yet"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pair.target
            .scalar_i64(
                "SELECT count(*) FROM pg_class WHERE relname IN ('synced', 'stride_checkpoints')"
            )
            .await,
        0
    );

    let job = job_file(&job_text(
        &pair,
        "table = \"items\"",
        "[partition]\ncolumn = \"id\"\ncount = 2",
        "table = \"synced\"\nmode = \"upsert\"\nkey = [\"code\"]",
    ));
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(pair.assert_same("items", "synced").await, 2000);
    assert_eq!(
        pair.target
            .scalar_string(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'synced'::regclass AND contype = 'p'"
            )
            .await,
        "PRIMARY KEY (code)"
    );
    pair.source
        .exec("UPDATE items SET qty = qty + 1000 WHERE id <= 10")
        .await;
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(pair.assert_same("items", "synced").await, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_repeated_in_the_source_fails_the_partition_naming_the_key() {
    let pair = Pair::new("upsert_dup").await;
    pair.source
        .exec("CREATE TABLE items (id bigint, name text); INSERT INTO items VALUES (1, 'a'), (2, 'b'), (1, 'again');")
        .await;
    pair.target
        .exec("CREATE TABLE items (id bigint PRIMARY KEY, name text); INSERT INTO items VALUES (1, 'old');")
        .await;
    for method in ["copy", "insert"] {
        let job = job_file(&job_text(
            &pair,
            "table = \"items\"",
            "",
            &format!("mode = \"upsert\"\nmethod = \"{method}\""),
        ));
        let out = run_job(&job.path);
        assert_exit(&out, 1);
        let err = stderr(&out);
        assert!(
            err.contains("source rows repeat a value of target.key (id) within one partition"),
            "{method}: {err}"
        );
        assert!(
            err.contains("cannot affect row a second time"),
            "{method}: {err}"
        );
        assert!(!err.contains("retry"), "{method}: not transient: {err}");
        assert_eq!(
            pair.target.checksum("items").await.0,
            1,
            "{method}: the partition rolled back"
        );
        assert_eq!(
            pair.target.scalar_string("SELECT name FROM items").await,
            "old"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_during_an_upsert_see_old_rows_then_whole_partitions_never_fewer() {
    let pair = Pair::new("upsert_readers").await;
    // Partitions of 10,000 ids: 0-4 only update rows the target has, 5-9 insert.
    seed_items(&pair.source, 100_000).await;
    pair.target
        .exec(
            "CREATE TABLE items (id bigint PRIMARY KEY, code text NOT NULL UNIQUE, name text, qty integer);
             INSERT INTO items SELECT g, 'c' || g, 'old', 0 FROM generate_series(1, 50000) g;",
        )
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let mut conn = pair.target.conn().await;
        tokio::spawn(async move {
            let mut seen: Vec<(i64, i64)> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let counts: (i64, i64) = sqlx::query_as(
                    "SELECT count(*), count(*) FILTER (WHERE name = 'old') FROM items",
                )
                .fetch_one(&mut conn)
                .await
                .unwrap();
                seen.push(counts);
            }
            seen
        })
    };
    let job = job_file(&job_text(
        &pair,
        "table = \"items\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 100001\ncount = 10\n[run]\nparallelism = 2",
        "mode = \"upsert\"",
    ));
    let path = job.path.clone();
    let out = tokio::task::spawn_blocking(move || run_job(&path))
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    assert_exit(&out, 0);
    assert_eq!(pair.assert_same("items", "items").await, 100_000);
    let mut states = seen.clone();
    states.dedup();
    assert!(
        states.len() > 2,
        "the reader saw only {states:?}: it did not read while the copy ran"
    );
    for (i, &(rows, old)) in seen.iter().enumerate() {
        // Whole partitions only: 10,000 rows inserted or updated at a time.
        assert!(
            rows >= 50_000 && rows % 10_000 == 0,
            "read {i}: {rows} rows"
        );
        assert!(old % 10_000 == 0, "read {i}: {old} old rows");
        if i > 0 {
            let (last_rows, last_old) = seen[i - 1];
            assert!(rows >= last_rows, "read {i}: {rows} rows after {last_rows}");
            assert!(old <= last_old, "read {i}: {old} old rows after {last_old}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_if_exists_refuses_a_table_with_rows_and_writes_nothing() {
    let pair = Pair::new("eie_rows").await;
    seed_items(&pair.source, 500).await;
    pair.target
        .exec("CREATE TABLE items (id bigint, code text, name text, qty integer); INSERT INTO items VALUES (1, 'c1', 'mine', 0);")
        .await;
    let before = pair.target.checksum("items").await;
    let job = job_file(&job_text(
        &pair,
        "table = \"items\"",
        "[partition]\ncolumn = \"id\"\ncount = 2",
        "mode = \"error-if-exists\"",
    ));
    // `check` refuses it as `run` does.
    for command in ["run", "check"] {
        let out = stride(&[command, job.path.to_str().unwrap()], &[]);
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains(
                "target.mode: is \"error-if-exists\" and target table \"items\" already holds rows"
            ),
            "{command}: {}",
            text(&out)
        );
    }
    assert_eq!(pair.target.checksum("items").await, before);
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(*) FROM pg_class WHERE relname = 'stride_checkpoints'")
            .await,
        0,
        "the checkpoint table was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_if_exists_copies_into_an_empty_or_missing_table_once() {
    let pair = Pair::new("eie_empty").await;
    seed_items(&pair.source, 500).await;
    pair.target
        .exec("CREATE TABLE empty_items (id bigint, code text, name text, qty integer)")
        .await;
    for table in ["empty_items", "new_items"] {
        let job = job_file(&job_text(
            &pair,
            "table = \"items\"",
            "[partition]\ncolumn = \"id\"\ncount = 2",
            &format!("table = \"{table}\"\nmode = \"error-if-exists\""),
        ));
        assert_exit(&run_job(&job.path), 0);
        assert_eq!(pair.assert_same("items", table).await, 500, "{table}");
        // The table now holds rows: running the finished job again is refused.
        let again = run_job(&job.path);
        assert_exit(&again, 2);
        assert!(
            stderr(&again).contains("already holds rows"),
            "{table}: {}",
            text(&again)
        );
        assert_eq!(pair.target.count(table).await, 500, "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_error_if_exists_run_resumes_into_its_own_rows() {
    let pair = Pair::new("eie_resume").await;
    pair.source
        .exec("CREATE TABLE big (id bigint, pad text); INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 300000) g;")
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"big\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 300001\ncount = 30\n[run]\nparallelism = 2",
        "mode = \"error-if-exists\"\nmethod = \"insert\"\nbatch_size = 200",
    ));
    let path = job.path.to_str().unwrap();
    let running = Running::start(&["run", path]).wait_for_line("partition written");
    running.signal("INT");
    let interrupted = running.finish();
    assert_exit(&interrupted, 130);
    let committed = pair.target.count("big").await;
    assert!(
        committed > 0 && committed < 300_000,
        "{committed} rows\n{}",
        text(&interrupted)
    );
    // --restart would be a new run into a table with rows: refused, nothing written.
    let restart = stride(&["run", "--restart", path], &[]);
    assert_exit(&restart, 2);
    assert!(
        stderr(&restart).contains("already holds rows"),
        "{}",
        text(&restart)
    );
    assert_eq!(pair.target.count("big").await, committed);
    // The same command resumes: the rows in the table are its own.
    let resumed = run_job(&job.path);
    assert_exit(&resumed, 0);
    assert!(
        stdout(&resumed).contains("skipped: committed by an earlier run"),
        "{}",
        text(&resumed)
    );
    assert_eq!(pair.assert_same("big", "big").await, 300_000);
}

/// A table with a serial column and one with an identity column, on both sides.
const SEQUENCED: &str = "
CREATE TABLE serials (id serial PRIMARY KEY, name text);
CREATE TABLE idents (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_are_set_past_the_copied_values_unless_turned_off() {
    for (reset, method) in [(true, "copy"), (true, "insert"), (false, "copy")] {
        let pair = Pair::new(&format!("sequences_{reset}_{method}")).await;
        pair.source.exec(SEQUENCED).await;
        pair.source
            .exec(
                "INSERT INTO serials (name) SELECT 'n' || g FROM generate_series(1, 1000) g;
                   INSERT INTO idents (name) SELECT 'n' || g FROM generate_series(1, 1000) g;",
            )
            .await;
        pair.target.exec(SEQUENCED).await;
        for (table, mode) in [("serials", "append"), ("idents", "upsert")] {
            let job = job_file(&job_text(
                &pair,
                &format!("table = \"{table}\""),
                "[partition]\ncolumn = \"id\"\ncount = 3",
                &format!("mode = \"{mode}\"\nmethod = \"{method}\"\nreset_sequences = {reset}"),
            ));
            let out = run_job(&job.path);
            assert_exit(&out, 0);
            assert_eq!(pair.assert_same(table, table).await, 1000);
            if reset {
                assert!(
                    stderr(&out).contains(&format!(
                        "set sequence \"public\".\"{table}_id_seq\" of \"{table}\".\"id\" to 1000"
                    )),
                    "{}",
                    text(&out)
                );
            }
            // The target's own next insert takes the column's default.
            let mut conn = pair.target.conn().await;
            let insert = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} (name) VALUES ('next')"
            )))
            .execute(&mut conn)
            .await;
            match (reset, insert) {
                (true, Ok(_)) => assert_eq!(
                    pair.target
                        .scalar_i64(&format!("SELECT id::int8 FROM {table} WHERE name = 'next'"))
                        .await,
                    1001
                ),
                (false, Err(e)) => assert!(
                    e.to_string().contains("duplicate key value"),
                    "{table}: {e}"
                ),
                (reset, insert) => {
                    panic!("{table} with reset_sequences = {reset}: the insert gave {insert:?}")
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_never_move_backwards_and_an_empty_table_leaves_them_alone() {
    let pair = Pair::new("sequences_forward").await;
    pair.source.exec(SEQUENCED).await;
    pair.source
        .exec("INSERT INTO serials (name) SELECT 'n' || g FROM generate_series(1, 100) g;")
        .await;
    pair.target.exec(SEQUENCED).await;
    pair.target
        .exec("SELECT setval('serials_id_seq', 5000)")
        .await;
    for table in ["serials", "idents"] {
        let job = job_file(&job_text(&pair, &format!("table = \"{table}\""), "", ""));
        assert_exit(&run_job(&job.path), 0);
    }
    let state = |sequence: &str| {
        format!("SELECT last_value::text || ' ' || is_called::text FROM {sequence}")
    };
    assert_eq!(
        pair.target.scalar_string(&state("serials_id_seq")).await,
        "5000 true",
        "moved backwards"
    );
    assert_eq!(
        pair.target.scalar_string(&state("idents_id_seq")).await,
        "1 false",
        "an empty table's sequence was touched"
    );
}
