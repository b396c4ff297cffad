//! Every bad input the issue lists: exit code 2, an error naming the key or the
//! object, and the target exactly as it was (nothing created, emptied or written).

use crate::common::*;

const SOURCE: &str = "
CREATE TABLE public.src (id integer NOT NULL, small smallint, d date, ts timestamp, tstz timestamptz, name text, amount numeric);
INSERT INTO public.src
SELECT g, g::smallint, DATE '2021-01-01' + g, TIMESTAMP '2021-01-01' + g * INTERVAL '1 hour',
       TIMESTAMPTZ '2021-01-01 00:00:00+00' + g * INTERVAL '1 hour', 'n' || g, g * 1.5
FROM generate_series(1, 200) g;";

/// The target already holds rows of its own; every job runs in truncate mode, so a
/// job that got as far as its first write would change them.
const TARGET: &str = "
CREATE TABLE public.src (id integer NOT NULL, small smallint, d date, ts timestamp, tstz timestamptz, name text, amount numeric);
INSERT INTO public.src VALUES
    (-1, -1, '1999-01-01', '1999-01-01 00:00', '1999-01-01 00:00+00', 'kept', 1.25),
    (-2, NULL, NULL, NULL, NULL, NULL, NULL),
    (-3, 3, 'infinity', 'infinity', '-infinity', 'also kept', 'NaN');
CREATE TABLE public.narrow (id integer NOT NULL, small smallint, d date, ts timestamp, tstz timestamptz, name text);
INSERT INTO public.narrow VALUES (-1, -1, '1999-01-01', NULL, NULL, 'narrow kept'), (-2, NULL, NULL, NULL, NULL, NULL);";

/// Everything in the target a run could change: the tables there (a job that
/// would create `public.fresh` must not have), and the rows of each of `tables`.
async fn tables_and_rows(db: &TestDb, tables: &[&str]) -> (String, Vec<(i64, String)>) {
    let list = db
        .scalar_string(
            "SELECT coalesce(string_agg(format('%I.%I', n.nspname, c.relname), ', ' ORDER BY n.nspname, c.relname), '')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p', 'v') AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
        )
        .await;
    let mut rows = Vec::with_capacity(tables.len());
    for table in tables {
        rows.push(db.checksum(table).await);
    }
    (list, rows)
}

/// One bad job and what its error must say.
struct Case {
    name: String,
    job: String,
    /// Substrings of stderr: the key or object at fault.
    expect: Vec<String>,
}

fn case(name: impl Into<String>, job: String, expect: &[&str]) -> Case {
    Case {
        name: name.into(),
        job,
        expect: expect.iter().map(|s| (*s).to_string()).collect(),
    }
}

const TABLE: &str = "table = \"public.src\"";
const TRUNCATE: &str = "mode = \"truncate\"";

/// A job between the pair with a partition section `partition` and otherwise good keys.
fn partitioned(pair: &Pair, partition: &str) -> String {
    job_text(pair, TABLE, &format!("[partition]\n{partition}"), TRUNCATE)
}

