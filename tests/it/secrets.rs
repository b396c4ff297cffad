//! A password in a connection URL never appears in anything stride prints: not in
//! summaries, plans, check reports, log lines at any level, nor error messages.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The password put into every URL here. Trust authentication (as scripts/pg-local.sh
/// sets up) ignores it; a server that checks passwords gets its own password instead.
const SECRET: &str = "Sup3rS3cretPw";

/// `db`'s URL with a password in it, and that password.
fn secret_url(db: &TestDb) -> (String, String) {
    let mut url = url::Url::parse(&db.url).unwrap();
    let secret = match url.password() {
        None => SECRET.to_string(),
        Some(own) => {
            // A server that checks passwords: its own password is the secret to keep.
            assert!(
                own.len() >= 8 && !db.url.replacen(own, "", 1).contains(own),
                "the test server's password is too short to search for in output; use trust authentication (scripts/pg-local.sh)"
            );
            own.to_string()
        }
    };
    url.set_password(Some(&secret)).unwrap();
    (url.to_string(), secret)
}

/// `url` with its password moved into the query string (`?password=...`).
fn password_in_query(url: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    let password = url.password().unwrap().to_string();
    url.set_password(None).unwrap();
    url.query_pairs_mut().append_pair("password", &password);
    url.to_string()
}

/// Neither stdout nor stderr holds the secret.
fn assert_hidden(out: &Output, secret: &str, what: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains(secret) && !stderr.contains(secret),
        "{what}: the password appears in the output\n{}",
        text(out)
    );
}

struct Setup {
    pair: Pair,
    source_url: String,
    target_url: String,
    secret: String,
}

async fn setup(label: &str) -> Setup {
    let pair = Pair::new(label).await;
    pair.source
        .exec(
            "CREATE TABLE public.items (id integer NOT NULL, name text, price numeric(10,2));
             INSERT INTO public.items SELECT g, 'item ' || g, g * 0.25 FROM generate_series(1, 500) g;",
        )
        .await;
    let (source_url, secret) = secret_url(&pair.source);
    let (target_url, _) = secret_url(&pair.target);
    Setup {
        pair,
        source_url,
        target_url,
        secret,
    }
}

fn job(source_url: &str, target_url: &str, source_keys: &str) -> String {
    format!(
        "[source]\nurl = \"{source_url}\"\n{source_keys}\n[partition]\ncolumn = \"id\"\ncount = 3\n[target]\nurl = \"{target_url}\"\nmode = \"truncate\"\n"
    )
}

/// Every command, at every log level, with the URLs written in the job, taken from
/// the environment, or with the password as a query parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_commands_never_print_the_password() {
    let s = setup("secret_ok").await;
    let table = "table = \"public.items\"";
    let literal = job_file(&job(&s.source_url, &s.target_url, table));
    let from_env = job_file(&job(
        "${SOURCE_URL}",
        "${TARGET_URL:-postgres://nobody@127.0.0.1/none}",
        table,
    ));
    let in_query = job_file(&job(
        &password_in_query(&s.source_url),
        &password_in_query(&s.target_url),
        table,
    ));
    let env = [
        ("SOURCE_URL", s.source_url.as_str()),
        ("TARGET_URL", s.target_url.as_str()),
    ];
    let commands: &[&[&str]] = &[
        &["run", "-v"],
        &["run", "-vv"],
        &["plan"],
        &["plan", "--format", "json"],
        &["check"],
        &["-vv", "check"],
    ];
    for (name, file) in [
        ("literal", &literal),
        ("from the environment", &from_env),
        ("query parameter", &in_query),
    ] {
        for command in commands {
            for trace in [false, true] {
                let mut args = command.to_vec();
                args.push(file.path.to_str().unwrap());
                let mut envs = env.to_vec();
                if trace {
                    envs.push(("RUST_LOG", "trace"));
                }
                let out = stride(&args, &envs);
                let what = format!(
                    "stride {args:?} with the URL {name}{}",
                    if trace { ", RUST_LOG=trace" } else { "" }
                );
                assert_exit(&out, 0);
                assert_hidden(&out, &s.secret, &what);
                if args[0] == "run" {
                    // Logs were on: the check above looked at real output.
                    assert!(
                        !out.stderr.is_empty(),
                        "{what}: no log output\n{}",
                        text(&out)
                    );
                    assert_eq!(
                        s.pair.assert_same("public.items", "public.items").await,
                        500,
                        "{what}"
                    );
                }
            }
        }
    }
}

