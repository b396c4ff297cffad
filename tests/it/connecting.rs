//! The libpq URL parameters users paste besides TLS: a Unix socket directory,
//! `connect_timeout`, `target_session_attrs`, `keepalives*`, `application_name`,
//! and libpq parameters stride refuses by name.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

async fn seeded(label: &str) -> Pair {
    let pair = Pair::new(label).await;
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3000) g;")
        .await;
    pair
}

fn job(source_url: &str, target_url: &str, source_keys: &str) -> JobFile {
    job_file(&format!(
        "[source]\nurl = \"{source_url}\"\ntable = \"t\"\n{source_keys}\n\
         [partition]\ncolumn = \"id\"\ncount = 2\n\
         [target]\nurl = \"{target_url}\"\ntable = \"t\"\nmode = \"truncate\"\n\
         [run]\nretries = 1\n"
    ))
}

/// `url` with `query` added to its parameters.
fn with(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_directory_in_host_connects_unencrypted() {
    let pair = seeded("socket").await;
    let dirs = pair
        .source
        .scalar_string("SELECT current_setting('unix_socket_directories')")
        .await;
    let dir = dirs.split(',').next().unwrap().trim().to_string();
    let port = pair
        .source
        .scalar_string("SELECT current_setting('port')")
        .await;
    let url = format!(
        "postgres:///{}?host={dir}&port={port}&user=postgres&sslmode=require",
        pair.source.name
    );
    let file = job(&url, &pair.target.url, "");
    let out = run_job(&file.path);
    assert_exit(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("encryption: source none, Unix socket; "),
        "{}",
        text(&out)
    );
    assert_eq!(pair.assert_same("t", "t").await, 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_ends_a_connection_that_never_answers() {
    let pair = seeded("connect_timeout").await;
    // A listener that takes connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/db?connect_timeout=2");
    let file = job(&url, &pair.target.url, "");
    let started = Instant::now();
    let out = run_job(&file.path);
    let took = started.elapsed();
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "connecting to the source database at 127.0.0.1:{port}/db (after 2 attempts): no answer within 2 s (connect_timeout"
        )),
        "{}",
        text(&out)
    );
    // Two attempts of 2 s and a back-off of at most 0.75 s.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // PGCONNECT_TIMEOUT does the same when the URL says nothing.
    let url = format!("postgres://postgres@127.0.0.1:{port}/db");
    let file = job(&url, &pair.target.url, "");
    let out = stride(
        &["run", file.path.to_str().unwrap()],
        &[("PGCONNECT_TIMEOUT", "2")],
    );
    assert_exit(&out, 1);
    assert!(
        text(&out).contains("no answer within 2 s"),
        "{}",
        text(&out)
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_session_attrs_is_checked_on_the_server() {
    let pair = seeded("session_attrs").await;
    let file = job(
        &with(&pair.source.url, "target_session_attrs=read-write"),
        &with(&pair.target.url, "target_session_attrs=primary"),
        "",
    );
    assert_exit(&run_job(&file.path), 0);
    assert_eq!(pair.assert_same("t", "t").await, 3000);

    pair.target.exec("TRUNCATE t").await;
    let file = job(
        &pair.source.url,
        &with(&pair.target.url, "target_session_attrs=read-only"),
        "",
    );
    let out = run_job(&file.path);
    assert_exit(&out, 2);
    let target = url::Url::parse(&pair.target.url).unwrap();
    let place = format!(
        "{}:{}/{}",
        target.host_str().unwrap(),
        target.port().unwrap_or(5432),
        pair.target.name
    );
    assert!(
        text(&out).contains(&format!(
            "target.url: target_session_attrs=read-only but the server at {place} is read-write (a primary)"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(pair.target.count("t").await, 0, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_libpq_parameters_are_refused_by_name() {
    let pair = seeded("refused").await;
    for (param, why) in [
        (
            "sslcrl=/crl.pem",
            "certificate revocation lists are not checked",
        ),
        ("gssencmode=require", "GSSAPI encryption is not supported"),
        ("service=prod", "connection service files are not supported"),
    ] {
        let file = job(&with(&pair.source.url, param), &pair.target.url, "");
        let out = run_job(&file.path);
        assert_exit(&out, 2);
        let name = param.split('=').next().unwrap();
        assert!(
            text(&out).contains(&format!(
                "source.url: parameter \"{name}\" is not supported by stride ({why}"
            )),
            "{}",
            text(&out)
        );
    }
}

/// `ss` shows a keepalive timer counting down from keepalives_idle.
fn assert_keepalive_within(line: &str, idle_secs: f64) {
    let timer = line
        .split("timer:(keepalive,")
        .nth(1)
        .unwrap_or_else(|| panic!("no keepalive timer on the socket: {line}"));
    let value = timer.split(',').next().unwrap();
    let secs = if let Some(ms) = value.strip_suffix("ms") {
        ms.parse::<f64>().unwrap() / 1000.0
    } else if let Some(s) = value.strip_suffix("sec") {
        s.parse::<f64>().unwrap()
    } else if let Some(m) = value.strip_suffix("min") {
        m.parse::<f64>().unwrap() * 60.0
    } else {
        panic!("a keepalive timer of {value}: {line}")
    };
    assert!(
        secs <= idle_secs,
        "keepalives_idle={idle_secs}, but: {line}"
    );
}

/// The `ss` lines of `pid`'s TCP sockets connected to `port`.
fn sockets_of(pid: u32, port: &str) -> Vec<String> {
    let out = Command::new("ss")
        .args(["-tnpo"])
        .output()
        .expect("ss runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")) && l.contains(&format!(":{port} ")))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_has_tcp_keepalives_on_both_ends() {
    let pair = seeded("keepalives").await;
    let port = pair
        .source
        .scalar_string("SELECT current_setting('port')")
        .await;
    let keepalives = "keepalives_idle=7&keepalives_interval=3&keepalives_count=2&application_name=nightly-orders";
    // A slow source, so that the run lasts while the sockets are looked at.
    let file = job_file(&format!(
        "[source]\nurl = \"{}\"\nquery = \"SELECT id, v FROM t WHERE pg_sleep(0.002) IS NOT NULL\"\n\
         [target]\nurl = \"{}\"\ntable = \"t\"\nmode = \"truncate\"\n",
        with(&pair.source.url, keepalives),
        with(&pair.target.url, keepalives),
    ));
    let running =
        Running::start(&["run", "-v", file.path.to_str().unwrap()]).wait_for_line("copying");
    std::thread::sleep(Duration::from_millis(500));
    let pid = running.pid();
    let sockets = sockets_of(pid, &port);
    let all = Command::new("ss")
        .args(["-tnpo"])
        .output()
        .expect("ss runs");
    let all = String::from_utf8_lossy(&all.stdout).to_string();
    let sessions = pair
        .source
        .scalar_i64(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'nightly-orders'",
        )
        .await;
    let out = running.finish();
    assert_exit(&out, 0);
    assert!(
        !sockets.is_empty(),
        "no sockets of stride (pid {pid}) on port {port}"
    );
    for line in &sockets {
        assert_keepalive_within(line, 7.0);
        // The server's end of the same connection (the server runs here too):
        // the socket whose peer is stride's local address.
        let local = line.split_whitespace().nth(3).unwrap();
        let server_end = all
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some(local))
            .unwrap_or_else(|| panic!("no server socket with peer {local}:\n{all}"));
        assert_keepalive_within(server_end, 7.0);
    }
    assert!(sessions >= 1, "stride's sessions carry application_name");
    assert_eq!(pair.assert_same("t", "t").await, 3000);
}
