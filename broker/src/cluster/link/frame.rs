//! The frames of the peer protocol: a pure codec, no I/O, no async (the layout is in
//! the parent module's doc). [`decode_frame`] is what the fuzz target `peer_frame`
//! drives.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::config::cluster::NodeId;

/// The first bytes of a HELLO body after its kind: tells a tern peer from anything else.
pub const MAGIC: [u8; 8] = *b"TERNPEER";

/// Bytes of the length prefix.
const LEN_PREFIX: usize = 4;
pub(super) const NONCE_LEN: usize = 32;
pub(super) const MAC_LEN: usize = 32;

pub(super) mod kind {
    pub const REQUEST: u8 = 0x01;
    pub const RESPONSE: u8 = 0x02;
    pub const HELLO: u8 = 0x10;
    pub const CHALLENGE: u8 = 0x11;
    pub const PROOF: u8 = 0x12;
    pub const WELCOME: u8 = 0x13;
    pub const REFUSED: u8 = 0x14;

    pub fn name(kind: u8) -> &'static str {
        match kind {
            REQUEST => "REQUEST",
            RESPONSE => "RESPONSE",
            HELLO => "HELLO",
            CHALLENGE => "CHALLENGE",
            PROOF => "PROOF",
            WELCOME => "WELCOME",
            REFUSED => "REFUSED",
            _ => "unknown",
        }
    }
}

/// One frame of the peer protocol (see the module doc for the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Challenge(Challenge),
    Proof(Proof),
    Welcome,
    /// Why the sender refuses the link, as it wrote it (UTF-8 unless it misbehaves).
    Refused(Bytes),
    Request {
        id: u64,
        body: Bytes,
    },
    /// `ok = false`: `body` is the handler's error text.
    Response {
        id: u64,
        ok: bool,
        body: Bytes,
    },
}

/// The client's opening frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub node_id: NodeId,
    pub nonce: [u8; NONCE_LEN],
}

/// The server's answer to HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub node_id: NodeId,
    pub nonce: [u8; NONCE_LEN],
    /// The server's proof of the secret; `None` when the link has no secret.
    pub mac: Option<[u8; MAC_LEN]>,
}

/// The client's proof of the secret; `mac` is `None` when the link has no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub mac: Option<[u8; MAC_LEN]>,
}

/// A frame that cannot be decoded or encoded. Any of these closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: u64, max: u32 },
    #[error("an empty frame")]
    Empty,
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("a {kind} frame is cut short: {need} bytes needed, {have} left")]
    Short {
        kind: &'static str,
        need: usize,
        have: usize,
    },
    #[error("a {kind} frame has {extra} bytes after its fields")]
    Trailing { kind: &'static str, extra: usize },
    #[error("a HELLO without the TERNPEER magic: not a tern peer")]
    BadMagic,
    #[error("a {kind} frame has flag byte {value}, not 0 or 1")]
    BadFlag { kind: &'static str, value: u8 },
}

/// The length of the frame at the start of `buf`, its 4-byte prefix included, once
/// that prefix has arrived; `Ok(None)` before. The body need not be complete.
///
/// # Errors
///
/// The announced length is 0 or over `max_frame`: checked here, before anything is
/// reserved for the body.
pub fn frame_len(buf: &[u8], max_frame: u32) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix);
    let too_large = FrameError::TooLarge {
        len: u64::from(len),
        max: max_frame,
    };
    if len > max_frame {
        return Err(too_large);
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    usize::try_from(len)
        .ok()
        .and_then(|len| len.checked_add(LEN_PREFIX))
        .map(Some)
        .ok_or(too_large)
}

