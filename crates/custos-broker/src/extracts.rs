//! Pseudonymous extracts: decided under a `pseudonymous` grant, computed by
//! `custos_privacy::extract` into a hidden file beside the destination,
//! and released (renamed into place) only after the ledger holds the
//! extract and a commitment to every subject it contains, and each of them
//! has a line in their accounting.

use std::collections::BTreeSet;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use custos_engine::extract::{ExtractError, ExtractSpec, RowSink};
use custos_ledger::{Decision, Entry};
use custos_model::{ColumnClass, DatasetSchema};
use custos_policy::{Mode, ScopeFilter};
use custos_privacy::tokens::{TokenError, Tokeniser};
use custos_store::lookups::{SubjectEvent, SubjectEventKind};
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use crate::decide::{Access, Denial};
use crate::lookups::compile_row_scope;
use crate::recorded::Recorded;
use crate::{Acting, Actor, BrokerError, Custos, SUBJECTS_PER_ENTRY, entries_naming, now_micros};

/// Rows per Parquet batch of an extract.
const PARQUET_BATCH_ROWS: usize = 8192;

/// The file format of an extract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractFormat {
    /// CSV with a header line; empty fields are empty cells.
    Csv,
    /// Parquet, every column as UTF-8 text (tokens and generalised values are text).
    Parquet,
}

impl ExtractFormat {
    /// The format a file name asks for: `.parquet` or else CSV.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("parquet") => Self::Parquet,
            _ => Self::Csv,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Parquet => "parquet",
        }
    }
}

/// An extract to make.
#[derive(Debug, Clone)]
pub struct ExtractRequest<'a> {
    /// The agreement it runs under.
    pub agreement: &'a str,
    /// The dataset.
    pub dataset: &'a str,
    /// Rows wanted, in the row-scope language; may not name identifiers.
    pub filter: Option<&'a str>,
    /// Where the file goes (it appears only once the release is ledgered).
    pub out: &'a Path,
    /// CSV or Parquet.
    pub format: ExtractFormat,
}

/// What an extract released.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExtractReport {
    /// The extract's id (in the ledger and subject reports).
    pub id: String,
    /// The agreement and version it ran under.
    pub agreement: String,
    /// The agreement version.
    pub agreement_version: u32,
    /// The dataset.
    pub dataset: String,
    /// The columns written, in order.
    pub columns: Vec<String>,
    /// Rows written (what the file holds; how many were in scope or
    /// suppressed is never said).
    pub rows_released: u64,
    /// k of k-anonymity: every class holds at least k people.
    pub k: u32,
    /// Quasi-identifier classes in the extract.
    pub classes: u64,
    /// Distinct subjects in the extract.
    pub subjects: u64,
    /// Ledger index of the entry that records the extract.
    pub ledger_index: Recorded,
    /// The file.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub path: PathBuf,
}

/// Writes released rows to CSV or Parquet.
enum FileSink {
    Csv(csv::Writer<BufWriter<fs::File>>),
    Parquet {
        writer: ArrowWriter<BufWriter<fs::File>>,
        schema: Arc<Schema>,
        builders: Vec<StringBuilder>,
        rows: usize,
    },
}

impl FileSink {
    fn create(path: &Path, format: ExtractFormat, columns: &[String]) -> Result<Self, String> {
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| e.to_string())?;
        let out = BufWriter::with_capacity(1 << 16, file);
        match format {
            ExtractFormat::Csv => {
                let mut w = csv::Writer::from_writer(out);
                w.write_record(columns).map_err(|e| e.to_string())?;
                Ok(Self::Csv(w))
            }
            ExtractFormat::Parquet => {
                let schema = Arc::new(Schema::new(
                    columns
                        .iter()
                        .map(|c| Field::new(c, DataType::Utf8, true))
                        .collect::<Vec<_>>(),
                ));
                let writer =
                    ArrowWriter::try_new(out, schema.clone(), None).map_err(|e| e.to_string())?;
                Ok(Self::Parquet {
                    writer,
                    schema,
                    builders: columns.iter().map(|_| StringBuilder::new()).collect(),
                    rows: 0,
                })
            }
        }
    }

    fn flush_batch(&mut self) -> Result<(), String> {
        if let Self::Parquet {
            writer,
            schema,
            builders,
            rows,
        } = self
        {
            if *rows == 0 {
                return Ok(());
            }
            let arrays: Vec<ArrayRef> = builders
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef)
                .collect();
            let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| e.to_string())?;
            writer.write(&batch).map_err(|e| e.to_string())?;
            *rows = 0;
        }
        Ok(())
    }

    /// Flushes and fsyncs the file.
    fn finish(mut self) -> Result<(), String> {
        self.flush_batch()?;
        let file = match self {
            Self::Csv(w) => w
                .into_inner()
                .map_err(|e| e.to_string())?
                .into_inner()
                .map_err(|e| e.to_string())?,
            Self::Parquet { writer, .. } => writer
                .into_inner()
                .map_err(|e| e.to_string())?
                .into_inner()
                .map_err(|e| e.to_string())?,
        };
        file.sync_all().map_err(|e| e.to_string())
    }
}

