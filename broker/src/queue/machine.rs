//! The durable queues' state machine: every rule that decides what the store holds.
//!
//! The journal turns what sessions, queue tasks and admins ask into [`Command`]s, gathers
//! the commands of one group commit into an [`Entry`] and hands it to the
//! [`Log`](crate::journal::Log), which [`Machine::apply`]s it. The machine assigns
//! sequence numbers, lays each queue's new messages out as one chunk, keeps the chunks'
//! settled bitmaps and live counts, enforces `max_length` with `overflow = "reject"` and
//! computes expiry times; it returns the [`Effects`]: the store [`Commit`] that makes the
//! entry durable, an answer per command and the messages each queue gains.
//!
//! It does no I/O, takes no lock and holds no connection, and it reads no clock: every
//! time it needs travels inside the commands, stamped once where the request arrived.
//! So applying the same entries to the same state gives the same state and the same
//! effects, on this node after a restart as on another node that replicates the entries
//! (the cluster's log replicates entries, not store writes). Commands are serializable
//! for that reason.
//!
//! What happens to a message *in* a queue — dispatch, credit, acks, redelivery timing —
//! is [`QueueState`](super::state::QueueState)'s business; it reaches the machine as the
//! commands those rules produce (settle, delivery count, dead-letter transfer).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tern_storage::{
    Commit, DedupEntry, GroupRecord, MessageMeta, QueueId, QueueRecord, StoredMessage,
};

use super::def::{OverflowDef, QueueDef};
use super::GroupId;
use crate::dedup::{Forgotten, StoredPairs};

/// One change to the durable queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Command {
    /// A published message, for every queue in `queues` that takes it.
    Publish {
        queues: Vec<QueueId>,
        /// In a cluster: published on a node that does not run the queues, whose view
        /// of the queues may lag behind the log; the leader picks `queues` before it
        /// appends the command (`cluster::replicated::route`). Applied unrouted, it is
        /// refused: a message must never be confirmed into no queue by a stale view.
        route_on_leader: bool,
        /// The publishing connection: a consumer gets no reply permit for its own
        /// connection's request (`auth::replies`).
        publisher: u64,
        /// Subject, reply-to, headers and payload in wire form.
        envelope: Bytes,
        /// When the broker received it, in ms since the Unix epoch.
        enqueued_ms: u64,
        /// Expiry set by the publisher (a request's deadline), before any queue TTL.
        deadline_ms: Option<u64>,
        /// The exactly-once pair to remember with it: a publish whose pair the machine
        /// remembers is a duplicate, stored by no queue.
        dedup: Option<DedupEntry>,
    },
    /// A message is settled (acked, expired, purged, dropped): it leaves the store.
    Settle {
        queue: QueueId,
        seq: u64,
        /// The message has a meta record to delete with it.
        forget_meta: bool,
    },
    /// Record (or with `None` forget) what must survive a restart about a message
    /// beyond its content: its delivery count, an exactly-once hold.
    SetMeta {
        queue: QueueId,
        seq: u64,
        meta: Option<MessageMeta>,
    },
    /// Settle a message in one queue and append it (maybe changed) to another, at once:
    /// dead-lettering and moving.
    Transfer {
        from: QueueId,
        seq: u64,
        forget_meta: bool,
        to: QueueId,
        envelope: Bytes,
        enqueued_ms: u64,
    },
    /// Create a queue, numbered by the machine. Declaring again a queue that exists
    /// with the same definition does nothing; with another, it is refused.
    Declare { def: QueueDef },
    /// Delete a queue with everything in it.
    Delete { queue: QueueId },
    /// Forget the exactly-once pairs recorded before this time (ms since the epoch),
    /// then the oldest until at most `keep` are left: the dedup window's bounds, stamped
    /// by the leader, so that every node forgets the same pairs.
    ForgetDedup { before_ms: u64, keep: u64 },
    /// In a cluster's first group, the directory: a queue whose messages replica group
    /// `group` holds, numbered here as by `Declare` (so numbers are unique across
    /// groups). The same definition and group again does nothing; anything else under
    /// the name is refused.
    Place { def: QueueDef, group: GroupId },
    /// In a replica group: create queue `id` as the directory numbered it. The same
    /// definition and number again does nothing; anything else under the name is
    /// refused.
    DeclareAs { def: QueueDef, id: QueueId },
    /// In a cluster's first group: replica group `group` has these members (node ids;
    /// `None`: it is gone). Those it is first given form it.
    SetGroup {
        group: GroupId,
        members: Option<Vec<u64>>,
    },
    /// `Declare`, of a queue to have `replicas` replicas in a cluster (where the first
    /// group's leader places it before it is appended); alone, a `Declare`.
    Create { def: QueueDef, replicas: u8 },
}

/// The commands of one group commit, applied and made durable together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub commands: Vec<Command>,
}

/// What the machine answers one command.
pub(crate) type Answer = Result<Outcome, QueueError>;

/// A command the machine carried out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Outcome {
    /// For a publish: how many queues took the message (0 for other commands).
    pub queues: u16,
    /// For a publish: its exactly-once pair was stored before, so nothing was again.
    pub duplicate: bool,
}

impl Outcome {
    pub fn stored(queues: u16) -> Self {
        Self {
            queues,
            duplicate: false,
        }
    }
}

