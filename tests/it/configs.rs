//! Every job in configs/ plans and runs as shipped, against a small covid_cases
//! source seeded like scripts/seed-covid.sql. The directory is listed at run time,
//! so a config added later is covered without touching this file.

use std::path::PathBuf;

use crate::common::*;

/// covid_cases with the columns of scripts/seed-covid.sql, 20,000 rows: NULLs in
/// `tested` and the other optional counts, names with quotes, and dates before
/// 2020-03-01 and after 2021-11-01 (outside the shipped configs' bounds).
const SEED: &str = "
CREATE TABLE public.covid_cases (
    id        bigint  NOT NULL PRIMARY KEY,
    state     text    NOT NULL,
    district  text    NOT NULL,
    confirmed integer NOT NULL,
    recovered integer,
    deceased  integer,
    other     integer,
    tested    bigint,
    date      date    NOT NULL
);
INSERT INTO public.covid_cases
SELECT n,
       (ARRAY['Kerala', 'Maharashtra', 'Tamil Nadu', 'Delhi', 'Jammu and Kashmir'])[1 + n % 5],
       (ARRAY['Ernakulam', 'Pune', 'Chennai', 'South Delhi', 'S.A.S. Nagar', 'Kohima''s \"Old\" Town'])[1 + n % 6],
       (n * 37) % 100000,
       CASE WHEN n % 100 <> 7 THEN (n * 31) % 90000 END,
       CASE WHEN n % 100 <> 8 THEN (n * 3) % 1500 END,
       CASE WHEN n % 5 = 0 THEN NULL WHEN n % 7 = 0 THEN n % 40 ELSE 0 END,
       CASE WHEN n % 10 <> 3 THEN n::bigint * 17 END,
       CASE WHEN n % 997 = 0 THEN DATE '2019-12-31' - n % 40
            WHEN n % 991 = 0 THEN DATE '2021-11-01' + n % 90
            ELSE DATE '2020-03-01' + (n * 7) % 610 END
FROM generate_series(1, 20000) AS n;
ANALYZE public.covid_cases;";

fn config_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// What a config copies, read from its TOML.
struct Expectation {
    /// `SELECT <columns> FROM <source> [WHERE ...]`: the rows the target must hold.
    source_rows: String,
    /// The same columns read from the target table.
    target_rows: String,
    /// `partition.count`, or 1.
    partitions: usize,
    /// `target.mode`, or `append`.
    mode: String,
    /// An `[incremental]` section: a rerun copies what is new (here: nothing).
    incremental: bool,
}

fn expectation(config: &toml::Table) -> Expectation {
    let source = config["source"].as_table().expect("[source]");
    let target = config["target"].as_table().expect("[target]");
    let from = match (source.get("table"), source.get("query")) {
        (Some(table), None) => table.as_str().unwrap().to_string(),
        (None, Some(query)) => format!("({}) AS q", query.as_str().unwrap()),
        _ => panic!("a config has exactly one of source.table and source.query"),
    };
    let columns = match source.get("columns") {
        Some(list) => list
            .as_array()
            .unwrap()
            .iter()
            .map(|c| quote(c.as_str().unwrap()))
            .collect::<Vec<_>>()
            .join(", "),
        None => "*".to_string(),
    };
    let filter = source
        .get("where")
        .map(|w| format!(" WHERE ({})", w.as_str().unwrap()))
        .unwrap_or_default();
    let target_table = target
        .get("table")
        .or_else(|| source.get("table"))
        .expect("target.table, or a source table to default to")
        .as_str()
        .unwrap();
    let partitions = config
        .get("partition")
        .and_then(|p| p.get("count"))
        .map_or(1, |c| usize::try_from(c.as_integer().unwrap()).unwrap());
    Expectation {
        source_rows: format!("(SELECT {columns} FROM {from}{filter})"),
        target_rows: format!("(SELECT {columns} FROM {target_table})"),
        partitions,
        mode: target
            .get("mode")
            .and_then(|m| m.as_str())
            .unwrap_or("append")
            .to_string(),
        incremental: config.contains_key("incremental"),
    }
}

