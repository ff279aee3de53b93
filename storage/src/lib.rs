//! tern-storage: the broker's embedded store.
//!
//! The store lives in one data directory, opened by one broker at a time. It records a
//! format marker on creation, so that a directory which is not a tern store, or was
//! written by an incompatible version, is refused with a clear error instead of being
//! silently reused or wiped.
//!
//! # Layout
//!
//! The broker writes through one [`Commit`] per group commit: every message appended to
//! a queue in that commit goes into one *chunk* value, keyed by queue and first
//! sequence number, so the engine does a handful of writes per commit rather than one
//! per message (the difference between ~150k and ~800k messages/s on sled with an fsync
//! per commit). Settled messages are recorded in a per-chunk bitmap; a chunk whose
//! messages are all settled is deleted. Per-message metadata (delivery counts after a
//! redelivery, exactly-once holds) is written only when it changes.
//!
//! ```text
//! key                                   value
//! "q" queue_id:u32                      QueueRecord (name, opaque definition)
//! "n" queue_id:u32                      next sequence number of the queue: u64
//! "c" queue_id:u32 first_seq:u64        pointer to the chunk in a segment file: 0xff,
//!                                       segment:u64, offset:u64, len:u32, crc32:u32
//!                                       (format 1 stored the chunk itself here:
//!                                       count:u32, then records; still read)
//! "a" queue_id:u32 first_seq:u64        settled bitmap of that chunk
//! "m" queue_id:u32 seq:u64              MessageMeta
//! "d" at_ms:u64 n:u64                   dedup entries written together (n: log index)
//! "w"                                   index of the last log entry applied: u64
//! "i"                                   number of the next queue declared: u32
//! "r"                                   a replicated log's applied state (opaque)
//! "R" group:u64 index:u64               a Raft log entry, and a group's vote,
//! "V" / "K" / "P" group:u64             committed id and last purged id: only in
//!                                       directories of earlier versions, moved to
//!                                       `raft-log/` at start (see `raft_log`)
//! ```
//!
//! Chunk bytes (count:u32, then records) live in `segments/<n>`, appended; see
//! `segments` for why and how they are synced and deleted.
//!
//! Integers in keys are big-endian, so key order is numeric order. Nothing outside this
//! crate sees a `sled::Tree`: callers use the [`Store`] operations only.
//!
//! # Durability
//!
//! [`Store::flush`] returns once everything applied is on stable storage: sled's own
//! flush only `sync_file_range`s its log, so the engine adds the `fdatasync`s and
//! directory `fsync`s that make it so (`file_sync`). Flushing is the checkpoint of the
//! broker's write-ahead log ([`Wal`]), which makes each commit durable in between.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod error;
mod file_sync;
mod raft_log;
mod record;
mod segments;
mod sled_store;
mod snapshot;
mod wal;

pub use error::StorageError;
pub use raft_log::{RaftLog, RaftLogState};
pub use record::{DedupEntry, MessageMeta, QueueRecord, StoredMessage};
pub use sled_store::{SledStore, DEFAULT_CACHE_BYTES};
pub use wal::{LogFile, Wal, WalRecord};

/// The on-disk format this version writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// A queue's number in the store, assigned by the broker when the queue is created.
pub type QueueId = u32;

/// Everything one group commit writes, applied atomically. Serializable: the broker's
/// write-ahead log holds commits, and replays them after a crash — each sets keys to
/// absolute values, so applying again one the store already holds changes nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Commit {
    /// Queues created or changed.
    pub put_queues: Vec<QueueRecord>,
    /// Queues deleted, with every message, bitmap and meta of theirs. Deletes are
    /// applied first, so a commit may delete a queue and create one with its id.
    pub delete_queues: Vec<QueueId>,
    /// New chunks: the messages appended to one queue in this commit, in seq order.
    pub chunks: Vec<(QueueId, Vec<StoredMessage>)>,
    /// Each queue's next sequence number, kept so that numbers are never reused even
    /// when every chunk of a queue has been settled and deleted.
    pub next_seqs: Vec<(QueueId, u64)>,
    /// Settled-bitmap changes: `None` deletes the chunk (all of it is settled).
    pub settled: Vec<(QueueId, u64, Option<Vec<u8>>)>,
    /// Per-message metadata: `None` deletes it.
    pub metas: Vec<(QueueId, u64, Option<MessageMeta>)>,
    /// Deduplication entries to remember.
    pub dedup: Vec<DedupEntry>,
    /// Forget deduplication entries recorded before this time (ms since the epoch).
    pub dedup_forget_before: Option<u64>,
    /// The number the next queue declared gets, when this commit changes it: kept so that
    /// numbers are never reused, even for a queue deleted and declared again.
    pub next_queue_id: Option<QueueId>,
    /// The index of the log entry this commit makes durable: recovery replays the
    /// write-ahead log from the entry after the last one the store holds.
    pub log_index: Option<u64>,
    /// What a replicated log records with the state it applied (the last applied
    /// entry's id and the membership, opaque here), written atomically with it.
    pub applied: Option<Vec<u8>>,
    /// In a cluster: queues of `put_queues` whose messages another replica group holds
    /// (by group number). Deleted with their queue.
    pub placements: Vec<(QueueId, u64)>,
    /// In a cluster: replica groups (`None`: the group is gone).
    pub groups: Vec<(u64, Option<GroupRecord>)>,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.put_queues.is_empty()
            && self.delete_queues.is_empty()
            && self.chunks.is_empty()
            && self.next_seqs.is_empty()
            && self.settled.is_empty()
            && self.metas.is_empty()
            && self.dedup.is_empty()
            && self.dedup_forget_before.is_none()
            && self.next_queue_id.is_none()
            && self.applied.is_none()
            && self.placements.is_empty()
            && self.groups.is_empty()
    }
}

