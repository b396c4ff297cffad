//! The scripts a user runs first: `scripts/pg-local.sh` (behind quickstart.sh and
//! test.sh) on a machine whose port already has a server that wants a password.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::cluster::{free_port, stop_cluster};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-local.sh");

fn pg_local(port: u16, dir: &std::path::Path) -> Output {
    Command::new(SCRIPT)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("STRIDE_PG_DIR", dir)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("running scripts/pg-local.sh")
}

/// A throwaway cluster directory under /tmp (the `postgres` OS user must reach
/// it), stopped when dropped.
struct Cluster(tempfile::TempDir);

impl Cluster {
    fn new() -> Cluster {
        Cluster(
            tempfile::Builder::new()
                .prefix("stride-scripts-")
                .tempdir_in("/tmp")
                .unwrap(),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        stop_cluster(self.0.path());
    }
}

#[tokio::test]
async fn a_port_held_by_a_server_that_wants_a_password_says_what_to_do() {
    // A server of our own on a free port, then made to ask for a password.
    let taken = Cluster::new();
    let port = free_port();
    let out = pg_local(port, taken.0.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("ALTER ROLE postgres PASSWORD 'not-yours'")
        .execute(&mut conn)
        .await
        .unwrap();
    let hba = taken.0.path().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, rules.replace(" trust", " scram-sha-256")).unwrap();
    sqlx::raw_sql("SELECT pg_reload_conf()")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();

    // pg-local.sh on that port: a clear error, soon, instead of a failed pg_ctl.
    let mine = Cluster::new();
    let started = Instant::now();
    let out = pg_local(port, mine.0.path());
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!(
            "a server listens on 127.0.0.1:{port} but user postgres cannot connect to it without a password"
        )) && said.contains("PGPORT=5440 scripts/quickstart.sh"),
        "{said}"
    );
    assert!(!said.contains("pg_ctl start failed"), "{said}");

    // What it says to do works: another port gets a cluster of its own.
    let other = free_port();
    let out = pg_local(other, mine.0.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("postgres://postgres@127.0.0.1:{other}/postgres")
    );
    let mut conn = sqlx::PgConnection::connect(String::from_utf8_lossy(&out.stdout).trim())
        .await
        .unwrap();
    let answer: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(answer, 1);
}
