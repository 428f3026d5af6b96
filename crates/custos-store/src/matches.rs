//! Private matching jobs in the catalogue: claimed once per home (a
//! replayed job id is refused), their outcome, and on the requesting side
//! the matched subjects' tokens, "unverified" until a custodian confirms.
//!
//! [`MatchStore`] is a supertrait of [`crate::meta::MetadataStore`].

use async_trait::async_trait;
use sqlx::Row;

use crate::meta::{MetaError, SqlMetadata};
use crate::sql::Statement;

/// Which side of a match a home was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum MatchSide {
    /// It asked and learns the result.
    Requester,
    /// It answered and learns only the count.
    Responder,
}

impl MatchSide {
    fn as_str(self) -> &'static str {
        match self {
            Self::Requester => "requester",
            Self::Responder => "responder",
        }
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum MatchState {
    /// Claimed, not finished.
    Running,
    /// Finished; no adverse action may rest on it until confirmed.
    Unverified,
    /// A custodian confirmed the result.
    Confirmed,
    /// The job failed or was refused by the peer; nothing was learnt.
    Failed,
}

impl MatchState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Unverified => "unverified",
            Self::Confirmed => "confirmed",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<Self, MetaError> {
        Ok(match text {
            "running" => Self::Running,
            "unverified" => Self::Unverified,
            "confirmed" => Self::Confirmed,
            "failed" => Self::Failed,
            _ => return Err(MetaError::Database("unknown match state".into())),
        })
    }
}

/// One job as the catalogue holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MatchJob {
    /// `m_` and 32 hex digits, chosen by the requesting side.
    pub job_id: String,
    /// This home's side.
    pub side: MatchSide,
    /// The agreement and its version here.
    pub agreement_id: String,
    /// The agreement version.
    pub agreement_version: u32,
    /// This home's dataset.
    pub dataset: String,
    /// The principal who ran or answered it.
    pub principal: String,
    /// The other side: the peer's URL (requester) or the asking organisation (responder).
    pub peer: String,
    /// `matches` or `count`.
    pub reveal: String,
    /// Where it stands.
    pub state: MatchState,
    /// Matches found (once finished).
    pub match_count: Option<u64>,
    /// RFC 3339 time it was claimed.
    pub created_at: String,
    /// Who confirmed it.
    pub confirmed_by: Option<String>,
    /// When.
    pub confirmed_at: Option<String>,
}

/// The matching catalogue every metadata backend provides.
#[async_trait]
pub trait MatchStore: Send + Sync {
    /// Records a new job (state `running`); `false` if its id was used
    /// before on this home (a replay), and nothing changes.
    async fn claim_match_job(&self, job: &MatchJob) -> Result<bool, MetaError>;
    /// Records a job's end: its state, count and (requester) tokens, in one
    /// transaction.
    async fn finish_match_job(
        &self,
        job_id: &str,
        state: MatchState,
        match_count: Option<u64>,
        tokens: &[String],
    ) -> Result<(), MetaError>;
    /// A job, if it exists.
    async fn match_job(&self, job_id: &str) -> Result<Option<MatchJob>, MetaError>;
    /// The matched tokens of a job, sorted.
    async fn match_tokens(&self, job_id: &str) -> Result<Vec<String>, MetaError>;
    /// Jobs of `side` under an agreement claimed at or after `since` (RFC 3339).
    async fn count_match_jobs_since(
        &self,
        agreement_id: &str,
        side: MatchSide,
        since: &str,
    ) -> Result<u64, MetaError>;
    /// Marks an `unverified` job `confirmed`; `false` if it was not unverified.
    async fn confirm_match_job(&self, job_id: &str, by: &str, at: &str) -> Result<bool, MetaError>;
}

pub(crate) fn job_of(row: &sqlx::any::AnyRow) -> Result<MatchJob, MetaError> {
    let side: String = row.try_get("side")?;
    let version: i64 = row.try_get("agreement_version")?;
    let count: Option<i64> = row.try_get("match_count")?;
    Ok(MatchJob {
        job_id: row.try_get("job_id")?,
        side: if side == "requester" {
            MatchSide::Requester
        } else {
            MatchSide::Responder
        },
        agreement_id: row.try_get("agreement_id")?,
        agreement_version: u32::try_from(version)
            .map_err(|_| MetaError::Database("bad agreement version".into()))?,
        dataset: row.try_get("dataset")?,
        principal: row.try_get("principal")?,
        peer: row.try_get("peer")?,
        reveal: row.try_get("reveal")?,
        state: MatchState::parse(&row.try_get::<String, _>("state")?)?,
        match_count: count.and_then(|c| u64::try_from(c).ok()),
        created_at: row.try_get("created_at")?,
        confirmed_by: row.try_get("confirmed_by")?,
        confirmed_at: row.try_get("confirmed_at")?,
    })
}

