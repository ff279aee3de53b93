//! The `filter` scenario: content-filtered subscriptions, and what they cost per publish.
//!
//! Two modes, chosen with `--mode`:
//!
//! * `equality` (the default): subscription `i` is on `commands.>` with the filter
//!   `device_id = 'dev-<i>'`, the shape the broker indexes by hash. Message `j` goes to
//!   `commands.dev-<k>.set` with the header `device_id: dev-<k>`, `k = j % N`, so each
//!   message matches exactly one subscription. Run it with `--subscriptions 10000` and
//!   with `--subscriptions 10` and compare the publish rates: the index is meant to make
//!   them about equal. The subject names the device, as a real command subject would,
//!   so the run also exercises the broker's per-subject route cache with N subjects.
//! * `range`: subscription `i` is on `sensors.>` with the filter `payload.temp > <i>`,
//!   which no index helps: every filter is evaluated for every message. Message `j`
//!   carries the JSON payload `{"temp": t, "pad": "xx.."}` with `t = j % (N + 1)`, so
//!   it matches the `t` subscriptions `i < t` and the expected deliveries of every
//!   subscription are known exactly.
//!
//! ```text
//! tern-bench filter --subscriptions 10000
//! tern-bench filter --subscriptions 10
//! tern-bench filter --mode range --subscriptions 1000 --messages 20000
//! ```
//!
//! The run:
//!
//! 1. `--connections` client connections share the subscriptions round robin (one
//!    connection per subscription would be thousands of sockets). Each subscribe is
//!    awaited, and it returns once the broker has the subscription.
//! 2. Warm-up: one cycle of the publishing pattern (N messages, or N + 1 in range
//!    mode) on the `.warm` subjects. Every subscription must get exactly what its filter
//!    accepts before measuring starts; this also shows every filter is in effect.
//! 3. One publisher publishes `--messages` as fast as `publish` returns and the window
//!    allows, from payloads, subjects and headers prepared before the clock starts, then
//!    flushes: the flush returns once the broker has routed every message. Then it
//!    sends one end marker per subscription (a `.end` subject its filter accepts).
//!    Every subscription counts until its end marker: messages from one connection
//!    arrive in order, so everything it will get has arrived by then.
//!
//! The window (`--window` deliveries, 0 for none) is credit: the publisher takes one
//! per delivery its message will have, and the readers give it back as messages
//! arrive. Without it, a range-mode publisher outruns the subscribers' connections and
//! the broker drops (QoS 0), so the deliveries could not be checked.
//!
//! Two publish rates are reported: until the last `publish` returned (as in `pubsub`;
//! up to a write buffer's worth of messages, 8 MiB, may still be in the client then),
//! and until the flush returned, which is the broker's routing rate. Delivery rate is
//! the deliveries of all subscriptions over the time from the first publish to the
//! last receive.
//!
//! No phase has a fixed time limit: the broker may take minutes over a phase. A phase
//! fails when no subscription received anything for `--quiet`: an error in the warm-up
//! or while publishing, and in the wait for end markers the subscriptions still
//! waiting are closed and their shortfall reported.
//!
//! Subscribers keep counts only, never messages, so memory stays bounded however many
//! messages are sent. Each received message is checked against its subscription's
//! filter (the header, or the temperature at the start of the payload). Missing
//! messages are reported with the drop counters that explain them (QoS 0 may drop under
//! overload); a message a filter rejects, or more messages than a subscription should
//! get, is a broker bug and ends the run with an error.
//!
//! ```text
//! subjects  equality: commands.dev-<k>.{warm,set,end}   range: sensors.bench.{warm,temp,end}
//! headers   equality: device_id: dev-<k>               range: none
//! payload   equality: --size bytes of 0xab             range: {"temp": <t>, "pad": "x.."}
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde_json::json;
use tern_client::{Client, Headers, Message, Subscription};
use tokio::sync::{mpsc, Semaphore};

use crate::client::connect;
use crate::report::{self, Report};

/// Last subject token of warm-up messages.
const WARM: &str = "warm";
/// Last subject token of end markers.
const END: &str = "end";
/// The publisher's request timeout and keep-alive interval: long enough never to fire
/// (see where it is used).
const PUBLISHER_PATIENCE: Duration = Duration::from_secs(3600);
/// Header the equality filters test.
const DEVICE_HEADER: &str = "device_id";
/// Start of every range-mode payload, followed by the temperature's digits.
const TEMP_PREFIX: &str = "{\"temp\": ";

