//! The `pipeline` scenario: ventilator → workers → sink (push/pull), the ZeroMQ
//! task-ventilator shape, over QoS 0 and a queue group.
//!
//! 1. The sink connects and subscribes to `<subject>.done`; `--workers` workers, each
//!    on a connection of its own, join the queue group `bench-workers` on
//!    `<subject>.tasks`, so each task goes to one of them. A worker forwards each task
//!    to `<subject>.done` as it came (the same bytes; the work is the forwarding).
//! 2. The ventilator publishes `--warmup` tasks and waits until the sink has them all;
//!    they are not counted.
//! 3. The ventilator publishes `--tasks` tasks. It keeps at most `--window` of them
//!    between itself and the sink: each publish takes a credit, each task at the sink
//!    returns one. QoS 0 may drop under overload (a full subscription buffer, or the
//!    broker's slow-consumer policy); the window keeps the pipeline below that point,
//!    and the report says how many tasks went missing (and were duplicated) anyway.
//!
//! Time runs from the first measured publish to the last task at the sink. Every task
//! carries its id and its send time; the sink marks each id seen (missing and
//! duplicate tasks are counted) and records send-to-sink latency.
//!
//! ```text
//! payload  id: u64 BE (top bit set: warm-up) | send_ns: u64 BE | filler up to --size
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;
use tern_client::{Client, Subscription};
use tokio::sync::{oneshot, Semaphore};

use crate::client::connect;
use crate::report::{self, Clock, Latency, Report};

/// Set in the id of a warm-up task.
const WARM: u64 = 1 << 63;
/// Bytes of id and timestamp at the start of every payload.
const HEAD_LEN: usize = 16;

/// Options of the `pipeline` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Tasks to push through the pipeline
    #[arg(long, default_value_t = 100_000)]
    pub tasks: u64,

    /// Workers, each on its own connection, in one queue group
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    pub workers: u64,

    /// Task payload size in bytes (at least 16: id and timestamp)
    #[arg(long, default_value_t = 128)]
    pub size: usize,

    /// Most tasks between the ventilator and the sink at once
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub window: u64,

    /// Warm-up tasks pushed through (and not counted) before measuring
    #[arg(long, default_value_t = 1_000)]
    pub warmup: u64,

    /// Subject prefix: tasks go to `<subject>.tasks`, results to `<subject>.done`
    #[arg(long, default_value = "bench.pipeline")]
    pub subject: String,

    /// How long the ventilator waits for a credit, and the sink for a task, before the
    /// run is declared stalled (tasks were lost)
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub quiet: Duration,
}

/// What the sink saw of the measured tasks.
#[derive(Debug)]
struct Sunk {
    /// Distinct measured tasks that arrived.
    distinct: u64,
    duplicates: u64,
    /// Warm-up tasks that arrived.
    warm: u64,
    /// When the last measured task arrived.
    last: Option<Instant>,
    latency: Latency,
    /// Dropped by the sink's client because its subscription buffer was full.
    client_dropped: u64,
}

