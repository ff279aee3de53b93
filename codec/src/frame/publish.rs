//! PUBLISH (client → server), MESSAGE (server → client), CONFIRM (server → client).
//!
//! PUBLISH and MESSAGE carry an envelope — subject, reply-to, headers, payload — which
//! the broker copies from a PUBLISH into each MESSAGE without re-parsing it.
//!
//! ```text
//! PUBLISH  id: u32 | qos: u8 | flags: u8
//!          | [producer: string | sequence: u64]   (only with flag IDEMPOTENT)
//!          | envelope
//! MESSAGE  sid: u32 | flags: u8 | envelope
//! CONFIRM  id: u32 | queues: u16 | flags: u8
//! envelope subject: string | reply_to: string (empty = none) | headers | payload
//! ```
//!
//! The payload is not length-prefixed: it runs to the end of the frame.
//!
//! PUBLISH flags: bit 0 `MANDATORY` (refuse the publish with `no_route` when nobody at
//! all takes it), bit 1 `IDEMPOTENT` (a producer id and sequence number follow, for
//! exactly-once deduplication). MESSAGE flags are reserved (0). CONFIRM flags: bit 0
//! `DUPLICATE` (the broker had this producer sequence already and stored nothing).
//! Reserved bits must be 0.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::{encode_with, Body};
use crate::codes::FrameType;
use crate::error::{DecodeError, EncodeError};
use crate::headers::Headers;
use crate::wire::{self, Reader};

/// Delivery guarantee asked for by a publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[repr(u8)]
pub enum Qos {
    /// No confirm; may be lost on a crash or to a slow consumer.
    #[default]
    AtMostOnce = 0,
    /// Confirmed once durable in every queue it routed to; redelivered until acked.
    AtLeastOnce = 1,
    /// As at-least-once, plus deduplication of publisher retries.
    ExactlyOnce = 2,
}

impl Qos {
    /// The QoS for its wire number.
    pub fn from_u8(n: u8) -> Option<Self> {
        match n {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }
}

/// What a message is: where it was published, where to reply, headers and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub subject: ByteString,
    pub reply_to: Option<ByteString>,
    pub headers: Headers,
    pub payload: Bytes,
}

impl Envelope {
    /// A borrowed view, for encoding.
    pub fn as_ref(&self) -> EnvelopeRef<'_> {
        EnvelopeRef {
            subject: &self.subject,
            reply_to: self.reply_to.as_deref(),
            headers: &self.headers,
            payload: &self.payload,
        }
    }

    /// Decodes an envelope that fills `bytes` exactly (the layout above; the payload
    /// runs to the end). For stores that keep envelopes in their wire form.
    ///
    /// # Errors
    ///
    /// The bytes do not hold a whole envelope.
    pub fn decode_bytes(bytes: Bytes) -> Result<Self, DecodeError> {
        Self::decode(&mut Reader::new(FrameType::Message, bytes))
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            subject: r.string("subject")?,
            reply_to: r.opt_string("reply_to")?,
            headers: Headers::decode(r)?,
            payload: r.rest(),
        })
    }
}

/// An envelope made of borrowed parts, so that a publisher can encode straight from
/// its own `&str` and `&[u8]` without building owned strings first.
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeRef<'a> {
    pub subject: &'a str,
    pub reply_to: Option<&'a str>,
    pub headers: &'a Headers,
    pub payload: &'a [u8],
}

impl EnvelopeRef<'_> {
    /// Bytes [`EnvelopeRef::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        wire::string_len(self.subject)
            + wire::opt_string_len(self.reply_to)
            + self.headers.encoded_len()
            + self.payload.len()
    }

    /// Appends the envelope in its wire layout.
    ///
    /// # Errors
    ///
    /// A string or the header count does not fit its field.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        wire::put_string(dst, self.subject, "subject")?;
        wire::put_opt_string(dst, self.reply_to, "reply_to")?;
        self.headers.encode(dst)?;
        dst.put_slice(self.payload);
        Ok(())
    }
}

const MANDATORY: u8 = 0b01;
const IDEMPOTENT: u8 = 0b10;

/// A producer's identity and the sequence number of one of its messages: the key an
/// exactly-once publish is deduplicated on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProducerSeq {
    pub producer: ByteString,
    pub sequence: u64,
}

/// The fixed part of a PUBLISH: everything but the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishHead<'a> {
    pub id: u32,
    pub qos: Qos,
    pub mandatory: bool,
    /// Producer id and sequence, for exactly-once deduplication.
    pub producer: Option<(&'a str, u64)>,
}

impl PublishHead<'_> {
    fn encoded_len(&self) -> usize {
        4 + 1 + 1 + self.producer.map_or(0, |(p, _)| wire::string_len(p) + 8)
    }

    fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        dst.put_u8(self.qos as u8);
        let mut flags = 0;
        if self.mandatory {
            flags |= MANDATORY;
        }
        if self.producer.is_some() {
            flags |= IDEMPOTENT;
        }
        dst.put_u8(flags);
        if let Some((producer, sequence)) = self.producer {
            wire::put_string(dst, producer, "producer")?;
            dst.put_u64(sequence);
        }
        Ok(())
    }
}

