//! The `rpc` scenario: request-reply round trips against an echo responder.
//!
//! 1. The responder connects (a connection of its own) and serves `--subject` with
//!    [`Client::serve`], answering each request with its payload.
//! 2. The requester connects and sends `--warmup` requests, not counted.
//! 3. `--concurrency` lanes share `--requests` among them; each lane sends its share
//!    one after the other, waiting for each reply before the next request. With one
//!    lane (the default) that is sequential round trips, the latency at rest; with 64,
//!    64 requests are in flight at once on the requester's one connection.
//!
//! Each round trip is timed from the call to `request` to its reply, and recorded in
//! the latency histogram. Every reply is checked: it must echo its request's payload.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde_json::json;
use tern_client::{Client, Service, ServiceRequest};

use crate::client::connect;
use crate::report::{self, Latency, Report};

/// Options of the `rpc` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Round trips to measure, shared out among the lanes
    #[arg(long, default_value_t = 20_000)]
    pub requests: u64,

    /// Request (and reply) payload size in bytes
    #[arg(long, default_value_t = 128)]
    pub size: usize,

    /// Requests in flight at once (1: sequential round trips)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: u64,

    /// Round trips made (and not counted) before measuring
    #[arg(long, default_value_t = 1_000)]
    pub warmup: u64,

    /// Subject the responder serves
    #[arg(long, default_value = "bench.rpc")]
    pub subject: String,

    /// How long one request may wait for its reply
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// What one lane did in the measured phase.
#[derive(Debug)]
struct Lane {
    latency: Latency,
    /// When its last reply arrived.
    finished: Instant,
}

/// Runs the scenario against the broker at `addr`.
///
/// # Errors
///
/// A client could not connect or serve, a request failed, or a reply did not echo its
/// request.
pub async fn run(addr: &str, args: &Args) -> anyhow::Result<Report> {
    let responder = connect(addr, "bench-rpc-responder").await?;
    let service = serve_echo(&responder, &args.subject).await?;
    let requester = connect(addr, "bench-rpc-requester").await?;
    let payload = Bytes::from(vec![0x5a; args.size]);

    // Warm-up, with the same concurrency as the measured phase.
    lanes(&requester, args, args.warmup, &payload).await?;

    let start = Instant::now();
    let measured = lanes(&requester, args, args.requests, &payload).await?;
    let end = measured.iter().map(|l| l.finished).max().unwrap_or(start);
    let elapsed = end - start;

    let mut latency = Latency::new();
    for lane in &measured {
        latency.merge(&lane.latency);
    }
    if latency.count() != args.requests {
        bail!(
            "{} round trips measured, {} expected",
            latency.count(),
            args.requests
        );
    }

    let mut r = Report::new("rpc");
    r.add("requests", "round trips measured", json!(args.requests), "");
    r.add("size", "payload size", json!(args.size), "B");
    r.add(
        "concurrency",
        "requests in flight",
        json!(args.concurrency),
        "",
    );
    r.add("elapsed_secs", "elapsed", report::seconds(elapsed), "s");
    r.add(
        "round_trips_per_sec",
        "round trip rate",
        report::rate_value(report::per_second(args.requests, elapsed)),
        "/s",
    );
    latency.add_to(&mut r, "rtt", "round trip");
    drop(service);
    requester.close().await?;
    responder.close().await?;
    Ok(r)
}

/// Answers every request on `subject` with its own payload.
async fn serve_echo(client: &Client, subject: &str) -> anyhow::Result<Service> {
    client
        .serve(subject)
        .run(|req: ServiceRequest| async move {
            Ok::<_, std::convert::Infallible>(req.message.payload)
        })
        .await
        .with_context(|| format!("serving {subject}"))
}

/// Makes `total` round trips over `--concurrency` lanes; returns each lane's figures.
async fn lanes(
    client: &Client,
    args: &Args,
    total: u64,
    payload: &Bytes,
) -> anyhow::Result<Vec<Lane>> {
    let tasks: Vec<_> = shares(total, args.concurrency)
        .map(|count| {
            let (client, payload) = (client.clone(), payload.clone());
            let (subject, timeout) = (args.subject.clone(), args.timeout);
            tokio::spawn(async move { lane(&client, &subject, count, &payload, timeout).await })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.context("a lane panicked")??);
    }
    Ok(out)
}

/// `count` sequential round trips.
async fn lane(
    client: &Client,
    subject: &str,
    count: u64,
    payload: &Bytes,
    timeout: Duration,
) -> anyhow::Result<Lane> {
    let mut latency = Latency::new();
    for i in 0..count {
        let sent = Instant::now();
        let reply = client
            .request(subject, payload.clone())
            .timeout(timeout)
            .await
            .with_context(|| format!("round trip {i} of a lane"))?;
        latency.record_ns(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
        if reply.payload != *payload {
            bail!(
                "a reply of {} bytes does not echo its {}-byte request",
                reply.payload.len(),
                payload.len()
            );
        }
    }
    Ok(Lane {
        latency,
        finished: Instant::now(),
    })
}

/// `total` split into `parts` shares that differ by at most one.
fn shares(total: u64, parts: u64) -> impl Iterator<Item = u64> {
    (0..parts).map(move |i| total / parts + u64::from(i < total % parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        assert_eq!(shares(20_000, 64).sum::<u64>(), 20_000);
        assert_eq!(shares(5, 1).collect::<Vec<_>>(), [5]);
    }
}
