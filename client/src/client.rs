//! The client handle and its options.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tern_codec::{Ping, Welcome, DEFAULT_MAX_FRAME_SIZE};
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::connection;
use crate::consumer::ConsumeBuilder;
use crate::outbound::{Link, WriteBuffer};
use crate::publish::Publish;
use crate::servers::Servers;
use crate::state::{Request, State};
use crate::subscription::SubscribeBuilder;
use crate::transport::{AsyncStream, Connector, TlsOptions};
use crate::Error;

/// How a client connects and behaves. Built with [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(crate) name: String,
    pub(crate) reconnect: bool,
    pub(crate) reconnect_delay_min: Duration,
    pub(crate) reconnect_delay_max: Duration,
    pub(crate) max_reconnects: Option<u32>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) write_buffer: usize,
    pub(crate) subscription_capacity: usize,
    pub(crate) max_inflight: usize,
    pub(crate) credentials: Option<tern_codec::Credentials>,
    pub(crate) tls: Option<TlsOptions>,
    pub(crate) shuffle_servers: bool,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            name: "tern-client".into(),
            reconnect: true,
            reconnect_delay_min: Duration::from_millis(50),
            reconnect_delay_max: Duration::from_secs(5),
            max_reconnects: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            write_buffer: 8 * 1024 * 1024,
            subscription_capacity: 64 * 1024,
            max_inflight: 16 * 1024,
            credentials: None,
            tls: None,
            shuffle_servers: true,
        }
    }
}

impl ClientBuilder {
    /// A name for the server's logs and connection list.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Whether to reconnect (and re-subscribe) after the connection drops. Default on.
    /// A cluster node's `not_leader` redirect is followed either way.
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }

    /// Bounds of the exponential back-off between reconnect attempts.
    /// Default 50 ms to 5 s.
    pub fn reconnect_delay(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_delay_min = min;
        self.reconnect_delay_max = max;
        self
    }

    /// Give up (and close) after this many failed reconnect attempts in a row.
    /// Default: never give up.
    pub fn max_reconnects(mut self, attempts: u32) -> Self {
        self.max_reconnects = Some(attempts);
        self
    }

    /// Time allowed to connect and complete the handshake. Default 5 s.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Time allowed for the server to answer a subscribe, unsubscribe or flush.
    /// Default 10 s.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// How often to ping an otherwise quiet server; two silent intervals mean the
    /// connection is dead. Default 30 s.
    pub fn ping_interval(mut self, t: Duration) -> Self {
        self.ping_interval = t;
        self
    }

    /// Bytes of unsent frames to hold before `publish` waits (connected) or fails
    /// with [`Error::Disconnected`] (while reconnecting). Default 8 MiB.
    pub fn write_buffer(mut self, bytes: usize) -> Self {
        self.write_buffer = bytes;
        self
    }

    /// Messages each subscription holds for the application before it drops (and
    /// counts, see [`crate::Subscription::dropped`]) further ones. Default 65,536.
    pub fn subscription_capacity(mut self, messages: usize) -> Self {
        self.subscription_capacity = messages.max(1);
        self
    }

    /// Most confirmed (QoS 1/2) publishes awaiting their confirm at once; a further
    /// publish waits for a slot. Default 16,384.
    pub fn max_inflight(mut self, publishes: usize) -> Self {
        self.max_inflight = publishes.max(1);
        self
    }

    /// Logs in as `user` with `password`.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(tern_codec::Credentials::Password {
            user: user.into().into(),
            password: password.into().into(),
        });
        self
    }

    /// Logs in with a bearer token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Some(tern_codec::Credentials::Token(token.into().into()));
        self
    }

    /// Whether to try a seed list in a random order (default), so that many clients
    /// spread over a cluster's nodes, or in the order given (the first that answers
    /// is used: put a preferred node first).
    pub fn shuffle_servers(mut self, on: bool) -> Self {
        self.shuffle_servers = on;
        self
    }

    /// Connects with TLS (also implied by a `tls://` address): whom to trust and,
    /// for mutual TLS, the client's certificate.
    pub fn tls(mut self, options: TlsOptions) -> Self {
        self.tls = Some(options);
        self
    }

    /// Connects to `addrs` — `host:port`, or `tls://host:port` for TLS — and completes
    /// the handshake.
    ///
    /// `addrs` may be a comma-separated seed list (`a:7400,b:7400,c:7400`): the client
    /// connects to the first server that answers, and after a lost connection goes on
    /// with the next. In a cluster it also moves to the node that runs the queues when
    /// another node says so (`not_leader`), learning its address: consumers and queue
    /// requests go where they can be served, and unconfirmed publishes are sent again
    /// there (with their producer sequence, so that none is stored twice).
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when no server can be reached, [`Error::Refused`] when one
    /// refuses the handshake (wrong credentials, say).
    pub async fn connect(self, addrs: impl Into<String>) -> Result<Client, Error> {
        let servers = Servers::parse(&addrs.into(), self.tls.as_ref(), self.shuffle_servers)?;
        self.connect_via(servers).await
    }

    /// Connects over streams that `connect` opens (for the first connection and every
    /// reconnect): an in-process pipe to an embedded broker, a tunnel, a test double.
    /// `name` stands for the server in errors and logs.
    ///
    /// # Errors
    ///
    /// As [`ClientBuilder::connect`].
    pub async fn connect_with<F, Fut, S>(
        self,
        name: impl Into<String>,
        connect: F,
    ) -> Result<Client, Error>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
        S: AsyncStream,
    {
        self.connect_via(Servers::custom(name.into(), Connector::custom(connect)))
            .await
    }

    async fn connect_via(self, servers: Servers) -> Result<Client, Error> {
        let inner = Arc::new(Inner {
            servers: Mutex::new(servers),
            generation: tokio::sync::watch::Sender::new(0),
            out: WriteBuffer::new(self.write_buffer),
            state: Mutex::new(State::default()),
            next_id: AtomicU32::new(1),
            next_sid: AtomicU32::new(1),
            max_frame_size: AtomicU32::new(DEFAULT_MAX_FRAME_SIZE),
            inflight: Arc::new(Semaphore::new(self.max_inflight)),
            inbox_prefix: format!("_INBOX.{:016x}", fastrand::u64(..)),
            inbox_ready: tokio::sync::OnceCell::new(),
            next_token: AtomicU64::new(1),
            closing: CancellationToken::new(),
            driver: Mutex::new(None),
            options: self,
        });
        let conn = connection::establish_any(&inner).await?;
        inner.connected(&conn.welcome);
        inner.out.set_link(Link::Up);
        let driver = tokio::spawn(connection::drive(Arc::clone(&inner), conn));
        *lock(&inner.driver) = Some(driver);
        Ok(Client {
            _guard: Arc::new(CloseOnDrop(inner.closing.clone())),
            inner,
        })
    }
}

