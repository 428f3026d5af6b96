//! The Custos ledger: the append-only, tamper-evident record of every
//! request, decision and administrative change.
//!
//! - [`entry`]: entries and their canonical encoding (pure).
//! - [`tiles`]: C2SP tlog-tiles paths and entry bundles (pure).
//! - [`merkle`]: compact range, hash reader over tiles (RFC 6962 hashing via `tlog_tiles`).
//! - [`note`]: checkpoints signed as C2SP signed-notes (Ed25519).
//! - [`log`]: the durable, group-committed writer and its crash recovery.
//! - [`published`]: where the published files live (a directory, or any other [`PublishedFiles`]).
//! - [`read`]: entries and proofs from the published files, and proof checking.
//! - [`shared`]: a ledger several servers append to (a journal in a database, one integrator under a lease).
//! - [`verify`]: full verification against the checkpoint and an older one.
//! - [`key_change`]: rotating the signing key, and following the chain (pure).
//! - [`cosignature`]: witness cosignatures (C2SP `cosignature/v1`, pure).
//! - [`policy`]: witness policies in the Sigsum format (pure).
//! - [`witness_wire`]: the C2SP tlog-witness `add-checkpoint` bytes (pure).
//! - [`witnessed`]: the newest witnessed checkpoint and each witness's progress, on disk.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cosignature;
mod edge;
pub mod entry;
pub mod key_change;
pub mod log;
pub mod merkle;
pub mod note;
pub mod policy;
pub mod published;
pub mod read;
pub mod shared;
pub mod tiles;
pub mod verify;
pub mod witness_wire;
pub mod witnessed;

use std::path::PathBuf;

pub use cosignature::{Cosigner, WitnessKey};
pub use entry::{Decision, Entry, EntryError, SubjectCommitment, SubjectCommitter};
pub use log::{FaultPlan, Ledger, LedgerConfig};
pub use note::{CheckpointError, NoteSigner, VerifiedCheckpoint, verify_checkpoint};
pub use policy::{PolicyError, WitnessPolicy};
pub use published::{DirFiles, PublishedFiles};
pub use read::{
    ConsistencyProof, InclusionProof, LedgerReader, verify_consistency, verify_inclusion,
};
pub use shared::{JournalRecord, Sealer, SharedJournal, SharedLedger, SharedLedgerConfig};
pub use verify::{VerifyReport, verify_ledger, verify_published};
pub use witnessed::{WitnessedCheckpoint, verify_witnessed};

/// Serde for 32-byte hashes as hex strings (`#[serde(with = "custos_ledger::hex32")]`).
pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the hash as 64 hex digits.
    pub fn serialize<S: Serializer>(hash: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(hash))
    }

    /// Reads 64 hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// Size of a SHA-256 hash.
pub const HASH_SIZE: usize = 32;

/// Errors of the ledger. None carries an entry's content or a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// A file could not be read or written.
    #[error("ledger file `{path}`: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// Another process has the ledger open for writing.
    #[error(
        "the ledger in `{0}` is in use by another Custos process (a running `custos serve`? send the command to it with --server URL)"
    )]
    Busy(PathBuf),
    /// Recovery found the ledger inconsistent; it refuses to open.
    #[error("the ledger is damaged and was not opened: {0}")]
    Damaged(String),
    /// An earlier write failed; nothing more is accepted until a restart.
    #[error("the ledger is unavailable after a failed write; restart Custos to recover")]
    Unavailable,
    /// The writer has stopped.
    #[error("the ledger is closed")]
    Closed,
    /// An entry could not be encoded.
    #[error("ledger entry: {0}")]
    Entry(EntryError),
    /// A checkpoint failed to verify.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A proof could not be produced or did not verify.
    #[error("proof: {0}")]
    Proof(String),
    /// The shared journal (the database) refused or failed; nothing was acknowledged.
    #[error("the shared ledger journal failed: {0}")]
    Journal(String),
    /// Verification found tampering or damage; the message says where.
    #[error("ledger verification failed: {0}")]
    Verify(String),
}

// By hand, not `#[from]`: that would make the entry error the `source()`
// too, and `{:#}` would print it twice.
impl From<EntryError> for LedgerError {
    fn from(e: EntryError) -> Self {
        Self::Entry(e)
    }
}
