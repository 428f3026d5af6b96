//! `custos init`.

use std::path::{Path, PathBuf};

use clap::Args;
use custos_broker::MasterKeySource;
use custos_broker::{CatalogueLocation, Custos, LedgerKeySource, ObjectStoreLocation, Placement};

use super::keys::{KeySourceArgs, print_shares, required_hsm_pin};
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
    /// Where the master key lives: by default HOME/master.key (or
    /// CUSTOS_MASTER_KEY if set); with --shares, a quorum of people; with
    /// --hsm, a hardware security module. See docs/keys.md.
    #[command(flatten)]
    key: KeySourceArgs,
    /// Keep the catalogue (settings, principals, agreements, requests,
    /// budgets, the accounting) in PostgreSQL instead of HOME/custos.db,
    /// e.g. `postgres://custos@db.internal:5432/custos?sslmode=verify-full`
    /// (a server other than this machine needs verified TLS). The
    /// database must be empty; the password comes from PGPASSWORD or
    /// ~/.pgpass, never from the URL. See docs/deploy.md.
    #[arg(long, value_name = "URL")]
    catalogue: Option<String>,
    /// Keep the dataset files (encrypted Parquet) in S3-compatible object
    /// storage instead of HOME/datasets, e.g.
    /// `s3://agency-data/custos/prod?region=us-gov-west-1`, or
    /// `s3://bucket/prefix?endpoint=https://minio.internal:9000` for
    /// another S3-compatible server (plain http:// only on this machine).
    /// The prefix must be empty: one per home. Credentials come from
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the machine's
    /// instance role), never from the URL. With --catalogue too, the
    /// ledger is shared by every server of the home: its journal in
    /// PostgreSQL, its tiles and checkpoints under `ledger/` in the
    /// object store. See docs/deploy.md.
    #[arg(long, value_name = "URL")]
    object_store: Option<String>,
}

/// Creates the home and says what was made (never the key itself).
pub async fn run(home: &Path, args: InitArgs) -> anyhow::Result<()> {
    let from_env = master_key_from_env()?;
    let source = match (
        args.key.shares,
        args.key.threshold,
        args.key.hsm,
        args.key.hsm_token,
    ) {
        (Some(_), _, _, _) | (_, _, Some(_), _) if from_env.is_some() => {
            anyhow::bail!("CUSTOS_MASTER_KEY is set: unset it to use --shares or --hsm")
        }
        (Some(count), Some(threshold), None, None) => MasterKeySource::Shares { threshold, count },
        (None, None, Some(module), Some(token)) => {
            let pin = required_hsm_pin(&token)?;
            MasterKeySource::Hsm {
                config: custos_broker::HsmConfig::new(module, token),
                pin,
            }
        }
        _ => match from_env {
            Some(key) => MasterKeySource::External(key),
            None => MasterKeySource::GenerateFile,
        },
    };
    let ledger_key = match (ledger_key_from_env()?.seed, args.ledger_key_file) {
        (Some(_), Some(_)) => {
            anyhow::bail!("give CUSTOS_LEDGER_KEY or --ledger-key-file, not both")
        }
        (Some(seed), None) => LedgerKeySource::External(seed),
        (None, Some(file)) => LedgerKeySource::File(file),
        (None, None) => LedgerKeySource::beside(home),
    };
    let placement = Placement {
        catalogue: match &args.catalogue {
            Some(url) => CatalogueLocation::postgres(url)?,
            None => CatalogueLocation::Embedded,
        },
        objects: args
            .object_store
            .as_deref()
            .map(ObjectStoreLocation::parse)
            .transpose()?,
    };
    let (custos, report) =
        Custos::init_with(home, source, args.origin, ledger_key, placement).await?;
    custos.close()?;
    println!("Created Custos home `{}`", report.root.display());
    if let Some(hsm) = &report.hsm {
        println!(
            "  master key:   inside HSM token `{}` as `{}` (never leaves it); every command needs the token and its PIN (CUSTOS_HSM_PIN or a prompt)",
            hsm.token, hsm.label
        );
    } else if !report.shares.is_empty() {
        println!(
            "  master key:   split into {} shares, any {} of which open the home; kept nowhere",
            report.shares.len(),
            report.threshold
        );
        print_shares(&report.shares);
        eprintln!(
            "  Every command needs {} shares (CUSTOS_KEY_SHARES or a prompt). Lose more than {} and the data is lost.",
            report.threshold,
            report.shares.len() - report.threshold
        );
    } else if report.master_key_file {
        println!(
            "  master key:   generated into master.key (mode 0600); back it up, it cannot be recovered"
        );
        eprintln!(
            "warning: master.key is inside the home, so every backup of the home carries the key that opens it.\n         Keep it elsewhere: `custos key rotate --env`, `--shares N --threshold T` or `--hsm MODULE --hsm-token LABEL` (docs/keys.md)."
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
    match &args.catalogue {
        Some(url) => println!("  metadata:     PostgreSQL at {url} (named in catalogue.toml)"),
        None => println!("  metadata:     custos.db (SQLite)"),
    }
    match &args.object_store {
        Some(url) => {
            println!("  dataset files: object storage at {url} (named in object-store.toml)")
        }
        None => println!("  dataset files: datasets/ (encrypted Parquet)"),
    }
    if args.catalogue.is_some() && args.object_store.is_some() {
        println!(
            "  ledger:       shared by every server of this home: its journal in the PostgreSQL catalogue, \
             its tiles and checkpoints under ledger/ in the object store (entry 0 records this init; `custos ledger show`)"
        );
    } else {
        println!("  ledger:       ledger/ (entry 0 records this init; `custos ledger show`)");
    }
    println!("Next: `custos dataset ingest --schema FILE.schema.toml --name NAME FILE.csv`");
    Ok(())
}
