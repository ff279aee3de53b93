//! Broker errors.

use std::net::SocketAddr;

use tern_codec::DecodeError;

use crate::config::ConfigError;

/// Why the broker could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] tern_storage::StorageError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("shutdown: {0}")]
    Shutdown(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// This node could not join its cluster.
    #[error("cluster: {0}")]
    Cluster(String),
}

/// Why reading a frame from a connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed in the middle of a frame")]
    EofMidFrame,
}
