//! No row lost, none twice: retries after terminated backends (target, source,
//! coordinator, during COMMIT), a COMMIT whose answer is lost, resume after
//! SIGKILL and SIGINT, exhausted retries, permanent failures, changed jobs and
//! `--restart`. Each test ends with the same rows on both sides unless it expects
//! a failure. Kills are aimed by polling `pg_stat_activity` (only stride's
//! sessions on the test's own databases) and the assertions hold whichever
//! partitions happen to be committed when a kill lands.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_stride");

/// Rows of the slow source table, and its partitions: partition `k` holds ids
/// `k * WIDTH + 1 ..= (k + 1) * WIDTH`.
const ROWS: i64 = 300_000;
const PARTITIONS: i64 = 30;
const WIDTH: i64 = ROWS / PARTITIONS;

/// `big (id bigint, pad text)` with ids `1..=rows`.
async fn seed_big(db: &TestDb, rows: i64) {
    db.exec(&format!(
        "CREATE TABLE big (id bigint, pad text);
         INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;"
    ))
    .await;
}

/// A job over `big` that takes a couple of seconds: 30 partitions of 10,000 rows,
/// two at a time, written with INSERTs of 200 rows. `run` adds keys to `[run]`,
/// `target` to `[target]`.
fn slow_job(pair: &Pair, run: &str, target: &str) -> String {
    job_text(
        pair,
        "table = \"big\"",
        &format!(
            "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = {}\ncount = {PARTITIONS}\n[run]\nparallelism = 2\n{run}",
            ROWS + 1
        ),
        &format!("method = \"insert\"\nbatch_size = 200\n{target}"),
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `stride run [--restart] job` to the end.
fn run(job: &JobFile, restart: bool) -> Output {
    let path = job.path.to_str().unwrap();
    if restart {
        stride(&["run", "--restart", path], &[])
    } else {
        stride(&["run", path], &[])
    }
}

/// Starts the job and stops it with `signal` (`INT` or `KILL`) once a first
/// partition is committed.
fn stop_after_first_partition(job: &JobFile, signal: &str) -> Output {
    let running =
        Running::start(&["run", job.path.to_str().unwrap()]).wait_for_line("partition written");
    running.signal(signal);
    running.finish()
}

/// One partition's line in the summary.
#[derive(Debug)]
struct PartitionLine {
    index: usize,
    rows: u64,
    seconds: f64,
    status: String,
}

impl PartitionLine {
    /// "after N retries" of the status, 0 without.
    fn retries(&self) -> u32 {
        self.status
            .split_once("after ")
            .map_or(0, |(_, n)| n.split(' ').next().unwrap().parse().unwrap())
    }
}

/// The summary's partition table.
fn partition_lines(stdout: &str) -> Vec<PartitionLine> {
    let mut lines = stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("partition  range"))
        .skip(1);
    let mut out = Vec::new();
    for line in lines.by_ref() {
        let Some(index) = line.split_whitespace().next().and_then(|t| t.parse().ok()) else {
            break;
        };
        let (before, status) = line
            .split_once(" s  ")
            .unwrap_or_else(|| panic!("no time column in {line:?}"));
        let columns: Vec<&str> = before.split_whitespace().collect();
        out.push(PartitionLine {
            index,
            rows: columns[columns.len() - 2].replace(',', "").parse().unwrap(),
            seconds: columns[columns.len() - 1].parse().unwrap(),
            status: status.trim().to_string(),
        });
    }
    out
}

/// The summary's "partitions ..." line.
fn header(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.starts_with("partitions "))
        .unwrap_or_else(|| panic!("no summary in {stdout}"))
}

/// "retries N" of the summary's header, 0 without.
fn header_retries(stdout: &str) -> u32 {
    header(stdout)
        .split_once("retries ")
        .map_or(0, |(_, n)| n.split(' ').next().unwrap().parse().unwrap())
}

/// "(N skipped: committed by an earlier run)" of the summary's header, 0 without.
fn header_skipped(stdout: &str) -> usize {
    header(stdout)
        .split_once(" skipped: committed by an earlier run")
        .map_or(0, |(before, _)| {
            before.rsplit('(').next().unwrap().parse().unwrap()
        })
}

/// Indexes of the partitions the summary calls written (with or without retries).
fn written(stdout: &str) -> Vec<usize> {
    partition_lines(stdout)
        .iter()
        .filter(|p| p.status.starts_with("written"))
        .map(|p| p.index)
        .collect()
}

/// `(partition, rows)` recorded in the target's checkpoint table, the run row left out.
async fn checkpoints(db: &TestDb) -> Vec<(i32, i64)> {
    sqlx::query_as(
        "SELECT partition, rows FROM stride_checkpoints WHERE partition >= 0 ORDER BY partition",
    )
    .fetch_all(&mut db.conn().await)
    .await
    .unwrap()
}

