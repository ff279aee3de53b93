//! The queues as they run: one task per queue, the registry sessions find them in, their
//! bindings in the router — all following what the state machine applied.
//!
//! A queue starts when the entry that declares it is applied (or when the store is
//! recovered), gets its new messages as each entry that appends to them is applied, and
//! stops when the entry that deletes it is applied. Whoever applies entries — the
//! journal over the local log, or a replica of the cluster's log — hands the effects
//! here, so that a queue declared or a message published through any path reaches the
//! queue's task the same way.
//!
//! In a cluster every member of a group applies every entry of its log, but only the
//! group's leader runs its queues' tasks (their consumers, acks and redeliveries): a
//! replica keeps the registry and the router's bindings — so that its sessions route
//! publishes to the right queues — with *passive* handles whose task does not exist.
//! [`QueueRuntime::lead`] starts a group's tasks from what the store holds, at a point in
//! the log the replica chose (the blank entry of its own term); [`QueueRuntime::follow`]
//! stops them again. Each group's queues follow their own group only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tern_storage::{QueueId, Store};

use super::def::QueueDef;
use super::machine::NewMessage;
use super::recovery::RecoveredQueue;
use super::state::QueueState;
use super::task::ReadBack;
use super::{Appended, BindingFilters, GroupId, QueueHandle, QueueInput, QueueTask, Queues};
use crate::filter::FilterLimits;
use crate::journal::Journal;
use crate::router::Router;

/// What the queues must carry out after an entry is applied (from the machine's
/// `Effects`).
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub deleted: Vec<QueueId>,
    pub declared: Vec<(QueueId, QueueDef)>,
    /// Of `declared`, those another group holds (a cluster's directory).
    pub placed: Vec<(QueueId, GroupId)>,
    pub appended: Vec<(QueueId, Vec<NewMessage>)>,
}

/// The running queues of a server.
#[derive(Debug)]
pub(crate) struct QueueRuntime {
    pub queues: Arc<Queues>,
    router: Arc<Router>,
    /// Each group's store, where its queues' tasks read message bodies back.
    stores: Mutex<HashMap<GroupId, Arc<dyn Store>>>,
    /// Set once the journal runs: queue tasks send it their settles. The journal is
    /// started after the runtime, which it hands its effects to.
    journal: OnceLock<Journal>,
    memory: usize,
    filter_limits: FilterLimits,
    delivery_latency: metrics::Histogram,
    /// Queue tasks, to wait for at shutdown.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// A replica of a cluster's groups, whose queues run their tasks only where it
    /// leads; else a single node, whose queues always run them.
    replica: bool,
    /// Per group, in a cluster: the term this node leads it since, while it does.
    leading: Mutex<HashMap<GroupId, u64>>,
    /// The server's runtime, where queue tasks run: entries are applied on the
    /// journal's thread (or a replica's), whose runtime must not carry them.
    spawner: tokio::runtime::Handle,
}

impl QueueRuntime {
    /// A runtime whose queue tasks run on the calling tokio runtime; in a cluster
    /// (`replica`), none runs until [`QueueRuntime::lead`].
    ///
    /// # Panics
    ///
    /// Called outside a tokio runtime.
    pub fn new(
        router: Arc<Router>,
        store: Arc<dyn Store>,
        memory: usize,
        filter_limits: FilterLimits,
        delivery_latency: metrics::Histogram,
        replica: bool,
    ) -> Self {
        Self {
            queues: Arc::default(),
            router,
            stores: Mutex::new(HashMap::from([(super::FIRST_GROUP, store)])),
            journal: OnceLock::new(),
            memory,
            filter_limits,
            delivery_latency,
            tasks: Mutex::new(Vec::new()),
            replica,
            leading: Mutex::new(HashMap::new()),
            spawner: tokio::runtime::Handle::current(),
        }
    }

    /// Group `group`'s queues are in `store` on this node.
    pub fn add_store(&self, group: GroupId, store: Arc<dyn Store>) {
        lock(&self.stores).insert(group, store);
    }

