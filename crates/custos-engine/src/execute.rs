//! Computing the true, bounded per-group totals of an aggregate query with
//! DataFusion over the dataset's encrypted Parquet files.
//!
//! DataFusion scans, decrypts and filters; Custos bounds each subject's
//! contribution and adds up in integers. The bounding runs per bucket file,
//! as many at once as there are cores: a subject's rows all live in one
//! bucket (the keyed hash of the subject id chooses it at ingest), so
//! per-subject state never spans files and memory stays at a few buckets'
//! worth. Subjects are told apart by the hidden subject-key column (a keyed
//! pseudonym written at ingest), so this path never holds the identity key
//! and never decrypts a subject id.
//!
//! Contribution bounding: each subject keeps at most `k` rows, the `k` with
//! the smallest hash of the row's content — a choice made by the subject's
//! data, never by the order rows arrived in.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, Date32Array, Int64Array, RecordBatch, StringArray, StringViewArray};
use async_trait::async_trait;
use custos_model::DatasetSchema;
use custos_model::schema::SUBJECT_KEY_COLUMN;
use custos_store::DatasetReader;
use datafusion::common::config::{EncryptionFactoryOptions, TableOptions};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::parquet_encryption::EncryptionFactory;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::parquet::encryption::decrypt::FileDecryptionProperties;
use datafusion::parquet::encryption::encrypt::FileEncryptionProperties;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

use custos_privacy::Totals;
use custos_privacy::bounds::{self, Binned};
use custos_privacy::quantile;
use custos_privacy::query::{Aggregate, AggregateQuery, Operand, group_domain};

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
    /// The dataset's files predate the subject-key column.
    #[error(
        "dataset `{0}` was ingested by an older Custos without the subject-key column: ingest it again to run aggregates"
    )]
    OldLayout(String),
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
            .and_then(custos_store::layout::parse_bucket_file_name)
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

/// Maps one group column's cells to their index in the column's domain.
#[derive(Debug, Clone)]
struct DomainIndex {
    by_text: HashMap<String, usize>,
    by_int: HashMap<i64, usize>,
    size: usize,
}

impl DomainIndex {
    fn new(domain: &[String]) -> Self {
        Self {
            by_text: domain
                .iter()
                .enumerate()
                .map(|(i, v)| (v.clone(), i))
                .collect(),
            by_int: domain
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.parse::<i64>().ok().map(|n| (n, i)))
                .collect(),
            size: domain.len(),
        }
    }

    /// The domain index of a cell; `None` for nulls and values outside it.
    fn of(&self, array: &dyn Array, row: usize) -> Option<usize> {
        if array.is_null(row) {
            return None;
        }
        let any = array.as_any();
        if let Some(a) = any.downcast_ref::<StringArray>() {
            return self.by_text.get(a.value(row)).copied();
        }
        if let Some(a) = any.downcast_ref::<StringViewArray>() {
            return self.by_text.get(a.value(row)).copied();
        }
        if let Some(a) = any.downcast_ref::<Int64Array>() {
            return self.by_int.get(&a.value(row)).copied();
        }
        None
    }
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

/// A column whose values the query reads, clamped to one range (the
/// analyst's clamp or the schema's bounds): the quantile candidates if a
/// quantile reads it, the bound grid if an unclamped sum or average does.
#[derive(Debug, Clone)]
struct ValueColumn {
    name: String,
    low: i64,
    high: i64,
    candidates: Option<Arc<Vec<i64>>>,
    bins: Option<Arc<Vec<i64>>>,
    /// Its column's index among the value columns read.
    source: usize,
}

impl ValueColumn {
    fn is(&self, name: &str, (low, high): (i64, i64)) -> bool {
        self.name == name && self.low == low && self.high == high
    }
}

/// The range an aggregate's operand is clamped to.
fn range(schema: &DatasetSchema, operand: &Operand) -> (i64, i64) {
    operand.range(schema).unwrap_or((0, 0))
}

