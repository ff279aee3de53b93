//! Making sled's files durable: the `fdatasync`s that sled 0.34 leaves out.
//!
//! sled's `flush` writes its log buffer and calls `sync_file_range(WAIT_BEFORE | WRITE
//! | WAIT_AFTER)` on it. That pushes the bytes to the drive but is not a sync: it
//! persists neither the file's size when the log grew (so after a power loss the
//! grown part can read as a hole) nor the drive's volatile write cache. And values
//! too large for a log segment go to files of their own under `blobs/`, written with
//! no sync at all. So after every sled flush that must count as durable, [`FileSync`]:
//!
//! 1. `fdatasync`s every blob file it has not synced before, then `fsync`s the `blobs`
//!    directory (their names are directory entries: without it a new blob can vanish
//!    with the data in it);
//! 2. `fdatasync`s the log file `db` — the data, its size, and a drive cache flush.
//!
//! Blobs are synced before the log, so a log record is never durable before the blob
//! it points to. `fdatasync` suffices for the log (its size is the metadata that
//! matters, and `fdatasync` writes the size when it changed); the directories get a
//! full `fsync`.
//!
//! A sync that fails is returned as the error of the flush: what it covered is never
//! confirmed, and is not retried into a confirm either (after a failed `fsync` Linux
//! may have dropped the dirty pages and marked them clean — PostgreSQL's
//! "fsyncgate"): the caller treats the data as not durable.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// sled's log file in its directory.
const LOG_FILE: &str = "db";
/// sled's directory of large values.
const BLOBS_DIR: &str = "blobs";

/// The syncs a sled directory needs after each flush.
#[derive(Debug)]
pub(crate) struct FileSync {
    /// sled's log, opened read-only: `fdatasync` needs no write access.
    log: File,
    blobs: PathBuf,
    /// Blob files already synced (blob files are written once and never changed). A
    /// std `Mutex`: flushes come from one writer thread, and nothing awaits under it.
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl FileSync {
    /// Opens sled's files in `dir` (after sled has created them) and makes the
    /// directory itself durable, so that the files sled created are found after a
    /// power loss.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let log = File::open(dir.join(LOG_FILE))?;
        let blobs = dir.join(BLOBS_DIR);
        sync_dir(dir)?;
        let sync = Self {
            log,
            blobs,
            synced_blobs: Mutex::new(HashSet::new()),
        };
        // Blobs written by an earlier run may never have been synced.
        sync.sync_new_blobs()?;
        Ok(sync)
    }

    /// Makes what sled flushed durable: new blobs, their directory, then the log.
    ///
    /// # Errors
    ///
    /// A sync failed: the data it covered must not be reported durable.
    pub fn sync(&self) -> io::Result<()> {
        self.sync_new_blobs()?;
        self.log.sync_data()
    }

    fn sync_new_blobs(&self) -> io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            // sled creates the directory with its first blob.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = HashSet::with_capacity(synced.len());
        let mut any_new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    // Collected by sled since the listing: nothing left to make durable.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                any_new = true;
            }
            present.insert(name);
        }
        if any_new {
            sync_dir(&self.blobs)?;
        }
        // Forget blobs sled has collected, so that the set stays as small as the
        // directory.
        *synced = present;
        Ok(())
    }
}

/// Bytes available to unprivileged writers on the filesystem holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// `fsync`s a directory, which makes the names in it durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_new_blobs_once_and_forgets_collected_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), b"log").unwrap();
        let sync = FileSync::open(dir.path()).unwrap();
        sync.sync().unwrap();
        std::fs::create_dir(dir.path().join(BLOBS_DIR)).unwrap();
        let blob = dir.path().join(BLOBS_DIR).join("1234");
        std::fs::write(&blob, b"big value").unwrap();
        sync.sync().unwrap();
        assert!(sync
            .synced_blobs
            .lock()
            .unwrap()
            .contains(&OsString::from("1234")));
        std::fs::remove_file(&blob).unwrap();
        sync.sync().unwrap();
        assert!(sync.synced_blobs.lock().unwrap().is_empty());
    }
}
