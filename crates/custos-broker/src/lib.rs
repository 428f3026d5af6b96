//! The Custos broker: the one place that sequences every action against the
//! ledger, so that the fail-closed invariant lives in one function per
//! action that tests attack directly.
//!
//! It sequences the custodian's administrative actions (init, ingest,
//! principals, agreements), identified look-ups (request → approvals →
//! fetch, module `lookups`) and accountability reports (module `reports`).
//! The CLI and (later) the server call only this crate.
//!
//! INVARIANT (fail closed): an action takes effect only after the ledger
//! entry recording it is durable. Ingest stages its files, appends the entry,
//! and only then commits the dataset; if the append fails, the staged files
//! are discarded and the dataset never exists.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod agreements;
mod browsing;
mod contents;
mod decide;
mod extracts;
mod ledger_key;
mod ledger_writer;
mod lookups;
mod master_key;
mod matches;
mod queries;
mod recorded;
mod reports;
mod witnessing;
mod worklists;

pub use browsing::{
    ALERTS_PER_PAGE, Alert, AlertPage, AlertState, DetectionRun, FactsSet, FiredRule, MAX_RELATED,
    MIN_RESOLUTION, PrincipalFacts,
};
pub use contents::DatasetCheck;
pub use custos_model::AgreementStatus;
pub use custos_privacy::{AppliedBounds, BoundsSource, Cell};
pub use custos_store::LedgerKeySource;
pub use custos_store::catalogue::CatalogueLocation;
pub use custos_store::home::Placement;
pub use custos_store::listings::DayActivity;
pub use custos_store::objects::ObjectStoreLocation;
pub use custos_store::replica::ReplicaHome;
pub use extracts::{ExtractFormat, ExtractReport, ExtractRequest};
pub use ledger_key::{KeyRotation, LedgerKeyFrom};
pub use lookups::{DeclineNote, GUARDS_FILE, LookupDetails, LookupRequest, LookupTicket, Released};
pub use master_key::{KeyRotated, NewKeyMaterial, NewMasterKey};
pub use matches::{MatchOffer, MatchOpened, MatchPeer, MatchReport, MatchRequest, PeerError};
pub use queries::AggregateAnswer;
pub use recorded::Recorded;
pub use reports::{AgreementReport, ReportLine, SubjectReport};
pub use witnessing::{WITNESS_POLICY_FILE, WitnessLag, home_witness_policy, witness_lag};
pub use worklists::{AgreementBudget, Decided, QueueItem};

/// The storage vocabulary of the broker's arguments and answers, re-exported
/// so that nothing outside the broker depends on `custos-store` (which can
/// read rows and reach the master key) to name them.
pub use custos_store::ingest::MAX_PROBLEMS;
pub use custos_store::lookups::RequestState;
pub use custos_store::matches::MatchJob;
pub use custos_store::meta::{AgreementState, AgreementVersion};
pub use custos_store::{
    DatasetError, DatasetSummary, HomeError, IngestError, IngestProblem, IngestProgress,
    IngestReport, NoProgress,
};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use custos_ledger::{Decision, Entry, LedgerError, SubjectCommitment, SubjectCommitter};
use custos_model::principal::{self, IssuedToken};
use custos_model::{Principal, PrincipalError, Role};
use custos_store::dataset;
use custos_store::{Home, InitReport, KeyInput, MasterKey};
pub use custos_store::{HsmConfig, KeySource, PrintedShare, SecretText};

/// What opens a home, given from outside it: a master key
/// (`CUSTOS_MASTER_KEY`), a quorum of key shares, or an HSM token's PIN.
/// Opaque: it can only be handed to [`Custos::init`] or [`Custos::open`];
/// nothing outside the broker derives or unwraps with it.
pub struct ExternalKey(KeyInput);

impl ExternalKey {
    /// Parses a master key of 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, BrokerError> {
        Ok(Self(KeyInput::Master(MasterKey::from_hex(text)?)))
    }

    /// Key shares' texts (`custos-share-N-…`), checked when the home opens.
    pub fn from_shares(shares: Vec<SecretText>) -> Self {
        Self(KeyInput::Shares(shares))
    }

    /// An HSM token's user PIN.
    pub fn hsm_pin(pin: SecretText) -> Self {
        Self(KeyInput::HsmPin(pin))
    }
}

impl std::fmt::Debug for ExternalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExternalKey(<redacted>)")
    }
}

