//! Evaluating a row scope on rows: the compiled form of a grant's
//! `row_scope`, typed against the dataset schema.
//!
//! Hand-rolled rather than run through a query engine because a look-up
//! filters a handful of rows of one subject, and the allow-listed grammar
//! ([`crate::scope`]) is small: comparisons, `AND`/`OR`/`NOT`, `IN`,
//! `BETWEEN`, `IS [NOT] NULL`. Semantics follow SQL's three-valued logic;
//! a row is in scope only when the expression is TRUE (NULL excludes it).
//! Literals compared with a column take that column's type: decimals are
//! written in units (`refund > 1000.50`), dates as `'2024-01-31'`.

use std::cmp::Ordering;

use custos_model::schema::{parse_date_days, parse_decimal_cents};
use custos_model::{ColumnType, DatasetSchema};
use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator, Value};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::scope::ScopeError;

/// A column value as the filter sees it: integers, decimal cents and dates
/// (days since 1970-01-01) are `Int`; strings and enums are `Text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeValue {
    /// SQL NULL (an empty cell).
    Null,
    /// A number, amount in cents, or date in days.
    Int(i64),
    /// Text.
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Column(usize),
    /// A typed literal and its SQL text in storage units.
    Value(Typed, String),
    Compare(BinaryOperator, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    IsNull(Box<Node>, bool),
    InList(Box<Node>, Vec<Node>, bool),
    Between(Box<Node>, Box<Node>, Box<Node>, bool),
}

#[derive(Debug, Clone, PartialEq)]
enum Typed {
    Null,
    Bool(bool),
    Int(i64),
    Text(String),
}

/// A row scope compiled against a dataset schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeFilter {
    columns: Vec<String>,
    root: Node,
}

struct Compiler<'a> {
    schema: &'a DatasetSchema,
    columns: Vec<String>,
}

impl Compiler<'_> {
    fn column_type(&self, node: &Node) -> Option<ColumnType> {
        match node {
            Node::Column(i) => self
                .columns
                .get(*i)
                .and_then(|n| self.schema.column(n))
                .map(|c| c.ty),
            _ => None,
        }
    }

    fn compile(&mut self, expr: &Expr, ty: Option<ColumnType>) -> Result<Node, ScopeError> {
        match expr {
            Expr::Identifier(ident) => {
                let name = ident.value.to_lowercase();
                if self.schema.column(&name).is_none() {
                    return Err(ScopeError::UngrantedColumn(name));
                }
                let index = match self.columns.iter().position(|c| *c == name) {
                    Some(i) => i,
                    None => {
                        self.columns.push(name);
                        self.columns.len() - 1
                    }
                };
                Ok(Node::Column(index))
            }
            Expr::Value(v) => {
                let (value, sql) = literal(&v.value, ty, false)?;
                Ok(Node::Value(value, sql))
            }
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } => match expr.as_ref() {
                Expr::Value(v) => {
                    let (value, sql) = literal(&v.value, ty, true)?;
                    Ok(Node::Value(value, sql))
                }
                other => Err(ScopeError::NotAllowed(format!("-{other}"))),
            },
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Ok(Node::Not(Box::new(self.compile(expr, None)?))),
            Expr::Nested(inner) => self.compile(inner, ty),
            Expr::IsNull(inner) => Ok(Node::IsNull(Box::new(self.compile(inner, None)?), false)),
            Expr::IsNotNull(inner) => Ok(Node::IsNull(Box::new(self.compile(inner, None)?), true)),
            Expr::BinaryOp { left, op, right } => match op {
                BinaryOperator::And => Ok(Node::And(
                    Box::new(self.compile(left, None)?),
                    Box::new(self.compile(right, None)?),
                )),
                BinaryOperator::Or => Ok(Node::Or(
                    Box::new(self.compile(left, None)?),
                    Box::new(self.compile(right, None)?),
                )),
                BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq => {
                    let (l, r) = self.pair(left, right)?;
                    Ok(Node::Compare(op.clone(), Box::new(l), Box::new(r)))
                }
                other => Err(ScopeError::NotAllowed(other.to_string())),
            },
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let subject = self.compile(expr, None)?;
                let ty = self.column_type(&subject);
                let list = list
                    .iter()
                    .map(|e| self.compile(e, ty))
                    .collect::<Result<_, _>>()?;
                Ok(Node::InList(Box::new(subject), list, *negated))
            }
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let subject = self.compile(expr, None)?;
                let ty = self.column_type(&subject);
                Ok(Node::Between(
                    Box::new(subject),
                    Box::new(self.compile(low, ty)?),
                    Box::new(self.compile(high, ty)?),
                    *negated,
                ))
            }
            other => Err(ScopeError::NotAllowed(other.to_string())),
        }
    }

    /// Compiles both sides of a comparison, typing a literal by the column
    /// on the other side.
    fn pair(&mut self, left: &Expr, right: &Expr) -> Result<(Node, Node), ScopeError> {
        let is_literal = |e: &Expr| {
            matches!(e, Expr::Value(_))
                || matches!(e, Expr::UnaryOp { op: UnaryOperator::Minus, expr } if matches!(expr.as_ref(), Expr::Value(_)))
        };
        if is_literal(left) && !is_literal(right) {
            let r = self.compile(right, None)?;
            let ty = self.column_type(&r);
            Ok((self.compile(left, ty)?, r))
        } else {
            let l = self.compile(left, None)?;
            let ty = self.column_type(&l);
            Ok((l, self.compile(right, ty)?))
        }
    }
}

