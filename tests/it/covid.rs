//! The "done means": 1,000,000 covid_cases rows seeded by the project's own
//! script, copied by the shipped config in 4 partitions, identical on the target,
//! with the client's memory far below the table's size.

use std::time::Duration;

use crate::common::*;

/// Peak resident memory of a running process, from /proc (VmHWM only grows, so the
/// last reading before exit is the peak).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_covid_cases_copy_identically_in_bounded_memory() {
    let pair = Pair::new("covid").await;
    let seed = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "rows=1000000",
            "-f",
            "scripts/seed-covid.sql",
            &pair.source.url,
        ])
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .output()
        .expect("psql runs (scripts/pg-local.sh installs it with the server)");
    assert!(
        seed.status.success(),
        "seeding failed: {}",
        String::from_utf8_lossy(&seed.stderr)
    );

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stride"))
        .args(["run", "configs/covid_cases.toml"])
        .env("SOURCE_URL", &pair.source.url)
        .env("TARGET_URL", &pair.target.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("partitions 4 written of 4"), "{stdout}");
    assert!(stdout.contains("rows 1,000,000"), "{stdout}");
    assert!(stdout.contains("binary COPY"), "{stdout}");
    assert_eq!(
        pair.assert_same("public.covid_cases", "public.covid_cases")
            .await,
        1_000_000
    );
    // The table is ~90 MB on the wire; 4 partitions buffer about 1 MiB each.
    assert!(
        peak > 0 && peak < 48 * 1024,
        "peak client memory {peak} KiB"
    );
}
