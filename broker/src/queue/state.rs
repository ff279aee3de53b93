//! One queue's state, without I/O.
//!
//! The queue task feeds this struct events (messages appended, consumers attaching,
//! settles, the clock) with the current time, and carries out the [`Action`]s it asks
//! for: write a DELIVERY to a consumer, settle or dead-letter a message in the store,
//! answer a request. Keeping the rules here, away from channels and sockets, is what
//! lets every rule of the delivery guarantees be unit-tested with a fake clock.
//!
//! Where a message is:
//!
//! ```text
//!            append          dispatch            ack / auto
//!  store ──────────▶ ready ───────────▶ in flight ──────────▶ settled (gone)
//!                    ▲  ▲                 │  │ received (exactly-once)
//!        delay over  │  └─ timeout, nack, │  ▼
//!                 delayed   disconnect ◀──┘ held ── ack ──▶ settled
//! ```
//!
//! Dead-lettering (max deliveries, expiry, overflow, rejection) takes a message out of
//! any waiting state and hands it to the task, which appends it to the dead-letter
//! queue (or drops and counts it when there is none).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::num::NonZeroU64;
use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashMap;
use tern_codec::{AckMode, DeliveryHead, ErrorCode, QueueStats};
use tern_storage::{MessageMeta, StoredMessage};

use super::def::{OverflowDef, QueueDef};
use super::{Appended, ReplyTo};
use crate::auth::replies::ReplyPermits;
use crate::handler::Reject;
use crate::outbound::Outbound;

/// Identifies a consumer: its connection and the consumer id the client chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConsumerKey {
    pub conn: u64,
    pub cid: u32,
}

/// Why a message left its queue for the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    MaxDeliveries,
    Expired,
    Overflow,
    Rejected,
}

impl DeadReason {
    /// The value of the `tern-dead-letter-reason` header.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::MaxDeliveries => "max_deliveries",
            DeadReason::Expired => "expired",
            DeadReason::Overflow => "overflow",
            DeadReason::Rejected => "rejected",
        }
    }
}

/// A message waiting in, or delivered from, the queue: 64 bytes, since a queue keeps
/// one for every message it holds (its body, when resident, is in
/// [`QueueState`]'s body map, which the memory budget bounds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub enqueued_ms: u64,
    /// When it expires (ms since the epoch), if it does.
    pub expires_ms: Option<NonZeroU64>,
    /// The connection that published it, while known (not after a restart).
    pub publisher: Option<NonZeroU64>,
    /// Label of the consumer it was last delivered to.
    pub last_consumer: Option<Arc<str>>,
    /// Delivery attempts made so far.
    pub delivery_count: u32,
    /// Size of the envelope in bytes.
    pub size: u32,
    /// Whether the store holds a [`MessageMeta`] for it, which must be deleted with it.
    pub has_meta: bool,
}

/// The ready messages in sequence order. Messages arrive in sequence order and leave
/// mostly from the front, so a deque holds them with no per-message node, about half
/// the memory of a `BTreeMap` filled in order (whose nodes split half full); a
/// redelivered message goes back in by binary search, near the front.
#[derive(Debug, Default)]
struct Ready(VecDeque<Entry>);

impl Ready {
    fn insert(&mut self, entry: Entry) {
        match self.0.back() {
            Some(last) if last.seq >= entry.seq => {
                let at = self.0.partition_point(|e| e.seq < entry.seq);
                self.0.insert(at, entry);
            }
            _ => self.0.push_back(entry),
        }
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        if self.0.front().is_some_and(|e| e.seq == seq) {
            let entry = self.0.pop_front();
            // A queue that drained gives its memory back.
            if self.0.capacity() > 64 && self.0.len() < self.0.capacity() / 4 {
                self.0.shrink_to(self.0.len() * 2);
            }
            return entry;
        }
        let at = self.0.binary_search_by_key(&seq, |e| e.seq).ok()?;
        self.0.remove(at)
    }

    fn first_seq(&self) -> Option<u64> {
        self.0.front().map(|e| e.seq)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn into_entries(self) -> impl Iterator<Item = Entry> {
        self.0.into_iter()
    }
}

/// A consumer attached to the queue.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub key: ConsumerKey,
    pub outbound: Arc<Outbound>,
    /// The consumer's reply permits, when its own permissions would not let it reply
    /// to the requests it is delivered.
    pub replies: Option<Arc<ReplyPermits>>,
    pub prefetch: u32,
    pub mode: AckMode,
    /// Durable name (exactly-once consumers).
    pub name: Option<Arc<str>>,
    /// Deliveries it holds unsettled.
    in_flight: u32,
    /// Bytes of the deliveries made for it and not yet in its buffer (the task carries
    /// out the actions of a whole burst of inputs at once): counted with the buffer, so
    /// that a burst cannot hand a stopped consumer its whole prefetch.
    planned: usize,
}

/// How long a consumer whose connection buffer is full waits before the queue looks
/// again.
const FULL_RETRY_MS: u64 = 10;

impl Consumer {
    /// Whether the consumer can take another delivery now: fewer than its prefetch
    /// outstanding (unsettled, or for an auto-ack consumer not yet credited by its
    /// client), and room in its connection's outbound buffer. Deliveries count against
    /// the connection's byte budget like everything else it is sent: a consumer that
    /// stops reading holds at most that budget (plus one message) in the broker, not
    /// prefetch × message size.
    fn has_credit(&self) -> bool {
        self.in_flight < self.prefetch && !self.buffer_full()
    }

    fn buffer_full(&self) -> bool {
        self.outbound.pending_bytes() + self.planned >= self.outbound.max_pending()
    }

