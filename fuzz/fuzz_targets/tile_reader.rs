//! Fuzzes the tile-side decoders: tile paths, entry bundles, hash tiles and
//! entries. No input may panic; every accepted input must round-trip.
#![no_main]

use custos_ledger::Entry;
use custos_ledger::tiles::{TileId, bundle_entries, bundle_push, tile_hashes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data)
        && let Some(id) = TileId::from_path(path)
    {
        assert_eq!(id.path(), path, "tile paths are canonical");
    }
    let Some((&width, rest)) = data.split_first() else {
        return;
    };
    let width = u64::from(width).max(1);
    if let Ok(entries) = bundle_entries(rest, width) {
        let mut again = Vec::new();
        for e in &entries {
            bundle_push(&mut again, e);
        }
        assert_eq!(again, rest, "bundles round-trip");
        for e in entries {
            if let Ok(entry) = Entry::decode(e) {
                assert_eq!(entry.encode().expect("encode"), e, "entries are canonical");
            }
        }
    }
    if let Ok(hashes) = tile_hashes(rest, width) {
        assert_eq!(hashes.len() as u64, width);
    }
    if let Ok(entry) = Entry::decode(data) {
        assert_eq!(
            entry.encode().expect("encode"),
            data,
            "entries are canonical"
        );
    }
});
