//! A deterministic mutation fuzzer for the query and row-scope parsers,
//! run as an ordinary test: thousands of byte- and token-level mutations
//! of valid queries must each be accepted or refused with an error, never
//! panic, and whatever is accepted must still satisfy the allow-list.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use custos_model::DatasetSchema;
use custos_policy::Agreement;

const SEEDS: [&str; 8] = [
    "SELECT state, COUNT(*), SUM(refund) FROM tax_returns WHERE tax_year >= 2023 GROUP BY state",
    "SELECT filing_status, AVG(agi) AS a FROM tax_returns WHERE refund BETWEEN 10.5 AND 99 GROUP BY filing_status",
    "SELECT COUNT(DISTINCT tin) FROM tax_returns WHERE state IN ('CA', 'NY') AND NOT (wages IS NULL)",
    "SELECT tax_year, state, COUNT(*) FROM tax_returns GROUP BY tax_year, state",
    "SELECT SUM(wages) FROM tax_returns WHERE (refund > 0 OR agi < -5) AND tax_year <> 2024",
    "SELECT COUNT(*) FROM tax_returns",
    "SELECT state, AVG(CLAMP(refund, 0, 20000)), MEDIAN(CLAMP(wages, 0, 250000.5)) FROM tax_returns GROUP BY state",
    "SELECT QUANTILE(CLAMP(agi, -500, 90000), 0.9), SUM(CLAMP(agi, -1000, 1000)) FROM tax_returns",
];

const TOKENS: [&str; 26] = [
    "CLAMP(wages, 0, 10)",
    ", -1",
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP BY",
    "JOIN",
    "(",
    ")",
    ",",
    "*",
    "'",
    "\"",
    "tin",
    "name",
    "COUNT(",
    "SUM(",
    "UNION SELECT 1",
    "LIMIT 1",
    ";",
    "--",
    "/*",
    "IN (SELECT 1)",
    "NULL",
    "99999999999999999999999",
    "é",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n as u64)).unwrap()
    }
}

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for _ in 0..=rng.below(3) {
        let at = rng.below(s.len() + 1);
        match rng.below(4) {
            0 if !s.is_empty() => {
                let end = (at + rng.below(6)).min(s.len());
                s.drain(at.min(s.len())..end);
            }
            1 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                for (i, c) in format!(" {token} ").chars().enumerate() {
                    s.insert((at + i).min(s.len()), c);
                }
            }
            2 if at < s.len() => {
                s[at] = char::from(u8::try_from(rng.below(95) + 32).unwrap());
            }
            _ => s.insert(
                at.min(s.len()),
                char::from(u8::try_from(rng.below(95) + 32).unwrap()),
            ),
        }
    }
    s.into_iter().collect()
}

#[test]
fn mutated_queries_never_panic_and_accepted_ones_stay_in_bounds() {
    let schema = DatasetSchema::from_toml(custos_synth::TAX_RETURNS_SCHEMA).unwrap();
    let text = std::fs::read_to_string(format!(
        "{}/../../docs/examples/agreement-aggregate.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let agreement = Agreement::from_toml(&text).unwrap();
    let grant = &agreement.grants[0];
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..6_000 {
        let sql = mutate(&mut rng, SEEDS[i % SEEDS.len()]);
        let _ = custos_privacy::dataset_of(&sql);
        match custos_privacy::plan(&sql, "tax_returns", &schema, grant, None) {
            Ok(plan) => {
                accepted += 1;
                assert!(!plan.query.aggregates.is_empty(), "{sql}");
                for c in &plan.columns {
                    let column = schema.column(c).unwrap();
                    assert!(!column.class.is_identifying(), "{sql} reads {c}");
                    assert!(grant.columns.contains(c), "{sql} reads ungranted {c}");
                }
                for a in &plan.query.aggregates {
                    if let Some(o) = a.operand() {
                        assert!(grant.columns.contains(&o.column), "{sql}");
                        let (lo, hi) = schema.column(&o.column).unwrap().bounds.unwrap();
                        if let Some(c) = o.clamp {
                            assert!(lo <= c.low && c.low < c.high && c.high <= hi, "{sql}");
                        }
                    }
                }
            }
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    // The mutations exercise both sides.
    assert!(
        accepted > 100 && refused > 1_000,
        "accepted {accepted}, refused {refused}"
    );
}
