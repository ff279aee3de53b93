//! The `mqtt-bridge` scenario: messages/s from MQTT publishers through a bridge into a
//! tern subscriber, at QoS 0 or QoS 1.
//!
//! 1. Starts an MQTT broker (rumqttd, embedded, on a free loopback port) unless
//!    `--mqtt` names one, and a tern broker in this process whose bridge imports
//!    `bench/#` at the chosen QoS (the tern side must be in-process: the bridge is
//!    configured in it).
//! 2. A tern subscriber on `bench.>`; `--publishers` MQTT clients (rumqttc), each on
//!    its own topic `bench/p<i>`.
//! 3. Warm-up: the publishers send `--warmup` messages in all and the subscriber waits
//!    for them (this also proves the bridge's subscription is in place).
//! 4. Measured: every publisher sends its share of `--messages` as fast as rumqttc
//!    takes them (for QoS 1, rumqttc's window of 100 unacknowledged publishes paces
//!    it; the bridge acks each only after tern confirmed it). The subscriber counts
//!    until it has them all or nothing came for `--quiet`.
//!
//! Times run from the first publish to the last message received; every 100th message
//! carries its send time in its first 8 bytes for the latency (MQTT publisher → MQTT
//! broker → bridge → tern → subscriber).

// The embedded broker the bridge tests use (one copy of its settings).
#[path = "../../tests/common/mqtt.rs"]
mod embedded_mqtt;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use tern_broker::config::Listen;
use tern_broker::{Config, Server, Settings};

use crate::client;
use crate::report::{self, Clock, Report};
use crate::stamped::{receive, Payload};

/// Options of the `mqtt-bridge` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Messages to publish in total, shared out among the publishers
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,

    /// Payload size in bytes (latency needs at least 8, for the timestamp)
    #[arg(long, default_value_t = 64)]
    pub size: usize,

    /// MQTT publishing connections
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    pub publishers: u64,

    /// QoS of the MQTT publishes and of the bridge's import: 0 or 1
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,

    /// Warm-up messages before measuring
    #[arg(long, default_value_t = 2_000)]
    pub warmup: u64,

    /// How long the subscriber waits for the next message before reporting a shortfall
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub quiet: Duration,

    /// An MQTT broker to use (`host:port`) instead of an embedded rumqttd
    #[arg(long, value_name = "ADDR")]
    pub mqtt: Option<SocketAddr>,
}

