//! The detector: reads the published ledger from its cursor, turns each
//! identified access, denial and decline into an observation, runs the
//! rules on it, and raises or updates alerts; periodically, compares each
//! principal's day with its peers; and, on a fixed schedule, publishes one
//! `alert.digest` entry that commits to every alert raised or changed since
//! the last.
//!
//! Crash safety: the observations, alerts and cursor of a batch commit in
//! one catalogue transaction; alert ids are derived from what the alert is
//! about, so a crash re-reads the batch and raises the same ids. An alert
//! awaits publication (`ledger_index` 0) until a digest entry is durable.
//!
//! Why a digest on a schedule rather than an entry per alert: the time of
//! an alert's own entry, right after a look-up, told the requester that it
//! was flagged, and which rule (a protected subject is flagged on every
//! request, a subject shared with others only on the first). A digest is
//! appended every [`PUBLISH_EVERY_MICROS`] whether or not there are alerts,
//! so its time and content say nothing about any look-up.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::Array;
use custos_ledger::{Decision, Entry, SubjectCommitment};
use custos_model::DatasetSchema;
use custos_model::schema::Describes;
use custos_policy::{Agreement, CompiledMonitoring};
use custos_store::browsing::{
    AlertRecord, AlertState, DAY_MICROS, DECLINED, FiredRule, Observation,
};
use custos_store::meta::MetadataStore;

use super::peers::{self, WINDOW_DAYS};
use super::rules::{self, Rule};
use super::{DetectionRun, PrincipalFacts};
use crate::lookups::Sealed;
use crate::{BrokerError, Custos, now_micros};

/// How far back "lately" reaches for the same subject asked again.
const REPEAT_WINDOW_MICROS: i64 = 30 * DAY_MICROS;
/// The window and count of refusals that make a burst (fishing).
const FISHING_WINDOW_MICROS: i64 = 3_600_000_000;
/// Refusals within the window that raise a fishing alert.
pub(crate) const FISHING_THRESHOLD: usize = 5;
/// Entries read per batch.
const BATCH: u64 = 512;
/// Ledger entries a peer alert lists at most.
const MAX_RESTS_ON: usize = 200;

/// The instance setting that holds the last day the peer scan covered.
pub(crate) const PEERS_SCANNED: &str = "browsing.peers_scanned_through";

/// The instance setting that holds when the last alert digest was due.
pub(crate) const ALERTS_PUBLISHED: &str = "browsing.alerts_published_at";

/// How often the detector appends its `alert.digest` entry (ten minutes).
pub(crate) const PUBLISH_EVERY_MICROS: i64 = 600_000_000;

/// The actor of the detector's own ledger entries.
const DETECTOR: &str = "custos";

/// What the rules of one entry found.
struct Finding {
    /// A fixed id (a principal-day, a burst), else derived from the key.
    id: Option<String>,
    key: String,
    principal: String,
    agreement: Option<(String, u32)>,
    request: Option<String>,
    rules: Vec<FiredRule>,
    rests_on: Vec<u64>,
}

/// What a pass has found but not yet committed: the rules of later
/// entries in the batch read it as if it were in the catalogue.
#[derive(Default)]
struct Batch {
    observations: Vec<Observation>,
    alerts: Vec<AlertRecord>,
}

impl Batch {
    fn keep(&mut self, alert: AlertRecord) {
        self.alerts.retain(|a| a.id != alert.id);
        self.alerts.push(alert);
    }
}

/// An alert's id: keyed (the ledger's subject key), so that the public id
/// in an `alert.*` entry cannot be recomputed from a request id or a
/// principal by anyone outside.
///
/// A key names one thing (a request, an entry, a principal-day), so its
/// `episode` is 0 and a later finding on it finds the same alert, open or
/// resolved. A burst of refusals recurs under one key: its episode is the
/// newest refusal when it is raised.
fn alert_id(committer: &custos_ledger::SubjectCommitter, key: &str, episode: u64) -> String {
    let digest = committer.digest("alert-id", &format!("{key}\0{episode}"));
    format!("alr_{}", &digest[..16])
}

