//! The `/v1` handlers: each authenticates, calls one broker action and
//! returns its result as JSON. Subject ids travel only in request bodies,
//! never in paths or query strings, so they never reach an access log.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use custos_broker::{AgreementStatus, LookupRequest};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::answers::{
    AgreementVersions, Applied, Health, IssuedPrincipal, ListedAgreement, Protected,
};
use crate::auth::Caller;
use crate::body::ApiJson;
use crate::problem::{Problem, ProblemKind};

type Reply = Result<Json<Value>, Problem>;

pub(crate) fn to_json(value: &impl serde::Serialize) -> Reply {
    serde_json::to_value(value)
        .map(Json)
        .map_err(|_| Problem::new(ProblemKind::Internal, "the answer could not be encoded"))
}

/// Liveness: the server answers and its ledger is open.
#[utoipa::path(get, path = "/healthz", tag = "public",
    responses((status = 200, description = "The server is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Datasets: names, sizes and schemas (never values).
#[utoipa::path(get, path = "/v1/datasets", tag = "datasets", security(("bearer" = [])),
    responses((status = 200, body = Vec<custos_broker::DatasetSummary>), (status = 401, body = Problem)))]
pub async fn datasets(State(state): State<Arc<AppState>>, Caller(actor): Caller) -> Reply {
    to_json(&state.custos.datasets(&actor).await?)
}

/// One dataset's summary and schema.
#[utoipa::path(get, path = "/v1/datasets/{name}", tag = "datasets", security(("bearer" = [])),
    params(("name" = String, Path, description = "Dataset name")),
    responses((status = 200, body = custos_broker::DatasetSummary), (status = 404, body = Problem)))]
pub async fn dataset(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(name): Path<String>,
) -> Reply {
    to_json(&state.custos.describe(&actor, &name).await?)
}

/// Checks every file of a dataset against the digests ledgered at its
/// ingest (admins and overseers; ledgered). `problem` names the file that
/// was altered, swapped, deleted or added; null when all are as ingested.
#[utoipa::path(post, path = "/v1/datasets/{name}/verify", tag = "datasets", security(("bearer" = [])),
    params(("name" = String, Path, description = "Dataset name")),
    responses((status = 200, body = custos_broker::DatasetCheck), (status = 403, body = Problem),
        (status = 404, body = Problem)))]
pub async fn verify_dataset(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(name): Path<String>,
) -> Reply {
    to_json(&state.custos.verify_dataset(&actor, &name).await?)
}

/// Agreements with their state.
#[utoipa::path(get, path = "/v1/agreements", tag = "agreements", security(("bearer" = [])),
    responses((status = 200, body = Vec<ListedAgreement>), (status = 401, body = Problem)))]
pub async fn agreements(State(state): State<Arc<AppState>>, Caller(actor): Caller) -> Reply {
    let list: Vec<ListedAgreement> = state
        .custos
        .agreements(&actor)
        .await?
        .into_iter()
        .map(|(agreement, status)| ListedAgreement { agreement, status })
        .collect();
    to_json(&list)
}

/// One agreement: every version and its state.
#[utoipa::path(get, path = "/v1/agreements/{id}", tag = "agreements", security(("bearer" = [])),
    params(("id" = String, Path, description = "Agreement id")),
    responses((status = 200, body = AgreementVersions), (status = 403, body = Problem)))]
pub async fn agreement(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Reply {
    let (versions, status) = state.custos.agreement(&actor, &id).await?;
    to_json(&AgreementVersions { versions, status })
}

/// An agreement to apply, as its TOML text (see docs/agreements.md).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyAgreement {
    /// The agreement's TOML text.
    pub toml: String,
}

/// Applies (creates or versions) an agreement. Needs `admin`.
#[utoipa::path(post, path = "/v1/agreements", tag = "agreements", security(("bearer" = [])),
    request_body = ApplyAgreement,
    responses((status = 201, body = Applied), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn apply_agreement(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<ApplyAgreement>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let (version, agreement) = state.custos.apply_agreement(&actor, &body.toml).await?;
    Ok((
        StatusCode::CREATED,
        to_json(&Applied { version, agreement })?,
    ))
}

/// Why an agreement's state changes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    /// The reason, for the ledger and the agreement's report.
    pub reason: Option<String>,
}

async fn set_status(
    state: &AppState,
    actor: &custos_broker::Actor,
    id: &str,
    to: AgreementStatus,
    reason: Option<&str>,
) -> Reply {
    to_json(
        &state
            .custos
            .set_agreement_status(actor, id, to, reason)
            .await?,
    )
}

