//! The ledger end to end: appends, recovery, proofs, verification and
//! every kind of tampering the design promises to detect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use custos_ledger::tiles::TileId;
use custos_ledger::{
    Decision, Entry, Ledger, LedgerConfig, LedgerError, LedgerReader, verify_consistency,
    verify_inclusion, verify_ledger,
};
use ed25519_dalek::SigningKey;

const ORIGIN: &str = "test.custos.local/ledger";

fn config(dir: &Path) -> LedgerConfig {
    LedgerConfig {
        dir: dir.to_owned(),
        origin: ORIGIN.into(),
        signing_key: SigningKey::from_bytes(&[42; 32]),
        next_key: None,
        checkpoint_interval: Duration::from_millis(200),
        faults: custos_ledger::FaultPlan::default(),
    }
}

fn entry(i: u64) -> Entry {
    Entry::new(
        1_700_000_000_000_000 + i as i64,
        "tester",
        "test.append",
        Decision::Recorded,
    )
    .with_count("i", i)
}

/// A ledger with `n` entries, closed (so its last checkpoint covers all).
fn ledger_with(n: u64) -> (tempfile::TempDir, PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let ledger = Ledger::open(config(&dir)).unwrap();
    let key = ledger.verifier_key().to_owned();
    let batch: Vec<Vec<u8>> = (0..n).map(|i| entry(i).encode().unwrap()).collect();
    for chunk in batch.chunks(100) {
        ledger.append_encoded(chunk.to_vec()).unwrap();
    }
    ledger.close().unwrap();
    (tmp, dir, key)
}

#[test]
fn appends_are_numbered_and_survive_reopen() {
    let (_tmp, dir, key) = ledger_with(700);
    let reader = LedgerReader::new(&dir);
    let cp = reader.latest(&key).unwrap();
    assert_eq!(cp.size, 700);
    let ledger = Ledger::open(config(&dir)).unwrap();
    assert_eq!(ledger.append(&entry(700)).unwrap(), 700);
    let cp2 = ledger.checkpoint().unwrap();
    assert_eq!(cp2.size, 701);
    drop(ledger);
    let entries = reader.entries(698, 701).unwrap();
    let decoded: Vec<u64> = entries
        .iter()
        .map(|(_, e)| Entry::decode(e).unwrap().counts[0].1)
        .collect();
    assert_eq!(decoded, [698, 699, 700]);
    verify_ledger(&dir, &key, Some(&cp.note)).unwrap();
}

#[test]
fn inclusion_and_consistency_proofs_verify_for_every_size() {
    let (_tmp, dir, key) = ledger_with(300);
    let reader = LedgerReader::new(&dir);
    let published = reader.latest(&key).unwrap().size;
    for size in [1u64, 2, 3, 7, 8, 255, 256, 257, 299, 300] {
        for index in [0, size / 2, size - 1] {
            let p = reader.inclusion_proof(index, size, published).unwrap();
            verify_inclusion(&p).unwrap();
            let mut bad = p.clone();
            bad.index = (index + 1) % size.max(2);
            if bad.index != index && size > 1 {
                assert!(verify_inclusion(&bad).is_err(), "wrong index must fail");
            }
        }
        for old in [1u64, size / 2, size] {
            if old == 0 {
                continue;
            }
            let p = reader.consistency_proof(old, size, published).unwrap();
            verify_consistency(&p).unwrap();
        }
    }
    assert!(reader.inclusion_proof(300, 300, published).is_err());
    assert!(reader.inclusion_proof(0, 301, published).is_err());
    assert!(reader.consistency_proof(5, 4, published).is_err());
}

#[test]
fn concurrent_appenders_share_commits_and_get_distinct_indexes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let ledger = Arc::new(Ledger::open(config(&dir)).unwrap());
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| ledger.append(&entry(t * 1000 + i)).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..800).collect::<Vec<_>>());
    let key = ledger.verifier_key().to_owned();
    Arc::into_inner(ledger).unwrap().close().unwrap();
    assert_eq!(verify_ledger(&dir, &key, None).unwrap().size, 800);
}

#[test]
fn a_second_writer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let _first = Ledger::open(config(&dir)).unwrap();
    assert!(matches!(
        Ledger::open(config(&dir)),
        Err(LedgerError::Busy(_))
    ));
}

