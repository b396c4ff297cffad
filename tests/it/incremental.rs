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
    // The 500 new rows, and the one at the mark read again.
    assert_eq!(rows_copied(&pair).await, 500 + 1, "{}", text(&second));
    assert_eq!(pair.assert_same("events", "events").await, 10_500);

    // Nothing new: only the row at the mark is read again, and the mark stays.
    assert_exit(&run(&job, &[]), 0);
    assert_eq!(rows_copied(&pair).await, 1);
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
    // The row at the mark (id 9999) was updated past it: none is left there to read again.
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
    // The mark is set again: the next run has nothing new, and reads the row at the mark again.
    assert_exit(&run(&job, &[]), 0);
    assert_eq!(rows_copied(&pair).await, 1);
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
    // The 50 new rows, and the one at the mark read again.
    assert_eq!(rows_copied(&pair).await, 50 + 1);
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

/// `sales`: ids 1..=5000, 100 a day from 2026-01-01 to 2026-02-19 (the mark
/// after a first run).
async fn seed_sales(db: &TestDb) {
    db.exec(
        "CREATE TABLE sales (id bigint PRIMARY KEY, day date NOT NULL, amount numeric);
         INSERT INTO sales SELECT g, DATE '2026-01-01' + ((g - 1) / 100)::int, g * 1.5
         FROM generate_series(1, 5000) g;
         ANALYZE sales;",
    )
    .await;
}

/// Rows `from..=to` on `day`.
async fn add_sales(db: &TestDb, from: i64, to: i64, day: &str) {
    db.exec(&format!(
        "INSERT INTO sales SELECT g, DATE '{day}', g * 1.5 FROM generate_series({from}, {to}) g"
    ))
    .await;
}

/// Rows the target holds more than once (by id).
async fn duplicates(db: &TestDb, table: &str) -> i64 {
    db.scalar_i64(&format!(
        "SELECT (count(*) - count(DISTINCT id))::int8 FROM {table}"
    ))
    .await
}

fn sales_job(pair: &Pair, rest: &str, target: &str) -> JobFile {
    job_file(&job_text(
        pair,
        "table = \"sales\"",
        &format!("[incremental]\ncolumn = \"day\"\n{rest}\n[run]\nparallelism = 2\nverify = \"checksum\""),
        target,
    ))
}

/// Issue 12's reproduction: a date mark, 100 rows added later at the mark's
/// day, then 50 above it. Every run leaves the target equal to the source.
async fn ties_at_a_date_mark(label: &str, partition: &str, target: &str) {
    let pair = Pair::new(label).await;
    seed_sales(&pair.source).await;
    let job = sales_job(&pair, partition, target);
    assert_exit(&run(&job, &[]), 0);
    assert_eq!(pair.assert_same("sales", "sales").await, 5_000);

    add_sales(&pair.source, 5_001, 5_100, "2026-02-19").await;
    let second = run(&job, &[]);
    assert_exit(&second, 0);
    assert_eq!(
        pair.assert_same("sales", "sales").await,
        5_100,
        "{}",
        text(&second)
    );
    assert_eq!(duplicates(&pair.target, "sales").await, 0);

    add_sales(&pair.source, 5_101, 5_150, "2026-02-20").await;
    let third = run(&job, &[]);
    assert_exit(&third, 0);
    assert_eq!(
        pair.assert_same("sales", "sales").await,
        5_150,
        "{}",
        text(&third)
    );
    assert_eq!(duplicates(&pair.target, "sales").await, 0);
    // The third run read the 200 rows of 2026-02-19 again, and the 50 new ones.
    assert_eq!(rows_copied(&pair).await, 200 + 50);
}

#[tokio::test]
async fn rows_tied_with_a_date_mark_are_copied_in_append_mode() {
    ties_at_a_date_mark(
        "incr_ties_append",
        "[partition]\ncolumn = \"id\"\ncount = 4",
        "",
    )
    .await;
}

