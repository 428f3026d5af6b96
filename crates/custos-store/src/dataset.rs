//! Datasets of a home: ingest (the orchestration around [`crate::ingest`]),
//! the catalogue, and reading a subject's rows from one bucket file.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::compute::kernels::cmp::eq;
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderBuilder, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
    RowFilter, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::AsyncReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::digests::{DigestCache, FileDigests};
use crate::home::{Home, now_rfc3339, sync_dir};
use crate::ingest::{
    FileEncryption, IngestError, IngestProgress, WrittenDataset, io_err, write_buckets,
};
use crate::keys::{DataKey, KeyError, random_bytes};
use crate::layout::{bucket_aad, bucket_file_name, choose_bucket_count, valid_dataset_name};
use crate::meta::{DatasetRecord, MetaError};
use crate::objects::{ObjectFiles, PinnedFile};
use custos_model::schema::{
    ColumnType, DatasetSchema, SUBJECT_KEY_COLUMN, SchemaError, canonical_subject,
};

/// Prefix of staging directories of ingests in progress.
const STAGING_PREFIX: &str = ".ingest-";
/// Lock file held by the process writing a staging directory.
const LOCK_FILE: &str = ".lock";

/// Errors reading a dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// No dataset by that name.
    #[error("no dataset `{0}`")]
    NotFound(String),
    /// A column that the dataset does not have.
    #[error("dataset `{dataset}` has no column `{column}`")]
    NoSuchColumn {
        /// The dataset.
        dataset: String,
        /// The column asked for.
        column: String,
    },
    /// A subject id that cannot be a value of the subject column.
    #[error("the subject id is not a valid value of the dataset's subject column")]
    BadSubject,
    /// The stored schema no longer parses (corrupted catalogue).
    #[error("stored schema of `{dataset}` is invalid: {cause}")]
    Schema {
        /// The dataset.
        dataset: String,
        /// Why.
        cause: SchemaError,
    },
    /// A data file failed to open, decrypt or decode.
    #[error("dataset `{dataset}`, file `{file}`: {message}")]
    File {
        /// The dataset.
        dataset: String,
        /// The file.
        file: String,
        /// What failed.
        message: String,
    },
    /// A file is not what was ingested (or the catalogue's record of the
    /// files does not match the ledger's); nothing was read from it.
    #[error("dataset `{dataset}` was tampered with: {problem}")]
    Tampered {
        /// The dataset.
        dataset: String,
        /// What was found.
        problem: String,
    },
    /// A key problem.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A metadata store problem.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// What a dataset looks like from outside: never values.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetSummary {
    /// Name.
    pub name: String,
    /// Number of rows.
    pub rows: u64,
    /// Bucket files.
    pub buckets: u32,
    /// Bytes on disk (encrypted).
    pub stored_bytes: u64,
    /// When it was ingested (RFC 3339).
    pub created_at: String,
    /// SHA-256 of the schema text.
    pub schema_sha256: String,
    /// The validated schema.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub schema: DatasetSchema,
    /// Whether `rows` and `stored_bytes` are withheld from this caller
    /// (shown as 0): exact sizes of private data are for admins and
    /// overseers, not requesters.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sizes_withheld: bool,
}

/// The result of a successful ingest.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// What was stored.
    pub dataset: DatasetSummary,
    /// Wall-clock seconds the ingest took.
    pub seconds: f64,
}

fn storage_dir(home: &Home, storage_id: &str) -> PathBuf {
    home.datasets_dir().join(storage_id)
}

fn summary(record: &DatasetRecord) -> Result<DatasetSummary, DatasetError> {
    let schema =
        DatasetSchema::from_toml(&record.schema_toml).map_err(|cause| DatasetError::Schema {
            dataset: record.name.clone(),
            cause,
        })?;
    Ok(DatasetSummary {
        name: record.name.clone(),
        rows: record.row_count,
        buckets: record.bucket_count,
        stored_bytes: record.stored_bytes,
        created_at: record.created_at.clone(),
        schema_sha256: record.schema_sha256.clone(),
        schema,
        sizes_withheld: false,
    })
}

