//! Raft's messages between nodes, over the cluster's links ([`link`](crate::cluster::link)):
//! the calling side (openraft's network factory) and the answering side (a link
//! handler that hands each request to the local Raft).
//!
//! Requests and responses are postcard-encoded [`Call`] / [`Response`] values. A call is
//! for one of the node's Raft groups (by its [`GroupId`]) or for the node itself. Besides
//! openraft's three RPCs, a follower sends the leader its journal's entries to propose
//! ([`Request::Propose`]): every node accepts publishes and declares, only the leader
//! appends to the log.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::LogId;
use serde::{Deserialize, Serialize};

use super::{Answers, GroupId, Member, NodeId, ProposeError, Raft, TypeConfig};
use crate::cluster::link::{self, LinkConfig, LinkError, Peer};
use crate::queue::machine::Entry;

/// What one node asks another over the Raft service.
// Built for one call and encoded at once: never kept, so its size costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Call {
    /// For the other node's member of a group.
    Group(GroupId, Request),
    /// The address this node's clients connect to, to redirect clients to it.
    Whois,
}

/// A message for another node's member of a group.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// An entry for the leader to append, from a follower's journal.
    Propose(Entry),
    /// This node's last log id: whether it would vote for the asker, as far as logs go
    /// (`raft::campaign_only_when_electable`).
    LastLog,
}

/// The answer to a [`Call`], of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Propose(Result<Answers, ProposeError>),
    Whois(Option<String>),
    LastLog(Option<LogId<NodeId>>),
}

/// How long a proposal forwarded to the leader may take: a majority's fsync and the
/// queue tasks taking the messages, normally milliseconds. A leader cut off from this
/// node answers nothing (no reset comes through a partition), and the follower's
/// journal waits for the answer, so the bound is short: past it the publishers are told
/// `not_leader` and send again (a QoS 2 resend is deduplicated, should the proposal
/// have been applied after all).
pub(crate) const PROPOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// A call as another node sent it: outside input, postcard-decoded (the
/// `peer_request` fuzz target drives this).
///
/// # Errors
///
/// The bytes are not a call of this version.
pub(crate) fn decode(bytes: &[u8]) -> Result<Call, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("undecodable raft request: {e}"))
}

/// Sends `call` to `peer` and decodes the answer.
pub(crate) async fn call(
    peer: &Peer,
    call: &Call,
    timeout: Duration,
) -> Result<Response, LinkError> {
    let bytes = vec![super::SERVICE];
    let bytes = postcard::to_extend(call, bytes)
        .map_err(|e| LinkError::Remote(format!("cannot encode a raft request: {e}")))?;
    let answer = peer.call(Bytes::from(bytes), timeout).await?;
    postcard::from_bytes(&answer)
        .map_err(|e| LinkError::Remote(format!("undecodable raft response: {e}")))
}

/// One group's openraft way to the other nodes.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub link: Arc<LinkConfig>,
    pub group: GroupId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Connection {
        Connection {
            peer: Peer::new(Arc::clone(&self.link), target, node.addr.clone()),
            target,
            group: self.group,
        }
    }
}

/// One group's openraft way to one node.
pub(crate) struct Connection {
    peer: Peer,
    target: NodeId,
    group: GroupId,
}

