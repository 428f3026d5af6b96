//! Custos policy: agreements as code.
//!
//! - [`agreement`]: the TOML model of a data-sharing agreement, parsing and
//!   validation against dataset schemas and the law's limits (pure).
//! - [`decide`]: active agreements compiled to Cedar policies, guard rules,
//!   decisions with reasons.
//! - [`scope`]: row-scope expressions, parsed with `sqlparser` and held to an
//!   allow-list (pure).
//! - [`scope_filter`]: a row scope compiled against a schema and evaluated
//!   on rows (pure).
//!
//! Storing versions, suspending, revoking and deciding requests (Cedar) build
//! on this; see ARCHITECTURE.md.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod agreement;
pub mod decide;
pub mod extracts;
pub mod matches;
pub mod monitoring;
pub mod scope;
pub mod scope_filter;

pub use agreement::{Agreement, AgreementError, Grant, Limits, Mode, PrivacyGrant, PrivacyMeasure};
pub use extracts::{Generalisation, PseudonymousGrant};
pub use matches::{MatchGrant, Reveal};
pub use monitoring::{CompiledMonitoring, Monitoring, UsualHours};
pub use scope::{RowScope, ScopeError};
pub use scope_filter::{ScopeFilter, ScopeValue};
