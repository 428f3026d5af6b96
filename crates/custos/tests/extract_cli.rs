//! `custos extract` end to end: tokens stable within an agreement and
//! unlinkable across agreements, no identifier in the file, generalised
//! quasi-identifiers, k-anonymity with suppression, the ledger and subject
//! reports, and every refusal leaving no file behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// A pseudonymous agreement `id` on `tax_returns` with the given terms.
fn agreement(id: &str, terms: &str) -> String {
    format!(
        r#"
id = "{id}"
title = "Refund study"
purpose = "Study refunds against filing status"
valid_from = 2026-01-01
valid_until = 2099-12-31

[parties]
custodian = "IRS"
requester = "Treasury"

[legal_authority]
citation = "26 U.S.C. 6103(j)(1)"

[[grants]]
dataset = "tax_returns"
mode = "pseudonymous"
columns = ["tin", "name", "birth_date", "zip", "filing_status", "refund", "tax_year"]

[grants.limits]
requests_per_hour = 100

[grants.pseudonymous]
{terms}
"#
    )
}

const TERMS: &str = r#"k = 2
max_rows = 1000000
keep_format = ["tin"]
generalise = { birth_date = "year", zip = "prefix:1" }"#;

struct Home {
    dir: tempfile::TempDir,
    admin: String,
    rita: String,
    olga: String,
}

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        common::custos(&home, None).arg("init").assert().success();
        let admin = common::add_principal(&home, None, "alice", "IRS", "admin");
        let rita = common::add_principal(&home, Some(&admin), "rita", "Treasury", "requester");
        let olga = common::add_principal(&home, Some(&admin), "olga", "IRS", "overseer");
        common::ingest_synthetic(
            &home,
            &admin,
            &dir.path().join("data"),
            3000,
            &["tax_returns"],
        );
        Self {
            dir,
            admin,
            rita,
            olga,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn apply(&self, id: &str, terms: &str) -> std::process::Output {
        let file = self.dir.path().join(format!("{id}.toml"));
        std::fs::write(&file, agreement(id, terms)).unwrap();
        common::custos(&self.path(), Some(&self.admin))
            .args(["agreement", "apply"])
            .arg(&file)
            .output()
            .unwrap()
    }

    fn extract(&self, agreement: &str, out: &Path, filter: Option<&str>) -> std::process::Output {
        let mut cmd = common::custos(&self.path(), Some(&self.rita));
        cmd.args([
            "extract",
            "--agreement",
            agreement,
            "--dataset",
            "tax_returns",
            "--json",
        ])
        .arg("--out")
        .arg(out);
        if let Some(f) = filter {
            cmd.args(["--where", f]);
        }
        cmd.output().unwrap()
    }

    /// The source CSV's rows, by column name.
    fn source(&self) -> Vec<BTreeMap<String, String>> {
        let mut reader =
            csv::Reader::from_path(self.dir.path().join("data/tax_returns.csv")).unwrap();
        let headers = reader.headers().unwrap().clone();
        reader
            .records()
            .map(|r| {
                let r = r.unwrap();
                headers
                    .iter()
                    .zip(r.iter())
                    .map(|(h, v)| (h.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect()
    }
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    (headers, rows)
}

fn column(headers: &[String], rows: &[Vec<String>], name: &str) -> Vec<String> {
    let i = headers.iter().position(|h| h == name).unwrap();
    rows.iter().map(|r| r[i].clone()).collect()
}

fn ok(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn extracts_are_tokenised_generalised_k_anonymous_and_ledgered() {
    let home = Home::new();
    assert!(home.apply("study-a", TERMS).status.success());
    assert!(home.apply("study-b", TERMS).status.success());
    let dir = home.dir.path();

    let a1 = ok(&home.extract("study-a", &dir.join("a1.csv"), None));
    let a2 = ok(&home.extract("study-a", &dir.join("a2.csv"), None));
    let b = ok(&home.extract("study-b", &dir.join("b.csv"), None));
    // Each extract is its own release, with its own id.
    assert_ne!(a1["id"], a2["id"]);
    assert_eq!(a1["subjects"], b["subjects"]);
    let (headers, rows_a1) = read_csv(&dir.join("a1.csv"));
    let (_, rows_a2) = read_csv(&dir.join("a2.csv"));
    let (_, rows_b) = read_csv(&dir.join("b.csv"));
    assert_eq!(
        headers,
        [
            "tin",
            "name",
            "birth_date",
            "zip",
            "filing_status",
            "refund",
            "tax_year"
        ]
    );
    assert_eq!(
        a1["rows_released"].as_u64().unwrap() as usize,
        rows_a1.len()
    );
    assert!(rows_a1.len() > 100, "{a1}");
    // Nothing counts what was left out (an exact count of private rows).
    assert!(a1.get("rows_in_scope").is_none() && a1.get("rows_suppressed").is_none());

    // Stable within an agreement, different across agreements.
    assert_eq!(rows_a1, rows_a2);
    let names_a: BTreeSet<String> = column(&headers, &rows_a1, "name").into_iter().collect();
    let names_b: BTreeSet<String> = column(&headers, &rows_b, "name").into_iter().collect();
    assert!(
        names_a.is_disjoint(&names_b),
        "tokens link across agreements"
    );
    let tins_a = column(&headers, &rows_a1, "tin");
    let tins_b = column(&headers, &rows_b, "tin");
    let same = tins_a.iter().zip(&tins_b).filter(|(x, y)| x == y).count();
    assert!(
        same * 100 < tins_a.len(),
        "{same} FF1 tokens equal across agreements"
    );
    // One token per person: as many distinct tokens as subjects released.
    let distinct: BTreeSet<&String> = tins_a.iter().collect();
    assert_eq!(distinct.len() as u64, a1["subjects"].as_u64().unwrap());

    // Formats: TIN tokens keep NNN-NN-NNNN, names are 32 hex digits, birth
    // dates are years, ZIP codes keep one digit.
    for row in &rows_a1 {
        let tin = &row[0];
        assert!(
            tin.len() == 11 && &tin[3..4] == "-" && &tin[6..7] == "-",
            "{tin}"
        );
        assert!(row[1].len() == 32 && row[1].bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(
            row[2].len() == 4 && row[2].parse::<u32>().is_ok(),
            "{}",
            row[2]
        );
        assert!(row[3].len() == 5 && row[3].ends_with("****"), "{}", row[3]);
    }
    // k-anonymity: every class of the released quasi-identifiers and
    // public columns (birth year, ZIP prefix, filing status, tax year)
    // holds at least k = 2 people (distinct TIN tokens; a token is one
    // person within an agreement), not merely 2 rows; and so does every
    // person's profile (the set of their rows' classes), since their
    // tokens link their rows.
    let mut classes: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    let mut profiles: BTreeMap<String, BTreeSet<Vec<String>>> = BTreeMap::new();
    for row in &rows_a1 {
        let class = vec![
            row[2].clone(),
            row[3].clone(),
            row[4].clone(),
            row[6].clone(),
        ];
        classes
            .entry(class.clone())
            .or_default()
            .insert(row[0].clone());
        profiles.entry(row[0].clone()).or_default().insert(class);
    }
    assert!(
        classes.values().all(|people| people.len() >= 2),
        "{classes:?}"
    );
    assert_eq!(classes.len() as u64, a1["classes"].as_u64().unwrap());
    let mut sharing: BTreeMap<&BTreeSet<Vec<String>>, usize> = BTreeMap::new();
    for profile in profiles.values() {
        *sharing.entry(profile).or_default() += 1;
    }
    assert!(
        sharing.values().all(|n| *n >= 2),
        "a profile of one person was released"
    );

    // No identifier of the source appears in any extract file. (A
    // format-keeping token is another 9-digit number and may, rarely, equal
    // some real TIN by chance; none may equal its own row's TIN, checked by
    // the FF1 unit tests. The hex tokens and every other identifier: never.)
    let source = home.source();
    for file in ["a1.csv", "a2.csv", "b.csv"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for row in &source {
            for col in ["name", "address", "bank_account"] {
                // Empty cells (no bank account) are in every text.
                let value = &row[col];
                assert!(
                    value.is_empty() || !text.contains(value.as_str()),
                    "{col} leaked into {file}"
                );
            }
        }
        let real: BTreeSet<&str> = source.iter().map(|r| r["tin"].as_str()).collect();
        let leaked = text.lines().filter(|l| real.contains(&l[..11])).count();
        assert!(leaked <= 2, "{leaked} rows carry a real TIN in {file}");
    }

    // The ledger records each extract with its subjects as commitments, and
    // holds no identifier; the subject's accounting shows the extract.
    let ledger = common::ledger(&home.path());
    let entry = ledger.iter().find(|e| e["request_id"] == a1["id"]).unwrap();
    assert_eq!(entry["action"], "extract");
    assert_eq!(entry["decision"], "allow");
    assert_eq!(
        entry["subjects"].as_array().unwrap().len() as u64,
        a1["subjects"].as_u64().unwrap().min(1000)
    );
    let text = serde_json::to_string(&ledger).unwrap();
    for row in source.iter().take(200) {
        assert!(!text.contains(&row["tin"]) && !text.contains(&row["name"]));
    }
    let mut extracted = 0;
    let tins: BTreeSet<&str> = source.iter().map(|r| r["tin"].as_str()).collect();
    for tin in tins.iter().take(15) {
        let out = common::custos(&home.path(), Some(&home.olga))
            .args(["report", "subject", tin, "--json"])
            .output()
            .unwrap();
        let report = ok(&out);
        let lines = report["lines"].as_array().unwrap();
        let extracts = lines.iter().filter(|l| l["kind"] == "extracted").count();
        // Three extracts ran; a subject is in all of them or in none.
        assert!(extracts == 0 || extracts == 3, "{report}");
        extracted += usize::from(extracts > 0);
    }
    assert!(
        extracted > 0,
        "no sampled subject's report shows the extracts"
    );

    // Parquet output, same rows.
    let p = ok(&home.extract("study-a", &dir.join("a.parquet"), None));
    assert_eq!(p["rows_released"], a1["rows_released"]);
    let bytes = std::fs::read(dir.join("a.parquet")).unwrap();
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
}

#[test]
fn refused_extracts_are_ledgered_and_leave_no_file() {
    let home = Home::new();
    let dir = home.dir.path();
    assert!(home.apply("study", TERMS).status.success());
    assert!(
        home.apply("strict", &TERMS.replace("k = 2", "k = 1000"))
            .status
            .success()
    );
    assert!(
        home.apply(
            "capped",
            &TERMS.replace("max_rows = 1000000", "max_rows = 10")
        )
        .status
        .success()
    );
    let cases: [(&str, Option<&str>, &str); 7] = [
        (
            "strict",
            None,
            "no quasi-identifier class in scope holds k = 1000 people",
        ),
        ("capped", None, "more rows than the grant's cap of 10"),
        ("study", Some("tin = '123-45-6789'"), "may not name `tin`"),
        ("study", Some("state = 'CA'"), "does not include"),
        ("study", Some("refund >"), "--where"),
        (
            "study",
            Some("refund > 100"),
            "may name only `public` columns",
        ),
        ("nope", None, "agreement"),
    ];
    for (i, (agreement, filter, expected)) in cases.iter().enumerate() {
        let out_file = dir.join(format!("refused-{i}.csv"));
        let out = home.extract(agreement, &out_file, *filter);
        assert!(!out.status.success(), "case {i} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "case {i}: {err}");
        assert!(!out_file.exists(), "case {i} left a file");
    }
    // Nothing half-written either: no staging files.
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Nor inside the home, where extracts are staged.
    let staged: Vec<_> = std::fs::read_dir(home.path().join("staging"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(staged.is_empty(), "{staged:?}");
    let denied = common::ledger(&home.path())
        .into_iter()
        .filter(|e| e["action"] == "extract" && e["decision"] == "deny")
        .count();
    assert_eq!(denied, cases.len());
    // An existing file is never overwritten.
    let existing = dir.join("existing.csv");
    std::fs::write(&existing, "keep me").unwrap();
    let out = home.extract("study", &existing, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me");

    // Malformed terms are refused when the agreement is applied.
    for (terms, expected) in [
        (TERMS.replace("k = 2", "k = 1"), "between 2 and 1000"),
        (
            TERMS.replace("zip = \"prefix:1\"", "refund = \"band:5\""),
            "only `quasi` columns",
        ),
        (
            TERMS.replace("keep_format = [\"tin\"]", "keep_format = [\"zip\"]"),
            "only `subject_id` and `identifier`",
        ),
        (
            TERMS.replace("\"year\"", "\"week\""),
            "is not a generalisation",
        ),
        ("max_rows = 5".to_owned(), "missing field `k`"),
    ] {
        let out = home.apply("bad-terms", &terms);
        assert!(!out.status.success(), "{terms}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{terms}: {err}");
    }
}

/// A requester with only a token: `custos --server URL extract` gets the
/// same file as an extract on the custodian's machine, writes it where it
/// is told, and never touches a home or a master key; refusals leave no
/// file and the report names no server path.
#[test]
fn extracts_come_over_http_without_the_home() {
    let home = Home::new();
    assert!(home.apply("study", TERMS).status.success());
    let dir = home.dir.path();
    let local = ok(&home.extract("study", &dir.join("local.csv"), None));
    let server = common::Server::start(&home.path(), &[]);
    let nowhere = dir.join("no-home-here");
    let remote = |out: &Path, filter: Option<&str>| {
        let mut cmd = common::custos(&nowhere, Some(&home.rita));
        cmd.env("CUSTOS_SERVER", &server.url).args([
            "extract",
            "--agreement",
            "study",
            "--dataset",
            "tax_returns",
            "--json",
            "--out",
        ]);
        cmd.arg(out);
        if let Some(f) = filter {
            cmd.args(["--where", f]);
        }
        cmd.output().unwrap()
    };
    let report = ok(&remote(&dir.join("remote.csv"), None));
    assert!(!nowhere.exists(), "the client made a home");
    let (_, local_rows) = read_csv(&dir.join("local.csv"));
    let (_, remote_rows) = read_csv(&dir.join("remote.csv"));
    assert_eq!(local_rows, remote_rows);
    assert_eq!(report["rows_released"], local["rows_released"]);
    assert_eq!(report["path"], dir.join("remote.csv").display().to_string());
    // Parquet too.
    ok(&remote(&dir.join("remote.parquet"), None));
    assert!(std::fs::metadata(dir.join("remote.parquet")).unwrap().len() > 0);
    // A refusal: no file, the rule's message.
    let refused = remote(&dir.join("refused.csv"), Some("refund > 100"));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only `public` columns"));
    assert!(!dir.join("refused.csv").exists());
    // The raw answer: the file and a report without the server's paths;
    // nothing left in the home's staging.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, header) = rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/extracts", server.url))
            .bearer_auth(&home.rita)
            .json(&serde_json::json!({ "agreement": "study", "dataset": "tax_returns" }))
            .send()
            .await
            .unwrap();
        let header = r.headers()["x-custos-extract"].to_str().unwrap().to_owned();
        (r.status().as_u16(), header)
    });
    assert_eq!(status, 200);
    assert!(!header.contains("path") && !header.contains(&home.path().display().to_string()));
    let staged: Vec<_> = std::fs::read_dir(home.path().join("staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
}
