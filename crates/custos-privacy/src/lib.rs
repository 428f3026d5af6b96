//! Custos privacy mechanisms, pure (no I/O, no Arrow, no DataFusion):
//! aggregate SQL checked against an agreement's grant and planned for
//! privacy (clamping to the analyst's or privately chosen bounds, at most
//! `k` rows per subject, the
//! whole public domain of every `GROUP BY` column), true totals released
//! with OpenDP noise and 95% confidence intervals, per-agreement tokens,
//! and the private set intersection protocol.
//!
//! - [`query`]: the SQL allow-list.
//! - [`mechanism`]: calibration, noise and intervals through OpenDP.
//! - [`bounds`]: private clamping bounds for sums and averages without a `CLAMP`.
//! - [`quantile`]: quantile scores and OpenDP's noisy max.
//! - [`tokens`]: per-agreement tokens and generalisation (extracts, matches).
//! - [`psi`]: the private set intersection protocol core (ECDH on Ristretto255).
//!
//! `custos-engine` computes a plan's [`Totals`] over the encrypted files;
//! budgets and their durable charging are the broker's: [`plan`] says what
//! a query will spend before anything is read, [`release`] noises the
//! totals after the charge is durable.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bounds;
pub mod mechanism;
pub mod psi;
pub mod quantile;
pub mod query;
pub mod tokens;

use std::collections::BTreeSet;

use custos_model::schema::format_cents;
use custos_model::{ColumnType, DatasetSchema};
use custos_policy::scope::parse_row_scope;
use custos_policy::{Grant, PrivacyGrant, PrivacyMeasure, ScopeFilter};
use serde::{Deserialize, Serialize};

use crate::mechanism::{NoisyVector, Sensitivity};
use crate::query::{
    Aggregate, AggregateQuery, GrantedColumns, Operand, OutputColumn, QueryError, parse_query,
};

/// Why a query cannot be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivacyError {
    /// The SQL was refused.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The `WHERE` clause was refused.
    #[error("WHERE: {0}")]
    Where(String),
    /// The grant has no privacy terms (cannot happen for a validated agreement).
    #[error("the grant has no privacy terms")]
    NoPrivacyTerms,
    /// The spend asked for is not allowed.
    #[error("{0}")]
    Spend(String),
    /// Noise could not be calibrated or drawn.
    #[error(transparent)]
    Mechanism(#[from] mechanism::MechanismError),
    /// A column reached the noise step without declared bounds (the
    /// allow-list refuses such columns first; this is a fault).
    #[error("column `{0}` has no declared bounds")]
    MissingBounds(String),
}

impl PrivacyError {
    /// A value-free category for the public ledger (never the SQL's text).
    pub fn category(&self) -> &'static str {
        match self {
            Self::Query(QueryError::Syntax(_)) => "query does not parse",
            Self::Query(QueryError::UnknownColumn { .. }) => "unknown column",
            Self::Query(QueryError::NotGranted(_)) => "column not granted",
            Self::Query(_) => "query construct not allowed",
            Self::Where(_) => "WHERE clause refused",
            Self::Spend(_) => "spend refused",
            _ => "query failed",
        }
    }
}

/// A checked query and what it will spend.
#[derive(Debug, Clone)]
pub struct QueryPlan {
    /// The checked query.
    pub query: AggregateQuery,
    /// The grant's row scope and the query's `WHERE`, in storage units
    /// for the engine.
    pub filter_sql: Option<String>,
    /// The grant's privacy terms.
    pub privacy: PrivacyGrant,
    /// What the query spends in all (ε or ρ).
    pub spend: f64,
    /// Columns the query reads (for the policy decision).
    pub columns: Vec<String>,
}

