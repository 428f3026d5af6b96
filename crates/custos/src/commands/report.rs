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

/// Runs a report command.
pub async fn run(home: &Path, server: Option<&str>, cmd: ReportCommand) -> anyhow::Result<()> {
    let gateway = Gateway::connect(home, server).await?;
    let result = async {
        match cmd {
            ReportCommand::Subject { id, json } => {
                let report = gateway.subject_report(&id).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
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
    gateway.close()?;
    result
}
