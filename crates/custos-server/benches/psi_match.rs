//! Private matching end to end: two Custos homes on this machine, the
//! answering side (a registry of N SSNs) served over HTTP on loopback, the
//! requesting side (a roll of N SSNs, 10 % shared) running `run_match`
//! through `HttpPeer` — keys read from the encrypted datasets, both
//! ledgers written, all three protocol steps. Both sides share this
//! machine's cores, as two servers on one box would.
//!
//! ```text
//! cargo bench -p custos-server --bench psi_match                    # 1M × 1M
//! CUSTOS_BENCH_PSI_ROWS=100000 cargo bench -p custos-server --bench psi_match
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use custos_broker::{Custos, MatchRequest};
use custos_broker::{MasterKeySource, NoProgress};
use custos_model::Role;
use custos_server::{HttpPeer, Server, ServerConfig};

/// The 1M × 1M target (seconds, DESIGN.md / issue 7).
const TARGET_SECONDS: f64 = 150.0;

const SCHEMA: &str = r#"description = "Matching benchmark: one SSN per row"
[[columns]]
name = "ssn"
class = "subject_id"
type = "string"
"#;

fn agreement(dataset: &str, pad_to: usize, peer: &str) -> String {
    let today = chrono::Utc::now().date_naive();
    let (from, until) = (today - chrono::Days::new(1), today + chrono::Days::new(30));
    format!(
        r#"id = "bench-match"
title = "Matching benchmark"
purpose = "Measure private matching"
valid_from = {from}
valid_until = {until}
[parties]
custodian = "Registry"
requester = "Agency"
[legal_authority]
citation = "none (benchmark)"
[[grants]]
dataset = "{dataset}"
mode = "match"
columns = ["ssn"]
[grants.match]
reveal = "matches"
pad_to = {pad_to}
peer = "{peer}"
[grants.limits]
requests_per_hour = 10
subjects_per_day = {pad_to}
"#
    )
}

/// `n` SSN-like keys starting at `first`, written as `AAA-GG-SSSS`.
fn write_csv(path: &Path, first: usize, n: usize) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "ssn").unwrap();
    for i in first..first + n {
        let k = 100_000_000 + i;
        writeln!(
            out,
            "{:03}-{:02}-{:04}",
            k / 1_000_000,
            k / 10_000 % 100,
            k % 10_000
        )
        .unwrap();
    }
}

/// A home with one dataset, its copy of the agreement and a requester
/// principal of the asking organisation; returns it and that principal's token.
async fn home(dir: &Path, name: &str, csv: &Path, pad_to: usize, peer: &str) -> (Custos, String) {
    let (custos, _) = Custos::init(&dir.join(name), MasterKeySource::GenerateFile, None)
        .await
        .unwrap();
    let (_, token) = custos
        .add_principal(
            &custos.actor(None).await.unwrap(),
            "admin",
            "Office",
            &[Role::Admin],
        )
        .await
        .unwrap();
    let admin = custos.authenticate(token.reveal()).await.unwrap();
    let schema = dir.join("schema.toml");
    std::fs::write(&schema, SCHEMA).unwrap();
    custos
        .ingest(&admin, name, &schema, csv, std::sync::Arc::new(NoProgress))
        .await
        .unwrap();
    custos
        .apply_agreement(&admin, &agreement(name, pad_to, peer))
        .await
        .unwrap();
    let (_, token) = custos
        .add_principal(&admin, "matcher", "Agency", &[Role::Requester])
        .await
        .unwrap();
    let token = token.reveal().to_owned();
    (custos, token)
}

fn main() {
    let n: usize = std::env::var("CUSTOS_BENCH_PSI_ROWS")
        .ok()
        .map_or(1_000_000, |v| {
            v.parse().expect("CUSTOS_BENCH_PSI_ROWS: a number")
        });
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let shared = n / 10;
    let dir = tempfile::tempdir().unwrap();
    let (registry_csv, roll_csv) = (dir.path().join("registry.csv"), dir.path().join("roll.csv"));
    write_csv(&registry_csv, 0, n);
    write_csv(&roll_csv, n - shared, n);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (registry, registry_token) =
            home(dir.path(), "registry", &registry_csv, n, "https://roll.invalid").await;
        let server = Server::bind(
            registry,
            ServerConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        )
        .await
        .unwrap();
        let url = format!("http://{}", server.local_addr().unwrap());
        let (roll, roll_token) = home(dir.path(), "roll", &roll_csv, n, &url).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        let analyst = roll.authenticate(&roll_token).await.unwrap();
        let peer = HttpPeer::new(&url, zeroize::Zeroizing::new(registry_token)).unwrap();
        let started = Instant::now();
        let report = roll
            .run_match(
                &analyst,
                MatchRequest {
                    agreement: "bench-match",
                    dataset: "roll",
                    key: "ssn",
                },
                &peer,
            )
            .await
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(report.matches, shared as u64);
        assert_eq!(report.peer_count, shared as u64);
        let _ = stop.send(());
        serving.await.unwrap().unwrap();
        roll.close().unwrap();
        println!(
            "\nPSI end to end, {n} × {n} keys ({shared} shared), two homes, HTTP on loopback, {cores} cores shared by both sides\n"
        );
        println!("| what | seconds | items/s (both sides' keys) | items/s per core | target |");
        println!("|---|---:|---:|---:|---|");
        let items = 2.0 * n as f64;
        println!(
            "| `run_match`: read keys, blind, exchange, re-blind, match, finish, both ledgers | {seconds:.1} | {:.0} | {:.0} | ≤ {TARGET_SECONDS:.0} s: {:.2}× |",
            items / seconds,
            items / seconds / cores as f64,
            seconds / TARGET_SECONDS
        );
    });
}
