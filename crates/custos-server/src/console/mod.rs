//! The web console at `/console`: approvers, overseers, requesters and
//! admins at a browser, through the same broker calls as the API.
//!
//! - `session`: a token exchanged for an HttpOnly cookie; CSRF per session.
//! - `assets`: CSS and htmx, embedded, under content-hashed names.
//! - `layout`: the page frame, navigation by role, errors as pages.
//! - `charts`: server-rendered SVG.
//! - `approver`, `overseer`, `alerts`, `ledger`, `requester`, `admin`: the pages.
//!
//! Every page is server-rendered HTML that reads without JavaScript; htmx
//! (same-origin only, no eval) makes forms update in place. Pages carry a
//! strict Content-Security-Policy (no inline script or style), are never
//! cached, and send no referrer. Nothing personal travels in a URL: a
//! subject id goes in a POST body and is not echoed back, and the access
//! log names route templates only.

mod admin;
mod alerts;
mod approver;
mod assets;
mod charts;
mod layout;
mod ledger;
mod overseer;
mod requester;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use custos_broker::Actor;
use custos_model::Role;
use zeroize::Zeroizing;

use crate::AppState;
pub(crate) use session::Sessions;

/// The policy every console response carries: only this origin's
/// scripts, styles and images; no inline code, frames, plugins or foreign
/// form targets.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes (nested at `/console` by the server).
pub(crate) fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(layout::home))
        .route("/sign-in", get(layout::sign_in_page).post(layout::sign_in))
        .route("/sign-out", post(layout::sign_out))
        .route("/assets/{name}", get(assets::serve))
        .route("/queue", get(approver::queue))
        .route("/decisions", get(approver::decisions))
        .route("/requests/{id}", get(approver::request))
        .route("/requests/{id}/approve", post(approver::approve))
        .route("/requests/{id}/decline", post(approver::decline))
        .route("/matches/{job}/confirm", post(approver::confirm_match))
        .route("/alerts", get(alerts::list))
        .route("/alerts/{id}", get(alerts::show))
        .route("/alerts/{id}/resolve", post(alerts::resolve))
        .route("/ledger", get(ledger::explorer))
        .route("/ledger/{index}", get(ledger::entry))
        .route(
            "/subject",
            get(overseer::subject_form).post(overseer::subject_report),
        )
        .route("/agreements", get(overseer::agreements))
        .route("/agreements/{id}", get(overseer::agreement))
        .route("/mine", get(requester::mine))
        .route(
            "/query",
            get(requester::query_form_get).post(requester::query),
        )
        .route(
            "/principals",
            get(admin::principals).post(admin::add_principal),
        )
        .route("/principals/{name}/revoke", post(admin::revoke_principal))
        .route(
            "/agreements-apply",
            post(admin::apply_agreement).layer(axum::extract::DefaultBodyLimit::max(
                admin::MAX_AGREEMENT_BYTES + 16 * 1024,
            )),
        )
        .route("/agreements/{id}/state", post(admin::set_state))
        .fallback(layout::not_found)
        .layer(axum::middleware::from_fn_with_state(state, harden))
}

