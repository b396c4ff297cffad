//! The run lock cannot be lost silently (issue 11): the session holding a run's
//! lock is terminated mid-run (as a firewall dropping idle connections or an
//! idle-session killer would end it), and the run stops with exit 1 naming the
//! lost lock, commits nothing more, and a second run that takes the lock writes
//! alone. Whole runs, shards, `finish` and `verify --repair`; each ends with the
//! target equal to the source.
//!
//! "Nothing more" is measured at the fence every run passes after taking the
//! lock (see `pg::RunLock`): once the lock session is gone and the fence key has
//! been taken exclusively, the stopped run's commits are final. A partition past
//! its lock check when the session died may still commit before the fence;
//! none may after it.

use std::process::Output;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::common::*;

/// Source rows and partitions: partition `k` holds ids `20k + 1 ..= 20k + 20`.
const ROWS: i64 = 320;
const PARTITIONS: usize = 16;

/// `items (id int PRIMARY KEY, note text)` with ids `1..=ROWS` on the source, and
/// an empty one on the target that takes 5 ms a row (a partition about 0.1 s).
/// The target's trigger also records, at each partition's first row, how many
/// sessions are copying into the target right then (into `seen`).
async fn seed(pair: &Pair) {
    pair.source
        .exec(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, note text);
             INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, {ROWS}) g;"
        ))
        .await;
    pair.target
        .exec(
            "CREATE TABLE items (id int PRIMARY KEY, note text);
             CREATE TABLE seen (copies int);
             CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.id % 20 = 1 THEN
                 INSERT INTO seen SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND state = 'active'
                    AND query LIKE 'COPY %FROM STDIN%';
               END IF;
               PERFORM pg_sleep(0.005);
               RETURN NEW;
             END $$;
             CREATE TRIGGER slow BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION slow();",
        )
        .await;
}

/// A truncate job over `items` in 16 partitions, two at a time; `run` adds keys
/// to `[run]`.
fn job(pair: &Pair, run: &str) -> JobFile {
    job_file(&job_text(
        pair,
        "table = \"items\"",
        &format!(
            "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = {}\ncount = {PARTITIONS}\n[run]\nparallelism = 2\n{run}",
            ROWS + 1
        ),
        "mode = \"truncate\"",
    ))
}

fn path(job: &JobFile) -> &str {
    job.path.to_str().unwrap()
}

/// A run's lock session on `db`: the idle stride session holding the advisory
/// lock in `mode` (`ExclusiveLock` for a run, `ShareLock` for a shard).
struct LockSession {
    pid: i32,
    /// The lock's key as `pg_locks` shows it: the fence key is the same two
    /// halves in the two-int4 key space.
    classid: i64,
    objid: i64,
}

async fn lock_session(db: &TestDb, mode: &str) -> LockSession {
    let mut admin = PgConnection::connect(&server_url()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found: Option<(i32, i64, i64)> = sqlx::query_as(
            "SELECT l.pid, l.classid::int8, l.objid::int8 FROM pg_locks l
             JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted AND l.mode = $2
               AND a.datname = $1 AND a.application_name = 'stride' AND a.state = 'idle'",
        )
        .bind(&db.name)
        .bind(mode)
        .fetch_optional(&mut admin)
        .await
        .unwrap();
        if let Some((pid, classid, objid)) = found {
            return LockSession {
                pid,
                classid,
                objid,
            };
        }
        assert!(Instant::now() < deadline, "no lock session on {}", db.name);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Terminates the lock session and waits until it is gone (its locks with it).
async fn terminate(session: &LockSession) {
    let mut admin = PgConnection::connect(&server_url()).await.unwrap();
    let gone: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 10000)")
        .bind(session.pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(gone, "the lock session {} did not end", session.pid);
}

/// Takes the fence key exclusively, as the next run does (it waits for every
/// transaction past its lock check), and returns the partitions recorded as
/// committed then.
async fn committed_at_fence(db: &TestDb, session: &LockSession) -> Vec<usize> {
    let mut conn = db.conn().await;
    let (high, low) = (session.classid as u32 as i32, session.objid as u32 as i32);
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(high)
        .bind(low)
        .execute(&mut conn)
        .await
        .unwrap();
    let recorded = committed(&mut conn).await;
    sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(high)
        .bind(low)
        .execute(&mut conn)
        .await
        .unwrap();
    recorded
}

/// The partitions recorded as committed in the checkpoint table, in order.
async fn committed(conn: &mut PgConnection) -> Vec<usize> {
    let list: Vec<i32> = sqlx::query_scalar(
        "SELECT partition FROM stride_checkpoints WHERE partition >= 0 ORDER BY partition",
    )
    .fetch_all(conn)
    .await
    .unwrap();
    list.into_iter().map(|p| p as usize).collect()
}

/// Indexes of the partitions a run's summary calls written.
fn written(out: &Output) -> Vec<usize> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("partition  range"))
        .skip(1)
        .map_while(|line| {
            let index = line.split_whitespace().next()?.parse().ok()?;
            Some((index, line.split_once(" s  ")?.1.trim().to_string()))
        })
        .filter(|(_, status)| status.starts_with("written"))
        .map(|(index, _)| index)
        .collect()
}

/// Exit 1, naming the lost lock on the target table.
fn assert_lost_lock(out: &Output) {
    assert_exit(out, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("the run lost its lock on \"items\": the target session holding it ended"),
        "{}",
        text(out)
    );
}

