//! A table stride creates gets the source's primary key, and by
//! `target.indexes` its other indexes, built once the rows are in: in every
//! mode that creates tables, across a kill and a failed build.

use std::time::{Duration, Instant};

use crate::common::*;

/// 63 bytes: the longest name PostgreSQL keeps.
const LONG_INDEX: &str = "Orders_yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy";

async fn seed(pair: &Pair) {
    assert_eq!(LONG_INDEX.len(), 63);
    pair.source
        .exec(&format!(
            "CREATE TABLE \"Orders\" (\"Region\" text NOT NULL, id bigint NOT NULL, email text, \
               amount numeric(12,2), \"Note text\" text, PRIMARY KEY (\"Region\", id));
             CREATE UNIQUE INDEX orders_email_key ON \"Orders\" (email);
             CREATE INDEX \"Orders_big\" ON \"Orders\" (lower(\"Note text\")) WHERE amount > 100;
             CREATE INDEX \"{LONG_INDEX}\" ON \"Orders\" (amount DESC NULLS LAST, id) INCLUDE (\"Note text\");
             INSERT INTO \"Orders\" SELECT (ARRAY['north', 'south', 'ëast'])[g % 3 + 1], g,
               CASE WHEN g % 10 = 0 THEN NULL ELSE 'u' || g || '@example.org' END,
               CASE g WHEN 1 THEN 9999999999.99 WHEN 2 THEN -9999999999.99 WHEN 3 THEN NULL ELSE g / 7.0 END,
               CASE WHEN g % 5 = 0 THEN NULL ELSE md5(g::text) END
             FROM generate_series(1, 20000) g;"
        ))
        .await;
}

fn job(pair: &Pair, target_keys: &str) -> JobFile {
    job_file(&job_text(
        pair,
        "table = '\"Orders\"'",
        "[partition]\ncolumn = \"id\"\ncount = 4\n[run]\nparallelism = 2",
        target_keys,
    ))
}

/// The primary key's columns, in order ("" when there is none).
async fn primary_key(db: &TestDb, table: &str) -> String {
    db.scalar_string(&format!(
        "SELECT coalesce((SELECT string_agg(a.attname, ',' ORDER BY k.ord) \
           FROM pg_constraint c CROSS JOIN unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) \
           JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum \
           WHERE c.conrelid = '{table}'::regclass AND c.contype = 'p'), '')"
    ))
    .await
}

/// Every index definition of `table` with its name and table left out, sorted.
async fn index_definitions(db: &TestDb, table: &str) -> String {
    db.scalar_string(&format!(
        "SELECT coalesce(string_agg(d, E'\\n' ORDER BY d), '') FROM (SELECT regexp_replace(pg_get_indexdef(indexrelid), \
           '^CREATE (UNIQUE )?INDEX .* ON \\S+ USING ', 'CREATE \\1INDEX ON t USING ') AS d \
         FROM pg_index WHERE indrelid = '{table}'::regclass) AS i"
    ))
    .await
}

/// The names of the indexes of `table`, sorted.
async fn index_names(db: &TestDb, table: &str) -> String {
    db.scalar_string(&format!(
        "SELECT coalesce(string_agg(indexrelid::regclass::text, ',' ORDER BY indexrelid::regclass::text), '') \
         FROM pg_index WHERE indrelid = '{table}'::regclass"
    ))
    .await
}

#[tokio::test]
async fn a_created_table_gets_the_source_primary_key_and_no_other_index() {
    let pair = Pair::new("create_pk").await;
    seed(&pair).await;
    let job = job(&pair, "");
    let path = job.path.to_str().unwrap();
    let plan = stride(&["plan", path], &[]);
    assert_exit(&plan, 0);
    assert!(
        text(&plan).contains(
            "the run creates \"Orders\":\n  \
             CREATE TABLE \"Orders\" (\"Region\" text NOT NULL, \"id\" bigint NOT NULL, \"email\" text, \"amount\" numeric(12,2), \"Note text\" text);\n\
             once the rows are in:\n  \
             ALTER TABLE \"Orders\" ADD CONSTRAINT \"Orders_pkey\" PRIMARY KEY (\"Region\", \"id\");\n"
        ),
        "{}",
        text(&plan)
    );
    let check = stride(&["check", path], &[]);
    assert_exit(&check, 0);
    assert!(
        text(&check).contains("once the rows are in:\n  ALTER TABLE \"Orders\" ADD CONSTRAINT \"Orders_pkey\" PRIMARY KEY (\"Region\", \"id\");\n"),
        "{}",
        text(&check)
    );
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert_eq!(primary_key(&pair.target, "\"Orders\"").await, "Region,id");
    assert_eq!(
        index_names(&pair.target, "\"Orders\"").await,
        "\"Orders_pkey\""
    );
    assert_eq!(pair.assert_same("\"Orders\"", "\"Orders\"").await, 20_000);
    assert_exit(&stride(&["verify", path], &[]), 0);
}

