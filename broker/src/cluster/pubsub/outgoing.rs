//! The sending side: one queue and one sending task per other node.
//!
//! Sessions forward messages into a node's queue without waiting ([`PeerOut`] is the
//! router's [`RemoteNode`]); changes of this node's interest go into every queue. The
//! task sends what is queued as one [`Batch`] at a time and waits for the answer before
//! the next, so the receiver sees changes and messages in the order they happened (a
//! requester's subscription to its inbox before the request). A node that is down or
//! behind loses messages, never memory: past [`QUEUE_BYTES`] of waiting messages new
//! ones are dropped and counted, and a failed batch drops what waits (QoS 0 is at most
//! once; a message delivered seconds late would surprise more than a lost one).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use tern_codec::Envelope;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::wire::{self, Batch, Item, Reply};
use super::SERVICE;
use crate::cluster::link::Peer;
use crate::config::cluster::NodeId;
use crate::router::remote::RemoteNode;
use crate::router::Router;

/// Bytes of messages waiting for one node before further ones are dropped.
pub(crate) const QUEUE_BYTES: usize = 8 << 20;

/// Most message bytes in one batch (a batch is one peer request).
const BATCH_BYTES: usize = 1 << 20;

/// A quiet link still sends an empty batch this often: a receiver that restarted asks
/// for the whole interest again within this time.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a batch may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits after a failed batch, doubling up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Another node, as this one forwards to it.
#[derive(Debug)]
pub(crate) struct PeerOut {
    node: NodeId,
    /// Where the node listens, as the membership says.
    pub addr: String,
    /// Stops the sending task: the node left, or this one shuts down.
    pub stop: CancellationToken,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Messages the node took.
    pub forwarded: AtomicU64,
    /// Messages dropped: over the budget, or in a batch that failed.
    pub dropped: AtomicU64,
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Item>,
    /// Envelope bytes of the messages in `items`.
    bytes: usize,
    /// The next batch starts with the whole interest (and the changes queued before
    /// it are dropped: the snapshot holds them).
    resync: bool,
}

impl PeerOut {
    pub fn new(node: NodeId, addr: String, stop: CancellationToken) -> Self {
        Self {
            node,
            addr,
            stop,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                resync: true,
            }),
            wake: Notify::new(),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Every update is a push, a drain or a flag: a poisoned lock guards whole data.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a change of this node's interest (never dropped: there are at most as
    /// many as this node's own subscriptions change).
    pub fn push_interest(&self, item: Item) {
        self.lock().items.push_back(item);
        self.wake.notify_one();
    }

    /// Takes the next batch's items: the whole interest first when due, then what is
    /// queued, up to [`BATCH_BYTES`] of messages.
    fn take(&self, router: &Router) -> Vec<Item> {
        let mut q = self.lock();
        let mut items = Vec::new();
        if q.resync {
            q.resync = false;
            q.items.retain(|i| matches!(i, Item::Message { .. }));
            items.push(Item::Interest(router.local.snapshot()));
        }
        let mut bytes = 0;
        while bytes < BATCH_BYTES {
            let Some(item) = q.items.pop_front() else {
                break;
            };
            if let Item::Message { envelope, .. } = &item {
                bytes += envelope.len();
            }
            items.push(item);
        }
        q.bytes = q.bytes.saturating_sub(bytes);
        items
    }

    /// A batch failed: the receiver may have lost it, and with it changes of interest.
    /// What waits is dropped (see the module doc).
    fn failed(&self, lost: u64) {
        let mut q = self.lock();
        q.resync = true;
        let before = q.items.len();
        q.items.retain(|i| !matches!(i, Item::Message { .. }));
        q.bytes = 0;
        let dropped = lost + (before - q.items.len()) as u64;
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
    }

    fn resync(&self) {
        self.lock().resync = true;
    }
}

impl RemoteNode for PeerOut {
    fn node(&self) -> u64 {
        self.node
    }

