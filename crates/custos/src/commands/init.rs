//! `custos init`.

use std::path::Path;

use clap::Args;
use custos_broker::Custos;
use custos_broker::MasterKeySource;

use super::master_key_from_env;

/// Arguments of `custos init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The ledger's checkpoint origin and signing key name, e.g.
    /// `tax.example.gov/custos`. Default: `custos.local/<random>`.
    #[arg(long, value_name = "ORIGIN")]
    origin: Option<String>,
}

/// Creates the home and says what was made (never the key itself).
pub async fn run(home: &Path, args: InitArgs) -> anyhow::Result<()> {
    let source = match master_key_from_env()? {
        Some(key) => MasterKeySource::External(key),
        None => MasterKeySource::GenerateFile,
    };
    let (custos, report) = Custos::init(home, source, args.origin).await?;
    custos.close()?;
    println!("Created Custos home `{}`", report.root.display());
    if report.master_key_file {
        println!(
            "  master key:   generated into master.key (mode 0600); back it up, it cannot be recovered"
        );
    } else {
        println!(
            "  master key:   from CUSTOS_MASTER_KEY (not written to disk); set it for every command"
        );
    }
    println!("  origin:       {}", report.origin);
    println!(
        "  signing key:  Ed25519, public key {}",
        report.public_key_hex
    );
    println!("  metadata:     custos.db (SQLite)");
    println!("  ledger:       ledger/ (entry 0 records this init; `custos ledger show`)");
    println!("Next: `custos dataset ingest --schema FILE.schema.toml --name NAME FILE.csv`");
    Ok(())
}
