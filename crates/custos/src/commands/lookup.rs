//! `custos lookup`, `custos lookup show|fetch`, `custos approve`,
//! `custos subject protect`: identified look-ups with two-person approval.

use std::path::Path;

use clap::{Args, Subcommand};
use custos_broker::{LookupRequest, LookupTicket, Released};

use super::gateway::Gateway;

/// `custos lookup`: file a request, or work with one.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LookupArgs {
    #[command(subcommand)]
    command: Option<LookupCommand>,
    #[command(flatten)]
    request: RequestArgs,
}

/// The request a requester files.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The agreement the look-up runs under (its grant must allow mode `identified`).
    #[arg(long, required = true)]
    agreement: Option<String>,
    /// The dataset to look in.
    #[arg(long, required = true)]
    dataset: Option<String>,
    /// The subject's id as stored (e.g. a TIN like 666-12-3456).
    #[arg(long, required = true)]
    subject: Option<String>,
    /// Why this person's records are needed (at least 10 characters; kept
    /// sealed in the catalogue, only its hash goes to the ledger).
    #[arg(long, required = true)]
    justification: Option<String>,
    /// Only these columns (comma-separated; default: every granted column).
    #[arg(long, value_delimiter = ',')]
    columns: Option<Vec<String>>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

/// Working with an existing request.
#[derive(Debug, Subcommand)]
pub enum LookupCommand {
    /// Show a request: state, approvals, subject and justification
    /// (requester, approvers, admins and overseers; the viewing is ledgered).
    Show {
        /// The request id (`req_…`).
        id: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Fetch an approved request's records (requester only, once).
    ///
    /// Prints only the granted columns of the rows inside the grant's row
    /// scope. The release is written to the ledger, durably, before any
    /// row is printed, and goes into the subject's accounting of disclosures.
    Fetch {
        /// The request id (`req_…`).
        id: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Decline a pending request with a reason (approvers of the custodian,
    /// like an approval). The requester sees the reason; the ledger keeps a
    /// keyed digest of it. A declined request can be neither approved nor
    /// fetched.
    Decline {
        /// The request id (`req_…`).
        id: String,
        /// Why (10 to 2,000 characters).
        #[arg(long)]
        reason: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The pending requests you may judge, oldest first, with purpose,
    /// legal authority and justification (each viewing is ledgered).
    Queue {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// `custos approve REQ`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The request id (`req_…`). See it first with `custos lookup show REQ`.
    id: String,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

/// `custos subject …`: custodian actions on a subject.
#[derive(Debug, Subcommand)]
pub enum SubjectCommand {
    /// Flag a subject as protected (admins). Extracts and matches leave the
    /// person out from then on (their rows are dropped before k-anonymity
    /// classes are counted; their keys take no part in a match). Look-ups
    /// are refused only by a guard rule in HOME/guards.cedar that reads
    /// `context.subject_protected`, e.g.
    /// `forbid (principal, action, resource) when { context.subject_protected };`
    Protect {
        /// The subject's id.
        id: String,
    },
}

async fn with_gateway<F, T>(home: &Path, server: Option<&str>, f: F) -> anyhow::Result<T>
where
    F: AsyncFnOnce(&Gateway) -> anyhow::Result<T>,
{
    let gateway = Gateway::connect(home, server).await?;
    let result = f(&gateway).await;
    gateway.close().await?;
    result
}

/// Runs `custos lookup …`.
pub async fn run(home: &Path, server: Option<&str>, args: LookupArgs) -> anyhow::Result<()> {
    with_gateway(home, server, async |gateway| match args.command {
        Some(LookupCommand::Show { id, json }) => {
            let d = gateway.lookup_details(&id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print_ticket(&d.ticket);
                let withheld = "(shown only to the requester and the custodian's approvers)";
                println!("subject        {}", d.subject.as_deref().unwrap_or(withheld));
                println!(
                    "justification  {}",
                    d.justification.as_deref().unwrap_or(withheld)
                );
                for a in &d.approvers {
                    println!(
                        "approved by    {} at {} (ledger entry {})",
                        a.approver, a.approved_at, a.ledger_index
                    );
                }
                if let Some(declined) = &d.declined {
                    println!(
                        "declined by    {} at {} (ledger entry {}): {}",
                        declined.by,
                        declined.at,
                        declined.ledger_index,
                        declined.reason.as_deref().unwrap_or(withheld)
                    );
                }
            }
            Ok(())
        }
        Some(LookupCommand::Decline { id, reason, json }) => {
            let ticket = gateway.decline_lookup(&id, &reason).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ticket)?);
            } else {
                println!("declined {}: it can no longer be approved or fetched", ticket.id);
            }
            Ok(())
        }
        Some(LookupCommand::Queue { json }) => {
            let items = gateway.approval_queue().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else if items.is_empty() {
                println!("nothing is waiting for you");
            } else {
                for item in &items {
                    println!(
                        "{}  {} v{}  by {}  {} of {} approvals{}\n  purpose        {}\n  authority      {}\n  justification  {}",
                        item.ticket.id,
                        item.ticket.agreement,
                        item.ticket.agreement_version,
                        item.ticket.requester,
                        item.ticket.approvals,
                        item.ticket.approvals_required,
                        if item.approved_by_caller { " (you approved)" } else { "" },
                        item.purpose,
                        item.legal_authority,
                        item.justification
                    );
                }
                println!("\nApprove with `custos approve REQ`, or `custos lookup decline REQ --reason …`.");
            }
            Ok(())
        }
        Some(LookupCommand::Fetch { id, json }) => {
            let released = gateway.fetch_lookup(&id).await?;
            print_released(&released, json)
        }
        None => {
            let r = args.request;
            let (Some(agreement), Some(dataset), Some(subject), Some(justification)) =
                (r.agreement, r.dataset, r.subject, r.justification)
            else {
                anyhow::bail!("give --agreement, --dataset, --subject and --justification");
            };
            let ticket = gateway
                .request_lookup(LookupRequest {
                        agreement: &agreement,
                        dataset: &dataset,
                        subject: &subject,
                        justification: &justification,
                        columns: r.columns.as_deref(),
                })
                .await?;
            if r.json {
                println!("{}", serde_json::to_string_pretty(&ticket)?);
            } else {
                print_ticket(&ticket);
                println!(
                    "\nNext: {} approver(s) other than you run `custos approve {}`;\nthen fetch with `custos lookup fetch {}`.",
                    ticket.approvals_required, ticket.id, ticket.id
                );
            }
            Ok(())
        }
    })
    .await
}

/// Runs `custos approve REQ`.
pub async fn approve(home: &Path, server: Option<&str>, args: ApproveArgs) -> anyhow::Result<()> {
    with_gateway(home, server, async |gateway| {
        let ticket = gateway.approve_lookup(&args.id).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&ticket)?);
        } else {
            println!(
                "approved {}: {} of {} approvals, now {}",
                ticket.id,
                ticket.approvals,
                ticket.approvals_required,
                ticket.state.as_str()
            );
        }
        Ok(())
    })
    .await
}

