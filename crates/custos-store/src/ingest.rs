//! CSV → encrypted Parquet ingest.
//!
//! The CSV is streamed: rows are validated against the schema, spread over
//! bucket files by a keyed hash of the subject id (so a subject's rows are
//! found by reading one bucket, never the whole dataset) and written through
//! Arrow into Parquet with modular encryption. One thread cuts the input into
//! whole-line chunks, two parse and validate them, one encodes, compresses
//! and encrypts. Memory is bounded by the bucket count (capped) and batch
//! sizes, not by the input.
//!
//! Atomicity: everything is written into a locked staging directory, fsynced,
//! renamed into place, and only then recorded in the metadata store. A crash
//! at any point leaves no dataset; the leftovers are removed by the next
//! ingest (see [`crate::dataset::remove_leftovers`]).

use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::keys::{DataKey, KeyError};
use crate::layout::*;
use crate::meta::MetaError;
use crate::parse::*;
use custos_model::schema::{ColumnType, DatasetSchema, SUBJECT_KEY_COLUMN, SchemaError};

/// Most problems collected before an ingest gives up on a file.
pub const MAX_PROBLEMS: usize = 10;
/// Most rows buffered per bucket and parser before they go to the writer
/// (fewer when there are many buckets, to bound memory).
const BATCH_ROWS: usize = 8192;
/// Most rows per Parquet row group (fewer when there are many buckets).
const ROW_GROUP_ROWS: usize = 262_144;
/// Bytes of open data pages shared by all bucket writers.
const WRITER_PAGE_BUDGET: usize = 64 << 20;

/// One thing wrong with an input file, located for the person who fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestProblem {
    /// 1-based line number in the file.
    pub line: u64,
    /// The column, when the problem is in one field.
    pub column: Option<String>,
    /// What is wrong (never an identifier's value).
    pub message: String,
}

impl std::fmt::Display for IngestProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(c) => write!(f, "line {}, column `{c}`: {}", self.line, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

/// Why an ingest failed. In every case no dataset was created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The dataset name breaks the naming rule.
    #[error("dataset name `{0}` is not allowed: use 1-64 characters of a-z, 0-9, _ and -")]
    BadName(String),
    /// A dataset with this name exists.
    #[error("dataset `{0}` already exists")]
    Exists(String),
    /// The schema file was refused.
    #[error("schema `{path}`: {cause}")]
    Schema {
        /// The schema file.
        path: PathBuf,
        /// Why.
        cause: SchemaError,
    },
    /// The CSV file broke the schema; nothing was stored.
    #[error(
        "`{file}` was rejected and nothing was stored: {}",
        format_problems(problems)
    )]
    Rejected {
        /// The input file.
        file: PathBuf,
        /// The first problems found (at most [`MAX_PROBLEMS`]).
        problems: Vec<IngestProblem>,
    },
    /// A file could not be read or written.
    #[error("`{path}`: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The Parquet writer failed.
    #[error("writing Parquet failed: {0}")]
    Parquet(String),
    /// A key problem.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A metadata store problem.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

