//! `custos dataset ingest|list|describe|verify`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use custos_broker::DatasetSummary;
use custos_broker::IngestReport;
use custos_broker::{Actor, Custos};

use super::gateway::Gateway;
use super::{human_bytes, human_count, open_custos, token_from_env};
use crate::progress::IngestBar;

/// Dataset commands.
#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Load a CSV file as a new dataset, encrypted at rest.
    ///
    /// The CSV's header must name exactly the schema's columns (any order).
    /// Every value is checked against the schema; on the first problems the
    /// ingest stops, lists them with line and column, and stores nothing.
    /// Subject ids and identifiers are encrypted with their own key.
    Ingest {
        /// The dataset schema (TOML; see docs/datasets.md).
        #[arg(long, value_name = "FILE")]
        schema: PathBuf,
        /// Name of the new dataset: 1-64 characters of a-z, 0-9, _ and -.
        #[arg(long)]
        name: String,
        /// The CSV file to load.
        file: PathBuf,
    },
    /// List the datasets of this home.
    List {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show a dataset's schema, row count and column classes (never values).
    Describe {
        /// The dataset.
        name: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Check every file of a dataset against the SHA-256 digests recorded
    /// in the ledger at its ingest, and name any file altered, swapped,
    /// deleted or added (admins and overseers; ledgered). Reads refuse such
    /// a dataset by themselves; this says where. Exits non-zero on a
    /// mismatch.
    Verify {
        /// The dataset.
        name: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a dataset command.
pub async fn run(home: &Path, server: Option<&str>, cmd: DatasetCommand) -> anyhow::Result<()> {
    // Listing and describing act as `CUSTOS_TOKEN`'s principal, locally as
    // over a server: each sees the datasets of the agreements it may see.
    match cmd {
        DatasetCommand::Ingest { .. } if server.is_some() => anyhow::bail!(
            "`dataset ingest` reads a local CSV file into the local home; run it on the custodian's machine, without --server"
        ),
        DatasetCommand::Ingest { schema, name, file } => {
            let custos = open_custos(home).await?;
            let token = token_from_env();
            let result = match custos.actor(token.as_deref().map(String::as_str)).await {
                Ok(actor) => ingest_with_progress(&custos, &actor, &name, &schema, &file).await,
                Err(e) => Err(e.into()),
            };
            custos.close()?;
            print_ingest(&result?);
        }
        DatasetCommand::List { json } => {
            let gateway = Gateway::connect(home, server).await?;
            let all = gateway.datasets().await;
            gateway.close().await?;
            let all = all?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("No datasets yet. Load one with `custos dataset ingest`.");
            } else {
                println!(
                    "{:<24} {:>14} {:>8} {:>12}  created",
                    "name", "rows", "buckets", "stored"
                );
                for d in all {
                    println!(
                        "{:<24} {:>14} {:>8} {:>12}  {}",
                        d.name,
                        size(&d, human_count(d.rows)),
                        d.buckets,
                        size(&d, human_bytes(d.stored_bytes)),
                        d.created_at
                    );
                }
            }
        }
        DatasetCommand::Describe { name, json } => {
            let gateway = Gateway::connect(home, server).await?;
            let d = gateway.describe(&name).await;
            gateway.close().await?;
            let d = d?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print_description(&d);
            }
        }
        DatasetCommand::Verify { name, json } => {
            let gateway = Gateway::connect(home, server).await?;
            let check = gateway.verify_dataset(&name).await;
            gateway.close().await?;
            let check = check?;
            if json {
                println!("{}", serde_json::to_string_pretty(&check)?);
            }
            match &check.problem {
                None => {
                    if !json {
                        println!(
                            "Dataset `{}`: all {} files match the digests its ingest recorded in ledger entry {} (content SHA-256 {}).",
                            check.dataset,
                            check.files,
                            check
                                .ingest_entry
                                .map_or_else(|| "?".to_owned(), |i| i.to_string()),
                            check.content_sha256
                        );
                    }
                }
                Some(problem) => anyhow::bail!(
                    "dataset `{}` is not as ingested: {problem}. Reads of it are refused; restore what was changed (the ledger entry of its ingest records every file's digest and the schema's) or ingest the dataset again.",
                    check.dataset
                ),
            }
        }
    }
    Ok(())
}

/// Ingests with a progress bar on the terminal.
pub async fn ingest_with_progress(
    custos: &Custos,
    actor: &Actor,
    name: &str,
    schema: &Path,
    file: &Path,
) -> anyhow::Result<IngestReport> {
    let bar = Arc::new(IngestBar::new(name));
    let result = custos.ingest(actor, name, schema, file, bar.clone()).await;
    bar.finish();
    Ok(result?)
}

/// A size as shown, or "withheld" when the server withheld it.
fn size(d: &DatasetSummary, shown: String) -> String {
    if d.sizes_withheld {
        "withheld".into()
    } else {
        shown
    }
}

/// One line about a finished ingest.
pub fn print_ingest(report: &IngestReport) {
    let d = &report.dataset;
    println!(
        "Ingested `{}`: {} rows in {:.1}s ({} rows/s), {} encrypted in {} bucket files",
        d.name,
        human_count(d.rows),
        report.seconds,
        human_count((d.rows as f64 / report.seconds.max(1e-9)) as u64),
        human_bytes(d.stored_bytes),
        d.buckets
    );
}

/// A dataset's schema as a table.
pub fn print_description(d: &DatasetSummary) {
    println!("Dataset `{}`", d.name);
    if let Some(desc) = &d.schema.description {
        println!("  {desc}");
    }
    println!(
        "  {} rows, {} bucket files, {} on disk, ingested {}",
        size(d, human_count(d.rows)),
        d.buckets,
        size(d, human_bytes(d.stored_bytes)),
        d.created_at
    );
    println!("  schema sha256 {}", d.schema_sha256);
    println!();
    println!(
        "  {:<18} {:<11} {:<8} {:<9} bounds / domain",
        "column", "class", "type", "encrypted"
    );
    for c in &d.schema.columns {
        let extra = match (c.ty, c.bounds) {
            (custos_model::ColumnType::Enum, _) => format!("{} values", c.values.len()),
            (custos_model::ColumnType::Decimal, Some((lo, hi))) => format!(
                "[{}, {}]",
                custos_model::schema::format_cents(lo),
                custos_model::schema::format_cents(hi)
            ),
            (custos_model::ColumnType::Date, Some((lo, hi))) => format!(
                "[{}, {}]",
                custos_model::schema::format_date_days(lo),
                custos_model::schema::format_date_days(hi)
            ),
            (_, Some((lo, hi))) => format!("[{lo}, {hi}]"),
            _ => String::new(),
        };
        let key = if c.class.is_identifying() {
            "identity"
        } else {
            "data"
        };
        let nullable = if c.nullable { " (nullable)" } else { "" };
        println!(
            "  {:<18} {:<11} {:<8} {:<9} {extra}{nullable}",
            c.name, c.class, c.ty, key
        );
    }
}
