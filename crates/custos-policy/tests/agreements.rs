//! Agreements parse and validate against the synthetic datasets' schemas;
//! every rule has a refusal with a clear message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use custos_model::DatasetSchema;
use custos_policy::{Agreement, Mode};

fn schemas() -> Vec<(&'static str, DatasetSchema)> {
    vec![
        (
            "tax_returns",
            DatasetSchema::from_toml(custos_synth::TAX_RETURNS_SCHEMA).unwrap(),
        ),
        (
            "benefits",
            DatasetSchema::from_toml(custos_synth::BENEFITS_SCHEMA).unwrap(),
        ),
        (
            "deaths",
            DatasetSchema::from_toml(custos_synth::DEATHS_SCHEMA).unwrap(),
        ),
    ]
}

fn example(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../docs/examples/agreement-{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn validate(text: &str) -> Result<Agreement, String> {
    let schemas = schemas();
    let a = Agreement::from_toml(text).map_err(|e| e.to_string())?;
    a.validate(|name| schemas.iter().find(|(n, _)| *n == name).map(|(_, s)| s))
        .map_err(|e| e.to_string())?;
    Ok(a)
}

fn refused(text: &str, expected: &str) {
    let err = validate(text).expect_err("should be refused");
    assert!(err.contains(expected), "expected `{expected}` in: {err}");
}

#[test]
fn the_documented_examples_are_valid() {
    for (name, mode) in [
        ("identified", Mode::Identified),
        ("aggregate", Mode::Aggregate),
        ("pseudonymous", Mode::Pseudonymous),
        ("match", Mode::Match),
    ] {
        let a = validate(&example(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(a.grants[0].mode, mode);
    }
}

#[test]
fn refuses_malformed_toml_and_missing_fields() {
    refused("id = ", "agreement is not valid");
    refused(
        &example("aggregate").replace("purpose = ", "porpose = "),
        "unknown field `porpose`",
    );
    refused(
        &example("aggregate").replace(
            "title = \"GAO statistics on refunds by state\"",
            "title = \" \"",
        ),
        "`title` must not be empty",
    );
    refused(
        &example("aggregate").replace("id = \"gao-refund-statistics\"", "id = \"GAO stats\""),
        "agreement id `GAO stats` is not allowed",
    );
    refused(
        &example("aggregate").replace("valid_until = 2030-12-31", "valid_until = 2025-02-28"),
        "is before `valid_from`",
    );
    refused(
        &example("aggregate").replace("valid_from = 2026-01-01", "valid_from = \"March\""),
        "is not a date",
    );
}

#[test]
fn grants_may_only_name_what_exists() {
    refused(
        &example("aggregate").replace("dataset = \"tax_returns\"", "dataset = \"payroll\""),
        "grant 1: no dataset `payroll`",
    );
    refused(
        &example("aggregate").replace("\"agi\"]", "\"agi\", \"salary\"]"),
        "dataset `tax_returns` has no column `salary`",
    );
    refused(
        &example("aggregate").replace("\"agi\"]", "\"agi\", \"agi\"]"),
        "column `agi` is listed twice",
    );
}

#[test]
fn mode_rules() {
    refused(
        &example("aggregate").replace("\"agi\"]", "\"agi\", \"tin\"]"),
        "an aggregate grant may not include `tin` (class `subject_id`)",
    );
    refused(
        &example("identified").replace("approvals = 1", "approvals = 0"),
        "needs `limits.approvals` of at least 1",
    );
    refused(
        &example("match").replace("columns = [\"ssn\"]", "columns = [\"death_date\"]"),
        "must include the dataset's `subject_id`",
    );
}

#[test]
fn row_scopes_are_restricted() {
    refused(
        &example("identified").replace(
            "row_scope = \"tax_year >= 2023\"",
            "row_scope = \"agi > 100\"",
        ),
        "row scope names column `agi`, which the grant does not include",
    );
    refused(
        &example("identified").replace(
            "row_scope = \"tax_year >= 2023\"",
            "row_scope = \"tax_year >=\"",
        ),
        "row scope `tax_year >=` is malformed",
    );
}

#[test]
fn matching_agreements_respect_the_computer_matching_act() {
    let too_long = example("match").replace("valid_until = 2027-12-31", "valid_until = 2028-01-01");
    refused(&too_long, "may run at most 18 months");
    // Renewed once: 12 more months.
    let renewed = too_long.replace("renewals = 0", "renewals = 1");
    validate(&renewed).unwrap();
    refused(
        &renewed.replace("valid_until = 2028-01-01", "valid_until = 2029-01-01"),
        "may run at most 30 months",
    );
    refused(
        &renewed.replace("renewals = 1", "renewals = 2"),
        "may be renewed once",
    );
}
