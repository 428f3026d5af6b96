//! Accountability reports: a subject's accounting of disclosures (Privacy
//! Act, 5 U.S.C. 552a(c)) with a ledger inclusion proof for every line, and
//! an agreement's use.
//!
//! Each line comes from the catalogue and is checked against the ledger: the
//! entry at its index must name the same request and commit to the same
//! subject, and its inclusion proof must verify against a checkpoint taken
//! for the report. A catalogue that disagrees with the ledger fails the
//! report loudly instead of printing a comfortable story.

use custos_ledger::{Decision, Entry, InclusionProof, SubjectCommitment, verify_inclusion};
use custos_model::Role;
use custos_policy::Agreement;
use custos_store::lookups::{AgreementUsage, SubjectEventKind};
use serde::{Deserialize, Serialize};

use crate::{Acting, Actor, BrokerError, Custos, now_micros};
use custos_model::AgreementStatus;

/// One line of a subject's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportLine {
    /// When (RFC 3339).
    pub at: String,
    /// What happened: `requested`, `disclosed` or `no_records`.
    pub kind: SubjectEventKind,
    /// The recipient's name (or principal id if unknown).
    pub recipient: String,
    /// The recipient's organisation.
    pub org: String,
    /// The agreement.
    pub agreement: String,
    /// Its version.
    pub agreement_version: u32,
    /// The agreement's purpose.
    pub purpose: String,
    /// The request.
    pub request_id: String,
    /// Rows released.
    pub rows: u64,
    /// The ledger entry's index and its proof of inclusion.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub proof: InclusionProof,
}

/// A subject's accounting of disclosures.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubjectReport {
    /// The subject's ledger commitment (hex): what the lines' entries carry.
    pub subject_commitment: String,
    /// The signed checkpoint every proof verifies against.
    pub checkpoint: String,
    /// Every inspection and disclosure, oldest first, except those an
    /// agreement withholds under its legal citation.
    pub lines: Vec<ReportLine>,
}

/// An agreement's use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgreementReport {
    /// The agreement's id.
    pub id: String,
    /// Its title (latest version).
    pub title: String,
    /// The latest version.
    pub version: u32,
    /// Active, suspended or revoked.
    pub state: AgreementStatus,
    /// The requesting organisation.
    pub requester: String,
    /// Its purpose.
    pub purpose: String,
    /// Validity window.
    pub valid_from: String,
    /// Validity window.
    pub valid_until: String,
    /// Whether subject reports leave its disclosures out.
    pub withheld_from_subject_reports: bool,
    /// What the catalogue counts.
    pub usage: AgreementUsage,
}

impl Custos {
    fn may_report(&self, actor: &Actor, action: &str) -> Result<(), BrokerError> {
        let allowed = match actor {
            Actor(Acting::LocalAdmin) => false,
            Actor(Acting::Principal(p)) => p.has_role(Role::Overseer) || p.has_role(Role::Admin),
        };
        if allowed {
            Ok(())
        } else {
            Err(self.deny(actor, action, "reports need the `overseer` or `admin` role"))
        }
    }

