//! The cluster's directory as this node has applied it: the queue groups with their
//! members, and which group holds each queue placed in one. Group 1's state machine
//! keeps it (`Command::Place`, `Command::SetGroup`); the node starts its members of
//! the groups (`cluster::hosting`) and each group's leader makes its machine hold
//! exactly the queues placed in it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tern_storage::{GroupRecord, QueueId};

use super::raft::NodeId;
use tokio::sync::watch;

use crate::queue::def::QueueDef;
use crate::queue::GroupId;

/// What the directory says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Queue groups: their members, and the members that formed them (the first its
    /// first leader).
    pub groups: BTreeMap<GroupId, GroupRecord>,
    /// Queues placed in a queue group, with their definitions.
    pub placed: BTreeMap<QueueId, (GroupId, Arc<QueueDef>)>,
}

impl Layout {
    /// The queues placed in `group`.
    pub fn queues_of(&self, group: GroupId) -> impl Iterator<Item = (QueueId, &Arc<QueueDef>)> {
        self.placed
            .iter()
            .filter(move |(_, (g, _))| *g == group)
            .map(|(id, (_, def))| (*id, def))
    }
}

/// The directory, shared, with a signal on every change.
#[derive(Debug)]
pub(crate) struct Directory {
    layout: Mutex<Layout>,
    changed: watch::Sender<u64>,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            layout: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Directory {
    /// What it says now.
    pub fn layout(&self) -> Layout {
        self.lock().clone()
    }

    /// The members queue group `group` is to have (none for a group it does not
    /// list), without cloning the rest of it.
    pub fn members(&self, group: GroupId) -> Vec<NodeId> {
        self.lock()
            .groups
            .get(&group)
            .map(|g| g.members.clone())
            .unwrap_or_default()
    }

    /// Called on each change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Replaces it all (at start, after a snapshot).
    pub fn reset(&self, layout: Layout) {
        *self.lock() = layout;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Applies what one entry of group 1 changed.
    pub fn apply(
        &self,
        placed: impl IntoIterator<Item = (QueueId, GroupId, Arc<QueueDef>)>,
        deleted: &[QueueId],
        groups: &[(GroupId, Option<GroupRecord>)],
    ) {
        let mut changed = false;
        {
            let mut layout = self.lock();
            for id in deleted {
                changed |= layout.placed.remove(id).is_some();
            }
            for (id, group, def) in placed {
                layout.placed.insert(id, (group, def));
                changed = true;
            }
            for (group, record) in groups {
                match record {
                    Some(r) => layout.groups.insert(*group, r.clone()),
                    None => layout.groups.remove(group),
                };
                changed = true;
            }
        }
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Layout> {
        // Changed by whole inserts and removes: a poisoned lock still guards a whole map.
        self.layout.lock().unwrap_or_else(|p| p.into_inner())
    }
}
