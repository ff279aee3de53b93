//! Queue administration: QUEUE_DECLARE, QUEUE_DELETE, QUEUE_QUERY, QUEUE_INFO,
//! QUEUE_PURGE, QUEUE_MOVE.
//!
//! ```text
//! QUEUE_DECLARE id: u32 | name: string | bindings | options
//! QUEUE_DELETE  id: u32 | name: string
//! QUEUE_QUERY   id: u32 | name: string (empty = every queue)
//! QUEUE_INFO    id: u32 | name: string | bindings | options | stats
//! QUEUE_PURGE   id: u32 | name: string
//! QUEUE_MOVE    id: u32 | from: string | to: string | max: u64 (0 = all)
//! bindings      count: u16, then count × (pattern: string | filter: string (empty = none))
//! options       max_deliver: u32 | ack_timeout_ms: u32 | dead_letter: string (empty = none)
//!               | ttl_ms: u64 | max_length: u64 | overflow: u8
//! stats         ready: u64 | unacked: u64 | consumers: u32 | published: u64
//!               | delivered: u64 | acked: u64 | redelivered: u64 | dead_lettered: u64
//!               | expired: u64 | dropped: u64
//! ```
//!
//! In a declare, `max_deliver` and `ack_timeout_ms` of 0 ask for the server's default;
//! `ttl_ms` and `max_length` of 0 mean no limit. QUEUE_INFO carries the values in force.
//! `overflow`: 0 `drop-head`, 1 `reject`.
//!
//! Answers: QUEUE_DECLARE → QUEUE_INFO; QUEUE_DELETE → OK; QUEUE_QUERY → one QUEUE_INFO
//! per queue, then DONE with the count; QUEUE_PURGE and QUEUE_MOVE → DONE with the
//! number of messages removed or moved.

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::Body;
use crate::codes::FrameType;
use crate::error::{DecodeError, EncodeError};
use crate::wire::{self, Reader};

/// A subject pattern (and optional content filter) that routes messages into a queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    pub pattern: ByteString,
    pub filter: Option<ByteString>,
}

/// What happens when a message arrives at a queue at its `max_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Overflow {
    /// The oldest waiting message is dropped (dead-lettered as `overflow`) to make room.
    #[default]
    DropHead = 0,
    /// The new message is refused; a QoS 1/2 publisher gets `queue_full`.
    Reject = 1,
}

/// A queue's options.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct QueueOptions {
    pub max_deliver: u32,
    pub ack_timeout_ms: u32,
    pub dead_letter: Option<ByteString>,
    pub ttl_ms: u64,
    pub max_length: u64,
    pub overflow: Overflow,
}

/// A queue's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct QueueStats {
    /// Messages waiting for a consumer.
    pub ready: u64,
    /// Messages delivered and not yet settled.
    pub unacked: u64,
    pub consumers: u32,
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    pub expired: u64,
    /// Messages discarded without a dead-letter queue to go to.
    pub dropped: u64,
}

fn bindings_len(bindings: &[Binding]) -> usize {
    2 + bindings
        .iter()
        .map(|b| wire::string_len(&b.pattern) + wire::opt_string_len(b.filter.as_deref()))
        .sum::<usize>()
}

fn encode_bindings(bindings: &[Binding], dst: &mut BytesMut) -> Result<(), EncodeError> {
    let count = u16::try_from(bindings.len()).map_err(|_| EncodeError::TooManyBindings {
        count: bindings.len(),
    })?;
    dst.put_u16(count);
    for b in bindings {
        wire::put_string(dst, &b.pattern, "pattern")?;
        wire::put_opt_string(dst, b.filter.as_deref(), "filter")?;
    }
    Ok(())
}

fn decode_bindings(r: &mut Reader) -> Result<Vec<Binding>, DecodeError> {
    let count = r.u16("binding count")?;
    // Each binding takes at least 4 bytes of a frame the decoder already accepted.
    let mut bindings = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        bindings.push(Binding {
            pattern: r.string("pattern")?,
            filter: r.opt_string("filter")?,
        });
    }
    Ok(bindings)
}

impl QueueOptions {
    fn encoded_len(&self) -> usize {
        4 + 4 + wire::opt_string_len(self.dead_letter.as_deref()) + 8 + 8 + 1
    }

    fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.max_deliver);
        dst.put_u32(self.ack_timeout_ms);
        wire::put_opt_string(dst, self.dead_letter.as_deref(), "dead_letter")?;
        dst.put_u64(self.ttl_ms);
        dst.put_u64(self.max_length);
        dst.put_u8(self.overflow as u8);
        Ok(())
    }

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let max_deliver = r.u32("max_deliver")?;
        let ack_timeout_ms = r.u32("ack_timeout_ms")?;
        let dead_letter = r.opt_string("dead_letter")?;
        let ttl_ms = r.u64("ttl_ms")?;
        let max_length = r.u64("max_length")?;
        let overflow = match r.u8("overflow")? {
            0 => Overflow::DropHead,
            1 => Overflow::Reject,
            other => return Err(r.invalid("overflow", u64::from(other))),
        };
        Ok(Self {
            max_deliver,
            ack_timeout_ms,
            dead_letter,
            ttl_ms,
            max_length,
            overflow,
        })
    }
}

