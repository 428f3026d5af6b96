//! The answering side of private matching (`/v1/matches`), and the
//! requesting side's own job records. Points travel as
//! `application/octet-stream`: 32-byte encodings back to back, exactly as
//! many as announced; the server reads no more than that.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use custos_broker::{Actor, MatchOffer, MatchRequest};
use custos_policy::Reveal;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::answers::{Confirmed, MatchCount, MatchResult};
use crate::auth::Caller;
use crate::body::ApiJson;
use crate::problem::{Problem, ProblemKind};
use crate::routes::to_json;

/// The media type of point lists.
pub const POINTS: &str = "application/octet-stream";

/// A requesting side's offer (see `custos_broker::MatchOffer`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMatch {
    /// `m_` and 32 lowercase hex digits, fresh for the job.
    pub job_id: String,
    /// The agreement (both sides hold a copy under this id).
    pub agreement: String,
    /// What the requester's copy lets it learn: `matches` or `count`.
    pub reveal: String,
    /// How many points the requester will send.
    pub points: u64,
}

/// Opens a match job on this (answering) side: the caller's organisation
/// must be the requester of this side's copy of the agreement, which must
/// have an active `match` grant. A job id is accepted once.
#[utoipa::path(post, path = "/v1/matches", tag = "matches", security(("bearer" = [])),
    request_body = NewMatch,
    responses(
        (status = 200, description = "The job is open: the reveal that applies and this side's point count", body = custos_broker::MatchOpened),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem)))]
pub async fn open(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<NewMatch>,
) -> Result<Json<Value>, Problem> {
    let reveal = Reveal::parse(&body.reveal)
        .ok_or_else(|| Problem::new(ProblemKind::Invalid, "`reveal` is `matches` or `count`"))?;
    let offer = MatchOffer {
        job_id: body.job_id,
        agreement: body.agreement,
        reveal,
        points: body.points,
    };
    let opened = state.custos.open_match(&actor, &offer).await?;
    to_json(&opened)
}

/// Reads a point list of exactly the size the job expects.
async fn points(
    state: &AppState,
    actor: &Actor,
    job: &str,
    action: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<u8>, Problem> {
    let is_points = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(POINTS));
    if !is_points {
        return Err(Problem::new(
            ProblemKind::UnsupportedMediaType,
            format!("send the points as `Content-Type: {POINTS}`"),
        ));
    }
    let Some(expected) = state.custos.match_message_bytes(actor, job) else {
        // Not open (or not this caller's): the broker says so and ledgers it.
        return Ok(Vec::new());
    };
    match axum::body::to_bytes(body, expected).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(_) => Err(state
            .custos
            .refuse_long_match_message(actor, job, action)
            .await
            .into()),
    }
}

fn points_response(bytes: Vec<u8>) -> Response {
    let mut response = Body::from(bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(POINTS));
    response
}

/// Step 2: the requester's blinded points in; out come the same points
/// re-blinded (in the same order, or shuffled when only the count may be
/// revealed) followed by this side's own blinded points.
#[utoipa::path(post, path = "/v1/matches/{job}/points", tag = "matches", security(("bearer" = [])),
    params(("job" = String, Path, description = "Job id (`m_` and 32 hex digits)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Re-blinded points, then this side's points", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem)))]
pub async fn exchange(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(job): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let bytes = points(&state, &actor, &job, "match.exchange", &headers, body).await?;
    let reply = state.custos.exchange_match(&actor, &job, &bytes).await?;
    Ok(points_response(reply))
}

/// Step 3: this side's points re-blinded by the requester, shuffled; the
/// answer is the number of matches this side saw (and all it learns).
#[utoipa::path(post, path = "/v1/matches/{job}/finish", tag = "matches", security(("bearer" = [])),
    params(("job" = String, Path, description = "Job id")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "The count this side saw", body = MatchCount),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem)))]
pub async fn finish(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(job): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, Problem> {
    let bytes = points(&state, &actor, &job, "match.finish", &headers, body).await?;
    let count = state.custos.finish_match(&actor, &job, &bytes).await?;
    to_json(&MatchCount {
        job_id: job,
        matches: count,
    })
}

/// A match job recorded on this home, either side, with the matched tokens
/// for the principal who ran it, approvers and admins.
#[utoipa::path(get, path = "/v1/matches/{job}", tag = "matches", security(("bearer" = [])),
    params(("job" = String, Path, description = "Job id")),
    responses((status = 200, body = MatchResult), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn result(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(job): Path<String>,
) -> Result<Json<Value>, Problem> {
    let (job, tokens) = state.custos.match_result(&actor, &job).await?;
    to_json(&MatchResult { job, tokens })
}

/// Confirms an unverified result (role `approver`, not the principal who
/// ran the job). Until then no adverse action may rest on it.
#[utoipa::path(post, path = "/v1/matches/{job}/confirm", tag = "matches", security(("bearer" = [])),
    params(("job" = String, Path, description = "Job id")),
    responses((status = 200, body = Confirmed), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn confirm(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(job): Path<String>,
) -> Result<Json<Value>, Problem> {
    let job = state.custos.confirm_match(&actor, &job).await?;
    to_json(&Confirmed { job })
}

/// A match for this (requesting) side to run against a peer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMatchRun {
    /// The agreement (the peer holds a copy with the same id).
    pub agreement: String,
    /// This side's dataset.
    pub dataset: String,
    /// The key column (`subject_id` or an `identifier`).
    pub key: String,
    /// The peer Custos's URL (https://, or http:// on this machine).
    pub peer: String,
    /// The token the peer issued to the caller's organisation; used for
    /// this job only, never stored or logged.
    pub peer_token: String,
}

impl std::fmt::Debug for NewMatchRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewMatchRun({}, {})", self.agreement, self.peer)
    }
}

/// Runs a match from this side against a peer Custos (decided here first:
/// nothing is sent to the peer unless this side's agreement allows the
/// job). The answer is the unverified result.
#[utoipa::path(post, path = "/v1/match-runs", tag = "matches", security(("bearer" = [])),
    request_body = NewMatchRun,
    responses((status = 200, body = custos_broker::MatchReport), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)))]
pub async fn run(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<NewMatchRun>,
) -> Result<Json<Value>, Problem> {
    let peer = crate::HttpPeer::new(&body.peer, zeroize::Zeroizing::new(body.peer_token))
        .map_err(|e| Problem::new(ProblemKind::Invalid, e))?;
    let report = state
        .custos
        .run_match(
            &actor,
            MatchRequest {
                agreement: &body.agreement,
                dataset: &body.dataset,
                key: &body.key,
            },
            &peer,
        )
        .await?;
    to_json(&report)
}