/// Waits until a stride session on `db` waits for a lock (the test holds one).
async fn wait_until_blocked(db: &TestDb) {
    let mut admin = PgConnection::connect(&server_url()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'stride' AND wait_event_type = 'Lock')",
        )
        .bind(&db.name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if waiting {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stride never waited on {}",
            db.name
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_loses_its_lock_stops_and_the_next_run_writes_alone() {
    let pair = Pair::new("lock_run").await;
    seed(&pair).await;
    let job = job(&pair, "");

    let first = Running::start(&["run", path(&job)]).wait_for_line("partition written");
    let session = lock_session(&pair.target, "ExclusiveLock").await;
    terminate(&session).await;
    let fenced = committed_at_fence(&pair.target, &session).await;
    // A second run right away, one that empties the table and forgets the first
    // run's checkpoints: the worst company the first run could have.
    let second = Running::start(&["run", "--restart", path(&job)]);

    let first = first.finish();
    assert_lost_lock(&first);
    assert_eq!(
        written(&first),
        fenced,
        "the first run committed a partition after losing its lock\n{}",
        text(&first)
    );
    assert!(fenced.len() < PARTITIONS, "{}", text(&first));
    let second = second.finish();
    assert_exit(&second, 0);
    assert_eq!(pair.assert_same("items", "items").await, ROWS);

    // And again, with both runs over (without the slow trigger).
    pair.target.exec("DROP TRIGGER slow ON items").await;
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(pair.assert_same("items", "items").await, ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_loses_its_lock_stops_and_finish_too() {
    let pair = Pair::new("lock_shard").await;
    seed(&pair).await;
    let job = job(&pair, "verify = \"count\"");
    assert_exit(&stride(&["prepare", path(&job)], &[]), 0);

    let shard =
        Running::start(&["run", "--shard", "0/2", path(&job)]).wait_for_line("partition written");
    let session = lock_session(&pair.target, "ShareLock").await;
    terminate(&session).await;
    let fenced = committed_at_fence(&pair.target, &session).await;
    let shard = shard.finish();
    assert_lost_lock(&shard);
    assert_eq!(written(&shard), fenced, "{}", text(&shard));
    assert!(fenced.iter().all(|p| p % 2 == 0), "{fenced:?}");

    // The shard started again (as a replaced pod is) and the other shard, at
    // once, one partition at a time each: they share the lock and copy together.
    pair.target.exec("TRUNCATE seen").await;
    let one_at_a_time = ["--set", "run.parallelism=1"];
    let spawn = |shard: &str| {
        let mut args = vec!["run", "--shard", shard];
        args.extend(one_at_a_time);
        args.push(path(&job));
        Running::start(&args)
    };
    let (again, other) = (spawn("0/2"), spawn("1/2"));
    let (again, other) = (again.finish(), other.finish());
    assert_exit(&again, 0);
    assert_exit(&other, 0);
    assert_eq!(
        pair.target
            .scalar_i64("SELECT max(copies)::int8 FROM seen")
            .await,
        2,
        "the two shards copied one after the other"
    );
    let mut conn = pair.target.conn().await;
    assert_eq!(
        committed(&mut conn).await,
        (0..PARTITIONS).collect::<Vec<_>>()
    );

    // finish loses its lock while its verify waits for the target table: it
    // does not close the run; the next finish does.
    let mut holder = pair.target.conn().await;
    exec(
        &mut holder,
        "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE",
    )
    .await;
    let finish = Running::start(&["finish", path(&job)]);
    wait_until_blocked(&pair.target).await;
    let session = lock_session(&pair.target, "ExclusiveLock").await;
    terminate(&session).await;
    exec(&mut holder, "COMMIT").await;
    let finish = finish.finish();
    assert_lost_lock(&finish);
    let open = pair
        .target
        .scalar_i64("SELECT count(*) FROM stride_checkpoints WHERE partition = -1 AND NOT finished")
        .await;
    assert_eq!(open, 1, "a finish that lost its lock closed the run");
    let finish = stride(&["finish", path(&job)], &[]);
    assert_exit(&finish, 0);
    assert!(
        text(&finish).contains("finished: 16 partitions"),
        "{}",
        text(&finish)
    );
    assert_eq!(pair.assert_same("items", "items").await, ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_that_loses_its_lock_repairs_nothing() {
    let pair = Pair::new("lock_repair").await;
    seed(&pair).await;
    pair.target.exec("DROP TRIGGER slow ON items").await;
    let job = job(&pair, "");
    assert_exit(&run_job(&job.path), 0);
    // One row gone from every other partition.
    pair.target
        .exec("DELETE FROM items WHERE id % 40 = 5")
        .await;
    let damaged = pair.target.count("items").await;
    assert_eq!(damaged, ROWS - 8);

    // The repair loses its lock while its comparison waits for the target table.
    let mut holder = pair.target.conn().await;
    exec(
        &mut holder,
        "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE",
    )
    .await;
    let repair = Running::start(&["verify", "--repair", path(&job)]);
    wait_until_blocked(&pair.target).await;
    let session = lock_session(&pair.target, "ExclusiveLock").await;
    terminate(&session).await;
    exec(&mut holder, "COMMIT").await;
    let repair = repair.finish();
    assert_lost_lock(&repair);
    assert!(
        !String::from_utf8_lossy(&repair.stdout).contains("repaired partition"),
        "{}",
        text(&repair)
    );
    assert_eq!(
        pair.target.count("items").await,
        damaged,
        "nothing was repaired"
    );

    let repair = stride(&["verify", "--repair", path(&job)], &[]);
    assert_exit(&repair, 0);
    assert_eq!(pair.assert_same("items", "items").await, ROWS);
}
