//! Step 12 of the demo: two witnesses (an inspector general's and a
//! court's) on loopback cosign the ledger; a checkpoint re-signed over
//! another history is refused; a bucket file altered on disk is found.

use std::path::Path;

use custos_broker::{Actor, Custos};
use custos_ledger::witness_wire::AddCheckpoint;
use custos_ledger::{NoteSigner, WitnessPolicy};
use custos_witness::serve::WitnessServer;
use custos_witness::{Collector, Witness, WitnessDir};

/// Starts a witness following `log_key`; returns its hex key line and URL.
async fn start_witness(
    dir: &Path,
    name: &str,
    log_key: &str,
) -> anyhow::Result<(String, String, tokio::sync::oneshot::Sender<()>)> {
    let (opened, key) = WitnessDir::init(dir, name, std::slice::from_ref(&log_key.to_owned()))?;
    let server = WitnessServer::bind(Witness::load(opened)?, "127.0.0.1:0".parse()?).await?;
    let url = format!("http://{}", server.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Ok((key.hex(), url, stop))
}

/// Runs the step on the closed home at `home_dir`.
pub async fn run(base: &Path, home_dir: &Path, admin: &Actor) -> anyhow::Result<()> {
    let custos = Custos::open(home_dir, None).await?;
    let log_key = custos.verifier_key().to_owned();
    let mut policy = String::new();
    let mut stops = Vec::new();
    for (who, name) in [
        ("an inspector general", "witness.ig.example.gov/custos"),
        ("a court", "witness.court.example.gov/custos"),
    ] {
        let dir = base.join(name.replace(['/', '.'], "-"));
        let (hex, url, stop) = start_witness(&dir, name, &log_key).await?;
        println!(
            "  {who} runs `custos witness serve` at {url} (key {}…)",
            &hex[..12]
        );
        policy += &format!("witness {name} {hex} {url}\n");
        stops.push(stop);
    }
    policy += "group both all witness.ig.example.gov/custos witness.court.example.gov/custos\nquorum both\n";
    custos.set_witness_policy(admin, &policy).await?;
    println!(
        "  The custodian installs the policy (both must cosign): `custos ledger witness-policy`."
    );
    let collector = Collector::new(
        &custos.ledger_dir(),
        &log_key,
        WitnessPolicy::parse(&policy)?,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let round = collector.round().await?;
    anyhow::ensure!(
        round.published,
        "the witnesses did not cosign: {:?}",
        round.failed
    );
    println!(
        "  Checkpoint of size {} cosigned by {}; the witnessed checkpoint:",
        round.size,
        round
            .cosigned
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let note = custos_ledger::witnessed::read_witnessed(&custos.ledger_dir())?.unwrap_or_default();
    for line in String::from_utf8_lossy(&note).lines() {
        println!("    {line}");
    }

    // The administrator holds the ledger key (beside the home) and signs a
    // checkpoint of the same size over another history.
    let seed = std::fs::read_to_string(home_dir.with_file_name("home.ledger.key"))?;
    let key = custos_broker::LedgerKeyFrom::seed_from_hex(&seed)?;
    let origin = log_key.split('+').next().unwrap_or_default();
    let forged = NoteSigner::new(origin, ed25519_dalek::SigningKey::from_bytes(&key))
        .sign(round.size, [0x42; 32])?;
    let url = policy
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or_default()
        .to_owned();
    let body = AddCheckpoint {
        old: round.size,
        proof: Vec::new(),
        note: forged,
    }
    .encode();
    let response = reqwest::Client::new()
        .post(format!("{url}/add-checkpoint"))
        .body(body)
        .send()
        .await?;
    println!(
        "  An administrator re-signs a rewritten history with the ledger key and submits it: the witness answers {} (it holds the real root).",
        response.status()
    );

    // A bucket file altered on disk.
    let datasets = home_dir.join("datasets");
    let dir = std::fs::read_dir(&datasets)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("tax_returns."))
        })
        .ok_or_else(|| anyhow::anyhow!("no tax_returns files"))?;
    let bucket = dir.join("bucket-0000.parquet");
    let original = std::fs::read(&bucket)?;
    let mut edited = original.clone();
    let middle = edited.len() / 2;
    edited[middle] ^= 1;
    std::fs::write(&bucket, &edited)?;
    let check = custos.verify_dataset(admin, "tax_returns").await?;
    std::fs::write(&bucket, &original)?;
    println!(
        "  Someone flips one byte of a tax-return file on disk; `custos dataset verify` says: {}",
        check.problem.as_deref().unwrap_or("nothing (unexpected)")
    );
    println!(
        "  (restored). Every read checks the files it opens the same way and refuses, ledgered."
    );
    custos.close()?;
    drop(stops);
    Ok(())
}
