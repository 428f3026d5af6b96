//! Pseudonymous extracts (DESIGN.md, mode `pseudonymous`): rows whose
//! `subject_id` and `identifier` values are replaced by per-agreement
//! tokens ([`custos_privacy::tokens`]), whose quasi-identifiers are
//! generalised to the grant's level, and in which every row shares its
//! class with at least `k - 1` other people (smaller classes are left out).
//!
//! Two passes over the bucket files keep memory bounded by the number of
//! quasi-identifier classes, not by the extract: the first reads only the
//! quasi and filter columns and counts classes (so the row cap is checked
//! before any identity is decrypted), the second tokenises and hands each
//! released row to a [`RowSink`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use arrow::array::{Array, Date32Array, Int64Array, RecordBatch, StringArray};
use custos_model::schema::{SUBJECT_KEY_COLUMN, canonical_subject};
use custos_model::{ColumnClass, ColumnType, DatasetSchema};
use custos_policy::{Generalisation, ScopeFilter, ScopeValue};
use custos_privacy::tokens::{
    StoredValue, TokenError, Tokeniser, display, generalise, scope_value,
};
use custos_store::DatasetReader;

/// Why an extract cannot be made. Messages never quote a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// The extract would hold more rows than the grant allows (how many
    /// is not said: that would be an exact count of private rows).
    #[error(
        "the extract would hold more rows than the grant's cap of {cap}: narrow it with --where"
    )]
    OverCap {
        /// The grant's `max_rows`.
        cap: u64,
    },
    /// A value could not be tokenised.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A bucket file has no hidden subject key (written before it existed).
    #[error("the dataset was ingested before subject keys existed: ingest it again")]
    NoSubjectKey,
    /// Reading the dataset failed.
    #[error(transparent)]
    Dataset(#[from] custos_store::DatasetError),
    /// The output could not be written.
    #[error("the extract could not be written: {0}")]
    Sink(String),
}

/// A cell as stored, borrowed from its Arrow array.
fn stored<'a>(batch: &'a RecordBatch, name: &str, row: usize) -> StoredValue<'a> {
    let Some(array) = batch.column_by_name(name) else {
        return StoredValue::Null;
    };
    if array.is_null(row) {
        return StoredValue::Null;
    }
    if let Some(a) = array.as_any().downcast_ref::<Int64Array>() {
        return StoredValue::Int(a.value(row));
    }
    if let Some(a) = array.as_any().downcast_ref::<Date32Array>() {
        return StoredValue::Date(i64::from(a.value(row)));
    }
    if let Some(a) = array.as_any().downcast_ref::<StringArray>() {
        return StoredValue::Text(a.value(row));
    }
    StoredValue::Null
}

/// What one extract releases and how (from a validated pseudonymous grant).
#[derive(Debug)]
pub struct ExtractSpec {
    /// Output columns, in the grant's order.
    pub columns: Vec<String>,
    /// Identifying columns whose tokens keep their format.
    pub keep_format: BTreeSet<String>,
    /// Quasi-identifier generalisations.
    pub generalise: BTreeMap<String, Generalisation>,
    /// k of k-anonymity.
    pub k: u32,
    /// Most rows released.
    pub max_rows: u64,
    /// The grant's row scope and the requester's `--where`, both must hold.
    pub filters: Vec<ScopeFilter>,
    /// Subject keys of protected people: their rows are left out before
    /// classes are counted, as if they were not in the dataset.
    pub excluded: HashSet<i64>,
}

/// Receives released rows, in order; nothing reaches it before the row
/// cap and the class sizes have been checked.
pub trait RowSink {
    /// One released row: tokens, generalised and plain values as text.
    fn row(&mut self, values: &[Option<String>]) -> Result<(), String>;
}

/// What an extract released. Nothing here counts what was left out: how
/// many rows or people a filter matched or k-anonymity suppressed is an
/// exact count of private rows, which no answer releases.
#[derive(Debug, Clone)]
pub struct ExtractSummary {
    /// Rows released.
    pub rows_released: u64,
    /// Quasi-identifier classes released.
    pub classes_released: u64,
    /// The distinct subject ids of the released rows (for ledger
    /// commitments and subject reports; never written anywhere).
    pub subjects: Vec<String>,
}

/// The quasi-identifier class of a row: its generalised quasi values.
type ClassKey = Vec<Option<String>>;

/// What k-anonymity counts people in: a 128-bit digest of one class, or
/// of the sorted set of classes of one person's rows (their profile).
/// (128 bits: two groups merging by chance would need ~2^64 groups.)
type GroupKey = [u8; 16];

/// One bucket sorted into groups: per batch, per row, its group and class
/// digest (`None`: out of scope or protected); each group's size here.
struct BucketGroups {
    rows: Vec<Vec<Option<(GroupKey, GroupKey)>>>,
    sizes: HashMap<GroupKey, ClassSize>,
}

