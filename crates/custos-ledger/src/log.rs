//! The durable, group-committed append path and its crash recovery.
//!
//! ```text
//! LEDGER/
//!   lock                   flock held by the one writer process
//!   journal                append-only: [u32 len][32-byte tag][entry] per entry
//!   state.json             {size, journal_offset, root} of the last checkpoint
//!   checkpoint             the latest signed checkpoint (C2SP)
//!   tile/<L>/<N>[.p/<W>]   hash tiles (C2SP tlog-tiles)
//!   tile/entries/<N>[...]  entry bundles
//! ```
//!
//! A record's tag is HMAC-SHA-256 over its index, the root of the tree it
//! extends and its leaf hash, under a key derived from the ledger signing
//! key: whoever can write the journal file
//! but does not hold that key (an administrator with the home) cannot add a
//! record that the next process would replay and sign. A final record whose
//! tag fails is cut like a torn one (and said so); one in the middle stops
//! the ledger from opening. Records a signed checkpoint covers are checked
//! against its root instead.
//!
//! An append is acknowledged once its journal record is fsynced; a single
//! writer thread drains every waiting append into one write and one fsync
//! (group commit). Tiles and bundles are derived from the journal: full ones
//! are written as they complete, partial ones and the checkpoint at least
//! once a second while entries arrive, in the order tiles → fsync →
//! checkpoint → state. Recovery starts from `state.json` (or from nothing),
//! checks the tiles against the signed root, replays the journal beyond it,
//! cuts a torn final record (never acknowledged), and refuses to open when
//! the journal holds fewer entries than the checkpoint: an acknowledged entry
//! is never silently dropped.
//!
//! Memory is bounded: the writer keeps the right edge of the tree (a compact
//! range and one partial tile per level), never the whole tree.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use tlog_tiles::{Hash, record_hash};

use crate::edge::TreeEdge;
use crate::entry::{Entry, EntryError, MAX_ENTRY_BYTES};
use crate::note::{CheckpointError, NoteSigner, VerifiedCheckpoint, verify_checkpoint};
use crate::published::{DirFiles, PublishedFiles};
use crate::tiles::{TILE_WIDTH, TileId, bundle_push};
use crate::{HASH_SIZE, LedgerError};

const JOURNAL: &str = "journal";
const STATE: &str = "state.json";
/// File name of the latest signed checkpoint.
pub const CHECKPOINT: &str = "checkpoint";
const LOCK: &str = "lock";
/// Most entries folded into one group commit.
const MAX_GROUP: usize = 65_536;
/// Most completed tiles held in memory before they are written (≈ 40 MiB of
/// bundles and hashes, bounding memory whatever the append rate).
const MAX_COMPLETED: usize = 1024;

/// How to open a ledger.
#[derive(Debug)]
pub struct LedgerConfig {
    /// The ledger directory (created if missing).
    pub dir: PathBuf,
    /// Checkpoint origin; also the signing key's name.
    pub origin: String,
    /// The instance's Ed25519 key.
    pub signing_key: SigningKey,
    /// The key an interrupted rotation was moving to, if any: recovery
    /// switches to it if the ledger already recorded the change.
    pub next_key: Option<SigningKey>,
    /// Longest time between an append and the checkpoint that covers it.
    pub checkpoint_interval: Duration,
    /// Faults to inject (tests of failing closed); none by default.
    pub faults: FaultPlan,
}

/// Faults a ledger injects, so that tests can show what every action does
/// when its entry cannot be made durable. Injected faults only ever make
/// the ledger refuse: they cannot make it acknowledge anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// The journal commit (1 = the first after opening) that fails as if
    /// its write or fsync had failed; every later append is then refused.
    pub fail_commit: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct State {
    size: u64,
    journal_offset: u64,
    #[serde(with = "crate::hex32")]
    root: [u8; 32],
}

type Reply<T> = SyncSender<Result<T, LedgerError>>;
/// One caller's entries and where to send their index range.
type AppendGroup = (Vec<Vec<u8>>, Reply<Range<u64>>);

enum Command {
    Append {
        entries: Vec<Vec<u8>>,
        reply: Reply<Range<u64>>,
    },
    Checkpoint {
        reply: Reply<VerifiedCheckpoint>,
    },
    RotateKey {
        key: Box<SigningKey>,
        time_micros: i64,
        actor: String,
        reply: Reply<(u64, VerifiedCheckpoint)>,
    },
}

