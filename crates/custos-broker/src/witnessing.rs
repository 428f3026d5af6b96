//! The witness gate: with a witness policy in the home and a tolerance set,
//! no release is recorded (so nothing is released) while the oldest
//! entry that no witnessed checkpoint covers is older than the tolerance.
//! A log that hides from its witnesses — they are unreachable, the
//! collector was stopped, or they refuse a rewritten history — stops
//! releasing instead of piling up entries nobody outside can vouch for.
//! Refusals are ledgered as denials (the gate never blocks a denial).

use std::path::PathBuf;
use std::time::Duration;

use custos_ledger::policy::WitnessPolicy;
use custos_ledger::witnessed::verify_witnessed;
use custos_ledger::{Decision, Entry, LedgerReader, verify_checkpoint};

use sha2::{Digest as _, Sha256};

use crate::{Actor, BrokerError, Custos, Recorded, now_micros};

/// Name of the witness policy file in a home (Sigsum policy format).
pub const WITNESS_POLICY_FILE: &str = "witness-policy";

/// Actions that release data or send it to a peer: the ones the gate holds
/// back. Administration, approvals, denials and reports are never held, so
/// a custodian can still revoke, suspend and account while witnesses lag.
const RELEASES: &[&str] = &[
    "lookup.fetch",
    "query.aggregate",
    "extract",
    "match",
    "match.open",
    "match.exchange",
    "match.finish",
    "match.result",
    "match.read",
];

fn releases(entry: &Entry) -> bool {
    entry.decision == Decision::Allow && RELEASES.contains(&entry.action.as_str())
}

/// Catalogue setting: the ledger index of the entry that installed the
/// home's witness policy.
const POLICY_ENTRY: &str = "witness_policy_entry";

/// The policy in `home`'s file, if any, after checking that its SHA-256 is
/// the one the ledger recorded when it was installed: a file edited behind
/// `custos ledger witness-policy` (say, to name a witness of one's own, or
/// `quorum none`) is refused.
async fn checked_policy(
    home: &custos_store::Home,
    log_key: &str,
) -> Result<Option<WitnessPolicy>, BrokerError> {
    let path = home.root().join(WITNESS_POLICY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BrokerError::Internal(format!("`{}`: {e}", path.display()))),
    };
    let tampered = |why: &str| {
        BrokerError::Invalid(format!(
            "the witness policy `{}` is not the one the ledger recorded ({why}): install policies only with `custos ledger witness-policy`",
            path.display()
        ))
    };
    let index: u64 = home
        .meta()
        .instance_value(POLICY_ENTRY)
        .await?
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| tampered("no install is on record"))?;
    let reader = LedgerReader::over(home.published_ledger()?);
    let published = verify_checkpoint(&reader.checkpoint_note()?, log_key)
        .map_err(custos_ledger::LedgerError::from)?
        .size;
    if index >= published {
        return Err(tampered("its install entry is not in the published ledger"));
    }
    let entries = reader.entries(index, index + 1)?;
    let entry = entries
        .first()
        .map(|(_, bytes)| Entry::decode(bytes))
        .transpose()
        .map_err(custos_ledger::LedgerError::from)?
        .ok_or_else(|| tampered("its install entry is missing"))?;
    let digest = hex::encode(Sha256::digest(text.as_bytes()));
    let recorded = entry
        .attributes
        .iter()
        .find(|(k, _)| k == "policy_sha256")
        .map(|(_, v)| v.as_str());
    if entry.action != "ledger.witness_policy"
        || entry.decision != Decision::Allow
        || recorded != Some(digest.as_str())
    {
        return Err(tampered("its SHA-256 differs from the install entry's"));
    }
    WitnessPolicy::parse(&text)
        .map(Some)
        .map_err(|e| BrokerError::Invalid(format!("`{}`: {e}", path.display())))
}

