//! The request catalogue: identified look-up requests, their approvals, the
//! accounting of disclosures per subject, and protected subjects.
//!
//! [`RequestStore`] is a supertrait of [`crate::meta::MetadataStore`], so
//! every backend implements it; it lives in its own module to keep the
//! catalogue of datasets and agreements apart from the request flow.
//! Nothing here stores a subject id or a justification in the clear: the
//! broker seals them under the master key before they arrive.

use async_trait::async_trait;
use sqlx::Row;

use crate::meta::{MetaError, SqlMetadata};
use crate::sql::Statement;

/// Where a look-up request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RequestState {
    /// Waiting for approvals.
    Pending,
    /// Approved as often as the grant requires; may be fetched once.
    Approved,
    /// Fetched: the records were released (or found absent).
    Fetched,
    /// Declined by an approver, with a reason; it can no longer be approved.
    Declined,
}

impl RequestState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Fetched => "fetched",
            Self::Declined => "declined",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self, MetaError> {
        match text {
            "pending" => Ok(Self::Pending),
            "approved" => Ok(Self::Approved),
            "fetched" => Ok(Self::Fetched),
            "declined" => Ok(Self::Declined),
            _ => Err(MetaError::Database("unknown request state".into())),
        }
    }
}

/// An identified look-up request as the catalogue keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequestRecord {
    /// `req_` and 32 hex digits.
    pub id: String,
    /// The agreement it runs under.
    pub agreement_id: String,
    /// The agreement's version when it was made.
    pub agreement_version: u32,
    /// Which grant of that version (1-based).
    pub grant_number: u32,
    /// The dataset.
    pub dataset: String,
    /// Principal id of the requester.
    pub requester: String,
    /// The subject's ledger commitment.
    pub subject_commitment: [u8; 32],
    /// The subject id, sealed under the master key.
    pub subject_sealed: Vec<u8>,
    /// The justification, sealed under the master key.
    pub justification_sealed: Vec<u8>,
    /// Columns to release.
    pub columns: Vec<String>,
    /// Approvals the grant requires.
    pub approvals_required: u32,
    /// Where it stands.
    pub state: RequestState,
    /// RFC 3339 time it was made.
    pub created_at: String,
    /// The same time in microseconds (for limits).
    pub created_micros: i64,
    /// Index of the ledger entry that recorded it.
    pub ledger_index: u64,
}

/// One approval of a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApprovalRecord {
    /// The request.
    pub request_id: String,
    /// Principal id of the approver.
    pub approver: String,
    /// RFC 3339 time.
    pub approved_at: String,
    /// Index of the ledger entry that recorded it.
    pub ledger_index: u64,
}

/// An approver's refusal of a pending request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclineRecord {
    /// The request.
    pub request_id: String,
    /// Principal id of the approver who declined.
    pub decliner: String,
    /// RFC 3339 time.
    pub declined_at: String,
    /// The reason, sealed under the master key (it may name the person).
    pub reason_sealed: Vec<u8>,
    /// Index of the ledger entry that recorded it.
    pub ledger_index: u64,
}

/// What happened to a subject's records in one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SubjectEventKind {
    /// A look-up named the subject (an inspection was asked for).
    Requested,
    /// The subject's records were released to the requester.
    Disclosed,
    /// A fetch ran and found no records in scope.
    NoRecords,
    /// The subject's rows were in a pseudonymous extract (tokenised).
    Extracted,
}

impl SubjectEventKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Disclosed => "disclosed",
            Self::NoRecords => "no_records",
            Self::Extracted => "extracted",
        }
    }

    fn parse(text: &str) -> Result<Self, MetaError> {
        match text {
            "requested" => Ok(Self::Requested),
            "disclosed" => Ok(Self::Disclosed),
            "no_records" => Ok(Self::NoRecords),
            "extracted" => Ok(Self::Extracted),
            _ => Err(MetaError::Database("unknown subject event kind".into())),
        }
    }
}

