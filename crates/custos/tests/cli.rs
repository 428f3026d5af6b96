//! End-to-end tests of the `custos` binary: init, generate, ingest, list,
//! describe, and every bad input the foundation promises to refuse cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use assert_cmd::cargo::cargo_bin;
use predicates::prelude::*;
use tempfile::TempDir;

const SCHEMA: &str = r#"
description = "small test dataset"
[[columns]]
name = "tin"
class = "subject_id"
type = "string"
[[columns]]
name = "name"
class = "identifier"
type = "string"
[[columns]]
name = "birth_date"
class = "quasi"
type = "date"
[[columns]]
name = "wages"
class = "attribute"
type = "decimal"
bounds = [0, 100000]
[[columns]]
name = "state"
class = "public"
type = "enum"
values = ["CA", "NY", "TX"]
"#;

const GOOD_CSV: &str = "tin,name,birth_date,wages,state\n\
666-01-0001,Ada Lovelace,1980-02-03,1234.50,CA\n\
666-01-0002,Alan Turing,1975-06-23,99000,NY\n\
666-01-0001,Ada Lovelace,1980-02-03,1500,CA\n";

struct Env {
    dir: TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, contents).unwrap();
        p
    }

    fn custos(&self) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::cargo_bin("custos").unwrap();
        cmd.env("CUSTOS_HOME", self.home())
            .env_remove("CUSTOS_MASTER_KEY")
            .env_remove("CUSTOS_LOG");
        cmd
    }

    fn init(&self) -> &Self {
        self.custos().arg("init").assert().success();
        self
    }

    fn ingest(&self, name: &str, schema: &Path, csv: &Path) -> assert_cmd::assert::Assert {
        self.custos()
            .args(["dataset", "ingest", "--name", name, "--schema"])
            .arg(schema)
            .arg(csv)
            .assert()
    }

    fn dataset_names(&self) -> Vec<String> {
        let out = self
            .custos()
            .args(["dataset", "list", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Entries under HOME/datasets (must be empty after a failed ingest).
    fn dataset_dirs(&self) -> Vec<String> {
        fs::read_dir(self.home().join("datasets"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

#[test]
fn init_creates_a_private_home_and_refuses_to_run_twice() {
    let env = Env::new();
    env.custos()
        .arg("init")
        .assert()
        .success()
        .stdout(predicate::str::contains("Created Custos home"));
    let mode = fs::metadata(env.home()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let key_path = env.home().join("master.key");
    assert_eq!(
        fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key_before = fs::read(&key_path).unwrap();
    // The key is never printed.
    let key_text = String::from_utf8(key_before.clone()).unwrap();
    env.custos()
        .arg("init")
        .assert()
        .failure()
        .stderr(predicate::str::contains("refusing to overwrite anything"))
        .stderr(predicate::str::contains(key_text.trim()).not());
    assert_eq!(
        fs::read(&key_path).unwrap(),
        key_before,
        "the master key was not touched"
    );
}

#[test]
fn external_master_key_is_required_checked_and_never_written() {
    let env = Env::new();
    let key = "11".repeat(32);
    let out = env
        .custos()
        .env("CUSTOS_MASTER_KEY", &key)
        .arg("init")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&key));
    assert!(!env.home().join("master.key").exists());
    env.custos()
        .args(["dataset", "list"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("set CUSTOS_MASTER_KEY"));
    env.custos()
        .env("CUSTOS_MASTER_KEY", "22".repeat(32))
        .args(["dataset", "list"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "master key does not match this home",
        ));
    env.custos()
        .env("CUSTOS_MASTER_KEY", "not-hex")
        .args(["dataset", "list"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("64 hexadecimal characters"));
    env.custos()
        .env("CUSTOS_MASTER_KEY", &key)
        .args(["dataset", "list"])
        .assert()
        .success();
}

#[test]
fn commands_without_a_home_say_how_to_make_one() {
    let env = Env::new();
    env.custos()
        .args(["dataset", "list"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("run `custos init` first"));
}

#[test]
fn ingest_list_describe_round_trip() {
    let env = Env::new();
    env.init();
    let schema = env.write("s.toml", SCHEMA);
    let csv = env.write("d.csv", GOOD_CSV);
    env.ingest("people", &schema, &csv)
        .success()
        .stdout(predicate::str::contains("Ingested `people`: 3 rows"));
    assert_eq!(env.dataset_names(), ["people"]);
    let out = env
        .custos()
        .args(["dataset", "describe", "people", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"], 3);
    assert_eq!(v["schema"]["columns"][0]["class"], "subject_id");
    assert_eq!(
        v["schema"]["columns"][3]["bounds"],
        serde_json::json!([0, 10_000_000])
    );
    // Describe shows classes, never values.
    let text = env
        .custos()
        .args(["dataset", "describe", "people"])
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("subject_id") && text.contains("identity"));
    assert!(!text.contains("666-01-0001") && !text.contains("Lovelace"));
    // A second dataset with the same name is refused and the first is intact.
    env.ingest("people", &schema, &csv)
        .failure()
        .stderr(predicate::str::contains("dataset `people` already exists"));
    assert_eq!(env.dataset_names(), ["people"]);
}

#[test]
fn no_plaintext_identifier_anywhere_in_the_home() {
    if !common::slow_tests("no_plaintext_identifier_anywhere_in_the_home") {
        return;
    }
    let env = Env::new();
    env.init();
    let data = env.path("synthetic");
    env.custos()
        .args(["generate", "--rows", "3000", "--seed", "9", "--out"])
        .arg(&data)
        .assert()
        .success();
    for name in ["tax_returns", "benefits", "deaths"] {
        env.ingest(
            name,
            &data.join(format!("{name}.schema.toml")),
            &data.join(format!("{name}.csv")),
        )
        .success();
    }
    // Every identifying value of the tax returns: TINs, names, addresses, accounts.
    let mut reader = csv::Reader::from_path(data.join("tax_returns.csv")).unwrap();
    let mut needles: HashSet<Vec<u8>> = HashSet::new();
    for record in reader.records() {
        let record = record.unwrap();
        for i in [0, 1, 2, 10] {
            if record[i].len() >= 8 {
                needles.insert(record[i].as_bytes().to_vec());
            }
        }
    }
    assert!(needles.len() > 1000);
    let mut files = vec![];
    let mut stack = vec![env.home()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p)
            } else {
                files.push(p)
            }
        }
    }
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "parquet"))
    );
    for file in files {
        let bytes = fs::read(&file).unwrap();
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "a plaintext identifier is in {}",
                file.display()
            );
        }
    }
}

/// Ingests `csv` under the standard schema, expects a refusal whose message
/// contains every `expected` fragment, and checks nothing was stored.
fn assert_rejected(csv: &[u8], expected: &[&str]) {
    let env = Env::new();
    env.init();
    let schema = env.write("s.toml", SCHEMA);
    let csv_path = env.write("bad.csv", csv);
    let out = env
        .custos()
        .args(["dataset", "ingest", "--name", "bad", "--schema"])
        .arg(&schema)
        .arg(&csv_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ingest should fail");
    assert!(stderr.contains("bad.csv"), "names the file: {stderr}");
    assert!(stderr.contains("nothing was stored"), "{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "expected `{e}` in: {stderr}");
    }
    assert!(env.dataset_names().is_empty());
    assert!(
        env.dataset_dirs().is_empty(),
        "leftover files: {:?}",
        env.dataset_dirs()
    );
    // Identifying values are never echoed in errors.
    assert!(!stderr.contains("666-01"), "{stderr}");
}

#[test]
fn rejects_missing_column() {
    assert_rejected(
        b"tin,name,birth_date,wages\n666-01-0001,A B,1980-01-01,1\n",
        &["line 1, column `state`: missing column"],
    );
}

#[test]
fn rejects_extra_column() {
    assert_rejected(
        b"tin,name,birth_date,wages,state,ssn\n666-01-0001,A B,1980-01-01,1,CA,x\n",
        &["line 1, column `ssn`: extra column"],
    );
}

#[test]
fn rejects_wrong_type() {
    assert_rejected(
        b"tin,name,birth_date,wages,state\n666-01-0001,A B,1980-01-01,1,CA\n666-01-0002,A B,1980-01-01,lots,CA\n",
        &["line 3, column `wages`: value `lots` is not a decimal"],
    );
}

#[test]
fn rejects_value_outside_bounds() {
    assert_rejected(
        b"tin,name,birth_date,wages,state\n666-01-0001,A B,1980-01-01,100000.01,CA\n",
        &["line 2, column `wages`: value `100000.01` is outside the declared bounds"],
    );
}

#[test]
fn rejects_value_outside_enum_domain() {
    assert_rejected(
        b"tin,name,birth_date,wages,state\n666-01-0001,A B,1980-01-01,1,ZZ\n",
        &["line 2, column `state`: value `ZZ` is not one of the 3 declared values"],
    );
}

#[test]
fn rejects_bad_date() {
    assert_rejected(
        b"tin,name,birth_date,wages,state\n666-01-0001,A B,1980-02-30,1,CA\n",
        &["line 2, column `birth_date`: value `1980-02-30` is not a date"],
    );
}

#[test]
fn rejects_unterminated_quote() {
    assert_rejected(
        b"tin,name,birth_date,wages,state\n666-01-0001,\"A B,1980-01-01,1,CA\n666-01-0002,C D,1980-01-01,1,CA\n",
        &["line 2"],
    );
}

#[test]
fn rejects_empty_file() {
    assert_rejected(b"", &["line 1: the file is empty"]);
}

#[test]
fn rejects_header_without_rows() {
    assert_rejected(b"tin,name,birth_date,wages,state\n", &["no data rows"]);
}

#[test]
fn rejects_non_utf8_byte() {
    assert_rejected(
        b"tin,name,birth_date,wages,state\n666-01-0001,A \xff B,1980-01-01,1,CA\n",
        &["line 2, column `name`", "not valid UTF-8"],
    );
}

#[test]
fn rejects_wrong_field_count_and_reports_several_problems() {
    assert_rejected(
        b"tin,name,birth_date,wages,state\n666-01-0001,A B,1980-01-01,1\n666-01-0002,A B,1980-01-01,x,CA\n",
        &["line 2: expected 5 fields, found 4", "line 3, column `wages`"],
    );
}

#[test]
fn withholds_identifier_values_from_errors() {
    assert_rejected(
        b"tin,name,birth_date,wages,state\n,666-01-0009 Secret Name,1980-01-01,1,CA\n",
        &["line 2, column `tin`: empty value"],
    );
}

fn schema_error(schema: &str, expected: &str) {
    let env = Env::new();
    env.init();
    let schema_path = env.write("s.toml", schema);
    let csv = env.write("d.csv", GOOD_CSV);
    env.ingest("x", &schema_path, &csv)
        .failure()
        .stderr(predicate::str::contains("s.toml"))
        .stderr(predicate::str::contains(expected));
    assert!(env.dataset_names().is_empty());
}

#[test]
fn refuses_schema_with_two_subject_ids() {
    schema_error(
        &SCHEMA.replace("class = \"identifier\"", "class = \"subject_id\""),
        "exactly one `subject_id` column, found 2: `tin`, `name`",
    );
}

#[test]
fn refuses_schema_with_unknown_class_or_type() {
    schema_error(
        &SCHEMA.replace("class = \"quasi\"", "class = \"semi\""),
        "unknown variant `semi`",
    );
    schema_error(
        &SCHEMA.replace("type = \"date\"", "type = \"timestamp\""),
        "unknown variant `timestamp`",
    );
}

#[test]
fn refuses_schema_with_inverted_bounds() {
    schema_error(
        &SCHEMA.replace("bounds = [0, 100000]", "bounds = [100000, 0]"),
        "column `wages`: `bounds` has lo > hi",
    );
}

#[test]
fn refuses_malformed_schema_toml() {
    schema_error("[[columns]\nname=", "schema is not valid");
}

#[test]
fn refuses_bad_dataset_names() {
    let env = Env::new();
    env.init();
    let schema = env.write("s.toml", SCHEMA);
    let csv = env.write("d.csv", GOOD_CSV);
    for name in ["Tax", "a/b", "..", "", &"x".repeat(65), "tax returns"] {
        env.ingest(name, &schema, &csv)
            .failure()
            .stderr(predicate::str::contains("is not allowed"));
    }
    assert!(env.dataset_names().is_empty());
}

#[test]
fn killed_ingest_leaves_no_dataset_and_a_rerun_works() {
    if !common::slow_tests("killed_ingest_leaves_no_dataset_and_a_rerun_works") {
        return;
    }
    let env = Env::new();
    env.init();
    let data = env.path("synthetic");
    env.custos()
        .args(["generate", "--rows", "200000", "--seed", "3", "--out"])
        .arg(&data)
        .assert()
        .success();
    let schema = data.join("tax_returns.schema.toml");
    let csv = data.join("tax_returns.csv");
    let mut interrupted = 0;
    for delay_ms in [50, 300, 900] {
        let mut child = Command::new(cargo_bin("custos"))
            .env("CUSTOS_HOME", env.home())
            .args(["dataset", "ingest", "--name", "tax", "--schema"])
            .arg(&schema)
            .arg(&csv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok();
        child.wait().unwrap();
        if finished {
            // Too fast to interrupt on this machine: the dataset is whole; drop it.
            break;
        }
        interrupted += 1;
        assert!(
            env.dataset_names().is_empty(),
            "no dataset after a kill at {delay_ms} ms"
        );
    }
    assert!(interrupted >= 1, "at least one kill landed mid-ingest");
    if env.dataset_names().is_empty() {
        env.ingest("tax", &schema, &csv).success();
    }
    assert_eq!(env.dataset_names(), ["tax"]);
    // Only the committed dataset's directory remains.
    assert_eq!(env.dataset_dirs().len(), 1, "{:?}", env.dataset_dirs());
    let out = env
        .custos()
        .args(["dataset", "describe", "tax", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"], 200_000);
}

#[test]
fn demo_runs_end_to_end_on_a_small_population() {
    let env = Env::new();
    env.custos()
        .args([
            "demo",
            "--rows",
            "5000",
            "--listen",
            "127.0.0.1:0",
            "--keep",
        ])
        .arg(env.path("demo"))
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "The console answers at http://127.0.0.1:",
        ))
        .stdout(predicate::str::contains("approver  ana        custos_"))
        .stdout(predicate::str::contains("not found anywhere"))
        .stdout(predicate::str::contains(
            "Ingested `tax_returns`: 5,000 rows",
        ))
        .stdout(predicate::str::contains(
            "rita tries to fetch at once: denied",
        ))
        .stdout(predicate::str::contains("tin          name"))
        .stdout(predicate::str::contains("disclosed  rita (TIGTA)"))
        .stdout(predicate::str::contains("inclusion proof verified"))
        .stdout(predicate::str::contains("count(distinct subject) = "))
        .stdout(predicate::str::contains(
            "3: refused: denied: privacy budget exhausted",
        ))
        // 5,000 returns are too few for 5-anonymous classes: said so.
        .stdout(predicate::str::contains(
            "no quasi-identifier class in scope holds k = 5 people",
        ));
}

#[test]
fn help_explains_every_command() {
    let env = Env::new();
    // Every subcommand's help builds (clap checks its definition in debug builds).
    for cmd in [
        &["dataset", "ingest"][..],
        &["dataset", "list"],
        &["dataset", "describe"],
        &["ledger", "verify"],
        &["ledger", "prove"],
        &["principal", "add"],
        &["agreement", "apply"],
        &["agreement", "show"],
        &["agreement", "revoke"],
        &["lookup"],
        &["lookup", "fetch"],
        &["approve"],
        &["report", "subject"],
        &["report", "agreement"],
        &["subject", "protect"],
        &["query"],
        &["extract"],
        &["generate"],
        &["demo"],
        &["init"],
    ] {
        env.custos().args(cmd).arg("--help").assert().success();
    }
    env.custos()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("demo").and(predicate::str::contains("init")));
    env.custos()
        .args(["dataset", "ingest", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("lists them with line and column"));
}

/// The top-level help is the user's first manual page: a snapshot, so a
/// change to it is seen in review.
#[test]
fn the_top_level_help_is_stable() {
    // No CUSTOS_* variable: clap shows their values, which vary per run.
    let mut cmd = assert_cmd::Command::cargo_bin("custos").unwrap();
    for var in [
        "CUSTOS_HOME",
        "CUSTOS_TOKEN",
        "CUSTOS_SERVER",
        "CUSTOS_MASTER_KEY",
        "CUSTOS_LOG",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.arg("--help").output().unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!(String::from_utf8(out.stdout).unwrap());
}
