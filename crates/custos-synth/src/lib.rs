//! Deterministic synthetic data for Custos: a tax-return dataset, a benefits
//! roll and a death registry that overlap on the same synthetic people, so
//! that look-ups, aggregates and matching have something real to find.
//!
//! Safety of the data itself:
//! - Every SSN/TIN is one that the Social Security Administration never
//!   issues: area `000`, area `666`, or group `00` (see [`ssn_for`]).
//! - Names and streets are drawn at random by the `fake` crate from lists of
//!   common words; no row describes a real person.
//! - The same `--seed` gives the same files, byte for byte, on any machine.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod people;
mod schemas;
pub mod trace;

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub use people::{Person, ssn_for, subject_space};
pub use schemas::{BENEFITS_SCHEMA, DEATHS_SCHEMA, TAX_RETURNS_SCHEMA};

/// Errors writing synthetic data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SynthError {
    /// A file could not be written.
    #[error("`{path}`: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// Zero rows were asked for.
    #[error("--rows must be at least 1")]
    NoRows,
}

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct SynthOptions {
    /// Number of tax returns. The population is a third of this (each person
    /// files for several tax years), capped by the never-issued SSN space.
    pub tax_rows: u64,
    /// Seed; the same seed gives the same files.
    pub seed: u64,
}

/// One generated dataset: its CSV, its schema file and its row count.
#[derive(Debug, Clone)]
pub struct GeneratedDataset {
    /// Suggested dataset name (`tax_returns`, `benefits`, `deaths`).
    pub name: &'static str,
    /// Path of the CSV file.
    pub csv: PathBuf,
    /// Path of the schema file.
    pub schema: PathBuf,
    /// Data rows written.
    pub rows: u64,
}

/// Everything [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The datasets, in the order tax returns, benefits, deaths.
    pub datasets: Vec<GeneratedDataset>,
    /// People in the population.
    pub population: u64,
    /// Beneficiaries who appear in the death registry (the matches a
    /// benefits-vs-deaths match should find).
    pub deceased_beneficiaries: u64,
}

/// First tax year of the tax-return dataset.
pub const FIRST_TAX_YEAR: i64 = 2022;

struct Sink {
    path: PathBuf,
    writer: csv::Writer<BufWriter<fs::File>>,
    rows: u64,
}

impl Sink {
    fn create(path: PathBuf, header: &[&str]) -> Result<Self, SynthError> {
        let file = fs::File::create(&path).map_err(|cause| SynthError::Io {
            path: path.clone(),
            cause,
        })?;
        let mut writer = csv::Writer::from_writer(BufWriter::with_capacity(1 << 20, file));
        writer.write_record(header).map_err(|e| csv_io(&path, e))?;
        Ok(Self {
            path,
            writer,
            rows: 0,
        })
    }

    fn write(&mut self, record: &[&str]) -> Result<(), SynthError> {
        self.rows += 1;
        self.writer
            .write_record(record)
            .map_err(|e| csv_io(&self.path, e))
    }

    fn finish(self) -> Result<u64, SynthError> {
        let path = self.path;
        let inner = self.writer.into_inner().map_err(|e| SynthError::Io {
            path: path.clone(),
            cause: std::io::Error::other(e.to_string()),
        })?;
        let file = inner.into_inner().map_err(|e| SynthError::Io {
            path: path.clone(),
            cause: e.into_error(),
        })?;
        file.sync_all()
            .map_err(|cause| SynthError::Io { path, cause })?;
        Ok(self.rows)
    }
}

fn csv_io(path: &Path, e: csv::Error) -> SynthError {
    SynthError::Io {
        path: path.to_owned(),
        cause: std::io::Error::other(e.to_string()),
    }
}

fn write_text(path: PathBuf, text: &str) -> Result<PathBuf, SynthError> {
    let mut file = fs::File::create(&path).map_err(|cause| SynthError::Io {
        path: path.clone(),
        cause,
    })?;
    file.write_all(text.as_bytes())
        .map_err(|cause| SynthError::Io {
            path: path.clone(),
            cause,
        })?;
    Ok(path)
}

