//! `stride init`: the job file it writes picks the partition column and the
//! strategy a user would, says why in comments, holds no password, and runs as
//! written: the copy it makes equals the source.

use crate::common::*;

/// Runs `stride init` for `table` into a file, and the job it wrote.
fn init(pair: &Pair, table: &str) -> (String, JobFile) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.toml");
    let out = stride(
        &[
            "init",
            "--source",
            &pair.source.url,
            "--table",
            table,
            "--target",
            &pair.target.url,
            "-o",
            path.to_str().unwrap(),
        ],
        &[],
    );
    assert_exit(&out, 0);
    let text = std::fs::read_to_string(&path).unwrap();
    let job = job_file(&text);
    (text, job)
}

#[tokio::test]
async fn init_writes_a_job_that_copies_the_table_as_a_user_would_split_it() {
    let pair = Pair::new("init_jobs").await;
    pair.source
        .exec(
            "CREATE TABLE even (id bigint PRIMARY KEY, pad text);
             INSERT INTO even SELECT g, md5(g::text) FROM generate_series(1, 150000) g;
             CREATE TABLE skewed (n bigint, at date, pad text);
             CREATE INDEX ON skewed (at);
             INSERT INTO skewed SELECT g, CASE WHEN g <= 135000 THEN DATE '2020-01-01' + g % 30
                                              ELSE DATE '2020-01-31' + g % 300 END, 'x'
             FROM generate_series(1, 150000) g;
             CREATE TABLE heap (payload jsonb);
             INSERT INTO heap SELECT jsonb_build_object('n', g) FROM generate_series(1, 150000) g;
             CREATE TABLE small (id int PRIMARY KEY);
             INSERT INTO small SELECT generate_series(1, 100);",
        )
        .await;
    pair.source.exec("ANALYZE").await;

    for (table, expect) in [
        ("even", "strategy = \"stride\"\ncolumn = \"id\""),
        ("skewed", "strategy = \"quantile\"\ncolumn = \"at\""),
        ("heap", "strategy = \"ctid\""),
        ("small", "# No [partition] section"),
    ] {
        let (text, job) = init(&pair, table);
        assert!(text.contains(expect), "{table}: {expect}\n{text}");
        let out = run_job(&job.path);
        assert_exit(&out, 0);
        pair.assert_same(table, table).await;
    }
}