#[tokio::test]
async fn rows_tied_with_a_date_mark_are_copied_in_upsert_mode() {
    ties_at_a_date_mark(
        "incr_ties_upsert",
        "[partition]\ncolumn = \"id\"\ncount = 4\nstrategy = \"quantile\"",
        "mode = \"upsert\"\nkey = [\"id\"]",
    )
    .await;
}

#[tokio::test]
async fn rows_tied_with_a_date_mark_are_copied_by_block_ranges() {
    ties_at_a_date_mark(
        "incr_ties_ctid",
        "[partition]\ncount = 3\nstrategy = \"ctid\"",
        "",
    )
    .await;
}

/// `plan` shows the range read again and the exact SQL of its partition, the last.
#[tokio::test]
async fn plan_shows_the_reread_range_and_its_sql() {
    let pair = Pair::new("incr_ties_plan").await;
    seed_sales(&pair.source).await;
    let job = sales_job(
        &pair,
        "lookback = \"2 days\"\n[partition]\ncolumn = \"id\"\ncount = 2",
        "",
    );
    assert_exit(&run(&job, &[]), 0);
    add_sales(&pair.source, 5_001, 5_050, "2026-02-20").await;
    assert!(
        plan(&job).contains("incremental on day: the mark is 2026-02-19; the next run copies above 2026-02-19 up to 2026-02-20, and reads 2026-02-17 to 2026-02-19 again (partition 2, which replaces the target's rows in that range)"),
        "{}",
        plan(&job)
    );
    let out = stride(
        &["plan", "--format", "json", job.path.to_str().unwrap()],
        &[],
    );
    assert_exit(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reread_sql = "SELECT \"id\", \"day\", \"amount\" FROM \"sales\" WHERE (\"day\" >= '2026-02-17'::date AND \"day\" <= '2026-02-19'::date)";
    assert_eq!(
        doc["incremental"]["reread"],
        serde_json::json!({"from": "2026-02-17", "to": "2026-02-19", "sql": reread_sql})
    );
    let partitions = doc["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 3);
    assert_eq!(partitions[2]["range"], "re-read 2026-02-17 to 2026-02-19");
    assert_eq!(partitions[2]["sql"], reread_sql);
    assert_eq!(
        partitions[0]["sql"],
        "SELECT \"id\", \"day\", \"amount\" FROM \"sales\" WHERE ((\"day\" > '2026-02-19'::date AND \"day\" <= '2026-02-20'::date)) AND (\"id\" < '5026'::int8 OR \"id\" IS NULL)"
    );
    // The run copies the 50 new rows and the 300 of the three days read again.
    assert_exit(&run(&job, &[]), 0);
    assert_eq!(rows_copied(&pair).await, 50 + 300);
    assert_eq!(pair.assert_same("sales", "sales").await, 5_050);
    assert_eq!(duplicates(&pair.target, "sales").await, 0);
}

/// A timestamp mark with a look-back: a row committed late within it is copied
/// by the next run; one below it is not, by any run (as documented).
#[tokio::test]
async fn a_lookback_catches_late_rows_within_it_and_not_below() {
    let pair = Pair::new("incr_lookback").await;
    seed(&pair.source, 1_000).await;
    let job = job_file(&job_text(
        &pair,
        "table = \"events\"",
        "[incremental]\ncolumn = \"updated_at\"\nlookback = \"10m\"\n[partition]\ncolumn = \"id\"\ncount = 2\n[run]\nverify = \"checksum\"",
        "",
    ));
    assert_exit(&run(&job, &[]), 0);
    assert_eq!(pair.assert_same("events", "events").await, 1_000);
    // The mark is row 999's 00:16:39. Late: 5 minutes below it, tied with it,
    // and 20 minutes below it (beyond the look-back); then new rows above.
    pair.source
        .exec(
            "INSERT INTO events VALUES
               (2001, timestamptz '2026-01-01 00:11:39+00', 'late, within'),
               (2002, timestamptz '2026-01-01 00:16:39+00', 'tied'),
               (2003, timestamptz '2026-01-01 00:06:38.999999+00', 'late, below')",
        )
        .await;
    add(&pair.source, 1_001, 1_010).await;
    assert!(
        plan(&job).contains("the mark is 2026-01-01 00:16:39+00; the next run copies above 2026-01-01 00:16:39+00 up to 2026-01-01 00:16:50+00, and reads 2026-01-01 00:06:39+00 to 2026-01-01 00:16:39+00 again"),
        "{}",
        plan(&job)
    );
    for _ in 0..2 {
        assert_exit(&run(&job, &[]), 0);
        let (source, target) = (
            pair.source
                .checksum("(SELECT * FROM events WHERE id <> 2003)")
                .await,
            pair.target.checksum("events").await,
        );
        assert_eq!(source, target);
        assert_eq!(target.0, 1_000 + 2 + 10);
        assert_eq!(
            pair.target
                .scalar_i64("SELECT count(*) FROM events WHERE id = 2003")
                .await,
            0
        );
        assert_eq!(duplicates(&pair.target, "events").await, 0);
    }
}

/// An integer mark (a batch number), a look-back of 2 batches, block ranges.
#[tokio::test]
async fn an_integer_mark_reads_its_lookback_again() {
    let pair = Pair::new("incr_batch").await;
    pair.source
        .exec(
            "CREATE TABLE loads (id bigint PRIMARY KEY, batch integer, note text);
             INSERT INTO loads SELECT g, g / 100, md5(g::text) FROM generate_series(1, 1000) g;",
        )
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"loads\"",
        "[incremental]\ncolumn = \"batch\"\nlookback = 2\n[partition]\nstrategy = \"ctid\"\ncount = 2\n[run]\nverify = \"checksum\"",
        "",
    ));
    assert_exit(&run(&job, &[]), 0);
    assert_eq!(pair.assert_same("loads", "loads").await, 1_000);
    // The mark is batch 10: ties, one in batch 8 (within), one in 7 (below), then batch 11.
    pair.source
        .exec(
            "INSERT INTO loads SELECT g, 10, 'tie' FROM generate_series(2001, 2010) g;
             INSERT INTO loads VALUES (2011, 8, 'within'), (2012, 7, 'below');
             INSERT INTO loads SELECT g, 11, 'new' FROM generate_series(2013, 2020) g;",
        )
        .await;
    let second = run(&job, &[]);
    assert_exit(&second, 0);
    let (source, target) = (
        pair.source
            .checksum("(SELECT * FROM loads WHERE id <> 2012)")
            .await,
        pair.target.checksum("loads").await,
    );
    assert_eq!(source, target, "{}", text(&second));
    assert_eq!(target.0, 1_000 + 10 + 1 + 8);
    assert_eq!(duplicates(&pair.target, "loads").await, 0);
    // Batches 8, 9 and 10 read again (ids 800..=1000, and the 11 late rows), and 8 new rows.
    assert_eq!(rows_copied(&pair).await, 201 + 11 + 8);
}

