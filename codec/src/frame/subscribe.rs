//! SUBSCRIBE and UNSUBSCRIBE (client → server).
//!
//! ```text
//! SUBSCRIBE    id: u32 | sid: u32 | pattern: string | group: string (empty = none)
//!              | filter: string (empty = none)
//! UNSUBSCRIBE  id: u32 | sid: u32
//! ```
//!
//! The client chooses `sid`, unique among its active subscriptions; every MESSAGE for
//! the subscription carries it. The server answers OK or ERROR with `id`.

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::Body;
use crate::codes::FrameType;
use crate::error::{DecodeError, EncodeError};
use crate::wire::{self, Reader};

/// Starts a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub id: u32,
    pub sid: u32,
    /// Subject pattern, wildcards allowed.
    pub pattern: ByteString,
    /// Queue group: each message goes to one member of the group.
    pub group: Option<ByteString>,
    /// Content filter expression, evaluated on messages whose subject matched.
    pub filter: Option<ByteString>,
}

impl Body for Subscribe {
    const TYPE: FrameType = FrameType::Subscribe;

    fn body_len(&self) -> usize {
        8 + wire::string_len(&self.pattern)
            + wire::opt_string_len(self.group.as_deref())
            + wire::opt_string_len(self.filter.as_deref())
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        dst.put_u32(self.sid);
        wire::put_string(dst, &self.pattern, "pattern")?;
        wire::put_opt_string(dst, self.group.as_deref(), "group")?;
        wire::put_opt_string(dst, self.filter.as_deref(), "filter")
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u32("id")?,
            sid: r.u32("sid")?,
            pattern: r.string("pattern")?,
            group: r.opt_string("group")?,
            filter: r.opt_string("filter")?,
        })
    }
}

/// Ends a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe {
    pub id: u32,
    pub sid: u32,
}

impl Body for Unsubscribe {
    const TYPE: FrameType = FrameType::Unsubscribe;

    fn body_len(&self) -> usize {
        8
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        dst.put_u32(self.sid);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u32("id")?,
            sid: r.u32("sid")?,
        })
    }
}
