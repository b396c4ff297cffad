//! MySQL/MariaDB on the engine seam, against the real servers at
//! `STRIDE_TEST_MYSQL_URL` and `STRIDE_TEST_PG_URL`: the pair contract of
//! engines.rs (exact rows with NULLs and extremes, count and checksum) for
//! every pair with MySQL, a type round trip, zero dates, `tinyint(1)`, kill -9
//! and resume into MySQL, `verify`, and URLs refused by name.

use sqlx::Connection;

use crate::common::*;
use crate::engines::{job, kill_after_first_partition_and_rerun, run_text, sqlite_url};

/// Every MySQL type of the dialect's mapping with its edges, NULLs apart from
/// empty strings. JSON is written as PostgreSQL's jsonb prints it, so the
/// round trip through jsonb gives the same text back.
const MYSQL_EDGES: &str = "
CREATE TABLE edges (
    id BIGINT PRIMARY KEY,
    i1 TINYINT, i8 BIGINT, u8 BIGINT UNSIGNED, u4 INT UNSIGNED, m MEDIUMINT,
    dec65 DECIMAL(65,30), f4 FLOAT, f8 DOUBLE,
    ok TINYINT(1),
    s VARCHAR(100), t TEXT, b VARBINARY(16), bl BLOB,
    d DATE, dt DATETIME(6), ts TIMESTAMP(6) NULL, tm TIME(6), y YEAR, bits BIT(8),
    e ENUM('small', 'large'), st SET('a', 'b', 'c'), j JSON
) ENGINE = InnoDB;
INSERT INTO edges VALUES
 (1, -128, -9223372036854775808, 0, 0, -8388608,
  -99999999999999999999999999999999999.999999999999999999999999999999, -3.4028234663852886e38, -1.7976931348623157e308,
  0, '', '', x'', x'', '1000-01-01', '1000-01-01 00:00:00', '1970-01-01 00:00:01', '00:00:00', 1901, b'00000000',
  'small', '', '{}'),
 (2, 127, 9223372036854775807, 18446744073709551615, 4294967295, 8388607,
  99999999999999999999999999999999999.999999999999999999999999999999, 16777216, 2.2250738585072014e-308,
  1, 'tab\\there\\nnew line \\\\ back ''quote'' \"dq\" ünïcødé 🦀🎉', '中文 😀', x'00ff10', x'000102', '9999-12-31',
  '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', '23:59:59.999999', 2155, b'11111111',
  'large', 'a,b,c', '{\"k\": [1, 2.5, null], \"s\": \"🦀\"}'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 0, 0, 1, 1, 0, 0.000000000000000000000000000001, 0.1, 0.1, 1, 'NULL', '\\\\N', x'00', x'', '2024-02-29',
  '2024-02-29 12:34:56.5', '2000-01-01 00:00:00', '12:00:00.000001', 0, b'10100101', 'small', 'b', '[1, 2, 3]');
";

/// The same table, empty, named `name`.
fn mysql_edges_table(name: &str) -> String {
    MYSQL_EDGES
        .split("INSERT")
        .next()
        .unwrap()
        .replace("CREATE TABLE edges", &format!("CREATE TABLE {name}"))
}

/// 5,000 rows: the edges and more.
async fn mysql_edges(db: &MysqlDb) {
    db.exec(MYSQL_EDGES).await;
    db.exec(
        "INSERT INTO edges (id, i8, u8, dec65, f8, s, d)
         SELECT v, v * 1000003, v * 7, v / 3, v / 7.0, REPEAT('x', v % 50), DATE_ADD('2000-01-01', INTERVAL v DAY)
         FROM (SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d AS v
               FROM (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
                     UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) a,
                    (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
                     UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) b,
                    (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
                     UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) c,
                    (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
                     UNION ALL SELECT 5) e) n
         WHERE v BETWEEN 5 AND 5000",
    )
    .await;
}

