//! The Raft log of a cluster node: every group's entries, votes, committed ids and
//! purge points, in the node's store.
//!
//! Each change is one record of a write-ahead log of its own ([`Wal`], the same format
//! as the broker's) and is applied to sled at once, so it is readable as soon as it is
//! written and durable once [`RaftLog::sync`] returns: one `fdatasync` covers whatever
//! every group wrote since the last one. When the log file is full, the store is
//! flushed (a checkpoint: everything is then in sled, durably) and the file starts
//! over. After a crash, the records after the last checkpoint marker are applied again
//! in order; each sets its keys to absolute values, so applying again what sled
//! already holds changes nothing.
//!
//! Entries, votes and ids are opaque bytes here: the broker's Raft adapter encodes
//! them. Keys: see the crate's layout table ("R", "V", "K", "P").

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::sled_store::SledStore;
use crate::{StorageError, Store, Wal};

const ENTRY: u8 = b'R';
const VOTE: u8 = b'V';
const COMMITTED: u8 = b'K';
const PURGED: u8 = b'P';

fn group_key(prefix: u8, group: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&group.to_be_bytes());
    k
}

fn entry_key(group: u64, index: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = ENTRY;
    k[1..9].copy_from_slice(&group.to_be_bytes());
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
}

fn index_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(9..17)?.try_into().ok()?))
}

/// One change to the log, as a write-ahead log record.
#[derive(Debug, Serialize, Deserialize)]
enum Op {
    Append {
        group: u64,
        entries: Vec<(u64, Vec<u8>)>,
    },
    /// Deletes the entries from `from` on.
    Truncate {
        group: u64,
        from: u64,
    },
    /// Deletes the entries up to `upto`, and records `id` as the last purged.
    Purge {
        group: u64,
        upto: u64,
        id: Vec<u8>,
    },
    Vote {
        group: u64,
        vote: Vec<u8>,
    },
    Committed {
        group: u64,
        id: Vec<u8>,
    },
}

/// What a group's log holds, at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RaftLogState {
    /// The last entry.
    pub last: Option<(u64, Vec<u8>)>,
    pub last_purged: Option<Vec<u8>>,
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
}

/// The node's Raft log. Cheap to share: readers go to sled directly; writers take
/// turns on the write-ahead log.
#[derive(Debug, Clone)]
pub struct RaftLog {
    store: Arc<SledStore>,
    writer: Arc<Mutex<Writer>>,
}

#[derive(Debug)]
struct Writer {
    wal: Wal,
    /// The index of the next record.
    next: u64,
    /// Set by a failed write or sync: nothing written after it may be called durable,
    /// so every later write fails too, until the node restarts.
    failed: Option<String>,
}

