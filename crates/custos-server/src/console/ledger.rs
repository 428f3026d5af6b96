//! The ledger explorer: entries newest first, filtered by action,
//! agreement, principal and outcome, paged by index; one entry with its
//! inclusion proof checked against the latest signed checkpoint and, where
//! witnesses cosign, their cosignatures.
//!
//! The ledger is public (its tiles are served at `/tile/…`), so the
//! explorer reads the published files directly; the page is for overseers
//! and admins because it is their tool, not because the entries are
//! secret. A page reads at most [`SCAN`] entries (one entry bundle at a
//! time), so it costs the same at a million entries as at a thousand; a
//! narrow filter may need "older" to reach further back.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use custos_ledger::{Decision, Entry, LedgerReader};
use custos_model::Role;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{broker_error, error_page, page, when};
use super::{Names, Viewer};
use crate::AppState;

/// Entries shown per page.
const PAGE: usize = 50;
/// Most entries read to fill one page.
const SCAN: u64 = 4096;
/// Entries read at a time (one entry bundle).
const CHUNK: u64 = 256;

/// The explorer's filters (none is personal: actions, agreement ids,
/// principal ids, outcomes and indices).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Filters {
    #[serde(default)]
    action: String,
    #[serde(default)]
    agreement: String,
    #[serde(default)]
    principal: String,
    #[serde(default)]
    outcome: String,
    /// Show entries up to the end of this UTC day (`YYYY-MM-DD`).
    #[serde(default)]
    until: String,
    before: Option<u64>,
}

impl Filters {
    /// Whether entry `e` passes; `actor` is the principal filter as an id.
    fn keeps(&self, e: &Entry, actor: Option<&str>) -> bool {
        (self.action.is_empty() || e.action.starts_with(self.action.trim()))
            && (self.agreement.is_empty()
                || e.agreement_id.as_deref() == Some(self.agreement.trim()))
            && actor.is_none_or(|id| e.actor == id)
            && (self.outcome.is_empty() || decision_name(e.decision) == self.outcome)
    }

    fn query(&self, before: u64) -> String {
        let mut q = format!("before={before}");
        for (k, v) in [
            ("action", &self.action),
            ("agreement", &self.agreement),
            ("principal", &self.principal),
            ("outcome", &self.outcome),
        ] {
            if !v.is_empty() {
                q.push_str(&format!("&{k}={}", urlencode(v)));
            }
        }
        q
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn decision_name(d: Decision) -> &'static str {
    match d {
        Decision::Recorded => "recorded",
        Decision::Allow => "allow",
        Decision::Deny => "deny",
        Decision::Error => "error",
    }
}

fn decision_class(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny | Decision::Error => "deny",
        Decision::Recorded => "muted",
    }
}

/// A page of matching entries, newest first, and where the next page
/// starts (None: the beginning was reached).
struct Found {
    rows: Vec<(u64, Result<Entry, String>)>,
    next: Option<u64>,
    scanned: u64,
}

