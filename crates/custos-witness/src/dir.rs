//! A witness's directory.
//!
//! ```text
//! WITNESS/            mode 0700
//!   witness.toml      name = "<key name>"; [[log]] key = "<log verifier key>" ...
//!   witness.key       0600, hex Ed25519 seed (never printed)
//!   state.json        per origin: the size and root hash it last cosigned
//!   lock              flock held by the one serving process
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use custos_ledger::{Cosigner, WitnessKey};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const CONFIG: &str = "witness.toml";
const KEY: &str = "witness.key";
const STATE: &str = "state.json";
const LOCK: &str = "lock";

/// Errors of a witness directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WitnessDirError {
    /// A file could not be read or written.
    #[error("`{path}`: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// `init` found a witness already there.
    #[error("`{0}` already holds a witness; refusing to overwrite its key")]
    Exists(PathBuf),
    /// The configuration is malformed.
    #[error("`{path}`: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key file is readable by others.
    #[error(
        "`{0}` may be read by others than its owner: run `chmod 600` on it (and consider the key exposed)"
    )]
    KeyShared(PathBuf),
    /// Another process serves this witness.
    #[error("the witness in `{0}` is already being served by another process")]
    Busy(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WitnessDirError + '_ {
    move |cause| WitnessDirError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// A log the witness follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowedLog {
    /// The log's checkpoint verifier key (`origin+id+base64`); its name is
    /// the log's origin.
    pub key: String,
}

/// `witness.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// The witness's key name (a schema-less URL is customary, e.g.
    /// `witness.ig.example.gov/custos`).
    pub name: String,
    /// The logs it follows.
    #[serde(default, rename = "log")]
    pub logs: Vec<FollowedLog>,
}

impl WitnessConfig {
    /// The logs' verifier keys by origin (several keys may sign one log).
    pub fn keys_by_origin(&self) -> Result<BTreeMap<String, Vec<String>>, String> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for log in &self.logs {
            signed_note::StandardVerifier::new(&log.key)
                .map_err(|e| format!("log key `{}`: {e}", log.key))?;
            let origin = log.key.split('+').next().unwrap_or_default().to_owned();
            out.entry(origin).or_default().push(log.key.clone());
        }
        Ok(out)
    }
}

/// What the witness last cosigned for one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHead {
    /// Tree size.
    pub size: u64,
    /// Root hash.
    #[serde(with = "custos_ledger::hex32")]
    pub root: [u8; 32],
}

/// Heads by origin, as stored in `state.json`.
pub type Heads = BTreeMap<String, LogHead>;

/// An opened witness directory.
#[derive(Debug, Clone)]
pub struct WitnessDir {
    root: PathBuf,
}

impl WitnessDir {
    /// Creates a witness in `root` (which must be absent or empty) named
    /// `name`, following the logs whose verifier keys are `logs`.
    pub fn init(
        root: &Path,
        name: &str,
        logs: &[String],
    ) -> Result<(Self, WitnessKey), WitnessDirError> {
        let config = WitnessConfig {
            name: name.to_owned(),
            logs: logs
                .iter()
                .map(|k| FollowedLog { key: k.clone() })
                .collect(),
        };
        config
            .keys_by_origin()
            .map_err(|message| WitnessDirError::Config {
                path: root.join(CONFIG),
                message,
            })?;
        if root.join(KEY).exists() || root.join(CONFIG).exists() {
            return Err(WitnessDirError::Exists(root.to_owned()));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io(root))?;
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| WitnessDirError::Io {
            path: root.join(KEY),
            cause: std::io::Error::other(e.to_string()),
        })?;
        let key_path = root.join(KEY);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(io(&key_path))?;
        file.write_all(Zeroizing::new(hex::encode(seed.as_ref())).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(&key_path))?;
        let text = toml::to_string_pretty(&config).map_err(|e| WitnessDirError::Config {
            path: root.join(CONFIG),
            message: e.to_string(),
        })?;
        let config_path = root.join(CONFIG);
        fs::write(&config_path, format!("# The logs this witness follows: add a [[log]] with the log's\n# verifier key (`custos ledger public-key` prints it) and restart.\n{text}"))
            .map_err(io(&config_path))?;
        let dir = Self {
            root: root.to_owned(),
        };
        let public = dir.cosigner()?.public().clone();
        Ok((dir, public))
    }

    /// Opens the witness in `root`.
    pub fn open(root: &Path) -> Result<Self, WitnessDirError> {
        if !root.join(CONFIG).is_file() {
            return Err(WitnessDirError::Config {
                path: root.join(CONFIG),
                message: "no witness here: run `custos witness init` first".into(),
            });
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The configuration.
    pub fn config(&self) -> Result<WitnessConfig, WitnessDirError> {
        let path = self.root.join(CONFIG);
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let config: WitnessConfig = toml::from_str(&text).map_err(|e| WitnessDirError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        config
            .keys_by_origin()
            .map_err(|message| WitnessDirError::Config { path, message })?;
        Ok(config)
    }

    /// The witness's signing key under its configured name.
    pub fn cosigner(&self) -> Result<Cosigner, WitnessDirError> {
        let path = self.root.join(KEY);
        let meta = fs::metadata(&path).map_err(io(&path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(WitnessDirError::KeyShared(path));
        }
        let text = Zeroizing::new(fs::read_to_string(&path).map_err(io(&path))?);
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), seed.as_mut()).map_err(|_| WitnessDirError::Config {
            path: path.clone(),
            message: "the key is not 64 hex digits".into(),
        })?;
        let name = self.config()?.name;
        Cosigner::new(&name, SigningKey::from_bytes(&seed)).map_err(|e| WitnessDirError::Config {
            path: self.root.join(CONFIG),
            message: e.to_string(),
        })
    }

    /// Takes the directory's lock for serving (released when dropped).
    pub fn lock(&self) -> Result<File, WitnessDirError> {
        let path = self.root.join(LOCK);
        let file = File::create(&path).map_err(io(&path))?;
        file.try_lock()
            .map_err(|_| WitnessDirError::Busy(self.root.clone()))?;
        Ok(file)
    }

    /// The heads it cosigned, by origin.
    pub fn heads(&self) -> Result<Heads, WitnessDirError> {
        let path = self.root.join(STATE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| WitnessDirError::Config {
                path,
                message: format!("the state is damaged: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Heads::new()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Stores the heads durably: a temporary file, fsync, rename, and an
    /// fsync of the directory, so a crash leaves the old or the new state.
    pub fn store_heads(&self, heads: &Heads) -> Result<(), WitnessDirError> {
        let path = self.root.join(STATE);
        let tmp = self.root.join("state.json.tmp");
        let bytes = serde_json::to_vec_pretty(heads).map_err(|e| WitnessDirError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut file = File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.root))
    }
}
