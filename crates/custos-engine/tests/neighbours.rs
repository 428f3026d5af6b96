//! The whole pipeline (encrypted files → DataFusion → per-subject bounding →
//! OpenDP noise) on two neighbouring datasets: one subject, with more rows
//! than the bound allows, added. The observed probability of any event
//! about the output must differ by at most e^ε between them.
//!
//! Pure ε = 1, `COUNT(*)`, k = 3 rows per subject, so the released count is
//! the true bounded count plus discrete Laplace noise of scale 3. The
//! subject added has 5 rows: correct bounding moves the count by 3 (ratio
//! e^1 on tail events); a broken bound would move it by 5 (ratio e^(5/3)),
//! which these samples tell apart by more than ten standard errors.
//!
//! The same holds for a sum over the analyst's `CLAMP` (the added subject's
//! rows lie far above the clamp; a clamp that only set the noise would
//! move the sum nine times as far), and for a sum whose bounds are chosen
//! privately: the chosen bound alone is within e^(its share of ε), and the
//! whole answer spends no more than charged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use custos_policy::Agreement;
use custos_store::{DatasetReader, Home, MasterKeySource, NoProgress};

const SCHEMA: &str = r#"
[[columns]]
name = "tin"
class = "subject_id"
type = "string"
[[columns]]
name = "state"
class = "public"
type = "enum"
values = ["CA", "TX"]
[[columns]]
name = "refund"
class = "attribute"
type = "decimal"
bounds = [0, 1000]
"#;

const AGREEMENT: &str = r#"
id = "neighbours"
title = "Neighbouring datasets"
purpose = "Test the privacy guarantee end to end"
valid_from = 2026-01-01
valid_until = 2027-12-31
[parties]
custodian = "Custodian"
requester = "Tester"
[legal_authority]
citation = "Test"
[[grants]]
dataset = "returns"
mode = "aggregate"
columns = ["state", "refund"]
[grants.privacy]
measure = "pure"
budget = 1000000.0
per_query = 1.0
contributions = 3
"#;

/// Draws per dataset.
const DRAWS: usize = 3000;

/// 200 subjects (300 rows, refunds spread over 0–900), and with `extra`,
/// one more subject with 5 rows of that refund.
async fn dataset(dir: &std::path::Path, extra: Option<u32>) -> Arc<DatasetReader> {
    let root = dir.join("home");
    Home::init(&root, MasterKeySource::GenerateFile, None)
        .await
        .unwrap();
    let home = Home::open(&root, None).await.unwrap();
    let schema = dir.join("s.toml");
    std::fs::write(&schema, SCHEMA).unwrap();
    let mut csv = String::from("tin,state,refund\n");
    for s in 0..200 {
        for r in 0..=(s % 2) {
            let state = if r == 0 { "CA" } else { "TX" };
            csv.push_str(&format!("s{s:04},{state},{}.00\n", (s * 7) % 900));
        }
    }
    if let Some(refund) = extra {
        for _ in 0..5 {
            csv.push_str(&format!("extra,CA,{refund}.00\n"));
        }
    }
    let csv_path = dir.join("d.csv");
    std::fs::write(&csv_path, csv).unwrap();
    custos_store::dataset::ingest(&home, "returns", &schema, &csv_path, Arc::new(NoProgress))
        .await
        .unwrap();
    Arc::new(DatasetReader::open(&home, "returns").await.unwrap())
}

async fn draws(reader: &Arc<DatasetReader>) -> (i64, Vec<i64>) {
    let agreement = Agreement::from_toml(AGREEMENT).unwrap();
    let grant = &agreement.grants[0];
    let sql = "SELECT COUNT(*) FROM returns";
    let plan = custos_privacy::plan(sql, "returns", reader.schema(), grant, None).unwrap();
    let truth = custos_engine::execute::totals(Arc::clone(reader), &plan.query, None, 3)
        .await
        .unwrap();
    let mut out = Vec::with_capacity(DRAWS);
    for _ in 0..DRAWS {
        let answer = custos_engine::answer(Arc::clone(reader), &plan)
            .await
            .unwrap();
        assert!(answer.spent <= 1.0);
        out.push(answer.rows[0][0].value.as_deref().unwrap().parse().unwrap());
    }
    (truth.values[0][0], out)
}

