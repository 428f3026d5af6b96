//! A quorum to open: the master key split into Shamir shares, any
//! `threshold` of which rebuild it and fewer of which say nothing about it.
//!
//! The splitting is `vsss-rs`'s byte-wise Shamir sharing over GF(2^8):
//! audited (for LIT Protocol and Turnkey), maintained, constant-time field
//! arithmetic, and byte-oriented, so a 32-byte key needs no mapping into a
//! prime field. What Custos adds is only the share's printed form and a
//! check value per share, so that a mistyped or foreign share is named
//! before anything is combined.
//!
//! A share prints as `custos-share-N-<hex>` (N = its number, 1 to the
//! count) with an 8-hex-digit check beside it. The catalogue keeps the
//! threshold, the count and every share's check (32 bits of a keyed hash
//! of the share: enough to tell a typo, far too little to guess a share).

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::{KEY_LEN, KeyError, MasterKey, SecretText, hmac_sha256};

const PREFIX: &str = "custos-share-";

/// One share as handed to its holder: printed once, never stored.
pub struct PrintedShare {
    /// The share's number (1 to the count).
    pub number: u8,
    /// `custos-share-N-<hex>`: the secret part.
    pub text: Zeroizing<String>,
    /// Its check value (8 hex digits), to read back to its holder.
    pub check: String,
}

impl std::fmt::Debug for PrintedShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrintedShare({}, check {})", self.number, self.check)
    }
}

/// What a home keeps about its shares: how many open it and each one's
/// check value (index `i` is share `i + 1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSet {
    /// Shares needed to open the home.
    pub threshold: usize,
    /// Check values of shares 1 to N.
    pub checks: Vec<String>,
}

impl ShareSet {
    /// How many shares were issued.
    pub fn count(&self) -> usize {
        self.checks.len()
    }
}

/// The check value of one share's bytes.
fn check_of(share: &[u8]) -> String {
    hex::encode(&hmac_sha256(b"custos/v1/key-share-check", share)[..4])
}

/// Splits `key` into `count` shares of which any `threshold` rebuild it.
pub fn split(
    key: &MasterKey,
    threshold: usize,
    count: usize,
) -> Result<(Vec<PrintedShare>, ShareSet), KeyError> {
    if threshold < 2 || threshold > count || count > 255 {
        return Err(KeyError::ShareParameters);
    }
    // The OS random source; a failure of it panics inside `UnwrapErr`,
    // which is the only safe answer (no share may come from a weak source).
    let rng = rand_core_010::UnwrapErr(getrandom_sys_rng::SysRng);
    let shares = vsss_rs::Gf256::split_bytes(threshold, count, key.bytes(), rng)
        .map_err(|_| KeyError::ShareParameters)?;
    let mut printed = Vec::with_capacity(count);
    let mut checks = Vec::with_capacity(count);
    for (i, share) in shares.iter().enumerate() {
        let share = Zeroizing::new(share.clone());
        let number = u8::try_from(i + 1).map_err(|_| KeyError::ShareParameters)?;
        if share.first() != Some(&number) {
            // vsss-rs numbers shares 1..=N in their first byte; the printed
            // number must be the one combining reads.
            return Err(KeyError::ShareParameters);
        }
        let check = check_of(&share);
        checks.push(check.clone());
        printed.push(PrintedShare {
            number,
            text: Zeroizing::new(format!("{PREFIX}{number}-{}", hex::encode(&share[1..]))),
            check,
        });
    }
    Ok((printed, ShareSet { threshold, checks }))
}

/// Parses one share's text: its number and its bytes (number first).
fn parse(position: usize, text: &str) -> Result<(u8, Zeroizing<Vec<u8>>), KeyError> {
    let bad = || KeyError::ShareFormat(position);
    let rest = text.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
    let (number, body) = rest.split_once('-').ok_or_else(bad)?;
    let number: u8 = number.parse().map_err(|_| bad())?;
    if number == 0 || body.len() != 2 * KEY_LEN {
        return Err(bad());
    }
    let mut bytes = Zeroizing::new(vec![0u8; KEY_LEN + 1]);
    bytes[0] = number;
    hex::decode_to_slice(body, &mut bytes[1..]).map_err(|_| bad())?;
    Ok((number, bytes))
}

