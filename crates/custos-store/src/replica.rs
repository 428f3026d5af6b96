//! A replica's home directory, made from a serve configuration instead of
//! a copy of another home (`custos serve --config`).
//!
//! A home whose catalogue is in PostgreSQL (and files in object storage)
//! keeps only pointers on disk: `catalogue.toml` and `object-store.toml`,
//! each with the home's origin. [`ReplicaHome::prepare`] writes them into
//! an empty (or missing) directory, or checks that the ones already there
//! say the same, so a replica's machine needs the configuration file and
//! the environment's credentials, not a copied directory. Nothing here
//! connects to anything: opening the home then checks the origin against
//! the database and the bucket's marker, as for any home.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::catalogue::{CATALOGUE_FILE, CatalogueLocation};
use crate::home::{HomeError, KEY_LOCK_FILE, METADATA_DB_FILE, io_err, sync_dir, valid_origin};
use crate::objects::{OBJECT_STORE_FILE, ObjectStoreLocation};

/// What [`ReplicaHome::prepare`] made, to take back if the home then
/// fails to open (a wrong origin or URL must not stay recorded).
#[derive(Debug)]
#[must_use = "undo() it if the home does not open"]
pub struct Prepared {
    /// The directory, resolved (see [`ReplicaHome::prepare`]).
    root: std::path::PathBuf,
    made_dir: bool,
    written: Vec<std::path::PathBuf>,
}

impl Prepared {
    /// The replica's directory, resolved: open the home here.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes the files written and, if this made the directory, the
    /// lock file opening adds and the directory itself (never recursively:
    /// anything else put there stays).
    pub fn undo(self) {
        for file in &self.written {
            let _ = fs::remove_file(file);
        }
        if self.made_dir {
            let _ = fs::remove_file(self.root.join(KEY_LOCK_FILE));
            let _ = fs::remove_dir(&self.root);
        }
    }
}

/// Where a replica's home keeps its catalogue and files, and whose they are.
#[derive(Debug, Clone)]
pub struct ReplicaHome {
    /// The home's checkpoint origin, chosen at `custos init`.
    pub origin: String,
    /// The PostgreSQL catalogue's URL (without a password).
    pub catalogue: String,
    /// The object store's URL, if the home's files are there.
    pub object_store: Option<String>,
}