/// A replica group of a cluster: its members' node ids, and those that formed it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct GroupRecord {
    pub members: Vec<u64>,
    /// Only these form the group (on their first start with it); a member added later
    /// is added by the group's leader.
    pub founders: Vec<u64>,
}

/// One chunk as found at recovery.
#[derive(Debug)]
pub struct RecoveredChunk {
    pub queue: QueueId,
    pub first_seq: u64,
    /// Number of records the chunk was written with.
    pub len: u32,
    /// Settled bitmap (bit `i` = record `i` is settled); empty when nothing is.
    pub settled: Vec<u8>,
    /// The records not yet settled.
    pub live: Vec<StoredMessage>,
}

/// Receives what the store holds, at start.
pub trait Recover {
    fn queue(&mut self, record: QueueRecord);
    fn next_seq(&mut self, queue: QueueId, next: u64);
    fn chunk(&mut self, chunk: RecoveredChunk);
    fn meta(&mut self, queue: QueueId, seq: u64, meta: MessageMeta);
    fn dedup(&mut self, entry: DedupEntry);
    /// The number the next declared queue gets, if one was recorded.
    fn next_queue_id(&mut self, id: QueueId);
    /// The index of the last log entry whose commit the store holds, if any was
    /// recorded.
    fn log_index(&mut self, index: u64);
    /// Queue `queue`'s messages are in replica group `group` (a cluster's directory).
    fn placement(&mut self, _queue: QueueId, _group: u64) {}
    /// Replica group `group` (a cluster's directory).
    fn group(&mut self, _group: u64, _record: GroupRecord) {}
}

/// What the broker needs from a store. Every method blocks on I/O: call them from a
/// dedicated thread or `spawn_blocking`.
pub trait Store: std::fmt::Debug + Send + Sync + 'static {
    /// Streams everything the store holds to `into`, in this order: queues, their next
    /// sequence numbers, message metas, chunks (one at a time, so that recovery never
    /// needs the whole store in memory), the log index, dedup entries.
    ///
    /// # Errors
    ///
    /// The store cannot be read or holds something undecodable (corrupt).
    fn recover(&self, into: &mut dyn Recover) -> Result<(), StorageError>;

    /// Applies `commit` atomically (all of it or none of it). Not durable until
    /// [`Store::flush`].
    ///
    /// # Errors
    ///
    /// The engine refused the write (disk full, I/O error).
    fn apply(&self, commit: &Commit) -> Result<(), StorageError>;

    /// Applies `commits` in order, each atomically as [`Store::apply`] does: a store
    /// may share work between them (`SledStore::sync_bodies` syncs the bodies of all
    /// at once). On an error, the commits before the one that failed are applied.
    ///
    /// # Errors
    ///
    /// The engine refused a write (disk full, I/O error).
    fn apply_all(&self, commits: &[Commit]) -> Result<(), StorageError> {
        commits.iter().try_for_each(|c| self.apply(c))
    }

    /// Makes everything applied so far durable (fsync).
    ///
    /// # Errors
    ///
    /// The disk refused the flush.
    fn flush(&self) -> Result<(), StorageError>;

    /// Reads back the chunk that holds message `seq` of `queue`: its messages not yet
    /// settled, in sequence order, each a slice of one copy of the chunk (for a queue
    /// that keeps only part of its bodies in memory and delivers in sequence order: a
    /// chunk is read and decoded once, not once per message). Empty if no chunk holds
    /// `seq`.
    ///
    /// # Errors
    ///
    /// The store cannot be read or the chunk is corrupt.
    fn read_chunk(&self, queue: QueueId, seq: u64) -> Result<Vec<StoredMessage>, StorageError>;

    /// The index of the last log entry whose commit the store holds (0: none).
    ///
    /// # Errors
    ///
    /// The store cannot be read.
    fn log_index(&self) -> Result<u64, StorageError>;

    /// The [`Commit::applied`] of the last commit that had one.
    ///
    /// # Errors
    ///
    /// The store cannot be read.
    fn applied(&self) -> Result<Option<Vec<u8>>, StorageError>;

    /// Bytes free for the store on its filesystem (for an unprivileged process), so
    /// that the broker can stop taking messages before the disk is full: the engine
    /// cannot be trusted to recover from running out of space mid-write.
    ///
    /// # Errors
    ///
    /// The filesystem could not be asked.
    fn free_bytes(&self) -> Result<u64, StorageError>;

    /// Bytes the store occupies on disk.
    ///
    /// # Errors
    ///
    /// The directory could not be measured.
    fn size_on_disk(&self) -> Result<u64, StorageError>;
}
