//! The terms of a `pseudonymous` grant: k-anonymity, the row cap, which
//! tokens keep their column's format, and how far each quasi-identifier is
//! generalised. Parsing and checking only; `custos-privacy` applies them.

use std::collections::BTreeMap;

use custos_model::{ColumnClass, ColumnType, DatasetSchema};
use serde::{Deserialize, Serialize};

/// `[grants.pseudonymous]` as authored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudonymousGrant {
    /// Every released row shares its quasi-identifier values with at least
    /// `k - 1` other released rows (2–1000); smaller classes are suppressed.
    pub k: u32,
    /// Most rows one extract may hold; a larger extract is refused whole.
    pub max_rows: u64,
    /// `subject_id` or `identifier` columns whose tokens keep the value's
    /// format (FF1 over its digits) instead of a hex token.
    #[serde(default)]
    pub keep_format: Vec<String>,
    /// Generalisation per quasi-identifier column (see [`Generalisation`]);
    /// granted quasi columns not named here are released as stored.
    #[serde(default)]
    pub generalise: BTreeMap<String, String>,
}

/// How far one quasi-identifier is coarsened before release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generalisation {
    /// A date to its year (`1984`).
    Year,
    /// A date to its month (`1984-07`).
    Month,
    /// A string to its first `n` characters, the rest masked (`021**`).
    Prefix(usize),
    /// An integer to a band of width `w` (`30-34`).
    Band(i64),
    /// Left out entirely (empty in the extract).
    Suppress,
}

impl Generalisation {
    /// Parses a rule for a column of type `ty`: `year`, `month` (dates),
    /// `prefix:N` (strings), `band:W` (integers) or `suppress` (any).
    pub fn parse(text: &str, ty: ColumnType) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{text}` is not a generalisation for a {} column: use {}",
                ty.as_str(),
                match ty {
                    ColumnType::Date => "`year`, `month` or `suppress`",
                    ColumnType::String => "`prefix:N` (keep N characters) or `suppress`",
                    ColumnType::Integer => "`band:W` (bands of width W) or `suppress`",
                    _ => "`suppress`",
                }
            )
        };
        let rule = match (text.split_once(':'), ty) {
            (None, _) if text == "suppress" => Self::Suppress,
            (None, ColumnType::Date) if text == "year" => Self::Year,
            (None, ColumnType::Date) if text == "month" => Self::Month,
            (Some(("prefix", n)), ColumnType::String) => Self::Prefix(
                n.parse::<usize>()
                    .ok()
                    .filter(|n| *n <= 64)
                    .ok_or_else(bad)?,
            ),
            (Some(("band", w)), ColumnType::Integer) => {
                Self::Band(w.parse::<i64>().ok().filter(|w| *w >= 2).ok_or_else(bad)?)
            }
            _ => return Err(bad()),
        };
        Ok(rule)
    }
}

impl PseudonymousGrant {
    /// Checks the terms against the grant's columns and the dataset's
    /// schema; returns each quasi column's generalisation.
    pub fn validate(
        &self,
        columns: &[String],
        schema: &DatasetSchema,
    ) -> Result<BTreeMap<String, Generalisation>, String> {
        if !(2..=1000).contains(&self.k) {
            return Err(format!(
                "`pseudonymous.k` must be between 2 and 1000, not {}",
                self.k
            ));
        }
        if self.max_rows == 0 {
            return Err("`pseudonymous.max_rows` must be at least 1".into());
        }
        let granted = |name: &str| {
            columns
                .iter()
                .any(|c| c == name)
                .then(|| schema.column(name))
                .flatten()
                .ok_or_else(|| format!("`{name}` is not one of the grant's columns"))
        };
        for name in &self.keep_format {
            let column = granted(name)?;
            if !column.class.is_identifying() {
                return Err(format!(
                    "`keep_format` names `{name}` (class `{}`): only `subject_id` and `identifier` columns are tokenised",
                    column.class
                ));
            }
        }
        let mut rules = BTreeMap::new();
        for (name, text) in &self.generalise {
            let column = granted(name)?;
            if column.class != ColumnClass::Quasi {
                return Err(format!(
                    "`generalise` names `{name}` (class `{}`): only `quasi` columns are generalised",
                    column.class
                ));
            }
            rules.insert(name.clone(), Generalisation::parse(text, column.ty)?);
        }
        Ok(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_only_for_their_types() {
        assert_eq!(
            Generalisation::parse("year", ColumnType::Date),
            Ok(Generalisation::Year)
        );
        assert_eq!(
            Generalisation::parse("prefix:3", ColumnType::String),
            Ok(Generalisation::Prefix(3))
        );
        assert_eq!(
            Generalisation::parse("band:5", ColumnType::Integer),
            Ok(Generalisation::Band(5))
        );
        assert_eq!(
            Generalisation::parse("suppress", ColumnType::Decimal),
            Ok(Generalisation::Suppress)
        );
        for (text, ty) in [
            ("year", ColumnType::String),
            ("prefix:3", ColumnType::Date),
            ("prefix:x", ColumnType::String),
            ("prefix:-1", ColumnType::String),
            ("band:1", ColumnType::Integer),
            ("band:5", ColumnType::Decimal),
            ("", ColumnType::Date),
        ] {
            let err = Generalisation::parse(text, ty).unwrap_err();
            assert!(err.contains("is not a generalisation"), "{err}");
        }
    }
}