/// An open ledger: the one writer of its directory.
#[derive(Debug)]
pub struct Ledger {
    tx: Option<SyncSender<Command>>,
    thread: Option<JoinHandle<Result<(), LedgerError>>>,
    dir: PathBuf,
    verifier_key: String,
    origin: String,
    cut_at_open: Option<u64>,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError + '_ {
    move |cause| LedgerError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename). The
/// directory is fsynced by the caller, once for many files.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LedgerError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_data().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// Writes `bytes` to `path` through a temporary file and a rename, without
/// fsync: the caller makes a batch of such files durable with one `syncfs`.
fn write_renamed(path: &Path, bytes: &[u8]) -> Result<(), LedgerError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

pub(crate) fn sync_dir(path: &Path) -> Result<(), LedgerError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io(path))
}

impl Ledger {
    /// Opens (creating if needed) the ledger in `config.dir`, recovering from
    /// any crash. Fails if another process holds it or if it is damaged.
    pub fn open(config: LedgerConfig) -> Result<Self, LedgerError> {
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock_path = dir.join(LOCK);
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        lock.try_lock()
            .map_err(|_| LedgerError::Busy(dir.clone()))?;
        let signer = NoteSigner::new(&config.origin, config.signing_key);
        let next = config.next_key.map(|k| NoteSigner::new(&config.origin, k));
        let mut writer = Writer::recover(&dir, signer, next, config.checkpoint_interval)?;
        writer.faults = config.faults;
        writer.checkpoint()?;
        let verifier_key = writer.signer.verifier_key();
        let cut_at_open = writer.cut;
        let (tx, rx) = mpsc::sync_channel::<Command>(1024);
        let thread = std::thread::Builder::new()
            .name("custos-ledger".into())
            .spawn(move || {
                let _lock = lock;
                writer.run(rx)
            })
            .map_err(io(&dir))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            dir,
            verifier_key,
            origin: config.origin,
            cut_at_open,
        })
    }

    /// Bytes of journal tail that recovery cut when this ledger opened:
    /// a final record that was torn by a crash, or written without the
    /// ledger key. The broker records it in the ledger.
    pub fn cut_at_open(&self) -> Option<u64> {
        self.cut_at_open
    }

    /// The ledger directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The checkpoint verifier key (`name+hash+base64`).
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// The checkpoint origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn send<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, LedgerError> {
        let (reply, rx) = mpsc::sync_channel(1);
        let tx = self.tx.as_ref().ok_or(LedgerError::Closed)?;
        tx.send(make(reply)).map_err(|_| LedgerError::Closed)?;
        rx.recv().map_err(|_| LedgerError::Closed)?
    }

    /// Appends one entry; returns its index once it is durable.
    pub fn append(&self, entry: &Entry) -> Result<u64, LedgerError> {
        Ok(self.append_encoded(vec![entry.encode()?])?.start)
    }

    /// Appends encoded entries as one durable commit; returns their indexes.
    pub fn append_encoded(&self, entries: Vec<Vec<u8>>) -> Result<Range<u64>, LedgerError> {
        check_canonical(&entries)?;
        self.send(|reply| Command::Append { entries, reply })
    }

    /// Signs and publishes a checkpoint covering every durable entry now.
    pub fn checkpoint(&self) -> Result<VerifiedCheckpoint, LedgerError> {
        self.send(|reply| Command::Checkpoint { reply })
    }

    /// Rotates the signing key: appends a `ledger.key_change` entry whose
    /// statement the current key signs, then publishes a checkpoint signed
    /// by both keys; later checkpoints are signed by `key` alone. Returns
    /// the entry's index and that checkpoint.
    pub fn rotate_key(
        &mut self,
        key: SigningKey,
        time_micros: i64,
        actor: &str,
    ) -> Result<(u64, VerifiedCheckpoint), LedgerError> {
        let vkey = NoteSigner::new(&self.origin, key.clone()).verifier_key();
        let done = self.send(|reply| Command::RotateKey {
            key: Box::new(key),
            time_micros,
            actor: actor.to_owned(),
            reply,
        })?;
        self.verifier_key = vkey;
        Ok(done)
    }

    /// Publishes a final checkpoint and stops the writer.
    pub fn close(mut self) -> Result<(), LedgerError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), LedgerError> {
        drop(self.tx.take());
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| LedgerError::Closed)?,
            None => Ok(()),
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "ledger did not close cleanly");
        }
    }
}

