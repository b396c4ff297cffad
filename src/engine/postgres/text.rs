//! PostgreSQL on the seam: reading rows as canonical text (`COPY ... TO
//! STDOUT`, text format, under the session settings that make it canonical:
//! ISO dates, UTC, hex bytea, every float digit) and writing canonical text
//! (`COPY ... FROM STDIN`), for copies with another engine. PostgreSQL to
//! PostgreSQL keeps the binary pass-through of `copy.rs`.

use anyhow::{Context, Result};
use bytes::BytesMut;
use futures_util::StreamExt;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, PgPool, Postgres};
use tokio::sync::mpsc;

use super::{Server, Side};
use crate::engine::postgres::plan::{reading, where_clause, Key};
use crate::engine::{Batch, Column, Kind, Recorded, Table, WriteSpec, BATCH_ROWS};
use crate::error::JobError;
use crate::job::{DbUrl, Job, Relation};
use crate::partition::{KeyRange, KeyType};
use crate::sql::{quote_ident, QualifiedName};

/// Bytes sent to the target per COPY message.
const SEND_BYTES: usize = 256 << 10;

/// What a PostgreSQL type holds, for the other engines.
pub fn kind(column: &super::Column) -> Kind {
    let base = column.domain_over.as_deref().unwrap_or(&column.base_type);
    match base {
        "smallint" | "integer" | "bigint" => Kind::Int,
        "real" | "double precision" => Kind::Float,
        "numeric" => Kind::Numeric,
        "boolean" => Kind::Bool,
        "bytea" => Kind::Bytes,
        "date" => Kind::Date,
        "timestamp without time zone" => Kind::Timestamp,
        "timestamp with time zone" => Kind::TimestampTz,
        "time without time zone" => Kind::Time,
        _ => Kind::Text,
    }
}

/// The PostgreSQL type of a column stride creates for another engine's column.
pub fn declared_for(column: &Column) -> String {
    match column.kind {
        Kind::Bool => "boolean".into(),
        Kind::Int => "bigint".into(),
        Kind::Float => "double precision".into(),
        Kind::Numeric => {
            // Keep a declared precision and scale: DECIMAL(10,2) is numeric(10,2).
            let digits: String = column
                .declared
                .split_once('(')
                .map(|(_, rest)| rest.trim_end_matches(')').replace(' ', ""))
                .unwrap_or_default();
            if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == ',') {
                format!("numeric({digits})")
            } else {
                "numeric".into()
            }
        }
        Kind::Bytes => "bytea".into(),
        Kind::Date => "date".into(),
        Kind::Timestamp => "timestamp".into(),
        Kind::TimestampTz => "timestamptz".into(),
        Kind::Time => "time".into(),
        Kind::Text => "text".into(),
    }
}

fn seam_table(columns: Vec<super::Column>, keys: super::UniqueKeys) -> Table {
    Table {
        columns: columns
            .into_iter()
            .map(|c| Column {
                kind: kind(&c),
                declared: c.type_name.clone(),
                name: c.name,
                not_null: c.not_null,
                generated: c.generated,
            })
            .collect(),
        primary_key: keys.primary_key.unwrap_or_default(),
        unique_keys: keys.unique,
    }
}

async fn describe(pool: &PgPool, name: &QualifiedName) -> Result<Option<Table>> {
    let mut conn = pool.acquire().await.context("taking a connection")?;
    let Some(relation) = super::describe_table(&mut conn, name).await? else {
        return Ok(None);
    };
    let keys = super::unique_keys(&mut conn, name).await?;
    Ok(Some(seam_table(relation.columns, keys)))
}

/// The statement reading `columns` of the job's rows within `range` of the key.
pub fn select(
    job: &Job,
    columns: &[Column],
    key: Option<(&str, KeyType)>,
    range: &KeyRange,
) -> String {
    let (from, user) = reading(job);
    let list: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    let pred =
        key.and_then(|(column, key)| crate::partition::predicate(&quote_ident(column), key, range));
    format!(
        "SELECT {} FROM {from}{}",
        list.join(", "),
        where_clause(user, pred)
    )
}

