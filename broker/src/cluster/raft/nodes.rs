//! The other nodes as this node reaches them, whatever group it calls them for: one
//! link per node, at the address the membership gives it, and the client address each
//! said it serves at (for `not_leader` redirects and cluster info).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::network::{self, Call, Response};
use super::NodeId;
use crate::cluster::link::{LinkConfig, LinkError, Peer};

/// How long a node may take to say its client address.
const WHOIS_TIMEOUT: Duration = Duration::from_secs(1);

/// The address this node's clients connect to, once its listener is bound.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientAddr(Arc<Mutex<Option<String>>>);

impl ClientAddr {
    pub fn set(&self, addr: String) {
        *lock(&self.0) = Some(addr);
    }

    pub fn get(&self) -> Option<String> {
        lock(&self.0).clone()
    }
}

/// This node and the others it calls.
#[derive(Debug)]
pub(crate) struct Nodes {
    me: NodeId,
    link: Arc<LinkConfig>,
    peers: Mutex<HashMap<NodeId, Peer>>,
    /// The other nodes' client addresses, as they answered.
    client_addrs: Mutex<HashMap<NodeId, String>>,
    /// This node's.
    pub client_addr: ClientAddr,
    /// The server's runtime, where links run: proposals come from the journal's thread,
    /// whose runtime does no I/O.
    spawner: tokio::runtime::Handle,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Changed by single inserts: a poisoned lock still guards whole data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Nodes {
    /// Node `me`, reaching the others over `link`, on the calling tokio runtime.
    ///
    /// # Panics
    ///
    /// Called outside a tokio runtime.
    pub fn new(me: NodeId, link: Arc<LinkConfig>, client_addr: ClientAddr) -> Self {
        Self {
            me,
            link,
            peers: Mutex::new(HashMap::new()),
            client_addrs: Mutex::new(HashMap::new()),
            client_addr,
            spawner: tokio::runtime::Handle::current(),
        }
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// How this node links to the others.
    pub fn link(&self) -> Arc<LinkConfig> {
        Arc::clone(&self.link)
    }

    /// The link to `node` at `addr` (made again if its address changed).
    pub fn peer(&self, node: NodeId, addr: String) -> Peer {
        let mut peers = lock(&self.peers);
        let peer = peers
            .entry(node)
            .or_insert_with(|| Peer::new(Arc::clone(&self.link), node, addr.clone()));
        if peer.addr() != addr {
            *peer = Peer::new(Arc::clone(&self.link), node, addr);
        }
        peer.clone()
    }

    /// Sends `call` to `peer` on the server's runtime and decodes the answer.
    ///
    /// # Errors
    ///
    /// As [`network::call`].
    pub async fn call(
        &self,
        peer: Peer,
        call: Call,
        timeout: Duration,
    ) -> Result<Response, LinkError> {
        self.spawner
            .spawn(async move { network::call(&peer, &call, timeout).await })
            .await
            .unwrap_or_else(|e| Err(LinkError::Remote(format!("a call failed: {e}"))))
    }

    /// Whether node `node` answers at `addr` as that node (the link's handshake checks
    /// its id), within `timeout`.
    ///
    /// # Errors
    ///
    /// Why it could not be reached.
    pub async fn probe(&self, node: NodeId, addr: String, timeout: Duration) -> Result<(), String> {
        let probe = Peer::new(Arc::clone(&self.link), node, addr);
        self.call(probe, Call::Whois, timeout)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Node `node`'s client address, as last learned (this node's own included).
    pub fn known_client_addr(&self, node: NodeId) -> Option<String> {
        if node == self.me {
            self.client_addr.get()
        } else {
            lock(&self.client_addrs).get(&node).cloned()
        }
    }

    /// Node `node`'s client address: asked of it at `addr` unless known.
    pub async fn client_addr_of(&self, node: NodeId, addr: String) -> Option<String> {
        if let Some(known) = self.known_client_addr(node) {
            return Some(known);
        }
        self.ask_client_addr(node, addr).await
    }

    /// Asks node `node` at `addr` its client address, and keeps the answer.
    pub async fn ask_client_addr(&self, node: NodeId, addr: String) -> Option<String> {
        let peer = self.peer(node, addr);
        match self.call(peer, Call::Whois, WHOIS_TIMEOUT).await {
            Ok(Response::Whois(Some(answer))) => {
                lock(&self.client_addrs).insert(node, answer.clone());
                Some(answer)
            }
            _ => None,
        }
    }
}
