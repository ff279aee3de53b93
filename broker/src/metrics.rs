//! Prometheus metrics.
//!
//! Every server owns its recorder — built, not installed as the process-global one — so
//! that several brokers in one process (tests, benchmarks) keep separate figures.
//! Handles to it are the `metrics` facade's `Counter`, `Gauge` and `Histogram`.
//!
//! Most figures are counted where they are cheapest to count: in the server's and the
//! queues' own counters, added up once per read batch. They are copied into the
//! recorder when Prometheus scrapes (`absolute` for counters), so the hot path pays
//! nothing for the exposition. Only histograms (latencies, flush times) are recorded as
//! events happen. `docs/METRICS.md` lists every metric.
//!
//! The endpoint is a deliberately small HTTP/1.1 responder: GET `/metrics` answers the
//! text exposition, anything else 404. Requests are read with a size bound and a
//! timeout, so a stray client cannot hold it up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::durable::DurableMetrics;
use crate::journal::LogMetrics;
use crate::server::Shared;

/// Buckets of the latency histograms, in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Largest HTTP request head the endpoint reads.
const MAX_REQUEST: usize = 8 * 1024;

static META: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

/// A server's recorder and the handles recorded on the hot path.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    started: Instant,
    /// From a QoS 1/2 publish arriving to its confirm being queued.
    pub confirm_latency: Histogram,
    /// Time one store flush (fsync) takes.
    pub flush_duration: Histogram,
    /// From a message entering a queue to its first delivery to a consumer.
    pub delivery_latency: Histogram,
    pub commits: Counter,
    pub flushes: Counter,
    pub bytes_written: Counter,
    pub disk_alarm: Gauge,
    pub disk_alarms: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// The handles the durable queues record into.
    pub fn durable(&self) -> DurableMetrics {
        DurableMetrics {
            log: LogMetrics {
                commits: self.commits.clone(),
                flushes: self.flushes.clone(),
                bytes_written: self.bytes_written.clone(),
                flush_duration: self.flush_duration.clone(),
            },
            disk_alarm: self.disk_alarm.clone(),
            disk_alarms: self.disk_alarms.clone(),
            confirm_latency: self.confirm_latency.clone(),
            delivery_latency: self.delivery_latency.clone(),
        }
    }

    pub fn new() -> Self {
        let builder = PrometheusBuilder::new();
        // The bucket list is a non-empty constant; it cannot be refused.
        let builder = match builder.set_buckets(LATENCY_BUCKETS) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let m = Self {
            confirm_latency: histogram(&recorder, "tern_publish_confirm_duration_seconds"),
            flush_duration: histogram(&recorder, "tern_store_flush_duration_seconds"),
            delivery_latency: histogram(&recorder, "tern_delivery_latency_seconds"),
            commits: counter(&recorder, "tern_store_commits_total", &[]),
            flushes: counter(&recorder, "tern_store_flushes_total", &[]),
            bytes_written: counter(&recorder, "tern_store_bytes_written_total", &[]),
            disk_alarm: gauge(&recorder, "tern_store_disk_alarm", &[]),
            disk_alarms: counter(&recorder, "tern_store_disk_alarms_total", &[]),
            recorder,
            started: Instant::now(),
        };
        for (name, help) in DESCRIPTIONS {
            let name = KeyName::from_const_str(name);
            let help = SharedString::const_str(help);
            if name.as_str().ends_with("_seconds") && !name.as_str().starts_with("tern_uptime") {
                m.recorder.describe_histogram(name, None, help);
            } else if name.as_str().ends_with("_total") {
                m.recorder.describe_counter(name, None, help);
            } else {
                m.recorder.describe_gauge(name, None, help);
            }
        }
        m
    }

    /// Drains histogram samples into their buckets. Runs every few seconds whether or
    /// not anyone scrapes, so that samples never pile up.
    pub fn upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }

    /// The text exposition, with scrape-time figures brought up to date.
    pub async fn render(&self, shared: &Shared) -> String {
        let r = &self.recorder;
        let s = shared.stats.snapshot();
        gauge(
            r,
            "tern_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
        )
        .set(1.0);
        gauge(r, "tern_uptime_seconds", &[]).set(self.started.elapsed().as_secs_f64());
        gauge(r, "tern_connections", &[]).set(s.connections as f64);
        counter(r, "tern_connections_opened_total", &[]).absolute(s.connections_opened);
        counter(r, "tern_connections_rejected_total", &[("reason", "limit")])
            .absolute(s.connections_rejected);
        counter(
            r,
            "tern_connections_rejected_total",
            &[("reason", "per_ip")],
        )
        .absolute(s.connections_rejected_per_ip);
        counter(r, "tern_auth_failures_total", &[]).absolute(s.auth_failures);
        counter(r, "tern_idle_disconnects_total", &[]).absolute(s.idle_disconnects);
        gauge(r, "tern_subscriptions", &[]).set(shared.router.subscription_count() as f64);
        for (qos, (messages, bytes)) in ["0", "1", "2"].iter().zip(s.published_by_qos) {
            counter(r, "tern_messages_published_total", &[("qos", qos)]).absolute(messages);
            counter(r, "tern_bytes_published_total", &[("qos", qos)]).absolute(bytes);
        }
        counter(
            r,
            "tern_messages_delivered_total",
            &[("via", "subscription")],
        )
        .absolute(s.messages_out);
        counter(r, "tern_bytes_sent_total", &[]).absolute(s.bytes_out);
        counter(r, "tern_slow_consumer_drops_total", &[]).absolute(s.slow_consumer_drops);
        counter(r, "tern_slow_consumer_disconnects_total", &[])
            .absolute(s.slow_consumer_disconnects);
        counter(r, "tern_duplicates_total", &[]).absolute(s.duplicates);
        for (kind, n) in shared.stats.protocol_errors() {
            counter(r, "tern_protocol_errors_total", &[("kind", kind)]).absolute(n);
        }
        let mut delivered_from_queues = 0;
        let queues = shared.durable.queues.all();
        gauge(r, "tern_queues", &[]).set(queues.len() as f64);
        for q in queues {
            let Some(st) = q.stats().await else { continue };
            let l = [("queue", q.def.name.as_str())];
            gauge(r, "tern_queue_depth", &l).set(st.ready as f64);
            gauge(r, "tern_queue_unacked", &l).set(st.unacked as f64);
            gauge(r, "tern_queue_consumers", &l).set(f64::from(st.consumers));
            for (name, v) in [
                ("tern_queue_published_total", st.published),
                ("tern_queue_delivered_total", st.delivered),
                ("tern_queue_acked_total", st.acked),
                ("tern_queue_redelivered_total", st.redelivered),
                ("tern_queue_dead_lettered_total", st.dead_lettered),
                ("tern_queue_expired_total", st.expired),
                ("tern_queue_dropped_total", st.dropped),
            ] {
                counter(r, name, &l).absolute(v);
            }
            delivered_from_queues += st.delivered;
        }
        counter(r, "tern_messages_delivered_total", &[("via", "queue")])
            .absolute(delivered_from_queues);
        for b in &shared.bridges {
            let l = [("bridge", b.name.as_str())];
            let connected = b.connected.load(std::sync::atomic::Ordering::Relaxed);
            gauge(r, "tern_bridge_connected", &l).set(if connected { 1.0 } else { 0.0 });
            for (direction, n) in [("in", &b.messages_in), ("out", &b.messages_out)] {
                counter(
                    r,
                    "tern_bridge_messages_total",
                    &[("bridge", b.name.as_str()), ("direction", direction)],
                )
                .absolute(n.load(std::sync::atomic::Ordering::Relaxed));
            }
            counter(r, "tern_bridge_reconnects_total", &l)
                .absolute(b.reconnects.load(std::sync::atomic::Ordering::Relaxed));
        }
        if let Ok(size) = shared.durable.store.size_on_disk() {
            gauge(r, "tern_store_size_bytes", &[]).set(size as f64);
        }
        self.upkeep();
        r.handle().render()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

fn counter(r: &PrometheusRecorder, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
    r.register_counter(&key(name, labels), &META)
}

fn gauge(r: &PrometheusRecorder, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
    r.register_gauge(&key(name, labels), &META)
}

fn histogram(r: &PrometheusRecorder, name: &'static str) -> Histogram {
    r.register_histogram(&key(name, &[]), &META)
}

/// Every metric and what it means (the `# HELP` lines; also in docs/METRICS.md).
const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        "tern_build_info",
        "Always 1; the version label says which ternd this is.",
    ),
    ("tern_uptime_seconds", "Seconds since the server started."),
    ("tern_connections", "Client connections open now."),
    (
        "tern_connections_opened_total",
        "Client connections that completed the handshake.",
    ),
    (
        "tern_connections_rejected_total",
        "Connections refused, by reason (limit: the connection limit; per_ip: the limit per client address).",
    ),
    (
        "tern_idle_disconnects_total",
        "Connections closed for silence: no frame for twice the idle timeout.",
    ),
    (
        "tern_auth_failures_total",
        "Handshakes refused for bad credentials.",
    ),
    (
        "tern_subscriptions",
        "Live subscriptions (queue bindings not counted).",
    ),
    (
        "tern_messages_published_total",
        "Messages accepted from publishers, by QoS.",
    ),
    (
        "tern_bytes_published_total",
        "Payload bytes accepted from publishers, by QoS.",
    ),
    (
        "tern_messages_delivered_total",
        "Messages handed to connections: via live subscriptions or from queues.",
    ),
    (
        "tern_bytes_sent_total",
        "Bytes written to client connections.",
    ),
    (
        "tern_slow_consumer_drops_total",
        "Messages dropped for subscribers whose outbound buffer was full.",
    ),
    (
        "tern_slow_consumer_disconnects_total",
        "Connections closed because they read too slowly.",
    ),
    (
        "tern_duplicates_total",
        "Exactly-once publishes recognised as duplicates and not stored again.",
    ),
    (
        "tern_protocol_errors_total",
        "Frames refused as malformed, oversized or unknown, by kind.",
    ),
    ("tern_queues", "Durable queues."),
    (
        "tern_queue_depth",
        "Messages waiting in a queue for a consumer.",
    ),
    (
        "tern_queue_unacked",
        "Messages delivered from a queue and not yet settled.",
    ),
    ("tern_queue_consumers", "Consumers attached to a queue."),
    (
        "tern_queue_published_total",
        "Messages appended to a queue.",
    ),
    (
        "tern_queue_delivered_total",
        "Delivery attempts from a queue (redeliveries included).",
    ),
    (
        "tern_queue_acked_total",
        "Messages settled (acknowledged or purged) in a queue.",
    ),
    (
        "tern_queue_redelivered_total",
        "Delivery attempts that were not the first.",
    ),
    (
        "tern_queue_dead_lettered_total",
        "Messages moved to a queue's dead-letter queue.",
    ),
    (
        "tern_queue_expired_total",
        "Messages that expired (TTL or request deadline) in a queue.",
    ),
    (
        "tern_queue_dropped_total",
        "Messages discarded by a queue that has no dead-letter queue.",
    ),
    (
        "tern_store_commits_total",
        "Group commits written to the store.",
    ),
    ("tern_store_flushes_total", "Store flushes (fsync)."),
    (
        "tern_store_bytes_written_total",
        "Message bytes appended to the store.",
    ),
    (
        "tern_store_disk_alarm",
        "1 while free space on the store's filesystem is below store.min_free_bytes and new messages are refused.",
    ),
    (
        "tern_store_disk_alarms_total",
        "Times the disk alarm was raised.",
    ),
    ("tern_store_size_bytes", "Bytes the store occupies on disk."),
    (
        "tern_store_flush_duration_seconds",
        "Time one store flush (fsync) takes.",
    ),
    (
        "tern_publish_confirm_duration_seconds",
        "From a QoS 1/2 publish arriving to its confirm being sent.",
    ),
    (
        "tern_delivery_latency_seconds",
        "From a message entering a queue to its first delivery to a consumer.",
    ),
];

