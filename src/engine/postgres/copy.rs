//! The pipeline: a scheduler that runs at most `parallelism` partitions at once, and
//! the two ways one partition travels from source to target: COPY pass-through and
//! the row path of batched INSERTs. In upsert mode COPY fills a temporary staging
//! table that one `INSERT ... ON CONFLICT` merges into the target, and the row
//! path's INSERTs carry the same clause.
//!
//! Each partition reads in a source transaction that imports the run's exported
//! snapshot, and writes in its own target transaction, committed only when every row
//! of the partition is in. A failure rolls that transaction back (the connection is
//! closed, never handed back to the pool: after a broken COPY sqlx can be out of step
//! with the server). A transient failure is retried; a permanent one stops new
//! partitions from starting while the ones in flight finish.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::BytesMut;
use futures_util::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArgumentBuffer, PgArguments, PgTypeInfo};
use sqlx::AssertSqlSafe;
use sqlx::{Arguments, PgConnection, PgPool, Postgres, Row, ValueRef};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber;
use tracing::{debug, info, warn, Dispatch, Instrument};

use crate::checkpoint;
use crate::engine::postgres::plan::{
    converted_select, copy_out_sql, rows_select_sql, CopyFormat, PlannedPartition, Read,
};
use crate::engine::postgres::session;
use crate::engine::postgres::{self as pg, Side};
use crate::error::{
    CommitRolledBack, CommitUnanswered, Interrupted, NotClaimed, OutcomeUnknown, Stalled, Unsettled,
};
use crate::job::Method;
use crate::report::{PartitionReport, Status};
use crate::sql::QualifiedName;

/// Source chunks are gathered to about this size before each send: sqlx flushes the
/// socket on every `send`, and one send per row is about half as fast.
const SEND_BUFFER_BYTES: usize = 1 << 20;

/// Bound on closing a connection that failed: a polite goodbye on a frozen
/// connection would wait forever.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// After Ctrl-C or SIGTERM, how long a COMMIT already sent, and then the lookup of
/// its outcome, are still awaited: long enough for a server that answers, short
/// enough that a frozen one does not hold the process.
const INTERRUPTED_WAIT: Duration = Duration::from_secs(3);

/// How long ending an old session (and seeing it gone) may take; the server
/// ends a session it was asked to within milliseconds unless it is stuck.
const END_SESSION_TIMEOUT: Duration = Duration::from_secs(30);

/// What every partition of a run shares.
pub struct CopySpec {
    pub source: PgPool,
    pub target: PgPool,
    /// The coordinator's exported snapshot, imported by every partition.
    pub snapshot: String,
    pub method: Method,
    /// COPY format, used when `method` is `Copy`.
    pub format: CopyFormat,
    /// `COPY target (...) FROM STDIN`, when `method` is `Copy`.
    pub copy_in: String,
    /// The batch `INSERT`, when `method` is `Insert`.
    pub insert: String,
    pub columns: Vec<String>,
    /// How the source reads each column (`plan::conversion`), the same for
    /// both methods.
    pub reads: Vec<Read>,
    /// The converted columns whose values can fail, each with how: named when
    /// a batch INSERT fails on a value (its error names no column).
    pub can_fail: Vec<String>,
    pub batch_size: usize,
    /// Counts rows as they arrive; hidden when stderr is not a terminal.
    pub progress: ProgressBar,
    /// Set on Ctrl-C or SIGTERM: no new partition starts, those in flight roll back.
    pub cancel: CancellationToken,
    /// Attempts after a partition's first, on transient failures.
    pub retries: u32,
    /// `run.stall_timeout`: a partition whose awaited side moves no data for this
    /// long fails, transiently.
    pub stall_timeout: Duration,
    /// Where committed partitions are recorded; `None` without checkpoints.
    pub checkpoint: Option<Checkpoint>,
    /// `verify --repair`: how each partition is made equal to the source's.
    pub repair: Option<Repair>,
    /// The run's lock on the target table: each partition commits only while
    /// the run still holds it.
    pub lock: pg::RunLock,
    /// Runs with checkpoints claim each partition first in its own target
    /// transaction (see `checkpoint::claim_sql`): a `--shard auto` worker skips
    /// one that another worker holds or has copied, and `stride status` lists
    /// the claims held as the partitions in flight.
    pub claims: Option<Claims>,
    /// Upsert mode: the key rows are matched by (`insert` then already ends in
    /// its `ON CONFLICT` clause), and with `method = "copy"` the staging table.
    pub upsert: Option<UpsertSpec>,
    /// Append mode's re-read partition of an incremental run (its index) first
    /// deletes the target's rows in its range by this statement, in its own
    /// transaction: the rows it writes replace those an earlier run wrote.
    pub reread_delete: Option<(usize, String)>,
}

/// How partitions are claimed.
pub struct Claims {
    /// Shards name the claiming transaction after the worker
    /// (`application_name`, `stride HOST:PID`), for `stride status`.
    pub worker: Option<String>,
}

/// How `verify --repair` repairs a partition, in its one target transaction.
pub enum Repair {
    /// Modes whose target holds only this job's rows: the partition's range is
    /// deleted from this table first, so the range ends equal to the source's.
    Range(QualifiedName),
    /// A target that may also hold other writers' rows: by key (see [`KeyRepair`]).
    Key(KeyRepair),
}

