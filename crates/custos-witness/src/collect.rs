//! The log's side: bring the newest checkpoint to every witness of the
//! policy and publish it with their cosignatures once the quorum holds.
//!
//! Each witness gets the consistency proof from the size it last cosigned
//! (remembered in `witnesses.json`); a 409 answer names the size it really
//! holds, and the request is rebuilt once from there. A witness that is
//! down, refuses, or answers with a cosignature that does not verify is
//! recorded in `witnesses.json` with the reason, and the round goes on with
//! the others. Nothing here can make the ledger lose an entry: the ledger
//! is read only, and the two files written are the log's own notes about
//! witnessing.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos_ledger::cosignature::WitnessKey;
use custos_ledger::policy::WitnessPolicy;
use custos_ledger::witness_wire::{
    ADD_CHECKPOINT_PATH, AddCheckpoint, parse_cosignatures, parse_size,
};
use custos_ledger::witnessed::{
    WitnessProgress, add_cosignatures, read_state, read_witnessed, verify_witnessed, write_state,
    write_witnessed,
};
use custos_ledger::{LedgerError, LedgerReader, VerifiedCheckpoint, verify_checkpoint};
use signed_note::Signature;
use tokio::task::JoinSet;

/// How long one request to a witness may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// File locked while a round runs, so two collectors do not interleave.
const LOCK: &str = "witness.lock";

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// The checkpoint size submitted.
    pub size: u64,
    /// Witnesses that cosigned it, with their times.
    pub cosigned: BTreeMap<String, u64>,
    /// Witnesses that did not, with the reason.
    pub failed: BTreeMap<String, String>,
    /// Whether the quorum held and the checkpoint was published as witnessed.
    pub published: bool,
}

/// Collects cosignatures for one ledger directory.
#[derive(Debug, Clone)]
pub struct Collector {
    ledger_dir: PathBuf,
    log_key: String,
    policy: WitnessPolicy,
    client: reqwest::Client,
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hash(hex_text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).map_err(|_| "a proof hash is malformed".to_owned())?;
    Ok(out)
}

impl Collector {
    /// A collector for the ledger in `ledger_dir`, whose checkpoints verify
    /// with `log_key`, submitting to the witnesses of `policy`.
    pub fn new(ledger_dir: &Path, log_key: &str, policy: WitnessPolicy) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("the HTTP client could not be built: {e}"))?;
        Ok(Self {
            ledger_dir: ledger_dir.to_owned(),
            log_key: log_key.to_owned(),
            policy,
            client,
        })
    }

    /// The policy.
    pub fn policy(&self) -> &WitnessPolicy {
        &self.policy
    }

    /// Whether a round is due: the newest checkpoint is not the witnessed
    /// one, or the witnessed one's cosignatures are older than `refresh`
    /// (fresh cosignatures show verifiers the log is not hiding a fork).
    pub fn due(&self, refresh: Duration) -> bool {
        let latest = LedgerReader::new(&self.ledger_dir).latest(&self.log_key);
        let Ok(latest) = latest else { return true };
        let witnessed = read_witnessed(&self.ledger_dir)
            .ok()
            .flatten()
            .and_then(|note| verify_witnessed(&note, &self.log_key, &self.policy).ok());
        match witnessed {
            Some(w) if w.checkpoint.size == latest.size => {
                let oldest = w.signed_by.values().min().copied().unwrap_or(0);
                now_seconds().saturating_sub(oldest) >= refresh.as_secs()
            }
            _ => true,
        }
    }

    /// Submits the newest checkpoint to every witness with a URL, records
    /// each one's progress and publishes the checkpoint as witnessed once
    /// the quorum has cosigned.
    pub async fn round(&self) -> Result<RoundReport, LedgerError> {
        let dir = self.ledger_dir.clone();
        let lock_path = dir.join(LOCK);
        let lock = File::create(&lock_path).map_err(|cause| LedgerError::Io {
            path: lock_path.clone(),
            cause,
        })?;
        // Another collector (a server, or `custos ledger witness`) is at
        // it; its round covers this one.
        if lock.try_lock().is_err() {
            return Err(LedgerError::Busy(dir));
        }
        let latest = LedgerReader::new(&dir).latest(&self.log_key)?;
        let mut state = read_state(&dir)?;
        let text = signed_note::Note::from_bytes(&latest.note)
            .map_err(|e| LedgerError::Verify(e.to_string()))?
            .text()
            .to_vec();
        let mut tasks = JoinSet::new();
        for (name, witness) in self.policy.witnesses() {
            let Some(url) = witness.url.clone() else {
                continue;
            };
            let old = state.get(name).map_or(0, |p| p.size);
            let job = Submission {
                client: self.client.clone(),
                ledger_dir: dir.clone(),
                url,
                key: witness.key.clone(),
                latest: latest.clone(),
                text: text.clone(),
            };
            let name = name.to_owned();
            tasks.spawn(async move { (name, job.run(old).await) });
        }
        let mut report = RoundReport {
            size: latest.size,
            ..RoundReport::default()
        };
        let mut lines = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((name, outcome)) = joined else {
                continue;
            };
            let progress = state
                .entry(name.clone())
                .or_insert_with(WitnessProgress::default);
            match outcome {
                Ok((line, time)) => {
                    progress.size = latest.size;
                    progress.cosigned_at = Some(time);
                    progress.last_error = None;
                    report.cosigned.insert(name, time);
                    lines.push(line);
                }
                Err(Failure { reason, size }) => {
                    if let Some(size) = size {
                        progress.size = size;
                    }
                    progress.last_error = Some(reason.clone());
                    tracing::warn!(witness = %name, reason = %reason, "a witness did not cosign");
                    report.failed.insert(name, reason);
                }
            }
        }
        let note = add_cosignatures(&latest.note, &lines)?;
        if verify_witnessed(&note, &self.log_key, &self.policy).is_ok() {
            // Never replace a witnessed checkpoint with a smaller one.
            let newer = match read_witnessed(&dir)? {
                Some(old) => {
                    verify_checkpoint(&old, &self.log_key).map_or(true, |c| c.size <= latest.size)
                }
                None => true,
            };
            if newer {
                write_witnessed(&dir, &note)?;
                report.published = true;
            }
        }
        write_state(&dir, &state)?;
        drop(lock);
        Ok(report)
    }
}

