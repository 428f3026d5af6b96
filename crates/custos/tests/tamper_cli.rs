//! Datasets whose contents are ledgered, attacked from where an insider
//! with the home would attack them: a byte flipped in a bucket file, files
//! swapped between datasets, a file deleted, one added, and a file altered
//! together with the catalogue's digest. Each is refused by reads (nothing
//! released), the refusal is ledgered, `dataset verify` names the file,
//! and restoring the file restores service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use tempfile::TempDir;

struct Env {
    tmp: TempDir,
    admin: String,
    gina: String,
    /// The S3 test server's view of the files, when they are there.
    s3: Option<common::S3Files>,
}

impl Env {
    fn new() -> Self {
        Self::with_object_store(None)
    }

    /// A home whose dataset files are in the object store at `url`
    /// (`None`: local files).
    fn with_object_store(url: Option<&str>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let mut init = common::custos(&home, None);
        init.arg("init");
        if let Some(url) = url {
            init.args(["--object-store", url]);
        }
        init.assert().success();
        let admin = common::add_principal(&home, None, "alice", "IRS", "admin");
        let gina = common::add_principal(&home, Some(&admin), "gina", "GAO", "requester");
        common::ingest_synthetic(
            &home,
            &admin,
            &tmp.path().join("synthetic"),
            300,
            &["tax_returns", "benefits"],
        );
        let agreement = tmp.path().join("agreement.toml");
        std::fs::write(
            &agreement,
            common::aggregate_agreement("gao-stats", "100.0", "0.1"),
        )
        .unwrap();
        common::custos(&home, Some(&admin))
            .args(["agreement", "apply"])
            .arg(&agreement)
            .assert()
            .success();
        Self {
            tmp,
            admin,
            gina,
            s3: url.map(common::S3Files::new),
        }
    }

    /// Where file `file` of dataset `name` is: a path, or an object key.
    fn file(&self, name: &str, file: &str) -> String {
        match &self.s3 {
            Some(s3) => s3.dataset_file(name, file),
            None => self.files(name).join(file).display().to_string(),
        }
    }

    /// The file named `file` beside `at`.
    fn beside(at: &str, file: &str) -> String {
        format!("{}/{file}", at.rsplit_once('/').unwrap().0)
    }

    fn read(&self, at: &str) -> Vec<u8> {
        match &self.s3 {
            Some(s3) => s3.read(at),
            None => std::fs::read(at).unwrap(),
        }
    }

    fn write(&self, at: &str, bytes: &[u8]) {
        match &self.s3 {
            Some(s3) => s3.write(at, bytes),
            None => std::fs::write(at, bytes).unwrap(),
        }
    }

    fn delete(&self, at: &str) {
        match &self.s3 {
            Some(s3) => s3.delete(at),
            None => std::fs::remove_file(at).unwrap(),
        }
    }

    fn home(&self) -> PathBuf {
        self.tmp.path().join("home")
    }

    /// The directory of dataset `name`'s files.
    fn files(&self, name: &str) -> PathBuf {
        std::fs::read_dir(self.home().join("datasets"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{name}."))
            })
            .unwrap()
    }

    fn query(&self) -> std::process::Output {
        self.query_through(None)
    }

    /// Gina's count query, through the server at `server` if given.
    fn query_through(&self, server: Option<&str>) -> std::process::Output {
        let mut command = common::custos(&self.home(), Some(&self.gina));
        if let Some(url) = server {
            command.args(["--server", url]);
        }
        command
            .args(["query", "--agreement", "gao-stats"])
            .arg("SELECT COUNT(*) FROM tax_returns")
            .output()
            .unwrap()
    }

    fn verify(&self, name: &str) -> std::process::Output {
        common::custos(&self.home(), Some(&self.admin))
            .args(["dataset", "verify", name])
            .output()
            .unwrap()
    }

    fn tampered_entries(&self) -> usize {
        common::ledger(&self.home())
            .iter()
            .filter(|e| e["action"] == "dataset.tampered")
            .count()
    }

