//! Reading a published ledger: entries, inclusion and consistency proofs.
//! Works on the C2SP files alone (no lock, no writer), as an overseer would.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tlog_tiles::{Hash, HashReader, check_record, check_tree, prove_record, prove_tree, tree_hash};

use crate::LedgerError;
use crate::log::{CHECKPOINT, read_bundle};
use crate::merkle::{TileFiles, TreeReader};
use crate::note::{VerifiedCheckpoint, verify_checkpoint};
use crate::published::{DirFiles, PublishedFiles};
use crate::tiles::{TILE_WIDTH, TileId, bundle_entries};

/// A proof that entry `index` is in the tree of `size` with `root`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The entry's index.
    pub index: u64,
    /// Tree size.
    pub size: u64,
    /// Leaf hash of the entry, hex.
    pub leaf_hash: String,
    /// Root hash of the tree, hex.
    pub root: String,
    /// Proof hashes, hex, in RFC 6962 order.
    pub proof: Vec<String>,
}

/// A proof that the tree of `old_size` is a prefix of the tree of `new_size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsistencyProof {
    /// Older size.
    pub old_size: u64,
    /// Newer size.
    pub new_size: u64,
    /// Root of the older tree, hex.
    pub old_root: String,
    /// Root of the newer tree, hex.
    pub new_root: String,
    /// Proof hashes, hex.
    pub proof: Vec<String>,
}

fn hex_hash(h: &Hash) -> String {
    hex::encode(h.0)
}

fn parse_hash(text: &str) -> Result<Hash, LedgerError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| LedgerError::Proof("malformed hash".into()))?;
    Ok(Hash(out))
}

fn parse_hashes(list: &[String]) -> Result<Vec<Hash>, LedgerError> {
    list.iter().map(|h| parse_hash(h)).collect()
}