/// A client publishes a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Correlation id for the server's answer; 0 asks for no answer (only an ERROR is
    /// ever sent, with id 0, if the publish is refused). QoS 1 and 2 need an id.
    pub id: u32,
    pub qos: Qos,
    /// Refuse the publish (`no_route`) if no subscriber and no queue takes it.
    pub mandatory: bool,
    /// Deduplication key for exactly-once publishing.
    pub producer: Option<ProducerSeq>,
    pub envelope: Envelope,
}

impl Publish {
    /// The fixed part, borrowed.
    pub fn head(&self) -> PublishHead<'_> {
        PublishHead {
            id: self.id,
            qos: self.qos,
            mandatory: self.mandatory,
            producer: self
                .producer
                .as_ref()
                .map(|p| (p.producer.as_ref(), p.sequence)),
        }
    }

    /// Encodes a PUBLISH from borrowed parts, without building a `Publish`.
    ///
    /// # Errors
    ///
    /// As [`Encode::encode`](super::Encode::encode).
    pub fn encode_parts(
        head: &PublishHead<'_>,
        envelope: EnvelopeRef<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        encode_with(dst, FrameType::Publish, |dst| {
            head.encode(dst)?;
            envelope.encode(dst)
        })
    }

    /// Encoded length of the frame [`Publish::encode_parts`] writes.
    pub fn parts_len(head: &PublishHead<'_>, envelope: EnvelopeRef<'_>) -> usize {
        crate::FRAME_HEADER_LEN + head.encoded_len() + envelope.encoded_len()
    }
}

impl Body for Publish {
    const TYPE: FrameType = FrameType::Publish;

    fn body_len(&self) -> usize {
        Self::parts_len(&self.head(), self.envelope.as_ref()) - crate::FRAME_HEADER_LEN
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.head().encode(dst)?;
        self.envelope.as_ref().encode(dst)
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let id = r.u32("id")?;
        let qos = r.u8("qos")?;
        let qos = Qos::from_u8(qos).ok_or_else(|| r.invalid("qos", u64::from(qos)))?;
        let flags = r.u8("flags")?;
        if flags & !(MANDATORY | IDEMPOTENT) != 0 {
            return Err(r.invalid("flags", u64::from(flags)));
        }
        let producer = if flags & IDEMPOTENT != 0 {
            Some(ProducerSeq {
                producer: r.string("producer")?,
                sequence: r.u64("sequence")?,
            })
        } else {
            None
        };
        Ok(Self {
            id,
            qos,
            mandatory: flags & MANDATORY != 0,
            producer,
            envelope: Envelope::decode(r)?,
        })
    }
}

fn decode_reserved_flags(r: &mut Reader) -> Result<(), DecodeError> {
    match r.u8("flags")? {
        0 => Ok(()),
        other => Err(r.invalid("flags", u64::from(other))),
    }
}

/// The server delivers a message to one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subscription id the client chose in SUBSCRIBE.
    pub sid: u32,
    pub envelope: Envelope,
}

impl Message {
    /// Encodes a MESSAGE for subscription `sid` straight from a borrowed envelope, so
    /// fan-out to many subscribers builds no intermediate `Message` values.
    ///
    /// # Errors
    ///
    /// As [`Encode::encode`](super::Encode::encode).
    pub fn encode_parts(
        sid: u32,
        envelope: EnvelopeRef<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        encode_with(dst, FrameType::Message, |dst| {
            dst.put_u32(sid);
            dst.put_u8(0);
            envelope.encode(dst)
        })
    }

    /// Encoded length of the frame [`Message::encode_parts`] writes.
    pub fn parts_len(envelope: EnvelopeRef<'_>) -> usize {
        crate::FRAME_HEADER_LEN + 4 + 1 + envelope.encoded_len()
    }
}

impl Body for Message {
    const TYPE: FrameType = FrameType::Message;

    fn body_len(&self) -> usize {
        Self::parts_len(self.envelope.as_ref()) - crate::FRAME_HEADER_LEN
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.sid);
        dst.put_u8(0);
        self.envelope.as_ref().encode(dst)
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let sid = r.u32("sid")?;
        decode_reserved_flags(r)?;
        Ok(Self {
            sid,
            envelope: Envelope::decode(r)?,
        })
    }
}

const DUPLICATE: u8 = 0b01;

/// A QoS 1 or 2 publish is safe: durable in every queue it was routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirm {
    /// The PUBLISH's id.
    pub id: u32,
    /// How many queues stored the message (0 when only live subscribers took it).
    pub queues: u16,
    /// The broker already had this producer sequence and stored nothing again.
    pub duplicate: bool,
}

impl Body for Confirm {
    const TYPE: FrameType = FrameType::Confirm;

    fn body_len(&self) -> usize {
        4 + 2 + 1
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        dst.put_u16(self.queues);
        dst.put_u8(if self.duplicate { DUPLICATE } else { 0 });
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let id = r.u32("id")?;
        let queues = r.u16("queues")?;
        let flags = r.u8("flags")?;
        if flags & !DUPLICATE != 0 {
            return Err(r.invalid("flags", u64::from(flags)));
        }
        Ok(Self {
            id,
            queues,
            duplicate: flags & DUPLICATE != 0,
        })
    }
}
