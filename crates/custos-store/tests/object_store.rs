//! Dataset files in S3-compatible object storage (the test server that
//! scripts/s3 starts): a look-up reads ranges of a verified file, never the
//! whole bucket again; a file replaced after its check is refused by the
//! store itself; a prefix serves one home only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, Int64Array};
use custos_store::catalogue::CatalogueLocation;
use custos_store::dataset::{self, DatasetReader};
use custos_store::home::Placement;
use custos_store::objects::ObjectStoreLocation;
use custos_store::{DatasetError, Home, LedgerKeySource, MasterKeySource, NoProgress};
use object_store::ObjectStoreExt as _;

mod common;
use common::{SCHEMA, fresh_prefix, raw_store};

async fn init(
    root: &std::path::Path,
    objects: Option<&str>,
) -> Result<(), custos_store::HomeError> {
    Home::init_with(
        root,
        MasterKeySource::GenerateFile,
        None,
        LedgerKeySource::beside(root),
        Placement {
            catalogue: CatalogueLocation::Embedded,
            objects: objects.map(|u| ObjectStoreLocation::parse(u).unwrap()),
        },
    )
    .await
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn look_ups_read_ranges_of_verified_files_and_refuse_a_replaced_one() {
    let Some(url) = fresh_prefix() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("home");
    init(&root, Some(&url)).await.unwrap();
    let home = Home::open(&root, None).await.unwrap();
    let schema = dir.path().join("s.toml");
    std::fs::write(&schema, SCHEMA).unwrap();
    let mut csv = String::from("amount,id,label\n");
    let mut expected: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for row in 0..200_000i64 {
        let id = (row * 7919) % 20_000;
        csv.push_str(&format!("{row},{id},label-{id}\n"));
        expected.entry(id).or_default().push(row);
    }
    let csv_path = dir.path().join("d.csv");
    std::fs::write(&csv_path, csv).unwrap();
    dataset::ingest(&home, "t", &schema, &csv_path, Arc::new(NoProgress))
        .await
        .unwrap();
    // The home's disk keeps no dataset file.
    assert_eq!(std::fs::read_dir(home.datasets_dir()).unwrap().count(), 0);

    let reader = Arc::new(DatasetReader::open(&home, "t").await.unwrap());
    let objects = home.objects().unwrap();
    let look_up = |id: i64| {
        let reader = Arc::clone(&reader);
        async move {
            tokio::task::spawn_blocking(move || {
                reader.subject_rows(&id.to_string(), Some(&["amount"]))
            })
            .await
            .unwrap()
        }
    };
    let amounts = |batches: Vec<arrow::array::RecordBatch>| {
        let mut out: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                (0..a.len()).map(|i| a.value(i)).collect::<Vec<_>>()
            })
            .collect();
        out.sort_unstable();
        out
    };
    let first = 0i64;
    let bucket = reader.bucket_of(&first.to_string()).unwrap();
    assert_eq!(amounts(look_up(first).await.unwrap()), expected[&first]);
    let after_first = objects.stats();
    assert!(after_first.verified_bytes > 0);
    // Another subject of the same bucket: no second download, only ranges.
    let second = (1..20_000i64)
        .find(|id| reader.bucket_of(&id.to_string()) == Some(bucket))
        .unwrap();
    assert_eq!(amounts(look_up(second).await.unwrap()), expected[&second]);
    let after_second = objects.stats();
    let file_size = after_first.verified_bytes / u64::from(reader.bucket_count()).max(1);
    let read = after_second.read_bytes - after_first.read_bytes;
    eprintln!(
        "bucket file ≈ {file_size} bytes; second look-up read {read} bytes in {} requests",
        after_second.reads - after_first.reads
    );
    assert_eq!(after_second.verified_bytes, after_first.verified_bytes);
    assert!(read > 0 && read * 4 < file_size, "{read} of {file_size}");

    // The insider replaces the verified object: the pinned read is refused
    // by the store (If-Match), and reported as tampering.
    let (raw, prefix) = raw_store(&url);
    let key = {
        use futures::StreamExt as _;
        let root = object_store::path::Path::from(prefix.as_str());
        raw.list(Some(&root))
            .map(|m| m.unwrap().location)
            .filter(|l| {
                let found = l.as_ref().ends_with(&format!("bucket-{bucket:04}.parquet"));
                async move { found }
            })
            .collect::<Vec<_>>()
            .await
            .remove(0)
    };
    let original = raw.get(&key).await.unwrap().bytes().await.unwrap();
    let mut forged = original.to_vec();
    let middle = forged.len() / 2;
    forged[middle] ^= 1;
    raw.put(&key, forged.into()).await.unwrap();
    let err = look_up(second).await.unwrap_err();
    assert!(
        matches!(&err, DatasetError::Tampered { problem, .. } if problem.contains("replaced or deleted after it was verified")),
        "{err}"
    );
    // Checked again from scratch: the digest names it.
    let err = look_up(second).await.unwrap_err();
    assert!(err.to_string().contains("altered or replaced"), "{err}");
    // Restored, it serves again.
    raw.put(&key, original.clone().into()).await.unwrap();
    assert_eq!(amounts(look_up(second).await.unwrap()), expected[&second]);
    // Deleted after its check: the pinned read meets a 404, reported as
    // tampering too, and the next check names the deletion.
    raw.delete(&key).await.unwrap();
    let err = look_up(second).await.unwrap_err();
    assert!(matches!(err, DatasetError::Tampered { .. }), "{err}");
    let err = look_up(second).await.unwrap_err();
    assert!(
        err.to_string().contains("was deleted since ingest"),
        "{err}"
    );
    raw.put(&key, original.into()).await.unwrap();
    assert_eq!(amounts(look_up(second).await.unwrap()), expected[&second]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_serves_one_home_only() {
    let Some(url) = fresh_prefix() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    init(&first, Some(&url)).await.unwrap();
    // A second home on the same prefix is refused, and not created.
    let second = dir.path().join("second");
    let err = init(&second, Some(&url)).await.unwrap_err().to_string();
    assert!(err.contains("is not empty"), "{err}");
    assert!(!second.exists());
    // Nor inside the first home's prefix, where the first home's reads
    // would meet its files.
    let (base, query) = url.split_once('?').unwrap();
    let nested = format!("{base}/datasets/t.0123456789abcdef/sub?{query}");
    let err = init(&second, Some(&nested)).await.unwrap_err().to_string();
    assert!(err.contains("inside another home's prefix"), "{err}");
    assert!(!second.exists());
    // A local home given the first home's object-store.toml is refused by
    // origin, and with the origin edited, by the store's own marker.
    init(&second, None).await.unwrap();
    let file = first.join("object-store.toml");
    std::fs::copy(&file, second.join("object-store.toml")).unwrap();
    let err = Home::open(&second, None).await.unwrap_err().to_string();
    assert!(err.contains("was written for the home"), "{err}");
    let second_origin = {
        let home = Home::open(&first, None).await.unwrap();
        let first_origin = home.origin().await.unwrap();
        std::fs::remove_file(second.join("object-store.toml")).unwrap();
        let other = Home::open(&second, None)
            .await
            .unwrap()
            .origin()
            .await
            .unwrap();
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace(&first_origin, &other);
        std::fs::write(second.join("object-store.toml"), text).unwrap();
        other
    };
    let err = Home::open(&second, None).await.unwrap_err().to_string();
    assert!(
        err.contains("belongs to another home") && err.contains(&second_origin),
        "{err}"
    );
}
