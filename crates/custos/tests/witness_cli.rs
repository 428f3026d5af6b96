//! Witnesses end to end, as separate `custos witness serve` processes on
//! loopback: a ledger rewritten and re-signed with the instance key is
//! refused by every witness and fails `ledger verify` against the policy;
//! a witness that goes down delays the quorum, shows in `ledger status`,
//! holds releases back under `--max-unwitnessed`, and loses nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A running `custos witness serve`, killed on drop.
struct WitnessProcess {
    child: Child,
    url: String,
}

impl WitnessProcess {
    fn start(dir: &Path, listen: &str) -> Self {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("custos"))
            .args(["witness", "serve"])
            .arg(dir)
            .args(["--listen", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("http://127.0.0.1:"), "{line}");
        Self {
            child,
            url: line.trim().to_owned(),
        }
    }

    fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Env {
    tmp: TempDir,
    admin: String,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let env = Self {
            tmp,
            admin: String::new(),
        };
        env.custos(None).arg("init").assert().success();
        let admin = common::add_principal(&env.home(), None, "alice", "IRS", "admin");
        Self { admin, ..env }
    }

    fn home(&self) -> PathBuf {
        self.tmp.path().join("home")
    }

    fn custos(&self, token: Option<&str>) -> assert_cmd::Command {
        common::custos(&self.home(), token)
    }