fn file_cases(pair: &Pair) -> Vec<Case> {
    let good = job_text(pair, TABLE, "", TRUNCATE);
    vec![
        // A `where` that closes the parentheses stride puts around it would make
        // every partition read the same rows.
        case(
            "a where that escapes its parentheses",
            job_text(
                pair,
                "table = \"public.src\"\nwhere = 'id < 100) or (id > 2900'",
                "[partition]\ncolumn = \"id\"\ncount = 3",
                TRUNCATE,
            ),
            &[
                "source.where: it closes a parenthesis it did not open",
                "one boolean expression",
            ],
        ),
        case(
            "a where with a second statement",
            job_text(
                pair,
                "table = \"public.src\"\nwhere = 'true; DELETE FROM src'",
                "",
                TRUNCATE,
            ),
            &["source.where: it has a `;`"],
        ),
        case(
            "a query that escapes its parentheses",
            job_text(
                pair,
                "query = 'SELECT * FROM src) AS a, (SELECT * FROM src'",
                "",
                "mode = \"truncate\"\ntable = \"public.dst\"",
            ),
            &["source.query: it closes a parenthesis it did not open"],
        ),
        case(
            "unknown top-level key",
            format!("retries = 3\n{good}"),
            &["`retries`"],
        ),
        case(
            "unknown top-level table",
            job_text(pair, TABLE, "[retry]\ncount = 3", TRUNCATE),
            &["`retry`"],
        ),
        case(
            "unknown key in [source]",
            job_text(
                pair,
                "table = \"public.src\"\ntabel = \"public.src\"",
                "",
                TRUNCATE,
            ),
            &["`tabel`"],
        ),
        case(
            "unknown key in [partition]",
            partitioned(pair, "column = \"id\"\ncolum = \"id\"\ncount = 2"),
            &["`colum`"],
        ),
        case(
            "unknown key in [target]",
            job_text(pair, TABLE, "", "mode = \"truncate\"\nmethd = \"insert\""),
            &["`methd`"],
        ),
        case(
            "unknown key in [run]",
            job_text(pair, TABLE, "[run]\nparalelism = 2", TRUNCATE),
            &["`paralelism`"],
        ),
        case(
            "count is a string",
            partitioned(pair, "column = \"id\"\ncount = \"four\""),
            &["partition.count"],
        ),
        case(
            "batch_size is a boolean",
            job_text(pair, TABLE, "", "mode = \"truncate\"\nbatch_size = true"),
            &["target.batch_size"],
        ),
        case(
            "mode is not a mode",
            job_text(pair, TABLE, "", "mode = \"merge\""),
            &["target.mode", "merge"],
        ),
        case(
            "batch_size is 0",
            job_text(pair, TABLE, "", "mode = \"truncate\"\nbatch_size = 0"),
            &["target.batch_size"],
        ),
        case(
            "parallelism is 0",
            job_text(pair, TABLE, "[run]\nparallelism = 0", TRUNCATE),
            &["run.parallelism"],
        ),
        case(
            "both table and query",
            job_text(
                pair,
                "table = \"public.src\"\nquery = \"SELECT * FROM public.src\"",
                "",
                TRUNCATE,
            ),
            &["`table`", "`query`"],
        ),
        case(
            "neither table nor query",
            job_text(pair, "", "", TRUNCATE),
            &["`table`", "`query`"],
        ),
        case(
            "query without target.table",
            job_text(pair, "query = \"SELECT * FROM public.src\"", "", TRUNCATE),
            &["target.table"],
        ),
        case(
            "only lower_bound",
            partitioned(pair, "column = \"id\"\nlower_bound = 1\ncount = 2"),
            &["partition.upper_bound"],
        ),
        case(
            "only upper_bound",
            partitioned(pair, "column = \"id\"\nupper_bound = 100\ncount = 2"),
            &["partition.lower_bound"],
        ),
        case(
            "count is 0",
            partitioned(pair, "column = \"id\"\ncount = 0"),
            &["partition.count"],
        ),
        case(
            "count is negative",
            partitioned(pair, "column = \"id\"\ncount = -3"),
            &["partition.count"],
        ),
        case(
            "unset variable without default",
            good.replacen(&pair.source.url, "${STRIDE_TEST_SURELY_UNSET_VARIABLE}", 1),
            &["STRIDE_TEST_SURELY_UNSET_VARIABLE"],
        ),
        case(
            "target URL with a bad scheme",
            good.replacen(&pair.target.url, "oracle://root@127.0.0.1:1521/db", 1),
            &["target.url", "oracle"],
        ),
        case(
            "source URL with an invalid sslmode",
            good.replacen(
                &pair.source.url,
                &format!("{}?sslmode=bogus", pair.source.url),
                1,
            ),
            &["source.url", "bogus"],
        ),
        case(
            "source URL that is not a URL",
            good.replacen(&pair.source.url, "not a url", 1),
            &["source.url"],
        ),
        case(
            "TOML syntax error",
            good.replacen("table = \"public.src\"", "table = \"public.src", 1),
            &["line 3"],
        ),
    ]
}

