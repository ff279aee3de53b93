//! The wire protocol under abuse: raw bytes through [`RawConn`], asserting the exact
//! ERROR code and id the broker answers with, and whether the connection stays or goes.

mod common;

use std::time::{Duration, Instant};

use common::{drain, encode_all, settle, texts, within, RawConn};
use tern::Client;
use tern_codec::{
    Envelope, ErrorCode, Frame, Headers, Message, Ping, Publish, Qos, Subscribe, Unsubscribe,
};
use tokio::io::AsyncWriteExt;

/// A frame with any type byte and body, length prefix computed.
fn raw_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len() + 1).unwrap();
    let mut v = len.to_be_bytes().to_vec();
    v.push(kind);
    v.extend_from_slice(body);
    v
}

fn publish(id: u32, subject: &str, payload: &str) -> Frame {
    Frame::Publish(Publish {
        id,
        qos: Qos::AtMostOnce,
        mandatory: false,
        producer: None,
        envelope: Envelope {
            subject: subject.into(),
            reply_to: None,
            headers: Headers::new(),
            payload: payload.to_string().into(),
        },
    })
}

fn subscribe(id: u32, sid: u32, pattern: &str) -> Frame {
    Frame::Subscribe(Subscribe {
        id,
        sid,
        pattern: pattern.into(),
        group: None,
        filter: None,
    })
}

/// A client pair that must keep working while raw connections misbehave.
struct Bystanders {
    publisher: Client,
    subscriber: Client,
    sub: tern::Subscription,
}

impl Bystanders {
    async fn new(b: &common::TestBroker) -> Self {
        let publisher = Client::connect(b.url()).await.unwrap();
        let subscriber = Client::connect(b.url()).await.unwrap();
        let sub = subscriber.subscribe("bystander").await.unwrap();
        Self {
            publisher,
            subscriber,
            sub,
        }
    }

