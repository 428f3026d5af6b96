//! Master-key rotation without rewriting data: a new master key (file,
//! environment, shares or HSM), every sealed secret of the catalogue
//! re-wrapped under it in one transaction, dataset files untouched.
//!
//! Crash safety: until the catalogue's transaction commits, the home opens
//! with the old key (a staged `master.key.next` that does not match the
//! catalogue's key check is removed at open); once it commits, with the
//! new one (a staged file that matches is renamed into place at open). An
//! HSM key made before a crash stays in the token, unused.

use zeroize::Zeroizing;

use crate::home::{
    Home, HomeError, KEY_CHECK, KEY_HSM, KEY_HSM_RETIRED, KEY_SHARES, KeyLock, KeySource,
    MASTER_KEY_FILE, NEXT_MASTER_KEY_FILE, io_err, remove_if_present, retired_keys,
    retired_setting, sync_dir, write_secret_file,
};
use crate::hsm::{HsmConfig, HsmKey};
use crate::key_shares::PrintedShare;
use crate::keyring::Wrapper;
use crate::keys::{MasterKey, SecretText, hmac_sha256};
use crate::sealed::{DERIVATION_ROOT, derivation_root_purpose};

/// Set to `key-written`, `ledgered` or `committed` to stop a rotation
/// there for a minute, or `POINT:SECONDS` for that long (the crash tests
/// kill the process there; the lock tests let it go on).
pub const ROTATION_PAUSE_ENV: &str = "CUSTOS_ROTATION_PAUSE";

/// Instance setting: the fingerprint of a rotation about to be ledgered,
/// removed by its commit. Found at an open, it is a rotation that was
/// recorded (or attempted) but never took effect.
const PENDING: &str = "key_rotation_pending";

/// Where the new master key goes.
#[derive(Debug)]
pub enum NewKeySource {
    /// A new `HOME/master.key`.
    File,
    /// Printed once, for `CUSTOS_MASTER_KEY`.
    Environment,
    /// Split into `count` shares, any `threshold` of which open the home.
    Shares {
        /// Shares needed.
        threshold: usize,
        /// Shares issued.
        count: usize,
    },
    /// A new key in a PKCS#11 token.
    Hsm {
        /// The module and token.
        config: HsmConfig,
        /// The token's PIN.
        pin: SecretText,
    },
}

/// A new master key made but not yet in use.
#[derive(Debug)]
pub struct PreparedRotation {
    /// Held from staging the key until it is in place.
    _lock: KeyLock,
    wrapper: Wrapper,
    source: KeySource,
    /// The new shares (shares source), to hand out before the commit.
    pub shares: Vec<PrintedShare>,
    /// The new key in hex (environment source), to hand over before the commit.
    pub key_hex: Option<SecretText>,
}

impl PreparedRotation {
    /// Where the new key lives.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The new key's public fingerprint (for the ledger).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.wrapper)
    }
}

/// A public name of a master key: 8 bytes of a hash of its key check, or
/// the HSM key's label. Reveals nothing that opens anything.
pub fn fingerprint(wrapper: &Wrapper) -> String {
    match wrapper {
        Wrapper::Software(key) => {
            hex::encode(&hmac_sha256(b"custos/v1/key-fingerprint", &key.key_check())[..8])
        }
        Wrapper::Hsm(key) => format!("hsm:{}", key.config().label),
    }
}

/// Stops for a minute at `point` when [`ROTATION_PAUSE_ENV`] names it.
pub fn pause_point(point: &str) {
    let Ok(setting) = std::env::var(ROTATION_PAUSE_ENV) else {
        return;
    };
    let (at, seconds) = setting.split_once(':').unwrap_or((&setting, "60"));
    if at == point {
        eprintln!("rotation paused at {point}");
        let seconds = seconds.parse().unwrap_or(60);
        std::thread::sleep(std::time::Duration::from_secs(seconds));
    }
}

/// A rotation that committed.
#[derive(Debug)]
pub struct Committed {
    /// Sealed values re-wrapped.
    pub rewrapped: usize,
    /// A step after the commit that failed (moving the key file, removing
    /// the old one, destroying the old HSM key): the new key is in use
    /// regardless; a key file is moved into place at the next open.
    pub unfinished: Option<String>,
}

impl Home {
    /// Notes that the rotation to `fingerprint` is about to be ledgered
    /// (its commit clears the note).
    pub async fn mark_rotation_pending(&self, fingerprint: &str) -> Result<(), HomeError> {
        self.meta()
            .replace_instance_values(&[(PENDING, fingerprint.as_bytes())], &[])
            .await?;
        Ok(())
    }

    /// Takes the note of a rotation that was ledgered (or attempted) but
    /// never committed, if any: its new key's fingerprint.
    pub async fn take_pending_rotation(&self) -> Result<Option<String>, HomeError> {
        let Some(raw) = self.meta().instance_value(PENDING).await? else {
            return Ok(None);
        };
        self.meta().replace_instance_values(&[], &[PENDING]).await?;
        Ok(Some(String::from_utf8_lossy(&raw).into_owned()))
    }

    /// The public fingerprint of the master key in use.
    pub fn key_fingerprint(&self) -> String {
        fingerprint(self.keys().wrapper())
    }

