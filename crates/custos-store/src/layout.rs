//! The on-disk layout of a dataset, the contract between the writer
//! ([`crate::ingest`]) and every reader ([`crate::dataset`], the engine):
//! bucket file names, the Arrow schema of a bucket, the AAD that binds a
//! file to its dataset and position, page and bucket sizes.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use custos_model::schema::{ColumnType, DatasetSchema, SUBJECT_KEY_COLUMN};

/// Most rows per data page (see `writer_properties`).
pub(crate) const PAGE_ROWS: usize = 1024;

/// Target rows per bucket file when choosing the bucket count.
pub(crate) const TARGET_ROWS_PER_BUCKET: u64 = 250_000;

/// Most bucket files per dataset (bounds memory: one open writer per bucket).
pub const MAX_BUCKETS: u32 = 128;

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
