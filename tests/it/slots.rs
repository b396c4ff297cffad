//! `run.parallelism` against the free connection slots of a real server whose
//! `max_connections` is tiny. The shared test server has 100 slots and other tests
//! use it at the same time, so each test here starts its own throwaway cluster with
//! `scripts/pg-local.sh` (`STRIDE_PG_MAX_CONNECTIONS=10`; with the default
//! `superuser_reserved_connections = 3` that leaves five slots for everyone else)
//! and stops it at the end, even when the test fails.
//!
//! What a user must see: too few free slots, a warning and a complete copy with
//! fewer partitions at once; no free slot, exit 2 before anything is written, and a
//! message saying that the server has no free connection slots.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::cluster::{free_port, newest_bindir, stop_cluster};
use crate::common::{checksum, exec, job_file};

const MAX_CONNECTIONS: i64 = 10;
/// PostgreSQL's default `superuser_reserved_connections` (checked at start).
const SUPERUSER_RESERVED: i64 = 3;
/// Slots a role that is not a superuser can take.
const ORDINARY_SLOTS: i64 = MAX_CONNECTIONS - SUPERUSER_RESERVED;

/// stride ends in well under a second on these tables. A run still going after its
/// deadline is stuck (a pool retrying a refused connection until its 60 s acquire
/// timeout) and is killed, so a regression fails the test instead of stalling it.
const COPY_DEADLINE: Duration = Duration::from_secs(10);
/// A run that finds no free slot should stop at once, before writing.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(3);

/// Rows the tests copy: a partition key with a NULL, text, numeric and timestamptz.
const SOURCE_SQL: &str = "
CREATE TABLE public.items (id bigint, name text, amount numeric(12,2), at timestamptz);
INSERT INTO public.items
SELECT g, 'item ' || g, g * 0.25, TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * INTERVAL '1 minute'
FROM generate_series(1, 30000) g;
INSERT INTO public.items VALUES (NULL, 'no key', NULL, NULL);";

/// The target already holds rows of its own; every job runs in truncate mode, so a
/// run that got as far as its first write changes them.
const TARGET_SQL: &str = "
CREATE TABLE public.items (id bigint, name text, amount numeric(12,2), at timestamptz);
INSERT INTO public.items VALUES (-1, 'kept', 1.50, '1999-01-01 00:00:00+00'), (-2, 'also kept', NULL, NULL);";

const CLIENT_BACKENDS: &str =
    "SELECT count(*)::int8 FROM pg_stat_activity WHERE backend_type = 'client backend'";