/// How many rows of `a` have an equal row in `b`, every column compared
/// null-safely by MySQL itself (`<=>`).
async fn mysql_same_rows(db: &MysqlDb, a: &str, b: &str) -> i64 {
    let columns = [
        "i1", "i8", "u8", "u4", "m", "dec65", "f4", "f8", "ok", "s", "t", "b", "bl", "d", "dt",
        "ts", "tm", "y", "bits", "e", "st", "j",
    ];
    let on: Vec<String> = columns.iter().map(|c| format!("x.{c} <=> y.{c}")).collect();
    let mut conn = db.conn().await;
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {a} x JOIN {b} y ON x.id = y.id AND {}",
        on.join(" AND ")
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.ok();
    n
}

async fn mysql_i64(db: &MysqlDb, sql: &str) -> i64 {
    let mut conn = db.conn().await;
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.ok();
    n
}

async fn mysql_text(db: &MysqlDb, sql: &str) -> String {
    let mut conn = db.conn().await;
    let s: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.ok();
    s
}

fn assert_copied(what: &str, out: &std::process::Output, rows: &str, partitions: &str) {
    assert_exit(out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(rows), "{what}: {}", text(out));
    assert!(stdout.contains(partitions), "{what}: {}", text(out));
}

/// mysql → pg → mysql, mysql → mysql, mysql → sqlite → mysql: every step
/// verified by count and checksum, and every row back in MySQL equal to the
/// source's, compared by MySQL itself, column by column.
#[tokio::test]
async fn mysql_pairs_copy_every_type_and_extreme_exactly_and_back() {
    let my = MysqlDb::new("my_edges").await;
    mysql_edges(&my).await;
    for back in ["back_pg", "back_sqlite"] {
        my.exec(&mysql_edges_table(back)).await;
    }
    let pg = TestDb::new("my_edges_pg").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edges.db");
    let steps = [
        (
            "mysql -> pg",
            job(&my.url, "edges", &pg.url, "public.edges", ""),
        ),
        (
            "pg -> mysql",
            job(&pg.url, "public.edges", &my.url, "back_pg", ""),
        ),
        (
            "mysql -> mysql",
            job(&my.url, "edges", &my.url, "direct", ""),
        ),
        (
            "mysql -> sqlite",
            job(&my.url, "edges", &sqlite_url(&file), "edges", ""),
        ),
        (
            "sqlite -> mysql",
            job(&sqlite_url(&file), "edges", &my.url, "back_sqlite", ""),
        ),
    ];
    for (what, toml) in &steps {
        let out = run_text(toml);
        assert_copied(what, &out, "rows 5,000", "4 of 4 partitions match");
    }
    for table in ["back_pg", "direct", "back_sqlite"] {
        assert_eq!(mysql_same_rows(&my, "edges", table).await, 5000, "{table}");
    }
    // The types PostgreSQL got, from the dialect's mapping.
    let types = pg
        .scalar_string(
            "SELECT string_agg(column_name || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
             FROM information_schema.columns c JOIN pg_attribute a
               ON a.attrelid = 'public.edges'::regclass AND a.attname = c.column_name
             WHERE c.table_name = 'edges' AND c.table_schema = 'public'",
        )
        .await;
    for expected in [
        "u8 numeric(20,0)",
        "dec65 numeric(65,30)",
        "f4 real",
        "ok boolean",
        "b bytea",
        "dt timestamp(6) without time zone",
        "ts timestamp(6) with time zone",
        "tm time(6) without time zone",
        "y smallint",
        "bits bit(8)",
        "j jsonb",
    ] {
        assert!(types.contains(expected), "{expected} in {types}");
    }
    // Emoji kept as four bytes in PostgreSQL.
    assert_eq!(
        pg.scalar_string("SELECT t FROM public.edges WHERE id = 2")
            .await,
        "中文 😀"
    );
}