fn is_principal_id(id: &str) -> bool {
    id.len() == 17 && id.starts_with('p') && id[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl Custos {
    /// Runs the rules on every ledger entry published since the detector's
    /// cursor (signing a checkpoint first so that the newest entries are
    /// published). One pass at a time per process; a failure on one entry
    /// raises a `detection_failed` alert and the pass goes on.
    pub async fn detect_pending(&self) -> Result<DetectionRun, BrokerError> {
        let _one = self.detector.running.lock().await;
        let size = self.checkpoint()?.size;
        let reader = self.ledger_reader()?;
        let meta = self.home().meta();
        let mut run = DetectionRun {
            next_index: meta.browsing_cursor().await?,
            ..DetectionRun::default()
        };
        while run.next_index < size {
            let to = (run.next_index + BATCH).min(size);
            let entries = reader.entries(run.next_index, to)?;
            let mut batch = Batch::default();
            for (index, bytes) in entries {
                run.entries_read += 1;
                let outcome = match Entry::decode(&bytes) {
                    Ok(entry) => self.detect_entry(index, &entry, &mut batch, &mut run).await,
                    Err(e) => Err(BrokerError::Internal(format!("entry {index}: {e}"))),
                };
                if let Err(e) = outcome {
                    run.failures += 1;
                    // The cause goes to the log (it names no person); the
                    // alert says that an entry went unchecked.
                    tracing::error!(index, error = %e, "unusual-browsing rules failed on an entry");
                    let actor = Entry::decode(&bytes)
                        .map(|e| e.actor)
                        .unwrap_or_else(|_| DETECTOR.to_owned());
                    let finding = Finding {
                        id: None,
                        key: format!("failed:{index}"),
                        principal: actor,
                        agreement: None,
                        request: None,
                        rules: vec![Rule::DetectionFailed.fired(format!(
                            "the rules could not be run on ledger entry {index}; look at it by hand and at the server's log"
                        ))],
                        rests_on: vec![index],
                    };
                    if let Some(alert) = self.raise(finding, &batch, &mut run).await? {
                        batch.keep(alert);
                    }
                }
                run.next_index = index + 1;
            }
            // One transaction per batch: observations, alerts, cursor.
            meta.commit_detection(&batch.observations, &batch.alerts, run.next_index)
                .await?;
        }
        self.publish_locked(false).await?;
        Ok(run)
    }

    /// Appends the `alert.digest` entry when one is due (or now, when
    /// `force`), committing under the ledger's subject key to the id and
    /// content of every alert raised or changed since the last; `None` when
    /// none was due. The first call on a home starts the schedule.
    pub async fn publish_alerts(&self, force: bool) -> Result<Option<u64>, BrokerError> {
        let _one = self.detector.running.lock().await;
        self.publish_locked(force).await
    }

    async fn publish_locked(&self, force: bool) -> Result<Option<u64>, BrokerError> {
        let meta = self.home().meta();
        let now = now_micros();
        let due = match instance_number(meta.as_ref(), ALERTS_PUBLISHED).await? {
            Some(last) => now - last >= PUBLISH_EVERY_MICROS,
            None => {
                set_instance_number(meta.as_ref(), ALERTS_PUBLISHED, now).await?;
                false
            }
        };
        if !due && !force {
            return Ok(None);
        }
        let pending = meta.alerts_awaiting_publication().await?;
        let mut lines: Vec<String> = pending
            .iter()
            .map(|a| format!("{}\0{}", a.id, self.alert_content(a)))
            .collect();
        lines.sort_unstable();
        // A fresh random salt, kept nowhere: without it a digest of no alerts
        // is one constant, and an unchanged value would tell a requester
        // that their look-up raised nothing.
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt)
            .map_err(|_| BrokerError::Internal("the system random source failed".into()))?;
        lines.push(hex::encode(salt));
        // No count: how many alerts a digest covers would say, in a quiet
        // hour, whether the one look-up in it was flagged.
        let entry = Entry::new(now, DETECTOR, "alert.digest", Decision::Recorded).with_attribute(
            "alerts_hmac",
            self.subjects().digest("alert-digest", &lines.join("\n")),
        );
        // INVARIANT: an alert is marked published only after the digest that
        // covers it is durable; a crash between covers it again next time.
        let index = self.append(&entry)?.index();
        let ids: Vec<String> = pending.into_iter().map(|a| a.id).collect();
        meta.mark_alerts_published(&ids, index).await?;
        set_instance_number(meta.as_ref(), ALERTS_PUBLISHED, now).await?;
        Ok(Some(index))
    }

    /// A keyed digest of whom an alert is about and which rules fired: what
    /// a digest commits to for each alert.
    fn alert_content(&self, alert: &AlertRecord) -> String {
        let names: Vec<&str> = alert.rules.iter().map(|r| r.rule.as_str()).collect();
        self.subjects().digest(
            "alert-content",
            &format!("{}\0{}\0{}", alert.id, alert.principal_id, names.join(",")),
        )
    }

    /// The rules on one entry; its observation and alerts join the batch.
    async fn detect_entry(
        &self,
        index: u64,
        entry: &Entry,
        batch: &mut Batch,
        run: &mut DetectionRun,
    ) -> Result<(), BrokerError> {
        let Some((observation, findings)) = self.observe(index, entry, batch).await? else {
            return Ok(());
        };
        for finding in findings {
            if let Some(alert) = self.raise(finding, batch, run).await? {
                batch.keep(alert);
            }
        }
        batch.observations.push(observation);
        Ok(())
    }

    /// An entry as an observation and what the rules found in it.
    async fn observe(
        &self,
        index: u64,
        entry: &Entry,
        batch: &Batch,
    ) -> Result<Option<(Observation, Vec<Finding>)>, BrokerError> {
        let allowed = entry.decision == Decision::Allow;
        let agreement = entry
            .agreement_id
            .clone()
            .map(|id| (id, entry.agreement_version));
        let request = (!entry.request_id.is_empty()).then(|| entry.request_id.clone());
        let monitoring = match &agreement {
            Some((id, version)) => self.monitoring(id, *version).await?,
            None => None,
        };
        let off_hours = monitoring
            .as_ref()
            .and_then(|m| m.hours.as_ref())
            .is_some_and(|h| !h.contains(entry.time_micros));
        let mut observation = Observation {
            ledger_index: index,
            time_micros: entry.time_micros,
            principal_id: entry.actor.clone(),
            agreement_id: agreement.as_ref().map(|(id, _)| id.clone()),
            action: entry.action.clone(),
            allowed,
            request_id: request.clone(),
            subject_commitment: None,
            off_hours,
        };
        let finding = |key: String, principal: &str, rules: Vec<FiredRule>| Finding {
            id: None,
            key,
            principal: principal.to_owned(),
            agreement: agreement.clone(),
            request: request.clone(),
            rules,
            rests_on: vec![index],
        };
        let off_hours_rule = || {
            let hours = monitoring.as_ref().and_then(|m| m.hours.as_ref());
            hours.filter(|_| off_hours).map(|h| {
                Rule::OffHours.fired(format!(
                    "at {} UTC, outside the agreement's usual hours ({})",
                    super::rfc3339(entry.time_micros),
                    h.describe()
                ))
            })
        };
        let mut findings = Vec::new();
        match (entry.action.as_str(), entry.decision) {
            ("lookup.request", Decision::Allow) => {
                let Some(id) = &request else { return Ok(None) };
                let Some(record) = self.home().meta().request(id).await? else {
                    return Err(BrokerError::Internal(format!(
                        "entry {index} names a request the catalogue does not hold"
                    )));
                };
                observation.subject_commitment = Some(record.subject_commitment);
                let mut fired = self
                    .subject_rules(index, entry, &record, monitoring.as_deref(), batch)
                    .await?;
                let mut rests_on = vec![index];
                rests_on.extend(fired.1);
                fired.0.extend(off_hours_rule());
                if !fired.0.is_empty() {
                    let mut f = finding(format!("request:{id}"), &entry.actor, fired.0);
                    f.rests_on = rests_on;
                    findings.push(f);
                }
            }
            ("lookup.request", Decision::Deny) if is_principal_id(&entry.actor) => {
                observation.allowed = false;
                findings.extend(
                    self.fishing(index, entry, &entry.actor, &finding, batch)
                        .await?,
                );
            }
            ("lookup.decline", Decision::Allow) => {
                let Some(id) = &request else { return Ok(None) };
                let Some(record) = self.home().meta().request(id).await? else {
                    return Ok(None);
                };
                observation.principal_id = record.requester.clone();
                observation.action = DECLINED.to_owned();
                observation.allowed = false;
                observation.off_hours = false;
                findings.extend(
                    self.fishing(index, entry, &record.requester, &finding, batch)
                        .await?,
                );
            }
            ("lookup.fetch", Decision::Allow) => {
                let Some(id) = &request else { return Ok(None) };
                // The fetch joins its request's alert; it is itself
                // checked against the usual hours.
                let rules: Vec<FiredRule> = off_hours_rule().into_iter().collect();
                let joins = self
                    .open_alert(&format!("request:{id}"), batch)
                    .await?
                    .is_some();
                if joins || !rules.is_empty() {
                    findings.push(finding(format!("request:{id}"), &entry.actor, rules));
                }
            }
            ("extract" | "match.read", Decision::Allow) if is_principal_id(&entry.actor) => {
                if let Some(rule) = off_hours_rule() {
                    findings.push(finding(format!("access:{index}"), &entry.actor, vec![rule]));
                }
            }
            _ => return Ok(None),
        }
        Ok(Some((observation, findings)))
    }

    /// The burst rule, on a refusal of `principal`'s request.
    async fn fishing(
        &self,
        index: u64,
        entry: &Entry,
        principal: &str,
        finding: &impl Fn(String, &str, Vec<FiredRule>) -> Finding,
        batch: &Batch,
    ) -> Result<Option<Finding>, BrokerError> {
        let since = entry.time_micros - FISHING_WINDOW_MICROS;
        let mut refusals = self.home().meta().refusals_since(principal, since).await?;
        refusals.extend(
            batch
                .observations
                .iter()
                .filter(|o| o.principal_id == principal && o.time_micros >= since)
                .filter(|o| (o.action == "lookup.request" && !o.allowed) || o.action == DECLINED)
                .map(|o| o.ledger_index),
        );
        refusals.push(index);
        if refusals.len() < FISHING_THRESHOLD {
            return Ok(None);
        }
        let mut f = finding(
            format!("fishing:{principal}"),
            principal,
            vec![Rule::Fishing.fired(format!(
                "{} denied or declined look-up requests within an hour",
                refusals.len()
            ))],
        );
        // A new burst (after a resolution, or an hour's quiet) is a new
        // alert: anchored on the refusal that raises it.
        let newest = refusals.iter().copied().max().unwrap_or(index);
        f.id = Some(alert_id(self.subjects(), &f.key, newest));
        f.agreement = None;
        f.request = None;
        f.rests_on = refusals;
        Ok(Some(f))
    }

    /// The rules about the person looked up: the requester's own facts,
    /// protected subjects, the same subject asked again, the case
    /// reference. Returns the rules and further entries they rest on.
    async fn subject_rules(
        &self,
        index: u64,
        entry: &Entry,
        record: &custos_store::lookups::AccessRequestRecord,
        monitoring: Option<&CompiledMonitoring>,
        batch: &Batch,
    ) -> Result<(Vec<FiredRule>, Vec<u64>), BrokerError> {
        let meta = self.home().meta();
        let subject = SubjectCommitment(record.subject_commitment);
        let mut fired = Vec::new();
        let mut more = Vec::new();
        let schema = self.schema_of(&record.dataset).await?;
        if let Some(facts) = self.principal_facts(&record.requester).await? {
            let commit = |id: &str| {
                self.subjects()
                    .commit(&canonical_fact(schema.as_deref(), id))
            };
            if facts
                .own_id
                .as_deref()
                .is_some_and(|id| commit(id) == subject)
            {
                fired.push(Rule::SelfAccess.fired("the subject is the requester themself"));
            }
            if facts.household.iter().any(|id| commit(id) == subject) {
                fired.push(
                    Rule::Household
                        .fired("the subject is a member of the requester's declared household"),
                );
            }
            if facts.colleagues.iter().any(|id| commit(id) == subject) {
                fired.push(
                    Rule::Colleague.fired("the subject is a declared colleague of the requester"),
                );
            }
            if let Some(schema) = &schema {
                fired.extend(self.likeness_rules(record, schema, &facts).await?);
            }
        }
        if meta.subject_protected(&record.subject_commitment).await? {
            fired.push(Rule::Protected.fired("the subject is protected (high-profile)"));
        }
        let since = entry.time_micros - REPEAT_WINDOW_MICROS;
        let mut earlier = meta
            .subject_requests_since(&record.subject_commitment, since)
            .await?;
        earlier.extend(
            batch
                .observations
                .iter()
                .filter(|o| {
                    o.subject_commitment == Some(record.subject_commitment)
                        && o.time_micros >= since
                        && o.action == "lookup.request"
                        && o.allowed
                })
                .map(|o| {
                    (
                        o.principal_id.clone(),
                        o.agreement_id.clone(),
                        o.ledger_index,
                    )
                }),
        );
        // A newcomer to a subject others are on: the first request of this
        // principal, under this agreement, for a subject another principal
        // or another agreement asked for lately. Coming back to a subject
        // (the case worker who had it first, or the newcomer again) is
        // ordinary case work: it was flagged once, if at all.
        let mut principals = BTreeSet::new();
        let mut agreements = BTreeSet::new();
        let mut returning = false;
        for (principal, agreement, at) in earlier {
            if at >= index {
                continue;
            }
            let other_principal = principal != record.requester;
            let other_agreement = agreement.as_deref() != Some(record.agreement_id.as_str());
            if !other_principal && !other_agreement {
                returning = true;
            } else if !other_principal {
                // The same principal under another agreement: ask.
                more.push(at);
                agreements.extend(agreement);
            } else {
                more.push(at);
                principals.insert(principal);
                if let Some(a) = agreement.filter(|_| other_agreement) {
                    agreements.insert(a);
                }
            }
        }
        if returning {
            more.clear();
        }
        if !more.is_empty() {
            fired.push(Rule::RepeatSubject.fired(format!(
                "the same subject was requested in the last 30 days by {} other principal(s) and under {} other agreement(s)",
                principals.len(),
                agreements.len()
            )));
        }
        if let Some(pattern) = monitoring.and_then(|m| m.case_reference.as_ref()) {
            let justification = zeroize::Zeroizing::new(self.unseal(
                &record.id,
                Sealed::Justification,
                &record.justification_sealed,
            )?);
            if !pattern.is_match(&justification) {
                fired.push(Rule::NoCaseLink.fired(format!(
                    "the justification names no case reference of the form the agreement declares (`{}`)",
                    pattern.as_str()
                )));
            }
        }
        Ok((fired, more))
    }

    /// Surname, address, street and ZIP of the subject against the
    /// requester's, read from the dataset's describing columns.
    async fn likeness_rules(
        &self,
        record: &custos_store::lookups::AccessRequestRecord,
        schema: &DatasetSchema,
        facts: &PrincipalFacts,
    ) -> Result<Vec<FiredRule>, BrokerError> {
        let wanted = [
            (Describes::FullName, facts.surname.is_some()),
            (Describes::Surname, facts.surname.is_some()),
            (Describes::Address, facts.address.is_some()),
            (Describes::Zip, facts.zip.is_some()),
        ];
        let columns: Vec<(Describes, String)> = wanted
            .iter()
            .filter(|(_, needed)| *needed)
            .filter_map(|(what, _)| schema.describing(*what).map(|c| (*what, c.name.clone())))
            .collect();
        if columns.is_empty() {
            return Ok(Vec::new());
        }
        let subject = zeroize::Zeroizing::new(self.unseal(
            &record.id,
            Sealed::Subject,
            &record.subject_sealed,
        )?);
        let reader = self
            .open_dataset(&record.dataset, crate::contents::Reading::Subject(&subject))
            .await?;
        let names: Vec<String> = columns.iter().map(|(_, n)| n.clone()).collect();
        let id = subject.to_string();
        let batches = tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            reader.subject_rows(&id, Some(&names))
        })
        .await
        .map_err(|_| BrokerError::Internal("the read was interrupted".into()))?;
        let batches = match batches {
            Err(custos_store::DatasetError::BadSubject) => Vec::new(),
            other => other?,
        };
        // seen: surname, address, street, zip, ZIP area (first 3 digits).
        let mut seen = [false; 5];
        let area = |zip: &str| rules::normal(zip).chars().take(3).collect::<String>();
        for batch in &batches {
            for (i, (what, _)) in columns.iter().enumerate() {
                let array = batch.column(i);
                for row in 0..batch.num_rows() {
                    if array.is_null(row) {
                        continue;
                    }
                    let value =
                        arrow::util::display::array_value_to_string(array, row).unwrap_or_default();
                    let hit = |fact: &Option<String>, f: fn(&str) -> String| {
                        fact.as_deref().is_some_and(|mine| {
                            let mine = f(mine);
                            !mine.is_empty() && mine == f(&value)
                        })
                    };
                    match what {
                        Describes::FullName => {
                            seen[0] |= facts.surname.as_deref().is_some_and(|s| {
                                rules::normal(s) == rules::surname_of_full_name(&value)
                            });
                        }
                        Describes::Surname => seen[0] |= hit(&facts.surname, rules::normal),
                        Describes::Address => {
                            seen[1] |= hit(&facts.address, rules::normal);
                            seen[2] |= hit(&facts.address, rules::street_of);
                        }
                        Describes::Zip => {
                            seen[3] |= hit(&facts.zip, rules::normal);
                            seen[4] |= facts
                                .zip
                                .as_deref()
                                .is_some_and(|z| area(z).len() == 3 && area(z) == area(&value));
                        }
                    }
                }
            }
        }
        // A common family name alone would flag one look-up in a few
        // hundred: a namesake counts in the requester's ZIP area, when both
        // the requester's ZIP and the dataset's are known.
        let zip_known = facts.zip.is_some() && schema.describing(Describes::Zip).is_some();
        seen[0] &= !zip_known || seen[4];
        let mut fired = Vec::new();
        if seen[0] {
            fired.push(Rule::SameSurname.fired(
                "the subject shares the requester's family name (in the requester's ZIP area, when known)",
            ));
        }
        if seen[1] {
            fired.push(Rule::SameAddress.fired("the subject lives at the requester's address"));
        } else if seen[2] {
            fired.push(
                Rule::SameStreet.fired("the subject lives on the requester's street (a neighbour)"),
            );
        }
        if seen[3] {
            fired.push(Rule::SameZip.fired("the subject shares the requester's ZIP code"));
        }
        Ok(fired)
    }

    /// Raises a new alert for `finding`, or adds it to the open alert with
    /// the same key; a new alert, or one that gained a rule, awaits the next
    /// digest. `None` when the finding adds nothing to an open alert or
    /// concerns a resolved one.
    async fn raise(
        &self,
        finding: Finding,
        batch: &Batch,
        run: &mut DetectionRun,
    ) -> Result<Option<AlertRecord>, BrokerError> {
        let now = now_micros();
        let open = self.open_alert(&finding.key, batch).await?;
        // A burst that ended more than an hour ago is over: a new one
        // raises a new alert.
        let open = open.filter(|a| {
            !finding.key.starts_with("fishing:") || a.updated_micros >= now - FISHING_WINDOW_MICROS
        });
        let (mut alert, changed_rules) = match open {
            Some(mut a) => {
                let before: Vec<String> = a.rules.iter().map(|r| r.rule.clone()).collect();
                let mut changed = rules::merge(&mut a.rules, finding.rules);
                for i in finding.rests_on {
                    if !a.rests_on.contains(&i) {
                        a.rests_on.push(i);
                        changed = true;
                    }
                }
                if !changed {
                    return Ok(None);
                }
                a.updated_micros = now;
                run.updated += 1;
                let after: Vec<String> = a.rules.iter().map(|r| r.rule.clone()).collect();
                // Another entry for the same finding (a fetch, one more
                // refusal) changes the catalogue only; a new rule is
                // published with the next digest.
                (a, before != after)
            }
            None => {
                if finding.rules.is_empty() {
                    return Ok(None);
                }
                // A finding on a resolved alert adds nothing: the overseer
                // has judged that request, entry or day.
                let id = finding
                    .id
                    .clone()
                    .unwrap_or_else(|| alert_id(self.subjects(), &finding.key, 0));
                if self.is_resolved(&id, batch).await? {
                    return Ok(None);
                }
                run.raised += 1;
                (
                    AlertRecord {
                        id,
                        dedupe_key: finding.key,
                        raised_micros: now,
                        updated_micros: now,
                        principal_id: finding.principal,
                        agreement_id: finding.agreement.as_ref().map(|(id, _)| id.clone()),
                        request_id: finding.request,
                        rules: finding.rules,
                        score: 0.0,
                        rests_on: finding.rests_on,
                        state: AlertState::Open,
                        ledger_index: 0,
                        resolved_by: None,
                        resolved_micros: None,
                        resolution_sealed: None,
                        resolve_ledger_index: None,
                    },
                    true,
                )
            }
        };
        alert.rests_on.sort_unstable();
        alert.rests_on.dedup();
        // The first entries stay: they are what raised it.
        alert.rests_on.truncate(MAX_RESTS_ON);
        alert.score = rules::score(&alert.rules);
        if changed_rules {
            // Awaits the next digest (see the module's doc for why there is
            // no entry per alert).
            alert.ledger_index = 0;
        }
        Ok(Some(alert))
    }

    /// Whether the alert with this id has been resolved.
    async fn is_resolved(&self, id: &str, batch: &Batch) -> Result<bool, BrokerError> {
        if let Some(a) = batch.alerts.iter().find(|a| a.id == id) {
            return Ok(a.state == AlertState::Resolved);
        }
        Ok(self
            .home()
            .meta()
            .alert(id)
            .await?
            .is_some_and(|a| a.state == AlertState::Resolved))
    }

    /// The newest open alert with this key, in the batch or the catalogue.
    async fn open_alert(
        &self,
        key: &str,
        batch: &Batch,
    ) -> Result<Option<AlertRecord>, BrokerError> {
        let pending = batch
            .alerts
            .iter()
            .rev()
            .find(|a| a.dedupe_key == key && a.state == AlertState::Open);
        match pending {
            Some(a) => Ok(Some(a.clone())),
            None => Ok(self.home().meta().open_alert(key).await?),
        }
    }

    /// The agreement version's compiled `[monitoring]`, if it declares one.
    async fn monitoring(
        &self,
        id: &str,
        version: u32,
    ) -> Result<Option<Arc<CompiledMonitoring>>, BrokerError> {
        let key = (id.to_owned(), version);
        if let Some(hit) = self.detector.caches().monitoring.get(&key) {
            return Ok(hit.clone());
        }
        let agreement: Option<Agreement> = self.agreement_at(id, version).await?;
        let compiled = agreement
            .and_then(|a| a.monitoring)
            .and_then(|m| m.compile().ok())
            .map(Arc::new);
        self.detector
            .caches()
            .monitoring
            .insert(key, compiled.clone());
        Ok(compiled)
    }

    /// A dataset's schema (cached).
    async fn schema_of(&self, dataset: &str) -> Result<Option<Arc<DatasetSchema>>, BrokerError> {
        if let Some(hit) = self.detector.caches().schemas.get(dataset) {
            return Ok(hit.clone());
        }
        let schema = self
            .home()
            .meta()
            .dataset(dataset)
            .await?
            .and_then(|r| DatasetSchema::from_toml(&r.schema_toml).ok())
            .map(Arc::new);
        self.detector
            .caches()
            .schemas
            .insert(dataset.to_owned(), schema.clone());
        Ok(schema)
    }

    /// Compares every principal's day under each agreement with its peers,
    /// raising one alert per deviating principal-day: every day since the
    /// last scan's (at most four weeks back), so that a home scanned
    /// rarely (`custos alerts scan` from cron) misses no day.
    pub async fn scan_peers(&self) -> Result<DetectionRun, BrokerError> {
        self.check_writer()?;
        let _one = self.detector.running.lock().await;
        let meta = self.home().meta();
        let today = now_micros().div_euclid(DAY_MICROS);
        let last = instance_number(meta.as_ref(), PEERS_SCANNED).await?;
        let from = last
            .map_or(today - 1, |d| d.min(today - 1))
            .max(today - WINDOW_DAYS);
        let mut run = DetectionRun {
            next_index: meta.browsing_cursor().await?,
            ..DetectionRun::default()
        };
        for agreement in meta.observed_agreements(from, today).await? {
            let days = meta
                .peer_days(&agreement, today - WINDOW_DAYS, today)
                .await?;
            let version = self
                .home()
                .meta()
                .agreement_versions(&agreement)
                .await?
                .last()
                .map_or(0, |v| v.version);
            for target in days.iter().filter(|d| d.day >= from) {
                let peers: Vec<_> = days
                    .iter()
                    .filter(|d| !(d.principal_id == target.principal_id && d.day == target.day))
                    .collect();
                let found = peers::deviations(target, &peers);
                if found.is_empty() {
                    continue;
                }
                let key = format!("peer:{}:{}:{}", target.principal_id, agreement, target.day);
                let id = alert_id(self.subjects(), &key, 0);
                if meta.alert(&id).await?.is_some() {
                    continue;
                }
                let z = found.iter().map(|d| d.z).fold(0.0, f64::max);
                let detail = format!(
                    "on {} under this agreement: {}",
                    super::rfc3339(target.day * DAY_MICROS)
                        .split('T')
                        .next()
                        .unwrap_or_default(),
                    found
                        .iter()
                        .map(peers::Deviation::describe)
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                let mut rule = Rule::PeerDeviation.fired(detail);
                rule.weight = (0.5 + z / 40.0).min(0.95);
                let mut rests_on = meta
                    .day_entries(&target.principal_id, &agreement, target.day, MAX_RESTS_ON)
                    .await?;
                rests_on.sort_unstable();
                let finding = Finding {
                    id: Some(id),
                    key: key.clone(),
                    principal: target.principal_id.clone(),
                    agreement: Some((agreement.clone(), version)),
                    request: None,
                    rules: vec![rule],
                    rests_on,
                };
                if let Some(alert) = self.raise(finding, &Batch::default(), &mut run).await? {
                    meta.commit_detection(&[], &[alert], run.next_index).await?;
                }
            }
        }
        set_instance_number(meta.as_ref(), PEERS_SCANNED, today).await?;
        Ok(run)
    }
}

