//! Ledger benchmark: durable appends (1 and 64 appenders) against a plain
//! append-only file with one fsync per batch, proof generation, full
//! verification, and peak memory — all in one run.
//!
//! ```text
//! cargo bench -p custos-ledger --bench ledger
//! CUSTOS_BENCH_ENTRIES=100000 cargo bench -p custos-ledger --bench ledger   # quicker
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_ledger::{Decision, Entry, Ledger, LedgerConfig, LedgerReader, verify_ledger};
use ed25519_dalek::SigningKey;

const ENTRY_BYTES: usize = 256;

fn entry(i: u64) -> Vec<u8> {
    let base = Entry::new(
        1_700_000_000_000_000,
        "bench-appender",
        "bench.append",
        Decision::Allow,
    )
    .with_count("i", i)
    .with_attribute("pad", "");
    let pad = ENTRY_BYTES - base.encode().unwrap().len();
    let e = base
        .with_attribute("pad", "x".repeat(pad))
        .encode()
        .unwrap();
    assert_eq!(e.len(), ENTRY_BYTES);
    e
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn open(dir: &std::path::Path) -> Ledger {
    Ledger::open(LedgerConfig {
        dir: dir.to_owned(),
        origin: "bench.custos.local/ledger".into(),
        signing_key: SigningKey::from_bytes(&[1; 32]),
        next_key: None,
        checkpoint_interval: Duration::from_secs(1),
        faults: custos_ledger::FaultPlan::default(),
    })
    .unwrap()
}

/// Baseline: the same bytes to a plain file, one write + fdatasync per batch.
fn baseline(dir: &std::path::Path, total: u64, batch: u64) -> f64 {
    std::fs::create_dir_all(dir).unwrap();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("plain.log"))
        .unwrap();
    let started = Instant::now();
    let mut i = 0;
    while i < total {
        let mut buf = Vec::with_capacity((batch as usize) * (ENTRY_BYTES + 4));
        for j in i..(i + batch).min(total) {
            let e = entry(j);
            buf.extend_from_slice(&(e.len() as u32).to_be_bytes());
            buf.extend_from_slice(&e);
        }
        file.write_all(&buf).unwrap();
        file.sync_data().unwrap();
        i += batch;
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let total: u64 = std::env::var("CUSTOS_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    println!(
        "ledger benchmark: {total} entries of {ENTRY_BYTES} bytes, on {}",
        tmp.path().display()
    );
    println!();
    println!("| what | custos ledger | baseline (plain file, fsync per batch) | ratio |");
    println!("|---|---:|---:|---:|");

    // 1 appender, batches of 1,000 entries per durable commit.
    let dir = tmp.path().join("one");
    let ledger = open(&dir);
    let started = Instant::now();
    let mut i = 0;
    while i < total {
        let batch: Vec<Vec<u8>> = (i..(i + 1000).min(total)).map(entry).collect();
        ledger.append_encoded(batch).unwrap();
        i += 1000;
    }
    let one = total as f64 / started.elapsed().as_secs_f64();
    ledger.close().unwrap();
    let base_one = baseline(&tmp.path().join("one-base"), total, 1000);
    println!(
        "| durable appends/s, 1 appender, 1,000 entries per append call | {one:.0} | {base_one:.0} | {:.2} |",
        one / base_one
    );

    // 64 appenders, one entry per call: group commit shares the fsyncs.
    let concurrent_total = (total / 5).max(64_000);
    let dir64 = tmp.path().join("sixty-four");
    std::fs::create_dir_all(&dir64).unwrap();
    let ledger = Arc::new(open(&dir64));
    let started = Instant::now();
    let per = concurrent_total / 64;
    let threads: Vec<_> = (0..64)
        .map(|t| {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                for k in 0..per {
                    ledger.append_encoded(vec![entry(t * per + k)]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let sixty_four = (per * 64) as f64 / started.elapsed().as_secs_f64();
    Arc::into_inner(ledger).unwrap().close().unwrap();
    std::fs::create_dir_all(tmp.path().join("64-base")).unwrap();
    let base_64 = baseline(&tmp.path().join("64-base"), per * 64, 64);
    println!(
        "| durable appends/s, 64 appenders, 1 entry per call | {sixty_four:.0} | {base_64:.0} (batches of 64) | {:.2} |",
        sixty_four / base_64
    );
    println!();

    // Proofs on the big tree.
    let reader = LedgerReader::new(&dir);
    let key = custos_ledger::NoteSigner::new(
        "bench.custos.local/ledger",
        SigningKey::from_bytes(&[1; 32]),
    )
    .verifier_key();
    let size = reader.latest(&key).unwrap().size;
    let mut inclusion = Vec::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..10_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let index = state % size;
        let t = Instant::now();
        let p = reader.inclusion_proof(index, size, size).unwrap();
        inclusion.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(p);
    }
    inclusion.sort_by(f64::total_cmp);
    let mut consistency = Vec::new();
    for _ in 0..2_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let old = 1 + state % size;
        let t = Instant::now();
        let p = reader.consistency_proof(old, size, size).unwrap();
        consistency.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(p);
    }
    consistency.sort_by(f64::total_cmp);
    println!("| proof at size {size} | median µs | p99 µs |");
    println!("|---|---:|---:|");
    println!(
        "| inclusion (10,000 random) | {:.1} | {:.1} |",
        percentile(&inclusion, 0.5),
        percentile(&inclusion, 0.99)
    );
    println!(
        "| consistency (2,000 random) | {:.1} | {:.1} |",
        percentile(&consistency, 0.5),
        percentile(&consistency, 0.99)
    );
    println!();

    let started = Instant::now();
    let report = verify_ledger(&dir, &key, None).unwrap();
    let verify_s = started.elapsed().as_secs_f64();
    println!(
        "| full verify of {} entries | {verify_s:.2} s ({:.0} entries/s) |",
        report.size,
        report.size as f64 / verify_s
    );
    println!("|---|---:|");
    println!("| peak RSS of this whole run | {:.0} MiB |", peak_rss_mib());
}
