//! The aggregate SQL a requester may send, parsed with `sqlparser` and held
//! to an allow-list before anything runs.
//!
//! Accepted: `SELECT` of `COUNT(*)`, `COUNT(DISTINCT <subject id>)`,
//! `SUM(col)`, `AVG(col)` and quantiles (`MEDIAN(col)`, `QUANTILE(col, p)`,
//! `PERCENTILE_CONT(p) WITHIN GROUP (ORDER BY col)`) over granted bounded
//! numeric columns, and the `GROUP BY`
//! columns themselves; `FROM` the dataset; `WHERE` as a row scope over
//! granted non-identifying columns; `GROUP BY` granted `public` or `quasi` columns
//! (whose whole declared domain is released, empty groups included).
//! Everything else is refused with the offending part named.

use std::collections::BTreeSet;

use custos_model::{ColumnClass, ColumnType, DatasetSchema};
use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Query, SelectItem, SetExpr,
    Statement, TableFactor,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

/// Longest query accepted.
const MAX_QUERY_BYTES: usize = 8192;
/// Largest declared domain a `GROUP BY` may release.
pub const MAX_GROUPS: usize = 100_000;

/// Why a query was refused. Messages quote the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// Not SQL, or not one statement.
    #[error("the query does not parse: {0}")]
    Syntax(String),
    /// A construct outside the allow-list.
    #[error("{0}")]
    NotAllowed(String),
    /// A column the dataset does not have.
    #[error("dataset `{dataset}` has no column `{column}`")]
    UnknownColumn {
        /// The dataset.
        dataset: String,
        /// The column.
        column: String,
    },
    /// A column the grant does not include.
    #[error("column `{0}` is not granted for aggregates by this agreement")]
    NotGranted(String),
}

/// An analyst's clamp on an aggregated column, in storage units (cents for
/// decimals): `CLAMP(refund, 0, 20000)`. Values below `low` count as `low`,
/// above `high` as `high`, and the noise is calibrated to the clamp instead
/// of the schema's (wide) bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Clamp {
    /// The lowest value counted.
    pub low: i64,
    /// The highest value counted.
    pub high: i64,
}

/// What a `SUM`, `AVG` or quantile reads: a granted bounded numeric column,
/// clamped by the analyst or not.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operand {
    /// The column.
    pub column: String,
    /// The analyst's clamp; `None` when the query gives none (sums and
    /// averages then choose bounds privately, quantiles search the schema's
    /// bounds).
    pub clamp: Option<Clamp>,
    /// How the operand reads in a label: `refund` or
    /// `clamp(refund, 0, 20000)`.
    pub text: String,
}

impl Operand {
    /// The range its values are clamped to: the analyst's clamp, else the
    /// column's declared bounds (`None` if it has none).
    pub fn range(&self, schema: &DatasetSchema) -> Option<(i64, i64)> {
        match self.clamp {
            Some(c) => Some((c.low, c.high)),
            None => schema.column(&self.column).and_then(|c| c.bounds),
        }
    }

    fn plain(column: String) -> Self {
        Self {
            text: column.clone(),
            column,
            clamp: None,
        }
    }
}

/// One aggregate of the select list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aggregate {
    /// `COUNT(*)`: rows (at most `contributions` per subject).
    CountRows,
    /// `COUNT(DISTINCT subject)`: subjects.
    CountSubjects,
    /// `SUM(col)` or `SUM(CLAMP(col, low, high))` in storage units.
    Sum(Operand),
    /// `AVG(col)` or `AVG(CLAMP(col, low, high))`: a noisy sum over a noisy count.
    Avg(Operand),
    /// `MEDIAN(col)`, `QUANTILE(col, p)` or `PERCENTILE_CONT(p) WITHIN
    /// GROUP (ORDER BY col)` (each also over `CLAMP(col, low, high)`): the
    /// `p`-quantile, `p` in ten-thousandths.
    Quantile {
        /// The column and its clamp.
        operand: Operand,
        /// `p` × 10,000 (5,000 is the median).
        per_10000: u32,
    },
}

