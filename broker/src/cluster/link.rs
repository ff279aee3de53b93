//! Authenticated, framed request/response links between cluster nodes.
//!
//! The Raft layer hands a [`Peer`] opaque request bytes and awaits opaque response
//! bytes; [`serve`] runs the other end and passes each request to a [`Handler`]. One
//! connection from a caller to a peer carries many calls at once, matched by id, so a
//! slow snapshot transfer does not hold up heartbeats. The link knows nothing of Raft.
//!
//! # Wire format
//!
//! Every frame is a big-endian length and a body of that many bytes, whose first byte
//! is the kind. Until the handshake has succeeded a frame may hold at most
//! [`HANDSHAKE_MAX_FRAME`] bytes, so an unauthenticated stranger cannot make a node
//! buffer more than that; afterwards at most `max_frame` ([`DEFAULT_MAX_FRAME`]). A
//! longer length, an unknown kind or a malformed body closes the connection.
//!
//! ```text
//! frame     = len:u32 | body                      1 ≤ len ≤ limit; integers big-endian
//! 0x10 HELLO     "TERNPEER" | version:u16 (1) | node_id:u64 | nonce[32]   client → server
//! 0x11 CHALLENGE node_id:u64 | nonce[32] | has_mac:u8 (0|1) | mac[32] if 1 server → client
//! 0x12 PROOF     has_mac:u8 (0|1) | mac[32] if 1                           client → server
//! 0x13 WELCOME   (empty)                                                   server → client
//! 0x14 REFUSED   reason (UTF-8), then the sender closes                    either way
//! 0x01 REQUEST   id:u64 | payload                                          client → server
//! 0x02 RESPONSE  id:u64 | ok:u8 (1 ok, 0 failed) | payload, or the error   server → client
//! ```
//!
//! # Handshake
//!
//! Right after connecting (after the TLS handshake when TLS is on), within
//! `connect_timeout` on both sides (a silent peer is dropped):
//!
//! 1. The client sends HELLO with its node id and a fresh random nonce.
//! 2. The server answers CHALLENGE with its own id, its nonce and, when a secret is set,
//!    `HMAC-SHA256(secret, "tern-peer-server" | client_nonce | server_nonce | client_id
//!    | server_id [| tls_binding])`.
//! 3. The client checks that the server is the node it meant to reach (a wrong address
//!    must not silently talk to another node) and the server's mac, then sends PROOF:
//!    `HMAC-SHA256(secret, "tern-peer-client" | server_nonce | client_nonce | client_id
//!    | server_id [| tls_binding])`.
//! 4. The server checks the proof and answers WELCOME, or REFUSED and closes.
//!
//! Either side that refuses sends REFUSED with the reason (so the other side's log says
//! why) and closes. Macs are compared in constant time. With TLS, `tls_binding` is 32
//! bytes of keying material exported from the TLS session (label
//! [`EXPORTER_LABEL`]): a relay that terminates TLS cannot splice a handshake between
//! two sessions. With TLS and no secret, mutual TLS alone authenticates: the macs are
//! left out (`has_mac = 0`) and the ids are only exchanged. With neither, a link is
//! refused: peer links must authenticate.
//!
//! With TLS alone a node's id is only its word: any certificate the CA signed (a user's
//! client certificate too, if the same CA signs those) can join as any node id. Set a
//! secret as well, or give the cluster a CA of its own.
//!
//! # Requests
//!
//! After WELCOME the client sends REQUEST frames and the server answers each with a
//! RESPONSE of the same id, in whatever order the handlers finish. Each request runs in
//! its own task; at most [`MAX_IN_FLIGHT`] per connection, after which the server stops
//! reading the socket, so a flood of requests backs up into TCP instead of into memory.
//! Each connection's writes are one task fed by a bounded channel.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use rustls::pki_types::ServerName;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::cluster::{ClusterConfig, NodeId, MIN_SECRET_BYTES};
use crate::tls::TlsError;

/// Largest frame body after the handshake by default: room for a snapshot chunk.
pub const DEFAULT_MAX_FRAME: u32 = 64 * 1024 * 1024;
/// Largest frame body before the handshake has succeeded. The largest handshake body
/// (CHALLENGE with a mac) is 74 bytes; the rest is room for a REFUSED reason.
pub const HANDSHAKE_MAX_FRAME: u32 = 1024;
/// Default bound on connecting, the TLS handshake and the link handshake together.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default silence after which a connection with calls outstanding is presumed dead.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(5);
/// Requests one accepted connection may have in its handlers at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// The label of the TLS keying material that binds the handshake macs to the session.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-tern-peer";
/// The handshake's version; a server refuses any other.
pub const VERSION: u16 = 1;
/// The first bytes of a HELLO body after its kind: tells a tern peer from anything else.
pub const MAGIC: [u8; 8] = *b"TERNPEER";

/// Connections [`serve`] holds open at once, authenticated or not. Cluster peers need a
/// handful; the bound keeps a flood of strangers from exhausting file descriptors.
const MAX_CONNECTIONS: usize = 256;
/// Bytes of the length prefix.
const LEN_PREFIX: usize = 4;
/// A RESPONSE's kind, id and ok byte: what a frame holds besides the payload (a
/// REQUEST holds one byte less).
const RESPONSE_HEADER: u32 = 10;
const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;
/// Longest REFUSED reason sent: far inside [`HANDSHAKE_MAX_FRAME`].
const MAX_REASON: usize = 256;
/// Bytes reserved per socket read. The buffer grows only as bytes arrive, never to
/// the length a frame announces.
const READ_CHUNK: usize = 64 * 1024;
/// The writer gathers queued frames up to about this many bytes into one write.
const WRITE_BATCH: usize = 256 * 1024;
/// A write buffer grown past this (by a large frame) is released after the write, so
/// an idle connection does not keep a snapshot chunk's worth of memory.
const KEEP_BUFFER: usize = 1024 * 1024;
/// First and largest pause before reconnecting to a peer that could not be reached.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (out of file descriptors, say), so the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

mod kind {
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

type HmacSha256 = Hmac<Sha256>;

// ---------------------------------------------------------------------------------
// Frames: a pure codec, no I/O.
// ---------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------
// Configuration and errors.
// ---------------------------------------------------------------------------------

/// How this node's links authenticate and how large and patient they are. Shared by
/// [`serve`] and every [`Peer`].
pub struct LinkConfig {
    pub node_id: NodeId,
    /// The secret every node shares; at least [`MIN_SECRET_BYTES`] when set.
    pub secret: Option<Vec<u8>>,
    /// Mutual TLS on every link, if set.
    pub tls: Option<LinkTls>,
    /// Largest frame body after the handshake; see [`LinkConfig::max_payload`].
    pub max_frame: u32,
    /// Bound on connecting plus both handshakes, on either side.
    pub connect_timeout: Duration,
    /// A connection on which calls have been waiting this long while nothing at all
    /// came back is presumed dead (a peer that vanished without a FIN leaves TCP
    /// waiting for many minutes) and replaced at the next call.
    pub dead_after: Duration,
}

/// The two TLS sides of a node's links: every node accepts and connects, with the same
/// certificate, each checking the other against the cluster's CA.
#[derive(Clone)]
pub struct LinkTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkConfig")
            .field("node_id", &self.node_id)
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .field("tls", &self.tls.is_some())
            .field("max_frame", &self.max_frame)
            .field("connect_timeout", &self.connect_timeout)
            .field("dead_after", &self.dead_after)
            .finish()
    }
}

