//! `tern queue ...`, `tern pub --qos` and `tern consume` as child processes against an
//! in-process broker: what they print, what they leave in the broker, and how they
//! fail (one line on stderr, a non-zero exit).

mod common;

use std::process::Command;

use common::{queue_until, run_cmd, within, TestBroker};
use serde_json::{json, Value};
use tern::{Client, Qos, QueueConfig};

/// `tern ARGS...` talking to `b`, with a clean environment.
fn tern(b: &TestBroker, args: &[&str]) -> Command {
    common::tern_cmd(Some(&b.url()), args)
}

/// Runs `tern ARGS...` to a successful end; returns its stdout.
async fn ok(b: &TestBroker, args: &[&str], stdin: Option<&str>) -> String {
    let (status, out, err) = run_cmd(&mut tern(b, args), stdin).await;
    assert!(status.success(), "tern {args:?} failed ({status:?}): {err}");
    assert!(err.is_empty(), "tern {args:?} complained: {err}");
    out
}

/// Runs `tern ARGS...`, which must fail with one line on stderr and nothing on
/// stdout; returns that line.
async fn fails(b: &TestBroker, args: &[&str], stdin: Option<&str>) -> String {
    let (status, out, err) = run_cmd(&mut tern(b, args), stdin).await;
    assert!(!status.success(), "tern {args:?} succeeded: {out}");
    assert!(status.code().is_some(), "exited, not killed: {status:?}");
    assert!(out.is_empty(), "tern {args:?} printed: {out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr from {args:?}:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    lines[0].to_string()
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn setup() -> (TestBroker, Client) {
    common::bin("tern");
    let b = common::start_broker().await;
    let c = within("connect", Client::connect(b.url())).await.unwrap();
    (b, c)
}

async fn publish_n(c: &Client, subject: &str, n: usize) {
    for i in 0..n {
        c.publish(subject, format!("m{i}"))
            .qos(Qos::AtLeastOnce)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_create_then_ls_and_info_describe_it() {
    let (b, c) = setup().await;
    ok(&b, &["queue", "create", "dlq"], None).await;
    let create = [
        "queue",
        "create",
        "work",
        "--bind",
        "work.>",
        "--bind",
        "jobs.*",
        "--max-deliver",
        "3",
        "--ack-timeout",
        "10s",
        "--dead-letter",
        "dlq",
        "--ttl",
        "1h",
        "--max-length",
        "500",
        "--overflow",
        "reject",
    ];
    assert_eq!(ok(&b, &create, None).await, "", "create prints nothing");
    // Idempotent: the same again is fine; other options are refused.
    ok(&b, &create, None).await;
    let line = fails(
        &b,
        &[
            "queue",
            "create",
            "work",
            "--bind",
            "work.>",
            "--max-deliver",
            "4",
        ],
        None,
    )
    .await;
    assert!(line.contains("queue_exists"), "{line}");

    let info = c.queue_info("work").await.unwrap();
    assert_eq!(info.options.max_deliver, 3);
    assert_eq!(info.options.ack_timeout_ms, 10_000);
    assert_eq!(info.options.ttl_ms, 3_600_000);
    assert_eq!(info.options.max_length, 500);
    assert_eq!(info.options.overflow, tern::Overflow::Reject);

    publish_n(&c, "work.a", 4).await;
    queue_until(&c, "work", "four", |s| s.ready == 4).await;
    let mut consumer = c.consume("work").prefetch(1).await.unwrap();
    let held = within("a delivery", consumer.next()).await.unwrap();

    let ls = json_lines(&ok(&b, &["queue", "ls", "--json"], None).await);
    assert_eq!(ls.len(), 2, "one line per queue: {ls:?}");
    assert_eq!(ls[0]["name"], "dlq");
    assert_eq!(ls[1]["name"], "work");
    let work = json!({
        "name": "work",
        "bindings": [{"pattern": "jobs.*"}, {"pattern": "work.>"}],
        "max_deliver": 3,
        "ack_timeout_ms": 10000,
        "dead_letter": "dlq",
        "ttl_ms": 3600000,
        "max_length": 500,
        "overflow": "reject",
        "ready": 3,
        "unacked": 1,
        "consumers": 1,
        "published": 4,
        "delivered": 1,
        "acked": 0,
        "redelivered": 0,
        "dead_lettered": 0,
        "expired": 0,
        "dropped": 0,
    });
    assert_eq!(ls[1], work);
    assert_eq!(ls[0]["bindings"], json!([]));
    assert_eq!(ls[0]["ready"], 0);

    let info = json_lines(&ok(&b, &["queue", "info", "work", "--json"], None).await);
    assert_eq!(info, [work], "exactly one object");

    // The human forms name the queue and its counts.
    let table = ok(&b, &["queue", "ls"], None).await;
    let row = table
        .lines()
        .find(|l| l.starts_with("work "))
        .unwrap_or_else(|| panic!("no row for work:\n{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..4], ["work", "3", "1", "1"], "{row}");
    let human = ok(&b, &["queue", "info", "work"], None).await;
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("ready") && l.ends_with(" 3")),
        "{human}"
    );
    held.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_qos1_with_count_stores_every_message() {
    let (b, c) = setup().await;
    c.declare_queue(&QueueConfig::new("work").bind("work.>"))
        .await
        .unwrap();
    let out = ok(
        &b,
        &["pub", "work.a", "x", "--qos", "1", "--count", "100"],
        None,
    )
    .await;
    assert!(out.is_empty(), "{out}");
    // Exit 0 means every message was confirmed, so all 100 are in the queue.
    let s = queue_until(&c, "work", "100 messages", |s| s.published >= 100)
        .await
        .stats;
    assert_eq!((s.ready, s.published), (100, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_qos1_from_stdin_stores_each_line_in_order() {
    let (b, c) = setup().await;
    c.declare_queue(&QueueConfig::new("lines").bind("lines"))
        .await
        .unwrap();
    let lines: Vec<String> = (0..1000).map(|i| format!("line {i}")).collect();
    let input = lines.join("\n") + "\n";
    ok(&b, &["pub", "lines", "--qos", "1"], Some(&input)).await;
    queue_until(&c, "lines", "1000 messages", |s| s.ready == 1000).await;
    let mut consumer = c.consume("lines").prefetch(1000).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..1000 {
        let d = within("a delivery", consumer.next()).await.unwrap();
        got.push(String::from_utf8(d.message.payload.to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(got, lines);
    let s = c.queue_info("lines").await.unwrap().stats;
    assert_eq!(s.published, 1000, "each line once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_qos2_with_the_same_producer_and_sequences_stores_once() {
    let (b, c) = setup().await;
    c.declare_queue(&QueueConfig::new("once").bind("once"))
        .await
        .unwrap();
    let args = [
        "pub",
        "once",
        "x",
        "--qos",
        "2",
        "--producer",
        "cli-1",
        "--sequence",
        "10",
        "--count",
        "5",
    ];
    ok(&b, &args, None).await;
    ok(&b, &args, None).await;
    let s = queue_until(&c, "once", "five", |s| s.published >= 5)
        .await
        .stats;
    assert_eq!(s.ready, 5, "the retry was deduplicated");
    // The next sequences are new.
    let mut more = args;
    more[8] = "15";
    ok(&b, &more, None).await;
    queue_until(&c, "once", "ten", |s| s.ready == 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_qos1_to_a_full_queue_fails_with_one_line() {
    let (b, c) = setup().await;
    ok(
        &b,
        &[
            "queue",
            "create",
            "capped",
            "--bind",
            "capped",
            "--max-length",
            "2",
            "--overflow",
            "reject",
        ],
        None,
    )
    .await;
    let line = fails(
        &b,
        &["pub", "capped", "x", "--qos", "1", "--count", "3"],
        None,
    )
    .await;
    assert!(line.contains("queue_full"), "{line}");
    assert!(line.contains("capped"), "names the queue: {line}");
    assert!(line.contains('1'), "says how many: {line}");
    // Once confirmed, a message counts in the queue's info.
    let s = c.queue_info("capped").await.unwrap().stats;
    assert_eq!((s.ready, s.unacked), (2, 0), "the third was refused: {s:?}");
    // QoS 0 is not told.
    ok(&b, &["pub", "capped", "x"], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_json_prints_exactly_count_deliveries_and_acks_them() {
    let (b, c) = setup().await;
    c.declare_queue(&QueueConfig::new("work").bind("work.>"))
        .await
        .unwrap();
    c.publish("work.a", "m0")
        .header("k", "v")
        .reply_to("back")
        .qos(Qos::AtLeastOnce)
        .await
        .unwrap();
    for i in 1..5 {
        c.publish("work.b", format!("m{i}"))
            .qos(Qos::AtLeastOnce)
            .await
            .unwrap();
    }
    queue_until(&c, "work", "five", |s| s.ready == 5).await;
    let out = ok(&b, &["consume", "work", "--count", "3", "--json"], None).await;
    let lines = json_lines(&out);
    assert_eq!(
        lines,
        [
            json!({"subject": "work.a", "reply_to": "back", "headers": {"k": "v"}, "payload": "m0", "delivery_count": 1}),
            json!({"subject": "work.b", "headers": {}, "payload": "m1", "delivery_count": 1}),
            json!({"subject": "work.b", "headers": {}, "payload": "m2", "delivery_count": 1}),
        ]
    );
    let s = queue_until(&c, "work", "the consumer to leave", |s| s.consumers == 0)
        .await
        .stats;
    assert_eq!((s.acked, s.ready, s.unacked), (3, 2, 0), "{s:?}");

    // --no-ack: settled as sent.
    let out = ok(
        &b,
        &["consume", "work", "--count", "2", "--json", "--no-ack"],
        None,
    )
    .await;
    let payloads: Vec<Value> = json_lines(&out)
        .into_iter()
        .map(|v| v["payload"].clone())
        .collect();
    assert_eq!(payloads, ["m3", "m4"]);
    let s = queue_until(&c, "work", "the consumer to leave", |s| s.consumers == 0)
        .await
        .stats;
    assert_eq!((s.ready, s.unacked), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_move_purge_and_rm() {
    let (b, c) = setup().await;
    c.declare_queue(&QueueConfig::new("dlq").bind("dead"))
        .await
        .unwrap();
    c.declare_queue(&QueueConfig::new("work").bind("work"))
        .await
        .unwrap();
    publish_n(&c, "dead", 3).await;
    queue_until(&c, "dlq", "three", |s| s.ready == 3).await;

    let out = ok(&b, &["queue", "move", "dlq", "work", "--count", "2"], None).await;
    assert_eq!(out, "moved 2 message(s) from dlq to work\n");
    let s = queue_until(&c, "work", "two moved", |s| s.ready == 2)
        .await
        .stats;
    assert_eq!(s.published, 2);
    assert_eq!(c.queue_info("dlq").await.unwrap().stats.ready, 1);
    let mut consumer = c.consume("work").await.unwrap();
    for want in ["m0", "m1"] {
        let d = within("a delivery", consumer.next()).await.unwrap();
        assert_eq!(&d.message.payload[..], want.as_bytes(), "oldest first");
        d.nack_after(std::time::Duration::from_secs(3600))
            .await
            .unwrap();
    }
    drop(consumer);

    let out = ok(&b, &["queue", "purge", "work"], None).await;
    assert_eq!(out, "purged 2 message(s) from work\n");
    assert_eq!(c.queue_info("work").await.unwrap().stats.ready, 0);

    assert_eq!(ok(&b, &["queue", "rm", "dlq"], None).await, "");
    let names: Vec<String> = c
        .queues()
        .await
        .unwrap()
        .iter()
        .map(|q| q.name.to_string())
        .collect();
    assert_eq!(names, ["work"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_errors_are_one_line_and_a_non_zero_exit() {
    let (b, c) = setup().await;
    c.declare_queue(&QueueConfig::new("work").bind("work"))
        .await
        .unwrap();
    for args in [
        &["queue", "info", "nope"][..],
        &["queue", "info", "nope", "--json"],
        &["queue", "rm", "nope"],
        &["queue", "purge", "nope"],
        &["queue", "move", "nope", "work"],
        &["queue", "move", "work", "nope", "--count", "1"],
        &["consume", "nope", "--count", "1"],
    ] {
        let line = fails(&b, args, None).await;
        assert!(line.contains("nope"), "names the queue: {line}");
        assert!(line.contains("queue_not_found"), "{line}");
    }
    for (args, named) in [
        (
            &["queue", "create", "bad name", "--bind", "x"][..],
            "bad name",
        ),
        (&["queue", "create", "q", "--bind", "a..b"], "a..b"),
        (&["queue", "create", "q", "--dead-letter", "q"], "q"),
        (&["queue", "move", "work", "work"], "itself"),
        (
            &["consume", "work", "--prefetch", "0", "--count", "1"],
            "prefetch",
        ),
    ] {
        let line = fails(&b, args, None).await;
        assert!(
            line.contains(named),
            "{args:?}: names what is wrong: {line}"
        );
    }
    // Flags that do not parse: clap's usage error, naming the value.
    for (args, named) in [
        (
            &["queue", "create", "q", "--ack-timeout", "soon"][..],
            "soon",
        ),
        (
            &["queue", "create", "q", "--overflow", "sideways"],
            "sideways",
        ),
        (&["queue", "create", "q", "--max-length", "-1"], "-1"),
    ] {
        let (status, out, err) = run_cmd(&mut tern(&b, args), None).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(out.is_empty(), "{out}");
        assert!(err.contains(named), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Nothing was created by the failures.
    assert_eq!(c.queues().await.unwrap().len(), 1);
    // The server is unreachable: one line too.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (status, out, err) = run_cmd(
        &mut common::tern_cmd(Some(&dead.to_string()), &["queue", "ls"]),
        None,
    )
    .await;
    assert!(!status.success());
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&dead.to_string()), "{err}");
}
