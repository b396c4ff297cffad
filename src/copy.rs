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

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
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
use crate::error::{CommitRolledBack, CommitUnanswered, Interrupted, OutcomeUnknown};
use crate::job::Method;
use crate::pg;
use crate::plan::{copy_out_sql, rows_select_sql, CopyFormat, PlannedPartition};
use crate::sql::QualifiedName;

/// Source chunks are gathered to about this size before each send: sqlx flushes the
/// socket on every `send`, and one send per row is about half as fast.
const SEND_BUFFER_BYTES: usize = 1 << 20;

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
    pub batch_size: usize,
    /// Counts rows as they arrive; hidden when stderr is not a terminal.
    pub progress: ProgressBar,
    /// Set on Ctrl-C or SIGTERM: no new partition starts, those in flight roll back.
    pub cancel: CancellationToken,
    /// Attempts after a partition's first, on transient failures.
    pub retries: u32,
    /// Where committed partitions are recorded; `None` without checkpoints.
    pub checkpoint: Option<Checkpoint>,
    /// `verify --repair`: each partition's range is deleted from this target table
    /// first, in the same transaction, so the range ends equal to the source's.
    pub repair: Option<QualifiedName>,
    /// The run's lock on the target table: each partition commits only while
    /// the run still holds it.
    pub lock: pg::RunLock,
    /// Upsert mode: the key rows are matched by (`insert` then already ends in
    /// its `ON CONFLICT` clause), and with `method = "copy"` the staging table.
    pub upsert: Option<UpsertSpec>,
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

/// What became of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Committed on the target.
    Written,
    /// Rolled back; the chain of errors.
    Failed(String),
    /// Was running when the run was interrupted; rolled back.
    RolledBack,
    /// Never started (an earlier failure or an interruption stopped the run).
    NotStarted,
    /// Committed by an earlier run of the same job (a resume skips it).
    Skipped,
}

#[derive(Clone, Debug)]
pub struct PartitionReport {
    pub index: usize,
    pub range: String,
    pub status: Status,
    pub rows: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Attempts after the first, each after a transient failure.
    pub retries: u32,
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
/// A partition that fails transiently (see `error::is_transient`) is tried again
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
                            () = tokio::time::sleep(backoff(attempt)) => copy_partition(&spec, &partition).await,
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
            Err(e) if e.is::<Interrupted>() => {
                info!(partition = index, "partition rolled back: interrupted");
                report.status = Status::RolledBack;
            }
            Err(e) if attempt < spec.retries && crate::error::is_transient(&e) => {
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
    let stopped_short = reports.iter().any(|r| r.status != Status::Written);
    let interrupted = (spec.cancel.is_cancelled() && stopped_short).then_some(Interrupted);
    (reports, interrupted)
}

/// Wait before attempt `attempt` (1, 2, ...): 0.5 s doubling up to 8 s, with up to
/// 50% jitter so partitions that failed together do not retry in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let base_ms = 500u64 << attempt.saturating_sub(1).min(4);
    let jitter_ms = RandomState::new().build_hasher().finish() % (base_ms / 2 + 1);
    Duration::from_millis(base_ms + jitter_ms)
}

/// Copies one partition in its own target transaction. On failure both
/// connections are closed rather than returned to the pool.
async fn copy_partition(spec: &CopySpec, partition: &PlannedPartition) -> Result<Counts> {
    let mut source = spec
        .source
        .acquire()
        .await
        .context("taking a source connection (none could be opened or freed within 60 s)")?;
    let mut target = spec
        .target
        .acquire()
        .await
        .context("taking a target connection (none could be opened or freed within 60 s)")?;
    let mut result = copy_partition_on(spec, partition, &mut source, &mut target).await;
    if result.is_err() {
        close(source).await;
        close(target).await;
    }
    if let Err(e) = &result {
        if e.is::<CommitUnanswered>() {
            result = settle_unanswered_commit(spec, partition)
                .await
                .map_err(|settled| settled.context(format!("{e:#}")));
        }
    }
    result.with_context(|| format!("partition {} ({})", partition.index, partition.describe))
}

/// After a COMMIT whose answer was lost: the partition's checkpoint row commits
/// with its data, so the row says whether it did. Found: the partition is written.
/// Not found: nothing was committed and a retry is safe (a transient error).
/// Without checkpoints there is no telling, and retrying could write the rows
/// twice: the outcome-unknown error is permanent.
async fn settle_unanswered_commit(spec: &CopySpec, partition: &PlannedPartition) -> Result<Counts> {
    let Some(cp) = &spec.checkpoint else {
        return Err(anyhow::Error::new(OutcomeUnknown));
    };
    let mut conn = spec
        .target
        .acquire()
        .await
        .context("taking a target connection to look up the partition's checkpoint")?;
    let recorded: Option<(i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT rows, bytes FROM {} WHERE fingerprint = $1 AND partition = $2",
        cp.table
    )))
    .bind(&cp.fingerprint)
    .bind(i64::try_from(partition.index).expect("partition indexes are small"))
    .fetch_optional(&mut *conn)
    .await
    .context("looking up the partition's checkpoint after an unanswered COMMIT")?;
    match recorded {
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
    // goodbye politely changes nothing.
    let _ = conn.close().await;
}