impl LinkConfig {
    /// The link settings of a validated `[cluster]`, with the default limits.
    ///
    /// # Errors
    ///
    /// The TLS files cannot be read or hold nothing usable.
    pub fn from_cluster(c: &ClusterConfig) -> Result<Self, TlsError> {
        let tls = match &c.tls {
            None => None,
            Some(files) => Some(LinkTls {
                server: Arc::new(files.load()?),
                client: Arc::new(files.load_client()?),
            }),
        };
        Ok(Self {
            node_id: c.node_id,
            secret: c.secret.clone(),
            tls,
            max_frame: DEFAULT_MAX_FRAME,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            dead_after: DEFAULT_DEAD_AFTER,
        })
    }

    /// The largest request or response payload a link carries: `max_frame` less the
    /// frame's own fields. Callers split anything larger (snapshots) into chunks.
    pub fn max_payload(&self) -> usize {
        usize::try_from(self.max_frame.saturating_sub(RESPONSE_HEADER)).unwrap_or(usize::MAX)
    }

    /// Refuses to run a link that would authenticate nothing. `ClusterConfig`
    /// validation already ensures this; `LinkConfig`'s fields are public, so check again.
    fn check_auth(&self) -> Result<(), LinkError> {
        match (&self.secret, &self.tls) {
            (None, None) => Err(LinkError::Refused(
                "neither a cluster secret nor TLS is configured: peer links must authenticate"
                    .into(),
            )),
            (Some(s), _) if s.len() < MIN_SECRET_BYTES => Err(LinkError::Refused(format!(
                "the cluster secret has {} bytes, fewer than {MIN_SECRET_BYTES}",
                s.len()
            ))),
            _ => Ok(()),
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Could not connect, or the connection broke: the peer may be down. A request
    /// that was already sent may or may not have been handled.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer within the call's timeout. The request may still be handled; its late
    /// answer is discarded.
    #[error("no answer in time")]
    Timeout,
    /// Authentication failed, the peer is not the node expected at that address, or it
    /// does not speak this protocol: a configuration problem, logged where it happens.
    /// Calls fail with it until a reconnect (after a backoff) succeeds.
    #[error("refused: {0}")]
    Refused(String),
    /// The peer's handler returned this error.
    #[error("the peer's handler failed: {0}")]
    Remote(String),
    /// The request is larger than [`LinkConfig::max_payload`]; nothing was sent.
    #[error("a request of {len} bytes is over the link's limit of {max}")]
    TooLarge { len: usize, max: usize },
}

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the connection closed in the middle of a frame")]
    Truncated,
}

/// A failed read or write during the handshake. A TLS failure (an unknown CA, a
/// rejected certificate) is an authentication failure, not a network one.
fn io_error(e: io::Error) -> LinkError {
    match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(tls) => LinkError::Refused(format!("TLS: {tls}")),
        None => LinkError::Unreachable(e.to_string()),
    }
}

/// A failed read during the handshake: a malformed frame means the other end is not a
/// tern peer (or not this version), which no retry fixes.
fn handshake_read_error(e: ReadError) -> LinkError {
    match e {
        ReadError::Io(e) => io_error(e),
        ReadError::Frame(e) => LinkError::Refused(format!("protocol: {e}")),
        ReadError::Truncated => LinkError::Unreachable(e.to_string()),
    }
}

// ---------------------------------------------------------------------------------
// Connections: frames in and out of a socket.
// ---------------------------------------------------------------------------------

/// A connection's byte stream, plain TCP or TLS.
trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}

type Reader = FrameReader<ReadHalf<Box<dyn PeerIo>>>;
type Writer = WriteHalf<Box<dyn PeerIo>>;

/// Decodes frames from a read half. Kept from the handshake into the request phase, so
/// bytes read ahead are not lost.
struct FrameReader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(io: R) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// The next frame; `Ok(None)` when the peer closed cleanly between frames.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: bytes read stay in the buffer and a frame is taken off it only
    /// when complete.
    async fn read_frame(&mut self, max_frame: u32) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = decode_frame(&mut self.buf, max_frame)? {
                return Ok(Some(frame));
            }
            // A chunk at a time, whatever length the prefix announces: memory follows
            // the bytes that arrive, so four bytes cannot make this side allocate
            // `max_frame`.
            self.buf.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated)
                };
            }
        }
    }
}

/// Writes one frame and flushes it: for the handshake, before the writer task exists.
async fn send<W: AsyncWrite + Unpin>(io: &mut W, frame: &Frame) -> Result<(), LinkError> {
    let mut buf = BytesMut::new();
    frame
        .encode(&mut buf, HANDSHAKE_MAX_FRAME)
        .map_err(|e| LinkError::Unreachable(e.to_string()))?;
    io.write_all(&buf).await.map_err(io_error)?;
    io.flush().await.map_err(io_error)
}

/// The writer task of a connection: writes frames from `rx` until it closes, a write
/// fails or `stop` is cancelled, then cancels `stop` so that the reader ends too.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut io: W,
    mut rx: mpsc::Receiver<Frame>,
    max_frame: u32,
    stop: CancellationToken,
) {
    let mut buf = BytesMut::new();
    let end = 'connection: loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break "stopped".to_string(),
            f = rx.recv() => f,
        };
        let Some(mut frame) = first else {
            break "no more frames".to_string();
        };
        // Everything already queued goes out in the same write.
        loop {
            // Callers check payloads against `max_payload`, so this fails only on a bug.
            if let Err(e) = frame.encode(&mut buf, max_frame) {
                break 'connection format!("cannot send a {} frame: {e}", frame.name());
            }
            if buf.len() >= WRITE_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(next) => frame = next,
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            _ = stop.cancelled() => break "stopped".to_string(),
            r = async {
                io.write_all(&buf).await?;
                io.flush().await
            } => r,
        };
        if let Err(e) = written {
            break format!("write failed: {e}");
        }
        buf.clear();
        if buf.capacity() > KEEP_BUFFER {
            buf = BytesMut::new();
        }
    };
    debug!(reason = %end, "peer link writer ended");
    stop.cancel();
}

/// 32 bytes from the operating system's generator: nonces must be unpredictable, or
/// an old handshake could be replayed.
fn nonce() -> Result<[u8; NONCE_LEN], LinkError> {
    let mut out = [0; NONCE_LEN];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut out)
        .map_err(|_| LinkError::Unreachable("no random bytes for a nonce".into()))?;
    Ok(out)
}

/// A REFUSED frame with `reason`, cut to [`MAX_REASON`] bytes at a character boundary.
fn refused_frame(reason: &str) -> Frame {
    let cut = (0..=reason.len().min(MAX_REASON))
        .rev()
        .find(|i| reason.is_char_boundary(*i))
        .unwrap_or(0);
    let kept = reason.get(..cut).unwrap_or_default();
    Frame::Refused(Bytes::copy_from_slice(kept.as_bytes()))
}

