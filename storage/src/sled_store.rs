//! The sled engine.

use std::path::{Path, PathBuf};

use crate::{StorageError, FORMAT_VERSION};

/// Key of the format marker in sled's default tree.
const FORMAT_KEY: &[u8] = b"tern.format";

/// The broker's store on sled.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
}

impl SledStore {
    /// Opens the store in `dir`, creating it when `dir` is missing or empty.
    ///
    /// Blocks on file I/O; call it before serving or from `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// * [`StorageError::NotATernStore`]: `dir` holds files but no tern store.
    /// * [`StorageError::IncompatibleFormat`]: written by another format version.
    /// * [`StorageError::Open`]: sled cannot open it (locked by another broker, corrupt,
    ///   permissions).
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let path = dir.to_path_buf();
        let fresh = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => {
                return Err(StorageError::Open {
                    path,
                    source: sled::Error::Io(e),
                })
            }
        };
        if !fresh && !dir.join("conf").exists() {
            return Err(StorageError::NotATernStore { path });
        }
        let db = sled::open(dir).map_err(|source| StorageError::Open {
            path: path.clone(),
            source,
        })?;
        let store = Self { db, path };
        store.check_format(fresh)?;
        Ok(store)
    }

    fn check_format(&self, fresh: bool) -> Result<(), StorageError> {
        match self.db.get(FORMAT_KEY)? {
            Some(v) => {
                let bytes: [u8; 4] =
                    v.as_ref()
                        .try_into()
                        .map_err(|_| StorageError::Corrupt {
                            path: self.path.clone(),
                            detail: format!("format marker has {} bytes, expected 4", v.len()),
                        })?;
                let found = u32::from_be_bytes(bytes);
                if found != FORMAT_VERSION {
                    return Err(StorageError::IncompatibleFormat {
                        path: self.path.clone(),
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
                Ok(())
            }
            None if fresh || self.db.is_empty() => {
                self.db.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())?;
                self.db.flush()?;
                Ok(())
            }
            None => Err(StorageError::NotATernStore {
                path: self.path.clone(),
            }),
        }
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes everything written so far durable.
    ///
    /// # Errors
    ///
    /// The disk refused the write.
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Bytes the store occupies on disk.
    ///
    /// # Errors
    ///
    /// The directory could not be measured.
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(self.db.size_on_disk()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        drop(SledStore::open(&path).unwrap());
        SledStore::open(&path).unwrap();
    }

    #[test]
    fn refuses_a_directory_of_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::NotATernStore { .. }), "{err}");
        assert!(dir.path().join("notes.txt").exists(), "nothing wiped");
    }

    #[test]
    fn refuses_another_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.db.insert(FORMAT_KEY, &99u32.to_be_bytes()).unwrap();
            s.db.flush().unwrap();
        }
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StorageError::IncompatibleFormat { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn refuses_garbage_in_sled_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("conf"), b"\xff\xfe garbage").unwrap();
        std::fs::write(dir.path().join("db"), vec![0xAB; 4096]).unwrap();
        assert!(SledStore::open(dir.path()).is_err());
    }
}