impl RaftLog {
    /// Opens the log in `store` with the write-ahead log file at `wal_path` (created if
    /// missing, at most `capacity` bytes), applying the records after its last
    /// checkpoint again.
    ///
    /// # Errors
    ///
    /// The file cannot be opened or read, a record cannot be applied, or the
    /// checkpoint that follows the replay fails.
    pub fn open(
        store: Arc<SledStore>,
        wal_path: &Path,
        capacity: u64,
    ) -> Result<Self, StorageError> {
        let (mut wal, records) = Wal::open(wal_path, capacity).map_err(StorageError::Wal)?;
        let mut records = records.into_iter();
        let marker = records.next().filter(|r| r.payload.is_empty());
        let mut expected = marker.as_ref().map_or(0, |m| m.index + 1);
        let mut replayed = 0u64;
        for r in records.take_while(|_| marker.is_some()) {
            if r.index != expected {
                break;
            }
            let op: Op = postcard::from_bytes(&r.payload).map_err(|e| StorageError::Corrupt {
                path: wal_path.to_owned(),
                detail: format!("raft log record {}: {e}", r.index),
            })?;
            apply(store.db(), &op)?;
            expected += 1;
            replayed += 1;
        }
        store.flush()?;
        wal.checkpointed(expected).map_err(StorageError::Wal)?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "replayed the raft log's write-ahead log"
            );
        }
        Ok(Self {
            store,
            writer: Arc::new(Mutex::new(Writer {
                wal,
                next: expected + 1,
                failed: None,
            })),
        })
    }

    /// Appends `entries` (index, bytes) to `group`'s log: readable at once, durable
    /// after the next [`RaftLog::sync`].
    ///
    /// # Errors
    ///
    /// The write failed, or an earlier one did.
    pub fn append(&self, group: u64, entries: Vec<(u64, Vec<u8>)>) -> Result<(), StorageError> {
        self.write(&Op::Append { group, entries })
    }

    /// Deletes `group`'s entries from index `from` on; durable after the next sync.
    ///
    /// # Errors
    ///
    /// As [`RaftLog::append`].
    pub fn truncate(&self, group: u64, from: u64) -> Result<(), StorageError> {
        self.write(&Op::Truncate { group, from })
    }

    /// Deletes `group`'s entries up to index `upto` and records `id` as the last one
    /// purged; durable after the next sync.
    ///
    /// # Errors
    ///
    /// As [`RaftLog::append`].
    pub fn purge(&self, group: u64, upto: u64, id: Vec<u8>) -> Result<(), StorageError> {
        self.write(&Op::Purge { group, upto, id })
    }

    /// Records `group`'s committed entry id; durable after the next sync.
    ///
    /// # Errors
    ///
    /// As [`RaftLog::append`].
    pub fn save_committed(&self, group: u64, id: Vec<u8>) -> Result<(), StorageError> {
        self.write(&Op::Committed { group, id })
    }

    /// Records `group`'s vote, durably: Raft's safety rests on a node never voting
    /// twice in a term, across restarts.
    ///
    /// # Errors
    ///
    /// As [`RaftLog::append`], or the sync failed.
    pub fn save_vote(&self, group: u64, vote: Vec<u8>) -> Result<(), StorageError> {
        self.write(&Op::Vote { group, vote })?;
        self.sync()
    }

    /// Makes everything written so far durable.
    ///
    /// # Errors
    ///
    /// The sync failed (and the log refuses every write from now on: what the sync
    /// covered may or may not be on disk), or an earlier write did.
    pub fn sync(&self) -> Result<(), StorageError> {
        let mut w = self.lock();
        w.check()?;
        let synced = w.wal.sync();
        w.fail_on(synced.map_err(StorageError::Sync))
    }

    /// What `group`'s log holds.
    ///
    /// # Errors
    ///
    /// sled cannot be read.
    pub fn state(&self, group: u64) -> Result<RaftLogState, StorageError> {
        let db = self.store.db();
        let last = db
            .scan_prefix(group_key(ENTRY, group))
            .next_back()
            .transpose()?
            .and_then(|(k, v)| Some((index_of(&k)?, v.to_vec())));
        let get = |prefix| -> Result<Option<Vec<u8>>, StorageError> {
            Ok(db.get(group_key(prefix, group))?.map(|v| v.to_vec()))
        };
        Ok(RaftLogState {
            last,
            last_purged: get(PURGED)?,
            vote: get(VOTE)?,
            committed: get(COMMITTED)?,
        })
    }

    /// `group`'s entries with indices in `from..to`, in order, stopping once they add
    /// up to `max_bytes` (always at least one, if there is one).
    ///
    /// # Errors
    ///
    /// sled cannot be read.
    pub fn entries(
        &self,
        group: u64,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        if from >= to {
            return Ok(out);
        }
        for item in self
            .store
            .db()
            .range(entry_key(group, from)..entry_key(group, to))
        {
            let (k, v) = item?;
            if !out.is_empty() && bytes + v.len() > max_bytes {
                break;
            }
            bytes += v.len();
            if let Some(index) = index_of(&k) {
                out.push((index, v.to_vec()));
            }
        }
        Ok(out)
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic mid-write leaves `failed` unset but the record half-written at worst,
        // which a restart's scan drops: the writer is still usable.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `op` to the write-ahead log and applies it to sled.
    fn write(&self, op: &Op) -> Result<(), StorageError> {
        let payload = postcard::to_stdvec(op).map_err(|e| StorageError::Refused {
            detail: format!("cannot encode a raft log record: {e}"),
        })?;
        let mut w = self.lock();
        w.check()?;
        let written = self.write_locked(&mut w, op, &payload);
        w.fail_on(written)
    }

    fn write_locked(&self, w: &mut Writer, op: &Op, payload: &[u8]) -> Result<(), StorageError> {
        let index = w.next;
        if w.wal.append(index, payload).map_err(StorageError::Wal)? {
            w.next += 1;
            return apply(self.store.db(), op);
        }
        // Full: checkpoint (everything written so far is then durable in sled) and
        // start the file over.
        self.store.flush()?;
        w.wal.checkpointed(index - 1).map_err(StorageError::Wal)?;
        if w.wal.append(index, payload).map_err(StorageError::Wal)? {
            w.next += 1;
            return apply(self.store.db(), op);
        }
        // Larger than the whole file: straight to sled, made durable by a checkpoint
        // of its own. Records written after it follow it on replay, as they should.
        apply(self.store.db(), op)?;
        self.store.flush()
    }
}

impl Writer {
    fn check(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(e) => Err(StorageError::Refused {
                detail: format!(
                    "the raft log stopped after a failed write or sync ({e}); restart the node"
                ),
            }),
            None => Ok(()),
        }
    }

    fn fail_on(&mut self, result: Result<(), StorageError>) -> Result<(), StorageError> {
        if let Err(e) = &result {
            tracing::error!(error = %e, "the raft log failed: this node stops writing until it restarts");
            self.failed = Some(e.to_string());
        }
        result
    }
}

