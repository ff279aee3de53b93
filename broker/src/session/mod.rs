//! One task per connection: handshake, then read and handle frames until the end.
//!
//! The session task reads; a second task writes the connection's [`Outbound`] queue.
//! Frames are handled synchronously in the order they arrive, which is what lets a
//! client pipeline requests and match the answers by id. After each read batch the
//! session wakes the writers it queued frames for, adds its counts to the server's,
//! and hands what it gathered for the journal and for queue tasks over — waiting if
//! they are full, which stops it reading from a client that sends faster than the disk
//! or a queue can take.

pub(crate) mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use tern_codec::{DecodeError, ErrorCode, ErrorFrame, Frame, Pong};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::auth::replies::ReplyPermits;
use crate::auth::Principal;
use crate::connection::FrameReader;
use crate::error::ReadError;
use crate::handler::{self, Reject};
use crate::journal::Refused;
use crate::outbound::{Outbound, Wakes};
use crate::queue::{QueueHandle, QueueInput};
use crate::router::RouteCache;
use crate::shared::{ConnectionEntry, Shared};
use crate::stats::BatchCounts;

use self::state::Session;

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The peer's address (`local` for an in-process connection).
    pub addr: String,
    /// An in-process connection made by the broker itself (a bridge): it needs no
    /// credentials and passes every permission check.
    pub trusted: bool,
    /// The identity of a verified client certificate (mutual TLS).
    pub certificate: Option<String>,
}

/// Serves one accepted TCP socket until it closes, the peer misbehaves, or the server
/// shuts down. Holds `admission` (its place under the connection limits) until then.
pub(crate) async fn serve_tcp<A>(
    socket: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    admission: A,
) {
    // Best effort: without it small frames wait for Nagle's timer, with it they do not.
    let _ = socket.set_nodelay(true);
    let (rd, wr) = socket.into_split();
    let peer = Peer {
        addr: addr.to_string(),
        trusted: false,
        certificate: None,
    };
    serve(rd, wr, peer, shared).await;
    drop(admission);
}

/// Serves a connection given as its two halves (a socket's, a TLS stream's, an
/// in-memory pipe's).
pub(crate) async fn serve(
    rd: impl AsyncRead + Unpin + Send + 'static,
    wr: impl AsyncWrite + Unpin + Send + 'static,
    peer: Peer,
    shared: Arc<Shared>,
) {
    let id = shared.next_connection_id();
    let span = tracing::info_span!(
        "conn",
        id,
        peer = %peer.addr,
        client = tracing::field::Empty,
        user = tracing::field::Empty
    );
    serve_inner(rd, wr, peer, id, shared).instrument(span).await;
}

async fn serve_inner(
    rd: impl AsyncRead + Unpin + Send + 'static,
    wr: impl AsyncWrite + Unpin + Send + 'static,
    peer: Peer,
    id: u64,
    shared: Arc<Shared>,
) {
    let limits = &shared.config.limits;
    let outbound = Arc::new(Outbound::new(
        limits.max_pending_bytes,
        limits.slow_consumer,
        shared.shutdown.child_token(),
        Arc::clone(&shared.stats),
    ));
    let writer = tokio::spawn(Arc::clone(&outbound).write_to(wr, limits.write_timeout));
    let mut reader = FrameReader::new(rd, limits.max_frame_size);

    if let Some((name, principal)) = handshake(&mut reader, &outbound, &shared, &peer, id).await {
        tracing::Span::current().record("client", name.as_str());
        if let Some(user) = &principal.user {
            tracing::Span::current().record("user", user.as_str());
        }
        tracing::debug!("connected");
        shared.register(
            id,
            ConnectionEntry {
                peer: peer.addr.clone(),
                name,
                outbound: Arc::clone(&outbound),
            },
        );
        // A responder whose own permissions do not let it reply to requesters' inboxes
        // gets a permit for each request handed to it.
        let replies = (!principal.permissions.publish.allows_pattern(">"))
            .then(|| Arc::new(ReplyPermits::default()));
        let mut session = Session {
            id,
            principal,
            replies,
            shared: Arc::clone(&shared),
            outbound: Arc::clone(&outbound),
            subs: FxHashMap::default(),
            routes: RouteCache::default(),
            wakes: Wakes::default(),
            counts: BatchCounts::default(),
            consumers: FxHashMap::default(),
            publishes: Vec::new(),
            queue_inputs: Vec::new(),
        };
        session.run(&mut reader).await;
        session.end().await;
        shared.deregister(id);
        tracing::debug!("disconnected");
    }

    outbound.close_with(None);
    // The final flush is bounded: a peer that reads nothing cannot hold the task (or a
    // shutdown) forever.
    let abort = writer.abort_handle();
    if tokio::time::timeout(limits.write_timeout, writer)
        .await
        .is_err()
    {
        abort.abort();
    }
}

