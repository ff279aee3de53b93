//! The listener: accepts connections and shuts down gracefully.
//!
//! Shutdown follows tokio-util's `CancellationToken` + `TaskTracker` pattern: stop
//! accepting, cancel every connection (each sends `shutting_down`, flushes what is
//! buffered and closes), wait for the connection tasks under a timeout, then flush the
//! store.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_codec::{Encode, ErrorCode, ErrorFrame};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bridge::BridgeStatus;
use crate::config::{Config, Listen};
use crate::durable::Durable;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::session;
use crate::shared::{lock, Shared};
use crate::stats::StatsSnapshot;
use crate::Error;

/// One live connection, as reported by [`Server::connections`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub id: u64,
    /// The peer's address, or `local` for an in-process connection.
    pub peer: String,
    /// The name the client gave in HELLO.
    pub name: String,
    /// Bytes queued for this connection and not yet written to its socket.
    pub pending_bytes: usize,
    /// Messages dropped for this connection by the slow-consumer policy.
    pub dropped: u64,
}

/// A broker: its store, router and counters. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// Opens the data directory, recovers every queue from it and starts the journal.
    /// Serves nothing yet.
    ///
    /// Blocks the calling thread on file I/O while the store is read.
    ///
    /// # Errors
    ///
    /// The store cannot be opened or read (see [`tern_storage::StorageError`]).
    pub async fn open(config: Config) -> Result<Self, Error> {
        let tls = match &config.tls {
            Some(t) => Some(crate::tls::Tls::new(t.files.clone())?),
            None => None,
        };
        let metrics = Metrics::new();
        let router = Arc::new(Router::default());
        let shutdown = CancellationToken::new();
        let durable = Durable::open(
            &config,
            metrics.durable(),
            Arc::clone(&router),
            shutdown.clone(),
        )
        .await?;
        let bridges = config
            .bridges
            .iter()
            .map(|b| {
                Arc::new(BridgeStatus {
                    name: b.name.clone(),
                    ..BridgeStatus::default()
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            config,
            router,
            stats: Arc::default(),
            server_id: format!("{:016x}", fastrand::u64(..)),
            durable,
            metrics,
            tls,
            per_ip: Mutex::new(HashMap::new()),
            bridges,
            tasks: TaskTracker::new(),
            started: std::time::Instant::now(),
            listeners: Mutex::new(Vec::new()),
            shutdown,
            next_connection_id: AtomicU64::new(1),
            connections: Mutex::new(HashMap::new()),
        });
        // Warned once the server is sure to start, so that a failed start is one line.
        if !shared.config.auth.has_users() {
            tracing::warn!("no users configured: every client is anonymous with every permission");
        } else if shared.config.auth.allows_anonymous() {
            tracing::warn!("allow_anonymous = true: clients without credentials get the [anonymous] permissions");
        }
        Ok(Self { shared })
    }

    /// Counters since start.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Live connections, in no particular order.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared
            .connections()
            .iter()
            .map(|(id, c)| ConnectionInfo {
                id: *id,
                peer: c.peer.clone(),
                name: c.name.clone(),
                pending_bytes: c.outbound.pending_bytes(),
                dropped: c.outbound.dropped(),
            })
            .collect()
    }

    /// Number of subscriptions on the server.
    pub fn subscription_count(&self) -> usize {
        self.shared.router.subscription_count()
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Cancelled when the server starts shutting down: services started with
    /// [`Server::spawn_service`] stop on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// Runs a component built on the broker (the daemon's MQTT bridges) as a task of the
    /// server: it must end once [`Server::shutdown_token`] is cancelled, and shutdown
    /// waits for it, under the shutdown timeout, as for a connection.
    pub fn spawn_service<F>(&self, service: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shared.tasks.spawn(service);
    }

    /// The status of the configured MQTT bridge `name`, which the bridge updates.
    pub fn bridge_status(&self, name: &str) -> Option<Arc<BridgeStatus>> {
        self.shared.bridges.iter().find(|b| b.name == name).cloned()
    }

    /// Number of queues on the server.
    pub fn queue_count(&self) -> usize {
        self.shared.durable.queues.len()
    }

    /// Opens an in-process connection to this server: the broker's own components (the
    /// MQTT bridge) speak the tern protocol over it with the ordinary client. It is
    /// trusted — no credentials, every permission — and does not count against the
    /// connection limit.
    pub fn connect_local(&self) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let (rd, wr) = tokio::io::split(server);
        let peer = session::Peer {
            addr: "local".into(),
            trusted: true,
            certificate: None,
        };
        tokio::spawn(session::serve(rd, wr, peer, Arc::clone(&self.shared)));
        client
    }

    /// The Prometheus text exposition, as `GET /metrics` answers it.
    pub async fn metrics_text(&self) -> String {
        crate::metrics::exposition::render(&self.shared.metrics, &self.shared).await
    }

    /// Serves `GET /metrics` on `listener` until the server shuts down.
    pub async fn serve_metrics(&self, listener: TcpListener) {
        if let Ok(addr) = listener.local_addr() {
            self.shared.add_listener(format!("http://{addr}/metrics"));
        }
        crate::metrics::exposition::serve(Arc::clone(&self.shared), listener).await;
    }

    /// Serves `listener` until `shutdown` completes, then shuts down gracefully.
    ///
    /// # Errors
    ///
    /// The store could not be flushed at shutdown.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        self.serve_with(Some(listener), None, shutdown).await
    }

    /// As [`Server::serve`], with a TLS listener too (the server must have been opened
    /// with a TLS configuration), and the plaintext one optional.
    ///
    /// # Errors
    ///
    /// As [`Server::serve`]; or a TLS listener without a TLS configuration.
    pub async fn serve_with(
        &self,
        listener: Option<TcpListener>,
        tls_listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let shared = &self.shared;
        if let Some(listener) = &listener {
            let addr = listener.local_addr()?;
            tracing::info!("listening on {addr}");
            shared.add_listener(format!("tcp://{addr}"));
            shared.durable.advertise(addr);
            if !addr.ip().is_loopback() && shared.config.auth.has_passwords() {
                tracing::warn!(
                    "users log in with passwords on the plaintext listener {addr}, which \
                     carries them in the clear: serve remote clients over TLS and set \
                     listen to a loopback address or off"
                );
            }
        }
        let tls = match (&tls_listener, &shared.tls) {
            (None, _) => None,
            (Some(l), Some(tls)) => {
                let addr = l.local_addr()?;
                tracing::info!(mutual = tls.mutual(), "listening for TLS on {addr}");
                shared.add_listener(format!("tls://{addr}"));
                if listener.is_none() {
                    shared.durable.advertise(addr);
                }
                Some(tls)
            }
            (Some(_), None) => {
                return Err(Error::Shutdown(
                    "a TLS listener needs a TLS configuration (tls.cert, tls.key)".into(),
                ))
            }
        };
        let tracker = &shared.tasks;
        let slots = Arc::new(Semaphore::new(shared.config.limits.max_connections));
        let refusals = Arc::new(Semaphore::new(MAX_TLS_REFUSALS));
        tokio::pin!(shutdown);
        loop {
            let (socket, peer, secure) = tokio::select! {
                accepted = accept(listener.as_ref()) => match accepted {
                    Ok((s, p)) => (s, p, false),
                    Err(e) => {
                        backoff_after_accept_error(e).await;
                        continue;
                    }
                },
                accepted = accept(tls_listener.as_ref()) => match accepted {
                    Ok((s, p)) => (s, p, true),
                    Err(e) => {
                        backoff_after_accept_error(e).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let admission = match self.admit(&slots, peer) {
                Ok(a) => a,
                Err(refusal) => {
                    match (secure, tls) {
                        // The reason is told inside TLS (plain bytes on a TLS port read
                        // as a corrupt record), but only by a few handshakes at once: a
                        // flood of refused clients must not buy itself CPU.
                        (true, Some(tls)) => match Arc::clone(&refusals).try_acquire_owned() {
                            Ok(permit) => {
                                let acceptor = tls.acceptor();
                                let timeout = shared.config.limits.handshake_timeout;
                                tracker.spawn(async move {
                                    if let Ok(Ok(stream)) =
                                        tokio::time::timeout(timeout, acceptor.accept(socket)).await
                                    {
                                        refuse(stream, refusal).await;
                                    }
                                    drop(permit);
                                });
                            }
                            Err(_) => drop(socket),
                        },
                        _ => {
                            tracker.spawn(refuse(socket, refusal));
                        }
                    }
                    continue;
                }
            };
            match (secure, tls) {
                (true, Some(tls)) => {
                    let acceptor = tls.acceptor();
                    tracker.spawn(serve_tls(
                        socket,
                        peer,
                        acceptor,
                        Arc::clone(shared),
                        admission,
                    ));
                }
                _ => {
                    tracker.spawn(session::serve_tcp(
                        socket,
                        peer,
                        Arc::clone(shared),
                        admission,
                    ));
                }
            }
        }
        drop(listener);
        drop(tls_listener);
        tracing::info!("shutting down");
        shared.shutdown.cancel();
        tracker.close();
        if tokio::time::timeout(shared.config.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "connections did not close within {}; dropping them",
                humantime::format_duration(shared.config.shutdown_timeout)
            );
        }
        shared.durable.stop().await?;
        tracing::info!("shut down");
        Ok(())
    }
}

/// A connection's place under the connection limits, released when it ends.
struct Admission {
    _slot: OwnedSemaphorePermit,
    _ip: IpSlot,
}

/// One connection counted against its address's limit.
struct IpSlot {
    ip: IpAddr,
    shared: Arc<Shared>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = lock(&self.shared.per_ip);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Server {
    /// Counts a new connection against the total and per-address limits.
    fn admit(&self, slots: &Arc<Semaphore>, peer: SocketAddr) -> Result<Admission, String> {
        let shared = &self.shared;
        let limits = &shared.config.limits;
        let Ok(slot) = Arc::clone(slots).try_acquire_owned() else {
            shared
                .stats
                .connections_rejected
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "connection refused: at the connection limit");
            return Err(format!(
                "the server is at its limit of {} connections; try again later",
                limits.max_connections
            ));
        };
        let ip = peer.ip();
        {
            let mut per_ip = lock(&shared.per_ip);
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= limits.max_connections_per_ip {
                shared
                    .stats
                    .connections_rejected_per_ip
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "connection refused: too many from this address");
                return Err(format!(
                    "{ip} already has {} connections, the limit per address",
                    limits.max_connections_per_ip
                ));
            }
            *n += 1;
        }
        Ok(Admission {
            _slot: slot,
            _ip: IpSlot {
                ip,
                shared: Arc::clone(shared),
            },
        })
    }

    /// Re-reads the TLS certificate files (on SIGHUP): new connections get the new
    /// certificate, open ones keep theirs.
    ///
    /// # Errors
    ///
    /// The files are unusable (the old ones stay in force). Without TLS, nothing is
    /// done.
    pub fn reload_tls(&self) -> Result<(), crate::tls::TlsError> {
        match &self.shared.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }
}

