//! Private matching between two Custos instances (mode `match`), both
//! sides of it. The protocol core is `custos_privacy::psi`; this module
//! decides, ledgers and sequences it.
//!
//! The requesting side ([`Custos::run_match`]) and the answering side
//! ([`Custos::open_match`], [`Custos::exchange_match`],
//! [`Custos::finish_match`]) each apply their own copy of the agreement
//! (same id): a `match` grant on their own dataset, `[grants.match]` with
//! `reveal` and `pad_to`. The narrower `reveal` of the two applies.
//!
//! 1. open: the requester announces the job id (fresh, random; a replayed
//!    id is refused by the answering home's catalogue), the agreement, its
//!    `reveal` and how many points it will send. The answering side
//!    decides, ledgers `match.open`, blinds its own keys and answers with
//!    its point count and the reveal that applies.
//! 2. exchange: the requester sends its blinded points; the answering side
//!    checks them (canonical, not the identity, distinct, as many as
//!    announced), re-blinds them (and shuffles them back when only the
//!    count may be revealed) and sends them with its own blinded points.
//! 3. finish: the requester sends the answering side's points re-blinded by
//!    its own scalar, shuffled; the answering side learns the count (and
//!    only the count) and ledgers `match.finish`.
//!
//! INVARIANT (fail closed): neither side sends a point derived from its
//! data before its ledger holds the entry allowing the job; the requester
//! keeps a result only after the entry recording it (with the matched
//! subjects as commitments) is durable. Results stay "unverified" until a
//! custodian confirms them ([`Custos::confirm_match`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::array::{Array, Int64Array, StringArray};
use custos_ledger::{Decision, Entry};
use custos_model::{ColumnClass, DatasetSchema, Principal, Role};
use custos_policy::{Agreement, Grant, MatchGrant, Mode, Reveal, ScopeFilter, ScopeValue};
use custos_privacy::psi::{self, Encoded, Party, PsiError};
use custos_privacy::tokens::Tokeniser;
use custos_store::DatasetReader;
use custos_store::matches::{MatchJob, MatchSide, MatchState};
use serde::{Deserialize, Serialize};

use crate::lookups::{Denial, compile_row_scope, scope_value};
use crate::recorded::Recorded;
use crate::{Actor, BrokerError, Custos, entries_naming, now_micros};

/// How long an answering side keeps an unfinished job.
const PENDING_FOR: Duration = Duration::from_secs(30 * 60);

/// Unfinished jobs one principal may hold open on an answering side (each
/// holds a blinded copy of the dataset's keys).
const OPEN_JOBS_PER_PRINCIPAL: usize = 2;

/// What the requester announces when it opens a job at the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchOffer {
    /// `m_` and 32 lowercase hex digits, fresh for the job.
    pub job_id: String,
    /// The agreement (both sides hold a copy under this id).
    pub agreement: String,
    /// What the requester's copy lets it learn.
    pub reveal: Reveal,
    /// How many points it will send (its `pad_to`).
    pub points: u64,
}

/// The answering side's reply to an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchOpened {
    /// The job.
    pub job_id: String,
    /// What the requester will learn: the narrower of both copies.
    pub reveal: Reveal,
    /// How many points the answering side will send (its `pad_to`).
    pub points: u64,
}

/// Why a peer did not do its part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The peer refused, with its reason.
    #[error("the peer refused: {0}")]
    Refused(String),
    /// The peer could not be reached or answered nonsense.
    #[error("the peer failed: {0}")]
    Failed(String),
}

/// The other Custos, as the requesting side talks to it (over HTTP in
/// `custos-server`'s `HttpPeer`).
pub trait MatchPeer: Sync {
    /// How the ledger names the peer (its address, never a secret).
    fn name(&self) -> String;
    /// Step 1: opens the job.
    fn open(
        &self,
        offer: &MatchOffer,
    ) -> impl Future<Output = Result<MatchOpened, PeerError>> + Send;
    /// Step 2: sends this side's points; returns them re-blinded followed
    /// by the peer's own points (the wire form of `psi::encode_points`),
    /// `reply_bytes` long (a longer reply is refused unread).
    fn exchange(
        &self,
        job_id: &str,
        points: Vec<u8>,
        reply_bytes: usize,
    ) -> impl Future<Output = Result<Vec<u8>, PeerError>> + Send;
    /// Step 3: sends the peer's points re-blinded here, shuffled; returns
    /// the count the peer saw.
    fn finish(
        &self,
        job_id: &str,
        points: Vec<u8>,
    ) -> impl Future<Output = Result<u64, PeerError>> + Send;
}

/// A match to run from this side.
#[derive(Debug, Clone)]
pub struct MatchRequest<'a> {
    /// The agreement.
    pub agreement: &'a str,
    /// This side's dataset.
    pub dataset: &'a str,
    /// The key column (a granted `subject_id` or `identifier` column).
    pub key: &'a str,
}

