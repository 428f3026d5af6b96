//! The shapes of the answers the server builds itself (around broker
//! answers), so the OpenAPI document describes every response.

use custos_broker::{AgreementState, AgreementVersion, MatchJob};
use custos_model::Principal;
use serde::Serialize;
use utoipa::ToSchema;

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// An agreement's latest version and its state.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListedAgreement {
    /// The latest version.
    pub agreement: AgreementVersion,
    /// Its state.
    pub status: AgreementState,
}

/// Every version of one agreement and its state.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgreementVersions {
    /// Versions, oldest first.
    pub versions: Vec<AgreementVersion>,
    /// The agreement's state.
    pub status: AgreementState,
}

/// An applied agreement: the stored version and the agreement as parsed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Applied {
    /// The version stored.
    pub version: AgreementVersion,
    /// The agreement as parsed (docs/agreements.md).
    #[schema(value_type = Object)]
    pub agreement: custos_policy::Agreement,
}

/// A new principal and its token (shown once). No `Debug`: it holds a token.
#[derive(Serialize, ToSchema)]
pub struct IssuedPrincipal {
    /// The principal.
    pub principal: Principal,
    /// Its API token: shown once, stored only as a hash.
    pub token: String,
}

/// A subject is protected.
#[derive(Debug, Serialize, ToSchema)]
pub struct Protected {
    /// Always true.
    pub protected: bool,
}

/// What the answering side of a match saw at its end.
#[derive(Debug, Serialize, ToSchema)]
pub struct MatchCount {
    /// The job.
    pub job_id: String,
    /// How many keys matched.
    pub matches: u64,
}

/// A kept match result: the job and the matched subjects' tokens. No
/// `Debug`: it holds pseudonyms.
#[derive(Serialize, ToSchema)]
pub struct MatchResult {
    /// The job.
    pub job: MatchJob,
    /// Tokens of the agreement for the matched subjects (empty for count-only).
    pub tokens: Vec<String>,
}

/// A confirmed match job.
#[derive(Debug, Serialize, ToSchema)]
pub struct Confirmed {
    /// The job, now confirmed.
    pub job: MatchJob,
}
