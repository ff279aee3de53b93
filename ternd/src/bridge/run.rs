//! A bridge at work: two tasks per bridge.
//!
//! ```text
//!            ┌──────── driver ────────┐  FromMqtt (bounded)   ┌──────── bridge ─────────┐
//! MQTT ◀──▶  │ rumqttc EventLoop.poll │ ────────────────────▶ │ imports → tern publish  │ ◀──▶ tern
//! broker     │ back-off, log, gate    │ ◀──────────────────── │ tern queue → exports    │      (local
//!            └────────────────────────┘  AsyncClient requests └─────────────────────────┘      client)
//! ```
//!
//! The driver is the only code that polls rumqttc's `EventLoop`, and it never cancels
//! a poll while connected (a poll dropped mid-write could lose a packet rumqttc already
//! counted as sent). The bridge task sends PUBLISH and PUBACK requests through
//! rumqttc's request channel, only through the [`Gate`], and never waits on that
//! channel (`try_*`): the driver may itself be waiting for the bridge task to take an
//! event, and the two must not wait for each other.
//!
//! # How export acks map to MQTT PUBACKs
//!
//! rumqttc assigns packet ids as it takes requests from its channel, in order, and
//! reports each as `Outgoing::Publish(pkid)`. The bridge task keeps the QoS 1 exports
//! it sent in the same order (`unassigned`); each `Outgoing::Publish(pkid)` moves the
//! oldest to `inflight[pkid]`, and `PubAck(pkid)` acks its tern delivery. When the
//! connection drops, the driver — holding the gate closed — drains rumqttc's channel
//! and drops every PUBLISH and PUBACK rumqttc would replay, and every event of the dead
//! connection not yet reported; the bridge task then puts everything unacknowledged
//! back in front of its send queue, in the original order, to publish on the next
//! connection. So no stale packet id can be reported after a reconnect, and the
//! order-based matching cannot slip. A message may reach the MQTT broker twice when a
//! PUBACK is lost with the connection (at least once), never zero times.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{BoxStream, SelectAll, StreamExt};
use rumqttc::{
    AsyncClient, ClientError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, Request,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tern_client::{Client, Delivery, ErrorCode, Headers, Message, Overflow, Qos, QueueConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::conn_log::{ConnLog, Note};
use super::echo::EchoFilter;
use tern_broker::bridge::BridgeStatus;
use tern_broker::config::bridge::MqttBridge;
use tern_broker::Server;
use tern_client::Backoff;

/// QoS 1 exports in flight to the MQTT broker at once (and the prefetch of each export
/// queue's consumer).
const EXPORT_WINDOW: usize = 64;
/// rumqttc's own window of unacknowledged outgoing publishes. Above `EXPORT_WINDOW`, so
/// that rumqttc never stops taking requests (acks for imports among them) because of
/// exports.
const MQTT_INFLIGHT: u16 = 100;
/// Imported messages waiting for tern's confirm (and their MQTT ack). At the limit the
/// bridge stops taking MQTT events, and rumqttc stops reading the socket.
const IMPORT_WINDOW: usize = 1024;
/// Events from the driver to the bridge task.
const EVENT_CHANNEL: usize = 256;
/// rumqttc's request channel. Everything the bridge task can have outstanding fits, so
/// a `try_*` send does not fail in practice; if it does, the request is retried
/// (publish) or left to the MQTT broker's redelivery (ack).
const REQUEST_CHANNEL: usize = EXPORT_WINDOW + IMPORT_WINDOW + EVENT_CHANNEL + 64;
/// How often a refused send is retried.
const RETRY: Duration = Duration::from_millis(20);
/// Ack timeout of an export queue: long, because a delivery waits for the MQTT broker
/// to come back, and a redelivery would send it twice.
const EXPORT_ACK_TIMEOUT: Duration = Duration::from_secs(3600);
/// Delivery attempts before an export queue dead-letters (drops) a message.
const EXPORT_MAX_DELIVER: u32 = 1000;
/// Most one "message dropped" warning per this long, per bridge.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What the driver reports to the bridge task.
#[derive(Debug)]
enum FromMqtt {
    Connected,
    Disconnected,
    Publish(rumqttc::Publish),
    PubAck(u16),
    /// A QoS 1 publish request was given this packet id and written.
    Sent(u16),
}

/// Whether requests may go to rumqttc's channel. The driver closes it (and drains the
/// channel) when a connection drops, and opens it on CONNACK; a request sent while it
/// is open belongs to the live connection. A std `Mutex`: held only for a `try_send`
/// or a drain, never across an `.await`.
#[derive(Debug, Default)]
struct Gate {
    open: Mutex<bool>,
}

#[derive(Debug)]
enum Refused {
    Closed,
    Full,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        // A bool cannot be left half-written: a poisoned lock still holds a good value.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, send: impl FnOnce() -> Result<(), ClientError>) -> Result<(), Refused> {
        let open = self.lock();
        if !*open {
            return Err(Refused::Closed);
        }
        send().map_err(|_| Refused::Full)
    }

    fn set(&self, open: bool, while_locked: impl FnOnce()) {
        let mut guard = self.lock();
        *guard = open;
        while_locked();
    }
}

/// Starts `cfg`'s driver and bridge tasks as services of `server`.
pub(super) fn spawn(
    server: Server,
    cfg: Arc<MqttBridge>,
    status: Arc<BridgeStatus>,
    shutdown: CancellationToken,
) {
    let max_packet = usize::try_from(server.config().limits.max_frame_size).unwrap_or(usize::MAX);
    let (mqtt, eventloop) = AsyncClient::new(options(&cfg, max_packet), REQUEST_CHANNEL);
    let (events, from_mqtt) = mpsc::channel(EVENT_CHANNEL);
    let gate = Arc::new(Gate::default());
    let filters = cfg
        .imports
        .iter()
        .map(|i| SubscribeFilter::new(i.route.mqtt_filter(), qos(i.qos)))
        .collect();
    server.spawn_service(
        Driver {
            cfg: Arc::clone(&cfg),
            eventloop,
            mqtt: mqtt.clone(),
            filters,
            gate: Arc::clone(&gate),
            events,
            status: Arc::clone(&status),
            shutdown: shutdown.clone(),
        }
        .run(),
    );
    server.clone().spawn_service(
        Bridge {
            cfg,
            status,
            mqtt,
            gate,
            from_mqtt,
            shutdown,
            connected: false,
            epoch: 0,
            imports: VecDeque::new(),
            window: Window::default(),
            echo: EchoFilter::default(),
            warn: Throttle::default(),
        }
        .run(server),
    );
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn options(cfg: &MqttBridge, max_packet: usize) -> MqttOptions {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    // Validated: keep-alive 0 or 1 s to 65535 s, so its whole seconds (MQTT's unit, and
    // rumqttc's) fit a u16; and a non-empty client id (rumqttc asserts one when
    // clean_session is off).
    o.set_keep_alive(u16::try_from(cfg.keep_alive.as_secs()).unwrap_or(u16::MAX));
    o.set_clean_session(cfg.clean_session);
    o.set_manual_acks(true);
    o.set_inflight(MQTT_INFLIGHT);
    // A message tern cannot carry is refused by the MQTT client already. Topic and
    // headers add a little to the frame; they are bounded by the frame limit anyway.
    o.set_max_packet_size(max_packet, max_packet);
    if let Some((user, password)) = &cfg.credentials {
        o.set_credentials(user.clone(), password.0.clone());
    }
    if let Some(tls) = &cfg.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::clone(tls),
        )));
    }
    o
}

