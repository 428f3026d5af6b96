//! Per-agreement tokens and generalisation: how a pseudonymous extract
//! (DESIGN.md mode `pseudonymous`) writes an identifying value or coarsens a
//! quasi-identifier. Pure; the engine's extract reads the rows.
//!
//! Tokens are this crate's own core, so hand-rolled on RustCrypto/`fpe`
//! primitives: a hex token is 128 bits of HMAC-SHA-256 under the
//! agreement's key, bound to the column; a format-keeping token is FF1
//! (NIST SP 800-38G, AES-256) over the value's digits with the column as
//! tweak. Both are deterministic within an agreement and unlinkable across
//! agreements, whose keys differ.

use aes::Aes256;
use custos_model::ColumnType;
use custos_model::schema::{format_cents, format_date_days};
use custos_policy::{Generalisation, ScopeValue};
use fpe::ff1::{FF1, FlexibleNumeralString};
use hmac::{Hmac, Mac};
use zeroize::Zeroizing;

/// Digits a format-keeping token needs: FF1's domain must hold at least
/// 10^6 values (NIST SP 800-38G Rev. 1).
const FF1_MIN_DIGITS: usize = 6;

/// Why a value cannot be tokenised. Messages never quote a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// A format-keeping token was asked for a value with letters, which
    /// FF1 over digits would leave in the clear.
    #[error(
        "column `{0}` holds letters, which a format-keeping token would leave in the clear; drop it from `keep_format`"
    )]
    NotDigits(String),
    /// A format-keeping token was asked for a value with too few digits.
    #[error(
        "column `{0}` has a value with fewer than {FF1_MIN_DIGITS} digits, so its token cannot keep its format; drop it from `keep_format`"
    )]
    TooFewDigits(String),
    /// A key could not be set up.
    #[error("the token key could not be set up")]
    Key,
}

/// HMAC-SHA-256 of `message` under `key`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length, so `new_from_slice` cannot fail.
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Per-agreement tokens. Keys are zeroized on drop and never printed.
pub struct Tokeniser {
    hmac_key: Zeroizing<[u8; 32]>,
    ff1: FF1<Aes256>,
}

impl std::fmt::Debug for Tokeniser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokeniser(<keys redacted>)")
    }
}

impl Tokeniser {
    /// Tokens under `agreement_key` (derived from the master key for one
    /// agreement); the HMAC and FF1 keys are separate subkeys of it.
    pub fn new(agreement_key: &[u8; 32]) -> Result<Self, TokenError> {
        let hmac_key = Zeroizing::new(hmac_sha256(agreement_key, b"custos token/hmac"));
        let ff1_key = Zeroizing::new(hmac_sha256(agreement_key, b"custos token/ff1"));
        let ff1 = FF1::<Aes256>::new(ff1_key.as_slice(), 10).map_err(|_| TokenError::Key)?;
        Ok(Self { hmac_key, ff1 })
    }

    /// A 32-hex-digit token for `value` of `column`.
    pub fn token(&self, column: &str, value: &str) -> String {
        let mut message = Vec::with_capacity(column.len() + 1 + value.len());
        message.extend_from_slice(column.as_bytes());
        message.push(0);
        message.extend_from_slice(value.as_bytes());
        let mac = hmac_sha256(self.hmac_key.as_slice(), &message);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(32);
        for byte in &mac[..16] {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        out
    }

    /// A token with `value`'s format: its digits enciphered with FF1 (the
    /// column as tweak), every other character kept in place.
    pub fn format_preserving(&self, column: &str, value: &str) -> Result<String, TokenError> {
        let digits: Vec<u16> = value
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| u16::from(b - b'0'))
            .collect();
        if digits.len() < FF1_MIN_DIGITS {
            return Err(TokenError::TooFewDigits(column.to_owned()));
        }
        // Only digits are enciphered; letters would pass through in the
        // clear (a street name, a town). Such a column needs hex tokens.
        if value.chars().any(char::is_alphabetic) {
            return Err(TokenError::NotDigits(column.to_owned()));
        }
        let enciphered: Vec<u16> = self
            .ff1
            .encrypt(column.as_bytes(), &FlexibleNumeralString::from(digits))
            .map_err(|_| TokenError::Key)?
            .into();
        let mut next = enciphered.into_iter();
        let mut out = String::with_capacity(value.len());
        for c in value.chars() {
            if c.is_ascii_digit() {
                let digit = next.next().ok_or(TokenError::Key)?;
                out.push(char::from_digit(u32::from(digit), 10).ok_or(TokenError::Key)?);
            } else {
                out.push(c);
            }
        }
        Ok(out)
    }
}

