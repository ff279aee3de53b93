//! tern-broker: the tern message broker as a library, and the `ternd` daemon.
//!
//! # Layout
//!
//! * [`server`]: the listener, shared state, graceful shutdown ([`Server`], [`run`]; a
//!   program that embeds a broker starts it with [`Server::start`]).
//! * `session`: one task per connection: handshake, frame loop, cleanup.
//! * `handler`: one handler per frame family (hello, publish, subscribe), mirroring
//!   `tern_codec::frame`.
//! * `connection`: the read side of a socket (bytes in, frames out).
//! * `outbound`: a connection's bounded outbound queue and the writer task.
//! * `router`: who receives a message; [`sublist`]: the subject trie behind it.
//! * `durable`: the durable queues as the server holds them (store, journal, queue
//!   registry, exactly-once window); `journal`: the group-commit writer and the `Log`
//!   seam; `queue`: the rules (`queue::machine`), the queues' tasks and recovery.
//! * [`config`]: flags, environment, TOML and defaults.
//! * [`stats`]: server-wide counters.
//!
//! `ARCHITECTURE.md` at the repository root follows a message through these pieces.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod auth;
pub mod bridge;
mod clock;
pub mod cluster;
pub mod config;
mod connection;
mod dedup;
mod durable;
mod error;
pub mod filter;
mod handler;
mod journal;
mod metrics;
mod outbound;
mod queue;
mod router;
pub mod server;
mod session;
mod shared;
pub mod stats;
mod store_health;
pub mod sublist;
pub mod tls;

pub use config::{Config, ConfigError, Settings};
pub use error::Error;
pub use server::{run, ConnectionInfo, Running, Server};
pub use stats::StatsSnapshot;
