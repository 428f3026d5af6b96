//! JSON request bodies whose every rejection is a problem+json response.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::problem::{Problem, ProblemKind};

/// A JSON body of type `T` (`Content-Type: application/json`, at most the
/// server's body limit, unknown fields refused by `T`'s serde attributes).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(problem_of(&rejection)),
        }
    }
}

fn problem_of(rejection: &JsonRejection) -> Problem {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            ProblemKind::UnsupportedMediaType,
            "send the body as `Content-Type: application/json`",
        ),
        JsonRejection::JsonSyntaxError(_) => {
            Problem::new(ProblemKind::MalformedBody, "the body is not valid JSON")
        }
        JsonRejection::JsonDataError(e) => Problem::new(
            ProblemKind::MalformedBody,
            // serde's message names fields and types, never values.
            format!(
                "the body does not have the expected fields: {}",
                e.body_text()
            ),
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            ProblemKind::BodyTooLarge,
            "the body is larger than this server accepts",
        ),
        _ => Problem::new(ProblemKind::MalformedBody, "the body could not be read"),
    }
}
