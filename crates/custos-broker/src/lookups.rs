//! Identified look-ups: request (justified, decided, ledgered) → approvals
//! by other people with the `approver` role → one fetch of the subject's
//! rows, released only after the ledger entry recording it is durable.
//!
//! A request never touches the dataset, so its answer (allowed or denied)
//! cannot reveal whether a subject exists; only an approved fetch reads.

use arrow::array::{Array, Date32Array, Int64Array, RecordBatch, StringArray};
use custos_ledger::{Decision, Entry, SubjectCommitment};
use custos_model::AgreementStatus;
use custos_model::schema::{format_cents, format_date_days};
use custos_model::{ColumnType, DatasetSchema, Principal, Role};
use custos_policy::{Agreement, Grant, Mode, ScopeFilter, ScopeValue};
use custos_store::lookups::{
    AccessRequestRecord, ApprovalRecord, DeclineRecord, RequestState, SubjectEvent,
    SubjectEventKind,
};
use custos_store::{DatasetReader, dataset};
use serde::{Deserialize, Serialize};

use crate::decide::{Access, Denial, Granted};
use crate::recorded::Recorded;
use crate::{Acting, Actor, BrokerError, Custos, now_micros};

/// File in the home that holds the custodian's Cedar guard rules.
pub const GUARDS_FILE: &str = "guards.cedar";
/// Shortest justification accepted: a look-up must say why.
pub const MIN_JUSTIFICATION: usize = 10;
/// Longest justification accepted.
pub const MAX_JUSTIFICATION: usize = 4000;
const MAX_SUBJECT_BYTES: usize = 64;

/// What a requester asks for.
#[derive(Debug, Clone)]
pub struct LookupRequest<'a> {
    /// The agreement it runs under.
    pub agreement: &'a str,
    /// The dataset.
    pub dataset: &'a str,
    /// The subject's id (e.g. a TIN).
    pub subject: &'a str,
    /// Why this person's records are needed.
    pub justification: &'a str,
    /// Columns wanted (default: every column the grant names).
    pub columns: Option<&'a [String]>,
}

/// A look-up request as its participants see it (never the subject id).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LookupTicket {
    /// The request's id.
    pub id: String,
    /// The agreement and version it runs under.
    pub agreement: String,
    /// The agreement version.
    pub agreement_version: u32,
    /// The dataset.
    pub dataset: String,
    /// Columns to be released.
    pub columns: Vec<String>,
    /// Where it stands.
    pub state: RequestState,
    /// Approvals given.
    pub approvals: u32,
    /// Approvals the grant requires.
    pub approvals_required: u32,
    /// Principal id of the requester.
    pub requester: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// Ledger index of the entry that recorded it.
    pub ledger_index: u64,
}

/// A request with the details an approver judges: subject and justification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LookupDetails {
    /// The request.
    #[serde(flatten)]
    pub ticket: LookupTicket,
    /// The subject id named: for the requester and the custodian's
    /// approvers only (who judge it); overseers and admins see the request
    /// without the person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The requester's justification (same audience as `subject`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// Who approved, in order.
    pub approvers: Vec<ApprovalRecord>,
    /// Who declined it and why (the reason for the same audience as
    /// `justification`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declined: Option<DeclineNote>,
}

/// An approver's decline of a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeclineNote {
    /// Principal id of the approver.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
    /// Why (for the requester and the custodian's approvers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Ledger index of the entry that recorded it.
    pub ledger_index: u64,
}

/// Records released by a fetch: only the granted columns, values as text.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Released {
    /// The request.
    pub request_id: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows (None = empty cell).
    pub rows: Vec<Vec<Option<String>>>,
    /// Ledger index of the entry that recorded the release.
    pub ledger_index: Recorded,
}

/// The two fields of a request sealed under the master key, each bound to
/// its request id.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sealed {
    Subject,
    Justification,
    DeclineReason,
}

impl Sealed {
    pub(crate) fn purpose(self, request_id: &str) -> String {
        let field = match self {
            Self::Subject => "subject",
            Self::Justification => "justification",
            Self::DeclineReason => "decline-reason",
        };
        custos_store::sealed::request_purpose(request_id, field)
    }

