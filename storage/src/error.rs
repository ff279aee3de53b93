//! Storage errors.

use std::path::PathBuf;

/// Why the store failed. Each variant names the data directory so that an operator
/// knows which path to look at.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the data directory {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("{path} is not a tern data directory (it holds other files); point --data-dir at an empty or tern directory")]
    NotATernStore { path: PathBuf },
    #[error("{path} was written by store format {found}; this version reads format {expected}")]
    IncompatibleFormat {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("the store at {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("the store refused to write: {detail}")]
    Refused { detail: String },
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    /// The files that hold message bodies could not be written, read or synced.
    #[error("the message segment files failed: {0}")]
    Segments(#[source] std::io::Error),
    /// The write-ahead log could not be opened or read.
    #[error("the raft log's files failed: {0}")]
    RaftLog(#[source] std::io::Error),
    #[error("the write-ahead log failed: {0}")]
    Wal(#[source] std::io::Error),
    /// An `fsync`/`fdatasync` of the store's files failed: what it covered is not
    /// durable, and must never be reported so.
    #[error("syncing the store's files to disk failed: {0}")]
    Sync(#[source] std::io::Error),
}