/// Which kind of filter the subscriptions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `device_id = 'dev-<i>'`: indexed by hash, one match per message
    Equality,
    /// `payload.temp > <i>`: evaluated one by one, many matches per message
    Range,
}

/// Options of the `filter` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Kind of filter
    #[arg(long, value_enum, default_value_t = Mode::Equality)]
    pub mode: Mode,

    /// Filtered subscriptions (N)
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub subscriptions: u64,

    /// Subscribing connections the subscriptions are spread over (at most one per
    /// subscription)
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: u64,

    /// Messages to publish (each delivered to one subscription in equality mode, to
    /// N / 2 on average in range mode)
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,

    /// Deliveries in flight at most (published, not yet received); the publisher waits
    /// for credit beyond it. It keeps the broker's per-connection buffers from
    /// overflowing, which under QoS 0 drops messages (range mode fans one message out to
    /// N / 2 subscriptions). 0: publish flat out. At least N in range mode
    #[arg(long, default_value_t = 100_000)]
    pub window: u64,

    /// Payload size in bytes (range mode: at least the JSON without padding)
    #[arg(long, default_value_t = 128)]
    pub size: usize,

    /// How long no subscription may receive anything before the run counts as stalled:
    /// an error in the warm-up and while publishing, a reported shortfall at the end
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub quiet: Duration,
}

/// What one subscription accepts, checked on every message it receives.
#[derive(Debug, Clone)]
enum Accepts {
    /// Messages whose `device_id` header is this.
    Device(String),
    /// Messages whose payload temperature is above this.
    Above(u64),
}

impl Accepts {
    fn new(mode: Mode, i: u64) -> Self {
        match mode {
            Mode::Equality => Accepts::Device(device(i)),
            Mode::Range => Accepts::Above(i),
        }
    }

    /// The filter text that makes the broker accept the same messages.
    fn filter(&self) -> String {
        match self {
            Accepts::Device(id) => format!("{DEVICE_HEADER} = '{id}'"),
            Accepts::Above(i) => format!("payload.temp > {i}"),
        }
    }

    fn accepts(&self, msg: &Message) -> bool {
        match self {
            Accepts::Device(id) => msg.headers.get(DEVICE_HEADER) == Some(id.as_str()),
            Accepts::Above(i) => temp(&msg.payload).is_some_and(|t| t > *i),
        }
    }
}

/// What one subscription saw in the measured phase.
#[derive(Debug)]
struct Received {
    /// Measured messages (end markers and warm-up excluded).
    count: u64,
    /// Measured messages its filter should have rejected.
    rejected: u64,
    /// When the last measured message was taken from the subscription.
    last: Option<Instant>,
    /// Whether its end marker arrived (otherwise its client was closed after nothing
    /// arrived for `--quiet`).
    ended: bool,
    /// Messages its client dropped because the subscription's buffer was full.
    client_dropped: u64,
}

