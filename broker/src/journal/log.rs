//! The seam between the durable queues' state machine and the disk.
//!
//! The journal hands each group commit's [`Entry`] to a [`Log`], which applies it to the
//! [`Machine`] and makes it durable. [`StoreLog`] is the embedded default: a
//! write-ahead log of the entries' store commits (a redo log) in front of the local
//! store (sled) — compacting the log is checkpointing the store. A replicated log is a
//! second implementation of the same trait, which ships the entries themselves and
//! applies one once a majority holds it: the machine is deterministic, so every
//! replica reaches the same state.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_storage::{Commit, StorageError, Store, Wal, WalRecord};

use crate::config::SyncPolicy;
use crate::queue::machine::{Effects, Entry, Machine};
use crate::queue::recovery::Recovered;
use crate::store_health::StoreHealth;

/// Where the durable queues' entries go. The log owns the state machine: a replicated
/// log applies an entry only once a majority holds it, on every node.
pub(crate) trait Log: Send + 'static {
    /// Appends `entry`: returns once it is on its way, with what resolves once it is
    /// applied to the machine and as durable as the sync policy asks — to what applying
    /// it did. With `awaited` false nobody waits for the entry (settles whose acks were
    /// answered already): the log may sync it a little later, with what follows
    /// ([`Log::sync_due`]). On an error the machine is as it was before, and nothing of
    /// the entry may be confirmed.
    ///
    /// The journal keeps up to [`Log::depth`] entries on their way, and takes their
    /// results in the order it appended them.
    ///
    /// # Errors
    ///
    /// The entry could not be stored or synced ([`LogError`]).
    async fn append(&mut self, entry: Entry, awaited: bool) -> Appending;

    /// How many entries may be on their way at once. One, unless the log keeps the
    /// order of the entries it took by itself and does its part of each elsewhere (a
    /// Raft leader: its log, its followers and its state machine each work on a
    /// different entry), so that gathering the next batch need not wait for the last.
    fn depth(&self) -> usize {
        1
    }

    /// Why new messages must be refused now, if they must (the disk alarm: the store
    /// must never run out of space mid-write). Settles and acks still go through.
    fn refuses_new_messages(&self) -> Option<String>;

    /// About how many message bytes one entry may carry: the journal stops gathering a
    /// batch past it. Unbounded by default; a replicated entry must reach a follower,
    /// fsync'd, within Raft's heartbeat.
    fn max_entry_bytes(&self) -> usize {
        usize::MAX
    }

    /// When what was appended and not yet synced must be (an interval policy), if
    /// anything awaits a sync.
    fn sync_due(&self) -> Option<Instant>;

    /// Makes everything appended so far durable.
    ///
    /// # Errors
    ///
    /// The sync failed ([`LogError::SyncFailed`]).
    fn sync(&mut self) -> Result<(), LogError>;

    /// Makes the state hold everything appended, so that the log can start over (a
    /// checkpoint); at shutdown, so that the next start replays nothing.
    ///
    /// # Errors
    ///
    /// The checkpoint failed ([`LogError::SyncFailed`]).
    fn compact(&mut self) -> Result<(), LogError>;
}

/// An entry on its way ([`Log::append`]).
pub(crate) type Appending = Pin<Box<dyn Future<Output = Result<Effects, LogError>> + Send>>;

/// Why an entry is not durable.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum LogError {
    /// The store refused the write and holds nothing of it (a full disk, say): later
    /// entries may succeed.
    #[error("{0}")]
    Refused(String),
    /// In a cluster: no leader took the entry (one is being elected, or cannot be
    /// reached). Nothing of it was applied; the client may retry, here or elsewhere.
    #[error("{0}")]
    NoLeader(String),
    /// A sync failed. What it covered may or may not be on disk, and the kernel may
    /// have dropped the pages it could not write and reported the error once: a later
    /// sync that succeeds proves nothing about them (PostgreSQL's "fsyncgate"). So the
    /// log refuses every later entry until ternd restarts and recovers from what is
    /// really on disk.
    #[error("syncing the store failed, durable writes are stopped until ternd restarts: {0}")]
    SyncFailed(String),
}

/// The log's share of the server's metrics.
#[derive(Clone)]
pub(crate) struct LogMetrics {
    pub commits: metrics::Counter,
    pub flushes: metrics::Counter,
    pub bytes_written: metrics::Counter,
    pub flush_duration: metrics::Histogram,
}

