//! Pseudonymous extracts (DESIGN.md, mode `pseudonymous`): rows whose
//! `subject_id` and `identifier` values are replaced by per-agreement
//! tokens, whose quasi-identifiers are generalised to the grant's level,
//! and in which every row shares its quasi-identifiers with at least `k - 1`
//! others (smaller classes are suppressed and counted).
//!
//! Two passes over the bucket files keep memory bounded by the number of
//! quasi-identifier classes, not by the extract: the first reads only the
//! quasi and filter columns and counts classes (so the row cap is checked
//! before any identity is decrypted), the second tokenises and hands each
//! released row to a [`RowSink`].
//!
//! Tokens are this crate's own core, so hand-rolled on RustCrypto/`fpe`
//! primitives: a hex token is 128 bits of HMAC-SHA-256 under the
//! agreement's key, bound to the column; a format-keeping token is FF1
//! (NIST SP 800-38G, AES-256) over the value's digits with the column as
//! tweak. Both are deterministic within an agreement and unlinkable across
//! agreements, whose keys differ.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use aes::Aes256;
use arrow::array::{Array, Date32Array, Int64Array, RecordBatch, StringArray};
use custos_policy::{Generalisation, ScopeFilter, ScopeValue};
use custos_store::keys::hmac_sha256;
use custos_store::schema::{SUBJECT_KEY_COLUMN, canonical_subject, format_cents, format_date_days};
use custos_store::{ColumnClass, ColumnType, DatasetReader, DatasetSchema};
use fpe::ff1::{FF1, FlexibleNumeralString};
use zeroize::Zeroizing;

/// Digits a format-keeping token needs: FF1's domain must hold at least
/// 10^6 values (NIST SP 800-38G Rev. 1).
const FF1_MIN_DIGITS: usize = 6;

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
    /// A format-keeping token was asked for a value with letters, which
    /// FF1 over digits would leave in the clear.
    #[error(
        "column `{0}` holds letters, which a format-keeping token would leave in the clear; drop it from `keep_format`"
    )]
    NotDigits(String),
    /// A bucket file has no hidden subject key (written before it existed).
    #[error("the dataset was ingested before subject keys existed: ingest it again")]
    NoSubjectKey,
    /// A format-keeping token was asked for a value with too few digits.
    #[error(
        "column `{0}` has a value with fewer than {FF1_MIN_DIGITS} digits, so its token cannot keep its format; drop it from `keep_format`"
    )]
    TooFewDigits(String),
    /// Reading the dataset failed.
    #[error(transparent)]
    Dataset(#[from] custos_store::DatasetError),
    /// The output could not be written.
    #[error("the extract could not be written: {0}")]
    Sink(String),
    /// A key could not be set up.
    #[error("the token key could not be set up")]
    Key,
}

/// Per-agreement tokens. Keys are zeroized on drop and never printed.
pub struct Tokeniser {
    hmac_key: Zeroizing<[u8; 32]>,
    ff1: FF1<Aes256>,
}

impl std::fmt::Debug for Tokeniser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokeniser(<keys redacted>)")
    }
}

impl Tokeniser {
    /// Tokens under `agreement_key` (derived from the master key for one
    /// agreement); the HMAC and FF1 keys are separate subkeys of it.
    pub fn new(agreement_key: &[u8; 32]) -> Result<Self, ExtractError> {
        let hmac_key = Zeroizing::new(hmac_sha256(agreement_key, b"custos token/hmac"));
        let ff1_key = Zeroizing::new(hmac_sha256(agreement_key, b"custos token/ff1"));
        let ff1 = FF1::<Aes256>::new(ff1_key.as_slice(), 10).map_err(|_| ExtractError::Key)?;
        Ok(Self { hmac_key, ff1 })
    }

    /// A 32-hex-digit token for `value` of `column`.
    pub fn token(&self, column: &str, value: &str) -> String {
        let mut message = Vec::with_capacity(column.len() + 1 + value.len());
        message.extend_from_slice(column.as_bytes());
        message.push(0);
        message.extend_from_slice(value.as_bytes());
        let mac = hmac_sha256(self.hmac_key.as_slice(), &message);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(32);
        for byte in &mac[..16] {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        out
    }

    /// A token with `value`'s format: its digits enciphered with FF1 (the
    /// column as tweak), every other character kept in place.
    pub fn format_preserving(&self, column: &str, value: &str) -> Result<String, ExtractError> {
        let digits: Vec<u16> = value
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| u16::from(b - b'0'))
            .collect();
        if digits.len() < FF1_MIN_DIGITS {
            return Err(ExtractError::TooFewDigits(column.to_owned()));
        }
        // Only digits are enciphered; letters would pass through in the
        // clear (a street name, a town). Such a column needs hex tokens.
        if value.chars().any(char::is_alphabetic) {
            return Err(ExtractError::NotDigits(column.to_owned()));
        }
        let enciphered: Vec<u16> = self
            .ff1
            .encrypt(column.as_bytes(), &FlexibleNumeralString::from(digits))
            .map_err(|_| ExtractError::Key)?
            .into();
        let mut next = enciphered.into_iter();
        let mut out = String::with_capacity(value.len());
        for c in value.chars() {
            if c.is_ascii_digit() {
                let digit = next.next().ok_or(ExtractError::Key)?;
                out.push(char::from_digit(u32::from(digit), 10).ok_or(ExtractError::Key)?);
            } else {
                out.push(c);
            }
        }
        Ok(out)
    }
}

