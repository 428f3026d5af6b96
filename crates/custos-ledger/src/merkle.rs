//! Merkle tree arithmetic over tiles: a compact range for streaming roots,
//! a hash reader over the tile files, and inclusion/consistency proofs.
//!
//! Leaf and node hashing, proof generation and checking come from
//! `tlog_tiles` (a port of Go's `sumdb/tlog`, RFC 6962 / 9162 hashing).
//! What is hand-rolled here is only what it lacks: a [`CompactRange`] (the
//! right edge of the tree, O(log n) memory) and a [`HashReader`] over C2SP
//! tile files (its own tile reader assumes Go's `tile/H/L/…` paths).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tlog_tiles::{Hash, HashReader, node_hash, split_stored_hash_index};

use crate::HASH_SIZE;
use crate::published::{DirFiles, PublishedFiles};
use crate::tiles::{TILE_HEIGHT, TILE_WIDTH, TileId, tile_hashes};

/// The right edge of a Merkle tree: the roots of its perfect subtrees,
/// largest first. Appending is amortised O(1); the root is O(log n).
#[derive(Debug, Clone, Default)]
pub struct CompactRange {
    size: u64,
    /// (hash, height) of each perfect subtree, left to right.
    peaks: Vec<(Hash, u8)>,
}

impl CompactRange {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the range of a tree of `size` leaves from its perfect subtree
    /// roots, read through `reader`.
    pub fn from_reader(size: u64, reader: &impl HashReader) -> Result<Self, tlog_tiles::Error> {
        let mut indexes = Vec::new();
        let mut heights = Vec::new();
        let mut offset = 0u64;
        for height in (0..64u8).rev() {
            if size & (1 << height) != 0 {
                indexes.push(tlog_tiles::stored_hash_index(height, offset >> height));
                heights.push(height);
                offset += 1 << height;
            }
        }
        let hashes = reader.read_hashes(&indexes)?;
        Ok(Self {
            size,
            peaks: hashes.into_iter().zip(heights).collect(),
        })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.peaks.push((leaf, 0));
        self.size += 1;
        while let [.., (left, hl), (right, hr)] = self.peaks[..] {
            if hl != hr {
                break;
            }
            self.peaks.truncate(self.peaks.len() - 2);
            self.peaks.push((node_hash(left, right), hl + 1));
        }
    }

    /// The RFC 6962 root hash (SHA-256 of "" for the empty tree).
    pub fn root(&self) -> Hash {
        let mut iter = self.peaks.iter().rev();
        let Some((mut acc, _)) = iter.next().copied() else {
            return tlog_tiles::EMPTY_HASH;
        };
        for (left, _) in iter {
            acc = node_hash(*left, acc);
        }
        acc
    }
}

/// Every complete node of one tile, level by level: its stored hashes, then
/// the complete pairs above them, … (511 hashes for a full tile). Proofs
/// need nodes between tile levels; computing them once per tile instead of
/// once per lookup is what keeps proof generation fast.
#[derive(Debug)]
struct TileTree {
    levels: Vec<Vec<Hash>>,
}

impl TileTree {
    fn build(data: &[u8]) -> Self {
        let base: Vec<Hash> = data
            .chunks_exact(HASH_SIZE)
            .map(|c| {
                let mut h = [0u8; HASH_SIZE];
                h.copy_from_slice(c);
                Hash(h)
            })
            .collect();
        let mut levels = vec![base];
        while let Some(below) = levels.last()
            && below.len() > 1
        {
            let above: Vec<Hash> = below
                .chunks_exact(2)
                .map(|p| node_hash(p[0], p[1]))
                .collect();
            levels.push(above);
        }
        Self { levels }
    }

    /// The node `offset` (counted within the tile) at `level` above the tile's base.
    fn node(&self, level: u8, offset: u64) -> Option<Hash> {
        self.levels
            .get(usize::from(level))?
            .get(usize::try_from(offset).ok()?)
            .copied()
    }
}

/// Tiles by (level, index, width). A tile of a given width never changes
/// (a wider one extends it), so partial tiles are cached safely too.
type TileCache = HashMap<(u8, u64, u64), Arc<TileTree>>;