/// Slow tests run only with `CUSTOS_SLOW_TESTS=1` (as `scripts/test` sets).
fn slow_tests(name: &str) -> bool {
    let on = std::env::var("CUSTOS_SLOW_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!(
            "{name}: skipped (slow; set CUSTOS_SLOW_TESTS=1 to run it, as scripts/test does)"
        );
    }
    on
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbouring_datasets_give_outputs_within_e_to_the_epsilon() {
    if !slow_tests("neighbouring_datasets_give_outputs_within_e_to_the_epsilon") {
        return;
    }
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let without = dataset(a.path(), None).await;
    let with = dataset(b.path(), Some(100)).await;
    let (count_without, x) = draws(&without).await;
    let (count_with, y) = draws(&with).await;
    // 300 rows; the added subject's 5 rows count as 3.
    assert_eq!(count_without, 300);
    assert_eq!(count_with, 303);
    let epsilon: f64 = 1.0;
    // Tail events, where the ratio reaches its maximum: at or above the
    // larger count, and at or below the smaller one.
    let at_or_above = |v: i64| v >= 303;
    let at_or_below = |v: i64| v <= 300;
    let events: [(&str, &dyn Fn(i64) -> bool); 2] = [
        ("output ≥ 303", &at_or_above),
        ("output ≤ 300", &at_or_below),
    ];
    for (name, event) in events {
        let hits = |v: &[i64]| v.iter().filter(|x| event(**x)).count();
        let se = within(name, (hits(&x), hits(&y)), epsilon)
            .unwrap_or_else(|| panic!("{name}: too few hits"));
        // And the test has the power to see a broken bound (5 rows → 5/3 ε).
        assert!(
            epsilon + 5.0 * se < 5.0 / 3.0 * epsilon,
            "{name}: too little power"
        );
    }
}

/// The grant of [`AGREEMENT`] with another per-query ε.
fn grant_with_epsilon(epsilon: f64) -> custos_policy::Grant {
    let text = AGREEMENT.replace("per_query = 1.0", &format!("per_query = {epsilon}"));
    Agreement::from_toml(&text).unwrap().grants[0].clone()
}

/// `DRAWS` answers to `sql` over one computation of the true totals.
async fn answers(
    reader: &Arc<DatasetReader>,
    sql: &str,
    epsilon: f64,
) -> (custos_privacy::Totals, Vec<custos_privacy::Answer>) {
    let grant = grant_with_epsilon(epsilon);
    let plan = custos_privacy::plan(sql, "returns", reader.schema(), &grant, None).unwrap();
    let totals = custos_engine::execute::totals(Arc::clone(reader), &plan.query, None, 3)
        .await
        .unwrap();
    let out = (0..DRAWS)
        .map(|_| {
            let answer = custos_privacy::release(&plan, reader.schema(), &totals).unwrap();
            assert!(answer.spent <= epsilon && answer.spent > 0.99 * epsilon);
            answer
        })
        .collect();
    (totals, out)
}

/// Asserts `|ln(P/P')| ≤ ε` (within five standard errors of a log ratio of
/// two binomial proportions) for an event seen `hits` of `DRAWS` times on
/// each side, when both saw it more than 100 times; returns that error.
fn within(name: &str, hits: (usize, usize), epsilon: f64) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)]
    let (hp, hq) = (hits.0 as f64, hits.1 as f64);
    if hp <= 100.0 || hq <= 100.0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let (p, q) = (hp / DRAWS as f64, hq / DRAWS as f64);
    let log_ratio = (p / q).ln().abs();
    let se = ((1.0 - p) / hp + (1.0 - q) / hq).sqrt();
    assert!(
        log_ratio <= epsilon + 5.0 * se,
        "{name}: |ln(P/P')| = {log_ratio:.3} exceeds ε = {epsilon} (+5 SE = {:.3})",
        5.0 * se
    );
    Some(se)
}

