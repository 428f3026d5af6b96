//! The witness's HTTP endpoint: `POST /add-checkpoint` (C2SP tlog-witness).
//!
//! Plain HTTP is enough: requests and answers are public and signed, so a
//! network attacker can delay or drop them but not forge either. Put the
//! witness behind a TLS proxy if its operators want confidentiality.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use custos_ledger::witness_wire::{ADD_CHECKPOINT_PATH, MAX_REQUEST_BYTES, SIZE_CONTENT_TYPE};

use crate::witness::{Refusal, Witness};

fn text(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn add_checkpoint(State(witness): State<Arc<Witness>>, body: Bytes) -> Response {
    match witness.add_checkpoint(&body).await {
        Ok(lines) => text(StatusCode::OK, "text/plain; charset=utf-8", lines),
        Err(Refusal::Conflict(size)) => text(
            StatusCode::CONFLICT,
            SIZE_CONTENT_TYPE,
            format!("{size}\n").into_bytes(),
        ),
        Err(refusal) => {
            let status =
                StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            text(
                status,
                "text/plain; charset=utf-8",
                format!("{refusal}\n").into_bytes(),
            )
        }
    }
}

async fn about(State(witness): State<Arc<Witness>>) -> Response {
    let origins: Vec<&str> = witness.origins().collect();
    text(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        format!(
            "A C2SP tlog-witness (Custos). POST {ADD_CHECKPOINT_PATH}. Logs followed:\n{}\n",
            origins.join("\n")
        )
        .into_bytes(),
    )
}

/// The witness's routes.
pub fn router(witness: Arc<Witness>) -> Router {
    Router::new()
        .route(ADD_CHECKPOINT_PATH, post(add_checkpoint))
        .route("/", get(about))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(witness)
}

/// A bound witness server.
#[derive(Debug)]
pub struct WitnessServer {
    listener: tokio::net::TcpListener,
    witness: Arc<Witness>,
}

impl WitnessServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(witness: Witness, addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: tokio::net::TcpListener::bind(addr).await?,
            witness: Arc::new(witness),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` resolves.
    pub async fn run(self, stop: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        axum::serve(self.listener, router(self.witness))
            .with_graceful_shutdown(stop)
            .await
    }
}