/// Runs the scenario against the broker at `addr`; returns the report (broker-side
/// figures such as drops and memory are added by the caller, which knows the broker).
///
/// # Errors
///
/// A client could not connect, subscribe or publish; the warm-up did not reach every
/// subscription; or the broker delivered a message a filter rejects, or more messages
/// than a subscription's filter accepts.
pub async fn run(addr: &str, args: &Args) -> anyhow::Result<Report> {
    let n = args.subscriptions;
    let workload = Workload::new(args)?;
    let credit = match args.window {
        0 => None,
        w if w < workload.max_fan_out() => bail!(
            "--window {w} is less than the {} deliveries one message can have",
            workload.max_fan_out()
        ),
        w => Some(Arc::new(Semaphore::new(
            usize::try_from(w)
                .ok()
                .filter(|&w| w <= Semaphore::MAX_PERMITS)
                .context("--window is too large")?,
        ))),
    };
    let credit_ref = credit.as_deref();

    // Subscriptions first, so that every message published afterwards reaches them.
    // The connections subscribe in parallel, each its share one after the other.
    let subscribe_start = Instant::now();
    let connections = args.connections.min(n);
    let mut joins = Vec::new();
    for c in 0..connections {
        let client = connect(addr, &format!("bench-filter-sub-{c}")).await?;
        let (pattern, mode) = (workload.pattern(), args.mode);
        joins.push(tokio::spawn(async move {
            let mut subs = Vec::new();
            for i in (c..n).step_by(usize::try_from(connections).unwrap_or(usize::MAX)) {
                let accepts = Accepts::new(mode, i);
                let filter = accepts.filter();
                let sub = client
                    .subscribe(pattern)
                    .filter(&filter)
                    .await
                    .with_context(|| format!("subscribing to {pattern} with filter {filter}"))?;
                subs.push((i, accepts, sub));
            }
            anyhow::Ok((client, subs))
        }));
    }
    let mut clients = Vec::new();
    let mut subscriptions = Vec::new();
    for j in joins {
        let (client, subs) = j.await.context("a subscribing connection panicked")??;
        clients.push(client);
        subscriptions.extend(subs);
    }
    let subscribe_time = subscribe_start.elapsed();
    let publisher = Client::builder()
        .name("bench-filter-pub")
        .reconnect(false)
        // Its flush, and the broker's answers to its keep-alive pings, wait behind a full
        // write buffer of publishes, which a slow broker may take minutes to route (with
        // the defaults the client would call the connection dead after a minute). A
        // stall is caught by `while_progressing` instead.
        .request_timeout(PUBLISHER_PATIENCE)
        .ping_interval(PUBLISHER_PATIENCE)
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;

    // One task per subscription: a task costs a few hundred bytes, and the broker is
    // what is measured, not the subscribers.
    let progress = Arc::new(AtomicU64::new(0));
    let (warm_tx, mut warm_rx) = mpsc::channel(subscriptions.len());
    let (done_tx, mut done_rx) = mpsc::channel(subscriptions.len());
    let readers: Vec<_> = subscriptions
        .into_iter()
        .map(|(i, accepts, sub)| {
            let reader = Reader {
                index: i,
                accepts,
                warm_want: workload.expected(i, workload.cycle()),
                warm: warm_tx.clone(),
                done: done_tx.clone(),
                progress: Arc::clone(&progress),
                credit: credit.clone(),
            };
            tokio::spawn(reader.run(sub))
        })
        .collect();
    drop((warm_tx, done_tx));

    // Warm-up: one cycle, every subscription gets what its filter accepts.
    let mut warm = 0;
    let warmed = while_progressing(&progress, args.quiet, async {
        workload
            .publish_phase(&publisher, credit_ref, WARM, workload.cycle())
            .await?;
        while warm < n && warm_rx.recv().await.is_some() {
            warm += 1;
        }
        anyhow::Ok(())
    })
    .await;
    match warmed {
        Ok(published) => published?,
        Err(Stalled) => bail!(
            "warm-up: only {warm} of {n} subscriptions received every warm-up message their \
             filter accepts, and no message arrived for {:?}; the broker dropped some (see \
             its slow-consumer drops) or a filter is not in effect",
            args.quiet
        ),
    }

    // Measured phase.
    let started = Instant::now();
    let measured = while_progressing(&progress, args.quiet, async {
        workload
            .publish_measured(&publisher, credit_ref, args.messages)
            .await?;
        let publish_end = Instant::now();
        publisher
            .flush()
            .await
            .context("flushing the measured messages")?;
        anyhow::Ok((publish_end, Instant::now()))
    })
    .await;
    let (publish_end, routed) = match measured {
        Ok(times) => times?,
        Err(Stalled) => bail!(
            "publishing stalled: no subscription received anything for {:?}; if the \
             broker dropped messages (slow consumer), their credit never came back: \
             lower --window",
            args.quiet
        ),
    };
    let mut done = 0;
    let ended = while_progressing(&progress, args.quiet, async {
        workload.publish_end_markers(&publisher, credit_ref).await?;
        while done < n && done_rx.recv().await.is_some() {
            done += 1;
        }
        anyhow::Ok(())
    })
    .await;
    if let Ok(published) = ended {
        published?;
    }
    // Closing the subscribers' clients ends the subscriptions still waiting for their
    // end marker (it was dropped, or a message went missing before it and the broker
    // stalled), so every reader returns.
    let _ = publisher.close().await;
    for client in &clients {
        let _ = client.close().await;
    }
    let mut received = Vec::with_capacity(readers.len());
    let mut finished = Vec::with_capacity(readers.len());
    for r in readers {
        let (i, got, sub) = r.await.context("a subscriber panicked")?;
        received.push((i, got));
        finished.push(sub);
    }
    drop(finished);

    let t = Timings {
        subscribe: subscribe_time,
        started,
        publish_end,
        routed,
    };
    summarize(args, &workload, &t, &received)
}

