//! Approvers' pages: the queue of pending look-ups, one request with its
//! subject and justification, approving and declining, and their history.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::Response;
use custos_broker::{LookupDetails, LookupTicket, RequestState};
use custos_model::Role;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{age, broker_error, csrf_field, page};
use super::{Names, Viewer};
use crate::AppState;

/// A request's state, coloured by outcome (shared by the approver's and
/// the requester's pages).
pub(crate) fn state_badge(t: &LookupTicket) -> Markup {
    let state = t.state.as_str();
    let class = match t.state {
        RequestState::Declined => "deny",
        RequestState::Approved | RequestState::Fetched => "allow",
        RequestState::Pending => "muted",
    };
    html! { span class=(class) { (state) } }
}

/// The approve and decline forms for one request (htmx swaps the result
/// into `#decision-ID`).
fn judge_forms(viewer: &Viewer, id: &str) -> Markup {
    let target = format!("#decision-{id}");
    html! {
        div id=(format!("decision-{id}")) {
            form.inline method="post" action=(format!("/console/requests/{id}/approve"))
                hx-post=(format!("/console/requests/{id}/approve")) hx-target=(target) hx-swap="outerHTML" {
                (csrf_field(viewer))
                button type="submit" { "Approve" }
            }
            details {
                summary { "Decline…" }
                form.stack method="post" action=(format!("/console/requests/{id}/decline"))
                    hx-post=(format!("/console/requests/{id}/decline")) hx-target=(target) hx-swap="outerHTML" {
                    (csrf_field(viewer))
                    label { "Reason (shown to the requester)"
                        textarea name="reason" required minlength="10" maxlength="2000" {}
                    }
                    button.danger type="submit" { "Decline" }
                }
            }
        }
    }
}

