//! This node's members of the groups: the first group's, started with the node, and
//! one of every queue group the directory lists the node in, started as the directory
//! says so ([`host_groups`]), each over a store of its own (`groups/<n>/`).
//!
//! A queue group's leader makes its group what the directory says ([`reconcile`]): its
//! machine holds exactly the queues the directory places in it — it creates those it
//! lacks (`Command::DeclareAs`, with the number the directory gave) and deletes those
//! the directory no longer has — and its Raft membership is the directory's members
//! (a node added as a learner until it caught up, as the cluster's own). So a declare
//! or delete is the directory's entry, and the rest follows on whichever node leads the
//! group, even if the node that proposed it died right after.
//!
//! The first group's leader keeps the directory's groups within the cluster
//! ([`replace_departed`]): a node removed from the cluster is replaced in every group
//! by a voter that is in it not yet, the one in fewest groups.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tern_storage::{GroupRecord, SledStore};

use super::directory::Layout;
use super::raft::{Host, MembershipError, NodeId, Recovery, Replica, StartError};
use crate::queue::machine::{Command, Entry};
use crate::queue::{GroupId, FIRST_GROUP};

/// The directory of each queue group's store, under the data directory.
const GROUPS_DIR: &str = "groups";

/// How often a group's leader checks its queues and members against the directory,
/// besides at every change of the directory.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// This node's members of the groups, by group.
#[derive(Debug, Default)]
pub(crate) struct Replicas {
    by_group: RwLock<BTreeMap<GroupId, Arc<Replica>>>,
}

impl Replicas {
    pub fn get(&self, group: GroupId) -> Option<Arc<Replica>> {
        self.read().get(&group).cloned()
    }

    /// The first group's member: every node has one.
    pub fn first(&self) -> Option<Arc<Replica>> {
        self.get(FIRST_GROUP)
    }

    /// Every member, by group.
    pub fn all(&self) -> Vec<Arc<Replica>> {
        self.read().values().cloned().collect()
    }

    pub fn insert(&self, group: GroupId, replica: Arc<Replica>) {
        self.by_group
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, replica);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<GroupId, Arc<Replica>>> {
        // Changed by single inserts: a poisoned lock still guards a whole map.
        self.by_group.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// How a queue group's store is opened on this node.
#[derive(Debug, Clone)]
pub(crate) struct GroupStores {
    pub data_dir: PathBuf,
    pub cache_bytes: u64,
    pub recovery: Recovery,
}

impl GroupStores {
    /// Opens group `group`'s store (made if new), with what reads it back.
    async fn open(&self, group: GroupId) -> Result<(Arc<SledStore>, Recovery), StartError> {
        let dir = self.data_dir.join(GROUPS_DIR).join(group.to_string());
        let cache = self.cache_bytes;
        let at = dir.clone();
        let store = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&at).map_err(tern_storage::StorageError::Segments)?;
            Ok::<_, tern_storage::StorageError>(
                SledStore::open_with_cache(&at, cache)?.sync_bodies(),
            )
        })
        .await
        .map_err(|e| StartError::Raft(e.to_string()))??;
        let recovery = Recovery {
            data_dir: dir,
            ..self.recovery.clone()
        };
        Ok((Arc::new(store), recovery))
    }
}

