//! Appends entries from 8 threads until killed, printing `ack INDEX PAYLOAD`
//! for each acknowledged (durable) append. Used by the kill -9 test.
//!
//! Usage: append_stream LEDGER_DIR
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use custos_ledger::{Decision, Entry, Ledger, LedgerConfig};
use ed25519_dalek::SigningKey;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: append_stream LEDGER_DIR");
    let ledger = Arc::new(
        Ledger::open(LedgerConfig {
            dir: dir.into(),
            origin: "test.custos.local/ledger".into(),
            signing_key: SigningKey::from_bytes(&[42; 32]),
            next_key: None,
            checkpoint_interval: Duration::from_millis(20),
            faults: custos_ledger::FaultPlan::default(),
        })
        .expect("open"),
    );
    let seed = std::process::id() as u64 * 1_000_000;
    let next = Arc::new(AtomicU64::new(seed));
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (ledger, next, out) = (ledger.clone(), next.clone(), out.clone());
            std::thread::spawn(move || {
                loop {
                    let payload = next.fetch_add(1, Ordering::Relaxed);
                    let e = Entry::new(0, "stream", "test.stream", Decision::Recorded)
                        .with_count("payload", payload);
                    let index = ledger.append(&e).expect("append");
                    let mut out = out.lock().unwrap();
                    writeln!(out, "ack {index} {payload}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
