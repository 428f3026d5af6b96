//! The server under 64 concurrent clients on loopback: approved identified
//! look-ups fetched over HTTP (each writing its durable ledger entry),
//! aggregate queries, and `/healthz` as the server's ceiling, in one run.
//!
//! ```text
//! cargo bench -p custos-server --bench http_load                     # 1M rows, 20,000 look-ups
//! CUSTOS_BENCH_LOOKUPS=5000 cargo bench -p custos-server --bench http_load
//! # and again with the catalogue in PostgreSQL, in the same run (an empty database):
//! CUSTOS_BENCH_POSTGRES=postgres://custos@127.0.0.1:54330/bench cargo bench -p custos-server --bench http_load
//! ```
//!
//! The server runs on its own 2-thread runtime, the load generator on
//! another, both on this machine's 2 cores (as `oha` would).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use custos_broker::{CatalogueLocation, Custos, LedgerKeySource, LookupRequest};
use custos_broker::{MasterKeySource, NoProgress};
use custos_model::Role;
use custos_server::{Server, ServerConfig};

const CLIENTS: usize = 64;

/// Builds request `i` of a load.
type MakeRequest = Arc<dyn Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync>;

fn agreements() -> [String; 2] {
    let today = chrono::Utc::now().date_naive();
    let (from, until) = (today - chrono::Days::new(1), today + chrono::Days::new(30));
    [
        format!(
            r#"id = "bench-lookups"
title = "Look-up load"
purpose = "Measure look-ups over HTTP"
valid_from = {from}
valid_until = {until}
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
subjects_per_day = 10000000
requests_per_hour = 10000000
approvals = 1
"#
        ),
        format!(
            r#"id = "bench-queries"
title = "Query load"
purpose = "Measure aggregate queries over HTTP"
valid_from = {from}
valid_until = {until}
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
"#
        ),
    ]
}

struct Load {
    name: &'static str,
    latencies_ms: Vec<f64>,
    seconds: f64,
    errors: usize,
}

impl Load {
    fn row(&mut self) -> String {
        self.latencies_ms.sort_by(f64::total_cmp);
        let n = self.latencies_ms.len();
        let pick = |p: f64| self.latencies_ms[((n as f64 - 1.0) * p).round() as usize];
        format!(
            "| {} | {n} | {:.1} | {:.0} | {:.2} | {:.2} | {} |",
            self.name,
            self.seconds,
            n as f64 / self.seconds,
            pick(0.5),
            pick(0.99),
            self.errors
        )
    }
}

/// Runs `total` requests from `CLIENTS` concurrent clients; `make(i)` builds request `i`.
async fn drive(name: &'static str, total: usize, make: MakeRequest) -> Load {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (client, next, make) = (client.clone(), Arc::clone(&next), Arc::clone(&make));
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                match make(&client, i).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let mut load = Load {
        name,
        latencies_ms: Vec::new(),
        seconds: 0.0,
        errors: 0,
    };
    while let Some(done) = tasks.join_next().await {
        let (l, e) = done.unwrap();
        load.latencies_ms.extend(l);
        load.errors += e;
    }
    load.seconds = started.elapsed().as_secs_f64();
    load
}

fn main() {
    let rows: u64 = std::env::var("CUSTOS_BENCH_ROWS")
        .ok()
        .map_or(1_000_000, |r| r.parse().expect("CUSTOS_BENCH_ROWS"));
    let lookups: usize = std::env::var("CUSTOS_BENCH_LOOKUPS")
        .ok()
        .map_or(20_000, |r| r.parse().expect("CUSTOS_BENCH_LOOKUPS"));
    let mut catalogues = vec![("embedded SQLite", CatalogueLocation::Embedded)];
    if let Ok(url) = std::env::var("CUSTOS_BENCH_POSTGRES") {
        catalogues.push((
            "PostgreSQL",
            CatalogueLocation::postgres(&url).expect("CUSTOS_BENCH_POSTGRES"),
        ));
    }
    let mut tables = Vec::new();
    for (name, catalogue) in catalogues {
        tables.push((name, run(rows, lookups, catalogue)));
    }
    println!(
        "\n{rows} rows; {CLIENTS} concurrent clients on loopback; server and client 2 threads each on 2 cores\n"
    );
    println!("| catalogue | load | requests | seconds | requests/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (name, mut loads) in tables {
        for load in &mut loads {
            println!("| {name} {}", load.row());
        }
    }
}

