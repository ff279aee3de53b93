//! Server-wide counters.
//!
//! Sessions count into local fields and add them here once per read batch, so a busy
//! publisher does not bounce these cache lines between cores on every message.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters shared by every connection.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub slow_consumer_drops: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub duplicates: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub connections: u64,
    pub connections_opened: u64,
    pub connections_rejected: u64,
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub slow_consumer_drops: u64,
    pub slow_consumer_disconnects: u64,
    pub protocol_errors: u64,
    /// Exactly-once publishes recognised as duplicates and not stored again.
    pub duplicates: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let opened = self.connections_opened.load(Relaxed);
        StatsSnapshot {
            connections: opened.saturating_sub(self.connections_closed.load(Relaxed)),
            connections_opened: opened,
            connections_rejected: self.connections_rejected.load(Relaxed),
            messages_in: self.messages_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            slow_consumer_drops: self.slow_consumer_drops.load(Relaxed),
            slow_consumer_disconnects: self.slow_consumer_disconnects.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
        }
    }
}

/// One session's counts since its last [`BatchCounts::add_to`].
#[derive(Debug, Default)]
pub(crate) struct BatchCounts {
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub drops: u64,
    pub duplicates: u64,
}

impl BatchCounts {
    pub fn add_to(&mut self, stats: &Stats) {
        let b = std::mem::take(self);
        for (counter, n) in [
            (&stats.messages_in, b.messages_in),
            (&stats.bytes_in, b.bytes_in),
            (&stats.messages_out, b.messages_out),
            (&stats.slow_consumer_drops, b.drops),
            (&stats.duplicates, b.duplicates),
        ] {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
    }
}
