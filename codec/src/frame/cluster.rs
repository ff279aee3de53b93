//! CLUSTER_QUERY, CLUSTER_CHANGE and GROUPS_QUERY (client → server), CLUSTER_INFO and
//! GROUPS_INFO (server → client).
//!
//! ```text
//! CLUSTER_QUERY  id: u32
//! CLUSTER_INFO   id: u32 | node_id: u64 | term: u64 | leader: u64
//!                | members: u16 count, then count × member
//!   member       node_id: u64 | peer_addr: string | client_addr: optional string
//!                | role: u8 (0 voter, 1 learner) | lag: u64
//! CLUSTER_CHANGE id: u32 | op: u8 (1 add, 2 remove) | node_id: u64 | peer_addr: string
//! GROUPS_QUERY   id: u32
//! GROUPS_INFO    id: u32 | groups: u16 count, then count × group
//!   group        group: u64 | leader: u64 | members: u16 count × u64
//!                | queues: u16 count × string
//! ```
//!
//! A server that is not part of a cluster answers CLUSTER_INFO with `node_id` 0 and no
//! members. `leader` is 0 while none is known; `lag` is what the leader knows of each
//! member's log (entries behind), 0 elsewhere.

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::Body;
use crate::codes::FrameType;
use crate::error::{DecodeError, EncodeError};
use crate::wire::{self, Reader};

id_frame!(
    /// Asks for the server's CLUSTER_INFO.
    ClusterQuery
);

/// A member's part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    /// Votes, and holds a replica of every durable queue.
    Voter = 0,
    /// Receives the log to catch up before it becomes a voter.
    Learner = 1,
}

/// One member of the cluster, as the answering node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node_id: u64,
    /// The address other nodes reach it on.
    pub peer_addr: ByteString,
    /// The address its clients connect to, when the answering node knows it.
    pub client_addr: Option<ByteString>,
    pub role: MemberRole,
    /// Log entries it lacks, as the leader knows it (0 on other nodes).
    pub lag: u64,
}

/// The cluster as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub id: u32,
    /// The answering node; 0 when the server runs alone.
    pub node_id: u64,
    pub term: u64,
    /// The node that leads (and runs the queues); 0 while none is known.
    pub leader: u64,
    pub members: Vec<Member>,
}

impl Body for ClusterInfo {
    const TYPE: FrameType = FrameType::ClusterInfo;

    fn body_len(&self) -> usize {
        4 + 8
            + 8
            + 8
            + 2
            + self
                .members
                .iter()
                .map(|m| {
                    8 + wire::string_len(&m.peer_addr)
                        + wire::opt_string_len(m.client_addr.as_deref())
                        + 1
                        + 8
                })
                .sum::<usize>()
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        dst.put_u64(self.node_id);
        dst.put_u64(self.term);
        dst.put_u64(self.leader);
        let count = u16::try_from(self.members.len()).map_err(|_| EncodeError::TooMany {
            what: "members",
            count: self.members.len(),
        })?;
        dst.put_u16(count);
        for m in &self.members {
            dst.put_u64(m.node_id);
            wire::put_string(dst, &m.peer_addr, "peer_addr")?;
            wire::put_opt_string(dst, m.client_addr.as_deref(), "client_addr")?;
            dst.put_u8(m.role as u8);
            dst.put_u64(m.lag);
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let id = r.u32("id")?;
        let node_id = r.u64("node_id")?;
        let term = r.u64("term")?;
        let leader = r.u64("leader")?;
        let count = r.u16("member count")?;
        // Each member takes at least 21 bytes of a frame the decoder already accepted.
        let mut members = Vec::with_capacity(usize::from(count).min(16));
        for _ in 0..count {
            members.push(Member {
                node_id: r.u64("node_id")?,
                peer_addr: r.string("peer_addr")?,
                client_addr: r.opt_string("client_addr")?,
                role: match r.u8("role")? {
                    0 => MemberRole::Voter,
                    1 => MemberRole::Learner,
                    other => return Err(r.invalid("role", u64::from(other))),
                },
                lag: r.u64("lag")?,
            });
        }
        Ok(Self {
            id,
            node_id,
            term,
            leader,
            members,
        })
    }
}

/// A change of the cluster's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterOp {
    /// Add node `node_id`, reached at the peer address: it catches up as a learner,
    /// then becomes a voter.
    Add { node_id: u64, peer_addr: ByteString },
    /// Remove node `node_id`.
    Remove { node_id: u64 },
}

