//! The answering side of a match: open (decide under its own copy, claim
//! the job id once, ledger `match.open`, blind), exchange (check, re-blind,
//! shuffle back for count-only), finish (count, ledger `match.finish`). A
//! job lives in memory between the steps (30 minutes at most).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use custos_ledger::{Decision, Entry};
use custos_model::DatasetSchema;
use custos_policy::{Grant, MatchGrant, Reveal};
use custos_privacy::psi::{self, Encoded, Party, PsiError};
use custos_store::matches::{MatchJob, MatchSide, MatchState};

use crate::decide::Denial;
use crate::lookups::compile_row_scope;
use crate::recorded::Recorded;
use crate::{Acting, Actor, BrokerError, Custos, now_micros};

use super::*;

/// How long an answering side keeps an unfinished job.
const PENDING_FOR: Duration = Duration::from_secs(30 * 60);

/// Unfinished jobs one principal may hold open on an answering side (each
/// holds a blinded copy of the dataset's keys).
const OPEN_JOBS_PER_PRINCIPAL: usize = 2;

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

impl Custos {
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
        let Actor(Acting::Principal(principal)) = actor else {
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
        let (granted, terms, schema) = self
            .decide_match(principal, &offer.agreement, None, None, &entry)
            .await?;
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
        let limits = self
            .limit_locks
            .hold_for(self.home(), &grant, &offer.agreement)
            .await?;
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
        if claimed
            && let Some(mut limits) = limits
            && let Err(lost) = limits.confirm().await
        {
            // Counted without the lock: the job never answers.
            let _ = meta
                .finish_match_job(&offer.job_id, MatchState::Failed, None, &[])
                .await;
            return Err(lost);
        }
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
        let reader = self
            .open_dataset(&grant.dataset, crate::contents::Reading::All)
            .await?;
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
}
