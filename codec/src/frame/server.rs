//! SERVER_QUERY (client → server) and SERVER_INFO (server → client).
//!
//! ```text
//! SERVER_QUERY id: u32
//! SERVER_INFO  id: u32 | server_id: string | version: string | uptime_ms: u64
//!              | listeners: u16 count, then count × string
//!              | connections: u64 | subscriptions: u64 | queues: u64
//!              | store_bytes: u64 | sync: string | messages_in: u64 | messages_out: u64
//! ```
//!
//! `listeners` are URLs such as `tcp://127.0.0.1:7400` and `http://127.0.0.1:9464/metrics`.

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::Body;
use crate::codes::FrameType;
use crate::error::{DecodeError, EncodeError};
use crate::wire::{self, Reader};

id_frame!(
    /// Asks for the server's SERVER_INFO.
    ServerQuery
);

/// What a server is and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub id: u32,
    pub server_id: ByteString,
    /// The server software's version.
    pub version: ByteString,
    pub uptime_ms: u64,
    pub listeners: Vec<ByteString>,
    pub connections: u64,
    pub subscriptions: u64,
    pub queues: u64,
    /// Bytes the store occupies on disk.
    pub store_bytes: u64,
    /// The store's sync policy, as configured (`always`, `interval:100ms`, `never`).
    pub sync: ByteString,
    pub messages_in: u64,
    pub messages_out: u64,
}

impl Body for ServerInfo {
    const TYPE: FrameType = FrameType::ServerInfo;

    fn body_len(&self) -> usize {
        4 + wire::string_len(&self.server_id)
            + wire::string_len(&self.version)
            + 8
            + 2
            + self
                .listeners
                .iter()
                .map(|l| wire::string_len(l))
                .sum::<usize>()
            + 8 * 4
            + wire::string_len(&self.sync)
            + 8 * 2
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        wire::put_string(dst, &self.server_id, "server_id")?;
        wire::put_string(dst, &self.version, "version")?;
        dst.put_u64(self.uptime_ms);
        let count =
            u16::try_from(self.listeners.len()).map_err(|_| EncodeError::TooManyListeners {
                count: self.listeners.len(),
            })?;
        dst.put_u16(count);
        for l in &self.listeners {
            wire::put_string(dst, l, "listener")?;
        }
        dst.put_u64(self.connections);
        dst.put_u64(self.subscriptions);
        dst.put_u64(self.queues);
        dst.put_u64(self.store_bytes);
        wire::put_string(dst, &self.sync, "sync")?;
        dst.put_u64(self.messages_in);
        dst.put_u64(self.messages_out);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let id = r.u32("id")?;
        let server_id = r.string("server_id")?;
        let version = r.string("version")?;
        let uptime_ms = r.u64("uptime_ms")?;
        let count = r.u16("listener count")?;
        // Each listener takes at least 2 bytes of a frame the decoder already accepted.
        let mut listeners = Vec::with_capacity(usize::from(count).min(16));
        for _ in 0..count {
            listeners.push(r.string("listener")?);
        }
        Ok(Self {
            id,
            server_id,
            version,
            uptime_ms,
            listeners,
            connections: r.u64("connections")?,
            subscriptions: r.u64("subscriptions")?,
            queues: r.u64("queues")?,
            store_bytes: r.u64("store_bytes")?,
            sync: r.string("sync")?,
            messages_in: r.u64("messages_in")?,
            messages_out: r.u64("messages_out")?,
        })
    }
}
