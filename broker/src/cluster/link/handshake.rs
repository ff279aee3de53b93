//! The link handshake (HELLO, CHALLENGE, PROOF, then WELCOME or REFUSED; see the parent
//! module's doc): the macs that prove the shared secret, and the client's and the
//! server's half. TLS, when on, is already established underneath; its keying
//! material comes in as `tls_binding`.

use std::io;

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::connection::{FrameReader, ReadError};
use super::frame::{Challenge, Frame, Hello, Proof, MAC_LEN, NONCE_LEN};
use super::{LinkConfig, LinkError, HANDSHAKE_MAX_FRAME, VERSION};
use crate::config::cluster::NodeId;

/// Longest REFUSED reason sent: far inside [`HANDSHAKE_MAX_FRAME`].
const MAX_REASON: usize = 256;

type HmacSha256 = Hmac<Sha256>;

/// A failed read or write during the handshake. A TLS failure (an unknown CA, a
/// rejected certificate) is an authentication failure, not a network one.
pub(super) fn io_error(e: io::Error) -> LinkError {
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

/// Writes one frame and flushes it: for the handshake, before the writer task exists.
async fn send<W: AsyncWrite + Unpin>(io: &mut W, frame: &Frame) -> Result<(), LinkError> {
    let mut buf = BytesMut::new();
    frame
        .encode(&mut buf, HANDSHAKE_MAX_FRAME)
        .map_err(|e| LinkError::Unreachable(e.to_string()))?;
    io.write_all(&buf).await.map_err(io_error)?;
    io.flush().await.map_err(io_error)
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
pub(super) async fn client_handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
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
pub(super) async fn server_handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::TcpStream;

    use super::*;
    use crate::cluster::link::testutil::{
        answer, ca, config, node, request, start, tls_config, LONG, SECRET,
    };
    use crate::cluster::link::Peer;

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