/// Removes what crashed ingests left: staging directories whose writer is
/// gone (their lock can be taken) and dataset directories that the catalogue
/// does not know. Directories locked by a live ingest are left alone.
pub async fn remove_leftovers(home: &Home) -> Result<usize, IngestError> {
    let dir = home.datasets_dir();
    let known: std::collections::HashSet<String> = home
        .meta()
        .datasets()
        .await?
        .into_iter()
        .map(|d| d.storage_id)
        .collect();
    let mut removed = 0;
    for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if known.contains(&name) {
            continue;
        }
        let path = entry.path();
        let lock = path.join(LOCK_FILE);
        let abandoned = match fs::File::open(&lock) {
            Ok(f) => f.try_lock().is_ok(),
            // No lock file: a staging directory that never got one, or a
            // directory renamed into place whose catalogue insert never ran.
            Err(_) => true,
        };
        // A commit may have finished (and dropped its lock) since `known` was
        // read: ask the catalogue again before deleting anything.
        let committed_meanwhile = home
            .meta()
            .datasets()
            .await?
            .iter()
            .any(|d| d.storage_id == name);
        if abandoned && !committed_meanwhile && path.is_dir() {
            fs::remove_dir_all(&path).map_err(io_err(&path))?;
            removed += 1;
        }
    }
    // Files in an object store are not tidied here: see `crate::objects`.
    Ok(removed)
}

fn object_err(e: crate::home::HomeError) -> IngestError {
    IngestError::Parquet(e.to_string())
}

/// A dataset whose files are written and durable but which does not exist
/// yet: [`StagedDataset::commit`] makes it exist, dropping it discards it.
/// The broker writes the ledger entry between the two.
#[derive(Debug)]
pub struct StagedDataset {
    record: DatasetRecord,
    staging: PathBuf,
    final_dir: PathBuf,
    lock: Option<fs::File>,
    /// The object store the files were uploaded to, if not local.
    uploaded: Option<Arc<ObjectFiles>>,
    summary: DatasetSummary,
    started: Instant,
    committed: bool,
}

impl StagedDataset {
    /// What will exist after commit.
    pub fn summary(&self) -> &DatasetSummary {
        &self.summary
    }

    /// The directory name under `datasets/` the files will have.
    pub fn storage_id(&self) -> &str {
        &self.record.storage_id
    }

    /// The SHA-256 of each file written (to ledger before the commit).
    pub fn file_digests(&self) -> &FileDigests {
        &self.record.file_digests
    }

    /// Makes the dataset exist: renames its files into place and records it
    /// in the catalogue (the commit point), with the ledger index of the
    /// ingest entry that recorded its digests.
    pub async fn commit(
        mut self,
        home: &Home,
        ingest_entry: Option<u64>,
    ) -> Result<IngestReport, IngestError> {
        self.record.ingest_entry = ingest_entry;
        if self.uploaded.is_none() {
            fs::rename(&self.staging, &self.final_dir).map_err(io_err(&self.final_dir))?;
            sync_dir(&home.datasets_dir()).map_err(|e| IngestError::Parquet(e.to_string()))?;
        }
        // INVARIANT: this insert is the commit point; before it, the dataset does not exist.
        home.meta()
            .insert_dataset(&self.record)
            .await
            .map_err(|e| match e {
                MetaError::AlreadyExists(_) => IngestError::Exists(self.record.name.clone()),
                other => other.into(),
            })?;
        self.committed = true;
        if self.uploaded.is_some() {
            // The files live in the object store; the local copy was staging.
            let _ = fs::remove_dir_all(&self.staging);
        }
        let _ = fs::remove_file(self.final_dir.join(LOCK_FILE));
        drop(self.lock.take());
        Ok(IngestReport {
            dataset: self.summary.clone(),
            seconds: self.started.elapsed().as_secs_f64(),
        })
    }
}