/// A throwaway cluster with `max_connections = 10`, stopped and removed on drop.
struct SmallServer {
    port: u16,
    /// Removed after `drop` has stopped the cluster (fields drop after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl SmallServer {
    /// Starts the cluster, or returns `None` (after a note) on a machine without
    /// PostgreSQL server binaries.
    async fn start() -> Option<SmallServer> {
        if newest_bindir().is_none() {
            eprintln!(
                "note: no /usr/lib/postgresql/*/bin/initdb on this machine; \
                 skipping the connection slot test (it needs its own small cluster)"
            );
            return None;
        }
        // Directly under /tmp, so that the `postgres` OS user (which runs the cluster
        // when we are root; the script hands it the directory) can reach it.
        let dir = tempfile::Builder::new()
            .prefix("stride-slots-")
            .tempdir_in("/tmp")
            .expect("creating a directory under /tmp");
        let mut server = SmallServer { port: 0, dir };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-local.sh");
        let mut failures = String::new();
        // Another process may take the port between our check and the server's
        // bind: try a few.
        for _ in 0..3 {
            server.port = free_port();
            let out = Command::new(script)
                .env("PGHOST", "127.0.0.1")
                .env("PGPORT", server.port.to_string())
                .env("STRIDE_PG_DIR", server.dir.path())
                .env("STRIDE_PG_MAX_CONNECTIONS", MAX_CONNECTIONS.to_string())
                .stdin(Stdio::null())
                .output()
                .expect("running scripts/pg-local.sh");
            if out.status.success() {
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    server.url("postgres", "postgres"),
                    "pg-local.sh prints the base URL and nothing else on stdout"
                );
                server.check_is_ours().await;
                return Some(server);
            }
            failures.push_str(&format!(
                "port {}: {}\n{}\n",
                server.port,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        panic!("scripts/pg-local.sh did not start a cluster:\n{failures}");
    }

    /// pg-local.sh reuses any server that answers on the port: make sure the one
    /// answering is the cluster in our directory, with the settings we asked for.
    async fn check_is_ours(&self) {
        let mut conn = self.connect("postgres", "postgres").await;
        let (data_directory, max_connections, reserved): (String, i32, i32) = sqlx::query_as(
            "SELECT current_setting('data_directory'), current_setting('max_connections')::int,
                    current_setting('superuser_reserved_connections')::int
                    + coalesce(current_setting('reserved_connections', true)::int, 0)",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        conn.close().await.ok();
        assert_eq!(
            Path::new(&data_directory).canonicalize().ok(),
            self.dir.path().canonicalize().ok(),
            "another server answers on port {}",
            self.port
        );
        assert_eq!(i64::from(max_connections), MAX_CONNECTIONS);
        assert_eq!(i64::from(reserved), SUPERUSER_RESERVED);
    }

    fn url(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    async fn connect(&self, user: &str, database: &str) -> PgConnection {
        let url = self.url(user, database);
        PgConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
    }

    /// Creates the source and target databases, owned by `owner` (who also creates
    /// the tables), seeded with `SOURCE_SQL` and `TARGET_SQL`. Returns their URLs
    /// as `owner`.
    async fn seed(&self, owner: &str) -> (String, String) {
        let mut admin = self.connect("postgres", "postgres").await;
        if owner != "postgres" {
            exec(&mut admin, &format!("CREATE ROLE {owner} LOGIN")).await;
        }
        for db in ["slots_src", "slots_dst"] {
            exec(&mut admin, &format!("CREATE DATABASE {db} OWNER {owner}")).await;
        }
        admin.close().await.ok();
        for (db, sql) in [("slots_src", SOURCE_SQL), ("slots_dst", TARGET_SQL)] {
            let mut conn = self.connect(owner, db).await;
            exec(&mut conn, sql).await;
            conn.close().await.ok();
        }
        (self.url(owner, "slots_src"), self.url(owner, "slots_dst"))
    }

    /// Opens superuser sessions to the target database until `total` client
    /// sessions are open on the server, after waiting for the setup's closed
    /// sessions to be gone. The first one is for looking at the target afterwards.
    async fn hold(&self, total: i64) -> Vec<PgConnection> {
        let mut first = self.connect("postgres", "slots_dst").await;
        wait_until_alone(&mut first).await;
        let mut held = vec![first];
        while (held.len() as i64) < total {
            held.push(self.connect("postgres", "slots_dst").await);
        }
        assert_eq!(client_backends(&mut held[0]).await, total);
        held
    }

    /// Waits until the setup's closed sessions are gone from the server (a backend
    /// leaves pg_stat_activity a moment after its client said goodbye).
    async fn wait_until_idle(&self) {
        let mut conn = self.connect("postgres", "postgres").await;
        wait_until_alone(&mut conn).await;
        conn.close().await.ok();
    }

    /// Asserts the target holds exactly the source's rows.
    async fn assert_copied(&self) {
        let mut source = self.connect("postgres", "slots_src").await;
        let mut target = self.connect("postgres", "slots_dst").await;
        let copied = checksum(&mut target, "public.items").await;
        assert_eq!(checksum(&mut source, "public.items").await, copied);
        assert_eq!(copied.0, 30_001);
    }
}

/// Polls until `conn`'s own session is the only client session on the server.
async fn wait_until_alone(conn: &mut PgConnection) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = client_backends(conn).await;
        if n == 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} client sessions still open; expected only ours"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for SmallServer {
    fn drop(&mut self) {
        stop_cluster(self.dir.path());
    }
}

async fn client_backends(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar(CLIENT_BACKENDS)
        .fetch_one(conn)
        .await
        .unwrap()
}

fn job(source_url: &str, target_url: &str) -> String {
    format!(
        "[source]\nurl = \"{source_url}\"\ntable = \"public.items\"\n\
         [partition]\ncolumn = \"id\"\ncount = 6\n\
         [target]\nurl = \"{target_url}\"\nmode = \"truncate\"\n\
         [run]\nparallelism = 6\n"
    )
}

/// What one `stride run` showed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    /// Still running at the deadline.
    killed: bool,
}

impl Run {
    fn text(&self) -> String {
        format!(
            "exit {:?} after {:.1} s{}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.elapsed.as_secs_f64(),
            if self.killed {
                " (killed: still running at the deadline)"
            } else {
                ""
            },
            self.stdout,
            self.stderr
        )
    }
}

/// `stride run JOB`, killed if it is still running after `deadline`.
fn run_stride(job: &Path, deadline: Duration) -> Run {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stride"))
        .arg("run")
        .arg(job)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the stride binary runs");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let mut killed = false;
    while child.try_wait().expect("waiting for stride").is_none() {
        if started.elapsed() > deadline {
            let _ = child.kill();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().expect("waiting for stride");
    Run {
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        elapsed: started.elapsed(),
        killed,
    }
}

/// Whether stderr tells the user the server has no free connection slots: stride's
/// own words, or the server's when it refuses the connection.
fn names_lack_of_slots(stderr: &str) -> bool {
    let stderr = stderr.to_lowercase();
    stderr.contains("connection slots") || stderr.contains("too many clients")
}

/// Asserts a run that found no free slot: exit 2 at once, a message naming the lack
/// of free slots, and the target table exactly as it was. Lists every way it fell
/// short, with the run's whole output.
fn assert_refused(run: &Run, before: &(i64, String), after: &(i64, String)) {
    let mut wrong = Vec::new();
    if run.killed {
        wrong.push(format!(
            "still running after {} s (expected to stop at once)",
            REFUSAL_DEADLINE.as_secs()
        ));
    }
    if run.code != Some(2) {
        wrong.push(format!("exit code {:?} (expected 2)", run.code));
    }
    if !names_lack_of_slots(&run.stderr) {
        wrong.push("stderr does not say that no connection slots are free".to_string());
    }
    if after != before {
        wrong.push(format!(
            "the target table changed: {} rows before, {} after",
            before.0, after.0
        ));
    }
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), run.text());
}

/// Too few free slots for `parallelism = 6`: a warning naming how many are free,
/// then every row copied with that many partitions at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_free_slots_warn_and_still_copy_everything() {
    let Some(server) = SmallServer::start().await else {
        return;
    };
    let (source_url, target_url) = server.seed("postgres").await;
    // Nothing else open: 10 - 3 reserved = 7 free. Each partition at once needs a
    // source and a target session, plus the source's coordinator and the target's
    // run lock: (7 - 2) / 2 = 2 partitions at once.
    server.wait_until_idle().await;

