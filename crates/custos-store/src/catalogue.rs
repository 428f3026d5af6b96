//! Where a home's catalogue lives: the embedded SQLite file (`custos.db`)
//! or a PostgreSQL database named in `catalogue.toml`.
//!
//! `catalogue.toml` records the database's URL and the home's origin. The
//! URL carries no password: the connection takes it from `PGPASSWORD` or
//! `~/.pgpass`, so the home's files (and their backups) never hold it. The
//! origin binds the database to this home: a home pointed at another
//! home's catalogue is refused by name before any key is tried.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::home::{HomeError, io_err, write_secret_file};
use crate::meta::{MetaError, SqlMetadata};

/// Name of the file that points a home at a PostgreSQL catalogue.
pub const CATALOGUE_FILE: &str = "catalogue.toml";

/// `text` with `%XX` escapes decoded (lossy).
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// The query parameters a catalogue URL may carry.
const ALLOWED_PARAMETERS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Where a new home keeps its catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CatalogueLocation {
    /// The embedded SQLite file inside the home (the default).
    #[default]
    Embedded,
    /// A PostgreSQL database, by URL (`postgres://user@host:port/db`).
    Postgres(String),
}

/// The contents of `catalogue.toml`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    /// The PostgreSQL URL, without a password.
    url: String,
    /// The origin of the home the catalogue belongs to.
    origin: String,
}

/// Reads and checks `catalogue.toml`.
fn read_file(file: &Path) -> Result<CatalogueFile, HomeError> {
    let text = std::fs::read_to_string(file).map_err(io_err(file))?;
    let config: CatalogueFile = toml::from_str(&text).map_err(|e| {
        HomeError::Catalogue(format!(
            "`{}` is malformed: {}",
            file.display(),
            e.message()
        ))
    })?;
    CatalogueLocation::postgres(&config.url)?;
    Ok(config)
}

/// The URL and origin `catalogue.toml` of the home at `root` records, if
/// it has one.
pub(crate) fn recorded(root: &Path) -> Result<Option<(String, String)>, HomeError> {
    let file = root.join(CATALOGUE_FILE);
    if !file.exists() {
        return Ok(None);
    }
    let config = read_file(&file)?;
    Ok(Some((config.url, config.origin)))
}

/// The PostgreSQL URL of the home at `root`, if its catalogue is there.
pub(crate) fn postgres_url(root: &Path) -> Result<Option<String>, HomeError> {
    Ok(recorded(root)?.map(|(url, _)| url))
}

