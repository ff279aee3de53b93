//! Unit tests for every frame: round trip, golden bytes, truncation at every byte,
//! body corruption, header checks, streams split at every point, encode errors.
//!
//! The golden byte vectors are written out by hand from the layouts in the module docs
//! (`hello.rs`, `control.rs`, `error.rs`, `publish.rs`, `subscribe.rs`, `consume.rs`,
//! `queue.rs`, `server.rs`, `headers.rs`), so a change to the wire format fails here first.
//! `codec/PROTOCOL.md` quotes the same bytes in its worked example and its frame
//! examples, and `codec/fuzz/corpus/decode/` holds them as seeds (see
//! [`fuzz_seed_files_match_golden_frames`]).

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::*;
use crate::codes::ErrorCode;
use crate::headers::Headers;
use crate::{DEFAULT_MAX_FRAME_SIZE, MAX_FRAME_SIZE_LIMIT, PROTOCOL_VERSION};

// ---------------------------------------------------------------------------------------
// Samples and helpers
// ---------------------------------------------------------------------------------------

fn s(v: &str) -> ByteString {
    ByteString::from(v)
}

fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().copied().collect()
}

fn envelope(subject: &str, reply_to: Option<&str>, h: Headers, payload: &[u8]) -> Envelope {
    Envelope {
        subject: s(subject),
        reply_to: reply_to.map(s),
        headers: h,
        payload: Bytes::copy_from_slice(payload),
    }
}

/// A PUBLISH with no flags: not mandatory, no producer sequence.
fn publish(id: u32, qos: Qos, env: Envelope) -> Frame {
    publish_with(id, qos, false, None, env)
}

/// A PUBLISH with its flags: `mandatory`, and `producer` (sets IDEMPOTENT).
fn publish_with(
    id: u32,
    qos: Qos,
    mandatory: bool,
    producer: Option<(&str, u64)>,
    env: Envelope,
) -> Frame {
    Frame::Publish(Publish {
        id,
        qos,
        mandatory,
        producer: producer.map(|(p, sequence)| ProducerSeq {
            producer: s(p),
            sequence,
        }),
        envelope: env,
    })
}

fn delivery(head: DeliveryHead, env: Envelope) -> Frame {
    Frame::Delivery(Delivery {
        head,
        envelope: env,
    })
}

fn binding(pattern: &str, filter: Option<&str>) -> Binding {
    Binding {
        pattern: s(pattern),
        filter: filter.map(s),
    }
}

/// Options with every field set to a non-default value.
fn full_options() -> QueueOptions {
    QueueOptions {
        max_deliver: 5,
        ack_timeout_ms: 30_000,
        dead_letter: Some(s("orders.dlq")),
        ttl_ms: 86_400_000,
        max_length: 10_000,
        overflow: Overflow::Reject,
    }
}

fn max_stats() -> QueueStats {
    QueueStats {
        ready: u64::MAX,
        unacked: u64::MAX - 1,
        consumers: u32::MAX,
        published: u64::MAX - 2,
        delivered: u64::MAX - 3,
        acked: u64::MAX - 4,
        redelivered: u64::MAX - 5,
        dead_lettered: u64::MAX - 6,
        expired: u64::MAX - 7,
        dropped: u64::MAX - 8,
    }
}

/// A SERVER_INFO with every counter set and two listeners.
fn server_info(id: u32) -> ServerInfo {
    ServerInfo {
        id,
        server_id: s("tern-1"),
        version: s("0.1.0"),
        uptime_ms: 3_600_000,
        listeners: vec![
            s("tcp://127.0.0.1:7400"),
            s("http://127.0.0.1:9464/metrics"),
        ],
        connections: 3,
        subscriptions: 5,
        queues: 2,
        store_bytes: 1_048_576,
        sync: s("interval:100ms"),
        messages_in: 1000,
        messages_out: 2500,
    }
}

/// One or more representative values of every [`Frame`] variant.
pub(crate) fn samples() -> Vec<Frame> {
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    vec![
        // HELLO: no credentials, password, token; an empty name is allowed.
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            name: s("cli"),
            credentials: None,
        }),
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            name: s("demo"),
            credentials: Some(Credentials::Password {
                user: s("alice"),
                password: s("s3cret"),
            }),
        }),
        Frame::Hello(Hello {
            version: 2,
            name: s(""),
            credentials: Some(Credentials::Token(s("tok-\u{e9}\u{20ac}"))),
        }),
        Frame::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            server_id: s("tern-1"),
            server_version: s("0.1.0"),
            connection_id: 42,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        }),
        Frame::Welcome(Welcome {
            version: u16::MAX,
            server_id: s(""),
            server_version: s(""),
            connection_id: u64::MAX,
            max_frame_size: MAX_FRAME_SIZE_LIMIT,
        }),
        Frame::Ping(Ping { id: 0 }),
        Frame::Ping(Ping { id: u32::MAX }),
        Frame::Pong(Pong { id: 1 }),
        Frame::Ok(Ok { id: 7 }),
        Frame::Error(ErrorFrame::new(3, ErrorCode::InvalidSubject, "bad subject")),
        // A code this version does not know and an empty message still decode.
        Frame::Error(ErrorFrame {
            id: 0,
            raw_code: 9999,
            message: s(""),
        }),
        // PUBLISH: qos 0 with id 0 (no OK wanted), nothing optional, empty payload.
        publish(0, Qos::AtMostOnce, envelope("a", None, Headers::new(), b"")),
        // qos 1 with reply_to, one header, a small payload.
        publish(
            2,
            Qos::AtLeastOnce,
            envelope("orders.new", Some("inbox.1"), headers(&[("k", "v")]), b"hi"),
        ),
        // qos 2, repeated header keys, empty key and value, every byte value in the
        // payload, non-ASCII subject.
        publish(
            u32::MAX,
            Qos::ExactlyOnce,
            envelope(
                "sensors.k\u{fc}che.temp",
                None,
                headers(&[("trace", "1"), ("x", ""), ("trace", "2"), ("", "empty-key")]),
                &all_bytes,
            ),
        ),
        publish(
            9,
            Qos::AtMostOnce,
            envelope("a.b.c", Some("_INBOX.xyz"), Headers::new(), b"\0"),
        ),
        // MESSAGE: with and without reply_to and headers.
        Frame::Message(Message {
            sid: 1,
            envelope: envelope("orders.new", Some("inbox.1"), headers(&[("k", "v")]), b"hi"),
        }),
        Frame::Message(Message {
            sid: u32::MAX,
            envelope: envelope("x", None, Headers::new(), b""),
        }),
        Frame::Message(Message {
            sid: 0,
            envelope: envelope("x.y", None, headers(&[("a", "1"), ("a", "2")]), &[0xff; 40]),
        }),
        // SUBSCRIBE: with and without group and filter.
        Frame::Subscribe(Subscribe {
            id: 1,
            sid: 1,
            pattern: s("orders.*"),
            group: None,
            filter: None,
        }),
        Frame::Subscribe(Subscribe {
            id: 4,
            sid: 2,
            pattern: s("orders.>"),
            group: Some(s("workers")),
            filter: None,
        }),
        Frame::Subscribe(Subscribe {
            id: 5,
            sid: 3,
            pattern: s(">"),
            group: None,
            filter: Some(s("amount > 100")),
        }),
        Frame::Subscribe(Subscribe {
            id: 6,
            sid: 4,
            pattern: s("a.*.c"),
            group: Some(s("g")),
            filter: Some(s("f")),
        }),
        Frame::Unsubscribe(Unsubscribe { id: 8, sid: 2 }),
        // PUBLISH flag combinations (no flags is above): MANDATORY alone, with id 0;
        // IDEMPOTENT alone; both; IDEMPOTENT with an empty producer id, the largest
        // sequence and QoS 0 (the codec does not tie flags to a QoS).
        publish_with(
            0,
            Qos::AtMostOnce,
            true,
            None,
            envelope("orders.new", None, Headers::new(), b"m"),
        ),
        publish_with(
            3,
            Qos::AtLeastOnce,
            false,
            Some(("shop-1", 0)),
            envelope("orders.new", Some("inbox.2"), headers(&[("k", "v")]), b"i"),
        ),
        publish_with(
            4,
            Qos::ExactlyOnce,
            true,
            Some(("producer-\u{e9}", 1)),
            envelope("a.b", None, headers(&[("x", "1"), ("x", "2")]), &all_bytes),
        ),
        publish_with(
            0,
            Qos::AtMostOnce,
            false,
            Some(("", u64::MAX)),
            envelope("z", None, Headers::new(), b""),
        ),
        // DONE: zero, largest, and a typical count.
        Frame::Done(Done { id: 0, count: 0 }),
        Frame::Done(Done {
            id: u32::MAX,
            count: u64::MAX,
        }),
        Frame::Done(Done { id: 11, count: 1 }),
        // CONFIRM with and without DUPLICATE.
        Frame::Confirm(Confirm {
            id: 2,
            queues: 0,
            duplicate: false,
        }),
        Frame::Confirm(Confirm {
            id: u32::MAX,
            queues: u16::MAX,
            duplicate: true,
        }),
        Frame::Confirm(Confirm {
            id: 7,
            queues: 3,
            duplicate: false,
        }),
        // CONSUME in every mode, with and without a name.
        Frame::Consume(Consume {
            id: 1,
            cid: 1,
            queue: s("orders"),
            prefetch: 1,
            mode: AckMode::Manual,
            name: None,
        }),
        Frame::Consume(Consume {
            id: 2,
            cid: u32::MAX,
            queue: s("q"),
            prefetch: u32::MAX,
            mode: AckMode::Auto,
            name: Some(s("auditor")),
        }),
        Frame::Consume(Consume {
            id: 3,
            cid: 0,
            queue: s("billing.in"),
            prefetch: 10,
            mode: AckMode::ExactlyOnce,
            name: Some(s("billing")),
        }),
        // Values the server refuses (prefetch 0, exactly-once without a name, an empty
        // queue name) still have a wire form.
        Frame::Consume(Consume {
            id: 0,
            cid: 9,
            queue: s(""),
            prefetch: 0,
            mode: AckMode::ExactlyOnce,
            name: None,
        }),
        // DELIVERY: first attempt, and a redelivery to an exactly-once consumer that
        // had sent RECEIVED before.
        delivery(
            DeliveryHead {
                cid: 1,
                delivery_id: 1,
                seq: 0,
                delivery_count: 1,
                received_before: false,
            },
            envelope("orders.new", None, Headers::new(), b""),
        ),
        delivery(
            DeliveryHead {
                cid: u32::MAX,
                delivery_id: u64::MAX,
                seq: u64::MAX,
                delivery_count: u32::MAX,
                received_before: true,
            },
            envelope(
                "orders.new",
                Some("inbox.1"),
                headers(&[("tern-delivery-count", "7"), ("k", "")]),
                &all_bytes,
            ),
        ),
        // ACK, RECEIVED (same layout), NACK with and without requeue, CANCEL.
        Frame::Ack(Ack {
            id: 14,
            cid: 3,
            delivery_id: 9,
        }),
        Frame::Ack(Ack {
            id: 0,
            cid: u32::MAX,
            delivery_id: u64::MAX,
        }),
        Frame::Received(Received {
            id: 13,
            cid: 3,
            delivery_id: 9,
        }),
        Frame::Received(Received {
            id: 0,
            cid: 0,
            delivery_id: 0,
        }),
        Frame::Nack(Nack {
            id: 8,
            cid: 3,
            delivery_id: 9,
            requeue: true,
            delay_ms: 1000,
        }),
        Frame::Nack(Nack {
            id: 0,
            cid: 1,
            delivery_id: u64::MAX,
            requeue: false,
            delay_ms: 0,
        }),
        Frame::Nack(Nack {
            id: u32::MAX,
            cid: u32::MAX,
            delivery_id: 2,
            requeue: true,
            delay_ms: u32::MAX,
        }),
        Frame::Cancel(Cancel { id: 15, cid: 3 }),
        Frame::Cancel(Cancel {
            id: 0,
            cid: u32::MAX,
        }),
        Frame::Credit(Credit { cid: 3, credit: 8 }),
        Frame::Credit(Credit {
            cid: u32::MAX,
            credit: u32::MAX,
        }),
        // QUEUE_DECLARE: no bindings and default options; two bindings (one filtered)
        // and every option set; drop-head with a dead-letter queue.
        Frame::QueueDeclare(QueueDeclare {
            id: 1,
            name: s("q"),
            bindings: Vec::new(),
            options: QueueOptions::default(),
        }),
        Frame::QueueDeclare(QueueDeclare {
            id: 10,
            name: s("orders"),
            bindings: vec![
                binding("orders.*", None),
                binding("returns.>", Some("amount > 100")),
            ],
            options: full_options(),
        }),
        Frame::QueueDeclare(QueueDeclare {
            id: u32::MAX,
            name: s("a-b_c.d"),
            bindings: vec![binding(">", Some("f")), binding("x", None)],
            options: QueueOptions {
                max_deliver: u32::MAX,
                ack_timeout_ms: u32::MAX,
                dead_letter: Some(s("dlq")),
                ttl_ms: u64::MAX,
                max_length: u64::MAX,
                overflow: Overflow::DropHead,
            },
        }),
        // QUEUE_INFO: zero counters, largest counters.
        Frame::QueueInfo(QueueInfo {
            id: 0,
            name: s("q"),
            bindings: Vec::new(),
            options: QueueOptions::default(),
            stats: QueueStats::default(),
        }),
        Frame::QueueInfo(QueueInfo {
            id: 10,
            name: s("orders"),
            bindings: vec![
                binding("orders.*", None),
                binding("returns.>", Some("amount > 100")),
            ],
            options: full_options(),
            stats: max_stats(),
        }),
        Frame::QueueDelete(QueueDelete {
            id: 18,
            name: s("orders"),
        }),
        // QUEUE_QUERY for one queue, and for every queue (empty name).
        Frame::QueueQuery(QueueQuery {
            id: 11,
            name: s("orders"),
        }),
        Frame::QueueQuery(QueueQuery {
            id: 12,
            name: s(""),
        }),
        Frame::QueuePurge(QueuePurge {
            id: 16,
            name: s("orders"),
        }),
        Frame::QueueMove(QueueMove {
            id: 17,
            from: s("orders.dlq"),
            to: s("orders"),
            max: 0,
        }),
        Frame::QueueMove(QueueMove {
            id: u32::MAX,
            from: s("a"),
            to: s("b"),
            max: u64::MAX,
        }),
        // SERVER_QUERY: any id.
        Frame::ServerQuery(ServerQuery { id: 19 }),
        Frame::ServerQuery(ServerQuery { id: 0 }),
        // SERVER_INFO: two listeners; no listeners, empty strings and zero counters (a
        // server that has just started); one listener, largest values, non-ASCII text.
        Frame::ServerInfo(server_info(19)),
        Frame::ServerInfo(ServerInfo {
            id: 0,
            server_id: s(""),
            version: s(""),
            uptime_ms: 0,
            listeners: Vec::new(),
            connections: 0,
            subscriptions: 0,
            queues: 0,
            store_bytes: 0,
            sync: s(""),
            messages_in: 0,
            messages_out: 0,
        }),
        Frame::ServerInfo(ServerInfo {
            id: u32::MAX,
            server_id: s("n\u{f6}rd-\u{20ac}"),
            version: s("1.2.3-rc.1+build.5"),
            uptime_ms: u64::MAX,
            listeners: vec![s("tcp://[::1]:7400")],
            connections: u64::MAX,
            subscriptions: u64::MAX - 1,
            queues: u64::MAX - 2,
            store_bytes: u64::MAX - 3,
            sync: s("always"),
            messages_in: u64::MAX - 4,
            messages_out: u64::MAX - 5,
        }),
        // CLUSTER_QUERY, CLUSTER_INFO (alone: no members; a voter with a client
        // address and a learner without), CLUSTER_CHANGE (add, remove).
        Frame::ClusterQuery(ClusterQuery { id: 20 }),
        Frame::ClusterInfo(ClusterInfo {
            id: 20,
            node_id: 0,
            term: 0,
            leader: 0,
            members: Vec::new(),
        }),
        Frame::ClusterInfo(ClusterInfo {
            id: u32::MAX,
            node_id: 2,
            term: u64::MAX,
            leader: 1,
            members: vec![
                Member {
                    node_id: 1,
                    peer_addr: s("10.0.0.1:7501"),
                    client_addr: Some(s("10.0.0.1:7400")),
                    role: MemberRole::Voter,
                    lag: 0,
                },
                Member {
                    node_id: u64::MAX,
                    peer_addr: s(""),
                    client_addr: None,
                    role: MemberRole::Learner,
                    lag: u64::MAX,
                },
            ],
        }),
        Frame::ClusterChange(ClusterChange {
            id: 21,
            op: ClusterOp::Add {
                node_id: 4,
                peer_addr: s("127.0.0.1:7504"),
            },
        }),
        Frame::ClusterChange(ClusterChange {
            id: 22,
            op: ClusterOp::Remove { node_id: 3 },
        }),
        // QUEUE_CREATE: the cluster's default, and three replicas.
        Frame::QueueCreate(QueueCreate {
            declare: QueueDeclare {
                id: 24,
                name: s("q"),
                bindings: Vec::new(),
                options: QueueOptions::default(),
            },
            replicas: 0,
        }),
        Frame::QueueCreate(QueueCreate {
            declare: QueueDeclare {
                id: u32::MAX,
                name: s("orders"),
                bindings: vec![Binding {
                    pattern: s("orders.>"),
                    filter: Some(s("amount > 100")),
                }],
                options: QueueOptions {
                    dead_letter: Some(s("orders.dlq")),
                    ..QueueOptions::default()
                },
            },
            replicas: 3,
        }),
        // GROUPS_QUERY, GROUPS_INFO (alone: none; two groups, one without a leader
        // known and with no queue).
        Frame::GroupsQuery(GroupsQuery { id: 23 }),
        Frame::GroupsInfo(GroupsInfo {
            id: 23,
            groups: Vec::new(),
        }),
        Frame::GroupsInfo(GroupsInfo {
            id: u32::MAX,
            groups: vec![
                GroupInfo {
                    group: 1,
                    leader: 0,
                    members: vec![1, 2, 3, 4, 5],
                    queues: Vec::new(),
                },
                GroupInfo {
                    group: u64::MAX,
                    leader: 3,
                    members: vec![3, 4, 5],
                    queues: vec![s("orders"), s("orders.dlq")],
                },
            ],
        }),
    ]
}

