//! Full verification of a published ledger: every entry re-hashed, every
//! hash tile recomputed, the root checked against the signed checkpoint, and
//! (optionally) consistency with an older checkpoint that an overseer kept.
//!
//! Streaming: memory holds one bundle and one tile per level, whatever the
//! log's size. Every failure names the entry or file where it was found.

use std::fs;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tlog_tiles::{Hash, Tile, record_hash};

use crate::LedgerError;
use crate::entry::Entry;
use crate::entry::MAX_ENTRY_BYTES;
use crate::log::{read_bundle, read_record};
use crate::merkle::{CompactRange, TileFiles, hashes_of};
use crate::note::{VerifiedCheckpoint, verify_checkpoint};
use crate::published::{DirFiles, PublishedFiles};
use crate::tiles::{TILE_WIDTH, TileId, bundle_entries};

/// What a successful verification established.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Entries verified (the checkpoint's size).
    pub size: u64,
    /// Root hash, hex.
    pub root: String,
    /// Hash tiles checked.
    pub tiles_checked: u64,
    /// Size of the older checkpoint found consistent, if one was given.
    pub consistent_with: Option<u64>,
    /// Journal records compared with the published entries (local homes).
    pub journal_checked: u64,
    /// The key that signs the newest checkpoint (the one given, or where
    /// the chain of key changes from it leads).
    pub signing_key: String,
    /// Key changes followed from the key given.
    pub key_changes: u64,
}

fn fail(message: String) -> LedgerError {
    LedgerError::Verify(message)
}

struct Levels {
    /// Computed hashes awaiting comparison, per tile level.
    pending: Vec<Vec<Hash>>,
    checked: u64,
}

impl Levels {
    /// Compares the pending hashes at `level` with tile `index` on disk.
    fn compare(&mut self, tiles: &TileFiles, level: u8, index: u64) -> Result<(), LedgerError> {
        let computed = std::mem::take(&mut self.pending[usize::from(level)]);
        let id = TileId::hashes(level, index, computed.len() as u64);
        let bytes = tiles
            .read(level, index, id.width)
            .map_err(|e| fail(format!("{}: cannot be read ({e})", id.path())))?;
        let stored =
            hashes_of(&bytes, id.width).map_err(|e| fail(format!("{}: {e}", id.path())))?;
        for (i, (a, b)) in computed.iter().zip(&stored).enumerate() {
            if a != b {
                let what = if level == 0 {
                    format!("entry {}", index * TILE_WIDTH + i as u64)
                } else {
                    format!(
                        "subtree {} of level {}",
                        index * TILE_WIDTH + i as u64,
                        u32::from(level) * 8
                    )
                };
                return Err(fail(format!(
                    "{}: hash {i} does not match {what} recomputed from the entries (an entry bundle or this tile was altered)",
                    id.path()
                )));
            }
        }
        self.checked += 1;
        if id.is_full() {
            let bytes: Vec<u8> = computed.iter().flat_map(|h| h.0).collect();
            self.push(tiles, level + 1, index, Tile::subtree_hash(&bytes))?;
        }
        Ok(())
    }

    fn push(
        &mut self,
        tiles: &TileFiles,
        level: u8,
        child_index: u64,
        hash: Hash,
    ) -> Result<(), LedgerError> {
        let l = usize::from(level);
        if self.pending.len() <= l {
            self.pending.resize(l + 1, Vec::new());
        }
        self.pending[l].push(hash);
        if self.pending[l].len() as u64 == TILE_WIDTH {
            self.compare(tiles, level, child_index / TILE_WIDTH)?;
        }
        Ok(())
    }
}

/// Reads journal records in order, for comparison with published entries.
struct JournalCursor {
    reader: Option<BufReader<fs::File>>,
    index: u64,
}

impl JournalCursor {
    /// The next record's entry, checked against its recorded leaf hash;
    /// `Ok(None)` at the end of the journal.
    fn next(&mut self) -> Result<Option<Vec<u8>>, LedgerError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(None);
        };
        let mut entry = Vec::new();
        let Some(header) =
            read_record(reader, &mut entry).map_err(|e| fail(format!("journal: {e}")))?
        else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        if header.len > MAX_ENTRY_BYTES {
            return Err(fail(format!(
                "journal record {index} has an impossible length"
            )));
        }
        if reader.read_exact(&mut entry).is_err() {
            return Ok(None);
        }
        // The record's tag is a MAC under the ledger key, which a verifier
        // does not hold; the entry itself is compared with the published one.
        let _ = header.tag;
        Ok(Some(entry))
    }
}

/// Verifies the ledger in `dir` against `verifier_key`, and against
/// `older` (a checkpoint note kept from earlier) if given.
pub fn verify_ledger(
    dir: &Path,
    verifier_key: &str,
    older: Option<&[u8]>,
) -> Result<VerifyReport, LedgerError> {
    verify_published(Arc::new(DirFiles::new(dir)), verifier_key, older)
}

