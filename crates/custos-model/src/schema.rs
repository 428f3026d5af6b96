//! Dataset schemas: the TOML file that classes every column of a dataset.
//!
//! A schema is pure data: parsing and validation do no I/O, so they can be
//! tested exhaustively and fuzzed. The format is documented in
//! `docs/datasets.md`.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// How sensitive a column is, which decides how every mode may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnClass {
    /// The person's key (SSN, TIN). Exactly one per dataset.
    SubjectId,
    /// Directly identifying: name, address, bank account.
    Identifier,
    /// Identifying in combination: birth date, ZIP code.
    Quasi,
    /// The facts about the person: income, benefit amount.
    Attribute,
    /// A column whose value domain is public (e.g. state code).
    Public,
}

impl ColumnClass {
    /// The class's name as written in schema files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SubjectId => "subject_id",
            Self::Identifier => "identifier",
            Self::Quasi => "quasi",
            Self::Attribute => "attribute",
            Self::Public => "public",
        }
    }

    /// Whether values of this class must be encrypted with the identity key.
    pub fn is_identifying(self) -> bool {
        matches!(self, Self::SubjectId | Self::Identifier)
    }
}

impl fmt::Display for ColumnClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The type of a column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// A signed 64-bit integer.
    Integer,
    /// A decimal amount with at most two fraction digits, stored as integer cents.
    Decimal,
    /// A calendar date written `YYYY-MM-DD`.
    Date,
    /// One of a declared list of values.
    Enum,
}

impl ColumnType {
    /// The type's name as written in schema files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Decimal => "decimal",
            Self::Date => "date",
            Self::Enum => "enum",
        }
    }

    /// Whether the type is numeric (and so takes `bounds`).
    pub fn is_numeric(self) -> bool {
        matches!(self, Self::Integer | Self::Decimal)
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a column says about the person, for the unusual-browsing rules
/// that compare a looked-up subject with the requester (docs/browsing.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Describes {
    /// `Given Family`: the family name is the last word.
    FullName,
    /// The family name alone.
    Surname,
    /// A street address (`number street, city`).
    Address,
    /// A postal code.
    Zip,
}

/// One validated column of a dataset schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Column name, `[a-z_][a-z0-9_]*`, at most 64 characters.
    pub name: String,
    /// Sensitivity class.
    pub class: ColumnClass,
    /// Value type.
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// Whether an empty field is allowed (stored as null).
    pub nullable: bool,
    /// Inclusive `[lo, hi]` in storage units: integers as is, decimals in
    /// cents, dates in days since 1970-01-01.
    pub bounds: Option<(i64, i64)>,
    /// The allowed values of an `enum` column (its public domain).
    pub values: Vec<String>,
    /// Free-text description for people reading the schema.
    pub description: Option<String>,
    /// What the column says about the person (`describes = "zip"`), if
    /// declared: the unusual-browsing rules compare it with the requester.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub describes: Option<Describes>,
}

impl Column {
    /// The public domain of a `public` column, as a human-readable phrase.
    pub fn domain_summary(&self) -> Option<String> {
        if self.class != ColumnClass::Public {
            return None;
        }
        match (self.ty, self.bounds) {
            (ColumnType::Enum, _) => Some(format!("{} values", self.values.len())),
            (ColumnType::Integer, Some((lo, hi))) => Some(format!("integers {lo}..={hi}")),
            _ => None,
        }
    }
}

/// A validated dataset schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSchema {
    /// What the dataset holds, for people.
    pub description: Option<String>,
    /// Columns in declaration order.
    pub columns: Vec<Column>,
}

/// Why a schema was refused. Messages quote user input in backticks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The file is not valid TOML or has an unknown field or value.
    #[error("schema is not valid: {0}")]
    Syntax(String),
    /// The schema declares no columns.
    #[error("schema declares no columns")]
    NoColumns,
    /// A column name breaks the naming rule.
    #[error(
        "column name `{0}` is not allowed: use 1-64 characters of a-z, 0-9 and _, starting with a letter or _ (names starting with `_custos` are reserved)"
    )]
    BadColumnName(String),
    /// Two columns share a name.
    #[error("column `{0}` is declared twice")]
    DuplicateColumn(String),
    /// No or several `subject_id` columns.
    #[error("a schema needs exactly one `subject_id` column, found {count}{names}")]
    SubjectIdCount {
        /// How many were found.
        count: usize,
        /// The offending names, pre-formatted.
        names: String,
    },
    /// The subject id column has a type that cannot key a person.
    #[error("`subject_id` column `{0}` must be of type string or integer")]
    SubjectIdType(String),
    /// Bounds where the type takes none, or malformed bounds.
    #[error("column `{column}`: {message}")]
    Bounds {
        /// The column.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// An enum without values, or values on a non-enum column.
    #[error("column `{column}`: {message}")]
    Values {
        /// The column.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// A public column without a declared domain.
    #[error(
        "public column `{0}` needs a declared domain: make it an `enum` with `values`, or an `integer` with `bounds`"
    )]
    PublicWithoutDomain(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    description: Option<String>,
    #[serde(default)]
    columns: Vec<RawColumn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    name: String,
    class: ColumnClass,
    #[serde(rename = "type")]
    ty: ColumnType,
    #[serde(default)]
    nullable: bool,
    bounds: Option<Vec<toml::Value>>,
    values: Option<Vec<String>>,
    description: Option<String>,
    describes: Option<Describes>,
}