/// Where a new home's master key comes from.
#[derive(Debug)]
pub enum MasterKeySource {
    /// Generate one and keep it in `HOME/master.key` (mode 0600).
    GenerateFile,
    /// Use this key (from `CUSTOS_MASTER_KEY`) and write it nowhere.
    External(ExternalKey),
    /// Generate one and split it into `count` shares, any `threshold` of
    /// which open the home (printed once by init; kept nowhere).
    Shares {
        /// Shares needed to open.
        threshold: usize,
        /// Shares issued.
        count: usize,
    },
    /// Generate a non-extractable key inside a PKCS#11 token.
    Hsm {
        /// The module and the token's label.
        config: HsmConfig,
        /// The token's user PIN.
        pin: SecretText,
    },
}

/// Where the master key of the home at `root` lives (read without a key,
/// to know what to ask for).
pub async fn home_key_source(root: &Path) -> Result<KeySource, BrokerError> {
    Ok(Home::read_key_source(root).await?)
}

/// The actor of init-time administration, before principals exist.
pub const LOCAL_ADMIN: &str = "local-admin";
/// Longest delay between an append and the checkpoint covering it.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of the broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// Opening or creating the home failed.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// An ingest failed (and was recorded in the ledger).
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The ledger failed; nothing took effect.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A dataset could not be read.
    #[error(transparent)]
    Dataset(#[from] custos_store::DatasetError),
    /// Authentication failed (recorded in the ledger).
    #[error(transparent)]
    Auth(#[from] PrincipalError),
    /// The actor may not do this (recorded in the ledger).
    #[error("denied: {0}")]
    Denied(String),
    /// The caller's input was refused (a bad argument, agreement or query).
    #[error("{0}")]
    Invalid(String),
    /// What the caller named does not exist (or is not theirs to see).
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the current state (already exists, already
    /// revoked, a state change that is not allowed).
    #[error("{0}")]
    Conflict(String),
    /// The server failed (a fault, not the caller's doing). The text may
    /// name files or engine internals: log it, never send it to a client.
    #[error("internal error: {0}")]
    Internal(String),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] custos_store::meta::MetaError),
    /// A key operation failed.
    #[error(transparent)]
    Key(#[from] custos_store::KeyError),
    /// Custos cannot release now (e.g. its witnesses have not cosigned the
    /// ledger for too long); the refusal was recorded. Retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Who is acting, as the broker established it. Opaque: only
/// [`Custos::actor`] and [`Custos::authenticate`] make one, and nothing
/// outside the broker can build, take apart or change one, so a caller
/// cannot claim to be a principal it has no token for, nor the bootstrap
/// console once a principal exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(Acting);

/// What an [`Actor`] is (crate-private).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Acting {
    /// The custodian at the console of a home with no principal yet (the
    /// bootstrap exception: it can only create the first admin and ingest).
    LocalAdmin,
    /// An authenticated principal.
    Principal(Principal),
}

impl Actor {
    /// The principal acting, if it is one (not the bootstrap console).
    pub fn principal(&self) -> Option<&Principal> {
        match &self.0 {
            Acting::Principal(p) => Some(p),
            Acting::LocalAdmin => None,
        }
    }

    /// The id the ledger records.
    pub fn id(&self) -> &str {
        match &self.0 {
            Acting::LocalAdmin => LOCAL_ADMIN,
            Acting::Principal(p) => &p.id,
        }
    }

    pub(crate) fn is_admin(&self) -> bool {
        match &self.0 {
            Acting::LocalAdmin => true,
            Acting::Principal(p) => p.has_role(Role::Admin),
        }
    }
}

/// An open Custos instance: its home and its ledger.
#[derive(Debug)]
pub struct Custos {
    home: Home,
    ledger: ledger_writer::LedgerWriter,
    /// The file the ledger signing key came from (`None`: environment).
    ledger_key_file: Option<PathBuf>,
    /// This process's claim to write the home (see `Home::hold_writer`);
    /// every append checks it.
    writer: custos_store::meta::WriterLease,
    subjects: SubjectCommitter,
    /// Compiled policies per (agreement, version, SHA-256 of the guards).
    engines: std::sync::Mutex<EngineCache>,
    /// Matching jobs this side is answering, between their steps.
    pending_matches: matches::PendingMatches,
    /// Serialises check-then-record of rate limits per agreement.
    limit_locks: LimitLocks,
    /// Refuses releases while the unwitnessed tail is too old (if set).
    witness_gate: Option<witnessing::WitnessGate>,
    /// Datasets whose catalogue digests were held to the ledger.
    ledgered_datasets: contents::LedgeredDatasets,
    /// Unusual-browsing detection's state in this process.
    detector: browsing::Detector,
}

/// The actor of entries Custos records on its own (not on a principal's
/// behalf): a recovered ledger, a dataset check, a request it declined.
pub(crate) const SYSTEM_ACTOR: &str = "custos";

/// One lock per agreement around "count what was done, decide, ledger,
/// record": without it, 32 concurrent requests under a limit of 10 all see
/// 9 done and all pass. Held only by actions whose grant has a limit, so
/// unlimited actions still share group commits.
///
/// INVARIANT: a limited action counts and records under its agreement's
/// lock: in this process (a mutex), and across every process writing the
/// catalogue (a PostgreSQL advisory lock; nothing more for an embedded
/// home, which one process writes).
#[derive(Debug, Default)]
pub(crate) struct LimitLocks(
    std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
);

/// An agreement's limit lock, held in this process and in the catalogue.
#[derive(Debug)]
pub(crate) struct LimitGuard {
    catalogue: custos_store::meta::CatalogueLock,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

impl LimitGuard {
    /// Once the limited action is recorded, before anything is released:
    /// fails if the catalogue's lock was lost meanwhile (its connection
    /// ended), when another replica may have counted before the record.
    pub(crate) async fn confirm(&mut self) -> Result<(), BrokerError> {
        self.catalogue.confirm().await.map_err(|_| {
            BrokerError::Unavailable(
                "the agreement's limit lock was lost (its PostgreSQL connection ended) before this action was recorded: it was recorded, and nothing was released"
                    .into(),
            )
        })
    }
}

impl LimitLocks {
    /// Holds agreement `id`'s lock if `grant` has a limit to count against
    /// (`requests_per_hour` or `subjects_per_day`); otherwise nothing.
    pub(crate) async fn hold_for(
        &self,
        home: &Home,
        grant: &custos_policy::Grant,
        id: &str,
    ) -> Result<Option<LimitGuard>, BrokerError> {
        let limited =
            grant.limits.requests_per_hour.is_some() || grant.limits.subjects_per_day.is_some();
        if !limited {
            return Ok(None);
        }
        // In-process first: a process waits for the catalogue's lock with
        // one connection per agreement, not one per request.
        let local = self.hold(id).await;
        let catalogue = home.hold_agreement_lock(id).await?;
        Ok(Some(LimitGuard {
            catalogue,
            _local: local,
        }))
    }

    /// Waits for and holds agreement `id`'s lock.
    async fn hold(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(map.entry(id.to_owned()).or_default())
        };
        lock.lock_owned().await
    }
}

type EngineCache =
    std::collections::HashMap<(String, u32, [u8; 32]), Arc<custos_policy::decide::PolicyEngine>>;

/// The clock a benchmark replays a trace on: 0 means the system clock.
static SIMULATED_NOW: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Sets the time every later ledger entry and limit of this process uses
/// (microseconds since the Unix epoch; 0 goes back to the system clock).
/// A seam for replaying access traces in the browsing bench, like
/// [`FAULT_ENV`] for failures, but out of reach of the CLI, the server and
/// the environment: no source file outside the broker's benches calls it
/// (`crates/custos/tests/one_door.rs` checks).
#[doc(hidden)]
pub fn set_simulated_now(micros: i64) {
    SIMULATED_NOW.store(micros, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn now_micros() -> i64 {
    let simulated = SIMULATED_NOW.load(std::sync::atomic::Ordering::Relaxed);
    if simulated != 0 {
        return simulated;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Subject commitments per ledger entry (32 bytes each, well under the
/// entry size limit).
pub(crate) const SUBJECTS_PER_ENTRY: usize = 1000;

/// A release naming many subjects, as entries for one durable commit:
/// `first` with the first [`SUBJECTS_PER_ENTRY`] subjects, then one
/// `<first.action>.subjects` entry (same time, actor, request, agreement,
/// decision) per further chunk. Subject `i` is in entry `i / SUBJECTS_PER_ENTRY`,
/// blinded for that entry ([`SubjectCommitter::for_entry`]).
pub(crate) fn entries_naming(
    committer: &SubjectCommitter,
    first: Entry,
    subjects: &[SubjectCommitment],
) -> Vec<Entry> {
    let request = first.request_id.clone();
    let blinded = |entry: Entry, chunk: &[SubjectCommitment]| {
        let action = entry.action.clone();
        entry.with_subjects(
            chunk
                .iter()
                .map(|s| committer.for_entry(s, &request, &action)),
        )
    };
    let mut chunks = subjects.chunks(SUBJECTS_PER_ENTRY);
    let head = chunks.next().unwrap_or_default();
    let action = format!("{}.subjects", first.action);
    let mut rest = Vec::new();
    for chunk in chunks {
        let mut next = Entry::new(first.time_micros, &first.actor, &action, first.decision);
        next.request_id.clone_from(&first.request_id);
        next.agreement_id.clone_from(&first.agreement_id);
        next.agreement_version = first.agreement_version;
        rest.push(blinded(next, chunk));
    }
    let mut entries = vec![blinded(first, head)];
    entries.extend(rest);
    entries
}

/// Runs a durable ledger append, which waits for its group commit. On a
/// multi-threaded runtime (the server, the CLI) the worker's other tasks
/// move to another thread meanwhile, so concurrent requests keep flowing
/// into the same group commit instead of queueing behind it.
fn wait_for_commit<T>(append: impl FnOnce() -> Result<T, LedgerError>) -> Result<T, BrokerError> {
    let result = match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(append)
        }
        _ => append(),
    };
    Ok(result?)
}

/// The environment variable that makes the N-th ledger commit of this
/// process fail (the fault-injection seam of the fail-closed tests). It
/// can only make Custos refuse, never release.
pub const FAULT_ENV: &str = "CUSTOS_FAULT_LEDGER_COMMIT";

fn faults_from_env() -> custos_ledger::FaultPlan {
    custos_ledger::FaultPlan {
        fail_commit: std::env::var(FAULT_ENV).ok().and_then(|v| v.parse().ok()),
    }
}

/// A home's published ledger, for reading without opening the ledger's
/// writer (so it works beside a running server): its directory and the key
/// that verifies its checkpoints (the catalogue's public key). Needs no
/// secret: anyone who may read the home may verify its ledger.
pub async fn published_ledger(
    root: &Path,
) -> Result<(Arc<dyn custos_ledger::PublishedFiles>, String), BrokerError> {
    let (files, origin, public) = Home::public_ledger(root).await?;
    Ok((
        files,
        custos_ledger::note::verifier_key_for(&origin, &public),
    ))
}

impl Custos {
    /// Creates a home and its ledger, whose first entry records the init.
    /// If the ledger cannot record it, the new home is removed again. The
    /// ledger signing key goes to `ROOT.ledger.key` beside the home.
    pub async fn init(
        root: &Path,
        key: MasterKeySource,
        origin: Option<String>,
    ) -> Result<(Self, InitReport), BrokerError> {
        Self::init_with(
            root,
            key,
            origin,
            LedgerKeySource::beside(root),
            CatalogueLocation::Embedded,
        )
        .await
    }

    /// [`Custos::init`] with the ledger signing key from `ledger_key`, and
    /// the catalogue and dataset files where `placement` says.
    pub async fn init_with(
        root: &Path,
        key: MasterKeySource,
        origin: Option<String>,
        ledger_key: LedgerKeySource,
        placement: impl Into<Placement>,
    ) -> Result<(Self, InitReport), BrokerError> {
        let reopen_ledger = LedgerKeyFrom {
            seed: match &ledger_key {
                LedgerKeySource::External(seed) => Some(seed.clone()),
                LedgerKeySource::File(_) => None,
            },
            file: None,
        };
        let (store_key, reopen_pin) = match key {
            MasterKeySource::External(ExternalKey(KeyInput::Master(k))) => {
                let again = KeyInput::Master(k.duplicate());
                (custos_store::MasterKeySource::External(k), Some(again))
            }
            MasterKeySource::External(_) => {
                return Err(BrokerError::Invalid(
                    "a new home takes a master key, not shares or a PIN".into(),
                ));
            }
            MasterKeySource::GenerateFile => (custos_store::MasterKeySource::GenerateFile, None),
            MasterKeySource::Shares { threshold, count } => (
                custos_store::MasterKeySource::Shares { threshold, count },
                None,
            ),
            MasterKeySource::Hsm { config, pin } => {
                let again = KeyInput::HsmPin(pin.clone());
                (
                    custos_store::MasterKeySource::Hsm { config, pin },
                    Some(again),
                )
            }
        };
        let report = Home::init_with(root, store_key, origin, ledger_key, placement).await?;
        let reopen_key = match reopen_pin {
            Some(input) => Some(ExternalKey(input)),
            None if !report.shares.is_empty() => Some(ExternalKey::from_shares(
                report
                    .shares
                    .iter()
                    .take(report.threshold)
                    .map(|s| SecretText::from(s.text.to_string()))
                    .collect(),
            )),
            None => None,
        };
        let opened = Self::open_with(root, reopen_key, reopen_ledger).await;
        let custos = match opened {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(root);
                return Err(e);
            }
        };
        let entry = Entry::new(
            now_micros(),
            LOCAL_ADMIN,
            "instance.init",
            Decision::Recorded,
        )
        .with_attribute("origin", report.origin.clone())
        .with_attribute("public_key", report.public_key_hex.clone())
        .with_attribute("key_source", custos.home().key_source().name())
        .with_attribute("key_fingerprint", custos.home().key_fingerprint());
        if let Err(e) = custos.append(&entry) {
            drop(custos);
            let _ = std::fs::remove_dir_all(root);
            if let Some(file) = &report.ledger_key_file {
                let _ = std::fs::remove_file(file);
            }
            return Err(e);
        }
        Ok((custos, report))
    }

    /// Opens an existing home and recovers its ledger (the ledger key from
    /// the file the home names).
    pub async fn open(root: &Path, external_key: Option<ExternalKey>) -> Result<Self, BrokerError> {
        Self::open_with(root, external_key, LedgerKeyFrom::default()).await
    }

    /// [`Custos::open`] with the ledger key from `ledger_key` if given.
    pub async fn open_with(
        root: &Path,
        external_key: Option<ExternalKey>,
        ledger_key: LedgerKeyFrom,
    ) -> Result<Self, BrokerError> {
        let input = external_key.map_or(KeyInput::None, |k| k.0);
        let home = Home::open_keyed(root, input).await?;
        let (ledger, ledger_key_file, writer) = ledger_key::open_ledger(&home, &ledger_key).await?;
        let subjects = SubjectCommitter::new(&home.ledger_subject_key());
        let cut = ledger.cut_at_open();
        let custos = Self {
            home,
            ledger_key_file,
            ledger,
            writer,
            subjects,
            engines: std::sync::Mutex::new(EngineCache::new()),
            pending_matches: matches::PendingMatches::default(),
            limit_locks: LimitLocks::default(),
            witness_gate: None,
            ledgered_datasets: contents::LedgeredDatasets::default(),
            detector: browsing::Detector::default(),
        };
        if let Some(bytes) = cut {
            // A crash, or records written without the key: either way the
            // ledger says so, where an auditor reads it.
            custos.append(
                &Entry::new(now_micros(), SYSTEM_ACTOR, "ledger.recovered", Decision::Recorded)
                    .with_count("cut_bytes", bytes)
                    .with_reason(
                        "the journal's final record was torn by a crash or not written with the ledger key; it was cut, never signed",
                    ),
            )?;
        }
        if let Some(fingerprint) = custos.home.take_pending_rotation().await? {
            // A rotation stopped between its ledger entry and its commit:
            // the ledger says it did not take effect.
            custos.append(
                &Entry::new(now_micros(), SYSTEM_ACTOR, "key.rotate", Decision::Recorded)
                    .with_attribute("fingerprint", fingerprint)
                    .with_attribute("in_use", custos.home.key_fingerprint())
                    .with_reason("a master-key rotation stopped before its commit and did not take effect; the key in use is unchanged"),
            )?;
        }
        Ok(custos)
    }

    /// The home: master key, datasets and the writable catalogue. Never
    /// leaves the broker.
    pub(crate) fn home(&self) -> &Home {
        &self.home
    }

    /// The commitment scheme for subjects in ledger entries.
    pub(crate) fn subjects(&self) -> &SubjectCommitter {
        &self.subjects
    }

    /// The directory of a local ledger (its journal, and its published
    /// tiles, entry bundles and checkpoints). A replicated home publishes
    /// elsewhere: read through [`Custos::ledger_files`].
    pub fn ledger_dir(&self) -> PathBuf {
        self.home.ledger_dir()
    }

    /// The ledger's published files (tiles, entry bundles, checkpoints),
    /// wherever they are: public, read-only to everyone but the broker.
    pub fn ledger_files(&self) -> Result<Arc<dyn custos_ledger::PublishedFiles>, BrokerError> {
        Ok(self.home.published_ledger()?)
    }

    /// A reader of the published ledger.
    pub fn ledger_reader(&self) -> Result<custos_ledger::LedgerReader, BrokerError> {
        Ok(custos_ledger::LedgerReader::over(self.ledger_files()?))
    }

    /// The public key that signs this ledger's checkpoints (a note
    /// verifier key).
    pub fn verifier_key(&self) -> &str {
        self.ledger.verifier_key()
    }

    /// The latest signed checkpoint (signing and publishing a new one if
    /// entries arrived since the last).
    pub fn checkpoint(&self) -> Result<custos_ledger::VerifiedCheckpoint, BrokerError> {
        self.check_writer()?;
        self.ledger.checkpoint()
    }

    /// A new file name in the home's staging directory, for a server that
    /// must hold a released extract until it is sent (then removes it).
    pub fn staging_file(&self, extension: &str) -> Result<PathBuf, BrokerError> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw)
            .map_err(|_| BrokerError::Internal("no randomness for a file name".into()))?;
        Ok(self
            .home
            .root()
            .join("staging")
            .join(format!("http-{}.{extension}", hex::encode(raw))))
    }

    /// Resolves who is acting: the principal of `token`, or — only while
    /// the home has no principal at all — the local administrator. Failed
    /// authentication is recorded in the ledger.
    pub async fn actor(&self, token: Option<&str>) -> Result<Actor, BrokerError> {
        match token {
            Some(token) => self.authenticate(token).await,
            None if self.home.meta().principals().await?.is_empty() => {
                Ok(Actor(Acting::LocalAdmin))
            }
            None => Err(BrokerError::Denied(
                "this home has principals: act as one by setting CUSTOS_TOKEN".into(),
            )),
        }
    }

    /// The principal a token belongs to. Unknown, wrong, malformed and
    /// revoked tokens fail alike (and are ledgered as denials).
    pub async fn authenticate(&self, token: &str) -> Result<Actor, BrokerError> {
        let found = match principal::parse_token(token) {
            Ok((id, presented)) => self
                .home
                .meta()
                .principal(&id)
                .await?
                .filter(|(p, stored)| {
                    principal::hashes_match(&presented, stored) && p.revoked_at.is_none()
                })
                .map(|(p, _)| p),
            Err(_) => None,
        };
        match found {
            Some(p) => Ok(Actor(Acting::Principal(p))),
            None => {
                let entry = Entry::new(now_micros(), "anonymous", "auth.token", Decision::Deny)
                    .with_reason("invalid, unknown or revoked token");
                self.append(&entry)?;
                Err(PrincipalError::BadToken.into())
            }
        }
    }

    /// Records a denial of `action` by `actor` and returns the error.
    pub(crate) fn deny(&self, actor: &Actor, action: &str, reason: &str) -> BrokerError {
        let entry =
            Entry::new(now_micros(), actor.id(), action, Decision::Deny).with_reason(reason);
        match self.append(&entry) {
            Ok(_) => BrokerError::Denied(reason.to_owned()),
            Err(e) => e,
        }
    }

    /// Creates a principal and its API token (shown once). Needs an admin;
    /// at bootstrap the local administrator may create the first principal,
    /// which must be an admin.
    pub async fn add_principal(
        &self,
        actor: &Actor,
        name: &str,
        org: &str,
        roles: &[Role],
    ) -> Result<(Principal, IssuedToken), BrokerError> {
        const ACTION: &str = "principal.add";
        if !actor.is_admin() {
            return Err(self.deny(actor, ACTION, "only an admin may add principals"));
        }
        if matches!(actor, Actor(Acting::LocalAdmin)) && !roles.contains(&Role::Admin) {
            return Err(self.deny(actor, ACTION, "the first principal must be an admin"));
        }
        if !principal::valid_principal_name(name) {
            return Err(BrokerError::Invalid(
                PrincipalError::BadName(name.to_owned()).to_string(),
            ));
        }
        if !principal::valid_org(org) {
            return Err(BrokerError::Invalid(PrincipalError::BadOrg.to_string()));
        }
        if roles.is_empty() {
            return Err(BrokerError::Invalid(PrincipalError::NoRole.to_string()));
        }
        if roles.contains(&Role::Admin)
            && let Some(other) = roles
                .iter()
                .find(|r| matches!(r, Role::Approver | Role::Requester))
        {
            return Err(self.deny(
                actor,
                ACTION,
                &format!(
                    "separation of duties: an `admin` may not also hold the `{}` role; add a second principal",
                    other.as_str()
                ),
            ));
        }
        if roles.contains(&Role::Overseer) && roles.contains(&Role::Requester) {
            return Err(self.deny(
                actor,
                ACTION,
                "separation of duties: an `overseer` may not also hold the `requester` role; add a second principal",
            ));
        }
        let mut roles = roles.to_vec();
        roles.sort();
        roles.dedup();
        let (id, token, hash) = custos_store::principal::issue()?;
        let p = Principal {
            id,
            name: name.to_owned(),
            org: org.to_owned(),
            roles,
            created_at: custos_store::home::now_rfc3339(),
            created_by: actor.id().to_owned(),
            revoked_at: None,
        };
        if self.home.meta().principal_by_name(name).await?.is_some() {
            return Err(BrokerError::Conflict(format!(
                "principal `{name}` already exists"
            )));
        }
        // INVARIANT: the principal exists only after this entry is durable.
        let entry = Entry::new(now_micros(), actor.id(), ACTION, Decision::Allow)
            .with_attribute("principal", p.id.clone())
            .with_attribute("org", p.org.clone())
            .with_attribute("roles", principal::format_roles(&p.roles));
        self.append(&entry)?;
        self.home.meta().insert_principal(&p, &hash).await?;
        Ok((p, token))
    }

    /// Revokes a principal's token. Needs an admin.
    pub async fn revoke_principal(
        &self,
        actor: &Actor,
        name: &str,
    ) -> Result<Principal, BrokerError> {
        const ACTION: &str = "principal.revoke";
        if !actor.is_admin() {
            return Err(self.deny(actor, ACTION, "only an admin may revoke principals"));
        }
        let Some(p) = self.home.meta().principal_by_name(name).await? else {
            return Err(BrokerError::NotFound(format!("no principal `{name}`")));
        };
        if p.revoked_at.is_some() {
            return Err(BrokerError::Conflict(format!(
                "principal `{name}` is already revoked"
            )));
        }
        let entry = Entry::new(now_micros(), actor.id(), ACTION, Decision::Allow)
            .with_attribute("principal", p.id.clone());
        self.append(&entry)?;
        self.home
            .meta()
            .revoke_principal(&p.id, &custos_store::home::now_rfc3339())
            .await?;
        Ok(p)
    }

    /// All principals (admins and overseers only), never with tokens.
    pub async fn principals(&self, actor: &Actor) -> Result<Vec<Principal>, BrokerError> {
        let allowed = match actor {
            Actor(Acting::LocalAdmin) => true,
            Actor(Acting::Principal(p)) => p.has_role(Role::Admin) || p.has_role(Role::Overseer),
        };
        if !allowed {
            return Err(self.deny(
                actor,
                "principal.list",
                "only admins and overseers may list principals",
            ));
        }
        Ok(self.home.meta().principals().await?)
    }

    /// The staff directory: every principal's id and display name (with
    /// organisation), for any principal, so pages can say who acted; no
    /// roles, dates or tokens.
    pub async fn directory(
        &self,
        actor: &Actor,
    ) -> Result<std::collections::HashMap<String, String>, BrokerError> {
        if actor.principal().is_none() {
            return Err(self.deny(
                actor,
                "principal.directory",
                "the directory is for principals",
            ));
        }
        Ok(self
            .home
            .meta()
            .principals()
            .await?
            .into_iter()
            .map(|p| (p.id, format!("{} ({})", p.name, p.org)))
            .collect())
    }

    /// Ingests a dataset: stage the encrypted files, record the ingest in the
    /// ledger (durable), then commit. A failure is recorded too.
    pub async fn ingest(
        &self,
        actor: &Actor,
        name: &str,
        schema: &Path,
        csv: &Path,
        progress: Arc<dyn IngestProgress>,
    ) -> Result<IngestReport, BrokerError> {
        // The ledger is public to overseers: an invalid name (which could be
        // anything a person typed) is not recorded, only that it was invalid.
        if !actor.is_admin() {
            return Err(self.deny(actor, "dataset.ingest", "only an admin may ingest datasets"));
        }
        let recorded_name = if dataset::valid_name(name) {
            name
        } else {
            "(invalid name)"
        };
        let base = Entry::new(now_micros(), actor.id(), "dataset.ingest", Decision::Allow)
            .with_attribute("dataset", recorded_name);
        let failed = |reason: String| {
            Entry {
                decision: Decision::Error,
                ..base.clone()
            }
            .with_reason(reason)
        };
        let staged = match dataset::stage(&self.home, name, schema, csv, progress).await {
            Ok(staged) => staged,
            Err(e) => {
                self.append(&failed(ingest_failure_reason(&e)))?;
                return Err(e.into());
            }
        };
        let s = staged.summary();
        let mut entry = base
            .clone()
            .with_attribute("schema_sha256", s.schema_sha256.clone())
            .with_attribute("storage_id", staged.storage_id())
            // The dataset's exact size stays in the catalogue.
            .with_count("buckets", u64::from(s.buckets));
        for (key, value) in contents::digest_attributes(staged.file_digests()) {
            entry = entry.with_attribute(&key, value);
        }
        // INVARIANT: the dataset is committed only after this entry is durable.
        let recorded = self.append(&entry)?;
        match staged.commit(&self.home, Some(recorded.index())).await {
            Ok(report) => Ok(report),
            Err(e) => {
                // The entry above said "allow"; say that it did not happen.
                self.append(&failed(format!(
                    "commit failed: {}",
                    ingest_failure_reason(&e)
                )))?;
                Err(e.into())
            }
        }
    }

    /// The datasets `actor` may know of.
    pub async fn datasets(&self, actor: &Actor) -> Result<Vec<DatasetSummary>, BrokerError> {
        let all = dataset::list(&self.home).await?;
        let visible: Vec<DatasetSummary> = match self.visible_datasets(actor).await? {
            None => all,
            Some(names) => all
                .into_iter()
                .filter(|d| names.contains(&d.name))
                .collect(),
        };
        Ok(visible.into_iter().map(|d| sized_for(actor, d)).collect())
    }

    /// One dataset's description, if `actor` may know of it (else "not
    /// found", like an absent one).
    pub async fn describe(&self, actor: &Actor, name: &str) -> Result<DatasetSummary, BrokerError> {
        if let Some(names) = self.visible_datasets(actor).await?
            && !names.contains(name)
        {
            return Err(custos_store::DatasetError::NotFound(name.to_owned()).into());
        }
        Ok(sized_for(actor, dataset::describe(&self.home, name).await?))
    }

    /// Publishes a final checkpoint and closes the ledger.
    pub fn close(self) -> Result<(), BrokerError> {
        Ok(self.ledger.close()?)
    }
}

impl Custos {
    /// Whether `actor` is an admin or overseer (or the local administrator).
    pub(crate) fn may_oversee(&self, actor: &Actor) -> bool {
        match actor {
            Actor(Acting::LocalAdmin) => true,
            Actor(Acting::Principal(p)) => p.has_role(Role::Admin) || p.has_role(Role::Overseer),
        }
    }
}

/// A dataset's summary as `actor` may see it: its exact size (rows, bytes
/// on disk) is a count of private data, shown to admins and overseers only.
fn sized_for(actor: &Actor, mut summary: DatasetSummary) -> DatasetSummary {
    let staff = match actor {
        Actor(Acting::LocalAdmin) => true,
        Actor(Acting::Principal(p)) => p.has_role(Role::Admin) || p.has_role(Role::Overseer),
    };
    if !staff {
        summary.rows = 0;
        summary.stored_bytes = 0;
        summary.sizes_withheld = true;
    }
    summary
}

/// A short, value-free reason for the ledger (never the input's values).
fn ingest_failure_reason(e: &IngestError) -> String {
    match e {
        IngestError::BadName(_) => "invalid dataset name".into(),
        IngestError::Exists(_) => "dataset already exists".into(),
        IngestError::Schema { .. } => "schema refused".into(),
        IngestError::Rejected { .. } => "input rejected".into(),
        IngestError::Io { .. } => "file could not be read or written".into(),
        _ => "ingest failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_ledger::LedgerReader;
    use custos_store::NoProgress;

    const SCHEMA: &str = "[[columns]]\nname = \"id\"\nclass = \"subject_id\"\ntype = \"string\"\n";

    #[tokio::test]
    async fn init_and_ingest_are_ledgered_including_failures() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        let (custos, _) = Custos::init(
            &root,
            MasterKeySource::GenerateFile,
            Some("t.example/custos".into()),
        )
        .await
        .unwrap();
        std::fs::write(dir.path().join("s.toml"), SCHEMA).unwrap();
        std::fs::write(dir.path().join("ok.csv"), "id\n666-00-0001\n").unwrap();
        std::fs::write(dir.path().join("bad.csv"), "nope\n1\n").unwrap();
        let s = dir.path().join("s.toml");
        custos
            .ingest(
                &Actor(Acting::LocalAdmin),
                "good",
                &s,
                &dir.path().join("ok.csv"),
                Arc::new(NoProgress),
            )
            .await
            .unwrap();
        assert!(
            custos
                .ingest(
                    &Actor(Acting::LocalAdmin),
                    "bad",
                    &s,
                    &dir.path().join("bad.csv"),
                    Arc::new(NoProgress)
                )
                .await
                .is_err()
        );
        let key = custos.verifier_key().to_owned();
        custos.close().unwrap();

        let reader = LedgerReader::new(&root.join("ledger"));
        let size = reader.latest(&key).unwrap().size;
        let entries: Vec<Entry> = reader
            .entries(0, size)
            .unwrap()
            .iter()
            .map(|(_, e)| Entry::decode(e).unwrap())
            .collect();
        let summary: Vec<(&str, Decision)> = entries
            .iter()
            .map(|e| (e.action.as_str(), e.decision))
            .collect();
        assert_eq!(
            summary,
            [
                ("instance.init", Decision::Recorded),
                ("dataset.ingest", Decision::Allow),
                ("dataset.ingest", Decision::Error)
            ]
        );
        assert_eq!(entries[1].counts, vec![("buckets".into(), 1)]);
        assert_eq!(entries[2].reasons, vec!["input rejected".to_owned()]);
        // Reopen: the ledger recovers, the good dataset exists, the bad one not.
        let custos = Custos::open(&root, None).await.unwrap();
        let names: Vec<String> = custos
            .datasets(&Actor(Acting::LocalAdmin))
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["good"]);
    }
}
