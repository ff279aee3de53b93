//! Content filters end to end: filtered subscriptions, queue groups and queue bindings
//! on a real broker, the errors a bad filter gets, and the CLI's `--filter`.
//!
//! "Not delivered" is checked with the flush pattern ([`common::settle`]): after it,
//! every message the broker routed to a subscription is in its buffer.

mod common;

use std::collections::BTreeSet;

use common::{drain, queue_until, run_cmd, settle, texts, wait_for, within, Proc, TestBroker};
use serde_json::Value;
use tern::{Client, Error, ErrorCode, QueueConfig};

async fn connect(b: &TestBroker) -> Client {
    within("connect", Client::connect(b.url())).await.unwrap()
}

/// Publishes `payload` on `subject` with `headers`.
async fn publish(c: &Client, subject: &str, headers: &[(&str, &str)], payload: &str) {
    let mut p = c.publish(subject, payload.to_string());
    for (k, v) in headers {
        p = p.header(k, v);
    }
    p.await.unwrap();
}

/// The server's error for a refused request: its code and message.
fn server_error<T: std::fmt::Debug>(r: Result<T, Error>) -> (ErrorCode, String) {
    match r {
        Err(Error::Server {
            code: Some(code),
            message,
            ..
        }) => (code, message),
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Header pairs of a message to publish.
type Headers<'a> = &'a [(&'a str, &'a str)];

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(ToString::to_string).collect()
}

fn received(sub: &mut tern::Subscription) -> BTreeSet<String> {
    texts(&drain(sub)).into_iter().collect()
}

#[tokio::test]
async fn header_filters_deliver_exactly_the_matching_messages() {
    let b = common::start_broker().await;
    let subscriber = connect(&b).await;
    let publisher = connect(&b).await;
    let cases = [
        ("device_id = 'dev-1'", &["m1", "m5"][..]),
        ("device_id IN ('dev-2', 'dev-3')", &["m2", "m3"][..]),
        // Header text compared as a number: '10' > 3 although '10' < '3' as text.
        ("priority > 3", &["m3", "m4"][..]),
        // m5's priority is there but not a number: not NULL, and not > 3 either.
        ("priority IS NULL", &["m1", "m2", "m6"][..]),
        // m2 has no region: `NOT NULL` is NULL, so it does not match.
        ("device_id LIKE 'dev-_' AND NOT region = 'us'", &["m1"][..]),
        ("subject[1] = 'kitchen'", &["m1", "m6"][..]),
    ];
    let mut subs = Vec::new();
    for (filter, _) in cases {
        subs.push(
            subscriber
                .subscribe("sensors.>")
                .filter(filter)
                .await
                .unwrap(),
        );
    }
    let mut unfiltered = subscriber.subscribe("sensors.>").await.unwrap();

    let messages: [(&str, Headers, &str); 6] = [
        (
            "sensors.kitchen.temp",
            &[("device_id", "dev-1"), ("region", "eu")],
            "m1",
        ),
        ("sensors.hall.temp", &[("device_id", "dev-2")], "m2"),
        (
            "sensors.hall.temp",
            &[("device_id", "dev-3"), ("priority", "10"), ("region", "us")],
            "m3",
        ),
        ("sensors.garage.temp", &[("priority", "4")], "m4"),
        (
            "sensors.hall.temp",
            &[("device_id", "dev-1"), ("region", "us"), ("priority", "x")],
            "m5",
        ),
        ("sensors.kitchen.humidity", &[], "m6"),
    ];
    for (subject, headers, payload) in messages {
        publish(&publisher, subject, headers, payload).await;
    }
    // A message on a subject outside the pattern is never looked at by the filters.
    publish(&publisher, "other.x", &[("device_id", "dev-1")], "outside").await;
    settle(&publisher, &[&subscriber]).await;

    for ((filter, expected), sub) in cases.iter().zip(&mut subs) {
        assert_eq!(received(sub), set(expected), "filter {filter}");
    }
    assert_eq!(
        received(&mut unfiltered),
        set(&["m1", "m2", "m3", "m4", "m5", "m6"])
    );
}

#[tokio::test]
async fn json_payload_filters_read_fields_elements_and_treat_bad_json_as_null() {
    let b = common::start_broker().await;
    let subscriber = connect(&b).await;
    let publisher = connect(&b).await;
    let cases = [
        ("payload.temp > 30", &["hot", "nested"][..]),
        ("payload.location.site = 'kitchen'", &["nested"][..]),
        ("payload.readings[0] BETWEEN 10 AND 20", &["cold"][..]),
        ("payload.temp IS NULL", &["no-temp", "flag", "not-json"][..]),
        ("NOT payload.temp > 30", &["cold"][..]),
        (
            "payload.temp * 2 >= 60 OR payload.flag",
            &["hot", "nested", "flag"][..],
        ),
    ];
    let mut subs = Vec::new();
    for (filter, _) in cases {
        subs.push(subscriber.subscribe("t.>").filter(filter).await.unwrap());
    }
    let payloads = [
        ("hot", r#"{"temp": 31.5}"#),
        ("cold", r#"{"temp": 12, "readings": [15, 40]}"#),
        (
            "nested",
            r#"{"temp": 40, "location": {"site": "kitchen"}, "readings": [5]}"#,
        ),
        ("no-temp", r#"{"humidity": 80}"#),
        ("flag", r#"{"flag": true}"#),
        ("not-json", "temp=50"),
    ];
    for (name, body) in payloads {
        publisher
            .publish(format!("t.{name}").as_str(), body.to_string())
            .await
            .unwrap();
    }
    settle(&publisher, &[&subscriber]).await;

    for ((filter, expected), sub) in cases.iter().zip(&mut subs) {
        let got: BTreeSet<String> = drain(sub)
            .iter()
            .map(|m| m.subject.trim_start_matches("t.").to_string())
            .collect();
        assert_eq!(got, set(expected), "filter {filter}");
    }
}

#[tokio::test]
async fn a_queue_group_gives_each_message_to_a_member_whose_filter_accepts_it() {
    let b = common::start_broker().await;
    let eu_worker = connect(&b).await;
    let us_worker = connect(&b).await;
    let publisher = connect(&b).await;
    let mut eu = eu_worker
        .subscribe("jobs")
        .group("workers")
        .filter("region = 'eu'")
        .await
        .unwrap();
    let mut us = us_worker
        .subscribe("jobs")
        .group("workers")
        .filter("region = 'us'")
        .await
        .unwrap();
    for i in 0..20 {
        let region = ["eu", "us", "asia"][i % 3];
        publish(
            &publisher,
            "jobs",
            &[("region", region)],
            &format!("{region}-{i}"),
        )
        .await;
    }
    settle(&publisher, &[&eu_worker, &us_worker]).await;

    let eu_got = received(&mut eu);
    let us_got = received(&mut us);
    assert_eq!(eu_got.len(), 7, "{eu_got:?}");
    assert!(eu_got.iter().all(|m| m.starts_with("eu-")), "{eu_got:?}");
    assert_eq!(us_got.len(), 7, "{us_got:?}");
    assert!(us_got.iter().all(|m| m.starts_with("us-")), "{us_got:?}");
}

#[tokio::test]
async fn many_equality_filters_each_get_only_their_own_messages() {
    // The equality index at work: a thousand subscribers on one pattern, each with
    // its own device id, and a message for every second device.
    const DEVICES: usize = 1000;
    let b = common::start_broker().await;
    let subscriber = connect(&b).await;
    let publisher = connect(&b).await;
    let mut subs = Vec::with_capacity(DEVICES);
    for i in 0..DEVICES {
        let filter = format!("device_id = 'dev-{i}'");
        subs.push(
            subscriber
                .subscribe("commands.>")
                .filter(&filter)
                .await
                .unwrap(),
        );
    }
    for i in (0..DEVICES).step_by(2) {
        let device = format!("dev-{i}");
        publish(
            &publisher,
            &format!("commands.{device}.set"),
            &[("device_id", &device)],
            &device,
        )
        .await;
    }
    settle(&publisher, &[&subscriber]).await;

    for (i, sub) in subs.iter_mut().enumerate() {
        let got = texts(&drain(sub));
        if i % 2 == 0 {
            assert_eq!(got, vec![format!("dev-{i}")], "subscriber {i}");
        } else {
            assert!(got.is_empty(), "subscriber {i} got {got:?}");
        }
    }

    // Unsubscribing takes a filtered subscription out of the index.
    let first = subs.swap_remove(0);
    within("unsubscribe", first.unsubscribe()).await.unwrap();
    publish(
        &publisher,
        "commands.dev-0.set",
        &[("device_id", "dev-0")],
        "again",
    )
    .await;
    publish(
        &publisher,
        "commands.dev-2.set",
        &[("device_id", "dev-2")],
        "again",
    )
    .await;
    settle(&publisher, &[&subscriber]).await;
    let dev2 = subs
        .iter_mut()
        .map(|s| texts(&drain(s)))
        .filter(|got| !got.is_empty())
        .collect::<Vec<_>>();
    assert_eq!(dev2, vec![vec!["again".to_string()]]);
}

#[tokio::test]
async fn a_bad_filter_is_refused_with_its_column_and_the_connection_lives_on() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    let (code, message) = server_error(c.subscribe("a.>").filter("payload.temp >").await);
    assert_eq!(code, ErrorCode::InvalidFilter);
    assert!(
        message.contains("filter error at column 15: expected a value after '>'"),
        "{message}"
    );

    let bad = [
        ("region = 'eu", "column 10"),
        ("a IN ()", "column 7"),
        ("a LIKE 'x' ESCAPE 'ab'", "column"),
        ("(a = 1", "column 7"),
    ];
    for (filter, expected) in bad {
        let (code, message) = server_error(c.subscribe("a").filter(filter).await);
        assert_eq!(code, ErrorCode::InvalidFilter, "{filter}");
        assert!(message.contains(expected), "{filter}: {message}");
    }

    // Past the limits: an error, not a crash or a stack overflow.
    let long = format!("a = '{}'", "x".repeat(5000));
    let (code, message) = server_error(c.subscribe("a").filter(&long).await);
    assert_eq!(code, ErrorCode::InvalidFilter);
    assert!(message.contains("4096"), "{message}");
    let deep = format!("{}a = 1{}", "(".repeat(2000), ")".repeat(2000));
    let (code, message) = server_error(c.subscribe("a").filter(&deep).await);
    assert_eq!(code, ErrorCode::InvalidFilter);
    assert!(message.contains("nest"), "{message}");
    assert_eq!(b.server.subscription_count(), 0);

    // The connection still works.
    let mut sub = c.subscribe("a").filter("x = 'y'").await.unwrap();
    publish(&c, "a", &[("x", "y")], "fine").await;
    let m = within("the message", sub.next()).await.unwrap();
    assert_eq!(&m.payload[..], b"fine");
}

#[tokio::test]
async fn the_filter_limits_are_configurable() {
    let b = common::start_broker_with(|c| {
        c.limits.filter.max_len = 18;
        c.limits.filter.max_in_items = 2;
    })
    .await;
    let c = connect(&b).await;
    let (code, message) = server_error(c.subscribe("a").filter("region = 'eu-west-1'").await);
    assert_eq!(code, ErrorCode::InvalidFilter);
    assert!(message.contains("18"), "{message}");
    let (_, message) = server_error(c.subscribe("a").filter("r IN ('a','b','c')").await);
    assert!(message.contains('2'), "{message}");
    c.subscribe("a").filter("r IN ('a','b')").await.unwrap();
    let (code, message) = server_error(
        c.declare_queue(&QueueConfig::new("q").bind_filtered("a", "region = 'eu-west-1'"))
            .await,
    );
    assert_eq!(code, ErrorCode::InvalidFilter);
    assert!(message.contains("binding 'a'"), "{message}");
}

#[tokio::test]
async fn a_mandatory_publish_that_every_filter_refuses_has_no_route() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    let _sub = c
        .subscribe("orders.>")
        .filter("region = 'eu'")
        .await
        .unwrap();
    let refused = c
        .publish("orders.new", "x")
        .header("region", "us")
        .mandatory()
        .await;
    assert_eq!(server_error(refused).0, ErrorCode::NoRoute);
    c.publish("orders.new", "x")
        .header("region", "eu")
        .mandatory()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_filtered_queue_binding_stores_only_matching_messages_across_a_restart() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    c.declare_queue(
        &QueueConfig::new("hot")
            .bind_filtered("sensors.>", "payload.temp > 30")
            .bind("alerts.>"),
    )
    .await
    .unwrap();
    for (subject, body) in [
        ("sensors.a", r#"{"temp": 35}"#),
        ("sensors.b", r#"{"temp": 20}"#),
        ("sensors.c", "not json"),
        ("alerts.fire", "fire"),
    ] {
        c.publish(subject, body.to_string()).await.unwrap();
    }
    queue_until(&c, "hot", "two stored messages", |s| s.published == 2).await;
    let info = within("queue_info", c.queue_info("hot")).await.unwrap();
    let bindings: Vec<(String, Option<String>)> = info
        .bindings
        .iter()
        .map(|b| {
            (
                b.pattern.to_string(),
                b.filter.as_ref().map(|f| f.to_string()),
            )
        })
        .collect();
    assert!(bindings.contains(&("sensors.>".into(), Some("payload.temp > 30".into()))));
    assert!(bindings.contains(&("alerts.>".into(), None)));
    drop(c);

    // The filter is stored with the queue and compiled again at start.
    let b = common::restart(b, |_| {}).await;
    let c = connect(&b).await;
    c.publish("sensors.d", r#"{"temp": 99}"#).await.unwrap();
    c.publish("sensors.e", r#"{"temp": 1}"#).await.unwrap();
    queue_until(&c, "hot", "three stored messages", |s| s.ready == 3).await;
    let mut consumer = c.consume("hot").auto_ack().await.unwrap();
    let mut got = BTreeSet::new();
    for _ in 0..3 {
        let d = within("a delivery", consumer.next()).await.unwrap();
        got.insert(d.message.subject.to_string());
    }
    assert_eq!(got, set(&["sensors.a", "alerts.fire", "sensors.d"]));

    // A bad binding filter refuses the declare, and nothing is created.
    let (code, message) = server_error(
        c.declare_queue(&QueueConfig::new("broken").bind_filtered("x", "temp >>"))
            .await,
    );
    assert_eq!(code, ErrorCode::InvalidFilter);
    assert!(
        message.contains("binding 'x'") && message.contains("column"),
        "{message}"
    );
    let names: Vec<String> = c
        .queues()
        .await
        .unwrap()
        .iter()
        .map(|q| q.name.to_string())
        .collect();
    assert_eq!(names, vec!["hot".to_string()]);
}

// ---------------------------------------------------------------------------------------
// The CLI's --filter.
// ---------------------------------------------------------------------------------------

async fn tern_fails(b: &TestBroker, args: &[&str]) -> String {
    let (status, out, err) = run_cmd(&mut common::tern_cmd(Some(&b.url()), args), None).await;
    assert!(!status.success(), "tern {args:?} succeeded: {out}");
    assert!(out.is_empty(), "tern {args:?} printed: {out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr from {args:?}:\n{err}");
    lines[0].to_string()
}

async fn tern_ok(b: &TestBroker, args: &[&str]) -> String {
    let (status, out, err) = run_cmd(&mut common::tern_cmd(Some(&b.url()), args), None).await;
    assert!(status.success(), "tern {args:?} failed: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sub_filter_prints_only_matching_messages() {
    let b = common::start_broker().await;
    let publisher = connect(&b).await;
    let mut cmd = common::tern_cmd(
        Some(&b.url()),
        &[
            "sub",
            "sensors.>",
            "--filter",
            "payload.temp > 30",
            "--count",
            "2",
            "--json",
        ],
    );
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut sub = Proc::spawn(&mut cmd);
    wait_for("`tern sub` to subscribe", || {
        b.server.subscription_count() == 1
    })
    .await;
    for t in [10, 31, 5, 45, 50] {
        publisher
            .publish("sensors.x", format!(r#"{{"temp": {t}}}"#))
            .await
            .unwrap();
    }
    let (status, out, err) = sub.output().await;
    assert!(status.success(), "{err}");
    let temps: Vec<i64> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let payload: Value = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
            payload["temp"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(temps, vec![31, 45]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_bad_filter_is_one_line_naming_the_column() {
    let b = common::start_broker().await;
    let line = tern_fails(&b, &["sub", "a", "--filter", "temp >"]).await;
    assert!(
        line.starts_with("tern: ") && line.contains("filter error at column 7"),
        "{line}"
    );
    let line = tern_fails(
        &b,
        &["queue", "create", "q", "--bind", "a", "--filter", "x = "],
    )
    .await;
    assert!(
        line.contains("binding 'a'") && line.contains("column"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_queue_create_pairs_each_filter_with_the_bind_before_it() {
    let b = common::start_broker().await;
    tern_ok(
        &b,
        &[
            "queue", "create", "q", "--bind", "a.>", "--filter", "x = '1'", "--bind", "b.>",
            "--bind", "c.>", "--filter", "y > 2",
        ],
    )
    .await;
    let out = tern_ok(&b, &["queue", "info", "q", "--json"]).await;
    let info: Value = serde_json::from_str(out.trim()).unwrap();
    let mut bindings: Vec<Value> = info["bindings"].as_array().unwrap().clone();
    bindings.sort_by_key(|b| b["pattern"].as_str().unwrap().to_string());
    assert_eq!(
        bindings,
        vec![
            serde_json::json!({"pattern": "a.>", "filter": "x = '1'"}),
            serde_json::json!({"pattern": "b.>"}),
            serde_json::json!({"pattern": "c.>", "filter": "y > 2"}),
        ]
    );

    let line = tern_fails(
        &b,
        &["queue", "create", "r", "--filter", "x = 1", "--bind", "a"],
    )
    .await;
    assert!(line.contains("must follow the --bind"), "{line}");
    let line = tern_fails(
        &b,
        &[
            "queue", "create", "r", "--bind", "a", "--filter", "x = 1", "--filter", "y = 2",
        ],
    )
    .await;
    assert!(line.contains("two --filter"), "{line}");
}