fn encode(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf).unwrap();
    buf
}

fn decode_default(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    Frame::decode(buf, DEFAULT_MAX_FRAME_SIZE)
}

/// Decodes one frame from exactly `bytes`, asserting it consumed all of them.
fn decode_all(bytes: &[u8]) -> Result<Option<Frame>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let res = decode_default(&mut buf);
    if matches!(res, Result::Ok(Some(_))) {
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
    }
    res
}

/// Decodes every whole frame in `buf`, panicking on a decode error.
fn drain(buf: &mut BytesMut, out: &mut Vec<Frame>) {
    while let Some(f) = decode_default(buf).unwrap() {
        out.push(f);
    }
}

/// Writes a new length prefix into an encoded frame.
fn set_len(bytes: &mut [u8], len: u32) {
    bytes[..4].copy_from_slice(&len.to_be_bytes());
}

/// The payload of a frame that carries an envelope.
fn payload_of(frame: &Frame) -> Option<&Bytes> {
    match frame {
        Frame::Publish(p) => Some(&p.envelope.payload),
        Frame::Message(m) => Some(&m.envelope.payload),
        Frame::Delivery(d) => Some(&d.envelope.payload),
        _ => None,
    }
}

fn with_payload(frame: &Frame, payload: Bytes) -> Frame {
    let mut f = frame.clone();
    match &mut f {
        Frame::Publish(p) => p.envelope.payload = payload,
        Frame::Message(m) => m.envelope.payload = payload,
        Frame::Delivery(d) => d.envelope.payload = payload,
        _ => panic!("{frame:?} has no payload"),
    }
    f
}

#[test]
fn samples_cover_every_frame_type() {
    let samples = samples();
    for (t, name) in crate::codes::FRAME_TYPES {
        assert!(
            samples.iter().any(|f| f.frame_type() == *t),
            "no sample of {name}"
        );
    }
}

/// Every flag bit and every enumerated value appears in the samples, both ways, so the
/// round-trip, truncation and trailing-byte tests see each of them.
#[test]
fn samples_cover_every_flag_and_mode() {
    let samples = samples();
    for mandatory in [false, true] {
        for idempotent in [false, true] {
            assert!(
                samples.iter().any(|f| matches!(f, Frame::Publish(p)
                    if p.mandatory == mandatory && p.producer.is_some() == idempotent)),
                "no PUBLISH with mandatory={mandatory} idempotent={idempotent}"
            );
        }
    }
    for qos in [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce] {
        assert!(samples
            .iter()
            .any(|f| matches!(f, Frame::Publish(p) if p.qos == qos)));
    }
    for flag in [false, true] {
        assert!(samples
            .iter()
            .any(|f| matches!(f, Frame::Confirm(c) if c.duplicate == flag)));
        assert!(samples
            .iter()
            .any(|f| matches!(f, Frame::Delivery(d) if d.head.received_before == flag)));
        assert!(samples
            .iter()
            .any(|f| matches!(f, Frame::Nack(n) if n.requeue == flag)));
        assert!(samples
            .iter()
            .any(|f| matches!(f, Frame::Consume(c) if c.name.is_some() == flag)));
    }
    for mode in [AckMode::Manual, AckMode::Auto, AckMode::ExactlyOnce] {
        assert!(samples
            .iter()
            .any(|f| matches!(f, Frame::Consume(c) if c.mode == mode)));
    }
    for overflow in [Overflow::DropHead, Overflow::Reject] {
        assert!(samples
            .iter()
            .any(|f| matches!(f, Frame::QueueDeclare(q) if q.options.overflow == overflow)));
    }
    // A declare with a filtered and an unfiltered binding, and one with no bindings.
    assert!(samples.iter().any(|f| matches!(f, Frame::QueueDeclare(q)
        if q.bindings.iter().any(|b| b.filter.is_some())
            && q.bindings.iter().any(|b| b.filter.is_none()))));
    assert!(samples
        .iter()
        .any(|f| matches!(f, Frame::QueueDeclare(q) if q.bindings.is_empty())));
    // SERVER_INFO with no listener, one, and several.
    for n in [0, 1, 2] {
        assert!(samples
            .iter()
            .any(|f| matches!(f, Frame::ServerInfo(i) if i.listeners.len() == n)));
    }
}

// ---------------------------------------------------------------------------------------
// Round trip
// ---------------------------------------------------------------------------------------

#[test]
fn every_sample_round_trips() {
    for frame in samples() {
        let mut buf = encode(&frame);
        assert_eq!(frame.encoded_len(), buf.len(), "encoded_len of {frame:?}");
        assert_eq!(buf[4], frame.frame_type() as u8, "type byte of {frame:?}");
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        assert_eq!(len as usize, buf.len() - 4, "length prefix of {frame:?}");

        let decoded = decode_default(&mut buf).unwrap().unwrap();
        assert_eq!(decoded, frame);
        assert!(buf.is_empty(), "{frame:?} left {} bytes", buf.len());
    }
}

#[test]
fn inner_types_encode_like_the_frame() {
    for frame in samples() {
        let whole = encode(&frame);
        let mut inner = BytesMut::new();
        // Each inner type encodes on its own, and `From` wraps it in the right variant.
        macro_rules! inner {
            ($f:expr) => {
                (
                    $f.encode(&mut inner).map(|()| $f.encoded_len()),
                    Frame::from($f.to_owned()),
                )
            };
        }
        let (inner_len, wrapped) = match &frame {
            Frame::Hello(f) => inner!(f),
            Frame::Welcome(f) => inner!(f),
            Frame::Ping(f) => inner!(f),
            Frame::Pong(f) => inner!(f),
            Frame::Ok(f) => inner!(f),
            Frame::Error(f) => inner!(f),
            Frame::Publish(f) => inner!(f),
            Frame::Message(f) => inner!(f),
            Frame::Subscribe(f) => inner!(f),
            Frame::Unsubscribe(f) => inner!(f),
            Frame::Done(f) => inner!(f),
            Frame::Confirm(f) => inner!(f),
            Frame::Consume(f) => inner!(f),
            Frame::Delivery(f) => inner!(f),
            Frame::Ack(f) => inner!(f),
            Frame::Nack(f) => inner!(f),
            Frame::Received(f) => inner!(f),
            Frame::Cancel(f) => inner!(f),
            Frame::Credit(f) => inner!(f),
            Frame::QueueDeclare(f) => inner!(f),
            Frame::QueueDelete(f) => inner!(f),
            Frame::QueueQuery(f) => inner!(f),
            Frame::QueueInfo(f) => inner!(f),
            Frame::QueuePurge(f) => inner!(f),
            Frame::QueueMove(f) => inner!(f),
            Frame::ServerQuery(f) => inner!(f),
            Frame::ServerInfo(f) => inner!(f),
            Frame::ClusterQuery(f) => inner!(f),
            Frame::ClusterInfo(f) => inner!(f),
            Frame::ClusterChange(f) => inner!(f),
            Frame::GroupsQuery(f) => inner!(f),
            Frame::GroupsInfo(f) => inner!(f),
            Frame::QueueCreate(f) => inner!(f),
        };
        assert_eq!(inner, whole, "{frame:?}");
        assert_eq!(inner_len.unwrap(), whole.len());
        assert_eq!(wrapped, frame);
    }
}

#[test]
fn encode_appends_after_existing_bytes() {
    let mut buf = BytesMut::from(&b"already here"[..]);
    let mut want = buf.clone();
    for frame in samples() {
        frame.encode(&mut buf).unwrap();
        want.extend_from_slice(&encode(&frame));
    }
    assert_eq!(buf, want);
}

#[test]
fn encode_parts_matches_the_owned_frames() {
    let mut envelopes: Vec<Envelope> = Vec::new();
    let mut publishes: Vec<Publish> = Vec::new();
    let mut delivery_heads: Vec<DeliveryHead> = Vec::new();
    for frame in samples() {
        match frame {
            Frame::Message(m) => envelopes.push(m.envelope),
            Frame::Publish(p) => {
                envelopes.push(p.envelope.clone());
                publishes.push(p);
            }
            Frame::Delivery(d) => {
                envelopes.push(d.envelope);
                delivery_heads.push(d.head);
            }
            _ => {}
        }
    }
    assert!(envelopes.len() > 4);
    // Every PUBLISH head (each flag combination) and every DELIVERY head, with every
    // envelope.
    assert!(publishes.len() >= 4 && delivery_heads.len() >= 2);
    for (n, envelope) in (0u32..).zip(&envelopes) {
        let want = encode(&Frame::Message(Message {
            sid: n,
            envelope: envelope.clone(),
        }));
        let mut got = BytesMut::from(&b"prefix"[..]);
        Message::encode_parts(n, envelope.as_ref(), &mut got).unwrap();
        assert_eq!(&got[..6], b"prefix");
        assert_eq!(&got[6..], &want[..], "sid {n} {envelope:?}");
        assert_eq!(Message::parts_len(envelope.as_ref()), want.len());

        // The envelope on its own is the tail of the MESSAGE, and decodes back alone
        // (a store keeps envelopes in this form).
        let mut raw = BytesMut::new();
        envelope.as_ref().encode(&mut raw).unwrap();
        assert_eq!(raw.len(), envelope.as_ref().encoded_len());
        assert_eq!(&raw[..], &want[FRAME_HEADER_LEN + 4 + 1..]);
        let raw = raw.freeze();
        assert_eq!(
            Envelope::decode_bytes(raw.clone()).as_ref(),
            Result::Ok(envelope)
        );

        for p in &publishes {
            let owned = Publish {
                envelope: envelope.clone(),
                ..p.clone()
            };
            let want = encode(&Frame::Publish(owned.clone()));
            let mut got = BytesMut::from(&b"prefix"[..]);
            Publish::encode_parts(&p.head(), envelope.as_ref(), &mut got).unwrap();
            assert_eq!(&got[..6], b"prefix");
            assert_eq!(&got[6..], &want[..], "{owned:?}");
            assert_eq!(Publish::parts_len(&p.head(), envelope.as_ref()), want.len());
            assert_eq!(owned.head(), p.head());
        }

        for head in &delivery_heads {
            let want = encode(&delivery(*head, envelope.clone()));
            let mut got = BytesMut::from(&b"prefix"[..]);
            Delivery::encode_parts(head, envelope.as_ref(), &mut got).unwrap();
            assert_eq!(&got[..6], b"prefix");
            assert_eq!(&got[6..], &want[..], "{head:?} {envelope:?}");
            assert_eq!(Delivery::parts_len(envelope.as_ref()), want.len());
            // From the envelope in wire form, as a store keeps it.
            let mut got = BytesMut::from(&b"prefix"[..]);
            Delivery::encode_wire(head, &raw, &mut got).unwrap();
            assert_eq!(&got[..6], b"prefix");
            assert_eq!(&got[6..], &want[..], "{head:?} {envelope:?}");
            assert_eq!(Delivery::wire_len(&raw), want.len());
        }
    }
}