/// One expectation per table: a config's `[[tables]]` entries, each made of the
/// file's sections with the entry's keys filled in, as stride reads them.
fn expectations(config: &toml::Table) -> Vec<Expectation> {
    let Some(entries) = config.get("tables").and_then(|t| t.as_array()) else {
        return vec![expectation(config)];
    };
    entries
        .iter()
        .map(|entry| {
            let mut one = config.clone();
            one.remove("tables");
            for (key, value) in entry.as_table().unwrap() {
                match key.as_str() {
                    "partition" | "incremental" => {
                        one.insert(key.clone(), value.clone());
                    }
                    "target" => {
                        let target = one["target"].as_table_mut().unwrap();
                        target.extend(value.as_table().unwrap().clone());
                    }
                    _ => {
                        let source = one["source"].as_table_mut().unwrap();
                        source.insert(key.clone(), value.clone());
                    }
                }
            }
            expectation(&one)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_config_plans_and_runs_as_shipped() {
    let files = config_files();
    assert!(
        files.len() >= 2,
        "configs/ should hold at least the date and the integer-key jobs"
    );
    let source = TestDb::new("configs_src").await;
    source.exec(SEED).await;
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let contents = std::fs::read_to_string(file).unwrap();
        // The shipped configs take their URLs from the environment, which is how
        // this test points them at its own databases.
        assert!(
            contents.contains("${SOURCE_URL") && contents.contains("${TARGET_URL"),
            "{name}: source.url and target.url should come from ${{SOURCE_URL}} and ${{TARGET_URL}}"
        );
        let config: toml::Table = contents.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
        let expects = expectations(&config);
        let target = TestDb::new("configs_dst").await;
        let envs = [
            ("SOURCE_URL", source.url.as_str()),
            ("TARGET_URL", target.url.as_str()),
        ];
        let path = file.to_str().unwrap();

        // plan: every partition's SQL, and together they read each row exactly once.
        let out = stride(&["plan", path], &envs);
        assert_exit(&out, 0);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let selects = stdout
            .lines()
            .filter(|l| l.trim_start().starts_with("SELECT "))
            .count();
        let partitions_total: usize = expects.iter().map(|e| e.partitions).sum();
        assert_eq!(
            selects, partitions_total,
            "{name}: plan shows {selects} partition queries\n{stdout}"
        );
        let out = stride(&["plan", "--format", "json", path], &envs);
        assert_exit(&out, 0);
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{name}: plan --format json is not JSON: {e}\n{}",
                text(&out)
            )
        });
        // Several tables plan as a list of documents, one per table.
        let docs = match &plan {
            serde_json::Value::Array(docs) => docs.clone(),
            doc => vec![doc.clone()],
        };
        assert_eq!(docs.len(), expects.len(), "{name}: {plan}");
        for (doc, expect) in docs.iter().zip(&expects) {
            let partitions = doc["partitions"].as_array().expect("partitions");
            assert_eq!(partitions.len(), expect.partitions, "{name}: {doc}");
            let mut planned_rows = 0;
            for p in partitions {
                let sql = p["sql"].as_str().expect("sql");
                assert!(
                    stdout.contains(sql),
                    "{name}: text and JSON plans differ on {sql}"
                );
                planned_rows += source.count(&format!("({sql}) AS p")).await;
            }
            let source_rows = source.count(&format!("{} AS s", expect.source_rows)).await;
            assert_eq!(
                planned_rows, source_rows,
                "{name}: the partitions' queries read {planned_rows} rows of {source_rows}"
            );
        }
        assert_eq!(
            target
                .scalar_i64(
                    "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                )
                .await,
            0,
            "{name}: plan wrote to the target"
        );

        // run: the target holds exactly the source's rows, and again after a rerun.
        let out = stride(&["run", path], &envs);
        assert_exit(&out, 0);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut expected = Vec::new();
        for expect in &expects {
            let rows = source.checksum(&expect.source_rows).await;
            assert_eq!(
                target.checksum(&expect.target_rows).await,
                rows,
                "{name}: target {} differs from source",
                expect.target_rows
            );
            assert!(
                stdout.contains(&format!("partitions {0} written of {0}", expect.partitions)),
                "{name}: {stdout}"
            );
            expected.push(rows);
        }
        // A rerun: truncate copies afresh, replace loads and swaps in a new table,
        // overwrite creates the table again and upsert syncs again, all leaving the
        // same rows; an incremental job finds nothing new (it reads the row at its
        // mark, a unique id, again); a finished append job
        // has nothing to do; error-if-exists refuses the table its first run
        // filled. Either way the rows stay equal.
        let out = stride(&["run", path], &envs);
        for (expect, rows) in expects.iter().zip(&expected) {
            match expect.mode.as_str() {
                _ if expect.incremental => {
                    assert_exit(&out, 0);
                    assert!(
                        String::from_utf8_lossy(&out.stdout).contains("rows 1 "),
                        "{name}: an incremental rerun with nothing new copies only the row at the mark again\n{}",
                        text(&out)
                    );
                }
                "truncate" | "upsert" | "overwrite" => assert_exit(&out, 0),
                "replace" => {
                    assert_exit(&out, 0);
                    let stage = target
                        .scalar_i64(
                            "SELECT count(*) FROM pg_class WHERE relname LIKE '%\\_stride\\_stage' AND relnamespace = 'public'::regnamespace",
                        )
                        .await;
                    assert_eq!(stage, 0, "{name}: the staging table was left behind");
                }
                "append" => {
                    assert_exit(&out, 0);
                    assert!(
                        String::from_utf8_lossy(&out.stdout).contains("nothing to do"),
                        "{name}: {}",
                        text(&out)
                    );
                }
                "error-if-exists" => assert_exit(&out, 2),
                other => panic!("{name}: no rerun expectation for mode {other:?}"),
            }
            assert_eq!(
                &target.checksum(&expect.target_rows).await,
                rows,
                "{name}: rerun in {} mode",
                expect.mode
            );
        }
    }
}
