//! ternd: the tern broker daemon — the broker library (`tern-broker`) with the MQTT
//! bridges, which speak to it as ordinary tern clients (`tern-client`).
//!
//! The broker library depends on no client: whatever talks to the broker over the tern
//! protocol from inside the daemon lives here. A program that embeds a broker and wants
//! its configured bridges calls [`bridge::start`] once the server is open.

pub mod bridge;