#[tokio::test]
async fn all_gives_the_source_indexes_and_none_gives_none() {
    let pair = Pair::new("create_all").await;
    seed(&pair).await;
    let all = job(&pair, "indexes = \"all\"\nmethod = \"insert\"");
    assert_exit(&run_job(&all.path), 0);
    let definitions = index_definitions(&pair.source, "\"Orders\"").await;
    assert_eq!(definitions.lines().count(), 4, "{definitions}");
    assert_eq!(
        index_definitions(&pair.target, "\"Orders\"").await,
        definitions
    );
    assert_eq!(
        index_names(&pair.target, "\"Orders\"").await,
        index_names(&pair.source, "\"Orders\"").await
    );
    assert_eq!(pair.assert_same("\"Orders\"", "\"Orders\"").await, 20_000);

    let none = job_file(&job_text(
        &pair,
        "table = '\"Orders\"'",
        "[partition]\ncolumn = \"id\"\ncount = 4",
        "table = \"bare\"\nindexes = \"none\"",
    ));
    assert_exit(&run_job(&none.path), 0);
    assert_eq!(index_definitions(&pair.target, "bare").await, "");
    assert_eq!(pair.assert_same("\"Orders\"", "bare").await, 20_000);

    // Without a checkpoint table the run builds the key from what it planned.
    let unrecorded = job_file(&job_text(
        &pair,
        "table = '\"Orders\"'",
        "[partition]\ncolumn = \"id\"\ncount = 4\n[run]\ncheckpoint = false",
        "table = \"unrecorded\"",
    ));
    assert_exit(&run_job(&unrecorded.path), 0);
    assert_eq!(primary_key(&pair.target, "unrecorded").await, "Region,id");
    assert_eq!(pair.assert_same("\"Orders\"", "unrecorded").await, 20_000);
}

#[tokio::test]
async fn overwrite_creates_key_and_indexes_again_on_each_run() {
    let pair = Pair::new("create_overwrite").await;
    seed(&pair).await;
    let job = job(
        &pair,
        "table = \"orders_copy\"\nmode = \"overwrite\"\nindexes = \"all\"",
    );
    let definitions = index_definitions(&pair.source, "\"Orders\"").await;
    // The source table's name at the start of an index name becomes the new
    // table's; the 63-byte one is cut to fit.
    let long = format!("orders_copy_{}", "y".repeat(51));
    assert_eq!(long.len(), 63);
    let names = format!("orders_copy_big,orders_copy_pkey,{long},orders_email_key");
    for run in 0..2 {
        pair.source
            .exec(&format!(
                "INSERT INTO \"Orders\" VALUES ('west', {}, NULL, 1000, 'Run')",
                100_000 + run
            ))
            .await;
        assert_exit(&run_job(&job.path), 0);
        assert_eq!(primary_key(&pair.target, "orders_copy").await, "Region,id");
        assert_eq!(
            index_definitions(&pair.target, "orders_copy").await,
            definitions
        );
        assert_eq!(index_names(&pair.target, "orders_copy").await, names);
        assert_eq!(
            pair.assert_same("\"Orders\"", "orders_copy").await,
            20_001 + run
        );
    }
}

#[tokio::test]
async fn upsert_into_a_created_table_matches_by_the_source_primary_key() {
    let pair = Pair::new("create_upsert").await;
    seed(&pair).await;
    let job = job(&pair, "mode = \"upsert\"\nindexes = \"all\"");
    let plan = stride(&["plan", job.path.to_str().unwrap()], &[]);
    assert!(
        text(&plan).contains("\"Note text\" text, PRIMARY KEY (\"Region\", \"id\"));\n"),
        "{}",
        text(&plan)
    );
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(primary_key(&pair.target, "\"Orders\"").await, "Region,id");
    assert_eq!(
        index_definitions(&pair.target, "\"Orders\"").await,
        index_definitions(&pair.source, "\"Orders\"").await
    );
    assert_eq!(pair.assert_same("\"Orders\"", "\"Orders\"").await, 20_000);
    pair.source
        .exec(
            "UPDATE \"Orders\" SET amount = amount + 1 WHERE id % 100 = 0;
             INSERT INTO \"Orders\" VALUES ('west', 0, 'new@example.org', 5, NULL)",
        )
        .await;
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(pair.assert_same("\"Orders\"", "\"Orders\"").await, 20_001);
}