/// Accepts on an optional listener; pends forever when there is none.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// After an accept error (out of file descriptors, most likely): back off instead of
/// spinning, and keep serving the connections we have.
async fn backoff_after_accept_error(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Completes a TLS handshake (within the handshake timeout) and serves the connection.
async fn serve_tls(
    socket: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    admission: Admission,
) {
    let _ = socket.set_nodelay(true);
    let timeout = shared.config.limits.handshake_timeout;
    let stream = match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            shared
                .stats
                .count_protocol_error(ErrorCode::HandshakeTimeout);
            return;
        }
        Err(_) => {
            shared
                .stats
                .count_protocol_error(ErrorCode::HandshakeTimeout);
            return;
        }
    };
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| crate::tls::certificate_identity(leaf));
    let (rd, wr) = tokio::io::split(stream);
    let peer = session::Peer {
        addr: peer.to_string(),
        trusted: false,
        certificate,
    };
    session::serve(rd, wr, peer, shared).await;
    drop(admission);
}

/// Most TLS handshakes done at once only to tell refused clients why.
const MAX_TLS_REFUSALS: usize = 16;

/// Tells a client refused at a connection limit why it is being closed.
async fn refuse(mut socket: impl AsyncWrite + Unpin, reason: String) {
    let err = ErrorFrame::new(0, ErrorCode::TooManyConnections, reason);
    let mut buf = bytes::BytesMut::new();
    if err.encode(&mut buf).is_ok() {
        let write = async {
            socket.write_all(&buf).await?;
            socket.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Binds `listen`, unless it is off.
async fn bind_listen(listen: Listen) -> Result<Option<TcpListener>, Error> {
    match listen {
        Listen::On(addr) => bind(addr).await.map(Some),
        Listen::Off => Ok(None),
    }
}

/// A server serving on a task of its own, as a program embeds it (tests, benchmarks,
/// examples): [`Server::start`] starts it, [`Running::stop`] shuts it down gracefully.
/// Dropping it shuts the server down too, without waiting for it.
#[derive(Debug)]
pub struct Running {
    addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    server: Server,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Server {
    /// Binds `config.listen` (and the TLS listener when `config.tls` is set), opens the
    /// store and serves on a spawned task. Port 0 binds a free port: [`Running::addr`]
    /// says which. The metrics endpoint is not served ([`Server::metrics_text`] gives
    /// its text) and SIGHUP is left alone: [`run`] is the whole of ternd.
    ///
    /// # Errors
    ///
    /// An address cannot be bound, or the store cannot be opened.
    pub async fn start(config: Config) -> Result<Running, Error> {
        let listener = bind_listen(config.listen).await?;
        let tls_listener = match &config.tls {
            Some(t) => Some(bind(t.listen).await?),
            None => None,
        };
        let addr = listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let tls_addr = tls_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let server = Server::open(config).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let server = server.clone();
            async move {
                server
                    .serve_with(listener, tls_listener, async {
                        let _ = stopped.await;
                    })
                    .await
            }
        });
        Ok(Running {
            addr,
            tls_addr,
            server,
            stop,
            task,
        })
    }
}

impl Running {
    /// Where the plaintext listener listens, unless it is off.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Where the TLS listener listens, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The server, for its counters, metrics and local connections.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Shuts the server down gracefully (as SIGTERM does ternd) and waits for it.
    ///
    /// # Errors
    ///
    /// The store could not be flushed, or the serving task panicked.
    pub async fn stop(self) -> Result<(), Error> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| Error::Shutdown(format!("the server task failed: {e}")))?
    }
}

