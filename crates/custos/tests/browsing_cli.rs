//! Unusual-browsing detection end to end, from where misuse happens: a
//! requester at the CLI looking up themself, their household, a colleague,
//! a neighbour, a namesake, someone in their ZIP code, a protected person,
//! someone another principal just looked up, at night, with no case
//! reference, in bursts of refusals, or five times as much as their peers.
//! Each rule fires on its case and stays quiet on a near miss; alerts
//! survive a restart; resolving is ledgered; and nothing personal reaches
//! the alerts' ledger entries, the CLI's alert output or the server's log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::PathBuf;

use predicates::prelude::*;
use serde_json::Value;
use tempfile::TempDir;

/// One synthetic filer: (tin, full name, address, zip).
#[derive(Debug, Clone)]
struct Person {
    tin: String,
    name: String,
    address: String,
    zip: String,
}

fn words(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_uppercase)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Person {
    fn surname(&self) -> String {
        words(&self.name).rsplit(' ').next().unwrap().to_owned()
    }

    fn street(&self) -> String {
        let w = words(&self.address);
        w.split_once(' ').unwrap().1.to_owned()
    }
}

fn agreement(id: &str, monitoring: &str) -> String {
    format!(
        r#"
id = "{id}"
title = "TIGTA case look-ups"
purpose = "Investigate refunds deposited to accounts shared by many filers"
valid_from = 2026-01-01
valid_until = 2099-12-31

[parties]
custodian = "IRS"
requester = "TIGTA"

[legal_authority]
citation = "26 U.S.C. 6103(h)(1)"

{monitoring}

[[grants]]
dataset = "tax_returns"
mode = "identified"
columns = ["tin", "name", "tax_year", "refund", "state"]

[grants.limits]
subjects_per_day = 200
requests_per_hour = 500
approvals = 1
"#
    )
}

const CASE: &str = "CASE-2041: refund deposited to a shared account";

struct Env {
    dir: TempDir,
    tokens: HashMap<&'static str, String>,
    people: Vec<Person>,
}

