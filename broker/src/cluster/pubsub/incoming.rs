//! The receiving side: what each other node told this one of its interest, turned into
//! routes to it, and the messages it forwarded, delivered to this node's subscribers.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use bytestring::ByteString;
use tern_codec::subject::{validate_subject, SubjectLimits};
use tern_codec::Envelope;

use super::wire::{self, Batch, Item, Reply};
use crate::cluster::link;
use crate::config::cluster::NodeId;
use crate::filter::MessageView;
use crate::outbound::Wakes;
use crate::router::remote::{InterestKey, RemoteNode};
use crate::router::{RouteCache, Router};

/// Takes the other nodes' batches.
pub(crate) struct Incoming {
    router: Arc<Router>,
    /// This node's limits: a subject another node forwards must meet them too.
    limits: SubjectLimits,
    /// Each other node, as the routes to it name it.
    nodes: super::Outs,
    known: Mutex<HashMap<NodeId, Known>>,
    /// Shared by the nodes' batches (one at a time from each).
    cache: Mutex<RouteCache>,
    /// Forwarded messages delivered to a subscriber here.
    pub delivered: AtomicU64,
}

/// What this node knows of another's interest.
#[derive(Debug, Default)]
struct Known {
    incarnation: u64,
    next_seq: u64,
    /// Whether `keys` is the node's interest (a whole one came, and every batch since).
    synced: bool,
    keys: BTreeSet<InterestKey>,
}

impl Incoming {
    pub fn new(router: Arc<Router>, limits: SubjectLimits, nodes: super::Outs) -> Self {
        Self {
            router,
            limits,
            nodes,
            known: Mutex::new(HashMap::new()),
            cache: Mutex::new(RouteCache::default()),
            delivered: AtomicU64::new(0),
        }
    }

    /// Applies a batch from node `from`; returns the answer.
    ///
    /// # Errors
    ///
    /// The node is no member, or the bytes are no batch.
    pub fn take(&self, from: NodeId, bytes: &[u8]) -> Result<Reply, String> {
        let batch = wire::decode(bytes)?;
        let member = super::lock(&self.nodes).get(&from).cloned();
        let node: Arc<dyn RemoteNode> = match member {
            Some(n) => n,
            None => return Err(format!("node {from} is not a member")),
        };
        let (reply, messages) = self.apply(&node, batch);
        let mut wakes = Wakes::default();
        let mut delivered = 0;
        for (envelope, plain, groups) in messages {
            delivered += self.deliver(envelope, plain, &groups, &mut wakes);
        }
        wakes.wake_all();
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
        Ok(reply)
    }

    /// Node `node` left: its routes go.
    pub fn forget(&self, node: &Arc<dyn RemoteNode>) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = known.remove(&node.node()) {
            for key in &k.keys {
                self.router.remove_remote(node, key);
            }
        }
    }

    /// Applies the interest the batch carries, when it follows on what is known (or
    /// starts afresh with a whole one); returns the answer and the messages.
    fn apply(
        &self,
        node: &Arc<dyn RemoteNode>,
        batch: Batch,
    ) -> (Reply, Vec<(Bytes, bool, Vec<String>)>) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let k = known.entry(node.node()).or_default();
        let in_step = k.synced && k.incarnation == batch.incarnation && k.next_seq == batch.seq;
        let fresh = matches!(batch.items.first(), Some(Item::Interest(_)));
        let applies = in_step || fresh;
        if applies {
            k.incarnation = batch.incarnation;
            k.next_seq = batch.seq.wrapping_add(1);
            k.synced = true;
        } else {
            // Until a whole interest comes, what is known stays as it was.
            k.synced = false;
        }
        let mut messages = Vec::new();
        for item in batch.items {
            match item {
                Item::Message {
                    envelope,
                    plain,
                    groups,
                } => messages.push((envelope, plain, groups)),
                _ if !applies => {}
                Item::Interest(keys) => {
                    let keys: BTreeSet<InterestKey> = keys.into_iter().collect();
                    for gone in k.keys.difference(&keys) {
                        self.router.remove_remote(node, gone);
                    }
                    for new in keys.difference(&k.keys) {
                        self.router.add_remote(node, new);
                    }
                    k.keys = keys;
                }
                Item::Added(key) => {
                    if !k.keys.contains(&key) {
                        self.router.add_remote(node, &key);
                        k.keys.insert(key);
                    }
                }
                Item::Removed(key) => {
                    if k.keys.remove(&key) {
                        self.router.remove_remote(node, &key);
                    }
                }
            }
        }
        let reply = if applies { Reply::Taken } else { Reply::Resync };
        (reply, messages)
    }

    /// Delivers one forwarded message here; returns to how many subscribers.
    fn deliver(&self, envelope: Bytes, plain: bool, groups: &[String], wakes: &mut Wakes) -> u64 {
        let Ok(env) = Envelope::decode_bytes(envelope) else {
            return 0;
        };
        // The sending node checked it; this is against a peer that did not.
        if validate_subject(&env.subject, &self.limits).is_err() {
            return 0;
        }
        let interest = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match self.router.cached(&mut cache, &env.subject) {
                Some(interest) => interest,
                None => self.router.lookup(&mut cache, &env.subject),
            }
        };
        let groups: Vec<ByteString> = groups.iter().map(|g| g.as_str().into()).collect();
        let view = MessageView::new(&env.subject, &env.headers, &env.payload);
        let (delivered, _dropped) = interest.deliver_forwarded(&env, &view, plain, &groups, wakes);
        delivered
    }
}

impl link::Handler for Arc<Incoming> {
    fn handle(&self, from: NodeId, request: Bytes) -> link::HandlerFuture {
        let reply = self.take(from, &request).and_then(|r| wire::encode(&r));
        Box::pin(async move { reply })
    }
}
