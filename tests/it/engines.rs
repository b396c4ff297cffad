//! The engine contract, over every pair of engines this machine has:
//! PostgreSQL → PostgreSQL, PostgreSQL → SQLite, SQLite → SQLite and
//! SQLite → PostgreSQL. Each pair copies NULLs and extremes exactly, resumes
//! after kill -9 without losing or doubling a row, and refuses what its engine
//! lacks with exit 2 before writing. SQLite needs no server: nothing here is
//! skipped. (tests/it/sqlite.rs tests SQLite's modes and types one by one.)

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::*;

/// Every kind of value with its edges: integer extremes, NaN and the
/// infinities, exact decimals with trailing zeros, the empty string and NULL
/// apart, text with tabs, newlines, backslashes and emoji, bytes with 0x00,
/// dates and timestamps with fractions, a BC date, booleans, uuid, jsonb, arrays.
const EDGES: &str = "
CREATE TABLE public.edges (
    id bigint PRIMARY KEY,
    i2 smallint, i4 integer, i8 bigint,
    f4 real, f8 double precision,
    num numeric(20,6),
    ok boolean,
    t text, b bytea,
    d date, ts timestamp, tz timestamptz, tm time,
    u uuid, j jsonb, a integer[]
);
INSERT INTO public.edges VALUES
 (1, -32768, -2147483648, -9223372036854775808, -3.4e38, -1.7976931348623157e308, -99999999999999.999999, false,
  '', '\\x', '0001-01-01', '1970-01-01 00:00:00', '2000-01-01 00:00:00+00', '00:00:00',
  '00000000-0000-0000-0000-000000000000', '{}', '{}'),
 (2, 32767, 2147483647, 9223372036854775807, 3.4e38, 1.7976931348623157e308, 99999999999999.999999, true,
  E'tab\\there\\nnew line \\\\ back ''quote'' \"dq\" ünïcødé 🎉', '\\x00ff10', '9999-12-31', '2024-02-29 23:59:59.999999',
  '2024-06-30 12:34:56.789+02', '23:59:59.999999', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '{\"k\": [1, 2.50, null]}', '{1,NULL,-3}'),
 (3, NULL, NULL, NULL, 'NaN', 'NaN', 1.500000, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 0, 0, 0, 'Infinity', '-Infinity', 0, true, 'NULL', '\\x00', '2020-01-01', '2020-01-01 00:00:00.5',
  '1999-12-31 23:59:59+00', '12:00:00', '123e4567-e89b-12d3-a456-426614174000', 'null', '{0}'),
 (5, 1, 1, 1, 1.1, 0.1, -0.000001, false, '\\N', NULL, '0044-03-15 BC', '1900-01-01 00:00:00', NULL, NULL, NULL, '\"s\"', NULL);
INSERT INTO public.edges (id, i8, f8, num, t)
SELECT n, n::bigint * 1000003, n / 7.0, n / 3.0, repeat('x', (n % 50)::int) FROM generate_series(6, 5000) AS n;
";

pub(crate) fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

pub(crate) fn job(
    source: &str,
    source_table: &str,
    target: &str,
    target_table: &str,
    rest: &str,
) -> String {
    format!(
        "[source]\nurl = \"{source}\"\ntable = \"{source_table}\"\n[partition]\ncolumn = \"id\"\ncount = 4\n[target]\nurl = \"{target}\"\ntable = \"{target_table}\"\n{rest}\n[run]\nverify = \"checksum\"\n"
    )
}

pub(crate) fn run_text(text: &str) -> Output {
    let file = job_file(text);
    let out = run_job(&file.path);
    drop(file);
    out
}

