//! Private matching end to end: a benefits agency's Custos (local home or
//! its own server) matches its roll against a death registry served by a
//! second Custos. The matches are exactly the common SSNs; the messages
//! carry no identifier; count-only jobs reveal no token; every refusal
//! (no agreement at the peer, replayed job id, malformed, identity,
//! duplicate, too many or too few points, wrong token) is clear, ledgered,
//! and releases nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{Datelike, Months};
use custos_privacy::psi;
use serde_json::{Value, json};

use common::Server;

/// One side's copy of a matching agreement `id` on `dataset`, in force
/// now (17 months, within the Computer Matching Act's 18).
fn agreement(id: &str, dataset: &str, reveal: &str, peer: &str) -> String {
    let today = chrono::Utc::now().date_naive();
    let from = today.with_day(1).unwrap() - Months::new(1);
    let until = from + Months::new(17);
    format!(
        r#"
id = "{id}"
title = "Benefits roll against the death registry"
purpose = "Stop payments to deceased beneficiaries"
valid_from = {from}
valid_until = {until}

[parties]
custodian = "Vital Statistics"
requester = "SSA"

[legal_authority]
citation = "5 U.S.C. 552a(o)"

[[grants]]
dataset = "{dataset}"
mode = "match"
columns = ["ssn"]

[grants.match]
reveal = "{reveal}"
pad_to = 5000
peer = "{peer}"

[grants.limits]
requests_per_hour = 20
subjects_per_day = 100000
"#
    )
}

/// Two homes from the same synthetic people: the registry (deaths,
/// served) and the benefits agency (benefits, local).
struct Agencies {
    dir: tempfile::TempDir,
    /// The registry's admin.
    vs_admin: String,
    /// The token the registry issued to SSA's matching account.
    ssa_at_vs: String,
    /// The benefits agency's admin, analyst (requester) and approver.
    ssa_admin: String,
    rob: String,
    cora: String,
}

