//! Ledger entries and their canonical, versioned binary encoding.
//!
//! The encoding is specified in `docs/ledger.md`. It is canonical: every
//! entry has exactly one encoding, and [`Entry::decode`] refuses anything
//! else (trailing bytes, unsorted or repeated keys, unknown versions), so the
//! leaf hash of an entry is a hash of its meaning.
//!
//! Entries hold no personal data in the clear: subjects appear only as
//! [`SubjectCommitment`]s, keyed hashes that the custodian can recompute for
//! a person who asks, and nobody else can invert.

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// The encoding version this build writes.
pub const ENTRY_VERSION: u8 = 1;
/// Largest encoded entry: C2SP entry bundles prefix entries with a u16 length.
pub const MAX_ENTRY_BYTES: usize = u16::MAX as usize;

/// What was decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// An administrative record with no allow/deny (e.g. `instance.init`).
    Recorded,
    /// The request was allowed.
    Allow,
    /// The request was denied.
    Deny,
    /// The request failed after being allowed (nothing was released).
    Error,
}

impl Decision {
    fn code(self) -> u8 {
        match self {
            Self::Recorded => 0,
            Self::Allow => 1,
            Self::Deny => 2,
            Self::Error => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Recorded,
            1 => Self::Allow,
            2 => Self::Deny,
            3 => Self::Error,
            _ => return None,
        })
    }
}

/// A keyed commitment to a subject id: HMAC-SHA-256 under the ledger's
/// subject key. Reveals nothing without the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubjectCommitment(pub [u8; 32]);

impl Serialize for SubjectCommitment {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

/// Computes subject commitments. The key never leaves this type.
#[derive(Clone)]
pub struct SubjectCommitter {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for SubjectCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectCommitter(<key redacted>)")
    }
}

impl SubjectCommitter {
    /// A committer under `key` (derived from the master key by the caller).
    #[allow(clippy::expect_used)]
    pub fn new(key: &[u8; 32]) -> Self {
        // INVARIANT: HMAC takes keys of any length, so this cannot fail; a
        // fallback key would make commitments guessable, so failing stops.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
        Self { mac }
    }

    /// The commitment to `subject_id`, normalised to its ASCII letters and
    /// digits (so `666-01-0001` and `666010001` commit alike).
    pub fn commit(&self, subject_id: &str) -> SubjectCommitment {
        let normalised: String = subject_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let mut mac = self.mac.clone();
        mac.update(b"custos/v1/subject\0");
        mac.update(normalised.to_ascii_uppercase().as_bytes());
        SubjectCommitment(mac.finalize().into_bytes().into())
    }

    /// What an entry carries for a subject: the stable commitment blinded
    /// by the entry's request id and action, so that two entries about the
    /// same person share no byte string (nothing served publicly links
    /// them). The catalogue keeps the stable commitment with the entry's
    /// index (a private index), so a subject's report finds the entry and
    /// recomputes this value to check it.
    pub fn for_entry(
        &self,
        stable: &SubjectCommitment,
        request_id: &str,
        action: &str,
    ) -> SubjectCommitment {
        let mut mac = self.mac.clone();
        mac.update(b"custos/v2/entry-subject\0");
        mac.update(request_id.as_bytes());
        mac.update(b"\0");
        mac.update(action.as_bytes());
        mac.update(b"\0");
        mac.update(&stable.0);
        SubjectCommitment(mac.finalize().into_bytes().into())
    }