/// A job that must fail, and what its output must and must not show.
struct FailCase<'a> {
    name: &'static str,
    job: String,
    envs: Vec<(&'a str, &'a str)>,
    commands: &'static [&'static str],
    /// `None`: any failure (the exit code is asserted elsewhere).
    code: Option<i32>,
    /// Substrings of stderr: what went wrong and where.
    expect: Vec<String>,
}

/// Failures print what went wrong and where (host, database), never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_never_print_the_password() {
    let s = setup("secret_fail").await;
    let secret = s.secret.as_str();
    let db = s.pair.source.name.as_str();
    let table = "table = \"public.items\"";
    let all: &[&str] = &["run", "plan", "check"];
    let good = job(&s.source_url, &s.target_url, table);
    let quoted_url = format!("url = \"{}\"", s.source_url);
    let cases = vec![
        FailCase {
            name: "missing source table",
            job: job(
                &s.source_url,
                &s.target_url,
                "table = \"public.no_such_table\"",
            ),
            envs: vec![],
            commands: all,
            code: Some(2),
            expect: vec!["no_such_table".to_string(), db.to_string()],
        },
        FailCase {
            name: "missing database",
            job: good.replacen(db, "no_such_database", 1),
            envs: vec![],
            commands: all,
            code: Some(1),
            expect: vec!["127.0.0.1".to_string(), "no_such_database".to_string()],
        },
        FailCase {
            name: "TOML syntax error on the url line",
            job: good.replacen(&quoted_url, &format!("url = {}", s.source_url), 1),
            envs: vec![],
            commands: all,
            code: Some(2),
            expect: vec!["line 2".to_string()],
        },
        FailCase {
            name: "unterminated string on the url line",
            job: good.replacen(&quoted_url, &format!("url = \"{}", s.source_url), 1),
            envs: vec![],
            commands: all,
            code: Some(2),
            expect: vec!["line 2".to_string()],
        },
        FailCase {
            name: "TOML syntax error after interpolation",
            job: good.replacen(&quoted_url, "url = ${SOURCE_URL}", 1),
            envs: vec![("SOURCE_URL", s.source_url.as_str())],
            commands: all,
            code: Some(2),
            expect: vec!["line 2".to_string()],
        },
        FailCase {
            name: "URL that does not parse",
            job: good.replacen(
                &quoted_url,
                &format!("url = \"postgres://postgres:{secret}@127.0.0.1:notaport/{db}\""),
                1,
            ),
            envs: vec![],
            commands: all,
            code: Some(2),
            expect: vec!["source.url".to_string()],
        },
        FailCase {
            name: "URL with an unsupported scheme",
            job: job(
                &s.source_url,
                &s.target_url.replacen("postgres://", "oracle://", 1),
                table,
            ),
            envs: vec![],
            commands: &["run", "check"],
            code: Some(2),
            expect: vec!["target.url".to_string()],
        },
        FailCase {
            // The error repeats the URL: with the query's password hidden.
            name: "URL with the password as a parameter and a bad option",
            job: job(
                &format!("{}&sslmode=bogus", password_in_query(&s.source_url)),
                &s.target_url,
                table,
            ),
            envs: vec![],
            commands: all,
            code: None,
            expect: vec!["source.url".to_string(), "bogus".to_string()],
        },
    ];
    for case in &cases {
        let file = job_file(&case.job);
        for command in case.commands {
            for trace in [false, true] {
                let mut envs = case.envs.clone();
                if trace {
                    envs.push(("RUST_LOG", "trace"));
                }
                let out = stride(&[command, "-vv", file.path.to_str().unwrap()], &envs);
                let what = format!(
                    "{}: stride {command}{}",
                    case.name,
                    if trace { " with RUST_LOG=trace" } else { "" }
                );
                assert_hidden(&out, secret, &what);
                match case.code {
                    Some(code) => {
                        assert_eq!(out.status.code(), Some(code), "{what}\n{}", text(&out))
                    }
                    None => assert!(!out.status.success(), "{what}\n{}", text(&out)),
                }
                let stderr = String::from_utf8_lossy(&out.stderr);
                for e in &case.expect {
                    assert!(
                        stderr.contains(e.as_str()),
                        "{what}: stderr does not name {e:?}\n{}",
                        text(&out)
                    );
                }
            }
        }
    }
}