impl Connection {
    async fn call<E: std::error::Error>(
        &self,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, Member, E>> {
        call(
            &self.peer,
            &Call::Group(self.group, request),
            option.hard_ttl(),
        )
        .await
        .map_err(|e| match e {
            // Down, or refusing us: openraft backs off before trying again.
            LinkError::Unreachable(_) | LinkError::Refused(_) => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            LinkError::Timeout | LinkError::Remote(_) | LinkError::TooLarge { .. } => {
                RPCError::Network(NetworkError::new(&e))
            }
        })
    }

    fn unexpected<E: std::error::Error>(&self, what: &str) -> RPCError<NodeId, Member, E> {
        let e = LinkError::Remote(format!(
            "node {} answered {what} with another kind",
            self.target
        ));
        RPCError::Network(NetworkError::new(&e))
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, Member, E> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.call(Request::AppendEntries(rpc), &option).await? {
            Response::AppendEntries(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.unexpected("append-entries")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.unexpected("install-snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Response::Vote(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.unexpected("vote")),
        }
    }
}

/// Answers other nodes' requests to one group with this node's member of it.
pub(crate) struct Answerer {
    pub raft: Raft,
    /// This node's Raft log, for [`Request::LastLog`].
    pub log: super::log_store::LogStore,
    /// When a leader last reached this member, for the election gate.
    pub heard: Arc<super::gate::Heard>,
    /// Whether it may vote yet, after a restart.
    pub fence: super::lease::VoteFence,
    /// What takes forwarded entries, when not simply this group's Raft.
    pub forwarded: Option<Arc<dyn super::Forwarded>>,
}

impl Answerer {
    async fn answer(&self, request: Request) -> Result<Response, String> {
        Ok(match request {
            Request::AppendEntries(rpc) => {
                let answer = self.raft.append_entries(rpc).await;
                if let Ok(response) = &answer {
                    self.heard.answered(response);
                }
                Response::AppendEntries(answer)
            }
            Request::Vote(rpc) => {
                if !self.fence.may_vote(tokio::time::Instant::now()) {
                    // As a node still down would: no answer.
                    return Err("restarted within a leader's lease: not voting yet".into());
                }
                Response::Vote(self.raft.vote(rpc).await)
            }
            Request::InstallSnapshot(rpc) => {
                Response::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            Request::Propose(entry) => Response::Propose(match &self.forwarded {
                Some(forwarded) => Arc::clone(forwarded).propose(entry).await,
                None => super::propose_here(&self.raft, entry).await,
            }),
            Request::LastLog => {
                let state = self
                    .log
                    .clone()
                    .get_log_state()
                    .await
                    .map_err(|e| e.to_string())?;
                Response::LastLog(state.last_log_id)
            }
        })
    }
}

/// Answers other nodes' calls: each group's by this node's member of it, and the
/// node's own.
#[derive(Default)]
pub(crate) struct Groups {
    members: RwLock<HashMap<GroupId, Arc<Answerer>>>,
    pub client_addr: super::ClientAddr,
}

impl Groups {
    /// Has `answerer` answer for `group` from now on.
    pub fn insert(&self, group: GroupId, answerer: Arc<Answerer>) {
        self.members
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, answerer);
    }

    fn member(&self, group: GroupId) -> Option<Arc<Answerer>> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .cloned()
    }
}

impl link::Handler for Groups {
    fn handle(&self, _from: NodeId, request: Bytes) -> link::HandlerFuture {
        let call = decode(&request);
        let client_addr = self.client_addr.get();
        let member = match &call {
            Ok(Call::Group(group, _)) => self.member(*group),
            _ => None,
        };
        Box::pin(async move {
            let response = match call? {
                Call::Whois => Response::Whois(client_addr),
                Call::Group(group, request) => {
                    let Some(member) = member else {
                        return Err(format!("this node has no member of group {group}"));
                    };
                    member.answer(request).await?
                }
            };
            postcard::to_stdvec(&response)
                .map(Bytes::from)
                .map_err(|e| format!("cannot encode a raft response: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::Vote;

    use super::*;

    #[test]
    fn requests_survive_encoding_and_garbage_is_refused() {
        let requests = [
            Call::Whois,
            Call::Group(1, Request::LastLog),
            Call::Group(0, Request::Vote(VoteRequest::new(Vote::new(3, 2), None))),
            Call::Group(7, Request::Propose(Entry::default())),
        ];
        for r in &requests {
            let bytes = postcard::to_stdvec(r).unwrap();
            assert_eq!(
                super::super::request_round_trip(&bytes),
                Some(true),
                "{r:?}"
            );
        }
        for garbage in [&b""[..], b"\xff", b"\x00\xff\xff\xff\xff\x0f"] {
            assert!(decode(garbage).is_err(), "{garbage:02x?}");
        }
    }
}
