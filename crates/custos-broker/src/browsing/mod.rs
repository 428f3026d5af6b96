//! Unusual-browsing detection (docs/browsing.md): rules that explain
//! themselves on every identified access, peer deviation per day, and the
//! alerts overseers read and resolve.
//!
//! The detector follows the published ledger from a cursor kept in the
//! catalogue ([`Custos::detect_pending`]), so it never sits between a
//! request and its release (it is not a decision), and nothing is missed
//! across a crash: an entry's observation, its alerts and the cursor move
//! in one transaction, after the alert's own ledger entry is durable.

mod detect;
mod peers;
mod rules;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use custos_ledger::{Decision, Entry};
use custos_model::{DatasetSchema, Role};
use custos_policy::CompiledMonitoring;
use serde::{Deserialize, Serialize};

use custos_store::browsing::AlertRecord;
pub use custos_store::browsing::{AlertState, FiredRule};

use crate::{Acting, Actor, BrokerError, Custos, now_micros};

/// Most household members or colleagues a principal may list.
pub const MAX_RELATED: usize = 200;
/// Shortest reason accepted when resolving an alert.
pub const MIN_RESOLUTION: usize = 10;
/// Longest reason accepted when resolving an alert.
pub const MAX_RESOLUTION: usize = 4000;
const MAX_FACT_BYTES: usize = 200;

/// A principal's own identifying facts, set by an admin and never shown
/// back: the rules compare every subject they look up with them. Sealed
/// under the master key in the catalogue.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PrincipalFacts {
    /// Their own subject id (e.g. their TIN).
    pub own_id: Option<String>,
    /// Their family name.
    pub surname: Option<String>,
    /// Their street address (`number street, city`).
    pub address: Option<String>,
    /// Their ZIP code.
    pub zip: Option<String>,
    /// Subject ids of the people they live with.
    #[serde(default)]
    pub household: Vec<String>,
    /// Subject ids of their colleagues.
    #[serde(default)]
    pub colleagues: Vec<String>,
}

impl std::fmt::Debug for PrincipalFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrincipalFacts(<redacted>)")
    }
}

impl PrincipalFacts {
    /// Which kinds of fact are set, by name (what the ledger records).
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        for (name, set) in [
            ("own_id", self.own_id.is_some()),
            ("surname", self.surname.is_some()),
            ("address", self.address.is_some()),
            ("zip", self.zip.is_some()),
            ("household", !self.household.is_empty()),
            ("colleagues", !self.colleagues.is_empty()),
        ] {
            if set {
                kinds.push(name);
            }
        }
        kinds
    }

    /// Checks the facts' form (lengths, printable text, list sizes).
    pub fn validate(&self) -> Result<(), String> {
        let fields = [&self.own_id, &self.surname, &self.address, &self.zip];
        let related = self.household.iter().chain(&self.colleagues);
        for text in fields.into_iter().flatten().chain(related) {
            if text.trim().is_empty()
                || text.len() > MAX_FACT_BYTES
                || text.chars().any(char::is_control)
            {
                return Err(format!(
                    "each fact must be 1-{MAX_FACT_BYTES} printable characters"
                ));
            }
        }
        if self.household.len() > MAX_RELATED || self.colleagues.len() > MAX_RELATED {
            return Err(format!(
                "at most {MAX_RELATED} household members and {MAX_RELATED} colleagues"
            ));
        }
        Ok(())
    }
}

/// What setting a principal's facts recorded (never the facts).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FactsSet {
    /// The principal's id.
    pub principal: String,
    /// Which kinds of fact are now set.
    pub kinds: Vec<String>,
    /// The `principal.facts` ledger entry.
    pub ledger_index: u64,
}

/// An alert as overseers read it: which principal, which rules and why,
/// and the ledger entries it rests on; never a subject's identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alert {
    /// `alr_` + 16 hex digits.
    pub id: String,
    /// The principal whose access it is about.
    pub principal: String,
    /// The agreement, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<String>,
    /// The look-up request, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The rules that fired, with their explanations.
    pub rules: Vec<FiredRule>,
    /// 0-1: 1 − Π(1 − weight) over the rules.
    pub score: f64,
    /// Ledger entries it rests on.
    pub rests_on: Vec<u64>,
    /// Open or resolved.
    pub state: AlertState,
    /// When it was raised (RFC 3339).
    pub raised_at: String,
    /// The `alert.digest` entry that last published it; none while it awaits
    /// the next digest (at most ten minutes under `custos serve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_index: Option<u64>,
    /// Who resolved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    /// Why (overseers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    /// The `alert.resolve` entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_ledger_index: Option<u64>,
}

/// A page of alerts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertPage {
    /// How many alerts are in the state asked for, in all.
    pub total: u64,
    /// Where this page starts.
    pub offset: u64,
    /// The page: highest score first, then newest.
    pub alerts: Vec<Alert>,
}