/// A copy that fails while writing (a target constraint) reports the failed
/// partition without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_never_prints_the_password() {
    let s = setup("secret_copyfail").await;
    s.pair
        .target
        .exec("CREATE TABLE public.items (id integer NOT NULL CHECK (id < 400), name text, price numeric(10,2))")
        .await;
    for method in ["copy", "insert"] {
        let file = job_file(&format!(
            "[source]\nurl = \"{}\"\ntable = \"public.items\"\n\
             [partition]\ncolumn = \"id\"\nlower_bound = 0\nupper_bound = 450\ncount = 3\n\
             [target]\nurl = \"{}\"\nmethod = \"{method}\"\n",
            s.source_url, s.target_url
        ));
        // --restart --append-again: the target was emptied by hand after the
        // previous method's run.
        let out = stride(
            &[
                "run",
                "--restart",
                "--append-again",
                "-vv",
                file.path.to_str().unwrap(),
            ],
            &[("RUST_LOG", "trace")],
        );
        assert_exit(&out, 1);
        assert_hidden(&out, &s.secret, method);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("items_id_check"),
            "{method}: {}",
            text(&out)
        );
        // The last partition (id >= 300) holds the rows the constraint refuses: it
        // was rolled back whole, the others were committed.
        assert_eq!(
            s.pair.target.count("public.items WHERE id >= 300").await,
            0,
            "{method}"
        );
        assert_eq!(s.pair.target.count("public.items").await, 299, "{method}");
        s.pair.target.exec("TRUNCATE public.items").await;
    }
}

/// Runs stride, killing it after `limit`: `None` if it had not finished by then.
fn stride_within(args: &[&str], envs: &[(&str, &str)], limit: Duration) -> Option<Output> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stride"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the stride binary runs");
    let started = Instant::now();
    while started.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A server that does not answer: exit 1 soon, naming the host and the database
/// (and why), never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_reported_promptly_without_the_password() {
    let s = setup("secret_unreachable").await;
    let port_1 = |url: &str| {
        let mut url = url::Url::parse(url).unwrap();
        url.set_port(Some(1)).unwrap();
        url.to_string()
    };
    let table = "table = \"public.items\"";
    let cases = [
        (
            "source",
            job(&port_1(&s.source_url), &s.target_url, table),
            s.pair.source.name.as_str(),
        ),
        (
            "target",
            job(&s.source_url, &port_1(&s.target_url), table),
            s.pair.target.name.as_str(),
        ),
    ];
    // Nothing listens on port 1: the connection is refused at once, so the error
    // can be too. (Not the 60 s pool acquire timeout.)
    let limit = Duration::from_secs(10);
    for (side, text_of_job, database) in &cases {
        let file = job_file(text_of_job);
        let out = stride_within(
            &["-vv", "check", file.path.to_str().unwrap()],
            &[("RUST_LOG", "trace")],
            limit,
        )
        .unwrap_or_else(|| {
            panic!("unreachable {side}: `stride check` took more than {limit:?} to give up")
        });
        let what = format!("unreachable {side}");
        assert_exit(&out, 1);
        assert_hidden(&out, &s.secret, &what);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("127.0.0.1:1") && stderr.contains(database),
            "{what}: {}",
            text(&out)
        );
        assert!(
            stderr.to_lowercase().contains("refused"),
            "{what}: the error does not say why\n{}",
            text(&out)
        );
    }
}

