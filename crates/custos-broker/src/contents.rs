//! Datasets whose contents are ledgered. At ingest, the SHA-256 of every
//! bucket file and a digest over all of them go into the `dataset.ingest`
//! entry; the catalogue keeps the same digests and the entry's index.
//! Before any read, the broker holds the catalogue's digests to that entry
//! (once per dataset and process) and the store checks the files it opens
//! against them. A mismatch is refused before a byte is read, and recorded
//! as a `dataset.tampered` entry; `custos dataset verify` names the file.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use custos_ledger::{Decision, Entry};
use custos_store::digests::FileDigests;
use custos_store::{DatasetError, DatasetReader};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::{Actor, BrokerError, Custos, now_micros};

/// Attribute of the ingest entry holding the dataset's content digest.
pub(crate) const CONTENT_ATTRIBUTE: &str = "content_sha256";
/// Prefix of the ingest entry's per-file digest attributes.
pub(crate) const FILE_ATTRIBUTE_PREFIX: &str = "sha256:";

/// The ingest entry's attributes for `digests`.
pub(crate) fn digest_attributes(digests: &FileDigests) -> Vec<(String, String)> {
    let mut out = vec![(
        CONTENT_ATTRIBUTE.to_owned(),
        hex::encode(digests.content_digest()),
    )];
    out.extend(
        digests
            .iter()
            .map(|(name, d)| (format!("{FILE_ATTRIBUTE_PREFIX}{name}"), hex::encode(d))),
    );
    out
}

/// Which of a dataset's files a read opens.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reading<'a> {
    /// Every bucket (queries, extracts, matches).
    All,
    /// The bucket of one subject (look-ups).
    Subject(&'a str),
}

/// Catalogue records (datasets, agreement versions) this process has held
/// to the ledger, by everything the check read.
#[derive(Debug, Default)]
pub(crate) struct LedgeredDatasets(Mutex<HashSet<String>>);

impl LedgeredDatasets {
    /// Whether `key` was checked.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.0.lock().map(|set| set.contains(key)).unwrap_or(false)
    }

    /// Notes that `key` was checked.
    pub(crate) fn insert(&self, key: String) {
        if let Ok(mut set) = self.0.lock() {
            set.insert(key);
        }
    }
}

/// `custos dataset verify`: what was checked and what was found.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetCheck {
    /// The dataset.
    pub dataset: String,
    /// Files checked (every bucket file).
    pub files: u32,
    /// The digest over all files, hex, as ledgered at ingest.
    pub content_sha256: String,
    /// The ledger index of the ingest entry.
    pub ingest_entry: Option<u64>,
    /// What is wrong; `None` when every file is as ingested.
    pub problem: Option<String>,
}

impl Custos {
    /// Opens `name` for a read of `reading`: the catalogue's digests are
    /// held to the ingest entry, then the files to be opened to the
    /// digests. Any mismatch is ledgered and refused.
    pub(crate) async fn open_dataset(
        &self,
        name: &str,
        reading: Reading<'_>,
    ) -> Result<Arc<DatasetReader>, BrokerError> {
        let reader = Arc::new(DatasetReader::open(self.home(), name).await?);
        let checked = self.check_contents(&reader, reading).await;
        if let Err(problem) = checked {
            let entry = Entry::new(
                now_micros(),
                crate::SYSTEM_ACTOR,
                "dataset.tampered",
                Decision::Error,
            )
            .with_attribute("dataset", name)
            .with_reason(problem.clone());
            self.append(&entry)?;
            tracing::error!(
                dataset = name,
                "dataset refused: its files are not as ingested"
            );
            return Err(BrokerError::Dataset(DatasetError::Tampered {
                dataset: name.to_owned(),
                problem,
            }));
        }
        Ok(reader)
    }

    /// Checks every file of dataset `name` (admins and overseers; the
    /// check is ledgered, and a mismatch also as `dataset.tampered`).
    pub async fn verify_dataset(
        &self,
        actor: &Actor,
        name: &str,
    ) -> Result<DatasetCheck, BrokerError> {
        const ACTION: &str = "dataset.verify";
        if !self.may_oversee(actor) {
            return Err(self.deny(
                actor,
                ACTION,
                "only admins and overseers may verify datasets",
            ));
        }
        let reader = DatasetReader::open(self.home(), name).await?;
        let record = reader.record().clone();
        let problem = self.check_contents(&reader, Reading::All).await.err();
        let mut entry = Entry::new(now_micros(), actor.id(), ACTION, Decision::Allow)
            .with_attribute("dataset", name)
            .with_count("files", u64::from(record.bucket_count));
        if let Some(p) = &problem {
            entry = entry.with_reason(p.clone());
            self.append(
                &Entry::new(
                    now_micros(),
                    crate::SYSTEM_ACTOR,
                    "dataset.tampered",
                    Decision::Error,
                )
                .with_attribute("dataset", name)
                .with_reason(p.clone()),
            )?;
        }
        self.append(&entry)?;
        Ok(DatasetCheck {
            dataset: name.to_owned(),
            files: record.bucket_count,
            content_sha256: hex::encode(record.file_digests.content_digest()),
            ingest_entry: record.ingest_entry,
            problem,
        })
    }