impl Aggregate {
    /// How the answer labels it.
    pub fn label(&self) -> String {
        match self {
            Self::CountRows => "count(*)".into(),
            Self::CountSubjects => "count(distinct subject)".into(),
            Self::Sum(o) => format!("sum({})", o.text),
            Self::Avg(o) => format!("avg({})", o.text),
            Self::Quantile {
                operand,
                per_10000: 5000,
            } => format!("median({})", operand.text),
            Self::Quantile { operand, per_10000 } => {
                format!(
                    "quantile({}, {})",
                    operand.text,
                    f64::from(*per_10000) / 10_000.0
                )
            }
        }
    }

    /// What it reads, if it reads a value column.
    pub fn operand(&self) -> Option<&Operand> {
        match self {
            Self::CountRows | Self::CountSubjects => None,
            Self::Sum(o) | Self::Avg(o) | Self::Quantile { operand: o, .. } => Some(o),
        }
    }

    /// The value column it reads, if any.
    pub fn column(&self) -> Option<&str> {
        self.operand().map(|o| o.column.as_str())
    }
}

/// An item of the select list, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputColumn {
    /// A `GROUP BY` column.
    Group(String),
    /// An aggregate (index into [`AggregateQuery::aggregates`]).
    Aggregate(usize),
}

/// A checked aggregate query.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateQuery {
    /// The dataset (the `FROM` table).
    pub dataset: String,
    /// Distinct aggregates, in first-use order.
    pub aggregates: Vec<Aggregate>,
    /// The select list, with each item's output name.
    pub output: Vec<(String, OutputColumn)>,
    /// `GROUP BY` columns.
    pub group_by: Vec<String>,
    /// The `WHERE` clause as written, if any (a row scope).
    pub filter: Option<String>,
}

fn refuse<T>(message: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError::NotAllowed(message.into()))
}

/// What the grant lets a query read.
#[derive(Debug, Clone)]
pub struct GrantedColumns<'a> {
    /// The dataset's name.
    pub dataset: &'a str,
    /// Its schema.
    pub schema: &'a DatasetSchema,
    /// Columns the aggregate grant names.
    pub columns: &'a BTreeSet<String>,
}

impl GrantedColumns<'_> {
    fn column(&self, name: &str) -> Result<&custos_model::schema::Column, QueryError> {
        let column = self
            .schema
            .column(name)
            .ok_or_else(|| QueryError::UnknownColumn {
                dataset: self.dataset.to_owned(),
                column: name.to_owned(),
            })?;
        if column.class.is_identifying() {
            return refuse(format!(
                "column `{name}` is an identifier (class `{}`): aggregates never read, filter or group by identifiers",
                column.class
            ));
        }
        if !self.columns.contains(name) {
            return Err(QueryError::NotGranted(name.to_owned()));
        }
        Ok(column)
    }
}

fn column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(i) => Some(i.value.to_lowercase()),
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => Some(parts[1].value.to_lowercase()),
        Expr::Nested(inner) => column_name(inner),
        _ => None,
    }
}

