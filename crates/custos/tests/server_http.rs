//! The real server (`custos serve` on a loopback port) driven through raw
//! HTTP: the flows, every bad input of the API with its status and
//! problem+json body, and a clean shutdown on SIGTERM that loses nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use common::Server;

/// A home with an admin, a requester, an approver, an overseer, the
/// synthetic tax returns and two agreements (aggregate and identified).
struct Home {
    dir: TempDir,
    admin: String,
    gina: String,
    tom: String,
    ann: String,
    olga: String,
    subject: String,
}

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        common::custos(&home, None).arg("init").assert().success();
        let admin = common::add_principal(&home, None, "alice", "IRS", "admin");
        let gina = common::add_principal(&home, Some(&admin), "gina", "GAO", "requester");
        let tom = common::add_principal(&home, Some(&admin), "tom", "TIGTA", "requester");
        let ann = common::add_principal(&home, Some(&admin), "ann", "IRS", "approver");
        let olga = common::add_principal(&home, Some(&admin), "olga", "IRS", "overseer");
        let data = dir.path().join("synthetic");
        common::ingest_synthetic(&home, &admin, &data, 600, &["tax_returns"]);
        let aggregate = common::aggregate_agreement("gao-stats", "1.0", "0.1");
        for (name, text) in [
            ("a.toml", aggregate.as_str()),
            ("i.toml", common::IDENTIFIED_AGREEMENT),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            common::custos(&home, Some(&admin))
                .args(["agreement", "apply"])
                .arg(&path)
                .assert()
                .success();
        }
        // A taxpayer with a return inside the row scope.
        let mut reader = csv::Reader::from_path(data.join("tax_returns.csv")).unwrap();
        let subject = reader
            .records()
            .map(Result::unwrap)
            .find(|r| r[12].parse::<i32>().unwrap() >= 2023)
            .unwrap()[0]
            .to_owned();
        Self {
            dir,
            admin,
            gina,
            tom,
            ann,
            olga,
            subject,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("home")
    }
}

struct Reply {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    body: Value,
}

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut request = client.request(method, url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.unwrap();
    reply(response).await
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let content_type = header("content-type").unwrap_or_default();
    let retry_after = header("retry-after");
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        content_type,
        retry_after,
        body,
    }
}

