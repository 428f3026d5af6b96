//! Computing the true, bounded per-group totals of an aggregate query with
//! DataFusion over the dataset's encrypted Parquet files.
//!
//! DataFusion scans, decrypts and filters; Custos bounds each subject's
//! contribution and adds up in integers. The bounding runs one bucket file
//! at a time: a subject's rows all live in one bucket (the keyed hash of
//! the subject id chooses it at ingest), so per-subject state never spans
//! files and memory stays at one bucket's worth.
//!
//! Contribution bounding: each subject keeps at most `k` rows, the `k` with
//! the smallest hash of the row's content — a choice made by the subject's
//! data, never by the order rows arrived in.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, Date32Array, Int64Array, RecordBatch, StringArray, StringViewArray};
use async_trait::async_trait;
use custos_store::{DatasetReader, DatasetSchema};
use datafusion::common::config::{EncryptionFactoryOptions, TableOptions};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::parquet_encryption::EncryptionFactory;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::parquet::encryption::decrypt::FileDecryptionProperties;
use datafusion::parquet::encryption::encrypt::FileEncryptionProperties;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

use crate::query::{Aggregate, AggregateQuery, group_domain};

/// The encryption factory's id in a session.
const FACTORY: &str = "custos-buckets";

/// Errors while computing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteError {
    /// DataFusion failed.
    #[error("query engine: {0}")]
    Engine(String),
    /// The dataset could not be read.
    #[error(transparent)]
    Dataset(#[from] custos_store::DatasetError),
}

fn engine(e: impl std::fmt::Display) -> ExecuteError {
    ExecuteError::Engine(e.to_string())
}

/// Hands DataFusion each bucket file's decryption properties (its keys and
/// the AAD prefix that binds it to its dataset and position).
#[derive(Debug)]
struct BucketKeys {
    reader: Arc<DatasetReader>,
    identity: bool,
}

#[async_trait]
impl EncryptionFactory for BucketKeys {
    async fn get_file_encryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        _schema: &arrow::datatypes::SchemaRef,
        _file_path: &datafusion::object_store::path::Path,
    ) -> datafusion::error::Result<Option<Arc<FileEncryptionProperties>>> {
        Err(datafusion::error::DataFusionError::Plan(
            "Custos datasets are read-only here".into(),
        ))
    }

    async fn get_file_decryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        file_path: &datafusion::object_store::path::Path,
    ) -> datafusion::error::Result<Option<Arc<FileDecryptionProperties>>> {
        let bucket = file_path
            .filename()
            .and_then(custos_store::ingest::parse_bucket_file_name)
            .ok_or_else(|| datafusion::error::DataFusionError::Plan("not a bucket file".into()))?;
        self.reader
            .decryption_properties(bucket, self.identity)
            .map(Some)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
    }
}

/// A DataFusion session that reads the dataset's bucket files. With
/// `identity`, the subject and identifier columns can be decrypted too.
pub fn session(reader: Arc<DatasetReader>, identity: bool) -> SessionContext {
    let mut config = SessionConfig::new()
        .with_target_partitions(2)
        // Keep each file whole in one partition (subjects never span files).
        .with_repartition_file_scans(false);
    // Plain Utf8 arrays, as the files were written (not Utf8View).
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    let runtime = Arc::new(RuntimeEnv::default());
    runtime.register_parquet_encryption_factory(FACTORY, Arc::new(BucketKeys { reader, identity }));
    let mut table_options = TableOptions::default_from_session_config(config.options());
    table_options.parquet.crypto.factory_id = Some(FACTORY.to_owned());
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_table_options(table_options)
        .build();
    SessionContext::new_with_state(state)
}