/// A repair by key: the partition's rows go into a staging table (`copy_in` or
/// `insert` of the spec name it), the missing or different ones are merged into
/// the target, and the target's other rows are kept unless `delete_extra`.
pub struct KeyRepair {
    pub table: QualifiedName,
    pub key: Vec<String>,
    /// Makes the staging table, in the partition's transaction.
    pub create_stage: String,
    /// Counts staged rows with a NULL in the key, which no key can match.
    pub null_keys: String,
    /// `plan::repair_merge_sql`.
    pub merge: String,
    /// `--delete-extra`: the target's rows in the range whose key the source's
    /// partition does not have are deleted too.
    pub delete_extra: bool,
    /// What each committed partition changed, by index. Kept here rather than in
    /// `PartitionReport`, which every command builds.
    pub done: std::sync::Mutex<Vec<(usize, Repaired)>>,
}

/// What a repair by key changed in one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Source rows inserted into the target or updated there (missing or different).
    pub written: u64,
    /// Target rows deleted (`--delete-extra`).
    pub deleted: u64,
}

/// How one partition is upserted.
pub struct UpsertSpec {
    /// The target columns rows are matched by, for messages.
    pub key: Vec<String>,
    /// `method = "copy"`: `copy_in` fills a temporary table made by this
    /// statement in the partition's transaction...
    pub create_stage: String,
    /// ...and this statement moves its rows into the target (`INSERT ... SELECT
    /// ... ON CONFLICT`).
    pub merge: String,
}

impl CopySpec {
    /// How rows travel, for the summary: `binary COPY`, `text COPY` or `INSERT, N rows a batch`.
    pub fn describe_method(&self) -> String {
        let how = match (self.method, self.format) {
            (Method::Copy, CopyFormat::Binary) => "binary COPY".to_string(),
            (Method::Copy, CopyFormat::Text) => "text COPY".to_string(),
            (Method::Insert, _) => format!("INSERT, {} rows a batch", self.batch_size),
        };
        match &self.upsert {
            Some(upsert) => format!("{how}, upsert on ({})", upsert.key.join(", ")),
            None => how,
        }
    }
}

/// The run's record in the checkpoint table.
pub struct Checkpoint {
    pub table: QualifiedName,
    pub fingerprint: String,
    pub target_table: QualifiedName,
}

/// Rows and bytes of one written partition.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    rows: u64,
    bytes: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.rows += other.rows;
        self.bytes += other.bytes;
    }
}

