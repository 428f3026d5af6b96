//! The ledger's public read paths (C2SP tlog-tiles): `/checkpoint`,
//! `/tile/<L>/<N>[.p/<W>]` and `/tile/entries/<N>[.p/<W>]`. Public, so that
//! outside auditors verify the log without an account; paths are parsed
//! by the ledger's strict tile-path parser, so nothing else can be read.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use custos_ledger::LedgerReader;
use custos_ledger::merkle::TileFiles;
use custos_ledger::tiles::TileId;

use crate::AppState;
use crate::problem::{Problem, ProblemKind};

fn bytes(content_type: &'static str, body: Vec<u8>, cache: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

fn ledger_unreadable(e: custos_broker::BrokerError) -> Problem {
    tracing::error!(error = %e, "the published ledger is unreachable");
    Problem::new(
        ProblemKind::Internal,
        "the published ledger could not be read",
    )
}

/// The latest signed checkpoint (a C2SP signed note).
#[utoipa::path(get, path = "/checkpoint", tag = "public",
    responses((status = 200, description = "The signed checkpoint", content_type = "text/plain")))]
pub async fn checkpoint(State(state): State<Arc<AppState>>) -> Result<Response, Problem> {
    let files = state.custos.ledger_files().map_err(ledger_unreadable)?;
    let note = tokio::task::spawn_blocking(move || LedgerReader::over(files).checkpoint_note())
        .await
        .map_err(|_| Problem::new(ProblemKind::Internal, "the read failed"))?
        .map_err(|e| {
            tracing::error!(error = %e, "checkpoint unreadable");
            Problem::new(ProblemKind::Internal, "the checkpoint could not be read")
        })?;
    Ok(bytes("text/plain; charset=utf-8", note, "no-store"))
}

/// The newest checkpoint a quorum of the home's witnesses cosigned (a
/// C2SP signed note: the log's signature, then the witnesses'
/// `cosignature/v1` lines). 404 while there is none.
#[utoipa::path(get, path = "/witnessed-checkpoint", tag = "public",
    responses((status = 200, description = "The witnessed checkpoint", content_type = "text/plain"),
        (status = 404, body = Problem)))]
pub async fn witnessed_checkpoint(State(state): State<Arc<AppState>>) -> Result<Response, Problem> {
    let files = state.custos.ledger_files().map_err(ledger_unreadable)?;
    let note = tokio::task::spawn_blocking(move || {
        files.read(custos_ledger::witnessed::WITNESSED_CHECKPOINT)
    })
    .await
    .map_err(|_| Problem::new(ProblemKind::Internal, "the read failed"))?
    .map_err(|e| {
        tracing::error!(error = %e, "witnessed checkpoint unreadable");
        Problem::new(
            ProblemKind::Internal,
            "the witnessed checkpoint could not be read",
        )
    })?
    .ok_or_else(|| {
        Problem::new(
            ProblemKind::NotFound,
            "no checkpoint of this ledger has been witnessed yet",
        )
    })?;
    Ok(bytes("text/plain; charset=utf-8", note, "no-store"))
}

/// A hash tile or entry bundle.
#[utoipa::path(get, path = "/tile/{path}", tag = "public",
    params(("path" = String, Path, description = "`<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]`")),
    responses((status = 200, description = "The tile's bytes", content_type = "application/octet-stream"),
        (status = 404, body = Problem)))]
pub async fn tile(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
) -> Result<Response, Problem> {
    let not_found = || Problem::new(ProblemKind::NotFound, "no such tile");
    let id = TileId::from_path(&format!("tile/{path}")).ok_or_else(not_found)?;
    let files = state.custos.ledger_files().map_err(ledger_unreadable)?;
    let full = id.is_full();
    let read = tokio::task::spawn_blocking(move || {
        // A superseded partial is served as the prefix of the tile that
        // replaced it (the same bytes), as C2SP clients expect.
        match id.level {
            None => custos_ledger::log::read_bundle(files.as_ref(), id).ok(),
            Some(level) => TileFiles::over(files)
                .read(level, id.index, id.width)
                .ok()
                .map(|bytes| bytes.to_vec()),
        }
    })
    .await
    .map_err(|_| Problem::new(ProblemKind::Internal, "the read failed"))?;
    let body = read.ok_or_else(not_found)?;
    // Full tiles never change; partial ones are superseded.
    let cache = if full {
        "public, max-age=31536000, immutable"
    } else {
        "no-store"
    };
    Ok(bytes("application/octet-stream", body, cache))
}
