//! Custos beyond one machine, against the embedded default in the same run:
//!
//! 1. approved identified look-ups fetched over HTTP by 64 clients through
//!    one `custos serve` of an embedded home (SQLite, local ledger), then
//!    through 1, 2 and 3 replicas of a home with its catalogue in
//!    PostgreSQL and its files and shared ledger in object storage (clients
//!    spread requests over the replicas; each fetch waits for its ledger
//!    entry to be published); each server's memory at rest and at its peak;
//! 2. aggregate queries on a dataset whose files are in object storage
//!    against the same dataset in local files (default 10M rows).
//!
//! Every server is the release `custos` binary, on this machine's cores
//! with PostgreSQL, the S3-compatible server and the load generator.
//!
//! ```text
//! CUSTOS_POSTGRES_DURABLE=1 scripts/postgres start /tmp/pg 54330 > /tmp/pgenv
//! scripts/s3 start /tmp/s3 54341 > /tmp/s3env
//! . /tmp/pgenv; . /tmp/s3env
//! cargo bench -p custos --bench replicas
//! CUSTOS_BENCH_LOOKUPS=500 CUSTOS_BENCH_AGGREGATE_ROWS=1000000 cargo bench -p custos --bench replicas
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_custos");
const CLIENTS: usize = 64;
const QUERY: &str = "SELECT state, COUNT(*) FROM tax_returns GROUP BY state";

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (see this file's header)"))
}

fn number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map_or(default, |v| v.parse().expect(name))
}

/// `custos` on `home`, acting as `token` if given.
fn custos(home: &Path, token: Option<&str>) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("CUSTOS_HOME", home)
        .env_remove("CUSTOS_MASTER_KEY")
        .env_remove("CUSTOS_TOKEN")
        .env("CUSTOS_LOG", "warn");
    if let Some(token) = token {
        cmd.env("CUSTOS_TOKEN", token);
    }
    cmd
}

/// Runs `cmd`; its stdout, trimmed.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A new database on the PostgreSQL server of `CUSTOS_TEST_POSTGRES`.
fn new_database(name: &str) -> String {
    use sqlx::Connection as _;
    let admin = var("CUSTOS_TEST_POSTGRES");
    let sql = format!("CREATE DATABASE {name}");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .unwrap();
        });
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// A fresh prefix in the bucket of `CUSTOS_TEST_S3`, as an object store URL.
fn new_prefix(name: &str) -> String {
    format!(
        "{}/{name}?endpoint={}",
        var("CUSTOS_TEST_S3"),
        var("CUSTOS_TEST_S3_ENDPOINT")
    )
}

