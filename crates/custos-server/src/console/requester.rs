//! Requesters' pages: their agreements and what remains of the budgets,
//! their look-up requests, and an aggregate query whose answer shows each
//! value with its 95% interval as a chart.

use std::sync::Arc;

use axum::Form;
use axum::extract::State;
use axum::response::Response;
use custos_broker::AggregateAnswer;
use custos_model::Role;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{age, broker_error, csrf_field, page};
use super::{Viewer, charts};
use crate::AppState;

/// The viewer's agreements, budgets and look-up requests.
pub(crate) async fn mine(State(state): State<Arc<AppState>>, viewer: Viewer) -> Response {
    if let Some(r) = viewer.require(&[Role::Requester]) {
        return r;
    }
    let budgets = match state.custos.budgets(&viewer.actor).await {
        Ok(b) => b,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    let lookups = match state.custos.my_lookups(&viewer.actor).await {
        Ok(l) => l,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    let body = html! {
        h1 { "My requests and budgets" }
        section.card {
            h2 { "Privacy budgets" }
            @if budgets.is_empty() { p { "None of your agreements grants aggregate queries." } }
            @else {
                table {
                    thead { tr { th { "Agreement" } th { "Dataset" } th.num { "Spent" } th.num { "Budget" } th.num { "Remaining" } th.num.wide { "Per query" } } }
                    tbody {
                        @for b in &budgets {
                            tr {
                                td { a href=(format!("/console/agreements/{}", b.agreement)) { (b.agreement) } }
                                td { (b.dataset) }
                                td.num { (format!("{:.4}", b.spent)) }
                                td.num { (b.budget) " " (b.measure) }
                                td.num { (format!("{:.4}", (b.budget - b.spent).max(0.0))) }
                                td.num.wide { (b.per_query) }
                            }
                        }
                    }
                }
            }
        }
        section.card {
            h2 { "Look-up requests" }
            @if lookups.is_empty() { p { "You have not asked for anyone's records." } }
            @else {
                table {
                    thead { tr { th { "Request" } th { "Agreement" } th { "State" } th.num { "Approvals" } th { "Made" } } }
                    tbody {
                        @for t in &lookups {
                            tr {
                                td { a href=(format!("/console/requests/{}", t.id)) { code { (t.id) } } }
                                td { (t.agreement) }
                                td { (super::approver::state_badge(t)) }
                                td.num { (t.approvals) "/" (t.approvals_required) }
                                td { (age(&t.created_at)) " ago" }
                            }
                        }
                    }
                }
                p.muted { "Approved requests are fetched with " code { "custos lookup fetch ID" } " or " code { "POST /v1/lookups/ID/fetch" } "; records are not shown in the browser." }
            }
        }
    };
    page(&viewer, "My requests", "/console/mine", body)
}

fn query_form(viewer: &Viewer, agreements: &[String], last: Option<&QueryForm>) -> Markup {
    html! {
        section.card {
            form.stack method="post" action="/console/query" autocomplete="off"
                hx-post="/console/query" hx-target="#answer" hx-swap="innerHTML" {
                (csrf_field(viewer))
                label { "Agreement"
                    select name="agreement" required {
                        @for a in agreements { option value=(a) selected[last.is_some_and(|l| l.agreement == *a)] { (a) } }
                    }
                }
                label { "Aggregate SQL (COUNT, SUM, AVG, quantiles; GROUP BY public columns)"
                    textarea name="sql" required spellcheck="false"
                        placeholder="SELECT state, COUNT(*), AVG(refund) FROM tax_returns GROUP BY state" {
                        (last.map_or("", |l| l.sql.as_str()))
                    }
                }
                label { "Spend (blank: the grant's per-query cap)"
                    input type="text" name="spend" inputmode="decimal" value=(last.map_or("", |l| l.spend.as_str()));
                }
                button type="submit" { "Ask (spends budget)" }
            }
        }
        div id="answer" {}
    }
}

/// The query form.
pub(crate) async fn query_form_page(
    state: &AppState,
    viewer: &Viewer,
    last: Option<&QueryForm>,
    answer: Option<Markup>,
) -> Response {
    let agreements: Vec<String> = match state.custos.budgets(&viewer.actor).await {
        Ok(b) => {
            let mut ids: Vec<String> = b.into_iter().map(|b| b.agreement).collect();
            ids.dedup();
            ids
        }
        Err(e) => return broker_error(Some(viewer), e),
    };
    let body = html! {
        h1 { "Aggregate query" }
        p.muted { "Answers are differentially private: each value carries noise, shown with its 95% interval. Every question is charged to the agreement's budget and ledgered before it runs." }
        (query_form(viewer, &agreements, last))
        @if let Some(a) = answer { (a) }
    };
    page(viewer, "Aggregate query", "/console/query", body)
}

/// The query form (GET).
pub(crate) async fn query_form_get(State(state): State<Arc<AppState>>, viewer: Viewer) -> Response {
    if let Some(r) = viewer.require(&[Role::Requester]) {
        return r;
    }
    query_form_page(&state, &viewer, None, None).await
}

/// The query form's fields.
#[derive(Deserialize)]
pub(crate) struct QueryForm {
    #[serde(default)]
    csrf: String,
    agreement: String,
    sql: String,
    #[serde(default)]
    spend: String,
}

fn number(text: Option<&String>) -> Option<f64> {
    text.and_then(|t| t.parse::<f64>().ok())
}

fn answer_markup(a: &AggregateAnswer) -> Markup {
    let answer = &a.answer;
    // A column is a value column if any of its cells carries an interval.
    let value_columns: Vec<usize> = (0..answer.columns.len())
        .filter(|&c| {
            answer
                .rows
                .iter()
                .any(|r| r.get(c).is_some_and(|cell| cell.low.is_some()))
        })
        .collect();
    let group_columns: Vec<usize> = (0..answer.columns.len())
        .filter(|c| !value_columns.contains(c))
        .collect();
    let label = |row: &Vec<custos_broker::Cell>| -> String {
        let parts: Vec<String> = group_columns
            .iter()
            .filter_map(|&c| row.get(c).and_then(|cell| cell.value.clone()))
            .collect();
        if parts.is_empty() {
            "all".to_owned()
        } else {
            parts.join(" · ")
        }
    };
    html! {
        section.card {
            h2 { "Answer" }
            p.muted { "Charged " (a.charged) " of the budget; " (format!("{:.4}", a.budget_remaining)) " of " (a.budget) " remains. Ledger entry " (a.ledger_index.index()) "." }
            table {
                thead { tr { @for c in &answer.columns { th { (c) } } } }
                tbody {
                    @for row in &answer.rows {
                        tr {
                            @for cell in row {
                                td.num {
                                    (cell.value.as_deref().unwrap_or("—"))
                                    @if let (Some(lo), Some(hi)) = (&cell.low, &cell.high) { br; span.muted { "[" (lo) ", " (hi) "]" } }
                                    @if let Some(r) = cell.rank_error { br; span.muted { "rank ± " (r) } }
                                }
                            }
                        }
                    }
                }
            }
            @for &c in &value_columns {
                h2 { (answer.columns[c]) " with 95% intervals" }
                (charts::intervals(
                    &format!("{} with 95% intervals", answer.columns[c]),
                    &answer.rows.iter().filter_map(|row| {
                        let cell = row.get(c)?;
                        let v = number(cell.value.as_ref())?;
                        let interval = number(cell.low.as_ref()).zip(number(cell.high.as_ref()));
                        Some((label(row), v, interval))
                    }).collect::<Vec<_>>(),
                ))
            }
        }
    }
}

/// Asks an aggregate question through the broker.
pub(crate) async fn query(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Form(form): Form<QueryForm>,
) -> Response {
    if let Some(r) = viewer.require(&[Role::Requester]) {
        return r;
    }
    if let Some(r) = viewer.check_csrf(&form.csrf) {
        return r;
    }
    let spend = match form.spend.trim() {
        "" => None,
        text => match text.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Some(v),
            _ => {
                return super::layout::error_page(
                    Some(&viewer),
                    axum::http::StatusCode::BAD_REQUEST,
                    "the spend must be a positive number, or blank",
                );
            }
        },
    };
    let answer = match state
        .custos
        .query_aggregate(&viewer.actor, &form.agreement, &form.sql, spend)
        .await
    {
        Ok(a) => answer_markup(&a),
        Err(e) => return broker_error(Some(&viewer), e),
    };
    if viewer.partial {
        return page(&viewer, "Aggregate query", "/console/query", answer);
    }
    query_form_page(&state, &viewer, Some(&form), Some(answer)).await
}
