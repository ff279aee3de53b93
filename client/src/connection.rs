//! The connection driver: one task per client that owns the socket.
//!
//! It connects and greets, re-subscribes after a reconnect, then runs the reader and
//! the writer until the connection ends; then it backs off and reconnects (unless told
//! not to) until the client is closed, going through the seed list ([`Servers`]). A
//! cluster node that does not run the queues ends the connection too: the driver moves
//! to the node it names (at once) or, while none is named, to the next server after
//! [`ELECTION_RETRY`]. All decisions about requests and subscriptions are delegated to
//! [`State`]; this module only moves bytes.
//!
//! [`Servers`]: crate::servers::Servers

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern_codec::{
    Encode, Frame, Hello, Ping, Pong, Welcome, MAX_FRAME_SIZE_LIMIT, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backoff::Backoff;
use crate::client::Inner;
use crate::outbound::Link;
use crate::queue::Wake;
use crate::transport::{self, ReadHalf, Stream, WriteHalf};
use crate::Error;

/// Bytes reserved for each socket read.
const READ_CHUNK: usize = 64 * 1024;

/// How long to wait before asking the next server while no node runs the queues (a
/// cluster elects a leader within a second or two).
pub(crate) const ELECTION_RETRY: Duration = Duration::from_millis(250);

/// Why a connection ended.
enum Ended {
    /// It failed, or the client closed it.
    Lost(Error),
    /// A cluster node said another runs the queues (named when it knows which).
    Moved(Option<String>),
}

/// A greeted connection, ready to run.
pub(crate) struct Established {
    stream: Stream,
    /// Bytes read past the WELCOME (the server may already be sending).
    leftover: BytesMut,
    pub welcome: Welcome,
}

/// Connects to the first server of the seed list that answers. The servers after it
/// are not tried once one refuses the handshake: the others would refuse it too.
///
/// # Errors
///
/// As [`establish`]: the last server's error, naming every server tried when there
/// were several.
pub(crate) async fn establish_any(inner: &Inner) -> Result<Established, Error> {
    let count = inner.servers().len();
    let mut last = None;
    for _ in 0..count {
        match establish(inner).await {
            Ok(conn) => return Ok(conn),
            Err(e @ Error::Connect { .. }) => {
                last = Some(e);
                inner.servers().advance();
            }
            Err(e) => return Err(e),
        }
    }
    Err(match last {
        Some(Error::Connect { reason, .. }) if count > 1 => Error::Connect {
            addr: inner.servers().names().join(","),
            reason: format!("no server answered; the last said: {reason}"),
        },
        Some(e) => e,
        None => Error::Closed,
    })
}

/// Connects to the current server and performs the handshake.
///
/// # Errors
///
/// [`Error::Connect`] if the server cannot be reached or times out, [`Error::Refused`]
/// if it answers the HELLO with an error, [`Error::Protocol`] if it answers nonsense.
pub(crate) async fn establish(inner: &Inner) -> Result<Established, Error> {
    let opts = &inner.options;
    let server = inner.servers().current();
    let addr = &server.name;
    let connect_err = |reason: String| Error::Connect {
        addr: addr.clone(),
        reason,
    };
    let attempt = async {
        let mut stream = server
            .connector
            .connect()
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            name: opts.name.as_str().into(),
            credentials: opts.credentials.clone(),
        };
        let mut buf = BytesMut::with_capacity(hello.encoded_len());
        hello.encode(&mut buf)?;
        stream
            .write_all(&buf)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        buf.clear();
        loop {
            match Frame::decode(&mut buf, MAX_FRAME_SIZE_LIMIT) {
                Ok(Some(Frame::Welcome(welcome))) => {
                    return Ok(Established {
                        stream,
                        leftover: buf,
                        welcome,
                    })
                }
                Ok(Some(Frame::Error(e))) => {
                    return Err(Error::Refused {
                        addr: addr.clone(),
                        code: e
                            .code()
                            .map_or_else(|| e.raw_code.to_string(), |c| c.to_string()),
                        message: e.message.to_string(),
                    })
                }
                Ok(Some(other)) => {
                    return Err(Error::Protocol(format!(
                        "expected WELCOME, got {}",
                        other.frame_type()
                    )))
                }
                Ok(None) => {}
                Err(e) => return Err(Error::Protocol(e.to_string())),
            }
            buf.reserve(1024);
            match stream.read_buf(&mut buf).await {
                Ok(0) => {
                    return Err(connect_err(
                        "the server closed the connection during the handshake".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(connect_err(e.to_string())),
            }
        }
    };
    tokio::time::timeout(opts.connect_timeout, attempt)
        .await
        .map_err(|_| connect_err(format!("no answer within {:?}", opts.connect_timeout)))?
}

/// Runs connections until the client is closed or reconnecting is given up.
pub(crate) async fn drive(inner: Arc<Inner>, mut conn: Established) {
    let mut backoff = Backoff::new(
        inner.options.reconnect_delay_min,
        inner.options.reconnect_delay_max,
    );
    let mut resubscribe = BytesMut::new();
    loop {
        inner.connected(&conn.welcome);
        // On every connection: the cluster may have changed while the client was away.
        let learning = Arc::clone(&inner);
        tokio::spawn(async move { learning.learn_cluster().await });
        let ended = run(&inner, conn, std::mem::take(&mut resubscribe)).await;
        inner.out.set_link(Link::Down);
        {
            let mut state = inner.state();
            state.connection_lost();
            inner.out.keep_only_unanswered_publishes();
        }
        // Following a cluster's redirect is no reconnect after a failure: it happens
        // even when reconnecting is off.
        let moved = matches!(ended, Ended::Moved(_));
        if inner.closing.is_cancelled() || !(inner.options.reconnect || moved) {
            break;
        }
        // The first attempt: straight to a leader that was named, after a short wait
        // while one is being elected, after the back-off when the connection failed.
        let mut first_delay = match ended {
            Ended::Moved(Some(leader)) => {
                tracing::info!(from = %inner.addr(), to = %leader, "moving to the node that runs the queues");
                if inner.servers().prefer(&leader) {
                    Some(Duration::ZERO)
                } else {
                    inner.servers().advance();
                    Some(ELECTION_RETRY)
                }
            }
            Ended::Moved(None) => {
                tracing::debug!(addr = %inner.addr(), "no node runs the queues now; trying another");
                inner.servers().advance();
                Some(ELECTION_RETRY)
            }
            Ended::Lost(err) => {
                tracing::warn!(addr = %inner.addr(), error = %err, "connection lost; reconnecting");
                inner.servers().advance();
                None
            }
        };
        conn = loop {
            let delay = first_delay.take().unwrap_or_else(|| backoff.next_delay());
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = inner.closing.cancelled() => {
                    inner.shut();
                    return;
                }
            }
            match establish(&inner).await {
                Ok(c) => break c,
                Err(e) => {
                    inner.servers().advance();
                    let attempts = backoff.attempts();
                    // Without reconnecting, a redirect gets one attempt.
                    if !inner.options.reconnect
                        || inner
                            .options
                            .max_reconnects
                            .is_some_and(|max| attempts >= max)
                    {
                        tracing::error!(addr = %inner.addr(), attempts, error = %e, "giving up reconnecting");
                        inner.shut();
                        return;
                    }
                    // Once per doubling, not once per attempt.
                    if attempts.is_power_of_two() {
                        tracing::debug!(addr = %inner.addr(), attempts, error = %e, "reconnect failed");
                    }
                }
            }
        };
        tracing::info!(addr = %inner.addr(), attempts = backoff.attempts(), "reconnected");
        backoff.reset();
        // The link is up before the unconfirmed publishes are collected: one sent
        // after this is buffered for the writer, one sent before was not (see
        // `WriteBuffer::push_request`) and is among those collected. The writer starts
        // once these have been written.
        let (frames, publishes) = {
            let mut state = inner.state();
            inner.out.set_link(Link::Up);
            state.reestablish(|| inner.next_id())
        };
        inner.generation.send_modify(|g| *g += 1);
        for frame in frames {
            // A frame that does not encode was refused when first sent.
            let _ = frame.encode(&mut resubscribe);
        }
        for publish in publishes {
            resubscribe.extend_from_slice(&publish);
        }
    }
    inner.shut();
}

/// Runs one connection until it fails, the client closes, or a cluster node sends the
/// client elsewhere. Returns why it ended.
async fn run(inner: &Inner, conn: Established, resubscribe: BytesMut) -> Ended {
    let (rd, mut wr) = transport::split(conn.stream);
    // Re-subscriptions, consumers and unconfirmed publishes go out before anything
    // buffered (the writer starts below), so that replies to requests published in
    // the meantime find their subscription. The link is already up: see `drive`.
    if !resubscribe.is_empty() {
        if let Err(e) = wr.write_all(&resubscribe).await {
            return Ended::Lost(Error::Connect {
                addr: inner.addr(),
                reason: e.to_string(),
            });
        }
    }
    let last_read = std::sync::Mutex::new(Instant::now());
    tokio::select! {
        ended = read_loop(inner, rd, conn.leftover, &last_read) => ended,
        e = write_loop(inner, &mut wr) => Ended::Lost(e),
        e = keepalive(inner, &last_read) => Ended::Lost(e),
        () = inner.closing.cancelled() => {
            // Send what is already buffered before closing: close() promises it.
            let mut rest = BytesMut::new();
            inner.out.take_now(&mut rest);
            let _ = wr.write_all(&rest).await;
            let _ = wr.shutdown().await;
            Ended::Lost(Error::Closed)
        }
    }
}

async fn read_loop(
    inner: &Inner,
    mut rd: ReadHalf,
    mut buf: BytesMut,
    last_read: &std::sync::Mutex<Instant>,
) -> Ended {
    loop {
        match dispatch_buffered(inner, &mut buf) {
            Ok(None) => {}
            Ok(Some(leader)) => return Ended::Moved(leader),
            Err(e) => return Ended::Lost(e),
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                return Ended::Lost(Error::Connect {
                    addr: inner.addr(),
                    reason: "the server closed the connection".into(),
                })
            }
            Ok(_) => {
                if let Ok(mut t) = last_read.lock() {
                    *t = Instant::now();
                }
            }
            Err(e) => {
                return Ended::Lost(Error::Connect {
                    addr: inner.addr(),
                    reason: e.to_string(),
                })
            }
        }
    }
}

/// Handles every whole frame in `buf`, holding the state lock once for the batch, then
/// wakes each subscription or consumer that received its first message of the batch.
/// Returns where to move when a cluster node sent the client to the leader.
fn dispatch_buffered(inner: &Inner, buf: &mut BytesMut) -> Result<Option<Option<String>>, Error> {
    let mut wake = Vec::new();
    let result = dispatch_frames(inner, buf, &mut wake);
    for queue in wake {
        queue.wake();
    }
    result
}

fn dispatch_frames(
    inner: &Inner,
    buf: &mut BytesMut,
    wake: &mut Vec<Arc<dyn Wake>>,
) -> Result<Option<Option<String>>, Error> {
    let mut state = inner.state();
    loop {
        let frame = match Frame::decode(buf, MAX_FRAME_SIZE_LIMIT) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(state.take_move()),
            Err(e) if !e.is_fatal() => {
                tracing::debug!(error = %e, "ignoring a frame this client does not know");
                continue;
            }
            Err(e) => return Err(Error::Protocol(e.to_string())),
        };
        if let Frame::Ping(ping) = frame {
            // Ignored on failure: the client is closing.
            let _ = inner.out.push_control(&Pong { id: ping.id });
            continue;
        }
        match state.on_frame(frame) {
            Ok(handled) => {
                wake.extend(handled.wake);
                if let Some(e) = handled.unanswered {
                    tracing::warn!(code = ?e.code(), message = %e.message, "server error");
                }
                if let Some(cid) = handled.ended_consumer {
                    // The server ended a consumer: its queue is gone, or (in a cluster)
                    // the node no longer runs the queues. Asking again tells which.
                    if let Some(consume) = state.consume_again(cid, inner.next_id()) {
                        let _ = inner.out.push_control(&consume);
                    }
                }
            }
            Err(kind) => {
                return Err(Error::Protocol(format!(
                    "unexpected {kind} frame from the server"
                )))
            }
        }
    }
}

async fn write_loop(inner: &Inner, wr: &mut WriteHalf) -> Error {
    let mut batch = BytesMut::with_capacity(READ_CHUNK);
    loop {
        inner.out.take(&mut batch).await;
        if let Err(e) = wr.write_all(&batch).await {
            return Error::Connect {
                addr: inner.addr(),
                reason: e.to_string(),
            };
        }
        batch.clear();
    }
}

/// Pings the server every `ping_interval`; a connection that has been silent for two
/// intervals is dead (a half-open TCP connection would otherwise hang forever).
async fn keepalive(inner: &Inner, last_read: &std::sync::Mutex<Instant>) -> Error {
    let every = inner.options.ping_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticker.tick().await;
        let silent = last_read.lock().map_or(Duration::ZERO, |t| t.elapsed());
        if silent > every * 2 {
            return Error::Timeout;
        }
        if inner.out.push_control(&Ping { id: 0 }).is_err() {
            return Error::Closed;
        }
    }
}