/// Parses and checks `sql` against the grant. `WHERE` is returned as text
/// for the caller to compile as a row scope over the granted columns.
pub fn parse_query(sql: &str, granted: &GrantedColumns<'_>) -> Result<AggregateQuery, QueryError> {
    if sql.len() > MAX_QUERY_BYTES {
        return Err(QueryError::Syntax(format!(
            "longer than {MAX_QUERY_BYTES} bytes"
        )));
    }
    let dialect = GenericDialect {};
    let statements = Parser::new(&dialect)
        .with_recursion_limit(32)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| QueryError::Syntax(e.to_string()))?;
    let [Statement::Query(query)] = statements.as_slice() else {
        return refuse("send exactly one SELECT statement");
    };
    let Query {
        with,
        body,
        order_by,
        limit_clause,
        fetch,
        locks,
        for_clause,
        settings,
        format_clause,
        pipe_operators,
    } = query.as_ref();
    if with.is_some() {
        return refuse("`WITH` (common table expressions) is not allowed");
    }
    if order_by.is_some() {
        return refuse("`ORDER BY` is not allowed: groups come in domain order");
    }
    if limit_clause.is_some() || fetch.is_some() {
        return refuse(
            "`LIMIT`, `OFFSET` and `FETCH` are not allowed: every group of the domain is released",
        );
    }
    if !locks.is_empty()
        || for_clause.is_some()
        || settings.is_some()
        || format_clause.is_some()
        || !pipe_operators.is_empty()
    {
        return refuse("only a plain SELECT is allowed");
    }
    let SetExpr::Select(select) = body.as_ref() else {
        return refuse("only a plain SELECT is allowed (no UNION, INTERSECT, EXCEPT or VALUES)");
    };
    if select.distinct.is_some() {
        return refuse("`SELECT DISTINCT` is not allowed: use COUNT(DISTINCT subject)");
    }
    if select.top.is_some() || select.into.is_some() {
        return refuse("`TOP` and `INTO` are not allowed");
    }
    if select.having.is_some() || select.qualify.is_some() {
        return refuse(
            "`HAVING` and `QUALIFY` are not allowed: filters on results would leak small groups",
        );
    }
    if !select.named_window.is_empty() || !select.lateral_views.is_empty() {
        return refuse("windows and lateral views are not allowed");
    }
    // FROM: exactly the dataset, no joins.
    let [from] = select.from.as_slice() else {
        return refuse(if select.from.is_empty() {
            "the query needs `FROM <dataset>`"
        } else {
            "joins are not allowed: query one dataset"
        });
    };
    if !from.joins.is_empty() {
        return refuse("joins are not allowed: query one dataset");
    }
    let TableFactor::Table { name, args, .. } = &from.relation else {
        return refuse("subqueries and table functions are not allowed in `FROM`");
    };
    if args.is_some() {
        return refuse("table functions are not allowed in `FROM`");
    }
    let table = name.to_string().to_lowercase();
    if table != granted.dataset {
        return refuse(format!(
            "the query reads `{table}`, but this grant covers dataset `{}`",
            granted.dataset
        ));
    }
    // GROUP BY: granted public or quasi columns with a finite declared domain.
    let mut group_by = Vec::new();
    let mut groups: u128 = 1;
    match &select.group_by {
        GroupByExpr::Expressions(exprs, modifiers) => {
            if !modifiers.is_empty() {
                return refuse("`ROLLUP`, `CUBE` and `GROUPING SETS` are not allowed");
            }
            for e in exprs {
                let Some(name) = column_name(e) else {
                    return refuse(format!("`GROUP BY {e}`: group by plain column names only"));
                };
                let column = granted.column(&name)?;
                if !matches!(column.class, ColumnClass::Public | ColumnClass::Quasi) {
                    return refuse(format!(
                        "`GROUP BY {name}`: only `public` or `quasi` columns can be grouped by; `{name}` is `{}`",
                        column.class
                    ));
                }
                // Every key of a declared domain is released, empty ones
                // too, so which keys appear says nothing about the data.
                let Some(size) = domain_size(column) else {
                    return refuse(format!(
                        "`GROUP BY {name}`: the column has no finite declared domain (enum values or integer bounds); choosing its keys privately (a noisy threshold) is not supported yet"
                    ));
                };
                groups = groups.saturating_mul(size);
                if groups > MAX_GROUPS as u128 {
                    return refuse(format!(
                        "`GROUP BY {name}`: the groups' declared domains have more than {MAX_GROUPS} combinations, all of which would be released"
                    ));
                }
                if group_by.contains(&name) {
                    return refuse(format!("`GROUP BY {name}` is listed twice"));
                }
                group_by.push(name);
            }
        }
        GroupByExpr::All(_) => return refuse("`GROUP BY ALL` is not allowed"),
    }
    let filter = select.selection.as_ref().map(ToString::to_string);
    let mut aggregates: Vec<Aggregate> = Vec::new();
    let mut output = Vec::new();
    for item in &select.projection {
        let (expr, alias) = match item {
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                return refuse(
                    "`SELECT *` is not allowed: name aggregates such as COUNT(*) or SUM(refund)",
                );
            }
            other => return refuse(format!("`{other}` is not allowed")),
        };
        if let Some(name) = column_name(expr) {
            if !group_by.contains(&name) {
                granted.column(&name)?;
                return refuse(format!(
                    "`{name}` is selected but is neither aggregated nor in GROUP BY: only aggregates leave Custos"
                ));
            }
            output.push((
                alias.unwrap_or_else(|| name.clone()),
                OutputColumn::Group(name),
            ));
            continue;
        }
        let aggregate = aggregate(expr, granted)?;
        let index = match aggregates.iter().position(|a| *a == aggregate) {
            Some(i) => i,
            None => {
                aggregates.push(aggregate.clone());
                aggregates.len() - 1
            }
        };
        output.push((
            alias.unwrap_or_else(|| aggregate.label()),
            OutputColumn::Aggregate(index),
        ));
    }
    if aggregates.is_empty() {
        return refuse("the query selects no aggregate: only aggregates leave Custos");
    }
    Ok(AggregateQuery {
        dataset: table,
        aggregates,
        output,
        group_by,
        filter,
    })
}