/// Headers on every console response: CSP, no caching of pages (assets
/// set their own), no referrer, no framing, no sniffing.
async fn harden(State(_): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A signed-in person: their actor (authenticated again on this request)
/// and their session's CSRF token.
pub(crate) struct Viewer {
    pub(crate) actor: Actor,
    pub(crate) csrf: Zeroizing<String>,
    /// Whether the request came from htmx (answer with a fragment).
    pub(crate) partial: bool,
    /// Whether the request came from this console's own pages.
    pub(crate) same_origin: bool,
}

impl Viewer {
    /// The viewer's name (their principal's, else the actor id).
    pub(crate) fn name(&self) -> &str {
        self.actor
            .principal()
            .map_or_else(|| self.actor.id(), |p| p.name.as_str())
    }

    /// The viewer's roles (none for the bootstrap console).
    pub(crate) fn roles(&self) -> Vec<Role> {
        self.actor
            .principal()
            .map(|p| p.roles.clone())
            .unwrap_or_default()
    }

    /// Whether the viewer holds any of `roles`.
    pub(crate) fn holds_any(&self, roles: &[Role]) -> bool {
        self.roles().iter().any(|r| roles.contains(r))
    }

    /// The refusal (403, as a page) of a viewer who holds none of `roles`;
    /// None if they hold one.
    pub(crate) fn require(&self, roles: &[Role]) -> Option<Response> {
        if self.holds_any(roles) {
            return None;
        }
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Some(layout::error_page(
            Some(self),
            StatusCode::FORBIDDEN,
            &format!(
                "this page is for the {} role{}",
                names.join(" or "),
                if names.len() > 1 { "s" } else { "" }
            ),
        ))
    }

    /// The refusal (403) of a form whose CSRF token is not this session's,
    /// or that another site's page sent; None if it may act.
    pub(crate) fn check_csrf(&self, submitted: &str) -> Option<Response> {
        if self.same_origin && session::csrf_matches(&self.csrf, submitted) {
            return None;
        }
        Some(layout::error_page(
            Some(self),
            StatusCode::FORBIDDEN,
            "the form's security token is missing or stale; reload the page and try again",
        ))
    }
}

/// Principal ids to display names (`rita (TIGTA)`), from the broker's
/// directory; an unknown id (or a failed lookup) shows as itself.
pub(crate) struct Names(std::collections::HashMap<String, String>);

impl Names {
    /// The directory as `viewer` may read it.
    pub(crate) async fn load(state: &AppState, viewer: &Viewer) -> Self {
        Self(
            state
                .custos
                .directory(&viewer.actor)
                .await
                .unwrap_or_default(),
        )
    }

    /// The display name of principal `id`.
    pub(crate) fn of<'a>(&'a self, id: &'a str) -> &'a str {
        self.0.get(id).map_or(id, String::as_str)
    }

    /// The id of the principal called `name` (or with that id).
    pub(crate) fn id_of(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(id, shown)| {
                id.as_str() == name
                    || shown.as_str() == name
                    || shown.split(" (").next() == Some(name)
            })
            .map(|(id, _)| id.as_str())
    }
}

/// The session id from the request's cookie, if any.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == session::COOKIE)
        .map(|c| c.value().to_owned())
}

fn is_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

/// To the sign-in page: a redirect, or for htmx an `HX-Redirect`.
fn to_sign_in(partial: bool, why: &str) -> Response {
    let target = format!("/console/sign-in?why={why}");
    if partial {
        let mut r = StatusCode::OK.into_response();
        if let Ok(v) = HeaderValue::from_str(&target) {
            r.headers_mut().insert("hx-redirect", v);
        }
        return r;
    }
    Redirect::to(&target).into_response()
}

impl FromRequestParts<Arc<AppState>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let partial = is_htmx(&parts.headers);
        let Some(id) = session_cookie(&parts.headers) else {
            return Err(to_sign_in(partial, "signed-out"));
        };
        let Some(signed) = state.sessions.get(&id) else {
            return Err(to_sign_in(partial, "expired"));
        };
        let actor = match state.custos.authenticate(&signed.token).await {
            Ok(actor) => actor,
            Err(custos_broker::BrokerError::Auth(_)) => {
                // The token was revoked: its sessions end with it.
                state.sessions.end(&id);
                return Err(to_sign_in(partial, "revoked"));
            }
            Err(e) => return Err(layout::broker_error(None, e)),
        };
        if let Err(problem) = state.limiter.admit(actor.id()) {
            return Err(layout::error_page(
                None,
                StatusCode::TOO_MANY_REQUESTS,
                &problem.detail,
            ));
        }
        Ok(Self {
            actor,
            csrf: signed.csrf,
            partial,
            same_origin: layout::same_origin(&parts.headers, state.secure_cookies),
        })
    }
}
