//! Custos storage: dataset schemas, encrypted Parquet datasets, keys, and the
//! metadata store of a Custos home.
//!
//! - [`schema`]: the TOML schema that classes every column (pure).
//! - [`keys`]: master key, wrapped per-dataset data keys, derived file keys.
//! - [`home`]: the data directory: `init`, `open`, layout.
//! - [`meta`]: the metadata store interface and its SQLite backend.
//! - [`principal`]: principals, roles and API tokens (hashed at rest).
//! - [`requests`]: look-up requests, approvals, the accounting of disclosures.
//! - [`budgets`]: privacy budgets per agreement and dataset, charged atomically.
//! - [`ingest`]: CSV → bucketed, encrypted Parquet (streaming, atomic).
//! - [`dataset`]: the catalogue, ingest orchestration and reading rows.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod budgets;
pub mod dataset;
pub mod home;
pub mod ingest;
pub mod keys;
pub mod matches;
pub mod meta;
pub mod principal;
pub mod requests;
pub mod schema;

pub use dataset::{DatasetError, DatasetReader, DatasetSummary, IngestReport, StagedDataset};
pub use home::{Home, HomeError, InitReport, MasterKeySource};
pub use ingest::{IngestError, IngestProblem, IngestProgress, NoProgress};
pub use keys::{KeyError, MasterKey};
pub use principal::{Principal, PrincipalError, Role};
pub use schema::{ColumnClass, ColumnType, DatasetSchema, SchemaError};