/// Writes `tax_returns.csv`, `benefits.csv` and `deaths.csv`, each with its
/// `.schema.toml`, into `out` (created if missing). `progress` is called with
/// the number of tax returns written so far.
pub fn generate(
    out: &Path,
    options: SynthOptions,
    progress: &dyn Fn(u64),
) -> Result<Generated, SynthError> {
    if options.tax_rows == 0 {
        return Err(SynthError::NoRows);
    }
    fs::create_dir_all(out).map_err(|cause| SynthError::Io {
        path: out.to_owned(),
        cause,
    })?;
    let population = options.tax_rows.div_ceil(3).clamp(1, subject_space());
    let years = options.tax_rows.div_ceil(population);
    let world = people::World::new(options.seed, population);

    let mut tax = Sink::create(out.join("tax_returns.csv"), &schemas::TAX_HEADER)?;
    let mut benefits = Sink::create(out.join("benefits.csv"), &schemas::BENEFITS_HEADER)?;
    let mut deaths = Sink::create(out.join("deaths.csv"), &schemas::DEATHS_HEADER)?;
    let mut deceased_beneficiaries = 0;

    let mut written = 0u64;
    'years: for year_offset in 0..years {
        let year = FIRST_TAX_YEAR + i64::try_from(year_offset).unwrap_or(0);
        for index in 0..population {
            if written == options.tax_rows {
                break 'years;
            }
            let person = world.person(index);
            let ret = world.tax_return(&person, year);
            tax.write(&ret.fields())?;
            written += 1;
            if written.is_multiple_of(100_000) {
                progress(written);
            }
        }
    }
    progress(written);

    for index in 0..population {
        let person = world.person(index);
        let fate = world.fate(&person);
        if let Some(benefit) = &fate.benefit {
            benefits.write(&[
                &person.ssn,
                &person.full_name(),
                &person.birth_date,
                benefit.monthly.as_str(),
                benefit.account.as_str(),
                person.state.abbr,
            ])?;
        }
        if let Some(death_date) = &fate.death_date {
            deaths.write(&[
                &person.ssn.replace('-', ""),
                &person.full_name(),
                &person.birth_date,
                death_date,
            ])?;
            if fate.benefit.is_some() {
                deceased_beneficiaries += 1;
            }
        }
    }
    // People who died but never filed here (moved away, other records).
    for extra in 0..(population / 200).max(1) {
        let index = population + extra;
        if index >= subject_space() {
            break;
        }
        let person = world.person(index);
        let death_date = world.death_date(&person);
        deaths.write(&[
            &person.ssn.replace('-', ""),
            &person.full_name(),
            &person.birth_date,
            &death_date,
        ])?;
    }

    let mk = |name: &'static str,
              schema_text: &str,
              sink: Sink|
     -> Result<GeneratedDataset, SynthError> {
        let csv = sink.path.clone();
        let rows = sink.finish()?;
        let schema = write_text(out.join(format!("{name}.schema.toml")), schema_text)?;
        Ok(GeneratedDataset {
            name,
            csv,
            schema,
            rows,
        })
    };
    Ok(Generated {
        datasets: vec![
            mk("tax_returns", TAX_RETURNS_SCHEMA, tax)?,
            mk("benefits", BENEFITS_SCHEMA, benefits)?,
            mk("deaths", DEATHS_SCHEMA, deaths)?,
        ],
        population,
        deceased_beneficiaries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let c = tempfile::tempdir().unwrap();
        let opts = SynthOptions {
            tax_rows: 3000,
            seed: 7,
        };
        let ga = generate(a.path(), opts, &|_| {}).unwrap();
        generate(b.path(), opts, &|_| {}).unwrap();
        generate(c.path(), SynthOptions { seed: 8, ..opts }, &|_| {}).unwrap();
        for f in ["tax_returns.csv", "benefits.csv", "deaths.csv"] {
            assert_eq!(read(&a.path().join(f)), read(&b.path().join(f)), "{f}");
            assert_ne!(read(&a.path().join(f)), read(&c.path().join(f)), "{f}");
        }
        assert_eq!(ga.datasets[0].rows, 3000);
        assert!(ga.datasets[1].rows > 100, "benefits roll has people");
        assert!(ga.datasets[2].rows > 10, "death registry has people");
        assert!(
            ga.deceased_beneficiaries > 0,
            "matching has something to find"
        );
    }

    #[test]
    fn every_ssn_is_never_issued() {
        let dir = tempfile::tempdir().unwrap();
        generate(
            dir.path(),
            SynthOptions {
                tax_rows: 5000,
                seed: 1,
            },
            &|_| {},
        )
        .unwrap();
        for f in ["tax_returns.csv", "benefits.csv", "deaths.csv"] {
            let mut reader = csv::Reader::from_path(dir.path().join(f)).unwrap();
            for record in reader.records() {
                let record = record.unwrap();
                let digits: String = record[0].chars().filter(char::is_ascii_digit).collect();
                assert_eq!(digits.len(), 9);
                let (area, group, serial) = (&digits[0..3], &digits[3..5], &digits[5..9]);
                let never_issued =
                    area == "000" || area == "666" || group == "00" || serial == "0000";
                assert!(never_issued, "{f}: {} could be a real SSN", &record[0]);
            }
        }
    }
}
