//! A Custos home: the data directory with its keys, metadata store and
//! dataset files.
//!
//! ```text
//! HOME/                 mode 0700
//!   master.key          0600, hex; only under the file key source (docs/keys.md)
//!   master.key.next     0600, during a rotation to a new key file only
//!   custos.db           SQLite metadata store (WAL), or
//!   catalogue.toml      0600, the PostgreSQL catalogue's URL (see catalogue.rs)
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

use crate::catalogue::CatalogueLocation;
use crate::hsm::{HsmConfig, HsmKey};
use crate::key_shares::{PrintedShare, ShareSet};
use crate::keyring::{Keyring, Wrapper};
use crate::keys::KeyCheck;
use crate::keys::{DerivationRoot, KEY_LEN, KeyError, MasterKey, SecretText, random_bytes};
use crate::ledger_key::LedgerKeySource;
use crate::meta::{MetaError, MetadataStore, SqlMetadata};
use crate::objects::{ObjectFiles, ObjectStoreLocation};
use crate::sealed::{DERIVATION_ROOT, RETIRED_KEYS_PURPOSE, derivation_root_purpose};

/// The on-disk format version this build writes and reads.
pub const FORMAT_VERSION: &str = "1";
/// Name of the master key file inside a home.
pub const MASTER_KEY_FILE: &str = "master.key";
/// Name of a new master key file while a rotation is under way.
pub const NEXT_MASTER_KEY_FILE: &str = "master.key.next";
/// Name of the lock file a rotation holds exclusively (and an open holds
/// shared), so that no process tidies key files while another rotates.
pub const KEY_LOCK_FILE: &str = "master.key.lock";
/// Name of the SQLite metadata database inside a home.
pub const METADATA_DB_FILE: &str = "custos.db";
/// Purpose of the key that names the home's writer lease.
const WRITER_LEASE_PURPOSE: &str = "custos/v1/writer-lease";
const AGREEMENT_LOCK_PURPOSE: &str = "custos/v1/agreement-lock";
/// Name of the datasets directory inside a home.
pub const DATASETS_DIR: &str = "datasets";
/// Name of the ledger directory inside a home.
pub const LEDGER_DIR: &str = "ledger";

/// Instance setting: where the master key lives (`file`, `env`, `shares`, `hsm`).
pub(crate) const KEY_SOURCE: &str = "master_key_source";
/// Instance setting: the software master key's check value.
pub(crate) const KEY_CHECK: &str = "master_key_check";
/// Instance setting: the share set (JSON) under the shares source.
pub(crate) const KEY_SHARES: &str = "key_shares";
/// Instance setting: the token and key (JSON) under the HSM source.
pub(crate) const KEY_HSM: &str = "key_hsm";
/// Instance setting: the HSM keys rotations retired and have yet to
/// destroy (JSON, sealed under the current master key, so a tampered
/// catalogue cannot name a key for destruction).
pub(crate) const KEY_HSM_RETIRED: &str = "key_hsm_retired";

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
    /// The home opens with a quorum of key shares and none were given.
    #[error(
        "this home opens with {threshold} of its {count} key shares: set CUSTOS_KEY_SHARES (shares separated by spaces or commas) or run the command in a terminal to be asked for them"
    )]
    SharesMissing {
        /// Shares needed.
        threshold: usize,
        /// Shares issued.
        count: usize,
    },
    /// The home's master key is in an HSM and no PIN was given.
    #[error(
        "this home's master key is in the HSM token `{0}`: set CUSTOS_HSM_PIN or run the command in a terminal to be asked for the PIN"
    )]
    HsmPinMissing(String),
    /// Another process is rotating the master key.
    #[error(
        "a master-key rotation is under way on this home in another process: try again when it has finished"
    )]
    RotationUnderWay,
    /// A key of a kind this home's key source does not take.
    #[error("this home's master key source is {0}; the key given does not fit it")]
    WrongKeyKind(&'static str),
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
    /// The catalogue's location is malformed, unreachable or not this home's.
    #[error("{0}")]
    Catalogue(String),
    /// The object store is malformed, unreachable or not this home's.
    #[error("{0}")]
    ObjectStore(String),
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
    /// Generate one, split it into `count` Shamir shares of which any
    /// `threshold` open the home, and keep it nowhere.
    Shares {
        /// Shares needed to open.
        threshold: usize,
        /// Shares issued.
        count: usize,
    },
    /// Generate a non-extractable AES key inside a PKCS#11 token.
    Hsm {
        /// The module and token.
        config: HsmConfig,
        /// The token's user PIN.
        pin: SecretText,
    },
}

