//! Client errors.

use tern_codec::{ErrorCode, ErrorFrame, SubjectError};

/// Everything a client call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server could not be reached.
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The server refused the handshake (wrong protocol version, credentials, limits).
    #[error("{addr} refused the connection: {message} ({code})")]
    Refused {
        addr: String,
        code: String,
        message: String,
    },
    /// The server answered a request with an error.
    #[error("server error {name}: {message}")]
    Server {
        /// The code, if this client version knows it.
        code: Option<ErrorCode>,
        /// The code's name, or its number when unknown.
        name: String,
        message: String,
    },
    /// A subject or pattern is not valid; nothing was sent.
    #[error("invalid {what} '{value}'")]
    InvalidSubject {
        what: &'static str,
        value: String,
        #[source]
        source: SubjectError,
    },
    /// The message is larger than the server accepts; nothing was sent.
    #[error("frame of {size} bytes exceeds the server's maximum frame size of {max} bytes")]
    TooLarge { size: usize, max: u32 },
    /// A value does not fit the wire format (a header over 64 KiB, say).
    #[error("cannot encode: {0}")]
    Encode(#[from] tern_codec::EncodeError),
    /// The connection dropped before the request was answered.
    #[error("connection lost before the server answered")]
    ConnectionLost,
    /// Disconnected, and the buffer that holds messages until reconnection is full.
    #[error("not connected, and the reconnect buffer is full")]
    Disconnected,
    /// The client was closed, or gave up reconnecting.
    #[error("the client is closed")]
    Closed,
    /// The server sent something this client cannot understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The operation did not complete in time.
    #[error("timed out")]
    Timeout,
    /// A request found nobody subscribed to its subject and no queue bound to it.
    #[error("no responders on '{subject}'")]
    NoResponders { subject: String },
    /// The responder's handler failed; the message is its error.
    #[error("the responder failed: {message}")]
    Service { message: String },
    /// The API was used in a way that cannot work; the message says how to fix it.
    #[error("{0}")]
    Usage(String),
}

impl From<ErrorFrame> for Error {
    fn from(e: ErrorFrame) -> Self {
        let code = e.code();
        Error::Server {
            code,
            name: code.map_or_else(|| e.raw_code.to_string(), |c| c.name().to_string()),
            message: e.message.to_string(),
        }
    }
}

impl Error {
    /// The server's error code, when this is a [`Error::Server`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => *code,
            _ => None,
        }
    }

    pub(crate) fn invalid(what: &'static str, value: &str, source: SubjectError) -> Self {
        Error::InvalidSubject {
            what,
            value: value.to_string(),
            source,
        }
    }
}