#[test]
fn a_torn_final_record_is_cut_and_the_rest_kept() {
    let (_tmp, dir, key) = ledger_with(10);
    let mut journal = fs::OpenOptions::new()
        .append(true)
        .open(dir.join("journal"))
        .unwrap();
    std::io::Write::write_all(&mut journal, &[0, 0, 0, 50, 1, 2, 3]).unwrap();
    drop(journal);
    let ledger = Ledger::open(config(&dir)).unwrap();
    assert_eq!(ledger.append(&entry(10)).unwrap(), 10);
    ledger.close().unwrap();
    assert_eq!(verify_ledger(&dir, &key, None).unwrap().size, 11);
}

#[test]
fn a_lost_journal_refuses_to_open() {
    let (_tmp, dir, _key) = ledger_with(10);
    fs::write(dir.join("journal"), b"").unwrap();
    let err = Ledger::open(config(&dir)).unwrap_err().to_string();
    assert!(err.contains("acknowledged entries are missing"), "{err}");
}

#[test]
fn lost_tiles_are_rebuilt_from_the_journal() {
    let (_tmp, dir, key) = ledger_with(600);
    fs::remove_dir_all(dir.join("tile")).unwrap();
    fs::remove_file(dir.join("state.json")).unwrap();
    Ledger::open(config(&dir)).unwrap().close().unwrap();
    assert_eq!(verify_ledger(&dir, &key, None).unwrap().size, 600);
}

// ---- tampering: each must fail `verify` against an older checkpoint, saying where ----

struct Tampered {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    key: String,
    old: Vec<u8>,
}

/// 600 entries (two full bundles and a partial one); the checkpoint at 520 is kept.
fn tamper_fixture() -> Tampered {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let ledger = Ledger::open(config(&dir)).unwrap();
    let key = ledger.verifier_key().to_owned();
    let batch: Vec<Vec<u8>> = (0..520).map(|i| entry(i).encode().unwrap()).collect();
    ledger.append_encoded(batch).unwrap();
    let old = ledger.checkpoint().unwrap().note;
    let batch: Vec<Vec<u8>> = (520..600).map(|i| entry(i).encode().unwrap()).collect();
    ledger.append_encoded(batch).unwrap();
    ledger.close().unwrap();
    verify_ledger(&dir, &key, Some(&old)).unwrap();
    Tampered {
        _tmp: tmp,
        dir,
        key,
        old,
    }
}

fn verify_err(t: &Tampered) -> String {
    match verify_ledger(&t.dir, &t.key, Some(&t.old)) {
        Ok(r) => panic!("tampering went unnoticed: {r:?}"),
        Err(e) => e.to_string(),
    }
}

fn path(t: &Tampered, id: TileId) -> PathBuf {
    t.dir.join(id.path())
}

#[test]
fn flipping_any_byte_of_an_entry_bundle_is_detected() {
    let t = tamper_fixture();
    let p = path(&t, TileId::entries(1, 256));
    let original = fs::read(&p).unwrap();
    // Every 7th byte of the bundle, and the first and last.
    let mut positions: Vec<usize> = (0..original.len()).step_by(7).collect();
    positions.push(original.len() - 1);
    for pos in positions {
        let mut bytes = original.clone();
        bytes[pos] ^= 0x01;
        fs::write(&p, &bytes).unwrap();
        let err = verify_err(&t);
        assert!(
            err.contains("tile/entries/001")
                || err.contains("entry 2")
                || err.contains("entry 3")
                || err.contains("entry 4"),
            "byte {pos}: {err}"
        );
    }
    fs::write(&p, &original).unwrap();
}

#[test]
fn flipping_any_byte_of_a_hash_tile_is_detected() {
    let t = tamper_fixture();
    for id in [
        TileId::hashes(0, 0, 256),
        TileId::hashes(0, 2, 88),
        TileId::hashes(1, 0, 2),
    ] {
        let p = path(&t, id);
        let original = fs::read(&p).unwrap();
        for pos in (0..original.len()).step_by(31) {
            let mut bytes = original.clone();
            bytes[pos] ^= 0x80;
            fs::write(&p, &bytes).unwrap();
            let err = verify_err(&t);
            assert!(err.contains(&id.path()), "{} byte {pos}: {err}", id.path());
        }
        fs::write(&p, &original).unwrap();
    }
}

