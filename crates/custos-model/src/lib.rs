//! The Custos model: the vocabulary every other crate shares, as plain data.
//!
//! - [`schema`]: a dataset's schema (TOML) that classes every column, its
//!   types, bounds and domains, the value codecs (decimal cents, dates as
//!   days) and the canonical spelling of a subject id.
//! - [`principal`]: principals, roles, and the pure half of API tokens
//!   (parsing, hashing, constant-time comparison).
//! - [`AgreementStatus`]: an agreement's state as a whole.
//!
//! No I/O, no async, no Arrow: policy, privacy and fuzz targets build on
//! this without compiling the storage engine.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod principal;
pub mod schema;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use principal::{Principal, PrincipalError, Role};
pub use schema::{ColumnClass, ColumnType, DatasetSchema, SchemaError};

/// An agreement's state as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AgreementStatus {
    /// In force (within its validity window).
    Active,
    /// Temporarily grants nothing; can be resumed.
    Suspended,
    /// Permanently grants nothing.
    Revoked,
}

impl AgreementStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Revoked => "revoked",
        }
    }

    /// Whether a change from `self` to `to` is allowed: suspend an active
    /// one, resume a suspended one, revoke either; a revocation is final.
    pub fn may_become(self, to: Self) -> bool {
        matches!(
            (self, to),
            (Self::Active, Self::Suspended)
                | (Self::Suspended, Self::Active)
                | (Self::Active | Self::Suspended, Self::Revoked)
        )
    }
}

impl fmt::Display for AgreementStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for AgreementStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Active, Self::Suspended, Self::Revoked]
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown agreement state `{s}`"))
    }
}