/// Most tiles kept in the cache (16 KiB each at most).
const CACHE_TILES: usize = 4096;

/// Reads hash tiles from a ledger's published files, as C2SP paths, and
/// caches their node trees.
#[derive(Debug)]
pub struct TileFiles {
    files: Arc<dyn PublishedFiles>,
    cache: Mutex<TileCache>,
    /// Held while a missing tile is fetched: threads proving against the
    /// same new checkpoint wait for one fetch instead of each making their
    /// own (a shared ledger's appenders all need its new partial tiles).
    fetching: Mutex<()>,
}

impl TileFiles {
    /// A reader over `dir` (the directory that holds `tile/`).
    pub fn new(dir: &Path) -> Self {
        Self::over(Arc::new(DirFiles::new(dir)))
    }

    /// A reader over published files wherever they are.
    pub fn over(files: Arc<dyn PublishedFiles>) -> Self {
        Self {
            files,
            cache: Mutex::new(HashMap::new()),
            fetching: Mutex::new(()),
        }
    }

    /// The node tree of tile `(level, index)` covering at least `width`
    /// hashes, from the cache or the files. A full tile serves every width:
    /// the complete nodes of a prefix are the full tile's nodes.
    fn tree(&self, level: u8, index: u64, width: u64) -> std::io::Result<Arc<TileTree>> {
        let cached = || {
            let cache = self.cache.lock().ok()?;
            [(level, index, TILE_WIDTH), (level, index, width)]
                .iter()
                .find_map(|key| cache.get(key).cloned())
        };
        if let Some(tree) = cached() {
            return Ok(tree);
        }
        let _fetching = self
            .fetching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another thread may have fetched it while this one waited.
        if let Some(tree) = cached() {
            return Ok(tree);
        }
        let (data, width) = self.read_covering(level, index, width)?;
        let tree = Arc::new(TileTree::build(&data));
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_TILES {
                cache.clear();
            }
            cache.insert((level, index, width), tree.clone());
        }
        Ok(tree)
    }

    /// The full tile `(level, index)`, if it is published.
    fn full(&self, level: u8, index: u64) -> std::io::Result<Option<Arc<Vec<u8>>>> {
        let id = TileId::hashes(level, index, TILE_WIDTH);
        self.files
            .read(&id.path())?
            .map(|bytes| check_len(bytes, TILE_WIDTH as usize * HASH_SIZE, &id.path()))
            .transpose()
    }

    /// Reads tile `(level, index)` with at least `width` hashes, returning
    /// exactly `width` hashes' bytes. Serves a prefix of the full tile or of
    /// a wider partial tile when the exact partial is gone.
    pub fn read(&self, level: u8, index: u64, width: u64) -> std::io::Result<Arc<Vec<u8>>> {
        let (bytes, read) = self.read_covering(level, index, width)?;
        if read == width {
            return Ok(bytes);
        }
        let want = usize::try_from(width)
            .unwrap_or(usize::MAX)
            .saturating_mul(HASH_SIZE);
        Ok(Arc::new(bytes[..want].to_vec()))
    }

    /// Tile `(level, index)` with at least `width` hashes: the full tile,
    /// the exact partial or, once that was superseded, a wider partial's
    /// prefix; with the width of what it returns.
    fn read_covering(
        &self,
        level: u8,
        index: u64,
        width: u64,
    ) -> std::io::Result<(Arc<Vec<u8>>, u64)> {
        let want = usize::try_from(width)
            .unwrap_or(usize::MAX)
            .saturating_mul(HASH_SIZE);
        if let Some(bytes) = self.full(level, index)? {
            return Ok((bytes, TILE_WIDTH));
        }
        let id = TileId::hashes(level, index, width);
        if let Some(bytes) = self.files.read(&id.path())? {
            return Ok((check_len(bytes, want, &id.path())?, width));
        }
        // The exact partial was superseded: take any wider partial's prefix.
        let mut widths: Vec<u64> = self
            .files
            .partial_widths(&id.partial_dir())?
            .into_iter()
            .filter(|w| *w >= width && *w < TILE_WIDTH)
            .collect();
        widths.sort_unstable();
        for w in widths {
            let wider = TileId::hashes(level, index, w);
            let Some(bytes) = self.files.read(&wider.path())? else {
                continue;
            };
            let expected = usize::try_from(w)
                .unwrap_or(usize::MAX)
                .saturating_mul(HASH_SIZE);
            let bytes = check_len(bytes, expected, &wider.path())?;
            return Ok((Arc::new(bytes[..want].to_vec()), width));
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is missing", id.path()),
        ))
    }
}

