//! `custos report subject|agreement`: accountability reports for overseers.

use std::path::Path;

use clap::Subcommand;

use super::gateway::Gateway;

/// Reports (role `overseer` or `admin`; producing one is ledgered).
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// A person's accounting of disclosures (Privacy Act, 5 U.S.C. 552a(c)).
    ///
    /// Lists every look-up that named the subject and every release of their
    /// records: when, who (and their organisation), under which agreement and
    /// purpose, the request id, and the ledger entry with its inclusion proof
    /// against a fresh signed checkpoint. Disclosures under an agreement that
    /// withholds them (e.g. an ongoing law-enforcement matter, with its
    /// citation) are left out, as the Act allows.
    Subject {
        /// The subject's id (e.g. a TIN; dashes and case do not matter).
        id: String,
        /// Print JSON (with the checkpoint and full proofs) for scripts.
        #[arg(long)]
        json: bool,
        /// A witness policy (Sigsum format) to hold the report to: a quorum
        /// of its witnesses must have cosigned the ledger, recently, and
        /// the report's checkpoint must extend what they cosigned; says
        /// which lines they vouch for and which witnesses signed.
        #[arg(long, value_name = "FILE")]
        witness_policy: Option<std::path::PathBuf>,
        /// With --witness-policy: how old the quorum's cosignatures may be.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, value_name = "DURATION")]
        max_age: std::time::Duration,
        /// The ledger's verifier key; needed with --server (get it from the
        /// custodian, not from the server).
        #[arg(long, value_name = "VKEY")]
        key: Option<String>,
    },
    /// A summary of an agreement's use: requests, approvals, subjects,
    /// disclosures and rows released.
    Agreement {
        /// The agreement id.
        id: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// Checks that the report's checkpoint is signed by `vkey` and that every
/// line's inclusion proof verifies against it.
fn check_proofs(report: &custos_broker::SubjectReport, vkey: &str) -> anyhow::Result<()> {
    let cp = custos_ledger::verify_checkpoint(report.checkpoint.as_bytes(), vkey)
        .map_err(|e| anyhow::anyhow!("the report's checkpoint does not verify: {e}"))?;
    for line in &report.lines {
        custos_ledger::verify_inclusion(&line.proof)
            .map_err(|e| anyhow::anyhow!("the proof of ledger entry {}: {e}", line.proof.index))?;
        if line.proof.root != hex::encode(cp.root) || line.proof.size != cp.size {
            anyhow::bail!(
                "the proof of ledger entry {} is not against the report's checkpoint",
                line.proof.index
            );
        }
    }
    Ok(())
}

/// Holds a report's checkpoint to the witnessed one under `policy_path`:
/// the quorum cosigned within `max_age`, and both checkpoints are prefixes
/// of the one ledger (checked on the home's files or a verified copy of
/// the server's).
async fn witnessed_lines(
    home: &Path,
    server: Option<&str>,
    key: Option<String>,
    policy_path: &Path,
    max_age: std::time::Duration,
    report_checkpoint: &str,
) -> anyhow::Result<custos_ledger::WitnessedCheckpoint> {
    use super::ledger::{Source, check_witnessed, read_policy};
    use super::mirror::Wanted;
    let policy = read_policy(policy_path)?;
    let wanted = Wanted {
        entries: 0..0,
        hashes: true,
    };
    let source = Source::open(home, server, key, wanted).await?;
    let published = source.reader.latest(&source.key)?.size;
    let ours = custos_ledger::verify_checkpoint(report_checkpoint.as_bytes(), &source.key)
        .map_err(|e| anyhow::anyhow!("the report's checkpoint does not verify: {e}"))?;
    if ours.size > published || ours.size == 0 {
        anyhow::bail!("the report's checkpoint is not part of the published ledger");
    }
    let proof = source
        .reader
        .consistency_proof(ours.size, published, published)?;
    if proof.old_root != hex::encode(ours.root) {
        anyhow::bail!("the report's checkpoint is not a prefix of the published ledger");
    }
    check_witnessed(
        source.reader.files(),
        &source.key,
        &policy,
        max_age,
        published,
    )
}

/// Runs a report command.
pub async fn run(home: &Path, server: Option<&str>, cmd: ReportCommand) -> anyhow::Result<()> {
    let gateway = Gateway::connect(home, server).await?;
    let result = async {
        match cmd {
            ReportCommand::Subject {
                id,
                json,
                witness_policy,
                max_age,
                key,
            } => {
                let report = gateway.subject_report(&id).await?;
                // Check the proofs here too: over a server they are the only
                // evidence that the lines are the ledger's.
                let vkey = match (&key, server) {
                    (Some(k), _) => Some(k.clone()),
                    (None, None) => Some(super::published_ledger(home).await?.1),
                    (None, Some(_)) => None,
                };
                match &vkey {
                    Some(k) => check_proofs(&report, k)?,
                    None if !json => eprintln!(
                        "note: the lines' ledger proofs were not checked; give --key VKEY (from the custodian) to check them"
                    ),
                    None => {}
                }
                let witnessed = match &witness_policy {
                    Some(path) => Some(
                        witnessed_lines(home, server, key, path, max_age, &report.checkpoint)
                            .await?,
                    ),
                    None => None,
                };
                if json {
                    let mut value = serde_json::to_value(&report)?;
                    if let Some(w) = &witnessed {
                        value["witnessed"] = serde_json::json!({
                            "size": w.checkpoint.size,
                            "signed_by": w.signed_by,
                        });
                    }
                    println!("{}", serde_json::to_string_pretty(&value)?);
                    return Ok(());
                }
                if report.lines.is_empty() {
                    println!("No inspections or disclosures of this subject are on record.");
                } else {
                    let columns: Vec<String> = [
                        "when", "what", "who", "org", "agreement", "purpose", "request", "rows",
                        "ledger",
                    ]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect();
                    let rows: Vec<Vec<Option<String>>> = report
                        .lines
                        .iter()
                        .map(|l| {
                            [
                                l.at.clone(),
                                l.kind.as_str().to_owned(),
                                l.recipient.clone(),
                                l.org.clone(),
                                format!("{} v{}", l.agreement, l.agreement_version),
                                l.purpose.clone(),
                                l.request_id.clone(),
                                l.rows.to_string(),
                                l.proof.index.to_string(),
                            ]
                            .into_iter()
                            .map(Some)
                            .collect()
                        })
                        .collect();
                    print!("{}", super::table(&columns, &rows));
                    println!(
                        "\nEvery line's ledger entry is proved included in the tree of size {} (proofs: --json).",
                        report.lines[0].proof.size
                    );
                }
                println!("Checkpoint:\n{}", report.checkpoint.trim_end());
                if let Some(w) = &witnessed {
                    let newer = report
                        .lines
                        .iter()
                        .filter(|l| l.proof.index >= w.checkpoint.size)
                        .count();
                    println!(
                        "Witnessed: the ledger's first {} entries were cosigned by {}, and this report's checkpoint extends them; {} of the {} lines are newer and not yet witnessed.",
                        w.checkpoint.size,
                        super::ledger::signers(w),
                        newer,
                        report.lines.len()
                    );
                }
                Ok(())
            }
            ReportCommand::Agreement { id, json } => {
                let r = gateway.agreement_report(&id).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                    return Ok(());
                }
                let u = &r.usage;
                println!("agreement          {} v{} ({})", r.id, r.version, r.state);
                println!("title              {}", r.title);
                println!("requester          {}", r.requester);
                println!("purpose            {}", r.purpose);
                println!("in force           {} to {}", r.valid_from, r.valid_until);
                if r.withheld_from_subject_reports {
                    println!("subject reports    withheld (see the agreement's citation)");
                }
                println!(
                    "look-ups           {} ({} pending, {} approved, {} fetched) by {} requester(s)",
                    u.requests, u.pending, u.approved, u.fetched, u.requesters
                );
                println!("approvals          {}", u.approvals);
                println!("distinct subjects  {}", u.distinct_subjects);
                println!(
                    "disclosures        {} ({} rows released)",
                    u.disclosures, u.rows_released
                );
                if let (Some(first), Some(last)) = (&u.first_request, &u.last_request) {
                    println!("first / last       {first} / {last}");
                }
                Ok(())
            }
        }
    }
    .await;
    gateway.close().await?;
    result
}
