//! Identified look-ups end to end through the CLI: request → approval by a
//! second person → fetch of only the granted columns in scope → the
//! subject's accounting of disclosures with inclusion proofs; and every
//! bad input refused clearly, ledgered, with nothing released.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use predicates::prelude::*;
use tempfile::TempDir;

use common::IDENTIFIED_AGREEMENT as AGREEMENT;

struct Env {
    dir: TempDir,
    tokens: HashMap<&'static str, String>,
    /// Rows of the tax-return CSV: (tin, tax_year, name).
    returns: Vec<(String, String, String)>,
}

impl Env {
    fn new() -> Self {
        Self::with_catalogue(None)
    }

    /// A home whose catalogue is the PostgreSQL database at `catalogue`
    /// (`None`: the embedded SQLite file).
    fn with_catalogue(catalogue: Option<&str>) -> Self {
        Self::with_placement(catalogue, None)
    }

    /// A home with its catalogue at `catalogue` and its dataset files in
    /// the object store at `object_store` (`None`s: the embedded default).
    fn with_placement(catalogue: Option<&str>, object_store: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut env = Self {
            dir,
            tokens: HashMap::new(),
            returns: Vec::new(),
        };
        let mut init = env.custos(None);
        init.arg("init");
        if let Some(url) = catalogue {
            init.args(["--catalogue", url]);
        }
        if let Some(url) = object_store {
            init.args(["--object-store", url]);
        }
        init.assert().success();
        let people: [(&str, &str, &str); 7] = [
            ("alice", "IRS", "admin"),
            ("rita", "TIGTA", "requester"),
            ("sam", "TIGTA", "requester,approver"),
            ("adam", "IRS", "approver"),
            ("olga", "GAO", "overseer"),
            ("gus", "GAO", "requester"),
            ("rex", "TIGTA", "requester"),
        ];
        let home = env.path("home");
        for (name, org, roles) in people {
            let admin = (name != "alice").then(|| env.tokens["alice"].clone());
            let token = common::add_principal(&home, admin.as_deref(), name, org, roles);
            env.tokens.insert(name, token);
        }
        let data = env.path("synthetic");
        common::ingest_synthetic(&home, &env.tokens["alice"], &data, 300, &["tax_returns"]);
        let mut reader = csv::Reader::from_path(data.join("tax_returns.csv")).unwrap();
        env.returns = reader
            .records()
            .map(|r| {
                let r = r.unwrap();
                (r[0].to_owned(), r[12].to_owned(), r[1].to_owned())
            })
            .collect();
        let file = env.write("agreement.toml", AGREEMENT);
        env.as_("alice")
            .args(["agreement", "apply"])
            .arg(file)
            .assert()
            .success();
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, text).unwrap();
        p
    }

    fn custos(&self, token: Option<&str>) -> assert_cmd::Command {
        common::custos(&self.path("home"), token)
    }

    fn as_(&self, who: &str) -> assert_cmd::Command {
        self.custos(Some(&self.tokens[who]))
    }

    /// A TIN with returns both inside (≥ 2023) and outside the row scope.
    fn subject_with_years(&self) -> String {
        let mut years: HashMap<&str, Vec<&str>> = HashMap::new();
        for (tin, year, _) in &self.returns {
            years.entry(tin).or_default().push(year);
        }
        let mut found: Vec<_> = years
            .into_iter()
            .filter(|(_, ys)| ys.iter().any(|y| *y < "2023") && ys.iter().any(|y| *y >= "2023"))
            .map(|(t, _)| t.to_owned())
            .collect();
        found.sort();
        found
            .into_iter()
            .next()
            .expect("a subject with several years")
    }

    fn request(&self, who: &str, subject: &str, extra: &[&str]) -> assert_cmd::assert::Assert {
        self.as_(who)
            .args([
                "lookup",
                "--agreement",
                "tigta-cases",
                "--dataset",
                "tax_returns",
                "--subject",
                subject,
                "--justification",
                "Case 2026-114: refund deposited to a shared account",
                "--json",
            ])
            .args(extra)
            .assert()
    }

    fn request_id(&self, who: &str, subject: &str) -> String {
        let out = self.request(who, subject, &[]).success();
        let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    fn ledger(&self) -> Vec<serde_json::Value> {
        common::ledger(&self.path("home"))
    }

    /// The last entry of an action (the unusual-browsing detector's own
    /// `alert.*` entries, appended after a command answered, left out).
    fn last_entry(&self) -> serde_json::Value {
        self.ledger()
            .into_iter()
            .rev()
            .find(|e| !e["action"].as_str().unwrap().starts_with("alert."))
            .unwrap()
    }
}

