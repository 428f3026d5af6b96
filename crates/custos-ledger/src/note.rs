//! Checkpoints (C2SP tlog-checkpoint) signed as C2SP signed-notes with
//! Ed25519, through the `signed_note` and `tlog_tiles` crates (ports of Go's
//! `sumdb/note` and `sumdb/tlog`, so Go verifies them unchanged).

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::{Checkpoint, Hash};

/// Signature algorithm byte of Ed25519 in signed-note keys.
const ALG_ED25519: u8 = 1;

/// Why a checkpoint was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The note is malformed or its signature does not verify.
    #[error("checkpoint signature: {0}")]
    Note(String),
    /// The note's text is not a checkpoint.
    #[error("checkpoint body is malformed")]
    Body,
    /// The verifier key is malformed.
    #[error("verifier key is malformed: {0}")]
    Key(String),
    /// The checkpoint is for another log.
    #[error("checkpoint is for origin `{found}`, expected `{expected}`")]
    Origin {
        /// Origin in the checkpoint.
        found: String,
        /// Origin expected.
        expected: String,
    },
}

/// A checkpoint whose signature has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    /// The log's origin line.
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: [u8; 32],
    /// The full signed note, as served at `/checkpoint`.
    pub note: Vec<u8>,
}

/// Signs checkpoints with the instance's Ed25519 key; the key name is the origin.
pub struct NoteSigner {
    origin: String,
    key: SigningKey,
    id: u32,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NoteSigner({}+{:08x})", self.origin, self.id)
    }
}

fn public_key_bytes(key: &VerifyingKey) -> Vec<u8> {
    let mut bytes = vec![ALG_ED25519];
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

impl NoteSigner {
    /// A signer for `origin` with `key`.
    pub fn new(origin: &str, key: SigningKey) -> Self {
        let id = signed_note::key_id(origin, &public_key_bytes(&key.verifying_key()));
        Self {
            origin: origin.to_owned(),
            key,
            id,
        }
    }

    /// The verifier key in the `name+hash+base64` form.
    pub fn verifier_key(&self) -> String {
        signed_note::new_ed25519_verifier_key(&self.origin, &self.key.verifying_key())
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A signed checkpoint note for a tree of `size` with `root`.
    pub fn sign(&self, size: u64, root: [u8; 32]) -> Result<Vec<u8>, CheckpointError> {
        let body = Checkpoint::new(&self.origin, size, Hash(root), "")
            .map_err(|_| CheckpointError::Body)?;
        let mut note =
            Note::new(&body.to_bytes(), &[]).map_err(|e| CheckpointError::Note(e.to_string()))?;
        note.add_sigs(&[self])
            .map_err(|e| CheckpointError::Note(e.to_string()))?;
        Ok(note.to_bytes())
    }
}

impl NoteSigner {
    /// A checkpoint note signed by this key and by `also` (the key a
    /// rotation retires), so verifiers holding either accept it.
    pub fn sign_with(
        &self,
        also: &NoteSigner,
        size: u64,
        root: [u8; 32],
    ) -> Result<Vec<u8>, CheckpointError> {
        let body = Checkpoint::new(&self.origin, size, Hash(root), "")
            .map_err(|_| CheckpointError::Body)?;
        let mut note =
            Note::new(&body.to_bytes(), &[]).map_err(|e| CheckpointError::Note(e.to_string()))?;
        note.add_sigs(&[also, self])
            .map_err(|e| CheckpointError::Note(e.to_string()))?;
        Ok(note.to_bytes())
    }
}

impl NoteSigner {
    /// The key that authenticates journal records: derived from the
    /// signing key (HMAC-SHA-256), so only its holder can write records the
    /// ledger will replay.
    pub(crate) fn journal_key(&self) -> [u8; 32] {
        use hmac::Mac as _;
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.key.as_bytes()) else {
            return [0; 32];
        };
        mac.update(b"custos/v1/journal-key");
        mac.finalize().into_bytes().into()
    }
}

/// The checkpoint verifier key of `origin` signed with `key`.
pub fn verifier_key_for(origin: &str, key: &VerifyingKey) -> String {
    signed_note::new_ed25519_verifier_key(origin, key)
}

impl signed_note::Signer for NoteSigner {
    fn name(&self) -> &str {
        &self.origin
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        Ok(self.key.sign(msg).to_bytes().to_vec())
    }
}

/// Verifies a signed checkpoint note against a verifier key
/// (`name+hash+base64`); the key name must be the checkpoint's origin.
pub fn verify_checkpoint(
    note: &[u8],
    verifier_key: &str,
) -> Result<VerifiedCheckpoint, CheckpointError> {
    let verifier =
        StandardVerifier::new(verifier_key).map_err(|e| CheckpointError::Key(e.to_string()))?;
    let expected = signed_note::Verifier::name(&verifier).to_owned();
    let parsed = Note::from_bytes(note).map_err(|e| CheckpointError::Note(e.to_string()))?;
    parsed
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| CheckpointError::Note(e.to_string()))?;
    let checkpoint = Checkpoint::from_bytes(parsed.text()).map_err(|_| CheckpointError::Body)?;
    if checkpoint.origin() != expected {
        return Err(CheckpointError::Origin {
            found: checkpoint.origin().to_owned(),
            expected,
        });
    }
    Ok(VerifiedCheckpoint {
        origin: checkpoint.origin().to_owned(),
        size: checkpoint.size(),
        root: checkpoint.hash().0,
        note: note.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(origin: &str, seed: u8) -> NoteSigner {
        NoteSigner::new(origin, SigningKey::from_bytes(&[seed; 32]))
    }

    #[test]
    fn sign_then_verify() {
        let s = signer("example.org/log", 1);
        let note = s.sign(5, [9; 32]).unwrap();
        let text = String::from_utf8(note.clone()).unwrap();
        assert!(text.starts_with("example.org/log\n5\n"), "{text}");
        let v = verify_checkpoint(&note, &s.verifier_key()).unwrap();
        assert_eq!((v.size, v.root), (5, [9; 32]));
    }

    #[test]
    fn refuses_wrong_key_and_edits() {
        let s = signer("example.org/log", 1);
        let note = s.sign(5, [9; 32]).unwrap();
        let other = signer("example.org/log", 2);
        assert!(verify_checkpoint(&note, &other.verifier_key()).is_err());
        let edited = String::from_utf8(note)
            .unwrap()
            .replacen("\n5\n", "\n6\n", 1);
        assert!(verify_checkpoint(edited.as_bytes(), &s.verifier_key()).is_err());
    }
}