/// Runs the given partitions, at most `parallelism` at once. Returns one report
/// per partition, in the order given, and whether `cancel` stopped the run.
///
/// A partition that fails transiently (see `engine::is_transient`) is tried again
/// after a backoff, up to `spec.retries` times: its target transaction was rolled
/// back, so a retry never writes a row twice. A permanent failure stops the
/// scheduling of new partitions; those in flight finish.
///
/// Cancelling stops the scheduling of new partitions and makes those in flight
/// roll back, except one whose target COMMIT was already sent: that one is awaited
/// and reported as it ended, so the summary never calls a committed partition
/// rolled back.
pub async fn run_partitions(
    spec: Arc<CopySpec>,
    partitions: Vec<PlannedPartition>,
    parallelism: usize,
) -> (Vec<PartitionReport>, Option<Interrupted>) {
    let mut reports: Vec<PartitionReport> = partitions
        .iter()
        .map(|p| PartitionReport {
            index: p.index,
            range: p.describe.clone(),
            status: Status::NotStarted,
            rows: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            retries: 0,
        })
        .collect();
    let mut queue: VecDeque<(PlannedPartition, u32)> =
        partitions.into_iter().map(|p| (p, 0)).collect();
    let mut running: JoinSet<(PlannedPartition, u32, Duration, Result<Counts>)> = JoinSet::new();
    let mut failed = false;

    loop {
        while !failed && !spec.cancel.is_cancelled() && running.len() < parallelism {
            let Some((partition, attempt)) = queue.pop_front() else {
                break;
            };
            let spec = Arc::clone(&spec);
            let span = tracing::info_span!("partition", partition = partition.index, range = %partition.describe);
            running.spawn(
                async move {
                    let started = Instant::now();
                    let result = match attempt {
                        0 => copy_partition(&spec, &partition).await,
                        _ => tokio::select! {
                            () = spec.cancel.cancelled() => Err(Interrupted.into()),
                            () = tokio::time::sleep(crate::error::backoff(attempt)) => copy_partition(&spec, &partition).await,
                        },
                    };
                    (partition, attempt, started.elapsed(), result)
                }
                .instrument(span),
            );
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (partition, attempt, elapsed, result) = match joined {
            Ok(done) => done,
            Err(e) => panic!("a partition task panicked: {e}"),
        };
        let index = partition.index;
        let report = reports
            .iter_mut()
            .find(|r| r.index == index)
            .expect("every running partition has a report");
        report.elapsed += elapsed;
        match result {
            Ok(counts) => {
                info!(
                    partition = index,
                    rows = counts.rows,
                    bytes = counts.bytes,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "partition written"
                );
                report.status = Status::Written;
                report.rows = counts.rows;
                report.bytes = counts.bytes;
            }
            Err(e) if e.is::<NotClaimed>() => {
                debug!(partition = index, "{e:#}");
                report.status = Status::Elsewhere;
            }
            // After Ctrl-C or SIGTERM a transient failure is not retried, and
            // its target transaction did not commit: rolled back, as if interrupted.
            Err(e)
                if e.is::<Interrupted>()
                    || (spec.cancel.is_cancelled() && crate::engine::is_transient(&e)) =>
            {
                info!(partition = index, "partition rolled back: interrupted");
                report.status = Status::RolledBack;
            }
            Err(e) if attempt < spec.retries && crate::engine::is_transient(&e) => {
                let error = crate::error::chain(&e);
                warn!(
                    partition = index,
                    "partition failed, retry {} of {} follows: {error}",
                    attempt + 1,
                    spec.retries
                );
                report.status = Status::Failed(error);
                report.retries += 1;
                queue.push_front((partition, attempt + 1));
            }
            Err(e) => {
                let error = crate::error::chain(&e);
                warn!(partition = index, "partition failed: {error}");
                report.status = Status::Failed(error);
                failed = true;
            }
        }
    }
    let stopped_short = reports
        .iter()
        .any(|r| !matches!(r.status, Status::Written | Status::Elsewhere));
    let interrupted = (spec.cancel.is_cancelled() && stopped_short).then_some(Interrupted);
    (reports, interrupted)
}

/// Copies one partition in its own target transaction. On failure both
/// connections are closed rather than returned to the pool; after a stall, the
/// server sessions left behind are ended too, so the retry finds no lock of the
/// old transaction in its way and the servers get their slots back.
async fn copy_partition(spec: &CopySpec, partition: &PlannedPartition) -> Result<Counts> {
    let watch = Watch::default();
    let mut sessions = Sessions::default();
    let result = copy_partition_with(spec, partition, &watch, &mut sessions).await;
    let result = match result {
        Err(e) if e.is::<CommitUnanswered>() => {
            let settled = settle_unanswered_commit(spec, partition, sessions.target.as_ref());
            let settled = tokio::select! {
                settled = settled => settled,
                () = after_cancel(&spec.cancel) => Err(anyhow::anyhow!(
                    "interrupted before the outcome could be looked up"
                ).context(Unsettled)),
            };
            settled.map_err(|settled| settled.context(format!("{e:#}")))
        }
        Err(e) => {
            if e.is::<Stalled>() {
                end_sessions_left(spec, &sessions).await;
            }
            Err(e)
        }
        ok => ok,
    };
    result.with_context(|| format!("partition {} ({})", partition.index, partition.describe))
}

/// The server sessions of a partition's connections, once known.
#[derive(Default)]
struct Sessions {
    source: Option<session::Session>,
    target: Option<session::Session>,
}

async fn copy_partition_with(
    spec: &CopySpec,
    partition: &PlannedPartition,
    watch: &Watch,
    sessions: &mut Sessions,
) -> Result<Counts> {
    let (mut source, mut target) = guard(spec, watch, async {
        let source = watch
            .on(Side::Source, spec.source.acquire())
            .await
            .context("taking a source connection (none could be opened or freed within 60 s)")?;
        let target = watch
            .on(Side::Target, spec.target.acquire())
            .await
            .context("taking a target connection (none could be opened or freed within 60 s)")?;
        anyhow::Ok((source, target))
    })
    .await?;
    let result =
        copy_partition_on(spec, partition, watch, sessions, &mut source, &mut target).await;
    match &result {
        Ok(_) => {}
        // Another worker's partition: nothing was written, the connections
        // go back to the pool for the next one.
        Err(e) if e.is::<NotClaimed>() => {
            let ended = async {
                pg::execute(&mut target, "ROLLBACK").await?;
                pg::execute(&mut source, "COMMIT").await
            };
            if ended.await.is_err() {
                close(source).await;
                close(target).await;
            }
        }
        // No goodbye on a connection that stalled, or whose COMMIT got no answer:
        // it would wait too. Dropped detached from the pool, the socket closes at
        // once (the server may not notice: `end_sessions_left` or the settlement
        // ends its session).
        Err(e) if e.is::<Stalled>() || e.is::<CommitUnanswered>() => {
            drop(source.detach());
            drop(target.detach());
        }
        Err(_) => {
            close(source).await;
            close(target).await;
        }
    }
    result
}

/// Runs `work` against the run's cancellation and the stall watchdog: Ctrl-C or
/// SIGTERM drops it wherever it is (an interruption), and so does a side that
/// moved no data for `run.stall_timeout` (a transient failure).
async fn guard<T>(
    spec: &CopySpec,
    watch: &Watch,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        () = spec.cancel.cancelled() => Err(Interrupted.into()),
        stalled = watch.stalled(spec.stall_timeout) => Err(stalled.into()),
        done = work => done,
    }
}

/// Resolves `INTERRUPTED_WAIT` after the run is cancelled (never, if it is not).
async fn after_cancel(cancel: &CancellationToken) {
    cancel.cancelled().await;
    tokio::time::sleep(INTERRUPTED_WAIT).await;
}

/// Ends the sessions a stalled partition left on the servers, on new connections,
/// both sides at once and best effort: a server that does not let stride end
/// them within `CLOSE_TIMEOUT` keeps them until its own timeouts do.
async fn end_sessions_left(spec: &CopySpec, sessions: &Sessions) {
    let end = |side: Side, pool: &PgPool, session: Option<session::Session>| {
        let pool = pool.clone();
        async move {
            let Some(session) = session else { return };
            let ended = async {
                let mut conn = pool.acquire().await?;
                session::end(&mut conn, &session, END_SESSION_TIMEOUT).await
            };
            match tokio::time::timeout(CLOSE_TIMEOUT, ended).await {
                Ok(Ok(())) => debug!(pid = session.pid, "ended the stalled {side} session"),
                Ok(Err(e)) => {
                    debug!(
                        pid = session.pid,
                        "could not end the stalled {side} session: {e:#}"
                    )
                }
                Err(_) => debug!(
                    pid = session.pid,
                    "could not end the stalled {side} session in time"
                ),
            }
        }
    };
    tokio::join!(
        end(Side::Source, &spec.source, sessions.source.clone()),
        end(Side::Target, &spec.target, sessions.target.clone()),
    );
}

