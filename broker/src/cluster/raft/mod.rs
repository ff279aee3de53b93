//! Replication of the durable queues with Raft, through openraft 0.9.25 (pinned with
//! `=`): the only module of tern that names openraft, so an upgrade touches this
//! directory and nothing else.
//!
//! * `log_store`: one group's Raft log, over the node's `RaftLog` (whose `fdatasync`s
//!   every group of the node shares).
//! * `state_machine`: the queues' `Machine` over a group's store, and snapshots.
//! * `network`: Raft's messages over the cluster's links, each naming its group, and
//!   proposals forwarded from followers to the leader.
//! * `nodes`: the other nodes, as every group reaches them.
//! * `gate`: when a member may campaign (a pre-vote by other means).
//! * `lease`: when a leader may act alone.
//!
//! [`Replica`] is this node's member of a group: the journal hands it each group
//! commit's entry ([`Replica::submit`]), which the leader appends and every member
//! applies once a majority holds it durably. What the groups of a node share is its
//! [`Host`]. Group 1 (`FIRST_GROUP`, every voter) holds the membership and the
//! directory of queues; the queues live in groups of their own (ARCHITECTURE.md,
//! "Groups").

// openraft's traits fix the error types its storage and network return; they are large
// (hundreds of bytes), and only ever travel on failure.
#![allow(clippy::result_large_err)]

mod entry_cache;
mod gate;
mod lease;
mod log_store;
mod network;
mod nodes;
#[cfg(test)]
mod sim;
mod state_machine;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tern_storage::{RaftLog, SledStore};
use tokio_util::sync::CancellationToken;

use self::gate::{campaign_only_when_electable, Heard};
use self::lease::Lease;
use self::log_store::LogStore;
pub(crate) use self::network::Groups;
use self::network::{Answerer, Call, Network, Request, Response, PROPOSE_TIMEOUT};
pub(crate) use self::nodes::{ClientAddr, Nodes};
pub(crate) use self::state_machine::Recovery;
use self::state_machine::StateMachine;
use crate::cluster::directory::Directory;
use crate::cluster::link::Peer;
use crate::queue::machine::{Answer, Entry};
use crate::queue::runtime::QueueRuntime;

pub(crate) type NodeId = u64;

pub(crate) use crate::queue::GroupId;

/// A member as Raft knows it: the address of its peer listener.
pub(crate) type Member = BasicNode;

openraft::declare_raft_types!(
    /// tern's Raft types.
    pub(crate) TypeConfig:
        D = Entry,
        R = Answers,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) type Raft = openraft::Raft<TypeConfig>;

/// The first byte of a Raft request on a peer link (see [`crate::cluster::Services`]).
pub(crate) const SERVICE: u8 = 1;

/// What applying an entry answered: one answer per command (none for Raft's own
/// entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Answers(pub Vec<Answer>);

/// Why a proposal was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum ProposeError {
    /// This node does not lead, and the leader (if known) did not take it either.
    #[error("no leader can take it now (leader: {leader:?}); the cluster may be electing one")]
    NoLeader { leader: Option<NodeId> },
    #[error("{0}")]
    Failed(String),
}

/// Decodes `bytes` as a call from another node; when they decode, encodes the call
/// again and decodes that: `Some(true)` when both decodings agree. For the
/// `peer_request` fuzz target.
pub(crate) fn request_round_trip(bytes: &[u8]) -> Option<bool> {
    let request = network::decode(bytes).ok()?;
    let again = postcard::to_stdvec(&request).ok()?;
    let twice = network::decode(&again).ok()?;
    Some(format!("{request:?}") == format!("{twice:?}"))
}

/// An entry this node's Raft took ([`submit`]), on its way to a majority: resolves
/// with the answers once it is committed and applied.
pub(crate) type Proposed = Pin<Box<dyn Future<Output = Result<Answers, ProposeError>> + Send>>;

