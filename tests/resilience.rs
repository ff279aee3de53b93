//! Restarts, reconnects, graceful shutdown, and the `ternd` daemon as a real process.

mod common;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bytes::BytesMut;
use common::{drain, settle, ternd_cmd, texts, wait_for, within, RawConn, Ternd};
use tern::{Client, Error, ErrorCode};
use tern_broker::Config;
use tern_codec::Frame;
use tokio::io::AsyncReadExt;

fn fast_reconnect(name: &str) -> tern::ClientBuilder {
    Client::builder()
        .name(name)
        .reconnect_delay(Duration::from_millis(10), Duration::from_millis(100))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_and_resubscribes_after_a_restart() {
    let first = common::start_broker().await;
    let addr = first.addr;
    let sub_client = within("connect", fast_reconnect("sub").connect(first.url()))
        .await
        .unwrap();
    let mut sub = sub_client.subscribe("r.>").await.unwrap();
    let mut group_sub = sub_client.queue_subscribe("r.x", "g").await.unwrap();
    assert_eq!(first.server.subscription_count(), 2);

    // Restart on the same address and the same data directory.
    let dir = first.shutdown().await;
    let second = common::start_on(common::config_in(&dir, addr), dir).await;
    wait_for("both subscriptions to be re-established", || {
        second.server.subscription_count() == 2
    })
    .await;
    assert!(!sub_client.is_closed());

    let publisher = Client::connect(second.url()).await.unwrap();
    publisher.publish("r.x", "after restart").await.unwrap();
    publisher.publish("r.y", "only for r.>").await.unwrap();
    settle(&publisher, &[&sub_client]).await;
    assert_eq!(texts(&drain(&mut sub)), ["after restart", "only for r.>"]);
    assert_eq!(texts(&drain(&mut group_sub)), ["after restart"]);
}

/// Stands in for a broker at `addr` just long enough to see the client called `name`
/// try to reconnect: proof that it knows its connection is gone, so that what it sends
/// from now on is buffered for the next connection (not written into a dead socket).
async fn wait_until_reconnecting(addr: SocketAddr, name: &str) {
    let stand_in = tokio::net::TcpListener::bind(addr).await.unwrap();
    loop {
        let (mut sock, _) = within("a reconnect attempt", stand_in.accept())
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let hello = within("the attempt's HELLO", async {
            loop {
                if let Some(f) = Frame::decode(&mut buf, 1 << 20).unwrap() {
                    return Some(f);
                }
                if sock.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        })
        .await;
        match hello {
            Some(Frame::Hello(h)) if &*h.name == name => return,
            // Another client's attempt, or one that gave up: wait for the next.
            Some(Frame::Hello(_)) | None => {}
            Some(other) => panic!("expected HELLO, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_while_the_broker_is_down_are_delivered_after_reconnect() {
    let first = common::start_broker().await;
    let addr = first.addr;
    let c = within(
        "connect",
        fast_reconnect("reconnecting").connect(first.url()),
    )
    .await
    .unwrap();
    let mut sub = c.subscribe("buf.>").await.unwrap();
    c.publish("buf.x", "before").await.unwrap();
    c.flush().await.unwrap();
    assert_eq!(texts(&drain(&mut sub)), ["before"]);

    first.shutdown().await;
    wait_until_reconnecting(addr, "reconnecting").await;

    c.publish("buf.x", "while down 1").await.unwrap();
    c.publish("buf.y", "while down 2")
        .header("k", "v")
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let second = common::start_on(common::config_in(&dir, addr), dir).await;
    // The flush was buffered behind the publishes; it is answered after the reconnect,
    // and the re-subscription went out before both.
    within("flush across the reconnect", c.flush())
        .await
        .unwrap();
    let got = drain(&mut sub);
    assert_eq!(texts(&got), ["while down 1", "while down 2"]);
    assert_eq!(got[1].headers.get("k"), Some("v"));
    assert_eq!(second.server.subscription_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_delivers_everything_then_closes() {
    // A shutdown timeout that cannot run out during the test: connections must close
    // by themselves once everything is delivered.
    let b = common::start_broker_with(|c| c.shutdown_timeout = Duration::from_secs(3600)).await;
    let addr = b.addr;
    let sub_client = Client::builder()
        .reconnect(false)
        .connect(b.url())
        .await
        .unwrap();
    let mut sub = sub_client.subscribe("g.>").await.unwrap();
    let publisher = Client::builder()
        .reconnect(false)
        .connect(b.url())
        .await
        .unwrap();
    let mut greeted = RawConn::greeted(addr).await;
    let mut silent = RawConn::connect(addr).await;

    for i in 0..1000 {
        publisher.publish("g.x", i.to_string()).await.unwrap();
    }
    within("publisher flush", publisher.flush()).await.unwrap();

    b.shutdown().await; // serve() returned Ok, well before PATIENCE

    let mut got = Vec::new();
    while let Some(m) = within("the subscription to end", sub.next()).await {
        got.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    let want: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "every message before the stream ended");

    greeted.expect_error(ErrorCode::ShuttingDown, 0).await;
    greeted.expect_eof().await;
    // A connection still in its handshake is closed too (with or without a word).
    match silent.recv().await {
        None => {}
        Some(Frame::Error(e)) => {
            assert_eq!(e.code(), Some(ErrorCode::ShuttingDown), "{e:?}");
            silent.expect_eof().await;
        }
        Some(other) => panic!("unexpected {other:?}"),
    }

    wait_for("the clients to notice", || {
        publisher.is_closed() && sub_client.is_closed()
    })
    .await;
    assert!(matches!(
        publisher.publish("g.x", "late").await,
        Err(Error::Closed)
    ));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    match Client::connect(addr.to_string()).await {
        Err(Error::Connect { addr: a, .. }) => assert_eq!(a, addr.to_string()),
        other => panic!("expected a connect error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// ternd as a process.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ternd_serves_and_exits_cleanly_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("store");
    // A shutdown timeout that cannot run out during the test.
    let mut d = Ternd::start(&data_dir, &["--shutdown-timeout", "1h"]).await;
    assert_ne!(d.addr.port(), 0, "the real port is logged");

    let sub_client = Client::builder()
        .reconnect(false)
        .connect(d.addr.to_string())
        .await
        .unwrap();
    let mut sub = sub_client.subscribe("d.*").await.unwrap();
    let publisher = Client::connect(d.addr.to_string()).await.unwrap();
    for p in ["one", "two", "three"] {
        publisher.publish("d.x", p).await.unwrap();
    }
    settle(&publisher, &[&sub_client]).await;
    assert_eq!(texts(&drain(&mut sub)), ["one", "two", "three"]);

    // Connected clients do not hold the shutdown up.
    d.sigterm();
    let status = within("ternd to exit", d.proc.wait()).await;
    assert_eq!(
        status.code(),
        Some(0),
        "ternd exits 0 on SIGTERM: {status:?}"
    );
    assert!(within("the subscription to end", sub.next())
        .await
        .is_none());
    let rest = d.rest_of_stderr().await;
    assert!(
        rest.iter().any(|l| l.contains("shut down")),
        "stderr after SIGTERM: {rest:#?}"
    );
    assert!(data_dir.join("conf").exists(), "the store was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ternd_settings_layer_flags_over_environment_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ternd.toml");
    std::fs::write(
        &config,
        "metrics_listen = \"off\"\n[limits]\nmax_frame_size = 16384\nmax_subscriptions = 1\n",
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    let mut cmd = ternd_cmd(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--max-subscriptions",
        "2",
    ]);
    cmd.env("TERN_MAX_FRAME_SIZE", "65536")
        .env("TERN_MAX_SUBSCRIPTIONS", "5");
    let d = Ternd::spawn(cmd).await;
    let c = Client::connect(d.addr.to_string()).await.unwrap();
    assert_eq!(c.max_frame_size(), 65536, "environment over file");
    let _a = c.subscribe("a").await.unwrap();
    let _b = c.subscribe("b").await.unwrap();
    match c.subscribe("c").await {
        Err(e) => assert_eq!(
            e.code(),
            Some(ErrorCode::TooManySubscriptions),
            "flag over environment: {e}"
        ),
        Ok(_) => panic!("a third subscription was accepted; --max-subscriptions 2 ignored"),
    }
    drop(d);
}

/// Runs `ternd` expecting it to fail at start; returns its stdout and stderr.
async fn ternd_fails(cmd: &mut Command) -> (String, String) {
    let (status, out, err) = common::run_cmd(cmd, None).await;
    assert!(!status.success(), "ternd should have failed; stderr: {err}");
    assert!(status.code().is_some(), "exited, not killed: {status:?}");
    (out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ternd_refuses_a_data_dir_that_is_not_a_tern_store() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, b"\x00\x01 not a tern store").unwrap();
    let (out, err) = ternd_fails(&mut ternd_cmd(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--metrics-listen",
        "off",
    ]))
    .await;
    assert!(out.is_empty(), "stdout: {out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {err}");
    assert!(
        lines[0].contains(dir.path().to_str().unwrap()),
        "names the path: {err}"
    );
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        b"\x00\x01 not a tern store",
        "the directory was left alone"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

fn bad_config(dir: &tempfile::TempDir, text: &str) -> Command {
    let config = dir.path().join("ternd.toml");
    std::fs::write(&config, text).unwrap();
    ternd_cmd(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--metrics-listen",
        "off",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ternd_names_an_unknown_config_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[limits]\nmax_frame_sise = 5\n", "max_frame_sise"),
        ("lissen = \"127.0.0.1:0\"\n", "lissen"),
    ] {
        let (_, err) = ternd_fails(&mut bad_config(&dir, text)).await;
        assert!(err.contains(key), "the error names `{key}`: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!dir.path().join("data").exists(), "nothing started");
}

/// DESIGN.md: "Errors: one clear line naming what was wrong and what to do".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ternd_config_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_, err) = ternd_fails(&mut bad_config(&dir, "[limits]\nmax_frame_sise = 5\n")).await;
    assert_eq!(err.trim_end().lines().count(), 1, "stderr:\n{err}");
    let (_, err) = ternd_fails(&mut bad_config(&dir, "[limits]\nmax_frame_size = 10\n")).await;
    assert_eq!(err.trim_end().lines().count(), 1, "stderr:\n{err}");
    assert!(err.contains("limits.max_frame_size"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ternd_rejects_an_unknown_flag() {
    let (out, err) = ternd_fails(&mut ternd_cmd(&["--no-such-flag"])).await;
    assert!(err.contains("--no-such-flag"), "{err}");
    assert!(out.is_empty(), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gives_up_after_max_reconnects_and_ends_its_subscriptions() {
    let b = common::start_broker().await;
    let c = Client::builder()
        .reconnect_delay(Duration::from_millis(1), Duration::from_millis(5))
        .max_reconnects(3)
        .connect(b.url())
        .await
        .unwrap();
    let mut sub = c.subscribe("x").await.unwrap();
    b.shutdown().await;
    wait_for("the client to give up", || c.is_closed()).await;
    assert!(within("the subscription to end", sub.next())
        .await
        .is_none());
    assert!(matches!(c.publish("x", "y").await, Err(Error::Closed)));
}

/// Bytes [`stalled_subscriber`] sends: four times what a stalled loopback socket takes
/// in (about 4 MiB here: the send buffer grows to `tcp_wmem`'s maximum, the receive
/// buffer of a reader that never reads does not grow).
const STALL_BYTES: usize = 16 << 20;

/// Broker settings for [`stalled_subscriber`]: nothing is dropped, so every byte goes
/// to the stalled connection.
fn hold_everything(c: &mut Config) {
    c.limits.max_pending_bytes = 2 * STALL_BYTES;
}

/// A subscriber to `load` that stopped reading while [`STALL_BYTES`] were sent to it:
/// more than its socket can take, so the broker's writer for it is blocked.
async fn stalled_subscriber(b: &common::TestBroker) -> RawConn {
    let mut raw = RawConn::greeted(b.addr).await;
    raw.send(&tern_codec::Subscribe {
        id: 1,
        sid: 1,
        pattern: "load".into(),
        group: None,
        filter: None,
    })
    .await;
    raw.expect_ok(1).await;
    let publisher = Client::connect(b.url()).await.unwrap();
    let payload = bytes::Bytes::from(vec![b'.'; 1024]);
    for _ in 0..STALL_BYTES / 1024 {
        publisher.publish("load", payload.clone()).await.unwrap();
    }
    within("close", publisher.close()).await.unwrap();
    assert_eq!(b.server.stats().slow_consumer_drops, 0);
    raw
}

/// A consumer that stops reading holds at most its connection's byte budget (plus one
/// message) in the broker, whatever its prefetch: the rest of the queue waits in the
/// queue instead of piling up in memory for a reader that is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_holds_at_most_its_byte_budget() {
    const BUDGET: usize = 1 << 20;
    const SIZE: usize = 256 << 10;
    // 64 MiB: more than the budget and any socket buffers together.
    const N: usize = 256;
    let b = common::start_broker_with(|c| c.limits.max_pending_bytes = BUDGET).await;
    let admin = Client::connect(b.url()).await.unwrap();
    within(
        "declare",
        admin.declare_queue(&tern::QueueConfig::new("big").bind("big")),
    )
    .await
    .unwrap();
    let mut raw = RawConn::greeted(b.addr).await;
    raw.send(&tern_codec::Consume {
        id: 1,
        cid: 1,
        queue: "big".into(),
        prefetch: 10_000,
        mode: tern_codec::AckMode::Manual,
        name: None,
    })
    .await;
    raw.expect_ok(1).await;

    let payload = bytes::Bytes::from(vec![b'.'; SIZE]);
    for _ in 0..N {
        within(
            "a confirm",
            admin
                .publish("big", payload.clone())
                .qos(tern::Qos::AtLeastOnce)
                .into_future(),
        )
        .await
        .unwrap();
    }
    // Confirms follow the queue task's taking the messages in, and it answers this
    // query after dispatching them: what the consumer was given is given by now.
    let stats = within("queue info", admin.queue_info("big"))
        .await
        .unwrap()
        .stats;
    let pending = b.server.connections().iter().map(|c| c.pending_bytes).max();
    let pending = pending.unwrap();
    assert!(
        pending <= BUDGET + SIZE + 1024,
        "{pending} bytes held for the consumer"
    );
    assert!(stats.ready > 0, "the rest waits in the queue: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_cannot_hold_up_shutdown() {
    let b = common::start_broker_with(|c| {
        hold_everything(c);
        c.shutdown_timeout = Duration::from_millis(300);
        // Cannot run out during the test: the shutdown timeout must end the wait.
        c.limits.write_timeout = Duration::from_secs(3600);
    })
    .await;
    let _raw = stalled_subscriber(&b).await;
    b.shutdown().await; // within PATIENCE, so the 300 ms shutdown timeout ended it
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_cut_off_after_the_write_timeout() {
    let b = common::start_broker_with(|c| {
        hold_everything(c);
        c.limits.write_timeout = Duration::from_millis(200);
    })
    .await;
    let raw = stalled_subscriber(&b).await;
    wait_for("the stalled connection to be closed", || {
        b.server.connections().iter().all(|c| c.name != "raw")
    })
    .await;
    drop(raw);
    // Others are unaffected.
    let c = Client::connect(b.url()).await.unwrap();
    c.flush().await.unwrap();
}

/// Polls `fut` exactly once (running it up to its first wait), which must not finish it.
async fn poll_once<F: std::future::Future + Unpin>(fut: &mut F)
where
    F::Output: std::fmt::Debug,
{
    tokio::select! {
        biased;
        out = fut => panic!("finished on its first poll: {out:?}"),
        () = std::future::ready(()) => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_while_disconnected_works_after_reconnect() {
    let first = common::start_broker().await;
    let addr = first.addr;
    let c = within("connect", fast_reconnect("late-sub").connect(first.url()))
        .await
        .unwrap();
    let mut early = c.subscribe("late.>").await.unwrap();
    first.shutdown().await;
    wait_until_reconnecting(addr, "late-sub").await;

    // Subscribing while down: polled once, so the SUBSCRIBE is in the write buffer
    // now, and the call waits for the next connection's answer.
    let mut pending = c.subscribe("late.x").into_future();
    poll_once(&mut pending).await;
    let dir = tempfile::tempdir().unwrap();
    let second = common::start_on(common::config_in(&dir, addr), dir).await;
    let mut late = within("the subscribe across the reconnect", pending)
        .await
        .expect("subscribed after the reconnect");
    wait_for("both subscriptions on the new broker", || {
        second.server.subscription_count() == 2
    })
    .await;

    let publisher = Client::connect(second.url()).await.unwrap();
    publisher.publish("late.x", "hello").await.unwrap();
    settle(&publisher, &[&c]).await;
    assert_eq!(texts(&drain(&mut early)), ["hello"]);
    assert_eq!(
        texts(&drain(&mut late)),
        ["hello"],
        "the subscription made while disconnected receives nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_while_disconnected_succeeds() {
    let first = common::start_broker().await;
    let addr = first.addr;
    let c = within("connect", fast_reconnect("unsub").connect(first.url()))
        .await
        .unwrap();
    let mut keep = c.subscribe("gone.>").await.unwrap();
    let gone = c.subscribe("gone.x").await.unwrap();
    first.shutdown().await;
    wait_until_reconnecting(addr, "unsub").await;

    // Polled once: the UNSUBSCRIBE is buffered while the client is down.
    let mut pending = Box::pin(gone.unsubscribe());
    poll_once(&mut pending).await;
    let dir = tempfile::tempdir().unwrap();
    let second = common::start_on(common::config_in(&dir, addr), dir).await;
    let result = within("the unsubscribe across the reconnect", pending).await;
    assert!(
        result.is_ok(),
        "unsubscribe while disconnected reported {result:?}, though the subscription is gone"
    );
    assert_eq!(second.server.subscription_count(), 1);
    let publisher = Client::connect(second.url()).await.unwrap();
    publisher.publish("gone.x", "m").await.unwrap();
    settle(&publisher, &[&c]).await;
    assert_eq!(texts(&drain(&mut keep)), ["m"]);
}