impl QueueStats {
    const LEN: usize = 8 * 9 + 4;

    fn encode(&self, dst: &mut BytesMut) {
        dst.put_u64(self.ready);
        dst.put_u64(self.unacked);
        dst.put_u32(self.consumers);
        for v in [
            self.published,
            self.delivered,
            self.acked,
            self.redelivered,
            self.dead_lettered,
            self.expired,
            self.dropped,
        ] {
            dst.put_u64(v);
        }
    }

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            ready: r.u64("ready")?,
            unacked: r.u64("unacked")?,
            consumers: r.u32("consumers")?,
            published: r.u64("published")?,
            delivered: r.u64("delivered")?,
            acked: r.u64("acked")?,
            redelivered: r.u64("redelivered")?,
            dead_lettered: r.u64("dead_lettered")?,
            expired: r.u64("expired")?,
            dropped: r.u64("dropped")?,
        })
    }
}

/// Creates a queue, or confirms that one exists with the same bindings and options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclare {
    pub id: u32,
    pub name: ByteString,
    pub bindings: Vec<Binding>,
    pub options: QueueOptions,
}

impl Body for QueueDeclare {
    const TYPE: FrameType = FrameType::QueueDeclare;

    fn body_len(&self) -> usize {
        4 + wire::string_len(&self.name) + bindings_len(&self.bindings) + self.options.encoded_len()
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        wire::put_string(dst, &self.name, "name")?;
        encode_bindings(&self.bindings, dst)?;
        self.options.encode(dst)
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u32("id")?,
            name: r.string("name")?,
            bindings: decode_bindings(r)?,
            options: QueueOptions::decode(r)?,
        })
    }
}

/// QUEUE_DECLARE with the number of replicas the queue is to have in a cluster (a
/// frame of its own: version 1 adds no field to a frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCreate {
    pub declare: QueueDeclare,
    /// Nodes that hold a replica of the queue; 0 = the cluster's default.
    pub replicas: u8,
}

impl Body for QueueCreate {
    const TYPE: FrameType = FrameType::QueueCreate;

    fn body_len(&self) -> usize {
        self.declare.body_len() + 1
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.declare.encode_body(dst)?;
        dst.put_u8(self.replicas);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            declare: QueueDeclare::decode_body(r)?,
            replicas: r.u8("replicas")?,
        })
    }
}

/// A queue's definition and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub id: u32,
    pub name: ByteString,
    pub bindings: Vec<Binding>,
    pub options: QueueOptions,
    pub stats: QueueStats,
}

impl Body for QueueInfo {
    const TYPE: FrameType = FrameType::QueueInfo;

    fn body_len(&self) -> usize {
        4 + wire::string_len(&self.name)
            + bindings_len(&self.bindings)
            + self.options.encoded_len()
            + QueueStats::LEN
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        wire::put_string(dst, &self.name, "name")?;
        encode_bindings(&self.bindings, dst)?;
        self.options.encode(dst)?;
        self.stats.encode(dst);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u32("id")?,
            name: r.string("name")?,
            bindings: decode_bindings(r)?,
            options: QueueOptions::decode(r)?,
            stats: QueueStats::decode(r)?,
        })
    }
}

macro_rules! named_frame {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            pub id: u32,
            pub name: ByteString,
        }

        impl Body for $name {
            const TYPE: FrameType = FrameType::$name;

            fn body_len(&self) -> usize {
                4 + wire::string_len(&self.name)
            }

            fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
                dst.put_u32(self.id);
                wire::put_string(dst, &self.name, $field)
            }

            fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
                Ok(Self {
                    id: r.u32("id")?,
                    name: r.string($field)?,
                })
            }
        }
    };
}

named_frame!(
    /// Deletes a queue and every message in it.
    QueueDelete,
    "name"
);
named_frame!(
    /// Asks for one queue's QUEUE_INFO, or every queue's when `name` is empty.
    QueueQuery,
    "name"
);
named_frame!(
    /// Removes every waiting message from a queue (deliveries in flight stay).
    QueuePurge,
    "name"
);

/// Moves waiting messages from one queue to another (e.g. to replay a dead-letter
/// queue into a work queue), oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMove {
    pub id: u32,
    pub from: ByteString,
    pub to: ByteString,
    /// At most this many; 0 moves them all.
    pub max: u64,
}

impl Body for QueueMove {
    const TYPE: FrameType = FrameType::QueueMove;

    fn body_len(&self) -> usize {
        4 + wire::string_len(&self.from) + wire::string_len(&self.to) + 8
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        wire::put_string(dst, &self.from, "from")?;
        wire::put_string(dst, &self.to, "to")?;
        dst.put_u64(self.max);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u32("id")?,
            from: r.string("from")?,
            to: r.string("to")?,
            max: r.u64("max")?,
        })
    }
}