/// pg → pg, pg → SQLite → SQLite → pg: every step verified by checksum and
/// every row back in PostgreSQL equal to the source's, by an independent
/// checksum of PostgreSQL's own.
#[tokio::test]
async fn every_pair_copies_nulls_and_extremes_exactly() {
    let pair = Pair::new("engines_edges").await;
    pair.source.exec(EDGES).await;
    // The way back lands in a table with the original types.
    let create = EDGES.replace("public.edges", "public.edges_back");
    pair.target
        .exec(create.split("INSERT").next().unwrap())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let steps = [
        (
            "pg -> pg",
            job(
                &pair.source.url,
                "public.edges",
                &pair.target.url,
                "public.edges_direct",
                "",
            ),
        ),
        (
            "pg -> sqlite",
            job(
                &pair.source.url,
                "public.edges",
                &sqlite_url(&a),
                "edges",
                "",
            ),
        ),
        (
            "sqlite -> sqlite",
            job(&sqlite_url(&a), "edges", &sqlite_url(&b), "edges", ""),
        ),
        (
            "sqlite -> pg",
            job(
                &sqlite_url(&b),
                "edges",
                &pair.target.url,
                "public.edges_back",
                "",
            ),
        ),
    ];
    for (what, toml) in &steps {
        let out = run_text(toml);
        assert_exit(&out, 0);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("rows 5,000"), "{what}: {}", text(&out));
        assert!(
            stdout.contains("4 of 4 partitions match"),
            "{what}: {}",
            text(&out)
        );
    }
    let source = pair.source.checksum("public.edges").await;
    assert_eq!(source.0, 5000);
    assert_eq!(
        pair.target.checksum("public.edges_direct").await,
        source,
        "pg -> pg"
    );
    assert_eq!(
        pair.target.checksum("public.edges_back").await,
        source,
        "pg -> sqlite -> sqlite -> pg gave other values"
    );
}

/// 200,000 rows in PostgreSQL, and the same rows in a SQLite file.
async fn big_sources(db: &TestDb, file: &Path) {
    db.exec(
        "CREATE TABLE public.big (id bigint PRIMARY KEY, v text, n numeric(12,2));
         INSERT INTO public.big SELECT n, md5(n::text), n / 100.0 FROM generate_series(1, 200000) AS n;",
    )
    .await;
    let to_file = job(&db.url, "public.big", &sqlite_url(file), "big", "");
    let out = run_text(&to_file.replace("verify = \"checksum\"", "checkpoint = false"));
    assert_exit(&out, 0);
}

/// Starts a run, kills it with SIGKILL after its first committed partition,
/// runs it again, and returns the second run's output.
pub(crate) fn kill_after_first_partition_and_rerun(path: &Path) -> Output {
    let running =
        Running::start(&["run", path.to_str().unwrap()]).wait_for_line("partition written");
    running.signal("KILL");
    let killed = running.finish();
    assert_ne!(killed.status.code(), Some(0), "{}", text(&killed));
    run_job(path)
}

#[tokio::test]
async fn every_pair_resumes_after_kill_9_without_losing_or_doubling_a_row() {
    let pair = Pair::new("engines_resume").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.db");
    big_sources(&pair.source, &file).await;
    let out_file = dir.path().join("out.db");
    let cases: Vec<(&str, String, String, String)> = vec![
        (
            "pg -> pg",
            pair.source.url.clone(),
            "public.big".into(),
            "public.big_pg".into(),
        ),
        (
            "pg -> sqlite",
            pair.source.url.clone(),
            "public.big".into(),
            "from_pg".into(),
        ),
        (
            "sqlite -> sqlite",
            sqlite_url(&file),
            "big".into(),
            "from_sqlite".into(),
        ),
        (
            "sqlite -> pg",
            sqlite_url(&file),
            "big".into(),
            "public.big_sqlite".into(),
        ),
    ];
    for (what, source, source_table, target_table) in cases {
        let target = if target_table.starts_with("public.") {
            pair.target.url.clone()
        } else {
            sqlite_url(&out_file)
        };
        let toml = job(&source, &source_table, &target, &target_table, "")
            .replace("count = 4", "count = 8")
            .replace("[run]\n", "[run]\nparallelism = 2\n");
        let file = job_file(&toml);
        let again = kill_after_first_partition_and_rerun(&file.path);
        assert_exit(&again, 0);
        let stdout = String::from_utf8_lossy(&again.stdout).to_string();
        assert!(
            stdout.contains("skipped: committed by an earlier run"),
            "{what}: {}",
            text(&again)
        );
        assert!(stdout.contains("rows 200,000"), "{what}: {}", text(&again));
        assert!(
            stdout.contains("8 of 8 partitions match"),
            "{what}: {}",
            text(&again)
        );
    }
    // Counted by each engine itself, distinct keys included.
    for table in ["public.big_pg", "public.big_sqlite"] {
        assert_eq!(
            pair.target
                .scalar_i64(&format!(
                    "SELECT count(DISTINCT id) + count(*) FROM {table}"
                ))
                .await,
            400_000,
            "{table}"
        );
    }
    assert_eq!(
        pair.target.checksum("public.big_pg").await,
        pair.source.checksum("public.big").await
    );
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&sqlite_url(&out_file))
        .await
        .unwrap();
    for table in ["from_pg", "from_sqlite"] {
        let (rows, distinct): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), count(DISTINCT id) FROM {table}"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!((rows, distinct), (200_000, 200_000), "{table}");
    }
}

