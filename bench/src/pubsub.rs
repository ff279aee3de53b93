//! The `pubsub` scenario: fan-out throughput and latency of QoS 0 messages.
//!
//! 1. Each subscriber connects (one client connection each) and subscribes.
//! 2. Each publisher connects (one connection each) and publishes its share of the
//!    warm-up; every subscriber reads until it has seen all of it (or the quiet period
//!    passes). Nothing from the warm-up is counted; measuring starts only once every
//!    subscriber is done with it, so a late warm-up message is never counted as a
//!    measured one.
//! 3. All publishers start together and publish their share of `--messages` as fast as
//!    `publish` returns, reusing one `Bytes` payload. Every subscriber counts until it
//!    has all `--messages` or nothing arrived for the quiet period: QoS 0 may drop under
//!    overload, in the broker (slow-consumer policy) or in the client (a subscription
//!    buffer the application does not drain fast enough), and both are reported.
//!
//! Times run from the first publish to the last message received. Every 100th message
//! of each publisher carries its send time in the first 8 bytes of the payload
//! (nanoseconds since an epoch shared by the whole process, u64 big-endian); the
//! subscriber records receive time minus send time. Since publishers go flat out, that
//! is the latency at saturation, queueing in the buffers included, not an idle
//! round-trip time.
//!
//! ```text
//! payload  send_ns: u64 BE (0 = not stamped) | filler up to --size
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use serde_json::json;
use tern_client::Client;
use tokio::sync::Barrier;

use crate::client::connect;
use crate::report::{self, Clock, Latency, Report};
use crate::stamped::{receive, Payload, Received};

/// Options of the `pubsub` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Messages to publish in total, shared out among the publishers; each subscriber
    /// expects all of them
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,

    /// Payload size in bytes (latency needs at least 8, for the timestamp)
    #[arg(long, default_value_t = 128)]
    pub size: usize,

    /// Subject to publish on and subscribe to
    #[arg(long, default_value = "bench.pubsub")]
    pub subject: String,

    /// Publishing connections
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub publishers: u64,

    /// Subscribing connections, each with one subscription to the subject
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub subscribers: u64,

    /// Warm-up messages published (and awaited by every subscriber) before measuring
    #[arg(long, default_value_t = 10_000)]
    pub warmup: u64,

    /// How long a subscriber waits for the next message before reporting a shortfall
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub quiet: Duration,
}

/// What one publisher did in the measured phase.
#[derive(Debug)]
struct Published {
    count: u64,
    started: Instant,
    /// When the last `publish` returned (the message was in the client's buffer).
    finished: Instant,
}

/// What one subscriber saw in the measured phase.
#[derive(Debug)]
struct Subscriber {
    received: Received,
    /// Messages the client dropped because this subscription's buffer was full.
    client_dropped: u64,
    /// Warm-up messages that never arrived (they were dropped).
    warmup_missing: u64,
}

/// Runs the scenario against the broker at `addr`; returns the report (broker-side
/// figures such as drops and memory are added by the caller, which knows the broker).
///
/// # Errors
///
/// A client could not connect, subscribe or publish.
pub async fn run(addr: &str, args: &Args) -> anyhow::Result<Report> {
    let clock = Clock::new();
    let expected = args.messages;

    // Subscribers first, so that every message published afterwards reaches them.
    let mut subscriptions = Vec::new();
    for i in 0..args.subscribers {
        let client = connect(addr, &format!("bench-sub-{i}")).await?;
        let sub = client
            .subscribe(&args.subject)
            .await
            .with_context(|| format!("subscribing to {}", args.subject))?;
        subscriptions.push((client, sub));
    }
    let mut publishers = Vec::new();
    for i in 0..args.publishers {
        publishers.push(connect(addr, &format!("bench-pub-{i}")).await?);
    }

    // Warm-up: every connection carries traffic and every subscriber has seen all of
    // it before the clock starts.
    let (warm_tx, mut warm_rx) = tokio::sync::mpsc::channel(subscriptions.len());
    let readers: Vec<_> = subscriptions
        .into_iter()
        .map(|(client, mut sub)| {
            let warm_tx = warm_tx.clone();
            let (warmup, quiet) = (args.warmup, args.quiet);
            tokio::spawn(async move {
                let warm = receive(&mut sub, warmup, quiet, None).await;
                let _ = warm_tx.send(()).await;
                drop(warm_tx);
                let received = receive(&mut sub, expected, quiet, Some(clock)).await;
                let measured = Subscriber {
                    received,
                    client_dropped: sub.dropped(),
                    warmup_missing: warmup - warm.count,
                };
                drop(sub);
                let _ = client.close().await;
                measured
            })
        })
        .collect();
    drop(warm_tx);
    let payload = Payload::new(args.size);
    for (client, count) in publishers.iter().zip(shares(args.warmup, args.publishers)) {
        for _ in 0..count {
            client.publish(&args.subject, payload.plain.clone()).await?;
        }
        client.flush().await.context("flushing the warm-up")?;
    }
    // One signal from each subscriber; the channel closing first means one ended.
    for _ in 0..args.subscribers {
        warm_rx
            .recv()
            .await
            .context("a subscriber ended during the warm-up")?;
    }

    // Measured phase.
    let start = Arc::new(Barrier::new(publishers.len()));
    let writers: Vec<_> = publishers
        .into_iter()
        .zip(shares(expected, args.publishers))
        .map(|(client, count)| {
            let (start, payload, subject) =
                (Arc::clone(&start), payload.clone(), args.subject.clone());
            tokio::spawn(async move {
                start.wait().await;
                let published = publish(&client, &subject, count, &payload, clock).await;
                // The broker has everything once the flush returns; a failed flush
                // shows up as missing messages.
                let _ = client.close().await;
                published
            })
        })
        .collect();

    let mut sent = Vec::new();
    for w in writers {
        sent.push(w.await.context("a publisher panicked")??);
    }
    let mut received = Vec::new();
    for r in readers {
        received.push(r.await.context("a subscriber panicked")?);
    }
    Ok(summarize(args, &sent, &received))
}