/// A value for a connection parameter stride does not know, as a user might put a
/// key's passphrase or a token there.
const PARAM_SECRET: &str = "Pr1vateKeyPassphrase";

/// A URL parameter stride does not recognise (libpq's `sslpassword`, a made-up
/// `api_token`) is an error, exit 2, naming the URL's key and the parameter, never
/// its value: not in the error, nor in any log line at any verbosity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_url_parameter_exits_2_naming_the_parameter_never_its_value() {
    let s = setup("secret_param").await;
    let table = "table = \"public.items\"";
    let with_params = |url: &str, params: &str| {
        let mut url = url::Url::parse(url).unwrap();
        url.set_query(Some(params));
        url.to_string()
    };
    let cases = [
        (
            "source",
            job(
                &with_params(
                    &s.source_url,
                    &format!("sslmode=disable&sslpassword={PARAM_SECRET}"),
                ),
                &s.target_url,
                table,
            ),
            &["source.url", "sslpassword"],
        ),
        (
            "target",
            job(
                &s.source_url,
                &with_params(
                    &s.target_url,
                    &format!("application_name=stride_it&api_token={PARAM_SECRET}&sslmode=disable"),
                ),
                table,
            ),
            &["target.url", "api_token"],
        ),
        (
            "source",
            // Percent-encoded: neither the encoded nor the decoded value may show.
            job(
                &with_params(
                    &s.source_url,
                    &format!("sslpassword={}%20two%2Fthree", &PARAM_SECRET[..10]),
                ),
                &s.target_url,
                table,
            ),
            &["source.url", "sslpassword"],
        ),
    ];
    let verbosity: &[&[&str]] = &[&[], &["-q"], &["-v"], &["-vv"]];
    for (side, text_of_job, expect) in &cases {
        let file = job_file(text_of_job);
        for command in ["run", "plan", "check"] {
            for flags in verbosity {
                for trace in [false, true] {
                    let mut args = vec![command];
                    args.extend_from_slice(flags);
                    args.push(file.path.to_str().unwrap());
                    let envs: &[(&str, &str)] = if trace { &[("RUST_LOG", "trace")] } else { &[] };
                    let out = stride(&args, envs);
                    let what = format!(
                        "unknown parameter in the {side} URL: stride {args:?}{}",
                        if trace { " with RUST_LOG=trace" } else { "" }
                    );
                    // Every case's value starts with these ten characters.
                    assert_hidden(&out, &PARAM_SECRET[..10], &what);
                    assert_hidden(&out, &s.secret, &what);
                    if *side == "target" && command == "plan" {
                        // `plan` never connects to the target: it may or may not
                        // look at its URL, but it never prints the value.
                        assert!(
                            matches!(out.status.code(), Some(0 | 2)),
                            "{what}\n{}",
                            text(&out)
                        );
                        continue;
                    }
                    assert_eq!(out.status.code(), Some(2), "{what}\n{}", text(&out));
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    for e in expect.iter() {
                        assert!(
                            stderr.contains(e),
                            "{what}: stderr does not name {e:?}\n{}",
                            text(&out)
                        );
                    }
                }
            }
        }
    }
    // Nothing was written: the target has no table.
    assert_eq!(
        s.pair
            .target
            .scalar_i64("SELECT count(*) FROM pg_class WHERE relname = 'items'")
            .await,
        0
    );
}
