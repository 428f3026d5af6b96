//! The ledger's signing key, kept apart from the data master key so that
//! whoever holds the one cannot re-sign the ledger with it: a file outside
//! the home (by default `HOME.ledger.key`, beside it), or the environment
//! (`CUSTOS_LEDGER_KEY`, read by the CLI), written nowhere. The catalogue
//! keeps only the public key and where the file is.
//!
//! Rotation (see `custos_ledger::key_change`) stages the new key as
//! `PATH.next`, records the pending rotation, lets the ledger record the
//! change, then renames the file into place and updates the catalogue. A
//! crash anywhere in between leaves a home that opens with the old key or
//! the new one: [`Home::ledger_keys`] offers the staged key to the ledger,
//! whose recovery uses it only if the change was recorded.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::home::{Home, HomeError, io_err, sync_dir};
use crate::keys::{KEY_LEN, KeyError, random_bytes};

/// Catalogue settings.
pub(crate) const SOURCE: &str = "ledger_key_source";
pub(crate) const FILE: &str = "ledger_key_file";
pub(crate) const PUBLIC: &str = "signing_public_key";
const PENDING: &str = "ledger_key_pending";
/// The legacy setting: the key wrapped under the master key.
pub(crate) const WRAPPED: &str = "signing_key_wrapped";

/// Where a new home's ledger signing key goes.
#[derive(Debug)]
pub enum LedgerKeySource {
    /// Generate one into this file (mode 0600; must not exist; must be
    /// outside the home).
    File(PathBuf),
    /// Use this seed (from `CUSTOS_LEDGER_KEY`) and write it nowhere.
    External(Zeroizing<[u8; KEY_LEN]>),
}

impl LedgerKeySource {
    /// The default for a home at `root`: the file `ROOT.ledger.key` beside it.
    pub fn beside(root: &Path) -> Self {
        let mut name = root
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "custos".into());
        name.push(".ledger.key");
        Self::File(root.with_file_name(name))
    }
}

