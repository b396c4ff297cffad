//! The server session behind a connection: which one it is (`pg_backend_pid()`
//! and its start time, so a recycled process id is never mistaken for it), and
//! ending it from another connection. A partition that stalled or lost its
//! COMMIT's answer leaves a session the server does not know is abandoned (a
//! frozen network closes nothing); ending it frees its slot and its locks, and
//! settles its transaction.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::PgConnection;

/// One server session (a backend process).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub pid: i32,
    /// `backend_start` as text: with `pid`, names the session even after its
    /// process id is given to a new one.
    pub started: String,
}

/// The session of `conn`.
pub async fn of(conn: &mut PgConnection) -> Result<Session> {
    let (pid, started): (i32, String) = sqlx::query_as(
        "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    )
    .fetch_one(&mut *conn)
    .await
    .context("reading the connection's server session")?;
    Ok(Session { pid, started })
}

/// Ends `session` (`pg_terminate_backend`, allowed on sessions of one's own role)
/// and returns once it is gone from `pg_stat_activity`, or fails after `wait`.
/// A backend ends only between commands, never inside a COMMIT: once it is gone,
/// its transaction has committed or rolled back, for good. If the role may not
/// end it, this still waits for it to end by itself.
pub async fn end(conn: &mut PgConnection, session: &Session, wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    let mut asked = false;
    loop {
        let alive: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1 AND backend_start::text = $2)",
        )
        .bind(session.pid)
        .bind(&session.started)
        .fetch_one(&mut *conn)
        .await
        .context("looking the old session up in pg_stat_activity")?;
        if !alive {
            return Ok(());
        }
        if !asked {
            asked = true;
            // Refused (another role's session): wait for it to end by itself.
            let ended = sqlx::query_scalar::<_, bool>(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND backend_start::text = $2",
            )
            .bind(session.pid)
            .bind(&session.started)
            .fetch_optional(&mut *conn)
            .await;
            if let Err(e) = ended {
                tracing::warn!(
                    pid = session.pid,
                    "could not end the old session, waiting for it to end: {e}"
                );
            }
        }
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "the old session (pid {}) is still there after {} s",
                session.pid,
                wait.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
