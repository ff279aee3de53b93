//! tern: a message broker for message-driven applications and IoT fleets.
//!
//! This crate is the one dependency applications need: it re-exports the async client,
//! [`tern_client`]. The broker itself is the `ternd` binary of `tern-broker`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tern::Error> {
//! let client = tern::Client::connect("127.0.0.1:7400").await?;
//! client.publish("greetings", "hello").await?;
//! client.flush().await?;
//! # Ok(()) }
//! ```

pub use tern_client::*;