pub struct Source {
    server: Server,
    pool: PgPool,
    /// The connection holding the exported snapshot, while readers use it.
    holder: Option<PoolConnection<Postgres>>,
}

impl Source {
    pub async fn open(url: &DbUrl, retries: u32) -> Result<Source> {
        let server = super::connect(Side::Source, url, retries).await?;
        let pool = server.pool(64);
        Ok(Source {
            server,
            pool,
            holder: None,
        })
    }

    pub fn place(&self) -> String {
        self.server.place.clone()
    }

    pub fn encryption(&self) -> super::Encryption {
        self.server.encryption.clone()
    }

    pub async fn describe(&mut self, job: &Job) -> Result<Table> {
        match &job.source.relation {
            Relation::Table(name) => describe(&self.pool, name).await?.ok_or_else(|| {
                JobError::new(format!(
                    "source.table: table {name} does not exist in the source database at {} (expected an existing table or view)",
                    self.server.place
                ))
                .into()
            }),
            Relation::Query(query) => {
                let mut conn = self.pool.acquire().await?;
                let relation = super::describe_query(&mut conn, query).await?;
                Ok(seam_table(relation.columns, super::UniqueKeys::default()))
            }
        }
    }

    /// The planner's estimate of the rows `select` returns.
    pub async fn estimate(&self, select: &str) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        super::estimate_rows(&mut conn, select).await
    }

    /// Readers that import one exported snapshot.
    pub async fn snapshot(&mut self, readers: usize) -> Result<Vec<Reader>> {
        let mut holder = self
            .pool
            .acquire()
            .await
            .context("taking a source connection")?;
        let snapshot = super::export_snapshot(&mut holder).await?;
        let mut out = Vec::with_capacity(readers);
        for _ in 0..readers.max(1) {
            let mut reader = Reader {
                conn: None,
                again: Some((self.pool.clone(), snapshot.clone())),
            };
            reader.connection().await?;
            out.push(reader);
        }
        self.holder = Some(holder);
        Ok(out)
    }
}

/// A connection reading in the run's snapshot. One whose read did not end
/// (it failed, or its attempt was dropped after a stall) is not used again:
/// the next read opens a new one that imports the same snapshot, which the
/// coordinator keeps open for the whole run.
pub struct Reader {
    conn: Option<PoolConnection<Postgres>>,
    /// The pool and the snapshot a new connection imports (`None`: a reader of
    /// the target as it is, for verify).
    again: Option<(PgPool, String)>,
}

impl Reader {
    /// The reader's connection, a new one in the snapshot when the last read
    /// did not end.
    async fn connection(&mut self) -> Result<&mut PoolConnection<Postgres>> {
        if self.conn.is_none() {
            let (pool, snapshot) = self
                .again
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("the target's reader lost its connection"))?;
            let mut conn = pool.acquire().await.context("taking a source connection")?;
            conn.close_on_drop();
            super::import_snapshot(&mut conn, snapshot).await?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("opened just above"))
    }

    pub async fn bounds(
        &mut self,
        job: &Job,
        column: &str,
        key: KeyType,
    ) -> Result<Option<(i64, i64)>> {
        let sql = crate::engine::postgres::plan::bounds_sql(
            job,
            &Key {
                column: column.to_string(),
                key_type: key,
            },
        );
        super::key_bounds(self.connection().await?, &sql).await
    }

    pub async fn read(
        &mut self,
        select: &str,
        kinds: &[Kind],
        rows: &mpsc::Sender<Batch>,
    ) -> Result<()> {
        // Taken out while it reads: put back only once the read has ended.
        self.connection().await?;
        let mut conn = self.conn.take().expect("opened just above");
        let mut stream = conn
            .copy_out_raw(&format!("COPY ({select}) TO STDOUT"))
            .await
            .context("starting COPY TO STDOUT")?;
        let mut parser = CopyText::new(kinds.len());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("reading rows")?;
            parser.feed(&chunk)?;
            if parser.batch.rows() >= BATCH_ROWS {
                let full = std::mem::replace(&mut parser.batch, Batch::new(kinds.len()));
                if rows.send(full).await.is_err() {
                    return Ok(());
                }
            }
        }
        parser.end()?;
        drop(stream);
        self.conn = Some(conn);
        parser.batch.end = true;
        let _ = rows.send(parser.batch).await;
        Ok(())
    }
}