/// Appends `entry` on this node, if it leads: returns once Raft took it — entries
/// submitted one after another are appended in that order — with what resolves once
/// it is committed and applied.
///
/// A leader cut off from the majority commits nothing until the partition heals (and
/// then learns it leads no more): past [`PROPOSE_TIMEOUT`] the proposal is given up as
/// if no leader took it, so that its publishers go to the other side. It may still be
/// applied, if the entry reached a node that then leads: a resend of a QoS 2 publish is
/// deduplicated; a QoS 1 one may be stored twice (at least once).
pub(crate) async fn submit(raft: &Raft, entry: Entry) -> Proposed {
    let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
    let taken = match raft.client_write_ff(entry).await {
        Ok(taken) => taken,
        Err(fatal) => {
            return Box::pin(std::future::ready(Err(ProposeError::Failed(
                fatal.to_string(),
            ))))
        }
    };
    Box::pin(async move {
        match tokio::time::timeout_at(deadline, taken).await {
            Ok(Ok(Ok(response))) => Ok(response.data),
            Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => Err(ProposeError::NoLeader {
                leader: f.leader_id,
            }),
            Ok(Ok(Err(e))) => Err(ProposeError::Failed(e.to_string())),
            Ok(Err(_)) => Err(ProposeError::Failed("raft stopped".into())),
            Err(_) => Err(ProposeError::NoLeader { leader: None }),
        }
    })
}

/// What a group's leader does with an entry another node forwarded when it is not
/// simply appended: the first group's leader routes its publishes, places its declares
/// and hands each group its part (`cluster::replicated`).
pub(crate) trait Forwarded: Send + Sync + 'static {
    fn propose(self: Arc<Self>, entry: Entry) -> Proposed;
}

/// [`submit`], then waits for the answers.
pub(crate) async fn propose_here(raft: &Raft, entry: Entry) -> Result<Answers, ProposeError> {
    submit(raft, entry).await.await
}

/// Raft's timing. Each AppendEntries must come back within the heartbeat interval
/// (openraft uses it as the call's timeout), fsync on the follower included.
///
/// A follower that stops hearing from its leader starts an election after the leader's
/// lease (openraft: `election_timeout_max`) plus its own timeout (drawn once per start
/// between min and max), and only once the lease has passed do the others vote; a node
/// that was refused for its log waits `2 × max` more at its next campaign, which
/// [`gate`] keeps from happening. So a dead leader is replaced 1.5–2 s after its last
/// heartbeat, while a follower still needs 1.5 s of silence —
/// six heartbeats — to disturb a leader (it counts from an AppendEntries' arrival, not
/// its fsync). tests/chaos.rs resumed after 3.8, 5.5 and 9.5 s with 1–2 s timeouts,
/// 2.4, 6.7 and 6.1 s with 0.75–1.25 s, and 2.2, 5.5 and 4.4 s with these (the later
/// kills each follow a cut round); with these and the gate, 24 kills over 8 runs
/// resumed in 1.7–2.6 s.
fn raft_config() -> Result<Config, openraft::ConfigError> {
    Config {
        cluster_name: "tern".into(),
        heartbeat_interval: 250,
        election_timeout_min: 500,
        election_timeout_max: lease::FOLLOWER_LEASE.as_millis() as u64,
        install_snapshot_timeout: 10_000,
        // With entries of up to 1 MiB (`replicated::MAX_ENTRY_BYTES`), a call of up to
        // 8 MiB comes back within the heartbeat on this machine's disk.
        max_payload_entries: 8,
        // A snapshot here is a checkpoint of the store; the log after it is what a
        // restart applies again.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(1024),
        max_in_snapshot_log_to_keep: 256,
        purge_batch_size: 256,
        ..Config::default()
    }
    .validate()
}

/// How long a node that starts a new cluster, other than the one with the lowest id,
/// waits for a leader to reach it before it forms the group itself ([`form`]).
const FORM_WAIT: std::time::Duration = std::time::Duration::from_millis(2_000);