/// PostgreSQL's types into MySQL and back: NULLs and extremes kept, checked by
/// PostgreSQL's own checksum of the original and the way back.
#[tokio::test]
async fn pg_to_mysql_and_back_keeps_every_value() {
    let pair = Pair::new("pg_my_edges").await;
    let create = "
CREATE TABLE public.edges (
    id bigint PRIMARY KEY, i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
    num numeric(20,6), ok boolean, t text, v varchar(20), b bytea, d date, ts timestamp, tz timestamptz,
    tm time, u uuid, j jsonb
);";
    pair.source.exec(create).await;
    pair.target.exec(create).await;
    pair.source
        .exec(
            "INSERT INTO public.edges VALUES
 (1, -32768, -2147483648, -9223372036854775808, -3.4e38, -1.7976931348623157e308, -99999999999999.999999, false,
  '', '', '\\x', '0001-01-01', '1970-01-01 00:00:00', '2000-01-01 00:00:00+00', '00:00:00',
  '00000000-0000-0000-0000-000000000000', '{}'),
 (2, 32767, 2147483647, 9223372036854775807, 3.4e38, 1.7976931348623157e308, 99999999999999.999999, true,
  E'tab\\there\\nnew line \\\\ back ''quote'' \"dq\" ünïcødé 🎉', 'ü🎉', '\\x00ff10', '9999-12-31', '2024-02-29 23:59:59.999999',
  '2024-06-30 12:34:56.789+02', '23:59:59.999999', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '{\"k\": [1, 2.50, null]}'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 0, 0, 0, 1.1, 0.1, -0.000001, true, 'NULL', '\\N', '\\x00', '2020-01-01', '2020-01-01 00:00:00.5',
  '1999-12-31 23:59:59+00', '12:00:00', '123e4567-e89b-12d3-a456-426614174000', 'null');
INSERT INTO public.edges (id, i8, f8, num, t)
SELECT n, n::bigint * 1000003, n / 7.0, n / 3.0, repeat('x', (n % 50)::int) FROM generate_series(5, 5000) AS n;",
        )
        .await;
    let my = MysqlDb::new("pg_my_edges").await;
    let out = run_text(&job(&pair.source.url, "public.edges", &my.url, "edges", ""));
    assert_copied("pg -> mysql", &out, "rows 5,000", "4 of 4 partitions match");
    let out = run_text(&job(&my.url, "edges", &pair.target.url, "public.edges", ""));
    assert_copied("mysql -> pg", &out, "rows 5,000", "4 of 4 partitions match");
    assert_eq!(pair.assert_same("public.edges", "public.edges").await, 5000);
    // The MySQL table stride made: InnoDB, an exact collation, the mapping's types.
    let ddl = mysql_text(
        &my,
        "SELECT GROUP_CONCAT(CONCAT(COLUMN_NAME, ' ', COLUMN_TYPE) ORDER BY ORDINAL_POSITION SEPARATOR ', ') FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'edges'",
    )
    .await;
    for expected in [
        "i2 smallint",
        "f4 float",
        "num decimal(20,6)",
        "ok tinyint(1)",
        "v varchar(20)",
        "b longblob",
        "ts datetime(6)",
        "tz datetime(6)",
        "u char(36)",
    ] {
        assert!(ddl.contains(expected), "{expected} in {ddl}");
    }
    assert_eq!(
        mysql_text(
            &my,
            "SELECT CONCAT(ENGINE, ' ', TABLE_COLLATION) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'edges'"
        )
        .await,
        "InnoDB utf8mb4_nopad_bin"
    );
    // `stride verify` of the pg -> mysql job: count and checksum agree.
    let file = job_file(&job(&pair.source.url, "public.edges", &my.url, "edges", ""));
    let verified = stride(&["verify", file.path.to_str().unwrap()], &[]);
    assert_exit(&verified, 0);
    assert!(
        text(&verified).contains("4 of 4 partitions match"),
        "{}",
        text(&verified)
    );
    // A changed row on the MySQL side is found.
    my.exec("UPDATE edges SET t = 'changed' WHERE id = 4000")
        .await;
    let verified = stride(&["verify", file.path.to_str().unwrap()], &[]);
    assert_exit(&verified, 1);
}

