//! Partition strategies on a skewed table (90% of the rows in 10% of the key
//! range): stride's equal widths give a 10x spread of rows between partitions,
//! quantile (from fresh statistics or from a sample) and ctid stay within 2x, and
//! every strategy copies exactly (counts and checksums).

use crate::common::*;

/// `skew (id bigint, pad text)`: 180,000 rows on ids 0..20,000, 20,000 rows on
/// ids 20,000..200,000, and 5 rows with a NULL id, in id order on disk.
async fn seed(db: &TestDb) {
    db.exec(
        "CREATE TABLE skew (id bigint, pad text);
         ALTER TABLE skew SET (autovacuum_enabled = false);
         INSERT INTO skew
         SELECT CASE WHEN g < 180000 THEN g / 9 ELSE 20000 + (g - 180000) * 9 END, md5(g::text)
         FROM generate_series(0, 199999) g ORDER BY 1;
         INSERT INTO skew SELECT NULL, 'no id ' || g FROM generate_series(1, 5) g;",
    )
    .await;
    // ANALYZE in a transaction of its own, after the rows are committed, so the
    // statistics count them as seen.
    db.exec("ANALYZE skew").await;
}

fn job(pair: &Pair, partition: &str) -> JobFile {
    job_file(&job_text(
        pair,
        "table = \"skew\"",
        &format!("[partition]\n{partition}\n[run]\nverify = \"checksum\""),
        "mode = \"truncate\"",
    ))
}

/// Runs the job; returns each partition's rows as the summary reports them and
/// the plan's first lines.
fn run_and_count(job: &JobFile) -> (Vec<i64>, String) {
    let path = job.path.to_str().unwrap();
    let plan = stride(&["plan", path], &[]);
    assert_exit(&plan, 0);
    let out = stride(&["run", "--summary-json", "-", path], &[]);
    assert_exit(&out, 0);
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let rows = summary["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rows"].as_i64().unwrap())
        .collect();
    (rows, String::from_utf8_lossy(&plan.stdout).into_owned())
}

fn spread(rows: &[i64]) -> f64 {
    *rows.iter().max().unwrap() as f64 / (*rows.iter().min().unwrap()).max(1) as f64
}

#[tokio::test]
async fn quantile_and_ctid_even_out_a_skewed_table_that_stride_does_not() {
    let pair = Pair::new("strategies_skew").await;
    seed(&pair.source).await;

    let (stride_rows, plan) = run_and_count(&job(&pair, "column = \"id\"\ncount = 8"));
    assert_eq!(stride_rows.len(), 8);
    assert!(spread(&stride_rows) >= 10.0, "{stride_rows:?}");
    assert!(plan.contains("skewed; strategy = \"quantile\""), "{plan}");
    assert_eq!(pair.assert_same("skew", "skew").await, 200_005);

    let (quantile_rows, plan) = run_and_count(&job(
        &pair,
        "column = \"id\"\nstrategy = \"quantile\"\ncount = 8",
    ));
    assert_eq!(quantile_rows.len(), 8, "{plan}");
    assert!(spread(&quantile_rows) <= 2.0, "{quantile_rows:?}\n{plan}");
    assert!(plan.contains("from the planner's statistics"), "{plan}");
    assert_eq!(pair.assert_same("skew", "skew").await, 200_005);

    let (ctid_rows, plan) = run_and_count(&job(&pair, "strategy = \"ctid\"\ncount = 8"));
    assert_eq!(ctid_rows.len(), 8, "{plan}");
    assert!(spread(&ctid_rows) <= 2.0, "{ctid_rows:?}\n{plan}");
    assert!(plan.contains("strategy ctid:"), "{plan}");
    assert_eq!(pair.assert_same("skew", "skew").await, 200_005);

    // Statistics gone stale (over a tenth of the rows changed since ANALYZE):
    // quantile boundaries come from a sample instead, and still even out.
    pair.source
        .exec("UPDATE skew SET pad = upper(pad) WHERE id % 3 = 0")
        .await;
    let (sampled_rows, plan) = run_and_count(&job(
        &pair,
        "column = \"id\"\nstrategy = \"quantile\"\ncount = 8",
    ));
    assert!(
        plan.contains("from all 200,005 rows") || plan.contains("from a sample"),
        "{plan}"
    );
    assert!(spread(&sampled_rows) <= 2.0, "{sampled_rows:?}\n{plan}");
    assert_eq!(pair.assert_same("skew", "skew").await, 200_005);
}

#[tokio::test]
async fn without_a_count_quantile_and_ctid_queue_a_few_partitions_per_connection() {
    let pair = Pair::new("strategies_queue").await;
    seed(&pair.source).await;
    // Four connections by default, four partitions each.
    let (rows, plan) = run_and_count(&job(&pair, "strategy = \"ctid\""));
    assert_eq!(rows.len(), 16, "{plan}");
    assert_eq!(rows.iter().sum::<i64>(), 200_005);
    let (rows, plan) = run_and_count(&job_file(&job_text(
        &pair,
        "table = \"skew\"",
        "[partition]\ncolumn = \"id\"\nstrategy = \"quantile\"\n[run]\nparallelism = 2",
        "mode = \"truncate\"",
    )));
    assert_eq!(rows.len(), 8, "{plan}");
    assert_eq!(pair.assert_same("skew", "skew").await, 200_005);
}

