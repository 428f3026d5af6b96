//! A subject's rows come from one bucket file and match a full scan exactly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, StringArray};
use custos_model::schema::SUBJECT_KEY_COLUMN;
use custos_store::dataset::{self, DatasetReader};
use custos_store::{Home, MasterKeySource, NoProgress};

mod common;
use common::SCHEMA;

/// A new home in a temporary directory, and `SCHEMA` written beside it.
async fn home_with_schema() -> (tempfile::TempDir, Home, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("home");
    Home::init(&root, MasterKeySource::GenerateFile, None)
        .await
        .unwrap();
    let home = Home::open(&root, None).await.unwrap();
    let schema = dir.path().join("s.toml");
    std::fs::write(&schema, SCHEMA).unwrap();
    (dir, home, schema)
}

#[tokio::test]
async fn subject_rows_match_a_full_scan() {
    let (dir, home, schema) = home_with_schema().await;
    // 60,000 rows over 2,000 subjects; big enough for several buckets' batches.
    let mut csv = String::from("amount,id,label\n");
    let mut expected: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for row in 0..60_000i64 {
        let id = (row * 7919) % 2000;
        csv.push_str(&format!("{row},{id},label-{id}\n"));
        expected.entry(id).or_default().push(row);
    }
    let csv_path = dir.path().join("d.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let report = dataset::ingest(&home, "t", &schema, &csv_path, Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(report.dataset.rows, 60_000);

    let reader = DatasetReader::open(&home, "t").await.unwrap();
    for id in [0i64, 1, 999, 1999] {
        let batches = reader
            .subject_rows(&id.to_string(), Some(&["amount", "label"]))
            .unwrap();
        let mut amounts = vec![];
        for b in &batches {
            assert_eq!(b.num_columns(), 2);
            let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let l = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..b.num_rows() {
                amounts.push(a.value(i));
                assert_eq!(l.value(i), format!("label-{id}"));
            }
        }
        amounts.sort_unstable();
        assert_eq!(amounts, expected[&id], "subject {id}");
    }
    // Unknown subjects give nothing; a non-integer id for an integer key is refused.
    assert!(reader.subject_rows("123456", None).unwrap().is_empty());
    assert!(reader.subject_rows("abc", None).is_err());
    // A scan without identity columns never decrypts them.
    let scanned = reader.scan(false).unwrap();
    assert_eq!(scanned.iter().map(|b| b.num_rows()).sum::<usize>(), 60_000);
    assert!(
        scanned
            .iter()
            .all(|b| b.schema().field_with_name("label").is_err())
    );
    assert!(scanned[0].column(0).null_count() == 0);
}

#[tokio::test]
async fn a_swapped_bucket_file_is_refused_and_fails_to_decrypt() {
    let (dir, home, schema) = home_with_schema().await;
    let csv_path = dir.path().join("d.csv");
    std::fs::write(&csv_path, "id,amount,label\n1,2,x\n").unwrap();
    for name in ["a", "b"] {
        dataset::ingest(&home, name, &schema, &csv_path, Arc::new(NoProgress))
            .await
            .unwrap();
    }
    // Copy b's file over a's: same master key, but another dataset's key and AAD.
    let dirs: Vec<_> = std::fs::read_dir(home.datasets_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let a = dirs
        .iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("a."))
        .unwrap();
    let b = dirs
        .iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("b."))
        .unwrap();
    std::fs::copy(b.join("bucket-0000.parquet"), a.join("bucket-0000.parquet")).unwrap();
    let reader = DatasetReader::open(&home, "a").await.unwrap();
    // Refused before decryption is tried: the file's digest is not a's.
    let err = reader.scan(true).unwrap_err().to_string();
    assert!(
        err.contains(
            "dataset `a` was tampered with: `bucket-0000.parquet` was altered or replaced"
        ),
        "{err}"
    );
    // And without the digest check, a's keys cannot decrypt b's file.
    let options = parquet::arrow::arrow_reader::ArrowReaderOptions::new()
        .with_file_decryption_properties(reader.decryption_properties(0, true).unwrap());
    let opened =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new_with_options(
            std::fs::File::open(a.join("bucket-0000.parquet")).unwrap(),
            options,
        )
        .and_then(|b| b.build())
        .and_then(|r| r.collect::<Result<Vec<_>, _>>().map_err(Into::into));
    assert!(opened.is_err());
}