/// The first index whose entry is later than `micros`: a binary search
/// over entry times (appends are in time order), one bundle read a step.
fn first_after(reader: &LedgerReader, size: u64, micros: i64) -> Result<u64, String> {
    let (mut low, mut high) = (0, size);
    while low < high {
        let middle = low + (high - low) / 2;
        let bytes = reader
            .entries(middle, middle + 1)
            .map_err(|e| e.to_string())?
            .pop()
            .map(|(_, b)| b)
            .unwrap_or_default();
        let time = Entry::decode(&bytes).map_or(i64::MIN, |e| e.time_micros);
        if time <= micros {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(low)
}

fn scan(
    reader: &LedgerReader,
    size: u64,
    filters: &Filters,
    actor: Option<&str>,
) -> Result<Found, String> {
    let until = match (filters.before, filters.until.trim()) {
        (None, day) if !day.is_empty() => {
            let day = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
                .map_err(|_| "the date must be YYYY-MM-DD".to_owned())?;
            let end = day
                .and_hms_opt(23, 59, 59)
                .map_or(i64::MAX, |t| t.and_utc().timestamp_micros() + 999_999);
            Some(first_after(reader, size, end)?)
        }
        _ => None,
    };
    let mut to = until.or(filters.before).unwrap_or(size).min(size);
    let mut rows = Vec::new();
    let mut scanned = 0;
    while to > 0 && rows.len() < PAGE && scanned < SCAN {
        // Align reads to bundles so each chunk reads one file.
        let from = if to % CHUNK == 0 {
            to - CHUNK
        } else {
            to - to % CHUNK
        };
        let chunk = reader.entries(from, to).map_err(|e| e.to_string())?;
        scanned += to - from;
        for (index, bytes) in chunk.into_iter().rev() {
            match Entry::decode(&bytes) {
                Ok(e) if filters.keeps(&e, actor) => rows.push((index, Ok(e))),
                Ok(_) => {}
                Err(err) => rows.push((index, Err(err.to_string()))),
            }
            if rows.len() == PAGE {
                to = index;
                break;
            }
            to = index;
        }
    }
    Ok(Found {
        rows,
        next: (to > 0).then_some(to),
        scanned,
    })
}

fn filter_form(f: &Filters) -> Markup {
    html! {
        form.filters method="get" action="/console/ledger"
            hx-get="/console/ledger" hx-target="#entries" hx-select="#entries" hx-swap="outerHTML" {
            label { "Action (prefix)" input type="text" name="action" value=(f.action) placeholder="lookup."; }
            label { "Agreement" input type="text" name="agreement" value=(f.agreement); }
            label { "Principal" input type="text" name="principal" value=(f.principal); }
            label { "Up to (UTC day)" input type="date" name="until" value=(f.until); }
            label { "Outcome"
                select name="outcome" {
                    @for (v, l) in [("", "any"), ("allow", "allowed"), ("deny", "denied"), ("error", "failed"), ("recorded", "recorded")] {
                        option value=(v) selected[f.outcome == v] { (l) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
    }
}

fn entries_table(found: &Found, filters: &Filters, names: &Names) -> Markup {
    html! {
        div id="entries" {
            @if found.rows.is_empty() {
                p { "No entry matches among the " (found.scanned) " read." }
            } @else {
                table {
                    thead { tr { th.num { "#" } th { "Time (UTC)" } th { "Action" } th { "Outcome" } th { "Principal" } th.wide { "Agreement" } th.wide { "Reason" } } }
                    tbody {
                        @for (index, row) in &found.rows {
                            tr {
                                td.num { a href=(format!("/console/ledger/{index}")) { (index) } }
                                @match row {
                                    Ok(e) => {
                                        td { (when(e.time_micros)) }
                                        td { code { (e.action) } }
                                        td class=(decision_class(e.decision)) { (decision_name(e.decision)) }
                                        td { (names.of(&e.actor)) }
                                        td.wide { @if let Some(a) = &e.agreement_id { (a) " v" (e.agreement_version) } }
                                        td.wide { (e.reasons.first().map_or("", String::as_str)) }
                                    }
                                    Err(err) => { td colspan="6" class="error" { "entry does not decode: " (err) } }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = found.next {
                p.pager { a href=(format!("/console/ledger?{}", filters.query(next))) { "Older entries (before #" (next) ")" } }
            }
        }
    }
}

/// The explorer.
pub(crate) async fn explorer(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Query(filters): Query<Filters>,
) -> Response {
    if let Some(r) = viewer.require(&[Role::Overseer, Role::Admin]) {
        return r;
    }
    let checkpoint = match state.custos.checkpoint() {
        Ok(c) => c,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    if !filters.until.trim().is_empty()
        && chrono::NaiveDate::parse_from_str(filters.until.trim(), "%Y-%m-%d").is_err()
    {
        return error_page(
            Some(&viewer),
            StatusCode::BAD_REQUEST,
            "the date must be YYYY-MM-DD",
        );
    }
    let names = Names::load(&state, &viewer).await;
    // A principal is named by name or id; an unknown one matches nothing.
    let actor = (!filters.principal.trim().is_empty()).then(|| {
        names
            .id_of(filters.principal.trim())
            .unwrap_or(filters.principal.trim())
            .to_owned()
    });
    let reader = match state.custos.ledger_reader() {
        Ok(r) => r,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    let found = match tokio::task::spawn_blocking({
        let size = checkpoint.size;
        move || scan(&reader, size, &filters, actor.as_deref()).map(|f| (f, filters))
    })
    .await
    {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            return error_page(
                Some(&viewer),
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the ledger could not be read: {e}"),
            );
        }
        Err(_) => {
            return error_page(
                Some(&viewer),
                StatusCode::INTERNAL_SERVER_ERROR,
                "the ledger read failed",
            );
        }
    };
    let (found, filters) = found;
    let body = html! {
        h1 { "Ledger" }
        p.muted { (checkpoint.size) " entries under the latest signed checkpoint (" code { (checkpoint.origin) } ")." }
        section.card {
            (filter_form(&filters))
            (entries_table(&found, &filters, &names))
        }
    };
    page(&viewer, "Ledger", "/console/ledger", body)
}

/// One entry: every field, its inclusion proof checked against the latest
/// checkpoint, and the witnesses that cosigned a checkpoint covering it.
pub(crate) async fn entry(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(index): Path<u64>,
) -> Response {
    if let Some(r) = viewer.require(&[Role::Overseer, Role::Admin]) {
        return r;
    }
    let checkpoint = match state.custos.checkpoint() {
        Ok(c) => c,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    if index >= checkpoint.size {
        return error_page(
            Some(&viewer),
            StatusCode::NOT_FOUND,
            &format!(
                "no entry {index}: the signed checkpoint has {} entries",
                checkpoint.size
            ),
        );
    }
    let reader = match state.custos.ledger_reader() {
        Ok(r) => r,
        Err(e) => return broker_error(Some(&viewer), e),
    };
    let proved = {
        let checkpoint = checkpoint.clone();
        tokio::task::spawn_blocking(move || reader.prove_entry(index, &checkpoint)).await
    };
    let (bytes, proof) = match proved {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            return error_page(
                Some(&viewer),
                StatusCode::CONFLICT,
                &format!("entry {index} does not prove against the signed checkpoint: {e}"),
            );
        }
        Err(_) => {
            return error_page(
                Some(&viewer),
                StatusCode::INTERNAL_SERVER_ERROR,
                "the ledger read failed",
            );
        }
    };
    let witnessed = witnessed_cover(&state, index).await;
    let names = Names::load(&state, &viewer).await;
    let body = match Entry::decode(&bytes) {
        Err(e) => {
            html! { div.notice.bad { "Entry " (index) " is in the tree but does not decode: " (e) } }
        }
        Ok(e) => html! {
            h1 { "Ledger entry " (index) }
            section.card {
                dl.terms {
                    dt { "Time (UTC)" } dd { (when(e.time_micros)) }
                    dt { "Action" } dd { code { (e.action) } }
                    dt { "Outcome" } dd class=(decision_class(e.decision)) { (decision_name(e.decision)) }
                    dt { "Principal" } dd { (names.of(&e.actor)) " " span.muted.mono { (e.actor) } }
                    @if let Some(a) = &e.agreement_id { dt { "Agreement" } dd { a href=(format!("/console/agreements/{a}")) { (a) } " v" (e.agreement_version) } }
                    @if !e.request_id.is_empty() { dt { "Request" } dd { code { (e.request_id) } } }
                    @for r in &e.reasons { dt { "Reason" } dd { (r) } }
                    @for (k, v) in &e.counts { dt { (k) } dd { (v) } }
                    @for (k, v) in &e.attributes { dt { (k) } dd.mono { (v) } }
                    @if !e.subjects.is_empty() { dt { "Subjects" } dd { (e.subjects.len()) " commitment(s) (keyed; they name no one)" } }
                }
            }
            section.card {
                h2 { "Inclusion proof" }
                div.notice.good { "✓ This entry's bytes hash to leaf " code { (proof.leaf_hash) } ", and the proof of " (proof.proof.len()) " hashes leads to the root " code { (proof.root) } " of the checkpoint of size " (proof.size) ", whose signature was verified with the log's key." }
                details { summary { "Proof hashes" } ol { @for h in &proof.proof { li.mono { (h) } } } }
                details { summary { "Signed checkpoint" } pre.mono { (String::from_utf8_lossy(&checkpoint.note)) } }
            }
            section.card {
                h2 { "Witnesses" }
                (witnessed)
            }
            p { a href=(format!("/console/ledger?before={}", index + 1)) { "Entries around this one" } }
        },
    };
    page(&viewer, "Ledger entry", "/console/ledger", body)
}

/// Whether a witnessed checkpoint (its cosignatures checked against the
/// home's policy) covers entry `index`.
async fn witnessed_cover(state: &AppState, index: u64) -> Markup {
    let policy = match state.custos.witness_policy().await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return html! { p.muted { "This home has no witness policy; checkpoints are signed by the log alone." } };
        }
        Err(e) => return html! { div.notice.bad { "The witness policy is not usable: " (e) } },
    };
    let note = match state
        .custos
        .ledger_files()
        .map_err(|e| e.to_string())
        .and_then(|files| {
            files
                .read(custos_ledger::witnessed::WITNESSED_CHECKPOINT)
                .map_err(|e| e.to_string())
        }) {
        Ok(Some(note)) => note,
        Ok(None) => return html! { p.warn { "No checkpoint has reached the witness quorum yet." } },
        Err(e) => {
            return html! { div.notice.bad { "The witnessed checkpoint cannot be read: " (e) } };
        }
    };
    match custos_ledger::verify_witnessed(&note, state.custos.verifier_key(), &policy) {
        Err(e) => html! { div.notice.bad { "The witnessed checkpoint does not verify: " (e) } },
        Ok(w) if w.checkpoint.size <= index => html! {
            p.warn { "Not yet witnessed: the newest witnessed checkpoint has " (w.checkpoint.size) " entries." }
        },
        Ok(w) => html! {
            p.allow { "Covered by the witnessed checkpoint of size " (w.checkpoint.size) ", cosigned by:" }
            ul {
                @for (name, at) in &w.signed_by {
                    li { (name) " at " (chrono::DateTime::from_timestamp(i64::try_from(*at).unwrap_or(0), 0).map_or_else(|| at.to_string(), |t| t.to_rfc3339())) }
                }
            }
        },
    }
}
