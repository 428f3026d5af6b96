//! A ledger written by several servers at once: every replica appends to
//! one journal that a database sequences ([`SharedJournal`]), and one
//! replica at a time, the *integrator*, holding a lease in that database,
//! turns the journal into tiles, entry bundles and signed checkpoints in
//! shared [`PublishedFiles`] (object storage). The published layout is the
//! same C2SP tlog-tiles as a local ledger's.
//!
//! ```text
//! replica ─append─▶ journal (database) ◀─read─ integrator ─publish─▶ files
//!   (acknowledged once the database committed)      (lease holder)
//! ```
//!
//! - **Fail closed.** An append is acknowledged only after the database
//!   committed it; no acknowledgement, no release.
//! - **Sealed records.** Each record carries a tag, an HMAC under a key
//!   derived from the ledger signing key, over its index, the tag of the
//!   record before it and its leaf hash: a chain. Whoever administers the
//!   database but does not hold the key cannot add, change or reorder a
//!   record without the integrator refusing to publish past it. An
//!   appender also checks the last record before it chains onto it.
//! - **One integrator.** The lease lives in the database, with the
//!   database's clock; a holder renews it on every round, and a replica
//!   takes it over once it has expired (its holder died or stalled). A
//!   new integrator starts from the published checkpoint, whose signature
//!   it checks, and the tiles under it, checked against its root. Before
//!   each checkpoint it renews the lease and refuses to replace a newer
//!   published checkpoint. Integrators derive the same tree from the same
//!   journal, so overlapping holders publish the same tiles; at worst a
//!   stalled one briefly republishes an older checkpoint, which the next
//!   round replaces.
//! - **Published before acknowledged.** The journal is only as safe as
//!   the database: its administrator could cut records off its end that no
//!   checkpoint covers yet, and the chain would still hold. So an append is
//!   acknowledged (and the broker releases) only once a signed checkpoint
//!   in the published files covers it: from then on, a record removed from
//!   the journal is a record missing under a signed checkpoint, which
//!   stops appends ("acknowledged records were removed") and integration
//!   (the published leaf is checked against the journal).
//! - **No checkpoint goes backwards.** The checkpoint is replaced with a
//!   conditional write (S3 `If-Match` on the version read), so an
//!   integrator that stalled past its lease cannot put an older checkpoint
//!   over a newer one.
//! - **Replicas' checkpoints.** [`SharedLedger::checkpoint`] on any replica
//!   waits until a published checkpoint covers every record committed when
//!   it was called.
//!
//! Signing-key rotation is not offered here: it needs every replica to
//! switch keys at one index, which a single-writer ledger does alone.

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tlog_tiles::{HashReader as _, record_hash};

use crate::edge::TreeEdge;
use crate::entry::Entry;
use crate::log::{CHECKPOINT, check_canonical};
use crate::merkle::{TileFiles, TreeReader};
use crate::note::{NoteSigner, VerifiedCheckpoint, verify_checkpoint};
use crate::published::PublishedFiles;
use crate::read::{LedgerReader, leaf_hash_hex, verify_inclusion};
use crate::{HASH_SIZE, LedgerError};

/// One record of a shared journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    /// Its index in the ledger.
    pub index: u64,
    /// The canonical entry bytes.
    pub entry: Vec<u8>,
    /// Its seal (see [`Sealer`]).
    pub tag: [u8; HASH_SIZE],
}

/// Seals journal records: an HMAC-SHA-256 under a key derived from the
/// ledger signing key, over the index, the previous record's tag (zeros
/// for the first) and the leaf hash.
#[derive(Clone)]
pub struct Sealer {
    key: [u8; 32],
}

impl Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// The sealer of the ledger signed by `signer`.
    pub fn new(signer: &NoteSigner) -> Self {
        Self {
            key: signer.journal_key(),
        }
    }

    /// The tag of the record at `index` holding `entry`, after `previous`.
    pub fn seal(&self, index: u64, previous: &[u8; HASH_SIZE], entry: &[u8]) -> [u8; HASH_SIZE] {
        use hmac::Mac as _;
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key) else {
            return [0; HASH_SIZE];
        };
        mac.update(b"custos shared journal record v1\n");
        mac.update(&index.to_be_bytes());
        mac.update(previous);
        mac.update(&record_hash(entry).0);
        mac.finalize().into_bytes().into()
    }

    /// Whether `record` follows a record tagged `previous`, made with this key.
    pub fn check(&self, record: &JournalRecord, previous: &[u8; HASH_SIZE]) -> bool {
        use subtle::ConstantTimeEq as _;
        self.seal(record.index, previous, &record.entry)
            .ct_eq(&record.tag)
            .into()
    }
}