/// A run killed (SIGKILL) while its re-read partition has deleted the target's
/// rows at the mark: they are still there, once, and the resumed run ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_while_reading_the_mark_again_resumes_exactly() {
    let pair = Pair::new("incr_ties_kill").await;
    seed_sales(&pair.source).await;
    let job = sales_job(
        &pair,
        "[partition]\ncolumn = \"id\"\ncount = 2",
        "method = \"insert\"",
    );
    let path = job.path.to_str().unwrap();
    assert_exit(&run(&job, &[]), 0);
    add_sales(&pair.source, 5_001, 5_100, "2026-02-19").await;
    add_sales(&pair.source, 5_101, 5_150, "2026-02-20").await;
    // Each row written at the mark's day takes 20 ms: 200 of them, 4 s.
    pair.target
        .exec(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_sleep(0.02); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON sales FOR EACH ROW
             WHEN (NEW.day = DATE '2026-02-19') EXECUTE FUNCTION slow();",
        )
        .await;
    let mut running = Running::start(&["run", path]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while pair
        .target
        .scalar_i64(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()",
        )
        .await
        == 0
    {
        assert!(!running.exited(), "{}", text(&running.finish()));
        assert!(std::time::Instant::now() < deadline, "no re-read partition in flight");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    running.signal("KILL");
    running.finish();
    // The deletion went with the transaction: the first run's 100 rows of that day, once.
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(*) FROM sales WHERE day = DATE '2026-02-19'")
            .await,
        100
    );
    assert_eq!(duplicates(&pair.target, "sales").await, 0);
    pair.target.exec("DROP TRIGGER slow ON sales").await;
    let resumed = run(&job, &[]);
    assert_exit(&resumed, 0);
    assert!(
        text(&resumed).contains("resuming an earlier run of this job"),
        "{}",
        text(&resumed)
    );
    assert_eq!(pair.assert_same("sales", "sales").await, 5_150);
    assert_eq!(duplicates(&pair.target, "sales").await, 0);
}