/// Suspends an agreement (it grants nothing until resumed). Needs `admin`.
#[utoipa::path(post, path = "/v1/agreements/{id}/suspend", tag = "agreements", security(("bearer" = [])),
    params(("id" = String, Path, description = "Agreement id")), request_body = StatusChange,
    responses((status = 200, body = custos_broker::AgreementState), (status = 403, body = Problem)))]
pub async fn suspend_agreement(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<StatusChange>,
) -> Reply {
    set_status(
        &state,
        &actor,
        &id,
        AgreementStatus::Suspended,
        body.reason.as_deref(),
    )
    .await
}

/// Resumes a suspended agreement. Needs `admin`.
#[utoipa::path(post, path = "/v1/agreements/{id}/resume", tag = "agreements", security(("bearer" = [])),
    params(("id" = String, Path, description = "Agreement id")), request_body = StatusChange,
    responses((status = 200, body = custos_broker::AgreementState), (status = 403, body = Problem)))]
pub async fn resume_agreement(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<StatusChange>,
) -> Reply {
    set_status(
        &state,
        &actor,
        &id,
        AgreementStatus::Active,
        body.reason.as_deref(),
    )
    .await
}

/// Revokes an agreement for good. Needs `admin`.
#[utoipa::path(post, path = "/v1/agreements/{id}/revoke", tag = "agreements", security(("bearer" = [])),
    params(("id" = String, Path, description = "Agreement id")), request_body = StatusChange,
    responses((status = 200, body = custos_broker::AgreementState), (status = 403, body = Problem)))]
pub async fn revoke_agreement(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<StatusChange>,
) -> Reply {
    set_status(
        &state,
        &actor,
        &id,
        AgreementStatus::Revoked,
        body.reason.as_deref(),
    )
    .await
}

/// Principals (never their tokens). Needs `admin`.
#[utoipa::path(get, path = "/v1/principals", tag = "principals", security(("bearer" = [])),
    responses((status = 200, body = Vec<custos_model::Principal>), (status = 403, body = Problem)))]
pub async fn principals(State(state): State<Arc<AppState>>, Caller(actor): Caller) -> Reply {
    to_json(&state.custos.principals(&actor).await?)
}

/// A principal to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPrincipal {
    /// Unique name.
    pub name: String,
    /// Organisation.
    pub org: String,
    /// Roles: `admin`, `approver`, `requester`, `overseer`.
    pub roles: Vec<String>,
}

/// Creates a principal; its token is in the response, once. Needs `admin`.
#[utoipa::path(post, path = "/v1/principals", tag = "principals", security(("bearer" = [])),
    request_body = NewPrincipal,
    responses((status = 201, body = IssuedPrincipal), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn add_principal(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<NewPrincipal>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let roles = body
        .roles
        .iter()
        .map(|r| r.parse())
        .collect::<Result<Vec<custos_model::Role>, String>>()
        .map_err(|e| Problem::new(ProblemKind::Invalid, e))?;
    let (principal, token) = state
        .custos
        .add_principal(&actor, &body.name, &body.org, &roles)
        .await?;
    Ok((
        StatusCode::CREATED,
        to_json(&IssuedPrincipal {
            principal,
            token: token.reveal().to_owned(),
        })?,
    ))
}

/// Revokes a principal's token. Needs `admin`.
#[utoipa::path(post, path = "/v1/principals/{name}/revoke", tag = "principals", security(("bearer" = [])),
    params(("name" = String, Path, description = "Principal name")),
    responses((status = 200, body = custos_model::Principal), (status = 403, body = Problem)))]
pub async fn revoke_principal(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(name): Path<String>,
) -> Reply {
    to_json(&state.custos.revoke_principal(&actor, &name).await?)
}

/// An identified look-up request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLookup {
    /// The agreement it runs under.
    pub agreement: String,
    /// The dataset.
    pub dataset: String,
    /// The subject's id (e.g. a TIN). Sealed at rest, never logged.
    pub subject: String,
    /// Why this person's records are needed (at least 10 characters).
    pub justification: String,
    /// Columns wanted (default: every column the grant names).
    pub columns: Option<Vec<String>>,
}

/// Files a look-up request. It is decided and ledgered but reads no data;
/// it waits for approvals.
#[utoipa::path(post, path = "/v1/lookups", tag = "lookups", security(("bearer" = [])),
    request_body = NewLookup,
    responses((status = 201, body = custos_broker::LookupTicket), (status = 403, body = Problem)))]
pub async fn request_lookup(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<NewLookup>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let ticket = state
        .custos
        .request_lookup(
            &actor,
            LookupRequest {
                agreement: &body.agreement,
                dataset: &body.dataset,
                subject: &body.subject,
                justification: &body.justification,
                columns: body.columns.as_deref(),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, to_json(&ticket)?))
}

