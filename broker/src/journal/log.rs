//! The seam between the durable queues' state machine and the disk.
//!
//! The journal hands each group commit's [`Entry`] to a [`Log`], which applies it to the
//! [`Machine`] and makes it durable. [`StoreLog`] is the embedded default: it writes the
//! entry's effects to the local store (sled) as one atomic commit and syncs as the
//! policy says. The store keeps state, not commands — a chunk per queue per commit,
//! settled bitmaps — so it needs no compaction: what is settled is deleted. A replicated
//! log is a second implementation of the same trait, which applies an entry once a
//! majority holds it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_storage::{StorageError, Store};

use crate::config::SyncPolicy;
use crate::queue::machine::{Effects, Entry, Machine};
use crate::store_health::StoreHealth;

/// Where the durable queues' entries go.
pub(crate) trait Log: Send + 'static {
    /// Applies `entry` to `machine` and makes it as durable as the sync policy asks;
    /// returns what applying it did. On an error the machine is as it was before, and
    /// nothing of the entry may be confirmed.
    ///
    /// # Errors
    ///
    /// The entry could not be stored or synced ([`LogError`]).
    fn append(&mut self, machine: &mut Machine, entry: &Entry) -> Result<Effects, LogError>;

    /// Why new messages must be refused now, if they must (the disk alarm: the store
    /// must never run out of space mid-write). Settles and acks still go through.
    fn refuses_new_messages(&self) -> Option<String>;

    /// When what was appended and not yet synced must be (an interval policy), if
    /// anything awaits a sync.
    fn sync_due(&self) -> Option<Instant>;

    /// Makes everything appended so far durable.
    ///
    /// # Errors
    ///
    /// The sync failed ([`LogError::SyncFailed`]).
    fn sync(&mut self) -> Result<(), LogError>;
}

/// Why an entry is not durable.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum LogError {
    /// The store refused the write and holds nothing of it (a full disk, say): later
    /// entries may succeed.
    #[error("{0}")]
    Refused(String),
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

/// The embedded log: the local store, synced by policy.
pub(crate) struct StoreLog {
    store: Arc<dyn Store>,
    /// The disk alarm.
    health: Arc<StoreHealth>,
    sync: SyncPolicy,
    metrics: LogMetrics,
    last_sync: Instant,
    /// Something was written since the last sync.
    dirty: bool,
    /// Set by the first failed sync, for good.
    failed: Option<String>,
}

impl StoreLog {
    pub fn new(
        store: Arc<dyn Store>,
        health: Arc<StoreHealth>,
        sync: SyncPolicy,
        metrics: LogMetrics,
    ) -> Self {
        Self {
            store,
            health,
            sync,
            metrics,
            last_sync: Instant::now(),
            dirty: false,
            failed: None,
        }
    }

    fn sync_now(&self) -> bool {
        match self.sync {
            SyncPolicy::Always => true,
            SyncPolicy::Interval(d) => self.last_sync.elapsed() >= d,
            SyncPolicy::Never => false,
        }
    }
}

impl Log for StoreLog {
    fn append(&mut self, machine: &mut Machine, entry: &Entry) -> Result<Effects, LogError> {
        if let Some(e) = &self.failed {
            return Err(LogError::SyncFailed(e.clone()));
        }
        let fx = machine.apply(entry);
        if fx.commit.is_empty() {
            return Ok(fx);
        }
        if let Err(e) = self.store.apply(&fx.commit) {
            machine.undo(fx);
            return Err(LogError::Refused(e.to_string()));
        }
        self.metrics.commits.increment(1);
        let bytes: usize = fx
            .commit
            .chunks
            .iter()
            .flat_map(|(_, msgs)| msgs.iter().map(|m| m.envelope.len()))
            .sum();
        self.metrics.bytes_written.increment(bytes as u64);
        self.dirty = true;
        if self.sync_now() {
            if let Err(e) = self.sync() {
                machine.undo(fx);
                return Err(e);
            }
        }
        Ok(fx)
    }

    fn refuses_new_messages(&self) -> Option<String> {
        self.health.check_disk(&*self.store)
    }

    fn sync_due(&self) -> Option<Instant> {
        match self.sync {
            SyncPolicy::Interval(d) if self.dirty && self.failed.is_none() => {
                Some(self.last_sync + d)
            }
            _ => None,
        }
    }

    fn sync(&mut self) -> Result<(), LogError> {
        if let Some(e) = &self.failed {
            return Err(LogError::SyncFailed(e.clone()));
        }
        let started = Instant::now();
        if let Err(e) = self.store.flush() {
            let e = failed_sync(&e);
            self.failed = Some(e.clone());
            return Err(LogError::SyncFailed(e));
        }
        self.metrics.flushes.increment(1);
        self.metrics.flush_duration.record(started.elapsed());
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }
}

/// Logged once, when the log stops for good.
fn failed_sync(e: &StorageError) -> String {
    tracing::error!(error = %e, "syncing the store failed: durable publishing is stopped until ternd is restarted");
    e.to_string()
}

/// How long the journal may wait for input before a sync is due.
pub(crate) fn until(due: Option<Instant>) -> Duration {
    due.map_or(Duration::from_secs(3600), |at| {
        at.saturating_duration_since(Instant::now())
    })
}