/// One quasi-identifier value coarsened by `rule`, from its stored form.
pub fn generalise(rule: Generalisation, value: &StoredValue<'_>) -> Option<String> {
    match (rule, value) {
        (Generalisation::Suppress, _) | (_, StoredValue::Null) => None,
        (Generalisation::Year, StoredValue::Date(days)) => {
            Some(format_date_days(*days).chars().take(4).collect())
        }
        (Generalisation::Month, StoredValue::Date(days)) => {
            Some(format_date_days(*days).chars().take(7).collect())
        }
        (Generalisation::Prefix(n), StoredValue::Text(text)) => {
            let kept: String = text.chars().take(n).collect();
            let masked = text.chars().count().saturating_sub(n);
            Some(format!("{kept}{}", "*".repeat(masked)))
        }
        (Generalisation::Band(width), StoredValue::Int(v)) => {
            let low = v.div_euclid(width) * width;
            Some(format!("{low}-{}", low + width - 1))
        }
        // Validation pairs rules with types; anything else is left out.
        _ => None,
    }
}

/// A cell as stored (decimals in cents, dates in days since 1970-01-01),
/// borrowed from the row the engine read.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredValue<'a> {
    /// Empty.
    Null,
    /// Integers, decimals in cents, enums' indexes are not used (enums are text).
    Int(i64),
    /// Days since 1970-01-01.
    Date(i64),
    /// Strings and enums.
    Text(&'a str),
}

/// A stored cell as the row scope sees it.
pub fn scope_value(value: &StoredValue<'_>) -> ScopeValue {
    match value {
        StoredValue::Null => ScopeValue::Null,
        StoredValue::Int(v) | StoredValue::Date(v) => ScopeValue::Int(*v),
        StoredValue::Text(t) => ScopeValue::Text((*t).to_owned()),
    }
}

/// A stored cell as an extract shows it (cents as decimals, days as dates).
pub fn display(value: &StoredValue<'_>, ty: ColumnType) -> Option<String> {
    match value {
        StoredValue::Null => None,
        StoredValue::Int(v) if ty == ColumnType::Decimal => Some(format_cents(*v)),
        StoredValue::Int(v) => Some(v.to_string()),
        StoredValue::Date(d) => Some(format_date_days(*d)),
        StoredValue::Text(t) => Some((*t).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn tokens_are_stable_per_key_and_column_and_differ_across_keys() {
        let a = Tokeniser::new(&[1; 32]).unwrap();
        let b = Tokeniser::new(&[2; 32]).unwrap();
        let t = a.token("tin", "123-45-6789");
        assert_eq!(t, a.token("tin", "123-45-6789"));
        assert_eq!(t.len(), 32);
        assert_ne!(t, b.token("tin", "123-45-6789"));
        assert_ne!(t, a.token("name", "123-45-6789"));
        assert_ne!(t, a.token("tin", "123-45-6780"));
    }

    #[test]
    fn format_preserving_tokens_refuse_values_with_letters() {
        let t = Tokeniser::new(&[7; 32]).unwrap();
        // FF1 enciphers digits only: a street name would stay in the clear.
        assert!(matches!(
            t.format_preserving("address", "1234 Elm St 02139"),
            Err(TokenError::NotDigits(_))
        ));
        assert!(t.format_preserving("tin", "123-45-6789").is_ok());
    }

    #[test]
    fn format_preserving_tokens_keep_the_layout_and_change_the_digits() {
        let a = Tokeniser::new(&[1; 32]).unwrap();
        let b = Tokeniser::new(&[2; 32]).unwrap();
        let t = a.format_preserving("tin", "123-45-6789").unwrap();
        assert_eq!(t.len(), 11);
        assert_eq!(&t[3..4], "-");
        assert_eq!(&t[6..7], "-");
        assert!(t.chars().filter(char::is_ascii_digit).count() == 9);
        assert_ne!(t, "123-45-6789");
        assert_eq!(t, a.format_preserving("tin", "123-45-6789").unwrap());
        assert_ne!(t, b.format_preserving("tin", "123-45-6789").unwrap());
        // A bijection: distinct values keep distinct tokens.
        let tokens: HashSet<String> = (0..1000)
            .map(|i| {
                a.format_preserving("tin", &format!("123-45-{i:04}"))
                    .unwrap()
            })
            .collect();
        assert_eq!(tokens.len(), 1000);
        assert!(matches!(
            a.format_preserving("tin", "12-34"),
            Err(TokenError::TooFewDigits(_))
        ));
    }

    #[test]
    fn generalisations_coarsen_as_named() {
        // 1984-07-15 is day 5309.
        let day = StoredValue::Date(5309);
        assert_eq!(generalise(Generalisation::Year, &day).unwrap(), "1984");
        assert_eq!(generalise(Generalisation::Month, &day).unwrap(), "1984-07");
        let zip = StoredValue::Text("02139");
        assert_eq!(
            generalise(Generalisation::Prefix(3), &zip).unwrap(),
            "021**"
        );
        assert_eq!(
            generalise(Generalisation::Band(5), &StoredValue::Int(33)).unwrap(),
            "30-34"
        );
        assert_eq!(
            generalise(Generalisation::Band(5), &StoredValue::Int(-1)).unwrap(),
            "-5--1"
        );
        assert_eq!(generalise(Generalisation::Suppress, &zip), None);
        assert_eq!(generalise(Generalisation::Year, &StoredValue::Null), None);
    }
}
