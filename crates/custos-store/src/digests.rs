//! What a dataset contained at ingest: the SHA-256 of each of its files and
//! a digest over all of them, so that a file altered, swapped, replaced by
//! another dataset's, deleted or added afterwards is found before it is
//! read. The digests are recorded in the catalogue and in the ingest's
//! ledger entry; the broker holds the one against the other.
//!
//! Hashing a bucket is as costly as reading it, so each process keeps the
//! digest it verified per file, keyed by the file's identity and times
//! (device, inode, length, mtime and ctime in nanoseconds): a file that is
//! written or replaced gets a new ctime (which user space cannot set), and
//! is hashed again. The cache lives in memory only; a file on disk could be
//! forged along with the file it vouches for.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

/// Domain separation of the dataset digest.
const CONTENT_DIGEST_V1: &[u8] = b"custos/dataset-content/v1\n";

/// The SHA-256 of each file of a dataset, by file name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileDigests(BTreeMap<String, [u8; 32]>);

/// What is wrong with a dataset's files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Tampering {
    /// A file's contents differ from those ingested.
    #[error("`{0}` was altered or replaced since ingest (its SHA-256 differs)")]
    Altered(String),
    /// A file ingested is gone.
    #[error("`{0}` was deleted since ingest")]
    Deleted(String),
    /// A file that was not ingested is in the dataset's directory.
    #[error("`{0}` was added since ingest")]
    Added(String),
    /// A file could not be read to check it (its store failed).
    #[error("a file could not be read to check it: {0}")]
    Unreadable(String),
    /// The dataset has no recorded digests (ingested before they existed).
    #[error("no digests were recorded at ingest; re-ingest the dataset")]
    Unrecorded,
}

impl FileDigests {
    /// Hashes every file named in `names` under `dir`.
    pub fn compute(dir: &Path, names: &[String]) -> std::io::Result<Self> {
        let mut out = BTreeMap::new();
        for name in names {
            out.insert(name.clone(), sha256_file(&dir.join(name))?);
        }
        Ok(Self(out))
    }

    /// The files and digests, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8; 32])> {
        self.0.iter().map(|(n, d)| (n.as_str(), d))
    }

    /// The digest recorded for `name`.
    pub fn get(&self, name: &str) -> Option<&[u8; 32]> {
        self.0.get(name)
    }

    /// Whether no file is recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The dataset's digest: SHA-256 over a version line and, per file in
    /// name order, `name\n` and its digest in hex and `\n`.
    pub fn content_digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(CONTENT_DIGEST_V1);
        for (name, digest) in &self.0 {
            hasher.update(name.as_bytes());
            hasher.update(b"\n");
            hasher.update(hex::encode(digest).as_bytes());
            hasher.update(b"\n");
        }
        hasher.finalize().into()
    }

    /// The catalogue's text form: `name hex` lines.
    pub fn to_text(&self) -> String {
        self.0
            .iter()
            .map(|(n, d)| format!("{n} {}\n", hex::encode(d)))
            .collect()
    }

    /// Parses [`FileDigests::to_text`]; `None` if malformed.
    pub fn from_text(text: &str) -> Option<Self> {
        let mut out = BTreeMap::new();
        for line in text.lines() {
            let (name, hex_digest) = line.split_once(' ')?;
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hex_digest, &mut digest).ok()?;
            out.insert(name.to_owned(), digest);
        }
        Some(Self(out))
    }

    /// Checks the directory `dir` against these digests: no file added
    /// (other than `ignored` names), none deleted, and the files in `which`
    /// (all if `None`) unaltered, hashing only files the cache has not
    /// verified in their current state.
    pub fn check(
        &self,
        dir: &Path,
        ignored: &[&str],
        which: Option<&[String]>,
        cache: &DigestCache,
    ) -> Result<(), Tampering> {
        if self.0.is_empty() {
            return Err(Tampering::Unrecorded);
        }
        let listed =
            fs::read_dir(dir).map_err(|_| Tampering::Deleted(dir.display().to_string()))?;
        let mut present = Vec::new();
        for entry in listed.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if ignored.contains(&name.as_str()) {
                continue;
            }
            if !self.0.contains_key(&name) {
                return Err(Tampering::Added(name));
            }
            present.push(name);
        }
        for name in self.0.keys() {
            if !present.contains(name) {
                return Err(Tampering::Deleted(name.clone()));
            }
        }
        let names: Vec<&String> = match which {
            Some(list) => list.iter().collect(),
            None => self.0.keys().collect(),
        };
        // Files not yet hashed by this process are hashed one per core;
        // the first problem in name order is reported.
        let check_one = |name: &String| -> Result<(), Tampering> {
            let expected = self
                .0
                .get(name)
                .ok_or_else(|| Tampering::Added(name.clone()))?;
            let found = cache
                .digest(&dir.join(name))
                .map_err(|_| Tampering::Deleted(name.clone()))?;
            if &found != expected {
                return Err(Tampering::Altered(name.clone()));
            }
            Ok(())
        };
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let per_thread = names.len().div_ceil(cores.max(1)).max(1);
        let results: Vec<Result<(), Tampering>> = if names.len() > 1 && cores > 1 {
            std::thread::scope(|scope| {
                let handles: Vec<_> = names
                    .chunks(per_thread)
                    .map(|chunk| {
                        scope.spawn(move || chunk.iter().map(|n| check_one(n)).collect::<Vec<_>>())
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| {
                        h.join().unwrap_or_else(|_| {
                            vec![Err(Tampering::Altered("(a hashing thread failed)".into()))]
                        })
                    })
                    .collect()
            })
        } else {
            names.iter().map(|n| check_one(n)).collect()
        };
        results.into_iter().collect()
    }
}