impl Drop for StagedDataset {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
            let _ = fs::remove_dir_all(&self.final_dir);
            if let Some(objects) = &self.uploaded {
                objects.forget_dataset(&self.record.storage_id);
            }
        }
    }
}

/// Ingests `csv` as dataset `name` with the schema in `schema_path`
/// ([`stage`] then [`StagedDataset::commit`]).
///
/// All or nothing: on any error, and on a crash, no dataset exists afterwards
/// and a re-run works.
pub async fn ingest(
    home: &Home,
    name: &str,
    schema_path: &Path,
    csv_path: &Path,
    progress: Arc<dyn IngestProgress>,
) -> Result<IngestReport, IngestError> {
    stage(home, name, schema_path, csv_path, progress)
        .await?
        .commit(home, None)
        .await
}

/// Validates and writes `csv` as the files of dataset `name`, durably, in a
/// locked staging directory. Nothing exists until the result is committed.
pub async fn stage(
    home: &Home,
    name: &str,
    schema_path: &Path,
    csv_path: &Path,
    progress: Arc<dyn IngestProgress>,
) -> Result<StagedDataset, IngestError> {
    let started = Instant::now();
    if !valid_dataset_name(name) {
        return Err(IngestError::BadName(name.to_owned()));
    }
    let schema_toml = fs::read_to_string(schema_path).map_err(io_err(schema_path))?;
    let schema = DatasetSchema::from_toml(&schema_toml).map_err(|cause| IngestError::Schema {
        path: schema_path.to_owned(),
        cause,
    })?;
    if home.meta().dataset(name).await?.is_some() {
        return Err(IngestError::Exists(name.to_owned()));
    }
    remove_leftovers(home).await?;

    let mut id_bytes = [0u8; 8];
    random_bytes(&mut id_bytes)?;
    let storage_id = format!("{name}.{}", hex::encode(id_bytes));
    let staging = home
        .datasets_dir()
        .join(format!("{STAGING_PREFIX}{storage_id}"));
    fs::create_dir(&staging).map_err(io_err(&staging))?;
    let lock_path = staging.join(LOCK_FILE);
    let lock = fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    let mut staged = StagedDataset {
        record: DatasetRecord {
            name: name.to_owned(),
            storage_id: storage_id.clone(),
            schema_sha256: hex::encode(Sha256::digest(schema_toml.as_bytes())),
            schema_toml,
            wrapped_key: Vec::new(),
            bucket_count: 0,
            row_count: 0,
            stored_bytes: 0,
            created_at: String::new(),
            file_digests: FileDigests::default(),
            ingest_entry: None,
        },
        final_dir: storage_dir(home, &storage_id),
        staging,
        lock: Some(lock),
        uploaded: None,
        summary: DatasetSummary {
            name: name.to_owned(),
            rows: 0,
            buckets: 0,
            stored_bytes: 0,
            created_at: String::new(),
            schema_sha256: String::new(),
            schema: schema.clone(),
            sizes_withheld: false,
        },
        started,
        committed: false,
    };

    let buckets = {
        let mut sample = vec![0u8; 64 * 1024];
        let mut file = fs::File::open(csv_path).map_err(io_err(csv_path))?;
        let n = std::io::Read::read(&mut file, &mut sample).map_err(io_err(csv_path))?;
        sample.truncate(n);
        let size = file.metadata().map_err(io_err(csv_path))?.len();
        choose_bucket_count(size, &sample)
    };
    let key = DataKey::generate()?;
    staged.record.wrapped_key = home.keys().wrap_data_key(&storage_id, &key)?;

    let (dir, sid, csv) = (
        staged.staging.clone(),
        storage_id.clone(),
        csv_path.to_owned(),
    );
    let written: WrittenDataset = tokio::task::spawn_blocking(move || {
        write_buckets(
            &dir,
            &sid,
            &schema,
            &csv,
            &key,
            buckets,
            FileEncryption::Encrypted,
            progress.as_ref(),
        )
    })
    .await
    .map_err(|_| IngestError::Parquet("the ingest task stopped unexpectedly".into()))??;
    sync_dir(&staged.staging).map_err(|e| IngestError::Parquet(e.to_string()))?;
    let names: Vec<String> = (0..buckets).map(bucket_file_name).collect();
    let dir = staged.staging.clone();
    staged.record.file_digests =
        tokio::task::spawn_blocking(move || FileDigests::compute(&dir, &names))
            .await
            .map_err(|_| IngestError::Parquet("hashing the files stopped unexpectedly".into()))?
            .map_err(io_err(&staged.staging))?;
    if let Some(objects) = home.objects() {
        let names: Vec<String> = (0..buckets).map(bucket_file_name).collect();
        if let Err(e) = objects.upload(&staged.staging, &storage_id, &names).await {
            // What was uploaded goes before the error is reported.
            return Err(match objects.delete_dataset(&storage_id).await {
                Ok(()) => object_err(e),
                Err(left) => IngestError::Parquet(format!(
                    "{e}; its partial files under `datasets/{storage_id}/` in the object store could not be removed ({left}): nobody can read them (their key was never committed), remove them by hand"
                )),
            });
        }
        // From here, dropping the staged dataset deletes the uploaded files.
        staged.uploaded = Some(Arc::clone(objects));
    }

    staged.record.bucket_count = buckets;
    staged.record.row_count = written.rows;
    staged.record.stored_bytes = written.bytes;
    staged.record.created_at = now_rfc3339();
    staged.summary = summary(&staged.record).map_err(|e| IngestError::Parquet(e.to_string()))?;
    Ok(staged)
}

