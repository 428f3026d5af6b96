//! The C2SP tlog-witness `add-checkpoint` request and answers, as bytes
//! (pure). The witness (`custos witness serve`) parses requests with
//! [`AddCheckpoint::parse`]; the log builds them with
//! [`AddCheckpoint::encode`] and reads the answers.
//!
//! ```text
//! old <size>\n            the size the witness last cosigned (0 at first)
//! <base64 hash>\n ...     consistency proof from old to the checkpoint (≤ 63)
//! \n
//! <signed checkpoint note>
//! ```

use base64::Engine as _;

/// Path of the endpoint under a witness's submission prefix.
pub const ADD_CHECKPOINT_PATH: &str = "/add-checkpoint";
/// Content type of a 409 answer's body (the witness's latest size).
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";
/// Most proof lines a request may carry.
pub const MAX_PROOF_LINES: usize = 63;
/// Largest request body a witness reads (a checkpoint note with a few
/// signatures and 63 proof lines is far smaller).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// An `add-checkpoint` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size the client believes the witness last cosigned.
    pub old: u64,
    /// RFC 6962 consistency proof from `old` to the checkpoint's size.
    pub proof: Vec<[u8; 32]>,
    /// The signed checkpoint note.
    pub note: Vec<u8>,
}

/// Why a request body is malformed (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed add-checkpoint request: {0}")]
pub struct WireError(pub String);

fn decimal(text: &str) -> Option<u64> {
    // ASCII decimal with no leading zeroes (except `0` itself).
    if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl AddCheckpoint {
    /// The request body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("old {}\n", self.old).into_bytes();
        for hash in &self.proof {
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(hash)
                    .as_bytes(),
            );
            out.push(b'\n');
        }
        out.push(b'\n');
        out.extend_from_slice(&self.note);
        out
    }

    /// Parses a request body (the note itself is checked by the witness).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        let bad = |why: &str| WireError(why.to_owned());
        if body.len() > MAX_REQUEST_BYTES {
            return Err(bad("the body is too large"));
        }
        // The header ends at the first blank line; the note follows.
        let split = body
            .windows(2)
            .position(|w| w == b"\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let (head, note) = (&body[..=split], &body[split + 2..]);
        let head = std::str::from_utf8(head).map_err(|_| bad("the header is not UTF-8"))?;
        let mut lines = head.split_terminator('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .and_then(decimal)
            .ok_or_else(|| bad("the first line must be `old <size>` in decimal"))?;
        let mut proof = Vec::new();
        for line in lines {
            if proof.len() == MAX_PROOF_LINES {
                return Err(bad("more than 63 proof lines"));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|_| bad("a proof line is not base64"))?;
            let hash: [u8; 32] = raw
                .try_into()
                .map_err(|_| bad("a proof line is not a 32-byte hash"))?;
            proof.push(hash);
        }
        if note.is_empty() {
            return Err(bad("no checkpoint after the blank line"));
        }
        Ok(Self {
            old,
            proof,
            note: note.to_vec(),
        })
    }
}

/// The size in a 409 answer's body (`<size>\n`).
pub fn parse_size(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body)
        .ok()?
        .strip_suffix('\n')
        .and_then(decimal)
}

/// The signature lines of a 200 answer, each ending in a newline; `None`
/// if the body is not one or more signature lines.
pub fn parse_cosignatures(body: &[u8]) -> Option<Vec<signed_note::Signature>> {
    let text = std::str::from_utf8(body).ok()?.strip_suffix('\n')?;
    let lines: Vec<_> = text
        .split('\n')
        .map(|l| signed_note::Signature::from_bytes(l.as_bytes()).ok())
        .collect::<Option<_>>()?;
    (!lines.is_empty() && lines.len() <= 16).then_some(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request in C2SP tlog-witness's example, byte for byte.
    const SPEC_EXAMPLE: &str = "old 20852014
PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=
jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=
5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=
/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=

example.com/behind-the-sofa
20852163
CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=
\u{2014} example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZdXNqlcVGlCum2Wks+49/V6267UEjw6QUXTS5Rovnzv++qbSzm9Q=
";

    #[test]
    fn the_spec_example_round_trips() {
        let req = AddCheckpoint::parse(SPEC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!((req.old, req.proof.len()), (20_852_014, 4));
        assert!(
            req.note
                .starts_with(b"example.com/behind-the-sofa\n20852163\n")
        );
        assert_eq!(req.encode(), SPEC_EXAMPLE.as_bytes());
        let first = AddCheckpoint::parse(b"old 0\n\nlog\n1\nAAAA\n\n\xe2\x80\x94 x y\n").unwrap();
        assert_eq!((first.old, first.proof.len()), (0, 0));
    }

    #[test]
    fn malformed_requests_are_refused() {
        for body in [
            &b"old 01\n\nnote"[..],
            b"old -1\n\nnote",
            b"old 1\nnot base64!\n\nnote",
            b"old 1\nAAAA\n\nnote",
            b"new 1\n\nnote",
            b"old 1\n",
            b"old 1\n\n",
            b"old 99999999999999999999999\n\nnote",
        ] {
            assert!(AddCheckpoint::parse(body).is_err(), "{body:?}");
        }
        let hash = base64::engine::general_purpose::STANDARD.encode([0u8; 32]);
        let many = format!("old 1\n{}\nnote", format!("{hash}\n").repeat(64));
        assert!(AddCheckpoint::parse(many.as_bytes()).is_err());
        assert_eq!(parse_size(b"12\n"), Some(12));
        assert_eq!(parse_size(b"012\n"), None);
        assert!(parse_cosignatures(b"").is_none());
        assert!(parse_cosignatures(b"hello\n").is_none());
    }
}