/// `total` split into `parts` shares that differ by at most one.
fn shares(total: u64, parts: u64) -> impl Iterator<Item = u64> {
    (0..parts).map(move |i| total / parts + u64::from(i < total % parts))
}

async fn publish(
    client: &Client,
    subject: &str,
    count: u64,
    payload: &Payload,
    clock: Clock,
) -> anyhow::Result<Published> {
    let mut stamp_buf = BytesMut::new();
    let started = Instant::now();
    for i in 0..count {
        client
            .publish(subject, payload.message(i, &mut stamp_buf, clock))
            .await?;
    }
    Ok(Published {
        count,
        started,
        finished: Instant::now(),
    })
}

fn summarize(args: &Args, sent: &[Published], subscribers: &[Subscriber]) -> Report {
    let mut r = Report::new("pubsub");
    r.add(
        "messages",
        "messages per subscriber",
        json!(args.messages),
        "",
    );
    r.add("size", "payload size", json!(args.size), "B");
    r.add("publishers", "publishers", json!(args.publishers), "");
    r.add("subscribers", "subscribers", json!(args.subscribers), "");

    let Some(t0) = sent.iter().map(|p| p.started).min() else {
        return r;
    };
    let published: u64 = sent.iter().map(|p| p.count).sum();
    let publish_end = sent.iter().map(|p| p.finished).max().unwrap_or(t0);
    let publish_time = publish_end - t0;
    r.add(
        "publish_secs",
        "publish time",
        report::seconds(publish_time),
        "s",
    );
    r.add(
        "publish_rate",
        "publish rate",
        report::rate_value(report::per_second(published, publish_time)),
        "msgs/s",
    );

    let last = subscribers
        .iter()
        .filter_map(|s| s.received.last)
        .max()
        .unwrap_or(t0);
    let elapsed = last.saturating_duration_since(t0);
    let delivered: u64 = subscribers.iter().map(|s| s.received.count).sum();
    let per_sub: Vec<_> = subscribers
        .iter()
        .map(|s| &s.received)
        .map(|s| {
            let t = s
                .last
                .map_or(Duration::ZERO, |l| l.saturating_duration_since(t0));
            report::rate_value(report::per_second(s.count, t))
        })
        .collect();
    r.add(
        "elapsed_secs",
        "first publish to last receive",
        report::seconds(elapsed),
        "s",
    );
    r.add(
        "delivered",
        "delivered per subscriber",
        json!(subscribers
            .iter()
            .map(|s| s.received.count)
            .collect::<Vec<_>>()),
        "msgs",
    );
    r.add(
        "delivered_rate_per_subscriber",
        "delivered rate per subscriber",
        json!(per_sub),
        "msgs/s",
    );
    r.add(
        "delivered_rate_total",
        "delivered rate total",
        report::rate_value(report::per_second(delivered, elapsed)),
        "msgs/s",
    );
    let payload_bytes = u64::try_from(args.size).unwrap_or(u64::MAX);
    r.add(
        "payload_mb_per_sec_in",
        "payload in (published)",
        report::mb_per_second(published * payload_bytes, publish_time),
        "MB/s",
    );
    r.add(
        "payload_mb_per_sec_out",
        "payload out (delivered, total)",
        report::mb_per_second(delivered * payload_bytes, elapsed),
        "MB/s",
    );
    let missing: u64 = subscribers
        .iter()
        .map(|s| args.messages.saturating_sub(s.received.count))
        .sum();
    r.add(
        "missing",
        "missing (all subscribers)",
        json!(missing),
        "msgs",
    );
    r.add(
        "client_dropped",
        "dropped by client (subscription full)",
        json!(subscribers
            .iter()
            .map(|s| s.client_dropped)
            .collect::<Vec<_>>()),
        "msgs",
    );
    let warmup_missing: u64 = subscribers.iter().map(|s| s.warmup_missing).sum();
    if warmup_missing > 0 {
        r.add(
            "warmup_missing",
            "warm-up messages missing",
            json!(warmup_missing),
            "msgs",
        );
    }

    let mut latency = Latency::new();
    for s in subscribers {
        latency.merge(&s.received.latency);
    }
    latency.add_to(&mut r, "latency", "latency");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        assert_eq!(shares(10, 3).collect::<Vec<_>>(), [4, 3, 3]);
        assert_eq!(shares(2, 4).sum::<u64>(), 2);
    }
}
