//! JSON request bodies whose every rejection is a problem+json response,
//! and never echoes what it refused.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
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
        if !is_json(req.headers().get(CONTENT_TYPE)) {
            return Err(Problem::new(
                ProblemKind::UnsupportedMediaType,
                "send the body as `Content-Type: application/json`",
            ));
        }
        // `Bytes` honours the server's body limit.
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    ProblemKind::BodyTooLarge,
                    "the body is larger than this server accepts",
                )
            } else {
                Problem::new(ProblemKind::MalformedBody, "the body could not be read")
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|e| problem_of(&e))
    }
}

/// `application/json` or a `+json` type, parameters aside.
fn is_json(value: Option<&axum::http::HeaderValue>) -> bool {
    let Some(essence) = value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
    else {
        return false;
    };
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|s| s.ends_with("+json"))
}

fn problem_of(e: &serde_json::Error) -> Problem {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            Problem::new(ProblemKind::MalformedBody, "the body is not valid JSON")
        }
        Category::Data => Problem::new(
            ProblemKind::MalformedBody,
            format!(
                "the body does not have the expected fields: {} at line {} column {}",
                data_error_without_values(e),
                e.line(),
                e.column()
            ),
        ),
    }
}

/// What serde refused, in words that come from the target type only: serde
/// quotes the refused value (`invalid type: integer `123456789``) and names
/// unknown keys, either of which may be an identifier. Only the kind of
/// error and what was expected (field names, types) are kept; a message
/// of any other shape (a type's own validation) becomes a generic one.
fn data_error_without_values(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let message = message.strip_suffix(&position).unwrap_or(&message);
    // What follows the last ", expected " is the target type's own words;
    // a refused string containing ", expected " comes before it.
    let expected = message
        .rfind(", expected ")
        .map(|at| &message[at..])
        .unwrap_or_default();
    for kind in [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
        "unknown field",
    ] {
        if message.starts_with(kind) {
            return format!("{kind}{expected}");
        }
    }
    // `missing field `x`` and `duplicate field `x``: x is one of the type's
    // own field names (a duplicate must have matched one).
    for kind in ["missing field `", "duplicate field `"] {
        if let Some(rest) = message.strip_prefix(kind)
            && rest.ends_with('`')
            && !rest[..rest.len() - 1].contains('`')
        {
            return message.to_owned();
        }
    }
    "a value does not match what this route expects".to_owned()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Facts {
        own_id: String,
        tags: Option<std::collections::BTreeMap<String, u32>>,
    }

    fn refusal(body: &str) -> String {
        let e = serde_json::from_str::<Facts>(body).unwrap_err();
        super::data_error_without_values(&e)
    }

    #[test]
    fn refused_values_are_not_echoed() {
        let m = refusal(r#"{"own_id": 123456789}"#);
        assert!(
            !m.contains("123456789") && m.contains("expected a string"),
            "{m}"
        );
        let m = refusal(r#"{"own_id": "x", "987-65-4321": 1}"#);
        assert!(!m.contains("987-65-4321") && m.contains("own_id"), "{m}");
        // An escaped quote inside the refused value does not end the cut.
        let m = refusal(r#"{"own_id": "x", "a\"987-65-4321\"b": 1}"#);
        assert!(!m.contains("987-65-4321"), "{m}");
        // A map key (a path serde would print) is never echoed.
        let m = refusal(r#"{"own_id": "x", "tags": {"987-65-4321": "x"}}"#);
        assert!(
            !m.contains("987-65-4321") && m.contains("expected u32"),
            "{m}"
        );
        // A refused string that imitates the tail is cut with the value.
        let m = refusal(r#"{"own_id": "x", "tags": {"k": "987-65-4321, expected z"}}"#);
        assert!(
            !m.contains("987-65-4321") && m.ends_with("expected u32"),
            "{m}"
        );
        assert_eq!(refusal(r#"{}"#), "missing field `own_id`");
    }
}
