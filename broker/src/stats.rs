//! Server-wide counters.
//!
//! Sessions count into local fields and add them here once per read batch, so a busy
//! publisher does not bounce these cache lines between cores on every message.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tern_codec::{DecodeError, ErrorCode};

/// The kinds of protocol error counted apart, as named in metrics.
pub(crate) const PROTOCOL_ERROR_KINDS: [&str; 4] = [
    "malformed_frame",
    "frame_too_large",
    "unknown_frame_type",
    "handshake",
];

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
    /// By [`PROTOCOL_ERROR_KINDS`].
    protocol_error_kinds: [AtomicU64; 4],
    pub duplicates: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Connections refused for their address's connection limit.
    pub connections_rejected_per_ip: AtomicU64,
    /// Connections closed for silence.
    pub idle_disconnects: AtomicU64,
    /// Messages and payload bytes published, by QoS.
    published_by_qos: [(AtomicU64, AtomicU64); 3],
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
    /// Handshakes refused for bad credentials.
    pub auth_failures: u64,
    pub connections_rejected_per_ip: u64,
    pub idle_disconnects: u64,
    /// Messages and payload bytes published, by QoS (0, 1, 2).
    pub published_by_qos: [(u64, u64); 3],
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
            auth_failures: self.auth_failures.load(Relaxed),
            connections_rejected_per_ip: self.connections_rejected_per_ip.load(Relaxed),
            idle_disconnects: self.idle_disconnects.load(Relaxed),
            published_by_qos: self
                .published_by_qos
                .each_ref()
                .map(|(m, b)| (m.load(Relaxed), b.load(Relaxed))),
        }
    }

    /// Counts a protocol error by its kind.
    pub fn count_protocol_error(&self, code: ErrorCode) {
        self.protocol_errors.fetch_add(1, Relaxed);
        let kind = match code {
            ErrorCode::MalformedFrame => 0,
            ErrorCode::FrameTooLarge => 1,
            ErrorCode::UnknownFrameType => 2,
            _ => 3,
        };
        if let Some(c) = self.protocol_error_kinds.get(kind) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Counts a frame that would not decode.
    pub fn count_decode_error(&self, e: &DecodeError) {
        self.count_protocol_error(e.code());
    }

    /// Protocol errors by kind.
    pub fn protocol_errors(&self) -> Vec<(&'static str, u64)> {
        PROTOCOL_ERROR_KINDS
            .iter()
            .zip(&self.protocol_error_kinds)
            .map(|(k, c)| (*k, c.load(Relaxed)))
            .collect()
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
    /// Messages and payload bytes by QoS.
    pub by_qos: [(u64, u64); 3],
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
            (&stats.published_by_qos[0].0, b.by_qos[0].0),
            (&stats.published_by_qos[0].1, b.by_qos[0].1),
            (&stats.published_by_qos[1].0, b.by_qos[1].0),
            (&stats.published_by_qos[1].1, b.by_qos[1].1),
            (&stats.published_by_qos[2].0, b.by_qos[2].0),
            (&stats.published_by_qos[2].1, b.by_qos[2].1),
        ] {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
    }
}
