//! Codec errors.

use crate::codes::{ErrorCode, FrameType};

/// Why bytes from the network could not be decoded into a frame.
///
/// "Need more bytes" is not an error: [`Frame::decode`](crate::Frame::decode) returns
/// `Ok(None)` for it. Only [`DecodeError::UnknownFrameType`] leaves the stream in a state
/// the reader can continue from; after any other variant the peer's encoder is broken
/// and the connection should be closed (see [`DecodeError::is_fatal`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix is zero: a frame always has at least its type byte.
    #[error("frame length is 0; every frame has at least a type byte")]
    EmptyFrame,
    /// The length prefix exceeds the receiver's maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge { len: u32, max: u32 },
    /// The type byte is not one this version knows. The frame was skipped whole.
    #[error("unknown frame type 0x{code:02x}")]
    UnknownFrameType { code: u8 },
    /// A field runs past the end of the frame body.
    #[error("{frame} frame is truncated: field '{field}' runs past the end of the frame")]
    Truncated {
        frame: FrameType,
        field: &'static str,
    },
    /// A string field is not valid UTF-8.
    #[error("{frame} frame: field '{field}' is not valid UTF-8")]
    InvalidUtf8 {
        frame: FrameType,
        field: &'static str,
    },
    /// A field holds a value outside its domain (an unknown QoS, a reserved flag bit).
    #[error("{frame} frame: field '{field}' has invalid value {value}")]
    InvalidValue {
        frame: FrameType,
        field: &'static str,
        value: u64,
    },
    /// Bytes remain after the last field of a fixed-layout frame.
    #[error("{frame} frame has {extra} unexpected trailing bytes")]
    TrailingBytes { frame: FrameType, extra: usize },
}

impl DecodeError {
    /// Whether the connection can no longer be trusted after this error.
    ///
    /// An unknown frame type is skipped whole (the length prefix was sound), so a newer
    /// peer probing for a feature can carry on. Everything else means the peer's encoder
    /// is broken: nothing it sends next can be trusted.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, DecodeError::UnknownFrameType { .. })
    }

    /// The wire error code to report this error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnknownFrameType { .. } => ErrorCode::UnknownFrameType,
            _ => ErrorCode::MalformedFrame,
        }
    }
}

/// Why a frame could not be encoded: a value does not fit its wire field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string is longer than its 16-bit length prefix can say.
    #[error("field '{field}' is {len} bytes; the limit is 65535")]
    StringTooLong { field: &'static str, len: usize },
    /// More headers than the 16-bit count can say.
    #[error("{count} headers; the limit is 65535")]
    TooManyHeaders { count: usize },
    /// More bindings than the 16-bit count can say.
    #[error("{count} bindings; the limit is 65535")]
    TooManyBindings { count: usize },
    /// More listeners than the 16-bit count can say.
    #[error("{count} listeners; the limit is 65535")]
    TooManyListeners { count: usize },
    /// More items than a 16-bit count can say.
    #[error("{count} {what}; the limit is 65535")]
    TooMany { what: &'static str, count: usize },
    /// The whole frame is longer than the 32-bit length prefix can say.
    #[error("frame of {len} bytes does not fit a 32-bit length")]
    FrameTooLarge { len: usize },
}