/// Takes the first complete frame off `buf`. `Ok(None)`: more bytes are needed, and
/// `buf` is untouched. Payloads are zero-copy slices of `buf`'s memory.
///
/// Total: no input makes it panic, and a length over `max_frame` is an error before
/// the body is awaited (the fuzz target `peer_frame` drives this function).
///
/// # Errors
///
/// A bad length prefix (nothing is consumed), or a complete frame whose body is not a
/// valid frame (the frame is consumed).
pub fn decode_frame(buf: &mut BytesMut, max_frame: u32) -> Result<Option<Frame>, FrameError> {
    let Some(total) = frame_len(buf, max_frame)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    // `frame_len` returned at least LEN_PREFIX + 1 bytes, all of which are here.
    frame.advance(LEN_PREFIX);
    Frame::decode(frame.freeze()).map(Some)
}

/// Reads a frame body's fields in order, with checked lengths.
struct Fields {
    kind: u8,
    rest: Bytes,
}

impl Fields {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let Some(head) = self.rest.first_chunk::<N>() else {
            return Err(FrameError::Short {
                kind: kind::name(self.kind),
                need: N,
                have: self.rest.len(),
            });
        };
        let out = *head;
        // `first_chunk` just showed that N bytes remain.
        self.rest.advance(N);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        self.array().map(u64::from_be_bytes)
    }

    fn flag(&mut self) -> Result<bool, FrameError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(FrameError::BadFlag {
                kind: kind::name(self.kind),
                value,
            }),
        }
    }

    fn mac(&mut self) -> Result<Option<[u8; MAC_LEN]>, FrameError> {
        if self.flag()? {
            self.array().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Checks that nothing follows the fields: one encoding per frame.
    fn end(self) -> Result<(), FrameError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Trailing {
                kind: kind::name(self.kind),
                extra: self.rest.len(),
            })
        }
    }
}

fn mac_len(mac: &Option<[u8; MAC_LEN]>) -> usize {
    1 + mac.map_or(0, |m| m.len())
}

fn put_mac(dst: &mut BytesMut, mac: &Option<[u8; MAC_LEN]>) {
    match mac {
        None => dst.put_u8(0),
        Some(mac) => {
            dst.put_u8(1);
            dst.put_slice(mac);
        }
    }
}

impl Frame {
    /// Decodes a frame body (without its length prefix).
    ///
    /// # Errors
    ///
    /// The body is empty, of an unknown kind, shorter or longer than its fields, or a
    /// HELLO without the magic.
    pub fn decode(body: Bytes) -> Result<Frame, FrameError> {
        let mut f = Fields {
            kind: 0,
            rest: body,
        };
        f.kind = f.u8().map_err(|_| FrameError::Empty)?;
        let frame = match f.kind {
            kind::REQUEST => {
                let id = f.u64()?;
                return Ok(Frame::Request { id, body: f.rest });
            }
            kind::RESPONSE => {
                let id = f.u64()?;
                let ok = f.flag()?;
                return Ok(Frame::Response {
                    id,
                    ok,
                    body: f.rest,
                });
            }
            kind::REFUSED => return Ok(Frame::Refused(f.rest)),
            kind::HELLO => {
                if f.array::<{ MAGIC.len() }>()? != MAGIC {
                    return Err(FrameError::BadMagic);
                }
                Frame::Hello(Hello {
                    version: f.u16()?,
                    node_id: f.u64()?,
                    nonce: f.array()?,
                })
            }
            kind::CHALLENGE => Frame::Challenge(Challenge {
                node_id: f.u64()?,
                nonce: f.array()?,
                mac: f.mac()?,
            }),
            kind::PROOF => Frame::Proof(Proof { mac: f.mac()? }),
            kind::WELCOME => Frame::Welcome,
            other => return Err(FrameError::UnknownKind(other)),
        };
        f.end()?;
        Ok(frame)
    }