/// Whether `name` is an allowed dataset name (`[a-z0-9_-]{1,64}`).
pub fn valid_name(name: &str) -> bool {
    valid_dataset_name(name)
}

/// All datasets of a home.
pub async fn list(home: &Home) -> Result<Vec<DatasetSummary>, DatasetError> {
    home.meta().datasets().await?.iter().map(summary).collect()
}

/// One dataset's summary.
pub async fn describe(home: &Home, name: &str) -> Result<DatasetSummary, DatasetError> {
    let record = home
        .meta()
        .dataset(name)
        .await?
        .ok_or_else(|| DatasetError::NotFound(name.to_owned()))?;
    summary(&record)
}

/// The rows of a bucket file whose pages may hold `subject_key`, from the
/// page index of the hidden subject-key column (rows are sorted by it
/// within each row group). `None` when the file has no such index (written
/// before it existed): then every row is read, and the subject filter alone
/// decides, as it always does.
fn pages_with_key(metadata: &ParquetMetaData, subject_key: i64) -> Option<RowSelection> {
    let key_column = metadata
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.name() == SUBJECT_KEY_COLUMN)?;
    let column_index = metadata.column_index()?;
    let offset_index = metadata.offset_index()?;
    let mut selectors = Vec::new();
    for (group, row_group) in metadata.row_groups().iter().enumerate() {
        let rows = usize::try_from(row_group.num_rows()).ok()?;
        let ColumnIndexMetaData::INT64(index) = column_index.get(group)?.get(key_column)? else {
            return None;
        };
        let pages = offset_index.get(group)?.get(key_column)?.page_locations();
        let mut at = 0usize;
        for (page, location) in pages.iter().enumerate() {
            let start = usize::try_from(location.first_row_index).ok()?;
            let end = match pages.get(page + 1) {
                Some(next) => usize::try_from(next.first_row_index).ok()?,
                None => rows,
            };
            let holds = match (index.min_value(page), index.max_value(page)) {
                (Some(lo), Some(hi)) => *lo <= subject_key && subject_key <= *hi,
                // A page without statistics may hold it.
                _ => true,
            };
            if holds {
                if start > at {
                    selectors.push(RowSelector::skip(start - at));
                }
                selectors.push(RowSelector::select(end - start));
                at = end;
            }
        }
        if rows > at {
            selectors.push(RowSelector::skip(rows - at));
        }
    }
    Some(RowSelection::from(selectors))
}

