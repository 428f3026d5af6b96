//! The ledger this process appends to: the home's own journal (one
//! writing process), or a replicated home's shared one (the journal in
//! PostgreSQL, published to object storage by whichever replica holds the
//! integrator lease). Both acknowledge an append only once it is durable.

use std::ops::Range;

use custos_ledger::{Entry, Ledger, LedgerError, SharedLedger, VerifiedCheckpoint};

/// How long a shared ledger's integrator lease lasts without renewal: how
/// long checkpoints pause when the replica holding it dies.
pub const INTEGRATOR_LEASE: std::time::Duration = std::time::Duration::from_secs(3);

/// The ledger a [`crate::Custos`] appends to.
#[derive(Debug)]
pub(crate) enum LedgerWriter {
    /// `HOME/ledger/`, this process its only writer.
    Local(Ledger),
    /// The replicated home's shared ledger.
    Shared(SharedLedger),
}

impl LedgerWriter {
    /// Appends one entry; its index once durable.
    pub(crate) fn append(&self, entry: &Entry) -> Result<u64, LedgerError> {
        match self {
            Self::Local(l) => l.append(entry),
            Self::Shared(l) => l.append(entry),
        }
    }

    /// Appends encoded entries as one commit; their indexes once durable.
    pub(crate) fn append_encoded(&self, entries: Vec<Vec<u8>>) -> Result<Range<u64>, LedgerError> {
        match self {
            Self::Local(l) => l.append_encoded(entries),
            Self::Shared(l) => l.append_encoded(entries),
        }
    }

    /// A signed checkpoint covering every entry durable now (a shared
    /// ledger's is waited for from its integrator: never on an async worker).
    pub(crate) fn checkpoint(&self) -> Result<VerifiedCheckpoint, crate::BrokerError> {
        crate::wait_for_commit(|| match self {
            Self::Local(l) => l.checkpoint(),
            Self::Shared(l) => l.checkpoint(),
        })
    }

    /// The checkpoint verifier key.
    pub(crate) fn verifier_key(&self) -> &str {
        match self {
            Self::Local(l) => l.verifier_key(),
            Self::Shared(l) => l.verifier_key(),
        }
    }

    /// Bytes of journal tail cut when a local ledger opened.
    pub(crate) fn cut_at_open(&self) -> Option<u64> {
        match self {
            Self::Local(l) => l.cut_at_open(),
            Self::Shared(_) => None,
        }
    }

    /// The local ledger, for what only it offers (rotating the signing
    /// key: every replica of a shared one would have to switch at the same
    /// entry).
    pub(crate) fn local_mut(&mut self) -> Result<&mut Ledger, crate::BrokerError> {
        match self {
            Self::Local(l) => Ok(l),
            Self::Shared(_) => Err(crate::BrokerError::Invalid(
                "rotating the signing key of a replicated home's shared ledger is not offered yet: every replica would have to switch at the same entry"
                    .into(),
            )),
        }
    }

    /// Publishes a final checkpoint (a local ledger) and stops.
    pub(crate) fn close(self) -> Result<(), LedgerError> {
        match self {
            Self::Local(l) => l.close(),
            Self::Shared(l) => {
                l.close();
                Ok(())
            }
        }
    }
}
