//! Agreements: versioned data-sharing agreements authored as TOML.
//!
//! Parsing ([`Agreement::from_toml`]) checks the form; validation
//! ([`Agreement::validate`]) checks it against the datasets it names and the
//! rules of law and policy. Both are pure. The format is documented in
//! `docs/agreements.md`.

use std::collections::BTreeSet;

use chrono::{Months, NaiveDate};
use custos_model::{ColumnClass, DatasetSchema};
use serde::{Deserialize, Serialize};

use crate::extracts::PseudonymousGrant;
use crate::matches::MatchGrant;
use crate::scope::{RowScope, ScopeError, parse_row_scope};
use crate::scope_filter::ScopeFilter;

/// How a grant lets data be used (DESIGN.md, "Modes in detail").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Differentially private aggregates only.
    Aggregate,
    /// Rows with identifiers replaced by per-agreement tokens.
    Pseudonymous,
    /// Named subjects, justified and approved.
    Identified,
    /// Private set intersection against the requester's list.
    Match,
}

impl Mode {
    /// The mode's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aggregate => "aggregate",
            Self::Pseudonymous => "pseudonymous",
            Self::Identified => "identified",
            Self::Match => "match",
        }
    }
}

/// The two sides of an agreement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parties {
    /// The organisation that holds the data.
    pub custodian: String,
    /// The organisation that asks.
    pub requester: String,
}

/// The legal basis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Citation {
    /// The statute, regulation or routine use relied on.
    pub citation: String,
}

/// Limits on a grant's use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most distinct subjects per day (identified and pseudonymous modes).
    pub subjects_per_day: Option<u32>,
    /// Most requests per hour.
    pub requests_per_hour: Option<u32>,
    /// Approvals by another person each request needs (identified: ≥ 1).
    #[serde(default)]
    pub approvals: u32,
}

/// How an aggregate grant's privacy loss is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PrivacyMeasure {
    /// Zero-concentrated DP: budgets in ρ, discrete Gaussian noise.
    Zcdp,
    /// Pure DP: budgets in ε, discrete Laplace noise.
    Pure,
}

impl PrivacyMeasure {
    /// The name as written in agreements (`zcdp`, `pure`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zcdp => "zcdp",
            Self::Pure => "pure",
        }
    }

    /// The symbol budgets are written in.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Zcdp => "ρ",
            Self::Pure => "ε",
        }
    }
}

fn one() -> u32 {
    1
}

/// The differential-privacy terms of an aggregate grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyGrant {
    /// `zcdp` (ρ) or `pure` (ε).
    pub measure: PrivacyMeasure,
    /// The total the agreement may spend on this dataset.
    pub budget: f64,
    /// The most one query may spend (also its default spend).
    pub per_query: f64,
    /// Rows each subject may contribute to one query (k), chosen by the
    /// subject's rows' content, never by input order.
    #[serde(default = "one")]
    pub contributions: u32,
}

/// One permission inside an agreement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The dataset.
    pub dataset: String,
    /// The mode.
    pub mode: Mode,
    /// Columns the grant may touch.
    pub columns: Vec<String>,
    /// Optional restriction to some rows (see [`crate::scope`]).
    pub row_scope: Option<String>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Differential privacy (aggregate grants: required).
    pub privacy: Option<PrivacyGrant>,
    /// Extract terms (pseudonymous grants: required).
    pub pseudonymous: Option<PseudonymousGrant>,
    /// Matching terms (match grants: required), `[grants.match]`.
    #[serde(rename = "match")]
    pub matching: Option<MatchGrant>,
}

/// A data-sharing agreement as authored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agreement {
    /// Stable id: `[a-z0-9][a-z0-9._-]{0,63}`; versions share it.
    pub id: String,
    /// Short title.
    pub title: String,
    /// The parties.
    pub parties: Parties,
    /// Why the data is shared.
    pub purpose: String,
    /// The legal authority.
    pub legal_authority: Citation,
    /// First day the agreement is in force.
    #[serde(deserialize_with = "toml_date")]
    pub valid_from: NaiveDate,
    /// Last day the agreement is in force.
    #[serde(deserialize_with = "toml_date")]
    pub valid_until: NaiveDate,
    /// How many times the agreement was renewed (matching: at most once).
    #[serde(default)]
    pub renewals: u32,
    /// If present, disclosures under this agreement are left out of subject
    /// reports, under this citation (e.g. an ongoing law-enforcement matter).
    pub withhold_from_subject_reports: Option<Citation>,
    /// Its ordinary use (usual hours, case references), for the
    /// unusual-browsing rules; decides nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<crate::monitoring::Monitoring>,
    /// The permissions. An agreement without grants grants nothing.
    pub grants: Vec<Grant>,
}