/// Synthetic tax returns (`rows`), generated once and kept between runs.
fn synthetic(rows: u64) -> PathBuf {
    let data = std::env::var_os("CUSTOS_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("custos-bench-data"))
        .join(format!("tax-{rows}"));
    if !data.join("tax_returns.csv").exists() {
        run(Command::new(BIN)
            .args(["generate", "--rows", &rows.to_string(), "--out"])
            .arg(&data));
    }
    data
}

fn agreements(dir: &Path) -> [PathBuf; 3] {
    let lookups = r#"id = "bench-lookups"
title = "Look-up load"
purpose = "Measure look-ups over HTTP"
valid_from = 2026-01-01
valid_until = 2099-12-31
[parties]
custodian = "IRS"
requester = "TIGTA"
[legal_authority]
citation = "none (benchmark)"
[[grants]]
dataset = "tax_returns"
mode = "identified"
columns = ["tin", "name", "tax_year", "refund", "state"]
[grants.limits]
approvals = 1
"#;
    // Limited: each request counts and records under the agreement's lock.
    let limited = lookups.replace("bench-lookups", "bench-limited").replace(
        "approvals = 1",
        "approvals = 1\nsubjects_per_day = 10000000\nrequests_per_hour = 10000000",
    );
    let queries = r#"id = "bench-queries"
title = "Query load"
purpose = "Measure aggregate queries over HTTP"
valid_from = 2026-01-01
valid_until = 2099-12-31
[parties]
custodian = "IRS"
requester = "TIGTA"
[legal_authority]
citation = "none (benchmark)"
[[grants]]
dataset = "tax_returns"
mode = "aggregate"
columns = ["state", "tax_year", "refund"]
[grants.limits]
requests_per_hour = 10000000
[grants.privacy]
measure = "zcdp"
budget = 1000000000.0
per_query = 0.01
contributions = 3
"#;
    let files = [
        dir.join("lookups.toml"),
        dir.join("limited.toml"),
        dir.join("queries.toml"),
    ];
    std::fs::write(&files[0], lookups).unwrap();
    std::fs::write(&files[1], limited).unwrap();
    std::fs::write(&files[2], queries).unwrap();
    files
}

/// A home made by `init` with `placement` (its extra arguments), with the
/// dataset of `rows` rows, the two agreements, and a requester's and an
/// approver's tokens. Returns the home, the tokens and the ingest's seconds.
struct Prepared {
    home: PathBuf,
    requester: String,
    approver: String,
    ingest_seconds: f64,
}

fn prepare(dir: &Path, name: &str, placement: &[String], rows: u64) -> Prepared {
    let home = dir.join(name);
    run(custos(&home, None)
        .args(["init", "--origin", &format!("bench.custos.local/{name}")])
        .args(placement));
    let principal = |admin: Option<&str>, who: &str, org: &str, role: &str| {
        run(custos(&home, admin).args(["principal", "add", who, "--org", org, "--role", role]))
    };
    let admin = principal(None, "admin", "IRS", "admin");
    let requester = principal(Some(&admin), "rita", "TIGTA", "requester");
    let approver = principal(Some(&admin), "adam", "IRS", "approver");
    let data = synthetic(rows);
    let started = Instant::now();
    run(custos(&home, Some(&admin))
        .args(["dataset", "ingest", "--name", "tax_returns", "--schema"])
        .arg(data.join("tax_returns.schema.toml"))
        .arg(data.join("tax_returns.csv")));
    let ingest_seconds = started.elapsed().as_secs_f64();
    for file in agreements(dir) {
        run(custos(&home, Some(&admin))
            .args(["agreement", "apply"])
            .arg(file));
    }
    Prepared {
        home,
        requester,
        approver,
        ingest_seconds,
    }
}

/// A running `custos serve`, stopped with SIGTERM when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// `custos serve` on `home`, or from `config` if given, with `env`.
    fn start(home: &Path, config: Option<&Path>, env: &[(&str, &str)], log: &Path) -> Self {
        let mut cmd = custos(home, None);
        cmd.envs(env.iter().copied()).args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--rate",
            "1000000",
            "--burst",
            "1000000",
            "--max-in-flight",
            "1024",
        ]);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("http://"),
            "custos serve did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        Self {
            child,
            url: line.trim().to_owned(),
        }
    }

    /// Resident memory now and at its peak, in MiB.
    fn memory_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(f64::NAN, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Latencies of a load, and its failures.
struct Load {
    latencies_ms: Vec<f64>,
    seconds: f64,
    errors: usize,
}

impl Load {
    /// (Latencies are sorted when the load ends.)
    fn percentile(&self, p: f64) -> f64 {
        let n = self.latencies_ms.len();
        if n == 0 {
            return f64::NAN;
        }
        self.latencies_ms[((n as f64 - 1.0) * p).round() as usize]
    }

    fn rate(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.seconds
    }
}

/// Request `i` of a load, given a client.
type MakeRequest = Arc<dyn Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync>;

/// `total` requests from `clients` concurrent clients.
async fn drive(clients: usize, total: usize, make: MakeRequest) -> (Load, Vec<String>) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (client, next, make) = (client.clone(), Arc::clone(&next), Arc::clone(&make));
        tasks.spawn(async move {
            let (mut latencies, mut errors, mut bodies) = (Vec::new(), 0, Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                match make(&client, i).send().await {
                    Ok(r) if r.status().is_success() => {
                        let body = r.text().await.unwrap_or_default();
                        latencies.push(t.elapsed().as_secs_f64() * 1e3);
                        bodies.push(body);
                    }
                    Ok(r) => {
                        if errors == 0 {
                            let status = r.status();
                            eprintln!("{status}: {}", r.text().await.unwrap_or_default());
                        }
                        errors += 1;
                    }
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("{e}");
                        }
                        errors += 1;
                    }
                }
            }
            (latencies, errors, bodies)
        });
    }
    let mut load = Load {
        latencies_ms: Vec::new(),
        seconds: 0.0,
        errors: 0,
    };
    let mut bodies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (l, e, b) = done.unwrap();
        load.latencies_ms.extend(l);
        load.errors += e;
        bodies.extend(b);
    }
    load.seconds = started.elapsed().as_secs_f64();
    load.latencies_ms.sort_by(f64::total_cmp);
    (load, bodies)
}

