//! Master-key rotation as an action: authorized, ledgered before it takes
//! effect, and shown to the custodian before it commits.

use custos_ledger::{Decision, Entry};
use custos_store::rotation::{NewKeySource, pause_point};
use custos_store::{HsmConfig, KeySource, PrintedShare, SecretText};

/// Where `custos key rotate` puts the new master key.
pub use custos_store::rotation::NewKeySource as NewMasterKey;

use crate::{Actor, BrokerError, Custos, now_micros};

/// What the custodian must take away before a rotation commits (after it,
/// nothing else opens the home).
#[derive(Debug)]
pub enum NewKeyMaterial<'a> {
    /// The new key is in `master.key` (nothing to take).
    File,
    /// The new key, hex: to be set as `CUSTOS_MASTER_KEY` from now on.
    Environment(&'a str),
    /// The new shares, each to its holder.
    Shares(&'a [PrintedShare]),
    /// The new key's place in the token.
    Hsm(&'a HsmConfig),
}

/// A rotation that took effect.
#[derive(Debug, Clone)]
pub struct KeyRotated {
    /// The old source's name.
    pub from: &'static str,
    /// The new source's name.
    pub to: &'static str,
    /// The old key's public fingerprint.
    pub previous_fingerprint: String,
    /// The new key's public fingerprint.
    pub fingerprint: String,
    /// Sealed secrets re-wrapped (data keys and sealed fields).
    pub rewrapped: usize,
    /// A step after the commit that failed (the new key is in use).
    pub unfinished: Option<String>,
    /// The ledger entry that records the rotation.
    pub ledger_index: u64,
}

impl Custos {
    /// Where the master key lives and its public fingerprint.
    pub fn master_key_summary(&self) -> (KeySource, String) {
        (
            self.home().key_source().clone(),
            self.home().key_fingerprint(),
        )
    }

    /// HSM keys rotations retired but could not destroy (a crash after a
    /// commit, in another token): to be deleted by hand.
    pub async fn retired_master_keys(&self) -> Result<Vec<HsmConfig>, BrokerError> {
        Ok(self.home().retired_hsm_keys().await?)
    }

    /// Rotates the master key (admins only): makes the new key, shows what
    /// must be taken away (`show`: new shares or key), records the rotation
    /// in the ledger, then re-wraps every data key and sealed secret under
    /// the new key in one transaction. Dataset files are not rewritten. A
    /// ledger that cannot record it stops it before anything changed.
    /// Consumes the broker: the home is reopened with the new key.
    pub async fn rotate_master_key(
        self,
        actor: &Actor,
        to: NewKeySource,
        show: impl FnOnce(NewKeyMaterial<'_>),
    ) -> Result<KeyRotated, BrokerError> {
        const ACTION: &str = "key.rotate";
        if !actor.is_admin() {
            return Err(self.deny(actor, ACTION, "only an admin may rotate the master key"));
        }
        let from = self.home().key_source().name();
        let previous_fingerprint = self.home().key_fingerprint();
        let new = self.home().prepare_rotation(to).await?;
        show(match new.source() {
            KeySource::File => NewKeyMaterial::File,
            KeySource::Environment => {
                NewKeyMaterial::Environment(new.key_hex.as_ref().map_or("", SecretText::expose))
            }
            KeySource::Shares(_) => NewKeyMaterial::Shares(&new.shares),
            KeySource::Hsm(config) => NewKeyMaterial::Hsm(config),
        });
        let to = new.source().name();
        let fingerprint = new.fingerprint();
        let mut entry = Entry::new(now_micros(), actor.id(), ACTION, Decision::Allow)
            .with_attribute("from", from)
            .with_attribute("to", to)
            .with_attribute("previous_fingerprint", previous_fingerprint.clone())
            .with_attribute("fingerprint", fingerprint.clone());
        if let KeySource::Shares(set) = new.source() {
            entry = entry
                .with_count("threshold", set.threshold as u64)
                .with_count("shares", set.count() as u64);
        }
        // INVARIANT: the new key wraps nothing until this entry is durable.
        self.home().mark_rotation_pending(&fingerprint).await?;
        let recorded = self.append(&entry)?;
        pause_point("ledgered");
        let committed = match self.home().commit_rotation(new).await {
            Ok(c) => c,
            Err(e) => {
                // The catalogue's transaction rolled back: the old key is
                // still in use, and the ledger says the rotation failed.
                let _ = self.append(
                    &Entry::new(now_micros(), actor.id(), ACTION, Decision::Recorded)
                        .with_attribute("fingerprint", fingerprint)
                        .with_reason("the rotation recorded above did not take effect; the previous key is still in use"),
                );
                return Err(e.into());
            }
        };
        self.close()?;
        Ok(KeyRotated {
            from,
            to,
            previous_fingerprint,
            fingerprint,
            rewrapped: committed.rewrapped,
            unfinished: committed.unfinished,
            ledger_index: recorded.index(),
        })
    }
}