/// Forms the group with `members`, on this node's first start (not when it joins a
/// running cluster): any node may, with the same members (safe, as openraft says), so
/// that no node has to be started first.
///
/// openraft's `initialize` campaigns at once. A node that does so while the group has a
/// leader unseats it: the others refuse its vote while their leader's lease holds, but
/// the vote sticks, the leader's next AppendEntries to it is answered with it, and a
/// higher vote — here the same term 1 and a higher node id, as openraft orders leader
/// ids — makes the leader step down (openraft 0.9 has no pre-vote). So the node with
/// the lowest id forms the group at once: its vote, (1, lowest), is below any leader's.
/// Any other waits up to [`FORM_WAIT`] for a leader to reach it (the leader redials
/// within ~310 ms, `link::peer`, and sends a heartbeat every 250 ms), and forms the
/// group only if none did: the lowest is down.
///
/// (A restarted node is no such threat: openraft counts a leader's lease from its start,
/// so it campaigns no sooner than 1.5 s after, and its leader reaches it first.)
///
/// A queue group is formed the same way by the member the directory names first (its
/// vote is then below none of a leader's that the others could have elected before
/// it reached them: they wait for it).
async fn form<C: openraft::RaftTypeConfig>(
    raft: openraft::Raft<C>,
    members: BTreeMap<C::NodeId, C::Node>,
    first: C::NodeId,
) {
    let me = raft.metrics().borrow().id.clone();
    if first != me {
        let mut metrics = raft.metrics();
        let reached = metrics.wait_for(|m| m.current_leader.is_some());
        let _ = tokio::time::timeout(FORM_WAIT, reached).await;
    }
    match raft.initialize(members).await {
        Ok(()) | Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
        Err(e) => tracing::error!(error = %e, "cannot form the cluster"),
    }
}

/// This node's view of the group, for metrics and server info.
#[derive(Debug, Clone, Default)]
pub(crate) struct RaftStatus {
    pub node: NodeId,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub leads: bool,
    pub last_log_index: u64,
    pub last_applied_index: u64,
    /// On the leader: entries each other member lacks.
    pub lag: Vec<(NodeId, u64)>,
    /// Times this node saw the leader change (or go) since it started.
    pub leader_changes: u64,
    /// Whether this node may campaign: a majority would vote for its log
    /// ([`gate`]); on the leader, as last decided.
    pub electable: bool,
}

/// Where clients find the leader: its id and client address, as last learned.
type LeaderHint = Arc<Mutex<Option<(NodeId, Option<String>)>>>;

/// A member of the group, as the membership this node has applied says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberInfo {
    pub node: NodeId,
    /// The address of its peer listener.
    pub peer_addr: String,
    /// Its clients' address, once this node has asked it.
    pub client_addr: Option<String>,
    pub voter: bool,
    /// On the leader: entries its log lacks.
    pub lag: u64,
}

/// Why a membership change was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MembershipError {
    /// Only the leader changes the membership: where to go instead.
    #[error("{0}")]
    NotLeader(String),
    #[error("{0}")]
    Refused(String),
}

/// What every group of a node shares.
pub(crate) struct Host {
    pub nodes: Arc<Nodes>,
    /// Kept by the first group's state machine.
    pub directory: Arc<Directory>,
    /// Answers the other nodes' calls, by group.
    pub groups: Arc<Groups>,
    /// The node's Raft log, every group's.
    pub log: RaftLog,
    pub runtime: Arc<QueueRuntime>,
    /// Takes the entries forwarded to the first group's leader here.
    pub forwarded: Arc<dyn Forwarded>,
    pub shutdown: CancellationToken,
}

/// How long a node being added may take to catch up before it becomes a voter.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(120);

/// This node's member of the cluster's group.
pub(crate) struct Replica {
    node: NodeId,
    group: GroupId,
    raft: Raft,
    /// The other nodes: for proposals forwarded to the leader, redirects and info.
    pub nodes: Arc<Nodes>,
    leader: LeaderHint,
    leader_changes: std::sync::atomic::AtomicU64,
    /// Set by [`gate`].
    electable: Arc<AtomicBool>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] tern_storage::StorageError),
    #[error("cannot listen for peers on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the cluster's TLS files: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("raft: {0}")]
    Raft(String),
}