/// After a COMMIT whose answer was lost: the partition's checkpoint row commits
/// with its data, so the row says whether it did. Found: the partition is written.
/// Not found: nothing was committed and a retry is safe (a transient error).
/// Without checkpoints there is no telling, and retrying could write the rows
/// twice: the outcome-unknown error is permanent.
///
/// The lookup waits until the old transaction is resolved on the server: until
/// then its row is invisible whether or not its COMMIT is under way, and a
/// lookup could call a committed partition rolled back (the retry would then fail
/// on the checkpoint's primary key). So the old session is ended first, on a new
/// connection, and the lookup comes once it is gone from `pg_stat_activity`. A
/// backend ends only between commands, never inside a COMMIT (it holds
/// interrupts off there): once it is gone, its transaction either committed or
/// never will.
async fn settle_unanswered_commit(
    spec: &CopySpec,
    partition: &PlannedPartition,
    old: Option<&session::Session>,
) -> Result<Counts> {
    let Some(cp) = &spec.checkpoint else {
        return Err(anyhow::Error::new(OutcomeUnknown));
    };
    let settled = async {
        let mut conn = tokio::time::timeout(spec.stall_timeout, spec.target.acquire())
            .await
            .map_err(|_| anyhow::anyhow!("no target connection within run.stall_timeout"))?
            .context("taking a target connection to look up the partition's checkpoint")?;
        if let Some(old) = old {
            session::end(&mut conn, old, END_SESSION_TIMEOUT)
                .await
                .context("waiting for the session of the unanswered COMMIT to end")?;
        }
        let recorded: Option<(i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT rows, bytes FROM {} WHERE fingerprint = $1 AND partition = $2",
            cp.table
        )))
        .bind(&cp.fingerprint)
        .bind(i64::try_from(partition.index).expect("partition indexes are small"))
        .fetch_optional(&mut *conn)
        .await
        .context("looking up the partition's checkpoint after an unanswered COMMIT")?;
        anyhow::Ok(recorded)
    };
    // However the lookup fails, the outcome stays unknown: not retried.
    match settled.await.context(Unsettled)? {
        Some((rows, bytes)) => {
            info!(
                partition = partition.index,
                "the COMMIT went through: its checkpoint is recorded"
            );
            Ok(Counts {
                rows: u64::try_from(rows).unwrap_or(0),
                bytes: u64::try_from(bytes).unwrap_or(0),
            })
        }
        None => Err(anyhow::Error::new(CommitRolledBack)),
    }
}

async fn close(conn: PoolConnection<Postgres>) {
    // The connection is being thrown away because it failed: a failure to say
    // goodbye politely changes nothing, and on a frozen connection the goodbye
    // would never end (dropping the future drops the socket).
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
}

/// The stall watchdog's view of one partition: which side it waits on, and a
/// count of the waits that ended (each one a message, a row or a statement's
/// answer): a count that stays still while a wait is pending means no data moved.
#[derive(Default)]
struct Watch {
    /// `Side` as 1 (source) or 2 (target); 0 before the first wait.
    waiting: AtomicU8,
    moved: AtomicU64,
}

impl Watch {
    /// Awaits `work` as a wait on `side`. Per row this costs a few plain moves:
    /// the partition's task is the only writer (the watchdog only reads, in the
    /// same task), so relaxed loads and stores suffice, no atomic read-modify-write.
    async fn on<F: Future>(&self, side: Side, work: F) -> F::Output {
        let code = match side {
            Side::Source => 1,
            Side::Target => 2,
        };
        self.waiting.store(code, Ordering::Relaxed);
        let done = work.await;
        let moved = self.moved.load(Ordering::Relaxed);
        self.moved.store(moved.wrapping_add(1), Ordering::Relaxed);
        done
    }

    /// Resolves once the side being waited on has moved nothing for `timeout`,
    /// measured in ticks of a quarter of it (at most a second), so it is found
    /// within `timeout` and a quarter.
    async fn stalled(&self, timeout: Duration) -> Stalled {
        let tick = (timeout / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
        let mut seen = self.moved.load(Ordering::Relaxed);
        let mut still_since = Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            let now = self.moved.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                still_since = Instant::now();
                continue;
            }
            let waited = still_since.elapsed();
            if waited >= timeout {
                let side = match self.waiting.load(Ordering::Relaxed) {
                    1 => Side::Source,
                    _ => Side::Target,
                };
                return Stalled {
                    side,
                    waited: timeout,
                };
            }
        }
    }
}

