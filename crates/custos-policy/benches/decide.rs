//! Decision latency with 10, 1,000 and 10,000 active agreements.
//!
//! ```text
//! cargo bench -p custos-policy --bench decide
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use chrono::NaiveDate;
use custos_model::{Principal, Role};
use custos_policy::decide::{AccessRequest, ActiveAgreement, PolicyEngine};
use custos_policy::{Agreement, Mode};

const TEMPLATE: &str = include_str!("../../../docs/examples/agreement-identified.toml");
const GUARD: &str =
    "@id(\"protected\") forbid (principal, action, resource) when { context.subject_protected };";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let bob = Principal {
        id: "p00000000000000aa".into(),
        name: "bob".into(),
        org: "TIGTA".into(),
        roles: vec![Role::Requester],
        created_at: "t".into(),
        created_by: "local-admin".into(),
        revoked_at: None,
    };
    let columns = vec!["tin".to_owned(), "refund".to_owned()];
    let day = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
    println!(
        "| active agreements | compile ms | decide median µs | p99 µs | decide_as (prepared principal) median µs | p99 µs | allowed |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|");
    for n in [10usize, 1_000, 10_000] {
        let agreements: Vec<Agreement> = (0..n)
            .map(|i| {
                Agreement::from_toml(
                    &TEMPLATE.replace("tigta-refund-fraud-2026", &format!("agreement-{i:05}")),
                )
                .unwrap()
            })
            .collect();
        let active: Vec<ActiveAgreement<'_>> = agreements
            .iter()
            .map(|a| ActiveAgreement {
                agreement: a,
                version: 1,
            })
            .collect();
        let started = Instant::now();
        let engine = PolicyEngine::compile(&active, Some(GUARD)).unwrap();
        let compile_ms = started.elapsed().as_secs_f64() * 1000.0;
        let prepared = engine.principal(&bob).unwrap();
        let mut times = Vec::with_capacity(20_000);
        let mut prepared_times = Vec::with_capacity(20_000);
        let mut allowed = true;
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let id = format!("agreement-{:05}", state % n as u64);
            let request = AccessRequest {
                principal: &bob,
                agreement: &id,
                dataset: "tax_returns",
                mode: Mode::Identified,
                columns: &columns,
                day,
                subject_protected: false,
            };
            let t = Instant::now();
            let d = engine.decide(&request).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e6);
            allowed &= d.allowed;
            let t = Instant::now();
            let d = engine.decide_as(&prepared, &request).unwrap();
            prepared_times.push(t.elapsed().as_secs_f64() * 1e6);
            allowed &= d.allowed;
        }
        times.sort_by(f64::total_cmp);
        prepared_times.sort_by(f64::total_cmp);
        println!(
            "| {n} | {compile_ms:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            percentile(&prepared_times, 0.5),
            percentile(&prepared_times, 0.99),
            if allowed { "all" } else { "NOT ALL" }
        );
    }
}
