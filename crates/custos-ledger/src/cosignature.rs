//! Witness cosignatures (C2SP tlog-cosignature, `cosignature/v1`): a
//! witness's timestamped Ed25519 statement that it saw a checkpoint and
//! that it is consistent with every earlier one it saw for that log.
//!
//! The signed message is `cosignature/v1\ntime <T>\n` followed by the
//! checkpoint's text; the signature line carries the key id, the 8-byte
//! big-endian time and the 64-byte signature. Key ids are computed over
//! the name, a newline, the type byte `0x04` and the public key, so a
//! cosignature key can never verify a plain Ed25519 note signature (type
//! `0x01`) or the reverse. Built on `signed_note`'s `Signer` / `Verifier`
//! traits, so cosignatures sit in ordinary signed notes beside the log's
//! own signature.

use std::sync::Mutex;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};

/// Type byte of `cosignature/v1` keys in key ids and verifier keys.
pub const COSIGNATURE_V1: u8 = 0x04;

/// Length of a cosignature after the key id: time (8) and Ed25519 (64).
const COSIGNATURE_LEN: usize = 8 + 64;

/// Why a witness key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WitnessKeyError {
    /// The name is empty or has spaces or `+`.
    #[error("witness name `{0}` is not a valid key name (no spaces or `+`)")]
    Name(String),
    /// The key is not 32 bytes of hex (Sigsum policy) or a `name+id+base64` verifier key.
    #[error("witness key is malformed: {0}")]
    Key(String),
}

/// The bytes a witness signs for a checkpoint's `text` at `time` (seconds
/// since the Unix epoch).
pub fn signed_message(text: &[u8], time: u64) -> Vec<u8> {
    let mut msg = format!("cosignature/v1\ntime {time}\n").into_bytes();
    msg.extend_from_slice(text);
    msg
}

fn key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut typed = vec![COSIGNATURE_V1];
    typed.extend_from_slice(key.as_bytes());
    signed_note::key_id(name, &typed)
}

/// A witness's public key under its name: verifies its cosignatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessKey {
    name: String,
    key: VerifyingKey,
    id: u32,
}

impl WitnessKey {
    /// The key named `name`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, WitnessKeyError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(WitnessKeyError::Name(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            id: key_id(name, &key),
            key,
        })
    }

    /// A key given as 64 hex digits (as Sigsum policies write keys).
    pub fn from_hex(name: &str, hex_key: &str) -> Result<Self, WitnessKeyError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_key, &mut bytes)
            .map_err(|_| WitnessKeyError::Key("expected 64 hex digits".into()))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| WitnessKeyError::Key("not an Ed25519 public key".into()))?;
        Self::new(name, key)
    }

    /// A key given as a verifier key `name+hexid+base64(0x04 ‖ key)`.
    pub fn from_vkey(vkey: &str) -> Result<Self, WitnessKeyError> {
        let bad = |why: &str| WitnessKeyError::Key(why.to_owned());
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected name+id+base64"));
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad("the key part is not base64"))?;
        let [COSIGNATURE_V1, rest @ ..] = raw.as_slice() else {
            return Err(bad("not a cosignature/v1 key (type byte 0x04)"));
        };
        let bytes: [u8; 32] = rest
            .try_into()
            .map_err(|_| bad("the key is not 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not an Ed25519 key"))?;
        let parsed = Self::new(name, key)?;
        if id.len() != 8 || format!("{:08x}", parsed.id) != id.to_ascii_lowercase() {
            return Err(bad("the key id does not match the name and key"));
        }
        Ok(parsed)
    }

    /// The witness's name (the key name in its cosignature lines).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The public key, hex (Sigsum policy form).
    pub fn hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// The verifier key `name+hexid+base64(0x04 ‖ key)`.
    pub fn vkey(&self) -> String {
        let mut typed = vec![COSIGNATURE_V1];
        typed.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.id,
            base64::engine::general_purpose::STANDARD.encode(typed)
        )
    }

    /// A `signed_note` verifier for this key that remembers the time of
    /// the cosignature it accepted.
    pub fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier {
            key: self.clone(),
            time: Mutex::new(None),
        }
    }

    /// Checks a cosignature (time ‖ signature, without the key id) over
    /// `text`; returns its time.
    pub fn check(&self, text: &[u8], cosignature: &[u8]) -> Option<u64> {
        if cosignature.len() != COSIGNATURE_LEN {
            return None;
        }
        let (time, sig) = cosignature.split_first_chunk::<8>()?;
        let sig = ed25519_dalek::Signature::from_slice(sig).ok()?;
        let time = u64::from_be_bytes(*time);
        self.key
            .verify(&signed_message(text, time), &sig)
            .ok()
            .map(|()| time)
    }
}

/// Verifies one witness's cosignatures inside `signed_note::Note::verify`.
#[derive(Debug)]
pub struct CosignatureVerifier {
    key: WitnessKey,
    time: Mutex<Option<u64>>,
}

impl CosignatureVerifier {
    /// The time of the last cosignature this verifier accepted.
    pub fn time(&self) -> Option<u64> {
        self.time.lock().ok().and_then(|t| *t)
    }
}

