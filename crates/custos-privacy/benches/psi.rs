//! Per-core throughput of the PSI protocol core (no network): hashing and
//! blinding a set (setup) and re-blinding the peer's points with their
//! checks (processing), then intersecting, for two sets of N keys that
//! share half, on one thread each. Compare with OpenMined PSI's published
//! per-core rates (P-256): ≈ 10,000 items/s setup, ≈ 18,000 processing.
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

fn main() {
    let n: usize = std::env::var("CUSTOS_BENCH_PSI")
        .ok()
        .map_or(200_000, |v| v.parse().expect("CUSTOS_BENCH_PSI: a number"));
    let dst = job_dst("bench-job");
    let xs: Vec<String> = (0..n).map(|i| format!("{:09}", 100_000_000 + i)).collect();
    let ys: Vec<String> = (n / 2..n + n / 2)
        .map(|i| format!("{:09}", 100_000_000 + i))
        .collect();
    let (a, b) = (Party::new().unwrap(), Party::new().unwrap());

    let started = Instant::now();
    let blinded_a = a.blind(&dst, &xs, n).unwrap();
    let setup = started.elapsed().as_secs_f64();
    let blinded_b = b.blind(&dst, &ys, n).unwrap();

    let started = Instant::now();
    let a_by_b = b.reblind(&blinded_a.points, n).unwrap();
    let process = started.elapsed().as_secs_f64();
    let b_by_a = a.reblind(&blinded_b.points, n).unwrap();

    let started = Instant::now();
    let found = matches(&blinded_a, &a_by_b, &b_by_a);
    let intersect = started.elapsed().as_secs_f64();
    assert_eq!(found.len(), n - n / 2);

    let rate = |s: f64| n as f64 / s;
    println!(
        "\nPSI core, {n} × {n} keys ({} shared), one thread per phase\n",
        found.len()
    );
    println!("| phase | seconds | items/s per core | OpenMined per core | ratio |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| setup: hash to Ristretto255 + blind + shuffle | {setup:.2} | {:.0} | {OPENMINED_SETUP:.0} | {:.2}× |",
        rate(setup),
        rate(setup) / OPENMINED_SETUP
    );
    println!(
        "| processing: check + re-blind the peer's points | {process:.2} | {:.0} | {OPENMINED_PROCESS:.0} | {:.2}× |",
        rate(process),
        rate(process) / OPENMINED_PROCESS
    );
    println!(
        "| intersect (hash set) | {intersect:.2} | {:.0} | | |",
        rate(intersect)
    );
}