/// Look-up requests under `agreement` for `subjects` through `urls`, from
/// `clients` at once; the load and the request ids.
async fn requests(
    clients: usize,
    urls: &Arc<Vec<String>>,
    home: &Prepared,
    agreement: &'static str,
    subjects: &[String],
) -> (Load, Vec<String>) {
    let (urls, subjects) = (Arc::clone(urls), Arc::new(subjects.to_vec()));
    let rita = home.requester.clone();
    let (load, bodies) = drive(
        clients,
        subjects.len(),
        Arc::new(move |c, i| {
            c.post(format!("{}/v1/lookups", urls[i % urls.len()]))
                .bearer_auth(&rita)
                .json(&json!({
                    "agreement": agreement,
                    "dataset": "tax_returns",
                    "subject": subjects[i],
                    "justification": "load test of a synthetic subject",
                }))
        }),
    )
    .await;
    let ids = bodies
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    (load, ids)
}

/// `subjects.len()` approved look-up requests through `urls` (32 at once).
async fn approved_lookups(urls: &[String], home: &Prepared, subjects: &[String]) -> Vec<String> {
    let urls = Arc::new(urls.to_vec());
    let adam = home.approver.clone();
    let (load, ids) = requests(32, &urls, home, "bench-lookups", subjects).await;
    assert_eq!(load.errors, 0, "look-up requests failed");
    let ids = Arc::new(ids);
    let (urls2, approve_ids) = (Arc::clone(&urls), Arc::clone(&ids));
    let (load, _) = drive(
        32,
        ids.len(),
        Arc::new(move |c, i| {
            c.post(format!(
                "{}/v1/lookups/{}/approvals",
                urls2[i % urls2.len()],
                approve_ids[i]
            ))
            .bearer_auth(&adam)
        }),
    )
    .await;
    assert_eq!(load.errors, 0, "approvals failed");
    ids.to_vec()
}

/// One line of the look-up table.
struct LookupRow {
    deployment: &'static str,
    replicas: usize,
    load: Load,
    /// Look-up requests under a limited agreement (counted under its lock).
    limited: Load,
    rest_mib: Vec<f64>,
    peak_mib: Vec<f64>,
}

