//! The ledger through the CLI: every action is recorded, proofs verify (also
//! in Go), tampering is caught with a message that says where, and a damaged
//! ledger stops every action (fail closed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use predicates::prelude::*;
use tempfile::TempDir;

const SCHEMA: &str = "[[columns]]\nname = \"tin\"\nclass = \"subject_id\"\ntype = \"string\"\n\
[[columns]]\nname = \"wages\"\nclass = \"attribute\"\ntype = \"decimal\"\nbounds = [0, 1000]\n";

struct Env {
    dir: TempDir,
}

impl Env {
    fn new() -> Self {
        let env = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        env.custos()
            .args(["init", "--origin", "tax.example.gov/custos"])
            .assert()
            .success();
        fs::write(env.path("s.toml"), SCHEMA).unwrap();
        fs::write(
            env.path("ok.csv"),
            "tin,wages\n666-01-0001,10\n666-01-0002,20\n",
        )
        .unwrap();
        fs::write(env.path("bad.csv"), "tin,wages\n666-01-0001,lots\n").unwrap();
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ledger(&self) -> PathBuf {
        self.path("home").join("ledger")
    }

    fn custos(&self) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::cargo_bin("custos").unwrap();
        cmd.env("CUSTOS_HOME", self.path("home"))
            .env_remove("CUSTOS_MASTER_KEY");
        cmd
    }

