//! A run always ends, and says what it wrote: a source or target that stops
//! moving data (a frozen network: packets dropped, sockets left open) fails the
//! partition after `run.stall_timeout` and the retry copies it exactly; one that
//! stays frozen fails the run; SIGTERM ends a run with a frozen connection
//! within seconds; a COMMIT whose connection is cut or frozen right after it was
//! sent is settled from the checkpoint table once the old session is gone, never
//! reported failed when it committed. Only one side goes through the proxy in
//! each test.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::proxy::{Action, Direction, Proxy};

/// Rows of `t`: four partitions of about 300 KB of binary COPY each, so a
/// trigger at `TRIGGER_BYTES` lands in the middle of one partition's rows.
const ROWS: i64 = 20_000;
const TRIGGER_BYTES: u64 = 100_000;

/// A pair whose source holds `t (id bigint primary key, pad text)` with ids
/// `1..=rows`, and whose target holds an empty `t` with the same primary key:
/// a retry whose old transaction still held its rows would wait on that key.
async fn seeded(label: &str, rows: i64) -> Pair {
    let pair = Pair::new(label).await;
    let create = "CREATE TABLE t (id bigint PRIMARY KEY, pad text);";
    pair.source
        .exec(&format!(
            "{create} INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;"
        ))
        .await;
    pair.target.exec(create).await;
    pair
}

/// The job over `t` in four partitions, truncate mode, with the given source and
/// target URLs (one of them through a proxy) and `[run]` keys.
fn job(source: &str, target: &str, rows: i64, run: &str) -> JobFile {
    job_file(&format!(
        "[source]\nurl = \"{source}\"\ntable = \"t\"\n\
         [partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = {}\ncount = 4\n\
         [run]\n{run}\n\
         [target]\nurl = \"{target}\"\nmode = \"truncate\"\n",
        rows + 1
    ))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `stride run job` to its end on a blocking thread; returns the output and
/// how long it took.
async fn run_timed(job: &JobFile) -> (Output, Duration) {
    let path = job.path.to_str().unwrap().to_string();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = stride(&["run", &path], &[]);
        (out, started.elapsed())
    })
    .await
    .unwrap()
}

