//! Shared test harness: a fresh database per test on a real PostgreSQL server
//! (and on a MySQL/MariaDB server: [`MysqlDb`]), the built binary, and an
//! order-independent checksum of a table's rows.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::{Connection, MySqlConnection, PgConnection};

/// The server the tests use: `STRIDE_TEST_PG_URL` (a URL to any database on it,
/// e.g. `postgres://postgres@127.0.0.1:5432/postgres`), as `scripts/test.sh` sets it.
pub fn server_url() -> String {
    std::env::var("STRIDE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// `url` with its database replaced by `database`.
pub fn url_for(database: &str) -> String {
    let mut url = url::Url::parse(&server_url()).expect("STRIDE_TEST_PG_URL is a URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A database created for one test and dropped when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new(label: &str) -> TestDb {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("stride_test_{}_{n}_{label}", std::process::id());
        let mut admin = PgConnection::connect(&server_url())
            .await
            .expect("the test server answers at STRIDE_TEST_PG_URL (run scripts/test.sh)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\""
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .unwrap();
        let url = url_for(&name);
        TestDb { name, url }
    }

    pub async fn conn(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }

    /// Runs SQL (several statements allowed).
    pub async fn exec(&self, sql: &str) {
        let mut conn = self.conn().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("running {sql}: {e}"));
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        let mut conn = self.conn().await;
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }

    pub async fn scalar_string(&self, sql: &str) -> String {
        let mut conn = self.conn().await;
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }

    /// Row count and checksum of a table or parenthesised query: see [`checksum`].
    pub async fn checksum(&self, table: &str) -> (i64, String) {
        checksum(&mut self.conn().await, table).await
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.scalar_i64(&format!("SELECT count(*) FROM {table}"))
            .await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async code: use a thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&server_url()).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

/// The MySQL/MariaDB server the tests use: `STRIDE_TEST_MYSQL_URL` (a URL to the
/// server as a user that may create databases, e.g. `mysql://root@127.0.0.1:3306/`),
/// as `scripts/test.sh` sets it. Unlike [`server_url`] there is no default: a
/// MySQL test run without the variable says how to get a server instead of
/// failing to connect.
pub fn mysql_url() -> String {
    std::env::var("STRIDE_TEST_MYSQL_URL").unwrap_or_else(|_| {
        panic!(
            "STRIDE_TEST_MYSQL_URL is not set: run the tests with scripts/test.sh (it starts \
             a MariaDB with scripts/mariadb-local.sh when none answers), or set it to a \
             server's URL, e.g. STRIDE_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/"
        )
    })
}

/// `mysql_url()` with its database replaced by `database`.
pub fn mysql_url_for(database: &str) -> String {
    let mut url = url::Url::parse(&mysql_url()).expect("STRIDE_TEST_MYSQL_URL is a URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

/// A MySQL/MariaDB database created for one test (utf8mb4, a unique name) and
/// dropped when the value is dropped.
pub struct MysqlDb {
    pub name: String,
    pub url: String,
}

impl MysqlDb {
    pub async fn new(label: &str) -> MysqlDb {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("stride_test_{}_{n}_{label}", std::process::id());
        assert!(
            name.len() <= 64,
            "MySQL database names have at most 64 characters: {name}"
        );
        let mut admin = MySqlConnection::connect(&mysql_url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the test server answers at STRIDE_TEST_MYSQL_URL (run scripts/test.sh): {e}"
                )
            });
        // utf8mb4 said explicitly: a server without configuration (MariaDB's
        // own defaults) would create latin1 databases.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
        )))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("creating MySQL database {name}: {e}"));
        admin.close().await.ok();
        let url = mysql_url_for(&name);
        MysqlDb { name, url }
    }

    pub async fn conn(&self) -> MySqlConnection {
        MySqlConnection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connecting to MySQL database {}: {e}", self.name))
    }

    /// Runs SQL (several statements allowed).
    pub async fn exec(&self, sql: &str) {
        let mut conn = self.conn().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("running {sql}: {e}"));
    }
}

impl Drop for MysqlDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async code: use a thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = MySqlConnection::connect(&mysql_url()).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS `{name}`"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Runs SQL (several statements allowed) on a connection.
pub async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("running {sql}: {e}"));
}

