//! How close Custos's DP answers are to the truth, beside OpenDP's own
//! pipeline on the same CSV with the same bounds, budget and contribution
//! bound, in the same run.
//!
//! ```text
//! pip install -r crates/custos-engine/benches/requirements.txt
//! cargo bench -p custos-engine --bench accuracy                          # 1M and 10M rows
//! CUSTOS_BENCH_ROWS=1000000 CUSTOS_BENCH_RUNS=5 cargo bench -p custos-engine --bench accuracy
//! cargo test --workspace --bench accuracy     # the same on a debug build (accuracy is the same)
//! ```
//!
//! `CUSTOS_BENCH_RUNS` (default 10) is how often OpenDP's pipeline runs
//! each query, `CUSTOS_BENCH_CUSTOS_RUNS` (default 100) how often Custos
//! releases it (its totals are computed once; each release is cheap).
//!
//! Per query, grouping and measure (zCDP ρ = 0.1 and pure ε = 1 per
//! query, at most 3 returns per taxpayer): the median relative error over
//! the groups with at least 10,000 returns (and over all groups), against
//! the exact unclamped answer from the CSV; and the share of exact answers
//! inside the released 95% intervals, against the exact answer to the query
//! as asked (clamped, for a `CLAMP`; clamped at the bounds the answer
//! states, for private bounds) — what the interval promises — and against
//! the unclamped one. For medians, "inside" means the released
//! value's rank is within the released rank error of the middle (OpenDP
//! states none). Accuracy does not depend on the build profile.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use custos_model::schema::parse_decimal_cents;
use custos_policy::Agreement;

/// The clamp the bounded queries use, in cents ($50,000).
const CLAMP_HIGH: i64 = 5_000_000;
/// Groups this large count toward the headline error.
const LARGE_GROUP: usize = 10_000;

/// One question, asked per state and per filing status.
struct Question {
    name: &'static str,
    /// The select item, Custos's SQL.
    select: &'static str,
    /// OpenDP's kind, or `None` where OpenDP has no counterpart (bounds
    /// chosen privately).
    opendp: Option<&'static str>,
}

const QUESTIONS: [Question; 5] = [
    Question {
        name: "COUNT(*)",
        select: "COUNT(*)",
        opendp: Some("count"),
    },
    Question {
        name: "SUM(CLAMP(refund, 0, 50000))",
        select: "SUM(CLAMP(refund, 0, 50000))",
        opendp: Some("sum"),
    },
    Question {
        name: "AVG(CLAMP(refund, 0, 50000))",
        select: "AVG(CLAMP(refund, 0, 50000))",
        opendp: Some("mean"),
    },
    Question {
        name: "AVG(refund), private bounds",
        select: "AVG(refund)",
        opendp: None,
    },
    Question {
        name: "MEDIAN(wages)",
        select: "MEDIAN(wages)",
        opendp: Some("median"),
    },
];

/// The exact answers per group, from the CSV.
#[derive(Default)]
struct Group {
    rows: usize,
    refund_sum: i64,
    clamped_sum: i64,
    /// Sorted, to clamp at bounds chosen privately.
    refunds: Vec<i64>,
    wages: Vec<i64>,
}

impl Group {
    /// The exact answer: (unclamped, as asked). `bounds`: the range a
    /// private-bounds answer says it used.
    fn truth(&self, question: &str, bounds: Option<(i64, i64)>) -> (f64, f64) {
        let n = self.rows.max(1) as f64;
        match question {
            "COUNT(*)" => (self.rows as f64, self.rows as f64),
            "SUM(CLAMP(refund, 0, 50000))" => (self.refund_sum as f64, self.clamped_sum as f64),
            "AVG(CLAMP(refund, 0, 50000))" => {
                (self.refund_sum as f64 / n, self.clamped_sum as f64 / n)
            }
            "AVG(refund), private bounds" => {
                let (low, high) = bounds.unwrap_or((i64::MIN, i64::MAX));
                let clamped: i64 = self.refunds.iter().map(|r| (*r).clamp(low, high)).sum();
                (self.refund_sum as f64 / n, clamped as f64 / n)
            }
            _ => {
                let m = self.wages[self.wages.len() / 2] as f64;
                (m, m)
            }
        }
    }
}

fn truths(csv: &Path) -> BTreeMap<&'static str, BTreeMap<String, Group>> {
    let mut reader = csv::Reader::from_path(csv).unwrap();
    let headers = reader.headers().unwrap().clone();
    let at = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (state, status, refund, wages) =
        (at("state"), at("filing_status"), at("refund"), at("wages"));
    let mut by: BTreeMap<&'static str, BTreeMap<String, Group>> = BTreeMap::new();
    for record in reader.records() {
        let record = record.unwrap();
        let r = parse_decimal_cents(&record[refund]).unwrap_or(0);
        let w = parse_decimal_cents(&record[wages]).unwrap_or(0);
        for (grouping, column) in [("state", state), ("filing_status", status)] {
            let g = by
                .entry(grouping)
                .or_default()
                .entry(record[column].to_owned())
                .or_default();
            g.rows += 1;
            g.refund_sum += r;
            g.clamped_sum += r.clamp(0, CLAMP_HIGH);
            g.refunds.push(r);
            g.wages.push(w);
        }
    }
    for groups in by.values_mut() {
        for g in groups.values_mut() {
            g.wages.sort_unstable();
            g.refunds.sort_unstable();
        }
    }
    by
}

