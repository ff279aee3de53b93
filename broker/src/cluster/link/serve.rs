//! The accepting side of the links: [`serve`] accepts connections, runs the server's
//! half of the handshake, then passes each request to the [`Handler`] in a task of its
//! own and writes the responses back as they complete.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::connection::{write_frames, FrameReader, PeerIo, Reader, Writer};
use super::frame::Frame;
use super::handshake::{io_error, server_handshake};
use super::{LinkConfig, LinkError, EXPORTER_LABEL, MAX_IN_FLIGHT};
use crate::config::cluster::NodeId;

/// Connections [`serve`] holds open at once, authenticated or not. Cluster peers need a
/// handful; the bound keeps a flood of strangers from exhausting file descriptors.
const MAX_CONNECTIONS: usize = 256;

/// Pause after a failed `accept` (out of file descriptors, say), so the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::cluster::link::frame::kind;
    use crate::cluster::link::handshake::client_handshake;
    use crate::cluster::link::testutil::{config, plain, start, LONG, SECRET};
    use crate::cluster::link::{DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME};

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
}
