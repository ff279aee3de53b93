//! The queues as they run: one task per queue, the registry sessions find them in, their
//! bindings in the router — all following what the state machine applied.
//!
//! A queue starts when the entry that declares it is applied (or when the store is
//! recovered), gets its new messages as each entry that appends to them is applied, and
//! stops when the entry that deletes it is applied. Whoever applies entries — the
//! journal over the local log, or a replica of the cluster's log — hands the effects
//! here, so that a queue declared or a message published through any path reaches the
//! queue's task the same way.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tern_storage::{QueueId, Store};

use super::def::QueueDef;
use super::machine::NewMessage;
use super::recovery::RecoveredQueue;
use super::state::QueueState;
use super::task::ReadBack;
use super::{Appended, BindingFilters, QueueHandle, QueueInput, QueueTask, Queues};
use crate::filter::FilterLimits;
use crate::journal::Journal;
use crate::router::Router;

/// What the queues must carry out after an entry is applied (from the machine's
/// `Effects`).
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub deleted: Vec<QueueId>,
    pub declared: Vec<(QueueId, QueueDef)>,
    pub appended: Vec<(QueueId, Vec<NewMessage>)>,
}

/// The running queues of a server.
#[derive(Debug)]
pub(crate) struct QueueRuntime {
    pub queues: Arc<Queues>,
    router: Arc<Router>,
    store: Arc<dyn Store>,
    /// Set once the journal runs: queue tasks send it their settles. The journal is
    /// started after the runtime, which it hands its effects to.
    journal: OnceLock<Journal>,
    memory: usize,
    filter_limits: FilterLimits,
    delivery_latency: metrics::Histogram,
    /// Queue tasks, to wait for at shutdown.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The server's runtime, where queue tasks run: entries are applied on the
    /// journal's thread (or a replica's), whose runtime must not carry them.
    spawner: tokio::runtime::Handle,
}

impl QueueRuntime {
    /// A runtime whose queue tasks run on the calling tokio runtime.
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
    ) -> Self {
        Self {
            queues: Arc::default(),
            router,
            store,
            journal: OnceLock::new(),
            memory,
            filter_limits,
            delivery_latency,
            tasks: Mutex::new(Vec::new()),
            spawner: tokio::runtime::Handle::current(),
        }
    }

    /// Hands the runtime the journal its queue tasks write through.
    pub fn set_journal(&self, journal: Journal) {
        let _ = self.journal.set(journal);
    }

    /// Starts the queues recovered from the store.
    pub fn start_recovered(&self, found: Vec<RecoveredQueue>) {
        for q in found {
            self.start(q.id, q.def, q.filters, q.state);
        }
    }

    /// Carries out what an applied entry did to the queues: deleted ones stop (before
    /// a queue declared in the same entry may take the number), declared ones start,
    /// new messages go to their queues' tasks — waiting while a task is behind, which
    /// slows the writer down without ever deadlocking it: tasks never wait on it.
    pub async fn apply(&self, applied: Applied) {
        for id in applied.deleted {
            self.stop(id).await;
        }
        for (id, def) in applied.declared {
            // Compiled when the declare was checked; a failure here would be a filter
            // this version compiled before and no longer does.
            match def.compile_filters(&self.filter_limits) {
                Ok(filters) => {
                    let def = Arc::new(def);
                    let state = QueueState::new(Arc::clone(&def), self.memory);
                    let handle = self.start(id, def, filters, state);
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

    /// Starts a queue's task, routes its bindings to it and registers it.
    fn start(
        &self,
        id: QueueId,
        def: Arc<QueueDef>,
        filters: BindingFilters,
        state: QueueState,
    ) -> Arc<QueueHandle> {
        let (tx, rx) = super::channel();
        let handle = Arc::new(QueueHandle {
            id,
            def,
            filters,
            tx,
        });
        if let Some(journal) = self.journal.get() {
            let task = QueueTask {
                id,
                state,
                journal: journal.clone(),
                store: Arc::clone(&self.store),
                queues: Arc::clone(&self.queues),
                delivery_latency: self.delivery_latency.clone(),
                read_back: ReadBack::default(),
            };
            lock(&self.tasks).push(super::spawn(&self.spawner, task, rx));
        } else {
            tracing::error!(
                queue = id,
                "a queue started before the journal; it does not run"
            );
        }
        self.queues.insert(Arc::clone(&handle));
        self.router.bind_queue(&handle);
        handle
    }

    /// Stops a deleted queue: out of the router and the registry, its task told.
    async fn stop(&self, id: QueueId) {
        let Some(queue) = self.queues.by_id(id) else {
            return;
        };
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
