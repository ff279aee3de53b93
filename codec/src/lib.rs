//! tern-codec: the tern wire protocol.
//!
//! This crate is a pure codec — no I/O, no async runtime — and the single source of truth
//! for the byte layout that `codec/PROTOCOL.md` specifies. The broker and the client both
//! speak through it, so a frame can never be encoded one way and decoded another.
//!
//! # Layout
//!
//! * [`frame`]: the [`Frame`] enum, one module per frame family, and the two-phase decoder.
//! * [`codes`]: frame type and error code numbers (stable; never renumbered).
//! * [`subject`]: [`Subject`] and [`Pattern`], validated once at the edge, and the naive
//!   [`subject::matches`] that the broker's trie is tested against.
//! * [`headers`]: ordered message headers.
//! * [`names`]: queue and durable consumer names.
//!
//! Every frame on the wire is:
//!
//! ```text
//! +----------------+---------+----------------------+
//! | length: u32 BE | type u8 | body (length-1 bytes)|
//! +----------------+---------+----------------------+
//! ```
//!
//! `length` counts the type byte and the body. A decoder rejects a `length` above its
//! maximum frame size before it buffers or allocates anything for the body.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod codes;
mod error;
pub mod frame;
pub mod headers;
pub mod names;
pub mod subject;
mod wire;

pub use bytes::{Bytes, BytesMut};
pub use bytestring::ByteString;
pub use codes::{ErrorCode, FrameType};
pub use error::{DecodeError, EncodeError};
pub use frame::{
    Ack, AckMode, Binding, Cancel, ClusterChange, ClusterInfo, ClusterOp, ClusterQuery, Confirm,
    Consume, Credentials, Credit, Delivery, DeliveryHead, Done, Encode, Envelope, EnvelopeRef,
    ErrorFrame, Frame, GroupInfo, GroupsInfo, GroupsQuery, Hello, Member, MemberRole, Message,
    Nack, Ok, Overflow, Ping, Pong, ProducerSeq, Publish, PublishHead, Qos, QueueCreate,
    QueueDeclare, QueueDelete, QueueInfo, QueueMove, QueueOptions, QueuePurge, QueueQuery,
    QueueStats, Received, ServerInfo, ServerQuery, Subscribe, Unsubscribe, Welcome,
};
pub use headers::{Headers, DEADLINE_HEADER};
pub use subject::{Pattern, Subject, SubjectError, SubjectLimits};

/// The protocol version this crate speaks, sent in [`Hello`] and echoed in [`Welcome`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Default maximum frame size (length field value): 1 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 1024 * 1024;

/// The largest maximum frame size a server may be configured with: 64 MiB.
pub const MAX_FRAME_SIZE_LIMIT: u32 = 64 * 1024 * 1024;

/// Bytes before the body of every frame: the length prefix and the type byte.
pub const FRAME_HEADER_LEN: usize = 5;