/// Opens the store, binds `config.listen` (and the metrics endpoint, unless it is off),
/// starts the `services` built on the broker (the daemon passes its MQTT bridges; see
/// [`Server::spawn_service`]) and serves until `shutdown` completes.
///
/// # Errors
///
/// The store cannot be opened, an address cannot be bound, or the final flush failed.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    services: impl FnOnce(&Server),
) -> Result<(), Error> {
    let listener = bind_listen(config.listen).await?;
    let metrics = bind_listen(config.metrics_listen).await?;
    let tls_listener = match &config.tls {
        Some(t) => Some(bind(t.listen).await?),
        None => None,
    };
    let server = Server::open(config).await?;
    if let Some(metrics) = metrics {
        tracing::info!("metrics on http://{}/metrics", metrics.local_addr()?);
        let server = server.clone();
        tokio::spawn(async move { server.serve_metrics(metrics).await });
    }
    // Installed with or without TLS: SIGHUP's default action would end the process.
    #[cfg(unix)]
    reload_on_sighup(server.clone())?;
    services(&server);
    server.serve_with(listener, tls_listener, shutdown).await
}

/// Reloads the TLS certificates on every SIGHUP (and only logs it without TLS).
#[cfg(unix)]
fn reload_on_sighup(server: Server) -> std::io::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if server.shared.tls.is_none() {
                tracing::info!("SIGHUP: no TLS configured, nothing to reload");
                continue;
            }
            match server.reload_tls() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; the old certificates stay")
                }
            }
        }
    });
    Ok(())
}
