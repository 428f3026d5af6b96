//! Issuing API tokens (the half of [`custos_model::principal`] that needs
//! OS randomness).

use custos_model::principal::IssuedToken;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::keys::{KeyError, random_bytes};

/// A new principal id and token; the hash is what the store keeps.
pub fn issue() -> Result<(String, IssuedToken, [u8; 32]), KeyError> {
    let mut id = [0u8; 8];
    random_bytes(&mut id)?;
    let id = format!("p{}", hex::encode(id));
    let mut secret = Zeroizing::new([0u8; 32]);
    random_bytes(secret.as_mut())?;
    let secret_hex = Zeroizing::new(hex::encode(secret.as_ref()));
    let hash: [u8; 32] = Sha256::digest(secret_hex.as_bytes()).into();
    let token = IssuedToken::new(Zeroizing::new(format!(
        "custos_{id}_{}",
        secret_hex.as_str()
    )));
    Ok((id, token, hash))
}

#[cfg(test)]
mod tests {
    use custos_model::principal::{PrincipalError, hashes_match, parse_token};

    use super::*;

    #[test]
    fn tokens_parse_back_to_their_hash() {
        let (id, token, hash) = issue().unwrap();
        let (parsed_id, parsed_hash) = parse_token(token.reveal()).unwrap();
        assert_eq!(parsed_id, id);
        assert!(hashes_match(&parsed_hash, &hash));
        assert!(!format!("{token:?}").contains(token.reveal()));
    }

    #[test]
    fn malformed_tokens_are_refused_alike() {
        let (_, token, _) = issue().unwrap();
        let t = token.reveal();
        for bad in [
            "",
            "custos_",
            &t[..t.len() - 1],
            &t.replace("custos_", "other_"),
            &format!("{t}0"),
            &t.replace('_', "-"),
        ] {
            assert_eq!(parse_token(bad), Err(PrincipalError::BadToken), "{bad}");
        }
    }
}
