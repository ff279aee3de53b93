//! ERROR (server → client).
//!
//! ```text
//! ERROR  id: u32 | code: u16 | message: string
//! ```
//!
//! `id` is the correlation id of the request that failed, or 0 when the error concerns
//! the connection as a whole (a malformed frame, a slow consumer) or a request that
//! carried no id (a QoS 0 publish). `code` is an [`ErrorCode`]; `message` is for humans.

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::Body;
use crate::codes::{ErrorCode, FrameType};
use crate::error::{DecodeError, EncodeError};
use crate::wire::{self, Reader};

/// A request failed, or the connection is about to be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// Correlation id of the failed request; 0 for connection-level errors.
    pub id: u32,
    /// The raw code. Use [`ErrorFrame::code`] to interpret it: a newer server may send
    /// a code that this version does not know, and that must not break decoding.
    pub raw_code: u16,
    /// A human-readable explanation naming what was wrong.
    pub message: ByteString,
}

impl ErrorFrame {
    /// Longest message [`ErrorFrame::new`] keeps.
    pub const MAX_MESSAGE_LEN: usize = 1024;

    /// An error frame. A message longer than [`ErrorFrame::MAX_MESSAGE_LEN`] is cut at a
    /// character boundary, so that echoing a peer's long input can never make the error
    /// itself unencodable.
    pub fn new(id: u32, code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > Self::MAX_MESSAGE_LEN {
            let mut end = Self::MAX_MESSAGE_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self {
            id,
            raw_code: code as u16,
            message: message.into(),
        }
    }

    /// The error code, if this version knows it.
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.raw_code)
    }
}

impl Body for ErrorFrame {
    const TYPE: FrameType = FrameType::Error;

    fn body_len(&self) -> usize {
        4 + 2 + wire::string_len(&self.message)
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        dst.put_u16(self.raw_code);
        wire::put_string(dst, &self.message, "message")
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u32("id")?,
            raw_code: r.u16("code")?,
            message: r.string("message")?,
        })
    }
}
