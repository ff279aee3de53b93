//! Requests between nodes (`tern_broker::cluster`): arbitrary bytes read as the body of
//! a request another node sends over a peer link — its first byte the service, then,
//! postcard-encoded, a Raft request (AppendEntries, Vote, InstallSnapshot, a forwarded
//! proposal, a client-address question) or a pub/sub batch (interest and messages).
//! Peers authenticate before they send one, but a buggy or compromised node must not
//! crash another.
//!
//! Invariants checked:
//! * decoding never panics and never allocates what the bytes only claim;
//! * a request that decodes encodes again and decodes to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(same) = tern_broker::cluster::peer_request_round_trip(data) {
        assert!(same, "a decoded request does not survive encoding again");
    }
});
