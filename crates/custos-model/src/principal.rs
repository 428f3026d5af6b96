//! Principals (authenticated callers), their roles and API tokens.
//!
//! A token is `custos_<principal id>_<64 hex secret>`: 256 random bits. Only
//! SHA-256 of the secret is stored; authentication looks the principal up by
//! id and compares hashes in constant time. Every failure (unknown id, wrong
//! secret, revoked, malformed) gives the same error, so a caller learns
//! nothing about which principals exist.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// Manages principals, datasets and agreements.
    Admin,
    /// Approves identified look-ups (a second person).
    Approver,
    /// Asks questions under agreements.
    Requester,
    /// Reads reports and verifies the ledger.
    Overseer,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Approver, Role::Requester, Role::Overseer];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Approver => "approver",
            Self::Requester => "requester",
            Self::Overseer => "overseer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role `{s}`: use admin, approver, requester or overseer")
            })
    }
}

/// A principal as stored (never with its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Principal {
    /// Stable id, `p` + 16 hex digits; what the ledger records as the actor.
    pub id: String,
    /// Unique human name (login-like).
    pub name: String,
    /// Organisation.
    pub org: String,
    /// Roles, sorted and distinct.
    pub roles: Vec<Role>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Id of the principal who created it (`local-admin` at bootstrap).
    pub created_by: String,
    /// RFC 3339 revocation time, if revoked.
    pub revoked_at: Option<String>,
}

impl Principal {
    /// Whether the principal holds `role` and is not revoked.
    pub fn has_role(&self, role: Role) -> bool {
        self.revoked_at.is_none() && self.roles.contains(&role)
    }
}

/// A freshly issued token: shown once, zeroized on drop, never stored.
pub struct IssuedToken(Zeroizing<String>);

impl IssuedToken {
    /// Wraps a token text made by the store's `issue`.
    pub fn new(text: Zeroizing<String>) -> Self {
        Self(text)
    }
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IssuedToken(<redacted>)")
    }
}

impl IssuedToken {
    /// The token text, to print once to the person it is for.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

/// Why authentication or principal management failed. Never holds a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrincipalError {
    /// The token is malformed, unknown, wrong or revoked (deliberately one error).
    #[error("the API token is not valid (malformed, unknown or revoked)")]
    BadToken,
    /// A principal name that breaks the naming rule.
    #[error("principal name `{0}` is not allowed: use 1-64 characters of a-z, 0-9, ., _ and -")]
    BadName(String),
    /// An organisation name that is empty or too long.
    #[error("organisation must be 1-128 printable characters")]
    BadOrg,
    /// No role given.
    #[error("a principal needs at least one role (--role admin|approver|requester|overseer)")]
    NoRole,
}

/// Checks a principal name: `[a-z0-9._-]{1,64}`.
pub fn valid_principal_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Checks an organisation name.
pub fn valid_org(org: &str) -> bool {
    (1..=128).contains(&org.len()) && org.chars().all(|c| !c.is_control())
}

/// Splits a token into the principal id and the hash of its secret.
pub fn parse_token(token: &str) -> Result<(String, [u8; 32]), PrincipalError> {
    let rest = token
        .trim()
        .strip_prefix("custos_")
        .ok_or(PrincipalError::BadToken)?;
    let (id, secret) = rest.split_once('_').ok_or(PrincipalError::BadToken)?;
    let well_formed = id.len() == 17
        && id.starts_with('p')
        && id[1..].bytes().all(|b| b.is_ascii_hexdigit())
        && secret.len() == 64
        && secret.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(PrincipalError::BadToken);
    }
    Ok((id.to_owned(), Sha256::digest(secret.as_bytes()).into()))
}

/// Compares a presented hash with the stored one in constant time.
pub fn hashes_match(presented: &[u8; 32], stored: &[u8]) -> bool {
    bool::from(presented.ct_eq(stored))
}

/// Parses a stored role list (`admin,requester`).
pub fn parse_roles(text: &str) -> Vec<Role> {
    let mut roles: Vec<Role> = text.split(',').filter_map(|r| r.parse().ok()).collect();
    roles.sort();
    roles.dedup();
    roles
}

/// Formats roles for storage.
pub fn format_roles(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_names() {
        assert_eq!(
            parse_roles("requester,admin,admin,bogus"),
            vec![Role::Admin, Role::Requester]
        );
        assert!("auditor".parse::<Role>().is_err());
        assert!(valid_principal_name("alice.smith"));
        assert!(!valid_principal_name("Alice"));
        assert!(!valid_principal_name(""));
    }
}
