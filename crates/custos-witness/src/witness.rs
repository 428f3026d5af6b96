//! The `add-checkpoint` decision, in the order C2SP tlog-witness gives:
//! parse (400) → known origin (404) → a trusted signature (403) → old ≤ size
//! (400) → old is the size last cosigned (409 with that size) → same size,
//! same root (409) → consistency proof (422) → store, then cosign (200).
//!
//! Checking the old size and storing the new head happen under one lock
//! and the store is durable before the answer, so two concurrent requests
//! can never roll the witness back (the race the spec describes).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use custos_ledger::witness_wire::AddCheckpoint;
use custos_ledger::{Cosigner, verify_checkpoint};
use tlog_tiles::{Checkpoint, Hash, check_tree};
use tokio::sync::Mutex;

use crate::dir::{Heads, LogHead, WitnessDir, WitnessDirError};

/// Why a submission was not cosigned; each maps to the spec's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// 400: the request is malformed, or the old size exceeds the checkpoint's.
    #[error("{0}")]
    BadRequest(String),
    /// 404: the witness does not follow this origin.
    #[error("this witness does not follow the log `{0}`")]
    UnknownOrigin(String),
    /// 403: no signature from a key the witness trusts for the origin.
    #[error(
        "no signature on the checkpoint verifies with the keys this witness trusts for its origin"
    )]
    Untrusted,
    /// 409: the old size is not the size last cosigned (the body is that
    /// size), or the same size came with another root.
    #[error("this witness last cosigned size {0} for this log")]
    Conflict(u64),
    /// 422: the consistency proof does not verify.
    #[error("the consistency proof does not verify")]
    BadProof,
    /// 500: the witness could not store its state (nothing was cosigned).
    #[error("the witness could not store its state")]
    Internal,
}

impl Refusal {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::UnknownOrigin(_) => 404,
            Self::Untrusted => 403,
            Self::Conflict(_) => 409,
            Self::BadProof => 422,
            Self::Internal => 500,
        }
    }
}

/// A running witness: its key, the logs it follows and their heads.
#[derive(Debug)]
pub struct Witness {
    dir: WitnessDir,
    keys: BTreeMap<String, Vec<String>>,
    state: Mutex<(Cosigner, Heads)>,
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Witness {
    /// Loads the witness in `dir`.
    pub fn load(dir: WitnessDir) -> Result<Self, WitnessDirError> {
        let config = dir.config()?;
        let keys = config
            .keys_by_origin()
            .map_err(|message| WitnessDirError::Config {
                path: dir.root().join("witness.toml"),
                message,
            })?;
        let cosigner = dir.cosigner()?;
        let heads = dir.heads()?;
        Ok(Self {
            dir,
            keys,
            state: Mutex::new((cosigner, heads)),
        })
    }

    /// The origins it follows.
    pub fn origins(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Decides one `add-checkpoint` request; on success, the cosignature
    /// lines to answer with.
    pub async fn add_checkpoint(&self, body: &[u8]) -> Result<Vec<u8>, Refusal> {
        let request = AddCheckpoint::parse(body).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        let note = signed_note::Note::from_bytes(&request.note)
            .map_err(|_| Refusal::BadRequest("the checkpoint is not a signed note".into()))?;
        let text = note.text().to_vec();
        let checkpoint = Checkpoint::from_bytes(&text)
            .map_err(|_| Refusal::BadRequest("the note is not a checkpoint".into()))?;
        let origin = checkpoint.origin().to_owned();
        let keys = self
            .keys
            .get(&origin)
            .ok_or_else(|| Refusal::UnknownOrigin(origin.clone()))?;
        if !keys
            .iter()
            .any(|k| verify_checkpoint(&request.note, k).is_ok())
        {
            return Err(Refusal::Untrusted);
        }
        let (size, root) = (checkpoint.size(), checkpoint.hash().0);
        if request.old > size {
            return Err(Refusal::BadRequest(format!(
                "old size {} is above the checkpoint's size {size}",
                request.old
            )));
        }
        let mut state = self.state.lock().await;
        let (cosigner, heads) = &mut *state;
        let stored = heads.get(&origin).copied();
        let stored_size = stored.map_or(0, |h| h.size);
        if request.old != stored_size {
            return Err(Refusal::Conflict(stored_size));
        }
        if request.old == size {
            if stored.is_some_and(|h| h.root != root) {
                return Err(Refusal::Conflict(stored_size));
            }
            if !request.proof.is_empty() {
                return Err(Refusal::BadProof);
            }
        } else if request.old == 0 {
            if !request.proof.is_empty() {
                return Err(Refusal::BadRequest(
                    "the proof must be empty when the old size is 0".into(),
                ));
            }
        } else {
            let old_root = stored.map(|h| h.root).ok_or(Refusal::Internal)?;
            let proof: Vec<Hash> = request.proof.iter().map(|h| Hash(*h)).collect();
            check_tree(&proof, size, Hash(root), request.old, Hash(old_root))
                .map_err(|_| Refusal::BadProof)?;
        }
        let mut next = heads.clone();
        next.insert(origin.clone(), LogHead { size, root });
        // Durable before the answer; the lock is held across the write, so
        // no other request sees the old head after this one succeeds.
        let (dir, written) = (self.dir.clone(), next.clone());
        tokio::task::spawn_blocking(move || dir.store_heads(&written))
            .await
            .map_err(|_| Refusal::Internal)?
            .map_err(|e| {
                tracing::error!(error = %e, "the witness state could not be stored");
                Refusal::Internal
            })?;
        *heads = next;
        let line = cosigner
            .cosign(&text, now_seconds())
            .map_err(|_| Refusal::Internal)?;
        tracing::info!(origin = %origin, size, "cosigned");
        Ok(line)
    }
}
