//! The client's connection state, without any I/O.
//!
//! What is in flight, which subscriptions exist, and what to do when the connection is
//! lost or re-established are decisions made here, on plain data, by a struct the
//! connection driver feeds with frames. That keeps the rules unit-testable without a
//! socket (as rumqttc's `state.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use rustc_hash::FxHashMap;
use tern_codec::{ErrorFrame, Message as MessageFrame, Subscribe};
use tokio::sync::oneshot;

use crate::queue::{Pushed, SubQueue};
use crate::Error;

/// What an answer with a given correlation id completes.
#[derive(Debug)]
pub(crate) enum Request {
    /// A `flush()`: succeeds on PONG, fails if the connection drops first.
    Ping(oneshot::Sender<Result<(), Error>>),
    /// A SUBSCRIBE for this subscription id; the waiter lives in the subscription.
    Subscribe(u32),
    /// An UNSUBSCRIBE. Succeeds on OK, and also when the connection drops: the server
    /// forgets a connection's subscriptions when it goes.
    Unsubscribe(oneshot::Sender<Result<(), Error>>),
}

/// A live subscription.
#[derive(Debug)]
pub(crate) struct SubEntry {
    pub pattern: ByteString,
    pub group: Option<ByteString>,
    pub filter: Option<ByteString>,
    pub queue: Arc<SubQueue>,
    /// Completed when the server first accepts (or refuses) the subscription.
    pub ready: Option<oneshot::Sender<Result<(), Error>>>,
}

/// Requests in flight and subscriptions, for one client across reconnects.
#[derive(Debug, Default)]
pub(crate) struct State {
    requests: HashMap<u32, Request>,
    /// FxHash: looked up for every delivered message, keyed by ids this client chose.
    subs: FxHashMap<u32, SubEntry>,
}

impl State {
    pub fn add_request(&mut self, id: u32, request: Request) {
        self.requests.insert(id, request);
    }

    /// Forgets a request whose caller gave up (a timed-out flush, say).
    pub fn cancel_request(&mut self, id: u32) {
        self.requests.remove(&id);
    }

    pub fn add_subscription(&mut self, sid: u32, entry: SubEntry) {
        self.subs.insert(sid, entry);
    }

    /// Removes a subscription; later messages for it are ignored.
    pub fn remove_subscription(&mut self, sid: u32) -> bool {
        match self.subs.remove(&sid) {
            Some(sub) => {
                sub.queue.close();
                true
            }
            None => false,
        }
    }

    /// An OK or PONG for `id`.
    pub fn on_ok(&mut self, id: u32) {
        match self.requests.remove(&id) {
            Some(Request::Ping(tx) | Request::Unsubscribe(tx)) => {
                let _ = tx.send(Ok(()));
            }
            Some(Request::Subscribe(sid)) => {
                if let Some(tx) = self.subs.get_mut(&sid).and_then(|s| s.ready.take()) {
                    let _ = tx.send(Ok(()));
                }
            }
            None => {}
        }
    }

    /// An ERROR. Returns it back when it answers no request (id 0, or a request
    /// nobody waits for any more), for the caller to log.
    pub fn on_error(&mut self, e: ErrorFrame) -> Option<ErrorFrame> {
        match self.requests.remove(&e.id) {
            Some(Request::Ping(tx) | Request::Unsubscribe(tx)) => {
                let _ = tx.send(Err(e.into()));
                None
            }
            Some(Request::Subscribe(sid)) => {
                // Refused: the subscription ends; its stream will see the end.
                let sub = self.subs.remove(&sid);
                if let Some(sub) = &sub {
                    sub.queue.close();
                }
                match sub.and_then(|s| s.ready) {
                    Some(tx) => {
                        let _ = tx.send(Err(e.into()));
                        None
                    }
                    None => Some(e),
                }
            }
            None => Some(e),
        }
    }

