//! Every secret the catalogue keeps sealed under the master key, and the
//! purpose (AEAD associated data) each is bound to.
//!
//! This is the one list master-key rotation walks: a sealed column missing
//! here would be left under the old key, so a test compares it with every
//! `*_sealed` and `wrapped_*` column of the schema.

use sqlx::{AssertSqlSafe, Row};

use crate::keys::{KeyError, data_key_purpose};
use crate::meta::{Backend, MetaError, SqlMetadata};

/// AAD of the instance signing key of homes that kept it wrapped inside.
pub(crate) const SIGNING_KEY_PURPOSE: &str = "custos/v1/instance-signing-key";
/// AAD of the wrapped derivation root, bound to the home's checkpoint
/// origin (fixed at init, signed into every checkpoint): another home's
/// root, even under the same master key, does not open here.
pub(crate) fn derivation_root_purpose(origin: &str) -> String {
    format!("custos/v1/derivation-root/{origin}")
}
/// AAD of the sealed list of HSM keys a rotation retired.
pub(crate) const RETIRED_KEYS_PURPOSE: &str = "custos/v1/retired-hsm-keys";
/// Instance setting that holds the wrapped derivation root.
pub(crate) const DERIVATION_ROOT: &str = "derivation_root_wrapped";

/// AAD of a look-up request's sealed `field` (`subject`, `justification`,
/// `decline-reason`).
pub fn request_purpose(request_id: &str, field: &str) -> String {
    format!("custos/v1/request/{request_id}/{field}")
}

/// AAD of a protected subject's sealed id (`commitment_hex`: the subject
/// commitment in lower-case hex).
pub fn protected_purpose(commitment_hex: &str) -> String {
    format!("custos/v1/protected/{commitment_hex}")
}

/// AAD of a principal's sealed identifying facts.
pub fn facts_purpose(principal_id: &str) -> String {
    format!("custos/v1/principal/{principal_id}/facts")
}

/// AAD of an alert's sealed resolution reason.
pub fn resolution_purpose(alert_id: &str) -> String {
    format!("custos/v1/alert/{alert_id}/resolution")
}

/// Re-wraps one sealed value: (purpose, what it is, old bytes) → new bytes.
pub type Rewrap<'r> = dyn for<'a, 'b> Fn(&'a str, &'static str, &'b [u8]) -> Result<Vec<u8>, KeyError>
    + Send
    + Sync
    + 'r;

/// One sealed column: where it is and how its purpose is built from the
/// row's key.
pub(crate) struct SealedColumn {
    /// The table.
    pub table: &'static str,
    /// An SQL expression of the row's key (the purpose's argument).
    pub key: &'static str,
    /// The sealed column (may be NULL where noted in the schema).
    pub column: &'static str,
    /// The purpose of a row's value.
    pub purpose: fn(&str) -> String,
    /// What it is, for errors.
    pub what: &'static str,
}

/// Every sealed column of the catalogue.
pub(crate) const COLUMNS: &[SealedColumn] = &[
    SealedColumn {
        table: "datasets",
        key: "storage_id",
        column: "wrapped_key",
        purpose: data_key_purpose,
        what: "dataset key",
    },
    SealedColumn {
        table: "access_requests",
        key: "id",
        column: "subject_sealed",
        purpose: |id| request_purpose(id, "subject"),
        what: "request subject",
    },
    SealedColumn {
        table: "access_requests",
        key: "id",
        column: "justification_sealed",
        purpose: |id| request_purpose(id, "justification"),
        what: "request justification",
    },
    SealedColumn {
        table: "request_declines",
        key: "request_id",
        column: "reason_sealed",
        purpose: |id| request_purpose(id, "decline-reason"),
        what: "decline reason",
    },
    SealedColumn {
        table: "protected_subjects",
        key: "lower(hex(subject_commitment))",
        column: "subject_sealed",
        purpose: protected_purpose,
        what: "protected subject",
    },
    SealedColumn {
        table: "principal_facts",
        key: "principal_id",
        column: "facts_sealed",
        purpose: facts_purpose,
        what: "principal facts",
    },
    SealedColumn {
        table: "alerts",
        key: "id",
        column: "resolution_sealed",
        purpose: resolution_purpose,
        what: "alert resolution",
    },
];