fn format_problems(problems: &[IngestProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IngestError + '_ {
    move |cause| IngestError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// Receives progress of a long ingest (bytes of the input consumed).
pub trait IngestProgress: Send + Sync {
    /// Called once with the input's size in bytes.
    fn start(&self, total_bytes: u64);
    /// Called as input is consumed, with the bytes read so far.
    fn advance_to(&self, bytes_read: u64);
}

/// Progress that goes nowhere.
#[derive(Debug, Default)]
pub struct NoProgress;

impl IngestProgress for NoProgress {
    fn start(&self, _: u64) {}
    fn advance_to(&self, _: u64) {}
}

/// Parquet encryption: identity columns under the identity key, every other
/// column and the (encrypted) footer under the footer key.
fn encryption_properties(
    schema: &DatasetSchema,
    key: &DataKey,
    aad: Vec<u8>,
) -> Result<Arc<FileEncryptionProperties>, IngestError> {
    let footer = key.footer_key();
    let identity = key.identity_key();
    let mut builder = FileEncryptionProperties::builder(footer.to_vec())
        .with_aad_prefix(aad)
        .with_aad_prefix_storage(false);
    for c in &schema.columns {
        let column_key = if c.class.is_identifying() {
            identity.to_vec()
        } else {
            footer.to_vec()
        };
        builder = builder.with_column_key(&c.name, column_key);
    }
    // Columns without a key would be written in the clear.
    builder = builder.with_column_key(SUBJECT_KEY_COLUMN, footer.to_vec());
    builder
        .build()
        .map_err(|e| IngestError::Parquet(e.to_string()))
}

/// Rows per row group: fewer as buckets grow, so that the row groups
/// buffered by all bucket writers stay near one budget (≈ 1M rows).
fn row_group_rows(buckets: u32) -> usize {
    (1_048_576 / buckets.max(1) as usize).clamp(8192, ROW_GROUP_ROWS)
}

fn writer_properties(
    schema: &DatasetSchema,
    encryption: Option<Arc<FileEncryptionProperties>>,
    buckets: u32,
) -> WriterProperties {
    // Every open writer buffers a row group and one page per column: both
    // shrink as buckets grow, so the whole stays near a fixed budget.
    let row_group_rows = row_group_rows(buckets);
    let page_bytes = (WRITER_PAGE_BUDGET / (buckets as usize * schema.columns.len().max(1)))
        .clamp(32 << 10, 1 << 20);
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_data_page_size_limit(page_bytes)
        // Small pages: a look-up decodes one page per column and row group.
        .set_data_page_row_count_limit(PAGE_ROWS);
    if let Some(encryption) = encryption {
        builder = builder.with_file_encryption_properties(encryption);
    }
    for c in &schema.columns {
        // Dictionary pages pay only for low-cardinality columns; on unique
        // values (ids, names, amounts) they cost time and then fall back.
        let low_cardinality =
            c.ty == ColumnType::Enum || c.class == custos_model::schema::ColumnClass::Public;
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(c.name.as_str()), low_cardinality);
        if c.class.is_identifying() {
            // Min/max of an identifier column would be identifiers; keep none.
            builder = builder
                .set_column_statistics_enabled(
                    ColumnPath::from(c.name.as_str()),
                    EnabledStatistics::None,
                )
                .set_column_bloom_filter_enabled(ColumnPath::from(c.name.as_str()), false);
        }
    }
    // Rows are sorted by the subject key within each row group, so page
    // min/max of the key (the column index, encrypted under the footer key
    // like the column; a keyed hash says nothing without the key) lets a
    // look-up read one page per row group instead of the whole column.
    builder
        .set_column_dictionary_enabled(ColumnPath::from(SUBJECT_KEY_COLUMN), false)
        .set_column_statistics_enabled(
            ColumnPath::from(SUBJECT_KEY_COLUMN),
            EnabledStatistics::Page,
        )
        .build()
}

/// What [`write_buckets`] produced.
#[derive(Debug, Clone, Copy)]
pub struct WrittenDataset {
    /// Rows written.
    pub rows: u64,
    /// Bytes of all bucket files.
    pub bytes: u64,
}

/// Whether bucket files are encrypted. Datasets always are; `Plain` exists
/// only as the baseline of the ingest benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileEncryption {
    /// Parquet modular encryption with the dataset's keys (every dataset).
    Encrypted,
    /// No encryption: the benchmark's baseline, never used for a dataset.
    Plain,
}