#[tokio::test]
async fn replace_creates_the_key_on_its_staging_table_before_the_swap() {
    let pair = Pair::new("create_replace").await;
    seed(&pair).await;
    let job = job(&pair, "mode = \"replace\"");
    for expected in [20_000, 20_001] {
        assert_exit(&run_job(&job.path), 0);
        assert_eq!(primary_key(&pair.target, "\"Orders\"").await, "Region,id");
        assert_eq!(
            index_names(&pair.target, "\"Orders\"").await,
            "\"Orders_pkey\""
        );
        assert_eq!(pair.assert_same("\"Orders\"", "\"Orders\"").await, expected);
        if expected == 20_000 {
            pair.source
                .exec("INSERT INTO \"Orders\" VALUES ('west', 0, NULL, NULL, NULL)")
                .await;
        }
    }
}

/// Polls `sql` on `db` until it returns 1 or more, for up to 60 s.
async fn wait_until(db: &TestDb, sql: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.scalar_i64(sql).await < 1 {
        assert!(Instant::now() < deadline, "waited 60 s for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The backend of the primary key build waiting on a lock.
fn waiting_build(db: &TestDb) -> String {
    format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock' \
         AND query LIKE 'ALTER TABLE%PRIMARY KEY%'",
        db.name
    )
}

#[tokio::test]
async fn a_kill_before_the_key_is_built_is_finished_by_the_resumed_run() {
    let pair = Pair::new("create_kill").await;
    seed(&pair).await;
    let job = job(&pair, "");
    let path = job.path.to_str().unwrap();
    let running = Running::start(&["run", path]);
    // Once the table exists, a reader's lock holds the build back after the load.
    wait_until(
        &pair.target,
        "SELECT count(*) FROM pg_class WHERE relname = 'Orders'",
        "the created table",
    )
    .await;
    let mut reader = pair.target.conn().await;
    exec(
        &mut reader,
        "BEGIN; LOCK TABLE \"Orders\" IN ACCESS SHARE MODE",
    )
    .await;
    wait_until(&pair.target, &waiting_build(&pair.target), "the key build").await;
    running.signal("KILL");
    running.finish();
    // The build's session dies with its client (its ALTER TABLE and COMMIT were
    // sent together: ended here before it gets the lock).
    pair.target
        .exec(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' \
             AND query LIKE 'ALTER TABLE%PRIMARY KEY%'",
            pair.target.name
        ))
        .await;
    exec(&mut reader, "ROLLBACK").await;
    assert_eq!(primary_key(&pair.target, "\"Orders\"").await, "");
    assert_eq!(pair.target.count("\"Orders\"").await, 20_000);
    assert_eq!(
        pair.target
            .scalar_string("SELECT array_to_string(deferred_indexes, ';') FROM stride_checkpoints WHERE partition = -1 AND NOT finished")
            .await,
        "ALTER TABLE \"Orders\" ADD CONSTRAINT \"Orders_pkey\" PRIMARY KEY (\"Region\", \"id\")"
    );
    let resumed = run_job(&job.path);
    assert_exit(&resumed, 0);
    assert!(
        text(&resumed).contains("building the primary key of \"Orders\""),
        "{}",
        text(&resumed)
    );
    assert_eq!(primary_key(&pair.target, "\"Orders\"").await, "Region,id");
    assert_eq!(pair.assert_same("\"Orders\"", "\"Orders\"").await, 20_000);
    assert_exit(&stride(&["verify", path], &[]), 0);
}

#[tokio::test]
async fn a_duplicate_fails_the_key_build_by_name_and_finish_builds_it_once_removed() {
    let pair = Pair::new("create_dup").await;
    seed(&pair).await;
    let job = job(&pair, "");
    let path = job.path.to_str().unwrap();
    let running = Running::start(&["run", path]);
    wait_until(
        &pair.target,
        "SELECT count(*) FROM pg_class WHERE relname = 'Orders'",
        "the created table",
    )
    .await;
    // Another writer adds a row whose key the source has, and commits once the
    // build waits for it.
    let mut writer = pair.target.conn().await;
    exec(
        &mut writer,
        "BEGIN; INSERT INTO \"Orders\" VALUES ('south', 1, 'other', NULL, NULL)",
    )
    .await;
    wait_until(&pair.target, &waiting_build(&pair.target), "the key build").await;
    exec(&mut writer, "COMMIT").await;
    let out = running.finish();
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("building the primary key of \"Orders\" (the rows are in; the run stays unfinished until it is built: fix the cause, then run the same command again (or `stride finish`)): ALTER TABLE \"Orders\" ADD CONSTRAINT \"Orders_pkey\" PRIMARY KEY (\"Region\", \"id\"): ")
            && stderr.contains("could not create unique index \"Orders_pkey\""),
        "{}",
        text(&out)
    );
    assert_eq!(primary_key(&pair.target, "\"Orders\"").await, "");
    assert_eq!(pair.target.count("\"Orders\"").await, 20_001);
    pair.target
        .exec("DELETE FROM \"Orders\" WHERE email = 'other'")
        .await;
    let finished = stride(&["finish", path], &[]);
    assert_exit(&finished, 0);
    assert_eq!(primary_key(&pair.target, "\"Orders\"").await, "Region,id");
    assert_eq!(pair.assert_same("\"Orders\"", "\"Orders\"").await, 20_000);
}

