//! Deciding an access, for every mode: the agreement, its state and
//! window, the parties, the grant and its columns, the custodian's guard
//! rules, then Cedar. A denial is ledgered here, with a value-free reason,
//! before the caller hears of it, so no mode can forget to.

use std::collections::BTreeSet;
use std::sync::Arc;

use custos_ledger::{Entry, SubjectCommitment};
use custos_model::{AgreementStatus, Principal, Role};
use custos_policy::decide::{AccessRequest, ActiveAgreement, PolicyEngine};
use custos_policy::{Agreement, Grant, Mode};

use crate::lookups::GUARDS_FILE;
use crate::{BrokerError, Custos};

/// The grant a request runs under, after every check passed.
pub(crate) struct Granted {
    pub(crate) agreement: Agreement,
    pub(crate) version: u32,
    pub(crate) grant_number: u32,
    pub(crate) columns: Vec<String>,
    pub(crate) decided_by: Vec<String>,
}

impl Granted {
    /// The grant that allowed the access.
    pub(crate) fn grant(&self) -> Result<Grant, BrokerError> {
        self.agreement
            .grants
            .get(self.grant_number as usize - 1)
            .cloned()
            .ok_or_else(|| BrokerError::Internal("the grant vanished".into()))
    }
}

/// A denial: the message for the caller and the reason for the ledger,
/// which never quotes input that names nothing known (a mistyped id could
/// be anything, even an SSN).
pub(crate) struct Denial {
    pub(crate) message: String,
    pub(crate) recorded: String,
}

impl Denial {
    /// A denial whose message is safe to record as it is.
    pub(crate) fn same(message: String) -> Self {
        Self {
            recorded: message.clone(),
            message,
        }
    }
}

/// Why an access was not granted: a denial (to ledger) or a fault.
pub(crate) enum Refusal {
    /// Refused by a rule; the caller hears `message`, the ledger `recorded`.
    Denied(Denial),
    /// Something failed; nothing was decided.
    Failed(BrokerError),
}

impl From<Denial> for Refusal {
    fn from(d: Denial) -> Self {
        Self::Denied(d)
    }
}

impl From<BrokerError> for Refusal {
    fn from(e: BrokerError) -> Self {
        Self::Failed(e)
    }
}

impl From<custos_store::meta::MetaError> for Refusal {
    fn from(e: custos_store::meta::MetaError) -> Self {
        Self::Failed(e.into())
    }
}

/// What is asked: who, under which agreement, on which dataset, in which
/// mode, for which columns (all granted ones if `None`) and, at a fetch,
/// about whom (for guards on protected subjects).
pub(crate) struct Access<'a> {
    pub(crate) principal: &'a Principal,
    pub(crate) agreement: &'a str,
    pub(crate) dataset: &'a str,
    pub(crate) mode: Mode,
    pub(crate) columns: Option<&'a [String]>,
    pub(crate) subject: Option<&'a SubjectCommitment>,
}

pub(crate) fn today() -> chrono::NaiveDate {
    chrono::Utc::now().date_naive()
}

impl Custos {
    /// Decides `access`; a denial is ledgered as `entry` (with the denial's
    /// reason) before the error returns.
    pub(crate) async fn decide(
        &self,
        access: Access<'_>,
        entry: &Entry,
    ) -> Result<Granted, BrokerError> {
        self.judge(access).await.map_err(|r| self.refused(entry, r))
    }

    /// Ledgers a refusal's denial as `entry`; a fault passes through.
    pub(crate) fn refused(&self, entry: &Entry, refusal: Refusal) -> BrokerError {
        match refusal {
            Refusal::Denied(denial) => self.refuse(entry.clone(), denial),
            Refusal::Failed(e) => e,
        }
    }

    /// Records a denial (its value-free reason) and returns its message.
    pub(crate) fn refuse(&self, entry: Entry, denial: Denial) -> BrokerError {
        match self.append(&entry.with_reason(denial.recorded)) {
            Ok(_) => BrokerError::Denied(denial.message),
            Err(e) => e,
        }
    }

    /// The guard rules, if the custodian wrote any.
    fn guards(&self) -> Result<Option<String>, Denial> {
        let path = self.home().root().join(GUARDS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(_) => Err(Denial::same(format!(
                "the guard rules ({GUARDS_FILE}) cannot be read: refusing (fail closed)"
            ))),
        }
    }

    /// The compiled policies of one agreement version with the guards,
    /// from the cache when neither changed since they were compiled.
    fn engine_for(
        &self,
        agreement: &Agreement,
        version: u32,
        guards: Option<&str>,
    ) -> Result<Arc<PolicyEngine>, custos_policy::decide::PolicyError> {
        let guards_sha: [u8; 32] =
            <sha2::Sha256 as sha2::Digest>::digest(guards.unwrap_or("").as_bytes()).into();
        let key = (agreement.id.clone(), version, guards_sha);
        if let Ok(cache) = self.engines.lock()
            && let Some(engine) = cache.get(&key)
        {
            return Ok(Arc::clone(engine));
        }
        let engine = Arc::new(PolicyEngine::compile(
            &[ActiveAgreement { agreement, version }],
            guards,
        )?);
        if let Ok(mut cache) = self.engines.lock() {
            // Old versions and guard texts are never asked for again.
            cache.retain(|(id, _, _), _| *id != agreement.id);
            cache.insert(key, Arc::clone(&engine));
        }
        Ok(engine)
    }

