//! `custos principal add|list|revoke`.

use std::path::{Path, PathBuf};

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
        /// A TOML file of the principal's own identifying facts, for the
        /// unusual-browsing rules (see `principal update --help`).
        #[arg(long, value_name = "FILE")]
        facts: Option<PathBuf>,
    },
    /// Set (replace) a principal's own identifying facts, which the
    /// unusual-browsing rules compare every subject they look up with.
    ///
    /// The file is TOML, every field optional:
    ///
    ///   own_id = "123-45-6789"        # their own subject id
    ///   surname = "Rivera"
    ///   address = "12 Elm St, Springfield"
    ///   zip = "62704"
    ///   household = ["987-65-4321"]   # ids of the people they live with
    ///   colleagues = ["111-22-3333"]
    ///
    /// The facts are sealed under the master key and never shown back; the
    /// ledger records only which kinds were set. They come from a file, not
    /// arguments, so that no identifier lands in shell history or the
    /// process list. See docs/browsing.md.
    #[command(verbatim_doc_comment)]
    Update {
        /// The principal's name.
        name: String,
        /// The facts file.
        #[arg(long, value_name = "FILE")]
        facts: PathBuf,
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
    gateway.close().await?;
    result
}

async fn run_with(gateway: &Gateway, cmd: PrincipalCommand) -> anyhow::Result<()> {
    match cmd {
        PrincipalCommand::Add {
            name,
            org,
            roles,
            facts,
        } => {
            // Read before anything is created: a bad file creates nothing.
            let facts = facts.as_deref().map(read_facts).transpose()?;
            let (p, token) = gateway.add_principal(&name, &org, &roles).await?;
            if let Some(facts) = &facts {
                let set = gateway.set_principal_facts(&name, facts).await?;
                eprintln!("Set its facts ({}).", set.kinds.join(", "));
            }
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
        PrincipalCommand::Update { name, facts } => {
            let facts = read_facts(&facts)?;
            let set = gateway.set_principal_facts(&name, &facts).await?;
            println!(
                "Set the facts of `{name}` ({}): {}; ledger entry {}.",
                set.principal,
                if set.kinds.is_empty() {
                    "none".to_owned()
                } else {
                    set.kinds.join(", ")
                },
                set.ledger_index
            );
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

/// Reads a facts file (TOML), naming the file and the field on error.
fn read_facts(path: &Path) -> anyhow::Result<custos_broker::PrincipalFacts> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the facts file `{}`: {e}", path.display()))?;
    // The parser's message may quote a value (an identifier): say where,
    // not what.
    let facts: custos_broker::PrincipalFacts = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map_or(0, |s| text[..s.start].matches('\n').count() + 1);
        anyhow::anyhow!(
            "the facts file `{}` is not valid at line {line}: use the string fields own_id, surname, address and zip, and the lists household and colleagues (see `custos principal update --help`)",
            path.display()
        )
    })?;
    facts
        .validate()
        .map_err(|e| anyhow::anyhow!("the facts file `{}` is not valid: {e}", path.display()))?;
    Ok(facts)
}
