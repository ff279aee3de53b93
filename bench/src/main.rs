//! tern-bench: load scenarios against a tern broker.
//!
//! ```text
//! tern-bench pubsub [--server ADDR] [--messages N] [--size BYTES] [--publishers N]
//!                   [--subscribers N] [--json]
//! tern-bench queue  [--server ADDR] [--messages N] [--size BYTES] [--inflight N]
//!                   [--prefetch N] [--json]
//! tern-bench rpc    [--server ADDR] [--requests N] [--size BYTES] [--concurrency N]
//!                   [--json]
//! tern-bench pipeline [--server ADDR] [--tasks N] [--workers N] [--size BYTES]
//!                   [--window N] [--json]
//! tern-bench filter [--server ADDR] [--mode equality|range] [--subscriptions N]
//!                   [--connections N] [--messages N] [--size BYTES] [--window N]
//!                   [--json]
//! tern-bench mqtt-bridge [--messages N] [--publishers N] [--qos 0|1] [--size BYTES]
//!                   [--mqtt ADDR] [--json]
//! ```
//!
//! Without `--server` each run starts a broker in this process (see [`broker`]), which
//! also lets the report include the broker's drop counters and the process's peak
//! memory.
//!
//! # Layout
//!
//! * `main`: the command line; runs one scenario between starting and stopping the
//!   broker.
//! * `broker`: the in-process broker; `client`: how scenarios connect to it.
//! * `report`: latency histogram, rates, peak memory, and the human and JSON output.
//! * one module per scenario (`pubsub`), each with its `Args` and an
//!   `async fn run(addr, &Args) -> Result<Report>`. A new scenario (queue, rpc,
//!   pipeline, filter, mqtt-bridge) adds a module and a [`Command`] variant.

mod broker;
mod client;
mod filter;
mod mqtt_bridge;
mod pipeline;
mod pubsub;
mod queue;
mod report;
mod rpc;
mod stamped;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::broker::InProcessBroker;
use crate::report::Report;

#[derive(Debug, Parser)]
#[command(
    name = "tern-bench",
    version,
    about = "Load scenarios against a tern broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fan-out throughput and latency: publishers flat out, every subscriber gets
    /// every message
    Pubsub {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: pubsub::Args,
    },
    /// Durable queue: QoS 1 publishes with pipelined confirms (fsync'd), then
    /// consume with acks
    Queue {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: queue::Args,
    },
    /// Request-reply round trips against an echo responder: round trips/s and
    /// latency, sequential or with many requests in flight
    Rpc {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: rpc::Args,
    },
    /// Push/pull: ventilator → workers (a queue group) → sink, paced by a window;
    /// tasks/s, and every task checked off at the sink
    Pipeline {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: pipeline::Args,
    },
    /// Content-filtered subscriptions: publish and delivery rates with N filters,
    /// header equalities (indexed) or payload ranges, every delivery checked
    Filter {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: filter::Args,
    },
    /// MQTT publishers → MQTT broker → bridge → tern subscriber: messages/s and
    /// latency at QoS 0 or 1 (always an in-process tern broker, which runs the bridge;
    /// an embedded rumqttd unless --mqtt names an MQTT broker)
    MqttBridge {
        /// Print one JSON summary object instead of lines
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        args: mqtt_bridge::Args,
    },
}

/// Options every scenario takes.
#[derive(Debug, Clone, clap::Args)]
struct Common {
    /// Broker to measure (`host:port`); without it, a broker is started in this process
    /// on 127.0.0.1:0, sharing the machine's cores with the load generator
    #[arg(long, value_name = "ADDR")]
    server: Option<String>,

    /// Print one JSON summary object instead of lines
    #[arg(long)]
    json: bool,

    /// Worker threads of the load generator's runtime [default: number of cores]
    #[arg(long, value_name = "N")]
    client_threads: Option<usize>,

    /// Worker threads of the in-process broker's runtime [default: number of cores]
    #[arg(long, value_name = "N")]
    broker_threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::MqttBridge { json, args } => {
            mqtt_bridge::run(&args)?.print(json);
        }
        Command::Pubsub { common, args } => {
            let report = measure(
                &common,
                |addr| async move { pubsub::run(&addr, &args).await },
            )?;
            report.print(common.json);
        }
        Command::Queue { common, args } => {
            let report = measure(
                &common,
                |addr| async move { queue::run(&addr, &args).await },
            )?;
            report.print(common.json);
        }
        Command::Rpc { common, args } => {
            let report = measure(&common, |addr| async move { rpc::run(&addr, &args).await })?;
            report.print(common.json);
        }
        Command::Pipeline { common, args } => {
            let report = measure(
                &common,
                |addr| async move { pipeline::run(&addr, &args).await },
            )?;
            report.print(common.json);
        }
        Command::Filter { common, args } => {
            let report = measure(
                &common,
                |addr| async move { filter::run(&addr, &args).await },
            )?;
            report.print(common.json);
        }
    }
    Ok(())
}

/// Runs `scenario` against `--server`, or against an in-process broker that is
/// started first and stopped after; adds what only an in-process broker can tell.
fn measure<F, Fut>(common: &Common, scenario: F) -> anyhow::Result<Report>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Report>>,
{
    // Started before the load generator's runtime, and outside it: it has its own.
    let (broker, addr) = match &common.server {
        Some(addr) => (None, addr.clone()),
        None => {
            let broker = InProcessBroker::start(common.broker_threads)?;
            let addr = broker.addr().to_string();
            (Some(broker), addr)
        }
    };

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("tern-bench");
    if let Some(n) = common.client_threads {
        builder.worker_threads(n);
    }
    let runtime = builder
        .build()
        .context("building the load generator's runtime")?;
    let mut report = runtime.block_on(scenario(addr.clone()))?;
    drop(runtime);

    match broker {
        None => report.add("broker", "broker", json!(addr), ""),
        Some(broker) => {
            let stats = broker.stats();
            report.add(
                "broker",
                "broker",
                json!(format!("in-process at {addr}")),
                "",
            );
            report.add(
                "broker_messages",
                "broker messages in / out (warm-up included)",
                json!([stats.messages_in, stats.messages_out]),
                "msgs",
            );
            report.add(
                "broker_slow_consumer_drops",
                "dropped by broker (slow consumer)",
                json!(stats.slow_consumer_drops),
                "msgs",
            );
            if let Some(rss) = report::process_peak_rss() {
                report.add(
                    "process_peak_rss_mib",
                    "process peak RSS (broker + bench)",
                    json!(rss / (1024 * 1024)),
                    "MiB",
                );
            }
            broker.stop()?;
        }
    }
    Ok(report)
}
