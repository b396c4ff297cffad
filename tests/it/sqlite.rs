//! The SQLite engine: real SQLite files in a temporary directory against the
//! real PostgreSQL server of the other tests, in every pair (pg -> sqlite,
//! sqlite -> pg, sqlite -> sqlite). URLs (absolute, relative to the working
//! directory, `?mode=ro`), Spark partitions over INTEGER and ISO-text date and
//! timestamp columns, `plan`, one transaction per partition and resume after
//! SIGKILL, every write mode into a SQLite target, the type mapping both ways
//! and a round trip back into PostgreSQL, verify across engines, and the jobs
//! refused with exit 2 before anything is written.
//!
//! Rows are compared as sorted `Vec<String>` of a canonical text form built in
//! the test: on SQLite `quote()` of every column (which also shows the storage
//! class: `1` is an integer, `'1'` text, `1.5` real, `X'00FF'` a blob), across
//! engines `CAST(c AS TEXT)` (the same text for integers and text on both).

use std::path::Path;
use std::process::Output;

use sqlx::{Connection, SqliteConnection};

use crate::common::*;

/// `sqlite:///abs/path.db` for an absolute path.
fn sqlite_url(path: &Path) -> String {
    assert!(path.is_absolute(), "{}", path.display());
    format!("sqlite://{}", path.display())
}

/// Opens (creating if missing) a SQLite file the way the tests write to it.
async fn sqlite_connect(path: &Path) -> SqliteConnection {
    SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// Runs SQL (several statements allowed) on a SQLite file, creating it if missing.
async fn sqlite_exec(path: &Path, sql: &str) {
    let mut conn = sqlite_connect(path).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("running {sql} on {}: {e}", path.display()));
    conn.close().await.unwrap();
}

/// The first column of every row of `sql` (which must give text) on an
/// existing SQLite file, sorted.
async fn sqlite_rows(path: &Path, sql: &str) -> Vec<String> {
    assert!(path.exists(), "{} does not exist", path.display());
    let mut conn = sqlite_connect(path).await;
    let mut rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("running {sql} on {}: {e}", path.display()));
    conn.close().await.unwrap();
    rows.sort();
    rows
}

/// One integer from an existing SQLite file.
async fn sqlite_i64(path: &Path, sql: &str) -> i64 {
    assert!(path.exists(), "{} does not exist", path.display());
    let mut conn = sqlite_connect(path).await;
    let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("running {sql} on {}: {e}", path.display()));
    conn.close().await.unwrap();
    n
}

/// Whether a SQLite file has a table (or index) of that name.
async fn sqlite_has(path: &Path, name: &str) -> bool {
    sqlite_i64(
        path,
        &format!("SELECT count(*) FROM sqlite_master WHERE name = '{name}'"),
    )
    .await
        > 0
}

/// `name:TYPE:pk` of every column of a SQLite table, in order (the declared
/// type in upper case; pk is the column's position in the primary key, 0 if none).
async fn sqlite_columns(path: &Path, table: &str) -> Vec<String> {
    assert!(path.exists(), "{} does not exist", path.display());
    let mut conn = sqlite_connect(path).await;
    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT name || ':' || upper(type) || ':' || pk FROM pragma_table_info('{table}') ORDER BY cid"
    )))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    rows
}

/// SQLite's `quote()` of each column, joined by `|`: value and storage class.
fn quoted(columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| format!("quote(\"{c}\")"))
        .collect::<Vec<_>>()
        .join(" || '|' || ")
}

/// Each column as text (`NULL` for NULL), joined by `|`: the same expression
/// and the same text on both engines for integer and text columns.
fn canon(columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| format!("coalesce(CAST(\"{c}\" AS TEXT), 'NULL')"))
        .collect::<Vec<_>>()
        .join(" || '|' || ")
}

/// The first column of every row of `sql` (text) on PostgreSQL, sorted, in a
/// session with TimeZone UTC.
async fn pg_rows(db: &TestDb, sql: &str) -> Vec<String> {
    let mut conn = db.conn().await;
    exec(&mut conn, "SET TimeZone = 'UTC'").await;
    let mut rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("running {sql}: {e}"));
    rows.sort();
    rows
}

/// Whether the PostgreSQL database has a relation of that name.
async fn pg_has(db: &TestDb, name: &str) -> bool {
    db.scalar_i64(&format!(
        "SELECT count(*) FROM pg_class WHERE relname = '{name}'"
    ))
    .await
        > 0
}

/// A job file's text: `[source]` with `url` and `source`, then `middle`
/// (other sections), then `[target]` with `url` and `target`.
fn job_toml(
    source_url: &str,
    source: &str,
    middle: &str,
    target_url: &str,
    target: &str,
) -> String {
    format!(
        "[source]\nurl = \"{source_url}\"\n{source}\n{middle}\n[target]\nurl = \"{target_url}\"\n{target}\n"
    )
}

/// Runs the built binary in `dir` (for relative `sqlite://` URLs).
fn stride_in(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_stride"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("the stride binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The rows column of the summary's partition table, partition by partition.
fn summary_rows(out: &Output) -> Vec<u64> {
    stdout(out)
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("partition  range"))
        .skip(1)
        .map_while(|line| {
            line.split_whitespace().next()?.parse::<usize>().ok()?;
            let (before, _) = line.split_once(" s  ")?;
            let columns: Vec<&str> = before.split_whitespace().collect();
            columns[columns.len() - 2].replace(',', "").parse().ok()
        })
        .collect()
}

/// Postgres `items (id bigint PRIMARY KEY, name text, qty integer)` with ids
/// `1..=rows`, a NULL name every 10th row.
async fn seed_pg_items(db: &TestDb, rows: i64) {
    db.exec(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty integer);
         INSERT INTO items SELECT g, CASE WHEN g % 10 = 0 THEN NULL ELSE 'item ' || g END, g % 97
         FROM generate_series(1, {rows}) g;"
    ))
    .await;
}

const ITEMS: &[&str] = &["id", "name", "qty"];

/// The canonical rows of `items` in Postgres (optionally filtered).
async fn pg_items(db: &TestDb, filter: &str) -> Vec<String> {
    pg_rows(db, &format!("SELECT {} FROM items {filter}", canon(ITEMS))).await
}