/// An object store for the query engine, and the URL its paths start with.
pub type EngineStore = (url::Url, Arc<dyn object_store::ObjectStore>);

/// What a subject look-up reads of a bucket file: the pages whose key
/// range may hold the subject, the rows whose subject column matches, and
/// only the wanted columns. The same for a local file and a ranged read.
struct SubjectFilter {
    subject_index: usize,
    wanted: Vec<usize>,
    /// The subject id in its stored type (canonical spelling for text).
    target: Arc<dyn Array>,
    subject_key: i64,
}

impl SubjectFilter {
    fn apply<T>(self, builder: ArrowReaderBuilder<T>) -> ArrowReaderBuilder<T> {
        let builder = match pages_with_key(builder.metadata(), self.subject_key) {
            Some(selection) => builder.with_row_selection(selection),
            None => builder,
        };
        let descr = builder.parquet_schema();
        let predicate_mask = ProjectionMask::roots(descr, [self.subject_index]);
        let output_mask = ProjectionMask::roots(descr, self.wanted.iter().copied());
        let target = self.target;
        let predicate = ArrowPredicateFn::new(
            predicate_mask,
            move |batch: RecordBatch| -> Result<BooleanArray, arrow::error::ArrowError> {
                // Text ids are compared in their canonical spelling, as
                // they were placed at ingest.
                if let (Some(stored), Some(wanted)) = (
                    batch.column(0).as_any().downcast_ref::<StringArray>(),
                    target.as_any().downcast_ref::<StringArray>(),
                ) {
                    let wanted = wanted.value(0);
                    return Ok(stored
                        .iter()
                        .map(|v| v.map(|v| canonical_subject(v) == wanted))
                        .collect());
                }
                eq(batch.column(0), &arrow::array::Scalar::new(target.clone()))
            },
        );
        builder
            .with_projection(output_mask)
            .with_row_filter(RowFilter::new(vec![Box::new(predicate)]))
    }
}

/// An opened dataset: its schema and the keys to read its files.
#[derive(Debug)]
pub struct DatasetReader {
    record: DatasetRecord,
    schema: DatasetSchema,
    key: DataKey,
    dir: PathBuf,
    digests: Arc<DigestCache>,
    objects: Option<Arc<ObjectFiles>>,
}

impl DatasetReader {
    /// Opens dataset `name` of `home` (unwrapping its data key).
    pub async fn open(home: &Home, name: &str) -> Result<Self, DatasetError> {
        let record = home
            .meta()
            .dataset(name)
            .await?
            .ok_or_else(|| DatasetError::NotFound(name.to_owned()))?;
        let schema = summary(&record)?.schema;
        let key = home
            .keys()
            .unwrap_data_key(&record.storage_id, &record.wrapped_key)?;
        let dir = storage_dir(home, &record.storage_id);
        Ok(Self {
            record,
            schema,
            key,
            dir,
            digests: home.digest_cache(),
            objects: home.objects().cloned(),
        })
    }

    /// The catalogue's record of the dataset (digests and ingest entry
    /// included), for holding it to the ledger.
    pub fn record(&self) -> &DatasetRecord {
        &self.record
    }

    /// Checks the dataset's directory (nothing added or deleted) and the
    /// files of `buckets` (every one if `None`) against the digests taken at
    /// ingest. Files already verified in their current state by this
    /// process are not hashed again.
    pub fn verify(&self, buckets: Option<&[u32]>) -> Result<(), DatasetError> {
        let names: Option<Vec<String>> =
            buckets.map(|list| list.iter().map(|b| bucket_file_name(*b)).collect());
        match &self.objects {
            Some(objects) => objects.verify(
                &self.record.storage_id,
                &self.record.file_digests,
                names.as_deref(),
            ),
            None => self.record.file_digests.check(
                &self.dir,
                &[LOCK_FILE],
                names.as_deref(),
                &self.digests,
            ),
        }
        .map_err(|problem| DatasetError::Tampered {
            dataset: self.record.name.clone(),
            problem: problem.to_string(),
        })
    }

