//! Consuming from durable queues: CONSUME, DELIVERY, ACK, NACK, RECEIVED, CANCEL.
//!
//! ```text
//! CONSUME   id: u32 | cid: u32 | queue: string | prefetch: u32 | mode: u8
//!           | name: string (empty = none)
//! DELIVERY  cid: u32 | delivery_id: u64 | seq: u64 | delivery_count: u32 | flags: u8
//!           | envelope
//! ACK       id: u32 | cid: u32 | delivery_id: u64
//! RECEIVED  id: u32 | cid: u32 | delivery_id: u64
//! NACK      id: u32 | cid: u32 | delivery_id: u64 | requeue: u8 | delay_ms: u32
//! CANCEL    id: u32 | cid: u32
//! ```
//!
//! The client chooses `cid`, unique among its active consumers. `prefetch` is the most
//! deliveries the consumer holds unsettled at once (its credit). `mode`: 0 `ack` (each
//! delivery is acked after processing: at least once), 1 `auto` (settled as it is
//! sent: at most once), 2 `exactly_once` (RECEIVED, then ACK; needs `name`).
//!
//! Every delivery attempt has its own `delivery_id`; an ACK, NACK or RECEIVED for an
//! attempt that is no longer outstanding is refused with `stale_delivery`. `seq` is the
//! message's position in its queue, stable across attempts. DELIVERY flag bit 0
//! `RECEIVED_BEFORE`: an exactly-once consumer of this name already sent RECEIVED for
//! this message before its connection ended.

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::publish::{Envelope, EnvelopeRef};
use super::{encode_with, Body};
use crate::codes::FrameType;
use crate::error::{DecodeError, EncodeError};
use crate::wire::{self, Reader};

/// How a consumer settles its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum AckMode {
    /// The consumer acks each delivery after processing it (at least once).
    #[default]
    Manual = 0,
    /// Deliveries are settled as they are sent; one sent just before a crash or leader
    /// change, whose settle was not stored, is sent again.
    Auto = 1,
    /// RECEIVED then ACK, recorded in the store under the consumer's name.
    ExactlyOnce = 2,
}

impl AckMode {
    pub fn from_u8(n: u8) -> Option<Self> {
        match n {
            0 => Some(AckMode::Manual),
            1 => Some(AckMode::Auto),
            2 => Some(AckMode::ExactlyOnce),
            _ => None,
        }
    }
}

/// Starts consuming from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consume {
    pub id: u32,
    pub cid: u32,
    pub queue: ByteString,
    pub prefetch: u32,
    pub mode: AckMode,
    /// Durable consumer name; required for [`AckMode::ExactlyOnce`].
    pub name: Option<ByteString>,
}

impl Body for Consume {
    const TYPE: FrameType = FrameType::Consume;

    fn body_len(&self) -> usize {
        4 + 4 + wire::string_len(&self.queue) + 4 + 1 + wire::opt_string_len(self.name.as_deref())
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        dst.put_u32(self.cid);
        wire::put_string(dst, &self.queue, "queue")?;
        dst.put_u32(self.prefetch);
        dst.put_u8(self.mode as u8);
        wire::put_opt_string(dst, self.name.as_deref(), "name")
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let id = r.u32("id")?;
        let cid = r.u32("cid")?;
        let queue = r.string("queue")?;
        let prefetch = r.u32("prefetch")?;
        let mode = r.u8("mode")?;
        let mode = AckMode::from_u8(mode).ok_or_else(|| r.invalid("mode", u64::from(mode)))?;
        Ok(Self {
            id,
            cid,
            queue,
            prefetch,
            mode,
            name: r.opt_string("name")?,
        })
    }
}

const RECEIVED_BEFORE: u8 = 0b01;

/// The fixed part of a DELIVERY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryHead {
    pub cid: u32,
    pub delivery_id: u64,
    pub seq: u64,
    /// 1 on the first attempt.
    pub delivery_count: u32,
    pub received_before: bool,
}

impl DeliveryHead {
    const LEN: usize = 4 + 8 + 8 + 4 + 1;

    fn encode(&self, dst: &mut BytesMut) {
        dst.put_u32(self.cid);
        dst.put_u64(self.delivery_id);
        dst.put_u64(self.seq);
        dst.put_u32(self.delivery_count);
        dst.put_u8(if self.received_before {
            RECEIVED_BEFORE
        } else {
            0
        });
    }
}

/// The server hands a queued message to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub head: DeliveryHead,
    pub envelope: Envelope,
}

impl Delivery {
    /// Encodes a DELIVERY from borrowed parts.
    ///
    /// # Errors
    ///
    /// As [`Encode::encode`](super::Encode::encode).
    pub fn encode_parts(
        head: &DeliveryHead,
        envelope: EnvelopeRef<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        encode_with(dst, FrameType::Delivery, |dst| {
            head.encode(dst);
            envelope.encode(dst)
        })
    }

