//! The core of private set intersection between two agencies: ECDH-PSI on
//! Ristretto255 (DESIGN.md, mode `match`). Pure computation; the network
//! exchange, agreements and the ledger are the broker's and the server's.
//!
//! Each side hashes its normalised keys to the group with a domain
//! separation tag bound to the job id (RFC 9380's `expand_message_xmd`
//! with SHA-512, then RFC 9496's one-way map: `hash_to_ristretto255`),
//! raises them to a secret scalar drawn fresh for the job, pads the set
//! with random points up to the size the agreement lets it reveal, and
//! shuffles it. Each side then raises the other's points to its own
//! scalar; equal doubly-blinded points are equal keys. The requester keeps
//! the order of its own points, so it learns which of its keys matched —
//! unless the responder shuffles the doubly-blinded points back, which
//! reveals only the count.
//!
//! Hand-rolled on `curve25519-dalek` because the protocol is Custos' own
//! core and small; `expand_message_xmd` is checked against RFC 9380's test
//! vectors. Every point from a peer is checked: canonical encoding, not
//! the identity, no duplicates, exactly as many as announced.

use std::collections::HashSet;

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use sha2::digest::core_api::BlockSizeUser;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

/// An encoded point: 32 bytes (RFC 9496 encoding).
pub type Encoded = [u8; 32];

/// Most points one side may send in a job.
pub const MAX_POINTS: usize = 50_000_000;

/// Why a peer's message or a job's input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PsiError {
    /// A point is not a canonical Ristretto255 encoding.
    #[error("point {0} is not a valid Ristretto255 encoding")]
    Malformed(usize),
    /// A point is the identity (it would match anything raised to a scalar).
    #[error("point {0} is the identity element")]
    Identity(usize),
    /// The same point twice: a peer probing for multiplicities.
    #[error("point {0} repeats an earlier point")]
    Duplicate(usize),
    /// Not as many points as the peer announced.
    #[error("{got} points arrived, {announced} were announced")]
    Count {
        /// Points received.
        got: usize,
        /// Points announced.
        announced: usize,
    },
    /// A message longer than the points announced for it.
    #[error("more than the {0} points announced arrived")]
    TooLong(usize),
    /// More points than any job may carry.
    #[error("{0} points is more than the {MAX_POINTS} a job may carry")]
    TooMany(usize),
    /// A message whose length is not a whole number of points.
    #[error("a message of {0} bytes is not a whole number of 32-byte points")]
    Length(usize),
    /// The operating system's randomness failed.
    #[error("no randomness available")]
    Randomness,
}

/// The wire form of a list of points: their encodings back to back.
pub fn encode_points(points: &[Encoded]) -> Vec<u8> {
    points.iter().flatten().copied().collect()
}

/// Reads a peer's message of exactly `announced` points. Only the form is
/// checked here; [`Party::reblind`] and [`check_distinct`] check the points.
pub fn decode_points(bytes: &[u8], announced: usize) -> Result<Vec<Encoded>, PsiError> {
    if !bytes.len().is_multiple_of(32) {
        return Err(PsiError::Length(bytes.len()));
    }
    let got = bytes.len() / 32;
    if got > MAX_POINTS {
        return Err(PsiError::TooMany(got));
    }
    if got != announced {
        return Err(PsiError::Count { got, announced });
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| {
            let mut p = [0u8; 32];
            p.copy_from_slice(c);
            p
        })
        .collect())
}

/// Refuses a list with a repeated point (a peer probing multiplicities, or
/// padding that reveals itself). Returns the first repeat's position.
pub fn check_distinct(points: &[Encoded]) -> Result<(), PsiError> {
    let mut seen: HashSet<&Encoded> = HashSet::with_capacity(points.len());
    match points.iter().position(|p| !seen.insert(p)) {
        Some(i) => Err(PsiError::Duplicate(i)),
        None => Ok(()),
    }
}

