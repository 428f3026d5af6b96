//! SQL that both catalogue backends accept, and a statement builder for the
//! few statements whose shape depends on the input.
//!
//! The catalogue runs on sqlx's `Any` driver (SQLite embedded, PostgreSQL
//! beside it), which passes SQL through unchanged. The dialect both accept:
//! numbered placeholders `$1, $2, …` (SQLite reads `$NNN` as parameter NNN),
//! `INSERT … ON CONFLICT … DO NOTHING`, `UPDATE … RETURNING`, sums of
//! `CASE … THEN 1 ELSE 0 END` rather than of booleans, `CAST(SUM(…) AS
//! BIGINT)` (PostgreSQL sums BIGINT into NUMERIC, which `Any` cannot carry),
//! and an alias on every subquery in `FROM`. sqlx's `QueryBuilder<Any>`
//! writes `?` placeholders, which PostgreSQL refuses, hence [`Statement`].

use sqlx::any::AnyArguments;
use sqlx::{Any, Arguments, AssertSqlSafe, Encode, Type};

use crate::meta::MetaError;

/// A statement assembled piece by piece, each bound value written as the
/// next numbered placeholder.
pub(crate) struct Statement {
    text: String,
    args: AnyArguments,
}

impl Statement {
    /// Starts a statement with `text`.
    pub(crate) fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            args: AnyArguments::default(),
        }
    }

    /// Appends SQL text.
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends the next placeholder and binds `value` to it.
    pub(crate) fn bind<'t, T>(&mut self, value: T) -> Result<&mut Self, MetaError>
    where
        T: Encode<'t, Any> + Type<Any>,
    {
        self.args
            .add(value)
            .map_err(|e| MetaError::Database(format!("binding a value: {e}")))?;
        self.text.push('$');
        self.text.push_str(&self.args.len().to_string());
        Ok(self)
    }

    /// The statement, ready to run.
    pub(crate) fn build(self) -> sqlx::query::Query<'static, Any, AnyArguments> {
        sqlx::query_with(AssertSqlSafe(self.text), self.args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        let mut s = Statement::new("SELECT * FROM t WHERE a = ");
        s.bind("x").unwrap().push(" AND b IN (");
        s.bind(1_i64).unwrap().push(", ");
        s.bind(2_i64).unwrap().push(")");
        assert_eq!(s.text, "SELECT * FROM t WHERE a = $1 AND b IN ($2, $3)");
        assert_eq!(s.args.len(), 3);
    }
}