/// The RFC 6962 leaf hash of an encoded entry, hex (as proofs carry it).
pub fn leaf_hash_hex(entry: &[u8]) -> String {
    hex_hash(&tlog_tiles::record_hash(entry))
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(p: &InclusionProof) -> Result<(), LedgerError> {
    check_record(
        &parse_hashes(&p.proof)?,
        p.size,
        parse_hash(&p.root)?,
        p.index,
        parse_hash(&p.leaf_hash)?,
    )
    .map_err(|e| LedgerError::Proof(e.to_string()))
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2).
pub fn verify_consistency(p: &ConsistencyProof) -> Result<(), LedgerError> {
    check_tree(
        &parse_hashes(&p.proof)?,
        p.new_size,
        parse_hash(&p.new_root)?,
        p.old_size,
        parse_hash(&p.old_root)?,
    )
    .map_err(|e| LedgerError::Proof(e.to_string()))
}

/// Read access to a ledger's published files.
#[derive(Debug)]
pub struct LedgerReader {
    files: Arc<dyn PublishedFiles>,
    tiles: TileFiles,
}

impl LedgerReader {
    /// A reader over the ledger directory `dir`.
    pub fn new(dir: &Path) -> Self {
        Self::over(Arc::new(DirFiles::new(dir)))
    }

    /// A reader over published files wherever they are.
    pub fn over(files: Arc<dyn PublishedFiles>) -> Self {
        Self {
            tiles: TileFiles::over(Arc::clone(&files)),
            files,
        }
    }

    /// The published files read.
    pub fn files(&self) -> &Arc<dyn PublishedFiles> {
        &self.files
    }

    /// The latest checkpoint note as published.
    pub fn checkpoint_note(&self) -> Result<Vec<u8>, LedgerError> {
        let path = || PathBuf::from(format!("{}/{CHECKPOINT}", self.files.location()));
        self.files
            .read(CHECKPOINT)
            .map_err(|cause| LedgerError::Io {
                path: path(),
                cause,
            })?
            .ok_or_else(|| LedgerError::Io {
                path: path(),
                cause: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no checkpoint is published",
                ),
            })
    }

    /// The latest checkpoint, verified with `verifier_key`.
    pub fn latest(&self, verifier_key: &str) -> Result<VerifiedCheckpoint, LedgerError> {
        verify_checkpoint(&self.checkpoint_note()?, verifier_key).map_err(LedgerError::Checkpoint)
    }

    /// Encoded entries `from..to` (to at most the checkpoint size `size`).
    pub fn entries(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, LedgerError> {
        let mut out = Vec::new();
        let mut index = from;
        while index < to {
            let bundle_index = index / TILE_WIDTH;
            let width = (to - bundle_index * TILE_WIDTH).min(TILE_WIDTH);
            let bytes = read_bundle(self.files.as_ref(), TileId::entries(bundle_index, width))?;
            let entries =
                bundle_entries(&bytes, width).map_err(|e| LedgerError::Damaged(e.to_string()))?;
            for (i, e) in entries.into_iter().enumerate() {
                let at = bundle_index * TILE_WIDTH + i as u64;
                if at >= index {
                    out.push((at, e.to_vec()));
                }
            }
            index = bundle_index * TILE_WIDTH + width;
        }
        Ok(out)
    }

    /// [`Self::entries`], each checked against its leaf hash in the
    /// published hash tiles: an entry bundle altered on its own is refused.
    /// (Only [`crate::verify_published`] holds the tiles themselves to the
    /// signed root.)
    pub fn entries_checked(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, LedgerError> {
        let entries = self.entries(from, to)?;
        let mut leaves: Option<(u64, Vec<u8>)> = None;
        for (index, bytes) in &entries {
            let tile = index / TILE_WIDTH;
            if leaves.as_ref().is_none_or(|(t, _)| *t != tile) {
                let width = (to - tile * TILE_WIDTH).min(TILE_WIDTH);
                let data = self
                    .tiles
                    .read(0, tile, width)
                    .map_err(|e| LedgerError::Damaged(format!("hash tile 0/{tile}: {e}")))?;
                leaves = Some((tile, data.to_vec()));
            }
            let offset = usize::try_from(index % TILE_WIDTH).unwrap_or(usize::MAX) * 32;
            let leaf = leaves
                .as_ref()
                .and_then(|(_, data)| data.get(offset..offset + 32));
            if leaf != Some(&tlog_tiles::record_hash(bytes).0[..]) {
                return Err(LedgerError::Verify(format!(
                    "entry {index} does not hash to its leaf in the published tiles: the entry bundle was altered"
                )));
            }
        }
        Ok(entries)
    }

    fn check_size(&self, size: u64, published: u64) -> Result<(), LedgerError> {
        if size == 0 || size > published {
            return Err(LedgerError::Proof(format!(
                "size {size} is not between 1 and the published size {published}"
            )));
        }
        Ok(())
    }

    /// An inclusion proof for `index` in the tree of `size` (≤ `published`).
    pub fn inclusion_proof(
        &self,
        index: u64,
        size: u64,
        published: u64,
    ) -> Result<InclusionProof, LedgerError> {
        self.check_size(size, published)?;
        if index >= size {
            return Err(LedgerError::Proof(format!(
                "index {index} is not below size {size}"
            )));
        }
        let reader = TreeReader::new(&self.tiles, size);
        let proof =
            prove_record(size, index, &reader).map_err(|e| LedgerError::Proof(e.to_string()))?;
        let root = tree_hash(size, &reader).map_err(|e| LedgerError::Proof(e.to_string()))?;
        let leaf = reader
            .read_hashes(&[tlog_tiles::stored_hash_index(0, index)])
            .map_err(|e| LedgerError::Proof(e.to_string()))?
            .pop()
            .ok_or_else(|| LedgerError::Proof("leaf hash missing".into()))?;
        Ok(InclusionProof {
            index,
            size,
            leaf_hash: hex_hash(&leaf),
            root: hex_hash(&root),
            proof: proof.iter().map(hex_hash).collect(),
        })
    }

    /// Entry `index` and its inclusion proof in the tree of `checkpoint`,
    /// checked end to end: the entry's bytes hash to the proved leaf, the
    /// proof verifies, and its root is the checkpoint's (whose signature
    /// the caller verified).
    pub fn prove_entry(
        &self,
        index: u64,
        checkpoint: &VerifiedCheckpoint,
    ) -> Result<(Vec<u8>, InclusionProof), LedgerError> {
        let bytes = self
            .entries(index, index + 1)?
            .pop()
            .map(|(_, bytes)| bytes)
            .ok_or_else(|| LedgerError::Proof(format!("no entry {index}")))?;
        let proof = self.inclusion_proof(index, checkpoint.size, checkpoint.size)?;
        if proof.leaf_hash != hex_hash(&tlog_tiles::record_hash(&bytes)) {
            return Err(LedgerError::Proof(format!(
                "entry {index}'s bytes do not hash to the leaf the tree holds"
            )));
        }
        verify_inclusion(&proof)?;
        if proof.root != hex::encode(checkpoint.root) {
            return Err(LedgerError::Proof(
                "the proof's root is not the checkpoint's".into(),
            ));
        }
        Ok((bytes, proof))
    }

    /// A consistency proof from `old` to `new` (both ≤ `published`).
    pub fn consistency_proof(
        &self,
        old: u64,
        new: u64,
        published: u64,
    ) -> Result<ConsistencyProof, LedgerError> {
        self.check_size(new, published)?;
        if old == 0 || old > new {
            return Err(LedgerError::Proof(format!(
                "old size {old} must be between 1 and {new}"
            )));
        }
        let reader = TreeReader::new(&self.tiles, new);
        let proof = prove_tree(new, old, &reader).map_err(|e| LedgerError::Proof(e.to_string()))?;
        let new_root = tree_hash(new, &reader).map_err(|e| LedgerError::Proof(e.to_string()))?;
        let old_root = tree_hash(old, &TreeReader::new(&self.tiles, old))
            .map_err(|e| LedgerError::Proof(e.to_string()))?;
        Ok(ConsistencyProof {
            old_size: old,
            new_size: new,
            old_root: hex_hash(&old_root),
            new_root: hex_hash(&new_root),
            proof: proof.iter().map(hex_hash).collect(),
        })
    }
}
