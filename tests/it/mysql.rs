//! The MySQL/MariaDB test harness (`common::MysqlDb`) against the server at
//! `STRIDE_TEST_MYSQL_URL`: a database of its own, values that travel back
//! exactly, and the database gone afterwards. stride has no MySQL engine yet
//! (issue 14); its tests will stand on this.

use chrono::{NaiveDate, NaiveDateTime};
use sqlx::Connection;

use crate::common::{mysql_url, MysqlDb};

type Row = (
    i32,
    Option<i64>,
    Option<u64>,
    Option<String>,
    Option<f64>,
    Option<String>,
    Option<Vec<u8>>,
    Option<NaiveDateTime>,
    Option<NaiveDate>,
);

fn datetime(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").unwrap()
}

fn date(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
}

#[tokio::test]
async fn a_fresh_mysql_database_keeps_nulls_emoji_and_extremes_exactly() {
    let db = MysqlDb::new("harness").await;
    db.exec(
        "CREATE TABLE t (
            id INT PRIMARY KEY,
            i BIGINT NULL,
            u BIGINT UNSIGNED NULL,
            d DECIMAL(65,30) NULL,
            f DOUBLE NULL,
            s VARCHAR(100) NULL,
            b VARBINARY(16) NULL,
            dt DATETIME(6) NULL,
            dd DATE NULL
        ) ENGINE=InnoDB",
    )
    .await;

    // Row 1 as literals (text protocol), row 2 as bound parameters (binary
    // protocol), row 3 all NULL.
    db.exec(
        "INSERT INTO t VALUES
            (1, -9223372036854775808, 18446744073709551615,
             99999999999999999999999999999999999.999999999999999999999999999999,
             1.7976931348623157e308, '🦀 crab, ñ, 中文', x'00ff0a',
             '9999-12-31 23:59:59.999999', '1000-01-01'),
            (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    .await;
    let mut conn = db.conn().await;
    sqlx::query("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(2)
        .bind(i64::MAX)
        .bind(0u64)
        .bind("-0.000000000000000000000000000001")
        .bind(-2.2250738585072014e-308)
        .bind("")
        .bind(Vec::<u8>::new())
        .bind(datetime("1000-01-01 00:00:00"))
        .bind(date("9999-12-31"))
        .execute(&mut conn)
        .await
        .unwrap();

    // DECIMAL read as its text: the exact digits, whatever a client's decimal
    // type could hold.
    let rows: Vec<Row> =
        sqlx::query_as("SELECT id, i, u, CAST(d AS CHAR), f, s, b, dt, dd FROM t ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                1,
                Some(i64::MIN),
                Some(u64::MAX),
                Some("99999999999999999999999999999999999.999999999999999999999999999999".into()),
                Some(f64::MAX),
                Some("🦀 crab, ñ, 中文".into()),
                Some(vec![0x00, 0xff, 0x0a]),
                Some(datetime("9999-12-31 23:59:59.999999")),
                Some(date("1000-01-01")),
            ),
            (
                2,
                Some(i64::MAX),
                Some(0),
                Some("-0.000000000000000000000000000001".into()),
                Some(-2.2250738585072014e-308),
                Some(String::new()),
                Some(Vec::new()),
                Some(datetime("1000-01-01 00:00:00")),
                Some(date("9999-12-31")),
            ),
            (3, None, None, None, None, None, None, None, None),
        ]
    );

    // The emoji is stored as four bytes of utf8mb4 (one character), not
    // mangled into '?' by a 3-byte utf8 column.
    let (chars, hex): (i64, String) =
        sqlx::query_as("SELECT CHAR_LENGTH(s), HEX(LEFT(s, 1)) FROM t WHERE id = 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!((chars, hex.as_str()), (13, "F09FA680"));
    conn.close().await.ok();

    // Dropping the value drops the database.
    let name = db.name.clone();
    drop(db);
    let mut admin = sqlx::MySqlConnection::connect(&mysql_url()).await.unwrap();
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name = ?",
    )
    .bind(&name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(left.is_empty(), "database {name} is still there");
}
