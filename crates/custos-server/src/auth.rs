//! Bearer-token authentication and per-token rate limits.
//!
//! The token is checked by the broker (hashed, constant-time, revoked
//! tokens refused, failures ledgered); the rate limit is per principal, so
//! one busy caller cannot starve the others.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use custos_broker::Actor;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::AppState;
use crate::problem::{Problem, ProblemKind};

/// Longest `Authorization` header value looked at.
const MAX_TOKEN_BYTES: usize = 256;

/// Requests per second and burst allowed per principal.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: NonZeroU32,
    /// Requests allowed at once after a quiet spell.
    pub burst: NonZeroU32,
}

/// The per-principal limiter.
pub(crate) struct Limiter {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limiter")
    }
}

impl Limiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self {
            limiter: RateLimiter::keyed(
                Quota::per_second(limit.per_second).allow_burst(limit.burst),
            ),
        }
    }

    /// Admits one request of `principal` or says how long to wait.
    fn admit(&self, principal: &str) -> Result<(), Problem> {
        self.limiter
            .check_key(&principal.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Problem::new(
                    ProblemKind::RateLimited,
                    "this token sent more requests than its rate limit allows",
                )
                .retry_after(wait.as_secs().max(1))
            })
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Actor);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let missing = || {
            Problem::new(
                ProblemKind::Unauthorized,
                "send `Authorization: Bearer <token>` with a token from `custos principal add`",
            )
        };
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(missing)?;
        if header.len() > MAX_TOKEN_BYTES {
            return Err(Problem::new(
                ProblemKind::Unauthorized,
                "the Authorization header is too long to be a Custos token",
            ));
        }
        let text = header.to_str().map_err(|_| missing())?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(missing)?;
        let principal = state.custos.authenticate(token).await?;
        state.limiter.admit(&principal.id)?;
        Ok(Self(Actor::Principal(principal)))
    }
}