    /// Encodes a DELIVERY whose envelope is already in wire form (as a store keeps
    /// it), with one copy.
    ///
    /// # Errors
    ///
    /// As [`Encode::encode`](super::Encode::encode).
    pub fn encode_wire(
        head: &DeliveryHead,
        envelope: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        encode_with(dst, FrameType::Delivery, |dst| {
            head.encode(dst);
            dst.put_slice(envelope);
            Ok(())
        })
    }

    /// Encoded length of the frame [`Delivery::encode_wire`] writes.
    pub fn wire_len(envelope: &[u8]) -> usize {
        crate::FRAME_HEADER_LEN + DeliveryHead::LEN + envelope.len()
    }

    /// Encoded length of the frame [`Delivery::encode_parts`] writes.
    pub fn parts_len(envelope: EnvelopeRef<'_>) -> usize {
        crate::FRAME_HEADER_LEN + DeliveryHead::LEN + envelope.encoded_len()
    }
}

impl Body for Delivery {
    const TYPE: FrameType = FrameType::Delivery;

    fn body_len(&self) -> usize {
        Self::parts_len(self.envelope.as_ref()) - crate::FRAME_HEADER_LEN
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.head.encode(dst);
        self.envelope.as_ref().encode(dst)
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let cid = r.u32("cid")?;
        let delivery_id = r.u64("delivery_id")?;
        let seq = r.u64("seq")?;
        let delivery_count = r.u32("delivery_count")?;
        let flags = r.u8("flags")?;
        if flags & !RECEIVED_BEFORE != 0 {
            return Err(r.invalid("flags", u64::from(flags)));
        }
        Ok(Self {
            head: DeliveryHead {
                cid,
                delivery_id,
                seq,
                delivery_count,
                received_before: flags & RECEIVED_BEFORE != 0,
            },
            envelope: Envelope::decode(r)?,
        })
    }
}

macro_rules! settle_frame {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            pub id: u32,
            pub cid: u32,
            pub delivery_id: u64,
        }

        impl Body for $name {
            const TYPE: FrameType = FrameType::$name;

            fn body_len(&self) -> usize {
                4 + 4 + 8
            }

            fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
                dst.put_u32(self.id);
                dst.put_u32(self.cid);
                dst.put_u64(self.delivery_id);
                Ok(())
            }

            fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
                Ok(Self {
                    id: r.u32("id")?,
                    cid: r.u32("cid")?,
                    delivery_id: r.u64("delivery_id")?,
                })
            }
        }
    };
}

settle_frame!(
    /// The delivery was processed: remove the message from the queue. For an
    /// exactly-once consumer, the second step after [`Received`].
    Ack
);
settle_frame!(
    /// Exactly-once, first step: the consumer has the message; the broker records that
    /// in the store before it answers OK, and from then on never hands the message to
    /// anyone else.
    Received
);

/// The delivery was not processed: requeue it (optionally not before a delay), or
/// dead-letter it as rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack {
    pub id: u32,
    pub cid: u32,
    pub delivery_id: u64,
    pub requeue: bool,
    /// With `requeue`: redeliver no sooner than this many milliseconds from now.
    pub delay_ms: u32,
}

impl Body for Nack {
    const TYPE: FrameType = FrameType::Nack;

    fn body_len(&self) -> usize {
        4 + 4 + 8 + 1 + 4
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        dst.put_u32(self.cid);
        dst.put_u64(self.delivery_id);
        dst.put_u8(u8::from(self.requeue));
        dst.put_u32(self.delay_ms);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let id = r.u32("id")?;
        let cid = r.u32("cid")?;
        let delivery_id = r.u64("delivery_id")?;
        let requeue = match r.u8("requeue")? {
            0 => false,
            1 => true,
            other => return Err(r.invalid("requeue", u64::from(other))),
        };
        Ok(Self {
            id,
            cid,
            delivery_id,
            requeue,
            delay_ms: r.u32("delay_ms")?,
        })
    }
}

/// Gives an auto-mode consumer room for more deliveries: the application has taken
/// `credit` of those sent to it. No answer (an ERROR with id 0 if refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    pub cid: u32,
    pub credit: u32,
}

impl Body for Credit {
    const TYPE: FrameType = FrameType::Credit;

    fn body_len(&self) -> usize {
        8
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.cid);
        dst.put_u32(self.credit);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            cid: r.u32("cid")?,
            credit: r.u32("credit")?,
        })
    }
}

/// Stops a consumer; its unsettled deliveries go back to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancel {
    pub id: u32,
    pub cid: u32,
}

impl Body for Cancel {
    const TYPE: FrameType = FrameType::Cancel;

    fn body_len(&self) -> usize {
        8
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        dst.put_u32(self.cid);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u32("id")?,
            cid: r.u32("cid")?,
        })
    }
}
