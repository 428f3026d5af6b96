//! `custos generate`.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use custos_synth::{Generated, SynthOptions};

use super::human_count;
use crate::progress::rows_bar;

/// Arguments of `custos generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of tax returns; the benefits roll and death registry are sized
    /// from the same population.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub rows: u64,
    /// Directory to write the CSV and schema files into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seed: the same seed gives the same files.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
}

/// Generates the files with a progress bar and returns what was written.
pub fn generate_with_progress(args: &GenerateArgs) -> anyhow::Result<(Generated, f64)> {
    let bar = rows_bar("generating", args.rows);
    let started = Instant::now();
    let generated = custos_synth::generate(
        &args.out,
        SynthOptions {
            tax_rows: args.rows,
            seed: args.seed,
        },
        &|done| bar.set_position(done),
    )?;
    bar.finish_and_clear();
    Ok((generated, started.elapsed().as_secs_f64()))
}

/// Runs `custos generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let (generated, seconds) = generate_with_progress(&args)?;
    println!(
        "Generated synthetic data for {} people in {seconds:.1}s into `{}`:",
        human_count(generated.population),
        args.out.display()
    );
    for d in &generated.datasets {
        println!(
            "  {:<12} {:>12} rows  {}  (schema {})",
            d.name,
            human_count(d.rows),
            d.csv.display(),
            d.schema.display()
        );
    }
    Ok(())
}