/// A journal every replica appends to, sequenced durably by a database.
pub trait SharedJournal: Debug + Send + Sync {
    /// Appends `entries` after the last record in one durable commit,
    /// sealing each with `sealer`, and returns their indexes. Refuses to
    /// chain onto a last record that `sealer` did not seal, and refuses
    /// when the journal holds fewer than `min_start` records (a published
    /// checkpoint covers that many: records were removed).
    fn append(
        &self,
        entries: &[Vec<u8>],
        sealer: &Sealer,
        min_start: u64,
    ) -> Result<Range<u64>, LedgerError>;
    /// Up to `limit` records from index `from`, in order.
    fn read(&self, from: u64, limit: usize) -> Result<Vec<JournalRecord>, LedgerError>;
    /// Number of records committed.
    fn size(&self) -> Result<u64, LedgerError>;
    /// Takes or renews the integrator lease for `holder` for `ttl` (on the
    /// database's clock); whether `holder` holds it now.
    fn hold_integrator(&self, holder: &str, ttl: Duration) -> Result<bool, LedgerError>;
    /// Gives the lease up if `holder` holds it, so another replica takes
    /// it at once.
    fn release_integrator(&self, holder: &str) -> Result<(), LedgerError>;
}

/// How one replica opens the shared ledger.
#[derive(Debug)]
pub struct SharedLedgerConfig {
    /// The journal in the database.
    pub journal: Arc<dyn SharedJournal>,
    /// The published files (object storage).
    pub files: Arc<dyn PublishedFiles>,
    /// Checkpoint origin; also the signing key's name.
    pub origin: String,
    /// The ledger's Ed25519 key (every replica holds it: any may integrate).
    pub signing_key: SigningKey,
    /// Longest time between an append and the checkpoint that covers it,
    /// while an integrator is alive.
    pub checkpoint_interval: Duration,
    /// How long an integrator's lease lasts without renewal: how long the
    /// ledger goes without checkpoints after its integrator dies.
    pub lease_ttl: Duration,
    /// This replica's name in the lease (unique per process).
    pub holder: String,
}

/// Most records an integrator reads from the journal at once.
const READ_BATCH: usize = 4096;
/// Most entries folded into one journal commit.
const MAX_GROUP: usize = 4096;

type Reply<T> = SyncSender<Result<T, LedgerError>>;

struct Append {
    entries: Vec<Vec<u8>>,
    reply: Reply<Range<u64>>,
}

/// One replica's handle on the shared ledger: appends through the
/// database, and a background integrator that publishes whenever this
/// replica holds the lease.
#[derive(Debug)]
pub struct SharedLedger {
    tx: Option<SyncSender<Append>>,
    appender: Option<JoinHandle<()>>,
    integrator: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Asks this replica's integrator to publish at once (if it holds the lease).
    urgent: Arc<AtomicBool>,
    /// The size of the newest checkpoint seen published.
    published: Arc<Published>,
    journal: Arc<dyn SharedJournal>,
    files: Arc<dyn PublishedFiles>,
    /// Proves appended entries published (its tile cache kept between
    /// appends: a tile of a given width never changes).
    reader: LedgerReader,
    verifier_key: String,
    origin: String,
    /// How long [`Self::checkpoint`] waits for a covering checkpoint.
    patience: Duration,
}

