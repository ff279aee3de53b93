//! `ternd` killed with SIGKILL: every confirmed message survives, and a store damaged
//! while the broker was down is refused with a clear error instead of a panic.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{queue_until, wait_for, within, Ternd};
use tern::{Client, Overflow, PendingConfirm, Qos, QueueConfig, QueueInfo};

/// Publishing connections in the crash test.
const PUBLISHERS: usize = 3;

fn crash_queue() -> QueueConfig {
    QueueConfig::new("crash")
        .bind("crash.>")
        .max_deliver(7)
        .ack_timeout(Duration::from_secs(60))
        .dead_letter("crash.dlq")
        .max_length(1_000_000, Overflow::Reject)
}

/// What the publishers saw: every id whose confirm arrived, and how many.
#[derive(Default)]
struct Confirmed {
    ids: Mutex<Vec<String>>,
    count: AtomicUsize,
}

/// A publisher's connection: no reconnect, many confirms in flight.
async fn publisher(addr: String) -> Client {
    Client::builder()
        .reconnect(false)
        .max_inflight(1000)
        .connect(addr)
        .await
        .unwrap()
}

/// Publishes `p{conn}-{n}` at QoS 1 as fast as the broker takes them, with many
/// confirms in flight, until the connection dies; records every confirmed id.
async fn publish_until_killed(c: Client, conn: usize, confirmed: Arc<Confirmed>) -> usize {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, PendingConfirm)>();
    let collector = tokio::spawn(async move {
        while let Some((id, pending)) = rx.recv().await {
            // An error: the broker died before confirming this one (and every later
            // one).
            if let Ok(confirm) = pending.await {
                assert_eq!(confirm.queues, 1, "{id}: {confirm:?}");
                confirmed.ids.lock().unwrap().push(id);
                confirmed.count.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let mut sent = 0;
    loop {
        let id = format!("p{conn}-{sent}");
        match c
            .publish("crash.data", id.clone())
            .qos(Qos::AtLeastOnce)
            .send()
            .await
        {
            Ok(pending) => {
                tx.send((id, pending)).unwrap();
                sent += 1;
            }
            Err(_) => break,
        }
    }
    drop(tx);
    within("the confirms to settle", collector).await.unwrap();
    sent
}

/// Runs the crash scenario: SIGKILL once `kill_after` confirms have arrived.
async fn confirmed_messages_survive_sigkill(kill_after: usize) {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("store");
    let mut ternd = Ternd::start(&data_dir, &[]).await;
    let admin = within("connect", Client::connect(ternd.url()))
        .await
        .unwrap();
    within(
        "declare",
        admin.declare_queue(&QueueConfig::new("crash.dlq")),
    )
    .await
    .unwrap();
    let declared = within("declare", admin.declare_queue(&crash_queue()))
        .await
        .unwrap();

    let confirmed = Arc::new(Confirmed::default());
    // Every publisher is connected before any publishes: on a busy machine the first
    // ones could reach the kill before the last one connected.
    let mut clients = Vec::new();
    for _ in 0..PUBLISHERS {
        clients.push(within("connect", publisher(ternd.url())).await);
    }
    let publishers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(conn, c)| tokio::spawn(publish_until_killed(c, conn, Arc::clone(&confirmed))))
        .collect();
    wait_for("enough confirms", || {
        confirmed.count.load(Ordering::SeqCst) >= kill_after
    })
    .await;
    ternd.kill9().await;
    let mut sent = 0;
    for p in publishers {
        sent += within("a publisher to stop", p).await.unwrap();
    }
    drop(admin);
    let confirmed: Vec<String> = confirmed.ids.lock().unwrap().clone();
    assert!(confirmed.len() >= kill_after);

    // Up again on the same data: the definition is intact and nothing confirmed is lost.
    let ternd = Ternd::start(&data_dir, &[]).await;
    let c = within("connect", Client::connect(ternd.url()))
        .await
        .unwrap();
    let info = c.queue_info("crash").await.unwrap();
    assert_same_definition(&info, &declared);
    let stored = usize::try_from(info.stats.ready).unwrap();
    assert_eq!(info.stats.unacked, 0);
    assert!(
        stored >= confirmed.len(),
        "{stored} messages in the queue, but {} were confirmed",
        confirmed.len()
    );
    assert!(stored <= sent, "{stored} stored of {sent} sent");

    let received = consume_all(&c, stored).await;
    let unique: HashSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "a message was stored twice");
    let lost: Vec<&String> = confirmed.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} confirmed messages were lost in the crash (killed after {kill_after} confirms, {} stored), e.g. {:?}",
        lost.len(),
        confirmed.len(),
        stored,
        &lost[..lost.len().min(10)]
    );
    for id in &received {
        let ok = id
            .strip_prefix('p')
            .and_then(|r| r.split_once('-'))
            .is_some_and(|(c, n)| {
                c.parse::<usize>().is_ok_and(|c| c < PUBLISHERS) && n.parse::<u64>().is_ok()
            });
        assert!(ok, "a message nobody sent: {id:?}");
    }
    let s = queue_until(&c, "crash", "the queue to be empty", |s| {
        s.ready + s.unacked == 0
    })
    .await
    .stats;
    assert_eq!(s.acked, stored as u64);
    let dlq = c.queue_info("crash.dlq").await.unwrap();
    assert_eq!(dlq.stats.ready, 0);
}

fn assert_same_definition(after: &QueueInfo, before: &QueueInfo) {
    assert_eq!(after.name, before.name);
    assert_eq!(after.bindings, before.bindings);
    assert_eq!(after.options, before.options);
}

