//! Aggregate queries: decide, check the SQL and the spend, charge the
//! budget durably (ledger entry, then budget row), only then compute and
//! release the noisy answer.
//!
//! INVARIANT (fail closed, privacy filter): nothing is computed before the
//! charge is durable, and a query that would exceed the budget is refused
//! without spending anything. A charge is never refunded, even if the
//! computation then fails (the ledger says so).

use custos_engine::AnswerError;
use custos_ledger::{Decision, Entry};
use custos_model::DatasetSchema;
use custos_policy::Mode;
use custos_privacy::{Answer, PrivacyError};
use custos_store::budgets::Charge;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::decide::{Access, Denial};
use crate::recorded::Recorded;
use crate::{Acting, Actor, BrokerError, Custos, now_micros};

/// An answer with its budget accounting.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AggregateAnswer {
    /// The query's id (`q_…`).
    pub id: String,
    /// The agreement and its version.
    pub agreement: String,
    /// The agreement version.
    pub agreement_version: u32,
    /// The dataset.
    pub dataset: String,
    /// The noisy answer with 95% intervals.
    #[serde(flatten)]
    pub answer: Answer,
    /// What this query was charged (ε or ρ).
    pub charged: f64,
    /// The agreement's budget on the dataset.
    pub budget: f64,
    /// Spent after this query.
    pub budget_spent: f64,
    /// Left after this query.
    pub budget_remaining: f64,
    /// Ledger index of the charge entry.
    pub ledger_index: Recorded,
}

