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
            format!(
                "the body does not have the expected fields: {}",
                without_values(&e.body_text())
            ),
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            ProblemKind::BodyTooLarge,
            "the body is larger than this server accepts",
        ),
        _ => Problem::new(ProblemKind::MalformedBody, "the body could not be read"),
    }
}

/// serde's message with every quoted value cut out: it quotes what it
/// refused (`invalid type: integer `123456789``), which may be an
/// identifier; field names and types stay.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '`' || c == '"' => {
                out.push(c);
                quote = Some(c);
            }
            None => out.push(c),
        }
    }
    if quote.is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn refused_values_are_not_echoed() {
        let m = super::without_values(
            "own_id: invalid type: integer `123456789`, expected a string at line 1 column 19",
        );
        assert!(
            !m.contains("123456789") && m.contains("own_id") && m.contains("expected a string")
        );
        let m = super::without_values("unknown field \"987-65-4321\", expected one of `own_id`");
        assert!(!m.contains("987-65-4321"));
    }
}
