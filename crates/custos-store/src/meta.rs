//! The metadata store: instance settings, the dataset catalogue,
//! principals and agreements (the request catalogue is [`crate::lookups`]).
//!
//! [`MetadataStore`] is the interface every backend implements;
//! [`SqlMetadata`] implements it on SQLite (the embedded default) and on
//! PostgreSQL (shared by replicas), and both run the same suites.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;

use crate::browsing::BrowsingStore;
use crate::budgets::BudgetStore;
use crate::listings::ListingStore;
use crate::lookups::RequestStore;
use crate::matches::MatchStore;
use custos_model::AgreementStatus;
use custos_model::principal::{Principal, format_roles, parse_roles};
use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

/// Errors of the metadata store. Messages never carry secrets or values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The database could not be opened or queried.
    #[error("metadata store: {0}")]
    Database(String),
    /// The schema migrations failed.
    #[error("metadata store migration failed: {0}")]
    Migration(String),
    /// An insert collided with an existing row.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A stored value is missing or malformed.
    #[error("metadata store: {0}")]
    Corrupt(String),
    /// Another process holds what this one needs (the writer lease).
    #[error("{0}")]
    Busy(String),
    /// A sealed value could not be re-wrapped (rotation).
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
}

impl From<sqlx::Error> for MetaError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return Self::AlreadyExists("the record".into());
        }
        Self::Database(e.to_string())
    }
}

/// A dataset as the catalogue records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRecord {
    /// The dataset's name, `[a-z0-9_-]{1,64}`.
    pub name: String,
    /// The directory under `datasets/` that holds its files.
    pub storage_id: String,
    /// The schema as ingested (TOML text).
    pub schema_toml: String,
    /// SHA-256 of `schema_toml`, hex.
    pub schema_sha256: String,
    /// The data key, wrapped by the master key.
    pub wrapped_key: Vec<u8>,
    /// How many bucket files the rows are spread over.
    pub bucket_count: u32,
    /// Number of rows.
    pub row_count: u64,
    /// Bytes on disk.
    pub stored_bytes: u64,
    /// RFC 3339 time of the ingest.
    pub created_at: String,
    /// SHA-256 of each file at ingest (empty for datasets ingested before
    /// digests were recorded: those are refused).
    pub file_digests: crate::digests::FileDigests,
    /// Ledger index of the ingest entry (which records the same digests).
    pub ingest_entry: Option<u64>,
}

/// One stored version of an agreement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgreementVersion {
    /// The agreement's id.
    pub id: String,
    /// Version number, from 1.
    pub version: u32,
    /// The TOML text as applied.
    pub toml: String,
    /// SHA-256 of the text, hex (also in the ledger).
    pub sha256: String,
    /// RFC 3339 time it was applied.
    pub applied_at: String,
    /// Principal id who applied it.
    pub applied_by: String,
    /// Ledger index of the `agreement.apply` entry that recorded its hash.
    #[serde(default)]
    pub ledger_entry: Option<u64>,
}

/// The state of an agreement as a whole.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgreementState {
    /// Active, suspended or revoked.
    pub state: AgreementStatus,
    /// RFC 3339 time of the last change.
    pub changed_at: String,
    /// Principal id who changed it.
    pub changed_by: String,
    /// Why (for suspension and revocation).
    pub reason: Option<String>,
}

