//! Key material: the master key, per-dataset data keys wrapped by it, and the
//! keys derived from a data key for Parquet modular encryption.
//!
//! Key hierarchy (every arrow is a one-way derivation or an AEAD wrap;
//! docs/keys.md tells the whole story):
//!
//! ```text
//! master key: a key-encryption key only, from one of the key sources
//!   (file 0600, CUSTOS_MASTER_KEY, Shamir shares, or an AES key inside an
//!   HSM that never leaves it); see keyring.rs
//!  ├─ wrap (AAD = purpose) → derivation root (random, 32 bytes)
//!  │    └─ HKDF-SHA256 → ledger subject-commitment key, per-agreement
//!  │                      pseudonym keys
//!  ├─ wrap (AAD = purpose) → instance signing key at rest (older homes)
//!  ├─ wrap (AAD = purpose) → sealed catalogue fields (sealed.rs)
//!  └─ wrap (AAD = dataset id) → per-dataset data key
//!       └─ HKDF-SHA256 → footer key, identity-column key, bucket key
//! ```
//!
//! Only wraps hang off the master key, so rotating it re-wraps a few
//! hundred bytes per dataset and changes no derived key, file or pseudonym.
//! A software master key wraps with AES-256-GCM-SIV; an HSM key with
//! AES-256-GCM inside the token.
//!
//! No type here implements `Debug` with its bytes, `Display` or `Serialize`:
//! secrets cannot end up in logs or errors by accident.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of every symmetric key Custos uses, in bytes (256 bits).
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// Errors about keys. They never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The master key text is not 64 hexadecimal characters.
    #[error("the master key must be 64 hexadecimal characters (256 bits)")]
    MasterKeyFormat,
    /// The master key does not open this home.
    #[error(
        "the master key does not match this home: check CUSTOS_MASTER_KEY or the home's master.key"
    )]
    WrongMasterKey,
    /// A wrapped key failed authentication.
    #[error("the {0} could not be unwrapped: wrong master key or corrupted metadata")]
    Unwrap(&'static str),
    /// The operating system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// A key share is not of the form `custos-share-N-<hex>`.
    #[error(
        "key share {0} is not a Custos key share (expected `custos-share-N-` and 64 hexadecimal characters)"
    )]
    ShareFormat(usize),
    /// A share whose number this home never issued.
    #[error("key share {0} has number {1}, but this home's shares are numbered 1 to {2}")]
    ShareUnknown(usize, u8, usize),
    /// A share that does not match its check value: mistyped or not this home's.
    #[error(
        "key share number {0} does not match this home's share {0} (its check should be {1}): mistyped, or from another home or an earlier key"
    )]
    ShareCheck(u8, String),
    /// The same share given twice.
    #[error("key share number {0} was given twice")]
    ShareRepeated(u8),
    /// Fewer shares than the threshold.
    #[error("{given} key share(s) given, this home needs {threshold} of its {count}")]
    TooFewShares {
        /// Shares given.
        given: usize,
        /// Shares needed.
        threshold: usize,
        /// Shares issued.
        count: usize,
    },
    /// A threshold or share count out of range.
    #[error(
        "key shares: the threshold must be at least 2 and at most the number of shares, which may be at most 255"
    )]
    ShareParameters,
    /// The hardware security module refused or failed an operation.
    #[error("HSM: {0}")]
    Hsm(String),
}

/// A secret text (an HSM PIN, a key share, a key in hex): zeroized on
/// drop, and never shown by `Debug`.
#[derive(Clone, Default)]
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    /// The text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretText {
    fn from(text: String) -> Self {
        Self(Zeroizing::new(text))
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Which key check a key matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// A home with a derivation root.
    Current,
    /// A home made before key custody (its derived keys come from the
    /// master key itself).
    Legacy,
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), KeyError> {
    getrandom::fill(buf).map_err(|_| KeyError::Random)
}

