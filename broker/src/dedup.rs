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
//!
//! The window is this node's fast path: it keeps a retry from being routed (to
//! subscribers too) a second time on the node that saw the first copy. The authority is
//! [`StoredPairs`], inside the queues' state machine: every node applies the same
//! entries to it, so a retry that reaches another node — a client that reconnected
//! after a failover — is still stored by no queue.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

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

/// What the window knows of a pair when a publish carries it ([`DedupWindow::insert`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen: recorded now, as on its way to the store.
    New,
    /// Another copy is on its way to the store and may yet fail (its entry refused,
    /// its forward to the leader timed out). This copy must go to the store too, where
    /// the state machine keeps whichever comes first and answers the other as a
    /// duplicate; answering it "duplicate" here would confirm a message that may never
    /// be stored. It goes to no subscriber: the first copy did.
    InFlight,
    /// A copy was stored: this one is a duplicate.
    Stored,
}

/// A pair's copies: how many are on their way to the store, and whether one is in it.
#[derive(Debug)]
struct Copies {
    in_flight: u32,
    stored: bool,
}

/// Remembered (producer, sequence) pairs, bounded in count and age.
#[derive(Debug)]
pub struct DedupWindow {
    seen: HashMap<(Box<str>, u64), Copies>,
    /// Pairs in the order they were recorded, with their time, for expiry.
    order: VecDeque<(u64, Box<str>, u64)>,
    max: usize,
    age_ms: u64,
}

impl DedupWindow {
    pub fn new(max: usize, age_ms: u64) -> Self {
        Self {
            seen: HashMap::new(),
            order: VecDeque::new(),
            max,
            age_ms,
        }
    }

    /// Records a copy of the pair on its way to the store, unless one was stored.
    pub fn insert(&mut self, producer: &str, sequence: u64, now_ms: u64) -> Seen {
        if let Some(copies) = self.seen.get_mut(&(producer.into(), sequence)) {
            if copies.stored {
                return Seen::Stored;
            }
            copies.in_flight += 1;
            return Seen::InFlight;
        }
        self.seen.insert(
            (producer.into(), sequence),
            Copies {
                in_flight: 1,
                stored: false,
            },
        );
        self.order.push_back((now_ms, producer.into(), sequence));
        Seen::New
    }

    /// A copy of the pair is in the store (stored, or found there already).
    pub fn stored(&mut self, producer: &str, sequence: u64) {
        if let Some(copies) = self.seen.get_mut(&(producer.into(), sequence)) {
            copies.in_flight = copies.in_flight.saturating_sub(1);
            copies.stored = true;
        }
    }

    /// A copy of the pair was not stored. The pair is forgotten once no copy is on its
    /// way and none was stored, so that a retry is stored.
    pub fn failed(&mut self, producer: &str, sequence: u64) {
        let key = (producer.into(), sequence);
        if let Some(copies) = self.seen.get_mut(&key) {
            copies.in_flight = copies.in_flight.saturating_sub(1);
            if copies.in_flight == 0 && !copies.stored {
                // Its entry in `order` is left to expire; expiring a pair that is no
                // longer in `seen` is harmless.
                self.seen.remove(&key);
            }
        }
    }

    /// A pair found in the store at start.
    pub fn restore(&mut self, entry: &DedupEntry) {
        self.insert(&entry.producer, entry.sequence, entry.at_ms);
        self.stored(&entry.producer, entry.sequence);
    }

    /// The window's bounds at `now_ms`: pairs recorded before the first are old, and at
    /// most the second are kept. The journal hands them to the state machine, which
    /// applies them to [`StoredPairs`] on every node alike.
    pub fn bounds(&self, now_ms: u64) -> (u64, u64) {
        (
            now_ms.saturating_sub(self.age_ms),
            u64::try_from(self.max).unwrap_or(u64::MAX),
        )
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

/// The pairs whose messages the queues' state machine stored, kept as the store keeps
/// them: grouped under the time of the entry that recorded them (its first pair's time,
/// the store's key), so that forgetting "before t" forgets the same pairs in memory, in
/// the store and after a restart, on every node. Nothing here reads a clock or depends
/// on a hash map's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StoredPairs {
    /// Sequences by producer, for lookups with a borrowed producer id.
    seen: HashMap<Arc<str>, HashSet<u64>>,
    /// The same pairs by the time they are filed under.
    by_time: BTreeMap<u64, Vec<(Arc<str>, u64)>>,
    len: u64,
}

/// Pairs [`StoredPairs::forget`] took out, filed by time: what undoing it puts back.
pub(crate) type Forgotten = Vec<(u64, Vec<(Arc<str>, u64)>)>;

impl StoredPairs {
    pub fn contains(&self, producer: &str, sequence: u64) -> bool {
        self.seen
            .get(producer)
            .is_some_and(|seqs| seqs.contains(&sequence))
    }

    /// Files the pair under `at_ms`; returns the producer id as kept, for an undo.
    pub fn insert(&mut self, producer: &str, sequence: u64, at_ms: u64) -> Arc<str> {
        let key = match self.seen.get_key_value(producer) {
            Some((key, _)) => Arc::clone(key),
            None => Arc::from(producer),
        };
        if self
            .seen
            .entry(Arc::clone(&key))
            .or_default()
            .insert(sequence)
        {
            self.by_time
                .entry(at_ms)
                .or_default()
                .push((Arc::clone(&key), sequence));
            self.len += 1;
        }
        key
    }