/// Verifies a ledger's published files wherever they are (a directory or
/// object storage) against `verifier_key`, and against `older` if given.
/// A local ledger's journal, when there is one beside the files, is also
/// compared with the published entries.
pub fn verify_published(
    files: Arc<dyn PublishedFiles>,
    verifier_key: &str,
    older: Option<&[u8]>,
) -> Result<VerifyReport, LedgerError> {
    let note = files
        .read(crate::log::CHECKPOINT)
        .map_err(|e| fail(format!("checkpoint: cannot be read ({e})")))?
        .ok_or_else(|| fail("checkpoint: cannot be read (there is none)".into()))?;
    // The signatures are checked once the entries have shown which key
    // signs now (a key change is an entry); the sizes and roots first.
    let latest = unverified(&note).map_err(|e| fail(format!("checkpoint: {e}")))?;
    let old = match older {
        Some(note) => {
            let old = unverified(note).map_err(|e| fail(format!("older checkpoint: {e}")))?;
            if old.size > latest.size {
                return Err(fail(format!(
                    "the older checkpoint covers {} entries but the log now has {}: entries were deleted",
                    old.size, latest.size
                )));
            }
            Some(old)
        }
        None => None,
    };
    let mut journal = JournalCursor {
        reader: files
            .dir()
            .and_then(|dir| fs::File::open(dir.join("journal")).ok())
            .map(|f| BufReader::with_capacity(1 << 20, f)),
        index: 0,
    };
    let tiles = TileFiles::over(Arc::clone(&files));
    let mut journal_checked = 0;
    let mut range = CompactRange::new();
    let mut levels = Levels {
        pending: vec![Vec::new()],
        checked: 0,
    };
    let size = latest.size;
    let mut key = verifier_key.to_owned();
    let mut chain = vec![key.clone()];
    let mut bundle_index = 0;
    while bundle_index * TILE_WIDTH < size {
        let width = (size - bundle_index * TILE_WIDTH).min(TILE_WIDTH);
        let id = TileId::entries(bundle_index, width);
        // A live writer replaces partial bundles; read_bundle falls back to
        // the wider one that superseded it (its prefix is the same entries).
        let bytes = read_bundle(files.as_ref(), id)
            .map_err(|e| fail(format!("{}: cannot be read ({e})", id.path())))?;
        let entries =
            bundle_entries(&bytes, width).map_err(|e| fail(format!("{}: {e}", id.path())))?;
        for (i, entry) in entries.iter().enumerate() {
            let index = bundle_index * TILE_WIDTH + i as u64;
            let decoded = Entry::decode(entry)
                .map_err(|e| fail(format!("entry {index} in {}: {e}", id.path())))?;
            if let Some(new) = crate::key_change::follow(&decoded, &key)
                .map_err(|e| fail(format!("entry {index}: {e}")))?
            {
                key = new;
                chain.push(key.clone());
            }
            if let Some(recorded) = journal.next()? {
                if recorded != *entry {
                    return Err(fail(format!(
                        "entry {index}: the published entry in {} differs from the journal",
                        id.path()
                    )));
                }
                journal_checked += 1;
            } else if journal.reader.is_some() {
                return Err(fail(format!(
                    "entry {index}: the journal ends before the published log"
                )));
            }
            let leaf = record_hash(entry);
            range.push(leaf);
            if let Some(old) = &old
                && range.size() == old.size
                && range.root().0 != old.root
            {
                return Err(fail(format!(
                    "the first {} entries no longer hash to the older checkpoint's root: an entry at or before index {} was changed, removed or reordered",
                    old.size,
                    old.size - 1
                )));
            }
            levels.push(&tiles, 0, index, leaf)?;
        }
        bundle_index += 1;
    }
    // Compare the partial tiles at the right edge, bottom up.
    let mut level = 0u8;
    while usize::from(level) < levels.pending.len() {
        let count = size >> (u32::from(level) * 8);
        if !levels.pending[usize::from(level)].is_empty() {
            levels.compare(&tiles, level, count / TILE_WIDTH)?;
        }
        level += 1;
    }
    if range.root().0 != latest.root {
        return Err(fail(format!(
            "the {size} entries do not hash to the root in the signed checkpoint"
        )));
    }
    verify_checkpoint(&note, &key).map_err(|e| {
        fail(format!(
            "checkpoint: not signed by the ledger's current key `{key}` ({} key change(s) followed from the key given): {e}",
            chain.len() - 1
        ))
    })?;
    if let Some(older) = older
        && !chain.iter().any(|k| verify_checkpoint(older, k).is_ok())
    {
        return Err(fail(
            "older checkpoint: not signed by the key given or any key the ledger changed to".into(),
        ));
    }
    Ok(VerifyReport {
        size,
        root: hex::encode(latest.root),
        tiles_checked: levels.checked,
        consistent_with: old.map(|o| o.size),
        journal_checked,
        signing_key: key,
        key_changes: chain.len() as u64 - 1,
    })
}

/// A checkpoint's size and root, before its signature is checked.
fn unverified(note: &[u8]) -> Result<VerifiedCheckpoint, String> {
    let parsed = signed_note::Note::from_bytes(note).map_err(|e| e.to_string())?;
    let cp = tlog_tiles::Checkpoint::from_bytes(parsed.text())
        .map_err(|_| "the body is not a checkpoint".to_owned())?;
    Ok(VerifiedCheckpoint {
        origin: cp.origin().to_owned(),
        size: cp.size(),
        root: cp.hash().0,
        note: note.to_vec(),
    })
}
