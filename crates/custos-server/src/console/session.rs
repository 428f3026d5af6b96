//! Console sessions: an API token exchanged for a random session id in an
//! HttpOnly, SameSite=Strict cookie, with a CSRF token per session.
//!
//! The session keeps the token in server memory (never in the cookie) and
//! every request authenticates it again through the broker, so a revoked
//! token ends its sessions at the next click. Sessions live in this
//! process: a restart signs everyone out. They expire after 30 minutes
//! idle and 8 hours in all; at most [`MAX_SESSIONS`] exist at once (the
//! oldest go first).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Name of the session cookie.
pub(crate) const COOKIE: &str = "custos_session";
/// Longest a session stays without a request.
pub(crate) const IDLE: Duration = Duration::from_secs(30 * 60);
/// Longest a session lives.
pub(crate) const LIFETIME: Duration = Duration::from_secs(8 * 60 * 60);
/// Most sessions held at once.
pub(crate) const MAX_SESSIONS: usize = 10_000;
/// Most sessions one principal holds at once (a new one ends their
/// oldest), so no principal can fill the table and sign others out.
pub(crate) const MAX_PER_PRINCIPAL: usize = 8;

/// One signed-in browser.
struct Session {
    principal: String,
    token: Zeroizing<String>,
    csrf: Zeroizing<String>,
    created: Instant,
    last_seen: Instant,
}

/// What a request learns from its session cookie.
pub(crate) struct Signed {
    /// The API token to authenticate with.
    pub(crate) token: Zeroizing<String>,
    /// The session's CSRF token, to put in forms and check on posts.
    pub(crate) csrf: Zeroizing<String>,
}

/// The sessions of this process, keyed by SHA-256 of the session id (so
/// the ids themselves are not kept).
#[derive(Default)]
pub(crate) struct Sessions {
    by_id: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions")
    }
}

fn random_hex() -> Result<Zeroizing<String>, getrandom::Error> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut())?;
    Ok(Zeroizing::new(hex::encode(bytes.as_ref())))
}

fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.by_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a session of `principal` for `token`; returns the session id
    /// for the cookie.
    pub(crate) fn start(
        &self,
        principal: &str,
        token: &str,
    ) -> Result<Zeroizing<String>, getrandom::Error> {
        let id = random_hex()?;
        let now = Instant::now();
        let session = Session {
            principal: principal.to_owned(),
            token: Zeroizing::new(token.to_owned()),
            csrf: random_hex()?,
            created: now,
            last_seen: now,
        };
        let mut all = self.lock();
        let mut theirs: Vec<([u8; 32], Instant)> = all
            .iter()
            .filter(|(_, s)| s.principal == principal)
            .map(|(k, s)| (*k, s.last_seen))
            .collect();
        if theirs.len() >= MAX_PER_PRINCIPAL {
            theirs.sort_by_key(|(_, seen)| *seen);
            for (key, _) in &theirs[..=theirs.len() - MAX_PER_PRINCIPAL] {
                all.remove(key);
            }
        }
        if all.len() >= MAX_SESSIONS {
            all.retain(|_, s| alive(s, now));
            if all.len() >= MAX_SESSIONS
                && let Some(oldest) = all.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k)
            {
                all.remove(&oldest);
            }
        }
        all.insert(key_of(&id), session);
        Ok(id)
    }

    /// The live session with id `id`, touched; an expired one is removed.
    pub(crate) fn get(&self, id: &str) -> Option<Signed> {
        let key = key_of(id);
        let now = Instant::now();
        let mut all = self.lock();
        let session = all.get_mut(&key)?;
        if !alive(session, now) {
            all.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(Signed {
            token: session.token.clone(),
            csrf: session.csrf.clone(),
        })
    }

    /// Ends the session with id `id` (signing out, or a revoked token).
    pub(crate) fn end(&self, id: &str) {
        self.lock().remove(&key_of(id));
    }

    /// Sessions held now (for tests and status).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    now.saturating_duration_since(s.last_seen) < IDLE
        && now.saturating_duration_since(s.created) < LIFETIME
}

/// Whether a submitted CSRF token is the session's (constant time).
pub(crate) fn csrf_matches(expected: &str, submitted: &str) -> bool {
    expected.len() == submitted.len() && bool::from(expected.as_bytes().ct_eq(submitted.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_only_and_ends() {
        let sessions = Sessions::default();
        let id = sessions.start("p1", "custos_x_secret").unwrap();
        let signed = sessions.get(&id).unwrap();
        assert_eq!(signed.token.as_str(), "custos_x_secret");
        assert!(sessions.get("0".repeat(64).as_str()).is_none());
        assert!(csrf_matches(&signed.csrf, &signed.csrf.clone()));
        assert!(!csrf_matches(&signed.csrf, ""));
        assert!(!csrf_matches(&signed.csrf, &"f".repeat(64)));
        sessions.end(&id);
        assert!(sessions.get(&id).is_none());
        assert_eq!(sessions.len(), 0);
    }

    #[test]
    fn one_principal_cannot_crowd_out_the_others() {
        let sessions = Sessions::default();
        let other = sessions.start("p2", "custos_y").unwrap();
        let first = sessions.start("p1", "custos_x").unwrap();
        for _ in 0..MAX_SESSIONS + 5 {
            sessions.start("p1", "custos_x").unwrap();
        }
        assert_eq!(sessions.len(), MAX_PER_PRINCIPAL + 1);
        assert!(sessions.get(&other).is_some(), "p2's session survives");
        assert!(sessions.get(&first).is_none(), "p1's oldest went first");
    }
}
