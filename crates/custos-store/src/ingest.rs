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

use std::collections::HashSet;
use std::fs;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use arrow::array::{ArrayRef, Date32Builder, Int64Builder, StringBuilder};
use arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::keys::{DataKey, KeyError, SubjectBucketer};
use crate::meta::MetaError;
use custos_model::schema::{
    Column, ColumnType, DatasetSchema, SUBJECT_KEY_COLUMN, SchemaError, canonical_subject,
    parse_date_days_bytes, parse_decimal_cents_bytes,
};

/// Most problems collected before an ingest gives up on a file.
pub const MAX_PROBLEMS: usize = 10;
/// Most rows buffered per bucket and parser before they go to the writer
/// (fewer when there are many buckets, to bound memory).
const BATCH_ROWS: usize = 8192;
/// Most rows per Parquet row group (fewer when there are many buckets).
const ROW_GROUP_ROWS: usize = 262_144;
/// Bytes of open data pages shared by all bucket writers.
const WRITER_PAGE_BUDGET: usize = 64 << 20;
/// Most rows per data page (see `writer_properties`).
const PAGE_ROWS: usize = 1024;
/// Target rows per bucket file when choosing the bucket count.
const TARGET_ROWS_PER_BUCKET: u64 = 250_000;
/// Most bucket files per dataset (bounds memory: one open writer per bucket).
pub const MAX_BUCKETS: u32 = 128;

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

/// Checks a dataset name: `[a-z0-9_-]{1,64}`.
pub fn valid_dataset_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The Arrow schema of a dataset's Parquet files: the schema's columns in
/// order (classes and types kept as field metadata so the files describe
/// themselves), then the hidden [`SUBJECT_KEY_COLUMN`].
pub fn arrow_schema(schema: &DatasetSchema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .columns
        .iter()
        .map(|c| {
            let ty = match c.ty {
                ColumnType::String | ColumnType::Enum => DataType::Utf8,
                ColumnType::Integer | ColumnType::Decimal => DataType::Int64,
                ColumnType::Date => DataType::Date32,
            };
            let mut meta = std::collections::HashMap::new();
            meta.insert("custos.class".to_owned(), c.class.as_str().to_owned());
            meta.insert("custos.type".to_owned(), c.ty.as_str().to_owned());
            Field::new(&c.name, ty, c.nullable).with_metadata(meta)
        })
        .chain(std::iter::once(Field::new(
            SUBJECT_KEY_COLUMN,
            DataType::Int64,
            false,
        )))
        .collect();
    Arc::new(Schema::new(fields))
}

/// File name of bucket `i`.
pub fn bucket_file_name(i: u32) -> String {
    format!("bucket-{i:04}.parquet")
}

/// The bucket number of a bucket file's name (`bucket-0007.parquet` → 7).
pub fn parse_bucket_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("bucket-")?.strip_suffix(".parquet")?;
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The AAD prefix that binds a bucket file to its dataset and position, so
/// files cannot be swapped between datasets or buckets undetected.
pub fn bucket_aad(storage_id: &str, bucket: u32) -> Vec<u8> {
    format!("custos/v1/{storage_id}/{}", bucket_file_name(bucket)).into_bytes()
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

/// Chooses the bucket count from the input's size and its first lines.
pub fn choose_bucket_count(file_bytes: u64, sample: &[u8]) -> u32 {
    let lines = sample.iter().filter(|&&b| b == b'\n').count().max(1) as u64;
    let avg_line = (sample.len() as u64 / lines).max(16);
    let estimated_rows = file_bytes / avg_line;
    let buckets = estimated_rows
        .div_ceil(TARGET_ROWS_PER_BUCKET)
        .clamp(1, u64::from(MAX_BUCKETS));
    u32::try_from(buckets).unwrap_or(MAX_BUCKETS)
}

/// Where the bytes of a value may be shown in an error.
fn shown(column: &Column, raw: &[u8]) -> String {
    if column.class.is_identifying() {
        "value (withheld: identifying column)".to_owned()
    } else {
        let text = String::from_utf8_lossy(raw);
        let mut short: String = text.chars().take(40).collect();
        if short.len() < text.len() {
            short.push('…');
        }
        format!("value `{short}`")
    }
}

enum Builder {
    Utf8(StringBuilder),
    Int64(Int64Builder),
    Date32(Date32Builder),
}

impl Builder {
    fn new(ty: ColumnType, rows: usize) -> Self {
        match ty {
            ColumnType::String | ColumnType::Enum => {
                Self::Utf8(StringBuilder::with_capacity(rows, rows * 16))
            }
            ColumnType::Integer | ColumnType::Decimal => {
                Self::Int64(Int64Builder::with_capacity(rows))
            }
            ColumnType::Date => Self::Date32(Date32Builder::with_capacity(rows)),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Date32(b) => Arc::new(b.finish()),
        }
    }
}

/// A parsed field, ready to append.
enum Value<'a> {
    Null,
    Text(&'a str),
    Int(i64),
}

struct ColumnPlan<'s> {
    column: &'s Column,
    /// Position of this column in the CSV record.
    csv_index: usize,
    /// An enum's values, sorted, for binary search.
    enum_values: Vec<&'s [u8]>,
}