impl Replica {
    /// Starts this node's member of `group`: its state machine over `store`, its log in
    /// the node's Raft log, answering the other nodes' calls to it from then on. On
    /// the group's first start here (no vote yet), a node with `form` forms it with
    /// those members, the first of them at once ([`form`]); without, it waits to be
    /// added.
    ///
    /// # Errors
    ///
    /// The store or Raft could not start.
    pub async fn start(
        host: &Host,
        group: GroupId,
        form: Option<Vec<(NodeId, String)>>,
        store: Arc<SledStore>,
        recovery: Recovery,
    ) -> Result<Arc<Self>, StartError> {
        let node = host.nodes.me();
        // No vote yet: this node never took part in an election of the group.
        let first_start = host
            .log
            .state(group)
            .map_err(|e| StartError::Raft(e.to_string()))?
            .vote
            .is_none();
        let log_store = LogStore::new(host.log.clone(), group);
        let metrics = Arc::new(OnceLock::new());
        let directory = (group == crate::queue::FIRST_GROUP).then(|| Arc::clone(&host.directory));
        let sm = StateMachine::open(
            node,
            group,
            directory,
            store,
            Arc::clone(&host.runtime),
            recovery,
            Arc::clone(&metrics),
        )
        .await?;
        let raft_config = raft_config().map_err(|e| StartError::Raft(e.to_string()))?;
        let raft = Raft::new(
            node,
            Arc::new(raft_config),
            Network {
                link: host.nodes.link(),
                group,
            },
            log_store.clone(),
            sm,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let _ = metrics.set(raft.metrics());
        let heard = Arc::new(Heard::default());
        host.groups.insert(
            group,
            Arc::new(Answerer {
                raft: raft.clone(),
                log: log_store.clone(),
                heard: Arc::clone(&heard),
                fence: lease::VoteFence::starting(!first_start),
                forwarded: (group == crate::queue::FIRST_GROUP)
                    .then(|| Arc::clone(&host.forwarded)),
            }),
        );
        if let Some(members) = form.filter(|_| first_start) {
            let first = members.first().map_or(node, |(id, _)| *id);
            let members = members
                .into_iter()
                .map(|(id, addr)| (id, BasicNode { addr }))
                .collect();
            tokio::spawn(self::form(raft.clone(), members, first));
        }
        let replica = Arc::new(Self {
            node,
            group,
            raft: raft.clone(),
            nodes: Arc::clone(&host.nodes),
            leader: LeaderHint::default(),
            leader_changes: std::sync::atomic::AtomicU64::new(0),
            electable: Arc::default(),
        });
        tokio::spawn(follow_leadership(
            Arc::clone(&replica),
            Arc::clone(&host.runtime),
            host.shutdown.clone(),
        ));
        let weak = Arc::downgrade(&replica);
        let ask = move |node| {
            let peer = weak.upgrade().and_then(|r| r.peer(node));
            async move {
                let last_log = Call::Group(group, Request::LastLog);
                match network::call(&peer?, &last_log, gate::ASK_TIMEOUT).await {
                    Ok(Response::LastLog(last)) => Some(last),
                    _ => None,
                }
            }
        };
        let electable = Arc::clone(&replica.electable);
        tokio::spawn(campaign_only_when_electable(
            raft, log_store, ask, heard, electable,
        ));
        Ok(replica)
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The group this is a member of.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// What this node's Raft says now.
    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let last_log_index = m.last_log_index.unwrap_or(0);
        let lag = m
            .replication
            .iter()
            .flatten()
            .filter(|(node, _)| **node != self.node)
            .map(|(node, matched)| {
                let matched = matched.map_or(0, |l| l.index);
                (*node, last_log_index.saturating_sub(matched))
            })
            .collect();
        RaftStatus {
            node: self.node,
            term: m.current_term,
            leader: m.current_leader,
            leads: m.state == ServerState::Leader,
            last_log_index,
            last_applied_index: m.last_applied.map_or(0, |l| l.index),
            lag,
            leader_changes: self
                .leader_changes
                .load(std::sync::atomic::Ordering::Relaxed),
            electable: self.electable.load(Ordering::Relaxed),
        }
    }

    /// The leader, as this node's Raft knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The group's voters.
    pub fn voters(&self) -> Vec<NodeId> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().voter_ids().collect()
    }