/// Runs `work` over `items` in one chunk per core, keeping the order; the
/// first error (by position) wins. `work` gets each chunk's offset.
fn in_parallel<T: Sync, U: Send>(
    items: &[T],
    work: impl Fn(usize, &[T]) -> Result<Vec<U>, PsiError> + Sync,
) -> Result<Vec<U>, PsiError> {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let chunk = items.len().div_ceil(cores).max(1024);
    if items.len() <= chunk {
        return work(0, items);
    }
    let results: Vec<Result<Vec<U>, PsiError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(n, part)| {
                let work = &work;
                scope.spawn(move || work(n * chunk, part))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(PsiError::Randomness)))
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for part in results {
        out.extend(part?);
    }
    Ok(out)
}

/// RFC 9380, section 5.3.1: `expand_message_xmd` with hash `D`.
/// `len` ≤ 255 hash outputs and ≤ 65,535; `dst` ≤ 255 bytes.
pub fn expand_message_xmd<D: Digest + BlockSizeUser>(
    msg: &[u8],
    dst: &[u8],
    len: usize,
) -> Vec<u8> {
    let b_len = <D as Digest>::output_size();
    let ell = len.div_ceil(b_len);
    debug_assert!(ell <= 255 && len <= 65_535 && dst.len() <= 255);
    let dst_prime: Vec<u8> = dst.iter().copied().chain([dst.len() as u8]).collect();
    let z_pad = vec![0u8; <D as BlockSizeUser>::block_size()];
    let b0 = D::new()
        .chain_update(&z_pad)
        .chain_update(msg)
        .chain_update((len as u16).to_be_bytes())
        .chain_update([0u8])
        .chain_update(&dst_prime)
        .finalize();
    let mut b = D::new()
        .chain_update(&b0)
        .chain_update([1u8])
        .chain_update(&dst_prime)
        .finalize();
    let mut out = Vec::with_capacity(ell * b_len);
    out.extend_from_slice(&b);
    for i in 2..=ell {
        let mixed: Vec<u8> = b0.iter().zip(b.iter()).map(|(x, y)| x ^ y).collect();
        b = D::new()
            .chain_update(&mixed)
            .chain_update([i as u8])
            .chain_update(&dst_prime)
            .finalize();
        out.extend_from_slice(&b);
    }
    out.truncate(len);
    out
}

/// The domain separation tag of a job: hashes of one job are useless in
/// any other.
pub fn job_dst(job_id: &str) -> Vec<u8> {
    let mut dst = b"custos-psi-v1-ristretto255_XMD:SHA-512_R255MAP_RO_:".to_vec();
    dst.extend(job_id.bytes().take(255 - dst.len()));
    dst
}

/// `hash_to_ristretto255` (RFC 9380 / RFC 9496) of `key` under `dst`.
pub fn hash_to_group(dst: &[u8], key: &[u8]) -> RistrettoPoint {
    let uniform = expand_message_xmd::<Sha512>(key, dst, 64);
    let mut bytes = [0u8; 64];
    bytes.copy_from_slice(&uniform);
    RistrettoPoint::from_uniform_bytes(&bytes)
}

/// A matching key in its canonical form: its ASCII digits (an SSN written
/// `123-45-6789` or `123456789` is the same key). `None` without digits.
pub fn normalise_key(value: &str) -> Option<String> {
    let digits: String = value.chars().filter(char::is_ascii_digit).collect();
    (!digits.is_empty()).then_some(digits)
}

fn random_scalar() -> Result<Scalar, PsiError> {
    let mut wide = Zeroizing::new([0u8; 64]);
    getrandom::fill(wide.as_mut_slice()).map_err(|_| PsiError::Randomness)?;
    Ok(Scalar::from_bytes_mod_order_wide(&wide))
}

/// Points compressed together: one field inversion per batch instead of
/// one per point.
const COMPRESS_BATCH: usize = 256;

/// `points[i]·2` for each, compressed in batches (curve25519-dalek's
/// `double_and_compress_batch`, which shares one inversion per batch).
fn double_and_compress(points: &[RistrettoPoint]) -> Vec<Encoded> {
    points
        .chunks(COMPRESS_BATCH)
        .flat_map(RistrettoPoint::double_and_compress_batch)
        .map(|c| c.to_bytes())
        .collect()
}