#[test]
fn request_approve_fetch_and_report() {
    request_approve_fetch_and_report_in(&Env::new());
}

/// The same flow with the catalogue in PostgreSQL: requests, approvals,
/// the accounting and the limits live there, and nothing in the home's
/// directory holds them.
#[test]
fn request_approve_fetch_and_report_with_a_postgresql_catalogue() {
    let Some(url) = common::postgres_database() else {
        return;
    };
    let env = Env::with_catalogue(Some(&url));
    let home = env.path("home");
    assert!(home.join("catalogue.toml").is_file());
    assert!(!home.join("custos.db").exists());
    request_approve_fetch_and_report_in(&env);
    // The catalogue rows are in PostgreSQL.
    let requests = common::postgres_count(&url, "SELECT COUNT(*) FROM access_requests");
    let disclosures = common::postgres_count(
        &url,
        "SELECT COUNT(*) FROM subject_events WHERE kind = 'disclosed'",
    );
    assert_eq!((requests, disclosures), (1, 1));
}

/// The same flow beyond one machine: the catalogue in PostgreSQL and the
/// dataset files in S3-compatible object storage, so the home's directory
/// holds neither; the released rows come from ranged reads of the bucket.
#[test]
fn request_approve_fetch_and_report_with_postgresql_and_object_storage() {
    let (Some(catalogue), Some(objects)) = (common::postgres_database(), common::s3_prefix())
    else {
        return;
    };
    let env = Env::with_placement(Some(&catalogue), Some(&objects));
    let home = env.path("home");
    assert!(home.join("object-store.toml").is_file());
    assert_eq!(std::fs::read_dir(home.join("datasets")).unwrap().count(), 0);
    let s3 = common::S3Files::new(&objects);
    assert!(
        s3.keys()
            .iter()
            .any(|k| k.starts_with("datasets/tax_returns.") && k.ends_with(".parquet"))
    );
    request_approve_fetch_and_report_in(&env);
    // The ledger is the shared one: its journal in PostgreSQL, its tiles
    // and checkpoint in the bucket, nothing in the home's ledger folder;
    // and what the bucket holds verifies.
    let ledger_dir = home.join("ledger");
    assert!(!ledger_dir.join("journal").exists() && !ledger_dir.join("checkpoint").exists());
    let keys = s3.keys();
    assert!(keys.iter().any(|k| k == "ledger/checkpoint"), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("ledger/tile/entries/")));
    common::custos(&home, None)
        .args(["ledger", "verify"])
        .assert()
        .success()
        .stdout(predicate::str::contains("ledger/").and(predicate::str::contains("verified")));
    // A catalogue whose record of the shared ledger was removed does not
    // open an empty local ledger beside it.
    common::postgres_execute(
        &catalogue,
        "DELETE FROM instance WHERE key = 'ledger_placement'",
    );
    env.as_("alice")
        .args(["principal", "list"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "holds a shared ledger's checkpoint",
        ));
}

