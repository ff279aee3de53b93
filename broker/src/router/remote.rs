//! The router's side of a cluster's pub/sub: what this node's clients subscribe to,
//! told to the other nodes as it changes, and the other nodes' subscriptions, routed
//! to like local ones (`Route::Remote`).
//!
//! A node forwards a message to another only for that node's own clients, once per
//! node, and a forwarded message is never forwarded again: with every node linked to
//! every other, one hop reaches everyone. The cluster's `pubsub` module carries both
//! across the peer links; the router knows a remote node only as a [`RemoteNode`].

use std::collections::HashMap;
use std::sync::Mutex;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use tern_codec::Envelope;
use tokio::sync::mpsc;

/// What a subscription asks for, as other nodes need to know it: its pattern and queue
/// group. Filters are left out: the node with the subscription applies them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct InterestKey {
    pub pattern: String,
    pub group: Option<String>,
}

/// A change of this node's interest: the first subscription with a key came, or the
/// last one went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InterestChange {
    Added(InterestKey),
    Removed(InterestKey),
}

/// Another node, as the router forwards to it.
pub(crate) trait RemoteNode: Send + Sync + std::fmt::Debug {
    /// The node's id.
    fn node(&self) -> u64;

    /// Sends it the message for its plain subscribers (`plain`) and for one member of
    /// each of `groups`. Returns false when the message was dropped (the node's link is
    /// down or behind by more than its budget).
    fn forward(&self, envelope: &Envelope, plain: bool, groups: &[ByteString]) -> bool;
}

/// This node's subscriptions, counted by key, and who listens to the changes.
#[derive(Debug, Default)]
pub(crate) struct LocalInterest {
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    counts: HashMap<InterestKey, u32>,
    listener: Option<mpsc::UnboundedSender<InterestChange>>,
}

impl LocalInterest {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Every update is one map operation: a poisoned lock guards whole data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, key: InterestKey) {
        let mut state = self.lock();
        let count = state.counts.entry(key.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            state.tell(InterestChange::Added(key));
        }
    }

    pub fn remove(&self, key: InterestKey) {
        let mut state = self.lock();
        let Some(count) = state.counts.get_mut(&key) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            state.counts.remove(&key);
            state.tell(InterestChange::Removed(key));
        }
    }

    /// Every key this node has now, sorted; and from now on each change goes to
    /// `listener` (replacing any earlier one). Both under one lock, so the changes
    /// sent are exactly those after the snapshot.
    pub fn listen(&self, listener: mpsc::UnboundedSender<InterestChange>) -> Vec<InterestKey> {
        let mut state = self.lock();
        state.listener = Some(listener);
        state.snapshot()
    }

    /// Every key this node has now, sorted.
    pub fn snapshot(&self) -> Vec<InterestKey> {
        self.lock().snapshot()
    }
}

impl Counts {
    fn tell(&mut self, change: InterestChange) {
        if let Some(tx) = &self.listener {
            if tx.send(change).is_err() {
                self.listener = None;
            }
        }
    }

    fn snapshot(&self) -> Vec<InterestKey> {
        let mut keys: Vec<InterestKey> = self.counts.keys().cloned().collect();
        keys.sort();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str, g: Option<&str>) -> InterestKey {
        InterestKey {
            pattern: p.into(),
            group: g.map(Into::into),
        }
    }

    #[test]
    fn only_the_first_and_the_last_subscription_of_a_key_are_news() {
        let interest = LocalInterest::default();
        interest.add(key("a", None));
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert_eq!(interest.listen(tx), [key("a", None)], "what came before");
        interest.add(key("a", None));
        interest.add(key("a", Some("g")));
        interest.remove(key("a", None));
        interest.remove(key("a", None));
        interest.remove(key("never", None));
        let mut got = Vec::new();
        while let Ok(c) = rx.try_recv() {
            got.push(c);
        }
        assert_eq!(
            got,
            [
                InterestChange::Added(key("a", Some("g"))),
                InterestChange::Removed(key("a", None)),
            ]
        );
        assert_eq!(interest.snapshot(), [key("a", Some("g"))]);
    }
}
