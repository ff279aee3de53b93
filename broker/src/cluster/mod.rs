//! Clustering: several ternd nodes replicating the durable queues with Raft.
//!
//! * [`link`]: authenticated, framed request/response links between nodes.
//! * `raft`: the adapter over openraft (the only module that names it).
//! * `replicated`: the journal's log in a cluster.

pub mod link;

/// Decodes `bytes` as a request another node sends over a peer link (what its handler
/// does first) and, when they decode, checks that the request encodes and decodes to
/// the same again: `None` for bytes that are no request, `Some(false)` for a request
/// that does not round-trip. The `peer_request` fuzz target's way in.
#[doc(hidden)]
pub fn peer_request_round_trip(bytes: &[u8]) -> Option<bool> {
    raft::request_round_trip(bytes)
}

pub(crate) mod raft;
pub(crate) mod replicated;