/// The dataset a query reads (its one `FROM` table), to find its grant.
/// Only the `FROM` clause is checked here; [`plan`] checks the rest.
pub fn dataset_of(sql: &str) -> Result<String, PrivacyError> {
    use sqlparser::ast::{SetExpr, Statement, TableFactor};
    let dialect = sqlparser::dialect::GenericDialect {};
    let statements = sqlparser::parser::Parser::new(&dialect)
        .with_recursion_limit(32)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| QueryError::Syntax(e.to_string()))?;
    let not_allowed = |m: &str| PrivacyError::Query(QueryError::NotAllowed(m.to_owned()));
    let [Statement::Query(query)] = statements.as_slice() else {
        return Err(not_allowed("send exactly one SELECT statement"));
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(not_allowed(
            "only a plain SELECT is allowed (no UNION, INTERSECT, EXCEPT or VALUES)",
        ));
    };
    let [from] = select.from.as_slice() else {
        return Err(not_allowed(if select.from.is_empty() {
            "the query needs `FROM <dataset>`"
        } else {
            "joins are not allowed: query one dataset"
        }));
    };
    if !from.joins.is_empty() {
        return Err(not_allowed("joins are not allowed: query one dataset"));
    }
    match &from.relation {
        TableFactor::Table {
            name, args: None, ..
        } => Ok(name.to_string().to_lowercase()),
        _ => Err(not_allowed(
            "subqueries and table functions are not allowed in `FROM`",
        )),
    }
}

/// Checks `sql` against an aggregate `grant` on `dataset` and fixes its
/// spend: `spend` if given (refused above the grant's per-query cap or if
/// not positive), else the cap.
pub fn plan(
    sql: &str,
    dataset: &str,
    schema: &DatasetSchema,
    grant: &Grant,
    spend: Option<f64>,
) -> Result<QueryPlan, PrivacyError> {
    let privacy = grant.privacy.clone().ok_or(PrivacyError::NoPrivacyTerms)?;
    let granted: BTreeSet<String> = grant.columns.iter().cloned().collect();
    let cols = GrantedColumns {
        dataset,
        schema,
        columns: &granted,
    };
    let query = parse_query(sql, &cols)?;
    let mut columns: BTreeSet<String> = query.group_by.iter().cloned().collect();
    columns.extend(
        query
            .aggregates
            .iter()
            .filter_map(Aggregate::column)
            .map(str::to_owned),
    );
    let filter_sql = match &query.filter {
        None => None,
        Some(text) => {
            // Name-check every column first, for a clear error about identifiers.
            let every: BTreeSet<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
            let scope = parse_row_scope(text, &every).map_err(|e| match e {
                custos_policy::ScopeError::UngrantedColumn(column) => {
                    PrivacyError::Query(QueryError::UnknownColumn {
                        dataset: dataset.to_owned(),
                        column,
                    })
                }
                other => PrivacyError::Where(other.to_string()),
            })?;
            for c in &scope.columns {
                if schema.column(c).is_none() {
                    return Err(QueryError::UnknownColumn {
                        dataset: dataset.to_owned(),
                        column: c.clone(),
                    }
                    .into());
                }
                let column = schema.column(c).map(|c| c.class);
                if column.is_some_and(custos_model::ColumnClass::is_identifying) {
                    return Err(PrivacyError::Where(format!(
                        "column `{c}` is an identifier: aggregates never filter on identifiers"
                    )));
                }
                if !granted.contains(c) {
                    return Err(QueryError::NotGranted(c.clone()).into());
                }
                columns.insert(c.clone());
            }
            let filter = ScopeFilter::compile(text, schema)
                .map_err(|e| PrivacyError::Where(e.to_string()))?;
            Some(filter.to_sql())
        }
    };
    // The grant's row scope bounds every query: rows outside it are never
    // read, whatever the query's own `WHERE` says.
    let scope_sql = match &grant.row_scope {
        None => None,
        Some(text) => Some(
            ScopeFilter::compile(text, schema)
                .map_err(|e| PrivacyError::Where(format!("the grant's row scope: {e}")))?
                .to_sql(),
        ),
    };
    let filter_sql = match (scope_sql, filter_sql) {
        (None, f) | (f, None) => f,
        (Some(scope), Some(filter)) => Some(format!("({scope}) AND ({filter})")),
    };
    check_operands(&query, schema)?;
    let sym = privacy.measure.symbol();
    let spend = spend.unwrap_or(privacy.per_query);
    let shown = |v: f64| {
        if v != 0.0 && !(1e-4..1e6).contains(&v.abs()) {
            format!("{v:e}")
        } else {
            format!("{v}")
        }
    };
    if !(spend.is_finite() && spend > 0.0) {
        return Err(PrivacyError::Spend(format!(
            "the spend must be a positive number ({sym}), not {}",
            shown(spend)
        )));
    }
    if spend < MIN_SPEND {
        return Err(PrivacyError::Spend(format!(
            "the spend ({sym} = {}) is below {MIN_SPEND:e}: the noise would be too wide to use (or to represent)",
            shown(spend)
        )));
    }
    if spend > privacy.per_query {
        return Err(PrivacyError::Spend(format!(
            "the spend ({sym} = {}) exceeds the grant's per-query cap ({sym} = {})",
            shown(spend),
            privacy.per_query
        )));
    }
    Ok(QueryPlan {
        query,
        filter_sql,
        privacy,
        spend,
        columns: columns.into_iter().collect(),
    })
}

