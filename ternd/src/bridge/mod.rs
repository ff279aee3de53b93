//! MQTT bridges at work: sensor readings from an MQTT broker into tern subjects,
//! commands from tern subjects out to MQTT devices.
//!
//! A bridge is a tern client connected to its own broker over an in-process connection
//! ([`Server::connect_local`]) on one side, and an MQTT client (rumqttc) on the other.
//! Reusing the ordinary client gives it confirms, durable consumption with acks and
//! reconnects for free, and keeps the router's internals private. Its settings, topic
//! mapping and status live in the broker (`tern_broker::bridge`), which parses the
//! config file and reports the status; this crate only runs it.
//!
//! # Delivery
//!
//! ```text
//! import  MQTT PUBLISH ─▶ tern publish (QoS 1: wait for the confirm) ─▶ MQTT PUBACK
//! export  tern queue bridge.<name>.export.<n> ─▶ MQTT PUBLISH ─▶ PUBACK ─▶ tern ack
//! ```
//!
//! * Import: each message is published on the mapped subject with headers
//!   `mqtt_topic`, `mqtt_qos`, `mqtt_retain` and `bridge`. A QoS 1 message is acked
//!   to the MQTT broker (rumqttc manual acks, in the order received) only once tern
//!   confirmed it — durable in every queue it routed to.
//! * Export: a QoS 1 export consumes from a durable queue of its own, bounded by
//!   `buffer` messages, and acks a delivery only once the MQTT PUBACK for it arrived.
//!   Deliveries in flight when the connection drops are published again after the
//!   reconnect. A QoS 0 export is a plain subscription.
//! * Loops: an imported message carries `bridge = <name>`; the bridge's exports never
//!   send such a message out again. What an export sends to a topic one of its own
//!   imports subscribes to comes back from the MQTT broker; that echo is dropped
//!   ([`echo`]).
//!
//! # Layout
//!
//! * this file: [`start`].
//! * `conn_log`: the once-per-change connection log (no I/O); reconnects are paced by
//!   the client's `Backoff`.
//! * `echo`: echo suppression (no I/O).
//! * `run`: the MQTT connection driver and the bridge task.

mod conn_log;
mod echo;
mod run;

use std::sync::Arc;

use tern_broker::Server;

/// Starts every bridge configured on `server` as services of the server: they stop
/// when it shuts down, and report through its bridge status.
pub fn start(server: &Server) {
    for b in &server.config().bridges {
        let Some(status) = server.bridge_status(&b.name) else {
            continue;
        };
        run::spawn(
            server.clone(),
            Arc::new(b.clone()),
            status,
            server.shutdown_token().child_token(),
        );
    }
}