    /// A keyed digest (hex) of a text the ledger must not carry but must
    /// bind: a justification, SQL, a filter. A plain hash would let anyone
    /// test a guessed text against the public entry; this needs the key.
    pub fn digest(&self, label: &str, text: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"custos/v1/digest\0");
        mac.update(label.as_bytes());
        mac.update(b"\0");
        mac.update(text.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// One ledger entry. Build with [`Entry::new`] and the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Microseconds since the Unix epoch.
    pub time_micros: i64,
    /// The principal who acted (`local-admin` for init-time administration).
    pub actor: String,
    /// What was done, dotted (e.g. `dataset.ingest`, `lookup.fetch`).
    pub action: String,
    /// The agreement the request ran under, if any.
    pub agreement_id: Option<String>,
    /// The agreement's version (0 when there is no agreement).
    pub agreement_version: u32,
    /// The request's id (empty for administrative actions without one).
    pub request_id: String,
    /// The decision.
    pub decision: Decision,
    /// Why: which agreement, which rule, which error.
    pub reasons: Vec<String>,
    /// Named counts (rows, subjects, …), sorted by name.
    pub counts: Vec<(String, u64)>,
    /// Non-personal details (dataset name, schema hash, …), sorted by key.
    pub attributes: Vec<(String, String)>,
    /// Subjects touched, as commitments, sorted and distinct.
    pub subjects: Vec<SubjectCommitment>,
}

/// Why bytes are not a valid entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The entry's version is not one this build reads.
    #[error("unknown entry version {0}")]
    Version(u8),
    /// The bytes end early or run on.
    #[error("entry is truncated or has trailing bytes")]
    Length,
    /// A text field is not UTF-8.
    #[error("entry field is not UTF-8")]
    Utf8,
    /// A decision code outside the defined ones.
    #[error("unknown decision code {0}")]
    DecisionCode(u8),
    /// Keys or subjects not sorted and distinct (not canonical).
    #[error("entry is not in canonical form: {0} must be sorted and distinct")]
    NotCanonical(&'static str),
    /// The encoding would exceed [`MAX_ENTRY_BYTES`] or a field's length prefix.
    #[error("entry is too large")]
    TooLarge,
}

impl Entry {
    /// A new entry at `time_micros` by `actor` doing `action`.
    pub fn new(time_micros: i64, actor: &str, action: &str, decision: Decision) -> Self {
        Self {
            time_micros,
            actor: actor.to_owned(),
            action: action.to_owned(),
            agreement_id: None,
            agreement_version: 0,
            request_id: String::new(),
            decision,
            reasons: Vec::new(),
            counts: Vec::new(),
            attributes: Vec::new(),
            subjects: Vec::new(),
        }
    }

    /// Adds a reason.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reasons.push(reason.into());
        self
    }

    /// Sets a named count (replacing one of the same name).
    pub fn with_count(mut self, name: &str, value: u64) -> Self {
        self.counts.retain(|(n, _)| n != name);
        self.counts.push((name.to_owned(), value));
        self.counts.sort();
        self
    }

    /// Sets an attribute (replacing one of the same key).
    pub fn with_attribute(mut self, key: &str, value: impl Into<String>) -> Self {
        self.attributes.retain(|(k, _)| k != key);
        self.attributes.push((key.to_owned(), value.into()));
        self.attributes.sort();
        self
    }

    /// Sets the agreement and its version.
    pub fn with_agreement(mut self, id: &str, version: u32) -> Self {
        self.agreement_id = Some(id.to_owned());
        self.agreement_version = version;
        self
    }

    /// Sets the request id.
    pub fn with_request(mut self, id: &str) -> Self {
        self.request_id = id.to_owned();
        self
    }

    /// Adds subject commitments (kept sorted and distinct).
    pub fn with_subjects(mut self, subjects: impl IntoIterator<Item = SubjectCommitment>) -> Self {
        self.subjects.extend(subjects);
        self.subjects.sort();
        self.subjects.dedup();
        self
    }

    /// The canonical encoding (see `docs/ledger.md`).
    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        if self.agreement_id.as_deref().unwrap_or("").is_empty() && self.agreement_version != 0 {
            return Err(EntryError::NotCanonical("agreement"));
        }
        let mut out = Vec::with_capacity(128);
        out.push(ENTRY_VERSION);
        out.extend_from_slice(&self.time_micros.to_be_bytes());
        put_str(&mut out, &self.actor)?;
        put_str(&mut out, &self.action)?;
        put_str(&mut out, self.agreement_id.as_deref().unwrap_or(""))?;
        out.extend_from_slice(&self.agreement_version.to_be_bytes());
        put_str(&mut out, &self.request_id)?;
        out.push(self.decision.code());
        put_len(&mut out, self.reasons.len())?;
        for r in &self.reasons {
            put_str(&mut out, r)?;
        }
        check_sorted(self.counts.iter().map(|(k, _)| k), "counts")?;
        put_len(&mut out, self.counts.len())?;
        for (k, v) in &self.counts {
            put_str(&mut out, k)?;
            out.extend_from_slice(&v.to_be_bytes());
        }
        check_sorted(self.attributes.iter().map(|(k, _)| k), "attributes")?;
        put_len(&mut out, self.attributes.len())?;
        for (k, v) in &self.attributes {
            put_str(&mut out, k)?;
            put_str(&mut out, v)?;
        }
        check_sorted(self.subjects.iter(), "subjects")?;
        put_len(&mut out, self.subjects.len())?;
        for s in &self.subjects {
            out.extend_from_slice(&s.0);
        }
        if out.len() > MAX_ENTRY_BYTES {
            return Err(EntryError::TooLarge);
        }
        Ok(out)
    }

    /// Decodes a canonical encoding; anything else is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        let mut r = Reader { rest: bytes };
        let version = r.u8()?;
        if version != ENTRY_VERSION {
            return Err(EntryError::Version(version));
        }
        let time_micros = i64::from_be_bytes(r.array()?);
        let actor = r.str()?;
        let action = r.str()?;
        let agreement = r.str()?;
        let agreement_version = u32::from_be_bytes(r.array()?);
        let request_id = r.str()?;
        let code = r.u8()?;
        let decision = Decision::from_code(code).ok_or(EntryError::DecisionCode(code))?;
        let reasons = (0..r.len()?)
            .map(|_| r.str())
            .collect::<Result<Vec<_>, _>>()?;
        let counts = (0..r.len()?)
            .map(|_| Ok((r.str()?, u64::from_be_bytes(r.array()?))))
            .collect::<Result<Vec<_>, EntryError>>()?;
        let attributes = (0..r.len()?)
            .map(|_| Ok((r.str()?, r.str()?)))
            .collect::<Result<Vec<_>, EntryError>>()?;
        let subjects = (0..r.len()?)
            .map(|_| Ok(SubjectCommitment(r.array()?)))
            .collect::<Result<Vec<_>, EntryError>>()?;
        if !r.rest.is_empty() {
            return Err(EntryError::Length);
        }
        check_sorted(counts.iter().map(|(k, _)| k), "counts")?;
        check_sorted(attributes.iter().map(|(k, _)| k), "attributes")?;
        check_sorted(subjects.iter(), "subjects")?;
        if agreement.is_empty() && agreement_version != 0 {
            return Err(EntryError::NotCanonical("agreement"));
        }
        Ok(Self {
            time_micros,
            actor,
            action,
            agreement_id: (!agreement.is_empty()).then_some(agreement),
            agreement_version,
            request_id,
            decision,
            reasons,
            counts,
            attributes,
            subjects,
        })
    }
}