#[test]
fn deleting_the_last_entry_is_detected() {
    let t = tamper_fixture();
    let p = path(&t, TileId::entries(2, 88));
    let bytes = fs::read(&p).unwrap();
    let entries = custos_ledger::tiles::bundle_entries(&bytes, 88).unwrap();
    let cut = bytes.len() - entries[87].len() - 2;
    fs::write(&p, &bytes[..cut]).unwrap();
    let err = verify_err(&t);
    assert!(
        err.contains("tile/entries/002.p/88") && err.contains("holds 87 entries"),
        "{err}"
    );
}

#[test]
fn swapping_two_entries_is_detected() {
    let t = tamper_fixture();
    let p = path(&t, TileId::entries(0, 256));
    let bytes = fs::read(&p).unwrap();
    let entries: Vec<Vec<u8>> = custos_ledger::tiles::bundle_entries(&bytes, 256)
        .unwrap()
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let mut swapped = entries.clone();
    swapped.swap(10, 11);
    let mut out = Vec::new();
    for e in &swapped {
        custos_ledger::tiles::bundle_push(&mut out, e);
    }
    fs::write(&p, &out).unwrap();
    let err = verify_err(&t);
    assert!(err.contains("entry 10"), "{err}");
}

#[test]
fn truncating_a_file_is_detected() {
    let t = tamper_fixture();
    for id in [TileId::entries(0, 256), TileId::hashes(0, 1, 256)] {
        let p = path(&t, id);
        let original = fs::read(&p).unwrap();
        fs::write(&p, &original[..original.len() / 2]).unwrap();
        let err = verify_err(&t);
        assert!(err.contains(&id.path()), "{err}");
        fs::write(&p, &original).unwrap();
    }
    let cp = t.dir.join("checkpoint");
    let original = fs::read(&cp).unwrap();
    fs::write(&cp, &original[..original.len() - 10]).unwrap();
    assert!(verify_err(&t).contains("checkpoint"));
}

#[test]
fn a_rewritten_history_is_caught_by_the_older_checkpoint() {
    // The attacker holds the signing key, rewrites entry 5 and re-signs: the
    // current checkpoint verifies, the older one an overseer kept does not.
    let t = tamper_fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let ledger = Ledger::open(config(&dir)).unwrap();
    let batch: Vec<Vec<u8>> = (0..600)
        .map(|i| {
            if i == 5 { entry(9999) } else { entry(i) }
                .encode()
                .unwrap()
        })
        .collect();
    ledger.append_encoded(batch).unwrap();
    ledger.close().unwrap();
    verify_ledger(&dir, &t.key, None).unwrap();
    let err = verify_ledger(&dir, &t.key, Some(&t.old))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("first 520 entries no longer hash to the older checkpoint"),
        "{err}"
    );
}

#[test]
fn a_checkpoint_from_another_key_is_refused() {
    let t = tamper_fixture();
    let other = SigningKey::from_bytes(&[7; 32]);
    let other_key = custos_ledger::NoteSigner::new(ORIGIN, other).verifier_key();
    let err = verify_ledger(&t.dir, &other_key, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("checkpoint"), "{err}");
}

/// Slow tests run only with `CUSTOS_SLOW_TESTS=1` (as `scripts/test` sets).
fn slow_tests(name: &str) -> bool {
    let on = std::env::var("CUSTOS_SLOW_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!(
            "{name}: skipped (slow; set CUSTOS_SLOW_TESTS=1 to run it, as scripts/test does)"
        );
    }
    on
}

