//! Agreements through the CLI: apply (versioned, hash in the ledger), list,
//! show, suspend/resume/revoke, and every refusal ledgered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use predicates::prelude::*;
use sha2::Digest;
use tempfile::TempDir;

struct Env {
    dir: TempDir,
    admin: String,
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../docs/examples/agreement-{name}.toml"))
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut env = Self {
            dir,
            admin: String::new(),
        };
        env.custos(None).arg("init").assert().success();
        let home = env.path("home");
        env.admin = common::add_principal(&home, None, "alice", "IRS", "admin");
        common::ingest_synthetic(
            &home,
            &env.admin,
            &env.path("synthetic"),
            300,
            &["tax_returns", "deaths"],
        );
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn custos(&self, token: Option<&str>) -> assert_cmd::Command {
        common::custos(&self.path("home"), token)
    }

    fn admin(&self) -> assert_cmd::Command {
        self.custos(Some(&self.admin))
    }

    fn apply(&self, file: &Path) -> assert_cmd::assert::Assert {
        self.admin().args(["agreement", "apply"]).arg(file).assert()
    }

    fn ledger(&self) -> Vec<serde_json::Value> {
        common::ledger(&self.path("home"))
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, text).unwrap();
        p
    }
}

#[test]
fn apply_versions_and_record_the_hash() {
    let env = Env::new();
    for name in ["identified", "aggregate", "pseudonymous", "match"] {
        env.apply(&example(name))
            .success()
            .stdout(predicate::str::contains("version 1"));
    }
    env.apply(&example("identified"))
        .success()
        .stdout(predicate::str::contains(
            "`tigta-refund-fraud-2026` version 2",
        ));
    let list = env
        .admin()
        .args(["agreement", "list", "--json"])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 4);
    let tigta = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "tigta-refund-fraud-2026")
        .unwrap();
    assert_eq!(
        (tigta["version"].as_u64(), tigta["state"].as_str()),
        (Some(2), Some("active"))
    );
    // The ledger holds the version's hash, equal to the file's SHA-256.
    let text = fs::read(example("identified")).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&text));
    let applied: Vec<_> = env
        .ledger()
        .into_iter()
        .filter(|e| {
            e["action"] == "agreement.apply" && e["agreement_id"] == "tigta-refund-fraud-2026"
        })
        .collect();
    assert_eq!(applied.len(), 2);
    assert_eq!(applied[1]["agreement_version"], 2);
    assert!(applied[1]["attributes"].to_string().contains(&sha));
    env.admin()
        .args(["agreement", "show", "tigta-refund-fraud-2026", "--at", "1"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("version 1 of 2 (active)")
                .and(predicate::str::contains("approvals = 1")),
        );
}

#[test]
fn refusals_are_clear_and_ledgered() {
    let env = Env::new();
    let identified = fs::read_to_string(example("identified")).unwrap();
    let cases = [
        (
            "malformed.toml",
            "id = ".to_owned(),
            "agreement is not valid",
        ),
        (
            "column.toml",
            identified.replace("\"bank_account\"", "\"salary\""),
            "dataset `tax_returns` has no column `salary`",
        ),
        (
            "dataset.toml",
            identified.replace("dataset = \"tax_returns\"", "dataset = \"payroll\""),
            "no dataset `payroll`",
        ),
        (
            "approvals.toml",
            identified.replace("approvals = 1", "approvals = 0"),
            "at least 1 (the two-person rule)",
        ),
        (
            "scope.toml",
            identified.replace(
                "row_scope = \"tax_year >= 2023\"",
                "row_scope = \"agi > 0\"",
            ),
            "row scope names column `agi`",
        ),
        (
            "match.toml",
            fs::read_to_string(example("match"))
                .unwrap()
                .replace("valid_until = 2027-12-31", "valid_until = 2028-01-01"),
            "may run at most 18 months",
        ),
        (
            // The first README shipped an example that had expired, and
            // `apply` took it without a word.
            "expired.toml",
            identified
                .replace("valid_from = 2026-01-01", "valid_from = 2025-01-01")
                .replace("valid_until = 2030-12-31", "valid_until = 2025-06-30"),
            "the agreement expired on 2025-06-30",
        ),
    ];
    for (file, text, expected) in &cases {
        let path = env.write(file, text);
        env.apply(&path)
            .failure()
            .stderr(predicate::str::contains(*expected));
    }
    let denials = env
        .ledger()
        .into_iter()
        .filter(|e| e["action"] == "agreement.apply" && e["decision"] == "deny")
        .count();
    assert_eq!(denials, cases.len());
    // A requester may not apply agreements.
    let out = env
        .admin()
        .args([
            "principal",
            "add",
            "bob",
            "--org",
            "GAO",
            "--role",
            "requester",
        ])
        .output()
        .unwrap();
    let bob = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    env.custos(Some(&bob))
        .args(["agreement", "apply"])
        .arg(example("aggregate"))
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "denied: only an admin may apply agreements",
        ));
    let list = env
        .admin()
        .args(["agreement", "list", "--json"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(list.stdout).unwrap().trim(), "[]");
    // A new version may not change a grant's privacy measure (its budget is
    // kept in one measure): the red-team run found the next query ledgered
    // as allowed, then failing, and the agreement unusable.
    let aggregate = fs::read_to_string(example("aggregate")).unwrap();
    env.apply(&env.write("zcdp.toml", &aggregate)).success();
    env.apply(&env.write(
        "pure.toml",
        &aggregate
            .replace("measure = \"zcdp\"", "measure = \"pure\"")
            .replace("per_query = 0.1", "per_query = 0.5"),
    ))
    .failure()
    .stderr(predicate::str::contains(
        "the privacy measure on `tax_returns` cannot change between versions (zcdp before, pure now)",
    ));
    // One that starts later is taken, with a note.
    let later = env.write(
        "later.toml",
        &identified
            .replace("valid_from = 2026-01-01", "valid_from = 2099-01-01")
            .replace("valid_until = 2030-12-31", "valid_until = 2099-12-31"),
    );
    env.apply(&later)
        .success()
        .stderr(predicate::str::contains("is not in force until 2099-01-01"));
}

#[test]
fn suspend_resume_revoke() {
    let env = Env::new();
    env.apply(&example("aggregate")).success();
    let id = "gao-refund-statistics";
    env.admin()
        .args(["agreement", "suspend", id, "--reason", "audit pending"])
        .assert()
        .success();
    env.admin()
        .args(["agreement", "show", id])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("(suspended)").and(predicate::str::contains("audit pending")),
        );
    env.admin()
        .args(["agreement", "resume", id])
        .assert()
        .success();
    env.admin()
        .args(["agreement", "revoke", id, "--reason", "ended"])
        .assert()
        .success();
    env.admin()
        .args(["agreement", "resume", id])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "is revoked; it cannot become active",
        ));
    env.apply(&example("aggregate"))
        .failure()
        .stderr(predicate::str::contains(
            "a revoked agreement cannot get new versions",
        ));
    env.admin()
        .args(["agreement", "suspend", "nope", "--reason", "x"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no agreement `nope`"));
    let actions: Vec<String> = env
        .ledger()
        .into_iter()
        .filter(|e| e["agreement_id"] == id)
        .map(|e| {
            format!(
                "{}:{}",
                e["action"].as_str().unwrap(),
                e["decision"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            "agreement.apply:allow",
            "agreement.suspend:allow",
            "agreement.resume:allow",
            "agreement.revoke:allow"
        ]
    );
    // The free-text reason stays out of the public ledger.
    assert!(
        !serde_json::to_string(&env.ledger())
            .unwrap()
            .contains("audit pending")
    );
}