#[tokio::test]
async fn init_refuses_a_missing_table_an_existing_file_and_writes_no_password() {
    let pair = Pair::new("init_bad").await;
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY)")
        .await;
    let missing = stride(
        &["init", "--source", &pair.source.url, "--table", "nope"],
        &[],
    );
    assert_exit(&missing, 2);
    assert!(
        text(&missing).contains("--table: table \"nope\" does not exist"),
        "{}",
        text(&missing)
    );

    // A password in the URL given stays out of the file.
    let with_password =
        pair.source
            .url
            .replacen("postgres://postgres@", "postgres://postgres:s3cret-pw@", 1);
    let out = stride(&["init", "--source", &with_password, "--table", "t"], &[]);
    assert_exit(&out, 0);
    assert!(!text(&out).contains("s3cret-pw"), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("url = \"${SOURCE_URL:-postgres://postgres@"),
        "{}",
        text(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.toml");
    std::fs::write(&path, "keep me").unwrap();
    let args = [
        "init",
        "--source",
        &pair.source.url,
        "--table",
        "t",
        "-o",
        path.to_str().unwrap(),
    ];
    let refused = stride(&args, &[]);
    assert_exit(&refused, 2);
    assert!(text(&refused).contains("--output:"), "{}", text(&refused));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    let mut forced = args.to_vec();
    forced.push("--force");
    assert_exit(&stride(&forced, &[]), 0);
    assert!(std::fs::read_to_string(&path).unwrap().contains("[source]"));
}

/// A partitioned table (the DVD-rental `payment`, by month, one month split
/// again by hash) is sized by its partitions, split by its key as a user would,
/// never by blocks (it has none of its own): the job init writes copies it, and
/// a job with `strategy = "ctid"` on it is exit 2 naming `partition.strategy`.
#[tokio::test]
async fn init_sizes_a_partitioned_table_by_its_partitions() {
    let pair = Pair::new("init_parted").await;
    let ddl = "CREATE TABLE payment (payment_id integer NOT NULL, customer_id integer, amount numeric(5,2),
                   payment_date timestamp NOT NULL, PRIMARY KEY (payment_id, payment_date))
               PARTITION BY RANGE (payment_date);
               CREATE TABLE payment_2007_02 PARTITION OF payment FOR VALUES FROM ('2007-02-01') TO ('2007-03-01');
               CREATE TABLE payment_2007_03 PARTITION OF payment FOR VALUES FROM ('2007-03-01') TO ('2007-04-01');
               CREATE TABLE payment_2007_04 PARTITION OF payment FOR VALUES FROM ('2007-04-01') TO ('2007-05-01')
                   PARTITION BY HASH (payment_id);
               CREATE TABLE payment_2007_04_a PARTITION OF payment_2007_04 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
               CREATE TABLE payment_2007_04_b PARTITION OF payment_2007_04 FOR VALUES WITH (MODULUS 2, REMAINDER 1);";
    pair.source.exec(ddl).await;
    pair.source
        .exec(
            "INSERT INTO payment
             SELECT g, g % 599, (g % 1200) / 100.0 - 0.01,
                    CASE WHEN g <= 40000 THEN TIMESTAMP '2007-02-01' + g * INTERVAL '1 minute'
                         WHEN g <= 90000 THEN TIMESTAMP '2007-03-01' + (g - 40000) * INTERVAL '30 seconds'
                         ELSE TIMESTAMP '2007-04-01' + (g - 90000) * INTERVAL '30 seconds' END
             FROM generate_series(1, 150000) g;",
        )
        .await;
    pair.source.exec("VACUUM ANALYZE payment").await;
    let leaves = [
        "payment_2007_02",
        "payment_2007_03",
        "payment_2007_04_a",
        "payment_2007_04_b",
    ];
    let mut bytes = 0;
    for leaf in leaves {
        bytes += pair
            .source
            .scalar_i64(&format!("SELECT pg_table_size('{leaf}')::int8"))
            .await;
    }
    assert!(bytes > 0);
    let (written, job) = init(&pair, "payment");
    assert!(
        written.starts_with(&format!(
            "# Written by `stride init` from \"payment\": about 150,000 rows, {}.\n",
            stride::report::human_bytes(u64::try_from(bytes).unwrap())
        )),
        "{written}"
    );
    assert!(
        written.contains("strategy = \"stride\"\ncolumn = \"payment_id\"\ncount = 4"),
        "{written}"
    );
    pair.target.exec(ddl).await;
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert_eq!(pair.assert_same("payment", "payment").await, 150_000);
    assert_eq!(
        pair.assert_same("payment_2007_04_b", "payment_2007_04_b")
            .await,
        pair.source.count("payment_2007_04_b").await
    );

    let ctid = job_file(&job_text(
        &pair,
        "table = \"payment\"",
        "[partition]\nstrategy = \"ctid\"\ncount = 4",
        "mode = \"truncate\"",
    ));
    let before = pair.target.checksum("payment").await;
    for command in ["plan", "check", "run"] {
        let out = stride(&[command, ctid.path.to_str().unwrap()], &[]);
        assert_exit(&out, 2);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(
                "partition.strategy: \"ctid\" splits a table by its physical blocks, and the source is a partitioned table (expected source.table naming a table or materialized view, or another strategy)"
            ),
            "{command}: {}",
            text(&out)
        );
    }
    assert_eq!(
        pair.target.checksum("payment").await,
        before,
        "nothing written"
    );
}
