//! `mode = "replace"` (a staging table swapped in at the end, in one transaction)
//! and `mode = "overwrite"` (the target dropped and created again from the
//! source's definition). Each test checks what a user would: exit codes, messages,
//! row counts and checksums, and the target's definition in the catalogue.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_stride");

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn step(args: &[&str], job: &JobFile) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.push(job.path.to_str().unwrap());
    stride(&all, &[])
}

/// `big (id bigint, pad text, marker text)` with ids `1..=rows` marked `marker`.
async fn seed_big(db: &TestDb, rows: i64, marker: &str) {
    db.exec(&format!(
        "CREATE TABLE big (id bigint PRIMARY KEY, pad text, marker text NOT NULL);
         INSERT INTO big SELECT g, md5(g::text), '{marker}' FROM generate_series(1, {rows}) g;"
    ))
    .await;
}

/// A job over `big` that takes a couple of seconds: 30 partitions of 10,000 rows,
/// two at a time, written with INSERTs of 200 rows.
fn slow_job(pair: &Pair, target: &str) -> JobFile {
    job_file(&job_text(
        pair,
        "table = \"big\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 300001\ncount = 30\n[run]\nparallelism = 2",
        &format!("method = \"insert\"\nbatch_size = 200\n{target}"),
    ))
}

/// Whether a table of that name exists on the database.
async fn exists(db: &TestDb, table: &str) -> bool {
    db.scalar_i64(&format!(
        "SELECT count(*) FROM pg_class WHERE oid = to_regclass('{table}')"
    ))
    .await
        == 1
}

async fn oid(db: &TestDb, table: &str) -> i64 {
    db.scalar_i64(&format!("SELECT '{table}'::regclass::oid::int8"))
        .await
}

