//! Row scopes: the restricted boolean expressions that limit a grant to
//! some rows (`tax_year >= 2024 AND state IN ('CA', 'NY')`).
//!
//! Parsed with `sqlparser` (the parser DataFusion uses, so the same text
//! runs in queries later) and then held to a small allow-list: column
//! references, literals, comparisons, `AND`/`OR`/`NOT`, `IN` lists,
//! `BETWEEN`, `IS [NOT] NULL` and parentheses. No functions, subqueries or
//! anything that could read other rows.

use std::collections::BTreeSet;

use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator, Value};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

/// Why a row scope was refused. Messages quote the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// Not an expression at all.
    #[error("row scope `{scope}` is malformed: {message}")]
    Syntax {
        /// The scope text.
        scope: String,
        /// The parser's message.
        message: String,
    },
    /// A construct outside the allow-list.
    #[error(
        "row scope may not use `{0}`: only columns, literals, comparisons, AND/OR/NOT, IN, BETWEEN and IS NULL"
    )]
    NotAllowed(String),
    /// A literal of the wrong kind for its column.
    #[error("row scope literal `{literal}` is not {expected}")]
    Literal {
        /// The literal as written.
        literal: String,
        /// What the column takes.
        expected: String,
    },
    /// A column the grant does not name.
    #[error("row scope names column `{0}`, which the grant does not include")]
    UngrantedColumn(String),
}

/// A validated row scope and the columns it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowScope {
    /// The expression as written.
    pub text: String,
    /// Columns it reads.
    pub columns: BTreeSet<String>,
}

/// Longest row scope accepted (a scope is a rule, not a program).
const MAX_SCOPE_BYTES: usize = 4096;

/// Parses `text` and checks it reads only `granted` columns.
pub fn parse_row_scope(text: &str, granted: &BTreeSet<String>) -> Result<RowScope, ScopeError> {
    if text.len() > MAX_SCOPE_BYTES {
        return Err(ScopeError::Syntax {
            scope: text.chars().take(40).collect::<String>() + "…",
            message: format!("longer than {MAX_SCOPE_BYTES} bytes"),
        });
    }
    let syntax = |message: String| ScopeError::Syntax {
        scope: text.to_owned(),
        message,
    };
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect)
        .with_recursion_limit(32)
        .try_with_sql(text)
        .map_err(|e| syntax(e.to_string()))?;
    let expr = parser.parse_expr().map_err(|e| syntax(e.to_string()))?;
    if parser.peek_token().token != sqlparser::tokenizer::Token::EOF {
        return Err(syntax(format!(
            "unexpected `{}` after the expression",
            parser.peek_token().token
        )));
    }
    let mut columns = BTreeSet::new();
    check(&expr, &mut columns)?;
    if let Some(c) = columns.iter().find(|c| !granted.contains(*c)) {
        return Err(ScopeError::UngrantedColumn(c.clone()));
    }
    Ok(RowScope {
        text: text.to_owned(),
        columns,
    })
}

fn check(expr: &Expr, columns: &mut BTreeSet<String>) -> Result<(), ScopeError> {
    match expr {
        Expr::Identifier(ident) => {
            columns.insert(ident.value.to_lowercase());
            Ok(())
        }
        Expr::Value(v) => match &v.value {
            Value::Number(..) | Value::SingleQuotedString(_) | Value::Boolean(_) | Value::Null => {
                Ok(())
            }
            other => Err(ScopeError::NotAllowed(other.to_string())),
        },
        Expr::BinaryOp { left, op, right } => {
            let allowed = matches!(
                op,
                BinaryOperator::And
                    | BinaryOperator::Or
                    | BinaryOperator::Eq
                    | BinaryOperator::NotEq
                    | BinaryOperator::Lt
                    | BinaryOperator::LtEq
                    | BinaryOperator::Gt
                    | BinaryOperator::GtEq
            );
            if !allowed {
                return Err(ScopeError::NotAllowed(op.to_string()));
            }
            check(left, columns)?;
            check(right, columns)
        }
        Expr::UnaryOp { op, expr } => match op {
            UnaryOperator::Not | UnaryOperator::Minus => check(expr, columns),
            other => Err(ScopeError::NotAllowed(other.to_string())),
        },
        Expr::Nested(inner) | Expr::IsNull(inner) | Expr::IsNotNull(inner) => check(inner, columns),
        Expr::InList { expr, list, .. } => {
            check(expr, columns)?;
            list.iter().try_for_each(|e| check(e, columns))
        }
        Expr::Between {
            expr, low, high, ..
        } => {
            check(expr, columns)?;
            check(low, columns)?;
            check(high, columns)
        }
        other => Err(ScopeError::NotAllowed(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted() -> BTreeSet<String> {
        ["state", "tax_year", "refund"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }

    #[test]
    fn accepts_the_allowed_shapes() {
        for ok in [
            "tax_year >= 2024",
            "state IN ('CA', 'NY') AND NOT (refund > 1000 OR refund IS NULL)",
            "tax_year BETWEEN 2022 AND 2024",
            "refund <> -5",
        ] {
            let scope = parse_row_scope(ok, &granted()).unwrap();
            assert!(!scope.columns.is_empty(), "{ok}");
        }
    }

    #[test]
    fn refuses_the_rest_with_the_offending_part() {
        let e = |t: &str| parse_row_scope(t, &granted()).unwrap_err().to_string();
        assert!(e("tin = '666-01-0001'").contains("column `tin`"));
        assert!(e("state = ").contains("malformed"));
        assert!(e("state = 'CA' extra").contains("malformed"));
        assert!(e("lower(state) = 'ca'").contains("may not use `lower(state)`"));
        assert!(e("tax_year IN (SELECT 1)").contains("may not use"));
        assert!(e("state LIKE 'C%'").contains("may not use"));
        assert!(e(&"(".repeat(200)).contains("malformed"));
    }
}
