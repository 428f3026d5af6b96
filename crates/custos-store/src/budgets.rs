//! Privacy budgets: the ε or ρ each agreement has spent on each dataset,
//! charged atomically against its limit (a privacy filter).
//!
//! [`BudgetStore`] is a supertrait of [`crate::meta::MetadataStore`]. A
//! charge either fits under the limit and is recorded with the new total in
//! one transaction, or changes nothing.

use async_trait::async_trait;
use sqlx::Row;

use crate::meta::{MetaError, SqlMetadata};

/// Relative slack for floating-point sums of spends (a budget of 1.0 spent
/// as ten charges of 0.1 must be exactly exhausted, not refused at the tenth).
const SLACK: f64 = 1e-9;

/// Whether spending `spend` on top of `spent` stays within `limit` (the
/// filter's rule, for callers that check before charging too).
pub fn fits(spent: f64, spend: f64, limit: f64) -> bool {
    spent + spend <= limit * (1.0 + SLACK)
}

/// One charge against a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// `q_` and 32 hex digits.
    pub id: String,
    /// The agreement.
    pub agreement_id: String,
    /// Its version when charged.
    pub agreement_version: u32,
    /// The dataset.
    pub dataset: String,
    /// Principal id of the requester.
    pub principal: String,
    /// `zcdp` or `pure`.
    pub measure: String,
    /// ε or ρ charged.
    pub spend: f64,
    /// SHA-256 of the query text, hex.
    pub query_sha256: String,
    /// RFC 3339 time.
    pub at: String,
    /// The same in microseconds.
    pub at_micros: i64,
    /// Index of the ledger entry that records it.
    pub ledger_index: u64,
}

/// The budget catalogue every metadata backend provides.
#[async_trait]
pub trait BudgetStore: Send + Sync {
    /// What an agreement has spent on a dataset (0 if nothing).
    async fn budget_spent(&self, agreement_id: &str, dataset: &str) -> Result<f64, MetaError>;
    /// Records `charge` if the total stays within `limit`, returning the new
    /// total; returns `None` (and changes nothing) if it would exceed it.
    async fn charge_budget(&self, charge: &Charge, limit: f64) -> Result<Option<f64>, MetaError>;
    /// Queries charged under an agreement by a principal since a time.
    async fn count_charges_since(
        &self,
        agreement_id: &str,
        principal: &str,
        since_micros: i64,
    ) -> Result<u64, MetaError>;
}

#[async_trait]
impl BudgetStore for SqlMetadata {
    async fn budget_spent(&self, agreement_id: &str, dataset: &str) -> Result<f64, MetaError> {
        let spent: Option<f64> = sqlx::query_scalar(
            "SELECT spent FROM privacy_budgets WHERE agreement_id = $1 AND dataset = $2",
        )
        .bind(agreement_id)
        .bind(dataset)
        .fetch_optional(self.pool())
        .await?;
        Ok(spent.unwrap_or(0.0))
    }

