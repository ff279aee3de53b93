//! The Prometheus endpoint: the text exposition of a server's [`Metrics`] with its
//! scrape-time figures, and `/healthz`. A deliberately small HTTP/1.1 responder:
//! requests are read with a size bound and a timeout, so a stray client cannot hold
//! it up; anything but GET `/metrics` and `/healthz` is answered 404.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{counter, gauge, Metrics};
use crate::shared::Shared;

/// Largest HTTP request head the endpoint reads.
const MAX_REQUEST: usize = 8 * 1024;

/// The text exposition, with scrape-time figures brought up to date.
pub(crate) async fn render(metrics: &Metrics, shared: &Shared) -> String {
    let r = &metrics.recorder;
    let s = shared.stats.snapshot();
    gauge(
        r,
        "tern_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
    )
    .set(1.0);
    gauge(r, "tern_uptime_seconds", &[]).set(metrics.started.elapsed().as_secs_f64());
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
    counter(r, "tern_slow_consumer_disconnects_total", &[]).absolute(s.slow_consumer_disconnects);
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
    if let Some(replica) = &shared.durable.replica {
        gauge(r, "tern_raft_node_id", &[]).set(replica.node() as f64);
    }
    if let Some(proposer) = &shared.durable.proposer {
        for replica in proposer.replicas.all() {
            let st = replica.status();
            let group = replica.group().to_string();
            let l = [("group", group.as_str())];
            gauge(r, "tern_raft_term", &l).set(st.term as f64);
            gauge(r, "tern_raft_leader_id", &l).set(st.leader.unwrap_or(0) as f64);
            gauge(r, "tern_raft_is_leader", &l).set(if st.leads { 1.0 } else { 0.0 });
            gauge(r, "tern_raft_electable", &l).set(if st.electable { 1.0 } else { 0.0 });
            gauge(r, "tern_raft_last_log_index", &l).set(st.last_log_index as f64);
            gauge(r, "tern_raft_last_applied_index", &l).set(st.last_applied_index as f64);
            counter(r, "tern_raft_leader_changes_total", &l).absolute(st.leader_changes);
            for (node, lag) in st.lag {
                let node = node.to_string();
                let l = [("group", group.as_str()), ("peer", node.as_str())];
                gauge(r, "tern_raft_replication_lag_entries", &l).set(lag as f64);
            }
        }
    }
    if let Some(pubsub) = &shared.durable.pubsub {
        for t in pubsub.traffic() {
            let peer = t.node.to_string();
            let l = [("peer", peer.as_str())];
            counter(r, "tern_cluster_forwarded_total", &l).absolute(t.forwarded);
            counter(r, "tern_cluster_forward_dropped_total", &l).absolute(t.dropped);
        }
        counter(r, "tern_cluster_forwarded_delivered_total", &[]).absolute(pubsub.delivered());
    }
    if let Ok(size) = shared.durable.store.size_on_disk() {
        gauge(r, "tern_store_size_bytes", &[]).set(size as f64);
    }
    metrics.upkeep();
    r.handle().render()
}

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
            let body = render(&shared.metrics, shared).await;
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