/// Runs `custos subject …`.
pub async fn subject(home: &Path, server: Option<&str>, cmd: SubjectCommand) -> anyhow::Result<()> {
    with_gateway(home, server, async |gateway| match cmd {
        SubjectCommand::Protect { id } => {
            gateway.protect_subject(&id).await?;
            println!(
                "the subject is now protected (recorded in the ledger): extracts and matches leave them out from now on; look-ups of them are refused only by a guard rule in HOME/guards.cedar that reads `context.subject_protected`"
            );
            Ok(())
        }
    })
    .await
}

fn print_ticket(t: &LookupTicket) {
    println!("request        {}", t.id);
    println!("state          {}", t.state.as_str());
    println!(
        "agreement      {} v{} on dataset {}",
        t.agreement, t.agreement_version, t.dataset
    );
    println!("columns        {}", t.columns.join(", "));
    println!("approvals      {} of {}", t.approvals, t.approvals_required);
    println!("requested by   {} at {}", t.requester, t.created_at);
    println!("ledger entry   {}", t.ledger_index);
}

/// Prints released rows as an aligned table (or JSON objects).
pub fn print_released(r: &Released, json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<serde_json::Map<String, serde_json::Value>> = r
            .rows
            .iter()
            .map(|row| {
                r.columns
                    .iter()
                    .zip(row)
                    .map(|(c, v)| {
                        (
                            c.clone(),
                            v.clone()
                                .map_or(serde_json::Value::Null, serde_json::Value::String),
                        )
                    })
                    .collect()
            })
            .collect();
        let out = serde_json::json!({
            "request_id": r.request_id,
            "ledger_index": r.ledger_index,
            "columns": r.columns,
            "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if r.rows.is_empty() {
        println!(
            "no records in scope for this subject (the fetch is recorded as ledger entry {})",
            r.ledger_index
        );
        return Ok(());
    }
    print!("{}", super::table(&r.columns, &r.rows));
    println!(
        "{} row(s) released; recorded as ledger entry {}",
        r.rows.len(),
        r.ledger_index
    );
    Ok(())
}