/// The true totals per group, before noise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Group keys in domain order (one label per `GROUP BY` column); one
    /// empty key when the query has no `GROUP BY`.
    pub groups: Vec<Vec<String>>,
    /// Per aggregate (as in the query), per group: the integer total. For
    /// `AVG` this is the sum; its count is in `avg_counts`.
    pub values: Vec<Vec<i64>>,
    /// For each `AVG` aggregate, per group, the count of its rows.
    pub avg_counts: Vec<Vec<i64>>,
    /// Rows read after the filter, before bounding.
    pub rows_scanned: u64,
    /// Rows dropped by contribution bounding.
    pub rows_dropped: u64,
}

/// The cartesian product of the group columns' domains, in order.
pub fn group_keys(schema: &DatasetSchema, group_by: &[String]) -> Vec<Vec<String>> {
    let mut keys: Vec<Vec<String>> = vec![Vec::new()];
    for name in group_by {
        let domain = schema.column(name).map(group_domain).unwrap_or_default();
        keys = keys
            .into_iter()
            .flat_map(|prefix| {
                domain.iter().map(move |v| {
                    let mut k = prefix.clone();
                    k.push(v.clone());
                    k
                })
            })
            .collect();
    }
    keys
}

/// A value of a batch column as text (group keys) or integer (values).
fn text_at(array: &dyn Array, row: usize) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    if let Some(a) = array.as_any().downcast_ref::<StringArray>() {
        return Some(a.value(row).to_owned());
    }
    if let Some(a) = array.as_any().downcast_ref::<StringViewArray>() {
        return Some(a.value(row).to_owned());
    }
    if let Some(a) = array.as_any().downcast_ref::<Int64Array>() {
        return Some(a.value(row).to_string());
    }
    None
}

fn int_at(array: &dyn Array, row: usize) -> Option<i64> {
    if array.is_null(row) {
        return None;
    }
    if let Some(a) = array.as_any().downcast_ref::<Int64Array>() {
        return Some(a.value(row));
    }
    array
        .as_any()
        .downcast_ref::<Date32Array>()
        .map(|a| i64::from(a.value(row)))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Computes the bounded true totals of `query` (already checked), with
/// `filter_sql` its `WHERE` in storage units, keeping at most
/// `contributions` rows per subject.
pub async fn totals(
    reader: Arc<DatasetReader>,
    query: &AggregateQuery,
    filter_sql: Option<&str>,
    contributions: u32,
) -> Result<Totals, ExecuteError> {
    let schema = reader.schema().clone();
    let subject = schema.subject_column().name.clone();
    let groups = group_keys(&schema, &query.group_by);
    let index: HashMap<Vec<String>, usize> = groups
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), i))
        .collect();
    // Value columns and their clamping bounds, each read once.
    let mut value_columns: Vec<(String, i64, i64)> = Vec::new();
    for a in &query.aggregates {
        if let Aggregate::Sum(c) | Aggregate::Avg(c) = a
            && !value_columns.iter().any(|(n, _, _)| n == c)
        {
            let (lo, hi) = schema.column(c).and_then(|c| c.bounds).unwrap_or((0, 0));
            value_columns.push((c.clone(), lo, hi));
        }
    }
    let mut select: Vec<String> = vec![quote(&subject)];
    select.extend(query.group_by.iter().map(|g| quote(g)));
    select.extend(value_columns.iter().map(|(c, _, _)| quote(c)));
    let sql_where = filter_sql
        .map(|f| format!(" WHERE {f}"))
        .unwrap_or_default();
    let ctx = session(Arc::clone(&reader), true);
    let mut acc = Accumulator::new(query, &value_columns, groups.len());
    let k = contributions.max(1) as usize;
    for path in reader.bucket_paths() {
        let table = "bucket";
        let _ = ctx.deregister_table(table);
        ctx.register_parquet(
            table,
            path.to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await
        .map_err(engine)?;
        let sql = format!("SELECT {} FROM {table}{sql_where}", select.join(", "));
        let batches = ctx
            .sql(&sql)
            .await
            .map_err(engine)?
            .collect()
            .await
            .map_err(engine)?;
        acc.add_bucket(&batches, &index, query.group_by.len(), k);
    }
    Ok(acc.finish(groups))
}