/// Runs the scenario on a runtime of its own; returns the report.
///
/// # Errors
///
/// A broker could not start, or a client could not connect, subscribe or publish.
pub fn run(args: &Args) -> anyhow::Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tern-bench")
        .build()
        .context("building the runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &Args) -> anyhow::Result<Report> {
    let mqtt = match args.mqtt {
        Some(addr) => addr,
        None => embedded_mqtt::start(SocketAddr::from(([127, 0, 0, 1], 0)))?,
    };
    let data = tempfile::Builder::new()
        .prefix("tern-bench-")
        .tempdir()
        .context("creating the broker's data directory")?;
    let settings = Settings::from_toml(&format!(
        "[[bridge.mqtt]]\nname = \"bench\"\nurl = \"mqtt://{mqtt}\"\nclean_session = true\n\
         [[bridge.mqtt.import]]\nmqtt = \"bench/#\"\nqos = {}\n",
        args.qos
    ))?;
    let config = Config {
        listen: Listen::On(SocketAddr::from(([127, 0, 0, 1], 0))),
        data_dir: data.path().to_owned(),
        metrics_listen: Listen::Off,
        bridges: tern_broker::config::bridge::validate(settings.bridge.unwrap_or_default())?,
        ..Config::default()
    };
    let running = Server::start(config).await.context("starting the broker")?;
    ternd::bridge::start(running.server());
    let addr = running.addr().context("no plaintext listener")?;
    let server = running.server().clone();

    let subscriber = client::builder("bench-sub")
        .subscription_capacity(1 << 20)
        .connect(addr.to_string())
        .await?;
    let mut sub = subscriber.subscribe("bench.>").await?;
    wait_connected(&server).await?;
    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let mut publishers = Vec::new();
    for i in 0..args.publishers {
        publishers.push(mqtt_client(mqtt, &format!("bench-pub-{i}")).await?);
    }

    // Warm-up, until the subscriber has it all: QoS 0 sent before the bridge's
    // subscription was in place is lost, so send again until some arrives.
    let clock = Clock::new();
    let payload = Payload::new(args.size);
    let mut warmed = 0;
    for round in 0..20 {
        for (i, p) in publishers.iter().enumerate() {
            for _ in 0..(args.warmup / args.publishers).max(1) {
                p.publish(format!("bench/p{i}"), qos, false, payload.plain.to_vec())
                    .await?;
            }
        }
        let got = receive(&mut sub, args.warmup, Duration::from_millis(500), None).await;
        warmed += got.count;
        if got.count > 0 && (round > 0 || got.count >= args.warmup / 2) {
            break;
        }
    }
    if warmed == 0 {
        bail!("nothing came through the bridge during the warm-up");
    }
    // Whatever of the warm-up is still on its way.
    receive(&mut sub, u64::MAX, Duration::from_millis(500), None).await;

    let started = Instant::now();
    let tasks: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let share = args.messages / args.publishers
                + u64::from((i as u64) < args.messages % args.publishers);
            let payload = payload.clone();
            tokio::spawn(async move {
                let topic = format!("bench/p{i}");
                let mut buf = BytesMut::new();
                for n in 0..share {
                    let body = payload.message(n, &mut buf, clock).to_vec();
                    client.publish(topic.as_str(), qos, false, body).await?;
                }
                anyhow::Ok((share, Instant::now()))
            })
        })
        .collect();
    let received = receive(&mut sub, args.messages, args.quiet, Some(clock)).await;
    let mut published = 0;
    let mut publish_end = started;
    for t in tasks {
        let (n, end) = t.await??;
        published += n;
        publish_end = publish_end.max(end);
    }
    let in_metric = metric(
        &server,
        "tern_bridge_messages_total{bridge=\"bench\",direction=\"in\"}",
    )
    .await;

    let mut r = Report::new("mqtt-bridge");
    r.add(
        "qos",
        "QoS (MQTT publish and bridge import)",
        json!(args.qos),
        "",
    );
    r.add("publishers", "MQTT publishers", json!(args.publishers), "");
    r.add("size", "payload size", json!(args.size), "B");
    r.add(
        "mqtt_broker",
        "MQTT broker",
        json!(args
            .mqtt
            .map_or("embedded rumqttd".to_string(), |a| a.to_string())),
        "",
    );
    r.add("published", "published (MQTT)", json!(published), "msgs");
    r.add(
        "received",
        "received (tern subscriber)",
        json!(received.count),
        "msgs",
    );
    r.add(
        "publish_secs",
        "publish time",
        report::seconds(publish_end - started),
        "s",
    );
    if let Some(last) = received.last {
        let elapsed = last - started;
        r.add(
            "elapsed_secs",
            "first publish to last receive",
            report::seconds(elapsed),
            "s",
        );
        r.add(
            "msgs_per_sec",
            "throughput through the bridge",
            json!(report::per_second(received.count, elapsed).round()),
            "msgs/s",
        );
    }
    received.latency.add_to(
        &mut r,
        "latency",
        "latency (MQTT publisher → tern subscriber)",
    );
    if let Some(n) = in_metric {
        r.add(
            "bridge_in",
            "bridge messages in (warm-up included)",
            json!(n),
            "msgs",
        );
    }
    if let Some(rss) = report::process_peak_rss() {
        r.add(
            "process_peak_rss_mib",
            "process peak RSS (everything)",
            json!(rss / (1024 * 1024)),
            "MiB",
        );
    }
    drop(sub);
    let _ = subscriber.close().await;
    running.stop().await.context("broker shutdown")?;
    Ok(r)
}

/// An MQTT client whose event loop runs in a task.
async fn mqtt_client(addr: SocketAddr, id: &str) -> anyhow::Result<AsyncClient> {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(30);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let (up_tx, up) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut up_tx = Some(up_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = up_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                // The client is gone: rumqttc would reconnect only to report it again.
                Err(ConnectionError::RequestsDone) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), up)
        .await
        .context("the MQTT publisher could not connect")??;
    Ok(client)
}

async fn metric(server: &Server, prefix: &str) -> Option<u64> {
    server
        .metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

async fn wait_connected(server: &Server) -> anyhow::Result<()> {
    for _ in 0..1000 {
        if metric(server, "tern_bridge_connected{bridge=\"bench\"}").await == Some(1) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("the bridge did not connect to the MQTT broker")
}
