//! Clustering: several ternd nodes replicating the durable queues with Raft.
//!
//! * [`link`]: authenticated, framed request/response links between nodes.
//! * `raft`: the adapter over openraft (the only module that names it).

pub mod link;
