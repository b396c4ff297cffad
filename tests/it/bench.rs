//! The benchmark script (scripts/bench.sh, issue 6) runs end to end on a small
//! table, so it does not rot: every configuration is measured, every run's row
//! count checked by the script, and the markdown table has a numeric ratio for
//! each. Uses the binary under test (debug here), not a release build.

use crate::common::*;

/// The table's first column, as scripts/bench.sh labels its configurations.
const CONFIGURATIONS: [&str; 15] = [
    "psql pipe x1",
    "psql pipes x2",
    "psql pipes x4",
    "stride copy, 1 partition",
    "stride copy, 2 partitions",
    "stride copy, 4 partitions",
    "stride copy, 8 partitions (4 at once)",
    "stride copy, 8 partitions, all at once",
    "stride insert, 1 partition, batch 1000",
    "stride insert, 1 partition, batch 10000",
    "stride insert, 4 partitions, batch 1000",
    "stride insert, 4 partitions, batch 10000",
    "stride insert, 8 partitions, all at once, batch 10000",
    "psql pipe x1, indexed target",
    "stride copy, 4 partitions, indexed target, defer_indexes",
];

/// Runs `scripts/<name>` on 20,000 rows, one round, with the binary under
/// test; asserts it ended 0. The scripts name their databases after their own
/// process id, so they can run next to the other tests; they drop them at the end.
fn run_script(name: &str) -> std::process::Output {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("20000")
        .env("ROUNDS", "1")
        .env("BENCH_URL", server_url())
        .env("BENCH_MYSQL_URL", mysql_url())
        .env("STRIDE_BIN", env!("CARGO_BIN_EXE_stride"))
        .env_remove("BENCH_KEEP")
        .env_remove("RUST_LOG")
        .output()
        .expect("bash runs");
    assert_exit(&out, 0);
    out
}

#[test]
fn bench_script_measures_every_configuration_on_a_small_table() {
    let started = std::time::Instant::now();
    let out = run_script("bench.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("### 20,000 rows, 1 round(s)"), "{stdout}");
    assert!(stdout.contains("- PostgreSQL "), "{stdout}");

    // | configuration | median s | runs s | rows/s | MB/s | peak client MiB | ratio | reference |
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| {
            l.starts_with("| ") && !l.starts_with("| configuration") && !l.starts_with("| ---")
        })
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), CONFIGURATIONS.len(), "{stdout}");
    for name in CONFIGURATIONS {
        let row = rows
            .iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no row for {name:?} in\n{stdout}"));
        assert_eq!(row.len(), 8, "{row:?}");
        let number = |i: usize| -> f64 {
            row[i]
                .replace(',', "")
                .parse()
                .unwrap_or_else(|_| panic!("{name}: column {i} is not a number: {row:?}"))
        };
        assert!(number(1) > 0.0, "median time of {name}: {row:?}");
        assert!(number(3) > 0.0, "rows/s of {name}: {row:?}");
        let ratio = number(6);
        assert!(ratio.is_finite() && ratio > 0.0, "ratio of {name}: {row:?}");
        if name.starts_with("psql pipe x1") {
            assert_eq!(row[6], "1.00", "the single pipe is its own reference");
        }
    }
    for line in [
        "stride copy, 8 partitions (4 at once) vs stride copy, 2 partitions (same round, median): ",
        "stride copy, 8 partitions, all at once vs stride copy, 2 partitions (same round, median): ",
        "stride copy, 8 partitions, all at once: peak client memory ",
        "stride insert, 8 partitions, all at once, batch 10000: peak client memory ",
        "stride plan, 8 partitions (whole process): median ",
        "indexed target: stride copy with defer_indexes is ",
    ] {
        assert!(stdout.contains(line), "no {line:?} in\n{stdout}");
    }
    eprintln!(
        "scripts/bench.sh 20000 took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// scripts/bench-engines.sh (issue 13) runs end to end on a small table: both
/// directions between PostgreSQL and SQLite against the pipes, each run's
/// row count checked by the script, a numeric ratio and stride's peak memory
/// for each.
#[test]
fn bench_engines_script_measures_both_directions_on_a_small_table() {
    let out = run_script("bench-engines.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("### PostgreSQL and SQLite, 20,000 rows, 1 round(s)"),
        "{stdout}"
    );
    let rows = comparison_rows(&stdout);
    let names: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(
        names,
        [
            "pipe psql csv into sqlite3 .import",
            "stride pg -> sqlite, 4 partitions",
            "pipe sqlite3 -csv into psql copy",
            "stride sqlite -> pg, 4 partitions",
        ],
        "{stdout}"
    );
    assert_measured(&rows);
}

/// scripts/bench-mysql.sh (issue 14) runs end to end on a small table: every
/// direction with MySQL against what users run instead (pgloader and
/// mydumper where installed), each run's row count checked by the script, a
/// numeric ratio and stride's peak memory for each.
#[test]
fn bench_mysql_script_measures_every_direction_on_a_small_table() {
    let out = run_script("bench-mysql.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("### MySQL/MariaDB and PostgreSQL, 20,000 rows, 1 round(s)"),
        "{stdout}"
    );
    let rows = comparison_rows(&stdout);
    let installed = |tool: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut expected = vec!["mysql --quick piped into psql copy (reference)"];
    if installed("pgloader") {
        expected.push("pgloader, data only");
    }
    expected.extend([
        "stride mysql -> pg, 4 partitions",
        "LOAD DATA LOCAL INFILE from a file (reference)",
        "stride pg -> mysql, 4 partitions",
    ]);
    if installed("mydumper") && installed("myloader") {
        expected.extend([
            "mydumper then myloader, 4 threads (reference)",
            "stride mysql -> mysql, 4 partitions",
        ]);
    } else {
        expected.push("stride mysql -> mysql, 4 partitions (vs LOAD DATA)");
    }
    let names: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(names, expected, "{stdout}");
    assert_measured(&rows);
}

/// The rows of a comparison table (bench-engines.sh, bench-mysql.sh): name,
/// median seconds, ratio, peak MiB.
fn comparison_rows(stdout: &str) -> Vec<Vec<&str>> {
    stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| configuration"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect()
}

/// Every row has a time and a ratio above zero, and stride's rows their peak
/// memory where GNU time measures it.
fn assert_measured(rows: &[Vec<&str>]) {
    let memory = std::path::Path::new("/usr/bin/time").exists();
    for row in rows {
        let seconds: f64 = row[1].parse().unwrap_or_else(|_| panic!("{row:?}"));
        let ratio: f64 = row[2]
            .trim_end_matches('x')
            .parse()
            .unwrap_or_else(|_| panic!("{row:?}"));
        assert!(seconds > 0.0 && ratio > 0.0, "{row:?}");
        if row[0].starts_with("stride") && memory {
            let mib: f64 = row[3].parse().unwrap_or_else(|_| panic!("{row:?}"));
            assert!(mib > 1.0, "{row:?}");
        }
    }
}
