//! `custos agreement apply|list|show|suspend|resume|revoke`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use custos_broker::AgreementStatus;

use super::gateway::Gateway;

/// Agreement commands (see docs/agreements.md). Changes need an admin.
#[derive(Debug, Subcommand)]
pub enum AgreementCommand {
    /// Validate an agreement (TOML) against the datasets and store it as a new version.
    ///
    /// The first version of an id makes the agreement active; later versions
    /// keep its state. Old versions are kept. The version's SHA-256 is
    /// written to the ledger before it takes effect.
    Apply {
        /// The agreement file.
        file: PathBuf,
    },
    /// List agreements: latest version and state.
    List {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show an agreement's text (latest version, or --at N) and its history.
    Show {
        /// The agreement id.
        id: String,
        /// A specific version number.
        #[arg(long, value_name = "VERSION")]
        at: Option<u32>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Suspend an agreement: it grants nothing until resumed.
    Suspend {
        /// The agreement id.
        id: String,
        /// Why (kept in the catalogue, not in the public ledger).
        #[arg(long)]
        reason: String,
    },
    /// Resume a suspended agreement.
    Resume {
        /// The agreement id.
        id: String,
    },
    /// Revoke an agreement for good: it grants nothing and takes no new versions.
    Revoke {
        /// The agreement id.
        id: String,
        /// Why (kept in the catalogue, not in the public ledger).
        #[arg(long)]
        reason: String,
    },
}

/// Runs an agreement command.
pub async fn run(home: &Path, server: Option<&str>, cmd: AgreementCommand) -> anyhow::Result<()> {
    let gateway = Gateway::connect(home, server).await?;
    let result = run_with(&gateway, cmd).await;
    gateway.close().await?;
    result
}

async fn run_with(gateway: &Gateway, cmd: AgreementCommand) -> anyhow::Result<()> {
    match cmd {
        AgreementCommand::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading `{}`", file.display()))?;
            let (version, agreement) = gateway
                .apply_agreement(&text)
                .await
                .with_context(|| format!("`{}`", file.display()))?;
            println!(
                "Applied agreement `{}` version {} ({} grants, valid {} to {}); sha256 {}",
                version.id,
                version.version,
                agreement.grants.len(),
                agreement.valid_from,
                agreement.valid_until,
                version.sha256
            );
            let today = chrono::Utc::now().date_naive();
            if agreement.valid_from > today {
                eprintln!(
                    "Note: `{}` is not in force until {}: requests under it are refused until then.",
                    version.id, agreement.valid_from
                );
            }
        }
        AgreementCommand::List { json } => {
            let all = gateway.agreements().await?;
            if json {
                let list: Vec<serde_json::Value> = all
                    .iter()
                    .map(|(v, s)| {
                        serde_json::json!({"id": v.id, "version": v.version, "sha256": v.sha256, "state": s.state, "applied_at": v.applied_at})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if all.is_empty() {
                println!("No agreements yet. Apply one with `custos agreement apply FILE.toml`.");
            } else {
                println!("{:<32} {:>7} {:<10} applied", "id", "version", "state");
                for (v, s) in all {
                    println!(
                        "{:<32} {:>7} {:<10} {}",
                        v.id, v.version, s.state, v.applied_at
                    );
                }
            }
        }
        AgreementCommand::Show { id, at, json } => {
            let (versions, state) = gateway.agreement(&id).await?;
            let chosen = match at {
                Some(n) => versions
                    .iter()
                    .find(|v| v.version == n)
                    .ok_or_else(|| anyhow::anyhow!("agreement `{id}` has no version {n}"))?,
                None => versions
                    .last()
                    .ok_or_else(|| anyhow::anyhow!("agreement `{id}` has no versions"))?,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"version": chosen, "state": state, "versions": versions.len()})
                    )?
                );
            } else {
                println!(
                    "Agreement `{id}` version {} of {} ({}), sha256 {}",
                    chosen.version,
                    versions.len(),
                    state.state,
                    chosen.sha256
                );
                if let Some(reason) = &state.reason {
                    println!("  {} on {}: {reason}", state.state, state.changed_at);
                }
                println!();
                print!("{}", chosen.toml);
            }
        }
        AgreementCommand::Suspend { id, reason } => {
            gateway
                .set_agreement_status(&id, AgreementStatus::Suspended, Some(&reason))
                .await?;
            println!("Suspended `{id}`: it grants nothing until resumed.");
        }
        AgreementCommand::Resume { id } => {
            gateway
                .set_agreement_status(&id, AgreementStatus::Active, None)
                .await?;
            println!("Resumed `{id}`.");
        }
        AgreementCommand::Revoke { id, reason } => {
            gateway
                .set_agreement_status(&id, AgreementStatus::Revoked, Some(&reason))
                .await?;
            println!("Revoked `{id}` for good.");
        }
    }
    Ok(())
}
