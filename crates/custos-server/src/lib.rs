//! The Custos HTTP API: every requester and overseer action of the CLI over
//! the network, through the same broker calls.
//!
//! - [`problem`]: RFC 9457 errors with stable types.
//! - `auth`: bearer tokens (checked by the broker) and per-token rate limits.
//! - `body`: JSON bodies whose rejections are problems too.
//! - `routes`: the `/v1` handlers; `tiles`: the public ledger read paths.
//! - [`openapi`]: the OpenAPI 3.1 document, generated from the handlers.
//!
//! Connections are served by hyper directly (not `axum::serve`) so that a
//! slow client's headers time out, TLS (rustls) and plain TCP share one
//! path, and shutdown drains in-flight requests before the ledger closes.
//!
//! # One door
//!
//! This crate (like the CLI) sees data only through `custos_broker::Custos`,
//! and the compiler holds it to that. It does not depend on `custos-store`
//! or `custos-engine`, so it cannot name a dataset reader:
//!
//! ```compile_fail,E0432
//! use custos_store::DatasetReader;
//! ```
//!
//! and the broker keeps its home (master key, dataset files, catalogue),
//! its subject commitments and its ledger appends to itself:
//!
//! ```compile_fail,E0624
//! fn peek(custos: &custos_broker::Custos) {
//!     let _home = custos.home();
//! }
//! ```
//!
//! ```compile_fail,E0624
//! fn forge(custos: &custos_broker::Custos, entry: &custos_ledger::Entry) {
//!     let _ = custos.append(entry);
//! }
//! ```
//!
//! ```compile_fail,E0624
//! fn commit(custos: &custos_broker::Custos) {
//!     let _ = custos.subjects();
//! }
//! ```
//!
//! Nor can it claim to be someone: an [`Actor`](custos_broker::Actor) comes
//! only from a token (`Custos::authenticate`) or, on a home without
//! principals, the bootstrap console (`Custos::actor(None)`):
//!
//! ```compile_fail,E0599
//! let _ = custos_broker::Actor::LocalAdmin;
//! ```
//!
//! nor copy out of, take apart or change one it was given:
//!
//! ```compile_fail,E0603
//! fn promote(actor: custos_broker::Actor) {
//!     let custos_broker::Actor(custos_broker::Acting::Principal(mut p)) = actor else {
//!         return;
//!     };
//!     p.roles.push(custos_model::Role::Admin);
//! }
//! ```
//!
//! A master key from the environment is opaque (no derivation, no
//! unwrapping outside the broker):
//!
//! ```compile_fail,E0599
//! fn derive(key: &custos_broker::ExternalKey) {
//!     let _ = key.derive("pseudonym-tokens/x");
//! }
//! ```
//!
//! A receipt of a durable append cannot be made up with its constructor
//! (its field is private), so no answer that carries one is built by
//! accident outside the broker (it is `Deserialize`, for clients reading
//! answers; that is the one deliberate way to make one):
//!
//! ```compile_fail,E0423
//! let _ = custos_broker::Recorded(7);
//! ```
//!
//! The control: what the broker does publish compiles.
//!
//! ```
//! fn public(custos: &custos_broker::Custos) -> std::path::PathBuf {
//!     let _ = custos.verifier_key();
//!     custos.ledger_dir()
//! }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod alerts;
mod answers;
mod auth;
mod body;
mod console;
mod extracts;
mod matches;
pub mod openapi;
mod peer;
pub mod problem;
mod routes;
mod tiles;

pub use auth::RateLimit;
pub use peer::{HttpPeer, is_loopback};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use custos_broker::Custos;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::problem::{Problem, ProblemKind};

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is refused.
    #[error("{0}")]
    Config(String),
    /// Binding or accepting failed.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        cause: std::io::Error,
    },
    /// Closing the broker (its ledger) failed.
    #[error(transparent)]
    Broker(#[from] custos_broker::BrokerError),
}

/// Certificate chain and private key files (PEM) for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// How the server listens and what it allows.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (loopback unless TLS is configured).
    pub listen: SocketAddr,
    /// TLS certificate and key; required for a non-loopback address.
    pub tls: Option<TlsFiles>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Longest a request may take once its headers are in.
    pub request_timeout: Duration,
    /// Longest one step of a match job may take (`/v1/matches…`).
    pub match_timeout: Duration,
    /// Longest a client may take to send its request headers.
    pub header_timeout: Duration,
    /// Requests handled at once; more get `503 overloaded`.
    pub max_in_flight: usize,
    /// Open connections at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Requests per principal.
    pub rate_limit: RateLimit,
    /// Longest shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// How often unusual-browsing rules run on new ledger entries.
    pub detect_every: Duration,
    /// How often each principal's day is compared with its peers.
    pub peer_scan_every: Duration,
}

