//! `custos principal add|list|revoke`.

use std::path::Path;

use clap::Subcommand;
use custos_model::Role;

use super::gateway::Gateway;

/// Principal commands. They act as the principal in CUSTOS_TOKEN (an admin;
/// overseers may list). On a home without principals, `add` creates the
/// first admin without a token: the one bootstrap exception.
#[derive(Debug, Subcommand)]
pub enum PrincipalCommand {
    /// Create a principal and print its API token (shown once, stored only as a hash).
    Add {
        /// Unique name: 1-64 characters of a-z, 0-9, ., _ and -.
        name: String,
        /// The principal's organisation (e.g. `IRS`, `TIGTA`).
        #[arg(long)]
        org: String,
        /// A role: admin, approver, requester or overseer (repeat for several).
        #[arg(long = "role", required = true, value_parser = parse_role)]
        roles: Vec<Role>,
    },
    /// List principals (never their tokens).
    List {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a principal's token; it stops working at once.
    Revoke {
        /// The principal's name.
        name: String,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
}

/// Runs a principal command.
pub async fn run(home: &Path, server: Option<&str>, cmd: PrincipalCommand) -> anyhow::Result<()> {
    let gateway = Gateway::connect(home, server).await?;
    let result = run_with(&gateway, cmd).await;
    gateway.close()?;
    result
}

async fn run_with(gateway: &Gateway, cmd: PrincipalCommand) -> anyhow::Result<()> {
    match cmd {
        PrincipalCommand::Add { name, org, roles } => {
            let (p, token) = gateway.add_principal(&name, &org, &roles).await?;
            let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
            eprintln!(
                "Created principal `{}` ({}) of {} with roles {}.",
                p.name,
                p.id,
                p.org,
                roles.join(", ")
            );
            eprintln!("Its API token follows; it is shown only now. Hand it over securely;");
            eprintln!("the holder sets CUSTOS_TOKEN to it.");
            println!("{}", token.as_str());
        }
        PrincipalCommand::List { json } => {
            let all = gateway.principals().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!(
                    "{:<20} {:<18} {:<12} {:<28} status",
                    "name", "id", "org", "roles"
                );
                for p in all {
                    let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
                    let status = p
                        .revoked_at
                        .as_deref()
                        .map_or("active".to_owned(), |t| format!("revoked {t}"));
                    println!(
                        "{:<20} {:<18} {:<12} {:<28} {status}",
                        p.name,
                        p.id,
                        p.org,
                        roles.join(",")
                    );
                }
            }
        }
        PrincipalCommand::Revoke { name } => {
            let p = gateway.revoke_principal(&name).await?;
            println!(
                "Revoked `{}` ({}): its token no longer works.",
                p.name, p.id
            );
        }
    }
    Ok(())
}
