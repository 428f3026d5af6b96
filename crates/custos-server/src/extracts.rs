//! `POST /v1/extracts`: a pseudonymous extract over HTTP, so a requester
//! never needs the custodian's home or its master key. The broker writes
//! the file into the home's staging directory and releases it (moves it to
//! a name of its own there) only after the ledger and every subject's
//! accounting hold it; this handler then sends it and removes it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use custos_broker::{ExtractFormat, ExtractRequest};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::body::ApiJson;
use crate::problem::{Problem, ProblemKind};

/// The header that carries the extract's report (JSON) beside the file.
pub const REPORT_HEADER: &str = "x-custos-extract";

/// An extract to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExtract {
    /// The agreement (its grant on the dataset must be `pseudonymous`).
    pub agreement: String,
    /// The dataset.
    pub dataset: String,
    /// Only rows where this holds (row-scope language, granted public
    /// columns only).
    #[serde(rename = "where")]
    pub filter: Option<String>,
    /// `csv` (default) or `parquet`.
    pub format: Option<String>,
}

/// Makes a pseudonymous extract and answers the file itself (CSV or
/// Parquet), with the report in the `x-custos-extract` header.
#[utoipa::path(post, path = "/v1/extracts", tag = "extracts", security(("bearer" = [])),
    request_body = NewExtract,
    responses(
        (status = 200, description = "The extract", content_type = "text/csv"),
        (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn extract(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<NewExtract>,
) -> Result<Response, Problem> {
    let (format, extension, content_type) = match body.format.as_deref() {
        None | Some("csv") => (ExtractFormat::Csv, "csv", "text/csv; charset=utf-8"),
        Some("parquet") => (
            ExtractFormat::Parquet,
            "parquet",
            "application/vnd.apache.parquet",
        ),
        Some(other) => {
            return Err(Problem::new(
                ProblemKind::Invalid,
                format!("`format` is `csv` or `parquet`, not `{other}`"),
            ));
        }
    };
    let out = state.custos.staging_file(extension)?;
    let report = state
        .custos
        .extract(
            &actor,
            ExtractRequest {
                agreement: &body.agreement,
                dataset: &body.dataset,
                filter: body.filter.as_deref(),
                out: &out,
                format,
            },
        )
        .await?;
    // The file is released: read it once and remove it. (Held in memory
    // while it is sent; an extract is bounded by its grant's `max_rows`.)
    let bytes = tokio::fs::read(&out).await;
    let _ = tokio::fs::remove_file(&out).await;
    let bytes = bytes.map_err(|e| {
        tracing::error!(error = %e, "a released extract could not be read back");
        Problem::new(ProblemKind::Internal, "the extract could not be read back")
    })?;
    // The report without the server's file path.
    let mut summary = serde_json::to_value(&report)
        .map_err(|_| Problem::new(ProblemKind::Internal, "the report could not be encoded"))?;
    if let Some(o) = summary.as_object_mut() {
        o.remove("path");
    }
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&summary.to_string()) {
        headers.insert(REPORT_HEADER, v);
    }
    Ok(response)
}