/// Bad look-backs exit 2 naming the key, before anything is written.
#[tokio::test]
async fn bad_lookbacks_exit_2_naming_the_key() {
    let pair = Pair::new("incr_bad_lookback").await;
    seed_sales(&pair.source).await;
    let cases = [
        ("column = \"day\"\nlookback = \"36h\"", "", "incremental.lookback: \"36h\" is not a whole number of days, and column \"day\" is a date (expected days, such as \"2 days\")"),
        ("column = \"day\"\nlookback = 2", "", "incremental.lookback: 2 is a number, and column \"day\" is a date (expected a duration such as \"2 days\", \"36h\" or \"90m\")"),
        ("column = \"id\"\nlookback = \"1 day\"", "", "incremental.lookback: \"1 day\" is a duration, and column \"id\" is an integer (int8) (expected a whole number of at least 0: how many values below the mark are read again)"),
        ("column = \"id\"\nlookback = -1", "", "incremental.lookback: -1 is not a whole number of at least 0 or a duration"),
        ("column = \"day\"\nlookback = \"2 weeks\"", "", "incremental.lookback: \"2 weeks\" is not a duration"),
        ("column = \"day\"", "", "source.columns: the incremental column \"day\" is not among the copied columns, and in append mode each run replaces the target's rows at the mark"),
    ];
    for (i, (incremental, target, expected)) in cases.into_iter().enumerate() {
        let columns = if i == 5 {
            "columns = [\"id\", \"amount\"]"
        } else {
            ""
        };
        let job = job_file(&job_text(
            &pair,
            &format!("table = \"sales\"\n{columns}"),
            &format!("[incremental]\n{incremental}"),
            target,
        ));
        for command in ["run", "check"] {
            let out = stride(&[command, job.path.to_str().unwrap()], &[]);
            assert_exit(&out, 2);
            assert!(text(&out).contains(expected), "{expected}\n{}", text(&out));
        }
    }
    assert_eq!(
        pair.target
            .scalar_i64(
                "SELECT count(*) FROM pg_class WHERE relname IN ('sales', 'stride_checkpoints')"
            )
            .await,
        0,
        "nothing written"
    );
}

/// Shards of an incremental run: the re-read partition is one of the prepared
/// partitions, copied by the shard it falls to; `finish` closes the run exact.
#[tokio::test]
async fn shards_read_the_mark_again_once() {
    let pair = Pair::new("incr_ties_shards").await;
    seed_sales(&pair.source).await;
    let job = sales_job(&pair, "[partition]\ncolumn = \"id\"\ncount = 3", "");
    let path = job.path.to_str().unwrap();
    assert_exit(&run(&job, &[]), 0);
    add_sales(&pair.source, 5_001, 5_100, "2026-02-19").await;
    add_sales(&pair.source, 5_101, 5_150, "2026-02-20").await;
    let prepared = stride(&["prepare", path], &[]);
    assert_exit(&prepared, 0);
    assert!(
        text(&prepared).contains("prepared: 4 partitions into \"sales\" (above 2026-02-19 up to 2026-02-20 of day; 2026-02-19 read again)"),
        "{}",
        text(&prepared)
    );
    for shard in ["0/2", "1/2"] {
        assert_exit(&stride(&["run", "--shard", shard, path], &[]), 0);
    }
    assert_exit(&stride(&["finish", path], &[]), 0);
    assert_eq!(pair.assert_same("sales", "sales").await, 5_150);
    assert_eq!(duplicates(&pair.target, "sales").await, 0);
    assert_eq!(rows_copied(&pair).await, 200 + 50);
}

