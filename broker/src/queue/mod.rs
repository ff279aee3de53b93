//! Durable queues: the registry, one task per queue, and what they exchange.
//!
//! * [`def`]: validated definitions (name, bindings, options).
//! * [`machine`]: the rules of what the store holds, as a deterministic state machine
//!   over serializable commands (the journal's side).
//! * [`recovery`]: the store read back at start.
//! * [`runtime`]: the queues as they run, following what the machine applied.
//! * [`state`]: one queue's messages and consumers, with no I/O.
//! * `task`: the task that owns a [`state::QueueState`] and carries out its actions.
//!
//! A queue's messages reach it through the journal (durable first, then
//! [`QueueInput::Appended`]); consumers' requests reach it from their sessions. Each
//! queue is a task of its own, so queues never contend with each other, and its state
//! needs no lock.

pub(crate) mod def;
pub(crate) mod machine;
pub(crate) mod recovery;
pub(crate) mod runtime;
pub(crate) mod state;
pub(crate) mod task;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tern_codec::QueueStats;
use tern_storage::{QueueId, StoredMessage};
use tokio::sync::{mpsc, oneshot};

use self::def::QueueDef;
use self::state::{Consumer, ConsumerKey};
use crate::filter::Filter;
use crate::outbound::Outbound;

pub(crate) use task::{spawn, QueueTask};

/// The replica group whose log holds a queue, in a cluster (`cluster::raft`).
pub(crate) type GroupId = u64;

/// The group of a single node's queues; in a cluster, the group of every voter, which
/// held all the queues before the cluster had several groups.
pub(crate) const FIRST_GROUP: GroupId = 1;

/// Each binding's compiled content filter, in the order of the definition's bindings.
pub(crate) type BindingFilters = Vec<Option<Filter>>;

/// Inputs waiting for a queue task. Bounded: senders wait, which throttles them.
const INPUT_CAPACITY: usize = 4096;

/// Where to answer a request, and its id (0: answer only errors).
pub(crate) type ReplyTo = (Arc<Outbound>, u32);

/// A message the journal made durable, and the connection that published it while
/// that is known (not for messages moved or dead-lettered here): a consumer gets no
/// reply permit for its own connection's request (`auth::replies`).
#[derive(Debug)]
pub(crate) struct Appended {
    pub message: StoredMessage,
    pub publisher: Option<u64>,
}

impl From<StoredMessage> for Appended {
    fn from(message: StoredMessage) -> Self {
        Appended {
            message,
            publisher: None,
        }
    }
}

/// What a queue task is told.
#[derive(Debug)]
pub(crate) enum QueueInput {
    /// Messages the journal made durable.
    Appended(Vec<Appended>),
    Attach {
        consumer: Consumer,
        reply: ReplyTo,
    },
    Cancel {
        key: ConsumerKey,
        reply: ReplyTo,
    },
    /// Every consumer of this connection is gone.
    ConnectionClosed {
        conn: u64,
    },
    Ack {
        key: ConsumerKey,
        delivery_id: u64,
        reply: ReplyTo,
    },
    Nack {
        key: ConsumerKey,
        delivery_id: u64,
        requeue: bool,
        delay_ms: u32,
        reply: ReplyTo,
    },
    Received {
        key: ConsumerKey,
        delivery_id: u64,
        reply: ReplyTo,
    },
    /// Room for `credit` more deliveries to an auto-ack consumer; `reply` (id 0) is
    /// for an error only.
    Credit {
        key: ConsumerKey,
        credit: u32,
        reply: ReplyTo,
    },
    Stats {
        reply: oneshot::Sender<QueueStats>,
    },
    Purge {
        reply: oneshot::Sender<u64>,
    },
    /// Move up to `max` waiting messages (0: all) to another queue.
    MoveTo {
        to: QueueId,
        max: u64,
        reply: oneshot::Sender<u64>,
    },
    /// The queue was deleted: tell the consumers and stop.
    Stop,
}