/// Streams `csv` into `buckets` Parquet files in `dir`, fsynced.
/// On error the caller discards `dir`.
///
/// One thread reads whole-line chunks, [`PARSERS`] threads validate rows and
/// fill per-bucket Arrow batches, one thread encodes, compresses and
/// encrypts. Memory is bounded by the bucket count and batch sizes, which
/// shrink as buckets grow, never by the input's size.
#[allow(clippy::too_many_arguments)]
pub fn write_buckets(
    dir: &Path,
    storage_id: &str,
    schema: &DatasetSchema,
    csv_path: &Path,
    key: &DataKey,
    buckets: u32,
    encryption: FileEncryption,
    progress: &dyn IngestProgress,
) -> Result<WrittenDataset, IngestError> {
    if buckets == 0 {
        return Err(IngestError::Parquet(
            "a dataset needs at least one bucket".into(),
        ));
    }
    let file = fs::File::open(csv_path).map_err(io_err(csv_path))?;
    let total = file.metadata().map_err(io_err(csv_path))?.len();
    progress.start(total);
    let rejected = |problems: Vec<IngestProblem>| IngestError::Rejected {
        file: csv_path.to_owned(),
        problems,
    };
    let mut input = std::io::BufReader::with_capacity(1 << 16, file);
    let mut first = Vec::new();
    std::io::BufRead::read_until(&mut input, b'\n', &mut first).map_err(io_err(csv_path))?;
    let mut header = csv::ByteRecord::new();
    let has_header = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(&first[..])
        .read_byte_record(&mut header)
        .map_err(|e| csv_error(csv_path, e))?;
    if !has_header || header.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
        return Err(rejected(vec![IngestProblem {
            line: 1,
            column: None,
            message: "the file is empty: expected a header line naming the columns".into(),
        }]));
    }
    let plans = plan_columns(schema, &header).map_err(rejected)?;

    let budget_rows = 262_144 / (buckets as usize * PARSERS);
    let context = ParseContext {
        plans,
        fields: header.len(),
        subject_plan: schema.subject_index(),
        bucketer: key.bucketer(buckets),
        arrow: arrow_schema(schema),
        schema,
        batch_rows: budget_rows.clamp(1024, BATCH_ROWS),
        buckets,
        stop: std::sync::atomic::AtomicBool::new(false),
        problem_count: std::sync::atomic::AtomicUsize::new(0),
    };
    let props: Vec<WriterProperties> = (0..buckets)
        .map(|b| {
            let encryption = match encryption {
                FileEncryption::Encrypted => Some(encryption_properties(
                    schema,
                    key,
                    bucket_aad(storage_id, b),
                )?),
                FileEncryption::Plain => None,
            };
            Ok(writer_properties(schema, encryption, buckets))
        })
        .collect::<Result<_, IngestError>>()?;
    let (tx, rx) = mpsc::sync_channel::<(u32, RecordBatch)>(2 * PARSERS);
    let (writer_dir, writer_schema) = (dir.to_owned(), context.arrow.clone());
    let group_rows = row_group_rows(buckets);
    let writer =
        std::thread::spawn(move || write_thread(&writer_dir, writer_schema, props, group_rows, rx));

    let (work_tx, work_rx) = mpsc::sync_channel::<Chunk>(PARSERS);
    let work_rx = std::sync::Mutex::new(work_rx);
    let first_len = first.len() as u64;
    let (parts, read_result) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PARSERS)
            .map(|_| {
                let tx = tx.clone();
                let (context, work_rx) = (&context, &work_rx);
                scope.spawn(move || context.parse_chunks(work_rx, &tx))
            })
            .collect();
        let read_result = read_chunks(
            &mut input,
            csv_path,
            work_tx,
            &context.stop,
            progress,
            first_len,
        );
        if read_result.is_err() {
            context
                .stop
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let parts: Vec<ParsedPart> = workers.into_iter().filter_map(|w| w.join().ok()).collect();
        (parts, read_result)
    });
    drop(tx);
    let written = writer
        .join()
        .map_err(|_| IngestError::Parquet("the writer thread stopped unexpectedly".into()))?;
    read_result?;
    if parts.len() != PARSERS {
        return Err(IngestError::Parquet(
            "a parser thread stopped unexpectedly".into(),
        ));
    }
    let mut problems = Vec::new();
    let mut rows = 0;
    for part in parts {
        if let Some(e) = part.error {
            return Err(e);
        }
        rows += part.rows;
        problems.extend(part.problems);
    }
    problems.sort_by_key(|p| p.line);
    problems.truncate(MAX_PROBLEMS);
    if problems.is_empty() && rows == 0 {
        problems.push(IngestProblem {
            line: 2,
            column: None,
            message: "the file has a header but no data rows".into(),
        });
    }
    if !problems.is_empty() {
        return Err(rejected(problems));
    }
    progress.advance_to(total);
    Ok(WrittenDataset {
        rows,
        bytes: written?,
    })
}

