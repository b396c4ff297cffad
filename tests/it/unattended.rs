//! Running unattended: JSON logs, the JSON summary, Prometheus metrics, --set.

use crate::common::*;

async fn seeded(label: &str) -> Pair {
    let pair = Pair::new(label).await;
    pair.source
        .exec("CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g;")
        .await;
    pair
}

fn job(pair: &Pair) -> JobFile {
    job_file(&job_text(
        pair,
        "table = \"t\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 1001\ncount = 4",
        "mode = \"truncate\"",
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line() {
    let pair = seeded("json_logs").await;
    let job = job(&pair);
    let out = stride(
        &["--log-format", "json", "run", job.path.to_str().unwrap()],
        &[],
    );
    assert_exit(&out, 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let written: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "partition written")
        .collect();
    assert_eq!(written.len(), 4, "{stderr}");
    assert!(written.iter().all(|l| l["level"] == "INFO"
        && l["fields"]["rows"].is_u64()
        && l["fields"]["elapsed_ms"].is_u64()));
    let rows: u64 = written
        .iter()
        .map(|l| l["fields"]["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_summary_and_metrics_say_how_each_run_ended() {
    let pair = seeded("summary_json").await;
    let job = job(&pair);
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.json");
    let metrics = dir.path().join("stride.prom");
    let args = |job: &std::path::Path| {
        vec![
            "run".to_string(),
            "--summary-json".into(),
            summary.to_str().unwrap().into(),
            "--metrics-file".into(),
            metrics.to_str().unwrap().into(),
            job.to_str().unwrap().into(),
        ]
    };
    let run = |job: &std::path::Path| {
        let args = args(job);
        stride(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    };
    let out = run(&job.path);
    assert_exit(&out, 0);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(doc["schema_version"], 1);
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["exit_code"], 0);
    assert_eq!(doc["rows"], 1000);
    assert_eq!(doc["partitions"]["total"], 4);
    assert_eq!(doc["partitions"]["written"], 4);
    assert_eq!(doc["fingerprint"].as_str().unwrap().len(), 16);
    assert_eq!(doc["detail"].as_array().unwrap().len(), 4);
    assert_eq!(doc["detail"][0]["range"], "< 251 or NULL");
    let first = std::fs::read_to_string(&metrics).unwrap();
    assert!(first.contains("stride_last_run_success{job="), "{first}");
    assert!(first.contains("} 1\n"), "{first}");
    let success_line = first
        .lines()
        .find(|l| l.starts_with("stride_last_success_timestamp_seconds{"))
        .unwrap()
        .to_string();
    assert!(!dir.path().join("stride.prom.tmp").exists());

    // A failing run: the summary says failed, the metrics keep the last success.
    pair.target
        .exec("TRUNCATE t; ALTER TABLE t ADD CHECK (id < 900)")
        .await;
    let out = run(&job.path);
    assert_exit(&out, 1);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["partitions"]["failed"], 1);
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("violates check constraint"),
        "{doc}"
    );
    let second = std::fs::read_to_string(&metrics).unwrap();
    assert!(second.contains("stride_last_run_success{"), "{second}");
    assert!(
        second
            .lines()
            .any(|l| l.starts_with("stride_last_run_success{") && l.ends_with(" 0")),
        "{second}"
    );
    assert!(second.contains(&success_line), "{second}");
    assert!(
        second
            .lines()
            .any(|l| l.starts_with("stride_last_run_failed_partitions{") && l.ends_with(" 1")),
        "{second}"
    );

    // A bad job: exit 2, and the summary still says so.
    let bad = job_file("[source]\nurl = 'postgres://h/d'\ntable = 't'\ncuont = 1\n[target]\nurl = 'postgres://h/d'\n");
    let out = run(&bad.path);
    assert_exit(&out, 2);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(doc["status"], "invalid_job");
    assert!(
        doc["error"].as_str().unwrap().contains("source.cuont"),
        "{doc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_json_on_stdout_leaves_stdout_pure_json() {
    let pair = seeded("summary_stdout").await;
    let job = job(&pair);
    let out = stride(
        &["run", "--summary-json", "-", job.path.to_str().unwrap()],
        &[],
    );
    assert_exit(&out, 0);
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["status"], "succeeded");
    assert!(String::from_utf8_lossy(&out.stderr).contains("partitions 4 written of 4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_overrides_job_fields_with_the_same_checks() {
    let pair = seeded("set").await;
    let job = job(&pair);
    let path = job.path.to_str().unwrap();
    let out = stride(
        &[
            "plan",
            "--format",
            "json",
            "--set",
            "partition.count=2",
            "--set",
            "partition.upper_bound=501",
            path,
        ],
        &[],
    );
    assert_exit(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["partitions"].as_array().unwrap().len(), 2);
    assert_eq!(doc["upper_bound"], "501");

    let out = stride(&["run", "--set", "partition.cuont=2", path], &[]);
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("partition.cuont: unknown field"),
        "{}",
        text(&out)
    );
    let out = stride(&["run", "--set", "partition.count=0", path], &[]);
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("partition.count: 0 is out of range"),
        "{}",
        text(&out)
    );
    let out = stride(&["run", "--set", "nonsense", path], &[]);
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SECTION.KEY=VALUE"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(*) FROM pg_class WHERE relname = 't'")
            .await,
        0
    );
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let out = stride(&["completions", "bash"], &[]);
    assert_exit(&out, 0);
    let script = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        script.contains("verify") && script.contains("--summary-json"),
        "{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stride.bash");
    std::fs::write(&path, &script).unwrap();
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    for shell in ["zsh", "fish"] {
        assert_exit(&stride(&["completions", shell], &[]), 0);
    }
    let out = stride(&["man"], &[]);
    assert_exit(&out, 0);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") && page.contains(".TH stride 1"),
        "{page}"
    );
    assert!(
        page.contains("verify") && page.contains("Exit codes"),
        "{page}"
    );
}

/// `-q` is errors only: a run that succeeds prints nothing at all; one that fails
/// prints its error and the summary of what was and was not written (stderr).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_prints_nothing_on_success_and_the_error_with_its_summary_on_failure() {
    let pair = seeded("quiet").await;
    let file = job_file(&job_text(
        &pair,
        "table = \"t\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 1001\ncount = 4",
        "mode = \"truncate\"\n[run]\nverify = \"count\"",
    ));
    for args in [
        vec!["-q", "run", file.path.to_str().unwrap()],
        vec!["-q", "verify", file.path.to_str().unwrap()],
    ] {
        let out = stride(&args, &[]);
        assert_exit(&out, 0);
        assert!(
            out.stdout.is_empty() && out.stderr.is_empty(),
            "{args:?}: {}",
            text(&out)
        );
    }
    pair.assert_same("t", "t").await;

    // A target column the source's values do not fit: partition 3 fails.
    pair.target
        .exec("TRUNCATE t; ALTER TABLE t ADD CONSTRAINT small CHECK (id < 800)")
        .await;
    let out = stride(&["-q", "run", file.path.to_str().unwrap()], &[]);
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert!(stderr.contains("copy FAILED"), "{}", text(&out));
    assert!(stderr.contains("small"), "{}", text(&out));
}