/// A number the detector keeps in an instance setting (a day, a time).
async fn instance_number(meta: &dyn MetadataStore, key: &str) -> Result<Option<i64>, BrokerError> {
    Ok(meta
        .instance_value(key)
        .await?
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| t.parse::<i64>().ok()))
}

async fn set_instance_number(
    meta: &dyn MetadataStore,
    key: &str,
    value: i64,
) -> Result<(), BrokerError> {
    Ok(meta
        .replace_instance_values(&[(key, value.to_string().as_bytes())], &[])
        .await?)
}

/// A declared id (own, household, colleague) spelt as the dataset stores
/// its subject ids: an integer id without its separators and leading zeros
/// (`000-60-9467` → `609467`), a text id in the canonical spelling.
fn canonical_fact(schema: Option<&DatasetSchema>, id: &str) -> String {
    let Some(schema) = schema else {
        return custos_model::schema::canonical_subject(id.trim()).into_owned();
    };
    if schema.subject_column().ty == custos_model::ColumnType::Integer {
        let digits: String = id.chars().filter(char::is_ascii_digit).collect();
        if let Ok(v) = digits.parse::<i64>() {
            return v.to_string();
        }
    }
    schema
        .canonical_subject_id(id)
        .unwrap_or_else(|| id.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_ids_follow_what_they_are_about() {
        let c = custos_ledger::SubjectCommitter::new(&[7; 32]);
        let other = custos_ledger::SubjectCommitter::new(&[8; 32]);
        assert_eq!(alert_id(&c, "request:r1", 5), alert_id(&c, "request:r1", 5));
        assert_ne!(alert_id(&c, "request:r1", 5), alert_id(&c, "request:r2", 5));
        assert_ne!(
            alert_id(&c, "request:r1", 5),
            alert_id(&other, "request:r1", 5)
        );
        assert!(is_principal_id("p0123456789abcdef"));
        assert!(!is_principal_id("local-admin"));
    }

    #[test]
    fn declared_ids_are_spelt_as_the_dataset_stores_them() {
        let integer = DatasetSchema::from_toml(
            "[[columns]]\nname = \"ssn\"\nclass = \"subject_id\"\ntype = \"integer\"\n",
        )
        .unwrap();
        let text = DatasetSchema::from_toml(
            "[[columns]]\nname = \"tin\"\nclass = \"subject_id\"\ntype = \"string\"\n",
        )
        .unwrap();
        assert_eq!(canonical_fact(Some(&integer), "000-60-9467"), "609467");
        assert_eq!(canonical_fact(Some(&integer), "609467"), "609467");
        assert_eq!(canonical_fact(Some(&text), "000-60-9467"), "000609467");
        assert_eq!(canonical_fact(None, " 000 60 9467"), "000609467");
    }
}
