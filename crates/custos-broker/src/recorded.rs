//! The one way into the ledger, and the receipt it gives.
//!
//! [`Recorded`] is made only here, by a durable append: its field is
//! private to this module, and it has no constructor. Every answer that
//! releases data carries one (a look-up's rows, an aggregate, an extract,
//! a match result), and the steps that send points to a match peer take
//! one, so code that releases before its ledger entry is durable does not
//! compile. (A client reads a receipt back from JSON: `Deserialize` exists
//! for that, and broker code never deserializes one.)

use std::fmt;

use custos_ledger::Entry;
use serde::{Deserialize, Serialize};

use crate::{BrokerError, Custos, wait_for_commit};

/// Receipt of a durable ledger append: the entry's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Recorded(u64);

impl Recorded {
    /// The entry's index in the ledger.
    pub fn index(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Custos {
    /// Appends an entry durably (fsynced); returns its receipt.
    /// Refused (and the refusal recorded) while the witness gate is closed
    /// and the entry allows something.
    pub(crate) fn append(&self, entry: &Entry) -> Result<Recorded, BrokerError> {
        self.check_writer()?;
        self.check_witness_gate(std::slice::from_ref(entry))?;
        wait_for_commit(|| self.ledger.append(entry)).map(Recorded)
    }

    /// Refuses every append (and every write of the detector and every
    /// checkpoint) once this process lost the home's writer lease: another
    /// process may be writing the home by now.
    pub(crate) fn check_writer(&self) -> Result<(), BrokerError> {
        if self.writer.is_held() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable(
                "this process lost the home's writer lease (its PostgreSQL connection failed); \
                 nothing was recorded or released: restart it"
                    .into(),
            ))
        }
    }

    /// Appends entries as one durable commit; returns their receipts, in
    /// order. Gated like [`Custos::append`].
    pub(crate) fn append_all(&self, entries: &[Entry]) -> Result<Vec<Recorded>, BrokerError> {
        self.check_witness_gate(entries)?;
        self.append_unchecked(entries)
    }

    /// [`Custos::append_all`] without the witness gate (for the gate's own
    /// denials).
    pub(crate) fn append_unchecked(&self, entries: &[Entry]) -> Result<Vec<Recorded>, BrokerError> {
        self.check_writer()?;
        let encoded = entries
            .iter()
            .map(Entry::encode)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BrokerError::Internal(format!("an entry could not be encoded: {e}")))?;
        let range = wait_for_commit(|| self.ledger.append_encoded(encoded))?;
        Ok(range.map(Recorded).collect())
    }
}