/// What each engine lacks, asked of each pair it is in: exit 2, naming the key,
/// and the target untouched (a SQLite target file not even created).
#[tokio::test]
async fn what_an_engine_lacks_is_exit_2_before_anything_is_written() {
    let pair = Pair::new("engines_refusals").await;
    pair.source
        .exec("CREATE TABLE public.t (id bigint PRIMARY KEY, v text); INSERT INTO public.t VALUES (1, 'a');")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("src.db");
    let to_file = job(&pair.source.url, "public.t", &sqlite_url(&file), "t", "");
    assert_exit(&run_text(&to_file), 0);
    let fresh = dir.path().join("never.db");
    let (pg, src, never) = (
        pair.target.url.as_str(),
        sqlite_url(&file),
        sqlite_url(&fresh),
    );
    let cases: Vec<(String, &str)> = vec![
        (
            job(&src, "t", pg, "public.t", "").replace("[partition]", "sample = 0.5\n[partition]"),
            "source.sample",
        ),
        (
            job(&src, "t", pg, "public.t", "") + "[incremental]\ncolumn = \"id\"\n",
            "incremental",
        ),
        (
            job(&pair.source.url, "public.t", &never, "t", "") + "[incremental]\ncolumn = \"id\"\n",
            "incremental",
        ),
        (
            job(&src, "t", pg, "public.t", "").replace("column = \"id\"", "column = \"v\""),
            "partition.column: \"v\" is TEXT in the source (expected an integer, date or timestamp column)",
        ),
        (
            job(&src, "public.t", pg, "public.t", ""),
            "source.table: SQLite has no schema \"public\"",
        ),
        (
            job(&pair.source.url, "public.t", &never, "public.t", ""),
            "target.table: SQLite has no schema \"public\"",
        ),
        (
            job(&src, "t", pg, "public.t", "")
                .replace("count = 4", "count = 4\nstrategy = \"quantile\""),
            "partition.strategy",
        ),
        (
            job(&src, "t", "mysql://root@127.0.0.1:3306/db?sslmode=require", "t", ""),
            "target.url: unknown parameter \"sslmode\" for MySQL",
        ),
        (
            job(
                &sqlite_url(&dir.path().join("missing.db")),
                "t",
                pg,
                "public.t",
                "",
            ),
            "does not exist",
        ),
    ];
    for (toml, expected) in cases {
        let out = run_text(&toml);
        assert_exit(&out, 2);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(expected),
            "expected {expected:?} in:\n{}\nfor:\n{toml}",
            text(&out)
        );
        assert!(!fresh.exists(), "{expected}: the target file was created");
        assert_eq!(
            pair.target
                .scalar_i64(
                    "SELECT count(*) FROM pg_class WHERE relname IN ('t', 'stride_checkpoints')"
                )
                .await,
            0,
            "{expected}: the target was written"
        );
    }
    // The shard flag: refused the same way.
    let file = job_file(&job(&src, "t", pg, "public.t", ""));
    let out = stride(&["run", "--shard", "1/2", file.path.to_str().unwrap()], &[]);
    assert_exit(&out, 2);
    assert!(text(&out).contains("--shard"), "{}", text(&out));
}

/// examples/sqlite-ci-seed.toml, as shipped, seeds a SQLite file (created
/// with its directory) from PostgreSQL, verified by checksum.
#[tokio::test]
async fn the_sqlite_ci_seed_example_runs_as_shipped() {
    let db = TestDb::new("engines_example").await;
    db.exec(
        "CREATE TABLE public.covid_cases (id bigint PRIMARY KEY, state text NOT NULL, confirmed integer, date date NOT NULL);
         INSERT INTO public.covid_cases SELECT n, 'Kerala', n % 1000, DATE '2020-06-01' + n % 700 FROM generate_series(1, 10000) AS n;",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let example: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "examples",
        "sqlite-ci-seed.toml",
    ]
    .iter()
    .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stride"))
        .args(["run", example.to_str().unwrap()])
        .current_dir(dir.path())
        .env("SOURCE_URL", &db.url)
        .env_remove("TARGET_URL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let expected = db
        .scalar_i64("SELECT count(*) FROM public.covid_cases WHERE date >= DATE '2021-01-01'")
        .await;
    assert!(expected > 0 && expected < 10_000);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("4 of 4 partitions match"), "{}", text(&out));
    let fixtures = dir.path().join("ci/fixtures.db");
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&sqlite_url(&fixtures))
        .await
        .unwrap();
    let (rows, first): (i64, String) =
        sqlx::query_as("SELECT count(*), min(date) FROM covid_cases")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!((rows, first.as_str()), (expected, "2021-01-01"));
}

