//! Server time per console page on a home whose ledger holds a million
//! entries: each page rendered through the real router (session cookie,
//! broker calls, ledger reads), in process, so the figure is the server's
//! own time without a network or a browser.
//!
//! ```text
//! cargo bench -p custos-server --bench console_pages                      # 1M entries
//! CUSTOS_BENCH_ENTRIES=100000 cargo bench -p custos-server --bench console_pages
//! ```
//!
//! The ledger is filled with what a busy home records: look-up requests
//! (some approved and fetched), and a long tail of refused look-ups of
//! unknown requests (each a ledgered denial), by several principals.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use custos_broker::{Actor, Custos, LookupRequest, MasterKeySource, NoProgress};
use custos_model::Role;
use custos_server::ServerConfig;
use tower::ServiceExt;

/// Builds one request for a page.
type MakeRequest = Box<dyn Fn() -> Request<Body>>;

/// Times each page is asked for.
const SAMPLES: usize = 200;
/// Look-up requests filed (the rest of the ledger is refusals).
const REQUESTS: usize = 3_000;

fn agreement() -> String {
    let today = chrono::Utc::now().date_naive();
    let (from, until) = (today - chrono::Days::new(1), today + chrono::Days::new(30));
    format!(
        r#"id = "bench-console"
title = "Console load"
purpose = "Measure console pages at a million ledger entries"
valid_from = {from}
valid_until = {until}
[parties]
custodian = "IRS"
requester = "TIGTA"
[legal_authority]
citation = "none (benchmark)"
[[grants]]
dataset = "tax_returns"
mode = "identified"
columns = ["tin", "name", "tax_year", "refund", "state"]
[grants.limits]
subjects_per_day = 10000000
requests_per_hour = 10000000
approvals = 1
"#
    )
}