    /// Publishes `text` and checks it (and nothing else) arrived.
    async fn check(&mut self, text: &str) {
        self.publisher
            .publish("bystander", text.to_string())
            .await
            .unwrap();
        settle(&self.publisher, &[&self.subscriber]).await;
        assert_eq!(texts(&drain(&mut self.sub)), [text]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_an_error_and_a_close_and_hurt_no_one_else() {
    let b = common::start_broker().await;
    let mut others = Bystanders::new(&b).await;
    others.check("before").await;

    // PUBLISH body: id 0, qos 0, flags 0, then a subject that says 10 bytes but has 3.
    let mut truncated = vec![0, 0, 0, 0, 0, 0];
    truncated.extend_from_slice(&10u16.to_be_bytes());
    truncated.extend_from_slice(b"abc");
    let mut bad_utf8 = vec![0, 0, 0, 0, 0, 0, 0, 2, 0xff, 0xfe, 0, 0, 0, 0];
    bad_utf8.extend_from_slice(b"payload");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("subject truncated", raw_frame(0x10, &truncated)),
        ("invalid UTF-8 subject", raw_frame(0x10, &bad_utf8)),
        (
            "a reserved flag bit",
            raw_frame(0x10, &[0, 0, 0, 0, 0, 0x80, 0, 1, b'a', 0, 0, 0, 0]),
        ),
        (
            "qos out of range",
            raw_frame(0x10, &[0, 0, 0, 0, 9, 0, 0, 1, b'a', 0, 0, 0, 0]),
        ),
        (
            "PING with trailing bytes",
            raw_frame(0x03, &[0, 0, 0, 1, 0]),
        ),
        ("PING too short", raw_frame(0x03, &[0, 1])),
        ("zero length", vec![0, 0, 0, 0, 0x03]),
    ];
    for (n, (what, bytes)) in cases.iter().enumerate() {
        let mut raw = RawConn::greeted(b.addr).await;
        raw.ping_pong(1).await;
        raw.send_bytes(bytes).await;
        let e = raw.expect_error(ErrorCode::MalformedFrame, 0).await;
        assert!(
            !e.message.is_empty(),
            "{what}: the error says what was wrong"
        );
        raw.expect_eof().await;
        others.check(&format!("after case {n}")).await;
    }
    common::wait_for("protocol errors counted", || {
        b.server.stats().protocol_errors >= cases.len() as u64
    })
    .await;
}

/// A length prefix of 0 is a whole (malformed) frame of four bytes: the broker must not
/// wait for a type byte that is not part of it.
#[tokio::test]
async fn zero_length_prefix_alone_is_rejected() {
    let b = common::start_broker().await;
    let mut raw = RawConn::greeted(b.addr).await;
    raw.send_bytes(&[0, 0, 0, 0]).await;
    let answer = tokio::time::timeout(Duration::from_secs(3), raw.recv()).await;
    match answer {
        Ok(Some(Frame::Error(e))) => assert_eq!(e.code(), Some(ErrorCode::MalformedFrame)),
        Ok(other) => panic!("expected ERROR malformed_frame, got {other:?}"),
        Err(_) => panic!("the broker is still waiting for a type byte after a zero length"),
    }
    raw.expect_eof().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused_from_the_header_alone() {
    let b = common::start_broker_with(|c| c.limits.max_frame_size = 4096).await;
    let mut others = Bystanders::new(&b).await;

    // After the handshake: only the 5 header bytes are sent, never the body.
    let mut raw = RawConn::greeted(b.addr).await;
    raw.send_bytes(&[0, 0, 0x10, 0x01, 0x10]).await; // length 4097, PUBLISH
    let e = raw.expect_error(ErrorCode::FrameTooLarge, 0).await;
    assert!(e.message.contains("4097"), "{e:?}");
    raw.expect_eof().await;

    // The largest lengths, and before the handshake too.
    let mut raw = RawConn::greeted(b.addr).await;
    raw.send_bytes(&[0xff, 0xff, 0xff, 0xff, 0x12]).await;
    raw.expect_error(ErrorCode::FrameTooLarge, 0).await;
    raw.expect_eof().await;
    let mut raw = RawConn::connect(b.addr).await;
    raw.send_bytes(&[0, 0, 0x10, 0x01, 0x01]).await;
    raw.expect_error(ErrorCode::FrameTooLarge, 0).await;
    raw.expect_eof().await;

    // Exactly the maximum is fine.
    let mut raw = RawConn::greeted(b.addr).await;
    let mut body = vec![0, 0, 0, 5, 0, 0, 0, 1, b'x', 0, 0, 0, 0];
    body.resize(4096 - 1, b'.');
    assert_eq!(body.len() + 1, 4096);
    raw.send_bytes(&raw_frame(0x10, &body)).await;
    raw.expect_ok(5).await;

    others.check("still fine").await;
}

#[tokio::test]
async fn unknown_frame_types_are_skipped_and_the_connection_stays() {
    let b = common::start_broker().await;
    let mut raw = RawConn::greeted(b.addr).await;
    raw.send_bytes(&raw_frame(0x7f, &[1, 2, 3])).await;
    let e = raw.expect_error(ErrorCode::UnknownFrameType, 0).await;
    assert!(e.message.contains("0x7f"), "{e:?}");
    raw.ping_pong(1).await;

    // Several in one write, an empty body and a reserved type, with requests between.
    let mut bytes = raw_frame(0x00, &[]);
    bytes.extend(raw_frame(0x14, &[9; 100]));
    bytes.extend(encode_all(&[Frame::Ping(Ping { id: 2 })]));
    bytes.extend(raw_frame(0xff, &[0; 10]));
    bytes.extend(encode_all(&[Frame::Ping(Ping { id: 3 })]));
    raw.send_bytes(&bytes).await;
    raw.expect_error(ErrorCode::UnknownFrameType, 0).await;
    raw.expect_error(ErrorCode::UnknownFrameType, 0).await;
    raw.expect_pong(2).await;
    raw.expect_error(ErrorCode::UnknownFrameType, 0).await;
    raw.expect_pong(3).await;
}

#[tokio::test]
async fn handshake_violations_get_an_error_and_a_close() {
    let b = common::start_broker_with(|c| {
        c.limits.handshake_timeout = Duration::from_millis(300);
    })
    .await;

    // Anything before HELLO.
    let mut raw = RawConn::connect(b.addr).await;
    raw.send(&Ping { id: 1 }).await;
    raw.expect_error(ErrorCode::UnexpectedFrame, 0).await;
    raw.expect_eof().await;

    // A version this server does not speak.
    let mut raw = RawConn::connect(b.addr).await;
    raw.hello(99).await;
    let e = raw.expect_error(ErrorCode::UnsupportedVersion, 0).await;
    assert!(e.message.contains("99"), "{e:?}");
    raw.expect_eof().await;

    // Malformed HELLO.
    let mut raw = RawConn::connect(b.addr).await;
    raw.send_bytes(&raw_frame(0x01, &[0, 1, 0, 0, 7])).await; // auth 7
    raw.expect_error(ErrorCode::MalformedFrame, 0).await;
    raw.expect_eof().await;

    // Silence.
    let started = Instant::now();
    let mut raw = RawConn::connect(b.addr).await;
    raw.expect_error(ErrorCode::HandshakeTimeout, 0).await;
    raw.expect_eof().await;
    assert!(started.elapsed() >= Duration::from_millis(300));

    // None of these counted as connections; a proper client still gets in.
    assert_eq!(b.server.connections().len(), 0);
    let c = Client::connect(b.url()).await.unwrap();
    c.flush().await.unwrap();
}

#[tokio::test]
async fn server_only_frames_and_a_second_hello_are_unexpected() {
    let b = common::start_broker().await;
    let mut raw = RawConn::greeted(b.addr).await;
    raw.hello(tern_codec::PROTOCOL_VERSION).await;
    raw.expect_error(ErrorCode::UnexpectedFrame, 0).await;
    let mut raw = RawConn::greeted(b.addr).await;
    raw.send(&Message {
        sid: 1,
        envelope: Envelope {
            subject: "a".into(),
            reply_to: None,
            headers: Headers::new(),
            payload: "x".into(),
        },
    })
    .await;
    raw.expect_error(ErrorCode::UnexpectedFrame, 0).await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let b = common::start_broker().await;

    // HELLO and requests in the very same write.
    let mut raw = RawConn::connect(b.addr).await;
    let mut bytes = encode_all(&[Frame::Hello(tern_codec::Hello {
        version: tern_codec::PROTOCOL_VERSION,
        name: "pipeliner".into(),
        credentials: None,
    })]);
    let mut frames = Vec::new();
    for id in 1..=50 {
        frames.push(Frame::Ping(Ping { id }));
    }
    frames.push(subscribe(1000, 1, "pipe.x"));
    frames.push(publish(0, "pipe.x", "while subscribed"));
    for id in 51..=100 {
        frames.push(Frame::Ping(Ping { id }));
    }
    frames.push(Frame::Unsubscribe(Unsubscribe { id: 1001, sid: 1 }));
    frames.push(publish(0, "pipe.x", "after unsubscribe"));
    frames.push(Frame::Ping(Ping { id: 101 }));
    bytes.extend_from_slice(&encode_all(&frames));
    raw.send_bytes(&bytes).await;

    assert!(matches!(raw.recv().await, Some(Frame::Welcome(_))));
    for id in 1..=50 {
        raw.expect_pong(id).await;
    }
    raw.expect_ok(1000).await;
    match raw.recv().await {
        Some(Frame::Message(m)) => {
            assert_eq!(m.sid, 1);
            assert_eq!(&m.envelope.payload[..], b"while subscribed");
        }
        other => panic!("expected the MESSAGE, got {other:?}"),
    }
    for id in 51..=100 {
        raw.expect_pong(id).await;
    }
    raw.expect_ok(1001).await;
    // Nothing for the unsubscribed sid: the PONG comes next.
    raw.expect_pong(101).await;
    assert_eq!(b.server.subscription_count(), 0);
}

#[tokio::test]
async fn request_errors_carry_the_request_id_and_keep_the_connection() {
    let b = common::start_broker_with(|c| c.limits.max_headers = 2).await;
    let mut raw = RawConn::greeted(b.addr).await;

    // Fire-and-forget publish to an invalid subject: ERROR with id 0, connection stays.
    raw.send(&publish(0, "a..b", "x")).await;
    let e = raw.expect_error(ErrorCode::InvalidSubject, 0).await;
    assert!(e.message.contains("a..b"), "{e:?}");
    raw.ping_pong(1).await;
    // The same with an id: the ERROR carries it.
    raw.send(&publish(7, "a.*", "x")).await;
    raw.expect_error(ErrorCode::InvalidSubject, 7).await;
    raw.ping_pong(2).await;
    // A valid publish with an id is confirmed.
    raw.send(&publish(9, "a.b", "x")).await;
    raw.expect_ok(9).await;

    // Bad headers, bad reply-to, a QoS without what it needs.
    let mut p = Publish {
        id: 10,
        qos: Qos::AtMostOnce,
        mandatory: false,
        producer: None,
        envelope: Envelope {
            subject: "a.b".into(),
            reply_to: None,
            headers: [("k", "1"), ("k", "2"), ("k", "3")].into_iter().collect(),
            payload: "x".into(),
        },
    };
    raw.send(&p).await;
    raw.expect_error(ErrorCode::InvalidHeaders, 10).await;
    p.id = 11;
    p.envelope.headers = [("", "v")].into_iter().collect();
    raw.send(&p).await;
    raw.expect_error(ErrorCode::InvalidHeaders, 11).await;
    p.id = 12;
    p.envelope.headers = Headers::new();
    p.envelope.reply_to = Some("bad reply".into());
    raw.send(&p).await;
    raw.expect_error(ErrorCode::InvalidSubject, 12).await;
    p.id = 13;
    p.envelope.reply_to = None;
    // Exactly-once needs a producer id and sequence.
    p.qos = Qos::ExactlyOnce;
    raw.send(&p).await;
    raw.expect_error(ErrorCode::UnsupportedQos, 13).await;

    // Subscriptions: bad pattern, bad group, filters, unknown and reused sids.
    raw.send(&subscribe(20, 1, "a..b")).await;
    raw.expect_error(ErrorCode::InvalidPattern, 20).await;
    raw.send(&Subscribe {
        id: 21,
        sid: 1,
        pattern: "a.b".into(),
        group: Some("bad group".into()),
        filter: None,
    })
    .await;
    raw.expect_error(ErrorCode::InvalidQueueGroup, 21).await;
    raw.send(&Subscribe {
        id: 22,
        sid: 1,
        pattern: "a.b".into(),
        group: None,
        filter: Some("x >".into()),
    })
    .await;
    let e = raw.expect_error(ErrorCode::InvalidFilter, 22).await;
    assert!(e.message.contains("column 4"), "{}", e.message);
    raw.send(&Unsubscribe { id: 23, sid: 77 }).await;
    raw.expect_error(ErrorCode::UnknownSubscription, 23).await;
    raw.send(&subscribe(24, 5, "a.b")).await;
    raw.expect_ok(24).await;
    raw.send(&subscribe(25, 5, "c.d")).await;
    raw.expect_error(ErrorCode::SubscriptionIdInUse, 25).await;
    raw.send(&Unsubscribe { id: 26, sid: 5 }).await;
    raw.expect_ok(26).await;
    raw.send(&Unsubscribe { id: 27, sid: 5 }).await;
    raw.expect_error(ErrorCode::UnknownSubscription, 27).await;
    // A freed sid can be used again.
    raw.send(&subscribe(28, 5, "c.d")).await;
    raw.expect_ok(28).await;
    raw.ping_pong(3).await;
    assert_eq!(b.server.subscription_count(), 1);
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_until_one_closes() {
    let b = common::start_broker_with(|c| c.limits.max_connections = 2).await;
    let first = RawConn::greeted(b.addr).await;
    let mut second = RawConn::greeted(b.addr).await;

    let mut third = RawConn::connect(b.addr).await;
    let e = third.expect_error(ErrorCode::TooManyConnections, 0).await;
    assert!(e.message.contains('2'), "{e:?}");
    third.expect_eof().await;
    match within("refused client", Client::connect(b.url())).await {
        Err(tern::Error::Refused { code, .. }) => assert_eq!(code, "too_many_connections"),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(b.server.stats().connections_rejected >= 2);
    second.ping_pong(1).await;

    drop(first);
    let mut fourth = common::eventually("a slot to free up", || {
        let addr = b.addr;
        async move {
            let mut c = RawConn::connect(addr).await;
            // A refused socket may already be closed: a failed write is just a refusal.
            let hello = encode_all(&[Frame::Hello(tern_codec::Hello {
                version: tern_codec::PROTOCOL_VERSION,
                name: "fourth".into(),
                credentials: None,
            })]);
            if c.stream.write_all(&hello).await.is_err() {
                return None;
            }
            match c.recv().await {
                Some(Frame::Welcome(_)) => Some(c),
                // Refused: too_many_connections, or a reset while refusing.
                Some(Frame::Error(e)) if e.code() == Some(ErrorCode::TooManyConnections) => None,
                None => None,
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    fourth.ping_pong(2).await;
    second.ping_pong(3).await;
}