#[test]
fn publish_head_borrows_the_producer() {
    let p = Publish {
        id: 7,
        qos: Qos::ExactlyOnce,
        mandatory: true,
        producer: Some(ProducerSeq {
            producer: s("shop-1"),
            sequence: 5,
        }),
        envelope: envelope("a", None, Headers::new(), b""),
    };
    assert_eq!(
        p.head(),
        PublishHead {
            id: 7,
            qos: Qos::ExactlyOnce,
            mandatory: true,
            producer: Some(("shop-1", 5)),
        }
    );
    let plain = Publish {
        mandatory: false,
        producer: None,
        ..p
    };
    assert_eq!(plain.head().producer, None);
    assert!(!plain.head().mandatory);
}

#[test]
fn encode_parts_from_plain_borrowed_values() {
    // A publisher's own `&str` and `&[u8]`, no ByteString or Bytes built first.
    let subject = String::from("orders.new");
    let payload = vec![b'h', b'i'];
    let h = headers(&[("k", "v")]);
    let parts = EnvelopeRef {
        subject: &subject,
        reply_to: Some("inbox.1"),
        headers: &h,
        payload: &payload,
    };
    let head = PublishHead {
        id: 2,
        qos: Qos::AtMostOnce,
        mandatory: false,
        producer: None,
    };
    let mut buf = BytesMut::new();
    Publish::encode_parts(&head, parts, &mut buf).unwrap();
    assert_eq!(&buf[..], GOLDEN_PUBLISH);
    let mut buf = BytesMut::new();
    Message::encode_parts(1, parts, &mut buf).unwrap();
    assert_eq!(&buf[..], GOLDEN_MESSAGE);

    // The producer id is borrowed too.
    let producer = String::from("shop-1");
    let no_headers = Headers::new();
    let parts = EnvelopeRef {
        subject: &subject,
        reply_to: None,
        headers: &no_headers,
        payload: &payload,
    };
    let head = PublishHead {
        id: 7,
        qos: Qos::ExactlyOnce,
        mandatory: true,
        producer: Some((&producer, 5)),
    };
    let mut buf = BytesMut::new();
    Publish::encode_parts(&head, parts, &mut buf).unwrap();
    assert_eq!(&buf[..], GOLDEN_PUBLISH_IDEMPOTENT);

    let head = DeliveryHead {
        cid: 3,
        delivery_id: 9,
        seq: 42,
        delivery_count: 2,
        received_before: true,
    };
    let parts = EnvelopeRef {
        subject: &subject,
        reply_to: None,
        headers: &h,
        payload: &payload,
    };
    let mut buf = BytesMut::new();
    Delivery::encode_parts(&head, parts, &mut buf).unwrap();
    assert_eq!(&buf[..], GOLDEN_DELIVERY);
}

#[test]
fn frames_from_constructors() {
    assert_eq!(Frame::from(Ping { id: 1 }), Frame::Ping(Ping { id: 1 }));
    let e = ErrorFrame::new(1, ErrorCode::Internal, "x");
    assert_eq!(Frame::from(e.clone()), Frame::Error(e.clone()));
    assert_eq!(e.code(), Some(ErrorCode::Internal));
    let unknown = ErrorFrame {
        id: 0,
        raw_code: 9999,
        message: s(""),
    };
    assert_eq!(unknown.code(), None);
    assert_eq!(Qos::from_u8(0), Some(Qos::AtMostOnce));
    assert_eq!(Qos::from_u8(1), Some(Qos::AtLeastOnce));
    assert_eq!(Qos::from_u8(2), Some(Qos::ExactlyOnce));
    assert_eq!(Qos::from_u8(3), None);
    assert_eq!(Qos::from_u8(u8::MAX), None);
    for (n, mode) in [
        (0u8, AckMode::Manual),
        (1, AckMode::Auto),
        (2, AckMode::ExactlyOnce),
    ] {
        assert_eq!(AckMode::from_u8(n), Some(mode));
        assert_eq!(mode as u8, n);
    }
    assert_eq!(AckMode::from_u8(3), None);
    assert_eq!(AckMode::default(), AckMode::Manual);
    assert_eq!(Overflow::DropHead as u8, 0);
    assert_eq!(Overflow::Reject as u8, 1);
    assert_eq!(Overflow::default(), Overflow::DropHead);
    assert_eq!(Qos::default(), Qos::AtMostOnce);
}

// ---------------------------------------------------------------------------------------
// Golden bytes. Written by hand from the layouts; PROTOCOL.md's worked example quotes
// them. Do not regenerate them from the encoder.
// ---------------------------------------------------------------------------------------

/// HELLO version 1, name "demo", password credentials alice / s3cret.
pub(crate) const GOLDEN_HELLO: &[u8] = &[
    0x00, 0x00, 0x00, 0x19, // length 25 = type + 24 body bytes
    0x01, // HELLO
    0x00, 0x01, // version 1
    0x00, 0x04, b'd', b'e', b'm', b'o', // name
    0x01, // auth 1 = password
    0x00, 0x05, b'a', b'l', b'i', b'c', b'e', // user
    0x00, 0x06, b's', b'3', b'c', b'r', b'e', b't', // password
];

/// WELCOME version 1, server_id "tern-1", server_version "0.1.0", connection 42,
/// max frame size 1 MiB.
pub(crate) const GOLDEN_WELCOME: &[u8] = &[
    0x00, 0x00, 0x00, 0x1e, // length 30
    0x02, // WELCOME
    0x00, 0x01, // version 1
    0x00, 0x06, b't', b'e', b'r', b'n', b'-', b'1', // server_id
    0x00, 0x05, b'0', b'.', b'1', b'.', b'0', // server_version
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, // connection_id 42
    0x00, 0x10, 0x00, 0x00, // max_frame_size 1048576
];

/// SUBSCRIBE id 1, sid 1, pattern "orders.*", no group, no filter.
pub(crate) const GOLDEN_SUBSCRIBE: &[u8] = &[
    0x00, 0x00, 0x00, 0x17, // length 23
    0x12, // SUBSCRIBE
    0x00, 0x00, 0x00, 0x01, // id 1
    0x00, 0x00, 0x00, 0x01, // sid 1
    0x00, 0x08, b'o', b'r', b'd', b'e', b'r', b's', b'.', b'*', // pattern
    0x00, 0x00, // group: absent
    0x00, 0x00, // filter: absent
];

/// OK id 1.
pub(crate) const GOLDEN_OK_1: &[u8] = &[0x00, 0x00, 0x00, 0x05, 0x05, 0x00, 0x00, 0x00, 0x01];

/// PUBLISH id 2, qos 0, subject "orders.new", reply_to "inbox.1", header k=v,
/// payload "hi".
pub(crate) const GOLDEN_PUBLISH: &[u8] = &[
    0x00, 0x00, 0x00, 0x26, // length 38
    0x10, // PUBLISH
    0x00, 0x00, 0x00, 0x02, // id 2
    0x00, // qos 0
    0x00, // flags
    0x00, 0x0a, b'o', b'r', b'd', b'e', b'r', b's', b'.', b'n', b'e', b'w', // subject
    0x00, 0x07, b'i', b'n', b'b', b'o', b'x', b'.', b'1', // reply_to
    0x00, 0x01, // header count 1
    0x00, 0x01, b'k', // key
    0x00, 0x01, b'v', // value
    b'h', b'i', // payload: the rest of the frame
];

/// OK id 2.
pub(crate) const GOLDEN_OK_2: &[u8] = &[0x00, 0x00, 0x00, 0x05, 0x05, 0x00, 0x00, 0x00, 0x02];

/// MESSAGE sid 1 carrying the envelope of [`GOLDEN_PUBLISH`].
pub(crate) const GOLDEN_MESSAGE: &[u8] = &[
    0x00, 0x00, 0x00, 0x25, // length 37
    0x11, // MESSAGE
    0x00, 0x00, 0x00, 0x01, // sid 1
    0x00, // flags
    0x00, 0x0a, b'o', b'r', b'd', b'e', b'r', b's', b'.', b'n', b'e', b'w', // subject
    0x00, 0x07, b'i', b'n', b'b', b'o', b'x', b'.', b'1', // reply_to
    0x00, 0x01, // header count 1
    0x00, 0x01, b'k', // key
    0x00, 0x01, b'v', // value
    b'h', b'i', // payload
];

/// ERROR id 3, code 100 (invalid_subject), message "bad subject".
pub(crate) const GOLDEN_ERROR: &[u8] = &[
    0x00, 0x00, 0x00, 0x14, // length 20
    0x06, // ERROR
    0x00, 0x00, 0x00, 0x03, // id 3
    0x00, 0x64, // code 100
    0x00, 0x0b, b'b', b'a', b'd', b' ', b's', b'u', b'b', b'j', b'e', b'c', b't', // message
];

/// PUBLISH id 3, qos 0, subject "orders.*" (not a literal subject: the server answers
/// [`GOLDEN_ERROR`]), no reply_to, no headers, empty payload.
pub(crate) const GOLDEN_PUBLISH_BAD_SUBJECT: &[u8] = &[
    0x00, 0x00, 0x00, 0x15, // length 21
    0x10, // PUBLISH
    0x00, 0x00, 0x00, 0x03, // id 3
    0x00, // qos 0
    0x00, // flags
    0x00, 0x08, b'o', b'r', b'd', b'e', b'r', b's', b'.', b'*', // subject
    0x00, 0x00, // reply_to: absent
    0x00, 0x00, // header count 0; no payload bytes follow
];

/// UNSUBSCRIBE id 4, sid 1.
pub(crate) const GOLDEN_UNSUBSCRIBE: &[u8] = &[
    0x00, 0x00, 0x00, 0x09, // length 9
    0x13, // UNSUBSCRIBE
    0x00, 0x00, 0x00, 0x04, // id 4
    0x00, 0x00, 0x00, 0x01, // sid 1
];

/// OK id 4.
pub(crate) const GOLDEN_OK_4: &[u8] = &[0x00, 0x00, 0x00, 0x05, 0x05, 0x00, 0x00, 0x00, 0x04];

/// PING id 5 and its PONG.
pub(crate) const GOLDEN_PING_5: &[u8] = &[0x00, 0x00, 0x00, 0x05, 0x03, 0x00, 0x00, 0x00, 0x05];
pub(crate) const GOLDEN_PONG_5: &[u8] = &[0x00, 0x00, 0x00, 0x05, 0x04, 0x00, 0x00, 0x00, 0x05];

// The frames for durable queues, one session's worth: declare a queue, publish to it
// exactly once, consume it exactly once, administer it. PROTOCOL.md section 6 quotes
// several of them.

/// QUEUE_DECLARE id 10, queue "orders" bound to "orders.*" and to "returns.>" with the
/// filter "amount > 100"; max_deliver 5, ack timeout 30 s, dead letters to
/// "orders.dlq", ttl one day, at most 10000 messages, overflow reject.
pub(crate) const GOLDEN_QUEUE_DECLARE: &[u8] = &[
    0x00, 0x00, 0x00, 0x59, // length 89
    0x40, // QUEUE_DECLARE
    0x00, 0x00, 0x00, 0x0a, // id 10
    0x00, 0x06, b'o', b'r', b'd', b'e', b'r', b's', // name
    0x00, 0x02, // binding count 2
    0x00, 0x08, b'o', b'r', b'd', b'e', b'r', b's', b'.', b'*', // pattern
    0x00, 0x00, // filter: absent
    0x00, 0x09, b'r', b'e', b't', b'u', b'r', b'n', b's', b'.', b'>', // pattern
    0x00, 0x0c, b'a', b'm', b'o', b'u', b'n', b't', b' ', b'>', b' ', b'1', b'0',
    b'0', // filter
    0x00, 0x00, 0x00, 0x05, // max_deliver 5
    0x00, 0x00, 0x75, 0x30, // ack_timeout_ms 30000
    0x00, 0x0a, b'o', b'r', b'd', b'e', b'r', b's', b'.', b'd', b'l', b'q', // dead_letter
    0x00, 0x00, 0x00, 0x00, 0x05, 0x26, 0x5c, 0x00, // ttl_ms 86400000
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x27, 0x10, // max_length 10000
    0x01, // overflow 1 = reject
];

/// QUEUE_QUERY id 11 for the queue "orders".
pub(crate) const GOLDEN_QUEUE_QUERY: &[u8] = &[
    0x00, 0x00, 0x00, 0x0d, // length 13
    0x42, // QUEUE_QUERY
    0x00, 0x00, 0x00, 0x0b, // id 11
    0x00, 0x06, b'o', b'r', b'd', b'e', b'r', b's', // name
];

/// QUEUE_INFO id 11 (answering [`GOLDEN_QUEUE_QUERY`]): queue "orders" bound to
/// "orders.*", max_deliver 5, ack timeout 30 s, dead letters to "orders.dlq", no ttl, no
/// length limit, overflow drop-head; 3 ready, 1 unacked, 2 consumers, 10 published,
/// 8 delivered, 6 acked, 1 redelivered, 1 dead-lettered, none expired or dropped.
pub(crate) const GOLDEN_QUEUE_INFO: &[u8] = &[
    0x00, 0x00, 0x00, 0x8c, // length 140
    0x43, // QUEUE_INFO
    0x00, 0x00, 0x00, 0x0b, // id 11
    0x00, 0x06, b'o', b'r', b'd', b'e', b'r', b's', // name
    0x00, 0x01, // binding count 1
    0x00, 0x08, b'o', b'r', b'd', b'e', b'r', b's', b'.', b'*', // pattern
    0x00, 0x00, // filter: absent
    0x00, 0x00, 0x00, 0x05, // max_deliver 5
    0x00, 0x00, 0x75, 0x30, // ack_timeout_ms 30000
    0x00, 0x0a, b'o', b'r', b'd', b'e', b'r', b's', b'.', b'd', b'l', b'q', // dead_letter
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // ttl_ms 0 = none
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // max_length 0 = none
    0x00, // overflow 0 = drop-head
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, // ready 3
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // unacked 1
    0x00, 0x00, 0x00, 0x02, // consumers 2
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, // published 10
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, // delivered 8
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, // acked 6
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // redelivered 1
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // dead_lettered 1
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // expired 0
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // dropped 0
];

/// DONE id 11, count 1: the end of the answer to [`GOLDEN_QUEUE_QUERY`].
pub(crate) const GOLDEN_DONE: &[u8] = &[
    0x00, 0x00, 0x00, 0x0d, // length 13
    0x07, // DONE
    0x00, 0x00, 0x00, 0x0b, // id 11
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // count 1
];