/// One side of one job: its secret scalar, used for nothing else.
pub struct Party {
    secret: Scalar,
    /// `secret / 2`: a point times this, doubled, is the point times
    /// `secret` (the doubling comes free with batch compression).
    half: Scalar,
}

impl std::fmt::Debug for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Party(<secret redacted>)")
    }
}

impl Drop for Party {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.secret.zeroize();
        self.half.zeroize();
    }
}

/// A side's own blinded set, as sent: shuffled and padded.
#[derive(Debug, Clone)]
pub struct Blinded {
    /// The points to send, in send order.
    pub points: Vec<Encoded>,
    /// For each sent point, the index of the key it blinds (`None`: padding).
    pub origin: Vec<Option<usize>>,
}

impl Party {
    /// A side with a fresh secret scalar.
    pub fn new() -> Result<Self, PsiError> {
        let secret = random_scalar()?;
        if secret == Scalar::ZERO {
            return Err(PsiError::Randomness);
        }
        let half = secret * Scalar::from(2u8).invert();
        Ok(Self { secret, half })
    }

    /// Hashes `keys` (normalised, distinct) under `dst`, blinds them, adds
    /// random points up to `pad_to` and shuffles.
    pub fn blind(&self, dst: &[u8], keys: &[String], pad_to: usize) -> Result<Blinded, PsiError> {
        let total = pad_to.max(keys.len());
        if total > MAX_POINTS {
            return Err(PsiError::TooMany(total));
        }
        let mut entries: Vec<(Encoded, Option<usize>)> = in_parallel(keys, |offset, part| {
            let halves: Vec<RistrettoPoint> = part
                .iter()
                .map(|key| hash_to_group(dst, key.as_bytes()) * self.half)
                .collect();
            Ok(double_and_compress(&halves)
                .into_iter()
                .enumerate()
                .map(|(i, p)| (p, Some(offset + i)))
                .collect())
        })?;
        // Random points are indistinguishable from blinded hashes.
        let padding = vec![(); total - keys.len()];
        entries.extend(in_parallel(&padding, |_, part| {
            part.iter()
                .map(|()| {
                    let point = RistrettoPoint::mul_base(&random_scalar()?);
                    Ok((point.compress().to_bytes(), None))
                })
                .collect()
        })?);
        shuffle(&mut entries)?;
        let (points, origin) = entries.into_iter().unzip();
        Ok(Blinded { points, origin })
    }

    /// Raises the peer's points to this side's scalar, in the same order,
    /// after checking them (see the module comment).
    pub fn reblind(&self, points: &[Encoded], announced: usize) -> Result<Vec<Encoded>, PsiError> {
        if points.len() != announced {
            return Err(PsiError::Count {
                got: points.len(),
                announced,
            });
        }
        if points.len() > MAX_POINTS {
            return Err(PsiError::TooMany(points.len()));
        }
        check_distinct(points)?;
        in_parallel(points, |offset, part| {
            let halves = part
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    // The identity's only canonical encoding is all zeros.
                    if *bytes == [0u8; 32] {
                        return Err(PsiError::Identity(offset + i));
                    }
                    let point = CompressedRistretto(*bytes)
                        .decompress()
                        .ok_or(PsiError::Malformed(offset + i))?;
                    Ok(point * self.half)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(double_and_compress(&halves))
        })
    }
}

/// Shuffles in place with the operating system's randomness.
pub fn shuffle<T>(items: &mut [T]) -> Result<(), PsiError> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut rng = rand::rngs::StdRng::try_from_os_rng().map_err(|_| PsiError::Randomness)?;
    items.shuffle(&mut rng);
    Ok(())
}

/// The requester's result: which of its own keys are in the peer's set
/// (indexes into its key list), from its blinded set, the peer's
/// re-blinding of it (same order) and its own re-blinding of the peer's set.
pub fn matches(
    own: &Blinded,
    own_reblinded_by_peer: &[Encoded],
    peer_reblinded: &[Encoded],
) -> Vec<usize> {
    let theirs: HashSet<&Encoded> = peer_reblinded.iter().collect();
    let mut found: Vec<usize> = own_reblinded_by_peer
        .iter()
        .zip(&own.origin)
        .filter_map(|(p, origin)| origin.filter(|_| theirs.contains(p)))
        .collect();
    found.sort_unstable();
    found
}

