//! The network of the simulation: every call takes a delay drawn from the run's seed
//! each way, and is lost (unreachable going, a network error coming back) when a
//! partition separates the two nodes or the target is down.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::error::{
    Fatal, Infallible, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::LogId;

use super::super::gate::Heard;
use super::super::lease::VoteFence;
use super::{Member, NodeId, SimConfig, SimLog, SimRaft, SimRng};

#[derive(Default)]
pub(super) struct Wires {
    /// The nodes that are up.
    pub up: BTreeMap<NodeId, Station>,
    /// Each node's side of the partition: nodes talk only to nodes on their side.
    pub side: BTreeMap<NodeId, u8>,
}

impl Wires {
    fn reaches(&self, from: NodeId, to: NodeId) -> bool {
        self.side.get(&from).copied().unwrap_or(0) == self.side.get(&to).copied().unwrap_or(0)
    }
}

/// A node that is up, as the others reach it.
#[derive(Clone)]
pub(super) struct Station {
    pub incarnation: u64,
    pub raft: SimRaft,
    pub log: SimLog,
    /// When it last accepted an AppendEntries, for its election gate.
    pub heard: Arc<Heard>,
    /// Whether it may vote yet, after a restart.
    pub fence: VoteFence,
}

#[derive(Clone, Default)]
pub(super) struct Net(Arc<Mutex<Wires>>);

impl Net {
    pub fn lock(&self) -> MutexGuard<'_, Wires> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One node's way to the others.
#[derive(Clone)]
pub(super) struct NodeNet {
    pub from: NodeId,
    /// A crashed incarnation's calls reach nobody.
    pub incarnation: u64,
    pub net: Net,
    pub rng: SimRng,
}

impl NodeNet {
    fn is_up(&self, wires: &Wires) -> bool {
        wires
            .up
            .get(&self.from)
            .is_some_and(|station| station.incarnation == self.incarnation)
    }
}

impl NodeNet {
    /// `to`'s last log id, if it answers a call now, there and back.
    pub async fn last_log(self, to: NodeId) -> Option<Option<LogId<NodeId>>> {
        let wire = Wire {
            node: self,
            target: to,
        };
        let call = wire.carry(|mut to| async move {
            let state = to.log.get_log_state().await;
            state
                .map(|s| s.last_log_id)
                .map_err(|e| RaftError::<NodeId, Infallible>::Fatal(Fatal::StorageError(e)))
        });
        call.await.ok()
    }
}

impl RaftNetworkFactory<SimConfig> for NodeNet {
    type Network = Wire;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> Wire {
        Wire {
            node: self.clone(),
            target,
        }
    }
}

/// From one node to another.
pub(super) struct Wire {
    node: NodeNet,
    target: NodeId,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl Wire {
    /// Carries a request to the target and its answer back, as `call` computes it there.
    async fn carry<T, E, F, Fut>(&self, call: F) -> RpcResult<T, E>
    where
        E: std::error::Error,
        F: FnOnce(Station) -> Fut,
        Fut: std::future::Future<Output = Result<T, RaftError<NodeId, E>>>,
    {
        let lost = || std::io::Error::other(format!("{} -/- {}", self.node.from, self.target));
        tokio::time::sleep(self.delay()).await;
        let target = {
            let wires = self.node.net.lock();
            wires
                .up
                .get(&self.target)
                .filter(|_| self.node.is_up(&wires) && wires.reaches(self.node.from, self.target))
                .cloned()
        };
        let Some(target) = target else {
            return Err(RPCError::Unreachable(Unreachable::new(&lost())));
        };
        let answer = call(target).await;
        tokio::time::sleep(self.delay()).await;
        let back = {
            let wires = self.node.net.lock();
            self.node.is_up(&wires)
                && wires.up.contains_key(&self.target)
                && wires.reaches(self.target, self.node.from)
        };
        if !back {
            return Err(RPCError::Network(NetworkError::new(&lost())));
        }
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    fn delay(&self) -> Duration {
        Duration::from_micros(self.node.rng.u64(200..10_000))
    }
}

impl RaftNetwork<SimConfig> for Wire {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.carry(|to| async move {
            let answer = to.raft.append_entries(rpc).await;
            if let Ok(response) = &answer {
                to.heard.answered(response);
            }
            answer
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<SimConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.carry(|to| async move { to.raft.install_snapshot(rpc).await })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        let answer = self.carry(|to| async move {
            if !to.fence.may_vote(tokio::time::Instant::now()) {
                return Ok(None);
            }
            to.raft.vote(rpc).await.map(Some)
        });
        answer.await?.ok_or_else(|| {
            let silent = std::io::Error::other("restarted within a lease: not voting yet");
            RPCError::Unreachable(Unreachable::new(&silent))
        })
    }
}
