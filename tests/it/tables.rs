//! Several tables in one job file (`[[tables]]`): each entry with its own
//! partitioning and target keys, run in the order given or concurrently under
//! one connection budget, checked all before any is written, one summary.

use crate::common::*;

async fn seed(db: &TestDb) {
    db.exec(
        "CREATE TABLE orders (id bigint PRIMARY KEY, total numeric(12,2), at date);
         INSERT INTO orders SELECT g, g * 1.5, DATE '2026-01-01' + g % 300 FROM generate_series(1, 30000) g;
         CREATE TABLE customers (id int PRIMARY KEY, name text);
         INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 5000) g;
         CREATE TABLE notes (body text);
         INSERT INTO notes SELECT md5(g::text) FROM generate_series(1, 2000) g;",
    )
    .await;
}

/// Three tables: orders in 4 partitions by id, customers whole into another
/// name, the notes rows of a query; `run` adds keys to `[run]`.
fn three_tables(pair: &Pair, run: &str) -> JobFile {
    job_file(&format!(
        "[source]\nurl = \"{}\"\n\n[target]\nurl = \"{}\"\nmode = \"truncate\"\n\n[run]\nverify = \"count\"\n{run}\n\n\
         [[tables]]\ntable = \"orders\"\n[tables.partition]\ncolumn = \"id\"\ncount = 4\n\n\
         [[tables]]\ntable = \"customers\"\n[tables.target]\ntable = \"customers_copy\"\n\n\
         [[tables]]\nquery = \"SELECT body FROM notes WHERE body LIKE 'a%'\"\n[tables.target]\ntable = \"a_notes\"\nmode = \"append\"\n",
        pair.source.url, pair.target.url
    ))
}

async fn assert_all_copied(pair: &Pair) {
    pair.assert_same("orders", "orders").await;
    pair.assert_same("customers", "customers_copy").await;
    let expected = pair
        .source
        .checksum("(SELECT body FROM notes WHERE body LIKE 'a%')")
        .await;
    assert_eq!(pair.target.checksum("a_notes").await, expected);
}