/// Starts this node's member of each queue group the directory lists it in, now and as
/// the directory changes, and keeps each one's queues in line with the directory while
/// it leads. Until the host shuts down.
pub(crate) async fn host_groups(host: Arc<Host>, replicas: Arc<Replicas>, stores: GroupStores) {
    let me = host.nodes.me();
    let mut changed = host.directory.subscribe();
    let mut started: HashSet<GroupId> = HashSet::new();
    loop {
        let layout = host.directory.layout();
        for (group, record) in layout.groups {
            if started.contains(&group) || !record.members.contains(&me) {
                continue;
            }
            match start(&host, &replicas, &stores, group, &record).await {
                Ok(()) => {
                    started.insert(group);
                }
                Err(e) => {
                    tracing::error!(group, error = %e, "cannot start this node's member of a queue group")
                }
            }
        }
        tokio::select! {
            () = host.shutdown.cancelled() => return,
            c = changed.changed() => if c.is_err() { return },
            // A group that failed to start is tried again.
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
}

/// Starts this node's member of queue group `group`: one of those that formed it forms
/// it with the others (on its first start with it); one added later waits for the
/// group's leader to add it.
async fn start(
    host: &Arc<Host>,
    replicas: &Arc<Replicas>,
    stores: &GroupStores,
    group: GroupId,
    record: &GroupRecord,
) -> Result<(), StartError> {
    let me = host.nodes.me();
    let form = if record.founders.contains(&me) {
        let addrs = replicas
            .first()
            .map(|r| r.member_addrs())
            .unwrap_or_default();
        let founders: Option<Vec<(NodeId, String)>> = record
            .founders
            .iter()
            .map(|m| Some((*m, addrs.get(m)?.clone())))
            .collect();
        Some(founders.ok_or_else(|| {
            StartError::Raft(format!(
                "a founder of group {group} is not a member of the cluster"
            ))
        })?)
    } else {
        None
    };
    let members = &record.members;
    let (store, recovery) = stores.open(group).await?;
    host.runtime
        .add_store(group, Arc::clone(&store) as Arc<dyn tern_storage::Store>);
    let replica = Replica::start(host, group, form, store, recovery).await?;
    replicas.insert(group, Arc::clone(&replica));
    tokio::spawn(reconcile(Arc::clone(host), Arc::clone(replicas), replica));
    tracing::info!(
        group,
        ?members,
        "started this node's member of a queue group"
    );
    Ok(())
}

/// While this node runs `replica`'s group's queues: creates in the group the queues the
/// directory places there and it lacks, deletes those the directory no longer has, and
/// adds and removes members as the directory lists them.
async fn reconcile(host: Arc<Host>, replicas: Arc<Replicas>, replica: Arc<Replica>) {
    let group = replica.group();
    let mut changed = host.directory.subscribe();
    // The directory's version and whether this node ran the group's queues when the
    // group was last found in line: nothing to do again until either changes (the
    // check clones the directory, which may list thousands of queues).
    let mut in_line: Option<(u64, bool)> = None;
    loop {
        let now = (*changed.borrow_and_update(), host.runtime.runs_tasks(group));
        if now.1 && in_line != Some(now) {
            match line_up(&host, &replicas, &replica).await {
                Ok(true) => continue,
                Ok(false) => in_line = Some(now),
                Err(e) => {
                    tracing::debug!(group, error = %e, "a queue group is not in line with the directory yet")
                }
            }
        }
        tokio::select! {
            () = host.shutdown.cancelled() => return,
            c = changed.changed() => if c.is_err() { return },
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
}

/// On `replica`'s group's leader: makes its members, then its queues, what the
/// directory says. Whether it changed anything (then the caller checks again).
async fn line_up(host: &Host, replicas: &Replicas, replica: &Replica) -> Result<bool, String> {
    let group = replica.group();
    let members = host.directory.members(group);
    follow_members(replicas, replica, &members)
        .await
        .map_err(|e| e.to_string())?;
    let wanted: BTreeMap<_, _> = host
        .directory
        .layout()
        .queues_of(group)
        .map(|(id, def)| (id, Arc::clone(def)))
        .collect();
    let held = host.runtime.queues.of_group(group);
    let mut commands: Vec<Command> = wanted
        .iter()
        .filter(|(id, _)| !held.iter().any(|q| q.id == **id))
        .map(|(id, def)| Command::DeclareAs {
            def: (**def).clone(),
            id: *id,
        })
        .collect();
    commands.extend(
        held.iter()
            .filter(|q| !wanted.contains_key(&q.id))
            .map(|q| Command::Delete { queue: q.id }),
    );
    if commands.is_empty() {
        return Ok(false);
    }
    replica
        .propose_here(Entry { commands })
        .await
        .map(|_| true)
        .map_err(|e| e.to_string())
}

/// On `replica`'s group's leader: makes its members `wanted` — a node missing is added
/// (a learner until it has caught up, then a voter), one too many removed.
async fn follow_members(
    replicas: &Replicas,
    replica: &Replica,
    wanted: &[NodeId],
) -> Result<(), MembershipError> {
    if wanted.is_empty() {
        return Ok(());
    }
    let addrs = replicas
        .first()
        .map(|r| r.member_addrs())
        .unwrap_or_default();
    let have = replica.member_addrs();
    for node in wanted {
        let voter = replica.voters().contains(node);
        if voter {
            continue;
        }
        let Some(addr) = addrs.get(node) else {
            continue;
        };
        tracing::info!(
            group = replica.group(),
            node,
            "adding a member to a queue group"
        );
        replica.add_node(*node, addr.clone()).await?;
    }
    for node in have.keys().filter(|n| !wanted.contains(n)) {
        tracing::info!(
            group = replica.group(),
            node,
            "removing a member from a queue group"
        );
        replica.remove_node(*node).await?;
    }
    Ok(())
}

/// On the first group's leader, until the host shuts down: replaces, in every queue
/// group, the members that are no longer voters of the cluster with voters that are in
/// the group not yet (those in fewest groups first), as one `SetGroup` per group.
pub(crate) async fn replace_departed(host: Arc<Host>, replicas: Arc<Replicas>) {
    let mut changed = host.directory.subscribe();
    // The directory's version and the voters when every group was last found within
    // the cluster: nothing to check again until either changes.
    let mut checked: Option<(u64, Vec<NodeId>)> = None;
    loop {
        let version = *changed.borrow_and_update();
        if let Some(first) = replicas.first().filter(|f| f.leads()) {
            let now = (version, first.voters());
            if checked.as_ref() != Some(&now) {
                let commands = replacements(&host.directory.layout(), &now.1);
                if commands.is_empty() {
                    checked = Some(now);
                } else if let Err(e) = first.propose_here(Entry { commands }).await {
                    tracing::debug!(error = %e, "queue groups still count departed nodes");
                }
            }
        }
        tokio::select! {
            () = host.shutdown.cancelled() => return,
            c = changed.changed() => if c.is_err() { return },
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
}

/// A `SetGroup` for each group of `layout` that counts a node not among `voters`,
/// with the voters in it not yet in its place (those in fewest groups first).
fn replacements(layout: &Layout, voters: &[NodeId]) -> Vec<Command> {
    let mut commands = Vec::new();
    for (group, record) in &layout.groups {
        let kept: Vec<NodeId> = record
            .members
            .iter()
            .copied()
            .filter(|m| voters.contains(m))
            .collect();
        if kept.len() == record.members.len() {
            continue;
        }
        let load = |n: &NodeId| {
            layout
                .groups
                .values()
                .filter(|g| g.members.contains(n))
                .count()
        };
        let mut spares: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|v| !kept.contains(v))
            .collect();
        spares.sort_by_key(|n| (load(n), *n));
        let mut members = kept;
        let missing = record.members.len() - members.len();
        members.extend(spares.into_iter().take(missing));
        commands.push(Command::SetGroup {
            group: *group,
            members: Some(members),
        });
    }
    commands
}
