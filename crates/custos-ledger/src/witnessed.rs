//! The log's side of witnessing, on disk: the newest checkpoint that a
//! quorum of witnesses cosigned, what each witness last cosigned, and the
//! check that a witnessed checkpoint satisfies a policy.
//!
//! ```text
//! LEDGER/
//!   witnessed-checkpoint   the newest checkpoint with a quorum of cosignatures (signed note)
//!   witnesses.json         per witness: the size it last cosigned, when, the last error
//! ```
//!
//! Both are written atomically (temporary file, fsync, rename). Neither is
//! trusted by a verifier: the note's signatures are checked against the log
//! key and the policy's witness keys every time it is read.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use signed_note::{Note, Signature, Verifier, VerifierList};

use crate::LedgerError;
use crate::cosignature::CosignatureVerifier;
use crate::log::{io, sync_dir, write_atomic};
use crate::note::{VerifiedCheckpoint, verify_checkpoint};
use crate::policy::WitnessPolicy;

/// File name of the newest witnessed checkpoint.
pub const WITNESSED_CHECKPOINT: &str = "witnessed-checkpoint";
/// File name of the per-witness state.
pub const WITNESS_STATE: &str = "witnesses.json";

/// A checkpoint whose log signature and witness quorum have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessedCheckpoint {
    /// The checkpoint (log signature verified).
    pub checkpoint: VerifiedCheckpoint,
    /// Witnesses whose cosignatures verified, with their times (seconds).
    pub signed_by: BTreeMap<String, u64>,
}

/// What the log last heard from one witness.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessProgress {
    /// The size it last cosigned for this log (0: never).
    pub size: u64,
    /// When it last cosigned (seconds since the epoch).
    pub cosigned_at: Option<u64>,
    /// The last failure, if the last attempt failed (no secrets or data).
    pub last_error: Option<String>,
}

/// Every witness's progress, by name.
pub type WitnessState = BTreeMap<String, WitnessProgress>;

/// Writes `bytes` to `path` atomically and durably (the directory too).
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), LedgerError> {
    write_atomic(path, bytes)?;
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Checks a note's log signature with `log_key` and its cosignatures with
/// the policy's witness keys; fails unless the quorum holds. Cosignatures
/// from keys the policy does not name are ignored; a cosignature from a
/// named key that does not verify fails the whole note.
pub fn verify_witnessed(
    note: &[u8],
    log_key: &str,
    policy: &WitnessPolicy,
) -> Result<WitnessedCheckpoint, LedgerError> {
    let checkpoint = verify_checkpoint(note, log_key)?;
    let parsed = Note::from_bytes(note).map_err(|e| LedgerError::Verify(e.to_string()))?;
    let verifiers: Vec<(String, std::sync::Arc<CosignatureVerifier>)> = policy
        .witnesses()
        .map(|(name, w)| (name.to_owned(), std::sync::Arc::new(w.key.verifier())))
        .collect();
    let mut signed_by = BTreeMap::new();
    // One witness at a time, so a note with no cosignature from it (which
    // `Note::verify` reports as unverified) is told apart from a bad one.
    for (name, verifier) in &verifiers {
        let list = VerifierList::new(vec![Box::new(Shared(verifier.clone()))]);
        match parsed.verify(&list) {
            Ok(_) => {
                if let Some(time) = verifier.time() {
                    signed_by.insert(name.clone(), time);
                }
            }
            Err(signed_note::NoteError::UnverifiedNote) => {}
            Err(e) => {
                return Err(LedgerError::Verify(format!(
                    "witness `{name}`'s cosignature does not verify: {e}"
                )));
            }
        }
    }
    let names: BTreeSet<String> = signed_by.keys().cloned().collect();
    if !policy.satisfied_by(&names) {
        return Err(LedgerError::Verify(format!(
            "the checkpoint at size {} lacks the witness quorum `{}`: cosigned by {}",
            checkpoint.size,
            policy.quorum().unwrap_or("none"),
            if names.is_empty() {
                "no witness of the policy".to_owned()
            } else {
                names.into_iter().collect::<Vec<_>>().join(", ")
            }
        )));
    }
    Ok(WitnessedCheckpoint {
        checkpoint,
        signed_by,
    })
}

/// Lets one verifier be shared by a `VerifierList` and the caller.
struct Shared(std::sync::Arc<CosignatureVerifier>);

impl Verifier for Shared {
    fn name(&self) -> &str {
        Verifier::name(&*self.0)
    }
    fn key_id(&self) -> u32 {
        Verifier::key_id(&*self.0)
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        Verifier::verify(&*self.0, msg, sig)
    }
}

/// The checkpoint `note` with `cosignatures` added after its signatures
/// (replacing any earlier cosignature under the same key).
pub fn add_cosignatures(note: &[u8], cosignatures: &[Signature]) -> Result<Vec<u8>, LedgerError> {
    let parsed = Note::from_bytes(note).map_err(|e| LedgerError::Verify(e.to_string()))?;
    let fresh: BTreeSet<(String, u32)> = cosignatures
        .iter()
        .map(|s| (s.name().to_owned(), s.id()))
        .collect();
    // The note keeps its own signatures; re-parse them from its bytes.
    let text_len = parsed.text().len();
    let sig_block = &note[text_len + 1..];
    let mut sigs = Vec::new();
    for line in sig_block.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let sig = Signature::from_bytes(line).map_err(|e| LedgerError::Verify(e.to_string()))?;
        if !fresh.contains(&(sig.name().to_owned(), sig.id())) {
            sigs.push(sig);
        }
    }
    sigs.extend(cosignatures.iter().cloned());
    Ok(Note::new(parsed.text(), &sigs)
        .map_err(|e| LedgerError::Verify(e.to_string()))?
        .to_bytes())
}