/// The table's definition as a user would compare it: columns with types,
/// defaults and NOT NULL, indexes, constraints, comments, owner and grants.
async fn definition(db: &TestDb, table: &str) -> String {
    let queries = [
        format!("SELECT string_agg(format('%s %s %s %s', attname, format_type(atttypid, atttypmod), attnotnull, pg_get_expr(d.adbin, d.adrelid)), E'\\n' ORDER BY attnum) FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped"),
        format!("SELECT string_agg(indexdef, E'\\n' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'public' AND tablename = '{table}'"),
        format!("SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), E'\\n' ORDER BY conname) FROM pg_constraint WHERE conrelid = '{table}'::regclass"),
        format!("SELECT coalesce(obj_description('{table}'::regclass, 'pg_class'), '') || ' / ' || coalesce(string_agg(attname || ': ' || col_description(attrelid, attnum), ', ' ORDER BY attnum), '') FROM pg_attribute WHERE attrelid = '{table}'::regclass AND col_description(attrelid, attnum) IS NOT NULL"),
        format!("SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = '{table}'::regclass"),
        format!("SELECT coalesce(string_agg(format('%s %s %s', grantee::regrole, privilege_type, is_grantable), ', ' ORDER BY 1), '') FROM pg_class c, aclexplode(c.relacl) WHERE c.oid = '{table}'::regclass"),
        format!("SELECT coalesce(string_agg(format('%s %s %s', attname, grantee::regrole, privilege_type), ', ' ORDER BY 1), '') FROM pg_attribute, aclexplode(attacl) WHERE attrelid = '{table}'::regclass"),
    ];
    let mut all = Vec::new();
    for q in &queries {
        all.push(db.scalar_string(q).await);
    }
    all.join("\n---\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_keeps_indexes_constraints_defaults_grants_comments_and_owner() {
    let pair = Pair::new("replace_keep").await;
    let owner = format!("{}_owner", pair.target.name);
    let reader = format!("{}_reader", pair.target.name);
    pair.source
        .exec(
            "CREATE TABLE items (id integer PRIMARY KEY, code text NOT NULL, n integer, parent integer);
             INSERT INTO items SELECT g, 'c' || g, g % 50, g % 10 FROM generate_series(1, 5000) g;",
        )
        .await;
    pair.target
        .exec(&format!(
            "CREATE ROLE \"{owner}\"; CREATE ROLE \"{reader}\";
             GRANT CREATE ON SCHEMA public TO \"{owner}\";
             CREATE TABLE parents (id integer PRIMARY KEY);
             INSERT INTO parents SELECT generate_series(0, 9);
             CREATE TABLE items (
                 id serial PRIMARY KEY,
                 code text NOT NULL CONSTRAINT items_code_unique UNIQUE,
                 n integer CONSTRAINT n_not_negative CHECK (n >= 0),
                 parent integer CONSTRAINT items_parent_fk REFERENCES parents (id),
                 note text DEFAULT 'none'
             );
             CREATE INDEX items_by_n ON items (n) WHERE n > 10;
             CREATE INDEX items_by_lower_code ON items (lower(code));
             COMMENT ON TABLE items IS 'items, kept in step';
             COMMENT ON COLUMN items.code IS 'the item''s code';
             ALTER TABLE items OWNER TO \"{owner}\";
             GRANT SELECT, INSERT ON items TO \"{reader}\";
             GRANT UPDATE (note) ON items TO \"{reader}\";
             INSERT INTO items (code, n, parent, note) SELECT 'old' || g, 1, 1, 'old' FROM generate_series(1, 100) g;
             CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
             CREATE TRIGGER items_touch BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION touch();"
        ))
        .await;
    let before = definition(&pair.target, "items").await;
    assert!(
        before.contains("items_by_n") && before.contains(&reader),
        "{before}"
    );
    let job = job_file(&job_text(
        &pair,
        "table = \"items\"",
        "[partition]\ncolumn = \"id\"\ncount = 4\n[run]\nverify = \"checksum\"",
        "mode = \"replace\"",
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("verify (row counts and checksums): 4 of 4 partitions match"),
        "{}",
        text(&out)
    );
    // Triggers are not carried over, and the run says so.
    assert!(
        stderr(&out).contains("the new \"items\" will not have the old one's trigger items_touch"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pair.assert_same("items", "(SELECT id, code, n, parent FROM items)")
            .await,
        5000
    );
    assert_eq!(
        pair.target.count("items WHERE note = 'none'").await,
        5000,
        "the default of the column the copy leaves out"
    );
    assert_eq!(definition(&pair.target, "items").await, before);
    assert!(!exists(&pair.target, "items_stride_stage").await);
    // The serial column's sequence went with the new table, past the copied ids.
    pair.target
        .exec("INSERT INTO items (code, n, parent) VALUES ('next', 1, 1)")
        .await;
    assert_eq!(
        pair.target
            .scalar_i64("SELECT id::int8 FROM items WHERE code = 'next'")
            .await,
        5001
    );
    // The foreign key holds on the new table.
    let mut conn = pair.target.conn().await;
    let bad = sqlx::raw_sql("INSERT INTO items (code, parent) VALUES ('orphan', 99)")
        .execute(&mut conn)
        .await
        .expect_err("a row without its parent");
    assert!(bad.to_string().contains("items_parent_fk"), "{bad}");
    drop(conn);
    // A second run replaces the table again, and it still is the same definition.
    pair.source.exec("DELETE FROM items WHERE id > 4000").await;
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(
        pair.assert_same("items", "(SELECT id, code, n, parent FROM items)")
            .await,
        4000
    );
    assert_eq!(definition(&pair.target, "items").await, before);
    pair.target.exec("DROP TABLE items, parents").await;
    pair.target
        .exec(&format!(
            "REVOKE CREATE ON SCHEMA public FROM \"{owner}\"; DROP ROLE \"{owner}\"; DROP ROLE \"{reader}\";"
        ))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_sets_serial_and_identity_sequences_past_the_copied_values() {
    let pair = Pair::new("replace_seq").await;
    let tables = "CREATE TABLE serials (id serial PRIMARY KEY, name text);
                  CREATE TABLE idents (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);";
    pair.source.exec(tables).await;
    pair.source
        .exec(
            "INSERT INTO serials (name) SELECT 'n' || g FROM generate_series(1, 1000) g;
             INSERT INTO idents (name) SELECT 'n' || g FROM generate_series(1, 1000) g;",
        )
        .await;
    pair.target.exec(tables).await;
    pair.target
        .exec(
            "INSERT INTO serials (name) VALUES ('old'); INSERT INTO idents (name) VALUES ('old');
             SELECT setval('idents_id_seq', 7000);",
        )
        .await;
    for (table, reset, next) in [("serials", true, 1001), ("idents", false, 7001)] {
        let job = job_file(&job_text(
            &pair,
            &format!("table = \"{table}\""),
            "[partition]\ncolumn = \"id\"\ncount = 3",
            &format!("mode = \"replace\"\nreset_sequences = {reset}"),
        ));
        assert_exit(&run_job(&job.path), 0);
        assert_eq!(pair.assert_same(table, table).await, 1000);
        // The identity sequence is the target's name again, and carries its value.
        assert_eq!(
            pair.target
                .scalar_string(&format!("SELECT pg_get_serial_sequence('{table}', 'id')"))
                .await,
            format!("public.{table}_id_seq")
        );
        pair.target
            .exec(&format!("INSERT INTO {table} (name) VALUES ('next')"))
            .await;
        assert_eq!(
            pair.target
                .scalar_i64(&format!("SELECT id::int8 FROM {table} WHERE name = 'next'"))
                .await,
            next,
            "{table}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_during_a_replace_see_the_old_table_then_the_new_one_whole() {
    let pair = Pair::new("replace_readers").await;
    seed_big(&pair.source, 100_000, "new").await;
    seed_big(&pair.target, 30_000, "old").await;
    let old = pair.target.checksum("big").await;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let mut conn = pair.target.conn().await;
        tokio::spawn(async move {
            let mut seen: Vec<(i64, i64)> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let counts: (i64, i64) = sqlx::query_as(
                    "SELECT count(*), count(*) FILTER (WHERE marker = 'old') FROM big",
                )
                .fetch_one(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("a reader's query failed during the replace: {e}"));
                seen.push(counts);
            }
            seen
        })
    };
    let job = job_file(&job_text(
        &pair,
        "table = \"big\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 100001\ncount = 10\n[run]\nparallelism = 2",
        "mode = \"replace\"\nmethod = \"insert\"\nbatch_size = 500",
    ));
    let path = job.path.clone();
    let out = tokio::task::spawn_blocking(move || run_job(&path))
        .await
        .unwrap();
    // A few reads after the swap too.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    assert_exit(&out, 0);
    assert_eq!(pair.assert_same("big", "big").await, 100_000);
    let olds = seen.iter().filter(|s| **s == (30_000, 30_000)).count();
    let news = seen.iter().filter(|s| **s == (100_000, 0)).count();
    assert_eq!(
        olds + news,
        seen.len(),
        "a reader saw a mixed or partial table: {:?}",
        seen.iter()
            .filter(|s| **s != (30_000, 30_000) && **s != (100_000, 0))
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(olds > 10 && news > 0, "old {olds} times, new {news} times");
    let first_new = seen.iter().position(|s| *s == (100_000, 0)).unwrap();
    assert!(
        seen[first_new..].iter().all(|s| *s == (100_000, 0)),
        "the old table came back after the new one"
    );
    assert_ne!(pair.target.checksum("big").await, old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replace_leaves_the_old_table_and_resumes_into_the_staging_table() {
    for signal in ["INT", "KILL"] {
        let pair = Pair::new(&format!("replace_resume_{signal}")).await;
        seed_big(&pair.source, 300_000, "new").await;
        seed_big(&pair.target, 1_000, "old").await;
        let old = pair.target.checksum("big").await;
        let job = slow_job(&pair, "mode = \"replace\"");
        let path = job.path.to_str().unwrap();
        let running = Running::start(&["run", path]).wait_for_line("partition written");
        running.signal(signal);
        let stopped = running.finish();
        if signal == "INT" {
            assert_exit(&stopped, 130);
        }
        assert_eq!(
            pair.target.checksum("big").await,
            old,
            "{signal}: the old table changed"
        );
        let staged = pair.target.count("big_stride_stage").await;
        assert!(
            staged > 0 && staged < 300_000,
            "{signal}: {staged} rows staged\n{}",
            text(&stopped)
        );
        let resumed = run_job(&job.path);
        assert_exit(&resumed, 0);
        assert!(
            stdout(&resumed).contains("skipped: committed by an earlier run"),
            "{signal}: {}",
            text(&resumed)
        );
        assert_eq!(pair.assert_same("big", "big").await, 300_000, "{signal}");
        assert!(!exists(&pair.target, "big_stride_stage").await);
        // The finished job runs again from the start, as truncate does.
        let again = run_job(&job.path);
        assert_exit(&again, 0);
        assert!(
            stdout(&again).contains("partitions 30 written of 30"),
            "{}",
            text(&again)
        );
        assert_eq!(pair.assert_same("big", "big").await, 300_000, "{signal}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_drops_the_staging_table_and_starts_it_again() {
    let pair = Pair::new("replace_restart").await;
    seed_big(&pair.source, 300_000, "new").await;
    seed_big(&pair.target, 1_000, "old").await;
    let old = pair.target.checksum("big").await;
    let job = slow_job(&pair, "mode = \"replace\"");
    let path = job.path.to_str().unwrap();
    let running = Running::start(&["run", path]).wait_for_line("partition written");
    running.signal("INT");
    assert_exit(&running.finish(), 130);
    let stage = oid(&pair.target, "big_stride_stage").await;
    // Rows only the staging table holds: --restart must not keep them.
    pair.target
        .exec("INSERT INTO big_stride_stage VALUES (-1, 'stray', 'stray')")
        .await;
    let restarted = stride(&["run", "--restart", path], &[]);
    assert_exit(&restarted, 0);
    assert!(
        !stdout(&restarted).contains("skipped")
            && stdout(&restarted).contains("partitions 30 written of 30"),
        "{}",
        text(&restarted)
    );
    assert_eq!(pair.assert_same("big", "big").await, 300_000);
    assert_ne!(
        oid(&pair.target, "big").await,
        stage,
        "the staging table was not made again"
    );
    assert_ne!(pair.target.checksum("big").await, old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_through_prepare_shards_and_finish_swaps_at_finish() {
    let pair = Pair::new("replace_shards").await;
    seed_big(&pair.source, 80_000, "new").await;
    seed_big(&pair.target, 500, "old").await;
    let old = pair.target.checksum("big").await;
    let job = job_file(&job_text(
        &pair,
        "table = \"big\"",
        "[partition]\ncolumn = \"id\"\ncount = 8\n[run]\nparallelism = 2\nverify = \"checksum\"",
        "mode = \"replace\"",
    ));
    let prepared = step(&["prepare"], &job);
    assert_exit(&prepared, 0);
    assert!(
        stdout(&prepared).contains(
            "prepared: 8 partitions into \"public\".\"big_stride_stage\" (swapped in for \"big\" by `stride finish`)"
        ),
        "{}",
        text(&prepared)
    );
    assert_eq!(pair.target.count("big_stride_stage").await, 0);
    let spawn = |shard: &str| {
        Command::new(BIN)
            .args(["run", "--shard", shard, job.path.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("0/2"), spawn("1/2"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_exit(&a, 0);
    assert_exit(&b, 0);
    assert_eq!(pair.target.checksum("big").await, old, "a shard swapped");
    assert_eq!(pair.target.count("big_stride_stage").await, 80_000);
    // A view made while the shards ran stops the swap, and nothing changes.
    pair.target
        .exec("CREATE VIEW big_view AS SELECT id FROM big")
        .await;
    let refused = step(&["finish"], &job);
    assert_exit(&refused, 1);
    assert!(
        stderr(&refused).contains(
            "target.mode: \"replace\" cannot drop the old \"big\": view big_view depends on it"
        ),
        "{}",
        text(&refused)
    );
    assert_eq!(pair.target.checksum("big").await, old);
    pair.target.exec("DROP VIEW big_view").await;
    let finish = step(&["finish"], &job);
    assert_exit(&finish, 0);
    assert!(
        stdout(&finish).contains("8 of 8 partitions match")
            && stdout(&finish).contains("finished: 8 partitions, 80,000 rows in \"big\""),
        "{}",
        text(&finish)
    );
    assert_eq!(pair.assert_same("big", "big").await, 80_000);
    assert!(!exists(&pair.target, "big_stride_stage").await);
    let again = step(&["finish"], &job);
    assert_exit(&again, 0);
    assert!(
        stdout(&again).contains("nothing to do: the run of this job already finished"),
        "{}",
        text(&again)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_into_a_missing_table_creates_it_from_the_source() {
    let pair = Pair::new("replace_missing").await;
    seed_big(&pair.source, 5_000, "new").await;
    let job = job_file(&job_text(
        &pair,
        "table = \"big\"",
        "[partition]\ncolumn = \"id\"\ncount = 2",
        "table = \"fresh\"\nmode = \"replace\"",
    ));
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(pair.assert_same("big", "fresh").await, 5_000);
    assert_eq!(
        pair.target
            .scalar_string("SELECT format_type(atttypid, atttypmod) || ' ' || attnotnull FROM pg_attribute WHERE attrelid = 'fresh'::regclass AND attname = 'marker'")
            .await,
        "text true"
    );
    assert!(!exists(&pair.target, "fresh_stride_stage").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_and_foreign_keys_on_the_target_are_refused_before_writing() {
    let pair = Pair::new("replace_dependants").await;
    seed_big(&pair.source, 1_000, "new").await;
    seed_big(&pair.target, 10, "old").await;
    let cases = [
        (
            "CREATE VIEW recent AS SELECT * FROM big WHERE id > 5",
            "DROP VIEW recent",
            "view recent depends on it",
        ),
        (
            "CREATE MATERIALIZED VIEW counted AS SELECT count(*) FROM big",
            "DROP MATERIALIZED VIEW counted",
            "materialized view counted depends on it",
        ),
        (
            "CREATE TABLE notes (big_id bigint CONSTRAINT notes_big_fk REFERENCES big (id))",
            "DROP TABLE notes",
            "foreign key notes_big_fk of notes depends on it",
        ),
    ];
    for mode in ["replace", "overwrite"] {
        let old = pair.target.checksum("big").await;
        let job = job_file(&job_text(
            &pair,
            "table = \"big\"",
            "",
            &format!("mode = \"{mode}\""),
        ));
        for (create, drop, named) in cases {
            pair.target.exec(create).await;
            let out = run_job(&job.path);
            assert_exit(&out, 2);
            let err = stderr(&out);
            assert!(
                err.contains(&format!("target.mode: \"{mode}\" "))
                    && err.contains(named)
                    && err.contains("nothing was written"),
                "{mode}, {create}: {}",
                text(&out)
            );
            assert_eq!(pair.target.checksum("big").await, old, "{mode}: {create}");
            assert!(!exists(&pair.target, "big_stride_stage").await);
            assert!(!exists(&pair.target, "stride_checkpoints").await);
            // check refuses the same, plan still works: they write nothing.
            let checked = step(&["check"], &job);
            assert_exit(&checked, 2);
            assert!(
                stderr(&checked).contains(&format!("target.mode: \"{mode}\" "))
                    && stderr(&checked).contains(named),
                "{}",
                text(&checked)
            );
            assert_exit(&step(&["plan"], &job), 0);
            pair.target.exec(drop).await;
        }
        assert_exit(&run_job(&job.path), 0);
        assert_eq!(pair.assert_same("big", "big").await, 1_000, "{mode}");
        pair.target.exec("DROP TABLE stride_checkpoints").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_jobs_refuse_replace_and_overwrite() {
    let pair = Pair::new("replace_incremental").await;
    seed_big(&pair.source, 10, "new").await;
    for mode in ["replace", "overwrite"] {
        let job = job_file(&job_text(
            &pair,
            "table = \"big\"",
            "[incremental]\ncolumn = \"id\"",
            &format!("mode = \"{mode}\""),
        ));
        for command in ["run", "check", "plan"] {
            let out = step(&[command], &job);
            assert_exit(&out, 2);
            assert!(
                stderr(&out).contains(&format!(
                    "target.mode: \"{mode}\" gives the target only the rows of one run"
                )),
                "{command}: {}",
                text(&out)
            );
        }
    }
    assert!(!exists(&pair.target, "big").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_creates_the_target_again_from_the_sources_definition() {
    let pair = Pair::new("overwrite_def").await;
    pair.source
        .exec(
            "CREATE TABLE items (id bigint NOT NULL, code varchar(8) NOT NULL, amount numeric(10,2));
             INSERT INTO items SELECT g, 'c' || g, g / 100.0 FROM generate_series(1, 3000) g;",
        )
        .await;
    pair.target
        .exec(
            "CREATE TABLE items (id integer PRIMARY KEY, code text, amount real, extra text NOT NULL DEFAULT 'x');
             INSERT INTO items VALUES (-1, 'old', 1, 'old');",
        )
        .await;
    let columns = "SELECT string_agg(format('%s %s %s', attname, format_type(atttypid, atttypmod), attnotnull), ', ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'items'::regclass AND attnum > 0 AND NOT attisdropped";
    let job = job_file(&job_text(
        &pair,
        "table = \"items\"",
        "[partition]\ncolumn = \"id\"\ncount = 3\n[run]\nverify = \"checksum\"",
        "mode = \"overwrite\"",
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains(
            "dropped target table \"items\" and created it again from the source's columns"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(pair.assert_same("items", "items").await, 3000);
    assert_eq!(
        pair.target.scalar_string(columns).await,
        "id bigint t, code character varying(8) t, amount numeric(10,2) f"
    );
    // A column's type changed on the source: the next run's table has it.
    pair.source
        .exec("ALTER TABLE items ALTER COLUMN amount TYPE text")
        .await;
    assert_exit(&run_job(&job.path), 0);
    assert_eq!(pair.assert_same("items", "items").await, 3000);
    assert_eq!(
        pair.target.scalar_string(columns).await,
        "id bigint t, code character varying(8) t, amount text f"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_overwrite_resumes_without_dropping_the_table_again() {
    let pair = Pair::new("overwrite_resume").await;
    seed_big(&pair.source, 300_000, "new").await;
    pair.target
        .exec("CREATE TABLE big (id integer, other text); INSERT INTO big VALUES (1, 'old');")
        .await;
    let job = slow_job(&pair, "mode = \"overwrite\"");
    let path = job.path.to_str().unwrap();
    let running = Running::start(&["run", path]).wait_for_line("partition written");
    running.signal("KILL");
    running.finish();
    let table = oid(&pair.target, "big").await;
    let committed = pair.target.count("big").await;
    assert!(committed > 0 && committed < 300_000, "{committed} rows");
    // A view on the recreated table does not stop the resume: nothing is dropped.
    pair.target
        .exec("CREATE VIEW big_ids AS SELECT id FROM big")
        .await;
    let resumed = run_job(&job.path);
    assert_exit(&resumed, 0);
    assert!(
        stdout(&resumed).contains("skipped: committed by an earlier run"),
        "{}",
        text(&resumed)
    );
    assert_eq!(
        oid(&pair.target, "big").await,
        table,
        "the table was dropped again"
    );
    assert_eq!(pair.assert_same("big", "big").await, 300_000);
    // A new run would drop it: refused while the view is there.
    let again = run_job(&job.path);
    assert_exit(&again, 2);
    assert!(
        stderr(&again).contains("view big_ids depends on it"),
        "{}",
        text(&again)
    );
    assert_eq!(pair.target.count("big").await, 300_000);
}