    /// Every check of an access, in the order that gives the clearest
    /// reason; Cedar makes the final decision. Nothing is ledgered here:
    /// callers go through [`Custos::decide`] (or a mode's own wrapper that
    /// ledgers the same way).
    pub(crate) async fn judge(&self, access: Access<'_>) -> Result<Granted, Refusal> {
        let Access {
            principal,
            agreement: agreement_id,
            dataset: dataset_name,
            mode,
            columns,
            subject,
        } = access;
        let meta = self.home().meta();
        let deny = |text: String| Err(Refusal::Denied(Denial::same(text)));
        let unknown = |message: String, recorded: &str| {
            Err(Refusal::Denied(Denial {
                message,
                recorded: recorded.to_owned(),
            }))
        };
        if !principal.has_role(Role::Requester) {
            return deny(format!(
                "{} access needs the `requester` role",
                mode.as_str()
            ));
        }
        let Some(state) = meta.agreement_state(agreement_id).await? else {
            return unknown(
                format!("no agreement `{agreement_id}` (deny by default)"),
                "unknown agreement (deny by default)",
            );
        };
        if state.state != AgreementStatus::Active {
            return deny(format!("agreement `{agreement_id}` is {}", state.state));
        }
        let versions = meta.agreement_versions(agreement_id).await?;
        let Some(latest) = versions.last() else {
            return unknown(
                format!("no agreement `{agreement_id}` (deny by default)"),
                "unknown agreement (deny by default)",
            );
        };
        self.check_agreement_ledgered(latest)?;
        let agreement = Agreement::from_toml(&latest.toml)
            .map_err(|e| BrokerError::Internal(format!("stored agreement unreadable: {e}")))?;
        let day = today();
        if day < agreement.valid_from {
            return deny(format!(
                "agreement `{agreement_id}` is not in force until {}",
                agreement.valid_from
            ));
        }
        if day > agreement.valid_until {
            return deny(format!(
                "agreement `{agreement_id}` expired on {}",
                agreement.valid_until
            ));
        }
        if principal.org != agreement.parties.requester {
            return deny(format!(
                "agreement `{agreement_id}` is with `{}`, not with your organisation",
                agreement.parties.requester
            ));
        }
        let Some((index, grant)) = agreement
            .grants
            .iter()
            .enumerate()
            .find(|(_, g)| g.dataset == dataset_name && g.mode == mode)
        else {
            return unknown(
                format!(
                    "agreement `{agreement_id}` grants no {} access to dataset `{dataset_name}`",
                    mode.as_str()
                ),
                "no grant of the mode on the dataset",
            );
        };
        let columns: Vec<String> = match columns {
            None => grant.columns.clone(),
            Some(wanted) => {
                if wanted.is_empty() {
                    return deny("ask for at least one column".into());
                }
                if let Some(c) = wanted.iter().find(|c| !grant.columns.contains(c)) {
                    return unknown(
                        format!(
                            "column `{c}` is not granted by agreement `{agreement_id}` on `{dataset_name}`"
                        ),
                        "a requested column is not granted",
                    );
                }
                let mut seen = BTreeSet::new();
                wanted
                    .iter()
                    .filter(|c| seen.insert((*c).clone()))
                    .cloned()
                    .collect()
            }
        };
        let guards = self.guards()?;
        let version = latest.version;
        let engine = match self.engine_for(&agreement, version, guards.as_deref()) {
            Ok(engine) => engine,
            Err(e) => {
                // The detail may quote the custodian's guard file: log it.
                tracing::error!(error = %e, "policies do not compile; refusing (fail closed)");
                return deny(
                    "the custodian's policies do not compile, so nothing is allowed until they are fixed (fail closed)".into(),
                );
            }
        };
        let protected = match subject {
            Some(s) => meta.subject_protected(&s.0).await?,
            None => false,
        };
        let decision = engine
            .decide(&AccessRequest {
                principal,
                agreement: agreement_id,
                dataset: dataset_name,
                mode,
                columns: &columns,
                day,
                subject_protected: protected,
            })
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        if !decision.allowed {
            // A guard's name can say something about the person (a guard
            // on protected subjects), and the requester can read the
            // public ledger: neither says which guard denied.
            if decision.reasons.iter().any(|r| r.starts_with("guard")) {
                return deny("denied by a guard rule of the custodian".into());
            }
            return deny(format!("denied by policy: {}", decision.reasons.join("; ")));
        }
        Ok(Granted {
            grant_number: u32::try_from(index + 1).unwrap_or(u32::MAX),
            agreement,
            version,
            columns,
            decided_by: decision.reasons,
        })
    }
}
