//! Pseudonymous extract throughput through the broker (decision, two
//! passes with k-anonymity, tokens, file, ledger entries with every
//! subject's commitment, accounting lines, rename), against a plain read
//! of the same columns of the same encrypted buckets in the same run.
//!
//! ```text
//! cargo bench -p custos-broker --bench extract                          # 1M rows
//! CUSTOS_BENCH_ROWS=10000000 cargo bench -p custos-broker --bench extract
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use custos_broker::MasterKeySource;
use custos_broker::{Custos, ExtractFormat, ExtractRequest};
use custos_model::Role;
use custos_store::{DatasetReader, NoProgress};

const COLUMNS: [&str; 8] = [
    "tin",
    "name",
    "birth_date",
    "zip",
    "filing_status",
    "refund",
    "tax_year",
    "state",
];

fn agreement() -> String {
    let today = chrono::Utc::now().date_naive();
    format!(
        r#"id = "bench-extracts"
title = "Extract benchmark"
purpose = "Measure extract throughput"
valid_from = {}
valid_until = {}
[parties]
custodian = "IRS"
requester = "Treasury"
[legal_authority]
citation = "none (benchmark)"
[[grants]]
dataset = "tax_returns"
mode = "pseudonymous"
columns = {COLUMNS:?}
[grants.limits]
requests_per_hour = 100
[grants.pseudonymous]
k = 5
max_rows = 1000000000
keep_format = ["tin"]
generalise = {{ birth_date = "year", zip = "prefix:2" }}
"#,
        today - chrono::Days::new(1),
        today + chrono::Days::new(30)
    )
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
    let (custos, _) = Custos::init(
        &temp.path().join("home"),
        MasterKeySource::GenerateFile,
        None,
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
    let (_, token) = custos
        .add_principal(&admin, "tomas", "Treasury", &[Role::Requester])
        .await
        .unwrap();
    let tomas = custos.authenticate(token.reveal()).await.unwrap();
    custos
        .ingest(
            &admin,
            "tax_returns",
            &data_dir.join("tax_returns.schema.toml"),
            &csv,
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    custos.apply_agreement(&admin, &agreement()).await.unwrap();

    // Baseline: decrypt and decode the same columns of every bucket, nothing else.
    // The baseline reads the store directly (a bench may; the product
    // cannot: only the broker holds a home).
    let home = custos_store::Home::open(&temp.path().join("home"), None)
        .await
        .unwrap();
    let reader = DatasetReader::open(&home, "tax_returns").await.unwrap();
    let started = Instant::now();
    let mut read = 0usize;
    for bucket in 0..reader.bucket_count() {
        for batch in reader.bucket_batches(bucket, true, Some(&COLUMNS)).unwrap() {
            read += batch.num_rows();
        }
    }
    let baseline = started.elapsed().as_secs_f64();
    assert_eq!(read as u64, rows);

    println!(
        "\n{rows} rows, {} bucket files, encrypted; k = 5 on (birth year, 2-digit ZIP)\n",
        reader.bucket_count()
    );
    println!(
        "| what | seconds | rows/s | rows released | subjects | ledger entries | × plain read |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| plain read of the 8 columns (baseline) | {baseline:.2} | {:.0} | | | | 1.00 |",
        rows as f64 / baseline
    );
    for (name, format, file) in [
        ("extract to CSV", ExtractFormat::Csv, "x.csv"),
        ("extract to Parquet", ExtractFormat::Parquet, "x.parquet"),
    ] {
        let out = temp.path().join(file);
        let before = custos.checkpoint().unwrap().size;
        let started = Instant::now();
        let report = custos
            .extract(
                &tomas,
                ExtractRequest {
                    agreement: "bench-extracts",
                    dataset: "tax_returns",
                    filter: None,
                    out: &out,
                    format,
                },
            )
            .await
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let entries = custos.checkpoint().unwrap().size - before;
        println!(
            "| {name} | {seconds:.2} | {:.0} | {} | {} | {entries} | {:.2} |",
            rows as f64 / seconds,
            report.rows_released,
            report.subjects,
            seconds / baseline
        );
    }
    println!("\npeak RSS of the whole run: {} MiB", peak_rss_mib());
    custos.close().unwrap();
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