/// A literal typed by `ty` (the column it is compared with), and its SQL
/// text in storage units (cents, `DATE '…'`).
fn literal(
    value: &Value,
    ty: Option<ColumnType>,
    negative: bool,
) -> Result<(Typed, String), ScopeError> {
    let typed = typed_literal(value, ty, negative)?;
    let sql = match (&typed, ty) {
        (Typed::Null, _) => "NULL".to_owned(),
        (Typed::Bool(b), _) => if *b { "TRUE" } else { "FALSE" }.to_owned(),
        (Typed::Int(days), Some(ColumnType::Date)) => {
            format!("DATE '{}'", custos_model::schema::format_date_days(*days))
        }
        (Typed::Int(v), _) => v.to_string(),
        (Typed::Text(t), _) => format!("'{}'", t.replace('\'', "''")),
    };
    Ok((typed, sql))
}

fn typed_literal(
    value: &Value,
    ty: Option<ColumnType>,
    negative: bool,
) -> Result<Typed, ScopeError> {
    let bad = |text: &str, what: &str| ScopeError::Literal {
        literal: text.to_owned(),
        expected: what.to_owned(),
    };
    let signed = |text: &str| {
        if negative {
            format!("-{text}")
        } else {
            text.to_owned()
        }
    };
    match value {
        Value::Null => Ok(Typed::Null),
        Value::Boolean(b) if !negative => Ok(Typed::Bool(*b)),
        Value::Number(text, _) => {
            let text = signed(text);
            match ty {
                Some(ColumnType::Decimal) => parse_decimal_cents(&text)
                    .map(Typed::Int)
                    .ok_or_else(|| bad(&text, "an amount with at most two decimals")),
                Some(ColumnType::Date) => Err(bad(&text, "a date: write '2024-01-31'")),
                Some(ColumnType::String | ColumnType::Enum) => Ok(Typed::Text(text)),
                Some(ColumnType::Integer) | None => text
                    .parse::<i64>()
                    .map(Typed::Int)
                    .map_err(|_| bad(&text, "an integer")),
            }
        }
        Value::SingleQuotedString(text) if !negative => match ty {
            Some(ColumnType::Date) => parse_date_days(text)
                .map(Typed::Int)
                .ok_or_else(|| bad(&format!("'{text}'"), "a date like '2024-01-31'")),
            Some(ColumnType::Decimal) => parse_decimal_cents(text)
                .map(Typed::Int)
                .ok_or_else(|| bad(&format!("'{text}'"), "an amount")),
            Some(ColumnType::Integer) => text
                .parse::<i64>()
                .map(Typed::Int)
                .map_err(|_| bad(&format!("'{text}'"), "an integer")),
            _ => Ok(Typed::Text(text.clone())),
        },
        other => Err(ScopeError::NotAllowed(other.to_string())),
    }
}

/// Three-valued truth.
fn truth(v: &Typed) -> Option<bool> {
    match v {
        Typed::Bool(b) => Some(*b),
        _ => None,
    }
}