impl Agencies {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (vs, ssa) = (dir.path().join("vs"), dir.path().join("ssa"));
        common::custos(&vs, None)
            .args(["generate", "--rows", "3000", "--out"])
            .arg(&data)
            .assert()
            .success();
        for home in [&vs, &ssa] {
            common::custos(home, None).arg("init").assert().success();
        }
        let vs_admin = common::add_principal(&vs, None, "val", "Vital Statistics", "admin");
        let ssa_at_vs =
            common::add_principal(&vs, Some(&vs_admin), "ssa-match", "SSA", "requester");
        let ssa_admin = common::add_principal(&ssa, None, "sam", "SSA", "admin");
        let rob = common::add_principal(&ssa, Some(&ssa_admin), "rob", "SSA", "requester");
        let cora = common::add_principal(&ssa, Some(&ssa_admin), "cora", "SSA", "approver");
        for (home, admin, name) in [(&vs, &vs_admin, "deaths"), (&ssa, &ssa_admin, "benefits")] {
            common::custos(home, Some(admin))
                .args(["dataset", "ingest", "--name", name, "--schema"])
                .arg(data.join(format!("{name}.schema.toml")))
                .arg(data.join(format!("{name}.csv")))
                .assert()
                .success();
        }
        Self {
            dir,
            vs_admin,
            ssa_at_vs,
            ssa_admin,
            rob,
            cora,
        }
    }

    fn vs(&self) -> PathBuf {
        self.dir.path().join("vs")
    }

    fn ssa(&self) -> PathBuf {
        self.dir.path().join("ssa")
    }

    fn apply(&self, home: &Path, admin: &str, id: &str, dataset: &str, reveal: &str, peer: &str) {
        let file = self.dir.path().join(format!("{id}-{dataset}.toml"));
        std::fs::write(&file, agreement(id, dataset, reveal, peer)).unwrap();
        common::custos(home, Some(admin))
            .args(["agreement", "apply"])
            .arg(&file)
            .assert()
            .success();
    }

    /// The registry's copy of `id` (apply it before the registry serves:
    /// the server holds the home's ledger).
    fn agree_registry(&self, id: &str, reveal: &str) {
        let ssa_url = "https://ssa.example.gov";
        self.apply(&self.vs(), &self.vs_admin, id, "deaths", reveal, ssa_url);
    }

    /// The benefits agency's copy of `id`, naming `registry` as its peer.
    fn agree_requester(&self, id: &str, registry: &Server) {
        self.apply(
            &self.ssa(),
            &self.ssa_admin,
            id,
            "benefits",
            "matches",
            &registry.url,
        );
    }

    /// `custos match … --json` from the benefits agency's home (or its server).
    fn run_match(&self, id: &str, peer: &Server, via: Option<&Server>) -> std::process::Output {
        let mut cmd = common::custos(&self.ssa(), Some(&self.rob));
        cmd.env("CUSTOS_PEER_TOKEN", &self.ssa_at_vs);
        if let Some(server) = via {
            cmd.env("CUSTOS_SERVER", &server.url);
        }
        cmd.args([
            "match",
            "--agreement",
            id,
            "--peer",
            &peer.url,
            "--dataset",
            "benefits",
            "--key",
            "ssn",
            "--json",
        ])
        .output()
        .unwrap()
    }

    /// A column of a generated CSV.
    fn column(&self, file: &str, column: &str) -> Vec<String> {
        let mut reader = csv::Reader::from_path(self.dir.path().join("data").join(file)).unwrap();
        let at = reader
            .headers()
            .unwrap()
            .iter()
            .position(|h| h == column)
            .unwrap();
        reader
            .records()
            .map(|r| r.unwrap()[at].to_owned())
            .collect()
    }

    /// The SSNs on both lists (digits only).
    fn common_ssns(&self) -> BTreeSet<String> {
        let digits = |v: &String| psi::normalise_key(v).unwrap();
        let deaths: BTreeSet<String> = self
            .column("deaths.csv", "ssn")
            .iter()
            .map(digits)
            .collect();
        self.column("benefits.csv", "ssn")
            .iter()
            .map(digits)
            .filter(|s| deaths.contains(s))
            .collect()
    }
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The ledger of a home whose server may be running: its entries are
/// published within a second, so wait (up to 20 s) until `until` holds.
fn ledger_when(home: &Path, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let entries = common::ledger(home);
        if until(&entries) || std::time::Instant::now() > deadline {
            return entries;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Whether a ledger has an entry with this action and decision.
fn has(entries: &[Value], action: &str, decision: &str) -> bool {
    entries
        .iter()
        .any(|e| e["action"] == action && e["decision"] == decision)
}

fn actions(home: &Path) -> Vec<(String, String)> {
    common::ledger(home)
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn matches_are_the_common_keys_as_tokens_and_both_ledgers_record_the_job() {
    let a = Agencies::new();
    a.agree_registry("death-match", "matches");
    a.agree_registry("death-match-2", "matches");
    let registry = Server::start(&a.vs(), &[]);
    a.agree_requester("death-match", &registry);
    a.agree_requester("death-match-2", &registry);
    let expected = a.common_ssns();
    assert!(expected.len() > 5, "the synthetic lists overlap");
    let report = json_of(&a.run_match("death-match", &registry, None));
    assert_eq!(report["matches"], expected.len() as u64);
    assert_eq!(report["peer_count"], expected.len() as u64);
    assert_eq!(report["state"], "unverified");
    assert_eq!(report["reveal"], "matches");
    assert_eq!(report["points_sent"], 5000);
    assert_eq!(report["points_received"], 5000);
    let tokens: BTreeSet<String> = report["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tokens.len(), expected.len());
    assert!(
        tokens
            .iter()
            .all(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
    );
    // No identifier in what the requester got or either ledger.
    let names = a.column("deaths.csv", "name");
    let ssns = a.column("benefits.csv", "ssn");
    let vs_ledger = ledger_when(&a.vs(), |l| has(l, "match.finish", "allow"));
    let texts = [
        String::from_utf8_lossy(&a.run_match_show(&report)).into_owned(),
        serde_json::to_string(&common::ledger(&a.ssa())).unwrap(),
        serde_json::to_string(&vs_ledger).unwrap(),
    ];
    for text in &texts {
        for ssn in expected.iter().chain(ssns.iter()) {
            assert!(!text.contains(ssn.as_str()), "an SSN leaked");
        }
        for name in names.iter().take(200) {
            assert!(!text.contains(name.as_str()), "a name leaked");
        }
    }
    // Both ledgers: the requester's decision and result (with one
    // commitment per matched subject), the registry's open and finish.
    let ssa_ledger = common::ledger(&a.ssa());
    let result = ssa_ledger
        .iter()
        .find(|e| e["action"] == "match.result")
        .unwrap();
    assert_eq!(result["decision"], "allow");
    assert_eq!(result["subjects"].as_array().unwrap().len(), expected.len());
    assert!(actions(&a.ssa()).contains(&("match".into(), "allow".into())));
    assert!(has(&vs_ledger, "match.open", "allow"));
    let finish = vs_ledger
        .iter()
        .find(|e| e["action"] == "match.finish")
        .unwrap();
    // The count is the requester's answer, not the public ledger's.
    assert_eq!(finish["decision"], "allow");
    assert!(
        finish["counts"].as_array().is_none_or(Vec::is_empty),
        "{finish}"
    );
    // Unverified until someone else, with `approver`, confirms it.
    let job = report["job_id"].as_str().unwrap();
    let out = common::custos(&a.ssa(), Some(&a.rob))
        .args(["match", "confirm", job])
        .output()
        .unwrap();
    assert!(stderr(&out).contains("needs the `approver` role"));
    common::custos(&a.ssa(), Some(&a.cora))
        .args(["match", "confirm", job])
        .assert()
        .success();
    let out = common::custos(&a.ssa(), Some(&a.cora))
        .args(["match", "confirm", job])
        .output()
        .unwrap();
    assert!(stderr(&out).contains("confirmed already"));
    let shown = json_of(
        &common::custos(&a.ssa(), Some(&a.rob))
            .args(["match", "show", job, "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(shown["job"]["state"], "confirmed");
    assert!(has(&common::ledger(&a.ssa()), "match.read", "allow"));
    assert_eq!(shown["tokens"].as_array().unwrap().len(), expected.len());

    // Another agreement, the same people: unlinkable tokens, same count.
    let other = json_of(&a.run_match("death-match-2", &registry, None));
    assert_eq!(other["matches"], expected.len() as u64);
    let other_tokens: BTreeSet<String> = other["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    assert!(tokens.is_disjoint(&other_tokens));
    let (status, _) = registry.stop();
    assert!(status.success());
}

impl Agencies {
    fn run_match_show(&self, report: &Value) -> Vec<u8> {
        common::custos(&self.ssa(), Some(&self.rob))
            .args(["match", "show", report["job_id"].as_str().unwrap()])
            .output()
            .unwrap()
            .stdout
    }
}

#[test]
fn two_servers_count_only_and_refusals() {
    let a = Agencies::new();
    // The registry's copy reveals only the count: it wins over SSA's.
    a.agree_registry("count-only", "count");
    let registry = Server::start(&a.vs(), &[]);
    a.agree_requester("count-only", &registry);
    a.apply(
        &a.ssa(),
        &a.ssa_admin,
        "lonely",
        "benefits",
        "matches",
        &registry.url,
    );
    let expected = a.common_ssns().len() as u64;
    let ssa_server = Server::start(&a.ssa(), &[]);
    // Every command of the benefits agency now goes through its server.
    let rob = || {
        let mut cmd = common::custos(&a.ssa(), Some(&a.rob));
        cmd.env("CUSTOS_SERVER", &ssa_server.url);
        cmd
    };
    // Through the benefits agency's own server: two servers, two homes.
    let report = json_of(&a.run_match("count-only", &registry, Some(&ssa_server)));
    assert_eq!(report["reveal"], "count");
    assert_eq!(report["matches"], expected);
    assert_eq!(report["tokens"], json!([]));
    let job = report["job_id"].as_str().unwrap();
    let shown = json_of(
        &rob()
            .args(["match", "show", job, "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(shown["tokens"], json!([]));
    assert_eq!(shown["job"]["match_count"], expected);

    // A peer without the agreement refuses; both sides ledger it.
    let out = a.run_match("lonely", &registry, Some(&ssa_server));
    let message = stderr(&out);
    assert!(
        message.contains("the peer refused: no agreement `lonely` (deny by default)"),
        "{message}"
    );
    assert!(has(
        &ledger_when(&a.ssa(), |l| has(l, "match.result", "error")),
        "match.result",
        "error"
    ));
    assert!(has(
        &ledger_when(&a.vs(), |l| has(l, "match.open", "deny")),
        "match.open",
        "deny"
    ));

    // No peer token, a wrong one, a plain-http peer off this machine, and
    // a key that is not an identifier column.
    let refused = |peer_token: Option<&str>, peer: &str, key: &str| {
        let mut cmd = rob();
        if let Some(t) = peer_token {
            cmd.env("CUSTOS_PEER_TOKEN", t);
        }
        let args = [
            "match",
            "--agreement",
            "count-only",
            "--peer",
            peer,
            "--dataset",
            "benefits",
            "--key",
            key,
        ];
        stderr(&cmd.args(args).output().unwrap())
    };
    let cases = [
        (None, registry.url.as_str(), "ssn", "set CUSTOS_PEER_TOKEN"),
        (
            Some("custos_nobody_0000"),
            &registry.url,
            "ssn",
            "the peer refused",
        ),
        (
            Some(&a.ssa_at_vs),
            "http://registry.example.gov",
            "ssn",
            "use https://",
        ),
        (
            Some(&a.ssa_at_vs),
            &registry.url,
            "state",
            "`state` is not granted",
        ),
    ];
    for (token, peer, key, expected) in cases {
        let message = refused(token, peer, key);
        assert!(message.contains(expected), "{message}");
    }
    drop(ssa_server);
    drop(registry);
}

/// The raw protocol against the registry's server, as a (possibly
/// hostile) requester.
struct Raw {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    url: String,
    token: String,
}

impl Raw {
    /// Sends a request and returns the status and body.
    fn call(&self, request: reqwest::RequestBuilder) -> (u16, Vec<u8>) {
        self.rt.block_on(async {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        })
    }

    fn open(&self, job: &str, agreement: &str, points: u64) -> (u16, Value) {
        let (status, body) = self.call(
            self.client
                .post(format!("{}/v1/matches", self.url))
                .bearer_auth(&self.token)
                .json(&json!({ "job_id": job, "agreement": agreement, "reveal": "matches", "points": points })),
        );
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    fn send(&self, job: &str, step: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        self.call(
            self.client
                .post(format!("{}/v1/matches/{job}/{step}", self.url))
                .bearer_auth(&self.token)
                .header("content-type", "application/octet-stream")
                .body(body),
        )
    }
}

fn job_id(n: u8) -> String {
    format!("m_{}", format!("{n:02x}").repeat(16))
}

fn detail(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body).unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_answering_side_refuses_bad_points_and_replays_and_leaks_no_identifier() {
    let a = Agencies::new();
    a.agree_registry("raw", "matches");
    a.apply(
        &a.vs(),
        &a.vs_admin,
        "raw-count",
        "deaths",
        "count",
        "https://ssa.example.gov",
    );
    let registry = Server::start(&a.vs(), &[]);
    let raw = Raw {
        rt: tokio::runtime::Runtime::new().unwrap(),
        client: reqwest::Client::new(),
        url: registry.url.clone(),
        token: a.ssa_at_vs.clone(),
    };
    // Our own list: 20 SSNs from the registry, 80 that are not there.
    let deaths: Vec<String> = a
        .column("deaths.csv", "ssn")
        .iter()
        .map(|s| psi::normalise_key(s).unwrap())
        .collect();
    assert!(deaths.len() >= 20);
    let mut keys: Vec<String> = deaths.iter().take(20).cloned().collect();
    keys.extend((0..80).map(|i| format!("{:09}", 900_000_000 + i)));
    let honest = |job: &str, agreement: &str| {
        let (status, opened) = raw.open(job, agreement, 5000);
        assert_eq!(status, 200, "{opened}");
        assert_eq!(opened["points"], 5000);
        let me = psi::Party::new().unwrap();
        let blinded = me.blind(&psi::job_dst(job), &keys, 5000).unwrap();
        let (status, reply) = raw.send(job, "points", psi::encode_points(&blinded.points));
        assert_eq!(status, 200);
        // Exactly our points re-blinded and the registry's padded set.
        assert_eq!(reply.len(), (5000 + 5000) * 32);
        let all = psi::decode_points(&reply, 10_000).unwrap();
        let (ours, theirs) = all.split_at(5000);
        let theirs = me.reblind(theirs, 5000).unwrap();
        (opened, blinded, ours.to_vec(), theirs, reply)
    };
    // Matches mode: exactly our first 20 keys.
    let (_, blinded, ours, theirs, reply) = honest(&job_id(1), "raw");
    assert_eq!(
        psi::matches(&blinded, &ours, &theirs),
        (0..20).collect::<Vec<usize>>()
    );
    // The registry's message carries no identifier, in any spelling.
    let reply_text = String::from_utf8_lossy(&reply);
    for ssn in a.column("deaths.csv", "ssn") {
        assert!(!reply_text.contains(&ssn));
        assert!(!reply_text.contains(psi::normalise_key(&ssn).unwrap().as_str()));
    }
    let mut shuffled = theirs.clone();
    psi::shuffle(&mut shuffled).unwrap();
    let (status, body) = raw.send(&job_id(1), "finish", psi::encode_points(&shuffled));
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["matches"],
        20
    );
    // Count-only: the count is right, but the re-blinded points come back
    // shuffled, so our positions say nothing about who matched.
    let (opened, blinded, ours, theirs, _) = honest(&job_id(2), "raw-count");
    assert_eq!(opened["reveal"], "count");
    assert_eq!(psi::match_count(&ours, &theirs), 20);
    assert_ne!(
        psi::matches(&blinded, &ours, &theirs),
        (0..20).collect::<Vec<usize>>()
    );

    // A replayed job id.
    let (status, problem) = raw.open(&job_id(1), "raw", 5000);
    assert_eq!(status, 403);
    assert!(problem["detail"].as_str().unwrap().contains("replayed job"));
    // Bad point lists, each on a fresh job.
    let me = psi::Party::new().unwrap();
    let good = |job: &str| me.blind(&psi::job_dst(job), &keys, 5000).unwrap().points;
    type Spoil = fn(&mut Vec<[u8; 32]>);
    let cases: [(u8, Spoil, u16, &str); 5] = [
        (
            10,
            |p| p[7] = [0xff; 32],
            403,
            "not a valid Ristretto255 encoding",
        ),
        (11, |p| p[9] = [0; 32], 403, "is the identity element"),
        (12, |p| p[5] = p[4], 403, "repeats an earlier point"),
        (
            13,
            |p| p.push([1; 32]),
            403,
            "more than the 5000 points announced",
        ),
        (
            14,
            |p| {
                p.pop();
            },
            403,
            "4999 points arrived, 5000 were announced",
        ),
    ];
    for (n, spoil, status, message) in cases {
        let job = job_id(n);
        assert_eq!(raw.open(&job, "raw", 5000).0, 200);
        let mut points = good(&job);
        spoil(&mut points);
        let (got, body) = raw.send(&job, "points", psi::encode_points(&points));
        assert_eq!(got, status, "{}", String::from_utf8_lossy(&body));
        assert!(detail(&body).contains(message), "{}", detail(&body));
        // The job is over: nothing more comes out of it.
        let (got, body) = raw.send(&job, "points", psi::encode_points(&good(&job)));
        assert_eq!(got, 403);
        assert!(detail(&body).contains("no open match job"));
    }
    // More or fewer points than the agreed `pad_to` (a small job would let
    // a partner probe a few guessed keys at a time); a third unfinished job.
    for (n, points) in [(30, 5001), (33, 100)] {
        let (status, problem) = raw.open(&job_id(n), "raw", points);
        assert_eq!(status, 403);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("exactly 5000 points (the agreement's `pad_to`)"),
            "{problem}"
        );
    }
    assert_eq!(raw.open(&job_id(31), "raw", 5000).0, 200);
    let (status, problem) = raw.open(&job_id(32), "raw", 5000);
    assert_eq!(status, 403, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("unfinished match jobs")
    );
    // A bad content type, a wrong token, a malformed id.
    let (status, _) = raw.call(
        raw.client
            .post(format!("{}/v1/matches/{}/points", raw.url, job_id(1)))
            .bearer_auth(&raw.token)
            .body("hello"),
    );
    assert_eq!(status, 415);
    let (status, _) = raw.call(
        raw.client
            .post(format!("{}/v1/matches", raw.url))
            .bearer_auth("custos_nobody_00")
            .json(&json!({ "job_id": job_id(20), "agreement": "raw", "reveal": "matches", "points": 1 })),
    );
    assert_eq!(status, 401);
    let (status, problem) = raw.open("m_1", "raw", 5000);
    assert_eq!(status, 403);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("32 lowercase hex")
    );
    // Every refusal is in the registry's ledger.
    let denials = |l: &[Value]| {
        l.iter()
            .filter(|e| {
                e["action"].as_str().unwrap().starts_with("match") && e["decision"] == "deny"
            })
            .count()
    };
    let denied = denials(&ledger_when(&a.vs(), |l| denials(l) >= 12));
    assert!(denied >= 2 + 5 * 2, "{denied}");
    drop(registry);
}

/// A partner that wants more than the agreed result: unlimited jobs,
/// jobs against a server the agreement does not name, more keys a day
/// than agreed. Each is refused with the rule's name and ledgered.
#[test]
fn a_partner_cannot_enumerate_the_registry() {
    let a = Agencies::new();
    // Grants without a job rate or a daily cap are refused at apply.
    for (cut, rule) in [
        ("requests_per_hour = 20\n", "limits.requests_per_hour"),
        ("subjects_per_day = 100000\n", "limits.subjects_per_day"),
    ] {
        let file = a.dir.path().join("unlimited.toml");
        let text = agreement("unlimited", "deaths", "matches", "https://ssa.example.gov");
        std::fs::write(&file, text.replace(cut, "")).unwrap();
        let out = common::custos(&a.vs(), Some(&a.vs_admin))
            .args(["agreement", "apply"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(rule), "{err}");
    }
    a.agree_registry("elsewhere", "matches");
    // One job's worth of keys a day at the registry.
    let file = a.dir.path().join("daily.toml");
    let text = agreement("daily", "deaths", "matches", "https://ssa.example.gov");
    std::fs::write(
        &file,
        text.replace("subjects_per_day = 100000", "subjects_per_day = 5000"),
    )
    .unwrap();
    common::custos(&a.vs(), Some(&a.vs_admin))
        .args(["agreement", "apply"])
        .arg(&file)
        .assert()
        .success();
    let registry = Server::start(&a.vs(), &[]);
    // A job against a peer other than the one this side's copy names:
    // refused before any point leaves; the registry never hears of it.
    a.apply(
        &a.ssa(),
        &a.ssa_admin,
        "elsewhere",
        "benefits",
        "matches",
        "https://registry.example.gov",
    );
    let out = a.run_match("elsewhere", &registry, None);
    let err = stderr(&out);
    assert!(
        err.contains("names the peer `https://registry.example.gov`"),
        "{err}"
    );
    let refused = common::ledger(&a.ssa()).pop().unwrap();
    assert_eq!(
        (refused["action"].as_str(), refused["decision"].as_str()),
        (Some("match"), Some("deny"))
    );
    // The second job of the day is refused by the registry.
    a.agree_requester("daily", &registry);
    let first = a.run_match("daily", &registry, None);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = a.run_match("daily", &registry, None);
    let err = stderr(&second);
    assert!(err.contains("5000 keys matched per day"), "{err}");
    drop(registry);
    assert!(
        !common::ledger(&a.vs())
            .iter()
            .any(|e| e["agreement_id"] == "elsewhere" && e["action"] != "agreement.apply"),
        "the registry heard of a job against another peer"
    );
}

/// Either side's ledger cannot write: the requesting side sends no point
/// (the registry never hears of the job), and the answering side sends
/// none back; neither keeps a result.
#[test]
fn a_failed_ledger_append_lets_no_point_leave() {
    let a = Agencies::new();
    a.agree_registry("faulty", "matches");
    a.agree_registry("faulty-2", "matches");
    let registry = Server::start(&a.vs(), &[]);
    a.agree_requester("faulty", &registry);
    // The requesting side's first commit (its `match` entry) fails.
    let mut cmd = common::custos(&a.ssa(), Some(&a.rob));
    let out = cmd
        .env("CUSTOS_PEER_TOKEN", &a.ssa_at_vs)
        .env("CUSTOS_FAULT_LEDGER_COMMIT", "1")
        .args(["match", "--agreement", "faulty", "--peer", &registry.url])
        .args(["--dataset", "benefits", "--key", "ssn", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("ledger"), "{}", stderr(&out));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        !common::ledger(&a.vs())
            .iter()
            .any(|e| e["action"].as_str().is_some_and(|x| x.starts_with("match"))),
        "the registry heard of a job whose entry was never written"
    );
    assert!(!has(&common::ledger(&a.ssa()), "match", "allow"));
    drop(registry);
    // The answering side's first commit (its `match.open`) fails: it
    // sends no point, and the requesting side keeps no result.
    let registry = Server::start_with_env(&a.vs(), &[], &[("CUSTOS_FAULT_LEDGER_COMMIT", "1")]);
    a.agree_requester("faulty-2", &registry);
    let out = a.run_match("faulty-2", &registry, None);
    assert!(!out.status.success());
    let ssa = common::ledger(&a.ssa());
    assert!(!has(&ssa, "match.result", "allow"), "{ssa:?}");
    drop(registry);
    let vs = common::ledger(&a.vs());
    assert!(
        !vs.iter()
            .any(|e| e["action"] == "match.open" && e["decision"] == "allow"),
        "{vs:?}"
    );
}

/// The registry's copy is limited to recent deaths: older ones must not
/// match. A beneficiary the benefits agency protected must not match
/// either. (Row scope and protection, in the match mode.)
#[test]
fn the_row_scope_and_protection_hold_in_matches() {
    let a = Agencies::new();
    let ssns = a.column("deaths.csv", "ssn");
    let dates = a.column("deaths.csv", "death_date");
    let common = a.common_ssns();
    let digits = |v: &str| psi::normalise_key(v).unwrap();
    let mut matched_dates: Vec<&String> = ssns
        .iter()
        .zip(&dates)
        .filter(|(s, _)| common.contains(&digits(s)))
        .map(|(_, d)| d)
        .collect();
    matched_dates.sort();
    let cutoff = matched_dates[matched_dates.len() / 2].clone();
    let in_scope: BTreeSet<String> = ssns
        .iter()
        .zip(&dates)
        .filter(|(s, d)| common.contains(&digits(s)) && **d >= cutoff)
        .map(|(s, _)| digits(s))
        .collect();
    assert!(!in_scope.is_empty() && in_scope.len() < common.len());
    // Protect one in-scope beneficiary at the benefits agency.
    let benefits = a.column("benefits.csv", "ssn");
    let protected = benefits
        .iter()
        .find(|s| in_scope.contains(&digits(s)))
        .unwrap()
        .clone();
    common::custos(&a.ssa(), Some(&a.ssa_admin))
        .args(["subject", "protect", &protected])
        .assert()
        .success();
    let file = a.dir.path().join("scoped.toml");
    let text = agreement("scoped", "deaths", "matches", "https://ssa.example.gov").replace(
        "columns = [\"ssn\"]",
        &format!("columns = [\"ssn\", \"death_date\"]\nrow_scope = \"death_date >= '{cutoff}'\""),
    );
    std::fs::write(&file, text).unwrap();
    common::custos(&a.vs(), Some(&a.vs_admin))
        .args(["agreement", "apply"])
        .arg(&file)
        .assert()
        .success();
    let registry = Server::start(&a.vs(), &[]);
    a.agree_requester("scoped", &registry);
    let report = json_of(&a.run_match("scoped", &registry, None));
    assert_eq!(report["matches"], (in_scope.len() - 1) as u64, "{report}");
}