/// Row count and an order-independent checksum of every column of every row of
/// `from` (a table or a parenthesised query): the md5 of all rows' text forms,
/// sorted. Equal on both sides means the same multiset of rows.
pub async fn try_checksum(
    conn: &mut PgConnection,
    from: &str,
) -> Result<(i64, String), sqlx::Error> {
    sqlx::raw_sql("SET TimeZone = 'UTC'; SET extra_float_digits = 3")
        .execute(&mut *conn)
        .await?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {from} AS t"
    )))
    .fetch_one(conn)
    .await
}

pub async fn checksum(conn: &mut PgConnection, from: &str) -> (i64, String) {
    try_checksum(conn, from)
        .await
        .unwrap_or_else(|e| panic!("checksum of {from}: {e}"))
}

/// A source and a target database.
pub struct Pair {
    pub source: TestDb,
    pub target: TestDb,
}

impl Pair {
    pub async fn new(label: &str) -> Pair {
        Pair {
            source: TestDb::new(&format!("{label}_src")).await,
            target: TestDb::new(&format!("{label}_dst")).await,
        }
    }

    /// Asserts the source and target tables hold the same rows; returns the count.
    pub async fn assert_same(&self, source_table: &str, target_table: &str) -> i64 {
        let s = self.source.checksum(source_table).await;
        let t = self.target.checksum(target_table).await;
        assert_eq!(
            s, t,
            "source {source_table} and target {target_table} differ"
        );
        s.0
    }
}

/// A job file in a temporary directory (kept alive by the returned guard).
pub struct JobFile {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn job_file(text: &str) -> JobFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.toml");
    std::fs::write(&path, text).unwrap();
    JobFile { _dir: dir, path }
}

/// A job between the pair's databases, with `body` holding any other keys:
/// `[source]` gets `url`, `[target]` gets `url`, the rest is as written.
pub fn job_text(pair: &Pair, source_keys: &str, rest: &str, target_keys: &str) -> String {
    format!(
        "[source]\nurl = \"{}\"\n{source_keys}\n{rest}\n[target]\nurl = \"{}\"\n{target_keys}\n",
        pair.source.url, pair.target.url
    )
}

/// Runs the built binary.
pub fn stride(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stride"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("the stride binary runs")
}

pub fn run_job(path: &Path) -> Output {
    stride(&["run", path.to_str().unwrap()], &[])
}

pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Asserts the exit code, showing all output when it differs.
pub fn assert_exit(output: &Output, code: i32) {
    assert_eq!(output.status.code(), Some(code), "{}", text(output));
}

/// A stride process whose stderr is read line by line as it comes.
pub struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<String>,
}

impl Running {
    pub fn start(args: &[&str]) -> Running {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stride"))
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the stride binary runs");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
                let Ok(line) = line else { break };
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
            all
        });
        Running {
            child,
            lines,
            reader,
        }
    }

    /// Blocks until a stderr line contains `needle`. If stride ends first or
    /// nothing comes within 60 s, kills it and panics with all its output.
    pub fn wait_for_line(mut self, needle: &str) -> Running {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return self,
                Ok(_) => {}
                Err(_) => {
                    let _ = self.child.kill();
                    let out = self.finish();
                    panic!("no stderr line with {needle:?}:\n{}", text(&out));
                }
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Waits for the end (killing stride after 60 s) and returns all its output.
    pub fn finish(mut self) -> Output {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !self.exited() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = self.child.wait_with_output().unwrap();
        let stderr = self.reader.join().unwrap();
        Output {
            status: out.status,
            stdout: out.stdout,
            stderr: stderr.into_bytes(),
        }
    }
}

/// The first command between backticks in `text` that starts with `program` and
/// contains `with` (`""`: any), as stride printed it for the user to run next.
pub fn printed_command(text: &str, program: &str, with: &str) -> String {
    text.split('`')
        .skip(1)
        .step_by(2)
        .find(|c| c.starts_with(program) && c.contains(with))
        .unwrap_or_else(|| panic!("no `{program} ... {with} ...` command in:\n{text}"))
        .to_string()
}

/// Runs a printed command verbatim, through `sh -c`.
pub fn sh(command: &str) -> Output {
    std::process::Command::new("sh")
        .args(["-c", command])
        .env_remove("RUST_LOG")
        .output()
        .expect("sh runs")
}
