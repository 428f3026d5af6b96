//! Rotating the ledger's signing key without breaking verification: a
//! `ledger.key_change` entry names the new key and carries a statement
//! signed by the old one. Checkpoints after it are signed by the new key
//! (the first one by both). A verifier who knows any earlier key follows
//! the chain of such entries through the log (whose every hash it checks)
//! to the key that must sign the newest checkpoint; an entry whose
//! statement the current key did not sign is refused, so nobody can hand
//! the log to a key of their own.

use base64::Engine as _;
use signed_note::Verifier as _;

use crate::entry::{Decision, Entry};
use crate::note::NoteSigner;

/// The action of key-change entries.
pub const KEY_CHANGE_ACTION: &str = "ledger.key_change";

/// The bytes the old key signs.
pub fn statement(origin: &str, old_vkey: &str, new_vkey: &str) -> Vec<u8> {
    format!("custos ledger key change v1\n{origin}\n{old_vkey}\n{new_vkey}\n").into_bytes()
}

/// The key-change entry moving `old` to `new` (made by the ledger's writer,
/// which holds the old key).
pub fn entry(old: &NoteSigner, new: &NoteSigner, time_micros: i64, actor: &str) -> Entry {
    let (old_vkey, new_vkey) = (old.verifier_key(), new.verifier_key());
    let signature = signed_note::Signer::sign(old, &statement(old.origin(), &old_vkey, &new_vkey))
        .unwrap_or_default();
    Entry::new(time_micros, actor, KEY_CHANGE_ACTION, Decision::Recorded)
        .with_attribute("old_key", old_vkey)
        .with_attribute("new_key", new_vkey)
        .with_attribute(
            "statement_signature",
            base64::engine::general_purpose::STANDARD.encode(signature),
        )
}

/// If `entry` is a key change away from `current` (a verifier key), the
/// key it moves to, after checking that `current` signed it; an error if
/// `current` did not. A change away from another key is not on this
/// chain (a verifier may start from a later key) and is passed over.
pub fn follow(entry: &Entry, current: &str) -> Result<Option<String>, String> {
    // Only the writer's own record of a change counts (a refused attempt,
    // ledgered as a denial, is not one).
    if entry.action != KEY_CHANGE_ACTION || entry.decision != Decision::Recorded {
        return Ok(None);
    }
    let attribute = |k: &str| {
        entry
            .attributes
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let (Some(old), Some(new), Some(sig)) = (
        attribute("old_key"),
        attribute("new_key"),
        attribute("statement_signature"),
    ) else {
        return Err("a key-change entry lacks its keys or signature".into());
    };
    if old != current {
        return Ok(None);
    }
    let verifier = signed_note::StandardVerifier::new(old)
        .map_err(|e| format!("a key-change entry's old key is malformed: {e}"))?;
    let new_verifier = signed_note::StandardVerifier::new(new)
        .map_err(|e| format!("a key-change entry's new key is malformed: {e}"))?;
    if new_verifier.name() != verifier.name() {
        return Err("a key-change entry changes the log's origin".into());
    }
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig)
        .map_err(|_| "a key-change signature is not base64".to_owned())?;
    if !verifier.verify(&statement(verifier.name(), old, new), &sig) {
        return Err("a key-change entry is not signed by the key it replaces".into());
    }
    Ok(Some(new.to_owned()))
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;

    #[test]
    fn a_change_is_followed_only_from_the_key_that_signed_it() {
        let k0 = SigningKey::from_bytes(&[1; 32]);
        let k1 = SigningKey::from_bytes(&[2; 32]);
        let mallory = SigningKey::from_bytes(&[3; 32]);
        let s0 = NoteSigner::new("example.org/log", k0.clone());
        let s1 = NoteSigner::new("example.org/log", k1);
        let sm = NoteSigner::new("example.org/log", mallory);
        let e = entry(&s0, &s1, 1, "admin");
        assert_eq!(follow(&e, &s0.verifier_key()), Ok(Some(s1.verifier_key())));
        // A verifier who starts from the new key passes over it.
        assert_eq!(follow(&e, &s1.verifier_key()), Ok(None));
        // Mallory names herself as the new key, but cannot sign as k0.
        let mut forged = entry(&sm, &sm, 1, "admin");
        forged.attributes.retain(|(k, _)| k != "old_key");
        forged = forged.with_attribute("old_key", s0.verifier_key());
        assert!(follow(&forged, &s0.verifier_key()).is_err());
        let other = Entry::new(1, "a", "lookup.fetch", Decision::Allow);
        assert_eq!(follow(&other, &s0.verifier_key()), Ok(None));
        // A refused rotation recorded under the same action is not a change.
        let refused = Entry::new(1, "gina", KEY_CHANGE_ACTION, Decision::Deny);
        assert_eq!(follow(&refused, &s0.verifier_key()), Ok(None));
    }
}
