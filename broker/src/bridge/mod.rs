//! MQTT bridges, as the broker knows them: the topic ↔ subject [`mapping`] and each
//! bridge's [`BridgeStatus`] for metrics and server info. Their `[[bridge.mqtt]]`
//! settings are part of the configuration (`config::bridge`).
//!
//! The bridges themselves run in the `ternd` crate (`ternd::bridge`): a bridge is an
//! ordinary tern client on an in-process connection ([`crate::Server::connect_local`])
//! plus an MQTT client, so the broker library depends on neither client.
//!
//! # Mapping
//!
//! MQTT levels ↔ tern tokens: `/` ↔ `.`, `+` ↔ `*`, `#` ↔ `>`. An MQTT level that is
//! empty, or holds a character no tern token can (`.`, `*`, `>`, whitespace, control
//! characters) or the escape character `%` itself, is percent-escaped: each such
//! character becomes `%XX` per UTF-8 byte (upper-case hex), and an empty level is `%`
//! alone. `a//b` ↔ `a.%.b`, `v1.2/x` ↔ `v1%2E2.x`, `$SYS/broker/load` ↔
//! `$SYS.broker.load`. See [`mapping`]; `docs/BRIDGE.md` has the user's version.

pub mod mapping;

use std::sync::atomic::{AtomicBool, AtomicU64};

/// What a bridge reports for metrics and server info. The server makes one per
/// configured bridge when it opens; the bridge (run by the `ternd` crate) updates it.
#[derive(Debug, Default)]
pub struct BridgeStatus {
    pub name: String,
    /// Whether the MQTT connection is up.
    pub connected: AtomicBool,
    /// Messages imported into tern (confirmed, for QoS 1).
    pub messages_in: AtomicU64,
    /// Messages exported to MQTT (acknowledged by the MQTT broker, for QoS 1).
    pub messages_out: AtomicU64,
    /// Connections restored after a loss.
    pub reconnects: AtomicU64,
}