impl ReplicaHome {
    /// Makes `root` this home's directory: creates it (0700) if missing and
    /// writes the pointer files it lacks. Refuses a path with `.` or `..`
    /// in it, an embedded home's directory, a directory holding other
    /// things and no home, and pointer files that name another catalogue,
    /// store or origin, leaving them as they were. If the home then fails
    /// to open, [`Prepared::undo`] takes back what this wrote.
    pub fn prepare(&self, root: &Path) -> Result<Prepared, HomeError> {
        let root = &resolve(root)?;
        if !valid_origin(&self.origin) {
            return Err(HomeError::BadOrigin(self.origin.clone()));
        }
        let catalogue = CatalogueLocation::postgres(&self.catalogue)?;
        let objects = self
            .object_store
            .as_deref()
            .map(ObjectStoreLocation::parse)
            .transpose()?;
        if root.join(METADATA_DB_FILE).exists() {
            return Err(HomeError::Catalogue(format!(
                "`{}` holds an embedded catalogue ({METADATA_DB_FILE}): a replica's directory must be empty or one made by `serve --config` before",
                root.display()
            )));
        }
        self.check_recorded(root, &objects)?;
        if root.is_dir() && !holds_a_home_or_nothing(root)? {
            return Err(HomeError::Catalogue(format!(
                "`{}` holds other files and no Custos home: name a new or empty directory for the replica",
                root.display()
            )));
        }
        let mut prepared = Prepared {
            root: root.to_owned(),
            made_dir: false,
            written: Vec::new(),
        };
        if !root.exists() {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::DirBuilder::new()
                    .recursive(true)
                    .create(parent)
                    .map_err(io_err(parent))?;
            }
            fs::DirBuilder::new()
                .mode(0o700)
                .create(root)
                .map_err(io_err(root))?;
            // Whatever the umask.
            fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io_err(root))?;
            prepared.made_dir = true;
        }
        if !root.is_dir() {
            return Err(HomeError::NotFound(root.to_owned()));
        }
        if !root.join(CATALOGUE_FILE).exists() {
            catalogue.write(root, &self.origin)?;
            prepared.written.push(root.join(CATALOGUE_FILE));
        }
        if let Some(objects) = &objects
            && !root.join(OBJECT_STORE_FILE).exists()
        {
            objects.write(root, &self.origin)?;
            prepared.written.push(root.join(OBJECT_STORE_FILE));
        }
        if !prepared.written.is_empty() {
            sync_dir(root)?;
        }
        Ok(prepared)
    }

    /// Refuses pointer files in `root` that disagree with this replica's.
    /// (Whether they agree with the database and bucket is checked by
    /// opening the home.)
    fn check_recorded(
        &self,
        root: &Path,
        objects: &Option<ObjectStoreLocation>,
    ) -> Result<(), HomeError> {
        let differs = |file: &str, what: &str| {
            HomeError::Catalogue(format!(
                "`{}` names {what}, not the configuration's: remove the file to let the configuration write it, or correct the configuration",
                root.join(file).display()
            ))
        };
        if let Some((url, origin)) = crate::catalogue::recorded(root)? {
            if origin != self.origin {
                return Err(differs(CATALOGUE_FILE, &format!("the home `{origin}`")));
            }
            if url != self.catalogue {
                return Err(differs(CATALOGUE_FILE, "another catalogue URL"));
            }
        }
        match (ObjectStoreLocation::read(root)?, objects) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(differs(
                OBJECT_STORE_FILE,
                "an object store (the configuration names none)",
            )),
            (Some((_, origin)), Some(_)) if origin != self.origin => {
                Err(differs(OBJECT_STORE_FILE, &format!("the home `{origin}`")))
            }
            (Some((recorded, _)), Some(wanted)) if recorded.url() != wanted.url() => {
                Err(differs(OBJECT_STORE_FILE, "another object store URL"))
            }
            (Some(_), Some(_)) => Ok(()),
        }
    }
}

/// `path` with its longest existing ancestor resolved (symbolic links,
/// `.` and `..`) and the rest appended, which must be plain names:
/// `new/..` does not exist before `new` is made and is an existing
/// directory after, so every check must see the final directory.
fn resolve(path: &Path) -> Result<std::path::PathBuf, HomeError> {
    let mut rest = Vec::new();
    let mut existing = path;
    // `file_name` is `None` for a path ending in `..`: the walk stops there.
    while fs::symlink_metadata(existing).is_err()
        && let Some(name) = existing.file_name()
    {
        rest.push(name.to_owned());
        existing = existing.parent().unwrap_or(Path::new(""));
    }
    let existing = if existing.as_os_str().is_empty() {
        Path::new(".")
    } else {
        existing
    };
    if fs::symlink_metadata(existing).is_err() {
        return Err(HomeError::Catalogue(format!(
            "the replica's directory `{}` goes through `..` or `.` after a directory that does not exist yet: name it plainly",
            path.display()
        )));
    }
    let mut resolved = fs::canonicalize(existing).map_err(io_err(existing))?;
    for name in rest.iter().rev() {
        resolved.push(name);
    }
    Ok(resolved)
}

