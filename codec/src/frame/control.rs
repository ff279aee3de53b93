//! Control frames that carry only a correlation id.
//!
//! ```text
//! PING  id: u32      either side; the other answers PONG with the same id
//! PONG  id: u32
//! OK    id: u32      server → client: the request with this id succeeded
//! DONE  id: u32 | count: u64   server → client: succeeded, affecting `count` items
//! ```
//!
//! A client's `flush()` is a PING: its PONG proves every frame sent before it was
//! processed, because a connection's frames are handled in order.

use bytes::{BufMut, BytesMut};

use super::Body;
use crate::codes::FrameType;
use crate::error::{DecodeError, EncodeError};
use crate::wire::Reader;

id_frame!(
    /// Asks the peer for a [`Pong`] with the same id.
    Ping
);
id_frame!(
    /// Answers a [`Ping`].
    Pong
);
id_frame!(
    /// The request with this id succeeded.
    Ok
);

/// The request with this id succeeded and affected `count` items (messages purged or
/// moved, queues listed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub id: u32,
    pub count: u64,
}

impl Body for Done {
    const TYPE: FrameType = FrameType::Done;

    fn body_len(&self) -> usize {
        4 + 8
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        dst.put_u64(self.count);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u32("id")?,
            count: r.u64("count")?,
        })
    }
}
