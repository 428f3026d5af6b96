#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]
//! What the master key's source costs: opening a home, and a subject's
//! look-up (open the dataset, which unwraps its data key, then read the
//! subject's rows from one bucket), with the key in a file against the key
//! inside an HSM (SoftHSM2, a token in files) and against shares, in one
//! run. Each source runs in its own child process (the PKCS#11 module
//! reads SOFTHSM2_CONF at load).
//!
//! ```text
//! cargo bench -p custos-store --bench key_sources        # needs softhsm2-util
//! CUSTOS_BENCH_REPS=200 cargo bench -p custos-store --bench key_sources
//! ```

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_store::dataset::{self, DatasetReader};
use custos_store::{Home, HsmConfig, KeyInput, MasterKeySource, NoProgress, SecretText};

#[path = "../tests/common/mod.rs"]
mod common;
use common::SCHEMA;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "246810";

fn reps() -> usize {
    std::env::var("CUSTOS_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100)
}

/// Median and 99th percentile of `samples`, in microseconds.
fn summary(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    (at(0.5), at(0.99))
}

/// Child: one home under `source`, 20,000 rows; prints
/// `open_p50 open_p99 lookup_p50 lookup_p99` in microseconds.
async fn child(source: &str, dir: &Path) {
    let root = dir.join(format!("home-{source}"));
    let (key, input) = match source {
        "file" => (MasterKeySource::GenerateFile, None),
        "shares" => (
            MasterKeySource::Shares {
                threshold: 3,
                count: 5,
            },
            None,
        ),
        _ => (
            MasterKeySource::Hsm {
                config: HsmConfig::new(SOFTHSM.into(), "custos-bench".into()),
                pin: SecretText::from(PIN.to_owned()),
            },
            Some(KeyInput::HsmPin(SecretText::from(PIN.to_owned()))),
        ),
    };
    let report = Home::init(&root, key, None).await.expect("init");
    let shares: Vec<SecretText> = report
        .shares
        .iter()
        .take(report.threshold)
        .map(|s| SecretText::from(s.text.to_string()))
        .collect();
    let input = || match (&input, shares.is_empty()) {
        (Some(KeyInput::HsmPin(pin)), _) => KeyInput::HsmPin(pin.clone()),
        (_, false) => KeyInput::Shares(shares.clone()),
        _ => KeyInput::None,
    };
    let home = Home::open_keyed(&root, input()).await.expect("open");
    let schema = dir.join(format!("{source}.schema.toml"));
    std::fs::write(&schema, SCHEMA).unwrap();
    let mut csv = String::from("id,amount,label\n");
    for row in 0..20_000i64 {
        let id = (row * 7919) % 5000;
        csv.push_str(&format!("{id},{row},label-{id}\n"));
    }
    let csv_path = dir.join(format!("{source}.csv"));
    std::fs::write(&csv_path, csv).unwrap();
    dataset::ingest(&home, "t", &schema, &csv_path, Arc::new(NoProgress))
        .await
        .expect("ingest");
    drop(home);

    let mut opens = Vec::new();
    for _ in 0..reps() {
        let started = Instant::now();
        let home = Home::open_keyed(&root, input()).await.expect("open");
        opens.push(started.elapsed());
        drop(home);
    }
    let home = Home::open_keyed(&root, input()).await.expect("open");
    let mut lookups = Vec::new();
    for i in 0..reps() * 5 {
        let started = Instant::now();
        let reader = DatasetReader::open(&home, "t").await.expect("reader");
        let rows = reader
            .subject_rows(&((i * 37) % 5000).to_string(), None)
            .expect("rows");
        assert!(!rows.is_empty());
        lookups.push(started.elapsed());
    }
    let (o50, o99) = summary(opens);
    let (l50, l99) = summary(lookups);
    println!("{o50:.0} {o99:.0} {l50:.0} {l99:.0}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(child(&args[i + 1], Path::new(&args[i + 2])));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let token = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", "custos-bench"])
        .args(["--pin", PIN, "--so-pin", "13579111"])
        .output()
        .expect("softhsm2-util (Debian package softhsm2)");
    assert!(token.status.success());
    println!(
        "key source | open p50 (µs) | open p99 (µs) | look-up p50 (µs) | look-up p99 (µs) | open / file | look-up / file"
    );
    println!("---|---|---|---|---|---|---");
    let mut base: Option<(f64, f64)> = None;
    for source in ["file", "shares", "hsm"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--child", source])
            .arg(dir.path())
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let (open, lookup) = (v[0], v[2]);
        let (bo, bl) = *base.get_or_insert((open, lookup));
        println!(
            "{source} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2}",
            v[0],
            v[1],
            v[2],
            v[3],
            open / bo,
            lookup / bl
        );
    }
}