impl ColumnPlan<'_> {
    fn parse<'a>(&self, raw: &'a [u8]) -> Result<Value<'a>, String> {
        let c = self.column;
        if raw.is_empty() {
            return if c.nullable {
                Ok(Value::Null)
            } else {
                Err("empty value in a column that is not nullable".into())
            };
        }
        let number = match c.ty {
            ColumnType::String => {
                if raw.iter().any(|&b| b == b'\n' || b == b'\r') {
                    return Err(
                        "a quoted field runs over a line break (unterminated quote?)".into(),
                    );
                }
                let text = std::str::from_utf8(raw).map_err(|e| {
                    format!(
                        "not valid UTF-8 (bad byte at offset {} of the field)",
                        e.valid_up_to()
                    )
                })?;
                return Ok(Value::Text(text));
            }
            ColumnType::Enum => {
                // Membership in the declared (UTF-8) values also proves UTF-8.
                return match self.enum_values.binary_search(&raw) {
                    Ok(_) => Ok(Value::Text(std::str::from_utf8(raw).unwrap_or_default())),
                    Err(_) => Err(format!(
                        "{} is not one of the {} declared values",
                        shown(c, raw),
                        c.values.len()
                    )),
                };
            }
            // Numeric parsers accept ASCII only, which also proves UTF-8.
            ColumnType::Integer => {
                parse_integer(raw).ok_or_else(|| format!("{} is not an integer", shown(c, raw)))?
            }
            ColumnType::Decimal => parse_decimal_cents_bytes(raw).ok_or_else(|| {
                format!(
                    "{} is not a decimal with at most two fraction digits",
                    shown(c, raw)
                )
            })?,
            ColumnType::Date => parse_date_days_bytes(raw)
                .ok_or_else(|| format!("{} is not a date (YYYY-MM-DD)", shown(c, raw)))?,
        };
        if let Some((lo, hi)) = c.bounds
            && !(lo..=hi).contains(&number)
        {
            return Err(format!("{} is outside the declared bounds", shown(c, raw)));
        }
        Ok(Value::Int(number))
    }
}

/// Parses an optionally signed ASCII decimal integer.
fn parse_integer(raw: &[u8]) -> Option<i64> {
    let (negative, digits) = match raw.first() {
        Some(b'-') => (true, &raw[1..]),
        Some(b'+') => (false, &raw[1..]),
        _ => (false, raw),
    };
    if digits.is_empty() {
        return None;
    }
    let mut value: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    Some(if negative { -value } else { value })
}

struct BucketBuffer {
    builders: Vec<Builder>,
    subject_keys: Int64Builder,
    rows: usize,
}

impl BucketBuffer {
    fn new(schema: &DatasetSchema, batch_rows: usize) -> Self {
        Self {
            builders: schema
                .columns
                .iter()
                .map(|c| Builder::new(c.ty, batch_rows))
                .collect(),
            subject_keys: Int64Builder::with_capacity(batch_rows),
            rows: 0,
        }
    }