    /// The body's length: what the length prefix says.
    pub fn body_len(&self) -> usize {
        let fields = match self {
            Frame::Hello(_) => MAGIC.len() + 2 + 8 + NONCE_LEN,
            Frame::Challenge(c) => 8 + NONCE_LEN + mac_len(&c.mac),
            Frame::Proof(p) => mac_len(&p.mac),
            Frame::Welcome => 0,
            Frame::Refused(reason) => reason.len(),
            Frame::Request { body, .. } => body.len().saturating_add(8),
            Frame::Response { body, .. } => body.len().saturating_add(9),
        };
        fields.saturating_add(1)
    }

    fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => kind::HELLO,
            Frame::Challenge(_) => kind::CHALLENGE,
            Frame::Proof(_) => kind::PROOF,
            Frame::Welcome => kind::WELCOME,
            Frame::Refused(_) => kind::REFUSED,
            Frame::Request { .. } => kind::REQUEST,
            Frame::Response { .. } => kind::RESPONSE,
        }
    }

    /// The frame's name, for logs.
    pub fn name(&self) -> &'static str {
        kind::name(self.kind())
    }

    /// Appends the frame, length prefix included, to `dst`.
    ///
    /// # Errors
    ///
    /// The body is longer than `max_frame`; nothing is written.
    pub fn encode(&self, dst: &mut BytesMut, max_frame: u32) -> Result<(), FrameError> {
        let len = self.body_len();
        let prefix =
            u32::try_from(len)
                .ok()
                .filter(|l| *l <= max_frame)
                .ok_or(FrameError::TooLarge {
                    len: u64::try_from(len).unwrap_or(u64::MAX),
                    max: max_frame,
                })?;
        dst.reserve(len.saturating_add(LEN_PREFIX));
        dst.put_u32(prefix);
        dst.put_u8(self.kind());
        match self {
            Frame::Hello(h) => {
                dst.put_slice(&MAGIC);
                dst.put_u16(h.version);
                dst.put_u64(h.node_id);
                dst.put_slice(&h.nonce);
            }
            Frame::Challenge(c) => {
                dst.put_u64(c.node_id);
                dst.put_slice(&c.nonce);
                put_mac(dst, &c.mac);
            }
            Frame::Proof(p) => put_mac(dst, &p.mac),
            Frame::Welcome => {}
            Frame::Refused(reason) => dst.put_slice(reason),
            Frame::Request { id, body } => {
                dst.put_u64(*id);
                dst.put_slice(body);
            }
            Frame::Response { id, ok, body } => {
                dst.put_u64(*id);
                dst.put_u8(u8::from(*ok));
                dst.put_slice(body);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::link::{DEFAULT_MAX_FRAME, VERSION};

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                version: VERSION,
                node_id: 7,
                nonce: [0xaa; 32],
            }),
            Frame::Challenge(Challenge {
                node_id: u64::MAX,
                nonce: [1; 32],
                mac: Some([2; 32]),
            }),
            Frame::Challenge(Challenge {
                node_id: 0,
                nonce: [3; 32],
                mac: None,
            }),
            Frame::Proof(Proof { mac: Some([4; 32]) }),
            Frame::Proof(Proof { mac: None }),
            Frame::Welcome,
            Frame::Refused(Bytes::from_static(b"wrong secret")),
            Frame::Request {
                id: 1,
                body: Bytes::from_static(b"append entries"),
            },
            Frame::Request {
                id: u64::MAX,
                body: Bytes::new(),
            },
            Frame::Response {
                id: 2,
                ok: true,
                body: Bytes::from_static(b"ok"),
            },
            Frame::Response {
                id: 3,
                ok: false,
                body: Bytes::from_static(b"failed"),
            },
        ]
    }

    fn encoded(frame: &Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf, DEFAULT_MAX_FRAME).unwrap();
        buf
    }

    #[test]
    fn golden_bytes() {
        let hello = encoded(&Frame::Hello(Hello {
            version: 1,
            node_id: 2,
            nonce: [9; 32],
        }));
        let mut expected = vec![0, 0, 0, 51, 0x10];
        expected.extend_from_slice(b"TERNPEER");
        expected.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
        expected.extend_from_slice(&[9; 32]);
        assert_eq!(hello.as_ref(), expected.as_slice());

        let req = encoded(&Frame::Request {
            id: 258,
            body: Bytes::from_static(b"hi"),
        });
        assert_eq!(req.as_ref(), b"\0\0\0\x0b\x01\0\0\0\0\0\0\x01\x02hi");
        let resp = encoded(&Frame::Response {
            id: 1,
            ok: false,
            body: Bytes::from_static(b"no"),
        });
        assert_eq!(resp.as_ref(), b"\0\0\0\x0c\x02\0\0\0\0\0\0\0\x01\0no");
        assert_eq!(encoded(&Frame::Welcome).as_ref(), b"\0\0\0\x01\x13");
    }

    #[test]
    fn every_frame_round_trips_and_every_prefix_waits() {
        for frame in samples() {
            let bytes = encoded(&frame);
            assert_eq!(bytes.len(), frame.body_len() + LEN_PREFIX, "{frame:?}");
            for cut in 0..bytes.len() {
                let mut prefix = BytesMut::from(bytes.get(..cut).unwrap());
                assert_eq!(
                    decode_frame(&mut prefix, DEFAULT_MAX_FRAME),
                    Ok(None),
                    "{frame:?} cut at {cut}"
                );
                assert_eq!(
                    prefix.len(),
                    cut,
                    "nothing consumed before a frame is whole"
                );
            }
            let mut buf = bytes.clone();
            buf.extend_from_slice(&bytes);
            assert_eq!(
                decode_frame(&mut buf, DEFAULT_MAX_FRAME),
                Ok(Some(frame.clone()))
            );
            assert_eq!(decode_frame(&mut buf, DEFAULT_MAX_FRAME), Ok(Some(frame)));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let decode = |body: &[u8]| Frame::decode(Bytes::copy_from_slice(body));
        for frame in samples() {
            let body = encoded(&frame).split_off(LEN_PREFIX);
            // Cut short: an error for the fixed-size frames, never a panic for any.
            for cut in 0..body.len() {
                let result = decode(body.get(..cut).unwrap());
                if matches!(
                    frame,
                    Frame::Hello(_) | Frame::Challenge(_) | Frame::Proof(_)
                ) {
                    assert!(result.is_err(), "{frame:?} cut at {cut}: {result:?}");
                }
            }
            if !matches!(
                frame,
                Frame::Request { .. } | Frame::Response { .. } | Frame::Refused(_)
            ) {
                let mut longer = body.to_vec();
                longer.push(0);
                assert!(
                    matches!(decode(&longer), Err(FrameError::Trailing { extra: 1, .. })),
                    "{frame:?}"
                );
            }
        }
        assert_eq!(decode(b""), Err(FrameError::Empty));
        assert_eq!(decode(b"\x7f"), Err(FrameError::UnknownKind(0x7f)));
        assert_eq!(decode(b"\x10TERNPEEX"), Err(FrameError::BadMagic));
        assert!(matches!(
            decode(b"\x12\x02"),
            Err(FrameError::BadFlag { value: 2, .. })
        ));
        assert!(matches!(
            decode(b"\x02\0\0\0\0\0\0\0\x01\x07"),
            Err(FrameError::BadFlag { value: 7, .. })
        ));
        let mut zero = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(decode_frame(&mut zero, 16), Err(FrameError::Empty));
        let mut big = BytesMut::from(&[0u8, 0, 0, 17][..]);
        assert_eq!(
            decode_frame(&mut big, 16),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        let body = Bytes::from(vec![0; 16]);
        let frame = Frame::Request { id: 1, body };
        assert!(frame.encode(&mut BytesMut::new(), 25).is_ok());
        assert_eq!(
            frame.encode(&mut BytesMut::new(), 24),
            Err(FrameError::TooLarge { len: 25, max: 24 })
        );
    }
}