    /// A MESSAGE. Never waits: a subscription whose queue is full loses the message
    /// (and counts it) rather than stalling every other subscription on the connection.
    /// Returns the queue when its reader must be woken (it was empty).
    pub fn on_message(&mut self, m: MessageFrame) -> Option<Arc<SubQueue>> {
        let sub = self.subs.get(&m.sid)?;
        match sub.queue.push(m.envelope.into()) {
            Pushed::First => Some(Arc::clone(&sub.queue)),
            Pushed::Queued | Pushed::Dropped | Pushed::Closed => None,
        }
    }

    /// The connection dropped. Pings and publishes waiting for an answer fail;
    /// unsubscribes succeed (the server dropped the subscription with the connection);
    /// subscribes keep waiting, for their re-subscription on the next connection.
    pub fn connection_lost(&mut self) {
        for (_, request) in self.requests.drain() {
            match request {
                Request::Ping(tx) => {
                    let _ = tx.send(Err(Error::ConnectionLost));
                }
                Request::Unsubscribe(tx) => {
                    let _ = tx.send(Ok(()));
                }
                Request::Subscribe(_) => {}
            }
        }
    }

    /// The client is closed for good: everything waiting fails, every subscription
    /// stream ends.
    pub fn close(&mut self) {
        for (_, request) in self.requests.drain() {
            match request {
                Request::Ping(tx) | Request::Unsubscribe(tx) => {
                    let _ = tx.send(Err(Error::Closed));
                }
                Request::Subscribe(_) => {}
            }
        }
        for (_, sub) in self.subs.drain() {
            sub.queue.close();
            if let Some(tx) = sub.ready {
                let _ = tx.send(Err(Error::Closed));
            }
        }
    }

    /// SUBSCRIBE frames that re-establish every subscription on a new connection, with
    /// ids from `next_id`, each registered as in flight.
    pub fn resubscribe(&mut self, mut next_id: impl FnMut() -> u32) -> Vec<Subscribe> {
        let mut frames = Vec::with_capacity(self.subs.len());
        for (sid, sub) in &self.subs {
            let id = next_id();
            self.requests.insert(id, Request::Subscribe(*sid));
            frames.push(Subscribe {
                id,
                sid: *sid,
                pattern: sub.pattern.clone(),
                group: sub.group.clone(),
                filter: sub.filter.clone(),
            });
        }
        frames
    }
}