/// The queue of pending look-ups the viewer may judge, oldest first.
pub(crate) async fn queue(State(state): State<Arc<AppState>>, viewer: Viewer) -> Response {
    if let Some(r) = viewer.require(&[Role::Approver]) {
        return r;
    }
    let items = match state.custos.approval_queue(&viewer.actor).await {
        Ok(items) => items,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    let matches = match state.custos.matches_to_confirm(&viewer.actor).await {
        Ok(m) => m,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    let names = Names::load(&state, &viewer).await;
    let body = html! {
        h1 { "Approval queue" }
        p.muted { "Identified look-ups under agreements your organisation holds data for. Seeing a justification here is ledgered; the subject is shown on the request itself." }
        @if items.is_empty() {
            section.card { p { "Nothing is waiting for you." } }
        }
        @for item in &items {
            section.card {
                h2 { a href=(format!("/console/requests/{}", item.ticket.id)) { "Request " code { (item.ticket.id) } } }
                dl.terms {
                    dt { "Agreement" } dd { a href=(format!("/console/agreements/{}", item.ticket.agreement)) { (item.ticket.agreement) } " v" (item.ticket.agreement_version) }
                    dt { "Purpose" } dd { (item.purpose) }
                    dt { "Legal authority" } dd { (item.legal_authority) }
                    dt { "Requester" } dd { (names.of(&item.ticket.requester)) }
                    dt { "Dataset, columns" } dd { (item.ticket.dataset) ": " (item.ticket.columns.join(", ")) }
                    dt { "Justification" } dd { (item.justification) }
                    dt { "Waiting" } dd { (age(&item.ticket.created_at)) }
                    dt { "Approvals" } dd { (item.ticket.approvals) " of " (item.ticket.approvals_required) }
                }
                @if item.approved_by_caller {
                    p.muted { "You approved this; it waits for another approver." }
                } @else {
                    (judge_forms(&viewer, &item.ticket.id))
                }
            }
        }
        h2 { "Match results awaiting confirmation" }
        section.card {
            @if matches.is_empty() { p { "No match result waits for confirmation." } }
            @else {
                table {
                    thead { tr { th { "Job" } th { "Agreement" } th.wide { "Dataset, peer" } th { "Reveals" } th.num { "Matches" } th { "Run by" } th {} } }
                    tbody {
                        @for job in &matches {
                            tr {
                                td { code { (job.job_id) } }
                                td { (job.agreement_id) " v" (job.agreement_version) }
                                td.wide { (job.dataset) " with " (job.peer) }
                                td { (job.reveal) }
                                td.num { (job.match_count.map_or_else(|| "—".to_owned(), |n| n.to_string())) }
                                td { (names.of(&job.principal)) }
                                td {
                                    div id=(format!("confirm-{}", job.job_id)) {
                                        form.inline method="post" action=(format!("/console/matches/{}/confirm", job.job_id))
                                            hx-post=(format!("/console/matches/{}/confirm", job.job_id))
                                            hx-target=(format!("#confirm-{}", job.job_id)) hx-swap="outerHTML" {
                                            (csrf_field(&viewer))
                                            button type="submit" { "Confirm" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                p.muted { "Confirming says a person checked the matches before anyone acts on them (the Computer Matching Act's verification); it is ledgered." }
            }
        }
    };
    page(&viewer, "Approval queue", "/console/queue", body)
}

fn details_markup(viewer: &Viewer, names: &Names, d: &LookupDetails) -> Markup {
    let t = &d.ticket;
    html! {
        h1 { "Request " code { (t.id) } }
        section.card {
            dl.terms {
                dt { "State" } dd { (state_badge(t)) }
                dt { "Agreement" } dd { a href=(format!("/console/agreements/{}", t.agreement)) { (t.agreement) } " v" (t.agreement_version) }
                dt { "Requester" } dd { (names.of(&t.requester)) }
                dt { "Dataset, columns" } dd { (t.dataset) ": " (t.columns.join(", ")) }
                @if let Some(subject) = &d.subject {
                    dt { "Subject" } dd.mono { (subject) }
                }
                @if let Some(j) = &d.justification {
                    dt { "Justification" } dd { (j) }
                }
                dt { "Made" } dd { (t.created_at) " (" (age(&t.created_at)) " ago), ledger entry " a href=(format!("/console/ledger/{}", t.ledger_index)) { (t.ledger_index) } }
                dt { "Approvals" } dd {
                    (t.approvals) " of " (t.approvals_required)
                    @for a in &d.approvers { br; (names.of(&a.approver)) " at " (a.approved_at) }
                }
                @if let Some(declined) = &d.declined {
                    dt { "Declined" } dd {
                        span.deny { "by " (names.of(&declined.by)) } " at " (declined.at)
                        @if let Some(reason) = &declined.reason { br; "Reason: " (reason) }
                    }
                }
            }
            @if viewer.holds_any(&[Role::Approver]) && t.state == RequestState::Pending && d.subject.is_some() && t.requester != viewer.actor.id() {
                (judge_forms(viewer, &t.id))
            }
        }
    }
}

/// One request: the broker decides who sees it, and with what (seeing the
/// subject and justification is ledgered).
pub(crate) async fn request(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    match state.custos.lookup_details(&viewer.actor, &id).await {
        Ok(d) => {
            let names = Names::load(&state, &viewer).await;
            let body = details_markup(&viewer, &names, &d);
            page(&viewer, "Request", "", body)
        }
        Err(e) => broker_error(Some(&viewer), e),
    }
}

/// A judgement form's fields.
#[derive(Deserialize)]
pub(crate) struct JudgeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

fn outcome(viewer: &Viewer, id: &str, text: Markup) -> Response {
    let body = html! {
        div.notice.good id=(format!("decision-{id}")) role="status" { (text) }
        @if !viewer.partial {
            p { a href="/console/queue" { "Back to the queue" } }
        }
    };
    page(viewer, "Decision", "/console/queue", body)
}

/// Approves a request.
pub(crate) async fn approve(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<JudgeForm>,
) -> Response {
    if let Some(r) = viewer.check_csrf(&form.csrf) {
        return r;
    }
    match state.custos.approve_lookup(&viewer.actor, &id).await {
        Ok(t) => outcome(
            &viewer,
            &id,
            html! { "Approved: " (t.approvals) " of " (t.approvals_required) " approvals; the request is " (state_badge(&t)) "." },
        ),
        Err(e) => broker_error(Some(&viewer), e),
    }
}

/// Declines a request with a reason.
pub(crate) async fn decline(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<JudgeForm>,
) -> Response {
    if let Some(r) = viewer.check_csrf(&form.csrf) {
        return r;
    }
    match state
        .custos
        .decline_lookup(&viewer.actor, &id, &form.reason)
        .await
    {
        Ok(_) => outcome(
            &viewer,
            &id,
            html! { "Declined. The requester sees your reason; the ledger keeps a keyed digest of it." },
        ),
        Err(e) => broker_error(Some(&viewer), e),
    }
}

/// What the viewer approved and declined lately.
pub(crate) async fn decisions(State(state): State<Arc<AppState>>, viewer: Viewer) -> Response {
    if let Some(r) = viewer.require(&[Role::Approver]) {
        return r;
    }
    let decided = match state.custos.my_decisions(&viewer.actor).await {
        Ok(d) => d,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    let body = html! {
        h1 { "My decisions" }
        section.card {
            @if decided.is_empty() { p { "You have not approved or declined anything yet." } }
            @else {
                table {
                    thead { tr { th { "When" } th { "Request" } th { "Decision" } th.num { "Ledger entry" } } }
                    tbody {
                        @for d in &decided {
                            tr {
                                td { (d.at) }
                                td { a href=(format!("/console/requests/{}", d.request_id)) { code { (d.request_id) } } }
                                td class=(if d.outcome == "approved" { "allow" } else { "deny" }) { (d.outcome) }
                                td.num { a href=(format!("/console/ledger/{}", d.ledger_index)) { (d.ledger_index) } }
                            }
                        }
                    }
                }
            }
        }
    };
    page(&viewer, "My decisions", "/console/decisions", body)
}

/// Confirms a match result (the broker holds the two-person rule).
pub(crate) async fn confirm_match(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(job): Path<String>,
    Form(form): Form<JudgeForm>,
) -> Response {
    if let Some(r) = viewer.check_csrf(&form.csrf) {
        return r;
    }
    match state.custos.confirm_match(&viewer.actor, &job).await {
        Ok(j) => {
            let body = html! {
                div.notice.good id=(format!("confirm-{job}")) role="status" {
                    "Confirmed " code { (j.job_id) } "."
                }
                @if !viewer.partial { p { a href="/console/queue" { "Back to the queue" } } }
            };
            page(&viewer, "Match confirmed", "/console/queue", body)
        }
        Err(e) => broker_error(Some(&viewer), e),
    }
}
