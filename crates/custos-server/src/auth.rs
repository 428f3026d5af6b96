//! Bearer-token authentication and per-token rate limits.
//!
//! The token is checked by the broker (hashed, constant-time, revoked
//! tokens refused, failures ledgered); the rate limit is per principal, so
//! one busy caller cannot starve the others. An address that fails
//! authentication more than 5 times a second (burst 20) is refused before
//! the broker is asked, so bad tokens cannot flood the ledger.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Failed authentications allowed per client address (sustained per
/// second, and at once); beyond them the address is refused for a while
/// without reaching the broker, so a flood of bad tokens cannot flood the
/// ledger with denials.
const FAILED_AUTH_PER_SECOND: u32 = 5;
const FAILED_AUTH_BURST: u32 = 20;
/// Most addresses remembered as blocked (older entries are dropped first).
const MAX_BLOCKED: usize = 10_000;

/// The per-principal limiter, and the per-address limiter of failed
/// authentications.
pub(crate) struct Limiter {
    limiter: DefaultKeyedRateLimiter<String>,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limiter")
    }
}

impl Limiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        let failures =
            Quota::per_second(NonZeroU32::new(FAILED_AUTH_PER_SECOND).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(FAILED_AUTH_BURST).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: RateLimiter::keyed(
                Quota::per_second(limit.per_second).allow_burst(limit.burst),
            ),
            failures: RateLimiter::keyed(failures),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses an address that failed authentication too often lately.
    pub(crate) fn check_address(&self, address: Option<IpAddr>) -> Result<(), Problem> {
        let Some(address) = address else {
            return Ok(());
        };
        let now = Instant::now();
        let mut blocked = self
            .blocked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match blocked.get(&address) {
            Some(until) if *until > now => {
                let wait = until.saturating_duration_since(now);
                Err(Problem::new(
                    ProblemKind::RateLimited,
                    "too many failed authentications from this address",
                )
                .retry_after(wait.as_secs().max(1)))
            }
            Some(_) => {
                blocked.remove(&address);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failed authentication; past the limit, blocks the address.
    pub(crate) fn note_failure(&self, address: Option<IpAddr>) {
        let Some(address) = address else { return };
        if let Err(not_until) = self.failures.check_key(&address) {
            let wait = not_until
                .wait_time_from(DefaultClock::default().now())
                .max(Duration::from_secs(1));
            let mut blocked = self
                .blocked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if blocked.len() >= MAX_BLOCKED {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
                if blocked.len() >= MAX_BLOCKED {
                    blocked.clear();
                }
            }
            blocked.insert(address, Instant::now() + wait);
        }
    }

    /// Admits one request of `principal` or says how long to wait.
    pub(crate) fn admit(&self, principal: &str) -> Result<(), Problem> {
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
        let address = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        state.limiter.check_address(address)?;
        let actor = match state.custos.authenticate(token).await {
            Ok(a) => a,
            Err(e) => {
                if matches!(e, custos_broker::BrokerError::Auth(_)) {
                    state.limiter.note_failure(address);
                }
                return Err(e.into());
            }
        };
        state.limiter.admit(actor.id())?;
        Ok(Self(actor))
    }
}