/// PUBLISH id 7, qos 2, flags MANDATORY | IDEMPOTENT, producer "shop-1" sequence 5,
/// subject "orders.new", no reply_to, no headers, payload "hi".
pub(crate) const GOLDEN_PUBLISH_IDEMPOTENT: &[u8] = &[
    0x00, 0x00, 0x00, 0x29, // length 41
    0x10, // PUBLISH
    0x00, 0x00, 0x00, 0x07, // id 7
    0x02, // qos 2
    0x03, // flags: MANDATORY (bit 0) | IDEMPOTENT (bit 1)
    0x00, 0x06, b's', b'h', b'o', b'p', b'-', b'1', // producer
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, // sequence 5
    0x00, 0x0a, b'o', b'r', b'd', b'e', b'r', b's', b'.', b'n', b'e', b'w', // subject
    0x00, 0x00, // reply_to: absent
    0x00, 0x00, // header count 0
    b'h', b'i', // payload
];

/// CONFIRM id 7, queues 0, flags DUPLICATE: the producer sequence of
/// [`GOLDEN_PUBLISH_IDEMPOTENT`] was in the deduplication window, nothing was stored.
pub(crate) const GOLDEN_CONFIRM_DUPLICATE: &[u8] = &[
    0x00, 0x00, 0x00, 0x08, // length 8
    0x20, // CONFIRM
    0x00, 0x00, 0x00, 0x07, // id 7
    0x00, 0x00, // queues 0
    0x01, // flags: DUPLICATE (bit 0)
];

/// CONSUME id 12, cid 3, queue "orders", prefetch 10, mode 2 (exactly once), consumer
/// name "billing".
pub(crate) const GOLDEN_CONSUME: &[u8] = &[
    0x00, 0x00, 0x00, 0x1f, // length 31
    0x30, // CONSUME
    0x00, 0x00, 0x00, 0x0c, // id 12
    0x00, 0x00, 0x00, 0x03, // cid 3
    0x00, 0x06, b'o', b'r', b'd', b'e', b'r', b's', // queue
    0x00, 0x00, 0x00, 0x0a, // prefetch 10
    0x02, // mode 2 = exactly_once
    0x00, 0x07, b'b', b'i', b'l', b'l', b'i', b'n', b'g', // name
];

/// DELIVERY cid 3, delivery_id 9, seq 42, delivery_count 2, flags RECEIVED_BEFORE,
/// subject "orders.new", no reply_to, header k=v, payload "hi".
pub(crate) const GOLDEN_DELIVERY: &[u8] = &[
    0x00, 0x00, 0x00, 0x32, // length 50
    0x31, // DELIVERY
    0x00, 0x00, 0x00, 0x03, // cid 3
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // delivery_id 9
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, // seq 42
    0x00, 0x00, 0x00, 0x02, // delivery_count 2
    0x01, // flags: RECEIVED_BEFORE (bit 0)
    0x00, 0x0a, b'o', b'r', b'd', b'e', b'r', b's', b'.', b'n', b'e', b'w', // subject
    0x00, 0x00, // reply_to: absent
    0x00, 0x01, // header count 1
    0x00, 0x01, b'k', // key
    0x00, 0x01, b'v', // value
    b'h', b'i', // payload
];

/// RECEIVED id 13, cid 3, delivery_id 9.
pub(crate) const GOLDEN_RECEIVED: &[u8] = &[
    0x00, 0x00, 0x00, 0x11, // length 17
    0x34, // RECEIVED
    0x00, 0x00, 0x00, 0x0d, // id 13
    0x00, 0x00, 0x00, 0x03, // cid 3
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // delivery_id 9
];

/// ACK id 14, cid 3, delivery_id 9.
pub(crate) const GOLDEN_ACK: &[u8] = &[
    0x00, 0x00, 0x00, 0x11, // length 17
    0x32, // ACK
    0x00, 0x00, 0x00, 0x0e, // id 14
    0x00, 0x00, 0x00, 0x03, // cid 3
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // delivery_id 9
];

/// NACK id 8, cid 3, delivery_id 9, requeue 1, delay 1000 ms.
pub(crate) const GOLDEN_NACK: &[u8] = &[
    0x00, 0x00, 0x00, 0x16, // length 22
    0x33, // NACK
    0x00, 0x00, 0x00, 0x08, // id 8
    0x00, 0x00, 0x00, 0x03, // cid 3
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // delivery_id 9
    0x01, // requeue 1
    0x00, 0x00, 0x03, 0xe8, // delay_ms 1000
];

/// CANCEL id 15, cid 3.
pub(crate) const GOLDEN_CANCEL: &[u8] = &[
    0x00, 0x00, 0x00, 0x09, // length 9
    0x35, // CANCEL
    0x00, 0x00, 0x00, 0x0f, // id 15
    0x00, 0x00, 0x00, 0x03, // cid 3
];

/// CREDIT for consumer 3: eight more deliveries.
pub(crate) const GOLDEN_CREDIT: &[u8] = &[
    0x00, 0x00, 0x00, 0x09, // length 9
    0x36, // CREDIT
    0x00, 0x00, 0x00, 0x03, // cid 3
    0x00, 0x00, 0x00, 0x08, // credit 8
];

/// QUEUE_PURGE id 16, queue "orders".
pub(crate) const GOLDEN_QUEUE_PURGE: &[u8] = &[
    0x00, 0x00, 0x00, 0x0d, // length 13
    0x44, // QUEUE_PURGE
    0x00, 0x00, 0x00, 0x10, // id 16
    0x00, 0x06, b'o', b'r', b'd', b'e', b'r', b's', // name
];

/// QUEUE_MOVE id 17, from "orders.dlq" to "orders", every message (max 0).
pub(crate) const GOLDEN_QUEUE_MOVE: &[u8] = &[
    0x00, 0x00, 0x00, 0x21, // length 33
    0x45, // QUEUE_MOVE
    0x00, 0x00, 0x00, 0x11, // id 17
    0x00, 0x0a, b'o', b'r', b'd', b'e', b'r', b's', b'.', b'd', b'l', b'q', // from
    0x00, 0x06, b'o', b'r', b'd', b'e', b'r', b's', // to
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // max 0 = all
];

/// QUEUE_DELETE id 18, queue "orders".
pub(crate) const GOLDEN_QUEUE_DELETE: &[u8] = &[
    0x00, 0x00, 0x00, 0x0d, // length 13
    0x41, // QUEUE_DELETE
    0x00, 0x00, 0x00, 0x12, // id 18
    0x00, 0x06, b'o', b'r', b'd', b'e', b'r', b's', // name
];

// Server information: a client asks what the server is and how it is doing. PROTOCOL.md
// sections 6.23 and 6.24 quote them.

/// SERVER_QUERY id 19.
pub(crate) const GOLDEN_SERVER_QUERY: &[u8] = &[
    0x00, 0x00, 0x00, 0x05, // length 5
    0x46, // SERVER_QUERY
    0x00, 0x00, 0x00, 0x13, // id 19
];

/// SERVER_INFO id 19 (answering [`GOLDEN_SERVER_QUERY`]): server "tern-1" running
/// "0.1.0", up for one hour, listening on "tcp://127.0.0.1:7400" and
/// "http://127.0.0.1:9464/metrics"; 3 connections, 5 subscriptions, 2 queues, a store of
/// 1 MiB synced "interval:100ms", 1000 messages in and 2500 out.
pub(crate) const GOLDEN_SERVER_INFO: &[u8] = &[
    0x00, 0x00, 0x00, 0x93, // length 147
    0x47, // SERVER_INFO
    0x00, 0x00, 0x00, 0x13, // id 19
    0x00, 0x06, b't', b'e', b'r', b'n', b'-', b'1', // server_id
    0x00, 0x05, b'0', b'.', b'1', b'.', b'0', // version
    0x00, 0x00, 0x00, 0x00, 0x00, 0x36, 0xee, 0x80, // uptime_ms 3600000
    0x00, 0x02, // listener count 2
    0x00, 0x14, b't', b'c', b'p', b':', b'/', b'/', b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.',
    b'1', b':', b'7', b'4', b'0', b'0', // listener
    0x00, 0x1d, b'h', b't', b't', b'p', b':', b'/', b'/', b'1', b'2', b'7', b'.', b'0', b'.', b'0',
    b'.', b'1', b':', b'9', b'4', b'6', b'4', b'/', b'm', b'e', b't', b'r', b'i', b'c',
    b's', // listener
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, // connections 3
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, // subscriptions 5
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, // queues 2
    0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, // store_bytes 1048576
    0x00, 0x0e, b'i', b'n', b't', b'e', b'r', b'v', b'a', b'l', b':', b'1', b'0', b'0', b'm',
    b's', // sync
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xe8, // messages_in 1000
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0xc4, // messages_out 2500
];

// Cluster information and membership changes: PROTOCOL.md sections 6.26 to 6.28 quote
// them.

/// CLUSTER_QUERY id 20.
pub(crate) const GOLDEN_CLUSTER_QUERY: &[u8] = &[
    0x00, 0x00, 0x00, 0x05, // length 5
    0x48, // CLUSTER_QUERY
    0x00, 0x00, 0x00, 0x14, // id 20
];

/// CLUSTER_INFO id 20 (answering [`GOLDEN_CLUSTER_QUERY`]) from node 2 in term 7, node 1
/// leading: two voters, peer addresses 127.0.0.1:7501/7502, client addresses
/// 127.0.0.1:7401/7402 (no lag known: node 2 does not lead).
pub(crate) const GOLDEN_CLUSTER_INFO: &[u8] = &[
    0x00, 0x00, 0x00, 0x81, // length 129
    0x49, // CLUSTER_INFO
    0x00, 0x00, 0x00, 0x14, // id 20
    0, 0, 0, 0, 0, 0, 0, 2, // node_id 2
    0, 0, 0, 0, 0, 0, 0, 7, // term 7
    0, 0, 0, 0, 0, 0, 0, 1, // leader 1
    0x00, 0x02, // 2 members
    0, 0, 0, 0, 0, 0, 0, 1, // node_id 1
    0x00, 0x0e, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'1', b':', b'7', b'5', b'0',
    b'1', // "127.0.0.1:7501"
    0x00, 0x0e, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'1', b':', b'7', b'4', b'0',
    b'1', // "127.0.0.1:7401"
    0x00, // voter
    0, 0, 0, 0, 0, 0, 0, 0, // lag 0
    0, 0, 0, 0, 0, 0, 0, 2, // node_id 2
    0x00, 0x0e, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'1', b':', b'7', b'5', b'0',
    b'2', // "127.0.0.1:7502"
    0x00, 0x0e, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'1', b':', b'7', b'4', b'0',
    b'2', // "127.0.0.1:7402"
    0x00, // voter
    0, 0, 0, 0, 0, 0, 0, 0, // lag 0
];

/// CLUSTER_CHANGE id 21: add node 4, reached on 127.0.0.1:7504.
pub(crate) const GOLDEN_CLUSTER_CHANGE: &[u8] = &[
    0x00, 0x00, 0x00, 0x1e, // length 30
    0x4a, // CLUSTER_CHANGE
    0x00, 0x00, 0x00, 0x15, // id 21
    0x01, // op add
    0, 0, 0, 0, 0, 0, 0, 4, // node_id 4
    0x00, 0x0e, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'1', b':', b'7', b'5', b'0',
    b'4', // "127.0.0.1:7504"
];

/// GROUPS_QUERY id 22.
pub(crate) const GOLDEN_GROUPS_QUERY: &[u8] = &[
    0x00, 0x00, 0x00, 0x05, // length 5
    0x4b, // GROUPS_QUERY
    0x00, 0x00, 0x00, 0x16, // id 22
];

/// GROUPS_INFO id 22: group 2, led by node 1, on nodes 1, 2 and 3, holding `orders`.
pub(crate) const GOLDEN_GROUPS_INFO: &[u8] = &[
    0x00, 0x00, 0x00, 0x3b, // length 59
    0x4c, // GROUPS_INFO
    0x00, 0x00, 0x00, 0x16, // id 22
    0x00, 0x01, // 1 group
    0, 0, 0, 0, 0, 0, 0, 2, // group 2
    0, 0, 0, 0, 0, 0, 0, 1, // leader 1
    0x00, 0x03, // 3 members
    0, 0, 0, 0, 0, 0, 0, 1, // node 1
    0, 0, 0, 0, 0, 0, 0, 2, // node 2
    0, 0, 0, 0, 0, 0, 0, 3, // node 3
    0x00, 0x01, // 1 queue
    0x00, 0x06, b'o', b'r', b'd', b'e', b'r', b's', // "orders"
];

/// QUEUE_CREATE id 11: queue `orders`, no bindings, default options, two replicas.
pub(crate) const GOLDEN_QUEUE_CREATE: &[u8] = &[
    0x00, 0x00, 0x00, 0x2b, // length 43
    0x4d, // QUEUE_CREATE
    0x00, 0x00, 0x00, 0x0b, // id 11
    0x00, 0x06, b'o', b'r', b'd', b'e', b'r', b's', // name "orders"
    0x00, 0x00, // 0 bindings
    0x00, 0x00, 0x00, 0x00, // max_deliver 0: the server's default
    0x00, 0x00, 0x00, 0x00, // ack_timeout_ms 0: the server's default
    0x00, 0x00, // dead_letter: absent
    0, 0, 0, 0, 0, 0, 0, 0, // ttl_ms 0
    0, 0, 0, 0, 0, 0, 0, 0,    // max_length 0
    0x00, // overflow drop-head
    0x02, // replicas 2
];

/// The durable-queue goldens as one session, in the order a client would see them
/// (the frames of both directions interleaved; a fuzz seed, not a specified exchange).
pub(crate) const GOLDEN_QUEUE_SESSION: &[&[u8]] = &[
    GOLDEN_QUEUE_DECLARE,
    GOLDEN_QUEUE_QUERY,
    GOLDEN_QUEUE_INFO,
    GOLDEN_DONE,
    GOLDEN_PUBLISH_IDEMPOTENT,
    GOLDEN_CONFIRM_DUPLICATE,
    GOLDEN_CONSUME,
    GOLDEN_DELIVERY,
    GOLDEN_RECEIVED,
    GOLDEN_ACK,
    GOLDEN_NACK,
    GOLDEN_CANCEL,
    GOLDEN_QUEUE_PURGE,
    GOLDEN_QUEUE_MOVE,
    GOLDEN_QUEUE_DELETE,
];

/// The worked example of PROTOCOL.md, in order.
pub(crate) const GOLDEN_CONVERSATION: &[&[u8]] = &[
    GOLDEN_HELLO,
    GOLDEN_WELCOME,
    GOLDEN_SUBSCRIBE,
    GOLDEN_OK_1,
    GOLDEN_PUBLISH,
    GOLDEN_OK_2,
    GOLDEN_MESSAGE,
    GOLDEN_PUBLISH_BAD_SUBJECT,
    GOLDEN_ERROR,
    GOLDEN_UNSUBSCRIBE,
    GOLDEN_OK_4,
    GOLDEN_PING_5,
    GOLDEN_PONG_5,
];