/// One line of a subject's accounting of disclosures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectEvent {
    /// The subject's ledger commitment.
    pub subject_commitment: [u8; 32],
    /// Index of the ledger entry that records the event.
    pub ledger_index: u64,
    /// What happened.
    pub kind: SubjectEventKind,
    /// The request.
    pub request_id: String,
    /// The agreement.
    pub agreement_id: String,
    /// Its version.
    pub agreement_version: u32,
    /// Principal id of the recipient.
    pub principal: String,
    /// The recipient's organisation.
    pub org: String,
    /// The agreement's purpose.
    pub purpose: String,
    /// RFC 3339 time.
    pub at: String,
    /// Rows released (0 unless disclosed).
    pub rows_released: u64,
    /// Whether the agreement withholds it from the subject's report.
    pub withheld: bool,
}

/// An agreement's use, counted from the catalogue.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgreementUsage {
    /// Look-up requests made.
    pub requests: u64,
    /// Of which pending.
    pub pending: u64,
    /// Of which approved, not yet fetched.
    pub approved: u64,
    /// Of which fetched.
    pub fetched: u64,
    /// Approvals given.
    pub approvals: u64,
    /// Distinct subjects named.
    pub distinct_subjects: u64,
    /// Fetches that released records.
    pub disclosures: u64,
    /// Rows released in total.
    pub rows_released: u64,
    /// Distinct requesters.
    pub requesters: u64,
    /// First request (RFC 3339), if any.
    pub first_request: Option<String>,
    /// Latest request (RFC 3339), if any.
    pub last_request: Option<String>,
}

/// The request catalogue every metadata backend provides.
#[async_trait]
pub trait RequestStore: Send + Sync {
    /// Records a new request (state `pending`) and the `requested` line of
    /// its subject's accounting, in one transaction.
    async fn insert_request(
        &self,
        request: &AccessRequestRecord,
        requested: &SubjectEvent,
    ) -> Result<(), MetaError>;
    /// A request by id.
    async fn request(&self, id: &str) -> Result<Option<AccessRequestRecord>, MetaError>;
    /// Requests made under `agreement_id` by `requester` since `since_micros`.
    async fn count_requests_since(
        &self,
        agreement_id: &str,
        requester: &str,
        since_micros: i64,
    ) -> Result<u64, MetaError>;
    /// Distinct subjects named under `agreement_id` on `dataset` since
    /// `since_micros`, and whether `subject` is among them.
    async fn subjects_since(
        &self,
        agreement_id: &str,
        dataset: &str,
        since_micros: i64,
        subject: &[u8; 32],
    ) -> Result<(u64, bool), MetaError>;
    /// Records an approval and, once `approvals_required` is reached, moves
    /// the request from pending to approved, in one transaction. A second
    /// approval by the same approver fails with `AlreadyExists`. Returns the
    /// approvals now given and the new state.
    async fn add_approval(
        &self,
        approval: &ApprovalRecord,
    ) -> Result<(u32, RequestState), MetaError>;
    /// Moves a pending request to declined and records why, in one
    /// transaction; false if the request was no longer pending.
    async fn decline_request(&self, decline: &DeclineRecord) -> Result<bool, MetaError>;
    /// The decline of a request, if it was declined.
    async fn decline(&self, request_id: &str) -> Result<Option<DeclineRecord>, MetaError>;
    /// The approvals of a request, oldest first.
    async fn approvals(&self, request_id: &str) -> Result<Vec<ApprovalRecord>, MetaError>;
    /// Moves a request from `from` to `to`; false if it was not in `from`
    /// (so two fetches cannot both claim one approval).
    async fn transition_request(
        &self,
        id: &str,
        from: RequestState,
        to: RequestState,
    ) -> Result<bool, MetaError>;
    /// Records a line of a subject's accounting.
    async fn insert_subject_event(&self, event: &SubjectEvent) -> Result<(), MetaError>;
    /// Records many accounting lines in one transaction (an extract's subjects).
    async fn insert_subject_events(&self, events: &[SubjectEvent]) -> Result<(), MetaError>;
    /// A subject's accounting, oldest first (withheld lines included; the
    /// caller decides what to show).
    async fn subject_events(&self, subject: &[u8; 32]) -> Result<Vec<SubjectEvent>, MetaError>;
    /// An agreement's use.
    async fn agreement_usage(&self, agreement_id: &str) -> Result<AgreementUsage, MetaError>;
    /// Flags a subject as protected (idempotent), with its id sealed under
    /// the master key.
    async fn protect_subject(
        &self,
        subject: &[u8; 32],
        sealed: &[u8],
        at: &str,
        by: &str,
    ) -> Result<(), MetaError>;
    /// Whether a subject is flagged as protected.
    async fn subject_protected(&self, subject: &[u8; 32]) -> Result<bool, MetaError>;
    /// Every protected subject: its commitment and its sealed id (absent
    /// for subjects protected before ids were kept).
    async fn protected_subjects(&self) -> Result<Vec<([u8; 32], Option<Vec<u8>>)>, MetaError>;
    /// Records that extract `id` ran under `agreement_id`.
    async fn record_extract_run(
        &self,
        id: &str,
        agreement_id: &str,
        principal: &str,
        at_micros: i64,
    ) -> Result<(), MetaError>;
    /// Extracts run under `agreement_id` since `since_micros`.
    async fn count_extract_runs_since(
        &self,
        agreement_id: &str,
        since_micros: i64,
    ) -> Result<u64, MetaError>;
}