    /// Whether this node leads, by its Raft's account.
    pub fn leads(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Appends `entry` if this node leads, and returns the answers once a majority
    /// holds it and it is applied.
    ///
    /// # Errors
    ///
    /// This node does not lead ([`ProposeError::NoLeader`], naming the leader when
    /// known), or Raft failed.
    pub async fn propose_here(&self, entry: Entry) -> Result<Answers, ProposeError> {
        propose_here(&self.raft, entry).await
    }

    /// Appends `entry` if this node leads, as [`submit`]: entries submitted one after
    /// another are appended in that order, and may be on their way together.
    pub async fn submit(&self, entry: Entry) -> Proposed {
        submit(&self.raft, entry).await
    }

    /// The link to `node`, at the address the membership gives it.
    fn peer(&self, node: NodeId) -> Option<Peer> {
        Some(self.nodes.peer(node, self.member_addr(node)?))
    }

    fn member_addr(&self, node: NodeId) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&node)
            .map(|n| n.addr.clone())
    }

    /// Every member (voters and learners) with its peer address: whom pub/sub talks to.
    pub fn member_addrs(&self) -> BTreeMap<NodeId, String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// The members as this node knows them, by id.
    pub fn members(&self) -> Vec<MemberInfo> {
        let status = self.status();
        let (voters, nodes): (std::collections::BTreeSet<NodeId>, Vec<(NodeId, String)>) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            (
                membership.voter_ids().collect(),
                membership
                    .nodes()
                    .map(|(id, n)| (*id, n.addr.clone()))
                    .collect(),
            )
        };
        nodes
            .into_iter()
            .map(|(node, peer_addr)| MemberInfo {
                node,
                client_addr: self.nodes.known_client_addr(node),
                peer_addr,
                voter: voters.contains(&node),
                lag: status
                    .lag
                    .iter()
                    .find(|(n, _)| *n == node)
                    .map_or(0, |(_, lag)| *lag),
            })
            .collect()
    }

    /// Calls `changed` with the members' peer addresses now and whenever the membership
    /// changes, and asks new members their client address, until `shutdown`.
    pub async fn follow_members(
        self: Arc<Self>,
        changed: impl Fn(&BTreeMap<NodeId, String>) + Send,
        shutdown: CancellationToken,
    ) {
        let mut metrics = self.raft.metrics();
        // Members that were down when asked are asked again this often (only those
        // whose address is not known yet are asked, so the tick is free otherwise).
        let mut retry = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut applied = None;
        loop {
            // Metrics change with every entry; the membership with few.
            let membership = *metrics.borrow_and_update().membership_config.log_id();
            if applied != Some(membership) {
                applied = Some(membership);
                changed(&self.member_addrs());
                self.learn_client_addrs().await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
                _ = retry.tick() => self.learn_client_addrs().await,
            }
        }
    }

    /// Asks the other members whose client address is not known yet, keeping what
    /// they answer.
    async fn learn_client_addrs(&self) {
        for (node, addr) in self.member_addrs() {
            self.nodes.client_addr_of(node, addr).await;
        }
    }

    /// Adds node `node`, reached at `addr`: as a learner until it has caught up, then
    /// as a voter. Only on the leader. Adding again a node that is a member at that
    /// address finishes what an interrupted add began (a leader change midway, say), or
    /// does nothing: a retried add is harmless.
    ///
    /// # Errors
    ///
    /// [`MembershipError::NotLeader`] on another node; `Refused` when the node is a
    /// member at another address, cannot be reached, or does not catch up in time.
    pub async fn add_node(&self, node: NodeId, addr: String) -> Result<(), MembershipError> {
        if node == 0 {
            return Err(MembershipError::Refused("node ids start at 1".into()));
        }
        self.must_lead()?;
        if let Some(known) = self.member_addrs().get(&node) {
            if *known != addr {
                return Err(MembershipError::Refused(format!(
                    "node {node} is a member already, at {known}"
                )));
            }
            if self.is_voter(node) {
                return Ok(());
            }
        }
        // The link's handshake checks that the node at `addr` is `node`.
        let reached = self.nodes.probe(node, addr.clone(), PROPOSE_TIMEOUT).await;
        if let Err(e) = reached {
            return Err(MembershipError::Refused(format!(
                "node {node} cannot be reached at {addr}: {e}"
            )));
        }
        let raft = self.raft.clone();
        let added =
            tokio::time::timeout(CATCH_UP, raft.add_learner(node, BasicNode { addr }, true)).await;
        match added {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(self.refused(e)),
            Err(_) => {
                return Err(MembershipError::Refused(format!(
                    "node {node} did not catch up within {CATCH_UP:?}; it stays a learner"
                )))
            }
        }
        let voters = openraft::ChangeMembers::AddVoterIds([node].into());
        self.raft
            .change_membership(voters, false)
            .await
            .map(|_| ())
            .map_err(|e| self.refused(e))
    }

    fn is_voter(&self, node: NodeId) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .voter_ids()
            .any(|v| v == node)
    }

    /// Removes node `node` from the group. Only on the leader.
    ///
    /// # Errors
    ///
    /// [`MembershipError::NotLeader`] on another node; `Refused` when the node is no
    /// member or is the last voter.
    pub async fn remove_node(&self, node: NodeId) -> Result<(), MembershipError> {
        self.must_lead()?;
        let voters: std::collections::BTreeSet<NodeId> = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config.membership().voter_ids().collect()
        };
        let change = if voters.contains(&node) {
            if voters.len() == 1 {
                return Err(MembershipError::Refused(format!(
                    "node {node} is the last voter"
                )));
            }
            openraft::ChangeMembers::RemoveVoters([node].into())
        } else if self.member_addrs().contains_key(&node) {
            openraft::ChangeMembers::RemoveNodes([node].into())
        } else {
            return Err(MembershipError::Refused(format!(
                "node {node} is not a member"
            )));
        };
        self.raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(|e| self.refused(e))
    }

    fn must_lead(&self) -> Result<(), MembershipError> {
        if self.leads() {
            Ok(())
        } else {
            Err(MembershipError::NotLeader(self.redirect()))
        }
    }

    fn refused(&self, e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> MembershipError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                MembershipError::NotLeader(self.redirect())
            }
            e => MembershipError::Refused(e.to_string()),
        }
    }

    /// What to tell a client that asked this node for what only the leader does.
    pub fn redirect(&self) -> String {
        match &*self.leader.lock().unwrap_or_else(|p| p.into_inner()) {
            // Asked of the leader itself: just elected, or its lease lapsed.
            Some((node, _)) if *node == self.node => {
                format!("node {node} leads but does not run the queues yet; retry shortly")
            }
            Some((node, Some(addr))) => {
                format!("node {node} runs the queues now; connect to {addr}")
            }
            Some((node, None)) => format!("node {node} runs the queues now"),
            None => "no node runs the queues now (a leader is being elected); retry shortly".into(),
        }
    }

    /// Learns the client address of `leader`, for [`Replica::redirect`].
    async fn learn_leader(&self, leader: Option<NodeId>) {
        let hint = match leader {
            None => None,
            Some(node) if node == self.node => Some((node, self.nodes.client_addr.get())),
            Some(node) => {
                // Asked again at each change: a restarted node may serve elsewhere.
                let addr = match self.member_addr(node) {
                    Some(peer_addr) => self.nodes.ask_client_addr(node, peer_addr).await,
                    None => None,
                };
                Some((node, addr.or_else(|| self.nodes.known_client_addr(node))))
            }
        };
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = hint;
    }

    /// Has node `leader` append `entry`, as [`Replica::propose_here`] there.
    ///
    /// # Errors
    ///
    /// The leader could not be reached, or did not take it.
    pub async fn forward(&self, leader: NodeId, entry: Entry) -> Result<Answers, ProposeError> {
        self.forward_to(self.group, leader, entry).await
    }

    /// Has node `leader` append `entry` to group `group` (reached at the address this
    /// group's membership gives it: the first group's lists every node), as
    /// [`Replica::propose_here`] there. A member that does not lead answers which one
    /// does.
    ///
    /// # Errors
    ///
    /// The node could not be reached, or did not take it.
    pub async fn forward_to(
        &self,
        group: GroupId,
        leader: NodeId,
        entry: Entry,
    ) -> Result<Answers, ProposeError> {
        let Some(peer) = self.peer(leader) else {
            return Err(ProposeError::NoLeader {
                leader: Some(leader),
            });
        };
        let propose = Call::Group(group, Request::Propose(entry));
        match self.nodes.call(peer, propose, PROPOSE_TIMEOUT).await {
            Ok(Response::Propose(answer)) => answer,
            Ok(_) => Err(ProposeError::Failed(format!(
                "node {leader} answered a proposal with another kind"
            ))),
            // It may be gone: a client retries once a leader is known again.
            Err(e) => {
                tracing::debug!(leader, error = %e, "the leader could not be reached");
                Err(ProposeError::NoLeader { leader: None })
            }
        }
    }

    /// Stops Raft on this node.
    pub async fn stop(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// Runs the queues' tasks here only while this node leads *and* holds its lease
/// (`lease`), and learns where the leader is, for redirects.
///
/// The tasks start in the state machine, at the blank entry of the node's own term.
/// They stop as soon as this node no longer leads, or its lease lapses (a leader cut
/// off from the others); a leader whose lease returns in the same term appends an
/// empty entry, at whose applying the state machine starts them again — in the log's
/// order, so that no entry applied meanwhile is missed.
async fn follow_leadership(
    replica: Arc<Replica>,
    runtime: Arc<QueueRuntime>,
    shutdown: CancellationToken,
) {
    let mut metrics = replica.raft.metrics();
    let mut known = None;
    let mut lease = Lease::default();
    let mut resuming: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let (state, term, leader, applied_term) = {
            let m = metrics.borrow_and_update();
            lease.reported(m.millis_since_quorum_ack, tokio::time::Instant::now());
            (
                m.state,
                m.current_term,
                m.current_leader,
                m.last_applied.map(|l| l.leader_id.term),
            )
        };
        loop {
            let holds = lease.holds(tokio::time::Instant::now());
            if state != ServerState::Leader {
                runtime.follow(replica.group, term).await;
            } else if !holds && runtime.runs_tasks(replica.group) {
                tracing::warn!(
                    term,
                    "no majority answered this leader for {:?}: the queues stop here until \
                     one does",
                    lease::LEASE
                );
                runtime.follow(replica.group, term).await;
            } else if holds
                && !runtime.runs_tasks(replica.group)
                // Else the blank entry of the term, on its way, starts them.
                && applied_term == Some(term)
                && resuming.as_ref().is_none_or(|r| r.is_finished())
            {
                tracing::info!(term, "a majority answers again: the queues resume here");
                let replica = Arc::clone(&replica);
                resuming = Some(tokio::spawn(async move {
                    let _ = replica.propose_here(Entry::default()).await;
                }));
            }
            if leader != known {
                known = leader;
                replica
                    .leader_changes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                replica.learn_leader(leader).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return } else { break },
                // Raft reports nothing while nothing happens: the lease is checked anyway.
                () = tokio::time::sleep(lease::CHECK) => {}
            }
        }
    }
}