    /// Every group's store on this node.
    pub fn stores(&self) -> Vec<Arc<dyn Store>> {
        lock(&self.stores).values().cloned().collect()
    }

    /// Hands the runtime the journal its queue tasks write through.
    pub fn set_journal(&self, journal: Journal) {
        let _ = self.journal.set(journal);
    }

    /// Replaces every queue of `group` with `found`, as recovered from its store: at
    /// start, and when a replica's state was replaced by a snapshot.
    ///
    /// Each queue's new handle replaces the old one in place, so that a session looking
    /// a queue up meanwhile finds the one or the other, never none.
    pub async fn reset(&self, group: GroupId, found: Vec<RecoveredQueue>) {
        let active = self.runs_tasks(group);
        self.replace_group(group, found, active).await;
    }

    /// Replaces every queue of `group` with `found`, running their tasks when `active`.
    /// Queues `found` placed in another group (in a cluster's directory, the first
    /// group) are known for routing only; a replica this node holds of them is their
    /// own group's business.
    async fn replace_group(&self, group: GroupId, found: Vec<RecoveredQueue>, active: bool) {
        let mut old = self.queues.of_group(group);
        if group == super::FIRST_GROUP {
            // The directory's too: every queue known from it only.
            old.extend(self.queues.all().into_iter().filter(|q| !q.replica));
        }
        let kept: std::collections::HashSet<QueueId> = found.iter().map(|q| q.id).collect();
        for q in found {
            match q.placed {
                Some(placed) => self.know(q.id, placed, q.def, q.filters),
                None => {
                    self.start(q.id, group, q.def, q.filters, q.state, active);
                }
            }
        }
        for queue in old {
            self.router.unbind_queue(&queue);
            let _ = queue.tx.send(QueueInput::Stop).await;
            if !kept.contains(&queue.id) {
                self.queues.remove_id(queue.id);
            }
        }
    }

    /// This node leads `group` in `term` from here on: its queues, as the store holds
    /// them now, run their tasks here.
    pub async fn lead(&self, group: GroupId, term: u64, found: Vec<RecoveredQueue>) {
        // Every task runs before this node says it leads: a session that asks it meanwhile
        // is told `not_leader`, never handed a queue whose task is not there yet.
        self.replace_group(group, found, true).await;
        lock(&self.leading).insert(group, term);
    }

    /// This node does not lead `group` (as of `term`): its queues' tasks stop, their
    /// consumers are cancelled (a cluster-aware client consumes from the new leader),
    /// and the handles stay, passive. Leading since a later term (a stale report)
    /// changes nothing.
    pub async fn follow(&self, group: GroupId, term: u64) {
        {
            let mut leading = lock(&self.leading);
            match leading.get(&group) {
                Some(since) if *since <= term => leading.remove(&group),
                _ => return,
            };
        }
        for queue in self.queues.of_group(group) {
            let _ = queue.tx.send(QueueInput::Stop).await;
            let (tx, _) = super::channel();
            let passive = Arc::new(QueueHandle {
                id: queue.id,
                group,
                replica: true,
                def: Arc::clone(&queue.def),
                filters: queue.filters.clone(),
                tx,
            });
            self.queues.insert(Arc::clone(&passive));
            self.router.unbind_queue(&queue);
            self.router.bind_queue(&passive);
        }
        tracing::info!(group, "following: the group's queues run on its leader");
    }

    /// Whether the tasks of `group`'s queues run on this node.
    pub fn runs_tasks(&self, group: GroupId) -> bool {
        !self.replica || lock(&self.leading).contains_key(&group)
    }

