//! A Custos home: the data directory with its keys, metadata store and
//! dataset files.
//!
//! ```text
//! HOME/                 mode 0700
//!   master.key          0600, hex; absent when the key comes from CUSTOS_MASTER_KEY
//!   custos.db           SQLite metadata store (WAL)
//!   datasets/NAME.ID/   one directory per dataset: encrypted Parquet bucket files
//!   ledger/             the Merkle ledger (C2SP tlog-tiles; see docs/ledger.md)
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::keys::{KEY_LEN, KeyError, MasterKey, random_bytes};
use crate::ledger_key::LedgerKeySource;
use crate::meta::{MetaError, MetadataStore, SqliteMetadata};

/// The on-disk format version this build writes and reads.
pub const FORMAT_VERSION: &str = "1";
/// Name of the master key file inside a home.
pub const MASTER_KEY_FILE: &str = "master.key";
/// Name of the SQLite metadata database inside a home.
pub const METADATA_DB_FILE: &str = "custos.db";
/// Name of the datasets directory inside a home.
pub const DATASETS_DIR: &str = "datasets";
/// Name of the ledger directory inside a home.
pub const LEDGER_DIR: &str = "ledger";

pub(crate) const SIGNING_KEY_PURPOSE: &str = "custos/v1/instance-signing-key";

/// Errors opening or creating a home.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    /// `init` found something already there.
    #[error("`{0}` already holds a Custos home or other files; refusing to overwrite anything")]
    AlreadyExists(PathBuf),
    /// `open` found no home.
    #[error("no Custos home at `{0}`: run `custos init` first, or pass --home / set CUSTOS_HOME")]
    NotFound(PathBuf),
    /// The home keeps its master key outside and none was given.
    #[error("this home keeps its master key outside the data directory: set CUSTOS_MASTER_KEY")]
    MasterKeyMissing,
    /// `master.key` may be read or written by others than its owner.
    #[error(
        "`{}` has mode {mode:o}: a master key file must be readable by its owner only; run `chmod 600` on it (and consider the key exposed)",
        path.display()
    )]
    KeyFileShared {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The home was written by an incompatible version.
    #[error("this home has format version `{0}`, this build reads version {FORMAT_VERSION}")]
    FormatVersion(String),
    /// An origin that is not a valid checkpoint origin line.
    #[error("origin `{0}` is not allowed: use 1-128 printable characters without spaces or `+`")]
    BadOrigin(String),
    /// The ledger signing key is missing, malformed or not this home's.
    #[error("{0}")]
    LedgerKey(String),
    /// A ledger key file was to be written inside the home.
    #[error(
        "`{}` is inside the home: the ledger signing key must live apart from the data (and its backups)",
        .0.display()
    )]
    LedgerKeyInside(PathBuf),
    /// A key problem.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A metadata store problem.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A file system problem.
    #[error("`{path}`: {cause}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
}

/// Refuses a master key file that anyone but its owner may read or write:
/// a key left group- or world-readable has leaked already, and one that
/// others may write could be swapped. (A missing file is left to the read.)
fn refuse_shared_key_file(path: &Path) -> Result<(), HomeError> {
    match fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Err(HomeError::KeyFileShared {
            path: path.to_owned(),
            mode: m.permissions().mode() & 0o777,
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Attaches a path to an I/O error.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HomeError + '_ {
    move |cause| HomeError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// Where the master key of a new home comes from.
#[derive(Debug)]
pub enum MasterKeySource {
    /// Generate one and keep it in `HOME/master.key` (mode 0600).
    GenerateFile,
    /// Use this key (from `CUSTOS_MASTER_KEY`) and write it nowhere.
    External(MasterKey),
}

/// What `init` created, for the user.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The home directory.
    pub root: PathBuf,
    /// Whether the master key was written to `master.key`.
    pub master_key_file: bool,
    /// The checkpoint origin (and signing key name).
    pub origin: String,
    /// The instance's Ed25519 public key, hex.
    pub public_key_hex: String,
    /// Where the ledger signing key was written (`None`: from the environment).
    pub ledger_key_file: Option<PathBuf>,
}

/// An opened home: its root, master key and metadata store.
#[derive(Debug)]
pub struct Home {
    root: PathBuf,
    master: MasterKey,
    meta: Arc<dyn MetadataStore>,
    /// Dataset files this process verified against their ingest digests.
    digests: Arc<crate::digests::DigestCache>,
}

/// Checks a checkpoint origin: a non-empty line without spaces or `+`
/// (C2SP signed-note key names may not contain either).
pub fn valid_origin(origin: &str) -> bool {
    !origin.is_empty()
        && origin.len() <= 128
        && origin.chars().all(|c| c.is_ascii_graphic() && c != '+')
}

pub(crate) fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), HomeError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(contents).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Fsyncs a directory so that entries created or renamed in it are durable.
pub fn sync_dir(path: &Path) -> Result<(), HomeError> {
    fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err(path))
}

