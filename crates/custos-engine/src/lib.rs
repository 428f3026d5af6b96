//! The Custos engine: the code that reads a dataset's encrypted Parquet
//! buckets on behalf of a privacy mechanism. Only the broker calls it, after
//! the ledger holds the action.
//!
//! - [`execute`]: an aggregate plan's true bounded totals with DataFusion.
//! - [`extract`]: the two-pass pseudonymous extract with k-anonymity in
//!   people.
//!
//! What may be released, and how it is noised or tokenised, is
//! `custos-privacy`'s (pure); this crate only computes.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod execute;
pub mod extract;

use std::sync::Arc;

use custos_privacy::{Answer, PrivacyError, QueryPlan};
use custos_store::DatasetReader;

/// Why an aggregate answer could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerError {
    /// Computing the totals failed (a fault of the engine or the files).
    #[error(transparent)]
    Execute(#[from] execute::ExecuteError),
    /// Releasing them failed.
    #[error(transparent)]
    Privacy(#[from] PrivacyError),
}

/// Computes `plan`'s true totals over `reader`'s dataset and releases them
/// with noise. Call it only after the spend is durably charged.
pub async fn answer(reader: Arc<DatasetReader>, plan: &QueryPlan) -> Result<Answer, AnswerError> {
    let schema = reader.schema().clone();
    let totals = execute::totals(
        reader,
        &plan.query,
        plan.filter_sql.as_deref(),
        plan.privacy.contributions,
    )
    .await?;
    Ok(custos_privacy::release(plan, &schema, &totals)?)
}