    /// Makes a new master key at `to` (a file is staged as
    /// `master.key.next`; an HSM key is generated in its token). Nothing
    /// uses it until [`Home::commit_rotation`].
    pub async fn prepare_rotation(&self, to: NewKeySource) -> Result<PreparedRotation, HomeError> {
        let lock = KeyLock::exclusive_on(self.root())?;
        let mut shares = Vec::new();
        let mut key_hex = None;
        let (wrapper, source) = match to {
            NewKeySource::File => {
                let master = MasterKey::generate()?;
                let next = self.root().join(NEXT_MASTER_KEY_FILE);
                match std::fs::remove_file(&next) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io_err(&next)(e));
                    }
                    _ => {}
                }
                let mut text = Zeroizing::new(master.to_hex().to_string());
                text.push('\n');
                write_secret_file(&next, text.as_bytes())?;
                sync_dir(self.root())?;
                (Wrapper::Software(master), KeySource::File)
            }
            NewKeySource::Environment => {
                let master = MasterKey::generate()?;
                key_hex = Some(SecretText::from(master.to_hex().to_string()));
                (Wrapper::Software(master), KeySource::Environment)
            }
            NewKeySource::Shares { threshold, count } => {
                let master = MasterKey::generate()?;
                let (printed, set) = crate::key_shares::split(&master, threshold, count)?;
                shares = printed;
                (Wrapper::Software(master), KeySource::Shares(set))
            }
            NewKeySource::Hsm { config, pin } => {
                let key = HsmKey::create(&config, pin.expose())?;
                let config = key.config().clone();
                (Wrapper::Hsm(key), KeySource::Hsm(config))
            }
        };
        pause_point("key-written");
        Ok(PreparedRotation {
            _lock: lock,
            wrapper,
            source,
            shares,
            key_hex,
        })
    }

    /// Puts `new` in use: re-wraps every sealed secret and the derivation
    /// root and records the new source, in one catalogue transaction; then
    /// moves the key file into place (or removes the old one) and removes
    /// an old HSM key from its token. Dataset files are not touched. An
    /// error means the catalogue did not change and the old key is in use.
    pub async fn commit_rotation(&self, new: PreparedRotation) -> Result<Committed, HomeError> {
        let old = self.keys().wrapper();
        let root = new.wrapper.wrap(
            &derivation_root_purpose(&self.origin().await?),
            self.keys().root().bytes(),
        )?;
        let mut settings: Vec<(&str, Vec<u8>)> = new.source.settings()?;
        settings.push((DERIVATION_ROOT, root));
        let mut remove = Vec::new();
        match &new.wrapper {
            Wrapper::Software(key) => settings.push((KEY_CHECK, key.key_check().to_vec())),
            Wrapper::Hsm(_) => remove.push(KEY_CHECK),
        }
        if !matches!(new.source, KeySource::Shares(_)) {
            remove.push(KEY_SHARES);
        }
        if !matches!(new.source, KeySource::Hsm(_)) {
            remove.push(KEY_HSM);
        }
        remove.push(PENDING);
        // An old HSM key is destroyed after the commit; it joins the list
        // of retired keys (sealed under the new key) so that a crash
        // before that leaves it recorded, not forgotten.
        let mut retired = retired_keys(self.meta().as_ref(), old).await?;
        if let Wrapper::Hsm(old_key) = old {
            retired.push(old_key.config().clone());
        }
        match retired_setting(&new.wrapper, &retired)? {
            Some(sealed) => settings.push((KEY_HSM_RETIRED, sealed)),
            None => remove.push(KEY_HSM_RETIRED),
        }
        let settings: Vec<(&str, &[u8])> =
            settings.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let rewrap = |purpose: &str, what: &'static str, sealed: &[u8]| {
            let secret = old.unwrap_secret(purpose, what, sealed)?;
            new.wrapper.wrap(purpose, &secret)
        };
        let count = self
            .meta()
            .rewrap_sealed(&rewrap, &settings, &remove)
            .await?;
        pause_point("committed");
        let unfinished = self
            .finish_rotation(&new, retired)
            .await
            .err()
            .map(|e| e.to_string());
        Ok(Committed {
            rewrapped: count,
            unfinished,
        })
    }

    /// The steps after the commit: the key file into place (or the old
    /// one away), the old HSM key destroyed and struck from the retired.
    async fn finish_rotation(
        &self,
        new: &PreparedRotation,
        mut retired: Vec<HsmConfig>,
    ) -> Result<(), HomeError> {
        let root_dir = self.root();
        if new.source == KeySource::File {
            let path = root_dir.join(MASTER_KEY_FILE);
            std::fs::rename(root_dir.join(NEXT_MASTER_KEY_FILE), &path).map_err(io_err(&path))?;
            sync_dir(root_dir)?;
        } else {
            remove_if_present(&root_dir.join(MASTER_KEY_FILE))?;
        }
        if let Wrapper::Hsm(old_key) = self.keys().wrapper() {
            // The new key opens everything; the old one is now only a way
            // into copies of the catalogue made before.
            old_key.destroy()?;
            retired.retain(|k| k.id != old_key.config().id);
            match retired_setting(&new.wrapper, &retired)? {
                Some(v) => {
                    self.meta()
                        .replace_instance_values(&[(KEY_HSM_RETIRED, &v)], &[])
                        .await?
                }
                None => {
                    self.meta()
                        .replace_instance_values(&[], &[KEY_HSM_RETIRED])
                        .await?
                }
            }
        }
        Ok(())
    }

    /// HSM keys rotations retired but did not destroy (a crash after a
    /// commit, in a token other than the one in use): to delete by hand.
    pub async fn retired_hsm_keys(&self) -> Result<Vec<HsmConfig>, HomeError> {
        retired_keys(self.meta().as_ref(), self.keys().wrapper()).await
    }
}