fn hex_random(bytes: usize) -> Result<String, KeyError> {
    let mut buf = vec![0u8; bytes];
    random_bytes(&mut buf)?;
    Ok(hex::encode(buf))
}

impl Home {
    /// Creates a new home at `root`. Refuses if `root` exists and is not an
    /// empty directory. The home is built in a sibling temporary directory and
    /// renamed into place, so a crash leaves either nothing or a whole home.
    pub async fn init(
        root: &Path,
        key: MasterKeySource,
        origin: Option<String>,
    ) -> Result<InitReport, HomeError> {
        Self::init_with(root, key, origin, LedgerKeySource::beside(root)).await
    }

    /// [`Home::init`] with the ledger signing key from `ledger_key`.
    pub async fn init_with(
        root: &Path,
        key: MasterKeySource,
        origin: Option<String>,
        ledger_key: LedgerKeySource,
    ) -> Result<InitReport, HomeError> {
        if root.exists() {
            let empty = root.is_dir() && fs::read_dir(root).map_err(io_err(root))?.next().is_none();
            if !empty {
                return Err(HomeError::AlreadyExists(root.to_owned()));
            }
        }
        let origin = match origin {
            Some(o) => o,
            None => format!("custos.local/{}", hex_random(6)?),
        };
        if !valid_origin(&origin) {
            return Err(HomeError::BadOrigin(origin));
        }
        let parent = match root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .create(&parent)
            .map_err(io_err(&parent))?;
        let staging = parent.join(format!(".custos-init-{}", hex_random(8)?));
        // The ledger key first, outside the home; removed again on failure.
        let (seed, key_file) = match ledger_key {
            LedgerKeySource::File(path) => {
                let absolute = std::path::absolute(&path).map_err(io_err(&path))?;
                let home = std::path::absolute(root).map_err(io_err(root))?;
                if absolute.starts_with(&home) {
                    return Err(HomeError::LedgerKeyInside(path));
                }
                let seed = crate::ledger_key::generate()?;
                crate::ledger_key::write_key_file(&absolute, &seed)?;
                (seed, Some(absolute))
            }
            LedgerKeySource::External(seed) => (seed, None),
        };
        let result = Self::populate(&staging, key, &origin, &seed, key_file.as_deref()).await;
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                if let Some(file) = &key_file {
                    let _ = fs::remove_file(file);
                }
                return Err(e);
            }
        };
        if root.exists() {
            // An empty directory: rename(2) replaces it atomically.
            fs::remove_dir(root).map_err(io_err(root))?;
        }
        fs::rename(&staging, root).map_err(io_err(root))?;
        sync_dir(&parent)?;
        Ok(InitReport {
            root: root.to_owned(),
            ..report
        })
    }

    async fn populate(
        dir: &Path,
        key: MasterKeySource,
        origin: &str,
        seed: &[u8; KEY_LEN],
        key_file: Option<&Path>,
    ) -> Result<InitReport, HomeError> {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        let datasets = dir.join(DATASETS_DIR);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&datasets)
            .map_err(io_err(&datasets))?;
        let (master, master_key_file) = match key {
            MasterKeySource::GenerateFile => {
                let master = MasterKey::generate()?;
                let mut text = Zeroizing::new(master.to_hex().to_string());
                text.push('\n');
                write_secret_file(&dir.join(MASTER_KEY_FILE), text.as_bytes())?;
                (master, true)
            }
            MasterKeySource::External(master) => (master, false),
        };
        let signing = SigningKey::from_bytes(seed);
        let public_key_hex = hex::encode(signing.verifying_key().as_bytes());
        let meta = SqliteMetadata::open(&dir.join(METADATA_DB_FILE), true).await?;
        meta.insert_instance_value("format_version", FORMAT_VERSION.as_bytes())
            .await?;
        meta.insert_instance_value("master_key_check", &master.key_check())
            .await?;
        meta.insert_instance_value(
            "master_key_source",
            if master_key_file { b"file" } else { b"env" },
        )
        .await?;
        meta.insert_instance_value("origin", origin.as_bytes())
            .await?;
        // The ledger key itself is not kept here: only its public half and
        // where it lives.
        meta.insert_instance_value(
            crate::ledger_key::SOURCE,
            if key_file.is_some() { b"file" } else { b"env" },
        )
        .await?;
        if let Some(file) = key_file {
            meta.insert_instance_value(crate::ledger_key::FILE, file.to_string_lossy().as_bytes())
                .await?;
        }
        meta.insert_instance_value(
            crate::ledger_key::PUBLIC,
            signing.verifying_key().as_bytes(),
        )
        .await?;
        meta.insert_instance_value("created_at", now_rfc3339().as_bytes())
            .await?;
        meta.close().await;
        sync_dir(dir)?;
        Ok(InitReport {
            root: dir.to_owned(),
            master_key_file,
            origin: origin.to_owned(),
            public_key_hex,
            ledger_key_file: key_file.map(Path::to_owned),
        })
    }

    /// Opens an existing home. `external_key` (from `CUSTOS_MASTER_KEY`) takes
    /// precedence over `master.key`; either way the key is checked against
    /// the home's key check, so a wrong key fails here, not as garbage later.
    pub async fn open(root: &Path, external_key: Option<MasterKey>) -> Result<Self, HomeError> {
        let db = root.join(METADATA_DB_FILE);
        if !db.is_file() {
            return Err(HomeError::NotFound(root.to_owned()));
        }
        let meta = SqliteMetadata::open(&db, false).await?;
        let version = meta
            .instance_value("format_version")
            .await?
            .unwrap_or_default();
        if version != FORMAT_VERSION.as_bytes() {
            return Err(HomeError::FormatVersion(
                String::from_utf8_lossy(&version).into_owned(),
            ));
        }
        let master = match external_key {
            Some(key) => key,
            None => {
                let path = root.join(MASTER_KEY_FILE);
                refuse_shared_key_file(&path)?;
                match fs::read_to_string(&path) {
                    Ok(text) => MasterKey::from_hex(&Zeroizing::new(text))?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(HomeError::MasterKeyMissing);
                    }
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
        };
        let check = meta
            .instance_value("master_key_check")
            .await?
            .unwrap_or_default();
        master.verify_key_check(&check)?;
        Ok(Self {
            root: root.to_owned(),
            master,
            meta: Arc::new(meta),
            digests: Arc::default(),
        })
    }

    /// The home directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The digests of dataset files this process has verified.
    pub fn digest_cache(&self) -> Arc<crate::digests::DigestCache> {
        Arc::clone(&self.digests)
    }

    /// The directory that holds the datasets' directories.
    pub fn datasets_dir(&self) -> PathBuf {
        self.root.join(DATASETS_DIR)
    }

    /// The ledger's directory.
    pub fn ledger_dir(&self) -> PathBuf {
        self.root.join(LEDGER_DIR)
    }

    /// The key of the ledger's subject commitments (derived from the master key).
    pub fn ledger_subject_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.master.derive("custos/v1/ledger-subject-commitment")
    }

    /// The master key.
    pub fn master_key(&self) -> &MasterKey {
        &self.master
    }

    /// The metadata store.
    pub fn meta(&self) -> &Arc<dyn MetadataStore> {
        &self.meta
    }

    /// The checkpoint origin chosen at init.
    pub async fn origin(&self) -> Result<String, HomeError> {
        let raw = self
            .meta
            .instance_value("origin")
            .await?
            .unwrap_or_default();
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }
}