/// Most bytes the write-ahead log holds before a checkpoint. Its file grows to this
/// once and is then overwritten in place (`tern_storage::Wal`).
/// Small, because sled keeps what it was given since its last flush in memory: the
/// checkpoint every 8 MiB bounds that, and costs one sled flush per 8 MiB written.
pub(crate) const WAL_BYTES: u64 = 8 << 20;

/// Under `sync = "always"`, how long an entry nobody waits for may stay unsynced: a
/// stream of settles costs one sync per this, not one per commit, and their acks were
/// answered already (a crash before the sync redelivers, as for any ack in flight).
const UNAWAITED_SYNC: Duration = Duration::from_millis(10);

/// The embedded log: a write-ahead log file of store commits in front of the store.
///
/// An entry's commit goes to the store unsynced and, encoded (postcard), to the
/// write-ahead log, which is synced as the policy says: one `fdatasync` of a file that
/// does not grow makes the commit durable. When the log is full, the store is flushed
/// and synced (a checkpoint) and the log starts over. At start the commits since the
/// last checkpoint are applied to the store again — each sets keys to absolute values,
/// so one the store already holds changes nothing — and the store is checkpointed
/// before the log is overwritten; then the state is recovered from the store. The log
/// is physical, not of commands, so that recovery needs no machine state from before
/// the checkpoint, whatever part of the unsynced writes the store kept.
pub(crate) struct StoreLog {
    /// The state the log's entries built, as recovered at start.
    machine: Machine,
    store: Arc<dyn Store>,
    wal: Wal,
    /// The disk alarm.
    health: Arc<StoreHealth>,
    sync: SyncPolicy,
    metrics: LogMetrics,
    /// The index the next entry gets.
    next_index: u64,
    last_sync: Instant,
    /// Something was appended since the last sync.
    dirty: bool,
    /// Set by the first failed write to the log or sync, for good.
    failed: Option<String>,
}

impl StoreLog {
    /// Opens the log over `store` and `wal` (with the records found in it): recovers
    /// what the store holds with `recover`, replays the entries after it and
    /// checkpoints. Returns the log (holding the recovered machine) and the rest of the
    /// recovered state.
    ///
    /// # Errors
    ///
    /// The store cannot be read or written, or the log holds an entry this version
    /// cannot decode ([`StorageError::Corrupt`] naming `data_dir`).
    pub fn open(
        store: Arc<dyn Store>,
        (mut wal, records): (Wal, Vec<WalRecord>),
        data_dir: &Path,
        recover: impl Fn(&dyn Store) -> Result<Recovered, StorageError>,
        health: Arc<StoreHealth>,
        sync: SyncPolicy,
        metrics: LogMetrics,
    ) -> Result<(Self, Recovered), StorageError> {
        // The store may hold commits the log does not (written, never synced, after a
        // kill): their indices are not given out again.
        let held = store.log_index()?;
        // The file starts with the marker of the last checkpoint; the records after it
        // whose indices follow it one by one are the commits since. What follows them
        // is of earlier passes, already in the store: replaying it would set keys back.
        let mut records = records.into_iter();
        // A log whose first record is no checkpoint marker holds nothing since one (the
        // marker is synced before any record follows it).
        let marker = records.next().filter(|r| r.payload.is_empty());
        let mut last = marker.as_ref().map_or(0, |m| m.index);
        let mut replayed = 0u64;
        for r in records.take_while(|_| marker.is_some()) {
            if r.payload.is_empty() || r.index != last + 1 {
                break;
            }
            let commit: Commit =
                postcard::from_bytes(&r.payload).map_err(|e| StorageError::Corrupt {
                    path: data_dir.to_path_buf(),
                    detail: format!("write-ahead log record {} cannot be decoded: {e}", r.index),
                })?;
            store.apply(&commit)?;
            last = r.index;
            replayed += 1;
        }
        // What the store holds may sit in the page cache only (after a kill, not a
        // power loss): it must be on disk before the log that covers it is overwritten.
        store.flush()?;
        let mut recovered = recover(&*store)?;
        let applied = held.max(last).max(recovered.log_index);
        wal.checkpointed(applied).map_err(StorageError::Wal)?;
        if replayed > 0 {
            tracing::info!(entries = replayed, last, "replayed the write-ahead log");
        }
        let next = applied + 1;
        let log = Self {
            machine: std::mem::take(&mut recovered.machine),
            store,
            wal,
            health,
            sync,
            metrics,
            next_index: next,
            last_sync: Instant::now(),
            dirty: false,
            failed: None,
        };
        Ok((log, recovered))
    }

