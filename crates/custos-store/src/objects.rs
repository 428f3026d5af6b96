//! Dataset files in S3-compatible object storage, for homes whose datasets
//! outgrow one machine's disk or must be shared by several servers.
//!
//! A home records the store in `object-store.toml` (mode 0600): a URL
//! `s3://bucket/prefix?region=…&endpoint=…` and the home's origin. The URL
//! carries no credentials; they come from `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` (or the machine's
//! instance role). Under the prefix:
//!
//! ```text
//! PREFIX/custos-home.json                 {"origin": …}: whose store this is
//! PREFIX/datasets/<storage id>/bucket-N.parquet
//! ```
//!
//! **Reads are verified, then pinned.** The first read of a file in a
//! process downloads it whole and holds its SHA-256 to the digest recorded
//! at ingest (as for local files). The file's ETag is then pinned: every
//! later read of it is a ranged GET carrying `If-Match` with that ETag, so a
//! look-up fetches the footer, the page index and the pages it needs, never
//! the whole bucket, and a file replaced since it was verified is refused
//! by the store itself (a 412), not read. Reads go through
//! [`VerifiedReads`], which refuses any object not verified: the query
//! engine, handed only that view, cannot read an unchecked byte.
//!
//! Writes: an ingest uploads a dataset's files under its fresh storage id;
//! the dataset exists only once the catalogue row is inserted (the single
//! commit). An ingest that fails deletes what it uploaded before it
//! returns. Nothing else is ever deleted: files that a crash left behind
//! are not recognisable as leftovers with certainty (a restored catalogue,
//! or another home sharing the store, would make live files look
//! abandoned), so removing them is the operator's call (docs/deploy.md).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::digests::{FileDigests, Tampering};
use crate::home::{HomeError, io_err, write_secret_file};
use crate::io_runtime::IoRuntime;

/// Name of the file that points a home's datasets at object storage.
pub const OBJECT_STORE_FILE: &str = "object-store.toml";
/// The object that names the home a store belongs to.
const MARKER: &str = "custos-home.json";
/// Where datasets live under the prefix.
const DATASETS: &str = "datasets";
/// Where a replicated home's ledger publishes under the prefix.
const LEDGER: &str = "ledger";

/// An S3-compatible location for a home's dataset files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStoreLocation {
    bucket: String,
    prefix: String,
    region: String,
    endpoint: Option<String>,
    url: String,
}

/// The contents of `object-store.toml`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectStoreFile {
    url: String,
    origin: String,
}

/// The contents of the marker object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Marker {
    origin: String,
}

fn bad(why: impl fmt::Display) -> HomeError {
    HomeError::ObjectStore(format!("the object store URL {why}"))
}

/// Whether `host` names this machine (plain HTTP is allowed only there:
/// credentials and data never cross a network in clear).
fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