async fn copy_partition_on(
    spec: &CopySpec,
    partition: &PlannedPartition,
    watch: &Watch,
    sessions: &mut Sessions,
    source: &mut PgConnection,
    target: &mut PgConnection,
) -> Result<Counts> {
    let transfer = async {
        sessions.source = Some(watch.on(Side::Source, session::of(source)).await?);
        watch
            .on(Side::Source, pg::import_snapshot(source, &spec.snapshot))
            .await?;
        sessions.target = Some(watch.on(Side::Target, session::of(target)).await?);
        watch
            .on(Side::Target, pg::execute(target, "BEGIN"))
            .await
            .context("opening the target transaction")?;
        if let (Some(claims), Some(cp)) = (&spec.claims, &spec.checkpoint) {
            claim(target, watch, cp, partition.index, claims).await?;
        }
        if let Some(Repair::Range(table)) = &spec.repair {
            watch
                .on(
                    Side::Target,
                    pg::execute(
                        target,
                        &crate::engine::postgres::plan::delete_range_sql(table, partition),
                    ),
                )
                .await
                .context("deleting the partition's range from the target")?;
        }
        if let Some((_, delete)) = spec
            .reread_delete
            .as_ref()
            .filter(|(index, _)| *index == partition.index)
        {
            watch
                .on(Side::Target, pg::execute(target, delete))
                .await
                .context("deleting the target's rows in the re-read range")?;
        }
        let mut repaired = None;
        let counts = match (spec.method, &spec.upsert, &spec.repair) {
            (_, _, Some(Repair::Key(repair))) => {
                let (counts, done) =
                    repair_by_key(spec, repair, partition, watch, source, target).await?;
                repaired = Some(done);
                counts
            }
            (Method::Copy, None, _) => pass_through(spec, partition, watch, source, target).await?,
            (Method::Copy, Some(upsert), _) => {
                stage_and_merge(spec, upsert, partition, watch, source, target).await?
            }
            (Method::Insert, ..) => insert_rows(spec, partition, watch, source, target).await?,
        };
        pg::check_run_lock(target, &spec.lock).await?;
        if let Some(cp) = &spec.checkpoint {
            let record = checkpoint::record_partition_sql(
                &cp.table,
                &cp.fingerprint,
                &cp.target_table,
                partition.index,
                &partition.describe,
                counts.rows,
                counts.bytes,
            );
            watch
                .on(Side::Target, pg::execute(target, &record))
                .await
                .context("recording the partition in the checkpoint table")?;
        }
        // The source transaction only read; ending it before the target commits
        // means no error can come after the partition's rows are committed.
        watch
            .on(Side::Source, pg::execute(source, "COMMIT"))
            .await
            .context("ending the source transaction")?;
        anyhow::Ok((counts, repaired))
    };
    // An interruption or a stall drops the transfer wherever it is; the caller
    // then closes both connections, which rolls the target transaction back.
    let (counts, repaired) = guard(spec, watch, transfer).await?;
    // Once sent, the COMMIT is awaited, so the report says what the server did. If
    // the connection breaks before the answer, stalls for `run.stall_timeout`, or
    // the run is interrupted and no answer comes within `INTERRUPTED_WAIT`, the
    // server may have committed or not: the caller finds out from the checkpoint
    // table.
    let commit = watch.on(Side::Target, pg::execute(target, "COMMIT"));
    let committed = tokio::select! {
        biased;
        committed = commit => committed,
        stalled = watch.stalled(spec.stall_timeout) => {
            return Err(anyhow::Error::new(stalled).context(CommitUnanswered));
        }
        () = after_cancel(&spec.cancel) => {
            return Err(anyhow::Error::new(Interrupted).context(CommitUnanswered));
        }
    };
    match committed {
        Ok(()) => {}
        // The server answered with an error: it rolled back, and the error says why.
        Err(e @ sqlx::Error::Database(_)) => {
            return Err(anyhow::Error::new(e).context("committing the target transaction"))
        }
        Err(e) => return Err(anyhow::Error::new(e).context(CommitUnanswered)),
    }
    if let (Some(Repair::Key(repair)), Some(done)) = (&spec.repair, repaired) {
        repair
            .done
            .lock()
            .expect("no thread panics holding the repair outcomes")
            .push((partition.index, done));
    }
    Ok(counts)
}

/// Claims the partition in the open target transaction, or
/// fails with [`NotClaimed`] when another worker holds it or has copied it.
async fn claim(
    target: &mut PgConnection,
    watch: &Watch,
    cp: &Checkpoint,
    index: usize,
    claims: &Claims,
) -> Result<()> {
    let claim = checkpoint::claim_sql(&cp.fingerprint, index);
    let claimed = watch
        .on(Side::Target, pg::scalar_bool(target, &claim))
        .await
        .context("claiming the partition")?;
    if !claimed {
        return Err(NotClaimed { done: false }.into());
    }
    let recorded = checkpoint::recorded_sql(&cp.table, &cp.fingerprint, index);
    let done = watch
        .on(Side::Target, pg::scalar_bool(target, &recorded))
        .await
        .context("looking up the partition in the checkpoint table")?;
    if done {
        return Err(NotClaimed { done: true }.into());
    }
    if let Some(worker) = &claims.worker {
        let name = format!(
            "SET LOCAL application_name = {}",
            crate::sql::quote_literal(worker)
        );
        watch
            .on(Side::Target, pg::execute(target, &name))
            .await
            .context("naming the worker")?;
    }
    Ok(())
}