/// The home's witness policy, checked against the ledger, without opening
/// the ledger's writer (for `ledger status` and `ledger witness` beside a
/// running server).
pub async fn home_witness_policy(
    root: &std::path::Path,
    external_key: Option<crate::ExternalKey>,
) -> Result<Option<WitnessPolicy>, BrokerError> {
    let input = external_key.map_or(custos_store::KeyInput::None, |k| k.0);
    let home = custos_store::Home::open_keyed(root, input).await?;
    let log_key = custos_ledger::note::verifier_key_for(
        &home.origin().await?,
        &home.ledger_public_key().await?,
    );
    checked_policy(&home, &log_key).await
}

/// The gate's settings.
#[derive(Debug)]
pub(crate) struct WitnessGate {
    max_age: Duration,
    policy: WitnessPolicy,
}

/// Where witnessing stands for a ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessLag {
    /// Size of the newest checkpoint.
    pub size: u64,
    /// Size of the newest checkpoint a quorum cosigned (0: none).
    pub witnessed: u64,
    /// Age of the oldest entry no witnessed checkpoint covers.
    pub oldest_unwitnessed: Option<Duration>,
    /// The ledger does not extend the checkpoint the witnesses cosigned
    /// (it is shorter, or its first entries hash to another root): it was
    /// rolled back or rewritten.
    pub diverged: bool,
}

/// How far witnessing lags behind the ledger published in `files` under `policy`.
pub fn witness_lag(
    files: std::sync::Arc<dyn custos_ledger::PublishedFiles>,
    log_key: &str,
    policy: &WitnessPolicy,
) -> Result<WitnessLag, BrokerError> {
    let witnessed_note = files
        .read(custos_ledger::witnessed::WITNESSED_CHECKPOINT)
        .map_err(|e| BrokerError::Internal(format!("the witnessed checkpoint: {e}")))?;
    let reader = LedgerReader::over(files);
    let size = verify_checkpoint(&reader.checkpoint_note()?, log_key)
        .map_err(custos_ledger::LedgerError::from)?
        .size;
    let cosigned = witnessed_note
        .and_then(|note| verify_witnessed(&note, log_key, policy).ok())
        .map(|w| w.checkpoint);
    let witnessed = cosigned.as_ref().map_or(0, |c| c.size);
    let diverged = match &cosigned {
        Some(c) if c.size > size => true,
        Some(c) if c.size > 0 => {
            reader.consistency_proof(c.size, size, size)?.old_root != hex::encode(c.root)
        }
        _ => false,
    };
    let oldest_unwitnessed = if witnessed >= size {
        None
    } else {
        let first = reader.entries(witnessed, witnessed + 1)?;
        let (_, bytes) = first
            .first()
            .ok_or_else(|| BrokerError::Internal("an unwitnessed entry is missing".into()))?;
        let entry = Entry::decode(bytes).map_err(custos_ledger::LedgerError::from)?;
        let micros = now_micros().saturating_sub(entry.time_micros).max(0);
        Some(Duration::from_micros(micros.unsigned_abs()))
    };
    Ok(WitnessLag {
        size,
        witnessed,
        oldest_unwitnessed,
        diverged,
    })
}

impl Custos {
    /// The home's witness policy file.
    pub fn witness_policy_path(&self) -> PathBuf {
        self.home().root().join(WITNESS_POLICY_FILE)
    }

    /// The home's witness policy, if it has one, checked against the
    /// ledger entry that installed it.
    pub async fn witness_policy(&self) -> Result<Option<WitnessPolicy>, BrokerError> {
        // The entry that installed it may not be published yet.
        self.checkpoint()?;
        checked_policy(self.home(), self.verifier_key()).await
    }