/// The least spend a query may ask for (ε or ρ): below it, noise scales
/// overflow the integers intervals are computed in, and the answer would
/// fail after its charge.
pub const MIN_SPEND: f64 = 1e-6;

/// Most histogram counters a query may keep per copy of its totals (the
/// engine holds a few copies at once): 2²⁴ counters are 128 MiB.
const MAX_COUNTERS: u128 = 1 << 24;

/// Refuses a query whose quantile histograms or private-bound bins, one per
/// group, would not fit in memory, or that aggregates a one-value column.
fn check_operands(query: &AggregateQuery, schema: &DatasetSchema) -> Result<(), PrivacyError> {
    let groups: u128 = query
        .group_by
        .iter()
        .map(|g| {
            schema
                .column(g)
                .map_or(1, |c| query::group_domain(c).len() as u128)
        })
        .product();
    let mut per_group: u128 = 0;
    for a in &query.aggregates {
        let Some(operand) = a.operand() else { continue };
        let (lo, hi) = range_of(schema, operand)?;
        if lo == hi {
            return Err(QueryError::NotAllowed(format!(
                "`{}`: `{}` can hold one value only (its declared bounds are equal); there is nothing to aggregate",
                a.label(),
                operand.column
            ))
            .into());
        }
        per_group += match a {
            Aggregate::Quantile { .. } => 2 * quantile::candidates(lo, hi).len() as u128 + 1,
            _ if operand.clamp.is_none() => 2 * (2 * bounds::grid(lo, hi).len() as u128 + 1),
            _ => 0,
        };
    }
    if groups.saturating_mul(per_group) > MAX_COUNTERS {
        return Err(QueryError::NotAllowed(format!(
            "quantiles and unclamped sums keep a histogram per group: {groups} groups need {} counters, more than the {MAX_COUNTERS} allowed; group by fewer columns, or CLAMP the sums",
            groups.saturating_mul(per_group)
        ))
        .into());
    }
    Ok(())
}

/// One released value with its interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cell {
    /// The noisy value as text (decimals in units), or null when an
    /// average's noisy count is not positive.
    pub value: Option<String>,
    /// Lower end of the 95% interval.
    pub low: Option<String>,
    /// Upper end of the 95% interval.
    pub high: Option<String>,
    /// For quantiles (which have no value interval): with probability
    /// ≥ 95%, the released value's rank among the group's values is within
    /// this many rows of the asked rank.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank_error: Option<u64>,
}

impl Cell {
    fn plain(value: Option<String>) -> Self {
        Self {
            value,
            low: None,
            high: None,
            rank_error: None,
        }
    }

    fn interval(value: String, low: String, high: String) -> Self {
        Self {
            value: Some(value),
            low: Some(low),
            high: Some(high),
            rank_error: None,
        }
    }
}

/// The true totals per group, before noise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Group keys in domain order (one label per `GROUP BY` column); one
    /// empty key when the query has no `GROUP BY`.
    pub groups: Vec<Vec<String>>,
    /// Per aggregate (as in the query), per group: the integer total. For
    /// `AVG` this is the sum; its count is in `avg_counts`. Empty for
    /// quantiles (see `histograms`).
    pub values: Vec<Vec<i64>>,
    /// For each `AVG` aggregate, per group, the count of its rows with a
    /// value in its column.
    pub avg_counts: Vec<Vec<i64>>,
    /// Per aggregate, per group: for quantiles, the histogram of values
    /// against the candidates of [`quantile::candidates`] over the
    /// operand's range ([`quantile::position`]); empty for the others.
    pub histograms: Vec<Vec<Vec<u64>>>,
    /// Per aggregate, per group: for a `SUM` or `AVG` without a `CLAMP`,
    /// its values binned against [`bounds::grid`] of the column's schema
    /// bounds (to clamp at privately chosen bounds); empty for the others.
    pub binned: Vec<Vec<bounds::Binned>>,
    /// Rows read after the filter, before bounding.
    pub rows_scanned: u64,
    /// Rows dropped by contribution bounding.
    pub rows_dropped: u64,
}

