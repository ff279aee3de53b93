//! The invariants, checked as the simulation goes: every node applies the same entry at
//! each index (the same log id, the same commands, the same answers), a node leads
//! only on a committed vote for itself, and no two nodes hold a leader's lease at once.
//! It also keeps a digest of what happened when, by which a run is shown to replay the
//! same from its seed.
//!
//! A leader id is openraft's default, (term, node): a term may have several leaders,
//! one after another (a node that votes for one may vote for a greater node id in the
//! same term), and their entries' log ids differ by node. So "one leader per term"
//! is not a property of this Raft. What safety rests on is that every index agrees,
//! checked entry by entry; of leaders, the checker asks that a node leads only on a
//! committed vote for itself, and records each (term, leader) in the trace.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::LogId;
use tokio::time::Instant;

use super::{Answers, NodeId};
use crate::queue::machine::{Command, Entry};

/// A publish's exactly-once pair: producer and sequence.
pub(super) type Pair = (String, u64);

#[derive(Debug)]
pub(super) struct Checks {
    start: Instant,
    /// Each index any node applied: the log id and a digest of the entry and answers.
    applied: BTreeMap<u64, (LogId<NodeId>, u64)>,
    /// Each index's publishes that a queue stored (not as a duplicate), by pair.
    pub stored: BTreeMap<u64, Vec<Pair>>,
    /// Each (term, leader) seen.
    leaders: BTreeSet<(u64, NodeId)>,
    /// Each node's last lease: from the majority's answer until it lapses.
    leases: BTreeMap<NodeId, (Instant, Instant)>,
    pub violations: Vec<String>,
    pub trace: u64,
}

#[derive(Debug, Clone)]
pub(super) struct Checker(Arc<Mutex<Checks>>);

impl Checker {
    pub fn new() -> Self {
        Checker(Arc::new(Mutex::new(Checks {
            start: Instant::now(),
            applied: BTreeMap::new(),
            stored: BTreeMap::new(),
            leaders: BTreeSet::new(),
            leases: BTreeMap::new(),
            violations: Vec::new(),
            trace: 0,
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, Checks> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `node` applied the entry `id`: `Some` with its commands and answers for a normal
    /// entry, `None` for Raft's own.
    pub fn applied(&self, node: NodeId, id: LogId<NodeId>, normal: Option<(&Entry, &Answers)>) {
        let mut digest = DefaultHasher::new();
        if let Some((entry, answers)) = normal {
            format!("{entry:?}{answers:?}").hash(&mut digest);
        }
        let digest = digest.finish();
        let mut checks = self.lock();
        checks.event(&(node, "applied", id.index, digest));
        match checks.applied.get(&id.index) {
            Some(&(first, first_digest)) if (first, first_digest) != (id, digest) => {
                let v = format!(
                    "node {node} applied {id} (digest {digest:x}) at index {}, where another \
                     node applied {first} (digest {first_digest:x})",
                    id.index
                );
                checks.violations.push(v);
            }
            Some(_) => {}
            None => {
                checks.applied.insert(id.index, (id, digest));
                if let Some((entry, answers)) = normal {
                    let stored = stored_pairs(entry, answers);
                    checks.stored.insert(id.index, stored);
                }
            }
        }
    }

    /// `node` says it leads with the vote `(term, voted_for)`, committed or not.
    pub fn leads(&self, node: NodeId, term: u64, voted_for: Option<NodeId>, committed: bool) {
        let mut checks = self.lock();
        if voted_for != Some(node) || !committed {
            let v = format!(
                "node {node} leads term {term} on a vote for {voted_for:?} (committed: \
                 {committed})"
            );
            checks.violations.push(v);
        }
        if checks.leaders.insert((term, node)) {
            checks.event(&(node, "leads", term));
        }
    }

    /// `node` holds a leader's lease (`lease::Lease`) from `since` until `until`: no
    /// other node may hold one at any time in between, or two nodes would run the
    /// queues at once.
    pub fn holds_lease(&self, node: NodeId, since: Instant, until: Instant) {
        let mut checks = self.lock();
        let start = checks.start;
        let overlapping: Vec<String> = checks
            .leases
            .iter()
            .filter(|(other, (s, u))| **other != node && *s < until && since < *u)
            .map(|(other, (s, u))| {
                format!(
                    "node {node} holds a lease for {:?}..{:?} while node {other} holds one \
                     for {:?}..{:?}",
                    since - start,
                    until - start,
                    *s - start,
                    *u - start
                )
            })
            .collect();
        checks.violations.extend(overlapping);
        checks.leases.insert(node, (since, until));
    }

    /// The log id the cluster applied at `index`, if any node did.
    pub fn at(&self, index: u64) -> Option<LogId<NodeId>> {
        self.lock().applied.get(&index).map(|(id, _)| *id)
    }
}

impl Checks {
    /// Folds an event, with the simulated time it happened at, into the trace.
    pub fn event(&mut self, what: &impl Hash) {
        let mut h = DefaultHasher::new();
        (self.trace, self.start.elapsed().as_nanos(), what).hash(&mut h);
        self.trace = h.finish();
    }

    /// How many times each pair was stored, over the whole history.
    pub fn stored_counts(&self) -> BTreeMap<Pair, usize> {
        let mut counts = BTreeMap::new();
        for pair in self.stored.values().flatten() {
            *counts.entry(pair.clone()).or_default() += 1;
        }
        counts
    }
}

/// The pairs of the publishes in `entry` that a queue stored.
fn stored_pairs(entry: &Entry, answers: &Answers) -> Vec<Pair> {
    entry
        .commands
        .iter()
        .zip(&answers.0)
        .filter_map(|(command, answer)| match (command, answer) {
            (
                Command::Publish {
                    dedup: Some(pair), ..
                },
                Ok(outcome),
            ) if outcome.queues > 0 && !outcome.duplicate => {
                Some((pair.producer.clone(), pair.sequence))
            }
            _ => None,
        })
        .collect()
}