impl QueueInput {
    /// Where the input's answer goes, for inputs that are answered on a connection.
    pub fn reply_to(&self) -> Option<&ReplyTo> {
        match self {
            QueueInput::Attach { reply, .. }
            | QueueInput::Cancel { reply, .. }
            | QueueInput::Ack { reply, .. }
            | QueueInput::Nack { reply, .. }
            | QueueInput::Received { reply, .. }
            | QueueInput::Credit { reply, .. } => Some(reply),
            _ => None,
        }
    }
}

/// A queue, as the rest of the broker holds it.
#[derive(Debug)]
pub(crate) struct QueueHandle {
    pub id: QueueId,
    /// Whose log holds it: the node runs its task only while it leads that group.
    pub group: GroupId,
    /// Whether this node holds a replica of it (its group's store is here); else it is
    /// known from a cluster's directory only, for routing and redirects.
    pub replica: bool,
    pub def: Arc<QueueDef>,
    /// Each binding's compiled filter, in the order of `def.bindings`.
    pub filters: BindingFilters,
    pub tx: mpsc::Sender<QueueInput>,
}

impl QueueHandle {
    /// The filter of binding number `binding`, if it has one.
    pub fn filter(&self, binding: usize) -> Option<&Filter> {
        self.filters.get(binding).and_then(Option::as_ref)
    }

    /// The queue's counters, or `None` if its task has stopped.
    pub async fn stats(&self) -> Option<QueueStats> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(QueueInput::Stats { reply }).await.ok()?;
        rx.await.ok()
    }
}

/// Every queue on the server, by name and by number.
#[derive(Debug, Default)]
pub(crate) struct Queues {
    /// A std `RwLock`: read on every CONSUME, admin request and commit that appends,
    /// written when a queue is created or deleted, never held across an `.await`.
    registry: RwLock<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    by_name: HashMap<String, Arc<QueueHandle>>,
    by_id: HashMap<QueueId, Arc<QueueHandle>>,
}

impl Queues {
    pub fn get(&self, name: &str) -> Option<Arc<QueueHandle>> {
        self.read().by_name.get(name).cloned()
    }

    pub fn by_id(&self, id: QueueId) -> Option<Arc<QueueHandle>> {
        self.read().by_id.get(&id).cloned()
    }

    /// Every queue, ordered by name.
    pub fn all(&self) -> Vec<Arc<QueueHandle>> {
        let mut all: Vec<_> = self.read().by_name.values().cloned().collect();
        all.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        all
    }

    /// Every queue of `group` this node holds a replica of, ordered by name.
    pub fn of_group(&self, group: GroupId) -> Vec<Arc<QueueHandle>> {
        let mut all = self.all();
        all.retain(|q| q.group == group && q.replica);
        all
    }

    pub fn len(&self) -> usize {
        self.read().by_name.len()
    }

    pub fn insert(&self, handle: Arc<QueueHandle>) {
        let mut r = self.write();
        if let Some(old) = r
            .by_name
            .insert(handle.def.name.clone(), Arc::clone(&handle))
        {
            r.by_id.remove(&old.id);
        }
        r.by_id.insert(handle.id, handle);
    }

    /// Removes queue `id`, if it is still registered under its name.
    pub fn remove_id(&self, id: QueueId) {
        let mut r = self.write();
        if let Some(handle) = r.by_id.remove(&id) {
            if r.by_name.get(&handle.def.name).is_some_and(|h| h.id == id) {
                r.by_name.remove(&handle.def.name);
            }
        }
    }

    pub fn remove(&self, name: &str) -> Option<Arc<QueueHandle>> {
        let mut r = self.write();
        let handle = r.by_name.remove(name)?;
        r.by_id.remove(&handle.id);
        Some(handle)
    }

    // The maps are changed together under the write lock by single inserts and
    // removes: a poisoned lock still guards whole maps.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A new queue input channel.
pub(crate) fn channel() -> (mpsc::Sender<QueueInput>, mpsc::Receiver<QueueInput>) {
    mpsc::channel(INPUT_CAPACITY)
}
