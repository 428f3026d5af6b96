//! Agreement actions: apply a version, list, show, suspend, resume, revoke.
//! Each change is ledgered before it takes effect; refusals are ledgered too.

use std::collections::{BTreeMap, BTreeSet};

use custos_ledger::{Decision, Entry};
use custos_model::{DatasetSchema, Role};
use custos_policy::{Agreement, AgreementError};
use custos_store::meta::{AgreementState, AgreementVersion};
use sha2::{Digest, Sha256};

use crate::{Acting, Actor, BrokerError, Custos, now_micros};
use custos_model::AgreementStatus;

/// Whether `actor` may see an agreement: the local administrator and
/// admins see every one (they apply them); a principal of either party's
/// organisation sees it; an overseer sees every one that is not withheld
/// from subject reports (withheld ones are for their parties only). No one
/// else learns that it exists.
pub(crate) fn may_see(actor: &Actor, version: &AgreementVersion) -> bool {
    let Actor(Acting::Principal(p)) = actor else {
        return true;
    };
    if p.has_role(Role::Admin) {
        return true;
    }
    let Ok(agreement) = Agreement::from_toml(&version.toml) else {
        return false;
    };
    if p.org == agreement.parties.custodian || p.org == agreement.parties.requester {
        return true;
    }
    p.has_role(Role::Overseer) && agreement.withhold_from_subject_reports.is_none()
}

/// A value-free category of a refusal, for the public ledger (the full
/// message, which may quote the text, goes only to the caller).
fn refusal_category(e: &AgreementError) -> &'static str {
    match e {
        AgreementError::Syntax(_) => "malformed agreement",
        AgreementError::BadId(_) => "invalid agreement id",
        AgreementError::Empty(_) => "required text missing",
        AgreementError::Window { .. } => "invalid validity window",
        AgreementError::Expired { .. } => "agreement already expired",
        AgreementError::NoGrants => "no grants",
        AgreementError::UnknownDataset { .. } => "unknown dataset",
        AgreementError::UnknownColumn { .. } => "unknown column",
        AgreementError::Rule { .. } => "grant rule violated",
        AgreementError::Scope { .. } => "invalid row scope",
        AgreementError::MatchingLimits(_) => "matching limits exceeded",
        _ => "invalid agreement",
    }
}

impl Custos {
    /// Holds a stored agreement version to the `agreement.apply` entry
    /// that recorded it: its text must hash to what the ledger recorded for
    /// that id and version. Decisions use the stored text, so a text edited
    /// in the catalogue behind `agreement apply` (wider columns, no row
    /// scope, a bigger budget) would otherwise take effect unrecorded. A
    /// mismatch is ledgered as `agreement.tampered` and nothing is decided
    /// under the agreement.
    pub(crate) fn check_agreement_ledgered(
        &self,
        version: &AgreementVersion,
    ) -> Result<(), BrokerError> {
        let sha = hex::encode(Sha256::digest(version.toml.as_bytes()));
        let seen = format!(
            "agreement\n{}\n{}\n{:?}\n{sha}",
            version.id, version.version, version.ledger_entry
        );
        if self.ledgered_datasets.contains(&seen) {
            return Ok(());
        }
        let matches = version.ledger_entry.is_some_and(|index| {
            self.entry_at(index).is_ok_and(|entry| {
                entry.action == "agreement.apply"
                    && entry.decision == Decision::Allow
                    && entry.agreement_id.as_deref() == Some(version.id.as_str())
                    && entry.agreement_version == version.version
                    && entry
                        .attributes
                        .iter()
                        .any(|(k, v)| k == "sha256" && *v == sha)
            })
        });
        if !matches {
            let reason = format!(
                "the stored text of agreement `{}` v{} is not the one the ledger recorded: nothing is decided under it",
                version.id, version.version
            );
            self.append(
                &Entry::new(
                    now_micros(),
                    "custos",
                    "agreement.tampered",
                    Decision::Error,
                )
                .with_agreement(&version.id, version.version)
                .with_reason(reason.clone()),
            )?;
            tracing::error!(agreement = %version.id, "agreement refused: its stored text is not the ledgered one");
            return Err(BrokerError::Denied(reason));
        }
        self.ledgered_datasets.insert(seen);
        Ok(())
    }

    fn refuse_agreement(&self, actor: &Actor, e: AgreementError) -> BrokerError {
        let entry = Entry::new(now_micros(), actor.id(), "agreement.apply", Decision::Deny)
            .with_reason(refusal_category(&e));
        match self.append(&entry) {
            Ok(_) => BrokerError::Invalid(e.to_string()),
            Err(ledger) => ledger,
        }
    }

