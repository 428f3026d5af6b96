//! The Custos broker: the one place that sequences every action against the
//! ledger, so that the fail-closed invariant lives in one function per
//! action that tests attack directly.
//!
//! Today it sequences the custodian's administrative actions (init, dataset
//! ingest). Agreements, decisions and the access modes join it as they are
//! built; the CLI and (later) the server call only this crate.
//!
//! INVARIANT (fail closed): an action takes effect only after the ledger
//! entry recording it is durable. Ingest stages its files, appends the entry,
//! and only then commits the dataset; if the append fails, the staged files
//! are discarded and the dataset never exists.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use custos_ledger::{Decision, Entry, Ledger, LedgerConfig, LedgerError, SubjectCommitter};
use custos_store::dataset::{self, DatasetSummary};
use custos_store::{
    Home, HomeError, IngestError, IngestProgress, IngestReport, InitReport, MasterKey,
    MasterKeySource,
};

/// The actor of init-time administration, before principals exist.
pub const LOCAL_ADMIN: &str = "local-admin";
/// Longest delay between an append and the checkpoint covering it.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of the broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// Opening or creating the home failed.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// An ingest failed (and was recorded in the ledger).
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The ledger failed; nothing took effect.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A dataset could not be read.
    #[error(transparent)]
    Dataset(#[from] custos_store::DatasetError),
}

/// An open Custos instance: its home and its ledger.
#[derive(Debug)]
pub struct Custos {
    home: Home,
    ledger: Ledger,
    subjects: SubjectCommitter,
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

async fn open_ledger(home: &Home) -> Result<Ledger, BrokerError> {
    let config = LedgerConfig {
        dir: home.ledger_dir(),
        origin: home.origin().await?,
        signing_key: home.signing_key().await?,
        checkpoint_interval: CHECKPOINT_INTERVAL,
    };
    // Opening replays and fsyncs; keep it off the async workers.
    tokio::task::spawn_blocking(move || Ledger::open(config))
        .await
        .map_err(|_| LedgerError::Closed)?
        .map_err(BrokerError::from)
}

impl Custos {
    /// Creates a home and its ledger, whose first entry records the init.
    /// If the ledger cannot record it, the new home is removed again.
    pub async fn init(
        root: &Path,
        key: MasterKeySource,
        origin: Option<String>,
    ) -> Result<(Self, InitReport), BrokerError> {
        let reopen_key = match &key {
            MasterKeySource::External(k) => Some(k.duplicate()),
            MasterKeySource::GenerateFile => None,
        };
        let report = Home::init(root, key, origin).await?;
        let opened = Self::open(root, reopen_key).await;
        let custos = match opened {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(root);
                return Err(e);
            }
        };
        let entry = Entry::new(
            now_micros(),
            LOCAL_ADMIN,
            "instance.init",
            Decision::Recorded,
        )
        .with_attribute("origin", report.origin.clone())
        .with_attribute("public_key", report.public_key_hex.clone());
        if let Err(e) = custos.append(&entry) {
            drop(custos);
            let _ = std::fs::remove_dir_all(root);
            return Err(e);
        }
        Ok((custos, report))
    }

    /// Opens an existing home and recovers its ledger.
    pub async fn open(root: &Path, external_key: Option<MasterKey>) -> Result<Self, BrokerError> {
        let home = Home::open(root, external_key).await?;
        let ledger = open_ledger(&home).await?;
        let subjects = SubjectCommitter::new(&home.ledger_subject_key());
        Ok(Self {
            home,
            ledger,
            subjects,
        })
    }

    /// The home.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The commitment scheme for subjects in ledger entries.
    pub fn subjects(&self) -> &SubjectCommitter {
        &self.subjects
    }

    /// Appends an entry durably; returns its index.
    pub fn append(&self, entry: &Entry) -> Result<u64, BrokerError> {
        Ok(self.ledger.append(entry)?)
    }