/// The name of device `i`.
fn device(i: u64) -> String {
    format!("dev-{i}")
}

/// What the publisher sends, prepared before the clock starts.
#[derive(Debug)]
enum Workload {
    /// One entry per device `k`: its measured subject and its headers.
    Equality {
        devices: Vec<(String, Headers)>,
        payload: Bytes,
    },
    /// One payload per temperature `t` in `0..=N`.
    Range { n: u64, payloads: Vec<Bytes> },
}

impl Workload {
    /// Prepares the subjects, headers and payloads: N of them (N + 1 in range mode),
    /// reused by reference count for every message.
    fn new(args: &Args) -> anyhow::Result<Self> {
        let n = args.subscriptions;
        Ok(match args.mode {
            Mode::Equality => Workload::Equality {
                devices: (0..n)
                    .map(|k| {
                        let mut headers = Headers::new();
                        headers.append(DEVICE_HEADER, device(k));
                        (format!("commands.{}.set", device(k)), headers)
                    })
                    .collect(),
                payload: Bytes::from(vec![0xab; args.size]),
            },
            Mode::Range => Workload::Range {
                n,
                payloads: (0..=n)
                    .map(|t| range_payload(t, args.size))
                    .collect::<anyhow::Result<_>>()?,
            },
        })
    }