/// The current UTC time in RFC 3339 with seconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn init_then_open_and_refuse_twice() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        let report = Home::init(
            &root,
            MasterKeySource::GenerateFile,
            Some("example.org/custos".into()),
        )
        .await
        .unwrap();
        assert!(report.master_key_file);
        let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let key_mode = fs::metadata(root.join(MASTER_KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(key_mode, 0o600);
        let home = Home::open(&root, None).await.unwrap();
        assert_eq!(home.origin().await.unwrap(), "example.org/custos");
        assert_eq!(
            hex::encode(home.ledger_public_key().await.unwrap().as_bytes()),
            report.public_key_hex
        );
        let again = Home::init(&root, MasterKeySource::GenerateFile, None)
            .await
            .unwrap_err();
        assert!(matches!(again, HomeError::AlreadyExists(_)));
        // Nothing was left behind by the refused init: the home and, beside
        // it, the ledger key.
        let mut leftovers: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        leftovers.sort();
        assert_eq!(leftovers, ["home", "home.ledger.key"]);
    }

    /// The ledger signing key is not in the home in any form: holding the
    /// home and its master key is not enough to re-sign the ledger.
    #[tokio::test]
    async fn the_ledger_key_lives_outside_the_home() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        Home::init(&root, MasterKeySource::GenerateFile, None)
            .await
            .unwrap();
        let key_file = dir.path().join("home.ledger.key");
        let mode = fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let seed_hex = fs::read_to_string(&key_file).unwrap().trim().to_owned();
        let seed = hex::decode(&seed_hex).unwrap();
        let mut stack = vec![root.clone()];
        let mut files = 0;
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                files += 1;
                let bytes = fs::read(&p).unwrap();
                assert!(!bytes.windows(32).any(|w| w == seed.as_slice()), "{p:?}");
                assert!(
                    !bytes.windows(64).any(|w| w == seed_hex.as_bytes()),
                    "{p:?}"
                );
            }
        }
        assert!(files >= 2);
        let home = Home::open(&root, None).await.unwrap();
        assert_eq!(
            home.meta()
                .instance_value(crate::ledger_key::WRAPPED)
                .await
                .unwrap(),
            None
        );
        // Without the file, the ledger key is missing (and says where).
        fs::rename(&key_file, dir.path().join("elsewhere")).unwrap();
        let e = home.ledger_keys(None, None).await.unwrap_err();
        assert!(e.to_string().contains("home.ledger.key"), "{e}");
        // A group-readable key file is refused.
        fs::rename(dir.path().join("elsewhere"), &key_file).unwrap();
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            home.ledger_keys(None, None).await,
            Err(HomeError::KeyFileShared { .. })
        ));
        // A key file inside the home is refused at init.
        let inside = dir.path().join("other");
        let e = Home::init_with(
            &inside,
            MasterKeySource::GenerateFile,
            None,
            LedgerKeySource::File(inside.join("ledger.key")),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, HomeError::LedgerKeyInside(_)));
    }

    #[tokio::test]
    async fn external_key_is_required_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        let key = MasterKey::generate().unwrap();
        let hex = key.to_hex();
        Home::init(&root, MasterKeySource::External(key), None)
            .await
            .unwrap();
        assert!(!root.join(MASTER_KEY_FILE).exists());
        assert!(matches!(
            Home::open(&root, None).await,
            Err(HomeError::MasterKeyMissing)
        ));
        let wrong = MasterKey::generate().unwrap();
        assert!(matches!(
            Home::open(&root, Some(wrong)).await,
            Err(HomeError::Key(KeyError::WrongMasterKey))
        ));
        Home::open(&root, Some(MasterKey::from_hex(&hex).unwrap()))
            .await
            .unwrap();
    }

    #[test]
    fn origins() {
        assert!(valid_origin("example.com/custos"));
        assert!(!valid_origin("has space"));
        assert!(!valid_origin("a+b"));
        assert!(!valid_origin(""));
    }
}