/// Tells the other side why, then fails with [`LinkError::Refused`].
async fn refuse<W: AsyncWrite + Unpin, T>(io: &mut W, reason: String) -> Result<T, LinkError> {
    // Best effort: the reason is for the other side's log; this side's error stands.
    if let Err(e) = send(io, &refused_frame(&reason)).await {
        debug!(error = %e, "could not send REFUSED");
    }
    Err(LinkError::Refused(reason))
}

// ---------------------------------------------------------------------------------
// Handshake.
// ---------------------------------------------------------------------------------

/// Which side a mac proves: the labels differ, so one side's mac is never the other's.
#[derive(Clone, Copy)]
enum Side {
    Server,
    Client,
}

/// Everything both macs cover. All fields have fixed lengths, and whether the TLS
/// binding is present is fixed by configuration, so the input is unambiguous.
struct Transcript {
    client_nonce: [u8; NONCE_LEN],
    server_nonce: [u8; NONCE_LEN],
    client_id: NodeId,
    server_id: NodeId,
    tls_binding: Option<[u8; 32]>,
}

impl Transcript {
    fn hmac(&self, secret: &[u8], side: Side) -> Result<HmacSha256, LinkError> {
        let mut mac = HmacSha256::new_from_slice(secret)
            .map_err(|e| LinkError::Refused(format!("unusable cluster secret: {e}")))?;
        match side {
            Side::Server => {
                mac.update(b"tern-peer-server");
                mac.update(&self.client_nonce);
                mac.update(&self.server_nonce);
            }
            Side::Client => {
                mac.update(b"tern-peer-client");
                mac.update(&self.server_nonce);
                mac.update(&self.client_nonce);
            }
        }
        mac.update(&self.client_id.to_be_bytes());
        mac.update(&self.server_id.to_be_bytes());
        if let Some(binding) = &self.tls_binding {
            mac.update(binding);
        }
        Ok(mac)
    }

    fn sign(&self, secret: &[u8], side: Side) -> Result<[u8; MAC_LEN], LinkError> {
        Ok(self.hmac(secret, side)?.finalize().into_bytes().into())
    }

    /// Compares in constant time (`hmac`'s `verify_slice`).
    fn verify(&self, secret: &[u8], side: Side, mac: &[u8; MAC_LEN]) -> Result<bool, LinkError> {
        Ok(self.hmac(secret, side)?.verify_slice(mac).is_ok())
    }
}

/// Reads the next handshake frame; a REFUSED from the other side becomes
/// [`LinkError::Refused`] with its reason.
async fn read_handshake<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    expecting: &str,
) -> Result<Frame, LinkError> {
    match reader.read_frame(HANDSHAKE_MAX_FRAME).await {
        Ok(Some(Frame::Refused(reason))) => Err(LinkError::Refused(format!(
            "the peer refused: {}",
            String::from_utf8_lossy(&reason)
        ))),
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(LinkError::Unreachable(format!(
            "the connection closed while waiting for {expecting}"
        ))),
        Err(e) => Err(handshake_read_error(e)),
    }
}

/// The client's half of the handshake: proves this node to `target` and checks that
/// the server is `target` and knows the secret.
async fn client_handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    config: &LinkConfig,
    target: NodeId,
    tls_binding: Option<[u8; 32]>,
) -> Result<(), LinkError> {
    let client_nonce = nonce()?;
    let hello = Hello {
        version: VERSION,
        node_id: config.node_id,
        nonce: client_nonce,
    };
    send(writer, &Frame::Hello(hello)).await?;
    let challenge = match read_handshake(reader, "CHALLENGE").await? {
        Frame::Challenge(c) => c,
        other => return refuse(writer, format!("expected CHALLENGE, got {}", other.name())).await,
    };
    if challenge.node_id != target {
        let reason = format!(
            "expected node {target} at this address, found node {}",
            challenge.node_id
        );
        return refuse(writer, reason).await;
    }
    let transcript = Transcript {
        client_nonce,
        server_nonce: challenge.nonce,
        client_id: config.node_id,
        server_id: target,
        tls_binding,
    };
    let proof = match (&config.secret, &challenge.mac) {
        (Some(secret), Some(mac)) => {
            if !transcript.verify(secret, Side::Server, mac)? {
                let reason = format!("node {target} does not know the cluster secret");
                return refuse(writer, reason).await;
            }
            Some(transcript.sign(secret, Side::Client)?)
        }
        (Some(_), None) => {
            let reason = format!("node {target} has no cluster secret, this node has one");
            return refuse(writer, reason).await;
        }
        (None, Some(_)) => {
            let reason = format!("node {target} has a cluster secret, this node has none");
            return refuse(writer, reason).await;
        }
        (None, None) => None,
    };
    send(writer, &Frame::Proof(Proof { mac: proof })).await?;
    match read_handshake(reader, "WELCOME").await? {
        Frame::Welcome => Ok(()),
        other => refuse(writer, format!("expected WELCOME, got {}", other.name())).await,
    }
}

/// The server's half of the handshake; returns the authenticated client's node id.
async fn server_handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    config: &LinkConfig,
    tls_binding: Option<[u8; 32]>,
) -> Result<NodeId, LinkError> {
    let hello = match read_handshake(reader, "HELLO").await? {
        Frame::Hello(h) => h,
        other => return refuse(writer, format!("expected HELLO, got {}", other.name())).await,
    };
    if hello.version != VERSION {
        let reason = format!(
            "handshake version {} is not supported; this node speaks {VERSION}",
            hello.version
        );
        return refuse(writer, reason).await;
    }
    if hello.node_id == config.node_id {
        let reason = format!("node id {} is this node's own", hello.node_id);
        return refuse(writer, reason).await;
    }
    let transcript = Transcript {
        client_nonce: hello.nonce,
        server_nonce: nonce()?,
        client_id: hello.node_id,
        server_id: config.node_id,
        tls_binding,
    };
    let mac = match &config.secret {
        Some(secret) => Some(transcript.sign(secret, Side::Server)?),
        None => None,
    };
    let challenge = Challenge {
        node_id: config.node_id,
        nonce: transcript.server_nonce,
        mac,
    };
    send(writer, &Frame::Challenge(challenge)).await?;
    let proof = match read_handshake(reader, "PROOF").await? {
        Frame::Proof(p) => p,
        other => return refuse(writer, format!("expected PROOF, got {}", other.name())).await,
    };
    let client = hello.node_id;
    match (&config.secret, &proof.mac) {
        (Some(secret), Some(mac)) => {
            if !transcript.verify(secret, Side::Client, mac)? {
                let reason = format!("node {client} does not know the cluster secret");
                return refuse(writer, reason).await;
            }
        }
        (Some(_), None) => {
            let reason = format!("node {client} has no cluster secret, this node has one");
            return refuse(writer, reason).await;
        }
        (None, Some(_)) => {
            let reason = format!("node {client} has a cluster secret, this node has none");
            return refuse(writer, reason).await;
        }
        (None, None) => {}
    }
    send(writer, &Frame::Welcome).await?;
    Ok(client)
}