impl RowSink for FileSink {
    fn row(&mut self, values: &[Option<String>]) -> Result<(), String> {
        match self {
            Self::Csv(w) => w
                .write_record(values.iter().map(|v| v.as_deref().unwrap_or("")))
                .map_err(|e| e.to_string()),
            Self::Parquet { builders, rows, .. } => {
                for (b, v) in builders.iter_mut().zip(values) {
                    b.append_option(v.as_deref());
                }
                *rows += 1;
                if *rows >= PARQUET_BATCH_ROWS {
                    self.flush_batch()?;
                }
                Ok(())
            }
        }
    }
}

/// The hidden file an extract is written to before its release.
/// Where an extract is written until its release is durable: inside the
/// home (mode 0700), never where the requester can read it early.
fn staging_path(home: &Path, id: &str) -> Result<PathBuf, BrokerError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = home.join("staging");
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(BrokerError::Internal(format!("staging directory: {e}"))),
    }
    Ok(dir.join(format!("{id}.partial")))
}

/// Moves a released extract from the home's staging to `out`: a rename,
/// or across file systems a copy (never over an existing file) and then
/// the staged file removed. Takes the `extract` entry's receipt: the file
/// cannot leave before that entry is durable.
fn move_out(_recorded: Recorded, staged: &Path, out: &Path) -> std::io::Result<()> {
    match fs::rename(staged, out) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            let mut from = fs::File::open(staged)?;
            let mut to = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)?;
            std::io::copy(&mut from, &mut to)?;
            to.sync_all()?;
            fs::remove_file(staged)
        }
        Err(e) => Err(e),
    }
}

