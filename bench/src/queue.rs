//! The `queue` scenario: durable publish with confirms, then consume with acks.
//!
//! 1. The queue `--queue` is declared (bound to its own name) and purged.
//! 2. One publisher sends `--messages` QoS 1 messages, keeping `--inflight` of them
//!    unconfirmed at once, and records each publish-to-confirm time. The phase ends
//!    when the last confirm arrives: every message is then durable (under the broker's
//!    default `sync = "always"`, fsync'd).
//! 3. One consumer with `--prefetch` receives them all and acks each, without waiting
//!    for one ack's answer before the next delivery.

use std::time::Instant;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::json;
use tern_client::{Qos, QueueConfig};

use crate::client;
use crate::report::{self, Latency, Report};

/// Options of the `queue` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Messages to publish, then consume
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,

    /// Payload size in bytes
    #[arg(long, default_value_t = 128)]
    pub size: usize,

    /// Publishes awaiting their confirm at once
    #[arg(long, default_value_t = 256)]
    pub inflight: usize,

    /// The consumer's prefetch
    #[arg(long, default_value_t = 256)]
    pub prefetch: u32,

    /// Queue to use (declared, purged before the run)
    #[arg(long, default_value = "bench.queue")]
    pub queue: String,
}

pub async fn run(addr: &str, args: &Args) -> anyhow::Result<Report> {
    let client = client::builder("tern-bench queue")
        .max_inflight(args.inflight)
        .connect(addr)
        .await
        .context("connecting")?;
    client
        .declare_queue(&QueueConfig::new(&args.queue).bind(&args.queue))
        .await
        .context("declaring the queue")?;
    client.purge_queue(&args.queue).await?;
    let payload = Bytes::from(vec![0x5a; args.size]);

    // Publish, confirm latency per message.
    let mut latency = Latency::new();
    let mut pending = FuturesUnordered::new();
    let start = Instant::now();
    for _ in 0..args.messages {
        while pending.len() >= args.inflight {
            record(&mut latency, pending.next().await)?;
        }
        let sent = Instant::now();
        let confirm = client
            .publish(&args.queue, payload.clone())
            .qos(Qos::AtLeastOnce)
            .send()
            .await?;
        pending.push(async move { (sent, confirm.await) });
    }
    while let Some(done) = pending.next().await {
        record(&mut latency, Some(done))?;
    }
    let publish_time = start.elapsed();

    // Consume and ack.
    let consumer_client = client::connect(addr, "tern-bench consumer").await?;
    let mut consumer = consumer_client
        .consume(&args.queue)
        .prefetch(args.prefetch)
        .await?;
    let start = Instant::now();
    let mut acks = FuturesUnordered::new();
    let mut received = 0u64;
    while received < args.messages {
        tokio::select! {
            delivery = consumer.next() => {
                let Some(delivery) = delivery else { bail!("the consumer ended early") };
                received += 1;
                acks.push(async move { delivery.ack().await });
            }
            Some(acked) = acks.next(), if !acks.is_empty() => acked.context("acking")?,
        }
    }
    while let Some(acked) = acks.next().await {
        acked.context("acking")?;
    }
    let consume_time = start.elapsed();
    let info = client.queue_info(&args.queue).await?;
    if info.stats.ready + info.stats.unacked != 0 {
        bail!("the queue is not empty after the run: {:?}", info.stats);
    }

    let mut r = Report::new("queue");
    r.add("messages", "messages", json!(args.messages), "msgs");
    r.add("payload_bytes", "payload size", json!(args.size), "B");
    r.add(
        "inflight",
        "unconfirmed publishes in flight",
        json!(args.inflight),
        "",
    );
    r.add(
        "publish_rate",
        "publish rate (QoS 1, confirmed)",
        report::rate_value(report::per_second(args.messages, publish_time)),
        "msgs/s",
    );
    r.add(
        "consume_rate",
        "consume rate (acked)",
        report::rate_value(report::per_second(args.messages, consume_time)),
        "msgs/s",
    );
    latency.add_to(&mut r, "confirm_latency", "confirm latency");
    client.close().await?;
    consumer_client.close().await?;
    Ok(r)
}

fn record(
    latency: &mut Latency,
    done: Option<(
        Instant,
        Result<tern_client::Confirmation, tern_client::Error>,
    )>,
) -> anyhow::Result<()> {
    if let Some((sent, result)) = done {
        let confirmation = result.context("a publish was not confirmed")?;
        if confirmation.queues != 1 {
            bail!(
                "a message was stored in {} queues, not 1",
                confirmation.queues
            );
        }
        latency.record_ns(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    Ok(())
}