// ---------------------------------------------------------------------------------
// The accepting side.
// ---------------------------------------------------------------------------------

/// The future a [`Handler`] returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send + 'static>>;

/// What the accepting side does with each request.
pub trait Handler: Send + Sync + 'static {
    /// Answers `request` from the authenticated node `from`. An `Err` reaches the
    /// caller as [`LinkError::Remote`]. The future is dropped, unfinished, when the
    /// connection ends (the caller has gone) or at shutdown. A panic is not caught: the
    /// call then times out on the calling side.
    fn handle(&self, from: NodeId, request: Bytes) -> HandlerFuture;
}

/// Accepts peer connections on `listener` until `shutdown` is cancelled, then closes
/// every connection, drops their unfinished handlers and returns.
///
/// Each connection must complete the handshake within `connect_timeout`; afterwards it
/// serves many concurrent requests, each in its own task, writing responses as they
/// complete. Refused and failed handshakes are logged; nothing here returns an error.
pub async fn serve(
    listener: TcpListener,
    config: Arc<LinkConfig>,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) {
    if let Err(e) = config.check_auth() {
        warn!(error = %e, "peer links not served");
        return;
    }
    let tasks = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&slots).acquire_owned() => p,
        };
        // The semaphore is never closed.
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "peer link accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                }
            }
        };
        let connection = Connection {
            remote,
            config: Arc::clone(&config),
            handler: Arc::clone(&handler),
            tasks: tasks.clone(),
            stop: shutdown.child_token(),
        };
        tasks.spawn(async move {
            let _slot = permit;
            connection.run(tcp).await;
        });
    }
    // Stop listening before waiting, so that peers get "connection refused" at once.
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

/// One accepted connection.
struct Connection {
    remote: SocketAddr,
    config: Arc<LinkConfig>,
    handler: Arc<dyn Handler>,
    /// `serve`'s tracker: request tasks are waited for at shutdown like connections.
    tasks: TaskTracker,
    /// Cancelled at shutdown or when this connection ends; ends its writer and handlers.
    stop: CancellationToken,
}

impl Connection {
    async fn run(self, tcp: TcpStream) {
        let remote = self.remote;
        let accepted = tokio::select! {
            _ = self.stop.cancelled() => return,
            r = tokio::time::timeout(self.config.connect_timeout, self.accept(tcp)) => r,
        };
        let (reader, writer, from) = match accepted {
            Err(_) => {
                let timeout = self.config.connect_timeout;
                debug!(%remote, ?timeout, "peer link: no handshake in time, closed");
                return;
            }
            Ok(Err(LinkError::Refused(reason))) => {
                warn!(%remote, %reason, "peer link refused");
                return;
            }
            Ok(Err(e)) => {
                debug!(%remote, error = %e, "peer link handshake failed");
                return;
            }
            Ok(Ok(accepted)) => accepted,
        };
        debug!(%remote, node = from, "peer link accepted");
        let reason = self.serve_requests(reader, writer, from).await;
        debug!(%remote, node = from, %reason, "peer link closed");
        self.stop.cancel();
    }

    /// TLS (when on) and the handshake.
    async fn accept(&self, tcp: TcpStream) -> Result<(Reader, Writer, NodeId), LinkError> {
        tcp.set_nodelay(true).map_err(io_error)?;
        let (io, tls_binding): (Box<dyn PeerIo>, _) = match &self.config.tls {
            None => (Box::new(tcp), None),
            Some(tls) => {
                let stream = TlsAcceptor::from(Arc::clone(&tls.server))
                    .accept(tcp)
                    .await
                    .map_err(io_error)?;
                let binding = stream
                    .get_ref()
                    .1
                    .export_keying_material([0; 32], EXPORTER_LABEL, None)
                    .map_err(|e| LinkError::Refused(format!("TLS exporter: {e}")))?;
                (Box::new(stream), Some(binding))
            }
        };
        let (r, mut writer) = tokio::io::split(io);
        let mut reader = FrameReader::new(r);
        let from = server_handshake(&mut reader, &mut writer, &self.config, tls_binding).await?;
        Ok((reader, writer, from))
    }

    /// Reads requests and starts a task for each until the connection ends; returns
    /// why it ended.
    async fn serve_requests(&self, mut reader: Reader, writer: Writer, from: NodeId) -> String {
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let max_frame = self.config.max_frame;
        self.tasks
            .spawn(write_frames(writer, rx, max_frame, self.stop.clone()));
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        loop {
            // At the bound, stop reading: the peer's requests wait in TCP, not here.
            let permit = tokio::select! {
                _ = self.stop.cancelled() => return "closed".into(),
                p = Arc::clone(&in_flight).acquire_owned() => p,
            };
            let Ok(permit) = permit else {
                return "closed".into();
            };
            let frame = tokio::select! {
                _ = self.stop.cancelled() => return "closed".into(),
                f = reader.read_frame(max_frame) => f,
            };
            let (id, body) = match frame {
                Ok(Some(Frame::Request { id, body })) => (id, body),
                Ok(Some(other)) => return format!("unexpected {} frame", other.name()),
                Ok(None) => return "the peer closed the connection".into(),
                Err(e) => return e.to_string(),
            };
            let call = self.handler.handle(from, body);
            let tx = tx.clone();
            let stop = self.stop.clone();
            let max_payload = self.config.max_payload();
            self.tasks.spawn(async move {
                let _permit = permit;
                let result = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = call => r,
                };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    sent = tx.send(response(id, result, max_payload)) => {
                        if sent.is_err() {
                            debug!(node = from, id, "peer link closed before the response");
                        }
                    }
                }
            });
        }
    }
}

/// The RESPONSE for a handler's result. An answer too large to send becomes an error,
/// and an error text is cut to fit, so that every call gets an answer.
fn response(id: u64, result: Result<Bytes, String>, max_payload: usize) -> Frame {
    let error = match result {
        Ok(body) if body.len() <= max_payload => {
            return Frame::Response { id, ok: true, body };
        }
        Ok(body) => format!(
            "a response of {} bytes is over the link's limit of {max_payload}",
            body.len()
        ),
        Err(e) => e,
    };
    let cut = (0..=error.len().min(max_payload))
        .rev()
        .find(|i| error.is_char_boundary(*i))
        .unwrap_or(0);
    let body = Bytes::copy_from_slice(error.get(..cut).unwrap_or_default().as_bytes());
    Frame::Response {
        id,
        ok: false,
        body,
    }
}

// ---------------------------------------------------------------------------------
// The calling side.
// ---------------------------------------------------------------------------------

/// The calling side towards one peer: connects at the first call, reconnects after a
/// failure (with a backoff that grows from 50 ms to 2 s), and multiplexes concurrent
/// calls over one connection. Clones share the connection; it closes when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Peer {
    inner: Arc<PeerInner>,
}

struct PeerInner {
    config: Arc<LinkConfig>,
    target: NodeId,
    /// `host:port` as configured: resolved at every connect, and the TLS server name.
    addr: String,
    /// A tokio `Mutex` because it is held across connecting: concurrent callers wait
    /// for the one attempt instead of each dialling.
    state: tokio::sync::Mutex<PeerState>,
    /// Parent of every connection's stop token; cancelled when the last clone of the
    /// `Peer` is dropped, so that no connection outlives its users.
    dropped: CancellationToken,
}

