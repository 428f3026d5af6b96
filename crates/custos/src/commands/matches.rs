//! `custos match`: private set intersection with another agency's Custos,
//! and the job's record (`show`) and confirmation (`confirm`).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use custos_broker::MatchJob;
use custos_broker::{MatchReport, MatchRequest};
use serde_json::Value;
use zeroize::Zeroizing;

use super::gateway::Gateway;
use super::human_count;

/// `custos match --agreement A --peer URL --dataset D --key COLUMN`.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_long_help = "How it works:\n  Both agencies apply the same agreement id, each with a `match` grant on its own dataset\n  and `[grants.match]` terms (reveal, pad_to). This side hashes its keys (digits only, so\n  123-45-6789 = 123456789) to Ristretto255 under a tag bound to a fresh job id, blinds them\n  with a secret used for this job only, pads to pad_to with random points and shuffles. The\n  peer does the same; each re-blinds the other's points. Equal doubly-blinded points are\n  equal keys. This side learns the matched subjects as tokens of the agreement (or only the\n  count); the peer learns only the count. Both ledgers record the job. Results are\n  UNVERIFIED until an approver confirms them (`custos match confirm JOB`): take no adverse\n  action on an unverified match.\n\nExample:\n  CUSTOS_TOKEN=... CUSTOS_PEER_TOKEN=... custos match --agreement ssa-death-match-2026 \\\n      --peer https://custos.vitalstats.example.gov --dataset benefits --key ssn --out matches.csv\n\nEnvironment:\n  CUSTOS_PEER_TOKEN  the token the peer's custodian issued to your organisation (never a flag)"
)]
pub struct MatchArgs {
    #[command(subcommand)]
    action: Option<MatchAction>,
    /// The agreement (both sides hold a copy with this id).
    #[arg(long, required = true)]
    agreement: Option<String>,
    /// The peer Custos's URL (https://, or http:// on this machine).
    #[arg(long, required = true, value_name = "URL")]
    peer: Option<String>,
    /// This side's dataset.
    #[arg(long, required = true)]
    dataset: Option<String>,
    /// The key column (the dataset's `subject_id`, or an `identifier`), e.g. ssn.
    #[arg(long, required = true, value_name = "COLUMN")]
    key: Option<String>,
    /// Write the matched tokens to this CSV file (must not exist).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print the report (with the tokens) as JSON.
    #[arg(long)]
    json: bool,
}

/// `custos match show|confirm`.
#[derive(Debug, Subcommand)]
enum MatchAction {
    /// Show a match job recorded on this home (either side) and its tokens.
    Show {
        /// The job id (`m_…`).
        job: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Confirm an unverified result (role `approver`, not the one who ran it).
    Confirm {
        /// The job id (`m_…`).
        job: String,
    },
}

/// The peer's token, from `CUSTOS_PEER_TOKEN`.
fn peer_token() -> anyhow::Result<Zeroizing<String>> {
    std::env::var("CUSTOS_PEER_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(Zeroizing::new)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "set CUSTOS_PEER_TOKEN to the token the peer's custodian issued to your organisation"
            )
        })
}

/// Runs `custos match`.
pub async fn run(home: &Path, server: Option<&str>, args: MatchArgs) -> anyhow::Result<()> {
    let gateway = Gateway::connect(home, server).await?;
    let result = match args.action {
        Some(MatchAction::Show { job, json }) => show(&gateway, &job, json).await,
        Some(MatchAction::Confirm { job }) => {
            let job = gateway.confirm_match(&job).await?;
            println!(
                "Confirmed match job {} ({} matches under `{}`): it may now be acted on.",
                job.job_id,
                job.match_count.map_or_else(|| "no".into(), human_count),
                job.agreement_id
            );
            Ok(())
        }
        None => run_match(&gateway, args).await,
    };
    gateway.close().await?;
    result
}

async fn run_match(gateway: &Gateway, args: MatchArgs) -> anyhow::Result<()> {
    let (Some(agreement), Some(peer), Some(dataset), Some(key)) =
        (args.agreement, args.peer, args.dataset, args.key)
    else {
        anyhow::bail!("give --agreement, --peer, --dataset and --key");
    };
    if let Some(out) = &args.out
        && out.exists()
    {
        anyhow::bail!("`{}` exists already; choose a new file", out.display());
    }
    let report = gateway
        .run_match(
            MatchRequest {
                agreement: &agreement,
                dataset: &dataset,
                key: &key,
            },
            &peer,
            peer_token()?,
        )
        .await?;
    if let Some(out) = &args.out {
        write_tokens(out, &report.tokens)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, args.out.as_deref());
    }
    Ok(())
}

fn write_tokens(out: &Path, tokens: &[String]) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|e| anyhow::anyhow!("cannot create `{}`: {e}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "token")?;
    for t in tokens {
        writeln!(w, "{t}")?;
    }
    w.into_inner()
        .map_err(|e| anyhow::anyhow!("writing `{}`: {e}", out.display()))?
        .sync_all()?;
    Ok(())
}

/// A few lines about a finished match.
pub fn print_report(r: &MatchReport, out: Option<&Path>) {
    println!(
        "Match job {} with {} under `{}`: {} of this side's `{}` keys matched. UNVERIFIED: confirm before any action (custos match confirm {}).",
        r.job_id,
        r.peer,
        r.agreement,
        human_count(r.matches),
        r.key,
        r.job_id
    );
    println!(
        "  each side showed a padded set: this side {} points, the peer {}; the peer saw {} matches{}",
        human_count(r.points_sent),
        human_count(r.points_received),
        human_count(r.peer_count),
        if r.peer_count == r.matches {
            ""
        } else {
            " (DIFFERENT: one side misbehaved; do not rely on this job)"
        }
    );
    match (r.reveal, out) {
        (custos_policy::Reveal::Count, _) => {
            println!("  the agreement reveals only the count: no tokens");
        }
        (_, Some(path)) => println!(
            "  the matched subjects' tokens (of agreement `{}`) are in `{}`",
            r.agreement,
            path.display()
        ),
        (_, None) => println!(
            "  {} tokens kept with the job: `custos match show {}` lists them",
            human_count(r.tokens.len() as u64),
            r.job_id
        ),
    }
    println!(
        "  ledger entry #{} records the result with a commitment to each matched subject",
        r.ledger_index
    );
}

async fn show(gateway: &Gateway, job: &str, json: bool) -> anyhow::Result<()> {
    let (job, tokens) = gateway.match_result(job).await?;
    if json {
        let value: Value = serde_json::json!({ "job": job, "tokens": tokens });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    print_job(&job);
    for t in &tokens {
        println!("  {t}");
    }
    Ok(())
}

fn print_job(job: &MatchJob) {
    println!(
        "{} ({:?} side) under `{}` v{} on `{}` with {}: {:?}, reveal {}, {} matches{}",
        job.job_id,
        job.side,
        job.agreement_id,
        job.agreement_version,
        job.dataset,
        job.peer,
        job.state,
        job.reveal,
        job.match_count.map_or_else(|| "no".into(), human_count),
        job.confirmed_by
            .as_deref()
            .map(|by| format!(", confirmed by {by}"))
            .unwrap_or_default()
    );
}