#[async_trait]
impl MatchStore for SqlMetadata {
    async fn claim_match_job(&self, job: &MatchJob) -> Result<bool, MetaError> {
        let done = sqlx::query(
            "INSERT INTO match_jobs (job_id, side, agreement_id, agreement_version, dataset, \
             principal, peer, reveal, state, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(&job.job_id)
        .bind(job.side.as_str())
        .bind(&job.agreement_id)
        .bind(i64::from(job.agreement_version))
        .bind(&job.dataset)
        .bind(&job.principal)
        .bind(&job.peer)
        .bind(&job.reveal)
        .bind(MatchState::Running.as_str())
        .bind(&job.created_at)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_match_job(
        &self,
        job_id: &str,
        state: MatchState,
        match_count: Option<u64>,
        tokens: &[String],
    ) -> Result<(), MetaError> {
        let count = match_count
            .map(i64::try_from)
            .transpose()
            .map_err(|_| MetaError::Database("count too large".into()))?;
        let mut tx = self.pool().begin().await?;
        sqlx::query("UPDATE match_jobs SET state = $1, match_count = $2 WHERE job_id = $3")
            .bind(state.as_str())
            .bind(count)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        // Multi-row inserts, well under SQLite's limit of bound values.
        for chunk in tokens.chunks(1000) {
            let mut insert = Statement::new("INSERT INTO match_results (job_id, token) VALUES ");
            for (i, token) in chunk.iter().enumerate() {
                insert.push(if i == 0 { "(" } else { ", (" });
                insert.bind(job_id)?.push(", ");
                insert.bind(token.as_str())?.push(")");
            }
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn count_match_jobs_since(
        &self,
        agreement_id: &str,
        side: MatchSide,
        since: &str,
    ) -> Result<u64, MetaError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM match_jobs WHERE agreement_id = $1 AND side = $2 AND created_at >= $3",
        )
        .bind(agreement_id)
        .bind(side.as_str())
        .bind(since)
        .fetch_one(self.pool())
        .await?;
        u64::try_from(n).map_err(|_| MetaError::Database("negative count".into()))
    }

    async fn match_job(&self, job_id: &str) -> Result<Option<MatchJob>, MetaError> {
        sqlx::query("SELECT * FROM match_jobs WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(job_of)
            .transpose()
    }

    async fn match_tokens(&self, job_id: &str) -> Result<Vec<String>, MetaError> {
        Ok(
            sqlx::query_scalar("SELECT token FROM match_results WHERE job_id = $1 ORDER BY token")
                .bind(job_id)
                .fetch_all(self.pool())
                .await?,
        )
    }

    async fn confirm_match_job(&self, job_id: &str, by: &str, at: &str) -> Result<bool, MetaError> {
        let done = sqlx::query(
            "UPDATE match_jobs SET state = 'confirmed', confirmed_by = $1, confirmed_at = $2 \
             WHERE job_id = $3 AND state = 'unverified'",
        )
        .bind(by)
        .bind(at)
        .bind(job_id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> MatchJob {
        MatchJob {
            job_id: id.into(),
            side: MatchSide::Requester,
            agreement_id: "a".into(),
            agreement_version: 1,
            dataset: "benefits".into(),
            principal: "p".into(),
            peer: "https://peer.example".into(),
            reveal: "matches".into(),
            state: MatchState::Running,
            match_count: None,
            created_at: "2026-11-26T12:00:00Z".into(),
            confirmed_by: None,
            confirmed_at: None,
        }
    }

    #[tokio::test]
    async fn a_job_id_is_claimed_once_and_confirmed_once() {
        for catalogue in crate::testing::catalogues().await {
            let meta = &catalogue.meta;
            assert!(meta.claim_match_job(&job("m_1")).await.unwrap());
            assert!(!meta.claim_match_job(&job("m_1")).await.unwrap());
            let tokens: Vec<String> = (0..25_000).map(|i| format!("t{i:06}")).collect();
            meta.finish_match_job("m_1", MatchState::Unverified, Some(25_000), &tokens)
                .await
                .unwrap();
            let stored = meta.match_job("m_1").await.unwrap().unwrap();
            assert_eq!(stored.state, MatchState::Unverified);
            assert_eq!(stored.match_count, Some(25_000));
            assert_eq!(meta.match_tokens("m_1").await.unwrap(), tokens);
            assert!(meta.confirm_match_job("m_1", "c", "now").await.unwrap());
            assert!(!meta.confirm_match_job("m_1", "c", "now").await.unwrap());
            assert_eq!(
                meta.match_job("m_1").await.unwrap().unwrap().state,
                MatchState::Confirmed
            );
            assert!(meta.match_job("m_2").await.unwrap().is_none());
        }
    }
}