    fn pattern(&self) -> &'static str {
        match self {
            Workload::Equality { .. } => "commands.>",
            Workload::Range { .. } => "sensors.>",
        }
    }

    /// Messages in one cycle of the publishing pattern.
    fn cycle(&self) -> u64 {
        match self {
            Workload::Equality { devices, .. } => devices.len() as u64,
            Workload::Range { payloads, .. } => payloads.len() as u64,
        }
    }

    /// Messages subscription `i` accepts among the first `messages` of the pattern.
    fn expected(&self, i: u64, messages: u64) -> u64 {
        match self {
            Workload::Equality { devices, .. } => {
                equality_expected(i, messages, devices.len() as u64)
            }
            Workload::Range { n, .. } => range_expected(i, messages, *n),
        }
    }

    /// Deliveries expected for all subscriptions together.
    fn expected_total(&self, messages: u64) -> u64 {
        match self {
            // Each message matches exactly one subscription.
            Workload::Equality { .. } => messages,
            Workload::Range { n, .. } => (0..*n).map(|i| range_expected(i, messages, *n)).sum(),
        }
    }

    /// Most deliveries one message can have: what `--window` must at least allow.
    fn max_fan_out(&self) -> u64 {
        match self {
            Workload::Equality { .. } => 1,
            Workload::Range { n, .. } => *n,
        }
    }

    /// The measured messages: `count` of the pattern, on the measured subjects.
    async fn publish_measured(
        &self,
        client: &Client,
        credit: Option<&Semaphore>,
        count: u64,
    ) -> anyhow::Result<()> {
        let count = usize::try_from(count).context("--messages does not fit in memory")?;
        match self {
            Workload::Equality { devices, payload } => {
                for (subject, headers) in devices.iter().cycle().take(count) {
                    take_credit(credit, 1).await?;
                    client
                        .publish(subject, payload.clone())
                        .headers(headers.clone())
                        .await?;
                }
            }
            Workload::Range { payloads, .. } => {
                for (t, payload) in (0..).zip(payloads).cycle().take(count) {
                    take_credit(credit, t).await?;
                    client
                        .publish("sensors.bench.temp", payload.clone())
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// `count` messages of the pattern on subjects ending in `phase`; not on the hot
    /// path, so the subjects are made as they are sent.
    async fn publish_phase(
        &self,
        client: &Client,
        credit: Option<&Semaphore>,
        phase: &str,
        count: u64,
    ) -> anyhow::Result<()> {
        let count = usize::try_from(count).context("too many messages")?;
        match self {
            Workload::Equality { devices, payload } => {
                for (k, (_, headers)) in (0..).zip(devices).cycle().take(count) {
                    take_credit(credit, 1).await?;
                    let subject = format!("commands.{}.{phase}", device(k));
                    client
                        .publish(&subject, payload.clone())
                        .headers(headers.clone())
                        .await?;
                }
            }
            Workload::Range { payloads, .. } => {
                let subject = format!("sensors.bench.{phase}");
                for (t, payload) in (0..).zip(payloads).cycle().take(count) {
                    take_credit(credit, t).await?;
                    client.publish(&subject, payload.clone()).await?;
                }
            }
        }
        Ok(())
    }

    /// One end marker that each subscription accepts: one per device, or a single
    /// message with the highest temperature, N, which every `temp > i` (i < N) accepts.
    async fn publish_end_markers(
        &self,
        client: &Client,
        credit: Option<&Semaphore>,
    ) -> anyhow::Result<()> {
        match self {
            Workload::Equality { devices, .. } => {
                self.publish_phase(client, credit, END, devices.len() as u64)
                    .await
            }
            Workload::Range { n, payloads } => {
                take_credit(credit, *n).await?;
                let last = payloads.last().cloned().unwrap_or_default();
                client.publish("sensors.bench.end", last).await?;
                Ok(())
            }
        }
    }
}

/// Takes `deliveries` credits of the window (none without `--window`); the readers
/// return them as the messages arrive.
async fn take_credit(credit: Option<&Semaphore>, deliveries: u64) -> anyhow::Result<()> {
    let Some(credit) = credit else {
        return Ok(());
    };
    if deliveries > 0 {
        let n = u32::try_from(deliveries).context("more deliveries per message than a u32")?;
        // Never closed; forgotten because a reader gives the credit back, not a drop.
        credit
            .acquire_many(n)
            .await
            .context("the window's semaphore closed")?
            .forget();
    }
    Ok(())
}

/// Messages of device `i` among the first `messages` when devices cycle over `0..n`.
fn equality_expected(i: u64, messages: u64, n: u64) -> u64 {
    messages / n + u64::from(i < messages % n)
}

/// Messages with `temp > i` among the first `messages` when temperatures cycle over
/// `0..=n`: each of the `n - i` temperatures above `i` comes `messages / (n + 1)` times
/// in the whole cycles, and those below `messages % (n + 1)` once more.
fn range_expected(i: u64, messages: u64, n: u64) -> u64 {
    let (whole, rest) = (messages / (n + 1), messages % (n + 1));
    whole * (n - i) + rest.saturating_sub(i + 1)
}

/// `{"temp": t, "pad": "xx.."}`, padded with `x` up to `size` bytes.
fn range_payload(t: u64, size: usize) -> anyhow::Result<Bytes> {
    let bare = format!("{TEMP_PREFIX}{t}, \"pad\": \"\"}}");
    let Some(pad) = size.checked_sub(bare.len()) else {
        bail!(
            "--size {size} is too small for the range payload {bare} ({} bytes)",
            bare.len()
        );
    };
    let text = format!("{TEMP_PREFIX}{t}, \"pad\": \"{}\"}}", "x".repeat(pad));
    Ok(Bytes::from(text))
}

/// The temperature of a range payload, read from its first bytes without parsing the
/// JSON (the payloads are ours, and the check runs for every delivery).
fn temp(payload: &[u8]) -> Option<u64> {
    let digits = payload.strip_prefix(TEMP_PREFIX.as_bytes())?;
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(digits.get(..end)?).ok()?.parse().ok()
}

/// One subscription's reader.
#[derive(Debug)]
struct Reader {
    index: u64,
    accepts: Accepts,
    /// Warm-up messages its filter accepts.
    warm_want: u64,
    /// Signalled once when all `warm_want` warm-up messages are in.
    warm: mpsc::Sender<()>,
    /// Signalled when the end marker arrives.
    done: mpsc::Sender<()>,
    /// Messages received by all readers together, for stall detection.
    progress: Arc<AtomicU64>,
    /// The `--window`, if any: every message received returns one credit.
    credit: Option<Arc<Semaphore>>,
}

impl Reader {
    /// Reads `sub` until its end marker arrives or its client is closed. Returns the
    /// subscription too, so that it is dropped (and unsubscribed) only after every
    /// subscription is done, when a changing route table cannot slow the others.
    ///
    /// Drains what is already buffered, and reads the clock once per drained batch
    /// rather than once per message.
    async fn run(self, mut sub: Subscription) -> (u64, Received, Subscription) {
        let mut warm = Some(self.warm);
        let mut warm_count = 0;
        let mut got = Received {
            count: 0,
            rejected: 0,
            last: None,
            ended: false,
            client_dropped: 0,
        };
        'read: while let Some(first) = sub.next().await {
            let mut next = Some(first);
            let (mut batch, mut measured) = (0, false);
            while let Some(msg) = next {
                batch += 1;
                match msg.subject.rsplit('.').next() {
                    Some(WARM) => {
                        warm_count += 1;
                        if warm_count == self.warm_want {
                            if let Some(w) = warm.take() {
                                let _ = w.send(()).await;
                            }
                        }
                    }
                    Some(END) => {
                        got.ended = true;
                        break;
                    }
                    _ => {
                        got.count += 1;
                        measured = true;
                        if !self.accepts.accepts(&msg) {
                            got.rejected += 1;
                        }
                    }
                }
                next = sub.try_next();
            }
            if measured {
                got.last = Some(Instant::now());
            }
            self.progress.fetch_add(batch, Ordering::Relaxed);
            if let Some(credit) = &self.credit {
                credit.add_permits(usize::try_from(batch).unwrap_or(usize::MAX));
            }
            if got.ended {
                let _ = self.done.send(()).await;
                break 'read;
            }
        }
        got.client_dropped = sub.dropped();
        (self.index, got, sub)
    }
}

/// The broker stopped delivering: no subscription received anything for `--quiet`.
#[derive(Debug)]
struct Stalled;

/// Runs `fut` to completion as long as some subscription receives a message at least
/// every `quiet`; `Err(Stalled)` (dropping `fut`) once none did for that long.
///
/// The broker may legitimately take minutes over a phase (10,000 filters to route
/// through), so the bound is on silence, not on the phase's length.
async fn while_progressing<F: Future>(
    progress: &AtomicU64,
    quiet: Duration,
    fut: F,
) -> Result<F::Output, Stalled> {
    tokio::pin!(fut);
    let mut seen = progress.load(Ordering::Relaxed);
    loop {
        match tokio::time::timeout(quiet, &mut fut).await {
            Ok(out) => return Ok(out),
            Err(_) => {
                let now = progress.load(Ordering::Relaxed);
                if now == seen {
                    return Err(Stalled);
                }
                seen = now;
            }
        }
    }
}

/// When the phases happened.
#[derive(Debug)]
struct Timings {
    /// All subscriptions made, from the first connect.
    subscribe: Duration,
    /// Just before the first measured publish.
    started: Instant,
    /// When the last measured `publish` returned (the message was in the client's
    /// buffer).
    publish_end: Instant,
    /// When the flush after the last measured publish returned: the broker had routed
    /// every measured message.
    routed: Instant,
}

fn summarize(
    args: &Args,
    workload: &Workload,
    t: &Timings,
    received: &[(u64, Received)],
) -> anyhow::Result<Report> {
    // Wrong deliveries are a broker bug: no rate means anything then.
    let rejected: u64 = received.iter().map(|(_, r)| r.rejected).sum();
    if let Some((i, r)) = received.iter().find(|(_, r)| r.rejected > 0) {
        bail!(
            "the broker delivered {rejected} messages that the filters reject; e.g. \
             subscription {i} (filter {}) got {} such messages",
            Accepts::new(args.mode, *i).filter(),
            r.rejected
        );
    }
    let extra: u64 = received
        .iter()
        .map(|(i, r)| r.count.saturating_sub(workload.expected(*i, args.messages)))
        .sum();
    if let Some((i, r)) = received
        .iter()
        .find(|(i, r)| r.count > workload.expected(*i, args.messages))
    {
        bail!(
            "the broker delivered {extra} messages more than the filters accept; e.g. \
             subscription {i} (filter {}) got {} messages, {} expected",
            Accepts::new(args.mode, *i).filter(),
            r.count,
            workload.expected(*i, args.messages)
        );
    }

    let mut r = Report::new("filter");
    let mode = match args.mode {
        Mode::Equality => "equality (device_id = 'dev-<i>', indexed)",
        Mode::Range => "range (payload.temp > <i>, evaluated one by one)",
    };
    r.add("mode", "mode", json!(mode), "");
    r.add(
        "subscriptions",
        "filtered subscriptions",
        json!(args.subscriptions),
        "",
    );
    r.add(
        "connections",
        "subscribing connections",
        json!(args.connections.min(args.subscriptions)),
        "",
    );
    r.add("messages", "messages published", json!(args.messages), "");
    r.add("size", "payload size", json!(args.size), "B");
    r.add(
        "window",
        "deliveries in flight at most (0: no limit)",
        json!(args.window),
        "msgs",
    );
    r.add(
        "subscribe_secs",
        "time to make every subscription",
        report::seconds(t.subscribe),
        "s",
    );

    let publish_time = t.publish_end - t.started;
    r.add(
        "publish_secs",
        "publish time",
        report::seconds(publish_time),
        "s",
    );
    r.add(
        "publish_rate",
        "publish rate (until the last publish returned)",
        report::rate_value(report::per_second(args.messages, publish_time)),
        "msgs/s",
    );
    let routed_time = t.routed - t.started;
    r.add(
        "routed_secs",
        "routing time (until the broker had them all)",
        report::seconds(routed_time),
        "s",
    );
    r.add(
        "routed_rate",
        "publish rate (until the broker had them all)",
        report::rate_value(report::per_second(args.messages, routed_time)),
        "msgs/s",
    );

    let expected = workload.expected_total(args.messages);
    let delivered: u64 = received.iter().map(|(_, r)| r.count).sum();
    let last = received
        .iter()
        .filter_map(|(_, r)| r.last)
        .max()
        .unwrap_or(t.started);
    let elapsed = last.saturating_duration_since(t.started);
    r.add(
        "elapsed_secs",
        "first publish to last receive",
        report::seconds(elapsed),
        "s",
    );
    r.add(
        "deliveries_expected",
        "deliveries expected (all subscriptions)",
        json!(expected),
        "msgs",
    );
    r.add(
        "fan_out",
        "deliveries per message",
        json!((expected as f64 / args.messages.max(1) as f64 * 100.0).round() / 100.0),
        "",
    );
    r.add("delivered", "delivered", json!(delivered), "msgs");
    r.add(
        "delivered_rate",
        "delivery rate",
        report::rate_value(report::per_second(delivered, elapsed)),
        "msgs/s",
    );
    r.add(
        "missing",
        "missing (all subscriptions)",
        json!(expected.saturating_sub(delivered)),
        "msgs",
    );
    r.add(
        "client_dropped",
        "dropped by clients (subscription full)",
        json!(received.iter().map(|(_, r)| r.client_dropped).sum::<u64>()),
        "msgs",
    );
    let unended = received.iter().filter(|(_, r)| !r.ended).count();
    if unended > 0 {
        r.add(
            "end_markers_missing",
            "subscriptions without their end marker (closed after --quiet)",
            json!(unended),
            "",
        );
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_counts_match_brute_force() {
        for n in [1u64, 2, 7, 10] {
            for messages in [0u64, 1, n, n + 1, 3 * n + 2, 50] {
                let temps = (0..messages).map(|j| j % (n + 1));
                let devices = (0..messages).map(|j| j % n);
                for i in 0..n {
                    let above = temps.clone().filter(|&t| t > i).count() as u64;
                    assert_eq!(
                        range_expected(i, messages, n),
                        above,
                        "n={n} m={messages} i={i}"
                    );
                    let own = devices.clone().filter(|&k| k == i).count() as u64;
                    assert_eq!(equality_expected(i, messages, n), own);
                }
            }
        }
    }

    #[test]
    fn range_payloads_are_json_of_the_size_asked() {
        let p = range_payload(42, 64).unwrap();
        assert_eq!(p.len(), 64);
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["temp"], 42);
        assert_eq!(temp(&p), Some(42));
        assert!(range_payload(1000, 10).is_err());
        assert_eq!(temp(b"{\"temp\": x}"), None);
    }
}
