//! Clustering: several ternd nodes replicating the durable queues with Raft, and
//! forwarding pub/sub between them.
//!
//! * [`link`]: authenticated, framed request/response links between nodes.
//! * `raft`: the adapter over openraft (the only module that names it).
//! * `replicated`: the journal's log in a cluster.
//! * `pubsub`: QoS 0 pub/sub across nodes, without consensus.
//!
//! One listener per node takes the other nodes' links; the first byte of each request
//! names the service it is for ([`Services`]).

pub mod link;

use std::sync::Arc;

use bytes::Bytes;
use tern_codec::subject::SubjectLimits;
use tern_storage::{RaftLog, SledStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::directory::Directory;
use self::hosting::{GroupStores, Replicas};
use self::link::{Handler, HandlerFuture, LinkConfig};
use self::pubsub::PubSub;
use self::raft::{Groups, Host, Nodes, Recovery, Replica, StartError};
use self::replicated::Proposer;
use crate::config::cluster::{ClusterConfig, NodeId};
use crate::queue::runtime::QueueRuntime;
use crate::queue::FIRST_GROUP;
use crate::router::Router;

/// Decodes `bytes` as a request another node sends over a peer link (what its handler
/// does first) and, when they decode, checks that the request encodes and decodes to
/// the same again: `None` for bytes that are no request, `Some(false)` for a request
/// that does not round-trip. The `peer_request` fuzz target's way in: the first byte
/// names the service, as on the wire.
#[doc(hidden)]
pub fn peer_request_round_trip(bytes: &[u8]) -> Option<bool> {
    let (&service, body) = bytes.split_first()?;
    match service {
        raft::SERVICE => raft::request_round_trip(body),
        pubsub::SERVICE => {
            let batch = pubsub::wire::decode(body).ok()?;
            let again = pubsub::wire::encode(&batch).ok()?;
            Some(pubsub::wire::decode(&again).ok()? == batch)
        }
        _ => None,
    }
}

pub(crate) mod directory;
pub(crate) mod hosting;
pub(crate) mod placement;
pub(crate) mod pubsub;
pub(crate) mod raft;
pub(crate) mod replicated;

/// This node's part of the cluster.
pub(crate) struct Node {
    /// Its member of the first group (the directory, the membership).
    pub replica: Arc<Replica>,
    /// Its members of every group.
    pub replicas: Arc<Replicas>,
    /// How its journal's entries reach the groups.
    pub proposer: Arc<Proposer>,
    pub pubsub: Arc<PubSub>,
}

/// Joins (or forms) the cluster: opens Raft over `store`, starts pub/sub forwarding and
/// listens for the other nodes.
///
/// # Errors
///
/// The store, the listener, the TLS files or Raft could not start.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start(
    config: &ClusterConfig,
    store: Arc<SledStore>,
    cache_bytes: u64,
    runtime: Arc<QueueRuntime>,
    recovery: Recovery,
    router: Arc<Router>,
    limits: SubjectLimits,
    shutdown: CancellationToken,
) -> Result<Node, StartError> {
    let link = Arc::new(LinkConfig::from_cluster(config)?);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let groups = Arc::new(Groups::default());
    let nodes = Arc::new(Nodes::new(
        config.node_id,
        Arc::clone(&link),
        groups.client_addr.clone(),
    ));
    let log = {
        let (store, dir) = (Arc::clone(&store), recovery.data_dir.clone());
        tokio::task::spawn_blocking(move || RaftLog::open(&store, &dir))
            .await
            .map_err(|e| StartError::Raft(e.to_string()))??
    };
    let directory = Arc::new(Directory::default());
    let replicas = Arc::new(Replicas::default());
    let proposer = Arc::new(Proposer::new(
        Arc::clone(&replicas),
        Arc::clone(&directory),
        Arc::clone(&runtime.queues),
        Arc::clone(&router),
    ));
    let host = Arc::new(Host {
        nodes,
        directory,
        groups: Arc::clone(&groups),
        log,
        runtime,
        forwarded: Arc::clone(&proposer) as Arc<dyn raft::Forwarded>,
        shutdown: shutdown.clone(),
    });
    // The first group, of every voter: the lowest id forms it.
    let form = (!config.join).then(|| config.peers.clone().into_iter().collect());
    let stores = GroupStores {
        data_dir: recovery.data_dir.clone(),
        cache_bytes,
        recovery: recovery.clone(),
    };
    let replica = Replica::start(&host, FIRST_GROUP, form, store, recovery).await?;
    replicas.insert(FIRST_GROUP, Arc::clone(&replica));
    tokio::spawn(hosting::replace_departed(
        Arc::clone(&host),
        Arc::clone(&replicas),
    ));
    tokio::spawn(hosting::host_groups(host, Arc::clone(&replicas), stores));
    let pubsub = Arc::new(PubSub::start(config, &link, router, limits, &shutdown));
    // Pub/sub talks to whoever the membership lists, as nodes are added and removed.
    let members = Arc::clone(&pubsub);
    tokio::spawn(
        Arc::clone(&replica).follow_members(move |m| members.set_members(m), shutdown.clone()),
    );
    let services = Services {
        raft: groups,
        pubsub: Arc::new(pubsub.handler()),
    };
    tokio::spawn(link::serve(listener, link, Arc::new(services), shutdown));
    Ok(Node {
        replica,
        replicas,
        proposer,
        pubsub,
    })
}

/// Hands each request from another node to the service its first byte names.
pub(crate) struct Services {
    raft: Arc<dyn Handler>,
    pubsub: Arc<dyn Handler>,
}

impl Handler for Services {
    fn handle(&self, from: NodeId, request: Bytes) -> HandlerFuture {
        let service = request.first().copied();
        let body = request.slice(1.min(request.len())..);
        match service {
            Some(raft::SERVICE) => self.raft.handle(from, body),
            Some(pubsub::SERVICE) => self.pubsub.handle(from, body),
            other => Box::pin(async move { Err(format!("no service {other:?} here")) }),
        }
    }
}

#[cfg(test)]
mod tests {
    /// The `peer_request` fuzz target's seeds are requests of each service (and the
    /// huge-length one is refused).
    #[test]
    fn the_fuzz_seeds_are_requests_of_each_service() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/peer_request");
        let seed = |name: &str| std::fs::read(format!("{dir}/{name}")).unwrap();
        for name in [
            "whois",
            "last_log",
            "vote",
            "propose_empty",
            "pubsub_batch",
            "pubsub_resync_changes",
        ] {
            assert_eq!(
                super::peer_request_round_trip(&seed(name)),
                Some(true),
                "{name}"
            );
        }
        assert_eq!(
            super::peer_request_round_trip(&seed("append_huge_length")),
            None
        );
    }
}