/// Ctrl-C in a copy across engines: the partitions in flight roll back, the
/// run ends 130 and prints the command that resumes it, which, run as printed,
/// finishes the copy with every row once.
#[tokio::test]
async fn an_interrupted_copy_across_engines_ends_130_and_its_printed_command_finishes_it() {
    let pair = Pair::new("engines_sigint").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.db");
    big_sources(&pair.source, &file).await;
    let toml = job(
        &sqlite_url(&file),
        "big",
        &pair.target.url,
        "public.big",
        "",
    )
    .replace("count = 4", "count = 8")
    .replace("[run]\n", "[run]\nparallelism = 2\n");
    let job = job_file(&toml);
    let running =
        Running::start(&["run", job.path.to_str().unwrap()]).wait_for_line("partition written");
    running.signal("INT");
    let out = running.finish();
    assert_exit(&out, 130);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("copy INTERRUPTED"), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let resume = stderr
        .lines()
        .find_map(|l| l.strip_prefix("resume with: "))
        .unwrap_or_else(|| panic!("no resume command in:\n{}", text(&out)));
    let again = sh(resume);
    assert_exit(&again, 0);
    let stdout = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(
        stdout.contains("skipped: committed by an earlier run"),
        "{}",
        text(&again)
    );
    assert!(
        stdout.contains("8 of 8 partitions match"),
        "{}",
        text(&again)
    );
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(DISTINCT id) + count(*) FROM public.big")
            .await,
        400_000
    );
}

/// Runs `toml`, whose `side` ("source" or "target") goes through `proxy`,
/// which freezes that connection once mid-partition (stall timeout 2 s, two
/// retries), and asserts what the user sees: the stall named on that side, one
/// retry, exit 0, every partition verified, all within 30 s.
async fn run_with_one_freeze(proxy: &crate::proxy::Proxy, side: &str, toml: &str) -> Output {
    let toml = toml.replace(
        "[run]\n",
        "[run]\nparallelism = 2\nretries = 2\nstall_timeout = \"2s\"\n",
    );
    let job = job_file(&toml);
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || run_job(&job.path))
        .await
        .unwrap();
    assert_eq!(proxy.fired(), 1, "the {side} never froze\n{}", text(&out));
    assert_exit(&out, 0);
    let stall = format!("the {side} moved no data for 2 s (run.stall_timeout)");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&stall),
        "{}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("after 1 retry"), "{}", text(&out));
    assert!(stdout.contains("4 of 4 partitions match"), "{}", text(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    out
}

/// A PostgreSQL target that stops answering mid-partition (a frozen network:
/// nothing closed) in a copy from SQLite: the partition fails after
/// `run.stall_timeout` naming the target, its server session is ended so its
/// locks go, and the retry copies it exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_target_across_engines_is_retried_and_the_copy_is_exact() {
    use crate::proxy::{Action, Direction, Proxy};
    let pair = Pair::new("engines_frozen").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.db");
    big_sources(&pair.source, &file).await;
    pair.target
        .exec("CREATE TABLE public.big (id bigint PRIMARY KEY, v text, n numeric(12,2))")
        .await;
    let proxy = Proxy::start();
    proxy.after_bytes(Direction::ClientToServer, 1_000_000, Action::Freeze);
    let toml = job(
        &sqlite_url(&file),
        "big",
        &proxy.url(&pair.target.url),
        "public.big",
        "",
    );
    run_with_one_freeze(&proxy, "target", &toml).await;
    assert_eq!(
        pair.target.checksum("public.big").await,
        pair.source.checksum("public.big").await
    );
}

