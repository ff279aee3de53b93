//! A connection's outbound queue and the task that writes it to the socket.
//!
//! The queue is a byte buffer that other sessions encode frames straight into, bounded
//! in bytes rather than frames: the bound that matters is memory, and encoding in place
//! saves an allocation and a channel hop per delivered message. The writer task swaps
//! the whole buffer out and writes it with one `write_all`, so a burst of messages costs
//! one syscall.
//!
//! When a message would take the buffer over `max_pending_bytes`, the connection's
//! slow-consumer policy decides: drop the message and count it, or disconnect. Replies
//! to the connection's own requests (OK, PONG, ERROR) may use a further
//! [`CONTROL_HEADROOM`] bytes, so a subscriber that is merely behind on messages still
//! gets its pongs; a client that does not even read those is disconnected.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{Delivery, DeliveryHead, Encode, Envelope, ErrorCode, ErrorFrame, Message};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::SlowConsumerPolicy;
use crate::stats::Stats;

/// Extra bytes that replies to a client's own requests may use beyond the message bound.
pub const CONTROL_HEADROOM: usize = 64 * 1024;

/// What happened to a message offered to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Buffered for the writer.
    Queued,
    /// Refused: the buffer is full and the policy is to drop.
    Dropped,
    /// Refused: the connection is closing.
    Closed,
}