/// Applies `op` to sled, atomically.
fn apply(db: &sled::Db, op: &Op) -> Result<(), StorageError> {
    let mut batch = sled::Batch::default();
    match op {
        Op::Append { group, entries } => {
            for (index, bytes) in entries {
                batch.insert(&entry_key(*group, *index), bytes.as_slice());
            }
        }
        Op::Truncate { group, from } => {
            for key in db
                .range(entry_key(*group, *from)..=entry_key(*group, u64::MAX))
                .keys()
            {
                batch.remove(key?);
            }
        }
        Op::Purge { group, upto, id } => {
            for key in db
                .range(entry_key(*group, 0)..=entry_key(*group, *upto))
                .keys()
            {
                batch.remove(key?);
            }
            batch.insert(&group_key(PURGED, *group), id.as_slice());
        }
        Op::Vote { group, vote } => batch.insert(&group_key(VOTE, *group), vote.as_slice()),
        Op::Committed { group, id } => batch.insert(&group_key(COMMITTED, *group), id.as_slice()),
    }
    db.apply_batch(batch)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, capacity: u64) -> RaftLog {
        let store = Arc::new(crate::sled_store::tests::reopen(dir).unwrap());
        RaftLog::open(store, &dir.join("raft-wal"), capacity).unwrap()
    }

    fn entries(range: std::ops::Range<u64>, tag: u8) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, vec![tag; 10])).collect()
    }

    #[test]
    fn appends_truncates_and_purges_per_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 1 << 20);
        log.append(1, entries(1..6, b'a')).unwrap();
        log.append(2, entries(1..3, b'b')).unwrap();
        log.truncate(1, 4).unwrap();
        log.append(1, entries(4..5, b'c')).unwrap();
        log.purge(1, 2, b"id2".to_vec()).unwrap();
        log.sync().unwrap();
        let got = log.entries(1, 0, 100, usize::MAX).unwrap();
        assert_eq!(
            got.iter().map(|(i, v)| (*i, v[0])).collect::<Vec<_>>(),
            vec![(3, b'a'), (4, b'c')]
        );
        let state = log.state(1).unwrap();
        assert_eq!(state.last, Some((4, vec![b'c'; 10])));
        assert_eq!(state.last_purged.as_deref(), Some(&b"id2"[..]));
        assert_eq!(log.state(2).unwrap().last.map(|l| l.0), Some(2));
        assert_eq!(log.state(3).unwrap(), RaftLogState::default());
    }

    #[test]
    fn reads_stop_at_the_byte_budget_but_return_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 1 << 20);
        log.append(1, entries(1..11, b'x')).unwrap();
        assert_eq!(log.entries(1, 1, 11, 35).unwrap().len(), 3);
        assert_eq!(log.entries(1, 1, 11, 1).unwrap().len(), 1);
        assert!(log.entries(1, 5, 5, 100).unwrap().is_empty());
    }

    #[test]
    fn survives_a_restart_across_truncations_and_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path(), 4096);
            for i in 0..50u64 {
                log.append(1, vec![(i + 1, vec![i as u8; 100])]).unwrap();
                if i % 7 == 0 {
                    log.truncate(1, i + 1).unwrap();
                    log.append(1, vec![(i + 1, vec![200; 100])]).unwrap();
                }
            }
            log.save_vote(1, b"vote".to_vec()).unwrap();
            log.save_committed(1, b"c49".to_vec()).unwrap();
            log.sync().unwrap();
        }
        let log = open(dir.path(), 4096);
        let all = log.entries(1, 0, u64::MAX, usize::MAX).unwrap();
        assert_eq!(all.len(), 50);
        for (i, v) in &all {
            let want = if (i - 1) % 7 == 0 { 200 } else { (i - 1) as u8 };
            assert_eq!(v[0], want, "entry {i}");
        }
        let state = log.state(1).unwrap();
        assert_eq!(state.vote.as_deref(), Some(&b"vote"[..]));
        assert_eq!(state.committed.as_deref(), Some(&b"c49"[..]));
    }

    #[test]
    fn a_record_larger_than_the_file_is_still_written_durably() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path(), 1024);
            log.append(1, vec![(1, vec![1; 10])]).unwrap();
            log.append(1, vec![(2, vec![2; 5000])]).unwrap();
            log.append(1, vec![(3, vec![3; 10])]).unwrap();
            log.sync().unwrap();
        }
        let log = open(dir.path(), 1024);
        let all = log.entries(1, 0, 10, usize::MAX).unwrap();
        assert_eq!(
            all.iter().map(|(i, v)| (*i, v.len())).collect::<Vec<_>>(),
            vec![(1, 10), (2, 5000), (3, 10)]
        );
    }
}