/// An answer: the select list's columns, one row per group of the domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Answer {
    /// Output column names.
    pub columns: Vec<String>,
    /// Rows: group keys as cells without intervals, aggregates with them.
    pub rows: Vec<Vec<Cell>>,
    /// The measure (`zcdp` or `pure`).
    pub measure: PrivacyMeasure,
    /// What the query spent (ε or ρ).
    pub spent: f64,
    /// Per aggregate: the noise scale (Laplace scale or Gaussian σ in
    /// storage units; for quantiles, the scale on the scores).
    pub scales: Vec<(String, f64)>,
    /// Per value aggregate: the range its values were clamped to (or, for
    /// a quantile, searched), and where that range came from.
    #[serde(default)]
    pub bounds: Vec<AppliedBounds>,
}

/// The range a value aggregate's rows were clamped to, and its source.
/// How many values were clamped is not released (it would cost budget);
/// an analyst who wants it asks `COUNT(*) … WHERE col > high`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppliedBounds {
    /// The aggregate's label, as in `columns`.
    pub aggregate: String,
    /// The lowest value counted, in the column's units.
    pub low: String,
    /// The highest value counted.
    pub high: String,
    /// Where the range came from.
    pub source: BoundsSource,
    /// What choosing the range spent (ε or ρ; part of the query's spend);
    /// zero unless chosen privately.
    pub spent: f64,
}

/// Where an aggregate's range came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BoundsSource {
    /// The analyst's `CLAMP(col, low, high)`.
    Analyst,
    /// Chosen privately: where a few hundred of the rows read lie beyond
    /// it, found by a charged noisy walk down a grid ([`bounds`]).
    Private,
    /// The schema's declared bounds (a quantile without a `CLAMP`
    /// searches them on a grid of 0.5% steps).
    Schema,
}

/// A column's declared bounds. The query allow-list refuses a column
/// without them, so a miss here is a fault, never a zero sensitivity.
fn bounds_of(schema: &DatasetSchema, column: &str) -> Result<(i64, i64), PrivacyError> {
    schema
        .column(column)
        .and_then(|c| c.bounds)
        .ok_or_else(|| PrivacyError::MissingBounds(column.to_owned()))
}

/// How much one subject (at most `k` rows) can move a count, in L1 and L2.
fn count_sensitivity(a: &Aggregate, k: f64) -> Sensitivity {
    match a {
        Aggregate::CountSubjects => Sensitivity {
            l1: k,
            l2: k.sqrt(),
        },
        _ => Sensitivity { l1: k, l2: k },
    }
}

/// How much one subject (at most `k` rows, each clamped to `[low, high]`)
/// can move a vector of per-group sums, in L1 and L2.
fn sum_sensitivity(low: i64, high: i64, k: f64) -> Sensitivity {
    #[allow(clippy::cast_precision_loss)]
    let bound = low.unsigned_abs().max(high.unsigned_abs()) as f64;
    Sensitivity {
        l1: k * bound,
        l2: k * bound,
    }
}

/// The range an operand's values are clamped to: the analyst's clamp, else
/// the schema's bounds.
fn range_of(schema: &DatasetSchema, operand: &Operand) -> Result<(i64, i64), PrivacyError> {
    operand
        .range(schema)
        .ok_or_else(|| PrivacyError::MissingBounds(operand.column.clone()))
}

/// An average's share of its (remaining) spend that goes to its sum; the
/// rest goes to its count. A sum's noise is calibrated to the clamp, which
/// is many times the typical value, so the sum needs the larger share.
const AVG_SUM_SHARE: f64 = 0.8;

/// `sum / n` rounded to the nearest storage unit (how averages are shown).
fn rounded_mean(sum: i64, n: i64) -> i64 {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    let mean = (sum as f64 / n as f64).round() as i64;
    mean
}

