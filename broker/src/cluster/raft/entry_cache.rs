//! The newest entries of this node's Raft log, decoded, as they were appended.
//!
//! openraft reads each entry back from the log after appending it: the state machine to
//! apply it, and on the leader each follower's replication to send it. From the files
//! every read is a `pread` and a decode that copies every message; a leader of three
//! did that three times per entry. The newest entries are what those reads ask for, so
//! they are kept here, up to a byte budget (a follower's are what its leader sent:
//! bounded all the same), and a read the cache cannot answer whole goes to the files.

use std::collections::BTreeMap;

use super::TypeConfig;

type Entry = openraft::Entry<TypeConfig>;

/// Bytes of entries (as encoded in the log) the cache holds at most.
pub(super) const BUDGET: usize = 32 << 20;

/// A run of consecutive entries ending with the log's last one.
#[derive(Debug)]
pub(super) struct EntryCache {
    entries: BTreeMap<u64, (Entry, usize)>,
    bytes: usize,
    budget: usize,
}

impl EntryCache {
    pub fn new(budget: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            bytes: 0,
            budget,
        }
    }

    /// `entry`, appended to the log, `size` bytes as encoded there. An entry that does
    /// not follow the last one held starts the run over.
    pub fn appended(&mut self, entry: Entry, size: usize) {
        let index = entry.log_id.index;
        let follows = self
            .entries
            .last_key_value()
            .is_none_or(|(last, _)| last + 1 == index);
        if !follows {
            self.clear();
        }
        self.entries.insert(index, (entry, size));
        self.bytes += size;
        while self.bytes > self.budget {
            let Some((_, (_, size))) = self.entries.pop_first() else {
                break;
            };
            self.bytes -= size;
        }
    }

    /// The log lost its entries from `from` on.
    pub fn truncated(&mut self, from: u64) {
        let gone = self.entries.split_off(&from);
        self.bytes -= gone.values().map(|(_, size)| size).sum::<usize>();
    }

    /// The log lost its entries up to `upto`.
    pub fn purged(&mut self, upto: u64) {
        let kept = self.entries.split_off(&upto.saturating_add(1));
        self.entries = kept;
        self.bytes = self.entries.values().map(|(_, size)| size).sum();
    }

    /// The entries from `from` up to (not including) `to`, stopping once they add up to
    /// `max_bytes` (at least one): `None` unless the cache holds `from` — from there on
    /// it holds everything the log does.
    pub fn read(&self, from: u64, to: u64, max_bytes: usize) -> Option<Vec<Entry>> {
        if !self.entries.contains_key(&from) {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for (entry, size) in self.entries.range(from..to).map(|(_, e)| e) {
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        Some(out)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn holds_the_newest_run_within_its_budget() {
        let mut cache = EntryCache::new(30);
        for i in 1..=5 {
            cache.appended(entry(i), 10);
        }
        // 1 and 2 left for the budget: a read from them goes to the files.
        assert_eq!(indexes(cache.read(2, 6, usize::MAX)), None);
        assert_eq!(indexes(cache.read(3, 6, usize::MAX)), Some(vec![3, 4, 5]));
        assert_eq!(indexes(cache.read(3, 6, 15)), Some(vec![3]));
        assert_eq!(indexes(cache.read(4, 5, usize::MAX)), Some(vec![4]));
    }

    #[test]
    fn follows_truncations_purges_and_gaps() {
        let mut cache = EntryCache::new(usize::MAX);
        for i in 1..=5 {
            cache.appended(entry(i), 10);
        }
        cache.truncated(4);
        cache.appended(entry(4), 10);
        assert_eq!(
            indexes(cache.read(1, 10, usize::MAX)),
            Some(vec![1, 2, 3, 4])
        );
        cache.purged(2);
        assert_eq!(indexes(cache.read(1, 10, usize::MAX)), None);
        assert_eq!(indexes(cache.read(3, 10, usize::MAX)), Some(vec![3, 4]));
        // Not the next one (a snapshot installed, say): the run starts over.
        cache.appended(entry(9), 10);
        assert_eq!(indexes(cache.read(3, 10, usize::MAX)), None);
        assert_eq!(indexes(cache.read(9, 10, usize::MAX)), Some(vec![9]));
    }
}