    /// The bucket that holds `subject`'s rows (`None` if it cannot be a
    /// subject of this dataset).
    pub fn bucket_of(&self, subject: &str) -> Option<u32> {
        let canonical = self.schema.canonical_subject_id(subject)?;
        Some(
            self.key
                .bucketer(self.record.bucket_count)
                .place(canonical.as_bytes())
                .0,
        )
    }

    /// The dataset's schema.
    pub fn schema(&self) -> &DatasetSchema {
        &self.schema
    }

    /// The hidden subject key ([`SUBJECT_KEY_COLUMN`]) that `subject`'s
    /// rows carry in this dataset, from its canonical spelling as at
    /// ingest; `None` if it cannot be a subject here (letters for an
    /// integer id). Lets a caller leave a person out without decrypting
    /// anyone's identity.
    pub fn subject_key(&self, subject: &str) -> Option<i64> {
        let canonical = self.schema.canonical_subject_id(subject)?;
        Some(
            self.key
                .bucketer(self.record.bucket_count)
                .place(canonical.as_bytes())
                .1,
        )
    }

    /// Paths of the bucket files of a dataset in local files, once every
    /// one is verified against its ingest digest.
    pub fn bucket_paths(&self) -> Result<Vec<PathBuf>, DatasetError> {
        if self.objects.is_some() {
            return Err(self.file_error(0, "the files are in object storage, not local"));
        }
        self.verify(None)?;
        Ok((0..self.record.bucket_count)
            .map(|b| self.dir.join(bucket_file_name(b)))
            .collect())
    }

    /// Where the query engine finds each bucket file (a local path or an
    /// object URL), once every one is verified against its ingest digest.
    pub fn bucket_tables(&self) -> Result<Vec<String>, DatasetError> {
        self.verify(None)?;
        Ok((0..self.record.bucket_count)
            .map(|b| match &self.objects {
                Some(objects) => objects.engine_path(&self.record.storage_id, &bucket_file_name(b)),
                None => self.dir.join(bucket_file_name(b)).display().to_string(),
            })
            .collect())
    }

    /// The object store the query engine must read the files through, at
    /// the URL its paths start with (`None` for local files): a read-only
    /// view that serves only verified files, pinned to their verified ETag.
    pub fn engine_store(&self) -> Result<Option<EngineStore>, DatasetError> {
        match &self.objects {
            None => Ok(None),
            Some(objects) => Ok(Some((
                objects.engine_url().map_err(|e| self.file_error(0, e))?,
                objects.engine_store(),
            ))),
        }
    }

    fn file_error(&self, bucket: u32, message: impl ToString) -> DatasetError {
        DatasetError::File {
            dataset: self.record.name.clone(),
            file: bucket_file_name(bucket),
            message: message.to_string(),
        }
    }

    /// The decryption properties of one bucket file: the footer/data key,
    /// the identity key only if `identity`, and the file's AAD prefix.
    pub fn decryption_properties(
        &self,
        bucket: u32,
        identity: bool,
    ) -> Result<Arc<FileDecryptionProperties>, DatasetError> {
        let footer = self.key.footer_key();
        let identity_key = self.key.identity_key();
        let mut builder = FileDecryptionProperties::builder(footer.to_vec())
            .with_aad_prefix(bucket_aad(&self.record.storage_id, bucket));
        for c in &self.schema.columns {
            if c.class.is_identifying() {
                if identity {
                    builder = builder.with_column_key(&c.name, identity_key.to_vec());
                }
            } else {
                builder = builder.with_column_key(&c.name, footer.to_vec());
            }
        }
        builder = builder.with_column_key(SUBJECT_KEY_COLUMN, footer.to_vec());
        builder.build().map_err(|e| self.file_error(bucket, e))
    }