/// Each golden vector with the frame it must encode from and decode to.
fn goldens() -> Vec<(&'static str, &'static [u8], Frame)> {
    let env = envelope("orders.new", Some("inbox.1"), headers(&[("k", "v")]), b"hi");
    vec![
        (
            "hello",
            GOLDEN_HELLO,
            Frame::Hello(Hello {
                version: 1,
                name: s("demo"),
                credentials: Some(Credentials::Password {
                    user: s("alice"),
                    password: s("s3cret"),
                }),
            }),
        ),
        (
            "welcome",
            GOLDEN_WELCOME,
            Frame::Welcome(Welcome {
                version: 1,
                server_id: s("tern-1"),
                server_version: s("0.1.0"),
                connection_id: 42,
                max_frame_size: 1024 * 1024,
            }),
        ),
        (
            "subscribe",
            GOLDEN_SUBSCRIBE,
            Frame::Subscribe(Subscribe {
                id: 1,
                sid: 1,
                pattern: s("orders.*"),
                group: None,
                filter: None,
            }),
        ),
        ("ok_1", GOLDEN_OK_1, Frame::Ok(Ok { id: 1 })),
        (
            "publish",
            GOLDEN_PUBLISH,
            publish(2, Qos::AtMostOnce, env.clone()),
        ),
        ("ok_2", GOLDEN_OK_2, Frame::Ok(Ok { id: 2 })),
        (
            "message",
            GOLDEN_MESSAGE,
            Frame::Message(Message {
                sid: 1,
                envelope: env,
            }),
        ),
        (
            "error",
            GOLDEN_ERROR,
            Frame::Error(ErrorFrame::new(3, ErrorCode::InvalidSubject, "bad subject")),
        ),
        (
            "publish_bad_subject",
            GOLDEN_PUBLISH_BAD_SUBJECT,
            publish(
                3,
                Qos::AtMostOnce,
                envelope("orders.*", None, Headers::new(), b""),
            ),
        ),
        (
            "unsubscribe",
            GOLDEN_UNSUBSCRIBE,
            Frame::Unsubscribe(Unsubscribe { id: 4, sid: 1 }),
        ),
        ("ok_4", GOLDEN_OK_4, Frame::Ok(Ok { id: 4 })),
        ("ping_5", GOLDEN_PING_5, Frame::Ping(Ping { id: 5 })),
        ("pong_5", GOLDEN_PONG_5, Frame::Pong(Pong { id: 5 })),
        (
            "queue_declare",
            GOLDEN_QUEUE_DECLARE,
            Frame::QueueDeclare(QueueDeclare {
                id: 10,
                name: s("orders"),
                bindings: vec![
                    binding("orders.*", None),
                    binding("returns.>", Some("amount > 100")),
                ],
                options: full_options(),
            }),
        ),
        (
            "queue_query",
            GOLDEN_QUEUE_QUERY,
            Frame::QueueQuery(QueueQuery {
                id: 11,
                name: s("orders"),
            }),
        ),
        (
            "queue_info",
            GOLDEN_QUEUE_INFO,
            Frame::QueueInfo(QueueInfo {
                id: 11,
                name: s("orders"),
                bindings: vec![binding("orders.*", None)],
                options: QueueOptions {
                    max_deliver: 5,
                    ack_timeout_ms: 30_000,
                    dead_letter: Some(s("orders.dlq")),
                    ttl_ms: 0,
                    max_length: 0,
                    overflow: Overflow::DropHead,
                },
                stats: QueueStats {
                    ready: 3,
                    unacked: 1,
                    consumers: 2,
                    published: 10,
                    delivered: 8,
                    acked: 6,
                    redelivered: 1,
                    dead_lettered: 1,
                    expired: 0,
                    dropped: 0,
                },
            }),
        ),
        ("done", GOLDEN_DONE, Frame::Done(Done { id: 11, count: 1 })),
        (
            "publish_idempotent",
            GOLDEN_PUBLISH_IDEMPOTENT,
            publish_with(
                7,
                Qos::ExactlyOnce,
                true,
                Some(("shop-1", 5)),
                envelope("orders.new", None, Headers::new(), b"hi"),
            ),
        ),
        (
            "confirm_duplicate",
            GOLDEN_CONFIRM_DUPLICATE,
            Frame::Confirm(Confirm {
                id: 7,
                queues: 0,
                duplicate: true,
            }),
        ),
        (
            "consume",
            GOLDEN_CONSUME,
            Frame::Consume(Consume {
                id: 12,
                cid: 3,
                queue: s("orders"),
                prefetch: 10,
                mode: AckMode::ExactlyOnce,
                name: Some(s("billing")),
            }),
        ),
        (
            "delivery",
            GOLDEN_DELIVERY,
            delivery(
                DeliveryHead {
                    cid: 3,
                    delivery_id: 9,
                    seq: 42,
                    delivery_count: 2,
                    received_before: true,
                },
                envelope("orders.new", None, headers(&[("k", "v")]), b"hi"),
            ),
        ),
        (
            "received",
            GOLDEN_RECEIVED,
            Frame::Received(Received {
                id: 13,
                cid: 3,
                delivery_id: 9,
            }),
        ),
        (
            "ack",
            GOLDEN_ACK,
            Frame::Ack(Ack {
                id: 14,
                cid: 3,
                delivery_id: 9,
            }),
        ),
        (
            "nack",
            GOLDEN_NACK,
            Frame::Nack(Nack {
                id: 8,
                cid: 3,
                delivery_id: 9,
                requeue: true,
                delay_ms: 1000,
            }),
        ),
        (
            "cancel",
            GOLDEN_CANCEL,
            Frame::Cancel(Cancel { id: 15, cid: 3 }),
        ),
        (
            "credit",
            GOLDEN_CREDIT,
            Frame::Credit(Credit { cid: 3, credit: 8 }),
        ),
        (
            "queue_purge",
            GOLDEN_QUEUE_PURGE,
            Frame::QueuePurge(QueuePurge {
                id: 16,
                name: s("orders"),
            }),
        ),
        (
            "queue_move",
            GOLDEN_QUEUE_MOVE,
            Frame::QueueMove(QueueMove {
                id: 17,
                from: s("orders.dlq"),
                to: s("orders"),
                max: 0,
            }),
        ),
        (
            "queue_delete",
            GOLDEN_QUEUE_DELETE,
            Frame::QueueDelete(QueueDelete {
                id: 18,
                name: s("orders"),
            }),
        ),
        (
            "server_query",
            GOLDEN_SERVER_QUERY,
            Frame::ServerQuery(ServerQuery { id: 19 }),
        ),
        (
            "server_info",
            GOLDEN_SERVER_INFO,
            Frame::ServerInfo(server_info(19)),
        ),
        (
            "cluster_query",
            GOLDEN_CLUSTER_QUERY,
            Frame::ClusterQuery(ClusterQuery { id: 20 }),
        ),
        (
            "cluster_info",
            GOLDEN_CLUSTER_INFO,
            Frame::ClusterInfo(ClusterInfo {
                id: 20,
                node_id: 2,
                term: 7,
                leader: 1,
                members: [1, 2]
                    .into_iter()
                    .map(|n| Member {
                        node_id: n,
                        peer_addr: s(&format!("127.0.0.1:750{n}")),
                        client_addr: Some(s(&format!("127.0.0.1:740{n}"))),
                        role: MemberRole::Voter,
                        lag: 0,
                    })
                    .collect(),
            }),
        ),
        (
            "cluster_change",
            GOLDEN_CLUSTER_CHANGE,
            Frame::ClusterChange(ClusterChange {
                id: 21,
                op: ClusterOp::Add {
                    node_id: 4,
                    peer_addr: s("127.0.0.1:7504"),
                },
            }),
        ),
        (
            "queue_create",
            GOLDEN_QUEUE_CREATE,
            Frame::QueueCreate(QueueCreate {
                declare: QueueDeclare {
                    id: 11,
                    name: s("orders"),
                    bindings: Vec::new(),
                    options: QueueOptions::default(),
                },
                replicas: 2,
            }),
        ),
        (
            "groups_query",
            GOLDEN_GROUPS_QUERY,
            Frame::GroupsQuery(GroupsQuery { id: 22 }),
        ),
        (
            "groups_info",
            GOLDEN_GROUPS_INFO,
            Frame::GroupsInfo(GroupsInfo {
                id: 22,
                groups: vec![GroupInfo {
                    group: 2,
                    leader: 1,
                    members: vec![1, 2, 3],
                    queues: vec![s("orders")],
                }],
            }),
        ),
    ]
}

#[test]
fn golden_bytes() {
    for (name, bytes, frame) in goldens() {
        assert_eq!(&encode(&frame)[..], bytes, "encoding of {name}");
        assert_eq!(frame.encoded_len(), bytes.len(), "encoded_len of {name}");
        assert_eq!(
            decode_all(bytes).unwrap(),
            Some(frame),
            "decoding of {name}"
        );
    }
}

#[test]
fn queue_session_decodes_in_order() {
    let bytes = GOLDEN_QUEUE_SESSION.concat();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut got = Vec::new();
    drain(&mut buf, &mut got);
    assert!(buf.is_empty());
    let by_bytes: Vec<Frame> = GOLDEN_QUEUE_SESSION
        .iter()
        .map(|g| {
            goldens()
                .into_iter()
                .find(|(_, b, _)| b == g)
                .map(|(_, _, f)| f)
                .unwrap()
        })
        .collect();
    assert_eq!(got, by_bytes);
}

#[test]
fn goldens_cover_every_frame_type() {
    let goldens = goldens();
    for (t, name) in crate::codes::FRAME_TYPES {
        assert!(
            goldens.iter().any(|(_, _, f)| f.frame_type() == *t),
            "no golden {name}"
        );
    }
}

#[test]
fn golden_hello_variants() {
    // auth 0: nothing follows the auth byte.
    let none = Frame::Hello(Hello {
        version: 1,
        name: s("cli"),
        credentials: None,
    });
    let want: &[u8] = &[0, 0, 0, 9, 0x01, 0, 1, 0, 3, b'c', b'l', b'i', 0x00];
    assert_eq!(&encode(&none)[..], want);
    // auth 2: one string.
    let token = Frame::Hello(Hello {
        version: 1,
        name: s("cli"),
        credentials: Some(Credentials::Token(s("t"))),
    });
    let want: &[u8] = &[
        0, 0, 0, 12, 0x01, 0, 1, 0, 3, b'c', b'l', b'i', 0x02, 0, 1, b't',
    ];
    assert_eq!(&encode(&token)[..], want);
}

#[test]
fn golden_ping_pong_and_qos_bytes() {
    assert_eq!(
        &encode(&Frame::Ping(Ping { id: 0x0102_0304 }))[..],
        &[0, 0, 0, 5, 0x03, 1, 2, 3, 4]
    );
    assert_eq!(
        &encode(&Frame::Pong(Pong { id: 0x0102_0304 }))[..],
        &[0, 0, 0, 5, 0x04, 1, 2, 3, 4]
    );
    for (qos, byte) in [
        (Qos::AtMostOnce, 0u8),
        (Qos::AtLeastOnce, 1),
        (Qos::ExactlyOnce, 2),
    ] {
        let bytes = encode(&publish(1, qos, envelope("a", None, Headers::new(), b"")));
        // length | type | id(4) | qos | flags | "a" | reply_to | header count
        assert_eq!(
            &bytes[..],
            &[0, 0, 0, 14, 0x10, 0, 0, 0, 1, byte, 0, 0, 1, b'a', 0, 0, 0, 0]
        );
    }
}

#[test]
fn golden_flag_bits() {
    let env = || envelope("a", None, Headers::new(), b"");
    // PUBLISH: MANDATORY alone is bit 0 and adds no field.
    assert_eq!(
        &encode(&publish_with(1, Qos::AtMostOnce, true, None, env()))[..],
        &[0, 0, 0, 14, 0x10, 0, 0, 0, 1, 0, 0x01, 0, 1, b'a', 0, 0, 0, 0]
    );
    // IDEMPOTENT alone is bit 1; producer and sequence come between flags and subject.
    assert_eq!(
        &encode(&publish_with(
            1,
            Qos::AtLeastOnce,
            false,
            Some(("p", 2)),
            env()
        ))[..],
        &[
            0, 0, 0, 25, 0x10, 0, 0, 0, 1, 1, 0x02, 0, 1, b'p', 0, 0, 0, 0, 0, 0, 0, 2, 0, 1, b'a',
            0, 0, 0, 0
        ]
    );
    // CONFIRM without DUPLICATE.
    assert_eq!(
        &encode(&Frame::Confirm(Confirm {
            id: 2,
            queues: 0x0102,
            duplicate: false,
        }))[..],
        &[0, 0, 0, 8, 0x20, 0, 0, 0, 2, 1, 2, 0x00]
    );
    // DELIVERY without RECEIVED_BEFORE.
    let head = DeliveryHead {
        cid: 1,
        delivery_id: 2,
        seq: 3,
        delivery_count: 1,
        received_before: false,
    };
    assert_eq!(
        &encode(&delivery(head, env()))[..],
        &[
            0, 0, 0, 33, 0x31, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0,
            1, 0x00, 0, 1, b'a', 0, 0, 0, 0
        ]
    );
    // NACK without requeue; CONSUME modes 0 and 1 with no name.
    assert_eq!(
        &encode(&Frame::Nack(Nack {
            id: 1,
            cid: 2,
            delivery_id: 3,
            requeue: false,
            delay_ms: 0,
        }))[..],
        &[0, 0, 0, 22, 0x33, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0x00, 0, 0, 0, 0]
    );
    for (mode, byte) in [(AckMode::Manual, 0u8), (AckMode::Auto, 1)] {
        let consume = Frame::Consume(Consume {
            id: 1,
            cid: 2,
            queue: s("q"),
            prefetch: 1,
            mode,
            name: None,
        });
        assert_eq!(
            &encode(&consume)[..],
            &[0, 0, 0, 19, 0x30, 0, 0, 0, 1, 0, 0, 0, 2, 0, 1, b'q', 0, 0, 0, 1, byte, 0, 0]
        );
    }
    // QUEUE_DECLARE with no bindings and default options: overflow 0 = drop-head.
    assert_eq!(
        &encode(&Frame::QueueDeclare(QueueDeclare {
            id: 1,
            name: s("q"),
            bindings: Vec::new(),
            options: QueueOptions::default(),
        }))[..],
        &[
            &[0, 0, 0, 37, 0x40][..],
            &[0, 0, 0, 1, 0, 1, b'q'], // id, name
            &[0, 0],                   // no bindings
            &[0; 4 + 4 + 2 + 8 + 8],   // max_deliver .. max_length: 0, dead_letter absent
            &[0x00],                   // overflow drop-head
        ]
        .concat()[..]
    );
}

