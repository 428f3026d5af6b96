//! `custos alerts list|show|resolve|scan`: unusual-browsing alerts for
//! overseers (docs/browsing.md).

use std::path::Path;

use clap::Subcommand;
use custos_broker::{Alert, AlertState};

use super::gateway::Gateway;

/// Alert commands. They act as the overseer in CUSTOS_TOKEN.
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// List alerts, highest score first (open ones unless told otherwise).
    ///
    /// Locally, detection first runs on every ledger entry it has not read,
    /// so the list is current; a server detects on its own every second.
    List {
        /// Only resolved alerts.
        #[arg(long, conflicts_with = "all")]
        resolved: bool,
        /// Open and resolved alerts.
        #[arg(long)]
        all: bool,
        /// Start at this position (the list is 200 a page).
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Print JSON for scripts: every alert from --offset on, as an array.
        #[arg(long)]
        json: bool,
    },
    /// Show one alert: the rules that fired and why, the ledger entries it
    /// rests on (look them up with `custos ledger show INDEX`), and how it
    /// was resolved.
    Show {
        /// The alert's id (`alr_…`).
        id: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Resolve an open alert with what was found (ledgered; the reason is
    /// sealed). Another overseer must resolve an alert about you.
    Resolve {
        /// The alert's id.
        id: String,
        /// What was found (at least 10 characters).
        #[arg(long)]
        reason: String,
    },
    /// Run detection now: the rules on every ledger entry not yet read, then
    /// each principal's day against its peers. Run it from cron when no
    /// server runs.
    Scan,
}

/// Runs an alerts command.
pub async fn run(home: &Path, server: Option<&str>, cmd: AlertsCommand) -> anyhow::Result<()> {
    let gateway = Gateway::connect(home, server).await?;
    let result = run_with(&gateway, cmd).await;
    gateway.close().await?;
    result
}

async fn run_with(gateway: &Gateway, cmd: AlertsCommand) -> anyhow::Result<()> {
    match cmd {
        AlertsCommand::List {
            resolved,
            all,
            offset,
            json,
        } => {
            let state = match (resolved, all) {
                (_, true) => None,
                (true, _) => Some(AlertState::Resolved),
                _ => Some(AlertState::Open),
            };
            let page = gateway.alerts(state, offset).await?;
            if json {
                let mut alerts = page.alerts;
                let mut next = offset + alerts.len() as u64;
                while next < page.total {
                    let more = gateway.alerts(state, next).await?.alerts;
                    if more.is_empty() {
                        break;
                    }
                    next += more.len() as u64;
                    alerts.extend(more);
                }
                println!("{}", serde_json::to_string_pretty(&alerts)?);
                return Ok(());
            }
            let alerts = page.alerts;
            if alerts.is_empty() {
                println!("No alerts.");
            } else {
                println!(
                    "{:<21} {:>5} {:<9} {:<18} {:<20} rules",
                    "alert", "score", "state", "principal", "agreement"
                );
                for a in &alerts {
                    println!(
                        "{:<21} {:>5.2} {:<9} {:<18} {:<20} {}",
                        a.id,
                        a.score,
                        a.state.as_str(),
                        a.principal,
                        a.agreement.as_deref().unwrap_or("-"),
                        rule_names(a)
                    );
                }
                let shown = offset + alerts.len() as u64;
                if shown < page.total {
                    println!(
                        "Showing {}-{shown} of {}, highest score first; see more with --offset {shown}.",
                        offset + 1,
                        page.total
                    );
                }
            }
        }
        AlertsCommand::Show { id, json } => {
            let a = gateway.alert(&id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                print_alert(&a);
            }
        }
        AlertsCommand::Resolve { id, reason } => {
            let a = gateway.resolve_alert(&id, &reason).await?;
            println!(
                "Resolved {} (ledger entry {}).",
                a.id,
                a.resolve_ledger_index.unwrap_or_default()
            );
        }
        AlertsCommand::Scan => {
            let run = gateway.run_detection().await?;
            println!(
                "Read {} ledger entries: {} alerts raised, {} updated, {} entries could not be checked (each raised a detection_failed alert).",
                run.entries_read, run.raised, run.updated, run.failures
            );
        }
    }
    Ok(())
}

fn rule_names(a: &Alert) -> String {
    a.rules
        .iter()
        .map(|r| r.rule.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn print_alert(a: &Alert) {
    println!("alert      {}", a.id);
    println!("state      {}", a.state.as_str());
    println!("score      {:.2}", a.score);
    println!("principal  {}", a.principal);
    if let Some(ag) = &a.agreement {
        println!("agreement  {ag}");
    }
    if let Some(r) = &a.request {
        println!("request    {r}");
    }
    println!(
        "raised     {} ({})",
        a.raised_at,
        a.digest_index.map_or_else(
            || "published with the next alert digest".to_owned(),
            |i| format!("published in the alert digest at ledger entry {i}")
        )
    );
    println!("rules:");
    for r in &a.rules {
        println!("  {:<18} {:.2}  {}", r.rule, r.weight, r.detail);
    }
    let entries: Vec<String> = a.rests_on.iter().map(u64::to_string).collect();
    println!("rests on ledger entries {}", entries.join(", "));
    if let (Some(by), Some(at)) = (&a.resolved_by, &a.resolved_at) {
        println!(
            "resolved   {at} by {by} (ledger entry {})",
            a.resolve_ledger_index.unwrap_or_default()
        );
        if let Some(reason) = &a.resolution {
            println!("reason     {reason}");
        }
    }
}
