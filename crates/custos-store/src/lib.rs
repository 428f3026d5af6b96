//! Custos storage: encrypted Parquet datasets, keys, and the metadata store of
//! a Custos home. The schemas and principals it stores are
//! [`custos_model`]'s.
//!
//! - [`keys`]: master key, wrapped per-dataset data keys, derived file keys.
//! - [`keyring`]: an opened home's keys, whatever the master key's source.
//! - [`key_shares`]: the master key as Shamir shares (a quorum to open).
//! - [`hsm`]: the master key inside a PKCS#11 token.
//! - [`rotation`]: a new master key, every sealed secret re-wrapped at once.
//! - [`sealed`]: every sealed secret of the catalogue and its purpose.
//! - [`home`]: the data directory: `init`, `open`, layout.
//! - [`meta`]: the metadata store interface and its SQLite backend.
//! - [`principal`]: issuing API tokens (only their hash is kept).
//! - [`lookups`]: look-up requests, approvals, the accounting of disclosures.
//! - [`budgets`]: privacy budgets per agreement and dataset, charged atomically.
//! - [`layout`]: the on-disk layout readers and the writer share.
//! - `parse`: CSV chunks → validated Arrow batches, located problems.
//! - [`ingest`]: validated batches → bucketed, encrypted Parquet (streaming, atomic).
//! - [`objects`]: dataset files and a replicated home's published ledger in object storage.
//! - [`journal`]: a replicated home's ledger journal and integrator lease in PostgreSQL.
//! - [`dataset`]: the catalogue, ingest orchestration and reading rows.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod browsing;
pub mod budgets;
pub mod catalogue;
pub mod dataset;
pub mod digests;
pub mod home;
pub mod hsm;
pub mod ingest;
mod io_runtime;
pub mod journal;
pub mod key_shares;
pub mod keyring;
pub mod keys;
pub mod layout;
pub mod ledger_key;
pub mod listings;
pub mod lookups;
pub mod matches;
pub mod meta;
pub mod objects;
mod parse;
pub mod principal;
pub mod replica;
pub mod rotation;
pub mod sealed;
mod sql;
#[cfg(test)]
mod testing;

pub use dataset::{DatasetError, DatasetReader, DatasetSummary, IngestReport, StagedDataset};
pub use home::{
    Home, HomeError, InitReport, KeyInput, KeySource, LedgerPlacement, MasterKeySource,
};
pub use hsm::HsmConfig;
pub use ingest::{IngestError, IngestProblem, IngestProgress, NoProgress};
pub use key_shares::PrintedShare;
pub use keys::{KeyError, MasterKey, SecretText};
pub use ledger_key::{LedgerKeySource, LedgerKeys};