    /// Installs `text` as the home's witness policy (admins only). The
    /// change is ledgered, with the policy's SHA-256, before the file is
    /// replaced (atomically), so every policy a home used is on the record.
    pub async fn set_witness_policy(
        &self,
        actor: &Actor,
        text: &str,
    ) -> Result<Recorded, BrokerError> {
        const ACTION: &str = "ledger.witness_policy";
        if !actor.is_admin() {
            return Err(self.deny(actor, ACTION, "only an admin may set the witness policy"));
        }
        if self.home().ledger_placement() == custos_store::LedgerPlacement::Shared {
            return Err(BrokerError::Invalid(
                "witnessing a replicated home's shared ledger is not offered yet: its witnessed checkpoint would have to be collected by one replica and published beside the tiles"
                    .into(),
            ));
        }
        let policy = WitnessPolicy::parse(text).map_err(|e| BrokerError::Invalid(e.to_string()))?;
        let entry = Entry::new(now_micros(), actor.id(), ACTION, Decision::Allow)
            .with_attribute(
                "policy_sha256",
                hex::encode(Sha256::digest(text.as_bytes())),
            )
            .with_attribute("quorum", policy.quorum().unwrap_or("none"))
            .with_count("witnesses", policy.witnesses().count() as u64);
        let recorded = self.append(&entry)?;
        self.home()
            .meta()
            .replace_instance_values(
                &[(POLICY_ENTRY, recorded.index().to_string().as_bytes())],
                &[],
            )
            .await?;
        let path = self.witness_policy_path();
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(self.home().root())?.sync_all()
        };
        write().map_err(|e| BrokerError::Internal(format!("`{}`: {e}", path.display())))?;
        Ok(recorded)
    }

    /// Refuses releases while the unwitnessed tail is older than
    /// `max_age`. Needs a witness policy in the home.
    pub async fn require_witnessed_within(&mut self, max_age: Duration) -> Result<(), BrokerError> {
        let policy = self.witness_policy().await?.ok_or_else(|| {
            BrokerError::Invalid(format!(
                "a witnessed-tail limit needs a witness policy in `{}`",
                self.witness_policy_path().display()
            ))
        })?;
        self.witness_gate = Some(WitnessGate { max_age, policy });
        Ok(())
    }

    /// Where witnessing stands, under the home's policy.
    pub async fn witness_lag(&self) -> Result<Option<WitnessLag>, BrokerError> {
        let Some(policy) = self.witness_policy().await? else {
            return Ok(None);
        };
        witness_lag(self.ledger_files()?, self.verifier_key(), &policy).map(Some)
    }

    /// Checks the gate before `entries` are appended. If it is closed and
    /// any of them allows a release, each such one is recorded as a denial
    /// instead, and the action fails.
    pub(crate) fn check_witness_gate(&self, entries: &[Entry]) -> Result<(), BrokerError> {
        let Some(gate) = &self.witness_gate else {
            return Ok(());
        };
        if !entries.iter().any(releases) {
            return Ok(());
        }
        let lag = witness_lag(self.ledger_files()?, self.verifier_key(), &gate.policy)?;
        let reason = if lag.diverged {
            format!(
                "the ledger does not extend the checkpoint of size {} its witnesses cosigned (rolled back or rewritten): nothing is released",
                lag.witnessed
            )
        } else if let Some(age) = lag.oldest_unwitnessed.filter(|age| *age > gate.max_age) {
            format!(
                "the ledger has entries no witness quorum has cosigned for {}s (limit {}s; witnessed up to {} of {}): nothing is released until the witnesses catch up",
                age.as_secs(),
                gate.max_age.as_secs(),
                lag.witnessed,
                lag.size
            )
        } else {
            return Ok(());
        };
        let denials: Vec<Entry> = entries
            .iter()
            .filter(|e| releases(e))
            .map(|e| {
                let mut d = Entry::new(now_micros(), &e.actor, &e.action, Decision::Deny)
                    .with_reason(reason.clone())
                    .with_request(&e.request_id);
                if let Some(id) = &e.agreement_id {
                    d = d.with_agreement(id, e.agreement_version);
                }
                d
            })
            .collect();
        self.append_unchecked(&denials)?;
        tracing::warn!(
            witnessed = lag.witnessed,
            size = lag.size,
            "release refused: the unwitnessed tail is too old"
        );
        Err(BrokerError::Unavailable(reason))
    }
}