#[tokio::test]
async fn indexes_is_checked_and_a_query_source_has_no_key() {
    let pair = Pair::new("create_bad").await;
    seed(&pair).await;
    let bad = job(&pair, "indexes = \"unique\"");
    let out = run_job(&bad.path);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("target.indexes: unknown variant `unique`, expected one of `primary-key`, `all`, `none`"),
        "{}",
        text(&out)
    );
    let never = job(&pair, "create = \"never\"\nindexes = \"all\"");
    let out = run_job(&never.path);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("target.indexes: set to \"all\", but with create = \"never\" and mode \"append\" stride never creates the table"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pair.target
            .scalar_i64(
                "SELECT count(*) FROM pg_class WHERE relname IN ('Orders', 'stride_checkpoints')"
            )
            .await,
        0
    );
    let query = job_file(&job_text(
        &pair,
        "query = 'SELECT * FROM \"Orders\"'",
        "",
        "table = \"from_query\"\nmode = \"truncate\"\nindexes = \"all\"",
    ));
    let check = stride(&["check", query.path.to_str().unwrap()], &[]);
    assert_exit(&check, 0);
    assert!(
        text(&check).contains(
            "note: no primary key: the source is a query, whose rows have no key\n\
             note: no other indexes: the source is a query (target.indexes = \"all\" copies a table's)\n"
        ),
        "{}",
        text(&check)
    );
    assert_exit(&run_job(&query.path), 0);
    assert_eq!(index_definitions(&pair.target, "from_query").await, "");
    // Set on a table that exists and is kept: a warning, the table as it is.
    let out = run_job(&query.path);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("target.indexes = \"all\" is not applied: \"from_query\" exists and mode \"truncate\" keeps it"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn prepare_creates_the_table_shards_fill_it_and_finish_builds_the_indexes() {
    let pair = Pair::new("create_shards").await;
    seed(&pair).await;
    let job = job(&pair, "indexes = \"all\"");
    let path = job.path.to_str().unwrap();
    let plan = stride(&["plan", "--format", "json", path], &[]);
    assert_exit(&plan, 0);
    let doc: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(
        doc["creates_target"]["builds"][0],
        "ALTER TABLE \"Orders\" ADD CONSTRAINT \"Orders_pkey\" PRIMARY KEY (\"Region\", \"id\")"
    );
    assert_eq!(doc["creates_target"]["builds"].as_array().unwrap().len(), 4);
    assert_exit(&stride(&["prepare", path], &[]), 0);
    for shard in ["0/2", "1/2"] {
        assert_exit(&stride(&["run", "--shard", shard, path], &[]), 0);
    }
    // Every row is in; the key and indexes wait for finish.
    assert_eq!(index_definitions(&pair.target, "\"Orders\"").await, "");
    assert_eq!(pair.target.count("\"Orders\"").await, 20_000);
    assert_exit(&stride(&["finish", path], &[]), 0);
    assert_eq!(primary_key(&pair.target, "\"Orders\"").await, "Region,id");
    assert_eq!(
        index_definitions(&pair.target, "\"Orders\"").await,
        index_definitions(&pair.source, "\"Orders\"").await
    );
    assert_eq!(pair.assert_same("\"Orders\"", "\"Orders\"").await, 20_000);
}