/// The copied rows in the target's `big` (those with id > 0; the tests give the
/// target rows of its own with negative ids) are exactly the partitions its
/// checkpoint table records, each whole: a partition's rows and its record
/// commit together. Returns the partitions.
async fn assert_committed_exactly(pair: &Pair, context: &str) -> Vec<usize> {
    let recorded = checkpoints(&pair.target).await;
    for &(p, rows) in &recorded {
        assert_eq!(rows, WIDTH, "recorded rows of partition {p}\n{context}");
        let lo = i64::from(p) * WIDTH + 1;
        let n = pair
            .target
            .count(&format!("big WHERE id BETWEEN {lo} AND {}", lo + WIDTH - 1))
            .await;
        assert_eq!(n, WIDTH, "partition {p} is not whole\n{context}");
    }
    assert_eq!(
        pair.target.count("big WHERE id > 0").await,
        recorded.len() as i64 * WIDTH,
        "rows outside the recorded partitions\n{context}"
    );
    recorded.iter().map(|&(p, _)| p as usize).collect()
}

/// Waits until stride has no session left on `db` (after a SIGKILL the server
/// notices the closed sockets on its own time).
async fn wait_for_no_stride_sessions(db: &TestDb) {
    let mut admin = PgConnection::connect(&server_url()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'stride'",
        )
        .bind(&db.name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stride sessions on {} outlived it",
            db.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Terminates one of stride's sessions on `db` that matches `condition` (SQL over
/// `pg_stat_activity`), if there is one; returns whether one was terminated.
/// Parallel workers of a session are left alone: they share its query text.
async fn terminate_one(admin: &mut PgConnection, db: &TestDb, condition: &str) -> bool {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT coalesce(bool_or(pg_terminate_backend(pid)), false) FROM (
           SELECT pid FROM pg_stat_activity
           WHERE datname = $1 AND application_name = 'stride' AND backend_type = 'client backend'
             AND ({condition})
           LIMIT 1) AS victim"
    )))
    .bind(&db.name)
    .fetch_one(admin)
    .await
    .unwrap()
}