/// Asserts a problem+json reply of `status` and stable `kind`.
fn problem(reply: &Reply, status: u16, kind: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.content_type, "application/problem+json");
    assert_eq!(reply.body["type"], format!("urn:custos:problem:{kind}"));
    assert_eq!(reply.body["status"], status);
    assert!(reply.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_every_flow_and_stops_cleanly() {
    let home = Home::new();
    let server = Server::start(&home.path(), &[]);
    let client = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", server.url);
    use reqwest::Method;

    // Public: health, the API description, the ledger's checkpoint.
    let r = send(&client, Method::GET, url("/healthz"), None, None).await;
    assert_eq!(r.status, 200);
    let r = send(&client, Method::GET, url("/openapi.json"), None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(r.body["paths"]["/v1/queries"]["post"].is_object());
    let r = send(&client, Method::GET, url("/checkpoint"), None, None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.as_str().unwrap().contains('\u{2014}'),
        "a signed note"
    );

    // Datasets and agreements with a token.
    let r = send(
        &client,
        Method::GET,
        url("/v1/datasets"),
        Some(&home.gina),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body[0]["name"], "tax_returns");

    // An aggregate query.
    let r = send(
        &client,
        Method::POST,
        url("/v1/queries"),
        Some(&home.gina),
        Some(json!({
            "agreement": "gao-stats",
            "sql": "SELECT state, COUNT(*) FROM tax_returns GROUP BY state"
        })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["rows"].as_array().unwrap().len(), 51);
    assert!(r.body["budget_remaining"].as_f64().unwrap() < 1.0);

    // A look-up: request, approve (another person), fetch once.
    let r = send(
        &client,
        Method::POST,
        url("/v1/lookups"),
        Some(&home.tom),
        Some(json!({
            "agreement": "tigta-cases",
            "dataset": "tax_returns",
            "subject": home.subject,
            "justification": "Case 2026-114: refund deposited to a shared account"
        })),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert!(!r.body.to_string().contains(&home.subject));
    let r = send(
        &client,
        Method::POST,
        url(&format!("/v1/lookups/{id}/fetch")),
        Some(&home.tom),
        None,
    )
    .await;
    problem(&r, 403, "denied");
    let r = send(
        &client,
        Method::POST,
        url(&format!("/v1/lookups/{id}/approvals")),
        Some(&home.ann),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(
        &client,
        Method::POST,
        url(&format!("/v1/lookups/{id}/fetch")),
        Some(&home.tom),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body["rows"].as_array().unwrap().is_empty());

    // The subject's accounting, for an overseer; the subject goes in the body.
    let r = send(
        &client,
        Method::POST,
        url("/v1/reports/subject"),
        Some(&home.olga),
        Some(json!({ "subject": home.subject })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body["lines"].as_array().unwrap().is_empty());

    // The CLI as a client of the server: the same commands, same output.
    let cli = |token: &str, args: &[&str]| {
        common::custos(&home.path(), Some(token))
            .args(["--server", server.url.as_str()])
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(
        &home.gina,
        &[
            "query",
            "--agreement",
            "gao-stats",
            "--json",
            "SELECT COUNT(*) FROM tax_returns",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(answer["rows"][0][0]["value"].is_string());
    let out = cli(&home.olga, &["report", "agreement", "tigta-cases"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("disclosures        1"));
    let out = cli(
        &home.gina,
        &[
            "query",
            "--agreement",
            "tigta-cases",
            "SELECT COUNT(*) FROM tax_returns",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&home.gina, &["init"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("local home only"));

    let (status, log) = server.stop();
    assert!(status.success(), "{status}: {log}");
    // The access log names routes, never subjects or tokens.
    assert!(log.contains("route=/v1/lookups/{id}/fetch"), "{log}");
    for secret in [&home.subject, &home.tom, &home.gina, &home.admin] {
        assert!(!log.contains(secret.as_str()), "the log leaks a secret");
    }
    // Everything acknowledged is in a ledger that verifies.
    common::custos(&home.path(), None)
        .args(["ledger", "verify"])
        .assert()
        .success();
    let ledger = common::ledger(&home.path());
    let actions: Vec<&str> = ledger
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "query.aggregate",
        "lookup.request",
        "lookup.approve",
        "lookup.fetch",
        "report.subject",
    ] {
        assert!(actions.contains(&action), "{action} missing: {actions:?}");
    }
}

/// Runs `custos --server URL ARGS` as `token`'s holder: (success, stdout, stderr).
fn remote(
    home: &Home,
    server: &Server,
    token: Option<&str>,
    args: &[&str],
) -> (bool, String, String) {
    let out = common::custos(&home.path(), token)
        .args(["--server", server.url.as_str()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The same command on the local home (read-only ones: the server holds the ledger).
fn local(home: &Home, args: &[&str]) -> String {
    local_as(home, None, args)
}

/// A command on the local home as the principal of `token`.
fn local_as(home: &Home, token: Option<&str>, args: &[&str]) -> String {
    let out = common::custos(&home.path(), token)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_command_but_the_local_ones_works_through_the_server() {
    let home = Home::new();
    // Datasets: the same answers as on the home for an overseer (asked
    // locally first: the server will hold the ledger, and listing acts as
    // a principal like every other command); a requester gets the schema
    // without the dataset's exact size.
    let dataset_commands = [
        &["dataset", "list"][..],
        &["dataset", "describe", "tax_returns", "--json"],
    ];
    let local_answers: Vec<String> = dataset_commands
        .iter()
        .map(|args| local_as(&home, Some(&home.olga), args))
        .collect();
    let server = Server::start(&home.path(), &[]);
    for (args, local) in dataset_commands.iter().zip(&local_answers) {
        let (ok, out, err) = remote(&home, &server, Some(&home.olga), args);
        assert!(ok, "{err}");
        assert_eq!(&out, local, "{args:?}");
    }
    let (ok, out, err) = remote(
        &home,
        &server,
        Some(&home.gina),
        &["dataset", "describe", "tax_returns", "--json"],
    );
    assert!(ok, "{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (d["rows"].as_u64(), d["sizes_withheld"].as_bool()),
        (Some(0), Some(true))
    );
    assert!(d["schema"]["columns"].is_array());
    let (ok, _, err) = remote(&home, &server, None, &["dataset", "list"]);
    assert!(!ok && err.contains("token"), "{err}");
    let (ok, _, err) = remote(
        &home,
        &server,
        Some(&home.admin),
        &[
            "dataset", "ingest", "--schema", "s.toml", "--name", "x", "x.csv",
        ],
    );
    assert!(!ok && err.contains("custodian's machine"), "{err}");

    // Agreements: list, show, apply (admin only), suspend and resume.
    let (ok, out, err) = remote(
        &home,
        &server,
        Some(&home.olga),
        &["agreement", "list", "--json"],
    );
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (ok, out, err) = remote(
        &home,
        &server,
        Some(&home.olga),
        &["agreement", "show", "tigta-cases"],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("version 1 of 1 (active)") && out.contains("title = \"TIGTA case look-ups\""),
        "{out}"
    );
    let text = common::aggregate_agreement("gao-extra", "0.5", "0.1");
    let file = home.dir.path().join("extra.toml");
    std::fs::write(&file, text).unwrap();
    let file = file.to_str().unwrap();
    let (ok, _, err) = remote(
        &home,
        &server,
        Some(&home.gina),
        &["agreement", "apply", file],
    );
    assert!(!ok && err.contains("only an admin"), "{err}");
    let (ok, out, err) = remote(
        &home,
        &server,
        Some(&home.admin),
        &["agreement", "apply", file],
    );
    assert!(ok, "{err}");
    assert!(
        out.starts_with("Applied agreement `gao-extra` version 1 (1 grants"),
        "{out}"
    );
    let (ok, _, err) = remote(
        &home,
        &server,
        Some(&home.admin),
        &["agreement", "suspend", "gao-stats", "--reason", "audit"],
    );
    assert!(ok, "{err}");
    let query = [
        "query",
        "--agreement",
        "gao-stats",
        "SELECT COUNT(*) FROM tax_returns",
    ];
    let (ok, _, err) = remote(&home, &server, Some(&home.gina), &query);
    assert!(!ok && err.contains("suspended"), "{err}");
    let (ok, _, err) = remote(
        &home,
        &server,
        Some(&home.admin),
        &["agreement", "resume", "gao-stats"],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = remote(&home, &server, Some(&home.gina), &query);
    assert!(ok, "{err}");

    // Principals: add (the token is printed once), use, list, revoke.
    let (ok, _, err) = remote(
        &home,
        &server,
        Some(&home.gina),
        &[
            "principal",
            "add",
            "zed",
            "--org",
            "GAO",
            "--role",
            "requester",
        ],
    );
    assert!(!ok && err.contains("only an admin"), "{err}");
    let (ok, out, err) = remote(
        &home,
        &server,
        Some(&home.admin),
        &[
            "principal",
            "add",
            "zed",
            "--org",
            "GAO",
            "--role",
            "requester",
        ],
    );
    assert!(ok, "{err}");
    let zed = out.trim().to_owned();
    assert!(err.contains("Created principal `zed`"), "{err}");
    let (ok, _, err) = remote(&home, &server, Some(&zed), &["dataset", "list"]);
    assert!(ok, "{err}");
    let (ok, out, err) = remote(
        &home,
        &server,
        Some(&home.olga),
        &["principal", "list", "--json"],
    );
    assert!(ok, "{err}");
    assert!(!out.contains(&zed), "a token is listed");
    let names: Vec<String> = serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"zed".to_owned()), "{names:?}");
    let (ok, _, err) = remote(
        &home,
        &server,
        Some(&home.admin),
        &["principal", "revoke", "zed"],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = remote(&home, &server, Some(&zed), &["dataset", "list"]);
    assert!(!ok && err.contains("revoked"), "{err}");

    // The ledger, read by an auditor through the public tile paths with the
    // custodian's verifier key: no token, the same entries and proofs.
    let key = local(&home, &["ledger", "public-key"]).trim().to_owned();
    // The server publishes a checkpoint at most a second after an entry.
    let published_size = || {
        serde_json::from_str::<Value>(&local(&home, &["ledger", "verify", "--json"])).unwrap()
            ["size"]
            .as_u64()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while published_size() < 18 {
        assert!(
            Instant::now() < deadline,
            "no checkpoint published: {} {}",
            published_size(),
            local(&home, &["ledger", "show"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out, err) = remote(
        &home,
        &server,
        None,
        &["ledger", "verify", "--key", &key, "--json"],
    );
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let size = report["size"].as_u64().unwrap();
    assert_eq!(size, published_size(), "{report}");
    let published: Value =
        serde_json::from_str(&local(&home, &["ledger", "verify", "--json"])).unwrap();
    assert_eq!(report["root"], published["root"]);
    let (ok, out, err) = remote(
        &home,
        &server,
        None,
        &["ledger", "show", "--from", "3", "--key", &key, "--json"],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        local(&home, &["ledger", "show", "--from", "3", "--json"])
    );
    let size_text = size.to_string();
    let prove = [
        "ledger", "prove", "--index", "7", "--size", &size_text, "--json",
    ];
    let (ok, out, err) = remote(
        &home,
        &server,
        None,
        &[&prove[..], &["--key", &key]].concat(),
    );
    assert!(ok, "{err}");
    assert_eq!(out, local(&home, &prove));
    let (ok, out, err) = remote(
        &home,
        &server,
        None,
        &["ledger", "consistency", "--old", "5", "--key", &key],
    );
    assert!(ok, "{err}");
    assert!(out.contains("is a prefix of the ledger"), "{out}");
    let (ok, out, err) = remote(&home, &server, None, &["ledger", "checkpoint"]);
    assert!(ok, "{err}");
    assert!(out.contains('\u{2014}'), "a signed note: {out}");
    // Without the key, with a wrong key, or asking the server for its key: refused.
    let (ok, _, err) = remote(&home, &server, None, &["ledger", "verify"]);
    assert!(!ok && err.contains("--key"), "{err}");
    let other = tempfile::tempdir().unwrap();
    common::custos(other.path(), None)
        .arg("init")
        .assert()
        .success();
    let wrong = common::custos(other.path(), None)
        .args(["ledger", "public-key"])
        .output()
        .unwrap();
    let wrong = String::from_utf8_lossy(&wrong.stdout).trim().to_owned();
    let (ok, _, err) = remote(&home, &server, None, &["ledger", "verify", "--key", &wrong]);
    assert!(
        !ok && err.contains("does not verify with the key given"),
        "{err}"
    );
    let (ok, _, err) = remote(&home, &server, None, &["ledger", "public-key"]);
    assert!(!ok && err.contains("from the custodian"), "{err}");

    // A published entry changed on the server's disk: the auditor's copy fails.
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    let server = Server::start(&home.path(), &[]);
    let size = published_size();
    let first_bundle = if size >= 256 {
        "tile/entries/000".to_owned()
    } else {
        format!("tile/entries/000.p/{size}")
    };
    let bundle = home.path().join("ledger").join(first_bundle);
    let mut bytes = std::fs::read(&bundle).unwrap_or_else(|e| panic!("{}: {e}", bundle.display()));
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&bundle, bytes).unwrap();
    let (ok, _, err) = remote(&home, &server, None, &["ledger", "verify", "--key", &key]);
    assert!(!ok, "a changed entry was not noticed");
    assert!(err.contains("entry") || err.contains("hash"), "{err}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_under_load_loses_no_acknowledged_request() {
    if !common::slow_tests("a_server_killed_under_load_loses_no_acknowledged_request") {
        return;
    }
    let home = Home::new();
    // The same grant without the test agreement's hourly request limit.
    let file = home.dir.path().join("crash.toml");
    let text = common::IDENTIFIED_AGREEMENT
        .replace("tigta-cases", "crash-cases")
        .replace("requests_per_hour = 60", "requests_per_hour = 1000000");
    std::fs::write(&file, text).unwrap();
    common::custos(&home.path(), Some(&home.admin))
        .args(["agreement", "apply"])
        .arg(&file)
        .assert()
        .success();
    let mut server = Server::start(&home.path(), &["--rate", "100000", "--burst", "100000"]);
    let body = json!({
        "agreement": "crash-cases",
        "dataset": "tax_returns",
        "subject": home.subject,
        "justification": "Case 2026-115: crash test of acknowledged requests"
    });
    // Eight clients file look-up requests as fast as the server answers.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (url, token, body) = (server.url.clone(), home.tom.clone(), body.clone());
        let acknowledged = acknowledged.clone();
        clients.spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let sent = client
                    .post(format!("{url}/v1/lookups"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await;
                let Ok(response) = sent else { break };
                if response.status() != 201 {
                    continue;
                }
                let Ok(ticket) = response.json::<Value>().await else {
                    break;
                };
                acknowledged.lock().unwrap().push((
                    ticket["id"].as_str().unwrap().to_owned(),
                    ticket["ledger_index"].as_u64().unwrap(),
                ));
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "too few requests answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // kill -9 in the middle of the load: no drain, no final checkpoint.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    while clients.join_next().await.is_some() {}
    let acknowledged = acknowledged.lock().unwrap().clone();
    drop(server);

    // The next start recovers the ledger from its journal; stop it cleanly.
    let server = Server::start(&home.path(), &[]);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    common::custos(&home.path(), None)
        .args(["ledger", "verify"])
        .assert()
        .success();
    let ledger = common::ledger(&home.path());
    for (id, index) in &acknowledged {
        let entry = &ledger[usize::try_from(*index).unwrap()];
        assert_eq!(entry["action"], "lookup.request", "entry {index}");
        assert_eq!(entry["request_id"], id.as_str(), "entry {index}");
    }
    // And the catalogue kept every acknowledged request.
    for (id, _) in acknowledged.iter().step_by(10) {
        common::custos(&home.path(), Some(&home.tom))
            .args(["lookup", "show", id])
            .assert()
            .success();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_problem_and_break_nothing() {
    let home = Home::new();
    let server = Server::start(
        &home.path(),
        &["--body-limit", "1024", "--rate", "1", "--burst", "20"],
    );
    // A fresh connection per request: the server closes idle keep-alive
    // connections (its header-read timeout), and a pooled one reused at
    // that moment fails as an incomplete message, which is not under test.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = |p: &str| format!("{}{p}", server.url);
    use reqwest::Method;

    // Tokens: none, malformed, unknown, wrong role, revoked.
    let r = send(&client, Method::GET, url("/v1/datasets"), None, None).await;
    problem(&r, 401, "unauthorized");
    let r = send(
        &client,
        Method::GET,
        url("/v1/datasets"),
        Some("not a token"),
        None,
    )
    .await;
    problem(&r, 401, "unauthorized");
    let forged = format!("{}x", &home.olga[..home.olga.len() - 1]);
    let r = send(
        &client,
        Method::GET,
        url("/v1/datasets"),
        Some(&forged),
        None,
    )
    .await;
    problem(&r, 401, "unauthorized");
    let r = send(
        &client,
        Method::POST,
        url("/v1/principals"),
        Some(&home.gina),
        Some(json!({ "name": "mallory", "org": "GAO", "roles": ["admin"] })),
    )
    .await;
    problem(&r, 403, "denied");

    // Bodies: malformed JSON, wrong shape, wrong content type, too large.
    let raw = |body: &'static str, content_type: &'static str| {
        client
            .post(url("/v1/queries"))
            .bearer_auth(&home.gina)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (body, content_type, status, kind) in [
        ("{\"agreement\":", "application/json", 400, "malformed-body"),
        (
            "{\"agreement\":\"gao-stats\",\"sql\":1}",
            "application/json",
            400,
            "malformed-body",
        ),
        (
            "{\"agreement\":\"gao-stats\",\"sql\":\"x\",\"extra\":1}",
            "application/json",
            400,
            "malformed-body",
        ),
        (
            "agreement=gao-stats",
            "application/x-www-form-urlencoded",
            415,
            "unsupported-media-type",
        ),
    ] {
        let r = reply(raw(body, content_type).await.unwrap()).await;
        problem(&r, status, kind);
    }
    let big = json!({ "agreement": "gao-stats", "sql": "x".repeat(4096) });
    let r = send(
        &client,
        Method::POST,
        url("/v1/queries"),
        Some(&home.gina),
        Some(big),
    )
    .await;
    problem(&r, 413, "body-too-large");

    // Routes and methods.
    let r = send(
        &client,
        Method::GET,
        url("/v2/anything"),
        Some(&home.gina),
        None,
    )
    .await;
    problem(&r, 404, "not-found");
    let r = send(
        &client,
        Method::DELETE,
        url("/v1/queries"),
        Some(&home.gina),
        None,
    )
    .await;
    problem(&r, 405, "method-not-allowed");

    // Tiles: traversal and malformed paths never read outside the ledger.
    for path in [
        "/tile/../../master.key",
        "/tile/..%2F..%2Fmaster.key",
        "/tile/0/..%2F..%2F..%2Fmaster.key",
        "/tile/entries/000.p/0",
        "/tile/64/000",
        "/tile/0/x001/..",
    ] {
        let r = send(&client, Method::GET, url(path), None, None).await;
        assert!(
            r.status == 404 || r.status == 400,
            "{path}: {} {}",
            r.status,
            r.body
        );
        assert!(!r.body.to_string().contains("BEGIN"), "{path}");
    }
    let r = send(
        &client,
        Method::GET,
        url("/tile/entries/000.p/1"),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "the first entry bundle is public");

    // A slow client (slowloris): its half-sent headers time out, and others
    // are served meanwhile.
    let addr = server.addr();
    let slow = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        // The server closes the connection (with or without a 408).
        let _ = stream.read_to_end(&mut buf);
        started.elapsed()
    });
    let r = send(&client, Method::GET, url("/healthz"), None, None).await;
    assert_eq!(r.status, 200);
    let waited = slow.join().unwrap();
    assert!(
        waited < Duration::from_secs(25),
        "slow client held on {waited:?}"
    );

    // A burst over the rate limit (20 at once, then 1/s).
    let mut limited = None;
    for _ in 0..40 {
        let r = send(
            &client,
            Method::GET,
            url("/v1/datasets"),
            Some(&home.olga),
            None,
        )
        .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200);
    }
    let r = limited.expect("the burst was never limited");
    problem(&r, 429, "rate-limited");
    assert!(r.retry_after.is_some());
    // Another token is not affected.
    let r = send(
        &client,
        Method::GET,
        url("/v1/datasets"),
        Some(&home.ann),
        None,
    )
    .await;
    assert_eq!(r.status, 200);

    // A revoked token stops working at once.
    let r = send(
        &client,
        Method::POST,
        url("/v1/principals/gina/revoke"),
        Some(&home.admin),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(
        &client,
        Method::GET,
        url("/v1/datasets"),
        Some(&home.gina),
        None,
    )
    .await;
    problem(&r, 401, "unauthorized");

    // A flood of bad tokens from one address: after a burst the address is
    // refused before the broker is asked, so the ledger does not grow.
    let (mut ledgered, mut refused) = (0, 0);
    for _ in 0..40 {
        let r = send(
            &client,
            Method::GET,
            url("/v1/datasets"),
            Some(&forged),
            None,
        )
        .await;
        match r.status {
            401 => ledgered += 1,
            429 => {
                problem(&r, 429, "rate-limited");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        refused > 0 && ledgered >= 15,
        "{ledgered} ledgered, {refused} refused"
    );

    // Still healthy; stops cleanly; nothing leaked to the log.
    let r = send(&client, Method::GET, url("/healthz"), None, None).await;
    assert_eq!(r.status, 200);
    let (status, log) = server.stop();
    assert!(status.success(), "{status}: {log}");
    assert!(!log.contains(&home.subject));
    assert!(!log.contains(&home.admin) && !log.contains(&forged));
    common::custos(&home.path(), None)
        .args(["ledger", "verify"])
        .assert()
        .success();
    // Every 401 is a ledgered denial (3 before the flood), no 429 is.
    let denials = common::ledger(&home.path())
        .iter()
        .filter(|e| e["action"] == "auth.token")
        .count();
    assert_eq!(denials, 3 + ledgered);
}

#[test]
fn a_non_loopback_address_needs_tls() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    common::custos(&home, None).arg("init").assert().success();
    common::custos(&home, None)
        .args(["serve", "--listen", "0.0.0.0:0"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("without TLS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    common::custos(&home, None).arg("init").assert().success();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    // A test CA and a certificate for 127.0.0.1 signed by it (openssl is on
    // every machine that builds Custos).
    let ca = dir.path().join("ca.pem");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=custos-test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.path().join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        "cert.pem",
        "-extfile",
        "leaf.ext",
    ]);
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("custos"))
        .env("CUSTOS_HOME", &home)
        .env_remove("CUSTOS_MASTER_KEY")
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().to_owned();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let r = client.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{url}/v1/datasets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Plain HTTP to the TLS port gets no answer.
    let plain = url.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err());
    // A client that does not trust the certificate is refused.
    assert!(reqwest::get(format!("{url}/healthz")).await.is_err());
    let _ = child.kill();
    let _ = child.wait();
}