fn format_value(ty: Option<ColumnType>, v: i64) -> String {
    if ty == Some(ColumnType::Decimal) {
        format_cents(v)
    } else {
        v.to_string()
    }
}

/// Releases the plan's true `totals` (computed by the engine over
/// `schema`'s dataset) with noise. Call it only after the spend is durably
/// charged.
///
/// The spend is split evenly over the aggregates. A `SUM` or `AVG` without
/// a `CLAMP` spends [`bounds::BOUND_SHARE`] of its part choosing its bounds
/// privately; an `AVG` spends [`AVG_SUM_SHARE`] of the rest on its sum and
/// the remainder on its count.
pub fn release(
    plan: &QueryPlan,
    schema: &DatasetSchema,
    totals: &Totals,
) -> Result<Answer, PrivacyError> {
    let k = plan.privacy.contributions;
    #[allow(clippy::cast_precision_loss)]
    let share = plan.spend / plan.query.aggregates.len().max(1) as f64;
    let measure = plan.privacy.measure;
    let mut released: Vec<Released> = Vec::new();
    let mut scales = Vec::new();
    let mut applied = Vec::new();
    let mut spent = 0.0;
    let mut avg_index = 0;
    for (i, a) in plan.query.aggregates.iter().enumerate() {
        let label = a.label();
        let ty = a.column().and_then(|c| schema.column(c)).map(|c| c.ty);
        let noisy = match a {
            Aggregate::CountRows | Aggregate::CountSubjects => mechanism::release(
                &totals.values[i],
                measure,
                share,
                count_sensitivity(a, f64::from(k)),
            )?,
            Aggregate::Quantile { operand, per_10000 } => {
                let scores: Vec<Vec<u64>> = totals.histograms[i]
                    .iter()
                    .map(|h| quantile::scores(h, *per_10000))
                    .collect();
                let choices = quantile::release_quantile(
                    &scores,
                    measure,
                    share,
                    quantile::score_sensitivity(*per_10000, k),
                )?;
                spent += choices.spent;
                scales.push((label.clone(), choices.scale));
                let (lo, hi) = range_of(schema, operand)?;
                let grid = quantile::candidates(lo, hi);
                applied.push(AppliedBounds {
                    aggregate: label,
                    low: format_value(ty, lo),
                    high: format_value(ty, hi),
                    source: if operand.clamp.is_some() {
                        BoundsSource::Analyst
                    } else {
                        BoundsSource::Schema
                    },
                    spent: 0.0,
                });
                released.push(Released::Quantile {
                    values: choices.chosen.iter().map(|c| grid[*c]).collect(),
                    rank_error: choices.rank_error,
                });
                continue;
            }
            Aggregate::Sum(operand) | Aggregate::Avg(operand) => {
                let (sums, (low, high), source, chose, left) = match operand.clamp {
                    Some(c) => (
                        totals.values[i].clone(),
                        (c.low, c.high),
                        BoundsSource::Analyst,
                        0.0,
                        share,
                    ),
                    None => {
                        let (lo, hi) = bounds_of(schema, &operand.column)?;
                        let grid = bounds::grid(lo, hi);
                        let mut all = bounds::Binned::new(grid.len());
                        for group in &totals.binned[i] {
                            all.merge(group);
                        }
                        let left = share * (1.0 - bounds::BOUND_SHARE);
                        let chosen = bounds::choose(
                            &all.counts,
                            &grid,
                            measure,
                            share * bounds::BOUND_SHARE,
                            k,
                            0,
                        )?;
                        let sums = totals.binned[i]
                            .iter()
                            .map(|b| b.clamped_sum(&grid, chosen.low_index, chosen.high_index))
                            .collect();
                        (
                            sums,
                            (chosen.low, chosen.high),
                            BoundsSource::Private,
                            chosen.spent,
                            left,
                        )
                    }
                };
                spent += chose;
                applied.push(AppliedBounds {
                    aggregate: label.clone(),
                    low: format_value(ty, low),
                    high: format_value(ty, high),
                    source,
                    spent: chose,
                });
                let (sum_share, count_share) = if matches!(a, Aggregate::Avg(_)) {
                    (left * AVG_SUM_SHARE, left * (1.0 - AVG_SUM_SHARE))
                } else {
                    (left, 0.0)
                };
                let noisy = mechanism::release(
                    &sums,
                    measure,
                    sum_share,
                    sum_sensitivity(low, high, f64::from(k)),
                )?;
                if matches!(a, Aggregate::Avg(_)) {
                    let count = mechanism::release(
                        &totals.avg_counts[avg_index],
                        measure,
                        count_share,
                        count_sensitivity(&Aggregate::CountRows, f64::from(k)),
                    )?;
                    avg_index += 1;
                    spent += noisy.spent + count.spent;
                    scales.push((label, noisy.scale));
                    released.push(Released::Noisy(noisy, Some(count)));
                    continue;
                }
                noisy
            }
        };
        spent += noisy.spent;
        scales.push((label, noisy.scale));
        released.push(Released::Noisy(noisy, None));
    }
    let columns: Vec<String> = plan.query.output.iter().map(|(n, _)| n.clone()).collect();
    let mut rows = Vec::with_capacity(totals.groups.len());
    for (g, key) in totals.groups.iter().enumerate() {
        let mut row = Vec::with_capacity(columns.len());
        for (_, out) in &plan.query.output {
            row.push(match out {
                OutputColumn::Group(name) => {
                    let pos = plan
                        .query
                        .group_by
                        .iter()
                        .position(|n| n == name)
                        .unwrap_or(0);
                    Cell::plain(key.get(pos).cloned())
                }
                OutputColumn::Aggregate(i) => match &released[*i] {
                    Released::Noisy(noisy, count) => {
                        cell(&plan.query.aggregates[*i], schema, noisy, count.as_ref(), g)
                    }
                    Released::Quantile { values, rank_error } => {
                        let ty = plan.query.aggregates[*i]
                            .column()
                            .and_then(|c| schema.column(c))
                            .map(|c| c.ty);
                        Cell {
                            rank_error: Some(*rank_error),
                            ..Cell::plain(Some(format_value(ty, values[g])))
                        }
                    }
                },
            });
        }
        rows.push(row);
    }
    Ok(Answer {
        columns,
        rows,
        measure,
        // The parts add up to the spend; floating point may put their sum
        // an ulp above it.
        spent: spent.min(plan.spend),
        scales,
        bounds: applied,
    })
}