    fn log_key(&self) -> String {
        let out = self
            .custos(None)
            .args(["ledger", "public-key"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Creates witness `name` following this home's ledger; returns its
    /// directory and hex key.
    fn witness(&self, name: &str) -> (PathBuf, String) {
        let dir = self.tmp.path().join(format!("witness-{name}"));
        let out = self
            .custos(None)
            .args(["witness", "init"])
            .arg(&dir)
            .args([
                "--name",
                &format!("witness.test/{name}"),
                "--log",
                &self.log_key(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8(out.stderr).unwrap();
        let line = stderr
            .lines()
            .find(|l| l.trim_start().starts_with("witness witness.test/"))
            .unwrap();
        let hex = line.split_whitespace().nth(2).unwrap().to_owned();
        (dir, hex)
    }

    /// Installs a policy over `(name, hex, url)` with quorum `group`.
    fn policy(&self, witnesses: &[(&str, &str, &str)], group: &str) -> PathBuf {
        let mut text = String::from("# test policy\n");
        for (name, hex, url) in witnesses {
            text += &format!("witness witness.test/{name} {hex} {url}\n");
        }
        text += &format!("{group}\nquorum q\n");
        let file = self.tmp.path().join("policy");
        std::fs::write(&file, text).unwrap();
        self.custos(Some(&self.admin))
            .args(["ledger", "witness-policy"])
            .arg(&file)
            .assert()
            .success();
        file
    }

    fn witness_round(&self) -> std::process::Output {
        self.custos(None)
            .args(["ledger", "witness"])
            .output()
            .unwrap()
    }

    fn verify(&self, policy: &Path, extra: &[&str]) -> std::process::Output {
        self.custos(None)
            .args(["ledger", "verify", "--witness-policy"])
            .arg(policy)
            .args(extra)
            .output()
            .unwrap()
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The administrator's rewrite: the home is put back to an earlier copy
/// (its ledger re-signed with the same instance key from then on) and a
/// different history is appended. Every witness refuses it, and `verify`
/// against the policy fails whether or not the newer witnessed checkpoint
/// is kept.
#[test]
fn witnesses_refuse_a_rewritten_ledger_and_verify_fails() {
    let env = Env::new();
    let mut processes = Vec::new();
    let mut members = Vec::new();
    for name in ["w1", "w2", "w3"] {
        let (dir, hex) = env.witness(name);
        let process = WitnessProcess::start(&dir, "127.0.0.1:0");
        members.push((name, hex, process.url.clone()));
        processes.push(process);
    }
    let list: Vec<(&str, &str, &str)> = members
        .iter()
        .map(|(n, h, u)| (*n, h.as_str(), u.as_str()))
        .collect();
    let policy = env.policy(
        &list,
        "group q 2 witness.test/w1 witness.test/w2 witness.test/w3",
    );
    let out = env.witness_round();
    assert!(out.status.success(), "{}", text(&out));
    let out = env.verify(&policy, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("signed by witness.test/w1"),
        "{}",
        text(&out)
    );

    // A copy of the home as it is now, then honest growth, witnessed.
    let earlier = env.tmp.path().join("home-earlier");
    copy_dir(&env.home(), &earlier);
    common::add_principal(&env.home(), Some(&env.admin), "bob", "IRS", "requester");
    assert!(env.witness_round().status.success());
    let witnessed_later = std::fs::read(env.home().join("ledger/witnessed-checkpoint")).unwrap();

    // The rewrite: back to the copy, then another history (two entries, so
    // the witnesses get a consistency proof they must refuse).
    std::fs::remove_dir_all(env.home()).unwrap();
    copy_dir(&earlier, &env.home());
    common::add_principal(&env.home(), Some(&env.admin), "mallory", "IRS", "admin");
    common::add_principal(&env.home(), Some(&env.admin), "eve", "IRS", "admin");
    let out = env.witness_round();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    for name in ["w1", "w2", "w3"] {
        let line = said
            .lines()
            .find(|l| l.contains(&format!("witness.test/{name}: did not cosign")))
            .unwrap_or_else(|| panic!("{said}"));
        assert!(line.contains("422") || line.contains("409"), "{line}");
    }
    assert!(said.contains("422"), "{said}");

    // Verify with the newer witnessed checkpoint kept: the rewrite shows.
    std::fs::write(
        env.home().join("ledger/witnessed-checkpoint"),
        &witnessed_later,
    )
    .unwrap();
    let out = env.verify(&policy, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("history was rewritten"),
        "{}",
        text(&out)
    );

    // Verify with the old witnessed checkpoint (the copy's): the witnesses
    // will not cosign the new history, so their cosignatures only age.
    std::fs::write(
        env.home().join("ledger/witnessed-checkpoint"),
        std::fs::read(earlier.join("ledger/witnessed-checkpoint")).unwrap(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(2200));
    assert!(!env.witness_round().status.success());
    let out = env.verify(&policy, &["--max-age", "1s"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("older than"), "{}", text(&out));

    // A policy-less verify still passes: only witnesses catch this.
    env.custos(None)
        .args(["ledger", "verify"])
        .assert()
        .success();
}

/// A home with tax returns, an aggregate agreement and a requester (whose
/// token is returned).
fn with_data(env: &Env) -> String {
    let gina = common::add_principal(&env.home(), Some(&env.admin), "gina", "GAO", "requester");
    common::ingest_synthetic(
        &env.home(),
        &env.admin,
        &env.tmp.path().join("synthetic"),
        300,
        &["tax_returns"],
    );
    let agreement = env.tmp.path().join("agreement.toml");
    std::fs::write(
        &agreement,
        common::aggregate_agreement("gao-stats", "10.0", "0.1"),
    )
    .unwrap();
    env.custos(Some(&env.admin))
        .args(["agreement", "apply"])
        .arg(&agreement)
        .assert()
        .success();
    gina
}

/// A witness that goes down: the quorum (both of two) waits, `ledger
/// status` shows how far behind and why, releases are refused and the
/// refusals ledgered once the tail is older than `--max-unwitnessed`;
/// when the witness is back, the server catches up by itself, releases
/// resume, and every acknowledged entry is in the witnessed ledger.
#[test]
fn a_stalled_witness_delays_the_quorum_and_holds_releases() {
    let env = Env::new();
    let gina = with_data(&env);
    let (d1, h1) = env.witness("w1");
    let (d2, h2) = env.witness("w2");
    let w1 = WitnessProcess::start(&d1, "127.0.0.1:0");
    let w2 = WitnessProcess::start(&d2, "127.0.0.1:0");
    let w2_addr = w2.addr();
    let policy = env.policy(
        &[("w1", &h1, &w1.url), ("w2", &h2, &w2.url)],
        "group q all witness.test/w1 witness.test/w2",
    );
    let server = common::Server::start(&env.home(), &["--max-unwitnessed", "3s"]);
    let query = |expect_ok: bool| {
        let out = env
            .custos(Some(&gina))
            .args(["--server", &server.url, "query", "--agreement", "gao-stats"])
            .arg("SELECT COUNT(*) FROM tax_returns")
            .output()
            .unwrap();
        assert_eq!(out.status.success(), expect_ok, "{}", text(&out));
        text(&out)
    };
    let status = || {
        let out = env
            .custos(None)
            .args(["ledger", "status", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let wait_for = |what: &str, cond: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = status();
            if cond(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: {s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    query(true);
    wait_for("the server witnesses by itself", &|s| s["behind"] == 0);

    // w2 goes down: the quorum cannot hold; status says so.
    drop(w2);
    query(true);
    let s = wait_for("status shows w2's failure", &|s| {
        s["behind"].as_u64() > Some(0)
            && s["witnesses"]["witness.test/w2"]["last_error"].is_string()
    });
    assert!(s["oldest_unwitnessed_seconds"].is_u64(), "{s}");
    std::thread::sleep(Duration::from_millis(3500));
    let said = query(false);
    assert!(said.contains("no witness quorum has cosigned"), "{said}");
    // The refusal is ledgered (published with the next checkpoint).
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::ledger(&env.home())
        .into_iter()
        .filter(|e| e["action"] == "query.aggregate" && e["decision"] == "deny")
        .count()
        != 1
    {
        assert!(Instant::now() < deadline, "the refusal was not ledgered");
        std::thread::sleep(Duration::from_millis(200));
    }

    // w2 is back on its address: the server catches up, releases resume.
    let _w2 = WitnessProcess::start(&d2, &w2_addr);
    wait_for("the quorum catches up", &|s| s["behind"] == 0);
    query(true);
    // Verified over the server's public paths against the policy, and a
    // subject report held to the witnessed checkpoint, there and locally.
    let key = env.log_key();
    let out = env
        .custos(None)
        .args(["--server", &server.url, "ledger", "verify", "--key", &key])
        .arg("--witness-policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("signed by witness.test/w1"),
        "{}",
        text(&out)
    );
    let report = |remote: Option<&str>| {
        let mut cmd = env.custos(Some(&env.admin));
        if let Some(url) = remote {
            cmd.args(["--server", url]);
        }
        let out = cmd
            .args(["report", "subject", "123-45-6789", "--key", &key])
            .arg("--witness-policy")
            .arg(&policy)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("Witnessed: the ledger's first"),
            "{}",
            text(&out)
        );
    };
    report(Some(&server.url));
    let (stopped, _) = server.stop();
    assert!(stopped.success());
    assert!(env.witness_round().status.success());
    report(None);
    let out = env.verify(&policy, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let allowed = common::ledger(&env.home())
        .into_iter()
        .filter(|e| e["action"] == "query.aggregate" && e["decision"] == "allow")
        .count();
    assert_eq!(allowed, 3);
}

/// An insider who cannot sign rolls the ledger back instead: the last
/// journal records are cut and the published files deleted, so the next
/// process rebuilds (and signs) a shorter ledger. Its witnesses cosigned
/// the longer one: `ledger status` says the ledger does not extend it and,
/// under a witness gate of any length, nothing is released.
#[test]
fn a_rolled_back_ledger_releases_nothing_under_the_gate() {
    let env = Env::new();
    let gina = with_data(&env);
    let (d1, h1) = env.witness("w1");
    let w1 = WitnessProcess::start(&d1, "127.0.0.1:0");
    env.policy(&[("w1", &h1, &w1.url)], "group q all witness.test/w1");
    assert!(env.witness_round().status.success());
    let query = || {
        env.custos(Some(&gina))
            .env("CUSTOS_MAX_UNWITNESSED", "1h")
            .args(["query", "--agreement", "gao-stats"])
            .arg("SELECT COUNT(*) FROM tax_returns")
            .output()
            .unwrap()
    };
    assert!(query().status.success());
    assert!(env.witness_round().status.success());

    // Cut the journal's last record (the query's); remove what would
    // contradict it.
    let ledger = env.home().join("ledger");
    let journal = std::fs::read(ledger.join("journal")).unwrap();
    let mut starts = Vec::new();
    let mut at = 0usize;
    while at < journal.len() {
        starts.push(at);
        let len = u32::from_be_bytes(journal[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + 32 + len;
    }
    let cut = starts[starts.len() - 1];
    std::fs::write(ledger.join("journal"), &journal[..cut]).unwrap();
    for name in ["checkpoint", "state.json"] {
        std::fs::remove_file(ledger.join(name)).unwrap();
    }
    std::fs::remove_dir_all(ledger.join("tile")).unwrap();

    let out = query();
    let said = text(&out);
    assert!(
        !out.status.success(),
        "a rolled-back ledger released: {said}"
    );
    assert!(said.contains("does not extend"), "{said}");
    let out = env
        .custos(None)
        .args(["ledger", "status", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["diverged"], true, "{status}");
    // The witness refuses the shorter history, too.
    assert!(!env.witness_round().status.success());
    // Editing the policy file behind the ledger (`quorum none`, or a witness
    // of one's own) is refused: its digest is not the one the install
    // entry recorded.
    let policy_file = env.home().join("witness-policy");
    std::fs::write(&policy_file, "quorum none\n").unwrap();
    let out = query();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("not the one the ledger recorded"),
        "{}",
        text(&out)
    );
    let out = env
        .custos(None)
        .args(["ledger", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not the one the ledger recorded"),
        "{}",
        text(&out)
    );
}
