//! Writes seed inputs for the fuzz targets in `fuzz/` (a signed checkpoint,
//! entry bundles, tile paths, entries).
//!
//! Usage: fuzz_seeds FUZZ_DIR
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

use custos_ledger::tiles::{TileId, bundle_push};
use custos_ledger::{Decision, Entry, NoteSigner, SubjectCommitter};
use ed25519_dalek::SigningKey;

fn main() {
    let out = std::env::args().nth(1).expect("usage: fuzz_seeds FUZZ_DIR");
    let seeds = Path::new(&out).join("seeds");
    let note_dir = seeds.join("checkpoint_note");
    let tile_dir = seeds.join("tile_reader");
    std::fs::create_dir_all(&note_dir).unwrap();
    std::fs::create_dir_all(&tile_dir).unwrap();
    let signer = NoteSigner::new("fuzz.custos.local/log", SigningKey::from_bytes(&[7; 32]));
    std::fs::write(
        note_dir.join("signed-size-5"),
        signer.sign(5, [3; 32]).unwrap(),
    )
    .unwrap();
    std::fs::write(
        note_dir.join("signed-size-0"),
        signer.sign(0, [0; 32]).unwrap(),
    )
    .unwrap();

    let c = SubjectCommitter::new(&[1; 32]);
    let entry = Entry::new(
        1_700_000_000_000_000,
        "alice",
        "lookup.fetch",
        Decision::Allow,
    )
    .with_agreement("a-1", 2)
    .with_request("r-1")
    .with_reason("grant 1")
    .with_count("rows", 2)
    .with_attribute("dataset", "tax_returns")
    .with_subjects([c.commit("666-01-0001")])
    .encode()
    .unwrap();
    std::fs::write(tile_dir.join("entry"), &entry).unwrap();
    let mut bundle = vec![3u8];
    for _ in 0..3 {
        bundle_push(&mut bundle, &entry);
    }
    std::fs::write(tile_dir.join("bundle-3"), &bundle).unwrap();
    std::fs::write(
        tile_dir.join("path-full"),
        TileId::hashes(0, 1_234_067, 256).path(),
    )
    .unwrap();
    std::fs::write(tile_dir.join("path-partial"), TileId::entries(5, 17).path()).unwrap();
    let mut hashes = vec![2u8];
    hashes.extend_from_slice(&[9u8; 64]);
    std::fs::write(tile_dir.join("hash-tile-2"), &hashes).unwrap();
}
