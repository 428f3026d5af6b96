//! What checking a dataset's files against their ingest digests costs, in
//! one run: cold (this process has not hashed the file: a full SHA-256 of
//! it) and warm (the per-process cache: a directory listing and a stat per
//! file), against the look-ups and aggregate queries the check guards.
//!
//! ```text
//! cargo bench -p custos-engine --bench digests                        # 10M rows
//! CUSTOS_BENCH_ROWS=1000000 cargo test --workspace --bench digests    # a debug build
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use custos_policy::Agreement;
use custos_store::{DatasetReader, Home};

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

/// A reader on a freshly opened home: nothing hashed yet in its cache.
async fn fresh_reader(home_dir: &std::path::Path) -> DatasetReader {
    let home = Home::open(home_dir, None).await.unwrap();
    DatasetReader::open(&home, "tax_returns").await.unwrap()
}

async fn run(rows: u64) {
    let common::Ingested { temp, data, reader } = common::ingested_returns(rows).await;
    let home_dir = temp.path().join("home");
    let buckets = reader.bucket_count();
    let bytes: u64 = reader
        .bucket_paths()
        .unwrap()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    // 300 subjects spread over the file.
    let text = std::fs::read_to_string(data.join("tax_returns.csv")).unwrap();
    let lines: Vec<&str> = text.lines().skip(1).collect();
    let step = (lines.len() / 300).max(1);
    let subjects: Vec<String> = lines
        .iter()
        .step_by(step)
        .take(300)
        .map(|l| l.split(',').next().unwrap().to_owned())
        .collect();
    drop(text);

    // Cold: every file hashed.
    let cold_reader = fresh_reader(&home_dir).await;
    let t = Instant::now();
    cold_reader.verify(None).unwrap();
    let cold_all = t.elapsed().as_secs_f64();
    // Warm: listing and stats only.
    let mut warm_all = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        cold_reader.verify(None).unwrap();
        warm_all.push(t.elapsed().as_secs_f64());
    }
    // One bucket, cold (a look-up's first read of its bucket).
    let one = fresh_reader(&home_dir).await;
    let bucket = one.bucket_of(&subjects[0]).unwrap();
    let t = Instant::now();
    one.verify(Some(&[bucket])).unwrap();
    let cold_one = t.elapsed().as_secs_f64();
    // Look-ups with a warm cache, and the check alone.
    let mut lookups = Vec::new();
    let mut checks = Vec::new();
    for s in &subjects {
        let b = cold_reader.bucket_of(s).unwrap();
        let t = Instant::now();
        cold_reader.verify(Some(&[b])).unwrap();
        checks.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let found = cold_reader.subject_rows(s, None).unwrap();
        lookups.push(t.elapsed().as_secs_f64());
        assert!(found.iter().map(|b| b.num_rows()).sum::<usize>() > 0);
    }
    // An aggregate query (which checks every file before reading).
    let agreement = Agreement::from_toml(include_str!(
        "../../../docs/examples/agreement-aggregate.toml"
    ))
    .unwrap();
    let plan = custos_privacy::plan(
        "SELECT state, SUM(refund) FROM tax_returns GROUP BY state",
        "tax_returns",
        reader.schema(),
        &agreement.grants[0],
        None,
    )
    .unwrap();
    let warm = Arc::new(cold_reader);
    let mut queries = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        custos_engine::answer(Arc::clone(&warm), &plan)
            .await
            .unwrap();
        queries.push(t.elapsed().as_secs_f64());
    }
    let (warm_all, lookup, check, query) = (
        median(warm_all),
        median(lookups),
        median(checks),
        median(queries),
    );
    println!(
        "\n{rows} rows, {buckets} bucket files, {:.0} MiB encrypted\n",
        bytes as f64 / 1048576.0
    );
    println!("| what | time | share of what it guards |");
    println!("|---|---:|---:|");
    println!(
        "| check every file, cold (SHA-256 of {:.0} MiB) | {cold_all:.3} s | {:.0}% of one query |",
        bytes as f64 / 1048576.0,
        100.0 * cold_all / query
    );
    println!(
        "| check every file, warm (listing + stats) | {:.3} ms | {:.2}% of one query |",
        warm_all * 1e3,
        100.0 * warm_all / query
    );
    println!(
        "| check one bucket, cold (a look-up's first read of it) | {:.1} ms | {:.1}× one look-up |",
        cold_one * 1e3,
        cold_one / lookup
    );
    println!(
        "| check one bucket, warm | {:.3} ms | {:.2}% of one look-up |",
        check * 1e3,
        100.0 * check / lookup
    );
    println!(
        "| look-up (subject_rows, warm; includes its check) | {:.2} ms | |",
        lookup * 1e3
    );
    println!("| SUM(refund) GROUP BY state (includes its check) | {query:.3} s | |");
}
