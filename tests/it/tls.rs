//! A TLS-only PostgreSQL of the test's own (`hostssl` lines only, certificates
//! made here with `openssl`): every sslmode that should reach it does, plain text
//! is turned down by the server, a wrong host name, an unknown CA and a missing
//! client certificate fail with what to do, client-certificate authentication
//! works, and `check`, `plan`, the summary and `--summary-json` say how the
//! sessions are encrypted. The target is a database on the shared test server,
//! reached in plain text (`sslmode=disable` in its URL, so that the PG*
//! variables of a case apply to the source only).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sqlx::{Connection, PgConnection};

use crate::cluster::{as_postgres, free_port, is_root, newest_bindir, stop_cluster};
use crate::common::{assert_exit, job_file, stride, text, TestDb};

/// A TLS-only cluster and the certificates made for it; stopped and removed on
/// drop.
struct TlsServer {
    port: u16,
    /// CA, server and client certificates and keys.
    certs: tempfile::TempDir,
    data: tempfile::TempDir,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        stop_cluster(self.data.path());
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a certificate signed by it for `subject` with `san` (if any).
fn issue(dir: &Path, ca: &str, name: &str, subject: &str, san: Option<&str>) {
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ],
        dir,
    );
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        match san {
            Some(san) => format!("subjectAltName={san}\n"),
            None => "basicConstraints=CA:FALSE\n".to_string(),
        },
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &ext,
        ],
        dir,
    );
    std::fs::set_permissions(
        dir.join(format!("{name}.key")),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

fn new_ca(dir: &Path, name: &str) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-subj",
            &format!("/CN=stride test {name}"),
        ],
        dir,
    );
}