    pub fn new(
        key: ConsumerKey,
        outbound: Arc<Outbound>,
        replies: Option<Arc<ReplyPermits>>,
        prefetch: u32,
        mode: AckMode,
        name: Option<Arc<str>>,
    ) -> Self {
        Self {
            key,
            outbound,
            replies,
            prefetch,
            mode,
            name,
            in_flight: 0,
            planned: 0,
        }
    }

    /// How the consumer is named in dead-letter headers.
    fn label(&self) -> Arc<str> {
        match &self.name {
            Some(n) => Arc::clone(n),
            None => format!("connection {}/{}", self.key.conn, self.key.cid).into(),
        }
    }
}

/// A delivery not yet settled.
#[derive(Debug)]
struct InFlight {
    entry: Entry,
    consumer: ConsumerKey,
    deadline_ms: u64,
}

/// A message an exactly-once consumer has received and not yet acked.
#[derive(Debug)]
struct Held {
    entry: Entry,
    name: Arc<str>,
    /// The current delivery of it, while a consumer of that name is attached.
    delivery: Option<(u64, ConsumerKey)>,
}

/// What the task must do.
#[derive(Debug)]
pub enum Action {
    /// Write a DELIVERY (the body is `None` when it must be read from the store).
    Deliver {
        outbound: Arc<Outbound>,
        /// The consumer's reply permits, to grant the message's reply-to.
        replies: Option<Arc<ReplyPermits>>,
        /// Whether the consumer's own connection published the message: then it
        /// grants no permit.
        own: bool,
        head: DeliveryHead,
        body: Option<Bytes>,
        /// When the message entered the queue (ms since the epoch).
        enqueued_ms: u64,
    },
    /// Remove the message (and, with `forget_meta`, its meta) from the store. With
    /// `reply`, answer OK to it once that is durable.
    Settle {
        seq: u64,
        forget_meta: bool,
        reply: Option<ReplyTo>,
    },
    /// Record (or, with `None`, forget) what must survive a restart about a message.
    /// With `reply`, answer OK to it once that is durable.
    Meta {
        seq: u64,
        meta: Option<MessageMeta>,
        reply: Option<ReplyTo>,
    },
    /// Move the message to the dead-letter queue (or drop it if there is none).
    DeadLetter {
        entry: Entry,
        /// Its body, when resident.
        body: Option<Bytes>,
        reason: DeadReason,
    },
    /// Answer OK now.
    Ok { outbound: Arc<Outbound>, id: u32 },
}

/// One queue's messages, consumers and counters.
#[derive(Debug)]
pub struct QueueState {
    pub def: Arc<QueueDef>,
    ready: Ready,
    /// (expires_ms, seq) of ready entries that expire.
    expiries: BTreeSet<(u64, u64)>,
    /// Entries nacked with a delay, by (due_ms, seq).
    delayed: BTreeMap<(u64, u64), Entry>,
    in_flight: HashMap<u64, InFlight>,
    /// (deadline_ms, delivery_id) of every in-flight delivery.
    deadlines: BTreeSet<(u64, u64)>,
    held: BTreeMap<u64, Held>,
    consumers: Vec<Consumer>,
    /// Where the next round-robin search for a consumer with credit starts.
    next_consumer: usize,
    next_delivery_id: u64,
    /// Resident bodies by sequence number, up to `memory_budget` bytes in all.
    bodies: FxHashMap<u64, Bytes>,
    resident_bytes: usize,
    memory_budget: usize,
    /// When dispatch last stopped only because auto-ack consumers' buffers were full.
    blocked_at: Option<u64>,
    stats: QueueStats,
}

/// Where a run of a queue starts numbering its deliveries: above any number an earlier
/// run can have given out — before a restart, or on the node that led before a failover
/// — so that a client settling an attempt of that run is told it is stale, instead of
/// settling another message that happens to have the same number now. The start is
/// the time in ms times 2^20: a run would have to make a million deliveries per
/// millisecond to reach the next run's start (and u64 lasts until the year 2527).
fn first_delivery_id(now_ms: u64) -> u64 {
    now_ms.saturating_mul(1 << 20).max(1)
}

impl QueueState {
    pub fn new(def: Arc<QueueDef>, memory_budget: usize) -> Self {
        Self {
            def,
            ready: Ready::default(),
            expiries: BTreeSet::new(),
            delayed: BTreeMap::new(),
            in_flight: HashMap::new(),
            deadlines: BTreeSet::new(),
            held: BTreeMap::new(),
            consumers: Vec::new(),
            next_consumer: 0,
            next_delivery_id: first_delivery_id(crate::clock::now_ms()),
            bodies: FxHashMap::default(),
            resident_bytes: 0,
            memory_budget,
            blocked_at: None,
            stats: QueueStats::default(),
        }
    }

    /// An entry for a stored message, resident if the memory budget allows.
    fn entry(&mut self, m: StoredMessage, delivery_count: u32) -> Entry {
        let size = m.envelope.len();
        if self.resident_bytes + size <= self.memory_budget {
            self.resident_bytes += size;
            self.bodies.insert(m.seq, m.envelope);
        }
        Entry {
            seq: m.seq,
            enqueued_ms: m.enqueued_ms,
            expires_ms: m.expires_ms.and_then(NonZeroU64::new),
            publisher: None,
            last_consumer: None,
            delivery_count,
            size: u32::try_from(size).unwrap_or(u32::MAX),
            has_meta: false,
        }
    }

    /// Takes an entry's resident body out (it is settled or moved out).
    fn release(&mut self, entry: &Entry) -> Option<Bytes> {
        let body = self.bodies.remove(&entry.seq)?;
        self.resident_bytes = self.resident_bytes.saturating_sub(body.len());
        Some(body)
    }

    fn make_ready(&mut self, entry: Entry) {
        if let Some(at) = entry.expires_ms {
            self.expiries.insert((at.get(), entry.seq));
        }
        self.ready.insert(entry);
    }

