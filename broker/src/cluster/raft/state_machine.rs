//! The replicated state machine: the queues' [`Machine`] over this node's store, applying
//! the entries Raft committed — the same entries, in the same order, on every node.
//!
//! Each applied entry's store commit is written with the entry's id and the membership
//! (the store's "applied" record), unsynced but with message bodies synced before their
//! pointers (`SledStore::sync_bodies`): the Raft log holds the entry durably, and after a
//! crash openraft applies again the entries after the last one the store holds.
//!
//! The effects go to the [`QueueRuntime`]: on every node it keeps the queue registry and
//! the router's bindings; only on the leader does it run the queues' tasks. A node starts
//! them when it applies the blank entry that opens its own term — at that point in the
//! log it holds everything committed before, and every later entry is its own — and
//! stops them when it is leader no more.
//!
//! Snapshots: building one is a checkpoint (the store flushed; the log before it may be
//! purged), and the snapshot sent to a replica that lacks purged entries is the store
//! exported at that moment (`SledStore::export`), installed with `SledStore::import`.

use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    EntryPayload, LogId, RaftMetrics, ServerState, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tern_storage::{Commit, SledStore, Store};
use tokio::sync::watch;

use super::lease::Lease;
use super::{Answers, GroupId, Member, NodeId, TypeConfig};
use crate::cluster::directory::{Directory, Layout};
use crate::queue::machine::Machine;
use crate::queue::recovery::{self, Recovered};
use crate::queue::runtime::{Applied, QueueRuntime};

/// What the store records with the state it applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct AppliedState {
    pub last: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, Member>,
}

/// How to read the store back into queues (at a leadership start, after a snapshot).
#[derive(Debug, Clone)]
pub(crate) struct Recovery {
    pub data_dir: PathBuf,
    pub memory: usize,
    pub filter_limits: crate::filter::FilterLimits,
}

impl Recovery {
    async fn run(&self, store: &Arc<SledStore>) -> Result<Recovered, tern_storage::StorageError> {
        let (store, this) = (Arc::clone(store), self.clone());
        blocking(move || {
            recovery::recover(&*store, &this.data_dir, this.memory, this.filter_limits)
        })
        .await
    }
}

/// The state machine openraft drives.
pub(crate) struct StateMachine {
    node: NodeId,
    /// The group whose log this machine applies.
    group: GroupId,
    /// In the first group: the directory it keeps.
    directory: Option<Arc<Directory>>,
    store: Arc<SledStore>,
    machine: Machine,
    state: Arc<Mutex<AppliedState>>,
    runtime: Arc<QueueRuntime>,
    /// The local Raft's metrics, once it runs: whose term a blank entry opens.
    metrics: Arc<std::sync::OnceLock<watch::Receiver<RaftMetrics<NodeId, Member>>>>,
    recovery: Recovery,
    /// Where snapshots are written and received.
    snapshots: PathBuf,
    counter: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Replaced whole under the lock: a poisoned one still holds a whole value.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, tern_storage::StorageError> + Send + 'static,
) -> Result<T, tern_storage::StorageError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(tern_storage::StorageError::Refused {
            detail: format!("a store task failed: {e}"),
        })
    })
}

fn sm_err(e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(e).into()
}