/// SHA-256 of a file, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// A file's identity and times: any write or replacement changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(meta: &fs::Metadata) -> Stamp {
    Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    }
}

/// Digests this process computed, per file, valid while the file's
/// [`Stamp`] is unchanged.
#[derive(Debug, Default)]
pub struct DigestCache {
    files: Mutex<HashMap<PathBuf, (Stamp, [u8; 32])>>,
}

impl DigestCache {
    /// The file's SHA-256, from the cache if the file is as it was when
    /// last hashed.
    pub fn digest(&self, path: &Path) -> std::io::Result<[u8; 32]> {
        let before = stamp(&fs::metadata(path)?);
        if let Ok(files) = self.files.lock()
            && let Some((s, d)) = files.get(path)
            && *s == before
        {
            return Ok(*d);
        }
        let digest = sha256_file(path)?;
        // Kept only if the file did not change while it was read.
        let after = stamp(&fs::metadata(path)?);
        if after == before
            && let Ok(mut files) = self.files.lock()
        {
            files.insert(path.to_owned(), (after, digest));
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_tampering_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let names: Vec<String> = ["a.parquet", "b.parquet"].map(String::from).into();
        fs::write(dir.join("a.parquet"), b"alpha").unwrap();
        fs::write(dir.join("b.parquet"), b"beta").unwrap();
        fs::write(dir.join("lock"), b"").unwrap();
        let digests = FileDigests::compute(dir, &names).unwrap();
        assert_eq!(FileDigests::from_text(&digests.to_text()).unwrap(), digests);
        let cache = DigestCache::default();
        let check = || digests.check(dir, &["lock"], None, &cache);
        assert_eq!(check(), Ok(()));
        // Swapped files.
        fs::rename(dir.join("a.parquet"), dir.join("t")).unwrap();
        fs::rename(dir.join("b.parquet"), dir.join("a.parquet")).unwrap();
        fs::rename(dir.join("t"), dir.join("b.parquet")).unwrap();
        assert!(matches!(check(), Err(Tampering::Altered(_))));
        fs::write(dir.join("a.parquet"), b"alpha").unwrap();
        fs::write(dir.join("b.parquet"), b"beta").unwrap();
        assert_eq!(check(), Ok(()));
        // One byte flipped, same length, same mtime restored: ctime moves.
        let mtime = fs::metadata(dir.join("b.parquet"))
            .unwrap()
            .modified()
            .unwrap();
        fs::write(dir.join("b.parquet"), b"betb").unwrap();
        fs::File::options()
            .write(true)
            .open(dir.join("b.parquet"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(check(), Err(Tampering::Altered("b.parquet".into())));
        fs::write(dir.join("b.parquet"), b"beta").unwrap();
        // Added, deleted.
        fs::write(dir.join("c.parquet"), b"x").unwrap();
        assert_eq!(check(), Err(Tampering::Added("c.parquet".into())));
        fs::remove_file(dir.join("c.parquet")).unwrap();
        fs::remove_file(dir.join("a.parquet")).unwrap();
        assert_eq!(check(), Err(Tampering::Deleted("a.parquet".into())));
        assert_eq!(
            FileDigests::default().check(dir, &[], None, &cache),
            Err(Tampering::Unrecorded)
        );
    }
}
