//! The servers a client may connect to, and which one to try next.
//!
//! A client is given one address or a seed list (`a:7400,b:7400,c:7400`). It connects
//! to the first that answers; when its connection drops it goes on with the next one.
//! In a cluster, a node that does not run the queues answers `not_leader` naming the
//! node that does ("… connect to HOST:PORT"): the client learns that address and moves
//! there ([`Servers::prefer`]), reached the way the seeds are (TLS when they use it).
//! Each connection also asks its node for the others (CLUSTER_QUERY) and adds them to
//! the list ([`Servers::learn`]), so that a client given one node can go on with
//! another when that one dies.

use crate::transport::{Connector, TlsOptions};
use crate::Error;

/// One server: its address as errors and logs name it, and how to reach it.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub name: String,
    pub connector: Connector,
}

/// Most servers a client keeps on its list, seeds included (a cluster has a handful of
/// nodes).
pub(crate) const MAX_SERVERS: usize = 64;

/// The seed list and the addresses learned since, in the order they are tried.
#[derive(Debug)]
pub(crate) struct Servers {
    list: Vec<Server>,
    current: usize,
    /// How to reach a learned address: `Some(None)` plain TCP, `Some(Some(..))` TLS;
    /// `None` when the client connects through a custom connector, which knows one
    /// server only.
    learned: Option<Option<TlsOptions>>,
}

impl Servers {
    /// Parses `addrs`: one address or a comma-separated list, each `host:port`,
    /// `tcp://host:port` or `tls://host:port`. A bare address uses TLS when `tls` is
    /// given. With `shuffle` the list is tried in a random order, so that the clients
    /// of a cluster spread over its nodes.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when the list is empty or a TLS address cannot be set up
    /// (an unreadable CA file, a host that no certificate can name).
    pub fn parse(addrs: &str, tls: Option<&TlsOptions>, shuffle: bool) -> Result<Self, Error> {
        let mut list = Vec::new();
        let mut any_tls = None;
        for url in addrs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, options) = match url.strip_prefix("tls://") {
                Some(rest) => (rest, Some(tls.cloned().unwrap_or_default())),
                None => (url.strip_prefix("tcp://").unwrap_or(url), tls.cloned()),
            };
            let connector = connector(addr, options.as_ref()).map_err(|reason| Error::Connect {
                addr: url.to_string(),
                reason,
            })?;
            if options.is_some() {
                any_tls = options;
            }
            list.push(Server {
                name: url.to_string(),
                connector,
            });
        }
        if list.is_empty() {
            return Err(Error::Connect {
                addr: addrs.to_string(),
                reason: "no server address given".into(),
            });
        }
        if shuffle {
            fastrand::shuffle(&mut list);
        }
        Ok(Self {
            list,
            current: 0,
            learned: Some(any_tls),
        })
    }

    /// The one server a custom connector reaches.
    pub fn custom(name: String, connector: Connector) -> Self {
        Self {
            list: vec![Server { name, connector }],
            current: 0,
            learned: None,
        }
    }

    /// The server to connect to now.
    #[allow(clippy::indexing_slicing)] // `list` is never empty and `current` stays in it
    pub fn current(&self) -> Server {
        self.list[self.current].clone()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Every server's name, in the order they are tried.
    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|s| s.name.clone()).collect()
    }

    /// Goes on with the next server (after the last, the first again).
    pub fn advance(&mut self) {
        self.current = (self.current + 1) % self.list.len().max(1);
    }

    /// Adds the servers of `addrs` (`host:port`) not on the list yet, after the others,
    /// reached the way the seeds are, up to [`MAX_SERVERS`] in all: a server lists
    /// what it likes, and the list must not grow without bound. Nothing with a custom
    /// connector.
    pub fn learn(&mut self, addrs: impl IntoIterator<Item = String>) {
        let Some(tls) = &self.learned else {
            return;
        };
        for addr in addrs {
            if self.list.len() >= MAX_SERVERS {
                tracing::warn!(max = MAX_SERVERS, "not learning more cluster nodes");
                return;
            }
            if self.list.iter().any(|s| bare(&s.name) == addr) {
                continue;
            }
            match connector(&addr, tls.as_ref()) {
                Ok(connector) => {
                    tracing::debug!(addr, "learned a node of the cluster");
                    self.list.push(Server {
                        name: addr,
                        connector,
                    });
                }
                Err(reason) => tracing::warn!(addr, reason, "cannot connect to a cluster node"),
            }
        }
    }

    /// Makes `addr` (`host:port`, as a `not_leader` error names it) the server to try
    /// next, learning it if it is new. Returns false when it cannot be reached this
    /// way (a custom connector, or a TLS address that no certificate can name) or the
    /// list is full ([`MAX_SERVERS`]).
    pub fn prefer(&mut self, addr: &str) -> bool {
        if let Some(i) = self.list.iter().position(|s| bare(&s.name) == addr) {
            self.current = i;
            return true;
        }
        let Some(tls) = &self.learned else {
            return false;
        };
        if self.list.len() >= MAX_SERVERS {
            tracing::warn!(addr, max = MAX_SERVERS, "not learning more cluster nodes");
            return false;
        }
        match connector(addr, tls.as_ref()) {
            Ok(connector) => {
                self.list.push(Server {
                    name: addr.to_string(),
                    connector,
                });
                self.current = self.list.len() - 1;
                true
            }
            Err(reason) => {
                tracing::warn!(addr, reason, "cannot connect to the leader a server named");
                false
            }
        }
    }
}