#[derive(Default)]
struct PeerState {
    /// The current connection; replaced when it has closed.
    conn: Option<Arc<Conn>>,
    /// Failed connects in a row, for the backoff.
    failures: u32,
    /// Until when calls fail at once with the last connect error instead of dialling.
    retry: Option<(Instant, LinkError)>,
}

impl Drop for PeerInner {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("target", &self.inner.target)
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// A link to node `target` at `addr` (`host:port`). Connects at the first call.
    pub fn new(config: Arc<LinkConfig>, target: NodeId, addr: String) -> Self {
        Self {
            inner: Arc::new(PeerInner {
                config,
                target,
                addr,
                state: tokio::sync::Mutex::new(PeerState::default()),
                dropped: CancellationToken::new(),
            }),
        }
    }

    /// The node this link reaches.
    pub fn target(&self) -> NodeId {
        self.inner.target
    }

    /// Sends `request` and waits for the answer, connecting first if needed; the whole
    /// call, connecting included, is bounded by `timeout`.
    ///
    /// # Errors
    ///
    /// See [`LinkError`]; an error never leaves the link unusable for later calls.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a dropped call's answer is discarded when it arrives.
    pub async fn call(&self, request: Bytes, timeout: Duration) -> Result<Bytes, LinkError> {
        let max = self.inner.config.max_payload();
        if request.len() > max {
            return Err(LinkError::TooLarge {
                len: request.len(),
                max,
            });
        }
        let mut used = None;
        let result = tokio::time::timeout(timeout, self.exchange(request, &mut used)).await;
        match result {
            Ok(result) => result,
            Err(_) => {
                if let Some(conn) = used {
                    conn.close_if_silent(self.inner.config.dead_after, self.inner.target);
                }
                Err(LinkError::Timeout)
            }
        }
    }

    async fn exchange(
        &self,
        request: Bytes,
        used: &mut Option<Arc<Conn>>,
    ) -> Result<Bytes, LinkError> {
        let conn = self.inner.connection().await?;
        *used = Some(Arc::clone(&conn));
        let (id, answer) = conn.register()?;
        // Forgets the call if this future is dropped (a timeout): its answer, should it
        // come, then finds no one waiting and is discarded.
        let _waiting = Waiting { conn: &conn, id };
        let frame = Frame::Request { id, body: request };
        if conn.outgoing.send(frame).await.is_err() {
            return Err(conn.broken());
        }
        answer.await.unwrap_or_else(|_| Err(conn.broken()))
    }
}

impl PeerInner {
    /// The open connection, or a new one.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a connect in progress is abandoned and the next caller starts anew.
    async fn connection(&self) -> Result<Arc<Conn>, LinkError> {
        let mut state = self.state.lock().await;
        if let Some(conn) = state.conn.as_ref().filter(|c| c.is_open()) {
            return Ok(Arc::clone(conn));
        }
        state.conn = None;
        if let Some((until, error)) = &state.retry {
            if Instant::now() < *until {
                return Err(error.clone());
            }
        }
        match self.connect().await {
            Ok(conn) => {
                if state.failures > 0 {
                    info!(node = self.target, addr = %self.addr, "peer link connected again");
                }
                state.failures = 0;
                state.retry = None;
                state.conn = Some(Arc::clone(&conn));
                Ok(conn)
            }
            Err(e) => {
                state.failures = state.failures.saturating_add(1);
                let (node, addr) = (self.target, &self.addr);
                match &e {
                    LinkError::Refused(_) => warn!(node, %addr, error = %e, "peer link refused"),
                    _ if state.failures == 1 => info!(node, %addr, error = %e, "peer link down"),
                    _ => debug!(node, %addr, error = %e, "peer link still down"),
                }
                state.retry = Some((Instant::now() + backoff(state.failures), e.clone()));
                Err(e)
            }
        }
    }

    /// Connects, authenticates and starts the connection's reader and writer tasks.
    async fn connect(&self) -> Result<Arc<Conn>, LinkError> {
        self.config.check_auth()?;
        let timeout = self.config.connect_timeout;
        let (reader, writer) =
            tokio::time::timeout(timeout, self.open())
                .await
                .map_err(|_| {
                    LinkError::Unreachable(format!(
                        "no connection and handshake within {timeout:?}"
                    ))
                })??;
        let (outgoing, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let conn = Arc::new(Conn {
            calls: Mutex::new(Calls::default()),
            next_id: AtomicU64::new(1),
            outgoing,
            stop: self.dropped.child_token(),
        });
        let max_frame = self.config.max_frame;
        tokio::spawn(write_frames(writer, rx, max_frame, conn.stop.clone()));
        tokio::spawn(read_responses(
            reader,
            Arc::clone(&conn),
            max_frame,
            self.target,
        ));
        Ok(conn)
    }

    async fn open(&self) -> Result<(Reader, Writer), LinkError> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| LinkError::Unreachable(format!("cannot connect to {}: {e}", self.addr)))?;
        tcp.set_nodelay(true).map_err(io_error)?;
        let (io, tls_binding): (Box<dyn PeerIo>, _) = match &self.config.tls {
            None => (Box::new(tcp), None),
            Some(tls) => {
                let name = server_name(&self.addr)?;
                let stream = TlsConnector::from(Arc::clone(&tls.client))
                    .connect(name, tcp)
                    .await
                    .map_err(io_error)?;
                let binding = stream
                    .get_ref()
                    .1
                    .export_keying_material([0; 32], EXPORTER_LABEL, None)
                    .map_err(|e| LinkError::Refused(format!("TLS exporter: {e}")))?;
                (Box::new(stream), Some(binding))
            }
        };
        let (r, mut writer) = tokio::io::split(io);
        let mut reader = FrameReader::new(r);
        client_handshake(
            &mut reader,
            &mut writer,
            &self.config,
            self.target,
            tls_binding,
        )
        .await?;
        Ok((reader, writer))
    }
}

/// The name the peer's certificate must carry: the host of `host:port`, an IP address
/// or a DNS name (IPv6 in brackets).
fn server_name(addr: &str) -> Result<ServerName<'static>, LinkError> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned())
        .map_err(|e| LinkError::Refused(format!("'{host}' is not a TLS server name: {e}")))
}

/// The pause after `failures` failed connects in a row: doubling from [`BACKOFF_MIN`]
/// to [`BACKOFF_MAX`], plus up to a quarter more at random, so that nodes which lost the
/// same peer at the same moment do not all dial it in step.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = BACKOFF_MIN
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(BACKOFF_MAX);
    let jitter_ms = u64::try_from(base.as_millis() / 4).unwrap_or(0);
    base + Duration::from_millis(fastrand::u64(0..=jitter_ms))
}

/// One open connection of a [`Peer`]: its calls waiting for answers, and the channel
/// to its writer task.
struct Conn {
    /// A std `Mutex`: held only to insert, remove or answer a call, never across an
    /// `.await`.
    calls: Mutex<Calls>,
    next_id: AtomicU64,
    outgoing: mpsc::Sender<Frame>,
    /// Cancelled when the connection closes, for whatever reason; ends both tasks.
    stop: CancellationToken,
}