#[tokio::test]
async fn tables_run_in_order_with_one_summary() {
    let pair = Pair::new("tables_order").await;
    seed(&pair.source).await;
    let job = three_tables(&pair, "");
    let out = stride(
        &["run", "--summary-json", "-", job.path.to_str().unwrap()],
        &[],
    );
    assert_exit(&out, 0);
    assert_all_copied(&pair).await;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(said.contains("tables 3 of 3 done"), "{}", text(&out));
    assert!(said.contains("\"customers_copy\""), "{said}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], "succeeded");
    assert_eq!(summary["tables"].as_array().unwrap().len(), 3);
    let notes = pair
        .source
        .scalar_i64("SELECT count(*) FROM notes WHERE body LIKE 'a%'")
        .await;
    assert_eq!(summary["rows"].as_i64().unwrap(), 30_000 + 5_000 + notes);
    assert_eq!(summary["partitions"]["total"], 6);

    // plan shows every table; as JSON, one document per table.
    let plan = stride(&["plan", job.path.to_str().unwrap()], &[]);
    assert_exit(&plan, 0);
    assert_eq!(
        String::from_utf8_lossy(&plan.stdout)
            .matches("== table ")
            .count(),
        3
    );
    let plan = stride(
        &["plan", "--format", "json", job.path.to_str().unwrap()],
        &[],
    );
    let docs: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(docs.as_array().unwrap().len(), 3);
    assert_eq!(docs[0]["partitions"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn tables_run_concurrently_sharing_the_connections() {
    let pair = Pair::new("tables_concurrent").await;
    seed(&pair.source).await;
    let job = three_tables(&pair, "tables = \"concurrent\"\nparallelism = 3");
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert_all_copied(&pair).await;
    assert!(text(&out).contains("tables 3 of 3 done"), "{}", text(&out));
    // One connection each (3 shared by 3 tables): orders' 4 partitions queue.
    assert!(text(&out).contains("parallelism=1"), "{}", text(&out));
}

#[tokio::test]
async fn a_bad_entry_stops_everything_before_writing_and_a_failure_stops_the_rest() {
    let pair = Pair::new("tables_bad").await;
    seed(&pair.source).await;
    let job = job_file(&format!(
        "[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n\
         [[tables]]\ntable = \"orders\"\n\
         [[tables]]\ntable = \"customers\"\n[tables.partition]\ncolumn = \"nope\"\n",
        pair.source.url, pair.target.url
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("partition.column: column \"nope\" does not exist"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(*) FROM pg_class WHERE relname IN ('orders', 'customers', 'stride_checkpoints')")
            .await,
        0,
        "nothing written"
    );

    // In order, a table that fails stops the ones after it.
    pair.target
        .exec(
            "CREATE TABLE orders (id bigint, total numeric(12,2), at date);
             CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'orders are closed'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await;
    let job = job_file(&format!(
        "[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n\
         [[tables]]\ntable = \"orders\"\n[[tables]]\ntable = \"customers\"\n",
        pair.source.url, pair.target.url
    ));
    let summary = job.path.with_file_name("summary.json");
    let out = stride(
        &[
            "run",
            "--summary-json",
            summary.to_str().unwrap(),
            job.path.to_str().unwrap(),
        ],
        &[],
    );
    assert_exit(&out, 1);
    assert!(text(&out).contains("orders are closed"), "{}", text(&out));
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(*) FROM pg_class WHERE relname = 'customers'")
            .await,
        0,
        "the table after the failed one was not copied"
    );
    // Every table of the job is counted: the failed one and the one not started.
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("tables 0 of 2 done, 1 failed, 1 not started   rows 0"),
        "{said}"
    );
    assert!(
        said.lines()
            .any(|l| l.starts_with("\"customers\"") && l.ends_with("-             -  not started")),
        "{said}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(
        doc["table_counts"],
        serde_json::json!({"total": 2, "done": 0, "failed": 1, "not_started": 1})
    );
    assert_eq!(doc["tables"][1]["status"], "not_started");
    assert_eq!(doc["tables"][1]["table"], "\"customers\"");
}

#[tokio::test]
async fn bad_tables_sections_exit_2_naming_the_entry() {
    let pair = Pair::new("tables_parse").await;
    let head = format!(
        "[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n",
        pair.source.url, pair.target.url
    );
    let cases = [
        (
            "[[tables]]\ntable = \"a\"\ncolour = \"red\"",
            "tables[0].colour: unknown key",
        ),
        (
            "[[tables]]\ntable = \"a\"\n[[tables]]\ntable = \"a\"",
            "tables[1].target.table: \"a\" is also the target of tables[0]",
        ),
        (
            "[[tables]]\ntable = \"a\"\n[tables.partition]\ncolumn = \"id\"\ncount = 0",
            "tables[0]: partition.count: 0 is out of range",
        ),
        (
            "[[tables]]\nquery = \"SELECT 1\"",
            "tables[0]: target.table: missing",
        ),
        (
            "[run]\ntables = \"sideways\"\n[[tables]]\ntable = \"a\"",
            "run.tables:",
        ),
    ];
    for (tables, expected) in cases {
        let job = job_file(&format!("{head}{tables}\n"));
        let out = run_job(&job.path);
        assert_exit(&out, 2);
        assert!(text(&out).contains(expected), "{expected}\n{}", text(&out));
    }
    let job = job_file(&format!(
        "[source]\nurl = \"{}\"\ntable = \"a\"\n[target]\nurl = \"{}\"\n[[tables]]\ntable = \"b\"\n",
        pair.source.url, pair.target.url
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("source.table: set along with [[tables]]"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn every_table_is_checked_before_any_is_written_and_set_reaches_every_entry() {
    let pair = Pair::new("tables_checks").await;
    seed(&pair.source).await;
    // The second table's target has a view on it, which overwrite refuses: found
    // before the first table is copied.
    pair.target
        .exec("CREATE TABLE customers (id int, name text); CREATE VIEW customer_names AS SELECT name FROM customers;")
        .await;
    let job = job_file(&format!(
        "[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\nmode = \"truncate\"\n\
         [[tables]]\ntable = \"orders\"\n\
         [[tables]]\ntable = \"customers\"\n[tables.target]\nmode = \"overwrite\"\n",
        pair.source.url, pair.target.url
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("tables[1]: target.mode"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pair.target
            .scalar_i64(
                "SELECT count(*) FROM pg_class WHERE relname IN ('orders', 'stride_checkpoints')"
            )
            .await,
        0,
        "the first table was not written"
    );

    // --set overrides an entry's own partition section too.
    let job = job_file(&format!(
        "[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n\
         [[tables]]\ntable = \"orders\"\n[tables.partition]\ncolumn = \"id\"\ncount = 2\n",
        pair.source.url, pair.target.url
    ));
    let plan = stride(
        &[
            "plan",
            "--set",
            "partition.count=5",
            job.path.to_str().unwrap(),
        ],
        &[],
    );
    assert_exit(&plan, 0);
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("5 partitions"),
        "{}",
        text(&plan)
    );
}