/// Runs the scenario against the broker at `addr`.
///
/// # Errors
///
/// A client could not connect, subscribe or publish.
pub async fn run(addr: &str, args: &Args) -> anyhow::Result<Report> {
    let clock = Clock::new();
    let tasks_subject = format!("{}.tasks", args.subject);
    let done_subject = format!("{}.done", args.subject);
    let size = args.size.max(HEAD_LEN);
    let window = usize::try_from(args.window).unwrap_or(usize::MAX);
    let credit = Arc::new(Semaphore::new(window));

    // Sink first, then the workers, then the ventilator: nothing published is missed.
    let sink = connect(addr, "bench-pipeline-sink").await?;
    let sink_sub = sink
        .subscribe(&done_subject)
        .await
        .with_context(|| format!("subscribing to {done_subject}"))?;
    let mut workers = Vec::new();
    for i in 0..args.workers {
        let client = connect(addr, &format!("bench-pipeline-worker-{i}")).await?;
        let sub = client
            .subscribe(&tasks_subject)
            .group("bench-workers")
            .await
            .with_context(|| format!("subscribing to {tasks_subject}"))?;
        let processed = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(work(
            client.clone(),
            sub,
            done_subject.clone(),
            Arc::clone(&processed),
        ));
        workers.push((client, processed, task));
    }
    let ventilator = connect(addr, "bench-pipeline-ventilator").await?;

    let (warm_tx, warm_rx) = oneshot::channel();
    let sink_task = tokio::spawn(collect(
        sink_sub,
        args.clone(),
        Arc::clone(&credit),
        clock,
        warm_tx,
    ));

    // Warm-up.
    let mut buf = BytesMut::with_capacity(size * 64);
    let mut stalled = false;
    for id in 0..args.warmup {
        if !take_credit(&credit, args.quiet).await {
            stalled = true;
            break;
        }
        let task = payload(&mut buf, WARM | id, clock.now_ns(), size);
        ventilator.publish(&tasks_subject, task).await?;
    }
    ventilator.flush().await.context("flushing the warm-up")?;
    let warm_done = matches!(tokio::time::timeout(args.quiet, warm_rx).await, Ok(Ok(())));

    // Measured phase.
    let start = Instant::now();
    let mut published = 0u64;
    if !stalled {
        for id in 0..args.tasks {
            if !take_credit(&credit, args.quiet).await {
                stalled = true;
                break;
            }
            let task = payload(&mut buf, id, clock.now_ns(), size);
            ventilator.publish(&tasks_subject, task).await?;
            published += 1;
        }
    }
    let publish_time = start.elapsed();
    ventilator.flush().await.context("flushing the tasks")?;
    let sunk = sink_task.await.context("the sink panicked")?;

    let mut processed = Vec::new();
    let mut worker_dropped = 0;
    for (client, count, task) in workers {
        let _ = client.close().await;
        worker_dropped += task.await.context("a worker panicked")??;
        processed.push(count.load(Ordering::Relaxed));
    }
    let _ = ventilator.close().await;
    let _ = sink.close().await;

    let elapsed = sunk
        .last
        .map_or(Duration::ZERO, |l| l.saturating_duration_since(start));
    let mut r = Report::new("pipeline");
    r.add("tasks", "tasks", json!(args.tasks), "");
    r.add("workers", "workers", json!(args.workers), "");
    r.add("size", "payload size", json!(size), "B");
    r.add("window", "window (tasks in flight)", json!(args.window), "");
    r.add(
        "publish_secs",
        "publish time",
        report::seconds(publish_time),
        "s",
    );
    r.add(
        "elapsed_secs",
        "first publish to last task at the sink",
        report::seconds(elapsed),
        "s",
    );
    r.add(
        "tasks_per_sec",
        "tasks through the pipeline",
        report::rate_value(report::per_second(sunk.distinct, elapsed)),
        "tasks/s",
    );
    r.add(
        "processed_per_worker",
        "processed per worker",
        json!(processed),
        "tasks",
    );
    r.add(
        "missing",
        "missing at the sink",
        json!(args.tasks - sunk.distinct),
        "tasks",
    );
    r.add(
        "duplicates",
        "duplicates at the sink",
        json!(sunk.duplicates),
        "tasks",
    );
    r.add(
        "client_dropped",
        "dropped by clients (subscription full: sink, workers)",
        json!([sunk.client_dropped, worker_dropped]),
        "msgs",
    );
    if stalled || published < args.tasks {
        r.add(
            "stalled",
            "stalled (no credit returned within --quiet): published",
            json!(published),
            "tasks",
        );
    }
    if !warm_done || sunk.warm < args.warmup {
        r.add(
            "warmup_missing",
            "warm-up tasks missing",
            json!(args.warmup - sunk.warm.min(args.warmup)),
            "tasks",
        );
    }
    sunk.latency
        .add_to(&mut r, "latency", "ventilator to sink latency");
    Ok(r)
}