    /// Carries out what an applied entry did to the queues: deleted ones stop (before
    /// a queue declared in the same entry may take the number), declared ones start,
    /// new messages go to their queues' tasks — waiting while a task is behind, which
    /// slows the writer down without ever deadlocking it: tasks never wait on it.
    /// The entry is of `group`'s log.
    pub async fn apply(&self, group: GroupId, applied: Applied) {
        for id in applied.deleted {
            self.stop(group, id).await;
        }
        for (id, def) in applied.declared {
            // Compiled when the declare was checked; a failure here would be a filter
            // this version compiled before and no longer does.
            match def.compile_filters(&self.filter_limits) {
                Ok(filters) => {
                    let def = Arc::new(def);
                    if let Some((_, placed)) = applied.placed.iter().find(|(q, _)| *q == id) {
                        self.know(id, *placed, def, filters);
                        continue;
                    }
                    let state = QueueState::new(Arc::clone(&def), self.memory);
                    let active = self.runs_tasks(group);
                    let handle = self.start(id, group, def, filters, state, active);
                    tracing::info!(queue = %handle.def.name, "queue created");
                }
                Err(e) => {
                    tracing::error!(queue = %def.name, error = %e, "a declared queue's filter does not compile; the queue does not run")
                }
            }
        }
        for (id, msgs) in applied.appended {
            let Some(tx) = self.queues.by_id(id).map(|q| q.tx.clone()) else {
                continue;
            };
            let msgs = msgs
                .into_iter()
                .map(|m| Appended {
                    message: m.message,
                    publisher: m.publisher,
                })
                .collect();
            if tx.send(QueueInput::Appended(msgs)).await.is_err() {
                tracing::debug!(
                    queue = id,
                    "queue task stopped; appended messages stay in the store"
                );
            }
        }
    }

    /// Registers queue `id` of group `group`, known from the directory only: routed to,
    /// never run here — unless this node holds a replica of it already, whose handle
    /// stays.
    fn know(&self, id: QueueId, group: GroupId, def: Arc<QueueDef>, filters: BindingFilters) {
        if self.queues.by_id(id).is_some_and(|q| q.replica) {
            return;
        }
        let (tx, _) = super::channel();
        let handle = Arc::new(QueueHandle {
            id,
            group,
            replica: false,
            def,
            filters,
            tx,
        });
        self.queues.insert(Arc::clone(&handle));
        self.router.bind_queue(&handle);
    }

    /// Registers a queue and routes its bindings to it; starts its task when `active`
    /// (else the handle is passive: what is sent to it finds no task).
    fn start(
        &self,
        id: QueueId,
        group: GroupId,
        def: Arc<QueueDef>,
        filters: BindingFilters,
        state: QueueState,
        active: bool,
    ) -> Arc<QueueHandle> {
        let (tx, rx) = super::channel();
        let handle = Arc::new(QueueHandle {
            id,
            group,
            replica: true,
            def,
            filters,
            tx,
        });
        let store = lock(&self.stores).get(&group).cloned();
        if !active {
            // Passive: the channel's receiver is dropped, so what is sent finds no task.
        } else if let (Some(journal), Some(store)) = (self.journal.get(), store) {
            let task = QueueTask {
                id,
                state,
                journal: journal.clone(),
                store,
                queues: Arc::clone(&self.queues),
                delivery_latency: self.delivery_latency.clone(),
                read_back: ReadBack::default(),
            };
            lock(&self.tasks).push(super::spawn(&self.spawner, task, rx));
        } else {
            tracing::error!(
                queue = id,
                group,
                "a queue started before the journal or its group's store; it does not run"
            );
        }
        self.queues.insert(Arc::clone(&handle));
        self.router.bind_queue(&handle);
        handle
    }

    /// Stops queue `id`, deleted in `group`: out of the router and the registry, its
    /// task told. A replica this node holds is only its own group's to delete (the
    /// directory's delete of a placed queue leaves it to that group's).
    async fn stop(&self, group: GroupId, id: QueueId) {
        let Some(queue) = self.queues.by_id(id) else {
            return;
        };
        if queue.replica && queue.group != group {
            return;
        }
        self.queues.remove(&queue.def.name);
        self.router.unbind_queue(&queue);
        let _ = queue.tx.send(QueueInput::Stop).await;
        tracing::info!(queue = %queue.def.name, "queue deleted");
    }

    /// Stops every queue task and waits for them.
    pub async fn stop_all(&self) {
        for queue in self.queues.all() {
            let _ = queue.tx.send(QueueInput::Stop).await;
        }
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Changed by single pushes and takes: a poisoned lock still guards whole data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