/// Why the queue layer refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub(crate) enum QueueError {
    #[error("queue '{0}' is at its max_length and refuses new messages")]
    Full(String),
    #[error("queue '{0}' exists with other bindings or options; delete it first to change them")]
    Exists(String),
    /// In a cluster: the queues' tasks moved to another node while this was asked.
    #[error("this node no longer leads the queues; the client should retry on the leader")]
    NotLeader,
    /// In a cluster: the directory placed the queue in this group, which has not
    /// created it yet.
    #[error("queue {0} is being created; retry shortly")]
    Creating(QueueId),
}

/// What applying an entry did, and what the journal must carry out once it is durable.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// The store changes that make the entry durable.
    pub commit: Commit,
    /// One answer per command, in order.
    pub answers: Vec<Answer>,
    /// Each queue's new messages, in sequence order.
    pub appended: HashMap<QueueId, Vec<NewMessage>>,
    /// Queues created, with their numbers.
    pub declared: Vec<(QueueId, QueueDef)>,
    /// Of `declared`, those whose messages another replica group holds.
    pub placed: Vec<(QueueId, GroupId)>,
    /// Replica groups whose members changed (`None`: gone).
    pub groups: Vec<(GroupId, Option<GroupRecord>)>,
    /// Queues deleted.
    pub deleted: Vec<QueueId>,
    /// What [`Machine::undo`] takes back if the entry cannot be made durable.
    undo: Vec<Undo>,
}

impl Effects {
    /// Effects that are answers only: what a replicated log returns, whose state
    /// machine applied the rest on every node.
    pub fn answered(answers: Vec<Answer>) -> Self {
        Self {
            answers,
            ..Self::default()
        }
    }
}

/// A message an entry added to a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewMessage {
    /// The index in the entry of the command that brought it.
    pub command: usize,
    pub message: StoredMessage,
    /// The connection that published it; `None` for a message moved or dead-lettered.
    pub publisher: Option<u64>,
}

/// One change [`Machine::apply`] made, with what it replaced: undone in reverse order,
/// they restore the machine exactly — sequence numbers included — so that a replica
/// that never saw the failed entry holds the same state.
#[derive(Debug)]
enum Undo {
    NextSeq {
        queue: QueueId,
        was: u64,
    },
    Settled {
        queue: QueueId,
        first: u64,
        bit: u64,
    },
    ChunkAdded {
        queue: QueueId,
        first: u64,
    },
    ChunkRemoved {
        queue: QueueId,
        first: u64,
        chunk: Chunk,
    },
    Declared {
        queue: QueueId,
    },
    /// A queue created with the number it was given.
    DeclaredAs {
        queue: QueueId,
        next_queue_id: QueueId,
    },
    Group {
        group: GroupId,
        was: Option<GroupRecord>,
    },
    Deleted {
        queue: QueueId,
        ledger: Ledger,
    },
    Remembered {
        producer: Arc<str>,
        sequence: u64,
        at_ms: u64,
    },
    Forgot(Forgotten),
}

/// The durable queues' bookkeeping: per queue, its next sequence number and which
/// records of which chunks are settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Machine {
    queues: HashMap<QueueId, Ledger>,
    /// The number the next declared queue gets: numbers are never reused while the
    /// machine runs, so a queue deleted and declared again is a new queue.
    next_queue_id: QueueId,
    /// The exactly-once pairs of stored messages.
    pairs: StoredPairs,
    /// In a cluster's first group: the replica groups.
    groups: BTreeMap<GroupId, GroupRecord>,
}

impl Default for Machine {
    fn default() -> Self {
        Self {
            queues: HashMap::new(),
            // Queue numbers start at 1, as the broker's always have.
            next_queue_id: 1,
            pairs: StoredPairs::default(),
            groups: BTreeMap::new(),
        }
    }
}

/// One queue, as the machine keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ledger {
    def: QueueDef,
    /// The replica group that holds its messages, when not this machine's: it takes
    /// none here.
    placed: Option<GroupId>,
    next_seq: u64,
    /// Chunks by first sequence number.
    chunks: BTreeMap<u64, Chunk>,
    /// Messages stored and not settled.
    live: u64,
}

/// A chunk: the messages one entry appended to one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    len: u32,
    /// Bit `i` set: record `i` is settled.
    settled: Vec<u8>,
    live: u32,
}

impl Chunk {
    fn new(len: u32) -> Self {
        Self {
            len,
            settled: vec![0; usize::try_from(len.div_ceil(8)).unwrap_or(0)],
            live: len,
        }
    }

    /// A chunk as recovery found it: `settled` from the store, `live` records left.
    pub fn recovered(len: u32, settled: &[u8], live: u32) -> Self {
        let mut c = Self::new(len);
        for (dst, src) in c.settled.iter_mut().zip(settled) {
            *dst = *src;
        }
        c.live = live;
        c
    }

    /// Marks record `i` live again (undoing [`Chunk::settle`]).
    fn unsettle(&mut self, i: u64) {
        if let Some(byte) = usize::try_from(i / 8)
            .ok()
            .and_then(|b| self.settled.get_mut(b))
        {
            *byte &= !(1u8 << (i % 8));
            self.live += 1;
        }
    }

