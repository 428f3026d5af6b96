//! Errors as RFC 9457 `application/problem+json`, each with a stable
//! `type` that clients can match on.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use custos_broker::BrokerError;
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The stable kinds of problem; `type` is `urn:custos:problem:<kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// No bearer token, or a malformed, unknown or revoked one.
    Unauthorized,
    /// The caller may not do this (recorded in the ledger).
    Denied,
    /// The request's content was refused (bad agreement, bad SQL …).
    Invalid,
    /// The body is not valid JSON, or not the expected shape.
    MalformedBody,
    /// The body is larger than the server accepts.
    BodyTooLarge,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// No such route or resource.
    NotFound,
    /// The request contradicts the resource's current state.
    Conflict,
    /// The route exists, not with this method.
    MethodNotAllowed,
    /// Too many requests for this token; retry later.
    RateLimited,
    /// The server is at its concurrency cap; retry later.
    Overloaded,
    /// The request took longer than the server allows.
    Timeout,
    /// The ledger cannot write: nothing was done (fail closed).
    LedgerUnavailable,
    /// A dataset's files are not as ingested: nothing was read from them.
    DatasetRefused,
    /// Something failed inside; details are in the server's log only.
    Internal,
}

impl ProblemKind {
    /// The stable slug in `type`.
    pub fn slug(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Denied => "denied",
            Self::Invalid => "invalid",
            Self::MalformedBody => "malformed-body",
            Self::BodyTooLarge => "body-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::NotFound => "not-found",
            Self::Conflict => "conflict",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::RateLimited => "rate-limited",
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
            Self::LedgerUnavailable => "ledger-unavailable",
            Self::DatasetRefused => "dataset-refused",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::Invalid | Self::MalformedBody => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded | Self::LedgerUnavailable | Self::DatasetRefused => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Unauthorized => "Authentication required",
            Self::Denied => "Denied",
            Self::Invalid => "Request refused",
            Self::MalformedBody => "Malformed request body",
            Self::BodyTooLarge => "Request body too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::NotFound => "Not found",
            Self::Conflict => "Conflict",
            Self::MethodNotAllowed => "Method not allowed",
            Self::RateLimited => "Too many requests",
            Self::Overloaded => "Server busy",
            Self::Timeout => "Request timed out",
            Self::LedgerUnavailable => "Ledger unavailable",
            Self::DatasetRefused => "Dataset refused",
            Self::Internal => "Internal error",
        }
    }
}

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:custos:problem:<kind>`: stable, for clients to match on.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened, for a person. Never contains a subject id, token or
    /// SQL literal that the caller did not already send.
    pub detail: String,
    /// Seconds to wait before retrying (rate limits and overload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem of `kind` with `detail`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:custos:problem:{}", kind.slug()),
            title: kind.title().to_owned(),
            status: kind.status().as_u16(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` hint.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = self.retry_after;
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = retry
            && let Ok(v) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

impl From<BrokerError> for Problem {
    fn from(e: BrokerError) -> Self {
        match &e {
            BrokerError::Auth(_) => Self::new(ProblemKind::Unauthorized, e.to_string()),
            BrokerError::Denied(_) => Self::new(ProblemKind::Denied, e.to_string()),
            BrokerError::Invalid(_) => Self::new(ProblemKind::Invalid, e.to_string()),
            BrokerError::Conflict(_) => Self::new(ProblemKind::Conflict, e.to_string()),
            BrokerError::NotFound(_)
            | BrokerError::Dataset(custos_broker::DatasetError::NotFound(_)) => {
                Self::new(ProblemKind::NotFound, e.to_string())
            }
            BrokerError::Unavailable(_) => Self::new(ProblemKind::LedgerUnavailable, e.to_string()),
            BrokerError::Dataset(custos_broker::DatasetError::Tampered { dataset, .. }) => {
                // Which file and how stay in the log (and the ledger).
                tracing::error!(error = %e, "dataset refused");
                Self::new(
                    ProblemKind::DatasetRefused,
                    format!(
                        "dataset `{dataset}` is refused: its files are not as ingested, so nothing was read from them (ledgered as dataset.tampered; an administrator runs `custos dataset verify {dataset}`)"
                    ),
                )
            }
            BrokerError::Ledger(_) => {
                tracing::error!(error = %e, "ledger failure: request refused");
                Self::new(
                    ProblemKind::LedgerUnavailable,
                    "the ledger cannot record this request, so nothing was done",
                )
            }
            _ => {
                // Details may name files or keys: log them, never send them.
                tracing::error!(error = %e, "internal error");
                Self::new(ProblemKind::Internal, "the server failed; see its log")
            }
        }
    }
}