impl ServerConfig {
    /// Defaults for `listen`: 64 KiB bodies, 30 s per request (30 min per
    /// step of a match, whose point lists the job sizes), 10 s for
    /// headers, 256 requests in flight, 1,024 connections, 100 requests/s
    /// per principal (burst 200), 30 s to drain at shutdown.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            tls: None,
            body_limit: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            match_timeout: Duration::from_secs(30 * 60),
            header_timeout: Duration::from_secs(10),
            max_in_flight: 256,
            max_connections: 1024,
            rate_limit: RateLimit {
                per_second: std::num::NonZeroU32::new(100).unwrap_or(std::num::NonZeroU32::MIN),
                burst: std::num::NonZeroU32::new(200).unwrap_or(std::num::NonZeroU32::MIN),
            },
            shutdown_grace: Duration::from_secs(30),
            detect_every: Duration::from_secs(1),
            peer_scan_every: Duration::from_secs(600),
        }
    }

    fn check(&self) -> Result<(), ServerError> {
        if !self.listen.ip().is_loopback() && self.tls.is_none() {
            return Err(ServerError::Config(format!(
                "refusing to listen on {} without TLS: tokens and records would cross the network in the clear; pass --tls-cert and --tls-key, or listen on 127.0.0.1",
                self.listen
            )));
        }
        Ok(())
    }
}