fn order(a: &Typed, b: &Typed) -> Option<Ordering> {
    match (a, b) {
        (Typed::Int(x), Typed::Int(y)) => Some(x.cmp(y)),
        (Typed::Text(x), Typed::Text(y)) => Some(x.cmp(y)),
        (Typed::Bool(x), Typed::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn compare(op: &BinaryOperator, a: &Typed, b: &Typed) -> Typed {
    let Some(o) = order(a, b) else {
        return Typed::Null;
    };
    Typed::Bool(match op {
        BinaryOperator::Eq => o == Ordering::Equal,
        BinaryOperator::NotEq => o != Ordering::Equal,
        BinaryOperator::Lt => o == Ordering::Less,
        BinaryOperator::LtEq => o != Ordering::Greater,
        BinaryOperator::Gt => o == Ordering::Greater,
        _ => o != Ordering::Less,
    })
}

fn from_tri(v: Option<bool>) -> Typed {
    v.map_or(Typed::Null, Typed::Bool)
}

fn eval(node: &Node, row: &[ScopeValue]) -> Typed {
    match node {
        Node::Column(i) => match row.get(*i) {
            Some(ScopeValue::Int(v)) => Typed::Int(*v),
            Some(ScopeValue::Text(t)) => Typed::Text(t.clone()),
            Some(ScopeValue::Null) | None => Typed::Null,
        },
        Node::Value(v, _) => v.clone(),
        Node::Compare(op, a, b) => compare(op, &eval(a, row), &eval(b, row)),
        Node::And(a, b) => match (truth(&eval(a, row)), truth(&eval(b, row))) {
            (Some(false), _) | (_, Some(false)) => Typed::Bool(false),
            (Some(true), Some(true)) => Typed::Bool(true),
            _ => Typed::Null,
        },
        Node::Or(a, b) => match (truth(&eval(a, row)), truth(&eval(b, row))) {
            (Some(true), _) | (_, Some(true)) => Typed::Bool(true),
            (Some(false), Some(false)) => Typed::Bool(false),
            _ => Typed::Null,
        },
        Node::Not(a) => from_tri(truth(&eval(a, row)).map(|b| !b)),
        Node::IsNull(a, negated) => Typed::Bool((eval(a, row) == Typed::Null) != *negated),
        Node::InList(subject, list, negated) => {
            let value = eval(subject, row);
            let mut unknown = false;
            for item in list {
                match compare(&BinaryOperator::Eq, &value, &eval(item, row)) {
                    Typed::Bool(true) => return Typed::Bool(!negated),
                    Typed::Bool(false) => {}
                    _ => unknown = true,
                }
            }
            if unknown {
                Typed::Null
            } else {
                Typed::Bool(*negated)
            }
        }
        Node::Between(subject, low, high, negated) => {
            let value = eval(subject, row);
            let above = compare(&BinaryOperator::GtEq, &value, &eval(low, row));
            let below = compare(&BinaryOperator::LtEq, &value, &eval(high, row));
            let inside = match (truth(&above), truth(&below)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            };
            from_tri(inside.map(|b| b != *negated))
        }
    }
}

fn sql(node: &Node, columns: &[String]) -> String {
    let quoted = |i: &usize| format!("\"{}\"", columns.get(*i).map_or("", String::as_str));
    match node {
        Node::Column(i) => quoted(i),
        Node::Value(_, text) => text.clone(),
        Node::Compare(op, a, b) => format!("({} {op} {})", sql(a, columns), sql(b, columns)),
        Node::And(a, b) => format!("({} AND {})", sql(a, columns), sql(b, columns)),
        Node::Or(a, b) => format!("({} OR {})", sql(a, columns), sql(b, columns)),
        Node::Not(a) => format!("(NOT {})", sql(a, columns)),
        Node::IsNull(a, negated) => format!(
            "({} IS {}NULL)",
            sql(a, columns),
            if *negated { "NOT " } else { "" }
        ),
        Node::InList(a, list, negated) => format!(
            "({} {}IN ({}))",
            sql(a, columns),
            if *negated { "NOT " } else { "" },
            list.iter()
                .map(|n| sql(n, columns))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Node::Between(a, lo, hi, negated) => format!(
            "({} {}BETWEEN {} AND {})",
            sql(a, columns),
            if *negated { "NOT " } else { "" },
            sql(lo, columns),
            sql(hi, columns)
        ),
    }
}

impl ScopeFilter {
    /// Compiles a row scope (already held to the allow-list and the grant's
    /// columns by [`crate::scope::parse_row_scope`]) against `schema`.
    /// Literals that do not fit their column's type are refused here.
    pub fn compile(text: &str, schema: &DatasetSchema) -> Result<Self, ScopeError> {
        let syntax = |message: String| ScopeError::Syntax {
            scope: text.to_owned(),
            message,
        };
        let dialect = GenericDialect {};
        let expr = Parser::new(&dialect)
            .with_recursion_limit(32)
            .try_with_sql(text)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| syntax(e.to_string()))?;
        let mut compiler = Compiler {
            schema,
            columns: Vec::new(),
        };
        let root = compiler.compile(&expr, None)?;
        Ok(Self {
            columns: compiler.columns,
            root,
        })
    }

    /// The columns a row must supply to [`ScopeFilter::matches`], in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The scope as SQL over the stored values (decimals in cents, dates as
    /// `DATE` literals), with quoted column names, for a query engine.
    pub fn to_sql(&self) -> String {
        sql(&self.root, &self.columns)
    }

    /// Whether a row is in scope: `row` holds the values of
    /// [`ScopeFilter::columns`] in that order. NULL counts as out of scope.
    pub fn matches(&self, row: &[ScopeValue]) -> bool {
        eval(&self.root, row) == Typed::Bool(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"
[[columns]]
name = "tin"
class = "subject_id"
type = "string"
[[columns]]
name = "tax_year"
class = "attribute"
type = "integer"
bounds = [2000, 2030]
[[columns]]
name = "refund"
class = "attribute"
type = "decimal"
bounds = [-100000, 100000]
[[columns]]
name = "filed"
class = "attribute"
type = "date"
[[columns]]
name = "state"
class = "public"
type = "enum"
values = ["CA", "NY", "TX"]
"#;

    fn filter(text: &str) -> ScopeFilter {
        ScopeFilter::compile(text, &DatasetSchema::from_toml(SCHEMA).unwrap()).unwrap()
    }

    fn row(f: &ScopeFilter, values: &[(&str, ScopeValue)]) -> Vec<ScopeValue> {
        f.columns()
            .iter()
            .map(|c| {
                values
                    .iter()
                    .find(|(n, _)| n == c)
                    .map_or(ScopeValue::Null, |(_, v)| v.clone())
            })
            .collect()
    }

    #[test]
    fn typed_comparisons_follow_the_column_types() {
        let f = filter("refund > 1000.50 AND filed >= '2024-01-01' AND state IN ('CA', 'NY')");
        let yes = row(
            &f,
            &[
                ("refund", ScopeValue::Int(100_051)),
                (
                    "filed",
                    ScopeValue::Int(parse_date_days("2024-03-01").unwrap()),
                ),
                ("state", ScopeValue::Text("NY".into())),
            ],
        );
        assert!(f.matches(&yes));
        let mut no = yes.clone();
        no[0] = ScopeValue::Int(100_050);
        assert!(!f.matches(&no));
        let mut wrong_state = yes.clone();
        wrong_state[2] = ScopeValue::Text("TX".into());
        assert!(!f.matches(&wrong_state));
    }

    #[test]
    fn null_excludes_a_row_and_three_valued_logic_holds() {
        let f = filter("tax_year BETWEEN 2022 AND 2024 OR refund IS NULL");
        assert!(f.matches(&row(&f, &[("tax_year", ScopeValue::Int(2023))])));
        assert!(f.matches(&row(&f, &[("tax_year", ScopeValue::Int(2021))])));
        let f = filter("NOT (tax_year = 2024)");
        assert!(!f.matches(&row(&f, &[])));
        assert!(f.matches(&row(&f, &[("tax_year", ScopeValue::Int(2023))])));
        let f = filter("tax_year NOT IN (2022, 2023) AND refund <> -5");
        assert!(f.matches(&row(
            &f,
            &[
                ("tax_year", ScopeValue::Int(2024)),
                ("refund", ScopeValue::Int(0))
            ]
        )));
        assert!(!f.matches(&row(
            &f,
            &[
                ("tax_year", ScopeValue::Int(2024)),
                ("refund", ScopeValue::Int(-500))
            ]
        )));
    }

    #[test]
    fn renders_sql_in_storage_units() {
        let f =
            filter("refund > 1000.50 AND filed >= '2024-01-01' AND state NOT IN ('CA', 'N''Y')");
        assert_eq!(
            f.to_sql(),
            "(((\"refund\" > 100050) AND (\"filed\" >= DATE '2024-01-01')) AND (\"state\" NOT IN ('CA', 'N''Y')))"
        );
        assert_eq!(
            filter("tax_year BETWEEN 2022 AND 2024 OR refund IS NOT NULL").to_sql(),
            "((\"tax_year\" BETWEEN 2022 AND 2024) OR (\"refund\" IS NOT NULL))"
        );
    }

    #[test]
    fn literals_of_the_wrong_type_are_refused() {
        let schema = DatasetSchema::from_toml(SCHEMA).unwrap();
        let e = |t: &str| ScopeFilter::compile(t, &schema).unwrap_err().to_string();
        assert!(e("refund > 10.505").contains("10.505"));
        assert!(e("filed > 2024").contains("write '2024-01-31'"));
        assert!(e("filed > '2024-13-01'").contains("'2024-13-01'"));
        assert!(e("tax_year = 'x'").contains("integer"));
        // Said as what it is: a literal of the wrong kind, not a construct
        // outside the grammar (a red-team run found the old wording).
        let text = e("refund = 'abc'");
        assert!(
            text.starts_with("row scope literal `'abc'` is not"),
            "{text}"
        );
        assert!(!text.contains("may not use"), "{text}");
    }
}
