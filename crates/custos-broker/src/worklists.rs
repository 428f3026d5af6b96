//! What people at a screen work through: an approver's queue of pending
//! look-ups (and declining one with a reason), what they decided before,
//! a requester's own requests, and an agreement's budgets and activity.
//!
//! Every list comes from the catalogue through a bounded, indexed query;
//! every judgement goes through the same two-person rule as an approval
//! and is ledgered before it counts. Seeing a justification in the queue
//! is recorded as `lookup.show`, as it is for one request.

use custos_ledger::{Decision, Entry};
use custos_model::Role;
use custos_policy::Agreement;
use custos_store::listings::{DayActivity, RequestFilter};
use custos_store::lookups::{DeclineRecord, RequestState};
use serde::{Deserialize, Serialize};

use crate::lookups::{LookupTicket, Sealed, approver_conflict, ticket};
use crate::{Acting, Actor, BrokerError, Custos};

/// Shortest reason accepted for declining a request.
pub const MIN_DECLINE_REASON: usize = 10;
/// Longest reason accepted for declining a request.
pub const MAX_DECLINE_REASON: usize = 2000;
/// Most requests in one queue or list.
const MAX_LISTED: u32 = 200;

/// A pending look-up as the approvers who may judge it see it in their
/// queue (the subject is shown only on the request itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueItem {
    /// The request.
    pub ticket: LookupTicket,
    /// The agreement's purpose.
    pub purpose: String,
    /// The agreement's legal authority.
    pub legal_authority: String,
    /// The requester's justification.
    pub justification: String,
    /// Whether the caller already approved it.
    pub approved_by_caller: bool,
}

/// One judgement an approver made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decided {
    /// The request.
    pub request_id: String,
    /// `approved` or `declined`.
    pub outcome: String,
    /// When (RFC 3339).
    pub at: String,
    /// Ledger index of the entry that recorded it.
    pub ledger_index: u64,
}

/// A privacy budget of an agreement on one dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgreementBudget {
    /// The agreement.
    pub agreement: String,
    /// The dataset.
    pub dataset: String,
    /// `zcdp` (ρ) or `pure` (ε).
    pub measure: String,
    /// The budget.
    pub budget: f64,
    /// Spent so far.
    pub spent: f64,
    /// The most one query may spend.
    pub per_query: f64,
}

fn principal_of(actor: &Actor) -> Option<&custos_model::Principal> {
    match actor {
        Actor(Acting::Principal(p)) => Some(p),
        Actor(Acting::LocalAdmin) => None,
    }
}

impl Custos {
    /// The pending look-ups `actor` may judge (approver of the agreement's
    /// custodian, not the requester), oldest first, with purpose, legal
    /// authority and justification. Each justification shown is ledgered.
    pub async fn approval_queue(&self, actor: &Actor) -> Result<Vec<QueueItem>, BrokerError> {
        let entry = self.lookup_entry(actor, "lookup.queue", Decision::Deny);
        let Some(principal) = principal_of(actor).filter(|p| p.has_role(Role::Approver)) else {
            return Err(self.deny_lookup(
                entry,
                "the approval queue is for principals with the `approver` role".into(),
            ));
        };
        // Who may never judge sees no justification either.
        if let Some(rule) = approver_conflict(principal) {
            return Err(self.deny_lookup(entry, rule));
        }
        // Only agreements this approver's organisation is custodian of, in
        // force: the filter is in the query, so other custodians' backlogs
        // cannot crowd this queue out of its window.
        let meta = self.home().meta();
        let mut judged = Vec::new();
        for (version, state) in meta.agreements().await? {
            if state.state != custos_model::AgreementStatus::Active {
                continue;
            }
            if Agreement::from_toml(&version.toml)
                .is_ok_and(|a| a.parties.custodian == principal.org)
            {
                judged.push(version.id);
            }
        }
        let pending = meta
            .list_requests(&RequestFilter {
                state: Some(RequestState::Pending),
                agreements: Some(judged),
                not_requester: Some(principal.id.clone()),
                oldest_first: true,
                limit: MAX_LISTED,
                ..RequestFilter::default()
            })
            .await?;
        let mut agreements = std::collections::HashMap::new();
        let mut items = Vec::new();
        let mut shown = Vec::new();
        for record in pending {
            let key = (record.agreement_id.clone(), record.agreement_version);
            if !agreements.contains_key(&key) {
                let agreement = self
                    .agreement_at(&record.agreement_id, record.agreement_version)
                    .await?;
                agreements.insert(key.clone(), agreement);
            }
            let Some(Some(agreement)) = agreements.get(&key) else {
                continue;
            };
            if agreement.parties.custodian != principal.org {
                continue;
            }
            let approvals = meta.approvals(&record.id).await?;
            let justification = self.unseal(
                &record.id,
                Sealed::Justification,
                &record.justification_sealed,
            )?;
            shown.push(
                Entry::new(
                    crate::now_micros(),
                    actor.id(),
                    "lookup.show",
                    Decision::Allow,
                )
                .with_request(&record.id)
                .with_agreement(&record.agreement_id, record.agreement_version)
                .with_attribute("via", "queue"),
            );
            items.push(QueueItem {
                ticket: ticket(&record, u32::try_from(approvals.len()).unwrap_or(u32::MAX)),
                purpose: agreement.purpose.clone(),
                legal_authority: agreement.legal_authority.citation.clone(),
                justification,
                approved_by_caller: approvals.iter().any(|a| a.approver == principal.id),
            });
        }
        // INVARIANT: no justification leaves before its viewing is durable.
        if !shown.is_empty() {
            self.append_all(&shown)?;
        }
        Ok(items)
    }

