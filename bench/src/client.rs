//! How scenarios connect to the broker.

use anyhow::Context;
use tern_client::{Client, ClientBuilder};

/// A client builder for connection `name` that does not reconnect: a benchmark
/// measures one connection's life, and a reconnect would hide a failure.
pub fn builder(name: &str) -> ClientBuilder {
    // A seed list is used in the order given: the node to measure first.
    Client::builder()
        .name(name)
        .reconnect(false)
        .shuffle_servers(false)
}

/// Connects a [`builder`] client named `name` to `addr`.
pub async fn connect(addr: &str, name: &str) -> anyhow::Result<Client> {
    builder(name)
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))
}
