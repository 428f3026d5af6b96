//! Identified look-up latency end to end through the broker: request
//! (Cedar decision, limits, durable ledger entry), approval (durable entry)
//! and fetch (decision again, one bucket read, row scope, durable entry),
//! on a synthetic tax-return dataset, against a full scan of the same data.
//!
//! ```text
//! cargo bench -p custos-broker --bench lookup                      # 1M rows
//! CUSTOS_BENCH_ROWS=10000000 cargo bench -p custos-broker --bench lookup
//! CUSTOS_BENCH_KEEP=/tmp/lookup-home …   # keep the home for CLI timings
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use custos_broker::MasterKeySource;
use custos_broker::{Custos, LookupRequest};
use custos_model::Role;
use custos_store::{DatasetReader, NoProgress};

const SAMPLES: usize = 300;

fn agreement() -> String {
    let today = chrono::Utc::now().date_naive();
    format!(
        r#"id = "bench-lookups"
title = "Look-up benchmark"
purpose = "Measure look-up latency"
valid_from = {}
valid_until = {}
[parties]
custodian = "IRS"
requester = "TIGTA"
[legal_authority]
citation = "none (benchmark)"
[[grants]]
dataset = "tax_returns"
mode = "identified"
columns = ["tin", "name", "tax_year", "refund", "bank_account", "state"]
row_scope = "tax_year >= 2023"
[grants.limits]
subjects_per_day = 1000000
requests_per_hour = 1000000
approvals = 1
"#,
        today - chrono::Days::new(1),
        today + chrono::Days::new(30)
    )
}

fn stats(name: &str, mut micros: Vec<f64>) {
    micros.sort_by(f64::total_cmp);
    let pick = |p: f64| micros[((micros.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} |",
        micros.len(),
        pick(0.5),
        pick(0.99),
        micros.iter().sum::<f64>() / micros.len() as f64
    );
}

fn main() {
    let rows: u64 = std::env::var("CUSTOS_BENCH_ROWS")
        .ok()
        .map_or(1_000_000, |r| {
            r.parse().expect("CUSTOS_BENCH_ROWS: a number")
        });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(rows));
}

async fn run(rows: u64) {
    let data_dir = std::env::var_os("CUSTOS_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("custos-bench-data"))
        .join(format!("tax-{rows}"));
    let csv = data_dir.join("tax_returns.csv");
    if !csv.exists() {
        eprintln!(
            "generating {rows} synthetic tax returns into {} …",
            data_dir.display()
        );
        custos_synth::generate(
            &data_dir,
            custos_synth::SynthOptions {
                tax_rows: rows,
                seed: 1,
            },
            &|_| {},
        )
        .expect("generate");
    }
    let temp = tempfile::tempdir().unwrap();
    let home = std::env::var_os("CUSTOS_BENCH_KEEP")
        .map_or_else(|| temp.path().join("home"), PathBuf::from);
    let (custos, _) = Custos::init(&home, MasterKeySource::GenerateFile, None)
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
    let mut actors = Vec::new();
    for (name, org, role) in [
        ("rita", "TIGTA", Role::Requester),
        ("adam", "IRS", Role::Approver),
    ] {
        let (_, token) = custos
            .add_principal(&admin, name, org, &[role])
            .await
            .unwrap();
        if let Some(dir) = std::env::var_os("CUSTOS_BENCH_KEEP") {
            std::fs::write(
                PathBuf::from(dir).with_extension(format!("{name}.token")),
                token.reveal(),
            )
            .unwrap();
        }
        actors.push(custos.authenticate(token.reveal()).await.unwrap());
    }
    let started = Instant::now();
    let report = custos
        .ingest(
            &admin,
            "tax_returns",
            &data_dir.join("tax_returns.schema.toml"),
            &csv,
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    eprintln!(
        "ingested {} rows into {} buckets in {:.1}s",
        report.dataset.rows,
        report.dataset.buckets,
        started.elapsed().as_secs_f64()
    );
    custos.apply_agreement(&admin, &agreement()).await.unwrap();

    // Subjects spread over the whole file.
    let mut reader = csv::Reader::from_path(&csv).unwrap();
    let step = (rows as usize / SAMPLES).max(1);
    let mut subjects: Vec<String> = reader
        .records()
        .step_by(step)
        .map(|r| r.unwrap()[0].to_owned())
        .collect();
    subjects.dedup();
    subjects.truncate(SAMPLES);

    let (rita, adam) = (&actors[0], &actors[1]);
    let (mut request, mut approve, mut fetch, mut total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut released_rows = 0;
    for subject in &subjects {
        let t0 = Instant::now();
        let ticket = custos
            .request_lookup(
                rita,
                LookupRequest {
                    agreement: "bench-lookups",
                    dataset: "tax_returns",
                    subject,
                    justification: "benchmark look-up of a synthetic subject",
                    columns: None,
                },
            )
            .await
            .unwrap();
        let t1 = Instant::now();
        custos.approve_lookup(adam, &ticket.id).await.unwrap();
        let t2 = Instant::now();
        let released = custos.fetch_lookup(rita, &ticket.id).await.unwrap();
        let t3 = Instant::now();
        released_rows += released.rows.len();
        request.push((t1 - t0).as_secs_f64() * 1e6);
        approve.push((t2 - t1).as_secs_f64() * 1e6);
        fetch.push((t3 - t2).as_secs_f64() * 1e6);
        total.push((t3 - t0).as_secs_f64() * 1e6);
    }
    assert!(released_rows > 0, "the look-ups found nothing");

    // The storage primitive alone, and a full scan for comparison.
    // The storage primitive is read directly (a bench may; the product
    // cannot: only the broker holds a home).
    let store = custos_store::Home::open(&home, None).await.unwrap();
    let dataset = DatasetReader::open(&store, "tax_returns").await.unwrap();
    let mut bucket_read = Vec::new();
    for subject in &subjects {
        let t = Instant::now();
        let b = dataset
            .subject_rows(subject, Some(&["tin", "tax_year"]))
            .unwrap();
        assert!(!b.is_empty());
        bucket_read.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let t = Instant::now();
    let scanned: usize = dataset
        .scan(true)
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    let scan_micros = t.elapsed().as_secs_f64() * 1e6;
    assert_eq!(scanned as u64, report.dataset.rows);

    println!(
        "\n{rows} rows in {} buckets; {} subjects, {released_rows} rows released\n",
        report.dataset.buckets,
        subjects.len()
    );
    println!("| step | n | median µs | p99 µs | mean µs |");
    println!("|---|---:|---:|---:|---:|");
    stats("request (decide + limits + durable entry)", request);
    stats("approve (durable entry)", approve);
    stats("fetch (decide + read 1 bucket + durable entry)", fetch);
    stats("request + approve + fetch", total);
    stats("subject_rows alone (1 bucket)", bucket_read);
    println!("| full scan of every bucket (what a look-up avoids) | 1 | {scan_micros:.0} | | |");
    custos.close().unwrap();
}
