//! Unusual-browsing detection measured on access traces with known misuse
//! (custos_synth::trace), replayed through the real broker on a simulated
//! clock: every look-up is requested, approved and fetched, every refusal
//! is decided and ledgered, and detection runs as the server runs it (the
//! rules as entries are published, the peer comparison each day).
//!
//! Prints precision, recall and F1 per kind of misuse, false alerts per
//! 1,000 benign accesses, the detector's time per ledger entry, and
//! look-up latency with the detector running beside it and without.
//!
//! The thresholds were set on the trace of seed 1 (standard parameters);
//! the figures reported are for seeds and parameters never tuned on.
//!
//! ```text
//! cargo bench -p custos-broker --bench browsing
//! CUSTOS_BENCH_TRACES=tune cargo bench …      # the tuning trace (seed 1)
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use custos_broker::{Actor, Custos, LookupRequest, MasterKeySource, PrincipalFacts};
use custos_ledger::{Entry, LedgerReader};
use custos_model::Role;
use custos_store::NoProgress;
use custos_synth::trace::{self, Action, Filer, Misuse, Trace, TraceParams};

const ROWS: u64 = 30_000;
const DAY: i64 = 86_400_000_000;
/// 2026-11-02, a Monday after the clocks changed in New York.
const START_DAY: i64 = 20_759;

fn agreement(id: &str, org: &str) -> String {
    format!(
        r#"id = "{id}"
title = "Case look-ups of {org}"
purpose = "Investigate refund fraud"
valid_from = 2026-10-01
valid_until = 2099-12-31
[parties]
custodian = "IRS"
requester = "{org}"
[legal_authority]
citation = "26 U.S.C. 6103(h)(1)"
[monitoring]
timezone = "America/New_York"
usual_hours = "07:00-22:00"
case_reference = "CASE-[0-9]{{6}}"
[[grants]]
dataset = "tax_returns"
mode = "identified"
columns = ["tin", "name", "tax_year", "refund"]
[grants.limits]
subjects_per_day = 100000
requests_per_hour = 100000
approvals = 1
"#
    )
}

fn population(data: &std::path::Path) -> Vec<Filer> {
    let mut reader = csv::Reader::from_path(data.join("tax_returns.csv")).unwrap();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in reader.records() {
        let r = r.unwrap();
        if seen.insert(r[0].to_owned()) {
            out.push(Filer {
                id: r[0].to_owned(),
                name: r[1].to_owned(),
                address: r[2].to_owned(),
                zip: r[3].to_owned(),
            });
        }
    }
    out
}

struct Home {
    custos: Custos,
    dir: tempfile::TempDir,
    approver: Actor,
    overseer: Actor,
    requesters: Vec<Actor>,
}