#[tokio::test]
async fn a_resumed_quantile_run_keeps_its_boundaries() {
    let pair = Pair::new("strategies_resume").await;
    seed(&pair.source).await;
    // Slow writes (small INSERT batches, one partition at a time) leave time to interrupt.
    let job = job_file(&job_text(
        &pair,
        "table = \"skew\"",
        "[partition]\ncolumn = \"id\"\nstrategy = \"quantile\"\ncount = 8\n[run]\nparallelism = 1",
        "method = \"insert\"\nbatch_size = 100",
    ));
    let path = job.path.to_str().unwrap();
    let ranges = |out: &std::process::Output| -> Vec<String> {
        let summary: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)));
        summary["detail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["range"].as_str().unwrap().to_string())
            .collect()
    };
    let running =
        Running::start(&["run", "--summary-json", "-", path]).wait_for_line("partition written");
    running.signal("INT");
    let first = running.finish();
    assert_exit(&first, 130);
    // New statistics would cut elsewhere: ANALYZE after moving many rows.
    pair.source
        .exec("UPDATE skew SET id = id + 150000 WHERE id < 5000")
        .await;
    pair.source.exec("ANALYZE skew").await;
    let resumed = stride(&["run", "--summary-json", "-", path], &[]);
    assert_exit(&resumed, 0);
    assert_eq!(
        ranges(&first),
        ranges(&resumed),
        "{}\n{}",
        text(&first),
        text(&resumed)
    );
    assert_eq!(ranges(&first).len(), 8);
}

#[tokio::test]
async fn strategies_refuse_what_they_cannot_do_before_writing() {
    let pair = Pair::new("strategies_bad").await;
    seed(&pair.source).await;
    pair.source
        .exec("CREATE VIEW skew_view AS SELECT * FROM skew")
        .await;
    let cases = [
        ("table = \"skew\"", "strategy = \"ctid\"\ncolumn = \"id\"", "partition.column: \"id\" is set, but strategy \"ctid\""),
        ("table = \"skew\"", "strategy = \"quantile\"", "partition.column: missing"),
        ("table = \"skew\"", "strategy = \"quantile\"\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 9", "partition.lower_bound: bounds set the stride"),
        ("table = \"skew_view\"", "strategy = \"ctid\"", "partition.strategy: \"ctid\" splits a table by its physical blocks, and the source is a view"),
        ("query = \"SELECT * FROM skew\"", "strategy = \"ctid\"", "and the source is a query"),
        ("table = \"skew\"", "strategy = \"random\"", "partition.strategy"),
        ("table = \"skew\"", "strategy = \"quantile\"\ncolumn = \"pad\"", "partition.column: column \"pad\" is of type text"),
    ];
    for (source, partition, expected) in cases {
        let job = job_file(&job_text(
            &pair,
            source,
            &format!("[partition]\n{partition}"),
            "table = \"copied\"",
        ));
        let out = stride(&["run", job.path.to_str().unwrap()], &[]);
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

#[tokio::test]
async fn ctid_runs_are_never_pieced_together_from_two_snapshots() {
    let pair = Pair::new("strategies_ctid_snap").await;
    seed(&pair.source).await;
    // Shards read a snapshot each: refused before anything is written.
    let shards = job(&pair, "strategy = \"ctid\"\ncount = 8");
    let out = stride(&["prepare", shards.path.to_str().unwrap()], &[]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("\"ctid\" block ranges are exact only within one snapshot"),
        "{}",
        text(&out)
    );

    // An interrupted truncate run starts over rather than resuming: an updated
    // row has moved to another block in between.
    let job = job_file(&job_text(
        &pair,
        "table = \"skew\"",
        "[partition]\nstrategy = \"ctid\"\ncount = 8\n[run]\nparallelism = 1",
        "mode = \"truncate\"\nmethod = \"insert\"\nbatch_size = 100",
    ));
    let path = job.path.to_str().unwrap();
    let running = Running::start(&["run", path]).wait_for_line("partition written");
    running.signal("INT");
    assert_exit(&running.finish(), 130);
    pair.source
        .exec("UPDATE skew SET pad = 'moved' WHERE id < 500")
        .await;
    let again = stride(&["run", path], &[]);
    assert_exit(&again, 0);
    assert!(text(&again).contains("starting over"), "{}", text(&again));
    assert_eq!(pair.assert_same("skew", "skew").await, 200_005);

    // In append mode starting over would add rows twice: refused, rows untouched.
    pair.target
        .exec("DROP TABLE skew; DROP TABLE stride_checkpoints")
        .await;
    let append = job_file(&job_text(
        &pair,
        "table = \"skew\"",
        "[partition]\nstrategy = \"ctid\"\ncount = 8\n[run]\nparallelism = 1",
        "method = \"insert\"\nbatch_size = 100",
    ));
    let path = append.path.to_str().unwrap();
    let running = Running::start(&["run", path]).wait_for_line("partition written");
    running.signal("INT");
    assert_exit(&running.finish(), 130);
    let before = pair.target.count("skew").await;
    let refused = stride(&["run", path], &[]);
    assert_exit(&refused, 1);
    assert!(
        text(&refused).contains("by block range"),
        "{}",
        text(&refused)
    );
    assert_eq!(pair.target.count("skew").await, before);
}
