//! Aggregate queries end to end through the CLI: noisy answers with
//! intervals over the whole public domain, the budget charged before
//! computing, and every bad query refused by name, ledgered, spending
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::PathBuf;

use predicates::prelude::*;
use tempfile::TempDir;

struct Env {
    dir: TempDir,
    admin: String,
    gina: String,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut env = Self {
            dir,
            admin: String::new(),
            gina: String::new(),
        };
        env.custos(None).arg("init").assert().success();
        let home = env.path("home");
        env.admin = common::add_principal(&home, None, "alice", "IRS", "admin");
        env.gina = common::add_principal(&home, Some(&env.admin), "gina", "GAO", "requester");
        common::ingest_synthetic(
            &home,
            &env.admin,
            &env.path("synthetic"),
            600,
            &["tax_returns"],
        );
        env.apply(&common::aggregate_agreement("gao-stats", "1.0", "0.1"))
            .success();
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn custos(&self, token: Option<&str>) -> assert_cmd::Command {
        common::custos(&self.path("home"), token)
    }

    fn apply(&self, text: &str) -> assert_cmd::assert::Assert {
        let file = self.path("agreement.toml");
        fs::write(&file, text).unwrap();
        self.custos(Some(&self.admin))
            .args(["agreement", "apply"])
            .arg(file)
            .assert()
    }

    fn query(&self, agreement: &str, sql: &str, extra: &[&str]) -> assert_cmd::assert::Assert {
        self.custos(Some(&self.gina))
            .args(["query", "--agreement", agreement])
            .args(extra)
            .arg(sql)
            .assert()
    }

    fn answer(&self, agreement: &str, sql: &str) -> serde_json::Value {
        let out = self.query(agreement, sql, &["--json"]).success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    }

    fn ledger(&self) -> Vec<serde_json::Value> {
        common::ledger(&self.path("home"))
    }
}