/// What opens a home, given from outside it (`master.key` is read by
/// the home itself).
#[derive(Debug, Default)]
pub enum KeyInput {
    /// Nothing: the home's key file.
    #[default]
    None,
    /// A master key (`CUSTOS_MASTER_KEY`).
    Master(MasterKey),
    /// Key shares' texts (`CUSTOS_KEY_SHARES` or a prompt).
    Shares(Vec<SecretText>),
    /// The HSM token's PIN (`CUSTOS_HSM_PIN` or a prompt).
    HsmPin(SecretText),
}

/// Where an existing home's master key lives, as its catalogue records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `HOME/master.key`.
    File,
    /// `CUSTOS_MASTER_KEY`.
    Environment,
    /// Shamir shares held by several people.
    Shares(ShareSet),
    /// A key inside a PKCS#11 token.
    Hsm(HsmConfig),
}

impl KeySource {
    /// The source's name as the catalogue and `custos key show` spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Environment => "env",
            Self::Shares(_) => "shares",
            Self::Hsm(_) => "hsm",
        }
    }

    /// The settings that record this source (`KEY_SOURCE` and its details).
    pub(crate) fn settings(&self) -> Result<Vec<(&'static str, Vec<u8>)>, HomeError> {
        let mut out = vec![(KEY_SOURCE, self.name().as_bytes().to_vec())];
        match self {
            Self::Shares(set) => out.push((KEY_SHARES, json(set)?)),
            Self::Hsm(config) => out.push((KEY_HSM, json(config)?)),
            Self::File | Self::Environment => {}
        }
        Ok(out)
    }

    /// Reads the source from the catalogue.
    pub(crate) async fn read(meta: &dyn MetadataStore) -> Result<Self, HomeError> {
        let name = meta.instance_value(KEY_SOURCE).await?.unwrap_or_default();
        let detail = |key: &'static str| async move {
            meta.instance_value(key).await?.ok_or_else(|| {
                HomeError::Meta(MetaError::Corrupt(format!("setting `{key}` is missing")))
            })
        };
        Ok(match name.as_slice() {
            b"file" => Self::File,
            b"env" => Self::Environment,
            b"shares" => {
                let set: ShareSet = unjson(&detail(KEY_SHARES).await?, KEY_SHARES)?;
                if set.threshold < 2 || set.threshold > set.count() || set.count() > 255 {
                    return Err(HomeError::Meta(MetaError::Corrupt(format!(
                        "setting `{KEY_SHARES}` is malformed"
                    ))));
                }
                Self::Shares(set)
            }
            b"hsm" => Self::Hsm(unjson(&detail(KEY_HSM).await?, KEY_HSM)?),
            other => {
                return Err(HomeError::Meta(MetaError::Corrupt(format!(
                    "unknown master key source `{}`",
                    String::from_utf8_lossy(other)
                ))));
            }
        })
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, HomeError> {
    serde_json::to_vec(value).map_err(|e| HomeError::Meta(MetaError::Corrupt(e.to_string())))
}

fn unjson<T: serde::de::DeserializeOwned>(bytes: &[u8], key: &str) -> Result<T, HomeError> {
    serde_json::from_slice(bytes)
        .map_err(|_| HomeError::Meta(MetaError::Corrupt(format!("setting `{key}` is malformed"))))
}