    /// The rows of one subject, reading only that subject's bucket file and
    /// decoding the other columns only for matching rows. `columns` limits
    /// the output to those columns (in that order); `None` returns all.
    pub fn subject_rows(
        &self,
        subject: &str,
        columns: Option<&[&str]>,
    ) -> Result<Vec<RecordBatch>, DatasetError> {
        let subject_column = self.schema.subject_column();
        let subject_index = self.schema.subject_index();
        let wanted = self.column_indexes(columns)?;
        // The bucket is chosen from the canonical form, as at ingest.
        let (target, canonical): (Arc<dyn Array>, String) = match subject_column.ty {
            ColumnType::Integer => {
                let v = subject
                    .parse::<i64>()
                    .map_err(|_| DatasetError::BadSubject)?;
                (Arc::new(Int64Array::from(vec![v])), v.to_string())
            }
            _ => {
                let canonical = canonical_subject(subject).into_owned();
                (
                    Arc::new(StringArray::from(vec![canonical.clone()])),
                    canonical,
                )
            }
        };
        let (bucket, subject_key) = self
            .key
            .bucketer(self.record.bucket_count)
            .place(canonical.as_bytes());
        self.verify(Some(&[bucket]))?;
        let decryption = self.decryption_properties(bucket, true)?;
        let filter = SubjectFilter {
            subject_index,
            wanted: wanted.clone(),
            target,
            subject_key,
        };
        let batches = match &self.objects {
            None => {
                let path = self.dir.join(bucket_file_name(bucket));
                let file = fs::File::open(&path).map_err(|e| self.file_error(bucket, e))?;
                let options = ArrowReaderOptions::new()
                    .with_page_index_policy(PageIndexPolicy::Optional)
                    .with_file_decryption_properties(decryption);
                let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)
                    .map_err(|e| self.file_error(bucket, e))?;
                filter
                    .apply(builder)
                    .build()
                    .map_err(|e| self.file_error(bucket, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| self.file_error(bucket, e))?
            }
            Some(objects) => self.read_remote(
                objects,
                bucket,
                PageIndexPolicy::Optional,
                decryption,
                move |builder| filter.apply(builder),
            )?,
        };
        // Reorder to the caller's column order (the mask keeps file order).
        let file_order: Vec<usize> = {
            let mut sorted = wanted.clone();
            sorted.sort_unstable();
            sorted.dedup();
            sorted
        };
        let indices: Vec<usize> = wanted
            .iter()
            .filter_map(|w| file_order.iter().position(|f| f == w))
            .collect();
        batches
            .into_iter()
            .filter(|batch| batch.num_rows() > 0)
            .map(|batch| {
                batch
                    .project(&indices)
                    .map_err(|e| self.file_error(bucket, e))
            })
            .collect()
    }