impl ObjectStoreLocation {
    /// Checks an object store URL a home may record:
    /// `s3://bucket/prefix?region=R&endpoint=URL`, with no credentials, a
    /// bucket and a non-empty prefix of plain path segments; `endpoint`
    /// (for S3-compatible servers) must be `https://`, or `http://` on
    /// loopback.
    pub fn parse(url: &str) -> Result<Self, HomeError> {
        let parsed = url::Url::parse(url).map_err(|_| bad("is not a URL"))?;
        if parsed.scheme() != "s3" {
            return Err(bad(
                "must start with s3:// (dataset files are local by default)",
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad(
                "carries credentials: give them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ));
        }
        if parsed.fragment().is_some() || parsed.port().is_some() {
            return Err(bad(
                "has a port or a fragment (use ?endpoint= for a server)",
            ));
        }
        let bucket = parsed.host_str().unwrap_or_default().to_owned();
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(bad(
                "needs a bucket name of 3-63 lowercase letters, digits, `-` and `.`",
            ));
        }
        // The path as written, not as `url` normalised it (`a/../b` is
        // `b`): what the file records must be what is used.
        let written = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('/'))
            .map_or("", |(_, path)| {
                path.split(['?', '#']).next().unwrap_or_default()
            });
        if written.trim_end_matches('/')
            != parsed.path().trim_start_matches('/').trim_end_matches('/')
        {
            return Err(bad("has a prefix that is not in plain form"));
        }
        let prefix = parsed.path().trim_matches('/').to_owned();
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if prefix.is_empty() || !prefix.split('/').all(segment_ok) {
            return Err(bad(
                "needs a prefix of plain path segments (s3://bucket/custos/home-1): one prefix per home",
            ));
        }
        let mut region = None;
        let mut endpoint = None;
        for (name, value) in parsed.query_pairs() {
            let slot = match name.as_ref() {
                "region" => &mut region,
                "endpoint" => &mut endpoint,
                other => {
                    return Err(bad(format!(
                        "has `{other}`: only `region` and `endpoint` are accepted"
                    )));
                }
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(bad(format!("gives `{name}` twice")));
            }
        }
        let region = region.unwrap_or_else(|| "us-east-1".to_owned());
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("has a malformed region"));
        }
        if let Some(endpoint) = &endpoint {
            let e =
                url::Url::parse(endpoint).map_err(|_| bad("has an endpoint that is not a URL"))?;
            if !e.username().is_empty()
                || e.password().is_some()
                || e.query().is_some()
                || e.fragment().is_some()
                || !matches!(e.path(), "" | "/")
            {
                return Err(bad(
                    "has an endpoint with a path, query or credentials: give scheme, host and port only",
                ));
            }
            let Some(host) = e.host() else {
                return Err(bad("has an endpoint without a host"));
            };
            match e.scheme() {
                "https" => {}
                "http" if is_loopback(&host) => {}
                "http" => {
                    return Err(bad(
                        "has a plain http:// endpoint off this machine: use https://",
                    ));
                }
                _ => return Err(bad("has an endpoint that is neither https:// nor http://")),
            }
        }
        Ok(Self {
            bucket,
            prefix,
            region,
            endpoint,
            url: url.to_owned(),
        })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes `object-store.toml` into a home being built.
    pub(crate) fn write(&self, dir: &FsPath, origin: &str) -> Result<(), HomeError> {
        let text = toml::to_string(&ObjectStoreFile {
            url: self.url.clone(),
            origin: origin.to_owned(),
        })
        .map_err(|e| HomeError::ObjectStore(e.to_string()))?;
        let header = "# This home's dataset files are in object storage (docs/deploy.md).\n\
                      # Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, never from this file.\n";
        write_secret_file(
            &dir.join(OBJECT_STORE_FILE),
            format!("{header}{text}").as_bytes(),
        )
    }

    /// Reads `object-store.toml` of the home at `root`, if it has one:
    /// the location and the origin it was written for.
    pub(crate) fn read(root: &FsPath) -> Result<Option<(Self, String)>, HomeError> {
        let file = root.join(OBJECT_STORE_FILE);
        if !file.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&file).map_err(io_err(&file))?;
        let config: ObjectStoreFile = toml::from_str(&text).map_err(|e| {
            HomeError::ObjectStore(format!(
                "`{}` is malformed: {}",
                file.display(),
                e.message()
            ))
        })?;
        Ok(Some((Self::parse(&config.url)?, config.origin)))
    }
}

/// What was verified of each object: its ETag, size and SHA-256.
#[derive(Debug, Default)]
struct Pins(Mutex<HashMap<Path, Pin>>);

#[derive(Debug, Clone)]
struct Pin {
    e_tag: String,
    size: u64,
    digest: [u8; 32],
}

impl Pins {
    fn get(&self, location: &Path) -> Option<Pin> {
        self.0.lock().ok()?.get(location).cloned()
    }

    fn insert(&self, location: Path, pin: Pin) {
        if let Ok(mut pins) = self.0.lock() {
            pins.insert(location, pin);
        }
    }

    fn remove(&self, location: &Path) {
        if let Ok(mut pins) = self.0.lock() {
            pins.remove(location);
        }
    }
}

/// Bytes this process fetched from the object store, by purpose.
#[derive(Debug, Default)]
struct Counters {
    verified: AtomicU64,
    read: AtomicU64,
    reads: AtomicU64,
}