    /// The catalogue against the ledger (once per process), then the files.
    async fn check_contents(
        &self,
        reader: &DatasetReader,
        reading: Reading<'_>,
    ) -> Result<(), String> {
        let record = reader.record();
        // Keyed by everything the ledger check reads from the catalogue: a
        // row changed while the process runs is checked again.
        let seen = format!(
            "{}\n{}\n{:?}\n{}\n{}\n{}\n{}",
            record.name,
            record.storage_id,
            record.ingest_entry,
            record.bucket_count,
            hex::encode(record.file_digests.content_digest()),
            record.schema_sha256,
            hex::encode(sha2::Sha256::digest(record.schema_toml.as_bytes())),
        );
        if !self.ledgered_datasets.contains(&seen) {
            self.check_against_ledger(reader)?;
            self.ledgered_datasets.insert(seen);
        }
        let buckets = match reading {
            Reading::All => None,
            Reading::Subject(subject) => match reader.bucket_of(subject) {
                Some(b) => Some(vec![b]),
                // Not a possible subject here: no bucket is opened, but the
                // directory is still checked.
                None => Some(Vec::new()),
            },
        };
        let reader_buckets = buckets.clone();
        let verify = |r: &DatasetReader| r.verify(reader_buckets.as_deref());
        verify(reader).map_err(|e| match e {
            DatasetError::Tampered { problem, .. } => problem,
            other => other.to_string(),
        })
    }

    /// The ledger entry at `index` (publishing a checkpoint first if the
    /// entry is newer than the published one).
    pub(crate) fn entry_at(&self, index: u64) -> Result<Entry, String> {
        let reader = self
            .ledger_reader()
            .map_err(|e| format!("the ledger could not be read: {e}"))?;
        let published = reader
            .latest(self.verifier_key())
            .map_err(|e| format!("the ledger could not be read: {e}"))?;
        if index >= published.size {
            self.checkpoint()
                .map_err(|e| format!("the ledger could not be checkpointed: {e}"))?;
        }
        let entries = reader
            .entries(index, index + 1)
            .map_err(|e| format!("ledger entry {index} could not be read: {e}"))?;
        let (_, bytes) = entries
            .first()
            .ok_or_else(|| format!("ledger entry {index} is not in the ledger"))?;
        Entry::decode(bytes).map_err(|e| format!("ledger entry {index}: {e}"))
    }

    /// The ingest entry the catalogue points to must be this dataset's and
    /// record the catalogue's digests.
    fn check_against_ledger(&self, reader: &DatasetReader) -> Result<(), String> {
        let record = reader.record();
        let index = record.ingest_entry.ok_or_else(|| {
            "the catalogue records no ingest entry for it (ingested before contents were ledgered; ingest it again)".to_owned()
        })?;
        let entry = self.entry_at(index)?;
        let attribute = |key: &str| {
            entry
                .attributes
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let mismatch = || {
            format!(
                "the catalogue's record of it (name, files, bucket count, digests or schema) does not match ledger entry {index}, which recorded its ingest"
            )
        };
        let schema_digest = hex::encode(sha2::Sha256::digest(record.schema_toml.as_bytes()));
        let buckets = entry
            .counts
            .iter()
            .find(|(k, _)| k == "buckets")
            .map(|(_, v)| *v);
        // Every bucket file the reads will open is one the ledger names,
        // and no other.
        let expected: Vec<String> = (0..record.bucket_count)
            .map(custos_store::layout::bucket_file_name)
            .collect();
        let named: Vec<&str> = record.file_digests.iter().map(|(n, _)| n).collect();
        if buckets != Some(u64::from(record.bucket_count)) || named != expected {
            return Err(mismatch());
        }
        if entry.action != "dataset.ingest"
            || entry.decision != Decision::Allow
            || attribute("dataset") != Some(record.name.as_str())
            || attribute("storage_id") != Some(record.storage_id.as_str())
            || attribute("schema_sha256") != Some(schema_digest.as_str())
            || record.schema_sha256 != schema_digest
            || attribute(CONTENT_ATTRIBUTE)
                != Some(hex::encode(record.file_digests.content_digest()).as_str())
        {
            return Err(mismatch());
        }
        let ledgered: Vec<(String, String)> = entry
            .attributes
            .iter()
            .filter(|(k, _)| k.starts_with(FILE_ATTRIBUTE_PREFIX))
            .cloned()
            .collect();
        let catalogued: Vec<(String, String)> = digest_attributes(&record.file_digests)
            .into_iter()
            .filter(|(k, _)| k.starts_with(FILE_ATTRIBUTE_PREFIX))
            .collect();
        if ledgered != catalogued {
            return Err(mismatch());
        }
        Ok(())
    }
}