/// Consumes `n` messages (acking each), then checks that no more come.
async fn consume_all(c: &Client, n: usize) -> Vec<String> {
    let mut consumer = c.consume("crash").prefetch(1000).await.unwrap();
    let mut received = Vec::with_capacity(n);
    let mut acks = tokio::task::JoinSet::new();
    while received.len() < n {
        let d = within("a recovered message", consumer.next())
            .await
            .expect("the consumer ended");
        assert_eq!(d.delivery_count, 1, "never delivered before the crash");
        received.push(String::from_utf8(d.message.payload.to_vec()).unwrap());
        acks.spawn(async move { d.ack().await });
    }
    while let Some(r) = within("the acks", acks.join_next()).await {
        r.unwrap().expect("ack");
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirmed_messages_survive_sigkill_after_200_confirms() {
    confirmed_messages_survive_sigkill(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirmed_messages_survive_sigkill_after_1000_confirms() {
    confirmed_messages_survive_sigkill(1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirmed_messages_survive_sigkill_after_5000_confirms() {
    confirmed_messages_survive_sigkill(5000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_messages_and_definitions_survive_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("store");
    let mut ternd = Ternd::start(&data_dir, &[]).await;
    let c = Client::builder()
        .reconnect(false)
        .connect(ternd.url())
        .await
        .unwrap();
    c.declare_queue(&QueueConfig::new("crash.dlq"))
        .await
        .unwrap();
    let declared = c.declare_queue(&crash_queue()).await.unwrap();
    for i in 0..10 {
        c.publish("crash.x", format!("m{i}"))
            .qos(Qos::AtLeastOnce)
            .await
            .unwrap();
    }
    let mut consumer = c.consume("crash").prefetch(4).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(within("a delivery", consumer.next()).await.unwrap());
    }
    // Two acked (settled for good), two delivered and unsettled.
    held[0].ack().await.unwrap();
    held[1].ack().await.unwrap();
    // One back to the queue; one still in flight.
    held[2].nack(true).await.unwrap();
    ternd.kill9().await;

    let ternd = Ternd::start(&data_dir, &[]).await;
    let c = Client::connect(ternd.url()).await.unwrap();
    let infos = c.queues().await.unwrap();
    assert_eq!(infos.len(), 2);
    assert_same_definition(&infos[0], &declared);
    let s = infos[0].stats;
    // An ACK is answered before it is durable (as in most brokers), so the two acked
    // messages may come back after a SIGKILL: at least once. The eight others must.
    assert!((8..=10).contains(&s.ready) && s.unacked == 0, "{s:?}");
    let n = usize::try_from(s.ready).unwrap();
    let mut consumer = c.consume("crash").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..n {
        let d = within("a delivery", consumer.next()).await.unwrap();
        got.push(String::from_utf8(d.message.payload.to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    got.retain(|t| t != "m0" && t != "m1");
    got.sort();
    assert_eq!(got, ["m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9"]);
}

// ---------------------------------------------------------------------------------------
// A damaged store.
// ---------------------------------------------------------------------------------------

/// How `ternd` reacted to a data directory.
enum Started {
    /// It exited: its status and stderr.
    Exited(std::process::ExitStatus, Vec<String>),
    /// It is serving (the process is killed when dropped).
    Serving(Ternd),
}

/// Starts `ternd` on `data_dir` and waits until it either listens or exits.
async fn start_on_store(data_dir: &Path) -> Started {
    match Ternd::try_spawn(common::ternd_on(data_dir, &[])).await {
        Ok(t) => Started::Serving(t),
        Err((status, lines)) => Started::Exited(status, lines),
    }
}

/// A data directory of a broker that ran, stored a queue and messages, and stopped.
async fn used_store(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let data_dir = dir.path().join("store");
    let mut ternd = Ternd::start(&data_dir, &[]).await;
    let c = Client::connect(ternd.url()).await.unwrap();
    c.declare_queue(&QueueConfig::new("q").bind("q"))
        .await
        .unwrap();
    for i in 0..100 {
        c.publish("q", format!("message {i}"))
            .qos(Qos::AtLeastOnce)
            .await
            .unwrap();
    }
    drop(c);
    ternd.stop().await;
    data_dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_corrupted_while_down_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = used_store(&dir).await;
    let db = data_dir.join("db");
    let len = std::fs::metadata(&db)
        .expect("sled keeps its log in `db`")
        .len();
    let garbage: Vec<u8> = (0..len.max(4096))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&db, &garbage).unwrap();

    match start_on_store(&data_dir).await {
        Started::Exited(status, lines) => {
            let err = lines.join("\n");
            assert!(status.code().is_some_and(|c| c != 0), "{status:?}: {err}");
            assert!(!err.contains("panicked"), "ternd panicked:\n{err}");
            assert!(!err.contains("backtrace"), "a backtrace:\n{err}");
            // Log lines may come first; the error is one line of its own.
            let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("ternd: ")).collect();
            assert_eq!(errors.len(), 1, "one error line on stderr:\n{err}");
            assert!(
                errors[0].contains(data_dir.to_str().unwrap()) && errors[0].contains("corrupt"),
                "the error names the data directory and says what is wrong: {err}"
            );
        }
        Started::Serving(ternd) => {
            let c = Client::connect(ternd.url()).await.unwrap();
            let queues: Vec<String> = c
                .queues()
                .await
                .unwrap()
                .iter()
                .map(|q| format!("{} ({} ready)", q.name, q.stats.ready))
                .collect();
            panic!(
                "ternd started on a store whose log was overwritten with garbage, \
                 serving it as {queues:?}: queue 'q' and its 100 confirmed messages are \
                 silently gone"
            );
        }
    }
    // sled truncates a log it cannot read as it opens it, so the bytes are not kept;
    // what matters is that the store is never turned into a new, empty one.
    assert!(
        matches!(start_on_store(&data_dir).await, Started::Exited(..)),
        "a second start served the damaged store"
    );
}
