//! `verify --repair` where the target is not stride's alone: in upsert mode and
//! in append mode with a key it changes only what differs, by key, and keeps
//! the rows of other writers in the job's ranges; in append mode without a key
//! it refuses, saying what a range repair would delete; in truncate mode it
//! empties the differing ranges and copies them again, as before.

use crate::common::*;

/// Stride's rows: even ids 2..=2000, every tenth value NULL.
async fn seeded(label: &str) -> Pair {
    let pair = Pair::new(label).await;
    pair.source
        .exec(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, CASE WHEN g % 10 = 0 THEN NULL ELSE 'v' || g END FROM generate_series(2, 2000, 2) g;",
        )
        .await;
    pair
}

const STRIDE_ROWS: &str = "(SELECT * FROM t WHERE id % 2 = 0)";
const OTHER_ROWS: &str = "(SELECT * FROM t WHERE id % 2 = 1)";

/// Spoils stride's rows in partitions 0, 2 and 3 (of 4 over 2..2000): values
/// changed in 0 (id 100), 2 (1500) and 3 (1510, a NULL), rows deleted in 0
/// (200, 202) and 3 (1998).
async fn spoil(pair: &Pair) {
    pair.target
        .exec(
            "UPDATE t SET v = 'tampered' WHERE id IN (100, 1500);
             UPDATE t SET v = 'was null' WHERE id = 1510;
             DELETE FROM t WHERE id IN (200, 202, 1998);",
        )
        .await;
}

