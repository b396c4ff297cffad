//! Many machines: `stride prepare`, shards (`run --shard I/N`, or the environment
//! Kubernetes Indexed Jobs set) sharing the job's checkpoints, and `stride finish`.
//! Each test ends with the target equal to the source (counts and checksums), and
//! every step is run twice where it promises to be safe to.

use std::process::{Command, Output, Stdio};

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_stride");

/// `big (id bigint, pad text)`: ids 1..=rows, and three rows with a NULL id
/// (partition 0 takes them).
async fn seed(db: &TestDb, rows: i64) {
    db.exec(&format!(
        "CREATE TABLE big (id bigint, pad text);
         INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;
         INSERT INTO big VALUES (NULL, 'a'), (NULL, 'b'), (NULL, NULL);
         ANALYZE big;"
    ))
    .await;
}

/// A job over `big` in eight partitions; `target` adds keys to `[target]`.
fn job(pair: &Pair, run: &str, target: &str) -> JobFile {
    job_file(&job_text(
        pair,
        "table = \"big\"",
        &format!("[partition]\ncolumn = \"id\"\ncount = 8\n[run]\nparallelism = 2\n{run}"),
        target,
    ))
}

fn step(args: &[&str], job: &JobFile) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.push(job.path.to_str().unwrap());
    stride(&all, &[])
}

