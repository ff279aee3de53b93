//! Echo suppression: MQTT 3.1.1 has no "no local" subscription option, so a message the
//! bridge exports to a topic that one of its own imports subscribes to comes straight
//! back. The bridge remembers what it exported there (a hash of topic and payload, for
//! a short while, a bounded number of them) and drops the first such message that
//! comes back.
//!
//! A device that publishes the very same payload on the very same topic within that
//! window has its message taken for the echo; the tern side then still sees that
//! topic and payload once.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{Duration, Instant};

/// How long an exported message is expected back.
const WINDOW: Duration = Duration::from_secs(30);
/// Most exported messages remembered; the oldest are forgotten first.
const CAPACITY: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct EchoFilter {
    /// Hashes in the order they were recorded, with when.
    order: VecDeque<(Instant, u64)>,
    /// How many unclaimed echoes each hash stands for.
    pending: HashMap<u64, u32>,
    hasher: std::collections::hash_map::RandomState,
}

impl EchoFilter {
    fn key(&self, topic: &str, payload: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        topic.hash(&mut h);
        payload.hash(&mut h);
        h.finish()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.order.front() {
            if self.order.len() <= CAPACITY && now.duration_since(at) < WINDOW {
                break;
            }
            self.order.pop_front();
            self.release(key);
        }
    }

    fn release(&mut self, key: u64) {
        if let Some(n) = self.pending.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&key);
            }
        }
    }

    /// Remembers that `payload` was exported to `topic`.
    pub fn record(&mut self, topic: &str, payload: &[u8]) {
        let now = Instant::now();
        let key = self.key(topic, payload);
        self.order.push_back((now, key));
        *self.pending.entry(key).or_insert(0) += 1;
        self.expire(now);
    }

    /// Whether a message on `topic` is the echo of an export (and forgets it if so).
    pub fn take(&mut self, topic: &str, payload: &[u8]) -> bool {
        self.expire(Instant::now());
        if self.pending.is_empty() {
            return false;
        }
        let key = self.key(topic, payload);
        if !self.pending.contains_key(&key) {
            return false;
        }
        self.release(key);
        // The entry in `order` stays until it expires; releasing it then finds the
        // count already lower, so remove the first matching entry now instead.
        if let Some(i) = self.order.iter().position(|&(_, k)| k == key) {
            self.order.remove(i);
        }
        true
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_is_taken_once() {
        let mut f = EchoFilter::default();
        f.record("x/1", b"a");
        f.record("x/1", b"a");
        assert!(!f.take("x/1", b"b"));
        assert!(!f.take("x/2", b"a"));
        assert!(f.take("x/1", b"a"));
        assert!(f.take("x/1", b"a"));
        assert!(!f.take("x/1", b"a"));
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn it_is_bounded() {
        let mut f = EchoFilter::default();
        for i in 0..CAPACITY + 500 {
            f.record("t", i.to_string().as_bytes());
        }
        assert_eq!(f.len(), CAPACITY);
        assert!(!f.take("t", b"0"), "the oldest were forgotten");
        assert!(f.take("t", (CAPACITY + 499).to_string().as_bytes()));
    }
}