    fn label(self) -> &'static str {
        match self {
            Self::Subject => "request subject",
            Self::Justification => "request justification",
            Self::DeclineReason => "decline reason",
        }
    }
}

impl Custos {
    /// Opens a sealed request field.
    pub(crate) fn unseal(
        &self,
        request_id: &str,
        field: Sealed,
        sealed: &[u8],
    ) -> Result<String, BrokerError> {
        let bytes =
            self.home()
                .keys()
                .unwrap_secret(&field.purpose(request_id), field.label(), sealed)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub(crate) fn lookup_entry(&self, actor: &Actor, action: &str, decision: Decision) -> Entry {
        Entry::new(now_micros(), actor.id(), action, decision)
    }

    /// Records a denied look-up action and returns the error for the caller.
    pub(crate) fn deny_lookup(&self, entry: Entry, reason: String) -> BrokerError {
        self.refuse(entry, Denial::same(reason))
    }

    /// Checks the grant's limits for a new request.
    async fn check_limits(
        &self,
        principal: &Principal,
        granted: &Granted,
        grant: &Grant,
        subject: &SubjectCommitment,
    ) -> Result<Option<Denial>, BrokerError> {
        let meta = self.home().meta();
        let now = now_micros();
        if let Some(limit) = grant.limits.requests_per_hour {
            let made = meta
                .count_requests_since(&granted.agreement.id, &principal.id, now - 3_600_000_000)
                .await?;
            if made >= u64::from(limit) {
                return Ok(Some(Denial::same(format!(
                    "limit exceeded: {limit} requests per hour under agreement `{}`",
                    granted.agreement.id
                ))));
            }
        }
        if let Some(limit) = grant.limits.subjects_per_day {
            let (seen, includes) = meta
                .subjects_since(
                    &granted.agreement.id,
                    &grant.dataset,
                    now - 86_400_000_000,
                    &subject.0,
                )
                .await?;
            if !includes && seen >= u64::from(limit) {
                return Ok(Some(Denial::same(format!(
                    "limit exceeded: {limit} subjects per day under agreement `{}`",
                    granted.agreement.id
                ))));
            }
        }
        Ok(None)
    }

    /// Files a look-up request: decided (Cedar), limited, ledgered, then
    /// stored as pending. It never reads the dataset.
    pub async fn request_lookup(
        &self,
        actor: &Actor,
        req: LookupRequest<'_>,
    ) -> Result<LookupTicket, BrokerError> {
        const ACTION: &str = "lookup.request";
        let mut entry = self.lookup_entry(actor, ACTION, Decision::Deny);
        let Actor(Acting::Principal(principal)) = actor else {
            return Err(self.deny_lookup(entry, "look-ups need a principal's token".into()));
        };
        // Check the inputs' form first; nothing of them reaches the ledger
        // unless it is a known name.
        let subject = req.subject.trim();
        if subject.is_empty()
            || subject.len() > MAX_SUBJECT_BYTES
            || subject.chars().any(char::is_control)
        {
            return Err(BrokerError::Invalid(format!(
                "the subject id must be 1-{MAX_SUBJECT_BYTES} printable characters"
            )));
        }
        let justification = req.justification.trim();
        if justification.chars().count() < MIN_JUSTIFICATION {
            return Err(BrokerError::Invalid(format!(
                "a look-up needs a justification of at least {MIN_JUSTIFICATION} characters: say why this person's records are needed"
            )));
        }
        if justification.len() > MAX_JUSTIFICATION {
            return Err(BrokerError::Invalid(format!(
                "the justification is longer than {MAX_JUSTIFICATION} bytes"
            )));
        }
        // Only a known dataset's name is recorded (input is not a name yet).
        let record = if dataset::valid_name(req.dataset) {
            self.home().meta().dataset(req.dataset).await?
        } else {
            None
        };
        if record.is_some() {
            entry = entry.with_attribute("dataset", req.dataset);
        }
        // One person, one commitment: the id as the dataset stores it
        // (`012345678` and `12345678` are one integer id). The request
        // keeps the requester's spelling, sealed, for the approver.
        let canonical = record
            .and_then(|r| DatasetSchema::from_toml(&r.schema_toml).ok())
            .and_then(|schema| schema.canonical_subject_id(subject))
            .unwrap_or_else(|| subject.to_owned());
        // The commitment goes into no entry before the request is allowed:
        // otherwise anyone with a token could plant a person's commitment
        // in the public ledger and follow it.
        let commitment = self.subjects().commit(&canonical);
        let known = self.home().meta().agreement_versions(req.agreement).await?;
        if let Some(latest) = known.last() {
            entry = entry.with_agreement(req.agreement, latest.version);
        }
        // Guards on the person (protected subjects) are decided at fetch,
        // after a second person approved: deciding them here would tell
        // any requester at once, and for free, who is protected.
        let granted = self
            .decide(
                Access {
                    principal,
                    agreement: req.agreement,
                    dataset: req.dataset,
                    mode: Mode::Identified,
                    columns: req.columns,
                    subject: None,
                },
                &entry,
            )
            .await?;
        let grant = granted.grant()?;
        // INVARIANT: counted and recorded under the agreement's lock.
        let mut limits = self
            .limit_locks
            .hold_for(&self.home, &grant, &granted.agreement.id)
            .await?;
        if let Some(denial) = self
            .check_limits(principal, &granted, &grant, &commitment)
            .await?
        {
            return Err(self.refuse(entry, denial));
        }
        let mut raw = [0u8; 16];
        custos_store::keys::random_bytes(&mut raw)?;
        let id = format!("req_{}", hex::encode(raw));
        let keys = self.home().keys();
        let subject_sealed = keys.wrap(&Sealed::Subject.purpose(&id), subject.as_bytes())?;
        let justification_sealed = keys.wrap(
            &Sealed::Justification.purpose(&id),
            justification.as_bytes(),
        )?;
        let created_micros = now_micros();
        let mut allowed = Entry {
            decision: Decision::Allow,
            time_micros: created_micros,
            ..entry
        }
        .with_request(&id)
        .with_agreement(&granted.agreement.id, granted.version)
        .with_subjects([self.subjects().for_entry(&commitment, &id, ACTION)])
        .with_attribute("columns", granted.columns.join(","))
        .with_attribute(
            "justification_hmac",
            self.subjects().digest("justification", justification),
        )
        .with_count("approvals_required", u64::from(grant.limits.approvals));
        for reason in &granted.decided_by {
            allowed = allowed.with_reason(reason.clone());
        }
        // INVARIANT: the request exists only after this entry is durable.
        let ledger_index = self.append(&allowed)?;
        let record = AccessRequestRecord {
            id: id.clone(),
            agreement_id: granted.agreement.id.clone(),
            agreement_version: granted.version,
            grant_number: granted.grant_number,
            dataset: grant.dataset.clone(),
            requester: principal.id.clone(),
            subject_commitment: commitment.0,
            subject_sealed,
            justification_sealed,
            columns: granted.columns.clone(),
            approvals_required: grant.limits.approvals,
            state: RequestState::Pending,
            created_at: custos_store::home::now_rfc3339(),
            created_micros,
            ledger_index: ledger_index.index(),
        };
        let meta = self.home().meta();
        let requested = SubjectEvent {
            subject_commitment: commitment.0,
            ledger_index: ledger_index.index(),
            kind: SubjectEventKind::Requested,
            request_id: id,
            agreement_id: granted.agreement.id.clone(),
            agreement_version: granted.version,
            principal: principal.id.clone(),
            org: principal.org.clone(),
            purpose: granted.agreement.purpose.clone(),
            at: record.created_at.clone(),
            rows_released: 0,
            withheld: granted.agreement.withhold_from_subject_reports.is_some(),
        };
        // Still counted under the lock? Checked before the record, so
        // that a lost lock leaves no request; and again after it, for a
        // lock lost while the record was written.
        if let Some(limits) = limits.as_mut()
            && let Err(lost) = limits.confirm().await
        {
            self.append(
                &Entry {
                    decision: Decision::Error,
                    ..allowed
                }
                .with_reason(
                    "the limit lock was lost before the request was recorded; nothing was recorded",
                ),
            )?;
            return Err(lost);
        }
        meta.insert_request(&record, &requested).await?;
        if let Some(limits) = limits.as_mut()
            && let Err(lost) = limits.confirm().await
        {
            // Another replica may have counted while the lock was gone:
            // this request must never become a release.
            self.decline_unconfirmed(&record).await?;
            return Err(lost);
        }
        Ok(ticket(&record, 0))
    }

    /// Declines, as Custos itself and ledgered, a request recorded after
    /// its agreement's limit lock was lost: it can be neither approved nor
    /// fetched, and the requester may ask again.
    async fn decline_unconfirmed(&self, record: &AccessRequestRecord) -> Result<(), BrokerError> {
        const REASON: &str = "the agreement's limit lock was lost before this request was recorded; declined by Custos, ask again";
        let reason_sealed = self.home().keys().wrap(
            &Sealed::DeclineReason.purpose(&record.id),
            REASON.as_bytes(),
        )?;
        let recorded = self.append(
            &Entry::new(
                now_micros(),
                crate::SYSTEM_ACTOR,
                "lookup.decline",
                Decision::Allow,
            )
            .with_request(&record.id)
            .with_agreement(&record.agreement_id, record.agreement_version)
            .with_reason("the limit lock was lost before the request was recorded"),
        )?;
        let declined = self
            .home()
            .meta()
            .decline_request(&DeclineRecord {
                request_id: record.id.clone(),
                decliner: crate::SYSTEM_ACTOR.to_owned(),
                declined_at: custos_store::home::now_rfc3339(),
                reason_sealed,
                ledger_index: recorded.index(),
            })
            .await?;
        if !declined {
            // Judged in the moment between its record and this decline.
            tracing::error!(
                request = %record.id,
                "a look-up request recorded after its limit lock was lost was judged before Custos could decline it"
            );
            return Err(BrokerError::Internal(
                "a request recorded after its limit lock was lost was judged before it could be declined: see the ledger".into(),
            ));
        }
        Ok(())
    }

    /// Version `version` of agreement `id`, parsed, if it is stored.
    pub(crate) async fn agreement_at(
        &self,
        id: &str,
        version: u32,
    ) -> Result<Option<Agreement>, BrokerError> {
        Ok(self
            .home()
            .meta()
            .agreement_versions(id)
            .await?
            .into_iter()
            .find(|v| v.version == version)
            .and_then(|v| Agreement::from_toml(&v.toml).ok()))
    }

    /// The custodian organisation of the agreement version a request was
    /// made under.
    pub(crate) async fn custodian_of(
        &self,
        record: &AccessRequestRecord,
    ) -> Result<Option<String>, BrokerError> {
        Ok(self
            .agreement_at(&record.agreement_id, record.agreement_version)
            .await?
            .map(|a| a.parties.custodian))
    }

    /// A request by id, or a ledgered denial that does not say whether it
    /// exists (ids are guessable only by brute force, but still).
    pub(crate) async fn known_request(
        &self,
        entry: &Entry,
        id: &str,
    ) -> Result<AccessRequestRecord, BrokerError> {
        match self.home().meta().request(id).await? {
            Some(r) => Ok(r),
            None => Err(self.deny_lookup(entry.clone(), "no such request".into())),
        }
    }

    /// The two-person rule for judging (approving or declining) a request:
    /// the `approver` role, not the requester, no conflicting role, the
    /// agreement's custodian organisation, a pending request and an active
    /// agreement. A refusal is ledgered on `entry`.
    pub(crate) async fn may_judge(
        &self,
        entry: &Entry,
        principal: &Principal,
        record: &AccessRequestRecord,
        verb: &str,
    ) -> Result<(), BrokerError> {
        let refuse = |reason: String| Err(self.deny_lookup(entry.clone(), reason));
        if !principal.has_role(Role::Approver) {
            return refuse(format!(
                "only a principal with the `approver` role may {verb}"
            ));
        }
        if principal.id == record.requester {
            return refuse(format!(
                "self-approval is not allowed: a second person must {verb}"
            ));
        }
        if let Some(rule) = approver_conflict(principal) {
            return refuse(rule);
        }
        if self.custodian_of(record).await?.as_deref() != Some(principal.org.as_str()) {
            return refuse(
                "two-person rule: an approver must belong to the agreement's custodian organisation".into(),
            );
        }
        if record.state != RequestState::Pending {
            return refuse(format!("the request is already {}", record.state.as_str()));
        }
        match self
            .home()
            .meta()
            .agreement_state(&record.agreement_id)
            .await?
        {
            Some(s) if s.state == AgreementStatus::Active => Ok(()),
            Some(s) => refuse(format!(
                "agreement `{}` is {}",
                record.agreement_id, s.state
            )),
            None => refuse("the agreement is gone".into()),
        }
    }

    /// A request's state, with subject and justification, for the people
    /// who take part: the requester, approvers, admins and overseers.
    pub async fn lookup_details(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<LookupDetails, BrokerError> {
        let entry = self.lookup_entry(actor, "lookup.show", Decision::Deny);
        let Actor(Acting::Principal(principal)) = actor else {
            return Err(self.deny_lookup(entry, "look-ups need a principal's token".into()));
        };
        let record = self.known_request(&entry, id).await?;
        let entry = entry.with_request(&record.id);
        // Approvers see the person and the justification only for the
        // custodian they approve for.
        let custodian_approver = principal.has_role(Role::Approver)
            && approver_conflict(principal).is_none()
            && self.custodian_of(&record).await?.as_deref() == Some(principal.org.as_str());
        let may_see = principal.id == record.requester
            || custodian_approver
            || principal.has_role(Role::Admin)
            || principal.has_role(Role::Overseer);
        if !may_see {
            return Err(self.deny_lookup(
                entry,
                "only the requester, approvers, admins and overseers see a request".into(),
            ));
        }
        // Overseers verify without seeing personal data (DESIGN.md); the
        // person and the reason are for who asks and who judges.
        let (subject, justification) = if principal.id == record.requester || custodian_approver {
            (
                Some(self.unseal(&record.id, Sealed::Subject, &record.subject_sealed)?),
                Some(self.unseal(
                    &record.id,
                    Sealed::Justification,
                    &record.justification_sealed,
                )?),
            )
        } else {
            (None, None)
        };
        // Seeing who is looked up and why is itself recorded.
        self.append(&Entry {
            decision: Decision::Allow,
            ..entry
        })?;
        let approvers = self.home().meta().approvals(&record.id).await?;
        let declined = match self.home().meta().decline(&record.id).await? {
            None => None,
            Some(d) => Some(DeclineNote {
                reason: if justification.is_some() {
                    Some(self.unseal(&record.id, Sealed::DeclineReason, &d.reason_sealed)?)
                } else {
                    None
                },
                by: d.decliner,
                at: d.declined_at,
                ledger_index: d.ledger_index,
            }),
        };
        Ok(LookupDetails {
            ticket: ticket(&record, u32::try_from(approvers.len()).unwrap_or(u32::MAX)),
            subject,
            justification,
            approvers,
            declined,
        })
    }

    /// Approves a request. The approver needs the `approver` role, must not
    /// be the requester, and approves at most once.
    pub async fn approve_lookup(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<LookupTicket, BrokerError> {
        const ACTION: &str = "lookup.approve";
        let entry = self.lookup_entry(actor, ACTION, Decision::Deny);
        let Actor(Acting::Principal(principal)) = actor else {
            return Err(self.deny_lookup(entry, "approvals need a principal's token".into()));
        };
        let record = self.known_request(&entry, id).await?;
        let entry = entry
            .with_request(&record.id)
            .with_agreement(&record.agreement_id, record.agreement_version);
        self.may_judge(&entry, principal, &record, "approve")
            .await?;
        let meta = self.home().meta();
        if meta
            .approvals(&record.id)
            .await?
            .iter()
            .any(|a| a.approver == principal.id)
        {
            return Err(self.deny_lookup(
                entry,
                "you already approved this request: each approval must come from a different person".into(),
            ));
        }
        // INVARIANT: the approval counts only after this entry is durable.
        let ledger_index = self.append(&Entry {
            decision: Decision::Allow,
            ..entry.clone()
        })?;
        let outcome = meta
            .add_approval(&ApprovalRecord {
                request_id: record.id.clone(),
                approver: principal.id.clone(),
                approved_at: custos_store::home::now_rfc3339(),
                ledger_index: ledger_index.index(),
            })
            .await;
        match outcome {
            Ok((approvals, state)) => {
                let mut t = ticket(&record, approvals);
                t.state = state;
                Ok(t)
            }
            Err(custos_store::meta::MetaError::AlreadyExists(_)) => {
                let entry = Entry {
                    decision: Decision::Error,
                    ..entry
                };
                Err(self.deny_lookup(
                    entry,
                    "a concurrent approval by the same person was not counted".into(),
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Releases an approved request's records to its requester, once. The
    /// rows are read, filtered to the grant's row scope and columns, and
    /// returned only after the ledger entry recording the release is durable.
    pub async fn fetch_lookup(&self, actor: &Actor, id: &str) -> Result<Released, BrokerError> {
        const ACTION: &str = "lookup.fetch";
        let entry = self.lookup_entry(actor, ACTION, Decision::Deny);
        let Actor(Acting::Principal(principal)) = actor else {
            return Err(self.deny_lookup(entry, "fetches need a principal's token".into()));
        };
        let record = self.known_request(&entry, id).await?;
        let commitment = SubjectCommitment(record.subject_commitment);
        let entry = entry
            .with_request(&record.id)
            .with_agreement(&record.agreement_id, record.agreement_version);
        if principal.id != record.requester {
            return Err(self.deny_lookup(entry, "only the requester may fetch".into()));
        }
        match record.state {
            RequestState::Pending => {
                let given = self.home().meta().approvals(&record.id).await?.len();
                return Err(self.deny_lookup(
                    entry,
                    format!(
                        "the request has {given} of {} approvals",
                        record.approvals_required
                    ),
                ));
            }
            RequestState::Fetched => {
                return Err(self.deny_lookup(
                    entry,
                    "the request was already fetched (each approved request releases once)".into(),
                ));
            }
            RequestState::Declined => {
                return Err(
                    self.deny_lookup(entry, "the request was declined by an approver".into())
                );
            }
            RequestState::Approved => {}
        }
        // Decide again: the agreement may have been suspended, revoked or
        // expired, or the subject protected, since the request was made.
        let granted = self
            .decide(
                Access {
                    principal,
                    agreement: &record.agreement_id,
                    dataset: &record.dataset,
                    mode: Mode::Identified,
                    columns: Some(&record.columns),
                    subject: Some(&commitment),
                },
                &entry,
            )
            .await?;
        let meta = self.home().meta();
        // Approvals are counted against the grant in force now: a grant
        // tightened since the request was filed binds it too.
        let required = granted.grant()?.limits.approvals;
        let given = meta.approvals(&record.id).await?.len();
        if given < usize::try_from(required).unwrap_or(usize::MAX) {
            return Err(self.deny_lookup(
                entry,
                format!(
                    "the request has {given} of the {required} approvals the agreement now requires"
                ),
            ));
        }
        if !meta
            .transition_request(&record.id, RequestState::Approved, RequestState::Fetched)
            .await?
        {
            return Err(self.deny_lookup(entry, "the request was fetched concurrently".into()));
        }
        let subject = self.unseal(&record.id, Sealed::Subject, &record.subject_sealed)?;
        let grant = granted.grant()?;
        let read = self
            .read_subject(
                &record.dataset,
                &subject,
                &record.columns,
                grant.row_scope.as_deref(),
            )
            .await;
        let (columns, rows) = match read {
            Ok(r) => r,
            Err(e) => {
                // Give the approval back; say in the ledger that nothing left.
                let _ = meta
                    .transition_request(&record.id, RequestState::Fetched, RequestState::Approved)
                    .await;
                let failed = Entry {
                    decision: Decision::Error,
                    ..entry
                }
                .with_reason("the records could not be read; nothing was released");
                self.append(&failed)?;
                return Err(e);
            }
        };
        let released = Entry {
            decision: Decision::Allow,
            ..entry
        }
        // How many rows the person has goes to the requester and the
        // person's accounting, not into the public entry.
        .with_subjects([self.subjects().for_entry(&commitment, &record.id, ACTION)]);
        // INVARIANT: nothing is returned before this entry is durable; if
        // it cannot be, the approval is given back (nothing was released).
        let ledger_index = match self.append(&released) {
            Ok(i) => i,
            Err(e) => {
                let _ = meta
                    .transition_request(&record.id, RequestState::Fetched, RequestState::Approved)
                    .await;
                return Err(e);
            }
        };
        meta.insert_subject_event(&SubjectEvent {
            subject_commitment: record.subject_commitment,
            ledger_index: ledger_index.index(),
            kind: if rows.is_empty() {
                SubjectEventKind::NoRecords
            } else {
                SubjectEventKind::Disclosed
            },
            request_id: record.id.clone(),
            agreement_id: record.agreement_id.clone(),
            agreement_version: granted.version,
            principal: principal.id.clone(),
            org: principal.org.clone(),
            purpose: granted.agreement.purpose.clone(),
            at: custos_store::home::now_rfc3339(),
            rows_released: rows.len() as u64,
            withheld: granted.agreement.withhold_from_subject_reports.is_some(),
        })
        .await?;
        Ok(Released {
            request_id: record.id,
            columns,
            rows,
            ledger_index,
        })
    }

    /// Reads one subject's rows, keeps those in the row scope, and formats
    /// the granted columns.
    async fn read_subject(
        &self,
        dataset_name: &str,
        subject: &str,
        columns: &[String],
        row_scope: Option<&str>,
    ) -> Result<(Vec<String>, Vec<Vec<Option<String>>>), BrokerError> {
        let reader = self
            .open_dataset(dataset_name, crate::contents::Reading::Subject(subject))
            .await?;
        let schema = reader.schema().clone();
        let filter = compile_row_scope(row_scope, &schema)?;
        let mut wanted: Vec<String> = columns.to_vec();
        if let Some(f) = &filter {
            for c in f.columns() {
                if !wanted.contains(c) {
                    wanted.push(c.clone());
                }
            }
        }
        let subject = subject.to_owned();
        let read = tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
            reader.subject_rows(&subject, Some(&names))
        })
        .await
        .map_err(|_| BrokerError::Internal("the read was interrupted".into()))?;
        let batches = match read {
            // A subject id that cannot exist in this dataset (e.g. letters
            // for an integer id) has no records, like any absent subject.
            Err(custos_store::DatasetError::BadSubject) => Vec::new(),
            other => other?,
        };
        let mut rows = Vec::new();
        for batch in &batches {
            for r in 0..batch.num_rows() {
                if let Some(f) = &filter {
                    let values: Vec<ScopeValue> = f
                        .columns()
                        .iter()
                        .map(|c| scope_value(batch, c, r))
                        .collect();
                    if !f.matches(&values) {
                        continue;
                    }
                }
                rows.push(
                    (0..columns.len())
                        .map(|i| format_cell(batch.column(i).as_ref(), &schema, &columns[i], r))
                        .collect(),
                );
            }
        }
        Ok((columns.to_vec(), rows))
    }
}

pub(crate) fn ticket(r: &AccessRequestRecord, approvals: u32) -> LookupTicket {
    LookupTicket {
        id: r.id.clone(),
        agreement: r.agreement_id.clone(),
        agreement_version: r.agreement_version,
        dataset: r.dataset.clone(),
        columns: r.columns.clone(),
        state: r.state,
        approvals,
        approvals_required: r.approvals_required,
        requester: r.requester.clone(),
        created_at: r.created_at.clone(),
        ledger_index: r.ledger_index,
    }
}

fn column_of<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a dyn Array> {
    batch.column_by_name(name).map(AsRef::as_ref)
}

/// A grant's row scope compiled against its dataset, if it has one. The
/// scope was validated when the agreement was applied, so a failure here
/// is a fault (a schema that changed under it), not the caller's doing.
pub(crate) fn compile_row_scope(
    scope: Option<&str>,
    schema: &DatasetSchema,
) -> Result<Option<ScopeFilter>, BrokerError> {
    scope
        .map(|text| ScopeFilter::compile(text, schema))
        .transpose()
        .map_err(|e| BrokerError::Internal(format!("the grant's row scope: {e}")))
}

/// The sealing purpose of a protected subject's id.
fn protected_purpose(commitment: &SubjectCommitment) -> String {
    custos_store::sealed::protected_purpose(&hex::encode(commitment.0))
}

/// Why `principal` may not act as the second person of the two-person
/// rule, if so: an approver holds no `requester` role (no one approves
/// for a colleague what they could ask for themselves) and no `admin`
/// role (who manages principals could make the approver they need).
pub(crate) fn approver_conflict(principal: &Principal) -> Option<String> {
    let conflicting = [Role::Requester, Role::Admin]
        .into_iter()
        .find(|r| principal.has_role(*r))?;
    Some(format!(
        "two-person rule: an approver may not also hold the `{}` role",
        conflicting.as_str()
    ))
}

/// A row's value of `name` as the row-scope evaluator takes it.
pub(crate) fn scope_value(batch: &RecordBatch, name: &str, row: usize) -> ScopeValue {
    let Some(array) = column_of(batch, name) else {
        return ScopeValue::Null;
    };
    if array.is_null(row) {
        return ScopeValue::Null;
    }
    if let Some(a) = array.as_any().downcast_ref::<Int64Array>() {
        return ScopeValue::Int(a.value(row));
    }
    if let Some(a) = array.as_any().downcast_ref::<Date32Array>() {
        return ScopeValue::Int(i64::from(a.value(row)));
    }
    if let Some(a) = array.as_any().downcast_ref::<StringArray>() {
        return ScopeValue::Text(a.value(row).to_owned());
    }
    ScopeValue::Null
}

fn format_cell(
    array: &dyn Array,
    schema: &DatasetSchema,
    name: &str,
    row: usize,
) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    let ty = schema.column(name).map(|c| c.ty);
    if let Some(a) = array.as_any().downcast_ref::<Int64Array>() {
        let v = a.value(row);
        return Some(if ty == Some(ColumnType::Decimal) {
            format_cents(v)
        } else {
            v.to_string()
        });
    }
    if let Some(a) = array.as_any().downcast_ref::<Date32Array>() {
        return Some(format_date_days(i64::from(a.value(row))));
    }
    array
        .as_any()
        .downcast_ref::<StringArray>()
        .map(|a| a.value(row).to_owned())
}

impl Custos {
    /// Flags a subject as protected (admins only): guard rules see
    /// `context.subject_protected` and may forbid any access to them.
    pub async fn protect_subject(&self, actor: &Actor, subject: &str) -> Result<(), BrokerError> {
        const ACTION: &str = "subject.protect";
        let entry = Entry::new(now_micros(), actor.id(), ACTION, Decision::Deny);
        if !matches!(actor, Actor(Acting::Principal(p)) if p.has_role(Role::Admin)) {
            return Err(self.deny_lookup(entry, "only an admin may protect subjects".into()));
        }
        let commitment = self.subjects().commit(subject.trim());
        let mut raw = [0u8; 16];
        custos_store::keys::random_bytes(&mut raw)?;
        let id = format!("prot_{}", hex::encode(raw));
        let sealed = self
            .home()
            .keys()
            .wrap(&protected_purpose(&commitment), subject.trim().as_bytes())?;
        // INVARIANT: the flag is set only after this entry is durable.
        self.append(
            &Entry {
                decision: Decision::Allow,
                ..entry
            }
            .with_request(&id)
            .with_subjects([self.subjects().for_entry(&commitment, &id, ACTION)]),
        )?;
        self.home()
            .meta()
            .protect_subject(
                &commitment.0,
                &sealed,
                &custos_store::home::now_rfc3339(),
                actor.id(),
            )
            .await?;
        Ok(())
    }

    /// The subject keys, in `reader`'s dataset, of every protected subject
    /// whose id was kept (extracts leave their rows out without reading
    /// anyone's identity).
    pub(crate) async fn protected_keys(
        &self,
        reader: &DatasetReader,
    ) -> Result<std::collections::HashSet<i64>, BrokerError> {
        let mut keys = std::collections::HashSet::new();
        for (commitment, sealed) in self.home().meta().protected_subjects().await? {
            let Some(sealed) = sealed else { continue };
            let id = self.home().keys().unwrap_secret(
                &protected_purpose(&SubjectCommitment(commitment)),
                "protected subject",
                &sealed,
            )?;
            if let Some(key) = reader.subject_key(&String::from_utf8_lossy(&id)) {
                keys.insert(key);
            }
        }
        Ok(keys)
    }
}
