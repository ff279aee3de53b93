//! tern-client: the async client for the tern message broker.
//!
//! ```no_run
//! use futures_util::StreamExt;
//!
//! # async fn demo() -> Result<(), tern_client::Error> {
//! let client = tern_client::Client::connect("127.0.0.1:7400").await?;
//! let mut sub = client.subscribe("sensors.*.temp").await?;
//! client.publish("sensors.kitchen.temp", "21.5").await?;
//! let msg = sub.next().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! * [`Client`] and [`ClientBuilder`]: the handle and its options (`client`).
//! * [`Publish`]: the publish builder (QoS 0/1/2, pipelined confirms);
//!   [`Subscription`]: a stream of messages; [`Consumer`]: a stream of deliveries from
//!   a durable queue, settled with ack/nack; `admin`: queue administration.
//! * [`Request`], [`RequestMany`], [`Serve`], [`ServeQueue`]: request-reply and
//!   responders (`request`).
//! * `connection`: the driver task that owns the socket, reconnects and re-subscribes.
//! * `servers`: the seed list, the addresses learned, and which to try next.
//! * `state`: requests in flight and subscriptions, with no I/O (unit-tested).
//! * `outbound`: the bounded write buffer publishers encode into.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod admin;
mod backoff;
mod client;
mod connection;
mod consumer;
mod error;
mod message;
mod outbound;
mod publish;
mod queue;
mod request;
mod servers;
mod state;
mod subscription;
mod transport;

pub use admin::QueueConfig;
pub use backoff::Backoff;
pub use client::{Client, ClientBuilder};
pub use consumer::{ConsumeBuilder, Consumer, Delivery};
pub use error::Error;
pub use message::Message;
pub use publish::{PendingConfirm, Publish, PublishFuture};
pub use request::{
    Reply, Request, RequestMany, Serve, ServeQueue, Service, ServiceRequest, DEADLINE_HEADER,
    ERROR_HEADER,
};
pub use state::Confirmation;
pub use subscription::{SubscribeBuilder, Subscription};
pub use tern_codec::{
    Binding, ClusterInfo, ErrorCode, GroupInfo, Headers, Member, MemberRole, Overflow, Pattern,
    Qos, QueueInfo, QueueOptions, QueueStats, ServerInfo, Subject,
};
pub use transport::{AsyncStream, TlsOptions};