/// Everything Custos keeps about itself besides data files and the ledger.
#[async_trait]
pub trait MetadataStore:
    RequestStore
    + ListingStore
    + BudgetStore
    + MatchStore
    + BrowsingStore
    + Send
    + Sync
    + std::fmt::Debug
{
    /// Takes the writer lease `key` (derived from the home's secret root,
    /// so no one without it can hold the home hostage), or refuses if
    /// another process (on this machine or another) holds it.
    async fn hold_writer(&self, key: i64) -> Result<WriterLease, MetaError>;
    /// Waits for and holds lock `key` across every process writing this
    /// catalogue (see [`CatalogueLock`]).
    async fn hold_lock(&self, key: i64) -> Result<CatalogueLock, MetaError>;
    /// Reads an instance setting.
    async fn instance_value(&self, key: &str) -> Result<Option<Vec<u8>>, MetaError>;
    /// Writes an instance setting once; an existing key is refused.
    async fn insert_instance_value(&self, key: &str, value: &[u8]) -> Result<(), MetaError>;
    /// Writes instance settings, replacing existing values, and removes
    /// the settings named in `remove`, in one transaction.
    async fn replace_instance_values(
        &self,
        values: &[(&str, &[u8])],
        remove: &[&str],
    ) -> Result<(), MetaError>;
    /// Master-key rotation: passes every sealed value of the catalogue
    /// (see `sealed.rs`) through `rewrap` (purpose, what, old bytes → new
    /// bytes), writes `values` and removes `remove`, all in one
    /// transaction; any failure changes nothing. Returns the number of
    /// values re-wrapped.
    async fn rewrap_sealed(
        &self,
        rewrap: &crate::sealed::Rewrap<'_>,
        values: &[(&str, &[u8])],
        remove: &[&str],
    ) -> Result<usize, MetaError>;
    /// Records a dataset; a dataset with the same name is refused.
    async fn insert_dataset(&self, record: &DatasetRecord) -> Result<(), MetaError>;
    /// Looks a dataset up by name.
    async fn dataset(&self, name: &str) -> Result<Option<DatasetRecord>, MetaError>;
    /// All datasets, by name.
    async fn datasets(&self) -> Result<Vec<DatasetRecord>, MetaError>;
    /// Records a principal with the hash of its token; a name in use is refused.
    async fn insert_principal(
        &self,
        principal: &Principal,
        token_hash: &[u8],
    ) -> Result<(), MetaError>;
    /// A principal and its token hash, by id.
    async fn principal(&self, id: &str) -> Result<Option<(Principal, Vec<u8>)>, MetaError>;
    /// A principal by name.
    async fn principal_by_name(&self, name: &str) -> Result<Option<Principal>, MetaError>;
    /// All principals, by name.
    async fn principals(&self) -> Result<Vec<Principal>, MetaError>;
    /// Marks a principal revoked at `at`; false if it was unknown or already revoked.
    async fn revoke_principal(&self, id: &str, at: &str) -> Result<bool, MetaError>;
    /// Stores the next version of an agreement (1 for a new one, state
    /// `active`) and returns its number.
    async fn insert_agreement_version(
        &self,
        id: &str,
        toml: &str,
        sha256: &str,
        at: &str,
        by: &str,
        ledger_entry: u64,
    ) -> Result<u32, MetaError>;
    /// Every version of an agreement, oldest first.
    async fn agreement_versions(&self, id: &str) -> Result<Vec<AgreementVersion>, MetaError>;
    /// The latest version of every agreement with its state, by id.
    async fn agreements(&self) -> Result<Vec<(AgreementVersion, AgreementState)>, MetaError>;
    /// An agreement's state.
    async fn agreement_state(&self, id: &str) -> Result<Option<AgreementState>, MetaError>;
    /// Changes an agreement's state.
    async fn set_agreement_state(&self, id: &str, state: &AgreementState) -> Result<(), MetaError>;
}

/// Which database engine holds the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file (`custos.db`, WAL, `synchronous = FULL`).
    Sqlite,
    /// A PostgreSQL database, shared by every replica.
    Postgres,
}

/// The catalogue on SQL: SQLite embedded or PostgreSQL, through sqlx's
/// `Any` driver, one set of statements for both (see [`crate::sql`]), each
/// backend with its own migrations (`migrations/sqlite`,
/// `migrations/postgres`).
#[derive(Debug, Clone)]
pub struct SqlMetadata {
    pool: AnyPool,
    backend: Backend,
    /// How to open a connection of its own (the writer lease's).
    options: AnyConnectOptions,
    /// PostgreSQL: the connections that hold [`CatalogueLock`]s, apart
    /// from the pool, so that waiting locks never starve the work done
    /// under them.
    locks: Option<AnyPool>,
}

/// Most [`CatalogueLock`]s one process holds at once.
const MAX_LOCKS: u32 = 16;

