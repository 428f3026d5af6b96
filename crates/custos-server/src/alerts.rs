//! `/v1` handlers of unusual-browsing detection (docs/browsing.md): a
//! principal's own facts (admins; never read back), and alerts (overseers).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use custos_broker::{AlertState, PrincipalFacts};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::body::ApiJson;
use crate::problem::Problem;
use crate::routes::to_json;

type Reply = Result<Json<Value>, Problem>;

/// Sets (replaces) a principal's own identifying facts, which the rules
/// compare every subject they look up with. Needs `admin`. The facts are
/// sealed and never shown back; the ledger records which kinds were set.
#[utoipa::path(put, path = "/v1/principals/{name}/facts", tag = "alerts", security(("bearer" = [])),
    params(("name" = String, Path, description = "Principal name")),
    request_body = custos_broker::PrincipalFacts,
    responses((status = 200, body = custos_broker::FactsSet), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn set_facts(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(name): Path<String>,
    ApiJson(facts): ApiJson<PrincipalFacts>,
) -> Reply {
    to_json(
        &state
            .custos
            .set_principal_facts(&actor, &name, &facts)
            .await?,
    )
}

/// Which alerts to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AlertFilter {
    /// `open` (default), `resolved` or `all`.
    pub state: Option<String>,
    /// Where the page starts (default 0).
    pub offset: Option<u64>,
}

/// Alerts, highest score first, then newest, 200 a page, with the total.
/// Needs `overseer`.
#[utoipa::path(get, path = "/v1/alerts", tag = "alerts", security(("bearer" = [])),
    params(AlertFilter),
    responses((status = 200, body = custos_broker::AlertPage), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Query(filter): Query<AlertFilter>,
) -> Reply {
    let state_filter = match filter.state.as_deref() {
        None | Some("open") => Some(AlertState::Open),
        Some("resolved") => Some(AlertState::Resolved),
        Some("all") => None,
        Some(_) => {
            return Err(Problem::new(
                crate::problem::ProblemKind::Invalid,
                "`state` must be open, resolved or all",
            ));
        }
    };
    to_json(
        &state
            .custos
            .alerts(&actor, state_filter, filter.offset.unwrap_or(0))
            .await?,
    )
}

/// One alert, with its resolution. Needs `overseer`.
#[utoipa::path(get, path = "/v1/alerts/{id}", tag = "alerts", security(("bearer" = [])),
    params(("id" = String, Path, description = "Alert id")),
    responses((status = 200, body = custos_broker::Alert), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn show(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Reply {
    to_json(&state.custos.alert(&actor, &id).await?)
}

/// How an alert was resolved.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolution {
    /// What was found (10 to 4,000 characters); sealed, the ledger keeps a
    /// keyed digest.
    pub reason: String,
}

/// Resolves an open alert with a reason (ledgered). Needs `overseer`, not
/// the alert's own principal.
#[utoipa::path(post, path = "/v1/alerts/{id}/resolve", tag = "alerts", security(("bearer" = [])),
    params(("id" = String, Path, description = "Alert id")), request_body = Resolution,
    responses((status = 200, body = custos_broker::Alert), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn resolve(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Resolution>,
) -> Reply {
    to_json(
        &state
            .custos
            .resolve_alert(&actor, &id, &body.reason)
            .await?,
    )
}

/// Runs detection now (the server also runs it every second, and the peer
/// comparison every ten minutes). Needs `overseer`.
#[utoipa::path(post, path = "/v1/alerts/scan", tag = "alerts", security(("bearer" = [])),
    responses((status = 200, body = custos_broker::DetectionRun), (status = 403, body = Problem)))]
pub async fn scan(State(state): State<Arc<AppState>>, Caller(actor): Caller) -> Reply {
    to_json(&state.custos.run_detection(&actor).await?)
}
