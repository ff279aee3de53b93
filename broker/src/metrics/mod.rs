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
//! [`exposition`] renders them for Prometheus and serves the HTTP endpoint; it reads the
//! whole server's state, so it sits above it, while the handles here sit below
//! everything that records.

use std::time::Instant;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

pub(crate) mod exposition;

use crate::durable::DurableMetrics;
use crate::journal::LogMetrics;

/// Buckets of the latency histograms, in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

static META: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

/// A server's recorder and the handles recorded on the hot path.
pub(crate) struct Metrics {
    pub(super) recorder: PrometheusRecorder,
    pub(super) started: Instant,
    /// From a QoS 1/2 publish arriving to its confirm being queued.
    pub confirm_latency: Histogram,
    /// Time one store flush (fsync) takes.
    pub flush_duration: Histogram,
    /// From a message entering a queue to its first delivery to a consumer.
    pub delivery_latency: Histogram,
    /// In a cluster: from proposing an entry to its being applied.
    pub raft_commit: Histogram,
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
            raft_commit: self.raft_commit.clone(),
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
            raft_commit: histogram(&recorder, "tern_raft_commit_seconds"),
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
}

pub(super) fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

pub(super) fn counter(
    r: &PrometheusRecorder,
    name: &'static str,
    labels: &[(&'static str, &str)],
) -> Counter {
    r.register_counter(&key(name, labels), &META)
}

pub(super) fn gauge(
    r: &PrometheusRecorder,
    name: &'static str,
    labels: &[(&'static str, &str)],
) -> Gauge {
    r.register_gauge(&key(name, labels), &META)
}

pub(super) fn histogram(r: &PrometheusRecorder, name: &'static str) -> Histogram {
    r.register_histogram(&key(name, &[]), &META)
}

/// Every metric and what it means (the `# HELP` lines; also in docs/METRICS.md).
const DESCRIPTIONS: &[(&str, &str)] = &[
    ("tern_raft_node_id", "In a cluster: this node's id."),
    ("tern_raft_term", "In a cluster: the Raft term of a group, by group, as this node sees it."),
    (
        "tern_raft_leader_id",
        "In a cluster: the node that leads a group (runs its queues), by group; 0 while none does.",
    ),
    (
        "tern_raft_is_leader",
        "In a cluster: 1 where this node leads a group, by group, else 0.",
    ),
    (
        "tern_raft_electable",
        "In a cluster: 1 while a majority of a group's voters would vote for this node's log, so that it may campaign; by group.",
    ),
    (
        "tern_raft_last_log_index",
        "In a cluster: the index of the last entry of a group in this node's Raft log, by group.",
    ),
    (
        "tern_raft_last_applied_index",
        "In a cluster: the index of the last entry of a group this node applied, by group.",
    ),
    (
        "tern_raft_leader_changes_total",
        "In a cluster: times this node saw a group's leader change or go since it started, by group.",
    ),
    (
        "tern_raft_replication_lag_entries",
        "In a cluster, on a group's leader: entries a peer lacks, by group and peer node id.",
    ),
    (
        "tern_raft_commit_seconds",
        "In a cluster: from proposing a group commit to its being applied (a majority fsync'd).",
    ),
    (
        "tern_cluster_forwarded_total",
        "In a cluster: messages forwarded to another node's subscribers, by peer node id.",
    ),
    (
        "tern_cluster_forward_dropped_total",
        "In a cluster: messages for another node's subscribers dropped (its link down or over its byte budget), by peer node id.",
    ),
    (
        "tern_cluster_forwarded_delivered_total",
        "In a cluster: deliveries to this node's subscribers of messages other nodes forwarded.",
    ),
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
