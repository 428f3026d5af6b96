//! The page frame (navigation by role), the home page, signing in and
//! out, and errors as pages.

use std::sync::Arc;

use axum::Form;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use custos_broker::BrokerError;
use custos_model::Role;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::{Viewer, assets, session};
use crate::AppState;
use crate::problem::Problem;

/// htmx settings: same-origin requests only, no eval or script tags from
/// answers, no inline indicator styles (the CSP forbids them), and error
/// answers swapped in like any other so their message shows.
const HTMX_CONFIG: &str = r#"{"selfRequestsOnly":true,"allowEval":false,"allowScriptTags":false,"includeIndicatorStyles":false,"historyCacheSize":0,"responseHandling":[{"code":"204","swap":false},{"code":"...","swap":true}]}"#;

/// The navigation: (path, label, roles that see it; empty = everyone).
const NAV: &[(&str, &str, &[Role])] = &[
    ("/console", "Home", &[]),
    ("/console/queue", "Approval queue", &[Role::Approver]),
    ("/console/decisions", "My decisions", &[Role::Approver]),
    ("/console/mine", "My requests", &[Role::Requester]),
    ("/console/query", "Query", &[Role::Requester]),
    ("/console/agreements", "Agreements", &[]),
    ("/console/alerts", "Alerts", &[Role::Overseer]),
    ("/console/ledger", "Ledger", &[Role::Overseer, Role::Admin]),
    (
        "/console/subject",
        "Subject accounting",
        &[Role::Overseer, Role::Admin],
    ),
    ("/console/principals", "Principals", &[Role::Admin]),
];

/// A full page (or, for htmx, just `body`) with status 200.
pub(crate) fn page(viewer: &Viewer, title: &str, current: &str, body: Markup) -> Response {
    if viewer.partial {
        return Html(body.into_string()).into_response();
    }
    Html(frame(Some(viewer), title, current, body).into_string()).into_response()
}

/// The frame around every page. `title` never holds personal data.
pub(crate) fn frame(viewer: Option<&Viewer>, title: &str, current: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                meta name="htmx-config" content=(HTMX_CONFIG);
                title { (title) " · Custos" }
                link rel="stylesheet" href=(assets::url("console.css"));
                script src=(assets::url("htmx.js")) defer {}
            }
            body hx-boost="false" {
                header.top {
                    a.brand href="/console" { "Custos" }
                    @if let Some(v) = viewer {
                        nav aria-label="Main" {
                            @for (path, label, roles) in NAV {
                                @if roles.is_empty() || v.holds_any(roles) {
                                    a href=(path) aria-current=[(*path == current).then_some("page")] { (label) }
                                }
                            }
                        }
                        span.who {
                            (v.name())
                            @let roles = v.roles();
                            @if !roles.is_empty() {
                                " (" (roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")) ")"
                            }
                        }
                        form method="post" action="/console/sign-out" {
                            (csrf_field(v))
                            button.secondary type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub(crate) fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf.as_str()); }
}

/// An error as a page (or a fragment for htmx) with `status`.
pub(crate) fn error_page(viewer: Option<&Viewer>, status: StatusCode, detail: &str) -> Response {
    let body = html! {
        div.notice.bad role="alert" {
            strong { (status.canonical_reason().unwrap_or("Error")) } ": " (detail)
        }
    };
    let markup = match viewer {
        Some(v) if v.partial => body,
        _ => frame(
            viewer,
            status.canonical_reason().unwrap_or("Error"),
            "",
            body,
        ),
    };
    (status, Html(markup.into_string())).into_response()
}

/// A broker refusal or failure as a page, with the API's status and the
/// same detail (internal details are logged, never shown).
pub(crate) fn broker_error(viewer: Option<&Viewer>, e: BrokerError) -> Response {
    let problem = Problem::from(e);
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_page(viewer, status, &problem.detail)
}

/// Unknown console paths.
pub(crate) async fn not_found() -> Response {
    error_page(None, StatusCode::NOT_FOUND, "no such page in the console")
}

/// The home page: what each of the viewer's roles can do here.
pub(crate) async fn home(viewer: Viewer) -> Response {
    let roles = viewer.roles();
    let body = html! {
        h1 { "Welcome, " (viewer.name()) }
        @if roles.contains(&Role::Approver) {
            section.card {
                h2 { a href="/console/queue" { "Approval queue" } }
                p { "Identified look-ups waiting for a second person: approve them, or decline with a reason. Every decision is ledgered." }
            }
        }
        @if roles.contains(&Role::Requester) {
            section.card {
                h2 { a href="/console/mine" { "My requests and budgets" } }
                p { "Your agreements, what remains of their privacy budgets, and where your look-ups stand. " a href="/console/query" { "Ask an aggregate question" } " under a budget." }
            }
        }
        @if roles.contains(&Role::Overseer) || roles.contains(&Role::Admin) {
            section.card {
                h2 { a href="/console/ledger" { "Ledger explorer" } }
                p { "Every request and decision, allowed or denied, with its inclusion proof against the signed checkpoint." }
                h2 { a href="/console/subject" { "Subject accounting" } }
                p { "Who saw a person's records, when and under which agreement." }
            }
        }
        @if roles.contains(&Role::Admin) {
            section.card {
                h2 { a href="/console/principals" { "Principals" } }
                p { "Add people and services, issue tokens, revoke them." }
            }
        }
        section.card {
            h2 { a href="/console/agreements" { "Agreements" } }
            p { "The data-sharing agreements you may see: terms, state, expiry and use." }
        }
    };
    page(&viewer, "Home", "/console", body)
}

/// Why the sign-in page is shown (from a redirect; never personal).
#[derive(Debug, Deserialize)]
pub(crate) struct SignInQuery {
    why: Option<String>,
}

fn sign_in_markup(notice: Option<&str>) -> Markup {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(text) = notice {
            div.notice role="status" { (text) }
        }
        section.card {
            form.stack method="post" action="/console/sign-in" autocomplete="off" {
                label {
                    "API token"
                    input type="password" name="token" required autocomplete="off" spellcheck="false"
                        placeholder="custos_…";
                }
                button type="submit" { "Sign in" }
            }
            p.muted { "Use the token `custos principal add` printed for you. It stays on the server; your browser keeps only a session cookie, which ends when you sign out, after 30 minutes idle, after 8 hours, or when the token is revoked." }
        }
    };
    frame(None, "Sign in", "", body)
}