/// How long a refused login waits before its connection is closed: it slows down
/// password guessing, and costs the server nothing (the task just sleeps).
const AUTH_FAILURE_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// Reads the HELLO, authenticates, and answers WELCOME. Returns the client's name and
/// who it is, or `None` when the connection ended or was refused (the ERROR is queued).
async fn handshake<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    outbound: &Arc<Outbound>,
    shared: &Shared,
    peer: &Peer,
    id: u64,
) -> Option<(String, Principal)> {
    let timeout = shared.config.limits.handshake_timeout;
    let first = tokio::select! {
        r = tokio::time::timeout(timeout, reader.read_frame()) => r,
        () = outbound.ending().cancelled() => return None,
    };
    let refusal = match first {
        Err(_elapsed) => {
            shared
                .stats
                .count_protocol_error(ErrorCode::HandshakeTimeout);
            Reject::new(
                ErrorCode::HandshakeTimeout,
                format!("no HELLO within {}", humantime::format_duration(timeout)),
            )
        }
        Ok(Ok(None) | Err(ReadError::Io(_) | ReadError::EofMidFrame)) => return None,
        Ok(Err(ReadError::Decode(e))) => {
            shared.count_protocol_error(&e);
            Reject::new(e.code(), e.to_string())
        }
        Ok(Ok(Some(frame))) => match handler::hello::accept(shared, id, frame) {
            Ok((hello, welcome)) => {
                let Some(principal) = authenticate(shared, peer, &hello).await else {
                    outbound.close_with(Some(&ErrorFrame::new(
                        0,
                        ErrorCode::AuthenticationFailed,
                        "authentication failed",
                    )));
                    return None;
                };
                let mut wakes = Wakes::default();
                outbound.push_control(&welcome, &mut wakes);
                wakes.wake_all();
                return Some((hello.name.to_string(), principal));
            }
            Err(reject) => {
                shared.stats.count_protocol_error(reject.code);
                reject
            }
        },
    };
    tracing::debug!(reason = %refusal.message, "handshake refused");
    outbound.close_with(Some(&ErrorFrame::new(0, refusal.code, refusal.message)));
    None
}

/// Decides who the client is. A refusal is logged with the peer and the reason,
/// counted, answered with a bare `authentication_failed` after a short delay, and
/// closes the connection.
async fn authenticate(
    shared: &Shared,
    peer: &Peer,
    hello: &tern_codec::Hello,
) -> Option<Principal> {
    if peer.trusted {
        return Some(Principal::trusted());
    }
    let auth = Arc::clone(&shared.config.auth);
    let credentials = hello.credentials.clone();
    let certificate = peer.certificate.clone();
    // argon2 takes tens of milliseconds on purpose: not on the async threads.
    let result = tokio::task::spawn_blocking(move || {
        auth.authenticate(credentials.as_ref(), certificate.as_deref())
    })
    .await;
    let failure = match result {
        Ok(Ok(principal)) => return Some(principal),
        Ok(Err(failure)) => failure.to_string(),
        Err(e) => format!("the check did not finish: {e}"),
    };
    tracing::warn!(peer = %peer.addr, reason = %failure, "authentication failed");
    shared
        .stats
        .auth_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(AUTH_FAILURE_DELAY).await;
    None
}