    async fn charge_budget(&self, c: &Charge, limit: f64) -> Result<Option<f64>, MetaError> {
        // Two charges must never both read the old total, from one process
        // or from replicas sharing PostgreSQL. SQLite: the first write takes
        // the database's write lock until commit. PostgreSQL (read
        // committed): the no-op UPDATE below takes the budget row's lock,
        // waits for any other charge holding it, and RETURNING reads the row
        // as that charge committed it. Row locks rather than serializable
        // isolation: only the charged row is contended, and nothing retries.
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO privacy_budgets (agreement_id, dataset, measure, spent) VALUES ($1, $2, $3, 0) \
             ON CONFLICT (agreement_id, dataset) DO NOTHING",
        )
        .bind(&c.agreement_id)
        .bind(&c.dataset)
        .bind(&c.measure)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "UPDATE privacy_budgets SET spent = spent WHERE agreement_id = $1 AND dataset = $2 \
             RETURNING spent, measure",
        )
        .bind(&c.agreement_id)
        .bind(&c.dataset)
        .fetch_one(&mut *tx)
        .await?;
        let spent: f64 = row.try_get("spent")?;
        let measure: String = row.try_get("measure")?;
        if measure != c.measure {
            return Err(MetaError::Database(
                "the budget was opened under another privacy measure".into(),
            ));
        }
        if !fits(spent, c.spend, limit) {
            return Ok(None);
        }
        let total = spent + c.spend;
        sqlx::query(
            "UPDATE privacy_budgets SET spent = $1 WHERE agreement_id = $2 AND dataset = $3",
        )
        .bind(total)
        .bind(&c.agreement_id)
        .bind(&c.dataset)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO privacy_charges (id, agreement_id, agreement_version, dataset, principal, \
             measure, spend, query_sha256, at, at_micros, ledger_index) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&c.id)
        .bind(&c.agreement_id)
        .bind(i64::from(c.agreement_version))
        .bind(&c.dataset)
        .bind(&c.principal)
        .bind(&c.measure)
        .bind(c.spend)
        .bind(&c.query_sha256)
        .bind(&c.at)
        .bind(c.at_micros)
        .bind(
            i64::try_from(c.ledger_index)
                .map_err(|_| MetaError::Database("index too large".into()))?,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(total))
    }

    async fn count_charges_since(
        &self,
        agreement_id: &str,
        principal: &str,
        since_micros: i64,
    ) -> Result<u64, MetaError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM privacy_charges WHERE agreement_id = $1 AND principal = $2 AND at_micros >= $3",
        )
        .bind(agreement_id)
        .bind(principal)
        .bind(since_micros)
        .fetch_one(self.pool())
        .await?;
        u64::try_from(n).map_err(|_| MetaError::Database("negative count".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(id: &str, spend: f64) -> Charge {
        Charge {
            id: id.into(),
            agreement_id: "a".into(),
            agreement_version: 1,
            dataset: "d".into(),
            principal: "p".into(),
            measure: "zcdp".into(),
            spend,
            query_sha256: "00".into(),
            at: "t".into(),
            at_micros: 10,
            ledger_index: 1,
        }
    }

    #[tokio::test]
    async fn a_budget_is_a_filter() {
        for catalogue in crate::testing::catalogues().await {
            a_budget_is_a_filter_on(&catalogue.meta).await;
        }
    }

    /// Charges from two replicas at once (two pools on one database, many
    /// in flight on each): never more than the limit, and the total is the
    /// sum of the charges that were accepted.
    #[tokio::test]
    async fn concurrent_charges_from_two_replicas_never_overspend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut pairs = vec![(
            SqlMetadata::open(&path, true).await.unwrap(),
            SqlMetadata::open(&path, false).await.unwrap(),
        )];
        if let Some(url) = crate::testing::new_postgres_database().await {
            pairs.push((
                SqlMetadata::connect_postgres(&url).await.unwrap(),
                SqlMetadata::connect_postgres(&url).await.unwrap(),
            ));
        }
        for (one, two) in pairs {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..60 {
                let replica = if i % 2 == 0 { one.clone() } else { two.clone() };
                tasks.spawn(async move {
                    replica
                        .charge_budget(&charge(&format!("q{i}"), 0.1), 1.0)
                        .await
                        .unwrap()
                        .is_some()
                });
            }
            let accepted = tasks.join_all().await.into_iter().filter(|&a| a).count();
            let spent = one.budget_spent("a", "d").await.unwrap();
            assert_eq!(accepted, 10, "{:?}", one.backend());
            assert!(
                (spent - 1.0).abs() < 1e-9,
                "{:?}: spent {spent}",
                one.backend()
            );
            assert_eq!(one.count_charges_since("a", "p", 0).await.unwrap(), 10);
        }
    }

    async fn a_budget_is_a_filter_on(store: &SqlMetadata) {
        assert_eq!(store.budget_spent("a", "d").await.unwrap(), 0.0);
        for i in 0..10 {
            let total = store
                .charge_budget(&charge(&format!("q{i}"), 0.1), 1.0)
                .await
                .unwrap();
            assert!(total.is_some(), "charge {i} refused");
        }
        // Exhausted: the next charge changes nothing.
        assert_eq!(
            store.charge_budget(&charge("q10", 0.1), 1.0).await.unwrap(),
            None
        );
        let spent = store.budget_spent("a", "d").await.unwrap();
        assert!((spent - 1.0).abs() < 1e-9);
        assert_eq!(store.count_charges_since("a", "p", 0).await.unwrap(), 10);
        assert_eq!(store.count_charges_since("a", "p", 11).await.unwrap(), 0);
        let mut other = charge("q11", 0.1);
        other.measure = "pure".into();
        assert!(store.charge_budget(&other, 5.0).await.is_err());
    }
}
