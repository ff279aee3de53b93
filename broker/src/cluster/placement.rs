//! Where a new queue goes: a queue group of as many members as it asks replicas, or a
//! new one. Decided by group 1's leader just before it appends the declare, so that
//! every node applies the same placement.
//!
//! Several queues share a group, so the number of groups — and of heartbeats — stays
//! bounded however many queues there are: for each replica count, as many groups as
//! there are voters, each made of `replicas` voters in turn starting at one that leads
//! none of the others first — it forms the group, and so leads it first. The leaders of a cluster's queues are spread
//! over its nodes that way, and a queue joins the group with the fewest queues.

use super::directory::Layout;
use super::raft::NodeId;
use crate::queue::GroupId;

/// Where a queue goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Into this existing group.
    In(GroupId),
    /// Into a new group of these members, the first its first leader.
    New {
        group: GroupId,
        members: Vec<NodeId>,
    },
}

/// Replicas of a queue declared without a count: 3, or every voter of a smaller
/// cluster.
pub(crate) fn default_replicas(voters: usize) -> usize {
    voters.min(3)
}

/// Places a queue with `replicas` replicas (0: [`default_replicas`]; more than there
/// are voters: every voter) among `voters`; a new group is numbered `next_group`.
pub(crate) fn place(
    layout: &Layout,
    voters: &[NodeId],
    replicas: usize,
    next_group: GroupId,
) -> Placement {
    let replicas = match replicas {
        0 => default_replicas(voters.len()),
        n => n.min(voters.len()),
    }
    .max(1);
    // Groups of that size whose members all still vote.
    let sized: Vec<GroupId> = layout
        .groups
        .iter()
        .filter(|(_, g)| {
            g.members.len() == replicas && g.members.iter().all(|n| voters.contains(n))
        })
        .map(|(g, _)| *g)
        .collect();
    if sized.len() >= voters.len() {
        let load = |g: &GroupId| layout.queues_of(*g).count();
        if let Some(g) = sized.iter().min_by_key(|g| (load(g), **g)) {
            return Placement::In(*g);
        }
    }
    // Starting at the first voter that leads none of them first.
    let firsts: Vec<NodeId> = sized
        .iter()
        .filter_map(|g| layout.groups.get(g)?.members.first().copied())
        .collect();
    let start = voters
        .iter()
        .position(|v| !firsts.contains(v))
        .unwrap_or(sized.len() % voters.len().max(1));
    let members = voters
        .iter()
        .cycle()
        .skip(start)
        .take(replicas)
        .copied()
        .collect();
    Placement::New {
        group: next_group,
        members,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tern_storage::GroupRecord;

    use super::*;
    use crate::queue::machine::tests::def;

    fn record(members: &[NodeId]) -> GroupRecord {
        GroupRecord {
            members: members.to_vec(),
            founders: members.to_vec(),
        }
    }

    fn with(groups: &[(GroupId, &[NodeId], usize)]) -> Layout {
        let mut layout = Layout::default();
        let mut id = 1;
        for (g, members, queues) in groups {
            layout.groups.insert(*g, record(members));
            for _ in 0..*queues {
                layout.placed.insert(id, (*g, Arc::new(def("q", 0))));
                id += 1;
            }
        }
        layout
    }

    #[test]
    fn new_groups_start_at_each_voter_in_turn_then_queues_share_the_least_loaded() {
        let voters = [1, 2, 3];
        let mut layout = Layout::default();
        let mut made = Vec::new();
        for next in 2..5 {
            match place(&layout, &voters, 0, next) {
                Placement::New { group, members } => {
                    layout.groups.insert(group, record(&members));
                    made.push(members);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(made, vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]);
        let layout = with(&[(2, &[1, 2, 3], 2), (3, &[2, 3, 1], 1), (4, &[3, 1, 2], 2)]);
        assert_eq!(place(&layout, &voters, 3, 9), Placement::In(3));
    }

    #[test]
    fn replica_counts_are_clamped_and_fewer_replicas_make_smaller_groups() {
        let voters = [1, 2, 3, 4, 5];
        let layout = with(&[(2, &[1, 2, 3], 0)]);
        assert_eq!(
            place(&layout, &voters, 2, 7),
            Placement::New {
                group: 7,
                members: vec![1, 2]
            }
        );
        // The default on five nodes is three; the group of three exists, so the next
        // one starts at the second voter.
        assert_eq!(
            place(&layout, &voters, 0, 7),
            Placement::New {
                group: 7,
                members: vec![2, 3, 4]
            }
        );
        assert_eq!(
            place(&Layout::default(), &[1, 2], 9, 3),
            Placement::New {
                group: 3,
                members: vec![1, 2]
            }
        );
    }

    #[test]
    fn groups_with_a_member_that_no_longer_votes_take_no_new_queue() {
        let layout = with(&[(2, &[1, 2, 4], 0), (3, &[2, 3, 1], 5), (4, &[3, 1, 2], 5)]);
        assert_eq!(
            place(&layout, &[1, 2, 3], 3, 5),
            Placement::New {
                group: 5,
                members: vec![1, 2, 3]
            }
        );
    }
}