impl CatalogueLocation {
    /// Checks a PostgreSQL URL a home may record: `postgres://` or
    /// `postgresql://`, a host, a database name, and no password.
    pub fn postgres(url: &str) -> Result<Self, HomeError> {
        let bad = |why: &str| HomeError::Catalogue(format!("the catalogue URL {why}"));
        let parsed = url::Url::parse(url).map_err(|_| bad("is not a URL"))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(bad(
                "must start with postgres:// (the catalogue is SQLite by default)",
            ));
        }
        let user = percent_decode(parsed.username());
        if user.contains(':') || user.contains('@') {
            return Err(bad(
                "has a user name with `:` or `@` (a password in disguise?)",
            ));
        }
        // sqlx writes names and values into PostgreSQL's start-up packet,
        // whose fields end at NUL: a control character could add fields
        // (another database, user or search path) the URL does not show.
        let texts = std::iter::once(user)
            .chain(std::iter::once(percent_decode(parsed.path())))
            .chain(
                parsed
                    .query_pairs()
                    .flat_map(|(n, v)| [n.into_owned(), v.into_owned()]),
            );
        for text in texts {
            if text.chars().any(char::is_control) {
                return Err(bad("has a control character"));
            }
        }
        if parsed.password().is_some() {
            return Err(bad(
                "carries a password: give it in PGPASSWORD or ~/.pgpass instead (the URL is written to the home)",
            ));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("names no host"));
        }
        if parsed.path().trim_start_matches('/').is_empty() {
            return Err(bad(
                "names no database (postgres://user@host:port/DATABASE)",
            ));
        }
        // Query parameters may set the password, or a host, user or
        // database other than the URL shows: only TLS settings and the
        // application name are taken.
        // postgres:// is not a scheme the URL standard knows, so its host
        // is opaque text: parse the address here.
        let loopback = parsed.host_str().is_some_and(|host| {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        let mut verified_tls = false;
        let mut own_ca = false;
        let mut verify_ca_only = false;
        for (name, value) in parsed.query_pairs() {
            if name == "password" {
                return Err(bad(
                    "carries a password: give it in PGPASSWORD or ~/.pgpass instead (the URL is written to the home)",
                ));
            }
            if !ALLOWED_PARAMETERS.contains(&name.as_ref()) {
                return Err(bad(&format!(
                    "has parameter `{}`: only {} are taken (host, port, user and database go in the URL itself)",
                    name.chars().take(32).collect::<String>(),
                    ALLOWED_PARAMETERS.join(", ")
                )));
            }
            if name.starts_with("ssl")
                && name != "sslmode"
                && !Path::new(value.as_ref()).is_absolute()
            {
                // A relative path would be read from wherever a command
                // runs; a value that is not a path can be key material.
                return Err(bad(&format!(
                    "has `{name}` that is not an absolute file path"
                )));
            }
            own_ca |= name == "sslrootcert";
            if name == "sslmode" {
                verified_tls = matches!(value.as_ref(), "verify-full" | "verify-ca");
                verify_ca_only = value == "verify-ca";
                if !loopback && !verified_tls {
                    return Err(bad(
                        "asks for an unverified connection: a server other than this machine needs sslmode=verify-full (or verify-ca), or the password goes to whoever answers",
                    ));
                }
            }
        }
        if verify_ca_only && !own_ca {
            // verify-ca checks no host name: any certificate from a CA the
            // system trusts would do.
            return Err(bad(
                "asks for sslmode=verify-ca without sslrootcert: name the CA that signs the server's certificate, or use verify-full",
            ));
        }
        if !loopback && !verified_tls {
            return Err(bad(
                "needs ?sslmode=verify-full (with sslrootcert=/path/to/ca.pem if the CA is not the system's): the password must go only to the real server",
            ));
        }
        Ok(Self::Postgres(url.to_owned()))
    }

    /// Writes `catalogue.toml` into a home being built (PostgreSQL only).
    pub(crate) fn write(&self, dir: &Path, origin: &str) -> Result<(), HomeError> {
        let Self::Postgres(url) = self else {
            return Ok(());
        };
        let text = toml::to_string(&CatalogueFile {
            url: url.clone(),
            origin: origin.to_owned(),
        })
        .map_err(|e| HomeError::Catalogue(e.to_string()))?;
        let header = "# This home's catalogue is in PostgreSQL (docs/deploy.md).\n\
                      # The password comes from PGPASSWORD or ~/.pgpass, never from this file.\n";
        write_secret_file(
            &dir.join(CATALOGUE_FILE),
            format!("{header}{text}").as_bytes(),
        )
    }

    /// Opens the catalogue of the home at `root` (creating the SQLite file
    /// only with `create`). For PostgreSQL, checks that the database belongs
    /// to this home once it holds an origin.
    pub(crate) async fn open(root: &Path, create: bool) -> Result<SqlMetadata, HomeError> {
        let file = root.join(CATALOGUE_FILE);
        if !file.exists() {
            let db = root.join(crate::home::METADATA_DB_FILE);
            if !create && !db.is_file() {
                return Err(HomeError::NotFound(root.to_owned()));
            }
            return Ok(SqlMetadata::open(&db, create).await?);
        }
        let config = read_file(&file)?;
        let meta = SqlMetadata::connect_postgres(&config.url)
            .await
            .map_err(|e| match e {
                MetaError::Database(why) => {
                    HomeError::Catalogue(format!("cannot reach the PostgreSQL catalogue: {why}"))
                }
                other => other.into(),
            })?;
        if let Some(found) = crate::meta::MetadataStore::instance_value(&meta, "origin").await? {
            if found != config.origin.as_bytes() {
                meta.close().await;
                return Err(HomeError::Catalogue(format!(
                    "the PostgreSQL catalogue belongs to another home (origin `{}`, this home's is `{}`)",
                    String::from_utf8_lossy(&found),
                    config.origin
                )));
            }
        } else if !create {
            meta.close().await;
            return Err(HomeError::Catalogue(
                "the PostgreSQL catalogue is empty: was it dropped or restored from the wrong backup?"
                    .into(),
            ));
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_that_could_carry_or_redirect_a_login_is_refused() {
        for ok in [
            "postgres://custos@db.internal:5432/custos?sslmode=verify-full",
            "postgres://custos@db.internal/custos?sslmode=verify-ca&sslrootcert=/etc/ca.pem",
            "postgres://custos@127.0.0.1:5432/custos",
            "postgresql://custos@localhost/custos?sslmode=prefer",
        ] {
            assert_eq!(
                CatalogueLocation::postgres(ok).unwrap(),
                CatalogueLocation::Postgres(ok.into())
            );
        }
        for (url, why) in [
            ("postgres://custos:pw@db/custos", "carries a password"),
            (
                "postgres://custos@db/custos?password=pw",
                "carries a password",
            ),
            (
                "postgres://custos@db/decoy?dbname=other",
                "has parameter `dbname`",
            ),
            (
                "postgres://custos@db/custos?host=elsewhere",
                "has parameter `host`",
            ),
            (
                "postgres://custos@db/custos?user=admin",
                "has parameter `user`",
            ),
            (
                "postgres://custos@db/custos?options=-csearch_path%3Dx",
                "has parameter `options`",
            ),
            ("postgres://custos@db", "names no database"),
            (
                "postgres://custos@db.internal/custos",
                "needs ?sslmode=verify-full",
            ),
            (
                "postgres://custos@db.internal/custos?sslmode=require",
                "unverified connection",
            ),
            (
                "postgres://custos@db.internal/custos?sslmode=verify-full&sslmode=disable",
                "unverified connection",
            ),
            (
                "postgres://custos@127.0.0.1/custos?sslkey=-----BEGIN%20PRIVATE%20KEY-----pw",
                "not an absolute file path",
            ),
            (
                "postgres://custos@127.0.0.1/custos?sslrootcert=ca.pem",
                "not an absolute file path",
            ),
            (
                "postgres://custos%3Apw@127.0.0.1/custos",
                "a password in disguise",
            ),
            (
                "postgres://custos@127.0.0.1/decoy?sslrootcert=/x%00database%00real",
                "a control character",
            ),
            (
                "postgres://custos@127.0.0.1/decoy%00x",
                "a control character",
            ),
            (
                "postgres://custos@127.0.0.1/c?application_name=x",
                "has parameter `application_name`",
            ),
            (
                "postgres://custos@db.internal/custos?sslmode=verify-ca",
                "without sslrootcert",
            ),
            ("sqlite://x.db", "must start with postgres://"),
            ("no url", "is not a URL"),
        ] {
            let e = CatalogueLocation::postgres(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("pw"), "{url}: {e}");
        }
    }
}