/// How many bytes and requests went to the object store (for benchmarks
/// and for tests of what a look-up downloads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchStats {
    /// Bytes downloaded whole to check files against their digests.
    pub verified_bytes: u64,
    /// Bytes read by ranged, pinned reads.
    pub read_bytes: u64,
    /// Pinned read requests.
    pub reads: u64,
}

/// A home's connected object store.
#[derive(Debug)]
pub struct ObjectFiles {
    store: Arc<dyn ObjectStore>,
    verified: Arc<VerifiedReads>,
    root: Path,
    location: ObjectStoreLocation,
    io: IoRuntime,
}

fn store_error(e: object_store::Error) -> HomeError {
    HomeError::ObjectStore(format!("the object store failed: {e}"))
}

impl ObjectFiles {
    /// Connects to `location` with credentials from the environment. Does
    /// not touch the network yet.
    pub fn connect(location: &ObjectStoreLocation) -> Result<Self, HomeError> {
        // Wrapped at once: dropped on an early return (inside the caller's
        // runtime), it must shut down without blocking.
        let io = IoRuntime::start("custos-objects")
            .map_err(|e| HomeError::ObjectStore(format!("cannot start its I/O threads: {e}")))?;
        let handle = io
            .handle()
            .cloned()
            .ok_or_else(|| HomeError::ObjectStore("its I/O threads stopped".into()))?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&location.bucket)
            .with_region(&location.region)
            .with_allow_http(false)
            .with_http_connector(object_store::client::SpawnedReqwestConnector::new(handle));
        if let Some(endpoint) = &location.endpoint {
            // `parse` allowed http:// only on loopback.
            let plain = endpoint.starts_with("http://");
            // The HTTP client obeys proxy variables: a plain-http request
            // would leave the machine in clear through the proxy.
            for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
                if plain && std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
                    return Err(HomeError::ObjectStore(format!(
                        "{var} is set, and the object store's endpoint is plain http://: requests would cross the proxy in clear; unset {var} or use https://"
                    )));
                }
            }
            builder = builder.with_endpoint(endpoint).with_allow_http(plain);
        }
        // Credentials from the environment only; with none, the machine's
        // instance role.
        if let Ok(id) = std::env::var("AWS_ACCESS_KEY_ID") {
            builder = builder.with_access_key_id(id);
        }
        if let Ok(secret) = std::env::var("AWS_SECRET_ACCESS_KEY") {
            builder = builder.with_secret_access_key(secret);
        }
        if let Ok(token) = std::env::var("AWS_SESSION_TOKEN") {
            builder = builder.with_token(token);
        }
        let store: Arc<dyn ObjectStore> = Arc::new(builder.build().map_err(store_error)?);
        let verified = Arc::new(VerifiedReads {
            inner: Arc::clone(&store),
            pins: Arc::default(),
            counters: Arc::default(),
        });
        Ok(Self {
            store,
            verified,
            root: Path::from(location.prefix.as_str()),
            location: location.clone(),
            io,
        })
    }

    /// Runs `work` on the store's I/O threads and waits for it, from sync
    /// code on any thread (a blocking read, a drop). Async callers await
    /// the store directly: its HTTP runs on those threads anyway.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, HomeError> {
        self.io
            .run(work)
            .ok_or_else(|| HomeError::ObjectStore("the object store's I/O threads stopped".into()))
    }

    /// Claims an empty prefix for a new home with origin `origin`: refuses
    /// a prefix that holds anything.
    pub(crate) async fn claim(&self, origin: &str) -> Result<(), HomeError> {
        let (store, root, url) = (&self.store, &self.root, &self.location.url);
        let marker = serde_json::to_vec(&Marker {
            origin: origin.to_owned(),
        })
        .map_err(|e| HomeError::ObjectStore(e.to_string()))?;
        {
            // Not inside another home's prefix (whose reads would then see
            // this home's files as added ones).
            let parts: Vec<String> = root.parts().map(|p| p.as_ref().to_owned()).collect();
            for depth in 0..parts.len() {
                let ancestor: Path = parts[..depth].iter().map(String::as_str).collect();
                match store.head(&ancestor.clone().join(MARKER)).await {
                    Ok(_) => {
                        return Err(HomeError::ObjectStore(format!(
                            "`{url}` is inside another home's prefix (`{ancestor}` holds a `{MARKER}`): give each home a prefix of its own"
                        )));
                    }
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(reach_error(e)),
                }
            }
            let first = store.list(Some(root)).next().await;
            match first {
                None => {}
                Some(Ok(_)) => {
                    return Err(HomeError::ObjectStore(format!(
                        "`{url}` is not empty: give each home a prefix of its own"
                    )));
                }
                Some(Err(e)) => return Err(reach_error(e)),
            }
            store
                .put(&root.clone().join(MARKER), PutPayload::from(marker))
                .await
                .map_err(reach_error)?;
            Ok(())
        }
    }

    /// Checks that the store belongs to the home with origin `origin`.
    pub(crate) async fn check_owner(&self, origin: &str) -> Result<(), HomeError> {
        let (path, url) = (self.root.clone().join(MARKER), &self.location.url);
        let found = {
            let bytes = match self.store.get(&path).await {
                Ok(result) => result.bytes().await.map_err(reach_error)?,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(HomeError::ObjectStore(format!(
                        "`{url}` holds no `{MARKER}`: is it the right store and prefix?"
                    )));
                }
                Err(e) => return Err(reach_error(e)),
            };
            serde_json::from_slice::<Marker>(&bytes)
                .map_err(|_| HomeError::ObjectStore(format!("`{url}`'s `{MARKER}` is malformed")))?
        };
        if found.origin != origin {
            return Err(HomeError::ObjectStore(format!(
                "the object store belongs to another home (origin `{}`, this home's is `{origin}`)",
                found.origin
            )));
        }
        Ok(())
    }

    /// The prefix of one dataset's files.
    fn dataset_prefix(&self, storage_id: &str) -> Path {
        self.root.clone().join(DATASETS).join(storage_id)
    }

    /// The object of one file of a dataset.
    pub(crate) fn file(&self, storage_id: &str, name: &str) -> Path {
        self.dataset_prefix(storage_id).join(name)
    }

    /// The URL under which the query engine finds the store
    /// ([`ObjectFiles::engine_store`] registered at it).
    pub fn engine_url(&self) -> Result<url::Url, HomeError> {
        url::Url::parse(&format!("s3://{}", self.location.bucket))
            .map_err(|e| HomeError::ObjectStore(e.to_string()))
    }

    /// The URL of one dataset file for the query engine.
    pub fn engine_path(&self, storage_id: &str, name: &str) -> String {
        format!(
            "s3://{}/{}",
            self.location.bucket,
            self.file(storage_id, name)
        )
    }

    /// The read-only, verified view of the store for the query engine.
    pub fn engine_store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.verified) as Arc<dyn ObjectStore>
    }

    /// The pinned size of a verified object.
    pub(crate) fn verified_size(&self, location: &Path) -> Option<u64> {
        self.verified.pins.get(location).map(|p| p.size)
    }

    /// Bytes and requests sent so far.
    pub fn stats(&self) -> FetchStats {
        let c = &self.verified.counters;
        FetchStats {
            verified_bytes: c.verified.load(Ordering::Relaxed),
            read_bytes: c.read.load(Ordering::Relaxed),
            reads: c.reads.load(Ordering::Relaxed),
        }
    }

    /// Uploads the files `names` of the local directory `dir` as dataset
    /// `storage_id` (multipart for large files).
    pub(crate) async fn upload(
        &self,
        dir: &FsPath,
        storage_id: &str,
        names: &[String],
    ) -> Result<(), HomeError> {
        for name in names {
            let local = dir.join(name);
            let mut file = tokio::fs::File::open(&local)
                .await
                .map_err(io_err(&local))?;
            let mut writer = object_store::buffered::BufWriter::new(
                Arc::clone(&self.store),
                self.file(storage_id, name),
            );
            if let Err(e) = tokio::io::copy(&mut file, &mut writer).await {
                let _ = writer.abort().await;
                return Err(HomeError::ObjectStore(format!("uploading failed: {e}")));
            }
            // `abort` may not follow a shutdown (it panics); a multipart
            // upload left incomplete is removed by the bucket's lifecycle
            // rule (docs/deploy.md).
            writer
                .shutdown()
                .await
                .map_err(|e| HomeError::ObjectStore(format!("uploading failed: {e}")))?;
        }
        Ok(())
    }

    /// Deletes every file of dataset `storage_id` (an ingest that did not
    /// commit).
    pub(crate) async fn delete_dataset(&self, storage_id: &str) -> Result<(), HomeError> {
        delete_prefix(&self.store, &self.dataset_prefix(storage_id)).await
    }

    /// Deletes dataset `storage_id`'s files from any thread, waiting for
    /// it (for a staged ingest dropped without commit).
    pub(crate) fn forget_dataset(&self, storage_id: &str) {
        let store = Arc::clone(&self.store);
        let prefix = self.dataset_prefix(storage_id);
        let _ = self.run(async move { delete_prefix(&store, &prefix).await });
    }

    /// Checks dataset `storage_id`'s files against `digests`: with
    /// `which = None`, every file and that nothing was added or deleted;
    /// otherwise the files named. A file already verified in this process
    /// costs nothing (its reads are pinned to the verified ETag); another
    /// is downloaded whole and hashed.
    pub(crate) fn verify(
        &self,
        storage_id: &str,
        digests: &FileDigests,
        which: Option<&[String]>,
    ) -> Result<(), Tampering> {
        if digests.is_empty() {
            return Err(Tampering::Unrecorded);
        }
        let prefix = self.dataset_prefix(storage_id);
        let expected: Vec<(String, [u8; 32])> =
            digests.iter().map(|(n, d)| (n.to_owned(), *d)).collect();
        let names: Vec<String> = match which {
            Some(list) => list.to_vec(),
            None => expected.iter().map(|(n, _)| n.clone()).collect(),
        };
        let whole = which.is_none();
        let (store, verified) = (Arc::clone(&self.store), Arc::clone(&self.verified));
        let unreachable = |e: HomeError| Tampering::Unreadable(e.to_string());
        self.run(async move {
            // ETags as listed: a pinned file listed with another ETag was
            // replaced, and is checked again now rather than at its read.
            let mut listed_tags: HashMap<String, Option<String>> = HashMap::new();
            if whole {
                let listed: Vec<ObjectMeta> = store
                    .list(Some(&prefix))
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<Result<_, _>>()
                    .map_err(|e| Tampering::Unreadable(e.to_string()))?;
                for meta in &listed {
                    // The whole key below the dataset's prefix: a file in a
                    // sub-folder is an added one, whatever its last name.
                    let name = meta
                        .location
                        .prefix_match(&prefix)
                        .map(|parts| {
                            parts
                                .map(|p| p.as_ref().to_owned())
                                .collect::<Vec<_>>()
                                .join("/")
                        })
                        .unwrap_or_else(|| meta.location.to_string());
                    if !expected.iter().any(|(n, _)| *n == name) {
                        return Err(Tampering::Added(name));
                    }
                    listed_tags.insert(name, meta.e_tag.clone());
                }
                for (name, _) in &expected {
                    if !listed_tags.contains_key(name) {
                        return Err(Tampering::Deleted(name.clone()));
                    }
                }
            }
            for name in names {
                let Some((_, want)) = expected.iter().find(|(n, _)| *n == name) else {
                    return Err(Tampering::Added(name));
                };
                let location = prefix.clone().join(name.as_str());
                let unchanged = |pin: &Pin| match listed_tags.get(&name) {
                    Some(Some(tag)) => *tag == pin.e_tag,
                    _ => true,
                };
                if verified
                    .pins
                    .get(&location)
                    .is_some_and(|p| p.digest == *want && unchanged(&p))
                {
                    continue;
                }
                let pin = match fetch_whole(&store, &location, &verified.counters).await {
                    Ok(pin) => pin,
                    Err(object_store::Error::NotFound { .. }) => {
                        return Err(Tampering::Deleted(name));
                    }
                    Err(e) => return Err(Tampering::Unreadable(e.to_string())),
                };
                if pin.digest != *want {
                    verified.pins.remove(&location);
                    return Err(Tampering::Altered(name));
                }
                verified.pins.insert(location, pin);
            }
            Ok(())
        })
        .map_err(unreachable)?
    }
}