/// The seed corpus of the fuzz target is these golden frames (one file each, plus the
/// whole worked-example conversation and the queue session in one file each).
/// [`fuzz_seed_files_match_golden_frames`] keeps the committed files in step with the
/// constants, and rewrites them with `TERN_BLESS=1`.
fn fuzz_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = goldens()
        .into_iter()
        .map(|(name, bytes, _)| (format!("golden_{name}"), bytes.to_vec()))
        .collect();
    let conversation: Vec<u8> = GOLDEN_CONVERSATION.concat();
    seeds.push(("conversation".to_owned(), conversation));
    seeds.push(("queue_session".to_owned(), GOLDEN_QUEUE_SESSION.concat()));
    // An unknown type (skipped whole) followed by a PING, and a frame cut short.
    let mut unknown = vec![0, 0, 0, 3, 0x7f, 0xaa, 0xbb];
    unknown.extend_from_slice(&[0, 0, 0, 5, 0x03, 0, 0, 0, 9]);
    seeds.push(("unknown_then_ping".to_owned(), unknown));
    seeds.push((
        "partial_publish".to_owned(),
        GOLDEN_PUBLISH[..GOLDEN_PUBLISH.len() - 5].to_vec(),
    ));
    seeds.push((
        "partial_delivery".to_owned(),
        GOLDEN_DELIVERY[..GOLDEN_DELIVERY.len() - 20].to_vec(),
    ));
    seeds
}

fn fuzz_corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode")
}

/// The seed corpus is the golden frames. With `TERN_BLESS=1` in the environment the
/// files are rewritten from them instead (after a deliberate wire change):
/// `TERN_BLESS=1 cargo test -p tern-codec fuzz_seed_files`.
#[test]
fn fuzz_seed_files_match_golden_frames() {
    let dir = fuzz_corpus_dir();
    let bless = std::env::var_os("TERN_BLESS").is_some();
    if bless {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in fuzz_seeds() {
        let path = dir.join(&name);
        if bless {
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `TERN_BLESS=1 cargo test -p tern-codec fuzz_seed_files`",
                path.display()
            )
        });
        assert_eq!(on_disk, bytes, "{} is stale", path.display());
    }
}

// ---------------------------------------------------------------------------------------
// Truncation and corruption
// ---------------------------------------------------------------------------------------

#[test]
fn every_strict_prefix_needs_more_bytes() {
    for frame in samples() {
        let bytes = encode(&frame);
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(
                decode_default(&mut buf),
                Result::Ok(None),
                "{frame:?} cut at {cut}"
            );
            assert_eq!(&buf[..], &bytes[..cut], "consumed bytes at cut {cut}");
        }
    }
}

/// The length prefix is shrunk to match a body cut short, so the frame is whole but a
/// field runs past its end. Every field is required, so this is `Truncated` — except
/// inside a payload, which runs to the end of the frame and just gets shorter.
#[test]
fn body_cut_inside_a_field_is_truncated() {
    for frame in samples() {
        let bytes = encode(&frame);
        let body_len = bytes.len() - FRAME_HEADER_LEN;
        let payload_start = payload_of(&frame).map(|p| body_len - p.len());
        for keep in 0..body_len {
            let mut cut = bytes[..FRAME_HEADER_LEN + keep].to_vec();
            set_len(&mut cut, u32::try_from(keep + 1).unwrap());
            let mut buf = BytesMut::from(&cut[..]);
            let res = decode_default(&mut buf);
            assert!(buf.is_empty(), "{frame:?} keep {keep}: frame not consumed");
            match payload_start {
                Some(start) if keep >= start => {
                    let payload = payload_of(&frame).unwrap().slice(..keep - start);
                    assert_eq!(res, Result::Ok(Some(with_payload(&frame, payload))));
                }
                _ => match res {
                    Err(e @ DecodeError::Truncated { frame: t, .. }) => {
                        assert_eq!(t, frame.frame_type());
                        assert!(e.is_fatal());
                        assert_eq!(e.code(), ErrorCode::MalformedFrame);
                    }
                    other => panic!("{frame:?} keep {keep}: {other:?}"),
                },
            }
        }
    }
}

#[test]
fn truncated_names_the_field() {
    // Drop the last byte of the password.
    let mut cut = GOLDEN_HELLO[..GOLDEN_HELLO.len() - 1].to_vec();
    set_len(&mut cut, 24);
    assert_eq!(
        decode_all(&cut),
        Err(DecodeError::Truncated {
            frame: FrameType::Hello,
            field: "password",
        })
    );
    // A PING with no id at all.
    assert_eq!(
        decode_all(&[0, 0, 0, 1, 0x03]),
        Err(DecodeError::Truncated {
            frame: FrameType::Ping,
            field: "id",
        })
    );
    // A PUBLISH cut inside the header count.
    let mut cut = GOLDEN_PUBLISH[..FRAME_HEADER_LEN + 6 + 12 + 9 + 1].to_vec();
    set_len(&mut cut, 1 + 6 + 12 + 9 + 1);
    assert_eq!(
        decode_all(&cut),
        Err(DecodeError::Truncated {
            frame: FrameType::Publish,
            field: "header count",
        })
    );

    // The new frames, each cut after `keep` body bytes (the length prefix adjusted).
    let queue_info_stats = GOLDEN_QUEUE_INFO.len() - FRAME_HEADER_LEN - 76;
    // SERVER_INFO: where the listeners start (after id, server_id, version, uptime_ms)
    // and where the counters start (after the count and the two listeners).
    let listen_at = 4 + 8 + 7 + 8;
    let counters_at = listen_at + 2 + 22 + 31;
    for (golden, keep, field) in [
        (GOLDEN_PUBLISH_IDEMPOTENT, 4 + 1 + 1 + 3, "producer"),
        (GOLDEN_PUBLISH_IDEMPOTENT, 4 + 1 + 1 + 8 + 3, "sequence"),
        (GOLDEN_PUBLISH_IDEMPOTENT, 4 + 1 + 1 + 8 + 8 + 5, "subject"),
        (GOLDEN_CONFIRM_DUPLICATE, 4 + 2, "flags"),
        (GOLDEN_DONE, 4 + 7, "count"),
        (GOLDEN_CONSUME, 4 + 4 + 8 + 4, "mode"),
        (GOLDEN_CONSUME, 4 + 4 + 8 + 4 + 1 + 1, "name"),
        (GOLDEN_DELIVERY, 4 + 8 + 8 + 2, "delivery_count"),
        (GOLDEN_DELIVERY, 4 + 8 + 8 + 4, "flags"),
        (
            GOLDEN_DELIVERY,
            4 + 8 + 8 + 4 + 1 + 12 + 2 + 2 + 1,
            "header key",
        ),
        (GOLDEN_ACK, 4 + 4 + 7, "delivery_id"),
        (GOLDEN_RECEIVED, 4 + 2, "cid"),
        (GOLDEN_NACK, 4 + 4 + 8, "requeue"),
        (GOLDEN_NACK, 4 + 4 + 8 + 1 + 2, "delay_ms"),
        (GOLDEN_CANCEL, 4 + 3, "cid"),
        (GOLDEN_QUEUE_DECLARE, 4 + 3, "name"),
        (GOLDEN_QUEUE_DECLARE, 4 + 8 + 1, "binding count"),
        // The count says two bindings; only the first is there.
        (GOLDEN_QUEUE_DECLARE, 4 + 8 + 2 + 12, "pattern"),
        // Inside the second binding's filter.
        (GOLDEN_QUEUE_DECLARE, 4 + 8 + 2 + 12 + 11 + 5, "filter"),
        (GOLDEN_QUEUE_DECLARE, 4 + 8 + 2 + 12 + 25 + 3, "max_deliver"),
        (
            GOLDEN_QUEUE_DECLARE,
            4 + 8 + 2 + 12 + 25 + 8 + 4,
            "dead_letter",
        ),
        (
            GOLDEN_QUEUE_DECLARE,
            4 + 8 + 2 + 12 + 25 + 8 + 12 + 8,
            "max_length",
        ),
        (
            GOLDEN_QUEUE_DECLARE,
            4 + 8 + 2 + 12 + 25 + 8 + 12 + 16,
            "overflow",
        ),
        (GOLDEN_QUEUE_INFO, queue_info_stats, "ready"),
        (GOLDEN_QUEUE_INFO, queue_info_stats + 8 + 8 + 1, "consumers"),
        (GOLDEN_QUEUE_INFO, queue_info_stats + 8 + 8 + 4, "published"),
        (GOLDEN_QUEUE_INFO, queue_info_stats + 75, "dropped"),
        (GOLDEN_QUEUE_QUERY, 2, "id"),
        (GOLDEN_QUEUE_PURGE, 4 + 7, "name"),
        (GOLDEN_QUEUE_DELETE, 4, "name"),
        (GOLDEN_QUEUE_MOVE, 4 + 12 + 1, "to"),
        (GOLDEN_QUEUE_MOVE, 4 + 12 + 8 + 7, "max"),
        (GOLDEN_SERVER_QUERY, 0, "id"),
        (GOLDEN_SERVER_QUERY, 3, "id"),
        (GOLDEN_SERVER_INFO, 2, "id"),
        (GOLDEN_SERVER_INFO, 4 + 1, "server_id"),
        (GOLDEN_SERVER_INFO, 4 + 5, "server_id"),
        (GOLDEN_SERVER_INFO, 4 + 8 + 3, "version"),
        (GOLDEN_SERVER_INFO, 4 + 8 + 7 + 7, "uptime_ms"),
        (GOLDEN_SERVER_INFO, listen_at + 1, "listener count"),
        (GOLDEN_SERVER_INFO, listen_at + 2 + 10, "listener"),
        // The count says two listeners; only the first is there.
        (GOLDEN_SERVER_INFO, listen_at + 2 + 22, "listener"),
        // Inside the second listener's text.
        (GOLDEN_SERVER_INFO, listen_at + 2 + 22 + 30, "listener"),
        (GOLDEN_SERVER_INFO, counters_at + 4, "connections"),
        (GOLDEN_SERVER_INFO, counters_at + 8 + 1, "subscriptions"),
        (GOLDEN_SERVER_INFO, counters_at + 16 + 7, "queues"),
        (GOLDEN_SERVER_INFO, counters_at + 24, "store_bytes"),
        (GOLDEN_SERVER_INFO, counters_at + 32 + 1, "sync"),
        (GOLDEN_SERVER_INFO, counters_at + 32 + 15, "sync"),
        (GOLDEN_SERVER_INFO, counters_at + 32 + 16, "messages_in"),
        (
            GOLDEN_SERVER_INFO,
            counters_at + 32 + 16 + 8 + 7,
            "messages_out",
        ),
    ] {
        let mut cut = golden[..FRAME_HEADER_LEN + keep].to_vec();
        set_len(&mut cut, u32::try_from(keep + 1).unwrap());
        let frame = FrameType::from_u8(golden[4]).unwrap();
        assert_eq!(
            decode_all(&cut),
            Err(DecodeError::Truncated { frame, field }),
            "{frame} cut after {keep} body bytes"
        );
    }
}

/// A count the bytes cannot hold is a truncated frame, found by reading, not a reason to
/// reserve room for that many entries.
#[test]
fn a_huge_listener_count_is_truncated() {
    // SERVER_INFO cut after the listener count, which is set to 65535.
    let listeners = FRAME_HEADER_LEN + 4 + 8 + 7 + 8;
    let mut bytes = GOLDEN_SERVER_INFO[..listeners + 2].to_vec();
    bytes[listeners..].copy_from_slice(&[0xff, 0xff]);
    let len = u32::try_from(bytes.len() - 4).unwrap();
    set_len(&mut bytes, len);
    assert_eq!(
        decode_all(&bytes),
        Err(DecodeError::Truncated {
            frame: FrameType::ServerInfo,
            field: "listener",
        })
    );
    // A count one higher than the listeners sent reads the first two bytes of
    // `connections` as a third listener (`00 00`: empty); everything after shifts by
    // two, and `sync`'s length is read from its text ("in" = 26990 bytes).
    let mut bytes = GOLDEN_SERVER_INFO.to_vec();
    assert_eq!(&bytes[listeners..listeners + 2], &[0x00, 0x02]);
    bytes[listeners + 1] = 3;
    assert_eq!(
        decode_all(&bytes),
        Err(DecodeError::Truncated {
            frame: FrameType::ServerInfo,
            field: "sync",
        })
    );
    // One lower reads the second listener as counters, and 45 bytes are left over.
    bytes[listeners + 1] = 1;
    assert_eq!(
        decode_all(&bytes),
        Err(DecodeError::TrailingBytes {
            frame: FrameType::ServerInfo,
            extra: 45,
        })
    );
}

#[test]
fn trailing_bytes_after_fixed_layout() {
    let mut bytes = GOLDEN_UNSUBSCRIBE.to_vec();
    bytes.push(0xee);
    set_len(&mut bytes, 10);
    let mut buf = BytesMut::from(&bytes[..]);
    let err = decode_default(&mut buf).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TrailingBytes {
            frame: FrameType::Unsubscribe,
            extra: 1,
        }
    );
    assert!(err.is_fatal());
    assert!(buf.is_empty());

    // Every fixed-layout sample (no payload) rejects trailing bytes.
    for frame in samples().into_iter().filter(|f| payload_of(f).is_none()) {
        let mut bytes = encode(&frame).to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        let len = u32::try_from(bytes.len() - 4).unwrap();
        set_len(&mut bytes, len);
        assert_eq!(
            decode_all(&bytes),
            Err(DecodeError::TrailingBytes {
                frame: frame.frame_type(),
                extra: 3,
            })
        );
    }
}