/// Why an agreement was refused. Messages quote user input in backticks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgreementError {
    /// Not valid TOML, or an unknown or missing field.
    #[error("agreement is not valid: {0}")]
    Syntax(String),
    /// The validity window ended before the day it is applied.
    #[error(
        "the agreement expired on {until} (today is {today}): nothing could run under it; set a `valid_until` in the future, or suspend or revoke an agreement to end it early"
    )]
    Expired {
        /// Its last day.
        until: NaiveDate,
        /// The day it was applied.
        today: NaiveDate,
    },
    /// An id that breaks the naming rule.
    #[error(
        "agreement id `{0}` is not allowed: use 1-64 characters of a-z, 0-9, ., _ and -, starting with a letter or digit"
    )]
    BadId(String),
    /// A required text is empty.
    #[error("`{0}` must not be empty")]
    Empty(&'static str),
    /// The validity window is inverted.
    #[error("`valid_until` ({until}) is before `valid_from` ({from})")]
    Window {
        /// Start.
        from: NaiveDate,
        /// End.
        until: NaiveDate,
    },
    /// No grants.
    #[error("the agreement has no grants: deny by default, so it would allow nothing")]
    NoGrants,
    /// A grant names a dataset that does not exist.
    #[error("grant {grant}: no dataset `{dataset}`")]
    UnknownDataset {
        /// Grant number (1-based).
        grant: usize,
        /// The dataset.
        dataset: String,
    },
    /// A grant names a column the dataset lacks.
    #[error("grant {grant}: dataset `{dataset}` has no column `{column}`")]
    UnknownColumn {
        /// Grant number (1-based).
        grant: usize,
        /// The dataset.
        dataset: String,
        /// The column.
        column: String,
    },
    /// The `[monitoring]` section is malformed.
    #[error("{0}")]
    Monitoring(String),
    /// A grant breaks a rule of its mode.
    #[error("grant {grant}: {message}")]
    Rule {
        /// Grant number (1-based).
        grant: usize,
        /// What is wrong.
        message: String,
    },
    /// A row scope was refused.
    #[error("grant {grant}: {cause}")]
    Scope {
        /// Grant number (1-based).
        grant: usize,
        /// Why.
        cause: ScopeError,
    },
    /// A matching agreement exceeds the Computer Matching Act's limits.
    #[error("{0}")]
    MatchingLimits(String),
}

/// The rules of an aggregate grant's privacy terms.
fn check_privacy(privacy: Option<&PrivacyGrant>) -> Result<(), String> {
    let Some(p) = privacy else {
        return Err(
            "an aggregate grant needs `[grants.privacy]` with `measure`, `budget` and `per_query`"
                .into(),
        );
    };
    let sym = p.measure.symbol();
    if !(p.budget.is_finite() && p.budget > 0.0) {
        return Err(format!(
            "the privacy budget must be a positive number ({sym}), not {}",
            p.budget
        ));
    }
    if !(p.per_query.is_finite() && p.per_query > 0.0) {
        return Err(format!(
            "`per_query` must be a positive number ({sym}), not {}",
            p.per_query
        ));
    }
    if p.per_query > p.budget {
        return Err(format!(
            "`per_query` ({sym} = {}) exceeds the whole budget ({sym} = {})",
            p.per_query, p.budget
        ));
    }
    if p.contributions == 0 || p.contributions > 1000 {
        return Err("`contributions` must be between 1 and 1000 rows per subject".into());
    }
    Ok(())
}

/// Reads a TOML date (`2026-01-01`) or a `"2026-01-01"` string.
fn toml_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NaiveDate, D::Error> {
    use serde::de::Error;
    let text = match toml::Value::deserialize(d)? {
        toml::Value::Datetime(dt) if dt.time.is_none() && dt.offset.is_none() => dt.to_string(),
        toml::Value::String(s) => s,
        other => {
            return Err(D::Error::custom(format!(
                "expected a date like 2026-01-31, found `{other}`"
            )));
        }
    };
    NaiveDate::parse_from_str(&text, "%Y-%m-%d")
        .map_err(|_| D::Error::custom(format!("`{text}` is not a date like 2026-01-31")))
}