/// An error reaching the store, worded for whoever set it up.
fn reach_error(e: object_store::Error) -> HomeError {
    HomeError::ObjectStore(format!(
        "cannot use the object store (check the URL, the bucket and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY): {e}"
    ))
}

async fn delete_prefix(store: &Arc<dyn ObjectStore>, prefix: &Path) -> Result<(), HomeError> {
    let locations = store
        .list(Some(prefix))
        .map(|m| m.map(|m| m.location))
        .boxed();
    let mut deleted = store.delete_stream(locations);
    while let Some(result) = deleted.next().await {
        result.map_err(reach_error)?;
    }
    Ok(())
}

/// Downloads `location` whole, hashing it; the pin is the ETag of that
/// very response, so nothing can change between the hash and the pin.
async fn fetch_whole(
    store: &Arc<dyn ObjectStore>,
    location: &Path,
    counters: &Counters,
) -> Result<Pin, object_store::Error> {
    let result = store.get(location).await?;
    let e_tag = result
        .meta
        .e_tag
        .clone()
        .ok_or_else(|| object_store::Error::Generic {
            store: "custos",
            source: "the object store gave no ETag: reads could not be pinned".into(),
        })?;
    let size = result.meta.size;
    let mut stream = result.into_stream();
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        counters
            .verified
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        hasher.update(&chunk);
    }
    Ok(Pin {
        e_tag,
        size,
        digest: hasher.finalize().into(),
    })
}