fn request_approve_fetch_and_report_in(env: &Env) {
    let tin = env.subject_with_years();
    let id = env.request_id("rita", &tin);
    assert!(id.starts_with("req_"));
    let entry = env.last_entry();
    assert_eq!(
        (entry["action"].as_str(), entry["decision"].as_str()),
        (Some("lookup.request"), Some("allow"))
    );
    // The ledger never holds the TIN, the justification or a name.
    let all = serde_json::to_string(&env.ledger()).unwrap();
    assert!(!all.contains(&tin) && !all.contains("Case 2026-114"));

    // Not yet approved: nothing is released.
    env.as_("rita")
        .args(["lookup", "fetch", &id])
        .assert()
        .failure()
        .stderr(predicate::str::contains("0 of 1 approvals"));
    // The approver sees subject and justification, and approves.
    env.as_("adam")
        .args(["lookup", "show", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains(&tin).and(predicate::str::contains("Case 2026-114")));
    env.as_("adam")
        .args(["approve", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains("1 of 1 approvals, now approved"));
    // Only the requester fetches.
    env.as_("sam")
        .args(["lookup", "fetch", &id])
        .assert()
        .failure()
        .stderr(predicate::str::contains("only the requester may fetch"));
    let out = env
        .as_("rita")
        .args(["lookup", "fetch", &id, "--json"])
        .assert()
        .success();
    let released: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let rows = released["rows"].as_array().unwrap();
    let expected_years: Vec<&str> = env
        .returns
        .iter()
        .filter(|(t, y, _)| *t == tin && y.as_str() >= "2023")
        .map(|(_, y, _)| y.as_str())
        .collect();
    assert_eq!(rows.len(), expected_years.len());
    for row in rows {
        let row = row.as_object().unwrap();
        // Only granted columns: no address, AGI, wages or birth date.
        let mut keys: Vec<&str> = row.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["bank_account", "name", "refund", "state", "tax_year", "tin"]
        );
        assert_eq!(row["tin"], tin.as_str());
        assert!(row["tax_year"].as_str().unwrap() >= "2023");
    }
    let fetch = env.last_entry();
    assert_eq!(fetch["action"], "lookup.fetch");
    // How many rows the person has is not in the public entry.
    assert!(
        fetch["counts"].as_array().is_none_or(Vec::is_empty),
        "{fetch}"
    );
    assert_eq!(
        released["ledger_index"].as_u64().unwrap() + 1,
        env.ledger().len() as u64
    );
    // Once only.
    env.as_("rita")
        .args(["lookup", "fetch", &id])
        .assert()
        .failure()
        .stderr(predicate::str::contains("already fetched"));

    // The subject's accounting: request and disclosure, with proofs.
    let out = env
        .as_("olga")
        .args(["report", "subject", &tin, "--json"])
        .assert()
        .success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let lines = report["lines"].as_array().unwrap();
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["requested", "disclosed"]);
    assert_eq!(lines[1]["recipient"], "rita");
    assert_eq!(lines[1]["org"], "TIGTA");
    assert_eq!(lines[1]["request_id"], id.as_str());
    assert_eq!(lines[1]["rows"].as_u64().unwrap(), rows.len() as u64);
    // Each proof verifies through the ledger CLI too.
    let index = lines[1]["proof"]["index"].as_u64().unwrap().to_string();
    env.custos(None)
        .args(["ledger", "prove", "--index", &index])
        .assert()
        .success();
    // The same person written without dashes has the same accounting.
    let plain: String = tin.chars().filter(char::is_ascii_digit).collect();
    env.as_("olga")
        .args(["report", "subject", &plain])
        .assert()
        .success()
        .stdout(predicate::str::contains("disclosed").and(predicate::str::contains(&id)));
    // Another subject has nothing on record.
    env.as_("olga")
        .args(["report", "subject", "666-00-0000"])
        .assert()
        .success()
        .stdout(predicate::str::contains("No inspections or disclosures"));
    env.as_("olga")
        .args(["report", "agreement", "tigta-cases", "--json"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("\"requests\": 1")
                .and(predicate::str::contains("\"disclosures\": 1")),
        );
    // Reports are for overseers and admins.
    env.as_("rita")
        .args(["report", "subject", &tin])
        .assert()
        .failure()
        .stderr(predicate::str::contains("`overseer` or `admin` role"));
}

#[test]
fn approvals_need_another_approver_once() {
    let env = Env::new();
    let tin = env.subject_with_years();
    // sam is requester and approver: he cannot approve his own request.
    let own = env.request_id("sam", &tin);
    env.as_("sam")
        .args(["approve", &own])
        .assert()
        .failure()
        .stderr(predicate::str::contains("self-approval is not allowed"));
    assert_eq!(env.last_entry()["decision"], "deny");
    // A requester cannot approve.
    env.as_("rex")
        .args(["approve", &own])
        .assert()
        .failure()
        .stderr(predicate::str::contains("`approver` role"));
    assert_eq!(env.last_entry()["action"], "lookup.approve");
    // Double approval by one person is refused.
    let theirs = env.request_id("rita", &tin);
    env.as_("adam")
        .args(["approve", &theirs])
        .assert()
        .success();
    env.as_("adam")
        .args(["approve", &theirs])
        .assert()
        .failure()
        .stderr(predicate::str::contains("already approved"));
    // An unknown request id is refused without echoing anything.
    env.as_("adam")
        .args(["approve", "req_00000000000000000000000000000000"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no such request"));
    assert_eq!(env.last_entry()["decision"], "deny");
}

#[test]
fn bad_requests_are_denied_clearly_ledgered_and_release_nothing() {
    let env = Env::new();
    let tin = env.subject_with_years();
    let before = env.ledger().len();
    let args = |agreement: &str, dataset: &str, subject: &str| -> Vec<String> {
        [
            "lookup",
            "--agreement",
            agreement,
            "--dataset",
            dataset,
            "--justification",
            "Case 2026-114: refund deposited to a shared account",
            "--subject",
            subject,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let expect = |who: &str, args: &[String], message: &str| {
        env.as_(who)
            .args(args)
            .assert()
            .failure()
            .stdout(predicate::str::is_empty())
            .stderr(predicate::str::contains(message));
        let e = env.last_entry();
        assert_eq!(
            (e["action"].as_str(), e["decision"].as_str()),
            (Some("lookup.request"), Some("deny")),
            "{message}"
        );
    };
    let ok = args("tigta-cases", "tax_returns", &tin);
    expect(
        "rita",
        &args("nope", "tax_returns", &tin),
        "no agreement `nope`",
    );
    expect(
        "rita",
        &args("tigta-cases", "deaths", &tin),
        "grants no identified access to dataset `deaths`",
    );
    let mut cols = ok.clone();
    cols.extend(["--columns".to_owned(), "tin,zz_salary".to_owned()]);
    expect("rita", &cols, "column `zz_salary` is not granted");
    expect(
        "rita",
        &args("tigta-cases", "zz_payroll", &tin),
        "no identified access to dataset `zz_payroll`",
    );
    expect("gus", &ok, "not with your organisation");
    expect("adam", &ok, "access needs the `requester` role");
    // A subject that does not exist is accepted like any other: the request
    // never reads the dataset, so it cannot reveal existence.
    env.request("rita", "666-99-9999", &[])
        .success()
        .stdout(predicate::str::contains("\"state\": \"pending\""));
    // subjects_per_day = 3: the ghost and two more, then the fourth is refused.
    let others: Vec<String> = {
        let mut t: Vec<String> = env.returns.iter().map(|r| r.0.clone()).collect();
        t.sort();
        t.dedup();
        t.into_iter().filter(|t| *t != tin).take(3).collect()
    };
    env.request("rita", &others[0], &[]).success();
    env.request("rita", &others[1], &[]).success();
    expect(
        "rita",
        &args("tigta-cases", "tax_returns", &others[2]),
        "limit exceeded: 3 subjects per day",
    );
    // Suspended, then revoked.
    env.as_("alice")
        .args(["agreement", "suspend", "tigta-cases", "--reason", "audit"])
        .assert()
        .success();
    expect("rita", &ok, "agreement `tigta-cases` is suspended");
    env.as_("alice")
        .args(["agreement", "revoke", "tigta-cases", "--reason", "ended"])
        .assert()
        .success();
    expect("rita", &ok, "agreement `tigta-cases` is revoked");
    // Wrong and revoked tokens.
    let wrong = format!("custos_p{}_{}", "0".repeat(16), "0".repeat(64));
    env.custos(Some(&wrong))
        .args(&ok)
        .assert()
        .failure()
        .stderr(predicate::str::contains("token"));
    assert_eq!(env.last_entry()["action"], "auth.token");
    env.as_("alice")
        .args(["principal", "revoke", "rex"])
        .assert()
        .success();
    env.as_("rex")
        .args(&ok)
        .assert()
        .failure()
        .stderr(predicate::str::contains("token"));
    assert_eq!(env.last_entry()["action"], "auth.token");
    // Malformed input: no justification, empty subject.
    env.as_("rita")
        .args([
            "lookup",
            "--agreement",
            "tigta-cases",
            "--dataset",
            "tax_returns",
            "--subject",
            &tin,
            "--justification",
            "because",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "justification of at least 10 characters",
        ));
    // Nothing was released in any of this: no fetch entry at all.
    let after = env.ledger();
    assert!(after.len() > before);
    assert!(after.iter().all(|e| e["action"] != "lookup.fetch"));
    // The ledger never names the subject, nor echoes mistyped names.
    let text = serde_json::to_string(&after).unwrap();
    for secret in [tin.as_str(), "zz-missing", "zz_salary", "zz_payroll"] {
        assert!(!text.contains(secret), "{secret} in the ledger");
    }
}

#[test]
fn expired_agreements_and_guards_deny_fetches_after_approval() {
    let env = Env::new();
    let tin = env.subject_with_years();
    // An approved request whose subject is then protected by a guard rule.
    let id = env.request_id("rita", &tin);
    env.as_("adam").args(["approve", &id]).assert().success();
    fs::write(
        env.path("home").join("guards.cedar"),
        "@id(\"protected-subjects\")\nforbid (principal, action, resource) when { context.subject_protected };\n",
    )
    .unwrap();
    env.as_("alice")
        .args(["subject", "protect", &tin])
        .assert()
        .success();
    env.as_("rita")
        .args(["lookup", "fetch", &id])
        .assert()
        .failure()
        .stdout(predicate::str::is_empty())
        .stderr(
            predicate::str::contains("denied by a guard rule")
                .and(predicate::str::contains("protected").not()),
        );
    // The public ledger names neither the guard nor the person.
    let e = env.last_entry();
    assert_eq!(
        (e["action"].as_str(), e["decision"].as_str()),
        (Some("lookup.fetch"), Some("deny"))
    );
    assert_eq!(e["reasons"][0], "denied by a guard rule of the custodian");
    assert!(e["subjects"].as_array().is_none_or(Vec::is_empty), "{e}");
    // An expired agreement grants nothing: it is not even taken (that it
    // grants nothing once its window ends is custos-policy's decide test).
    let expired = AGREEMENT
        .replace("tigta-cases", "tigta-old")
        .replace("valid_until = 2099-12-31", "valid_until = 2026-01-31");
    let file = env.write("old.toml", &expired);
    env.as_("alice")
        .args(["agreement", "apply"])
        .arg(file)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "the agreement expired on 2026-01-31",
        ));
    env.as_("rita")
        .args([
            "lookup",
            "--agreement",
            "tigta-old",
            "--dataset",
            "tax_returns",
            "--subject",
            "666-00-0001",
            "--justification",
            "Case 2026-114: refund deposited",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains("tigta-old"));
    // A malformed guard file fails closed.
    fs::write(
        env.path("home").join("guards.cedar"),
        "forbid (principal, action",
    )
    .unwrap();
    env.request("rita", "666-00-0002", &[])
        .failure()
        .stderr(predicate::str::contains("fail closed"));
}

#[test]
fn a_subject_without_records_gets_the_same_answer_shape() {
    let env = Env::new();
    let id = env.request_id("rita", "666-99-9999");
    env.as_("adam").args(["approve", &id]).assert().success();
    env.as_("rita")
        .args(["lookup", "fetch", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "no records in scope for this subject",
        ));
    // The fetch is recorded like any other: the entry cannot tell an
    // empty release from a full one.
    let e = env.last_entry();
    assert_eq!(e["action"], "lookup.fetch");
    assert!(e["counts"].as_array().is_none_or(Vec::is_empty), "{e}");
}

#[test]
fn withholding_agreements_stay_out_of_subject_reports() {
    let env = Env::new();
    let tin = env.subject_with_years();
    let sealed = AGREEMENT.replace("tigta-cases", "tigta-sealed").replace(
        "[[grants]]",
        "[withhold_from_subject_reports]\ncitation = \"5 U.S.C. 552a(k)(2)\"\n\n[[grants]]",
    );
    let file = env.write("sealed.toml", &sealed);
    env.as_("alice")
        .args(["agreement", "apply"])
        .arg(file)
        .assert()
        .success();
    let open = env.request_id("rita", &tin);
    let withheld = {
        let out = env
            .as_("rita")
            .args([
                "lookup",
                "--agreement",
                "tigta-sealed",
                "--dataset",
                "tax_returns",
                "--subject",
                &tin,
                "--justification",
                "Sealed case 77: ongoing investigation",
                "--json",
            ])
            .assert()
            .success();
        let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        v["id"].as_str().unwrap().to_owned()
    };
    for id in [&open, &withheld] {
        env.as_("adam").args(["approve", id]).assert().success();
        env.as_("rita")
            .args(["lookup", "fetch", id])
            .assert()
            .success();
    }
    let out = env
        .as_("olga")
        .args(["report", "subject", &tin, "--json"])
        .assert()
        .success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let ids: Vec<&str> = report["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [open.as_str(), open.as_str()]);
    assert!(!String::from_utf8_lossy(&out.get_output().stdout).contains("tigta-sealed"));
    // The custodian's admin still sees the agreement's use; an overseer of
    // an organisation that is no party to it does not learn it exists.
    env.as_("alice")
        .args(["report", "agreement", "tigta-sealed"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("subject reports    withheld")
                .and(predicate::str::contains("disclosures        1")),
        );
    env.as_("olga")
        .args(["report", "agreement", "tigta-sealed"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no agreement `tigta-sealed`"));
}

#[test]
fn requests_per_hour_are_limited_per_requester() {
    let env = Env::new();
    let tight = AGREEMENT
        .replace("tigta-cases", "tigta-tight")
        .replace("requests_per_hour = 60", "requests_per_hour = 2");
    let file = env.write("tight.toml", &tight);
    env.as_("alice")
        .args(["agreement", "apply"])
        .arg(file)
        .assert()
        .success();
    let ask = |who: &str, subject: &str| {
        env.as_(who)
            .args([
                "lookup",
                "--agreement",
                "tigta-tight",
                "--dataset",
                "tax_returns",
                "--subject",
                subject,
                "--justification",
                "Case 2026-114: refund deposited",
            ])
            .assert()
    };
    ask("rita", "666-00-0001").success();
    ask("rita", "666-00-0001").success();
    ask("rita", "666-00-0002")
        .failure()
        .stderr(predicate::str::contains(
            "limit exceeded: 2 requests per hour",
        ));
    let e = env.last_entry();
    assert_eq!(
        (e["action"].as_str(), e["decision"].as_str()),
        (Some("lookup.request"), Some("deny"))
    );
    // Another requester of the same organisation has their own budget.
    ask("sam", "666-00-0002").success();
}

#[test]
fn approvers_decline_with_a_reason_the_ledger_keeps_only_its_digest() {
    let env = Env::new();
    let tin = env.subject_with_years();
    let id = env.request_id("rita", &tin);
    const REASON: &str = "Case 2026-114 names a different account holder";
    // The queue shows the justification to the custodian's approver, and
    // that viewing is ledgered; a requester has no queue.
    let out = env
        .as_("adam")
        .args(["lookup", "queue", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let queue: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(queue[0]["ticket"]["id"], id.as_str());
    assert_eq!(
        queue[0]["justification"],
        "Case 2026-114: refund deposited to a shared account"
    );
    let shown = env.last_entry();
    assert_eq!(shown["action"], "lookup.show");
    assert_eq!(shown["request_id"], id.as_str());
    env.as_("rita")
        .args(["lookup", "queue"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("`approver` role"));
    // Who may not decline: the requester, a requester who is also an
    // approver, an approver of another organisation; nor without a reason.
    for (who, says) in [
        ("rita", "`approver` role"),
        ("sam", "may not also hold the `requester` role"),
    ] {
        env.as_(who)
            .args(["lookup", "decline", &id, "--reason", REASON])
            .assert()
            .failure()
            .stderr(predicate::str::contains(says));
        assert_eq!(env.last_entry()["action"], "lookup.decline");
        assert_eq!(env.last_entry()["decision"], "deny");
    }
    env.as_("adam")
        .args(["lookup", "decline", &id, "--reason", "no"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("reason of 10 to 2000 characters"));
    env.as_("adam")
        .args(["lookup", "decline", &id, "--reason", REASON])
        .assert()
        .success()
        .stdout(predicate::str::contains("declined"));
    let entry = env.last_entry();
    assert_eq!(entry["action"], "lookup.decline");
    assert_eq!(entry["decision"], "allow");
    let text = serde_json::to_string(&env.ledger()).unwrap();
    assert!(
        !text.contains("different account holder"),
        "the reason stays out of the ledger"
    );
    assert!(text.contains("reason_hmac"));
    // A declined request can be neither approved, declined again, nor fetched.
    env.as_("adam")
        .args(["approve", &id])
        .assert()
        .failure()
        .stderr(predicate::str::contains("already declined"));
    env.as_("adam")
        .args(["lookup", "decline", &id, "--reason", REASON])
        .assert()
        .failure()
        .stderr(predicate::str::contains("already declined"));
    env.as_("rita")
        .args(["lookup", "fetch", &id])
        .assert()
        .failure()
        .stderr(predicate::str::contains("declined by an approver"));
    // The requester sees who declined and why; an overseer sees who, not why.
    env.as_("rita")
        .args(["lookup", "show", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains("declined by").and(predicate::str::contains(REASON)));
    env.as_("olga")
        .args(["lookup", "show", &id])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("declined by").and(predicate::str::contains(REASON).not()),
        );
    // The queue is empty again.
    env.as_("adam")
        .args(["lookup", "queue"])
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing is waiting"));
}

/// Another custodian's backlog of pending requests cannot crowd an
/// approver's own out of their queue (the queue's window is filtered by
/// custodian in the query, not after it); requests under a suspended
/// agreement leave the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_custodians_backlog_does_not_hide_the_queue() {
    let env = Env::new();
    let other = AGREEMENT
        .replace("tigta-cases", "ssa-cases")
        .replace("custodian = \"IRS\"", "custodian = \"SSA\"")
        .replace("subjects_per_day = 3", "subjects_per_day = 100000")
        .replace("requests_per_hour = 60", "requests_per_hour = 100000");
    let file = env.write("ssa.toml", &other);
    env.as_("alice")
        .args(["agreement", "apply"])
        .arg(file)
        .assert()
        .success();
    let server = common::Server::start(
        &env.path("home"),
        &["--rate", "100000", "--burst", "100000"],
    ); // 205 requests outrun the default rate on a fast machine
    let http = reqwest::Client::new();
    let file_lookup = |agreement: &str, subject: &str| {
        http.post(format!("{}/v1/lookups", server.url))
            .bearer_auth(&env.tokens["rex"])
            .json(&serde_json::json!({
                "agreement": agreement, "dataset": "tax_returns", "subject": subject,
                "justification": "Case 2026-200: a refund to a shared account"}))
            .send()
    };
    let tins: Vec<String> = {
        let mut t: Vec<String> = env.returns.iter().map(|r| r.0.clone()).collect();
        t.sort();
        t.dedup();
        t
    };
    for i in 0..205 {
        let tin = &tins[i % tins.len()];
        assert_eq!(file_lookup("ssa-cases", tin).await.unwrap().status(), 201);
    }
    let mine: serde_json::Value = file_lookup("tigta-cases", &tins[0])
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let queue = || async {
        let r = http
            .get(format!("{}/v1/approvals/queue", server.url))
            .bearer_auth(&env.tokens["adam"])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Vec<serde_json::Value>>().await.unwrap()
    };
    let items = queue().await;
    assert_eq!(items.len(), 1, "only IRS's request: {items:?}");
    assert_eq!(items[0]["ticket"]["id"], mine["id"]);
    let r = http
        .post(format!("{}/v1/agreements/tigta-cases/suspend", server.url))
        .bearer_auth(&env.tokens["alice"])
        .json(&serde_json::json!({"reason": "review"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        queue().await.is_empty(),
        "a suspended agreement's requests leave the queue"
    );
}

/// A look-up request recorded after its agreement's limit lock was lost
/// (the lock's PostgreSQL connection ended: a failover, an administrator,
/// here a trigger that ends it as the request is inserted) is declined by
/// Custos and can never be approved or fetched: another replica may have
/// counted the agreement's limit while the lock was gone.
#[test]
fn a_request_recorded_after_its_limit_lock_was_lost_is_declined() {
    let (Some(catalogue), Some(objects)) = (common::postgres_database(), common::s3_prefix())
    else {
        return;
    };
    let env = Env::with_placement(Some(&catalogue), Some(&objects));
    common::postgres_execute(
        &catalogue,
        "CREATE FUNCTION end_limit_locks() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM pg_terminate_backend(pid) FROM pg_locks
              WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database());
             RETURN NEW;
         END $$;
         CREATE TRIGGER end_limit_locks AFTER INSERT ON access_requests
             FOR EACH ROW EXECUTE FUNCTION end_limit_locks();",
    );
    let tin = env.subject_with_years();
    env.request("rita", &tin, &[])
        .failure()
        .stderr(predicate::str::contains("limit lock was lost"));
    let state = common::postgres_text(&catalogue, "SELECT state FROM access_requests");
    assert_eq!(state.as_deref(), Some("declined"));
    let id = common::postgres_text(&catalogue, "SELECT id FROM access_requests").unwrap();
    let entry = env.last_entry();
    assert_eq!(
        (
            entry["action"].as_str(),
            entry["actor"].as_str(),
            entry["request_id"].as_str()
        ),
        (Some("lookup.decline"), Some("custos"), Some(id.as_str()))
    );
    // Neither approved nor fetched, whatever an approver does.
    common::postgres_execute(
        &catalogue,
        "DROP TRIGGER end_limit_locks ON access_requests",
    );
    env.as_("adam").args(["approve", &id]).assert().failure();
    env.as_("rita")
        .args(["lookup", "fetch", &id])
        .assert()
        .failure();
    assert!(
        !env.ledger()
            .iter()
            .any(|e| e["action"] == "lookup.fetch" && e["decision"] == "allow")
    );
}