/// The leader's address a `not_leader` error names: the message ends with
/// `connect to HOST:PORT` when the node knows it (PROTOCOL.md, error 408).
pub(crate) fn leader_hint(message: &str) -> Option<String> {
    message
        .rsplit_once("connect to ")
        .map(|(_, addr)| addr.trim().to_string())
        .filter(|addr| !addr.is_empty())
}

fn bare(url: &str) -> &str {
    url.strip_prefix("tls://")
        .or_else(|| url.strip_prefix("tcp://"))
        .unwrap_or(url)
}

fn connector(addr: &str, tls: Option<&TlsOptions>) -> Result<Connector, String> {
    match tls {
        Some(options) => options.connector(addr),
        None => Ok(Connector::Tcp(addr.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_list_is_tried_in_turn_and_a_named_leader_first() {
        let mut s = Servers::parse(" a:1, tcp://b:2 ,,c:3", None, false).unwrap();
        assert_eq!(s.names(), ["a:1", "tcp://b:2", "c:3"]);
        assert_eq!(s.current().name, "a:1");
        s.advance();
        assert_eq!(s.current().name, "tcp://b:2");
        s.advance();
        s.advance();
        assert_eq!(s.current().name, "a:1", "round and round");
        assert!(s.prefer("b:2"), "a known server, named without its scheme");
        assert_eq!(s.current().name, "tcp://b:2");
        assert!(s.prefer("d:4"), "learned");
        assert_eq!((s.current().name.as_str(), s.len()), ("d:4", 4));
        s.learn(["c:3".to_string(), "b:2".to_string(), "e:5".to_string()]);
        assert_eq!(s.names(), ["a:1", "tcp://b:2", "c:3", "d:4", "e:5"]);
        assert_eq!(s.current().name, "d:4", "learning moves nothing");
        s.learn((0..1000).map(|i| format!("h{i}:1")));
        assert_eq!(s.len(), MAX_SERVERS, "a server's list grows it only so far");
        assert!(!s.prefer("new:1"), "nor does a redirect");
        assert!(s.prefer("c:3"), "a known server is still preferred");
    }

    #[test]
    fn an_empty_list_is_an_error_and_custom_connectors_learn_nothing() {
        assert!(matches!(
            Servers::parse(" , ", None, true),
            Err(Error::Connect { .. })
        ));
        let mut names = Servers::parse("a:1,b:2,c:3", None, true).unwrap().names();
        names.sort();
        assert_eq!(names, ["a:1", "b:2", "c:3"], "shuffled, all there");
        let mut s = Servers::custom("pipe".into(), Connector::Tcp("x:1".into()));
        assert!(!s.prefer("d:4"));
        s.learn(["e:5".to_string()]);
        assert_eq!(s.names(), ["pipe"]);
    }

    #[test]
    fn the_leader_hint_is_the_address_after_connect_to() {
        assert_eq!(
            leader_hint("node 3 runs the queues now; connect to 127.0.0.1:7403").as_deref(),
            Some("127.0.0.1:7403")
        );
        assert_eq!(leader_hint("node 3 runs the queues now"), None);
        assert_eq!(leader_hint("connect to "), None);
    }
}
