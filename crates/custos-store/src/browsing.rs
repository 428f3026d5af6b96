//! What unusual-browsing detection keeps (docs/browsing.md): principals'
//! own identifying facts (sealed), the detector's observations of the
//! ledger and how far it has read, and the alerts it raised. Migration
//! `0013_browsing.sql`.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::lookups::{to_i64, to_u64};
use crate::meta::{MetaError, SqlMetadata};

/// Microseconds in a day (days are UTC).
pub const DAY_MICROS: i64 = 86_400_000_000;

/// The action an observation of a declined request is recorded under (the
/// principal is the requester, not the approver who declined).
pub const DECLINED: &str = "lookup.declined";

/// One access the detector read from the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The ledger entry it was read from.
    pub ledger_index: u64,
    /// When (the entry's time).
    pub time_micros: i64,
    /// Who acted (for a decline: the requester).
    pub principal_id: String,
    /// Under which agreement, if any.
    pub agreement_id: Option<String>,
    /// The entry's action (`lookup.request`, `lookup.fetch`, `extract`,
    /// `match.read`) or [`DECLINED`].
    pub action: String,
    /// Whether it was allowed.
    pub allowed: bool,
    /// The look-up request, if any.
    pub request_id: Option<String>,
    /// The subject's stable commitment (identified look-ups only).
    pub subject_commitment: Option<[u8; 32]>,
    /// Outside the agreement's declared usual hours.
    pub off_hours: bool,
}

/// One rule that fired, with its explanation (never personal data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FiredRule {
    /// The rule's name (docs/browsing.md).
    pub rule: String,
    /// Why it fired, in words.
    pub detail: String,
    /// Its weight in the score (0-1).
    pub weight: f64,
}

/// Whether an alert still needs an overseer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AlertState {
    /// Raised, not yet looked into.
    Open,
    /// Looked into and closed with a reason.
    Resolved,
}

impl AlertState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Resolved => "resolved",
        }
    }

    fn parse(text: &str) -> Result<Self, MetaError> {
        match text {
            "open" => Ok(Self::Open),
            "resolved" => Ok(Self::Resolved),
            other => Err(MetaError::Database(format!(
                "unknown alert state `{other}`"
            ))),
        }
    }
}

/// An alert as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    /// `alr_` + 16 hex digits.
    pub id: String,
    /// What makes two findings one alert (a request, a burst, a day).
    pub dedupe_key: String,
    /// When it was raised.
    pub raised_micros: i64,
    /// When it last gained a rule or an entry.
    pub updated_micros: i64,
    /// The principal whose access it is about.
    pub principal_id: String,
    /// The agreement, if one.
    pub agreement_id: Option<String>,
    /// The look-up request, if one.
    pub request_id: Option<String>,
    /// The rules that fired.
    pub rules: Vec<FiredRule>,
    /// 1 − Π(1 − weight): how unusual, 0-1.
    pub score: f64,
    /// The ledger entries it rests on.
    pub rests_on: Vec<u64>,
    /// Open or resolved.
    pub state: AlertState,
    /// The `alert.digest` entry that last published it; 0 while it awaits
    /// the next digest (entry 0 is always the home's first, never a digest).
    pub ledger_index: u64,
    /// Who resolved it.
    pub resolved_by: Option<String>,
    /// When.
    pub resolved_micros: Option<i64>,
    /// The resolution's reason, sealed under the master key.
    pub resolution_sealed: Option<Vec<u8>>,
    /// The `alert.resolve` entry.
    pub resolve_ledger_index: Option<u64>,
}

/// One principal's day under one agreement, as peers are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDay {
    /// The principal.
    pub principal_id: String,
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    /// Allowed look-up requests.
    pub lookups: u64,
    /// Distinct subjects requested.
    pub subjects: u64,
    /// Denied or declined requests.
    pub denials: u64,
    /// Allowed requests outside the usual hours.
    pub off_hours: u64,
    /// Subjects this principal had never requested before that day.
    pub new_subjects: u64,
}

