//! The attacks: each test is what an adversary or a careless insider
//! would try against a privacy promise, from where they would try it (the
//! CLI, the HTTP API, the public ledger), named after what it tries.
//! docs/threats.md lists them under "Attacks tried".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tempfile::TempDir;

use common::{Server, custos};

/// Tax returns: a text TIN, a name, a public state, a birth year
/// (quasi-identifier) and a bounded refund.
const SCHEMA: &str = r#"
[[columns]]
name = "tin"
class = "subject_id"
type = "string"
[[columns]]
name = "name"
class = "identifier"
type = "string"
[[columns]]
name = "state"
class = "public"
type = "enum"
values = ["CA", "TX"]
[[columns]]
name = "birth_year"
class = "quasi"
type = "integer"
bounds = [1900, 2030]
[[columns]]
name = "refund"
class = "attribute"
type = "decimal"
bounds = [0, 1000]
"#;

/// One CSV row of the fixture.
struct Row<'a> {
    tin: &'a str,
    state: &'a str,
    birth_year: u32,
    refund: u32,
}

fn csv(rows: &[Row<'_>]) -> String {
    let mut text = String::from("tin,name,state,birth_year,refund\n");
    for r in rows {
        text.push_str(&format!(
            "{},Person {},{},{},{}.00\n",
            r.tin,
            r.tin.replace('-', ""),
            r.state,
            r.birth_year,
            r.refund
        ));
    }
    text
}

/// An agreement between the IRS (custodian) and `requester` with one grant.
fn agreement(id: &str, requester: &str, grant: &str) -> String {
    format!(
        r#"
id = "{id}"
title = "Attack fixture"
purpose = "Try to break a promise"
valid_from = 2026-01-01
valid_until = 2099-12-31

[parties]
custodian = "IRS"
requester = "{requester}"

[legal_authority]
citation = "Test"

[[grants]]
dataset = "returns"
{grant}
"#
    )
}

/// An aggregate grant, pure DP, `contributions = 3`, a budget that never
/// runs out; `per_query` decides the noise.
fn aggregate_grant(per_query: &str, extra: &str) -> String {
    format!(
        r#"mode = "aggregate"
columns = ["state", "birth_year", "refund"]
{extra}
[grants.privacy]
measure = "pure"
budget = 1000000000.0
per_query = {per_query}
contributions = 3
"#
    )
}

/// A pseudonymous grant on `columns` (a TOML list) with `k` and a cap
/// of `per_hour` extracts per hour.
fn pseudonymous_grant(columns: &str, k: u32, per_hour: u32) -> String {
    format!(
        "mode = \"pseudonymous\"\ncolumns = {columns}\n[grants.limits]\nrequests_per_hour = {per_hour}\n[grants.pseudonymous]\nk = {k}\nmax_rows = 1000000\n"
    )
}

/// A home with an IRS admin and a GAO requester, and `rows` as `returns`.
struct Fixture {
    dir: TempDir,
    admin: String,
    gao: String,
}

impl Fixture {
    fn new(rows: &[Row<'_>]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        custos(&home, None).arg("init").assert().success();
        let admin = common::add_principal(&home, None, "alice", "IRS", "admin");
        let gao = common::add_principal(&home, Some(&admin), "gina", "GAO", "requester");
        let f = Self { dir, admin, gao };
        f.ingest("returns", rows);
        f
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn ingest(&self, name: &str, rows: &[Row<'_>]) {
        let schema = self.dir.path().join("schema.toml");
        let data = self.dir.path().join(format!("{name}.csv"));
        std::fs::write(&schema, SCHEMA).unwrap();
        std::fs::write(&data, csv(rows)).unwrap();
        custos(&self.home(), Some(&self.admin))
            .args(["dataset", "ingest", "--name", name, "--schema"])
            .arg(&schema)
            .arg(&data)
            .assert()
            .success();
    }

    fn apply(&self, text: &str) {
        let file = self.dir.path().join("agreement.toml");
        std::fs::write(&file, text).unwrap();
        custos(&self.home(), Some(&self.admin))
            .args(["agreement", "apply"])
            .arg(&file)
            .assert()
            .success();
    }

    fn principal(&self, name: &str, org: &str, roles: &str) -> String {
        common::add_principal(&self.home(), Some(&self.admin), name, org, roles)
    }

    /// `custos extract --json` under agreement `study` on `returns`, as
    /// the GAO requester.
    fn extract(&self, out: &Path, filter: Option<&str>) -> std::process::Output {
        let mut cmd = custos(&self.home(), Some(&self.gao));
        cmd.args([
            "extract",
            "--json",
            "--agreement",
            "study",
            "--dataset",
            "returns",
        ]);
        if let Some(f) = filter {
            cmd.args(["--where", f]);
        }
        cmd.arg("--out").arg(out).output().unwrap()
    }

    /// A successful [`Fixture::extract`] of everything to `name`: the
    /// report and the file's rows (cells split on commas; no cell here
    /// holds one).
    fn extract_rows(&self, name: &str) -> (Value, Vec<Vec<String>>) {
        let out = self.dir.path().join(name);
        let run = self.extract(&out, None);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let text = std::fs::read_to_string(&out).unwrap();
        let rows = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(str::to_owned).collect())
            .collect();
        (serde_json::from_slice(&run.stdout).unwrap(), rows)
    }

    /// `custos query --json` as the GAO requester.
    fn query(&self, agreement: &str, sql: &str) -> Value {
        let out = custos(&self.home(), Some(&self.gao))
            .args(["query", "--json", "--agreement", agreement, sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// `n` people with `per_person` returns each, half in CA, born 1950 + i % 40.
fn population(tins: &[String], per_person: usize) -> Vec<Row<'_>> {
    let mut rows = Vec::new();
    for (i, tin) in tins.iter().enumerate() {
        for r in 0..per_person {
            rows.push(Row {
                tin,
                state: if i % 2 == 0 { "CA" } else { "TX" },
                birth_year: 1950 + (i % 40) as u32,
                refund: ((i * 37 + r * 11) % 900) as u32,
            });
        }
    }
    rows
}

fn tins(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("900-{:02}-{:04}", i % 100, i))
        .collect()
}

/// The first cell's noisy value of the first row, as a number.
fn first_value(answer: &Value) -> f64 {
    answer["rows"][0][0]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------
// 1. Exact counts beside the noisy answer.
// ---------------------------------------------------------------------

/// A `WHERE` on granted columns used to come back with "N rows read, M
/// left out by the bound": an exact counting oracle beside the noise.
#[test]
fn a_where_clause_gets_no_exact_row_count_back() {
    let tins = tins(40);
    let f = Fixture::new(&population(&tins, 2));
    f.apply(&agreement("stats", "GAO", &aggregate_grant("1.0", "")));
    let sql = "SELECT COUNT(*) FROM returns WHERE birth_year = 1951";
    let answer = f.query("stats", sql);
    let keys: BTreeSet<&str> = answer
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let allowed: BTreeSet<&str> = [
        "id",
        "agreement",
        "agreement_version",
        "dataset",
        "columns",
        "rows",
        "measure",
        "spent",
        "scales",
        // The analyst's clamp, the schema's bounds or bounds chosen by a
        // charged DP estimate: never an exact statistic.
        "bounds",
        "charged",
        "budget",
        "budget_spent",
        "budget_remaining",
        "ledger_index",
    ]
    .into();
    assert_eq!(keys, allowed, "an answer field is neither noisy nor public");
    let text = custos(&f.home(), Some(&f.gao))
        .args(["query", "--agreement", "stats", sql])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        !text.contains("rows read") && !text.contains("left out"),
        "{text}"
    );
}

/// Replaces the noisy parts of an answer (values, intervals) and what is
/// fresh per query (id, ledger index) so that two answers can be compared
/// for everything else.
fn public_part(answer: &Value) -> Value {
    let mut a = answer.clone();
    let o = a.as_object_mut().unwrap();
    o.remove("id");
    o.remove("ledger_index");
    for row in o["rows"].as_array_mut().unwrap() {
        for cell in row.as_array_mut().unwrap() {
            for k in ["value", "low", "high"] {
                if cell.get(k).is_some_and(|v| !v.is_null()) {
                    cell[k] = json!("noisy");
                }
            }
        }
    }
    a
}

async fn post_query(client: &reqwest::Client, server: &str, token: &str, sql: &str) -> Value {
    let r = client
        .post(format!("{server}/v1/queries"))
        .bearer_auth(token)
        .json(&json!({ "agreement": "stats", "sql": sql }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The differencing attack in its purest form: the same query, many
/// times, on two datasets that differ by one person with five returns
/// (the bound counts three). Nothing but the noisy values may differ, and
/// their distributions must be within e^ε of each other on every event.
///
/// Pure ε = 1, `COUNT(*)`, k = 3: the count moves by 3 with the bound, so
/// the true ratio of any event's probability is at most e^1 ≈ 2.72; an
/// unbounded person (5 rows) would make it e^(5/3) ≈ 5.29. Over events of
/// probability ≥ 0.1 in both, 1,500 draws a side estimate a ratio within
/// about ±14% (one standard error ≈ 4.5%), so the test allows e^1.4 ≈ 4.06.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbouring_datasets_change_nothing_but_noisy_values() {
    if !common::slow_tests("neighbouring_datasets_change_nothing_but_noisy_values") {
        return;
    }
    const DRAWS: usize = 1500;
    let tins = tins(60);
    let mut with = population(&tins, 3);
    for extra in 0..2 {
        with.push(Row {
            tin: &tins[0],
            state: "CA",
            birth_year: 1950,
            refund: 100 + extra,
        });
    }
    let without: Vec<Row<'_>> = population(&tins, 3)
        .into_iter()
        .filter(|r| r.tin != tins[0].as_str())
        .collect();
    let homes = [Fixture::new(&with), Fixture::new(&without)];
    for f in &homes {
        f.apply(&agreement("stats", "GAO", &aggregate_grant("1.0", "")));
    }
    let sql = "SELECT COUNT(*) FROM returns WHERE state = 'CA'";
    let client = reqwest::Client::new();
    let mut draws: Vec<Vec<f64>> = Vec::new();
    let mut publics: Vec<Vec<Value>> = Vec::new();
    for f in &homes {
        // 3,000 queries back to back: on a fast machine they outrun the
        // default per-token rate (100/s), which is not what this test is
        // about (CI failed here with 429).
        let server = Server::start(&f.home(), &["--rate", "100000", "--burst", "100000"]);
        let (mut values, mut public) = (Vec::new(), Vec::new());
        for _ in 0..DRAWS {
            let a = post_query(&client, &server.url, &f.gao, sql).await;
            values.push(first_value(&a));
            public.push(public_part(&a));
        }
        draws.push(values);
        publics.push(public);
    }
    assert_eq!(
        publics[0], publics[1],
        "something besides the noisy values depends on the person"
    );
    let bound = 1.4_f64.exp();
    let lo = draws.iter().flatten().copied().fold(f64::MAX, f64::min) as i64;
    let hi = draws.iter().flatten().copied().fold(f64::MIN, f64::max) as i64;
    let mut checked = 0;
    for t in lo..=hi {
        let share = |d: &Vec<f64>, upper: bool| {
            d.iter().filter(|v| (**v >= t as f64) == upper).count() as f64 / DRAWS as f64
        };
        for upper in [true, false] {
            let (a, b) = (share(&draws[0], upper), share(&draws[1], upper));
            if a.min(b) < 0.1 {
                continue;
            }
            checked += 1;
            assert!(
                a / b <= bound && b / a <= bound,
                "P[X {} {t}] = {a} vs {b}: further apart than e^ε allows",
                if upper { "≥" } else { "<" }
            );
        }
    }
    assert!(checked > 10, "too few events to compare: {checked}");
}

// ---------------------------------------------------------------------
// 2. k-anonymity of people, not rows.
// ---------------------------------------------------------------------

/// Two people with three returns each share a birth year: six rows, but
/// two people. With k = 5, counting rows released them "5-anonymous".
#[test]
fn three_returns_per_person_do_not_make_a_class_of_k() {
    let many = tins(20);
    let mut rows = Vec::new();
    // 20 people born in 1960 (a class of 20 people, 60 rows)...
    for tin in &many {
        for r in 0..3 {
            rows.push(Row {
                tin,
                state: "CA",
                birth_year: 1960,
                refund: r * 10,
            });
        }
    }
    // ... and two people born in 1999, three returns each (6 rows, 2 people).
    let pair = ["111-11-1111".to_owned(), "222-22-2222".to_owned()];
    for tin in &pair {
        for r in 0..3 {
            rows.push(Row {
                tin,
                state: "TX",
                birth_year: 1999,
                refund: r * 10,
            });
        }
    }
    let f = Fixture::new(&rows);
    f.apply(&agreement(
        "study",
        "GAO",
        &pseudonymous_grant(r#"["tin", "state", "birth_year"]"#, 5, 50),
    ));
    let (report, rows) = f.extract_rows("extract.csv");
    let mut people: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for cells in &rows {
        people
            .entry(cells[2].clone())
            .or_default()
            .insert(cells[0].clone());
    }
    assert!(
        !people.contains_key("1999"),
        "a class of two people was released: {people:?}"
    );
    assert!(people.values().all(|p| p.len() >= 5), "{people:?}");
    // The report counts nothing that was left out.
    assert!(report.get("rows_suppressed").is_none() && report.get("rows_in_scope").is_none());
    assert_eq!(report["rows_released"], 60);
}

/// How many rows a `--where` matched, or how many were suppressed, is an
/// exact count: not in the report, not in a refusal, not in the ledger.
#[test]
fn an_extract_refusal_tells_no_count() {
    let tins = tins(13); // 7 in CA, 6 in TX
    let f = Fixture::new(&population(&tins, 1));
    f.apply(&agreement(
        "study",
        "GAO",
        &pseudonymous_grant(r#"["tin", "state", "birth_year"]"#, 50, 50),
    ));
    let mut messages = Vec::new();
    for filter in ["state = 'CA'", "state = 'TX'"] {
        let out = f.dir.path().join("never.csv");
        let run = f.extract(&out, Some(filter));
        assert!(!run.status.success());
        assert!(!out.exists());
        messages.push(String::from_utf8_lossy(&run.stderr).into_owned());
    }
    // Seven rows match the first filter, six the second: the refusals read alike.
    assert_eq!(messages[0], messages[1]);
    assert!(
        !messages[0].contains('6') && !messages[0].contains('7'),
        "{}",
        messages[0]
    );
    // A filter on a quasi-identifier could single a person out: refused.
    let run = f.extract(&f.dir.path().join("never.csv"), Some("birth_year = 1950"));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("may name only `public` columns"), "{err}");
    let ledger = common::ledger(&f.home());
    let extracts: Vec<&Value> = ledger.iter().filter(|e| e["action"] == "extract").collect();
    assert_eq!(extracts.len(), 3);
    assert_eq!(extracts[0]["counts"], extracts[1]["counts"], "{extracts:?}");
}

// ---------------------------------------------------------------------
// 3. Row scope in every mode.
// ---------------------------------------------------------------------

/// An agreement limited to California: a query without `WHERE` (or with
/// `WHERE state = 'TX'`) used to count Texas too.
#[test]
fn the_row_scope_bounds_aggregate_answers() {
    let tins = tins(40); // 20 in CA, 20 in TX, 2 returns each
    let f = Fixture::new(&population(&tins, 2));
    // ε = 1000: noise of scale 0.003, so the answer is the true count.
    f.apply(&agreement(
        "ca-only",
        "GAO",
        &aggregate_grant("1000.0", "row_scope = \"state = 'CA'\""),
    ));
    let all = f.query("ca-only", "SELECT COUNT(*) FROM returns");
    assert_eq!(first_value(&all), 40.0, "{all}");
    let tx = f.query("ca-only", "SELECT COUNT(*) FROM returns WHERE state = 'TX'");
    assert_eq!(first_value(&tx), 0.0, "{tx}");
    let grouped = f.query(
        "ca-only",
        "SELECT state, COUNT(*) FROM returns GROUP BY state",
    );
    let by_state: BTreeMap<String, String> = grouped["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0]["value"].as_str().unwrap().to_owned(),
                r[1]["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(by_state["CA"], "40");
    assert_eq!(by_state["TX"], "0");
}

// ---------------------------------------------------------------------
// 7. The two-person rule.
// ---------------------------------------------------------------------

/// An admin who is also an approver (or requester) could approve what
/// they asked for through a principal they create.
#[test]
fn an_admin_cannot_also_hold_approver_or_requester() {
    let f = Fixture::new(&population(&tins(4), 1));
    for roles in [["admin", "approver"], ["admin", "requester"]] {
        let out = custos(&f.home(), Some(&f.admin))
            .args(["principal", "add", "mallory", "--org", "IRS"])
            .args(["--role", roles[0], "--role", roles[1]])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("separation of duties"), "{err}");
        assert!(err.contains(roles[1]), "{err}");
    }
    let ledger = common::ledger(&f.home());
    let denied = ledger
        .iter()
        .filter(|e| e["action"] == "principal.add" && e["decision"] == "deny")
        .count();
    assert_eq!(denied, 2);
    // Nobody called mallory exists.
    let list = custos(&f.home(), Some(&f.admin))
        .args(["principal", "list"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains("mallory"));
}

const LOOKUP_GRANT: &str = r#"mode = "identified"
columns = ["tin", "name", "state", "refund"]
[grants.limits]
approvals = 1
requests_per_hour = 10
subjects_per_day = 100
"#;

fn file_lookup(home: &Path, token: &str, subject: &str) -> std::process::Output {
    custos(home, Some(token))
        .args(["lookup", "--agreement", "cases", "--dataset", "returns"])
        .args([
            "--subject",
            subject,
            "--justification",
            "Case 2026-001: refund fraud",
        ])
        .args(["--json"])
        .output()
        .unwrap()
}

/// A colleague in the requesting agency, or a custodian employee who can
/// also file requests, is not a second person.
#[test]
fn an_approver_must_be_independent_custodian_staff() {
    let tins = tins(4);
    let f = Fixture::new(&population(&tins, 1));
    f.apply(&agreement("cases", "TIGTA", LOOKUP_GRANT));
    let home = f.home();
    let rita = f.principal("rita", "TIGTA", "requester");
    let tess = f.principal("tess", "TIGTA", "approver");
    let ian = f.principal("ian", "IRS", "approver,requester");
    let adam = f.principal("adam", "IRS", "approver");
    let out = file_lookup(&home, &rita, &tins[1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ticket: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = ticket["id"].as_str().unwrap();
    for (who, token, rule) in [
        ("tess", &tess, "custodian organisation"),
        ("ian", &ian, "may not also hold the `requester` role"),
    ] {
        let out = custos(&home, Some(token))
            .args(["approve", id])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{who} approved");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(rule), "{who}: {err}");
        let last = common::ledger(&home).pop().unwrap();
        assert_eq!(last["action"], "lookup.approve");
        assert_eq!(last["decision"], "deny");
        // The refusal names the rule and nothing personal.
        assert!(!last.to_string().contains(&tins[1]));
    }
    // An overseer verifies without seeing the person or the reason.
    let olga = f.principal("olga", "IRS", "overseer");
    let shown = custos(&home, Some(&olga))
        .args(["lookup", "show", id, "--json"])
        .output()
        .unwrap();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert!(
        shown.get("subject").is_none() && shown.get("justification").is_none(),
        "{shown}"
    );
    assert!(!shown.to_string().contains(&tins[1]));
    // Nor may one principal both oversee and request.
    let out = custos(&home, Some(&f.admin))
        .args(["principal", "add", "octavia", "--org", "IRS"])
        .args(["--role", "overseer", "--role", "requester"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("separation of duties"));
    // Still unapproved: nothing can be fetched.
    let fetch = custos(&home, Some(&rita))
        .args(["lookup", "fetch", id])
        .output()
        .unwrap();
    assert!(!fetch.status.success());
    custos(&home, Some(&adam))
        .args(["approve", id])
        .assert()
        .success();
}

// ---------------------------------------------------------------------
// 8. Limits under concurrency.
// ---------------------------------------------------------------------

/// 32 requests at once under `requests_per_hour = 10`: check-then-insert
/// let them all see 9 done and all pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_requests_cannot_overrun_a_limit_of_ten() {
    let tins = tins(4);
    let f = Fixture::new(&population(&tins, 1));
    f.apply(&agreement("cases", "TIGTA", LOOKUP_GRANT));
    let rita = f.principal("rita", "TIGTA", "requester");
    let server = Server::start(&f.home(), &[]);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, url, token, subject) = (
            client.clone(),
            server.url.clone(),
            rita.clone(),
            tins[2].clone(),
        );
        tasks.push(tokio::spawn(async move {
            client
                .post(format!("{url}/v1/lookups"))
                .bearer_auth(token)
                .json(&json!({
                    "agreement": "cases",
                    "dataset": "returns",
                    "subject": subject,
                    "justification": "Case 2026-002: refund fraud",
                }))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = BTreeMap::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        statuses.get(&201).or(statuses.get(&200)),
        Some(&10),
        "{statuses:?}"
    );
    assert_eq!(statuses.get(&403), Some(&22), "{statuses:?}");
    let (status, _) = server.stop();
    assert!(status.success());
    let allowed = common::ledger(&f.home())
        .into_iter()
        .filter(|e| e["action"] == "lookup.request" && e["decision"] == "allow")
        .count();
    assert_eq!(allowed, 10);
}

// ---------------------------------------------------------------------
// 10. Smaller leaks.
// ---------------------------------------------------------------------

/// `--server http://…` to another machine would send the bearer token in
/// the clear to anyone on the path.
#[test]
fn a_token_is_never_sent_over_plain_http_to_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let out = custos(&dir.path().join("home"), Some("custos_x_secret"))
        .args(["--server", "http://192.0.2.1:9", "dataset", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to send CUSTOS_TOKEN over plain http://"),
        "{err}"
    );
    assert!(!err.contains("custos_x_secret"));
}

/// A `master.key` left readable by the group has leaked already; using it
/// quietly would hide that.
#[test]
fn a_master_key_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new(&population(&tins(2), 1));
    let key = f.home().join("master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = custos(&f.home(), Some(&f.admin))
        .args(["agreement", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mode 640") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    custos(&f.home(), Some(&f.admin))
        .args(["agreement", "list"])
        .assert()
        .success();
}

/// One person written `123-45-6789` in one return and `123456789` in the
/// others is one person: for the per-subject bound and for counting people.
#[test]
fn two_spellings_of_one_id_are_one_person() {
    let mut rows = Vec::new();
    let spellings = [
        ["100-00-0001", "100000001"],
        ["100-00-0002", "100000002"],
        ["100-00-0003", "100 00 0003"],
        ["100-00-0004", "100000004"],
    ];
    for pair in &spellings {
        for (r, tin) in [pair[0], pair[1], pair[1], pair[1]].into_iter().enumerate() {
            rows.push(Row {
                tin,
                state: "CA",
                birth_year: 1970,
                refund: r as u32,
            });
        }
    }
    let f = Fixture::new(&rows);
    f.apply(&agreement("stats", "GAO", &aggregate_grant("1000.0", "")));
    let people = f.query("stats", "SELECT COUNT(DISTINCT tin) FROM returns");
    assert_eq!(first_value(&people), 4.0, "{people}");
    // Four returns each, but at most three count per person.
    let rows = f.query("stats", "SELECT COUNT(*) FROM returns");
    assert_eq!(first_value(&rows), 12.0, "{rows}");
}

/// GAO's analyst may not learn which agreements TIGTA holds, or the
/// schema of a dataset GAO has no agreement on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_organisations_agreements_and_datasets_are_invisible() {
    let f = Fixture::new(&population(&tins(4), 1));
    f.apply(&agreement("cases", "TIGTA", LOOKUP_GRANT));
    f.ingest("other", &population(&tins(2), 1));
    let server = Server::start(&f.home(), &[]);
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(format!("{}{path}", server.url))
            .bearer_auth(&f.gao)
            .send()
    };
    let list: Value = get("/v1/agreements").await.unwrap().json().await.unwrap();
    assert_eq!(list, json!([]), "{list}");
    let one = get("/v1/agreements/cases").await.unwrap();
    assert!(one.status().is_client_error());
    let text = one.text().await.unwrap();
    assert!(text.contains("no agreement"), "{text}");
    let datasets: Value = get("/v1/datasets").await.unwrap().json().await.unwrap();
    assert_eq!(datasets, json!([]), "{datasets}");
    assert_eq!(get("/v1/datasets/returns").await.unwrap().status(), 404);
    // Once GAO holds an agreement on `returns`, it sees that one only.
    // (Applied through the API: the server holds the home's ledger.)
    let applied = client
        .post(format!("{}/v1/agreements", server.url))
        .bearer_auth(&f.admin)
        .json(&json!({ "toml": agreement("stats", "GAO", &aggregate_grant("1.0", "")) }))
        .send()
        .await
        .unwrap();
    assert_eq!(applied.status(), 201);
    let list: Value = get("/v1/agreements").await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agreement"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["stats"]);
    let datasets: Value = get("/v1/datasets").await.unwrap().json().await.unwrap();
    assert_eq!(datasets.as_array().unwrap().len(), 1, "{datasets}");
    assert_eq!(datasets[0]["name"], "returns");
    // Its schema, not its exact size (a count of private rows).
    assert_eq!(datasets[0]["rows"], 0);
    assert_eq!(datasets[0]["stored_bytes"], 0);
    assert_eq!(datasets[0]["sizes_withheld"], true);
}

/// A damaged bucket file is refused before the engine opens it (its
/// digest is not the ingested one): the client gets a 503
/// `dataset-refused` that names the dataset but no file or path; the log,
/// under the request id, has the detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_bucket_file_is_refused_naming_no_file() {
    let f = Fixture::new(&population(&tins(40), 1));
    f.apply(&agreement("stats", "GAO", &aggregate_grant("1.0", "")));
    let datasets = f.home().join("datasets");
    for entry in walk(&datasets) {
        if entry.extension().is_some_and(|e| e == "parquet") {
            std::fs::write(&entry, b"not parquet").unwrap();
        }
    }
    let server = Server::start(&f.home(), &[]);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/queries", server.url))
        .bearer_auth(&f.gao)
        .json(&json!({ "agreement": "stats", "sql": "SELECT COUNT(*) FROM returns" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "urn:custos:problem:dataset-refused");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("dataset `returns` is refused"), "{detail}");
    for needle in ["parquet", "bucket", "/tmp", "datasets/", "SHA-256"] {
        assert!(!detail.contains(needle), "{detail}");
    }
    let (_, log) = server.stop();
    assert!(log.contains(&id), "the log has no line for request {id}");
    assert!(log.contains("bucket-0000.parquet"), "{log}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

// ---------------------------------------------------------------------
// 4. The public ledger.
// ---------------------------------------------------------------------

/// Entry bundles are public. If a person's commitment were the same in
/// every entry, anyone who got it once (by filing a doomed look-up for
/// them, or from a subject report) could find every entry about them.
#[test]
fn the_public_ledger_cannot_follow_a_person() {
    let tins = tins(12);
    let f = Fixture::new(&population(&tins, 1));
    let home = f.home();
    f.apply(&agreement("cases", "TIGTA", LOOKUP_GRANT));
    f.apply(&agreement(
        "study",
        "GAO",
        &pseudonymous_grant(r#"["tin", "state"]"#, 2, 50),
    ));
    let rita = f.principal("rita", "TIGTA", "requester");
    let adam = f.principal("adam", "IRS", "approver");
    let olga = f.principal("olga", "IRS", "overseer");
    let target = &tins[2];
    // Two requests and a fetch about the target.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let out = file_lookup(&home, &rita, target);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ticket: Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(ticket["id"].as_str().unwrap().to_owned());
    }
    custos(&home, Some(&adam))
        .args(["approve", &ids[0]])
        .assert()
        .success();
    custos(&home, Some(&rita))
        .args(["lookup", "fetch", &ids[0]])
        .assert()
        .success();
    // GAO has no identified grant: its look-up is refused, and must not
    // plant the target's commitment in the ledger.
    let planted = file_lookup(&home, &f.gao, target);
    assert!(!planted.status.success());
    let denied = common::ledger(&home).pop().unwrap();
    assert_eq!(denied["action"], "lookup.request");
    assert_eq!(denied["decision"], "deny");
    assert!(
        denied["subjects"].as_array().is_none_or(Vec::is_empty),
        "{denied}"
    );
    // An extract holding everyone, the target included.
    let out = f.dir.path().join("study.csv");
    assert!(f.extract(&out, None).status.success());
    // The overseer's report: every line still found and proved.
    let report = custos(&home, Some(&olga))
        .args(["report", "subject", target, "--json"])
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    let kinds: BTreeSet<&str> = report["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["disclosed", "extracted", "requested"].into(),
        "{report}"
    );
    assert_eq!(report["lines"].as_array().unwrap().len(), 4, "{report}");
    // No subject value appears in two entries, and the report's stable
    // commitment appears in none.
    let stable = report["subject_commitment"].as_str().unwrap();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for e in common::ledger(&home) {
        let text = e.to_string();
        assert!(
            !text.contains(stable),
            "the stable commitment is public: {text}"
        );
        assert!(!text.contains(target.as_str()) && !text.contains(&target.replace('-', "")));
        for s in e["subjects"].as_array().into_iter().flatten() {
            let s = s.as_str().unwrap().to_owned();
            let index = e["index"].as_u64().unwrap_or_default();
            if let Some(other) = seen.insert(s.clone(), index) {
                panic!("entries {other} and {index} share the subject value {s}");
            }
        }
    }
    // Two requests and a fetch, and one value per person in the extract.
    assert!(seen.len() >= 3 + 12, "{}", seen.len());
}

// ---------------------------------------------------------------------
// 9. Protected subjects.
// ---------------------------------------------------------------------

/// `subject protect` said "protected" but extracts still carried the
/// person: their rows must be gone, before k-anonymity is counted.
#[test]
fn a_protected_subject_is_in_no_extract() {
    let tins = tins(12);
    let f = Fixture::new(&population(&tins, 1));
    let home = f.home();
    f.apply(&agreement(
        "study",
        "GAO",
        &pseudonymous_grant(r#"["tin", "state"]"#, 2, 50),
    ));
    let olga = f.principal("olga", "IRS", "overseer");
    let out = custos(&home, Some(&f.admin))
        .args(["subject", "protect", &tins[0]])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("extracts and matches leave them out"),
        "{said}"
    );
    let file = f.dir.path().join("study.csv");
    let run = f.extract(&file, None);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["rows_released"], 11, "{report}");
    let kinds = |tin: &str| -> Vec<String> {
        let out = custos(&home, Some(&olga))
            .args(["report", "subject", tin, "--json"])
            .output()
            .unwrap();
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        r["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(kinds(&tins[0]).is_empty());
    assert_eq!(kinds(&tins[1]), ["extracted"]);
}

// ---------------------------------------------------------------------
// 11. Failing closed, tried for every action.
// ---------------------------------------------------------------------

/// What the catalogue says, for comparing before and after a failed action.
fn catalogue(f: &Fixture, ids: &[&str], approver: &str) -> Value {
    let home = f.home();
    let json = |token: &str, args: &[&str]| -> Value {
        let out = custos(&home, Some(token)).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let mut lookups = Vec::new();
    for id in ids {
        let mut v = json(approver, &["lookup", "show", id, "--json"]);
        // Only the state and approvals matter here.
        lookups.push(json!({ "state": v["state"].take(), "approvals": v["approvals"].take() }));
    }
    json!({
        "principals": json(&f.admin, &["principal", "list", "--json"]),
        "agreements": json(&f.admin, &["agreement", "list", "--json"]),
        "datasets": json(&f.admin, &["dataset", "list", "--json"]),
        "lookups": lookups,
        "cases": json(&f.admin, &["report", "agreement", "cases", "--json"])["usage"].clone(),
        "files": walk(f.dir.path())
            .into_iter()
            .filter(|p| !p.starts_with(home.join("ledger")) && !p.starts_with(home.join("datasets")))
            .filter(|p| {
                let name = p.to_string_lossy();
                !name.ends_with("-wal") && !name.ends_with("-shm") && !name.ends_with("-journal")
            })
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
    })
}

/// The ledger's journal cannot be written (disk full, a yanked volume, an
/// administrator's sabotage): every action must then release nothing and
/// change nothing. The seam fails the first journal commit of the process.
#[test]
fn when_the_ledger_cannot_write_no_action_takes_effect() {
    let tins = tins(12);
    let f = Fixture::new(&population(&tins, 1));
    let home = f.home();
    f.apply(&agreement("cases", "TIGTA", LOOKUP_GRANT));
    f.apply(&agreement("stats", "GAO", &aggregate_grant("1.0", "")));
    f.apply(&agreement(
        "study",
        "GAO",
        &pseudonymous_grant(r#"["tin", "state"]"#, 2, 50),
    ));
    let rita = f.principal("rita", "TIGTA", "requester");
    let adam = f.principal("adam", "IRS", "approver");
    let ticket = |out: std::process::Output| -> String {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["id"].as_str().unwrap().to_owned()
    };
    let pending = ticket(file_lookup(&home, &rita, &tins[1]));
    let approved = ticket(file_lookup(&home, &rita, &tins[2]));
    custos(&home, Some(&adam))
        .args(["approve", &approved])
        .assert()
        .success();
    let schema = f.dir.path().join("schema.toml");
    let data = f.dir.path().join("returns.csv");
    let later = f.dir.path().join("later.toml");
    std::fs::write(
        &later,
        agreement("later", "GAO", &aggregate_grant("1.0", "")),
    )
    .unwrap();
    let extract = f.dir.path().join("leak.csv");
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
    let cases: Vec<(&str, &str, Vec<String>)> = vec![
        (
            "principal add",
            &f.admin,
            s(&[
                "principal",
                "add",
                "zed",
                "--org",
                "IRS",
                "--role",
                "overseer",
            ]),
        ),
        (
            "agreement apply",
            &f.admin,
            s(&["agreement", "apply", &later.display().to_string()]),
        ),
        (
            "dataset ingest",
            &f.admin,
            s(&[
                "dataset",
                "ingest",
                "--name",
                "extra",
                "--schema",
                &schema.display().to_string(),
                &data.display().to_string(),
            ]),
        ),
        (
            "look-up request",
            &rita,
            s(&[
                "lookup",
                "--agreement",
                "cases",
                "--dataset",
                "returns",
                "--subject",
                &tins[3],
                "--justification",
                "Case 2026-003: refund fraud",
            ]),
        ),
        ("approve", &adam, s(&["approve", &pending])),
        ("fetch", &rita, s(&["lookup", "fetch", &approved, "--json"])),
        (
            "query",
            &f.gao,
            s(&[
                "query",
                "--json",
                "--agreement",
                "stats",
                "SELECT COUNT(*) FROM returns",
            ]),
        ),
        (
            "extract",
            &f.gao,
            s(&[
                "extract",
                "--agreement",
                "study",
                "--dataset",
                "returns",
                "--out",
                &extract.display().to_string(),
            ]),
        ),
    ];
    for (name, token, args) in cases {
        let before = catalogue(&f, &[&pending, &approved], &adam);
        let entries = common::ledger(&home).len();
        let out = custos(&home, Some(token))
            .env("CUSTOS_FAULT_LEDGER_COMMIT", "1")
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}: succeeded without a ledger");
        assert!(
            out.stdout.is_empty(),
            "{name} released: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ledger"), "{name}: {err}");
        assert_eq!(
            common::ledger(&home).len(),
            entries,
            "{name}: an entry appeared"
        );
        assert_eq!(
            catalogue(&f, &[&pending, &approved], &adam),
            before,
            "{name} changed the catalogue"
        );
        assert!(!extract.exists());
    }
    // Nothing was charged: the first real query spends its own ε only, and
    // the approved request still releases (once).
    let answer = f.query("stats", "SELECT COUNT(*) FROM returns");
    assert_eq!(answer["budget_spent"], 1.0, "{answer}");
    custos(&home, Some(&rita))
        .args(["lookup", "fetch", &approved])
        .assert()
        .success();
}

/// A guard on protected people decided when a request is filed would
/// answer "is this person protected?" at once, for free, to any requester.
#[test]
fn filing_a_request_does_not_reveal_who_is_protected() {
    let tins = tins(6);
    let f = Fixture::new(&population(&tins, 1));
    let home = f.home();
    f.apply(&agreement("cases", "TIGTA", LOOKUP_GRANT));
    std::fs::write(
        home.join("guards.cedar"),
        "@id(\"protected-subjects\")\nforbid (principal, action, resource) when { context.subject_protected };\n",
    )
    .unwrap();
    custos(&home, Some(&f.admin))
        .args(["subject", "protect", &tins[1]])
        .assert()
        .success();
    let rita = f.principal("rita", "TIGTA", "requester");
    let adam = f.principal("adam", "IRS", "approver");
    let mut ids = Vec::new();
    for tin in [&tins[1], &tins[2]] {
        let out = file_lookup(&home, &rita, tin);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ticket: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ticket["state"], "pending");
        ids.push(ticket["id"].as_str().unwrap().to_owned());
    }
    // After a second person approved, the guard decides; neither the
    // requester nor the public ledger reads which guard.
    for id in &ids {
        custos(&home, Some(&adam))
            .args(["approve", id])
            .assert()
            .success();
    }
    let denied = custos(&home, Some(&rita))
        .args(["lookup", "fetch", &ids[0]])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        err.contains("denied by a guard rule") && !err.contains("protected"),
        "{err}"
    );
    custos(&home, Some(&rita))
        .args(["lookup", "fetch", &ids[1]])
        .assert()
        .success();
    for e in common::ledger(&home) {
        assert!(!e.to_string().contains("protected-subjects"), "{e}");
    }
}

/// A person who moved has rows in two large classes; their token links
/// the rows, and the pair of classes is theirs alone.
#[test]
fn a_token_linking_two_large_classes_does_not_single_a_person_out() {
    let stay_ca = tins(10);
    let stay_tx: Vec<String> = (0..10).map(|i| format!("800-00-{i:04}")).collect();
    let mover = "700-00-0001".to_owned();
    let mut rows = Vec::new();
    for (group, state) in [(&stay_ca, "CA"), (&stay_tx, "TX")] {
        for tin in group.iter() {
            for year in 0..2 {
                rows.push(Row {
                    tin,
                    state,
                    birth_year: 1960,
                    refund: year,
                });
            }
        }
    }
    rows.push(Row {
        tin: &mover,
        state: "CA",
        birth_year: 1960,
        refund: 0,
    });
    rows.push(Row {
        tin: &mover,
        state: "TX",
        birth_year: 1960,
        refund: 1,
    });
    let f = Fixture::new(&rows);
    f.apply(&agreement(
        "study",
        "GAO",
        &pseudonymous_grant(r#"["tin", "state", "birth_year", "refund"]"#, 5, 50),
    ));
    let (_, rows) = f.extract_rows("study.csv");
    let mut states: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for cells in &rows {
        states
            .entry(cells[0].clone())
            .or_default()
            .insert(cells[1].clone());
    }
    assert_eq!(states.len(), 20, "the mover was released: {states:?}");
    assert!(states.values().all(|s| s.len() == 1));
}

/// Differencing needs many extracts: they are capped per agreement and
/// hour, refused ones included.
#[test]
fn extracts_are_capped_per_hour() {
    let tins = tins(12);
    let f = Fixture::new(&population(&tins, 1));
    f.apply(&agreement(
        "study",
        "GAO",
        &pseudonymous_grant(r#"["tin", "state"]"#, 2, 2),
    ));
    let run = |name: &str, filter: &str| f.extract(&f.dir.path().join(name), Some(filter));
    assert!(run("ca.csv", "state = 'CA'").status.success());
    assert!(run("tx.csv", "state = 'TX'").status.success());
    let third = run("all.csv", "state IN ('CA', 'TX')");
    assert!(!third.status.success());
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(err.contains("limit exceeded: 2 extracts per hour"), "{err}");
    assert!(!f.dir.path().join("all.csv").exists());
}