/// Streams `COPY (SELECT ...) TO STDOUT` into `COPY ... FROM STDIN` as bytes,
/// undecoded. Memory is bounded by one send buffer, whatever the partition's size.
///
/// sqlx's row and COPY streams enter the span that was current when they were
/// made on every poll, that is once a row: with the partition's span that was a
/// quarter of the client's instructions in a copy (callgrind). So the source
/// streams are made with no subscriber, hence no current span. Events inside them
/// still carry the partition's span: the task has it entered.
async fn pass_through(
    spec: &CopySpec,
    partition: &PlannedPartition,
    watch: &Watch,
    source: &mut PgConnection,
    target: &mut PgConnection,
) -> Result<Counts> {
    let copy_out = copy_out_sql(
        &converted_select(&partition.select, &spec.columns, &spec.reads),
        spec.format,
    );
    debug!(source = %copy_out, target = %spec.copy_in, "streaming");
    let mut rows_out = watch
        .on(
            Side::Source,
            source
                .copy_out_raw(&copy_out)
                .with_subscriber(Dispatch::none()),
        )
        .await
        .context("starting COPY TO STDOUT on the source")?;
    let mut sink = watch
        .on(Side::Target, target.copy_in_raw(&spec.copy_in))
        .await
        .context("starting COPY FROM STDIN on the target")?;
    let mut buffer = BytesMut::with_capacity(SEND_BUFFER_BYTES + (64 << 10));
    let mut bytes = 0u64;
    // The server sends one CopyData message per row (binary: the first also carries
    // the header, and one more carries the trailer), so messages count rows for
    // the progress bar; the exact count comes from the target at the end.
    let mut messages_unreported = 0u64;
    let mut reported = 0u64;
    while let Some(chunk) = watch.on(Side::Source, rows_out.next()).await {
        let chunk = chunk
            .map_err(|e| name_failing_columns(e.into(), &spec.can_fail))
            .context("reading rows from the source")?;
        bytes += chunk.len() as u64;
        messages_unreported += 1;
        buffer.extend_from_slice(&chunk);
        if buffer.len() >= SEND_BUFFER_BYTES {
            watch
                .on(Side::Target, sink.send(buffer.split().freeze()))
                .await
                .context("sending rows to the target")?;
            spec.progress.inc(messages_unreported);
            reported += messages_unreported;
            messages_unreported = 0;
        }
    }
    drop(rows_out);
    if !buffer.is_empty() {
        watch
            .on(Side::Target, sink.send(buffer.freeze()))
            .await
            .context("sending rows to the target")?;
    }
    // Data errors (bad bytes, types, constraints) surface here, not at `send`.
    let rows = watch
        .on(Side::Target, sink.finish())
        .await
        .map_err(pg::with_place)
        .context("finishing COPY on the target")?;
    spec.progress.inc(rows.saturating_sub(reported));
    Ok(Counts { rows, bytes })
}

/// Upsert with COPY: the partition's rows go into a temporary staging table,
/// then one `INSERT ... SELECT ... ON CONFLICT` moves them into the target, all
/// in the partition's transaction. Rows counted are the rows read from the
/// source, whether they were inserted, updated or skipped.
async fn stage_and_merge(
    spec: &CopySpec,
    upsert: &UpsertSpec,
    partition: &PlannedPartition,
    watch: &Watch,
    source: &mut PgConnection,
    target: &mut PgConnection,
) -> Result<Counts> {
    watch
        .on(Side::Target, pg::execute(target, &upsert.create_stage))
        .await
        .context("creating the staging table")?;
    let counts = pass_through(spec, partition, watch, source, target).await?;
    debug!(merge = %upsert.merge, "merging the staged rows");
    watch
        .on(Side::Target, pg::execute(target, &upsert.merge))
        .await
        .map_err(|e| upsert_error(e, &upsert.key))
        .context("merging the staged rows into the target")?;
    Ok(counts)
}

/// A batch INSERT, or a source query casting a column, that failed on a value
/// (SQLSTATE class 22, data exception): its error names no column, so name the
/// converted columns that can fail.
fn name_failing_columns(error: anyhow::Error, can_fail: &[String]) -> anyhow::Error {
    let data = error
        .downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .and_then(|e| e.code())
        .is_some_and(|code| code.starts_with("22"));
    if data && !can_fail.is_empty() {
        error.context(format!(
            "a value did not convert into its column ({})",
            can_fail.join("; ")
        ))
    } else {
        error
    }
}

/// `verify --repair` by key: the partition's rows are staged, and only what
/// differs changes in the target (see [`KeyRepair`]). Rows counted are the rows
/// read from the source.
async fn repair_by_key(
    spec: &CopySpec,
    repair: &KeyRepair,
    partition: &PlannedPartition,
    watch: &Watch,
    source: &mut PgConnection,
    target: &mut PgConnection,
) -> Result<(Counts, Repaired)> {
    watch
        .on(Side::Target, pg::execute(target, &repair.create_stage))
        .await
        .context("creating the staging table")?;
    let counts = match spec.method {
        Method::Copy => pass_through(spec, partition, watch, source, target).await?,
        Method::Insert => insert_rows(spec, partition, watch, source, target).await?,
    };
    let nulls: i64 = watch
        .on(
            Side::Target,
            sqlx::query_scalar(AssertSqlSafe(repair.null_keys.as_str())).fetch_one(&mut *target),
        )
        .await
        .context("looking for NULL keys among the staged rows")?;
    if nulls > 0 {
        anyhow::bail!(
            "{nulls} source rows have a NULL in the key ({}), which matches no target row, so a repair by key would add them again; the partition was rolled back (expected no NULL in the key's columns of the source's rows)",
            repair.key.join(", ")
        );
    }
    debug!(merge = %repair.merge, "merging the rows that differ");
    let written = watch
        .on(
            Side::Target,
            sqlx::query(AssertSqlSafe(repair.merge.as_str())).execute(&mut *target),
        )
        .await
        .map_err(|e| upsert_error(e, &repair.key))
        .context("merging the rows that differ into the target")?
        .rows_affected();
    let mut deleted = 0;
    if repair.delete_extra {
        let delete = crate::engine::postgres::plan::delete_extra_sql(
            &repair.table,
            &crate::engine::postgres::plan::stage_table(),
            &repair.key,
            partition.target_predicate.as_deref(),
        );
        debug!(delete = %delete, "deleting the rows the source does not have");
        deleted = watch
            .on(
                Side::Target,
                sqlx::query(AssertSqlSafe(delete)).execute(&mut *target),
            )
            .await
            .context("deleting the target's rows the source does not have")?
            .rows_affected();
    }
    Ok((counts, Repaired { written, deleted }))
}

