//! Queries that could not be answered well are refused by `plan`, before
//! the broker charges anything: per-group histograms too big for memory,
//! and aggregates over a column that holds one value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use custos_model::DatasetSchema;
use custos_policy::Agreement;

const SCHEMA: &str = r#"
[[columns]]
name = "id"
class = "subject_id"
type = "string"
[[columns]]
name = "district"
class = "quasi"
type = "integer"
bounds = [0, 9999]
[[columns]]
name = "fixed"
class = "attribute"
type = "integer"
bounds = [5, 5]
[[columns]]
name = "amount"
class = "attribute"
type = "decimal"
bounds = [0, 1000000]
"#;

const AGREEMENT: &str = r#"
id = "limits"
title = "Plan limits"
purpose = "Test what plan refuses"
valid_from = 2026-01-01
valid_until = 2030-12-31
[parties]
custodian = "Custodian"
requester = "Tester"
[legal_authority]
citation = "Test"
[[grants]]
dataset = "people"
mode = "aggregate"
columns = ["district", "fixed", "amount"]
[grants.privacy]
measure = "zcdp"
budget = 10.0
per_query = 1.0
contributions = 1
"#;

fn plan(sql: &str) -> Result<custos_privacy::QueryPlan, String> {
    let schema = DatasetSchema::from_toml(SCHEMA).unwrap();
    let agreement = Agreement::from_toml(AGREEMENT).unwrap();
    custos_privacy::plan(sql, "people", &schema, &agreement.grants[0], None)
        .map_err(|e| e.to_string())
}

#[test]
fn per_group_histograms_must_fit_in_memory() {
    // 10,000 districts × a quantile's ~6,000 positions: refused by name.
    let e = plan("SELECT district, MEDIAN(amount) FROM people GROUP BY district").unwrap_err();
    assert!(
        e.contains("keep a histogram per group") && e.contains("10000 groups"),
        "{e}"
    );
    // A clamp to a small range has few candidates: it fits.
    plan("SELECT district, MEDIAN(CLAMP(amount, 0, 5)) FROM people GROUP BY district").unwrap();
    // Sums: a clamped one keeps no bins; an unclamped one keeps small ones.
    plan("SELECT district, SUM(CLAMP(amount, 0, 100)) FROM people GROUP BY district").unwrap();
    plan("SELECT district, SUM(amount) FROM people GROUP BY district").unwrap();
}

#[test]
fn a_column_of_one_value_is_not_aggregated() {
    for sql in [
        "SELECT SUM(fixed) FROM people",
        "SELECT AVG(fixed) FROM people",
        "SELECT MEDIAN(fixed) FROM people",
    ] {
        let e = plan(sql).unwrap_err();
        assert!(e.contains("can hold one value only"), "{sql}: {e}");
    }
    plan("SELECT COUNT(*) FROM people").unwrap();
}
