//! The right edge of a ledger being integrated: what a writer keeps in
//! memory to turn entries into tiles without holding the whole tree (a
//! compact range, one incomplete tile per level and the incomplete entry
//! bundle), and the tiles that became full since they were last written.

use tlog_tiles::{Hash, Tile};

use crate::LedgerError;
use crate::log::read_bundle;
use crate::merkle::{CompactRange, TileFiles, TreeReader};
use crate::published::PublishedFiles;
use crate::tiles::{TILE_WIDTH, TileId, bundle_entries, bundle_push};

/// The tree's right edge and the tiles completed but not yet published.
#[derive(Debug, Default)]
pub(crate) struct TreeEdge {
    pub(crate) range: CompactRange,
    /// Hashes of the incomplete tile at each level.
    edge: Vec<Vec<Hash>>,
    /// The incomplete entry bundle.
    bundle: Vec<u8>,
    bundle_count: u64,
    /// Tiles that became full and are not yet written.
    pub(crate) completed: Vec<(TileId, Vec<u8>)>,
}

impl TreeEdge {
    /// The empty tree.
    pub(crate) fn new() -> Self {
        Self {
            edge: vec![Vec::new()],
            ..Self::default()
        }
    }

    /// Loads the right edge of the tree of `size` leaves from published
    /// tiles and checks it against `root`.
    pub(crate) fn load(
        files: std::sync::Arc<dyn PublishedFiles>,
        size: u64,
        root: [u8; 32],
    ) -> Result<Self, LedgerError> {
        let tiles = TileFiles::over(std::sync::Arc::clone(&files));
        let reader = TreeReader::new(&tiles, size);
        let range = CompactRange::from_reader(size, &reader)
            .map_err(|e| LedgerError::Damaged(format!("right edge unreadable: {e}")))?;
        if range.root().0 != root {
            return Err(LedgerError::Damaged(
                "tiles do not match the recorded root".into(),
            ));
        }
        let mut edge = Vec::new();
        let mut level = 0u8;
        loop {
            let count = size >> (u32::from(level) * 8);
            let width = count % TILE_WIDTH;
            let mut hashes = Vec::new();
            if width > 0 {
                let data = tiles
                    .read(level, count / TILE_WIDTH, width)
                    .map_err(|e| LedgerError::Damaged(e.to_string()))?;
                hashes = crate::merkle::hashes_of(&data, width)
                    .map_err(|e| LedgerError::Damaged(e.to_string()))?;
            }
            edge.push(hashes);
            if count < TILE_WIDTH {
                break;
            }
            level += 1;
        }
        let width = size % TILE_WIDTH;
        let mut bundle = Vec::new();
        if width > 0 {
            let id = TileId::entries(size / TILE_WIDTH, width);
            let bytes = read_bundle(files.as_ref(), id)?;
            bundle_entries(&bytes, width).map_err(|e| LedgerError::Damaged(e.to_string()))?;
            bundle = bytes;
        }
        Ok(Self {
            range,
            edge,
            bundle,
            bundle_count: width,
            completed: Vec::new(),
        })
    }

    /// Number of leaves.
    pub(crate) fn size(&self) -> u64 {
        self.range.size()
    }

    /// The root hash.
    pub(crate) fn root(&self) -> Hash {
        self.range.root()
    }

    /// Adds one leaf, queueing the tiles it completes.
    pub(crate) fn push(&mut self, leaf: Hash, entry: &[u8]) {
        self.range.push(leaf);
        let size = self.range.size();
        bundle_push(&mut self.bundle, entry);
        self.bundle_count += 1;
        if self.bundle_count == TILE_WIDTH {
            let id = TileId::entries(size / TILE_WIDTH - 1, TILE_WIDTH);
            let bytes = std::mem::take(&mut self.bundle);
            self.completed.push((id, bytes));
            self.bundle_count = 0;
        }
        let mut level = 0usize;
        let mut hash = leaf;
        loop {
            if self.edge.len() <= level {
                self.edge.push(Vec::new());
            }
            self.edge[level].push(hash);
            if self.edge[level].len() as u64 != TILE_WIDTH {
                break;
            }
            let full = std::mem::take(&mut self.edge[level]);
            let bytes: Vec<u8> = full.iter().flat_map(|h| h.0).collect();
            // A tree of at most 2^64 leaves has at most 8 tile levels.
            let level_u8 = level as u8;
            let index = (size >> (8 * (level as u32 + 1))) - 1;
            hash = Tile::subtree_hash(&bytes);
            self.completed
                .push((TileId::hashes(level_u8, index, TILE_WIDTH), bytes));
            level += 1;
        }
    }

    /// The partial hash tiles and entry bundle of the tree as it is now.
    pub(crate) fn partials(&self) -> Result<Vec<(TileId, Vec<u8>)>, LedgerError> {
        let size = self.range.size();
        let mut partials = Vec::new();
        for (level, hashes) in self.edge.iter().enumerate() {
            if hashes.is_empty() {
                continue;
            }
            let level_u8 =
                u8::try_from(level).map_err(|_| LedgerError::Damaged("tree too tall".into()))?;
            let index = (size >> (8 * level as u32)) / TILE_WIDTH;
            let id = TileId::hashes(level_u8, index, hashes.len() as u64);
            partials.push((id, hashes.iter().flat_map(|h| h.0).collect()));
        }
        if self.bundle_count > 0 {
            let id = TileId::entries(size / TILE_WIDTH, self.bundle_count);
            partials.push((id, self.bundle.clone()));
        }
        Ok(partials)
    }
}