/// What `init` created, for the user.
#[derive(Debug)]
pub struct InitReport {
    /// The home directory.
    pub root: PathBuf,
    /// Whether the master key was written to `master.key`.
    pub master_key_file: bool,
    /// The key shares to hand out, once (shares source only).
    pub shares: Vec<PrintedShare>,
    /// Shares needed to open (shares source only).
    pub threshold: usize,
    /// The HSM token and key (HSM source only).
    pub hsm: Option<HsmConfig>,
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
    keys: Keyring,
    source: KeySource,
    meta: Arc<dyn MetadataStore>,
    /// Dataset files this process verified against their ingest digests.
    digests: Arc<crate::digests::DigestCache>,
    /// The object store of the dataset files, if not local.
    objects: Option<Arc<ObjectFiles>>,
    /// Where the ledger is written and published.
    ledger: LedgerPlacement,
}

/// Where a home's ledger is written and published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerPlacement {
    /// `HOME/ledger/`: a journal file beside the published files, written
    /// by the one process that holds the home (the embedded default).
    Local,
    /// Replicated: the journal in the PostgreSQL catalogue, the published
    /// files under `PREFIX/ledger/` in the object store (a home made with
    /// both; see `custos_ledger::shared`).
    Shared,
}

/// A shared ledger's home without the file that names its object store.
fn no_object_store_file() -> HomeError {
    HomeError::ObjectStore(format!(
        "the ledger is published in object storage, but `{}` is missing",
        crate::objects::OBJECT_STORE_FILE
    ))
}

/// The catalogue setting that records a shared ledger.
const LEDGER_PLACEMENT: &str = "ledger_placement";

impl LedgerPlacement {
    /// The placement a new home gets: shared when its catalogue is in
    /// PostgreSQL and its files in object storage, so that another machine
    /// can carry on its ledger; local otherwise.
    fn for_new(placement: &Placement) -> Self {
        match (&placement.catalogue, &placement.objects) {
            (CatalogueLocation::Postgres(_), Some(_)) => Self::Shared,
            _ => Self::Local,
        }
    }

    /// The placement recorded in a home's catalogue.
    async fn recorded(meta: &SqlMetadata) -> Result<Self, HomeError> {
        match meta.instance_value(LEDGER_PLACEMENT).await?.as_deref() {
            None => Ok(Self::Local),
            Some(b"shared") => Ok(Self::Shared),
            Some(other) => Err(HomeError::Meta(MetaError::Corrupt(format!(
                "unknown ledger placement `{}`",
                String::from_utf8_lossy(other)
            )))),
        }
    }
}

/// Where a new home keeps its catalogue and its dataset files (the
/// embedded default: SQLite and local files).
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The catalogue.
    pub catalogue: CatalogueLocation,
    /// The dataset files' object store (`None`: HOME/datasets).
    pub objects: Option<ObjectStoreLocation>,
}