    /// Validates `text` and stores it as the agreement's next version (the
    /// first makes it active). The version's hash goes to the ledger first.
    pub async fn apply_agreement(
        &self,
        actor: &Actor,
        text: &str,
    ) -> Result<(AgreementVersion, Agreement), BrokerError> {
        const ACTION: &str = "agreement.apply";
        if !actor.is_admin() {
            return Err(self.deny(actor, ACTION, "only an admin may apply agreements"));
        }
        let agreement = match Agreement::from_toml(text) {
            Ok(a) => a,
            Err(e) => return Err(self.refuse_agreement(actor, e)),
        };
        let mut schemas: BTreeMap<String, DatasetSchema> = BTreeMap::new();
        for grant in &agreement.grants {
            if let Some(record) = self.home().meta().dataset(&grant.dataset).await?
                && let Ok(schema) = DatasetSchema::from_toml(&record.schema_toml)
            {
                schemas.insert(grant.dataset.clone(), schema);
            }
        }
        if let Err(e) = agreement
            .validate(|name| schemas.get(name))
            .and_then(|_| agreement.check_not_expired(crate::decide::today()))
        {
            return Err(self.refuse_agreement(actor, e));
        }
        let meta = self.home().meta();
        let previous = meta
            .agreement_versions(&agreement.id)
            .await?
            .pop()
            .and_then(|v| Agreement::from_toml(&v.toml).ok());
        if let Some(previous) = previous
            && let Err(e) = agreement.check_follows(&previous)
        {
            return Err(self.refuse_agreement(actor, e));
        }
        if let Some(state) = meta.agreement_state(&agreement.id).await?
            && state.state == AgreementStatus::Revoked
        {
            return Err(self.deny(actor, ACTION, "a revoked agreement cannot get new versions"));
        }
        let version = u32::try_from(meta.agreement_versions(&agreement.id).await?.len() + 1)
            .unwrap_or(u32::MAX);
        let sha = hex::encode(Sha256::digest(text.as_bytes()));
        // INVARIANT: the version exists only after this entry is durable.
        let entry = Entry::new(now_micros(), actor.id(), ACTION, Decision::Allow)
            .with_agreement(&agreement.id, version)
            .with_attribute("sha256", sha.clone())
            .with_count("grants", agreement.grants.len() as u64);
        let recorded = self.append(&entry)?;
        let now = custos_store::home::now_rfc3339();
        let stored = meta
            .insert_agreement_version(
                &agreement.id,
                text,
                &sha,
                &now,
                actor.id(),
                recorded.index(),
            )
            .await?;
        let versions = meta.agreement_versions(&agreement.id).await?;
        let stored = versions
            .into_iter()
            .find(|v| v.version == stored)
            .ok_or_else(|| BrokerError::Internal("the stored version vanished".into()))?;
        Ok((stored, agreement))
    }

    /// The latest version of every agreement `actor` may see, with its
    /// state (see [`may_see`]).
    pub async fn agreements(
        &self,
        actor: &Actor,
    ) -> Result<Vec<(AgreementVersion, AgreementState)>, BrokerError> {
        let all = self.home().meta().agreements().await?;
        Ok(all
            .into_iter()
            .filter(|(version, _)| may_see(actor, version))
            .collect())
    }

    /// Every version of one agreement and its state, if `actor` may see
    /// it; one the caller may not see is "no agreement", like an absent one.
    pub async fn agreement(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<(Vec<AgreementVersion>, AgreementState), BrokerError> {
        let meta = self.home().meta();
        let unknown = || BrokerError::NotFound(format!("no agreement `{id}`"));
        let state = meta.agreement_state(id).await?.ok_or_else(unknown)?;
        let versions = meta.agreement_versions(id).await?;
        if !versions.last().is_some_and(|v| may_see(actor, v)) {
            return Err(unknown());
        }
        Ok((versions, state))
    }

    /// The datasets `actor` may know of: all for admins and overseers;
    /// for anyone else those named by a grant of an agreement they may see.
    pub(crate) async fn visible_datasets(
        &self,
        actor: &Actor,
    ) -> Result<Option<BTreeSet<String>>, BrokerError> {
        if let Actor(Acting::Principal(p)) = actor
            && !p.has_role(Role::Admin)
            && !p.has_role(Role::Overseer)
        {
            let mut names = BTreeSet::new();
            for (version, _) in self.agreements(actor).await? {
                if let Ok(a) = Agreement::from_toml(&version.toml) {
                    names.extend(a.grants.into_iter().map(|g| g.dataset));
                }
            }
            return Ok(Some(names));
        }
        Ok(None)
    }

    /// Moves an agreement to `to` (suspend, resume or revoke), ledgered first.
    pub async fn set_agreement_status(
        &self,
        actor: &Actor,
        id: &str,
        to: AgreementStatus,
        reason: Option<&str>,
    ) -> Result<AgreementState, BrokerError> {
        let action = match to {
            AgreementStatus::Active => "agreement.resume",
            AgreementStatus::Suspended => "agreement.suspend",
            AgreementStatus::Revoked => "agreement.revoke",
        };
        if !actor.is_admin() {
            return Err(self.deny(
                actor,
                action,
                "only an admin may change an agreement's state",
            ));
        }
        let meta = self.home().meta();
        let Some(current) = meta.agreement_state(id).await? else {
            return Err(BrokerError::NotFound(format!("no agreement `{id}`")));
        };
        if !current.state.may_become(to) {
            return Err(BrokerError::Conflict(format!(
                "agreement `{id}` is {}; it cannot become {}",
                current.state,
                to.as_str()
            )));
        }
        let version = u32::try_from(meta.agreement_versions(id).await?.len()).unwrap_or(u32::MAX);
        // The reason may be free text: it stays in the catalogue, not the public ledger.
        let entry = Entry::new(now_micros(), actor.id(), action, Decision::Allow)
            .with_agreement(id, version);
        self.append(&entry)?;
        let state = AgreementState {
            state: to,
            changed_at: custos_store::home::now_rfc3339(),
            changed_by: actor.id().to_owned(),
            reason: reason.map(str::to_owned),
        };
        meta.set_agreement_state(id, &state).await?;
        Ok(state)
    }
}