/// A released cell: value, and its interval (or the rank error of a median).
#[derive(Clone, Copy)]
struct Released {
    value: Option<f64>,
    low: Option<f64>,
    high: Option<f64>,
    rank_error: Option<u64>,
    /// For an answer with private bounds: the bounds it used.
    bounds: Option<(i64, i64)>,
}

/// A released number: cents for decimal columns, plain for counts.
fn number(text: &str, decimal: bool) -> f64 {
    if decimal {
        parse_decimal_cents(text).map_or(f64::NAN, |c| c as f64)
    } else {
        text.parse().unwrap_or(f64::NAN)
    }
}

/// Figures over every run and group of one question.
struct Figures<'a> {
    /// The median's candidates (a released median is one of them).
    candidates: &'a [i64],
    errors_large: Vec<f64>,
    errors_all: Vec<f64>,
    covered_asked: usize,
    covered_raw: usize,
    intervals: usize,
}

impl<'a> Figures<'a> {
    fn new(candidates: &'a [i64]) -> Self {
        Self {
            candidates,
            errors_large: Vec::new(),
            errors_all: Vec::new(),
            covered_asked: 0,
            covered_raw: 0,
            intervals: 0,
        }
    }

    fn add(&mut self, group: &Group, question: &str, cell: Released) {
        let (raw, asked) = group.truth(question, cell.bounds);
        let Some(value) = cell.value else {
            // A suppressed average (noisy count ≤ 0): as far off as can be.
            self.errors_all.push(1.0);
            return;
        };
        let error = if raw == 0.0 {
            (value - raw).abs()
        } else {
            ((value - raw) / raw).abs()
        };
        self.errors_all.push(error);
        if group.rows >= LARGE_GROUP {
            self.errors_large.push(error);
        }
        if let (Some(low), Some(high)) = (cell.low, cell.high) {
            self.intervals += 1;
            self.covered_asked += usize::from(low <= asked && asked <= high);
            self.covered_raw += usize::from(low <= raw && raw <= high);
        } else if let Some(rank_error) = cell.rank_error {
            // The promise: the released value's rank is within the stated
            // error of the middle, plus the grid's spacing. The values at
            // those ranks, widened to the candidates around them, must hold
            // the released candidate.
            let w = &group.wages;
            let middle = w.len() / 2;
            let slack = rank_error as usize + 1;
            let lowest = w[middle.saturating_sub(slack)];
            let highest = w[(middle + slack).min(w.len() - 1)];
            let c = self.candidates;
            let from = c[c.partition_point(|x| *x <= lowest).saturating_sub(1)];
            let to = c[c.partition_point(|x| *x < highest).min(c.len() - 1)];
            let inside = (from as f64) <= value && value <= to as f64;
            self.intervals += 1;
            self.covered_asked += usize::from(inside);
            self.covered_raw += usize::from(inside);
        }
    }

    fn median(v: &[f64]) -> Option<f64> {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }

    fn row(&self) -> [String; 4] {
        let pct = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{:.2}%", v * 100.0));
        let share = |k: usize| {
            if self.intervals == 0 {
                "—".to_owned()
            } else {
                format!("{:.1}%", 100.0 * k as f64 / self.intervals as f64)
            }
        };
        [
            pct(Self::median(&self.errors_large)),
            pct(Self::median(&self.errors_all)),
            share(self.covered_asked),
            share(self.covered_raw),
        ]
    }
}

