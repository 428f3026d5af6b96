//! `custos init`.

use std::path::{Path, PathBuf};

use clap::Args;
use custos_broker::MasterKeySource;
use custos_broker::{Custos, LedgerKeySource};

use super::{ledger_key_from_env, master_key_from_env};

/// Arguments of `custos init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The ledger's checkpoint origin and signing key name, e.g.
    /// `tax.example.gov/custos`. Default: `custos.local/<random>`.
    #[arg(long, value_name = "ORIGIN")]
    origin: Option<String>,
    /// Where to write the ledger signing key (mode 0600), outside the
    /// home: whoever holds the data's master key must not be able to
    /// re-sign the ledger. Default: HOME.ledger.key beside the home; keep
    /// it on other storage, or give CUSTOS_LEDGER_KEY (64 hex digits)
    /// instead to keep it off disk.
    #[arg(long, value_name = "FILE")]
    ledger_key_file: Option<PathBuf>,
}

/// Creates the home and says what was made (never the key itself).
pub async fn run(home: &Path, args: InitArgs) -> anyhow::Result<()> {
    let source = match master_key_from_env()? {
        Some(key) => MasterKeySource::External(key),
        None => MasterKeySource::GenerateFile,
    };
    let ledger_key = match (ledger_key_from_env()?.seed, args.ledger_key_file) {
        (Some(_), Some(_)) => {
            anyhow::bail!("give CUSTOS_LEDGER_KEY or --ledger-key-file, not both")
        }
        (Some(seed), None) => LedgerKeySource::External(seed),
        (None, Some(file)) => LedgerKeySource::File(file),
        (None, None) => LedgerKeySource::beside(home),
    };
    let (custos, report) = Custos::init_with(home, source, args.origin, ledger_key).await?;
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
        "  ledger key:   Ed25519, public key {}",
        report.public_key_hex
    );
    match &report.ledger_key_file {
        Some(file) => println!(
            "                in {} (mode 0600), outside the home: keep it apart from master.key and its backups",
            file.display()
        ),
        None => println!(
            "                from CUSTOS_LEDGER_KEY (not written to disk); set it for every command"
        ),
    }
    println!("  metadata:     custos.db (SQLite)");
    println!("  ledger:       ledger/ (entry 0 records this init; `custos ledger show`)");
    println!("Next: `custos dataset ingest --schema FILE.schema.toml --name NAME FILE.csv`");
    Ok(())
}