/// Alerts per page.
pub const ALERTS_PER_PAGE: u32 = 200;

/// What one detection pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DetectionRun {
    /// Ledger entries read.
    pub entries_read: u64,
    /// Alerts raised.
    pub raised: u64,
    /// Open alerts that gained a rule or an entry.
    pub updated: u64,
    /// Entries the rules could not run on (each raised a
    /// `detection_failed` alert).
    pub failures: u64,
    /// The first ledger index not yet read.
    pub next_index: u64,
}

/// The detector's state in this process: one pass at a time, and caches
/// (facts are dropped when an admin changes them).
#[derive(Debug, Default)]
pub(crate) struct Detector {
    running: tokio::sync::Mutex<()>,
    caches: Mutex<Caches>,
}

#[derive(Debug, Default)]
struct Caches {
    facts: HashMap<String, Option<Arc<PrincipalFacts>>>,
    monitoring: HashMap<(String, u32), Option<Arc<CompiledMonitoring>>>,
    schemas: HashMap<String, Option<Arc<DatasetSchema>>>,
}

impl Detector {
    fn caches(&self) -> std::sync::MutexGuard<'_, Caches> {
        self.caches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

use custos_store::sealed::facts_purpose;

pub(crate) fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Custos {
    /// Sets (replaces) a principal's own identifying facts. Admins only.
    /// The ledger records which kinds were set, never their values.
    pub async fn set_principal_facts(
        &self,
        actor: &Actor,
        name: &str,
        facts: &PrincipalFacts,
    ) -> Result<FactsSet, BrokerError> {
        const ACTION: &str = "principal.facts";
        if !actor.is_admin() {
            return Err(self.deny(actor, ACTION, "only an admin may set a principal's facts"));
        }
        facts.validate().map_err(BrokerError::Invalid)?;
        let Some(p) = self.home().meta().principal_by_name(name).await? else {
            return Err(BrokerError::NotFound(format!("no principal `{name}`")));
        };
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec(facts).map_err(|e| BrokerError::Internal(e.to_string()))?,
        );
        let sealed = self.home().keys().wrap(&facts_purpose(&p.id), &json)?;
        let kinds = facts.kinds();
        let entry = Entry::new(now_micros(), actor.id(), ACTION, Decision::Allow)
            .with_attribute("principal", p.id.clone())
            .with_attribute("kinds", kinds.join(","))
            .with_count("household", facts.household.len() as u64)
            .with_count("colleagues", facts.colleagues.len() as u64);
        // INVARIANT: the facts change only after this entry is durable.
        let ledger_index = self.append(&entry)?;
        self.home()
            .meta()
            .set_principal_facts(&p.id, &sealed, now_micros())
            .await?;
        self.detector.caches().facts.remove(&p.id);
        Ok(FactsSet {
            principal: p.id,
            kinds: kinds.into_iter().map(String::from).collect(),
            ledger_index: ledger_index.index(),
        })
    }

    /// A principal's facts, unsealed (detection only; cached).
    async fn principal_facts(
        &self,
        principal_id: &str,
    ) -> Result<Option<Arc<PrincipalFacts>>, BrokerError> {
        if let Some(hit) = self.detector.caches().facts.get(principal_id) {
            return Ok(hit.clone());
        }
        let facts = match self.home().meta().principal_facts(principal_id).await? {
            None => None,
            Some(sealed) => {
                let json = zeroize::Zeroizing::new(self.home().keys().unwrap_secret(
                    &facts_purpose(principal_id),
                    "principal facts",
                    &sealed,
                )?);
                Some(Arc::new(serde_json::from_slice(&json).map_err(|_| {
                    BrokerError::Internal("a principal's facts are malformed".into())
                })?))
            }
        };
        self.detector
            .caches()
            .facts
            .insert(principal_id.to_owned(), facts.clone());
        Ok(facts)
    }

