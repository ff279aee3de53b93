//! Frame type and error code numbers.
//!
//! Both tables are part of the wire format. A number, once published, keeps its meaning
//! forever: retired numbers stay retired and are never reused for something else, so an
//! old client never misreads a new server.

/// The type byte that follows the length prefix of every frame.
///
/// Ranges are reserved by family so that later frames land next to their relatives:
/// `0x01..=0x0F` connection and control, `0x10..=0x1F` pub/sub, `0x20..=0x2F` publish
/// confirms, `0x30..=0x3F` queue consumption and acks, `0x40..=0x4F` administration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Welcome = 0x02,
    Ping = 0x03,
    Pong = 0x04,
    Ok = 0x05,
    Error = 0x06,
    Done = 0x07,
    Publish = 0x10,
    Message = 0x11,
    Subscribe = 0x12,
    Unsubscribe = 0x13,
    Confirm = 0x20,
    Consume = 0x30,
    Delivery = 0x31,
    Ack = 0x32,
    Nack = 0x33,
    Received = 0x34,
    Cancel = 0x35,
    Credit = 0x36,
    QueueDeclare = 0x40,
    QueueDelete = 0x41,
    QueueQuery = 0x42,
    QueueInfo = 0x43,
    QueuePurge = 0x44,
    QueueMove = 0x45,
    ServerQuery = 0x46,
    ServerInfo = 0x47,
    ClusterQuery = 0x48,
    ClusterInfo = 0x49,
    ClusterChange = 0x4A,
    GroupsQuery = 0x4B,
    GroupsInfo = 0x4C,
    QueueCreate = 0x4D,
}

/// `(code, name)` for every frame type, for logs and the specification.
pub const FRAME_TYPES: &[(FrameType, &str)] = &[
    (FrameType::Hello, "HELLO"),
    (FrameType::Welcome, "WELCOME"),
    (FrameType::Ping, "PING"),
    (FrameType::Pong, "PONG"),
    (FrameType::Ok, "OK"),
    (FrameType::Error, "ERROR"),
    (FrameType::Done, "DONE"),
    (FrameType::Publish, "PUBLISH"),
    (FrameType::Message, "MESSAGE"),
    (FrameType::Subscribe, "SUBSCRIBE"),
    (FrameType::Unsubscribe, "UNSUBSCRIBE"),
    (FrameType::Confirm, "CONFIRM"),
    (FrameType::Consume, "CONSUME"),
    (FrameType::Delivery, "DELIVERY"),
    (FrameType::Ack, "ACK"),
    (FrameType::Nack, "NACK"),
    (FrameType::Received, "RECEIVED"),
    (FrameType::Cancel, "CANCEL"),
    (FrameType::Credit, "CREDIT"),
    (FrameType::QueueDeclare, "QUEUE_DECLARE"),
    (FrameType::QueueDelete, "QUEUE_DELETE"),
    (FrameType::QueueQuery, "QUEUE_QUERY"),
    (FrameType::QueueInfo, "QUEUE_INFO"),
    (FrameType::QueuePurge, "QUEUE_PURGE"),
    (FrameType::QueueMove, "QUEUE_MOVE"),
    (FrameType::ServerQuery, "SERVER_QUERY"),
    (FrameType::ServerInfo, "SERVER_INFO"),
    (FrameType::ClusterQuery, "CLUSTER_QUERY"),
    (FrameType::ClusterInfo, "CLUSTER_INFO"),
    (FrameType::ClusterChange, "CLUSTER_CHANGE"),
    (FrameType::GroupsQuery, "GROUPS_QUERY"),
    (FrameType::GroupsInfo, "GROUPS_INFO"),
    (FrameType::QueueCreate, "QUEUE_CREATE"),
];

impl FrameType {
    /// The frame type for a type byte, or `None` for a byte this version does not know.
    pub fn from_u8(code: u8) -> Option<Self> {
        FRAME_TYPES
            .iter()
            .map(|(t, _)| *t)
            .find(|t| *t as u8 == code)
    }

