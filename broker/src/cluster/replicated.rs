//! The journal's [`Log`] in a cluster: each group commit's entry is split by group —
//! the directory's commands (declares, deletes) and the publishes a follower leaves to
//! be routed go to the first group's leader, the rest to the group of each command's
//! queue — and each part is appended by its group's leader, confirmed once a majority
//! of the group holds it durably and it is applied on every member by the replicated
//! state machine, which also hands the queues their effects. So the journal here only
//! learns the answers.
//!
//! What a node may propose depends on what it leads. Publishes, declares and deletes
//! come from sessions on any node: a node that does not lead the first group forwards
//! them to its leader, which routes the publishes with its own view of the queues (a
//! follower's may lag: a message must never be confirmed into no queue), places new
//! queues ([`placement`](super::placement)) and hands each group its part. Settles,
//! delivery counts and dead-letter moves come from the queues' tasks, which run on their
//! group's leader only; one sent by a task that has just lost the lead is refused, not
//! forwarded: the new leader's tasks hold the messages now, and an ack that was not
//! applied leaves the message to be redelivered (at least once), never acked twice over
//! a delivery the new leader made. The dedup window's expiry is each leader's business.
//!
//! A publish into queues of several groups is a publish per group, each stored once and
//! the whole confirmed when every part is. A dead letter (or a moved message) whose
//! queues are in different groups is appended to the target first and settled in the
//! source after: a crash between leaves a copy in both, at least once, never none.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_codec::Envelope;
use tern_storage::{QueueId, Store};

use super::directory::Directory;
use super::hosting::Replicas;
use super::placement::{self, Placement};
use super::raft::{Answers, NodeId, ProposeError, Proposed, Replica};
use crate::filter::MessageView;
use crate::journal::{Appending, Log, LogError};
use crate::queue::machine::{Answer, Command, Effects, Entry, Outcome, QueueError};
use crate::queue::runtime::QueueRuntime;
use crate::queue::{GroupId, Queues, FIRST_GROUP};
use crate::router::Router;
use crate::store_health::StoreHealth;

/// Picks, with this node's router, the queues of the publishes left to the leader
/// (`Command::Publish::route_on_leader`): called by the first group's leader just
/// before it hands an entry on, when its view of the queues holds every declare applied
/// so far.
pub(crate) fn route(router: &Router, entry: &mut Entry) {
    for command in &mut entry.commands {
        if let Command::Publish {
            queues,
            route_on_leader,
            envelope,
            ..
        } = command
        {
            if !*route_on_leader {
                continue;
            }
            // Encoded by a session from a valid frame; one that would not decode takes
            // no queue.
            if let Ok(env) = Envelope::decode_bytes(envelope.clone()) {
                let view = MessageView::new(&env.subject, &env.headers, &env.payload);
                *queues = router.lookup_uncached(&env.subject).queues(&view);
            }
            *route_on_leader = false;
        }
    }
}

/// Message bytes one entry carries at most (about: a batch stops past it). openraft
/// gives each AppendEntries the heartbeat interval to come back, the follower's fsync
/// included, and retries one that does not after a back-off: entries of many MiB (a
/// busy journal gathers up to 4,096 publishes) stalled replication for seconds. With
/// `max_payload_entries` entries per call this bounds a call to a few MiB.
const MAX_ENTRY_BYTES: usize = 1 << 20;

/// Entries a leader keeps on their way at once (`Log::depth`).
const DEPTH: usize = 4;

/// How long a declare's answer waits for its queue to be created in its group here.
const CREATED_WAIT: Duration = Duration::from_secs(5);

/// A publisher for messages moved between groups: no connection of this node.
const MOVED: u64 = u64::MAX;

/// Where a command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The first group's leader, which routes, places and splits.
    Directory,
    Group(GroupId),
    /// Every group this node leads (the dedup window's bounds).
    Led,
}

/// A group as this node knows it ([`Proposer::groups`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupView {
    pub group: GroupId,
    pub leader: Option<NodeId>,
    /// Ascending.
    pub members: Vec<NodeId>,
    /// By name.
    pub queues: Vec<String>,
}

/// One group's share of an entry: its commands, each with the command of the entry it
/// answers (`None`: one the leader added, such as a new group).
struct Part {
    group: GroupId,
    commands: Vec<Command>,
    origin: Vec<Option<usize>>,
}

/// What one part came to.
type PartDone = Pin<Box<dyn Future<Output = (Part, Result<Answers, ProposeError>)> + Send>>;