async fn copy_partition_on(
    spec: &CopySpec,
    partition: &PlannedPartition,
    source: &mut PgConnection,
    target: &mut PgConnection,
) -> Result<Counts> {
    let transfer = async {
        pg::import_snapshot(source, &spec.snapshot).await?;
        pg::execute(target, "BEGIN")
            .await
            .context("opening the target transaction")?;
        if let Some(table) = &spec.repair {
            pg::execute(target, &crate::plan::delete_range_sql(table, partition))
                .await
                .context("deleting the partition's range from the target")?;
        }
        let counts = match (spec.method, &spec.upsert) {
            (Method::Copy, None) => pass_through(spec, partition, source, target).await?,
            (Method::Copy, Some(upsert)) => {
                stage_and_merge(spec, upsert, partition, source, target).await?
            }
            (Method::Insert, _) => insert_rows(spec, partition, source, target).await?,
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
            pg::execute(target, &record)
                .await
                .context("recording the partition in the checkpoint table")?;
        }
        // The source transaction only read; ending it before the target commits
        // means no error can come after the partition's rows are committed.
        pg::execute(source, "COMMIT")
            .await
            .context("ending the source transaction")?;
        anyhow::Ok(counts)
    };
    // An interruption drops the transfer wherever it is; the caller then closes
    // both connections, which rolls the target transaction back.
    let counts = tokio::select! {
        biased;
        () = spec.cancel.cancelled() => return Err(Interrupted.into()),
        counts = transfer => counts?,
    };
    // Once sent, the COMMIT is awaited whatever happens, so the report says what
    // the server did. If the connection breaks before the answer, the server may
    // have committed or not: the caller finds out from the checkpoint table.
    match pg::execute(target, "COMMIT").await {
        Ok(()) => {}
        // The server answered with an error: it rolled back, and the error says why.
        Err(e @ sqlx::Error::Database(_)) => {
            return Err(anyhow::Error::new(e).context("committing the target transaction"))
        }
        Err(e) => return Err(anyhow::Error::new(e).context(CommitUnanswered)),
    }
    Ok(counts)
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
    source: &mut PgConnection,
    target: &mut PgConnection,
) -> Result<Counts> {
    let copy_out = copy_out_sql(&partition.select, spec.format);
    debug!(source = %copy_out, target = %spec.copy_in, "streaming");
    let mut rows_out = source
        .copy_out_raw(&copy_out)
        .with_subscriber(Dispatch::none())
        .await
        .context("starting COPY TO STDOUT on the source")?;
    let mut sink = target
        .copy_in_raw(&spec.copy_in)
        .await
        .context("starting COPY FROM STDIN on the target")?;
    let mut buffer = BytesMut::with_capacity(SEND_BUFFER_BYTES + (64 << 10));
    let mut bytes = 0u64;
    // The server sends one CopyData message per row (binary: the first also carries
    // the header, and one more carries the trailer), so messages count rows for
    // the progress bar; the exact count comes from the target at the end.
    let mut messages_unreported = 0u64;
    let mut reported = 0u64;
    while let Some(chunk) = rows_out.next().await {
        let chunk = chunk.context("reading rows from the source")?;
        bytes += chunk.len() as u64;
        messages_unreported += 1;
        buffer.extend_from_slice(&chunk);
        if buffer.len() >= SEND_BUFFER_BYTES {
            sink.send(buffer.split().freeze())
                .await
                .context("sending rows to the target")?;
            spec.progress.inc(messages_unreported);
            reported += messages_unreported;
            messages_unreported = 0;
        }
    }
    drop(rows_out);
    if !buffer.is_empty() {
        sink.send(buffer.freeze())
            .await
            .context("sending rows to the target")?;
    }
    // Data errors (bad bytes, types, constraints) surface here, not at `send`.
    let rows = sink
        .finish()
        .await
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
    source: &mut PgConnection,
    target: &mut PgConnection,
) -> Result<Counts> {
    pg::execute(target, &upsert.create_stage)
        .await
        .context("creating the staging table")?;
    let counts = pass_through(spec, partition, source, target).await?;
    debug!(merge = %upsert.merge, "merging the staged rows");
    pg::execute(target, &upsert.merge)
        .await
        .map_err(|e| upsert_error(e, &upsert.key))
        .context("merging the staged rows into the target")?;
    Ok(counts)
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
    source: &mut PgConnection,
    target: &mut PgConnection,
) -> Result<Counts> {
    let select = rows_select_sql(&partition.select, &spec.columns);
    debug!(source = %select, target = %spec.insert, "inserting batches");
    // The stream is made on the call and its inner stream on the first poll: both
    // without a span (see `pass_through`).
    let mut rows_in = tracing::dispatcher::with_default(&Dispatch::none(), || {
        sqlx::query(AssertSqlSafe(select.as_str())).fetch(&mut *source)
    });
    let mut batch = Batch::new(spec.columns.len());
    let mut counts = Counts::default();
    let mut next = rows_in.try_next().with_subscriber(Dispatch::none()).await;
    while let Some(row) = next.context("reading rows from the source")? {
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
            counts += write_batch(spec, target, &mut batch).await?;
        }
        next = rows_in.try_next().await;
    }
    if batch.rows > 0 {
        counts += write_batch(spec, target, &mut batch).await?;
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