fn catalogue_cases(pair: &Pair) -> Vec<Case> {
    vec![
        case(
            "lower_bound equals upper_bound",
            partitioned(pair, "column = \"id\"\nlower_bound = 10\nupper_bound = 10\ncount = 2"),
            &["partition.lower_bound", "upper_bound"],
        ),
        case(
            "lower_bound above upper_bound",
            partitioned(pair, "column = \"id\"\nlower_bound = 20\nupper_bound = 10\ncount = 2"),
            &["partition.lower_bound", "upper_bound"],
        ),
        case(
            "date bounds reversed",
            partitioned(pair, "column = \"d\"\nlower_bound = \"2021-03-01\"\nupper_bound = \"2021-02-01\"\ncount = 2"),
            &["partition.lower_bound", "upper_bound"],
        ),
        case(
            "integer bound is not a number",
            partitioned(pair, "column = \"id\"\nlower_bound = \"abc\"\nupper_bound = 100\ncount = 2"),
            &["partition.lower_bound", "abc"],
        ),
        case(
            "date bound is not a date",
            partitioned(pair, "column = \"d\"\nlower_bound = \"2021-01-01\"\nupper_bound = \"2021-13-45\"\ncount = 2"),
            &["partition.upper_bound", "2021-13-45"],
        ),
        case(
            "timestamp bound is not a fixed timestamp",
            partitioned(pair, "column = \"ts\"\nlower_bound = \"yesterday\"\nupper_bound = \"2021-02-01 00:00:00\"\ncount = 2"),
            &["partition.lower_bound", "yesterday"],
        ),
        case(
            "timestamptz bound is not a timestamp",
            partitioned(pair, "column = \"tstz\"\nlower_bound = \"2021-01-01 00:00:00+00\"\nupper_bound = \"2021-02-30 00:00:00+00\"\ncount = 2"),
            &["partition.upper_bound", "2021-02-30"],
        ),
        case(
            "smallint bound out of range",
            partitioned(pair, "column = \"small\"\nlower_bound = 0\nupper_bound = 40000\ncount = 2"),
            &["partition.upper_bound", "40000"],
        ),
        case(
            "integer bound out of range, target to be created",
            job_text(
                pair,
                TABLE,
                "[partition]\ncolumn = \"id\"\nlower_bound = -3000000000\nupper_bound = 10\ncount = 2",
                "mode = \"truncate\"\ntable = \"public.fresh\"",
            ),
            &["partition.lower_bound", "-3000000000"],
        ),
        case(
            "text partition column",
            partitioned(pair, "column = \"name\"\ncount = 2"),
            &["partition.column", "name", "text"],
        ),
        case(
            "numeric partition column",
            partitioned(pair, "column = \"amount\"\ncount = 2"),
            &["partition.column", "amount", "numeric"],
        ),
        case(
            "missing source table",
            job_text(pair, "table = \"public.no_such_table\"", "", TRUNCATE),
            &["source.table", "no_such_table"],
        ),
        case(
            "query on a missing table",
            job_text(pair, "query = \"SELECT * FROM public.no_such_table\"", "", "mode = \"truncate\"\ntable = \"public.src\""),
            &["source.query", "no_such_table"],
        ),
        case(
            "missing source column, target to be created",
            job_text(
                pair,
                "table = \"public.src\"\ncolumns = [\"id\", \"ghost\"]",
                "",
                "mode = \"truncate\"\ntable = \"public.fresh\"",
            ),
            &["source.columns", "ghost"],
        ),
        case(
            "missing partition column",
            partitioned(pair, "column = \"ghost\"\ncount = 2"),
            &["partition.column", "ghost"],
        ),
        case(
            "missing target table with create = never",
            job_text(pair, TABLE, "", "mode = \"truncate\"\ntable = \"public.absent\"\ncreate = \"never\""),
            &["target.table", "absent"],
        ),
        case(
            "target table missing a column",
            job_text(pair, TABLE, "", "mode = \"truncate\"\ntable = \"public.narrow\""),
            &["target.table", "narrow", "amount"],
        ),
        case(
            "checkpoint table in a missing schema",
            job_text(pair, TABLE, "[run]\ncheckpoint_table = \"nosuch.cp\"", TRUNCATE),
            &["run.checkpoint_table", "schema \"nosuch\" does not exist"],
        ),
    ]
}