/// A consolidated target: another writer's rows (odd ids) between stride's,
/// inside every partition's range, in a table with a primary key.
async fn repairs_by_key_keeping_other_rows(label: &str, target_keys: &str) {
    let pair = seeded(label).await;
    pair.target
        .exec(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'other ' || g FROM generate_series(1, 1999, 2) g;",
        )
        .await;
    let other = pair.target.checksum(OTHER_ROWS).await;
    assert_eq!(other.0, 1000);
    let file = job_file(&job_text(
        &pair,
        "table = \"t\"",
        "[partition]\ncolumn = \"id\"\ncount = 4",
        target_keys,
    ));
    let job = file.path.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_stride");
    assert_exit(&stride(&["run", job], &[]), 0);
    spoil(&pair).await;

    let out = stride(&["verify", job], &[]);
    assert_exit(&out, 1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "verify (row counts and checksums): 1 of 4 partitions match",
        "        0  < 502 or NULL           250           499  DIFFERENT by key (2 missing, 1 other values, 251 other rows)",
        "        1  [502, 1002)             250           500  ok by key (250 other rows)",
        "        2  [1002, 1501)            250           499  DIFFERENT by key (0 missing, 1 other values, 249 other rows)",
        "        3  >= 1501                 250           499  DIFFERENT by key (1 missing, 1 other values, 250 other rows)",
        "partition 0 (< 502 or NULL): 251 target rows with a key (id) the source does not have, e.g. (id) = (1)",
        "partition 3 (>= 1501): 250 target rows with a key (id) the source does not have, e.g. (id) = (1501)",
        &format!("these 1,000 rows are kept: they may be another writer's (another job, the application); if they are this job's leftovers, `{bin} verify --repair --delete-extra --by checksum {job}` deletes them"),
    ] {
        assert!(stdout.lines().any(|l| l == line), "no line {line:?} in\n{}", text(&out));
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "error: 3 partitions differ; `{bin} verify --repair --by checksum {job}` copies them again"
        )),
        "{}",
        text(&out)
    );
    // --delete-extra only goes with --repair.
    assert_exit(&stride(&["verify", "--delete-extra", job], &[]), 2);

    // Row versions of stride's rows that were not spoilt: a repair leaves them be.
    let versions = "SELECT md5(string_agg(xmin::text, ',' ORDER BY id)) FROM t \
                    WHERE id % 2 = 0 AND id NOT IN (100, 1500, 1510, 200, 202, 1998)";
    let untouched = pair.target.scalar_string(versions).await;
    let out = stride(&["verify", "--repair", job], &[]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "repaired partition 0 (< 502 or NULL) by key (id): 3 rows written (missing or different) of 250 read from the source",
        "repaired partition 2 ([1002, 1501)) by key (id): 1 rows written (missing or different) of 250 read from the source",
        "repaired partition 3 (>= 1501) by key (id): 2 rows written (missing or different) of 250 read from the source",
        "verify (row counts and checksums): 3 of 3 partitions match",
        "        0  < 502 or NULL           250           501  ok by key (251 other rows)",
    ] {
        assert!(stdout.lines().any(|l| l == line), "no line {line:?} in\n{}", text(&out));
    }
    assert!(!stdout.contains("repaired partition 1"), "{}", text(&out));
    // The other writer's rows are untouched, stride's are the source's again.
    assert_eq!(pair.target.checksum(OTHER_ROWS).await, other);
    assert_eq!(
        pair.target.checksum(STRIDE_ROWS).await,
        pair.source.checksum("t").await
    );
    assert_eq!(pair.target.scalar_string(versions).await, untouched);

    let out = stride(&["verify", job], &[]);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("verify (row counts and checksums): 4 of 4 partitions match"),
        "{}",
        text(&out)
    );

    // If they are stride's leftovers after all, the printed command deletes
    // them, run as printed.
    let command = printed_command(&text(&out), bin, "--delete-extra");
    assert_eq!(
        command,
        format!("{bin} verify --repair --delete-extra --by checksum {job}")
    );
    let out = sh(&command);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("repaired partition 0 (< 502 or NULL) by key (id): 0 rows written (missing or different) of 250 read from the source, 251 target rows the source does not have deleted"),
        "{}",
        text(&out)
    );
    assert_eq!(pair.assert_same("t", "t").await, 1000);
    let out = stride(&["verify", job], &[]);
    assert_exit(&out, 0);
    assert!(!text(&out).contains("other rows"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upsert_repair_writes_only_what_differs_and_keeps_other_writers_rows() {
    repairs_by_key_keeping_other_rows("repair_upsert", "mode = \"upsert\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_repair_into_a_table_with_a_key_repairs_by_it() {
    repairs_by_key_keeping_other_rows(
        "repair_append_key",
        "mode = \"append\"\nmethod = \"insert\"",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_repair_without_a_key_is_refused_until_asked_to_delete() {
    let pair = seeded("repair_append_nokey").await;
    // Other rows only in the ranges of partitions 0 and 3, the spoilt ones.
    pair.target
        .exec(
            "CREATE TABLE t (id int, v text);
             INSERT INTO t VALUES (101, 'other 101'), (103, 'other 103'), (1601, 'other 1601');",
        )
        .await;
    let file = job_file(&job_text(
        &pair,
        "table = \"t\"",
        "[partition]\ncolumn = \"id\"\ncount = 4",
        "mode = \"append\"",
    ));
    let job = file.path.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_stride");
    assert_exit(&stride(&["run", job], &[]), 0);
    spoil(&pair).await;
    let before = pair.target.checksum("t").await;

    let out = stride(&["verify", "--repair", job], &[]);
    assert_exit(&out, 2);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("error: --repair: target.mode is \"append\" and \"t\" has no primary key or unique index on copied columns, so this job's rows cannot be told from other rows there; a repair would empty each differing partition's range and copy it again, deleting every row the target holds in it: partition 0 (< 502 or NULL): 250 rows; partition 2 ([1002, 1501)): 250 rows; partition 3 (>= 1501): 250 rows. Nothing was changed. To do that anyway: `{bin} verify --repair --delete-extra --by checksum {job}`; to copy the whole table again instead: `{bin} --set target.mode=truncate run {job}` (it empties the table first)\n")
    );
    assert_eq!(pair.target.checksum("t").await, before, "nothing changed");

    let command = printed_command(&text(&out), bin, "--delete-extra");
    let out = sh(&command);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "repaired partition 0 (< 502 or NULL): 250 rows copied again",
        "repaired partition 2 ([1002, 1501)): 250 rows copied again",
        "repaired partition 3 (>= 1501): 250 rows copied again",
        "verify (row counts and checksums): 3 of 3 partitions match",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no line {line:?} in\n{}",
            text(&out)
        );
    }
    // The other rows were all in those ranges: gone with them.
    assert_eq!(pair.assert_same("t", "t").await, 1000);
    assert_exit(&stride(&["verify", job], &[]), 0);

    // The other way out, as printed, copies the whole table again.
    pair.target
        .exec("INSERT INTO t VALUES (5, 'other 5')")
        .await;
    let out = stride(&["verify", "--repair", job], &[]);
    assert_exit(&out, 2);
    let command = printed_command(&text(&out), bin, "target.mode=truncate");
    let out = sh(&command);
    assert_exit(&out, 0);
    assert_eq!(pair.assert_same("t", "t").await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_repair_empties_the_differing_ranges_and_copies_them_again() {
    let pair = seeded("repair_truncate").await;
    let file = job_file(&job_text(
        &pair,
        "table = \"t\"",
        "[partition]\ncolumn = \"id\"\ncount = 4",
        "mode = \"truncate\"",
    ));
    let job = file.path.to_str().unwrap();
    assert_exit(&stride(&["run", job], &[]), 0);
    spoil(&pair).await;
    // In truncate mode the table is the job's: a row no source has is a difference.
    pair.target
        .exec("INSERT INTO t VALUES (101, 'stray')")
        .await;
    let out = stride(&["verify", "--repair", job], &[]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "        0  < 502 or NULL           250           249  DIFFERENT",
        "repaired partition 0 (< 502 or NULL): 250 rows copied again",
        "repaired partition 2 ([1002, 1501)): 250 rows copied again",
        "repaired partition 3 (>= 1501): 250 rows copied again",
        "verify (row counts and checksums): 3 of 3 partitions match",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no line {line:?} in\n{}",
            text(&out)
        );
    }
    assert_eq!(pair.assert_same("t", "t").await, 1000);
    assert_exit(&stride(&["verify", job], &[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_by_key_refuses_source_rows_with_a_null_key() {
    let pair = Pair::new("repair_null_key").await;
    pair.source
        .exec("CREATE TABLE n (id int, v text); INSERT INTO n VALUES (1, 'a'), (NULL, 'b'), (2, 'c');")
        .await;
    // A unique index lets NULLs repeat: no key matches the NULL row.
    pair.target
        .exec("CREATE TABLE n (id int UNIQUE, v text)")
        .await;
    let file = job_file(&job_text(&pair, "table = \"n\"", "", "mode = \"append\""));
    let job = file.path.to_str().unwrap();
    assert_exit(&stride(&["run", job], &[]), 0);
    pair.target
        .exec("UPDATE n SET v = 'spoilt' WHERE id = 1")
        .await;
    let before = pair.target.checksum("n").await;
    let out = stride(&["verify", "--repair", job], &[]);
    assert_exit(&out, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 source rows have a NULL in the key (id), which matches no target row, so a repair by key would add them again; the partition was rolled back (expected no NULL in the key's columns of the source's rows)"),
        "{}",
        text(&out)
    );
    assert_eq!(pair.target.checksum("n").await, before, "nothing changed");
}

/// The verify at the end of a run (`[run] verify`) compares a shared target by
/// key too: another writer's rows in the job's ranges are no difference, and a
/// row of the job's that differs still is.
#[tokio::test]
async fn a_runs_own_verify_of_a_shared_upsert_target_counts_only_the_jobs_rows() {
    let pair = seeded("repair_run_verify").await;
    pair.target
        .exec(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'other ' || g FROM generate_series(1, 1999, 2) g;",
        )
        .await;
    let file = job_file(&job_text(
        &pair,
        "table = \"t\"",
        "[partition]\ncolumn = \"id\"\ncount = 4\n[run]\nverify = \"checksum\"",
        "mode = \"upsert\"",
    ));
    let out = run_job(&file.path);
    assert_exit(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4 of 4 partitions match"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pair.source.checksum("t").await,
        pair.target.checksum(STRIDE_ROWS).await
    );
    assert_eq!(pair.target.count("t").await, 2000);
}