/// One aggregate's released values.
enum Released {
    /// Noisy totals, with the noisy count of an `AVG`.
    Noisy(NoisyVector, Option<NoisyVector>),
    /// A quantile's chosen candidate per group, and its rank bound.
    Quantile { values: Vec<i64>, rank_error: u64 },
}

fn cell(
    a: &Aggregate,
    schema: &DatasetSchema,
    noisy: &NoisyVector,
    count: Option<&NoisyVector>,
    g: usize,
) -> Cell {
    let v = noisy.values[g];
    let w = noisy.half_width;
    match (a, count) {
        (Aggregate::Avg(o), Some(count)) => {
            let ty = schema.column(&o.column).map(|c| c.ty);
            let n = count.values[g];
            let nw = count.half_width;
            if n <= 0 {
                return Cell::plain(None);
            }
            // Both intervals hold with ≥ 95% each; the ratio's interval is
            // their corners (conservative).
            let ratio = |s: i64, n: i64| -> Option<String> {
                (n > 0).then(|| format_value(ty, rounded_mean(s, n)))
            };
            let (s_lo, s_hi) = (v.saturating_sub(w), v.saturating_add(w));
            let (n_lo, n_hi) = (n.saturating_sub(nw), n.saturating_add(nw));
            let low = if s_lo >= 0 {
                ratio(s_lo, n_hi)
            } else {
                ratio(s_lo, n_lo.max(1))
            };
            let high = if s_hi >= 0 {
                ratio(s_hi, n_lo.max(1))
            } else {
                ratio(s_hi, n_hi)
            };
            Cell {
                value: ratio(v, n),
                low,
                high,
                rank_error: None,
            }
        }
        (Aggregate::Sum(o), _) => {
            let ty = schema.column(&o.column).map(|c| c.ty);
            Cell::interval(
                format_value(ty, v),
                format_value(ty, v.saturating_sub(w)),
                format_value(ty, v.saturating_add(w)),
            )
        }
        _ => Cell::interval(
            v.to_string(),
            v.saturating_sub(w).to_string(),
            v.saturating_add(w).to_string(),
        ),
    }
}