fn log_note(bridge: &str, note: Note) {
    match note {
        Note::Connected(m) => tracing::info!(bridge, "{m}"),
        Note::Down(m) => tracing::warn!(bridge, "{m}"),
    }
}

/// Owns rumqttc's event loop: connects, reconnects with back-off, subscribes, and
/// passes what happens on to the bridge task.
struct Driver {
    cfg: Arc<MqttBridge>,
    eventloop: EventLoop,
    mqtt: AsyncClient,
    /// The imports' subscriptions, made on every connection without a session.
    filters: Vec<SubscribeFilter>,
    gate: Arc<Gate>,
    events: mpsc::Sender<FromMqtt>,
    status: Arc<BridgeStatus>,
    shutdown: CancellationToken,
}

impl Driver {
    async fn run(mut self) {
        let name = self.cfg.name.clone();
        let mut log = ConnLog::new(self.cfg.url.clone());
        let mut backoff = Backoff::new(self.cfg.reconnect_delay_min, self.cfg.reconnect_delay_max);
        loop {
            // Dropping a poll is safe only here, at shutdown: nothing is kept after it.
            let polled = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                polled = self.eventloop.poll() => polled,
            };
            let event = match polled {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff.reset();
                    let (note, reconnect) = log.connected();
                    log_note(&name, note);
                    if reconnect {
                        self.status.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    self.gate.set(true, || {});
                    self.status.connected.store(true, Ordering::Relaxed);
                    // With a session the broker kept the subscriptions; subscribing
                    // again would make it send every retained message again.
                    if !ack.session_present && !self.filters.is_empty() {
                        if let Err(e) = self.mqtt.try_subscribe_many(self.filters.clone()) {
                            tracing::warn!(bridge = %name, error = %e, "cannot subscribe");
                        }
                    }
                    Some(FromMqtt::Connected)
                }
                Ok(Event::Incoming(Packet::Publish(p))) => Some(FromMqtt::Publish(p)),
                Ok(Event::Incoming(Packet::PubAck(a))) => Some(FromMqtt::PubAck(a.pkid)),
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    for (code, f) in s.return_codes.iter().zip(&self.filters) {
                        if matches!(code, SubscribeReasonCode::Failure) {
                            tracing::warn!(bridge = %name, filter = %f.path, "the MQTT broker refused the subscription");
                        }
                    }
                    None
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                    Some(FromMqtt::Sent(pkid))
                }
                Ok(_) => None,
                Err(e) => {
                    let eventloop = &mut self.eventloop;
                    self.gate.set(false, || {
                        // Requests that reached the channel after rumqttc drained it on
                        // the error; then forget what belonged to the dead connection
                        // (see the module docs).
                        eventloop.clean();
                        eventloop.pending.retain(|r| {
                            !matches!(
                                r,
                                Request::Publish(_) | Request::PubAck(_) | Request::PubRec(_)
                            )
                        });
                        eventloop.state.events.clear();
                    });
                    let was_connected = self.status.connected.swap(false, Ordering::Relaxed);
                    match log.failed(&e.to_string()) {
                        Some(note) => log_note(&name, note),
                        None => {
                            tracing::debug!(bridge = %name, error = %e, "reconnect attempt failed")
                        }
                    }
                    if was_connected && !self.forward(FromMqtt::Disconnected).await {
                        break;
                    }
                    tokio::select! {
                        () = self.shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    None
                }
            };
            if let Some(event) = event {
                if !self.forward(event).await {
                    break;
                }
            }
        }
        self.disconnect().await;
        self.status.connected.store(false, Ordering::Relaxed);
    }

    /// Passes `event` on; `false` when the bridge is stopping.
    fn forward(&self, event: FromMqtt) -> impl Future<Output = bool> + Send + 'static {
        // Owns what it needs: the driver itself is not `Sync` (rumqttc's event loop
        // holds the socket), so a future borrowing it could not move between threads.
        let (shutdown, events) = (self.shutdown.clone(), self.events.clone());
        async move {
            tokio::select! {
                () = shutdown.cancelled() => false,
                sent = events.send(event) => sent.is_ok(),
            }
        }
    }

    /// Says goodbye to the MQTT broker, briefly: a clean DISCONNECT tells it not to
    /// publish a will, and frees the client id at once.
    async fn disconnect(&mut self) {
        if !self.status.connected.load(Ordering::Relaxed) || self.mqtt.try_disconnect().is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// An imported message waiting for tern's confirm before it is acked to MQTT.
struct PendingImport {
    publish: rumqttc::Publish,
    /// The connection it came on: an ack is only valid on that connection.
    epoch: u64,
    /// `None`: nothing to wait for (skipped, or not confirmed); acked in turn.
    confirm: Option<tern_client::PendingConfirm>,
}

/// A QoS 1 export on its way to the MQTT broker.
struct Outbound {
    /// Order of arrival, to resend in the same order after a reconnect.
    seq: u64,
    topic: String,
    payload: Bytes,
    retain: bool,
    delivery: Delivery,
}

/// QoS 1 exports not yet acknowledged by the MQTT broker.
#[derive(Default)]
struct Window {
    next_seq: u64,
    /// To send (again), in order.
    waiting: VecDeque<Outbound>,
    /// Sent to rumqttc; no packet id reported yet. In the order sent.
    unassigned: VecDeque<Outbound>,
    /// Written with this packet id; waiting for its PUBACK.
    inflight: HashMap<u16, Outbound>,
}

impl Window {
    fn len(&self) -> usize {
        self.waiting.len() + self.unassigned.len() + self.inflight.len()
    }

    /// The connection dropped: whatever was sent goes back in front, in order.
    fn requeue(&mut self) {
        let mut again: Vec<Outbound> = self.unassigned.drain(..).collect();
        again.extend(self.inflight.drain().map(|(_, o)| o));
        again.sort_by_key(|o| o.seq);
        for o in again.into_iter().rev() {
            self.waiting.push_front(o);
        }
    }
}

/// Rate-limits warnings about single messages.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(n)`: log now, mentioning `n` earlier ones that were not logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(at) if now.duration_since(at) < WARN_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

type Deliveries = SelectAll<BoxStream<'static, (usize, Delivery)>>;
type Messages = SelectAll<BoxStream<'static, (usize, Message)>>;

/// The bridge proper: imports and exports between the tern client and rumqttc.
struct Bridge {
    cfg: Arc<MqttBridge>,
    status: Arc<BridgeStatus>,
    mqtt: AsyncClient,
    gate: Arc<Gate>,
    from_mqtt: mpsc::Receiver<FromMqtt>,
    shutdown: CancellationToken,
    /// Whether the MQTT connection is up, as far as the events seen so far tell.
    connected: bool,
    /// Counts connections; stamps imports with the one they came on.
    epoch: u64,
    imports: VecDeque<PendingImport>,
    window: Window,
    echo: EchoFilter,
    warn: Throttle,
}

/// Waits for the oldest import's confirm.
///
/// # Cancel safety
///
/// Cancel safe: it only polls the confirm, which stays in the queue.
fn front_confirm(
    imports: &mut VecDeque<PendingImport>,
) -> impl Future<Output = Result<bool, tern_client::Error>> + '_ {
    poll_fn(move |cx| match imports.front_mut() {
        Some(PendingImport {
            confirm: Some(c), ..
        }) => Pin::new(c).poll(cx).map(|r| r.map(|_| true)),
        Some(_) => Poll::Ready(Ok(false)),
        None => Poll::Pending,
    })
}

