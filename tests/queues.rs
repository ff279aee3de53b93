//! Durable queues end to end: administration, confirmed publishing, competing
//! consumers, settling, redelivery, dead-lettering, limits and restarts — with the real
//! broker and the real client, asserting exactly what arrives and what the queue's
//! counters say.

mod common;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{queue_until, within, TestBroker};
use futures_util::FutureExt;
use tern::{
    Client, Confirmation, Consumer, Delivery, Error, ErrorCode, Headers, Overflow, Qos,
    QueueConfig, QueueInfo,
};

async fn connect(b: &TestBroker) -> Client {
    within("connect", Client::connect(b.url())).await.unwrap()
}

/// The error code of a call that must fail with a server error.
fn code<T: Debug>(r: Result<T, Error>) -> ErrorCode {
    match r {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("expected a server error, got {e:?}")),
        Ok(v) => panic!("expected a server error, got Ok({v:?})"),
    }
}

async fn declare(c: &Client, config: QueueConfig) -> QueueInfo {
    within("declare", c.declare_queue(&config))
        .await
        .unwrap_or_else(|e| panic!("declaring {}: {e}", config.name))
}

/// Publishes every payload at QoS 1 with all confirms in flight at once, then waits
/// for them in order.
async fn publish_all<I, P>(c: &Client, subject: &str, payloads: I) -> Vec<Confirmation>
where
    I: IntoIterator<Item = P>,
    P: Into<bytes::Bytes>,
{
    let mut pending = Vec::new();
    for p in payloads {
        pending.push(
            c.publish(subject, p)
                .qos(Qos::AtLeastOnce)
                .send()
                .await
                .unwrap(),
        );
    }
    let mut confirms = Vec::new();
    for p in pending {
        confirms.push(within("a confirm", p).await.expect("confirmed"));
    }
    confirms
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

async fn next(consumer: &mut Consumer) -> Delivery {
    within("a delivery", consumer.next())
        .await
        .expect("the consumer ended")
}

/// The next `n` deliveries.
async fn take(consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(next(consumer).await);
    }
    got
}

fn text(d: &Delivery) -> String {
    String::from_utf8(d.message.payload.to_vec()).expect("UTF-8 payload")
}

fn texts(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(text).collect()
}

async fn ack_all(ds: &[Delivery]) {
    for d in ds {
        within("ack", d.ack()).await.expect("ack");
    }
}

/// Asserts that `consumer` holds no delivery now. Call after [`no_more_for`] made sure
/// that everything the broker sent it has arrived.
fn assert_nothing_buffered(consumer: &mut Consumer) {
    if let Some(d) = consumer.next().now_or_never() {
        panic!(
            "unexpected delivery: {:?}",
            d.map(|d| (text(&d), d.delivery_count))
        );
    }
}

