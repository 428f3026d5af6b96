//! Ledger appends sequenced in PostgreSQL (the shared ledger of a
//! replicated home) against the local ledger's appends in the same run:
//! appends/s and the latency of an acknowledgement, from 1 and 64
//! appenders, through 1 and 3 replicas. A shared append is acknowledged
//! only once a signed checkpoint published in object storage covers it and
//! its inclusion is proved (docs/deploy.md), so its latency includes one
//! integration round.
//!
//! ```text
//! eval "$(scripts/postgres start /tmp/pg 54330)"; eval "$(scripts/s3 start /tmp/s3 54341)"
//! cargo bench -p custos-store --bench shared_ledger
//! CUSTOS_BENCH_APPENDS=2000 cargo bench -p custos-store --bench shared_ledger   # quicker
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_ledger::{
    Decision, Entry, Ledger, LedgerConfig, PublishedFiles, SharedLedger, SharedLedgerConfig,
};
use custos_store::journal::PgJournal;
use custos_store::objects::{ObjectFiles, ObjectStoreLocation};
use ed25519_dalek::SigningKey;

#[path = "../tests/common/mod.rs"]
mod common;

const ORIGIN: &str = "bench.custos.local/ledger";
/// As the broker opens a server's ledger.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(3);

/// An entry the size of a typical look-up's (about 300 bytes).
fn entry(appender: u64, i: u64) -> Vec<u8> {
    Entry::new(
        1_700_000_000_000_000,
        "principal:bench-appender",
        "lookup.fetch",
        Decision::Allow,
    )
    .with_request(&format!("req_{appender:016x}{i:016x}"))
    .with_agreement("bench-lookups", 1)
    .with_attribute("columns", "tin,name,tax_year,refund,state")
    .with_count("appender", appender)
    .with_count("i", i)
    .with_count("rows", 3)
    .encode()
    .unwrap()
}

/// One way of appending: `append(appender, i)` acknowledges one entry.
type Append = Arc<dyn Fn(u64, u64) + Send + Sync>;

struct Row {
    ledger: &'static str,
    replicas: usize,
    appenders: u64,
    appends: u64,
    seconds: f64,
    latencies_ms: Vec<f64>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.appends as f64 / self.seconds
    }

    fn print(&mut self) {
        self.latencies_ms.sort_by(f64::total_cmp);
        let n = self.latencies_ms.len();
        let pick = |p: f64| self.latencies_ms[((n as f64 - 1.0) * p).round() as usize];
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} |",
            self.ledger,
            self.replicas,
            self.appenders,
            self.appends,
            self.seconds,
            self.rate(),
            pick(0.5),
            pick(0.99)
        );
    }
}

/// `total` appends from `appenders` threads, each through `appends[t % len]`.
fn drive(ledger: &'static str, appends: &[Append], appenders: u64, total: u64) -> Row {
    let per = total / appenders;
    let started = Instant::now();
    let threads: Vec<_> = (0..appenders)
        .map(|t| {
            let append = Arc::clone(&appends[t as usize % appends.len()]);
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(per as usize);
                for i in 0..per {
                    let at = Instant::now();
                    append(t, i);
                    latencies.push(at.elapsed().as_secs_f64() * 1e3);
                }
                latencies
            })
        })
        .collect();
    let mut latencies_ms = Vec::new();
    for thread in threads {
        latencies_ms.extend(thread.join().unwrap());
    }
    Row {
        ledger,
        replicas: appends.len(),
        appenders,
        appends: per * appenders,
        seconds: started.elapsed().as_secs_f64(),
        latencies_ms,
    }
}

fn local(dir: &std::path::Path) -> Arc<Ledger> {
    Arc::new(
        Ledger::open(LedgerConfig {
            dir: dir.to_owned(),
            origin: ORIGIN.into(),
            signing_key: SigningKey::from_bytes(&[1; 32]),
            next_key: None,
            checkpoint_interval: CHECKPOINT_INTERVAL,
            faults: custos_ledger::FaultPlan::default(),
        })
        .unwrap(),
    )
}

/// A fresh shared ledger's replicas, each with its own pools, as servers
/// would open them.
fn shared(count: usize) -> Vec<Arc<SharedLedger>> {
    let postgres = common::fresh_postgres().expect("CUSTOS_TEST_POSTGRES names no server");
    let objects = common::fresh_prefix().expect("CUSTOS_TEST_S3 names no server");
    (0..count)
        .map(|r| {
            let location = ObjectStoreLocation::parse(&objects).unwrap();
            let files: Arc<dyn PublishedFiles> =
                Arc::new(Arc::new(ObjectFiles::connect(&location).unwrap()).ledger());
            Arc::new(
                SharedLedger::open(SharedLedgerConfig {
                    journal: Arc::new(PgJournal::connect(&postgres).unwrap()),
                    files,
                    origin: ORIGIN.into(),
                    signing_key: SigningKey::from_bytes(&[1; 32]),
                    checkpoint_interval: CHECKPOINT_INTERVAL,
                    lease_ttl: LEASE,
                    holder: format!("bench-replica-{r}"),
                })
                .unwrap(),
            )
        })
        .collect()
}

fn main() {
    let total: u64 = std::env::var("CUSTOS_BENCH_APPENDS")
        .ok()
        .map_or(6_400, |v| v.parse().expect("CUSTOS_BENCH_APPENDS"));
    let tmp = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for appenders in [1u64, 64] {
        // One appender waits for each acknowledgement: fewer appends.
        let total = if appenders == 1 { total / 16 } else { total };
        let ledger = local(&tmp.path().join(format!("local-{appenders}")));
        let append: Append = {
            let ledger = Arc::clone(&ledger);
            Arc::new(move |t, i| {
                ledger.append_encoded(vec![entry(t, i)]).unwrap();
            })
        };
        rows.push(drive("local (files, fsync)", &[append], appenders, total));
        drop(ledger);
        for count in [1, 3] {
            let replicas = shared(count);
            let appends: Vec<Append> = replicas
                .iter()
                .map(|replica| {
                    let replica = Arc::clone(replica);
                    Arc::new(move |t, i| {
                        replica.append_encoded(vec![entry(t, i)]).unwrap();
                    }) as Append
                })
                .collect();
            rows.push(drive(
                "shared (PostgreSQL journal, S3 checkpoints)",
                &appends,
                appenders,
                total,
            ));
            drop(appends);
            for replica in replicas {
                if let Ok(replica) = Arc::try_unwrap(replica) {
                    replica.close();
                }
            }
        }
    }
    println!("\none entry per append call; each acknowledged durable (shared: and published)\n");
    println!("| ledger | replicas | appenders | appends | seconds | appends/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &mut rows {
        row.print();
    }
    println!("\nshared against local, same appenders:\n");
    println!("| appenders | replicas | appends/s ratio |");
    println!("|---:|---:|---:|");
    for base in rows
        .iter()
        .filter(|r| r.replicas == 1 && r.ledger.starts_with("local"))
    {
        for row in rows
            .iter()
            .filter(|r| r.appenders == base.appenders && r.ledger.starts_with("shared"))
        {
            println!(
                "| {} | {} | {:.3}× |",
                row.appenders,
                row.replicas,
                row.rate() / base.rate()
            );
        }
    }
}
