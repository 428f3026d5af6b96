//! Agreements (terms, state, expiry, use over time) and the subject
//! accounting (an identifier typed into a form, sent in a POST body).

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::Response;
use custos_model::{AgreementStatus, Role};
use custos_policy::Agreement;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{broker_error, csrf_field, page};
use super::{Names, Viewer, charts};
use crate::AppState;

/// Days of activity charted on an agreement's page.
const CHART_DAYS: u32 = 60;

fn status_class(s: AgreementStatus) -> &'static str {
    match s {
        AgreementStatus::Active => "allow",
        AgreementStatus::Suspended => "warn",
        AgreementStatus::Revoked => "deny",
    }
}

/// The agreements the viewer may see.
pub(crate) async fn agreements(State(state): State<Arc<AppState>>, viewer: Viewer) -> Response {
    let all = match state.custos.agreements(&viewer.actor).await {
        Ok(all) => all,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    let today = chrono::Utc::now().date_naive();
    let body = html! {
        h1 { "Agreements" }
        @if viewer.holds_any(&[Role::Admin]) { (super::admin::apply_form(&viewer)) }
        section.card {
            @if all.is_empty() { p { "No agreement you may see." } }
            @else {
                table {
                    thead { tr { th { "Agreement" } th { "State" } th.wide { "Parties" } th { "Valid until" } th.wide { "Purpose" } } }
                    tbody {
                        @for (version, st) in &all {
                            @let parsed = Agreement::from_toml(&version.toml).ok();
                            tr {
                                td { a href=(format!("/console/agreements/{}", version.id)) { (version.id) } " v" (version.version) }
                                td class=(status_class(st.state)) { (st.state) }
                                td.wide { @if let Some(a) = &parsed { (a.parties.custodian) " → " (a.parties.requester) } }
                                td {
                                    @if let Some(a) = &parsed {
                                        (a.valid_until)
                                        @if a.valid_until < today { " " span.deny { "(expired)" } }
                                    }
                                }
                                td.wide { @if let Some(a) = &parsed { (a.purpose) } }
                            }
                        }
                    }
                }
            }
        }
    };
    page(&viewer, "Agreements", "/console/agreements", body)
}

fn terms(a: &Agreement) -> Markup {
    html! {
        dl.terms {
            dt { "Title" } dd { (a.title) }
            dt { "Custodian" } dd { (a.parties.custodian) }
            dt { "Requester" } dd { (a.parties.requester) }
            dt { "Purpose" } dd { (a.purpose) }
            dt { "Legal authority" } dd { (a.legal_authority.citation) }
            dt { "Valid" } dd { (a.valid_from) " to " (a.valid_until) }
            @if let Some(w) = &a.withhold_from_subject_reports {
                dt { "Withheld from subject reports" } dd { (w.citation) }
            }
        }
        h2 { "Grants" }
        table {
            thead { tr { th { "Dataset" } th { "Mode" } th { "Columns" } th.wide { "Row scope" } th { "Budget" } th { "Approvals" } } }
            tbody {
                @for g in &a.grants {
                    tr {
                        td { (g.dataset) }
                        td { (g.mode.as_str()) }
                        td { (g.columns.join(", ")) }
                        td.wide { code { (g.row_scope.as_deref().unwrap_or("all rows")) } }
                        td { @if let Some(p) = &g.privacy { (p.budget) " " (p.measure.as_str()) ", ≤ " (p.per_query) " per query" } @else { "—" } }
                        td { (g.limits.approvals) }
                    }
                }
            }
        }
    }
}

/// One agreement: terms, state, versions, and (for those who may see its
/// use) requests per day and budget charged per day.
pub(crate) async fn agreement(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let (versions, st) = match state.custos.agreement(&viewer.actor, &id).await {
        Ok(v) => v,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    let Some(latest) = versions.last() else {
        return broker_error(
            Some(&viewer),
            custos_broker::BrokerError::NotFound(format!("no agreement `{id}`")),
        );
    };
    let parsed = Agreement::from_toml(&latest.toml).ok();
    let days = match state
        .custos
        .agreement_days(&viewer.actor, &id, CHART_DAYS)
        .await
    {
        Ok(d) => d,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    let usage = if viewer.holds_any(&[Role::Overseer, Role::Admin]) {
        state.custos.agreement_report(&viewer.actor, &id).await.ok()
    } else {
        None
    };
    let names = Names::load(&state, &viewer).await;
    let today = chrono::Utc::now().timestamp().div_euclid(86_400);
    let first = today - i64::from(CHART_DAYS) + 1;
    let label = |day: i64| {
        chrono::DateTime::from_timestamp(day * 86_400, 0)
            .map_or_else(String::new, |t| t.format("%m-%d").to_string())
    };
    let series = |pick: &dyn Fn(&custos_broker::DayActivity) -> f64| -> Vec<(String, f64)> {
        (first..=today)
            .map(|day| {
                let v = days.iter().find(|d| d.day == day).map_or(0.0, pick);
                (label(day), v)
            })
            .collect()
    };
    let mut spent_so_far = 0.0;
    let cumulative: Vec<(String, f64)> = series(&|d| d.spent)
        .into_iter()
        .map(|(l, v)| {
            spent_so_far += v;
            (l, spent_so_far)
        })
        .collect();
    let body = html! {
        h1 { "Agreement " (id) " v" (latest.version) }
        section.card {
            p { "State: " span class=(status_class(st.state)) { (st.state) } " since " (st.changed_at) " (by " (names.of(&st.changed_by)) ")"
                @if let Some(r) = &st.reason { ": " (r) } }
            @if let Some(a) = &parsed { (terms(a)) }
            p.muted { "Version " (latest.version) " applied " (latest.applied_at) " by " (names.of(&latest.applied_by)) "; SHA-256 " code { (latest.sha256) }
                @if let Some(i) = latest.ledger_entry { ", ledger entry " a href=(format!("/console/ledger/{i}")) { (i) } } }
            @if viewer.holds_any(&[Role::Admin]) { (super::admin::state_forms(&viewer, &id, st.state)) }
        }
        section.card {
            h2 { "Look-up requests per day (last " (CHART_DAYS) " days)" }
            (charts::bars("Look-up requests per day", &series(&|d| d.requests as f64)))
            h2 { "Privacy budget spent (cumulative over the same days)" }
            (charts::bars("Privacy budget spent, cumulative", &cumulative))
        }
        @if let Some(r) = &usage {
            section.card {
                h2 { "Use" }
                dl.terms {
                    dt { "Requests" } dd { (r.usage.requests) " (" (r.usage.pending) " pending, " (r.usage.approved) " approved, " (r.usage.fetched) " fetched)" }
                    dt { "Distinct subjects" } dd { (r.usage.distinct_subjects) }
                    dt { "Disclosures" } dd { (r.usage.disclosures) " (" (r.usage.rows_released) " rows)" }
                    dt { "Requesters" } dd { (r.usage.requesters) }
                }
            }
        }
    };
    page(&viewer, "Agreement", "/console/agreements", body)
}

/// The subject accounting form (the identifier is typed, never in a URL).
pub(crate) async fn subject_form(viewer: Viewer) -> Response {
    if let Some(r) = viewer.require(&[Role::Overseer, Role::Admin]) {
        return r;
    }
    let body = html! {
        h1 { "Subject accounting" }
        (subject_search(&viewer))
    };
    page(&viewer, "Subject accounting", "/console/subject", body)
}

fn subject_search(viewer: &Viewer) -> Markup {
    html! {
        section.card {
            form.stack method="post" action="/console/subject" autocomplete="off"
                hx-post="/console/subject" hx-target="#report" hx-swap="innerHTML" {
                (csrf_field(viewer))
                label { "Subject identifier (e.g. a TIN)"
                    input type="text" name="subject" required autocomplete="off" spellcheck="false" maxlength="64";
                }
                button type="submit" { "Show who saw this person's records" }
            }
            p.muted { "Producing the report is ledgered. The identifier travels in the request body only and is not shown back." }
        }
        div id="report" {}
    }
}

/// The subject form's fields.
#[derive(Deserialize)]
pub(crate) struct SubjectForm {
    #[serde(default)]
    csrf: String,
    #[serde(deserialize_with = "super::layout::secret")]
    subject: zeroize::Zeroizing<String>,
}

/// A subject's accounting: every inspection and disclosure, each with its
/// inclusion proof checked here against the report's checkpoint.
pub(crate) async fn subject_report(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Form(form): Form<SubjectForm>,
) -> Response {
    if let Some(r) = viewer.require(&[Role::Overseer, Role::Admin]) {
        return r;
    }
    if let Some(r) = viewer.check_csrf(&form.csrf) {
        return r;
    }
    let report = match state
        .custos
        .subject_report(&viewer.actor, &form.subject)
        .await
    {
        Ok(r) => r,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    let checkpoint =
        custos_ledger::verify_checkpoint(report.checkpoint.as_bytes(), state.custos.verifier_key());
    let report_markup = html! {
        section.card {
            h2 { "Accounting of disclosures" }
            @match &checkpoint {
                Ok(cp) => p { "Checked against the signed checkpoint of size " (cp.size) "." }
                Err(e) => div.notice.bad { "The report's checkpoint does not verify: " (e) }
            }
            @if report.lines.is_empty() { p { "No inspection or disclosure of this person is recorded." } }
            @else {
                table {
                    thead { tr { th { "When" } th { "What" } th { "Who" } th.wide { "Agreement, purpose" } th.num { "Rows" } th { "Proof" } } }
                    tbody {
                        @for line in &report.lines {
                            @let proved = checkpoint.as_ref().is_ok_and(|cp| {
                                custos_ledger::verify_inclusion(&line.proof).is_ok()
                                    && line.proof.root == hex::encode(cp.root)
                            });
                            tr {
                                td { (line.at) }
                                td { (serde_json::to_value(line.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()) }
                                td { (line.recipient) " (" (line.org) ")" }
                                td.wide { (line.agreement) " v" (line.agreement_version) ": " (line.purpose) }
                                td.num { (line.rows) }
                                td {
                                    a href=(format!("/console/ledger/{}", line.proof.index)) { "entry " (line.proof.index) }
                                    @if proved { " " span.allow { "✓ included" } } @else { " " span.deny { "✗ does not verify" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    if viewer.partial {
        return page(
            &viewer,
            "Subject accounting",
            "/console/subject",
            report_markup,
        );
    }
    let body = html! {
        h1 { "Subject accounting" }
        (subject_search(&viewer))
        (report_markup)
    };
    page(&viewer, "Subject accounting", "/console/subject", body)
}