/// COPY's text format, parsed as it streams: rows end at `\n`, values at `\t`,
/// `\N` is NULL, and backslash escapes stand for the characters they name.
struct CopyText {
    batch: Batch,
    partial: Vec<u8>,
}

impl CopyText {
    fn new(width: usize) -> CopyText {
        CopyText {
            batch: Batch::new(width),
            partial: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        let mut start = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if b == b'\n' {
                if self.partial.is_empty() {
                    self.row(&chunk[start..i])?;
                } else {
                    self.partial.extend_from_slice(&chunk[start..i]);
                    let line = std::mem::take(&mut self.partial);
                    self.row(&line)?;
                }
                start = i + 1;
            }
        }
        self.partial.extend_from_slice(&chunk[start..]);
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        anyhow::ensure!(self.partial.is_empty(), "COPY's output ended inside a row");
        Ok(())
    }

    fn row(&mut self, line: &[u8]) -> Result<()> {
        let mut count = 0;
        for field in line.split(|&b| b == b'\t') {
            count += 1;
            match unescape(field)? {
                Field::Null => self.batch.push(None),
                Field::Plain(v) => self.batch.push(Some(v)),
                Field::Escaped(v) => self.batch.push(Some(&v)),
            }
        }
        anyhow::ensure!(
            count == self.batch.width,
            "COPY sent a row of {count} values, expected {}",
            self.batch.width
        );
        Ok(())
    }
}

/// A COPY text field: NULL, as sent, or unescaped into a string of its own.
enum Field<'a> {
    Null,
    Plain(&'a str),
    Escaped(String),
}