pub(crate) fn to_i64(v: u64) -> Result<i64, MetaError> {
    i64::try_from(v).map_err(|_| MetaError::Database("number too large".into()))
}

pub(crate) fn to_u64(v: i64) -> Result<u64, MetaError> {
    u64::try_from(v).map_err(|_| MetaError::Database("negative number in catalogue".into()))
}

fn to_u32(v: i64) -> Result<u32, MetaError> {
    u32::try_from(v).map_err(|_| MetaError::Database("number out of range in catalogue".into()))
}

fn commitment(row: &sqlx::any::AnyRow) -> Result<[u8; 32], MetaError> {
    let bytes: Vec<u8> = row.try_get("subject_commitment")?;
    bytes
        .try_into()
        .map_err(|_| MetaError::Database("malformed subject commitment".into()))
}

pub(crate) fn request_from_row(row: &sqlx::any::AnyRow) -> Result<AccessRequestRecord, MetaError> {
    let columns: String = row.try_get("columns")?;
    let state: String = row.try_get("state")?;
    Ok(AccessRequestRecord {
        id: row.try_get("id")?,
        agreement_id: row.try_get("agreement_id")?,
        agreement_version: to_u32(row.try_get("agreement_version")?)?,
        grant_number: to_u32(row.try_get("grant_number")?)?,
        dataset: row.try_get("dataset")?,
        requester: row.try_get("requester")?,
        subject_commitment: commitment(row)?,
        subject_sealed: row.try_get("subject_sealed")?,
        justification_sealed: row.try_get("justification_sealed")?,
        columns: columns
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
        approvals_required: to_u32(row.try_get("approvals_required")?)?,
        state: RequestState::parse(&state)?,
        created_at: row.try_get("created_at")?,
        created_micros: row.try_get("created_micros")?,
        ledger_index: to_u64(row.try_get("ledger_index")?)?,
    })
}

pub(crate) fn decline_from_row(row: &sqlx::any::AnyRow) -> Result<DeclineRecord, MetaError> {
    Ok(DeclineRecord {
        request_id: row.try_get("request_id")?,
        decliner: row.try_get("decliner")?,
        declined_at: row.try_get("declined_at")?,
        reason_sealed: row.try_get("reason_sealed")?,
        ledger_index: to_u64(row.try_get("ledger_index")?)?,
    })
}

pub(crate) fn approval_from_row(row: &sqlx::any::AnyRow) -> Result<ApprovalRecord, MetaError> {
    Ok(ApprovalRecord {
        request_id: row.try_get("request_id")?,
        approver: row.try_get("approver")?,
        approved_at: row.try_get("approved_at")?,
        ledger_index: to_u64(row.try_get("ledger_index")?)?,
    })
}