/// What every bucket's bounding needs to know.
#[derive(Debug)]
struct Layout {
    /// The value columns read, each once.
    read: Vec<String>,
    domains: Vec<DomainIndex>,
    groups: usize,
    values: Vec<ValueColumn>,
    contributions: usize,
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
    let groups = group_keys(&schema, &query.group_by);
    let mut values: Vec<ValueColumn> = Vec::new();
    for a in &query.aggregates {
        let Some(operand) = a.operand() else { continue };
        let (low, high) = range(&schema, operand);
        let position = match values
            .iter()
            .position(|v| v.is(&operand.column, (low, high)))
        {
            Some(p) => p,
            None => {
                values.push(ValueColumn {
                    name: operand.column.clone(),
                    low,
                    high,
                    candidates: None,
                    bins: None,
                    source: 0,
                });
                values.len() - 1
            }
        };
        let slot = &mut values[position];
        if matches!(a, Aggregate::Quantile { .. }) && slot.candidates.is_none() {
            slot.candidates = Some(Arc::new(quantile::candidates(low, high)));
        }
        if !matches!(a, Aggregate::Quantile { .. })
            && operand.clamp.is_none()
            && slot.bins.is_none()
        {
            slot.bins = Some(Arc::new(bounds::grid(low, high)));
        }
    }
    // Each column is read once, however many ranges clamp it.
    let mut read: Vec<String> = Vec::new();
    for v in &mut values {
        v.source = match read.iter().position(|c| *c == v.name) {
            Some(p) => p,
            None => {
                read.push(v.name.clone());
                read.len() - 1
            }
        };
    }
    let layout = Arc::new(Layout {
        read,
        domains: query
            .group_by
            .iter()
            .map(|g| DomainIndex::new(&schema.column(g).map(group_domain).unwrap_or_default()))
            .collect(),
        groups: groups.len(),
        values,
        contributions: contributions.max(1) as usize,
    });
    let mut select: Vec<String> = vec![quote(SUBJECT_KEY_COLUMN)];
    select.extend(query.group_by.iter().map(|g| quote(g)));
    select.extend(layout.read.iter().map(|c| quote(c)));
    let sql_where = filter_sql
        .map(|f| format!(" WHERE {f}"))
        .unwrap_or_default();
    let ctx = session(Arc::clone(&reader), false);
    if let Some((url, store)) = reader.engine_store()? {
        ctx.register_object_store(&url, store);
    }
    let parallel = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let mut running = tokio::task::JoinSet::new();
    let mut total = BucketTotals::new(&layout);
    for (i, path) in reader.bucket_tables()?.into_iter().enumerate() {
        if running.len() >= parallel
            && let Some(done) = running.join_next().await
        {
            total.merge(done.map_err(engine)??);
        }
        let table = format!("bucket_{i}");
        ctx.register_parquet(&table, &path, ParquetReadOptions::default())
            .await
            .map_err(engine)?;
        let provider = ctx.table_provider(&table).await.map_err(engine)?;
        if provider
            .schema()
            .field_with_name(SUBJECT_KEY_COLUMN)
            .is_err()
        {
            running.abort_all();
            return Err(ExecuteError::OldLayout(query.dataset.clone()));
        }
        let sql = format!("SELECT {} FROM {table}{sql_where}", select.join(", "));
        let (ctx, layout) = (ctx.clone(), Arc::clone(&layout));
        running.spawn(async move {
            let batches = ctx
                .sql(&sql)
                .await
                .map_err(engine)?
                .collect()
                .await
                .map_err(engine)?;
            let _ = ctx.deregister_table(&table);
            tokio::task::spawn_blocking(move || bound_bucket(&layout, &batches))
                .await
                .map_err(engine)?
        });
    }
    while let Some(done) = running.join_next().await {
        total.merge(done.map_err(engine)??);
    }
    Ok(total.finish(query, &schema, &layout, groups))
}

