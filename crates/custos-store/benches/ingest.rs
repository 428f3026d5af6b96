#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]
//! Ingest benchmark: synthetic tax returns, CSV → Parquet, encrypted vs plain,
//! in one run. Each case runs in its own child process so that its peak
//! memory (VmHWM) is its own.
//!
//! ```text
//! cargo bench -p custos-store --bench ingest                 # 1M and 10M rows
//! CUSTOS_BENCH_ROWS=100000,1000000 cargo bench -p custos-store --bench ingest
//! CUSTOS_BENCH_ROWS=10000000 CUSTOS_BENCH_BUCKETS=128 cargo bench -p custos-store --bench ingest
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use custos_model::DatasetSchema;
use custos_store::ingest::{FileEncryption, NoProgress, write_buckets};
use custos_store::keys::DataKey;
use custos_store::layout::choose_bucket_count;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Child: ingest one file once and print `rows seconds bytes peak_mib`.
fn child(mode: &str, csv: &Path) {
    let schema = DatasetSchema::from_toml(custos_synth::TAX_RETURNS_SCHEMA).expect("schema");
    let out = tempfile::tempdir_in(csv.parent().expect("parent")).expect("tempdir");
    let key = DataKey::generate().expect("key");
    let size = std::fs::metadata(csv).expect("csv").len();
    let mut sample = vec![0u8; 65536];
    let n = std::io::Read::read(&mut std::fs::File::open(csv).expect("open"), &mut sample)
        .expect("read");
    sample.truncate(n);
    // CUSTOS_BENCH_BUCKETS forces a bucket count (e.g. the cap, 128) to
    // measure memory at the most writers an ingest ever opens.
    let buckets = std::env::var("CUSTOS_BENCH_BUCKETS")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| choose_bucket_count(size, &sample));
    let encryption = if mode == "encrypted" {
        FileEncryption::Encrypted
    } else {
        FileEncryption::Plain
    };
    let started = Instant::now();
    let written = write_buckets(
        out.path(),
        "bench.0",
        &schema,
        csv,
        &key,
        buckets,
        encryption,
        &NoProgress,
    )
    .expect("ingest");
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{} {seconds} {} {} {buckets}",
        written.rows,
        written.bytes,
        peak_rss_mib()
    );
}

fn data_file(rows: u64) -> PathBuf {
    let dir = std::env::var_os("CUSTOS_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("custos-bench-data"));
    let out = dir.join(format!("tax-{rows}"));
    let csv = out.join("tax_returns.csv");
    if !csv.exists() {
        eprintln!(
            "generating {rows} synthetic tax returns into {} …",
            out.display()
        );
        custos_synth::generate(
            &out,
            custos_synth::SynthOptions {
                tax_rows: rows,
                seed: 1,
            },
            &|_| {},
        )
        .expect("generate");
    }
    csv
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1], Path::new(&args[i + 2]));
        return;
    }
    let sizes: Vec<u64> = std::env::var("CUSTOS_BENCH_ROWS")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("CUSTOS_BENCH_ROWS: comma-separated row counts")
        })
        .collect();
    let exe = std::env::current_exe().expect("exe");
    println!(
        "| rows | mode | buckets | seconds (median of 3) | rows/s | MiB/s of CSV | stored MiB | peak RSS MiB | encrypted / plain time |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for rows in sizes {
        let csv = data_file(rows);
        let csv_mib = std::fs::metadata(&csv).expect("csv").len() as f64 / 1048576.0;
        let mut plain_seconds = f64::NAN;
        for mode in ["plain", "encrypted"] {
            // Median of three runs, alternating with nothing else running.
            let mut runs: Vec<Vec<f64>> = (0..3)
                .map(|_| {
                    let out = Command::new(&exe)
                        .args(["--child", mode])
                        .arg(&csv)
                        .output()
                        .expect("child");
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let line = String::from_utf8_lossy(&out.stdout).into_owned();
                    line.split_whitespace()
                        .map(|x| x.parse().expect("number"))
                        .collect()
                })
                .collect();
            runs.sort_by(|a, b| a[1].total_cmp(&b[1]));
            let f = &runs[1];
            let peak = runs.iter().map(|r| r[3]).fold(0.0, f64::max);
            let (n, seconds, bytes, buckets) = (f[0], f[1], f[2], f[4]);
            let ratio = if mode == "plain" {
                plain_seconds = seconds;
                "1.00".to_owned()
            } else {
                format!("{:.2}", seconds / plain_seconds)
            };
            println!(
                "| {} | {mode} | {buckets} | {seconds:.2} | {:.0} | {:.1} | {:.1} | {peak:.0} | {ratio} |",
                n as u64,
                n / seconds,
                csv_mib / seconds,
                bytes / 1048576.0,
            );
        }
    }
}
