//! `custos extract`: pseudonymous rows to a file (CSV or Parquet).

use std::path::{Path, PathBuf};

use clap::Args;
use custos_broker::{ExtractFormat, ExtractReport, ExtractRequest};

use super::gateway::Gateway;
use super::human_count;

/// `custos extract --agreement A --dataset D [--where EXPR] --out FILE`.
#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// The agreement (its grant on the dataset must be mode `pseudonymous`).
    #[arg(long)]
    agreement: String,
    /// The dataset.
    #[arg(long)]
    dataset: String,
    /// Only rows where this holds: the row-scope language (see
    /// docs/agreements.md) over granted `public` columns only (a filter on
    /// other columns could single a person out), e.g.
    /// "tax_year = 2024 AND state IN ('CA', 'NY')".
    #[arg(long = "where", value_name = "EXPR")]
    filter: Option<String>,
    /// The file to write: `.parquet` for Parquet, anything else CSV. It must
    /// not exist; it appears only once the extract is in the ledger.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `custos extract` on the home, or through the server with `--server`
/// (the requester then needs only a token, never the home or its key).
pub async fn run(home: &Path, server: Option<&str>, args: ExtractArgs) -> anyhow::Result<()> {
    let gateway = Gateway::connect(home, server).await?;
    let result = async {
        let report = gateway
            .extract(ExtractRequest {
                agreement: &args.agreement,
                dataset: &args.dataset,
                filter: args.filter.as_deref(),
                out: &args.out,
                format: ExtractFormat::from_path(&args.out),
            })
            .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_report(&report);
        }
        anyhow::Ok(())
    }
    .await;
    gateway.close().await?;
    result
}

/// A few lines about a finished extract.
pub fn print_report(r: &ExtractReport) {
    println!(
        "Extracted {} rows about {} people to `{}` ({} columns; identifiers replaced by tokens of agreement `{}`).",
        human_count(r.rows_released),
        human_count(r.subjects),
        r.path.display(),
        r.columns.len(),
        r.agreement
    );
    println!(
        "  {} quasi-identifier classes, each of at least k = {} people; rows of smaller classes were left out (how many is not said: that would be an exact count)",
        human_count(r.classes),
        r.k
    );
    println!(
        "  ledger entry #{} records extract {} and every subject in it",
        r.ledger_index, r.id
    );
}