/// Replace into PostgreSQL from SQLite: the rows are loaded into a staging
/// table, verified there, then moved into the table in the transaction that
/// finishes the run: the table holds exactly the source's rows, keeps its
/// indexes, and the staging table is gone.
#[tokio::test]
async fn replace_into_postgres_from_sqlite_keeps_the_table_and_its_indexes() {
    let pair = Pair::new("engines_replace").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.db");
    big_sources(&pair.source, &file).await;
    pair.target
        .exec(
            "CREATE TABLE public.big (id bigint PRIMARY KEY, v text, n numeric(12,2));
             CREATE INDEX big_by_v ON public.big (v);
             INSERT INTO public.big VALUES (-1, 'old', 0);",
        )
        .await;
    let toml = job(
        &sqlite_url(&file),
        "big",
        &pair.target.url,
        "public.big",
        "mode = \"replace\"",
    );
    let out = run_text(&toml);
    assert_exit(&out, 0);
    assert_eq!(
        pair.target.checksum("public.big").await,
        pair.source.checksum("public.big").await,
        "{}",
        text(&out)
    );
    assert_eq!(
        pair.target
            .scalar_i64(
                "SELECT count(*) FROM pg_indexes WHERE tablename = 'big' AND indexname IN ('big_pkey', 'big_by_v')"
            )
            .await,
        2
    );
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(*) FROM pg_class WHERE relname LIKE 'stride_stage%'")
            .await,
        0,
        "the staging table is left"
    );
}

/// Several tables from a SQLite file: every entry is checked before any table
/// is written (a bad third entry is exit 2 with the target untouched), and a
/// pattern copies them all, at once into PostgreSQL with `tables = "concurrent"`.
#[tokio::test]
async fn several_tables_of_a_sqlite_file_are_checked_first_then_copied_at_once() {
    let db = TestDb::new("engines_tables").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.db");
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "{}?mode=rwc",
        sqlite_url(&file)
    ))
    .await
    .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE books (id INTEGER PRIMARY KEY, author INTEGER REFERENCES authors (id), title TEXT, price DECIMAL(8,2));
         CREATE TABLE tags (name TEXT PRIMARY KEY);
         CREATE VIEW cheap AS SELECT * FROM books WHERE price < 10;
         INSERT INTO authors VALUES (1, 'Le Guin'), (2, 'Calvino');
         INSERT INTO books VALUES (1, 1, 'The Dispossessed', '9.50'), (2, 2, 'Invisible Cities', '12.00'), (3, NULL, NULL, NULL);
         INSERT INTO tags VALUES ('sf'), ('');",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);
    let head = format!(
        "[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n[run]\ntables = \"concurrent\"\nverify = \"checksum\"\n",
        sqlite_url(&file),
        db.url
    );
    let bad = run_text(&format!(
        "{head}[[tables]]\ntable = \"authors\"\n[[tables]]\ntable = \"books\"\n[[tables]]\ntable = \"missing\"\n"
    ));
    assert_exit(&bad, 2);
    assert!(text(&bad).contains("tables[2]"), "{}", text(&bad));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .await,
        0,
        "a table was written before the bad entry was found"
    );
    let out = run_text(&format!("{head}[[tables]]\ntable = \"*\"\n"));
    assert_exit(&out, 0);
    assert!(text(&out).contains("tables 3 of 3 done"), "{}", text(&out));
    assert_eq!(
        db.scalar_string(
            "SELECT string_agg(format('%s %s %s %s', id, coalesce(author::text, 'NULL'), coalesce(title, 'NULL'), coalesce(price::text, 'NULL')), '; ' ORDER BY id) FROM books"
        )
        .await,
        "1 1 The Dispossessed 9.50; 2 2 Invisible Cities 12.00; 3 NULL NULL NULL"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM tags WHERE name = ''")
            .await,
        1
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pg_class WHERE relname = 'cheap'")
            .await,
        0,
        "a view is not a table"
    );
}

/// `stride init` on a SQLite table picks its INTEGER PRIMARY KEY (the rowid
/// where there is none), and the job it writes runs as written.
#[tokio::test]
async fn init_reads_a_sqlite_table_and_the_job_it_writes_runs() {
    let pair = Pair::new("engines_init").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.db");
    big_sources(&pair.source, &file).await;
    let written = dir.path().join("job.toml");
    let out = stride(
        &[
            "init",
            "--source",
            &sqlite_url(&file),
            "--table",
            "big",
            "--target",
            &pair.target.url,
            "--output",
            written.to_str().unwrap(),
        ],
        &[],
    );
    assert_exit(&out, 0);
    let job = std::fs::read_to_string(&written).unwrap();
    assert!(job.contains("column = \"id\""), "{job}");
    assert!(job.contains("about 200,000 rows"), "{job}");
    assert!(!job.contains("pgpass"), "{job}");
    let out = stride(&["run", written.to_str().unwrap()], &[]);
    assert_exit(&out, 0);
    assert_eq!(
        pair.target.checksum("big").await,
        pair.source.checksum("public.big").await
    );
    // Without a usable column: the rowid.
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&sqlite_url(&file))
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE notes AS SELECT v FROM big")
        .execute(&mut conn)
        .await
        .unwrap();
    let out = stride(
        &["init", "--source", &sqlite_url(&file), "--table", "notes"],
        &[],
    );
    assert_exit(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("column = \"rowid\""),
        "{}",
        text(&out)
    );
}