/// The 256-bit root of all keys of one Custos home.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; KEY_LEN]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Draws a fresh random master key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut key = [0u8; KEY_LEN];
        random_bytes(&mut key)?;
        Ok(Self(key))
    }

    /// A second copy of the key (for handing to a second owner); both copies
    /// are zeroized on drop.
    pub fn duplicate(&self) -> Self {
        Self(self.0)
    }

    /// Parses the hexadecimal form (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let text = Zeroizing::new(text.trim().to_owned());
        let mut key = [0u8; KEY_LEN];
        hex::decode_to_slice(text.as_bytes(), &mut key).map_err(|_| KeyError::MasterKeyFormat)?;
        Ok(Self(key))
    }

    /// The hexadecimal form, for writing the key file. Zeroized on drop.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }

    /// A value that proves a key is this key without revealing it, and
    /// that its home has a derivation root (only the key can make it, so
    /// deleting catalogue rows cannot turn a home into an older one).
    pub fn key_check(&self) -> [u8; 32] {
        self.hmac(b"custos/v2/master-key-check")
    }

    /// The key check of homes made before the derivation root.
    fn legacy_key_check(&self) -> [u8; 32] {
        self.hmac(b"custos/v1/master-key-check")
    }

    /// Checks `expected` in constant time; says whether it is an older
    /// home's check ([`KeyCheck::Legacy`]).
    pub fn verify_key_check(&self, expected: &[u8]) -> Result<KeyCheck, KeyError> {
        if bool::from(self.key_check().ct_eq(expected)) {
            Ok(KeyCheck::Current)
        } else if bool::from(self.legacy_key_check().ct_eq(expected)) {
            Ok(KeyCheck::Legacy)
        } else {
            Err(KeyError::WrongMasterKey)
        }
    }

    /// The key's bytes (for splitting into shares and for adopting them as
    /// an older home's derivation root).
    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A key from 32 bytes (combined shares).
    pub(crate) fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    fn hmac(&self, message: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.0, message)
    }

    /// Encrypts `secret` under the master key, bound to `purpose`.
    ///
    /// The output is `nonce ‖ ciphertext`. AES-GCM-SIV keeps a nonce reuse
    /// from being catastrophic, and the random nonce makes it improbable.
    pub fn wrap(&self, purpose: &str, secret: &[u8]) -> Result<Vec<u8>, KeyError> {
        let cipher = Aes256GcmSiv::new_from_slice(&self.0).map_err(|_| KeyError::Random)?;
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| KeyError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Reverses [`MasterKey::wrap`]; fails if the key, purpose or bytes differ.
    pub fn unwrap_secret(
        &self,
        purpose: &str,
        what: &'static str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let cipher = Aes256GcmSiv::new_from_slice(&self.0).map_err(|_| KeyError::Unwrap(what))?;
        let (nonce, sealed) = wrapped
            .split_at_checked(NONCE_LEN)
            .ok_or(KeyError::Unwrap(what))?;
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: purpose.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| KeyError::Unwrap(what))
    }
}

/// The AAD of a dataset's wrapped data key.
pub(crate) fn data_key_purpose(dataset_id: &str) -> String {
    format!("custos/v1/dataset-key/{dataset_id}")
}

/// The secret every derived key of a home comes from (HKDF-SHA256,
/// `info` = purpose): the ledger's subject-commitment key and the
/// per-agreement pseudonym keys. Random for a home made since key custody
/// (kept wrapped under the master key); an older home's is its first
/// master key's bytes, so that rotation changes no pseudonym.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DerivationRoot([u8; KEY_LEN]);

impl std::fmt::Debug for DerivationRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DerivationRoot(<redacted>)")
    }
}

impl DerivationRoot {
    /// Draws a fresh random root.
    pub(crate) fn generate() -> Result<Self, KeyError> {
        let mut key = [0u8; KEY_LEN];
        random_bytes(&mut key)?;
        Ok(Self(key))
    }

    /// A root from its bytes.
    pub(crate) fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The root's bytes, for wrapping.
    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Derives a purpose-bound 256-bit subkey (HKDF-SHA256, `info` = purpose).
    pub fn derive(&self, purpose: &str) -> Zeroizing<[u8; KEY_LEN]> {
        derive(&self.0, purpose)
    }
}

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = keyed_hmac(key);
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// An HMAC-SHA-256 instance keyed with `key`.
#[allow(clippy::expect_used)]
fn keyed_hmac(key: &[u8]) -> Hmac<Sha256> {
    // INVARIANT: HMAC accepts keys of any length; this cannot fail. A silent
    // fallback (a zero key) would fail open, so a failure must stop instead.
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length")
}

#[allow(clippy::expect_used)]
fn derive(ikm: &[u8], purpose: &str) -> Zeroizing<[u8; KEY_LEN]> {
    let hk = Hkdf::<Sha256>::new(Some(b"custos/v1"), ikm);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // INVARIANT: 32 bytes is far below HKDF-SHA-256's 8,160-byte limit, so
    // this cannot fail; a zero key would fail open, so failing must stop.
    hk.expand(purpose.as_bytes(), out.as_mut())
        .expect("HKDF-SHA-256 can expand 32 bytes");
    out
}

