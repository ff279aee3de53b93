//! Exactly once, end to end: QoS 2 publishers that retry after a lost connection or a
//! broker restart, and exactly-once consumers that die in the middle of their
//! handshake — each message stored once and handed to the application once.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{queue_until, wait_for, within, Proc, Proxy, TestBroker};
use tern::{Client, Confirmation, Consumer, Delivery, Qos, QueueConfig};

fn fast_reconnect() -> tern::ClientBuilder {
    Client::builder().reconnect_delay(Duration::from_millis(10), Duration::from_millis(50))
}

async fn connect(b: &TestBroker) -> Client {
    within("connect", Client::connect(b.url())).await.unwrap()
}

async fn declare(c: &Client, config: QueueConfig) {
    within("declare", c.declare_queue(&config)).await.unwrap();
}

fn text(d: &Delivery) -> String {
    String::from_utf8(d.message.payload.to_vec()).expect("UTF-8 payload")
}

async fn next(consumer: &mut Consumer) -> Delivery {
    within("a delivery", consumer.next())
        .await
        .expect("the consumer ended")
}

/// Consumes (and acks) everything from `queue` with `consumer` until the queue is
/// empty; returns the payloads handed to the application, in order.
async fn drain_queue(admin: &Client, queue: &str, mut consumer: Consumer) -> Vec<String> {
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let task = tokio::spawn({
        let got = Arc::clone(&got);
        async move {
            while let Some(d) = consumer.next().await {
                got.lock().unwrap().push(text(&d));
                d.ack().await.expect("ack");
            }
        }
    });
    queue_until(admin, queue, "the queue to be empty", |s| {
        s.ready + s.unacked == 0
    })
    .await;
    task.abort();
    let _ = task.await;
    let got = got.lock().unwrap().clone();
    got
}

/// Every payload in `a` and `b` with how often it occurs.
fn counts<'a>(lists: impl IntoIterator<Item = &'a Vec<String>>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lists {
        for t in l {
            *m.entry(t.clone()).or_insert(0) += 1;
        }
    }
    m
}