/// The count-only result: how many doubly-blinded points the two sides
/// share (the peer shuffled its re-blinding, so no index is known).
pub fn match_count(own_reblinded_by_peer: &[Encoded], peer_reblinded: &[Encoded]) -> usize {
    let theirs: HashSet<&Encoded> = peer_reblinded.iter().collect();
    own_reblinded_by_peer
        .iter()
        .filter(|p| theirs.contains(p))
        .count()
}

#[cfg(test)]
mod tests {
    use curve25519_dalek::traits::Identity;

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn expand_message_xmd_matches_rfc_9380_vectors() {
        // RFC 9380, appendix K.1 (SHA-256, DST QUUX-V01-CS02-with-expander-SHA256-128).
        let dst = b"QUUX-V01-CS02-with-expander-SHA256-128";
        assert_eq!(
            hex(&expand_message_xmd::<sha2::Sha256>(b"", dst, 0x20)),
            "68a985b87eb6b46952128911f2a4412bbc302a9d759667f87f7a21d803f07235"
        );
        assert_eq!(
            hex(&expand_message_xmd::<sha2::Sha256>(b"abc", dst, 0x20)),
            "d8ccab23b5985ccea865c6c97b6e5b8350e794e603b4b97902f53a8a0d605615"
        );
    }

    fn keys(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("{:09}", 100_000_000 + i)).collect()
    }

    #[test]
    fn both_sides_find_exactly_the_common_keys() {
        let dst = job_dst("job-1");
        let (a, b) = (Party::new().unwrap(), Party::new().unwrap());
        let xs = keys(0..300); // requester
        let ys = keys(200..600); // responder
        let blinded_a = a.blind(&dst, &xs, 400).unwrap();
        let blinded_b = b.blind(&dst, &ys, 500).unwrap();
        assert_eq!(blinded_a.points.len(), 400);
        assert_eq!(blinded_b.points.len(), 500);
        let a_by_b = b.reblind(&blinded_a.points, 400).unwrap();
        let b_by_a = a.reblind(&blinded_b.points, 500).unwrap();
        let found = matches(&blinded_a, &a_by_b, &b_by_a);
        assert_eq!(found, (200..300).collect::<Vec<usize>>());
        // Count-only: the responder shuffles its re-blinding first.
        let mut shuffled = a_by_b.clone();
        shuffle(&mut shuffled).unwrap();
        assert_eq!(match_count(&shuffled, &b_by_a), 100);
        // Another job's hashes match nothing.
        let other = b.blind(&job_dst("job-2"), &ys, 500).unwrap();
        let other_by_a = a.reblind(&other.points, 500).unwrap();
        assert!(matches(&blinded_a, &a_by_b, &other_by_a).is_empty());
    }

    #[test]
    fn sent_points_reveal_neither_keys_nor_order() {
        let dst = job_dst("job-1");
        let a = Party::new().unwrap();
        let xs = keys(0..50);
        let blinded = a.blind(&dst, &xs, 50).unwrap();
        // Not the plain hashes, not in key order, and fresh per party.
        let plain: Vec<Encoded> = xs
            .iter()
            .map(|k| hash_to_group(&dst, k.as_bytes()).compress().to_bytes())
            .collect();
        assert!(blinded.points.iter().all(|p| !plain.contains(p)));
        assert_ne!(blinded.origin, (0..50).map(Some).collect::<Vec<_>>());
        let again = Party::new().unwrap().blind(&dst, &xs, 50).unwrap();
        assert!(again.points.iter().all(|p| !blinded.points.contains(p)));
        for p in &blinded.points {
            let text = String::from_utf8_lossy(p);
            assert!(xs.iter().all(|k| !text.contains(k.as_str())));
        }
    }

    #[test]
    fn bad_peer_messages_are_refused() {
        let a = Party::new().unwrap();
        let b = Party::new().unwrap();
        let good = b.blind(&job_dst("j"), &keys(0..10), 10).unwrap().points;
        // A non-canonical encoding (all 0xff is not a field element).
        let mut bad = good.clone();
        bad[3] = [0xff; 32];
        assert_eq!(a.reblind(&bad, 10), Err(PsiError::Malformed(3)));
        let mut identity = good.clone();
        identity[5] = RistrettoPoint::identity().compress().to_bytes();
        assert_eq!(a.reblind(&identity, 10), Err(PsiError::Identity(5)));
        let mut twice = good.clone();
        twice[7] = twice[2];
        assert_eq!(a.reblind(&twice, 10), Err(PsiError::Duplicate(7)));
        assert_eq!(
            a.reblind(&good, 9),
            Err(PsiError::Count {
                got: 10,
                announced: 9
            })
        );
    }

    #[test]
    fn wire_messages_are_whole_announced_point_lists() {
        let b = Party::new().unwrap();
        let points = b.blind(&job_dst("j"), &keys(0..5), 8).unwrap().points;
        let wire = encode_points(&points);
        assert_eq!(wire.len(), 8 * 32);
        assert_eq!(decode_points(&wire, 8).unwrap(), points);
        assert_eq!(decode_points(&wire[..100], 8), Err(PsiError::Length(100)));
        assert_eq!(
            decode_points(&wire, 7),
            Err(PsiError::Count {
                got: 8,
                announced: 7
            })
        );
        assert!(check_distinct(&points).is_ok());
        let mut twice = points.clone();
        twice[6] = twice[1];
        assert_eq!(check_distinct(&twice), Err(PsiError::Duplicate(6)));
    }

    #[test]
    fn large_sets_are_blinded_in_parallel_in_order() {
        // More than one chunk per core: positions stay aligned with keys.
        let dst = job_dst("job-big");
        let (a, b) = (Party::new().unwrap(), Party::new().unwrap());
        let xs = keys(0..5000);
        let ys = keys(4000..4100);
        let blinded_a = a.blind(&dst, &xs, 6000).unwrap();
        let blinded_b = b.blind(&dst, &ys, 100).unwrap();
        let a_by_b = b.reblind(&blinded_a.points, 6000).unwrap();
        let b_by_a = a.reblind(&blinded_b.points, 100).unwrap();
        assert_eq!(
            matches(&blinded_a, &a_by_b, &b_by_a),
            (4000..4100).collect::<Vec<usize>>()
        );
        let mut bad = blinded_a.points.clone();
        bad[4321] = [0xff; 32];
        assert_eq!(b.reblind(&bad, 6000), Err(PsiError::Malformed(4321)));
    }

    /// Random peer messages (a cheap stand-in for a cargo-fuzz target:
    /// the fuzz crate would have to build DataFusion under sanitizers).
    /// Every one is refused with a typed error or re-blinded; none panics.
    #[test]
    fn random_peer_messages_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = Party::new().unwrap();
        let valid = a.blind(&job_dst("j"), &keys(0..4), 4).unwrap().points;
        for round in 0..3000 {
            let len = rng.random_range(0..200);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if round % 3 == 0 {
                // Mostly valid points with a few bytes changed.
                bytes = encode_points(&valid);
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] = rng.random();
                }
            }
            let announced = rng.random_range(0..8);
            match decode_points(&bytes, announced) {
                Ok(points) => {
                    let _ = a.reblind(&points, announced);
                    let _ = check_distinct(&points);
                }
                Err(e) => assert!(matches!(
                    e,
                    PsiError::Length(_) | PsiError::Count { .. } | PsiError::TooMany(_)
                )),
            }
        }
    }

    #[test]
    fn keys_are_normalised_to_digits() {
        assert_eq!(normalise_key("123-45-6789").unwrap(), "123456789");
        assert_eq!(normalise_key(" 123 45 6789 ").unwrap(), "123456789");
        assert_eq!(normalise_key("n/a"), None);
    }
}