    let file = job_file(&job(&source_url, &target_url));
    let run = run_stride(&file.path, COPY_DEADLINE);
    assert_eq!(run.code, Some(0), "{}", run.text());
    assert!(
        run.stderr.contains(
            "only 2 connection slots are free on the server (source and target share it): \
             running 2 partitions at once instead of 6"
        ),
        "expected a warning that only 2 connection slots are free\n{}",
        run.text()
    );
    assert!(run.stdout.contains("6 written of 6"), "{}", run.text());
    server.assert_copied().await;
}

/// Every ordinary slot taken by other sessions: stride (a superuser, so it still
/// gets in through the reserved slots) finds none free, exits 2 and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_free_slot_exits_2_and_leaves_the_target_alone() {
    let Some(server) = SmallServer::start().await else {
        return;
    };
    let (source_url, target_url) = server.seed("postgres").await;
    let mut held = server.hold(ORDINARY_SLOTS).await;
    let before = checksum(&mut held[0], "public.items").await;

    let file = job_file(&job(&source_url, &target_url));
    let run = run_stride(&file.path, REFUSAL_DEADLINE);
    let after = checksum(&mut held[0], "public.items").await;
    assert_refused(&run, &before, &after);
    assert!(
        run.stderr
            .contains("no free connection slots on the server"),
        "{}",
        run.text()
    );
    assert_eq!(before.0, 2, "the target's own rows");
}