fn main() {
    let rows: Vec<u64> = std::env::var("CUSTOS_BENCH_ROWS")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .map(|r| r.trim().parse().expect("CUSTOS_BENCH_ROWS"))
        .collect();
    let runs: usize = std::env::var("CUSTOS_BENCH_RUNS")
        .ok()
        .map_or(10, |r| r.parse().expect("CUSTOS_BENCH_RUNS"));
    // Custos's releases are cheap once the totals are computed: more runs
    // make its coverage figure tight (±0.3% at 51 groups × 100 runs).
    let custos_runs: usize = std::env::var("CUSTOS_BENCH_CUSTOS_RUNS")
        .ok()
        .map_or(100, |r| r.parse().expect("CUSTOS_BENCH_CUSTOS_RUNS"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for n in rows {
        runtime.block_on(run(n, runs, custos_runs));
    }
}

async fn run(rows: u64, runs: usize, custos_runs: usize) {
    // `_home` keeps the home's directory until the run ends.
    let common::Ingested {
        temp: _home,
        data,
        reader,
    } = common::ingested_returns(rows).await;
    let csv = data.join("tax_returns.csv");
    let truth = truths(&csv);
    let candidates = custos_privacy::quantile::candidates(0, 1_000_000_000);
    let example = include_str!("../../../docs/examples/agreement-aggregate.toml");
    println!("\n### {rows} rows, {custos_runs} runs of each query by Custos, {runs} by OpenDP\n");
    for (measure, budget) in [("zcdp", 0.1), ("pure", 1.0)] {
        let text = example
            .replace("measure = \"zcdp\"", &format!("measure = \"{measure}\""))
            .replace("budget = 1.0", "budget = 1000000.0")
            .replace("per_query = 0.1", &format!("per_query = {budget}"));
        let agreement = Agreement::from_toml(&text).unwrap();
        let grant = &agreement.grants[0];
        let symbol = if measure == "zcdp" { "ρ" } else { "ε" };
        println!("{symbol} = {budget} per query, 3 returns per taxpayer\n");
        println!(
            "| query | by | Custos: median rel. error, groups ≥ 10k | all groups | in 95% interval (as asked) | (unclamped) | OpenDP: median rel. error, groups ≥ 10k | all groups | in 95% interval (as asked) | (unclamped) |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        // OpenDP's runs, all queries at once (one Python process).
        let mut queries = Vec::new();
        for grouping in ["state", "filing_status"] {
            for q in &QUESTIONS {
                let Some(kind) = q.opendp else { continue };
                let mut spec = serde_json::json!({
                    "name": format!("{}|{grouping}", q.name),
                    "group": grouping,
                    "kind": kind,
                    "column": if kind == "median" { "wages" } else { "refund" },
                    "bounds": [0, CLAMP_HIGH],
                });
                if kind == "median" {
                    spec["candidates"] = serde_json::json!(candidates);
                }
                queries.push(spec);
            }
        }
        let opendp = opendp_runs(&serde_json::json!({
            "csv": csv,
            "measure": measure,
            "budget": budget,
            "contributions": 3,
            "runs": runs,
            "queries": queries,
        }));
        for grouping in ["state", "filing_status"] {
            let groups = &truth[grouping];
            for q in &QUESTIONS {
                let sql = format!(
                    "SELECT {grouping}, {} FROM tax_returns GROUP BY {grouping}",
                    q.select
                );
                let plan = custos_privacy::plan(&sql, "tax_returns", reader.schema(), grant, None)
                    .unwrap();
                let totals = custos_engine::execute::totals(
                    Arc::clone(&reader),
                    &plan.query,
                    plan.filter_sql.as_deref(),
                    plan.privacy.contributions,
                )
                .await
                .unwrap();
                let mut ours = Figures::new(&candidates);
                let decimal = q.name != "COUNT(*)";
                for _ in 0..custos_runs {
                    let answer = custos_privacy::release(&plan, reader.schema(), &totals).unwrap();
                    for row in &answer.rows {
                        let key = row[0].value.clone().unwrap_or_default();
                        let Some(group) = groups.get(&key) else {
                            continue;
                        };
                        let cell = &row[1];
                        let at = |v: &Option<String>| v.as_deref().map(|t| number(t, decimal));
                        let bounds = answer
                            .bounds
                            .first()
                            .filter(|b| b.source == custos_privacy::BoundsSource::Private)
                            .map(|b| {
                                (
                                    parse_decimal_cents(&b.low).unwrap(),
                                    parse_decimal_cents(&b.high).unwrap(),
                                )
                            });
                        ours.add(
                            group,
                            q.name,
                            Released {
                                value: at(&cell.value),
                                low: at(&cell.low),
                                high: at(&cell.high),
                                rank_error: cell.rank_error,
                                bounds,
                            },
                        );
                    }
                }
                let mut theirs = Figures::new(&candidates);
                if let Some(per_run) = opendp
                    .get(format!("{}|{grouping}", q.name))
                    .and_then(|v| v.as_array())
                {
                    for cells in per_run {
                        for (key, cell) in cells.as_object().unwrap() {
                            let Some(group) = groups.get(key) else {
                                continue;
                            };
                            let at = |i: usize| cell[i].as_f64();
                            theirs.add(
                                group,
                                q.name,
                                Released {
                                    value: at(0),
                                    low: at(1),
                                    high: at(2),
                                    rank_error: None,
                                    bounds: None,
                                },
                            );
                        }
                    }
                }
                let [a, b, c, d] = ours.row();
                let [e, f, g, h] = if q.opendp.is_some() {
                    theirs.row()
                } else {
                    ["(no counterpart)".into(), "".into(), "".into(), "".into()]
                };
                println!(
                    "| {} | {grouping} | {a} | {b} | {c} | {d} | {e} | {f} | {g} | {h} |",
                    q.name
                );
            }
        }
        println!();
    }
}

/// Runs OpenDP's pipeline (`opendp_accuracy.py`) on `config`; its JSON.
fn opendp_runs(config: &serde_json::Value) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/opendp_accuracy.py");
    let t = Instant::now();
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "OpenDP's pipeline failed (pip install -r crates/custos-engine/benches/requirements.txt):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("OpenDP's runs took {:.1}s", t.elapsed().as_secs_f64());
    serde_json::from_slice(&out.stdout).unwrap()
}