/// A read-only view of the store that serves only verified objects, each
/// read pinned to the ETag it was verified at (`If-Match`). What the query
/// engine and the look-up reader are given.
#[derive(Debug)]
pub struct VerifiedReads {
    inner: Arc<dyn ObjectStore>,
    pins: Arc<Pins>,
    counters: Arc<Counters>,
}

impl fmt::Display for VerifiedReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifiedReads({})", self.inner)
    }
}

fn read_only() -> object_store::Error {
    object_store::Error::NotSupported {
        source: "dataset files are read-only once ingested".into(),
    }
}

#[async_trait]
impl ObjectStore for VerifiedReads {
    async fn put_opts(
        &self,
        _location: &Path,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(read_only())
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(read_only())
    }

    // Ranged reads (`get_range`, and `get_ranges` coalescing them) are
    // the trait's defaults, which come here: no read bypasses the pin.
    async fn get_opts(
        &self,
        location: &Path,
        mut options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let Some(pin) = self.pins.get(location) else {
            return Err(object_store::Error::PermissionDenied {
                path: location.to_string(),
                source: "not verified against its ingest digest".into(),
            });
        };
        options.if_match = Some(pin.e_tag);
        let head = options.head;
        let result = self.inner.get_opts(location, options).await;
        match &result {
            Ok(got) if !head => {
                self.counters
                    .read
                    .fetch_add(got.range.end - got.range.start, Ordering::Relaxed);
                self.counters.reads.fetch_add(1, Ordering::Relaxed);
            }
            // Changed or gone since it was verified: verify again before
            // any read (which then names what happened).
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => {
                self.pins.remove(location);
            }
            _ => {}
        }
        result
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations.map(|_| Err(read_only())).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let pins = Arc::clone(&self.pins);
        self.inner
            .list(prefix)
            .filter(move |m| {
                let keep = m.as_ref().map_or(true, |m| pins.get(&m.location).is_some());
                async move { keep }
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut listing = self.inner.list_with_delimiter(prefix).await?;
        listing
            .objects
            .retain(|m| self.pins.get(&m.location).is_some());
        Ok(listing)
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(read_only())
    }
}

/// One verified dataset file as Parquet's asynchronous reader sees it:
/// every byte comes by a ranged GET through [`VerifiedReads`], pinned to
/// the ETag the file was verified at.
pub(crate) struct PinnedFile {
    store: Arc<dyn ObjectStore>,
    location: Path,
    size: u64,
    decryption: Arc<FileDecryptionProperties>,
    page_index: PageIndexPolicy,
}

impl PinnedFile {
    /// The verified file at `location` of `objects`, decrypted with
    /// `decryption`; `None` if it is not (or no longer) verified.
    pub(crate) fn open(
        objects: &ObjectFiles,
        location: Path,
        decryption: Arc<FileDecryptionProperties>,
        page_index: PageIndexPolicy,
    ) -> Option<Self> {
        Some(Self {
            store: objects.engine_store(),
            size: objects.verified_size(&location)?,
            location,
            decryption,
            page_index,
        })
    }
}

fn parquet_error(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for PinnedFile {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.location, range)
                .await
                .map_err(parquet_error)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.location, &ranges)
                .await
                .map_err(parquet_error)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_page_index_policy(self.page_index)
                .with_decryption_properties(Some(Arc::clone(&self.decryption)))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// A ledger's published files (checkpoint, tiles, bundles) under
/// `PREFIX/ledger/` in a home's object store, for homes whose servers are
/// replicas. An S3 PUT replaces an object whole and is durable once
/// acknowledged, so [`PublishedFiles::sync`] has nothing left to do.
#[derive(Debug)]
pub struct LedgerObjects {
    files: Arc<ObjectFiles>,
    root: Path,
}

impl ObjectFiles {
    /// Whether a shared ledger has published a checkpoint in this store.
    pub(crate) async fn holds_ledger(&self) -> Result<bool, HomeError> {
        let at = self.root.clone().join(LEDGER).join("checkpoint");
        match self.store.head(&at).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }

    /// The home's published ledger files in this store.
    pub fn ledger(self: &Arc<Self>) -> LedgerObjects {
        LedgerObjects {
            files: Arc::clone(self),
            root: self.root.clone().join(LEDGER),
        }
    }
}

impl LedgerObjects {
    fn path(&self, path: &str) -> std::io::Result<Path> {
        let relative = Path::parse(path)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(relative
            .parts()
            .fold(self.root.clone(), |acc, part| acc.join(part)))
    }

    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> std::io::Result<T> {
        self.files
            .run(work)
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())
                }
                other => std::io::Error::other(other.to_string()),
            })
    }
}