#[test]
fn answers_cover_the_whole_domain_with_intervals_and_charge_the_budget() {
    let env = Env::new();
    let a = env.answer(
        "gao-stats",
        "SELECT state, COUNT(*) AS returns, SUM(refund), AVG(refund) FROM tax_returns WHERE tax_year >= 2023 GROUP BY state",
    );
    assert_eq!(
        a["columns"],
        serde_json::json!(["state", "returns", "sum(refund)", "avg(refund)"])
    );
    let rows = a["rows"].as_array().unwrap();
    // Every state of the declared domain, empty ones included.
    assert_eq!(rows.len(), 51);
    assert_eq!(rows[0][0]["value"], "AL");
    for row in rows {
        let count: i64 = row[1]["value"].as_str().unwrap().parse().unwrap();
        let low: i64 = row[1]["low"].as_str().unwrap().parse().unwrap();
        let high: i64 = row[1]["high"].as_str().unwrap().parse().unwrap();
        assert!(low <= count && count <= high);
        assert!(
            row[2]["value"].as_str().unwrap().contains('.'),
            "sums are money"
        );
    }
    assert!((a["budget_spent"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    assert!((a["spent"].as_f64().unwrap() - 0.1).abs() < 1e-6);
    // The charge is in the ledger, without the query's text.
    let ledger = env.ledger();
    let last = ledger.last().unwrap();
    assert_eq!(
        (last["action"].as_str(), last["decision"].as_str()),
        (Some("query.aggregate"), Some("allow"))
    );
    assert_eq!(last["request_id"], a["id"]);
    let text = serde_json::to_string(&ledger).unwrap();
    assert!(!text.contains("tax_year >= 2023"));
    // A human-readable answer too.
    env.query(
        "gao-stats",
        "SELECT COUNT(DISTINCT tin) FROM tax_returns",
        &["--spend", "0.05"],
    )
    .success()
    .stdout(
        predicate::str::contains("95% confidence interval")
            .and(predicate::str::contains("Spent ρ = 0.05")),
    );
}

#[test]
fn bad_queries_are_refused_by_name_ledgered_and_spend_nothing() {
    let env = Env::new();
    let cases = [
        ("SELECT * FROM tax_returns", "`SELECT *` is not allowed"),
        (
            "SELECT refund FROM tax_returns",
            "neither aggregated nor in GROUP BY",
        ),
        (
            "SELECT name, COUNT(*) FROM tax_returns GROUP BY name",
            "identifier",
        ),
        (
            "SELECT COUNT(*) FROM tax_returns WHERE tin = '666-01-0001'",
            "identifier",
        ),
        (
            "SELECT COUNT(*) FROM tax_returns GROUP BY tin",
            "identifier",
        ),
        ("SELECT SUM(tin) FROM tax_returns", "identifier"),
        (
            "SELECT COUNT(*) FROM tax_returns a JOIN tax_returns b ON a.tin = b.tin",
            "joins are not allowed",
        ),
        (
            "SELECT COUNT(*) FROM (SELECT refund FROM tax_returns) t",
            "subqueries",
        ),
        (
            "SELECT COUNT(*) FROM tax_returns WHERE refund IN (SELECT 1)",
            "may not use",
        ),
        (
            "SELECT evil(refund) FROM tax_returns",
            "`evil` is not an allowed aggregate",
        ),
        ("SELECT COUNT(*) FROM tax_returns LIMIT 1", "`LIMIT`"),
        ("SELECT SUM(tax) FROM tax_returns", "`tax` is not granted"),
        ("SELECT SUM(salary) FROM tax_returns", "no column `salary`"),
        (
            "SELECT COUNT(*) FROM tax_returns WHERE salary > 1",
            "no column `salary`",
        ),
        ("SELEC COUNT(*) FROM tax_returns", "does not parse"),
        (
            "SELECT COUNT(*) FROM tax_returns WHERE refund > ",
            "does not parse",
        ),
        (
            "SELECT COUNT(*) FROM tax_returns WHERE refund > 10.505",
            "10.505",
        ),
        (
            "SELECT SUM(CLAMP(refund, 0, 2000000)) FROM tax_returns",
            "inside `refund`'s declared bounds [0, 1000000]",
        ),
        (
            "SELECT AVG(CLAMP(refund, 500, 5)) FROM tax_returns",
            "write CLAMP(column, low, high) with low < high",
        ),
        (
            "SELECT SUM(CLAMP(tin, 0, 5)) FROM tax_returns",
            "identifier",
        ),
    ];
    for (sql, expected) in cases {
        env.query("gao-stats", sql, &[])
            .failure()
            .stdout(predicate::str::is_empty())
            .stderr(predicate::str::contains(expected));
        let last = env.ledger().pop().unwrap();
        assert_eq!(
            (last["action"].as_str(), last["decision"].as_str()),
            (Some("query.aggregate"), Some("deny")),
            "{sql}"
        );
    }
    for (spend, expected) in [
        ("0.5", "exceeds the grant's per-query cap"),
        ("0", "must be a positive number"),
        ("-1", "must be a positive number"),
        // Accepted once, then failed after the charge (red-team run).
        ("1e-20", "is below 1e-6"),
        ("5e-324", "is below 1e-6"),
    ] {
        env.query(
            "gao-stats",
            "SELECT COUNT(*) FROM tax_returns",
            &["--spend", spend],
        )
        .failure()
        .stderr(predicate::str::contains(expected));
    }
    // Nothing was spent by any of it: a first good query leaves 0.9.
    let a = env.answer("gao-stats", "SELECT COUNT(*) FROM tax_returns");
    assert!((a["budget_spent"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    // The ledger never holds a query's literal.
    let text = serde_json::to_string(&env.ledger()).unwrap();
    assert!(!text.contains("666-01-0001"));
}

#[test]
fn an_exhausted_budget_refuses_without_spending() {
    let env = Env::new();
    env.apply(&common::aggregate_agreement("gao-pilot", "0.25", "0.1"))
        .success();
    let sql = "SELECT tax_year, COUNT(*) FROM tax_returns GROUP BY tax_year";
    env.answer("gao-pilot", sql);
    env.answer("gao-pilot", sql);
    env.query("gao-pilot", sql, &[]).failure().stderr(
        predicate::str::contains("privacy budget exhausted")
            .and(predicate::str::contains("nothing was spent")),
    );
    // The rest still fits a smaller query.
    let a = env.answer_with("gao-pilot", sql, "0.05");
    assert!((a["budget_remaining"].as_f64().unwrap()).abs() < 1e-9);
    let ledger = env.ledger();
    let charges = ledger
        .iter()
        .filter(|e| e["action"] == "query.aggregate" && e["decision"] == "allow")
        .count();
    assert_eq!(charges, 3);
}

#[test]
fn aggregate_grants_need_sane_privacy_terms() {
    let env = Env::new();
    let base = common::aggregate_agreement("gao-x", "1.0", "0.1");
    let without: String = base.split("[grants.privacy]").next().unwrap().to_owned();
    for (text, expected) in [
        (without, "needs `[grants.privacy]`"),
        (
            base.replace("budget = 1.0", "budget = 0"),
            "budget must be a positive number",
        ),
        (
            base.replace("budget = 1.0", "budget = -2"),
            "budget must be a positive number",
        ),
        (
            base.replace("per_query = 0.1", "per_query = 5"),
            "exceeds the whole budget",
        ),
        (
            base.replace("measure = \"zcdp\"", "measure = \"approximate\""),
            "unknown variant",
        ),
    ] {
        env.apply(&text)
            .failure()
            .stderr(predicate::str::contains(expected));
    }
}

impl Env {
    fn answer_with(&self, agreement: &str, sql: &str, spend: &str) -> serde_json::Value {
        let out = self
            .query(agreement, sql, &["--json", "--spend", spend])
            .success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    }
}

#[test]
fn a_generous_budget_gives_answers_close_to_the_truth() {
    let env = Env::new();
    env.apply(&common::aggregate_agreement("gao-exact", "400000", "50000"))
        .success();
    let mut reader = csv::Reader::from_path(env.path("synthetic/tax_returns.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let mut tins: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
    tins.sort_unstable();
    tins.dedup();
    let returns_2024 = rows.iter().filter(|r| &r[12] == "2024").count() as i64;
    let ca_2024 = rows
        .iter()
        .filter(|r| &r[12] == "2024" && &r[11] == "CA")
        .count() as i64;
    let value = |a: &serde_json::Value, row: usize, col: usize| -> i64 {
        a["rows"][row][col]["value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    // σ = 3 / sqrt(2 · 50000) ≈ 0.01: the noise is almost surely 0.
    let a = env.answer(
        "gao-exact",
        "SELECT COUNT(DISTINCT tin), COUNT(*) FROM tax_returns WHERE tax_year = 2024",
    );
    assert_eq!(value(&a, 0, 1), returns_2024);
    assert!(value(&a, 0, 0) <= tins.len() as i64);
    let a = env.answer(
        "gao-exact",
        "SELECT state, COUNT(*) FROM tax_returns WHERE tax_year = 2024 GROUP BY state",
    );
    let ca = a["rows"]
        .as_array()
        .unwrap()
        .iter()
        .position(|r| r[0]["value"] == "CA")
        .unwrap();
    assert_eq!(value(&a, ca, 1), ca_2024);
    let a = env.answer("gao-exact", "SELECT COUNT(DISTINCT tin) FROM tax_returns");
    assert_eq!(value(&a, 0, 0), tins.len() as i64);

    // A median with almost no noise is the grid point next to the true median.
    let a = env.answer(
        "gao-exact",
        "SELECT MEDIAN(wages) AS m FROM tax_returns WHERE tax_year = 2024",
    );
    assert_eq!(a["columns"][0], "m");
    let cell = &a["rows"][0][0];
    assert!(cell["low"].is_null() && cell["high"].is_null());
    assert!(cell["rank_error"].as_u64().unwrap() <= 2, "{cell}");
    let cents = |v: &str| -> i64 {
        let (units, frac) = v.split_once('.').unwrap_or((v, "0"));
        units.parse::<i64>().unwrap() * 100 + format!("{frac:0<2}")[..2].parse::<i64>().unwrap()
    };
    let mut wages: Vec<i64> = rows
        .iter()
        .filter(|r| &r[12] == "2024")
        .map(|r| cents(&r[6]))
        .collect();
    wages.sort_unstable();
    // Between two neighbouring values every candidate scores alike, so the
    // check is on ranks: the released value's rank is within the released
    // rank error (plus one for ties) of the median's.
    let released = cents(cell["value"].as_str().unwrap());
    let below = wages.partition_point(|w| *w < released);
    let at_or_below = wages.partition_point(|w| *w <= released);
    let middle = wages.len() / 2;
    let slack = usize::try_from(cell["rank_error"].as_u64().unwrap()).unwrap() + 1;
    assert!(
        below <= middle + slack && at_or_below + slack >= middle,
        "released {released}: ranks {below}..{at_or_below}, the median's {middle} ± {slack}"
    );

    // A clamped average is the exact clamped mean (the noise is tiny here),
    // and the answer says which range applied.
    let refunds: Vec<i64> = rows.iter().map(|r| cents(&r[9])).collect();
    let n = refunds.len() as f64;
    let a = env.answer(
        "gao-exact",
        "SELECT AVG(CLAMP(refund, 0, 500)) FROM tax_returns",
    );
    let exact = refunds.iter().map(|r| (*r).clamp(0, 50_000)).sum::<i64>() as f64 / n;
    let released = cents(a["rows"][0][0]["value"].as_str().unwrap()) as f64;
    assert!(
        (released - exact).abs() <= 2.0,
        "{released} against {exact}"
    );
    let bounds = &a["bounds"][0];
    assert_eq!(
        (&bounds["low"], &bounds["high"], &bounds["source"]),
        (
            &serde_json::json!("0.00"),
            &serde_json::json!("500.00"),
            &serde_json::json!("analyst")
        )
    );
    // Without a clamp the bounds are chosen privately and stated, and the
    // sum is the exact sum clamped to exactly those bounds.
    let a = env.answer("gao-exact", "SELECT SUM(refund) FROM tax_returns");
    let bounds = &a["bounds"][0];
    assert_eq!(bounds["source"], "private");
    assert!(bounds["spent"].as_f64().unwrap() > 0.0);
    let (low, high) = (
        cents(bounds["low"].as_str().unwrap()),
        cents(bounds["high"].as_str().unwrap()),
    );
    assert!(low < high && high <= 100_000_000, "{bounds}");
    let exact: i64 = refunds.iter().map(|r| (*r).clamp(low, high)).sum();
    let released = cents(a["rows"][0][0]["value"].as_str().unwrap());
    let sigma = a["scales"][0][1].as_f64().unwrap();
    assert!(
        ((released - exact) as f64).abs() <= 6.0 * sigma + 1.0,
        "{released} against {exact} (σ = {sigma})"
    );
}