/// One quasi-identifier value coarsened by `rule`, from its stored form.
pub fn generalise(rule: Generalisation, value: &StoredValue<'_>) -> Option<String> {
    match (rule, value) {
        (Generalisation::Suppress, _) | (_, StoredValue::Null) => None,
        (Generalisation::Year, StoredValue::Date(days)) => {
            Some(format_date_days(*days).chars().take(4).collect())
        }
        (Generalisation::Month, StoredValue::Date(days)) => {
            Some(format_date_days(*days).chars().take(7).collect())
        }
        (Generalisation::Prefix(n), StoredValue::Text(text)) => {
            let kept: String = text.chars().take(n).collect();
            let masked = text.chars().count().saturating_sub(n);
            Some(format!("{kept}{}", "*".repeat(masked)))
        }
        (Generalisation::Band(width), StoredValue::Int(v)) => {
            let low = v.div_euclid(width) * width;
            Some(format!("{low}-{}", low + width - 1))
        }
        // Validation pairs rules with types; anything else is left out.
        _ => None,
    }
}

/// A cell as stored, borrowed from its Arrow array.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredValue<'a> {
    /// Empty.
    Null,
    /// Integers, decimals in cents, enums' indexes are not used (enums are text).
    Int(i64),
    /// Days since 1970-01-01.
    Date(i64),
    /// Strings and enums.
    Text(&'a str),
}

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

fn scope_value(value: &StoredValue<'_>) -> ScopeValue {
    match value {
        StoredValue::Null => ScopeValue::Null,
        StoredValue::Int(v) | StoredValue::Date(v) => ScopeValue::Int(*v),
        StoredValue::Text(t) => ScopeValue::Text((*t).to_owned()),
    }
}

fn display(value: &StoredValue<'_>, ty: ColumnType) -> Option<String> {
    match value {
        StoredValue::Null => None,
        StoredValue::Int(v) if ty == ColumnType::Decimal => Some(format_cents(*v)),
        StoredValue::Int(v) => Some(v.to_string()),
        StoredValue::Date(d) => Some(format_date_days(*d)),
        StoredValue::Text(t) => Some((*t).to_owned()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_per_key_and_column_and_differ_across_keys() {
        let a = Tokeniser::new(&[1; 32]).unwrap();
        let b = Tokeniser::new(&[2; 32]).unwrap();
        let t = a.token("tin", "123-45-6789");
        assert_eq!(t, a.token("tin", "123-45-6789"));
        assert_eq!(t.len(), 32);
        assert_ne!(t, b.token("tin", "123-45-6789"));
        assert_ne!(t, a.token("name", "123-45-6789"));
        assert_ne!(t, a.token("tin", "123-45-6780"));
    }

    #[test]
    fn format_preserving_tokens_refuse_values_with_letters() {
        let t = Tokeniser::new(&[7; 32]).unwrap();
        // FF1 enciphers digits only: a street name would stay in the clear.
        assert!(matches!(
            t.format_preserving("address", "1234 Elm St 02139"),
            Err(ExtractError::NotDigits(_))
        ));
        assert!(t.format_preserving("tin", "123-45-6789").is_ok());
    }

    #[test]
    fn format_preserving_tokens_keep_the_layout_and_change_the_digits() {
        let a = Tokeniser::new(&[1; 32]).unwrap();
        let b = Tokeniser::new(&[2; 32]).unwrap();
        let t = a.format_preserving("tin", "123-45-6789").unwrap();
        assert_eq!(t.len(), 11);
        assert_eq!(&t[3..4], "-");
        assert_eq!(&t[6..7], "-");
        assert!(t.chars().filter(char::is_ascii_digit).count() == 9);
        assert_ne!(t, "123-45-6789");
        assert_eq!(t, a.format_preserving("tin", "123-45-6789").unwrap());
        assert_ne!(t, b.format_preserving("tin", "123-45-6789").unwrap());
        // A bijection: distinct values keep distinct tokens.
        let tokens: HashSet<String> = (0..1000)
            .map(|i| {
                a.format_preserving("tin", &format!("123-45-{i:04}"))
                    .unwrap()
            })
            .collect();
        assert_eq!(tokens.len(), 1000);
        assert!(matches!(
            a.format_preserving("tin", "12-34"),
            Err(ExtractError::TooFewDigits(_))
        ));
    }

    #[test]
    fn generalisations_coarsen_as_named() {
        // 1984-07-15 is day 5309.
        let day = StoredValue::Date(5309);
        assert_eq!(generalise(Generalisation::Year, &day).unwrap(), "1984");
        assert_eq!(generalise(Generalisation::Month, &day).unwrap(), "1984-07");
        let zip = StoredValue::Text("02139");
        assert_eq!(
            generalise(Generalisation::Prefix(3), &zip).unwrap(),
            "021**"
        );
        assert_eq!(
            generalise(Generalisation::Band(5), &StoredValue::Int(33)).unwrap(),
            "30-34"
        );
        assert_eq!(
            generalise(Generalisation::Band(5), &StoredValue::Int(-1)).unwrap(),
            "-5--1"
        );
        assert_eq!(generalise(Generalisation::Suppress, &zip), None);
        assert_eq!(generalise(Generalisation::Year, &StoredValue::Null), None);
    }
}
