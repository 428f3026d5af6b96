//! What the store's tests share: a dataset schema, and fresh places in the
//! test servers that scripts/test starts (PostgreSQL, an S3-compatible store).
#![allow(dead_code)]

use std::sync::Arc;

/// A dataset with an integer subject id, a bounded amount and an
/// identifying label.
pub const SCHEMA: &str = r#"
[[columns]]
name = "id"
class = "subject_id"
type = "integer"
[[columns]]
name = "amount"
class = "attribute"
type = "integer"
bounds = [0, 1000000]
[[columns]]
name = "label"
class = "identifier"
type = "string"
"#;

/// A fresh prefix in the test server, or `None` without one (a failure
/// when `CUSTOS_REQUIRE_S3` is set).
pub fn fresh_prefix() -> Option<String> {
    let (Ok(bucket), Ok(endpoint)) = (
        std::env::var("CUSTOS_TEST_S3"),
        std::env::var("CUSTOS_TEST_S3_ENDPOINT"),
    ) else {
        assert!(
            std::env::var_os("CUSTOS_REQUIRE_S3").is_none(),
            "CUSTOS_REQUIRE_S3 is set but CUSTOS_TEST_S3 names no server"
        );
        eprintln!("skipped: CUSTOS_TEST_S3 names no S3-compatible server");
        return None;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Some(format!(
        "{bucket}/store-{}-{nanos}?endpoint={endpoint}",
        std::process::id()
    ))
}

/// The insider's direct access to the bucket.
pub fn raw_store(url: &str) -> (Arc<dyn object_store::ObjectStore>, String) {
    let parsed = url::Url::parse(url).unwrap();
    let endpoint = parsed
        .query_pairs()
        .find(|(k, _)| k == "endpoint")
        .unwrap()
        .1
        .into_owned();
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(parsed.host_str().unwrap())
        .with_region("us-east-1")
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .build()
        .unwrap();
    (Arc::new(store), parsed.path().trim_matches('/').to_owned())
}

/// The URL of a new, migrated PostgreSQL catalogue database, or `None`
/// without a server (a failure when `CUSTOS_REQUIRE_POSTGRES` is set).
pub fn fresh_postgres() -> Option<String> {
    use sqlx::Connection as _;
    let Ok(admin) = std::env::var("CUSTOS_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("CUSTOS_REQUIRE_POSTGRES").is_none(),
            "CUSTOS_REQUIRE_POSTGRES is set but CUSTOS_TEST_POSTGRES names no server"
        );
        eprintln!("skipped: CUSTOS_TEST_POSTGRES names no PostgreSQL server");
        return None;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("custos_store_{}_{nanos}", std::process::id());
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);
    let url = url.to_string();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        custos_store::meta::SqlMetadata::connect_postgres(&url)
            .await
            .unwrap()
            .close()
            .await;
    });
    Some(url)
}