/// Serves `GET /metrics` on `listener` until the server shuts down, and keeps the
/// histograms drained.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((socket, _)) = accepted {
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(10), answer(&shared, socket)).await;
                    });
                }
            }
            _ = upkeep.tick() => shared.metrics.upkeep(),
            () = shared.shutdown.cancelled() => return,
        }
    }
}

/// Reads one request head and answers it.
async fn answer(shared: &Shared, mut socket: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if head.len() > MAX_REQUEST {
            return respond(
                &mut socket,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => {
            let body = shared.metrics.render(shared).await;
            respond(
                &mut socket,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        (b"GET", b"/healthz") => {
            // Checked now, not only when the journal next writes: a broker with
            // nothing to store still reports the alarm cleared once space is back.
            let store = &shared.durable.health;
            let _ = store.check_disk(&*shared.durable.store);
            match store.problem() {
                None => respond(&mut socket, "200 OK", "text/plain", "ok\n").await,
                Some(problem) => {
                    let body = format!("{problem}\n");
                    respond(&mut socket, "503 Service Unavailable", "text/plain", &body).await
                }
            }
        }
        (b"GET", _) => {
            let hint = "try /metrics or /healthz\n";
            respond(&mut socket, "404 Not Found", "text/plain", hint).await
        }
        _ => respond(&mut socket, "405 Method Not Allowed", "text/plain", "").await,
    }
}

async fn respond(
    socket: &mut TcpStream,
    status: &str,
    kind: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}