#[test]
fn invalid_utf8_is_rejected() {
    // PUBLISH with subject "ab" replaced by two bytes that are not UTF-8.
    let mut bytes = encode(&publish(
        1,
        Qos::AtMostOnce,
        envelope("ab", None, Headers::new(), b"x"),
    ))
    .to_vec();
    let at = FRAME_HEADER_LEN + 6 + 2;
    assert_eq!(&bytes[at..at + 2], b"ab");
    bytes[at] = 0xff;
    bytes[at + 1] = 0xfe;
    let err = decode_all(&bytes).unwrap_err();
    assert_eq!(
        err,
        DecodeError::InvalidUtf8 {
            frame: FrameType::Publish,
            field: "subject",
        }
    );
    assert!(err.is_fatal());

    // A lone continuation byte in a header value.
    let mut bytes = encode(&publish(
        1,
        Qos::AtMostOnce,
        envelope("a", None, headers(&[("k", "v")]), b""),
    ))
    .to_vec();
    let last = bytes.len() - 1;
    assert_eq!(bytes[last], b'v');
    bytes[last] = 0x80;
    assert_eq!(
        decode_all(&bytes),
        Err(DecodeError::InvalidUtf8 {
            frame: FrameType::Publish,
            field: "header value",
        })
    );

    // String fields of the new frames: `golden[at]` is the first byte of the field's
    // text (after its length prefix), replaced by a lone continuation byte.
    let declare_second_filter = FRAME_HEADER_LEN + 4 + 8 + 2 + 12 + 11 + 2;
    for (golden, at, field) in [
        (
            GOLDEN_PUBLISH_IDEMPOTENT,
            FRAME_HEADER_LEN + 6 + 2,
            "producer",
        ),
        (
            GOLDEN_PUBLISH_IDEMPOTENT,
            FRAME_HEADER_LEN + 6 + 8 + 8 + 2,
            "subject",
        ),
        (GOLDEN_DELIVERY, FRAME_HEADER_LEN + 25 + 2, "subject"),
        (GOLDEN_CONSUME, FRAME_HEADER_LEN + 8 + 2, "queue"),
        (GOLDEN_CONSUME, GOLDEN_CONSUME.len() - 1, "name"),
        (GOLDEN_QUEUE_DECLARE, FRAME_HEADER_LEN + 4 + 2, "name"),
        (
            GOLDEN_QUEUE_DECLARE,
            FRAME_HEADER_LEN + 4 + 8 + 2 + 2,
            "pattern",
        ),
        (GOLDEN_QUEUE_DECLARE, declare_second_filter, "filter"),
        (
            GOLDEN_QUEUE_DECLARE,
            declare_second_filter + 12 + 8 + 2,
            "dead_letter",
        ),
        (
            GOLDEN_QUEUE_INFO,
            FRAME_HEADER_LEN + 4 + 8 + 2 + 2,
            "pattern",
        ),
        (GOLDEN_QUEUE_QUERY, FRAME_HEADER_LEN + 4 + 2, "name"),
        (GOLDEN_QUEUE_PURGE, FRAME_HEADER_LEN + 4 + 2, "name"),
        (GOLDEN_QUEUE_DELETE, FRAME_HEADER_LEN + 4 + 2, "name"),
        (GOLDEN_QUEUE_MOVE, FRAME_HEADER_LEN + 4 + 2, "from"),
        (GOLDEN_QUEUE_MOVE, FRAME_HEADER_LEN + 4 + 12 + 2, "to"),
        (GOLDEN_SERVER_INFO, FRAME_HEADER_LEN + 4 + 2, "server_id"),
        (GOLDEN_SERVER_INFO, FRAME_HEADER_LEN + 4 + 8 + 2, "version"),
        (
            GOLDEN_SERVER_INFO,
            FRAME_HEADER_LEN + 4 + 8 + 7 + 8 + 2 + 2,
            "listener",
        ),
        (
            GOLDEN_SERVER_INFO,
            FRAME_HEADER_LEN + 4 + 8 + 7 + 8 + 2 + 22 + 2,
            "listener",
        ),
        (
            GOLDEN_SERVER_INFO,
            GOLDEN_SERVER_INFO.len() - 16 - 14,
            "sync",
        ),
    ] {
        let mut bytes = golden.to_vec();
        assert!(bytes[at].is_ascii_alphanumeric(), "{field} at {at}");
        bytes[at] = 0x80;
        let frame = FrameType::from_u8(golden[4]).unwrap();
        assert_eq!(
            decode_all(&bytes),
            Err(DecodeError::InvalidUtf8 { frame, field }),
            "{frame} {field}"
        );
    }
}

#[test]
fn out_of_domain_values_are_rejected() {
    // qos 3.
    let mut bytes = GOLDEN_PUBLISH.to_vec();
    bytes[9] = 3;
    let err = decode_all(&bytes).unwrap_err();
    assert_eq!(
        err,
        DecodeError::InvalidValue {
            frame: FrameType::Publish,
            field: "qos",
            value: 3,
        }
    );
    assert!(err.is_fatal());
    assert_eq!(err.code(), ErrorCode::MalformedFrame);

    // Reserved flags on PUBLISH and MESSAGE.
    let mut bytes = GOLDEN_PUBLISH.to_vec();
    bytes[10] = 0x80;
    assert_eq!(
        decode_all(&bytes),
        Err(DecodeError::InvalidValue {
            frame: FrameType::Publish,
            field: "flags",
            value: 0x80,
        })
    );
    let mut bytes = GOLDEN_MESSAGE.to_vec();
    bytes[9] = 1;
    assert_eq!(
        decode_all(&bytes),
        Err(DecodeError::InvalidValue {
            frame: FrameType::Message,
            field: "flags",
            value: 1,
        })
    );

    // Unknown auth kind in HELLO.
    let mut bytes = GOLDEN_HELLO.to_vec();
    assert_eq!(bytes[13], 0x01);
    bytes[13] = 3;
    assert_eq!(
        decode_all(&bytes),
        Err(DecodeError::InvalidValue {
            frame: FrameType::Hello,
            field: "auth",
            value: 3,
        })
    );
}

/// Sets `golden[at]` to `value` and expects `InvalidValue { field, value }`.
fn expect_invalid(golden: &[u8], at: usize, value: u8, field: &'static str) {
    let mut bytes = golden.to_vec();
    bytes[at] = value;
    let frame = FrameType::from_u8(golden[4]).unwrap();
    let err = decode_all(&bytes).unwrap_err();
    assert_eq!(
        err,
        DecodeError::InvalidValue {
            frame,
            field,
            value: u64::from(value),
        },
        "{frame} {field} = {value:#04x}"
    );
    assert!(err.is_fatal());
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
}

#[test]
fn reserved_flag_bits_are_rejected() {
    // PUBLISH: bits 0 and 1 are assigned, every other bit is reserved, alone or next to
    // assigned ones.
    let flags = FRAME_HEADER_LEN + 4 + 1;
    assert_eq!(GOLDEN_PUBLISH_IDEMPOTENT[flags], 0x03);
    for bit in 2..8 {
        for assigned in [0x00, 0x01, 0x03] {
            expect_invalid(GOLDEN_PUBLISH, flags, assigned | 1 << bit, "flags");
            expect_invalid(
                GOLDEN_PUBLISH_IDEMPOTENT,
                flags,
                assigned | 1 << bit,
                "flags",
            );
        }
    }
    expect_invalid(GOLDEN_PUBLISH, flags, 0xff, "flags");
    // DELIVERY and CONFIRM: bit 0 is assigned.
    let delivery_flags = FRAME_HEADER_LEN + 4 + 8 + 8 + 4;
    assert_eq!(GOLDEN_DELIVERY[delivery_flags], 0x01);
    let confirm_flags = FRAME_HEADER_LEN + 4 + 2;
    assert_eq!(GOLDEN_CONFIRM_DUPLICATE[confirm_flags], 0x01);
    for bit in 1..8 {
        for assigned in [0x00, 0x01] {
            let value = assigned | 1 << bit;
            expect_invalid(GOLDEN_DELIVERY, delivery_flags, value, "flags");
            expect_invalid(GOLDEN_CONFIRM_DUPLICATE, confirm_flags, value, "flags");
        }
    }
}

#[test]
fn out_of_domain_queue_values_are_rejected() {
    // CONSUME mode 3 and above.
    let mode = FRAME_HEADER_LEN + 4 + 4 + 8 + 4;
    assert_eq!(GOLDEN_CONSUME[mode], 2);
    for value in [3, 4, 0x80, 0xff] {
        expect_invalid(GOLDEN_CONSUME, mode, value, "mode");
    }
    // NACK requeue is 0 or 1.
    let requeue = FRAME_HEADER_LEN + 4 + 4 + 8;
    assert_eq!(GOLDEN_NACK[requeue], 1);
    for value in [2, 3, 0xff] {
        expect_invalid(GOLDEN_NACK, requeue, value, "requeue");
    }
    // overflow is 0 (drop-head) or 1 (reject), in a declare and in an info.
    let declare_overflow = GOLDEN_QUEUE_DECLARE.len() - 1;
    assert_eq!(GOLDEN_QUEUE_DECLARE[declare_overflow], 1);
    let info_overflow = GOLDEN_QUEUE_INFO.len() - 76 - 1;
    assert_eq!(GOLDEN_QUEUE_INFO[info_overflow], 0);
    for value in [2, 0xff] {
        expect_invalid(GOLDEN_QUEUE_DECLARE, declare_overflow, value, "overflow");
        expect_invalid(GOLDEN_QUEUE_INFO, info_overflow, value, "overflow");
    }
    // QoS 3 on an idempotent publish.
    expect_invalid(GOLDEN_PUBLISH_IDEMPOTENT, FRAME_HEADER_LEN + 4, 3, "qos");
}

/// A flag that promises fields which are not there misreads what follows; the frame is
/// malformed, never silently accepted as something else.
#[test]
fn idempotent_flag_without_a_producer_is_malformed() {
    // GOLDEN_PUBLISH with IDEMPOTENT set: "orders.new" is read as the producer, the
    // next eight bytes as the sequence, and the subject length from what is left runs
    // past the end.
    let mut bytes = GOLDEN_PUBLISH.to_vec();
    bytes[FRAME_HEADER_LEN + 5] = 0x02;
    assert_eq!(
        decode_all(&bytes),
        Err(DecodeError::Truncated {
            frame: FrameType::Publish,
            field: "subject",
        })
    );
    // And the reverse: the producer of GOLDEN_PUBLISH_IDEMPOTENT without the flag is
    // read as the subject, and the sequence's zero bytes as an absent reply-to and no
    // headers; "what remains" is a payload. It decodes (the payload runs to the end),
    // but not to the frame that was sent: a receiver cannot detect this, which is why
    // flags that add fields must never be set by mistake.
    let mut bytes = GOLDEN_PUBLISH_IDEMPOTENT.to_vec();
    bytes[FRAME_HEADER_LEN + 5] = 0x01;
    let Some(Frame::Publish(p)) = decode_all(&bytes).unwrap() else {
        panic!("not a publish");
    };
    assert_eq!(p.envelope.subject, "shop-1");
    assert_eq!(p.producer, None);
}

// ---------------------------------------------------------------------------------------
// Header checks
// ---------------------------------------------------------------------------------------

#[test]
fn zero_length_is_empty_frame() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 0x03][..]);
    let err = decode_default(&mut buf).unwrap_err();
    assert_eq!(err, DecodeError::EmptyFrame);
    assert!(err.is_fatal());
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
    // The length is judged as soon as its four bytes are in: a zero length needs no
    // type byte to be refused.
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert_eq!(decode_default(&mut buf), Err(DecodeError::EmptyFrame));
    let mut buf = BytesMut::from(&[0u8, 0, 0][..]);
    assert_eq!(decode_default(&mut buf), Result::Ok(None));
    // So is an oversized one.
    let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
    assert!(matches!(
        decode_default(&mut buf),
        Err(DecodeError::FrameTooLarge { .. })
    ));
}

#[test]
fn oversized_length_is_rejected_from_the_header_alone() {
    let max = 4096;
    let mut buf = BytesMut::with_capacity(FRAME_HEADER_LEN);
    buf.put_u32(max + 1);
    buf.put_u8(FrameType::Publish as u8);
    let cap = buf.capacity();
    let err = Frame::decode(&mut buf, max).unwrap_err();
    assert_eq!(err, DecodeError::FrameTooLarge { len: max + 1, max });
    assert!(err.is_fatal());
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    assert_eq!(buf.capacity(), cap, "reserved space for a rejected frame");
    assert_eq!(buf.len(), FRAME_HEADER_LEN);

    // The largest possible length against the default maximum.
    let mut buf = BytesMut::with_capacity(FRAME_HEADER_LEN);
    buf.put_u32(u32::MAX);
    buf.put_u8(0x01);
    assert_eq!(
        decode_default(&mut buf),
        Err(DecodeError::FrameTooLarge {
            len: u32::MAX,
            max: DEFAULT_MAX_FRAME_SIZE,
        })
    );
    assert!(buf.capacity() < 1024, "capacity grew to {}", buf.capacity());
}

#[test]
fn a_frame_of_exactly_the_maximum_size_is_accepted() {
    let max = 4096;
    // length = type(1) + id(4) + qos(1) + flags(1) + subject(3) + reply_to(2)
    //          + header count(2) + payload
    let payload = vec![7u8; max as usize - 14];
    let frame = publish(
        1,
        Qos::AtMostOnce,
        envelope("a", None, Headers::new(), &payload),
    );
    let bytes = encode(&frame);
    assert_eq!(bytes.len(), max as usize + 4);
    let mut buf = bytes.clone();
    assert_eq!(Frame::decode(&mut buf, max), Result::Ok(Some(frame)));
    let mut buf = bytes.clone();
    assert_eq!(
        Frame::decode(&mut buf, max - 1),
        Err(DecodeError::FrameTooLarge {
            len: max,
            max: max - 1
        })
    );
}

#[test]
fn unknown_type_is_skipped_and_the_stream_goes_on() {
    // Every byte this version does not assign: gaps inside the family ranges (0x08,
    // 0x14, 0x21, 0x36, 0x48) as much as the unassigned range and 0x00.
    let unknown = (0..=u8::MAX).filter(|code| FrameType::from_u8(*code).is_none());
    assert_eq!(
        unknown.clone().count(),
        256 - crate::codes::FRAME_TYPES.len()
    );
    for code in unknown {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_u8(code);
        buf.put_slice(&[0xaa, 0xbb]);
        buf.put_slice(GOLDEN_OK_1);
        let err = decode_default(&mut buf).unwrap_err();
        assert_eq!(err, DecodeError::UnknownFrameType { code });
        assert!(!err.is_fatal());
        assert_eq!(err.code(), ErrorCode::UnknownFrameType);
        assert_eq!(&buf[..], GOLDEN_OK_1, "unknown frame not consumed whole");
        assert_eq!(
            decode_default(&mut buf),
            Result::Ok(Some(Frame::Ok(Ok { id: 1 })))
        );
        assert!(buf.is_empty());
    }
    // With no body at all.
    let mut buf = BytesMut::from(&[0u8, 0, 0, 1, 0x99][..]);
    assert_eq!(
        decode_default(&mut buf),
        Err(DecodeError::UnknownFrameType { code: 0x99 })
    );
    assert!(buf.is_empty());
}

