//! Helpers shared by the CLI tests: a `custos` command on a home, acting as
//! a principal, and the ledger as JSON.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment switch for slow tests (large ingests, statistical
/// runs, kills under load): `scripts/test` sets it to 1 (CI runs them
/// all); a developer may leave it unset or set it to 0 to skip them.
pub const SLOW_TESTS: &str = "CUSTOS_SLOW_TESTS";

/// Whether slow tests run; says so on stderr when one is skipped.
pub fn slow_tests(name: &str) -> bool {
    let on = std::env::var(SLOW_TESTS).is_ok_and(|v| v == "1");
    if !on {
        eprintln!("{name}: skipped (slow; set {SLOW_TESTS}=1 to run it, as scripts/test does)");
    }
    on
}

/// `custos` with `CUSTOS_HOME = home`, no master key from the environment,
/// and `CUSTOS_TOKEN` only if `token` is given.
pub fn custos(home: &Path, token: Option<&str>) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("custos").unwrap();
    cmd.env("CUSTOS_HOME", home)
        .env_remove("CUSTOS_MASTER_KEY")
        .env_remove("CUSTOS_TOKEN");
    if let Some(t) = token {
        cmd.env("CUSTOS_TOKEN", t);
    }
    cmd
}

/// Every ledger entry of `home`, from `custos ledger show --json`.
pub fn ledger(home: &Path) -> Vec<serde_json::Value> {
    let out = custos(home, None)
        .args(["ledger", "show", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Adds principal `name` of `org` with `roles` (comma-separated), acting
/// as `admin` (none at bootstrap); returns its token.
pub fn add_principal(
    home: &Path,
    admin: Option<&str>,
    name: &str,
    org: &str,
    roles: &str,
) -> String {
    let mut cmd = custos(home, admin);
    cmd.args(["principal", "add", name, "--org", org]);
    for role in roles.split(',') {
        cmd.args(["--role", role]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Generates `rows` synthetic tax returns into `data` and ingests the
/// named datasets of them as `admin`.
pub fn ingest_synthetic(home: &Path, admin: &str, data: &Path, rows: u32, datasets: &[&str]) {
    custos(home, None)
        .args(["generate", "--rows", &rows.to_string(), "--out"])
        .arg(data)
        .assert()
        .success();
    for name in datasets {
        custos(home, Some(admin))
            .args(["dataset", "ingest", "--name", name, "--schema"])
            .arg(data.join(format!("{name}.schema.toml")))
            .arg(data.join(format!("{name}.csv")))
            .assert()
            .success();
    }
}

/// An identified-mode agreement on `tax_returns`, in force until 2099:
/// one approval, at most 3 subjects a day, returns from 2023 on.
pub const IDENTIFIED_AGREEMENT: &str = r#"
id = "tigta-cases"
title = "TIGTA case look-ups"
purpose = "Investigate refunds deposited to accounts shared by many filers"
valid_from = 2026-01-01
valid_until = 2099-12-31

[parties]
custodian = "IRS"
requester = "TIGTA"

[legal_authority]
citation = "26 U.S.C. 6103(h)(1)"

[[grants]]
dataset = "tax_returns"
mode = "identified"
columns = ["tin", "name", "tax_year", "refund", "bank_account", "state"]
row_scope = "tax_year >= 2023"

[grants.limits]
subjects_per_day = 3
requests_per_hour = 60
approvals = 1
"#;

/// docs/examples/agreement-aggregate.toml as agreement `id`, in force
/// until 2099, with the given budget and per-query cap.
pub fn aggregate_agreement(id: &str, budget: &str, per_query: &str) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/agreement-aggregate.toml"),
    )
    .unwrap();
    text.replace("gao-refund-statistics", id)
        .replace("valid_from = 2026-03-01", "valid_from = 2026-01-01")
        .replace("valid_until = 2030-12-31", "valid_until = 2099-12-31")
        .replace("budget = 1.0", &format!("budget = {budget}"))
        .replace("per_query = 0.1", &format!("per_query = {per_query}"))
}

/// A running `custos serve`, killed if a test fails.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// Starts `custos serve` on a free loopback port of `home`.
    pub fn start(home: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(home, extra, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(home: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("custos"))
            .env("CUSTOS_HOME", home)
            .env_remove("CUSTOS_MASTER_KEY")
            .env_remove("CUSTOS_TOKEN")
            .envs(env.iter().copied())
            .env("CUSTOS_LOG", "info")
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        if !line.starts_with("http://127.0.0.1:") {
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "custos serve did not start: {line}{}",
                stderr.lock().unwrap()
            );
        }
        Self {
            child,
            url: line.trim().to_owned(),
            stderr,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                let log = self.stderr.lock().unwrap().clone();
                return (status, log);
            }
            assert!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The URL of a new, empty PostgreSQL database on the test server named by
/// `CUSTOS_TEST_POSTGRES` (scripts/postgres; the password in PGPASSWORD),
/// or `None` without one — a failure when `CUSTOS_REQUIRE_POSTGRES` is set,
/// as scripts/test sets it.
pub fn postgres_database() -> Option<String> {
    let Ok(admin) = std::env::var("CUSTOS_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("CUSTOS_REQUIRE_POSTGRES").is_none(),
            "CUSTOS_REQUIRE_POSTGRES is set but CUSTOS_TEST_POSTGRES names no server"
        );
        eprintln!("skipped: CUSTOS_TEST_POSTGRES names no PostgreSQL server");
        return None;
    };
    let name = format!(
        "custos_cli_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    postgres_execute(&admin, &format!("CREATE DATABASE {name}"));
    let (base, _) = admin.rsplit_once('/').unwrap();
    Some(format!("{base}/{name}"))
}

/// Runs `f` on a new connection to the PostgreSQL database at `url`.
fn on_postgres<T>(url: &str, f: impl AsyncFnOnce(&mut sqlx::PgConnection) -> T) -> T {
    use sqlx::Connection as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        f(&mut conn).await
    })
}

/// Runs one statement on the PostgreSQL database at `url`.
pub fn postgres_execute(url: &str, sql: &str) {
    on_postgres(url, async |conn| {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(conn)
            .await
            .unwrap();
    });
}

/// The single number a `SELECT COUNT(*) …` on PostgreSQL returns.
pub fn postgres_count(url: &str, sql: &str) -> i64 {
    on_postgres(url, async |conn| {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(conn)
            .await
            .unwrap()
    })
}

/// The text a one-column `SELECT` on PostgreSQL returns in its first row,
/// if it returns a row.
pub fn postgres_text(url: &str, sql: &str) -> Option<String> {
    on_postgres(url, async |conn| {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_optional(conn)
            .await
            .unwrap()
    })
}

/// A fresh prefix in the S3 test server named by `CUSTOS_TEST_S3` and
/// `CUSTOS_TEST_S3_ENDPOINT` (scripts/s3), as an `--object-store` URL, or
/// `None` without one — a failure when `CUSTOS_REQUIRE_S3` is set, as
/// scripts/test sets it.
pub fn s3_prefix() -> Option<String> {
    let (Ok(bucket), Ok(endpoint)) = (
        std::env::var("CUSTOS_TEST_S3"),
        std::env::var("CUSTOS_TEST_S3_ENDPOINT"),
    ) else {
        assert!(
            std::env::var_os("CUSTOS_REQUIRE_S3").is_none(),
            "CUSTOS_REQUIRE_S3 is set but CUSTOS_TEST_S3 names no server"
        );
        eprintln!("skipped: CUSTOS_TEST_S3 names no S3-compatible server");
        return None;
    };
    let unique = format!(
        "cli-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    Some(format!("{bucket}/{unique}?endpoint={endpoint}"))
}

/// Direct access to the S3 test server, as an insider with the bucket's
/// credentials has it (to tamper with dataset files).
pub struct S3Files {
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    runtime: tokio::runtime::Runtime,
    prefix: String,
}

impl S3Files {
    /// The store behind an `--object-store` URL made by [`s3_prefix`].
    pub fn new(url: &str) -> Self {
        let parsed = url::Url::parse(url).unwrap();
        let endpoint = parsed
            .query_pairs()
            .find(|(k, _)| k == "endpoint")
            .unwrap()
            .1
            .into_owned();
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(parsed.host_str().unwrap())
            .with_region("us-east-1")
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .build()
            .unwrap();
        Self {
            store: std::sync::Arc::new(store),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            prefix: parsed.path().trim_matches('/').to_owned(),
        }
    }

    fn path(&self, key: &str) -> object_store::path::Path {
        object_store::path::Path::from(format!("{}/{key}", self.prefix))
    }

    /// Every key under the prefix (relative to it).
    pub fn keys(&self) -> Vec<String> {
        use futures::StreamExt as _;
        let root = object_store::path::Path::from(self.prefix.as_str());
        self.runtime.block_on(async {
            self.store
                .list(Some(&root))
                .map(|m| m.unwrap().location.as_ref()[self.prefix.len() + 1..].to_owned())
                .collect()
                .await
        })
    }

    /// The key of bucket file `file` of dataset `name`.
    pub fn dataset_file(&self, name: &str, file: &str) -> String {
        let dir = self
            .keys()
            .into_iter()
            .find(|k| k.starts_with(&format!("datasets/{name}.")))
            .unwrap();
        let dir = dir.rsplit_once('/').unwrap().0.to_owned();
        format!("{dir}/{file}")
    }

    /// The object's bytes.
    pub fn read(&self, key: &str) -> Vec<u8> {
        use object_store::ObjectStoreExt as _;
        self.runtime.block_on(async {
            self.store
                .get(&self.path(key))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .to_vec()
        })
    }

    /// Writes (or replaces) the object.
    pub fn write(&self, key: &str, bytes: &[u8]) {
        use object_store::ObjectStoreExt as _;
        self.runtime.block_on(async {
            self.store
                .put(&self.path(key), bytes.to_vec().into())
                .await
                .unwrap();
        });
    }

    /// Deletes the object.
    pub fn delete(&self, key: &str) {
        use object_store::ObjectStoreExt as _;
        self.runtime
            .block_on(async { self.store.delete(&self.path(key)).await.unwrap() });
    }
}
