//! `stride run --shard auto`: workers that claim partitions until none are left,
//! and `stride status`. Each test ends with the target equal to the source
//! (counts and checksums) and every partition recorded once.

use std::time::{Duration, Instant};

use crate::common::*;

/// `skew (id bigint, pad text)` cut into 48 partitions of 1,000 ids each, whose
/// rows thin out along the key: partition 0 holds 1,000, partition 47 holds 107
/// (9.3x fewer). Three NULL ids and two out-of-bounds ids land in the first and
/// last partitions.
async fn seed(db: &TestDb) {
    db.exec(
        "CREATE TABLE skew (id bigint, pad text);
         INSERT INTO skew SELECT k * 1000 + i, md5((k * 1000 + i)::text)
           FROM generate_series(0, 47) k, generate_series(0, 999) i WHERE i < 1000 - k * 19;
         INSERT INTO skew VALUES (NULL, 'a'), (NULL, 'b'), (NULL, NULL), (-5, 'low'), (50000, 'high');
         ANALYZE skew;",
    )
    .await;
}

fn job(pair: &Pair, count: u32) -> JobFile {
    job_file(&job_text(
        pair,
        "table = \"skew\"",
        &format!(
            "[partition]\ncolumn = \"id\"\nlower_bound = 0\nupper_bound = {}\ncount = {count}\n[run]\nparallelism = 2\nverify = \"checksum\"",
            count * 1000
        ),
        "mode = \"truncate\"",
    ))
}

fn path(job: &JobFile) -> &str {
    job.path.to_str().unwrap()
}