/// A source key repeated within one statement makes `ON CONFLICT DO UPDATE` fail
/// (SQLSTATE 21000, "cannot affect row a second time"): say which key.
fn upsert_error(error: sqlx::Error, key: &[String]) -> anyhow::Error {
    let repeated = error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "21000");
    let error = anyhow::Error::new(error);
    if repeated {
        error.context(format!(
            "source rows repeat a value of target.key ({}) within one partition, and an upsert can update a target row only once per statement (expected the key unique in the source rows)",
            key.join(", ")
        ))
    } else {
        error
    }
}

/// The row path: every column fetched as its exact text form, written as one
/// `INSERT ... SELECT ... FROM unnest($1::text[], ...)` per batch. A batch ends at
/// `batch_size` rows, or earlier once its values reach `BATCH_BYTES_MAX`.
///
/// Values are never decoded: the bytes of each source value go straight into its
/// column's array, already in the wire format of a `text[]` parameter. (The target
/// checks the encoding of every text value it receives, as it does for any
/// client.)
async fn insert_rows(
    spec: &CopySpec,
    partition: &PlannedPartition,
    watch: &Watch,
    source: &mut PgConnection,
    target: &mut PgConnection,
) -> Result<Counts> {
    let select = rows_select_sql(
        &converted_select(&partition.select, &spec.columns, &spec.reads),
        &spec.columns,
    );
    debug!(source = %select, target = %spec.insert, "inserting batches");
    // The stream is made on the call and its inner stream on the first poll: both
    // without a span (see `pass_through`).
    let mut rows_in = tracing::dispatcher::with_default(&Dispatch::none(), || {
        sqlx::query(AssertSqlSafe(select.as_str())).fetch(&mut *source)
    });
    let mut batch = Batch::new(spec.columns.len());
    let mut counts = Counts::default();
    let mut next = watch
        .on(
            Side::Source,
            rows_in.try_next().with_subscriber(Dispatch::none()),
        )
        .await;
    while let Some(row) = next
        .map_err(|e| name_failing_columns(e.into(), &spec.can_fail))
        .context("reading rows from the source")?
    {
        for (i, column) in batch.columns.iter_mut().enumerate() {
            let value = row
                .try_get_raw(i)
                .with_context(|| format!("reading column \"{}\"", spec.columns[i]))?;
            let bytes = match value.is_null() {
                true => None,
                false => Some(
                    value
                        .as_bytes()
                        .map_err(|e| anyhow::anyhow!(e))
                        .with_context(|| format!("reading column \"{}\"", spec.columns[i]))?,
                ),
            };
            batch.bytes += column.push(bytes);
        }
        batch.rows += 1;
        if batch.rows == spec.batch_size || batch.bytes >= BATCH_BYTES_MAX {
            counts += watch
                .on(Side::Target, write_batch(spec, target, &mut batch))
                .await?;
        }
        next = watch.on(Side::Source, rows_in.try_next()).await;
    }
    if batch.rows > 0 {
        counts += watch
            .on(Side::Target, write_batch(spec, target, &mut batch))
            .await?;
    }
    Ok(counts)
}

/// A batch's values reach at most about this many bytes before it is sent, however
/// many rows `batch_size` allows: the client holds a batch about twice while sending
/// it (sqlx's bind parameters, then its socket buffer), once per partition, so wide
/// rows must not multiply memory by `batch_size`.
const BATCH_BYTES_MAX: usize = 512 << 10;

/// The rows of one batch, column by column.
struct Batch {
    columns: Vec<TextArray>,
    rows: usize,
    /// Bytes of the values (with their length words), to end the batch at
    /// `BATCH_BYTES_MAX`.
    bytes: usize,
}

impl Batch {
    fn new(columns: usize) -> Self {
        Batch {
            columns: (0..columns).map(|_| TextArray::default()).collect(),
            rows: 0,
            bytes: 0,
        }
    }
}

/// One column of a batch as the elements of a binary `text[]`: each value as a
/// 4-byte big-endian length (-1 for NULL) and its bytes.
#[derive(Default)]
struct TextArray {
    elements: Vec<u8>,
    len: usize,
    has_null: bool,
}

/// `text`, the type of every element.
const TEXT_OID: u32 = 25;

