//! DP aggregates against the same non-private DataFusion query on the same
//! Parquet, encrypted and plain, in one run.
//!
//! ```text
//! cargo bench -p custos-engine --bench aggregate                         # 10M rows
//! CUSTOS_BENCH_ROWS=1000000 cargo bench -p custos-engine --bench aggregate
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use custos_policy::Agreement;
use custos_store::NoProgress;
use datafusion::prelude::ParquetReadOptions;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rows: u64 = std::env::var("CUSTOS_BENCH_ROWS")
        .ok()
        .map_or(10_000_000, |r| r.parse().expect("CUSTOS_BENCH_ROWS"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(rows));
}

async fn run(rows: u64) {
    let common::Ingested { temp, data, reader } = common::ingested_returns(rows).await;
    let dir = reader.bucket_paths().unwrap()[0]
        .parent()
        .unwrap()
        .to_owned();
    // The same rows in the same bucket layout, unencrypted.
    let plain_dir = temp.path().join("plain");
    std::fs::create_dir_all(&plain_dir).unwrap();
    let schema = custos_model::DatasetSchema::from_toml(
        &std::fs::read_to_string(data.join("tax_returns.schema.toml")).unwrap(),
    )
    .unwrap();
    custos_store::ingest::write_buckets(
        &plain_dir,
        "bench.plain",
        &schema,
        &data.join("tax_returns.csv"),
        &custos_store::keys::DataKey::generate().unwrap(),
        u32::try_from(reader.bucket_paths().unwrap().len()).unwrap(),
        custos_store::ingest::FileEncryption::Plain,
        &NoProgress,
    )
    .unwrap();
    let plain = datafusion::prelude::SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_target_partitions(2),
    );
    plain
        .register_parquet(
            "tax_returns",
            plain_dir.to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await
        .unwrap();
    let text = include_str!("../../../docs/examples/agreement-aggregate.toml");
    let agreement = Agreement::from_toml(text).unwrap();
    let grant = &agreement.grants[0];
    let cases = [
        (
            "COUNT(*)",
            "SELECT COUNT(*) FROM tax_returns",
            "SELECT COUNT(*) FROM tax_returns",
        ),
        (
            "SUM(refund) GROUP BY state",
            "SELECT state, SUM(refund) FROM tax_returns GROUP BY state",
            "SELECT state, SUM(refund) FROM tax_returns GROUP BY state",
        ),
        (
            "AVG(refund) WHERE tax_year = 2024 GROUP BY filing_status",
            "SELECT filing_status, AVG(refund) FROM tax_returns WHERE tax_year = 2024 GROUP BY filing_status",
            "SELECT filing_status, AVG(refund) FROM tax_returns WHERE tax_year = 2024 GROUP BY filing_status",
        ),
        (
            "MEDIAN(wages) GROUP BY state",
            "SELECT state, MEDIAN(wages) FROM tax_returns GROUP BY state",
            "SELECT state, MEDIAN(wages) FROM tax_returns GROUP BY state",
        ),
    ];
    println!(
        "\n{rows} rows, {} bucket files, encrypted\n",
        reader.bucket_paths().unwrap().len()
    );
    println!(
        "| query | non-private, plain s | non-private, encrypted s | DP, encrypted s | DP / non-private encrypted | DP / non-private plain | DP peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, dp_sql, plain_sql) in cases {
        let ctx = custos_engine::execute::session(Arc::clone(&reader), false);
        ctx.register_parquet(
            "tax_returns",
            dir.to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await
        .unwrap();
        let mut base = Vec::new();
        let mut base_plain = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let batches = ctx.sql(plain_sql).await.unwrap().collect().await.unwrap();
            assert!(!batches.is_empty());
            base.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let batches = plain.sql(plain_sql).await.unwrap().collect().await.unwrap();
            assert!(!batches.is_empty());
            base_plain.push(t.elapsed().as_secs_f64());
        }
        let plan =
            custos_privacy::plan(dp_sql, "tax_returns", reader.schema(), grant, None).unwrap();
        // Peak memory of the DP runs alone.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let mut dp = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let answer = custos_engine::answer(Arc::clone(&reader), &plan)
                .await
                .unwrap();
            assert!(!answer.rows.is_empty());
            dp.push(t.elapsed().as_secs_f64());
        }
        let dp_rss = peak_rss_mib();
        let (p, b, d) = (median(base_plain), median(base), median(dp));
        println!(
            "| {name} | {p:.3} | {b:.3} | {d:.3} | {:.2}× | {:.2}× | {dp_rss:.0} |",
            d / b,
            d / p
        );
    }
}