    /// Every inspection and disclosure of `subject`, each proved against a
    /// fresh checkpoint. Producing the report is itself ledgered.
    pub async fn subject_report(
        &self,
        actor: &Actor,
        subject: &str,
    ) -> Result<SubjectReport, BrokerError> {
        const ACTION: &str = "report.subject";
        self.may_report(actor, ACTION)?;
        let commitment = self.subjects().commit(subject.trim());
        // The entry records whose report it was as a value blinded by a
        // fresh id: unlinkable to the person's other entries, yet a
        // custodian who suspects browsing can test it for a given person.
        let mut raw = [0u8; 16];
        custos_store::keys::random_bytes(&mut raw)?;
        let id = format!("rep_{}", hex::encode(raw));
        self.append(
            &Entry::new(now_micros(), actor.id(), ACTION, Decision::Allow)
                .with_request(&id)
                .with_subjects([self.subjects().for_entry(&commitment, &id, ACTION)]),
        )?;
        let events = self.home().meta().subject_events(&commitment.0).await?;
        let checkpoint = self.ledger.checkpoint()?;
        let reader = self.ledger_reader()?;
        let mut lines = Vec::new();
        for event in events.into_iter().filter(|e| !e.withheld) {
            let proof =
                reader.inclusion_proof(event.ledger_index, checkpoint.size, checkpoint.size)?;
            verify_inclusion(&proof)?;
            if proof.root != hex::encode(checkpoint.root) {
                return Err(mismatch(event.ledger_index));
            }
            let (_, bytes) = reader
                .entries(event.ledger_index, event.ledger_index + 1)?
                .pop()
                .ok_or_else(|| mismatch(event.ledger_index))?;
            let entry = Entry::decode(&bytes).map_err(|_| mismatch(event.ledger_index))?;
            let blinded = self.subjects().for_entry(
                &SubjectCommitment(event.subject_commitment),
                &event.request_id,
                &entry.action,
            );
            // The line is what its entry says: same request, subject, actor
            // and agreement (the catalogue is not trusted to tell it).
            if entry.request_id != event.request_id
                || !entry.subjects.contains(&blinded)
                || entry.actor != event.principal
                || entry.agreement_id.as_deref() != Some(event.agreement_id.as_str())
                || entry.agreement_version != event.agreement_version
            {
                return Err(mismatch(event.ledger_index));
            }
            let recipient = match self.home().meta().principal(&event.principal).await? {
                Some((p, _)) => p.name,
                None => event.principal.clone(),
            };
            lines.push(ReportLine {
                at: event.at,
                kind: event.kind,
                recipient,
                org: event.org,
                agreement: event.agreement_id,
                agreement_version: event.agreement_version,
                purpose: event.purpose,
                request_id: event.request_id,
                rows: event.rows_released,
                proof,
            });
        }
        Ok(SubjectReport {
            subject_commitment: hex::encode(commitment.0),
            checkpoint: String::from_utf8_lossy(&checkpoint.note).into_owned(),
            lines,
        })
    }

    /// A summary of an agreement's use. Ledgered.
    pub async fn agreement_report(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<AgreementReport, BrokerError> {
        const ACTION: &str = "report.agreement";
        self.may_report(actor, ACTION)?;
        let meta = self.home().meta();
        let versions = meta.agreement_versions(id).await?;
        let (Some(latest), Some(state)) = (versions.last(), meta.agreement_state(id).await?) else {
            return Err(BrokerError::NotFound(format!("no agreement `{id}`")));
        };
        if !crate::agreements::may_see(actor, latest) {
            return Err(BrokerError::NotFound(format!("no agreement `{id}`")));
        }
        let agreement = Agreement::from_toml(&latest.toml)
            .map_err(|e| BrokerError::Internal(format!("stored agreement unreadable: {e}")))?;
        self.append(
            &Entry::new(now_micros(), actor.id(), ACTION, Decision::Allow)
                .with_agreement(id, latest.version),
        )?;
        Ok(AgreementReport {
            id: agreement.id.clone(),
            title: agreement.title.clone(),
            version: latest.version,
            state: state.state,
            requester: agreement.parties.requester.clone(),
            purpose: agreement.purpose.clone(),
            valid_from: agreement.valid_from.to_string(),
            valid_until: agreement.valid_until.to_string(),
            withheld_from_subject_reports: agreement.withhold_from_subject_reports.is_some(),
            usage: meta.agreement_usage(id).await?,
        })
    }
}

fn mismatch(index: u64) -> BrokerError {
    BrokerError::Invalid(format!(
        "the catalogue and the ledger disagree at entry {index}: run `custos ledger verify` and treat this home as tampered with"
    ))
}