    fn append(&mut self, values: &[Value<'_>], subject_key: i64) {
        self.subject_keys.append_value(subject_key);
        for (builder, value) in self.builders.iter_mut().zip(values) {
            match (builder, value) {
                (Builder::Utf8(b), Value::Text(t)) => b.append_value(t),
                (Builder::Int64(b), Value::Int(v)) => b.append_value(*v),
                // Date bounds keep values inside i32; out-of-range falls to null only
                // if the schema allowed no bounds and the date is absurd.
                (Builder::Date32(b), Value::Int(v)) => b.append_option(i32::try_from(*v).ok()),
                (Builder::Utf8(b), _) => b.append_null(),
                (Builder::Int64(b), _) => b.append_null(),
                (Builder::Date32(b), _) => b.append_null(),
            }
        }
        self.rows += 1;
    }

    fn take_batch(&mut self, schema: &SchemaRef) -> Result<RecordBatch, IngestError> {
        let mut columns: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        columns.push(Arc::new(self.subject_keys.finish()));
        self.rows = 0;
        RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| IngestError::Parquet(e.to_string()))
    }
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

/// Bytes of input handed to a parser at a time (cut at a line end).
const CHUNK_BYTES: usize = 4 << 20;
/// Longest line accepted; beyond it the file is refused, not buffered.
const MAX_LINE_BYTES: usize = 16 << 20;
/// Parser threads; with the writer thread they keep two cores busy.
const PARSERS: usize = 2;

/// A run of whole lines of the input.
struct Chunk {
    /// 1-based line number of the chunk's first line.
    first_line: u64,
    bytes: Vec<u8>,
}

/// What every parser thread shares.
struct ParseContext<'s> {
    plans: Vec<ColumnPlan<'s>>,
    fields: usize,
    /// Index of the subject id among `plans`.
    subject_plan: usize,
    bucketer: SubjectBucketer,
    arrow: SchemaRef,
    schema: &'s DatasetSchema,
    batch_rows: usize,
    buckets: u32,
    /// Set once enough problems were found: everyone stops.
    stop: std::sync::atomic::AtomicBool,
    problem_count: std::sync::atomic::AtomicUsize,
}

/// What one parser thread produced.
#[derive(Default)]
struct ParsedPart {
    rows: u64,
    problems: Vec<IngestProblem>,
    error: Option<IngestError>,
}

impl ParseContext<'_> {
    fn note_problem(&self, part: &mut ParsedPart, problem: IngestProblem) {
        part.problems.push(problem);
        let seen = self
            .problem_count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if seen >= MAX_PROBLEMS {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Sends a bucket's buffered rows to the writer; false once the
    /// pipeline has stopped.
    fn flush(
        &self,
        buffer: &mut BucketBuffer,
        bucket: u32,
        tx: &mpsc::SyncSender<(u32, RecordBatch)>,
        part: &mut ParsedPart,
    ) -> bool {
        let sent = match buffer.take_batch(&self.arrow) {
            Ok(batch) => tx.send((bucket, batch)).is_ok(),
            Err(e) => {
                part.error = Some(e);
                false
            }
        };
        if !sent {
            // The writer is gone (its error is reported) or a batch failed.
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        sent
    }

    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Parses chunks until the work runs out, sending full batches to the writer.
    fn parse_chunks(
        &self,
        work: &std::sync::Mutex<mpsc::Receiver<Chunk>>,
        tx: &mpsc::SyncSender<(u32, RecordBatch)>,
    ) -> ParsedPart {
        let mut part = ParsedPart::default();
        let mut buffers: Vec<BucketBuffer> = (0..self.buckets)
            .map(|_| BucketBuffer::new(self.schema, self.batch_rows))
            .collect();
        let mut record = csv::ByteRecord::new();
        loop {
            let chunk = match work.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => break,
            };
            let Ok(chunk) = chunk else { break };
            if self.stopped() {
                // Keep draining so the reader never blocks on a full queue.
                continue;
            }
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(&chunk.bytes[..]);
            while !self.stopped() {
                match reader.read_byte_record(&mut record) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        let line =
                            chunk.first_line + e.position().map_or(1, csv::Position::line) - 1;
                        self.note_problem(
                            &mut part,
                            IngestProblem {
                                line,
                                column: None,
                                message: "the CSV is malformed here".into(),
                            },
                        );
                        break;
                    }
                }
                let line = chunk.first_line + record.position().map_or(1, csv::Position::line) - 1;
                if record.len() != self.fields {
                    self.note_problem(
                        &mut part,
                        IngestProblem {
                            line,
                            column: None,
                            message: format!(
                                "expected {} fields, found {}",
                                self.fields,
                                record.len()
                            ),
                        },
                    );
                    continue;
                }
                let mut values: Vec<Value<'_>> = Vec::with_capacity(self.plans.len());
                for plan in &self.plans {
                    match plan.parse(record.get(plan.csv_index).unwrap_or_default()) {
                        Ok(v) => values.push(v),
                        Err(message) => self.note_problem(
                            &mut part,
                            IngestProblem {
                                line,
                                column: Some(plan.column.name.clone()),
                                message,
                            },
                        ),
                    }
                }
                if values.len() != self.plans.len() || !part.problems.is_empty() {
                    continue;
                }
                let (bucket, subject_key) = match &values[self.subject_plan] {
                    // Integers bucket on their canonical form, so `0042`
                    // and a look-up of `42` meet in the same file.
                    Value::Int(v) => self.bucketer.place(v.to_string().as_bytes()),
                    Value::Text(t) => self.bucketer.place(canonical_subject(t).as_bytes()),
                    Value::Null => (0, 0),
                };
                let Some(buffer) = buffers.get_mut(bucket as usize) else {
                    continue;
                };
                buffer.append(&values, subject_key);
                part.rows += 1;
                if buffer.rows >= self.batch_rows {
                    // On failure `flush` sets `stop`, which ends this loop.
                    self.flush(buffer, bucket, tx, &mut part);
                }
            }
        }
        let clean = !self.stopped()
            && self
                .problem_count
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0;
        if clean {
            for (bucket, buffer) in buffers.iter_mut().enumerate() {
                let bucket = u32::try_from(bucket).unwrap_or(u32::MAX);
                if buffer.rows > 0 && !self.flush(buffer, bucket, tx, &mut part) {
                    break;
                }
            }
        }
        part
    }
}