/// Sealed instance settings: (setting, purpose, what).
pub(crate) const SETTINGS: &[(&str, &str, &str)] = &[
    (
        crate::ledger_key::WRAPPED,
        SIGNING_KEY_PURPOSE,
        "instance signing key",
    ),
    (
        crate::home::KEY_HSM_RETIRED,
        RETIRED_KEYS_PURPOSE,
        "retired HSM keys",
    ),
];

/// `MetadataStore::rewrap_sealed`: one transaction over every sealed column
/// and setting.
pub(crate) async fn rewrap_all(
    meta: &SqlMetadata,
    rewrap: &Rewrap<'_>,
    values: &[(&str, &[u8])],
    remove: &[&str],
) -> Result<usize, MetaError> {
    let mut tx = meta.pool().begin().await?;
    if meta.backend() == Backend::Postgres {
        // Another replica must not seal a value under the old key between
        // the reads below and the commit: writers of every sealed table wait
        // (readers do not). SQLite's first write already excludes writers,
        // and the home's key lock keeps other processes out.
        let mut tables: Vec<&str> = COLUMNS.iter().map(|c| c.table).collect();
        tables.push("instance");
        tables.sort_unstable();
        tables.dedup();
        sqlx::query(AssertSqlSafe(format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            tables.join(", ")
        )))
        .execute(&mut *tx)
        .await?;
    }
    let mut count = 0;
    for c in COLUMNS {
        // The names are this file's constants, never input.
        let select = format!(
            "SELECT {key} AS k, {col} AS v FROM {table} WHERE {col} IS NOT NULL",
            key = c.key,
            col = c.column,
            table = c.table
        );
        let update = format!(
            "UPDATE {table} SET {col} = $1 WHERE {key} = $2",
            key = c.key,
            col = c.column,
            table = c.table
        );
        let rows = sqlx::query(AssertSqlSafe(select))
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            let key: String = row.try_get("k")?;
            let sealed: Vec<u8> = row.try_get("v")?;
            let resealed = rewrap(&(c.purpose)(&key), c.what, &sealed).map_err(|e| {
                MetaError::Corrupt(format!(
                    "{e} (the {} of `{}` in `{}`); nothing was changed",
                    c.what,
                    key.chars().take(64).collect::<String>(),
                    c.table
                ))
            })?;
            sqlx::query(AssertSqlSafe(update.clone()))
                .bind(resealed)
                .bind(&key)
                .execute(&mut *tx)
                .await?;
            count += 1;
        }
    }
    for (setting, purpose, what) in SETTINGS {
        let row = sqlx::query("SELECT value FROM instance WHERE key = $1")
            .bind(*setting)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = row {
            let sealed: Vec<u8> = row.try_get("value")?;
            let resealed = rewrap(purpose, what, &sealed)?;
            sqlx::query("UPDATE instance SET value = $1 WHERE key = $2")
                .bind(resealed)
                .bind(*setting)
                .execute(&mut *tx)
                .await?;
            count += 1;
        }
    }
    crate::meta::write_instance_values(&mut tx, values, remove).await?;
    tx.commit().await?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every column that holds a sealed or wrapped value is in [`COLUMNS`]:
    /// a new one left out would stay under the old key after a rotation.
    #[tokio::test]
    async fn every_sealed_column_of_the_schema_is_listed() {
        let mut listed: Vec<String> = COLUMNS
            .iter()
            .map(|c| format!("{}.{}", c.table, c.column))
            .collect();
        listed.sort();
        for catalogue in crate::testing::catalogues().await {
            let found: Vec<String> = crate::testing::columns(&catalogue.meta)
                .await
                .into_iter()
                .filter(|(_, c)| c.ends_with("_sealed") || c.starts_with("wrapped_"))
                .map(|(t, c)| format!("{t}.{c}"))
                .collect();
            assert_eq!(found, listed, "{}", catalogue.backend);
        }
    }
}
