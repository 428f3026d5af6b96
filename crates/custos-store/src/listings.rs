//! Lists for people at a screen (the console): requests by state,
//! requester or agreement, what an approver decided, and an agreement's
//! activity per day. Every list is bounded and served by an index, so a
//! page stays fast however long the catalogue grows.

use async_trait::async_trait;
use sqlx::Row;

use crate::lookups::{
    AccessRequestRecord, ApprovalRecord, DeclineRecord, RequestState, approval_from_row,
    decline_from_row, request_from_row, to_u64,
};
use crate::matches::{MatchJob, job_of};
use crate::meta::{MetaError, SqlMetadata};
use crate::sql::Statement;

/// Microseconds in a day (days are UTC).
const DAY_MICROS: i64 = 86_400_000_000;

/// Which requests to list.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// Only requests in this state.
    pub state: Option<RequestState>,
    /// Only requests by this principal.
    pub requester: Option<String>,
    /// Only requests under these agreements (none: any agreement).
    pub agreements: Option<Vec<String>>,
    /// Leave out requests by this principal.
    pub not_requester: Option<String>,
    /// Oldest first (a queue) rather than newest first (a history).
    pub oldest_first: bool,
    /// At most this many (capped at 500).
    pub limit: u32,
}

/// One day of an agreement's activity.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DayActivity {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    /// Look-up requests made that day.
    pub requests: u64,
    /// Privacy budget charged that day, over all datasets.
    pub spent: f64,
}

/// The lists every metadata backend provides.
#[async_trait]
pub trait ListingStore: Send + Sync {
    /// Requests matching `filter`.
    async fn list_requests(
        &self,
        filter: &RequestFilter,
    ) -> Result<Vec<AccessRequestRecord>, MetaError>;
    /// The latest approvals given by `approver`, newest first.
    async fn approvals_by(
        &self,
        approver: &str,
        limit: u32,
    ) -> Result<Vec<ApprovalRecord>, MetaError>;
    /// The latest declines by `decliner`, newest first.
    async fn declines_by(
        &self,
        decliner: &str,
        limit: u32,
    ) -> Result<Vec<DeclineRecord>, MetaError>;
    /// Match results of this home's requests that wait for an approver's
    /// confirmation, oldest first.
    async fn unverified_matches(&self, limit: u32) -> Result<Vec<MatchJob>, MetaError>;
    /// Requests and budget charges per day under `agreement_id` since
    /// `since_micros`, oldest day first (days without either are absent).
    async fn agreement_days(
        &self,
        agreement_id: &str,
        since_micros: i64,
    ) -> Result<Vec<DayActivity>, MetaError>;
}

fn capped(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 500))
}