/// Per-bucket bounding and integer accumulation.
struct Accumulator {
    aggregates: Vec<Aggregate>,
    value_columns: Vec<(String, i64, i64)>,
    rows: Vec<i64>,
    subjects: Vec<i64>,
    sums: Vec<Vec<i64>>,
    scanned: u64,
    dropped: u64,
}

/// One candidate row of a bucket: its subject, content hash, group, values.
struct Candidate {
    subject: u64,
    tag: u64,
    group: usize,
    values: Vec<i64>,
}

impl Accumulator {
    fn new(query: &AggregateQuery, value_columns: &[(String, i64, i64)], groups: usize) -> Self {
        Self {
            aggregates: query.aggregates.clone(),
            value_columns: value_columns.to_vec(),
            rows: vec![0; groups],
            subjects: vec![0; groups],
            sums: vec![vec![0; groups]; value_columns.len()],
            scanned: 0,
            dropped: 0,
        }
    }

    fn add_bucket(
        &mut self,
        batches: &[RecordBatch],
        index: &HashMap<Vec<String>, usize>,
        group_columns: usize,
        k: usize,
    ) {
        let mut candidates: Vec<Candidate> = Vec::new();
        for batch in batches {
            for row in 0..batch.num_rows() {
                self.scanned += 1;
                let Some(subject) = text_at(batch.column(0).as_ref(), row) else {
                    continue;
                };
                let key: Option<Vec<String>> = (0..group_columns)
                    .map(|g| text_at(batch.column(1 + g).as_ref(), row))
                    .collect();
                // Rows outside the declared domain (or with an empty group
                // cell) belong to no released group.
                let Some(group) = key.and_then(|k| index.get(&k).copied()) else {
                    continue;
                };
                let values: Vec<i64> = self
                    .value_columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, lo, hi))| {
                        int_at(batch.column(1 + group_columns + i).as_ref(), row)
                            .map_or(0, |v| v.clamp(*lo, *hi))
                    })
                    .collect();
                let mut h = DefaultHasher::new();
                subject.hash(&mut h);
                let subject_hash = h.finish();
                group.hash(&mut h);
                values.hash(&mut h);
                candidates.push(Candidate {
                    subject: subject_hash,
                    tag: h.finish(),
                    group,
                    values,
                });
            }
        }
        candidates.sort_unstable_by_key(|c| (c.subject, c.tag));
        let mut start = 0;
        while start < candidates.len() {
            let subject = candidates[start].subject;
            let mut end = start;
            while end < candidates.len() && candidates[end].subject == subject {
                end += 1;
            }
            let kept = &candidates[start..(start + k).min(end)];
            self.dropped += (end - start - kept.len()) as u64;
            let mut seen_groups: Vec<usize> = Vec::with_capacity(kept.len());
            for c in kept {
                self.rows[c.group] += 1;
                if !seen_groups.contains(&c.group) {
                    seen_groups.push(c.group);
                    self.subjects[c.group] += 1;
                }
                for (i, v) in c.values.iter().enumerate() {
                    self.sums[i][c.group] = self.sums[i][c.group].saturating_add(*v);
                }
            }
            start = end;
        }
    }

    fn finish(self, groups: Vec<Vec<String>>) -> Totals {
        let column = |c: &str| {
            self.value_columns
                .iter()
                .position(|(n, _, _)| n == c)
                .unwrap_or(0)
        };
        let mut values = Vec::new();
        let mut avg_counts = Vec::new();
        for a in &self.aggregates {
            match a {
                Aggregate::CountRows => values.push(self.rows.clone()),
                Aggregate::CountSubjects => values.push(self.subjects.clone()),
                Aggregate::Sum(c) => values.push(self.sums[column(c)].clone()),
                Aggregate::Avg(c) => {
                    values.push(self.sums[column(c)].clone());
                    avg_counts.push(self.rows.clone());
                }
            }
        }
        Totals {
            groups,
            values,
            avg_counts,
            rows_scanned: self.scanned,
            rows_dropped: self.dropped,
        }
    }
}