/// Waits for one credit of the window; `false` if none came back within `quiet`.
async fn take_credit(credit: &Semaphore, quiet: Duration) -> bool {
    match tokio::time::timeout(quiet, credit.acquire()).await {
        Ok(Ok(permit)) => {
            // Returned by the sink, one per task that arrives.
            permit.forget();
            true
        }
        _ => false,
    }
}

/// A task payload: id, send time, filler up to `size`.
fn payload(buf: &mut BytesMut, id: u64, now_ns: u64, size: usize) -> Bytes {
    buf.put_u64(id);
    buf.put_u64(now_ns);
    buf.put_bytes(0xab, size - HEAD_LEN);
    buf.split().freeze()
}

/// The id and send time of a task payload.
fn head(payload: &[u8]) -> Option<(u64, u64)> {
    let id = payload.get(..8)?.try_into().ok().map(u64::from_be_bytes)?;
    let sent = payload
        .get(8..16)?
        .try_into()
        .ok()
        .map(u64::from_be_bytes)?;
    Some((id, sent))
}

/// A worker: forwards every task to `done` until its client is closed. Counts the
/// measured tasks it processed; returns how many its client dropped.
async fn work(
    client: Client,
    mut sub: Subscription,
    done: String,
    processed: Arc<AtomicU64>,
) -> anyhow::Result<u64> {
    while let Some(task) = sub.next().await {
        if head(&task.payload).is_some_and(|(id, _)| id & WARM == 0) {
            processed.fetch_add(1, Ordering::Relaxed);
        }
        if client.publish(&done, task.payload).await.is_err() {
            break; // closed at the end of the run
        }
    }
    Ok(sub.dropped())
}

/// The sink: marks tasks seen, returns credit, records latency, until every measured
/// task arrived or none came for `--quiet`. Signals `warm` once the warm-up is in.
async fn collect(
    mut sub: Subscription,
    args: Args,
    credit: Arc<Semaphore>,
    clock: Clock,
    warm: oneshot::Sender<()>,
) -> Sunk {
    let tasks = usize::try_from(args.tasks).unwrap_or(usize::MAX);
    let mut seen = vec![false; tasks];
    let mut warm = Some(warm);
    if args.warmup == 0 {
        if let Some(w) = warm.take() {
            let _ = w.send(());
        }
    }
    let mut sunk = Sunk {
        distinct: 0,
        duplicates: 0,
        warm: 0,
        last: None,
        latency: Latency::new(),
        client_dropped: 0,
    };
    while sunk.distinct < args.tasks {
        let Ok(Some(first)) = tokio::time::timeout(args.quiet, sub.next()).await else {
            break; // quiet for too long, or the client closed
        };
        let mut next = Some(first);
        let mut batch = 0;
        while let Some(msg) = next {
            batch += 1;
            if let Some((id, sent)) = head(&msg.payload) {
                if id & WARM != 0 {
                    sunk.warm += 1;
                    if sunk.warm == args.warmup {
                        if let Some(w) = warm.take() {
                            let _ = w.send(());
                        }
                    }
                } else if let Some(slot) = usize::try_from(id).ok().and_then(|i| seen.get_mut(i)) {
                    if *slot {
                        sunk.duplicates += 1;
                    } else {
                        *slot = true;
                        sunk.distinct += 1;
                        sunk.latency.record_ns(clock.now_ns().saturating_sub(sent));
                    }
                }
            }
            next = if sunk.distinct < args.tasks {
                sub.try_next()
            } else {
                None
            };
        }
        credit.add_permits(batch);
        if sunk.distinct > 0 {
            sunk.last = Some(Instant::now());
        }
    }
    sunk.client_dropped = sub.dropped();
    sunk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_head_round_trips() {
        let mut buf = BytesMut::new();
        let p = payload(&mut buf, WARM | 7, 12_345, 128);
        assert_eq!(p.len(), 128);
        assert_eq!(head(&p), Some((WARM | 7, 12_345)));
        let p = payload(&mut buf, 3, 1, HEAD_LEN);
        assert_eq!(head(&p), Some((3, 1)));
        assert_eq!(head(&p[..15]), None);
    }
}
