//! Core pub/sub across the nodes of a cluster, without consensus (as NATS routes do).
//!
//! Each node tells every other which subjects its clients subscribe to — pattern and
//! queue group, as they come and go ([`LocalInterest`]) — and routes to the other
//! nodes' subscriptions like to its own: a message published here goes once to each
//! node with subscribers, which delivers it to its own clients only. A queue group is
//! served here when it has a member here, else by one node picked among those with
//! members. So request-reply works across nodes (the requester's inbox subscription is
//! interest like any other), and a queue group spans the cluster.
//!
//! This is QoS 0's path: a message in flight to a node that dies is lost, and a
//! subscription made on one node receives what another publishes once that node has
//! heard of it (a batch later, normally well under a millisecond on a LAN). Durable
//! queues do not use it: they are replicated through Raft.
//!
//! * `wire`: the batches between nodes.
//! * `outgoing`: one queue and sending task per other node.
//! * `incoming`: the other nodes' interest and messages, taken here.
//!
//! [`LocalInterest`]: crate::router::remote::LocalInterest

mod incoming;
mod outgoing;
pub(crate) mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tern_codec::subject::SubjectLimits;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::incoming::Incoming;
use self::outgoing::PeerOut;
use self::wire::Item;
use crate::cluster::link::{LinkConfig, Peer};
use crate::config::cluster::{ClusterConfig, NodeId};
use crate::router::remote::{InterestChange, RemoteNode};
use crate::router::Router;

/// The first byte of a pub/sub request on a peer link (see [`crate::cluster::Services`]).
pub(crate) const SERVICE: u8 = 2;

/// One other node's traffic, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PeerTraffic {
    pub node: NodeId,
    /// Messages forwarded to it and taken.
    pub forwarded: u64,
    /// Messages for it dropped (its link down or behind).
    pub dropped: u64,
}

/// The other nodes this one forwards to, by id.
type Outs = Arc<Mutex<HashMap<NodeId, Arc<PeerOut>>>>;

/// This node's part of the cluster's pub/sub.
pub(crate) struct PubSub {
    node: NodeId,
    link: Arc<LinkConfig>,
    router: Arc<Router>,
    incarnation: u64,
    shutdown: CancellationToken,
    outs: Outs,
    incoming: Arc<Incoming>,
}

impl PubSub {
    /// Starts forwarding this node's interest and messages to the members `config`
    /// lists (then to those [`PubSub::set_members`] gives), until `shutdown`;
    /// [`PubSub::handler`] takes theirs.
    pub fn start(
        config: &ClusterConfig,
        link: &Arc<LinkConfig>,
        router: Arc<Router>,
        limits: SubjectLimits,
        shutdown: &CancellationToken,
    ) -> Self {
        let outs = Outs::default();
        let (tx, rx) = mpsc::unbounded_channel();
        // Each node's first batch carries the whole interest; changes from now on follow.
        router.local.listen(tx);
        tokio::spawn(tell(rx, Arc::clone(&outs), shutdown.clone()));
        let pubsub = Self {
            node: config.node_id,
            link: Arc::clone(link),
            incoming: Arc::new(Incoming::new(
                Arc::clone(&router),
                limits,
                Arc::clone(&outs),
            )),
            router,
            incarnation: fastrand::u64(1..),
            shutdown: shutdown.clone(),
            outs,
        };
        if !config.join {
            pubsub.set_members(&config.peers);
        }
        pubsub
    }

    /// Forwards to exactly these nodes (this one aside): a new member gets a queue and
    /// a sending task, a member gone loses them and its routes here.
    pub fn set_members(&self, members: &BTreeMap<NodeId, String>) {
        let mut outs = lock(&self.outs);
        let gone: Vec<NodeId> = outs
            .iter()
            .filter(|(id, out)| members.get(id) != Some(&out.addr))
            .map(|(id, _)| *id)
            .collect();
        let gone: Vec<Arc<PeerOut>> = gone.iter().filter_map(|id| outs.remove(id)).collect();
        for out in &gone {
            out.stop.cancel();
        }
        for (&id, addr) in members {
            if id == self.node || outs.contains_key(&id) {
                continue;
            }
            let out = Arc::new(PeerOut::new(id, addr.clone(), self.shutdown.child_token()));
            let peer = Peer::new(Arc::clone(&self.link), id, addr.clone());
            tokio::spawn(outgoing::send(
                Arc::clone(&out),
                peer,
                Arc::clone(&self.router),
                self.incarnation,
            ));
            outs.insert(id, out);
        }
        drop(outs);
        for out in gone {
            self.incoming.forget(&(out as Arc<dyn RemoteNode>));
        }
    }

    /// What answers the other nodes' batches.
    pub fn handler(&self) -> Arc<Incoming> {
        Arc::clone(&self.incoming)
    }

    /// Each other node's traffic.
    pub fn traffic(&self) -> Vec<PeerTraffic> {
        let mut traffic: Vec<PeerTraffic> = lock(&self.outs)
            .values()
            .map(|o| PeerTraffic {
                node: o.node(),
                forwarded: o.forwarded.load(Ordering::Relaxed),
                dropped: o.dropped.load(Ordering::Relaxed),
            })
            .collect();
        traffic.sort_by_key(|t| t.node);
        traffic
    }

    /// Forwarded messages this node delivered to its subscribers.
    pub fn delivered(&self) -> u64 {
        self.incoming.delivered.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSub")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn lock(outs: &Outs) -> std::sync::MutexGuard<'_, HashMap<NodeId, Arc<PeerOut>>> {
    // Every update is one map operation: a poisoned lock guards whole data.
    outs.lock().unwrap_or_else(|p| p.into_inner())
}

/// Passes each change of this node's interest to every other node's queue.
async fn tell(
    mut changes: mpsc::UnboundedReceiver<InterestChange>,
    outs: Outs,
    shutdown: CancellationToken,
) {
    loop {
        let change = tokio::select! {
            change = changes.recv() => change,
            () = shutdown.cancelled() => return,
        };
        let Some(change) = change else {
            return;
        };
        let item = match change {
            InterestChange::Added(key) => Item::Added(key),
            InterestChange::Removed(key) => Item::Removed(key),
        };
        for out in lock(&outs).values() {
            out.push_interest(item.clone());
        }
    }
}
