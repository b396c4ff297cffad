//! A hot standby (read replica) as the source. Each test starts its own primary
//! with `scripts/pg-local.sh` (own port, own directory), makes a streaming replica
//! of it with `pg_basebackup -R -X stream`, starts that as a hot standby on another
//! port, seeds the primary and waits until the standby has replayed the rows. The
//! target is a fresh database on the shared test server (`common::TestDb`). Both
//! clusters are stopped and removed at the end, even when the test fails.
//!
//! What a user must see: `check`, `plan` and `run` work against a standby, every
//! partition reads the one snapshot the coordinator exported there (PostgreSQL 10+
//! exports snapshots on a standby), also while the primary keeps writing and the
//! standby keeps replaying, and a `query` source is described on the standby
//! (which cannot create the temporary view used on a primary).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::cluster::{as_postgres, free_port, is_root, newest_bindir, stop_cluster};
use crate::common::{
    assert_exit, checksum, exec, job_file, run_job, stride, text, try_checksum, TestDb,
};

/// How long the standby may take to start, stream and replay what the tests wait for.
const REPLAY_DEADLINE: Duration = Duration::from_secs(20);

/// The source database on the primary (and so on the standby).
const DB: &str = "standby_src";

/// Rows with a NULL partition key, a typmod'ed numeric, a varchar, timestamptz and
/// an array.
const ITEMS_SQL: &str = "
CREATE TABLE public.items (
    id bigint, name text, code varchar(8), amount numeric(12,2), at timestamptz, tags text[]
);
INSERT INTO public.items
SELECT g, 'item ' || g, 'c' || (g % 1000), g * 0.25,
       TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * INTERVAL '1 minute',
       ARRAY['t' || (g % 7), NULL]
FROM generate_series(1, 30000) g;
INSERT INTO public.items VALUES (NULL, 'no key', NULL, NULL, NULL, NULL);";

/// A table one writer appends to in id order; `k` is orthogonal to that order.
const LIVE_SQL: &str = "
CREATE TABLE public.live (id bigserial PRIMARY KEY, k integer NOT NULL, pad text);
INSERT INTO public.live (k, pad) SELECT g % 8, repeat('x', 20) FROM generate_series(1, 80000) g;";
const LIVE_SEEDED: i64 = 80_000;

