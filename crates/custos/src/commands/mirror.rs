//! A server's ledger read through its public C2SP tlog-tiles paths. The
//! checkpoint, hash tiles and entry bundles are copied into a temporary
//! directory with the ledger's own layout, so the same reader, proofs and
//! verifier run on the copy as on a local ledger. Nothing here trusts the
//! server: the checkpoint must verify with the key the user brings, and
//! every hash is then recomputed from the copied files.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use custos_ledger::log::CHECKPOINT;
use custos_ledger::tiles::{TILE_WIDTH, TileId};
use custos_ledger::verify_checkpoint;
use custos_ledger::witnessed::WITNESSED_CHECKPOINT;
use tempfile::TempDir;
use tokio::task::JoinSet;

use super::gateway::Client;

/// Tiles fetched at once.
const PARALLEL_FETCHES: usize = 16;

/// Attempts when the log grows while being copied (a partial tile is
/// superseded between reading the checkpoint and fetching it).
const ATTEMPTS: usize = 3;

/// Which files to copy.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// Entries whose bundles are needed (clipped to the checkpoint's size).
    pub entries: Range<u64>,
    /// Whether every hash tile is needed (for proofs and verification).
    pub hashes: bool,
}

/// A verified copy of a server's published ledger.
#[derive(Debug)]
pub struct Mirror {
    /// The directory holding `checkpoint` and `tile/…`; removed on drop.
    pub dir: TempDir,
}

/// Copies what `wanted` names of the ledger published at `client`'s server,
/// after checking its checkpoint's signature with `verifier_key`.
pub async fn mirror(
    client: &Client,
    verifier_key: &str,
    wanted: &Wanted,
) -> anyhow::Result<Mirror> {
    for _ in 0..ATTEMPTS {
        let note = client
            .get_public("/checkpoint")
            .await?
            .ok_or_else(|| anyhow!("the server publishes no /checkpoint"))?;
        let checkpoint = verify_checkpoint(&note, verifier_key).map_err(|e| {
            anyhow!("the server's checkpoint does not verify with the key given: {e}")
        })?;
        let dir = tempfile::tempdir().context("creating a directory for the ledger copy")?;
        std::fs::write(dir.path().join(CHECKPOINT), &note)?;
        // The witnessed checkpoint, if the server has one; verified (or
        // not) by whoever reads the copy, against their own policy.
        if let Some(witnessed) = client.get_public("/witnessed-checkpoint").await? {
            std::fs::write(dir.path().join(WITNESSED_CHECKPOINT), witnessed)?;
        }
        let paths = tile_paths(checkpoint.size, wanted);
        if fetch_all(client, dir.path(), paths).await? {
            return Ok(Mirror { dir });
        }
        // A tile of that size is gone: the log grew. Start from its new checkpoint.
    }
    bail!("the server's ledger kept growing while it was being copied; try again")
}

/// The C2SP paths of the bundles and tiles `wanted` needs for a log of `size`.
fn tile_paths(size: u64, wanted: &Wanted) -> Vec<String> {
    let mut paths = Vec::new();
    let end = wanted.entries.end.min(size);
    let mut bundle = wanted.entries.start / TILE_WIDTH;
    while bundle * TILE_WIDTH < end {
        let width = (size - bundle * TILE_WIDTH).min(TILE_WIDTH);
        paths.push(TileId::entries(bundle, width).path());
        if !wanted.hashes {
            // The entries' leaf hashes, which `ledger show` checks them against.
            paths.push(TileId::hashes(0, bundle, width).path());
        }
        bundle += 1;
    }
    if wanted.hashes {
        // Level L stores the hashes of the size >> 8L complete subtrees of
        // height 8L, 256 to a tile; the last tile of a level may be partial.
        let mut level = 0u8;
        while level < 8 {
            let count = size >> (8 * u32::from(level));
            if count == 0 {
                break;
            }
            let mut index = 0;
            while index * TILE_WIDTH < count {
                let width = (count - index * TILE_WIDTH).min(TILE_WIDTH);
                paths.push(TileId::hashes(level, index, width).path());
                index += 1;
            }
            level += 1;
        }
    }
    paths
}

/// Fetches every path into `dir`, a few at a time, with a progress bar on
/// a terminal. False if one was not found (the log moved on).
async fn fetch_all(client: &Client, dir: &Path, paths: Vec<String>) -> anyhow::Result<bool> {
    let bar = indicatif::ProgressBar::new(paths.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("copying the ledger {bar:30} {pos}/{len} files")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let client = Arc::new(client.clone());
    let mut pending = paths.into_iter();
    let mut running = JoinSet::new();
    let mut complete = true;
    loop {
        while running.len() < PARALLEL_FETCHES {
            let Some(path) = pending.next() else { break };
            let client = client.clone();
            running.spawn(async move {
                let body = client.get_public(&format!("/{path}")).await;
                (path, body)
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let (path, body) = done?;
        match body? {
            Some(bytes) => {
                let target = dir.join(&path);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&target, bytes)
                    .with_context(|| format!("writing {}", target.display()))?;
                bar.inc(1);
            }
            None => {
                complete = false;
                break;
            }
        }
    }
    running.abort_all();
    bar.finish_and_clear();
    Ok(complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_paths_cover_every_level_and_the_partial_edges() {
        let all = Wanted {
            entries: 0..u64::MAX,
            hashes: true,
        };
        // 300 entries: one full and one partial bundle and level-0 tile,
        // and a level-1 tile holding the one complete 256-leaf subtree.
        assert_eq!(
            tile_paths(300, &all),
            [
                "tile/entries/000",
                "tile/entries/001.p/44",
                "tile/0/000",
                "tile/0/001.p/44",
                "tile/1/000.p/1",
            ]
        );
        assert_eq!(
            tile_paths(256, &all),
            ["tile/entries/000", "tile/0/000", "tile/1/000.p/1"]
        );
        let one = Wanted {
            entries: 260..261,
            hashes: false,
        };
        assert_eq!(
            tile_paths(300, &one),
            ["tile/entries/001.p/44", "tile/0/001.p/44"]
        );
        assert!(tile_paths(0, &all).is_empty());
    }
}