/// What a match found, as the requesting side keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatchReport {
    /// The job.
    pub job_id: String,
    /// The agreement.
    pub agreement: String,
    /// Its version here.
    pub agreement_version: u32,
    /// This side's dataset.
    pub dataset: String,
    /// The key column.
    pub key: String,
    /// The peer.
    pub peer: String,
    /// `matches` or `count`: what this side learnt.
    pub reveal: Reveal,
    /// `unverified` until a custodian confirms it.
    pub state: MatchState,
    /// Matches found.
    pub matches: u64,
    /// The count the peer reported seeing (equal unless a side misbehaved).
    pub peer_count: u64,
    /// Points each side sent (after padding).
    pub points_sent: u64,
    /// Points the peer sent.
    pub points_received: u64,
    /// The matched subjects' per-agreement tokens (reveal `matches` only).
    pub tokens: Vec<String>,
    /// Ledger index of the entry recording the result.
    pub ledger_index: Recorded,
}

/// An answering side's job between its steps.
pub(crate) struct PendingMatch {
    /// The `match.open` entry's receipt: a job (and so every point this
    /// side sends in it) exists only once that entry is durable.
    opened: Recorded,
    principal: String,
    agreement: String,
    version: u32,
    reveal: Reveal,
    announced: usize,
    party: Party,
    own: Vec<Encoded>,
    /// The requester's points re-blinded here (after step 2).
    theirs_reblinded: Option<Vec<Encoded>>,
    since: Instant,
}

impl std::fmt::Debug for PendingMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PendingMatch({}, {} points, opened at entry {})",
            self.agreement,
            self.own.len(),
            self.opened
        )
    }
}

/// Jobs in progress on the answering side, by id.
pub(crate) type PendingMatches = Mutex<HashMap<String, PendingMatch>>;