    /// Ingests a dataset: stage the encrypted files, record the ingest in the
    /// ledger (durable), then commit. A failure is recorded too.
    pub async fn ingest(
        &self,
        name: &str,
        schema: &Path,
        csv: &Path,
        progress: Arc<dyn IngestProgress>,
    ) -> Result<IngestReport, BrokerError> {
        // The ledger is public to overseers: an invalid name (which could be
        // anything a person typed) is not recorded, only that it was invalid.
        let recorded_name = if dataset::valid_name(name) {
            name
        } else {
            "(invalid name)"
        };
        let base = Entry::new(now_micros(), LOCAL_ADMIN, "dataset.ingest", Decision::Allow)
            .with_attribute("dataset", recorded_name);
        let failed = |reason: String| {
            Entry {
                decision: Decision::Error,
                ..base.clone()
            }
            .with_reason(reason)
        };
        let staged = match dataset::stage(&self.home, name, schema, csv, progress).await {
            Ok(staged) => staged,
            Err(e) => {
                self.append(&failed(ingest_failure_reason(&e)))?;
                return Err(e.into());
            }
        };
        let s = staged.summary();
        let entry = base
            .clone()
            .with_attribute("schema_sha256", s.schema_sha256.clone())
            .with_count("rows", s.rows)
            .with_count("buckets", u64::from(s.buckets));
        // INVARIANT: the dataset is committed only after this entry is durable.
        self.append(&entry)?;
        match staged.commit(&self.home).await {
            Ok(report) => Ok(report),
            Err(e) => {
                // The entry above said "allow"; say that it did not happen.
                self.append(&failed(format!(
                    "commit failed: {}",
                    ingest_failure_reason(&e)
                )))?;
                Err(e.into())
            }
        }
    }

    /// All datasets.
    pub async fn datasets(&self) -> Result<Vec<DatasetSummary>, BrokerError> {
        Ok(dataset::list(&self.home).await?)
    }

    /// One dataset's description.
    pub async fn describe(&self, name: &str) -> Result<DatasetSummary, BrokerError> {
        Ok(dataset::describe(&self.home, name).await?)
    }

    /// Publishes a final checkpoint and closes the ledger.
    pub fn close(self) -> Result<(), BrokerError> {
        Ok(self.ledger.close()?)
    }
}

/// A short, value-free reason for the ledger (never the input's values).
fn ingest_failure_reason(e: &IngestError) -> String {
    match e {
        IngestError::BadName(_) => "invalid dataset name".into(),
        IngestError::Exists(_) => "dataset already exists".into(),
        IngestError::Schema { .. } => "schema refused".into(),
        IngestError::Rejected { problems, .. } => {
            format!("input rejected: {} problems", problems.len())
        }
        IngestError::Io { .. } => "file could not be read or written".into(),
        _ => "ingest failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_ledger::LedgerReader;
    use custos_store::NoProgress;

    const SCHEMA: &str = "[[columns]]\nname = \"id\"\nclass = \"subject_id\"\ntype = \"string\"\n";

    #[tokio::test]
    async fn init_and_ingest_are_ledgered_including_failures() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        let (custos, _) = Custos::init(
            &root,
            MasterKeySource::GenerateFile,
            Some("t.example/custos".into()),
        )
        .await
        .unwrap();
        std::fs::write(dir.path().join("s.toml"), SCHEMA).unwrap();
        std::fs::write(dir.path().join("ok.csv"), "id\n666-00-0001\n").unwrap();
        std::fs::write(dir.path().join("bad.csv"), "nope\n1\n").unwrap();
        let s = dir.path().join("s.toml");
        custos
            .ingest("good", &s, &dir.path().join("ok.csv"), Arc::new(NoProgress))
            .await
            .unwrap();
        assert!(
            custos
                .ingest("bad", &s, &dir.path().join("bad.csv"), Arc::new(NoProgress))
                .await
                .is_err()
        );
        let key = custos.ledger().verifier_key().to_owned();
        custos.close().unwrap();

        let reader = LedgerReader::new(&root.join("ledger"));
        let size = reader.latest(&key).unwrap().size;
        let entries: Vec<Entry> = reader
            .entries(0, size)
            .unwrap()
            .iter()
            .map(|(_, e)| Entry::decode(e).unwrap())
            .collect();
        let summary: Vec<(&str, Decision)> = entries
            .iter()
            .map(|e| (e.action.as_str(), e.decision))
            .collect();
        assert_eq!(
            summary,
            [
                ("instance.init", Decision::Recorded),
                ("dataset.ingest", Decision::Allow),
                ("dataset.ingest", Decision::Error)
            ]
        );
        assert_eq!(
            entries[1].counts,
            vec![("buckets".into(), 1), ("rows".into(), 1)]
        );
        assert_eq!(
            entries[2].reasons,
            vec!["input rejected: 2 problems".to_owned()]
        );
        // Reopen: the ledger recovers, the good dataset exists, the bad one not.
        let custos = Custos::open(&root, None).await.unwrap();
        let names: Vec<String> = custos
            .datasets()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["good"]);
    }
}
