//! Messages as the application receives them.

use bytes::Bytes;
use bytestring::ByteString;
use tern_codec::{Envelope, Headers};

/// A message delivered to a subscription.
///
/// Strings and payload are zero-copy slices of the bytes read from the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subject it was published on.
    pub subject: ByteString,
    /// Where the publisher wants replies, if anywhere.
    pub reply_to: Option<ByteString>,
    pub headers: Headers,
    pub payload: Bytes,
}

impl From<Envelope> for Message {
    fn from(e: Envelope) -> Self {
        Self {
            subject: e.subject,
            reply_to: e.reply_to,
            headers: e.headers,
            payload: e.payload,
        }
    }
}
