//! Admins' pages: principals (add, with the token shown once; revoke) and
//! agreements (apply from a file, suspend, resume, revoke).

use std::sync::Arc;

use axum::Form;
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use custos_model::{AgreementStatus, Role};
use maud::{Markup, html};
use serde::Deserialize;

use super::Viewer;
use super::layout::{broker_error, csrf_field, error_page, page};
use crate::AppState;

/// Largest agreement file accepted from the form.
pub(crate) const MAX_AGREEMENT_BYTES: usize = 256 * 1024;

fn add_form(viewer: &Viewer) -> Markup {
    html! {
        section.card {
            h2 { "Add a principal" }
            form.stack method="post" action="/console/principals" autocomplete="off" {
                (csrf_field(viewer))
                label { "Name" input type="text" name="name" required maxlength="64" pattern="[a-z0-9][a-z0-9._-]*"; }
                label { "Organisation" input type="text" name="org" required maxlength="128"; }
                fieldset {
                    legend { "Roles" }
                    @for role in Role::ALL {
                        label { input type="checkbox" name="roles" value=(role.as_str()); (role.as_str()) }
                    }
                }
                button type="submit" { "Add and issue a token" }
            }
        }
    }
}

async fn principals_page(state: &AppState, viewer: &Viewer, notice: Option<Markup>) -> Response {
    if let Some(r) = viewer.require(&[Role::Admin]) {
        return r;
    }
    let all = match state.custos.principals(&viewer.actor).await {
        Ok(p) => p,
        Err(e) => return broker_error(Some(viewer), e),
    };
    let body = html! {
        h1 { "Principals" }
        @if let Some(n) = notice { (n) }
        section.card {
            table {
                thead { tr { th { "Name" } th { "Organisation" } th { "Roles" } th.wide { "Added" } th { "Token" } } }
                tbody {
                    @for p in &all {
                        tr {
                            td { (p.name) }
                            td { (p.org) }
                            td { (p.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")) }
                            td.wide { (p.created_at) " by " (p.created_by) }
                            td {
                                @if let Some(at) = &p.revoked_at { span.deny { "revoked " (at) } }
                                @else {
                                    form.inline method="post" action=(format!("/console/principals/{}/revoke", p.name)) {
                                        (csrf_field(viewer))
                                        button.danger type="submit" hx-confirm=(format!("Revoke {}'s token? Their sessions end at once.", p.name)) { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        (add_form(viewer))
    };
    page(viewer, "Principals", "/console/principals", body)
}

/// Every principal, and the form to add one.
pub(crate) async fn principals(State(state): State<Arc<AppState>>, viewer: Viewer) -> Response {
    principals_page(&state, &viewer, None).await
}

/// The new principal's fields (`roles` repeats).
#[derive(Deserialize)]
pub(crate) struct NewPrincipalForm {
    #[serde(default)]
    csrf: String,
    name: String,
    org: String,
}

/// Adds a principal and shows its token once.
pub(crate) async fn add_principal(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = viewer.require(&[Role::Admin]) {
        return r;
    }
    // `roles` repeats, which a struct cannot hold: read the pairs.
    let pairs: Vec<(String, String)> = match serde_urlencoded::from_bytes(&body) {
        Ok(p) => p,
        Err(_) => {
            return error_page(
                Some(&viewer),
                StatusCode::BAD_REQUEST,
                "the form could not be read",
            );
        }
    };
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let form = NewPrincipalForm {
        csrf: field("csrf"),
        name: field("name"),
        org: field("org"),
    };
    if let Some(r) = viewer.check_csrf(&form.csrf) {
        return r;
    }
    let roles: Result<Vec<Role>, String> = pairs
        .iter()
        .filter(|(k, _)| k == "roles")
        .map(|(_, v)| v.parse())
        .collect();
    let roles = match roles {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => {
            return error_page(
                Some(&viewer),
                StatusCode::BAD_REQUEST,
                "choose at least one role",
            );
        }
        Err(e) => return error_page(Some(&viewer), StatusCode::BAD_REQUEST, &e),
    };
    match state
        .custos
        .add_principal(&viewer.actor, &form.name, &form.org, &roles)
        .await
    {
        Ok((p, token)) => {
            let notice = html! {
                div.notice.good role="status" {
                    "Added " strong { (p.name) } ". Their token, shown this once (only its hash is kept):"
                    pre.mono { (token.reveal()) }
                }
            };
            principals_page(&state, &viewer, Some(notice)).await
        }
        Err(e) => broker_error(Some(&viewer), e),
    }
}

/// A form that carries only its CSRF token.
#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    to: String,
}

/// Revokes a principal's token.
pub(crate) async fn revoke_principal(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(r) = viewer.require(&[Role::Admin]) {
        return r;
    }
    if let Some(r) = viewer.check_csrf(&form.csrf) {
        return r;
    }
    match state.custos.revoke_principal(&viewer.actor, &name).await {
        Ok(p) => {
            let notice =
                html! { div.notice.good role="status" { "Revoked " (p.name) "'s token." } };
            principals_page(&state, &viewer, Some(notice)).await
        }
        Err(e) => broker_error(Some(&viewer), e),
    }
}

/// The form to apply an agreement from a TOML file (admins).
pub(crate) fn apply_form(viewer: &Viewer) -> Markup {
    html! {
        section.card {
            h2 { "Apply an agreement" }
            form.stack method="post" action="/console/agreements-apply" enctype="multipart/form-data" {
                (csrf_field(viewer))
                label { "Agreement file (TOML, see docs/agreements.md)" input type="file" name="file" accept=".toml,text/plain" required; }
                button type="submit" { "Validate and apply" }
            }
        }
    }
}

/// Applies an agreement uploaded as a file; it is validated and ledgered
/// by the broker like `custos agreement apply`.
pub(crate) async fn apply_agreement(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    mut multipart: Multipart,
) -> Response {
    if let Some(r) = viewer.require(&[Role::Admin]) {
        return r;
    }
    let mut csrf = String::new();
    let mut toml = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return error_page(
                    Some(&viewer),
                    StatusCode::BAD_REQUEST,
                    &format!("the upload could not be read: {e}"),
                );
            }
        };
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return error_page(
                    Some(&viewer),
                    StatusCode::BAD_REQUEST,
                    &format!("the upload could not be read: {e}"),
                );
            }
        };
        match name.as_str() {
            "csrf" => csrf = String::from_utf8_lossy(&bytes).into_owned(),
            "file" if bytes.len() > MAX_AGREEMENT_BYTES => {
                return error_page(
                    Some(&viewer),
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the agreement file is larger than 256 KiB",
                );
            }
            "file" => match String::from_utf8(bytes.to_vec()) {
                Ok(text) => toml = Some(text),
                Err(_) => {
                    return error_page(
                        Some(&viewer),
                        StatusCode::BAD_REQUEST,
                        "the agreement file is not UTF-8 text",
                    );
                }
            },
            _ => {}
        }
    }
    if let Some(r) = viewer.check_csrf(&csrf) {
        return r;
    }
    let Some(toml) = toml else {
        return error_page(
            Some(&viewer),
            StatusCode::BAD_REQUEST,
            "choose an agreement file",
        );
    };
    match state.custos.apply_agreement(&viewer.actor, &toml).await {
        Ok((version, _)) => {
            let body = html! {
                div.notice.good role="status" {
                    "Applied " a href=(format!("/console/agreements/{}", version.id)) { (version.id) } " version " (version.version) "."
                }
            };
            page(&viewer, "Agreement applied", "/console/agreements", body)
        }
        Err(e) => broker_error(Some(&viewer), e),
    }
}

/// Suspend, resume and revoke buttons for an agreement in state `now`.
pub(crate) fn state_forms(viewer: &Viewer, id: &str, now: AgreementStatus) -> Markup {
    let moves: &[(&str, &str)] = match now {
        AgreementStatus::Active => &[("suspended", "Suspend"), ("revoked", "Revoke")],
        AgreementStatus::Suspended => &[("active", "Resume"), ("revoked", "Revoke")],
        AgreementStatus::Revoked => &[],
    };
    html! {
        @if !moves.is_empty() {
            form.stack method="post" action=(format!("/console/agreements/{id}/state")) {
                (csrf_field(viewer))
                label { "Reason (ledgered)" input type="text" name="reason" maxlength="500"; }
                div {
                    @for (to, label) in moves {
                        button class=(if *to == "revoked" { "danger" } else { "secondary" }) type="submit" name="to" value=(to) { (label) } " "
                    }
                }
            }
        }
    }
}

/// Changes an agreement's state.
pub(crate) async fn set_state(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(r) = viewer.require(&[Role::Admin]) {
        return r;
    }
    if let Some(r) = viewer.check_csrf(&form.csrf) {
        return r;
    }
    let to = match form.to.as_str() {
        "active" => AgreementStatus::Active,
        "suspended" => AgreementStatus::Suspended,
        "revoked" => AgreementStatus::Revoked,
        _ => return error_page(Some(&viewer), StatusCode::BAD_REQUEST, "unknown state"),
    };
    let reason = Some(form.reason.trim()).filter(|r| !r.is_empty());
    match state
        .custos
        .set_agreement_status(&viewer.actor, &id, to, reason)
        .await
    {
        Ok(s) => {
            let body = html! {
                div.notice.good role="status" {
                    "Agreement " a href=(format!("/console/agreements/{id}")) { (id) } " is now " (s.state) "."
                }
            };
            page(&viewer, "Agreement state", "/console/agreements", body)
        }
        Err(e) => broker_error(Some(&viewer), e),
    }
}
