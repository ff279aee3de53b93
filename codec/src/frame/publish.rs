//! PUBLISH (client → server) and MESSAGE (server → client).
//!
//! Both carry an envelope — subject, reply-to, headers, payload — which the broker
//! copies from a PUBLISH into each MESSAGE without re-parsing it.
//!
//! ```text
//! PUBLISH  id: u32 | qos: u8 | flags: u8 | envelope
//! MESSAGE  sid: u32 | flags: u8 | envelope
//! envelope subject: string | reply_to: string (empty = none) | headers | payload
//! ```
//!
//! The payload is not length-prefixed: it runs to the end of the frame. `flags` is
//! reserved and must be 0 in protocol version 1.

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

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
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
    fn encoded_len(&self) -> usize {
        wire::string_len(self.subject)
            + wire::opt_string_len(self.reply_to)
            + self.headers.encoded_len()
            + self.payload.len()
    }

    fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        wire::put_string(dst, self.subject, "subject")?;
        wire::put_opt_string(dst, self.reply_to, "reply_to")?;
        self.headers.encode(dst)?;
        dst.put_slice(self.payload);
        Ok(())
    }
}

fn decode_flags(r: &mut Reader) -> Result<(), DecodeError> {
    match r.u8("flags")? {
        0 => Ok(()),
        other => Err(r.invalid("flags", u64::from(other))),
    }
}

/// A client publishes a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Correlation id for the server's answer; 0 asks for no answer (only an ERROR is
    /// ever sent, with id 0, if the publish is refused).
    pub id: u32,
    pub qos: Qos,
    pub envelope: Envelope,
}

impl Publish {
    /// Encodes a PUBLISH from borrowed parts, without building a `Publish`.
    ///
    /// # Errors
    ///
    /// As [`Encode::encode`](super::Encode::encode).
    pub fn encode_parts(
        id: u32,
        qos: Qos,
        envelope: EnvelopeRef<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        encode_with(dst, FrameType::Publish, |dst| {
            encode_publish_body(id, qos, envelope, dst)
        })
    }

    /// Encoded length of the frame [`Publish::encode_parts`] writes.
    pub fn parts_len(envelope: EnvelopeRef<'_>) -> usize {
        crate::FRAME_HEADER_LEN + 4 + 1 + 1 + envelope.encoded_len()
    }
}

fn encode_publish_body(
    id: u32,
    qos: Qos,
    envelope: EnvelopeRef<'_>,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    dst.put_u32(id);
    dst.put_u8(qos as u8);
    dst.put_u8(0);
    envelope.encode(dst)
}

fn encode_message_body(
    sid: u32,
    envelope: EnvelopeRef<'_>,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    dst.put_u32(sid);
    dst.put_u8(0);
    envelope.encode(dst)
}

impl Body for Publish {
    const TYPE: FrameType = FrameType::Publish;

    fn body_len(&self) -> usize {
        Self::parts_len(self.envelope.as_ref()) - crate::FRAME_HEADER_LEN
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        encode_publish_body(self.id, self.qos, self.envelope.as_ref(), dst)
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let id = r.u32("id")?;
        let qos = r.u8("qos")?;
        let qos = Qos::from_u8(qos).ok_or_else(|| r.invalid("qos", u64::from(qos)))?;
        decode_flags(r)?;
        Ok(Self {
            id,
            qos,
            envelope: Envelope::decode(r)?,
        })
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
            encode_message_body(sid, envelope, dst)
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
        encode_message_body(self.sid, self.envelope.as_ref(), dst)
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let sid = r.u32("sid")?;
        decode_flags(r)?;
        Ok(Self {
            sid,
            envelope: Envelope::decode(r)?,
        })
    }
}