/// Asks the cluster to change its membership; answered OK once it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterChange {
    pub id: u32,
    pub op: ClusterOp,
}

const OP_ADD: u8 = 1;
const OP_REMOVE: u8 = 2;

impl Body for ClusterChange {
    const TYPE: FrameType = FrameType::ClusterChange;

    fn body_len(&self) -> usize {
        let addr = match &self.op {
            ClusterOp::Add { peer_addr, .. } => peer_addr.len(),
            ClusterOp::Remove { .. } => 0,
        };
        4 + 1 + 8 + 2 + addr
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        match &self.op {
            ClusterOp::Add { node_id, peer_addr } => {
                dst.put_u8(OP_ADD);
                dst.put_u64(*node_id);
                wire::put_string(dst, peer_addr, "peer_addr")?;
            }
            ClusterOp::Remove { node_id } => {
                dst.put_u8(OP_REMOVE);
                dst.put_u64(*node_id);
                wire::put_string(dst, "", "peer_addr")?;
            }
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let id = r.u32("id")?;
        let op = r.u8("op")?;
        let node_id = r.u64("node_id")?;
        let peer_addr = r.string("peer_addr")?;
        let op = match op {
            OP_ADD => ClusterOp::Add { node_id, peer_addr },
            // The address is for an add only: one here would not survive encoding.
            OP_REMOVE if peer_addr.is_empty() => ClusterOp::Remove { node_id },
            OP_REMOVE => return Err(r.invalid("peer_addr length", peer_addr.len() as u64)),
            other => return Err(r.invalid("op", u64::from(other))),
        };
        Ok(Self { id, op })
    }
}

id_frame!(
    /// Asks for the server's GROUPS_INFO.
    GroupsQuery
);

/// A Raft group of the cluster and the queues it holds, as the answering node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub group: u64,
    /// Its leader, which runs its queues; 0 while the answering node knows none.
    pub leader: u64,
    /// The nodes that hold a replica of its queues, ascending.
    pub members: Vec<u64>,
    /// Its queues, by name.
    pub queues: Vec<ByteString>,
}

/// The cluster's groups as the answering node knows them; none when it runs alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupsInfo {
    pub id: u32,
    pub groups: Vec<GroupInfo>,
}

fn count(what: &'static str, n: usize) -> Result<u16, EncodeError> {
    u16::try_from(n).map_err(|_| EncodeError::TooMany { what, count: n })
}

impl Body for GroupsInfo {
    const TYPE: FrameType = FrameType::GroupsInfo;

    fn body_len(&self) -> usize {
        4 + 2
            + self
                .groups
                .iter()
                .map(|g| {
                    8 + 8
                        + 2
                        + 8 * g.members.len()
                        + 2
                        + g.queues.iter().map(|q| wire::string_len(q)).sum::<usize>()
                })
                .sum::<usize>()
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.id);
        dst.put_u16(count("groups", self.groups.len())?);
        for g in &self.groups {
            dst.put_u64(g.group);
            dst.put_u64(g.leader);
            dst.put_u16(count("group members", g.members.len())?);
            for m in &g.members {
                dst.put_u64(*m);
            }
            dst.put_u16(count("group queues", g.queues.len())?);
            for q in &g.queues {
                wire::put_string(dst, q, "queue")?;
            }
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let id = r.u32("id")?;
        let n = r.u16("group count")?;
        // Each count is bounded by what the frame holds, which the decoder accepted.
        let mut groups = Vec::with_capacity(usize::from(n).min(16));
        for _ in 0..n {
            let group = r.u64("group")?;
            let leader = r.u64("leader")?;
            let members_n = r.u16("group member count")?;
            let mut members = Vec::with_capacity(usize::from(members_n).min(16));
            for _ in 0..members_n {
                members.push(r.u64("group member")?);
            }
            let queues_n = r.u16("group queue count")?;
            let mut queues = Vec::with_capacity(usize::from(queues_n).min(64));
            for _ in 0..queues_n {
                queues.push(r.string("queue")?);
            }
            groups.push(GroupInfo {
                group,
                leader,
                members,
                queues,
            });
        }
        Ok(Self { id, groups })
    }
}
