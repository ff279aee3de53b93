//! Observability: the Prometheus endpoint after real traffic, server info, and
//! `ternd --check-config`.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{bin, http_get, start_broker, within, RawConn};
use futures_util::future::join_all;
use tern::{Client, Qos, QueueConfig};
use tokio::net::TcpListener;

/// One sample of the exposition: name, labels, value.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// Parses the text exposition strictly: every sample line must be
/// `name{label="value",...} number`, and every metric family must have HELP and TYPE.
fn parse(text: &str) -> Samples {
    let mut samples = HashMap::new();
    let mut typed = HashMap::new();
    let mut helped = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(rest.len() > name.len() + 1, "empty HELP: {line}");
            helped.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                ["counter", "gauge", "histogram", "summary"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_string(), kind.to_string());
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, Vec::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| typed.get(*f).is_some_and(|t| t == "histogram"))
            .unwrap_or(name);
        assert!(typed.contains_key(family), "no TYPE for {name}");
        assert!(helped.contains(family), "no HELP for {family}");
        assert!(name.starts_with("tern_"), "{name} lacks the tern_ prefix");
        samples.insert((name.to_string(), labels), value);
    }
    samples
}

fn get(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    *samples
        .get(&key)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_traffic() {
    let b = start_broker().await;
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let server = b.server.clone();
    tokio::spawn(async move { server.serve_metrics(metrics).await });

    let client = Client::connect(b.url()).await.unwrap();
    // Live pub/sub: 10 QoS 0 messages to one subscriber.
    let mut sub = client.subscribe("live.>").await.unwrap();
    for i in 0..10 {
        client.publish("live.x", format!("{i}")).await.unwrap();
    }
    for _ in 0..10 {
        within("live message", sub.next()).await.unwrap();
    }
    // A queue: 5 confirmed messages, consumed and acked.
    client
        .declare_queue(&QueueConfig::new("work").bind("work.>"))
        .await
        .unwrap();
    let confirms = join_all((0..5).map(|i| {
        let client = &client;
        async move {
            client
                .publish("work.item", format!("{i}"))
                .qos(Qos::AtLeastOnce)
                .await
        }
    }))
    .await;
    assert!(confirms.iter().all(Result::is_ok));
    let mut consumer = client.consume("work").await.unwrap();
    for _ in 0..5 {
        let d = within("delivery", consumer.next()).await.unwrap();
        d.ack().await.unwrap();
    }
    // One malformed frame.
    let mut raw = RawConn::greeted(b.addr).await;
    raw.send_bytes(&[0, 0, 0, 2, 0x10, 0xff]).await;
    assert!(raw.recv().await.is_some(), "an error frame");

    let (status, body) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let m = parse(&body);
    assert_eq!(
        get(
            &m,
            "tern_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        get(&m, "tern_messages_published_total", &[("qos", "0")]),
        10.0
    );
    assert_eq!(
        get(&m, "tern_messages_published_total", &[("qos", "1")]),
        5.0
    );
    assert_eq!(
        get(&m, "tern_messages_published_total", &[("qos", "2")]),
        0.0
    );
    assert_eq!(get(&m, "tern_bytes_published_total", &[("qos", "1")]), 5.0);
    assert_eq!(
        get(
            &m,
            "tern_messages_delivered_total",
            &[("via", "subscription")]
        ),
        10.0
    );
    assert_eq!(
        get(&m, "tern_messages_delivered_total", &[("via", "queue")]),
        5.0
    );
    assert_eq!(get(&m, "tern_queues", &[]), 1.0);
    let q = [("queue", "work")];
    assert_eq!(get(&m, "tern_queue_published_total", &q), 5.0);
    assert_eq!(get(&m, "tern_queue_delivered_total", &q), 5.0);
    assert_eq!(get(&m, "tern_queue_acked_total", &q), 5.0);
    assert_eq!(get(&m, "tern_queue_depth", &q), 0.0);
    assert_eq!(get(&m, "tern_queue_unacked", &q), 0.0);
    assert_eq!(get(&m, "tern_queue_consumers", &q), 1.0);
    assert_eq!(
        get(
            &m,
            "tern_protocol_errors_total",
            &[("kind", "malformed_frame")]
        ),
        1.0
    );
    assert_eq!(
        get(&m, "tern_connections", &[]),
        1.0,
        "the raw connection closed"
    );
    assert_eq!(get(&m, "tern_subscriptions", &[]), 1.0);
    assert_eq!(
        get(&m, "tern_publish_confirm_duration_seconds_count", &[]),
        5.0
    );
    assert!(get(&m, "tern_publish_confirm_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(get(&m, "tern_delivery_latency_seconds_count", &[]), 5.0);
    assert!(get(&m, "tern_store_flush_duration_seconds_count", &[]) >= 1.0);
    assert!(get(&m, "tern_store_flushes_total", &[]) >= 1.0);
    assert!(get(&m, "tern_store_bytes_written_total", &[]) > 0.0);
    assert!(get(&m, "tern_store_size_bytes", &[]) > 0.0);
    assert!(get(&m, "tern_uptime_seconds", &[]) > 0.0);
    // Buckets are cumulative and end at +Inf with the count.
    assert_eq!(
        get(
            &m,
            "tern_publish_confirm_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        5.0
    );

    let (status, _) = http_get(metrics_addr, "/other").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_info_reports_real_figures() {
    let b = start_broker().await;
    let client = Client::connect(b.url()).await.unwrap();
    client
        .declare_queue(&QueueConfig::new("a").bind("a"))
        .await
        .unwrap();
    let _sub = client.subscribe("x.>").await.unwrap();
    let _other = Client::connect(b.url()).await.unwrap();
    client.publish("x.y", "1").await.unwrap();
    client.flush().await.unwrap();

    let info = client.server_info().await.unwrap();
    assert_eq!(&*info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.connections, 2);
    assert_eq!(info.subscriptions, 1);
    assert_eq!(info.queues, 1);
    assert_eq!(info.messages_in, 1);
    assert_eq!(info.messages_out, 1);
    assert_eq!(&*info.sync, "always");
    assert!(info.store_bytes > 0);
    assert!(info
        .listeners
        .iter()
        .any(|l| **l == format!("tcp://{}", b.addr)));

    // The CLI's --json contract. Run off the runtime's threads: the broker serves it.
    let url = b.url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin("tern"))
            .args(["--server", &url, "server", "info", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["queues"], 1);
    assert_eq!(json["subscriptions"], 1);
    assert_eq!(json["connections"], 3, "the CLI's own connection counts");
    assert_eq!(json["sync"], "always");
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    client.close().await.unwrap();
}

#[test]
fn check_config_accepts_the_shipped_file_and_names_a_typo() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ternd.toml");
    let out = Command::new(bin("ternd"))
        .args(["--check-config", shipped])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("config ok"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[queues]\nmax_delivr = 3\n").unwrap();
    let out = Command::new(bin("ternd"))
        .args(["--check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("max_delivr"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}