/// Exponential back-off with jitter between reconnect attempts.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// Attempts made since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt: `min * 2^attempt`, capped at `max`, then
    /// jittered down by up to half so that many clients cut off together do not all
    /// come back in the same instant.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .min
            .saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX));
        self.attempt = self.attempt.saturating_add(1);
        let capped = exp.min(self.max);
        let jitter = capped.mul_f64(fastrand::f64() * 0.5);
        capped - jitter
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::{Envelope, ErrorCode, Headers};

    fn message(sid: u32) -> MessageFrame {
        MessageFrame {
            sid,
            envelope: Envelope {
                subject: "a".into(),
                reply_to: None,
                headers: Headers::new(),
                payload: "x".into(),
            },
        }
    }

    fn sub(
        state: &mut State,
        sid: u32,
        cap: usize,
    ) -> (Arc<SubQueue>, oneshot::Receiver<Result<(), Error>>) {
        let queue = Arc::new(SubQueue::new(cap));
        let (ready_tx, ready_rx) = oneshot::channel();
        state.add_subscription(
            sid,
            SubEntry {
                pattern: "a".into(),
                group: None,
                filter: None,
                queue: Arc::clone(&queue),
                ready: Some(ready_tx),
            },
        );
        (queue, ready_rx)
    }

    fn drain(q: &SubQueue) -> usize {
        let mut v = std::collections::VecDeque::new();
        q.try_take(&mut v);
        v.len()
    }

    #[test]
    fn subscribe_ok_and_messages() {
        let mut st = State::default();
        let (queue, mut ready) = sub(&mut st, 1, 2);
        st.add_request(10, Request::Subscribe(1));
        st.on_ok(10);
        assert!(matches!(ready.try_recv(), Ok(Ok(()))));
        assert!(
            st.on_message(message(1)).is_some(),
            "first one wakes the reader"
        );
        assert!(st.on_message(message(1)).is_none(), "reader already woken");
        assert!(st.on_message(message(1)).is_none(), "queue of 2 is full");
        assert!(st.on_message(message(9)).is_none(), "unknown sid");
        assert_eq!(queue.dropped(), 1);
        assert_eq!(drain(&queue), 2);
        assert!(st.on_message(message(1)).is_some(), "empty again: wakes");
    }

    #[test]
    fn subscribe_refused_removes_it() {
        let mut st = State::default();
        let (_queue, mut ready) = sub(&mut st, 1, 2);
        st.add_request(10, Request::Subscribe(1));
        let left = st.on_error(ErrorFrame::new(10, ErrorCode::InvalidPattern, "bad"));
        assert!(left.is_none());
        match ready.try_recv() {
            Ok(Err(e)) => assert_eq!(e.code(), Some(ErrorCode::InvalidPattern)),
            other => panic!("{other:?}"),
        }
        assert!(st.subs.is_empty());
    }

    #[test]
    fn unanswered_errors_come_back() {
        let mut st = State::default();
        let e = ErrorFrame::new(0, ErrorCode::InvalidSubject, "bad");
        assert_eq!(st.on_error(e.clone()), Some(e));
    }

    #[test]
    fn connection_lost_fails_pings_and_resubscribes() {
        let mut st = State::default();
        let (ping_tx, mut ping_rx) = oneshot::channel();
        let (unsub_tx, mut unsub_rx) = oneshot::channel();
        st.add_request(1, Request::Ping(ping_tx));
        st.add_request(2, Request::Unsubscribe(unsub_tx));
        let (_queue, mut ready) = sub(&mut st, 7, 1);
        st.add_request(3, Request::Subscribe(7));
        st.connection_lost();
        assert!(matches!(ping_rx.try_recv(), Ok(Err(Error::ConnectionLost))));
        assert!(matches!(unsub_rx.try_recv(), Ok(Ok(()))));
        assert!(ready.try_recv().is_err(), "subscribe still waiting");

        let mut ids = 100..;
        let frames = st.resubscribe(|| ids.next().unwrap());
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].id, frames[0].sid), (100, 7));
        st.on_ok(3);
        assert!(ready.try_recv().is_err(), "the old id answers nothing");
        st.on_ok(100);
        assert!(matches!(ready.try_recv(), Ok(Ok(()))));
    }

    #[test]
    fn close_fails_everything() {
        let mut st = State::default();
        let (ping_tx, mut ping_rx) = oneshot::channel();
        st.add_request(1, Request::Ping(ping_tx));
        let (queue, mut ready) = sub(&mut st, 7, 1);
        st.close();
        assert!(matches!(ping_rx.try_recv(), Ok(Err(Error::Closed))));
        assert!(matches!(ready.try_recv(), Ok(Err(Error::Closed))));
        let waker = futures_util::task::noop_waker();
        let mut v = std::collections::VecDeque::new();
        assert_eq!(queue.poll_take(&mut v, &waker), Some(false), "stream ended");
    }

    #[test]
    fn backoff_grows_is_capped_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut last_cap = Duration::ZERO;
        for attempt in 0..40 {
            let d = b.next_delay();
            let cap = Duration::from_millis(100)
                .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
                .min(Duration::from_secs(2));
            assert!(
                d <= cap && d >= cap / 2,
                "attempt {attempt}: {d:?} vs {cap:?}"
            );
            assert!(cap >= last_cap);
            last_cap = cap;
        }
        assert_eq!(b.attempts(), 40);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