/// Makes everything the broker has sent `client`'s consumers so far arrive: the queue
/// task pushed its deliveries onto the connection before it answered `queue_info`, and
/// the flush's PONG follows them on that connection.
async fn no_more_for(admin: &Client, queue: &str, client: &Client) {
    within("queue_info", admin.queue_info(queue)).await.unwrap();
    within("flush", client.flush()).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Administration.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_is_idempotent_and_other_options_are_refused() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    let config = QueueConfig::new("orders")
        .bind("orders.*")
        .bind("returns.>")
        .max_deliver(3)
        .ack_timeout(Duration::from_secs(7))
        .dead_letter("orders.dlq")
        .ttl(Duration::from_secs(3600))
        .max_length(100, Overflow::Reject);
    let first = declare(&c, config.clone()).await;
    assert_eq!(&*first.name, "orders");
    let patterns: Vec<&str> = first.bindings.iter().map(|b| &*b.pattern).collect();
    assert_eq!(patterns, ["orders.*", "returns.>"]);
    let o = &first.options;
    assert_eq!(o.max_deliver, 3);
    assert_eq!(o.ack_timeout_ms, 7000);
    assert_eq!(o.dead_letter.as_deref(), Some("orders.dlq"));
    assert_eq!(o.ttl_ms, 3_600_000);
    assert_eq!(o.max_length, 100);
    assert_eq!(o.overflow, Overflow::Reject);
    assert_eq!(first.stats, Default::default(), "a new queue is empty");

    // The same again: nothing changes.
    let again = declare(&c, config.clone()).await;
    assert_eq!(again.bindings, first.bindings);
    assert_eq!(again.options, first.options);

    // Anything different is refused, and the queue stays as it was.
    for other in [
        config.clone().max_deliver(4),
        config.clone().bind("more.>"),
        QueueConfig::new("orders")
            .bind("orders.*")
            .bind("returns.>"),
        config.clone().max_length(100, Overflow::DropHead),
        config.clone().ack_timeout(Duration::from_secs(8)),
    ] {
        assert_eq!(
            code(c.declare_queue(&other).await),
            ErrorCode::QueueExists,
            "{other:?}"
        );
    }
    let now = c.queue_info("orders").await.unwrap();
    assert_eq!(now.bindings, first.bindings);
    assert_eq!(now.options, first.options);

    // Defaults are filled in and shown.
    let plain = declare(&c, QueueConfig::new("plain").bind("plain")).await;
    assert_eq!(plain.options.max_deliver, 5);
    assert_eq!(plain.options.ack_timeout_ms, 30_000);
    assert_eq!(plain.options.dead_letter, None);
    assert_eq!(plain.options.ttl_ms, 0);
    assert_eq!(plain.options.max_length, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_lists_every_queue_and_delete_removes_one() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    assert!(c.queues().await.unwrap().is_empty());
    for name in ["b", "c", "a"] {
        declare(&c, QueueConfig::new(name).bind(format!("{name}.>"))).await;
    }
    publish_all(&c, "b.x", ["one", "two"]).await;
    queue_until(&c, "b", "both messages", |s| s.ready == 2).await;

    let names = |qs: Vec<QueueInfo>| qs.iter().map(|q| q.name.to_string()).collect::<Vec<_>>();
    let all = c.queues().await.unwrap();
    assert_eq!(names(all.clone()), ["a", "b", "c"], "ordered by name");
    assert_eq!(all[1].stats.ready, 2);
    assert_eq!(all[1].stats.published, 2);
    assert_eq!(all[0].stats.ready, 0);

    within("delete", c.delete_queue("b")).await.unwrap();
    assert_eq!(names(c.queues().await.unwrap()), ["a", "c"]);
    assert_eq!(code(c.delete_queue("b").await), ErrorCode::QueueNotFound);
    assert_eq!(code(c.queue_info("b").await), ErrorCode::QueueNotFound);
    assert_eq!(code(c.purge_queue("b").await), ErrorCode::QueueNotFound);
    assert_eq!(
        code(c.consume("b").await.map(|_| ())),
        ErrorCode::QueueNotFound
    );
    // Its binding went with it.
    let confirm = c
        .publish("b.x", "after")
        .qos(Qos::AtLeastOnce)
        .send()
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(confirm.queues, 0);

    // A queue of the same name can be declared anew, empty, with other options.
    let fresh = declare(&c, QueueConfig::new("b").bind("other").max_deliver(9)).await;
    assert_eq!(fresh.stats.ready, 0);
    assert_eq!(fresh.options.max_deliver, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_ends_its_consumers() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("doomed").bind("doomed")).await;
    let mut consumer = c.consume("doomed").await.unwrap();
    publish_all(&c, "doomed", ["m"]).await;
    let d = next(&mut consumer).await;
    within("delete", c.delete_queue("doomed")).await.unwrap();
    assert!(
        within("the consumer to end", consumer.next())
            .await
            .is_none(),
        "the consumer ends when its queue is deleted"
    );
    assert!(d.ack().await.is_err(), "nothing left to settle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_waiting_messages_and_keeps_deliveries_in_flight() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("work").bind("work")).await;
    publish_all(&c, "work", numbered("m", 10)).await;
    queue_until(&c, "work", "10 ready", |s| s.ready == 10).await;
    let mut consumer = c.consume("work").prefetch(2).await.unwrap();
    let held = take(&mut consumer, 2).await;
    assert_eq!(texts(&held), ["m0", "m1"]);
    queue_until(&c, "work", "2 in flight", |s| s.unacked == 2).await;

    assert_eq!(within("purge", c.purge_queue("work")).await.unwrap(), 8);
    let s = c.queue_info("work").await.unwrap().stats;
    assert_eq!((s.ready, s.unacked), (0, 2));
    ack_all(&held).await;
    let s = queue_until(&c, "work", "the acks", |s| s.acked == 2)
        .await
        .stats;
    assert_eq!((s.ready, s.unacked), (0, 0));
    assert_eq!(within("purge", c.purge_queue("work")).await.unwrap(), 0);

    // The queue works on after a purge.
    publish_all(&c, "work", ["after"]).await;
    let d = next(&mut consumer).await;
    assert_eq!(text(&d), "after");
    no_more_for(&c, "work", &c).await;
    assert_nothing_buffered(&mut consumer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_transfers_waiting_messages_oldest_first() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("from").bind("from")).await;
    declare(&c, QueueConfig::new("to").bind("to")).await;
    publish_all(&c, "to", ["already there"]).await;
    publish_all(&c, "from", numbered("m", 5)).await;
    queue_until(&c, "from", "5 ready", |s| s.ready == 5).await;

    assert_eq!(
        within("move", c.move_messages("from", "to", Some(2)))
            .await
            .unwrap(),
        2
    );
    assert_eq!(c.queue_info("from").await.unwrap().stats.ready, 3);
    assert_eq!(
        within("move", c.move_messages("from", "to", None))
            .await
            .unwrap(),
        3
    );
    assert_eq!(c.queue_info("from").await.unwrap().stats.ready, 0);
    assert_eq!(
        within("move", c.move_messages("from", "to", None))
            .await
            .unwrap(),
        0,
        "nothing left to move"
    );
    queue_until(&c, "to", "all six", |s| s.ready == 6).await;

    let mut consumer = c.consume("to").await.unwrap();
    let got = take(&mut consumer, 6).await;
    assert_eq!(
        texts(&got),
        ["already there", "m0", "m1", "m2", "m3", "m4"],
        "appended at the end, in their order"
    );
    assert!(got.iter().all(|d| d.delivery_count == 1));
    assert!(
        got.windows(2).all(|w| w[0].seq < w[1].seq),
        "new positions in the target"
    );
    assert!(
        got.iter().skip(1).all(|d| d.message.subject == "from"),
        "the envelope moves unchanged"
    );
    ack_all(&got).await;

    assert_eq!(
        code(c.move_messages("from", "nowhere", None).await),
        ErrorCode::QueueNotFound
    );
    assert_eq!(
        code(c.move_messages("nowhere", "to", None).await),
        ErrorCode::QueueNotFound
    );
}

// ---------------------------------------------------------------------------------------
// Confirmed publishing.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_counts_the_queues_that_stored_the_message() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("exact").bind("t.x")).await;
    declare(&c, QueueConfig::new("wild").bind("t.*")).await;
    // Two bindings of one queue that both match: stored once.
    declare(&c, QueueConfig::new("twice").bind("u.x").bind("u.>")).await;

    assert_eq!(
        publish_all(&c, "t.x", ["to both"]).await,
        [Confirmation {
            queues: 2,
            duplicate: false
        }]
    );
    assert_eq!(publish_all(&c, "t.y", ["to wild"]).await[0].queues, 1);
    assert_eq!(publish_all(&c, "u.x", ["once"]).await[0].queues, 1);
    assert_eq!(publish_all(&c, "v.x", ["nowhere"]).await[0].queues, 0);

    queue_until(&c, "exact", "one", |s| s.ready == 1).await;
    queue_until(&c, "wild", "two", |s| s.ready == 2).await;
    let twice = queue_until(&c, "twice", "one", |s| s.ready == 1).await;
    assert_eq!(twice.stats.published, 1, "stored once");
    let mut consumer = c.consume("twice").await.unwrap();
    assert_eq!(text(&next(&mut consumer).await), "once");
    no_more_for(&c, "twice", &c).await;
    assert_nothing_buffered(&mut consumer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandatory_publish_that_nothing_takes_is_refused() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("q").bind("q.>")).await;
    for qos in [Qos::AtMostOnce, Qos::AtLeastOnce] {
        let r = c.publish("nobody.here", "x").qos(qos).mandatory().await;
        assert_eq!(code(r), ErrorCode::NoRoute, "{qos:?}");
    }
    // Without MANDATORY it is not an error.
    assert_eq!(publish_all(&c, "nobody.here", ["x"]).await[0].queues, 0);
    // With a queue to take it, a mandatory publish is confirmed.
    let confirm = c
        .publish("q.a", "taken")
        .qos(Qos::AtLeastOnce)
        .mandatory()
        .send()
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(confirm.queues, 1);
    let s = queue_until(&c, "q", "one message", |s| s.ready == 1)
        .await
        .stats;
    assert_eq!(s.published, 1, "the refused ones were not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_publish_to_subscribers_only_is_confirmed_with_no_queues() {
    let b = common::start_broker().await;
    let sub_client = connect(&b).await;
    let mut sub = sub_client.subscribe("live.*").await.unwrap();
    let c = connect(&b).await;
    let confirm = c
        .publish("live.x", "hello")
        .qos(Qos::AtLeastOnce)
        .mandatory()
        .send()
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        confirm,
        Confirmation {
            queues: 0,
            duplicate: false
        }
    );
    let m = within("the message", sub.next()).await.unwrap();
    assert_eq!(&m.payload[..], b"hello");
}

// ---------------------------------------------------------------------------------------
// Consumers.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_get_disjoint_shares_of_every_message() {
    let b = common::start_broker().await;
    let admin = connect(&b).await;
    declare(&admin, QueueConfig::new("jobs").bind("jobs")).await;
    let mut workers = Vec::new();
    let mut received = Vec::new();
    for _ in 0..3 {
        let c = connect(&b).await;
        let mut consumer = c.consume("jobs").prefetch(8).await.unwrap();
        let got: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
        received.push(Arc::clone(&got));
        workers.push(tokio::spawn(async move {
            let _client = c;
            while let Some(d) = consumer.next().await {
                got.lock().unwrap().push((d.seq, text(&d)));
                d.ack().await.expect("ack");
            }
        }));
    }
    queue_until(&admin, "jobs", "three consumers", |s| s.consumers == 3).await;

    let sent = numbered("job-", 300);
    publish_all(&admin, "jobs", sent.clone()).await;
    let s = queue_until(&admin, "jobs", "every ack", |s| s.acked == 300)
        .await
        .stats;
    assert_eq!((s.ready, s.unacked), (0, 0));
    assert_eq!(s.delivered, 300, "each message delivered once");
    assert_eq!(s.redelivered, 0);
    for w in &workers {
        w.abort();
    }

    let mut all = Vec::new();
    for (i, got) in received.iter().enumerate() {
        let got = got.lock().unwrap().clone();
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "consumer {i} got its share oldest first"
        );
        all.extend(got.into_iter().map(|(_, t)| t));
    }
    assert_eq!(all.len(), 300, "no message went to two consumers");
    let all: BTreeSet<String> = all.into_iter().collect();
    assert_eq!(all, sent.into_iter().collect::<BTreeSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_one_gives_a_busy_consumer_nothing_more() {
    let b = common::start_broker().await;
    let admin = connect(&b).await;
    declare(&admin, QueueConfig::new("fair").bind("fair")).await;
    let slow_client = connect(&b).await;
    let mut slow = slow_client.consume("fair").prefetch(1).await.unwrap();
    publish_all(&admin, "fair", ["m0"]).await;
    let busy = next(&mut slow).await;
    assert_eq!(text(&busy), "m0");

    let fast_client = connect(&b).await;
    let mut fast = fast_client.consume("fair").prefetch(1).await.unwrap();
    publish_all(&admin, "fair", numbered("n", 10)).await;
    let mut got = Vec::new();
    for _ in 0..10 {
        let d = next(&mut fast).await;
        got.push(text(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(
        got,
        numbered("n", 10),
        "the idle consumer took all, in order"
    );

    no_more_for(&admin, "fair", &slow_client).await;
    assert_nothing_buffered(&mut slow);
    let s = admin.queue_info("fair").await.unwrap().stats;
    assert_eq!((s.ready, s.unacked, s.delivered, s.acked), (0, 1, 11, 10));

    busy.ack().await.unwrap();
    let s = queue_until(&admin, "fair", "the last ack", |s| s.acked == 11)
        .await
        .stats;
    assert_eq!((s.ready, s.unacked), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_delivery_is_redelivered_after_the_ack_timeout() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(
        &c,
        QueueConfig::new("slow")
            .bind("slow")
            .ack_timeout(Duration::from_millis(200)),
    )
    .await;
    let mut consumer = c.consume("slow").await.unwrap();
    publish_all(&c, "slow", ["late"]).await;
    let first = next(&mut consumer).await;
    assert_eq!(first.delivery_count, 1);
    assert!(!first.redelivered());
    let sent = Instant::now();

    let second = next(&mut consumer).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(150),
        "redelivered after {:?}, before the 200 ms ack timeout",
        sent.elapsed()
    );
    assert_eq!(text(&second), "late");
    assert_eq!(second.seq, first.seq, "the same message");
    assert_eq!(second.delivery_count, 2);
    assert!(second.redelivered());
    assert_ne!(second.delivery_id, first.delivery_id, "a new attempt");

    // The old attempt is stale and settles nothing.
    assert_eq!(code(first.ack().await), ErrorCode::StaleDelivery);
    assert_eq!(code(first.nack(false).await), ErrorCode::StaleDelivery);
    let s = c.queue_info("slow").await.unwrap().stats;
    assert_eq!(s.acked, 0, "the stale ack acked nothing");
    assert_eq!(
        s.dead_lettered + s.dropped,
        0,
        "the stale nack rejected nothing"
    );
    assert_eq!(s.ready + s.unacked, 1, "the message is still in the queue");

    second.ack().await.expect("the current attempt settles");
    let s = queue_until(&c, "slow", "the ack", |s| s.acked == 1)
        .await
        .stats;
    assert_eq!((s.ready, s.unacked), (0, 0));
    assert_eq!((s.delivered, s.redelivered), (2, 1));
    assert_eq!(
        code(second.ack().await),
        ErrorCode::StaleDelivery,
        "only once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_of_a_lost_connection_go_to_another_consumer() {
    let b = common::start_broker().await;
    let admin = connect(&b).await;
    declare(&admin, QueueConfig::new("work").bind("work")).await;
    let proxy = common::Proxy::start(b.addr).await;
    let doomed = Client::builder()
        .reconnect(false)
        .connect(proxy.url())
        .await
        .unwrap();
    let mut lost = doomed.consume("work").prefetch(10).await.unwrap();
    publish_all(&admin, "work", numbered("m", 3)).await;
    let first = take(&mut lost, 3).await;
    assert_eq!(texts(&first), ["m0", "m1", "m2"]);

    let heir_client = connect(&b).await;
    let mut heir = heir_client.consume("work").await.unwrap();
    no_more_for(&admin, "work", &heir_client).await;
    assert_nothing_buffered(&mut heir);

    proxy.cut();
    let again = take(&mut heir, 3).await;
    assert_eq!(texts(&again), ["m0", "m1", "m2"]);
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(b.seq, a.seq);
        assert_eq!(b.delivery_count, 2);
    }
    ack_all(&again).await;
    let s = queue_until(&admin, "work", "the acks", |s| s.acked == 3)
        .await
        .stats;
    assert_eq!((s.ready, s.unacked, s.consumers), (0, 0, 1));
    assert_eq!(s.redelivered, 3);
    wait_closed(&doomed).await;
    assert!(first[0].ack().await.is_err());
}

async fn wait_closed(c: &Client) {
    common::wait_for("the client to close", || c.is_closed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_consumer_returns_its_deliveries() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("work").bind("work")).await;
    let mut first = c.consume("work").await.unwrap();
    publish_all(&c, "work", numbered("m", 2)).await;
    let held = take(&mut first, 2).await;
    within("cancel", first.cancel()).await.unwrap();
    assert_eq!(code(held[0].ack().await), ErrorCode::UnknownConsumer);
    let mut second = c.consume("work").await.unwrap();
    let again = take(&mut second, 2).await;
    assert_eq!(texts(&again), ["m0", "m1"]);
    assert!(again.iter().all(|d| d.delivery_count == 2));
    ack_all(&again).await;
    queue_until(&c, "work", "empty", |s| {
        s.acked == 2 && s.ready + s.unacked == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_with_requeue_redelivers_at_once() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("work").bind("work")).await;
    let mut consumer = c.consume("work").await.unwrap();
    publish_all(&c, "work", ["again"]).await;
    let first = next(&mut consumer).await;
    first.nack(true).await.unwrap();
    let second = next(&mut consumer).await;
    assert_eq!(text(&second), "again");
    assert_eq!((second.seq, second.delivery_count), (first.seq, 2));
    assert_ne!(second.delivery_id, first.delivery_id);
    assert_eq!(code(first.ack().await), ErrorCode::StaleDelivery);
    second.ack().await.unwrap();
    let s = queue_until(&c, "work", "the ack", |s| s.acked == 1)
        .await
        .stats;
    assert_eq!(
        (s.delivered, s.redelivered, s.ready, s.unacked),
        (2, 1, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_without_requeue_dead_letters_as_rejected() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("dlq")).await;
    declare(&c, QueueConfig::new("work").bind("work").dead_letter("dlq")).await;
    let mut consumer = c.consume("work").await.unwrap();
    publish_all(&c, "work", ["bad"]).await;
    next(&mut consumer).await.nack(false).await.unwrap();

    let s = queue_until(&c, "work", "the dead letter", |s| s.dead_lettered == 1)
        .await
        .stats;
    assert_eq!((s.ready, s.unacked, s.acked, s.dropped), (0, 0, 0, 0));
    let mut dlq = c.consume("dlq").await.unwrap();
    let d = next(&mut dlq).await;
    assert_eq!(text(&d), "bad");
    let h = &d.message.headers;
    assert_eq!(h.get("tern-dead-letter-reason"), Some("rejected"));
    assert_eq!(h.get("tern-dead-letter-queue"), Some("work"));
    assert_eq!(h.get("tern-delivery-count"), Some("1"));
    let last = h.get("tern-last-consumer").expect("tern-last-consumer");
    assert!(last.starts_with("connection "), "{last}");
    d.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_after_a_delay_redelivers_no_sooner() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("work").bind("work")).await;
    let mut consumer = c.consume("work").await.unwrap();
    publish_all(&c, "work", ["later"]).await;
    let first = next(&mut consumer).await;
    let nacked = Instant::now();
    first.nack_after(Duration::from_millis(300)).await.unwrap();
    // Waiting, not in flight, and it does not block the queue.
    let s = c.queue_info("work").await.unwrap().stats;
    assert_eq!((s.ready, s.unacked, s.delivered), (1, 0, 1));
    publish_all(&c, "work", ["meanwhile"]).await;
    let meanwhile = next(&mut consumer).await;
    assert_eq!(text(&meanwhile), "meanwhile");
    assert_eq!(meanwhile.delivery_count, 1);
    meanwhile.ack().await.unwrap();

    let again = next(&mut consumer).await;
    let waited = nacked.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "redelivered after {waited:?}, before the 300 ms delay"
    );
    assert_eq!(text(&again), "later");
    assert_eq!((again.seq, again.delivery_count), (first.seq, 2));
    again.ack().await.unwrap();
    queue_until(&c, "work", "empty", |s| {
        s.acked == 2 && s.ready + s.unacked == 0
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Dead-lettering and limits.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_max_deliver_is_dead_lettered_with_its_history() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("dlq")).await;
    declare(
        &c,
        QueueConfig::new("work")
            .bind("work.>")
            .max_deliver(2)
            .dead_letter("dlq"),
    )
    .await;
    let mut consumer = c.consume("work").await.unwrap();
    c.publish("work.poison", "boom")
        .header("k", "v")
        .header("tern-delivery-count", "stale")
        .reply_to("answers")
        .qos(Qos::AtLeastOnce)
        .await
        .unwrap();
    let one = next(&mut consumer).await;
    assert_eq!(one.delivery_count, 1);
    one.nack(true).await.unwrap();
    let two = next(&mut consumer).await;
    assert_eq!(two.delivery_count, 2);
    two.nack(true).await.unwrap();

    let s = queue_until(&c, "work", "the dead letter", |s| s.dead_lettered == 1)
        .await
        .stats;
    assert_eq!(
        (s.ready, s.unacked, s.delivered, s.redelivered),
        (0, 0, 2, 1)
    );
    no_more_for(&c, "work", &c).await;
    assert_nothing_buffered(&mut consumer);

    let mut dlq = c.consume("dlq").await.unwrap();
    let d = next(&mut dlq).await;
    let m = &d.message;
    assert_eq!(&*m.subject, "work.poison");
    assert_eq!(m.reply_to.as_deref(), Some("answers"));
    assert_eq!(&m.payload[..], b"boom");
    let h = &m.headers;
    assert_eq!(h.get("k"), Some("v"), "the original headers stay");
    assert_eq!(h.get("tern-dead-letter-reason"), Some("max_deliveries"));
    assert_eq!(h.get("tern-dead-letter-queue"), Some("work"));
    assert_eq!(
        h.get_all("tern-delivery-count").collect::<Vec<_>>(),
        ["2"],
        "replaces an earlier value"
    );
    assert!(h.get("tern-last-consumer").is_some());
    assert_eq!(
        d.delivery_count, 1,
        "a new message in the dead-letter queue"
    );
    d.ack().await.unwrap();
    let dlq_stats = queue_until(&c, "dlq", "the ack", |s| s.acked == 1)
        .await
        .stats;
    assert_eq!(dlq_stats.published, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_its_ttl_is_dead_lettered_as_expired() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("dlq")).await;
    declare(
        &c,
        QueueConfig::new("fresh")
            .bind("fresh")
            .ttl(Duration::from_millis(100))
            .dead_letter("dlq"),
    )
    .await;
    let published = Instant::now();
    publish_all(&c, "fresh", ["old0", "old1"]).await;
    let s = queue_until(&c, "fresh", "both to expire", |s| s.expired == 2)
        .await
        .stats;
    assert!(
        published.elapsed() >= Duration::from_millis(100),
        "expired after {:?}",
        published.elapsed()
    );
    assert_eq!((s.ready, s.unacked, s.delivered), (0, 0, 0));
    assert_eq!((s.dead_lettered, s.dropped), (2, 0));

    let mut dlq = c.consume("dlq").await.unwrap();
    let got = take(&mut dlq, 2).await;
    assert_eq!(texts(&got), ["old0", "old1"]);
    for d in &got {
        let h = &d.message.headers;
        assert_eq!(h.get("tern-dead-letter-reason"), Some("expired"));
        assert_eq!(h.get("tern-dead-letter-queue"), Some("fresh"));
        assert_eq!(h.get("tern-delivery-count"), Some("0"));
        assert_eq!(h.get("tern-last-consumer"), None, "never delivered");
    }
    ack_all(&got).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_drop_head_dead_letters_the_oldest() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("dlq")).await;
    declare(
        &c,
        QueueConfig::new("short")
            .bind("short")
            .max_length(3, Overflow::DropHead)
            .dead_letter("dlq"),
    )
    .await;
    let confirms = publish_all(&c, "short", numbered("m", 5)).await;
    assert!(confirms.iter().all(|c| c.queues == 1), "all are accepted");
    let s = queue_until(&c, "short", "two dead letters", |s| s.dead_lettered == 2)
        .await
        .stats;
    assert_eq!((s.ready, s.published, s.dropped), (3, 5, 0));

    let mut short = c.consume("short").await.unwrap();
    let kept = take(&mut short, 3).await;
    assert_eq!(texts(&kept), ["m2", "m3", "m4"], "the newest three");
    ack_all(&kept).await;
    let mut dlq = c.consume("dlq").await.unwrap();
    let dropped = take(&mut dlq, 2).await;
    assert_eq!(texts(&dropped), ["m0", "m1"]);
    for d in &dropped {
        assert_eq!(
            d.message.headers.get("tern-dead-letter-reason"),
            Some("overflow")
        );
        assert_eq!(
            d.message.headers.get("tern-dead-letter-queue"),
            Some("short")
        );
    }
    ack_all(&dropped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_reject_refuses_a_confirmed_publish_with_queue_full() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(
        &c,
        QueueConfig::new("capped")
            .bind("capped")
            .max_length(3, Overflow::Reject),
    )
    .await;
    declare(&c, QueueConfig::new("other").bind("capped")).await;
    publish_all(&c, "capped", numbered("m", 3)).await;
    let r = c
        .publish("capped", "one too many")
        .qos(Qos::AtLeastOnce)
        .await;
    assert_eq!(code(r), ErrorCode::QueueFull);
    let s = queue_until(&c, "other", "four", |s| s.ready == 4)
        .await
        .stats;
    assert_eq!(s.published, 4, "the other queue still takes it");
    let s = c.queue_info("capped").await.unwrap().stats;
    assert_eq!((s.ready, s.published), (3, 3));

    // A settled message makes room.
    let mut consumer = c.consume("capped").prefetch(1).await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(text(&d), "m0");
    let r = c
        .publish("capped", "still full")
        .qos(Qos::AtLeastOnce)
        .await;
    assert_eq!(code(r), ErrorCode::QueueFull, "in flight still counts");
    d.ack().await.unwrap();
    c.publish("capped", "room again")
        .qos(Qos::AtLeastOnce)
        .await
        .expect("an acked message no longer counts against max_length");
    let rest = take(&mut consumer, 1).await;
    assert_eq!(texts(&rest), ["m1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_without_a_dead_letter_queue_are_dropped_and_counted() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    // No dead-letter queue at all, and one named that does not exist.
    declare(&c, QueueConfig::new("bare").bind("bare")).await;
    declare(
        &c,
        QueueConfig::new("orphan")
            .bind("orphan")
            .dead_letter("missing")
            .ttl(Duration::from_millis(100)),
    )
    .await;
    let mut consumer = c.consume("bare").await.unwrap();
    publish_all(&c, "bare", ["rejected"]).await;
    next(&mut consumer).await.nack(false).await.unwrap();
    let s = queue_until(&c, "bare", "the drop", |s| s.dropped == 1)
        .await
        .stats;
    assert_eq!((s.dead_lettered, s.ready, s.unacked), (0, 0, 0));

    publish_all(&c, "orphan", ["expiring"]).await;
    let s = queue_until(&c, "orphan", "the drop", |s| s.dropped == 1)
        .await
        .stats;
    assert_eq!((s.expired, s.dead_lettered, s.ready), (1, 0, 0));
    assert_eq!(
        code(c.queue_info("missing").await),
        ErrorCode::QueueNotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_ack_consumer_gets_everything_without_acking() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("fire").bind("fire")).await;
    let sent = numbered("m", 1000);
    publish_all(&c, "fire", sent.clone()).await;
    queue_until(&c, "fire", "every message", |s| s.ready == 1000).await;
    let mut consumer = c.consume("fire").prefetch(16).auto_ack().await.unwrap();
    // Settled as sent, but paced by credit: the broker sends the prefetch and no more
    // until the application takes them; the rest wait in the queue.
    queue_until(&c, "fire", "the prefetch sent", |s| s.delivered == 16).await;
    no_more_for(&c, "fire", &c).await;
    let s = within("queue_info", c.queue_info("fire"))
        .await
        .unwrap()
        .stats;
    assert_eq!((s.delivered, s.acked, s.unacked, s.ready), (16, 16, 0, 984));

    let mut got = Vec::new();
    for _ in 0..1000 {
        got.push(
            within("a delivery", consumer.next())
                .await
                .expect("a delivery"),
        );
    }
    assert_eq!(texts(&got), sent, "every message, in order");
    assert!(got.iter().all(|d| d.delivery_count == 1));
    let s = queue_until(&c, "fire", "empty", |s| s.ready + s.unacked == 0)
        .await
        .stats;
    assert_eq!((s.delivered, s.redelivered), (1000, 0));
    got[0]
        .ack()
        .await
        .expect("acking an auto delivery is a no-op");
    assert!(
        matches!(got[0].nack(true).await, Err(Error::Usage(_))),
        "nothing to nack"
    );
    // Nothing comes back, even when the consumer goes away.
    drop(consumer);
    let mut other = c.consume("fire").await.unwrap();
    no_more_for(&c, "fire", &c).await;
    assert_nothing_buffered(&mut other);
}

// ---------------------------------------------------------------------------------------
// Restarts and envelopes.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_queue_definitions_and_unsettled_messages() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    let dlq = declare(&c, QueueConfig::new("dlq")).await;
    let work = declare(
        &c,
        QueueConfig::new("work")
            .bind("work.>")
            .bind("jobs.*")
            .max_deliver(4)
            .ack_timeout(Duration::from_secs(9))
            .dead_letter("dlq")
            .ttl(Duration::from_secs(3600))
            .max_length(1000, Overflow::Reject),
    )
    .await;
    publish_all(&c, "work.a", numbered("m", 10)).await;
    let mut consumer = c.consume("work").prefetch(4).await.unwrap();
    let got = take(&mut consumer, 4).await;
    assert_eq!(texts(&got), ["m0", "m1", "m2", "m3"]);
    ack_all(&got[..2]).await;
    queue_until(&c, "work", "two acks", |s| s.acked == 2).await;
    drop((got, consumer, c));

    let b = common::restart(b, |_| {}).await;
    let c = connect(&b).await;
    let infos = c.queues().await.unwrap();
    assert_eq!(infos.len(), 2);
    for (before, after) in [(&dlq, &infos[0]), (&work, &infos[1])] {
        assert_eq!(after.name, before.name);
        assert_eq!(after.bindings, before.bindings);
        assert_eq!(after.options, before.options);
    }
    let s = infos[1].stats;
    assert_eq!(
        (s.ready, s.unacked),
        (8, 0),
        "every unsettled message is back"
    );
    // Declaring it again with the same options is still fine.
    declare(
        &c,
        QueueConfig::new("work")
            .bind("jobs.*")
            .bind("work.>")
            .max_deliver(4)
            .ack_timeout(Duration::from_secs(9))
            .dead_letter("dlq")
            .ttl(Duration::from_secs(3600))
            .max_length(1000, Overflow::Reject),
    )
    .await;

    let mut consumer = c.consume("work").await.unwrap();
    let rest = take(&mut consumer, 8).await;
    assert_eq!(
        texts(&rest),
        ["m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9"],
        "in their order"
    );
    assert!(
        rest[..2].iter().all(|d| d.delivery_count >= 2),
        "delivered before"
    );
    ack_all(&rest).await;
    queue_until(&c, "work", "empty", |s| {
        s.ready + s.unacked == 0 && s.acked == 8
    })
    .await;
    // The binding works after the restart.
    assert_eq!(publish_all(&c, "jobs.x", ["new"]).await[0].queues, 1);
    assert_eq!(text(&next(&mut consumer).await), "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_carries_the_envelope_as_published() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("env").bind("env.>")).await;
    let mut headers = Headers::new();
    headers.append("k", "v1");
    headers.append("a", "");
    headers.append("k", "v2");
    headers.append("unicode", "ünï ✓");
    let payload: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    c.publish("env.x.y", payload.clone())
        .headers(headers.clone())
        .reply_to("replies.here")
        .qos(Qos::AtLeastOnce)
        .await
        .unwrap();
    // QoS 0 into a queue, with no headers and an empty payload.
    c.publish("env.plain", bytes::Bytes::new()).await.unwrap();
    c.flush().await.unwrap();

    let mut consumer = c.consume("env").await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(&*d.message.subject, "env.x.y");
    assert_eq!(d.message.reply_to.as_deref(), Some("replies.here"));
    assert_eq!(d.message.headers, headers, "same headers, same order");
    assert_eq!(&d.message.payload[..], &payload[..]);
    let plain = next(&mut consumer).await;
    assert_eq!(&*plain.message.subject, "env.plain");
    assert_eq!(plain.message.reply_to, None);
    assert!(plain.message.headers.is_empty());
    assert!(plain.message.payload.is_empty());
    assert!(plain.seq > d.seq);
    ack_all(&[d, plain]).await;
}