impl SharedLedger {
    /// Joins the shared ledger as one replica. Nothing is read or written
    /// until the first append or integration round.
    pub fn open(config: SharedLedgerConfig) -> Result<Self, LedgerError> {
        let signer = NoteSigner::new(&config.origin, config.signing_key);
        let verifier_key = signer.verifier_key();
        let sealer = Sealer::new(&signer);
        let stop = Arc::new(AtomicBool::new(false));
        let urgent = Arc::new(AtomicBool::new(false));
        let published = Arc::new(Published::default());
        let (tx, rx) = mpsc::sync_channel::<Append>(1024);
        let journal = Arc::clone(&config.journal);
        let appender = {
            let sealer = sealer.clone();
            let published = Arc::clone(&published);
            std::thread::Builder::new()
                .name("custos-ledger-append".into())
                .spawn(move || append_loop(&*journal, &sealer, &published, rx))
                .map_err(|e| LedgerError::Journal(format!("cannot start: {e}")))?
        };
        let integrator = Integrator {
            journal: Arc::clone(&config.journal),
            files: Arc::clone(&config.files),
            signer,
            sealer,
            interval: config.checkpoint_interval,
            ttl: config.lease_ttl,
            holder: config.holder,
            stop: Arc::clone(&stop),
            urgent: Arc::clone(&urgent),
            published: Arc::clone(&published),
        };
        let integrator = std::thread::Builder::new()
            .name("custos-ledger-integrate".into())
            .spawn(move || integrator.run())
            .map_err(|e| LedgerError::Journal(format!("cannot start: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            appender: Some(appender),
            integrator: Some(integrator),
            stop,
            urgent,
            published,
            journal: config.journal,
            reader: LedgerReader::over(Arc::clone(&config.files)),
            files: config.files,
            verifier_key,
            origin: config.origin,
            patience: config.lease_ttl * 3 + config.checkpoint_interval * 4,
        })
    }

    /// The checkpoint verifier key (`name+hash+base64`).
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// The checkpoint origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The published files.
    pub fn files(&self) -> &Arc<dyn PublishedFiles> {
        &self.files
    }

    /// Appends one entry; returns its index once the database committed it
    /// and a published checkpoint covers it.
    pub fn append(&self, entry: &Entry) -> Result<u64, LedgerError> {
        Ok(self.append_encoded(vec![entry.encode()?])?.start)
    }

    /// Appends encoded entries as one commit; returns their indexes once
    /// the database committed them and a published checkpoint covers them.
    pub fn append_encoded(&self, entries: Vec<Vec<u8>>) -> Result<Range<u64>, LedgerError> {
        check_canonical(&entries)?;
        let leaves: Vec<String> = entries.iter().map(|e| leaf_hash_hex(e)).collect();
        let (reply, rx) = mpsc::sync_channel(1);
        let tx = self.tx.as_ref().ok_or(LedgerError::Closed)?;
        tx.send(Append { entries, reply })
            .map_err(|_| LedgerError::Closed)?;
        let range = rx.recv().map_err(|_| LedgerError::Closed)??;
        let cp = self.wait_published(range.end)?;
        self.check_published(range.clone(), &leaves, &cp)?;
        Ok(range)
    }

    /// Proves each of `leaves`, at its index from `range.start`, included
    /// in `cp`, a signed checkpoint seen published. The size alone is not
    /// enough: an insider who removed an unpublished record lets a later
    /// append take its index, and the checkpoint then covers that one
    /// instead.
    fn check_published(
        &self,
        range: Range<u64>,
        leaves: &[String],
        cp: &VerifiedCheckpoint,
    ) -> Result<(), LedgerError> {
        for (index, leaf) in range.zip(leaves) {
            let proof = self.reader.inclusion_proof(index, cp.size, cp.size)?;
            verify_inclusion(&proof)?;
            if proof.root != hex::encode(cp.root) || &proof.leaf_hash != leaf {
                tracing::error!(
                    index,
                    "the published ledger holds another entry at an index this server committed"
                );
                return Err(LedgerError::Damaged(format!(
                    "ledger entry {index} as published is not the entry this server committed: the journal was altered before it was published; nothing was released"
                )));
            }
        }
        Ok(())
    }

    /// Waits until a published checkpoint covers `size` entries, and
    /// returns the newest one seen (verified when it was seen: by its
    /// integrator as it signed it, or by this replica as it read it).
    fn wait_published(&self, size: u64) -> Result<Arc<VerifiedCheckpoint>, LedgerError> {
        self.urgent.store(true, Ordering::Release);
        self.published.wait_for(size, self.patience).ok_or_else(|| {
            LedgerError::Journal(format!(
                "entry {} is committed, but no checkpoint covering it was published within {:?} (is an integrator running, and the journal intact?): nothing was released",
                size.saturating_sub(1),
                self.patience
            ))
        })
    }

    /// Waits until a published checkpoint covers every record committed
    /// now (by any replica), and returns it.
    pub fn checkpoint(&self) -> Result<VerifiedCheckpoint, LedgerError> {
        let wanted = self.journal.size()?;
        if wanted > 0 {
            return Ok((*self.wait_published(wanted)?).clone());
        }
        self.published_checkpoint()?
            .ok_or_else(|| LedgerError::Journal("no checkpoint is published yet".into()))
    }

    /// The published checkpoint, verified, if there is one.
    fn published_checkpoint(&self) -> Result<Option<VerifiedCheckpoint>, LedgerError> {
        self.files
            .read(CHECKPOINT)
            .map_err(|e| LedgerError::Journal(format!("reading the checkpoint: {e}")))?
            .map(|note| verify_checkpoint(&note, &self.verifier_key).map_err(LedgerError::from))
            .transpose()
    }

    /// Stops appending and integrating. If this replica holds the lease,
    /// it first publishes a checkpoint covering the journal, then gives
    /// the lease up.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // The appender first (it commits what is queued), then the
        // integrator's last catch-up.
        drop(self.tx.take());
        let join = |thread: Option<JoinHandle<()>>| {
            if thread.is_some_and(|t| t.join().is_err()) {
                tracing::error!("a shared-ledger thread panicked");
            }
        };
        join(self.appender.take());
        self.stop.store(true, Ordering::Release);
        join(self.integrator.take());
    }
}