#[async_trait]
impl ListingStore for SqlMetadata {
    async fn list_requests(
        &self,
        filter: &RequestFilter,
    ) -> Result<Vec<AccessRequestRecord>, MetaError> {
        let mut sql = Statement::new("SELECT * FROM access_requests WHERE 1 = 1");
        if let Some(state) = filter.state {
            sql.push(" AND state = ").bind(state.as_str())?;
        }
        if let Some(requester) = &filter.requester {
            sql.push(" AND requester = ").bind(requester.clone())?;
        }
        if let Some(requester) = &filter.not_requester {
            sql.push(" AND requester != ").bind(requester.clone())?;
        }
        if let Some(agreements) = &filter.agreements {
            if agreements.is_empty() {
                return Ok(Vec::new());
            }
            sql.push(" AND agreement_id IN (");
            for (i, id) in agreements.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(id.clone())?;
            }
            sql.push(")");
        }
        sql.push(if filter.oldest_first {
            " ORDER BY created_micros ASC, id ASC"
        } else {
            " ORDER BY created_micros DESC, id DESC"
        });
        sql.push(" LIMIT ").bind(capped(filter.limit))?;
        let rows = sql.build().fetch_all(self.pool()).await?;
        rows.iter().map(request_from_row).collect()
    }

    async fn approvals_by(
        &self,
        approver: &str,
        limit: u32,
    ) -> Result<Vec<ApprovalRecord>, MetaError> {
        let rows = sqlx::query(
            "SELECT * FROM approvals WHERE approver = $1 ORDER BY approved_at DESC, ledger_index DESC LIMIT $2",
        )
        .bind(approver)
        .bind(capped(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(approval_from_row).collect()
    }

    async fn declines_by(
        &self,
        decliner: &str,
        limit: u32,
    ) -> Result<Vec<DeclineRecord>, MetaError> {
        let rows = sqlx::query(
            "SELECT * FROM request_declines WHERE decliner = $1 ORDER BY declined_at DESC, ledger_index DESC LIMIT $2",
        )
        .bind(decliner)
        .bind(capped(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(decline_from_row).collect()
    }

    async fn unverified_matches(&self, limit: u32) -> Result<Vec<MatchJob>, MetaError> {
        let rows = sqlx::query(
            "SELECT * FROM match_jobs WHERE state = 'unverified' AND side = 'requester' \
             ORDER BY created_at, job_id LIMIT $1",
        )
        .bind(capped(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_of).collect()
    }

    async fn agreement_days(
        &self,
        agreement_id: &str,
        since_micros: i64,
    ) -> Result<Vec<DayActivity>, MetaError> {
        let rows = sqlx::query(
            "SELECT day, CAST(SUM(requests) AS BIGINT) AS requests, SUM(spent) AS spent FROM ( \
               SELECT created_micros / $1 AS day, COUNT(*) AS requests, CAST(0 AS DOUBLE PRECISION) AS spent \
                 FROM access_requests WHERE agreement_id = $2 AND created_micros >= $3 GROUP BY day \
               UNION ALL \
               SELECT at_micros / $1 AS day, 0 AS requests, SUM(spend) AS spent \
                 FROM privacy_charges WHERE agreement_id = $2 AND at_micros >= $3 GROUP BY day \
             ) AS activity GROUP BY day ORDER BY day",
        )
        .bind(DAY_MICROS)
        .bind(agreement_id)
        .bind(since_micros)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DayActivity {
                    day: row.try_get("day")?,
                    requests: to_u64(row.try_get("requests")?)?,
                    spent: row.try_get("spent")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookups::{SubjectEvent, SubjectEventKind};
    use crate::meta::MetadataStore;

    fn request(id: &str, requester: &str, micros: i64) -> AccessRequestRecord {
        AccessRequestRecord {
            id: id.into(),
            agreement_id: "a1".into(),
            agreement_version: 1,
            grant_number: 1,
            dataset: "d".into(),
            requester: requester.into(),
            subject_commitment: [7; 32],
            subject_sealed: vec![1],
            justification_sealed: vec![2],
            columns: vec!["c".into()],
            approvals_required: 1,
            state: RequestState::Pending,
            created_at: "2026-01-01T00:00:00Z".into(),
            created_micros: micros,
            ledger_index: 1,
        }
    }

    fn requested(r: &AccessRequestRecord) -> SubjectEvent {
        SubjectEvent {
            subject_commitment: r.subject_commitment,
            ledger_index: r.created_micros as u64,
            kind: SubjectEventKind::Requested,
            request_id: r.id.clone(),
            agreement_id: r.agreement_id.clone(),
            agreement_version: 1,
            principal: r.requester.clone(),
            org: "o".into(),
            purpose: "p".into(),
            at: r.created_at.clone(),
            rows_released: 0,
            withheld: false,
        }
    }

    #[tokio::test]
    async fn a_declined_request_leaves_the_queue_and_takes_no_approval() {
        for catalogue in crate::testing::catalogues().await {
            let store = &catalogue.meta;
            let store: &dyn MetadataStore = store;
            for (id, who, at) in [
                ("r1", "ann", 1),
                ("r2", "bob", 2),
                ("r3", "ann", DAY_MICROS),
            ] {
                let r = request(id, who, at);
                store.insert_request(&r, &requested(&r)).await.unwrap();
            }
            let queue = RequestFilter {
                state: Some(RequestState::Pending),
                oldest_first: true,
                limit: 10,
                ..RequestFilter::default()
            };
            let ids =
                |rs: Vec<AccessRequestRecord>| rs.into_iter().map(|r| r.id).collect::<Vec<_>>();
            assert_eq!(
                ids(store.list_requests(&queue).await.unwrap()),
                ["r1", "r2", "r3"]
            );
            let decline = DeclineRecord {
                request_id: "r2".into(),
                decliner: "val".into(),
                declined_at: "2026-01-02T00:00:00Z".into(),
                reason_sealed: vec![9],
                ledger_index: 5,
            };
            assert!(store.decline_request(&decline).await.unwrap());
            assert!(
                !store.decline_request(&decline).await.unwrap(),
                "declined once"
            );
            assert_eq!(
                ids(store.list_requests(&queue).await.unwrap()),
                ["r1", "r3"]
            );
            assert_eq!(store.decline("r2").await.unwrap(), Some(decline));
            assert_eq!(store.declines_by("val", 10).await.unwrap().len(), 1);
            // An approval racing the decline is not counted.
            let (given, state) = store
                .add_approval(&ApprovalRecord {
                    request_id: "r2".into(),
                    approver: "val".into(),
                    approved_at: "2026-01-02T00:00:01Z".into(),
                    ledger_index: 6,
                })
                .await
                .unwrap();
            assert_eq!((given, state), (0, RequestState::Declined));
            assert!(store.approvals_by("val", 10).await.unwrap().is_empty());
            let mine = RequestFilter {
                requester: Some("ann".into()),
                limit: 10,
                ..RequestFilter::default()
            };
            assert_eq!(ids(store.list_requests(&mine).await.unwrap()), ["r3", "r1"]);
            let none = RequestFilter {
                agreements: Some(Vec::new()),
                limit: 10,
                ..RequestFilter::default()
            };
            assert!(store.list_requests(&none).await.unwrap().is_empty());
            let days = store.agreement_days("a1", 0).await.unwrap();
            assert_eq!(
                days.iter().map(|d| (d.day, d.requests)).collect::<Vec<_>>(),
                [(0, 2), (1, 1)]
            );
        }
    }
}