/// While stride runs, terminates a backend matching `condition` on `db`, waiting
/// at least 150 ms between kills, until `wanted` were terminated. Returns the
/// output and the number of kills.
async fn run_terminating(
    job: &JobFile,
    db: &TestDb,
    condition: &str,
    wanted: usize,
) -> (Output, usize) {
    let mut admin = PgConnection::connect(&server_url()).await.unwrap();
    let mut running = Running::start(&["run", job.path.to_str().unwrap()]);
    let mut kills = 0;
    let mut last_kill: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while kills < wanted && !running.exited() && Instant::now() < deadline {
        let spaced = last_kill.is_none_or(|t| t.elapsed() >= Duration::from_millis(150));
        if spaced && terminate_one(&mut admin, db, condition).await {
            kills += 1;
            last_kill = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (running.finish(), kills)
}

/// The run succeeded through as many retries as there were kills, and the summary
/// says so in its header and on the partitions' lines.
fn assert_retried(out: &Output, kills: usize) {
    assert_exit(out, 0);
    assert!(kills >= 3, "only {kills} kills landed\n{}", text(out));
    let stdout = stdout(out);
    assert!(stdout.starts_with("copied:"), "{}", text(out));
    assert!(
        header(&stdout).starts_with(&format!("partitions {PARTITIONS} written of {PARTITIONS}")),
        "{}",
        text(out)
    );
    assert_eq!(header_retries(&stdout) as usize, kills, "{}", text(out));
    let lines = partition_lines(&stdout);
    assert_eq!(lines.len(), PARTITIONS as usize, "{stdout}");
    let per_partition: u32 = lines.iter().map(PartitionLine::retries).sum();
    assert_eq!(per_partition as usize, kills, "{stdout}");
    assert!(lines.iter().all(|l| l.rows == WIDTH as u64), "{stdout}");
    assert!(
        stderr(out).contains("retry 1 of 10 follows"),
        "{}",
        text(out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_backends_terminated_during_inserts_are_retried() {
    let pair = Pair::new("kill_target_insert").await;
    seed_big(&pair.source, ROWS).await;
    let job = job_file(&slow_job(&pair, "retries = 10", ""));
    // The batch INSERTs, running or between two batches of the partition's transaction.
    let (out, kills) = run_terminating(
        &job,
        &pair.target,
        "query LIKE 'INSERT INTO %FROM unnest(%' AND state IN ('active', 'idle in transaction')",
        4,
    )
    .await;
    assert_retried(&out, kills);
    assert_eq!(pair.assert_same("big", "big").await, ROWS);
    assert_eq!(checkpoints(&pair.target).await.len(), PARTITIONS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_backends_terminated_during_copy_are_retried() {
    let pair = Pair::new("kill_target_copy").await;
    seed_big(&pair.source, ROWS).await;
    // A row trigger that changes nothing slows COPY FROM down enough to be hit.
    pair.target
        .exec(
            "CREATE TABLE big (id bigint, pad text);
             CREATE FUNCTION busy() RETURNS trigger LANGUAGE plpgsql AS
               $$BEGIN PERFORM md5(NEW.pad || NEW.id); RETURN NEW; END$$;
             CREATE TRIGGER busy BEFORE INSERT ON big FOR EACH ROW EXECUTE FUNCTION busy();",
        )
        .await;
    let job = job_file(
        &slow_job(&pair, "retries = 10", "").replace("method = \"insert\"", "method = \"copy\""),
    );
    let (out, kills) = run_terminating(
        &job,
        &pair.target,
        "query LIKE 'COPY %FROM STDIN%' AND state = 'active'",
        4,
    )
    .await;
    assert_retried(&out, kills);
    assert!(stdout(&out).contains("(binary COPY)"), "{}", text(&out));
    assert_eq!(pair.assert_same("big", "big").await, ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_backends_terminated_mid_copy_are_retried() {
    let pair = Pair::new("kill_source").await;
    seed_big(&pair.source, ROWS).await;
    let job = job_file(&slow_job(&pair, "retries = 10", ""));
    // The partitions' row queries, never the coordinator holding the snapshot.
    let (out, kills) = run_terminating(
        &job,
        &pair.source,
        "query LIKE 'SELECT %FROM (SELECT %) AS \"partition\"' AND state = 'active'",
        4,
    )
    .await;
    assert_retried(&out, kills);
    assert_eq!(pair.assert_same("big", "big").await, ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_coordinator_fails_the_run_and_a_rerun_resumes() {
    let pair = Pair::new("kill_coordinator").await;
    seed_big(&pair.source, ROWS).await;
    let job = job_file(&slow_job(&pair, "retries = 10", ""));
    let running =
        Running::start(&["run", job.path.to_str().unwrap()]).wait_for_line("partition written");
    // The coordinator holds the transaction whose snapshot every partition
    // imports; it counts the whole source (the coverage check), or idles after
    // exporting the snapshot and estimating the rows.
    let mut admin = PgConnection::connect(&server_url()).await.unwrap();
    assert!(
        terminate_one(
            &mut admin,
            &pair.source,
            "query LIKE 'SELECT count(*)::int8 FROM (%) AS \"all_rows\"'
             OR query LIKE 'SET LOCAL max_parallel_workers_per_gather %'
             OR (state = 'idle in transaction' AND (query LIKE 'EXPLAIN %' OR query LIKE '%pg_export_snapshot()%'))",
        )
        .await,
        "no coordinator found"
    );
    let out = running.finish();
    // Partitions started after it cannot import the snapshot: a permanent failure.
    assert_exit(&out, 1);
    let stdout1 = stdout(&out);
    assert!(stdout1.starts_with("copy FAILED"), "{}", text(&out));
    assert!(stderr(&out).contains("snapshot"), "{}", text(&out));
    assert!(stderr(&out).contains("resume with: "), "{}", text(&out));
    let committed = assert_committed_exactly(&pair, &text(&out)).await;
    assert_eq!(committed, written(&stdout1), "{stdout1}");
    assert!(!committed.is_empty(), "{stdout1}");

    let again = run(&job, false);
    assert_exit(&again, 0);
    assert_eq!(
        header_skipped(&stdout(&again)),
        committed.len(),
        "{}",
        text(&again)
    );
    assert_eq!(pair.assert_same("big", "big").await, ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_rerun_resumes_exactly_in_append_mode() {
    let pair = Pair::new("sigkill_append").await;
    seed_big(&pair.source, ROWS).await;
    // Rows of its own the append must leave alone.
    pair.target
        .exec("CREATE TABLE big (id bigint, pad text); INSERT INTO big VALUES (-1, 'mine'), (-2, 'mine too');")
        .await;
    let job = job_file(&slow_job(&pair, "", "mode = \"append\""));
    let killed = stop_after_first_partition(&job, "KILL");
    assert_eq!(killed.status.code(), None, "{}", text(&killed));
    wait_for_no_stride_sessions(&pair.target).await;
    wait_for_no_stride_sessions(&pair.source).await;
    let committed = assert_committed_exactly(&pair, &text(&killed)).await;
    assert!(!committed.is_empty());
    assert!(committed.len() < PARTITIONS as usize);
    assert_eq!(pair.target.count("big WHERE id < 0").await, 2);

    let again = run(&job, false);
    assert_exit(&again, 0);
    let out = stdout(&again);
    assert_eq!(header_skipped(&out), committed.len(), "{}", text(&again));
    assert!(
        header(&out).starts_with(&format!(
            "partitions {} written of {PARTITIONS}",
            PARTITIONS as usize - committed.len()
        )),
        "{out}"
    );
    for line in partition_lines(&out) {
        let expected = if committed.contains(&line.index) {
            "skipped (done earlier)"
        } else {
            "written"
        };
        assert_eq!(line.status, expected, "{out}");
    }
    // No duplicates, nothing missing, and the target's own rows still there.
    assert_eq!(
        pair.assert_same("big", "(SELECT * FROM big WHERE id > 0)")
            .await,
        ROWS
    );
    assert_eq!(pair.target.count("big WHERE id < 0").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_rerun_resumes_without_truncating_again() {
    let pair = Pair::new("sigkill_truncate").await;
    seed_big(&pair.source, ROWS).await;
    pair.target
        .exec("CREATE TABLE big (id bigint, pad text); INSERT INTO big VALUES (-1, 'stale');")
        .await;
    let job = job_file(&slow_job(&pair, "", "mode = \"truncate\""));
    let killed = stop_after_first_partition(&job, "KILL");
    assert_eq!(killed.status.code(), None, "{}", text(&killed));
    wait_for_no_stride_sessions(&pair.target).await;
    wait_for_no_stride_sessions(&pair.source).await;
    // Emptied once (the stale row is gone), then the committed partitions, whole.
    assert_eq!(pair.target.count("big WHERE id < 0").await, 0);
    let committed = assert_committed_exactly(&pair, &text(&killed)).await;
    assert!(!committed.is_empty());
    // Which transaction wrote each row: a resume must not write these again.
    pair.target
        .exec("CREATE TABLE before AS SELECT id, xmin::text AS x FROM big")
        .await;

    let again = run(&job, false);
    assert_exit(&again, 0);
    assert_eq!(
        header_skipped(&stdout(&again)),
        committed.len(),
        "{}",
        text(&again)
    );
    assert_eq!(pair.assert_same("big", "big").await, ROWS);
    let kept = pair
        .target
        .scalar_i64(
            "SELECT count(*) FROM before b JOIN big t ON t.id = b.id AND t.xmin::text = b.x",
        )
        .await;
    assert_eq!(
        kept,
        committed.len() as i64 * WIDTH,
        "rows of skipped partitions were written again\n{}",
        text(&again)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_prints_a_resume_command_that_finishes_the_copy() {
    let pair = Pair::new("sigint_resume").await;
    seed_big(&pair.source, ROWS).await;
    let job = job_file(&slow_job(&pair, "", "mode = \"truncate\""));
    let path = job.path.to_str().unwrap();
    // Started with --restart: the command that resumes must not carry it.
    let running = Running::start(&["run", "--restart", path]).wait_for_line("partition written");
    running.signal("INT");
    let out = running.finish();
    assert_exit(&out, 130);
    let first = stdout(&out);
    assert!(first.starts_with("copy INTERRUPTED"), "{}", text(&out));
    let committed = assert_committed_exactly(&pair, &text(&out)).await;
    assert_eq!(committed, written(&first), "{}", text(&out));
    let errors = stderr(&out);
    let command = errors
        .lines()
        .find_map(|l| l.strip_prefix("resume with: "))
        .unwrap_or_else(|| panic!("no resume command\n{}", text(&out)));
    assert_eq!(command, format!("{BIN} run {path}"), "{}", text(&out));

    let again = Command::new("sh")
        .args(["-c", command])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_exit(&again, 0);
    assert_eq!(
        header_skipped(&stdout(&again)),
        committed.len(),
        "{}",
        text(&again)
    );
    assert_eq!(pair.assert_same("big", "big").await, ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_fail_the_run_and_keep_what_was_committed() {
    let pair = Pair::new("exhausted").await;
    seed_big(&pair.source, 6000).await;
    // Every attempt at the partition holding ids 3001..=4000 loses its target
    // connection: the server terminates the backend, a transient failure. (One
    // INSERT per partition, so the server's message is read before the socket closes.)
    pair.target
        .exec(
            "CREATE TABLE big (id bigint, pad text);
             CREATE FUNCTION doomed() RETURNS trigger LANGUAGE plpgsql AS
               $$BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END$$;
             CREATE TRIGGER doomed BEFORE INSERT ON big FOR EACH ROW
               WHEN (NEW.id = 3500) EXECUTE FUNCTION doomed();",
        )
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"big\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 6001\ncount = 6\n[run]\nparallelism = 2\nretries = 2",
        "method = \"insert\"",
    ));
    let out = run(&job, false);
    assert_exit(&out, 1);
    let summary = stdout(&out);
    let errors = stderr(&out);
    assert!(summary.starts_with("copy FAILED"), "{}", text(&out));
    let lines = partition_lines(&summary);
    let failed = lines.iter().find(|l| l.index == 3).unwrap();
    assert_eq!(failed.status, "FAILED after 2 retries", "{summary}");
    assert_eq!(failed.rows, 0);
    assert_eq!(header_retries(&summary), 2, "{summary}");
    assert!(
        errors.contains("terminating connection due to administrator command"),
        "{}",
        text(&out)
    );
    assert!(
        errors.contains("partition 3 ([3001, 4001))"),
        "{}",
        text(&out)
    );
    assert!(errors.contains("retry 2 of 2 follows"), "{}", text(&out));

    // What the summary calls written is in the target, whole, and recorded; the
    // failed partition (and any never started) is absent.
    let written = written(&summary);
    assert!(!written.contains(&3));
    assert!(summary.contains(&format!(
        "written and committed: {}",
        written
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )));
    let recorded = checkpoints(&pair.target).await;
    assert_eq!(
        recorded,
        written
            .iter()
            .map(|&p| (p as i32, 1000))
            .collect::<Vec<_>>(),
        "{summary}"
    );
    for p in 0..6 {
        let n = pair
            .target
            .count(&format!(
                "big WHERE id BETWEEN {} AND {}",
                p * 1000 + 1,
                p * 1000 + 1000
            ))
            .await;
        let expected = if written.contains(&(p as usize)) {
            1000
        } else {
            0
        };
        assert_eq!(n, expected, "partition {p}\n{summary}");
    }
    assert_eq!(pair.target.count("big").await, written.len() as i64 * 1000);
    assert!(
        !pair
            .target
            .scalar_string("SELECT finished::text FROM stride_checkpoints WHERE partition = -1")
            .await
            .starts_with('t'),
        "a failed run is recorded as finished"
    );

    // Once the cause is gone, the same job picks up where it stopped.
    pair.target.exec("DROP TRIGGER doomed ON big").await;
    let again = run(&job, false);
    assert_exit(&again, 0);
    assert_eq!(
        header_skipped(&stdout(&again)),
        written.len(),
        "{}",
        text(&again)
    );
    assert_eq!(pair.assert_same("big", "big").await, 6000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constraint_violation_fails_fast_with_the_servers_message() {
    for method in ["copy", "insert"] {
        let pair = Pair::new(&format!("violation_{method}")).await;
        seed_big(&pair.source, 6000).await;
        pair.target
            .exec("CREATE TABLE big (id bigint CHECK (id <> 2500), pad text)")
            .await;
        let job = job_file(&job_text(
            &pair,
            "table = \"big\"",
            "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 6001\ncount = 6\n[run]\nparallelism = 1\nretries = 5",
            &format!("method = \"{method}\""),
        ));
        let out = run(&job, false);
        assert_exit(&out, 1);
        let summary = stdout(&out);
        let errors = stderr(&out);
        assert!(
            errors.contains(
                "new row for relation \"big\" violates check constraint \"big_id_check\""
            ),
            "{method}: {}",
            text(&out)
        );
        assert!(
            errors.contains("partition 2 ([2001, 3001))"),
            "{method}: {}",
            text(&out)
        );
        // No retry, no backoff (the first waits at least 0.5 s).
        assert!(!errors.contains("retry"), "{method}: {}", text(&out));
        assert_eq!(header_retries(&summary), 0, "{method}: {summary}");
        let lines = partition_lines(&summary);
        let failed = lines.iter().find(|l| l.index == 2).unwrap();
        assert_eq!(failed.status, "FAILED", "{method}: {summary}");
        assert!(failed.seconds < 0.5, "{method}: {summary}");
        // One at a time: 0 and 1 committed, 2 rolled back, 3.. never started.
        assert_eq!(written(&summary), [0, 1], "{method}: {summary}");
        assert!(
            summary.contains("written and committed: 0, 1;"),
            "{method}: {summary}"
        );
        assert_eq!(
            checkpoints(&pair.target).await,
            [(0, 1000), (1, 1000)],
            "{method}"
        );
        assert_eq!(pair.target.count("big").await, 2000, "{method}");
        assert_eq!(
            pair.target.count("big WHERE id > 2000").await,
            0,
            "{method}"
        );
    }
}

/// Job A over `big` (the slow job), interrupted after its first partition, then
/// job B: the same table into the same truncate-mode target, other bounds.
async fn interrupted_job_then_other_bounds(pair: &Pair) -> (JobFile, Vec<usize>) {
    seed_big(&pair.source, ROWS).await;
    let a = job_file(&slow_job(pair, "", "mode = \"truncate\""));
    let out = stop_after_first_partition(&a, "INT");
    assert_exit(&out, 130);
    let committed = assert_committed_exactly(pair, &text(&out)).await;
    assert!(!committed.is_empty());

    let b = job_file(&job_text(
        pair,
        "table = \"big\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 150001\ncount = 30\n[run]\nparallelism = 2",
        "mode = \"truncate\"",
    ));
    let out = run(&b, false);
    assert_exit(&out, 0);
    let summary = stdout(&out);
    assert!(!summary.contains("skipped"), "{summary}");
    assert!(
        header(&summary).starts_with("partitions 30 written of 30"),
        "{summary}"
    );
    assert!(partition_lines(&summary)
        .iter()
        .all(|l| l.status == "written"));
    assert!(
        summary.contains("[5001, 10001)"),
        "B's own bounds: {summary}"
    );
    assert_eq!(pair.assert_same("big", "big").await, ROWS);
    // B emptied the table, so A's checkpoints went with A's rows: only B's remain.
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(DISTINCT fingerprint) FROM stride_checkpoints")
            .await,
        1
    );
    (a, committed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_other_bounds_does_not_use_older_checkpoints() {
    let pair = Pair::new("changed_job").await;
    interrupted_job_then_other_bounds(&pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_run_is_not_resumed_onto_a_table_another_job_truncated() {
    let pair = Pair::new("changed_job_back").await;
    let (a, _) = interrupted_job_then_other_bounds(&pair).await;
    // B emptied the table A's checkpoints describe: A's committed partitions are
    // no longer there as A wrote them. Running A again must still end exact.
    let out = run(&a, false);
    assert_exit(&out, 0);
    assert_eq!(
        pair.target.count("big").await,
        ROWS,
        "job A resumed onto a table job B truncated and refilled\n{}",
        text(&out)
    );
    assert_eq!(pair.assert_same("big", "big").await, ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_copies_a_finished_append_job_again() {
    let pair = Pair::new("restart_finished").await;
    seed_big(&pair.source, 60_000).await;
    let job = job_file(&job_text(
        &pair,
        "table = \"big\"",
        "[partition]\ncolumn = \"id\"\ncount = 6",
        "mode = \"append\"",
    ));
    assert_exit(&run(&job, false), 0);
    assert_eq!(pair.assert_same("big", "big").await, 60_000);
    let again = run(&job, false);
    assert_exit(&again, 0);
    assert!(
        stdout(&again).contains("nothing to do: this job already finished"),
        "{}",
        text(&again)
    );
    assert_eq!(pair.target.count("big").await, 60_000);

    let restarted = run(&job, true);
    assert_exit(&restarted, 0);
    let summary = stdout(&restarted);
    assert!(
        header(&summary).starts_with("partitions 6 written of 6"),
        "{summary}"
    );
    assert!(!summary.contains("skipped"), "{summary}");
    // Every row twice.
    assert_eq!(pair.target.count("big").await, 120_000);
    assert_eq!(
        pair.target
            .count("(SELECT id FROM big GROUP BY id HAVING count(*) <> 2) AS odd")
            .await,
        0
    );
    pair.assert_same("big", "(SELECT DISTINCT * FROM big)")
        .await;
    // The restarted run is recorded alone, and finished.
    assert_eq!(checkpoints(&pair.target).await.len(), 6);
    assert_eq!(
        pair.target
            .scalar_string("SELECT finished::text FROM stride_checkpoints WHERE partition = -1")
            .await,
        "true"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_starts_an_interrupted_job_over() {
    let pair = Pair::new("restart_interrupted").await;
    seed_big(&pair.source, ROWS).await;
    // Truncate mode: the target is emptied again and everything copied afresh.
    let job = job_file(&slow_job(&pair, "", "mode = \"truncate\""));
    let out = stop_after_first_partition(&job, "INT");
    assert_exit(&out, 130);
    let committed = assert_committed_exactly(&pair, &text(&out)).await;
    assert!(!committed.is_empty());
    pair.target
        .exec("CREATE TABLE before AS SELECT id, xmin::text AS x FROM big")
        .await;
    let restarted = run(&job, true);
    assert_exit(&restarted, 0);
    let summary = stdout(&restarted);
    assert!(!summary.contains("skipped"), "{summary}");
    assert!(
        header(&summary).starts_with(&format!("partitions {PARTITIONS} written of {PARTITIONS}")),
        "{summary}"
    );
    assert_eq!(pair.assert_same("big", "big").await, ROWS);
    assert_eq!(
        pair.target
            .scalar_i64(
                "SELECT count(*) FROM before b JOIN big t ON t.id = b.id AND t.xmin::text = b.x"
            )
            .await,
        0,
        "rows of the interrupted run survived the restart"
    );

    // Append mode: starting over appends the earlier run's partitions a second time.
    // (The mode is not part of a job's fingerprint: forget the truncate job's run.)
    pair.target
        .exec("DROP TABLE big; DROP TABLE before; DROP TABLE stride_checkpoints")
        .await;
    let append = job_file(&slow_job(&pair, "", "mode = \"append\""));
    let out = stop_after_first_partition(&append, "INT");
    assert_exit(&out, 130);
    let earlier = assert_committed_exactly(&pair, &text(&out)).await;
    assert!(!earlier.is_empty());
    let restarted = run(&append, true);
    assert_exit(&restarted, 0);
    assert!(
        !stdout(&restarted).contains("skipped"),
        "{}",
        text(&restarted)
    );
    assert!(
        String::from_utf8_lossy(&restarted.stderr).contains("--restart in append mode"),
        "the doubled partitions are announced: {}",
        text(&restarted)
    );
    assert_eq!(
        pair.target.count("big").await,
        ROWS + earlier.len() as i64 * WIDTH,
        "{}",
        text(&restarted)
    );
    pair.assert_same("big", "(SELECT DISTINCT * FROM big)")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_keeps_the_bounds_read_by_the_run_it_resumes() {
    let pair = Pair::new("resume_auto_bounds").await;
    seed_big(&pair.source, ROWS).await;
    // No bounds in the job: the first run reads min and max (1 and 300,000), so
    // its partitions are those of the other tests.
    let job = job_file(&job_text(
        &pair,
        "table = \"big\"",
        &format!("[partition]\ncolumn = \"id\"\ncount = {PARTITIONS}\n[run]\nparallelism = 2"),
        "method = \"insert\"\nbatch_size = 200",
    ));
    let killed = stop_after_first_partition(&job, "KILL");
    assert_eq!(killed.status.code(), None, "{}", text(&killed));
    wait_for_no_stride_sessions(&pair.target).await;
    let committed = assert_committed_exactly(&pair, &text(&killed)).await;
    assert!(!committed.is_empty() && !committed.contains(&(PARTITIONS as usize - 1)));
    // The source grows past its old max: min and max read now would give other
    // partitions than those the checkpoints describe. The new rows belong to the
    // last partition, which is not committed yet.
    pair.source
        .exec(&format!(
            "INSERT INTO big SELECT g, md5(g::text) FROM generate_series({}, {}) g",
            ROWS + 1,
            ROWS + 30_000
        ))
        .await;
    let again = run(&job, false);
    assert_exit(&again, 0);
    let summary = stdout(&again);
    assert_eq!(
        header_skipped(&summary),
        committed.len(),
        "{}",
        text(&again)
    );
    assert!(summary.contains("[10001, 20001)"), "{summary}");
    assert_eq!(pair.assert_same("big", "big").await, ROWS + 30_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_backend_terminated_while_committing_is_retried() {
    let pair = Pair::new("kill_in_commit").await;
    pair.source
        .exec("CREATE TABLE slow (id int); INSERT INTO slow SELECT generate_series(1, 20);")
        .await;
    // Partition 0 (it holds id 1) spends 1 s in its COMMIT, in a deferred trigger:
    // terminated there, its transaction rolls back.
    pair.target
        .exec(
            "CREATE TABLE slow (id int);
             CREATE FUNCTION nap() RETURNS trigger LANGUAGE plpgsql AS
               $$BEGIN IF NEW.id = 1 THEN PERFORM pg_sleep(1); END IF; RETURN NULL; END$$;
             CREATE CONSTRAINT TRIGGER nap AFTER INSERT ON slow DEFERRABLE INITIALLY DEFERRED
               FOR EACH ROW EXECUTE FUNCTION nap();",
        )
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"slow\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 21\ncount = 2",
        "",
    ));
    let (out, kills) = run_terminating(
        &job,
        &pair.target,
        "query = 'COMMIT' AND state = 'active' AND now() - query_start > interval '200 ms'",
        1,
    )
    .await;
    assert_exit(&out, 0);
    assert_eq!(kills, 1, "{}", text(&out));
    let summary = stdout(&out);
    assert_eq!(header_retries(&summary), 1, "{summary}");
    let lines = partition_lines(&summary);
    assert_eq!(lines[0].status, "written after 1 retry", "{summary}");
    assert!(
        stderr(&out).contains("committing the target transaction"),
        "{}",
        text(&out)
    );
    assert_eq!(pair.assert_same("slow", "slow").await, 20);
}

/// A TCP proxy to the test server that, the first time a client sends a lone
/// `COMMIT`, lets the server run it, waits for the answer and then cuts the
/// connection instead of passing the answer on: the transaction is committed
/// and the client cannot know. Returns the proxy's port and whether it did.
fn commit_answer_eater() -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = url::Url::parse(&server_url()).unwrap();
    let upstream = format!(
        "{}:{}",
        server.host_str().unwrap_or("127.0.0.1"),
        server.port().unwrap_or(5432)
    );
    let eaten = Arc::new(AtomicBool::new(false));
    let once = Arc::clone(&eaten);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { break };
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let once = Arc::clone(&once);
            std::thread::spawn(move || relay(client, server, &once));
        }
    });
    (port, eaten)
}

/// Relays one connection, reading the client's side message by message.
fn relay(client: TcpStream, server: TcpStream, once: &AtomicBool) {
    let mute = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicBool::new(false));
    {
        let (mut from, mut to) = (server.try_clone().unwrap(), client.try_clone().unwrap());
        let (mute, answered) = (Arc::clone(&mute), Arc::clone(&answered));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if mute.load(Ordering::SeqCst) {
                    answered.store(true, Ordering::SeqCst);
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    let mut from = BufReader::new(client.try_clone().unwrap());
    let mut to = server.try_clone().unwrap();
    // Untyped messages (SSL request, startup) until the startup message, then typed ones.
    let mut started = false;
    loop {
        let mut message = Vec::new();
        if started {
            let mut kind = [0u8; 1];
            if from.read_exact(&mut kind).is_err() {
                break;
            }
            message.push(kind[0]);
        }
        let mut len = [0u8; 4];
        if from.read_exact(&mut len).is_err() {
            break;
        }
        message.extend_from_slice(&len);
        let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
        if from.read_exact(&mut body).is_err() {
            break;
        }
        if !started && body.starts_with(&[0, 3, 0, 0]) {
            started = true;
        }
        let commit = message[0] == b'Q' && body == b"COMMIT\0";
        message.extend_from_slice(&body);
        if commit && !once.swap(true, Ordering::SeqCst) {
            mute.store(true, Ordering::SeqCst);
            let _ = to.write_all(&message);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !answered.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = client.shutdown(Shutdown::Both);
            break;
        }
        if to.write_all(&message).is_err() {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Both);
}

/// The pair's job over `big` (4 partitions of 1,000 rows, one at a time), with
/// the target reached through `commit_answer_eater`.
async fn lost_commit_answer(label: &str, run_keys: &str) -> (Pair, Output, bool) {
    let pair = Pair::new(label).await;
    seed_big(&pair.source, 4000).await;
    let (port, eaten) = commit_answer_eater();
    let mut target = url::Url::parse(&pair.target.url).unwrap();
    target.set_port(Some(port)).unwrap();
    target.set_query(Some("sslmode=disable"));
    let job = job_file(&format!(
        "[source]\nurl = \"{}\"\ntable = \"big\"\n[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 4001\ncount = 4\n[run]\nparallelism = 1\n{run_keys}\n[target]\nurl = \"{target}\"\n",
        pair.source.url
    ));
    let out = run(&job, false);
    (pair, out, eaten.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_not_written_twice() {
    let (pair, out, eaten) = lost_commit_answer("lost_commit", "").await;
    assert!(eaten, "no COMMIT went through the proxy\n{}", text(&out));
    // Partition 0 is committed with its checkpoint; stride only saw its
    // connection drop. A retry must not add its rows again...
    assert_eq!(
        pair.target
            .count("(SELECT id FROM big GROUP BY id HAVING count(*) > 1) AS twice")
            .await,
        0,
        "rows written twice\n{}",
        text(&out)
    );
    // ...and the run can tell, from the checkpoint table, that it was committed.
    assert_exit(&out, 0);
    assert_eq!(pair.assert_same("big", "big").await, 4000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_checkpoints_a_commit_whose_answer_is_lost_is_not_written_twice() {
    let (pair, out, eaten) = lost_commit_answer("lost_commit_nocp", "checkpoint = false").await;
    assert!(eaten, "no COMMIT went through the proxy\n{}", text(&out));
    // Without a checkpoint table nothing tells whether the COMMIT happened: a
    // retry is a gamble that can only lose by writing the partition twice.
    assert_eq!(
        pair.target
            .count("(SELECT id FROM big GROUP BY id HAVING count(*) > 1) AS twice")
            .await,
        0,
        "rows written twice\n{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_checkpoint_table_from_an_older_stride_is_read_and_brought_up_to_date() {
    let pair = Pair::new("resume_oldcp").await;
    seed_big(&pair.source, 1000).await;
    // The checkpoint table as the first version of stride made it.
    pair.target
        .exec(
            "CREATE TABLE stride_checkpoints (
                fingerprint text NOT NULL, partition integer NOT NULL, target_table text NOT NULL,
                range text NOT NULL, lower_bound bigint, upper_bound bigint, partitions integer,
                rows bigint, bytes bigint, finished boolean NOT NULL DEFAULT false,
                recorded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (fingerprint, partition))",
        )
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"big\"",
        "[partition]\ncolumn = \"id\"\ncount = 4",
        "mode = \"error-if-exists\"",
    ));
    // A shard reads it (and finds no prepared run), error-if-exists reads it
    // before writing anything, and the run brings it up to date.
    let shard = stride(&["run", "--shard", "0/2", job.path.to_str().unwrap()], &[]);
    assert_exit(&shard, 2);
    assert!(
        stderr(&shard).contains("no prepared run of this job"),
        "{}",
        text(&shard)
    );
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(pair.assert_same("big", "big").await, 1000);
    let columns = pair
        .target
        .scalar_i64(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'stride_checkpoints' \
             AND column_name IN ('target_oid', 'failed_check', 'mark_first', 'mark_from', 'mark_to', 'boundaries')",
        )
        .await;
    assert_eq!(columns, 6);
}