/// Shared by the [`Client`] handles and the connection driver.
#[derive(Debug)]
pub(crate) struct Inner {
    /// The seed list and what was learned, and which one is connected (or tried).
    servers: Mutex<Servers>,
    /// Counts reconnections: a request that must go to another server waits for it to
    /// change.
    pub generation: tokio::sync::watch::Sender<u64>,
    pub options: ClientBuilder,
    pub out: WriteBuffer,
    /// Requests in flight and subscriptions. A std `Mutex`: held for map updates only,
    /// never across an `.await`.
    state: Mutex<State>,
    next_id: AtomicU32,
    next_sid: AtomicU32,
    /// The current server's limit, from its WELCOME.
    max_frame_size: AtomicU32,
    /// Slots for unconfirmed publishes.
    pub inflight: Arc<Semaphore>,
    /// This client's inbox: replies to its requests arrive on `<prefix>.<token>`.
    pub inbox_prefix: String,
    /// Set once the inbox subscription exists.
    pub inbox_ready: tokio::sync::OnceCell<()>,
    next_token: AtomicU64,
    /// Cancelled by [`Client::close`] or when the last handle is dropped.
    pub closing: CancellationToken,
    driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single map or field operation, so a poisoned
    // lock still guards consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn servers(&self) -> MutexGuard<'_, Servers> {
        lock(&self.servers)
    }

    /// The server connected to (or tried), as errors and logs name it.
    pub fn addr(&self) -> String {
        self.servers().current().name
    }

    /// A fresh correlation id; never 0, which means "no answer wanted".
    pub fn next_id(&self) -> u32 {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// A fresh inbox token for a request.
    pub fn next_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    pub fn next_sid(&self) -> u32 {
        self.next_sid.fetch_add(1, Ordering::Relaxed)
    }

    pub fn max_frame_size(&self) -> u32 {
        self.max_frame_size.load(Ordering::Relaxed)
    }

    pub fn connected(&self, welcome: &Welcome) {
        self.max_frame_size
            .store(welcome.max_frame_size, Ordering::Relaxed);
    }

    /// The client is finished: nothing more can be sent, everything waiting fails.
    pub fn shut(&self) {
        self.closing.cancel();
        self.inflight.close();
        self.out.set_link(Link::Closed);
        self.state().close();
    }

    /// Sends a request frame and waits for its answer, within the request timeout.
    pub async fn request<T>(
        &self,
        frame: &impl tern_codec::Encode,
        id: u32,
        request: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Request,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.state().add_request(id, request(tx));
        if let Err(e) = self.out.push_control(frame) {
            self.state().cancel_request(id);
            return Err(e);
        }
        match tokio::time::timeout(self.options.request_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_dropped)) => Err(Error::Closed),
            Err(_elapsed) => {
                self.state().cancel_request(id);
                Err(Error::Timeout)
            }
        }
    }
}

