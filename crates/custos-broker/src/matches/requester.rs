//! The requesting side of a match: decide, ledger `match`, read and
//! normalise the key column, drive the peer through open → exchange →
//! finish, ledger `match.result` with the matched subjects' commitments,
//! keep the result (unverified) until a custodian confirms it.

use custos_ledger::{Decision, Entry};
use custos_model::Role;
use custos_policy::{MatchGrant, Reveal};
use custos_privacy::psi::{self, Party, PsiError};
use custos_privacy::tokens::Tokeniser;
use custos_store::matches::{MatchJob, MatchSide, MatchState};

use crate::decide::Denial;
use crate::lookups::compile_row_scope;
use crate::recorded::Recorded;
use crate::{Acting, Actor, BrokerError, Custos, entries_naming, now_micros};

use super::*;

impl Custos {
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
        let Actor(Acting::Principal(principal)) = actor else {
            return Err(self.refuse(
                entry,
                Denial::same("matches need a principal's token".into()),
            ));
        };
        let meta = self.home().meta();
        if let Some(latest) = meta.agreement_versions(req.agreement).await?.last() {
            entry = entry.with_agreement(req.agreement, latest.version);
        }
        let (granted, terms, schema) = self
            .decide_match(
                principal,
                req.agreement,
                Some(req.dataset),
                Some(req.key),
                &entry,
            )
            .await?;
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
        let reader = self
            .open_dataset(req.dataset, crate::contents::Reading::All)
            .await?;
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
            .hold_for(self.home(), &granted.grant()?, req.agreement)
            .await?;
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
        if let Some(mut limits) = limits
            && let Err(lost) = limits.confirm().await
        {
            // Counted without the lock: the job never runs.
            let _ = meta
                .finish_match_job(&job_id, MatchState::Failed, None, &[])
                .await;
            return Err(lost);
        }
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
                        .keys()
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

    /// A custodian (role `approver`, not the one who ran it) confirms a
    /// job's result; until then no adverse action may rest on it.
    pub async fn confirm_match(
        &self,
        actor: &Actor,
        job_id: &str,
    ) -> Result<MatchJob, BrokerError> {
        let entry = Entry::new(now_micros(), actor.id(), "match.confirm", Decision::Deny);
        let Actor(Acting::Principal(principal)) = actor else {
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
        // Every refusal to read a result is ledgered, like every denial.
        let refused = Entry::new(now_micros(), actor.id(), "match.read", Decision::Deny);
        let Actor(Acting::Principal(principal)) = actor else {
            return Err(self.refuse(
                refused,
                Denial::same("reading a match needs a principal's token".into()),
            ));
        };
        let Some(job) = meta.match_job(job_id).await? else {
            return Err(self.refuse(
                refused,
                Denial {
                    message: format!("no match job `{job_id}`"),
                    recorded: "no such match job".into(),
                },
            ));
        };
        let owner = job.principal == principal.id;
        // Approvers read a result to confirm it: only those of the
        // organisation that ran it (as `confirm_match` requires).
        let approver_of_requester = principal.has_role(Role::Approver)
            && self
                .agreement_at(&job.agreement_id, job.agreement_version)
                .await?
                .is_some_and(|a| a.parties.requester == principal.org);
        if !(owner || approver_of_requester || principal.has_role(Role::Admin)) {
            if principal.has_role(Role::Overseer) {
                return Ok((job, Vec::new()));
            }
            return Err(self.refuse(
                refused.with_request(job_id),
                Denial::same(
                    "only the principal who ran a match, approvers of its organisation, admins and overseers may read it"
                        .into(),
                ),
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
