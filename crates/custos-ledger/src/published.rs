//! Where a ledger's published files live: the signed checkpoint, the hash
//! tiles and the entry bundles, each named by its C2SP path (`checkpoint`,
//! `tile/0/x001/234`, `tile/entries/005.p/17`). Readers and proofs work on
//! any [`PublishedFiles`]; a local directory ([`DirFiles`]) is the embedded
//! default, and `custos-store` provides one over object storage.

use std::fmt::Debug;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A flat store of published ledger files, addressed by C2SP path.
///
/// Writers publish in the order tiles → [`PublishedFiles::sync`] →
/// checkpoint, so a reader that sees a checkpoint finds every tile it covers.
pub trait PublishedFiles: Debug + Send + Sync {
    /// The file at `path`, or `None` if there is none.
    fn read(&self, path: &str) -> io::Result<Option<Vec<u8>>>;
    /// The widths of the partial tiles published under `partial_dir`
    /// (`tile/<L>/<N>.p`), in any order.
    fn partial_widths(&self, partial_dir: &str) -> io::Result<Vec<u64>>;
    /// Replaces the file at `path` as a whole (a reader sees the old bytes
    /// or the new ones, never a mix). Durable once [`Self::sync`] returns.
    fn write(&self, path: &str, bytes: &[u8]) -> io::Result<()>;
    /// The file at `path` and its version (an ETag), if the store keeps
    /// versions: what [`Self::write_if`] compares.
    fn read_versioned(&self, path: &str) -> io::Result<Option<(Vec<u8>, Option<String>)>> {
        Ok(self.read(path)?.map(|bytes| (bytes, None)))
    }
    /// Replaces the file at `path` only if it is still at `version` (from
    /// [`Self::read_versioned`]; `None`: only if there is no file). A store
    /// without versions (a directory, written by one process under its
    /// lock) writes unconditionally. Fails with
    /// [`io::ErrorKind::AlreadyExists`] when the file changed meanwhile.
    fn write_if(&self, path: &str, bytes: &[u8], version: Option<String>) -> io::Result<()> {
        let _ = version;
        self.write(path, bytes)
    }
    /// Makes every earlier [`Self::write`] durable.
    fn sync(&self) -> io::Result<()>;
    /// Removes the file at `path` (absent is fine).
    fn remove(&self, path: &str) -> io::Result<()>;
    /// Where the files are, for messages (a directory or a bucket URL;
    /// never a credential).
    fn location(&self) -> String;
    /// The directory the files are in, if they are local.
    fn dir(&self) -> Option<&Path> {
        None
    }
}

/// Published files in a local directory (the embedded default).
#[derive(Debug, Clone)]
pub struct DirFiles {
    dir: PathBuf,
}

impl DirFiles {
    /// The files under `dir` (the directory that holds `checkpoint` and `tile/`).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }
}

impl PublishedFiles for DirFiles {
    fn read(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.dir.join(path)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn partial_widths(&self, partial_dir: &str) -> io::Result<Vec<u64>> {
        match fs::read_dir(self.dir.join(partial_dir)) {
            Ok(read) => Ok(read
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn write(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.dir.join(path);
        let parent = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent)?;
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, &path)
    }

    fn sync(&self) -> io::Result<()> {
        // One syncfs makes every file written since (data and renames)
        // durable: far cheaper than an fsync per file.
        let dir = fs::File::open(&self.dir)?;
        rustix::fs::syncfs(&dir).map_err(io::Error::from)
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        match fs::remove_file(self.dir.join(path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}