/// Runs `stride run` and `stride check` for each case: both must exit 2 naming
/// what is wrong, and leave the target as it was.
async fn assert_rejected(pair: &Pair, cases: Vec<Case>) {
    let tables = ["public.src", "public.narrow"];
    assert_refused(pair, cases, &["run", "check"], &tables, false).await;
}

/// Runs each of `commands` for each case: each must exit 2 naming what is wrong
/// (every expected substring of stderr, ignoring case if `any_case`), and leave the
/// target's tables, and the rows of `tables`, as they were.
async fn assert_refused(
    pair: &Pair,
    cases: Vec<Case>,
    commands: &[&str],
    tables: &[&str],
    any_case: bool,
) {
    let mut before = tables_and_rows(&pair.target, tables).await;
    let mut failures = Vec::new();
    let mut failed_cases = std::collections::BTreeSet::new();
    for case in &cases {
        let job = job_file(&case.job);
        for command in commands {
            let out = stride(&[command, job.path.to_str().unwrap()], &[]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let found = |expected: &str| {
                if any_case {
                    stderr.to_lowercase().contains(&expected.to_lowercase())
                } else {
                    stderr.contains(expected)
                }
            };
            let mut problems = Vec::new();
            if out.status.code() != Some(2) {
                problems.push(format!("exited {:?}, expected 2", out.status.code()));
            }
            for expected in &case.expect {
                if !found(expected) {
                    problems.push(format!("stderr does not contain {expected:?}"));
                }
            }
            let after = tables_and_rows(&pair.target, tables).await;
            if after != before {
                problems.push("changed the target".to_string());
                // Judge the next cases against what is there now.
                before = after;
            }
            if !problems.is_empty() {
                failed_cases.insert(case.name.as_str());
                failures.push(format!(
                    "{}: `stride {command}`: {}\n{}",
                    case.name,
                    problems.join("; "),
                    text(&out)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed ({}):\n\n{}",
        failed_cases.len(),
        cases.len(),
        failed_cases.into_iter().collect::<Vec<_>>().join(", "),
        failures.join("\n\n")
    );
}

async fn setup(label: &str) -> Pair {
    let pair = Pair::new(label).await;
    pair.source.exec(SOURCE).await;
    pair.target.exec(TARGET).await;
    pair
}

/// Errors in the job file itself, found before connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_files_exit_2_name_the_key_and_leave_the_target_untouched() {
    let pair = setup("bad_file").await;
    let cases = file_cases(&pair);
    assert_rejected(&pair, cases).await;
}

/// Errors found against the catalogue: types, bounds, missing tables and columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_against_the_catalogue_exit_2_name_the_object_and_leave_the_target_untouched() {
    let pair = setup("bad_catalogue").await;
    let cases = catalogue_cases(&pair);
    assert_rejected(&pair, cases).await;
}

// ---------------------------------------------------------------------------------
// Target columns the copy cannot write: found before the first write.

/// Target tables the source's rows cannot fill, each holding rows of its own.
const UNWRITABLE: &str = "
CREATE TABLE public.gen (id integer NOT NULL, name text, amount numeric GENERATED ALWAYS AS (id * 2) STORED);
INSERT INTO public.gen (id, name) VALUES (-1, 'gen kept'), (-2, NULL);
CREATE TABLE public.strict (id integer NOT NULL, name text, amount numeric, owner text NOT NULL);
INSERT INTO public.strict VALUES (-1, 'strict kept', 1.5, 'someone'), (-2, NULL, NULL, 'someone else');";

/// A copied column that is generated in the target, and a NOT NULL target column
/// without a default that nothing copies: `check` and `run` exit 2 naming it,
/// whatever the method, and the target keeps its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_columns_the_copy_cannot_write_are_refused_before_anything_is_written() {
    let pair = setup("unwritable").await;
    pair.target.exec(UNWRITABLE).await;
    let copied = "table = \"public.src\"\ncolumns = [\"id\", \"name\", \"amount\"]";
    let mut cases = Vec::new();
    for method in ["copy", "insert"] {
        let target = |table: &str| {
            format!("mode = \"truncate\"\nmethod = \"{method}\"\ntable = \"{table}\"")
        };
        cases.push(case(
            format!("a copied column is generated in the target, method = {method}"),
            job_text(&pair, copied, "", &target("public.gen")),
            &["amount", "generated"],
        ));
        cases.push(case(
            format!("a copied column is generated in the target, partitioned, method = {method}"),
            job_text(
                &pair,
                copied,
                "[partition]\ncolumn = \"id\"\ncount = 2",
                &target("public.gen"),
            ),
            &["amount", "generated"],
        ));
        cases.push(case(
            format!("a NOT NULL target column without a default is not copied, method = {method}"),
            job_text(&pair, copied, "", &target("public.strict")),
            &["owner"],
        ));
        cases.push(case(
            format!("the NOT NULL key column is left out of the copied columns, method = {method}"),
            job_text(
                &pair,
                "table = \"public.src\"\ncolumns = [\"small\", \"name\"]",
                "",
                &target("public.src"),
            ),
            &["\"id\""],
        ));
    }
    assert_refused(
        &pair,
        cases,
        &["run", "check"],
        &["public.src", "public.narrow", "public.gen", "public.strict"],
        true,
    )
    .await;
}

/// `create = "if-missing"` with a source column of a type the target database does
/// not have: the table could not be created, so `check` and `run` say so before
/// writing, naming the column and the type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_defined_type_missing_from_the_target_is_refused_before_anything_is_written() {
    let pair = setup("enum_missing").await;
    pair.source
        .exec(
            "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
             CREATE TABLE public.feelings (id integer NOT NULL, feeling mood);
             INSERT INTO public.feelings SELECT g, (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::mood FROM generate_series(1, 100) g;",
        )
        .await;
    let mut cases = Vec::new();
    for method in ["copy", "insert"] {
        cases.push(case(
            format!("enum column, target table to be created, method = {method}"),
            job_text(
                &pair,
                "table = \"public.feelings\"",
                "",
                &format!("mode = \"truncate\"\nmethod = \"{method}\"\ncreate = \"if-missing\""),
            ),
            &["feeling", "mood"],
        ));
        cases.push(case(
            format!("enum column, target table to be created, partitioned, method = {method}"),
            job_text(
                &pair,
                "table = \"public.feelings\"",
                "[partition]\ncolumn = \"id\"\ncount = 3",
                &format!("mode = \"truncate\"\nmethod = \"{method}\"\ntable = \"public.fresh\""),
            ),
            &["feeling", "mood"],
        ));
    }
    assert_refused(
        &pair,
        cases,
        &["run", "check"],
        &["public.src", "public.narrow"],
        true,
    )
    .await;
}

// ---------------------------------------------------------------------------------
// `where` and `query` are the user's own SQL: when the source refuses them, that is
// a mistake in the job file, found before anything is written.

fn user_sql_cases(pair: &Pair) -> Vec<Case> {
    // Truncate mode into the target's own public.src: a write would empty it.
    let into_src = "mode = \"truncate\"\ntable = \"public.src\"";
    let with_where = |condition: &str| format!("table = \"public.src\"\nwhere = \"{condition}\"");
    let with_query = |query: &str| format!("query = \"{query}\"");
    let sections = [
        ("", ""),
        (
            ", partitioned, bounds from the source",
            "[partition]\ncolumn = \"id\"\ncount = 2",
        ),
        (
            ", partitioned, bounds given",
            "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 200\ncount = 2",
        ),
    ];
    let mut cases = Vec::new();
    for (how, partition) in sections {
        let name = |what: &str| format!("{what}{how}");
        cases.push(case(
            name("where names a missing column"),
            job_text(pair, &with_where("nosuch > 1"), partition, into_src),
            &["source.where", "nosuch"],
        ));
        cases.push(case(
            name("where is not SQL"),
            job_text(pair, &with_where("id >"), partition, into_src),
            &["source.where"],
        ));
        cases.push(case(
            name("where is not a condition"),
            job_text(pair, &with_where("name"), partition, into_src),
            &["source.where"],
        ));
        cases.push(case(
            name("query on a missing table"),
            job_text(
                pair,
                &with_query("SELECT * FROM public.no_such_table"),
                partition,
                into_src,
            ),
            &["source.query", "no_such_table"],
        ));
        cases.push(case(
            name("query is not SQL"),
            job_text(
                pair,
                &with_query("SELECT id, FROM public.src"),
                partition,
                into_src,
            ),
            &["source.query"],
        ));
        cases.push(case(
            name("query with a bad where"),
            job_text(
                pair,
                &format!(
                    "{}\nwhere = \"nosuch > 1\"",
                    with_query("SELECT * FROM public.src")
                ),
                partition,
                into_src,
            ),
            &["source.where", "nosuch"],
        ));
    }
    cases
}

/// A `where` or `query` the source refuses: `run`, `plan` and `check` exit 2 naming
/// the key, and the target keeps its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_where_and_query_exit_2_naming_the_key_and_leave_the_target_untouched() {
    let pair = setup("bad_user_sql").await;
    let cases = user_sql_cases(&pair);
    assert_refused(
        &pair,
        cases,
        &["run", "plan", "check"],
        &["public.src", "public.narrow"],
        false,
    )
    .await;
}

/// A trailing `-- comment` ends the user's line, not stride's SQL around it: every
/// command works and the rows copied are exactly the ones asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailing_line_comment_in_where_or_query_is_harmless() {
    let pair = Pair::new("sql_comment").await;
    pair.source
        .exec(
            "CREATE TABLE public.events (id integer NOT NULL, name text);
             INSERT INTO public.events SELECT g, 'event ' || g FROM generate_series(1, 1000) g;",
        )
        .await;
    let by_id = "[partition]\ncolumn = \"id\"\ncount = 3";
    let by_id_bounded =
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 1000\ncount = 4";
    let newer = "table = \"public.events\"\nwhere = \"id > 500 -- only new rows\"";
    let all = "query = \"SELECT * FROM public.events -- everything\"";
    let newer_rows = "(SELECT * FROM public.events WHERE id > 500)";
    let cases = [
        ("where", newer, "", newer_rows, 500),
        ("where, partitioned", newer, by_id, newer_rows, 500),
        ("where, partitioned, bounds given", newer, by_id_bounded, newer_rows, 500),
        ("query", all, "", "public.events", 1000),
        ("query, partitioned", all, by_id, "public.events", 1000),
        (
            "query and where, partitioned",
            "query = \"SELECT * FROM public.events -- everything\"\nwhere = \"id > 500 -- only new rows\"",
            by_id,
            newer_rows,
            500,
        ),
    ];
    for (name, source_keys, partition, expected, rows) in cases {
        for method in ["copy", "insert"] {
            let what = format!("{name}, method = {method}");
            let job = job_file(&job_text(
                &pair,
                source_keys,
                partition,
                &format!("table = \"public.events\"\nmode = \"truncate\"\nmethod = \"{method}\""),
            ));
            let path = job.path.to_str().unwrap();
            for command in [
                &["plan", path][..],
                &["plan", "--format", "json", path],
                &["check", path],
            ] {
                let out = stride(command, &[]);
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{what}: stride {command:?}\n{}",
                    text(&out)
                );
            }
            let out = run_job(&job.path);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{what}: stride run\n{}",
                text(&out)
            );
            let copied = pair.target.checksum("public.events").await;
            assert_eq!(
                copied,
                pair.source.checksum(expected).await,
                "{what}: the rows copied"
            );
            assert_eq!(copied.0, rows, "{what}");
        }
    }
}

