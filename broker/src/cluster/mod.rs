//! Clustering: several ternd nodes replicating the durable queues with Raft.
//!
//! * [`link`]: authenticated, framed request/response links between nodes.
//! * `raft`: the adapter over openraft (the only module that names it).
//! * `replicated`: the journal's log in a cluster.

pub mod link;
pub(crate) mod raft;
pub(crate) mod replicated;
