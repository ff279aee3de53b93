//! The exactly-once deduplication window: (producer, sequence) pairs seen recently.
//!
//! Sessions check and record a pair before routing the message, under one lock, so
//! that two copies of a message racing on two connections cannot both get through.
//! The journal writes each pair to the store with its message (the window survives
//! restarts) and takes the pair back out if that write fails, so a retry after a failed
//! write is not mistaken for a duplicate.
//!
//! Producer ids are chosen by clients, so each user has a namespace of its own
//! ([`ProducerKey`]): one user's producer can never make another's publish look like a
//! duplicate. Anonymous clients share one namespace.

use std::collections::{HashSet, VecDeque};

use tern_storage::DedupEntry;

/// Longest producer id, in bytes.
pub const MAX_PRODUCER_LEN: usize = 255;

/// A producer id within its user's namespace, as the window and the store key it:
/// `<user's length in bytes>:<user>:<producer>` (`0::<producer>` when anonymous). The
/// length prefix makes the split unambiguous whatever bytes the two names hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerKey(String);

impl ProducerKey {
    pub fn new(user: Option<&str>, producer: &str) -> Self {
        let user = user.unwrap_or_default();
        Self(format!("{}:{user}:{producer}", user.len()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Remembered (producer, sequence) pairs, bounded in count and age.
#[derive(Debug)]
pub struct DedupWindow {
    seen: HashSet<(Box<str>, u64)>,
    /// Pairs in the order they were recorded, with their time, for expiry.
    order: VecDeque<(u64, Box<str>, u64)>,
    max: usize,
    age_ms: u64,
}

impl DedupWindow {
    pub fn new(max: usize, age_ms: u64) -> Self {
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            max,
            age_ms,
        }
    }

    /// Records the pair unless it is already in the window. Returns whether it was new.
    pub fn insert(&mut self, producer: &str, sequence: u64, now_ms: u64) -> bool {
        if !self.seen.insert((producer.into(), sequence)) {
            return false;
        }
        self.order.push_back((now_ms, producer.into(), sequence));
        true
    }

    /// Takes a pair back out (its message could not be stored).
    pub fn remove(&mut self, producer: &str, sequence: u64) {
        self.seen.remove(&(producer.into(), sequence));
        // Its entry in `order` is left to expire; forgetting a pair that is not in
        // `seen` is harmless.
    }

    /// A pair found in the store at start.
    pub fn restore(&mut self, entry: &DedupEntry) {
        self.insert(&entry.producer, entry.sequence, entry.at_ms);
    }

    /// Forgets pairs older than the window's age, and the oldest beyond its size.
    /// Returns the time before which the store may forget pairs too, if any went.
    pub fn expire(&mut self, now_ms: u64) -> Option<u64> {
        let cutoff = now_ms.saturating_sub(self.age_ms);
        let mut forgot = None;
        while let Some((at, _, _)) = self.order.front() {
            if *at >= cutoff && self.order.len() <= self.max {
                break;
            }
            if let Some((at, producer, sequence)) = self.order.pop_front() {
                self.seen.remove(&(producer, sequence));
                forgot = Some(at + 1);
            }
        }
        forgot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_keys_are_per_user_and_unambiguous() {
        let alice = ProducerKey::new(Some("alice"), "p");
        assert_eq!(alice.as_str(), "5:alice:p");
        assert_eq!(ProducerKey::new(None, "p").as_str(), "0::p");
        assert_ne!(alice, ProducerKey::new(Some("bob"), "p"));
        assert_ne!(alice, ProducerKey::new(None, "p"));
        // A user name holding the separator cannot impersonate another namespace.
        assert_ne!(
            ProducerKey::new(Some("a:b"), "c"),
            ProducerKey::new(Some("a"), "b:c")
        );
        let mut w = DedupWindow::new(10, 1000);
        assert!(w.insert(alice.as_str(), 1, 0));
        assert!(w.insert(ProducerKey::new(Some("bob"), "p").as_str(), 1, 0));
        assert!(!w.insert(alice.as_str(), 1, 0));
    }

    #[test]
    fn duplicates_are_caught_until_they_expire() {
        let mut w = DedupWindow::new(3, 1000);
        assert!(w.insert("p", 1, 0));
        assert!(!w.insert("p", 1, 10), "duplicate");
        assert!(w.insert("q", 1, 10), "another producer");
        assert_eq!(w.expire(500), None, "nothing old yet");
        assert_eq!(w.expire(1005), Some(1), "the first pair is past its age");
        assert!(w.insert("p", 1, 1005), "forgotten, so new again");
    }

    #[test]
    fn size_bound_forgets_the_oldest() {
        let mut w = DedupWindow::new(2, u64::MAX);
        for s in 0..5 {
            assert!(w.insert("p", s, s));
        }
        assert_eq!(w.expire(10), Some(3));
        assert_eq!(w.seen.len(), 2);
        assert!(!w.insert("p", 4, 11));
        assert!(w.insert("p", 0, 11));
    }

    #[test]
    fn removed_pairs_are_new_again() {
        let mut w = DedupWindow::new(10, 1000);
        assert!(w.insert("p", 7, 0));
        w.remove("p", 7);
        assert!(w.insert("p", 7, 1));
    }
}