/// The copy ended exact: exit 0, every partition written, the same `rows` on
/// both sides, and the four partitions recorded.
async fn assert_exact(pair: &Pair, out: &Output, rows: i64, context: &str) {
    assert_exit(out, 0);
    assert!(
        stdout(out).contains("partitions 4 written of 4"),
        "{context}\n{}",
        text(out)
    );
    assert!(!stdout(out).contains("FAILED"), "{context}\n{}", text(out));
    assert_eq!(pair.assert_same("t", "t").await, rows, "{context}");
    assert_eq!(
        pair.target
            .count("stride_checkpoints WHERE partition >= 0")
            .await,
        4,
        "{context}\n{}",
        text(out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_source_is_retried_and_the_copy_is_exact() {
    let pair = seeded("frozen_source", ROWS).await;
    let proxy = Proxy::start();
    proxy.after_bytes(Direction::ServerToClient, TRIGGER_BYTES, Action::Freeze);
    let job = job(
        &proxy.url(&pair.source.url),
        &pair.target.url,
        ROWS,
        "parallelism = 2\nretries = 2\nstall_timeout = \"2s\"",
    );
    let (out, took) = run_timed(&job).await;
    assert_eq!(proxy.fired(), 1, "the source never froze\n{}", text(&out));
    assert!(
        stderr(&out).contains("the source moved no data for 2 s (run.stall_timeout)"),
        "{}",
        text(&out)
    );
    assert!(stderr(&out).contains("retry 1 of 2"), "{}", text(&out));
    assert!(stdout(&out).contains("after 1 retry"), "{}", text(&out));
    assert_exact(&pair, &out, ROWS, "").await;
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_target_is_retried_and_the_copy_is_exact() {
    let pair = seeded("frozen_target", ROWS).await;
    let proxy = Proxy::start();
    proxy.after_bytes(Direction::ClientToServer, TRIGGER_BYTES, Action::Freeze);
    let job = job(
        &pair.source.url,
        &proxy.url(&pair.target.url),
        ROWS,
        "parallelism = 2\nretries = 2\nstall_timeout = \"2s\"",
    );
    let (out, took) = run_timed(&job).await;
    assert_eq!(proxy.fired(), 1, "the target never froze\n{}", text(&out));
    assert!(
        stderr(&out).contains("the target moved no data for 2 s (run.stall_timeout)"),
        "{}",
        text(&out)
    );
    // The frozen session's transaction held the partition's keys: the retry
    // went through because that session was ended.
    assert!(stdout(&out).contains("after 1 retry"), "{}", text(&out));
    assert_exact(&pair, &out, ROWS, "").await;
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

/// Stall timeout 2 s, one retry: two attempts. Each one ends within the timeout
/// and a quarter (the watchdog's tick), plus at most 2 s to give up on ending
/// the stalled sessions (the target answers no new connection either) and the
/// backoff between them (under 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_frozen_for_good_fails_the_run_within_the_stall_timeout_per_attempt() {
    let pair = seeded("frozen_for_good", ROWS).await;
    let proxy = Proxy::start();
    proxy.after_bytes(
        Direction::ClientToServer,
        TRIGGER_BYTES,
        Action::FreezeEverything,
    );
    let job = job(
        &pair.source.url,
        &proxy.url(&pair.target.url),
        ROWS,
        "parallelism = 1\nretries = 1\nstall_timeout = \"2s\"",
    );
    let (out, took) = run_timed(&job).await;
    assert_eq!(proxy.fired(), 1, "the target never froze\n{}", text(&out));
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("partition 0 (")
            && err.contains("): the target moved no data for 2 s (run.stall_timeout)"),
        "{}",
        text(&out)
    );
    assert!(err.contains("retry 1 of 1"), "{}", text(&out));
    assert!(stdout(&out).contains("copy FAILED"), "{}", text(&out));
    assert!(
        stdout(&out).contains("written and committed: none"),
        "{}",
        text(&out)
    );
    // Two attempts of 2.5 s at most, 2 s of cleanup after the first (the second
    // stalls before it has sessions), under 1 s of backoff, and about 2 s to
    // start the process and plan the run: about 10 s; the rest is slack for a
    // busy machine.
    assert!(
        took < Duration::from_secs(16),
        "took {took:?}\n{}",
        text(&out)
    );
    assert_eq!(pair.target.count("t").await, 0);
    // The second attempt asked for a new target connection, which froze too.
    assert!(proxy.accepted() >= 2, "{}", text(&out));
}

/// A pause shorter than the stall timeout is not a stall: the source freezes
/// mid-partition for 1 s, the timeout is 4 s, and nothing is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_shorter_than_the_stall_timeout_is_waited_out() {
    let pair = seeded("brief_pause", ROWS).await;
    let proxy = Proxy::start();
    proxy.after_bytes(Direction::ServerToClient, TRIGGER_BYTES, Action::Freeze);
    let job = job(
        &proxy.url(&pair.source.url),
        &pair.target.url,
        ROWS,
        "parallelism = 2\nretries = 2\nstall_timeout = \"4s\"",
    );
    let path = job.path.to_str().unwrap().to_string();
    let running = tokio::task::spawn_blocking(move || stride(&["run", &path], &[]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.fired() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.fired(), 1, "the source never froze");
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.thaw();
    let out = running.await.unwrap();
    assert!(!stderr(&out).contains("moved no data"), "{}", text(&out));
    assert!(!stdout(&out).contains("retries"), "{}", text(&out));
    assert_exact(&pair, &out, ROWS, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_run_with_a_frozen_source_within_seconds() {
    let pair = seeded("sigterm_frozen", ROWS).await;
    let proxy = Proxy::start();
    proxy.after_bytes(
        Direction::ServerToClient,
        TRIGGER_BYTES,
        Action::FreezeEverything,
    );
    // A stall timeout far beyond the test: only the signal can end this run.
    let job = job(
        &proxy.url(&pair.source.url),
        &pair.target.url,
        ROWS,
        "parallelism = 2\nstall_timeout = \"10m\"",
    );
    // Frozen for a moment: every await of the run is pending on it.
    let (out, took) = sigterm_once_frozen(
        &job,
        &proxy,
        "the source never froze",
        Duration::from_millis(500),
    )
    .await;
    assert_exit(&out, 130);
    assert!(
        took < Duration::from_secs(8),
        "exited {took:?} after SIGTERM\n{}",
        text(&out)
    );
    assert!(stdout(&out).contains("copy INTERRUPTED"), "{}", text(&out));
    assert!(stderr(&out).contains("resume with: "), "{}", text(&out));
}

/// Rounds of the cut-COMMIT race: each round copies a small table with the
/// target through the proxy, which cuts the connection of the first COMMIT right
/// after forwarding it. Whether the server ran that COMMIT is a race; either
/// way the run must end exact, with the partition written.
///
/// A local COMMIT takes well under a millisecond, less than stride needs to
/// notice the cut and connect again, so the race would hardly ever be run: a
/// deferred trigger on the checkpoint table makes each partition's COMMIT take
/// 10 to 60 ms, as a COMMIT does that waits for a disk or a synchronous standby.
/// (Without the settlement's wait for the old session, this fails in most
/// rounds: the lookup finds nothing, the retry's checkpoint row then waits for
/// the old COMMIT and fails on the primary key.)
const COMMIT_ROUNDS: usize = 15;
const SMALL_ROWS: i64 = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cut_right_after_it_was_sent_is_never_reported_failed() {
    let pair = seeded("cut_commit", SMALL_ROWS).await;
    let proxy = Proxy::start();
    let job = job(
        &pair.source.url,
        &proxy.url(&pair.target.url),
        SMALL_ROWS,
        "parallelism = 2\nretries = 2\nstall_timeout = \"30s\"",
    );
    // A first run makes the checkpoint table, to put the trigger on.
    let (out, _) = run_timed(&job).await;
    assert_exact(&pair, &out, SMALL_ROWS, "first run").await;
    pair.target
        .exec(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(0.01 + random() * 0.05); RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON stride_checkpoints
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
               WHEN (NEW.partition >= 0) EXECUTE FUNCTION slow_commit();",
        )
        .await;
    let (mut went_through, mut did_not) = (0, 0);
    for round in 0..COMMIT_ROUNDS {
        let fired = proxy.fired();
        proxy.after_commit(Action::Cut, 1);
        let (out, _) = run_timed(&job).await;
        assert_eq!(
            proxy.fired(),
            fired + 1,
            "round {round}: no COMMIT went through the proxy\n{}",
            text(&out)
        );
        assert_exact(&pair, &out, SMALL_ROWS, &format!("round {round}")).await;
        let err = stderr(&out);
        if err.contains("the COMMIT went through") {
            went_through += 1;
        } else if err.contains("so the COMMIT did not happen") {
            did_not += 1;
        } else {
            panic!(
                "round {round}: the unanswered COMMIT was not settled\n{}",
                text(&out)
            );
        }
    }
    // Both outcomes are correct; which ones came shows the race was run.
    eprintln!("cut COMMITs: {went_through} went through, {did_not} did not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_frozen_right_after_it_was_sent_is_settled_after_the_stall_timeout() {
    let pair = seeded("frozen_commit", SMALL_ROWS).await;
    let proxy = Proxy::start();
    proxy.after_commit(Action::Freeze, 1);
    let job = job(
        &pair.source.url,
        &proxy.url(&pair.target.url),
        SMALL_ROWS,
        "parallelism = 2\nretries = 2\nstall_timeout = \"1s\"",
    );
    let (out, took) = run_timed(&job).await;
    assert_eq!(proxy.fired(), 1, "no COMMIT went through the proxy");
    let err = stderr(&out);
    // The server got the COMMIT and ran it; only its answer is held: once the
    // frozen session is ended, the checkpoint shows it committed.
    assert!(err.contains("the COMMIT went through"), "{}", text(&out));
    assert!(!stdout(&out).contains("after 1 retry"), "{}", text(&out));
    assert_exact(&pair, &out, SMALL_ROWS, "").await;
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// SIGTERM after the copy, while verify waits on a frozen source: the process
/// exits 130 within seconds, with the summary (every partition written) and the
/// resume command; the resumed run skips every partition and does the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_verify_on_a_frozen_source_exits_and_the_resume_finishes() {
    let pair = seeded("sigterm_verify", ROWS).await;
    let proxy = Proxy::start();
    // The first verify query freezes the network before it reaches the source.
    proxy.on_message("hashtextextended", Action::FreezeEverything);
    let job = job(
        &proxy.url(&pair.source.url),
        &pair.target.url,
        ROWS,
        "parallelism = 2\nverify = \"checksum\"\nstall_timeout = \"10m\"",
    );
    let (out, took) = sigterm_once_frozen(
        &job,
        &proxy,
        "verify never reached the source",
        Duration::from_millis(500),
    )
    .await;
    assert_exit(&out, 130);
    assert!(
        took < Duration::from_secs(8),
        "exited {took:?} after SIGTERM\n{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("partitions 4 written of 4"),
        "{}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("interrupted after the copy"),
        "{}",
        text(&out)
    );
    assert!(stderr(&out).contains("resume with: "), "{}", text(&out));
    // The resume (same URLs, so the same run), the network back: nothing is
    // copied again, and verify runs.
    proxy.thaw();
    let (out, _) = run_timed(&job).await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("4 skipped: committed by an earlier run"),
        "{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("4 of 4 partitions match"),
        "{}",
        text(&out)
    );
    assert_eq!(pair.assert_same("t", "t").await, ROWS);
}

/// SIGTERM while a COMMIT waits for its answer on a network that froze right
/// after it was sent: the COMMIT is awaited 3 s, its settlement 3 s more (it
/// cannot reach the target), then the process exits 130 saying the partition's
/// outcome is not known yet. The resumed run finds it committed and skips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_frozen_commit_exits_and_the_resume_settles_it() {
    let pair = seeded("sigterm_commit", SMALL_ROWS).await;
    let proxy = Proxy::start();
    proxy.after_commit(Action::FreezeEverything, 1);
    let job = job(
        &pair.source.url,
        &proxy.url(&pair.target.url),
        SMALL_ROWS,
        "parallelism = 1\nstall_timeout = \"10m\"",
    );
    let (out, took) = sigterm_once_frozen(
        &job,
        &proxy,
        "no COMMIT went through the proxy",
        Duration::from_millis(300),
    )
    .await;
    assert_exit(&out, 130);
    assert!(
        took < Duration::from_secs(9),
        "exited {took:?} after SIGTERM\n{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("whether the partition was committed is not known yet"),
        "{}",
        text(&out)
    );
    assert!(stderr(&out).contains("resume with: "), "{}", text(&out));
    proxy.thaw();
    let (out, _) = run_timed(&job).await;
    assert_exit(&out, 0);
    // Partition 0's COMMIT reached the server before the freeze: it is skipped.
    assert!(
        stdout(&out).contains("partitions 3 written of 4 (1 skipped: committed by an earlier run)"),
        "{}",
        text(&out)
    );
    assert_eq!(pair.assert_same("t", "t").await, SMALL_ROWS);
}

/// Starts the job, waits until the proxy's action fired (`what` says what it
/// waits for, if it never does), lets the frozen run sit for `frozen`, sends
/// SIGTERM and returns stride's output and how long it took to exit after it.
async fn sigterm_once_frozen(
    job: &JobFile,
    proxy: &Proxy,
    what: &str,
    frozen: Duration,
) -> (Output, Duration) {
    let mut running = Running::start(&["run", job.path.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.fired() == 0 && Instant::now() < deadline && !running.exited() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.fired(), 1, "{what}");
    tokio::time::sleep(frozen).await;
    assert!(!running.exited(), "stride ended while frozen");
    running.signal("TERM");
    let signalled = Instant::now();
    while !running.exited() && signalled.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = signalled.elapsed();
    (running.finish(), took)
}
