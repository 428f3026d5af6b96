//! Key custody end to end, through the CLI: a home whose master key is a
//! quorum of shares or a key inside an HSM (SoftHSM2, a fresh token per
//! test) does everything a key-file home does; fewer shares, a wrong share
//! or a wrong PIN open nothing; rotation keeps every dataset readable and
//! retires the old key; a crash at any point of a rotation leaves a home
//! that opens with the old key or the new one; and the HSM's key is in no
//! file of the home.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aes::Aes256;
use aes::cipher::{BlockEncrypt, KeyInit};
use predicates::prelude::*;
use tempfile::TempDir;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "246810";

/// A fresh SoftHSM2 token in its own directory (SOFTHSM2_CONF points at it).
struct Token {
    conf: PathBuf,
    label: String,
}

impl Token {
    fn new(dir: &Path, label: &str) -> Self {
        let tokens = dir.join(format!("tokens-{label}"));
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join(format!("softhsm2-{label}.conf"));
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", label, "--pin", PIN])
            .args(["--so-pin", "13579111"])
            .output()
            .expect("softhsm2-util (Debian package softhsm2; scripts/test installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            conf,
            label: label.to_owned(),
        }
    }
}

/// A home under test and what opens it.
struct Home {
    dir: TempDir,
    unlock: Vec<(String, String)>,
    tokens: BTreeMap<&'static str, String>,
}

impl Home {
    fn path(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `custos` on this home with its unlock environment.
    fn cmd(&self, token: Option<&str>) -> assert_cmd::Command {
        let mut c = common::custos(&self.path(), token);
        c.env_remove("CUSTOS_KEY_SHARES")
            .env_remove("CUSTOS_HSM_PIN");
        for (k, v) in &self.unlock {
            c.env(k, v);
        }
        c
    }

    fn as_(&self, who: &str) -> assert_cmd::Command {
        self.cmd(Some(&self.tokens[who]))
    }

    fn set_unlock(&mut self, pairs: &[(&str, &str)]) {
        self.unlock = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// `custos init` with `args`; returns its stdout.
    fn init(dir: TempDir, unlock: &[(&str, &str)], args: &[&str]) -> (Self, String) {
        let mut home = Self {
            dir,
            unlock: Vec::new(),
            tokens: BTreeMap::new(),
        };
        home.set_unlock(unlock);
        let out = home.cmd(None).arg("init").args(args).assert().success();
        let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
        (home, stdout)
    }

    /// Principals, 200 synthetic returns and two agreements (identified
    /// look-ups, DP aggregates).
    fn populate(&mut self) {
        for (name, org, roles) in [
            ("alice", "IRS", "admin"),
            ("rita", "TIGTA", "requester"),
            ("adam", "IRS", "approver"),
            ("gina", "GAO", "requester"),
        ] {
            let admin = self.tokens.get("alice").cloned();
            let mut c = self.cmd(admin.as_deref());
            c.args(["principal", "add", name, "--org", org]);
            for role in roles.split(',') {
                c.args(["--role", role]);
            }
            let out = c.assert().success();
            let token = String::from_utf8(out.get_output().stdout.clone()).unwrap();
            self.tokens.insert(name, token.trim().to_owned());
        }
        let data = self.dir.path().join("synthetic");
        self.cmd(None)
            .args(["generate", "--rows", "200", "--out"])
            .arg(&data)
            .assert()
            .success();
        self.as_("alice")
            .args(["dataset", "ingest", "--name", "tax_returns", "--schema"])
            .arg(data.join("tax_returns.schema.toml"))
            .arg(data.join("tax_returns.csv"))
            .assert()
            .success();
        for (name, text) in [
            ("identified", common::IDENTIFIED_AGREEMENT.to_owned()),
            (
                "aggregate",
                common::aggregate_agreement("gao-stats", "100.0", "1.0"),
            ),
        ] {
            let file = self.dir.path().join(format!("{name}.toml"));
            std::fs::write(&file, text).unwrap();
            self.as_("alice")
                .args(["agreement", "apply"])
                .arg(&file)
                .assert()
                .success();
        }
    }

    /// A TIN of the synthetic returns with a return from 2023 on.
    fn subject(&self) -> String {
        let data = self.dir.path().join("synthetic/tax_returns.csv");
        let mut reader = csv::Reader::from_path(data).unwrap();
        reader
            .records()
            .map(|r| r.unwrap())
            .find(|r| r[12].parse::<u32>().unwrap() >= 2023)
            .map(|r| r[0].to_owned())
            .unwrap()
    }

    /// Files a look-up as rita and has adam approve it; returns its id.
    fn approved_lookup(&self) -> String {
        let out = self
            .as_("rita")
            .args([
                "lookup",
                "--agreement",
                "tigta-cases",
                "--dataset",
                "tax_returns",
            ])
            .args(["--subject", &self.subject()])
            .args(["--justification", "Case 2026-7: refund to a shared account"])
            .arg("--json")
            .assert()
            .success();
        let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        let id = v["id"].as_str().unwrap().to_owned();
        self.as_("adam").args(["approve", &id]).assert().success();
        id
    }

    /// Fetches an approved look-up: the subject's rows come back.
    fn fetch(&self, id: &str) {
        let out = self
            .as_("rita")
            .args(["lookup", "fetch", id, "--json"])
            .assert()
            .success();
        let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        assert!(!v["rows"].as_array().unwrap().is_empty(), "{v}");
    }

    /// A DP count: the dataset decrypts and the budget is charged.
    fn query(&self) {
        self.as_("gina")
            .args(["query", "--agreement", "gao-stats"])
            .arg("SELECT COUNT(*) FROM tax_returns")
            .assert()
            .success();
    }

    fn verify_ledger(&self) {
        self.cmd(None).args(["ledger", "verify"]).assert().success();
    }

    /// The content of every file under `datasets/`.
    fn dataset_files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        files(&self.path().join("datasets"))
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect()
    }

    /// `custos key show`'s fingerprint.
    fn fingerprint(&self) -> String {
        let out = self.cmd(None).args(["key", "show"]).assert().success();
        let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("fingerprint: "))
            .unwrap()
            .trim()
            .to_owned()
    }
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `custos-share-N-…` lines of init's or rotate's output.
fn shares_of(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("custos-share-"))
        .map(str::to_owned)
        .collect()
}

