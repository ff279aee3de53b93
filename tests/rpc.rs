//! Request-reply end to end: a real broker, real clients (and the `tern` binary), and
//! assertions on exactly what each side sees. Requests over plain subscriptions
//! (`Client::serve`), scatter-gather (`request_many`), and RPC through durable queues
//! (`Client::serve_queue`), where a worker that dies mid-request is simulated by a
//! runtime of its own that is torn down, as a crashed process would be.
//!
//! Nothing waits on a sleep: handlers report through channels, and broker-side state is
//! polled until it holds.

mod common;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::IntoFuture;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{wait_for, wait_until, TestBroker};
use futures_util::future::join_all;
use tern::{Client, Error, Message, Qos, QueueConfig, Reply, Service, ServiceRequest};
use tokio::sync::mpsc;

/// Awaits `fut` (a future or a builder such as a request), failing the test if it takes
/// longer than [`PATIENCE`].
async fn within<F: IntoFuture>(what: &str, fut: F) -> F::Output {
    common::within(what, fut.into_future()).await
}

async fn connect(b: &TestBroker) -> Client {
    within("connect", Client::connect(b.url())).await.unwrap()
}

/// An echo responder on `pattern`: answers each request with its payload.
async fn echo(client: &Client, pattern: &str) -> Service {
    client
        .serve(pattern)
        .run(|req: ServiceRequest| async move { Ok::<_, Infallible>(req.message.payload) })
        .await
        .unwrap()
}

/// A responder on `pattern` that never answers: each request it gets is reported on
/// the returned channel, then its handler waits forever.
async fn black_hole(client: &Client, pattern: &str) -> (Service, mpsc::UnboundedReceiver<Message>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let service = client
        .serve(pattern)
        .run(move |req: ServiceRequest| {
            let _ = tx.send(req.message);
            async {
                std::future::pending::<()>().await;
                Ok::<Bytes, Infallible>(Bytes::new())
            }
        })
        .await
        .unwrap();
    (service, rx)
}

/// `ready + unacked` of a queue.
async fn queue_depth(client: &Client, queue: &str) -> u64 {
    let info = within("queue_info", client.queue_info(queue))
        .await
        .unwrap();
    info.stats.ready + info.stats.unacked
}

// ---------------------------------------------------------------------------------------
// Request-reply over subscriptions.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn round_trip_echoes_payloads_of_every_size() {
    let b = common::start_broker().await;
    let server = connect(&b).await;
    let caller = connect(&b).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Message>();
    let _service = server
        .serve("svc.echo")
        .run(move |req: ServiceRequest| {
            let _ = seen_tx.send(req.message.clone());
            async move { Ok::<_, Infallible>(req.message.payload) }
        })
        .await
        .unwrap();

    let big: Bytes = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    for payload in [Bytes::from_static(b"hello"), Bytes::new(), big] {
        let reply = within("the reply", caller.request("svc.echo", payload.clone()))
            .await
            .unwrap();
        assert_eq!(reply.payload.len(), payload.len());
        assert_eq!(reply.payload, payload, "the reply echoes the request");

        let request = seen.try_recv().expect("the handler saw the request");
        assert_eq!(request.subject, "svc.echo");
        assert_eq!(
            request.payload, payload,
            "the handler saw the request payload"
        );
        let reply_to = request.reply_to.expect("a request carries a reply-to");
        assert!(
            reply_to.starts_with("_INBOX."),
            "reply-to {reply_to} is in the caller's inbox"
        );
        assert!(seen.try_recv().is_err(), "one request, handled once");
    }
}