/// A copy between two tables of one SQLite file: in a rollback journal the
/// readers' locks would keep the commits waiting, so it is exit 2 before
/// anything is written, with the command that switches the file to WAL; run
/// as printed, it lets the copy through.
#[test]
fn a_copy_within_one_sqlite_file_needs_wal_and_says_how() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one file.db");
    let created = std::process::Command::new("sqlite3")
        .arg(&file)
        .arg("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, NULL);")
        .status()
        .expect("sqlite3 runs");
    assert!(created.success());
    let url = format!("sqlite://{}", file.display());
    let job = job_file(&job(&url, "t", &url, "t_copy", ""));
    let out = run_job(&job.path);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("the source and the target are the same SQLite file"),
        "{}",
        text(&out)
    );
    let fix = printed_command(&text(&out), "sqlite3", "WAL");
    assert!(sh(&fix).status.success(), "{fix}");
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 of 1 partitions match"),
        "{}",
        text(&out)
    );
}

/// A run's own verify across engines compares each partition's range on both
/// sides, so it cannot be trusted where the target holds rows this job did not
/// write: upsert mode, or an append into a table that already has rows. Both
/// are exit 2 before anything is written, naming `run.verify`.
#[tokio::test]
async fn a_verify_that_other_rows_would_fool_is_refused_across_engines() {
    let pair = Pair::new("engines_verify_refused").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.db");
    big_sources(&pair.source, &file).await;
    pair.target
        .exec("CREATE TABLE public.big (id bigint PRIMARY KEY, v text, n numeric(12,2)); INSERT INTO public.big VALUES (-5, 'theirs', 1);")
        .await;
    for (rest, says) in [
        (
            "mode = \"upsert\"\nkey = [\"id\"]",
            "target.mode = \"upsert\"",
        ),
        ("", "already holds rows"),
    ] {
        let out = run_text(&job(
            &sqlite_url(&file),
            "big",
            &pair.target.url,
            "public.big",
            rest,
        ));
        assert_exit(&out, 2);
        assert!(text(&out).contains("run.verify"), "{}", text(&out));
        assert!(text(&out).contains(says), "{}", text(&out));
        assert_eq!(pair.target.count("public.big").await, 1, "{}", text(&out));
    }
    // Without a verify, the append goes in beside the target's own row.
    let out = run_text(
        &job(
            &sqlite_url(&file),
            "big",
            &pair.target.url,
            "public.big",
            "",
        )
        .replace("verify = \"checksum\"", "verify = \"none\""),
    );
    assert_exit(&out, 0);
    assert_eq!(pair.target.count("public.big").await, 200_001);
}

/// A PostgreSQL source that stops answering mid-partition in a copy into
/// SQLite: the partition fails after `run.stall_timeout` naming the source, and
/// the retry reads through a new connection that imports the run's snapshot
/// again (the coordinator holds it open), so the copy is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_source_across_engines_is_read_again_in_the_same_snapshot() {
    use crate::proxy::{Action, Direction, Proxy};
    let pair = Pair::new("engines_frozen_source").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.db");
    pair.source
        .exec(
            "CREATE TABLE public.big (id bigint PRIMARY KEY, v text);
             INSERT INTO public.big SELECT n, md5(n::text) FROM generate_series(1, 200000) AS n;",
        )
        .await;
    let proxy = Proxy::start();
    proxy.after_bytes(Direction::ServerToClient, 1_000_000, Action::Freeze);
    let toml = job(
        &proxy.url(&pair.source.url),
        "public.big",
        &sqlite_url(&file),
        "big",
        "",
    );
    run_with_one_freeze(&proxy, "source", &toml).await;
    // Every value, in order, against the source's own.
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&sqlite_url(&file))
        .await
        .unwrap();
    let (rows, distinct, values): (i64, i64, String) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT id), group_concat(id || ':' || v, ',') FROM (SELECT * FROM big ORDER BY id)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((rows, distinct), (200_000, 200_000));
    assert!(
        values
            == pair
                .source
                .scalar_string("SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM public.big")
                .await,
        "the SQLite file holds other values than the source"
    );
}
