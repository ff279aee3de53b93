//! Frames: the unit of the tern protocol.
//!
//! One module per frame family holds the frame types, their body layout, encode and
//! decode: `hello` (handshake), `control` (ping, pong, ok, done), `error`, `publish`
//! (publish, message delivery, confirm), `subscribe` (subscribe, unsubscribe),
//! `consume` (consuming from queues and settling deliveries), `queue` (queue
//! administration), `server` (server information).
//!
//! Decoding is two-phase (as in mini-redis and rumqttd): the 5-byte header is read
//! first, a length over the maximum is rejected before anything is reserved for the
//! body, and `Ok(None)` is returned until the whole frame is buffered. Only then is the
//! body split off (`split_to(..).freeze()`), so strings and payloads are zero-copy
//! slices of the read buffer.

/// A frame whose body is only a correlation id (PING, PONG, OK, the queries).
macro_rules! id_frame {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            /// Correlation id.
            pub id: u32,
        }

        impl $crate::frame::Body for $name {
            const TYPE: $crate::codes::FrameType = $crate::codes::FrameType::$name;

            fn body_len(&self) -> usize {
                4
            }

            fn encode_body(
                &self,
                dst: &mut bytes::BytesMut,
            ) -> Result<(), $crate::error::EncodeError> {
                bytes::BufMut::put_u32(dst, self.id);
                Ok(())
            }

            fn decode_body(
                r: &mut $crate::wire::Reader,
            ) -> Result<Self, $crate::error::DecodeError> {
                Ok(Self { id: r.u32("id")? })
            }
        }
    };
}

mod cluster;
mod consume;
mod control;
mod error;
mod hello;
mod publish;
mod queue;
mod server;
mod subscribe;

use bytes::{Buf, BufMut, BytesMut};

pub use cluster::{
    ClusterChange, ClusterInfo, ClusterOp, ClusterQuery, GroupInfo, GroupsInfo, GroupsQuery,
    Member, MemberRole,
};
pub use consume::{Ack, AckMode, Cancel, Consume, Credit, Delivery, DeliveryHead, Nack, Received};
pub use control::{Done, Ok, Ping, Pong};
pub use error::ErrorFrame;
pub use hello::{Credentials, Hello, Welcome};
pub use publish::{
    Confirm, Envelope, EnvelopeRef, Message, ProducerSeq, Publish, PublishHead, Qos,
};
pub use queue::{
    Binding, Overflow, QueueCreate, QueueDeclare, QueueDelete, QueueInfo, QueueMove, QueueOptions,
    QueuePurge, QueueQuery, QueueStats,
};
pub use server::{ServerInfo, ServerQuery};
pub use subscribe::{Subscribe, Unsubscribe};

use crate::codes::FrameType;
use crate::error::{DecodeError, EncodeError};
use crate::wire::Reader;
use crate::FRAME_HEADER_LEN;

/// Anything that can be written to the wire as one whole frame (header included).
pub trait Encode {
    /// Exact number of bytes [`Encode::encode`] appends.
    fn encoded_len(&self) -> usize;

    /// Appends the frame to `dst`. On error `dst` is left as it was.
    ///
    /// # Errors
    ///
    /// A value does not fit its wire field (a string over 65535 bytes, say).
    fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError>;
}

/// The body of one frame type. Sealed: implemented only in this crate.
pub(crate) trait Body: Sized {
    const TYPE: FrameType;

    fn body_len(&self) -> usize;

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError>;

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError>;
}

impl<B: Body> Encode for B {
    fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body_len()
    }

    fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        encode_with(dst, B::TYPE, |dst| self.encode_body(dst))
    }
}

/// Writes a frame header, lets `body` append the body, then patches the length in.
/// On error the partial frame is removed again.
pub(crate) fn encode_with(
    dst: &mut BytesMut,
    kind: FrameType,
    body: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = dst.len();
    dst.put_u32(0);
    dst.put_u8(kind as u8);
    let written = body(dst).and_then(|()| {
        let len = dst.len() - start - 4;
        u32::try_from(len).map_err(|_| EncodeError::FrameTooLarge { len })
    });
    match written {
        Result::Ok(len) => {
            let prefix = dst.get_mut(start..start + 4);
            // The four bytes were put above; `get_mut` cannot miss them.
            if let Some(prefix) = prefix {
                prefix.copy_from_slice(&len.to_be_bytes());
            }
            Result::Ok(())
        }
        Err(e) => {
            dst.truncate(start);
            Err(e)
        }
    }
}