#[tokio::test]
async fn every_column_of_a_bucket_file_is_encrypted_including_the_subject_key() {
    use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
    let (dir, home, schema) = home_with_schema().await;
    let csv_path = dir.path().join("d.csv");
    std::fs::write(&csv_path, "id,amount,label\n1,2,x\n3,4,y\n").unwrap();
    dataset::ingest(&home, "t", &schema, &csv_path, Arc::new(NoProgress))
        .await
        .unwrap();
    let reader = DatasetReader::open(&home, "t").await.unwrap();
    for (bucket, path) in reader.bucket_paths().unwrap().iter().enumerate() {
        let file = std::fs::File::open(path).unwrap();
        let options = ArrowReaderOptions::new().with_file_decryption_properties(
            reader
                .decryption_properties(u32::try_from(bucket).unwrap(), true)
                .unwrap(),
        );
        let meta = ArrowReaderMetadata::load(&file, options).unwrap();
        let names: Vec<String> = meta
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["id", "amount", "label", SUBJECT_KEY_COLUMN]);
        for group in meta.metadata().row_groups() {
            for column in group.columns() {
                assert!(
                    column.crypto_metadata().is_some(),
                    "column `{}` is stored in the clear",
                    column.column_path()
                );
            }
        }
    }
}

#[tokio::test]
async fn rows_are_sorted_by_subject_key_with_a_page_index_that_finds_one_page() {
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::file::metadata::PageIndexPolicy;
    use parquet::file::page_index::column_index::ColumnIndexMetaData;
    let (dir, home, schema) = home_with_schema().await;
    let mut csv = String::from("id,amount,label\n");
    for row in 0..50_000i64 {
        let id = (row * 7919) % 5000;
        csv.push_str(&format!("{id},{row},label-{id}\n"));
    }
    let csv_path = dir.path().join("d.csv");
    std::fs::write(&csv_path, csv).unwrap();
    dataset::ingest(&home, "t", &schema, &csv_path, Arc::new(NoProgress))
        .await
        .unwrap();
    let reader = DatasetReader::open(&home, "t").await.unwrap();
    for (bucket, path) in reader.bucket_paths().unwrap().iter().enumerate() {
        let options = ArrowReaderOptions::new()
            .with_page_index_policy(PageIndexPolicy::Required)
            .with_file_decryption_properties(
                reader
                    .decryption_properties(u32::try_from(bucket).unwrap(), true)
                    .unwrap(),
            );
        let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(
            std::fs::File::open(path).unwrap(),
            options,
        )
        .unwrap();
        let meta = builder.metadata().clone();
        let key_column = meta.row_group(0).columns().len() - 1;
        // Pages of the key column: several per row group, each covering a
        // key range that starts at or after the previous page's end.
        let index = &meta.column_index().unwrap()[0][key_column];
        let ColumnIndexMetaData::INT64(index) = index else {
            panic!("no min/max for the subject key");
        };
        assert!(index.num_pages() >= 10, "{} pages", index.num_pages());
        for page in 1..index.num_pages() as usize {
            assert!(index.min_value(page).unwrap() >= index.max_value(page - 1).unwrap());
        }
        // And the rows themselves are in key order within each row group.
        let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [key_column]);
        let mut keys = Vec::new();
        for batch in builder.with_projection(mask).build().unwrap() {
            let batch = batch.unwrap();
            let column = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            keys.extend(column.values().iter().copied());
        }
        assert_eq!(keys.len() as i64, meta.row_group(0).num_rows());
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "not sorted");
    }
    // Look-ups through that index give exactly each subject's rows.
    for id in (0..5000i64).step_by(97) {
        let batches = reader
            .subject_rows(&id.to_string(), Some(&["amount"]))
            .unwrap();
        let mut amounts: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                a.values().to_vec()
            })
            .collect();
        amounts.sort_unstable();
        let expected: Vec<i64> = (0..50_000i64).filter(|r| (r * 7919) % 5000 == id).collect();
        assert_eq!(amounts, expected, "subject {id}");
    }
}