/// One bucket's (or the sum of several buckets') bounded totals.
#[derive(Debug, Clone)]
struct BucketTotals {
    rows: Vec<i64>,
    subjects: Vec<i64>,
    /// Per value column, per group.
    sums: Vec<Vec<i64>>,
    /// Per value column, per group: kept rows with a value (the count of
    /// an average).
    present: Vec<Vec<i64>>,
    /// Per value column (empty unless a quantile reads it), per group.
    histograms: Vec<Vec<Vec<u64>>>,
    /// Per value column (empty unless an unclamped sum reads it), per group.
    binned: Vec<Vec<Binned>>,
    scanned: u64,
    dropped: u64,
}

impl BucketTotals {
    fn new(layout: &Layout) -> Self {
        Self {
            rows: vec![0; layout.groups],
            subjects: vec![0; layout.groups],
            sums: vec![vec![0; layout.groups]; layout.values.len()],
            present: vec![vec![0; layout.groups]; layout.values.len()],
            histograms: layout
                .values
                .iter()
                .map(|v| match &v.candidates {
                    Some(c) => vec![vec![0; 2 * c.len() + 1]; layout.groups],
                    None => Vec::new(),
                })
                .collect(),
            binned: layout
                .values
                .iter()
                .map(|v| match &v.bins {
                    Some(grid) => vec![Binned::new(grid.len()); layout.groups],
                    None => Vec::new(),
                })
                .collect(),
            scanned: 0,
            dropped: 0,
        }
    }

    fn merge(&mut self, other: Self) {
        fn add(a: &mut [i64], b: &[i64]) {
            for (x, y) in a.iter_mut().zip(b) {
                *x = x.saturating_add(*y);
            }
        }
        add(&mut self.rows, &other.rows);
        add(&mut self.subjects, &other.subjects);
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            add(a, b);
        }
        for (a, b) in self.present.iter_mut().zip(&other.present) {
            add(a, b);
        }
        for (a, b) in self.histograms.iter_mut().zip(&other.histograms) {
            for (x, y) in a.iter_mut().zip(b) {
                for (p, q) in x.iter_mut().zip(y) {
                    *p += q;
                }
            }
        }
        for (a, b) in self.binned.iter_mut().zip(&other.binned) {
            for (x, y) in a.iter_mut().zip(b) {
                x.merge(y);
            }
        }
        self.scanned += other.scanned;
        self.dropped += other.dropped;
    }

    fn finish(
        self,
        query: &AggregateQuery,
        schema: &DatasetSchema,
        layout: &Layout,
        groups: Vec<Vec<String>>,
    ) -> Totals {
        let slot = |o: &Operand| {
            let r = range(schema, o);
            layout
                .values
                .iter()
                .position(|v| v.is(&o.column, r))
                .unwrap_or(0)
        };
        let mut values = Vec::new();
        let mut avg_counts = Vec::new();
        let mut histograms = Vec::new();
        let mut binned = Vec::new();
        for a in &query.aggregates {
            let (value, histogram, bins) = match a {
                Aggregate::CountRows => (self.rows.clone(), Vec::new(), Vec::new()),
                Aggregate::CountSubjects => (self.subjects.clone(), Vec::new(), Vec::new()),
                Aggregate::Sum(o) | Aggregate::Avg(o) => {
                    let i = slot(o);
                    if matches!(a, Aggregate::Avg(_)) {
                        avg_counts.push(self.present[i].clone());
                    }
                    let bins = if o.clamp.is_none() {
                        self.binned[i].clone()
                    } else {
                        Vec::new()
                    };
                    (self.sums[i].clone(), Vec::new(), bins)
                }
                Aggregate::Quantile { operand, .. } => (
                    Vec::new(),
                    self.histograms[slot(operand)].clone(),
                    Vec::new(),
                ),
            };
            values.push(value);
            histograms.push(histogram);
            binned.push(bins);
        }
        Totals {
            groups,
            values,
            avg_counts,
            histograms,
            binned,
            rows_scanned: self.scanned,
            rows_dropped: self.dropped,
        }
    }
}

