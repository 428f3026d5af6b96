//! Principals through the CLI: bootstrap, roles, tokens (hashed at rest,
//! shown once), wrong/revoked tokens, and every denial in the ledger.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::PathBuf;

use predicates::prelude::*;
use tempfile::TempDir;

struct Env {
    dir: TempDir,
}

impl Env {
    fn new() -> Self {
        let env = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        env.custos(None).arg("init").assert().success();
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn custos(&self, token: Option<&str>) -> assert_cmd::Command {
        common::custos(&self.path("home"), token)
    }

    /// Adds a principal as `token`'s holder and returns the new token.
    fn add(&self, token: Option<&str>, name: &str, roles: &[&str]) -> String {
        let mut cmd = self.custos(token);
        cmd.args(["principal", "add", name, "--org", "IRS"]);
        for r in roles {
            cmd.args(["--role", r]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn ledger(&self) -> Vec<serde_json::Value> {
        common::ledger(&self.path("home"))
    }
}

#[test]
fn bootstrap_then_roles_decide_and_denials_are_ledgered() {
    let env = Env::new();
    let admin = env.add(None, "alice", &["admin"]);
    assert!(
        admin.starts_with("custos_p") && admin.len() == 7 + 17 + 1 + 64,
        "{admin}"
    );
    // The bootstrap exception is over.
    env.custos(None)
        .args([
            "principal",
            "add",
            "mallory",
            "--org",
            "X",
            "--role",
            "admin",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "act as one by setting CUSTOS_TOKEN",
        ));
    let requester = env.add(Some(&admin), "bob", &["requester"]);
    env.add(Some(&admin), "carol", &["approver", "overseer"]);
    // A requester may not add principals; the denial names the actor in the ledger.
    env.custos(Some(&requester))
        .args(["principal", "add", "eve", "--org", "X", "--role", "admin"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "denied: only an admin may add principals",
        ));
    let entries = env.ledger();
    let last = entries.last().unwrap();
    assert_eq!(last["action"], "principal.add");
    assert_eq!(last["decision"], "deny");
    assert!(last["actor"].as_str().unwrap().starts_with('p'));
    // Names of people are not in the ledger, only principal ids.
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains("alice") && !text.contains("bob"), "{text}");
}

#[test]
fn wrong_malformed_and_revoked_tokens_fail_alike() {
    let env = Env::new();
    let admin = env.add(None, "alice", &["admin"]);
    let bob = env.add(Some(&admin), "bob", &["overseer"]);
    let wrong_secret = format!(
        "{}{}",
        &bob[..bob.len() - 1],
        if bob.ends_with('0') { '1' } else { '0' }
    );
    let unknown_id = format!("custos_p0123456789abcdef_{}", "a".repeat(64));
    for bad in [
        wrong_secret.as_str(),
        unknown_id.as_str(),
        "not-a-token",
        "custos_",
    ] {
        env.custos(Some(bad))
            .args(["principal", "list"])
            .assert()
            .failure()
            .stderr(predicate::str::contains(
                "the API token is not valid (malformed, unknown or revoked)",
            ))
            .stderr(predicate::str::contains(bad).not());
    }
    env.custos(Some(&bob))
        .args(["principal", "list"])
        .assert()
        .success();
    env.custos(Some(&admin))
        .args(["principal", "revoke", "bob"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Revoked `bob`"));
    env.custos(Some(&bob))
        .args(["principal", "list"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("the API token is not valid"));
    let list = env
        .custos(Some(&admin))
        .args(["principal", "list", "--json"])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(list[1]["revoked_at"].is_string());
    // Every failed authentication is a ledger entry.
    let denials = env
        .ledger()
        .iter()
        .filter(|e| e["action"] == "auth.token" && e["decision"] == "deny")
        .count();
    assert_eq!(denials, 5);
}

#[test]
fn tokens_are_never_stored_or_listed() {
    let env = Env::new();
    let admin = env.add(None, "alice", &["admin"]);
    let secret = admin.rsplit('_').next().unwrap().to_owned();
    let out = env
        .custos(Some(&admin))
        .args(["principal", "list", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("alice") && !text.contains(&secret));
    let mut stack = vec![env.path("home")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{}",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn actions_need_the_right_principal_once_principals_exist() {
    let env = Env::new();
    let admin = env.add(None, "alice", &["admin"]);
    let requester = env.add(Some(&admin), "bob", &["requester"]);
    fs::write(
        env.path("s.toml"),
        "[[columns]]\nname = \"id\"\nclass = \"subject_id\"\ntype = \"string\"\n",
    )
    .unwrap();
    fs::write(env.path("d.csv"), "id\n666-00-0001\n").unwrap();
    let ingest = |token: Option<&str>| {
        env.custos(token)
            .args(["dataset", "ingest", "--name", "t", "--schema"])
            .arg(env.path("s.toml"))
            .arg(env.path("d.csv"))
            .assert()
    };
    ingest(None)
        .failure()
        .stderr(predicate::str::contains("setting CUSTOS_TOKEN"));
    ingest(Some(&requester))
        .failure()
        .stderr(predicate::str::contains(
            "denied: only an admin may ingest datasets",
        ));
    ingest(Some(&admin)).success();
}

#[test]
fn bad_principal_arguments_get_clear_errors() {
    let env = Env::new();
    env.custos(None)
        .args([
            "principal",
            "add",
            "bob",
            "--org",
            "IRS",
            "--role",
            "requester",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "the first principal must be an admin",
        ));
    env.custos(None)
        .args([
            "principal",
            "add",
            "Bad Name",
            "--org",
            "IRS",
            "--role",
            "admin",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "principal name `Bad Name` is not allowed",
        ));
    env.custos(None)
        .args([
            "principal",
            "add",
            "alice",
            "--org",
            "IRS",
            "--role",
            "auditor",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains("unknown role `auditor`"));
    let admin = env.add(None, "alice", &["admin"]);
    env.custos(Some(&admin))
        .args([
            "principal",
            "add",
            "alice",
            "--org",
            "IRS",
            "--role",
            "admin",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains("principal `alice` already exists"));
    env.custos(Some(&admin))
        .args(["principal", "revoke", "nobody"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no principal `nobody`"));
}
