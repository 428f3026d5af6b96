//! Witnessing Custos ledgers with the C2SP tlog-witness protocol.
//!
//! - [`dir`]: a witness's directory — its configuration (the logs it
//!   follows), its Ed25519 key, and the latest size and root it cosigned per
//!   log, kept durably.
//! - [`witness`]: the `add-checkpoint` decision (every check of the spec, in
//!   its order, and the atomic compare-and-swap of the stored size).
//! - [`serve`]: the HTTP endpoint `POST /add-checkpoint` (axum).
//! - [`collect`]: the log's side: submit each new checkpoint to every
//!   witness of a policy, with a consistency proof from the size that
//!   witness last cosigned, and publish it once the quorum has cosigned.
//!
//! A witness runs apart from any Custos home: it needs only the verifier
//! keys of the logs it follows.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod collect;
pub mod dir;
pub mod serve;
pub mod witness;

pub use collect::{Collector, RoundReport};
pub use dir::{WitnessConfig, WitnessDir, WitnessDirError};
pub use witness::{Refusal, Witness};