const ALLOWED: &str = "select COUNT(*), COUNT(DISTINCT subject), SUM(col), AVG(col), MEDIAN(col), QUANTILE(col, p) (each value aggregate also over CLAMP(col, low, high)) or GROUP BY columns";

fn aggregate(expr: &Expr, granted: &GrantedColumns<'_>) -> Result<Aggregate, QueryError> {
    let Expr::Function(f) = expr else {
        return refuse(format!("`{expr}` is not allowed: {ALLOWED}"));
    };
    let name = f.name.to_string().to_lowercase();
    let percentile = matches!(name.as_str(), "percentile_cont" | "percentile_disc");
    if f.filter.is_some()
        || f.over.is_some()
        || (!f.within_group.is_empty() && !percentile)
        || f.null_treatment.is_some()
    {
        return refuse(format!(
            "`{expr}`: FILTER, OVER and WITHIN GROUP are not allowed (WITHIN GROUP only with PERCENTILE_CONT)"
        ));
    }
    let FunctionArguments::List(list) = &f.args else {
        return refuse(format!("`{expr}` is not allowed"));
    };
    if !list.clauses.is_empty() {
        return refuse(format!(
            "`{expr}`: ORDER BY or LIMIT inside an aggregate is not allowed"
        ));
    }
    let args = list
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(a) => Ok(a),
            _ => refuse(format!("`{expr}`: named arguments are not allowed")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let distinct = matches!(
        list.duplicate_treatment,
        Some(sqlparser::ast::DuplicateTreatment::Distinct)
    );
    if distinct && name != "count" {
        return refuse(format!(
            "`{expr}`: DISTINCT is allowed only in COUNT(DISTINCT subject)"
        ));
    }
    if percentile {
        // PERCENTILE_CONT(p) WITHIN GROUP (ORDER BY col)
        let ([FunctionArgExpr::Expr(p)], [order]) = (args.as_slice(), f.within_group.as_slice())
        else {
            return refuse(format!(
                "`{expr}`: write PERCENTILE_CONT(p) WITHIN GROUP (ORDER BY col)"
            ));
        };
        let per_10000 = quantile_level(p, expr)?;
        let operand = operand(&order.expr, expr, granted)?;
        return Ok(Aggregate::Quantile { operand, per_10000 });
    }
    match (name.as_str(), args.as_slice()) {
        ("count", [FunctionArgExpr::Wildcard]) if !distinct => Ok(Aggregate::CountRows),
        ("count", [FunctionArgExpr::Expr(e)]) if distinct => {
            let subject = granted.schema.subject_column();
            match column_name(e) {
                Some(c) if c == subject.name => Ok(Aggregate::CountSubjects),
                _ => refuse(format!(
                    "`{expr}`: COUNT(DISTINCT …) counts subjects only: write COUNT(DISTINCT {})",
                    subject.name
                )),
            }
        }
        ("count", _) => refuse(format!(
            "`{expr}`: use COUNT(*) for rows or COUNT(DISTINCT {}) for subjects",
            granted.schema.subject_column().name
        )),
        ("sum" | "avg" | "median", [FunctionArgExpr::Expr(e)]) => {
            let o = operand(e, expr, granted)?;
            Ok(match name.as_str() {
                "sum" => Aggregate::Sum(o),
                "avg" => Aggregate::Avg(o),
                _ => Aggregate::Quantile {
                    operand: o,
                    per_10000: 5000,
                },
            })
        }
        (
            "quantile" | "approx_percentile_cont",
            [FunctionArgExpr::Expr(e), FunctionArgExpr::Expr(p)],
        ) => {
            let per_10000 = quantile_level(p, expr)?;
            let operand = operand(e, expr, granted)?;
            Ok(Aggregate::Quantile { operand, per_10000 })
        }
        ("sum" | "avg" | "median", _) => refuse(format!("`{expr}` takes exactly one column")),
        ("quantile" | "approx_percentile_cont", _) => refuse(format!(
            "`{expr}`: write QUANTILE(col, p) with p between 0 and 1, e.g. QUANTILE(refund, 0.9)"
        )),
        _ => refuse(format!("`{name}` is not an allowed aggregate: {ALLOWED}")),
    }
}

/// What a value aggregate reads (`e`, an argument of `expr`): a granted,
/// bounded integer or decimal column, or `CLAMP(col, low, high)` of one.
fn operand(e: &Expr, expr: &Expr, granted: &GrantedColumns<'_>) -> Result<Operand, QueryError> {
    let Expr::Function(f) = e else {
        return Ok(Operand::plain(numeric_column(e, expr, granted)?));
    };
    if f.name.to_string().to_lowercase() != "clamp" {
        return refuse(format!(
            "`{expr}`: aggregate plain column names or CLAMP(col, low, high) only (no other expressions)"
        ));
    }
    let usage = || {
        refuse(format!(
            "`{e}`: write CLAMP(column, low, high) with low < high as plain numbers in the column's units, e.g. CLAMP(refund, 0, 20000)"
        ))
    };
    let FunctionArguments::List(list) = &f.args else {
        return usage();
    };
    if f.filter.is_some()
        || f.over.is_some()
        || !f.within_group.is_empty()
        || f.null_treatment.is_some()
        || !list.clauses.is_empty()
        || list.duplicate_treatment.is_some()
    {
        return usage();
    }
    let [
        FunctionArg::Unnamed(FunctionArgExpr::Expr(c)),
        FunctionArg::Unnamed(FunctionArgExpr::Expr(low)),
        FunctionArg::Unnamed(FunctionArgExpr::Expr(high)),
    ] = list.args.as_slice()
    else {
        return usage();
    };
    let name = numeric_column(c, expr, granted)?;
    let column = granted.column(&name)?;
    let (Some(low_text), Some(high_text)) = (number(low), number(high)) else {
        return usage();
    };
    let value = |text: &str| match column.ty {
        ColumnType::Decimal => custos_model::schema::parse_decimal_cents(text),
        _ => text.parse::<i64>().ok(),
    };
    let (Some(lo), Some(hi)) = (value(&low_text), value(&high_text)) else {
        return refuse(format!(
            "`{e}`: the bounds must be {} in `{name}`'s units",
            if column.ty == ColumnType::Decimal {
                "plain numbers (no exponent) with at most two decimals, e.g. 20000 or 199.99,"
            } else {
                "whole numbers (no exponent)"
            }
        ));
    };
    if lo >= hi {
        return usage();
    }
    let (schema_lo, schema_hi) = column.bounds.unwrap_or((lo, hi));
    if lo < schema_lo || hi > schema_hi {
        let show = |v: i64| shown(column.ty, v);
        return refuse(format!(
            "`{e}`: the clamp must lie inside `{name}`'s declared bounds [{}, {}]",
            show(schema_lo),
            show(schema_hi)
        ));
    }
    Ok(Operand {
        text: format!(
            "clamp({name}, {}, {})",
            shown(column.ty, lo),
            shown(column.ty, hi)
        ),
        column: name,
        clamp: Some(Clamp { low: lo, high: hi }),
    })
}

/// A storage value in the column's units, without a `.00` tail.
fn shown(ty: ColumnType, v: i64) -> String {
    if ty == ColumnType::Decimal {
        let text = custos_model::schema::format_cents(v);
        text.strip_suffix(".00").map(str::to_owned).unwrap_or(text)
    } else {
        v.to_string()
    }
}

/// A numeric literal, possibly negated, as text.
fn number(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            sqlparser::ast::Value::Number(text, _) => Some(text.clone()),
            _ => None,
        },
        Expr::UnaryOp {
            op: sqlparser::ast::UnaryOperator::Minus,
            expr,
        } => number(expr)
            .filter(|t| !t.starts_with('-'))
            .map(|t| format!("-{t}")),
        Expr::Nested(inner) => number(inner),
        _ => None,
    }
}