struct Failure {
    reason: String,
    /// The size the witness says it holds (from a 409).
    size: Option<u64>,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            size: None,
        }
    }
}

struct Submission {
    client: reqwest::Client,
    ledger_dir: PathBuf,
    url: String,
    key: WitnessKey,
    latest: VerifiedCheckpoint,
    text: Vec<u8>,
}

impl Submission {
    /// Submits from `old`, and once more from the size a 409 names.
    async fn run(self, mut old: u64) -> Result<(Signature, u64), Failure> {
        let mut conflict = None;
        for _ in 0..2 {
            match self.submit(old).await? {
                Answer::Cosigned(line, time) => return Ok((line, time)),
                Answer::Conflict(size) => {
                    conflict = Some(size);
                    old = size;
                }
            }
        }
        Err(Failure {
            reason: format!(
                "the witness holds size {} and refused again (409)",
                conflict.unwrap_or(old)
            ),
            size: conflict,
        })
    }

    fn proof(&self, old: u64) -> Result<Vec<[u8; 32]>, Failure> {
        let size = self.latest.size;
        if old > size {
            return Err(Failure {
                reason: format!(
                    "the witness cosigned size {old}, beyond this log's {size}: the log was rolled back or forked"
                ),
                size: Some(old),
            });
        }
        if old == 0 || old == size {
            return Ok(Vec::new());
        }
        let proof = LedgerReader::new(&self.ledger_dir)
            .consistency_proof(old, size, size)
            .map_err(|e| Failure::new(format!("no consistency proof from {old}: {e}")))?;
        proof
            .proof
            .iter()
            .map(|h| hash(h))
            .collect::<Result<_, _>>()
            .map_err(Failure::new)
    }

    async fn submit(&self, old: u64) -> Result<Answer, Failure> {
        let proof = self.proof(old)?;
        let body = AddCheckpoint {
            old,
            proof,
            note: self.latest.note.clone(),
        }
        .encode();
        let url = format!("{}{ADD_CHECKPOINT_PATH}", self.url.trim_end_matches('/'));
        let response = self
            .client
            .post(&url)
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::new(format!("unreachable: {}", without_url(&e))))?;
        let status = response.status().as_u16();
        let bytes = read_capped(response).await?;
        match status {
            200 => {
                let lines = parse_cosignatures(&bytes)
                    .ok_or_else(|| Failure::new("the answer is not cosignature lines"))?;
                lines
                    .into_iter()
                    .filter(|l| l.name() == self.key.name() && l.id() == self.key.id())
                    .find_map(|l| self.key.check(&self.text, l.signature()).map(|t| (l, t)))
                    .map(|(l, t)| Answer::Cosigned(l, t))
                    .ok_or_else(|| {
                        Failure::new("no cosignature in the answer verifies with its policy key")
                    })
            }
            409 => parse_size(&bytes)
                .map(Answer::Conflict)
                .ok_or_else(|| Failure::new("409 without a size")),
            422 => Err(Failure::new(format!(
                "422: the witness holds a different history at size {old} (the consistency proof failed)"
            ))),
            other => {
                let said = String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                    .trim()
                    .to_owned();
                Err(Failure::new(format!("{other}: {said}")))
            }
        }
    }
}

/// Most bytes read of a witness's answer: 16 cosignature lines are far
/// less; a witness (or anyone on a plain-HTTP path to it) that sends more
/// is cut off rather than allowed to fill the log's memory.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Failure::new(format!("the answer was cut off: {}", without_url(&e))))?
    {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(Failure::new(format!(
                "the answer exceeds {MAX_ANSWER_BYTES} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

enum Answer {
    Cosigned(Signature, u64),
    Conflict(u64),
}

/// A client error's text without the URL (a policy URL could carry a
/// credential in its user-info part).
fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused or failed".into()
    } else if e.is_body() || e.is_decode() {
        "the answer could not be read".into()
    } else {
        "the request failed".into()
    }
}