    fn take_ready(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.ready.remove(seq)?;
        if let Some(at) = entry.expires_ms {
            self.expiries.remove(&(at.get(), seq));
        }
        Some(entry)
    }

    /// A message found in the store at start, with what was recorded about it.
    pub fn recover(&mut self, m: StoredMessage, meta: Option<MessageMeta>) {
        let has_meta = meta.is_some();
        let meta = meta.unwrap_or_default();
        let mut entry = self.entry(m, meta.delivery_count);
        entry.has_meta = has_meta;
        match meta.held_by {
            Some(name) => {
                self.held.insert(
                    entry.seq,
                    Held {
                        entry,
                        name: name.into(),
                        delivery: None,
                    },
                );
            }
            None => self.make_ready(entry),
        }
    }

    /// Messages just made durable by the journal.
    pub fn append(
        &mut self,
        messages: impl IntoIterator<Item = impl Into<Appended>>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        for m in messages {
            let Appended { message, publisher } = m.into();
            self.stats.published += 1;
            let mut entry = self.entry(message, 0);
            entry.publisher = publisher.and_then(NonZeroU64::new);
            self.make_ready(entry);
        }
        if let (Some(max), OverflowDef::DropHead) = (self.def.max_length, self.def.overflow) {
            while self.len() > max {
                let Some(seq) = self.ready.first_seq() else {
                    break;
                };
                if let Some(entry) = self.take_ready(seq) {
                    self.dead_letter(entry, DeadReason::Overflow, out);
                }
            }
        }
        self.dispatch(now_ms, out);
    }

    /// Messages in the queue: waiting, delayed, in flight or held.
    pub fn len(&self) -> u64 {
        (self.ready.len() + self.delayed.len() + self.in_flight.len() + self.held.len()) as u64
    }

    fn dead_letter(&mut self, entry: Entry, reason: DeadReason, out: &mut Vec<Action>) {
        let body = self.release(&entry);
        if reason == DeadReason::Expired {
            self.stats.expired += 1;
        }
        out.push(Action::DeadLetter {
            entry,
            body,
            reason,
        });
    }

    /// The task reports what became of a dead-lettered message.
    pub fn dead_lettered(&mut self, moved: bool) {
        if moved {
            self.stats.dead_lettered += 1;
        } else {
            self.stats.dropped += 1;
        }
    }

    /// Attaches a consumer.
    ///
    /// # Errors
    ///
    /// The consumer id is in use on its connection.
    pub fn attach(
        &mut self,
        consumer: Consumer,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), Reject> {
        if self.consumers.iter().any(|c| c.key == consumer.key) {
            return Err(Reject::new(
                ErrorCode::ConsumerIdInUse,
                format!(
                    "consumer id {} is already in use on this connection",
                    consumer.key.cid
                ),
            ));
        }
        let key = consumer.key;
        self.consumers.push(consumer);
        self.redeliver_held(key, out);
        self.dispatch(now_ms, out);
        Ok(())
    }

    /// Hands an exactly-once consumer the messages a consumer of its name received
    /// before and has not acked, flagged so its client can tell.
    fn redeliver_held(&mut self, key: ConsumerKey, out: &mut Vec<Action>) {
        let Some(c) = self.consumers.iter_mut().find(|c| c.key == key) else {
            return;
        };
        let Some(name) = c.name.clone() else {
            return;
        };
        for held in self.held.values_mut() {
            if held.name != name || held.delivery.is_some() {
                continue;
            }
            let delivery_id = self.next_delivery_id;
            self.next_delivery_id += 1;
            held.delivery = Some((delivery_id, key));
            c.in_flight += 1;
            out.push(Action::Deliver {
                outbound: Arc::clone(&c.outbound),
                replies: c.replies.clone(),
                own: held.entry.publisher.map(NonZeroU64::get) == Some(key.conn),
                head: DeliveryHead {
                    cid: key.cid,
                    delivery_id,
                    seq: held.entry.seq,
                    delivery_count: held.entry.delivery_count,
                    received_before: true,
                },
                body: self.bodies.get(&held.entry.seq).cloned(),
                enqueued_ms: held.entry.enqueued_ms,
            });
        }
    }