impl signed_note::Verifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.key.name
    }

    fn key_id(&self) -> u32 {
        self.key.id
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self.key.check(msg, sig) {
            Some(time) => {
                if let Ok(mut t) = self.time.lock() {
                    *t = Some(time);
                }
                true
            }
            None => false,
        }
    }
}

/// A witness's signing key: cosigns checkpoints at a given time.
pub struct Cosigner {
    key: SigningKey,
    public: WitnessKey,
    time: u64,
}

impl std::fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cosigner({}+{:08x})", self.public.name, self.public.id)
    }
}

impl Cosigner {
    /// A cosigner named `name` with `key`.
    pub fn new(name: &str, key: SigningKey) -> Result<Self, WitnessKeyError> {
        let public = WitnessKey::new(name, key.verifying_key())?;
        Ok(Self {
            key,
            public,
            time: 0,
        })
    }

    /// The public half.
    pub fn public(&self) -> &WitnessKey {
        &self.public
    }

    /// The signature line (`— name base64(id ‖ time ‖ sig)`, newline-ended)
    /// cosigning a checkpoint's `text` at `time`.
    pub fn cosign(&mut self, text: &[u8], time: u64) -> Result<Vec<u8>, WitnessKeyError> {
        self.time = time;
        let sig = signed_note::Signer::sign(self, text)
            .map_err(|e| WitnessKeyError::Key(e.to_string()))?;
        let line = signed_note::Signature::new(self.public.name.clone(), self.public.id, sig)
            .map_err(|_| WitnessKeyError::Name(self.public.name.clone()))?;
        Ok(line.to_bytes())
    }
}

impl signed_note::Signer for Cosigner {
    fn name(&self) -> &str {
        &self.public.name
    }

    fn key_id(&self) -> u32 {
        self.public.id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        let sig = self.key.sign(&signed_message(msg, self.time));
        let mut out = self.time.to_be_bytes().to_vec();
        out.extend_from_slice(&sig.to_bytes());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosign_then_check_and_refuse_edits() {
        let mut w = Cosigner::new("witness.example/w1", SigningKey::from_bytes(&[7; 32])).unwrap();
        let text = b"example.org/log\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let line = w.cosign(text, 1_700_000_000).unwrap();
        let sig = signed_note::Signature::from_bytes(line.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(sig.id(), w.public().id());
        assert_eq!(w.public().check(text, sig.signature()), Some(1_700_000_000));
        assert_eq!(
            w.public().check(b"example.org/log\n6\n", sig.signature()),
            None
        );
        // The vkey round-trips and differs from an Ed25519 note key's id.
        let parsed = WitnessKey::from_vkey(&w.public().vkey()).unwrap();
        assert_eq!(&parsed, w.public());
        let note_id = signed_note::key_id("witness.example/w1", &{
            let mut k = vec![1u8];
            k.extend_from_slice(w.public().key.as_bytes());
            k
        });
        assert_ne!(note_id, w.public().id());
    }

    /// The `sigsum` crate's documented cosignature (its witness key,
    /// checkpoint, time and signature), in note form under the name
    /// `witness.example/w1`; and a published `cosignature/v1` vkey.
    #[test]
    fn published_vectors() {
        let key = WitnessKey::from_hex(
            "witness.example/w1",
            "4a921b7caef58ae670cdc11ef4184f1c058f7b9259a9107a969f69fa54aa496f",
        )
        .unwrap();
        assert_eq!(
            key.vkey(),
            "witness.example/w1+f3474592+BEqSG3yu9YrmcM3BHvQYTxwFj3uSWakQepafafpUqklv"
        );
        let body = b"sigsum.org/v1/tree/4e89cc51651f0d95f3c6127c15e1a42e3ddf7046c5b17b752689c402e773bb4d\n8858\nuMChTU+hRA6NYk8PvhY5R31BvNPNUwMXaCkl3PCfGDU=\n";
        let line = "\u{2014} witness.example/w1 80dFkgAAAABo3M0A/EQHH5T+M7TehX9gtNwXA7WchiMUfWj5mxpCdbvGiXtAwjo9A9LCDgmKwQFvcyWOvK7u7vL6WFEGvp9J4mzMDw==";
        let sig = signed_note::Signature::from_bytes(line.as_bytes()).unwrap();
        assert_eq!(sig.id(), key.id());
        assert_eq!(key.check(body, sig.signature()), Some(1_759_300_864));
        let mut edited = body.to_vec();
        edited[60] ^= 1;
        assert_eq!(key.check(&edited, sig.signature()), None);
        // A witness key published by transparency-dev/formats.
        let remora = WitnessKey::from_vkey(
            "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2",
        )
        .unwrap();
        assert_eq!(remora.name(), "remora.n621.de");
        // An Ed25519 note key (type 0x01) is not a cosignature key.
        assert!(
            WitnessKey::from_vkey(
                "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            )
            .is_err()
        );
        // The spec's example line: key id, then the big-endian time.
        let spec = signed_note::Signature::from_bytes(
            "\u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==".as_bytes(),
        )
        .unwrap();
        assert_eq!(spec.id(), 0x8d66_cf3f);
        let time = u64::from_be_bytes(spec.signature()[..8].try_into().unwrap());
        assert_eq!(
            (time, spec.signature().len()),
            (1_679_315_147, COSIGNATURE_LEN)
        );
    }
}