fn output_text(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A primary and its streaming hot standby, stopped and removed on drop.
struct Replicated {
    bindir: PathBuf,
    primary_port: u16,
    standby_port: u16,
    /// Both removed after `drop` has stopped the clusters (fields drop after
    /// `Drop::drop`).
    primary_dir: tempfile::TempDir,
    standby_dir: tempfile::TempDir,
}

impl Drop for Replicated {
    fn drop(&mut self) {
        stop_cluster(self.standby_dir.path());
        stop_cluster(self.primary_dir.path());
    }
}

impl Replicated {
    /// Starts both clusters, or returns `None` (after a note) on a machine without
    /// PostgreSQL server binaries.
    async fn start() -> Option<Replicated> {
        let Some(bindir) = newest_bindir().filter(|b| b.join("pg_basebackup").is_file()) else {
            eprintln!(
                "note: no /usr/lib/postgresql/*/bin/{{initdb,pg_basebackup}} on this machine; \
                 skipping the hot standby test (it needs its own primary and standby)"
            );
            return None;
        };
        // Directly under /tmp, so that the `postgres` OS user can reach them.
        let tempdir = |prefix: &str| {
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in("/tmp")
                .expect("creating a directory under /tmp")
        };
        let mut pair = Replicated {
            bindir,
            primary_port: 0,
            standby_port: 0,
            primary_dir: tempdir("stride-primary-"),
            standby_dir: tempdir("stride-standby-"),
        };
        pair.start_primary().await;
        pair.check_primary_can_stream().await;
        pair.base_backup();
        pair.start_standby().await;
        Some(pair)
    }

    fn primary_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.primary_port
        )
    }

    fn standby_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.standby_port
        )
    }

    async fn start_primary(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-local.sh");
        let mut failures = String::new();
        // Another process may take the port between our check and the server's
        // bind: try a few.
        for _ in 0..3 {
            self.primary_port = free_port();
            let out = Command::new(script)
                .env("PGHOST", "127.0.0.1")
                .env("PGPORT", self.primary_port.to_string())
                .env("STRIDE_PG_DIR", self.primary_dir.path())
                .stdin(Stdio::null())
                .output()
                .expect("running scripts/pg-local.sh");
            if out.status.success() {
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    self.primary_url("postgres"),
                    "pg-local.sh prints the base URL and nothing else on stdout"
                );
                return;
            }
            failures.push_str(&format!(
                "port {}: {}\n",
                self.primary_port,
                output_text(&out)
            ));
        }
        panic!("scripts/pg-local.sh did not start the primary:\n{failures}");
    }

    /// The primary answering is the cluster in our directory (pg-local.sh reuses
    /// any server that answers on the port), and it can feed a streaming replica.
    async fn check_primary_can_stream(&self) {
        let mut conn = connect(&self.primary_url("postgres")).await;
        let (data_directory, wal_level, senders, recovery): (String, String, i32, bool) =
            sqlx::query_as(
                "SELECT current_setting('data_directory'), current_setting('wal_level'),
                        current_setting('max_wal_senders')::int, pg_is_in_recovery()",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
        assert_eq!(
            Path::new(&data_directory).canonicalize().ok(),
            self.primary_dir.path().canonicalize().ok(),
            "another server answers on port {}",
            self.primary_port
        );
        assert!(
            wal_level == "replica" || wal_level == "logical",
            "the primary's wal_level is {wal_level}: a standby needs replica or logical"
        );
        assert!(senders > 0, "the primary has max_wal_senders = 0");
        assert!(!recovery, "the primary is in recovery");
    }

    /// `pg_basebackup -R -X stream` into the standby's directory (initdb -A trust
    /// lets `postgres` replicate over 127.0.0.1 without a password).
    fn base_backup(&self) {
        let dir = self.standby_dir.path();
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(dir)
                .status()
                .expect("running chown");
            assert!(status.success(), "chown postgres: {}", dir.display());
        }
        let out = as_postgres(&self.bindir.join("pg_basebackup"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.primary_port.to_string())
            .arg("-D")
            .arg(dir)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("running pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup failed\n{}\n--- primary log\n{}",
            output_text(&out),
            log_tail(&self.primary_dir.path().join("server.log"))
        );
        assert!(
            dir.join("standby.signal").is_file(),
            "-R wrote no standby.signal"
        );
        // pg_basebackup leaves an existing directory's mode as it was (here the
        // tempdir's); the server refuses a data directory others can read.
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        if mode & 0o027 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .expect("making the standby's directory private");
        }
    }

    /// Starts the standby on a free port with the primary's `max_connections` (a
    /// hot standby refuses to run with less), then waits until it streams.
    async fn start_standby(&mut self) {
        let mut conn = connect(&self.primary_url("postgres")).await;
        let max_connections: String =
            sqlx::query_scalar("SELECT current_setting('max_connections')")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        conn.close().await.ok();
        let dir = self.standby_dir.path().to_path_buf();
        let log = dir.join("standby.log");
        let mut failures = String::new();
        for _ in 0..3 {
            self.standby_port = free_port();
            let opts = format!(
                "-c listen_addresses=127.0.0.1 -p {} -k '{}' -c max_connections={max_connections} \
                 -c hot_standby=on -c fsync=off -c synchronous_commit=off",
                self.standby_port,
                dir.display()
            );
            let out = as_postgres(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(&dir)
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(&opts)
                .args(["-w", "-t", "30", "start"])
                .stdin(Stdio::null())
                .output()
                .expect("running pg_ctl");
            if out.status.success() {
                self.wait_until_streaming().await;
                return;
            }
            failures.push_str(&format!(
                "port {}: {}\n--- standby log\n{}\n",
                self.standby_port,
                output_text(&out),
                log_tail(&log)
            ));
            // A failed start leaves no postmaster running; try another port.
            stop_cluster(&dir);
        }
        panic!("the standby did not start:\n{failures}");
    }

    /// Polls until the server on the standby port is our standby, in recovery,
    /// with its WAL receiver streaming from the primary.
    async fn wait_until_streaming(&self) {
        let deadline = Instant::now() + REPLAY_DEADLINE;
        let mut last;
        loop {
            match self.streaming_state().await {
                Ok((data_directory, recovery, status)) => {
                    assert_eq!(
                        Path::new(&data_directory).canonicalize().ok(),
                        self.standby_dir.path().canonicalize().ok(),
                        "another server answers on port {}",
                        self.standby_port
                    );
                    assert!(recovery, "the standby is not in recovery");
                    if status.as_deref() == Some("streaming") {
                        return;
                    }
                    last = format!("WAL receiver status {status:?}");
                }
                Err(e) => last = e.to_string(),
            }
            assert!(
                Instant::now() < deadline,
                "the standby does not stream from the primary: {last}\n--- standby log\n{}",
                log_tail(&self.standby_dir.path().join("standby.log"))
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn streaming_state(&self) -> Result<(String, bool, Option<String>), sqlx::Error> {
        let mut conn = PgConnection::connect(&self.standby_url("postgres")).await?;
        let state = sqlx::query_as(
            "SELECT current_setting('data_directory'), pg_is_in_recovery(),
                    (SELECT status FROM pg_stat_wal_receiver)",
        )
        .fetch_one(&mut conn)
        .await;
        conn.close().await.ok();
        state
    }

    /// Creates `DB` on the primary, runs `sql` in it and waits until the standby
    /// holds exactly the primary's rows of `tables`.
    async fn seed(&self, sql: &str, tables: &[&str]) {
        let mut admin = connect(&self.primary_url("postgres")).await;
        exec(&mut admin, &format!("CREATE DATABASE {DB}")).await;
        admin.close().await.ok();
        let mut conn = connect(&self.primary_url(DB)).await;
        exec(&mut conn, sql).await;
        let mut want = Vec::new();
        for table in tables {
            want.push(checksum(&mut conn, table).await);
        }
        conn.close().await.ok();
        let deadline = Instant::now() + REPLAY_DEADLINE;
        loop {
            let got = self.try_standby_checksums(tables).await;
            match &got {
                Ok(got) if *got == want => return,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "the standby has not replayed the seeded rows of {tables:?}: \
                 primary {want:?}, standby {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The standby's checksums of `tables`, or the error while it has not yet
    /// replayed the database or the tables.
    async fn try_standby_checksums(
        &self,
        tables: &[&str],
    ) -> Result<Vec<(i64, String)>, sqlx::Error> {
        let mut conn = PgConnection::connect(&self.standby_url(DB)).await?;
        let mut sums = Vec::new();
        for table in tables {
            sums.push(try_checksum(&mut conn, table).await?);
        }
        conn.close().await.ok();
        Ok(sums)
    }

    async fn standby(&self) -> PgConnection {
        connect(&self.standby_url(DB)).await
    }

    /// Asserts the source of a job is still a standby in recovery.
    async fn assert_standby_in_recovery(&self) {
        let mut conn = self.standby().await;
        let recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(recovery, "the standby left recovery");
    }
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `stride check` and `stride plan` against the standby: both exit 0. Returns
/// what `check` showed.
fn check_and_plan(job: &Path, partitions: usize) -> Output {
    let job = job.to_str().unwrap();
    let check = stride(&["check", job], &[]);
    assert_exit(&check, 0);
    let plan = stride(&["plan", job], &[]);
    assert_exit(&plan, 0);
    assert!(
        stdout_of(&plan).contains(&format!(
            "(from the source's min and max), {partitions} partitions"
        )),
        "{}",
        text(&plan)
    );
    check
}

/// Asserts a run that wrote every partition and whose checksum verify matched.
fn assert_copied_and_verified(out: &Output, partitions: usize) {
    assert_exit(out, 0);
    let stdout = stdout_of(out);
    assert!(
        stdout.contains(&format!("partitions {partitions} written of {partitions}")),
        "{}",
        text(out)
    );
    assert!(
        stdout.contains(&format!(
            "verify (row counts and checksums): {partitions} of {partitions} partitions match"
        )),
        "{}",
        text(out)
    );
    assert!(!stdout.contains("DIFFERENT"), "{}", text(out));
}

/// A table on a standby, 4 partitions with bounds from the standby's min and max,
/// checksum verify: every row copied, the verify table all `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_copies_exactly_from_a_hot_standby() {
    let Some(pair) = Replicated::start().await else {
        return;
    };
    pair.seed(ITEMS_SQL, &["public.items"]).await;
    let target = TestDb::new("standby_table").await;
    let job = job_file(&format!(
        "[source]\nurl = \"{}\"\ntable = \"public.items\"\n\
         [partition]\ncolumn = \"id\"\ncount = 4\n\
         [target]\nurl = \"{}\"\nmode = \"truncate\"\n\
         [run]\nverify = \"checksum\"\n",
        pair.standby_url(DB),
        target.url
    ));
    check_and_plan(&job.path, 4);

    let out = run_job(&job.path);
    assert_copied_and_verified(&out, 4);
    // `stride verify` afterwards compares in a new snapshot of the standby.
    let verify = stride(&["verify", job.path.to_str().unwrap()], &[]);
    assert_exit(&verify, 0);
    assert!(
        stdout_of(&verify).contains("verify (row counts and checksums): 4 of 4 partitions match"),
        "{}",
        text(&verify)
    );
    pair.assert_standby_in_recovery().await;
    let source = checksum(&mut pair.standby().await, "public.items").await;
    assert_eq!(source.0, 30_001);
    assert_eq!(
        target.checksum("public.items").await,
        source,
        "{}",
        text(&out)
    );
}

/// The primary commits one row at a time, in id order, for as long as the copy
/// runs, and the standby replays them meanwhile. Partitioned on `k`, orthogonal to
/// the insertion order: one snapshot sees exactly ids 1..=n in every partition; a
/// partition that read a later moment would bring ids past another's gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_from_a_standby_reads_one_snapshot_while_the_primary_writes() {
    let Some(pair) = Replicated::start().await else {
        return;
    };
    pair.seed(LIVE_SQL, &["public.live"]).await;
    let target = TestDb::new("standby_live").await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut conn = connect(&pair.primary_url(DB)).await;
        tokio::spawn(async move {
            let mut commits = 0u64;
            while !stop.load(Ordering::SeqCst) {
                sqlx::Executor::execute(
                    &mut conn,
                    "INSERT INTO live (k, pad) VALUES ((random() * 7)::int, 'written during the copy')",
                )
                .await
                .unwrap();
                commits += 1;
            }
            commits
        })
    };
    // The standby replays the writer's rows before the copy starts.
    let mut standby = pair.standby().await;
    let deadline = Instant::now() + REPLAY_DEADLINE;
    loop {
        let max: i64 = sqlx::query_scalar("SELECT max(id) FROM live")
            .fetch_one(&mut standby)
            .await
            .unwrap();
        if max > LIVE_SEEDED + 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby does not replay the writer's rows (max id {max})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let job = job_file(&format!(
        "[source]\nurl = \"{}\"\ntable = \"public.live\"\n\
         [partition]\ncolumn = \"k\"\ncount = 4\n\
         [target]\nurl = \"{}\"\ntable = \"public.copied\"\n\
         [run]\nverify = \"checksum\"\n",
        pair.standby_url(DB),
        target.url
    ));
    let path = job.path.clone();
    let out = tokio::task::spawn_blocking(move || run_job(&path))
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let commits = writer.await.unwrap();
    assert_copied_and_verified(&out, 4);
    assert!(commits > 0, "the writer committed nothing");

    // One writer committing in id order: a single snapshot sees exactly ids 1..=n.
    let (count, distinct, max): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id), max(id) FROM copied")
            .fetch_one(&mut target.conn().await)
            .await
            .unwrap();
    assert_eq!(
        (count, distinct),
        (max, max),
        "rows lost or doubled\n{}",
        text(&out)
    );
    assert!(
        max > LIVE_SEEDED + 100,
        "the copy missed rows the standby had replayed before it started (max id {max})"
    );
    // The rows up to n never change afterwards: the standby's rows of the copy's
    // snapshot are exactly the target's.
    let source = checksum(
        &mut standby,
        &format!("(SELECT * FROM live WHERE id <= {max})"),
    )
    .await;
    assert_eq!(
        target.checksum("public.copied").await,
        source,
        "{}",
        text(&out)
    );

    // The standby kept replaying past the copy's snapshot: once it has caught up
    // with the primary, it holds more rows than were copied.
    let mut primary = connect(&pair.primary_url(DB)).await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM live")
        .fetch_one(&mut primary)
        .await
        .unwrap();
    let deadline = Instant::now() + REPLAY_DEADLINE;
    loop {
        let replayed: i64 = sqlx::query_scalar("SELECT count(*) FROM live")
            .fetch_one(&mut standby)
            .await
            .unwrap();
        if replayed == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby has replayed {replayed} of the primary's {total} rows"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        total > count,
        "no row was committed after the copy's snapshot ({total} rows in all, {count} copied): \
         the source did not change during the copy"
    );
    pair.assert_standby_in_recovery().await;
}

/// A `query` source on a standby, partitioned with bounds from the query's min and
/// max, into a target table stride creates from the query's columns (described on
/// the standby from the prepared statement's row description, which carries no
/// type modifiers: the column types are compared without them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_source_on_a_standby_is_described_and_copied_exactly() {
    let Some(pair) = Replicated::start().await else {
        return;
    };
    pair.seed(ITEMS_SQL, &["public.items"]).await;
    let target = TestDb::new("standby_query").await;
    let query = "SELECT id, name, code, amount * 2 AS doubled, at, tags FROM public.items \
                 WHERE id IS NULL OR id % 5 <> 0";
    let job = job_file(&format!(
        "[source]\nurl = \"{}\"\nquery = \"{query}\"\n\
         [partition]\ncolumn = \"id\"\ncount = 4\n\
         [target]\nurl = \"{}\"\ntable = \"public.from_query\"\ncreate = \"if-missing\"\n\
         [run]\nverify = \"checksum\"\n",
        pair.standby_url(DB),
        target.url
    ));
    let check = check_and_plan(&job.path, 4);
    assert!(
        stdout_of(&check).contains("(missing: will be created from the source's columns)"),
        "{}",
        text(&check)
    );

    let out = run_job(&job.path);
    assert_copied_and_verified(&out, 4);
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, NULL) FROM pg_attribute
         WHERE attrelid = 'public.from_query'::regclass AND attnum > 0 AND NOT attisdropped
         ORDER BY attnum",
    )
    .fetch_all(&mut target.conn().await)
    .await
    .unwrap();
    let expected = [
        ("id", "bigint"),
        ("name", "text"),
        ("code", "character varying"),
        ("doubled", "numeric"),
        ("at", "timestamp with time zone"),
        ("tags", "text[]"),
    ];
    assert_eq!(
        columns,
        expected
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect::<Vec<_>>(),
        "the table stride created from the query's columns"
    );
    pair.assert_standby_in_recovery().await;
    let source = checksum(&mut pair.standby().await, &format!("({query})")).await;
    assert_eq!(source.0, 24_001);
    assert_eq!(
        target.checksum("public.from_query").await,
        source,
        "{}",
        text(&out)
    );
}
