//! One module per top-level command.

pub mod agreement;
pub mod alerts;
pub mod dataset;
pub mod demo;
pub mod extract;
pub mod gateway;
pub mod generate;
pub mod init;
pub mod keys;
pub mod ledger;
pub mod lookup;
pub mod matches;
pub mod mirror;
pub mod principal;
pub mod query;
pub mod report;
pub mod serve;
pub mod serve_config;
pub mod witness;

use std::path::Path;

use custos_broker::{ExternalKey, HomeError, IngestError};

/// Reads `CUSTOS_MASTER_KEY`, if set. The value is never printed.
pub fn master_key_from_env() -> anyhow::Result<Option<ExternalKey>> {
    match std::env::var("CUSTOS_MASTER_KEY") {
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("CUSTOS_MASTER_KEY must be 64 hexadecimal characters")
        }
        Ok(text) if !text.trim().is_empty() => Ok(Some(
            ExternalKey::from_hex(&text).map_err(|e| anyhow::anyhow!("CUSTOS_MASTER_KEY: {e}"))?,
        )),
        _ => Ok(None),
    }
}

/// The API token in `CUSTOS_TOKEN`, if set. Never printed or logged.
pub fn token_from_env() -> Option<zeroize::Zeroizing<String>> {
    std::env::var("CUSTOS_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(zeroize::Zeroizing::new)
}

/// The home's published ledger directory and its checkpoints' verifier
/// key, without opening the ledger's writer (works beside a server).
pub async fn published_ledger(
    home: &Path,
) -> anyhow::Result<(std::sync::Arc<dyn custos_ledger::PublishedFiles>, String)> {
    Ok(custos_broker::published_ledger(home).await?)
}

/// The environment variable that sets the witness gate (e.g. `10m`): no
/// release while the ledger has entries no witness quorum has cosigned for
/// longer (needs HOME/witness-policy).
pub const MAX_UNWITNESSED_ENV: &str = "CUSTOS_MAX_UNWITNESSED";

/// The ledger signing key's source from `CUSTOS_LEDGER_KEY` (64 hex
/// digits; never printed) or `CUSTOS_LEDGER_KEY_FILE`, if set.
pub fn ledger_key_from_env() -> anyhow::Result<custos_broker::LedgerKeyFrom> {
    let seed = match std::env::var("CUSTOS_LEDGER_KEY") {
        Ok(text) if !text.trim().is_empty() => Some(
            custos_broker::LedgerKeyFrom::seed_from_hex(&text)
                .map_err(|e| anyhow::anyhow!("CUSTOS_LEDGER_KEY: {e}"))?,
        ),
        _ => None,
    };
    let file = std::env::var_os("CUSTOS_LEDGER_KEY_FILE")
        .filter(|f| !f.is_empty())
        .map(std::path::PathBuf::from);
    Ok(custos_broker::LedgerKeyFrom { seed, file })
}

/// Opens the home with its ledger, for actions that must be ledgered,
/// with the witness gate of `CUSTOS_MAX_UNWITNESSED` if set.
pub async fn open_custos(home: &Path) -> anyhow::Result<custos_broker::Custos> {
    open_custos_with(home, ledger_key_from_env()?).await
}

/// [`open_custos`] with the ledger signing key from `ledger_key`.
pub async fn open_custos_with(
    home: &Path,
    ledger_key: custos_broker::LedgerKeyFrom,
) -> anyhow::Result<custos_broker::Custos> {
    let mut custos =
        custos_broker::Custos::open_with(home, keys::key_from_env(home).await?, ledger_key).await?;
    if let Ok(text) = std::env::var(MAX_UNWITNESSED_ENV)
        && !text.trim().is_empty()
    {
        let max = humantime::parse_duration(text.trim())
            .map_err(|e| anyhow::anyhow!("{MAX_UNWITNESSED_ENV}=`{text}`: {e}"))?;
        custos.require_witnessed_within(max).await?;
    }
    Ok(custos)
}

/// Prints an error for a person: the message, then any located problems one
/// per line.
pub fn report_error(e: &anyhow::Error) {
    if let Some(IngestError::Rejected { file, problems }) = e.downcast_ref::<IngestError>() {
        eprintln!(
            "error: `{}` was rejected and nothing was stored:",
            file.display()
        );
        for p in problems {
            eprintln!("  {}:{p}", file.display());
        }
        if problems.len() >= custos_broker::MAX_PROBLEMS {
            eprintln!("  (stopped after the first {} problems)", problems.len());
        }
        return;
    }
    if let Some(HomeError::NotFound(_)) = e.downcast_ref::<HomeError>() {
        eprintln!("error: {e}");
        return;
    }
    eprintln!("error: {e:#}");
}

/// Formats a byte count for people.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Formats a count with thousands separators.
pub fn human_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Formats rows as an aligned text table with a header.
pub fn table(columns: &[String], rows: &[Vec<Option<String>>]) -> String {
    let cell = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in rows {
        for (w, v) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell(v).chars().count());
        }
    }
    let line = |values: Vec<String>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(columns.to_vec());
    out += &line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for row in rows {
        out += &line(row.iter().map(cell).collect());
    }
    out
}
