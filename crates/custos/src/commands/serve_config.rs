//! `custos serve --config FILE`: a replica's configuration, so that a
//! machine serving a home needs this file and its environment's
//! credentials, not a copy of the home's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A replica's configuration file. Paths are relative to the file's own
/// directory. It holds no secret: the PostgreSQL password (`PGPASSWORD`
/// or `~/.pgpass`), the object store's credentials (`AWS_*`), the master
/// key (`CUSTOS_MASTER_KEY`, shares or an HSM PIN) and the ledger key
/// (`CUSTOS_LEDGER_KEY`, or the file named here) stay outside it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// This replica's own directory (created if missing; it holds no data).
    pub home: Option<PathBuf>,
    /// The home's checkpoint origin, chosen at `custos init`.
    pub origin: String,
    /// The PostgreSQL catalogue's URL, without a password.
    pub catalogue: String,
    /// The object store's URL (datasets and, with the catalogue, the
    /// shared ledger).
    pub object_store: Option<String>,
    /// The ledger signing key's file, unless `CUSTOS_LEDGER_KEY` or
    /// `CUSTOS_LEDGER_KEY_FILE` is set.
    pub ledger_key_file: Option<PathBuf>,
    /// The server's options; a flag on the command line wins.
    #[serde(default)]
    pub server: ServerOptions,
}

/// `[server]`: the options `custos serve` also takes as flags, by the same
/// names with `_` for `-`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOptions {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--body-limit`, in bytes.
    pub body_limit: Option<usize>,
    /// `--request-timeout`, in seconds.
    pub request_timeout: Option<u64>,
    /// `--header-timeout`, in seconds.
    pub header_timeout: Option<u64>,
    /// `--max-in-flight`.
    pub max_in_flight: Option<usize>,
    /// `--rate`.
    pub rate: Option<u32>,
    /// `--burst`.
    pub burst: Option<u32>,
    /// `--max-unwitnessed`, e.g. "5m".
    #[serde(default, deserialize_with = "humantime_serde_option::deserialize")]
    pub max_unwitnessed: Option<Duration>,
    /// `--witness-refresh`, e.g. "1m".
    #[serde(default, deserialize_with = "humantime_serde_option::deserialize")]
    pub witness_refresh: Option<Duration>,
}

/// Durations written as "90s", "5m" or "1h 30m".
mod humantime_serde_option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|_| serde::de::Error::custom("not a duration such as \"90s\" or \"5m\""))
    }
}

/// `message` with what it quotes replaced by `…`: the parser quotes the
/// offending value, which may be a secret put in the file by mistake.
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

impl ServeConfig {
    /// Reads and checks `file`; relative paths in it become relative to
    /// its directory.
    pub fn read(file: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            anyhow::anyhow!("cannot read the configuration `{}`: {e}", file.display())
        })?;
        // The message and line only: the offending line itself could hold
        // a secret someone put in the file by mistake.
        let mut config: Self = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            anyhow::anyhow!(
                "the configuration `{}` is malformed{}: {}",
                file.display(),
                line.map(|l| format!(" at line {l}")).unwrap_or_default(),
                without_quoted(e.message())
            )
        })?;
        if matches!(
            (&config.server.tls_cert, &config.server.tls_key),
            (Some(_), None) | (None, Some(_))
        ) {
            anyhow::bail!(
                "the configuration `{}` names only one of `tls_cert` and `tls_key`: a TLS server needs both",
                file.display()
            );
        }
        let base = file.parent().unwrap_or(Path::new("."));
        for path in [
            config.home.as_mut(),
            config.ledger_key_file.as_mut(),
            config.server.tls_cert.as_mut(),
            config.server.tls_key.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        Ok(config)
    }

    /// Where the home's catalogue and files are, and whose they are.
    pub fn replica(&self) -> custos_broker::ReplicaHome {
        custos_broker::ReplicaHome {
            origin: self.origin.clone(),
            catalogue: self.catalogue.clone(),
            object_store: self.object_store.clone(),
        }
    }
}