fn spawn_ack(delivery: Delivery) {
    tokio::spawn(async move {
        // A failed ack (the connection to the broker dropped, or the delivery timed
        // out and was redelivered) means the message is delivered again: at least once.
        if let Err(e) = delivery.ack().await {
            tracing::debug!(error = %e, "acking an export delivery failed");
        }
    });
}

impl Bridge {
    async fn run(mut self, server: Server) {
        let Some(tern) = self.connect_tern(&server).await else {
            return;
        };
        let Some((mut deliveries, mut messages)) = self.open_exports(&tern).await else {
            return;
        };
        loop {
            let room = self.window.len() < EXPORT_WINDOW;
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                event = self.from_mqtt.recv(), if self.imports.len() < IMPORT_WINDOW => match event {
                    Some(event) => self.on_mqtt(&tern, event).await,
                    None => break,
                },
                confirmed = front_confirm(&mut self.imports), if !self.imports.is_empty() => {
                    self.on_confirmed(confirmed);
                }
                item = deliveries.next(), if self.connected && room && !deliveries.is_empty() => {
                    if let Some((i, d)) = item {
                        self.on_delivery(i, d);
                    }
                }
                item = messages.next(), if !messages.is_empty() => {
                    if let Some((i, m)) = item {
                        self.on_message(i, &m);
                    }
                }
                () = tokio::time::sleep(RETRY), if self.connected && !self.window.waiting.is_empty() => {
                    self.flush();
                }
            }
        }
        // Unconfirmed imports are not acked: the MQTT broker sends them again. Export
        // deliveries not acked go back to their queues.
        let _ = tokio::time::timeout(Duration::from_secs(1), tern.close()).await;
    }

    async fn connect_tern(&self, server: &Server) -> Option<Client> {
        self.retry("cannot connect to the broker itself", || {
            let local = server.clone();
            Client::builder()
                .name(format!("bridge:{}", self.cfg.name))
                .connect_with("local", move || {
                    let pipe = local.connect_local();
                    async move { Ok(pipe) }
                })
        })
        .await
    }

    /// Declares the export queues and starts consuming and subscribing, retrying
    /// until it works or the server stops.
    async fn open_exports(&self, tern: &Client) -> Option<(Deliveries, Messages)> {
        self.retry("cannot set up the exports", || self.try_open_exports(tern))
            .await
    }

    /// Runs `attempt` until it succeeds, backing off between tries and warning once
    /// that it fails (`what`); `None` once the server stops.
    async fn retry<T, E, F>(&self, what: &str, mut attempt: impl FnMut() -> F) -> Option<T>
    where
        E: std::fmt::Display,
        F: std::future::Future<Output = Result<T, E>>,
    {
        let mut backoff = Backoff::new(self.cfg.reconnect_delay_min, self.cfg.reconnect_delay_max);
        let mut logged = false;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                result = attempt() => match result {
                    Ok(v) => return Some(v),
                    Err(e) if !logged => {
                        logged = true;
                        tracing::warn!(bridge = %self.cfg.name, error = %e, "{what}; retrying");
                    }
                    Err(_) => {}
                },
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn try_open_exports(
        &self,
        tern: &Client,
    ) -> Result<(Deliveries, Messages), tern_client::Error> {
        let mut deliveries = SelectAll::new();
        let mut messages = SelectAll::new();
        for (i, export) in self.cfg.exports.iter().enumerate() {
            if export.qos == 0 {
                let sub = tern.subscribe(&export.route.tern_pattern()).await?;
                messages.push(sub.map(move |m| (i, m)).boxed());
            } else {
                declare_export_queue(tern, &self.cfg.name, export).await?;
                let prefetch = u32::try_from(EXPORT_WINDOW).unwrap_or(u32::MAX);
                let consumer = tern.consume(&export.queue).prefetch(prefetch).await?;
                deliveries.push(consumer.map(move |d| (i, d)).boxed());
            }
        }
        Ok((deliveries, messages))
    }

    async fn on_mqtt(&mut self, tern: &Client, event: FromMqtt) {
        match event {
            FromMqtt::Connected => {
                self.connected = true;
                self.epoch += 1;
                self.flush();
            }
            FromMqtt::Disconnected => {
                self.connected = false;
                self.window.requeue();
            }
            FromMqtt::Publish(p) => self.import(tern, p).await,
            FromMqtt::PubAck(pkid) => {
                if let Some(o) = self.window.inflight.remove(&pkid) {
                    self.status.messages_out.fetch_add(1, Ordering::Relaxed);
                    spawn_ack(o.delivery);
                }
            }
            FromMqtt::Sent(pkid) => match self.window.unassigned.pop_front() {
                Some(o) => {
                    if let Some(old) = self.window.inflight.insert(pkid, o) {
                        // rumqttc reuses an id only once its PUBACK came; not seeing that
                        // PUBACK here would be a bug. Send the message again rather than
                        // lose it.
                        tracing::warn!(bridge = %self.cfg.name, pkid, "packet id reused before its PUBACK; sending that message again");
                        self.window.waiting.push_front(old);
                    }
                }
                None => tracing::debug!(bridge = %self.cfg.name, pkid, "a packet id for no export"),
            },
        }
    }

    /// One MQTT message into tern.
    async fn import(&mut self, tern: &Client, p: rumqttc::Publish) {
        let epoch = self.epoch;
        let skip = |publish| PendingImport {
            publish,
            epoch,
            confirm: None,
        };
        let Some(route) = self
            .cfg
            .imports
            .iter()
            .find(|i| i.route.matches_topic(&p.topic))
            .map(|i| i.route.clone())
        else {
            // From a subscription of an earlier configuration that the broker kept in
            // the session: acked and dropped.
            tracing::debug!(bridge = %self.cfg.name, topic = %p.topic, "no import for this topic");
            self.imports.push_back(skip(p));
            return;
        };
        if self.echo.take(&p.topic, &p.payload) {
            self.imports.push_back(skip(p));
            return;
        }
        let Some(subject) = route.import(&p.topic) else {
            self.imports.push_back(skip(p));
            return;
        };
        let mut headers = Headers::new();
        headers.append("mqtt_topic", p.topic.as_str());
        headers.append(
            "mqtt_qos",
            match p.qos {
                QoS::AtMostOnce => "0",
                QoS::AtLeastOnce => "1",
                QoS::ExactlyOnce => "2",
            },
        );
        headers.append("mqtt_retain", if p.retain { "true" } else { "false" });
        headers.append("bridge", self.cfg.name.as_str());
        let publish = tern.publish(&subject, p.payload.clone()).headers(headers);
        if p.qos == QoS::AtMostOnce {
            match publish.await {
                Ok(()) => {
                    self.status.messages_in.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => self.dropped(&p.topic, &e.to_string()),
            }
            return;
        }
        match publish.qos(Qos::AtLeastOnce).send().await {
            Ok(confirm) => self.imports.push_back(PendingImport {
                publish: p,
                epoch,
                confirm: Some(confirm),
            }),
            Err(e) => {
                // Refused before sending (a subject over the limits, a message over the
                // frame size): it never will be accepted, so it is acked and dropped.
                self.dropped(&p.topic, &e.to_string());
                self.imports.push_back(skip(p));
            }
        }
    }

    fn dropped(&mut self, topic: &str, why: &str) {
        if let Some(earlier) = self.warn.allow() {
            tracing::warn!(bridge = %self.cfg.name, topic, earlier_drops = earlier, "MQTT message not imported: {why}");
        }
    }

    /// The oldest import's confirm arrived: ack it to MQTT (acks go in the order the
    /// messages came).
    fn on_confirmed(&mut self, confirmed: Result<bool, tern_client::Error>) {
        let Some(import) = self.imports.pop_front() else {
            return;
        };
        match confirmed {
            Ok(true) => {
                self.status.messages_in.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            // Stopping: not acked, so the MQTT broker sends it again.
            Err(tern_client::Error::Closed) => return,
            Err(e) => self.dropped(&import.publish.topic, &e.to_string()),
        }
        if import.epoch != self.epoch || !self.connected {
            // The connection it came on is gone; the broker sends it again.
            return;
        }
        let mqtt = &self.mqtt;
        if self.gate.send(|| mqtt.try_ack(&import.publish)).is_err() {
            tracing::debug!(bridge = %self.cfg.name, "an MQTT ack could not be sent; the broker will send the message again");
        }
    }

    /// Whether `msg` came in through this bridge (and must not go out through it).
    fn imported_here(&self, msg: &Message) -> bool {
        msg.headers.get("bridge") == Some(self.cfg.name.as_str())
    }

    /// The MQTT topic for `msg` on export `i`, or why there is none.
    fn topic_for(&self, i: usize, msg: &Message) -> Result<(String, bool), String> {
        let export = self
            .cfg
            .exports
            .get(i)
            .ok_or_else(|| "no such export".to_string())?;
        match export.route.export(&msg.subject) {
            Some(Ok(topic)) if rumqttc::valid_topic(&topic) => Ok((topic, export.retain)),
            Some(Ok(topic)) => Err(format!(
                "'{topic}' has '+' or '#', which MQTT topics cannot"
            )),
            Some(Err(e)) => Err(e.to_string()),
            None => Err(format!("'{}' does not match the export", msg.subject)),
        }
    }

    /// [`Self::topic_for`], remembered for the echo filter when one of this bridge's
    /// imports subscribes to that topic. `None` when the message cannot go out (a
    /// warning says why, rate-limited).
    fn export_topic(&mut self, i: usize, msg: &Message) -> Option<(String, bool)> {
        match self.topic_for(i, msg) {
            Ok((topic, retain)) => {
                if self
                    .cfg
                    .imports
                    .iter()
                    .any(|im| im.route.matches_topic(&topic))
                {
                    self.echo.record(&topic, &msg.payload);
                }
                Some((topic, retain))
            }
            Err(why) => {
                if let Some(earlier) = self.warn.allow() {
                    tracing::warn!(bridge = %self.cfg.name, subject = %msg.subject, earlier_drops = earlier, "tern message not exported: {why}");
                }
                None
            }
        }
    }

    /// A message from an export queue: publish it at QoS 1.
    fn on_delivery(&mut self, i: usize, delivery: Delivery) {
        if self.imported_here(&delivery.message) {
            spawn_ack(delivery);
            return;
        }
        let Some((topic, retain)) = self.export_topic(i, &delivery.message) else {
            spawn_ack(delivery);
            return;
        };
        let seq = self.window.next_seq;
        self.window.next_seq += 1;
        self.window.waiting.push_back(Outbound {
            seq,
            topic,
            payload: delivery.message.payload.clone(),
            retain,
            delivery,
        });
        self.flush();
    }

    /// A message from a QoS 0 export: publish it if connected, else drop it.
    fn on_message(&mut self, i: usize, msg: &Message) {
        if self.imported_here(msg) || !self.connected {
            return;
        }
        let Some((topic, retain)) = self.export_topic(i, msg) else {
            return;
        };
        let mqtt = &self.mqtt;
        let payload = msg.payload.to_vec();
        if self
            .gate
            .send(|| mqtt.try_publish(topic, QoS::AtMostOnce, retain, payload))
            .is_ok()
        {
            self.status.messages_out.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends waiting QoS 1 exports while the gate takes them.
    fn flush(&mut self) {
        while self.connected {
            let Some(o) = self.window.waiting.pop_front() else {
                return;
            };
            let mqtt = &self.mqtt;
            let sent = self.gate.send(|| {
                mqtt.try_publish(
                    o.topic.clone(),
                    QoS::AtLeastOnce,
                    o.retain,
                    o.payload.to_vec(),
                )
            });
            match sent {
                Ok(()) => self.window.unassigned.push_back(o),
                Err(Refused::Closed | Refused::Full) => {
                    // Retried on the next event or tick (closed: the driver is about
                    // to report the disconnect).
                    self.window.waiting.push_front(o);
                    return;
                }
            }
        }
    }
}

/// Declares export `export`'s queue. One left by an earlier configuration with other
/// bindings or options is replaced, its waiting messages moved over.
async fn declare_export_queue(
    tern: &Client,
    bridge: &str,
    export: &tern_broker::config::bridge::Export,
) -> Result<(), tern_client::Error> {
    let config = QueueConfig::new(export.queue.as_str())
        .bind(export.route.tern_pattern())
        .max_length(export.buffer, Overflow::DropHead)
        .ack_timeout(EXPORT_ACK_TIMEOUT)
        .max_deliver(EXPORT_MAX_DELIVER);
    let holding = format!("{}.old", export.queue);
    match tern.declare_queue(&config).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::QueueExists) => {
            tern.declare_queue(&QueueConfig::new(holding.as_str()))
                .await?;
            tern.move_messages(&export.queue, &holding, None).await?;
            tern.delete_queue(&export.queue).await?;
            tern.declare_queue(&config).await?;
            tracing::warn!(
                bridge,
                queue = %export.queue,
                "the export queue had the settings of an earlier configuration; recreated it, keeping its messages"
            );
        }
        Err(e) => return Err(e),
    }
    // Left by the step above, now or in an earlier run that stopped half-way.
    match tern.queue_info(&holding).await {
        Ok(_) => {
            tern.move_messages(&holding, &export.queue, None).await?;
            tern.delete_queue(&holding).await?;
        }
        Err(e) if e.code() == Some(ErrorCode::QueueNotFound) => {}
        Err(e) => return Err(e),
    }
    Ok(())
}
