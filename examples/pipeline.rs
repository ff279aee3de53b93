//! Pipeline (push/pull): a ventilator pushes tasks, a pool of workers pulls them, a
//! sink collects the results — ZeroMQ's task-ventilator shape.
//!
//! Start a broker (`cargo run --release --bin ternd`), then:
//!
//! ```text
//! cargo run --example pipeline               # transient: a queue group
//! cargo run --example pipeline -- durable    # durable: a queue with acks
//! ```
//!
//! Transient: workers form a queue group on `tasks`; each task goes to one of them.
//! Tasks in flight are lost if a worker dies. Durable: tasks wait in a queue; each
//! worker takes one at a time (prefetch 1: fair dispatch, nobody hoards) and acks it
//! after publishing its result, so a task a dead worker held is redone by another.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tern::{Client, Error, Qos, QueueConfig};

const TASKS: u64 = 10_000;
const WORKERS: usize = 4;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let server = std::env::var("TERN_SERVER").unwrap_or_else(|_| "127.0.0.1:7400".into());
    let durable = std::env::args().nth(1).as_deref() == Some("durable");
    let sink = Client::builder().name("sink").connect(&server).await?;
    let mut results = sink.subscribe("results").await?;

    let ventilator = Client::builder()
        .name("ventilator")
        .connect(&server)
        .await?;
    if durable {
        ventilator
            .declare_queue(&QueueConfig::new("tasks").bind("tasks"))
            .await?;
    }
    // Every worker says when it is attached, so that no task goes out before.
    let (ready, mut attached) = tokio::sync::mpsc::channel(WORKERS);
    let mut workers = Vec::new();
    for n in 0..WORKERS {
        let worker = Client::builder()
            .name(format!("worker-{n}"))
            .connect(&server)
            .await?;
        workers.push(tokio::spawn(work(worker, durable, ready.clone())));
    }
    for _ in 0..WORKERS {
        attached.recv().await;
    }

    let start = Instant::now();
    let mut confirms = Vec::new();
    for task in 0..TASKS {
        let publish = ventilator.publish("tasks", task.to_string());
        if durable {
            // Sent now, confirmed later: thousands of tasks share each disk flush.
            confirms.push(publish.qos(Qos::AtLeastOnce).send().await?);
        } else {
            publish.await?;
        }
    }
    for confirm in confirms {
        confirm.await?;
    }
    ventilator.flush().await?;

    let mut done = HashSet::new();
    while (done.len() as u64) < TASKS {
        let Ok(Some(result)) = tokio::time::timeout(Duration::from_secs(5), results.next()).await
        else {
            break;
        };
        let text = String::from_utf8_lossy(&result.payload);
        if let Some(task) = text.split(':').next().and_then(|t| t.parse::<u64>().ok()) {
            done.insert(task);
        }
    }
    let elapsed = start.elapsed();
    println!(
        "{} of {TASKS} tasks processed once each in {:.2?} ({:.0} tasks/s) by {WORKERS} {} workers",
        done.len(),
        elapsed,
        done.len() as f64 / elapsed.as_secs_f64(),
        if durable { "durable" } else { "transient" },
    );
    for w in workers {
        w.abort();
    }
    Ok(())
}

/// One worker: squares each task number and publishes `task:result` to the sink.
async fn work(
    client: Client,
    durable: bool,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Result<(), Error> {
    if durable {
        let mut tasks = client.consume("tasks").prefetch(1).await?;
        let _ = ready.send(()).await;
        while let Some(task) = tasks.next().await {
            let result = square(&task.message.payload);
            client.publish("results", result).await?;
            task.ack().await?;
        }
    } else {
        let mut tasks = client.queue_subscribe("tasks", "workers").await?;
        let _ = ready.send(()).await;
        while let Some(task) = tasks.next().await {
            client.publish("results", square(&task.payload)).await?;
        }
    }
    Ok(())
}

fn square(payload: &[u8]) -> String {
    let n: u64 = String::from_utf8_lossy(payload).parse().unwrap_or(0);
    format!("{n}:{}", n * n)
}
