//! A node's disk in the simulation, and the Raft log over it.
//!
//! A write is readable at once and survives a crash only once a sync has covered it,
//! as on a real disk: an append is synced after a delay drawn from the run's seed, and
//! only then does openraft hear that it is durable (`LogFlushed`). A crash
//! ([`Disk::crash`]) throws away every write no sync covered — appends, truncations and
//! the committed index — and the syncs still pending never complete. The vote and
//! snapshots are written durably, as the real store writes them.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage, SnapshotMeta};
use openraft::{LogId, StorageError, Vote};
use tokio::time::Instant;

use super::{Member, NodeId, SimConfig, SimRng};

type Entry = openraft::Entry<SimConfig>;

/// What a node has written.
#[derive(Debug, Default)]
pub(super) struct Disk {
    /// What reads see: every write, synced or not.
    log: BTreeMap<u64, Entry>,
    committed: Option<LogId<NodeId>>,
    /// What the last sync covered: what survives a crash.
    synced_log: BTreeMap<u64, Entry>,
    synced_committed: Option<LogId<NodeId>>,
    pub vote: Option<Vote<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
    /// The last snapshot built or installed, and its bytes.
    pub snapshot: Option<(SnapshotMeta<NodeId, Member>, Vec<u8>)>,
    /// Bumped by each crash: the syncs begun before it never complete, and the crashed
    /// process's Raft, should it still run for a moment, writes nothing more.
    pub incarnation: u64,
    /// When the last sync begun completes: syncs complete in the order of their
    /// appends, as one log file's do.
    syncs_until: Option<Instant>,
}

impl Disk {
    /// The process dies: what no sync covered is gone.
    pub fn crash(&mut self) {
        self.log = self.synced_log.clone();
        self.committed = self.synced_committed;
        self.incarnation += 1;
        self.syncs_until = None;
    }

    fn sync(&mut self) {
        self.synced_log = self.log.clone();
        self.synced_committed = self.committed;
    }
}

pub(super) type SharedDisk = Arc<Mutex<Disk>>;

pub(super) fn lock(disk: &SharedDisk) -> MutexGuard<'_, Disk> {
    disk.lock().unwrap_or_else(|p| p.into_inner())
}

/// The Raft log of one incarnation of a node.
#[derive(Clone)]
pub(super) struct SimLog {
    pub disk: SharedDisk,
    pub incarnation: u64,
    pub rng: SimRng,
}

impl SimLog {
    /// The disk, to write: refused to a process that crashed.
    fn write(&self) -> Result<MutexGuard<'_, Disk>, StorageError<NodeId>> {
        let disk = lock(&self.disk);
        if disk.incarnation == self.incarnation {
            Ok(disk)
        } else {
            let e = std::io::Error::other("this process crashed");
            Err(openraft::StorageIOError::write_logs(&e).into())
        }
    }
}

impl RaftLogReader<SimConfig> for SimLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        Ok(lock(&self.disk)
            .log
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<SimConfig> for SimLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<SimConfig>, StorageError<NodeId>> {
        let disk = lock(&self.disk);
        let last = disk.log.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: disk.last_purged,
            last_log_id: last.or(disk.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write()?.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.disk).vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.write()?.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.disk).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<SimConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let (incarnation, done_at) = {
            let mut disk = self.write()?;
            for e in entries {
                disk.log.insert(e.log_id.index, e);
            }
            let delay = Duration::from_micros(self.rng.u64(100..20_000));
            let done_at = disk
                .syncs_until
                .map_or(Instant::now(), |t| t.max(Instant::now()))
                + delay;
            disk.syncs_until = Some(done_at);
            (disk.incarnation, done_at)
        };
        let disk = Arc::clone(&self.disk);
        tokio::spawn(async move {
            tokio::time::sleep_until(done_at).await;
            let mut disk = lock(&disk);
            if disk.incarnation == incarnation {
                disk.sync();
                drop(disk);
                callback.log_io_completed(Ok(()));
            }
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write()?.log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut disk = self.write()?;
        let keep = disk.log.split_off(&(log_id.index + 1));
        disk.log = keep;
        let keep = disk.synced_log.split_off(&(log_id.index + 1));
        disk.synced_log = keep;
        disk.last_purged = Some(log_id);
        Ok(())
    }
}
