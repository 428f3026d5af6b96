//! An opened home's keys: the master key that wraps (in process memory
//! or inside an HSM) and the derivation root it unwraps.
//!
//! Everything that seals or opens a secret of the home goes through a
//! [`Keyring`], so whether the master key is a software key or an HSM key
//! matters to no caller.

use zeroize::Zeroizing;

use crate::hsm::HsmKey;
use crate::keys::{DataKey, DerivationRoot, KEY_LEN, KeyError, MasterKey, data_key_purpose};

/// The key that wraps every other secret of a home.
#[derive(Debug)]
pub enum Wrapper {
    /// A 256-bit key in process memory (key file, environment or shares):
    /// AES-256-GCM-SIV.
    Software(MasterKey),
    /// An AES-256 key inside a PKCS#11 token that never leaves it:
    /// AES-256-GCM computed by the token.
    Hsm(HsmKey),
}

impl Wrapper {
    /// Encrypts `secret` bound to `purpose` (the AEAD's associated data).
    pub fn wrap(&self, purpose: &str, secret: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            Self::Software(key) => key.wrap(purpose, secret),
            Self::Hsm(key) => key.wrap(purpose, secret),
        }
    }

    /// Reverses [`Wrapper::wrap`]; fails if the key, purpose or bytes differ.
    pub fn unwrap_secret(
        &self,
        purpose: &str,
        what: &'static str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        match self {
            Self::Software(key) => key.unwrap_secret(purpose, what, wrapped),
            Self::Hsm(key) => key.unwrap_secret(purpose, what, wrapped),
        }
    }

    /// Unwraps a 32-byte key.
    pub(crate) fn unwrap_key(
        &self,
        purpose: &str,
        what: &'static str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
        let bytes = self.unwrap_secret(purpose, what, wrapped)?;
        let key: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Unwrap(what))?;
        Ok(Zeroizing::new(key))
    }
}

/// The keys of an opened home.
#[derive(Debug)]
pub struct Keyring {
    wrapper: Wrapper,
    root: DerivationRoot,
}

impl Keyring {
    /// A keyring of `wrapper` and the root it unwrapped.
    pub(crate) fn new(wrapper: Wrapper, root: DerivationRoot) -> Self {
        Self { wrapper, root }
    }

    /// The master key.
    pub fn wrapper(&self) -> &Wrapper {
        &self.wrapper
    }

    /// The derivation root (for re-wrapping at rotation).
    pub(crate) fn root(&self) -> &DerivationRoot {
        &self.root
    }

    /// Seals `secret` under the master key, bound to `purpose`.
    pub fn wrap(&self, purpose: &str, secret: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.wrapper.wrap(purpose, secret)
    }

    /// Opens what [`Keyring::wrap`] sealed with the same purpose.
    pub fn unwrap_secret(
        &self,
        purpose: &str,
        what: &'static str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.wrapper.unwrap_secret(purpose, what, wrapped)
    }

    /// Wraps a dataset's data key, bound to the dataset's storage id.
    pub fn wrap_data_key(&self, dataset_id: &str, key: &DataKey) -> Result<Vec<u8>, KeyError> {
        self.wrapper
            .wrap(&data_key_purpose(dataset_id), key.bytes())
    }

    /// Unwraps a dataset's data key.
    pub fn unwrap_data_key(&self, dataset_id: &str, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let key = self
            .wrapper
            .unwrap_key(&data_key_purpose(dataset_id), "dataset key", wrapped)?;
        Ok(DataKey::from_bytes(*key))
    }

    /// Derives a purpose-bound 256-bit key from the derivation root.
    pub fn derive(&self, purpose: &str) -> Zeroizing<[u8; KEY_LEN]> {
        self.root.derive(purpose)
    }
}
