//! C2SP tlog-tiles layout: tile paths and entry bundles (pure).
//!
//! - hash tile: `tile/<L>/<N>[.p/<W>]`, the concatenated 32-byte hashes of
//!   tree level `8·L`, nodes `256·N .. 256·N+W`;
//! - entry bundle: `tile/entries/<N>[.p/<W>]`, entries `256·N .. 256·N+W`,
//!   each as a big-endian u16 length and the entry bytes.
//!
//! `<N>` is written in groups of three digits, all but the last prefixed
//! with `x` (`1234067` → `x001/x234/067`).

use crate::HASH_SIZE;

/// Tile height (the spec fixes it at 8).
pub const TILE_HEIGHT: u8 = 8;
/// Hashes or entries in a full tile.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;

/// A tile coordinate: hash tile at `level`, or entry bundle when `level` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TileId {
    /// Tile level (`None` for an entry bundle).
    pub level: Option<u8>,
    /// Index within the level.
    pub index: u64,
    /// Width: 1..=256; 256 is a full tile.
    pub width: u64,
}

impl TileId {
    /// A hash tile.
    pub fn hashes(level: u8, index: u64, width: u64) -> Self {
        Self {
            level: Some(level),
            index,
            width,
        }
    }

    /// An entry bundle.
    pub fn entries(index: u64, width: u64) -> Self {
        Self {
            level: None,
            index,
            width,
        }
    }

    /// Whether the tile is full.
    pub fn is_full(&self) -> bool {
        self.width == TILE_WIDTH
    }

    /// The C2SP path, relative to the log's prefix.
    pub fn path(&self) -> String {
        let level = match self.level {
            Some(l) => l.to_string(),
            None => "entries".to_owned(),
        };
        let mut path = format!("tile/{level}/{}", encode_index(self.index));
        if !self.is_full() {
            path.push_str(&format!(".p/{}", self.width));
        }
        path
    }

    /// The directory holding this tile's partial versions (`…/<N>.p`).
    pub fn partial_dir(&self) -> String {
        let level = match self.level {
            Some(l) => l.to_string(),
            None => "entries".to_owned(),
        };
        format!("tile/{level}/{}.p", encode_index(self.index))
    }

    /// Parses a C2SP tile path. Refuses anything that is not exactly one.
    pub fn from_path(path: &str) -> Option<Self> {
        let rest = path.strip_prefix("tile/")?;
        let (level_text, rest) = rest.split_once('/')?;
        let level = if level_text == "entries" {
            None
        } else {
            let digits_only =
                !level_text.is_empty() && level_text.bytes().all(|b| b.is_ascii_digit());
            if !digits_only
                || level_text.len() > 2
                || (level_text.len() > 1 && level_text.starts_with('0'))
            {
                return None;
            }
            let l: u8 = level_text.parse().ok()?;
            if l > 63 {
                return None;
            }
            Some(l)
        };
        let (index_text, width) = match rest.split_once(".p/") {
            Some((i, w)) => {
                if w.is_empty() || w.starts_with('0') || !w.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let w: u64 = w.parse().ok()?;
                if !(1..TILE_WIDTH).contains(&w) {
                    return None;
                }
                (i, w)
            }
            None => (rest, TILE_WIDTH),
        };
        let index = decode_index(index_text)?;
        Some(Self {
            level,
            index,
            width,
        })
    }
}

fn encode_index(mut n: u64) -> String {
    let mut parts = vec![format!("{:03}", n % 1000)];
    while n >= 1000 {
        n /= 1000;
        parts.push(format!("x{:03}", n % 1000));
    }
    parts.reverse();
    parts.join("/")
}

fn decode_index(text: &str) -> Option<u64> {
    let parts: Vec<&str> = text.split('/').collect();
    let (last, init) = parts.split_last()?;
    let mut n: u64 = 0;
    for (i, part) in init.iter().enumerate() {
        let digits = part.strip_prefix('x')?;
        if digits.len() != 3
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (i == 0 && digits == "000")
        {
            return None;
        }
        n = n.checked_mul(1000)?.checked_add(digits.parse().ok()?)?;
    }
    if last.len() != 3 || !last.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = n.checked_mul(1000)?.checked_add(last.parse().ok()?)?;
    // Canonical: re-encoding gives the same text.
    (encode_index(n) == text).then_some(n)
}