    fn ingest(&self, name: &str, csv: &str) -> assert_cmd::assert::Assert {
        self.custos()
            .args(["dataset", "ingest", "--name", name, "--schema"])
            .arg(self.path("s.toml"))
            .arg(self.path(csv))
            .assert()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.custos().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn checkpoint_to(&self, file: &str) -> PathBuf {
        let out = self
            .custos()
            .args(["ledger", "checkpoint"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let p = self.path(file);
        fs::write(&p, &out.stdout).unwrap();
        p
    }
}

#[test]
fn every_action_is_in_the_ledger_allowed_or_failed() {
    let env = Env::new();
    env.ingest("good", "ok.csv").success();
    env.ingest("bad", "bad.csv").failure();
    env.ingest("Bad Name", "ok.csv").failure();
    let entries = env.json(&["ledger", "show", "--json"]);
    let summary: Vec<(String, String)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["decision"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("instance.init", "recorded"),
        ("dataset.ingest", "allow"),
        ("dataset.ingest", "error"),
        ("dataset.ingest", "error"),
    ];
    assert_eq!(summary, expected.map(|(a, d)| (a.to_owned(), d.to_owned())));
    assert_eq!(entries[2]["reasons"][0], "input rejected");
    // No identifier of the input anywhere in the ledger's files.
    for file in walk(&env.ledger()) {
        let bytes = fs::read(&file).unwrap();
        assert!(
            !bytes.windows(11).any(|w| w == b"666-01-0001"),
            "{}",
            file.display()
        );
    }
    let text = env.custos().args(["ledger", "show"]).output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("4 entries") && text.contains("reason: input rejected"),
        "{text}"
    );
}

#[test]
fn proofs_verify_here_and_in_go() {
    let env = Env::new();
    env.ingest("a", "ok.csv").success();
    env.ingest("b", "ok.csv").success();
    env.ingest("c", "ok.csv").success();
    let cp = env.checkpoint_to("cp");
    let key = String::from_utf8(
        env.custos()
            .args(["ledger", "public-key"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(key.starts_with("tax.example.gov/custos+"), "{key}");
    let inclusion: Vec<serde_json::Value> = (0..4)
        .map(|i| env.json(&["ledger", "prove", "--index", &i.to_string(), "--json"]))
        .collect();
    let consistency: Vec<serde_json::Value> = (1..4)
        .map(|m| env.json(&["ledger", "consistency", "--old", &m.to_string(), "--json"]))
        .collect();
    let vectors = serde_json::json!({
        "vkey": key.trim(),
        "checkpoint": fs::read_to_string(&cp).unwrap(),
        "inclusion": inclusion,
        "consistency": consistency,
    });
    let path = env.path("vectors.json");
    fs::write(&path, serde_json::to_vec(&vectors).unwrap()).unwrap();
    let program = Path::new(env!("CARGO_MANIFEST_DIR")).join("../custos-ledger/tests/go/main.go");
    let out = std::process::Command::new("go")
        .arg("run")
        .arg(&program)
        .arg(&path)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", env.path("gocache"))
        .output()
        .expect("`go` must be installed (scripts/test installs it)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(
            "checkpoint of size 4 verified; 4 inclusion and 3 consistency proofs verified"
        ),
        "{said}"
    );
    // Bad requests get clear errors.
    env.custos()
        .args(["ledger", "prove", "--index", "9"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("index 9 is not below size 4"));
    env.custos()
        .args(["ledger", "consistency", "--old", "5"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "old size 5 must be between 1 and 4",
        ));
}

#[test]
fn verify_against_a_kept_checkpoint_and_catch_tampering() {
    let env = Env::new();
    env.ingest("a", "ok.csv").success();
    let kept = env.checkpoint_to("kept");
    env.ingest("b", "ok.csv").success();
    env.custos()
        .args(["ledger", "verify", "--checkpoint"])
        .arg(&kept)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "consistent with the older checkpoint of size 2",
        ));
    // An outside overseer verifies a copy with only the public key.
    let key = String::from_utf8(
        env.custos()
            .args(["ledger", "public-key"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let copy = env.path("copy");
    copy_dir(&env.ledger(), &copy);
    env.custos()
        .args(["ledger", "verify", "--dir"])
        .arg(&copy)
        .args(["--key", key.trim(), "--checkpoint"])
        .arg(&kept)
        .assert()
        .success();
    // One flipped byte in the entry bundle: verify fails and says where.
    let bundle = copy.join("tile/entries/000.p/3");
    let mut bytes = fs::read(&bundle).unwrap();
    bytes[10] ^= 0x20;
    fs::write(&bundle, &bytes).unwrap();
    env.custos()
        .args(["ledger", "verify", "--dir"])
        .arg(&copy)
        .args(["--key", key.trim(), "--checkpoint"])
        .arg(&kept)
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("ledger verification failed")
                .and(predicate::str::contains("entry 0")),
        );
    // The same flip in the home's own published bundle: `show` and
    // `prove --json` refuse to present the altered entry as the ledger's.
    let partial = env.ledger().join("tile/entries/000.p");
    let newest = fs::read_dir(&partial)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let bundle = partial.join(newest.to_string());
    let mut bytes = fs::read(&bundle).unwrap();
    bytes[10] ^= 0x20;
    fs::write(&bundle, &bytes).unwrap();
    env.custos()
        .args(["ledger", "show"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "entry 0 does not hash to its leaf",
        ));
    env.custos()
        .args(["ledger", "prove", "--index", "0", "--json"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("bundle was altered"));
    bytes[10] ^= 0x20;
    fs::write(&bundle, &bytes).unwrap();
    // A checkpoint file that is not one: a clear error.
    fs::write(env.path("junk"), "not a checkpoint").unwrap();
    env.custos()
        .args(["ledger", "verify", "--checkpoint"])
        .arg(env.path("junk"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("older checkpoint"));
}

#[test]
fn a_damaged_ledger_stops_every_action() {
    let env = Env::new();
    env.ingest("a", "ok.csv").success();
    // The journal loses its entries: the signed checkpoint still covers them.
    fs::write(env.ledger().join("journal"), b"").unwrap();
    env.ingest("b", "ok.csv")
        .failure()
        .stderr(predicate::str::contains("ledger is damaged"));
    // Listing acts through the broker like everything else: it stops too.
    env.custos()
        .args(["dataset", "list", "--json"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("ledger is damaged"));
    // Nothing was ingested behind the ledger's back.
    assert_eq!(
        fs::read_dir(env.path("home").join("datasets"))
            .unwrap()
            .count(),
        1
    );
    env.custos()
        .args(["ledger", "checkpoint"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("acknowledged entries are missing"));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            fs::copy(&p, &target).unwrap();
        }
    }
}

/// The ledger key has its own source: with only the home (master key and
/// catalogue), no ledger action runs; with the key from the environment
/// instead of the file, they do. Rotating the key is ledgered and signed
/// by the old key; verification from the old key follows the change, a
/// kept checkpoint from before still proves consistency, and the old key
/// no longer opens the ledger.
#[test]
fn the_ledger_key_stands_apart_and_rotates_with_a_signed_change() {
    let env = Env::new();
    env.ingest("good", "ok.csv").success();
    let old_key = String::from_utf8(
        env.custos()
            .args(["ledger", "public-key"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let before = env.checkpoint_to("before.note");
    let key_file = env.path("home.ledger.key");
    let parked = env.path("parked.key");

    // The home alone cannot act on the ledger.
    fs::rename(&key_file, &parked).unwrap();
    env.custos()
        .args(["ledger", "checkpoint"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("ledger signing key file"));
    // The key from the environment works in its place.
    let seed = fs::read_to_string(&parked).unwrap();
    env.custos()
        .env("CUSTOS_LEDGER_KEY", seed.trim())
        .args(["ledger", "checkpoint"])
        .assert()
        .success();
    fs::rename(&parked, &key_file).unwrap();

    // A denied rotation (a requester) is ledgered and breaks nothing.
    let admin = String::from_utf8(
        env.custos()
            .args([
                "principal",
                "add",
                "alice",
                "--org",
                "IRS",
                "--role",
                "admin",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let requester = String::from_utf8(
        env.custos()
            .env("CUSTOS_TOKEN", &admin)
            .args([
                "principal",
                "add",
                "gina",
                "--org",
                "GAO",
                "--role",
                "requester",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let gina = (admin, requester);
    env.custos()
        .env("CUSTOS_TOKEN", &gina.1)
        .args(["ledger", "rotate-key"])
        .assert()
        .failure();
    env.custos().args(["ledger", "verify"]).assert().success();

    // Rotate: the new key goes to a new file; the old file is left alone
    // (a copy of the home may share it).
    let out = env
        .custos()
        .env("CUSTOS_TOKEN", &gina.0)
        .args(["ledger", "rotate-key"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_ne!(new_key, old_key);
    assert_eq!(fs::read_to_string(&key_file).unwrap(), seed);
    assert!(String::from_utf8_lossy(&out.stderr).contains("destroy it"));
    let entries = env.json(&["ledger", "show", "--json"]);
    let change = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "ledger.key_change")
        .unwrap();
    assert!(change.to_string().contains(&old_key), "{change}");
    env.custos()
        .env("CUSTOS_TOKEN", &gina.0)
        .args(["dataset", "ingest", "--name", "more", "--schema"])
        .arg(env.path("s.toml"))
        .arg(env.path("ok.csv"))
        .assert()
        .success();

    // Verify from the old key: the chain is followed, the old checkpoint
    // still proves consistency.
    let report = env.json(&[
        "ledger",
        "verify",
        "--key",
        &old_key,
        "--dir",
        env.ledger().to_str().unwrap(),
        "--checkpoint",
        before.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(report["key_changes"], 1);
    assert_eq!(report["signing_key"], new_key.as_str());
    env.custos()
        .args(["ledger", "verify"])
        .assert()
        .success()
        .stdout(predicate::str::contains("changed 1 time(s)").not());
    // The old key cannot sign for the ledger any more.
    env.custos()
        .env("CUSTOS_LEDGER_KEY", seed.trim())
        .args(["ledger", "checkpoint"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("not this home's"));
}

/// An insider with the home but not the ledger key appends a well-formed
/// journal record: the next command does not sign it, and the ledger
/// records that a final record was cut (where an auditor reads it).
#[test]
fn a_record_forged_into_the_journal_is_cut_and_the_cut_is_ledgered() {
    use std::io::Write as _;
    let env = Env::new();
    env.ingest("good", "ok.csv").success();
    let forged = custos_ledger::Entry::new(
        1_700_000_000_000_000,
        "rita",
        "lookup.fetch",
        custos_ledger::Decision::Allow,
    )
    .encode()
    .unwrap();
    let leaf = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update([0u8]);
        h.update(&forged);
        h.finalize()
    };
    let mut journal = fs::OpenOptions::new()
        .append(true)
        .open(env.ledger().join("journal"))
        .unwrap();
    journal
        .write_all(&(forged.len() as u32).to_be_bytes())
        .unwrap();
    journal.write_all(&leaf).unwrap();
    journal.write_all(&forged).unwrap();
    drop(journal);
    env.custos()
        .args(["ledger", "checkpoint"])
        .assert()
        .success();
    let entries = env.json(&["ledger", "show", "--json"]);
    let actions: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(!actions.contains(&"lookup.fetch"), "{actions:?}");
    assert_eq!(actions.last(), Some(&"ledger.recovered"), "{actions:?}");
    env.custos().args(["ledger", "verify"]).assert().success();
}