#[test]
fn every_acknowledged_entry_survives_kill_9() {
    if !slow_tests("every_acknowledged_entry_survives_kill_9") {
        return;
    }
    use std::io::Read;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().unwrap();
    let examples = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("append_stream");
    assert!(
        examples.exists(),
        "build the example first: {}",
        examples.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for round in 0..50u64 {
        let mut child = Command::new(&examples)
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a different moment each round (10..110 ms after start).
        std::thread::sleep(Duration::from_millis(10 + (round * 37) % 100));
        child.kill().unwrap();
        let mut text = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        child.wait().unwrap();
        for line in text.lines() {
            let mut parts = line.split_whitespace().skip(1);
            let index: u64 = parts.next().unwrap().parse().unwrap();
            let payload: u64 = parts.next().unwrap().parse().unwrap();
            acked.push((index, payload));
        }
    }
    assert!(
        acked.len() > 100,
        "the stream made progress: {}",
        acked.len()
    );
    // Recover, publish, and check every acknowledged entry is there, unchanged.
    let ledger = Ledger::open(config(&dir)).unwrap();
    let key = ledger.verifier_key().to_owned();
    ledger.close().unwrap();
    let report = verify_ledger(&dir, &key, None).unwrap();
    let reader = LedgerReader::new(&dir);
    let entries = reader.entries(0, report.size).unwrap();
    for (index, payload) in acked {
        let (_, bytes) = &entries[index as usize];
        let e = Entry::decode(bytes).unwrap();
        assert_eq!(
            e.counts,
            vec![("payload".to_owned(), payload)],
            "entry {index}"
        );
    }
}

/// Runs the Go verifier (Debian's golang-go and golang-golang-x-mod-dev,
/// installed by scripts/test) on a vectors file.
pub fn run_go_verifier(vectors: &Path) -> String {
    let program = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go/main.go");
    let cache = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("go")
        .arg("run")
        .arg(&program)
        .arg(vectors)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", cache.path())
        .env("GOFLAGS", "")
        .output()
        .expect(
            "`go` must be installed (scripts/test installs golang-go and golang-golang-x-mod-dev)",
        );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "Go rejected Custos' ledger: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn go_sumdb_verifies_checkpoints_and_proofs() {
    use base64::Engine;
    let (_tmp, dir, key) = ledger_with(1000);
    let reader = LedgerReader::new(&dir);
    let cp = reader.latest(&key).unwrap();
    let mut inclusion = Vec::new();
    for (index, size) in [
        (0u64, 1000u64),
        (255, 1000),
        (256, 1000),
        (999, 1000),
        (3, 4),
        (500, 777),
    ] {
        let p = reader.inclusion_proof(index, size, cp.size).unwrap();
        let entry = reader.entries(index, index + 1).unwrap().remove(0).1;
        let mut v = serde_json::to_value(&p).unwrap();
        v["entry_base64"] =
            serde_json::json!(base64::engine::general_purpose::STANDARD.encode(entry));
        inclusion.push(v);
    }
    let consistency: Vec<_> = [
        (1u64, 1000u64),
        (256, 1000),
        (257, 999),
        (500, 777),
        (1000, 1000),
    ]
    .iter()
    .map(|&(old, new)| {
        serde_json::to_value(reader.consistency_proof(old, new, cp.size).unwrap()).unwrap()
    })
    .collect();
    let vectors = serde_json::json!({
        "vkey": key,
        "checkpoint": String::from_utf8(cp.note.clone()).unwrap(),
        "inclusion": inclusion,
        "consistency": consistency,
    });
    let path = dir.parent().unwrap().join("vectors.json");
    fs::write(&path, serde_json::to_vec_pretty(&vectors).unwrap()).unwrap();
    let said = run_go_verifier(&path);
    assert!(
        said.contains(
            "checkpoint of size 1000 verified; 6 inclusion and 5 consistency proofs verified"
        ),
        "{said}"
    );

    // And Go refuses what it should: a checkpoint signed by another key.
    let mut bad = vectors.clone();
    bad["vkey"] = serde_json::json!(
        custos_ledger::NoteSigner::new(ORIGIN, SigningKey::from_bytes(&[9; 32])).verifier_key()
    );
    fs::write(&path, serde_json::to_vec_pretty(&bad).unwrap()).unwrap();
    let out = std::process::Command::new("go")
        .args([
            "run",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/go/main.go"),
        ])
        .arg(&path)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", dir.parent().unwrap().join("gocache"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "Go accepted a checkpoint under the wrong key"
    );
}

