//! The true answers to the demo's aggregate questions, computed from the
//! synthetic CSV the demo generated itself (never from the custodian's
//! store: only the broker reads that, and only to release what an
//! agreement allows).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use custos_model::schema::{format_cents, parse_decimal_cents};

/// Exact answers over every synthetic tax return.
#[derive(Debug, Default)]
pub struct TaxTruth {
    /// Distinct taxpayers.
    pub taxpayers: u64,
    /// Per state, for tax year 2024: returns and the sum of refunds (cents).
    pub by_state_2024: BTreeMap<String, (u64, i64)>,
    /// Per filing status: returns, the sum of refunds (cents), and every
    /// return's wages (cents), to take the median.
    pub by_status: BTreeMap<String, (u64, i64, Vec<i64>)>,
}

impl TaxTruth {
    /// Reads `tax_returns.csv` as the generator wrote it.
    pub fn from_csv(path: &Path) -> anyhow::Result<Self> {
        let mut reader = csv::Reader::from_path(path)?;
        let headers = reader.headers()?.clone();
        let column = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .ok_or_else(|| anyhow::anyhow!("the synthetic returns have no `{name}` column"))
        };
        let (tin, year, state, status, refund, wages) = (
            column("tin")?,
            column("tax_year")?,
            column("state")?,
            column("filing_status")?,
            column("refund")?,
            column("wages")?,
        );
        let cents = |text: &str| parse_decimal_cents(text).unwrap_or(0);
        let mut taxpayers = HashSet::new();
        let mut truth = Self::default();
        for record in reader.records() {
            let record = record?;
            let field = |i: usize| record.get(i).unwrap_or_default();
            taxpayers.insert(field(tin).to_owned());
            let refund = cents(field(refund));
            if field(year) == "2024" {
                let s = truth
                    .by_state_2024
                    .entry(field(state).to_owned())
                    .or_default();
                s.0 += 1;
                s.1 += refund;
            }
            let s = truth.by_status.entry(field(status).to_owned()).or_default();
            s.0 += 1;
            s.1 += refund;
            s.2.push(cents(field(wages)));
        }
        truth.taxpayers = taxpayers.len() as u64;
        Ok(truth)
    }

    /// The true value of an answer's cell: `aggregate` is the answer's
    /// column name, `group` its group key (empty without `GROUP BY`).
    /// Values are unclamped: what the analyst wants to know.
    pub fn value(&mut self, aggregate: &str, group: &str) -> Option<String> {
        let kind = aggregate.split('(').next().unwrap_or_default();
        match (
            kind,
            aggregate.contains("refund"),
            aggregate.contains("wages"),
        ) {
            ("count", _, _) if aggregate.contains("distinct") => Some(self.taxpayers.to_string()),
            ("count", _, _) => self.by_state_2024.get(group).map(|s| s.0.to_string()),
            ("sum", true, _) => self.by_state_2024.get(group).map(|s| format_cents(s.1)),
            ("avg", true, _) => self.by_status.get(group).map(|s| {
                let n = i64::try_from(s.0.max(1)).unwrap_or(i64::MAX);
                format_cents((s.1 as f64 / n as f64).round() as i64)
            }),
            ("median", _, true) => self.by_status.get_mut(group).map(|s| {
                s.2.sort_unstable();
                format_cents(s.2.get(s.2.len() / 2).copied().unwrap_or(0))
            }),
            _ => None,
        }
    }
}