struct People {
    rita: Actor,
    adam: Actor,
    tokens: Vec<(&'static str, String)>,
}

async fn prepare(home: PathBuf) -> (Custos, People, Vec<String>) {
    let data = std::env::var_os("CUSTOS_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("custos-bench-data"))
        .join("tax-20000");
    let csv = data.join("tax_returns.csv");
    if !csv.exists() {
        custos_synth::generate(
            &data,
            custos_synth::SynthOptions {
                tax_rows: 20_000,
                seed: 1,
            },
            &|_| {},
        )
        .unwrap();
    }
    let (custos, _) = Custos::init(&home, MasterKeySource::GenerateFile, None)
        .await
        .unwrap();
    let (_, token) = custos
        .add_principal(
            &custos.actor(None).await.unwrap(),
            "alice",
            "IRS",
            &[Role::Admin],
        )
        .await
        .unwrap();
    let admin = custos.authenticate(token.reveal()).await.unwrap();
    let mut tokens = vec![("admin", token.reveal().to_owned())];
    let mut actors = Vec::new();
    for (name, org, role) in [
        ("rita", "TIGTA", Role::Requester),
        ("adam", "IRS", Role::Approver),
        ("olga", "GAO", Role::Overseer),
    ] {
        let (_, token) = custos
            .add_principal(&admin, name, org, &[role])
            .await
            .unwrap();
        actors.push(custos.authenticate(token.reveal()).await.unwrap());
        tokens.push((role.as_str(), token.reveal().to_owned()));
    }
    custos
        .ingest(
            &admin,
            "tax_returns",
            &data.join("tax_returns.schema.toml"),
            &csv,
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    custos.apply_agreement(&admin, &agreement()).await.unwrap();
    let mut reader = csv::Reader::from_path(&csv).unwrap();
    let mut subjects: Vec<String> = reader.records().map(|r| r.unwrap()[0].to_owned()).collect();
    subjects.sort_unstable();
    subjects.dedup();
    subjects.truncate(REQUESTS);
    let people = People {
        rita: actors[0].clone(),
        adam: actors[1].clone(),
        tokens,
    };
    (custos, people, subjects)
}

/// Files the look-ups (a third approved and fetched), then ledgered
/// refusals up to `entries`, 64 at a time so appends share fsyncs.
async fn fill(custos: &Arc<Custos>, people: &People, subjects: &[String], entries: u64) {
    let started = Instant::now();
    for (i, subject) in subjects.iter().enumerate() {
        let ticket = custos
            .request_lookup(
                &people.rita,
                LookupRequest {
                    agreement: "bench-console",
                    dataset: "tax_returns",
                    subject,
                    justification: "Benchmark case: a refund routed to a shared account",
                    columns: None,
                },
            )
            .await
            .unwrap();
        if i % 3 == 0 {
            custos
                .approve_lookup(&people.adam, &ticket.id)
                .await
                .unwrap();
            custos.fetch_lookup(&people.rita, &ticket.id).await.unwrap();
        }
    }
    let next = Arc::new(AtomicUsize::new(
        usize::try_from(custos.checkpoint().unwrap().size).unwrap(),
    ));
    let goal = usize::try_from(entries).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64 {
        let (custos, next) = (Arc::clone(custos), Arc::clone(&next));
        let actor = if t % 2 == 0 {
            people.rita.clone()
        } else {
            people.adam.clone()
        };
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < goal {
                let _ = custos.lookup_details(&actor, "req_unknown").await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    // Let the ledger publish its last checkpoint.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    eprintln!(
        "filled the ledger to {} entries in {:.0} s",
        custos.checkpoint().unwrap().size,
        started.elapsed().as_secs_f64()
    );
}

async fn sign_in(app: &axum::Router, token: &str) -> String {
    let response = app
        .clone()
        .oneshot(
            Request::post("/console/sign-in")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("token={token}")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

/// The session's CSRF token, read from its home page's forms.
async fn csrf(app: &axum::Router, cookie: &str) -> String {
    let response = app
        .clone()
        .oneshot(
            Request::get("/console")
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let html = String::from_utf8_lossy(&body);
    let at = html.find("name=\"csrf\" value=\"").unwrap() + 19;
    html[at..at + 64].to_owned()
}

async fn time_page(app: &axum::Router, make: &dyn Fn() -> Request<Body>) -> (f64, f64) {
    let mut times = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let response = app.clone().oneshot(make()).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(
            status.is_success(),
            "{status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    times.sort_by(f64::total_cmp);
    (times[SAMPLES / 2], times[SAMPLES * 99 / 100])
}

fn main() {
    let entries: u64 = std::env::var("CUSTOS_BENCH_ENTRIES")
        .ok()
        .map_or(1_000_000, |r| r.parse().expect("CUSTOS_BENCH_ENTRIES"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let temp = tempfile::tempdir().unwrap();
    runtime.block_on(async {
        let (custos, people, subjects) = prepare(temp.path().join("home")).await;
        let custos = Arc::new(custos);
        fill(&custos, &people, &subjects, entries).await;
        let size = custos.checkpoint().unwrap().size;
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
        config.rate_limit.per_second = std::num::NonZeroU32::new(1_000_000).unwrap();
        config.rate_limit.burst = std::num::NonZeroU32::new(1_000_000).unwrap();
        let app = custos_server::router(Arc::clone(&custos), &config);
        let token = |role: &str| {
            people
                .tokens
                .iter()
                .find(|(r, _)| *r == role)
                .map(|(_, t)| t.clone())
                .unwrap()
        };
        let overseer = sign_in(&app, &token("overseer")).await;
        let approver = sign_in(&app, &token("approver")).await;
        let requester = sign_in(&app, &token("requester")).await;
        let admin = sign_in(&app, &token("admin")).await;
        let overseer_csrf = csrf(&app, &overseer).await;
        let get = |path: String, cookie: String| {
            move || {
                Request::get(path.as_str())
                    .header(header::COOKIE, cookie.as_str())
                    .body(Body::empty())
                    .unwrap()
            }
        };
        let subject = subjects[0].clone();
        let report_cookie = overseer.clone();
        let report = move || {
            Request::post("/console/subject")
                .header(header::COOKIE, report_cookie.as_str())
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("csrf={overseer_csrf}&subject={subject}")))
                .unwrap()
        };
        let pages: Vec<(&str, MakeRequest)> = vec![
            ("home (overseer)", Box::new(get("/console".into(), overseer.clone()))),
            ("ledger explorer, newest 50", Box::new(get("/console/ledger".into(), overseer.clone()))),
            (
                "ledger explorer, filtered to lookup.fetch",
                Box::new(get("/console/ledger?action=lookup.fetch".into(), overseer.clone())),
            ),
            (
                "ledger explorer, page at the middle",
                Box::new(get(format!("/console/ledger?before={}", size / 2), overseer.clone())),
            ),
            (
                "ledger entry with its inclusion proof",
                Box::new(get(format!("/console/ledger/{}", size / 2), overseer.clone())),
            ),
            ("subject accounting (POST)", Box::new(report)),
            ("agreements", Box::new(get("/console/agreements".into(), overseer.clone()))),
            (
                "agreement with its charts",
                Box::new(get("/console/agreements/bench-console".into(), overseer.clone())),
            ),
            ("approval queue (200 shown, each ledgered)", Box::new(get("/console/queue".into(), approver.clone()))),
            ("my decisions", Box::new(get("/console/decisions".into(), approver.clone()))),
            ("my requests and budgets", Box::new(get("/console/mine".into(), requester.clone()))),
            ("principals", Box::new(get("/console/principals".into(), admin.clone()))),
        ];
        let mut rows = Vec::new();
        for (name, make) in &pages {
            let (p50, p99) = time_page(&app, make.as_ref()).await;
            rows.push((name.to_owned(), p50, p99));
        }
        println!(
            "\n{size} ledger entries, {REQUESTS} look-up requests; {SAMPLES} requests per page, in process (router.oneshot), 2 worker threads\n"
        );
        println!("| page | p50 ms | p99 ms |");
        println!("|---|---:|---:|");
        for (name, p50, p99) in rows {
            println!("| {name} | {p50:.2} | {p99:.2} |");
        }
    });
}