#[test]
fn a_damaged_middle_record_refuses_to_open_and_keeps_the_evidence() {
    let (_tmp, dir, key) = ledger_with(10);
    let journal = dir.join("journal");
    let mut bytes = fs::read(&journal).unwrap();
    let len = bytes.len();
    // Flip a byte inside the third record's entry (after its length and
    // tag; records are equal-sized here).
    let record = bytes.len() / 10;
    bytes[2 * record + 4 + 32 + 5] ^= 1;
    fs::write(&journal, &bytes).unwrap();
    // Verification reads the journal too, and says which record.
    let err = verify_ledger(&dir, &key, None).unwrap_err().to_string();
    assert!(
        err.contains("entry 2: the published entry") && err.contains("differs from the journal"),
        "{err}"
    );
    // Recovery that has to replay through it (no state to resume from) refuses.
    fs::remove_file(dir.join("state.json")).unwrap();
    let err = Ledger::open(config(&dir)).unwrap_err().to_string();
    assert!(
        err.contains("do not hash to the signed checkpoint's root"),
        "{err}"
    );
    assert_eq!(
        fs::read(&journal).unwrap().len(),
        len,
        "nothing was truncated"
    );
}

#[test]
fn a_zero_filled_tail_after_power_loss_is_cut() {
    let (_tmp, dir, key) = ledger_with(10);
    let mut journal = fs::OpenOptions::new()
        .append(true)
        .open(dir.join("journal"))
        .unwrap();
    std::io::Write::write_all(&mut journal, &[0u8; 4096]).unwrap();
    drop(journal);
    let ledger = Ledger::open(config(&dir)).unwrap();
    assert_eq!(ledger.append(&entry(10)).unwrap(), 10);
    ledger.close().unwrap();
    assert_eq!(verify_ledger(&dir, &key, None).unwrap().size, 11);
}

#[test]
fn edited_tiles_with_a_forged_state_are_rebuilt_from_the_journal() {
    let (_tmp, dir, key) = ledger_with(600);
    // Forge: change a full tile and point state.json's root elsewhere.
    let tile = dir.join(TileId::hashes(0, 0, 256).path());
    let mut bytes = fs::read(&tile).unwrap();
    bytes[0] ^= 1;
    fs::write(&tile, &bytes).unwrap();
    let state = fs::read_to_string(dir.join("state.json")).unwrap();
    let forged = state.replacen("\"root\":\"", "\"root\":\"00", 1);
    fs::write(dir.join("state.json"), &forged[..forged.len() - 3]).unwrap();
    assert!(verify_ledger(&dir, &key, None).is_err());
    // Recovery distrusts the state, replays the journal and rewrites every tile.
    Ledger::open(config(&dir)).unwrap().close().unwrap();
    assert_eq!(verify_ledger(&dir, &key, None).unwrap().size, 600);
}

/// A key rotation: the change is an entry signed by the old key, the
/// first checkpoint after it carries both signatures, later ones the new
/// key's; verification from the old key follows the chain, from the new
/// key passes over it, and from an unrelated key fails.
#[test]
fn a_rotated_key_is_followed_by_verification() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let old_key = config(&dir).signing_key.verifying_key();
    let old_vkey = custos_ledger::note::verifier_key_for(ORIGIN, &old_key);
    let mut ledger = Ledger::open(config(&dir)).unwrap();
    for i in 0..10 {
        ledger.append(&entry(i)).unwrap();
    }
    let new = SigningKey::from_bytes(&[7; 32]);
    let new_vkey = custos_ledger::note::verifier_key_for(ORIGIN, &new.verifying_key());
    let (index, cp) = ledger
        .rotate_key(new.clone(), 1_700_000_000_000_000, "admin")
        .unwrap();
    assert_eq!(index, 10);
    // Both keys verify the transition checkpoint.
    custos_ledger::verify_checkpoint(&cp.note, &old_vkey).unwrap();
    custos_ledger::verify_checkpoint(&cp.note, &new_vkey).unwrap();
    assert_eq!(ledger.verifier_key(), new_vkey);
    ledger.append(&entry(11)).unwrap();
    ledger.close().unwrap();
    let latest = LedgerReader::new(&dir).checkpoint_note().unwrap();
    assert!(custos_ledger::verify_checkpoint(&latest, &old_vkey).is_err());
    let report = verify_ledger(&dir, &old_vkey, None).unwrap();
    assert_eq!(
        (report.key_changes, report.signing_key.as_str()),
        (1, new_vkey.as_str())
    );
    let report = verify_ledger(&dir, &new_vkey, None).unwrap();
    assert_eq!(report.key_changes, 0);
    let stranger = custos_ledger::note::verifier_key_for(
        ORIGIN,
        &SigningKey::from_bytes(&[9; 32]).verifying_key(),
    );
    assert!(verify_ledger(&dir, &stranger, None).is_err());
    // Reopened with the new key, the ledger goes on.
    let mut cfg = config(&dir);
    cfg.signing_key = new;
    let ledger = Ledger::open(cfg).unwrap();
    ledger.append(&entry(12)).unwrap();
    ledger.close().unwrap();
    verify_ledger(&dir, &old_vkey, None).unwrap();
}

