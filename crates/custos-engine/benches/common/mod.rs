//! What the engine's benches share: synthetic tax returns, generated once
//! per size (kept under `CUSTOS_BENCH_DATA`, default a temporary directory)
//! and ingested into a fresh home.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use custos_store::{DatasetReader, Home, MasterKeySource, NoProgress};

/// A fresh home holding `tax_returns`.
pub struct Ingested {
    /// Holds the home (and room for a bench's own files).
    pub temp: tempfile::TempDir,
    /// The generated CSV and schema.
    pub data: PathBuf,
    /// The dataset's reader.
    pub reader: Arc<DatasetReader>,
}

/// `rows` synthetic returns (seed 1), generated if missing, ingested.
pub async fn ingested_returns(rows: u64) -> Ingested {
    let data = std::env::var_os("CUSTOS_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("custos-bench-data"))
        .join(format!("tax-{rows}"));
    if !data.join("tax_returns.csv").exists() {
        eprintln!(
            "generating {rows} synthetic tax returns into {} …",
            data.display()
        );
        custos_synth::generate(
            &data,
            custos_synth::SynthOptions {
                tax_rows: rows,
                seed: 1,
            },
            &|_| {},
        )
        .expect("generate");
    }
    let temp = tempfile::tempdir().unwrap();
    let home_dir = temp.path().join("home");
    Home::init(&home_dir, MasterKeySource::GenerateFile, None)
        .await
        .unwrap();
    let home = Home::open(&home_dir, None).await.unwrap();
    let t = Instant::now();
    custos_store::dataset::ingest(
        &home,
        "tax_returns",
        &data.join("tax_returns.schema.toml"),
        &data.join("tax_returns.csv"),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    eprintln!("ingested {rows} rows in {:.1}s", t.elapsed().as_secs_f64());
    let reader = Arc::new(DatasetReader::open(&home, "tax_returns").await.unwrap());
    Ingested { temp, data, reader }
}