/// A lock that every process writing a catalogue respects: for PostgreSQL,
/// a transaction-scoped advisory lock on a connection of its own, released
/// when the guard is dropped (the transaction rolls back) or the process
/// dies. For SQLite, nothing: one process writes an embedded home, and its
/// in-process locks suffice.
#[derive(Debug)]
pub struct CatalogueLock(Option<sqlx::Transaction<'static, sqlx::Any>>);

impl CatalogueLock {
    /// Checks that the lock is still held: its connection still answers
    /// (a connection that ended released the lock, and another process
    /// may have counted meanwhile).
    pub async fn confirm(&mut self) -> Result<(), MetaError> {
        if let Some(tx) = &mut self.0 {
            sqlx::query("SELECT CAST(1 AS BIGINT)")
                .fetch_one(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// Held by the one process that writes a home: while it is held, no other
/// process can take it. For PostgreSQL, a session advisory lock on a
/// connection of its own, which the server releases when that connection
/// ends (also when the process dies). A keeper task uses the connection
/// every [`LEASE_CHECK_EVERY`] (so an idle-session timeout never ends it)
/// and marks the lease lost when the connection fails: the server may have
/// released the lock, so the holder must stop writing ([`WriterLease::is_held`]).
/// For SQLite, always held: the ledger's file lock already keeps a second
/// writer out on the one machine.
#[derive(Debug)]
pub struct WriterLease {
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
    keeper: Option<tokio::task::JoinHandle<()>>,
}

/// How often the keeper checks the lease's connection: a copy of the home
/// that takes a lost lease can overlap with its old holder for at most
/// this long.
pub const LEASE_CHECK_EVERY: Duration = Duration::from_millis(500);

impl WriterLease {
    /// The lease of a replica of a home whose ledger is shared: not
    /// exclusive, since replicas write the home together (the shared
    /// journal sequences their ledger entries, and catalogue locks their
    /// limited actions).
    pub fn replica() -> Self {
        Self {
            held: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            keeper: None,
        }
    }

    /// Whether this process may still write the home.
    pub fn is_held(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for WriterLease {
    fn drop(&mut self) {
        // Ends the keeper and with it the connection, which frees the lock.
        if let Some(keeper) = &self.keeper {
            keeper.abort();
        }
    }
}

/// Keeps the lease's connection in use; marks the lease lost when it fails.
async fn keep_lease(
    mut connection: sqlx::AnyConnection,
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    loop {
        tokio::time::sleep(LEASE_CHECK_EVERY).await;
        if sqlx::query("SELECT 1")
            .execute(&mut connection)
            .await
            .is_err()
        {
            held.store(false, std::sync::atomic::Ordering::Release);
            tracing::error!(
                "the connection that holds this home's writer lease in PostgreSQL failed: \
                 this process refuses every action until it is restarted"
            );
            return;
        }
    }
}

/// Settings every SQLite connection takes before its first statement.
/// `synchronous = FULL`: a committed transaction survives power loss, not
/// just a crash. The busy timeout comes first, so that switching to WAL
/// waits for another process instead of failing.
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;";

/// Makes the SQLite catalogue at `path` readable by its owner alone: a new
/// file is created 0600 before SQLite opens it (its `-wal` and `-shm`
/// files then take the same mode), and an older home's file, made with the
/// process's umask, is narrowed to 0600 with its companions.
fn owner_only(path: &Path, create: bool) -> Result<(), MetaError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |e: std::io::Error| MetaError::Database(format!("{}: {e}", path.display()));
    if create && !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(failed)?;
        return Ok(());
    }
    let mut companions = path.as_os_str().to_owned();
    companions.push("-wal");
    let wal = std::path::PathBuf::from(&companions);
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    for file in [path.to_owned(), wal, std::path::PathBuf::from(shm)] {
        match std::fs::metadata(&file) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(failed)?;
            }
            _ => {}
        }
    }
    Ok(())
}

impl SqlMetadata {
    /// Opens (or with `create`, creates) the SQLite database at `path` and
    /// applies pending migrations.
    pub async fn open(path: &Path, create: bool) -> Result<Self, MetaError> {
        sqlx::any::install_default_drivers();
        owner_only(path, create)?;
        let url = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            .to_url_lossy();
        let options = AnyConnectOptions::from_url(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::raw_sql(SQLITE_PRAGMAS).execute(conn).await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| MetaError::Migration(e.to_string()))?;
        Ok(Self {
            pool,
            backend: Backend::Sqlite,
            options,
            locks: None,
        })
    }

    /// Connects to the PostgreSQL database at `url` and applies pending
    /// migrations. The password, if any, comes from the environment
    /// (`PGPASSWORD`) or `~/.pgpass`, never from the URL a home records.
    pub async fn connect_postgres(url: &str) -> Result<Self, MetaError> {
        sqlx::any::install_default_drivers();
        let options = AnyConnectOptions::from_str(url)
            .map_err(|_| MetaError::Database("the PostgreSQL URL is malformed".into()))?;
        // One connection first, without the pool's retries: a wrong host,
        // port or password fails at once, with the server's own reason.
        options.connect().await?.close().await?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| MetaError::Migration(e.to_string()))?;
        let locks = AnyPoolOptions::new()
            .max_connections(MAX_LOCKS)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(options.clone());
        Ok(Self {
            pool,
            backend: Backend::Postgres,
            options,
            locks: Some(locks),
        })
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The engine behind this catalogue.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool (for SQLite, flushing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn dataset_from_row(row: &AnyRow) -> Result<DatasetRecord, MetaError> {
    let as_u64 = |v: i64| {
        u64::try_from(v).map_err(|_| MetaError::Database("negative count in catalogue".into()))
    };
    Ok(DatasetRecord {
        name: row.try_get("name")?,
        storage_id: row.try_get("storage_id")?,
        schema_toml: row.try_get("schema_toml")?,
        schema_sha256: row.try_get("schema_sha256")?,
        wrapped_key: row.try_get("wrapped_key")?,
        bucket_count: u32::try_from(row.try_get::<i64, _>("bucket_count")?)
            .map_err(|_| MetaError::Database("bad bucket count in catalogue".into()))?,
        row_count: as_u64(row.try_get("row_count")?)?,
        stored_bytes: as_u64(row.try_get("stored_bytes")?)?,
        created_at: row.try_get("created_at")?,
        file_digests: crate::digests::FileDigests::from_text(row.try_get("file_digests")?)
            .ok_or_else(|| MetaError::Database("malformed file digests in catalogue".into()))?,
        ingest_entry: row
            .try_get::<Option<i64>, _>("ingest_entry")?
            .map(as_u64)
            .transpose()?,
    })
}

fn version_from_row(row: &AnyRow) -> Result<AgreementVersion, MetaError> {
    Ok(AgreementVersion {
        id: row.try_get("id")?,
        version: u32::try_from(row.try_get::<i64, _>("version")?)
            .map_err(|_| MetaError::Database("bad agreement version".into()))?,
        toml: row.try_get("toml")?,
        sha256: row.try_get("sha256")?,
        applied_at: row.try_get("applied_at")?,
        applied_by: row.try_get("applied_by")?,
        ledger_entry: row
            .try_get::<Option<i64>, _>("ledger_entry")?
            .and_then(|i| u64::try_from(i).ok()),
    })
}

fn state_from_row(row: &AnyRow) -> Result<AgreementState, MetaError> {
    Ok(AgreementState {
        state: row
            .try_get::<String, _>("state")?
            .parse()
            .map_err(MetaError::Database)?,
        changed_at: row.try_get("changed_at")?,
        changed_by: row.try_get("changed_by")?,
        reason: row.try_get("reason")?,
    })
}

fn principal_from_row(row: &AnyRow) -> Result<Principal, MetaError> {
    let roles: String = row.try_get("roles")?;
    Ok(Principal {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        org: row.try_get("org")?,
        roles: parse_roles(&roles),
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Writes (replacing) and removes instance settings inside `tx`.
pub(crate) async fn write_instance_values(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    values: &[(&str, &[u8])],
    remove: &[&str],
) -> Result<(), MetaError> {
    for (key, value) in values {
        sqlx::query(
            "INSERT INTO instance (key, value) VALUES ($1, $2) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .bind(*key)
        .bind(*value)
        .execute(&mut **tx)
        .await?;
    }
    for key in remove {
        sqlx::query("DELETE FROM instance WHERE key = $1")
            .bind(*key)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl MetadataStore for SqlMetadata {
    async fn hold_writer(&self, key: i64) -> Result<WriterLease, MetaError> {
        let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        if self.backend == Backend::Sqlite {
            return Ok(WriterLease { held, keeper: None });
        }
        let mut connection = self.options.connect().await?;
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut connection)
            .await?;
        if !taken {
            let _ = connection.close().await;
            return Err(MetaError::Busy(
                "another Custos process, on this machine or another, is writing this home's PostgreSQL catalogue; \
                 one process writes a home (stop it, or send requests to its server with --server)"
                    .into(),
            ));
        }
        let keeper = tokio::spawn(keep_lease(connection, std::sync::Arc::clone(&held)));
        Ok(WriterLease {
            held,
            keeper: Some(keeper),
        })
    }

    async fn hold_lock(&self, key: i64) -> Result<CatalogueLock, MetaError> {
        let Some(locks) = &self.locks else {
            return Ok(CatalogueLock(None));
        };
        let mut tx = locks.begin().await?;
        sqlx::query("SELECT CAST(1 AS BIGINT) FROM (SELECT pg_advisory_xact_lock($1)) AS locked")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        Ok(CatalogueLock(Some(tx)))
    }

    async fn instance_value(&self, key: &str) -> Result<Option<Vec<u8>>, MetaError> {
        let row = sqlx::query("SELECT value FROM instance WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    async fn insert_instance_value(&self, key: &str, value: &[u8]) -> Result<(), MetaError> {
        sqlx::query("INSERT INTO instance (key, value) VALUES ($1, $2)")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(|e| match MetaError::from(e) {
                MetaError::AlreadyExists(_) => MetaError::AlreadyExists(format!("setting `{key}`")),
                other => other,
            })?;
        Ok(())
    }

    async fn replace_instance_values(
        &self,
        values: &[(&str, &[u8])],
        remove: &[&str],
    ) -> Result<(), MetaError> {
        let mut tx = self.pool.begin().await?;
        write_instance_values(&mut tx, values, remove).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rewrap_sealed(
        &self,
        rewrap: &crate::sealed::Rewrap<'_>,
        values: &[(&str, &[u8])],
        remove: &[&str],
    ) -> Result<usize, MetaError> {
        crate::sealed::rewrap_all(self, rewrap, values, remove).await
    }

    async fn insert_dataset(&self, d: &DatasetRecord) -> Result<(), MetaError> {
        let to_i64 =
            |v: u64| i64::try_from(v).map_err(|_| MetaError::Database("count too large".into()));
        sqlx::query(
            "INSERT INTO datasets (name, storage_id, schema_toml, schema_sha256, wrapped_key, \
             bucket_count, row_count, stored_bytes, created_at, file_digests, ingest_entry) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&d.name)
        .bind(&d.storage_id)
        .bind(&d.schema_toml)
        .bind(&d.schema_sha256)
        .bind(&d.wrapped_key)
        .bind(i64::from(d.bucket_count))
        .bind(to_i64(d.row_count)?)
        .bind(to_i64(d.stored_bytes)?)
        .bind(&d.created_at)
        .bind(d.file_digests.to_text())
        .bind(d.ingest_entry.map(to_i64).transpose()?)
        .execute(&self.pool)
        .await
        .map_err(|e| match MetaError::from(e) {
            MetaError::AlreadyExists(_) => {
                MetaError::AlreadyExists(format!("dataset `{}`", d.name))
            }
            other => other,
        })?;
        Ok(())
    }

    async fn dataset(&self, name: &str) -> Result<Option<DatasetRecord>, MetaError> {
        let row = sqlx::query("SELECT * FROM datasets WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(dataset_from_row).transpose()
    }

    async fn datasets(&self) -> Result<Vec<DatasetRecord>, MetaError> {
        let rows = sqlx::query("SELECT * FROM datasets ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(dataset_from_row).collect()
    }

    async fn insert_principal(&self, p: &Principal, token_hash: &[u8]) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO principals (id, name, org, roles, token_hash, created_at, created_by, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&p.id)
        .bind(&p.name)
        .bind(&p.org)
        .bind(format_roles(&p.roles))
        .bind(token_hash)
        .bind(&p.created_at)
        .bind(&p.created_by)
        .bind(&p.revoked_at)
        .execute(&self.pool)
        .await
        .map_err(|e| match MetaError::from(e) {
            MetaError::AlreadyExists(_) => MetaError::AlreadyExists(format!("principal `{}`", p.name)),
            other => other,
        })?;
        Ok(())
    }

    async fn principal(&self, id: &str) -> Result<Option<(Principal, Vec<u8>)>, MetaError> {
        let row = sqlx::query("SELECT * FROM principals WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((principal_from_row(&r)?, r.try_get("token_hash")?)))
            .transpose()
    }

    async fn principal_by_name(&self, name: &str) -> Result<Option<Principal>, MetaError> {
        let row = sqlx::query("SELECT * FROM principals WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(principal_from_row).transpose()
    }

    async fn principals(&self) -> Result<Vec<Principal>, MetaError> {
        let rows = sqlx::query("SELECT * FROM principals ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(principal_from_row).collect()
    }

    async fn insert_agreement_version(
        &self,
        id: &str,
        toml: &str,
        sha256: &str,
        at: &str,
        by: &str,
        ledger_entry: u64,
    ) -> Result<u32, MetaError> {
        let mut tx = self.pool.begin().await?;
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM agreement_versions WHERE id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        let version = latest.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO agreement_versions (id, version, toml, sha256, applied_at, applied_by, ledger_entry) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(version)
        .bind(toml)
        .bind(sha256)
        .bind(at)
        .bind(by)
        .bind(i64::try_from(ledger_entry).map_err(|_| MetaError::Database("index too large".into()))?)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO agreement_states (id, state, changed_at, changed_by, reason) VALUES ($1, 'active', $2, $3, NULL) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(at)
        .bind(by)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        u32::try_from(version).map_err(|_| MetaError::Database("too many versions".into()))
    }

    async fn agreement_versions(&self, id: &str) -> Result<Vec<AgreementVersion>, MetaError> {
        let rows = sqlx::query("SELECT * FROM agreement_versions WHERE id = $1 ORDER BY version")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(version_from_row).collect()
    }

    async fn agreements(&self) -> Result<Vec<(AgreementVersion, AgreementState)>, MetaError> {
        let rows = sqlx::query(
            "SELECT v.*, s.state, s.changed_at, s.changed_by, s.reason FROM agreement_versions v \
             JOIN agreement_states s ON s.id = v.id \
             WHERE v.version = (SELECT MAX(version) FROM agreement_versions w WHERE w.id = v.id) ORDER BY v.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((version_from_row(r)?, state_from_row(r)?)))
            .collect()
    }

    async fn agreement_state(&self, id: &str) -> Result<Option<AgreementState>, MetaError> {
        let row = sqlx::query("SELECT * FROM agreement_states WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(state_from_row).transpose()
    }

    async fn set_agreement_state(&self, id: &str, state: &AgreementState) -> Result<(), MetaError> {
        sqlx::query("UPDATE agreement_states SET state = $1, changed_at = $2, changed_by = $3, reason = $4 WHERE id = $5")
            .bind(state.state.as_str())
            .bind(&state.changed_at)
            .bind(&state.changed_by)
            .bind(&state.reason)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn revoke_principal(&self, id: &str, at: &str) -> Result<bool, MetaError> {
        let done = sqlx::query(
            "UPDATE principals SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> DatasetRecord {
        DatasetRecord {
            name: name.into(),
            storage_id: format!("{name}.0001"),
            schema_toml: "x".into(),
            schema_sha256: "00".into(),
            wrapped_key: vec![1, 2, 3],
            bucket_count: 4,
            row_count: 10,
            stored_bytes: 99,
            created_at: "2026-01-01T00:00:00Z".into(),
            file_digests: crate::digests::FileDigests::default(),
            ingest_entry: Some(7),
        }
    }

    /// The suite every backend must pass.
    async fn backend_suite(store: &dyn MetadataStore) {
        assert_eq!(store.instance_value("k").await.unwrap(), None);
        store.insert_instance_value("k", b"v").await.unwrap();
        assert_eq!(
            store.instance_value("k").await.unwrap(),
            Some(b"v".to_vec())
        );
        let again = store.insert_instance_value("k", b"w").await.unwrap_err();
        assert_eq!(again.to_string(), "setting `k` already exists");

        store.insert_dataset(&record("b")).await.unwrap();
        store.insert_dataset(&record("a")).await.unwrap();
        let dup = store.insert_dataset(&record("a")).await.unwrap_err();
        assert_eq!(dup.to_string(), "dataset `a` already exists");
        assert_eq!(store.dataset("a").await.unwrap(), Some(record("a")));
        assert_eq!(store.dataset("zz").await.unwrap(), None);
        let names: Vec<String> = store
            .datasets()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["a", "b"]);

        let alice = Principal {
            id: "p0000000000000001".into(),
            name: "alice".into(),
            org: "IRS".into(),
            roles: vec![custos_model::Role::Admin, custos_model::Role::Approver],
            created_at: "t".into(),
            created_by: "local-admin".into(),
            revoked_at: None,
        };
        store.insert_principal(&alice, &[7; 32]).await.unwrap();
        let dup = Principal {
            id: "p0000000000000002".into(),
            ..alice.clone()
        };
        assert_eq!(
            store
                .insert_principal(&dup, &[8; 32])
                .await
                .unwrap_err()
                .to_string(),
            "principal `alice` already exists"
        );
        let (found, hash) = store.principal(&alice.id).await.unwrap().unwrap();
        assert_eq!((found, hash), (alice.clone(), vec![7; 32]));
        assert_eq!(
            store.principal_by_name("alice").await.unwrap(),
            Some(alice.clone())
        );
        assert!(store.revoke_principal(&alice.id, "later").await.unwrap());
        assert!(!store.revoke_principal(&alice.id, "again").await.unwrap());
        let listed = store.principals().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].revoked_at.as_deref(), Some("later"));

        assert_eq!(
            store
                .insert_agreement_version("a1", "x", "h1", "t1", "p", 1)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .insert_agreement_version("a1", "y", "h2", "t2", "p", 2)
                .await
                .unwrap(),
            2
        );
        let versions = store.agreement_versions("a1").await.unwrap();
        assert_eq!(
            versions.iter().map(|v| v.toml.as_str()).collect::<Vec<_>>(),
            ["x", "y"]
        );
        let all = store.agreements().await.unwrap();
        assert_eq!(
            (all.len(), all[0].0.version, all[0].1.state.as_str()),
            (1, 2, "active")
        );
        let suspended = AgreementState {
            state: AgreementStatus::Suspended,
            changed_at: "t3".into(),
            changed_by: "p".into(),
            reason: Some("audit".into()),
        };
        store.set_agreement_state("a1", &suspended).await.unwrap();
        assert_eq!(store.agreement_state("a1").await.unwrap(), Some(suspended));
        // A new version keeps the state.
        store
            .insert_agreement_version("a1", "z", "h3", "t4", "p", 3)
            .await
            .unwrap();
        assert_eq!(
            store.agreement_state("a1").await.unwrap().unwrap().state,
            AgreementStatus::Suspended
        );
    }

    #[tokio::test]
    async fn every_backend_passes_the_suite() {
        for catalogue in crate::testing::catalogues().await {
            backend_suite(&catalogue.meta).await;
        }
    }

    /// The PostgreSQL migration ends with the tables and columns the
    /// SQLite migrations end with.
    #[tokio::test]
    async fn both_backends_have_the_same_tables_and_columns() {
        let mut schemas = Vec::new();
        for catalogue in crate::testing::catalogues().await {
            schemas.push(crate::testing::columns(&catalogue.meta).await);
        }
        if let [sqlite, postgres] = schemas.as_slice() {
            assert_eq!(sqlite, postgres);
        }
    }

    #[tokio::test]
    async fn sqlite_keeps_everything_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlMetadata::open(&dir.path().join("m.db"), true)
            .await
            .unwrap();
        backend_suite(&store).await;
        store.close().await;
        // Reopening keeps everything (migrations are idempotent).
        let store = SqlMetadata::open(&dir.path().join("m.db"), false)
            .await
            .unwrap();
        assert_eq!(store.datasets().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn open_without_create_refuses_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            SqlMetadata::open(&dir.path().join("none.db"), false)
                .await
                .is_err()
        );
    }
}