/// What the detector stores, for every metadata backend.
#[async_trait]
pub trait BrowsingStore: Send + Sync {
    /// Sets (replaces) a principal's sealed facts.
    async fn set_principal_facts(
        &self,
        principal_id: &str,
        sealed: &[u8],
        micros: i64,
    ) -> Result<(), MetaError>;
    /// A principal's sealed facts, if any were set.
    async fn principal_facts(&self, principal_id: &str) -> Result<Option<Vec<u8>>, MetaError>;
    /// The first ledger index the detector has not read.
    async fn browsing_cursor(&self) -> Result<u64, MetaError>;
    /// In one transaction: records observations, inserts or replaces
    /// alerts, and moves the cursor to `next_index`.
    async fn commit_detection(
        &self,
        observations: &[Observation],
        alerts: &[AlertRecord],
        next_index: u64,
    ) -> Result<(), MetaError>;
    /// Allowed look-up requests of `subject` since `since_micros`:
    /// (principal, agreement, ledger index).
    async fn subject_requests_since(
        &self,
        subject: &[u8; 32],
        since_micros: i64,
    ) -> Result<Vec<(String, Option<String>, u64)>, MetaError>;
    /// Ledger indices of `principal`'s denied and declined requests since
    /// `since_micros`.
    async fn refusals_since(
        &self,
        principal: &str,
        since_micros: i64,
    ) -> Result<Vec<u64>, MetaError>;
    /// The open alert with this dedupe key, if any.
    async fn open_alert(&self, dedupe_key: &str) -> Result<Option<AlertRecord>, MetaError>;
    /// Alerts raised or changed since the last digest (`ledger_index` 0).
    async fn alerts_awaiting_publication(&self) -> Result<Vec<AlertRecord>, MetaError>;
    /// Marks these alerts as published by the digest at `ledger_index`.
    async fn mark_alerts_published(
        &self,
        ids: &[String],
        ledger_index: u64,
    ) -> Result<(), MetaError>;
    /// Ledger indices of `principal`'s look-up observations under
    /// `agreement` on `day` (at most `limit`).
    async fn day_entries(
        &self,
        principal: &str,
        agreement: &str,
        day: i64,
        limit: usize,
    ) -> Result<Vec<u64>, MetaError>;
    /// Agreements with look-up observations on days `from..=to`.
    async fn observed_agreements(&self, from: i64, to: i64) -> Result<Vec<String>, MetaError>;
    /// Every principal-day of look-ups under `agreement` on days `from..=to`.
    async fn peer_days(
        &self,
        agreement: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<PeerDay>, MetaError>;
    /// Alerts in `state` (any if none), highest score first, then newest:
    /// `limit` (capped at 500) from `offset`. Ordered by score so that a
    /// flood of weak alerts cannot push a strong one off the first page.
    async fn list_alerts(
        &self,
        state: Option<AlertState>,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<AlertRecord>, MetaError>;
    /// How many alerts are in `state` (any if none).
    async fn count_alerts(&self, state: Option<AlertState>) -> Result<u64, MetaError>;
    /// Every alert in the order raised, `limit` from `offset` (exports,
    /// measurements).
    async fn alerts_page(&self, offset: u64, limit: u32) -> Result<Vec<AlertRecord>, MetaError>;
    /// One alert.
    async fn alert(&self, id: &str) -> Result<Option<AlertRecord>, MetaError>;
    /// Resolves an open alert; false if it was not open.
    async fn resolve_alert(
        &self,
        id: &str,
        by: &str,
        micros: i64,
        sealed_reason: &[u8],
        ledger_index: u64,
    ) -> Result<bool, MetaError>;
}

fn alert_from_row(row: &sqlx::any::AnyRow) -> Result<AlertRecord, MetaError> {
    let rules: String = row.try_get("rules")?;
    let rests_on: String = row.try_get("rests_on")?;
    let state: String = row.try_get("state")?;
    let opt_u64 = |name: &str| -> Result<Option<u64>, MetaError> {
        row.try_get::<Option<i64>, _>(name)?.map(to_u64).transpose()
    };
    Ok(AlertRecord {
        id: row.try_get("id")?,
        dedupe_key: row.try_get("dedupe_key")?,
        raised_micros: row.try_get("raised_micros")?,
        updated_micros: row.try_get("updated_micros")?,
        principal_id: row.try_get("principal_id")?,
        agreement_id: row.try_get("agreement_id")?,
        request_id: row.try_get("request_id")?,
        rules: serde_json::from_str(&rules)
            .map_err(|e| MetaError::Database(format!("malformed alert rules: {e}")))?,
        score: row.try_get("score")?,
        rests_on: serde_json::from_str(&rests_on)
            .map_err(|e| MetaError::Database(format!("malformed alert entries: {e}")))?,
        state: AlertState::parse(&state)?,
        ledger_index: to_u64(row.try_get("ledger_index")?)?,
        resolved_by: row.try_get("resolved_by")?,
        resolved_micros: row.try_get("resolved_micros")?,
        resolution_sealed: row.try_get("resolution_sealed")?,
        resolve_ledger_index: opt_u64("resolve_ledger_index")?,
    })
}

fn json(value: &impl Serialize) -> Result<String, MetaError> {
    serde_json::to_string(value).map_err(|e| MetaError::Database(e.to_string()))
}

#[async_trait]
impl BrowsingStore for SqlMetadata {
    async fn set_principal_facts(
        &self,
        principal_id: &str,
        sealed: &[u8],
        micros: i64,
    ) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO principal_facts (principal_id, facts_sealed, updated_micros) VALUES ($1, $2, $3) \
             ON CONFLICT (principal_id) DO UPDATE SET facts_sealed = excluded.facts_sealed, \
             updated_micros = excluded.updated_micros",
        )
        .bind(principal_id)
        .bind(sealed)
        .bind(micros)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn principal_facts(&self, principal_id: &str) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(
            sqlx::query("SELECT facts_sealed FROM principal_facts WHERE principal_id = $1")
                .bind(principal_id)
                .fetch_optional(self.pool())
                .await?
                .map(|r| r.try_get("facts_sealed"))
                .transpose()?,
        )
    }

