//! Reading a CSV into validated Arrow batches: whole-line chunks, the
//! per-column plan (type, bounds, domain, canonical subject ids), value
//! parsing, and the located problems a person can fix. Never echoes a value
//! of an identifying column.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use arrow::array::{ArrayRef, Date32Builder, Int64Builder, StringBuilder};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::ingest::{IngestError, IngestProblem, IngestProgress, MAX_PROBLEMS, io_err};
use crate::keys::SubjectBucketer;
use custos_model::schema::{
    Column, ColumnType, DatasetSchema, canonical_subject, parse_date_days_bytes,
    parse_decimal_cents_bytes,
};

/// Where the bytes of a value may be shown in an error.
pub(crate) fn shown(column: &Column, raw: &[u8]) -> String {
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

pub(crate) enum Builder {
    Utf8(StringBuilder),
    Int64(Int64Builder),
    Date32(Date32Builder),
}

impl Builder {
    pub(crate) fn new(ty: ColumnType, rows: usize) -> Self {
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

    pub(crate) fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Date32(b) => Arc::new(b.finish()),
        }
    }
}

/// A parsed field, ready to append.
pub(crate) enum Value<'a> {
    Null,
    Text(&'a str),
    Int(i64),
}

pub(crate) struct ColumnPlan<'s> {
    pub(crate) column: &'s Column,
    /// Position of this column in the CSV record.
    pub(crate) csv_index: usize,
    /// An enum's values, sorted, for binary search.
    pub(crate) enum_values: Vec<&'s [u8]>,
}

impl ColumnPlan<'_> {
    pub(crate) fn parse<'a>(&self, raw: &'a [u8]) -> Result<Value<'a>, String> {
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
pub(crate) fn parse_integer(raw: &[u8]) -> Option<i64> {
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

/// Bytes of input handed to a parser at a time (cut at a line end).
pub(crate) const CHUNK_BYTES: usize = 4 << 20;

/// Longest line accepted; beyond it the file is refused, not buffered.
pub(crate) const MAX_LINE_BYTES: usize = 16 << 20;

/// Parser threads; with the writer thread they keep two cores busy.
pub(crate) const PARSERS: usize = 2;

/// A run of whole lines of the input.
pub(crate) struct Chunk {
    /// 1-based line number of the chunk's first line.
    pub(crate) first_line: u64,
    pub(crate) bytes: Vec<u8>,
}

/// What every parser thread shares.
pub(crate) struct ParseContext<'s> {
    pub(crate) plans: Vec<ColumnPlan<'s>>,
    pub(crate) fields: usize,
    /// Index of the subject id among `plans`.
    pub(crate) subject_plan: usize,
    pub(crate) bucketer: SubjectBucketer,
    pub(crate) arrow: SchemaRef,
    pub(crate) schema: &'s DatasetSchema,
    pub(crate) batch_rows: usize,
    pub(crate) buckets: u32,
    /// Set once enough problems were found: everyone stops.
    pub(crate) stop: std::sync::atomic::AtomicBool,
    pub(crate) problem_count: std::sync::atomic::AtomicUsize,
}

/// What one parser thread produced.
#[derive(Default)]
pub(crate) struct ParsedPart {
    pub(crate) rows: u64,
    pub(crate) problems: Vec<IngestProblem>,
    pub(crate) error: Option<IngestError>,
}

impl ParseContext<'_> {
    pub(crate) fn note_problem(&self, part: &mut ParsedPart, problem: IngestProblem) {
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
    pub(crate) fn flush(
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

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Parses chunks until the work runs out, sending full batches to the writer.
    pub(crate) fn parse_chunks(
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
pub(crate) fn read_chunks(
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

pub(crate) fn csv_error(path: &Path, e: csv::Error) -> IngestError {
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

pub(crate) fn plan_columns<'s>(
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

pub(crate) struct BucketBuffer {
    pub(crate) builders: Vec<Builder>,
    pub(crate) subject_keys: Int64Builder,
    pub(crate) rows: usize,
}

impl BucketBuffer {
    pub(crate) fn new(schema: &DatasetSchema, batch_rows: usize) -> Self {
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

    pub(crate) fn append(&mut self, values: &[Value<'_>], subject_key: i64) {
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

    pub(crate) fn take_batch(&mut self, schema: &SchemaRef) -> Result<RecordBatch, IngestError> {
        let mut columns: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        columns.push(Arc::new(self.subject_keys.finish()));
        self.rows = 0;
        RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| IngestError::Parquet(e.to_string()))
    }
}
