//! The listener: accepts connections and shuts down gracefully.
//!
//! Shutdown follows tokio-util's `CancellationToken` + `TaskTracker` pattern: stop
//! accepting, cancel every connection (each sends `shutting_down`, flushes what is
//! buffered and closes), wait for the connection tasks under a timeout, then flush the
//! store.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tern_codec::{DecodeError, Encode, ErrorCode, ErrorFrame};
use tern_storage::SledStore;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::outbound::Outbound;
use crate::router::Router;
use crate::session;
use crate::stats::{Stats, StatsSnapshot};
use crate::Error;

/// State every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    pub router: Router,
    pub stats: Arc<Stats>,
    /// Random per process; sent in WELCOME.
    pub server_id: String,
    pub store: SledStore,
    /// Cancelled once, when the server starts shutting down. Every connection's token
    /// is a child of it.
    pub shutdown: CancellationToken,
    next_connection_id: AtomicU64,
    /// Live connections, for server info. A std `Mutex`: touched on connect and
    /// disconnect only, never held across an `.await`.
    connections: Mutex<HashMap<u64, ConnectionEntry>>,
}

#[derive(Debug)]
pub(crate) struct ConnectionEntry {
    pub peer: SocketAddr,
    pub name: String,
    pub outbound: Arc<Outbound>,
}

/// One live connection, as reported by [`Server::connections`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub id: u64,
    pub peer: SocketAddr,
    /// The name the client gave in HELLO.
    pub name: String,
    /// Bytes queued for this connection and not yet written to its socket.
    pub pending_bytes: usize,
    /// Messages dropped for this connection by the slow-consumer policy.
    pub dropped: u64,
}

impl Shared {
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    fn connections(&self) -> MutexGuard<'_, HashMap<u64, ConnectionEntry>> {
        // Inserts and removes are single map operations: a poisoned map is still whole.
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, id: u64, entry: ConnectionEntry) {
        self.stats
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        self.connections().insert(id, entry);
    }

    pub fn deregister(&self, id: u64) {
        self.stats
            .connections_closed
            .fetch_add(1, Ordering::Relaxed);
        self.connections().remove(&id);
    }

    pub fn count_protocol_error(&self, _e: &DecodeError) {
        self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// A broker: its store, router and counters. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// Opens the data directory and builds the broker's state. Serves nothing yet.
    ///
    /// Blocks on file I/O while the store opens.
    ///
    /// # Errors
    ///
    /// The store cannot be opened (see [`tern_storage::StorageError`]).
    pub fn open(config: Config) -> Result<Self, Error> {
        let store = SledStore::open(&config.data_dir)?;
        let server_id = format!("{:016x}", fastrand::u64(..));
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                router: Router::default(),
                stats: Arc::default(),
                server_id,
                store,
                shutdown: CancellationToken::new(),
                next_connection_id: AtomicU64::new(1),
                connections: Mutex::new(HashMap::new()),
            }),
        })
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
                peer: c.peer,
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
        let shared = &self.shared;
        let addr = listener.local_addr()?;
        tracing::info!("listening on {addr}");
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(shared.config.limits.max_connections));
        tokio::pin!(shutdown);
        loop {
            let (socket, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, most likely: back off instead of
                        // spinning, and keep serving the connections we have.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(permit) => {
                    tracker.spawn(session::serve(socket, peer, Arc::clone(shared), permit));
                }
                Err(_) => {
                    shared
                        .stats
                        .connections_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "connection refused: at the connection limit");
                    tracker.spawn(refuse(socket, shared.config.limits.max_connections));
                }
            }
        }
        drop(listener);
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
        shared.store.flush().await?;
        tracing::info!("shut down");
        Ok(())
    }
}

/// Tells a client over the connection limit why it is being closed.
async fn refuse(mut socket: TcpStream, limit: usize) {
    let err = ErrorFrame::new(
        0,
        ErrorCode::TooManyConnections,
        format!("the server is at its limit of {limit} connections; try again later"),
    );
    let mut buf = bytes::BytesMut::new();
    if err.encode(&mut buf).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_all(&buf)).await;
    }
}

/// Opens the store, binds `config.listen` and serves until `shutdown` completes.
///
/// # Errors
///
/// The store cannot be opened, the address cannot be bound, or the final flush failed.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    Server::open(config)?.serve(listener, shutdown).await
}