/// A job id as the requester makes it.
fn valid_job_id(id: &str) -> bool {
    id.len() == 34
        && id.starts_with("m_")
        && id[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The distinct normalised keys of a dataset's key column in the grant's
/// row `scope`, each with the subject id of its first row (rows without a
/// usable key take no part). Rows outside the scope are never read into
/// the match.
fn read_keys(
    reader: &DatasetReader,
    key: &str,
    scope: Option<&ScopeFilter>,
    protected: &Protected,
) -> Result<(Vec<String>, Vec<String>), BrokerError> {
    let subject = reader.schema().subject_column().name.clone();
    let mut wanted: Vec<&str> = if subject == key {
        vec![key]
    } else {
        vec![key, &subject]
    };
    if let Some(scope) = scope {
        for c in scope.columns() {
            if !wanted.contains(&c.as_str()) {
                wanted.push(c);
            }
        }
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let (mut keys, mut subjects) = (Vec::new(), Vec::new());
    for bucket in 0..reader.bucket_count() {
        for batch in reader.bucket_batches(bucket, true, Some(&wanted))? {
            let text = |name: &str, row: usize| -> Option<String> {
                let array = batch.column_by_name(name)?;
                if array.is_null(row) {
                    return None;
                }
                if let Some(a) = array.as_any().downcast_ref::<StringArray>() {
                    return Some(a.value(row).to_owned());
                }
                array
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .map(|a| a.value(row).to_string())
            };
            for row in 0..batch.num_rows() {
                if let Some(scope) = scope {
                    let values: Vec<ScopeValue> = scope
                        .columns()
                        .iter()
                        .map(|c| scope_value(&batch, c, row))
                        .collect();
                    if !scope.matches(&values) {
                        continue;
                    }
                }
                let Some(normal) = text(key, row).as_deref().and_then(psi::normalise_key) else {
                    continue;
                };
                if seen.contains_key(&normal) {
                    continue;
                }
                let subject_id = text(&subject, row).unwrap_or_default();
                // A protected person takes no part in any match.
                if !protected.commitments.is_empty()
                    && protected
                        .commitments
                        .contains(&protected.committer.commit(&subject_id).0)
                {
                    seen.insert(normal, usize::MAX);
                    continue;
                }
                seen.insert(normal.clone(), keys.len());
                keys.push(normal);
                subjects.push(subject_id);
            }
        }
    }
    Ok((keys, subjects))
}

/// Who is left out of every match: protected subjects, by commitment.
struct Protected {
    commitments: std::collections::HashSet<[u8; 32]>,
    committer: custos_ledger::SubjectCommitter,
}

impl Custos {
    /// Every protected subject, to leave out of a match's keys.
    async fn protected(&self) -> Result<Protected, BrokerError> {
        Ok(Protected {
            commitments: self
                .home()
                .meta()
                .protected_subjects()
                .await?
                .into_iter()
                .map(|(c, _)| c)
                .collect(),
            committer: self.subjects().clone(),
        })
    }
}

/// A refusal of the peer's message, for the ledger and the caller.
fn bad_peer(e: &PsiError) -> Denial {
    Denial::same(format!("the peer's points were refused: {e}"))
}

impl Custos {
    /// The agreement's match grant on this side, its dataset's schema and
    /// the decision, or the denial.
    async fn decide_match(
        &self,
        principal: &Principal,
        agreement: &str,
        dataset: Option<&str>,
        key: Option<&str>,
    ) -> Result<Result<(crate::lookups::Granted, MatchGrant, DatasetSchema), Denial>, BrokerError>
    {
        let meta = self.home().meta();
        // The answering side does not know the dataset: its copy names it.
        let dataset = match dataset {
            Some(d) => d.to_owned(),
            None => match meta.agreement_versions(agreement).await?.last() {
                Some(latest) => Agreement::from_toml(&latest.toml)
                    .ok()
                    .and_then(|a| {
                        a.grants
                            .iter()
                            .find(|g| g.mode == Mode::Match)
                            .map(|g| g.dataset.clone())
                    })
                    .unwrap_or_default(),
                None => String::new(),
            },
        };
        let columns = key.map(|k| vec![k.to_owned()]);
        let granted = match self
            .decide_access(
                principal,
                agreement,
                &dataset,
                Mode::Match,
                columns.as_deref(),
                None,
            )
            .await?
        {
            Ok(g) => g,
            Err(d) => return Ok(Err(d)),
        };
        let grant = granted.grant()?;
        let Some(terms) = grant.matching.clone() else {
            return Ok(Err(Denial::same(
                "the match grant has no `[grants.match]` terms".into(),
            )));
        };
        let Some(record) = meta.dataset(&dataset).await? else {
            return Ok(Err(Denial::same("the dataset is gone".into())));
        };
        let schema = DatasetSchema::from_toml(&record.schema_toml)
            .map_err(|e| BrokerError::Internal(format!("stored schema unreadable: {e}")))?;
        let key = key.unwrap_or(&schema.subject_column().name);
        match schema.column(key) {
            Some(c) if matches!(c.class, ColumnClass::SubjectId | ColumnClass::Identifier) => {}
            _ => {
                return Ok(Err(Denial::same(format!(
                    "the key `{key}` must be a `subject_id` or `identifier` column of `{dataset}`"
                ))));
            }
        }
        Ok(Ok((granted, terms, schema)))
    }

    /// Runs a match against `peer` as the requesting side (see the module
    /// comment) and keeps the result, unverified.
    pub async fn run_match(
        &self,
        actor: &Actor,
        req: MatchRequest<'_>,
        peer: &impl MatchPeer,
    ) -> Result<MatchReport, BrokerError> {
        let mut entry = Entry::new(now_micros(), actor.id(), "match", Decision::Deny)
            .with_attribute("peer", peer.name())
            .with_attribute("side", "requester");
        let Actor::Principal(principal) = actor else {
            return Err(self.refuse(
                entry,
                Denial::same("matches need a principal's token".into()),
            ));
        };
        let meta = self.home().meta();
        if let Some(latest) = meta.agreement_versions(req.agreement).await?.last() {
            entry = entry.with_agreement(req.agreement, latest.version);
        }
        let (granted, terms, schema) = match self
            .decide_match(principal, req.agreement, Some(req.dataset), Some(req.key))
            .await?
        {
            Ok(t) => t,
            Err(denial) => return Err(self.refuse(entry, denial)),
        };
        entry = entry
            .with_agreement(req.agreement, granted.version)
            .with_attribute("dataset", req.dataset)
            .with_attribute("key", req.key);
        if !terms.names_peer(&peer.name()) {
            return Err(self.refuse(
                entry,
                Denial::same(match &terms.peer {
                    Some(named) => format!(
                        "this side's copy of agreement `{}` names the peer `{named}`; a job against any other peer is refused",
                        req.agreement
                    ),
                    None => format!(
                        "this side's copy of agreement `{}` names no peer: add `peer = \"https://…\"` to its `[grants.match]`",
                        req.agreement
                    ),
                }),
            ));
        }
        let scope = compile_row_scope(granted.grant()?.row_scope.as_deref(), &schema)?;
        let protected = self.protected().await?;
        let reader = DatasetReader::open(self.home(), req.dataset).await?;
        let key = req.key.to_owned();
        let (keys, subjects) = tokio::task::spawn_blocking(move || {
            read_keys(&reader, &key, scope.as_ref(), &protected)
        })
        .await
        .map_err(|_| BrokerError::Internal("reading the keys was interrupted".into()))??;
        let pad_to = usize::try_from(terms.pad_to).unwrap_or(usize::MAX);
        if keys.len() > pad_to {
            return Err(self.refuse(
                entry,
                Denial::same(format!(
                    "`{}` has more distinct keys in scope than the {pad_to} points the agreement lets this side show (`pad_to`)",
                    req.dataset
                )),
            ));
        }
        // INVARIANT: jobs are counted and claimed under the agreement's lock.
        let limits = self
            .limit_locks
            .hold_for(&granted.grant()?, req.agreement)
            .await;
        if let Some(denial) = self.match_limit(&granted, MatchSide::Requester).await? {
            return Err(self.refuse(entry, denial));
        }
        let mut raw = [0u8; 16];
        custos_store::keys::random_bytes(&mut raw)?;
        let job_id = format!("m_{}", hex::encode(raw));
        entry = entry
            .with_request(&job_id)
            .with_attribute("reveal", terms.reveal.as_str())
            .with_count("points", terms.pad_to);
        let job = MatchJob {
            job_id: job_id.clone(),
            side: MatchSide::Requester,
            agreement_id: req.agreement.to_owned(),
            agreement_version: granted.version,
            dataset: req.dataset.to_owned(),
            principal: principal.id.clone(),
            peer: peer.name(),
            reveal: terms.reveal.as_str().to_owned(),
            state: MatchState::Running,
            match_count: None,
            created_at: custos_store::home::now_rfc3339(),
            confirmed_by: None,
            confirmed_at: None,
        };
        // INVARIANT: nothing derived from the data leaves, and no job is
        // claimed in the catalogue, before this is durable.
        let allowed = self.append(&Entry {
            decision: Decision::Allow,
            ..entry.clone()
        })?;
        meta.claim_match_job(&job).await?;
        drop(limits);
        let outcome = self
            .exchange_with(allowed, peer, &job_id, req.agreement, &terms, &keys)
            .await
            .and_then(|(reveal, found, peer_count, received)| {
                let here = match &found {
                    Found::Indexes(indexes) => indexes.len() as u64,
                    Found::Count(n) => *n,
                };
                if here == peer_count {
                    Ok((reveal, found, peer_count, received))
                } else {
                    Err(Denial::same(
                        "the two sides counted different matches: one side did not follow the protocol, so the job is void".into(),
                    ))
                }
            });
        let (reveal, found, peer_count, points_received) = match outcome {
            Ok(o) => o,
            Err(denial) => {
                let _ = meta
                    .finish_match_job(&job_id, MatchState::Failed, None, &[])
                    .await;
                let result = Entry {
                    action: "match.result".into(),
                    decision: Decision::Error,
                    ..entry
                };
                return Err(self.refuse(result, denial));
            }
        };
        let matches = match &found {
            Found::Indexes(indexes) => indexes.len() as u64,
            Found::Count(n) => *n,
        };
        let (tokens, commitments) = match &found {
            Found::Count(_) => (Vec::new(), Vec::new()),
            Found::Indexes(indexes) => {
                let tokeniser = Tokeniser::new(
                    &self
                        .home()
                        .master_key()
                        .derive(&format!("pseudonym-tokens/{}", req.agreement)),
                )
                .map_err(|e| BrokerError::Invalid(e.to_string()))?;
                let column = &schema.subject_column().name;
                let mut tokens: Vec<String> = indexes
                    .iter()
                    .map(|i| tokeniser.token(column, &subjects[*i]))
                    .collect();
                tokens.sort_unstable();
                let commitments: Vec<_> = indexes
                    .iter()
                    .map(|i| self.subjects().commit(&subjects[*i]))
                    .collect();
                (tokens, commitments)
            }
        };
        // The result, with every matched subject as a commitment, is durable
        // before it is kept or shown.
        let first = Entry {
            action: "match.result".into(),
            decision: Decision::Allow,
            ..entry.clone()
        }
        .with_attribute("reveal_applied", reveal.as_str())
        .with_attribute("state", "unverified")
        // The count is the requester's result (kept in the catalogue),
        // not the public's.
        .with_count("points_received", points_received);
        let entries = entries_naming(self.subjects(), first, &commitments);
        let indexes = self.append_all(&entries)?;
        meta.finish_match_job(&job_id, MatchState::Unverified, Some(matches), &tokens)
            .await?;
        Ok(MatchReport {
            job_id,
            agreement: req.agreement.to_owned(),
            agreement_version: granted.version,
            dataset: req.dataset.to_owned(),
            key: req.key.to_owned(),
            peer: peer.name(),
            reveal,
            state: MatchState::Unverified,
            matches,
            peer_count,
            points_sent: terms.pad_to,
            points_received,
            tokens,
            ledger_index: indexes[0],
        })
    }

    /// The requester's three steps with the peer; a denial says why the
    /// job ended without a result. Takes the `match` entry's receipt: no
    /// point is sent before it is durable.
    async fn exchange_with(
        &self,
        _allowed: Recorded,
        peer: &impl MatchPeer,
        job_id: &str,
        agreement: &str,
        terms: &MatchGrant,
        keys: &[String],
    ) -> Result<(Reveal, Found, u64, u64), Denial> {
        let from_peer = |e: PeerError| Denial {
            recorded: match &e {
                PeerError::Refused(_) => "the peer refused the job".into(),
                PeerError::Failed(_) => "the peer failed".into(),
            },
            message: e.to_string(),
        };
        let sent = usize::try_from(terms.pad_to).unwrap_or(usize::MAX);
        let offer = MatchOffer {
            job_id: job_id.to_owned(),
            agreement: agreement.to_owned(),
            reveal: terms.reveal,
            points: terms.pad_to,
        };
        let opened = peer.open(&offer).await.map_err(from_peer)?;
        if opened.job_id != job_id {
            return Err(Denial::same("the peer answered for another job".into()));
        }
        let received = usize::try_from(opened.points)
            .ok()
            .filter(|n| (1..=psi::MAX_POINTS).contains(n))
            .ok_or_else(|| {
                bad_peer(&PsiError::TooMany(
                    usize::try_from(opened.points).unwrap_or(usize::MAX),
                ))
            })?;
        // This side applies its own copy too: the narrower reveal wins.
        let reveal = terms.reveal.narrower(opened.reveal);
        let dst = psi::job_dst(job_id);
        let party = Party::new().map_err(|e| bad_peer(&e))?;
        let (party, blinded) = {
            let keys = keys.to_vec();
            tokio::task::spawn_blocking(move || {
                let blinded = party.blind(&dst, &keys, sent);
                (party, blinded)
            })
            .await
            .map_err(|_| Denial::same("blinding was interrupted".into()))?
        };
        let blinded = blinded.map_err(|e| Denial::same(format!("blinding failed: {e}")))?;
        let reply = peer
            .exchange(
                job_id,
                psi::encode_points(&blinded.points),
                32 * (sent + received),
            )
            .await
            .map_err(from_peer)?;
        let all = psi::decode_points(&reply, sent + received).map_err(|e| bad_peer(&e))?;
        let (ours_by_peer, theirs) = all.split_at(sent);
        psi::check_distinct(ours_by_peer).map_err(|e| bad_peer(&e))?;
        let (ours_by_peer, theirs) = (ours_by_peer.to_vec(), theirs.to_vec());
        let work = tokio::task::spawn_blocking(move || {
            let mut theirs_reblinded = party.reblind(&theirs, received)?;
            let found = match reveal {
                Reveal::Matches => {
                    Found::Indexes(psi::matches(&blinded, &ours_by_peer, &theirs_reblinded))
                }
                Reveal::Count => {
                    Found::Count(psi::match_count(&ours_by_peer, &theirs_reblinded) as u64)
                }
            };
            psi::shuffle(&mut theirs_reblinded)?;
            Ok::<_, PsiError>((found, theirs_reblinded))
        })
        .await
        .map_err(|_| Denial::same("matching was interrupted".into()))?;
        let (found, theirs_reblinded) = work.map_err(|e| bad_peer(&e))?;
        let peer_count = peer
            .finish(job_id, psi::encode_points(&theirs_reblinded))
            .await
            .map_err(from_peer)?;
        Ok((reveal, found, peer_count, opened.points))
    }

    /// Step 1 on the answering side: decides under this side's copy of the
    /// agreement, claims the job id (a replay is refused), ledgers the job
    /// and blinds this side's keys.
    pub async fn open_match(
        &self,
        actor: &Actor,
        offer: &MatchOffer,
    ) -> Result<MatchOpened, BrokerError> {
        let mut entry = Entry::new(now_micros(), actor.id(), "match.open", Decision::Deny)
            .with_attribute("side", "responder");
        let Actor::Principal(principal) = actor else {
            return Err(self.refuse(
                entry,
                Denial::same("matches need a principal's token".into()),
            ));
        };
        if !valid_job_id(&offer.job_id) {
            return Err(self.refuse(
                entry,
                Denial {
                    message: "a job id is `m_` and 32 lowercase hex digits".into(),
                    recorded: "malformed job id".into(),
                },
            ));
        }
        entry = entry.with_request(&offer.job_id);
        let meta = self.home().meta();
        if let Some(latest) = meta.agreement_versions(&offer.agreement).await?.last() {
            entry = entry.with_agreement(&offer.agreement, latest.version);
        }
        let (granted, terms, schema) = match self
            .decide_match(principal, &offer.agreement, None, None)
            .await?
        {
            Ok(t) => t,
            Err(denial) => return Err(self.refuse(entry, denial)),
        };
        let grant = granted.grant()?;
        let dataset = grant.dataset.clone();
        entry = entry
            .with_agreement(&offer.agreement, granted.version)
            .with_attribute("dataset", &dataset)
            .with_count("points_announced", offer.points);
        let announced = usize::try_from(offer.points).unwrap_or(usize::MAX);
        // This side reads no larger a list than its own copy lets it send.
        // Exactly the agreed size: a smaller job would let a partner probe
        // with a handful of guessed keys at a time.
        if offer.points != terms.pad_to {
            return Err(self.refuse(
                entry,
                Denial::same(format!(
                    "a job here carries exactly {} points (the agreement's `pad_to`), not {}",
                    terms.pad_to, offer.points
                )),
            ));
        }
        let open_jobs = self
            .pending_matches
            .lock()
            .map_err(|_| BrokerError::Internal("match state poisoned".into()))?
            .values()
            .filter(|p| p.principal == principal.id && p.since.elapsed() < PENDING_FOR)
            .count();
        if open_jobs >= OPEN_JOBS_PER_PRINCIPAL {
            return Err(self.refuse(
                entry,
                Denial::same(format!(
                    "you have {open_jobs} unfinished match jobs here; finish them first"
                )),
            ));
        }
        // INVARIANT: jobs are counted and claimed under the agreement's lock.
        let limits = self.limit_locks.hold_for(&grant, &offer.agreement).await;
        if let Some(denial) = self.match_limit(&granted, MatchSide::Responder).await? {
            return Err(self.refuse(entry, denial));
        }
        let reveal = terms.reveal.narrower(offer.reveal);
        let job = MatchJob {
            job_id: offer.job_id.clone(),
            side: MatchSide::Responder,
            agreement_id: offer.agreement.clone(),
            agreement_version: granted.version,
            dataset: dataset.clone(),
            principal: principal.id.clone(),
            peer: principal.org.clone(),
            reveal: reveal.as_str().to_owned(),
            state: MatchState::Running,
            match_count: None,
            created_at: custos_store::home::now_rfc3339(),
            confirmed_by: None,
            confirmed_at: None,
        };
        let claimed = meta.claim_match_job(&job).await?;
        drop(limits);
        if !claimed {
            return Err(self.refuse(
                entry,
                Denial::same(format!(
                    "job `{}` was opened before: a replayed job is refused; start a new job",
                    offer.job_id
                )),
            ));
        }
        let prepared = self
            .prepare_answer(&offer.job_id, &grant, &schema, &terms, entry, reveal)
            .await;
        let (opened, party, blinded) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = meta
                    .finish_match_job(&offer.job_id, MatchState::Failed, None, &[])
                    .await;
                return Err(e);
            }
        };
        let mut pending = self
            .pending_matches
            .lock()
            .map_err(|_| BrokerError::Internal("match state poisoned".into()))?;
        pending.retain(|_, p| p.since.elapsed() < PENDING_FOR);
        pending.insert(
            offer.job_id.clone(),
            PendingMatch {
                principal: principal.id.clone(),
                agreement: offer.agreement.clone(),
                version: granted.version,
                reveal,
                announced,
                opened,
                party,
                own: blinded.points,
                theirs_reblinded: None,
                since: Instant::now(),
            },
        );
        Ok(MatchOpened {
            job_id: offer.job_id.clone(),
            reveal,
            points: terms.pad_to,
        })
    }

    /// The answering side's keys, read, checked against `pad_to`, ledgered
    /// (`match.open`) and only then blinded.
    async fn prepare_answer(
        &self,
        job_id: &str,
        grant: &Grant,
        schema: &DatasetSchema,
        terms: &MatchGrant,
        entry: Entry,
        reveal: Reveal,
    ) -> Result<(Recorded, Party, psi::Blinded), BrokerError> {
        let scope = compile_row_scope(grant.row_scope.as_deref(), schema)?;
        let reader = DatasetReader::open(self.home(), &grant.dataset).await?;
        let key = schema.subject_column().name.clone();
        let protected = self.protected().await?;
        let (keys, _) = tokio::task::spawn_blocking(move || {
            read_keys(&reader, &key, scope.as_ref(), &protected)
        })
        .await
        .map_err(|_| BrokerError::Internal("reading the keys was interrupted".into()))??;
        let pad_to = usize::try_from(terms.pad_to).unwrap_or(usize::MAX);
        if keys.len() > pad_to {
            return Err(self.refuse(
                entry,
                Denial {
                    // The requester reads this: "more keys than pad_to" is
                    // a bit about this side's size, which padding hides.
                    message: "this side cannot take part in the job under its own terms; nothing was sent".into(),
                    recorded: format!(
                        "this side has more distinct keys than the {pad_to} points its agreement lets it show (`pad_to`)"
                    ),
                },
            ));
        }
        // INVARIANT: the blinded keys leave only after this is durable.
        let opened = self.append(
            &Entry {
                decision: Decision::Allow,
                ..entry
            }
            .with_attribute("reveal", reveal.as_str())
            .with_count("points", terms.pad_to),
        )?;
        let party = Party::new().map_err(|e| BrokerError::Internal(e.to_string()))?;
        let dst = psi::job_dst(job_id);
        let (party, blinded) = tokio::task::spawn_blocking(move || {
            let blinded = party.blind(&dst, &keys, pad_to);
            (party, blinded)
        })
        .await
        .map_err(|_| BrokerError::Internal("blinding was interrupted".into()))?;
        Ok((
            opened,
            party,
            blinded.map_err(|e| BrokerError::Internal(e.to_string()))?,
        ))
    }

    /// The grant's `requests_per_hour`, counted in match jobs of this
    /// side under the agreement (a requester with a guessed list needs a
    /// job per guess, so the limit is what bounds probing).
    async fn match_limit(
        &self,
        granted: &crate::lookups::Granted,
        side: MatchSide,
    ) -> Result<Option<Denial>, BrokerError> {
        let grant = granted.grant()?;
        let id = &granted.agreement.id;
        let jobs_since = |hours: i64| {
            let since = (chrono::Utc::now() - chrono::Duration::hours(hours))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            async move {
                self.home()
                    .meta()
                    .count_match_jobs_since(id, side, &since)
                    .await
            }
        };
        if let Some(limit) = grant.limits.requests_per_hour
            && jobs_since(1).await? >= u64::from(limit)
        {
            return Ok(Some(Denial::same(format!(
                "limit exceeded: {limit} match jobs per hour under agreement `{id}`"
            ))));
        }
        // Keys matched per day: every job shows exactly `pad_to` points.
        if let (Some(cap), Some(terms)) = (grant.limits.subjects_per_day, &grant.matching) {
            let jobs = jobs_since(24).await?;
            if (jobs + 1).saturating_mul(terms.pad_to) > u64::from(cap) {
                return Ok(Some(Denial::same(format!(
                    "limit exceeded: {cap} keys matched per day under agreement `{id}` ({} per job)",
                    terms.pad_to
                ))));
            }
        }
        Ok(None)
    }

    /// Takes an answering side's pending job for `actor` (only the
    /// principal who opened it may continue it).
    fn take_pending(
        &self,
        actor: &Actor,
        job_id: &str,
        action: &str,
    ) -> Result<(PendingMatch, Entry), BrokerError> {
        let entry = Entry::new(now_micros(), actor.id(), action, Decision::Deny)
            .with_attribute("side", "responder");
        let taken = {
            let mut pending = self
                .pending_matches
                .lock()
                .map_err(|_| BrokerError::Internal("match state poisoned".into()))?;
            // Someone else's job is left alone (and looks like no job at all).
            match pending.get(job_id) {
                Some(p) if p.principal == actor.id() => pending.remove(job_id),
                _ => None,
            }
        };
        match taken {
            Some(p) => {
                let entry = entry
                    .with_request(job_id)
                    .with_agreement(&p.agreement, p.version);
                Ok((p, entry))
            }
            None => Err(self.refuse(
                entry,
                Denial {
                    message: "no open match job with this id for you (it finished, failed, expired, or was never opened)".into(),
                    recorded: "no such open match job".into(),
                },
            )),
        }
    }

    /// How many bytes the next message of an answering side's open job
    /// must have (the server reads no more than that), if the job exists.
    pub fn match_message_bytes(&self, actor: &Actor, job_id: &str) -> Option<usize> {
        let pending = self.pending_matches.lock().ok()?;
        let job = pending.get(job_id).filter(|p| p.principal == actor.id())?;
        Some(
            32 * match job.theirs_reblinded {
                None => job.announced,
                Some(_) => job.own.len(),
            },
        )
    }

    /// Ends an answering side's job whose next message was longer than
    /// announced (the server stopped reading it).
    pub async fn refuse_long_match_message(
        &self,
        actor: &Actor,
        job_id: &str,
        action: &str,
    ) -> BrokerError {
        let (pending, entry) = match self.take_pending(actor, job_id, action) {
            Ok(taken) => taken,
            Err(e) => return e,
        };
        let announced = match pending.theirs_reblinded {
            None => pending.announced,
            Some(_) => pending.own.len(),
        };
        self.fail_pending(entry, job_id, bad_peer(&PsiError::TooLong(announced)))
            .await
    }

    /// Ends an answering side's job (catalogue `failed`) and records why.
    async fn fail_pending(&self, entry: Entry, job_id: &str, denial: Denial) -> BrokerError {
        let _ = self
            .home()
            .meta()
            .finish_match_job(job_id, MatchState::Failed, None, &[])
            .await;
        self.refuse(entry, denial)
    }

    /// Step 2 on the answering side: checks and re-blinds the requester's
    /// points (shuffled back in count-only jobs) and returns them followed
    /// by this side's own blinded points.
    pub async fn exchange_match(
        &self,
        actor: &Actor,
        job_id: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, BrokerError> {
        let (mut pending, entry) = self.take_pending(actor, job_id, "match.exchange")?;
        if pending.theirs_reblinded.is_some() {
            return Err(self
                .fail_pending(
                    entry,
                    job_id,
                    Denial::same(
                        "this job's points were exchanged already; the job is over".into(),
                    ),
                )
                .await);
        }
        let points = match psi::decode_points(body, pending.announced) {
            Ok(p) => p,
            Err(e) => return Err(self.fail_pending(entry, job_id, bad_peer(&e)).await),
        };
        let (party, reveal) = (pending.party, pending.reveal);
        let (party, work) = tokio::task::spawn_blocking(move || {
            let work = party.reblind(&points, points.len()).and_then(|mut r| {
                if reveal == Reveal::Count {
                    psi::shuffle(&mut r)?;
                }
                Ok(r)
            });
            (party, work)
        })
        .await
        .map_err(|_| BrokerError::Internal("re-blinding was interrupted".into()))?;
        let reblinded = match work {
            Ok(r) => r,
            Err(e) => return Err(self.fail_pending(entry, job_id, bad_peer(&e)).await),
        };
        let mut reply = psi::encode_points(&reblinded);
        reply.extend(psi::encode_points(&pending.own));
        pending.party = party;
        pending.theirs_reblinded = Some(reblinded);
        self.pending_matches
            .lock()
            .map_err(|_| BrokerError::Internal("match state poisoned".into()))?
            .insert(job_id.to_owned(), pending);
        Ok(reply)
    }

    /// Step 3 on the answering side: the requester's re-blinding of this
    /// side's points (shuffled) gives the count, which is ledgered and
    /// returned. The job ends here.
    pub async fn finish_match(
        &self,
        actor: &Actor,
        job_id: &str,
        body: &[u8],
    ) -> Result<u64, BrokerError> {
        let (pending, entry) = self.take_pending(actor, job_id, "match.finish")?;
        let Some(theirs) = pending.theirs_reblinded.as_ref() else {
            return Err(self
                .fail_pending(
                    entry,
                    job_id,
                    Denial::same(
                        "this job's points were not exchanged yet; the job is over".into(),
                    ),
                )
                .await);
        };
        let points = match psi::decode_points(body, pending.own.len())
            .and_then(|p| psi::check_distinct(&p).map(|()| p))
        {
            Ok(p) => p,
            Err(e) => return Err(self.fail_pending(entry, job_id, bad_peer(&e)).await),
        };
        let count = psi::match_count(theirs, &points) as u64;
        // The count is the requester's answer; this side keeps it in its
        // catalogue, not in the public entry.
        self.append(&Entry {
            decision: Decision::Allow,
            ..entry
        })?;
        self.home()
            .meta()
            .finish_match_job(job_id, MatchState::Unverified, Some(count), &[])
            .await?;
        Ok(count)
    }

    /// A custodian (role `approver`, not the one who ran it) confirms a
    /// job's result; until then no adverse action may rest on it.
    pub async fn confirm_match(
        &self,
        actor: &Actor,
        job_id: &str,
    ) -> Result<MatchJob, BrokerError> {
        let entry = Entry::new(now_micros(), actor.id(), "match.confirm", Decision::Deny);
        let Actor::Principal(principal) = actor else {
            return Err(self.refuse(
                entry,
                Denial::same("confirming needs a principal's token".into()),
            ));
        };
        if !principal.has_role(Role::Approver) {
            return Err(self.refuse(
                entry,
                Denial::same("confirming a match needs the `approver` role".into()),
            ));
        }
        if let Some(rule) = crate::lookups::approver_conflict(principal) {
            return Err(self.refuse(entry, Denial::same(rule)));
        }
        let meta = self.home().meta();
        let Some(job) = meta.match_job(job_id).await? else {
            return Err(self.refuse(
                entry,
                Denial {
                    message: format!("no match job `{job_id}`"),
                    recorded: "unknown match job".into(),
                },
            ));
        };
        let entry = entry
            .with_request(job_id)
            .with_agreement(&job.agreement_id, job.agreement_version);
        if job.principal == principal.id {
            return Err(self.refuse(
                entry,
                Denial::same("the principal who ran a match may not confirm it".into()),
            ));
        }
        if job.side != MatchSide::Requester {
            return Err(self.refuse(
                entry,
                Denial::same(
                    "only the requesting side's result is confirmed; this home answered the job"
                        .into(),
                ),
            ));
        }
        // The result is the requesting organisation's to confirm: this
        // side's copy names it as the requester.
        let requester = self
            .agreement_at(&job.agreement_id, job.agreement_version)
            .await?
            .map(|a| a.parties.requester);
        if requester.as_deref() != Some(principal.org.as_str()) {
            return Err(self.refuse(
                entry,
                Denial::same(
                    "a match result is confirmed by an approver of the organisation that ran it"
                        .into(),
                ),
            ));
        }
        if job.state != MatchState::Unverified {
            return Err(self.refuse(
                entry,
                Denial::same(format!(
                    "job `{job_id}` is {}, only an unverified result can be confirmed",
                    match job.state {
                        MatchState::Running => "still running",
                        MatchState::Confirmed => "confirmed already",
                        _ => "failed",
                    }
                )),
            ));
        }
        self.append(&Entry {
            decision: Decision::Allow,
            ..entry
        })?;
        if !meta
            .confirm_match_job(job_id, &principal.id, &custos_store::home::now_rfc3339())
            .await?
        {
            return Err(BrokerError::Denied(format!(
                "job `{job_id}` was confirmed by someone else meanwhile"
            )));
        }
        meta.match_job(job_id)
            .await?
            .ok_or_else(|| BrokerError::Internal("the job vanished".into()))
    }

    /// A job and its tokens, for the principal who ran it or anyone with
    /// `approver`, `admin` or `overseer` (overseers see no tokens).
    pub async fn match_result(
        &self,
        actor: &Actor,
        job_id: &str,
    ) -> Result<(MatchJob, Vec<String>), BrokerError> {
        let meta = self.home().meta();
        let Actor::Principal(principal) = actor else {
            return Err(BrokerError::Denied(
                "reading a match needs a principal's token".into(),
            ));
        };
        let job = meta
            .match_job(job_id)
            .await?
            .ok_or_else(|| BrokerError::Denied(format!("no match job `{job_id}`")))?;
        let owner = job.principal == principal.id;
        if !(owner || principal.has_role(Role::Approver) || principal.has_role(Role::Admin)) {
            if principal.has_role(Role::Overseer) {
                return Ok((job, Vec::new()));
            }
            return Err(BrokerError::Denied(
                "only the principal who ran a match, approvers, admins and overseers may read it"
                    .into(),
            ));
        }
        let tokens = meta.match_tokens(job_id).await?;
        // Reading the matched subjects' tokens is itself an access.
        self.append(
            &Entry::new(now_micros(), actor.id(), "match.read", Decision::Allow)
                .with_request(job_id)
                .with_agreement(&job.agreement_id, job.agreement_version),
        )?;
        Ok((job, tokens))
    }
}

/// What the requester found.
enum Found {
    /// Positions of its matched keys.
    Indexes(Vec<usize>),
    /// Only how many.
    Count(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_have_one_form() {
        assert!(valid_job_id("m_0123456789abcdef0123456789abcdef"));
        assert!(!valid_job_id("m_0123456789ABCDEF0123456789abcdef"));
        assert!(!valid_job_id("x_0123456789abcdef0123456789abcdef"));
        assert!(!valid_job_id("m_0123"));
    }
}
