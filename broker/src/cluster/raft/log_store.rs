//! The Raft log of this node's group, over the store's [`RaftLog`].
//!
//! Entries are appended readable at once and made durable by one `fdatasync` on a
//! blocking thread, after which openraft is told (`LogFlushed`): openraft 0.9 waits for
//! that before it appends more, so the journal's group commit — many messages per
//! entry — is what keeps syncs few.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{LogId, StorageError, StorageIOError, Vote};
use tern_storage::RaftLog;

use super::entry_cache::{self, EntryCache};
use super::{NodeId, TypeConfig};

/// Most bytes of entries one read returns (one AppendEntries carries at most this much,
/// or one entry if a single entry is larger).
const MAX_READ_BYTES: usize = 8 << 20;

/// One group's view of the node's Raft log.
#[derive(Debug, Clone)]
pub(crate) struct LogStore {
    log: RaftLog,
    group: u64,
    /// The newest entries, decoded: what the state machine and the replication read.
    cache: Arc<Mutex<EntryCache>>,
}

type Entry = openraft::Entry<TypeConfig>;

fn read_err(e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    StorageIOError::read_logs(e).into()
}

fn write_err(e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    StorageIOError::write_logs(e).into()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError<NodeId>> {
    postcard::from_bytes(bytes).map_err(|e| read_err(&e))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StorageError<NodeId>> {
    postcard::to_stdvec(value).map_err(|e| write_err(&e))
}

impl LogStore {
    pub fn new(log: RaftLog, group: u64) -> Self {
        Self {
            log,
            group,
            cache: Arc::new(Mutex::new(EntryCache::new(entry_cache::BUDGET))),
        }
    }

    fn cache(&self) -> MutexGuard<'_, EntryCache> {
        // Changed by whole calls that cannot panic halfway: a poisoned lock is fine.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a blocking store call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&RaftLog, u64) -> Result<T, tern_storage::StorageError> + Send + 'static,
    ) -> Result<T, tern_storage::StorageError> {
        let (log, group) = (self.log.clone(), self.group);
        tokio::task::spawn_blocking(move || f(&log, group))
            .await
            .unwrap_or_else(|e| {
                Err(tern_storage::StorageError::Refused {
                    detail: format!("a raft log task failed: {e}"),
                })
            })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let from = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(cached) = self.cache().read(from, to, usize::MAX) {
            return Ok(cached);
        }
        let mut out = Vec::new();
        let mut next = from;
        // openraft may ask for any range: read it all, a budget's worth at a time.
        while next < to {
            let batch = self
                .log
                .entries(self.group, next, to, MAX_READ_BYTES)
                .map_err(|e| read_err(&e))?;
            let Some((last, _)) = batch.last() else {
                break;
            };
            next = last + 1;
            for (_, bytes) in batch {
                out.push(decode(&bytes)?);
            }
        }
        Ok(out)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        // A prefix within the byte budget: what one AppendEntries carries.
        if let Some(cached) = self.cache().read(start, end, MAX_READ_BYTES) {
            return Ok(cached);
        }
        self.log
            .entries(self.group, start, end, MAX_READ_BYTES)
            .map_err(|e| read_err(&e))?
            .iter()
            .map(|(_, bytes)| decode(bytes))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let state = self.log.state(self.group).map_err(|e| read_err(&e))?;
        let last_purged: Option<LogId<NodeId>> =
            state.last_purged.as_deref().map(decode).transpose()?;
        let last = match state.last {
            Some((_, bytes)) => Some(decode::<Entry>(&bytes)?.log_id),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = encode(vote)?;
        self.blocking(move |log, group| log.save_vote(group, bytes))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let state = self.log.state(self.group).map_err(|e| read_err(&e))?;
        state.vote.as_deref().map(decode).transpose()
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let Some(id) = committed else {
            return Ok(());
        };
        let bytes = encode(&id)?;
        // Durable with the next append's sync: losing it only means applying again
        // after a restart what the leader commits again anyway.
        self.log
            .save_committed(self.group, bytes)
            .map_err(|e| write_err(&e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let state = self.log.state(self.group).map_err(|e| read_err(&e))?;
        state.committed.as_deref().map(decode).transpose()
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        let mut kept = Vec::new();
        for e in entries {
            let bytes = encode(&e)?;
            kept.push((e.clone(), bytes.len()));
            encoded.push((e.log_id.index, bytes));
        }
        self.log
            .append(self.group, encoded)
            .map_err(|e| write_err(&e))?;
        {
            let mut cache = self.cache();
            for (entry, size) in kept {
                cache.appended(entry, size);
            }
        }
        // Readable now; durable once synced. openraft waits for the callback.
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            callback.log_io_completed(log.sync().map_err(io::Error::other));
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.log
            .truncate(self.group, log_id.index)
            .map_err(|e| write_err(&e))?;
        self.cache().truncated(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = encode(&log_id)?;
        self.log
            .purge(self.group, log_id.index, bytes)
            .map_err(|e| write_err(&e))?;
        self.cache().purged(log_id.index);
        Ok(())
    }
}
