//! Incremental runs: each run copies the rows above the high-water mark the last
//! successful run recorded on the target, up to the largest value in its own
//! snapshot. The target must equal the source (counts and checksums) after every
//! run that had no new rows to miss, a failed run must leave the mark where it was,
//! and rows committed during a run must come with the next one.

use crate::common::*;

/// `events`: ids 1..=rows, one second apart from 2026-01-01 00:00:00 UTC; every
/// 1000th row has no `updated_at` (only a first run copies those).
async fn seed(db: &TestDb, rows: i64) {
    db.exec(&format!(
        "CREATE TABLE events (id bigint PRIMARY KEY, updated_at timestamptz, payload text);
         INSERT INTO events
         SELECT g, CASE WHEN g % 1000 <> 0 THEN timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' END,
                md5(g::text)
         FROM generate_series(1, {rows}) g;
         ANALYZE events;"
    ))
    .await;
}

/// New rows `from..=to`, later than every row before them.
async fn add(db: &TestDb, from: i64, to: i64) {
    db.exec(&format!(
        "INSERT INTO events
         SELECT g, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', md5(g::text)
         FROM generate_series({from}, {to}) g"
    ))
    .await;
}

fn job(pair: &Pair, target: &str) -> JobFile {
    job_file(&job_text(
        pair,
        "table = \"events\"",
        "[incremental]\ncolumn = \"updated_at\"\n[partition]\ncolumn = \"id\"\ncount = 4\n[run]\nparallelism = 2\nverify = \"checksum\"",
        target,
    ))
}

fn run(job: &JobFile, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.push(job.path.to_str().unwrap());
    stride(&args, &[])
}