/// Runs the unusual-browsing rules on new ledger entries every `every`
/// and the peer comparison every `peers_every`. A failed pass is logged
/// and retried: the detector's cursor has not moved, so nothing is missed.
async fn detect_forever(custos: Arc<Custos>, every: Duration, peers_every: Duration) {
    let mut peers_due = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = custos.detect_pending().await {
            tracing::error!(error = %e, "unusual-browsing detection failed; it will retry");
        }
        if tokio::time::Instant::now() >= peers_due {
            if let Err(e) = custos.scan_peers().await {
                tracing::error!(error = %e, "the peer comparison failed; it will retry");
            }
            peers_due = tokio::time::Instant::now() + peers_every;
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    custos: Arc<Custos>,
    limiter: auth::Limiter,
    in_flight: Arc<Semaphore>,
    request_timeout: Duration,
    match_timeout: Duration,
    sessions: console::Sessions,
    /// Whether session cookies are marked `Secure` (served over TLS).
    secure_cookies: bool,
}

/// The application: every route, with limits, logs and problem+json errors.
pub fn router(custos: Arc<Custos>, config: &ServerConfig) -> Router {
    let state = Arc::new(AppState {
        custos,
        limiter: auth::Limiter::new(config.rate_limit),
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        request_timeout: config.request_timeout,
        match_timeout: config.match_timeout,
        sessions: console::Sessions::default(),
        secure_cookies: config.tls.is_some(),
    });
    let v1 = Router::new()
        .route("/datasets", get(routes::datasets))
        .route("/datasets/{name}", get(routes::dataset))
        .route("/datasets/{name}/verify", post(routes::verify_dataset))
        .route(
            "/agreements",
            get(routes::agreements).post(routes::apply_agreement),
        )
        .route("/agreements/{id}", get(routes::agreement))
        .route("/agreements/{id}/suspend", post(routes::suspend_agreement))
        .route("/agreements/{id}/resume", post(routes::resume_agreement))
        .route("/agreements/{id}/revoke", post(routes::revoke_agreement))
        .route(
            "/principals",
            get(routes::principals).post(routes::add_principal),
        )
        .route("/principals/{name}/revoke", post(routes::revoke_principal))
        .route("/principals/{name}/facts", put(alerts::set_facts))
        .route("/alerts", get(alerts::list))
        .route("/alerts/scan", post(alerts::scan))
        .route("/alerts/{id}", get(alerts::show))
        .route("/alerts/{id}/resolve", post(alerts::resolve))
        .route("/lookups", post(routes::request_lookup))
        .route("/lookups/{id}", get(routes::lookup))
        .route("/lookups/{id}/approvals", post(routes::approve_lookup))
        .route("/lookups/{id}/fetch", post(routes::fetch_lookup))
        .route("/lookups/{id}/decline", post(routes::decline_lookup))
        .route("/approvals/queue", get(routes::approval_queue))
        .route("/subjects/protect", post(routes::protect_subject))
        .route("/queries", post(routes::query))
        .route("/extracts", post(extracts::extract))
        .route("/reports/subject", post(routes::subject_report))
        .route("/reports/agreements/{id}", get(routes::agreement_report))
        .route("/matches", post(matches::open))
        .route("/match-runs", post(matches::run))
        .route("/matches/{job}", get(matches::result))
        .route("/matches/{job}/confirm", post(matches::confirm))
        // Point lists are sized by their job, and read no further.
        .route(
            "/matches/{job}/points",
            post(matches::exchange).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/matches/{job}/finish",
            post(matches::finish).layer(DefaultBodyLimit::disable()),
        );
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/openapi.json", get(openapi::document))
        .route("/checkpoint", get(tiles::checkpoint))
        .route("/witnessed-checkpoint", get(tiles::witnessed_checkpoint))
        .route("/tile/{*path}", get(tiles::tile))
        .nest("/v1", v1)
        .nest("/console", console::routes(Arc::clone(&state)))
        .route(
            "/console/",
            get(|| async { axum::response::Redirect::permanent("/console") }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            guard,
        ))
        .with_state(state)
}

async fn not_found() -> Problem {
    Problem::new(
        ProblemKind::NotFound,
        "no such route; the API is described at /openapi.json",
    )
}

async fn method_not_allowed(method: Method) -> Problem {
    Problem::new(
        ProblemKind::MethodNotAllowed,
        format!("{method} is not allowed here; see /openapi.json"),
    )
}

/// A random request id (16 hex digits).
fn request_id() -> String {
    let mut bytes = [0u8; 8];
    // Without randomness the id is only less unique; it is not a secret.
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}

/// Around every request: a request id, the concurrency cap, the timeout,
/// and one access-log line that names the route template (never the
/// concrete path, query, body or token).
async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let id = request_id();
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(unmatched)".to_owned(), |m| m.as_str().to_owned());
    let mut response = match Arc::clone(&state.in_flight).try_acquire_owned() {
        Err(_) => Problem::new(
            ProblemKind::Overloaded,
            "the server is handling as many requests as it allows",
        )
        .retry_after(1)
        .into_response(),
        Ok(_permit) => match tokio::time::timeout(
            if route.starts_with("/v1/match") || route == "/v1/extracts" {
                state.match_timeout
            } else {
                state.request_timeout
            },
            tracing::Instrument::instrument(
                next.run(request),
                tracing::info_span!("request", request_id = %id),
            ),
        )
        .await
        {
            Ok(response) => response,
            Err(_) => Problem::new(
                ProblemKind::Timeout,
                "the request took longer than the server allows; if it was an action, the ledger says whether it happened",
            )
            .into_response(),
        },
    };
    if response.status() == StatusCode::INTERNAL_SERVER_ERROR {
        // The detail was logged under this id (see `problem`); the client
        // gets the id to quote, never the detail.
        response = Problem::new(
            ProblemKind::Internal,
            format!("the server failed; its log has the detail under request id {id}"),
        )
        .into_response();
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    tracing::info!(
        target: "custos_server::access",
        request_id = %id,
        method = %method,
        route = %route,
        status = response.status().as_u16(),
        micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    );
    response
}

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(Iterator::collect)
        .map_err(|e| {
            ServerError::Config(format!("TLS certificate {}: {e}", files.cert.display()))
        })?;
    if certs.is_empty() {
        return Err(ServerError::Config(format!(
            "TLS certificate {}: no certificate in the file",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| ServerError::Config(format!("TLS key {}: {e}", files.key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
    .map_err(|e| ServerError::Config(format!("TLS: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A bound, not yet serving, server.
pub struct Server {
    listener: TcpListener,
    custos: Arc<Custos>,
    config: ServerConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Server({:?}, tls: {})",
            self.listener.local_addr().ok(),
            self.tls.is_some()
        )
    }
}

impl Server {
    /// Checks the configuration and binds the address.
    pub async fn bind(custos: Custos, config: ServerConfig) -> Result<Self, ServerError> {
        config.check()?;
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|cause| ServerError::Io {
                context: format!("cannot listen on {}", config.listen),
                cause,
            })?;
        Ok(Self {
            listener,
            custos: Arc::new(custos),
            config,
            tls,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener.local_addr().map_err(|cause| ServerError::Io {
            context: "no local address".into(),
            cause,
        })
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets
    /// in-flight requests finish (up to the grace period) and closes the
    /// ledger, so no acknowledged entry is lost.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let app = router(Arc::clone(&self.custos), &self.config);
        // Detection runs beside the requests, never in their way.
        let detector = tokio::spawn(detect_forever(
            Arc::clone(&self.custos),
            self.config.detect_every,
            self.config.peer_scan_every,
        ));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let connections = Arc::new(Semaphore::new(self.config.max_connections));
        let header_timeout = self.config.header_timeout;
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = Arc::clone(&connections).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let mut request = request.map(axum::body::Body::new);
                    // The peer's address, for limits on failed authentication.
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    app.clone().oneshot(request)
                },
            );
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            match &self.tls {
                None => {
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    let watched = graceful.watch(connection);
                    tokio::spawn(async move {
                        let _ = watched.await;
                        drop(permit);
                    });
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let tls =
                            tokio::time::timeout(header_timeout, acceptor.accept(stream)).await;
                        if let Ok(Ok(tls)) = tls {
                            let connection = http.serve_connection(TokioIo::new(tls), service);
                            let _ = watcher.watch(connection).await;
                        }
                        drop(permit);
                    });
                }
            }
        }
        drop(self.listener);
        drop(app);
        detector.abort();
        let _ = detector.await;
        tracing::info!("shutting down: draining in-flight requests");
        if tokio::time::timeout(self.config.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
        match Arc::try_unwrap(self.custos) {
            Ok(custos) => tokio::task::spawn_blocking(move || custos.close())
                .await
                .map_err(|_| ServerError::Config("closing the ledger panicked".into()))??,
            Err(_) => {
                // A connection task still holds the broker (grace period
                // over). The ledger's entries are durable when
                // acknowledged; the next start replays its journal.
                tracing::warn!("requests still running at exit; the ledger recovers on next start");
            }
        }
        Ok(())
    }
}
