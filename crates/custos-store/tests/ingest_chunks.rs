//! Ingest splits large inputs into chunks parsed in parallel: line numbers
//! of problems stay exact and every row arrives exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use custos_store::dataset::{self, DatasetReader};
use custos_store::{Home, IngestError, MasterKeySource, NoProgress};

const SCHEMA: &str = r#"
[[columns]]
name = "id"
class = "subject_id"
type = "string"
[[columns]]
name = "amount"
class = "attribute"
type = "integer"
bounds = [0, 10000000]
"#;

async fn home(dir: &std::path::Path) -> Home {
    let root = dir.join("home");
    Home::init(&root, MasterKeySource::GenerateFile, None)
        .await
        .unwrap();
    Home::open(&root, None).await.unwrap()
}

fn csv(rows: u64, bad_line: Option<u64>) -> String {
    let mut out = String::from("id,amount\n");
    for i in 0..rows {
        let line = i + 2;
        if Some(line) == bad_line {
            out.push_str(&format!("id-{i:09},not-a-number\n"));
        } else {
            out.push_str(&format!("id-{i:09},{i}\n"));
        }
    }
    out
}

#[tokio::test]
async fn a_problem_deep_in_a_large_file_has_its_exact_line() {
    let dir = tempfile::tempdir().unwrap();
    let home = home(dir.path()).await;
    std::fs::write(dir.path().join("s.toml"), SCHEMA).unwrap();
    // ~5 MiB: more than one 4 MiB chunk.
    std::fs::write(dir.path().join("d.csv"), csv(250_000, Some(230_001))).unwrap();
    let err = dataset::ingest(
        &home,
        "t",
        &dir.path().join("s.toml"),
        &dir.path().join("d.csv"),
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    match err {
        IngestError::Rejected { problems, .. } => {
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].line, 230_001);
            assert_eq!(problems[0].column.as_deref(), Some("amount"));
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(dataset::list(&home).await.unwrap().is_empty());
}

#[tokio::test]
async fn every_row_of_a_large_file_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let home = home(dir.path()).await;
    std::fs::write(dir.path().join("s.toml"), SCHEMA).unwrap();
    let text = csv(250_000, None);
    // No trailing newline: the last line must still count.
    std::fs::write(dir.path().join("d.csv"), text.trim_end()).unwrap();
    let report = dataset::ingest(
        &home,
        "t",
        &dir.path().join("s.toml"),
        &dir.path().join("d.csv"),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(report.dataset.rows, 250_000);
    let reader = DatasetReader::open(&home, "t").await.unwrap();
    let mut sum: i64 = 0;
    for batch in reader.scan(false).unwrap() {
        let amounts = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        sum += amounts.iter().map(|v| v.unwrap()).sum::<i64>();
    }
    assert_eq!(sum, (0..250_000i64).sum::<i64>());
    let last = reader.subject_rows("id-000249999", None).unwrap();
    assert_eq!(last.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
}

#[tokio::test]
async fn a_large_file_full_of_problems_stops_at_ten_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let home = home(dir.path()).await;
    std::fs::write(dir.path().join("s.toml"), SCHEMA).unwrap();
    // Every row is bad, over several chunks: the parsers stop early and the
    // reader must not block on a queue nobody drains.
    let mut text = String::from("id,amount\n");
    for i in 0..600_000 {
        text.push_str(&format!("id-{i:09},x\n"));
    }
    std::fs::write(dir.path().join("d.csv"), text).unwrap();
    let started = std::time::Instant::now();
    let err = dataset::ingest(
        &home,
        "t",
        &dir.path().join("s.toml"),
        &dir.path().join("d.csv"),
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    match err {
        IngestError::Rejected { problems, .. } => {
            assert_eq!(problems.len(), custos_store::ingest::MAX_PROBLEMS);
            assert_eq!(problems[0].line, 2);
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
}

#[tokio::test]
async fn integer_subjects_are_found_whatever_their_written_form() {
    let dir = tempfile::tempdir().unwrap();
    let home = home(dir.path()).await;
    let schema = SCHEMA.replace("type = \"string\"", "type = \"integer\"");
    std::fs::write(dir.path().join("s.toml"), schema).unwrap();
    let mut text = String::from("id,amount\n0042,1\n+42,2\n42,3\n");
    // Enough rows for several bucket files, so a wrong bucket would miss.
    for i in 100..700_000 {
        text.push_str(&format!("{i},0\n"));
    }
    std::fs::write(dir.path().join("d.csv"), text).unwrap();
    let report = dataset::ingest(
        &home,
        "t",
        &dir.path().join("s.toml"),
        &dir.path().join("d.csv"),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert!(
        report.dataset.buckets > 1,
        "{} buckets",
        report.dataset.buckets
    );
    let reader = DatasetReader::open(&home, "t").await.unwrap();
    let rows: usize = reader
        .subject_rows("42", None)
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 3);
}