/// One candidate row of a bucket: its subject key and index.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    subject: i64,
    row: u32,
}

/// Bounds one bucket's rows (columns: subject key, group columns, value
/// columns) and adds them up.
fn bound_bucket(layout: &Layout, batches: &[RecordBatch]) -> Result<BucketTotals, ExecuteError> {
    let mut out = BucketTotals::new(layout);
    let width = layout.values.len();
    let group_columns = layout.domains.len();
    // Flat per-row storage: group index and clamped values.
    let mut row_group: Vec<u32> = Vec::new();
    let mut row_values: Vec<i64> = Vec::new();
    // Empty cells count in no sum, average or quantile (as in SQL).
    let mut row_present: Vec<bool> = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    for batch in batches {
        let subjects = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| engine("the subject-key column is not 64-bit integers"))?;
        'rows: for row in 0..batch.num_rows() {
            out.scanned += 1;
            if subjects.is_null(row) {
                continue;
            }
            // Rows outside the declared domain (or with an empty group
            // cell) belong to no released group.
            let mut group = 0usize;
            for (g, domain) in layout.domains.iter().enumerate() {
                let Some(i) = domain.of(batch.column(1 + g).as_ref(), row) else {
                    continue 'rows;
                };
                group = group * domain.size + i;
            }
            for v in &layout.values {
                let cell = int_at(batch.column(1 + group_columns + v.source).as_ref(), row);
                row_values.push(cell.map_or(0, |x| x.clamp(v.low, v.high)));
                row_present.push(cell.is_some());
            }
            let index = u32::try_from(row_group.len()).map_err(engine)?;
            row_group.push(u32::try_from(group).map_err(engine)?);
            candidates.push(Candidate {
                subject: subjects.value(row),
                row: index,
            });
        }
    }
    candidates.sort_unstable_by_key(|c| c.subject);
    let k = layout.contributions;
    // The hash of a row's own content: which rows a subject keeps when it
    // has more than `k`, independent of the order they arrived in.
    let content_hash = |c: &Candidate| {
        let row = c.row as usize;
        let mut h = DefaultHasher::new();
        c.subject.hash(&mut h);
        row_group[row].hash(&mut h);
        row_values[row * width..(row + 1) * width].hash(&mut h);
        h.finish()
    };
    let mut seen_groups: Vec<u32> = Vec::with_capacity(k);
    let mut over: Vec<(u64, Candidate)> = Vec::new();
    let mut kept: Vec<Candidate> = Vec::with_capacity(k);
    for run in candidates.chunk_by(|a, b| a.subject == b.subject) {
        kept.clear();
        if run.len() <= k {
            kept.extend_from_slice(run);
        } else {
            over.clear();
            over.extend(run.iter().map(|c| (content_hash(c), *c)));
            over.sort_unstable_by_key(|(tag, c)| (*tag, c.row));
            out.dropped += (run.len() - k) as u64;
            kept.extend(over[..k].iter().map(|(_, c)| *c));
        }
        seen_groups.clear();
        for c in &kept {
            let row = c.row as usize;
            let group = row_group[row];
            let g = group as usize;
            out.rows[g] += 1;
            if !seen_groups.contains(&group) {
                seen_groups.push(group);
                out.subjects[g] += 1;
            }
            for (i, v) in row_values[row * width..(row + 1) * width]
                .iter()
                .enumerate()
            {
                if !row_present[row * width + i] {
                    continue;
                }
                out.present[i][g] += 1;
                out.sums[i][g] = out.sums[i][g].saturating_add(*v);
                if let Some(grid) = &layout.values[i].candidates {
                    out.histograms[i][g][quantile::position(grid, *v)] += 1;
                }
                if let Some(grid) = &layout.values[i].bins {
                    out.binned[i][g].add(grid, *v);
                }
            }
        }
    }
    Ok(out)
}