async fn setup(trace: &Trace, data: &std::path::Path) -> Home {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("home");
    let (custos, _) = Custos::init(&root, MasterKeySource::GenerateFile, None)
        .await
        .unwrap();
    let (_, token) = custos
        .add_principal(
            &custos.actor(None).await.unwrap(),
            "admin",
            "IRS",
            &[Role::Admin],
        )
        .await
        .unwrap();
    let admin = custos.authenticate(token.reveal()).await.unwrap();
    let add = async |name: &str, org: &str, role: Role| {
        let (_, t) = custos
            .add_principal(&admin, name, org, &[role])
            .await
            .unwrap();
        custos.authenticate(t.reveal()).await.unwrap()
    };
    let approver = add("approver", "IRS", Role::Approver).await;
    let overseer = add("overseer", "GAO", Role::Overseer).await;
    let mut requesters = Vec::new();
    for r in &trace.requesters {
        requesters.push(add(&r.name, &format!("AG{}", r.agreement), Role::Requester).await);
    }
    custos
        .ingest(
            &admin,
            "tax_returns",
            &data.join("tax_returns.schema.toml"),
            &data.join("tax_returns.csv"),
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    for (i, id) in trace.agreements.iter().enumerate() {
        custos
            .apply_agreement(&admin, &agreement(id, &format!("AG{i}")))
            .await
            .unwrap();
    }
    for r in &trace.requesters {
        let facts = PrincipalFacts {
            own_id: Some(r.own_id.clone()),
            surname: Some(r.surname.clone()),
            address: Some(r.address.clone()),
            zip: Some(r.zip.clone()),
            household: r.household.clone(),
            colleagues: r.colleagues.clone(),
        };
        custos
            .set_principal_facts(&admin, &r.name, &facts)
            .await
            .unwrap();
    }
    for p in &trace.protected {
        custos.protect_subject(&admin, p).await.unwrap();
    }
    Home {
        custos,
        dir,
        approver,
        overseer,
        requesters,
    }
}

/// What the replay saw: which request and which refusal belongs to which
/// event, and the detector's time.
struct Replay {
    request_of: HashMap<String, usize>,
    benign_accesses: u64,
    detect_seconds: f64,
    detect_entries: u64,
}

async fn lookup(
    home: &Home,
    rq: &Actor,
    agreement: &str,
    subject: &str,
    why: &str,
) -> Option<String> {
    let ticket = home
        .custos
        .request_lookup(
            rq,
            LookupRequest {
                agreement,
                dataset: "tax_returns",
                subject,
                justification: why,
                columns: None,
            },
        )
        .await
        .ok()?;
    home.custos
        .approve_lookup(&home.approver, &ticket.id)
        .await
        .unwrap();
    home.custos.fetch_lookup(rq, &ticket.id).await.unwrap();
    Some(ticket.id)
}

async fn replay(home: &Home, trace: &Trace) -> Replay {
    let mut out = Replay {
        request_of: HashMap::new(),
        benign_accesses: 0,
        detect_seconds: 0.0,
        detect_entries: 0,
    };
    let detect = async |out: &mut Replay, peers: bool| {
        let t = Instant::now();
        let run = home.custos.detect_pending().await.unwrap();
        if peers {
            home.custos.scan_peers().await.unwrap();
        }
        out.detect_seconds += t.elapsed().as_secs_f64();
        out.detect_entries += run.entries_read;
    };
    let mut hour = trace.events[0].at_micros / 3_600_000_000;
    let mut day = trace.events[0].at_micros.div_euclid(DAY);
    for (i, e) in trace.events.iter().enumerate() {
        let e_day = e.at_micros.div_euclid(DAY);
        if e_day != day {
            // The day is over: the server's periodic peer scan.
            custos_broker::set_simulated_now(day * DAY + DAY - 1);
            detect(&mut out, true).await;
            day = e_day;
        }
        custos_broker::set_simulated_now(e.at_micros);
        if e.at_micros / 3_600_000_000 != hour {
            detect(&mut out, false).await;
            hour = e.at_micros / 3_600_000_000;
        }
        let rq = &home.requesters[e.requester];
        let agreement = &trace.agreements[e.agreement];
        if e.misuse.is_none() || e.misuse == Some(Misuse::Volume) {
            out.benign_accesses += 1;
        }
        match e.action {
            Action::Lookup => {
                let id = lookup(home, rq, agreement, &e.subject, &e.justification)
                    .await
                    .expect("a look-up under the requester's agreement is allowed");
                out.request_of.insert(id, i);
            }
            Action::WrongAgreement => {
                let denied = lookup(home, rq, agreement, &e.subject, &e.justification).await;
                assert!(
                    denied.is_none(),
                    "a request under another agency's agreement"
                );
            }
        }
    }
    custos_broker::set_simulated_now(day * DAY + DAY - 1);
    detect(&mut out, true).await;
    custos_broker::set_simulated_now(0);
    out
}

#[derive(Default)]
struct Score {
    injected: u64,
    detected: u64,
    predicted: u64,
    true_alerts: u64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

async fn evaluate(name: &str, home: &Home, trace: &Trace, replay: &Replay) {
    let meta = custos_store::Home::open(&home.dir.path().join("home"), None)
        .await
        .unwrap();
    let mut alerts = Vec::new();
    loop {
        let page = meta
            .meta()
            .alerts_page(alerts.len() as u64, 500)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        alerts.extend(page);
    }
    let reader = LedgerReader::new(&home.custos.ledger_dir());
    let size = home.custos.checkpoint().unwrap().size;
    let times: Vec<(i64, String)> = reader
        .entries(0, size)
        .unwrap()
        .into_iter()
        .map(|(_, b)| {
            let e = Entry::decode(&b).unwrap();
            (e.time_micros, e.actor)
        })
        .collect();
    let principal_of: HashMap<String, usize> = home
        .requesters
        .iter()
        .enumerate()
        .map(|(i, a)| (a.id().to_owned(), i))
        .collect();
    // Injected units: misuse events (a fishing burst and a volume day
    // count once).
    let mut units: BTreeMap<Misuse, HashSet<String>> = BTreeMap::new();
    let mut bursts: Vec<(usize, i64, i64)> = Vec::new();
    for e in &trace.events {
        match e.misuse {
            Some(Misuse::Fishing) => {
                match bursts.iter_mut().find(|b| {
                    b.0 == e.requester && e.at_micros - b.2 < 3_600_000_000 && e.at_micros >= b.1
                }) {
                    Some(b) => b.2 = e.at_micros,
                    None => bursts.push((e.requester, e.at_micros, e.at_micros)),
                }
            }
            Some(Misuse::Volume) | None => {}
            Some(k) => {
                units
                    .entry(k)
                    .or_default()
                    .insert(format!("{}", e.at_micros));
            }
        }
    }
    for (i, b) in bursts.iter().enumerate() {
        units
            .entry(Misuse::Fishing)
            .or_default()
            .insert(format!("burst{i}"));
        let _ = b;
    }
    for (r, d) in &trace.volume_days {
        units
            .entry(Misuse::Volume)
            .or_default()
            .insert(format!("{r}:{d}"));
    }
    let mut detected: BTreeMap<Misuse, HashSet<String>> = BTreeMap::new();
    let mut predicted: BTreeMap<&str, u64> = BTreeMap::new();
    let mut true_alerts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut false_alerts = 0u64;
    let mut false_by_rules: BTreeMap<String, u64> = BTreeMap::new();
    for a in &alerts {
        // Which misuse unit the alert is on, if any.
        let unit: Option<(Misuse, String)> = if let Some(req) = &a.request_id {
            replay.request_of.get(req).and_then(|&i| {
                let e = &trace.events[i];
                e.misuse
                    .filter(|k| *k != Misuse::Volume)
                    .map(|k| (k, format!("{}", e.at_micros)))
            })
        } else if a.rules.iter().any(|r| r.rule == "fishing") {
            let who = principal_of.get(&a.principal_id).copied();
            bursts.iter().enumerate().find_map(|(i, b)| {
                let hit = Some(b.0) == who
                    && a.rests_on.iter().any(|&x| {
                        let t = times[x as usize].0;
                        t >= b.1 && t <= b.2
                    });
                hit.then(|| (Misuse::Fishing, format!("burst{i}")))
            })
        } else if a.rules.iter().any(|r| r.rule == "peer_deviation") {
            let who = principal_of.get(&a.principal_id).copied();
            let day = a
                .rests_on
                .first()
                .map(|&x| times[x as usize].0.div_euclid(DAY));
            match (who, day) {
                (Some(r), Some(d)) if trace.volume_days.contains(&(r, d)) => {
                    Some((Misuse::Volume, format!("{r}:{d}")))
                }
                // A day with a burst of refusals deviates too: the alert
                // is on misuse, of the fishing kind.
                (Some(r), Some(d)) => bursts.iter().enumerate().find_map(|(i, b)| {
                    (b.0 == r && b.1.div_euclid(DAY) == d)
                        .then(|| (Misuse::Fishing, format!("burst{i}")))
                }),
                _ => None,
            }
        } else {
            None
        };
        if unit.is_none() {
            false_alerts += 1;
            if std::env::var_os("CUSTOS_BENCH_EXPLAIN").is_some() {
                eprintln!("false alert: {:?}", a.rules);
            }
            let names: Vec<&str> = a.rules.iter().map(|r| r.rule.as_str()).collect();
            *false_by_rules.entry(names.join(",")).or_default() += 1;
        }
        // Recall: a misuse unit with any alert on it is detected.
        // Precision of a rule: its alerts that rest on misuse of any kind.
        if let Some((k, id)) = &unit {
            detected.entry(*k).or_default().insert(id.clone());
        }
        for r in &a.rules {
            let Some(kind) = Misuse::ALL.iter().find(|k| k.rule() == r.rule) else {
                continue;
            };
            *predicted.entry(kind.rule()).or_default() += 1;
            if unit.is_some() {
                *true_alerts.entry(kind.rule()).or_default() += 1;
            }
        }
    }
    println!("\n### {name}\n");
    println!(
        "{} benign accesses, {} misuse units injected, {} alerts ({} false: {:.2} per 1,000 benign accesses)\n",
        replay.benign_accesses,
        units.values().map(HashSet::len).sum::<usize>(),
        alerts.len(),
        false_alerts,
        false_alerts as f64 * 1000.0 / replay.benign_accesses as f64
    );
    println!(
        "| misuse | rule | injected | detected | recall | alerts with the rule | precision | F1 |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for kind in Misuse::ALL {
        let s = Score {
            injected: units.get(&kind).map_or(0, |u| u.len() as u64),
            detected: detected.get(&kind).map_or(0, |u| u.len() as u64),
            predicted: predicted.get(kind.rule()).copied().unwrap_or(0),
            true_alerts: true_alerts.get(kind.rule()).copied().unwrap_or(0),
        };
        let (p, r) = (
            ratio(s.true_alerts, s.predicted),
            ratio(s.detected, s.injected),
        );
        println!(
            "| {} | `{}` | {} | {} | {:.2} | {} | {:.2} | {:.2} |",
            kind.name(),
            kind.rule(),
            s.injected,
            s.detected,
            r,
            s.predicted,
            p,
            2.0 * p * r / (p + r)
        );
    }
    let causes: Vec<String> = false_by_rules
        .iter()
        .map(|(rules, n)| format!("{n} × {rules}"))
        .collect();
    println!(
        "\nFalse alerts by rules: {}.",
        if causes.is_empty() {
            "none".to_owned()
        } else {
            causes.join("; ")
        }
    );
    println!(
        "\nDetection: {:.3} ms per ledger entry read ({} entries, {:.1} s in all).",
        replay.detect_seconds * 1000.0 / replay.detect_entries.max(1) as f64,
        replay.detect_entries,
        replay.detect_seconds
    );
    let _ = &home.overseer;
}

/// Look-up latency (request + approval + fetch) with the detector running
/// beside it as the server runs it, and without; blocks alternate.
async fn latency(home: &Home, trace: &Trace) {
    let subjects: Vec<&str> = trace
        .events
        .iter()
        .filter(|e| e.misuse.is_none() && e.action == Action::Lookup)
        .map(|e| e.subject.as_str())
        .take(400)
        .collect();
    let rq = &home.requesters[0];
    let agreement = &trace.agreements[trace.requesters[0].agreement];
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for (block, chunk) in subjects.chunks(50).enumerate() {
        let detecting = block % 2 == 1;
        // Each block starts with the detector caught up, so that a block
        // with detection pays for its own entries only.
        home.custos.detect_pending().await.unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let custos: &Custos = &home.custos;
        let detector = async {
            while detecting && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                custos.detect_pending().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        let work = async {
            for s in chunk {
                let t = Instant::now();
                lookup(home, rq, agreement, s, "CASE-000001: latency sample")
                    .await
                    .unwrap();
                let us = t.elapsed().as_secs_f64() * 1e6;
                if detecting { on.push(us) } else { off.push(us) }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        };
        tokio::join!(detector, work);
    }
    let pick = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    };
    let (off50, on50) = (pick(&mut off, 0.5), pick(&mut on, 0.5));
    let (off99, on99) = (pick(&mut off, 0.99), pick(&mut on, 0.99));
    println!("\n| look-up (request + approval + fetch) | samples | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|");
    println!(
        "| without detection | {} | {off50:.0} | {off99:.0} |",
        off.len()
    );
    println!(
        "| with the detector running beside it | {} | {on50:.0} | {on99:.0} |",
        on.len()
    );
    println!(
        "\nDetection adds {:+.1}% at p50 and {:+.1}% at p99.",
        (on50 / off50 - 1.0) * 100.0,
        (on99 / off99 - 1.0) * 100.0
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let data = std::env::var_os("CUSTOS_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("custos-bench-data"))
        .join(format!("tax-{ROWS}"));
    if !data.join("tax_returns.csv").exists() {
        custos_synth::generate(
            &data,
            custos_synth::SynthOptions {
                tax_rows: ROWS,
                seed: 1,
            },
            &|_| {},
        )
        .expect("generate");
    }
    let people = population(&data);
    let which = std::env::var("CUSTOS_BENCH_TRACES").unwrap_or_default();
    let traces: Vec<(String, TraceParams)> = if which == "tune" {
        vec![("seed 1, standard (tuning)".into(), TraceParams::standard(1))]
    } else {
        let mut other = TraceParams::standard(3);
        other.weeks = 3;
        other.agreements = 4;
        other.requesters_per_agreement = 10;
        other.lookups_per_day = 8.0;
        other.misuse_per_kind = 6;
        other.overtime = 0.004;
        other.wrong_agreement = 0.02;
        vec![
            ("seed 2, standard parameters".into(), TraceParams::standard(2)),
            (
                "seed 3: 3 weeks, 4 agreements × 10 requesters, 8 look-ups a day, twice the overtime and wrong agreements".into(),
                other,
            ),
        ]
    };
    println!("Population: {} filers ({ROWS} tax returns).", people.len());
    let mut first = true;
    for (name, params) in traces {
        let t = trace::generate(&params, &people, START_DAY);
        let home = setup(&t, &data).await;
        let started = Instant::now();
        let replay = replay(&home, &t).await;
        eprintln!(
            "replayed {} events in {:.1}s",
            t.events.len(),
            started.elapsed().as_secs_f64()
        );
        evaluate(&name, &home, &t, &replay).await;
        if first {
            latency(&home, &t).await;
            first = false;
        }
        home.custos.close().unwrap();
    }
}