/// A look-up request with its subject and justification, for its
/// participants.
#[utoipa::path(get, path = "/v1/lookups/{id}", tag = "lookups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Request id")),
    responses((status = 200, body = custos_broker::LookupDetails), (status = 403, body = Problem)))]
pub async fn lookup(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Reply {
    to_json(&state.custos.lookup_details(&actor, &id).await?)
}

/// Approves a look-up (role `approver`, not the requester, once).
#[utoipa::path(post, path = "/v1/lookups/{id}/approvals", tag = "lookups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Request id")),
    responses((status = 200, body = custos_broker::LookupTicket), (status = 403, body = Problem)))]
pub async fn approve_lookup(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Reply {
    to_json(&state.custos.approve_lookup(&actor, &id).await?)
}

/// Why a look-up is declined.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclineBody {
    /// The reason (10 to 2,000 characters), shown to the requester; the
    /// ledger keeps only a keyed digest of it.
    pub reason: String,
}

/// Declines a pending look-up with a reason (same two-person rule as an
/// approval); it can then be neither approved nor fetched.
#[utoipa::path(post, path = "/v1/lookups/{id}/decline", tag = "lookups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Request id")), request_body = DeclineBody,
    responses((status = 200, body = custos_broker::LookupTicket), (status = 403, body = Problem)))]
pub async fn decline_lookup(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DeclineBody>,
) -> Reply {
    to_json(
        &state
            .custos
            .decline_lookup(&actor, &id, &body.reason)
            .await?,
    )
}

/// The caller's queue: pending look-ups they may judge, oldest first, with
/// purpose, legal authority and justification (each shown one ledgered).
#[utoipa::path(get, path = "/v1/approvals/queue", tag = "lookups", security(("bearer" = [])),
    responses((status = 200, body = Vec<custos_broker::QueueItem>), (status = 403, body = Problem)))]
pub async fn approval_queue(State(state): State<Arc<AppState>>, Caller(actor): Caller) -> Reply {
    to_json(&state.custos.approval_queue(&actor).await?)
}

/// Fetches an approved look-up's records, once, after the release is
/// ledgered.
#[utoipa::path(post, path = "/v1/lookups/{id}/fetch", tag = "lookups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Request id")),
    responses((status = 200, body = custos_broker::Released), (status = 403, body = Problem)))]
pub async fn fetch_lookup(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Reply {
    to_json(&state.custos.fetch_lookup(&actor, &id).await?)
}

/// A subject named in a body (never in a URL).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectBody {
    /// The subject's id.
    pub subject: String,
}

/// Protects a subject: look-ups of them are refused. Needs `admin`.
#[utoipa::path(post, path = "/v1/subjects/protect", tag = "subjects", security(("bearer" = [])),
    request_body = SubjectBody,
    responses((status = 200, body = Protected), (status = 403, body = Problem)))]
pub async fn protect_subject(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<SubjectBody>,
) -> Reply {
    state.custos.protect_subject(&actor, &body.subject).await?;
    to_json(&Protected { protected: true })
}

/// An aggregate question.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewQuery {
    /// The agreement it runs under.
    pub agreement: String,
    /// The SQL (see docs/aggregates.md).
    pub sql: String,
    /// ε or ρ to spend (default: the grant's per-query cap).
    pub spend: Option<f64>,
}

/// Answers an aggregate query with differential privacy; the spend is
/// charged and ledgered before anything is computed.
#[utoipa::path(post, path = "/v1/queries", tag = "queries", security(("bearer" = [])),
    request_body = NewQuery,
    responses((status = 200, body = custos_broker::AggregateAnswer), (status = 403, body = Problem)))]
pub async fn query(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<NewQuery>,
) -> Reply {
    to_json(
        &state
            .custos
            .query_aggregate(&actor, &body.agreement, &body.sql, body.spend)
            .await?,
    )
}

/// A subject's accounting of disclosures, every line proved in the ledger.
/// Needs `admin` or `overseer`.
#[utoipa::path(post, path = "/v1/reports/subject", tag = "reports", security(("bearer" = [])),
    request_body = SubjectBody,
    responses((status = 200, body = custos_broker::SubjectReport), (status = 403, body = Problem)))]
pub async fn subject_report(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<SubjectBody>,
) -> Reply {
    to_json(&state.custos.subject_report(&actor, &body.subject).await?)
}

/// An agreement's use. Needs `admin` or `overseer`.
#[utoipa::path(get, path = "/v1/reports/agreements/{id}", tag = "reports", security(("bearer" = [])),
    params(("id" = String, Path, description = "Agreement id")),
    responses((status = 200, body = custos_broker::AgreementReport), (status = 403, body = Problem)))]
pub async fn agreement_report(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Reply {
    to_json(&state.custos.agreement_report(&actor, &id).await?)
}
