//! The schema files that go with the generated CSVs (see `docs/datasets.md`).

pub(crate) const TAX_HEADER: [&str; 13] = [
    "tin",
    "name",
    "address",
    "zip",
    "birth_date",
    "filing_status",
    "wages",
    "agi",
    "tax",
    "refund",
    "bank_account",
    "state",
    "tax_year",
];

pub(crate) const BENEFITS_HEADER: [&str; 6] = [
    "ssn",
    "name",
    "birth_date",
    "monthly_benefit",
    "payment_account",
    "state",
];

pub(crate) const DEATHS_HEADER: [&str; 4] = ["ssn", "name", "birth_date", "death_date"];

/// Schema of `tax_returns.csv`: one row per individual income tax return.
pub const TAX_RETURNS_SCHEMA: &str = r#"# Individual income tax returns: one row per return and tax year.
description = "Individual income tax returns (synthetic)"

[[columns]]
name = "tin"
class = "subject_id"
type = "string"
description = "Taxpayer identification number, AAA-GG-SSSS"

[[columns]]
name = "name"
class = "identifier"
type = "string"
describes = "full_name"

[[columns]]
name = "address"
class = "identifier"
type = "string"
describes = "address"

[[columns]]
name = "zip"
class = "quasi"
type = "string"
describes = "zip"

[[columns]]
name = "birth_date"
class = "quasi"
type = "date"
bounds = ["1900-01-01", "2030-12-31"]

[[columns]]
name = "filing_status"
class = "public"
type = "enum"
values = ["single", "married_joint", "married_separate", "head_of_household", "qualifying_surviving_spouse"]

[[columns]]
name = "wages"
class = "attribute"
type = "decimal"
bounds = [0, 10000000]
description = "Wages, salaries and tips in dollars"

[[columns]]
name = "agi"
class = "attribute"
type = "decimal"
bounds = [-1000000, 20000000]
description = "Adjusted gross income in dollars"

[[columns]]
name = "tax"
class = "attribute"
type = "decimal"
bounds = [0, 8000000]

[[columns]]
name = "refund"
class = "attribute"
type = "decimal"
bounds = [0, 1000000]

[[columns]]
name = "bank_account"
class = "identifier"
type = "string"
nullable = true
description = "Account the refund is deposited to; empty when paid by check"

[[columns]]
name = "state"
class = "public"
type = "enum"
values = ["AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY"]

[[columns]]
name = "tax_year"
class = "public"
type = "integer"
bounds = [2015, 2035]
"#;

/// Schema of `benefits.csv`: one row per beneficiary on the roll.
pub const BENEFITS_SCHEMA: &str = r#"# A benefits roll: one row per person receiving a monthly benefit.
description = "Monthly benefits roll (synthetic)"

[[columns]]
name = "ssn"
class = "subject_id"
type = "string"

[[columns]]
name = "name"
class = "identifier"
type = "string"
describes = "full_name"

[[columns]]
name = "birth_date"
class = "quasi"
type = "date"
bounds = ["1900-01-01", "2030-12-31"]

[[columns]]
name = "monthly_benefit"
class = "attribute"
type = "decimal"
bounds = [0, 10000]

[[columns]]
name = "payment_account"
class = "identifier"
type = "string"

[[columns]]
name = "state"
class = "public"
type = "enum"
values = ["AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY"]
"#;

/// Schema of `deaths.csv`: a death registry. Its SSNs are digits only, as
/// such registries often write them; matching normalises both sides.
pub const DEATHS_SCHEMA: &str = r#"# A death registry: one row per recorded death.
description = "Death registry (synthetic)"

[[columns]]
name = "ssn"
class = "subject_id"
type = "string"
description = "SSN, nine digits without dashes"

[[columns]]
name = "name"
class = "identifier"
type = "string"
describes = "full_name"

[[columns]]
name = "birth_date"
class = "quasi"
type = "date"
bounds = ["1900-01-01", "2030-12-31"]

[[columns]]
name = "death_date"
class = "quasi"
type = "date"
bounds = ["1900-01-01", "2030-12-31"]
"#;
