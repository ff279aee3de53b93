//! A node's state machine in the simulation: the queues' real [`Machine`], in memory.
//!
//! A snapshot is every entry applied so far, with its log id; installing one applies
//! them again to a fresh machine. A crash loses the machine; the restarted node starts
//! from its last snapshot and openraft applies the log after it again. Every entry
//! applied is reported to the [`Checker`], which holds all nodes to one history.

use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, LogId, StorageError, StorageIOError, StoredMembership};

use super::check::Checker;
use super::disk::{self, SharedDisk};
use super::{Answers, Member, NodeId, SimConfig};
use crate::queue::machine::{Entry, Machine};

/// What a node's state machine holds: shared with the harness, which compares the
/// nodes' machines at the end.
#[derive(Debug, Default)]
pub(super) struct Applied {
    pub machine: Machine,
    pub last: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, Member>,
    /// Every normal entry applied, from the first: a snapshot's content.
    pub history: Vec<(LogId<NodeId>, Entry)>,
}

pub(super) type SharedApplied = Arc<Mutex<Applied>>;

fn lock(applied: &SharedApplied) -> MutexGuard<'_, Applied> {
    applied.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) struct SimMachine {
    pub node: NodeId,
    pub applied: SharedApplied,
    pub disk: SharedDisk,
    /// The process's incarnation: a crashed one stores no snapshot.
    pub incarnation: u64,
    pub checker: Checker,
}

fn corrupt(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &e).into()
}

impl SimMachine {
    /// A node's machine as its disk holds it: the last snapshot's, or empty.
    pub fn restore(
        node: NodeId,
        disk: SharedDisk,
        checker: Checker,
    ) -> Result<Self, StorageError<NodeId>> {
        let (incarnation, snapshot) = {
            let d = disk::lock(&disk);
            (d.incarnation, d.snapshot.clone())
        };
        let sm = SimMachine {
            node,
            applied: SharedApplied::default(),
            disk,
            incarnation,
            checker,
        };
        if let Some((meta, bytes)) = snapshot {
            sm.load(&meta, &bytes)?;
        }
        Ok(sm)
    }

    /// Replaces the machine with the snapshot's: its entries applied again, each
    /// checked against the history.
    fn load(
        &self,
        meta: &SnapshotMeta<NodeId, Member>,
        bytes: &[u8],
    ) -> Result<(), StorageError<NodeId>> {
        let history: Vec<(LogId<NodeId>, Entry)> = postcard::from_bytes(bytes).map_err(corrupt)?;
        let mut fresh = Applied {
            last: meta.last_log_id,
            membership: meta.last_membership.clone(),
            ..Applied::default()
        };
        for (id, entry) in history {
            let answers = Answers(fresh.machine.apply(&entry).answers);
            self.checker
                .applied(self.node, id, Some((&entry, &answers)));
            fresh.history.push((id, entry));
        }
        *lock(&self.applied) = fresh;
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot<SimConfig>, StorageError<NodeId>> {
        let applied = lock(&self.applied);
        let bytes = postcard::to_stdvec(&applied.history)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let meta = SnapshotMeta {
            last_log_id: applied.last,
            last_membership: applied.membership.clone(),
            snapshot_id: format!("{}", applied.last.map_or(0, |l| l.index)),
        };
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<SimConfig> for SimMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        let applied = lock(&self.applied);
        Ok((applied.last, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Answers>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<SimConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        let mut applied = lock(&self.applied);
        for entry in entries {
            let id = entry.log_id;
            applied.last = Some(id);
            let answers = match entry.payload {
                EntryPayload::Blank => {
                    self.checker.applied(self.node, id, None);
                    Answers::default()
                }
                EntryPayload::Normal(e) => {
                    let answers = Answers(applied.machine.apply(&e).answers);
                    self.checker.applied(self.node, id, Some((&e, &answers)));
                    applied.history.push((id, e));
                    answers
                }
                EntryPayload::Membership(m) => {
                    self.checker.applied(self.node, id, None);
                    applied.membership = StoredMembership::new(Some(id), m);
                    Answers::default()
                }
            };
            replies.push(answers);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        Builder {
            snapshot: self.snapshot(),
            disk: self.disk.clone(),
            incarnation: self.incarnation,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        self.load(meta, &bytes)?;
        store(&self.disk, self.incarnation, meta, bytes);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<SimConfig>>, StorageError<NodeId>> {
        let stored = disk::lock(&self.disk).snapshot.clone();
        Ok(stored.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

/// Builds a snapshot: taken when openraft asked for the builder, stored on the disk
/// when built.
pub(super) struct Builder {
    snapshot: Result<Snapshot<SimConfig>, StorageError<NodeId>>,
    disk: SharedDisk,
    incarnation: u64,
}

/// Keeps a snapshot on the disk, unless the process that made it crashed since.
fn store(disk: &SharedDisk, incarnation: u64, meta: &SnapshotMeta<NodeId, Member>, bytes: Vec<u8>) {
    let mut disk = disk::lock(disk);
    if disk.incarnation == incarnation {
        disk.snapshot = Some((meta.clone(), bytes));
    }
}

impl RaftSnapshotBuilder<SimConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<SimConfig>, StorageError<NodeId>> {
        let snapshot = std::mem::replace(
            &mut self.snapshot,
            Err(StorageIOError::write_snapshot(None, &std::io::Error::other("built twice")).into()),
        )?;
        let bytes = snapshot.snapshot.get_ref().clone();
        store(&self.disk, self.incarnation, &snapshot.meta, bytes);
        Ok(snapshot)
    }
}
