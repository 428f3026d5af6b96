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

mod answerer;
mod requester;

use std::collections::HashMap;

use arrow::array::{Array, Int64Array, StringArray};
use custos_ledger::Entry;
use custos_model::{ColumnClass, DatasetSchema, Principal};
use custos_policy::{Agreement, MatchGrant, Mode, Reveal, ScopeFilter, ScopeValue};
use custos_privacy::psi::{self, PsiError};
use custos_store::DatasetReader;
use custos_store::matches::{MatchSide, MatchState};
use serde::{Deserialize, Serialize};

use crate::decide::{Access, Denial, Granted, Refusal};
use crate::lookups::scope_value;
use crate::recorded::Recorded;
use crate::{BrokerError, Custos};

pub(crate) use answerer::PendingMatches;

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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Decides a match job on this side (its own copy of the agreement,
    /// its grant, terms and key column); a denial is ledgered as `entry`
    /// before the error returns.
    async fn decide_match(
        &self,
        principal: &Principal,
        agreement: &str,
        dataset: Option<&str>,
        key: Option<&str>,
        entry: &Entry,
    ) -> Result<(Granted, MatchGrant, DatasetSchema), BrokerError> {
        self.judge_match(principal, agreement, dataset, key)
            .await
            .map_err(|r| self.refused(entry, r))
    }

    /// The agreement's match grant on this side, its dataset's schema and
    /// the decision, or the denial.
    async fn judge_match(
        &self,
        principal: &Principal,
        agreement: &str,
        dataset: Option<&str>,
        key: Option<&str>,
    ) -> Result<(Granted, MatchGrant, DatasetSchema), Refusal> {
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
        let granted = self
            .judge(Access {
                principal,
                agreement,
                dataset: &dataset,
                mode: Mode::Match,
                columns: columns.as_deref(),
                subject: None,
            })
            .await?;
        let grant = granted.grant()?;
        let Some(terms) = grant.matching.clone() else {
            return Err(
                Denial::same("the match grant has no `[grants.match]` terms".into()).into(),
            );
        };
        let Some(record) = meta.dataset(&dataset).await? else {
            return Err(Denial::same("the dataset is gone".into()).into());
        };
        let schema = DatasetSchema::from_toml(&record.schema_toml)
            .map_err(|e| BrokerError::Internal(format!("stored schema unreadable: {e}")))?;
        let key = key.unwrap_or(&schema.subject_column().name);
        match schema.column(key) {
            Some(c) if matches!(c.class, ColumnClass::SubjectId | ColumnClass::Identifier) => {}
            _ => {
                return Err(Denial::same(format!(
                    "the key `{key}` must be a `subject_id` or `identifier` column of `{dataset}`"
                ))
                .into());
            }
        }
        Ok((granted, terms, schema))
    }

    /// The grant's `requests_per_hour`, counted in match jobs of this
    /// side under the agreement (a requester with a guessed list needs a
    /// job per guess, so the limit is what bounds probing).
    async fn match_limit(
        &self,
        granted: &Granted,
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
