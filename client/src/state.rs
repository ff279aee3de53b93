//! The client's connection state, without any I/O.
//!
//! What is in flight, which subscriptions and consumers exist, and what to do when the
//! connection is lost or re-established are decisions made here, on plain data, by a
//! struct the connection driver feeds with frames. That keeps the rules unit-testable
//! without a socket (as rumqttc's `state.rs`).
//!
//! On a lost connection:
//!
//! | in flight | becomes |
//! |---|---|
//! | flush (PING) | fails: what was buffered may not have arrived |
//! | unsubscribe, cancel | succeeds: the server dropped it with the connection |
//! | ack, nack, received | fails: the delivery went back to its queue |
//! | queue administration | fails: the caller may retry (declare is idempotent) |
//! | subscribe, consume | waits: re-sent on the next connection |
//! | QoS 1/2 publish | waits: re-sent on the next connection (QoS 2 is deduplicated) |
//!
//! A cluster node that does not run the queues answers a consume, a queue request or
//! (while no leader is known) a publish with `not_leader`: the consume and the publish
//! wait, to be re-sent on the next connection, and the client moves to the node named
//! ([`State::take_move`]); the queue request fails, and its caller asks again there.
//! A consumer the server ends (CANCEL with id 0) is asked for again: a queue that is
//! gone ends it, another node running the queues moves it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use rustc_hash::FxHashMap;
use tern_codec::{
    AckMode, ClusterInfo, Confirm, Consume, Delivery as DeliveryFrame, ErrorCode, ErrorFrame,
    Frame, FrameType, GroupsInfo, Message as MessageFrame, QueueInfo, ServerInfo, Subscribe,
};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::queue::{Pushed, SubQueue, Wake};
use crate::{Error, Message};

/// What a QoS 1 or 2 publish's CONFIRM said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation {
    /// How many queues stored the message.
    pub queues: u16,
    /// The broker had this producer sequence already and stored nothing again.
    pub duplicate: bool,
}

/// An answer to a queue administration request.
#[derive(Debug)]
pub(crate) enum AdminReply {
    Ok,
    Info(QueueInfo),
    Server(ServerInfo),
    Cluster(ClusterInfo),
    Groups(GroupsInfo),
    List(Vec<QueueInfo>),
    Count(u64),
}

/// Which answer an admin request expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminKind {
    /// OK.
    Ok,
    /// One QUEUE_INFO.
    Info,
    /// QUEUE_INFOs, then DONE.
    List,
    /// DONE with a count.
    Count,
}

type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// What an answer with a given correlation id completes.
#[derive(Debug)]
pub(crate) enum Request {
    /// A `flush()`: succeeds on PONG, fails if the connection drops first.
    Ping(Reply<()>),
    /// A SUBSCRIBE for this subscription id; the waiter lives in the subscription.
    Subscribe(u32),
    /// An UNSUBSCRIBE or CANCEL: succeeds on OK, and also when the connection drops.
    Release(Reply<()>),
    /// A CONSUME for this consumer id; the waiter lives in the consumer.
    Consume(u32),
    /// An ACK, NACK or RECEIVED.
    Settle(Reply<()>),
    /// A QoS 1/2 publish: its encoded frame, kept to re-send after a reconnect, and
    /// its slot under the in-flight limit, given back with the answer.
    Publish {
        frame: Bytes,
        reply: Reply<Confirmation>,
        _slot: OwnedSemaphorePermit,
    },
    Admin {
        kind: AdminKind,
        infos: Vec<QueueInfo>,
        reply: Reply<AdminReply>,
    },
}

/// A live subscription.
#[derive(Debug)]
pub(crate) struct SubEntry {
    pub pattern: ByteString,
    pub group: Option<ByteString>,
    pub filter: Option<ByteString>,
    pub queue: Arc<SubQueue<Message>>,
    /// Completed when the server first accepts (or refuses) the subscription.
    pub ready: Option<Reply<()>>,
}

/// A live consumer.
#[derive(Debug)]
pub(crate) struct ConsumerEntry {
    pub queue_name: ByteString,
    pub prefetch: u32,
    pub mode: AckMode,
    pub name: Option<ByteString>,
    pub deliveries: Arc<SubQueue<DeliveryFrame>>,
    pub ready: Option<Reply<()>>,
}