fn pick(shares: &[String], numbers: &[usize]) -> String {
    numbers
        .iter()
        .map(|n| shares[n - 1].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn three_of_five_shares_open_the_home_and_two_or_a_wrong_one_do_not() {
    let (mut home, stdout) = Home::init(
        tempfile::tempdir().unwrap(),
        &[],
        &["--shares", "5", "--threshold", "3"],
    );
    let shares = shares_of(&stdout);
    assert_eq!(shares.len(), 5, "{stdout}");
    assert!(!home.path().join("master.key").exists());
    home.set_unlock(&[("CUSTOS_KEY_SHARES", &pick(&shares, &[1, 3, 5]))]);
    home.populate();
    let id = home.approved_lookup();
    home.fetch(&id);
    home.query();
    home.verify_ledger();
    // Any three work, in any order, separated by commas or newlines.
    home.set_unlock(&[(
        "CUSTOS_KEY_SHARES",
        &pick(&shares, &[4, 2, 1]).replace(' ', ",\n"),
    )]);
    home.query();

    // Two shares: refused, and nothing is read.
    home.set_unlock(&[("CUSTOS_KEY_SHARES", &pick(&shares, &[2, 4]))]);
    home.query_refused("2 key share(s) given, this home needs 3 of its 5");
    // No shares and no terminal: says what to do.
    home.set_unlock(&[]);
    home.cmd(None)
        .args(["key", "show"])
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("opens with 3 of its 5 key shares")
                .and(predicate::str::contains("CUSTOS_KEY_SHARES")),
        );
    // One mistyped share: named by its number, with the check it should have.
    let check_of_3 = stdout
        .lines()
        .find(|l| l.starts_with("custos-share-3-"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .to_owned();
    let mut bad = shares[2].clone();
    let last = bad.pop().unwrap();
    bad.push(if last == 'a' { 'b' } else { 'a' });
    home.set_unlock(&[(
        "CUSTOS_KEY_SHARES",
        &format!("{} {} {bad}", shares[0], shares[1]),
    )]);
    home.cmd(None)
        .args(["key", "show"])
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("key share number 3 does not match")
                .and(predicate::str::contains(check_of_3.as_str())),
        );
    // A share of another home is refused the same way.
    let (_, other) = Home::init(
        tempfile::tempdir().unwrap(),
        &[],
        &["--shares", "5", "--threshold", "3"],
    );
    let foreign = shares_of(&other);
    home.set_unlock(&[(
        "CUSTOS_KEY_SHARES",
        &format!("{} {} {}", shares[0], shares[1], foreign[4]),
    )]);
    home.cmd(None)
        .args(["key", "show"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "key share number 5 does not match",
        ));
    // No share is in any file of the home or in the ledger.
    for f in files(&home.path()) {
        let bytes = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for s in &shares {
            assert!(!text.contains(&s[15..]), "a share is in {f:?}");
        }
    }
}

/// E_K(0¹²⁸) under AES-256 for every 32-byte window of `bytes` and every
/// 64-hex-digit window, compared with `probe`: finds a key however it
/// was written, raw or in hex.
fn holds_key(bytes: &[u8], probe: &[u8; 16]) -> bool {
    let hit = |key: &[u8]| {
        let cipher = Aes256::new_from_slice(key).unwrap();
        let mut block = aes::Block::default();
        cipher.encrypt_block(&mut block);
        block.as_slice() == probe
    };
    if bytes.windows(32).any(hit) {
        return true;
    }
    bytes
        .windows(64)
        .any(|w| w.iter().all(u8::is_ascii_hexdigit) && hex_decode(w).is_some_and(|k| hit(&k)))
}

fn hex_decode(text: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(text).ok()?;
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// What an auditor's own PKCS#11 session says of the key labelled
/// `label`: E_K(0¹²⁸), after checking the token will not hand the key out.
/// Runs [`helper_probe_an_hsm_key_as_an_auditor`] in a child process, as
/// the module reads SOFTHSM2_CONF from the process environment.
fn token_probe(token: &Token, label: &str) -> [u8; 16] {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "helper_probe_an_hsm_key_as_an_auditor",
            "--exact",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .env("SOFTHSM2_CONF", &token.conf)
        .env("PROBE_TOKEN", &token.label)
        .env("PROBE_LABEL", label)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = text
        .lines()
        .find_map(|l| l.split("probe=").nth(1))
        .unwrap_or_else(|| panic!("no probe in {text}"));
    hex_decode(hex.trim().as_bytes())
        .unwrap()
        .try_into()
        .unwrap()
}

/// Not a test on its own: the auditor's side of [`token_probe`], which
/// runs it with PROBE_TOKEN and PROBE_LABEL set (without them it returns).
#[test]
fn helper_probe_an_hsm_key_as_an_auditor() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeType};
    use cryptoki::session::UserType;
    let (Ok(token), Ok(label)) = (std::env::var("PROBE_TOKEN"), std::env::var("PROBE_LABEL"))
    else {
        return;
    };
    let ctx = Pkcs11::new(SOFTHSM).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == token)
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&PIN.to_owned().into()))
        .unwrap();
    let found = session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap();
    assert_eq!(found.len(), 1);
    let attrs = session
        .get_attributes(
            found[0],
            &[AttributeType::Extractable, AttributeType::Sensitive],
        )
        .unwrap();
    assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
    // The value itself is not readable, by anyone.
    let value = session
        .get_attributes(found[0], &[AttributeType::Value])
        .unwrap_or_default();
    assert!(
        !value.iter().any(|a| matches!(a, Attribute::Value(_))),
        "the token gave out the key"
    );
    let out = session
        .encrypt(&Mechanism::AesEcb, found[0], &[0u8; 16])
        .unwrap();
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    println!("probe={hex}");
}