// ---------------------------------------------------------------------------------------
// Publishers.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_publishes_resent_after_a_cut_connection_are_stored_once() {
    let b = common::start_broker().await;
    let admin = connect(&b).await;
    declare(&admin, QueueConfig::new("orders").bind("orders.>")).await;
    let proxy = Proxy::start(b.addr).await;
    let c = within("connect", fast_reconnect().connect(proxy.url()))
        .await
        .unwrap();

    // The broker gets the publishes, but its confirms do not come through.
    proxy.hold_downstream(true);
    let mut pending = Vec::new();
    for seq in 1..=60u64 {
        pending.push(
            c.publish("orders.new", format!("o{seq}"))
                .idempotent("p1", seq)
                .send()
                .await
                .unwrap(),
        );
    }
    queue_until(&admin, "orders", "the first 60 to be stored", |s| {
        s.ready == 60
    })
    .await;
    let reconnects = proxy.accepted();
    proxy.cut();
    proxy.hold_downstream(false);
    // More while the client finds out and reconnects.
    for seq in 61..=100u64 {
        pending.push(
            c.publish("orders.new", format!("o{seq}"))
                .idempotent("p1", seq)
                .send()
                .await
                .unwrap(),
        );
    }
    let mut confirms = Vec::new();
    for p in pending {
        confirms.push(
            within("a confirm across the reconnect", p)
                .await
                .expect("every publish is confirmed"),
        );
    }
    assert!(proxy.accepted() > reconnects, "the client reconnected");
    for (i, confirm) in confirms[..60].iter().enumerate() {
        assert_eq!(
            *confirm,
            Confirmation {
                queues: 0,
                duplicate: true
            },
            "sequence {}: stored before the cut, so its retry is a duplicate",
            i + 1
        );
    }

    let s = queue_until(&admin, "orders", "100 messages", |s| s.ready >= 100)
        .await
        .stats;
    assert_eq!((s.ready, s.published), (100, 100), "no duplicates");
    let consumer = admin.consume("orders").await.unwrap();
    let got = drain_queue(&admin, "orders", consumer).await;
    let want: Vec<String> = (1..=100).map(|i| format!("o{i}")).collect();
    assert_eq!(got, want, "each once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_retries_after_a_broker_restart_are_duplicates() {
    let b = common::start_broker().await;
    let c = connect(&b).await;
    declare(&c, QueueConfig::new("ledger").bind("ledger")).await;
    let publish_50 = |c: Client| async move {
        let mut pending = Vec::new();
        for seq in 1..=50u64 {
            pending.push(
                c.publish("ledger", format!("e{seq}"))
                    .idempotent("p2", seq)
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
    };
    let first = publish_50(c.clone()).await;
    assert!(
        first.iter().all(|c| *c
            == Confirmation {
                queues: 1,
                duplicate: false
            }),
        "{first:?}"
    );
    drop(c);

    let b = common::restart(b, |_| {}).await;
    let c = connect(&b).await;
    let again = publish_50(c.clone()).await;
    assert!(
        again.iter().all(|c| *c
            == Confirmation {
                queues: 0,
                duplicate: true
            }),
        "the dedup window survived the restart: {again:?}"
    );
    let s = c.queue_info("ledger").await.unwrap().stats;
    assert_eq!((s.ready, s.published), (50, 0), "nothing stored again");

    // A new sequence, or another producer, is not a duplicate.
    let next = c
        .publish("ledger", "e51")
        .idempotent("p2", 51)
        .send()
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!next.duplicate);
    let other = c
        .publish("ledger", "other")
        .idempotent("p3", 1)
        .send()
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!other.duplicate);
    queue_until(&c, "ledger", "52 messages", |s| s.ready == 52).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_publish_made_while_disconnected_is_stored_once() {
    let b = common::start_broker().await;
    let admin = connect(&b).await;
    declare(&admin, QueueConfig::new("q").bind("q")).await;
    let proxy = Proxy::start(b.addr).await;
    let c = within("connect", fast_reconnect().connect(proxy.url()))
        .await
        .unwrap();
    c.flush().await.unwrap();

    // The server goes away, and the client knows it: it is trying to reconnect.
    proxy.refuse(true);
    let attempts = proxy.accepted();
    proxy.cut();
    wait_for("a reconnect attempt", || proxy.accepted() > attempts).await;

    // Published while disconnected: sent once the client is back.
    let pending = c
        .publish("q", "while down")
        .qos(Qos::AtLeastOnce)
        .send()
        .await
        .unwrap();
    proxy.refuse(false);
    let confirm = within("the confirm after the reconnect", pending)
        .await
        .expect("confirmed");
    assert_eq!(confirm.queues, 1);
    // A marker behind it, on the same connection: everything stored before it is
    // what the disconnected publish stored.
    c.publish("q", "marker")
        .qos(Qos::AtLeastOnce)
        .await
        .unwrap();
    let s = queue_until(&admin, "q", "the marker", |s| s.published >= 2)
        .await
        .stats;
    let consumer = admin.consume("q").await.unwrap();
    let got = drain_queue(&admin, "q", consumer).await;
    assert_eq!(
        got,
        ["while down", "marker"],
        "one publish, stored {} time(s) (queue stats {s:?})",
        got.iter().filter(|t| *t == "while down").count()
    );
}

// ---------------------------------------------------------------------------------------
// Consumers.
// ---------------------------------------------------------------------------------------

/// Declares queue `billing` (bound to `billing`) and publishes `n` confirmed
/// messages `b0`, `b1`, ... into it; returns them.
async fn billing_queue(admin: &Client, n: usize) -> Vec<String> {
    declare(admin, QueueConfig::new("billing").bind("billing")).await;
    let sent: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
    for p in &sent {
        admin
            .publish("billing", p.clone())
            .qos(Qos::AtLeastOnce)
            .await
            .unwrap();
    }
    sent
}

/// An exactly-once consumer takes `handed` messages (the client has RECEIVED them
/// and handed them out), acks `acked` of them, and dies; with `restart`, the broker
/// restarts too. A new consumer of the same name and state file then consumes the
/// rest. Returns what each handed to the application.
async fn consumer_dies_mid_handshake(restart: bool) -> (Vec<String>, Vec<String>) {
    let b = common::start_broker().await;
    let admin = connect(&b).await;
    let sent = billing_queue(&admin, 20).await;
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("billing.state");

    // Through a proxy, so that the connection can die without a word (no CANCEL).
    let proxy = Proxy::start(b.addr).await;
    let doomed = Client::builder()
        .reconnect(false)
        .connect(proxy.url())
        .await
        .unwrap();
    let mut consumer = doomed
        .consume("billing")
        .prefetch(10)
        .exactly_once("billing")
        .state_file(&state)
        .await
        .unwrap();
    let mut first = Vec::new();
    let mut deliveries = Vec::new();
    for _ in 0..6 {
        let d = next(&mut consumer).await;
        assert_eq!(d.delivery_count, 1);
        first.push(text(&d));
        deliveries.push(d);
    }
    for d in &deliveries[..2] {
        within("ack", d.ack()).await.unwrap();
    }
    let s = queue_until(&admin, "billing", "two acks", |s| s.acked == 2)
        .await
        .stats;
    // Credit: 4 held and 6 more in flight to the client (prefetch 10).
    assert_eq!((s.unacked, s.ready), (10, 8), "{s:?}");

    proxy.cut();
    wait_for("the client to see its connection die", || {
        doomed.is_closed()
    })
    .await;
    drop((deliveries, consumer, doomed));
    queue_until(&admin, "billing", "the consumer to be gone", |s| {
        s.consumers == 0
    })
    .await;

    let (b, admin) = if restart {
        drop(admin);
        let b = common::restart(b, |_| {}).await;
        let admin = connect(&b).await;
        (b, admin)
    } else {
        (b, admin)
    };
    let s = admin.queue_info("billing").await.unwrap().stats;
    assert_eq!(s.ready + s.unacked, 18, "{s:?}");
    assert_eq!(
        s.unacked, 4,
        "the four held messages wait for their consumer"
    );

    // A plain consumer gets everything but the held messages.
    let other = connect(&b).await;
    let mut plain = other.consume("billing").prefetch(100).await.unwrap();
    let mut plain_got = Vec::new();
    for _ in 0..14 {
        let d = next(&mut plain).await;
        plain_got.push(text(&d));
    }
    assert!(
        plain_got.iter().all(|t| !first.contains(t)),
        "a held message went to another consumer: {plain_got:?}"
    );
    drop((plain, other));
    queue_until(&admin, "billing", "the plain consumer to be gone", |s| {
        s.consumers == 0 && s.unacked == 4
    })
    .await;

    let c = connect(&b).await;
    let consumer = c
        .consume("billing")
        .prefetch(10)
        .exactly_once("billing")
        .state_file(&state)
        .await
        .unwrap();
    let second = drain_queue(&admin, "billing", consumer).await;
    let s = admin.queue_info("billing").await.unwrap().stats;
    assert_eq!(s.unacked + s.ready, 0);

    let all = counts([&first, &second]);
    let dups: Vec<_> = all.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "handed to the application twice: {dups:?}\nfirst: {first:?}\nsecond: {second:?}"
    );
    assert_eq!(
        all.keys().cloned().collect::<Vec<_>>(),
        {
            let mut s = sent.clone();
            s.sort();
            s
        },
        "every message handed out"
    );
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_consumer_that_dies_mid_handshake_sees_each_message_once() {
    let (first, second) = consumer_dies_mid_handshake(false).await;
    assert_eq!(first, ["b0", "b1", "b2", "b3", "b4", "b5"]);
    assert_eq!(second.len(), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_consumer_sees_each_message_once_across_a_broker_restart() {
    let (first, second) = consumer_dies_mid_handshake(true).await;
    assert_eq!(first, ["b0", "b1", "b2", "b3", "b4", "b5"]);
    assert_eq!(second.len(), 14);
}

// ---------------------------------------------------------------------------------------
// `tern consume --exactly-once`, killed.
// ---------------------------------------------------------------------------------------

/// `tern consume QUEUE --json --exactly-once NAME --state FILE` against `b`, its
/// stdout lines arriving on the returned channel.
fn tern_consume(
    b: &TestBroker,
    state: &Path,
) -> (Proc, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use std::io::BufRead;
    let mut cmd = common::tern_cmd(Some(&b.url()), &["consume", "billing", "--json"]);
    cmd.args(["--prefetch", "4", "--exactly-once", "billing", "--state"])
        .arg(state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut proc = Proc::spawn(&mut cmd);
    let stdout = proc.child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (proc, rx)
}

fn payload_of(line: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    v["payload"].as_str().unwrap().to_string()
}

/// Kills `proc` and returns every line it printed.
async fn kill_and_collect(
    mut proc: Proc,
    mut lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    mut seen: Vec<String>,
) -> Vec<String> {
    proc.child.kill().unwrap();
    proc.wait().await;
    while let Some(l) = within("the rest of stdout", lines.recv()).await {
        seen.push(payload_of(&l));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_consume_exactly_once_killed_with_sigkill_prints_each_message_once() {
    common::bin("tern");
    let b = common::start_broker().await;
    let admin = connect(&b).await;
    let sent = billing_queue(&admin, 30).await;
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("billing.state");

    let (proc, mut lines) = tern_consume(&b, &state);
    let mut first = Vec::new();
    while first.len() < 10 {
        let l = within("a line from tern consume", lines.recv())
            .await
            .expect("tern consume exited early");
        first.push(payload_of(&l));
    }
    let first = kill_and_collect(proc, lines, first).await;
    queue_until(&admin, "billing", "the killed consumer to be gone", |s| {
        s.consumers == 0
    })
    .await;

    let (proc, lines) = tern_consume(&b, &state);
    queue_until(&admin, "billing", "the queue to be empty", |s| {
        s.ready + s.unacked == 0
    })
    .await;
    let second = kill_and_collect(proc, lines, Vec::new()).await;

    let all = counts([&first, &second]);
    let dups: Vec<_> = all.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "printed twice: {dups:?}\nfirst: {first:?}\nsecond: {second:?}"
    );
    // The client records a message as handed out before `tern consume` prints it, so
    // a SIGKILL in between loses that one message: a restarted consumer acks it
    // without handing it out again. Exactly once to stdout cannot close that window;
    // anything beyond it is a loss.
    let missing: Vec<&String> = sent.iter().filter(|t| !all.contains_key(*t)).collect();
    assert!(
        missing.len() <= 1,
        "not printed: {missing:?}\nfirst: {first:?}\nsecond: {second:?}"
    );
    assert_eq!(all.len() + missing.len(), sent.len(), "{all:?}");
}

// ---------------------------------------------------------------------------------------
// The broker killed right after an exactly-once ACK.
// ---------------------------------------------------------------------------------------

/// ACKs are answered before they are durable, so a broker killed right after one
/// may forget it; each round gives that race a chance.
const ROUNDS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_ack_is_not_undone_by_a_broker_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("store");
    let state = data.path().join("billing.state");
    let total = ROUNDS * 5 + 3;
    {
        let mut ternd = common::Ternd::start(&data_dir, &[]).await;
        let c = Client::connect(ternd.url()).await.unwrap();
        declare(&c, QueueConfig::new("billing").bind("billing")).await;
        for i in 0..total {
            c.publish("billing", format!("b{i}"))
                .qos(Qos::AtLeastOnce)
                .await
                .unwrap();
        }
        drop(c);
        ternd.stop().await;
    }
    let mut handed = Vec::new();
    for _ in 0..ROUNDS {
        let mut ternd = common::Ternd::start(&data_dir, &[]).await;
        let c = Client::builder()
            .reconnect(false)
            .connect(ternd.url())
            .await
            .unwrap();
        let mut consumer = c
            .consume("billing")
            .prefetch(10)
            .exactly_once("billing")
            .state_file(&state)
            .await
            .unwrap();
        for _ in 0..5 {
            let d = next(&mut consumer).await;
            handed.push(text(&d));
            // Processed: the ACK is answered, and the client forgets the message.
            within("ack", d.ack()).await.expect("ack");
        }
        // The broker dies right after answering the last ACK.
        ternd.kill9().await;
        drop((consumer, c));
    }

    let ternd = common::Ternd::start(&data_dir, &[]).await;
    let admin = Client::connect(ternd.url()).await.unwrap();
    let consumer = admin
        .consume("billing")
        .prefetch(10)
        .exactly_once("billing")
        .state_file(&state)
        .await
        .unwrap();
    let last = drain_queue(&admin, "billing", consumer).await;
    let all = counts([&handed, &last]);
    let dups: Vec<_> = all.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "acked before a crash, handed to the application again after it: {dups:?}\n\
         before: {handed:?}\nafter: {last:?}"
    );
    assert_eq!(all.len(), total, "every message handed out: {all:?}");
}
