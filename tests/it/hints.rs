//! Every command stride prints for the user to run next works when run exactly as
//! printed (through `sh -c`), with the options that matter.

use crate::common::*;

async fn seeded(label: &str) -> Pair {
    let pair = Pair::new(label).await;
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 2000) g;")
        .await;
    pair
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repair_command_verify_prints_repairs_what_it_found_when_run_as_printed() {
    let pair = seeded("hint_verify").await;
    let file = job_file(&job_text(
        &pair,
        "table = \"t\"",
        "[partition]\ncolumn = \"id\"\ncount = 4",
        "mode = \"truncate\"",
    ));
    let job = file.path.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_stride");
    // --set is part of the job: the repair must plan with it too.
    assert_exit(&stride(&["--set", "partition.count=3", "run", job], &[]), 0);
    // Same row count, one value changed: only a checksum sees it.
    pair.target
        .exec("UPDATE t SET v = 'changed' WHERE id = 1500")
        .await;
    let out = stride(
        &[
            "--set",
            "partition.count=3",
            "verify",
            "--by",
            "checksum",
            job,
        ],
        &[],
    );
    assert_exit(&out, 1);
    let command = printed_command(&text(&out), bin, "");
    assert_eq!(
        command,
        format!("{bin} --set partition.count=3 verify --repair --by checksum {job}")
    );
    let out = sh(&command);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("repaired partition 2"),
        "{}",
        text(&out)
    );
    assert_eq!(pair.assert_same("t", "t").await, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repair_command_a_run_prints_after_its_verify_names_the_job_file() {
    let pair = seeded("hint_run_verify").await;
    // The target spoils one row while the flag table exists.
    pair.target
        .exec(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             CREATE TABLE spoil ();
             CREATE FUNCTION spoil() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.id = 42 AND to_regclass('public.spoil') IS NOT NULL THEN NEW.v := 'spoilt'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER spoil BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION spoil();",
        )
        .await;
    let file = job_file(&job_text(
        &pair,
        "table = \"t\"",
        "[partition]\ncolumn = \"id\"\ncount = 4",
        "mode = \"truncate\"\n[run]\nverify = \"checksum\"",
    ));
    let job = file.path.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_stride");
    let out = stride(&["run", job], &[]);
    assert_exit(&out, 1);
    let command = printed_command(&text(&out), bin, "");
    assert_eq!(
        command,
        format!("{bin} verify --repair --by checksum {job}")
    );
    pair.target.exec("DROP TABLE spoil").await;
    let out = sh(&command);
    assert_exit(&out, 0);
    assert_eq!(pair.assert_same("t", "t").await, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_would_append_rows_twice_is_refused_with_commands_that_work() {
    let pair = seeded("hint_restart").await;
    let file = job_file(&job_text(
        &pair,
        "table = \"t\"",
        "[partition]\ncolumn = \"id\"\ncount = 4",
        "mode = \"append\"",
    ));
    let job = file.path.to_str().unwrap();
    assert_exit(&stride(&["run", job], &[]), 0);
    let out = stride(&["run", "--restart", job], &[]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("already added 2,000 rows (4 of 4 partitions)"),
        "{}",
        text(&out)
    );
    assert_eq!(pair.target.count("t").await, 2000, "nothing was written");

    // The first way out, as printed: a truncate-mode copy replaces the rows.
    let replace = printed_command(&text(&out), "stride --set target.mode=truncate", "");
    let out_replace = sh(&replace.replacen("stride", env!("CARGO_BIN_EXE_stride"), 1));
    assert_exit(&out_replace, 0);
    assert_eq!(pair.assert_same("t", "t").await, 2000);

    // The second, after deleting the rows by hand: they are added again, once.
    let again = printed_command(&text(&out), "stride run --restart --append-again", "");
    pair.target.exec("DELETE FROM t").await;
    let out_again = sh(&again.replacen("stride", env!("CARGO_BIN_EXE_stride"), 1));
    assert_exit(&out_again, 0);
    assert_eq!(pair.assert_same("t", "t").await, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_ctid_append_run_prints_what_works_instead_of_a_refused_resume() {
    let pair = Pair::new("hint_ctid").await;
    pair.source
        .exec("CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, repeat('v', 200) FROM generate_series(1, 20000) g;")
        .await;
    // Slow writes, so that Ctrl-C comes while partitions are still to go.
    pair.target
        .exec(
            "CREATE TABLE t (id int, v text);
             CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_sleep(0.0005); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION slow();",
        )
        .await;
    let file = job_file(&job_text(
        &pair,
        "table = \"t\"",
        "[partition]\nstrategy = \"ctid\"\ncount = 8\n[run]\nparallelism = 2",
        "mode = \"append\"",
    ));
    let job = file.path.to_str().unwrap();
    let running = Running::start(&["run", job]).wait_for_line("partition written");
    running.signal("INT");
    let out = running.finish();
    assert_exit(&out, 130);
    assert!(!text(&out).contains("resume with:"), "{}", text(&out));
    let command = printed_command(&text(&out), "stride --set target.mode=truncate run", "");
    pair.target.exec("DROP TRIGGER slow ON t").await;
    let out = sh(&command.replacen("stride", env!("CARGO_BIN_EXE_stride"), 1));
    assert_exit(&out, 0);
    assert_eq!(pair.assert_same("t", "t").await, 20000);
}