fn check_sorted<T: Ord>(
    items: impl Iterator<Item = T>,
    what: &'static str,
) -> Result<(), EntryError> {
    let mut previous: Option<T> = None;
    for item in items {
        if previous.as_ref().is_some_and(|p| *p >= item) {
            return Err(EntryError::NotCanonical(what));
        }
        previous = Some(item);
    }
    Ok(())
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), EntryError> {
    let len = u16::try_from(len).map_err(|_| EntryError::TooLarge)?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), EntryError> {
    put_len(out, s.len())?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], EntryError> {
        let (head, tail) = self.rest.split_at_checked(n).ok_or(EntryError::Length)?;
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EntryError> {
        self.take(N)?.try_into().map_err(|_| EntryError::Length)
    }

    fn u8(&mut self) -> Result<u8, EntryError> {
        Ok(self.array::<1>()?[0])
    }

    fn len(&mut self) -> Result<usize, EntryError> {
        Ok(usize::from(u16::from_be_bytes(self.array()?)))
    }

    fn str(&mut self) -> Result<String, EntryError> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| EntryError::Utf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        let c = SubjectCommitter::new(&[7; 32]);
        Entry::new(
            1_700_000_000_000_000,
            "alice",
            "lookup.fetch",
            Decision::Allow,
        )
        .with_agreement("irs-tigta-2026", 3)
        .with_request("req-1")
        .with_reason("agreement irs-tigta-2026 grant 1")
        .with_count("rows", 3)
        .with_attribute("dataset", "tax_returns")
        .with_subjects([c.commit("666-01-0001"), c.commit("666-01-0002")])
    }

    #[test]
    fn round_trips() {
        let e = sample();
        let bytes = e.encode().unwrap();
        assert_eq!(Entry::decode(&bytes).unwrap(), e);
    }

    #[test]
    fn refuses_non_canonical_bytes() {
        let bytes = sample().encode().unwrap();
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Entry::decode(&longer), Err(EntryError::Length));
        assert_eq!(
            Entry::decode(&bytes[..bytes.len() - 1]),
            Err(EntryError::Length)
        );
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(Entry::decode(&v2), Err(EntryError::Version(2)));
        // Swap the two subject commitments: same content, not canonical.
        let n = bytes.len();
        let mut swapped = bytes.clone();
        let (a, b) = (bytes[n - 64..n - 32].to_vec(), bytes[n - 32..].to_vec());
        swapped[n - 64..n - 32].copy_from_slice(&b);
        swapped[n - 32..].copy_from_slice(&a);
        assert_eq!(
            Entry::decode(&swapped),
            Err(EntryError::NotCanonical("subjects"))
        );
    }

    #[test]
    fn commitments_normalise_and_hide() {
        let c = SubjectCommitter::new(&[1; 32]);
        assert_eq!(c.commit("666-01-0001"), c.commit("666010001"));
        assert_ne!(c.commit("666-01-0001"), c.commit("666-01-0002"));
        let other = SubjectCommitter::new(&[2; 32]);
        assert_ne!(c.commit("666-01-0001"), other.commit("666-01-0001"));
        let bytes = sample().encode().unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"666-01-0001"));
    }
}