impl custos_ledger::PublishedFiles for LedgerObjects {
    fn read(&self, path: &str) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.read_versioned(path)?.map(|(bytes, _)| bytes))
    }

    fn read_versioned(&self, path: &str) -> std::io::Result<Option<(Vec<u8>, Option<String>)>> {
        let (store, at) = (Arc::clone(&self.files.store), self.path(path)?);
        let got = self.run(async move {
            let got = store.get(&at).await?;
            let e_tag = got.meta.e_tag.clone();
            Ok((got.bytes().await?, e_tag))
        });
        match got {
            Ok((bytes, e_tag)) => Ok(Some((bytes.to_vec(), e_tag))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_if(&self, path: &str, bytes: &[u8], version: Option<String>) -> std::io::Result<()> {
        let (store, at) = (Arc::clone(&self.files.store), self.path(path)?);
        let payload = PutPayload::from(bytes.to_vec());
        // S3 conditional writes: If-Match the version read, or
        // If-None-Match `*` where there was none.
        let mode = match version {
            Some(e_tag) => object_store::PutMode::Update(object_store::UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
            None => object_store::PutMode::Create,
        };
        let written = self.files.run(async move {
            store
                .put_opts(&at, payload, PutOptions::from(mode))
                .await
                .map(|_| ())
        });
        match written.map_err(|e| std::io::Error::other(e.to_string()))? {
            Ok(()) => Ok(()),
            Err(
                e @ (object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. }),
            ) => Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("it changed meanwhile ({e})"),
            )),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }

    fn partial_widths(&self, partial_dir: &str) -> std::io::Result<Vec<u64>> {
        let (store, at) = (Arc::clone(&self.files.store), self.path(partial_dir)?);
        let listed = self.run(async move {
            store
                .list(Some(&at))
                .map(|meta| meta.map(|m| m.location))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<object_store::Result<Vec<_>>>()
        })?;
        Ok(listed
            .iter()
            .filter_map(|location| location.filename()?.parse().ok())
            .collect())
    }

    fn write(&self, path: &str, bytes: &[u8]) -> std::io::Result<()> {
        let (store, at) = (Arc::clone(&self.files.store), self.path(path)?);
        let payload = PutPayload::from(bytes.to_vec());
        self.run(async move { store.put(&at, payload).await.map(|_| ()) })
    }

    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn remove(&self, path: &str) -> std::io::Result<()> {
        let (store, at) = (Arc::clone(&self.files.store), self.path(path)?);
        match self.run(async move { store.delete(&at).await }) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn location(&self) -> String {
        format!("{} (ledger/)", self.files.location.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_or_tampered_object_store_file_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(OBJECT_STORE_FILE);
        for (text, says) in [
            ("url = 3\n", "is malformed"),
            ("url = \"s3://b/p\"\n", "missing field `origin`"),
            (
                "url = \"s3://b/p\"\norigin = \"o\"\nsecret = \"x\"\n",
                "unknown field `secret`",
            ),
            ("not toml at all", "is malformed"),
            (
                "url = \"s3://key:secret@b/p\"\norigin = \"o\"\n",
                "the object store URL",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let error = ObjectStoreLocation::read(dir.path())
                .unwrap_err()
                .to_string();
            assert!(error.contains(says), "{text}: {error}");
            assert!(!error.contains("secret@"), "{error}");
        }
    }

    #[test]
    fn a_url_that_could_leak_or_misdirect_is_refused() {
        let ok = ObjectStoreLocation::parse(
            "s3://custos-data/homes/one?region=eu-west-1&endpoint=https://s3.example.org",
        )
        .unwrap();
        assert_eq!(ok.bucket, "custos-data");
        assert_eq!(ok.prefix, "homes/one");
        assert!(ObjectStoreLocation::parse("s3://b-1/p?endpoint=http://127.0.0.1:9000").is_ok());
        assert!(ObjectStoreLocation::parse("s3://b-1/p?endpoint=http://localhost:9000").is_ok());
        for (url, why) in [
            ("file:///tmp/x", "s3://"),
            ("s3://key:s3cr3t@bucket/p", "credentials"),
            ("s3://key@bucket/p", "credentials"),
            ("s3://bucket", "prefix"),
            ("s3://bucket/", "prefix"),
            ("s3://bucket/a/../b", "plain form"),
            ("s3://bucket/a/./b", "plain form"),
            ("s3://bucket/a//b", "prefix"),
            ("s3://bucket/a%2Fb", "prefix"),
            ("s3://Bucket/p", "bucket name"),
            ("s3://b/p", "bucket name"),
            ("s3://bucket:9000/p", "port"),
            ("s3://bucket/p?secret_access_key=s3cr3t", "only `region`"),
            ("s3://bucket/p?region=a&region=b", "twice"),
            (
                "s3://bucket/p?endpoint=http://s3.example.org",
                "off this machine",
            ),
            (
                "s3://bucket/p?endpoint=http://127.0.0.1.nip.io",
                "off this machine",
            ),
            (
                "s3://bucket/p?endpoint=https://k:s@s3.example.org",
                "credentials",
            ),
            (
                "s3://bucket/p?endpoint=https://s3.example.org/other",
                "path",
            ),
            ("s3://bucket/p?endpoint=ftp://s3.example.org", "neither"),
            ("s3://bucket/p?region=us east", "region"),
        ] {
            let err = ObjectStoreLocation::parse(url).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
            assert!(!err.contains("s3cr3t"), "{url}: {err}");
        }
    }
}
