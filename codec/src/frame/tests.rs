//! Unit tests for every frame: round trip, golden bytes, truncation at every byte,
//! body corruption, header checks, streams split at every point, encode errors.
//!
//! The golden byte vectors are written out by hand from the layouts in the module docs
//! (`hello.rs`, `control.rs`, `error.rs`, `publish.rs`, `subscribe.rs`, `headers.rs`),
//! so a change to the wire format fails here first. `codec/PROTOCOL.md` quotes the same
//! bytes in its worked example, and `codec/fuzz/corpus/decode/` holds them as seeds
//! (see [`fuzz_seed_files_match_golden_frames`]).

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

fn publish(id: u32, qos: Qos, env: Envelope) -> Frame {
    Frame::Publish(Publish {
        id,
        qos,
        envelope: env,
    })
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
        _ => None,
    }
}

fn with_payload(frame: &Frame, payload: Bytes) -> Frame {
    let mut f = frame.clone();
    match &mut f {
        Frame::Publish(p) => p.envelope.payload = payload,
        Frame::Message(m) => m.envelope.payload = payload,
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
    let mut envelopes: Vec<(u32, Envelope)> = Vec::new();
    for frame in samples() {
        match frame {
            Frame::Message(m) => envelopes.push((m.sid, m.envelope)),
            Frame::Publish(p) => envelopes.push((p.id ^ 0x5a5a, p.envelope)),
            _ => {}
        }
    }
    assert!(envelopes.len() > 4);
    for (n, envelope) in envelopes {
        let want = encode(&Frame::Message(Message {
            sid: n,
            envelope: envelope.clone(),
        }));
        let mut got = BytesMut::from(&b"prefix"[..]);
        Message::encode_parts(n, envelope.as_ref(), &mut got).unwrap();
        assert_eq!(&got[..6], b"prefix");
        assert_eq!(&got[6..], &want[..], "sid {n} {envelope:?}");
        assert_eq!(Message::parts_len(envelope.as_ref()), want.len());

        let want = encode(&Frame::Publish(Publish {
            id: n,
            qos: Qos::ExactlyOnce,
            envelope: envelope.clone(),
        }));
        let mut got = BytesMut::from(&b"prefix"[..]);
        Publish::encode_parts(n, Qos::ExactlyOnce, envelope.as_ref(), &mut got).unwrap();
        assert_eq!(&got[6..], &want[..], "id {n} {envelope:?}");
        assert_eq!(Publish::parts_len(envelope.as_ref()), want.len());
    }
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
    let mut buf = BytesMut::new();
    Publish::encode_parts(2, Qos::AtMostOnce, parts, &mut buf).unwrap();
    assert_eq!(&buf[..], GOLDEN_PUBLISH);
    let mut buf = BytesMut::new();
    Message::encode_parts(1, parts, &mut buf).unwrap();
    assert_eq!(&buf[..], GOLDEN_MESSAGE);
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

/// The seed corpus of the fuzz target is these golden frames (one file each, plus the
/// whole worked-example conversation in one file). This test keeps the committed files
/// in step with the constants; `write_fuzz_seed_files` rewrites them.
fn fuzz_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = goldens()
        .into_iter()
        .map(|(name, bytes, _)| (format!("golden_{name}"), bytes.to_vec()))
        .collect();
    let conversation: Vec<u8> = GOLDEN_CONVERSATION.concat();
    seeds.push(("conversation".to_owned(), conversation));
    // An unknown type (skipped whole) followed by a PING, and a frame cut short.
    let mut unknown = vec![0, 0, 0, 3, 0x7f, 0xaa, 0xbb];
    unknown.extend_from_slice(&[0, 0, 0, 5, 0x03, 0, 0, 0, 9]);
    seeds.push(("unknown_then_ping".to_owned(), unknown));
    seeds.push((
        "partial_publish".to_owned(),
        GOLDEN_PUBLISH[..GOLDEN_PUBLISH.len() - 5].to_vec(),
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
    // Fewer than five bytes is still "need more", even if they are zeros.
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert_eq!(decode_default(&mut buf), Result::Ok(None));
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
    for code in [0x00u8, 0x07, 0x14, 0x20, 0x30, 0x40, 0x7f, 0xff] {
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
        Frame::Publish(Publish {
            id: 1,
            qos: Qos::AtMostOnce,
            envelope: env.clone(),
        })
        .encode(&mut dst),
        Err(EncodeError::StringTooLong {
            field: "header value",
            len: 70_000,
        })
    );
    assert_eq!(&dst[..], before);
    assert!(Message::encode_parts(1, env.as_ref(), &mut dst).is_err());
    assert_eq!(&dst[..], before);
    assert!(Publish::encode_parts(1, Qos::AtLeastOnce, env.as_ref(), &mut dst).is_err());
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