/// The writer thread's state: the right edge of the tree and the journal.
struct Writer {
    dir: PathBuf,
    signer: NoteSigner,
    interval: Duration,
    journal: File,
    journal_len: u64,
    /// The tree's right edge, and the tiles completed since the last checkpoint.
    tree: TreeEdge,
    /// Partial tiles of the last checkpoint (removed after the next one).
    published_partials: Vec<PathBuf>,
    checkpointed: u64,
    failed: bool,
    /// Journal commits since opening, and the faults to inject.
    commits: u64,
    faults: FaultPlan,
    /// The key being rotated away from: it also signs the next checkpoint.
    retiring: Option<NoteSigner>,
    /// The key an interrupted rotation was moving to (recovery only).
    next: Option<NoteSigner>,
    /// Bytes of journal tail cut at recovery (torn, or not written with
    /// the ledger key), if any.
    cut: Option<u64>,
}

impl Writer {
    fn recover(
        dir: &Path,
        signer: NoteSigner,
        next: Option<NoteSigner>,
        interval: Duration,
    ) -> Result<Self, LedgerError> {
        // A rotation that reached the published checkpoint: the new key
        // signs from here on — but only if the ledger's last published
        // entry is the change to it, signed by the key in force. A key
        // merely staged (and a checkpoint re-signed with it) is not enough.
        let (signer, next) = match (fs::read(dir.join(CHECKPOINT)), next) {
            (Ok(note), Some(next))
                if verify_checkpoint(&note, &next.verifier_key()).is_ok()
                    && last_entry_changes_to(dir, &note, &signer, &next) =>
            {
                (next, None)
            }
            (_, next) => (signer, next),
        };
        let journal_path = dir.join(JOURNAL);
        let mut journal = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&journal_path)
            .map_err(io(&journal_path))?;
        let journal_len = journal.metadata().map_err(io(&journal_path))?.len();
        let checkpoint = match fs::read(dir.join(CHECKPOINT)) {
            Ok(note) => Some(
                verify_checkpoint(&note, &signer.verifier_key()).map_err(|e| {
                    LedgerError::Damaged(format!("the published checkpoint does not verify: {e}"))
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&dir.join(CHECKPOINT))(e)),
        };
        let state: Option<State> = fs::read(dir.join(STATE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut writer = Self {
            dir: dir.to_owned(),
            signer,
            interval,
            journal_len: 0,
            journal: journal.try_clone().map_err(io(&journal_path))?,
            tree: TreeEdge::new(),
            published_partials: Vec::new(),
            checkpointed: u64::MAX,
            failed: false,
            commits: 0,
            faults: FaultPlan::default(),
            retiring: None,
            next,
            cut: None,
        };
        // Resume from the last state whose tiles check out and that agrees
        // with the signed checkpoint; else rebuild from the journal alone.
        // (state.json is unsigned: with no checkpoint to check it against,
        // or ahead of it, it is not trusted.)
        let trusted = |s: &State| match &checkpoint {
            Some(cp) => s.size < cp.size || (s.size == cp.size && s.root == cp.root),
            None => false,
        };
        let start = state
            .filter(|s| s.journal_offset <= journal_len && trusted(s))
            .and_then(|s| {
                let files = std::sync::Arc::new(DirFiles::new(dir));
                writer.tree = TreeEdge::load(files, s.size, s.root).ok()?;
                Some(s)
            });
        let start = match start {
            Some(s) => s,
            None => {
                writer.tree = TreeEdge::new();
                State {
                    size: 0,
                    journal_offset: 0,
                    root: tlog_tiles::EMPTY_HASH.0,
                }
            }
        };
        let torn = writer.replay(
            &mut journal,
            &journal_path,
            start,
            journal_len,
            checkpoint.as_ref(),
        )?;
        let replayed = writer.tree.size();
        if let Some(cp) = &checkpoint
            && replayed < cp.size
        {
            return Err(LedgerError::Damaged(format!(
                "the journal holds {replayed} entries but the signed checkpoint covers {}: acknowledged entries are missing",
                cp.size
            )));
        }
        // Every check passed: only now cut the torn, unacknowledged tail.
        if let Some(at) = torn {
            writer.cut_torn(&journal_path, at, journal_len)?;
            if at < journal_len {
                writer.cut = Some(journal_len - at);
            }
        }
        writer.journal_len = writer.journal.metadata().map_err(io(&journal_path))?.len();
        Ok(writer)
    }

    /// Replays journal records from `start`. Returns where a torn final
    /// record begins, if there is one; truncating is left to the caller, after
    /// every check has passed (so a refusal destroys no evidence).
    fn replay(
        &mut self,
        journal: &mut File,
        path: &Path,
        start: State,
        len: u64,
        checkpoint: Option<&VerifiedCheckpoint>,
    ) -> Result<Option<u64>, LedgerError> {
        journal
            .seek(SeekFrom::Start(start.journal_offset))
            .map_err(io(path))?;
        let mut reader = BufReader::with_capacity(1 << 20, &*journal);
        let mut offset = start.journal_offset;
        let mut entry = Vec::new();
        let torn = loop {
            let record_start = offset;
            let record = match read_record(&mut reader, &mut entry) {
                Ok(Some(record)) => record,
                // EOF inside a header: the final record is torn.
                Ok(None) => break (record_start < len).then_some(record_start),
                Err(e) => return Err(io(path)(e)),
            };
            let end = record_start + (4 + HASH_SIZE) as u64 + record.len as u64;
            if end > len {
                // The final record runs past the end: torn, never acknowledged.
                break Some(record_start);
            }
            if record.len > MAX_ENTRY_BYTES {
                return Err(LedgerError::Damaged(format!(
                    "journal record {} (byte {record_start}) has an impossible length",
                    self.tree.size()
                )));
            }
            reader.read_exact(&mut entry).map_err(io(path))?;
            let leaf = record_hash(&entry);
            let index = self.tree.size();
            // Records under the signed checkpoint are held to its root (at
            // the end); those beyond it only their tag vouches for.
            let covered = checkpoint.is_some_and(|cp| index < cp.size);
            let authentic = covered
                || journal_tag(&self.signer.journal_key(), index, &self.tree.root(), &leaf)
                    == record.tag;
            if !authentic {
                // Torn only if nothing acknowledged can follow: the record is
                // the last one, or all that follows is zeros (a preallocated
                // tail after power loss). Anything else is damage.
                if end == len || zeros_from(path, record_start, len)? {
                    tracing::warn!(
                        index,
                        "the journal's final record is torn or was not written by this ledger's key: cut"
                    );
                    break Some(record_start);
                }
                return Err(LedgerError::Damaged(format!(
                    "journal record {index} (byte {record_start}) is not authentic: it was altered, or written without the ledger key"
                )));
            }
            self.tree.push(leaf, &entry);
            self.resume_rotation(&entry);
            if self.tree.completed.len() >= MAX_COMPLETED {
                self.write_completed()?;
            }
            offset = end;
            if let Some(cp) = checkpoint
                && self.tree.size() == cp.size
                && self.tree.root().0 != cp.root
            {
                return Err(LedgerError::Damaged(format!(
                    "the journal's first {} entries do not hash to the signed checkpoint's root",
                    cp.size
                )));
            }
        };
        if start.size > 0 || self.tree.size() > 0 {
            tracing::info!(from = start.size, to = self.tree.size(), "ledger recovered");
        }
        Ok(torn)
    }

    fn cut_torn(&mut self, path: &Path, at: u64, len: u64) -> Result<(), LedgerError> {
        if at < len {
            tracing::warn!(
                bytes = len - at,
                "cutting a torn, unacknowledged journal tail"
            );
            self.journal.set_len(at).map_err(io(path))?;
            self.journal.sync_all().map_err(io(path))?;
        }
        Ok(())
    }

    /// Writes the tiles completed since the last call. Done at checkpoints
    /// (and every few thousand tiles), not per commit: on ext4 every file
    /// created before a journal fsync is flushed by that fsync, so tile
    /// writes between commits would slow every acknowledgement down. The
    /// checkpoint's syncfs makes them durable before any checkpoint covers them.
    fn write_completed(&mut self) -> Result<(), LedgerError> {
        let mut written = 0;
        let result = self.tree.completed.iter().try_for_each(|(id, bytes)| {
            write_renamed(&self.dir.join(id.path()), bytes)?;
            written += 1;
            Ok(())
        });
        // Only what was written leaves the queue; the rest is retried.
        self.tree.completed.drain(..written);
        result
    }

    fn run(mut self, rx: Receiver<Command>) -> Result<(), LedgerError> {
        let mut due: Option<Instant> = None;
        loop {
            let wait = due.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            let first = match rx.recv_timeout(wait) {
                Ok(cmd) => cmd,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.checkpoint() {
                        tracing::error!(error = %e, "periodic checkpoint failed");
                    }
                    due = None;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Group commit: everything already waiting shares this fsync.
            let mut appends: Vec<AppendGroup> = Vec::new();
            let mut checkpoints: Vec<Reply<VerifiedCheckpoint>> = Vec::new();
            let mut rotations = Vec::new();
            let mut pending = 0usize;
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append { entries, reply } => {
                        pending += entries.len();
                        appends.push((entries, reply));
                    }
                    Command::Checkpoint { reply } => checkpoints.push(reply),
                    Command::RotateKey {
                        key,
                        time_micros,
                        actor,
                        reply,
                    } => rotations.push((key, time_micros, actor, reply)),
                }
                if pending < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                let result = self.commit(&appends);
                for ((_, reply), r) in appends.into_iter().zip(result) {
                    let _ = reply.send(r);
                }
                if due.is_none() {
                    due = Some(Instant::now() + self.interval);
                }
            }
            if due.is_some_and(|d| Instant::now() >= d) {
                if let Err(e) = self.checkpoint() {
                    tracing::error!(error = %e, "periodic checkpoint failed");
                }
                due = None;
            }
            for (key, time_micros, actor, reply) in rotations {
                let _ = reply.send(self.rotate(*key, time_micros, &actor));
            }
            for reply in checkpoints {
                let _ = reply.send(self.checkpoint());
            }
        }
        self.checkpoint().map(|_| ())
    }

    /// Writes all groups' entries in one write and one fsync.
    fn commit(&mut self, groups: &[AppendGroup]) -> Vec<Result<Range<u64>, LedgerError>> {
        if self.failed {
            return groups
                .iter()
                .map(|_| Err(LedgerError::Unavailable))
                .collect();
        }
        let mut buf = Vec::new();
        let mut leaves = Vec::new();
        let key = self.signer.journal_key();
        // Each tag binds the tree the record extends, so a record made in a
        // copy of the ledger that has since diverged does not fit this one.
        let mut tree = self.tree.range.clone();
        for (entries, _) in groups {
            for e in entries {
                let leaf = record_hash(e);
                buf.extend_from_slice(&(e.len() as u32).to_be_bytes());
                buf.extend_from_slice(&journal_tag(&key, tree.size(), &tree.root(), &leaf));
                buf.extend_from_slice(e);
                leaves.push(leaf);
                tree.push(leaf);
            }
        }
        let path = self.dir.join(JOURNAL);
        self.commits += 1;
        let written = if self.faults.fail_commit == Some(self.commits) {
            Err(std::io::Error::other(
                "injected fault: the journal fsync failed",
            ))
        } else {
            self.journal
                .write_all(&buf)
                .and_then(|()| self.journal.sync_data())
        };
        if let Err(e) = written {
            // INVARIANT: after a failed write or fsync nothing more is
            // acknowledged; the next open recovers what is durable.
            self.failed = true;
            tracing::error!(error = %e, "ledger journal write failed; refusing further appends");
            return groups
                .iter()
                .map(|_| Err(io(&path)(std::io::Error::new(e.kind(), e.to_string()))))
                .collect();
        }
        self.journal_len += buf.len() as u64;
        let mut results = Vec::with_capacity(groups.len());
        let mut leaf_iter = leaves.into_iter();
        for (entries, _) in groups {
            let start = self.tree.size();
            for (e, leaf) in entries.iter().zip(leaf_iter.by_ref()) {
                self.tree.push(leaf, e);
            }
            results.push(Ok(start..self.tree.size()));
        }
        if self.tree.completed.len() >= MAX_COMPLETED
            && let Err(e) = self.write_completed()
        {
            // The entries are durable in the journal; the tiles are rewritten
            // from it on recovery. Stop acknowledging until then.
            self.failed = true;
            tracing::error!(error = %e, "writing ledger tiles failed; refusing further appends");
        }
        results
    }

    /// Appends the key-change entry (signed by the current key), switches
    /// to `key`, and publishes a checkpoint signed by both.
    fn rotate(
        &mut self,
        key: SigningKey,
        time_micros: i64,
        actor: &str,
    ) -> Result<(u64, VerifiedCheckpoint), LedgerError> {
        let new = NoteSigner::new(self.signer.origin(), key);
        let entry = crate::key_change::entry(&self.signer, &new, time_micros, actor).encode()?;
        let (tx, _rx) = mpsc::sync_channel(1);
        let index = self
            .commit(&[(vec![entry], tx)])
            .pop()
            .ok_or(LedgerError::Unavailable)??
            .start;
        let old = std::mem::replace(&mut self.signer, new);
        self.retiring = Some(old);
        Ok((index, self.checkpoint()?))
    }

    /// During recovery: a replayed key-change entry to the key an
    /// interrupted rotation was moving to completes that rotation.
    fn resume_rotation(&mut self, encoded: &[u8]) {
        let Some(next) = &self.next else { return };
        let Ok(entry) = Entry::decode(encoded) else {
            return;
        };
        if let Ok(Some(new)) = crate::key_change::follow(&entry, &self.signer.verifier_key())
            && new == next.verifier_key()
            && let Some(next) = self.next.take()
        {
            let old = std::mem::replace(&mut self.signer, next);
            self.retiring = Some(old);
        }
    }

    /// Publishes partial tiles and a signed checkpoint for the current size.
    fn checkpoint(&mut self) -> Result<VerifiedCheckpoint, LedgerError> {
        if self.failed {
            // What is on disk may be incomplete: sign nothing until a restart
            // has recovered from the journal.
            return Err(LedgerError::Unavailable);
        }
        let size = self.tree.size();
        let root = self.tree.root().0;
        if self.checkpointed == size
            && let Ok(note) = fs::read(self.dir.join(CHECKPOINT))
        {
            return verify_checkpoint(&note, &self.signer.verifier_key()).map_err(damaged);
        }
        self.write_completed()?;
        let mut partials = Vec::new();
        for (id, bytes) in self.tree.partials()? {
            let path = self.dir.join(id.path());
            write_renamed(&path, &bytes)?;
            partials.push(path);
        }
        // One syncfs makes every tile written since the last checkpoint (full
        // and partial, data and renames) durable before the checkpoint that
        // covers them: far cheaper than an fsync per file.
        let dir_handle = File::open(&self.dir).map_err(io(&self.dir))?;
        rustix::fs::syncfs(&dir_handle).map_err(|e| io(&self.dir)(e.into()))?;
        let note = match &self.retiring {
            Some(old) => self.signer.sign_with(old, size, root),
            None => self.signer.sign(size, root),
        }
        .map_err(damaged)?;
        write_atomic(&self.dir.join(CHECKPOINT), &note)?;
        self.retiring = None;
        let state = State {
            size,
            journal_offset: self.journal_len,
            root,
        };
        let state_bytes =
            serde_json::to_vec(&state).map_err(|e| LedgerError::Damaged(e.to_string()))?;
        write_atomic(&self.dir.join(STATE), &state_bytes)?;
        sync_dir(&self.dir)?;
        // Older partial tiles are superseded; readers fall back to wider ones.
        for old in std::mem::replace(&mut self.published_partials, partials.clone()) {
            if !partials.contains(&old) {
                let _ = fs::remove_file(&old);
            }
        }
        self.checkpointed = size;
        Ok(VerifiedCheckpoint {
            origin: self.signer.origin().to_owned(),
            size,
            root,
            note,
        })
    }
}

/// The header of one journal record.
pub(crate) struct RecordHeader {
    /// Entry length in bytes.
    pub len: usize,
    /// The record's tag (HMAC of its index and leaf hash).
    pub tag: [u8; HASH_SIZE],
}

/// Whether the last entry under the published checkpoint `note` is a key
/// change from `old` to `new` that `old` signed.
fn last_entry_changes_to(dir: &Path, note: &[u8], old: &NoteSigner, new: &NoteSigner) -> bool {
    let Ok(cp) = verify_checkpoint(note, &new.verifier_key()) else {
        return false;
    };
    if cp.size == 0 {
        return false;
    }
    let Ok(entries) = crate::read::LedgerReader::new(dir).entries(cp.size - 1, cp.size) else {
        return false;
    };
    entries.first().is_some_and(|(_, bytes)| {
        Entry::decode(bytes).is_ok_and(|e| {
            crate::key_change::follow(&e, &old.verifier_key())
                .ok()
                .flatten()
                == Some(new.verifier_key())
        })
    })
}

/// Lets only canonical entries enter: anything else would fail `verify` forever.
pub(crate) fn check_canonical(entries: &[Vec<u8>]) -> Result<(), LedgerError> {
    for e in entries {
        if e.len() > MAX_ENTRY_BYTES {
            return Err(LedgerError::Entry(EntryError::TooLarge));
        }
        Entry::decode(e)?;
    }
    Ok(())
}

/// A journal record's tag: HMAC-SHA-256 under the key derived from the
/// ledger signing key, over the record's index, the root of the tree it
/// extends, and its leaf hash.
fn journal_tag(key: &[u8; 32], index: u64, root_before: &Hash, leaf: &Hash) -> [u8; HASH_SIZE] {
    use hmac::Mac as _;
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return [0; HASH_SIZE];
    };
    mac.update(b"custos journal record v1\n");
    mac.update(&index.to_be_bytes());
    mac.update(&root_before.0);
    mac.update(&leaf.0);
    mac.finalize().into_bytes().into()
}