/// The sign-in form.
pub(crate) async fn sign_in_page(Query(q): Query<SignInQuery>) -> Response {
    let notice = match q.why.as_deref() {
        Some("expired") => Some("Your session ended; sign in again."),
        Some("revoked") => Some("Your token was revoked, so your session ended."),
        Some("signed-out") => Some("Sign in to use the console."),
        Some("bye") => Some("You are signed out."),
        _ => None,
    };
    Html(sign_in_markup(notice).into_string()).into_response()
}

/// The sign-in form's fields.
#[derive(Deserialize)]
pub(crate) struct SignInForm {
    #[serde(deserialize_with = "secret")]
    token: zeroize::Zeroizing<String>,
}

/// A form field that is wiped from memory when dropped (tokens, subject ids).
pub(crate) fn secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<zeroize::Zeroizing<String>, D::Error> {
    String::deserialize(d).map(zeroize::Zeroizing::new)
}

/// Whether a request that changes state comes from this origin. Browsers
/// send `Sec-Fetch-Site` on every request (even when, as here, the page
/// sends no referrer and so `Origin: null`): it must say `same-origin`.
/// A client without it (a script, an old browser) must send no `Origin`
/// or this host's. This stops sign-in CSRF; forms of a session also carry
/// a CSRF token.
pub(crate) fn same_origin(headers: &HeaderMap, secure: bool) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let scheme = if secure { "https" } else { "http" };
    origin.eq_ignore_ascii_case(&format!("{scheme}://{host}"))
}

/// Exchanges a token for a session cookie.
pub(crate) async fn sign_in(
    State(state): State<Arc<AppState>>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if !same_origin(&headers, state.secure_cookies) {
        return error_page(
            None,
            StatusCode::FORBIDDEN,
            "sign-in from another site is refused",
        );
    }
    let address = extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if let Err(problem) = state.limiter.check_address(address) {
        return error_page(None, StatusCode::TOO_MANY_REQUESTS, &problem.detail);
    }
    let token = form.token.trim();
    if token.is_empty() || token.len() > 256 {
        let markup = sign_in_markup(Some("That is not a Custos token."));
        return (StatusCode::UNAUTHORIZED, Html(markup.into_string())).into_response();
    }
    let principal = match state.custos.authenticate(token).await {
        Ok(actor) => actor.id().to_owned(),
        Err(BrokerError::Auth(_)) => {
            state.limiter.note_failure(address);
            let markup = sign_in_markup(Some(
                "The token was not accepted (unknown, mistyped or revoked).",
            ));
            return (StatusCode::UNAUTHORIZED, Html(markup.into_string())).into_response();
        }
        Err(e) => return broker_error(None, e),
    };
    // Signing in counts against the principal's rate limit like a request.
    if let Err(problem) = state.limiter.admit(&principal) {
        return error_page(None, StatusCode::TOO_MANY_REQUESTS, &problem.detail);
    }
    let Ok(id) = state.sessions.start(&principal, token) else {
        return error_page(
            None,
            StatusCode::SERVICE_UNAVAILABLE,
            "no randomness for a session id",
        );
    };
    let cookie = cookie::Cookie::build((session::COOKIE, id.as_str()))
        .path("/console")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(state.secure_cookies)
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(session::LIFETIME.as_secs()).unwrap_or(i64::MAX),
        ))
        .build();
    let mut response = Redirect::to("/console").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// The sign-out form's fields.
#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// Ends the session and clears the cookie.
pub(crate) async fn sign_out(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(r) = viewer.check_csrf(&form.csrf) {
        return r;
    }
    if let Some(id) = super::session_cookie(&headers) {
        state.sessions.end(&id);
    }
    let gone = cookie::Cookie::build((session::COOKIE, ""))
        .path("/console")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::ZERO)
        .build();
    let mut response = Redirect::to("/console/sign-in?why=bye").into_response();
    if let Ok(v) = HeaderValue::from_str(&gone.to_string()) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// A short "n ago" for RFC 3339 times (or the time itself if unparsable).
pub(crate) fn age(rfc3339: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(rfc3339) {
        Ok(t) => {
            let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                .num_seconds()
                .max(0);
            match secs {
                s if s < 60 => format!("{s}s"),
                s if s < 3600 => format!("{}m", s / 60),
                s if s < 86_400 => format!("{}h", s / 3600),
                s => format!("{}d", s / 86_400),
            }
        }
        Err(_) => rfc3339.to_owned(),
    }
}

/// Microseconds since the epoch as a UTC time for a table.
pub(crate) fn when(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).map_or_else(
        || micros.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}