fn plan(job: &JobFile) -> String {
    let out = stride(&["plan", job.path.to_str().unwrap()], &[]);
    assert_exit(&out, 0);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rows the last run's partitions committed.
async fn rows_copied(pair: &Pair) -> i64 {
    pair.target
        .scalar_i64(
            "SELECT coalesce(sum(rows), 0)::int8 FROM stride_checkpoints WHERE partition >= 0",
        )
        .await
}

#[tokio::test]
async fn each_run_copies_only_what_is_new() {
    let pair = Pair::new("incr_new").await;
    seed(&pair.source, 10_000).await;
    let job = job(&pair, "");

    assert!(
        plan(&job).contains("incremental on updated_at: the mark is not set yet; the next run copies every row up to 2026-01-01 02:46:39+00 (first run)"),
        "{}",
        plan(&job)
    );
    assert_exit(&run(&job, &[]), 0);
    assert_eq!(pair.assert_same("events", "events").await, 10_000);
    assert_eq!(rows_copied(&pair).await, 10_000);
    assert!(
        plan(&job).contains("the mark is 2026-01-01 02:46:39+00; the next run copies nothing new"),
        "{}",
        plan(&job)
    );

    add(&pair.source, 10_001, 10_500).await;
    assert!(
        plan(&job).contains(
            "the next run copies above 2026-01-01 02:46:39+00 up to 2026-01-01 02:55:00+00"
        ),
        "{}",
        plan(&job)
    );
    let second = run(&job, &[]);
    assert_exit(&second, 0);
    assert_eq!(rows_copied(&pair).await, 500, "{}", text(&second));
    assert_eq!(pair.assert_same("events", "events").await, 10_500);

    // Nothing new: nothing copied, and the mark stays.
    assert_exit(&run(&job, &[]), 0);
    assert_eq!(rows_copied(&pair).await, 0);
    assert_eq!(pair.assert_same("events", "events").await, 10_500);
}

#[tokio::test]
async fn with_upsert_updated_rows_replace_their_old_versions() {
    let pair = Pair::new("incr_upsert").await;
    seed(&pair.source, 10_000).await;
    let job = job(&pair, "mode = \"upsert\"\nkey = [\"id\"]");
    assert_exit(&run(&job, &[]), 0);
    assert_eq!(pair.assert_same("events", "events").await, 10_000);

    // Changes bump updated_at past the mark; new rows come after them.
    pair.source
        .exec(
            "UPDATE events SET payload = 'changed', updated_at = timestamptz '2026-02-01 00:00:00+00' + id * interval '1 second'
             WHERE id % 33 = 0",
        )
        .await;
    add(&pair.source, 10_001, 10_100).await;
    let second = run(&job, &[]);
    assert_exit(&second, 0);
    assert_eq!(rows_copied(&pair).await, 303 + 100, "{}", text(&second));
    assert_eq!(pair.assert_same("events", "events").await, 10_100);
}

#[tokio::test]
async fn a_failed_run_keeps_the_mark_and_the_next_copies_its_range_once() {
    let pair = Pair::new("incr_fail").await;
    seed(&pair.source, 10_000).await;
    let job = job(&pair, "");
    assert_exit(&run(&job, &[]), 0);
    let mark_line = "the mark is 2026-01-01 02:46:39+00";
    assert!(plan(&job).contains(mark_line));

    // The next run fails on one row of the new range: a partition rolls back.
    add(&pair.source, 10_001, 11_000).await;
    pair.source
        .exec("UPDATE events SET payload = 'boom' WHERE id = 10777")
        .await;
    pair.target
        .exec(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.payload = 'boom' THEN RAISE EXCEPTION 'refused row %', NEW.id; END IF; RETURN NEW; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await;
    let failed = run(&job, &[]);
    assert_exit(&failed, 1);
    assert!(
        text(&failed).contains("refused row 10777"),
        "{}",
        text(&failed)
    );
    // The mark did not move, and the next run resumes the same range.
    let planned = plan(&job);
    assert!(
        planned.contains(&format!("{mark_line}; the next run copies above 2026-01-01 02:46:39+00 up to 2026-01-01 03:03:20+00")),
        "{planned}"
    );

    // Rows committed after the failed run began wait for the run after.
    add(&pair.source, 11_001, 11_200).await;
    pair.target.exec("DROP TRIGGER refuse ON events").await;
    let resumed = run(&job, &[]);
    assert_exit(&resumed, 0);
    let (source, target) = (
        pair.source
            .checksum("(SELECT * FROM events WHERE id <= 11000)")
            .await,
        pair.target.checksum("events").await,
    );
    assert_eq!(
        source, target,
        "the resumed run copied its range exactly once"
    );
    assert_exit(&run(&job, &[]), 0);
    assert_eq!(pair.assert_same("events", "events").await, 11_200);
}

#[tokio::test]
async fn full_refresh_copies_everything_again_once() {
    let pair = Pair::new("incr_full").await;
    seed(&pair.source, 5_000).await;
    let job = job(&pair, "");
    assert_exit(&run(&job, &[]), 0);
    // Deletes are not seen by incremental runs; a full refresh starts over.
    pair.source
        .exec("DELETE FROM events WHERE id % 7 = 0")
        .await;
    add(&pair.source, 5_001, 5_100).await;
    let full = run(&job, &["--full-refresh"]);
    assert_exit(&full, 0);
    assert_eq!(
        pair.assert_same("events", "events").await,
        5_000 - 714 + 100
    );
    // The mark is set again: the next run has nothing to copy.
    assert_exit(&run(&job, &[]), 0);
    assert_eq!(rows_copied(&pair).await, 0);
    assert_eq!(pair.assert_same("events", "events").await, 4_386);
}

#[tokio::test]
async fn rows_committed_during_a_run_come_with_the_next() {
    let pair = Pair::new("incr_during").await;
    seed(&pair.source, 100_000).await;
    // Small INSERT batches, one partition at a time: the run takes a while.
    let job = job_file(&job_text(
        &pair,
        "table = \"events\"",
        "[incremental]\ncolumn = \"updated_at\"\n[partition]\ncolumn = \"id\"\ncount = 8\n[run]\nparallelism = 1",
        "method = \"insert\"\nbatch_size = 100",
    ));
    let running =
        Running::start(&["run", job.path.to_str().unwrap()]).wait_for_line("partition written");
    add(&pair.source, 100_001, 100_050).await;
    let first = running.finish();
    assert_exit(&first, 0);
    assert_eq!(
        pair.target.count("events").await,
        100_000,
        "{}",
        text(&first)
    );
    assert_exit(&run(&job, &[]), 0);
    assert_eq!(rows_copied(&pair).await, 50);
    assert_eq!(pair.assert_same("events", "events").await, 100_050);
}

#[tokio::test]
async fn bad_incremental_jobs_exit_2_naming_the_key() {
    let pair = Pair::new("incr_bad").await;
    seed(&pair.source, 10).await;
    let cases = [
        ("column = \"nope\"", "", "incremental.column: column \"nope\" does not exist in the source"),
        ("column = \"payload\"", "", "incremental.column: column \"payload\" is of type text, which cannot hold a high-water mark"),
        ("column = \"updated_at\"", "mode = \"truncate\"", "target.mode: \"truncate\" empties the target on every run"),
        ("column = \"\"", "", "incremental.column: is empty"),
    ];
    for (incremental, target, expected) in cases {
        let job = job_file(&job_text(
            &pair,
            "table = \"events\"",
            &format!("[incremental]\n{incremental}"),
            target,
        ));
        let out = run(&job, &[]);
        assert_exit(&out, 2);
        assert!(text(&out).contains(expected), "{expected}\n{}", text(&out));
    }
    let job = job_file(&job_text(
        &pair,
        "table = \"events\"",
        "[incremental]\ncolumn = \"updated_at\"\n[run]\ncheckpoint = false",
        "",
    ));
    let out = run(&job, &[]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("run.checkpoint: false, but [incremental]"),
        "{}",
        text(&out)
    );
    let plain = job_file(&job_text(&pair, "table = \"events\"", "", ""));
    let out = run(&plain, &["--full-refresh"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("--full-refresh: the job has no [incremental] section"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pair.target
            .scalar_i64(
                "SELECT count(*) FROM pg_class WHERE relname IN ('events', 'stride_checkpoints')"
            )
            .await,
        0,
        "nothing written"
    );
}

/// An append job whose incremental column is not a key adds an updated row again:
/// `check` and `run` warn. The shipped nightly CronJob (examples/k8s) upserts by
/// key instead: after 200 source rows are updated, its next run leaves the target
/// exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updated_rows_are_not_added_twice_by_the_shipped_nightly_job() {
    let pair = Pair::new("nightly_example").await;
    pair.source
        .exec(
            "CREATE TABLE orders (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, total numeric);
             INSERT INTO orders SELECT g, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', g
             FROM generate_series(1, 20000) g;",
        )
        .await;
    // The warning, for append on updated_at, and none on the key.
    for (column, warns) in [("updated_at", true), ("id", false)] {
        let file = job_file(&job_text(
            &pair,
            "table = \"orders\"",
            &format!("[incremental]\ncolumn = \"{column}\""),
            "mode = \"append\"",
        ));
        let out = stride(&["check", file.path.to_str().unwrap()], &[]);
        assert_exit(&out, 0);
        assert_eq!(
            text(&out).contains(&format!(
                "incremental.column \"{column}\" is not a unique key"
            )),
            warns,
            "{}",
            text(&out)
        );
    }

    // The ConfigMap's job, as shipped.
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/k8s/nightly-cronjob.yaml"
    ))
    .unwrap();
    let toml: String = yaml
        .lines()
        .skip_while(|l| !l.contains("nightly.toml: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(toml.contains("[incremental]"), "{toml}");
    let file = job_file(&toml.replace("public.orders", "orders"));
    let envs = [
        ("SOURCE_URL", pair.source.url.as_str()),
        ("TARGET_URL", pair.target.url.as_str()),
    ];
    let nightly = || stride(&["run", file.path.to_str().unwrap()], &envs);
    assert_exit(&nightly(), 0);
    assert_eq!(pair.assert_same("orders", "orders").await, 20000);
    pair.source
        .exec("UPDATE orders SET total = total + 1, updated_at = timestamptz '2026-06-01 00:00:00+00' + id * interval '1 second' WHERE id % 100 = 0")
        .await;
    let out = nightly();
    assert_exit(&out, 0);
    assert_eq!(pair.assert_same("orders", "orders").await, 20000);
}