#[test]
fn an_hsm_home_works_end_to_end_and_its_key_is_in_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::new(dir.path(), "custos-e2e");
    let conf = token.conf.to_string_lossy().into_owned();
    let (mut home, stdout) = Home::init(
        dir,
        &[("SOFTHSM2_CONF", &conf), ("CUSTOS_HSM_PIN", PIN)],
        &["--hsm", SOFTHSM, "--hsm-token", &token.label],
    );
    assert!(stdout.contains("inside HSM token `custos-e2e`"), "{stdout}");
    assert!(!home.path().join("master.key").exists());
    home.populate();
    let id = home.approved_lookup();
    home.fetch(&id);
    home.query();
    home.verify_ledger();

    // A wrong PIN, or none, opens nothing.
    home.set_unlock(&[("SOFTHSM2_CONF", &conf), ("CUSTOS_HSM_PIN", "999999")]);
    home.query_refused("the PIN is incorrect");
    home.set_unlock(&[("SOFTHSM2_CONF", &conf)]);
    home.query_refused("CUSTOS_HSM_PIN");
    // Verifying the public ledger needs no key at all.
    home.verify_ledger();
    home.set_unlock(&[("SOFTHSM2_CONF", &conf), ("CUSTOS_HSM_PIN", PIN)]);

    let show = home.cmd(None).args(["key", "show"]).assert().success();
    let show = String::from_utf8(show.get_output().stdout.clone()).unwrap();
    let label = show
        .lines()
        .find_map(|l| l.trim().strip_prefix("key label: "))
        .unwrap()
        .trim()
        .to_owned();
    let probe = token_probe(&token, &label);
    for f in files(&home.path()) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!holds_key(&bytes, &probe), "the HSM key is in {f:?}");
    }
}