    async fn browsing_cursor(&self) -> Result<u64, MetaError> {
        let row = sqlx::query("SELECT next_index FROM browsing_cursor WHERE id = 1")
            .fetch_optional(self.pool())
            .await?;
        match row {
            None => Ok(0),
            Some(r) => to_u64(r.try_get("next_index")?),
        }
    }

    async fn commit_detection(
        &self,
        observations: &[Observation],
        alerts: &[AlertRecord],
        next_index: u64,
    ) -> Result<(), MetaError> {
        let mut tx = self.pool().begin().await?;
        for o in observations {
            sqlx::query(
                "INSERT INTO browsing_observations (ledger_index, time_micros, day, \
                 principal_id, agreement_id, action, allowed, request_id, subject_commitment, off_hours) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (ledger_index) DO NOTHING",
            )
            .bind(to_i64(o.ledger_index)?)
            .bind(o.time_micros)
            .bind(o.time_micros.div_euclid(DAY_MICROS))
            .bind(&o.principal_id)
            .bind(&o.agreement_id)
            .bind(&o.action)
            .bind(i64::from(o.allowed))
            .bind(&o.request_id)
            .bind(o.subject_commitment.map(|c| c.to_vec()))
            .bind(i64::from(o.off_hours))
            .execute(&mut *tx)
            .await?;
        }
        for a in alerts {
            // A new alert is inserted; an open one takes the detector's
            // findings; a resolved one is never changed (its resolution
            // stands: the resolver and the detector are serialised too).
            sqlx::query(
                "INSERT INTO alerts (id, dedupe_key, raised_micros, updated_micros, \
                 principal_id, agreement_id, request_id, rules, score, rests_on, state, ledger_index, \
                 resolved_by, resolved_micros, resolution_sealed, resolve_ledger_index) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                 ON CONFLICT (id) DO UPDATE SET updated_micros = excluded.updated_micros, \
                 rules = excluded.rules, score = excluded.score, rests_on = excluded.rests_on, \
                 ledger_index = excluded.ledger_index WHERE alerts.state = 'open'",
            )
            .bind(&a.id)
            .bind(&a.dedupe_key)
            .bind(a.raised_micros)
            .bind(a.updated_micros)
            .bind(&a.principal_id)
            .bind(&a.agreement_id)
            .bind(&a.request_id)
            .bind(json(&a.rules)?)
            .bind(a.score)
            .bind(json(&a.rests_on)?)
            .bind(a.state.as_str())
            .bind(to_i64(a.ledger_index)?)
            .bind(&a.resolved_by)
            .bind(a.resolved_micros)
            .bind(&a.resolution_sealed)
            .bind(a.resolve_ledger_index.map(to_i64).transpose()?)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO browsing_cursor (id, next_index) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET next_index = CASE \
               WHEN excluded.next_index > browsing_cursor.next_index THEN excluded.next_index \
               ELSE browsing_cursor.next_index END",
        )
        .bind(to_i64(next_index)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn subject_requests_since(
        &self,
        subject: &[u8; 32],
        since_micros: i64,
    ) -> Result<Vec<(String, Option<String>, u64)>, MetaError> {
        let rows = sqlx::query(
            "SELECT principal_id, agreement_id, ledger_index FROM browsing_observations \
             WHERE subject_commitment = $1 AND time_micros >= $2 AND action = 'lookup.request' \
             AND allowed = 1 ORDER BY ledger_index LIMIT 1000",
        )
        .bind(subject.as_slice())
        .bind(since_micros)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("principal_id")?,
                    r.try_get("agreement_id")?,
                    to_u64(r.try_get("ledger_index")?)?,
                ))
            })
            .collect()
    }

    async fn refusals_since(
        &self,
        principal: &str,
        since_micros: i64,
    ) -> Result<Vec<u64>, MetaError> {
        let rows = sqlx::query(
            "SELECT ledger_index FROM browsing_observations WHERE principal_id = $1 \
             AND time_micros >= $2 AND ((action = 'lookup.request' AND allowed = 0) OR action = $3) \
             ORDER BY ledger_index LIMIT 1000",
        )
        .bind(principal)
        .bind(since_micros)
        .bind(DECLINED)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| to_u64(r.try_get("ledger_index")?))
            .collect()
    }

    async fn open_alert(&self, dedupe_key: &str) -> Result<Option<AlertRecord>, MetaError> {
        sqlx::query(
            "SELECT * FROM alerts WHERE dedupe_key = $1 AND state = 'open' \
             ORDER BY raised_micros DESC LIMIT 1",
        )
        .bind(dedupe_key)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(alert_from_row)
        .transpose()
    }

    async fn alerts_awaiting_publication(&self) -> Result<Vec<AlertRecord>, MetaError> {
        sqlx::query("SELECT * FROM alerts WHERE ledger_index = 0 ORDER BY id")
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(alert_from_row)
            .collect()
    }

    async fn mark_alerts_published(
        &self,
        ids: &[String],
        ledger_index: u64,
    ) -> Result<(), MetaError> {
        let mut tx = self.pool().begin().await?;
        for id in ids {
            sqlx::query("UPDATE alerts SET ledger_index = $1 WHERE id = $2 AND ledger_index = 0")
                .bind(to_i64(ledger_index)?)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn day_entries(
        &self,
        principal: &str,
        agreement: &str,
        day: i64,
        limit: usize,
    ) -> Result<Vec<u64>, MetaError> {
        let rows = sqlx::query(
            "SELECT ledger_index FROM browsing_observations WHERE principal_id = $1 \
             AND agreement_id = $2 AND day = $3 AND action IN ('lookup.request', $4) \
             ORDER BY ledger_index LIMIT $5",
        )
        .bind(principal)
        .bind(agreement)
        .bind(day)
        .bind(DECLINED)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| to_u64(r.try_get("ledger_index")?))
            .collect()
    }

    async fn observed_agreements(&self, from: i64, to: i64) -> Result<Vec<String>, MetaError> {
        let rows = sqlx::query(
            "SELECT DISTINCT agreement_id FROM browsing_observations \
             WHERE day BETWEEN $1 AND $2 AND agreement_id IS NOT NULL \
             AND action IN ('lookup.request', $3)",
        )
        .bind(from)
        .bind(to)
        .bind(DECLINED)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get("agreement_id")?))
            .collect()
    }

    async fn peer_days(
        &self,
        agreement: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<PeerDay>, MetaError> {
        // A subject is new to a principal on the first day that principal
        // requested it under any agreement.
        let rows = sqlx::query(
            "WITH firsts AS ( \
               SELECT principal_id, subject_commitment, MIN(day) AS first_day \
               FROM browsing_observations \
               WHERE action = 'lookup.request' AND allowed = 1 AND subject_commitment IS NOT NULL \
                 AND principal_id IN (SELECT DISTINCT principal_id FROM browsing_observations \
                                      WHERE agreement_id = $1 AND day BETWEEN $2 AND $3) \
               GROUP BY principal_id, subject_commitment) \
             SELECT o.principal_id AS principal_id, o.day AS day, \
               SUM(CASE WHEN o.action = 'lookup.request' AND o.allowed = 1 THEN 1 ELSE 0 END) AS lookups, \
               COUNT(DISTINCT CASE WHEN o.action = 'lookup.request' AND o.allowed = 1 \
                     THEN o.subject_commitment END) AS subjects, \
               SUM(CASE WHEN o.allowed = 0 OR o.action = $4 THEN 1 ELSE 0 END) AS denials, \
               SUM(CASE WHEN o.action = 'lookup.request' AND o.allowed = 1 AND o.off_hours = 1 \
                   THEN 1 ELSE 0 END) AS off_hours, \
               COUNT(DISTINCT CASE WHEN o.action = 'lookup.request' AND o.allowed = 1 \
                     AND f.first_day = o.day THEN o.subject_commitment END) AS new_subjects \
             FROM browsing_observations o LEFT JOIN firsts f \
               ON f.principal_id = o.principal_id AND f.subject_commitment = o.subject_commitment \
             WHERE o.agreement_id = $1 AND o.day BETWEEN $2 AND $3 \
               AND o.action IN ('lookup.request', $4) \
             GROUP BY o.principal_id, o.day ORDER BY o.day, o.principal_id",
        )
        .bind(agreement)
        .bind(from)
        .bind(to)
        .bind(DECLINED)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PeerDay {
                    principal_id: r.try_get("principal_id")?,
                    day: r.try_get("day")?,
                    lookups: to_u64(r.try_get("lookups")?)?,
                    subjects: to_u64(r.try_get("subjects")?)?,
                    denials: to_u64(r.try_get("denials")?)?,
                    off_hours: to_u64(r.try_get("off_hours")?)?,
                    new_subjects: to_u64(r.try_get("new_subjects")?)?,
                })
            })
            .collect()
    }

    async fn list_alerts(
        &self,
        state: Option<AlertState>,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<AlertRecord>, MetaError> {
        let rows = sqlx::query(
            "SELECT * FROM alerts WHERE ($1 IS NULL OR state = $1) \
             ORDER BY score DESC, raised_micros DESC, id LIMIT $2 OFFSET $3",
        )
        .bind(state.map(AlertState::as_str))
        .bind(i64::from(limit.clamp(1, 500)))
        .bind(to_i64(offset)?)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(alert_from_row).collect()
    }

    async fn count_alerts(&self, state: Option<AlertState>) -> Result<u64, MetaError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM alerts WHERE ($1 IS NULL OR state = $1)")
            .bind(state.map(AlertState::as_str))
            .fetch_one(self.pool())
            .await?;
        to_u64(row.try_get("n")?)
    }

    async fn alerts_page(&self, offset: u64, limit: u32) -> Result<Vec<AlertRecord>, MetaError> {
        let rows =
            sqlx::query("SELECT * FROM alerts ORDER BY raised_micros, id LIMIT $1 OFFSET $2")
                .bind(i64::from(limit.clamp(1, 500)))
                .bind(to_i64(offset)?)
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(alert_from_row).collect()
    }

    async fn alert(&self, id: &str) -> Result<Option<AlertRecord>, MetaError> {
        sqlx::query("SELECT * FROM alerts WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(alert_from_row)
            .transpose()
    }

    async fn resolve_alert(
        &self,
        id: &str,
        by: &str,
        micros: i64,
        sealed_reason: &[u8],
        ledger_index: u64,
    ) -> Result<bool, MetaError> {
        let done = sqlx::query(
            "UPDATE alerts SET state = 'resolved', resolved_by = $1, resolved_micros = $2, \
             resolution_sealed = $3, resolve_ledger_index = $4 WHERE id = $5 AND state = 'open'",
        )
        .bind(by)
        .bind(micros)
        .bind(sealed_reason)
        .bind(to_i64(ledger_index)?)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(index: u64, principal: &str, day: i64, subject: u8, allowed: bool) -> Observation {
        Observation {
            ledger_index: index,
            time_micros: day * DAY_MICROS + 3_600_000_000,
            principal_id: principal.into(),
            agreement_id: Some("a1".into()),
            action: "lookup.request".into(),
            allowed,
            request_id: None,
            subject_commitment: allowed.then_some([subject; 32]),
            off_hours: false,
        }
    }

    #[tokio::test]
    async fn peer_days_count_people_and_new_subjects() {
        for catalogue in crate::testing::catalogues().await {
            let meta = &catalogue.meta;
            let mut i = 0;
            let mut add = |o: Observation| {
                i += 1;
                (o, i)
            };
            let plan = [
                add(observe(0, "p1", 10, 1, true)),
                add(observe(0, "p1", 10, 1, true)),
                add(observe(0, "p1", 10, 2, true)),
                add(observe(0, "p1", 11, 2, true)),
                add(observe(0, "p1", 11, 3, true)),
                add(observe(0, "p1", 11, 0, false)),
            ];
            for (mut o, index) in plan {
                o.ledger_index = index;
                meta.commit_detection(std::slice::from_ref(&o), &[], index + 1)
                    .await
                    .unwrap();
            }
            assert_eq!(meta.browsing_cursor().await.unwrap(), 7);
            let days = meta.peer_days("a1", 10, 11).await.unwrap();
            assert_eq!(days.len(), 2);
            assert_eq!(
                (days[0].lookups, days[0].subjects, days[0].new_subjects),
                (3, 2, 2)
            );
            // Day 11: subject 2 was seen on day 10, subject 3 is new.
            assert_eq!(
                (
                    days[1].lookups,
                    days[1].subjects,
                    days[1].new_subjects,
                    days[1].denials
                ),
                (2, 2, 1, 1)
            );
            assert_eq!(meta.refusals_since("p1", 0).await.unwrap(), vec![6]);
        }
    }

    #[tokio::test]
    async fn the_detector_never_undoes_a_resolution() {
        for catalogue in crate::testing::catalogues().await {
            let meta = &catalogue.meta;
            let mut alert = AlertRecord {
                id: "alr_1".into(),
                dedupe_key: "fishing:p1".into(),
                raised_micros: 1,
                updated_micros: 1,
                principal_id: "p1".into(),
                agreement_id: None,
                request_id: None,
                rules: Vec::new(),
                score: 0.6,
                rests_on: vec![1],
                state: AlertState::Open,
                ledger_index: 2,
                resolved_by: None,
                resolved_micros: None,
                resolution_sealed: None,
                resolve_ledger_index: None,
            };
            meta.commit_detection(&[], std::slice::from_ref(&alert), 3)
                .await
                .unwrap();
            assert!(
                meta.resolve_alert("alr_1", "p9", 5, b"sealed", 4)
                    .await
                    .unwrap()
            );
            // The detector's stale copy, one more entry on it, saved later.
            alert.rests_on.push(3);
            alert.updated_micros = 6;
            meta.commit_detection(&[], &[alert], 4).await.unwrap();
            let stored = meta.alert("alr_1").await.unwrap().unwrap();
            assert_eq!(stored.state, AlertState::Resolved);
            assert_eq!(stored.resolve_ledger_index, Some(4));
            assert_eq!(stored.rests_on, vec![1]);
        }
    }
}