/// The digest of one class (its values, `None` told apart from empty).
fn digest_class(class: &ClassKey) -> GroupKey {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for value in class {
        match value {
            None => h.update([0]),
            Some(v) => {
                h.update([1]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(v.as_bytes());
            }
        }
    }
    truncate(h.finalize().as_slice())
}

/// The digest of a person's profile: their class digests, in order.
fn digest_profile(classes: &BTreeSet<GroupKey>) -> GroupKey {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"profile");
    for class in classes {
        h.update(class);
    }
    truncate(h.finalize().as_slice())
}

fn truncate(digest: &[u8]) -> GroupKey {
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// How big a group is: people decide k-anonymity, rows decide the row cap.
#[derive(Debug, Default, Clone, Copy)]
struct ClassSize {
    people: u64,
    rows: u64,
}

impl ExtractSpec {
    /// The columns a row's class is made of: the granted quasi-identifiers
    /// and the granted public columns (released as they are, so they
    /// split people as much as any quasi-identifier).
    fn class_columns<'s>(&'s self, schema: &'s DatasetSchema) -> Vec<(&'s str, ColumnType)> {
        self.columns
            .iter()
            .filter_map(|name| schema.column(name))
            .filter(|c| matches!(c.class, ColumnClass::Quasi | ColumnClass::Public))
            .map(|c| (c.name.as_str(), c.ty))
            .collect()
    }

    /// Whether the released columns link one person's rows: any token
    /// (of a `subject_id` or `identifier` column) is the same on each.
    fn links_rows(&self, schema: &DatasetSchema) -> bool {
        self.columns
            .iter()
            .filter_map(|name| schema.column(name))
            .any(|c| c.class.is_identifying())
    }

    fn in_scope(&self, batch: &RecordBatch, row: usize) -> bool {
        self.filters.iter().all(|f| {
            let values: Vec<ScopeValue> = f
                .columns()
                .iter()
                .map(|c| scope_value(&stored(batch, c, row)))
                .collect();
            f.matches(&values)
        })
    }

    fn class_of(&self, quasi: &[(&str, ColumnType)], batch: &RecordBatch, row: usize) -> ClassKey {
        quasi
            .iter()
            .map(|(name, ty)| {
                let value = stored(batch, name, row);
                match self.generalise.get(*name) {
                    Some(rule) => generalise(*rule, &value),
                    None => display(&value, *ty),
                }
            })
            .collect()
    }

    /// One bucket's rows sorted into groups (see [`GroupKey`]): each row's
    /// group and class (`None` when out of scope or protected), and each
    /// group's people and rows in this bucket. A subject's rows never
    /// span buckets, so per-bucket counts add up to the dataset's.
    fn bucket_groups(
        &self,
        class_columns: &[(&str, ColumnType)],
        linked: bool,
        batches: &[RecordBatch],
    ) -> Result<BucketGroups, ExtractError> {
        // Each in-scope person's class digests and rows; each row's person
        // and class digest.
        let mut people: HashMap<i64, (BTreeSet<GroupKey>, u64)> = HashMap::new();
        let mut keyed_rows: Vec<Vec<Option<(i64, GroupKey)>>> = Vec::with_capacity(batches.len());
        for batch in batches {
            let keys = batch
                .column_by_name(SUBJECT_KEY_COLUMN)
                .and_then(|a| a.as_any().downcast_ref::<Int64Array>())
                .ok_or(ExtractError::NoSubjectKey)?;
            let mut batch_rows = Vec::with_capacity(batch.num_rows());
            for row in 0..batch.num_rows() {
                let key = keys.value(row);
                if !self.in_scope(batch, row) || self.excluded.contains(&key) {
                    batch_rows.push(None);
                    continue;
                }
                let class = digest_class(&self.class_of(class_columns, batch, row));
                let person = people.entry(key).or_default();
                person.0.insert(class);
                person.1 += 1;
                batch_rows.push(Some((key, class)));
            }
            keyed_rows.push(batch_rows);
        }
        // Unlinked rows: a group is a class, its people the distinct
        // subjects with a row in it. Linked rows: a group is the set of
        // classes of one person's rows (their "profile"), since the tokens
        // show the requester that those rows are one person's.
        let mut sizes: HashMap<GroupKey, ClassSize> = HashMap::new();
        let mut profiles: HashMap<i64, GroupKey> = HashMap::new();
        for (key, (classes, n)) in &people {
            if linked {
                let group = digest_profile(classes);
                let size = sizes.entry(group).or_default();
                size.people += 1;
                size.rows += n;
                profiles.insert(*key, group);
            } else {
                for class in classes {
                    sizes.entry(*class).or_default().people += 1;
                }
            }
        }
        let rows = keyed_rows
            .into_iter()
            .map(|batch_rows| {
                batch_rows
                    .into_iter()
                    .map(|r| {
                        r.map(|(key, class)| {
                            if !linked {
                                sizes.entry(class).or_default().rows += 1;
                            }
                            (profiles.get(&key).copied().unwrap_or(class), class)
                        })
                    })
                    .collect()
            })
            .collect();
        Ok(BucketGroups { rows, sizes })
    }

    /// Runs both passes over `reader`'s buckets, handing released rows to
    /// `sink`. Refuses (before decrypting any identity) an extract over
    /// the cap.
    ///
    /// k-anonymity counts **people**, told apart by the hidden per-subject
    /// key (one person's three returns are one person), in groups of the
    /// class columns (quasi-identifiers and public columns). When the
    /// released columns carry a token, a person's rows are linked, so the
    /// group is the person's whole profile (the set of classes of their
    /// rows): someone who moved is two classes that few others share.
    pub fn run(
        &self,
        reader: &DatasetReader,
        tokens: &Tokeniser,
        sink: &mut dyn RowSink,
    ) -> Result<ExtractSummary, ExtractError> {
        let schema = reader.schema();
        let class_columns = self.class_columns(schema);
        let linked = self.links_rows(schema);
        let mut pass_one: Vec<&str> = class_columns.iter().map(|(n, _)| *n).collect();
        for f in &self.filters {
            pass_one.extend(f.columns().iter().map(String::as_str));
        }
        pass_one.push(SUBJECT_KEY_COLUMN);
        // Pass 1: group sizes in people, without identities.
        let mut groups: HashMap<GroupKey, ClassSize> = HashMap::new();
        for bucket in 0..reader.bucket_count() {
            let batches = reader.bucket_batches(bucket, false, Some(&pass_one))?;
            for (group, size) in self.bucket_groups(&class_columns, linked, &batches)?.sizes {
                let total = groups.entry(group).or_default();
                total.people += size.people;
                total.rows += size.rows;
            }
        }
        let k = u64::from(self.k);
        let rows_released: u64 = groups
            .values()
            .filter(|c| c.people >= k)
            .map(|c| c.rows)
            .sum();
        if rows_released > self.max_rows {
            return Err(ExtractError::OverCap { cap: self.max_rows });
        }
        // Pass 2: released rows, tokenised.
        let subject_column = schema.subject_column().name.clone();
        let mut wanted: Vec<&str> = self.columns.iter().map(String::as_str).collect();
        wanted.push(&subject_column);
        wanted.extend(pass_one.iter().copied());
        let mut subjects: HashSet<String> = HashSet::new();
        let mut classes: HashSet<GroupKey> = HashSet::new();
        let mut values: Vec<Option<String>> = Vec::with_capacity(self.columns.len());
        let mut written = 0u64;
        // A subject's rows share a bucket: tokens are cached per bucket
        // (FF1 costs microseconds), which bounds the cache by a bucket.
        let mut cache: HashMap<(usize, String), String> = HashMap::new();
        if rows_released > 0 {
            for bucket in 0..reader.bucket_count() {
                cache.clear();
                let batches = reader.bucket_batches(bucket, true, Some(&wanted))?;
                let sorted = self.bucket_groups(&class_columns, linked, &batches)?;
                for (batch, rows) in batches.iter().zip(sorted.rows) {
                    for (row, group) in rows.into_iter().enumerate() {
                        let Some((group, class)) = group else {
                            continue;
                        };
                        if groups.get(&group).is_none_or(|c| c.people < k) {
                            continue;
                        }
                        values.clear();
                        for (position, name) in self.columns.iter().enumerate() {
                            values.push(self.release(
                                schema,
                                tokens,
                                &mut cache,
                                (batch, row),
                                (position, name),
                            )?);
                        }
                        if let StoredValue::Text(s) = stored(batch, &subject_column, row) {
                            subjects.insert(s.to_owned());
                        } else if let StoredValue::Int(v) = stored(batch, &subject_column, row) {
                            subjects.insert(v.to_string());
                        }
                        classes.insert(class);
                        sink.row(&values).map_err(ExtractError::Sink)?;
                        written += 1;
                    }
                }
            }
        }
        debug_assert_eq!(written, rows_released);
        let mut subjects: Vec<String> = subjects.into_iter().collect();
        subjects.sort_unstable();
        Ok(ExtractSummary {
            rows_released: written,
            classes_released: classes.len() as u64,
            subjects,
        })
    }

    /// One released cell: a token, a generalised value or the value.
    fn release(
        &self,
        schema: &DatasetSchema,
        tokens: &Tokeniser,
        cache: &mut HashMap<(usize, String), String>,
        (batch, row): (&RecordBatch, usize),
        (position, name): (usize, &str),
    ) -> Result<Option<String>, ExtractError> {
        let Some(column) = schema.column(name) else {
            return Ok(None);
        };
        let value = stored(batch, name, row);
        if column.class.is_identifying() {
            let Some(mut text) = display(&value, column.ty) else {
                return Ok(None);
            };
            if column.class == ColumnClass::SubjectId && !self.keep_format.contains(name) {
                // One person, one token, however the source spelled the id.
                text = canonical_subject(&text).into_owned();
            }
            let key = (position, text);
            if let Some(token) = cache.get(&key) {
                return Ok(Some(token.clone()));
            }
            let token = if self.keep_format.contains(name) {
                tokens.format_preserving(name, &key.1)?
            } else {
                tokens.token(name, &key.1)
            };
            cache.insert(key, token.clone());
            return Ok(Some(token));
        }
        Ok(match self.generalise.get(name) {
            Some(rule) => generalise(*rule, &value),
            None => display(&value, column.ty),
        })
    }
}