/// Whether the directory `root` is empty (but for a lock file a failed
/// start left) or holds a home's pointer files.
fn holds_a_home_or_nothing(root: &Path) -> Result<bool, HomeError> {
    if root.join(CATALOGUE_FILE).exists() || root.join(OBJECT_STORE_FILE).exists() {
        return Ok(true);
    }
    for entry in fs::read_dir(root).map_err(io_err(root))? {
        let entry = entry.map_err(io_err(root))?;
        if entry.file_name() != KEY_LOCK_FILE {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica() -> ReplicaHome {
        ReplicaHome {
            origin: "tax.example.gov/custos".into(),
            catalogue: "postgres://custos@127.0.0.1:5432/custos".into(),
            object_store: Some("s3://bucket/home?endpoint=http://127.0.0.1:9000".into()),
        }
    }

    #[test]
    fn writes_the_pointer_files_once_and_refuses_ones_that_disagree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("replica");
        let _ = replica().prepare(&root).unwrap();
        let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(
            crate::catalogue::recorded(&root).unwrap(),
            Some((replica().catalogue, replica().origin))
        );
        // Again: nothing to write, nothing refused; undoing it keeps all.
        replica().prepare(&root).unwrap().undo();
        assert!(root.join(OBJECT_STORE_FILE).exists());
        let before = fs::read(root.join(CATALOGUE_FILE)).unwrap();
        for (change, says) in [
            (
                ReplicaHome {
                    origin: "other.example/custos".into(),
                    ..replica()
                },
                "names the home `tax.example.gov/custos`",
            ),
            (
                ReplicaHome {
                    catalogue: "postgres://custos@127.0.0.1:5432/other".into(),
                    ..replica()
                },
                "another catalogue URL",
            ),
            (
                ReplicaHome {
                    object_store: Some("s3://bucket/other?endpoint=http://127.0.0.1:9000".into()),
                    ..replica()
                },
                "another object store URL",
            ),
            (
                ReplicaHome {
                    object_store: None,
                    ..replica()
                },
                "the configuration names none",
            ),
        ] {
            let error = change.prepare(&root).unwrap_err().to_string();
            assert!(error.contains(says), "{error}");
        }
        assert_eq!(fs::read(root.join(CATALOGUE_FILE)).unwrap(), before);
        // A first start that fails to open takes back all it made.
        let other = dir.path().join("other");
        replica().prepare(&other).unwrap().undo();
        assert!(!other.exists());
        // An existing empty directory keeps its mode; undoing keeps it.
        let empty = dir.path().join("empty");
        fs::DirBuilder::new().mode(0o750).create(&empty).unwrap();
        replica().prepare(&empty).unwrap().undo();
        let mode = fs::metadata(&empty).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);
    }

    /// `new/..` names an existing directory once `new` is made: it is
    /// refused before anything is made, and an undo never empties an
    /// existing directory.
    #[test]
    fn dot_dot_paths_and_directories_of_other_things_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("existing");
        fs::create_dir(&existing).unwrap();
        fs::write(existing.join("notes.txt"), b"keep me").unwrap();
        let sneaky = existing.join("new").join("..");
        let error = replica().prepare(&sneaky).unwrap_err().to_string();
        assert!(error.contains("`..` or `.`"), "{error}");
        assert!(!existing.join("new").exists());
        // `..` through directories that exist is resolved, not refused.
        let made = replica()
            .prepare(&existing.join("..").join("plain"))
            .unwrap();
        assert_eq!(
            made.root(),
            fs::canonicalize(dir.path()).unwrap().join("plain")
        );
        made.undo();
        let error = replica().prepare(&existing).unwrap_err().to_string();
        assert!(error.contains("holds other files"), "{error}");
        assert_eq!(fs::read(existing.join("notes.txt")).unwrap(), b"keep me");
        assert!(!existing.join(CATALOGUE_FILE).exists());
    }

    #[test]
    fn refuses_an_embedded_home_and_bad_urls() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(METADATA_DB_FILE), b"").unwrap();
        let error = replica().prepare(dir.path()).unwrap_err().to_string();
        assert!(error.contains("embedded catalogue"), "{error}");
        let empty = dir.path().join("empty");
        let error = ReplicaHome {
            catalogue: "postgres://custos:secret@127.0.0.1/custos".into(),
            ..replica()
        }
        .prepare(&empty)
        .unwrap_err()
        .to_string();
        assert!(error.contains("carries a password"), "{error}");
        assert!(!error.contains("secret"), "{error}");
        assert!(!empty.exists(), "nothing made for a refused configuration");
        let error = ReplicaHome {
            origin: "has space".into(),
            ..replica()
        }
        .prepare(&empty)
        .unwrap_err()
        .to_string();
        assert!(error.contains("not allowed"), "{error}");
    }
}
