//! The ledger signing key's own source, and its rotation. The key is not
//! under the master key: holding the data key does not let anyone re-sign
//! the ledger. Rotating it is ledgered (a `ledger.key_change` entry signed
//! by the old key) before the new key is put in place, and a crash in
//! between is finished or undone when the home next opens.

use std::path::{Path, PathBuf};

use custos_ledger::{Ledger, SharedLedger, SharedLedgerConfig};
use custos_store::meta::WriterLease;
use custos_store::{Home, LedgerPlacement};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::ledger_writer::{INTEGRATOR_LEASE, LedgerWriter};
use crate::{Actor, BrokerError, Custos, now_micros};

/// Where an opened home's ledger key comes from besides the home's record.
#[derive(Default)]
pub struct LedgerKeyFrom {
    /// The seed from `CUSTOS_LEDGER_KEY` (64 hex digits), if set.
    pub seed: Option<Zeroizing<[u8; 32]>>,
    /// The file from `CUSTOS_LEDGER_KEY_FILE`, if set.
    pub file: Option<PathBuf>,
}

impl std::fmt::Debug for LedgerKeyFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerKeyFrom")
            .field("seed", &self.seed.as_ref().map(|_| "<redacted>"))
            .field("file", &self.file)
            .finish()
    }
}

impl LedgerKeyFrom {
    /// Parses a seed given as 64 hex digits.
    pub fn seed_from_hex(text: &str) -> Result<Zeroizing<[u8; 32]>, BrokerError> {
        Ok(custos_store::ledger_key::parse_seed(text)?)
    }
}

/// What a rotation did.
#[derive(Debug, Clone, Serialize)]
pub struct KeyRotation {
    /// The ledger index of the `ledger.key_change` entry.
    pub entry: u64,
    /// The verifier key before.
    pub old_key: String,
    /// The verifier key now.
    pub new_key: String,
    /// The file that holds the new key.
    pub file: PathBuf,
    /// The file that held the old key, if it was one (no longer used).
    pub old_file: Option<PathBuf>,
}

/// Opens the ledger of `home` with its key, finishing or undoing an
/// interrupted rotation, after taking the home's writer lease. Returns the
/// ledger, the key file in use and the lease.
pub(crate) async fn open_ledger(
    home: &Home,
    from: &LedgerKeyFrom,
) -> Result<(LedgerWriter, Option<PathBuf>, WriterLease), BrokerError> {
    // Before the ledger: a second writer on another machine (a copied
    // home on a shared PostgreSQL catalogue) would fork a local ledger.
    // Replicas of a home with a shared ledger write it together.
    let lease = match home.ledger_placement() {
        LedgerPlacement::Local => home.hold_writer().await?,
        LedgerPlacement::Shared => WriterLease::replica(),
    };
    let keys = home
        .ledger_keys(from.seed.as_deref(), from.file.as_deref())
        .await?;
    if home.ledger_placement() == LedgerPlacement::Shared {
        return open_shared(home, keys, lease).await;
    }
    let next = keys.next.clone();
    let config = custos_ledger::LedgerConfig {
        dir: home.ledger_dir(),
        origin: home.origin().await?,
        signing_key: keys.current,
        next_key: keys.next,
        checkpoint_interval: crate::CHECKPOINT_INTERVAL,
        faults: crate::faults_from_env(),
    };
    let origin = config.origin.clone();
    // Opening replays and fsyncs; keep it off the async workers.
    let ledger = tokio::task::spawn_blocking(move || Ledger::open(config))
        .await
        .map_err(|_| custos_ledger::LedgerError::Closed)?
        .map_err(BrokerError::from)?;
    let mut file = keys.file;
    if let Some(dest) = home.pending_ledger_key().await? {
        match next {
            Some(next)
                if custos_ledger::note::verifier_key_for(&origin, &next.verifying_key())
                    == ledger.verifier_key() =>
            {
                home.finish_ledger_key(&next, &dest).await?;
                file = Some(dest);
            }
            _ => home.abandon_ledger_key().await?,
        }
    }
    Ok((LedgerWriter::Local(ledger), file, lease))
}

/// Joins a replicated home's shared ledger as one more replica.
async fn open_shared(
    home: &Home,
    keys: custos_store::LedgerKeys,
    lease: WriterLease,
) -> Result<(LedgerWriter, Option<PathBuf>, WriterLease), BrokerError> {
    if home.pending_ledger_key().await?.is_some() {
        // Only a local ledger rotates; nothing was recorded.
        home.abandon_ledger_key().await?;
    }
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce)
        .map_err(|_| BrokerError::Internal("no randomness for a replica name".into()))?;
    let config = SharedLedgerConfig {
        journal: std::sync::Arc::new(home.shared_journal()?),
        files: home.published_ledger()?,
        origin: home.origin().await?,
        signing_key: keys.current,
        checkpoint_interval: crate::CHECKPOINT_INTERVAL,
        lease_ttl: INTEGRATOR_LEASE,
        holder: format!("replica-{}-{}", std::process::id(), hex::encode(nonce)),
    };
    let ledger = tokio::task::spawn_blocking(move || SharedLedger::open(config))
        .await
        .map_err(|_| custos_ledger::LedgerError::Closed)??;
    Ok((LedgerWriter::Shared(ledger), keys.file, lease))
}

impl Custos {
    /// Rotates the ledger signing key (admins only): a new key is staged
    /// beside `new_file` (default: a new file beside the current key file;
    /// never an existing one), the ledger records the change signed by the
    /// old key and signs with the new one from then on, and the new key
    /// takes its file. The old key file is left for the custodian to
    /// destroy or archive. Verifiers
    /// holding the old key follow the change (`custos ledger verify`);
    /// witnesses must be given the new key.
    pub async fn rotate_ledger_key(
        &mut self,
        actor: &Actor,
        new_file: Option<&Path>,
    ) -> Result<KeyRotation, BrokerError> {
        // Not `ledger.key_change`: that action is the ledger writer's own
        // record of a change, which verification follows.
        const ACTION: &str = "ledger.rotate_key";
        if !actor.is_admin() {
            return Err(self.deny(actor, ACTION, "only an admin may rotate the ledger key"));
        }
        self.ledger.local_mut()?;
        let old_key = self.verifier_key().to_owned();
        let (key, dest) = self
            .home
            .stage_ledger_key(self.ledger_key_file.as_deref(), new_file)
            .await?;
        let rotated = {
            let ledger = self.ledger.local_mut()?;
            let key = key.clone();
            let actor_id = actor.id().to_owned();
            tokio::task::block_in_place(|| ledger.rotate_key(key, now_micros(), &actor_id))
        };
        let (entry, _) = match rotated {
            Ok(done) => done,
            Err(e) => {
                // Not recorded: the staged key is discarded.
                self.home.abandon_ledger_key().await?;
                return Err(e.into());
            }
        };
        self.home.finish_ledger_key(&key, &dest).await?;
        let old_file = self.ledger_key_file.replace(dest.clone());
        Ok(KeyRotation {
            entry,
            old_key,
            new_key: self.verifier_key().to_owned(),
            file: dest,
            old_file,
        })
    }
}