/// kill -9 mid-run into a MySQL target, then the same job again: committed
/// partitions are skipped, none is lost or doubled.
#[tokio::test]
async fn a_mysql_target_resumes_after_kill_9_without_losing_or_doubling_a_row() {
    let db = TestDb::new("my_resume").await;
    db.exec(
        "CREATE TABLE public.big (id bigint PRIMARY KEY, v text, n numeric(12,2));
         INSERT INTO public.big SELECT n, md5(n::text), n / 100.0 FROM generate_series(1, 200000) AS n;",
    )
    .await;
    let my = MysqlDb::new("my_resume").await;
    for (what, mode) in [("append", ""), ("truncate", "mode = \"truncate\"")] {
        let target = format!("big_{what}");
        let toml = job(&db.url, "public.big", &my.url, &target, mode)
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
        assert_eq!(
            mysql_i64(
                &my,
                &format!("SELECT COUNT(*) + COUNT(DISTINCT id) FROM {target}")
            )
            .await,
            400_000,
            "{what}"
        );
    }
}

/// Zero and partial dates: exit 2 naming the columns and counts, nothing
/// written; with `zero_dates = "null"` they are NULL, and said so.
#[tokio::test]
async fn zero_dates_are_refused_by_column_or_written_as_null_when_the_job_says() {
    let my = MysqlDb::new("my_zero").await;
    my.exec(
        "SET SESSION sql_mode = '';
         CREATE TABLE z (id INT PRIMARY KEY, d DATE, dt DATETIME, ok DATE) ENGINE = InnoDB;
         INSERT INTO z VALUES (1, '0000-00-00', '2021-00-15 10:00:00', '2021-01-01'),
                              (2, '2021-02-00', '2020-01-01 00:00:00', NULL),
                              (3, '2020-05-05', NULL, '2022-02-02');",
    )
    .await;
    let pg = TestDb::new("my_zero_pg").await;
    // A time beyond a day, which PostgreSQL's time cannot hold: refused by name.
    my.exec(
        "CREATE TABLE long_time (id INT PRIMARY KEY, tm TIME) ENGINE = InnoDB;
         INSERT INTO long_time VALUES (1, '838:59:59'), (2, '12:00:00');",
    )
    .await;
    let refused = run_text(&job(&my.url, "long_time", &pg.url, "public.long_time", ""));
    assert_exit(&refused, 2);
    assert!(
        text(&refused).contains("column tm: holds times outside 00:00:00 to 24:00:00"),
        "{}",
        text(&refused)
    );
    let refused = run_text(&job(&my.url, "z", &pg.url, "public.z", ""));
    assert_exit(&refused, 2);
    let message = text(&refused);
    assert!(message.contains("in d: 2, dt: 1 "), "{message}");
    assert!(message.contains("target.zero_dates"), "{message}");
    assert_eq!(
        pg.scalar_i64("SELECT count(*) FROM pg_tables WHERE tablename = 'z'")
            .await,
        0,
        "nothing written"
    );
    let out = run_text(&job(
        &my.url,
        "z",
        &pg.url,
        "public.z",
        "zero_dates = \"null\"",
    ));
    assert_copied("zero_dates = null", &out, "rows 3", "partitions match");
    assert!(
        text(&out).contains("3 zero or partial dates written as NULL"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pg.scalar_string(
            "SELECT string_agg(id || ' ' || coalesce(d::text, '-') || ' ' || coalesce(dt::text, '-') || ' ' || coalesce(ok::text, '-'), '; ' ORDER BY id) FROM public.z"
        )
        .await,
        "1 - - 2021-01-01; 2 - 2020-01-01 00:00:00 -; 3 2020-05-05 - 2022-02-02"
    );
}

/// `tinyint(1)` is a boolean in PostgreSQL only when it holds 0, 1 and NULL;
/// a PostgreSQL boolean is a `tinyint(1)` in MySQL.
#[tokio::test]
async fn tinyint_1_is_a_boolean_only_when_every_value_is_0_or_1() {
    let my = MysqlDb::new("my_bool").await;
    my.exec(
        "CREATE TABLE flags (id INT PRIMARY KEY, f TINYINT(1)) ENGINE = InnoDB;
         INSERT INTO flags VALUES (1, 0), (2, 1), (3, NULL);
         CREATE TABLE counts (id INT PRIMARY KEY, f TINYINT(1)) ENGINE = InnoDB;
         INSERT INTO counts VALUES (1, 0), (2, 1), (3, 2), (4, -1);",
    )
    .await;
    let pg = TestDb::new("my_bool_pg").await;
    for table in ["flags", "counts"] {
        let out = run_text(&job(
            &my.url,
            table,
            &pg.url,
            &format!("public.{table}"),
            "",
        ));
        assert_copied(table, &out, "rows", "partitions match");
    }
    let type_of = |t: &str| {
        format!("SELECT data_type FROM information_schema.columns WHERE table_name = '{t}' AND column_name = 'f'")
    };
    assert_eq!(pg.scalar_string(&type_of("flags")).await, "boolean");
    assert_eq!(pg.scalar_string(&type_of("counts")).await, "smallint");
    assert_eq!(
        pg.scalar_string(
            "SELECT string_agg(coalesce(f::text, '-'), ',' ORDER BY id) FROM public.flags"
        )
        .await,
        "false,true,-"
    );
    assert_eq!(
        pg.scalar_string("SELECT string_agg(f::text, ',' ORDER BY id) FROM public.counts")
            .await,
        "0,1,2,-1"
    );
    // And back: a boolean becomes tinyint(1) holding 0 and 1.
    let out = run_text(&job(&pg.url, "public.flags", &my.url, "flags_back", ""));
    assert_copied("pg -> mysql", &out, "rows 3", "partitions match");
    assert_eq!(
        mysql_text(
            &my,
            "SELECT CONCAT(COLUMN_TYPE, ' ', (SELECT GROUP_CONCAT(IFNULL(f, '-') ORDER BY id) FROM flags_back)) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'flags_back' AND COLUMN_NAME = 'f'"
        )
        .await,
        "tinyint(1) 0,1,-"
    );
}

/// What MySQL refuses for now, and URLs it cannot read: exit 2, by name,
/// nothing written.
#[tokio::test]
async fn mysql_refusals_are_exit_2_by_name_before_anything_is_written() {
    let pg = TestDb::new("my_refuse_pg").await;
    pg.exec("CREATE TABLE public.t (id bigint PRIMARY KEY, v text); INSERT INTO public.t VALUES (1, 'a');")
        .await;
    let my = MysqlDb::new("my_refuse").await;
    my.exec("CREATE TABLE myisam (id BIGINT PRIMARY KEY, v TEXT) ENGINE = MyISAM")
        .await;
    let cases = [
        (
            "replace",
            job(&pg.url, "public.t", &my.url, "t", "mode = \"replace\""),
            "target.mode = \"replace\" is not supported yet into MySQL",
        ),
        (
            "myisam",
            job(&pg.url, "public.t", &my.url, "myisam", ""),
            "uses the MyISAM storage engine",
        ),
        (
            "bad ssl-mode",
            job(&pg.url, "public.t", &format!("{}?ssl-mode=sometimes", my.url), "t", ""),
            "target.url: ssl-mode=sometimes is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY",
        ),
        (
            "unknown parameter",
            job(&pg.url, "public.t", &format!("{}?sslmode=require", my.url), "t", ""),
            "target.url: unknown parameter \"sslmode\" for MySQL",
        ),
    ];
    for (what, toml, expected) in cases {
        let out = run_text(&toml);
        assert_exit(&out, 2);
        assert!(text(&out).contains(expected), "{what}: {}", text(&out));
    }
    assert_eq!(
        mysql_i64(
            &my,
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME <> 'myisam'"
        )
        .await,
        0,
        "nothing created"
    );
}

/// The summary says how the MySQL session travels, with MySQL's own key; a
/// password in the URL never shows. ssl-mode=REQUIRED against a server without
/// TLS fails to connect, saying so. (The local MariaDB has have_ssl =
/// DISABLED: a TLS session itself is not tested here.)
#[tokio::test]
async fn the_mysql_session_encryption_is_reported_with_ssl_mode() {
    let pg = TestDb::new("my_tls_pg").await;
    pg.exec("CREATE TABLE public.t (id bigint PRIMARY KEY); INSERT INTO public.t VALUES (1);")
        .await;
    let my = MysqlDb::new("my_tls").await;
    let out = run_text(&job(&pg.url, "public.t", &my.url, "t", ""));
    assert_exit(&out, 0);
    let mut admin = sqlx::MySqlConnection::connect(&mysql_url()).await.unwrap();
    let (_, have_ssl): (String, String) = sqlx::query_as("SHOW VARIABLES LIKE 'have_ssl'")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    if have_ssl != "YES" {
        assert!(
            text(&out).contains("target none, plain text (ssl-mode=PREFERRED)"),
            "{}",
            text(&out)
        );
        let required = run_text(&job(
            &pg.url,
            "public.t",
            &format!("{}?ssl-mode=REQUIRED", my.url),
            "t2",
            "",
        ));
        assert_ne!(required.status.code(), Some(0), "{}", text(&required));
        assert!(
            text(&required).contains("ssl-mode=REQUIRED"),
            "{}",
            text(&required)
        );
    } else {
        assert!(
            text(&out).contains("(ssl-mode=PREFERRED)"),
            "{}",
            text(&out)
        );
    }
}

/// A user without the LOCK TABLES privilege: several readers are refused
/// (exit 2, naming what to grant), one reader copies in one moment without
/// a lock. The user's password never shows, even when the login fails.
#[tokio::test]
async fn without_lock_tables_a_mysql_source_is_refused_unless_one_reader_reads_it() {
    let my = MysqlDb::new("my_nolock").await;
    my.exec("CREATE TABLE t (id INT PRIMARY KEY, v TEXT) ENGINE = InnoDB; INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd');")
        .await;
    let user = format!("stride_nolock_{}", std::process::id());
    my.exec(&format!(
        "DROP USER IF EXISTS '{user}'@'%'; CREATE USER '{user}'@'%' IDENTIFIED BY 'Sekr1t-pw'; GRANT SELECT ON `{}`.* TO '{user}'@'%';",
        my.name
    ))
    .await;
    let mut url = url::Url::parse(&my.url).unwrap();
    url.set_username(&user).unwrap();
    url.set_password(Some("Sekr1t-pw")).unwrap();
    let pg = TestDb::new("my_nolock_pg").await;
    let refused = run_text(
        &job(url.as_str(), "t", &pg.url, "public.t", "")
            .replace("[run]\n", "[run]\nparallelism = 2\n"),
    );
    assert_exit(&refused, 2);
    assert!(
        text(&refused).contains("may not run LOCK TABLES `t` READ"),
        "{}",
        text(&refused)
    );
    assert!(!text(&refused).contains("Sekr1t-pw"), "{}", text(&refused));
    let one = run_text(
        &job(url.as_str(), "t", &pg.url, "public.t", "")
            .replace("[run]\n", "[run]\nparallelism = 1\n"),
    );
    assert_copied("one reader", &one, "rows 4", "3 of 3 partitions match");
    url.set_password(Some("wrong-pw")).unwrap();
    let failed = run_text(&job(url.as_str(), "t", &pg.url, "public.u", ""));
    assert_ne!(failed.status.code(), Some(0));
    assert!(!text(&failed).contains("wrong-pw"), "{}", text(&failed));
    my.exec(&format!("DROP USER '{user}'@'%'")).await;
}

/// The write modes into MySQL, from MySQL partitioned by a datetime column and
/// from a query: upsert updates by key and keeps the target's own rows,
/// error-if-exists refuses a table with rows, overwrite builds the table again.
#[tokio::test]
async fn write_modes_into_mysql_from_a_datetime_partitioned_table_and_a_query() {
    let my = MysqlDb::new("my_modes").await;
    my.exec(
        "CREATE TABLE ev (id INT PRIMARY KEY, at DATETIME(6), v VARCHAR(20)) ENGINE = InnoDB;
         INSERT INTO ev VALUES (1, '2020-01-01 00:00:00', 'a'), (2, '2021-06-01 12:00:00.5', 'b'),
                               (3, NULL, 'c'), (4, '2024-12-31 23:59:59.999999', 'd');
         CREATE TABLE up (id INT PRIMARY KEY, at DATETIME(6), v VARCHAR(20)) ENGINE = InnoDB;
         INSERT INTO up VALUES (1, NULL, 'old'), (99, NULL, 'mine');",
    )
    .await;
    let by_time = |target: &str, rest: &str| {
        job(&my.url, "ev", &my.url, target, rest).replace("column = \"id\"", "column = \"at\"")
    };
    let out = run_text(
        &by_time("up", "mode = \"upsert\"").replace("verify = \"checksum\"", "verify = \"none\""),
    );
    assert_exit(&out, 0);
    assert_eq!(
        mysql_text(&my, "SELECT GROUP_CONCAT(id, v ORDER BY id) FROM up").await,
        "1a,2b,3c,4d,99mine"
    );
    let refused = run_text(&by_time("up", "mode = \"error-if-exists\""));
    assert_exit(&refused, 2);
    assert!(
        text(&refused).contains("already holds rows"),
        "{}",
        text(&refused)
    );
    let out = run_text(&by_time("up", "mode = \"overwrite\""));
    assert_copied("overwrite", &out, "rows 4", "partitions match");
    assert_eq!(
        mysql_text(&my, "SELECT GROUP_CONCAT(id, v ORDER BY id) FROM up").await,
        "1a,2b,3c,4d"
    );
    let query = format!(
        "[source]\nurl = \"{0}\"\nquery = \"SELECT id, v FROM ev WHERE id > 1\"\n[partition]\ncolumn = \"id\"\ncount = 2\n[target]\nurl = \"{0}\"\ntable = \"from_query\"\n[run]\nparallelism = 1\nverify = \"checksum\"\n",
        my.url
    );
    let out = run_text(&query);
    assert_copied("query", &out, "rows 3", "2 of 2 partitions match");
    let refused = run_text(&query.replace("parallelism = 1", "parallelism = 2"));
    assert_exit(&refused, 2);
    assert!(
        text(&refused).contains("source.query"),
        "{}",
        text(&refused)
    );
}

/// examples/mysql-migration.toml runs as shipped: a MySQL table with a zero
/// date, an unsigned bigint and a tinyint(1) into PostgreSQL.
#[tokio::test]
async fn the_mysql_migration_example_runs_as_shipped() {
    let my = MysqlDb::new("my_example").await;
    my.exec(
        "SET SESSION sql_mode = '';
         CREATE TABLE orders (id INT UNSIGNED PRIMARY KEY, placed DATE, paid TINYINT(1), total DECIMAL(12,2), note JSON, ref BIGINT UNSIGNED) ENGINE = InnoDB;
         INSERT INTO orders VALUES (1, '0000-00-00', 1, 10.50, '{\"a\": 1}', 0), (2, '2024-01-02', 0, 0.00, NULL, NULL),
                                   (4294967295, '2024-02-29', NULL, -1.25, '[]', 18446744073709551615);",
    )
    .await;
    let pg = TestDb::new("my_example_pg").await;
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mysql-migration.toml");
    let out = stride(
        &["run", example.to_str().unwrap()],
        &[
            ("MYSQL_SOURCE_URL", my.url.as_str()),
            ("PG_TARGET_URL", pg.url.as_str()),
        ],
    );
    assert_copied("example", &out, "rows 3", "partitions match");
    assert!(
        text(&out).contains("1 zero or partial dates written as NULL"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pg.scalar_string(
            "SELECT string_agg(id || ' ' || coalesce(placed::text, '-') || ' ' || coalesce(paid::text, '-') || ' ' || total || ' ' || coalesce(note::text, '-') || ' ' || coalesce(ref::text, '-'), '; ' ORDER BY id) FROM public.orders"
        )
        .await,
        "1 - true 10.50 {\"a\": 1} 0; 2 2024-01-02 false 0.00 - -; 4294967295 2024-02-29 - -1.25 [] 18446744073709551615"
    );
}

/// A MySQL target connection killed in the middle of a partition's INSERTs:
/// the partition rolls back and is retried, and every row is there once.
#[tokio::test]
async fn a_mysql_target_connection_lost_mid_partition_is_retried_without_doubling_a_row() {
    let db = TestDb::new("my_lost").await;
    db.exec(
        "CREATE TABLE public.big (id bigint PRIMARY KEY, v text);
         INSERT INTO public.big SELECT n, md5(n::text) FROM generate_series(1, 200000) AS n;",
    )
    .await;
    let my = MysqlDb::new("my_lost").await;
    let toml = job(&db.url, "public.big", &my.url, "big", "")
        .replace("[run]\n", "[run]\nparallelism = 2\n");
    let file = job_file(&toml);
    let path = file.path.to_str().unwrap().to_string();
    let run = tokio::task::spawn_blocking(move || stride(&["run", &path], &[]));
    // Kill the first connection seen inserting into the table.
    let mut admin = sqlx::MySqlConnection::connect(&mysql_url()).await.unwrap();
    let mut killed = None;
    for _ in 0..2000 {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST WHERE DB = ? AND INFO LIKE 'INSERT INTO `big`%' LIMIT 1",
        )
        .bind(&my.name)
        .fetch_optional(&mut admin)
        .await
        .unwrap();
        if let Some(id) = found {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}")))
                .execute(&mut admin)
                .await
                .unwrap();
            killed = Some(id);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let out = run.await.unwrap();
    assert!(killed.is_some(), "no INSERT seen: {}", text(&out));
    assert_copied(
        "lost connection",
        &out,
        "rows 200,000",
        "4 of 4 partitions match",
    );
    assert!(text(&out).contains("retrying"), "{}", text(&out));
    assert_eq!(
        mysql_i64(&my, "SELECT COUNT(*) + COUNT(DISTINCT id) FROM big").await,
        400_000
    );
}

/// `MYSQL_PWD` set but empty means no password, as for the mysql client: a
/// user without a password logs in (sqlx alone would send the scramble of "",
/// which the server refuses).
#[tokio::test]
async fn an_empty_mysql_pwd_logs_in_without_a_password() {
    let pg = TestDb::new("my_pwd_pg").await;
    pg.exec("CREATE TABLE public.t (id bigint PRIMARY KEY); INSERT INTO public.t VALUES (1), (2);")
        .await;
    let my = MysqlDb::new("my_pwd").await;
    if url::Url::parse(&my.url).unwrap().password().is_some() {
        return; // The test server's user has a password: nothing to show here.
    }
    let file = job_file(&job(&pg.url, "public.t", &my.url, "t", ""));
    let path = file.path.display().to_string();
    let out = stride(&["run", &path], &[("MYSQL_PWD", "")]);
    assert_exit(&out, 0);
    assert_eq!(mysql_i64(&my, "SELECT count(*) FROM t").await, 2);
}
