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