impl Custos {
    /// Answers an aggregate query under `agreement`, spending `spend` (ε or
    /// ρ; default the grant's per-query cap).
    pub async fn query_aggregate(
        &self,
        actor: &Actor,
        agreement_id: &str,
        sql: &str,
        spend: Option<f64>,
    ) -> Result<AggregateAnswer, BrokerError> {
        const ACTION: &str = "query.aggregate";
        let query_sha = hex::encode(Sha256::digest(sql.as_bytes()));
        let mut entry = Entry::new(now_micros(), actor.id(), ACTION, Decision::Deny)
            .with_attribute("query_hmac", self.subjects().digest("query", sql));
        let Actor(Acting::Principal(principal)) = actor else {
            return Err(self.refuse(
                entry,
                Denial::same("queries need a principal's token".into()),
            ));
        };
        let meta = self.home().meta();
        if let Some(latest) = meta.agreement_versions(agreement_id).await?.last() {
            entry = entry.with_agreement(agreement_id, latest.version);
        }
        let dataset = match custos_privacy::dataset_of(sql) {
            Ok(d) => d,
            Err(e) => {
                return Err(self.refuse(entry, refusal(&e)));
            }
        };
        let record = meta.dataset(&dataset).await?;
        if record.is_some() {
            entry = entry.with_attribute("dataset", dataset.clone());
        }
        // Which columns the query reads is known only after checking it
        // against the grant, so decide the agreement and grant first (all
        // granted columns), then the exact columns below.
        let granted = self
            .decide(
                Access {
                    principal,
                    agreement: agreement_id,
                    dataset: &dataset,
                    mode: Mode::Aggregate,
                    columns: None,
                    subject: None,
                },
                &entry,
            )
            .await?;
        let Some(record) = record else {
            return Err(self.refuse(entry, Denial::same("the dataset is gone".into())));
        };
        let schema = DatasetSchema::from_toml(&record.schema_toml)
            .map_err(|e| BrokerError::Internal(format!("stored schema unreadable: {e}")))?;
        let grant = granted.grant()?;
        let plan = match custos_privacy::plan(sql, &dataset, &schema, &grant, spend) {
            Ok(p) => p,
            Err(e) => {
                return Err(self.refuse(entry, refusal(&e)));
            }
        };
        // INVARIANT: counted and recorded (the charge) under the lock.
        let limits = self
            .limit_locks
            .hold_for(&self.home, &grant, agreement_id)
            .await?;
        if let Some(limit) = grant.limits.requests_per_hour {
            let made = meta
                .count_charges_since(agreement_id, &principal.id, now_micros() - 3_600_000_000)
                .await?;
            if made >= u64::from(limit) {
                return Err(self.refuse(
                    entry,
                    Denial::same(format!(
                        "limit exceeded: {limit} queries per hour under agreement `{agreement_id}`"
                    )),
                ));
            }
        }
        let measure = plan.privacy.measure;
        let sym = measure.symbol();
        let budget = plan.privacy.budget;
        let spent_before = meta.budget_spent(agreement_id, &dataset).await?;
        if !custos_store::budgets::fits(spent_before, plan.spend, budget) {
            return Err(self.refuse(
                entry,
                Denial::same(format!(
                    "privacy budget exhausted: {sym} = {spent_before:.6} of {budget} spent; this query needs {}; nothing was spent",
                    plan.spend
                )),
            ));
        }
        let mut raw = [0u8; 16];
        custos_store::keys::random_bytes(&mut raw)?;
        let id = format!("q_{}", hex::encode(raw));
        let measure_name = measure.as_str();
        let at_micros = now_micros();
        let mut allowed = Entry {
            decision: Decision::Allow,
            time_micros: at_micros,
            ..entry.clone()
        }
        .with_request(&id)
        .with_agreement(agreement_id, granted.version)
        .with_attribute("measure", measure_name)
        .with_attribute("spend", format!("{}", plan.spend))
        .with_attribute("columns", plan.columns.join(","));
        for reason in &granted.decided_by {
            allowed = allowed.with_reason(reason.clone());
        }
        // INVARIANT: the charge is durable in the ledger before the budget
        // row, and both before anything is computed.
        let ledger_index = self.append(&allowed)?;
        let charge = Charge {
            id: id.clone(),
            agreement_id: agreement_id.to_owned(),
            agreement_version: granted.version,
            dataset: dataset.clone(),
            principal: principal.id.clone(),
            measure: measure_name.to_owned(),
            spend: plan.spend,
            query_sha256: query_sha,
            at: custos_store::home::now_rfc3339(),
            at_micros,
            ledger_index: ledger_index.index(),
        };
        let charged = meta.charge_budget(&charge, budget).await?;
        // Counted and recorded: the computation need not hold the lock,
        // which must still have been held when the charge was recorded.
        if let Some(mut limits) = limits {
            limits.confirm().await?;
        }
        let Some(spent_after) = charged else {
            // A concurrent query took the rest; the ledger entry above must
            // not stand as an allowance.
            let failed = Entry {
                decision: Decision::Error,
                ..allowed
            }
            .with_reason("the budget was exhausted concurrently; nothing was computed");
            self.append(&failed)?;
            return Err(BrokerError::Denied(format!(
                "privacy budget exhausted (concurrently): {sym} = {budget} spent; nothing was computed"
            )));
        };
        let reader = self
            .open_dataset(&dataset, crate::contents::Reading::All)
            .await?;
        let answer = match custos_engine::answer(reader, &plan).await {
            Ok(a) => a,
            Err(e) => {
                let failed = Entry {
                    decision: Decision::Error,
                    ..allowed
                }
                .with_reason(format!(
                    "computing the answer failed ({}); the charge stands",
                    answer_category(&e)
                ));
                self.append(&failed)?;
                return Err(answer_error(e));
            }
        };
        Ok(AggregateAnswer {
            id,
            agreement: agreement_id.to_owned(),
            agreement_version: granted.version,
            dataset,
            answer,
            charged: plan.spend,
            budget,
            budget_spent: spent_after,
            budget_remaining: (budget - spent_after).max(0.0),
            ledger_index,
        })
    }
}

/// A refused query: the full message for the caller, a value-free
/// category for the ledger (never the SQL's text).
fn refusal(e: &PrivacyError) -> Denial {
    Denial {
        message: e.to_string(),
        recorded: e.category().into(),
    }
}

/// A failure after the query was accepted: the engine's and the noise's
/// faults are the server's (their text may name files), the rest the
/// caller's.
fn answer_error(e: AnswerError) -> BrokerError {
    match e {
        AnswerError::Execute(_)
        | AnswerError::Privacy(PrivacyError::Mechanism(_) | PrivacyError::MissingBounds(_)) => {
            BrokerError::Internal(e.to_string())
        }
        other => BrokerError::Invalid(other.to_string()),
    }
}

/// A value-free category of a failed answer, for the ledger.
fn answer_category(e: &AnswerError) -> &'static str {
    match e {
        AnswerError::Privacy(p) => p.category(),
        _ => "query failed",
    }
}