/// The partitions recorded as committed on the target, in order.
async fn committed(pair: &Pair) -> Vec<i32> {
    let list = pair
        .target
        .scalar_string(
            "SELECT coalesce(string_agg(partition::text, ',' ORDER BY partition), '') \
             FROM stride_checkpoints WHERE partition >= 0",
        )
        .await;
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn two_shards_at_once_then_finish_copy_exactly() {
    let pair = Pair::new("shards_two").await;
    seed(&pair.source, 120_000).await;
    pair.target
        .exec("CREATE TABLE big (id bigint, pad text); INSERT INTO big VALUES (-1, 'old row');")
        .await;
    let job = job(&pair, "verify = \"checksum\"", "mode = \"truncate\"");

    let out = step(&["prepare"], &job);
    assert_exit(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("prepared: 8 partitions into \"big\""),
        "{}",
        text(&out)
    );
    // prepare emptied the target and recorded the run; a second prepare changes nothing.
    assert_eq!(pair.target.count("big").await, 0);
    pair.target
        .exec("INSERT INTO big VALUES (-2, 'written after prepare')")
        .await;
    let again = step(&["prepare"], &job);
    assert_exit(&again, 0);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already prepared: 0 of 8 partitions"),
        "{}",
        text(&again)
    );
    assert_eq!(
        pair.target.count("big").await,
        1,
        "a second prepare empties nothing"
    );
    pair.target.exec("DELETE FROM big").await;

    // Both shards at once, as two machines would run them.
    let spawn = |shard: &str| {
        Command::new(BIN)
            .args(["run", "--shard", shard, job.path.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("0/2"), spawn("1/2"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_exit(&a, 0);
    assert_exit(&b, 0);
    let said = String::from_utf8_lossy(&b.stdout).into_owned();
    assert!(
        said.contains("(binary COPY; shard 1/2)") && said.contains("partitions 4 written of 4"),
        "{said}"
    );
    assert_eq!(committed(&pair).await, (0..8).collect::<Vec<_>>());

    // Shards do not close the run; finish does, after its verify.
    let unfinished = pair
        .target
        .scalar_i64("SELECT count(*) FROM stride_checkpoints WHERE partition = -1 AND NOT finished")
        .await;
    assert_eq!(unfinished, 1);
    let finish = step(&["finish"], &job);
    assert_exit(&finish, 0);
    let said = String::from_utf8_lossy(&finish.stdout).into_owned();
    assert!(
        said.contains("finished: 8 partitions, 120,003 rows in \"big\""),
        "{said}"
    );
    assert!(
        said.contains("checksum"),
        "finish verifies as the job asks: {said}"
    );
    let again = step(&["finish"], &job);
    assert_exit(&again, 0);
    assert!(
        String::from_utf8_lossy(&again.stdout)
            .contains("nothing to do: the run of this job already finished"),
        "{}",
        text(&again)
    );
    // A shard of a finished run has nothing to do.
    let late = step(&["run", "--shard", "1/2"], &job);
    assert_exit(&late, 0);
    assert!(text(&late).contains("nothing to do"), "{}", text(&late));

    assert_eq!(pair.assert_same("big", "big").await, 120_003);
}

#[tokio::test]
async fn finish_refuses_until_every_shard_is_done_and_shards_need_prepare() {
    let pair = Pair::new("shards_order").await;
    seed(&pair.source, 20_000).await;
    let job = job(&pair, "", "");

    // A shard before prepare: exit 2, nothing written (not even the target table).
    let early = step(&["run", "--shard", "0/2"], &job);
    assert_exit(&early, 2);
    assert!(
        text(&early).contains("--shard: no prepared run of this job"),
        "{}",
        text(&early)
    );
    let early_finish = step(&["finish"], &job);
    assert_exit(&early_finish, 2);
    assert_eq!(
        pair.target
            .scalar_i64(
                "SELECT count(*) FROM pg_class WHERE relname IN ('big', 'stride_checkpoints')"
            )
            .await,
        0
    );

    assert_exit(&step(&["prepare"], &job), 0);
    // The shard index from the environment, as a Kubernetes Indexed Job sets it.
    let first = stride(
        &["run", job.path.to_str().unwrap()],
        &[("JOB_COMPLETION_INDEX", "0"), ("STRIDE_SHARD_COUNT", "2")],
    );
    assert_exit(&first, 0);
    assert_eq!(committed(&pair).await, vec![0, 2, 4, 6]);

    let refused = step(&["finish"], &job);
    assert_exit(&refused, 1);
    assert!(
        text(&refused).contains("4 of 8 partitions are not copied yet (partitions 1, 3, 5, 7)"),
        "{}",
        text(&refused)
    );

    let second = stride(
        &["run", job.path.to_str().unwrap()],
        &[("STRIDE_SHARD_INDEX", "1"), ("STRIDE_SHARD_COUNT", "2")],
    );
    assert_exit(&second, 0);
    assert_exit(&step(&["finish"], &job), 0);
    assert_eq!(pair.assert_same("big", "big").await, 20_003);

    // A shard cannot start the run over; a half-set environment is refused.
    assert_exit(&step(&["run", "--shard", "0/2", "--restart"], &job), 2);
    let half = stride(
        &["run", job.path.to_str().unwrap()],
        &[("STRIDE_SHARD_COUNT", "2")],
    );
    assert_exit(&half, 2);
    assert!(
        text(&half).contains("STRIDE_SHARD_COUNT is set without"),
        "{}",
        text(&half)
    );
}

#[tokio::test]
async fn a_killed_shard_resumes_its_own_partitions() {
    let pair = Pair::new("shards_kill").await;
    seed(&pair.source, 160_000).await;
    // Small INSERT batches make each partition take a while.
    let job = job(&pair, "", "method = \"insert\"\nbatch_size = 200");
    assert_exit(&step(&["prepare"], &job), 0);

    let running = Running::start(&["run", "--shard", "1/2", job.path.to_str().unwrap()])
        .wait_for_line("partition written");
    running.signal("KILL");
    running.finish();
    let before = committed(&pair).await;
    assert!(
        !before.is_empty() && before.iter().all(|p| p % 2 == 1),
        "{before:?}"
    );

    // The restarted shard skips what it committed and copies the rest of its own.
    let resumed = step(&["run", "--shard", "1/2"], &job);
    assert_exit(&resumed, 0);
    assert!(text(&resumed).contains("skipped"), "{}", text(&resumed));
    assert_eq!(committed(&pair).await, vec![1, 3, 5, 7]);

    assert_exit(&step(&["run", "--shard", "0/2"], &job), 0);
    assert_exit(&step(&["finish"], &job), 0);
    assert_eq!(pair.assert_same("big", "big").await, 160_003);
}

#[tokio::test]
async fn a_whole_run_finishes_a_prepared_run() {
    let pair = Pair::new("shards_whole").await;
    seed(&pair.source, 30_000).await;
    let job = job(&pair, "verify = \"count\"", "mode = \"truncate\"");
    assert_exit(&step(&["prepare"], &job), 0);
    assert_exit(&step(&["run", "--shard", "0/4"], &job), 0);
    // A plain run takes the prepared run over: the rest of the partitions, then
    // its checks, and closes it.
    let rest = step(&["run"], &job);
    assert_exit(&rest, 0);
    assert_eq!(committed(&pair).await, (0..8).collect::<Vec<_>>());
    assert!(
        text(&step(&["finish"], &job)).contains("already finished"),
        "the whole run closed the run"
    );
    assert_eq!(pair.assert_same("big", "big").await, 30_003);
}