/// The positive control of the key scan: under the file source the scan
/// finds the key in master.key (so a scan that finds nothing means it).
#[test]
fn the_key_scan_finds_a_key_file() {
    let (home, _) = Home::init(tempfile::tempdir().unwrap(), &[], &[]);
    let text = std::fs::read_to_string(home.path().join("master.key")).unwrap();
    let key = hex_decode(text.trim().as_bytes()).unwrap();
    let cipher = Aes256::new_from_slice(&key).unwrap();
    let mut block = aes::Block::default();
    cipher.encrypt_block(&mut block);
    let probe: [u8; 16] = block.into();
    let holders: Vec<PathBuf> = files(&home.path())
        .into_iter()
        .filter(|f| holds_key(&std::fs::read(f).unwrap(), &probe))
        .collect();
    assert_eq!(holders, [home.path().join("master.key")]);
}

impl Home {
    fn query_refused(&self, message: &str) {
        self.as_("gina")
            .args([
                "query",
                "--agreement",
                "gao-stats",
                "SELECT COUNT(*) FROM tax_returns",
            ])
            .assert()
            .failure()
            .stderr(predicate::str::contains(message));
    }
}

/// The ledger's `key.rotate` entries, as (from, to).
fn rotations(home: &Home) -> Vec<(String, String)> {
    common::ledger(&home.path())
        .into_iter()
        .filter(|e| e["action"] == "key.rotate" && e["decision"] == "allow")
        .map(|e| {
            let attribute = |name: &str| {
                e["attributes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|pair| pair[0] == name)
                    .map(|pair| pair[1].as_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            (attribute("from"), attribute("to"))
        })
        .collect()
}

#[test]
fn rotation_through_every_source_keeps_the_data_and_retires_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::new(dir.path(), "custos-rotate");
    let conf = token.conf.to_string_lossy().into_owned();
    let (mut home, _) = Home::init(dir, &[("SOFTHSM2_CONF", &conf)], &[]);
    home.populate();
    let id = home.approved_lookup();
    let files_before = home.dataset_files();
    let old_key = std::fs::read_to_string(home.path().join("master.key")).unwrap();
    let rotate = |home: &Home, args: &[&str]| -> String {
        let out = home
            .as_("alice")
            .args(["key", "rotate"])
            .args(args)
            .assert()
            .success();
        String::from_utf8(out.get_output().stdout.clone()).unwrap()
    };

    // file → file: a new master.key; the old key opens nothing.
    let fp0 = home.fingerprint();
    rotate(&home, &[]);
    assert_ne!(home.fingerprint(), fp0);
    let new_key = std::fs::read_to_string(home.path().join("master.key")).unwrap();
    assert_ne!(new_key, old_key);
    home.cmd(None)
        .env("CUSTOS_MASTER_KEY", old_key.trim())
        .args(["key", "show"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("does not match this home"));
    home.fetch(&id);

    // file → env: the key is printed once and master.key is gone.
    let printed = rotate(&home, &["--env"]);
    let env_key = printed.trim().to_owned();
    assert_eq!(env_key.len(), 64, "{printed}");
    assert!(!home.path().join("master.key").exists());
    home.set_unlock(&[("SOFTHSM2_CONF", &conf), ("CUSTOS_MASTER_KEY", &env_key)]);
    home.query();

    // env → shares (2 of 3).
    let printed = rotate(&home, &["--shares", "3", "--threshold", "2"]);
    let shares = shares_of(&printed);
    assert_eq!(shares.len(), 3, "{printed}");
    home.set_unlock(&[("SOFTHSM2_CONF", &conf), ("CUSTOS_MASTER_KEY", &env_key)]);
    home.query_refused("key shares");
    home.set_unlock(&[
        ("SOFTHSM2_CONF", &conf),
        ("CUSTOS_KEY_SHARES", &pick(&shares, &[3, 1])),
    ]);
    home.query();

    // shares → HSM, then HSM → a new HSM key (the old one is destroyed).
    home.unlock.push(("CUSTOS_HSM_PIN".into(), PIN.into()));
    rotate(&home, &["--hsm", SOFTHSM, "--hsm-token", "custos-rotate"]);
    home.set_unlock(&[
        ("SOFTHSM2_CONF", &conf),
        ("CUSTOS_KEY_SHARES", &pick(&shares, &[3, 1])),
    ]);
    home.query_refused("CUSTOS_HSM_PIN");
    home.set_unlock(&[("SOFTHSM2_CONF", &conf), ("CUSTOS_HSM_PIN", PIN)]);
    let fp_hsm = home.fingerprint();
    home.query();
    rotate(&home, &["--hsm", SOFTHSM, "--hsm-token", "custos-rotate"]);
    assert_ne!(home.fingerprint(), fp_hsm);

    // HSM → file.
    rotate(&home, &[]);
    home.set_unlock(&[("SOFTHSM2_CONF", &conf)]);
    assert!(home.path().join("master.key").exists());
    home.show_request(&id);
    home.query();
    home.verify_ledger();

    // No dataset file was rewritten, and the ledger holds every rotation.
    assert_eq!(home.dataset_files(), files_before);
    let expected: Vec<(String, String)> = [
        ("file", "file"),
        ("file", "env"),
        ("env", "shares"),
        ("shares", "hsm"),
        ("hsm", "hsm"),
        ("hsm", "file"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(rotations(&home), expected);
}

impl Home {
    /// The request's sealed justification opens for its approver.
    fn show_request(&self, id: &str) {
        self.as_("adam")
            .args(["lookup", "show", id])
            .assert()
            .success()
            .stdout(predicate::str::contains("Case 2026-7"));
    }
}

/// The stderr lines of a running command.
type Lines = std::io::Lines<std::io::BufReader<std::process::ChildStderr>>;

/// Starts `custos key rotate ARGS` as alice with `CUSTOS_ROTATION_PAUSE =
/// pause` and returns once it says it paused.
fn start_paused_rotation(home: &Home, args: &[&str], pause: &str) -> (std::process::Child, Lines) {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("custos"));
    cmd.env("CUSTOS_HOME", home.path())
        .env_remove("CUSTOS_MASTER_KEY")
        .env_remove("CUSTOS_KEY_SHARES")
        .env("CUSTOS_TOKEN", &home.tokens["alice"])
        .env("CUSTOS_ROTATION_PAUSE", pause);
    for (k, v) in &home.unlock {
        cmd.env(k, v);
    }
    let mut child = cmd
        .args(["key", "rotate"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let point = pause.split(':').next().unwrap();
    while !lines
        .next()
        .expect("the rotation ended before its pause")
        .unwrap()
        .contains(&format!("rotation paused at {point}"))
    {}
    (child, lines)
}

/// Starts `custos key rotate ARGS` paused at `point`, kills it with
/// SIGKILL there, and returns what it printed on stdout.
fn rotate_and_kill(home: &Home, args: &[&str], point: &str) -> String {
    let (mut child, _) = start_paused_rotation(home, args, point);
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_crash_anywhere_in_a_rotation_leaves_the_old_key_or_the_new_one() {
    let (mut home, _) = Home::init(tempfile::tempdir().unwrap(), &[], &[]);
    home.populate();
    let id = home.approved_lookup();
    for (point, committed) in [
        ("key-written", false),
        ("ledgered", false),
        ("committed", true),
    ] {
        let before = home.fingerprint();
        let old = std::fs::read_to_string(home.path().join("master.key")).unwrap();
        rotate_and_kill(&home, &[], point);
        // The home opens (with no help), with exactly one of the keys.
        let after = home.fingerprint();
        assert_eq!(after != before, committed, "at {point}");
        let now = std::fs::read_to_string(home.path().join("master.key")).unwrap();
        assert_eq!(now != old, committed, "at {point}");
        assert!(!home.path().join("master.key.next").exists(), "at {point}");
        // A rotation ledgered but never committed is marked so in the
        // ledger at the next open; a committed one is not.
        let last_rotation = common::ledger(&home.path())
            .into_iter()
            .rev()
            .find(|e| e["action"] == "key.rotate")
            .map(|e| e["decision"].as_str().unwrap().to_owned());
        let expected = match point {
            "ledgered" => "recorded",
            _ => "allow",
        };
        if point != "key-written" || last_rotation.is_some() {
            assert_eq!(last_rotation.as_deref(), Some(expected), "at {point}");
        }
        home.fingerprint();
        home.show_request(&id);
        home.query();
    }
    // Killed after the commit of a rotation to shares: the printed shares
    // open the home and the old key file is gone.
    let printed = rotate_and_kill(&home, &["--shares", "3", "--threshold", "2"], "committed");
    let shares = shares_of(&printed);
    assert_eq!(shares.len(), 3, "{printed}");
    home.set_unlock(&[("CUSTOS_KEY_SHARES", &pick(&shares, &[2, 3]))]);
    home.query();
    assert!(!home.path().join("master.key").exists());
    home.fetch(&id);
    home.verify_ledger();
}

/// Rewrites instance setting `key` of the home's catalogue with `f`
/// (None: deletes it), as someone with write access to custos.db would.
fn tamper_setting(home: &Home, key: &str, f: impl FnOnce(Vec<u8>) -> Option<Vec<u8>>) {
    use sqlx::Row;
    let db = home.path().join("custos.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let row = sqlx::query("SELECT value FROM instance WHERE key = ?")
            .bind(key)
            .fetch_one(&pool)
            .await
            .unwrap();
        let value: Vec<u8> = row.try_get("value").unwrap();
        match f(value) {
            Some(v) => sqlx::query("UPDATE instance SET value = ? WHERE key = ?")
                .bind(v)
                .bind(key)
                .execute(&pool)
                .await
                .unwrap(),
            None => sqlx::query("DELETE FROM instance WHERE key = ?")
                .bind(key)
                .execute(&pool)
                .await
                .unwrap(),
        };
        pool.close().await;
    });
}

/// Second review: a command that opened the home while a rotation was
/// staging its key took the staged key for a crash's leftover and
/// deleted it, so the rotation committed to a key that existed nowhere.
#[test]
fn a_command_during_a_rotation_waits_its_turn_and_the_rotation_lands() {
    let (mut home, _) = Home::init(tempfile::tempdir().unwrap(), &[], &[]);
    home.populate();
    let before = home.fingerprint();
    let (mut child, lines) = start_paused_rotation(&home, &[], "key-written:20");
    // Meanwhile: another command, and a server, wait five seconds for the
    // lock, then are refused, and touch nothing.
    for args in [
        &["key", "show"][..],
        &["ledger", "verify"][..],
        &["serve"][..],
    ] {
        if args[0] == "ledger" {
            // The public ledger needs no key and opens no key file.
            home.cmd(None).args(args).assert().success();
            continue;
        }
        home.cmd(None)
            .args(args)
            .assert()
            .failure()
            .stderr(predicate::str::contains("rotation is under way"));
    }
    assert!(home.path().join("master.key.next").exists());
    for line in lines {
        let _ = line.unwrap();
    }
    assert!(child.wait().unwrap().success());
    let after = home.fingerprint();
    assert_ne!(after, before);
    home.query();
}

#[test]
fn a_tampered_catalogue_cannot_swap_the_key_source_or_drop_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::new(dir.path(), "custos-tamper");
    let conf = token.conf.to_string_lossy().into_owned();
    let (home, _) = Home::init(
        dir,
        &[("SOFTHSM2_CONF", &conf), ("CUSTOS_HSM_PIN", PIN)],
        &["--hsm", SOFTHSM, "--hsm-token", &token.label],
    );
    home.fingerprint();
    // A module of someone else's making named in the catalogue is not
    // loaded (loading it would run its code beside the PIN).
    let planted = home.dir.path().join("planted.so");
    std::fs::copy(SOFTHSM, &planted).unwrap();
    // Someone else's file: as root, give it away (not as root, it is the
    // tester's own, which is not root's either).
    let _ = std::os::unix::fs::chown(&planted, Some(65534), Some(65534));
    let planted = planted.to_string_lossy().into_owned();
    tamper_setting(&home, "key_hsm", |v| {
        Some(
            String::from_utf8(v)
                .unwrap()
                .replace(SOFTHSM, &planted)
                .into_bytes(),
        )
    });
    home.cmd(None)
        .args(["key", "show"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("refusing the PKCS#11 module"));
    tamper_setting(&home, "key_hsm", |v| {
        Some(
            String::from_utf8(v)
                .unwrap()
                .replace(&planted, SOFTHSM)
                .into_bytes(),
        )
    });
    home.fingerprint();

    // A forged "retired key" row naming the key in use (second review:
    // it destroyed the live key at the next open) is not this home's
    // record, sealed under its key: nothing is destroyed.
    let live = {
        use sqlx::Row;
        let db = home.path().join("custos.db");
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap();
            let row = sqlx::query("SELECT value FROM instance WHERE key = 'key_hsm'")
                .fetch_one(&pool)
                .await
                .unwrap();
            let v: Vec<u8> = row.try_get("value").unwrap();
            sqlx::query("INSERT INTO instance (key, value) VALUES ('key_hsm_retired', ?)")
                .bind(&v)
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
            v
        })
    };
    assert!(!live.is_empty());
    let first = home.fingerprint();
    assert_eq!(home.fingerprint(), first, "the live HSM key was destroyed");

    // A home made with a derivation root does not fall back to deriving
    // from the master key when the root's row is deleted.
    let (file_home, _) = Home::init(tempfile::tempdir().unwrap(), &[], &[]);
    tamper_setting(&file_home, "derivation_root_wrapped", |_| None);
    file_home
        .cmd(None)
        .args(["key", "show"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("the derivation root is missing"));
}