/// One bucket's Parquet writer and the rows of its next row group.
struct BucketWriter {
    path: PathBuf,
    writer: ArrowWriter<BufWriter<fs::File>>,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
}

impl BucketWriter {
    /// Writes the pending rows as one row group sorted by the subject key
    /// (the last column), so the key's page index finds a subject's page.
    fn flush_sorted(&mut self) -> Result<(), IngestError> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let arrow_err = |e: arrow::error::ArrowError| IngestError::Parquet(e.to_string());
        let schema = self.pending[0].schema();
        let batch = concat_batches(&schema, &self.pending).map_err(arrow_err)?;
        self.pending.clear();
        self.pending_rows = 0;
        let key = batch.num_columns() - 1;
        let order = sort_to_indices(batch.column(key), None, None).map_err(arrow_err)?;
        let sorted = take_record_batch(&batch, &order).map_err(arrow_err)?;
        drop(batch);
        self.writer
            .write(&sorted)
            .and_then(|()| self.writer.flush())
            .map_err(|e| IngestError::Parquet(e.to_string()))
    }
}

/// Owns one Parquet writer per bucket; returns the bytes written. Rows are
/// gathered per bucket up to `group_rows` and written as one sorted row group.
fn write_thread(
    dir: &Path,
    schema: SchemaRef,
    props: Vec<WriterProperties>,
    group_rows: usize,
    rx: mpsc::Receiver<(u32, RecordBatch)>,
) -> Result<u64, IngestError> {
    let parquet_err = |e: parquet::errors::ParquetError| IngestError::Parquet(e.to_string());
    let mut writers = Vec::with_capacity(props.len());
    for (i, p) in props.into_iter().enumerate() {
        let bucket = u32::try_from(i).unwrap_or(u32::MAX);
        let path = dir.join(bucket_file_name(bucket));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 16, file),
            schema.clone(),
            Some(p),
        )
        .map_err(parquet_err)?;
        writers.push(BucketWriter {
            path,
            writer,
            pending: Vec::new(),
            pending_rows: 0,
        });
    }
    for (bucket, batch) in rx {
        if let Some(w) = writers.get_mut(bucket as usize) {
            w.pending_rows += batch.num_rows();
            w.pending.push(batch);
            if w.pending_rows >= group_rows {
                w.flush_sorted()?;
            }
        }
    }
    let mut bytes = 0;
    for mut w in writers {
        w.flush_sorted()?;
        let path = w.path;
        let file = w
            .writer
            .into_inner()
            .map_err(parquet_err)?
            .into_inner()
            .map_err(|e| io_err(&path)(e.into_error()))?;
        file.sync_all().map_err(io_err(&path))?;
        bytes += file.metadata().map_err(io_err(&path))?.len();
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names() {
        assert!(valid_dataset_name("tax_returns-2024"));
        assert!(!valid_dataset_name(""));
        assert!(!valid_dataset_name("Tax"));
        assert!(!valid_dataset_name("../etc"));
        assert!(!valid_dataset_name(&"a".repeat(65)));
    }

    #[test]
    fn bucket_count_scales_with_size() {
        let sample = b"a,b\n1,2\n3,4\n";
        assert_eq!(choose_bucket_count(100, sample), 1);
        assert!(choose_bucket_count(4_000_000_000, sample) == MAX_BUCKETS);
        let mid = choose_bucket_count(
            1_000_000 * 150,
            &b"x"
                .repeat(149)
                .into_iter()
                .chain([b'\n'])
                .collect::<Vec<_>>(),
        );
        assert_eq!(mid, 4);
    }
}