/// One connection's outbound queue.
#[derive(Debug)]
pub(crate) struct Outbound {
    /// Frames waiting for the writer. A std `Mutex` because it is held only to append
    /// an encoded frame or to swap the buffer out, never across an `.await`.
    pending: Mutex<Pending>,
    /// Wakes the writer after the buffer goes from empty to non-empty, or on close.
    wake: Notify,
    max_pending: usize,
    policy: SlowConsumerPolicy,
    /// Cancelled when this connection must end: the writer failed, or the
    /// slow-consumer policy disconnected it. The session's reader watches it.
    ending: CancellationToken,
    /// Messages refused by the slow-consumer policy over the connection's life.
    dropped: AtomicU64,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct Pending {
    buf: BytesMut,
    closed: bool,
}

/// Outbound queues whose writers must be woken once the current read batch is done.
///
/// Waking per frame would schedule the writer task for every message; deferring it to
/// the end of a batch lets one wake carry many frames.
#[derive(Debug, Default)]
pub(crate) struct Wakes(Vec<Arc<Outbound>>);

impl Wakes {
    pub fn wake_all(&mut self) {
        for out in self.0.drain(..) {
            out.wake.notify_one();
        }
    }
}

impl Outbound {
    pub fn new(
        max_pending: usize,
        policy: SlowConsumerPolicy,
        ending: CancellationToken,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            max_pending,
            policy,
            ending,
            dropped: AtomicU64::new(0),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Appending and swapping leave `Pending` consistent at every step, so a panic
        // elsewhere while the lock was held does not make the data unusable.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers a message for subscription `sid`, applying the slow-consumer policy.
    ///
    /// A message is refused only when the buffer already holds something: a single
    /// message larger than the bound still goes out on its own.
    ///
    /// `active` is checked under the queue's lock, the same lock [`Outbound::deactivate`]
    /// takes, so that no message for a subscription can follow the reply that ended it.
    pub fn push_message(
        self: &Arc<Self>,
        sid: u32,
        active: &AtomicBool,
        envelope: &Envelope,
        wakes: &mut Wakes,
    ) -> Push {
        let len = Message::parts_len(envelope.as_ref());
        let mut p = self.lock();
        if p.closed || !active.load(Relaxed) {
            return Push::Closed;
        }
        let was_empty = p.buf.is_empty();
        if !was_empty && p.buf.len() + len > self.max_pending {
            return match self.policy {
                SlowConsumerPolicy::Drop => Push::Dropped,
                SlowConsumerPolicy::Disconnect => {
                    self.disconnect_slow(&mut p);
                    Push::Closed
                }
            };
        }
        // The envelope was decoded from a frame within the size limit, so it re-encodes;
        // if it ever did not, the frame would be dropped here rather than sent broken.
        if Message::encode_parts(sid, envelope.as_ref(), &mut p.buf).is_err() {
            return Push::Dropped;
        }
        drop(p);
        if was_empty {
            wakes.0.push(Arc::clone(self));
        }
        Push::Queued
    }

    /// Queues a DELIVERY from a durable queue. Not subject to `max_pending_bytes`: the
    /// consumer's prefetch already bounds how many deliveries it is sent unsettled.
    pub fn push_delivery(
        self: &Arc<Self>,
        head: &DeliveryHead,
        envelope: &[u8],
        wakes: &mut Wakes,
    ) -> bool {
        let mut p = self.lock();
        if p.closed {
            return false;
        }
        let was_empty = p.buf.is_empty();
        if Delivery::encode_wire(head, envelope, &mut p.buf).is_err() {
            return false;
        }
        drop(p);
        if was_empty {
            wakes.0.push(Arc::clone(self));
        }
        true
    }

    /// Clears a subscription's `active` flag under the queue's lock: every message
    /// queued for it before this call is ahead in the buffer of whatever is queued after.
    pub fn deactivate(&self, active: &AtomicBool) {
        let _p = self.lock();
        active.store(false, Relaxed);
    }

    /// Queues a reply to this connection's own request (OK, PONG, ERROR, WELCOME).
    pub fn push_control(self: &Arc<Self>, frame: &impl Encode, wakes: &mut Wakes) {
        let mut p = self.lock();
        if p.closed {
            return;
        }
        let was_empty = p.buf.is_empty();
        if p.buf.len() + frame.encoded_len() > self.max_pending + CONTROL_HEADROOM {
            self.disconnect_slow(&mut p);
            return;
        }
        if frame.encode(&mut p.buf).is_err() {
            return;
        }
        drop(p);
        if was_empty {
            wakes.0.push(Arc::clone(self));
        }
    }

    /// Queues a final frame (an error that ends the connection, say), then closes: the
    /// writer sends what is buffered and ends.
    pub fn close_with(&self, frame: Option<&ErrorFrame>) {
        let mut p = self.lock();
        if !p.closed {
            if let Some(frame) = frame {
                // Ignored on failure: the connection is closing either way.
                let _ = frame.encode(&mut p.buf);
            }
            p.closed = true;
        }
        drop(p);
        self.wake.notify_one();
    }

    /// Throws away what is pending, queues `slow_consumer` and ends the connection.
    fn disconnect_slow(&self, p: &mut Pending) {
        tracing::warn!(pending = p.buf.len(), "slow consumer: disconnecting");
        self.stats.slow_consumer_disconnects.fetch_add(1, Relaxed);
        p.buf.clear();
        let err = ErrorFrame::new(
            0,
            ErrorCode::SlowConsumer,
            format!(
                "more than {} bytes were waiting to be sent to this connection; closing it",
                self.max_pending
            ),
        );
        let _ = err.encode(&mut p.buf);
        p.closed = true;
        self.ending.cancel();
        self.wake.notify_one();
    }

    /// Moves everything pending into `batch` (which must be empty), waiting until
    /// there is something. Returns `false` once the queue is closed and drained.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is taken until the future completes.
    async fn take(&self, batch: &mut BytesMut) -> bool {
        loop {
            {
                let mut p = self.lock();
                if !p.buf.is_empty() {
                    std::mem::swap(&mut p.buf, batch);
                    return true;
                }
                if p.closed {
                    return false;
                }
            }
            self.wake.notified().await;
        }
    }

    /// The bound of the buffer for messages (`max_pending_bytes`).
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// Bytes waiting to be written.
    pub fn pending_bytes(&self) -> usize {
        self.lock().buf.len()
    }

    /// Counts a message dropped for this connection. The router decides: a message a
    /// queue-group member refused but a peer took was not dropped.
    pub fn count_drop(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    /// Messages dropped by the slow-consumer policy so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Resolves when the connection must end (see [`Outbound::ending`]).
    pub fn ending(&self) -> &CancellationToken {
        &self.ending
    }

    /// Drains the queue into `io` until it is closed and empty.
    ///
    /// A write that takes longer than `write_timeout` means the peer stopped reading;
    /// the connection is then ended rather than held open forever.
    ///
    /// # Errors
    ///
    /// The socket failed or timed out. The queue is closed and the connection's
    /// `ending` token cancelled before returning, so its reader stops too.
    pub async fn write_to(
        self: Arc<Self>,
        mut io: impl AsyncWrite + Unpin,
        write_timeout: Duration,
    ) -> io::Result<()> {
        let result = async {
            let mut batch = BytesMut::with_capacity(64 * 1024);
            while self.take(&mut batch).await {
                tokio::time::timeout(write_timeout, io.write_all(&batch))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))??;
                self.stats.bytes_out.fetch_add(batch.len() as u64, Relaxed);
                batch.clear();
            }
            io.shutdown().await
        }
        .await;
        if result.is_err() {
            self.close_with(None);
            self.ending.cancel();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::{Frame, Headers, Pong};

    static ACTIVE: AtomicBool = AtomicBool::new(true);

    fn envelope(payload: usize) -> Envelope {
        Envelope {
            subject: "a.b".into(),
            reply_to: None,
            headers: Headers::new(),
            payload: vec![7u8; payload].into(),
        }
    }

    fn outbound(max: usize, policy: SlowConsumerPolicy) -> Arc<Outbound> {
        Arc::new(Outbound::new(
            max,
            policy,
            CancellationToken::new(),
            Arc::default(),
        ))
    }

    #[test]
    fn drop_policy_bounds_the_buffer() {
        let out = outbound(1024, SlowConsumerPolicy::Drop);
        let mut wakes = Wakes::default();
        let mut results = Vec::new();
        for _ in 0..100 {
            results.push(out.push_message(1, &ACTIVE, &envelope(100), &mut wakes));
        }
        assert!(out.pending_bytes() <= 1024);
        assert!(results.contains(&Push::Dropped));
        assert_eq!(
            wakes.0.len(),
            1,
            "one wake for the empty-to-full transition"
        );
        assert!(!out.ending().is_cancelled());
    }

    #[test]
    fn oversized_message_goes_alone() {
        let out = outbound(1024, SlowConsumerPolicy::Drop);
        let mut wakes = Wakes::default();
        assert_eq!(
            out.push_message(1, &ACTIVE, &envelope(4000), &mut wakes),
            Push::Queued
        );
        assert_eq!(
            out.push_message(1, &ACTIVE, &envelope(10), &mut wakes),
            Push::Dropped
        );
    }

    #[test]
    fn disconnect_policy_ends_the_connection_with_an_error() {
        let out = outbound(1024, SlowConsumerPolicy::Disconnect);
        let mut wakes = Wakes::default();
        while out.push_message(1, &ACTIVE, &envelope(100), &mut wakes) == Push::Queued {}
        assert!(out.ending().is_cancelled());
        assert_eq!(
            out.push_message(1, &ACTIVE, &envelope(1), &mut wakes),
            Push::Closed
        );
        let mut buf = BytesMut::new();
        std::mem::swap(&mut out.lock().buf, &mut buf);
        match Frame::decode(&mut buf, 1 << 20) {
            Ok(Some(Frame::Error(e))) => assert_eq!(e.code(), Some(ErrorCode::SlowConsumer)),
            other => panic!("expected slow_consumer error, got {other:?}"),
        }
        assert!(buf.is_empty(), "pending messages were discarded");
    }

    #[test]
    fn control_frames_use_headroom() {
        let out = outbound(1024, SlowConsumerPolicy::Drop);
        let mut wakes = Wakes::default();
        while out.push_message(1, &ACTIVE, &envelope(100), &mut wakes) == Push::Queued {}
        out.push_control(&Pong { id: 1 }, &mut wakes);
        assert!(!out.ending().is_cancelled(), "a pong fits the headroom");
        for id in 0..CONTROL_HEADROOM as u32 {
            out.push_control(&Pong { id }, &mut wakes);
        }
        assert!(
            out.ending().is_cancelled(),
            "a client that reads nothing is cut off"
        );
    }

    #[tokio::test]
    async fn writer_drains_then_ends_on_close() {
        let out = outbound(1 << 20, SlowConsumerPolicy::Drop);
        let mut wakes = Wakes::default();
        for _ in 0..10 {
            out.push_message(1, &ACTIVE, &envelope(10), &mut wakes);
        }
        wakes.wake_all();
        out.close_with(None);
        let mut sink = Vec::new();
        Arc::clone(&out)
            .write_to(&mut sink, Duration::from_secs(5))
            .await
            .unwrap();
        let mut buf = BytesMut::from(&sink[..]);
        let mut n = 0;
        while let Some(f) = Frame::decode(&mut buf, 1 << 20).unwrap() {
            assert!(matches!(f, Frame::Message(_)));
            n += 1;
        }
        assert_eq!(n, 10);
    }
}
