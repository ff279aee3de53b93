//! Authenticated, framed request/response links between cluster nodes.
//!
//! The Raft layer hands a [`Peer`] opaque request bytes and awaits opaque response
//! bytes; [`serve`](fn@serve) runs the other end and passes each request to a
//! [`Handler`]. One connection from a caller to a peer carries many calls at once,
//! matched by id, so a slow snapshot transfer does not hold up heartbeats. The link
//! knows nothing of Raft.
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
//!
//! # Layout
//!
//! Each file uses only those listed above it, and `handshake`, `serve` and `peer` use
//! what this file holds: [`LinkConfig`], [`LinkError`] and the limits.
//!
//! * `frame`: the frames, a pure codec (no I/O).
//! * `connection`: frames in and out of a socket: the reader and the writer task.
//! * `handshake`: the macs and both sides of the handshake.
//! * `serve`: the accepting side ([`serve`](fn@serve), [`Handler`]).
//! * `peer`: the calling side ([`Peer`]: reconnects, backoff, many calls on one
//!   connection).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::cluster::{ClusterConfig, NodeId, MIN_SECRET_BYTES};
use crate::tls::TlsError;

mod connection;
mod frame;
mod handshake;
mod peer;
mod serve;
#[cfg(test)]
mod testutil;

pub use frame::{decode_frame, frame_len, Challenge, Frame, FrameError, Hello, Proof, MAGIC};
pub use peer::Peer;
pub use serve::{serve, Handler, HandlerFuture};

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

/// A RESPONSE's kind, id and ok byte: what a frame holds besides the payload (a
/// REQUEST holds one byte less).
const RESPONSE_HEADER: u32 = 10;

/// How this node's links authenticate and how large and patient they are. Shared by
/// [`serve`](fn@serve) and every [`Peer`].
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::testutil::{config, request, LONG};
    use super::*;

    #[tokio::test]
    async fn a_link_without_authentication_is_refused() {
        let open = LinkConfig::from_cluster(&ClusterConfig {
            node_id: 1,
            listen: "127.0.0.1:0".parse().unwrap(),
            peers: BTreeMap::new(),
            secret: None,
            tls: None,
            join: false,
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
}