    /// Refuses unless the actor is an overseer (who reads alerts).
    fn overseer<'a>(
        &self,
        actor: &'a Actor,
        action: &str,
    ) -> Result<&'a custos_model::Principal, BrokerError> {
        match &actor.0 {
            Acting::Principal(p) if p.has_role(Role::Overseer) => Ok(p),
            _ => Err(self.deny(actor, action, "only an overseer may read or resolve alerts")),
        }
    }

    fn alert_view(&self, a: AlertRecord, with_reason: bool) -> Result<Alert, BrokerError> {
        let resolution = match (&a.resolution_sealed, with_reason) {
            (Some(sealed), true) => {
                let bytes = self.home().keys().unwrap_secret(
                    &resolution_purpose(&a.id),
                    "alert resolution",
                    sealed,
                )?;
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
            _ => None,
        };
        Ok(Alert {
            raised_at: rfc3339(a.raised_micros),
            resolved_at: a.resolved_micros.map(rfc3339),
            id: a.id,
            principal: a.principal_id,
            agreement: a.agreement_id,
            request: a.request_id,
            rules: a.rules,
            score: a.score,
            rests_on: a.rests_on,
            state: a.state,
            digest_index: (a.ledger_index != 0).then_some(a.ledger_index),
            resolved_by: a.resolved_by,
            resolution,
            resolve_ledger_index: a.resolve_ledger_index,
        })
    }

    /// Alerts in `state` (any if none), highest score first, then newest:
    /// a page of [`ALERTS_PER_PAGE`] from `offset`, with the total.
    /// Overseers only.
    pub async fn alerts(
        &self,
        actor: &Actor,
        state: Option<AlertState>,
        offset: u64,
    ) -> Result<AlertPage, BrokerError> {
        self.overseer(actor, "alert.list")?;
        let meta = self.home().meta();
        let alerts = meta
            .list_alerts(state, offset, ALERTS_PER_PAGE)
            .await?
            .into_iter()
            .map(|a| self.alert_view(a, false))
            .collect::<Result<_, _>>()?;
        Ok(AlertPage {
            total: meta.count_alerts(state).await?,
            offset,
            alerts,
        })
    }

    /// One alert with its resolution. Overseers only.
    pub async fn alert(&self, actor: &Actor, id: &str) -> Result<Alert, BrokerError> {
        self.overseer(actor, "alert.show")?;
        match self.home().meta().alert(id).await? {
            Some(a) => self.alert_view(a, true),
            None => Err(BrokerError::NotFound(format!("no alert `{}`", short(id)))),
        }
    }

    /// Resolves an open alert with a reason (sealed; the ledger keeps a
    /// keyed digest). Overseers only, and never their own alert.
    pub async fn resolve_alert(
        &self,
        actor: &Actor,
        id: &str,
        reason: &str,
    ) -> Result<Alert, BrokerError> {
        const ACTION: &str = "alert.resolve";
        let overseer = self.overseer(actor, ACTION)?;
        let reason = reason.trim();
        if reason.chars().count() < MIN_RESOLUTION || reason.len() > MAX_RESOLUTION {
            return Err(BrokerError::Invalid(format!(
                "resolving an alert needs a reason of {MIN_RESOLUTION}-{MAX_RESOLUTION} characters: say what was found"
            )));
        }
        let Some(record) = self.home().meta().alert(id).await? else {
            return Err(BrokerError::NotFound(format!("no alert `{}`", short(id))));
        };
        let entry = Entry::new(now_micros(), actor.id(), ACTION, Decision::Deny)
            .with_attribute("alert", record.id.clone());
        if record.principal_id == overseer.id {
            return Err(self.refuse(
                entry,
                crate::decide::Denial::same(
                    "an alert about your own access must be resolved by another overseer".into(),
                ),
            ));
        }
        if record.state != AlertState::Open {
            return Err(BrokerError::Conflict(format!(
                "alert `{}` is already resolved",
                record.id
            )));
        }
        let sealed = self
            .home()
            .keys()
            .wrap(&resolution_purpose(&record.id), reason.as_bytes())?;
        // Not while a detection pass holds its own copy of open alerts.
        let _detector = self.detector.running.lock().await;
        let allowed = Entry {
            decision: Decision::Allow,
            ..entry
        }
        .with_attribute(
            "reason_hmac",
            // Bound to the alert, so that the digest cannot be moved to
            // another alert's resolution.
            self.subjects()
                .digest("alert-resolution", &format!("{}\0{reason}", record.id)),
        );
        // INVARIANT: resolved only after this entry is durable.
        let index = self.append(&allowed)?;
        if !self
            .home()
            .meta()
            .resolve_alert(
                &record.id,
                &overseer.id,
                now_micros(),
                &sealed,
                index.index(),
            )
            .await?
        {
            return Err(BrokerError::Conflict(format!(
                "alert `{}` was resolved concurrently",
                record.id
            )));
        }
        self.alert(actor, &record.id).await
    }
}

impl Custos {
    /// Runs detection now (the rules on every entry not yet read, then the
    /// peer comparison, then an `alert.digest`) for an overseer; the server
    /// also runs them on its own: the rules every second, the comparison
    /// and the digest every ten minutes.
    pub async fn run_detection(&self, actor: &Actor) -> Result<DetectionRun, BrokerError> {
        self.overseer(actor, "alert.scan")?;
        let mut run = self.detect_pending().await?;
        let peers = self.scan_peers().await?;
        run.raised += peers.raised;
        run.updated += peers.updated;
        self.publish_alerts(true).await?;
        Ok(run)
    }
}

use custos_store::sealed::resolution_purpose;

/// An id as errors quote it: at most 40 characters.
fn short(id: &str) -> String {
    id.chars().take(40).collect()
}