    /// The query and `dataset verify` both refuse, naming `file` and
    /// `what`; one more `dataset.tampered` entry per refusal.
    fn assert_refused(&self, file: &str, what: &str) {
        let before = self.tampered_entries();
        let out = self.query();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "a query read a tampered dataset");
        assert!(said.contains("tampered"), "{said}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("count"));
        let out = self.verify("tax_returns");
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success());
        assert!(said.contains(file) && said.contains(what), "{said}");
        assert_eq!(self.tampered_entries(), before + 2);
    }

    fn assert_served(&self) {
        let out = self.query();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self.verify("tax_returns");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn flipped(bytes: &[u8]) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    bytes
}

fn flip_byte(path: &Path) {
    std::fs::write(path, flipped(&std::fs::read(path).unwrap())).unwrap();
}

#[test]
fn each_kind_of_tampering_is_refused_named_and_ledgered() {
    each_kind_of_tampering_in(&Env::new());
}

/// The same attacks on dataset files in object storage, made by whoever
/// holds the bucket's credentials.
#[test]
fn each_kind_of_tampering_in_object_storage_is_refused_named_and_ledgered() {
    let Some(url) = common::s3_prefix() else {
        return;
    };
    let env = Env::with_object_store(Some(&url));
    // Nothing of the data is on the home's disk.
    assert_eq!(
        std::fs::read_dir(env.home().join("datasets"))
            .unwrap()
            .count(),
        0
    );
    each_kind_of_tampering_in(&env);
    // A copy placed in a sub-folder is an added file, not a known one.
    let bucket = env.file("tax_returns", "bucket-0000.parquet");
    let nested = Env::beside(&bucket, "x/bucket-0000.parquet");
    env.write(&nested, &env.read(&bucket));
    env.assert_refused("x/bucket-0000.parquet", "added");
    env.delete(&nested);
    env.assert_served();
    // A proxy would carry plain-http requests off the machine: refused.
    let out = common::custos(&env.home(), Some(&env.admin))
        .args(["dataset", "list"])
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP_PROXY is set"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn each_kind_of_tampering_in(env: &Env) {
    env.assert_served();
    let bucket = env.file("tax_returns", "bucket-0000.parquet");
    let other = env.file("benefits", "bucket-0000.parquet");
    let original = env.read(&bucket);
    let other_original = env.read(&other);

    // A byte flipped.
    env.write(&bucket, &flipped(&original));
    env.assert_refused("bucket-0000.parquet", "altered");
    env.write(&bucket, &original);
    env.assert_served();

    // Swapped with another dataset's file (both directions).
    env.write(&bucket, &other_original);
    env.write(&other, &original);
    env.assert_refused("bucket-0000.parquet", "altered");
    env.write(&bucket, &original);
    env.write(&other, &other_original);
    env.assert_served();

    // Deleted.
    env.delete(&bucket);
    env.assert_refused("bucket-0000.parquet", "deleted");
    env.write(&bucket, &original);
    env.assert_served();

    // Added.
    let extra = Env::beside(&bucket, "bucket-0001.parquet");
    env.write(&extra, &original);
    env.assert_refused("bucket-0001.parquet", "added");
    env.delete(&extra);
    env.assert_served();
}

/// A server has verified a file in object storage and pinned its reads to
/// the verified ETag; the insider then replaces the object. The next read
/// is refused (the listing shows another ETag, so the file is checked
/// again), and restoring the object restores service. (A look-up, which
/// lists nothing, meets the store's 412 on `If-Match` instead: see
/// `crates/custos-store/tests/object_store.rs`.)
#[test]
fn a_file_replaced_in_object_storage_under_a_running_server_is_refused() {
    let Some(url) = common::s3_prefix() else {
        return;
    };
    let env = Env::with_object_store(Some(&url));
    let server = common::Server::start(&env.home(), &[]);
    let query = || env.query_through(Some(&server.url));
    assert!(query().status.success());
    let bucket = env.file("tax_returns", "bucket-0000.parquet");
    let original = env.read(&bucket);
    env.write(&bucket, &flipped(&original));
    let out = query();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a replaced object was read");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("count"));
    assert!(
        said.contains("dataset `tax_returns` is refused: its files are not as ingested"),
        "{said}"
    );
    // The API keeps file names to the server's log, which names the refusal.
    let log = server.stderr.lock().unwrap().clone();
    assert!(
        log.contains("was tampered with: `bucket-0000.parquet` was altered or replaced"),
        "{said}\n{log}"
    );
    env.write(&bucket, &original);
    let out = query();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The insider who alters a file and updates the catalogue's digest to
/// match: the catalogue no longer matches the ingest's ledger entry.
#[test]
fn a_file_altered_with_its_catalogue_digest_is_caught_by_the_ledger() {
    let env = Env::new();
    let bucket = env.files("tax_returns").join("bucket-0000.parquet");
    flip_byte(&bucket);
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(std::fs::read(&bucket).unwrap()))
    };
    let db = env.home().join("custos.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection as _;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let changed =
            sqlx::query("UPDATE datasets SET file_digests = ? WHERE name = 'tax_returns'")
                .bind(format!("bucket-0000.parquet {digest}\n"))
                .execute(&mut conn)
                .await
                .unwrap();
        assert_eq!(changed.rows_affected(), 1);
    });
    let out = env.query();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("does not match ledger entry"), "{said}");
    let out = env.verify("tax_returns");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match ledger entry"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs SQL statements against the home's catalogue (the insider's edit).