#[tokio::test]
async fn headers_travel_both_ways() {
    let b = common::start_broker().await;
    let server = connect(&b).await;
    let caller = connect(&b).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Message>();
    let _service = server
        .serve("svc.headers")
        .run(move |req: ServiceRequest| {
            let _ = seen_tx.send(req.message.clone());
            let trace = req
                .message
                .headers
                .get("trace-id")
                .unwrap_or("")
                .to_string();
            async move {
                Ok::<_, Infallible>(
                    Reply::from("ok")
                        .header("served-by", "r1")
                        .header("echo-trace", &trace)
                        .header("multi", "1")
                        .header("multi", "2"),
                )
            }
        })
        .await
        .unwrap();

    let reply = within(
        "the reply",
        caller
            .request("svc.headers", "x")
            .header("trace-id", "abc-123")
            .header("k", "v1")
            .header("k", "v2"),
    )
    .await
    .unwrap();

    let request = seen.try_recv().expect("the handler saw the request");
    assert_eq!(request.headers.get("trace-id"), Some("abc-123"));
    assert_eq!(
        request.headers.get_all("k").collect::<Vec<_>>(),
        ["v1", "v2"],
        "repeated request headers arrive in order"
    );
    assert!(
        request.headers.get(tern::DEADLINE_HEADER).is_some(),
        "a request carries its deadline"
    );

    assert_eq!(reply.payload, "ok");
    assert_eq!(reply.headers.get("served-by"), Some("r1"));
    assert_eq!(reply.headers.get("echo-trace"), Some("abc-123"));
    assert_eq!(
        reply.headers.get_all("multi").collect::<Vec<_>>(),
        ["1", "2"]
    );
    assert_eq!(reply.headers.get(tern::ERROR_HEADER), None);
}

#[tokio::test]
async fn no_responders_fails_at_once_not_after_the_timeout() {
    let b = common::start_broker().await;
    let caller = connect(&b).await;
    // Someone is subscribed elsewhere: "no responders" is about this subject only.
    let other = connect(&b).await;
    let _service = echo(&other, "svc.elsewhere").await;

    // A timeout far beyond PATIENCE: the answer must come without waiting for it.
    let result = within(
        "the request",
        caller
            .request("svc.nobody", "anyone?")
            .timeout(Duration::from_secs(3600)),
    )
    .await;
    match result {
        Err(Error::NoResponders { subject }) => assert_eq!(subject, "svc.nobody"),
        other => panic!("expected NoResponders, got {other:?}"),
    }

    // The failed request left the client usable.
    let reply = within("the reply", caller.request("svc.elsewhere", "hi"))
        .await
        .unwrap();
    assert_eq!(reply.payload, "hi");
}