impl Env {
    fn new(requesters: &[&'static str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut env = Self {
            dir,
            tokens: HashMap::new(),
            people: Vec::new(),
        };
        env.custos(None).arg("init").assert().success();
        let mut staff: Vec<(&'static str, &str, &str)> = vec![
            ("alice", "IRS", "admin"),
            ("adam", "IRS", "approver"),
            ("olga", "GAO", "overseer"),
        ];
        staff.extend(requesters.iter().map(|r| (*r, "TIGTA", "requester")));
        let home = env.path("home");
        for (name, org, roles) in staff {
            let admin = (name != "alice").then(|| env.tokens["alice"].clone());
            let token = common::add_principal(&home, admin.as_deref(), name, org, roles);
            env.tokens.insert(name, token);
        }
        let data = env.path("synthetic");
        common::ingest_synthetic(&home, &env.tokens["alice"], &data, 400, &["tax_returns"]);
        let mut reader = csv::Reader::from_path(data.join("tax_returns.csv")).unwrap();
        let mut seen = BTreeSet::new();
        for r in reader.records() {
            let r = r.unwrap();
            if seen.insert(r[0].to_owned()) {
                env.people.push(Person {
                    tin: r[0].to_owned(),
                    name: r[1].to_owned(),
                    address: r[2].to_owned(),
                    zip: r[3].to_owned(),
                });
            }
        }
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

    fn apply(&self, id: &str, monitoring: &str) {
        let file = self.write(&format!("{id}.toml"), &agreement(id, monitoring));
        self.as_("alice")
            .args(["agreement", "apply"])
            .arg(file)
            .assert()
            .success();
    }

    /// Files a look-up; returns its request id (or None if refused).
    fn request(&self, who: &str, agreement: &str, subject: &str, why: &str) -> Option<String> {
        let out = self
            .as_(who)
            .args([
                "lookup",
                "--agreement",
                agreement,
                "--dataset",
                "tax_returns",
                "--subject",
                subject,
                "--justification",
                why,
                "--json",
            ])
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let ticket: Value = serde_json::from_slice(&out.stdout).unwrap();
        Some(ticket["id"].as_str().unwrap().to_owned())
    }

    fn alerts(&self) -> Vec<Value> {
        let out = self
            .as_("olga")
            .args(["alerts", "list", "--all", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

fn rules_of(alert: &Value) -> BTreeSet<String> {
    alert["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap().to_owned())
        .collect()
}

fn alert_for_request<'a>(alerts: &'a [Value], request: &str) -> Option<&'a Value> {
    alerts.iter().find(|a| a["request"] == request)
}

/// The rules on the person looked up, each with its case and a near miss,
/// then the alerts through a server after a restart, resolving, and the
/// search for personal data in everything an alert left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_fires_on_its_case_and_stays_quiet_on_a_near_miss() {
    let env = Env::new(&["rita", "rex", "gus", "sid"]);
    env.apply(
        "tigta-cases",
        "[monitoring]\nusual_hours = \"00:00-24:00\"\nusual_days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\ncase_reference = \"CASE-[0-9]{4}\"",
    );
    // An agreement whose usual hour is never now.
    let hour = chrono::Utc::now().format("%H").to_string();
    let night = if hour.as_str() < "12" {
        "20:00-21:00"
    } else {
        "02:00-03:00"
    };
    env.apply(
        "tigta-nights",
        &format!(
            "[monitoring]\nusual_hours = \"{night}\"\nusual_days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]"
        ),
    );

    // Rita's own facts: each points at one person.
    let p = &env.people;
    let (namesake, neighbour, same_zip) = (&p[1], &p[2], &p[3]);
    let surname = namesake.surname();
    let street = neighbour.street();
    let zip = same_zip.zip.clone();
    let area = |z: &str| z[..3].to_owned();
    let clean = |x: &Person| {
        x.surname() != surname
            && x.street() != street
            && x.zip != zip
            && area(&x.zip) != area(&namesake.zip)
    };
    assert!(namesake.street() != street && namesake.zip != zip);
    assert!(neighbour.surname() != surname && neighbour.zip != zip);
    assert!(same_zip.surname() != surname && same_zip.street() != street);
    let others: Vec<&Person> = p[4..].iter().filter(|x| clean(x)).collect();
    let (own, household, colleague, protected) = (others[0], others[1], others[2], others[3]);
    let (asked_twice, near_twice, night_subject, no_case, plain) =
        (others[4], others[5], others[6], others[7], others[8]);
    let facts = env.write(
        "rita.toml",
        &format!(
            "own_id = \"{}\"\naddress = \"9999 {}\"\nzip = \"{zip}\"\nhousehold = [\"{}\"]\ncolleagues = [\"{}\"]\n",
            own.tin,
            neighbour.address.split_once(' ').unwrap().1,
            household.tin,
            colleague.tin
        ),
    );
    let set = env
        .as_("alice")
        .args(["principal", "update", "rita", "--facts"])
        .arg(&facts)
        .output()
        .unwrap();
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let said = String::from_utf8_lossy(&set.stdout).into_owned();
    assert!(
        said.contains("own_id, address, zip, household, colleagues"),
        "{said}"
    );
    assert!(
        !said.contains(&own.tin),
        "facts are never shown back: {said}"
    );
    // Sid shares a family name and a ZIP area (not the ZIP) with one filer.
    let other_zip = format!(
        "{}{}",
        area(&namesake.zip),
        if namesake.zip.ends_with("00") {
            "01"
        } else {
            "00"
        }
    );
    let sid = env.write(
        "sid.toml",
        &format!(
            "surname = \"{}\"\nzip = \"{other_zip}\"\n",
            namesake.name.rsplit(' ').next().unwrap()
        ),
    );
    env.as_("alice")
        .args(["principal", "update", "sid", "--facts"])
        .arg(&sid)
        .assert()
        .success();
    env.as_("alice")
        .args(["subject", "protect", &protected.tin])
        .assert()
        .success();

    let mut expect: Vec<(String, &[&str])> = Vec::new();
    let mut quiet: Vec<String> = Vec::new();
    let ask = |who: &str, ag: &str, x: &Person, why: &str| {
        env.request(who, ag, &x.tin, why)
            .expect("the request is allowed")
    };
    expect.push((ask("rita", "tigta-cases", own, CASE), &["self_access"]));
    expect.push((ask("rita", "tigta-cases", household, CASE), &["household"]));
    expect.push((ask("rita", "tigta-cases", colleague, CASE), &["colleague"]));
    expect.push((ask("sid", "tigta-cases", namesake, CASE), &["same_surname"]));
    // A namesake far away (another ZIP area) is a near miss, if there is one.
    if let Some(far) = p
        .iter()
        .find(|x| x.surname() == surname && area(&x.zip) != area(&namesake.zip))
    {
        quiet.push(ask("sid", "tigta-cases", far, CASE));
    }
    expect.push((
        ask("rita", "tigta-cases", neighbour, CASE),
        &["same_street"],
    ));
    expect.push((ask("rita", "tigta-cases", same_zip, CASE), &["same_zip"]));
    expect.push((
        ask("rita", "tigta-cases", protected, CASE),
        &["protected_subject"],
    ));
    expect.push((
        ask("rita", "tigta-nights", night_subject, CASE),
        &["off_hours"],
    ));
    expect.push((
        ask(
            "rita",
            "tigta-cases",
            no_case,
            "Refund deposited to a shared account",
        ),
        &["no_case_link"],
    ));
    // Near misses: someone unrelated, with a case reference, in hours.
    quiet.push(ask("rita", "tigta-cases", plain, CASE));
    // The same subject again: by another principal it fires …
    quiet.push(ask("rex", "tigta-cases", asked_twice, CASE));
    expect.push((
        ask("gus", "tigta-cases", asked_twice, CASE),
        &["repeat_subject"],
    ));
    // … by the same principal under the same agreement (case work) not.
    quiet.push(ask("rex", "tigta-cases", near_twice, CASE));
    quiet.push(ask("rex", "tigta-cases", near_twice, CASE));
    // Rex's facts are unset: his look-up of Rita's own record is quiet.
    quiet.push(ask("rex", "tigta-cases", own, "CASE-1000 another case"));
    // …except that it is the same subject asked again by another principal.
    let rex_on_own = quiet.pop().unwrap();

    let alerts = env.alerts();
    for (request, rules) in &expect {
        let alert = alert_for_request(&alerts, request)
            .unwrap_or_else(|| panic!("no alert for {rules:?}: {alerts:#?}"));
        let want: BTreeSet<String> = rules.iter().map(|r| (*r).to_owned()).collect();
        assert_eq!(rules_of(alert), want, "{alert:#}");
        assert_eq!(alert["state"], "open");
        assert!(alert["score"].as_f64().unwrap() > 0.0);
    }
    for request in &quiet {
        assert!(
            alert_for_request(&alerts, request).is_none(),
            "a near miss raised an alert: {alerts:#?}"
        );
    }
    let rex_alert = alert_for_request(&alerts, &rex_on_own).unwrap();
    assert_eq!(
        rules_of(rex_alert),
        BTreeSet::from(["repeat_subject".to_owned()])
    );

    // The release joins its request's alert: approve and fetch self-access.
    let self_request = &expect[0].0;
    env.as_("adam")
        .args(["approve", self_request])
        .assert()
        .success();
    env.as_("rita")
        .args(["lookup", "fetch", self_request, "--json"])
        .assert()
        .success();
    let alerts = env.alerts();
    let self_alert = alert_for_request(&alerts, self_request).unwrap().clone();
    let ledger = common::ledger(&env.path("home"));
    let fetch_index = ledger
        .iter()
        .position(|e| e["action"] == "lookup.fetch" && e["request_id"] == self_request.as_str())
        .unwrap();
    assert!(
        self_alert["rests_on"]
            .as_array()
            .unwrap()
            .contains(&Value::from(fetch_index)),
        "{self_alert:#}"
    );

    // Alerts survive a restart: a server opened afresh lists the same ones.
    let server = common::Server::start(&env.path("home"), &[]);
    let http = reqwest::Client::new();
    let listed: Value = http
        .get(format!("http://{}/v1/alerts?state=all", server.addr()))
        .bearer_auth(&env.tokens["olga"])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids = |list: &[Value]| -> BTreeSet<String> {
        list.iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(listed["total"], alerts.len());
    assert_eq!(ids(listed["alerts"].as_array().unwrap()), ids(&alerts));
    // The facts route never echoes a value it refuses.
    let refused = http
        .put(format!("http://{}/v1/principals/rex/facts", server.addr()))
        .bearer_auth(&env.tokens["alice"])
        .json(&serde_json::json!({ "own_id": 123_456_789, "household": "987-65-4321" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let said = refused.text().await.unwrap();
    assert!(
        !said.contains("123456789") && !said.contains("987-65-4321"),
        "{said}"
    );
    // A requester may not read alerts.
    let refused = http
        .get(format!("http://{}/v1/alerts", server.addr()))
        .bearer_auth(&env.tokens["rita"])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    // Resolving needs a reason, is ledgered, and happens once.
    let id = self_alert["id"].as_str().unwrap();
    let short = http
        .post(format!("http://{}/v1/alerts/{id}/resolve", server.addr()))
        .bearer_auth(&env.tokens["olga"])
        .json(&serde_json::json!({ "reason": "ok" }))
        .send()
        .await
        .unwrap();
    assert_eq!(short.status(), 400);
    let reason = "Rita confirmed she opened her own return; warned in writing";
    let resolved: Value = http
        .post(format!("http://{}/v1/alerts/{id}/resolve", server.addr()))
        .bearer_auth(&env.tokens["olga"])
        .json(&serde_json::json!({ "reason": reason }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["resolution"], reason);
    let again = http
        .post(format!("http://{}/v1/alerts/{id}/resolve", server.addr()))
        .bearer_auth(&env.tokens["olga"])
        .json(&serde_json::json!({ "reason": reason }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let (status, log) = server.stop();
    assert!(status.success());

    // After the server: the CLI still sees it resolved.
    let out = env
        .as_("olga")
        .args(["alerts", "show", id])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains("resolved") && shown.contains(reason),
        "{shown}"
    );

    // Nothing personal in the alerts' ledger entries, the CLI's alert
    // output or the server's log: no subject id, name, address, ZIP, fact
    // or justification.
    // An overseer's scan publishes the digest of every alert now.
    env.as_("olga").args(["alerts", "scan"]).assert().success();
    let ledger = common::ledger(&env.path("home"));
    let resolve = ledger
        .iter()
        .find(|e| e["action"] == "alert.resolve")
        .expect("resolving is ledgered");
    assert_eq!(resolve["decision"], "allow");
    // The public alert entries are opaque: no request, agreement, rule or
    // entry they rest on, which would link look-ups of one person or tell
    // that a subject is protected before any approval.
    for e in ledger
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("alert."))
    {
        assert_eq!(e["request_id"], "", "{e}");
        assert!(e["agreement_id"].is_null(), "{e}");
        for (key, _) in e["attributes"].as_array().unwrap().iter().map(|kv| {
            let kv = kv.as_array().unwrap();
            (kv[0].as_str().unwrap().to_owned(), kv[1].clone())
        }) {
            assert!(
                ["alert", "alerts_hmac", "reason_hmac"].contains(&key.as_str()),
                "{e}"
            );
        }
        let text = e.to_string();
        for rule in [
            "protected_subject",
            "same_",
            "repeat_subject",
            "self_access",
        ] {
            assert!(!text.contains(rule), "{e}");
        }
    }
    let alert_entries: Vec<String> = ledger
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("alert."))
        .map(Value::to_string)
        .collect();
    // One resolve and at least the scan's digest; never an entry per alert.
    assert!(
        ledger.iter().any(|e| e["action"] == "alert.digest"),
        "{alert_entries:#?}"
    );
    assert!(alert_entries.len() < expect.len(), "{alert_entries:#?}");
    let list_out = env
        .as_("olga")
        .args(["alerts", "list", "--all"])
        .output()
        .unwrap();
    let everything = format!(
        "{}\n{}\n{}\n{log}",
        alert_entries.join("\n"),
        String::from_utf8_lossy(&list_out.stdout),
        shown
    );
    let mut secrets: Vec<String> = vec![CASE.to_owned(), reason.to_owned()];
    for x in [
        own,
        household,
        colleague,
        namesake,
        neighbour,
        same_zip,
        protected,
        asked_twice,
        night_subject,
        no_case,
        plain,
    ] {
        secrets.extend([x.tin.clone(), x.name.clone(), x.address.clone()]);
    }
    // ZIP codes are digits: look for them standing alone, not inside a
    // timestamp or a ledger index.
    for z in [&zip, &other_zip] {
        let alone = everything.match_indices(z.as_str()).any(|(i, _)| {
            let before = everything[..i].chars().next_back();
            let after = everything[i + z.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_digit())
                && !after.is_some_and(|c| c.is_ascii_digit())
        });
        assert!(
            !alone,
            "a ZIP code leaked into an alert's entry, output or the log"
        );
    }
    for s in &secrets {
        let shown_reason = s == reason && everything.matches(s.as_str()).count() == 1;
        assert!(
            !everything.contains(s.as_str()) || shown_reason,
            "`{s}` leaked into an alert's entry, output or the log"
        );
    }
}

/// Five refusals within an hour are a burst; four are not.
#[test]
fn bursts_of_refusals_raise_fishing_and_four_do_not() {
    let env = Env::new(&["gus", "rex"]);
    env.apply("tigta-cases", "");
    for i in 0..5 {
        assert!(
            env.request("gus", "no-such-agreement", &env.people[i].tin, CASE)
                .is_none()
        );
    }
    for i in 0..4 {
        assert!(
            env.request("rex", "no-such-agreement", &env.people[i].tin, CASE)
                .is_none()
        );
    }
    let alerts = env.alerts();
    let principals: HashMap<String, String> = {
        let out = env
            .as_("alice")
            .args(["principal", "list", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice::<Vec<Value>>(&out.stdout)
            .unwrap()
            .into_iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_owned(),
                    p["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let fishing: Vec<&Value> = alerts
        .iter()
        .filter(|a| rules_of(a).contains("fishing"))
        .collect();
    assert_eq!(fishing.len(), 1, "{alerts:#?}");
    assert_eq!(fishing[0]["principal"], principals["gus"].as_str());
    assert_eq!(fishing[0]["rests_on"].as_array().unwrap().len(), 5);

    // Resolved mid-burst, the burst goes on: the refusals after the
    // resolution raise a new open alert (not the resolved one's id again,
    // silently dropped), and they append nothing but their own refusals.
    let first = fishing[0]["id"].as_str().unwrap().to_owned();
    env.as_("olga")
        .args([
            "alerts",
            "resolve",
            &first,
            "--reason",
            "training exercise, checked",
        ])
        .assert()
        .success();
    let before = common::ledger(&env.path("home")).len();
    for i in 5..8 {
        assert!(
            env.request("gus", "no-such-agreement", &env.people[i].tin, CASE)
                .is_none()
        );
    }
    let alerts = env.alerts();
    let open: Vec<&Value> = alerts
        .iter()
        .filter(|a| rules_of(a).contains("fishing") && a["state"] == "open")
        .collect();
    assert_eq!(open.len(), 1, "{alerts:#?}");
    assert_ne!(open[0]["id"], first.as_str());
    assert_eq!(open[0]["principal"], principals["gus"].as_str());
    let after = common::ledger(&env.path("home"));
    let appended: Vec<&str> = after[before..]
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        appended.iter().all(|a| !a.starts_with("alert.")),
        "{appended:?}"
    );
    let resolved = alerts.iter().find(|a| a["id"] == first.as_str()).unwrap();
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["rests_on"].as_array().unwrap().len(), 5);
}

/// A requester watching the public ledger cannot tell whether their
/// look-up was flagged, or by which rule: a flagged request (a protected
/// subject, every time) and a plain one are followed by the same entries,
/// and alerts are published only in a periodic digest that carries
/// neither ids nor a count.
#[test]
fn the_public_ledger_does_not_tell_a_requester_their_look_up_was_flagged() {
    let env = Env::new(&["rex"]);
    env.apply("tigta-cases", "");
    let (protected, plain, also_protected) = (&env.people[0], &env.people[1], &env.people[2]);
    for p in [protected, also_protected] {
        env.as_("alice")
            .args(["subject", "protect", &p.tin])
            .assert()
            .success();
    }
    let after_request = |subject: &Person| -> Vec<String> {
        let start = common::ledger(&env.path("home")).len();
        env.request("rex", "tigta-cases", &subject.tin, CASE)
            .expect("allowed");
        // What the requester can read once detection has run (the local
        // command ran it after answering; an overseer's listing runs it too).
        let _ = env.alerts();
        common::ledger(&env.path("home"))[start..]
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_owned())
            .collect()
    };
    let flagged = [after_request(protected), after_request(also_protected)];
    let quiet = after_request(plain);
    assert_eq!(flagged[0], quiet);
    assert_eq!(flagged[1], quiet);
    assert!(quiet.iter().all(|a| !a.starts_with("alert.")), "{quiet:?}");
    let alerts = env.alerts();
    assert!(
        alerts
            .iter()
            .any(|a| rules_of(a).contains("protected_subject")),
        "detection ran: {alerts:#?}"
    );
    // Digests, forced by a scan: one with alerts, two without, alike, and
    // no two equal (a digest of no alerts is not a recognisable constant).
    for _ in 0..3 {
        env.as_("olga").args(["alerts", "scan"]).assert().success();
    }
    let digests: Vec<Value> = common::ledger(&env.path("home"))
        .into_iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("alert."))
        .collect();
    assert_eq!(digests.len(), 3, "{digests:#?}");
    for d in &digests {
        assert_eq!(d["action"], "alert.digest");
        assert_eq!(d["request_id"], "");
        let keys: Vec<&str> = d["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| kv[0].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["alerts_hmac"], "{d}");
    }
    assert_ne!(digests[0]["attributes"], digests[1]["attributes"]);
    assert_ne!(digests[1]["attributes"], digests[2]["attributes"]);
    // Published alerts name their digest.
    let shown = env.alerts();
    assert!(
        shown.iter().all(|a| a["digest_index"].is_u64()),
        "{shown:#?}"
    );
}

/// A requester reading five times their peers in a day is flagged; a
/// colleague having a somewhat busier day is not.
#[test]
fn a_requester_far_above_peers_is_flagged_and_a_busy_one_is_not() {
    let env = Env::new(&["p1", "p2", "p3", "p4"]);
    env.apply("tigta-cases", "");
    let mut next = env.people.iter();
    for (who, n) in [("p1", 2), ("p2", 2), ("p3", 3), ("p4", 15)] {
        for _ in 0..n {
            let x = next.next().unwrap();
            env.request(who, "tigta-cases", &x.tin, CASE).unwrap();
        }
    }
    let scan = env.as_("olga").args(["alerts", "scan"]).output().unwrap();
    assert!(
        scan.status.success(),
        "{}",
        String::from_utf8_lossy(&scan.stderr)
    );
    // Scanning twice raises nothing new.
    env.as_("olga").args(["alerts", "scan"]).assert().success();
    let alerts = env.alerts();
    let peer: Vec<&Value> = alerts
        .iter()
        .filter(|a| rules_of(a).contains("peer_deviation"))
        .collect();
    assert_eq!(peer.len(), 1, "{alerts:#?}");
    let detail = peer[0]["rules"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("look-ups: 15"), "{detail}");
    assert_eq!(peer[0]["rests_on"].as_array().unwrap().len(), 15);
}

/// Bad facts files and bad alert commands: clear errors, nothing created,
/// nothing changed.
#[test]
fn bad_facts_and_bad_alert_commands_are_refused_clearly() {
    let env = Env::new(&["rita"]);
    for (text, why) in [
        ("own_id = 123456789\n", "not valid at line 1"),
        ("nickname = \"x\"\n", "not valid at line 1"),
        ("surname = \"\"\n", "1-200 printable characters"),
        ("household = [\"a\u{7}b\"]\n", "not valid"),
    ] {
        let file = env.write("bad.toml", text);
        let out = env
            .as_("alice")
            .args([
                "principal",
                "add",
                "newbie",
                "--org",
                "TIGTA",
                "--role",
                "requester",
                "--facts",
            ])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success());
        assert!(err.contains(why), "{text}: {err}");
        assert!(!err.contains("123456789"), "the value is not echoed: {err}");
    }
    let list = env
        .as_("alice")
        .args(["principal", "list", "--json"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains("newbie"));
    // Only admins set facts.
    let file = env.write("ok.toml", "zip = \"12345\"\n");
    env.as_("rita")
        .args(["principal", "update", "rita", "--facts"])
        .arg(&file)
        .assert()
        .failure()
        .stderr(predicates::str::contains("only an admin"));
    // Only overseers read or resolve alerts.
    env.as_("rita")
        .args(["alerts", "list"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("only an overseer"));
    env.as_("olga")
        .args(["alerts", "show", "alr_0000000000000000"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("no alert"));
    env.as_("olga")
        .args([
            "alerts",
            "resolve",
            "alr_0000000000000000",
            "--reason",
            "short",
        ])
        .assert()
        .failure()
        .stderr(predicates::str::contains("at least").or(predicates::str::contains("10-4000")));
}

/// When the rules cannot run on an entry (here: a principal's sealed facts
/// were damaged in the catalogue), detection says so as an alert naming
/// the entry, and goes on with the next entries: nothing is skipped
/// silently, and the look-up itself was never held up.
#[test]
fn a_failure_of_detection_is_itself_an_alert() {
    let env = Env::new(&["rita", "rex"]);
    env.apply(
        "tigta-cases",
        "[monitoring]\ncase_reference = \"CASE-[0-9]{4}\"",
    );
    let facts = env.write("rita.toml", "zip = \"00000\"\n");
    env.as_("alice")
        .args(["principal", "update", "rita", "--facts"])
        .arg(&facts)
        .assert()
        .success();
    let db = env.path("home").join("custos.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection as _;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let changed = sqlx::query("UPDATE principal_facts SET facts_sealed = X'00112233'")
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(changed.rows_affected(), 1);
    });
    let p = &env.people;
    let broken = env
        .request("rita", "tigta-cases", &p[0].tin, CASE)
        .expect("detection never holds up a look-up");
    // Rex's look-up without a case reference comes after the broken entry:
    // the rules still run on it.
    let after = env
        .request("rex", "tigta-cases", &p[1].tin, "Checking this refund")
        .unwrap();
    let alerts = env.alerts();
    let failed: Vec<&Value> = alerts
        .iter()
        .filter(|a| rules_of(a).contains("detection_failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{alerts:#?}");
    let ledger = common::ledger(&env.path("home"));
    let index = ledger
        .iter()
        .position(|e| e["action"] == "lookup.request" && e["request_id"] == broken.as_str())
        .unwrap();
    assert_eq!(failed[0]["rests_on"], serde_json::json!([index]));
    let rex = alert_for_request(&alerts, &after).expect("the rules ran after the failure");
    assert!(rules_of(rex).contains("no_case_link"));
}

/// An insider cannot push an alert about them out of sight by raising a
/// flood of weaker ones: the list is by score, and says how many there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_weak_alerts_does_not_hide_a_strong_one() {
    let env = Env::new(&["rita", "gus"]);
    env.apply(
        "tigta-cases",
        "[monitoring]\ncase_reference = \"CASE-[0-9]{4}\"",
    );
    let own = env.people[0].tin.clone();
    let facts = env.write("rita.toml", &format!("own_id = \"{own}\"\n"));
    env.as_("alice")
        .args(["principal", "update", "rita", "--facts"])
        .arg(&facts)
        .assert()
        .success();
    let strong = env.request("rita", "tigta-cases", &own, CASE).unwrap();
    let server = common::Server::start(
        &env.path("home"),
        &["--rate", "100000", "--burst", "100000"],
    ); // 205 requests outrun the default rate on a fast machine
    let http = reqwest::Client::new();
    for _ in 0..205 {
        let r = http
            .post(format!("http://{}/v1/lookups", server.addr()))
            .bearer_auth(&env.tokens["gus"])
            .json(
                &serde_json::json!({"agreement": "tigta-cases", "dataset": "tax_returns",
                "subject": env.people[1].tin, "justification": "routine review of refund"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let scan = http
        .post(format!("http://{}/v1/alerts/scan", server.addr()))
        .bearer_auth(&env.tokens["olga"])
        .send()
        .await
        .unwrap();
    assert_eq!(scan.status(), 200);
    let page: Value = http
        .get(format!("http://{}/v1/alerts", server.addr()))
        .bearer_auth(&env.tokens["olga"])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(page["total"].as_u64().unwrap() >= 206, "{}", page["total"]);
    let first = &page["alerts"][0];
    assert_eq!(first["request"], strong.as_str(), "{first:#}");
    assert!(rules_of(first).contains("self_access"));
    let (status, _) = server.stop();
    assert!(status.success());
}

/// A request's alert, once resolved, stays the request's only alert: its
/// fetch (off hours again) adds nothing and raises no second alert that
/// would put an already judged request back in the overseer's queue.
#[test]
fn a_resolved_request_is_not_raised_again_by_its_fetch() {
    let env = Env::new(&["rita"]);
    let hour = chrono::Utc::now().format("%H").to_string();
    let night = if hour.as_str() < "12" {
        "20:00-21:00"
    } else {
        "02:00-03:00"
    };
    env.apply(
        "tigta-nights",
        &format!(
            "[monitoring]\nusual_hours = \"{night}\"\nusual_days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]"
        ),
    );
    let request = env
        .request("rita", "tigta-nights", &env.people[0].tin, CASE)
        .expect("allowed");
    let alerts = env.alerts();
    let first = alert_for_request(&alerts, &request).expect("off hours");
    let id = first["id"].as_str().unwrap().to_owned();
    env.as_("olga")
        .args([
            "alerts",
            "resolve",
            &id,
            "--reason",
            "night shift on a court deadline",
        ])
        .assert()
        .success();
    env.as_("adam")
        .args(["approve", &request])
        .assert()
        .success();
    env.as_("rita")
        .args(["lookup", "fetch", &request, "--json"])
        .assert()
        .success();
    let alerts = env.alerts();
    let on_request: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["request"] == request.as_str())
        .collect();
    assert_eq!(on_request.len(), 1, "{alerts:#?}");
    assert_eq!(on_request[0]["id"], id.as_str());
    assert_eq!(on_request[0]["state"], "resolved");
}