/// Reads one journal record header and sizes `entry` for its body (read by
/// the caller); `None` at the end of the journal or inside a torn header.
pub(crate) fn read_record(
    reader: &mut impl Read,
    entry: &mut Vec<u8>,
) -> std::io::Result<Option<RecordHeader>> {
    let mut header = [0u8; 4 + HASH_SIZE];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let mut tag = [0u8; HASH_SIZE];
    tag.copy_from_slice(&header[4..]);
    // Never allocate more than an entry can be, whatever the length says.
    entry.resize(len.min(MAX_ENTRY_BYTES), 0);
    Ok(Some(RecordHeader { len, tag }))
}

/// Whether every byte of `path` from `from` to `len` is zero.
fn zeros_from(path: &Path, from: u64, len: u64) -> Result<bool, LedgerError> {
    let mut file = File::open(path).map_err(io(path))?;
    file.seek(SeekFrom::Start(from)).map_err(io(path))?;
    let mut reader = BufReader::new(file.take(len - from));
    let mut buf = [0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

fn damaged(e: CheckpointError) -> LedgerError {
    LedgerError::Damaged(e.to_string())
}

/// Reads entry bundle `id`, falling back to the full bundle or a wider
/// partial one (and truncating) when the exact partial was superseded.
pub fn read_bundle(files: &dyn PublishedFiles, id: TileId) -> Result<Vec<u8>, LedgerError> {
    let unreadable = |path: String| {
        move |cause: std::io::Error| LedgerError::Io {
            path: PathBuf::from(path),
            cause,
        }
    };
    let exact = id.path();
    if let Some(bytes) = files.read(&exact).map_err(unreadable(exact.clone()))? {
        return Ok(bytes);
    }
    let mut candidates = vec![TileId::entries(id.index, TILE_WIDTH)];
    let mut widths: Vec<u64> = files
        .partial_widths(&id.partial_dir())
        .map_err(unreadable(id.partial_dir()))?
        .into_iter()
        .filter(|w| *w > id.width && *w < TILE_WIDTH)
        .collect();
    widths.sort_unstable();
    candidates.extend(widths.into_iter().map(|w| TileId::entries(id.index, w)));
    for candidate in candidates {
        let path = candidate.path();
        if let Some(bytes) = files.read(&path).map_err(unreadable(path.clone()))? {
            let mut out = Vec::new();
            let mut rest = &bytes[..];
            for _ in 0..id.width {
                let Some((len, tail)) = rest.split_at_checked(2) else {
                    break;
                };
                let n = usize::from(u16::from_be_bytes([len[0], len[1]]));
                let Some((entry, tail)) = tail.split_at_checked(n) else {
                    break;
                };
                bundle_push(&mut out, entry);
                rest = tail;
            }
            return Ok(out);
        }
    }
    Err(LedgerError::Damaged(format!("{} is missing", id.path())))
}
