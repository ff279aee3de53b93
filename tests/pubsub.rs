//! Publish/subscribe end to end: a real broker, real clients, and assertions on exactly
//! what arrives where. "Not delivered" is checked with the flush pattern
//! ([`common::settle`]), never by waiting for a timeout.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use common::{drain, settle, subjects, texts, wait_for, within, RawConn};
use tern::{Client, Error, ErrorCode};
use tern_broker::config::SlowConsumerPolicy;
use tern_codec::{Frame, Subscribe};

async fn connect(b: &common::TestBroker) -> Client {
    within("connect", Client::connect(b.url())).await.unwrap()
}

async fn connect_named(b: &common::TestBroker, name: &str) -> Client {
    within("connect", Client::builder().name(name).connect(b.url()))
        .await
        .unwrap()
}

#[tokio::test]
async fn wildcards_deliver_to_exactly_the_matching_subscriptions() {
    let b = common::start_broker().await;
    let subscriber = connect(&b).await;
    let publisher = connect(&b).await;
    let patterns = [
        "sensors.*.temp",
        "sensors.>",
        "sensors.kitchen.temp",
        "*.*",
        "*",
        ">",
    ];
    let mut subs = Vec::new();
    for p in patterns {
        subs.push(subscriber.subscribe(p).await.unwrap());
    }
    let published = [
        "sensors.kitchen.temp",
        "sensors.hall.temp",
        "sensors.kitchen.humidity.raw",
        "sensors",
        "sensors.x",
        "other.x",
        "other.x.temp",
        "temp.sensors.kitchen",
    ];
    for s in published {
        publisher.publish(s, s.to_string()).await.unwrap();
    }
    settle(&publisher, &[&subscriber]).await;

    let expected: [(&str, &[&str]); 6] = [
        (
            "sensors.*.temp",
            &["sensors.kitchen.temp", "sensors.hall.temp"],
        ),
        (
            "sensors.>",
            &[
                "sensors.kitchen.temp",
                "sensors.hall.temp",
                "sensors.kitchen.humidity.raw",
                "sensors.x",
            ],
        ),
        ("sensors.kitchen.temp", &["sensors.kitchen.temp"]),
        ("*.*", &["sensors.x", "other.x"]),
        ("*", &["sensors"]),
        (">", &published),
    ];
    for ((pattern, want), sub) in expected.iter().zip(&mut subs) {
        let got = drain(sub);
        assert_eq!(subjects(&got), *want, "subscription on '{pattern}'");
        assert_eq!(texts(&got), *want, "payloads on '{pattern}'");
    }
}