/// Appends one entry to an entry bundle.
pub fn bundle_push(bundle: &mut Vec<u8>, entry: &[u8]) {
    // Callers keep entries within u16 (`MAX_ENTRY_BYTES`).
    let len = u16::try_from(entry.len()).unwrap_or(u16::MAX);
    bundle.extend_from_slice(&len.to_be_bytes());
    bundle.extend_from_slice(entry);
}

/// Why an entry bundle or hash tile could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TileFormatError {
    /// A length prefix runs past the end of the bundle.
    #[error("entry {0} of the bundle is truncated")]
    TruncatedEntry(u64),
    /// The bundle holds a different number of entries than its width.
    #[error("bundle holds {found} entries, its path says {expected}")]
    EntryCount {
        /// Entries found.
        found: u64,
        /// Width from the path.
        expected: u64,
    },
    /// A hash tile's size is not `32 × width`.
    #[error("hash tile is {found} bytes, its path says {expected}")]
    HashTileSize {
        /// Bytes found.
        found: usize,
        /// Bytes expected.
        expected: usize,
    },
}

/// Splits an entry bundle into its entries, checking it holds exactly `width`.
pub fn bundle_entries(bundle: &[u8], width: u64) -> Result<Vec<&[u8]>, TileFormatError> {
    let mut entries = Vec::with_capacity(usize::try_from(width).unwrap_or(0));
    let mut rest = bundle;
    while !rest.is_empty() {
        let index = entries.len() as u64;
        let (len, tail) = rest
            .split_at_checked(2)
            .ok_or(TileFormatError::TruncatedEntry(index))?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let (entry, tail) = tail
            .split_at_checked(len)
            .ok_or(TileFormatError::TruncatedEntry(index))?;
        entries.push(entry);
        rest = tail;
    }
    if entries.len() as u64 != width {
        return Err(TileFormatError::EntryCount {
            found: entries.len() as u64,
            expected: width,
        });
    }
    Ok(entries)
}

/// Splits a hash tile into hashes, checking its size against `width`.
pub fn tile_hashes(tile: &[u8], width: u64) -> Result<Vec<[u8; HASH_SIZE]>, TileFormatError> {
    let expected = usize::try_from(width)
        .unwrap_or(usize::MAX)
        .saturating_mul(HASH_SIZE);
    if tile.len() != expected {
        return Err(TileFormatError::HashTileSize {
            found: tile.len(),
            expected,
        });
    }
    Ok(tile
        .chunks_exact(HASH_SIZE)
        .map(|c| {
            let mut h = [0u8; HASH_SIZE];
            h.copy_from_slice(c);
            h
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_the_spec_examples() {
        assert_eq!(
            TileId::hashes(0, 1_234_067, 256).path(),
            "tile/0/x001/x234/067"
        );
        assert_eq!(TileId::hashes(1, 0, 7).path(), "tile/1/000.p/7");
        assert_eq!(TileId::entries(1000, 256).path(), "tile/entries/x001/000");
        for id in [
            TileId::hashes(0, 1_234_067, 256),
            TileId::hashes(3, 5, 255),
            TileId::entries(0, 1),
            TileId::entries(999_999_999, 256),
        ] {
            assert_eq!(TileId::from_path(&id.path()), Some(id));
        }
    }

    #[test]
    fn refuses_non_canonical_paths() {
        for bad in [
            "tile/0/1",
            "tile/0/x000/001",
            "tile/00/001",
            "tile/0/001.p/0",
            "tile/0/001.p/256",
            "tile/0/001.p/07",
            "tile/0/../001",
            "tile/64/001",
            "tile/entries/001/",
            "tiles/0/001",
            "tile/+0/001",
            "tile//001",
        ] {
            assert_eq!(TileId::from_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn bundles_round_trip_and_count() {
        let mut b = Vec::new();
        bundle_push(&mut b, b"one");
        bundle_push(&mut b, b"");
        bundle_push(&mut b, b"three");
        assert_eq!(
            bundle_entries(&b, 3).unwrap(),
            vec![&b"one"[..], b"", b"three"]
        );
        assert!(bundle_entries(&b, 2).is_err());
        assert_eq!(
            bundle_entries(&b[..b.len() - 1], 3),
            Err(TileFormatError::TruncatedEntry(2))
        );
    }
}