/// How this node gets an entry's commands to the groups that take them.
pub(crate) struct Proposer {
    pub replicas: Arc<Replicas>,
    pub directory: Arc<Directory>,
    pub queues: Arc<Queues>,
    pub router: Arc<Router>,
    /// Groups this node made as the first group's leader that the directory may not
    /// list yet (their entries are on their way), and the next group's number.
    made: Mutex<BTreeMap<GroupId, Vec<NodeId>>>,
    next_group: AtomicU64,
    /// The leaders of groups this node is no member of, as their members last said.
    leaders: Mutex<HashMap<GroupId, NodeId>>,
}

impl Proposer {
    pub fn new(
        replicas: Arc<Replicas>,
        directory: Arc<Directory>,
        queues: Arc<Queues>,
        router: Arc<Router>,
    ) -> Self {
        Self {
            replicas,
            directory,
            queues,
            router,
            made: Mutex::default(),
            next_group: AtomicU64::new(FIRST_GROUP + 1),
            leaders: Mutex::default(),
        }
    }

    fn leader_hint(&self, group: GroupId) -> Option<NodeId> {
        self.leaders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .copied()
    }

    /// Has a member of `group`, which this node is no member of, append `entry`: the
    /// leader last heard of, or each member in turn, following whom they name.
    async fn through_members(&self, group: GroupId, entry: Entry) -> Result<Answers, ProposeError> {
        let first = self.first()?;
        let members = self.directory.members(group);
        let mut next: VecDeque<NodeId> = self.leader_hint(group).into_iter().collect();
        next.extend(&members);
        let mut asked = HashSet::new();
        while let Some(node) = next.pop_front() {
            if !asked.insert(node) {
                continue;
            }
            match first.forward_to(group, node, entry.clone()).await {
                Ok(answers) => {
                    self.leaders
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(group, node);
                    return Ok(answers);
                }
                Err(ProposeError::NoLeader { leader: Some(l) }) => next.push_front(l),
                Err(ProposeError::NoLeader { leader: None }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(ProposeError::NoLeader { leader: None })
    }

    /// What to tell a client that asked this node for what only the leader of `group`,
    /// which this node is no member of, does: its leader as last heard of, or a member.
    pub fn redirect_to(&self, group: GroupId) -> String {
        let Ok(first) = self.first() else {
            return "no node runs this queue now; retry shortly".into();
        };
        let members = self.directory.members(group);
        let known = self
            .leader_hint(group)
            .into_iter()
            .chain(members)
            .find_map(|n| Some((n, first.nodes.known_client_addr(n)?)));
        match known {
            Some((node, addr)) => format!("node {node} holds this queue; connect to {addr}"),
            None => "no node that holds this queue is known now; retry shortly".into(),
        }
    }

    /// The groups as this node knows them: the first, then the queue groups, each with
    /// its leader (if known), members and queues.
    pub fn groups(&self) -> Vec<GroupView> {
        let Ok(first) = self.first() else {
            return Vec::new();
        };
        let layout = self.directory.layout();
        let mut first_queues: Vec<String> = self
            .queues
            .all()
            .into_iter()
            .filter(|q| q.group == FIRST_GROUP)
            .map(|q| q.def.name.clone())
            .collect();
        first_queues.sort();
        let mut voters = first.voters();
        voters.sort_unstable();
        let mut groups = vec![GroupView {
            group: FIRST_GROUP,
            leader: first.leader(),
            members: voters,
            queues: first_queues,
        }];
        for (group, record) in &layout.groups {
            // The group's own view where this node is a member: the directory says
            // what its members are to be, its Raft which vote now.
            let (leader, mut members) = match self.replicas.get(*group) {
                Some(replica) => (replica.leader(), replica.voters()),
                None => (self.leader_hint(*group), record.members.clone()),
            };
            members.sort_unstable();
            let mut queues: Vec<String> = layout
                .queues_of(*group)
                .map(|(_, def)| def.name.clone())
                .collect();
            queues.sort();
            groups.push(GroupView {
                group: *group,
                leader,
                members,
                queues,
            });
        }
        groups
    }

    /// Whether this node is a member of queue `name`'s group (its declare waits for the
    /// queue to run here).
    fn holds(&self, name: &str) -> bool {
        let Some(q) = self.queues.get(name) else {
            return false;
        };
        q.replica
            || self
                .first()
                .is_ok_and(|f| self.directory.members(q.group).contains(&f.node()))
    }

    fn first(&self) -> Result<Arc<Replica>, ProposeError> {
        self.replicas
            .first()
            .ok_or(ProposeError::NoLeader { leader: None })
    }

    /// The group of queue `id` (a queue this node does not know is the first group's:
    /// what its machine does with it, it did before there were groups).
    fn group_of(&self, id: QueueId) -> GroupId {
        self.queues.by_id(id).map_or(FIRST_GROUP, |q| q.group)
    }

    fn target(&self, command: &Command) -> Target {
        match command {
            Command::Publish {
                route_on_leader: true,
                ..
            }
            | Command::Declare { .. }
            | Command::Create { .. }
            | Command::Delete { .. }
            | Command::Place { .. }
            | Command::SetGroup { .. } => Target::Directory,
            Command::Publish { queues, .. } => match queues.first() {
                Some(q) => Target::Group(self.group_of(*q)),
                None => Target::Directory,
            },
            Command::Settle { queue, .. } | Command::SetMeta { queue, .. } => {
                Target::Group(self.group_of(*queue))
            }
            Command::Transfer { from, .. } => Target::Group(self.group_of(*from)),
            Command::DeclareAs { .. } => Target::Directory,
            Command::ForgetDedup { .. } => Target::Led,
        }
    }

    /// On the first group's leader: routes the publishes left to it, places new queues,
    /// and hands each group its part of `entry`. Resolves with an answer per command.
    ///
    /// # Errors
    ///
    /// This node does not lead the first group, or no part was taken.
    pub async fn lead(&self, mut entry: Entry) -> Proposed {
        route(&self.router, &mut entry);
        let commands = self.place(entry.commands);
        self.dispatch(commands).await
    }

    /// Replaces each declare of a new queue with where it goes (and the group it makes,
    /// if it makes one), and each declare of a placed queue with its placement again
    /// (the machine answers it like a declare).
    fn place(&self, commands: Vec<Command>) -> Vec<(Option<usize>, Command)> {
        let mut out = Vec::with_capacity(commands.len());
        let voters = self.first().map(|r| r.voters()).unwrap_or_default();
        for (i, command) in commands.into_iter().enumerate() {
            let (def, replicas) = match command {
                Command::Declare { def } => (def, 0),
                Command::Create { def, replicas } => (def, usize::from(replicas)),
                command => {
                    out.push((Some(i), command));
                    continue;
                }
            };
            if let Some(q) = self.queues.get(&def.name) {
                if q.group != FIRST_GROUP {
                    out.push((
                        Some(i),
                        Command::Place {
                            def,
                            group: q.group,
                        },
                    ));
                } else {
                    out.push((Some(i), Command::Declare { def }));
                }
                continue;
            }
            let group = match self.placement(&voters, &def, replicas) {
                Placement::In(group) => group,
                Placement::New { group, members } => {
                    out.push((
                        None,
                        Command::SetGroup {
                            group,
                            members: Some(members),
                        },
                    ));
                    group
                }
            };
            out.push((Some(i), Command::Place { def, group }));
        }
        out
    }

    /// Where a new queue of `replicas` replicas (0: the default) goes: with its
    /// dead-letter queue, or with the queues that use it as theirs, when their group is
    /// of that size; else as [`placement::place`] says.
    fn placement(
        &self,
        voters: &[NodeId],
        def: &crate::queue::def::QueueDef,
        replicas: usize,
    ) -> Placement {
        let mut layout = self.directory.layout();
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        made.retain(|g, _| !layout.groups.contains_key(g));
        layout.groups.extend(made.iter().map(|(g, m)| {
            let record = tern_storage::GroupRecord {
                members: m.clone(),
                founders: m.clone(),
            };
            (*g, record)
        }));
        let replicas = match replicas {
            0 => placement::default_replicas(voters.len()),
            n => n.min(voters.len()),
        };
        let together = self.queues.all().into_iter().find(|q| {
            q.group != FIRST_GROUP
                && (def.dead_letter.as_deref() == Some(q.def.name.as_str())
                    || q.def.dead_letter.as_deref() == Some(def.name.as_str()))
        });
        if let Some(q) = together {
            if layout
                .groups
                .get(&q.group)
                .is_some_and(|g| g.members.len() == replicas)
            {
                return Placement::In(q.group);
            }
        }
        let floor = layout.groups.keys().max().map_or(FIRST_GROUP, |g| *g) + 1;
        let next = self
            .next_group
            .fetch_max(floor, Ordering::Relaxed)
            .max(floor);
        let placed = placement::place(&layout, voters, replicas, next);
        if let Placement::New { group, members } = &placed {
            self.next_group.store(group + 1, Ordering::Relaxed);
            made.insert(*group, members.clone());
        }
        placed
    }

    /// Hands each group its part of `commands`: this node's own groups (those it leads)
    /// take theirs at once, in order — several entries may be on their way — and the
    /// others through their leader, one at a time. Resolves with an answer per
    /// original command once every part has one.
    async fn dispatch(&self, commands: Vec<(Option<usize>, Command)>) -> Proposed {
        let count = commands
            .iter()
            .filter_map(|(o, _)| *o)
            .max()
            .map_or(0, |m| m + 1);
        let mut moves = Vec::new();
        let mut parts: BTreeMap<GroupId, Part> = BTreeMap::new();
        let push = |parts: &mut BTreeMap<GroupId, Part>, group, origin, command| {
            let part = parts.entry(group).or_insert_with(|| Part {
                group,
                commands: Vec::new(),
                origin: Vec::new(),
            });
            part.commands.push(command);
            part.origin.push(origin);
        };
        for (origin, command) in commands {
            match (self.target(&command), command) {
                (
                    Target::Group(from_group),
                    Command::Transfer {
                        from,
                        seq,
                        forget_meta,
                        to,
                        envelope,
                        enqueued_ms,
                    },
                ) if self.group_of(to) != from_group => {
                    // Into the target first; settled in the source once stored there.
                    let appended = Command::Publish {
                        queues: vec![to],
                        route_on_leader: false,
                        publisher: MOVED,
                        envelope,
                        enqueued_ms,
                        deadline_ms: None,
                        dedup: None,
                    };
                    push(&mut parts, self.group_of(to), origin, appended);
                    moves.push((
                        origin,
                        from_group,
                        Command::Settle {
                            queue: from,
                            seq,
                            forget_meta,
                        },
                    ));
                }
                (
                    Target::Group(group),
                    Command::Publish {
                        queues,
                        route_on_leader,
                        publisher,
                        envelope,
                        enqueued_ms,
                        deadline_ms,
                        dedup,
                    },
                ) => {
                    // One publish per group of its queues.
                    let mut by_group: BTreeMap<GroupId, Vec<QueueId>> = BTreeMap::new();
                    for q in queues {
                        by_group.entry(self.group_of(q)).or_default().push(q);
                    }
                    if by_group.is_empty() {
                        by_group.insert(group, Vec::new());
                    }
                    for (group, queues) in by_group {
                        let part = Command::Publish {
                            queues,
                            route_on_leader,
                            publisher,
                            envelope: envelope.clone(),
                            enqueued_ms,
                            deadline_ms,
                            dedup: dedup.clone(),
                        };
                        push(&mut parts, group, origin, part);
                    }
                }
                (Target::Group(group), command) => push(&mut parts, group, origin, command),
                (Target::Directory, command) => push(&mut parts, FIRST_GROUP, origin, command),
                (Target::Led, command) => {
                    for r in self.replicas.all() {
                        if r.leads() {
                            push(&mut parts, r.group(), origin, command.clone());
                        }
                    }
                }
            }
        }
        let mut pending: Vec<PartDone> = Vec::with_capacity(parts.len());
        for part in parts.into_values() {
            pending.push(self.send(part).await);
        }
        let replicas = Arc::clone(&self.replicas);
        Box::pin(async move {
            let mut answers: Vec<Option<Answer>> = vec![None; count];
            let mut failed = None;
            // Each part is on its way already: awaited in turn, they take as long as the
            // slowest.
            for part in pending {
                let (part, result) = part.await;
                match result {
                    Ok(got) => combine(&mut answers, &part.origin, got.0),
                    Err(e) => {
                        let refused = vec![Err(QueueError::NotLeader); part.origin.len()];
                        combine(&mut answers, &part.origin, refused);
                        failed.get_or_insert(e);
                    }
                }
            }
            // The second half of moves between groups: settle where they came from.
            for (origin, group, settle) in moves {
                let stored = origin
                    .and_then(|o| answers.get(o).cloned().flatten())
                    .is_some_and(|a| a.is_ok());
                if stored {
                    settle_moved(&replicas, group, settle).await;
                }
            }
            match failed {
                Some(e) if answers.iter().flatten().all(Result::is_err) => Err(e),
                _ => Ok(Answers(
                    answers
                        .into_iter()
                        .map(|a| a.unwrap_or(Ok(Outcome::default())))
                        .collect(),
                )),
            }
        })
    }

    /// Has `part`'s group take it: here if this node leads the group (returns once it
    /// is on its way), else through the group's leader (returns once answered).
    async fn send(&self, part: Part) -> PartDone {
        let entry = Entry {
            commands: part.commands.clone(),
        };
        let Some(replica) = self.replicas.get(part.group) else {
            let result = if entry.commands.iter().all(forwardable) {
                self.through_members(part.group, entry).await
            } else {
                Err(ProposeError::NoLeader { leader: None })
            };
            return Box::pin(std::future::ready((part, result)));
        };
        if replica.leads() {
            let proposed = replica.submit(entry).await;
            return Box::pin(async move { (part, proposed.await) });
        }
        let result = match replica.leader() {
            Some(leader) if leader != replica.node() => {
                let forwarded: Vec<Command> =
                    entry.commands.into_iter().filter(forwardable).collect();
                if forwarded.len() == part.commands.len() {
                    replica
                        .forward(
                            leader,
                            Entry {
                                commands: forwarded,
                            },
                        )
                        .await
                } else {
                    Err(ProposeError::NoLeader {
                        leader: Some(leader),
                    })
                }
            }
            leader => Err(ProposeError::NoLeader { leader }),
        };
        Box::pin(std::future::ready((part, result)))
    }
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer")
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

impl super::raft::Forwarded for Proposer {
    /// An entry another node's journal left to the first group's leader: this node,
    /// unless it lost the lead meanwhile (then the sender tries again, maybe elsewhere).
    fn propose(self: Arc<Self>, entry: Entry) -> Proposed {
        Box::pin(async move {
            let first = self.first()?;
            if !first.leads() {
                return Err(ProposeError::NoLeader {
                    leader: first.leader(),
                });
            }
            self.lead(entry).await.await
        })
    }
}

/// Settles the source of a move between groups, once the target holds the message.
async fn settle_moved(replicas: &Replicas, group: GroupId, settle: Command) {
    let Some(replica) = replicas.get(group).filter(|r| r.leads()) else {
        // No longer here: the source's new leader delivers it again (at least once).
        return;
    };
    let entry = Entry {
        commands: vec![settle],
    };
    if let Err(e) = replica.propose_here(entry).await {
        tracing::debug!(group, error = %e, "a moved message stays in its source too");
    }
}

/// Puts a part's answers where they belong: a command split among groups (a publish)
/// is stored by each, and answered with the sum, or with the first refusal.
fn combine(answers: &mut [Option<Answer>], origin: &[Option<usize>], got: Vec<Answer>) {
    for (o, answer) in origin.iter().zip(got) {
        let Some(slot) = o.and_then(|o| answers.get_mut(o)) else {
            continue;
        };
        *slot = Some(match (slot.take(), answer) {
            (None, a) => a,
            (Some(Err(e)), _) | (Some(Ok(_)), Err(e)) => Err(e),
            (Some(Ok(a)), Ok(b)) => Ok(Outcome {
                queues: a.queues.saturating_add(b.queues),
                duplicate: a.duplicate && b.duplicate,
            }),
        });
    }
}

/// Whether a node may forward `command` to the first group's leader.
fn forwardable(command: &Command) -> bool {
    matches!(
        command,
        Command::Publish { .. }
            | Command::Declare { .. }
            | Command::Create { .. }
            | Command::Delete { .. }
    )
}

/// The journal's log over the cluster's groups.
pub(crate) struct ReplicatedLog {
    pub proposer: Arc<Proposer>,
    /// From proposing an entry to its being applied, here or through the leader.
    pub commit_latency: metrics::Histogram,
    pub runtime: Arc<QueueRuntime>,
    pub store: Arc<dyn Store>,
    pub health: Arc<StoreHealth>,
}

impl Log for ReplicatedLog {
    async fn append(&mut self, entry: Entry, _awaited: bool) -> Appending {
        if entry.commands.is_empty() {
            return Box::pin(std::future::ready(Ok(Effects::answered(Vec::new()))));
        }
        let started = Instant::now();
        let latency = self.commit_latency.clone();
        let first = match self.proposer.first() {
            Ok(first) => first,
            Err(e) => return Box::pin(std::future::ready(Err(LogError::NoLeader(e.to_string())))),
        };
        let declared: Vec<(usize, String)> = entry
            .commands
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c {
                Command::Declare { def } | Command::Create { def, .. } => {
                    Some((i, def.name.clone()))
                }
                _ => None,
            })
            .collect();
        let proposed = if first.leads() {
            self.proposer.lead(entry).await
        } else {
            self.follow(&first, entry).await
        };
        let proposer = Arc::clone(&self.proposer);
        Box::pin(async move {
            let answers = proposed.await.map_err(|e| refused(&first, e))?;
            latency.record(started.elapsed());
            // A declare is answered once its queue runs where it was placed, if that is
            // here.
            for (i, name) in declared {
                if answers.0.get(i).is_some_and(Result::is_ok) {
                    created(&proposer, &name).await;
                }
            }
            Ok(Effects::answered(answers.0))
        })
    }

    /// A leader keeps a few entries on their way: its log's fsync, its followers' and
    /// its state machine's each work on another.
    fn depth(&self) -> usize {
        if self.proposer.replicas.all().iter().any(|r| r.leads()) {
            DEPTH
        } else {
            1
        }
    }

    fn refuses_new_messages(&self) -> Option<String> {
        self.health.check_disk(&*self.store)
    }

    fn max_entry_bytes(&self) -> usize {
        MAX_ENTRY_BYTES
    }

    /// Raft syncs each append before it counts it.
    fn sync_due(&self) -> Option<Instant> {
        None
    }

    fn sync(&mut self) -> Result<(), LogError> {
        Ok(())
    }

    /// A checkpoint of every group's store: at shutdown, so that a restart applies
    /// little again.
    fn compact(&mut self) -> Result<(), LogError> {
        for store in self.runtime.stores() {
            store
                .flush()
                .map_err(|e| LogError::SyncFailed(e.to_string()))?;
        }
        Ok(())
    }
}

/// Waits (a while) until queue `name` is known here, and runs here as a replica of its
/// group if this node is a member of it.
async fn created(proposer: &Proposer, name: &str) {
    let deadline = tokio::time::Instant::now() + CREATED_WAIT;
    let ready = || {
        proposer
            .queues
            .get(name)
            .is_some_and(|q| q.replica || !proposer.holds(name))
    };
    while !ready() {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a proposal's failure tells the journal.
fn refused(first: &Replica, e: ProposeError) -> LogError {
    match e {
        ProposeError::NoLeader { .. } => LogError::NoLeader(first.redirect()),
        ProposeError::Failed(why) => LogError::Refused(why),
    }
}

impl ReplicatedLog {
    /// On a node that does not lead the first group: what only it takes (publishes,
    /// declares, deletes) goes to its leader, one entry at a time (it would not keep
    /// the order of several on their way over the link); the rest — from the tasks of
    /// the queues of groups this node leads — to those groups.
    async fn follow(&self, first: &Replica, entry: Entry) -> Proposed {
        let (to_first, rest): (Vec<_>, Vec<_>) = entry
            .commands
            .into_iter()
            .enumerate()
            .partition(|(_, c)| forwardable(c));
        let mut answers: Vec<Option<Answer>> = vec![None; to_first.len() + rest.len()];
        if !to_first.is_empty() {
            let (origin, commands): (Vec<_>, Vec<_>) = to_first.into_iter().unzip();
            let origin: Vec<Option<usize>> = origin.into_iter().map(Some).collect();
            let got = match first.leader() {
                Some(leader) if leader != first.node() => {
                    first.forward(leader, Entry { commands }).await
                }
                leader => Err(ProposeError::NoLeader { leader }),
            };
            match got {
                Ok(got) => combine(&mut answers, &origin, got.0),
                Err(e) => return Box::pin(std::future::ready(Err(e))),
            }
        }
        let rest: Vec<(Option<usize>, Command)> =
            rest.into_iter().map(|(i, c)| (Some(i), c)).collect();
        let later = if rest.is_empty() {
            None
        } else {
            Some(self.proposer.dispatch(rest).await)
        };
        Box::pin(async move {
            if let Some(later) = later {
                match later.await {
                    // Answers of the commands it carried, at their places.
                    Ok(got) => {
                        for (slot, answer) in answers.iter_mut().zip(got.0) {
                            if slot.is_none() {
                                *slot = Some(answer);
                            }
                        }
                    }
                    Err(_) => {
                        for slot in answers.iter_mut().filter(|a| a.is_none()) {
                            *slot = Some(Err(QueueError::NotLeader));
                        }
                    }
                }
            }
            Ok(Answers(
                answers
                    .into_iter()
                    .map(|a| a.unwrap_or(Err(QueueError::NotLeader)))
                    .collect(),
            ))
        })
    }
}