/// Reads the input in chunks of whole lines and hands them to the parsers.
fn read_chunks(
    input: &mut impl Read,
    path: &Path,
    work: mpsc::SyncSender<Chunk>,
    stop: &std::sync::atomic::AtomicBool,
    progress: &dyn IngestProgress,
    mut read_so_far: u64,
) -> Result<(), IngestError> {
    let mut block = vec![0u8; CHUNK_BYTES];
    let mut carry = Vec::new();
    // Line 1 is the header, read before.
    let mut line = 2;
    loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let n = input.read(&mut block).map_err(io_err(path))?;
        read_so_far += n as u64;
        progress.advance_to(read_so_far);
        if n == 0 {
            if !carry.is_empty() {
                let _ = work.send(Chunk {
                    first_line: line,
                    bytes: carry,
                });
            }
            return Ok(());
        }
        carry.extend_from_slice(&block[..n]);
        let Some(last_newline) = carry.iter().rposition(|&b| b == b'\n') else {
            if carry.len() > MAX_LINE_BYTES {
                return Err(IngestError::Rejected {
                    file: path.to_owned(),
                    problems: vec![IngestProblem {
                        line,
                        column: None,
                        message: "the line is longer than 16 MiB (does the file end lines with a lone CR?)".into(),
                    }],
                });
            }
            continue;
        };
        let rest = carry.split_off(last_newline + 1);
        let lines = carry.iter().filter(|&&b| b == b'\n').count() as u64;
        let chunk = Chunk {
            first_line: line,
            bytes: std::mem::replace(&mut carry, rest),
        };
        line += lines;
        if work.send(chunk).is_err() {
            return Ok(());
        }
    }
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

fn csv_error(path: &Path, e: csv::Error) -> IngestError {
    let line = e.position().map_or(0, csv::Position::line);
    match e.into_kind() {
        csv::ErrorKind::Io(cause) => IngestError::Io {
            path: path.to_owned(),
            cause,
        },
        _ => IngestError::Rejected {
            file: path.to_owned(),
            problems: vec![IngestProblem {
                line,
                column: None,
                message: "the CSV is malformed here".into(),
            }],
        },
    }
}

fn plan_columns<'s>(
    schema: &'s DatasetSchema,
    header: &csv::ByteRecord,
) -> Result<Vec<ColumnPlan<'s>>, Vec<IngestProblem>> {
    let names: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let raw = if i == 0 {
                raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
            } else {
                raw
            };
            String::from_utf8_lossy(raw).trim().to_owned()
        })
        .collect();
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for name in &names {
        if !seen.insert(name.as_str()) {
            problems.push(IngestProblem {
                line: 1,
                column: Some(name.clone()),
                message: "the header names this column twice".into(),
            });
        } else if schema.column(name).is_none() {
            problems.push(IngestProblem {
                line: 1,
                column: Some(name.clone()),
                message: "extra column: the schema does not declare it".into(),
            });
        }
    }
    for c in &schema.columns {
        if !names.iter().any(|n| n == &c.name) {
            problems.push(IngestProblem {
                line: 1,
                column: Some(c.name.clone()),
                message: "missing column: the schema declares it but the header lacks it".into(),
            });
        }
    }
    if !problems.is_empty() {
        problems.truncate(MAX_PROBLEMS);
        return Err(problems);
    }
    Ok(schema
        .columns
        .iter()
        .map(|c| ColumnPlan {
            column: c,
            csv_index: names.iter().position(|n| n == &c.name).unwrap_or(0),
            enum_values: {
                let mut v: Vec<&[u8]> = c.values.iter().map(|v| v.as_bytes()).collect();
                v.sort_unstable();
                v
            },
        })
        .collect())
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