/// The canonical rows of `items` in a SQLite file (optionally filtered).
async fn sqlite_items(path: &Path, filter: &str) -> Vec<String> {
    sqlite_rows(
        path,
        &format!("SELECT {} FROM items {filter}", canon(ITEMS)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_to_sqlite_creates_the_file_and_the_table_with_its_key_and_copies_each_row_once() {
    let source = TestDb::new("sqlite_pg_to_file").await;
    seed_pg_items(&source, 5000).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("copy.db");
    // The bounds cover only part of the ids: they never filter.
    let job = job_file(&job_toml(
        &source.url,
        "table = \"items\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1000\nupper_bound = 3000\ncount = 4\n[run]\nparallelism = 2",
        &sqlite_url(&file),
        "table = \"items\"",
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("partitions 4 written of 4"),
        "{}",
        text(&out)
    );
    assert!(stdout(&out).contains("rows 5,000"), "{}", text(&out));
    // One line as each partition commits, as for PostgreSQL.
    assert_eq!(
        stderr(&out).matches("partition written").count(),
        4,
        "{}",
        text(&out)
    );
    assert!(file.exists(), "the target file was not created");
    assert_eq!(
        sqlite_columns(&file, "items").await,
        ["id:INTEGER:1", "name:TEXT:0", "qty:INTEGER:0"]
    );
    let expected = pg_items(&source, "").await;
    assert_eq!(expected.len(), 5000);
    assert_eq!(sqlite_items(&file, "").await, expected);
    // Integers are stored as integers, not as their text.
    assert_eq!(
        sqlite_i64(
            &file,
            "SELECT count(*) FROM items WHERE typeof(id) = 'integer' AND typeof(qty) = 'integer'"
        )
        .await,
        5000
    );
    assert!(
        sqlite_has(&file, "stride_checkpoints").await,
        "no checkpoint table in the target file"
    );
    // A key of two columns, in the key's order (not the columns').
    source
        .exec(
            "CREATE TABLE orders (note text, region text, id bigint, PRIMARY KEY (region, id));
             INSERT INTO orders SELECT 'n' || g, 'r' || (g % 3), g FROM generate_series(1, 100) g;",
        )
        .await;
    let orders = job_file(&job_toml(
        &source.url,
        "table = \"orders\"",
        "",
        &sqlite_url(&file),
        "table = \"orders\"",
    ));
    assert_exit(&run_job(&orders.path), 0);
    assert_eq!(
        sqlite_columns(&file, "orders").await,
        ["note:TEXT:0", "region:TEXT:1", "id:INTEGER:2"]
    );
    let order_rows = format!("SELECT {} FROM orders", canon(&["note", "region", "id"]));
    assert_eq!(
        sqlite_rows(&file, &order_rows).await,
        pg_rows(&source, &order_rows).await
    );

    // A finished append job is not run twice.
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert_eq!(sqlite_items(&file, "").await, expected, "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_pg_integer_partitions_take_every_row_once_with_columns_where_limit_and_query() {
    let target = TestDb::new("sqlite_file_to_pg").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.db");
    // ids 1..=2000 inside the bounds, 5 below, 10 above, 3 NULL.
    sqlite_exec(
        &file,
        "CREATE TABLE events (id INTEGER, kind TEXT, amount INTEGER);
         WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 2000)
         INSERT INTO events SELECT x, 'kind ' || (x % 7), x * 3 FROM g;
         INSERT INTO events VALUES (-5, 'low', 1), (-4, 'low', 2), (-3, NULL, 3), (-2, 'low', NULL), (-1, 'low', 5);
         WITH RECURSIVE g(x) AS (SELECT 5000 UNION ALL SELECT x + 1 FROM g WHERE x < 5009)
         INSERT INTO events SELECT x, 'high', x FROM g;
         INSERT INTO events VALUES (NULL, 'null a', 1), (NULL, 'null b', 2), (NULL, NULL, NULL);",
    )
    .await;
    let events_cols = ["id", "kind", "amount"];
    let events_rows = format!("SELECT {} FROM events", canon(&events_cols));
    let expected_events = sqlite_rows(&file, &events_rows).await;
    assert_eq!(expected_events.len(), 2018);
    let events_job = job_file(&job_toml(
        &sqlite_url(&file),
        "table = \"events\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 2001\ncount = 4\n[run]\nparallelism = 2",
        &target.url,
        "table = \"events\"",
    ));
    let out = run_job(&events_job.path);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("partitions 4 written of 4"),
        "{}",
        text(&out)
    );
    assert!(stdout(&out).contains("rows 2,018"), "{}", text(&out));
    // NULLs and ids below the bounds in the first partition, those above in the last.
    assert_eq!(summary_rows(&out), [508, 500, 500, 510], "{}", text(&out));
    assert_eq!(pg_rows(&target, &events_rows).await, expected_events);
    assert!(pg_has(&target, "stride_checkpoints").await);

    // The rest of [source] on a SQLite source: some columns, a condition and a
    // limit (the first rows by the partition column)...
    let job = job_file(&job_toml(
        &sqlite_url(&file),
        "table = \"events\"\ncolumns = [\"id\", \"amount\"]\nwhere = \"id IS NOT NULL AND id % 2 = 0\"\nlimit = 100",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 2001\ncount = 4",
        &target.url,
        "table = \"sliced\"",
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    let cols = ["id", "amount"];
    let expected = sqlite_rows(
        &file,
        &format!(
            "SELECT {} FROM (SELECT id, amount FROM events WHERE id IS NOT NULL AND id % 2 = 0 ORDER BY id LIMIT 100)",
            canon(&cols)
        ),
    )
    .await;
    assert_eq!(expected.len(), 100);
    assert!(expected.contains(&"-4|2".to_string()) && expected.contains(&"196|588".to_string()));
    assert_eq!(
        pg_rows(&target, &format!("SELECT {} FROM sliced", canon(&cols))).await,
        expected,
        "{}",
        text(&out)
    );
    assert_eq!(
        pg_rows(
            &target,
            "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'sliced'"
        )
        .await,
        ["amount", "id"]
    );
    // ...and a query, partitioned with bounds read from it.
    let job = job_file(&job_toml(
        &sqlite_url(&file),
        "query = \"SELECT id, kind FROM events WHERE kind LIKE 'kind %' OR kind IS NULL\"",
        "[partition]\ncolumn = \"id\"\ncount = 3",
        &target.url,
        "table = \"from_query\"",
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    let cols = ["id", "kind"];
    let expected = sqlite_rows(
        &file,
        &format!(
            "SELECT {} FROM events WHERE kind LIKE 'kind %' OR kind IS NULL",
            canon(&cols)
        ),
    )
    .await;
    assert_eq!(expected.len(), 2002);
    assert_eq!(
        pg_rows(&target, &format!("SELECT {} FROM from_query", canon(&cols))).await,
        expected,
        "{}",
        text(&out)
    );

    // A finished append job is not run twice: the rows are there once.
    let out = run_job(&events_job.path);
    assert_exit(&out, 0);
    assert!(
        pg_rows(&target, &events_rows).await == expected_events,
        "the second run of a finished append job changed the target ({} rows now)\n{}",
        target.count("events").await,
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_sqlite_by_date_timestamp_and_datetime_with_relative_urls_and_mode_ro() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let source = dir.path().join("data").join("readings.db");
    // 1,000 rows spread over January and February 2024, rows outside every
    // bound, a NULL in each partition column and values on a boundary.
    sqlite_exec(
        &source,
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, d DATE, ts TIMESTAMP, dt DATETIME, v TEXT);
         WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 1000)
         INSERT INTO readings SELECT x,
           date('2024-01-01', '+' || (x % 60) || ' days'),
           datetime('2024-01-01 00:00:00', '+' || (x * 83) || ' minutes'),
           datetime('2024-01-01 00:00:00', '+' || (x * 4999) || ' seconds'),
           'reading ' || x FROM g;
         INSERT INTO readings VALUES
           (1001, '1999-12-31', '1999-12-31 23:59:59', '1999-12-31 23:59:59', 'early'),
           (1002, '2031-01-01', '2031-01-01 00:00:00', '2031-01-01 00:00:00', 'late'),
           (1003, NULL, NULL, NULL, 'nulls'),
           (1004, NULL, '2024-01-02 03:04:05', NULL, 'some nulls'),
           (1005, '2024-01-26', '2024-01-14 07:12:00', '2024-01-14 07:12:00', 'on a boundary');",
    )
    .await;
    let cols = ["id", "d", "ts", "dt", "v"];
    let expected = sqlite_rows(&source, &format!("SELECT {} FROM readings", quoted(&cols))).await;
    assert_eq!(expected.len(), 1005);

    // Each case with the conditions its partitions stand for: 31 days in 4
    // parts of 8, 8, 8 and 7 days; 46.5 days in 5 parts of 9 days 7:12:00.
    let cases: [(&str, &str, &[&str]); 3] = [
        (
            "by_d",
            "column = \"d\"\nlower_bound = \"2024-01-10\"\nupper_bound = \"2024-02-10\"\ncount = 4",
            &[
                "d < '2024-01-18' OR d IS NULL",
                "d >= '2024-01-18' AND d < '2024-01-26'",
                "d >= '2024-01-26' AND d < '2024-02-03'",
                "d >= '2024-02-03'",
            ],
        ),
        (
            "by_ts",
            "column = \"ts\"\nlower_bound = \"2024-01-05 00:00:00\"\nupper_bound = \"2024-02-20 12:00:00\"\ncount = 5",
            &[
                "ts < '2024-01-14 07:12:00' OR ts IS NULL",
                "ts >= '2024-01-14 07:12:00' AND ts < '2024-01-23 14:24:00'",
                "ts >= '2024-01-23 14:24:00' AND ts < '2024-02-01 21:36:00'",
                "ts >= '2024-02-01 21:36:00' AND ts < '2024-02-11 04:48:00'",
                "ts >= '2024-02-11 04:48:00'",
            ],
        ),
        // No bounds: read as min() and max() from the source.
        ("by_dt", "column = \"dt\"\ncount = 3", &[]),
    ];
    let mut partition_counts = Vec::new();
    for (_, _, conditions) in &cases {
        let mut counts = Vec::new();
        for condition in conditions.iter() {
            let sql = format!("SELECT count(*) FROM readings WHERE {condition}");
            counts.push(sqlite_i64(&source, &sql).await as u64);
        }
        partition_counts.push(counts);
    }
    let before = std::fs::read(&source).unwrap();
    for ((table, partition, _), counts) in cases.into_iter().zip(partition_counts) {
        // Both URLs relative to the working directory; the source read-only.
        let job_path = dir.path().join(format!("{table}.toml"));
        std::fs::write(
            &job_path,
            job_toml(
                "sqlite://data/readings.db?mode=ro",
                "table = \"readings\"",
                &format!("[partition]\n{partition}\n[run]\nparallelism = 2"),
                "sqlite://copies.db",
                &format!("table = \"{table}\""),
            ),
        )
        .unwrap();
        let out = stride_in(dir.path(), &["run", job_path.to_str().unwrap()]);
        assert_exit(&out, 0);
        assert!(
            stdout(&out).contains("rows 1,005"),
            "{table}: {}",
            text(&out)
        );
        if !counts.is_empty() {
            assert_eq!(summary_rows(&out), counts, "{table}: {}", text(&out));
        }
        let copies = dir.path().join("copies.db");
        assert_eq!(
            sqlite_rows(
                &copies,
                &format!("SELECT {} FROM \"{table}\"", quoted(&cols))
            )
            .await,
            expected,
            "{table}"
        );
    }
    assert!(
        !Path::new("copies.db").exists(),
        "the relative target went to the test's working directory"
    );
    // A finished append job is not run twice: the rows are there once.
    let out = stride_in(
        dir.path(),
        &["run", dir.path().join("by_d.toml").to_str().unwrap()],
    );
    assert_exit(&out, 0);
    assert_eq!(
        sqlite_rows(
            &dir.path().join("copies.db"),
            &format!("SELECT {} FROM by_d", quoted(&cols))
        )
        .await,
        expected,
        "the second run of a finished append job changed the target\n{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(&source).unwrap(),
        before,
        "the read-only source file changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_prints_each_partitions_sql_for_a_sqlite_source_and_writes_nothing() {
    let target = TestDb::new("sqlite_plan").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.db");
    sqlite_exec(
        &file,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, d DATE, name TEXT);
         WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 400)
         INSERT INTO items SELECT x, date('2024-01-01', '+' || x || ' days'), 'n' || x FROM g;",
    )
    .await;
    let before = std::fs::read(&file).unwrap();
    for (column, bounds) in [
        ("id", "lower_bound = 0\nupper_bound = 400"),
        (
            "d",
            "lower_bound = \"2024-01-01\"\nupper_bound = \"2025-01-01\"",
        ),
    ] {
        let job = job_file(&job_toml(
            &sqlite_url(&file),
            "table = \"items\"",
            &format!("[partition]\ncolumn = \"{column}\"\n{bounds}\ncount = 4"),
            &target.url,
            "table = \"items\"",
        ));
        let out = stride(&["plan", job.path.to_str().unwrap()], &[]);
        assert_exit(&out, 0);
        let plan = stdout(&out);
        // Partitions 1 to 3 have a lower end, 0 to 2 an upper one.
        let ge = format!("\"{column}\" >= ");
        let lt = format!("\"{column}\" < ");
        assert!(plan.matches(&ge).count() >= 3, "{column}: {}", text(&out));
        assert!(plan.matches(&lt).count() >= 3, "{column}: {}", text(&out));
    }
    assert!(!pg_has(&target, "items").await, "plan created the target");
    assert!(!pg_has(&target, "stride_checkpoints").await);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "plan wrote the source"
    );
}

/// Rows of the kill-and-resume test and its partitions: partition `k` holds ids
/// `k * WIDTH + 1 ..= (k + 1) * WIDTH`.
const BIG_ROWS: i64 = 200_000;
const BIG_PARTITIONS: i64 = 8;
const WIDTH: i64 = BIG_ROWS / BIG_PARTITIONS;

/// Each partition's id range holds all of its rows or none: a partition and its
/// checkpoint commit together. Returns how many are whole.
fn whole_partitions(counts: &[i64], context: &str) -> usize {
    for (k, &n) in counts.iter().enumerate() {
        assert!(
            n == 0 || n == WIDTH,
            "partition {k} holds {n} rows after the kill, neither 0 nor {WIDTH}\n{context}"
        );
    }
    counts.iter().filter(|&&n| n == WIDTH).count()
}

/// The SQL counting the rows of each partition's range in `big`.
fn partition_counts_sql(k: i64) -> String {
    let lo = k * WIDTH + 1;
    format!(
        "SELECT count(*) FROM big WHERE id BETWEEN {lo} AND {}",
        lo + WIDTH - 1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_after_its_first_partition_resumes_without_losing_or_doubling_rows() {
    let partition = format!(
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = {}\ncount = {BIG_PARTITIONS}\n[run]\nparallelism = 2",
        BIG_ROWS + 1
    );
    let cols = ["id", "pad"];

    // Postgres -> SQLite: the checkpoints are in the target file.
    let pg = TestDb::new("sqlite_kill_pg_src").await;
    pg.exec(&format!(
        "CREATE TABLE big (id bigint PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, {BIG_ROWS}) g;"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.db");
    let to_sqlite = job_file(&job_toml(
        &pg.url,
        "table = \"big\"",
        &partition,
        &sqlite_url(&file),
        "table = \"big\"",
    ));
    let out = Running::start(&["run", to_sqlite.path.to_str().unwrap()])
        .wait_for_line("partition written");
    out.signal("KILL");
    let out = out.finish();
    assert_eq!(
        out.status.code(),
        None,
        "the run ended before the kill\n{}",
        text(&out)
    );
    let mut counts = Vec::new();
    for k in 0..BIG_PARTITIONS {
        counts.push(sqlite_i64(&file, &partition_counts_sql(k)).await);
    }
    let whole = whole_partitions(&counts, &text(&out));
    assert!(whole >= 1, "the first written partition is not in the file");
    assert!(
        sqlite_has(&file, "stride_checkpoints").await,
        "no checkpoint table in the target file"
    );
    let out = run_job(&to_sqlite.path);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("skipped: committed by an earlier run"),
        "{}",
        text(&out)
    );
    let expected = pg_rows(&pg, &format!("SELECT {} FROM big", canon(&cols))).await;
    assert_eq!(expected.len() as i64, BIG_ROWS);
    assert!(
        sqlite_rows(&file, &format!("SELECT {} FROM big", canon(&cols))).await == expected,
        "pg -> sqlite: the target's rows are not the source's after the resume"
    );

    // SQLite -> Postgres: the same file is now the source.
    let target = TestDb::new("sqlite_kill_pg_dst").await;
    let to_pg = job_file(&job_toml(
        &sqlite_url(&file),
        "table = \"big\"",
        &partition,
        &target.url,
        "table = \"big\"",
    ));
    let out =
        Running::start(&["run", to_pg.path.to_str().unwrap()]).wait_for_line("partition written");
    out.signal("KILL");
    let out = out.finish();
    assert_eq!(
        out.status.code(),
        None,
        "the run ended before the kill\n{}",
        text(&out)
    );
    let mut counts = Vec::new();
    for k in 0..BIG_PARTITIONS {
        counts.push(target.scalar_i64(&partition_counts_sql(k)).await);
    }
    assert!(whole_partitions(&counts, &text(&out)) >= 1);
    let out = run_job(&to_pg.path);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("skipped: committed by an earlier run"),
        "{}",
        text(&out)
    );
    assert!(
        pg_rows(&target, &format!("SELECT {} FROM big", canon(&cols))).await == expected,
        "sqlite -> pg: the target's rows are not the source's after the resume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_and_truncate_into_an_existing_sqlite_table() {
    let source = TestDb::new("sqlite_append").await;
    seed_pg_items(&source, 200).await;
    let expected = pg_items(&source, "").await;
    let dir = tempfile::tempdir().unwrap();
    let schema = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);
                  INSERT INTO items VALUES (10001, 'mine', 1), (10002, NULL, 2), (10003, 'mine', NULL);";
    let own = ["10001|mine|1", "10002|NULL|2", "10003|mine|NULL"];

    // append (the default) adds the source's rows to the target's own.
    let appended = dir.path().join("append.db");
    sqlite_exec(&appended, schema).await;
    let job_append = job_file(&job_toml(
        &source.url,
        "table = \"items\"",
        "[partition]\ncolumn = \"id\"\ncount = 3",
        &sqlite_url(&appended),
        "table = \"items\"",
    ));
    assert_exit(&run_job(&job_append.path), 0);
    assert_eq!(sqlite_items(&appended, "WHERE id <= 10000").await, expected);
    assert_eq!(sqlite_items(&appended, "WHERE id > 10000").await, own);

    // truncate empties it first: only the source's rows are left.
    let truncated = dir.path().join("truncate.db");
    sqlite_exec(&truncated, schema).await;
    sqlite_exec(
        &truncated,
        "INSERT INTO items VALUES (1, 'stale', -1), (2, 'stale', -1);",
    )
    .await;
    let job_truncate = job_file(&job_toml(
        &source.url,
        "table = \"items\"",
        "[partition]\ncolumn = \"id\"\ncount = 3",
        &sqlite_url(&truncated),
        "table = \"items\"\nmode = \"truncate\"",
    ));
    assert_exit(&run_job(&job_truncate.path), 0);
    assert_eq!(sqlite_items(&truncated, "").await, expected);
    // Run again: emptied again, the same rows once.
    source
        .exec("UPDATE items SET qty = 1000 WHERE id = 7")
        .await;
    assert_exit(&run_job(&job_truncate.path), 0);
    assert_eq!(
        sqlite_items(&truncated, "").await,
        pg_items(&source, "").await
    );
    assert!(sqlite_items(&truncated, "")
        .await
        .contains(&"7|item 7|1000".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_into_sqlite_updates_existing_keys_inserts_new_ones_and_keeps_the_targets_own() {
    let source = TestDb::new("sqlite_upsert").await;
    seed_pg_items(&source, 300).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upsert.db");
    sqlite_exec(
        &file,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);
         WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 100)
         INSERT INTO items SELECT x, 'stale ' || x, -1 FROM g;
         INSERT INTO items VALUES (10001, 'mine', 1), (10002, 'mine', 2);",
    )
    .await;
    let job = job_file(&job_toml(
        &source.url,
        "table = \"items\"",
        "[partition]\ncolumn = \"id\"\ncount = 3",
        &sqlite_url(&file),
        "table = \"items\"\nmode = \"upsert\"\nkey = [\"id\"]",
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("rows 300"), "{}", text(&out));
    assert_eq!(
        sqlite_items(&file, "WHERE id <= 10000").await,
        pg_items(&source, "").await
    );
    assert_eq!(
        sqlite_items(&file, "WHERE id > 10000").await,
        ["10001|mine|1", "10002|mine|2"]
    );
    // Run again after the source changed: it syncs again.
    source
        .exec("UPDATE items SET name = 'renamed' WHERE id % 50 = 0; INSERT INTO items VALUES (400, 'new', 4);")
        .await;
    assert_exit(&run_job(&job.path), 0);
    let expected = pg_items(&source, "").await;
    assert_eq!(expected.len(), 301);
    assert_eq!(sqlite_items(&file, "WHERE id <= 10000").await, expected);
    assert_eq!(sqlite_i64(&file, "SELECT count(*) FROM items").await, 303);

    // Into a missing table: created with the key as its primary key.
    let created = dir.path().join("created.db");
    let job = job_file(&job_toml(
        &source.url,
        "table = \"items\"",
        "",
        &sqlite_url(&created),
        "table = \"items\"\nmode = \"upsert\"\nkey = [\"id\"]",
    ));
    assert_exit(&run_job(&job.path), 0);
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(sqlite_items(&created, "").await, expected);
    assert_eq!(
        sqlite_columns(&created, "items").await,
        ["id:INTEGER:1", "name:TEXT:0", "qty:INTEGER:0"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_leaves_only_the_sources_rows_and_keeps_the_sqlite_tables_index() {
    let source = TestDb::new("sqlite_replace").await;
    seed_pg_items(&source, 500).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replace.db");
    sqlite_exec(
        &file,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);
         CREATE INDEX items_by_name ON items (name);
         INSERT INTO items VALUES (1, 'stale', -1), (10001, 'mine', 1);",
    )
    .await;
    let job = job_file(&job_toml(
        &source.url,
        "table = \"items\"",
        "[partition]\ncolumn = \"id\"\ncount = 4",
        &sqlite_url(&file),
        "table = \"items\"\nmode = \"replace\"",
    ));
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(sqlite_items(&file, "").await, pg_items(&source, "").await);
    // As for PostgreSQL, the new rows take the old table's place with its
    // indexes (checked at the end, so the rows are checked either way).
    let index_kept = sqlite_has(&file, "items_by_name").await;
    let stage_tables = "SELECT count(*) FROM sqlite_master WHERE name LIKE '%stride_stage%'";
    assert_eq!(
        sqlite_i64(&file, stage_tables).await,
        0,
        "a staging table was left behind"
    );
    // A finished replace job runs afresh.
    source.exec("DELETE FROM items WHERE id > 400").await;
    assert_exit(&run_job(&job.path), 0);
    let expected = pg_items(&source, "").await;
    assert_eq!(expected.len(), 400);
    assert_eq!(sqlite_items(&file, "").await, expected);
    assert_eq!(sqlite_i64(&file, stage_tables).await, 0);
    assert!(
        index_kept,
        "replace lost the target's index items_by_name; the file holds:\n{:#?}",
        sqlite_rows(
            &file,
            "SELECT type || ' ' || name || ': ' || coalesce(sql, '') FROM sqlite_master"
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_creates_the_sqlite_table_again_from_the_sources_columns() {
    let source = TestDb::new("sqlite_overwrite").await;
    seed_pg_items(&source, 500).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("overwrite.db");
    sqlite_exec(
        &file,
        "CREATE TABLE items (id INTEGER, name TEXT, qty TEXT, extra TEXT);
         INSERT INTO items VALUES (1, 'stale', 'x', 'e'), (10001, 'mine', '1', 'e');",
    )
    .await;
    let job = job_file(&job_toml(
        &source.url,
        "table = \"items\"",
        "[partition]\ncolumn = \"id\"\ncount = 4",
        &sqlite_url(&file),
        "table = \"items\"\nmode = \"overwrite\"",
    ));
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(
        sqlite_columns(&file, "items").await,
        ["id:INTEGER:1", "name:TEXT:0", "qty:INTEGER:0"]
    );
    assert_eq!(sqlite_items(&file, "").await, pg_items(&source, "").await);
    assert_eq!(
        sqlite_i64(
            &file,
            "SELECT count(*) FROM items WHERE typeof(qty) <> 'integer'"
        )
        .await,
        0
    );
    // A finished overwrite job runs afresh.
    source.exec("DELETE FROM items WHERE id > 400").await;
    assert_exit(&run_job(&job.path), 0);
    let expected = pg_items(&source, "").await;
    assert_eq!(expected.len(), 400);
    assert_eq!(sqlite_items(&file, "").await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_if_exists_refuses_a_sqlite_table_with_rows_and_fills_an_empty_one() {
    let source = TestDb::new("sqlite_eie").await;
    seed_pg_items(&source, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eie.db");
    sqlite_exec(
        &file,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);
         INSERT INTO items VALUES (10001, 'mine', 1);",
    )
    .await;
    let job = job_file(&job_toml(
        &source.url,
        "table = \"items\"",
        "[partition]\ncolumn = \"id\"\ncount = 2",
        &sqlite_url(&file),
        "table = \"items\"\nmode = \"error-if-exists\"",
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("target.mode"), "{}", text(&out));
    assert_eq!(sqlite_items(&file, "").await, ["10001|mine|1"]);
    // As for PostgreSQL: refused before anything is written, the checkpoint
    // table included (checked at the end, so the rest is checked either way).
    let checkpoints_after_refusal = sqlite_has(&file, "stride_checkpoints").await;
    // An empty table is filled.
    sqlite_exec(&file, "DELETE FROM items").await;
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(sqlite_items(&file, "").await, pg_items(&source, "").await);
    assert!(
        !checkpoints_after_refusal,
        "the refused run created the checkpoint table stride_checkpoints in the target file"
    );
}

/// Postgres `t` with one column of each type and five rows of edge values.
const ALL_TYPES: &str = r#"
CREATE TABLE t (
  id bigint PRIMARY KEY, s smallint, i integer, b bigint, r real, d double precision,
  n numeric, m numeric(12,2), bo boolean, by bytea, da date, ts timestamp, tz timestamptz,
  tx text, vc varchar(20), u uuid, j json, jb jsonb, ai integer[], at text[], iv interval
);
INSERT INTO t (id) VALUES (1);
INSERT INTO t VALUES
 (2, -32768, -2147483648, -9223372036854775808, 'NaN', 'NaN', 1.50, 1.50, true, '\x00ff',
  '2024-01-02', '2024-01-02 03:04:05.123456', '2024-01-02 05:04:05+02', '', '',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}', '{"b": 1, "a": "x"}',
  '{1,NULL,3}', '{a,"b c","d\"e"}', '1 day 02:00:00'),
 (3, 32767, 2147483647, 9223372036854775807, 'Infinity', '-Infinity', -0.000001, -12.25, false, '\x',
  '1999-12-31', '2024-01-02 03:04:05', '2024-01-02 03:04:05+00', 'ünïcødé 🎉', 'back\slash',
  '00000000-0000-0000-0000-000000000000', '[]', '{}', '{}', '{}', '-00:00:01'),
 (4, 0, 0, 0, '-Infinity', 'Infinity', 12345678901234567890.123, 0.00, true, '\x000102fffe',
  '2024-02-29', '2000-01-01 00:00:00.5', '1970-01-01 00:00:00+00', E'tab\there\nnewline \\ backslash', 'x',
  NULL, 'null', '[1, "two", null]', '{-1}', '{""}', '3 mons'),
 (5, 1, 1, 1, 1.5, 0.1, 0, 1, false, '\x00', '2024-01-02', '2024-01-02 00:00:00', '2024-06-30 23:59:59.25-07',
  '|', 'NULL', NULL, '"s"', '1.5', NULL, '{NULL}', '00:00:00');
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_types_become_these_sqlite_declared_types_and_values() {
    let source = TestDb::new("sqlite_types_out").await;
    source.exec(ALL_TYPES).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("types.db");
    let job = job_file(&job_toml(
        &source.url,
        "table = \"t\"",
        "[partition]\ncolumn = \"id\"\ncount = 2",
        &sqlite_url(&file),
        "table = \"t\"",
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert_eq!(
        sqlite_columns(&file, "t").await,
        [
            "id:INTEGER:1",
            "s:INTEGER:0",
            "i:INTEGER:0",
            "b:INTEGER:0",
            "r:REAL:0",
            "d:REAL:0",
            "n:TEXT:0",
            "m:TEXT:0",
            "bo:BOOLEAN:0",
            "by:BLOB:0",
            "da:DATE:0",
            "ts:TIMESTAMP:0",
            "tz:TIMESTAMPTZ:0",
            "tx:TEXT:0",
            "vc:TEXT:0",
            "u:TEXT:0",
            "j:TEXT:0",
            "jb:TEXT:0",
            "ai:TEXT:0",
            "at:TEXT:0",
            "iv:TEXT:0",
        ]
    );
    let cols = [
        "id", "s", "i", "b", "r", "d", "n", "m", "bo", "by", "da", "ts", "tz", "tx", "vc", "u",
        "j", "jb", "ai", "at", "iv",
    ];
    // The expected rows as SQLite literals of the expected storage class
    // (9e999 is SQLite's infinity), quoted by the same SQLite.
    let expected_values = r#"VALUES
 (1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (2, -32768, -2147483648, -9223372036854775807 - 1, 'NaN', 'NaN', '1.50', '1.50', 1, X'00FF',
  '2024-01-02', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05+00', '', '',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}', '{"a": "x", "b": 1}',
  '{1,NULL,3}', '{a,"b c","d\"e"}', '1 day 02:00:00'),
 (3, 32767, 2147483647, 9223372036854775807, 9e999, -9e999, '-0.000001', '-12.25', 0, X'',
  '1999-12-31', '2024-01-02 03:04:05', '2024-01-02 03:04:05+00', 'ünïcødé 🎉', 'back\slash',
  '00000000-0000-0000-0000-000000000000', '[]', '{}', '{}', '{}', '-00:00:01'),
 (4, 0, 0, 0, -9e999, 9e999, '12345678901234567890.123', '0.00', 1, X'000102FFFE',
  '2024-02-29', '2000-01-01 00:00:00.5', '1970-01-01 00:00:00+00',
  'tab' || char(9) || 'here' || char(10) || 'newline \ backslash', 'x',
  NULL, 'null', '[1, "two", null]', '{-1}', '{""}', '3 mons'),
 (5, 1, 1, 1, 1.5, 0.1, '0', '1.00', 0, X'00', '2024-01-02', '2024-01-02 00:00:00',
  '2024-07-01 06:59:59.25+00', '|', 'NULL', NULL, '"s"', '1.5', NULL, '{NULL}', '00:00:00')"#;
    let positional: Vec<String> = (1..=cols.len()).map(|k| format!("column{k}")).collect();
    let positional: Vec<&str> = positional.iter().map(String::as_str).collect();
    let expected = sqlite_rows(
        &file,
        &format!("SELECT {} FROM ({expected_values})", quoted(&positional)),
    )
    .await;
    assert_eq!(expected.len(), 5);
    let got = sqlite_rows(&file, &format!("SELECT {} FROM t", quoted(&cols))).await;
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e, "a row differs (all rows: {got:#?})");
    }
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_declared_types_become_these_postgres_types_and_values() {
    let target = TestDb::new("sqlite_types_in").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("declared.db");
    sqlite_exec(
        &file,
        "CREATE TABLE src (id INTEGER PRIMARY KEY, r REAL, bo BOOLEAN, bl BLOB, da DATE,
           ts TIMESTAMP, dt DATETIME, tz TIMESTAMPTZ, nu NUMERIC, de DECIMAL(10,2),
           vc VARCHAR(20), tx TEXT, js JSON, misc);
         INSERT INTO src VALUES
          (1, 1.5, 1, X'00FF', '2024-01-02', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05',
           '2024-01-02 03:04:05+00', 7, 12.25, 'v', 'ünïcødé 🎉', '{\"a\": 1}', 5),
          (2, -0.25, 0, X'', '1999-12-31', '1999-12-31 23:59:59', '2000-01-01 00:00:00',
           '2024-01-02 05:04:05+02', 1.5, -3.75, '', 'tab' || char(9) || 'nl' || char(10) || 'end',
           '[]', 'five'),
          (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    )
    .await;
    let job = job_file(&job_toml(
        &sqlite_url(&file),
        "table = \"src\"",
        "[partition]\ncolumn = \"id\"\ncount = 2",
        &target.url,
        "table = \"src\"",
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    let types = pg_rows(
        &target,
        "SELECT lpad(ordinal_position::text, 2, '0') || ' ' || column_name || ':' || data_type
         FROM information_schema.columns WHERE table_name = 'src'",
    )
    .await;
    assert_eq!(
        types,
        [
            "01 id:bigint",
            "02 r:double precision",
            "03 bo:boolean",
            "04 bl:bytea",
            "05 da:date",
            "06 ts:timestamp without time zone",
            "07 dt:timestamp without time zone",
            "08 tz:timestamp with time zone",
            "09 nu:numeric",
            "10 de:numeric",
            "11 vc:text",
            "12 tx:text",
            "13 js:text",
            "14 misc:text",
        ]
    );
    // The source's primary key came along.
    assert_eq!(
        target
            .scalar_string(
                "SELECT coalesce(string_agg(a.attname::text, ','), 'none') FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                 WHERE i.indrelid = 'src'::regclass AND i.indisprimary"
            )
            .await,
        "id"
    );
    let cols = [
        "id", "r", "bo", "bl", "da", "ts", "dt", "tz", "nu", "de", "vc", "tx", "js", "misc",
    ];
    assert_eq!(
        pg_rows(&target, &format!("SELECT {} FROM src", canon(&cols))).await,
        [
            "1|1.5|true|\\x00ff|2024-01-02|2024-01-02 03:04:05.123456|2024-01-02 03:04:05|2024-01-02 03:04:05+00|7|12.25|v|ünïcødé 🎉|{\"a\": 1}|5",
            "2|-0.25|false|\\x|1999-12-31|1999-12-31 23:59:59|2000-01-01 00:00:00|2024-01-02 03:04:05+00|1.5|-3.75||tab\tnl\nend|[]|five",
            "3|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_types_round_trip_pg_to_sqlite_to_pg_with_equal_checksums() {
    let pair = Pair::new("sqlite_round_trip").await;
    pair.source.exec(ALL_TYPES).await;
    // The way back goes into an existing empty table with the original types.
    pair.target.exec(ALL_TYPES).await;
    pair.target.exec("DELETE FROM t").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trip.db");
    let there = job_file(&job_toml(
        &pair.source.url,
        "table = \"t\"",
        "[partition]\ncolumn = \"id\"\ncount = 3",
        &sqlite_url(&file),
        "table = \"t\"",
    ));
    assert_exit(&run_job(&there.path), 0);
    let back = job_file(&job_toml(
        &sqlite_url(&file),
        "table = \"t\"",
        "[partition]\ncolumn = \"id\"\ncount = 3",
        &pair.target.url,
        "table = \"t\"\ncreate = \"never\"",
    ));
    let out = run_job(&back.path);
    assert_exit(&out, 0);
    assert_eq!(pair.assert_same("t", "t").await, 5, "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_across_engines_and_fails_after_a_value_changes() {
    let pair = Pair::new("sqlite_verify").await;
    pair.source
        .exec(
            "CREATE TABLE v (id bigint PRIMARY KEY, name text, price numeric(10,2), ok boolean,
               x double precision, at timestamp, day date, raw bytea);
             INSERT INTO v SELECT g, CASE WHEN g % 9 = 0 THEN NULL ELSE 'name ' || g END,
               g * 1.25, g % 2 = 0, g / 8.0, '2024-01-01'::timestamp + g * interval '1 minute 0.5 second',
               '2024-01-01'::date + g % 100, decode(lpad(to_hex(g), 8, '0'), 'hex')
             FROM generate_series(1, 2000) g;",
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("verify.db");
    let to_sqlite = job_file(&job_toml(
        &pair.source.url,
        "table = \"v\"",
        "[partition]\ncolumn = \"id\"\ncount = 4\n[run]\nverify = \"checksum\"",
        &sqlite_url(&file),
        "table = \"v\"",
    ));
    let out = run_job(&to_sqlite.path);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("4 of 4 partitions match"),
        "{}",
        text(&out)
    );
    let path = to_sqlite.path.to_str().unwrap();
    let out = stride(&["verify", path], &[]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("4 of 4 partitions match"),
        "{}",
        text(&out)
    );

    // And back into PostgreSQL, verified the same way.
    let to_pg = job_file(&job_toml(
        &sqlite_url(&file),
        "table = \"v\"",
        "[partition]\ncolumn = \"id\"\ncount = 4\n[run]\nverify = \"checksum\"",
        &pair.target.url,
        "table = \"v\"",
    ));
    let out = run_job(&to_pg.path);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("4 of 4 partitions match"),
        "{}",
        text(&out)
    );
    assert_exit(&stride(&["verify", to_pg.path.to_str().unwrap()], &[]), 0);

    // One changed value in the SQLite target: verify finds it.
    sqlite_exec(&file, "UPDATE v SET name = 'changed' WHERE id = 1234").await;
    let out = stride(&["verify", path], &[]);
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("3 of 4 partitions match"),
        "{}",
        text(&out)
    );
    // ...and in the PostgreSQL target, whose source is the SQLite file now
    // changed: it differs in that one row.
    let out = stride(&["verify", to_pg.path.to_str().unwrap()], &[]);
    assert_exit(&out, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_sqlite_cannot_do_exit_2_before_anything_is_written() {
    let pg = TestDb::new("sqlite_refused").await;
    seed_pg_items(&pg, 50).await;
    pg.exec("CREATE TABLE prices (id bigint PRIMARY KEY, unit_price numeric(10,2), list_price numeric(10,2));
             INSERT INTO prices VALUES (1, 1.50, 2.00), (2, 10.00, 0.10);")
        .await;
    let target = TestDb::new("sqlite_refused_dst").await;
    let dir = tempfile::tempdir().unwrap();
    let no_changes_in_target = async || {
        assert!(!pg_has(&target, "items").await);
        assert!(!pg_has(&target, "stride_checkpoints").await);
    };

    // A missing source file: not created, and neither is the target.
    let missing = dir.path().join("missing.db");
    let out_file = dir.path().join("out.db");
    let cases = [
        (sqlite_url(&out_file), "table = \"items\""),
        (target.url.clone(), "table = \"items\""),
    ];
    for (target_url, target_keys) in &cases {
        let job = job_file(&job_toml(
            &sqlite_url(&missing),
            "table = \"items\"",
            "",
            target_url,
            target_keys,
        ));
        let out = run_job(&job.path);
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains("source.url") && err.contains("does not exist"),
            "{}",
            text(&out)
        );
        assert!(!missing.exists(), "the missing source file was created");
        assert!(!out_file.exists(), "the target file was created");
    }
    no_changes_in_target().await;

    // A SQLite source file for the rest.
    let source = dir.path().join("source.db");
    sqlite_exec(
        &source,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);
         INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2);",
    )
    .await;
    // An existing SQLite target file that must stay as it is.
    let existing = dir.path().join("existing.db");
    sqlite_exec(
        &existing,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);
         INSERT INTO items VALUES (10001, 'mine', 1);
         CREATE TABLE prices_numeric (id INTEGER PRIMARY KEY, unit_price NUMERIC);
         CREATE TABLE prices_decimal (id INTEGER PRIMARY KEY, list_price DECIMAL(10,2));
         CREATE TABLE prices_text (id INTEGER PRIMARY KEY, unit_price TEXT);",
    )
    .await;
    let existing_before = sqlite_items(&existing, "").await;

    // [incremental] with a SQLite side, either side.
    let incremental = "[incremental]\ncolumn = \"id\"";
    for (source_url, target_url) in [
        (pg.url.clone(), sqlite_url(&existing)),
        (sqlite_url(&source), target.url.clone()),
    ] {
        let job = job_file(&job_toml(
            &source_url,
            "table = \"items\"",
            incremental,
            &target_url,
            "table = \"items\"",
        ));
        let out = run_job(&job.path);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains("incremental"), "{}", text(&out));
    }
    no_changes_in_target().await;
    assert_eq!(sqlite_items(&existing, "").await, existing_before);
    assert!(!sqlite_has(&existing, "stride_checkpoints").await);

    // TABLESAMPLE has no SQLite counterpart.
    let job = job_file(&job_toml(
        &sqlite_url(&source),
        "table = \"items\"\nsample = 0.5",
        "",
        &target.url,
        "table = \"items\"",
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("source.sample"), "{}", text(&out));
    no_changes_in_target().await;

    // numeric into an existing NUMERIC or DECIMAL column would lose its scale
    // (1.50 stored as 1.5): refused naming the column.
    for (table, column) in [
        ("prices_numeric", "unit_price"),
        ("prices_decimal", "list_price"),
    ] {
        let job = job_file(&job_toml(
            &pg.url,
            &format!("table = \"prices\"\ncolumns = [\"id\", \"{column}\"]"),
            "",
            &sqlite_url(&existing),
            &format!("table = \"{table}\""),
        ));
        let out = run_job(&job.path);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(column), "{table}: {}", text(&out));
        assert_eq!(
            sqlite_i64(&existing, &format!("SELECT count(*) FROM {table}")).await,
            0
        );
        assert!(
            !sqlite_has(&existing, "stride_checkpoints").await,
            "{table}"
        );
    }
    // A TEXT column takes the exact decimal text.
    let job = job_file(&job_toml(
        &pg.url,
        "table = \"prices\"\ncolumns = [\"id\", \"unit_price\"]",
        "",
        &sqlite_url(&existing),
        "table = \"prices_text\"",
    ));
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(
        sqlite_rows(
            &existing,
            &format!("SELECT {} FROM prices_text", quoted(&["id", "unit_price"]))
        )
        .await,
        ["1|'1.50'", "2|'10.00'"]
    );
}