    fn forward(&self, envelope: &Envelope, plain: bool, groups: &[ByteString]) -> bool {
        let wire = envelope.as_ref();
        let len = wire.encoded_len();
        let mut q = self.lock();
        if q.bytes + len > QUEUE_BYTES {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut buf = BytesMut::with_capacity(len);
        if wire.encode(&mut buf).is_err() {
            return false;
        }
        q.bytes += len;
        q.items.push_back(Item::Message {
            envelope: buf.freeze(),
            plain,
            groups: groups.iter().map(ToString::to_string).collect(),
        });
        drop(q);
        self.wake.notify_one();
        true
    }
}

/// Sends `out`'s queue to its node until `out.stop`.
pub(crate) async fn send(out: Arc<PeerOut>, peer: Peer, router: Arc<Router>, incarnation: u64) {
    let shutdown = out.stop.clone();
    let mut seq = 0u64;
    let mut retry = RETRY_MIN;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = out.wake.notified() => {}
            _ = heartbeat.tick() => {}
            () = shutdown.cancelled() => return,
        }
        // Everything queued, one batch after another; at least one (the heartbeat).
        loop {
            let items = out.take(&router);
            let messages = items
                .iter()
                .filter(|i| matches!(i, Item::Message { .. }))
                .count() as u64;
            seq += 1;
            let batch = Batch {
                incarnation,
                seq,
                items,
            };
            match call(&peer, &batch).await {
                Ok(reply) => {
                    retry = RETRY_MIN;
                    out.forwarded.fetch_add(messages, Ordering::Relaxed);
                    if reply == Reply::Resync {
                        out.resync();
                        continue;
                    }
                }
                Err(e) => {
                    tracing::debug!(node = out.node, error = %e, "pub/sub batch failed");
                    out.failed(messages);
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        () = shutdown.cancelled() => return,
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                    break;
                }
            }
            if out.lock().items.is_empty() {
                break;
            }
        }
        heartbeat.reset();
    }
}

async fn call(peer: &Peer, batch: &Batch) -> Result<Reply, String> {
    let body = wire::encode(batch)?;
    let mut request = BytesMut::with_capacity(body.len() + 1);
    request.extend_from_slice(&[SERVICE]);
    request.extend_from_slice(&body);
    let answer = peer
        .call(request.freeze(), CALL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    postcard::from_bytes(&answer).map_err(|e| format!("undecodable pub/sub reply: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::Headers;

    fn envelope(payload: bytes::Bytes) -> Envelope {
        Envelope {
            subject: "a".into(),
            reply_to: None,
            headers: Headers::new(),
            payload,
        }
    }

    #[test]
    fn messages_past_the_budget_are_dropped_and_a_failure_drops_what_waits() {
        let out = PeerOut::new(2, "127.0.0.1:1".into(), CancellationToken::new());
        let router = Router::default();
        let big = bytes::Bytes::from(vec![0u8; 1 << 20]);
        let mut taken = 0;
        while out.forward(&envelope(big.clone()), true, &[]) {
            taken += 1;
        }
        assert_eq!(
            taken,
            QUEUE_BYTES / (1 << 20) - 1,
            "one envelope is a bit over 1 MiB"
        );
        assert_eq!(out.dropped.load(Ordering::Relaxed), 1);
        out.push_interest(Item::Added(crate::router::remote::InterestKey {
            pattern: "x".into(),
            group: None,
        }));
        // The first batch leads with the whole interest, queued changes dropped.
        let first = out.take(&router);
        assert_eq!(first.first(), Some(&Item::Interest(Vec::new())));
        assert!(first
            .iter()
            .skip(1)
            .all(|i| matches!(i, Item::Message { .. })));
        out.failed(first.len() as u64 - 1);
        assert!(out.lock().items.is_empty(), "what waited was dropped");
        assert_eq!(out.lock().bytes, 0);
        assert!(
            out.forward(&envelope(bytes::Bytes::from_static(b"small")), true, &[]),
            "room again"
        );
    }
}