/// The number in "partitions N written of M" of a worker's summary.
fn written(out: &std::process::Output) -> usize {
    let said = String::from_utf8_lossy(&out.stdout);
    let line = said
        .lines()
        .find(|l| l.starts_with("partitions "))
        .unwrap_or_else(|| panic!("no partitions line:\n{}", text(out)));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn recorded(pair: &Pair) -> i64 {
    pair.target
        .scalar_i64("SELECT count(*) FROM stride_checkpoints WHERE partition >= 0")
        .await
}

fn status_json(job: &JobFile) -> serde_json::Value {
    let out = stride(&["status", "--format", "json", path(job)], &[]);
    assert_exit(&out, 0);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

#[tokio::test]
async fn auto_workers_share_a_skewed_run_and_take_over_a_killed_workers_partition() {
    let pair = Pair::new("workers_kill").await;
    seed(&pair.source).await;
    // A primary key on the target lets the test hold partition 0 up: its COPY
    // waits for the test's uncommitted row with the same id.
    pair.target
        .exec("CREATE TABLE skew (id bigint UNIQUE, pad text)")
        .await;
    let job = job(&pair, 48);

    // Nothing prepared yet: status says so.
    assert_eq!(status_json(&job)["state"], "none");
    assert_exit(&stride(&["prepare", path(&job)], &[]), 0);
    let prepared = status_json(&job);
    assert_eq!(prepared["state"], "in_progress");
    assert_eq!(prepared["done"], 0);
    assert_eq!(prepared["left"], 48);
    assert!(
        prepared["estimated_rows_left"].as_u64().unwrap() > 20_000,
        "{prepared}"
    );

    let mut blocker = pair.target.conn().await;
    exec(&mut blocker, "BEGIN").await;
    exec(
        &mut blocker,
        "INSERT INTO skew VALUES (500, 'held by the test')",
    )
    .await;

    // Worker A, one partition at a time, claims the largest first (0) and waits.
    let a = Running::start(&[
        "--set",
        "run.parallelism=1",
        "run",
        "--shard",
        "auto",
        path(&job),
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let claim = loop {
        let status = status_json(&job);
        if let Some(claim) = status["in_flight"]
            .as_array()
            .and_then(|c| c.first())
            .cloned()
        {
            break claim;
        }
        assert!(
            Instant::now() < deadline,
            "worker A claimed nothing: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(claim["partition"], 0, "{claim}");
    let worker = claim["worker"].as_str().unwrap();
    assert!(
        worker.starts_with("stride ") && worker.ends_with(&format!(":{}", a.pid())),
        "status names worker A by host and process: {worker}"
    );

    // B (by flag) and C (by STRIDE_SHARD) copy the other 47 partitions, then
    // wait for partition 0.
    let b = Running::start(&["run", "--shard", "auto", path(&job)]);
    let c = std::process::Command::new(env!("CARGO_BIN_EXE_stride"))
        .args(["run", path(&job)])
        .env("STRIDE_SHARD", "auto")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorded(&pair).await < 47 {
        assert!(
            Instant::now() < deadline,
            "the other 47 partitions were not copied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text_status = stride(&["status", path(&job)], &[]);
    assert_exit(&text_status, 0);
    let said = String::from_utf8_lossy(&text_status.stdout).into_owned();
    assert!(
        said.contains("done 47   in flight 1   left 0   rows "),
        "{said}"
    );

    // A dies mid-partition; once the test lets go of id 500, A's backend finds
    // its client gone and rolls back, and B or C takes partition 0 over.
    a.signal("KILL");
    let killed = a.finish();
    assert_eq!(killed.status.code(), None, "killed by a signal");
    exec(&mut blocker, "ROLLBACK").await;
    let b = b.finish();
    let c = c.wait_with_output().unwrap();
    assert_exit(&b, 0);
    assert_exit(&c, 0);
    assert_eq!(written(&b) + written(&c), 48, "{}\n{}", text(&b), text(&c));
    assert!(
        String::from_utf8_lossy(&b.stdout).contains("more copied or being copied by other workers"),
        "{}",
        text(&b)
    );
    assert_eq!(recorded(&pair).await, 48);

    let finish = stride(&["finish", path(&job)], &[]);
    assert_exit(&finish, 0);
    let rows = pair.assert_same("skew", "skew").await;
    assert_eq!(rows, 26_573);
    let finished = status_json(&job);
    assert_eq!(finished["state"], "finished");
    assert_eq!(finished["done"], 48);
    assert_eq!(finished["rows"], rows);
}

#[tokio::test]
async fn more_workers_than_partitions_and_late_workers_exit_zero_with_the_target_exact() {
    let pair = Pair::new("workers_many").await;
    seed(&pair.source).await;
    let job = job(&pair, 2);
    assert_exit(&stride(&["prepare", path(&job)], &[]), 0);

    let workers: Vec<Running> = (0..4)
        .map(|_| Running::start(&["run", "--shard", "auto", path(&job)]))
        .collect();
    let outs: Vec<_> = workers.into_iter().map(Running::finish).collect();
    for out in &outs {
        assert_exit(out, 0);
    }
    assert_eq!(outs.iter().map(written).sum::<usize>(), 2);
    assert_eq!(recorded(&pair).await, 2);

    // A worker started after everything is copied finds nothing and says so.
    let late = stride(&["run", "--shard", "auto", path(&job)], &[]);
    assert_exit(&late, 0);
    assert!(
        String::from_utf8_lossy(&late.stdout)
            .contains("partitions 0 written of 0 (2 more copied or being copied by other workers)"),
        "{}",
        text(&late)
    );
    assert_exit(&stride(&["finish", path(&job)], &[]), 0);
    pair.assert_same("skew", "skew").await;
}

#[tokio::test]
async fn finish_before_the_workers_are_done_names_the_command_that_finishes_them() {
    let pair = Pair::new("workers_finish").await;
    seed(&pair.source).await;
    let job = job(&pair, 4);
    assert_exit(&stride(&["prepare", path(&job)], &[]), 0);
    let early = stride(&["finish", path(&job)], &[]);
    assert_exit(&early, 1);
    let said = String::from_utf8_lossy(&early.stderr).into_owned();
    let command = said
        .split("or `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no command in: {said}"));
    assert_eq!(
        command,
        format!(
            "{} run --shard auto {}",
            env!("CARGO_BIN_EXE_stride"),
            path(&job)
        )
    );

    // The command as printed finishes the copy.
    let words: Vec<&str> = command.split(' ').collect();
    let out = std::process::Command::new(words[0])
        .args(&words[1..])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_exit(&stride(&["finish", path(&job)], &[]), 0);
    pair.assert_same("skew", "skew").await;
}