/// What handling a frame left for the caller to do.
#[derive(Default)]
pub(crate) struct Handled {
    /// A queue whose reader must be woken (it just went from empty to not).
    pub wake: Option<Arc<dyn Wake>>,
    /// An error that answered no request, to log.
    pub unanswered: Option<ErrorFrame>,
    /// A consumer the server ended, to ask for again ([`State::consume_again`]).
    pub ended_consumer: Option<u32>,
}

impl Handled {
    fn wake(wake: Option<Arc<dyn Wake>>) -> Self {
        Self {
            wake,
            ..Self::default()
        }
    }
}

/// Requests in flight, subscriptions and consumers, for one client across reconnects.
#[derive(Debug, Default)]
pub(crate) struct State {
    requests: HashMap<u32, Request>,
    /// FxHash: looked up for every delivered message, keyed by ids this client chose.
    subs: FxHashMap<u32, SubEntry>,
    consumers: FxHashMap<u32, ConsumerEntry>,
    pub inbox: Inbox,
    /// Errors that answered no request (a refused QoS 0 publish, say), the newest
    /// [`UNANSWERED_KEPT`], until the application takes them.
    unanswered: VecDeque<ErrorFrame>,
    /// Set by a `not_leader` answer: the connection is to end and the client to move,
    /// to the address named if any.
    moving: Option<Option<String>>,
}

/// Most unanswered errors kept for the application; older ones are dropped (and were
/// logged when they came).
pub(crate) const UNANSWERED_KEPT: usize = 64;

/// Where replies to this client's requests arrive: one wildcard subscription per
/// client (`<prefix>.>`), each request waiting on its own last token. One
/// subscription serves every request, so a request costs no SUBSCRIBE round trip.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    /// The inbox subscription's id, once it is made.
    pub sid: Option<u32>,
    waiters: HashMap<u64, ReplyWaiter>,
}

/// A request waiting for its reply (or, for scatter-gather, its replies).
#[derive(Debug)]
pub(crate) enum ReplyWaiter {
    One(oneshot::Sender<Message>),
    Many(tokio::sync::mpsc::Sender<Message>),
}

impl Inbox {
    pub fn wait(&mut self, token: u64, waiter: ReplyWaiter) {
        self.waiters.insert(token, waiter);
    }

    pub fn forget(&mut self, token: u64) {
        self.waiters.remove(&token);
    }

    /// Hands a reply to its request; a reply nobody waits for (it came after the
    /// timeout, say) is dropped.
    fn deliver(&mut self, m: Message) {
        let token = m
            .subject
            .rsplit('.')
            .next()
            .and_then(|t| t.parse::<u64>().ok());
        let Some(token) = token else {
            return;
        };
        match self.waiters.get(&token) {
            Some(ReplyWaiter::One(_)) => {
                if let Some(ReplyWaiter::One(tx)) = self.waiters.remove(&token) {
                    let _ = tx.send(m);
                }
            }
            // Scatter-gather: extra replies beyond what the caller can hold are dropped.
            Some(ReplyWaiter::Many(tx)) => {
                let _ = tx.try_send(m);
            }
            None => {}
        }
    }
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

    pub fn add_consumer(&mut self, cid: u32, entry: ConsumerEntry) {
        self.consumers.insert(cid, entry);
    }

    /// Removes a consumer; later deliveries for it are ignored.
    pub fn remove_consumer(&mut self, cid: u32) -> bool {
        match self.consumers.remove(&cid) {
            Some(c) => {
                c.deliveries.close();
                true
            }
            None => false,
        }
    }