/// Not even the reserved slots left: the server refuses stride's first connection
/// ("sorry, too many clients already"). For the user this is the same situation as
/// above, found before anything was written, and should end the same way: exit 2
/// (stride currently exits 1 here, as for any refused connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_exits_2_and_leaves_the_target_alone() {
    let Some(server) = SmallServer::start().await else {
        return;
    };
    let (source_url, target_url) = server.seed("postgres").await;
    let mut held = server.hold(MAX_CONNECTIONS).await;
    let before = checksum(&mut held[0], "public.items").await;

    let file = job_file(&job(&source_url, &target_url));
    let run = run_stride(&file.path, REFUSAL_DEADLINE);
    let after = checksum(&mut held[0], "public.items").await;
    assert_refused(&run, &before, &after);
}

/// One slot left in all: stride's one-at-a-time probes get in, but it can never
/// hold a source and a target session at once, let alone run a partition. Expected:
/// exit 2 at once. (stride's target pool gets "too many clients" while checking the
/// target and retries until its 60 s acquire timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slot_left_exits_2_at_once() {
    let Some(server) = SmallServer::start().await else {
        return;
    };
    let (source_url, target_url) = server.seed("postgres").await;
    let mut held = server.hold(MAX_CONNECTIONS - 1).await;
    let before = checksum(&mut held[0], "public.items").await;

    let file = job_file(&job(&source_url, &target_url));
    let run = run_stride(&file.path, REFUSAL_DEADLINE);
    let after = checksum(&mut held[0], "public.items").await;
    assert_refused(&run, &before, &after);
}

/// stride connecting as an ordinary role, the other sessions belonging to another
/// role: with three of them open, stride's own two sessions fill the five ordinary
/// slots, so none is free. Expected: exit 2, target untouched. (An ordinary role
/// sees other roles' sessions in pg_stat_activity with backend_type NULL, so
/// stride does not count them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_other_roles_count_for_an_ordinary_role() {
    let Some(server) = SmallServer::start().await else {
        return;
    };
    let (source_url, target_url) = server.seed("stride_plain").await;
    let mut held = server.hold(ORDINARY_SLOTS - 2).await;
    let before = checksum(&mut held[0], "public.items").await;

    let file = job_file(&job(&source_url, &target_url));
    let run = run_stride(&file.path, REFUSAL_DEADLINE);
    let after = checksum(&mut held[0], "public.items").await;
    assert_refused(&run, &before, &after);
    assert!(
        run.stderr
            .contains("no free connection slots on the server"),
        "{}",
        run.text()
    );
}

/// The same server named two ways (`localhost` for the source, `127.0.0.1` for the
/// target) is still one server: both sides' sessions come out of the same slots.
/// stride connects as an ordinary role, so it cannot borrow the reserved slots.
/// Expected: as in the first test, 2 partitions at once and a complete copy. (stride
/// compares host names, takes them for two servers, allows 3 partitions at once,
/// which need 7 sessions of the 5 there are, and its pools wait for slots that never
/// come, after truncating the target.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_under_two_names_is_one_server() {
    let Some(server) = SmallServer::start().await else {
        return;
    };
    let (source_url, target_url) = server.seed("stride_plain").await;
    let source_url = source_url.replacen("@127.0.0.1:", "@localhost:", 1);
    server.wait_until_idle().await;

    let file = job_file(&job(&source_url, &target_url));
    let run = run_stride(&file.path, COPY_DEADLINE);
    let mut target = server.connect("postgres", "slots_dst").await;
    let rows = checksum(&mut target, "public.items").await.0;
    assert_eq!(
        run.code,
        Some(0),
        "the target now holds {rows} rows (2 before the run, 30001 expected)\n{}",
        run.text()
    );
    assert!(
        run.stderr.contains(
            "only 2 connection slots are free on the server (source and target share it)"
        ),
        "expected a warning that only 2 connection slots are free on the shared server\n{}",
        run.text()
    );
    server.assert_copied().await;
}