/// Serves `home` through `count` servers (the first on the home, the
/// others from configuration files), prepares `lookups` approved requests
/// and fetches them through all servers at once.
fn lookup_load(
    deployment: &'static str,
    home: &Prepared,
    replicas: &[(Option<PathBuf>, PathBuf)],
    subjects: &[String],
    dir: &Path,
) -> LookupRow {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let key = std::fs::read_to_string(home.home.join("master.key")).unwrap_or_default();
    let env = [("CUSTOS_MASTER_KEY", key.trim())];
    let servers: Vec<Server> = replicas
        .iter()
        .enumerate()
        .map(|(i, (config, replica_home))| {
            let log =
                dir.join(format!("{deployment}-{}-{i}.log", replicas.len()).replace(' ', "-"));
            match config {
                Some(config) => Server::start(replica_home, Some(config), &env, &log),
                None => Server::start(&home.home, None, &[], &log),
            }
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let rest_mib = servers.iter().map(|s| s.memory_mib().0).collect();
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let started = Instant::now();
    let ids = runtime.block_on(approved_lookups(&urls, home, subjects));
    eprintln!(
        "{deployment}, {} server(s): {} approved look-ups prepared in {:.1}s",
        servers.len(),
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    let (rita, ids, fetch_urls) = (
        home.requester.clone(),
        Arc::new(ids),
        Arc::new(urls.clone()),
    );
    let (load, bodies) = runtime.block_on(drive(
        CLIENTS,
        ids.len(),
        Arc::new(move |c, i| {
            c.post(format!(
                "{}/v1/lookups/{}/fetch",
                fetch_urls[i % fetch_urls.len()],
                ids[i]
            ))
            .bearer_auth(&rita)
        }),
    ));
    assert!(
        bodies.iter().all(|b| b.contains("\"rows\"")),
        "a fetch answered without rows"
    );
    let limited_count = (subjects.len() / 10).clamp(1, 200);
    let (limited, _) = runtime.block_on(requests(
        CLIENTS,
        &Arc::new(urls),
        home,
        "bench-limited",
        &subjects[..limited_count],
    ));
    let peak_mib = servers.iter().map(|s| s.memory_mib().1).collect();
    drop(servers);
    LookupRow {
        deployment,
        replicas: replicas.len(),
        load,
        limited,
        rest_mib,
        peak_mib,
    }
}

/// Cold and warm aggregate query times through one server of `home`.
struct QueryRow {
    files: &'static str,
    ingest_seconds: f64,
    first_seconds: f64,
    warm_seconds: Vec<f64>,
    peak_mib: f64,
}

fn query_times(files: &'static str, home: &Prepared, dir: &Path) -> QueryRow {
    let server = Server::start(
        &home.home,
        None,
        &[],
        &dir.join(format!("query-{files}.log")),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let mut seconds = Vec::new();
    for _ in 0..6 {
        let t = Instant::now();
        runtime.block_on(async {
            let response = client
                .post(format!("{}/v1/queries", server.url))
                .bearer_auth(&home.requester)
                .json(&json!({"agreement": "bench-queries", "sql": QUERY}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert!(status.is_success(), "{status}: {body}");
        });
        seconds.push(t.elapsed().as_secs_f64());
    }
    let peak_mib = server.memory_mib().1;
    let first_seconds = seconds.remove(0);
    seconds.sort_by(f64::total_cmp);
    QueryRow {
        files,
        ingest_seconds: home.ingest_seconds,
        first_seconds,
        warm_seconds: seconds,
        peak_mib,
    }
}

/// A configuration file for a replica of `home` in `dir`.
fn replica_config(dir: &Path, i: usize, catalogue: &str, objects: &str, name: &str) -> PathBuf {
    let file = dir.join(format!("replica-{i}.toml"));
    std::fs::write(
        &file,
        format!(
            "home = \"replica-{i}\"\norigin = \"bench.custos.local/{name}\"\ncatalogue = \"{catalogue}\"\nobject_store = \"{objects}\"\nledger_key_file = \"{name}.ledger.key\"\n"
        ),
    )
    .unwrap();
    file
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

fn main() {
    let rows = number("CUSTOS_BENCH_ROWS", 1_000_000);
    let lookups = number("CUSTOS_BENCH_LOOKUPS", 2_000) as usize;
    let aggregate_rows = number("CUSTOS_BENCH_AGGREGATE_ROWS", 10_000_000);
    let dir = tempfile::tempdir().unwrap();
    let unique = format!(
        "bench_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );

    // Distinct subjects, a fresh batch for each configuration.
    let data = synthetic(rows);
    let mut reader = csv::Reader::from_path(data.join("tax_returns.csv")).unwrap();
    let mut subjects: Vec<String> = reader.records().map(|r| r.unwrap()[0].to_owned()).collect();
    subjects.sort_unstable();
    subjects.dedup();
    assert!(subjects.len() >= 4 * lookups, "not enough subjects");
    let mut batches = subjects.chunks(lookups);

    let mut lookup_rows = Vec::new();
    let embedded = prepare(dir.path(), "embedded", &[], rows);
    lookup_rows.push(lookup_load(
        "embedded (SQLite, local files)",
        &embedded,
        &[(None, embedded.home.clone())],
        batches.next().unwrap(),
        dir.path(),
    ));
    let catalogue = new_database(&unique);
    let objects = new_prefix(&unique);
    let shared = prepare(
        dir.path(),
        "shared",
        &[
            "--catalogue".into(),
            catalogue.clone(),
            "--object-store".into(),
            objects.clone(),
        ],
        rows,
    );
    for count in 1..=3 {
        let replicas: Vec<(Option<PathBuf>, PathBuf)> = (0..count)
            .map(|i| {
                if i == 0 {
                    return (None, shared.home.clone());
                }
                let config = replica_config(dir.path(), i, &catalogue, &objects, "shared");
                (Some(config), dir.path().join(format!("replica-{i}")))
            })
            .collect();
        lookup_rows.push(lookup_load(
            "PostgreSQL + S3, shared ledger",
            &shared,
            &replicas,
            batches.next().unwrap(),
            dir.path(),
        ));
    }

    let mut query_rows = Vec::new();
    if aggregate_rows > 0 {
        let local = prepare(dir.path(), "local-files", &[], aggregate_rows);
        query_rows.push(query_times("local files", &local, dir.path()));
        let remote = prepare(
            dir.path(),
            "object-files",
            &[
                "--object-store".into(),
                new_prefix(&format!("{unique}_aggregate")),
            ],
            aggregate_rows,
        );
        query_rows.push(query_times("object storage (S3)", &remote, dir.path()));
    }

    println!(
        "\nlook-ups: {rows} rows, {lookups} approved look-ups per configuration, {CLIENTS} concurrent clients spread over the servers\n"
    );
    println!(
        "| deployment | servers | look-ups | seconds | look-ups/s | p50 ms | p99 ms | errors | RSS at rest MiB (mean per server) | peak RSS MiB (largest server) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &lookup_rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {} | {:.0} | {:.0} |",
            row.deployment,
            row.replicas,
            row.load.latencies_ms.len(),
            row.load.seconds,
            row.load.rate(),
            row.load.percentile(0.5),
            row.load.percentile(0.99),
            row.load.errors,
            mean(&row.rest_mib),
            max(&row.peak_mib)
        );
    }
    println!(
        "\nlook-up requests under an agreement with limits (`subjects_per_day`, `requests_per_hour`): each counts and records under the agreement's lock\n"
    );
    println!(
        "| deployment | servers | requests | seconds | requests/s | p50 ms | p99 ms | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &lookup_rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            row.deployment,
            row.replicas,
            row.limited.latencies_ms.len(),
            row.limited.seconds,
            row.limited.rate(),
            row.limited.percentile(0.5),
            row.limited.percentile(0.99),
            row.limited.errors
        );
    }
    let (base_rate, base_p99) = (
        lookup_rows[0].load.rate(),
        lookup_rows[0].load.percentile(0.99),
    );
    println!("\nagainst the embedded default, same run:\n");
    println!("| servers | look-ups/s | p99 |");
    println!("|---:|---:|---:|");
    for row in lookup_rows.iter().skip(1) {
        println!(
            "| {} | {:.2}× | {:.2}× |",
            row.replicas,
            row.load.rate() / base_rate,
            row.load.percentile(0.99) / base_p99
        );
    }
    if !query_rows.is_empty() {
        println!(
            "\naggregate query `{QUERY}` through one server, {aggregate_rows} rows: the first after the server starts, then the median of 5\n"
        );
        println!(
            "| dataset files | ingest s | first query s | later queries s (median) | peak RSS MiB |"
        );
        println!("|---|---:|---:|---:|---:|");
        for row in &query_rows {
            println!(
                "| {} | {:.1} | {:.2} | {:.2} | {:.0} |",
                row.files,
                row.ingest_seconds,
                row.first_seconds,
                row.warm_seconds[row.warm_seconds.len() / 2],
                row.peak_mib
            );
        }
    }
}
