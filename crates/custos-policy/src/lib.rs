//! Custos policy: agreements as code.
//!
//! - [`agreement`]: the TOML model of a data-sharing agreement, parsing and
//!   validation against dataset schemas and the law's limits (pure).
//! - [`decide`]: active agreements compiled to Cedar policies, guard rules,
//!   decisions with reasons.
//! - [`scope`]: row-scope expressions, parsed with `sqlparser` and held to an
//!   allow-list (pure).
//!
//! Storing versions, suspending, revoking and deciding requests (Cedar) build
//! on this; see ARCHITECTURE.md.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod agreement;
pub mod decide;
pub mod scope;

pub use agreement::{Agreement, AgreementError, Grant, Limits, Mode};
pub use scope::{RowScope, ScopeError};