impl TlsServer {
    async fn start() -> TlsServer {
        let bindir = newest_bindir()
            .expect("PostgreSQL server binaries under /usr/lib/postgresql/*/bin (scripts/pg-local.sh installs them)");
        let tempdir = |prefix: &str| {
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in("/tmp")
                .expect("creating a directory under /tmp")
        };
        let certs = tempdir("stride-tls-certs-");
        let data = tempdir("stride-tls-data-");
        let c = certs.path();
        new_ca(c, "ca");
        new_ca(c, "other-ca");
        // The server's certificate names localhost only, so 127.0.0.1 is a
        // wrong host name for verify-full.
        issue(c, "ca", "server", "/CN=localhost", Some("DNS:localhost"));
        issue(c, "ca", "client", "/CN=certuser", None);

        let d = data.path();
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres:")
                .arg(d)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let out = as_postgres(&bindir.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(d)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The server reads its key and the CA as the postgres OS user, key 0600.
        for f in ["server.crt", "server.key", "ca.crt"] {
            std::fs::copy(c.join(f), d.join(f)).unwrap();
            if is_root() {
                Command::new("chown")
                    .arg("postgres:")
                    .arg(d.join(f))
                    .status()
                    .unwrap();
            }
        }
        std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(
            &mut conf,
            format!(
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n\
                 listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 40\n",
                d.display()
            )
            .as_bytes(),
        )
        .unwrap();
        // TLS only over TCP: no `host` line, so plain text is turned down.
        std::fs::write(
            d.join("pg_hba.conf"),
            "local all all trust\nhostssl all postgres 127.0.0.1/32 trust\nhostssl all certuser 127.0.0.1/32 cert\n",
        )
        .unwrap();
        let mut failures = String::new();
        for _ in 0..3 {
            let port = free_port();
            let out = as_postgres(&bindir.join("pg_ctl"))
                .arg("-D")
                .arg(d)
                .args(["-w", "-t", "30", "-l"])
                .arg(d.join("log"))
                .args(["-o", &format!("-p {port}"), "start"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            if out.status.success() {
                let server = TlsServer { port, certs, data };
                server.seed().await;
                return server;
            }
            failures.push_str(&std::fs::read_to_string(d.join("log")).unwrap_or_default());
        }
        panic!("the TLS-only server did not start:\n{failures}");
    }

    /// The source table, and the role that logs in with its certificate, over the
    /// Unix socket (trusted).
    async fn seed(&self) {
        let url = format!(
            "postgres://postgres@localhost:{}/postgres?host={}",
            self.port,
            self.data.path().display()
        );
        let mut conn = PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE ROLE certuser LOGIN SUPERUSER;
             CREATE TABLE items (id int PRIMARY KEY, name text, at timestamptz);
             INSERT INTO items SELECT g, 'item ' || g, '2024-01-01'::timestamptz + g * interval '1 hour'
             FROM generate_series(1, 2000) g;
             INSERT INTO items VALUES (0, NULL, NULL);",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.ok();
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.certs.path().join(name)
    }

    fn url(&self, host: &str, user: &str, query: &str) -> String {
        format!("postgres://{user}@{host}:{}/postgres{query}", self.port)
    }
}

fn job(source_url: &str, target: &TestDb) -> crate::common::JobFile {
    job_file(&format!(
        "[source]\nurl = \"{source_url}\"\ntable = \"items\"\n\
         [partition]\ncolumn = \"id\"\ncount = 3\n\
         [target]\nurl = \"{}?sslmode=disable\"\ntable = \"items\"\nmode = \"truncate\"\n",
        target.url
    ))
}

async fn assert_copied(server: &TlsServer, target: &TestDb) {
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?host={}",
        server.port,
        server.data.path().display()
    );
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let source = crate::common::checksum(&mut conn, "items").await;
    assert_eq!(source.0, 2001);
    assert_eq!(target.checksum("items").await, source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_that_should_reach_a_tls_only_server_copies_through_it() {
    let server = TlsServer::start().await;
    let target = TestDb::new("tls_modes").await;
    let ca = server.cert("ca.crt");
    let ca = ca.to_str().unwrap();
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".postgresql")).unwrap();
    std::fs::copy(ca, home.path().join(".postgresql/root.crt")).unwrap();
    let home = home.path().to_str().unwrap();

    // (source URL, environment, what the summary says of the source)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            server.url("127.0.0.1", "postgres", ""),
            vec![],
            "server certificate not verified (sslmode=prefer)",
        ),
        (
            server.url("127.0.0.1", "postgres", "?sslmode=prefer"),
            vec![],
            "server certificate not verified (sslmode=prefer)",
        ),
        // allow tries plain text first; the server turns it down; TLS follows.
        (
            server.url("127.0.0.1", "postgres", "?sslmode=allow"),
            vec![],
            "server certificate not verified (sslmode=allow)",
        ),
        (
            server.url("127.0.0.1", "postgres", "?sslmode=require"),
            vec![],
            "server certificate not verified (sslmode=require)",
        ),
        // require with a root certificate verifies the chain, as libpq does.
        (
            server.url(
                "127.0.0.1",
                "postgres",
                &format!("?sslmode=require&sslrootcert={ca}"),
            ),
            vec![],
            "certificate chain verified, host name not checked (sslmode=require)",
        ),
        (
            server.url(
                "127.0.0.1",
                "postgres",
                &format!("?sslmode=verify-ca&sslrootcert={ca}"),
            ),
            vec![],
            "certificate chain verified, host name not checked (sslmode=verify-ca)",
        ),
        (
            server.url(
                "localhost",
                "postgres",
                &format!("?sslmode=verify-full&sslrootcert={ca}"),
            ),
            vec![],
            "certificate and host name verified (sslmode=verify-full)",
        ),
        // PGSSLMODE and PGSSLROOTCERT, and ~/.postgresql/root.crt.
        (
            server.url("localhost", "postgres", ""),
            vec![("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca)],
            "certificate and host name verified (sslmode=verify-full)",
        ),
        (
            server.url("localhost", "postgres", "?sslmode=verify-full"),
            vec![("HOME", home)],
            "certificate and host name verified (sslmode=verify-full)",
        ),
    ];
    for (url, envs, says) in &cases {
        let job = job(url, &target);
        let summary = job.path.with_file_name("summary.json");
        let out = stride(
            &[
                "run",
                "--summary-json",
                summary.to_str().unwrap(),
                job.path.to_str().unwrap(),
            ],
            envs,
        );
        assert_exit(&out, 0);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("encryption: "))
            .unwrap_or_else(|| panic!("no encryption line for {url}: {}", text(&out)));
        assert!(
            line.starts_with("encryption: source TLSv1.3 ") && line.contains(says),
            "{url} {envs:?}: {line}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        assert_eq!(json["encryption"]["source"]["tls"], "TLSv1.3", "{json}");
        assert!(json["encryption"]["source"]["cipher"].is_string(), "{json}");
        assert_copied(&server, &target).await;
    }

    // check and plan say it too.
    let url = server.url(
        "localhost",
        "postgres",
        &format!("?sslmode=verify-full&sslrootcert={ca}"),
    );
    let job = job(&url, &target);
    let out = stride(&["check", job.path.to_str().unwrap()], &[]);
    assert_exit(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with("encryption: source TLSv1.3 TLS_AES_256_GCM_SHA384, certificate and host name verified (sslmode=verify-full); target none, plain text (sslmode=disable)\n"),
        "{}",
        text(&out)
    );
    let out = stride(
        &["plan", "--format", "json", job.path.to_str().unwrap()],
        &[],
    );
    assert_exit(&out, 0);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["source_encryption"]["tls"], "TLSv1.3");
    assert_eq!(plan["source_encryption"]["verified"], "full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_failures_say_which_side_host_mode_and_what_to_do() {
    let server = TlsServer::start().await;
    let target = TestDb::new("tls_fail").await;
    let ca = server.cert("ca.crt");
    let other = server.cert("other-ca.crt");
    let (ca, other) = (ca.to_str().unwrap(), other.to_str().unwrap());
    let cases = [
        (
            server.url("127.0.0.1", "postgres", "?sslmode=disable"),
            vec![
                "connecting to the source database at 127.0.0.1:",
                "sslmode=disable; the server accepts only encrypted connections from here: set sslmode=require",
                "no encryption",
            ],
        ),
        (
            server.url("127.0.0.1", "postgres", &format!("?sslmode=verify-full&sslrootcert={ca}")),
            vec![
                "connecting to the source database at 127.0.0.1:",
                "(sslmode=verify-full): the server's certificate is not valid for host \"127.0.0.1\" (it names localhost): name mismatch",
                "use sslmode=verify-ca",
            ],
        ),
        (
            server.url("localhost", "postgres", &format!("?sslmode=verify-ca&sslrootcert={other}")),
            vec![
                "(sslmode=verify-ca): the server's certificate is not signed by a CA in sslrootcert (",
                "unknown issuer (set sslrootcert to the CA bundle",
            ],
        ),
        (
            server.url("localhost", "postgres", "?sslmode=verify-full"),
            vec!["source.url: sslmode=verify-full needs a root certificate"],
        ),
        (
            server.url("localhost", "certuser", "?sslmode=require"),
            vec![
                "(sslmode=require; the server logs this user in by certificate: set sslcert and sslkey",
                "connection requires a valid client certificate",
            ],
        ),
    ];
    for (i, (url, expected)) in cases.iter().enumerate() {
        let job = job(url, &target);
        let out = stride(
            &["run", job.path.to_str().unwrap()],
            &[("HOME", "/nonexistent")],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{}", text(&out));
        for e in expected {
            assert!(
                stderr.contains(e),
                "case {i} {url}: expected {e:?} in\n{}",
                text(&out)
            );
        }
        // Nothing was written.
        assert_eq!(
            target
                .scalar_i64("SELECT count(*) FROM pg_tables WHERE tablename = 'items'")
                .await,
            0,
            "case {i}"
        );
    }
    // A job error (the URL cannot work) is exit 2; the server's refusals are
    // connection failures, exit 1.
    let file = job(&cases[3].0, &target);
    assert_exit(
        &stride(
            &["run", file.path.to_str().unwrap()],
            &[("HOME", "/nonexistent")],
        ),
        2,
    );
    let file = job(&cases[1].0, &target);
    assert_exit(&stride(&["run", file.path.to_str().unwrap()], &[]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_where_the_server_asks_for_one() {
    let server = TlsServer::start().await;
    let target = TestDb::new("tls_cert").await;
    let (ca, cert, key) = (
        server.cert("ca.crt"),
        server.cert("client.crt"),
        server.cert("client.key"),
    );
    let url = server.url(
        "localhost",
        "certuser",
        &format!(
            "?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            ca.display(),
            cert.display(),
            key.display()
        ),
    );
    let file = job(&url, &target);
    let out = stride(&["run", file.path.to_str().unwrap()], &[]);
    assert_exit(&out, 0);
    assert_copied(&server, &target).await;

    // The same from ~/.postgresql/postgresql.crt and postgresql.key.
    let home = tempfile::tempdir().unwrap();
    let dot = home.path().join(".postgresql");
    std::fs::create_dir(&dot).unwrap();
    std::fs::copy(&ca, dot.join("root.crt")).unwrap();
    std::fs::copy(&cert, dot.join("postgresql.crt")).unwrap();
    std::fs::copy(&key, dot.join("postgresql.key")).unwrap();
    let url = server.url("localhost", "certuser", "?sslmode=verify-full");
    let file = job(&url, &target);
    let envs = [("HOME", home.path().to_str().unwrap())];
    std::fs::set_permissions(
        dot.join("postgresql.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert_exit(&stride(&["run", file.path.to_str().unwrap()], &envs), 0);
    assert_copied(&server, &target).await;

    // A key others can read is refused before connecting, as libpq does.
    std::fs::set_permissions(
        dot.join("postgresql.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = stride(&["run", file.path.to_str().unwrap()], &envs);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("has group or world access"),
        "{}",
        text(&out)
    );
}