/// The longest allowed column name.
pub const MAX_COLUMN_NAME: usize = 64;

/// The hidden column that holds each row's subject key (see
/// [`crate::keys::SubjectBucketer::place`]); names starting with `_custos`
/// are reserved for such columns.
pub const SUBJECT_KEY_COLUMN: &str = "_custos_subject_key";

/// The one spelling of a text subject id that every path uses: ASCII
/// letters and digits only, upper case (`123-45-6789` and `123456789` are
/// one person). Ingest places rows and derives subject keys from it,
/// look-ups find rows by it, tokens and ledger commitments are made of it,
/// so the per-subject bound, k-anonymity and the accounting all count one
/// person once however the source wrote them.
pub fn canonical_subject(text: &str) -> std::borrow::Cow<'_, str> {
    if text
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_uppercase())
            .collect(),
    )
}

fn valid_column_name(name: &str) -> bool {
    if name.starts_with("_custos") {
        return false;
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    first_ok
        && name.len() <= MAX_COLUMN_NAME
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl DatasetSchema {
    /// Parses and validates a schema from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, SchemaError> {
        let raw: RawSchema =
            toml::from_str(text).map_err(|e| SchemaError::Syntax(one_line(&e.to_string())))?;
        if raw.columns.is_empty() {
            return Err(SchemaError::NoColumns);
        }
        let mut seen = BTreeSet::new();
        let mut columns = Vec::with_capacity(raw.columns.len());
        for rc in raw.columns {
            if !valid_column_name(&rc.name) {
                return Err(SchemaError::BadColumnName(rc.name));
            }
            if !seen.insert(rc.name.clone()) {
                return Err(SchemaError::DuplicateColumn(rc.name));
            }
            columns.push(validate_column(rc)?);
        }
        let subject_ids: Vec<&str> = columns
            .iter()
            .filter(|c| c.class == ColumnClass::SubjectId)
            .map(|c| c.name.as_str())
            .collect();
        if subject_ids.len() != 1 {
            let names = if subject_ids.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    subject_ids
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(SchemaError::SubjectIdCount {
                count: subject_ids.len(),
                names,
            });
        }
        Ok(Self {
            description: raw.description,
            columns,
        })
    }

    /// `text` as this dataset's subject ids are stored and keyed: an
    /// integer id in its decimal form (`012345678` is `12345678`), a text
    /// id in [`canonical_subject`] form; `None` if it cannot be one.
    pub fn canonical_subject_id(&self, text: &str) -> Option<String> {
        match self.subject_column().ty {
            ColumnType::Integer => text.trim().parse::<i64>().ok().map(|v| v.to_string()),
            _ => Some(canonical_subject(text).into_owned()),
        }
    }

    /// The one `subject_id` column.
    pub fn subject_column(&self) -> &Column {
        // INVARIANT: `from_toml` guarantees exactly one subject_id column, and
        // schemas are only built through it.
        let index = self.subject_index();
        &self.columns[index]
    }

    /// Index of the `subject_id` column in `columns`.
    pub fn subject_index(&self) -> usize {
        self.columns
            .iter()
            .position(|c| c.class == ColumnClass::SubjectId)
            .unwrap_or(0)
    }

    /// Looks a column up by name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The first column that describes `what` about the person, if any.
    pub fn describing(&self, what: Describes) -> Option<&Column> {
        self.columns.iter().find(|c| c.describes == Some(what))
    }
}

fn validate_column(rc: RawColumn) -> Result<Column, SchemaError> {
    let name = rc.name;
    if rc.class == ColumnClass::SubjectId
        && !matches!(rc.ty, ColumnType::String | ColumnType::Integer)
    {
        return Err(SchemaError::SubjectIdType(name));
    }
    if rc.class == ColumnClass::SubjectId && rc.nullable {
        return Err(SchemaError::Values {
            column: name,
            message: "a `subject_id` column cannot be nullable".into(),
        });
    }
    let values = match (rc.ty, rc.values) {
        (ColumnType::Enum, Some(values)) => {
            if values.is_empty() {
                return Err(SchemaError::Values {
                    column: name,
                    message: "an `enum` column needs at least one value in `values`".into(),
                });
            }
            let distinct: BTreeSet<&String> = values.iter().collect();
            if distinct.len() != values.len() {
                return Err(SchemaError::Values {
                    column: name,
                    message: "`values` lists a value twice".into(),
                });
            }
            values
        }
        (ColumnType::Enum, None) => {
            return Err(SchemaError::Values {
                column: name,
                message: "an `enum` column needs `values`".into(),
            });
        }
        (ty, Some(_)) => {
            return Err(SchemaError::Values {
                column: name,
                message: format!("`values` is only for `enum` columns, this one is `{ty}`"),
            });
        }
        (_, None) => Vec::new(),
    };
    let bounds = match rc.bounds {
        None => None,
        Some(raw) => Some(parse_bounds(&name, rc.ty, &raw)?),
    };
    let needs_bounds = rc.ty.is_numeric() && !rc.class.is_identifying();
    if needs_bounds && bounds.is_none() {
        return Err(SchemaError::Bounds {
            column: name,
            message: format!(
                "a `{}` column of class `{}` needs `bounds = [lo, hi]` (used to clamp values for differential privacy)",
                rc.ty, rc.class
            ),
        });
    }
    if rc.class == ColumnClass::Public {
        let has_domain =
            rc.ty == ColumnType::Enum || (rc.ty == ColumnType::Integer && bounds.is_some());
        if !has_domain {
            return Err(SchemaError::PublicWithoutDomain(name));
        }
    }
    Ok(Column {
        name,
        class: rc.class,
        ty: rc.ty,
        nullable: rc.nullable,
        bounds,
        values,
        description: rc.description,
        describes: rc.describes,
    })
}

fn parse_bounds(
    column: &str,
    ty: ColumnType,
    raw: &[toml::Value],
) -> Result<(i64, i64), SchemaError> {
    let err = |message: String| SchemaError::Bounds {
        column: column.to_owned(),
        message,
    };
    let [lo, hi] = raw else {
        return Err(err(format!(
            "`bounds` must be a pair `[lo, hi]`, found {} values",
            raw.len()
        )));
    };
    let convert = |v: &toml::Value| -> Result<i64, SchemaError> {
        match (ty, v) {
            (ColumnType::Integer, toml::Value::Integer(i)) => Ok(*i),
            (ColumnType::Decimal, toml::Value::Integer(i)) => i
                .checked_mul(100)
                .ok_or_else(|| err(format!("bound `{i}` is too large"))),
            (ColumnType::Decimal, toml::Value::Float(f)) => parse_decimal_cents(&format!("{f}"))
                .ok_or_else(|| err(format!("bound `{f}` has more than two fraction digits"))),
            (ColumnType::Decimal, toml::Value::String(s)) => {
                parse_decimal_cents(s).ok_or_else(|| err(format!("bound `{s}` is not a decimal")))
            }
            (ColumnType::Date, toml::Value::String(s)) => parse_date_days(s)
                .ok_or_else(|| err(format!("bound `{s}` is not a date (YYYY-MM-DD)"))),
            (ColumnType::Date, toml::Value::Datetime(d)) => {
                let s = d.to_string();
                parse_date_days(&s)
                    .ok_or_else(|| err(format!("bound `{s}` is not a date (YYYY-MM-DD)")))
            }
            (ColumnType::Integer | ColumnType::Decimal | ColumnType::Date, other) => {
                Err(err(format!("bound `{other}` does not fit type `{ty}`")))
            }
            (ColumnType::String | ColumnType::Enum, _) => Err(err(format!(
                "`bounds` is only for integer, decimal and date columns, this one is `{ty}`"
            ))),
        }
    };
    let (lo, hi) = (convert(lo)?, convert(hi)?);
    if lo > hi {
        return Err(err(format!(
            "`bounds` has lo > hi ({} > {})",
            raw[0], raw[1]
        )));
    }
    Ok((lo, hi))
}

/// Parses a decimal amount (`-12`, `12.3`, `12.34`) into integer cents.
///
/// More than two fraction digits, signs in the middle, exponents and empty
/// strings are refused: money is never rounded silently.
pub fn parse_decimal_cents(text: &str) -> Option<i64> {
    parse_decimal_cents_bytes(text.as_bytes())
}

/// [`parse_decimal_cents`] on bytes (ASCII only).
pub fn parse_decimal_cents_bytes(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (whole, fraction) = match digits.iter().position(|&b| b == b'.') {
        Some(dot) => (&digits[..dot], &digits[dot + 1..]),
        None => (digits, &digits[digits.len()..]),
    };
    if (whole.is_empty() && fraction.is_empty()) || fraction.len() > 2 {
        return None;
    }
    let mut cents: i64 = 0;
    for &b in whole {
        if !b.is_ascii_digit() {
            return None;
        }
        cents = cents.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    let mut frac: i64 = 0;
    for (i, &b) in fraction.iter().enumerate() {
        if !b.is_ascii_digit() {
            return None;
        }
        frac += i64::from(b - b'0') * if i == 0 { 10 } else { 1 };
    }
    let cents = cents.checked_mul(100)?.checked_add(frac)?;
    Some(if negative { -cents } else { cents })
}

/// Days from 1970-01-01 to 0001-01-01 in chrono's "days from CE" numbering.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Parses a `YYYY-MM-DD` date into days since 1970-01-01.
pub fn parse_date_days(text: &str) -> Option<i64> {
    parse_date_days_bytes(text.as_bytes())
}

/// [`parse_date_days`] on bytes (ASCII only).
pub fn parse_date_days_bytes(b: &[u8]) -> Option<i64> {
    use chrono::Datelike;
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |s: &[u8]| -> Option<u32> {
        s.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let year = i32::try_from(num(&b[0..4])?).ok()?;
    let date = chrono::NaiveDate::from_ymd_opt(year, num(&b[5..7])?, num(&b[8..10])?)?;
    Some(i64::from(date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE))
}

/// Formats days since 1970-01-01 as `YYYY-MM-DD`.
pub fn format_date_days(days: i64) -> String {
    use chrono::Datelike;
    i32::try_from(days)
        .ok()
        .and_then(|d| d.checked_add(UNIX_EPOCH_DAYS_FROM_CE))
        .and_then(chrono::NaiveDate::from_num_days_from_ce_opt)
        .map_or_else(
            || format!("day {days}"),
            // Plain integer formatting: strftime parses its pattern per call.
            |d| format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
        )
}

/// Formats integer cents as a decimal amount.
pub fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
description = "test"
[[columns]]
name = "tin"
class = "subject_id"
type = "string"
[[columns]]
name = "state"
class = "public"
type = "enum"
values = ["CA", "NY"]
[[columns]]
name = "wages"
class = "attribute"
type = "decimal"
bounds = [0, 1000000]
[[columns]]
name = "birth_date"
class = "quasi"
type = "date"
"#;

    #[test]
    fn parses_a_good_schema() {
        let s = DatasetSchema::from_toml(GOOD).unwrap();
        assert_eq!(s.columns.len(), 4);
        assert_eq!(s.subject_column().name, "tin");
        assert_eq!(s.column("wages").unwrap().bounds, Some((0, 100_000_000)));
    }

    fn err(text: &str) -> String {
        DatasetSchema::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn refuses_two_subject_ids() {
        let text = GOOD
            .replace(
                "name = \"state\"\nclass = \"public\"\ntype = \"enum\"",
                "name = \"ssn\"\nclass = \"subject_id\"\ntype = \"string\"",
            )
            .replace("values = [\"CA\", \"NY\"]\n", "");
        assert_eq!(
            err(&text),
            "a schema needs exactly one `subject_id` column, found 2: `tin`, `ssn`"
        );
    }

    #[test]
    fn refuses_unknown_class_and_type() {
        assert!(
            err(&GOOD.replace("class = \"quasi\"", "class = \"secretish\""))
                .contains("unknown variant `secretish`")
        );
        assert!(
            err(&GOOD.replace("type = \"date\"", "type = \"float\""))
                .contains("unknown variant `float`")
        );
    }

    #[test]
    fn refuses_inverted_bounds() {
        assert_eq!(
            err(&GOOD.replace("bounds = [0, 1000000]", "bounds = [10, 1]")),
            "column `wages`: `bounds` has lo > hi (10 > 1)"
        );
    }

    #[test]
    fn refuses_public_without_domain() {
        let text = GOOD.replace("class = \"quasi\"", "class = \"public\"");
        assert!(err(&text).contains("public column `birth_date` needs a declared domain"));
    }

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(parse_decimal_cents("12.34"), Some(1234));
        assert_eq!(parse_decimal_cents("-0.5"), Some(-50));
        assert_eq!(parse_decimal_cents("7"), Some(700));
        assert_eq!(parse_decimal_cents("1.234"), None);
        assert_eq!(parse_decimal_cents("1e3"), None);
        assert_eq!(parse_decimal_cents(""), None);
        assert_eq!(parse_decimal_cents("-"), None);
        assert_eq!(parse_decimal_cents("."), None);
    }

    #[test]
    fn dates_round_trip() {
        let d = parse_date_days("2024-02-29").unwrap();
        assert_eq!(format_date_days(d), "2024-02-29");
        assert_eq!(parse_date_days("1970-01-01"), Some(0));
        assert_eq!(parse_date_days("2023-02-29"), None);
        assert_eq!(parse_date_days("2023-1-01"), None);
    }
}