fn unescape(field: &[u8]) -> Result<Field<'_>> {
    if field == b"\\N" {
        return Ok(Field::Null);
    }
    if !field.contains(&b'\\') {
        return Ok(Field::Plain(
            std::str::from_utf8(field).context("COPY sent text that is not UTF-8")?,
        ));
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] != b'\\' || i + 1 == field.len() {
            out.push(field[i]);
            i += 1;
            continue;
        }
        let c = field[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut n = 1;
                while n < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    v = v * 8 + u32::from(field[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if i < field.len() && field[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    v = v * 16 + (field[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    Ok(Field::Escaped(
        String::from_utf8(out).context("COPY sent text that is not UTF-8")?,
    ))
}

/// A canonical value in COPY's text format.
fn escape_into(out: &mut BytesMut, value: Option<&str>) {
    let Some(v) = value else {
        out.extend_from_slice(b"\\N");
        return;
    };
    for b in v.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[b]),
        }
    }
}

pub struct Target {
    server: Server,
    pool: PgPool,
}

impl Target {
    pub async fn open(url: &DbUrl, retries: u32, connections: u32) -> Result<Target> {
        let server = super::connect(Side::Target, url, retries).await?;
        let pool = server.pool(connections + 2);
        Ok(Target { server, pool })
    }

    pub fn place(&self) -> String {
        self.server.place.clone()
    }

    pub fn encryption(&self) -> super::Encryption {
        self.server.encryption.clone()
    }

    pub async fn describe(&self, table: &QualifiedName) -> Result<Option<Table>> {
        describe(&self.pool, table).await
    }

    pub async fn has_rows(&self, table: &str) -> Result<bool> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM {table})"
        )))
        .fetch_one(&mut *conn)
        .await
        .with_context(|| format!("looking for rows in {table}"))
    }

    pub async fn transaction(&self, statements: &[String]) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        let mut sql = String::from("BEGIN;\n");
        for s in statements {
            sql.push_str(s);
            sql.push_str(";\n");
        }
        sql.push_str("COMMIT");
        let result = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await;
        if result.is_err() {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        }
        result.context("changing the target")?;
        Ok(())
    }

    pub async fn ensure_checkpoints(&self, checkpoints: &QualifiedName) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        sqlx::raw_sql(AssertSqlSafe(crate::checkpoint::create_table_sql(
            checkpoints,
        )))
        .execute(&mut *conn)
        .await
        .context("creating the checkpoint table")?;
        Ok(())
    }

    pub async fn recorded(
        &self,
        checkpoints: &QualifiedName,
        fingerprint: &str,
    ) -> Result<Recorded> {
        let mut conn = self.pool.acquire().await?;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(checkpoints.to_string())
            .fetch_one(&mut *conn)
            .await
            .context("looking for the checkpoint table")?;
        if !exists {
            return Ok(Recorded::default());
        }
        let rows: Vec<crate::engine::CheckpointRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT partition::int8, lower_bound, upper_bound, partitions::int8, rows, bytes, finished, recorded_at::text FROM {checkpoints} WHERE fingerprint = $1 ORDER BY partition"
        )))
        .bind(fingerprint)
        .fetch_all(&mut *conn)
        .await
        .context("reading the checkpoint table")?;
        Ok(Recorded::from_rows(rows))
    }

    pub async fn write(
        &self,
        spec: &WriteSpec,
        mut rows: mpsc::Receiver<Batch>,
    ) -> Result<(u64, u64)> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .context("taking a target connection")?;
        // An attempt abandoned midway (a stall, Ctrl-C) must not hand its open
        // transaction to the next: each partition's connection is closed after
        // it, and the server session of one abandoned is ended (a frozen
        // network closes nothing, and its transaction would hold the keys of
        // the rows the retry writes).
        conn.close_on_drop();
        let mut abandoned = EndOnDrop {
            pool: self.pool.clone(),
            session: Some(super::session::of(&mut conn).await?),
        };
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
        let result = async {
            let list: Vec<String> = spec.columns.iter().map(|c| quote_ident(c)).collect();
            let list = list.join(", ");
            let stage = quote_ident("stride_stage");
            let into = match &spec.upsert {
                Some(_) => {
                    sqlx::raw_sql(AssertSqlSafe(format!(
                        "CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {list} FROM {} WITH NO DATA",
                        spec.table
                    )))
                    .execute(&mut *conn)
                    .await
                    .context("creating the upsert's staging table")?;
                    stage.clone()
                }
                None => spec.table.clone(),
            };
            let mut sink = conn
                .copy_in_raw(&format!("COPY {into} ({list}) FROM STDIN"))
                .await
                .context("starting COPY FROM STDIN on the target")?;
            let mut buffer = BytesMut::with_capacity(SEND_BYTES + (64 << 10));
            let (mut total, mut bytes) = (0u64, 0u64);
            let mut ended = false;
            while let Some(batch) = rows.recv().await {
                ended = batch.end;
                total += batch.rows() as u64;
                bytes += batch.bytes;
                for r in 0..batch.rows() {
                    for (i, v) in batch.row(r).enumerate() {
                        if i > 0 {
                            buffer.extend_from_slice(b"\t");
                        }
                        escape_into(&mut buffer, v);
                    }
                    buffer.extend_from_slice(b"\n");
                }
                if buffer.len() >= SEND_BYTES {
                    sink.send(buffer.split().freeze()).await.context("sending rows to the target")?;
                }
                if ended {
                    break;
                }
            }
            if !ended {
                let _ = sink.abort("the source stopped before its last row").await;
                anyhow::bail!("the source stopped before its last row");
            }
            if !buffer.is_empty() {
                sink.send(buffer.freeze()).await.context("sending rows to the target")?;
            }
            sink.finish()
                .await
                .map_err(super::with_place)
                .context("writing rows into the target")?;
            if let Some(u) = &spec.upsert {
                let key: Vec<String> = u.key.iter().map(|c| quote_ident(c)).collect();
                let set: Vec<String> = spec
                    .columns
                    .iter()
                    .filter(|c| !u.key.contains(c))
                    .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
                    .collect();
                let action = if u.update && !set.is_empty() {
                    format!("DO UPDATE SET {}", set.join(", "))
                } else {
                    "DO NOTHING".to_string()
                };
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "INSERT INTO {} ({list}) SELECT {list} FROM {stage} ON CONFLICT ({}) {action}",
                    spec.table,
                    key.join(", ")
                )))
                .execute(&mut *conn)
                .await
                .context("merging the partition's rows by key")?;
            }
            if let Some(cp) = &spec.checkpoint {
                sqlx::raw_sql(AssertSqlSafe(crate::engine::record_partition_sql(cp, &spec.table, total, bytes)))
                    .execute(&mut *conn)
                    .await
                    .context("recording the partition in the checkpoint table")?;
            }
            anyhow::Ok((total, bytes))
        }
        .await;
        let ended = match result {
            Ok(counts) => match sqlx::raw_sql("COMMIT").execute(&mut *conn).await {
                Ok(_) => Ok(counts),
                // The COMMIT's answer is lost: end the session before anyone
                // looks, so its transaction is settled for good (committed or
                // not); the retry reads the checkpoint table to know which.
                Err(e) => {
                    if let (Some(session), Ok(mut other)) =
                        (abandoned.session.take(), self.pool.acquire().await)
                    {
                        let wait = std::time::Duration::from_secs(10);
                        let _ = super::session::end(&mut other, &session, wait).await;
                    }
                    Err(anyhow::Error::new(e).context("committing"))
                }
            },
            Err(e) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                Err(e)
            }
        };
        abandoned.session = None;
        ended
    }

    pub async fn reader(&self) -> Result<Reader> {
        let conn = self
            .pool
            .acquire()
            .await
            .context("taking a target connection")?;
        Ok(Reader {
            conn: Some(conn),
            again: None,
        })
    }
}