/// The random key of one dataset; everything that encrypts the dataset's
/// files is derived from it.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; KEY_LEN]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    /// Draws a fresh random data key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut key = [0u8; KEY_LEN];
        random_bytes(&mut key)?;
        Ok(Self(key))
    }

    /// A data key from its bytes (unwrapped).
    pub(crate) fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key's bytes, for wrapping.
    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Key for the Parquet footer and the non-identifying columns.
    pub fn footer_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        derive(&self.0, "parquet-footer")
    }

    /// Key for the `subject_id` and `identifier` columns. Kept separate so a
    /// process that only computes aggregates never needs it.
    pub fn identity_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        derive(&self.0, "parquet-identity-columns")
    }

    /// The keyed hash that assigns subjects to `buckets` bucket files.
    pub fn bucketer(&self, buckets: u32) -> SubjectBucketer {
        let key = derive(&self.0, "subject-bucket");
        SubjectBucketer {
            mac: keyed_hmac(key.as_ref()),
            buckets: buckets.max(1),
        }
    }
}

/// Assigns a subject to a bucket file by a keyed hash of its id. Keyed, so
/// bucket numbers tell a thief nothing about which subject is in which file.
#[derive(Clone)]
pub struct SubjectBucketer {
    mac: Hmac<Sha256>,
    buckets: u32,
}

impl std::fmt::Debug for SubjectBucketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubjectBucketer({} buckets)", self.buckets)
    }
}

impl SubjectBucketer {
    /// The bucket (in `0..buckets`) of a subject id.
    pub fn bucket(&self, subject: &[u8]) -> u32 {
        self.place(subject).0
    }

    /// The bucket of a subject id and its subject key: a keyed pseudonym
    /// (another part of the same keyed hash) stored beside every row so
    /// that aggregates can bound each subject's rows without decrypting
    /// the subject id. Within a dataset, equal ids give equal keys.
    pub fn place(&self, subject: &[u8]) -> (u32, i64) {
        let mut mac = self.mac.clone();
        mac.update(subject);
        let digest = mac.finalize().into_bytes();
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        let mut tail = [0u8; 8];
        tail.copy_from_slice(&digest[8..16]);
        // Truncation is intended: the remainder is below `buckets`, a u32.
        let bucket = (u64::from_be_bytes(head) % u64::from(self.buckets)) as u32;
        (bucket, i64::from_be_bytes(tail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trips_and_binds_purpose() {
        let mk = MasterKey::generate().unwrap();
        let wrapped = mk.wrap(&data_key_purpose("a"), b"secret").unwrap();
        let back = mk
            .unwrap_secret(&data_key_purpose("a"), "x", &wrapped)
            .unwrap();
        assert_eq!(back.as_slice(), b"secret");
        assert!(
            mk.unwrap_secret(&data_key_purpose("b"), "x", &wrapped)
                .is_err()
        );
        let other = MasterKey::generate().unwrap();
        assert!(
            other
                .unwrap_secret(&data_key_purpose("a"), "x", &wrapped)
                .is_err()
        );
    }

    #[test]
    fn key_check_detects_wrong_key() {
        let mk = MasterKey::generate().unwrap();
        let check = mk.key_check();
        assert!(mk.verify_key_check(&check).is_ok());
        let other = MasterKey::generate().unwrap();
        assert!(matches!(
            other.verify_key_check(&check),
            Err(KeyError::WrongMasterKey)
        ));
    }

    #[test]
    fn hex_round_trip_and_debug_redacts() {
        let mk = MasterKey::generate().unwrap();
        let hex = mk.to_hex();
        let back = MasterKey::from_hex(&hex).unwrap();
        assert_eq!(back.0, mk.0);
        assert!(!format!("{mk:?}").contains(hex.as_str()));
        assert!(MasterKey::from_hex("abc").is_err());
    }

    #[test]
    fn buckets_are_stable_and_in_range() {
        let dk = DataKey::generate().unwrap();
        let bucketer = dk.bucketer(7);
        let mut seen = [false; 7];
        for i in 0..1000u32 {
            let s = i.to_string();
            let b = bucketer.bucket(s.as_bytes());
            assert_eq!(b, dk.bucketer(7).bucket(s.as_bytes()));
            seen[b as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "every bucket is used");
    }
}
