//! CLUSTER_QUERY, GROUPS_QUERY and CLUSTER_CHANGE: the cluster and its groups as this
//! node sees them, and changes of its membership.

use std::sync::Arc;

use tern_codec::{
    ClusterChange, ClusterInfo, ClusterOp, ClusterQuery, ErrorCode, ErrorFrame, GroupInfo,
    GroupsInfo, GroupsQuery, Member, MemberRole, Ok as OkFrame,
};

use super::Reject;
use crate::cluster::raft::MembershipError;
use crate::outbound::Wakes;
use crate::session::state::Session;

/// Answers with the cluster's CLUSTER_INFO (node 0 and no members when alone).
///
/// # Errors
///
/// None.
pub(crate) fn query(session: &mut Session, q: ClusterQuery) -> Result<(), Reject> {
    let info = match &session.shared.durable.replica {
        None => ClusterInfo {
            id: q.id,
            node_id: 0,
            term: 0,
            leader: 0,
            members: Vec::new(),
        },
        Some(replica) => {
            let status = replica.status();
            ClusterInfo {
                id: q.id,
                node_id: status.node,
                term: status.term,
                leader: status.leader.unwrap_or(0),
                members: replica
                    .members()
                    .into_iter()
                    .map(|m| Member {
                        node_id: m.node,
                        peer_addr: m.peer_addr.into(),
                        client_addr: m.client_addr.map(Into::into),
                        role: if m.voter {
                            MemberRole::Voter
                        } else {
                            MemberRole::Learner
                        },
                        lag: m.lag,
                    })
                    .collect(),
            }
        }
    };
    session.reply(&info);
    Ok(())
}

/// Answers with the cluster's GROUPS_INFO (none when alone).
///
/// # Errors
///
/// None.
pub(crate) fn groups(session: &mut Session, q: GroupsQuery) -> Result<(), Reject> {
    let groups = session
        .shared
        .durable
        .proposer
        .as_ref()
        .map(|p| p.groups())
        .unwrap_or_default()
        .into_iter()
        .map(|g| GroupInfo {
            group: g.group,
            leader: g.leader.unwrap_or(0),
            members: g.members,
            queues: g.queues.into_iter().map(Into::into).collect(),
        })
        .collect();
    session.reply(&GroupsInfo { id: q.id, groups });
    Ok(())
}

/// Adds or removes a node; answered OK once the new membership is committed.
///
/// # Errors
///
/// No `admin` permission, or a server that runs alone.
pub(crate) fn change(session: &mut Session, c: ClusterChange) -> Result<(), Reject> {
    if !session.principal.permissions.admin {
        return Err(Reject::new(
            ErrorCode::PermissionDenied,
            "not allowed to change the cluster's membership",
        ));
    }
    let Some(replica) = session.shared.durable.replica.clone() else {
        return Err(Reject::new(
            ErrorCode::MembershipRefused,
            "this server runs alone: start it with [cluster] settings to form a cluster",
        ));
    };
    let outbound = Arc::clone(&session.outbound);
    tokio::spawn(async move {
        let result = match c.op {
            ClusterOp::Add { node_id, peer_addr } => {
                replica.add_node(node_id, peer_addr.to_string()).await
            }
            ClusterOp::Remove { node_id } => replica.remove_node(node_id).await,
        };
        let mut wakes = Wakes::default();
        match result {
            Ok(()) => outbound.push_control(&OkFrame { id: c.id }, &mut wakes),
            Err(e) => {
                let code = match e {
                    MembershipError::NotLeader(_) => ErrorCode::NotLeader,
                    MembershipError::Refused(_) => ErrorCode::MembershipRefused,
                };
                outbound.push_control(&ErrorFrame::new(c.id, code, e.to_string()), &mut wakes);
            }
        }
        wakes.wake_all();
    });
    Ok(())
}