fn event_from_row(row: &sqlx::any::AnyRow) -> Result<SubjectEvent, MetaError> {
    let kind: String = row.try_get("kind")?;
    Ok(SubjectEvent {
        subject_commitment: commitment(row)?,
        ledger_index: to_u64(row.try_get("ledger_index")?)?,
        kind: SubjectEventKind::parse(&kind)?,
        request_id: row.try_get("request_id")?,
        agreement_id: row.try_get("agreement_id")?,
        agreement_version: to_u32(row.try_get("agreement_version")?)?,
        principal: row.try_get("principal")?,
        org: row.try_get("org")?,
        purpose: row.try_get("purpose")?,
        at: row.try_get("at")?,
        rows_released: to_u64(row.try_get("rows_released")?)?,
        withheld: row.try_get::<i64, _>("withheld")? != 0,
    })
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    e: &SubjectEvent,
) -> Result<(), MetaError> {
    sqlx::query(
        "INSERT INTO subject_events (subject_commitment, ledger_index, kind, request_id, \
         agreement_id, agreement_version, principal, org, purpose, at, rows_released, withheld) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(e.subject_commitment.as_slice())
    .bind(to_i64(e.ledger_index)?)
    .bind(e.kind.as_str())
    .bind(&e.request_id)
    .bind(&e.agreement_id)
    .bind(i64::from(e.agreement_version))
    .bind(&e.principal)
    .bind(&e.org)
    .bind(&e.purpose)
    .bind(&e.at)
    .bind(to_i64(e.rows_released)?)
    .bind(i64::from(e.withheld))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl RequestStore for SqlMetadata {
    async fn insert_request(
        &self,
        r: &AccessRequestRecord,
        requested: &SubjectEvent,
    ) -> Result<(), MetaError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO access_requests (id, agreement_id, agreement_version, grant_number, dataset, \
             requester, subject_commitment, subject_sealed, justification_sealed, columns, \
             approvals_required, state, created_at, created_micros, ledger_index) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(&r.id)
        .bind(&r.agreement_id)
        .bind(i64::from(r.agreement_version))
        .bind(i64::from(r.grant_number))
        .bind(&r.dataset)
        .bind(&r.requester)
        .bind(r.subject_commitment.as_slice())
        .bind(&r.subject_sealed)
        .bind(&r.justification_sealed)
        .bind(r.columns.join(","))
        .bind(i64::from(r.approvals_required))
        .bind(r.state.as_str())
        .bind(&r.created_at)
        .bind(r.created_micros)
        .bind(to_i64(r.ledger_index)?)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, requested).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn request(&self, id: &str) -> Result<Option<AccessRequestRecord>, MetaError> {
        let row = sqlx::query("SELECT * FROM access_requests WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(request_from_row).transpose()
    }

    async fn count_requests_since(
        &self,
        agreement_id: &str,
        requester: &str,
        since_micros: i64,
    ) -> Result<u64, MetaError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM access_requests WHERE agreement_id = $1 AND requester = $2 AND created_micros >= $3",
        )
        .bind(agreement_id)
        .bind(requester)
        .bind(since_micros)
        .fetch_one(self.pool())
        .await?;
        to_u64(n)
    }

    async fn subjects_since(
        &self,
        agreement_id: &str,
        dataset: &str,
        since_micros: i64,
        subject: &[u8; 32],
    ) -> Result<(u64, bool), MetaError> {
        let row = sqlx::query(
            "SELECT COUNT(DISTINCT subject_commitment) AS n, \
             COALESCE(MAX(CASE WHEN subject_commitment = $1 THEN 1 ELSE 0 END), 0) AS seen \
             FROM access_requests WHERE agreement_id = $2 AND dataset = $3 AND created_micros >= $4",
        )
        .bind(subject.as_slice())
        .bind(agreement_id)
        .bind(dataset)
        .bind(since_micros)
        .fetch_one(self.pool())
        .await?;
        Ok((
            to_u64(row.try_get("n")?)?,
            row.try_get::<i64, _>("seen")? != 0,
        ))
    }

    async fn add_approval(&self, a: &ApprovalRecord) -> Result<(u32, RequestState), MetaError> {
        let mut tx = self.pool().begin().await?;
        // The request's row lock first, so concurrent approvals count one
        // after the other: under PostgreSQL's read committed, two approvals
        // that each counted before the other committed would leave a
        // request with all its approvals pending. (SQLite: the first write
        // takes the database's write lock, as here.)
        sqlx::query("UPDATE access_requests SET state = state WHERE id = $1")
            .bind(&a.request_id)
            .execute(&mut *tx)
            .await?;
        // Only a pending request takes approvals (one declined meanwhile
        // keeps its state and gains no approval).
        sqlx::query(
            "INSERT INTO approvals (request_id, approver, approved_at, ledger_index) \
             SELECT $1, $2, $3, $4 WHERE EXISTS \
             (SELECT 1 FROM access_requests WHERE id = $5 AND state = 'pending')",
        )
        .bind(&a.request_id)
        .bind(&a.approver)
        .bind(&a.approved_at)
        .bind(to_i64(a.ledger_index)?)
        .bind(&a.request_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| match MetaError::from(e) {
            MetaError::AlreadyExists(_) => MetaError::AlreadyExists("this approval".into()),
            other => other,
        })?;
        let given: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM approvals WHERE request_id = $1")
            .bind(&a.request_id)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE access_requests SET state = 'approved' WHERE id = $1 AND state = 'pending' \
             AND approvals_required <= $2",
        )
        .bind(&a.request_id)
        .bind(given)
        .execute(&mut *tx)
        .await?;
        let state: String = sqlx::query_scalar("SELECT state FROM access_requests WHERE id = $1")
            .bind(&a.request_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((to_u32(given)?, RequestState::parse(&state)?))
    }

    async fn decline_request(&self, d: &DeclineRecord) -> Result<bool, MetaError> {
        let mut tx = self.pool().begin().await?;
        let moved = sqlx::query(
            "UPDATE access_requests SET state = 'declined' WHERE id = $1 AND state = 'pending'",
        )
        .bind(&d.request_id)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO request_declines (request_id, decliner, declined_at, reason_sealed, ledger_index) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&d.request_id)
        .bind(&d.decliner)
        .bind(&d.declined_at)
        .bind(&d.reason_sealed)
        .bind(to_i64(d.ledger_index)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn decline(&self, request_id: &str) -> Result<Option<DeclineRecord>, MetaError> {
        let row = sqlx::query("SELECT * FROM request_declines WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(decline_from_row).transpose()
    }

    async fn approvals(&self, request_id: &str) -> Result<Vec<ApprovalRecord>, MetaError> {
        let rows =
            sqlx::query("SELECT * FROM approvals WHERE request_id = $1 ORDER BY ledger_index")
                .bind(request_id)
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(approval_from_row).collect()
    }

    async fn transition_request(
        &self,
        id: &str,
        from: RequestState,
        to: RequestState,
    ) -> Result<bool, MetaError> {
        let done =
            sqlx::query("UPDATE access_requests SET state = $1 WHERE id = $2 AND state = $3")
                .bind(to.as_str())
                .bind(id)
                .bind(from.as_str())
                .execute(self.pool())
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_subject_event(&self, e: &SubjectEvent) -> Result<(), MetaError> {
        let mut tx = self.pool().begin().await?;
        insert_event(&mut tx, e).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_subject_events(&self, events: &[SubjectEvent]) -> Result<(), MetaError> {
        /// Rows per INSERT statement: 12 parameters each, well under
        /// SQLite's limit of 32,766 per statement.
        const ROWS_PER_STATEMENT: usize = 1000;
        // In key order, the primary-key index grows at few places instead
        // of a random page per row (an extract names millions of subjects).
        let mut sorted: Vec<&SubjectEvent> = events.iter().collect();
        sorted.sort_unstable_by_key(|e| (e.subject_commitment, e.ledger_index));
        let mut tx = self.pool().begin().await?;
        for chunk in sorted.chunks(ROWS_PER_STATEMENT) {
            let mut insert = Statement::new(
                "INSERT INTO subject_events (subject_commitment, ledger_index, kind, request_id, \
                 agreement_id, agreement_version, principal, org, purpose, at, rows_released, withheld) \
                 VALUES ",
            );
            for (i, e) in chunk.iter().enumerate() {
                insert.push(if i == 0 { "(" } else { ", (" });
                insert.bind(e.subject_commitment.to_vec())?.push(", ");
                insert.bind(to_i64(e.ledger_index)?)?.push(", ");
                insert.bind(e.kind.as_str())?.push(", ");
                insert.bind(e.request_id.clone())?.push(", ");
                insert.bind(e.agreement_id.clone())?.push(", ");
                insert.bind(i64::from(e.agreement_version))?.push(", ");
                insert.bind(e.principal.clone())?.push(", ");
                insert.bind(e.org.clone())?.push(", ");
                insert.bind(e.purpose.clone())?.push(", ");
                insert.bind(e.at.clone())?.push(", ");
                insert.bind(to_i64(e.rows_released)?)?.push(", ");
                insert.bind(i64::from(e.withheld))?.push(")");
            }
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn subject_events(&self, subject: &[u8; 32]) -> Result<Vec<SubjectEvent>, MetaError> {
        let rows = sqlx::query(
            "SELECT * FROM subject_events WHERE subject_commitment = $1 ORDER BY ledger_index",
        )
        .bind(subject.as_slice())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn agreement_usage(&self, agreement_id: &str) -> Result<AgreementUsage, MetaError> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS requests, \
             COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0) AS pending, \
             COALESCE(SUM(CASE WHEN state = 'approved' THEN 1 ELSE 0 END), 0) AS approved, \
             COALESCE(SUM(CASE WHEN state = 'fetched' THEN 1 ELSE 0 END), 0) AS fetched, \
             COUNT(DISTINCT subject_commitment) AS subjects, \
             COUNT(DISTINCT requester) AS requesters, \
             MIN(created_at) AS first_request, MAX(created_at) AS last_request \
             FROM access_requests WHERE agreement_id = $1",
        )
        .bind(agreement_id)
        .fetch_one(self.pool())
        .await?;
        let approvals: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM approvals a JOIN access_requests r ON r.id = a.request_id \
             WHERE r.agreement_id = $1",
        )
        .bind(agreement_id)
        .fetch_one(self.pool())
        .await?;
        let released = sqlx::query(
            "SELECT COUNT(*) AS disclosures, CAST(COALESCE(SUM(rows_released), 0) AS BIGINT) AS rows_released \
             FROM subject_events WHERE agreement_id = $1 AND kind = 'disclosed'",
        )
        .bind(agreement_id)
        .fetch_one(self.pool())
        .await?;
        Ok(AgreementUsage {
            requests: to_u64(r.try_get("requests")?)?,
            pending: to_u64(r.try_get("pending")?)?,
            approved: to_u64(r.try_get("approved")?)?,
            fetched: to_u64(r.try_get("fetched")?)?,
            approvals: to_u64(approvals)?,
            distinct_subjects: to_u64(r.try_get("subjects")?)?,
            disclosures: to_u64(released.try_get("disclosures")?)?,
            rows_released: to_u64(released.try_get("rows_released")?)?,
            requesters: to_u64(r.try_get("requesters")?)?,
            first_request: r.try_get("first_request")?,
            last_request: r.try_get("last_request")?,
        })
    }

    async fn protect_subject(
        &self,
        subject: &[u8; 32],
        sealed: &[u8],
        at: &str,
        by: &str,
    ) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO protected_subjects (subject_commitment, protected_at, protected_by, subject_sealed) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (subject_commitment) \
             DO UPDATE SET subject_sealed = COALESCE(protected_subjects.subject_sealed, excluded.subject_sealed)",
        )
        .bind(subject.as_slice())
        .bind(at)
        .bind(by)
        .bind(sealed)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn record_extract_run(
        &self,
        id: &str,
        agreement_id: &str,
        principal: &str,
        at_micros: i64,
    ) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO extract_runs (id, agreement_id, principal, at_micros) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(agreement_id)
        .bind(principal)
        .bind(at_micros)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn count_extract_runs_since(
        &self,
        agreement_id: &str,
        since_micros: i64,
    ) -> Result<u64, MetaError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM extract_runs WHERE agreement_id = $1 AND at_micros >= $2",
        )
        .bind(agreement_id)
        .bind(since_micros)
        .fetch_one(self.pool())
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn protected_subjects(&self) -> Result<Vec<([u8; 32], Option<Vec<u8>>)>, MetaError> {
        let rows = sqlx::query("SELECT subject_commitment, subject_sealed FROM protected_subjects")
            .fetch_all(self.pool())
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let commitment: Vec<u8> = r.try_get("subject_commitment")?;
            let Ok(commitment) = <[u8; 32]>::try_from(commitment.as_slice()) else {
                continue;
            };
            out.push((commitment, r.try_get("subject_sealed")?));
        }
        Ok(out)
    }

    async fn subject_protected(&self, subject: &[u8; 32]) -> Result<bool, MetaError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM protected_subjects WHERE subject_commitment = $1",
        )
        .bind(subject.as_slice())
        .fetch_one(self.pool())
        .await?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetadataStore;

    fn request(id: &str, subject: u8, micros: i64) -> AccessRequestRecord {
        AccessRequestRecord {
            id: id.into(),
            agreement_id: "a".into(),
            agreement_version: 1,
            grant_number: 1,
            dataset: "d".into(),
            requester: "p_1".into(),
            subject_commitment: [subject; 32],
            subject_sealed: vec![1],
            justification_sealed: vec![2],
            columns: vec!["x".into(), "y".into()],
            approvals_required: 2,
            state: RequestState::Pending,
            created_at: "2026-01-01T00:00:00Z".into(),
            created_micros: micros,
            ledger_index: 7,
        }
    }

    /// The suite every backend must pass (as `meta::backend_suite`).
    fn requested(r: &AccessRequestRecord, index: u64) -> SubjectEvent {
        SubjectEvent {
            subject_commitment: r.subject_commitment,
            ledger_index: index,
            kind: SubjectEventKind::Requested,
            request_id: r.id.clone(),
            agreement_id: r.agreement_id.clone(),
            agreement_version: 1,
            principal: r.requester.clone(),
            org: "TIGTA".into(),
            purpose: "audit".into(),
            at: "t".into(),
            rows_released: 0,
            withheld: false,
        }
    }

    pub(crate) async fn request_suite(store: &dyn MetadataStore) {
        for (i, (id, subject, micros)) in [("r1", 1, 100), ("r2", 1, 200), ("r3", 2, 300)]
            .into_iter()
            .enumerate()
        {
            let r = request(id, subject, micros);
            store
                .insert_request(&r, &requested(&r, i as u64))
                .await
                .unwrap();
        }
        assert_eq!(
            store.request("r1").await.unwrap(),
            Some(request("r1", 1, 100))
        );
        assert_eq!(store.request("nope").await.unwrap(), None);
        assert_eq!(
            store.count_requests_since("a", "p_1", 150).await.unwrap(),
            2
        );
        assert_eq!(store.count_requests_since("a", "p_2", 0).await.unwrap(), 0);
        assert_eq!(
            store.subjects_since("a", "d", 0, &[1; 32]).await.unwrap(),
            (2, true)
        );
        assert_eq!(
            store.subjects_since("a", "d", 250, &[1; 32]).await.unwrap(),
            (1, false)
        );

        let approval = |who: &str, index| ApprovalRecord {
            request_id: "r1".into(),
            approver: who.into(),
            approved_at: "t".into(),
            ledger_index: index,
        };
        assert_eq!(
            store.add_approval(&approval("p_a", 8)).await.unwrap(),
            (1, RequestState::Pending)
        );
        let twice = store.add_approval(&approval("p_a", 9)).await.unwrap_err();
        assert!(matches!(twice, MetaError::AlreadyExists(_)));
        assert_eq!(
            store.add_approval(&approval("p_b", 10)).await.unwrap(),
            (2, RequestState::Approved)
        );
        assert_eq!(store.approvals("r1").await.unwrap().len(), 2);
        assert!(
            store
                .transition_request("r1", RequestState::Approved, RequestState::Fetched)
                .await
                .unwrap()
        );
        assert!(
            !store
                .transition_request("r1", RequestState::Approved, RequestState::Fetched)
                .await
                .unwrap()
        );

        let event = SubjectEvent {
            subject_commitment: [1; 32],
            ledger_index: 11,
            kind: SubjectEventKind::Disclosed,
            request_id: "r1".into(),
            agreement_id: "a".into(),
            agreement_version: 1,
            principal: "p_1".into(),
            org: "TIGTA".into(),
            purpose: "audit".into(),
            at: "t".into(),
            rows_released: 3,
            withheld: false,
        };
        store.insert_subject_event(&event).await.unwrap();
        assert_eq!(
            store.subject_events(&[1; 32]).await.unwrap(),
            vec![
                requested(&request("r1", 1, 100), 0),
                requested(&request("r2", 1, 200), 1),
                event.clone()
            ]
        );
        assert_eq!(store.subject_events(&[2; 32]).await.unwrap().len(), 1);
        assert!(store.subject_events(&[3; 32]).await.unwrap().is_empty());
        let usage = store.agreement_usage("a").await.unwrap();
        assert_eq!(
            (
                usage.requests,
                usage.pending,
                usage.fetched,
                usage.approvals,
                usage.distinct_subjects,
                usage.disclosures,
                usage.rows_released
            ),
            (3, 2, 1, 2, 2, 1, 3)
        );
        assert_eq!(store.agreement_usage("zz").await.unwrap().requests, 0);

        assert!(!store.subject_protected(&[1; 32]).await.unwrap());
        store
            .protect_subject(&[1; 32], b"x", "t", "p")
            .await
            .unwrap();
        store
            .protect_subject(&[1; 32], b"y", "t", "p")
            .await
            .unwrap();
        assert!(store.subject_protected(&[1; 32]).await.unwrap());
        assert_eq!(
            store.protected_subjects().await.unwrap(),
            vec![([1; 32], Some(b"x".to_vec()))]
        );
    }

    /// Two approvers of a request that needs both, approving at the same
    /// moment through different connections: the request ends approved.
    #[tokio::test]
    async fn concurrent_approvals_approve_the_request() {
        for catalogue in crate::testing::catalogues().await {
            let store = &catalogue.meta;
            for round in 0..20 {
                let id = format!("req_{round}");
                let r = request(&id, 2, 1);
                store
                    .insert_request(&r, &requested(&r, round * 10 + 1))
                    .await
                    .unwrap();
                let approval = |who: &str, index| ApprovalRecord {
                    request_id: id.clone(),
                    approver: who.into(),
                    approved_at: "t".into(),
                    ledger_index: index,
                };
                let (adam, anna) = (
                    approval("adam", round * 10 + 2),
                    approval("anna", round * 10 + 3),
                );
                let (one, two) = tokio::join!(store.add_approval(&adam), store.add_approval(&anna));
                let states = [one.unwrap().1, two.unwrap().1];
                assert!(
                    states.contains(&RequestState::Approved),
                    "{}: {states:?}",
                    catalogue.backend
                );
                let stored = store.request(&id).await.unwrap().unwrap();
                assert_eq!(
                    stored.state,
                    RequestState::Approved,
                    "{}",
                    catalogue.backend
                );
            }
        }
    }

    #[tokio::test]
    async fn every_backend_passes_the_request_suite() {
        for catalogue in crate::testing::catalogues().await {
            request_suite(&catalogue.meta).await;
        }
    }
}