#[tokio::test]
async fn a_responder_that_never_answers_times_the_request_out() {
    let b = common::start_broker().await;
    let server = connect(&b).await;
    let caller = connect(&b).await;
    let (_service, mut seen) = black_hole(&server, "svc.silent").await;

    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let result = within(
        "the request",
        caller.request("svc.silent", "hello?").timeout(timeout),
    )
    .await;
    let took = started.elapsed();
    assert!(
        matches!(result, Err(Error::Timeout)),
        "expected Timeout, got {result:?}"
    );
    assert!(
        took >= timeout,
        "gave up after {took:?}, before the timeout"
    );
    assert!(
        took < Duration::from_secs(3),
        "gave up after {took:?}, long after the 200 ms timeout"
    );
    let request = seen.try_recv().expect("the responder got the request");
    assert_eq!(request.payload, "hello?");

    // The abandoned request does not disturb the next one.
    let _echo = echo(&server, "svc.echo").await;
    let reply = within("the reply", caller.request("svc.echo", "next"))
        .await
        .unwrap();
    assert_eq!(reply.payload, "next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_responders_shares_the_load() {
    let b = common::start_broker().await;
    let handled: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let mut responders = Vec::new();
    for i in 0..3usize {
        let client = connect(&b).await;
        let handled = Arc::clone(&handled);
        let service = client
            .serve("svc.spread")
            .group("workers")
            .run(move |req: ServiceRequest| {
                let payload = String::from_utf8(req.message.payload.to_vec()).unwrap();
                handled.lock().unwrap().push((i, payload.clone()));
                async move { Ok::<_, Infallible>(format!("{i}:{payload}")) }
            })
            .await
            .unwrap();
        responders.push((client, service));
    }
    let caller = connect(&b).await;

    let replies = within(
        "300 replies",
        join_all((0..300).map(|n| {
            let caller = &caller;
            async move { (n, caller.request("svc.spread", format!("{n}")).await) }
        })),
    )
    .await;

    let mut by_responder = [0u64; 3];
    for (n, reply) in replies {
        let reply = reply.unwrap_or_else(|e| panic!("request {n} failed: {e}"));
        let text = String::from_utf8(reply.payload.to_vec()).unwrap();
        let (who, echoed) = text.split_once(':').expect("i:payload");
        assert_eq!(
            echoed,
            n.to_string(),
            "request {n} got someone else's reply"
        );
        by_responder[who.parse::<usize>().unwrap()] += 1;
    }
    let handled = handled.lock().unwrap().clone();
    let distinct: BTreeSet<&str> = handled.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(handled.len(), 300, "every request handled exactly once");
    assert_eq!(distinct.len(), 300, "no request handled twice");
    for (i, n) in by_responder.iter().enumerate() {
        assert!(*n > 0, "responder {i} handled nothing: {by_responder:?}");
        let handled_by_i = handled.iter().filter(|(who, _)| *who == i).count() as u64;
        assert_eq!(*n, handled_by_i, "replies match what responder {i} handled");
    }
    assert_eq!(by_responder.iter().sum::<u64>(), 300);
}

#[tokio::test]
async fn a_handler_error_comes_back_as_a_service_error() {
    let b = common::start_broker().await;
    let server = connect(&b).await;
    let caller = connect(&b).await;
    let _service = server
        .serve("svc.fail")
        .run(|_req: ServiceRequest| async { Err::<Bytes, _>("boom") })
        .await
        .unwrap();

    let result = within("the request", caller.request("svc.fail", "x")).await;
    match result {
        Err(Error::Service { message }) => {
            assert!(message.contains("boom"), "service error '{message}'")
        }
        other => panic!("expected a Service error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_handler_sees_the_time_left_before_the_deadline() {
    let b = common::start_broker().await;
    let server = connect(&b).await;
    let caller = connect(&b).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _service = server
        .serve("svc.deadline")
        .run(move |req: ServiceRequest| {
            let _ = tx.send((req.deadline, req.remaining()));
            async { Ok::<_, Infallible>("done") }
        })
        .await
        .unwrap();

    let timeout = Duration::from_secs(3);
    within(
        "the reply",
        caller.request("svc.deadline", "x").timeout(timeout),
    )
    .await
    .unwrap();
    let (deadline, remaining) = rx.try_recv().expect("the handler ran");
    assert!(deadline.is_some(), "the handler knows the deadline");
    let remaining = remaining.expect("a request has a deadline");
    assert!(remaining > Duration::ZERO, "no time left: {remaining:?}");
    assert!(
        remaining <= timeout,
        "{remaining:?} left, more than the {timeout:?} timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_requests_in_flight_on_one_connection() {
    const N: usize = 500;
    let b = common::start_broker().await;
    let server = connect(&b).await;
    // Every handler waits until all N requests are being handled at once: that proves
    // the caller really has N requests in flight together, on its one connection.
    let all_in = Arc::new(tokio::sync::Barrier::new(N));
    let _service = server
        .serve("svc.many")
        .concurrency(N)
        .run(move |req: ServiceRequest| {
            let all_in = Arc::clone(&all_in);
            async move {
                all_in.wait().await;
                Ok::<_, Infallible>(req.message.payload)
            }
        })
        .await
        .unwrap();
    let caller = connect(&b).await;

    let replies = within(
        "500 concurrent replies",
        join_all((0..N).map(|n| {
            let caller = &caller;
            async move { (n, caller.request("svc.many", format!("req-{n}")).await) }
        })),
    )
    .await;
    assert_eq!(replies.len(), N);
    for (n, reply) in replies {
        let reply = reply.unwrap_or_else(|e| panic!("request {n} failed: {e}"));
        assert_eq!(reply.payload, format!("req-{n}"), "request {n}'s reply");
    }
    assert_eq!(
        b.server.connections().len(),
        2,
        "one connection for the caller, one for the responder"
    );
}

// ---------------------------------------------------------------------------------------
// Scatter-gather.
// ---------------------------------------------------------------------------------------

/// Four status responders on `status.>`, each on its own connection, answering with
/// their name.
async fn gateways(b: &TestBroker) -> Vec<(Client, Service)> {
    let mut out = Vec::new();
    for i in 0..4 {
        let client = connect(b).await;
        let service =
            client
                .serve("status.>")
                .run(move |_req: ServiceRequest| async move {
                    Ok::<_, Infallible>(format!("gateway-{i}"))
                })
                .await
                .unwrap();
        out.push((client, service));
    }
    out
}

fn names(replies: &[Message]) -> BTreeSet<String> {
    replies
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect()
}

fn all_gateways() -> BTreeSet<String> {
    (0..4).map(|i| format!("gateway-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scatter_gather_stops_at_max_replies() {
    let b = common::start_broker().await;
    let _gateways = gateways(&b).await;
    let caller = connect(&b).await;

    // A timeout far beyond PATIENCE: it must stop at the 4th reply.
    let replies = within(
        "scatter-gather",
        caller
            .request_many("status.all", "status?")
            .max_replies(4)
            .timeout(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    assert_eq!(replies.len(), 4, "{:?}", names(&replies));
    assert_eq!(
        names(&replies),
        all_gateways(),
        "one reply from each gateway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scatter_gather_stops_after_a_quiet_gap() {
    let b = common::start_broker().await;
    let _gateways = gateways(&b).await;
    let caller = connect(&b).await;
    // Warm every connection (and the caller's inbox) so that the quiet gap measures
    // the responders, not a first connection's set-up.
    let warm = within(
        "warm-up",
        caller.request_many("status.warm", "").max_replies(4),
    )
    .await
    .unwrap();
    assert_eq!(warm.len(), 4);

    // The gateways answer at once, so a loaded machine does not stretch a gap between
    // their replies to a second; the timeout is far beyond PATIENCE, so only the quiet
    // gap can end the wait.
    let replies = within(
        "scatter-gather",
        caller
            .request_many("status.all", "status?")
            .quiet(Duration::from_secs(1))
            .timeout(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    assert_eq!(names(&replies), all_gateways(), "all four replied");
    assert_eq!(replies.len(), 4, "each gateway replied once");
}

#[tokio::test]
async fn scatter_gather_with_nobody_subscribed_fails_with_no_responders() {
    let b = common::start_broker().await;
    let caller = connect(&b).await;
    let result = within(
        "scatter-gather",
        caller
            .request_many("status.all", "status?")
            .timeout(Duration::from_secs(3600)),
    )
    .await;
    assert!(
        matches!(&result, Err(Error::NoResponders { subject }) if subject == "status.all"),
        "expected NoResponders, got {result:?}"
    );
}

// ---------------------------------------------------------------------------------------
// RPC over durable queues.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_rpc_survives_a_worker_killed_mid_request() {
    let b = common::start_broker().await;
    let admin = connect(&b).await;
    within(
        "declare",
        admin.declare_queue(&QueueConfig::new("rpc-orders").bind("rpc.orders")),
    )
    .await
    .unwrap();

    // Worker A takes the request and dies before answering (or acking) it.
    let (got_tx, mut got) = mpsc::unbounded_channel::<Message>();
    let url = b.url();
    let worker_a = common::Crashable::spawn(move || async move {
        let client = Client::connect(url).await.unwrap();
        let _service = client
            .serve_queue("rpc-orders")
            .prefetch(1)
            .run(move |req: ServiceRequest| {
                let _ = got_tx.send(req.message);
                async {
                    std::future::pending::<()>().await;
                    Ok::<Bytes, Infallible>(Bytes::from_static(b"from A"))
                }
            })
            .await
            .unwrap();
        std::future::pending::<()>().await;
    });
    wait_until("worker A to consume", || async {
        admin
            .queue_info("rpc-orders")
            .await
            .unwrap()
            .stats
            .consumers
            == 1
    })
    .await;

    let caller = connect(&b).await;
    let call = tokio::spawn(async move {
        let started = Instant::now();
        let reply = caller
            .request("rpc.orders", "order-1")
            .qos(Qos::AtLeastOnce)
            .timeout(Duration::from_secs(5))
            .await;
        (reply, started.elapsed())
    });

    let taken = within("worker A to take the request", got.recv())
        .await
        .unwrap();
    assert_eq!(taken.payload, "order-1");
    assert_eq!(
        queue_depth(&admin, "rpc-orders").await,
        1,
        "held unacked by A"
    );
    worker_a.kill().await;

    // Worker B answers whatever it is given, counting.
    let worker_b = connect(&b).await;
    let handled_by_b = Arc::new(AtomicU64::new(0));
    let _service_b = worker_b
        .serve_queue("rpc-orders")
        .prefetch(1)
        .run({
            let handled_by_b = Arc::clone(&handled_by_b);
            move |req: ServiceRequest| {
                handled_by_b.fetch_add(1, Ordering::SeqCst);
                let payload = req.message.payload;
                async move {
                    let mut answer = b"B:".to_vec();
                    answer.extend_from_slice(&payload);
                    Ok::<_, Infallible>(answer)
                }
            }
        })
        .await
        .unwrap();

    let (reply, took) = within("the caller", call).await.unwrap();
    let reply = reply.expect("the caller gets a reply despite A's death");
    assert_eq!(reply.payload, "B:order-1", "the reply comes from B");
    assert!(
        took < Duration::from_secs(5),
        "within the timeout: {took:?}"
    );

    // B acks after replying; the queue empties and nothing more is handled.
    wait_until("the queue to empty", || async {
        queue_depth(&admin, "rpc-orders").await == 0
    })
    .await;
    within("B's flush", worker_b.flush()).await.unwrap();
    assert_eq!(handled_by_b.load(Ordering::SeqCst), 1, "B handled it once");
    assert!(got.try_recv().is_err(), "A got nothing more");
    let stats = admin.queue_info("rpc-orders").await.unwrap().stats;
    assert_eq!(stats.acked, 1, "{stats:?}");
    assert_eq!(stats.redelivered, 1, "{stats:?}");
}

/// Declares queue `name` bound to `subject`, dead-lettering into `NAME-dlq`.
async fn declare_with_dlq(admin: &Client, name: &str, subject: &str) {
    let dlq = format!("{name}-dlq");
    within("declare", admin.declare_queue(&QueueConfig::new(&dlq)))
        .await
        .unwrap();
    let queue = QueueConfig::new(name).bind(subject).dead_letter(&dlq);
    within("declare", admin.declare_queue(&queue))
        .await
        .unwrap();
}

/// The first message waiting in dead-letter queue `dlq`, and its consumer (the
/// delivery can be settled only while the consumer lives).
async fn one_dead_letter(admin: &Client, dlq: &str) -> (tern::Consumer, tern::Delivery) {
    let mut consumer = within("consume", admin.consume(dlq).prefetch(1))
        .await
        .unwrap();
    let dead = within("the dead letter", consumer.next()).await.unwrap();
    (consumer, dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_worker_dies_after_the_deadline_is_not_redone() {
    let b = common::start_broker().await;
    let admin = connect(&b).await;
    declare_with_dlq(&admin, "rpc-gone", "rpc.gone").await;

    // Worker A takes the request and hangs until after the caller has given up.
    let (got_tx, mut got) = mpsc::unbounded_channel::<Message>();
    let url = b.url();
    let worker_a = common::Crashable::spawn(move || async move {
        let client = Client::connect(url).await.unwrap();
        let _service = client
            .serve_queue("rpc-gone")
            .prefetch(1)
            .run(move |req: ServiceRequest| {
                let _ = got_tx.send(req.message);
                async {
                    std::future::pending::<()>().await;
                    Ok::<Bytes, Infallible>(Bytes::new())
                }
            })
            .await
            .unwrap();
        std::future::pending::<()>().await;
    });
    wait_until("worker A to consume", || async {
        admin.queue_info("rpc-gone").await.unwrap().stats.consumers == 1
    })
    .await;
    let caller = connect(&b).await;
    let call = tokio::spawn(async move {
        caller
            .request("rpc.gone", "abandoned")
            .qos(Qos::AtLeastOnce)
            .timeout(Duration::from_millis(300))
            .await
    });
    within("worker A to take the request", got.recv())
        .await
        .unwrap();

    // Worker B is ready to take anything that comes back to the queue.
    let worker_b = connect(&b).await;
    let handled_by_b = Arc::new(AtomicU64::new(0));
    let _service_b = worker_b
        .serve_queue("rpc-gone")
        .prefetch(1)
        .run({
            let handled_by_b = Arc::clone(&handled_by_b);
            move |req: ServiceRequest| {
                handled_by_b.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, Infallible>(req.message.payload) }
            }
        })
        .await
        .unwrap();

    let result = within("the caller", call).await.unwrap();
    assert!(
        matches!(result, Err(Error::Timeout)),
        "expected Timeout, got {result:?}"
    );
    // Only now, with the caller gone, does A die: its request is past its deadline,
    // so it is dead-lettered as expired rather than handed to B.
    worker_a.kill().await;
    wait_until("the expired request in the DLQ", || async {
        queue_depth(&admin, "rpc-gone-dlq").await == 1
    })
    .await;
    assert_eq!(queue_depth(&admin, "rpc-gone").await, 0);
    let (_consumer, dead) = one_dead_letter(&admin, "rpc-gone-dlq").await;
    assert_eq!(
        dead.message.headers.get("tern-dead-letter-reason"),
        Some("expired")
    );
    assert_eq!(dead.message.headers.get("tern-delivery-count"), Some("1"));
    assert_eq!(dead.message.payload, "abandoned");
    within("B's flush", worker_b.flush()).await.unwrap();
    assert_eq!(
        handled_by_b.load(Ordering::SeqCst),
        0,
        "no work is done for a caller that has given up"
    );
}

#[tokio::test]
async fn a_request_left_waiting_past_its_deadline_is_dead_lettered_as_expired() {
    let b = common::start_broker().await;
    let admin = connect(&b).await;
    declare_with_dlq(&admin, "rpc-late", "rpc.late").await;

    let caller = connect(&b).await;
    let result = within(
        "the request",
        caller
            .request("rpc.late", "too late")
            .qos(Qos::AtLeastOnce)
            .timeout(Duration::from_millis(200)),
    )
    .await;
    assert!(
        matches!(result, Err(Error::Timeout)),
        "expected Timeout, got {result:?}"
    );

    wait_until("the DLQ to hold the expired request", || async {
        queue_depth(&admin, "rpc-late-dlq").await == 1
    })
    .await;
    let stats = admin.queue_info("rpc-late").await.unwrap().stats;
    assert_eq!(stats.ready + stats.unacked, 0, "{stats:?}");
    assert_eq!(stats.expired, 1, "{stats:?}");
    assert_eq!(stats.delivered, 0, "never delivered: {stats:?}");

    let (_consumer, dead) = one_dead_letter(&admin, "rpc-late-dlq").await;
    let headers = &dead.message.headers;
    assert_eq!(headers.get("tern-dead-letter-reason"), Some("expired"));
    assert_eq!(headers.get("tern-dead-letter-queue"), Some("rpc-late"));
    assert_eq!(headers.get("tern-delivery-count"), Some("0"));
    assert_eq!(dead.message.payload, "too late");
    assert_eq!(dead.message.subject, "rpc.late");
    within("ack", dead.ack()).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Across a broker restart.
// ---------------------------------------------------------------------------------------

async fn connect_reconnecting(b: &TestBroker, name: &str) -> Client {
    within(
        "connect",
        Client::builder()
            .name(name)
            .reconnect_delay(Duration::from_millis(10), Duration::from_millis(100))
            .connect(b.url()),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_work_again_after_the_broker_restarts() {
    let b = common::start_broker().await;
    let server = connect_reconnecting(&b, "responder").await;
    let caller = connect_reconnecting(&b, "caller").await;
    let _service = echo(&server, "svc.restart").await;
    let reply = within("the reply", caller.request("svc.restart", "before"))
        .await
        .unwrap();
    assert_eq!(reply.payload, "before");
    assert_eq!(
        b.server.subscription_count(),
        2,
        "the service and the inbox"
    );

    let b = common::restart(b, |_| {}).await;
    // Both the responder's subscription and the caller's inbox come back.
    wait_for("the service and the inbox to be re-subscribed", || {
        b.server.subscription_count() == 2
    })
    .await;
    let reply = within("the reply", caller.request("svc.restart", "after"))
        .await
        .unwrap();
    assert_eq!(reply.payload, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_request_survives_a_broker_restart() {
    let b = common::start_broker().await;
    let admin = connect(&b).await;
    within(
        "declare",
        admin.declare_queue(&QueueConfig::new("rpc-restart").bind("rpc.restart")),
    )
    .await
    .unwrap();
    let caller = connect_reconnecting(&b, "caller").await;
    let call = tokio::spawn(async move {
        caller
            .request("rpc.restart", "keep me")
            .qos(Qos::AtLeastOnce)
            .timeout(Duration::from_secs(10))
            .await
    });
    // Confirmed and stored: the request waits in the queue for a worker.
    wait_until("the request to be queued", || async {
        queue_depth(&admin, "rpc-restart").await == 1
    })
    .await;
    drop(admin);

    let b = common::restart(b, |_| {}).await;
    wait_for("the caller's inbox to be re-subscribed", || {
        b.server.subscription_count() == 1
    })
    .await;
    let worker = connect(&b).await;
    let _service = worker
        .serve_queue("rpc-restart")
        .prefetch(1)
        .run(|req: ServiceRequest| async move {
            let mut answer = b"done:".to_vec();
            answer.extend_from_slice(&req.message.payload);
            Ok::<_, Infallible>(answer)
        })
        .await
        .unwrap();
    let reply = within("the caller", call)
        .await
        .unwrap()
        .expect("the request waited in the queue through the restart");
    assert_eq!(reply.payload, "done:keep me");
    wait_until("the queue to empty", || async {
        queue_depth(&worker, "rpc-restart").await == 0
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The command line: `tern req` and `tern reply`.
// ---------------------------------------------------------------------------------------

/// `tern --server <broker> ARGS...` with a clean environment, output piped, and killed
/// if the test ends first.
fn tern(b: &TestBroker, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::from(common::tern_cmd(Some(&b.url()), args));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `tern ARGS...` to its end.
async fn run_tern(b: &TestBroker, args: &[&str]) -> Output {
    within("tern to exit", tern(b, args).output())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Starts `tern reply ...` and waits until the broker has its subscription.
async fn start_tern_reply(b: &TestBroker, args: &[&str]) -> tokio::process::Child {
    let before = b.server.subscription_count();
    let child = tern(b, args).spawn().unwrap();
    wait_for("`tern reply` to subscribe", || {
        b.server.subscription_count() > before
    })
    .await;
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_req_prints_the_reply() {
    common::bin("tern");
    let b = common::start_broker().await;
    let server = connect(&b).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Message>();
    let _service = server
        .serve("cli.echo")
        .run(move |req: ServiceRequest| {
            let _ = seen_tx.send(req.message.clone());
            async move { Ok::<_, Infallible>(req.message.payload) }
        })
        .await
        .unwrap();

    let out = run_tern(&b, &["req", "cli.echo", "hello there", "-H", "k=v"]).await;
    assert!(
        out.status.success(),
        "tern req failed: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "hello there\n");
    assert_eq!(text(&out.stderr), "");
    let request = seen.try_recv().expect("the responder got the request");
    assert_eq!(request.payload, "hello there");
    assert_eq!(request.headers.get("k"), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_req_json_prints_the_reply_as_one_object() {
    common::bin("tern");
    let b = common::start_broker().await;
    let server = connect(&b).await;
    let _service = server
        .serve("cli.json")
        .run(|req: ServiceRequest| async move {
            Ok::<_, Infallible>(Reply::from(req.message.payload).header("served-by", "r1"))
        })
        .await
        .unwrap();

    let out = run_tern(&b, &["req", "cli.json", "{\"n\": 1}", "--json"]).await;
    assert!(
        out.status.success(),
        "tern req failed: {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?}");
    let reply: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(reply["payload"], "{\"n\": 1}");
    assert_eq!(reply["headers"]["served-by"], "r1");
    assert!(
        reply["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("_INBOX.")),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_req_reads_the_payload_from_stdin_and_reports_a_service_error() {
    common::bin("tern");
    let b = common::start_broker().await;
    let server = connect(&b).await;
    let _service = server
        .serve("cli.picky")
        .run(|req: ServiceRequest| async move {
            if req.message.payload.as_ref() == b"good\n" {
                Ok(Bytes::from_static(b"fine"))
            } else {
                Err(format!("bad payload {:?}", req.message.payload))
            }
        })
        .await
        .unwrap();

    let mut cmd = tern(&b, &["req", "cli.picky", "-"]);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"good\n").await.unwrap();
    }
    let out = within("tern req to exit", child.wait_with_output())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "tern req failed: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "fine\n");

    let out = run_tern(&b, &["req", "cli.picky", "evil"]).await;
    assert!(!out.status.success(), "a failed service must fail tern req");
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr:?}");
    assert!(stderr.contains("bad payload"), "stderr: {stderr:?}");
    assert_eq!(text(&out.stdout), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_req_with_nobody_serving_says_no_responders() {
    common::bin("tern");
    let b = common::start_broker().await;
    // A timeout far beyond PATIENCE: no responders must not wait for it.
    let out = within(
        "tern req",
        run_tern(&b, &["req", "cli.nobody", "x", "--timeout", "1h"]),
    )
    .await;
    assert!(
        !out.status.success(),
        "tern req succeeded with nobody serving"
    );
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr:?}");
    assert!(stderr.contains("no responders"), "stderr: {stderr:?}");
    assert_eq!(text(&out.stdout), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_req_times_out() {
    common::bin("tern");
    let b = common::start_broker().await;
    let server = connect(&b).await;
    let (_service, mut seen) = black_hole(&server, "cli.silent").await;

    let out = run_tern(&b, &["req", "cli.silent", "x", "--timeout", "200ms"]).await;
    assert!(!out.status.success(), "tern req succeeded without a reply");
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr:?}");
    assert!(stderr.contains("timed out"), "stderr: {stderr:?}");
    assert_eq!(text(&out.stdout), "");
    assert!(seen.try_recv().is_ok(), "the responder got the request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reply_echo_answers_a_request() {
    common::bin("tern");
    let b = common::start_broker().await;
    let child = start_tern_reply(&b, &["reply", "cli.svc.>", "--echo", "--count", "1"]).await;
    let caller = connect(&b).await;

    let reply = within("the reply", caller.request("cli.svc.ping", "ping 1"))
        .await
        .unwrap();
    assert_eq!(reply.payload, "ping 1");

    let out = within("tern reply to exit", child.wait_with_output())
        .await
        .unwrap();
    assert!(out.status.success(), "tern reply: {}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reply_exec_answers_with_the_command_output() {
    common::bin("tern");
    let b = common::start_broker().await;
    let child = start_tern_reply(
        &b,
        &["reply", "cli.upper", "--exec", "tr a-z A-Z", "--count", "1"],
    )
    .await;
    let caller = connect(&b).await;

    let reply = within("the reply", caller.request("cli.upper", "hello"))
        .await
        .unwrap();
    assert_eq!(reply.payload, "HELLO");

    let out = within("tern reply to exit", child.wait_with_output())
        .await
        .unwrap();
    assert!(out.status.success(), "tern reply: {}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reply_exec_failure_is_a_service_error() {
    common::bin("tern");
    let b = common::start_broker().await;
    let child = start_tern_reply(
        &b,
        &["reply", "cli.fail", "--exec", "exit 3", "--count", "1"],
    )
    .await;
    let caller = connect(&b).await;

    let result = within("the reply", caller.request("cli.fail", "x")).await;
    match result {
        Err(Error::Service { message }) => {
            assert!(
                message.contains("exit status: 3"),
                "service error: {message}"
            )
        }
        other => panic!("expected a Service error, got {other:?}"),
    }

    let out = within("tern reply to exit", child.wait_with_output())
        .await
        .unwrap();
    assert!(out.status.success(), "tern reply: {}", text(&out.stderr));
}