fn edit_catalogue(home: &Path, statements: &[&'static str]) {
    let db = home.join("custos.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection as _;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        for sql in statements {
            sqlx::query(*sql).execute(&mut conn).await.unwrap();
        }
    });
}

/// A running server has checked a dataset once; the insider then swaps two
/// datasets' catalogue rows, or edits a schema. The next read checks the
/// changed row against the ledger again and refuses.
#[test]
fn a_catalogue_changed_under_a_running_server_is_caught() {
    let env = Env::new();
    let server = common::Server::start(&env.home(), &[]);
    let query = || env.query_through(Some(&server.url));
    assert!(query().status.success());
    edit_catalogue(
        &env.home(),
        &[
            "UPDATE datasets SET name = 'swap' WHERE name = 'tax_returns'",
            "UPDATE datasets SET name = 'tax_returns' WHERE name = 'benefits'",
            "UPDATE datasets SET name = 'benefits' WHERE name = 'swap'",
        ],
    );
    let out = query();
    assert!(!out.status.success(), "a swapped catalogue row was read");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("is refused: its files are not as ingested"),
        "{said}"
    );
    edit_catalogue(
        &env.home(),
        &[
            "UPDATE datasets SET name = 'swap' WHERE name = 'tax_returns'",
            "UPDATE datasets SET name = 'tax_returns' WHERE name = 'benefits'",
            "UPDATE datasets SET name = 'benefits' WHERE name = 'swap'",
        ],
    );
    assert!(query().status.success());
    // A bucket count changed in the catalogue (reads would skip or invent
    // files): it is not the ledgered one.
    edit_catalogue(
        &env.home(),
        &["UPDATE datasets SET bucket_count = 2 WHERE name = 'tax_returns'"],
    );
    assert!(!query().status.success(), "a changed bucket count was used");
    edit_catalogue(
        &env.home(),
        &["UPDATE datasets SET bucket_count = 1 WHERE name = 'tax_returns'"],
    );
    assert!(query().status.success());
    // A schema reclassified in the catalogue (its recorded digest too).
    edit_catalogue(
        &env.home(),
        &[
            "UPDATE datasets SET schema_toml = schema_toml || '# edited', \
           schema_sha256 = 'x' WHERE name = 'tax_returns'",
        ],
    );
    let out = query();
    assert!(!out.status.success(), "an edited schema was used");
    drop(server);
}

/// The insider widens an agreement in the catalogue (a bigger budget)
/// instead of applying a new version: decisions hold the stored text to
/// the `agreement.apply` entry, so nothing is decided under it, and the
/// refusal is ledgered.
#[test]
fn an_agreement_edited_in_the_catalogue_decides_nothing() {
    let env = Env::new();
    assert!(env.query().status.success());
    edit_catalogue(
        &env.home(),
        &[
            "UPDATE agreement_versions SET toml = replace(toml, 'budget = 100.0', 'budget = 900.0') \
           WHERE id = 'gao-stats'",
        ],
    );
    let out = env.query();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "a query ran under an edited agreement"
    );
    assert!(said.contains("not the one the ledger recorded"), "{said}");
    let tampered = common::ledger(&env.home())
        .iter()
        .filter(|e| e["action"] == "agreement.tampered")
        .count();
    assert_eq!(tampered, 1);
}
