//! The state every connection of a server shares: configuration, router, counters,
//! the durable queues, the connection registry. Its own module, below the server and
//! the sessions, so that handlers and metrics depend on it and not on the server.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tern_codec::DecodeError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bridge::BridgeStatus;
use crate::config::Config;
use crate::durable::Durable;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::router::Router;
use crate::stats::Stats;

/// State every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    pub router: Arc<Router>,
    pub stats: Arc<Stats>,
    /// Random per process; sent in WELCOME.
    pub server_id: String,
    /// The durable queues: store, journal, queue registry, exactly-once window.
    pub durable: Durable,
    pub metrics: Metrics,
    /// The TLS configuration in force, when a TLS listener is configured.
    pub tls: Option<crate::tls::Tls>,
    /// Open connections per client address, for the per-address limit. A std `Mutex`:
    /// one map update per connect and disconnect.
    pub per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Each configured MQTT bridge's status, updated by the bridge once it runs.
    pub bridges: Vec<Arc<BridgeStatus>>,
    /// Connections and the services started on the server ([`Server::spawn_service`]),
    /// waited for at shutdown.
    pub tasks: TaskTracker,
    pub started: std::time::Instant,
    /// URLs this server listens on, for server info. A std `Mutex`: written when a
    /// listener starts, read by server-info requests.
    pub listeners: Mutex<Vec<String>>,
    /// Cancelled once, when the server starts shutting down. Every connection's token
    /// is a child of it.
    pub shutdown: CancellationToken,
    pub next_connection_id: AtomicU64,
    /// Live connections, for server info. A std `Mutex`: touched on connect and
    /// disconnect only, never held across an `.await`.
    pub connections: Mutex<HashMap<u64, ConnectionEntry>>,
}

#[derive(Debug)]
pub(crate) struct ConnectionEntry {
    pub peer: String,
    pub name: String,
    pub outbound: Arc<Outbound>,
}

impl Shared {
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn connections(&self) -> MutexGuard<'_, HashMap<u64, ConnectionEntry>> {
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

    pub fn count_protocol_error(&self, e: &DecodeError) {
        self.stats.count_decode_error(e);
    }

    /// URLs this server listens on.
    pub fn listeners(&self) -> Vec<String> {
        lock(&self.listeners).clone()
    }

    pub fn add_listener(&self, url: String) {
        lock(&self.listeners).push(url);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each of these is changed by single pushes and takes: a poisoned lock still
    // guards consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