impl TextArray {
    /// Appends a value; returns the bytes it took.
    fn push(&mut self, value: Option<&[u8]>) -> usize {
        self.len += 1;
        match value {
            None => {
                self.has_null = true;
                self.elements.extend_from_slice(&(-1i32).to_be_bytes());
                4
            }
            Some(v) => {
                // A single value is at most 1 GB in PostgreSQL.
                let n = i32::try_from(v.len()).expect("a text value is under 2 GiB");
                self.elements.extend_from_slice(&n.to_be_bytes());
                self.elements.extend_from_slice(v);
                4 + v.len()
            }
        }
    }

    /// Takes the elements out, leaving an empty array with room for as many bytes
    /// again (memory not yet written is not resident).
    fn take(&mut self) -> TextArray {
        let capacity = self.elements.len();
        std::mem::replace(
            self,
            TextArray {
                elements: Vec::with_capacity(capacity),
                len: 0,
                has_null: false,
            },
        )
    }
}

impl sqlx::Type<Postgres> for TextArray {
    fn type_info() -> PgTypeInfo {
        <Vec<String> as sqlx::Type<Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, Postgres> for TextArray {
    /// The binary form of a one-dimensional array (PostgreSQL's `array_recv`).
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        let len = i32::try_from(self.len)?;
        buf.reserve(20 + self.elements.len());
        buf.extend_from_slice(&1i32.to_be_bytes()); // dimensions
        buf.extend_from_slice(&i32::from(self.has_null).to_be_bytes());
        buf.extend_from_slice(&TEXT_OID.to_be_bytes());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&1i32.to_be_bytes()); // lower bound
        buf.extend_from_slice(&self.elements);
        Ok(IsNull::No)
    }

    fn size_hint(&self) -> usize {
        20 + self.elements.len()
    }
}

/// Sends the batch as one INSERT and empties it.
async fn write_batch(
    spec: &CopySpec,
    target: &mut PgConnection,
    batch: &mut Batch,
) -> Result<Counts> {
    let mut arguments = PgArguments::default();
    arguments.reserve(batch.columns.len(), batch.bytes + 24 * batch.columns.len());
    let value_bytes = batch.bytes - 4 * batch.rows * batch.columns.len();
    for column in &mut batch.columns {
        // Moved in, so each column is freed as soon as it is encoded.
        arguments
            .add(column.take())
            .map_err(|e| anyhow::anyhow!(e))
            .context("encoding a batch")?;
    }
    let rows = batch.rows;
    batch.rows = 0;
    batch.bytes = 0;
    let query = sqlx::query_with(AssertSqlSafe(spec.insert.as_str()), arguments);
    let done = match &spec.upsert {
        None => query.execute(target).await.map_err(anyhow::Error::new),
        Some(upsert) => query
            .execute(target)
            .await
            .map_err(|e| upsert_error(e, &upsert.key)),
    }
    .map_err(|e| name_failing_columns(e, &spec.can_fail))
    .context("inserting a batch into the target")?;
    spec.progress.inc(rows as u64);
    // Rows copied: those inserted, or in upsert mode those read (an update or a
    // skip is a row copied too).
    Ok(Counts {
        rows: match spec.upsert {
            None => done.rows_affected(),
            Some(_) => rows as u64,
        },
        bytes: value_bytes as u64,
    })
}

/// Copies `partitions` at most `parallelism` at once, with Ctrl-C and SIGTERM
/// cancelling the copy, and the progress bar cleared at the end.
pub async fn copy_partitions(
    spec: &Arc<CopySpec>,
    partitions: Vec<PlannedPartition>,
    parallelism: usize,
) -> (Vec<PartitionReport>, Option<crate::error::Interrupted>) {
    let signals = tokio::spawn(crate::run::cancel_on_signals(spec.cancel.clone()));
    let concurrency = parallelism.min(partitions.len()).max(1);
    let ended = run_partitions(Arc::clone(spec), partitions, concurrency).await;
    signals.abort();
    spec.progress.finish_and_clear();
    ended
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Encode;

    fn encoded<'q, T: Encode<'q, Postgres>>(value: T) -> Vec<u8> {
        let mut buf = PgArgumentBuffer::default();
        assert!(matches!(value.encode_by_ref(&mut buf), Ok(IsNull::No)));
        buf.to_vec()
    }

    #[test]
    fn a_text_array_is_encoded_as_sqlx_encodes_a_text_vec() {
        let cases: [&[Option<&str>]; 4] = [
            &[],
            &[Some("")],
            &[Some("a"), Some("ü ≠ 1"), Some("")],
            &[None, Some("x"), None],
        ];
        for values in cases {
            let mut array = TextArray::default();
            let bytes: usize = values
                .iter()
                .map(|v| array.push(v.map(str::as_bytes)))
                .sum();
            assert_eq!(
                bytes,
                values
                    .iter()
                    .map(|v| 4 + v.map_or(0, str::len))
                    .sum::<usize>()
            );
            let mut ours = encoded(array.take());
            let theirs = encoded(
                values
                    .iter()
                    .map(|v| v.map(String::from))
                    .collect::<Vec<_>>(),
            );
            // sqlx leaves the has-NULLs flag at 0 (the server does not rely on it);
            // ours sets it.
            let has_null = values.iter().any(Option::is_none);
            assert_eq!(ours[4..8], i32::from(has_null).to_be_bytes(), "{values:?}");
            ours[4..8].copy_from_slice(&0i32.to_be_bytes());
            assert_eq!(ours, theirs, "{values:?}");
            assert_eq!(array.len, 0, "take leaves an empty array");
            assert!(array.elements.is_empty());
        }
    }
}