fn check_len(bytes: Vec<u8>, want: usize, path: &str) -> std::io::Result<Arc<Vec<u8>>> {
    if bytes.len() != want {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{path} is {} bytes, expected {want}", bytes.len()),
        ));
    }
    Ok(Arc::new(bytes))
}

/// A [`HashReader`] for a tree of `size` leaves over tile files. Stored
/// hashes at levels between tile levels are recomputed from the tile below.
#[derive(Debug)]
pub struct TreeReader<'a> {
    tiles: &'a TileFiles,
    size: u64,
}

impl<'a> TreeReader<'a> {
    /// A reader for the tree of `size` leaves.
    pub fn new(tiles: &'a TileFiles, size: u64) -> Self {
        Self { tiles, size }
    }

    fn hash(&self, level: u8, n: u64) -> Result<Hash, tlog_tiles::Error> {
        let tile_level = level / TILE_HEIGHT;
        let within = level % TILE_HEIGHT;
        let base_level = tile_level * TILE_HEIGHT;
        // Nodes at `base_level` that exist in a tree of `size` leaves.
        let base_count = self.size >> base_level;
        // The node covers base nodes [first, first + span).
        let span = 1u64 << within;
        let first = n << within;
        if first + span > base_count {
            return Err(tlog_tiles::Error::IndexesNotInTree);
        }
        let tile_index = first / TILE_WIDTH;
        let full_tiles = base_count / TILE_WIDTH;
        let width = if tile_index < full_tiles {
            TILE_WIDTH
        } else {
            base_count % TILE_WIDTH
        };
        let tree = self
            .tiles
            .tree(tile_level, tile_index, width)
            .map_err(|_| tlog_tiles::Error::InvalidTile)?;
        tree.node(within, (first % TILE_WIDTH) >> within)
            .ok_or(tlog_tiles::Error::BadMath)
    }
}

impl HashReader for TreeReader<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                let (level, n) = split_stored_hash_index(i);
                self.hash(level, n)
            })
            .collect()
    }
}

/// Hashes of a hash tile, as `tlog_tiles` hashes.
pub fn hashes_of(tile: &[u8], width: u64) -> Result<Vec<Hash>, crate::tiles::TileFormatError> {
    Ok(tile_hashes(tile, width)?.into_iter().map(Hash).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tlog_tiles::{Tile, record_hash};

    /// Reference root by the RFC 6962 recursive definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => tlog_tiles::EMPTY_HASH,
            1 => leaves[0],
            n => {
                let k = n.next_power_of_two() / 2;
                node_hash(mth(&leaves[..k]), mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn tile_tree_nodes_are_subtree_hashes() {
        let data: Vec<u8> = (0..256u32)
            .flat_map(|i| record_hash(&i.to_be_bytes()).0)
            .collect();
        let tree = TileTree::build(&data);
        for level in 0..=8u8 {
            for offset in [0u64, (255 >> level) / 2, 255 >> level] {
                let span = 1usize << level;
                let start = usize::try_from(offset).unwrap() * span * HASH_SIZE;
                let expected = Tile::subtree_hash(&data[start..start + span * HASH_SIZE]);
                assert_eq!(
                    tree.node(level, offset),
                    Some(expected),
                    "level {level} offset {offset}"
                );
            }
        }
    }

    #[test]
    fn compact_range_matches_rfc6962() {
        let mut range = CompactRange::new();
        let mut leaves = Vec::new();
        assert_eq!(range.root(), mth(&leaves));
        for i in 0..300u32 {
            let leaf = record_hash(&i.to_be_bytes());
            leaves.push(leaf);
            range.push(leaf);
            assert_eq!(range.root(), mth(&leaves), "size {}", i + 1);
        }
    }
}