fn value(answer: &custos_privacy::Answer) -> i64 {
    let text = answer.rows[0][0].value.as_deref().unwrap();
    let (units, cents) = text.split_once('.').unwrap();
    let sign = if units.starts_with('-') { -1 } else { 1 };
    units.parse::<i64>().unwrap() * 100 + sign * cents.parse::<i64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clamped_sum_moves_by_the_clamp_not_by_the_values() {
    if !slow_tests("a_clamped_sum_moves_by_the_clamp_not_by_the_values") {
        return;
    }
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let without = dataset(a.path(), None).await;
    // Five rows of 900.00 against a clamp of 100.00: three kept, each 100.00.
    let with = dataset(b.path(), Some(900)).await;
    let sql = "SELECT SUM(CLAMP(refund, 0, 100)) FROM returns";
    let (t, x) = answers(&without, sql, 1.0).await;
    let (u, y) = answers(&with, sql, 1.0).await;
    let (s, s2) = (t.values[0][0], u.values[0][0]);
    assert_eq!(
        s2 - s,
        30_000,
        "the added subject moves the clamped sum by k × 100.00"
    );
    for answer in x.iter().chain(&y) {
        let bounds = &answer.bounds[0];
        assert_eq!(
            (bounds.low.as_str(), bounds.high.as_str()),
            ("0.00", "100.00")
        );
        assert_eq!(bounds.source, custos_privacy::BoundsSource::Analyst);
    }
    let epsilon = 1.0;
    let count = |v: &[custos_privacy::Answer], f: &dyn Fn(i64) -> bool| {
        v.iter().filter(|a| f(value(a))).count()
    };
    let above = |v: i64| v >= s2;
    let below = |v: i64| v <= s;
    for (name, event) in [
        ("sum ≥ the larger", &above as &dyn Fn(i64) -> bool),
        ("sum ≤ the smaller", &below),
    ] {
        let se = within(name, (count(&x, event), count(&y, event)), epsilon)
            .unwrap_or_else(|| panic!("{name}: too few hits"));
        // Power: values unclamped would move the sum by 3 × 900.00, 9 ε.
        assert!(
            epsilon + 5.0 * se < 9.0 * epsilon,
            "{name}: too little power"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privately_chosen_bounds_are_charged_and_within_their_share() {
    if !slow_tests("privately_chosen_bounds_are_charged_and_within_their_share") {
        return;
    }
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let without = dataset(a.path(), None).await;
    // The added subject's rows sit at the schema's top, where the bound is
    // chosen.
    let with = dataset(b.path(), Some(1000)).await;
    let sql = "SELECT SUM(refund) FROM returns";
    // ε = 10 in all, 1 of it for the bound: enough to choose it well on 300 rows.
    let epsilon = 10.0;
    let (_, x) = answers(&without, sql, epsilon).await;
    let (_, y) = answers(&with, sql, epsilon).await;
    let share = epsilon * custos_privacy::bounds::BOUND_SHARE;
    for answer in x.iter().chain(&y) {
        let bounds = &answer.bounds[0];
        assert_eq!(bounds.source, custos_privacy::BoundsSource::Private);
        assert!(
            bounds.spent > 0.99 * share && bounds.spent <= share,
            "{}",
            bounds.spent
        );
        assert_eq!(bounds.low, "0.00");
    }
    // The chosen bound's own distribution: within e^(its share) for every
    // bound both sides chose often.
    let highs: std::collections::BTreeSet<&str> = x
        .iter()
        .chain(&y)
        .map(|a| a.bounds[0].high.as_str())
        .collect();
    let mut compared = 0;
    for high in &highs {
        let hits =
            |v: &[custos_privacy::Answer]| v.iter().filter(|a| a.bounds[0].high == *high).count();
        if within(&format!("bound = {high}"), (hits(&x), hits(&y)), share).is_some() {
            compared += 1;
        }
    }
    assert!(
        compared >= 1,
        "no bound was chosen often enough on both sides: {highs:?}"
    );
    // And the whole answer (bound and sum) within e^ε on joint events.
    let median = {
        let mut v: Vec<i64> = x.iter().map(value).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    for high in &highs {
        for above in [true, false] {
            let hits = |v: &[custos_privacy::Answer]| {
                v.iter()
                    .filter(|a| a.bounds[0].high == *high && (value(a) >= median) == above)
                    .count()
            };
            within(
                &format!("bound = {high}, above {median}: {above}"),
                (hits(&x), hits(&y)),
                epsilon,
            );
        }
    }
}