/// Parses a seed written as 64 hex digits.
pub fn parse_seed(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, HomeError> {
    let mut seed = Zeroizing::new([0u8; KEY_LEN]);
    hex::decode_to_slice(text.trim(), seed.as_mut())
        .map_err(|_| HomeError::LedgerKey("a ledger key must be 64 hex digits".into()))?;
    Ok(seed)
}

/// A fresh seed.
pub(crate) fn generate() -> Result<Zeroizing<[u8; KEY_LEN]>, HomeError> {
    let mut seed = Zeroizing::new([0u8; KEY_LEN]);
    random_bytes(seed.as_mut())?;
    Ok(seed)
}

/// Writes a seed to `path` (created, 0600, fsynced with its directory).
pub(crate) fn write_key_file(path: &Path, seed: &[u8; KEY_LEN]) -> Result<(), HomeError> {
    let mut text = Zeroizing::new(hex::encode(seed));
    text.push('\n');
    crate::home::write_secret_file(path, text.as_bytes())?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

fn read_key_file(path: &Path) -> Result<SigningKey, HomeError> {
    let meta = fs::metadata(path).map_err(|cause| {
        if cause.kind() == std::io::ErrorKind::NotFound {
            HomeError::LedgerKey(format!(
                "the ledger signing key file `{}` is missing; restore it, or point CUSTOS_LEDGER_KEY_FILE at it",
                path.display()
            ))
        } else {
            io_err(path)(cause)
        }
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(HomeError::KeyFileShared {
            path: path.to_owned(),
            mode: meta.permissions().mode() & 0o777,
        });
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(io_err(path))?);
    let seed = parse_seed(&text)?;
    Ok(SigningKey::from_bytes(&seed))
}

fn staged(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".next");
    PathBuf::from(name)
}

/// The keys a home's ledger opens with.
#[derive(Debug)]
pub struct LedgerKeys {
    /// The key the catalogue names (or, after a crash late in a rotation,
    /// the new one).
    pub current: SigningKey,
    /// The key an interrupted rotation was moving to.
    pub next: Option<SigningKey>,
    /// The file the current key came from (`None`: environment or legacy).
    pub file: Option<PathBuf>,
}

impl Home {
    async fn setting(&self, key: &str) -> Result<Option<String>, HomeError> {
        Ok(self
            .meta()
            .instance_value(key)
            .await?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The ledger's public key as the catalogue records it.
    pub async fn ledger_public_key(&self) -> Result<ed25519_dalek::VerifyingKey, HomeError> {
        public_key_of(self.meta().as_ref()).await
    }

    /// The ledger's signing key from its source: `external` (from
    /// `CUSTOS_LEDGER_KEY`), else `file_override` (`CUSTOS_LEDGER_KEY_FILE`),
    /// else the file the catalogue names (else, for homes made before keys
    /// were split, the key wrapped under the master key). It must be the
    /// key whose public half the catalogue records — except while a
    /// rotation is pending, when the staged key is offered as `next`.
    pub async fn ledger_keys(
        &self,
        external: Option<&[u8; KEY_LEN]>,
        file_override: Option<&Path>,
    ) -> Result<LedgerKeys, HomeError> {
        if self.setting(SOURCE).await?.is_none() {
            return Ok(LedgerKeys {
                current: self.legacy_signing_key().await?,
                next: None,
                file: None,
            });
        }
        let recorded = self.setting(FILE).await?.map(PathBuf::from);
        let (current, file) = match (external, file_override.or(recorded.as_deref())) {
            (Some(seed), _) => (SigningKey::from_bytes(seed), None),
            (None, Some(path)) => (read_key_file(path)?, Some(path.to_owned())),
            (None, None) => {
                return Err(HomeError::LedgerKey(
                    "this home keeps its ledger signing key outside: set CUSTOS_LEDGER_KEY".into(),
                ));
            }
        };
        let pending = self.setting(PENDING).await?.map(PathBuf::from);
        let public = self.ledger_public_key().await?;
        let next = match &pending {
            Some(dest) if staged(dest).exists() => Some(read_key_file(&staged(dest))?),
            // Renamed into place but not yet recorded: the file holds it.
            Some(dest) if dest.exists() && Some(dest.as_path()) != file.as_deref() => {
                Some(read_key_file(dest)?)
            }
            _ => None,
        };
        if current.verifying_key() != public {
            // A crash after the new key replaced the old file in place.
            if pending.is_some() && file == pending {
                return Ok(LedgerKeys {
                    next: Some(current.clone()),
                    current,
                    file,
                });
            }
            return Err(HomeError::LedgerKey(format!(
                "the ledger signing key given is not this home's (its public key is {})",
                hex::encode(public.as_bytes())
            )));
        }
        Ok(LedgerKeys {
            current,
            next,
            file,
        })
    }

    async fn legacy_signing_key(&self) -> Result<SigningKey, HomeError> {
        let wrapped = self
            .meta()
            .instance_value(WRAPPED)
            .await?
            .unwrap_or_default();
        let seed = self.keys().unwrap_secret(
            crate::sealed::SIGNING_KEY_PURPOSE,
            "instance signing key",
            &wrapped,
        )?;
        let seed: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(
            seed.as_slice()
                .try_into()
                .map_err(|_| KeyError::Unwrap("instance signing key"))?,
        );
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key() != self.ledger_public_key().await? {
            return Err(HomeError::LedgerKey(
                "the wrapped ledger key is not the one whose public key this home records".into(),
            ));
        }
        Ok(key)
    }

    /// Starts a rotation: a new key staged as `DEST.next` (0600), and the
    /// rotation recorded as pending. `dest` must not exist; by default it
    /// is a new file beside the current one (`NAME.<unix time>.key`), so no
    /// key file is ever overwritten (a copy of the home may share it). A
    /// home whose key comes from the environment must name one.
    pub async fn stage_ledger_key(
        &self,
        current_file: Option<&Path>,
        dest: Option<&Path>,
    ) -> Result<(SigningKey, PathBuf), HomeError> {
        let dest = match (dest, current_file) {
            (Some(d), _) => d.to_owned(),
            (None, Some(current)) => {
                let name = current
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "ledger.key".into());
                let stem = name.strip_suffix(".key").unwrap_or(&name);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                current.with_file_name(format!("{stem}.{now}.key"))
            }
            (None, None) => {
                return Err(HomeError::LedgerKey(
                    "this home's ledger key comes from the environment: name a file for the new key (--new-key-file)".into(),
                ));
            }
        };
        let absolute = std::path::absolute(&dest).map_err(io_err(&dest))?;
        let home = std::path::absolute(self.root()).map_err(io_err(self.root()))?;
        if absolute.starts_with(&home) {
            return Err(HomeError::LedgerKeyInside(dest));
        }
        if absolute.exists() {
            return Err(HomeError::LedgerKey(format!(
                "`{}` exists: a rotation never overwrites a key file; name a new one",
                absolute.display()
            )));
        }
        let dest = absolute;
        let seed = generate()?;
        let staged_path = staged(&dest);
        // A leftover of an abandoned attempt is replaced.
        let _ = fs::remove_file(&staged_path);
        write_key_file(&staged_path, &seed)?;
        self.meta()
            .replace_instance_values(&[(PENDING, dest.to_string_lossy().as_bytes())], &[])
            .await?;
        Ok((SigningKey::from_bytes(&seed), dest))
    }

    /// Completes a rotation the ledger has recorded: the staged key takes
    /// its file's place and the catalogue names it.
    pub async fn finish_ledger_key(&self, key: &SigningKey, dest: &Path) -> Result<(), HomeError> {
        let staged_path = staged(dest);
        if staged_path.exists() {
            fs::rename(&staged_path, dest).map_err(io_err(dest))?;
            if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        self.meta()
            .replace_instance_values(
                &[
                    (SOURCE, b"file".as_slice()),
                    (FILE, dest.to_string_lossy().as_bytes()),
                    (PUBLIC, key.verifying_key().as_bytes().as_slice()),
                ],
                &[PENDING, WRAPPED],
            )
            .await?;
        Ok(())
    }

    /// Abandons a rotation the ledger never recorded.
    pub async fn abandon_ledger_key(&self) -> Result<(), HomeError> {
        if let Some(dest) = self.setting(PENDING).await?.map(PathBuf::from) {
            let _ = fs::remove_file(staged(&dest));
        }
        self.meta().replace_instance_values(&[], &[PENDING]).await?;
        Ok(())
    }

    /// The pending rotation's destination, if one is pending.
    pub async fn pending_ledger_key(&self) -> Result<Option<PathBuf>, HomeError> {
        Ok(self.setting(PENDING).await?.map(PathBuf::from))
    }
}

/// The ledger public key a catalogue records.
pub(crate) async fn public_key_of(
    meta: &dyn crate::meta::MetadataStore,
) -> Result<ed25519_dalek::VerifyingKey, HomeError> {
    let raw = meta.instance_value(PUBLIC).await?.unwrap_or_default();
    let malformed =
        || HomeError::LedgerKey("the catalogue's ledger public key is malformed".into());
    let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| malformed())?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| malformed())
}