type Answer = oneshot::Sender<Result<Bytes, LinkError>>;

#[derive(Default)]
struct Calls {
    waiting: HashMap<u64, Answer>,
    /// Set once the connection has closed: why. No call is registered after that.
    closed: Option<String>,
    /// When the oldest request sent since the last frame received was registered:
    /// how long the peer has been silent while owing answers.
    unanswered_since: Option<Instant>,
}

/// Removes its call from the waiting table when dropped (a no-op once answered).
struct Waiting<'a> {
    conn: &'a Conn,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.conn.lock().waiting.remove(&self.id);
    }
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, Calls> {
        // Every step leaves `Calls` consistent, so a panic elsewhere while it was held
        // does not make it unusable.
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_open(&self) -> bool {
        !self.stop.is_cancelled()
    }

    fn register(&self) -> Result<(u64, oneshot::Receiver<Result<Bytes, LinkError>>), LinkError> {
        let (tx, rx) = oneshot::channel();
        let mut calls = self.lock();
        if let Some(reason) = &calls.closed {
            return Err(LinkError::Unreachable(reason.clone()));
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        calls.waiting.insert(id, tx);
        calls.unanswered_since.get_or_insert_with(Instant::now);
        Ok((id, rx))
    }

    fn answer(&self, id: u64, ok: bool, body: Bytes) {
        let waiting = {
            let mut calls = self.lock();
            calls.unanswered_since = None;
            calls.waiting.remove(&id)
        };
        // None: the call timed out; its late answer is dropped here.
        if let Some(tx) = waiting {
            let result = if ok {
                Ok(body)
            } else {
                Err(LinkError::Remote(
                    String::from_utf8_lossy(&body).into_owned(),
                ))
            };
            // The caller may have given up since; then nobody needs the answer.
            let _ = tx.send(result);
        }
    }

    /// Fails every waiting call with [`LinkError::Unreachable`] and stops the tasks.
    fn close(&self, reason: String) {
        let waiting = {
            let mut calls = self.lock();
            calls.closed.get_or_insert(reason.clone());
            std::mem::take(&mut calls.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(LinkError::Unreachable(reason.clone())));
        }
        self.stop.cancel();
    }

    /// The error for a call whose connection went away under it.
    fn broken(&self) -> LinkError {
        let reason = self.lock().closed.clone();
        LinkError::Unreachable(reason.unwrap_or_else(|| "the connection closed".into()))
    }

    /// After a call timed out: closes the connection if the peer has said nothing for
    /// `dead_after` while owing answers, so that the next call reconnects.
    fn close_if_silent(&self, dead_after: Duration, target: NodeId) {
        let since = self.lock().unanswered_since;
        if let Some(since) = since.filter(|s| s.elapsed() >= dead_after) {
            let silent = since.elapsed();
            warn!(
                node = target,
                ?silent,
                "peer link silent while owing answers; reconnecting"
            );
            self.close(format!("no answer from node {target} for {silent:?}"));
        }
    }
}

/// The reader task of a [`Peer`]'s connection: hands each RESPONSE to its caller, and
/// fails the waiting calls when the connection ends.
async fn read_responses(mut reader: Reader, conn: Arc<Conn>, max_frame: u32, target: NodeId) {
    let reason = loop {
        let frame = tokio::select! {
            _ = conn.stop.cancelled() => break "the connection closed".to_string(),
            f = reader.read_frame(max_frame) => f,
        };
        match frame {
            Ok(Some(Frame::Response { id, ok, body })) => conn.answer(id, ok, body),
            Ok(Some(other)) => {
                break format!("unexpected {} frame from node {target}", other.name())
            }
            Ok(None) => break format!("node {target} closed the connection"),
            Err(e) => break format!("reading from node {target}: {e}"),
        }
    };
    debug!(node = target, %reason, "peer link closed");
    conn.close(reason);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::Notify;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::tls::TlsFiles;

    const SECRET: &[u8] = b"the cluster's shared secret";
    /// Bound on every wait for a condition; far above what any of them takes.
    const LONG: Duration = Duration::from_secs(10);

    fn plain(node_id: NodeId, secret: &[u8]) -> LinkConfig {
        LinkConfig {
            node_id,
            secret: Some(secret.to_vec()),
            tls: None,
            max_frame: DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(5),
            dead_after: Duration::from_secs(60),
        }
    }

    fn config(node_id: NodeId, secret: &[u8]) -> Arc<LinkConfig> {
        Arc::new(plain(node_id, secret))
    }

    /// Answers `from:request`; `fail` with an error; `slow` once `release` is notified.
    #[derive(Default)]
    struct TestHandler {
        calls: AtomicUsize,
        release: Arc<Notify>,
    }

    fn answer(from: NodeId, request: &[u8]) -> Bytes {
        let mut out = format!("{from}:").into_bytes();
        out.extend_from_slice(request);
        out.into()
    }

    impl Handler for TestHandler {
        fn handle(&self, from: NodeId, request: Bytes) -> HandlerFuture {
            self.calls.fetch_add(1, Relaxed);
            let release = Arc::clone(&self.release);
            Box::pin(async move {
                match request.as_ref() {
                    b"fail" => Err("no such thing".to_string()),
                    b"slow" => {
                        release.notified().await;
                        Ok(Bytes::from_static(b"late"))
                    }
                    _ => {
                        // Finish out of order: later requests overtake earlier ones.
                        for _ in 0..request.len() % 5 {
                            tokio::task::yield_now().await;
                        }
                        Ok(answer(from, &request))
                    }
                }
            })
        }
    }

    struct Server {
        addr: SocketAddr,
        handler: Arc<TestHandler>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    async fn start(config: Arc<LinkConfig>) -> Server {
        start_on("127.0.0.1:0".parse().unwrap(), config).await
    }

    async fn start_on(addr: SocketAddr, config: Arc<LinkConfig>) -> Server {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = Arc::new(TestHandler::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            config,
            Arc::clone(&handler) as Arc<dyn Handler>,
            shutdown.clone(),
        ));
        Server {
            addr,
            handler,
            shutdown,
            task,
        }
    }

    impl Server {
        fn calls(&self) -> usize {
            self.handler.calls.load(Relaxed)
        }

        fn peer(&self, config: Arc<LinkConfig>, target: NodeId) -> Peer {
            Peer::new(config, target, self.addr.to_string())
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(LONG, self.task)
                .await
                .expect("serve returns after shutdown")
                .unwrap();
        }
    }

    fn request(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    /// Waits until the server closes `tcp` (end of stream or reset).
    async fn closed_by_server(tcp: &mut TcpStream) {
        let mut buf = [0; 1024];
        loop {
            match tokio::time::timeout(LONG, tcp.read(&mut buf)).await {
                Err(_) => panic!("the server kept the connection open"),
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(_)) => {}
            }
        }
    }

    // -- the codec --

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
            Frame::Refused(request("wrong secret")),
            Frame::Request {
                id: 1,
                body: request("append entries"),
            },
            Frame::Request {
                id: u64::MAX,
                body: Bytes::new(),
            },
            Frame::Response {
                id: 2,
                ok: true,
                body: request("ok"),
            },
            Frame::Response {
                id: 3,
                ok: false,
                body: request("failed"),
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
            body: request("hi"),
        });
        assert_eq!(req.as_ref(), b"\0\0\0\x0b\x01\0\0\0\0\0\0\x01\x02hi");
        let resp = encoded(&Frame::Response {
            id: 1,
            ok: false,
            body: request("no"),
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

    #[test]
    fn responses_always_fit() {
        let big = Bytes::from(vec![0; 100]);
        let Frame::Response { ok, body, .. } = response(1, Ok(big), 50) else {
            panic!("not a response");
        };
        assert!(!ok);
        assert!(body.len() <= 50);
        assert!(String::from_utf8_lossy(&body).starts_with("a response of 100 bytes"));
        // Cut at a character boundary: "é" is two bytes.
        let Frame::Response { ok, body, .. } = response(2, Err("éééé".into()), 5) else {
            panic!("not a response");
        };
        assert!(!ok);
        assert_eq!(body.as_ref(), "éé".as_bytes());
    }

    #[tokio::test]
    async fn a_reader_allocates_only_what_arrives() {
        // A frame announcing the full 64 MiB, of which 1000 bytes arrive.
        let mut input = DEFAULT_MAX_FRAME.to_be_bytes().to_vec();
        input.push(kind::REQUEST);
        input.extend_from_slice(&[0; 1000]);
        let mut reader = FrameReader::new(input.as_slice());
        let result = reader.read_frame(DEFAULT_MAX_FRAME).await;
        assert!(matches!(result, Err(ReadError::Truncated)), "{result:?}");
        assert!(
            reader.buf.capacity() < 1024 * 1024,
            "{}",
            reader.buf.capacity()
        );

        let too_large = u32::MAX.to_be_bytes();
        let mut reader = FrameReader::new(&too_large[..]);
        let result = reader.read_frame(DEFAULT_MAX_FRAME).await;
        assert!(
            matches!(result, Err(ReadError::Frame(FrameError::TooLarge { .. }))),
            "{result:?}"
        );
        assert!(
            reader.buf.capacity() < 1024 * 1024,
            "{}",
            reader.buf.capacity()
        );
    }

    // -- calls --

    #[tokio::test]
    async fn a_call_round_trips() {
        let server = start(config(2, SECRET)).await;
        let peer = server.peer(config(1, SECRET), 2);
        assert_eq!(
            peer.call(request("ping"), LONG).await,
            Ok(answer(1, b"ping"))
        );
        assert_eq!(
            peer.call(request("fail"), LONG).await,
            Err(LinkError::Remote("no such thing".into()))
        );
        let max = peer.inner.config.max_payload();
        assert_eq!(
            peer.call(Bytes::from(vec![0; max + 1]), LONG).await,
            Err(LinkError::TooLarge { len: max + 1, max })
        );
        assert_eq!(server.calls(), 2);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_get_their_own_answers() {
        let server = start(config(2, SECRET)).await;
        let peer = server.peer(config(1, SECRET), 2);
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let peer = peer.clone();
                tokio::spawn(async move {
                    let text = format!("call {i}");
                    let got = peer.call(request(&text), LONG).await;
                    assert_eq!(got, Ok(answer(1, text.as_bytes())));
                })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        assert_eq!(server.calls(), 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_by_the_client() {
        let server = start(config(2, SECRET)).await;
        let peer = server.peer(config(1, b"some other secret, also long"), 2);
        let err = peer.call(request("ping"), LONG).await.unwrap_err();
        assert!(
            matches!(&err, LinkError::Refused(r) if r.contains("does not know the cluster secret")),
            "{err}"
        );
        // Refused again, from the backoff or a new attempt: never a silent success.
        let again = peer.call(request("ping"), LONG).await.unwrap_err();
        assert!(matches!(again, LinkError::Refused(_)), "{again}");
        assert_eq!(server.calls(), 0);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_wrong_proof_is_refused_by_the_server() {
        let server = start(config(2, SECRET)).await;
        for (secret, why) in [
            (
                Some(&b"not the cluster's secret"[..]),
                "does not know the cluster secret",
            ),
            (None, "has no cluster secret"),
        ] {
            let (r, mut w) = TcpStream::connect(server.addr).await.unwrap().into_split();
            let mut reader = FrameReader::new(r);
            let client_nonce = [5; 32];
            let hello = Hello {
                version: VERSION,
                node_id: 1,
                nonce: client_nonce,
            };
            send(&mut w, &Frame::Hello(hello)).await.unwrap();
            let Frame::Challenge(challenge) =
                read_handshake(&mut reader, "CHALLENGE").await.unwrap()
            else {
                panic!("no CHALLENGE");
            };
            assert_eq!(challenge.node_id, 2);
            let transcript = Transcript {
                client_nonce,
                server_nonce: challenge.nonce,
                client_id: 1,
                server_id: 2,
                tls_binding: None,
            };
            // The server proved the real secret...
            let server_mac = challenge.mac.unwrap();
            assert!(transcript
                .verify(SECRET, Side::Server, &server_mac)
                .unwrap());
            // ...and this client cannot.
            let mac = secret.map(|s| transcript.sign(s, Side::Client).unwrap());
            send(&mut w, &Frame::Proof(Proof { mac })).await.unwrap();
            let err = read_handshake(&mut reader, "WELCOME").await.unwrap_err();
            assert!(
                matches!(&err, LinkError::Refused(r) if r.contains(why)),
                "{err}"
            );
            let end = tokio::time::timeout(LONG, reader.read_frame(HANDSHAKE_MAX_FRAME)).await;
            assert!(matches!(end, Ok(Ok(None) | Err(_))), "{end:?}");
        }
        assert_eq!(server.calls(), 0);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_server_with_another_node_id_is_refused() {
        let server = start(config(2, SECRET)).await;
        let peer = server.peer(config(1, SECRET), 3);
        let err = peer.call(request("ping"), LONG).await.unwrap_err();
        let LinkError::Refused(reason) = &err else {
            panic!("{err}");
        };
        assert!(reason.contains("expected node 3") && reason.contains("found node 2"));
        assert_eq!(server.calls(), 0);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_link_without_authentication_is_refused() {
        let open = LinkConfig::from_cluster(&ClusterConfig {
            node_id: 1,
            listen: "127.0.0.1:0".parse().unwrap(),
            peers: BTreeMap::new(),
            secret: None,
            tls: None,
        })
        .unwrap();
        let peer = Peer::new(Arc::new(open), 2, "127.0.0.1:1".into());
        let err = peer.call(request("ping"), LONG).await.unwrap_err();
        assert!(matches!(err, LinkError::Refused(_)), "{err}");
        let err = Peer::new(config(1, b"short"), 2, "127.0.0.1:1".into())
            .call(request("ping"), LONG)
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::Refused(_)), "{err}");
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
        let mut patient = plain(2, SECRET);
        patient.connect_timeout = Duration::from_millis(300);
        let server = start(Arc::new(patient)).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let opened = Instant::now();
        closed_by_server(&mut tcp).await;
        assert!(
            opened.elapsed() >= Duration::from_millis(250),
            "{:?}",
            opened.elapsed()
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn an_oversized_length_closes_the_connection() {
        let server = start(config(2, SECRET)).await;
        // Before the handshake, anything over the handshake limit.
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(&(HANDSHAKE_MAX_FRAME + 1).to_be_bytes())
            .await
            .unwrap();
        closed_by_server(&mut tcp).await;

        // After it, anything over max_frame, however large.
        for len in [DEFAULT_MAX_FRAME + 1, u32::MAX] {
            let (r, mut w) = TcpStream::connect(server.addr).await.unwrap().into_split();
            let mut reader = FrameReader::new(r);
            client_handshake(&mut reader, &mut w, &config(1, SECRET), 2, None)
                .await
                .unwrap();
            w.write_all(&len.to_be_bytes()).await.unwrap();
            w.write_all(&[kind::REQUEST; 64]).await.unwrap();
            let end = tokio::time::timeout(LONG, reader.read_frame(DEFAULT_MAX_FRAME)).await;
            assert!(matches!(end, Ok(Ok(None) | Err(_))), "{end:?}");
        }
        assert_eq!(server.calls(), 0);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_peer_that_went_down_works_again_once_it_is_back() {
        let server = start(config(2, SECRET)).await;
        let addr = server.addr;
        let peer = server.peer(config(1, SECRET), 2);
        assert_eq!(
            peer.call(request("ping"), LONG).await,
            Ok(answer(1, b"ping"))
        );
        server.stop().await;
        for _ in 0..3 {
            let err = peer.call(request("ping"), LONG).await.unwrap_err();
            assert!(matches!(err, LinkError::Unreachable(_)), "{err}");
        }

        let server = start_on(addr, config(2, SECRET)).await;
        let deadline = Instant::now() + LONG;
        loop {
            match peer.call(request("again"), LONG).await {
                Ok(got) => {
                    assert_eq!(got, answer(1, b"again"));
                    break;
                }
                // Calls fail at once until the backoff (at most about 2.5 s) has passed.
                Err(LinkError::Unreachable(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn a_timeout_does_not_break_the_next_call() {
        let server = start(config(2, SECRET)).await;
        let peer = server.peer(config(1, SECRET), 2);
        let short = Duration::from_millis(200);
        assert_eq!(
            peer.call(request("slow"), short).await,
            Err(LinkError::Timeout)
        );
        let conn = peer.inner.state.lock().await.conn.clone().unwrap();
        // The late answer comes back on the same connection, to nobody.
        server.handler.release.notify_one();
        for i in 0..5 {
            let text = format!("after {i}");
            assert_eq!(
                peer.call(request(&text), LONG).await,
                Ok(answer(1, text.as_bytes()))
            );
        }
        let now = peer.inner.state.lock().await.conn.clone().unwrap();
        assert!(Arc::ptr_eq(&conn, &now), "the connection was kept");
        assert!(conn.lock().waiting.is_empty());
        server.stop().await;
    }

    #[tokio::test]
    async fn a_silent_peer_is_replaced_by_a_new_connection() {
        let server = start(config(2, SECRET)).await;
        let mut quick = plain(1, SECRET);
        quick.dead_after = Duration::from_millis(300);
        let peer = server.peer(Arc::new(quick), 2);
        assert_eq!(
            peer.call(request("ping"), LONG).await,
            Ok(answer(1, b"ping"))
        );
        let first = peer.inner.state.lock().await.conn.clone().unwrap();
        let deadline = Instant::now() + LONG;
        while first.is_open() {
            assert!(Instant::now() < deadline, "the silent connection stayed");
            let got = peer.call(request("slow"), Duration::from_millis(100)).await;
            assert_eq!(got, Err(LinkError::Timeout));
        }
        assert_eq!(
            peer.call(request("ping"), LONG).await,
            Ok(answer(1, b"ping"))
        );
        let second = peer.inner.state.lock().await.conn.clone().unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        server.stop().await;
    }

    // -- mutual TLS --

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
        pem: PathBuf,
    }

    fn ca(dir: &Path, name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("tern test CA {name}"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("ca-{name}.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { cert, key, pem }
    }

    /// A node certificate for 127.0.0.1 and localhost signed by `signer`, trusting
    /// `trusted` for the other nodes.
    fn node(dir: &Path, name: &str, signer: &Ca, trusted: &Ca) -> TlsFiles {
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &signer.cert, &signer.key).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
            client_ca: Some(trusted.pem.clone()),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    fn tls_config(node_id: NodeId, files: &TlsFiles, secret: Option<&[u8]>) -> Arc<LinkConfig> {
        let cluster = ClusterConfig {
            node_id,
            listen: "127.0.0.1:0".parse().unwrap(),
            peers: BTreeMap::new(),
            secret: secret.map(<[u8]>::to_vec),
            tls: Some(files.clone()),
        };
        let mut config = LinkConfig::from_cluster(&cluster).unwrap();
        config.connect_timeout = Duration::from_secs(5);
        Arc::new(config)
    }

    #[tokio::test]
    async fn mutual_tls_authenticates_with_or_without_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "cluster");
        let one = node(dir.path(), "node1", &ca, &ca);
        let two = node(dir.path(), "node2", &ca, &ca);
        for secret in [None, Some(SECRET)] {
            let server = start(tls_config(2, &two, secret)).await;
            let client = tls_config(1, &one, secret);
            let port = server.addr.port();
            for host in ["127.0.0.1", "localhost"] {
                let peer = Peer::new(Arc::clone(&client), 2, format!("{host}:{port}"));
                assert_eq!(
                    peer.call(request("ping"), LONG).await,
                    Ok(answer(1, b"ping")),
                    "{host}, secret: {}",
                    secret.is_some()
                );
            }
            // TLS on one side only is refused.
            let plain = server.peer(config(1, SECRET), 2);
            let err = plain.call(request("ping"), LONG).await.unwrap_err();
            assert!(matches!(err, LinkError::Refused(_)), "{err}");
            assert_eq!(server.calls(), 2);
            server.stop().await;
        }
    }

    #[tokio::test]
    async fn a_certificate_from_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca_cluster = ca(dir.path(), "cluster");
        let ca_other = ca(dir.path(), "other");
        let one = node(dir.path(), "node1", &ca_cluster, &ca_cluster);
        let two = node(dir.path(), "node2", &ca_cluster, &ca_cluster);
        // Trusts the cluster's CA but presents a certificate of another.
        let rogue = node(dir.path(), "rogue", &ca_other, &ca_cluster);

        let server = start(tls_config(2, &two, None)).await;
        let err = server
            .peer(tls_config(1, &rogue, None), 2)
            .call(request("ping"), LONG)
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::Refused(_)), "rogue client: {err}");
        assert_eq!(server.calls(), 0);
        server.stop().await;

        let server = start(tls_config(2, &rogue, None)).await;
        let err = server
            .peer(tls_config(1, &one, None), 2)
            .call(request("ping"), LONG)
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::Refused(_)), "rogue server: {err}");
        assert_eq!(server.calls(), 0);
        server.stop().await;
    }
}