impl From<CatalogueLocation> for Placement {
    fn from(catalogue: CatalogueLocation) -> Self {
        Self {
            catalogue,
            objects: None,
        }
    }
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
        Self::init_with(
            root,
            key,
            origin,
            LedgerKeySource::beside(root),
            CatalogueLocation::Embedded,
        )
        .await
    }

    /// [`Home::init`] with the ledger signing key from `ledger_key`, the
    /// catalogue and the dataset files where `placement` says.
    pub async fn init_with(
        root: &Path,
        key: MasterKeySource,
        origin: Option<String>,
        ledger_key: LedgerKeySource,
        placement: impl Into<Placement>,
    ) -> Result<InitReport, HomeError> {
        let placement = placement.into();
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
        let result = Self::populate(
            &staging,
            key,
            &origin,
            &seed,
            key_file.as_deref(),
            &placement,
        )
        .await;
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
        placement: &Placement,
    ) -> Result<InitReport, HomeError> {
        let catalogue = &placement.catalogue;
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
        let mut shares = Vec::new();
        let mut threshold = 0;
        let (wrapper, source) = match key {
            MasterKeySource::GenerateFile => {
                let master = MasterKey::generate()?;
                let mut text = Zeroizing::new(master.to_hex().to_string());
                text.push('\n');
                write_secret_file(&dir.join(MASTER_KEY_FILE), text.as_bytes())?;
                (Wrapper::Software(master), KeySource::File)
            }
            MasterKeySource::External(master) => {
                (Wrapper::Software(master), KeySource::Environment)
            }
            MasterKeySource::Shares {
                threshold: t,
                count,
            } => {
                let master = MasterKey::generate()?;
                let (printed, set) = crate::key_shares::split(&master, t, count)?;
                shares = printed;
                threshold = t;
                (Wrapper::Software(master), KeySource::Shares(set))
            }
            MasterKeySource::Hsm { config, pin } => {
                let key = HsmKey::create(&config, pin.expose())?;
                let config = key.config().clone();
                (Wrapper::Hsm(key), KeySource::Hsm(config))
            }
        };
        let signing = SigningKey::from_bytes(seed);
        let public_key_hex = hex::encode(signing.verifying_key().as_bytes());
        catalogue.write(dir, origin)?;
        let meta = CatalogueLocation::open(dir, true).await?;
        if meta.instance_value("format_version").await?.is_some() {
            meta.close().await;
            return Err(HomeError::Catalogue(
                "the PostgreSQL database already holds a Custos catalogue: give each home an empty database"
                    .into(),
            ));
        }
        meta.insert_instance_value("format_version", FORMAT_VERSION.as_bytes())
            .await?;
        if let Wrapper::Software(master) = &wrapper {
            meta.insert_instance_value(KEY_CHECK, &master.key_check())
                .await?;
        }
        for (setting, value) in source.settings()? {
            meta.insert_instance_value(setting, &value).await?;
        }
        let root = DerivationRoot::generate()?;
        meta.insert_instance_value(
            DERIVATION_ROOT,
            &wrapper.wrap(&derivation_root_purpose(origin), root.bytes())?,
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
        if LedgerPlacement::for_new(placement) == LedgerPlacement::Shared {
            meta.insert_instance_value(LEDGER_PLACEMENT, b"shared")
                .await?;
        }
        meta.close().await;
        if let Some(objects) = &placement.objects {
            // Last: a prefix is claimed only by a home that is otherwise whole.
            objects.write(dir, origin)?;
            ObjectFiles::connect(objects)?.claim(origin).await?;
        }
        sync_dir(dir)?;
        Ok(InitReport {
            root: dir.to_owned(),
            master_key_file: source == KeySource::File,
            shares,
            threshold,
            hsm: match &source {
                KeySource::Hsm(config) => Some(config.clone()),
                _ => None,
            },
            origin: origin.to_owned(),
            public_key_hex,
            ledger_key_file: key_file.map(Path::to_owned),
        })
    }

    /// Opens an existing home. `external_key` (from `CUSTOS_MASTER_KEY`) takes
    /// precedence over `master.key`; either way the key is checked against
    /// the home's key check, so a wrong key fails here, not as garbage later.
    pub async fn open(root: &Path, external_key: Option<MasterKey>) -> Result<Self, HomeError> {
        let input = external_key.map_or(KeyInput::None, KeyInput::Master);
        Self::open_keyed(root, input).await
    }

    /// Opens the catalogue alone, checking its format (no key needed).
    async fn open_catalogue(root: &Path) -> Result<SqlMetadata, HomeError> {
        let meta = CatalogueLocation::open(root, false).await?;
        let version = meta
            .instance_value("format_version")
            .await?
            .unwrap_or_default();
        if version != FORMAT_VERSION.as_bytes() {
            return Err(HomeError::FormatVersion(
                String::from_utf8_lossy(&version).into_owned(),
            ));
        }
        Ok(meta)
    }

    /// Where the master key of the home at `root` lives, read without any
    /// key (to know what to ask for).
    pub async fn read_key_source(root: &Path) -> Result<KeySource, HomeError> {
        let meta = Self::open_catalogue(root).await?;
        let source = KeySource::read(&meta).await;
        meta.close().await;
        source
    }

    /// The checkpoint origin and ledger public key of the home at `root`,
    /// read without any key: verifying the public ledger needs no secret.
    pub async fn public_ledger(
        root: &Path,
    ) -> Result<
        (
            Arc<dyn custos_ledger::PublishedFiles>,
            String,
            ed25519_dalek::VerifyingKey,
        ),
        HomeError,
    > {
        let meta = Self::open_catalogue(root).await?;
        let origin = meta.instance_value("origin").await?.unwrap_or_default();
        let public = crate::ledger_key::public_key_of(&meta).await;
        let placement = LedgerPlacement::recorded(&meta).await;
        meta.close().await;
        let files: Arc<dyn custos_ledger::PublishedFiles> = match placement? {
            LedgerPlacement::Local => {
                Arc::new(custos_ledger::DirFiles::new(&root.join(LEDGER_DIR)))
            }
            LedgerPlacement::Shared => {
                let (location, _) =
                    ObjectStoreLocation::read(root)?.ok_or_else(no_object_store_file)?;
                Arc::new(Arc::new(ObjectFiles::connect(&location)?).ledger())
            }
        };
        Ok((
            files,
            String::from_utf8_lossy(&origin).into_owned(),
            public?,
        ))
    }

    /// Opens an existing home with what its key source needs: its key file
    /// (or `CUSTOS_MASTER_KEY` in its place), a quorum of its shares, or
    /// its HSM token's PIN. The key is checked before anything is read.
    pub async fn open_keyed(root: &Path, input: KeyInput) -> Result<Self, HomeError> {
        let meta = Self::open_catalogue(root).await?;
        let source = KeySource::read(&meta).await?;
        let check = meta.instance_value(KEY_CHECK).await?.unwrap_or_default();
        // Shared while this process reads key files; exclusive (below)
        // only to tidy what a crashed rotation left. Never while another
        // process rotates: its staged key would be taken for a leftover.
        let lock = KeyLock::shared(root)?;
        let mut pin_given = None;
        let wrapper = match (&source, input) {
            (KeySource::Hsm(config), KeyInput::HsmPin(pin)) => {
                let key = HsmKey::open(config, pin.expose())?;
                pin_given = Some(pin);
                Wrapper::Hsm(key)
            }
            (KeySource::Hsm(config), _) => {
                return Err(HomeError::HsmPinMissing(config.token.clone()));
            }
            (KeySource::Shares(set), KeyInput::Shares(texts)) => {
                Wrapper::Software(crate::key_shares::combine(&texts, set)?)
            }
            (KeySource::Shares(set), _) => {
                return Err(HomeError::SharesMissing {
                    threshold: set.threshold,
                    count: set.count(),
                });
            }
            (_, KeyInput::Shares(_)) => return Err(HomeError::WrongKeyKind(source.name())),
            (_, KeyInput::HsmPin(_)) => return Err(HomeError::WrongKeyKind(source.name())),
            (KeySource::File | KeySource::Environment, KeyInput::Master(master)) => {
                Wrapper::Software(master)
            }
            (KeySource::Environment, KeyInput::None) => return Err(HomeError::MasterKeyMissing),
            (KeySource::File, KeyInput::None) => {
                Wrapper::Software(read_key_file(root, &check, &lock)?)
            }
        };
        // An HSM key has no separate check: the root's unwrap below is it.
        let check_kind = match &wrapper {
            Wrapper::Software(master) => master.verify_key_check(&check)?,
            Wrapper::Hsm(_) => KeyCheck::Current,
        };
        let origin = meta.instance_value("origin").await?.unwrap_or_default();
        let origin = String::from_utf8_lossy(&origin);
        let root_key = match meta.instance_value(DERIVATION_ROOT).await? {
            Some(wrapped) => DerivationRoot::from_bytes(
                *wrapper
                    .unwrap_key(
                        &derivation_root_purpose(&origin),
                        "derivation root",
                        &wrapped,
                    )
                    .map_err(|e| match (&wrapper, e) {
                        // An HSM key has no separate check: a key that
                        // cannot open the root is the wrong key (or
                        // another token's).
                        (Wrapper::Hsm(_), KeyError::Unwrap(_)) => KeyError::WrongMasterKey,
                        (_, e) => e,
                    })?,
            ),
            // A home made before key custody (its key check says so, and
            // only the key can make a check): its derived keys came from
            // the master key itself, and stay so (see keys.rs).
            None => match &wrapper {
                Wrapper::Software(master) if check_kind == KeyCheck::Legacy => {
                    DerivationRoot::from_bytes(*master.bytes())
                }
                _ => {
                    return Err(HomeError::Meta(MetaError::Corrupt(
                        "the derivation root is missing".into(),
                    )));
                }
            },
        };
        if let (KeySource::Hsm(config), Some(pin)) = (&source, &pin_given) {
            destroy_retired_keys(&meta, &wrapper, config, pin.expose()).await?;
        }
        if source != KeySource::File {
            // A rotation away from a key file that stopped after its
            // commit: the old key opens nothing here any more.
            for stale in [MASTER_KEY_FILE, NEXT_MASTER_KEY_FILE] {
                let path = root.join(stale);
                if path.exists() {
                    lock.exclusive()?;
                    remove_if_present(&path)?;
                }
            }
        }
        drop(lock);
        let ledger = LedgerPlacement::recorded(&meta).await?;
        let objects = match ObjectStoreLocation::read(root)? {
            Some((location, recorded_origin)) => {
                if recorded_origin != origin {
                    return Err(HomeError::ObjectStore(format!(
                        "`{}` was written for the home `{recorded_origin}`, not this one (`{origin}`)",
                        crate::objects::OBJECT_STORE_FILE
                    )));
                }
                let objects = ObjectFiles::connect(&location)?;
                objects.check_owner(&origin).await?;
                Some(Arc::new(objects))
            }
            None => None,
        };
        if ledger == LedgerPlacement::Local
            && let Some(objects) = &objects
            && objects.holds_ledger().await?
        {
            // The catalogue's setting was removed: a local ledger opened
            // now would start empty beside the real one.
            return Err(HomeError::Meta(MetaError::Corrupt(
                "the catalogue says this home's ledger is local, but its object store holds a shared ledger's checkpoint: the catalogue's `ledger_placement` setting was removed or the catalogue restored from elsewhere".into(),
            )));
        }
        Ok(Self {
            root: root.to_owned(),
            keys: Keyring::new(wrapper, root_key),
            source,
            meta: Arc::new(meta),
            digests: Arc::default(),
            objects,
            ledger,
        })
    }

    /// Takes this home's writer lease (see [`crate::meta::WriterLease`]);
    /// its key comes from the derivation root, so only a holder of the
    /// home's keys can take or block it.
    pub async fn hold_writer(&self) -> Result<crate::meta::WriterLease, HomeError> {
        let derived = self.keys.derive(WRITER_LEASE_PURPOSE);
        let mut key = [0u8; 8];
        key.copy_from_slice(&derived[..8]);
        Ok(self.meta.hold_writer(i64::from_be_bytes(key)).await?)
    }

    /// Holds agreement `id`'s lock for limited actions across every
    /// process writing this home's catalogue (see
    /// [`crate::meta::CatalogueLock`]); its key comes from the derivation
    /// root, like the writer lease's.
    pub async fn hold_agreement_lock(
        &self,
        id: &str,
    ) -> Result<crate::meta::CatalogueLock, HomeError> {
        use sha2::Digest as _;
        let derived = self.keys.derive(AGREEMENT_LOCK_PURPOSE);
        let digest = sha2::Sha256::new()
            .chain_update(derived.as_slice())
            .chain_update(id.as_bytes())
            .finalize();
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest[..8]);
        Ok(self.meta.hold_lock(i64::from_be_bytes(key)).await?)
    }

    /// The home directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The digests of dataset files this process has verified.
    pub fn digest_cache(&self) -> Arc<crate::digests::DigestCache> {
        Arc::clone(&self.digests)
    }

    /// The object store of the dataset files (`None`: they are local, in
    /// [`Home::datasets_dir`]).
    pub fn objects(&self) -> Option<&Arc<ObjectFiles>> {
        self.objects.as_ref()
    }

    /// The directory that holds the datasets' directories (and, with an
    /// object store, the staging directories of ingests).
    pub fn datasets_dir(&self) -> PathBuf {
        self.root.join(DATASETS_DIR)
    }

    /// The ledger's directory.
    pub fn ledger_dir(&self) -> PathBuf {
        self.root.join(LEDGER_DIR)
    }

    /// Where this home's ledger is written and published.
    pub fn ledger_placement(&self) -> LedgerPlacement {
        self.ledger
    }

    /// The ledger's published files: `HOME/ledger/`, or `PREFIX/ledger/`
    /// in the object store for a shared ledger.
    pub fn published_ledger(&self) -> Result<Arc<dyn custos_ledger::PublishedFiles>, HomeError> {
        match (self.ledger, &self.objects) {
            (LedgerPlacement::Local, _) => {
                Ok(Arc::new(custos_ledger::DirFiles::new(&self.ledger_dir())))
            }
            (LedgerPlacement::Shared, Some(objects)) => Ok(Arc::new(objects.ledger())),
            (LedgerPlacement::Shared, None) => Err(no_object_store_file()),
        }
    }

    /// The shared ledger's journal in the PostgreSQL catalogue (a new
    /// connection pool of its own).
    pub fn shared_journal(&self) -> Result<crate::journal::PgJournal, HomeError> {
        let url = crate::catalogue::postgres_url(&self.root)?.ok_or_else(|| {
            HomeError::Catalogue("a shared ledger needs the catalogue in PostgreSQL".into())
        })?;
        crate::journal::PgJournal::connect(&url)
            .map_err(|e| HomeError::Catalogue(format!("the shared ledger's journal: {e}")))
    }

    /// The key of the ledger's subject commitments (derived from the
    /// derivation root).
    pub fn ledger_subject_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.keys.derive("custos/v1/ledger-subject-commitment")
    }

    /// The home's keys: the master key and the derivation root.
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    /// Where the master key lives.
    pub fn key_source(&self) -> &KeySource {
        &self.source
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

/// The HSM keys rotations retired and have yet to destroy, as sealed under
/// the current key (a record that does not open under it is ignored: it
/// was not written by this home's rotation).
pub(crate) async fn retired_keys(
    meta: &dyn MetadataStore,
    wrapper: &Wrapper,
) -> Result<Vec<HsmConfig>, HomeError> {
    let Some(sealed) = meta.instance_value(KEY_HSM_RETIRED).await? else {
        return Ok(Vec::new());
    };
    let Ok(json) = wrapper.unwrap_secret(RETIRED_KEYS_PURPOSE, "retired HSM keys", &sealed) else {
        return Ok(Vec::new());
    };
    Ok(serde_json::from_slice(&json).unwrap_or_default())
}

/// Writes the retired keys' list sealed under `wrapper` (or removes it).
pub(crate) fn retired_setting(
    wrapper: &Wrapper,
    keys: &[HsmConfig],
) -> Result<Option<Vec<u8>>, HomeError> {
    if keys.is_empty() {
        return Ok(None);
    }
    Ok(Some(wrapper.wrap(RETIRED_KEYS_PURPOSE, &json(&keys)?)?))
}

/// Destroys the HSM keys a rotation retired but could not destroy (a
/// crash after its commit) that are in the token of the key in use and
/// are not that key. Runs after the key in use has opened the root.
async fn destroy_retired_keys(
    meta: &SqlMetadata,
    wrapper: &Wrapper,
    current: &HsmConfig,
    pin: &str,
) -> Result<(), HomeError> {
    let retired = retired_keys(meta, wrapper).await?;
    if retired.is_empty() {
        return Ok(());
    }
    let mut kept = Vec::new();
    for old in retired {
        let same_key = old.label == current.label || old.id == current.id;
        if same_key || old.module != current.module || old.token != current.token {
            if !same_key {
                kept.push(old);
            }
            continue;
        }
        if let Ok(key) = HsmKey::open(&old, pin) {
            key.destroy()?;
        }
    }
    match retired_setting(wrapper, &kept)? {
        Some(v) => {
            meta.replace_instance_values(&[(KEY_HSM_RETIRED, &v)], &[])
                .await?
        }
        None => {
            meta.replace_instance_values(&[], &[KEY_HSM_RETIRED])
                .await?
        }
    }
    Ok(())
}

/// Reads `HOME/master.key`, finishing or undoing a rotation that a crash
/// interrupted: a `master.key.next` that matches the catalogue's key
/// check was committed (the rename is finished); one that does not was
/// not (it is removed). Either way the home opens with exactly one key.
fn read_key_file(root: &Path, check: &[u8], lock: &KeyLock) -> Result<MasterKey, HomeError> {
    let path = root.join(MASTER_KEY_FILE);
    let next = root.join(NEXT_MASTER_KEY_FILE);
    if next.exists() {
        lock.exclusive()?;
    }
    // Checked again under the exclusive hold: another open may have
    // tidied it meanwhile.
    if next.exists() {
        refuse_shared_key_file(&next)?;
        let text = Zeroizing::new(fs::read_to_string(&next).map_err(io_err(&next))?);
        let committed = MasterKey::from_hex(&text)
            .map(|k| k.verify_key_check(check).is_ok())
            .unwrap_or(false);
        if committed {
            fs::rename(&next, &path).map_err(io_err(&path))?;
        } else {
            fs::remove_file(&next).map_err(io_err(&next))?;
        }
        sync_dir(root)?;
    }
    refuse_shared_key_file(&path)?;
    match fs::read_to_string(&path) {
        Ok(text) => Ok(MasterKey::from_hex(&Zeroizing::new(text))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(HomeError::MasterKeyMissing),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// The home's key lock (`master.key.lock`): an advisory file lock that a
/// rotation holds exclusively from staging its key to moving it into
/// place, and an open holds shared while it reads key files.
#[derive(Debug)]
pub(crate) struct KeyLock(fs::File);

impl KeyLock {
    fn file(root: &Path) -> Result<fs::File, HomeError> {
        let path = root.join(KEY_LOCK_FILE);
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))
    }

    /// Tries `take` for up to five seconds (another open tidying, or a
    /// short rotation, ends by then), then says a rotation is under way.
    fn retrying(take: impl Fn() -> Result<(), fs::TryLockError>) -> Result<(), HomeError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match take() {
                Ok(()) => return Ok(()),
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(_) => return Err(HomeError::RotationUnderWay),
            }
        }
    }

    /// A shared hold, refused while a rotation holds the lock.
    pub(crate) fn shared(root: &Path) -> Result<Self, HomeError> {
        let file = Self::file(root)?;
        Self::retrying(|| file.try_lock_shared())?;
        Ok(Self(file))
    }

    /// An exclusive hold, refused while any other process holds the lock.
    pub(crate) fn exclusive_on(root: &Path) -> Result<Self, HomeError> {
        let file = Self::file(root)?;
        Self::retrying(|| file.try_lock())?;
        Ok(Self(file))
    }

    /// Turns this shared hold exclusive (to tidy leftovers of a crash).
    pub(crate) fn exclusive(&self) -> Result<(), HomeError> {
        Self::retrying(|| self.0.try_lock())
    }
}

/// Removes a file if it exists, and makes the removal durable.
pub(crate) fn remove_if_present(path: &Path) -> Result<(), HomeError> {
    match fs::remove_file(path) {
        Ok(()) => path.parent().map_or(Ok(()), sync_dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
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
        let file_mode = |name: &str| {
            fs::metadata(root.join(name))
                .map(|m| m.permissions().mode() & 0o777)
                .ok()
        };
        // The catalogue holds token hashes and counts: the owner's alone.
        assert_eq!(file_mode(METADATA_DB_FILE), Some(0o600));
        // An older home's catalogue, made with the umask, is narrowed.
        fs::set_permissions(
            root.join(METADATA_DB_FILE),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let home = Home::open(&root, None).await.unwrap();
        assert_eq!(file_mode(METADATA_DB_FILE), Some(0o600));
        for companion in ["custos.db-wal", "custos.db-shm"] {
            assert!(
                matches!(file_mode(companion), None | Some(0o600)),
                "{companion}"
            );
        }
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
            CatalogueLocation::Embedded,
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