#[tokio::test]
async fn headers_reply_to_and_binary_payloads_arrive_intact() {
    let b = common::start_broker().await;
    let subscriber = connect(&b).await;
    let publisher = connect(&b).await;
    let mut sub = subscriber.subscribe("data.>").await.unwrap();

    let big: Vec<u8> = (0..100 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    publisher
        .publish("data.headers", "h")
        .header("k", "1")
        .header("content-type", "text/plain")
        .header("k", "2")
        .header("k", "")
        .header("Ü-key", "välue with spaces")
        .reply_to("replies.here")
        .await
        .unwrap();
    publisher.publish("data.empty", Bytes::new()).await.unwrap();
    publisher
        .publish("data.big", Bytes::from(big.clone()))
        .await
        .unwrap();
    publisher
        .publish("data.binary", vec![0u8, 0xff, 0, 0xfe, b'\n', 0])
        .await
        .unwrap();
    settle(&publisher, &[&subscriber]).await;

    let got = drain(&mut sub);
    assert_eq!(
        subjects(&got),
        ["data.headers", "data.empty", "data.big", "data.binary"]
    );
    let h = &got[0];
    assert_eq!(
        h.headers.iter().collect::<Vec<_>>(),
        [
            ("k", "1"),
            ("content-type", "text/plain"),
            ("k", "2"),
            ("k", ""),
            ("Ü-key", "välue with spaces"),
        ]
    );
    assert_eq!(h.reply_to.as_deref(), Some("replies.here"));
    assert_eq!(&h.payload[..], b"h");

    assert!(got[1].payload.is_empty());
    assert!(got[1].headers.is_empty());
    assert_eq!(got[1].reply_to, None);
    assert_eq!(got[2].payload.len(), big.len());
    assert!(got[2].payload[..] == big[..], "100 KiB payload changed");
    assert_eq!(&got[3].payload[..], &[0u8, 0xff, 0, 0xfe, b'\n', 0]);
    assert_eq!(sub.dropped(), 0);
}

#[tokio::test]
async fn payload_at_the_frame_limit_passes_and_one_byte_more_is_refused_locally() {
    let b = common::start_broker_with(|c| c.limits.max_frame_size = 4096).await;
    let subscriber = connect(&b).await;
    let publisher = connect(&b).await;
    assert_eq!(publisher.max_frame_size(), 4096, "announced in WELCOME");
    let mut sub = subscriber.subscribe("limit").await.unwrap();
    // length = type(1) + id(4) + qos(1) + flags(1) + subject(2+5) + reply(2) + headers(2)
    let fixed = 1 + 4 + 1 + 1 + 2 + 5 + 2 + 2;
    let fits = vec![1u8; 4096 - fixed];
    publisher.publish("limit", fits.clone()).await.unwrap();
    match publisher
        .publish("limit", vec![2u8; 4096 - fixed + 1])
        .await
    {
        Err(Error::TooLarge { max: 4096, .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    settle(&publisher, &[&subscriber]).await;
    let got = drain(&mut sub);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.len(), fits.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_every_subscription_in_order() {
    const CLIENTS: usize = 5;
    const SUBS_PER_CLIENT: usize = 4;
    const MESSAGES: usize = 200;
    let b = common::start_broker().await;
    let publisher = connect(&b).await;
    let mut clients = Vec::new();
    let mut subs = Vec::new();
    for _ in 0..CLIENTS {
        let c = connect(&b).await;
        for _ in 0..SUBS_PER_CLIENT {
            subs.push(c.subscribe("fan.out").await.unwrap());
        }
        clients.push(c);
    }
    assert_eq!(b.server.subscription_count(), CLIENTS * SUBS_PER_CLIENT);
    for i in 0..MESSAGES {
        publisher.publish("fan.out", i.to_string()).await.unwrap();
    }
    settle(&publisher, &clients.iter().collect::<Vec<_>>()).await;

    let want: Vec<String> = (0..MESSAGES).map(|i| i.to_string()).collect();
    for (n, sub) in subs.iter_mut().enumerate() {
        assert_eq!(texts(&drain(sub)), want, "subscription {n}");
        assert_eq!(sub.dropped(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_groups_deliver_each_message_to_one_member_per_group() {
    const MESSAGES: usize = 300;
    let b = common::start_broker().await;
    let publisher = connect(&b).await;
    let mut clients = Vec::new();
    let mut workers = Vec::new();
    let mut audit = Vec::new();
    for _ in 0..3 {
        let c = connect(&b).await;
        workers.push(c.queue_subscribe("jobs.*", "workers").await.unwrap());
        clients.push(c);
    }
    for _ in 0..2 {
        let c = connect(&b).await;
        audit.push(c.subscribe("jobs.>").group("audit").await.unwrap());
        clients.push(c);
    }
    let plain_client = connect(&b).await;
    let mut plain = plain_client.subscribe("jobs.new").await.unwrap();
    clients.push(plain_client);

    for i in 0..MESSAGES {
        publisher.publish("jobs.new", i.to_string()).await.unwrap();
    }
    settle(&publisher, &clients.iter().collect::<Vec<_>>()).await;

    let all: BTreeSet<usize> = (0..MESSAGES).collect();
    for (name, members) in [("workers", &mut workers), ("audit", &mut audit)] {
        let mut seen = BTreeMap::<usize, usize>::new();
        for m in members.iter_mut() {
            let got: Vec<usize> = texts(&drain(m))
                .iter()
                .map(|t| t.parse().unwrap())
                .collect();
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "{name}: a member got its share out of order"
            );
            for n in got {
                *seen.entry(n).or_default() += 1;
            }
        }
        let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
        assert!(dups.is_empty(), "{name}: delivered twice: {dups:?}");
        assert_eq!(
            seen.keys().copied().collect::<BTreeSet<_>>(),
            all,
            "{name}: every message reaches exactly one member"
        );
    }
    let want: Vec<String> = (0..MESSAGES).map(|i| i.to_string()).collect();
    assert_eq!(
        texts(&drain(&mut plain)),
        want,
        "the plain subscriber gets all"
    );
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_other_subscriptions_keep_receiving() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    let publisher = connect(&b).await;
    let mut keep = c.subscribe("u.x").await.unwrap();
    let mut unsub = c.subscribe("u.x").await.unwrap();
    let mut dropped = c.subscribe("u.*").await.unwrap();
    assert_eq!(b.server.subscription_count(), 3);

    publisher.publish("u.x", "1").await.unwrap();
    settle(&publisher, &[&c]).await;
    assert_eq!(texts(&drain(&mut keep)), ["1"]);
    assert_eq!(texts(&drain(&mut unsub)), ["1"]);
    assert_eq!(texts(&drain(&mut dropped)), ["1"]);
    wait_for("3 deliveries counted", || {
        b.server.stats().messages_out == 3
    })
    .await;

    // Explicit unsubscribe: confirmed by the server before it returns.
    within("unsubscribe", unsub.unsubscribe()).await.unwrap();
    assert_eq!(b.server.subscription_count(), 2);
    publisher.publish("u.x", "2").await.unwrap();
    settle(&publisher, &[&c]).await;
    assert_eq!(texts(&drain(&mut keep)), ["2"]);
    assert_eq!(texts(&drain(&mut dropped)), ["2"]);
    // The broker delivered exactly two copies: none to the unsubscribed one.
    wait_for("5 deliveries counted", || {
        b.server.stats().messages_out == 5
    })
    .await;

    // Dropping the subscription unsubscribes in the background.
    drop(dropped);
    wait_for("the dropped subscription to leave the broker", || {
        b.server.subscription_count() == 1
    })
    .await;
    publisher.publish("u.x", "3").await.unwrap();
    publisher.publish("u.y", "4").await.unwrap();
    settle(&publisher, &[&c]).await;
    assert_eq!(texts(&drain(&mut keep)), ["3"]);
    wait_for("6 deliveries counted", || {
        b.server.stats().messages_out == 6
    })
    .await;

    // Subscribing again on the same connection works.
    let mut again = c.subscribe("u.*").await.unwrap();
    publisher.publish("u.y", "5").await.unwrap();
    settle(&publisher, &[&c]).await;
    assert_eq!(texts(&drain(&mut again)), ["5"]);
    assert!(drain(&mut keep).is_empty());
}

/// Messages of 1 KiB, published in windows small enough that the fast subscriber's own
/// outbound queue never reaches the bound, so everything it is sent must arrive.
const SLOW_MESSAGES: usize = 20_000;
const SLOW_WINDOW: usize = 24;
const MAX_PENDING: usize = 64 * 1024;
const CONTROL_HEADROOM: usize = 64 * 1024;

struct SlowConsumerRun {
    broker: common::TestBroker,
    stalled: RawConn,
    publisher: Client,
    _fast_client: Client,
}

/// A raw connection subscribed (sid 1) to `pattern`, in `group` if given, that the
/// test then leaves unread: a subscriber that has stalled.
async fn stalled_subscriber(
    addr: std::net::SocketAddr,
    pattern: &str,
    group: Option<&str>,
) -> RawConn {
    let mut stalled = RawConn::greeted(addr).await;
    stalled
        .send(&Subscribe {
            id: 1,
            sid: 1,
            pattern: pattern.into(),
            group: group.map(Into::into),
            filter: None,
        })
        .await;
    stalled.expect_ok(1).await;
    stalled
}

/// A stalled raw subscriber, a fast client subscriber and a publisher sending
/// [`SLOW_MESSAGES`]; asserts the fast one got everything in order and that no
/// connection's queue went over the bound while the stall lasted.
async fn run_with_stalled_subscriber(policy: SlowConsumerPolicy) -> SlowConsumerRun {
    let broker = common::start_broker_with(|c| {
        c.limits.max_pending_bytes = MAX_PENDING;
        c.limits.slow_consumer = policy;
        // The stall must outlast the test: a write timeout would end it early.
        c.limits.write_timeout = Duration::from_secs(120);
    })
    .await;

    // Never read (until the checks at the end).
    let stalled = stalled_subscriber(broker.addr, "load.>", None).await;

    let fast_client = connect_named(&broker, "fast").await;
    let mut fast = fast_client.subscribe("load.data").await.unwrap();
    let publisher = connect_named(&broker, "publisher").await;

    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut n = 0usize;
        while n < SLOW_MESSAGES {
            let m = fast
                .next()
                .await
                .expect("the fast subscription ended early");
            let seq: usize = std::str::from_utf8(&m.payload[..8])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(seq, n, "fast subscriber: out of order or lost");
            n += 1;
            let _ = progress_tx.send(n);
        }
        fast.dropped()
    });

    let filler = vec![b'.'; 1024 - 8];
    for i in 0..SLOW_MESSAGES {
        if i >= SLOW_WINDOW {
            within(
                "the fast subscriber to keep up",
                progress.wait_for(|n| *n > i - SLOW_WINDOW),
            )
            .await
            .expect("fast reader alive");
        }
        let mut payload = format!("{i:08}").into_bytes();
        payload.extend_from_slice(&filler);
        publisher.publish("load.data", payload).await.unwrap();
        if i % 500 == 0 {
            for c in broker.server.connections() {
                assert!(
                    c.pending_bytes <= MAX_PENDING + CONTROL_HEADROOM,
                    "connection {} ({}) holds {} pending bytes",
                    c.id,
                    c.name,
                    c.pending_bytes
                );
            }
        }
    }
    within("the publisher's flush", publisher.flush())
        .await
        .unwrap();
    let fast_dropped = within("the fast subscriber gets everything", reader)
        .await
        .unwrap();
    assert_eq!(fast_dropped, 0, "the fast client dropped messages");
    for c in broker.server.connections() {
        assert!(
            c.pending_bytes <= MAX_PENDING + CONTROL_HEADROOM,
            "connection {} ({}) holds {} pending bytes",
            c.id,
            c.name,
            c.pending_bytes
        );
        if c.name == "fast" || c.name == "publisher" {
            assert_eq!(c.dropped, 0, "{} lost messages to the policy", c.name);
        }
    }
    SlowConsumerRun {
        broker,
        stalled,
        publisher,
        _fast_client: fast_client,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_is_dropped_for_and_does_not_stop_a_fast_one() {
    let mut run = run_with_stalled_subscriber(SlowConsumerPolicy::Drop).await;
    let server = &run.broker.server;
    wait_for("slow-consumer drops to be counted", || {
        server.stats().slow_consumer_drops > 0
    })
    .await;
    let stalled_info = server
        .connections()
        .into_iter()
        .find(|c| c.name == "raw")
        .expect("the stalled connection stays open under the drop policy");
    assert!(stalled_info.dropped > 0);
    assert!(
        stalled_info.pending_bytes > 0,
        "the stall is still going on"
    );
    assert_eq!(server.stats().slow_consumer_disconnects, 0);
    wait_for("all drops counted server-wide", || {
        server.stats().slow_consumer_drops == stalled_info.dropped
    })
    .await;

    // Now read the stalled connection: what was queued arrives, in order, and together
    // with what was dropped accounts for every message exactly once.
    run.stalled.send(&tern_codec::Ping { id: 4242 }).await;
    let mut received = 0u64;
    let mut last: Option<usize> = None;
    loop {
        match run.stalled.recv().await {
            Some(Frame::Message(m)) => {
                assert_eq!(m.sid, 1);
                let seq: usize = std::str::from_utf8(&m.envelope.payload[..8])
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(
                    last.is_none_or(|l| seq > l),
                    "reordered: {seq} after {last:?}"
                );
                last = Some(seq);
                received += 1;
            }
            Some(Frame::Pong(p)) if p.id == 4242 => break,
            other => panic!("unexpected {other:?} on the stalled connection"),
        }
    }
    assert_eq!(
        received + stalled_info.dropped,
        SLOW_MESSAGES as u64,
        "each message was either delivered or dropped and counted"
    );
    run.publisher.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_is_disconnected_under_the_disconnect_policy() {
    let mut run = run_with_stalled_subscriber(SlowConsumerPolicy::Disconnect).await;
    let server = &run.broker.server;
    wait_for("the slow consumer to be disconnected", || {
        server.stats().slow_consumer_disconnects >= 1
    })
    .await;
    assert_eq!(
        server.stats().slow_consumer_disconnects,
        1,
        "only the stalled connection is cut off"
    );
    wait_for("the stalled connection to leave the list", || {
        server.connections().iter().all(|c| c.name != "raw")
    })
    .await;
    assert_eq!(server.connections().len(), 2, "fast and publisher stay");
    // The stalled connection ends: messages queued before, then (if the writer got to
    // send it) ERROR slow_consumer, then end of stream.
    let mut last: Option<usize> = None;
    loop {
        match run.stalled.recv().await {
            Some(Frame::Message(m)) => {
                let seq: usize = std::str::from_utf8(&m.envelope.payload[..8])
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(
                    last.is_none_or(|l| seq > l),
                    "reordered: {seq} after {last:?}"
                );
                last = Some(seq);
            }
            Some(Frame::Error(e)) => {
                assert_eq!(e.code(), Some(ErrorCode::SlowConsumer), "{e:?}");
                assert_eq!(e.id, 0);
                run.stalled.expect_eof().await;
                break;
            }
            None => break,
            Some(other) => panic!("unexpected {other:?} on the stalled connection"),
        }
    }
    assert!(
        last.is_none_or(|l| l < SLOW_MESSAGES - 1),
        "a disconnected consumer cannot have received the last message"
    );
    run.publisher.flush().await.unwrap();
}

#[tokio::test]
async fn invalid_patterns_and_groups_are_refused_and_the_connection_keeps_working() {
    let b = common::start_broker_with(|c| c.limits.subject.max_len = 32).await;
    let c = connect(&b).await;

    // Checked by the client before sending.
    for bad in ["a..b", "", "a.>.b", "a.b*", "a b", ".a"] {
        match c.subscribe(bad).await {
            Err(Error::InvalidSubject { what, value, .. }) => {
                assert_eq!(what, "pattern");
                assert_eq!(value, bad);
            }
            other => panic!("pattern '{bad}': expected InvalidSubject, got {other:?}"),
        }
    }
    // Valid for the client, too long for this server: the server refuses.
    let long = format!("long.{}", "x".repeat(40));
    match c.subscribe(&long).await {
        Err(e @ Error::Server { .. }) => assert_eq!(e.code(), Some(ErrorCode::InvalidPattern)),
        other => panic!("expected a server InvalidPattern, got {other:?}"),
    }
    for group in ["has space", "tab\tgroup", &"g".repeat(256)] {
        match c.subscribe("ok.subject").group(group).await {
            Err(e @ Error::Server { .. }) => {
                assert_eq!(
                    e.code(),
                    Some(ErrorCode::InvalidQueueGroup),
                    "group {group:?}"
                )
            }
            other => panic!("group {group:?}: expected InvalidQueueGroup, got {other:?}"),
        }
    }
    assert_eq!(
        b.server.subscription_count(),
        0,
        "nothing refused was added"
    );

    let mut sub = c
        .subscribe("ok.subject")
        .group(&"g".repeat(255))
        .await
        .unwrap();
    c.publish("ok.subject", "still working").await.unwrap();
    c.flush().await.unwrap();
    assert_eq!(texts(&drain(&mut sub)), ["still working"]);
}

#[tokio::test]
async fn invalid_publish_subjects_are_refused_by_the_client() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    let mut all = c.subscribe(">").await.unwrap();
    let long = "a".repeat(2000);
    for bad in ["a..b", "a.*", "a.>", "a b", "", "a.", long.as_str()] {
        match c.publish(bad, "x").await {
            Err(Error::InvalidSubject { what, value, .. }) => {
                assert_eq!(what, "subject");
                assert_eq!(value, bad);
            }
            other => panic!("subject '{bad}': expected InvalidSubject, got {other:?}"),
        }
    }
    match c.publish("ok", "x").reply_to("bad reply").await {
        Err(Error::InvalidSubject { what, .. }) => assert_eq!(what, "reply-to subject"),
        other => panic!("expected an invalid reply-to, got {other:?}"),
    }
    c.publish("ok", "valid").await.unwrap();
    c.flush().await.unwrap();
    assert_eq!(subjects(&drain(&mut all)), ["ok"]);
    wait_for("the one valid publish counted", || {
        b.server.stats().messages_in == 1
    })
    .await;
}

/// "Without sending" can only be seen on the wire, so this client talks to a recording
/// stand-in server: after the refused publishes, the only frames it sends are the valid
/// publish and the flush's PING (and the CLUSTER_QUERY of every connection).
#[tokio::test]
async fn invalid_publishes_never_reach_the_wire() {
    use tern_codec::{Encode, Pong, Welcome, PROTOCOL_VERSION};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = bytes::BytesMut::new();
        let mut frames = Vec::new();
        loop {
            while let Some(f) = Frame::decode(&mut buf, 1 << 20).unwrap() {
                match f {
                    Frame::Hello(_) => {
                        let mut out = bytes::BytesMut::new();
                        Welcome {
                            version: PROTOCOL_VERSION,
                            server_id: "stand-in".into(),
                            server_version: "0".into(),
                            connection_id: 1,
                            max_frame_size: 1 << 20,
                        }
                        .encode(&mut out)
                        .unwrap();
                        sock.write_all(&out).await.unwrap();
                    }
                    Frame::Ping(p) => {
                        let mut out = bytes::BytesMut::new();
                        Pong { id: p.id }.encode(&mut out).unwrap();
                        sock.write_all(&out).await.unwrap();
                        frames.push(Frame::Ping(p));
                        return frames;
                    }
                    // Every connection asks which nodes a cluster has; left unanswered.
                    Frame::ClusterQuery(_) => {}
                    other => frames.push(other),
                }
            }
            if sock.read_buf(&mut buf).await.unwrap() == 0 {
                return frames;
            }
        }
    });
    let c = within("connect", Client::connect(addr.to_string()))
        .await
        .unwrap();
    for bad in ["a..b", "a.*", "a b", &"a".repeat(2000)] {
        assert!(matches!(
            c.publish(bad, "x").await,
            Err(Error::InvalidSubject { .. })
        ));
    }
    c.publish("fine", "y").await.unwrap();
    within("flush", c.flush()).await.unwrap();
    let frames = within("the stand-in server", server).await.unwrap();
    assert_eq!(frames.len(), 2, "{frames:?}");
    match &frames[0] {
        Frame::Publish(p) => assert_eq!(&*p.envelope.subject, "fine"),
        other => panic!("expected the valid PUBLISH, got {other:?}"),
    }
    assert!(matches!(frames[1], Frame::Ping(_)));
}

#[tokio::test]
async fn too_many_subscriptions_is_refused_and_a_slot_frees_on_unsubscribe() {
    let b = common::start_broker_with(|c| c.limits.max_subscriptions = 3).await;
    let c = connect(&b).await;
    let other = connect(&b).await;
    let s1 = c.subscribe("m.1").await.unwrap();
    let _s2 = c.subscribe("m.2").await.unwrap();
    let mut s3 = c.subscribe("m.3").await.unwrap();
    match c.subscribe("m.4").await {
        Err(e @ Error::Server { .. }) => {
            assert_eq!(e.code(), Some(ErrorCode::TooManySubscriptions))
        }
        other => panic!("expected TooManySubscriptions, got {other:?}"),
    }
    assert_eq!(b.server.subscription_count(), 3);
    // The limit is per connection.
    let _o = other.subscribe("m.4").await.unwrap();
    // The refused connection keeps working.
    other.publish("m.3", "x").await.unwrap();
    settle(&other, &[&c]).await;
    assert_eq!(texts(&drain(&mut s3)), ["x"]);
    // Freeing a slot makes room for another.
    s1.unsubscribe().await.unwrap();
    let _s4 = c.subscribe("m.4").await.unwrap();
    assert_eq!(b.server.subscription_count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_sends_what_is_buffered_and_ends_subscriptions() {
    let b = common::start_broker().await;
    let subscriber = connect(&b).await;
    let mut sub = subscriber.subscribe("close.x").await.unwrap();
    let publisher = connect(&b).await;
    let mut own = publisher.subscribe("close.>").await.unwrap();
    for i in 0..500 {
        publisher.publish("close.x", i.to_string()).await.unwrap();
    }
    // No flush: close() promises to send the buffer and wait for the server.
    within("close", publisher.close()).await.unwrap();
    assert!(publisher.is_closed());
    within("subscriber flush", subscriber.flush())
        .await
        .unwrap();
    let want: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    assert_eq!(texts(&drain(&mut sub)), want);

    // The closed client's own subscription ends once what arrived is read.
    let mut n = 0;
    while let Some(_m) = within("the closed client's subscription to end", own.next()).await {
        n += 1;
    }
    assert!(n <= 500);
    assert!(matches!(
        publisher.publish("close.x", "late").await,
        Err(Error::Closed)
    ));
    assert!(matches!(publisher.flush().await, Err(Error::Closed)));
    wait_for("the closed client's subscription to leave", || {
        b.server.subscription_count() == 1
    })
    .await;
}

#[tokio::test]
async fn a_full_subscription_buffer_drops_and_counts_without_stalling_others() {
    let b = common::start_broker().await;
    let c = within(
        "connect",
        Client::builder().subscription_capacity(10).connect(b.url()),
    )
    .await
    .unwrap();
    let mut unread = c.subscribe("cap.x").await.unwrap();
    let mut read = c.subscribe("cap.y").await.unwrap();
    let publisher = connect(&b).await;
    for i in 0..25 {
        publisher.publish("cap.x", i.to_string()).await.unwrap();
    }
    for i in 0..5 {
        publisher.publish("cap.y", i.to_string()).await.unwrap();
    }
    settle(&publisher, &[&c]).await;
    let want: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(texts(&drain(&mut unread)), want, "the first 10 are kept");
    assert_eq!(unread.dropped(), 15);
    assert_eq!(texts(&drain(&mut read)), ["0", "1", "2", "3", "4"]);
    assert_eq!(read.dropped(), 0);
}

/// What a stalled queue-group member and a fast one received, after a windowed burst.
struct GroupShedding {
    broker: common::TestBroker,
    /// The stalled member's connection, read at the end of the burst.
    stalled_info: tern_broker::ConnectionInfo,
    fast_got: Vec<usize>,
    stalled_got: Vec<usize>,
    total: usize,
}

/// A queue group of a stalled raw member and a fast client member, under the drop
/// policy; the publisher sends batches and waits for the fast member to have each batch,
/// so the fast member's queue never comes near the bound.
async fn burst_to_group_with_a_stalled_member() -> GroupShedding {
    const MESSAGES: usize = 20_000;
    const BATCH: usize = 24;
    let broker = common::start_broker_with(|c| {
        c.limits.max_pending_bytes = MAX_PENDING;
        c.limits.write_timeout = Duration::from_secs(120);
    })
    .await;
    let mut stalled = stalled_subscriber(broker.addr, "work", Some("g")).await;
    let fast_client = connect_named(&broker, "fast").await;
    let mut fast = fast_client.queue_subscribe("work", "g").await.unwrap();
    let publisher = connect_named(&broker, "publisher").await;

    let filler = vec![b'.'; 1024 - 8];
    let mut fast_got = Vec::new();
    for batch in 0..MESSAGES / BATCH {
        for i in batch * BATCH..(batch + 1) * BATCH {
            let mut payload = format!("{i:08}").into_bytes();
            payload.extend_from_slice(&filler);
            publisher.publish("work", payload).await.unwrap();
        }
        settle(&publisher, &[&fast_client]).await;
        for m in drain(&mut fast) {
            fast_got.push(
                std::str::from_utf8(&m.payload[..8])
                    .unwrap()
                    .parse::<usize>()
                    .unwrap(),
            );
        }
    }
    let stalled_info = broker
        .server
        .connections()
        .into_iter()
        .find(|c| c.name == "raw")
        .unwrap();

    stalled.send(&tern_codec::Ping { id: 99 }).await;
    let mut stalled_got = Vec::new();
    loop {
        match stalled.recv().await {
            Some(Frame::Message(m)) => stalled_got.push(
                std::str::from_utf8(&m.envelope.payload[..8])
                    .unwrap()
                    .parse::<usize>()
                    .unwrap(),
            ),
            Some(Frame::Pong(p)) if p.id == 99 => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    GroupShedding {
        broker,
        stalled_info,
        fast_got,
        stalled_got,
        total: MESSAGES / BATCH * BATCH,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_queue_group_member_sheds_load_to_its_peers() {
    let run = burst_to_group_with_a_stalled_member().await;
    assert!(
        run.stalled_info.pending_bytes > 0,
        "the member really is stalled"
    );
    assert!(run.stalled_info.pending_bytes <= MAX_PENDING);
    let mut all: Vec<usize> = run
        .fast_got
        .iter()
        .chain(&run.stalled_got)
        .copied()
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..run.total).collect::<Vec<_>>(),
        "each message to exactly one member, none lost"
    );
    wait_for("counters to settle", || {
        run.broker.server.stats().messages_out == run.total as u64
    })
    .await;
    assert_eq!(run.broker.server.stats().slow_consumer_drops, 0);
}

/// A message the stalled member refused but a peer took was not dropped, so the
/// member's connection must not count it as dropped (server-wide it is not counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shedding_to_a_group_peer_is_not_counted_as_a_drop_on_the_member() {
    let run = burst_to_group_with_a_stalled_member().await;
    assert_eq!(
        run.fast_got.len() + run.stalled_got.len(),
        run.total,
        "nothing was lost"
    );
    assert_eq!(
        run.stalled_info.dropped, 0,
        "ConnectionInfo::dropped counts {} messages that a group peer received",
        run.stalled_info.dropped
    );
}
