//! Test support: a fresh catalogue on every backend this run reaches.
//!
//! SQLite always. PostgreSQL when `CUSTOS_TEST_POSTGRES` names a server
//! (an administrator's URL, e.g. `postgres://custos@127.0.0.1:54329/postgres`,
//! the password in `PGPASSWORD`): each call makes a new database there.
//! `scripts/test` starts a throwaway server and sets
//! `CUSTOS_REQUIRE_POSTGRES=1`, which turns a missing server into a failure
//! instead of a skipped backend.

use sqlx::{AssertSqlSafe, Connection};

use crate::keys::random_bytes;
use crate::meta::SqlMetadata;

/// A catalogue for one test and what keeps it alive.
pub(crate) struct TestCatalogue {
    /// The store.
    pub meta: SqlMetadata,
    /// The backend's name, for assertion messages.
    pub backend: &'static str,
    /// The SQLite file's directory.
    _dir: Option<tempfile::TempDir>,
}

/// The URL of a new, empty PostgreSQL database, or `None` when this run has
/// no server (a failure under `CUSTOS_REQUIRE_POSTGRES=1`).
pub(crate) async fn new_postgres_database() -> Option<String> {
    let Ok(admin) = std::env::var("CUSTOS_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("CUSTOS_REQUIRE_POSTGRES").is_none(),
            "CUSTOS_REQUIRE_POSTGRES is set but CUSTOS_TEST_POSTGRES names no server"
        );
        eprintln!("note: CUSTOS_TEST_POSTGRES is not set: the PostgreSQL backend is not tested");
        return None;
    };
    let mut suffix = [0u8; 8];
    random_bytes(&mut suffix).unwrap();
    let name = format!("custos_test_{}", hex::encode(suffix));
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);
    Some(url.to_string())
}

/// A fresh catalogue on each backend.
pub(crate) async fn catalogues() -> Vec<TestCatalogue> {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![TestCatalogue {
        meta: SqlMetadata::open(&dir.path().join("c.db"), true)
            .await
            .unwrap(),
        backend: "sqlite",
        _dir: Some(dir),
    }];
    if let Some(url) = new_postgres_database().await {
        all.push(TestCatalogue {
            meta: SqlMetadata::connect_postgres(&url).await.unwrap(),
            backend: "postgres",
            _dir: None,
        });
    }
    all
}

/// Every (table, column) of the catalogue's schema, sorted (the migration
/// bookkeeping table left out).
pub(crate) async fn columns(meta: &SqlMetadata) -> Vec<(String, String)> {
    use sqlx::Row;
    let sql = match meta.backend() {
        crate::meta::Backend::Sqlite => {
            "SELECT CAST(m.name AS TEXT) AS t, CAST(p.name AS TEXT) AS c \
             FROM sqlite_master m, pragma_table_info(m.name) p WHERE m.type = 'table'"
        }
        crate::meta::Backend::Postgres => {
            "SELECT CAST(table_name AS TEXT) AS t, CAST(column_name AS TEXT) AS c \
             FROM information_schema.columns WHERE table_schema = current_schema()"
        }
    };
    let mut all: Vec<(String, String)> = sqlx::query(sql)
        .fetch_all(meta.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.try_get("t").unwrap(), r.try_get("c").unwrap()))
        .filter(|(t, _): &(String, String)| !t.starts_with("_sqlx") && !t.starts_with("ledger_"))
        .collect();
    all.sort();
    all
}