/// Rebuilds the master key from share texts, naming the first share that
/// is malformed, unknown, repeated or fails its check. `texts` holds at
/// least `set.threshold` shares (only the first `threshold` are combined).
pub fn combine(texts: &[SecretText], set: &ShareSet) -> Result<MasterKey, KeyError> {
    let mut seen = Vec::new();
    let mut shares: Vec<Vec<u8>> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let (number, bytes) = parse(i + 1, text.expose())?;
        let Some(expected) = set.checks.get(usize::from(number) - 1) else {
            return Err(KeyError::ShareUnknown(i + 1, number, set.count()));
        };
        if seen.contains(&number) {
            return Err(KeyError::ShareRepeated(number));
        }
        if check_of(&bytes) != *expected {
            return Err(KeyError::ShareCheck(number, expected.clone()));
        }
        seen.push(number);
        if shares.len() < set.threshold {
            shares.push(bytes.to_vec());
        }
    }
    if shares.len() < set.threshold {
        return Err(KeyError::TooFewShares {
            given: shares.len(),
            threshold: set.threshold,
            count: set.count(),
        });
    }
    let combined = vsss_rs::Gf256::combine_bytes(&shares);
    for share in &mut shares {
        zeroize::Zeroize::zeroize(share);
    }
    let secret = Zeroizing::new(combined.map_err(|_| KeyError::WrongMasterKey)?);
    let key: [u8; KEY_LEN] = secret
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::WrongMasterKey)?;
    Ok(MasterKey::from_bytes(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(shares: &[PrintedShare], pick: &[usize]) -> Vec<SecretText> {
        pick.iter()
            .map(|i| SecretText::from(shares[*i].text.to_string()))
            .collect()
    }

    #[test]
    fn any_three_of_five_rebuild_the_key_and_two_do_not() {
        let key = MasterKey::generate().unwrap();
        let (shares, set) = split(&key, 3, 5).unwrap();
        assert_eq!(shares.len(), 5);
        for pick in [[0, 1, 2], [4, 2, 0], [1, 3, 4]] {
            let back = combine(&texts(&shares, &pick), &set).unwrap();
            assert_eq!(back.bytes(), key.bytes());
        }
        assert!(matches!(
            combine(&texts(&shares, &[0, 1]), &set),
            Err(KeyError::TooFewShares {
                given: 2,
                threshold: 3,
                count: 5
            })
        ));
        assert!(matches!(
            combine(&texts(&shares, &[0, 1, 1]), &set),
            Err(KeyError::ShareRepeated(2))
        ));
    }

    #[test]
    fn a_changed_share_is_named_by_its_check() {
        let key = MasterKey::generate().unwrap();
        let (shares, set) = split(&key, 3, 5).unwrap();
        let mut picked = texts(&shares, &[0, 3, 4]);
        let mut t = picked[1].expose().to_owned();
        let last = t.pop().unwrap();
        t.push(if last == '0' { '1' } else { '0' });
        picked[1] = SecretText::from(t);
        match combine(&picked, &set) {
            Err(KeyError::ShareCheck(4, check)) => assert_eq!(check, shares[3].check),
            other => panic!("{:?}", other.map(|_| ())),
        }
        // Another home's share with a number this home has.
        let (others, _) = split(&MasterKey::generate().unwrap(), 3, 5).unwrap();
        let mut foreign = texts(&shares, &[0, 1]);
        foreign.push(SecretText::from(others[2].text.to_string()));
        assert!(matches!(
            combine(&foreign, &set),
            Err(KeyError::ShareCheck(3, _))
        ));
        assert!(matches!(
            combine(&[SecretText::from("custos-share-9-00".to_owned())], &set),
            Err(KeyError::ShareFormat(1))
        ));
        let nine = format!("custos-share-9-{}", "00".repeat(KEY_LEN));
        assert!(matches!(
            combine(&[SecretText::from(nine)], &set),
            Err(KeyError::ShareUnknown(1, 9, 5))
        ));
    }

    #[test]
    fn parameters_out_of_range_are_refused() {
        let key = MasterKey::generate().unwrap();
        for (t, n) in [(1, 5), (6, 5), (0, 0), (3, 256)] {
            assert!(matches!(split(&key, t, n), Err(KeyError::ShareParameters)));
        }
        let (shares, _) = split(&key, 2, 2).unwrap();
        assert!(!format!("{:?}", shares[0]).contains(&shares[0].text[14..]));
    }
}