impl Drop for SharedLedger {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Group commit: every append waiting when the journal is free shares one
/// database transaction.
fn append_loop(
    journal: &dyn SharedJournal,
    sealer: &Sealer,
    published: &Published,
    rx: Receiver<Append>,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        let mut pending = group[0].entries.len();
        while pending < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => {
                    pending += next.entries.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let all: Vec<Vec<u8>> = group
            .iter()
            .flat_map(|a| a.entries.iter().cloned())
            .collect();
        match journal.append(&all, sealer, published.size()) {
            Ok(range) => {
                let mut start = range.start;
                for a in group {
                    let end = start + a.entries.len() as u64;
                    let _ = a.reply.send(Ok(start..end));
                    start = end;
                }
            }
            Err(e) => {
                // Not acknowledged: the callers release nothing. (A commit
                // whose answer was lost may still be durable: the ledger
                // then over-reports, never under-reports.)
                tracing::error!(error = %e, "shared journal append failed");
                for a in group {
                    let _ = a.reply.send(Err(match &e {
                        LedgerError::Damaged(why) => LedgerError::Damaged(why.clone()),
                        LedgerError::Journal(why) => LedgerError::Journal(why.clone()),
                        other => LedgerError::Journal(other.to_string()),
                    }));
                }
            }
        }
    }
}

/// The integrator's loop and what it holds while it has the lease.
struct Integrator {
    journal: Arc<dyn SharedJournal>,
    files: Arc<dyn PublishedFiles>,
    signer: NoteSigner,
    sealer: Sealer,
    interval: Duration,
    ttl: Duration,
    holder: String,
    stop: Arc<AtomicBool>,
    urgent: Arc<AtomicBool>,
    published: Arc<Published>,
}

/// The newest checkpoint this replica has seen published, and the appends
/// waiting for one to cover them. Appends prove their entries against it
/// rather than each reading the bucket's checkpoint again.
#[derive(Debug, Default)]
struct Published {
    seen: std::sync::Mutex<Seen>,
    changed: std::sync::Condvar,
    waiting: std::sync::atomic::AtomicUsize,
}

/// What [`Published`] holds.
#[derive(Debug, Default)]
struct Seen {
    size: u64,
    checkpoint: Option<Arc<VerifiedCheckpoint>>,
}

impl Published {
    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn size(&self) -> u64 {
        self.lock().size
    }

    /// Records a verified checkpoint seen published (sizes only grow).
    fn saw(&self, cp: VerifiedCheckpoint) {
        let mut seen = self.lock();
        if cp.size > seen.size || seen.checkpoint.is_none() {
            seen.size = cp.size;
            seen.checkpoint = Some(Arc::new(cp));
            self.changed.notify_all();
        }
    }