/// Every frame of protocol version 1.
#[allow(clippy::large_enum_variant)] // frames are decoded into and handled in place, not stored
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    Ping(Ping),
    Pong(Pong),
    Ok(Ok),
    Error(ErrorFrame),
    Done(Done),
    Publish(Publish),
    Message(Message),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    Confirm(Confirm),
    Consume(Consume),
    Delivery(Delivery),
    Ack(Ack),
    Nack(Nack),
    Received(Received),
    Cancel(Cancel),
    Credit(Credit),
    QueueDeclare(QueueDeclare),
    QueueDelete(QueueDelete),
    QueueQuery(QueueQuery),
    QueueInfo(QueueInfo),
    QueuePurge(QueuePurge),
    QueueMove(QueueMove),
    ServerQuery(ServerQuery),
    ServerInfo(ServerInfo),
    ClusterQuery(ClusterQuery),
    ClusterInfo(ClusterInfo),
    ClusterChange(ClusterChange),
    GroupsQuery(GroupsQuery),
    GroupsInfo(GroupsInfo),
    QueueCreate(QueueCreate),
}

macro_rules! each_frame {
    ($self:expr, $f:ident => $e:expr) => {
        match $self {
            Frame::Hello($f) => $e,
            Frame::Welcome($f) => $e,
            Frame::Ping($f) => $e,
            Frame::Pong($f) => $e,
            Frame::Ok($f) => $e,
            Frame::Error($f) => $e,
            Frame::Done($f) => $e,
            Frame::Publish($f) => $e,
            Frame::Message($f) => $e,
            Frame::Subscribe($f) => $e,
            Frame::Unsubscribe($f) => $e,
            Frame::Confirm($f) => $e,
            Frame::Consume($f) => $e,
            Frame::Delivery($f) => $e,
            Frame::Ack($f) => $e,
            Frame::Nack($f) => $e,
            Frame::Received($f) => $e,
            Frame::Cancel($f) => $e,
            Frame::Credit($f) => $e,
            Frame::QueueDeclare($f) => $e,
            Frame::QueueDelete($f) => $e,
            Frame::QueueQuery($f) => $e,
            Frame::QueueInfo($f) => $e,
            Frame::QueuePurge($f) => $e,
            Frame::QueueMove($f) => $e,
            Frame::ServerQuery($f) => $e,
            Frame::ServerInfo($f) => $e,
            Frame::ClusterQuery($f) => $e,
            Frame::ClusterInfo($f) => $e,
            Frame::ClusterChange($f) => $e,
            Frame::GroupsQuery($f) => $e,
            Frame::GroupsInfo($f) => $e,
            Frame::QueueCreate($f) => $e,
        }
    };
}