/// An unfinished run recorded by a stride that read nothing again (one
/// partition fewer) is resumed as it was planned, its coverage check passing;
/// the run after it reads the mark again.
#[tokio::test]
async fn an_unfinished_run_planned_without_a_reread_resumes_as_planned() {
    let pair = Pair::new("incr_ties_older").await;
    seed_sales(&pair.source).await;
    let job = sales_job(&pair, "[partition]\ncolumn = \"id\"\ncount = 2", "");
    assert_exit(&run(&job, &[]), 0);
    add_sales(&pair.source, 5_001, 5_050, "2026-02-20").await;
    // The re-read partition fails; the two others commit.
    pair.target
        .exec(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'refused row %', NEW.id; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON sales FOR EACH ROW
             WHEN (NEW.day = DATE '2026-02-19') EXECUTE FUNCTION refuse();",
        )
        .await;
    assert_exit(&run(&job, &[]), 1);
    pair.target.exec("DROP TRIGGER refuse ON sales").await;
    assert_eq!(pair.target.count("sales").await, 5_050);
    // As an older stride recorded it: two partitions, none reading the mark again.
    pair.target
        .exec("UPDATE stride_checkpoints SET partitions = 2 WHERE partition < 0 AND partitions = 3")
        .await;
    // Rows of the mark's day added since: the resumed run does not read them...
    add_sales(&pair.source, 5_051, 5_060, "2026-02-19").await;
    let resumed = run(&job, &[]);
    assert_exit(&resumed, 0);
    assert!(
        text(&resumed)
            .contains("partitions 0 written of 2 (2 skipped: committed by an earlier run)")
            && !text(&resumed).contains("reads 2026-02-19 again"),
        "{}",
        text(&resumed)
    );
    assert_eq!(pair.target.count("sales").await, 5_050);
    // ...and they are below the new mark (2026-02-20), so a look-back reaching them
    // is what brings them.
    let caught = sales_job(
        &pair,
        "lookback = \"1 day\"\n[partition]\ncolumn = \"id\"\ncount = 2",
        "",
    );
    assert_exit(&run(&caught, &[]), 0);
    assert_eq!(pair.assert_same("sales", "sales").await, 5_060);
    assert_eq!(duplicates(&pair.target, "sales").await, 0);
}

/// A row deleted at the source within the range read again: append mode removes
/// it from the target (the range is replaced), upsert mode keeps it (it never
/// deletes) and its verify leaves the range out, so the run passes either way.
#[tokio::test]
async fn a_row_deleted_within_the_range_read_again() {
    for (label, target, kept) in [
        ("incr_ties_del_append", "", 0),
        (
            "incr_ties_del_upsert",
            "mode = \"upsert\"\nkey = [\"id\"]",
            1,
        ),
    ] {
        let pair = Pair::new(label).await;
        seed_sales(&pair.source).await;
        let job = sales_job(&pair, "[partition]\ncolumn = \"id\"\ncount = 2", target);
        assert_exit(&run(&job, &[]), 0);
        pair.source.exec("DELETE FROM sales WHERE id = 4950").await;
        let out = run(&job, &[]);
        assert_exit(&out, 0);
        assert_eq!(
            pair.target
                .scalar_i64("SELECT count(*) FROM sales WHERE id = 4950")
                .await,
            kept,
            "{label}: {}",
            text(&out)
        );
        assert_eq!(pair.target.count("sales").await, 4_999 + kept);
    }
}