    /// Takes back the pair [`StoredPairs::insert`] filed last under `at_ms`.
    pub fn remove(&mut self, producer: &str, sequence: u64, at_ms: u64) {
        let Some(pairs) = self.by_time.get_mut(&at_ms) else {
            return;
        };
        let found = pairs
            .iter()
            .rposition(|(p, s)| **p == *producer && *s == sequence);
        if let Some(i) = found {
            pairs.remove(i);
        }
        if pairs.is_empty() {
            self.by_time.remove(&at_ms);
        }
        if found.is_some() {
            self.len -= 1;
            self.unsee(producer, sequence);
        }
    }

    /// Forgets the pairs filed before `before_ms`, then the oldest times' until at most
    /// `keep` are left. Returns the time before which the store forgets too (`None`:
    /// nothing went) and what went.
    pub fn forget(&mut self, before_ms: u64, keep: u64) -> (Option<u64>, Forgotten) {
        let mut gone = Forgotten::new();
        let mut until = None;
        while let Some(entry) = self.by_time.first_entry() {
            let at = *entry.key();
            if at >= before_ms && self.len <= keep {
                break;
            }
            let pairs = entry.remove();
            self.len -= pairs.len() as u64;
            for (producer, sequence) in &pairs {
                self.unsee(producer, *sequence);
            }
            until = Some(at.saturating_add(1));
            gone.push((at, pairs));
        }
        (until, gone)
    }

    /// Puts back what [`StoredPairs::forget`] took out.
    pub fn restore(&mut self, forgotten: Forgotten) {
        for (at, pairs) in forgotten {
            for (producer, sequence) in pairs {
                self.insert(&producer, sequence, at);
            }
        }
    }

    fn unsee(&mut self, producer: &str, sequence: u64) {
        if let Some(seqs) = self.seen.get_mut(producer) {
            seqs.remove(&sequence);
            if seqs.is_empty() {
                self.seen.remove(producer);
            }
        }
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
        assert_eq!(w.insert(alice.as_str(), 1, 0), Seen::New);
        let bob = ProducerKey::new(Some("bob"), "p");
        assert_eq!(w.insert(bob.as_str(), 1, 0), Seen::New);
        assert_eq!(w.insert(alice.as_str(), 1, 0), Seen::InFlight);
    }

    #[test]
    fn duplicates_are_caught_until_they_expire() {
        let mut w = DedupWindow::new(3, 1000);
        assert_eq!(w.insert("p", 1, 0), Seen::New);
        w.stored("p", 1);
        assert_eq!(w.insert("p", 1, 10), Seen::Stored, "duplicate");
        assert_eq!(w.insert("q", 1, 10), Seen::New, "another producer");
        assert_eq!(w.expire(500), None, "nothing old yet");
        assert_eq!(w.expire(1005), Some(1), "the first pair is past its age");
        assert_eq!(w.insert("p", 1, 1005), Seen::New, "forgotten, so new again");
    }

    #[test]
    fn a_copy_of_a_pair_in_flight_is_no_duplicate_until_one_is_stored() {
        let mut w = DedupWindow::new(10, 1000);
        assert_eq!(w.insert("p", 1, 0), Seen::New);
        assert_eq!(
            w.insert("p", 1, 1),
            Seen::InFlight,
            "the first may yet fail"
        );
        w.failed("p", 1);
        assert_eq!(
            w.insert("p", 1, 2),
            Seen::InFlight,
            "the second is on its way"
        );
        w.failed("p", 1);
        w.failed("p", 1);
        assert_eq!(w.insert("p", 1, 3), Seen::New, "no copy left: forgotten");
        assert_eq!(w.insert("p", 1, 4), Seen::InFlight);
        w.stored("p", 1);
        w.failed("p", 1);
        assert_eq!(w.insert("p", 1, 5), Seen::Stored, "one copy is stored");
    }

    #[test]
    fn size_bound_forgets_the_oldest() {
        let mut w = DedupWindow::new(2, u64::MAX);
        for s in 0..5 {
            assert_eq!(w.insert("p", s, s), Seen::New);
            w.stored("p", s);
        }
        assert_eq!(w.expire(10), Some(3));
        assert_eq!(w.seen.len(), 2);
        assert_eq!(w.insert("p", 4, 11), Seen::Stored);
        assert_eq!(w.insert("p", 0, 11), Seen::New);
    }

    #[test]
    fn stored_pairs_forget_by_filed_time_then_by_count() {
        let mut p = StoredPairs::default();
        p.insert("a", 1, 10);
        p.insert("a", 2, 10);
        p.insert("b", 1, 20);
        p.insert("a", 3, 30);
        assert!(p.contains("a", 2) && p.contains("b", 1));
        assert!(!p.contains("b", 2) && !p.contains("c", 1));
        let before = p.clone();
        assert_eq!(p.forget(10, 10).0, None, "nothing filed before 10");
        let (until, gone) = p.forget(20, 10);
        assert_eq!(until, Some(11), "the store forgets keys before 11");
        assert!(!p.contains("a", 1) && p.contains("b", 1));
        // Over the count: whole times go, oldest first.
        let (until, gone2) = p.forget(0, 1);
        assert_eq!(until, Some(21));
        assert!(p.contains("a", 3) && !p.contains("b", 1));
        p.restore(gone2);
        p.restore(gone);
        assert_eq!(p, before, "restore undoes forget");
        p.remove("a", 3, 30);
        assert!(!p.contains("a", 3));
        assert_eq!(p.by_time.len(), 2, "an emptied time goes");
    }
}
