//! A home whose catalogue is in PostgreSQL (`custos init --catalogue URL`),
//! end to end through the CLI and the API: what it refuses (a URL with a
//! password, an unreachable server, a database in use, another home's
//! catalogue, a wrong password, a malformed `catalogue.toml`), each with a
//! clear error and nothing created, leaked or lost; and budgets charged
//! concurrently through the API never overspent.
//!
//! Needs the test server of `scripts/postgres` (`CUSTOS_TEST_POSTGRES`);
//! without one these tests say so and pass, unless
//! `CUSTOS_REQUIRE_POSTGRES` is set, as scripts/test sets it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use predicates::prelude::*;
use serde_json::{Value, json};

/// Makes a home at `dir/name` on the catalogue `url`, with an admin.
fn postgres_home(dir: &Path, name: &str, url: &str) -> (PathBuf, String) {
    let home = dir.join(name);
    common::custos(&home, None)
        .args(["init", "--catalogue", url])
        .assert()
        .success()
        .stdout(predicate::str::contains("PostgreSQL"));
    let admin = common::add_principal(&home, None, "alice", "IRS", "admin");
    (home, admin)
}

#[test]
fn bad_catalogues_are_refused_clearly_and_create_nothing() {
    let Some(url) = common::postgres_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let refused = |catalogue: &str, why: &str| {
        common::custos(&home, None)
            .args(["init", "--catalogue", catalogue])
            .assert()
            .failure()
            .stderr(predicate::str::contains(why))
            .stderr(predicate::str::contains("s3cret").not());
        assert!(!home.exists(), "{catalogue}: a home was left behind");
        assert!(
            !dir.path().join("home.ledger.key").exists(),
            "{catalogue}: a ledger key was left behind"
        );
    };
    // A password in the URL would be written into the home (and its backups).
    let with_password = url.replacen("custos@", "custos:s3cret@", 1);
    refused(&with_password, "PGPASSWORD");
    refused(&format!("{url}?password=s3cret"), "PGPASSWORD");
    // Parameters that would point the connection elsewhere than it reads.
    refused(&format!("{url}?dbname=postgres"), "has parameter `dbname`");
    refused("mysql://custos@127.0.0.1/custos", "postgres://");
    refused("postgres://custos@127.0.0.1:54329", "names no database");
    refused("not a url", "is not a URL");
    // Nothing listens on port 1.
    refused(
        "postgres://custos@127.0.0.1:1/custos",
        "cannot reach the PostgreSQL catalogue",
    );

    // A database already holding a catalogue is not taken over.
    let (first, admin) = postgres_home(dir.path(), "first", &url);
    let second = dir.path().join("second");
    common::custos(&second, None)
        .args(["init", "--catalogue", &url])
        .assert()
        .failure()
        .stderr(predicate::str::contains("belongs to another home"));
    assert!(!second.exists());
    // The first home is untouched.
    common::custos(&first, Some(&admin))
        .args(["principal", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("alice"));

    // A home pointed at another home's catalogue is refused by origin,
    // before any key is tried; with the other home's whole catalogue.toml,
    // by the key check.
    let other_url = common::postgres_database().unwrap();
    let (other, _) = postgres_home(dir.path(), "other", &other_url);
    let own = std::fs::read_to_string(other.join("catalogue.toml")).unwrap();
    std::fs::write(other.join("catalogue.toml"), own.replace(&other_url, &url)).unwrap();
    common::custos(&other, None)
        .args(["principal", "list"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("belongs to another home"));
    std::fs::copy(first.join("catalogue.toml"), other.join("catalogue.toml")).unwrap();
    common::custos(&other, None)
        .args(["principal", "list"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "the master key does not match this home",
        ));

    // A wrong password: a clear error that does not echo it.
    common::custos(&first, Some(&admin))
        .env("PGPASSWORD", "s3cret-wrong")
        .args(["principal", "list"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "cannot reach the PostgreSQL catalogue",
        ))
        .stderr(predicate::str::contains("password authentication failed"))
        .stderr(predicate::str::contains("s3cret").not());

    // A malformed catalogue.toml names the file.
    let file = other.join("catalogue.toml");
    std::fs::write(&file, "url = 5\n").unwrap();
    common::custos(&other, None)
        .args(["principal", "list"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("catalogue.toml` is malformed"));

    // The ledger of the first home verifies without any key, and records
    // the principal.
    common::custos(&first, None)
        .args(["ledger", "verify"])
        .assert()
        .success();
    assert!(
        common::ledger(&first)
            .iter()
            .any(|e| e["action"] == "principal.add")
    );
}

/// Queries sent at once through two API clients against one budget: the
/// budget (charged in PostgreSQL, under a row lock) is never overspent, and
/// every accepted answer's charge is in the catalogue once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_queries_never_overspend_a_budget_in_postgresql() {
    let Some(url) = tokio::task::spawn_blocking(common::postgres_database)
        .await
        .unwrap()
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (home, admin) = postgres_home(dir.path(), "home", &url);
    let analyst = common::add_principal(&home, Some(&admin), "gina", "GAO", "requester");
    common::ingest_synthetic(
        &home,
        &admin,
        &dir.path().join("data"),
        400,
        &["tax_returns"],
    );
    let agreement = dir.path().join("agreement.toml");
    std::fs::write(
        &agreement,
        common::aggregate_agreement("gao-stats", "1.0", "0.1"),
    )
    .unwrap();
    common::custos(&home, Some(&admin))
        .args(["agreement", "apply"])
        .arg(&agreement)
        .assert()
        .success();
    let server = common::Server::start(&home, &["--rate", "100000", "--burst", "100000"]);
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let (client, url, token) = (client.clone(), server.url.clone(), analyst.clone());
        tasks.spawn(async move {
            let response = client
                .post(format!("{url}/v1/queries"))
                .bearer_auth(token)
                .json(&json!({
                    "agreement": "gao-stats",
                    "sql": "SELECT COUNT(*) FROM tax_returns",
                    "spend": 0.1
                }))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        });
    }
    let replies = tasks.join_all().await;
    let accepted = replies.iter().filter(|(s, _)| *s == 200).count();
    for (status, body) in &replies {
        assert!(
            *status == 200 || *status == 403 || *status == 409,
            "{status}: {body}"
        );
    }
    assert_eq!(accepted, 10, "{replies:?}");
    let charges = tokio::task::spawn_blocking(move || {
        common::postgres_count(&url, "SELECT COUNT(*) FROM privacy_charges")
    })
    .await
    .unwrap();
    assert_eq!(charges, 10);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

/// A copy of a home on another machine, pointed at the same PostgreSQL
/// catalogue, would fork the ledger and count limits apart: while one
/// process writes the home, a second is refused by the catalogue's writer
/// lease. A holder whose lease connection is cut stops writing at once
/// (the copy may then take over); a killed holder's lease is freed.
/// Bad `--object-store` URLs and stores, each refused with a clear error
/// that never echoes a secret, and leaving no home and no ledger key.
#[test]
fn bad_object_stores_are_refused_clearly_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let refused = |store: &str, why: &str| {
        common::custos(&home, None)
            .args(["init", "--object-store", store])
            .assert()
            .failure()
            .stderr(predicate::str::contains(why))
            .stderr(predicate::str::contains("s3cret").not());
        assert!(!home.exists(), "{store}: a home was left behind");
        assert!(
            !dir.path().join("home.ledger.key").exists(),
            "{store}: a ledger key was left behind"
        );
    };
    refused("s3://AKIA:s3cret@bucket/p", "AWS_SECRET_ACCESS_KEY");
    refused(
        "s3://bucket/p?secret_access_key=s3cret",
        "only `region` and `endpoint`",
    );
    refused(
        "s3://bucket/p?endpoint=http://s3.example.org",
        "use https://",
    );
    refused("s3://bucket", "needs a prefix");
    refused("s3://bucket/a/../b", "not in plain form");
    refused("gs://bucket/p", "must start with s3://");
    // Nothing listens on port 1.
    refused(
        "s3://bucket/p?endpoint=http://127.0.0.1:1",
        "cannot use the object store",
    );
    let Some(url) = common::s3_prefix() else {
        return;
    };
    // A prefix already holding a home is not shared.
    common::custos(&dir.path().join("first"), None)
        .args(["init", "--object-store", &url])
        .assert()
        .success();
    refused(&url, "is not empty");
}

#[test]
fn a_copied_home_cannot_write_the_same_catalogue_at_once() {
    let Some(url) = common::postgres_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (home, admin) = postgres_home(dir.path(), "home", &url);
    let copy = dir.path().join("copy");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&home)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success());
    let add = |home: &Path, name: &str| {
        common::custos(home, Some(&admin))
            .args(["principal", "add", name, "--org", "IRS", "--role", "admin"])
            .assert()
    };
    let server = common::Server::start(&home, &[]);
    add(&copy, "mallory").failure().stderr(predicate::str::contains(
        "another Custos process, on this machine or another, is writing this home's PostgreSQL catalogue",
    ));
    assert_eq!(
        common::postgres_count(
            &url,
            "SELECT COUNT(*) FROM principals WHERE name = 'mallory'"
        ),
        0
    );

    // The lease's connection is cut (a restart, an administrator, a
    // timeout): the server stops writing before the copy may start.
    common::postgres_execute(
        &url,
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let post = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", "POST"])
        .arg(format!("{}/v1/principals", server.url))
        .args(["-H", &format!("Authorization: Bearer {admin}")])
        .args(["-H", "Content-Type: application/json"])
        .args(["-d", r#"{"name":"eve","org":"IRS","roles":["admin"]}"#])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&post.stdout);
    assert!(answer.ends_with("503"), "{answer}");
    assert!(answer.contains("lost the home's writer lease"), "{answer}");
    add(&copy, "trent").success();
    drop(server);

    // A killed writer's lease is released by the server with its session.
    let mut server = common::Server::start(&copy, &[]);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = common::custos(&home, Some(&admin))
            .args(["principal", "list"])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let names = common::postgres_count(
        &url,
        "SELECT COUNT(*) FROM principals WHERE name IN ('mallory', 'eve', 'trent')",
    );
    assert_eq!(
        names, 1,
        "only trent, added by the copy once it held the lease"
    );
}

/// A catalogue reached over verified TLS (the test server's certificate,
/// from its own CA): the home works and its connections are encrypted;
/// the same URL without the CA is refused, not downgraded.
#[test]
fn a_catalogue_over_verified_tls_opens_and_an_unknown_ca_is_refused() {
    let Some(url) = common::postgres_database() else {
        return;
    };
    let Ok(ca) = std::env::var("CUSTOS_TEST_POSTGRES_CA") else {
        assert!(
            std::env::var_os("CUSTOS_REQUIRE_POSTGRES").is_none(),
            "scripts/postgres prints CUSTOS_TEST_POSTGRES_CA"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let named = url.replacen("@127.0.0.1:", "@localhost:", 1);
    let unverified = dir.path().join("unverified");
    common::custos(&unverified, None)
        .args([
            "init",
            "--catalogue",
            &format!("{named}?sslmode=verify-full"),
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "cannot reach the PostgreSQL catalogue",
        ));
    assert!(!unverified.exists());
    let verified = format!("{named}?sslmode=verify-full&sslrootcert={ca}");
    let (home, admin) = postgres_home(dir.path(), "home", &verified);
    let server = common::Server::start(&home, &[]);
    let encrypted = common::postgres_count(
        &url,
        "SELECT COUNT(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = current_database() AND s.ssl AND a.pid <> pg_backend_pid()",
    );
    let plain = common::postgres_count(
        &url,
        "SELECT COUNT(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = current_database() AND NOT s.ssl AND a.pid <> pg_backend_pid()",
    );
    assert!(
        encrypted >= 1 && plain == 0,
        "{encrypted} over TLS, {plain} not"
    );
    common::custos(&home, Some(&admin))
        .args(["principal", "list"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("another Custos process"));
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    common::custos(&home, Some(&admin))
        .args(["principal", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("alice"));
}
