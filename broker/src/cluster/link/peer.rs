//! The calling side of the links: a [`Peer`] connects to one node, runs the client's
//! half of the handshake, and carries many concurrent calls over the one connection,
//! matched by id; it reconnects, after a backoff, when the connection fails.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::connection::{write_frames, FrameReader, PeerIo, Reader, Writer};
use super::frame::Frame;
use super::handshake::{client_handshake, io_error};
use super::{LinkConfig, LinkError, EXPORTER_LABEL, MAX_IN_FLIGHT};
use crate::config::cluster::NodeId;

/// First and largest pause before reconnecting to a peer that could not be reached.
///
/// The largest is short because of Raft: a node that restarts campaigns 1.5 s after
/// its start at the earliest (openraft counts its leader's lease from then), with a
/// higher term, and unseats its leader as soon as the two talk — unless the leader has
/// reached it first. Redialed at most ~310 ms apart, then sent a heartbeat within
/// 250 ms, it is. (With up to 2.5 s between attempts, every restart after a few
/// seconds down cost an election.) Dialing a dead peer four times a second costs next
/// to nothing.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// The calling side towards one peer: connects at the first call, reconnects after a
/// failure (with a backoff that grows from 50 ms to 250 ms), and multiplexes concurrent
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

    /// The address this link connects to.
    pub fn addr(&self) -> &str {
        &self.inner.addr
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
    use super::*;
    use crate::cluster::link::testutil::{
        answer, config, plain, request, start, start_on, LONG, SECRET,
    };

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
                // Calls fail at once until the backoff (at most about 310 ms) has passed.
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
}