impl StateMachine {
    /// The state machine over `store`, as the store holds it; the queues found are
    /// registered in `runtime` (not run: this node leads nothing yet).
    ///
    /// # Errors
    ///
    /// The store cannot be read.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        node: NodeId,
        group: GroupId,
        directory: Option<Arc<Directory>>,
        store: Arc<SledStore>,
        runtime: Arc<QueueRuntime>,
        recovery: Recovery,
        metrics: Arc<std::sync::OnceLock<watch::Receiver<RaftMetrics<NodeId, Member>>>>,
    ) -> Result<Self, tern_storage::StorageError> {
        let snapshots = recovery.data_dir.join("raft-snapshots");
        let _ = std::fs::remove_dir_all(&snapshots);
        std::fs::create_dir_all(&snapshots).map_err(tern_storage::StorageError::Segments)?;
        let recovered = recovery.run(&store).await?;
        let state = match store.applied()? {
            Some(bytes) => {
                postcard::from_bytes(&bytes).map_err(|e| tern_storage::StorageError::Corrupt {
                    path: recovery.data_dir.clone(),
                    detail: format!("the replicated state record: {e}"),
                })?
            }
            None => AppliedState::default(),
        };
        if let Some(directory) = &directory {
            directory.reset(layout(&recovered));
        }
        runtime.reset(group, recovered.queues).await;
        Ok(Self {
            node,
            group,
            directory,
            store,
            machine: recovered.machine,
            state: Arc::new(Mutex::new(state)),
            runtime,
            metrics,
            recovery,
            snapshots,
            counter: Arc::default(),
        })
    }

    /// Whether this node leads the term `term`, by its Raft's own account, and holds
    /// its lease (`super::lease`): a node that restarts on a vote it won before
    /// says it leads until it hears of a later term, but no majority answered it.
    fn leads(&self, term: u64) -> bool {
        self.metrics.get().is_some_and(|m| {
            let m = m.borrow();
            let mut lease = Lease::default();
            lease.reported(m.millis_since_quorum_ack, tokio::time::Instant::now());
            m.state == ServerState::Leader
                && m.current_term == term
                && m.id == self.node
                && lease.holds(tokio::time::Instant::now())
        })
    }

    /// Starts the queues' tasks from what the store holds now.
    async fn lead(&mut self, term: u64) -> Result<(), StorageError<NodeId>> {
        let recovered = self
            .recovery
            .run(&self.store)
            .await
            .map_err(|e| sm_err(&e))?;
        self.runtime.lead(self.group, term, recovered.queues).await;
        tracing::info!(node = self.node, "leading: the queues run on this node");
        Ok(())
    }

    fn snapshot_file(&self, name: &str) -> PathBuf {
        self.snapshots.join(format!(
            "{name}-{}",
            self.counter.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

/// Entries applied to the machine whose store commits are not written yet, in order.
#[derive(Default)]
struct Run {
    first: Option<LogId<NodeId>>,
    commits: Vec<Commit>,
    /// The state as of the last of them.
    last: Option<AppliedState>,
    effects: Vec<(Option<Applied>, Answers)>,
}

impl Run {
    fn push(
        &mut self,
        log_id: LogId<NodeId>,
        state: AppliedState,
        mut commit: Commit,
        applied: Option<Applied>,
        answers: Answers,
    ) -> Result<(), StorageError<NodeId>> {
        self.first.get_or_insert(log_id);
        commit.log_index = Some(log_id.index);
        commit.applied = Some(postcard::to_stdvec(&state).map_err(|e| sm_err(&e))?);
        self.commits.push(commit);
        self.last = Some(state);
        self.effects.push((applied, answers));
        Ok(())
    }
}

impl StateMachine {
    /// Writes `run`'s commits to the store, then hands their effects to the queues
    /// and their answers to `replies`, in order.
    async fn write(
        &self,
        run: &mut Run,
        replies: &mut Vec<Answers>,
    ) -> Result<(), StorageError<NodeId>> {
        let Some(first) = run.first.take() else {
            return Ok(());
        };
        let commits = std::mem::take(&mut run.commits);
        let store = Arc::clone(&self.store);
        blocking(move || store.apply_all(&commits))
            .await
            .map_err(|e| StorageError::from(StorageIOError::apply(first, &e)))?;
        if let Some(last) = run.last.take() {
            *lock(&self.state) = last;
        }
        for (applied, answers) in run.effects.drain(..) {
            if let Some(applied) = applied {
                self.runtime.apply(self.group, applied).await;
            }
            replies.push(answers);
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        let s = lock(&self.state).clone();
        Ok((s.last, s.membership))
    }

    /// Applies a run of entries: the machine and the directory at once, each entry's
    /// store commit gathered; the commits written together (their bodies synced once,
    /// `Store::apply_all`) before the effects of any reach the queues. An entry that
    /// may start the queues' tasks, or changes the membership, ends a run: the tasks
    /// must start from the store as of that entry.
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Answers>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        let mut run = Run::default();
        for entry in entries {
            let log_id = entry.log_id;
            let mut state = run
                .last
                .clone()
                .unwrap_or_else(|| lock(&self.state).clone());
            state.last = Some(log_id);
            let e = match entry.payload {
                EntryPayload::Normal(e) if !e.commands.is_empty() => e,
                payload => {
                    // A blank entry opens a term; an empty one is a leader whose lease
                    // returned asking to run the queues again (`follow_leadership`);
                    // a membership is kept with the state.
                    let opens_term = matches!(payload, EntryPayload::Blank);
                    let resumes = matches!(payload, EntryPayload::Normal(_));
                    if let EntryPayload::Membership(m) = payload {
                        state.membership = StoredMembership::new(Some(log_id), m);
                    }
                    self.write(&mut run, &mut replies).await?;
                    run.push(log_id, state, Commit::default(), None, Answers::default())?;
                    self.write(&mut run, &mut replies).await?;
                    let starts = opens_term || (resumes && !self.runtime.runs_tasks(self.group));
                    if starts && self.leads(log_id.leader_id.term) {
                        self.lead(log_id.leader_id.term).await?;
                    }
                    continue;
                }
            };
            let fx = self.machine.apply(&e);
            if let Some(directory) = &self.directory {
                let placed = fx.placed.iter().filter_map(|(id, group)| {
                    let (_, def) = fx.declared.iter().find(|(q, _)| q == id)?;
                    Some((*id, *group, Arc::new(def.clone())))
                });
                directory.apply(placed, &fx.deleted, &fx.groups);
            }
            let applied = Applied {
                deleted: fx.deleted,
                declared: fx.declared,
                placed: fx.placed,
                appended: fx.appended.into_iter().collect(),
            };
            run.push(log_id, state, fx.commit, Some(applied), Answers(fx.answers))?;
        }
        self.write(&mut run, &mut replies).await?;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        Builder {
            store: Arc::clone(&self.store),
            state: Arc::clone(&self.state),
            file: self.snapshot_file("built"),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let path = self.snapshot_file("incoming");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let _ = std::fs::remove_file(&path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        let read_err = |e: &dyn std::fmt::Display| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                &std::io::Error::other(e.to_string()),
            ))
        };
        let mut file = snapshot.into_std().await;
        let store = Arc::clone(&self.store);
        blocking(move || {
            file.seek(SeekFrom::Start(0))
                .map_err(tern_storage::StorageError::Segments)?;
            store.import(&mut std::io::BufReader::new(file))
        })
        .await
        .map_err(|e| read_err(&e))?;
        let state = AppliedState {
            last: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let commit = Commit {
            applied: Some(postcard::to_stdvec(&state).map_err(|e| sm_err(&e))?),
            log_index: meta.last_log_id.map(|l| l.index),
            ..Commit::default()
        };
        let store = Arc::clone(&self.store);
        blocking(move || store.apply(&commit).and_then(|()| store.flush()))
            .await
            .map_err(|e| sm_err(&e))?;
        let recovered = self
            .recovery
            .run(&self.store)
            .await
            .map_err(|e| sm_err(&e))?;
        if let Some(directory) = &self.directory {
            directory.reset(layout(&recovered));
        }
        self.machine = recovered.machine;
        *lock(&self.state) = state;
        self.runtime.reset(self.group, recovered.queues).await;
        tracing::info!(last = ?meta.last_log_id, "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let state = lock(&self.state).clone();
        let Some(last) = state.last else {
            return Ok(None);
        };
        // Exported now, between two applies: exactly the state at `last`.
        let path = self.snapshot_file("current");
        let store = Arc::clone(&self.store);
        let file = blocking(move || {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(tern_storage::StorageError::Segments)?;
            let _ = std::fs::remove_file(&path);
            store.export(&mut std::io::BufWriter::new(&mut file))?;
            Ok(file)
        })
        .await
        .map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, &e)))?;
        Ok(Some(Snapshot {
            meta: SnapshotMeta {
                last_log_id: Some(last),
                last_membership: state.membership,
                snapshot_id: format!(
                    "{}-{}",
                    last.index,
                    self.counter.fetch_add(1, Ordering::Relaxed)
                ),
            },
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

/// The directory a first group's store holds.
fn layout(recovered: &crate::queue::recovery::Recovered) -> Layout {
    Layout {
        groups: recovered.groups.iter().cloned().collect(),
        placed: recovered
            .queues
            .iter()
            .filter_map(|q| Some((q.id, (q.placed?, Arc::clone(&q.def)))))
            .collect(),
    }
}

/// Builds a snapshot: a checkpoint of the store.
pub(crate) struct Builder {
    store: Arc<SledStore>,
    state: Arc<Mutex<AppliedState>>,
    file: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Read before the flush: everything up to it is applied, so the flush makes it
        // durable, and the log before it may go.
        let state = lock(&self.state).clone();
        let store = Arc::clone(&self.store);
        let path = self.file.clone();
        let file = blocking(move || {
            store.flush()?;
            let file =
                std::fs::File::create(&path).map_err(tern_storage::StorageError::Segments)?;
            let _ = std::fs::remove_file(&path);
            Ok(file)
        })
        .await
        .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, &e)))?;
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: state.last,
                last_membership: state.membership,
                snapshot_id: format!("checkpoint-{}", state.last.map_or(0, |l| l.index)),
            },
            // openraft keeps only the meta of a built snapshot; the data sent to a
            // replica comes from `get_current_snapshot`.
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}
