//! Throughput of the PSI protocol core (no network): hashing and blinding
//! a set (setup) and re-blinding the peer's points with their checks
//! (processing), then intersecting, for two sets of N keys that share
//! half. Each phase is timed on one core (slices of 1,000 keys, which
//! `Party` handles on the calling thread) and on all cores (the whole set,
//! one chunk per core). Compare with OpenMined PSI's published per-core
//! rates (P-256): ≈ 10,000 items/s setup, ≈ 18,000 processing.
//!
//! ```text
//! cargo bench -p custos-privacy --bench psi                      # N = 200,000
//! CUSTOS_BENCH_PSI=1000000 cargo bench -p custos-privacy --bench psi
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use custos_privacy::psi::{Party, job_dst, matches};

const OPENMINED_SETUP: f64 = 10_000.0;
const OPENMINED_PROCESS: f64 = 18_000.0;
/// Below `Party`'s smallest parallel chunk: one thread.
const SLICE: usize = 1000;

fn main() {
    let n: usize = std::env::var("CUSTOS_BENCH_PSI")
        .ok()
        .map_or(200_000, |v| v.parse().expect("CUSTOS_BENCH_PSI: a number"));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let dst = job_dst("bench-job");
    let xs: Vec<String> = (0..n).map(|i| format!("{:09}", 100_000_000 + i)).collect();
    let ys: Vec<String> = (n / 2..n + n / 2)
        .map(|i| format!("{:09}", 100_000_000 + i))
        .collect();
    let (a, b) = (Party::new().unwrap(), Party::new().unwrap());

    // One core.
    let one = n.min(100_000);
    let started = Instant::now();
    let mut sliced = Vec::with_capacity(one);
    for part in xs[..one].chunks(SLICE) {
        sliced.extend(a.blind(&dst, part, part.len()).unwrap().points);
    }
    let setup_one = one as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for part in sliced.chunks(SLICE) {
        b.reblind(part, part.len()).unwrap();
    }
    let process_one = one as f64 / started.elapsed().as_secs_f64();

    // All cores, the whole set.
    let started = Instant::now();
    let blinded_a = a.blind(&dst, &xs, n).unwrap();
    let setup_all = n as f64 / started.elapsed().as_secs_f64();
    let blinded_b = b.blind(&dst, &ys, n).unwrap();
    let started = Instant::now();
    let a_by_b = b.reblind(&blinded_a.points, n).unwrap();
    let process_all = n as f64 / started.elapsed().as_secs_f64();
    let b_by_a = a.reblind(&blinded_b.points, n).unwrap();
    let started = Instant::now();
    let found = matches(&blinded_a, &a_by_b, &b_by_a);
    let intersect = n as f64 / started.elapsed().as_secs_f64();
    assert_eq!(found.len(), n - n / 2);

    println!(
        "\nPSI core, {n} × {n} keys ({} shared); one core: {one} keys in slices of {SLICE}; all cores: {cores}\n",
        found.len()
    );
    println!("| phase | items/s, one core | OpenMined per core | ratio | items/s, {cores} cores |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| setup: hash to Ristretto255 + blind + shuffle | {setup_one:.0} | {OPENMINED_SETUP:.0} | {:.2}× | {setup_all:.0} |",
        setup_one / OPENMINED_SETUP
    );
    println!(
        "| processing: check + re-blind the peer's points | {process_one:.0} | {OPENMINED_PROCESS:.0} | {:.2}× | {process_all:.0} |",
        process_one / OPENMINED_PROCESS
    );
    println!("| intersect (hash set) | | | | {intersect:.0} |");
}