/// The newest witnessed checkpoint in `dir`, as stored (unverified), if any.
pub fn read_witnessed(dir: &Path) -> Result<Option<Vec<u8>>, LedgerError> {
    let path = dir.join(WITNESSED_CHECKPOINT);
    match fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Publishes a witnessed checkpoint in `dir` (atomically, durably).
pub fn write_witnessed(dir: &Path, note: &[u8]) -> Result<(), LedgerError> {
    write_durably(&dir.join(WITNESSED_CHECKPOINT), note)
}

/// The per-witness progress stored in `dir` (empty if none).
pub fn read_state(dir: &Path) -> Result<WitnessState, LedgerError> {
    let path = dir.join(WITNESS_STATE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| LedgerError::Damaged(format!("`{}`: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(WitnessState::new()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Stores the per-witness progress in `dir` (atomically, durably).
pub fn write_state(dir: &Path, state: &WitnessState) -> Result<(), LedgerError> {
    let bytes = serde_json::to_vec_pretty(state)
        .map_err(|e| LedgerError::Damaged(format!("witness state: {e}")))?;
    write_durably(&dir.join(WITNESS_STATE), &bytes)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::cosignature::Cosigner;
    use crate::note::NoteSigner;

    fn policy(witnesses: &[&Cosigner], quorum: &str) -> WitnessPolicy {
        let mut text = String::new();
        for w in witnesses {
            text += &format!("witness {} {}\n", w.public().name(), w.public().hex());
        }
        text += quorum;
        WitnessPolicy::parse(&text).unwrap()
    }

    #[test]
    fn quorum_counts_only_valid_cosignatures_of_the_policy() {
        let log = NoteSigner::new("example.org/log", SigningKey::from_bytes(&[1; 32]));
        let note = log.sign(3, [5; 32]).unwrap();
        let text = Note::from_bytes(&note).unwrap().text().to_vec();
        let mut a = Cosigner::new("w/a", SigningKey::from_bytes(&[2; 32])).unwrap();
        let mut b = Cosigner::new("w/b", SigningKey::from_bytes(&[3; 32])).unwrap();
        let mut stranger = Cosigner::new("w/x", SigningKey::from_bytes(&[4; 32])).unwrap();
        let line = |c: &mut Cosigner| {
            let l = c.cosign(&text, 100).unwrap();
            Signature::from_bytes(l.strip_suffix(b"\n").unwrap()).unwrap()
        };
        let (sa, sb, sx) = (line(&mut a), line(&mut b), line(&mut stranger));
        let p = policy(&[&a, &b], "group g 2 w/a w/b\nquorum g\n");
        let one = add_cosignatures(&note, &[sa.clone(), sx]).unwrap();
        let e = verify_witnessed(&one, &log.verifier_key(), &p).unwrap_err();
        assert!(e.to_string().contains("cosigned by w/a"), "{e}");
        let both = add_cosignatures(&one, &[sb]).unwrap();
        let w = verify_witnessed(&both, &log.verifier_key(), &p).unwrap();
        assert_eq!(w.signed_by.keys().collect::<Vec<_>>(), ["w/a", "w/b"]);
        // A cosignature of another checkpoint under a policy key fails the note.
        let other = log.sign(4, [6; 32]).unwrap();
        let other_text = Note::from_bytes(&other).unwrap().text().to_vec();
        let wrong = Signature::from_bytes(
            a.cosign(&other_text, 100)
                .unwrap()
                .strip_suffix(b"\n")
                .unwrap(),
        )
        .unwrap();
        let forged = add_cosignatures(&note, &[wrong]).unwrap();
        assert!(verify_witnessed(&forged, &log.verifier_key(), &p).is_err());
        // And a rewritten checkpoint with the old cosignatures fails too.
        let resigned = log.sign(3, [7; 32]).unwrap();
        let moved = add_cosignatures(&resigned, &[sa]).unwrap();
        assert!(verify_witnessed(&moved, &log.verifier_key(), &p).is_err());
    }
}