    /// Declines a pending request with a reason, under the same two-person
    /// rule as an approval; it can then be neither approved nor fetched.
    /// The ledger keeps a keyed digest of the reason (which may name the
    /// person); the catalogue keeps it sealed for the requester.
    pub async fn decline_lookup(
        &self,
        actor: &Actor,
        id: &str,
        reason: &str,
    ) -> Result<LookupTicket, BrokerError> {
        let entry = self.lookup_entry(actor, "lookup.decline", Decision::Deny);
        let Some(principal) = principal_of(actor) else {
            return Err(self.deny_lookup(entry, "declines need a principal's token".into()));
        };
        let record = self.known_request(&entry, id).await?;
        let entry = entry
            .with_request(&record.id)
            .with_agreement(&record.agreement_id, record.agreement_version);
        let reason = reason.trim();
        let length = reason.chars().count();
        if !(MIN_DECLINE_REASON..=MAX_DECLINE_REASON).contains(&length) {
            return Err(self.deny_lookup(
                entry,
                format!(
                    "a decline needs a reason of {MIN_DECLINE_REASON} to {MAX_DECLINE_REASON} characters"
                ),
            ));
        }
        self.may_judge(&entry, principal, &record, "decline")
            .await?;
        let reason_sealed = self.home().keys().wrap(
            &Sealed::DeclineReason.purpose(&record.id),
            reason.as_bytes(),
        )?;
        // INVARIANT: the decline counts only after this entry is durable.
        let recorded = self.append(&Entry {
            decision: Decision::Allow,
            ..entry.clone().with_attribute(
                "reason_hmac",
                self.subjects().digest("decline-reason", reason),
            )
        })?;
        let meta = self.home().meta();
        let declined = meta
            .decline_request(&DeclineRecord {
                request_id: record.id.clone(),
                decliner: principal.id.clone(),
                declined_at: custos_store::home::now_rfc3339(),
                reason_sealed,
                ledger_index: recorded.index(),
            })
            .await?;
        if !declined {
            return Err(self.deny_lookup(
                Entry {
                    decision: Decision::Error,
                    ..entry
                },
                "the request stopped being pending before the decline was stored".into(),
            ));
        }
        let approvals = meta.approvals(&record.id).await?.len();
        let mut t = ticket(&record, u32::try_from(approvals).unwrap_or(u32::MAX));
        t.state = RequestState::Declined;
        Ok(t)
    }