/// A granted, bounded integer or decimal column named by `e` (an argument of `expr`).
fn numeric_column(
    e: &Expr,
    expr: &Expr,
    granted: &GrantedColumns<'_>,
) -> Result<String, QueryError> {
    let Some(c) = column_name(e) else {
        return refuse(format!(
            "`{expr}`: aggregate plain column names or CLAMP(col, low, high) only (no other expressions)"
        ));
    };
    let column = granted.column(&c)?;
    if !matches!(column.ty, ColumnType::Integer | ColumnType::Decimal) {
        return refuse(format!(
            "`{expr}`: `{c}` is `{}`; SUM, AVG and quantiles need an integer or decimal column",
            column.ty.as_str()
        ));
    }
    if column.bounds.is_none() {
        return refuse(format!("`{expr}`: `{c}` has no bounds to clamp to"));
    }
    Ok(c)
}

/// A quantile level: a number strictly between 0 and 1 with at most four
/// decimals, as ten-thousandths.
fn quantile_level(p: &Expr, expr: &Expr) -> Result<u32, QueryError> {
    let bad = || {
        refuse(format!(
            "`{expr}`: the quantile level must be a number strictly between 0 and 1 with at most four decimals (0.5 is the median)"
        ))
    };
    let Expr::Value(v) = p else { return bad() };
    let sqlparser::ast::Value::Number(text, _) = &v.value else {
        return bad();
    };
    let Ok(level) = text.parse::<f64>() else {
        return bad();
    };
    let scaled = level * 10_000.0;
    if !(scaled.is_finite() && (scaled - scaled.round()).abs() < 1e-6) {
        return bad();
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let per_10000 = scaled.round() as u32;
    if !(1.0..10_000.0).contains(&scaled.round()) {
        return bad();
    }
    Ok(per_10000)
}

/// How many keys a group column's declared domain has, without listing
/// them; `None` if it has no finite declared domain.
fn domain_size(column: &custos_model::schema::Column) -> Option<u128> {
    match (column.ty, column.bounds) {
        (ColumnType::Enum, _) if !column.values.is_empty() => Some(column.values.len() as u128),
        (ColumnType::Integer, Some((lo, hi))) => Some(hi.abs_diff(lo) as u128 + 1),
        _ => None,
    }
}

/// The released domain of a group column, in order, as SQL
/// literals in storage form and as labels.
pub fn group_domain(column: &custos_model::schema::Column) -> Vec<String> {
    match (column.ty, column.bounds) {
        (ColumnType::Enum, _) => column.values.clone(),
        (ColumnType::Integer, Some((lo, hi))) => (lo..=hi).map(|v| v.to_string()).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sql: &str) -> Result<AggregateQuery, QueryError> {
        let schema = DatasetSchema::from_toml(custos_synth::TAX_RETURNS_SCHEMA).unwrap();
        let columns: BTreeSet<String> = [
            "state",
            "filing_status",
            "tax_year",
            "refund",
            "wages",
            "agi",
            "zip",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        parse_query(
            sql,
            &GrantedColumns {
                dataset: "tax_returns",
                schema: &schema,
                columns: &columns,
            },
        )
    }

    #[test]
    fn accepts_the_allowed_shapes() {
        let q = check(
            "SELECT state, COUNT(*), SUM(refund) AS refunds, AVG(refund), COUNT(DISTINCT tin) \
             FROM tax_returns WHERE tax_year >= 2023 AND refund > 1000 GROUP BY state",
        )
        .unwrap();
        assert_eq!(q.group_by, ["state"]);
        assert_eq!(
            q.aggregates,
            [
                Aggregate::CountRows,
                Aggregate::Sum(Operand::plain("refund".into())),
                Aggregate::Avg(Operand::plain("refund".into())),
                Aggregate::CountSubjects
            ]
        );
        assert_eq!(q.output[2].0, "refunds");
        assert_eq!(
            q.filter.as_deref(),
            Some("tax_year >= 2023 AND refund > 1000")
        );
        assert!(check("select count(*) from tax_returns").is_ok());
        let q = check(
            "SELECT MEDIAN(refund), QUANTILE(wages, 0.9), \
             PERCENTILE_CONT(0.25) WITHIN GROUP (ORDER BY agi) FROM tax_returns",
        )
        .unwrap();
        assert_eq!(
            q.aggregates,
            [
                Aggregate::Quantile {
                    operand: Operand::plain("refund".into()),
                    per_10000: 5000
                },
                Aggregate::Quantile {
                    operand: Operand::plain("wages".into()),
                    per_10000: 9000
                },
                Aggregate::Quantile {
                    operand: Operand::plain("agi".into()),
                    per_10000: 2500
                },
            ]
        );
        assert_eq!(q.output[0].0, "median(refund)");
        assert_eq!(q.output[1].0, "quantile(wages, 0.9)");
    }

    #[test]
    fn clamps_are_in_the_column_units_inside_its_bounds() {
        let q = check(
            "SELECT SUM(CLAMP(refund, 0, 20000)), AVG(clamp(wages, 100.5, 200000)), \
             MEDIAN(CLAMP(agi, -500, 90000)), SUM(refund), \
             PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY CLAMP(wages, 0, 1e3)) FROM tax_returns",
        );
        // `1e3` is not a plain decimal.
        assert!(q.unwrap_err().to_string().contains("two decimals"));
        let q = check(
            "SELECT SUM(CLAMP(refund, 0, 20000)), AVG(clamp(wages, 100.5, 200000)), \
             MEDIAN(CLAMP(agi, -500, 90000)), SUM(refund), \
             QUANTILE(CLAMP(tax_year, 2020, 2030), 0.9) FROM tax_returns",
        )
        .unwrap();
        let clamps: Vec<Option<Clamp>> = q
            .aggregates
            .iter()
            .map(|a| a.operand().unwrap().clamp)
            .collect();
        assert_eq!(
            clamps,
            [
                Some(Clamp {
                    low: 0,
                    high: 2_000_000
                }),
                Some(Clamp {
                    low: 10_050,
                    high: 20_000_000
                }),
                Some(Clamp {
                    low: -50_000,
                    high: 9_000_000
                }),
                None,
                Some(Clamp {
                    low: 2020,
                    high: 2030
                }),
            ]
        );
        assert_eq!(
            q.output.iter().map(|o| o.0.as_str()).collect::<Vec<_>>(),
            [
                "sum(clamp(refund, 0, 20000))",
                "avg(clamp(wages, 100.50, 200000))",
                "median(clamp(agi, -500, 90000))",
                "sum(refund)",
                "quantile(clamp(tax_year, 2020, 2030), 0.9)"
            ]
        );
        let e = |sql: &str| check(sql).unwrap_err().to_string();
        for bad in [
            "SUM(CLAMP(refund, 20000, 0))",
            "SUM(CLAMP(refund, 5, 5))",
            "SUM(CLAMP(refund, 0))",
            "SUM(CLAMP(refund, 0, 'x'))",
            "SUM(CLAMP(refund, 0, wages))",
            "SUM(CLAMP(refund, 0, -(-5)))",
        ] {
            assert!(
                e(&format!("SELECT {bad} FROM tax_returns"))
                    .contains("write CLAMP(column, low, high)"),
                "{bad}"
            );
        }
        assert!(
            e("SELECT SUM(CLAMP(refund, -1, 20000)) FROM tax_returns")
                .contains("inside `refund`'s declared bounds [0, 1000000]")
        );
        assert!(
            e("SELECT SUM(CLAMP(tax_year, 2020.5, 2030)) FROM tax_returns")
                .contains("whole numbers")
        );
        assert!(e("SELECT SUM(CLAMP(tin, 0, 1)) FROM tax_returns").contains("identifier"));
        assert!(e("SELECT SUM(CLAMP(tax, 0, 1)) FROM tax_returns").contains("not granted"));
        assert!(
            e("SELECT SUM(CLAMP(CLAMP(refund, 0, 9), 0, 1)) FROM tax_returns")
                .contains("plain column names")
        );
        assert!(e("SELECT SUM(ABS(refund)) FROM tax_returns").contains("CLAMP(col, low, high)"));
        assert!(e("SELECT COUNT(CLAMP(refund, 0, 1)) FROM tax_returns").contains("COUNT(*)"));
    }

    #[test]
    fn quasi_columns_group_by_their_declared_domain_within_a_cap() {
        let schema = DatasetSchema::from_toml(
            r#"
[[columns]]
name = "id"
class = "subject_id"
type = "string"
[[columns]]
name = "age_band"
class = "quasi"
type = "enum"
values = ["0-17", "18-64", "65+"]
[[columns]]
name = "birth_year"
class = "quasi"
type = "integer"
bounds = [1900, 2030]
[[columns]]
name = "household"
class = "quasi"
type = "integer"
bounds = [0, 1000000000]
[[columns]]
name = "district"
class = "quasi"
type = "integer"
bounds = [0, 999]
"#,
        )
        .unwrap();
        let columns: BTreeSet<String> = ["age_band", "birth_year", "household", "district"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let check = |sql: &str| {
            parse_query(
                sql,
                &GrantedColumns {
                    dataset: "people",
                    schema: &schema,
                    columns: &columns,
                },
            )
        };
        let q = check(
            "SELECT age_band, birth_year, COUNT(*) FROM people GROUP BY age_band, birth_year",
        )
        .unwrap();
        assert_eq!(q.group_by, ["age_band", "birth_year"]);
        let e = check("SELECT household, COUNT(*) FROM people GROUP BY household")
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 100000 combinations"), "{e}");
        // The cap is on the product of the domains: 1,000 and 131 alone
        // pass, together they are 131,000.
        assert!(check("SELECT COUNT(*) FROM people GROUP BY district").is_ok());
        let e = check("SELECT COUNT(*) FROM people GROUP BY district, birth_year")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`GROUP BY birth_year`"), "{e}");
    }

    #[test]
    fn refuses_everything_else_naming_the_part() {
        let e = |sql: &str| check(sql).unwrap_err().to_string();
        assert!(e("SELECT * FROM tax_returns").contains("`SELECT *` is not allowed"));
        assert!(e("SELECT refund FROM tax_returns").contains("neither aggregated nor in GROUP BY"));
        assert!(e("SELECT COUNT(*) FROM tax_returns GROUP BY tin").contains("identifier"));
        assert!(e("SELECT SUM(tin) FROM tax_returns").contains("identifier"));
        assert!(e("SELECT name, COUNT(*) FROM tax_returns GROUP BY name").contains("identifier"));
        assert!(
            e("SELECT COUNT(*) FROM tax_returns a JOIN tax_returns b ON a.tin = b.tin")
                .contains("joins")
        );
        assert!(e("SELECT COUNT(*) FROM (SELECT * FROM tax_returns)").contains("subqueries"));
        assert!(e("SELECT COUNT(*) FROM tax_returns LIMIT 1").contains("LIMIT"));
        assert!(
            e("SELECT my_udf(refund) FROM tax_returns")
                .contains("`my_udf` is not an allowed aggregate")
        );
        assert!(e("SELECT SUM(bank) FROM tax_returns").contains("no column `bank`"));
        assert!(e("SELECT SUM(tax) FROM tax_returns").contains("`tax` is not granted"));
        assert!(e("SELECT COUNT(*) FROM payroll").contains("`payroll`"));
        assert!(e("SELEC COUNT(*) FROM tax_returns").contains("does not parse"));
        assert!(
            e("SELECT zip, COUNT(*) FROM tax_returns GROUP BY zip")
                .contains("no finite declared domain")
        );
        assert!(
            e("SELECT refund, COUNT(*) FROM tax_returns GROUP BY refund")
                .contains("only `public` or `quasi` columns")
        );
        assert!(e("SELECT COUNT(*) FROM tax_returns HAVING COUNT(*) > 5").contains("HAVING"));
        assert!(e("SELECT COUNT(refund) FROM tax_returns").contains("COUNT(*)"));
        assert!(e("SELECT SUM(refund + 1) FROM tax_returns").contains("plain column names"));
        assert!(e("SELECT SUM(state) FROM tax_returns").contains("integer or decimal"));
        assert!(e("SELECT COUNT(*) FROM tax_returns; SELECT 1").contains("exactly one SELECT"));
        for bad_level in ["1.5", "0", "0.12345", "'0.5'", "-0.5"] {
            assert!(
                e(&format!(
                    "SELECT quantile(refund, {bad_level}) FROM tax_returns"
                ))
                .contains("strictly between 0 and 1"),
                "{bad_level}"
            );
        }
        assert!(e("SELECT median(state) FROM tax_returns").contains("integer or decimal"));
        assert!(e("SELECT median(tin) FROM tax_returns").contains("identifier"));
        assert!(e("SELECT quantile(refund) FROM tax_returns").contains("QUANTILE(col, p)"));
        assert!(e("SELECT median(DISTINCT refund) FROM tax_returns").contains("DISTINCT"));
        assert!(
            e("SELECT percentile_cont(refund) FROM tax_returns").contains("WITHIN GROUP (ORDER BY")
        );
        assert!(e("SELECT COUNT(*) FROM tax_returns ORDER BY 1").contains("ORDER BY"));
        assert!(e("SELECT state FROM tax_returns GROUP BY state").contains("no aggregate"));
    }
}