impl Frame {
    /// Decodes one frame from the front of `src`.
    ///
    /// Returns `Ok(None)` when `src` does not yet hold a whole frame (nothing is
    /// consumed); on success the frame's bytes are removed from `src`. A length above
    /// `max_frame_size` is rejected from the header alone, before any of the body is
    /// buffered or reserved.
    ///
    /// # Errors
    ///
    /// See [`DecodeError`]; [`DecodeError::is_fatal`] says whether the stream can go on.
    /// After a non-fatal error the bad frame has been consumed.
    pub fn decode(src: &mut BytesMut, max_frame_size: u32) -> Result<Option<Frame>, DecodeError> {
        // The length alone is judged as soon as it has arrived: a bad one is refused
        // without waiting for any more bytes.
        let Some(mut prefix) = src.get(..4) else {
            return Result::Ok(None);
        };
        let len = prefix.get_u32();
        if len == 0 {
            return Err(DecodeError::EmptyFrame);
        }
        if len > max_frame_size {
            return Err(DecodeError::FrameTooLarge {
                len,
                max: max_frame_size,
            });
        }
        let Some(&code) = src.get(4) else {
            return Result::Ok(None);
        };
        // `len <= max_frame_size <= u32::MAX`, which fits usize on every supported target.
        let total = 4 + usize::try_from(len).map_err(|_| DecodeError::FrameTooLarge {
            len,
            max: max_frame_size,
        })?;
        if src.len() < total {
            // Bounded by the check above: a peer can make the buffer grow to hold one
            // maximum-size frame (rounded up by the allocator's doubling), no more.
            src.reserve(total - src.len());
            return Result::Ok(None);
        }
        src.advance(FRAME_HEADER_LEN);
        let body = src.split_to(total - FRAME_HEADER_LEN).freeze();
        let Some(kind) = FrameType::from_u8(code) else {
            return Err(DecodeError::UnknownFrameType { code });
        };
        let mut r = Reader::new(kind, body);
        let frame = match kind {
            FrameType::Hello => Frame::Hello(Body::decode_body(&mut r)?),
            FrameType::Welcome => Frame::Welcome(Body::decode_body(&mut r)?),
            FrameType::Ping => Frame::Ping(Body::decode_body(&mut r)?),
            FrameType::Pong => Frame::Pong(Body::decode_body(&mut r)?),
            FrameType::Ok => Frame::Ok(Body::decode_body(&mut r)?),
            FrameType::Error => Frame::Error(Body::decode_body(&mut r)?),
            FrameType::Done => Frame::Done(Body::decode_body(&mut r)?),
            FrameType::Publish => Frame::Publish(Body::decode_body(&mut r)?),
            FrameType::Message => Frame::Message(Body::decode_body(&mut r)?),
            FrameType::Subscribe => Frame::Subscribe(Body::decode_body(&mut r)?),
            FrameType::Unsubscribe => Frame::Unsubscribe(Body::decode_body(&mut r)?),
            FrameType::Confirm => Frame::Confirm(Body::decode_body(&mut r)?),
            FrameType::Consume => Frame::Consume(Body::decode_body(&mut r)?),
            FrameType::Delivery => Frame::Delivery(Body::decode_body(&mut r)?),
            FrameType::Ack => Frame::Ack(Body::decode_body(&mut r)?),
            FrameType::Nack => Frame::Nack(Body::decode_body(&mut r)?),
            FrameType::Received => Frame::Received(Body::decode_body(&mut r)?),
            FrameType::Cancel => Frame::Cancel(Body::decode_body(&mut r)?),
            FrameType::Credit => Frame::Credit(Body::decode_body(&mut r)?),
            FrameType::QueueDeclare => Frame::QueueDeclare(Body::decode_body(&mut r)?),
            FrameType::QueueDelete => Frame::QueueDelete(Body::decode_body(&mut r)?),
            FrameType::QueueQuery => Frame::QueueQuery(Body::decode_body(&mut r)?),
            FrameType::QueueInfo => Frame::QueueInfo(Body::decode_body(&mut r)?),
            FrameType::QueuePurge => Frame::QueuePurge(Body::decode_body(&mut r)?),
            FrameType::QueueMove => Frame::QueueMove(Body::decode_body(&mut r)?),
            FrameType::ServerQuery => Frame::ServerQuery(Body::decode_body(&mut r)?),
            FrameType::ServerInfo => Frame::ServerInfo(Body::decode_body(&mut r)?),
            FrameType::ClusterQuery => Frame::ClusterQuery(Body::decode_body(&mut r)?),
            FrameType::ClusterInfo => Frame::ClusterInfo(Body::decode_body(&mut r)?),
            FrameType::ClusterChange => Frame::ClusterChange(Body::decode_body(&mut r)?),
            FrameType::GroupsQuery => Frame::GroupsQuery(Body::decode_body(&mut r)?),
            FrameType::GroupsInfo => Frame::GroupsInfo(Body::decode_body(&mut r)?),
            FrameType::QueueCreate => Frame::QueueCreate(Body::decode_body(&mut r)?),
        };
        r.finish()?;
        Result::Ok(Some(frame))
    }

    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        fn of<B: Body>(_: &B) -> FrameType {
            B::TYPE
        }
        each_frame!(self, f => of(f))
    }
}

impl Encode for Frame {
    fn encoded_len(&self) -> usize {
        each_frame!(self, f => f.encoded_len())
    }

    fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        each_frame!(self, f => f.encode(dst))
    }
}

/// Implements `From<T> for Frame` for each frame type.
macro_rules! into_frame {
    ($($t:ident),*) => {
        $(impl From<$t> for Frame {
            fn from(f: $t) -> Frame {
                Frame::$t(f)
            }
        })*
    };
}
into_frame!(
    Hello,
    Welcome,
    Ping,
    Pong,
    Ok,
    Done,
    Publish,
    Message,
    Subscribe,
    Unsubscribe,
    Confirm,
    Consume,
    Delivery,
    Ack,
    Nack,
    Received,
    Cancel,
    Credit,
    QueueDeclare,
    QueueDelete,
    QueueQuery,
    QueueInfo,
    QueuePurge,
    QueueMove,
    ServerQuery,
    ServerInfo,
    ClusterQuery,
    ClusterInfo,
    ClusterChange,
    GroupsQuery,
    GroupsInfo,
    QueueCreate
);

impl From<ErrorFrame> for Frame {
    fn from(f: ErrorFrame) -> Frame {
        Frame::Error(f)
    }
}

#[cfg(test)]
pub(crate) mod tests;