/// Ends a partition's server session from a fresh connection when its
/// attempt is dropped before it finished (see [`Target::write`]).
struct EndOnDrop {
    pool: PgPool,
    session: Option<super::session::Session>,
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let pool = self.pool.clone();
            tokio::spawn(async move {
                if let Ok(mut conn) = pool.acquire().await {
                    let wait = std::time::Duration::from_secs(10);
                    let _ = super::session::end(&mut conn, &session, wait).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]], width: usize) -> Vec<Option<String>> {
        let mut p = CopyText::new(width);
        for c in chunks {
            p.feed(c).unwrap();
        }
        p.end().unwrap();
        (0..p.batch.rows() * width)
            .map(|i| p.batch.value(i).map(str::to_string))
            .collect()
    }

    #[test]
    fn copy_text_parses_across_chunks_with_escapes_and_nulls() {
        let values = parse(&[b"1\ta\\tb\\\\c\\n", b"d\t\\N\n2\t\t\\x41\\101\n"], 3);
        assert_eq!(
            values,
            vec![
                Some("1".into()),
                Some("a\tb\\c\nd".into()),
                None,
                Some("2".into()),
                Some(String::new()),
                Some("AA".into()),
            ]
        );
    }

    #[test]
    fn escaped_values_parse_back_as_they_were() {
        let values = [
            Some("tab\there \\ back\nslash\r".to_string()),
            None,
            Some(String::new()),
        ];
        let mut out = BytesMut::new();
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\t");
            }
            escape_into(&mut out, v.as_deref());
        }
        out.extend_from_slice(b"\n");
        assert_eq!(parse(&[&out], 3), values.to_vec());
    }

    #[test]
    fn created_columns_keep_a_declared_precision() {
        let col = |kind, declared: &str| Column {
            name: "c".into(),
            kind,
            declared: declared.into(),
            not_null: false,
            generated: false,
        };
        assert_eq!(
            declared_for(&col(Kind::Numeric, "DECIMAL(10, 2)")),
            "numeric(10,2)"
        );
        assert_eq!(declared_for(&col(Kind::Numeric, "NUMERIC")), "numeric");
        assert_eq!(declared_for(&col(Kind::Int, "INTEGER")), "bigint");
        assert_eq!(declared_for(&col(Kind::Bool, "BOOLEAN")), "boolean");
    }
}