    /// Whether anyone waits for a checkpoint.
    fn awaited(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Waits up to `patience` for a checkpoint of at least `size`, and
    /// returns it.
    fn wait_for(&self, size: u64, patience: Duration) -> Option<Arc<VerifiedCheckpoint>> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let deadline = Instant::now() + patience;
        let mut seen = self.lock();
        let covering = loop {
            if seen.size >= size
                && let Some(cp) = &seen.checkpoint
            {
                break Some(Arc::clone(cp));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            seen = self
                .changed
                .wait_timeout(seen, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        covering
    }
}

/// The tree as integrated so far, by the lease holder.
struct Integrated {
    tree: TreeEdge,
    /// The tag of the last record integrated (zeros before the first).
    last_tag: [u8; HASH_SIZE],
    /// Size of the last checkpoint this integrator published or found.
    published: u64,
    /// Partial tiles of that checkpoint (removed after the next one).
    partials: Vec<String>,
}

impl Integrator {
    fn run(self) {
        let mut state: Option<Integrated> = None;
        let mut last_publish = Instant::now();
        // Poll often enough that a checkpoint follows an append within
        // about one interval, and renew well within the lease.
        let poll = (self.interval / 4)
            .min(self.ttl / 4)
            .max(Duration::from_millis(5));
        loop {
            // Once stopping, one last catch-up: publish what the journal
            // holds if this replica has (or can take) the lease, then stop.
            let stopping = self.stop.load(Ordering::Acquire);
            let poll = if self.published.awaited() {
                Duration::from_millis(10)
            } else {
                poll
            };
            match self.journal.hold_integrator(&self.holder, self.ttl) {
                Ok(true) => {}
                Ok(false) => {
                    state = None;
                    if stopping {
                        break;
                    }
                    if self.published.awaited() {
                        // Another replica integrates: watch what it publishes.
                        self.watch_published();
                    }
                    std::thread::sleep(poll);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the integrator lease could not be checked");
                    state = None;
                    if stopping {
                        break;
                    }
                    std::thread::sleep(poll);
                    continue;
                }
            }
            let urgent = stopping || self.urgent.swap(false, Ordering::AcqRel);
            let round = self.round(&mut state, &mut last_publish, urgent);
            match round {
                Ok(true) => {}
                Ok(false) if stopping => break,
                Ok(false) => std::thread::sleep(poll),
                Err(e) => {
                    // Fail closed: nothing more is published until the
                    // cause is gone. The lease is given up, so that a
                    // replica that is not at fault (this one may hold the
                    // wrong key) can try; the next round starts afresh.
                    tracing::error!(error = %e, "ledger integration stopped");
                    state = None;
                    if let Err(e) = self.journal.release_integrator(&self.holder) {
                        tracing::warn!(error = %e, "the integrator lease was not released");
                    }
                    if stopping {
                        break;
                    }
                    std::thread::sleep(self.ttl.min(Duration::from_secs(1)));
                }
            }
        }
        if state.is_some()
            && let Err(e) = self.journal.release_integrator(&self.holder)
        {
            tracing::warn!(error = %e, "the integrator lease was not released");
        }
    }

    /// Reads the published checkpoint and records its size if it verifies.
    fn watch_published(&self) {
        if let Ok(Some(note)) = self.files.read(CHECKPOINT)
            && let Ok(cp) = verify_checkpoint(&note, &self.signer.verifier_key())
        {
            self.published.saw(cp);
        }
    }

    /// One round: catch up with the journal and publish when due. Whether
    /// there may be more to do at once.
    fn round(
        &self,
        state: &mut Option<Integrated>,
        last_publish: &mut Instant,
        urgent: bool,
    ) -> Result<bool, LedgerError> {
        let integrated = match state {
            Some(s) => s,
            None => state.insert(self.recover()?),
        };
        let records = self.journal.read(integrated.tree.size(), READ_BATCH)?;
        let read = records.len();
        for record in records {
            if record.index != integrated.tree.size() {
                return Err(LedgerError::Damaged(format!(
                    "the journal skipped from {} to {}",
                    integrated.tree.size(),
                    record.index
                )));
            }
            if !self.sealer.check(&record, &integrated.last_tag) {
                return Err(LedgerError::Damaged(format!(
                    "journal record {} is not authentic: it was altered, reordered, or written without the ledger key",
                    record.index
                )));
            }
            Entry::decode(&record.entry).map_err(|e| {
                LedgerError::Damaged(format!("journal record {}: {e}", record.index))
            })?;
            integrated
                .tree
                .push(record_hash(&record.entry), &record.entry);
            integrated.last_tag = record.tag;
        }
        let behind = integrated.tree.size() > integrated.published;
        let due = urgent || last_publish.elapsed() >= self.interval;
        if behind && due {
            self.publish(integrated)?;
            *last_publish = Instant::now();
        }
        Ok(read == READ_BATCH)
    }

    /// Starts from the published checkpoint (verified) and its tiles
    /// (checked against its root), or from nothing.
    fn recover(&self) -> Result<Integrated, LedgerError> {
        let note = self
            .files
            .read(CHECKPOINT)
            .map_err(|e| LedgerError::Journal(format!("reading the checkpoint: {e}")))?;
        let Some(note) = note else {
            return Ok(Integrated {
                tree: TreeEdge::new(),
                last_tag: [0; HASH_SIZE],
                published: 0,
                partials: Vec::new(),
            });
        };
        let cp = verify_checkpoint(&note, &self.signer.verifier_key()).map_err(|e| {
            LedgerError::Damaged(format!("the published checkpoint does not verify: {e}"))
        })?;
        let journal_size = self.journal.size()?;
        if journal_size < cp.size {
            return Err(LedgerError::Damaged(format!(
                "the journal holds {journal_size} entries but the signed checkpoint covers {}: acknowledged entries are missing",
                cp.size
            )));
        }
        let tree = TreeEdge::load(Arc::clone(&self.files), cp.size, cp.root)?;
        let last_tag = match cp.size {
            0 => [0; HASH_SIZE],
            size => {
                let last = self.journal.read(size - 1, 1)?;
                let record = last.first().ok_or_else(|| {
                    LedgerError::Damaged(format!("journal record {} is missing", size - 1))
                })?;
                // The chain goes on from the record the checkpoint ends
                // with: the journal's must be the published one, or
                // records under the checkpoint were removed or replaced.
                let tiles = TileFiles::over(Arc::clone(&self.files));
                let leaf = TreeReader::new(&tiles, size)
                    .read_hashes(&[tlog_tiles::stored_hash_index(0, size - 1)])
                    .map_err(|e| LedgerError::Damaged(format!("the last published leaf: {e}")))?;
                if leaf.first() != Some(&record_hash(&record.entry)) {
                    return Err(LedgerError::Damaged(format!(
                        "journal record {} is not the entry the signed checkpoint covers: records under it were removed or replaced",
                        size - 1
                    )));
                }
                record.tag
            }
        };
        let size = cp.size;
        self.published.saw(cp);
        tracing::info!(size, "integrating the shared ledger");
        Ok(Integrated {
            tree,
            last_tag,
            published: size,
            partials: Vec::new(),
        })
    }

    /// Publishes the tiles, then (still holding the lease, and never over
    /// a newer checkpoint) the signed checkpoint.
    fn publish(&self, state: &mut Integrated) -> Result<(), LedgerError> {
        let io =
            |what: String| move |e: std::io::Error| LedgerError::Journal(format!("{what}: {e}"));
        for (id, bytes) in state.tree.completed.drain(..) {
            self.files
                .write(&id.path(), &bytes)
                .map_err(io(id.path()))?;
        }
        let mut partials = Vec::new();
        for (id, bytes) in state.tree.partials()? {
            self.files
                .write(&id.path(), &bytes)
                .map_err(io(id.path()))?;
            partials.push(id.path());
        }
        self.files.sync().map_err(io("syncing tiles".into()))?;
        if !self.journal.hold_integrator(&self.holder, self.ttl)? {
            return Err(LedgerError::Journal(
                "the integrator lease was lost before the checkpoint".into(),
            ));
        }
        let size = state.tree.size();
        let current = self
            .files
            .read_versioned(CHECKPOINT)
            .map_err(io("reading the checkpoint".into()))?;
        let version = match current {
            Some((note, version)) => {
                if let Ok(current) = verify_checkpoint(&note, &self.signer.verifier_key())
                    && current.size > size
                {
                    return Err(LedgerError::Journal(format!(
                        "a newer checkpoint ({} entries) is published than this integrator's ({size})",
                        current.size
                    )));
                }
                // A store without versions is written by one process.
                match version {
                    Some(v) => Some(v),
                    None if self.files.dir().is_some() => None,
                    None => {
                        return Err(LedgerError::Journal(
                            "the object store gave the checkpoint no version (ETag): it cannot be replaced safely".into(),
                        ));
                    }
                }
            }
            None => None,
        };
        let note = self
            .signer
            .sign(size, state.tree.root().0)
            .map_err(|e| LedgerError::Damaged(e.to_string()))?;
        // What appends prove against once it is published: the note as
        // signed, checked once here.
        let cp = verify_checkpoint(&note, &self.signer.verifier_key())
            .map_err(|e| LedgerError::Damaged(format!("the checkpoint just signed: {e}")))?;
        // Only over the checkpoint just read: an integrator that stalled
        // while another published cannot put an older one back.
        self.files
            .write_if(CHECKPOINT, &note, version)
            .map_err(io("writing the checkpoint".into()))?;
        self.files
            .sync()
            .map_err(io("syncing the checkpoint".into()))?;
        for old in std::mem::replace(&mut state.partials, partials.clone()) {
            if !partials.contains(&old) {
                let _ = self.files.remove(&old);
            }
        }
        state.published = size;
        self.published.saw(cp);
        Ok(())
    }
}
