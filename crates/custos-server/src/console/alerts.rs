//! Overseers' alerts page: unusual-browsing alerts, highest score first,
//! each with the rules that fired, the ledger entries it rests on, and a
//! form to resolve it with what was found (docs/browsing.md).

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use custos_broker::{Alert, AlertState};
use custos_model::Role;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{broker_error, csrf_field, page};
use super::{Names, Viewer};
use crate::AppState;

/// Which alerts the list shows.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    /// `open` (default), `resolved` or `all`.
    state: Option<String>,
    /// Where the page starts.
    offset: Option<u64>,
}

fn state_badge(a: &Alert) -> Markup {
    match a.state {
        AlertState::Open => html! { span.deny { "open" } },
        AlertState::Resolved => html! { span.allow { "resolved" } },
    }
}

fn entries(a: &Alert) -> Markup {
    html! {
        @for (i, index) in a.rests_on.iter().enumerate() {
            @if i > 0 { ", " }
            a href=(format!("/console/ledger/{index}")) { (index) }
        }
    }
}

/// The list of alerts.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Some(r) = viewer.require(&[Role::Overseer]) {
        return r;
    }
    let (filter, shown_label) = match q.state.as_deref() {
        Some("resolved") => (Some(AlertState::Resolved), "resolved"),
        Some("all") => (None, "all"),
        _ => (Some(AlertState::Open), "open"),
    };
    let offset = q.offset.unwrap_or(0);
    let listed = match state.custos.alerts(&viewer.actor, filter, offset).await {
        Ok(p) => p,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    let alerts = &listed.alerts;
    let shown = offset + alerts.len() as u64;
    let names = Names::load(&state, &viewer).await;
    let body = html! {
        h1 { "Alerts" }
        p.muted { "Unusual browsing: rules on every identified access and each principal's day against its peers. An alert blocks nothing; it says which rules fired and which ledger entries it rests on." }
        nav.tabs {
            @for (value, label) in [("open", "Open"), ("resolved", "Resolved"), ("all", "All")] {
                @if value == shown_label { strong { (label) } } @else { a href=(format!("/console/alerts?state={value}")) { (label) } }
                " "
            }
        }
        section.card {
            @if alerts.is_empty() { p { "No " (shown_label) " alerts." } }
            @else {
                table {
                    thead { tr { th.num { "Score" } th { "Alert" } th { "Principal" } th { "Agreement" } th { "Rules" } th { "Raised" } th { "State" } } }
                    tbody {
                        @for a in alerts {
                            tr {
                                td.num { (format!("{:.2}", a.score)) }
                                td { a href=(format!("/console/alerts/{}", a.id)) { code { (a.id) } } }
                                td { (names.of(&a.principal)) }
                                td { (a.agreement.as_deref().unwrap_or("—")) }
                                td { (a.rules.iter().map(|r| r.rule.as_str()).collect::<Vec<_>>().join(", ")) }
                                td { (a.raised_at) }
                                td { (state_badge(a)) }
                            }
                        }
                    }
                }
                p.muted {
                    "Alerts " (offset + 1) "–" (shown) " of " (listed.total) ", highest score first. "
                    @if shown < listed.total {
                        a href=(format!("/console/alerts?state={shown_label}&offset={shown}")) { "Next page" }
                    }
                }
            }
        }
    };
    page(&viewer, "Alerts", "/console/alerts", body)
}

fn alert_body(viewer: &Viewer, a: &Alert, names: &Names, note: Option<&str>) -> Markup {
    html! {
        div id="alert" {
            @if let Some(note) = note { p.notice { (note) } }
            section.card {
                h1 { "Alert " code { (a.id) } " " (state_badge(a)) }
                dl.terms {
                    dt { "Score" } dd { (format!("{:.2}", a.score)) }
                    dt { "Principal" } dd { (names.of(&a.principal)) " " code { (a.principal) } }
                    @if let Some(ag) = &a.agreement { dt { "Agreement" } dd { a href=(format!("/console/agreements/{ag}")) { (ag) } } }
                    @if let Some(r) = &a.request { dt { "Request" } dd { a href=(format!("/console/requests/{r}")) { code { (r) } } } }
                    dt { "Raised" } dd { (a.raised_at) }
                    dt { "Published" } dd {
                        @if let Some(i) = a.digest_index { "in the digest at ledger entry " a href=(format!("/console/ledger/{i}")) { (i) } }
                        @else { "with the next digest" }
                    }
                    dt { "Rests on" } dd { (entries(a)) }
                }
                h2 { "Rules that fired" }
                table {
                    thead { tr { th { "Rule" } th.num { "Weight" } th { "Why" } } }
                    tbody {
                        @for r in &a.rules {
                            tr { td { code { (r.rule) } } td.num { (format!("{:.2}", r.weight)) } td { (r.detail) } }
                        }
                    }
                }
            }
            @if a.state == AlertState::Resolved {
                section.card {
                    h2 { "Resolution" }
                    dl.terms {
                        dt { "By" } dd { (names.of(a.resolved_by.as_deref().unwrap_or("—"))) }
                        dt { "At" } dd { (a.resolved_at.as_deref().unwrap_or("—")) }
                        @if let Some(i) = a.resolve_ledger_index { dt { "Ledger entry" } dd { a href=(format!("/console/ledger/{i}")) { (i) } } }
                        @if let Some(reason) = &a.resolution { dt { "Reason" } dd { (reason) } }
                    }
                }
            } @else {
                section.card {
                    h2 { "Resolve" }
                    form.stack method="post" action=(format!("/console/alerts/{}/resolve", a.id))
                        hx-post=(format!("/console/alerts/{}/resolve", a.id)) hx-target="#alert" hx-swap="outerHTML" {
                        (csrf_field(viewer))
                        label { "What was found (sealed; the ledger keeps a keyed digest)"
                            textarea name="reason" required minlength="10" maxlength="4000" {}
                        }
                        button type="submit" { "Resolve" }
                    }
                }
            }
        }
    }
}

/// One alert.
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = viewer.require(&[Role::Overseer]) {
        return r;
    }
    let alert = match state.custos.alert(&viewer.actor, &id).await {
        Ok(a) => a,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    let names = Names::load(&state, &viewer).await;
    page(
        &viewer,
        "Alert",
        "/console/alerts",
        alert_body(&viewer, &alert, &names, None),
    )
}

/// The resolve form.
#[derive(Debug, Deserialize)]
pub(crate) struct ResolveForm {
    csrf: String,
    reason: String,
}

/// Resolves an alert.
pub(crate) async fn resolve(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<ResolveForm>,
) -> Response {
    if let Some(r) = viewer.check_csrf(&form.csrf) {
        return r;
    }
    if let Some(r) = viewer.require(&[Role::Overseer]) {
        return r;
    }
    match state
        .custos
        .resolve_alert(&viewer.actor, &id, &form.reason)
        .await
    {
        Ok(alert) => {
            let names = Names::load(&state, &viewer).await;
            page(
                &viewer,
                "Alert",
                "/console/alerts",
                alert_body(&viewer, &alert, &names, Some("Resolved.")),
            )
        }
        Err(e) => broker_error(Some(&viewer), e),
    }
}