    /// Match results awaiting an approver's confirmation that `actor` may
    /// confirm: the `approver` role without a conflicting one, of the
    /// organisation that ran the job, not the job's own runner.
    pub async fn matches_to_confirm(
        &self,
        actor: &Actor,
    ) -> Result<Vec<custos_store::matches::MatchJob>, BrokerError> {
        let Some(principal) = principal_of(actor)
            .filter(|p| p.has_role(Role::Approver) && approver_conflict(p).is_none())
        else {
            return Ok(Vec::new());
        };
        let mut mine = Vec::new();
        for job in self.home().meta().unverified_matches(MAX_LISTED).await? {
            if job.principal == principal.id {
                continue;
            }
            let requester = self
                .agreement_at(&job.agreement_id, job.agreement_version)
                .await?
                .map(|a| a.parties.requester);
            if requester.as_deref() == Some(principal.org.as_str()) {
                mine.push(job);
            }
        }
        Ok(mine)
    }

    /// The caller's own look-up requests, newest first.
    pub async fn my_lookups(&self, actor: &Actor) -> Result<Vec<LookupTicket>, BrokerError> {
        let Some(principal) = principal_of(actor) else {
            return Ok(Vec::new());
        };
        let meta = self.home().meta();
        let records = meta
            .list_requests(&RequestFilter {
                requester: Some(principal.id.clone()),
                limit: MAX_LISTED,
                ..RequestFilter::default()
            })
            .await?;
        let mut tickets = Vec::with_capacity(records.len());
        for record in &records {
            let approvals = meta.approvals(&record.id).await?.len();
            tickets.push(ticket(record, u32::try_from(approvals).unwrap_or(u32::MAX)));
        }
        Ok(tickets)
    }

    /// What the caller approved and declined lately, newest first.
    pub async fn my_decisions(&self, actor: &Actor) -> Result<Vec<Decided>, BrokerError> {
        let Some(principal) = principal_of(actor) else {
            return Ok(Vec::new());
        };
        let meta = self.home().meta();
        let mut decided: Vec<Decided> = meta
            .approvals_by(&principal.id, MAX_LISTED)
            .await?
            .into_iter()
            .map(|a| Decided {
                request_id: a.request_id,
                outcome: "approved".into(),
                at: a.approved_at,
                ledger_index: a.ledger_index,
            })
            .chain(
                meta.declines_by(&principal.id, MAX_LISTED)
                    .await?
                    .into_iter()
                    .map(|d| Decided {
                        request_id: d.request_id,
                        outcome: "declined".into(),
                        at: d.declined_at,
                        ledger_index: d.ledger_index,
                    }),
            )
            .collect();
        decided.sort_by_key(|d| std::cmp::Reverse(d.ledger_index));
        decided.truncate(MAX_LISTED as usize);
        Ok(decided)
    }

    /// The privacy budgets of every agreement `actor` may see: per
    /// aggregate grant, the budget, what is spent and the per-query cap.
    pub async fn budgets(&self, actor: &Actor) -> Result<Vec<AgreementBudget>, BrokerError> {
        let meta = self.home().meta();
        let mut budgets = Vec::new();
        for (version, _) in self.agreements(actor).await? {
            let Ok(agreement) = Agreement::from_toml(&version.toml) else {
                continue;
            };
            for grant in &agreement.grants {
                let Some(privacy) = &grant.privacy else {
                    continue;
                };
                budgets.push(AgreementBudget {
                    agreement: agreement.id.clone(),
                    dataset: grant.dataset.clone(),
                    measure: privacy.measure.as_str().to_owned(),
                    budget: privacy.budget,
                    spent: meta.budget_spent(&agreement.id, &grant.dataset).await?,
                    per_query: privacy.per_query,
                });
            }
        }
        Ok(budgets)
    }

    /// Requests and budget charged per day under agreement `id` over the
    /// last `days` days, for whoever may see the agreement.
    pub async fn agreement_days(
        &self,
        actor: &Actor,
        id: &str,
        days: u32,
    ) -> Result<Vec<DayActivity>, BrokerError> {
        self.agreement(actor, id).await?;
        let since = crate::now_micros() - i64::from(days) * 86_400_000_000;
        Ok(self.home().meta().agreement_days(id, since).await?)
    }
}