    /// Marks record `i` settled; returns whether it was live.
    fn settle(&mut self, i: u64) -> bool {
        let Some(byte) = usize::try_from(i / 8)
            .ok()
            .and_then(|b| self.settled.get_mut(b))
        else {
            return false;
        };
        let bit = 1u8 << (i % 8);
        if *byte & bit != 0 {
            return false;
        }
        *byte |= bit;
        self.live -= 1;
        true
    }
}

impl Ledger {
    fn new(def: QueueDef, next_seq: u64) -> Self {
        Self {
            def,
            placed: None,
            next_seq,
            chunks: BTreeMap::new(),
            live: 0,
        }
    }

    /// Settles `seq`; returns the first seq of its chunk when the chunk changed.
    fn settle(&mut self, seq: u64) -> Option<u64> {
        let (&first, chunk) = self.chunks.range_mut(..=seq).next_back()?;
        if seq - first >= u64::from(chunk.len) || !chunk.settle(seq - first) {
            return None;
        }
        self.live = self.live.saturating_sub(1);
        Some(first)
    }

    fn full(&self, pending: u64) -> bool {
        self.def.overflow == OverflowDef::Reject
            && self
                .def
                .max_length
                .is_some_and(|m| self.live + pending >= m)
    }

    fn expiry(&self, enqueued_ms: u64, deadline_ms: Option<u64>) -> Option<u64> {
        let ttl = self.def.ttl_ms.map(|t| enqueued_ms.saturating_add(t));
        match (ttl, deadline_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What one [`Machine::apply`] gathers before it lays out chunks and bitmaps.
#[derive(Default)]
struct Staged {
    /// New messages per queue, in sequence order.
    appended: HashMap<QueueId, Vec<NewMessage>>,
    /// Chunks whose settled bitmap changed, by queue.
    touched: HashMap<QueueId, Vec<u64>>,
    /// The exactly-once pairs of the messages the entry stores, remembered once its
    /// commands are in (after any forgetting, as the store writes them), filed under
    /// the first one's time: the store's key.
    pairs: Vec<(String, u64)>,
    pairs_at: Option<u64>,
    /// The entry's `ForgetDedup` bounds, applied to the pairs remembered before it.
    forget: Option<(u64, u64)>,
}

impl Machine {
    /// A queue found in the store at start, with its chunks.
    pub fn recover_queue(
        &mut self,
        id: QueueId,
        def: QueueDef,
        next_seq: u64,
        chunks: impl IntoIterator<Item = (u64, Chunk)>,
    ) {
        self.next_queue_id = self.next_queue_id.max(id.saturating_add(1));
        let mut ledger = Ledger::new(def, next_seq);
        for (first, chunk) in chunks {
            ledger.live += u64::from(chunk.live);
            ledger.chunks.insert(first, chunk);
        }
        self.queues.insert(id, ledger);
    }

    /// The number of the next declared queue, as the store recorded it (older stores
    /// did not: the queues found then decide, [`Machine::recover_queue`]).
    pub fn recover_next_queue_id(&mut self, id: QueueId) {
        self.next_queue_id = self.next_queue_id.max(id);
    }

    /// Queue `id`, found at start, is placed in replica group `group`.
    pub fn recover_placement(&mut self, id: QueueId, group: GroupId) {
        if let Some(q) = self.queues.get_mut(&id) {
            q.placed = Some(group);
        }
    }

    /// A replica group found in the store at start.
    pub fn recover_group(&mut self, group: GroupId, record: GroupRecord) {
        self.groups.insert(group, record);
    }

    /// An exactly-once pair found in the store at start, with the time of its key.
    pub fn recover_pair(&mut self, pair: &DedupEntry) {
        self.pairs.insert(&pair.producer, pair.sequence, pair.at_ms);
    }

    /// Applies every command of `entry`, in order. A settle of a message that the same
    /// entry appends finds nothing: chunks are laid out once the entry's commands are in.
    pub fn apply(&mut self, entry: &Entry) -> Effects {
        let mut fx = Effects::default();
        let mut staged = Staged::default();
        for (i, command) in entry.commands.iter().enumerate() {
            let answer = self.command(i, command, &mut fx, &mut staged);
            fx.answers.push(answer);
        }
        for (queue, msgs) in staged.appended {
            let (Some(first), Ok(len), Some(q)) = (
                msgs.first(),
                u32::try_from(msgs.len()),
                self.queues.get_mut(&queue),
            ) else {
                continue;
            };
            let first_seq = first.message.seq;
            q.chunks.insert(first_seq, Chunk::new(len));
            q.live += u64::from(len);
            fx.undo.push(Undo::ChunkAdded {
                queue,
                first: first_seq,
            });
            fx.commit.next_seqs.push((queue, q.next_seq));
            fx.commit
                .chunks
                .push((queue, msgs.iter().map(|a| a.message.clone()).collect()));
            fx.appended.insert(queue, msgs);
        }
        for (queue, firsts) in staged.touched {
            let Some(q) = self.queues.get_mut(&queue) else {
                continue;
            };
            for first in firsts {
                match q.chunks.get(&first) {
                    Some(c) if c.live == 0 => {
                        if let Some(chunk) = q.chunks.remove(&first) {
                            fx.undo.push(Undo::ChunkRemoved {
                                queue,
                                first,
                                chunk,
                            });
                        }
                        fx.commit.settled.push((queue, first, None));
                    }
                    Some(c) => fx
                        .commit
                        .settled
                        .push((queue, first, Some(c.settled.clone()))),
                    None => {}
                }
            }
        }
        if let Some((before_ms, keep)) = staged.forget {
            let (until, forgotten) = self.pairs.forget(before_ms, keep);
            fx.commit.dedup_forget_before = until;
            fx.undo.push(Undo::Forgot(forgotten));
        }
        if let Some(at_ms) = staged.pairs_at {
            for (producer, sequence) in staged.pairs {
                let producer = self.pairs.insert(&producer, sequence, at_ms);
                fx.undo.push(Undo::Remembered {
                    producer,
                    sequence,
                    at_ms,
                });
            }
        }
        // Deterministic store writes, whatever the hash maps' order.
        fx.commit.chunks.sort_by_key(|(q, _)| *q);
        fx.commit.next_seqs.sort_unstable();
        fx.commit.settled.sort_by_key(|(q, first, _)| (*q, *first));
        fx
    }

    /// Takes back everything [`Machine::apply`] did for an entry that could not be made
    /// durable, so that the machine is exactly as before it (the sequence numbers it
    /// gave out are given out again: nobody saw them).
    pub fn undo(&mut self, fx: Effects) {
        for undo in fx.undo.into_iter().rev() {
            match undo {
                Undo::NextSeq { queue, was } => {
                    if let Some(q) = self.queues.get_mut(&queue) {
                        q.next_seq = was;
                    }
                }
                Undo::Settled { queue, first, bit } => {
                    if let Some(q) = self.queues.get_mut(&queue) {
                        if let Some(c) = q.chunks.get_mut(&first) {
                            c.unsettle(bit);
                            q.live += 1;
                        }
                    }
                }
                Undo::ChunkAdded { queue, first } => {
                    if let Some(q) = self.queues.get_mut(&queue) {
                        if let Some(c) = q.chunks.remove(&first) {
                            q.live = q.live.saturating_sub(u64::from(c.live));
                        }
                    }
                }
                Undo::ChunkRemoved {
                    queue,
                    first,
                    chunk,
                } => {
                    if let Some(q) = self.queues.get_mut(&queue) {
                        q.chunks.insert(first, chunk);
                    }
                }
                Undo::Declared { queue } => {
                    self.queues.remove(&queue);
                    self.next_queue_id = queue;
                }
                Undo::DeclaredAs {
                    queue,
                    next_queue_id,
                } => {
                    self.queues.remove(&queue);
                    self.next_queue_id = next_queue_id;
                }
                Undo::Group { group, was } => match was {
                    Some(record) => {
                        self.groups.insert(group, record);
                    }
                    None => {
                        self.groups.remove(&group);
                    }
                },
                Undo::Deleted { queue, ledger } => {
                    self.queues.insert(queue, ledger);
                }
                Undo::Remembered {
                    producer,
                    sequence,
                    at_ms,
                } => self.pairs.remove(&producer, sequence, at_ms),
                Undo::Forgot(forgotten) => self.pairs.restore(forgotten),
            }
        }
    }

    fn command(
        &mut self,
        index: usize,
        command: &Command,
        fx: &mut Effects,
        staged: &mut Staged,
    ) -> Answer {
        match command {
            Command::Publish {
                queues: _,
                route_on_leader: true,
                ..
            } => Err(QueueError::NotLeader),
            Command::Publish {
                queues,
                route_on_leader: false,
                publisher,
                envelope,
                enqueued_ms,
                deadline_ms,
                dedup,
            } => {
                if let Some(d) = dedup {
                    let staged_already = staged
                        .pairs
                        .iter()
                        .any(|(p, s)| *p == d.producer && *s == d.sequence);
                    if staged_already || self.pairs.contains(&d.producer, d.sequence) {
                        return Ok(Outcome {
                            queues: 0,
                            duplicate: true,
                        });
                    }
                }
                let mut stored = 0u16;
                let mut full = None;
                if let Some(q) = queues
                    .iter()
                    .find(|q| !self.queues.contains_key(q) && **q >= self.next_queue_id)
                {
                    // Numbered by the directory, not created here yet (a queue deleted
                    // here was numbered below `next_queue_id`: it is skipped).
                    return Err(QueueError::Creating(*q));
                }
                for queue in queues {
                    let Some(q) = self.queues.get_mut(queue).filter(|q| q.placed.is_none()) else {
                        continue;
                    };
                    let pending = staged.appended.get(queue).map_or(0, Vec::len) as u64;
                    if q.full(pending) {
                        full = Some(q.def.name.clone());
                        continue;
                    }
                    let message = StoredMessage {
                        seq: q.next_seq,
                        enqueued_ms: *enqueued_ms,
                        expires_ms: q.expiry(*enqueued_ms, *deadline_ms),
                        envelope: envelope.clone(),
                    };
                    fx.undo.push(Undo::NextSeq {
                        queue: *queue,
                        was: q.next_seq,
                    });
                    q.next_seq += 1;
                    stored = stored.saturating_add(1);
                    staged.appended.entry(*queue).or_default().push(NewMessage {
                        command: index,
                        message,
                        publisher: Some(*publisher),
                    });
                }
                if let Some(name) = full {
                    return Err(QueueError::Full(name));
                }
                if let Some(d) = dedup {
                    staged.pairs_at.get_or_insert(d.at_ms);
                    staged.pairs.push((d.producer.clone(), d.sequence));
                    fx.commit.dedup.push(d.clone());
                }
                Ok(Outcome::stored(stored))
            }
            Command::Settle {
                queue,
                seq,
                forget_meta,
            } => {
                self.settle(*queue, *seq, *forget_meta, fx, staged);
                Ok(Outcome::default())
            }
            Command::SetMeta { queue, seq, meta } => {
                fx.commit.metas.push((*queue, *seq, meta.clone()));
                Ok(Outcome::default())
            }
            Command::Transfer {
                from,
                seq,
                forget_meta,
                to,
                envelope,
                enqueued_ms,
            } => {
                self.settle(*from, *seq, *forget_meta, fx, staged);
                if let Some(q) = self.queues.get_mut(to).filter(|q| q.placed.is_none()) {
                    let message = StoredMessage {
                        seq: q.next_seq,
                        enqueued_ms: *enqueued_ms,
                        expires_ms: q.expiry(*enqueued_ms, None),
                        envelope: envelope.clone(),
                    };
                    fx.undo.push(Undo::NextSeq {
                        queue: *to,
                        was: q.next_seq,
                    });
                    q.next_seq += 1;
                    staged.appended.entry(*to).or_default().push(NewMessage {
                        command: index,
                        message,
                        publisher: None,
                    });
                }
                Ok(Outcome::default())
            }
            Command::Declare { def } | Command::Create { def, .. } => self.declare(def, None, fx),
            Command::Place { def, group } => self.declare(def, Some(*group), fx),
            Command::DeclareAs { def, id } => {
                let taken = self.queues.get(id).map(|q| (*id, q));
                if let Some((existing, q)) = taken.or_else(|| {
                    self.queues
                        .iter()
                        .find(|(_, q)| q.def.name == def.name)
                        .map(|(i, q)| (*i, q))
                }) {
                    return if existing == *id && q.def == *def && q.placed.is_none() {
                        Ok(Outcome::default())
                    } else {
                        Err(QueueError::Exists(def.name.clone()))
                    };
                }
                self.create(*id, def, None, fx);
                fx.undo.push(Undo::DeclaredAs {
                    queue: *id,
                    next_queue_id: self.next_queue_id,
                });
                // Numbers up to it are taken: a publish to an unknown one is to a queue
                // deleted here, not one still to come.
                self.next_queue_id = self.next_queue_id.max(id.saturating_add(1));
                fx.commit.next_queue_id = Some(self.next_queue_id);
                Ok(Outcome::default())
            }
            Command::SetGroup { group, members } => {
                let record = members.as_ref().map(|m| GroupRecord {
                    members: m.clone(),
                    founders: self
                        .groups
                        .get(group)
                        .map_or_else(|| m.clone(), |g| g.founders.clone()),
                });
                let was = match &record {
                    Some(r) => self.groups.insert(*group, r.clone()),
                    None => self.groups.remove(group),
                };
                fx.undo.push(Undo::Group { group: *group, was });
                fx.commit.groups.push((*group, record.clone()));
                fx.groups.push((*group, record));
                Ok(Outcome::default())
            }
            Command::Delete { queue } => {
                // What this entry wrote for the queue goes with it.
                fx.commit.put_queues.retain(|q| q.id != *queue);
                fx.commit.next_seqs.retain(|(q, _)| q != queue);
                fx.commit.metas.retain(|(q, _, _)| q != queue);
                if let Some(ledger) = self.queues.remove(queue) {
                    fx.undo.push(Undo::Deleted {
                        queue: *queue,
                        ledger,
                    });
                    fx.deleted.push(*queue);
                }
                fx.declared.retain(|(q, _)| q != queue);
                fx.placed.retain(|(q, _)| q != queue);
                fx.commit.placements.retain(|(q, _)| q != queue);
                staged.touched.remove(queue);
                staged.appended.remove(queue);
                fx.commit.delete_queues.push(*queue);
                Ok(Outcome::default())
            }
            Command::ForgetDedup { before_ms, keep } => {
                let (before, most) = staged.forget.get_or_insert((*before_ms, *keep));
                *before = (*before).max(*before_ms);
                *most = (*most).min(*keep);
                Ok(Outcome::default())
            }
        }
    }

    /// Declares a queue numbered here; its messages are in replica group `placed`
    /// when given.
    fn declare(&mut self, def: &QueueDef, placed: Option<GroupId>, fx: &mut Effects) -> Answer {
        if let Some(existing) = self.queues.values().find(|q| q.def.name == def.name) {
            return if existing.def == *def && existing.placed == placed {
                Ok(Outcome::default())
            } else {
                Err(QueueError::Exists(def.name.clone()))
            };
        }
        let id = self.next_queue_id;
        self.next_queue_id = id.saturating_add(1);
        fx.commit.next_queue_id = Some(self.next_queue_id);
        self.create(id, def, placed, fx);
        fx.undo.push(Undo::Declared { queue: id });
        Ok(Outcome::default())
    }

    /// Creates queue `id` (its undo is the caller's).
    fn create(&mut self, id: QueueId, def: &QueueDef, placed: Option<GroupId>, fx: &mut Effects) {
        fx.commit.put_queues.push(QueueRecord {
            id,
            name: def.name.clone(),
            definition: def.to_bytes(),
        });
        fx.commit.next_seqs.push((id, 0));
        let mut ledger = Ledger::new(def.clone(), 0);
        ledger.placed = placed;
        self.queues.insert(id, ledger);
        fx.declared.push((id, def.clone()));
        if let Some(group) = placed {
            fx.commit.placements.push((id, group));
            fx.placed.push((id, group));
        }
    }

    fn settle(
        &mut self,
        queue: QueueId,
        seq: u64,
        forget_meta: bool,
        fx: &mut Effects,
        staged: &mut Staged,
    ) {
        if forget_meta {
            fx.commit.metas.push((queue, seq, None));
        }
        let Some(first) = self.queues.get_mut(&queue).and_then(|q| q.settle(seq)) else {
            return;
        };
        fx.undo.push(Undo::Settled {
            queue,
            first,
            bit: seq - first,
        });
        let firsts = staged.touched.entry(queue).or_default();
        if !firsts.contains(&first) {
            firsts.push(first);
        }
    }

    /// Messages stored in `queue` and not settled.
    #[cfg(test)]
    fn live(&self, queue: QueueId) -> u64 {
        self.queues.get(&queue).map_or(0, |q| q.live)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::BytesMut;
    use proptest::prelude::*;
    use tern_codec::{EnvelopeRef, Headers, Overflow, QueueDeclare, QueueOptions};
    use tern_storage::{SledStore, Store};

    use super::*;
    use crate::config::QueueDefaults;
    use crate::queue::recovery;

    /// The definition of a queue `name` with no bindings that refuses publishes past
    /// `max_length` messages (0: no limit).
    pub(crate) fn def(name: &str, max_length: u64) -> QueueDef {
        let declare = QueueDeclare {
            id: 1,
            name: name.into(),
            bindings: Vec::new(),
            options: QueueOptions {
                max_length,
                overflow: Overflow::Reject,
                ..Default::default()
            },
        };
        QueueDef::from_declare(&declare, &QueueDefaults::default(), &Default::default()).unwrap()
    }

    /// A valid envelope on subject `s` carrying `payload`.
    pub(crate) fn envelope(payload: &str) -> Bytes {
        let headers = Headers::default();
        let e = EnvelopeRef {
            subject: "s",
            reply_to: None,
            headers: &headers,
            payload: payload.as_bytes(),
        };
        let mut buf = BytesMut::new();
        e.encode(&mut buf).unwrap();
        buf.freeze()
    }

    fn publish(queues: &[QueueId], payload: &str, dedup: Option<u64>) -> Command {
        Command::Publish {
            queues: queues.to_vec(),
            route_on_leader: false,
            publisher: 7,
            envelope: envelope(payload),
            enqueued_ms: 1_000,
            deadline_ms: None,
            // Pairs of later sequences come later, as a producer's do.
            dedup: dedup.map(|sequence| DedupEntry {
                producer: "0::p".into(),
                sequence,
                at_ms: 1_000 + sequence * 10,
            }),
        }
    }

    fn entry(commands: Vec<Command>) -> Entry {
        Entry { commands }
    }

    #[test]
    fn a_remembered_pair_is_a_duplicate_until_forgotten() {
        let mut m = Machine::default();
        m.apply(&entry(vec![Command::Declare { def: def("q", 0) }]));
        let dup = Outcome {
            queues: 0,
            duplicate: true,
        };
        // The second copy in the same entry is caught too.
        let fx = m.apply(&entry(vec![
            publish(&[1], "a", Some(1)),
            publish(&[1], "a", Some(1)),
        ]));
        assert_eq!(fx.answers, [Ok(Outcome::stored(1)), Ok(dup)]);
        assert_eq!(m.live(1), 1);
        // A retry in a later entry (after a failover, on another node) stores nothing.
        let fx = m.apply(&entry(vec![publish(&[1], "a", Some(1))]));
        assert_eq!(fx.answers, [Ok(dup)]);
        assert!(fx.appended.is_empty() && fx.commit.dedup.is_empty());
        // Forgotten (by age: pair 1 was filed at 1010), it is new again.
        let fx = m.apply(&entry(vec![Command::ForgetDedup {
            before_ms: 1_011,
            keep: 100,
        }]));
        assert_eq!(fx.commit.dedup_forget_before, Some(1_011));
        let fx = m.apply(&entry(vec![publish(&[1], "a", Some(1))]));
        assert_eq!(fx.answers, [Ok(Outcome::stored(1))]);
    }

    #[test]
    fn a_full_queue_refuses_and_remembers_no_pair_for_the_refused_message() {
        let mut m = Machine::default();
        m.apply(&entry(vec![Command::Declare { def: def("q", 2) }]));
        // Three in one entry: the third finds the queue full with the two before it.
        let fx = m.apply(&entry(vec![
            publish(&[1], "a", Some(1)),
            publish(&[1], "b", Some(2)),
            publish(&[1], "c", Some(3)),
        ]));
        assert_eq!(
            fx.answers[..2],
            [Ok(Outcome::stored(1)), Ok(Outcome::stored(1))]
        );
        assert_eq!(fx.answers[2], Err(QueueError::Full("q".into())));
        let pairs: Vec<u64> = fx.commit.dedup.iter().map(|d| d.sequence).collect();
        assert_eq!(pairs, [1, 2]);
        assert_eq!(m.live(1), 2);
        assert_eq!(fx.appended[&1].len(), 2);
        assert_eq!(fx.commit.chunks.len(), 1, "one chunk per queue per entry");

        // Settling one makes room for one.
        let fx = m.apply(&entry(vec![
            Command::Settle {
                queue: 1,
                seq: 0,
                forget_meta: false,
            },
            publish(&[1], "d", None),
        ]));
        assert_eq!(fx.answers[1], Ok(Outcome::stored(1)));
        assert_eq!(fx.commit.settled, vec![(1, 0, Some(vec![0b01]))]);
    }

    #[test]
    fn a_chunk_is_deleted_when_its_last_message_is_settled() {
        let mut m = Machine::default();
        m.apply(&entry(vec![Command::Declare { def: def("q", 0) }]));
        m.apply(&entry(vec![
            publish(&[1], "a", None),
            publish(&[1], "b", None),
        ]));
        let settle = |seq| Command::Settle {
            queue: 1,
            seq,
            forget_meta: true,
        };
        let fx = m.apply(&entry(vec![settle(0), settle(1), settle(1)]));
        assert_eq!(fx.commit.settled, vec![(1, 0, None)]);
        assert_eq!(fx.commit.metas.len(), 3);
        assert_eq!(m.live(1), 0);

        let before = m.clone();
        let fx = m.apply(&entry(vec![
            publish(&[1], "c", None),
            Command::Declare { def: def("r", 0) },
        ]));
        m.undo(fx);
        assert_eq!(m, before);
    }

    #[test]
    fn the_machine_numbers_queues_and_never_reuses_a_number() {
        let mut m = Machine::default();
        let fx = m.apply(&entry(vec![
            Command::Declare { def: def("a", 0) },
            Command::Declare { def: def("b", 0) },
        ]));
        let ids: Vec<QueueId> = fx.declared.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(fx.commit.next_queue_id, Some(3));

        // The same definition again changes nothing; another one is refused.
        let fx = m.apply(&entry(vec![
            Command::Declare { def: def("a", 0) },
            Command::Declare { def: def("a", 9) },
        ]));
        assert_eq!(
            fx.answers,
            [Ok(Outcome::default()), Err(QueueError::Exists("a".into()))]
        );
        assert!(fx.declared.is_empty() && fx.commit.is_empty());

        // Deleted and declared again: a new number.
        let fx = m.apply(&entry(vec![
            Command::Delete { queue: 2 },
            Command::Declare { def: def("b", 0) },
        ]));
        assert_eq!(fx.deleted, [2]);
        assert_eq!(fx.declared[0].0, 3);

        // Undone, the number is given out again.
        let before = m.clone();
        let fx = m.apply(&entry(vec![Command::Declare { def: def("c", 0) }]));
        assert_eq!(fx.declared[0].0, 4);
        m.undo(fx);
        assert_eq!(m, before);
        let fx = m.apply(&entry(vec![Command::Declare { def: def("c", 0) }]));
        assert_eq!(fx.declared[0].0, 4);
    }

    /// The directory's commands: a queue placed in another group is numbered here and
    /// takes no message here; a group's queue is created with the number it was given,
    /// and a publish to a number not created yet is refused until it is.
    #[test]
    fn placed_queues_are_numbered_here_and_created_in_their_group() {
        let mut directory = Machine::default();
        let fx = directory.apply(&entry(vec![
            Command::SetGroup {
                group: 2,
                members: Some(vec![1, 2, 3]),
            },
            Command::Place {
                def: def("orders", 0),
                group: 2,
            },
        ]));
        assert_eq!(fx.declared[0].0, 1);
        assert_eq!(fx.placed, [(1, 2)]);
        let founded = GroupRecord {
            members: vec![1, 2, 3],
            founders: vec![1, 2, 3],
        };
        assert_eq!(fx.groups, [(2, Some(founded))]);
        assert_eq!(fx.commit.placements, [(1, 2)]);
        // Alone (or in a group), a declare with a replica count is a declare.
        let fx = directory.apply(&entry(vec![Command::Create {
            def: def("local", 0),
            replicas: 2,
        }]));
        assert_eq!(fx.declared[0].0, 2);
        assert!(fx.placed.is_empty());
        // Placed again: nothing; declared as a queue of this group's: refused.
        let fx = directory.apply(&entry(vec![
            Command::Place {
                def: def("orders", 0),
                group: 2,
            },
            Command::Declare {
                def: def("orders", 0),
            },
            publish(&[1], "a", None),
        ]));
        assert_eq!(
            fx.answers,
            [
                Ok(Outcome::default()),
                Err(QueueError::Exists("orders".into())),
                Ok(Outcome::stored(0)),
            ]
        );

        let mut group = Machine::default();
        let fx = group.apply(&entry(vec![publish(&[5], "early", None)]));
        assert_eq!(fx.answers, [Err(QueueError::Creating(5))]);
        let before = group.clone();
        let fx = group.apply(&entry(vec![Command::DeclareAs {
            def: def("orders", 0),
            id: 5,
        }]));
        assert_eq!(fx.declared[0].0, 5);
        assert_eq!(fx.commit.next_queue_id, Some(6));
        group.undo(fx);
        assert_eq!(group, before);
        group.apply(&entry(vec![Command::DeclareAs {
            def: def("orders", 0),
            id: 5,
        }]));
        let fx = group.apply(&entry(vec![
            publish(&[5], "a", None),
            Command::Delete { queue: 5 },
        ]));
        assert_eq!(fx.answers[0], Ok(Outcome::stored(1)));
        // Deleted: a late publish to it is dropped, not refused.
        let fx = group.apply(&entry(vec![publish(&[5], "late", None)]));
        assert_eq!(fx.answers, [Ok(Outcome::stored(0))]);
    }

    /// A random command over queues 1 and 2 (and an unknown 9).
    fn command() -> impl Strategy<Value = Command> {
        let queue = prop_oneof![Just(1u32), Just(2), Just(9)];
        prop_oneof![
            4 => (prop::collection::vec(queue.clone(), 0..3), "[a-z]{0,8}", prop::option::of(0u64..20))
                .prop_map(|(qs, p, d)| publish(&qs, &p, d)),
            3 => (queue.clone(), 0u64..24, any::<bool>()).prop_map(|(queue, seq, forget_meta)| Command::Settle { queue, seq, forget_meta }),
            1 => (queue.clone(), 0u64..24, prop::option::of(1u32..5)).prop_map(|(queue, seq, n)| Command::SetMeta {
                queue, seq, meta: n.map(|delivery_count| MessageMeta { delivery_count, held_by: None }),
            }),
            1 => (queue.clone(), 0u64..24, queue.clone(), "[a-z]{0,8}").prop_map(|(from, seq, to, p)| Command::Transfer {
                from, seq, forget_meta: false, to, envelope: envelope(&p), enqueued_ms: 2_000,
            }),
            1 => (3u32..6).prop_map(|id| Command::Declare { def: def(&format!("q{id}"), 4) }),
            1 => (3u32..6).prop_map(|queue| Command::Delete { queue }),
            1 => (900u64..1_300, 0u64..6).prop_map(|(before_ms, keep)| Command::ForgetDedup { before_ms, keep }),
            1 => (6u32..8, 2u64..4).prop_map(|(id, group)| Command::Place { def: def(&format!("p{id}"), 0), group }),
            1 => (10u32..12).prop_map(|id| Command::DeclareAs { def: def(&format!("g{id}"), 0), id }),
            1 => (2u64..4, prop::option::of(prop::collection::vec(1u64..4, 1..4))).prop_map(|(group, members)| Command::SetGroup { group, members }),
        ]
    }

    fn entries() -> impl Strategy<Value = Vec<Entry>> {
        prop::collection::vec(
            prop::collection::vec(command(), 0..8).prop_map(entry),
            1..10,
        )
    }

    fn declared() -> Machine {
        let mut m = Machine::default();
        m.apply(&entry(vec![
            Command::Declare { def: def("one", 0) },
            Command::Declare { def: def("two", 5) },
        ]));
        m
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The same entries give the same state and the same effects, also after a
        /// round trip through serialization (what a replica receives).
        #[test]
        fn applying_is_deterministic(entries in entries()) {
            let (mut a, mut b) = (declared(), declared());
            for e in &entries {
                // The write-ahead log's encoding.
                let wire = postcard::to_stdvec(e).unwrap();
                let copy: Entry = postcard::from_bytes(&wire).unwrap();
                prop_assert_eq!(&copy, e);
                let (fa, fb) = (a.apply(e), b.apply(&copy));
                prop_assert_eq!(fa.commit, fb.commit);
                prop_assert_eq!(fa.answers, fb.answers);
                prop_assert_eq!(&a, &b);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Undoing an entry gives back exactly the machine before it.
        #[test]
        fn undo_restores_the_machine_exactly(entries in entries(), last in prop::collection::vec(command(), 0..12)) {
            let mut m = declared();
            for e in &entries {
                m.apply(e);
            }
            let before = m.clone();
            let fx = m.apply(&entry(last));
            m.undo(fx);
            prop_assert_eq!(m, before);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// After every entry, the store that holds the effects of the entries so far
        /// recovers into exactly the machine that applied them: a crash after any
        /// prefix leaves a consistent state.
        #[test]
        fn the_store_recovers_the_state_after_every_entry(entries in entries()) {
            let dir = tempfile::tempdir().unwrap();
            let store = SledStore::open(dir.path()).unwrap();
            let mut m = Machine::default();
            let declare = entry(vec![
                Command::Declare {
                def: def("one", 0) },
                Command::Declare {
                def: def("two", 5) },
            ]);
            for e in std::iter::once(&declare).chain(&entries) {
                let fx = m.apply(e);
                store.apply(&fx.commit).unwrap();
                let back = recovery::recover(&store, dir.path(), 1 << 20, Default::default()).unwrap();
                prop_assert_eq!(&back.machine, &m);
            }
        }
    }
}