impl Session {
    /// Handles frames until the connection ends.
    async fn run<R: AsyncRead + Unpin>(&mut self, reader: &mut FrameReader<R>) {
        let idle = self.shared.config.limits.idle_timeout;
        let mut heard = tokio::time::Instant::now();
        let mut pinged = false;
        loop {
            loop {
                match reader.next_buffered() {
                    Ok(Some(frame)) => self.handle(frame),
                    Ok(None) => break,
                    Err(e) => {
                        let fatal = e.is_fatal();
                        self.protocol_error(&e);
                        if fatal {
                            self.end_batch().await;
                            return;
                        }
                    }
                }
            }
            self.end_batch().await;
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(heard + if pinged { idle * 2 } else { idle }) => {
                    if pinged {
                        self.shared.stats.idle_disconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.outbound.close_with(Some(&ErrorFrame::new(
                            0,
                            ErrorCode::IdleTimeout,
                            format!(
                                "nothing received for {}; closing",
                                humantime::format_duration(idle * 2)
                            ),
                        )));
                        return;
                    }
                    // Silent for a while: make sure the peer is still there.
                    pinged = true;
                    self.reply(&tern_codec::Ping { id: 0 });
                }
                () = self.outbound.ending().cancelled() => {
                    if self.shared.shutdown.is_cancelled() {
                        self.outbound.close_with(Some(&ErrorFrame::new(
                            0,
                            ErrorCode::ShuttingDown,
                            "the server is shutting down",
                        )));
                    }
                    return;
                }
                read = reader.fill() => match read {
                    Ok(true) => {
                        heard = tokio::time::Instant::now();
                        pinged = false;
                    }
                    Ok(false) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "read ended");
                        return;
                    }
                },
            }
        }
    }

    fn handle(&mut self, frame: Frame) {
        let (id, result) = match frame {
            Frame::Publish(p) => (p.id, handler::publish::handle(self, p)),
            Frame::Subscribe(s) => (s.id, handler::subscribe::subscribe(self, s)),
            Frame::Unsubscribe(u) => (u.id, handler::subscribe::unsubscribe(self, u)),
            Frame::Consume(c) => (c.id, handler::consume::consume(self, c)),
            Frame::Ack(a) => (a.id, handler::consume::ack(self, a)),
            Frame::Nack(n) => (n.id, handler::consume::nack(self, n)),
            Frame::Received(r) => (r.id, handler::consume::received(self, r)),
            Frame::Cancel(c) => (c.id, handler::consume::cancel(self, c)),
            // No id: a refused CREDIT is answered with an ERROR of id 0.
            Frame::Credit(c) => (0, handler::consume::credit(self, c)),
            Frame::QueueDeclare(d) => (d.id, handler::queue::declare(self, d, 0)),
            Frame::QueueCreate(c) => (
                c.declare.id,
                handler::queue::declare(self, c.declare, c.replicas),
            ),
            Frame::QueueDelete(d) => (d.id, handler::queue::delete(self, d)),
            Frame::QueueQuery(q) => (q.id, handler::queue::query(self, q)),
            Frame::QueuePurge(p) => (p.id, handler::queue::purge(self, p)),
            Frame::QueueMove(m) => (m.id, handler::queue::move_messages(self, m)),
            Frame::ServerQuery(q) => (q.id, handler::server::query(self, q)),
            Frame::ClusterQuery(q) => (q.id, handler::cluster::query(self, q)),
            Frame::ClusterChange(c) => (c.id, handler::cluster::change(self, c)),
            Frame::GroupsQuery(q) => (q.id, handler::cluster::groups(self, q)),
            Frame::Ping(p) => {
                self.reply(&Pong { id: p.id });
                (p.id, Ok(()))
            }
            // Answers to our own pings: reading them is all that is needed.
            Frame::Pong(_) => (0, Ok(())),
            Frame::Hello(_) => (
                0,
                Err(Reject::new(
                    ErrorCode::UnexpectedFrame,
                    "HELLO was already received on this connection",
                )),
            ),
            other @ (Frame::Welcome(_)
            | Frame::Ok(_)
            | Frame::Done(_)
            | Frame::Error(_)
            | Frame::Message(_)
            | Frame::Confirm(_)
            | Frame::Delivery(_)
            | Frame::QueueInfo(_)
            | Frame::ServerInfo(_)
            | Frame::ClusterInfo(_)
            | Frame::GroupsInfo(_)) => (
                0,
                Err(Reject::new(
                    ErrorCode::UnexpectedFrame,
                    format!(
                        "{} frames are sent by servers, not clients",
                        other.frame_type()
                    ),
                )),
            ),
        };
        if let Err(reject) = result {
            self.reply(&ErrorFrame::new(id, reject.code, reject.message));
        }
    }

    fn protocol_error(&mut self, e: &DecodeError) {
        self.shared.count_protocol_error(e);
        let frame = ErrorFrame::new(0, e.code(), e.to_string());
        if e.is_fatal() {
            tracing::warn!(error = %e, "protocol error; closing the connection");
            self.outbound.close_with(Some(&frame));
        } else {
            tracing::debug!(error = %e, "protocol error");
            self.reply(&frame);
        }
    }

    /// Wakes writers, adds counts, and hands the batch's work to the journal and the
    /// queue tasks, waiting while they are full.
    async fn end_batch(&mut self) {
        self.wakes.wake_all();
        self.counts.add_to(&self.shared.stats);
        for op in self.publishes.drain(..) {
            if let Err(op) = self.shared.durable.journal.publish(op).await {
                if let Some(c) = op.confirm {
                    c.answer(Err(Refused::ShuttingDown), &mut self.wakes);
                }
            }
        }
        for (queue, input) in self.queue_inputs.drain(..) {
            if let Err(mpsc::error::SendError(input)) = queue.tx.send(input).await {
                if let Some((outbound, id)) = input.reply_to() {
                    outbound.push_control(
                        &ErrorFrame::new(
                            *id,
                            ErrorCode::QueueNotFound,
                            format!("queue '{}' was deleted", queue.def.name),
                        ),
                        &mut self.wakes,
                    );
                }
            }
        }
        self.wakes.wake_all();
    }

    /// Removes every subscription of this connection from the router and detaches its
    /// consumers (their unsettled deliveries go back to their queues).
    async fn end(&mut self) {
        for (_, sub) in self.subs.drain() {
            self.shared.router.unsubscribe(&sub);
        }
        let mut queues: Vec<Arc<QueueHandle>> = Vec::new();
        for (_, q) in self.consumers.drain() {
            if !queues.iter().any(|have| have.id == q.id) {
                queues.push(q);
            }
        }
        for q in queues {
            self.queue_inputs
                .push((q, QueueInput::ConnectionClosed { conn: self.id }));
        }
        self.end_batch().await;
    }
}