#[test]
fn a_missing_job_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-job.toml");
    for command in ["run", "plan", "check"] {
        let out = stride(&[command, path.to_str().unwrap()], &[]);
        assert_exit(&out, 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("no-such-job.toml"), "{}", text(&out));
    }
}

#[test]
fn command_line_errors_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage"),
        (&["frobnicate"], "frobnicate"),
        (&["run"], "Usage"),
        (&["plan", "job.toml", "--format", "yaml"], "yaml"),
        (&["run", "job.toml", "--no-such-flag"], "--no-such-flag"),
        (&["run", "job.toml", "-q", "-v"], "cannot be used with"),
    ];
    for (args, expected) in cases {
        let out = stride(args, &[]);
        assert_exit(&out, 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "stride {args:?}: {}", text(&out));
    }
}

/// A target whose row-level security applies to the role: COPY FROM cannot write
/// into it, so `check` and `run` refuse method = "copy" before writing (exit 2)
/// and say to use method = "insert", which then copies through the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_with_row_level_security_is_caught_before_writing() {
    let pair = Pair::new("rls").await;
    let role = format!("stride_rls_{}", std::process::id());
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY, owner text); INSERT INTO t SELECT g, 'app' FROM generate_series(1, 500) g;")
        .await;
    pair.target
        .exec(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;
             GRANT ALL ON SCHEMA public TO {role};
             CREATE TABLE t (id int PRIMARY KEY, owner text);
             GRANT ALL ON t TO {role};
             ALTER TABLE t ENABLE ROW LEVEL SECURITY;
             CREATE POLICY apps ON t TO {role} USING (owner = 'app') WITH CHECK (owner = 'app');"
        ))
        .await;
    let mut target_url = url::Url::parse(&pair.target.url).unwrap();
    target_url.set_username(&role).unwrap();
    let job = |method: &str| {
        job_file(&format!(
            "[source]\nurl = \"{}\"\ntable = \"t\"\n[target]\nurl = \"{target_url}\"\ntable = \"t\"\nmethod = \"{method}\"\n[run]\ncheckpoint = false\n",
            pair.source.url
        ))
    };
    let copy = job("copy");
    for command in ["check", "run"] {
        let out = stride(&[command, copy.path.to_str().unwrap()], &[]);
        assert_exit(&out, 2);
        assert!(
            text(&out).contains("target.method: \"copy\" cannot write into \"t\": row-level security applies to this role there")
                && text(&out).contains("expected method = \"insert\""),
            "{command}: {}",
            text(&out)
        );
    }
    assert_eq!(pair.target.count("t").await, 0, "nothing was written");
    let insert = job("insert");
    assert_exit(&stride(&["run", insert.path.to_str().unwrap()], &[]), 0);
    assert_eq!(pair.assert_same("t", "t").await, 500);
    pair.target
        .exec(&format!(
            "DROP TABLE t; REVOKE ALL ON SCHEMA public FROM {role}; DROP ROLE {role}"
        ))
        .await;
}
