//! Checked readers and writers for the primitive fields of a frame body.
//!
//! Integers are big-endian. A string is a `u16` byte length followed by UTF-8 bytes; an
//! optional string uses length 0 for "absent" (none of the optional strings may be empty
//! when present). Every read checks the remaining length first, so no peer-sent value can
//! make a read go out of bounds.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::codes::FrameType;
use crate::error::{DecodeError, EncodeError};

/// A cursor over one frame body. Strings and payloads come out as zero-copy slices.
pub(crate) struct Reader {
    frame: FrameType,
    body: Bytes,
}

impl Reader {
    pub(crate) fn new(frame: FrameType, body: Bytes) -> Self {
        Self { frame, body }
    }

    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.body.remaining() < n {
            return Err(DecodeError::Truncated {
                frame: self.frame,
                field,
            });
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.body.get_u8())
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.body.get_u16())
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.body.get_u32())
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.body.get_u64())
    }

    pub(crate) fn string(&mut self, field: &'static str) -> Result<ByteString, DecodeError> {
        let len = usize::from(self.u16(field)?);
        self.need(len, field)?;
        ByteString::try_from(self.body.split_to(len)).map_err(|_| DecodeError::InvalidUtf8 {
            frame: self.frame,
            field,
        })
    }

    pub(crate) fn opt_string(
        &mut self,
        field: &'static str,
    ) -> Result<Option<ByteString>, DecodeError> {
        let s = self.string(field)?;
        Ok((!s.is_empty()).then_some(s))
    }

    /// A value outside a field's domain.
    pub(crate) fn invalid(&self, field: &'static str, value: u64) -> DecodeError {
        DecodeError::InvalidValue {
            frame: self.frame,
            field,
            value,
        }
    }

    /// Everything left in the body: the payload, which runs to the end of the frame.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }

    /// Ends a fixed-layout body: trailing bytes mean the peer disagrees about the layout.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.body.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes {
                frame: self.frame,
                extra,
            }),
        }
    }
}

/// Encoded length of a string field.
pub(crate) fn string_len(s: &str) -> usize {
    2 + s.len()
}

/// Encoded length of an optional string field.
pub(crate) fn opt_string_len(s: Option<&str>) -> usize {
    string_len(s.unwrap_or(""))
}

pub(crate) fn put_string(
    dst: &mut BytesMut,
    s: &str,
    field: &'static str,
) -> Result<(), EncodeError> {
    let len = u16::try_from(s.len()).map_err(|_| EncodeError::StringTooLong {
        field,
        len: s.len(),
    })?;
    dst.put_u16(len);
    dst.put_slice(s.as_bytes());
    Ok(())
}

pub(crate) fn put_opt_string(
    dst: &mut BytesMut,
    s: Option<&str>,
    field: &'static str,
) -> Result<(), EncodeError> {
    put_string(dst, s.unwrap_or(""), field)
}
