//! Three `custos serve` replicas of one home (its catalogue in PostgreSQL,
//! its files and published ledger in object storage), with no load
//! balancer: clients spread their requests over the three. A privacy
//! budget is never overspent by queries through different replicas; one
//! replica, the one integrating the ledger, is killed with SIGKILL under
//! load; every answer a client got is in the ledger once, the integrator
//! lease moves, checkpoints go on, and the published ledger verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use predicates::prelude::*;
use serde_json::{Value, json};

mod common;

/// A copy of the home, as another machine would hold it: the same few
/// files (catalogue.toml, object-store.toml, the key files).
fn copy_home(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The replica holding the integrator lease now, if any.
async fn lease_holder(url: &str) -> Option<String> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        common::postgres_text(
            &url,
            "SELECT holder FROM ledger_integrator WHERE expires_at > clock_timestamp()",
        )
    })
    .await
    .unwrap()
}

async fn count(url: &str, sql: &'static str) -> i64 {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || common::postgres_count(&url, sql))
        .await
        .unwrap()
}

/// A count query under `agreement` through `server`; its status and body.
async fn send_query(
    client: &reqwest::Client,
    server: &str,
    token: &str,
    agreement: &str,
) -> reqwest::Result<(u16, Value)> {
    let response = client
        .post(format!("{server}/v1/queries"))
        .bearer_auth(token)
        .json(&json!({
            "agreement": agreement,
            "sql": "SELECT COUNT(*) FROM tax_returns",
            "spend": 0.1
        }))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

async fn query(
    client: &reqwest::Client,
    server: &str,
    token: &str,
    agreement: &str,
) -> (u16, Value) {
    send_query(client, server, token, agreement).await.unwrap()
}

/// 30 queries under `agreement` at once, ten through each replica. Each
/// status is one of `expected`; each answer's ledger index is new to
/// `answered` and added to it. Returns how many were answered.
async fn burst(
    client: &reqwest::Client,
    urls: &[String],
    token: &str,
    agreement: &str,
    expected: &[u16],
    answered: &mut BTreeSet<u64>,
) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (client, url, token, agreement) = (
            client.clone(),
            urls[i % urls.len()].clone(),
            token.to_owned(),
            agreement.to_owned(),
        );
        tasks.spawn(async move { query(&client, &url, &token, &agreement).await });
    }
    let replies = tasks.join_all().await;
    for (status, body) in &replies {
        assert!(expected.contains(status), "{status}: {body}");
        if *status == 200 {
            let index = body["ledger_index"].as_u64().unwrap();
            assert!(answered.insert(index), "index {index} answered twice");
        }
    }
    replies.iter().filter(|(s, _)| *s == 200).count()
}