    /// Detaches a consumer: what it had in flight goes back to the queue (held messages
    /// of an exactly-once consumer wait for a consumer of the same name).
    pub fn detach(&mut self, key: ConsumerKey, now_ms: u64, out: &mut Vec<Action>) -> bool {
        let Some(i) = self.consumers.iter().position(|c| c.key == key) else {
            return false;
        };
        self.consumers.remove(i);
        let returned: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.consumer == key)
            .map(|(id, _)| *id)
            .collect();
        for id in returned {
            if let Some(f) = self.in_flight.remove(&id) {
                self.deadlines.remove(&(f.deadline_ms, id));
                self.requeue(f.entry, out);
            }
        }
        for held in self.held.values_mut() {
            if held.delivery.is_some_and(|(_, k)| k == key) {
                held.delivery = None;
            }
        }
        self.dispatch(now_ms, out);
        true
    }

    /// Every consumer of a connection that ended.
    pub fn detach_connection(&mut self, conn: u64, now_ms: u64, out: &mut Vec<Action>) {
        let keys: Vec<ConsumerKey> = self
            .consumers
            .iter()
            .filter(|c| c.key.conn == conn)
            .map(|c| c.key)
            .collect();
        for key in keys {
            self.detach(key, now_ms, out);
        }
    }

    /// Records an entry's delivery count in the store, so that a restart does not
    /// reset it (and with it the way to `max_deliver`).
    fn remember_count(entry: &mut Entry, out: &mut Vec<Action>) {
        entry.has_meta = true;
        out.push(Action::Meta {
            seq: entry.seq,
            meta: Some(MessageMeta {
                delivery_count: entry.delivery_count,
                held_by: None,
            }),
            reply: None,
        });
    }

    /// Puts a delivered entry back in line, remembering its delivery count.
    fn requeue(&mut self, mut entry: Entry, out: &mut Vec<Action>) {
        Self::remember_count(&mut entry, out);
        self.make_ready(entry);
    }

    fn consumer_mut(&mut self, key: ConsumerKey) -> Result<&mut Consumer, Reject> {
        self.consumers
            .iter_mut()
            .find(|c| c.key == key)
            .ok_or_else(|| {
                Reject::new(
                    ErrorCode::UnknownConsumer,
                    format!("consumer id {} is not consuming from this queue", key.cid),
                )
            })
    }

    fn stale(delivery_id: u64) -> Reject {
        Reject::new(
            ErrorCode::StaleDelivery,
            format!(
                "delivery {delivery_id} is not outstanding: it was settled already, or timed out and was redelivered"
            ),
        )
    }

    /// Takes an in-flight delivery of `key` out, freeing its credit.
    fn take_in_flight(&mut self, key: ConsumerKey, delivery_id: u64) -> Result<Entry, Reject> {
        self.consumer_mut(key)?;
        match self.in_flight.get(&delivery_id) {
            Some(f) if f.consumer == key => {}
            _ => return Err(Self::stale(delivery_id)),
        }
        let f = self
            .in_flight
            .remove(&delivery_id)
            .ok_or_else(|| Self::stale(delivery_id))?;
        self.deadlines.remove(&(f.deadline_ms, delivery_id));
        if let Ok(c) = self.consumer_mut(key) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
        Ok(f.entry)
    }

    /// The consumer processed a delivery: the message is settled, and `reply` is
    /// answered by an action.
    ///
    /// An at-least-once ACK is answered at once: should the settle be lost in a crash,
    /// the message is delivered again, which that mode allows. An exactly-once ACK is
    /// answered only once the settle is durable, because the client forgets the
    /// message when it gets the OK: a settle lost after that would bring the message
    /// back as new.
    ///
    /// # Errors
    ///
    /// Unknown consumer, or a delivery attempt that is no longer outstanding.
    pub fn ack(
        &mut self,
        key: ConsumerKey,
        delivery_id: u64,
        reply: &ReplyTo,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), Reject> {
        match self.take_in_flight(key, delivery_id) {
            Ok(entry) => {
                self.settle(entry, None, out);
                let (outbound, id) = reply.clone();
                out.push(Action::Ok { outbound, id });
            }
            Err(e) if e.code == ErrorCode::StaleDelivery => {
                let entry = self.take_held(key, delivery_id)?;
                self.settle(entry, Some(reply.clone()), out);
            }
            Err(e) => return Err(e),
        }
        self.dispatch(now_ms, out);
        Ok(())
    }

    /// An auto-ack consumer's client credits `credit` deliveries its application has
    /// taken: that many more may be sent.
    ///
    /// # Errors
    ///
    /// Unknown consumer, or one that is not in mode auto (it is credited by settling).
    pub fn credit(
        &mut self,
        key: ConsumerKey,
        credit: u32,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), Reject> {
        let c = self.consumer_mut(key)?;
        if c.mode != AckMode::Auto {
            return Err(Reject::new(
                ErrorCode::UnexpectedFrame,
                "CREDIT is for auto-ack consumers; others are credited by settling",
            ));
        }
        c.in_flight = c.in_flight.saturating_sub(credit);
        self.dispatch(now_ms, out);
        Ok(())
    }

    /// An exactly-once delivery's second step, found by its current delivery id.
    fn take_held(&mut self, key: ConsumerKey, delivery_id: u64) -> Result<Entry, Reject> {
        let seq = self
            .held
            .iter()
            .find(|(_, h)| h.delivery == Some((delivery_id, key)))
            .map(|(seq, _)| *seq)
            .ok_or_else(|| Self::stale(delivery_id))?;
        let held = self
            .held
            .remove(&seq)
            .ok_or_else(|| Self::stale(delivery_id))?;
        if let Ok(c) = self.consumer_mut(key) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
        Ok(held.entry)
    }

    fn settle(&mut self, entry: Entry, reply: Option<ReplyTo>, out: &mut Vec<Action>) {
        self.stats.acked += 1;
        self.release(&entry);
        out.push(Action::Settle {
            seq: entry.seq,
            forget_meta: entry.has_meta,
            reply,
        });
    }

    /// The consumer did not process a delivery: requeue it (no sooner than `delay_ms`
    /// from now), or dead-letter it as rejected.
    ///
    /// # Errors
    ///
    /// Unknown consumer, or a delivery attempt that is no longer outstanding.
    pub fn nack(
        &mut self,
        key: ConsumerKey,
        delivery_id: u64,
        requeue: bool,
        delay_ms: u32,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), Reject> {
        let mut entry = self.take_in_flight(key, delivery_id)?;
        if !requeue {
            self.dead_letter(entry, DeadReason::Rejected, out);
        } else if delay_ms > 0 {
            Self::remember_count(&mut entry, out);
            self.delayed
                .insert((now_ms + u64::from(delay_ms), entry.seq), entry);
        } else {
            self.requeue(entry, out);
        }
        self.dispatch(now_ms, out);
        Ok(())
    }

    /// Exactly-once, first step: the consumer has the message. It becomes held by the
    /// consumer's name; `reply` gets OK once that is durable.
    ///
    /// # Errors
    ///
    /// Unknown consumer, not an exactly-once consumer, or a stale delivery.
    pub fn received(
        &mut self,
        key: ConsumerKey,
        delivery_id: u64,
        reply: Option<(Arc<Outbound>, u32)>,
        out: &mut Vec<Action>,
    ) -> Result<(), Reject> {
        let consumer = self.consumer_mut(key)?;
        let Some(name) = consumer
            .name
            .clone()
            .filter(|_| consumer.mode == AckMode::ExactlyOnce)
        else {
            return Err(Reject::new(
                ErrorCode::UnexpectedFrame,
                "RECEIVED is for exactly-once consumers only",
            ));
        };
        if self
            .held
            .values()
            .any(|h| h.delivery == Some((delivery_id, key)))
        {
            // Already recorded (a retry): answer again.
            if let Some((outbound, id)) = reply {
                out.push(Action::Ok { outbound, id });
            }
            return Ok(());
        }
        match self.in_flight.get(&delivery_id) {
            Some(f) if f.consumer == key => {}
            _ => return Err(Self::stale(delivery_id)),
        }
        let mut f = self
            .in_flight
            .remove(&delivery_id)
            .ok_or_else(|| Self::stale(delivery_id))?;
        self.deadlines.remove(&(f.deadline_ms, delivery_id));
        f.entry.has_meta = true;
        out.push(Action::Meta {
            seq: f.entry.seq,
            meta: Some(MessageMeta {
                delivery_count: f.entry.delivery_count,
                held_by: Some(name.to_string()),
            }),
            reply,
        });
        self.held.insert(
            f.entry.seq,
            Held {
                entry: f.entry,
                name,
                delivery: Some((delivery_id, key)),
            },
        );
        Ok(())
    }

    /// Advances the clock: deliveries past their ack timeout go back to the queue,
    /// delayed messages whose time has come become ready, expired ones are
    /// dead-lettered; then dispatch.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        while let Some(&(deadline, id)) = self.deadlines.iter().next() {
            if deadline > now_ms {
                break;
            }
            self.deadlines.remove(&(deadline, id));
            if let Some(f) = self.in_flight.remove(&id) {
                if let Some(c) = self.consumers.iter_mut().find(|c| c.key == f.consumer) {
                    c.in_flight = c.in_flight.saturating_sub(1);
                }
                self.requeue(f.entry, out);
            }
        }
        while let Some((&(due, seq), _)) = self.delayed.iter().next() {
            if due > now_ms {
                break;
            }
            if let Some(entry) = self.delayed.remove(&(due, seq)) {
                self.make_ready(entry);
            }
        }
        while let Some(&(at, seq)) = self.expiries.iter().next() {
            if at > now_ms {
                break;
            }
            if let Some(entry) = self.take_ready(seq) {
                self.dead_letter(entry, DeadReason::Expired, out);
            }
        }
        self.dispatch(now_ms, out);
    }

    /// When [`QueueState::tick`] next has something to do, if ever.
    pub fn next_wake(&self) -> Option<u64> {
        [
            self.deadlines.iter().next().map(|(t, _)| *t),
            self.delayed.keys().next().map(|(t, _)| *t),
            self.expiries.iter().next().map(|(t, _)| *t),
            self.blocked_at.map(|t| t + FULL_RETRY_MS),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Hands ready messages to consumers with credit, round robin, oldest first.
    fn dispatch(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let ack_timeout = self.def.ack_timeout_ms;
        self.blocked_at = None;
        while !self.ready.is_empty() {
            let n = self.consumers.len();
            let Some(ci) = (0..n)
                .map(|i| (self.next_consumer + i) % n)
                .find(|&i| self.consumers.get(i).is_some_and(Consumer::has_credit))
            else {
                // A full buffer drains without telling the queue: look again soon.
                if self.consumers.iter().any(Consumer::buffer_full) {
                    self.blocked_at = Some(now_ms);
                }
                return;
            };
            let Some(seq) = self.ready.first_seq() else {
                return;
            };
            let Some(mut entry) = self.take_ready(seq) else {
                return;
            };
            if entry.expires_ms.is_some_and(|at| at.get() <= now_ms) {
                self.dead_letter(entry, DeadReason::Expired, out);
                continue;
            }
            if entry.delivery_count >= self.def.max_deliver {
                self.dead_letter(entry, DeadReason::MaxDeliveries, out);
                continue;
            }
            let Some(c) = self.consumers.get_mut(ci) else {
                return;
            };
            self.next_consumer = (ci + 1) % n;
            entry.delivery_count += 1;
            entry.last_consumer = Some(c.label());
            let delivery_id = self.next_delivery_id;
            self.next_delivery_id += 1;
            out.push(Action::Deliver {
                outbound: Arc::clone(&c.outbound),
                replies: c.replies.clone(),
                own: entry.publisher.map(NonZeroU64::get) == Some(c.key.conn),
                head: DeliveryHead {
                    cid: c.key.cid,
                    delivery_id,
                    seq,
                    delivery_count: entry.delivery_count,
                    received_before: false,
                },
                body: self.bodies.get(&seq).cloned(),
                enqueued_ms: entry.enqueued_ms,
            });
            let (mode, consumer) = (c.mode, c.key);
            c.in_flight += 1;
            c.planned += entry.size as usize;
            self.stats.delivered += 1;
            if entry.delivery_count > 1 {
                self.stats.redelivered += 1;
            }
            if mode == AckMode::Auto {
                self.settle(entry, None, out);
                continue;
            }
            let deadline_ms = now_ms + ack_timeout;
            self.deadlines.insert((deadline_ms, delivery_id));
            self.in_flight.insert(
                delivery_id,
                InFlight {
                    entry,
                    consumer,
                    deadline_ms,
                },
            );
        }
    }

    /// Removes every waiting message (ready or delayed). Returns how many.
    pub fn purge(&mut self, out: &mut Vec<Action>) -> u64 {
        let ready = std::mem::take(&mut self.ready);
        self.expiries.clear();
        let delayed = std::mem::take(&mut self.delayed);
        let mut n = 0;
        for entry in ready.into_entries().chain(delayed.into_values()) {
            self.release(&entry);
            out.push(Action::Settle {
                seq: entry.seq,
                forget_meta: entry.has_meta,
                reply: None,
            });
            n += 1;
        }
        n
    }

    /// Takes up to `max` waiting messages (0: all), oldest first, to move elsewhere.
    pub fn take_waiting(&mut self, max: u64) -> Vec<(Entry, Option<Bytes>)> {
        let mut taken = Vec::new();
        while max == 0 || (taken.len() as u64) < max {
            let Some(seq) = self.ready.first_seq() else {
                break;
            };
            if let Some(entry) = self.take_ready(seq) {
                let body = self.release(&entry);
                taken.push((entry, body));
            }
        }
        taken
    }

    /// The consumers attached now.
    pub fn consumers(&self) -> &[Consumer] {
        &self.consumers
    }

    /// Counters and current sizes.
    /// The actions returned so far are carried out: the deliveries they made are in
    /// their consumers' buffers, which count them from now on.
    pub fn performed(&mut self) {
        for c in &mut self.consumers {
            c.planned = 0;
        }
    }

    pub fn stats(&self) -> QueueStats {
        QueueStats {
            ready: (self.ready.len() + self.delayed.len()) as u64,
            unacked: (self.in_flight.len() + self.held.len()) as u64,
            consumers: u32::try_from(self.consumers.len()).unwrap_or(u32::MAX),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SlowConsumerPolicy;
    use crate::queue::def::BindingDef;
    use tokio_util::sync::CancellationToken;

    fn def(max_deliver: u32) -> QueueDef {
        QueueDef {
            name: "work".into(),
            bindings: vec![BindingDef {
                pattern: "work.>".into(),
                filter: None,
            }],
            max_deliver,
            ack_timeout_ms: 1000,
            dead_letter: None,
            ttl_ms: None,
            max_length: None,
            overflow: OverflowDef::DropHead,
        }
    }

    fn queue(def: QueueDef) -> QueueState {
        QueueState::new(Arc::new(def), 1 << 20)
    }

    fn msg(seq: u64) -> StoredMessage {
        StoredMessage {
            seq,
            enqueued_ms: 0,
            expires_ms: None,
            envelope: Bytes::from(format!("m{seq}")),
        }
    }

    fn outbound() -> Arc<Outbound> {
        Arc::new(Outbound::new(
            1 << 20,
            SlowConsumerPolicy::Drop,
            CancellationToken::new(),
            Arc::default(),
        ))
    }

    /// Where an ACK's answer goes.
    fn reply() -> ReplyTo {
        (outbound(), 7)
    }

    fn consumer(cid: u32, prefetch: u32, mode: AckMode) -> Consumer {
        let outbound = outbound();
        let name = (mode == AckMode::ExactlyOnce).then(|| Arc::from("billing"));
        Consumer::new(
            ConsumerKey { conn: 1, cid },
            outbound,
            None,
            prefetch,
            mode,
            name,
        )
    }

    fn key(cid: u32) -> ConsumerKey {
        ConsumerKey { conn: 1, cid }
    }

    /// The deliveries in `actions`: (cid, delivery_id, seq, delivery_count).
    fn deliveries(actions: &[Action]) -> Vec<(u32, u64, u64, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Deliver { head, .. } => {
                    Some((head.cid, head.delivery_id, head.seq, head.delivery_count))
                }
                _ => None,
            })
            .collect()
    }

    fn settled(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Settle { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    fn dead(actions: &[Action]) -> Vec<(u64, DeadReason, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::DeadLetter { entry, reason, .. } => {
                    Some((entry.seq, *reason, entry.delivery_count))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_entry_is_64_bytes() {
        // One per message a queue holds: a queue of a million costs 64 MB of them.
        assert_eq!(std::mem::size_of::<Entry>(), 64);
    }

    #[test]
    fn competing_consumers_share_by_credit() {
        let mut q = queue(def(5));
        let mut out = Vec::new();
        q.attach(consumer(1, 1, AckMode::Manual), 0, &mut out)
            .unwrap();
        q.attach(consumer(2, 1, AckMode::Manual), 0, &mut out)
            .unwrap();
        q.append((0..4).map(msg), 0, &mut out);
        let d = deliveries(&out);
        assert_eq!(d.len(), 2, "prefetch 1 each: two in flight, two waiting");
        assert_ne!(d[0].0, d[1].0, "one per consumer");
        out.clear();
        // Consumer 1 acks: it gets the next message, consumer 2 still holds its own.
        let (_, id, _, _) = deliveries_of(&d, 1);
        q.ack(key(1), id, &reply(), 0, &mut out).unwrap();
        assert_eq!(settled(&out), [d.iter().find(|x| x.0 == 1).unwrap().2]);
        let next = deliveries(&out);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].0, 1);
        assert_eq!(q.stats().ready, 1);
        assert_eq!(q.stats().unacked, 2);
    }

    #[test]
    fn a_burst_of_inputs_never_plans_past_the_consumers_buffer() {
        let mut q = queue(def(5));
        let mut out = Vec::new();
        let small = Arc::new(Outbound::new(
            1000,
            SlowConsumerPolicy::Drop,
            CancellationToken::new(),
            Arc::default(),
        ));
        let c = Consumer::new(key(1), small, None, 100, AckMode::Manual, None);
        q.attach(c, 0, &mut out).unwrap();
        let big = |seq| StoredMessage {
            envelope: Bytes::from(vec![b'x'; 300]),
            ..msg(seq)
        };
        // Two inputs handled before the task carries out any action: the second must
        // count the first's deliveries, which are not in the buffer yet.
        q.append((0..5).map(big), 0, &mut out);
        q.append((5..10).map(big), 0, &mut out);
        assert_eq!(deliveries(&out).len(), 4, "1,000 bytes take four of 300");
        // Carried out (and the buffer drained by the writer): room again.
        out.clear();
        q.performed();
        q.tick(FULL_RETRY_MS + 1, &mut out);
        assert_eq!(deliveries(&out).len(), 4);
    }

    fn deliveries_of(d: &[(u32, u64, u64, u32)], cid: u32) -> (u32, u64, u64, u32) {
        *d.iter().find(|x| x.0 == cid).unwrap()
    }

    #[test]
    fn ack_timeout_redelivers_and_refuses_the_stale_attempt() {
        let mut q = queue(def(5));
        let mut out = Vec::new();
        q.attach(consumer(1, 10, AckMode::Manual), 0, &mut out)
            .unwrap();
        q.append(vec![msg(7)], 0, &mut out);
        let first = deliveries(&out)[0];
        assert_eq!(first.3, 1);
        out.clear();
        q.tick(999, &mut out);
        assert!(deliveries(&out).is_empty(), "not yet");
        q.tick(1000, &mut out);
        let second = deliveries(&out)[0];
        assert_eq!((second.2, second.3), (7, 2), "same message, second attempt");
        assert_ne!(second.1, first.1, "a new delivery id");
        out.clear();
        let err = q
            .ack(key(1), first.1, &reply(), 1000, &mut out)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::StaleDelivery);
        assert!(settled(&out).is_empty(), "the stale ack settles nothing");
        q.ack(key(1), second.1, &reply(), 1000, &mut out).unwrap();
        assert_eq!(settled(&out), [7]);
        assert_eq!(q.stats().redelivered, 1);
    }

    #[test]
    fn disconnect_returns_deliveries_with_their_count() {
        let mut q = queue(def(5));
        let mut out = Vec::new();
        q.attach(consumer(1, 10, AckMode::Manual), 0, &mut out)
            .unwrap();
        q.append(vec![msg(1), msg(2)], 0, &mut out);
        out.clear();
        q.detach_connection(1, 5, &mut out);
        assert_eq!(q.stats().ready, 2);
        q.attach(consumer(3, 10, AckMode::Manual), 5, &mut out)
            .unwrap();
        let d = deliveries(&out);
        assert_eq!(
            d.iter().map(|x| (x.0, x.2, x.3)).collect::<Vec<_>>(),
            [(3, 1, 2), (3, 2, 2)]
        );
    }

    #[test]
    fn max_deliver_dead_letters() {
        let mut q = queue(def(2));
        let mut out = Vec::new();
        q.attach(consumer(1, 10, AckMode::Manual), 0, &mut out)
            .unwrap();
        q.append(vec![msg(1)], 0, &mut out);
        for round in 1..=2u64 {
            let id = deliveries(&out).last().unwrap().1;
            out.clear();
            q.nack(key(1), id, true, 0, round, &mut out).unwrap();
        }
        assert_eq!(dead(&out), [(1, DeadReason::MaxDeliveries, 2)]);
        assert_eq!(q.stats().ready + q.stats().unacked, 0);
    }

    #[test]
    fn nack_without_requeue_rejects_and_with_delay_waits() {
        let mut q = queue(def(5));
        let mut out = Vec::new();
        q.attach(consumer(1, 10, AckMode::Manual), 0, &mut out)
            .unwrap();
        q.append(vec![msg(1), msg(2)], 0, &mut out);
        let d = deliveries(&out);
        out.clear();
        q.nack(key(1), d[0].1, false, 0, 0, &mut out).unwrap();
        assert_eq!(dead(&out), [(1, DeadReason::Rejected, 1)]);
        out.clear();
        q.nack(key(1), d[1].1, true, 500, 100, &mut out).unwrap();
        assert!(deliveries(&out).is_empty(), "delayed");
        assert_eq!(q.next_wake(), Some(600));
        q.tick(599, &mut out);
        assert!(deliveries(&out).is_empty());
        q.tick(600, &mut out);
        assert_eq!(deliveries(&out)[0].2, 2);
    }

    #[test]
    fn expired_messages_are_dead_lettered_even_without_consumers() {
        let mut q = queue(def(5));
        let mut out = Vec::new();
        let mut m = msg(1);
        m.expires_ms = Some(100);
        q.append(vec![m, msg(2)], 0, &mut out);
        assert_eq!(q.next_wake(), Some(100));
        q.tick(100, &mut out);
        assert_eq!(dead(&out), [(1, DeadReason::Expired, 0)]);
        assert_eq!(q.stats().expired, 1);
        assert_eq!(q.stats().ready, 1);
    }

    #[test]
    fn overflow_drop_head_dead_letters_the_oldest() {
        let mut d = def(5);
        d.max_length = Some(2);
        let mut q = queue(d);
        let mut out = Vec::new();
        q.append((0..5).map(msg), 0, &mut out);
        assert_eq!(
            dead(&out).iter().map(|x| (x.0, x.1)).collect::<Vec<_>>(),
            [
                (0, DeadReason::Overflow),
                (1, DeadReason::Overflow),
                (2, DeadReason::Overflow)
            ]
        );
        assert_eq!(q.stats().ready, 2);
    }

    #[test]
    fn auto_ack_settles_as_it_delivers_and_waits_for_credit() {
        let mut q = queue(def(5));
        let mut out = Vec::new();
        q.attach(consumer(1, 2, AckMode::Auto), 0, &mut out)
            .unwrap();
        q.append((0..5).map(msg), 0, &mut out);
        assert_eq!(deliveries(&out).len(), 2, "prefetch 2");
        assert_eq!(settled(&out), [0, 1], "settled as sent");
        assert_eq!(q.stats().unacked, 0);
        assert_eq!(q.stats().ready, 3);
        out.clear();
        q.credit(key(1), 1, 0, &mut out).unwrap();
        assert_eq!(settled(&out), [2], "one credit, one more");
        out.clear();
        q.credit(key(1), 100, 0, &mut out).unwrap();
        assert_eq!(settled(&out), [3, 4], "surplus credit is no debt");
        let mut manual = queue(def(5));
        manual
            .attach(consumer(1, 1, AckMode::Manual), 0, &mut out)
            .unwrap();
        let err = manual.credit(key(1), 1, 0, &mut out).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnexpectedFrame);
        let err = manual.credit(key(2), 1, 0, &mut out).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownConsumer);
    }

    #[test]
    fn every_consumer_stops_at_a_full_connection_buffer() {
        for mode in [AckMode::Auto, AckMode::Manual, AckMode::ExactlyOnce] {
            let mut q = queue(def(5));
            let mut out = Vec::new();
            let c = consumer(1, 1000, mode);
            let outbound = Arc::clone(&c.outbound);
            q.attach(c, 0, &mut out).unwrap();
            // Fill the connection's buffer past its bound, as a reader that stopped
            // would.
            let mut wakes = crate::outbound::Wakes::default();
            let big = vec![0u8; 2 << 20];
            let head = DeliveryHead {
                cid: 1,
                delivery_id: 0,
                seq: 0,
                delivery_count: 1,
                received_before: false,
            };
            assert!(outbound.push_delivery(&head, &big, &mut wakes));
            q.append((0..3).map(msg), 0, &mut out);
            assert!(
                deliveries(&out).is_empty(),
                "{mode:?}: nothing more while the buffer is full"
            );
            assert_eq!(
                q.next_wake(),
                Some(FULL_RETRY_MS),
                "{mode:?}: looks again soon"
            );
        }
    }

    #[test]
    fn exactly_once_holds_then_redelivers_flagged_to_the_same_name() {
        let mut q = queue(def(5));
        let mut out = Vec::new();
        q.attach(consumer(1, 10, AckMode::ExactlyOnce), 0, &mut out)
            .unwrap();
        q.append(vec![msg(1)], 0, &mut out);
        let d = deliveries(&out)[0];
        out.clear();
        q.received(key(1), d.1, None, &mut out).unwrap();
        assert!(matches!(
            out.as_slice(),
            [Action::Meta { seq: 1, meta: Some(MessageMeta { held_by: Some(n), .. }), .. }] if n == "billing"
        ));
        // The connection drops: held messages are not redelivered to anyone else, nor
        // timed out.
        out.clear();
        q.detach_connection(1, 10, &mut out);
        q.attach(consumer(9, 10, AckMode::Manual), 10, &mut out)
            .unwrap();
        q.tick(1_000_000, &mut out);
        assert!(deliveries(&out).is_empty());
        // A consumer of the same name gets it again, flagged.
        let mut c = consumer(2, 10, AckMode::ExactlyOnce);
        c.key = ConsumerKey { conn: 2, cid: 2 };
        q.attach(c, 20, &mut out).unwrap();
        let again: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                Action::Deliver { head, .. } => Some(*head),
                _ => None,
            })
            .collect();
        assert_eq!(again.len(), 1);
        assert!(again[0].received_before);
        out.clear();
        q.ack(
            ConsumerKey { conn: 2, cid: 2 },
            again[0].delivery_id,
            &reply(),
            20,
            &mut out,
        )
        .unwrap();
        assert_eq!(settled(&out), [1]);
        assert!(
            out.iter().any(|a| matches!(
                a,
                Action::Settle {
                    seq: 1,
                    forget_meta: true,
                    reply: Some(_),
                }
            )),
            "the hold is forgotten with the settle, and the OK waits for both"
        );
        assert!(
            !out.iter().any(|a| matches!(a, Action::Ok { .. })),
            "no OK before the settle is durable"
        );
    }

    #[test]
    fn recovered_held_messages_stay_held() {
        let mut q = queue(def(5));
        q.recover(
            msg(4),
            Some(MessageMeta {
                delivery_count: 1,
                held_by: Some("billing".into()),
            }),
        );
        q.recover(msg(5), None);
        let mut out = Vec::new();
        q.attach(consumer(1, 10, AckMode::Manual), 0, &mut out)
            .unwrap();
        assert_eq!(
            deliveries(&out).iter().map(|d| d.2).collect::<Vec<_>>(),
            [5],
            "the held one waits for its consumer"
        );
    }

    #[test]
    fn memory_budget_pages_bodies_out() {
        let mut q = QueueState::new(Arc::new(def(5)), 5);
        let mut out = Vec::new();
        q.append(vec![msg(1), msg(2), msg(3)], 0, &mut out);
        q.attach(consumer(1, 10, AckMode::Manual), 0, &mut out)
            .unwrap();
        let bodies: Vec<bool> = out
            .iter()
            .filter_map(|a| match a {
                Action::Deliver { body, .. } => Some(body.is_some()),
                _ => None,
            })
            .collect();
        assert_eq!(
            bodies,
            [true, true, false],
            "budget of 5 bytes holds two 2-byte bodies"
        );
    }

    #[test]
    fn purge_settles_waiting_messages_only() {
        let mut q = queue(def(5));
        let mut out = Vec::new();
        q.attach(consumer(1, 1, AckMode::Manual), 0, &mut out)
            .unwrap();
        q.append((0..3).map(msg), 0, &mut out);
        out.clear();
        assert_eq!(q.purge(&mut out), 2);
        assert_eq!(settled(&out), [1, 2]);
        assert_eq!(q.stats().unacked, 1, "the delivery in flight stays");
    }
}