    /// The upper-case name used in PROTOCOL.md and in logs.
    pub fn name(self) -> &'static str {
        FRAME_TYPES
            .iter()
            .find(|(t, _)| *t == self)
            .map_or("?", |(_, n)| n)
    }
}

impl std::fmt::Display for FrameType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The numeric code of an ERROR frame.
///
/// Numbers are grouped by family (`1..` protocol, `100..` subjects and subscriptions,
/// `200..` flow control, `300..` security, `400..` queues, `500..` server). They are never
/// renumbered, and a retired number is never given to another error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The client asked for a protocol version the server does not speak.
    UnsupportedVersion = 1,
    /// A frame's body does not follow its layout; the connection is closed.
    MalformedFrame = 2,
    /// A frame's length exceeds the server's maximum; the connection is closed.
    FrameTooLarge = 3,
    /// A frame type this server does not know; the connection stays open.
    UnknownFrameType = 4,
    /// A frame that is not allowed in this state (e.g. anything before HELLO).
    UnexpectedFrame = 5,
    /// The client did not complete the handshake in time.
    HandshakeTimeout = 6,
    /// A publish subject is not a valid literal subject.
    InvalidSubject = 100,
    /// A subscription pattern is not valid.
    InvalidPattern = 101,
    /// A queue group name is not valid.
    InvalidQueueGroup = 102,
    /// A SUBSCRIBE reused a subscription id that is still active on this connection.
    SubscriptionIdInUse = 103,
    /// An UNSUBSCRIBE named a subscription id that is not active on this connection.
    UnknownSubscription = 104,
    /// The connection reached its maximum number of subscriptions.
    TooManySubscriptions = 105,
    /// A header key is empty or a message has more headers than allowed.
    InvalidHeaders = 106,
    /// The publish asked for a quality of service it cannot have: QoS 1 or 2 without a
    /// request id, or QoS 2 without a producer sequence.
    UnsupportedQos = 107,
    /// A content filter does not parse, or filters are not available.
    InvalidFilter = 108,
    /// A producer id is empty or too long.
    InvalidProducer = 109,
    /// The client does not read fast enough; the server closes the connection.
    SlowConsumer = 200,
    /// The server is at its connection limit (in all, or from the client's address).
    TooManyConnections = 201,
    /// The connection was silent too long (it did not answer the server's PING).
    IdleTimeout = 202,
    /// The credentials (or client certificate) were refused. Deliberately says no
    /// more: not whether the user exists.
    AuthenticationFailed = 300,
    /// The user may not do this; the message names the operation and the subject or
    /// queue.
    PermissionDenied = 301,
    /// No queue has this name.
    QueueNotFound = 400,
    /// A queue of this name exists with other bindings or options.
    QueueExists = 401,
    /// The queue is at its `max_length` and its overflow policy is `reject`.
    QueueFull = 402,
    /// A mandatory publish was taken by no subscriber and no queue.
    NoRoute = 403,
    /// An ACK, NACK or RECEIVED for a delivery attempt that is no longer outstanding
    /// (it timed out and was redelivered, or was settled already).
    StaleDelivery = 404,
    /// A settle or CANCEL named a consumer id that is not active on this connection.
    UnknownConsumer = 405,
    /// A queue name, binding or option, or a consumer's prefetch or name, is not valid.
    InvalidQueue = 406,
    /// A CONSUME reused a consumer id that is still active on this connection.
    ConsumerIdInUse = 407,
    /// In a cluster: this node does not run the queues; the message ends with the
    /// leader's client address when it is known ("... connect to HOST:PORT").
    NotLeader = 408,
    /// A CLUSTER_CHANGE cannot be made (alone, unreachable, already a member, the
    /// last voter).
    MembershipRefused = 409,
    /// The server is shutting down.
    ShuttingDown = 500,
    /// An unexpected server-side failure; the message says what.
    Internal = 501,
    /// The store could not write (disk full, I/O error); the message was not stored.
    StorageFailed = 502,
}