/// A home in `dir` (origin `tax.example.gov/custos`) with a shared ledger:
/// its catalogue in PostgreSQL, its files in object storage, 300
/// synthetic returns and agreement `gao-stats` with `budget`. Returns the
/// home, an admin's token and an analyst's.
fn shared_home(
    dir: &Path,
    catalogue: &str,
    objects: &str,
    budget: &str,
) -> (std::path::PathBuf, String, String) {
    let home = dir.join("home");
    common::custos(&home, None)
        .args(["init", "--origin", "tax.example.gov/custos", "--catalogue"])
        .arg(catalogue)
        .args(["--object-store", objects])
        .assert()
        .success()
        .stdout(predicate::str::contains("shared by every server"));
    let admin = common::add_principal(&home, None, "alice", "IRS", "admin");
    let analyst = common::add_principal(&home, Some(&admin), "gina", "GAO", "requester");
    common::ingest_synthetic(&home, &admin, &dir.join("data"), 300, &["tax_returns"]);
    let agreement = dir.join("agreement.toml");
    std::fs::write(
        &agreement,
        common::aggregate_agreement("gao-stats", budget, "0.1"),
    )
    .unwrap();
    common::custos(&home, Some(&admin))
        .args(["agreement", "apply"])
        .arg(&agreement)
        .assert()
        .success();
    (home, admin, analyst)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_share_one_budget_and_ledger_and_survive_a_killed_integrator() {
    let (Some(catalogue), Some(objects)) = (
        tokio::task::spawn_blocking(common::postgres_database)
            .await
            .unwrap(),
        common::s3_prefix(),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (home, admin, analyst) = shared_home(dir.path(), &catalogue, &objects, "1.0");
    // A second agreement whose budget is ample but whose rate is 12 an hour.
    let hourly = dir.path().join("hourly.toml");
    std::fs::write(
        &hourly,
        common::aggregate_agreement("gao-hourly", "100.0", "0.1")
            .replace("requests_per_hour = 100", "requests_per_hour = 12"),
    )
    .unwrap();
    common::custos(&home, Some(&admin))
        .args(["agreement", "apply"])
        .arg(&hourly)
        .assert()
        .success();
    let homes: Vec<_> = (0..3)
        .map(|i| {
            if i == 0 {
                return home.clone();
            }
            let copy = dir.path().join(format!("replica{i}"));
            copy_home(&home, &copy);
            copy
        })
        .collect();
    let mut servers: Vec<Option<common::Server>> = homes
        .iter()
        .map(|h| {
            Some(common::Server::start(
                h,
                &["--rate", "100000", "--burst", "100000"],
            ))
        })
        .collect();
    let urls: Vec<String> = servers
        .iter()
        .map(|s| s.as_ref().unwrap().url.clone())
        .collect();

    // 30 queries at once, ten through each replica, on a budget for 10.
    let client = reqwest::Client::new();
    let mut answered = BTreeSet::new();
    let within_budget = burst(
        &client,
        &urls,
        &analyst,
        "gao-stats",
        &[200, 403, 409],
        &mut answered,
    )
    .await;
    assert_eq!(within_budget, 10, "the budget was overspent");
    assert_eq!(
        count(&catalogue, "SELECT COUNT(*) FROM privacy_charges").await,
        10
    );
    // 30 at once under a limit of 12 an hour: 12 answered, whichever
    // replicas the others went to.
    let within_rate = burst(
        &client,
        &urls,
        &analyst,
        "gao-hourly",
        &[200, 429, 403],
        &mut answered,
    )
    .await;
    assert_eq!(within_rate, 12, "the hourly limit was exceeded");

    // Kill the replica that integrates the ledger, while clients keep
    // going (each refused query is ledgered too).
    let holder = lease_holder(&catalogue)
        .await
        .expect("no replica integrates the ledger");
    let victim = servers
        .iter()
        .position(|s| {
            let pid = s.as_ref().unwrap().child.id();
            holder.starts_with(&format!("replica-{pid}-"))
        })
        .expect("the lease holder is none of the replicas");
    let load = {
        let (client, urls, token) = (client.clone(), urls.clone(), analyst.clone());
        tokio::spawn(async move {
            // Refused queries (the budget is spent): each one is ledgered.
            let mut statuses = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(8);
            let mut i = 0usize;
            while Instant::now() < deadline {
                let url = &urls[i % 3];
                i += 1;
                // The killed replica refuses connections: not counted.
                if let Ok((status, _)) = send_query(&client, url, &token, "gao-stats").await {
                    statuses.push(status);
                }
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut killed = servers[victim].take().unwrap();
    killed.child.kill().unwrap(); // SIGKILL
    killed.child.wait().unwrap();
    let statuses = load.await.unwrap();
    assert!(
        statuses.iter().filter(|s| **s == 403).count() > 3,
        "{statuses:?}"
    );

    // The survivors answer (and ledger) a query each after the kill.
    for (i, url) in urls.iter().enumerate() {
        if i == victim {
            continue;
        }
        let (status, body) = query(&client, url, &analyst, "gao-stats").await;
        // The budget is spent: a refusal, ledgered.
        assert_eq!(status, 403, "{body}");
    }
    let new_holder = lease_holder(&catalogue)
        .await
        .expect("no replica took the lease over");
    assert_ne!(new_holder, holder);

    // Checkpoints went on: the published ledger holds every answer once,
    // at the index its client was given, and verifies.
    let survivor = &homes[(victim + 1) % 3];
    common::custos(survivor, None)
        .args(["ledger", "verify"])
        .assert()
        .success()
        .stdout(predicate::str::contains("verified"));
    let entries = common::ledger(survivor);
    let journal = count(&catalogue, "SELECT COUNT(*) FROM ledger_journal").await;
    assert!(entries.len() as i64 <= journal);
    for index in &answered {
        let entry = entries
            .iter()
            .find(|e| e["index"].as_u64() == Some(*index))
            .unwrap_or_else(|| panic!("answered query {index} is not in the ledger"));
        assert_eq!(entry["action"], "query.aggregate", "{entry}");
    }
    let answers = entries
        .iter()
        .filter(|e| e["action"] == "query.aggregate" && e["decision"] == "allow")
        .count();
    assert_eq!(answers, 22, "answers in the ledger");
    for server in servers.into_iter().flatten() {
        let (status, log) = server.stop();
        assert!(status.success(), "{log}");
    }
}

/// `custos serve --config` on a machine with nothing of the home but
/// the configuration file and the environment's secrets.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_serves_from_a_configuration_file_without_a_copy_of_the_home() {
    let (Some(catalogue), Some(objects)) = (
        tokio::task::spawn_blocking(common::postgres_database)
            .await
            .unwrap(),
        common::s3_prefix(),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (home, _admin, analyst) = shared_home(dir.path(), &catalogue, &objects, "10.0");
    let master_key = std::fs::read_to_string(home.join("master.key")).unwrap();
    let master_key = master_key.trim();

    // The replica's machine: a configuration file beside the ledger key
    // (a relative path), and an empty place for its directory.
    let machine = dir.path().join("machine");
    std::fs::create_dir(&machine).unwrap();
    std::fs::copy(
        dir.path().join("home.ledger.key"),
        machine.join("ledger.key"),
    )
    .unwrap();
    let replica = machine.join("replica");
    let write_config = |name: &str, origin: &str, extra: &str| {
        let file = machine.join(name);
        std::fs::write(
            &file,
            format!(
                "home = \"replica\"\norigin = \"{origin}\"\ncatalogue = \"{catalogue}\"\nobject_store = \"{objects}\"\nledger_key_file = \"ledger.key\"\n{extra}"
            ),
        )
        .unwrap();
        file
    };
    let serve = |config: &Path, key: Option<&str>| {
        let mut cmd = assert_cmd::Command::cargo_bin("custos").unwrap();
        cmd.env_remove("CUSTOS_HOME")
            .env_remove("CUSTOS_MASTER_KEY")
            .env_remove("CUSTOS_LEDGER_KEY")
            .env_remove("CUSTOS_LEDGER_KEY_FILE")
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .timeout(Duration::from_secs(60));
        if let Some(key) = key {
            cmd.env("CUSTOS_MASTER_KEY", key);
        }
        cmd
    };

    // Bad configurations: a clear error each, and nothing left behind.
    for (config, key, says) in [
        (
            write_config(
                "typo.toml",
                "tax.example.gov/custos",
                "[server]\nlistn = \"127.0.0.1:1\"\n",
            ),
            Some(master_key),
            "unknown field `listn`",
        ),
        (
            write_config(
                "half-tls.toml",
                "tax.example.gov/custos",
                "[server]\ntls_cert = \"cert.pem\"\n",
            ),
            Some(master_key),
            "only one of `tls_cert` and `tls_key`",
        ),
        (
            write_config("other-origin.toml", "other.example.gov/custos", ""),
            Some(master_key),
            "belongs to another home",
        ),
        (
            write_config("no-key.toml", "tax.example.gov/custos", ""),
            None,
            "master key",
        ),
    ] {
        serve(&config, key)
            .assert()
            .failure()
            .stderr(predicate::str::contains(says));
        assert!(
            !replica.exists(),
            "a refused start left {}",
            replica.display()
        );
    }
    // A value put in the wrong place is not echoed (it may be a secret).
    let leaky = write_config(
        "leaky.toml",
        "tax.example.gov/custos",
        "[server]\nrate = \"Hunter2pw\"\n",
    );
    serve(&leaky, Some(master_key)).assert().failure().stderr(
        predicate::str::contains("at line 7").and(predicate::str::contains("Hunter2pw").not()),
    );
    assert!(!replica.exists());
    let config = write_config(
        "replica.toml",
        "tax.example.gov/custos",
        "[server]\nrate = 1\nburst = 3\n",
    );
    serve(&config, Some(master_key))
        .env("CUSTOS_HOME", dir.path().join("elsewhere"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("give one"));

    // The replica serves the home, with the configuration's options.
    let server = common::Server::start_with_env(
        &replica,
        &["--config", config.to_str().unwrap()],
        &[("CUSTOS_MASTER_KEY", master_key)],
    );
    let mut names: Vec<String> = std::fs::read_dir(&replica)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["catalogue.toml", "master.key.lock", "object-store.toml"],
        "{names:?}"
    );
    let client = reqwest::Client::new();
    let (status, body) = query(&client, &server.url, &analyst, "gao-stats").await;
    assert_eq!(status, 200, "{body}");
    let index = body["ledger_index"].as_u64().unwrap();
    // `burst = 3` from the file: the fourth request at once is throttled.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            client
                .get(format!("{}/v1/agreements", server.url))
                .bearer_auth(&analyst)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");

    // What it ledgered is in the home's published ledger, which verifies.
    common::custos(&home, None)
        .args(["ledger", "verify"])
        .assert()
        .success();
    let entries = common::ledger(&home);
    let entry = entries
        .iter()
        .find(|e| e["index"].as_u64() == Some(index))
        .unwrap();
    assert_eq!(entry["action"], "query.aggregate", "{entry}");
    // A second start finds its files and starts again; a changed catalogue
    // URL in the file is refused, and the files stay as they were.
    let before = std::fs::read(replica.join("catalogue.toml")).unwrap();
    let moved = write_config("moved.toml", "tax.example.gov/custos", "")
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(&moved)
        .unwrap()
        .replace(&catalogue, &format!("{catalogue}_moved"));
    std::fs::write(&moved, text).unwrap();
    serve(Path::new(&moved), Some(master_key))
        .assert()
        .failure()
        .stderr(predicate::str::contains("another catalogue URL"));
    assert_eq!(
        std::fs::read(replica.join("catalogue.toml")).unwrap(),
        before
    );
}