    /// Reads one bucket file from the object store: ranged GETs of the
    /// footer, the page index and the pages `configure` selects, each pinned
    /// to the ETag the file was verified at.
    fn read_remote(
        &self,
        objects: &Arc<ObjectFiles>,
        bucket: u32,
        page_index: PageIndexPolicy,
        decryption: Arc<FileDecryptionProperties>,
        configure: impl FnOnce(
            ArrowReaderBuilder<AsyncReader<PinnedFile>>,
        ) -> ArrowReaderBuilder<AsyncReader<PinnedFile>>
        + Send
        + 'static,
    ) -> Result<Vec<RecordBatch>, DatasetError> {
        let location = objects.file(&self.record.storage_id, &bucket_file_name(bucket));
        let options = ArrowReaderOptions::new()
            .with_page_index_policy(page_index)
            .with_file_decryption_properties(Arc::clone(&decryption));
        let reader = PinnedFile::open(objects, location.clone(), decryption, page_index)
            .ok_or_else(|| self.file_error(bucket, "changed since it was verified"))?;
        let read = objects
            .run(async move {
                let builder = ParquetRecordBatchStreamBuilder::new_with_options(reader, options)
                    .await
                    .map_err(|e| e.to_string())?;
                configure(builder)
                    .build()
                    .map_err(|e| e.to_string())?
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| self.file_error(bucket, e))?;
        read.map_err(|e| {
            if objects.verified_size(&location).is_none() {
                // The store refused the pinned ETag: replaced after its check.
                DatasetError::Tampered {
                    dataset: self.record.name.clone(),
                    problem: format!(
                        "`{}` was replaced or deleted after it was verified",
                        bucket_file_name(bucket)
                    ),
                }
            } else {
                self.file_error(bucket, e)
            }
        })
    }

    /// Number of bucket files.
    pub fn bucket_count(&self) -> u32 {
        self.record.bucket_count
    }

    /// Schema positions of `columns` in the order given (every column if
    /// `None`); an unknown name is an error. The hidden
    /// [`SUBJECT_KEY_COLUMN`] (an opaque per-subject number, not an
    /// identity) follows the schema's columns in every file.
    fn column_indexes(&self, columns: Option<&[&str]>) -> Result<Vec<usize>, DatasetError> {
        match columns {
            None => Ok((0..self.schema.columns.len()).collect()),
            Some(names) => names
                .iter()
                .map(|n| {
                    if *n == SUBJECT_KEY_COLUMN {
                        return Ok(self.schema.columns.len());
                    }
                    self.schema
                        .columns
                        .iter()
                        .position(|c| c.name == *n)
                        .ok_or_else(|| DatasetError::NoSuchColumn {
                            dataset: self.record.name.clone(),
                            column: (*n).to_owned(),
                        })
                })
                .collect(),
        }
    }

    /// The rows of one bucket file, only `columns` if given (file order).
    /// Identity columns are decrypted only if `identity`; asking for one
    /// without it is an error.
    pub fn bucket_batches(
        &self,
        bucket: u32,
        identity: bool,
        columns: Option<&[&str]>,
    ) -> Result<Vec<RecordBatch>, DatasetError> {
        let keep = self.column_indexes(columns)?;
        if !identity
            && keep.iter().any(|i| {
                self.schema
                    .columns
                    .get(*i)
                    .is_some_and(|c| c.class.is_identifying())
            })
        {
            return Err(self.file_error(
                bucket,
                "an identity column was asked for without the identity key",
            ));
        }
        self.read_bucket(bucket, identity, keep)
    }

    /// The rows of one bucket file, projected to the schema positions
    /// `keep` (a set: order and repeats do not matter).
    fn read_bucket(
        &self,
        bucket: u32,
        identity: bool,
        keep: Vec<usize>,
    ) -> Result<Vec<RecordBatch>, DatasetError> {
        self.verify(Some(&[bucket]))?;
        let decryption = self.decryption_properties(bucket, identity)?;
        if let Some(objects) = &self.objects {
            return self.read_remote(
                objects,
                bucket,
                PageIndexPolicy::Skip,
                decryption,
                move |builder| {
                    let mask = ProjectionMask::roots(builder.parquet_schema(), keep);
                    builder.with_projection(mask)
                },
            );
        }
        let options = ArrowReaderOptions::new().with_file_decryption_properties(decryption);
        let path = self.dir.join(bucket_file_name(bucket));
        let file = fs::File::open(&path).map_err(|e| self.file_error(bucket, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)
            .map_err(|e| self.file_error(bucket, e))?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), keep);
        builder
            .with_projection(mask)
            .build()
            .map_err(|e| self.file_error(bucket, e))?
            .map(|batch| batch.map_err(|e| self.file_error(bucket, e)))
            .collect()
    }

    /// Reads every row of every bucket (for tests, verification and the
    /// demo's true values). Identity columns are decrypted only if `identity`.
    pub fn scan(&self, identity: bool) -> Result<Vec<RecordBatch>, DatasetError> {
        let keep: Vec<usize> = self
            .schema
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| identity || !c.class.is_identifying())
            .map(|(i, _)| i)
            .collect();
        let mut out = Vec::new();
        for bucket in 0..self.record.bucket_count {
            out.extend(self.read_bucket(bucket, identity, keep.clone())?);
        }
        Ok(out)
    }
}