impl Custos {
    /// Makes a pseudonymous extract (see the module comment).
    pub async fn extract(
        &self,
        actor: &Actor,
        req: ExtractRequest<'_>,
    ) -> Result<ExtractReport, BrokerError> {
        const ACTION: &str = "extract";
        let mut entry = Entry::new(now_micros(), actor.id(), ACTION, Decision::Deny);
        let Actor(Acting::Principal(principal)) = actor else {
            return Err(self.refuse(
                entry,
                Denial::same("extracts need a principal's token".into()),
            ));
        };
        let meta = self.home().meta();
        if let Some(latest) = meta.agreement_versions(req.agreement).await?.last() {
            entry = entry.with_agreement(req.agreement, latest.version);
        }
        let record = meta.dataset(req.dataset).await?;
        if record.is_some() {
            entry = entry.with_attribute("dataset", req.dataset);
        }
        if let Some(filter) = req.filter {
            entry = entry.with_attribute("where_hmac", self.subjects().digest("where", filter));
        }
        let granted = self
            .decide(
                Access {
                    principal,
                    agreement: req.agreement,
                    dataset: req.dataset,
                    mode: Mode::Pseudonymous,
                    columns: None,
                    subject: None,
                },
                &entry,
            )
            .await?;
        entry = entry.with_agreement(req.agreement, granted.version);
        let Some(record) = record else {
            return Err(self.refuse(entry, Denial::same("the dataset is gone".into())));
        };
        let schema = DatasetSchema::from_toml(&record.schema_toml)
            .map_err(|e| BrokerError::Internal(format!("stored schema unreadable: {e}")))?;
        let grant = granted.grant()?;
        let Some(terms) = grant.pseudonymous.clone() else {
            return Err(self.refuse(entry, Denial::same("the grant has no extract terms".into())));
        };
        let generalise = terms
            .validate(&grant.columns, &schema)
            .map_err(BrokerError::Invalid)?;
        let mut filters: Vec<ScopeFilter> = compile_row_scope(grant.row_scope.as_deref(), &schema)?
            .into_iter()
            .collect();
        if let Some(text) = req.filter {
            match where_filter(text, &grant.columns, &schema) {
                Ok(f) => filters.push(f),
                Err(message) => {
                    return Err(self.refuse(
                        entry,
                        Denial {
                            message,
                            recorded: "the --where expression was refused".into(),
                        },
                    ));
                }
            }
        }
        let reader = self
            .open_dataset(req.dataset, crate::contents::Reading::All)
            .await?;
        let spec = ExtractSpec {
            columns: grant.columns.clone(),
            keep_format: terms.keep_format.iter().cloned().collect::<BTreeSet<_>>(),
            generalise,
            k: terms.k,
            max_rows: terms.max_rows,
            filters,
            excluded: self.protected_keys(&reader).await?,
        };
        let mut raw = [0u8; 16];
        custos_store::keys::random_bytes(&mut raw)?;
        let id = format!("x_{}", hex::encode(raw));
        entry = entry
            .with_request(&id)
            .with_attribute("format", req.format.as_str());
        if req.out.exists() {
            return Err(BrokerError::Conflict(format!(
                "`{}` exists already; choose a new file",
                req.out.display()
            )));
        }
        // Extracts per hour under the agreement: every run counts, released
        // or refused, since a refusal answers a question too.
        // INVARIANT: counted and recorded under the agreement's lock.
        let limits = self
            .limit_locks
            .hold_for(&self.home, &grant, req.agreement)
            .await?;
        if let Some(limit) = grant.limits.requests_per_hour {
            let now = now_micros();
            let made = meta
                .count_extract_runs_since(req.agreement, now - 3_600_000_000)
                .await?;
            if made >= u64::from(limit) {
                return Err(self.refuse(
                    entry,
                    Denial::same(format!(
                        "limit exceeded: {limit} extracts per hour under agreement `{}`",
                        req.agreement
                    )),
                ));
            }
            meta.record_extract_run(&id, req.agreement, &principal.id, now)
                .await?;
        }
        // Recorded while the lock was held, or nothing is released.
        if let Some(mut limits) = limits {
            limits.confirm().await?;
        }
        let staging = staging_path(self.home().root(), &id)?;
        let tokens = Tokeniser::new(
            &self
                .home()
                .keys()
                .derive(&format!("pseudonym-tokens/{}", req.agreement)),
        )
        .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let (columns, format, staged) = (spec.columns.clone(), req.format, staging.clone());
        let run = tokio::task::spawn_blocking(move || {
            let mut sink =
                FileSink::create(&staged, format, &columns).map_err(ExtractError::Sink)?;
            let summary = spec.run(&reader, &tokens, &mut sink)?;
            sink.finish().map_err(ExtractError::Sink)?;
            Ok::<_, ExtractError>(summary)
        })
        .await
        .map_err(|_| BrokerError::Internal("the extract was interrupted".into()));
        let summary = match run {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let _ = fs::remove_file(&staging);
                let refused = match &e {
                    ExtractError::OverCap { .. } => "over the grant's row cap",
                    ExtractError::Token(TokenError::TooFewDigits(_) | TokenError::NotDigits(_)) => {
                        "a format-keeping token was impossible"
                    }
                    _ => {
                        // Reading or writing failed: a fault whose text
                        // (file names, engine messages) is for the log only.
                        let failed = Entry {
                            decision: Decision::Error,
                            ..entry
                        }
                        .with_reason("the extract could not be made; nothing was released");
                        self.append(&failed)?;
                        return Err(BrokerError::Internal(e.to_string()));
                    }
                };
                let denial = Denial {
                    message: e.to_string(),
                    recorded: refused.into(),
                };
                return Err(self.refuse(entry, denial));
            }
            Err(e) => {
                let _ = fs::remove_file(&staging);
                return Err(e);
            }
        };
        if summary.rows_released == 0 {
            let _ = fs::remove_file(&staging);
            // One message whether no row was in scope or every class was
            // under k: telling them apart would be a count of private rows.
            let message = format!(
                "no row could be released: no quasi-identifier class in scope holds k = {} people or more; generalise the quasi-identifiers further or widen --where",
                terms.k
            );
            return Err(self.refuse(
                entry,
                Denial {
                    recorded: "no row could be released".into(),
                    message,
                },
            ));
        }
        // INVARIANT: the file is released (renamed into place) only after
        // the entries naming every subject in it are durable.
        let commitments: Vec<_> = summary
            .subjects
            .iter()
            .map(|s| self.subjects().commit(s))
            .collect();
        let first = Entry {
            decision: Decision::Allow,
            ..entry.clone()
        }
        // What was released is counted in the requester's report and the
        // catalogue, not in the public entry (DESIGN.md invariant 0).
        .with_count("k", u64::from(terms.k));
        let entries = entries_naming(self.subjects(), first, &commitments);
        let indexes = match self.append_all(&entries) {
            Ok(r) => r,
            Err(e) => {
                let _ = fs::remove_file(&staging);
                return Err(e);
            }
        };
        let at = custos_store::home::now_rfc3339();
        let events: Vec<SubjectEvent> = commitments
            .iter()
            .enumerate()
            .map(|(i, c)| SubjectEvent {
                subject_commitment: c.0,
                ledger_index: indexes[i / SUBJECTS_PER_ENTRY].index(),
                kind: SubjectEventKind::Extracted,
                request_id: id.clone(),
                agreement_id: req.agreement.to_owned(),
                agreement_version: granted.version,
                principal: principal.id.clone(),
                org: principal.org.clone(),
                purpose: granted.agreement.purpose.clone(),
                at: at.clone(),
                rows_released: 0,
                withheld: granted.agreement.withhold_from_subject_reports.is_some(),
            })
            .collect();
        if let Err(e) = meta.insert_subject_events(&events).await {
            // The accounting is part of the release: without it, nothing leaves.
            let _ = fs::remove_file(&staging);
            let failed = Entry {
                decision: Decision::Error,
                ..entry
            }
            .with_reason("the subjects' accounting could not be written; nothing was released");
            self.append(&failed)?;
            return Err(e.into());
        }
        move_out(indexes[0], &staging, req.out).map_err(|e| {
            BrokerError::Invalid(format!(
                "the extract is recorded but could not be moved to `{}`: {e}",
                req.out.display()
            ))
        })?;
        Ok(ExtractReport {
            id,
            agreement: req.agreement.to_owned(),
            agreement_version: granted.version,
            dataset: req.dataset.to_owned(),
            columns: grant.columns,
            rows_released: summary.rows_released,
            k: terms.k,
            classes: summary.classes_released,
            subjects: commitments.len() as u64,
            ledger_index: indexes[0],
            path: req.out.to_owned(),
        })
    }
}

/// The requester's `--where`: the row-scope language, over granted columns
/// only, never over `subject_id` or `identifier` columns.
fn where_filter(
    text: &str,
    granted: &[String],
    schema: &DatasetSchema,
) -> Result<ScopeFilter, String> {
    let filter = ScopeFilter::compile(text, schema).map_err(|e| format!("--where: {e}"))?;
    for name in filter.columns() {
        let Some(column) = schema.column(name) else {
            return Err(format!("--where: no column `{name}`"));
        };
        if column.class.is_identifying() {
            return Err(format!(
                "--where may not name `{name}` (class `{}`): an extract cannot select people by their identifiers",
                column.class
            ));
        }
        if !granted.iter().any(|g| g == name) {
            return Err(format!(
                "--where names `{name}`, which the grant does not include"
            ));
        }
        // Filters on quasi-identifiers or attributes let two extracts
        // differ by one person (differencing); a public column with a
        // declared domain splits the data only along public lines.
        if column.class != ColumnClass::Public {
            return Err(format!(
                "--where may name only `public` columns (with a declared domain), not `{name}` (class `{}`): filters on other columns let two extracts single a person out",
                column.class
            ));
        }
    }
    Ok(filter)
}