/// Closes the client when the last [`Client`] handle (including those held by
/// subscriptions) is dropped. Not held by the driver, so it never keeps itself alive.
#[derive(Debug)]
struct CloseOnDrop(CancellationToken);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A connection to a tern server. Cheap to clone; clones share the connection.
///
/// The connection is kept up in the background: when it drops, the client reconnects
/// with back-off and re-establishes its subscriptions (see [`ClientBuilder`]).
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    _guard: Arc<CloseOnDrop>,
}

impl Client {
    /// Connects with default options.
    ///
    /// # Errors
    ///
    /// As [`ClientBuilder::connect`].
    pub async fn connect(addr: impl Into<String>) -> Result<Client, Error> {
        ClientBuilder::default().connect(addr).await
    }

    /// Options for a new connection.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Publishes `payload` on `subject` (at most once). Add headers or a reply-to on
    /// the returned builder, then `.await` it.
    ///
    /// Awaiting it returns once the message is in the client's write buffer, which is
    /// usually at once; it waits only while the buffer is full. Use [`Client::flush`]
    /// to know the server has it.
    pub fn publish<'a>(
        &'a self,
        subject: &'a str,
        payload: impl Into<bytes::Bytes>,
    ) -> Publish<'a> {
        Publish::new(self, subject, payload.into())
    }

    /// Subscribes to `pattern`; `.group(..)` on the returned builder makes it a queue
    /// subscription. Awaiting it returns once the server has the subscription, so
    /// every message published after that is delivered to it (in a cluster: published
    /// through the same node; the other nodes learn of it a moment later).
    pub fn subscribe<'a>(&'a self, pattern: &'a str) -> SubscribeBuilder<'a> {
        SubscribeBuilder::new(self, pattern)
    }

    /// Subscribes as a member of queue group `group`: each message on `pattern` goes
    /// to one member of the group.
    ///
    /// # Errors
    ///
    /// As [`SubscribeBuilder`].
    pub async fn queue_subscribe(
        &self,
        pattern: &str,
        group: &str,
    ) -> Result<crate::Subscription, Error> {
        self.subscribe(pattern).group(group).await
    }

    /// Consumes from a durable queue; set the prefetch or the acknowledgement mode on
    /// the returned builder, then `.await` it.
    pub fn consume<'a>(&'a self, queue: &'a str) -> ConsumeBuilder<'a> {
        ConsumeBuilder::new(self, queue)
    }

    /// Errors the server sent that answer no request of this client, oldest first, and
    /// forgets them: most often a publish sent without waiting for an answer (QoS 0)
    /// that the server refused — a permission it lacks, a limit it broke. The newest
    /// 64 are kept until taken; each is also logged as it comes.
    ///
    /// The server answers in order, so once [`Client::flush`] has returned, the
    /// refusal of every publish sent before it is here.
    pub fn take_errors(&self) -> Vec<Error> {
        self.inner
            .state()
            .take_unanswered()
            .into_iter()
            .map(Error::from)
            .collect()
    }

    /// Waits until the server has processed everything sent before this call.
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionLost`] if the connection dropped first (what was buffered may
    /// not have arrived), [`Error::Timeout`], or [`Error::Closed`].
    pub async fn flush(&self) -> Result<(), Error> {
        let id = self.inner.next_id();
        self.inner.request(&Ping { id }, id, Request::Ping).await
    }

    /// Sends what is buffered, waits for the server to process it, and closes the
    /// connection. Subscriptions end. Other clones of this client are closed too.
    ///
    /// # Errors
    ///
    /// The final flush failed; the client is closed anyway.
    pub async fn close(&self) -> Result<(), Error> {
        let flushed = self.flush().await;
        self.inner.closing.cancel();
        let driver = lock(&self.inner.driver).take();
        if let Some(driver) = driver {
            let _ = driver.await;
        }
        self.inner.shut();
        flushed
    }

    /// Whether the client has been closed (or gave up reconnecting).
    pub fn is_closed(&self) -> bool {
        self.inner.closing.is_cancelled()
    }

    /// The largest frame the server accepts, from its handshake.
    pub fn max_frame_size(&self) -> u32 {
        self.inner.max_frame_size()
    }

    /// The servers this client may connect to, in the order it tries them: the seeds it
    /// was given, then the cluster's nodes it learned (each connection asks its node
    /// for the others, and a `not_leader` answer names one).
    pub fn servers(&self) -> Vec<String> {
        self.inner.servers().names()
    }
}