/// `(code, name)` for every error code, for logs and the specification.
pub const ERROR_CODES: &[(ErrorCode, &str)] = &[
    (ErrorCode::UnsupportedVersion, "unsupported_version"),
    (ErrorCode::MalformedFrame, "malformed_frame"),
    (ErrorCode::FrameTooLarge, "frame_too_large"),
    (ErrorCode::UnknownFrameType, "unknown_frame_type"),
    (ErrorCode::UnexpectedFrame, "unexpected_frame"),
    (ErrorCode::HandshakeTimeout, "handshake_timeout"),
    (ErrorCode::InvalidSubject, "invalid_subject"),
    (ErrorCode::InvalidPattern, "invalid_pattern"),
    (ErrorCode::InvalidQueueGroup, "invalid_queue_group"),
    (ErrorCode::SubscriptionIdInUse, "subscription_id_in_use"),
    (ErrorCode::UnknownSubscription, "unknown_subscription"),
    (ErrorCode::TooManySubscriptions, "too_many_subscriptions"),
    (ErrorCode::InvalidHeaders, "invalid_headers"),
    (ErrorCode::UnsupportedQos, "unsupported_qos"),
    (ErrorCode::InvalidFilter, "invalid_filter"),
    (ErrorCode::InvalidProducer, "invalid_producer"),
    (ErrorCode::SlowConsumer, "slow_consumer"),
    (ErrorCode::TooManyConnections, "too_many_connections"),
    (ErrorCode::IdleTimeout, "idle_timeout"),
    (ErrorCode::AuthenticationFailed, "authentication_failed"),
    (ErrorCode::PermissionDenied, "permission_denied"),
    (ErrorCode::QueueNotFound, "queue_not_found"),
    (ErrorCode::QueueExists, "queue_exists"),
    (ErrorCode::QueueFull, "queue_full"),
    (ErrorCode::NoRoute, "no_route"),
    (ErrorCode::StaleDelivery, "stale_delivery"),
    (ErrorCode::UnknownConsumer, "unknown_consumer"),
    (ErrorCode::InvalidQueue, "invalid_queue"),
    (ErrorCode::ConsumerIdInUse, "consumer_id_in_use"),
    (ErrorCode::NotLeader, "not_leader"),
    (ErrorCode::MembershipRefused, "membership_refused"),
    (ErrorCode::ShuttingDown, "shutting_down"),
    (ErrorCode::Internal, "internal"),
    (ErrorCode::StorageFailed, "storage_failed"),
];

impl ErrorCode {
    /// The error code for a number, or `None` for a number this version does not know
    /// (a newer server may send codes an older client has never heard of).
    pub fn from_u16(code: u16) -> Option<Self> {
        ERROR_CODES
            .iter()
            .map(|(c, _)| *c)
            .find(|c| *c as u16 == code)
    }

    /// The snake_case name used in PROTOCOL.md, logs and JSON output.
    pub fn name(self) -> &'static str {
        ERROR_CODES
            .iter()
            .find(|(c, _)| *c == self)
            .map_or("?", |(_, n)| n)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_type_table_round_trips() {
        for (t, name) in FRAME_TYPES {
            assert_eq!(FrameType::from_u8(*t as u8), Some(*t));
            assert_eq!(t.name(), *name);
        }
        assert_eq!(FrameType::from_u8(0x00), None);
        assert_eq!(FrameType::from_u8(0xFF), None);
    }

    #[test]
    fn error_code_table_round_trips_and_is_unique() {
        for (c, name) in ERROR_CODES {
            assert_eq!(ErrorCode::from_u16(*c as u16), Some(*c));
            assert_eq!(c.name(), *name);
            let same = ERROR_CODES.iter().filter(|(o, _)| *o as u16 == *c as u16);
            assert_eq!(same.count(), 1, "{c:?} has a duplicate number");
        }
        assert_eq!(ErrorCode::from_u16(0), None);
    }
}