/// Prepares a home on `catalogue`, serves it and drives the three loads.
fn run(rows: u64, lookups: usize, catalogue: CatalogueLocation) -> Vec<Load> {
    let setup = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let temp = tempfile::tempdir().unwrap();
    let (custos, tokens, ids) =
        setup.block_on(prepare(temp.path().join("home"), rows, lookups, catalogue));
    drop(setup);

    // The server, on its own runtime.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    config.rate_limit.per_second = std::num::NonZeroU32::new(1_000_000).unwrap();
    config.rate_limit.burst = std::num::NonZeroU32::new(1_000_000).unwrap();
    let server = server_runtime
        .block_on(Server::bind(custos, config))
        .unwrap();
    let url = format!("http://{}", server.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = server_runtime.spawn(server.run(async {
        let _ = stopped.await;
    }));

    // The load generator, on another.
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let loads = client_runtime.block_on(async {
        let mut loads = Vec::new();
        let (rita, gina) = (tokens.0.clone(), tokens.1.clone());
        let ids = Arc::new(ids);
        let u = url.clone();
        loads.push(
            drive(
                "identified look-up: POST /v1/lookups/{id}/fetch (approved, durable ledger entry)",
                ids.len(),
                Arc::new(move |c, i| {
                    c.post(format!("{u}/v1/lookups/{}/fetch", ids[i]))
                        .bearer_auth(&rita)
                }),
            )
            .await,
        );
        let u = url.clone();
        loads.push(
            drive(
                "aggregate query: POST /v1/queries (COUNT(*) GROUP BY state)",
                640,
                Arc::new(move |c, _| {
                    c.post(format!("{u}/v1/queries"))
                        .bearer_auth(&gina)
                        .json(&serde_json::json!({
                            "agreement": "bench-queries",
                            "sql": "SELECT state, COUNT(*) FROM tax_returns GROUP BY state"
                        }))
                }),
            )
            .await,
        );
        let u = url.clone();
        loads.push(
            drive(
                "ceiling: GET /healthz",
                100_000,
                Arc::new(move |c, _| c.get(format!("{u}/healthz"))),
            )
            .await,
        );
        loads
    });
    let _ = stop.send(());
    server_runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), serving).await })
        .unwrap()
        .unwrap()
        .unwrap();
    loads
}

/// A home with the dataset, a requester and an approver, and `lookups`
/// approved requests for distinct subjects. Returns the requester's and a
/// query principal's tokens and the request ids.
async fn prepare(
    home: PathBuf,
    rows: u64,
    lookups: usize,
    catalogue: CatalogueLocation,
) -> (Custos, (String, String), Vec<String>) {
    let data = std::env::var_os("CUSTOS_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("custos-bench-data"))
        .join(format!("tax-{rows}"));
    let csv = data.join("tax_returns.csv");
    if !csv.exists() {
        custos_synth::generate(
            &data,
            custos_synth::SynthOptions {
                tax_rows: rows,
                seed: 1,
            },
            &|_| {},
        )
        .unwrap();
    }
    let (custos, _) = Custos::init_with(
        &home,
        MasterKeySource::GenerateFile,
        None,
        LedgerKeySource::beside(&home),
        catalogue,
    )
    .await
    .unwrap();
    let (_, token) = custos
        .add_principal(
            &custos.actor(None).await.unwrap(),
            "admin",
            "IRS",
            &[Role::Admin],
        )
        .await
        .unwrap();
    let admin = custos.authenticate(token.reveal()).await.unwrap();
    let mut tokens = Vec::new();
    let mut actors = Vec::new();
    for (name, org, role) in [
        ("rita", "TIGTA", Role::Requester),
        ("adam", "IRS", Role::Approver),
        ("gina", "TIGTA", Role::Requester),
    ] {
        let (_, token) = custos
            .add_principal(&admin, name, org, &[role])
            .await
            .unwrap();
        actors.push(custos.authenticate(token.reveal()).await.unwrap());
        tokens.push(token.reveal().to_owned());
    }
    custos
        .ingest(
            &admin,
            "tax_returns",
            &data.join("tax_returns.schema.toml"),
            &csv,
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    for text in agreements() {
        custos.apply_agreement(&admin, &text).await.unwrap();
    }
    let mut reader = csv::Reader::from_path(&csv).unwrap();
    let mut subjects: Vec<String> = reader.records().map(|r| r.unwrap()[0].to_owned()).collect();
    subjects.sort_unstable();
    subjects.dedup();
    assert!(subjects.len() >= lookups, "not enough subjects");
    subjects.truncate(lookups);
    let started = Instant::now();
    let custos = Arc::new(custos);
    let subjects = Arc::new(subjects);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (custos, subjects, next) = (
            Arc::clone(&custos),
            Arc::clone(&subjects),
            Arc::clone(&next),
        );
        let (rita, adam) = (actors[0].clone(), actors[1].clone());
        tasks.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(subject) = subjects.get(i) else {
                    break;
                };
                let ticket = custos
                    .request_lookup(
                        &rita,
                        LookupRequest {
                            agreement: "bench-lookups",
                            dataset: "tax_returns",
                            subject,
                            justification: "load test of a synthetic subject",
                            columns: None,
                        },
                    )
                    .await
                    .unwrap();
                custos.approve_lookup(&adam, &ticket.id).await.unwrap();
                ids.push(ticket.id);
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(done) = tasks.join_next().await {
        ids.extend(done.unwrap());
    }
    eprintln!(
        "prepared {} approved look-ups in {:.1}s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    let custos = Arc::try_unwrap(custos).unwrap();
    (custos, (tokens[0].clone(), tokens[2].clone()), ids)
}