    fn sync_now(&self, awaited: bool) -> bool {
        match self.sync {
            SyncPolicy::Always => awaited,
            SyncPolicy::Interval(d) => self.last_sync.elapsed() >= d,
            SyncPolicy::Never => false,
        }
    }

    /// Stops the log for good after a failed write or sync.
    fn fail(&mut self, e: &dyn std::fmt::Display) -> LogError {
        let e = failed_sync(e);
        self.failed = Some(e.clone());
        LogError::SyncFailed(e)
    }

    /// Runs one way of making everything so far durable (`sync` or `compact`): refused
    /// once the log has failed, fatal for good when it fails, timed and counted when it
    /// succeeds.
    fn synced(
        &mut self,
        make_durable: impl FnOnce(&mut Self) -> Result<(), String>,
    ) -> Result<(), LogError> {
        if let Some(e) = &self.failed {
            return Err(LogError::SyncFailed(e.clone()));
        }
        let started = Instant::now();
        if let Err(e) = make_durable(self) {
            return Err(self.fail(&e));
        }
        self.metrics.flushes.increment(1);
        self.metrics.flush_duration.record(started.elapsed());
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Appends entry `index` to the write-ahead log, or checkpoints when it does not
    /// fit; syncs as the policy says.
    fn write(&mut self, index: u64, entry: &[u8], awaited: bool) -> Result<(), LogError> {
        match self.wal.append(index, entry) {
            Ok(true) => {
                self.dirty = true;
                if self.sync_now(awaited) {
                    self.sync()?;
                }
                Ok(())
            }
            // The store gets everything so far, this entry included.
            Ok(false) => self.compact(),
            Err(e) => Err(self.fail(&e)),
        }
    }

    /// Applies `entry` to the machine, writes its commit to the store and the
    /// write-ahead log, and syncs as the policy asks ([`Log::append`]).
    fn write_entry(&mut self, entry: &Entry, awaited: bool) -> Result<Effects, LogError> {
        if let Some(e) = &self.failed {
            return Err(LogError::SyncFailed(e.clone()));
        }
        let mut fx = self.machine.apply(entry);
        if fx.commit.is_empty() {
            return Ok(fx);
        }
        let index = self.next_index;
        fx.commit.log_index = Some(index);
        let encoded = match postcard::to_stdvec(&fx.commit) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.machine.undo(fx);
                return Err(LogError::Refused(format!("cannot encode the commit: {e}")));
            }
        };
        if let Err(e) = self.store.apply(&fx.commit) {
            self.machine.undo(fx);
            return Err(LogError::Refused(e.to_string()));
        }
        self.next_index += 1;
        self.metrics.commits.increment(1);
        let bytes: usize = fx
            .commit
            .chunks
            .iter()
            .flat_map(|(_, msgs)| msgs.iter().map(|m| m.envelope.len()))
            .sum();
        self.metrics.bytes_written.increment(bytes as u64);
        if let Err(e) = self.write(index, &encoded, awaited) {
            self.machine.undo(fx);
            return Err(e);
        }
        Ok(fx)
    }
}

impl Log for StoreLog {
    async fn append(&mut self, entry: Entry, awaited: bool) -> Appending {
        Box::pin(std::future::ready(self.write_entry(&entry, awaited)))
    }

    fn refuses_new_messages(&self) -> Option<String> {
        self.health.check_disk(&*self.store)
    }

    fn sync_due(&self) -> Option<Instant> {
        if !self.dirty || self.failed.is_some() {
            return None;
        }
        match self.sync {
            SyncPolicy::Always => Some(self.last_sync + UNAWAITED_SYNC),
            SyncPolicy::Interval(d) => Some(self.last_sync + d),
            SyncPolicy::Never => None,
        }
    }

    fn sync(&mut self) -> Result<(), LogError> {
        self.synced(|log| log.wal.sync().map_err(|e| e.to_string()))
    }

    fn compact(&mut self) -> Result<(), LogError> {
        self.synced(|log| {
            log.store.flush().map_err(|e| e.to_string())?;
            log.wal
                .checkpointed(log.next_index - 1)
                .map_err(|e| e.to_string())
        })
    }
}

/// Logged once, when the log stops for good.
fn failed_sync(e: &dyn std::fmt::Display) -> String {
    tracing::error!(error = %e, "syncing the store failed: durable publishing is stopped until ternd is restarted");
    e.to_string()
}

/// How long the journal may wait for input before a sync is due.
pub(crate) fn until(due: Option<Instant>) -> Duration {
    due.map_or(Duration::from_secs(3600), |at| {
        at.saturating_duration_since(Instant::now())
    })
}