    /// Handles a frame from the server.
    ///
    /// # Errors
    ///
    /// The type of a frame a server never sends.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Handled, FrameType> {
        match frame {
            Frame::Message(m) => Ok(Handled::wake(self.on_message(m))),
            Frame::Delivery(d) => Ok(Handled::wake(self.on_delivery(d))),
            Frame::Ok(ok) => {
                self.on_ok(ok.id);
                Ok(Handled::default())
            }
            Frame::Pong(pong) => {
                self.on_ok(pong.id);
                Ok(Handled::default())
            }
            Frame::Confirm(c) => {
                self.on_confirm(c);
                Ok(Handled::default())
            }
            Frame::QueueInfo(info) => {
                self.on_queue_info(info);
                Ok(Handled::default())
            }
            Frame::ServerInfo(info) => {
                if let Some(Request::Admin { reply, .. }) = self.requests.remove(&info.id) {
                    let _ = reply.send(Ok(AdminReply::Server(info)));
                }
                Ok(Handled::default())
            }
            Frame::ClusterInfo(info) => {
                if let Some(Request::Admin { reply, .. }) = self.requests.remove(&info.id) {
                    let _ = reply.send(Ok(AdminReply::Cluster(info)));
                }
                Ok(Handled::default())
            }
            Frame::GroupsInfo(info) => {
                if let Some(Request::Admin { reply, .. }) = self.requests.remove(&info.id) {
                    let _ = reply.send(Ok(AdminReply::Groups(info)));
                }
                Ok(Handled::default())
            }
            Frame::Done(done) => {
                self.on_done(done.id, done.count);
                Ok(Handled::default())
            }
            Frame::Cancel(c) => Ok(Handled {
                ended_consumer: self.consumers.contains_key(&c.cid).then_some(c.cid),
                ..Handled::default()
            }),
            Frame::Error(e) => {
                let unanswered = self.on_error(e);
                if let Some(e) = &unanswered {
                    self.keep_unanswered(e.clone());
                }
                Ok(Handled {
                    unanswered,
                    ..Handled::default()
                })
            }
            other => Err(other.frame_type()),
        }
    }

    /// An OK or PONG for `id`.
    fn on_ok(&mut self, id: u32) {
        match self.requests.remove(&id) {
            Some(Request::Ping(tx) | Request::Release(tx) | Request::Settle(tx)) => {
                let _ = tx.send(Ok(()));
            }
            Some(Request::Subscribe(sid)) => {
                if let Some(tx) = self.subs.get_mut(&sid).and_then(|s| s.ready.take()) {
                    let _ = tx.send(Ok(()));
                }
            }
            Some(Request::Consume(cid)) => {
                if let Some(tx) = self.consumers.get_mut(&cid).and_then(|c| c.ready.take()) {
                    let _ = tx.send(Ok(()));
                }
            }
            Some(Request::Admin { reply, .. }) => {
                let _ = reply.send(Ok(AdminReply::Ok));
            }
            Some(Request::Publish { reply, .. }) => {
                let _ = reply.send(Ok(Confirmation {
                    queues: 0,
                    duplicate: false,
                }));
            }
            None => {}
        }
    }

    fn on_confirm(&mut self, c: Confirm) {
        match self.requests.remove(&c.id) {
            Some(Request::Publish { reply, .. }) => {
                let _ = reply.send(Ok(Confirmation {
                    queues: c.queues,
                    duplicate: c.duplicate,
                }));
            }
            Some(other) => {
                self.requests.insert(c.id, other);
            }
            None => {}
        }
    }

    fn on_queue_info(&mut self, info: QueueInfo) {
        let id = info.id;
        match self.requests.remove(&id) {
            Some(Request::Admin {
                kind: AdminKind::Info,
                reply,
                ..
            }) => {
                let _ = reply.send(Ok(AdminReply::Info(info)));
            }
            Some(Request::Admin {
                kind: AdminKind::List,
                mut infos,
                reply,
            }) => {
                infos.push(info);
                self.requests.insert(
                    id,
                    Request::Admin {
                        kind: AdminKind::List,
                        infos,
                        reply,
                    },
                );
            }
            Some(other) => {
                self.requests.insert(id, other);
            }
            None => {}
        }
    }

    fn on_done(&mut self, id: u32, count: u64) {
        match self.requests.remove(&id) {
            Some(Request::Admin { kind, infos, reply }) => {
                let _ = reply.send(Ok(match kind {
                    AdminKind::List => AdminReply::List(infos),
                    _ => AdminReply::Count(count),
                }));
            }
            Some(other) => {
                self.requests.insert(id, other);
            }
            None => {}
        }
    }

    fn keep_unanswered(&mut self, e: ErrorFrame) {
        if self.unanswered.len() == UNANSWERED_KEPT {
            self.unanswered.pop_front();
        }
        self.unanswered.push_back(e);
    }

    /// The errors that answered no request, oldest first; none are kept after.
    pub fn take_unanswered(&mut self) -> Vec<ErrorFrame> {
        self.unanswered.drain(..).collect()
    }

    /// Where the client is to move, once per `not_leader` answer: `Some(None)` while
    /// no node is named.
    pub fn take_move(&mut self) -> Option<Option<String>> {
        self.moving.take()
    }

    /// A CONSUME asking again for consumer `cid`, which the server ended, registered
    /// under `id`; `None` if the application let it go meanwhile.
    pub fn consume_again(&mut self, cid: u32, id: u32) -> Option<Frame> {
        let c = self.consumers.get(&cid)?;
        let frame = Frame::Consume(Consume {
            id,
            cid,
            queue: c.queue_name.clone(),
            prefetch: c.prefetch,
            mode: c.mode,
            name: c.name.clone(),
        });
        self.requests.insert(id, Request::Consume(cid));
        Some(frame)
    }

    /// An ERROR. Returns it back when it answers no request (id 0, or a request
    /// nobody waits for any more), for the caller to log.
    fn on_error(&mut self, e: ErrorFrame) -> Option<ErrorFrame> {
        if e.code() == Some(ErrorCode::NotLeader) {
            let request = self.requests.get(&e.id);
            if matches!(request, Some(Request::Admin { .. })) {
                // It fails, and its caller asks again on the node moved to.
                self.moving = Some(crate::servers::leader_hint(&e.message));
            }
            if matches!(request, Some(Request::Consume(_) | Request::Publish { .. })) {
                // Kept, to be sent again where the queues run.
                self.moving = Some(crate::servers::leader_hint(&e.message));
                return None;
            }
        }
        match self.requests.remove(&e.id) {
            // The goal of an unsubscribe or cancel is that the server holds nothing:
            // "there is no such thing" (after a reconnect, say) is that too.
            Some(Request::Release(tx))
                if matches!(
                    e.code(),
                    Some(ErrorCode::UnknownSubscription | ErrorCode::UnknownConsumer)
                ) =>
            {
                let _ = tx.send(Ok(()));
                None
            }
            Some(Request::Ping(tx) | Request::Release(tx) | Request::Settle(tx)) => {
                let _ = tx.send(Err(e.into()));
                None
            }
            Some(Request::Publish { reply, .. }) => {
                let _ = reply.send(Err(e.into()));
                None
            }
            Some(Request::Admin { reply, .. }) => {
                let _ = reply.send(Err(e.into()));
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
            Some(Request::Consume(cid)) => {
                let consumer = self.consumers.remove(&cid);
                if let Some(c) = &consumer {
                    c.deliveries.close();
                }
                match consumer.and_then(|c| c.ready) {
                    Some(tx) => {
                        let _ = tx.send(Err(e.into()));
                        None
                    }
                    // Asked again after the server ended it: the queue is gone, which
                    // ends the stream and is no error of the application's.
                    None if e.code() == Some(ErrorCode::QueueNotFound) => None,
                    None => Some(e),
                }
            }
            None => Some(e),
        }
    }

    /// A MESSAGE. Never waits: a subscription whose queue is full loses the message
    /// (and counts it) rather than stalling every other subscription on the connection.
    /// Returns the queue when its reader must be woken (it was empty).
    fn on_message(&mut self, m: MessageFrame) -> Option<Arc<dyn Wake>> {
        if self.inbox.sid == Some(m.sid) {
            self.inbox.deliver(m.envelope.into());
            return None;
        }
        let sub = self.subs.get(&m.sid)?;
        match sub.queue.push(m.envelope.into()) {
            Pushed::First => Some(Arc::clone(&sub.queue) as Arc<dyn Wake>),
            Pushed::Queued | Pushed::Dropped | Pushed::Closed => None,
        }
    }

    /// A DELIVERY. The server sends no more than the consumer's prefetch outstanding
    /// (unsettled, or for auto-ack not yet credited), so the consumer's queue (sized to
    /// twice that, for the leftovers of a lost connection) does not drop one.
    fn on_delivery(&mut self, d: DeliveryFrame) -> Option<Arc<dyn Wake>> {
        let c = self.consumers.get(&d.head.cid)?;
        match c.deliveries.push(d) {
            Pushed::First => Some(Arc::clone(&c.deliveries) as Arc<dyn Wake>),
            Pushed::Queued | Pushed::Dropped | Pushed::Closed => None,
        }
    }

    /// The connection dropped (see the module docs for what becomes of each request).
    pub fn connection_lost(&mut self) {
        self.requests.retain(|_, request| match request {
            Request::Subscribe(_) | Request::Consume(_) | Request::Publish { .. } => true,
            Request::Release(tx) => {
                let tx = std::mem::replace(tx, oneshot::channel().0);
                let _ = tx.send(Ok(()));
                false
            }
            Request::Ping(tx) | Request::Settle(tx) => {
                let tx = std::mem::replace(tx, oneshot::channel().0);
                let _ = tx.send(Err(Error::ConnectionLost));
                false
            }
            Request::Admin { reply, .. } => {
                let tx = std::mem::replace(reply, oneshot::channel().0);
                let _ = tx.send(Err(Error::ConnectionLost));
                false
            }
        });
    }

    /// The client is closed for good: everything waiting fails, every stream ends.
    pub fn close(&mut self) {
        for (_, request) in self.requests.drain() {
            match request {
                Request::Ping(tx) | Request::Release(tx) | Request::Settle(tx) => {
                    let _ = tx.send(Err(Error::Closed));
                }
                Request::Publish { reply, .. } => {
                    let _ = reply.send(Err(Error::Closed));
                }
                Request::Admin { reply, .. } => {
                    let _ = reply.send(Err(Error::Closed));
                }
                Request::Subscribe(_) | Request::Consume(_) => {}
            }
        }
        for (_, sub) in self.subs.drain() {
            sub.queue.close();
            if let Some(tx) = sub.ready {
                let _ = tx.send(Err(Error::Closed));
            }
        }
        for (_, c) in self.consumers.drain() {
            c.deliveries.close();
            if let Some(tx) = c.ready {
                let _ = tx.send(Err(Error::Closed));
            }
        }
    }

    /// What a new connection must be sent before anything else: a SUBSCRIBE for every
    /// subscription and a CONSUME for every consumer (with fresh ids from `next_id`,
    /// registered as in flight), then every unconfirmed publish, in the order it was
    /// first sent.
    pub fn reestablish(&mut self, mut next_id: impl FnMut() -> u32) -> (Vec<Frame>, Vec<Bytes>) {
        // Stale ids of subscribes and consumes from the old connection answer nothing.
        self.requests
            .retain(|_, r| !matches!(r, Request::Subscribe(_) | Request::Consume(_)));
        let mut frames = Vec::with_capacity(self.subs.len() + self.consumers.len());
        for (sid, sub) in &self.subs {
            let id = next_id();
            self.requests.insert(id, Request::Subscribe(*sid));
            frames.push(Frame::Subscribe(Subscribe {
                id,
                sid: *sid,
                pattern: sub.pattern.clone(),
                group: sub.group.clone(),
                filter: sub.filter.clone(),
            }));
        }
        for (cid, c) in &self.consumers {
            let id = next_id();
            self.requests.insert(id, Request::Consume(*cid));
            frames.push(Frame::Consume(Consume {
                id,
                cid: *cid,
                queue: c.queue_name.clone(),
                prefetch: c.prefetch,
                mode: c.mode,
                name: c.name.clone(),
            }));
        }
        let publishes: BTreeMap<u32, Bytes> = self
            .requests
            .iter()
            .filter_map(|(id, r)| match r {
                Request::Publish { frame, .. } => Some((*id, frame.clone())),
                _ => None,
            })
            .collect();
        (frames, publishes.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::{Envelope, Headers};

    fn message(sid: u32) -> Frame {
        Frame::Message(MessageFrame {
            sid,
            envelope: Envelope {
                subject: "a".into(),
                reply_to: None,
                headers: Headers::new(),
                payload: "x".into(),
            },
        })
    }

    fn sub(
        state: &mut State,
        sid: u32,
        cap: usize,
    ) -> (Arc<SubQueue<Message>>, oneshot::Receiver<Result<(), Error>>) {
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

    fn drain<T>(q: &SubQueue<T>) -> usize {
        let mut v = std::collections::VecDeque::new();
        q.try_take(&mut v);
        v.len()
    }

    fn wakes(st: &mut State, f: Frame) -> bool {
        st.on_frame(f).unwrap().wake.is_some()
    }

    fn slot() -> OwnedSemaphorePermit {
        Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap()
    }

    #[test]
    fn subscribe_ok_and_messages() {
        let mut st = State::default();
        let (queue, mut ready) = sub(&mut st, 1, 2);
        st.add_request(10, Request::Subscribe(1));
        st.on_ok(10);
        assert!(matches!(ready.try_recv(), Ok(Ok(()))));
        assert!(wakes(&mut st, message(1)), "first one wakes the reader");
        assert!(!wakes(&mut st, message(1)), "reader already woken");
        assert!(!wakes(&mut st, message(1)), "queue of 2 is full");
        assert!(!wakes(&mut st, message(9)), "unknown sid");
        assert_eq!(queue.dropped(), 1);
        assert_eq!(drain(&queue), 2);
        assert!(wakes(&mut st, message(1)), "empty again: wakes");
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
    fn unanswered_errors_are_kept_for_the_application_bounded() {
        let mut st = State::default();
        for i in 0..UNANSWERED_KEPT + 3 {
            let e = ErrorFrame::new(0, ErrorCode::PermissionDenied, format!("no {i}"));
            st.on_frame(Frame::Error(e)).unwrap();
        }
        let kept = st.take_unanswered();
        assert_eq!(kept.len(), UNANSWERED_KEPT);
        assert_eq!(kept[0].message, "no 3", "the oldest went first");
        assert!(st.take_unanswered().is_empty(), "taken");
    }

    #[test]
    fn confirms_complete_publishes() {
        let mut st = State::default();
        let (tx, mut rx) = oneshot::channel();
        st.add_request(
            5,
            Request::Publish {
                frame: Bytes::from_static(b"p"),
                reply: tx,
                _slot: slot(),
            },
        );
        st.on_frame(Frame::Confirm(Confirm {
            id: 5,
            queues: 2,
            duplicate: true,
        }))
        .unwrap();
        assert_eq!(
            rx.try_recv().unwrap().unwrap(),
            Confirmation {
                queues: 2,
                duplicate: true
            }
        );
    }

    #[test]
    fn queue_info_list_collects_until_done() {
        let mut st = State::default();
        let (tx, mut rx) = oneshot::channel();
        st.add_request(
            3,
            Request::Admin {
                kind: AdminKind::List,
                infos: Vec::new(),
                reply: tx,
            },
        );
        let info = QueueInfo {
            id: 3,
            name: "q".into(),
            bindings: vec![],
            options: Default::default(),
            stats: Default::default(),
        };
        st.on_frame(Frame::QueueInfo(info.clone())).unwrap();
        st.on_frame(Frame::QueueInfo(info)).unwrap();
        assert!(rx.try_recv().is_err(), "waits for DONE");
        st.on_frame(Frame::Done(tern_codec::Done { id: 3, count: 2 }))
            .unwrap();
        assert!(matches!(rx.try_recv(), Ok(Ok(AdminReply::List(l))) if l.len() == 2));
    }

    #[test]
    fn connection_lost_keeps_what_must_be_resent() {
        let mut st = State::default();
        let (ping_tx, mut ping_rx) = oneshot::channel();
        let (unsub_tx, mut unsub_rx) = oneshot::channel();
        let (ack_tx, mut ack_rx) = oneshot::channel();
        let (pub_tx, mut pub_rx) = oneshot::channel();
        st.add_request(1, Request::Ping(ping_tx));
        st.add_request(2, Request::Release(unsub_tx));
        st.add_request(4, Request::Settle(ack_tx));
        st.add_request(
            6,
            Request::Publish {
                frame: Bytes::from_static(b"six"),
                reply: pub_tx,
                _slot: slot(),
            },
        );
        let (_queue, mut ready) = sub(&mut st, 7, 1);
        st.add_request(3, Request::Subscribe(7));
        st.connection_lost();
        assert!(matches!(ping_rx.try_recv(), Ok(Err(Error::ConnectionLost))));
        assert!(matches!(unsub_rx.try_recv(), Ok(Ok(()))));
        assert!(matches!(ack_rx.try_recv(), Ok(Err(Error::ConnectionLost))));
        assert!(pub_rx.try_recv().is_err(), "publish still waiting");
        assert!(ready.try_recv().is_err(), "subscribe still waiting");

        let mut ids = 100..;
        let (frames, publishes) = st.reestablish(|| ids.next().unwrap());
        assert!(matches!(&frames[..], [Frame::Subscribe(s)] if s.id == 100 && s.sid == 7));
        assert_eq!(publishes, [Bytes::from_static(b"six")]);
        st.on_ok(3);
        assert!(ready.try_recv().is_err(), "the old id answers nothing");
        st.on_ok(100);
        assert!(matches!(ready.try_recv(), Ok(Ok(()))));
        st.on_frame(Frame::Confirm(Confirm {
            id: 6,
            queues: 1,
            duplicate: false,
        }))
        .unwrap();
        assert!(
            matches!(pub_rx.try_recv(), Ok(Ok(_))),
            "confirmed on the new connection"
        );
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
}
