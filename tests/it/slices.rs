//! A slice of production data for a CI database: `source.sample` (TABLESAMPLE
//! BERNOULLI, repeatable) and `source.limit` (the first rows by the partition
//! column). Every partition reads the same slice, so the copy is exact against
//! the same slice read by hand, and verify and the coverage check pass.

use crate::common::*;

/// `events (id bigint, kind text, pad text)`: ids 1..=20,000, a fifth of them
/// of kind 'b', and 3 rows with a NULL id.
async fn seed(db: &TestDb) {
    db.exec(
        "CREATE TABLE events (id bigint, kind text, pad text);
         INSERT INTO events SELECT g, CASE WHEN g % 5 = 0 THEN 'b' ELSE 'a' END, md5(g::text)
         FROM generate_series(1, 20000) g;
         INSERT INTO events VALUES (NULL, 'a', 'x'), (NULL, 'b', 'y'), (NULL, 'b', 'z');
         CREATE VIEW events_view AS SELECT * FROM events;",
    )
    .await;
}

fn job(pair: &Pair, source: &str, partition: &str) -> JobFile {
    job_file(&job_text(
        pair,
        source,
        &format!("{partition}\n[run]\nverify = \"checksum\""),
        "table = \"copied\"\nmode = \"truncate\"",
    ))
}

#[tokio::test]
async fn a_sample_is_the_same_slice_in_every_partition_and_every_run() {
    let pair = Pair::new("slices_sample").await;
    seed(&pair.source).await;
    let job = job(
        &pair,
        "table = \"events\"\nsample = 0.1",
        "[partition]\ncolumn = \"id\"\ncount = 4",
    );
    assert_exit(&run_job(&job.path), 0);
    let expected = pair
        .source
        .checksum("(SELECT * FROM events TABLESAMPLE BERNOULLI (10) REPEATABLE (0))")
        .await;
    assert!(
        (1_500..=2_500).contains(&expected.0),
        "about a tenth of 20,003 rows: {}",
        expected.0
    );
    assert_eq!(pair.target.checksum("copied").await, expected);
    // The next run copies the very same slice.
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(pair.target.checksum("copied").await, expected);
}

#[tokio::test]
async fn a_limit_keeps_the_first_rows_by_the_partition_column() {
    let pair = Pair::new("slices_limit").await;
    seed(&pair.source).await;
    let job = job(
        &pair,
        "table = \"events\"\nwhere = \"kind = 'b'\"\nlimit = 1000",
        "[partition]\ncolumn = \"id\"\nstrategy = \"quantile\"\ncount = 4",
    );
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    // NULLs sort last, so the first 1,000 of kind 'b' are ids 5, 10, ... 5,000.
    let expected = pair
        .source
        .checksum("(SELECT * FROM events WHERE kind = 'b' AND id <= 5000)")
        .await;
    assert_eq!(expected.0, 1000);
    assert_eq!(
        pair.target.checksum("copied").await,
        expected,
        "{}",
        text(&out)
    );

    // A query without partitions, and a limit larger than the source.
    let job = job_file(&job_text(
        &pair,
        "query = \"SELECT id, pad FROM events_view WHERE kind = 'a'\"\nlimit = 100000",
        "",
        "table = \"from_query\"",
    ));
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(pair.target.count("from_query").await, 16_001);
}

#[tokio::test]
async fn slices_refuse_what_they_cannot_do_before_writing() {
    let pair = Pair::new("slices_bad").await;
    seed(&pair.source).await;
    let cases = [
        (
            "table = \"events\"\nsample = 0",
            "",
            "source.sample: 0 is out of range",
        ),
        (
            "table = \"events\"\nsample = 1.5",
            "",
            "source.sample: 1.5 is out of range",
        ),
        (
            "query = \"SELECT * FROM events\"\nsample = 0.5",
            "",
            "source.sample: TABLESAMPLE needs source.table",
        ),
        (
            "table = \"events_view\"\nsample = 0.5",
            "",
            "source.sample: TABLESAMPLE needs a table or materialized view",
        ),
        (
            "table = \"events\"\nlimit = 0",
            "",
            "source.limit: 0 is out of range",
        ),
        (
            "table = \"events\"\nlimit = 10",
            "[partition]\nstrategy = \"ctid\"",
            "partition.strategy: \"ctid\" reads block ranges",
        ),
    ];
    for (source, partition, expected) in cases {
        let job = job(&pair, source, partition);
        let out = run_job(&job.path);
        assert_exit(&out, 2);
        assert!(text(&out).contains(expected), "{expected}\n{}", text(&out));
    }
    assert_eq!(
        pair.target
            .scalar_i64(
                "SELECT count(*) FROM pg_class WHERE relname IN ('copied', 'stride_checkpoints')"
            )
            .await,
        0
    );
}