/// Checks an agreement id.
pub fn valid_agreement_id(id: &str) -> bool {
    let first_ok = id
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    first_ok
        && id.len() <= 64
        && id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Longest a matching agreement may run, in months, before renewal.
pub const MATCH_MONTHS: u32 = 18;
/// Longest one renewal of a matching agreement, in months.
pub const MATCH_RENEWAL_MONTHS: u32 = 12;

impl Agreement {
    /// Parses an agreement's TOML text (form only; see [`Agreement::validate`]).
    pub fn from_toml(text: &str) -> Result<Self, AgreementError> {
        let agreement: Self = toml::from_str(text).map_err(|e| {
            AgreementError::Syntax(
                e.to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })?;
        if !valid_agreement_id(&agreement.id) {
            return Err(AgreementError::BadId(agreement.id));
        }
        for (field, value) in [
            ("title", &agreement.title),
            ("purpose", &agreement.purpose),
            ("parties.custodian", &agreement.parties.custodian),
            ("parties.requester", &agreement.parties.requester),
            (
                "legal_authority.citation",
                &agreement.legal_authority.citation,
            ),
        ] {
            if value.trim().is_empty() {
                return Err(AgreementError::Empty(field));
            }
        }
        if let Some(w) = &agreement.withhold_from_subject_reports
            && w.citation.trim().is_empty()
        {
            return Err(AgreementError::Empty(
                "withhold_from_subject_reports.citation",
            ));
        }
        if agreement.valid_until < agreement.valid_from {
            return Err(AgreementError::Window {
                from: agreement.valid_from,
                until: agreement.valid_until,
            });
        }
        if agreement.grants.is_empty() {
            return Err(AgreementError::NoGrants);
        }
        if let Some(m) = &agreement.monitoring {
            m.compile().map_err(AgreementError::Monitoring)?;
        }
        Ok(agreement)
    }

    /// Checks every grant against the datasets (`schema_of` looks one up)
    /// and the rules: columns exist, identifying columns never reach the
    /// aggregate mode, identified grants need approvals, row scopes read
    /// only granted columns, matching agreements respect 18 + 12 months.
    /// Returns each grant's parsed row scope.
    pub fn validate<'a>(
        &self,
        schema_of: impl Fn(&str) -> Option<&'a DatasetSchema>,
    ) -> Result<Vec<Option<RowScope>>, AgreementError> {
        let mut scopes = Vec::with_capacity(self.grants.len());
        for (i, grant) in self.grants.iter().enumerate() {
            let n = i + 1;
            let rule = |message: String| AgreementError::Rule { grant: n, message };
            let schema =
                schema_of(&grant.dataset).ok_or_else(|| AgreementError::UnknownDataset {
                    grant: n,
                    dataset: grant.dataset.clone(),
                })?;
            if grant.columns.is_empty() {
                return Err(rule("a grant must name at least one column".into()));
            }
            let mut granted = BTreeSet::new();
            for name in &grant.columns {
                let column = schema
                    .column(name)
                    .ok_or_else(|| AgreementError::UnknownColumn {
                        grant: n,
                        dataset: grant.dataset.clone(),
                        column: name.clone(),
                    })?;
                if !granted.insert(name.clone()) {
                    return Err(rule(format!("column `{name}` is listed twice")));
                }
                if grant.mode == Mode::Aggregate && column.class.is_identifying() {
                    return Err(rule(format!(
                        "an aggregate grant may not include `{name}` (class `{}`): aggregates never touch identifiers",
                        column.class
                    )));
                }
            }
            match (grant.mode, &grant.pseudonymous) {
                (Mode::Pseudonymous, None) => {
                    return Err(rule(
                        "a pseudonymous grant needs `[grants.pseudonymous]` with `k` and `max_rows`"
                            .into(),
                    ));
                }
                (Mode::Pseudonymous, Some(terms)) => {
                    terms.validate(&grant.columns, schema).map_err(rule)?;
                }
                (_, Some(_)) => {
                    return Err(rule(
                        "`pseudonymous` applies to pseudonymous grants only".into(),
                    ));
                }
                (_, None) => {}
            }
            match (grant.mode, &grant.matching) {
                (Mode::Match, None) => {
                    return Err(rule(
                        "a match grant needs `[grants.match]` with `reveal` (`matches` or `count`) and `pad_to`"
                            .into(),
                    ));
                }
                (Mode::Match, Some(terms)) => {
                    terms.validate().map_err(rule)?;
                    // A partner with unlimited jobs could enumerate the
                    // other side's registry one guessed list at a time.
                    if grant.limits.requests_per_hour.is_none() {
                        return Err(rule(
                            "a match grant needs `limits.requests_per_hour` (match jobs per hour): without it a partner could run a job per guessed list".into(),
                        ));
                    }
                    match grant.limits.subjects_per_day {
                        Some(cap) if u64::from(cap) >= terms.pad_to => {}
                        _ => {
                            return Err(rule(format!(
                                "a match grant needs `limits.subjects_per_day` (keys matched per day, counted as the {} points of each job) of at least `pad_to`",
                                terms.pad_to
                            )));
                        }
                    }
                }
                (_, Some(_)) => {
                    return Err(rule("`match` applies to match grants only".into()));
                }
                (_, None) => {}
            }
            match grant.mode {
                Mode::Aggregate => check_privacy(grant.privacy.as_ref()).map_err(rule)?,
                Mode::Pseudonymous if grant.limits.requests_per_hour.is_none() => {
                    return Err(rule(
                        "a pseudonymous grant needs `limits.requests_per_hour` (extracts per hour under the agreement): unlimited extracts allow differencing".into(),
                    ));
                }
                _ if grant.privacy.is_some() => {
                    return Err(rule("`privacy` applies to aggregate grants only".into()));
                }
                Mode::Identified if grant.limits.approvals == 0 => {
                    return Err(rule(
                        "an identified grant needs `limits.approvals` of at least 1 (the two-person rule)".into(),
                    ));
                }
                Mode::Match
                    if !grant.columns.iter().any(|c| {
                        schema
                            .column(c)
                            .is_some_and(|c| c.class == ColumnClass::SubjectId)
                    }) =>
                {
                    return Err(rule("a match grant must include the dataset's `subject_id` column (the matching key)".into()));
                }
                _ => {}
            }
            let scope = match &grant.row_scope {
                Some(text) => {
                    let scope = parse_row_scope(text, &granted)
                        .map_err(|cause| AgreementError::Scope { grant: n, cause })?;
                    // Literals must fit their columns' types (caught here, not at use).
                    ScopeFilter::compile(text, schema)
                        .map_err(|cause| AgreementError::Scope { grant: n, cause })?;
                    Some(scope)
                }
                None => None,
            };
            scopes.push(scope);
        }
        if self.grants.iter().any(|g| g.mode == Mode::Match) {
            self.check_matching_limits()?;
        }
        Ok(scopes)
    }

    /// The Computer Matching Act (5 U.S.C. 552a(o)(2)(C)): a matching
    /// agreement lasts at most 18 months and may be renewed once for at
    /// most 12 more.
    fn check_matching_limits(&self) -> Result<(), AgreementError> {
        if self.renewals > 1 {
            return Err(AgreementError::MatchingLimits(format!(
                "a matching agreement may be renewed once, this one says {} renewals",
                self.renewals
            )));
        }
        let months = MATCH_MONTHS
            + if self.renewals == 1 {
                MATCH_RENEWAL_MONTHS
            } else {
                0
            };
        let latest = self
            .valid_from
            .checked_add_months(Months::new(months))
            .and_then(|d| d.pred_opt())
            .unwrap_or(NaiveDate::MAX);
        if self.valid_until > latest {
            return Err(AgreementError::MatchingLimits(format!(
                "a matching agreement {} may run at most {months} months: from {} it must end by {latest}, not {}",
                if self.renewals == 1 {
                    "renewed once"
                } else {
                    "not renewed"
                },
                self.valid_from,
                self.valid_until
            )));
        }
        Ok(())
    }

    /// Refuses a new version that changes the privacy measure of a
    /// dataset's grant: the budget is kept per agreement and dataset in one
    /// measure, so the first query after such a change would fail (after
    /// its ledger entry) and the agreement could not be used again.
    pub fn check_follows(&self, previous: &Self) -> Result<(), AgreementError> {
        for (i, grant) in self.grants.iter().enumerate() {
            let Some(privacy) = &grant.privacy else {
                continue;
            };
            let before = previous
                .grants
                .iter()
                .filter(|g| g.dataset == grant.dataset)
                .find_map(|g| g.privacy.as_ref());
            if let Some(before) = before
                && before.measure != privacy.measure
            {
                return Err(AgreementError::Rule {
                    grant: i + 1,
                    message: format!(
                        "the privacy measure on `{}` cannot change between versions ({} before, {} now): its budget is kept in one measure; apply a new agreement id instead",
                        grant.dataset,
                        before.measure.as_str(),
                        privacy.measure.as_str()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Refuses an agreement whose window ended before `today` (applying it
    /// would do nothing; a mistyped year is the usual cause). One that
    /// starts after `today` is fine: it is refused until then.
    pub fn check_not_expired(&self, today: NaiveDate) -> Result<(), AgreementError> {
        if self.valid_until < today {
            return Err(AgreementError::Expired {
                until: self.valid_until,
                today,
            });
        }
        Ok(())
    }

    /// Whether the agreement is in force on `day` (validity window only;
    /// suspension and revocation are states kept by the store).
    pub fn in_force_on(&self, day: NaiveDate) -> bool {
        self.valid_from <= day && day <= self.valid_until
    }
}