/// A rotation interrupted after the ledger recorded it (the home still
/// names the old key, the new one is offered as `next_key`): recovery
/// switches to the new key, and the chain stays whole.
#[test]
fn an_interrupted_rotation_resumes_with_the_new_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let old_vkey =
        custos_ledger::note::verifier_key_for(ORIGIN, &config(&dir).signing_key.verifying_key());
    let new = SigningKey::from_bytes(&[7; 32]);
    let mut ledger = Ledger::open(config(&dir)).unwrap();
    ledger.append(&entry(0)).unwrap();
    ledger.rotate_key(new.clone(), 1, "admin").unwrap();
    ledger.close().unwrap();
    // Reopened with the old key (the home was not updated) and the new one
    // offered: the new one is used, and so is never the old one again.
    let mut cfg = config(&dir);
    cfg.next_key = Some(new.clone());
    let ledger = Ledger::open(cfg).unwrap();
    ledger.append(&entry(1)).unwrap();
    ledger.close().unwrap();
    let report = verify_ledger(&dir, &old_vkey, None).unwrap();
    assert_eq!(report.key_changes, 1);
    // Without the new key offered, the old key cannot open it any more.
    assert!(Ledger::open(config(&dir)).is_err());
}

/// An insider who can write the journal but does not hold the ledger key
/// appends a well-formed record (length, SHA-256 leaf hash, entry): the
/// next process to open the ledger does not replay it, so the key never
/// signs it; the ledger and its verification stay as they were.
#[test]
fn a_record_appended_without_the_key_is_never_signed() {
    use std::io::Write as _;
    let (_tmp, dir, key) = ledger_with(5);
    let forged = Entry::new(
        1_700_000_000_000_000,
        "rita",
        "lookup.fetch",
        Decision::Allow,
    )
    .encode()
    .unwrap();
    let leaf = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update([0u8]);
        h.update(&forged);
        h.finalize()
    };
    let mut journal = fs::OpenOptions::new()
        .append(true)
        .open(dir.join("journal"))
        .unwrap();
    journal
        .write_all(&(forged.len() as u32).to_be_bytes())
        .unwrap();
    journal.write_all(&leaf).unwrap();
    journal.write_all(&forged).unwrap();
    drop(journal);
    let ledger = Ledger::open(config(&dir)).unwrap();
    assert_eq!(
        ledger.append(&entry(5)).unwrap(),
        5,
        "the forged record took a place"
    );
    ledger.close().unwrap();
    let reader = LedgerReader::new(&dir);
    let cp = reader.latest(&key).unwrap();
    assert_eq!(cp.size, 6);
    let all = reader.entries(0, cp.size).unwrap();
    assert!(all.iter().all(|(_, e)| e != &forged));
    verify_ledger(&dir, &key, None).unwrap();
}

/// An insider who stages a key of their own as the "next" key and re-signs
/// the published checkpoint with it gains nothing: without a key-change
/// entry signed by the key in force, recovery keeps that key, and the
/// re-signed checkpoint does not verify with it, so the ledger does not open.
#[test]
fn a_staged_key_without_a_recorded_change_is_refused() {
    let (_tmp, dir, _key) = ledger_with(3);
    let evil = SigningKey::from_bytes(&[66; 32]);
    let cp = LedgerReader::new(&dir)
        .latest(&custos_ledger::note::verifier_key_for(
            ORIGIN,
            &config(&dir).signing_key.verifying_key(),
        ))
        .unwrap();
    let forged = custos_ledger::NoteSigner::new(ORIGIN, evil.clone())
        .sign(cp.size, cp.root)
        .unwrap();
    fs::write(dir.join("checkpoint"), forged).unwrap();
    let mut cfg = config(&dir);
    cfg.next_key = Some(evil);
    let err = Ledger::open(cfg).unwrap_err().to_string();
    assert!(err.contains("does not verify"), "{err}");
}