#[test]
fn an_unknown_type_still_waits_for_its_whole_body() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 4, 0x7f, 1, 2][..]);
    assert_eq!(decode_default(&mut buf), Result::Ok(None));
    assert_eq!(buf.len(), 7);
    buf.put_u8(3);
    assert_eq!(
        decode_default(&mut buf),
        Err(DecodeError::UnknownFrameType { code: 0x7f })
    );
    assert!(buf.is_empty());
}

// ---------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------

fn stream() -> (Vec<Frame>, Vec<u8>) {
    let frames = samples();
    let mut bytes = BytesMut::new();
    for f in &frames {
        f.encode(&mut bytes).unwrap();
    }
    (frames, bytes.to_vec())
}

#[test]
fn several_frames_in_one_buffer_decode_in_order() {
    let (frames, bytes) = stream();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut got = Vec::new();
    drain(&mut buf, &mut got);
    assert_eq!(got, frames);
    assert!(buf.is_empty());
}

/// Like NATS `split_test.go`: the stream arrives in two reads, split at every point.
#[test]
fn stream_split_at_every_byte() {
    let (frames, bytes) = stream();
    for split in 0..=bytes.len() {
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        buf.extend_from_slice(&bytes[..split]);
        drain(&mut buf, &mut got);
        buf.extend_from_slice(&bytes[split..]);
        drain(&mut buf, &mut got);
        assert_eq!(got, frames, "split at {split}");
        assert!(buf.is_empty());
    }
}

/// The stream arrives one byte per read; a frame must come out exactly when its last
/// byte does.
#[test]
fn stream_fed_one_byte_at_a_time() {
    let (frames, bytes) = stream();
    let ends: Vec<usize> = frames
        .iter()
        .scan(0, |end, f| {
            *end += f.encoded_len();
            Some(*end)
        })
        .collect();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for (i, byte) in bytes.iter().enumerate() {
        buf.put_u8(*byte);
        let before = got.len();
        drain(&mut buf, &mut got);
        let completes = ends.contains(&(i + 1));
        assert_eq!(got.len() - before, usize::from(completes), "at byte {i}");
    }
    assert_eq!(got, frames);
}

/// Decoded strings and payloads are slices of the read buffer, not copies.
#[test]
fn decoded_payload_is_zero_copy() {
    let mut buf = BytesMut::from(GOLDEN_PUBLISH);
    let base = buf.as_ptr() as usize;
    let Some(Frame::Publish(p)) = decode_default(&mut buf).unwrap() else {
        panic!("not a publish");
    };
    let payload_at = p.envelope.payload.as_ptr() as usize;
    assert_eq!(payload_at - base, GOLDEN_PUBLISH.len() - 2);

    let mut buf = BytesMut::from(GOLDEN_DELIVERY);
    let base = buf.as_ptr() as usize;
    let Some(Frame::Delivery(d)) = decode_default(&mut buf).unwrap() else {
        panic!("not a delivery");
    };
    let payload_at = d.envelope.payload.as_ptr() as usize;
    assert_eq!(payload_at - base, GOLDEN_DELIVERY.len() - 2);
    let subject_at = d.envelope.subject.as_ptr() as usize;
    assert_eq!(subject_at - base, FRAME_HEADER_LEN + 25 + 2);

    // A stored envelope decodes without copying either.
    let stored = Bytes::copy_from_slice(&GOLDEN_DELIVERY[FRAME_HEADER_LEN + 25..]);
    let base = stored.as_ptr() as usize;
    let env = Envelope::decode_bytes(stored.clone()).unwrap();
    assert_eq!(env.payload.as_ptr() as usize - base, stored.len() - 2);
    assert_eq!(env, d.envelope);
}

#[test]
fn envelope_decode_bytes_needs_a_whole_envelope() {
    let whole = &GOLDEN_DELIVERY[FRAME_HEADER_LEN + 25..];
    // Every cut before the payload is missing a field; cuts inside the payload give a
    // shorter payload.
    let payload_start = whole.len() - 2;
    for cut in 0..payload_start {
        let res = Envelope::decode_bytes(Bytes::copy_from_slice(&whole[..cut]));
        assert!(
            matches!(res, Err(DecodeError::Truncated { .. })),
            "cut {cut}: {res:?}"
        );
    }
    for cut in payload_start..=whole.len() {
        let env = Envelope::decode_bytes(Bytes::copy_from_slice(&whole[..cut])).unwrap();
        assert_eq!(&env.payload[..], &whole[payload_start..cut]);
    }
    let mut bad = whole.to_vec();
    bad[2] = 0xff;
    assert!(matches!(
        Envelope::decode_bytes(Bytes::from(bad)),
        Err(DecodeError::InvalidUtf8 {
            field: "subject",
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------
// Encode errors
// ---------------------------------------------------------------------------------------

#[test]
fn long_string_is_an_encode_error_and_leaves_dst_alone() {
    let long = "s".repeat(70_000);
    let before: &[u8] = b"earlier frames";
    let frame = publish(
        1,
        Qos::AtMostOnce,
        envelope(&long, None, Headers::new(), b"x"),
    );
    let mut dst = BytesMut::from(before);
    assert_eq!(
        frame.encode(&mut dst),
        Err(EncodeError::StringTooLong {
            field: "subject",
            len: 70_000,
        })
    );
    assert_eq!(&dst[..], before);

    // A failure late in the body (a header value) removes the bytes already written.
    let env = envelope(
        "a.b",
        Some("r"),
        headers(&[("k", "v"), ("big", &long)]),
        b"x",
    );
    let mut dst = BytesMut::from(before);
    assert_eq!(
        publish(1, Qos::AtMostOnce, env.clone()).encode(&mut dst),
        Err(EncodeError::StringTooLong {
            field: "header value",
            len: 70_000,
        })
    );
    assert_eq!(&dst[..], before);
    assert!(Message::encode_parts(1, env.as_ref(), &mut dst).is_err());
    assert_eq!(&dst[..], before);
    let head = PublishHead {
        id: 1,
        qos: Qos::AtLeastOnce,
        mandatory: true,
        producer: Some(("p", 1)),
    };
    assert!(Publish::encode_parts(&head, env.as_ref(), &mut dst).is_err());
    assert_eq!(&dst[..], before);
    let delivery_head = DeliveryHead {
        cid: 1,
        delivery_id: 1,
        seq: 1,
        delivery_count: 1,
        received_before: false,
    };
    assert!(Delivery::encode_parts(&delivery_head, env.as_ref(), &mut dst).is_err());
    assert_eq!(&dst[..], before);
    assert!(env.as_ref().encode(&mut dst).is_err());
    // `EnvelopeRef::encode` is not framed, so nothing removes its partial output: the
    // caller truncates (the frame encoders do it through `encode_with`).
    dst.truncate(before.len());

    // The producer id of an idempotent publish, owned and borrowed.
    let frame = publish_with(
        1,
        Qos::ExactlyOnce,
        true,
        Some((&long, 1)),
        envelope("a", None, Headers::new(), b""),
    );
    assert_eq!(
        frame.encode(&mut dst),
        Err(EncodeError::StringTooLong {
            field: "producer",
            len: 70_000,
        })
    );
    assert_eq!(&dst[..], before);
    let head = PublishHead {
        producer: Some((&long, 1)),
        ..head
    };
    let ok_env = envelope("a", None, Headers::new(), b"");
    assert_eq!(
        Publish::encode_parts(&head, ok_env.as_ref(), &mut dst),
        Err(EncodeError::StringTooLong {
            field: "producer",
            len: 70_000,
        })
    );
    assert_eq!(&dst[..], before);

    // Queue frames: a binding's filter, a dead-letter queue, a consumer name.
    let declare = Frame::QueueDeclare(QueueDeclare {
        id: 1,
        name: s("q"),
        bindings: vec![binding("a", None), binding("b", Some(&long))],
        options: QueueOptions::default(),
    });
    assert_eq!(
        declare.encode(&mut dst),
        Err(EncodeError::StringTooLong {
            field: "filter",
            len: 70_000,
        })
    );
    assert_eq!(&dst[..], before);
    let info = Frame::QueueInfo(QueueInfo {
        id: 1,
        name: s("q"),
        bindings: Vec::new(),
        options: QueueOptions {
            dead_letter: Some(s(&long)),
            ..QueueOptions::default()
        },
        stats: QueueStats::default(),
    });
    assert_eq!(
        info.encode(&mut dst),
        Err(EncodeError::StringTooLong {
            field: "dead_letter",
            len: 70_000,
        })
    );
    assert_eq!(&dst[..], before);
    let consume = Frame::Consume(Consume {
        id: 1,
        cid: 1,
        queue: s("q"),
        prefetch: 1,
        mode: AckMode::ExactlyOnce,
        name: Some(s(&long)),
    });
    assert_eq!(
        consume.encode(&mut dst),
        Err(EncodeError::StringTooLong {
            field: "name",
            len: 70_000,
        })
    );
    assert_eq!(&dst[..], before);
    let moved = Frame::QueueMove(QueueMove {
        id: 1,
        from: s("a"),
        to: s(&long),
        max: 0,
    });
    assert_eq!(
        moved.encode(&mut dst),
        Err(EncodeError::StringTooLong {
            field: "to",
            len: 70_000,
        })
    );
    assert_eq!(&dst[..], before);

    // SERVER_INFO: a listener after a good one, and the sync policy near the end.
    let mut info = server_info(1);
    info.listeners.push(s(&long));
    assert_eq!(
        Frame::ServerInfo(info).encode(&mut dst),
        Err(EncodeError::StringTooLong {
            field: "listener",
            len: 70_000,
        })
    );
    assert_eq!(&dst[..], before);
    let info = ServerInfo {
        sync: s(&long),
        ..server_info(1)
    };
    assert_eq!(
        info.encode(&mut dst),
        Err(EncodeError::StringTooLong {
            field: "sync",
            len: 70_000,
        })
    );
    assert_eq!(&dst[..], before);

    // Every string field is checked, not only subjects.
    let hello = Frame::Hello(Hello {
        version: 1,
        name: s("n"),
        credentials: Some(Credentials::Token(s(&long))),
    });
    let mut dst = BytesMut::from(before);
    assert_eq!(
        hello.encode(&mut dst),
        Err(EncodeError::StringTooLong {
            field: "token",
            len: 70_000,
        })
    );
    assert_eq!(&dst[..], before);
    let sub = Frame::Subscribe(Subscribe {
        id: 1,
        sid: 1,
        pattern: s("a"),
        group: Some(s("g")),
        filter: Some(s(&long)),
    });
    assert_eq!(
        sub.encode(&mut dst),
        Err(EncodeError::StringTooLong {
            field: "filter",
            len: 70_000,
        })
    );
    assert_eq!(&dst[..], before);
}

#[test]
fn too_many_bindings_is_an_encode_error() {
    let before: &[u8] = b"earlier frames";
    let bindings = vec![binding("a", None); usize::from(u16::MAX) + 1];
    let declare = Frame::QueueDeclare(QueueDeclare {
        id: 1,
        name: s("q"),
        bindings,
        options: QueueOptions::default(),
    });
    let mut dst = BytesMut::from(before);
    // The count does not fit its u16.
    assert_eq!(
        declare.encode(&mut dst),
        Err(EncodeError::TooManyBindings { count: 65536 })
    );
    assert_eq!(&dst[..], before);

    // 65535 bindings is the most, and round-trips.
    let bindings = vec![binding("a", None); usize::from(u16::MAX)];
    let declare = Frame::QueueDeclare(QueueDeclare {
        id: 1,
        name: s("q"),
        bindings,
        options: QueueOptions::default(),
    });
    let bytes = encode(&declare);
    assert_eq!(bytes.len(), declare.encoded_len());
    assert_eq!(decode_all(&bytes).unwrap(), Some(declare));
}

#[test]
fn too_many_listeners_is_an_encode_error() {
    let before: &[u8] = b"earlier frames";
    let info = ServerInfo {
        listeners: vec![s("l"); usize::from(u16::MAX) + 1],
        ..server_info(1)
    };
    let mut dst = BytesMut::from(before);
    // The count does not fit its u16.
    assert_eq!(
        info.encode(&mut dst),
        Err(EncodeError::TooManyListeners { count: 65536 })
    );
    assert_eq!(&dst[..], before);

    // 65535 listeners is the most, and round-trips.
    let info = Frame::ServerInfo(ServerInfo {
        listeners: vec![s("l"); usize::from(u16::MAX)],
        ..server_info(1)
    });
    let bytes = encode(&info);
    assert_eq!(bytes.len(), info.encoded_len());
    assert_eq!(decode_all(&bytes).unwrap(), Some(info));
}

#[test]
fn the_longest_string_fits() {
    let longest = "z".repeat(usize::from(u16::MAX));
    let frame = Frame::Error(ErrorFrame {
        id: 1,
        raw_code: 2,
        message: s(&longest),
    });
    let bytes = encode(&frame);
    assert_eq!(bytes.len(), frame.encoded_len());
    assert_eq!(decode_all(&bytes).unwrap(), Some(frame));
}

#[test]
fn error_frame_new_cuts_long_messages_at_a_char_boundary() {
    let max = ErrorFrame::MAX_MESSAGE_LEN;
    // "é" is two bytes at max-1..max+1: the cut at `max` would split it.
    let msg = format!("{}\u{e9}tail", "a".repeat(max - 1));
    let e = ErrorFrame::new(1, ErrorCode::InvalidSubject, msg);
    assert_eq!(e.message.len(), max - 1);
    assert!(e.message.chars().all(|c| c == 'a'));

    // "€" is three bytes at max-2..max+1.
    let msg = format!("{}\u{20ac}tail", "a".repeat(max - 2));
    let e = ErrorFrame::new(1, ErrorCode::InvalidSubject, msg);
    assert_eq!(e.message.len(), max - 2);

    // A four-byte char that ends exactly at the limit is kept.
    let msg = format!("{}\u{1f426}tail", "a".repeat(max - 4));
    let e = ErrorFrame::new(1, ErrorCode::InvalidSubject, msg);
    assert_eq!(e.message.len(), max);
    assert!(e.message.ends_with('\u{1f426}'));

    // At or under the limit nothing changes.
    let exact = "b".repeat(max);
    assert_eq!(
        ErrorFrame::new(0, ErrorCode::Internal, exact.clone()).message,
        exact
    );
    let over = "b".repeat(max + 1);
    assert_eq!(ErrorFrame::new(0, ErrorCode::Internal, over).message, exact);

    // Echoing a huge peer input still gives an encodable frame.
    let e = ErrorFrame::new(0, ErrorCode::InvalidSubject, "x".repeat(100_000));
    let frame = Frame::Error(e);
    assert_eq!(decode_all(&encode(&frame)).unwrap(), Some(frame));
}
